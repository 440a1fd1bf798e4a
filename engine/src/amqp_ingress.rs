//! RabbitMQ sources (`from: { amqp: { system, queue, prefetch } }`): each message runs through
//! its route exactly like an HTTP request, and is acknowledged only when the route is done
//! with it.
//!
//! A message becomes a request to the route (body and content type as they came; string AMQP
//! headers as headers) and goes through the same code as HTTP ingress (`server::handle`), so
//! validation, mapping, the queue, idempotency and problem answers are the same. The answer
//! decides the acknowledgement:
//! - 2xx (a queued route: committed to the store; a sync route: delivered) -> **ack**;
//! - 4xx (invalid, unmappable, refused by a system for good) -> **reject**: the broker moves it
//!   to the queue's dead-letter exchange, if it has one (declare one!), else drops it;
//! - 5xx, 503 (a system or the store is down) -> **requeue** after a pause, so it is tried again.
//!
//! On a queued route, a message with an AMQP `message_id` carries it as the idempotency key
//! (`Idempotency-Key: amqp:<message_id>`): a redelivery after a lost ack (a broker or tilts
//! restart between commit and ack) returns the first answer instead of storing it twice.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use tilts_adapters::amqp::{Decision, Incoming};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::types::Delivery;
use crate::plan::{Ingress, Plan, Route};
use crate::server::AppState;

/// Pause before a message that may pass is handed back to the broker (no hot loop while a
/// system is down).
const REQUEUE_PAUSE: Duration = Duration::from_secs(1);

/// Starts one consumer per AMQP route; they stop when `stop` turns true.
pub fn spawn(
    plan: &Arc<Plan>,
    state: Arc<AppState>,
    stop: watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    plan.routes
        .iter()
        .filter(|r| matches!(r.ingress, Ingress::Amqp { .. }))
        .map(|route| tokio::spawn(consume(route.clone(), state.clone(), stop.clone())))
        .collect()
}

async fn consume(route: Arc<Route>, state: Arc<AppState>, mut stop: watch::Receiver<bool>) {
    let Ingress::Amqp {
        system,
        queue,
        prefetch,
    } = &route.ingress
    else {
        return;
    };
    let Some(handle) = system.amqp() else { return };
    // Connect (and declare the topology), retrying while the broker is away.
    let mut wait = Duration::from_millis(500);
    let broker = loop {
        match handle.get().await {
            Ok(b) => break b,
            Err(e) => {
                tracing::warn!(route = %route.id, system = %system.name, error = %e, "broker unreachable; consumer waits");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
    };
    tracing::info!(route = %route.id, system = %system.name, queue = %queue, prefetch, "consuming");
    let handler = {
        let route = route.clone();
        let state = state.clone();
        move |msg: Incoming| {
            let route = route.clone();
            let state = state.clone();
            async move { handle_message(state, route, msg).await }
        }
    };
    let mut shutdown = stop.clone();
    if let Err(e) = broker
        .consume(queue, *prefetch, handler, async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await
    {
        // Permanent: the queue does not exist or access is refused. The route stays idle.
        tracing::error!(route = %route.id, system = %system.name, queue = %queue, error = %e, "cannot consume: the route receives nothing until this is fixed");
    }
}

/// Runs one message through its route and says what to do with it.
pub async fn handle_message(state: Arc<AppState>, route: Arc<Route>, msg: Incoming) -> Decision {
    let mut builder = Request::builder()
        .method(http::Method::POST)
        .uri("/")
        .header(
            http::header::CONTENT_TYPE,
            msg.content_type.as_deref().unwrap_or("application/json"),
        );
    for (k, v) in &msg.headers {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(k.as_bytes()),
            http::HeaderValue::from_str(v),
        ) && name != http::header::CONTENT_TYPE
            && name != http::header::CONTENT_LENGTH
        {
            builder = builder.header(name, value);
        }
    }
    if route.delivery == Delivery::Queued
        && let Some(id) = &msg.message_id
        && !id.is_empty()
        && id.len() <= 240
    {
        builder = builder.header("idempotency-key", format!("amqp:{id}"));
    }
    let req = match builder.body(Body::from(msg.body.clone())) {
        Ok(r) => r,
        Err(_) => {
            tracing::warn!(route = %route.id, "message with headers that cannot be read: rejected");
            return Decision::Reject;
        }
    };
    // The route's own timeout bounds a sync route; a queued one answers once stored. Bound
    // both, so a stuck message cannot hold a consumer slot (and shutdown) forever.
    let limit = state.plan.settings.route_timeout.0 + Duration::from_secs(10);
    let Ok(resp) =
        tokio::time::timeout(limit, crate::server::handle(state, route.clone(), req)).await
    else {
        tracing::warn!(route = %route.id, "message not handled in time: requeued");
        return Decision::Requeue;
    };
    let status = resp.status();
    if status.is_success() {
        Decision::Ack
    } else if status.is_client_error() && status.as_u16() != 408 && status.as_u16() != 429 {
        tracing::warn!(route = %route.id, status = status.as_u16(), "message refused: rejected to the dead-letter exchange");
        Decision::Reject
    } else {
        tracing::warn!(route = %route.id, status = status.as_u16(), "message not handled now: requeued");
        tokio::time::sleep(REQUEUE_PAUSE).await;
        Decision::Requeue
    }
}
