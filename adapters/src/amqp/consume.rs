//! Consuming a queue with manual acknowledgements: one task per delivery, the decision applied
//! on the delivery's own channel, resumed after reconnects.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use lapin::Acker;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::contract::{DeliveryError, FailureKind, Retry};

use super::{
    AmqpSystem, Decision, ErrorContext, Incoming, Live, lapin_error, reconnect_backoff,
    request_error,
};

/// How one consuming session (one channel) ended.
enum Ended {
    /// `shutdown` resolved; in-flight handlers are done.
    Shutdown,
    /// The channel or connection went away (or could not be set up).
    Lost {
        /// Whether consuming had started (then the backoff starts over).
        started: bool,
        error: DeliveryError,
    },
}

impl AmqpSystem {
    /// Consumes `queue` with manual acknowledgements and at most `prefetch` unacknowledged
    /// messages; calls `handler` for each delivery (concurrently, at most `prefetch` at a time,
    /// each in its own task) and applies its [`Decision`] once it returns.
    ///
    /// Survives broker restarts: when the connection or channel goes away it waits for the
    /// supervisor's reconnect (backoff, topology declared again) and consumes again. Handler
    /// calls still running for the old channel finish, but their decisions are skipped; the
    /// broker delivers those messages again with `redelivered` set.
    ///
    /// Runs until `shutdown` resolves: then it cancels the consumer, waits for the handler
    /// calls in flight and applies their decisions, and closes the channel (messages received
    /// but not handled go back to the queue). Returns `Err` (permanent) only when the first
    /// attempt finds the queue missing or access refused, or for a `prefetch` of 0 or a queue
    /// name that is too long; later failures are logged and retried.
    pub async fn consume<H, F>(
        &self,
        queue: &str,
        prefetch: u16,
        handler: H,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), DeliveryError>
    where
        H: Fn(Incoming) -> F + Send + Sync + 'static,
        F: Future<Output = Decision> + Send + 'static,
    {
        let ctx = self.ctx();
        if prefetch == 0 {
            return Err(request_error(
                &ctx,
                "prefetch must be at least 1 (AMQP reads 0 as unlimited)".to_string(),
            ));
        }
        let queue_name = ShortString::try_new(queue).map_err(|_| {
            request_error(
                &ctx,
                format!(
                    "the queue name is {} bytes long; AMQP allows at most 255",
                    queue.len()
                ),
            )
        })?;
        let handler = Arc::new(handler);
        // The broker limits unacked deliveries per channel; the semaphore also counts the
        // handler calls still running for a channel that died, so the limit holds across a
        // reconnect.
        let permits = Arc::new(Semaphore::new(usize::from(prefetch)));
        // Polled from several places and possibly after it resolved: `Shared` allows both.
        let shutdown = shutdown.shared();
        let mut tasks = JoinSet::new();
        let mut backoff = reconnect_backoff();
        let mut first = true;
        loop {
            let live = tokio::select! {
                biased;
                _ = shutdown.clone() => break,
                live = self.wait_live() => live?,
            };
            let session = Session {
                system: self,
                live: &live,
                queue: &queue_name,
                prefetch,
                handler: &handler,
                permits: &permits,
            };
            match session.run(&shutdown, &mut tasks).await {
                Ended::Shutdown => break,
                Ended::Lost { started, error } => {
                    if first && !started && error.retry() == Retry::Permanent {
                        return Err(error);
                    }
                    first = false;
                    if started {
                        backoff = reconnect_backoff();
                    }
                    let delay = backoff.next().unwrap_or(super::RECONNECT_MAX_DELAY);
                    tracing::info!(
                        system = %ctx.system,
                        queue,
                        error = %error,
                        retry_in_ms = delay.as_millis() as u64,
                        "stopped consuming; consuming again once the broker is back"
                    );
                    tokio::select! {
                        biased;
                        _ = shutdown.clone() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        // Handler calls of a channel that died are still finishing: wait for them too.
        while tasks.join_next().await.is_some() {}
        tracing::info!(system = %ctx.system, queue, "stopped consuming (shutdown)");
        Ok(())
    }
}

/// One consuming channel.
struct Session<'a, H> {
    system: &'a AmqpSystem,
    live: &'a Live,
    queue: &'a ShortString,
    prefetch: u16,
    handler: &'a Arc<H>,
    permits: &'a Arc<Semaphore>,
}

impl<H, F> Session<'_, H>
where
    H: Fn(Incoming) -> F + Send + Sync + 'static,
    F: Future<Output = Decision> + Send + 'static,
{
    async fn run<S>(&self, shutdown: &S, tasks: &mut JoinSet<()>) -> Ended
    where
        S: Future<Output = ()> + Clone + Unpin,
    {
        let ctx = self.system.ctx();
        let queue = self.queue.as_str();
        let lost = |doing: &str, e: &lapin::Error| Ended::Lost {
            started: false,
            error: lapin_error(&ctx, doing, e),
        };
        let channel = match self.live.connection.create_channel().await {
            Ok(channel) => channel,
            Err(e) => return lost("opening a consuming channel", &e),
        };
        if let Err(e) = channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await
        {
            return lost("setting the prefetch limit", &e);
        }
        let tag = ShortString::from(format!("tilts-{}", uuid::Uuid::new_v4()));
        let mut consumer = match channel
            .basic_consume(
                self.queue.clone(),
                tag.clone(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
        {
            Ok(consumer) => consumer,
            Err(e) => return lost(&format!("consuming queue '{queue}'"), &e),
        };
        tracing::info!(
            system = %ctx.system,
            queue,
            prefetch = self.prefetch,
            connection = self.live.generation,
            "consuming"
        );
        let system: Arc<str> = Arc::from(ctx.system);
        let ack_timeout = self.system.inner.confirm_timeout;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.clone() => {
                    // No new deliveries; the ones in flight finish and are acked.
                    let _ = channel.basic_cancel(tag, BasicCancelOptions::default()).await;
                    while tasks.join_next().await.is_some() {}
                    let _ = channel.close(200, "tilts is shutting down".into()).await;
                    return Ended::Shutdown;
                }
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(e) = done
                        && e.is_panic()
                    {
                        tracing::error!(system = %system, queue, "a delivery task panicked");
                    }
                }
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        let permit = tokio::select! {
                            biased;
                            // Not acked: the broker requeues it when the channel closes.
                            _ = shutdown.clone() => continue,
                            permit = self.permits.clone().acquire_owned() => match permit {
                                Ok(permit) => permit,
                                Err(_) => continue,
                            },
                        };
                        tasks.spawn(handle(
                            system.clone(),
                            delivery,
                            self.handler.clone(),
                            ack_timeout,
                            permit,
                        ));
                    }
                    Some(Err(e)) => {
                        return Ended::Lost {
                            started: true,
                            error: lapin_error(&ctx, &format!("consuming queue '{queue}'"), &e),
                        };
                    }
                    None => {
                        return Ended::Lost {
                            started: true,
                            error: ctx.error(
                                FailureKind::Connect,
                                format!("the broker cancelled the consumer of queue '{queue}'"),
                            ),
                        };
                    }
                },
            }
        }
    }
}

/// Runs the handler for one delivery and applies its decision on the delivery's channel.
async fn handle<H, F>(
    system: Arc<str>,
    delivery: Delivery,
    handler: Arc<H>,
    ack_timeout: std::time::Duration,
    _permit: OwnedSemaphorePermit,
) where
    H: Fn(Incoming) -> F + Send + Sync + 'static,
    F: Future<Output = Decision> + Send + 'static,
{
    let (incoming, acker) = split(delivery);
    let decision = match AssertUnwindSafe(async { handler(incoming).await })
        .catch_unwind()
        .await
    {
        Ok(decision) => decision,
        Err(_) => {
            // A bug in the handler must not lose the message: it goes back to the queue (a
            // quorum queue's delivery limit dead-letters it if it keeps failing).
            tracing::error!(system = %system, "the message handler panicked; requeueing the message");
            Decision::Requeue
        }
    };
    let apply = async {
        match decision {
            Decision::Ack => acker.ack(BasicAckOptions::default()).await,
            Decision::Requeue => {
                acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    })
                    .await
            }
            Decision::Reject => {
                acker
                    .nack(BasicNackOptions {
                        requeue: false,
                        ..BasicNackOptions::default()
                    })
                    .await
            }
        }
    };
    // The acker belongs to the channel the delivery came from: once that channel is gone it
    // answers `Ok(false)` and the tag is never sent on another channel.
    match tokio::time::timeout(ack_timeout, apply).await {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => tracing::debug!(
            system = %system,
            ?decision,
            "the delivery's channel closed before the decision was applied; the broker delivers \
             the message again"
        ),
        Ok(Err(e)) => tracing::debug!(
            system = %system,
            ?decision,
            error = %lapin_error(&ErrorContext::new(&system), "applying the decision", &e),
            "the decision could not be applied; the broker delivers the message again"
        ),
        Err(_) => tracing::debug!(
            system = %system,
            ?decision,
            "applying the decision timed out; the broker delivers the message again if it was lost"
        ),
    }
}

/// The handler's view of a delivery, and the acker that stays with the channel.
fn split(delivery: Delivery) -> (Incoming, Acker) {
    let Delivery {
        exchange,
        routing_key,
        redelivered,
        properties,
        data,
        acker,
        ..
    } = delivery;
    let mut headers = Vec::new();
    let mut delivery_count = None;
    if let Some(table) = properties.headers() {
        for (name, value) in table {
            if name.as_str() == "x-delivery-count" {
                delivery_count = as_count(value);
                continue;
            }
            let text = match value {
                AMQPValue::LongString(s) => {
                    std::str::from_utf8(s.as_bytes()).ok().map(str::to_string)
                }
                AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
                _ => None,
            };
            if let Some(text) = text {
                headers.push((name.as_str().to_string(), text));
            }
        }
    }
    let incoming = Incoming {
        body: Bytes::from(data),
        content_type: properties
            .content_type()
            .as_ref()
            .map(|s| s.as_str().to_string()),
        message_id: properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str().to_string()),
        headers,
        redelivered,
        routing_key: routing_key.as_str().to_string(),
        exchange: exchange.as_str().to_string(),
        delivery_count,
    };
    (incoming, acker)
}

/// A non-negative integer header value.
fn as_count(value: &AMQPValue) -> Option<u64> {
    match value {
        AMQPValue::ShortShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        _ => None,
    }
}
