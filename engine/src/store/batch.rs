//! Group commit: many callers' writes committed together in one transaction.
//!
//! Why: a commit costs the same for one message as for a hundred (SQLite and PostgreSQL each
//! flush their log once per commit), and on PostgreSQL every statement costs CPU on both sides.
//! So each store runs a writer task per kind of write (enqueue, attempt record); a caller hands
//! its item to the task and waits. The task takes every item waiting at that moment (no timer:
//! an idle store commits a lone item at once, a busy one gathers what arrived during the previous
//! commit), commits them in one transaction and answers each caller only after that commit.
//!
//! A batch is all or nothing. When its transaction fails on an outage, every caller gets the
//! error and nothing of the batch is written. When it fails on anything else (one item the
//! database rejects), each item is retried in a transaction of its own, so one bad item cannot
//! fail its neighbours.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::StoreError;

/// Commits a batch of items of one kind for a [`Batcher`].
pub(crate) trait Commit<I, O>: Send + 'static {
    /// Commits `items` in one transaction. `Ok` holds one result per item, in order: an item's
    /// own error (an idempotency conflict, a lost lease) does not abort the others. `Err` means
    /// the transaction failed and nothing was written.
    fn commit(
        &mut self,
        items: &[I],
    ) -> impl Future<Output = Result<Vec<Result<O, StoreError>>, StoreError>> + Send;
}

/// Hands items to a writer task that commits them in batches. Cheap to clone; the task ends when
/// the last clone is dropped.
#[derive(Debug)]
pub(crate) struct Batcher<I, O> {
    jobs: mpsc::UnboundedSender<Job<I, O>>,
}

impl<I, O> Clone for Batcher<I, O> {
    fn clone(&self) -> Self {
        Batcher {
            jobs: self.jobs.clone(),
        }
    }
}

#[derive(Debug)]
struct Job<I, O> {
    item: I,
    reply: oneshot::Sender<Result<O, StoreError>>,
}

impl<I: Send + Sync + 'static, O: Send + 'static> Batcher<I, O> {
    /// Starts the writer task (on the current tokio runtime), committing at most `max` items per
    /// transaction.
    ///
    /// The queue is unbounded on purpose: every item has a caller waiting for it (the ingress
    /// with its timeout, a worker with its lease), so its length is bounded by the callers, and
    /// items whose caller gave up are dropped before they are written.
    pub(crate) fn spawn(max: usize, committer: impl Commit<I, O>) -> Self {
        let (jobs, rx) = mpsc::unbounded_channel();
        tokio::spawn(write(rx, committer, max.max(1)));
        Batcher { jobs }
    }

    /// Commits `item` with whatever else is waiting; returns after the commit that holds it.
    pub(crate) async fn submit(&self, item: I) -> Result<O, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { item, reply })
            .map_err(|_| writer_gone())?;
        // The writer task ended without answering (its runtime shut down): nothing is known to
        // be committed, as with a lost connection.
        answer.await.unwrap_or_else(|_| Err(writer_gone()))
    }
}

fn writer_gone() -> StoreError {
    StoreError::Unavailable(Arc::new(sqlx::Error::PoolClosed))
}

async fn write<I, O>(
    mut rx: mpsc::UnboundedReceiver<Job<I, O>>,
    mut committer: impl Commit<I, O>,
    max: usize,
) {
    let mut jobs = Vec::with_capacity(max);
    while rx.recv_many(&mut jobs, max).await > 0 {
        // A caller that gave up (its timeout passed) has already answered its client: do not
        // write its item now.
        jobs.retain(|j| !j.reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        let (items, replies): (Vec<I>, Vec<_>) = jobs.drain(..).map(|j| (j.item, j.reply)).unzip();
        match committer.commit(&items).await {
            Ok(results) => answer(replies, results),
            Err(e) if e.is_unavailable() || items.len() == 1 => {
                for reply in replies {
                    let _ = reply.send(Err(e.share()));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, items = items.len(), "a batched commit failed; committing its items one by one");
                for (item, reply) in items.chunks(1).zip(replies) {
                    let result = match committer.commit(item).await {
                        Ok(mut results) => results.pop().unwrap_or_else(|| {
                            Err(StoreError::Corrupt("a commit returned no result".into()))
                        }),
                        Err(e) => Err(e),
                    };
                    let _ = reply.send(result);
                }
            }
        }
    }
}

fn answer<O>(
    replies: Vec<oneshot::Sender<Result<O, StoreError>>>,
    results: Vec<Result<O, StoreError>>,
) {
    debug_assert_eq!(replies.len(), results.len());
    let mut results = results.into_iter();
    for reply in replies {
        let result = results.next().unwrap_or_else(|| {
            Err(StoreError::Corrupt(
                "a commit returned too few results".into(),
            ))
        });
        let _ = reply.send(result);
    }
}
