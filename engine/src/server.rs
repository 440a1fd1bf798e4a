//! The HTTP ingress: one axum route per configured route, problem responses, health endpoints,
//! and a graceful shutdown that lets in-flight requests finish.
//!
//! `app(plan)` builds the router without a socket so tests can drive it directly; `serve` binds
//! it and runs until the shutdown signal.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{RawPathParams, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, get, on};
use bytes::Bytes;
use serde_json::{Map, Value, json};
use tilts_adapters::contract::FailureKind;

use crate::config::types::Delivery;
use crate::plan::{Ingress, Plan, Route};
use crate::problem::Problem;
use crate::runtime::{self, Input, RouteError};
use crate::store::{
    Idempotency, MessageId, NewMessage, Payload as StorePayload, Store, StoreError,
};

/// Shared by every request.
pub struct AppState {
    pub plan: Arc<Plan>,
    /// The durable store; `Some` whenever a route is queued.
    pub store: Option<Store>,
    /// False once shutdown has begun: `/readyz` answers 503 so load balancers stop sending.
    pub ready: AtomicBool,
}

/// Builds the router for a plan.
pub fn app(plan: Arc<Plan>, store: Option<Store>) -> (Router, Arc<AppState>) {
    let state = Arc::new(AppState {
        plan: plan.clone(),
        store,
        ready: AtomicBool::new(true),
    });
    let mut router = Router::new();
    for route in &plan.routes {
        match route.ingress {
            Ingress::Soap(_) => {
                router = crate::soap_ingress::route(router, state.clone(), route.clone());
                continue;
            }
            // Fed by their consumers and timers, not by HTTP.
            Ingress::Amqp { .. } | Ingress::Timer(_) => continue,
            Ingress::Http => {}
        }
        let filter = MethodFilter::try_from(route.method.clone()).unwrap_or(MethodFilter::POST);
        let st = state.clone();
        let r = route.clone();
        router = router.route(
            &route.path,
            on(filter, move |req: Request| {
                let st = st.clone();
                let r = r.clone();
                async move { handle(st, r, req).await }
            }),
        );
    }
    let ready_state = state.clone();
    let router = router
        .route(
            "/healthz",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .route(
            "/readyz",
            get(move || {
                let st = ready_state.clone();
                async move { readiness(&st).await }
            }),
        )
        // The path is not logged: a caller may have put a personal code in it.
        .method_not_allowed_fallback(|method: axum::http::Method| async move {
            tracing::info!(%method, status = 405, "request for a route's path with another method");
            Problem::method_not_allowed()
        })
        .fallback(|method: axum::http::Method| async move {
            tracing::info!(%method, status = 404, "request without a route");
            Problem::not_found()
        });
    (router, state)
}

/// How long `/readyz` waits for the store to answer.
const READY_STORE_TIMEOUT: Duration = Duration::from_secs(2);

/// `/readyz`: 200 while tilts takes traffic; 503 once shutdown has begun or while the store does
/// not answer (queued routes would answer 503 then). Brokers are listed but do not make tilts
/// unready: what goes to a broker is stored and retried, so HTTP traffic is still taken.
async fn readiness(st: &AppState) -> Response {
    let shutting_down = !st.ready.load(Ordering::Relaxed);
    let store = match &st.store {
        None => None,
        Some(store) => {
            let answered = tokio::time::timeout(READY_STORE_TIMEOUT, store.ping()).await;
            Some(match answered {
                Ok(Ok(())) => Ok(store.backend()),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "readiness: the store does not answer");
                    Err(store.backend())
                }
                Err(_) => {
                    tracing::warn!(
                        timeout_ms = READY_STORE_TIMEOUT.as_millis() as u64,
                        "readiness: the store did not answer in time"
                    );
                    Err(store.backend())
                }
            })
        }
    };
    let brokers: Map<String, Value> = st
        .plan
        .systems
        .values()
        .filter_map(|s| match &s.transport {
            crate::plan::Transport::Amqp(h) => Some((s.name.clone(), json!(h.state()))),
            crate::plan::Transport::Http(_) => None,
        })
        .collect();
    let store_ok = !matches!(store, Some(Err(_)));
    let status = if shutting_down {
        "shutting down"
    } else if !store_ok {
        "store unavailable"
    } else {
        "ready"
    };
    let mut body = json!({"status": status, "routes": st.plan.routes.len()});
    if let Some(s) = store {
        body["store"] = match s {
            Ok(backend) => json!({"backend": backend, "status": "ok"}),
            Err(backend) => json!({"backend": backend, "status": "unavailable"}),
        };
    }
    if !brokers.is_empty() {
        body["brokers"] = Value::Object(brokers);
    }
    let code = if status == "ready" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body)).into_response()
}

pub(crate) async fn handle(state: Arc<AppState>, route: Arc<Route>, req: Request) -> Response {
    let started = Instant::now();
    let message_id = new_message_id(&route);
    let plan = &state.plan;
    let (parts, body) = req.into_parts();
    let limit = plan.settings.body_limit.0;

    if let Some(len) = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        && len > limit
    {
        return finish(
            &route,
            &message_id,
            started,
            Problem::too_large(limit)
                .with_route(&route.id, &message_id)
                .into_response(),
        );
    }
    let bytes = match axum::body::to_bytes(Body::new(body), limit as usize).await {
        Ok(b) => b,
        Err(e) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                || e.to_string().contains("length limit");
            let p = if too_large {
                Problem::too_large(limit)
            } else {
                Problem::new(
                    400,
                    "bad-body",
                    "Could not read the request body",
                    "the request body ended early or was malformed",
                )
            };
            return finish(
                &route,
                &message_id,
                started,
                p.with_route(&route.id, &message_id).into_response(),
            );
        }
    };
    let body = match read_as_data(&parts.headers, &bytes).await {
        Ok(v) => v,
        Err(p) => {
            return finish(
                &route,
                &message_id,
                started,
                p.with_route(&route.id, &message_id).into_response(),
            );
        }
    };
    run_request(state, route, parts, body, bytes, message_id, started).await
}

/// A new message's id. Queued messages get their store id (UUIDv7) here, so `{{message.id}}`
/// in templates is the id delivered as X-Tilts-Message-Id.
pub(crate) fn new_message_id(route: &Route) -> String {
    if route.delivery == Delivery::Queued {
        MessageId::new().to_string()
    } else {
        uuid::Uuid::new_v4().to_string()
    }
}

/// Runs a route on a request whose body is read as data already; `bytes` is the body as it is
/// stored with a queued message.
pub(crate) async fn run_request(
    state: Arc<AppState>,
    route: Arc<Route>,
    mut parts: http::request::Parts,
    body: Value,
    bytes: Bytes,
    message_id: String,
    started: Instant,
) -> Response {
    let plan = &state.plan;
    let params = path_params(&mut parts).await;
    let query = parts
        .uri
        .query()
        .map(|q| {
            form_pairs(q)
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect::<Map<_, _>>()
        })
        .unwrap_or_default();
    let headers: Map<String, Value> = parts
        .headers
        .iter()
        .filter_map(|(k, v)| {
            Some((
                k.as_str().to_string(),
                Value::String(v.to_str().ok()?.to_string()),
            ))
        })
        .collect();
    let idempotency_key = parts
        .headers
        .get("idempotency-key")
        .map(|v| v.to_str().map(str::to_string));
    let input = Input {
        message_id: message_id.clone(),
        body,
        headers,
        query,
        params,
    };
    if route.delivery == Delivery::Queued {
        let resp = match idempotency_key {
            Some(Err(_)) => Problem::new(
                400,
                "bad-idempotency-key",
                "Invalid Idempotency-Key",
                "the Idempotency-Key header must be visible ASCII",
            )
            .into_response(),
            Some(Ok(k)) if k.is_empty() || k.len() > 255 => Problem::new(
                400,
                "bad-idempotency-key",
                "Invalid Idempotency-Key",
                "the Idempotency-Key header must be 1 to 255 characters",
            )
            .into_response(),
            key => accept_queued(&state, &route, input, key.and_then(Result::ok), &bytes).await,
        };
        return finish(&route, &message_id, started, resp);
    }
    let outcome = tokio::time::timeout(
        plan.settings.route_timeout.0,
        runtime::run(plan, &route, input),
    )
    .await;
    let resp = match outcome {
        Err(_) => {
            let mut p = Problem::new(
                504,
                "route-timeout",
                "The route took too long",
                "the route did not finish within its time limit",
            );
            p.retry_after = Some(5);
            p.with_route(&route.id, &message_id).into_response()
        }
        Ok(Ok(reply)) => {
            let mut resp = (
                StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK),
                reply.body,
            )
                .into_response();
            let h = resp.headers_mut();
            if let Ok(ct) = HeaderValue::from_str(&reply.content_type) {
                h.insert(header::CONTENT_TYPE, ct);
            }
            for (k, v) in reply.headers {
                h.insert(k, v);
            }
            if let Ok(id) = HeaderValue::from_str(&message_id) {
                h.insert("x-tilts-message-id", id);
            }
            resp
        }
        Ok(Err(RouteError::Deferred(deferred))) => {
            let runtime::Deferred {
                request,
                ordering_key,
                error,
            } = *deferred;
            // `fallback: queue`: the destination failed in a way that may pass; the workers
            // take over, with the same message id the first attempt carried.
            tracing::warn!(route = %route.id, %error, "destination failed: queued for later delivery");
            let first_retry = route.retry.delay(
                1,
                error.retry_after.map(Duration::from_secs),
                crate::retry::random_unit(),
            );
            let prepared = runtime::Prepared {
                request,
                ordering_key,
            };
            store_message(
                &state,
                &route,
                &message_id,
                prepared,
                None,
                &bytes,
                first_retry,
            )
            .await
        }
        Ok(Err(e)) => problem_for(&e)
            .with_route(&route.id, &message_id)
            .into_response(),
    };
    finish(&route, &message_id, started, resp)
}

/// A queued route's ingress: run the steps, store the rendered request, answer 202 only after
/// the commit. Never 202 when the store is down: 503 with `Retry-After` instead.
async fn accept_queued(
    state: &AppState,
    route: &Route,
    input: Input,
    idempotency_key: Option<String>,
    raw_body: &[u8],
) -> Response {
    let received_id = input.message_id.clone();
    if state.store.is_none() {
        return Problem::no_store()
            .with_route(&route.id, &received_id)
            .into_response();
    }
    let prepared = match tokio::time::timeout(
        state.plan.settings.route_timeout.0,
        runtime::prepare(&state.plan, route, input),
    )
    .await
    {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            return problem_for(&e)
                .with_route(&route.id, &received_id)
                .into_response();
        }
        Err(_) => {
            return Problem::new(
                504,
                "route-timeout",
                "The route took too long",
                "the route did not finish within its time limit",
            )
            .with_route(&route.id, &received_id)
            .into_response();
        }
    };
    store_message(
        state,
        route,
        &received_id,
        prepared,
        idempotency_key,
        raw_body,
        Duration::ZERO,
    )
    .await
}

/// Commits a message for the workers and answers 202 (or the problem that says why not).
/// `delay` postpones the first delivery attempt (a deferred sync delivery already tried once).
async fn store_message(
    state: &AppState,
    route: &Route,
    received_id: &str,
    prepared: runtime::Prepared,
    idempotency_key: Option<String>,
    raw_body: &[u8],
    delay: Duration,
) -> Response {
    let Some(store) = &state.store else {
        return Problem::no_store().for_route(&route.id).into_response();
    };
    let payload = StorePayload::json(&serde_json::to_value(&prepared.request).unwrap_or_default());
    let now = chrono::Utc::now();
    let mut msg = NewMessage::new(route.id.clone(), payload.clone(), now);
    msg.next_attempt_at = now + chrono::Duration::from_std(delay).unwrap_or_default();
    if let Ok(id) = received_id.parse() {
        msg.id = MessageId(id);
    }
    msg.ordering_key = prepared.ordering_key;
    msg.original = Some(StorePayload::new("application/json", raw_body.to_vec()));
    msg.last_request = Some(payload);
    msg.idempotency = idempotency_key.map(|key| Idempotency {
        key,
        request_hash: request_hash(raw_body),
    });
    // A store that stops answering (a partition, a frozen server) must not hold the caller
    // forever: past this, the caller gets 503 and sends again.
    let Ok(enqueued) = tokio::time::timeout(STORE_TIMEOUT, store.enqueue(msg)).await else {
        tracing::error!(route = %route.id, timeout_s = STORE_TIMEOUT.as_secs(), "the store did not answer in time");
        return Problem::store_unavailable()
            .for_route(&route.id)
            .into_response();
    };
    match enqueued {
        Ok(enq) => {
            let id = enq.id.to_string();
            let body = serde_json::json!({"messageId": id, "status": "accepted", "route": route.id});
            let mut resp = (StatusCode::ACCEPTED, axum::Json(body)).into_response();
            if let Ok(v) = HeaderValue::from_str(&id) {
                resp.headers_mut().insert("x-tilts-message-id", v);
            }
            if enq.duplicate {
                resp.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
            }
            resp
        }
        Err(StoreError::Conflict { .. }) => Problem::new(
            422,
            "idempotency-conflict",
            "Idempotency-Key reused with a different body",
            "this Idempotency-Key was first used with another request body; use a new key for a new request",
        )
        .for_route(&route.id)
        .into_response(),
        Err(e) => {
            tracing::error!(route = %route.id, error = %e, unavailable = e.is_unavailable(), "cannot store a message");
            Problem::store_unavailable().for_route(&route.id).into_response()
        }
    }
}

/// The longest a queued route's ingress waits for the store to commit a message.
pub const STORE_TIMEOUT: Duration = Duration::from_secs(5);

/// SHA-256 of the request body, hex: the fingerprint an Idempotency-Key is bound to.
fn request_hash(body: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn finish(route: &Route, message_id: &str, started: Instant, resp: Response) -> Response {
    // A queued message is known by its store id from here on.
    let message_id = resp
        .headers()
        .get("x-tilts-message-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or(message_id);
    tracing::info!(
        route = %route.id,
        message_id,
        status = resp.status().as_u16(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "request"
    );
    resp
}

/// Maps a route failure to the problem the caller sees.
pub fn problem_for(e: &RouteError) -> Problem {
    match e {
        RouteError::Invalid { violations, .. } => Problem::invalid(violations.clone()),
        RouteError::Mapping { label, error } => {
            tracing::error!(step = %label, error = %error, "mapping failed");
            Problem::new(
                500,
                "mapping-failed",
                "The route could not map this message",
                format!("{label} failed; the operator log has the details"),
            )
        }
        RouteError::Deferred(d) => {
            let error = &d.error;
            // Only reached without a store; the server stores deferred messages itself.
            Problem::new(
                502,
                "upstream-error",
                "A system answered with an error",
                format!("to: {error}"),
            )
        }
        RouteError::Condition { label, message } => {
            tracing::error!(step = %label, error = %message, "condition failed");
            Problem::new(
                500,
                "condition-failed",
                "The route could not evaluate a condition",
                format!("{label} failed; the operator log has the details"),
            )
        }
        RouteError::Upstream { label, error } => {
            let (status, kind, title) = match error.kind {
                FailureKind::Timeout => {
                    (504, "upstream-timeout", "A system did not answer in time")
                }
                FailureKind::Status(_) => {
                    (502, "upstream-error", "A system answered with an error")
                }
                FailureKind::Connect => {
                    (502, "upstream-unreachable", "A system could not be reached")
                }
                FailureKind::Fault(_) => (502, "upstream-fault", "A system answered with a fault"),
                _ => (502, "upstream-error", "A system's answer could not be used"),
            };
            let mut p = Problem::new(status, kind, title, format!("{label}: {error}"));
            if matches!(error.retry(), tilts_adapters::contract::Retry::Retryable) {
                p.retry_after = Some(error.retry_after.unwrap_or(5));
            }
            p
        }
    }
}

/// Bodies larger than this are read as data on the blocking pool: a connection's requests
/// run on one HTTP thread, and reading megabytes of JSON or XML there would hold up the other
/// connections of that thread for as long.
pub(crate) const INLINE_PARSE_LIMIT: usize = 256 * 1024;

/// [`parse_request_body`], off the HTTP thread for a large body.
// A problem is only built on the error path; boxing it would buy nothing.
#[allow(clippy::result_large_err)]
async fn read_as_data(headers: &axum::http::HeaderMap, bytes: &Bytes) -> Result<Value, Problem> {
    if bytes.len() <= INLINE_PARSE_LIMIT {
        return parse_request_body(headers, bytes);
    }
    let (headers, bytes) = (headers.clone(), bytes.clone());
    match tokio::task::spawn_blocking(move || parse_request_body(&headers, &bytes)).await {
        Ok(parsed) => parsed,
        Err(_) => Err(Problem::new(
            500,
            "internal-error",
            "The body could not be read",
            "reading the body as data failed inside tilts",
        )),
    }
}

// A problem is only built on the error path; boxing it would buy nothing.
#[allow(clippy::result_large_err)]
fn parse_request_body(headers: &axum::http::HeaderMap, bytes: &[u8]) -> Result<Value, Problem> {
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    if is_xml_content_type(ct) {
        // XML bodies are read as data (see tilts_adapters::xml); DTDs are refused, so XXE and
        // entity expansion attacks get a 400 like any other malformed body.
        let limits = tilts_adapters::xml::Limits {
            max_bytes: bytes.len().max(1),
            ..Default::default()
        };
        return tilts_adapters::xml::to_local_json(bytes, &limits).map_err(|e| {
            Problem::new(
                400,
                "malformed-xml",
                "The body is not acceptable XML",
                e.to_string(),
            )
        });
    }
    if !(ct.starts_with("application/json") || ct.contains("+json")) {
        return Err(Problem::new(
            415,
            "unsupported-media-type",
            "Unsupported content type",
            "send the body as application/json or application/xml",
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        Problem::new(
            400,
            "malformed-json",
            "The body is not valid JSON",
            format!(
                "JSON syntax error at line {}, column {}",
                e.line(),
                e.column()
            ),
        )
    })
}

/// Whether a content type is XML (`application/xml`, `text/xml`, `application/*+xml`).
pub(crate) fn is_xml_content_type(ct: &str) -> bool {
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/xml" || essence == "text/xml" || essence.ends_with("+xml")
}

async fn path_params(parts: &mut axum::http::request::Parts) -> Map<String, Value> {
    match <RawPathParams as axum::extract::FromRequestParts<()>>::from_request_parts(parts, &())
        .await
    {
        Ok(raw) => raw
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect(),
        Err(_) => Map::new(),
    }
}

/// Parses `a=1&b=x%20y` into pairs (later duplicates win).
fn form_pairs(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match u8::from_str_radix(&s[i + 1..i + 3], 16) {
                Ok(v) => {
                    out.push(v);
                    i += 2;
                }
                Err(_) => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The threads that serve HTTP connections, set up on first use and kept for the life of the
/// process: each runs its own single-threaded runtime, and a connection lives on one of them
/// from accept to close. A sync request is then served start to end on one thread (the
/// ingress, the route's steps and, for plain-HTTP systems, the outgoing call on that thread's
/// own pooled connections), so no request wakes another thread; on a shared work-stealing
/// runtime each request crossed threads several times, and a wake-up across threads is among
/// the dearest things a request does on a virtual machine. Empty when the threads could not be
/// started: connections are then served on the caller's runtime.
fn lanes() -> &'static [tokio::runtime::Handle] {
    static LANES: OnceLock<Vec<tokio::runtime::Handle>> = OnceLock::new();
    LANES.get_or_init(|| {
        let n = HTTP_THREADS
            .get()
            .copied()
            .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
            .unwrap_or(2)
            .max(1);
        let mut lanes = Vec::with_capacity(n);
        for i in 0..n {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start the HTTP threads; serving on the main runtime");
                    return Vec::new();
                }
            };
            let handle = rt.handle().clone();
            let started = std::thread::Builder::new()
                .name(format!("tilts-http-{i}"))
                .spawn(move || rt.block_on(std::future::pending::<()>()));
            if let Err(e) = started {
                tracing::warn!(error = %e, "cannot start the HTTP threads; serving on the main runtime");
                return Vec::new();
            }
            lanes.push(handle);
        }
        lanes
    })
}

static HTTP_THREADS: OnceLock<usize> = OnceLock::new();

/// Sets how many threads serve HTTP connections (default: one per CPU; `server.http_threads`).
/// Takes effect only before the first [`serve`] of the process; returns whether the threads
/// are that many.
pub fn set_http_threads(n: usize) -> bool {
    // Already set (an earlier call): the threads are what that call asked for.
    let _ = HTTP_THREADS.set(n.max(1));
    lanes().len() == n.max(1)
}

/// Binds and serves until `shutdown` resolves, then stops accepting, lets in-flight requests
/// finish for up to `grace`, and returns.
pub async fn serve(
    plan: Arc<Plan>,
    store: Option<Store>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let grace: Duration = plan.settings.shutdown_grace.0;
    let header_timeout: Duration = plan.settings.header_timeout.0;
    if let Some(n) = plan.settings.http_threads
        && !set_http_threads(n as usize)
    {
        // The threads live as long as the process: a second server in it shares them.
        tracing::warn!(
            http_threads = n,
            running = lanes().len(),
            "server.http_threads applies to the first server of a process only"
        );
    }
    let (router, state) = app(plan, store);
    // Dropping `stop_tx` tells every connection to finish its request and close; each
    // connection holds a clone of `open_rx`, so `open_tx.closed()` resolves when all are gone.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(());
    let (open_tx, open_rx) = tokio::sync::watch::channel(());
    let st = state.clone();
    tokio::spawn(async move {
        shutdown.await;
        st.ready.store(false, Ordering::Relaxed);
        tracing::info!("shutdown requested: finishing in-flight requests");
        drop(stop_tx);
    });
    let lanes = lanes();
    let mut stopping = stop_rx.clone();
    let mut next = 0usize;
    loop {
        let accepted = tokio::select! {
            _ = stopping.changed() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                tracing::error!(error = %e, "cannot accept connections");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        // Answers are written whole; Nagle would only hold back the last segment.
        let _ = stream.set_nodelay(true);
        let conn = Connection {
            router: router.clone(),
            stop: stop_rx.clone(),
            open: open_rx.clone(),
            header_timeout,
        };
        next = next.wrapping_add(1);
        match lanes.get(next % lanes.len().max(1)) {
            Some(lane) => match stream.into_std() {
                Ok(stream) => {
                    lane.spawn(async move {
                        match tokio::net::TcpStream::from_std(stream) {
                            Ok(stream) => conn.serve(stream).await,
                            Err(e) => tracing::warn!(error = %e, "cannot serve a connection"),
                        }
                    });
                }
                Err(e) => tracing::warn!(error = %e, "cannot serve a connection"),
            },
            None => {
                tokio::spawn(conn.serve(stream));
            }
        }
    }
    drop(listener);
    drop(open_rx);
    tokio::select! {
        _ = open_tx.closed() => Ok(()),
        _ = tokio::time::sleep(grace) => {
            tracing::warn!("in-flight requests did not finish within {grace:?}; stopping anyway");
            Ok(())
        }
    }
}

/// One accepted connection and what it needs to be served.
struct Connection {
    router: Router,
    stop: tokio::sync::watch::Receiver<()>,
    /// Held while the connection is open.
    open: tokio::sync::watch::Receiver<()>,
    /// How long the client may take to send a request's head (`server.header_timeout`).
    header_timeout: Duration,
}

impl Connection {
    async fn serve(mut self, stream: tokio::net::TcpStream) {
        let service = hyper_util::service::TowerToHyperService::new(self.router);
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(self.header_timeout);
        let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
        let mut conn = std::pin::pin!(conn);
        let mut stopping = false;
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::trace!(error = %e, "connection ended with an error");
                    }
                    break;
                }
                _ = self.stop.changed(), if !stopping => {
                    // The request in flight is answered; the connection then closes.
                    stopping = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
        drop(self.open);
    }
}

/// Accept errors that concern one connection only (the client gave up during the handshake).
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_are_decoded() {
        let q = form_pairs("a=1&b=x%20y&c=&d=%E2%82%AC+1");
        assert_eq!(q["a"], "1");
        assert_eq!(q["b"], "x y");
        assert_eq!(q["c"], "");
        assert_eq!(q["d"], "€ 1");
        assert_eq!(percent_decode("%zz%"), "%zz%");
    }
}
