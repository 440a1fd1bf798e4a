//! A state institution reached through RabbitMQ (in the shipped flows, the State Social
//! Insurance Agency, VSAA): it consumes applications from its queue and answers each one with
//! a status update published to the status exchange, as an institution's own system would.
//!
//! Contract (the shape tilts' routes map to and from, `mappings/applications/`):
//! - in: a JSON application on `queue` with at least `applicationId` (and whatever the route
//!   maps); the AMQP `message_id` is tilts' message id. A message that is not JSON or has no
//!   `applicationId` is rejected (to the queue's dead-letter exchange).
//! - out: for each new application (by `applicationId`; a redelivered duplicate is acked and
//!   not answered again) one persistent message on `status_exchange` with `status_routing_key`:
//!   `{"caseId": <applicationId>, "institution": "90001733305", "institutionCaseId":
//!   "VSAA-2026-000001", "status": "received", "occurredAt": <RFC 3339>}`, `message_id`
//!   `<applicationId>:received`.
//!
//! Fault injection: [`AmqpInstitution::refuse_next`] makes it requeue the next N messages (a
//! system that is up but cannot take work), so tests see redelivery.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::amqp::{AmqpSpec, AmqpSystem, Decision, Incoming, Outgoing};
use crate::contract::DeliveryError;

/// The fictional institution's Enterprise Register number (valid checksum).
pub const INSTITUTION: &str = "90001733305";

#[derive(Default)]
struct State {
    received: Mutex<Vec<Value>>,
    seen: Mutex<HashSet<String>>,
    refuse: AtomicUsize,
    cases: AtomicU64,
}

/// A running institution consumer.
pub struct AmqpInstitution {
    state: Arc<State>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for AmqpInstitution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpInstitution")
            .field("received", &self.received().len())
            .finish()
    }
}

impl AmqpInstitution {
    /// Connects with `spec` (whose topology must declare `queue` and `status_exchange`, as the
    /// routes do) and starts consuming `queue`.
    pub async fn start(
        spec: AmqpSpec,
        queue: &str,
        status_exchange: &str,
        status_routing_key: &str,
    ) -> Result<AmqpInstitution, DeliveryError> {
        let broker = AmqpSystem::connect(spec).await?;
        let state = Arc::new(State::default());
        let (tx, rx) = oneshot::channel::<()>();
        let handler = {
            let state = state.clone();
            let broker = broker.clone();
            let exchange = status_exchange.to_string();
            let key = status_routing_key.to_string();
            move |msg: Incoming| {
                let (state, broker, exchange, key) =
                    (state.clone(), broker.clone(), exchange.clone(), key.clone());
                async move { handle(&state, &broker, &exchange, &key, msg).await }
            }
        };
        let queue = queue.to_string();
        let task = tokio::spawn(async move {
            let _ = broker
                .consume(&queue, 8, handler, async move {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(AmqpInstitution {
            state,
            stop: Some(tx),
            task,
        })
    }

    /// Every application received (duplicates included), in arrival order.
    pub fn received(&self) -> Vec<Value> {
        self.state
            .received
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Requeue the next `n` messages instead of handling them.
    pub fn refuse_next(&self, n: usize) {
        self.state.refuse.store(n, Ordering::SeqCst);
    }

    /// Stops consuming (messages in flight are finished).
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }
}

async fn handle(
    state: &State,
    broker: &AmqpSystem,
    exchange: &str,
    key: &str,
    msg: Incoming,
) -> Decision {
    if state
        .refuse
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return Decision::Requeue;
    }
    let Ok(body) = serde_json::from_slice::<Value>(&msg.body) else {
        return Decision::Reject;
    };
    let Some(id) = body["applicationId"].as_str().map(str::to_string) else {
        return Decision::Reject;
    };
    if let Ok(mut r) = state.received.lock() {
        r.push(body.clone());
    }
    let first = state
        .seen
        .lock()
        .map(|mut s| s.insert(id.clone()))
        .unwrap_or(false);
    if !first {
        return Decision::Ack;
    }
    let n = state.cases.fetch_add(1, Ordering::SeqCst) + 1;
    let status = json!({
        "caseId": id,
        "institution": INSTITUTION,
        "institutionCaseId": format!("VSAA-2026-{n:06}"),
        "status": "received",
        "occurredAt": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    });
    let published = broker
        .publish(Outgoing {
            exchange: exchange.to_string(),
            routing_key: key.to_string(),
            body: serde_json::to_vec(&status).unwrap_or_default().into(),
            content_type: "application/json".into(),
            message_id: format!("{id}:received"),
            headers: Vec::new(),
        })
        .await;
    match published {
        Ok(()) => Decision::Ack,
        Err(_) => {
            // Not answered: take it again later.
            if let Ok(mut s) = state.seen.lock() {
                s.remove(&id);
            }
            Decision::Requeue
        }
    }
}
