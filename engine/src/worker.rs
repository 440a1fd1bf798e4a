//! Delivery workers: claim due messages from the store with a lease, deliver each to its
//! route's destination, and record the attempt: delivered, retry later, or dead letter.
//!
//! Why leases and not locks held during delivery: a worker (or the whole process) can die at any
//! moment; its lease expires and another worker delivers the message again. That makes delivery
//! at-least-once, so every request carries the stable `X-Tilts-Message-Id` for receivers to
//! deduplicate. Workers wake on the store's notifications (PostgreSQL LISTEN/NOTIFY, an
//! in-process signal on SQLite) and also poll, so a missed notification only delays.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use chrono::Utc;
use tilts_adapters::contract::Retry;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::plan::Plan;
use crate::retry::random_unit;
use crate::runtime::{self, StoredRequest};
use crate::store::{Attempt, ClaimedMessage, Outcome, Store, StoreError};

/// The longest a worker waits for one store call; a store that stops answering (a partition)
/// counts as unavailable (reported as a pool timeout), and the worker backs off instead of hanging.
pub const STORE_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How workers behave.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// This process's worker id (recorded with each attempt and lease).
    pub worker_id: String,
    /// Deliveries running at once in this process.
    pub concurrency: usize,
    /// How long a claimed message is reserved; must exceed the longest delivery.
    pub lease: Duration,
    /// How often to look for due messages when no notification arrives (retries come due
    /// without one).
    pub poll_interval: Duration,
    /// Most messages claimed at once.
    pub batch: u32,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            worker_id: format!("tilts-{}", &uuid::Uuid::new_v4().to_string()[..8]),
            concurrency: 32,
            lease: Duration::from_secs(120),
            poll_interval: Duration::from_millis(500),
            batch: 64,
        }
    }
}

/// Runs the workers until `shutdown` turns true, then waits for deliveries in flight.
pub async fn run(
    store: Store,
    plan: Arc<Plan>,
    opts: WorkerOptions,
    mut shutdown: watch::Receiver<bool>,
) {
    let global = Arc::new(Semaphore::new(opts.concurrency.max(1)));
    let per_route: Arc<HashMap<String, Arc<Semaphore>>> = Arc::new(
        plan.routes
            .iter()
            .map(|r| (r.id.clone(), Arc::new(Semaphore::new(r.concurrency.max(1)))))
            .collect(),
    );
    let mut listener = None;
    let mut in_flight = JoinSet::new();
    // Claiming ahead: while a backlog lasts (the last claim was full), claim only once this many
    // slots are free, so a claim takes a batch rather than the one message whose delivery just
    // finished. The half still claimed keeps the deliveries busy meanwhile. When the queue has
    // run dry, claim whatever is free at once (latency over batching).
    let refill_at = (opts.concurrency / 2).clamp(1, opts.batch.max(1) as usize);
    let mut backlog = false;
    // Backoff for an unreachable store, in-process (nothing durable depends on it).
    let mut store_backoff = store_backoff_schedule();
    tracing::info!(worker = %opts.worker_id, concurrency = opts.concurrency, "delivery workers started");
    loop {
        if *shutdown.borrow() {
            break;
        }
        while in_flight.try_join_next().is_some() {}
        if listener.is_none() {
            listener = store.listen().await.ok();
        }
        let free = global.available_permits().min(opts.batch as usize) as u32;
        if backlog && (free as usize) < refill_at && !in_flight.is_empty() {
            tokio::select! {
                _ = in_flight.join_next() => {}
                _ = shutdown.changed() => {}
            }
            continue;
        }
        let claimed = if free == 0 {
            Vec::new()
        } else {
            let claim = tokio::time::timeout(
                STORE_CALL_TIMEOUT,
                store.claim(&opts.worker_id, free, opts.lease, Utc::now()),
            );
            match claim.await.unwrap_or(Err(StoreError::timed_out())) {
                Ok(c) => {
                    store_backoff = store_backoff_schedule();
                    c
                }
                Err(e) => {
                    let wait = store_backoff.next().unwrap_or(Duration::from_secs(10));
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "cannot claim messages: store unavailable");
                    listener = None;
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.changed() => {}
                    }
                    continue;
                }
            }
        };
        let got = claimed.len();
        backlog = free > 0 && got as u32 >= free;
        for msg in claimed {
            let permit = global
                .clone()
                .acquire_owned()
                .await
                .expect("semaphore never closed");
            let store = store.clone();
            let plan = plan.clone();
            let per_route = per_route.clone();
            in_flight.spawn(async move {
                let route_permit = match per_route.get(&msg.route_id) {
                    Some(s) => Some(
                        s.clone()
                            .acquire_owned()
                            .await
                            .expect("semaphore never closed"),
                    ),
                    None => None,
                };
                let record = deliver(&plan, &msg).await;
                // The route's limit is on deliveries to its destination. Recording waits for a
                // (group) commit; holding the route's slot meanwhile would cap the route at
                // `concurrency` / commit time.
                drop(route_permit);
                record_attempt(&store, &msg, record).await;
                drop(permit);
            });
        }
        if got as u32 >= free && free > 0 {
            // A full batch: there may be more due right now.
            continue;
        }
        // Wait for a notification, a free slot, the poll interval, or shutdown.
        tokio::select! {
            _ = async {
                match listener.as_mut() {
                    Some(l) => { let _ = l.wait().await; }
                    None => std::future::pending::<()>().await,
                }
            } => {}
            _ = in_flight.join_next(), if !in_flight.is_empty() && free == 0 => {}
            _ = tokio::time::sleep(opts.poll_interval) => {}
            _ = shutdown.changed() => {}
        }
    }
    tracing::info!(
        in_flight = in_flight.len(),
        "workers stopping: finishing deliveries in flight"
    );
    while in_flight.join_next().await.is_some() {}
}

/// Waits between claims while the store is unreachable (in-process: nothing durable depends on
/// it); restarted after every successful claim.
fn store_backoff_schedule() -> ExponentialBackoff {
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .without_max_times()
        .build()
}

/// One delivery attempt and its record.
pub async fn deliver_one(store: &Store, plan: &Plan, msg: ClaimedMessage) {
    let record = deliver(plan, &msg).await;
    record_attempt(store, &msg, record).await;
}

/// One delivery attempt: what to record about it.
async fn deliver(plan: &Plan, msg: &ClaimedMessage) -> Attempt {
    let started_at = Utc::now();
    let started = Instant::now();
    let id = msg.id.to_string();
    let outcome = attempt(plan, msg, &id).await;
    let duration = started.elapsed();
    let (outcome, error_class, error_text, log_level_warn) = match outcome {
        AttemptResult::Delivered => (Outcome::Delivered, None, None, false),
        AttemptResult::Failed {
            retryable,
            retry_after,
            class,
            text,
        } => {
            let policy = plan
                .route(&msg.route_id)
                .map(|r| r.retry)
                .unwrap_or_default();
            if retryable && policy.may_retry(msg.attempt) {
                let delay = policy.delay(msg.attempt, retry_after, random_unit());
                let next_at = Utc::now()
                    + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::hours(1));
                (Outcome::Retry { next_at }, Some(class), Some(text), true)
            } else {
                (Outcome::DeadLetter, Some(class), Some(text), true)
            }
        }
    };
    let state = match &outcome {
        Outcome::Delivered => "delivered",
        Outcome::Retry { .. } => "retry",
        Outcome::DeadLetter => "dead-letter",
    };
    if log_level_warn {
        tracing::warn!(route = %msg.route_id, message_id = %id, attempt = msg.attempt, outcome = state, error_class = error_class.as_deref().unwrap_or(""), duration_ms = duration.as_millis() as u64, "delivery failed");
    } else {
        tracing::info!(route = %msg.route_id, message_id = %id, attempt = msg.attempt, outcome = state, duration_ms = duration.as_millis() as u64, "delivered");
    }
    Attempt {
        started_at,
        duration,
        outcome,
        error_class,
        error_text,
        request: None,
    }
}

/// Records an attempt, waiting out a brief outage of the store within the lease.
async fn record_attempt(store: &Store, msg: &ClaimedMessage, record: Attempt) {
    let id = msg.id.to_string();
    // The delivery has happened; losing its record means delivering it again after the lease.
    // So a store that is briefly away (a PostgreSQL restart) is waited for, within the lease.
    let mut backoff = ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build();
    loop {
        let recorded = tokio::time::timeout(
            STORE_CALL_TIMEOUT,
            store.record_attempt(msg.id, msg.lease_token, record.clone()),
        )
        .await;
        match recorded.unwrap_or(Err(StoreError::timed_out())) {
            Ok(()) => return,
            Err(StoreError::LeaseLost(_)) => {
                tracing::warn!(message_id = %id, "lease expired during delivery: another worker owns the message now");
                return;
            }
            Err(e) if e.is_unavailable() => {
                let wait = backoff.next().unwrap_or(Duration::from_secs(5));
                let deadline =
                    msg.lease_until - chrono::Duration::from_std(wait).unwrap_or_default();
                if Utc::now() >= deadline {
                    tracing::error!(message_id = %id, error = %e, "cannot record the attempt before the lease ends; the message will be delivered again");
                    return;
                }
                tracing::warn!(message_id = %id, error = %e, retry_in_ms = wait.as_millis() as u64, "cannot record the attempt yet: store unavailable");
                tokio::time::sleep(wait).await;
            }
            Err(e) => {
                // The lease will expire and the message will be delivered again (at least once).
                tracing::error!(message_id = %id, error = %e, "cannot record the attempt; the message will be delivered again when its lease expires");
                return;
            }
        }
    }
}

enum AttemptResult {
    Delivered,
    Failed {
        retryable: bool,
        retry_after: Option<Duration>,
        class: String,
        text: String,
    },
}

async fn attempt(plan: &Plan, msg: &ClaimedMessage, id: &str) -> AttemptResult {
    let Some(route) = plan.route(&msg.route_id) else {
        return AttemptResult::Failed {
            retryable: false,
            retry_after: None,
            class: "no-route".into(),
            text: format!(
                "route '{}' is not in the running configuration",
                msg.route_id
            ),
        };
    };
    let request: StoredRequest = match msg
        .payload
        .to_json()
        .and_then(|v| serde_json::from_value(v).ok())
    {
        Some(r) => r,
        None => {
            return AttemptResult::Failed {
                retryable: false,
                retry_after: None,
                class: "corrupt".into(),
                text: "the stored request cannot be read".into(),
            };
        }
    };
    match runtime::deliver(route, &request, id).await {
        Ok(_) => AttemptResult::Delivered,
        Err(e) => AttemptResult::Failed {
            retryable: e.retry() == Retry::Retryable,
            retry_after: e.retry_after.map(Duration::from_secs),
            class: match e.kind {
                tilts_adapters::contract::FailureKind::Status(code) => format!("http-{code}"),
                k => k.name().to_string(),
            },
            text: e.to_string(),
        },
    }
}
