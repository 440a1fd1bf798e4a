//! The admin JSON API: look at a message and its attempts, list dead letters, requeue them (one,
//! or all matching a filter), discard them with a reason, and count messages by state.
//!
//! It is served on its own listener (`server.admin_listen`, see [`crate::service`]) so that it
//! can stay on a private interface: it has no authentication yet. Payloads hold personal data, so
//! a message's bodies are shown only when asked for (`?include=payload`), never in lists. Every
//! action (requeue, discard, viewing payloads) is logged at info with the message id and route and
//! never a body: the audit trail until there is a real one. Errors are `application/problem+json`
//! ([`Problem`]). The endpoints are documented for operators in `docs/admin-api.md`.
//!
//! JSON fields are camelCase like the rest of tilts' answers (`messageId`); the dead-letter filter
//! has the same names in the list's query string and in the bulk requeue's body (`error_class`),
//! so a console can send back the filter it listed with.

#![allow(
    clippy::result_large_err,
    reason = "the error path is a Problem answered once per request; boxing it would gain nothing"
)]

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::problem::Problem;
use crate::schema::Violation;
use crate::store::{
    AttemptRecord, MessageFilter, MessageId, MessageMeta, MessageState, MessageView, Payload,
    StateCounts, Store, StoreError,
};

/// Default page size of the dead-letter list.
pub const DEFAULT_PAGE: u32 = 50;
/// Largest page of the dead-letter list.
pub const MAX_PAGE: u32 = 500;
/// Longest discard reason, in characters.
pub const MAX_REASON: usize = 500;
/// Admin requests carry small JSON objects; anything bigger is a mistake.
const BODY_LIMIT: usize = 16 * 1024;
/// Seconds a client should wait before retrying when the store is unavailable.
const RETRY_AFTER_SECS: u64 = 5;

/// The admin API's router, over `store`. Built without a socket so tests can drive it directly.
pub fn router(store: Store) -> Router {
    Router::new()
        .route("/admin/messages/{id}", get(get_message))
        .route("/admin/dead-letters", get(list_dead_letters))
        .route("/admin/dead-letters/requeue", post(requeue_matching))
        .route("/admin/dead-letters/{id}/requeue", post(requeue_one))
        .route("/admin/dead-letters/{id}/discard", post(discard))
        .route("/admin/stats", get(stats))
        .method_not_allowed_fallback(|| async {
            Problem::new(
                405,
                "method-not-allowed",
                "Method not allowed",
                "this admin endpoint does not accept this method; see docs/admin-api.md",
            )
        })
        .fallback(|| async {
            Problem::new(
                404,
                "not-found",
                "No such admin endpoint",
                "no admin endpoint has this path; see docs/admin-api.md",
            )
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(store)
}

type Answer<T> = Result<Json<T>, Problem>;
type QueryPairs = Result<Query<Vec<(String, String)>>, QueryRejection>;

// ---------------------------------------------------------------------------------------------
// Handlers.

/// `GET /admin/messages/{id}[?include=payload]`
async fn get_message(
    State(store): State<Store>,
    id: Result<Path<String>, PathRejection>,
    query: QueryPairs,
) -> Answer<MessageJson> {
    let id = message_id(id)?;
    let query = Params::parse(query, &["include"])?;
    let include_payload = match query.get("include") {
        None => false,
        Some("payload") => true,
        Some(_) => return Err(bad_param("include", "the only value is `payload`")),
    };
    let view = store
        .get(id)
        .await
        .map_err(store_problem)?
        .ok_or_else(|| not_found(id))?;
    if include_payload {
        tracing::info!(message_id = %id, route = %view.meta.route_id, "admin: payloads viewed");
    }
    Ok(Json(MessageJson::full(view, include_payload)))
}

/// `GET /admin/dead-letters?route=&key=&error_class=&since=&until=&after=&limit=`
async fn list_dead_letters(
    State(store): State<Store>,
    query: QueryPairs,
) -> Answer<DeadLetterPage> {
    let query = Params::parse(
        query,
        &[
            "route",
            "key",
            "error_class",
            "since",
            "until",
            "after",
            "limit",
        ],
    )?;
    let limit = match query.get("limit") {
        None => DEFAULT_PAGE,
        Some(s) => s
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| {
                bad_param("limit", format!("must be an integer from 1 to {MAX_PAGE}"))
            })?,
    };
    let after = query
        .get("after")
        .map(|s| {
            s.parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| bad_param("after", "must be the `next` value of a previous page"))
        })
        .transpose()?;
    let time = |name: &'static str| {
        query
            .get(name)
            .map(|s| parse_time(s).map_err(|why| bad_param(name, why)))
            .transpose()
    };
    let (since, until) = (time("since")?, time("until")?);
    if let (Some(since), Some(until)) = (since, until)
        && since > until
    {
        return Err(bad_param("until", "must not be before `since`"));
    }
    let filter = MessageFilter {
        route_id: query.get("route").map(str::to_owned),
        ordering_key: query.get("key").map(str::to_owned),
        error_class: query.get("error_class").map(str::to_owned),
        since,
        until,
        after,
        // One more than the page, to know whether there is a next page.
        limit: Some(limit + 1),
    };
    let mut rows = store.dead_letters(&filter).await.map_err(store_problem)?;
    let next = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|m| m.seq.to_string())
    } else {
        None
    };
    Ok(Json(DeadLetterPage {
        items: rows.into_iter().map(MessageJson::meta).collect(),
        next,
    }))
}

/// `POST /admin/dead-letters/{id}/requeue`
async fn requeue_one(
    State(store): State<Store>,
    id: Result<Path<String>, PathRejection>,
) -> Answer<MessageJson> {
    let id = message_id(id)?;
    // Read first for the route, so the audit line is written as soon as the requeue commits.
    let before = store
        .get(id)
        .await
        .map_err(store_problem)?
        .ok_or_else(|| not_found(id))?;
    store.requeue(id, Utc::now()).await.map_err(store_problem)?;
    tracing::info!(message_id = %id, route = %before.meta.route_id, "admin: dead letter requeued");
    let view = store
        .get(id)
        .await
        .map_err(store_problem)?
        .ok_or_else(|| not_found(id))?;
    Ok(Json(MessageJson::full(view, false)))
}

/// `POST /admin/dead-letters/requeue` with a filter body.
async fn requeue_matching(
    State(store): State<Store>,
    body: Result<Json<Value>, JsonRejection>,
) -> Answer<Requeued> {
    let filter = requeue_filter(json_object(body)?)?;
    let requeued = store
        .requeue_matching(&filter, Utc::now())
        .await
        .map_err(store_problem)?;
    // The store does not return the ids it requeued: the filter is the audit record.
    let (since, until) = (filter.since.map(rfc3339), filter.until.map(rfc3339));
    tracing::info!(
        requeued,
        route = filter.route_id.as_deref(),
        key = filter.ordering_key.as_deref(),
        error_class = filter.error_class.as_deref(),
        since = since.as_deref(),
        until = until.as_deref(),
        "admin: dead letters requeued by filter"
    );
    Ok(Json(Requeued { requeued }))
}

/// `POST /admin/dead-letters/{id}/discard` with `{"reason": "..."}`.
async fn discard(
    State(store): State<Store>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<Value>, JsonRejection>,
) -> Answer<MessageJson> {
    let id = message_id(id)?;
    let reason = discard_reason(json_object(body)?)?;
    // The store also discards pending messages; this endpoint is for dead letters only, so that
    // a click on a stale console page cannot drop a message that is being delivered.
    let before = store
        .get(id)
        .await
        .map_err(store_problem)?
        .ok_or_else(|| not_found(id))?;
    if before.meta.state != MessageState::Dead {
        return Err(not_dead(id, before.meta.state));
    }
    store
        .discard(id, &reason, Utc::now())
        .await
        .map_err(store_problem)?;
    tracing::info!(
        message_id = %id,
        route = %before.meta.route_id,
        reason = %reason,
        "admin: dead letter discarded"
    );
    let view = store
        .get(id)
        .await
        .map_err(store_problem)?
        .ok_or_else(|| not_found(id))?;
    Ok(Json(MessageJson::full(view, false)))
}

/// `GET /admin/stats`
async fn stats(State(store): State<Store>) -> Answer<StatsJson> {
    let counts = store.counts().await.map_err(store_problem)?;
    Ok(Json(StatsJson::from(counts)))
}

// ---------------------------------------------------------------------------------------------
// Request parsing.

/// Query parameters, checked against the endpoint's names: an unknown or repeated parameter is
/// refused rather than ignored (a misspelt filter must not silently match everything). An empty
/// value counts as absent, as HTML forms send empty fields.
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(query: QueryPairs, allowed: &[&str]) -> Result<Self, Problem> {
        let Query(pairs) = query.map_err(|_| {
            Problem::new(
                400,
                "bad-parameter",
                "Invalid query parameter",
                "the query string cannot be read",
            )
        })?;
        for (i, (name, _)) in pairs.iter().enumerate() {
            if !allowed.contains(&name.as_str()) {
                let expected = if allowed.is_empty() {
                    "this endpoint takes no parameters".to_owned()
                } else {
                    format!("expected one of: {}", allowed.join(", "))
                };
                return Err(bad_param(name, format!("unknown parameter; {expected}")));
            }
            if pairs[..i].iter().any(|(n, _)| n == name) {
                return Err(bad_param(name, "given more than once"));
            }
        }
        Ok(Params(pairs))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, v)| n == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }
}

fn message_id(id: Result<Path<String>, PathRejection>) -> Result<MessageId, Problem> {
    let malformed = || {
        Problem::new(
            400,
            "bad-message-id",
            "Malformed message id",
            "a message id is a UUID, e.g. 0190f0e4-5b7a-7c3e-8d2f-1a2b3c4d5e6f",
        )
    };
    let Path(id) = id.map_err(|_| malformed())?;
    id.parse().map_err(|_| malformed())
}

/// The body as a JSON object; a syntax error, a wrong media type or a body over the limit is a
/// problem.
fn json_object(body: Result<Json<Value>, JsonRejection>) -> Result<Map<String, Value>, Problem> {
    match body {
        Ok(Json(Value::Object(map))) => Ok(map),
        Ok(Json(_)) => Err(Problem::new(
            400,
            "bad-request",
            "The request is not valid",
            "the body must be a JSON object",
        )),
        Err(e) => Err(match e.status() {
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Problem::new(
                415,
                "unsupported-media-type",
                "Unsupported media type",
                "send a JSON body with `Content-Type: application/json`",
            ),
            StatusCode::PAYLOAD_TOO_LARGE => Problem::too_large(BODY_LIMIT as u64),
            _ => Problem::new(
                400,
                "bad-request",
                "The request is not valid",
                format!("the body is not valid JSON: {}", e.body_text()),
            ),
        }),
    }
}

/// The body of a bulk requeue: `{route, key, error_class, since, until}`, at least one of them,
/// or `{"all": true}` to requeue every dead letter.
fn requeue_filter(body: Map<String, Value>) -> Result<MessageFilter, Problem> {
    const FIELDS: [&str; 6] = ["route", "key", "error_class", "since", "until", "all"];
    let mut filter = MessageFilter::default();
    let mut all = false;
    for (name, value) in body {
        if value.is_null() {
            continue;
        }
        match name.as_str() {
            "all" => {
                all = value
                    .as_bool()
                    .ok_or_else(|| bad_field("all", "must be true or false"))?;
            }
            "route" | "key" | "error_class" | "since" | "until" => {
                let s = match value {
                    Value::String(s) if !s.is_empty() => s,
                    _ => return Err(bad_field(&name, "must be a non-empty string")),
                };
                match name.as_str() {
                    "route" => filter.route_id = Some(s),
                    "key" => filter.ordering_key = Some(s),
                    "error_class" => filter.error_class = Some(s),
                    "since" => {
                        filter.since = Some(parse_time(&s).map_err(|w| bad_field(&name, w))?)
                    }
                    _ => filter.until = Some(parse_time(&s).map_err(|w| bad_field(&name, w))?),
                }
            }
            _ => {
                return Err(bad_field(
                    &name,
                    format!("unknown field; expected one of: {}", FIELDS.join(", ")),
                ));
            }
        }
    }
    if let (Some(since), Some(until)) = (filter.since, filter.until)
        && since > until
    {
        return Err(bad_field("until", "must not be before `since`"));
    }
    let empty = filter.route_id.is_none()
        && filter.ordering_key.is_none()
        && filter.error_class.is_none()
        && filter.since.is_none()
        && filter.until.is_none();
    if empty && !all {
        return Err(Problem::new(
            400,
            "empty-filter",
            "Refusing to requeue every dead letter",
            "give at least one of route, key, error_class, since, until; \
             or send {\"all\": true} to requeue every dead letter",
        ));
    }
    Ok(filter)
}

fn discard_reason(mut body: Map<String, Value>) -> Result<String, Problem> {
    if let Some(name) = body.keys().find(|k| *k != "reason") {
        return Err(bad_field(name, "unknown field; expected: reason"));
    }
    let reason = match body.remove("reason") {
        Some(Value::String(s)) => s,
        None | Some(Value::Null) => {
            return Err(bad_field(
                "reason",
                "required: say why the message is discarded",
            ));
        }
        Some(_) => return Err(bad_field("reason", "must be a string")),
    };
    if reason.trim().is_empty() {
        return Err(bad_field("reason", "must not be blank"));
    }
    if reason.chars().count() > MAX_REASON {
        return Err(bad_field(
            "reason",
            format!("must be at most {MAX_REASON} characters"),
        ));
    }
    Ok(reason)
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| "must be an RFC 3339 time, e.g. 2026-03-01T08:00:00Z".to_owned())
}

// ---------------------------------------------------------------------------------------------
// Problems.

fn bad_param(name: &str, why: impl Into<String>) -> Problem {
    Problem::new(
        400,
        "bad-parameter",
        "Invalid query parameter",
        format!("query parameter `{name}`: {}", why.into()),
    )
}

fn bad_field(name: &str, why: impl Into<String>) -> Problem {
    let message = why.into();
    let mut p = Problem::new(
        400,
        "bad-request",
        "The request is not valid",
        format!("field `{name}`: {message}"),
    );
    p.errors = vec![Violation {
        pointer: format!("/{}", name.replace('~', "~0").replace('/', "~1")),
        message,
    }];
    p
}

fn not_found(id: MessageId) -> Problem {
    Problem::new(
        404,
        "message-not-found",
        "No such message",
        format!("there is no message {id}"),
    )
}

fn not_dead(id: MessageId, state: MessageState) -> Problem {
    Problem::new(
        409,
        "not-a-dead-letter",
        "The message is not a dead letter",
        format!("message {id} is {state}; only dead letters can be requeued or discarded"),
    )
}

/// The answer for a store error. Database details go to the log, not to the caller.
fn store_problem(e: StoreError) -> Problem {
    match e {
        StoreError::NotFound(id) => not_found(id),
        StoreError::InvalidState { id, state, .. } => not_dead(id, state),
        e if e.is_unavailable() => {
            tracing::warn!(error = %e, "admin: the store is unavailable");
            let mut p = Problem::new(
                503,
                "store-unavailable",
                "The message store is unavailable",
                "the message store cannot be reached now; nothing was changed, try again later",
            );
            p.retry_after = Some(RETRY_AFTER_SECS);
            p
        }
        e => {
            tracing::error!(error = %e, "admin: store error");
            Problem::new(
                500,
                "store-error",
                "The message store failed",
                "the operation failed in the message store; the tilts log has the details",
            )
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Answers.

/// A message: metadata always, attempts on `GET` of one message, bodies only when asked for.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct MessageJson {
    id: String,
    state: &'static str,
    route: String,
    ordering_key: Option<String>,
    idempotency_key: Option<String>,
    received_at: String,
    updated_at: String,
    /// When the next attempt is due; only while pending.
    next_attempt_at: Option<String>,
    /// When it was delivered, dead-lettered or discarded.
    finished_at: Option<String>,
    lease: Option<LeaseJson>,
    attempt_count: u32,
    attempts_since_requeue: u32,
    last_error_class: Option<String>,
    last_error_text: Option<String>,
    discard_reason: Option<String>,
    purged_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    attempts: Option<Vec<AttemptJson>>,
    #[serde(flatten)]
    bodies: Option<BodiesJson>,
}

impl MessageJson {
    fn meta(m: MessageMeta) -> Self {
        MessageJson {
            id: m.id.to_string(),
            state: m.state.as_str(),
            route: m.route_id,
            ordering_key: m.ordering_key,
            idempotency_key: m.idempotency_key,
            received_at: rfc3339(m.received_at),
            updated_at: rfc3339(m.updated_at),
            next_attempt_at: (m.state == MessageState::Pending).then(|| rfc3339(m.next_attempt_at)),
            finished_at: m.finished_at.map(rfc3339),
            lease: m.lease.map(|l| LeaseJson {
                owner: l.owner,
                until: rfc3339(l.until),
            }),
            attempt_count: m.attempts,
            attempts_since_requeue: m.attempts_since_requeue,
            last_error_class: m.last_error_class,
            last_error_text: m.last_error_text,
            discard_reason: m.discard_reason,
            purged_at: m.purged_at.map(rfc3339),
            attempts: None,
            bodies: None,
        }
    }

    fn full(v: MessageView, include_payload: bool) -> Self {
        let mut json = MessageJson::meta(v.meta);
        json.attempts = Some(v.attempts.into_iter().map(AttemptJson::from).collect());
        if include_payload {
            // `original` is only stored when the message as received differs from the payload
            // the worker processes; otherwise the payload is the original.
            json.bodies = Some(BodiesJson {
                original: v.original.or(v.payload).map(|p| BodyJson::from(&p)),
                last_request: v.last_request.map(|p| BodyJson::from(&p)),
            });
        }
        json
    }
}

#[derive(Debug, Serialize)]
struct LeaseJson {
    owner: String,
    until: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct AttemptJson {
    number: u32,
    worker: String,
    started_at: String,
    duration_ms: u64,
    outcome: String,
    retry_at: Option<String>,
    error_class: Option<String>,
    error_text: Option<String>,
}

impl From<AttemptRecord> for AttemptJson {
    fn from(a: AttemptRecord) -> Self {
        AttemptJson {
            number: a.number,
            worker: a.worker_id,
            started_at: rfc3339(a.started_at),
            duration_ms: u64::try_from(a.duration.as_millis()).unwrap_or(u64::MAX),
            outcome: a.outcome,
            retry_at: a.retry_at.map(rfc3339),
            error_class: a.error_class,
            error_text: a.error_text,
        }
    }
}

/// A message's bodies; `null` once purged by retention.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct BodiesJson {
    original: Option<BodyJson>,
    last_request: Option<BodyJson>,
}

/// A stored body: parsed JSON when its media type is JSON, else text, else (not UTF-8) base64.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct BodyJson {
    content_type: String,
    /// `json`, `text` or `base64`: how `body` holds the bytes.
    encoding: &'static str,
    body: Value,
}

impl From<&Payload> for BodyJson {
    fn from(p: &Payload) -> Self {
        let (encoding, body) = if is_json(&p.content_type)
            && let Some(v) = p.to_json()
        {
            ("json", v)
        } else if let Ok(text) = std::str::from_utf8(&p.bytes) {
            ("text", Value::String(text.to_owned()))
        } else {
            ("base64", Value::String(base64(&p.bytes)))
        };
        BodyJson {
            content_type: p.content_type.clone(),
            encoding,
            body,
        }
    }
}

/// `application/json`, `application/problem+json` and the like, with or without parameters.
fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Standard base64 with padding (RFC 4648), for bodies that are not text.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A page of dead letters, oldest first.
#[derive(Debug, Serialize)]
struct DeadLetterPage {
    items: Vec<MessageJson>,
    /// Pass as `after` for the next page; `null` on the last page.
    next: Option<String>,
}

#[derive(Debug, Serialize)]
struct Requeued {
    requeued: u64,
}

#[derive(Debug, Serialize)]
struct StatsJson {
    pending: u64,
    delivered: u64,
    dead: u64,
    discarded: u64,
}

impl From<StateCounts> for StatsJson {
    fn from(c: StateCounts) -> Self {
        StatsJson {
            pending: c.pending,
            delivered: c.delivered,
            dead: c.dead,
            discarded: c.discarded,
        }
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain}");
        }
    }

    #[test]
    fn json_media_types() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(is_json("application/problem+json"));
        assert!(!is_json("application/xml"));
        assert!(!is_json("text/plain"));
    }
}
