//! Simulator of PIKTAPS, the public administration ICT architecture catalogue, on the side tilts
//! calls: tilts publishes a service descriptor for every route (what it exposes or consumes,
//! the owner, the systems it talks to, its schemas) and keeps it in sync as routes change.
//!
//! No public interface of PIKTAPS exists; this is tilts' own proposal, published as
//! `mappings/contracts/piktaps.openapi.json` (OpenAPI 3.1) and described in `docs/systems.md`.
//! Contract, all under [`BASE_PATH`] and all requiring `Authorization: Bearer <token>`
//! ([`TOKEN`] by default; 401 problem+json otherwise):
//!
//! - `PUT /descriptors/{systemCode}/{routeId}` with a descriptor `{"routeId","name",
//!   "description"?,"owner","direction","interface":{"protocol","method"?,"path"?,"queue"?,
//!   "schedule"?},"systems":[..],"schemas":[{"name","sha256"}],"version","updatedAt"}`: an
//!   idempotent upsert. 201 `{"changed":true,"revision":1,"descriptor"}` when new; 200 with
//!   `"changed":true` and the revision plus one when `version` differs from the stored one; 200
//!   with `"changed":false` and the stored revision (nothing stored) when it is the same.
//!   `direction` is `exposes` or `consumes`; `protocol` one of [`PROTOCOLS`], with `method` and
//!   `path` for `http`, `path` for `soap`, `queue` for `amqp` and `schedule` for `timer`.
//!   Errors: 400 when a path segment is malformed; 415 without a JSON content type; 400 on
//!   malformed JSON; 422 with `errors: [{field, message}]` for every missing, unknown or
//!   invalid field, `routeId` differing from the path included.
//! - `GET /descriptors/{systemCode}` -> 200 `{"systemCode","items":[descriptor],"total"}` (an
//!   empty list for a system with none), sorted by route id.
//! - `GET /descriptors/{systemCode}/{routeId}` -> 200 the stored descriptor (the one sent plus
//!   `systemCode`, `revision`, `storedAt`); 404 when absent.
//! - `DELETE /descriptors/{systemCode}/{routeId}` -> 204; 404 when absent. A descriptor created
//!   again after a delete starts over at revision 1.
//! - Idempotency: a `PUT` or `DELETE` repeated with the same `X-Tilts-Message-Id` gets the first
//!   answer again (`Idempotent-Replayed: true`), so a retried delete is not a 404; the same id
//!   with another request is 409.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde_json::{Map, Value, json};

use super::http_kit::{
    self, FieldError, Fields, Replays, fingerprint, invalid, json_body, json_response, message_id,
    now, require_bearer,
};
use super::server::problem;

/// Base path of every endpoint.
pub const BASE_PATH: &str = "/api/v1";
/// The bearer token the simulator accepts unless built with another ([`PiktapsState::new`]).
pub const TOKEN: &str = "piktaps-sim-token";
/// The system code tilts publishes under by default (the Lielupe municipality's tilts).
pub const SYSTEM_CODE: &str = "TILTS-LIELUPE";
/// The protocols an interface can use.
pub const PROTOCOLS: &[&str] = &["http", "soap", "amqp", "timer"];
/// Whether a route offers a service (`exposes`) or uses one (`consumes`).
pub const DIRECTIONS: &[&str] = &["exposes", "consumes"];
/// HTTP methods an `http` interface can declare.
pub const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE"];

/// Longest accepted name, path, queue or schema name.
const MAX_SHORT: usize = 200;
/// Longest accepted description.
const MAX_DESCRIPTION: usize = 2000;
/// Longest accepted `version`.
const MAX_VERSION: usize = 128;

/// One descriptor as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredDescriptor {
    /// The publishing system, e.g. [`SYSTEM_CODE`].
    pub system_code: String,
    /// The route the descriptor describes.
    pub route_id: String,
    /// 1 when created, plus one for each change of `version`.
    pub revision: u32,
    /// The `version` of the stored content.
    pub version: String,
    /// The descriptor as last sent (validated).
    pub descriptor: Value,
    /// When the current revision was stored (RFC 3339, UTC).
    pub stored_at: String,
}

impl StoredDescriptor {
    /// The descriptor as served: the one sent plus `systemCode`, `revision` and `storedAt`.
    pub fn to_json(&self) -> Value {
        let mut out = Map::new();
        out.insert("systemCode".into(), self.system_code.clone().into());
        if let Value::Object(sent) = &self.descriptor {
            out.extend(sent.clone());
        }
        out.insert("revision".into(), self.revision.into());
        out.insert("storedAt".into(), self.stored_at.clone().into());
        Value::Object(out)
    }
}

#[derive(Default)]
struct Data {
    /// (system code, route id) -> descriptor; ordered so lists come sorted.
    descriptors: BTreeMap<(String, String), StoredDescriptor>,
    replays: Replays,
}

struct Inner {
    token: String,
    data: Mutex<Data>,
}

/// The simulator's state: the token it accepts and the descriptors it holds. Cheap to clone;
/// clones share the same state. `Debug` never prints the token.
#[derive(Clone)]
pub struct PiktapsState(Arc<Inner>);

impl fmt::Debug for PiktapsState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PiktapsState")
            .field("descriptors", &self.lock().descriptors.len())
            .finish_non_exhaustive()
    }
}

impl Default for PiktapsState {
    fn default() -> Self {
        PiktapsState::new(TOKEN)
    }
}

impl PiktapsState {
    /// An empty catalogue accepting `token`.
    pub fn new(token: impl Into<String>) -> PiktapsState {
        PiktapsState(Arc::new(Inner {
            token: token.into(),
            data: Mutex::new(Data::default()),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Data> {
        http_kit::lock(&self.0.data)
    }

    /// The descriptors of `system_code`, sorted by route id.
    pub fn descriptors(&self, system_code: &str) -> Vec<StoredDescriptor> {
        self.lock()
            .descriptors
            .values()
            .filter(|d| d.system_code == system_code)
            .cloned()
            .collect()
    }

    /// One descriptor, if stored.
    pub fn descriptor(&self, system_code: &str, route_id: &str) -> Option<StoredDescriptor> {
        self.lock()
            .descriptors
            .get(&(system_code.to_owned(), route_id.to_owned()))
            .cloned()
    }
}

/// The routes of the PIKTAPS simulator (without the shared `/_sim/` machinery), accepting
/// [`TOKEN`], with an empty catalogue.
pub fn router() -> Router {
    router_with_state().0
}

/// The routes and a handle on their state, to read the descriptors.
pub fn router_with_state() -> (Router, PiktapsState) {
    let state = PiktapsState::default();
    (router_for(state.clone()), state)
}

/// The routes over a given state (e.g. one built with another token).
pub fn router_for(state: PiktapsState) -> Router {
    Router::new()
        .route(
            &format!("{BASE_PATH}/descriptors/{{system_code}}"),
            get(list),
        )
        .route(
            &format!("{BASE_PATH}/descriptors/{{system_code}}/{{route_id}}"),
            get(show).put(upsert).delete(remove),
        )
        .with_state(state)
}

/// Whether `s` is a system code: an upper-case letter or digit, then 1 to 39 upper-case
/// letters, digits, `-` or `_`.
pub fn is_system_code(s: &str) -> bool {
    let b = s.as_bytes();
    (2..=40).contains(&b.len())
        && (b[0].is_ascii_uppercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b'-' || *c == b'_')
}

/// Whether `s` is a route id as the route language allows: 1 to 64 letters, digits, `-`, `_`.
pub fn is_route_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
}

fn bad_path(system_code: &str, route_id: Option<&str>) -> Option<Response> {
    if !is_system_code(system_code) {
        return Some(problem(
            StatusCode::BAD_REQUEST,
            "invalid-system-code",
            "Invalid system code",
            "A system code is 2 to 40 upper-case letters, digits, - or _, e.g. TILTS-LIELUPE.",
        ));
    }
    if route_id.is_some_and(|r| !is_route_id(r)) {
        return Some(problem(
            StatusCode::BAD_REQUEST,
            "invalid-route-id",
            "Invalid route id",
            "A route id is 1 to 64 letters, digits, - or _, e.g. application-forward.",
        ));
    }
    None
}

fn not_found(system_code: &str, route_id: &str) -> Response {
    problem(
        StatusCode::NOT_FOUND,
        "descriptor-not-found",
        "Descriptor not found",
        format!("System {system_code} has no descriptor for route {route_id}."),
    )
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn is_name_token(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Checks a descriptor; returns its `version` or every problem.
fn validate(body: &Value, route_id: &str) -> Result<String, Vec<FieldError>> {
    let mut f = Fields::new(
        body,
        &[
            "routeId",
            "name",
            "description",
            "owner",
            "direction",
            "interface",
            "systems",
            "schemas",
            "version",
            "updatedAt",
        ],
    )?;
    if let Some(id) = f.text("routeId", true, 64)
        && id != route_id
    {
        f.error("routeId", "must equal the route id in the path");
    }
    f.text("name", true, MAX_SHORT);
    f.text("description", false, MAX_DESCRIPTION);
    f.reg_no("owner");
    f.one_of("direction", DIRECTIONS);
    if let Some(interface) = f.object("interface", true) {
        let mut i = f.nested(
            "interface",
            interface,
            &["protocol", "method", "path", "queue", "schedule"],
        );
        let protocol = i.one_of("protocol", PROTOCOLS);
        let needs = |field: &str| match protocol.as_deref() {
            Some("http") => matches!(field, "method" | "path"),
            Some("soap") => field == "path",
            Some("amqp") => field == "queue",
            Some("timer") => field == "schedule",
            _ => false,
        };
        if let Some(method) = i.text("method", needs("method"), 10)
            && !METHODS.contains(&method.as_str())
        {
            i.error("method", &format!("must be one of: {}", METHODS.join(", ")));
        }
        if let Some(path) = i.text("path", needs("path"), MAX_SHORT)
            && !path.starts_with('/')
        {
            i.error("path", "must start with /");
        }
        i.text("queue", needs("queue"), MAX_SHORT);
        i.text("schedule", needs("schedule"), MAX_SHORT);
        f.absorb(i);
    }
    if let Some(systems) = f.array("systems", true) {
        for (n, system) in systems.iter().enumerate() {
            if !system.as_str().is_some_and(is_name_token) {
                f.error(
                    &format!("systems[{n}]"),
                    "must be a system name of 1 to 64 letters, digits, -, _ or .",
                );
            }
        }
    }
    if let Some(schemas) = f.array("schemas", true) {
        for (n, schema) in schemas.iter().enumerate() {
            let name = format!("schemas[{n}]");
            let Some(object) = schema.as_object() else {
                f.error(&name, "must be an object {name, sha256}");
                continue;
            };
            let mut s = f.nested(&name, object, &["name", "sha256"]);
            s.text("name", true, MAX_SHORT);
            if let Some(hash) = s.text("sha256", true, 64)
                && !is_sha256_hex(&hash)
            {
                s.error("sha256", "must be 64 lower-case hex digits");
            }
            f.absorb(s);
        }
    }
    let version = f.text("version", true, MAX_VERSION);
    f.timestamp("updatedAt");
    match version {
        Some(v) if f.errors.is_empty() => Ok(v),
        _ => Err(f.errors),
    }
}

async fn upsert(
    State(state): State<PiktapsState>,
    Path((system_code, route_id)): Path<(String, String)>,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    if let Some(denied) = require_bearer(&headers, &state.0.token, "piktaps") {
        return denied;
    }
    if let Some(bad) = bad_path(&system_code, Some(&route_id)) {
        return bad;
    }
    let body = match json_body(&headers, &raw) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let message_id = match message_id(&headers) {
        Ok(m) => m,
        Err(r) => return *r,
    };
    let version = match validate(&body, &route_id) {
        Ok(v) => v,
        Err(errors) => return invalid("invalid-descriptor", "descriptor", errors),
    };
    let resource = format!("{system_code}/{route_id}");
    let fingerprint = fingerprint("PUT", &resource, &raw);
    let mut data = state.lock();
    if let Some(replayed) = message_id
        .as_deref()
        .and_then(|m| data.replays.replay(m, &fingerprint))
    {
        return replayed;
    }
    let key = (system_code.clone(), route_id.clone());
    let (status, answer) = match data.descriptors.get_mut(&key) {
        Some(stored) if stored.version == version => (
            StatusCode::OK,
            json!({"changed": false, "revision": stored.revision, "descriptor": stored.to_json()}),
        ),
        Some(stored) => {
            stored.revision += 1;
            stored.version = version;
            stored.descriptor = body;
            stored.stored_at = now();
            (
                StatusCode::OK,
                json!({"changed": true, "revision": stored.revision, "descriptor": stored.to_json()}),
            )
        }
        None => {
            let stored = StoredDescriptor {
                system_code,
                route_id,
                revision: 1,
                version,
                descriptor: body,
                stored_at: now(),
            };
            let answer = json!({"changed": true, "revision": 1, "descriptor": stored.to_json()});
            data.descriptors.insert(key, stored);
            (StatusCode::CREATED, answer)
        }
    };
    if let Some(m) = message_id {
        data.replays
            .remember(m, fingerprint, status, answer.clone());
    }
    json_response(status, answer)
}

async fn show(
    State(state): State<PiktapsState>,
    Path((system_code, route_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(denied) = require_bearer(&headers, &state.0.token, "piktaps") {
        return denied;
    }
    if let Some(bad) = bad_path(&system_code, Some(&route_id)) {
        return bad;
    }
    match state.descriptor(&system_code, &route_id) {
        Some(d) => json_response(StatusCode::OK, d.to_json()),
        None => not_found(&system_code, &route_id),
    }
}

async fn list(
    State(state): State<PiktapsState>,
    Path(system_code): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(denied) = require_bearer(&headers, &state.0.token, "piktaps") {
        return denied;
    }
    if let Some(bad) = bad_path(&system_code, None) {
        return bad;
    }
    let items: Vec<Value> = state
        .descriptors(&system_code)
        .iter()
        .map(StoredDescriptor::to_json)
        .collect();
    let total = items.len();
    json_response(
        StatusCode::OK,
        json!({"systemCode": system_code, "items": items, "total": total}),
    )
}

async fn remove(
    State(state): State<PiktapsState>,
    Path((system_code, route_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(denied) = require_bearer(&headers, &state.0.token, "piktaps") {
        return denied;
    }
    if let Some(bad) = bad_path(&system_code, Some(&route_id)) {
        return bad;
    }
    let message_id = match message_id(&headers) {
        Ok(m) => m,
        Err(r) => return *r,
    };
    let resource = format!("{system_code}/{route_id}");
    let fingerprint = fingerprint("DELETE", &resource, b"");
    let mut data = state.lock();
    if let Some(replayed) = message_id
        .as_deref()
        .and_then(|m| data.replays.replay(m, &fingerprint))
    {
        return replayed;
    }
    if data
        .descriptors
        .remove(&(system_code.clone(), route_id.clone()))
        .is_none()
    {
        return not_found(&system_code, &route_id);
    }
    if let Some(m) = message_id {
        data.replays
            .remember(m, fingerprint, StatusCode::NO_CONTENT, Value::Null);
    }
    StatusCode::NO_CONTENT.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::SimServer;
    use crate::sim::http_kit::error_fields;

    async fn sim() -> (SimServer, PiktapsState) {
        let (router, state) = router_with_state();
        let sim = SimServer::start("piktaps", "127.0.0.1:0".parse().unwrap(), router)
            .await
            .unwrap();
        (sim, state)
    }

    fn url(sim: &SimServer, path: &str) -> String {
        format!("{}{BASE_PATH}/descriptors/{path}", sim.url())
    }

    fn descriptor(route_id: &str, version: &str) -> Value {
        json!({
            "routeId": route_id,
            "name": "Iesnieguma pārsūtīšana sociālajam dienestam",
            "description": "Forwards an application from a VPVKAC centre to the social service.",
            "owner": "90000038741",
            "direction": "exposes",
            "interface": {"protocol": "http", "method": "POST", "path": "/v1/applications"},
            "systems": ["social-services"],
            "schemas": [{"name": "applications/submitted.schema.json", "sha256": "9f2b6c1e0d4a7b3c5e8f1a2d4c6b8e0f1a3c5e7d9b1f3a5c7e9d1b3f5a7c9e1d"}],
            "version": version,
            "updatedAt": "2026-03-01T08:00:00Z"
        })
    }

    async fn put(sim: &SimServer, path: &str, body: &Value, id: Option<&str>) -> reqwest::Response {
        let mut req = reqwest::Client::new()
            .put(url(sim, path))
            .bearer_auth(TOKEN)
            .json(body);
        if let Some(id) = id {
            req = req.header("X-Tilts-Message-Id", id);
        }
        req.send().await.unwrap()
    }

    async fn delete(sim: &SimServer, path: &str, id: Option<&str>) -> reqwest::Response {
        let mut req = reqwest::Client::new()
            .delete(url(sim, path))
            .bearer_auth(TOKEN);
        if let Some(id) = id {
            req = req.header("X-Tilts-Message-Id", id);
        }
        req.send().await.unwrap()
    }

    #[tokio::test]
    async fn upserts_count_revisions_and_ignore_an_unchanged_version() {
        let (sim, state) = sim().await;
        let path = format!("{SYSTEM_CODE}/application-forward");
        let r = put(
            &sim,
            &path,
            &descriptor("application-forward", "sha256:aaa1"),
            None,
        )
        .await;
        assert_eq!(r.status(), 201);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["changed"], true);
        assert_eq!(body["revision"], 1);
        assert_eq!(body["descriptor"]["systemCode"], SYSTEM_CODE);
        assert_eq!(body["descriptor"]["interface"]["path"], "/v1/applications");

        let r = put(
            &sim,
            &path,
            &descriptor("application-forward", "sha256:aaa1"),
            None,
        )
        .await;
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            (body["changed"].clone(), body["revision"].clone()),
            (json!(false), json!(1))
        );

        let mut changed = descriptor("application-forward", "sha256:bbb2");
        changed["systems"] = json!(["social-services", "population-register"]);
        let r = put(&sim, &path, &changed, None).await;
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            (body["changed"].clone(), body["revision"].clone()),
            (json!(true), json!(2))
        );

        let stored = state
            .descriptor(SYSTEM_CODE, "application-forward")
            .unwrap();
        assert_eq!(stored.revision, 2);
        assert_eq!(stored.version, "sha256:bbb2");
        assert_eq!(stored.descriptor["systems"][1], "population-register");

        let mut timer = descriptor("nightly-report", "v1");
        timer["direction"] = json!("consumes");
        timer["interface"] = json!({"protocol": "timer", "schedule": "0 2 * * *"});
        assert_eq!(
            put(&sim, &format!("{SYSTEM_CODE}/nightly-report"), &timer, None)
                .await
                .status(),
            201
        );
        let r = reqwest::Client::new()
            .get(url(&sim, SYSTEM_CODE))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        let list: Value = r.json().await.unwrap();
        assert_eq!(list["total"], 2);
        assert_eq!(list["items"][0]["routeId"], "application-forward");
        assert_eq!(list["items"][1]["revision"], 1);
        let r = reqwest::Client::new()
            .get(url(&sim, &path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.json::<Value>().await.unwrap()["revision"], 2);
        let r = reqwest::Client::new()
            .get(url(&sim, "OTHER-SYSTEM"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.json::<Value>().await.unwrap()["total"], 0);
    }

    #[tokio::test]
    async fn delete_and_message_id_replays() {
        let (sim, state) = sim().await;
        let path = format!("{SYSTEM_CODE}/company-lookup");
        let first = put(
            &sim,
            &path,
            &descriptor("company-lookup", "v1"),
            Some("p-1"),
        )
        .await;
        assert_eq!(first.status(), 201);
        let first: Value = first.json().await.unwrap();
        let again = put(
            &sim,
            &path,
            &descriptor("company-lookup", "v1"),
            Some("p-1"),
        )
        .await;
        assert_eq!(again.status(), 201, "the first answer again");
        assert_eq!(again.headers()["idempotent-replayed"], "true");
        assert_eq!(again.json::<Value>().await.unwrap(), first);
        let clash = put(
            &sim,
            &path,
            &descriptor("company-lookup", "v2"),
            Some("p-1"),
        )
        .await;
        assert_eq!(clash.status(), 409);
        assert_eq!(
            state
                .descriptor(SYSTEM_CODE, "company-lookup")
                .unwrap()
                .revision,
            1
        );

        assert_eq!(delete(&sim, &path, Some("d-1")).await.status(), 204);
        let r = delete(&sim, &path, Some("d-1")).await;
        assert_eq!(r.status(), 204, "a retried delete is not a 404");
        assert_eq!(r.headers()["idempotent-replayed"], "true");
        assert_eq!(delete(&sim, &path, None).await.status(), 404);
        assert!(state.descriptors(SYSTEM_CODE).is_empty());
        let r = put(&sim, &path, &descriptor("company-lookup", "v2"), None).await;
        assert_eq!(r.status(), 201);
        assert_eq!(r.json::<Value>().await.unwrap()["revision"], 1);
    }

    #[tokio::test]
    async fn invalid_descriptors_name_every_field() {
        let (sim, state) = sim().await;
        let path = format!("{SYSTEM_CODE}/application-forward");
        let mut bad = descriptor("other-route", "v1");
        bad["owner"] = json!("90000038742");
        bad["direction"] = json!("both");
        bad["interface"] = json!({"protocol": "amqp", "path": "applications"});
        bad["systems"] = json!(["social services"]);
        bad["schemas"] = json!([{"name": "a.json", "sha256": "ABC"}, "b.json"]);
        bad["updatedAt"] = json!("2026-03-01");
        bad["colour"] = json!("blue");
        let r = put(&sim, &path, &bad, None).await;
        assert_eq!(r.status(), 422);
        let body: Value = r.json().await.unwrap();
        let fields = error_fields(&body);
        assert_eq!(
            fields,
            [
                "colour",
                "routeId",
                "owner",
                "direction",
                "interface.path",
                "interface.queue",
                "systems[0]",
                "schemas[0].sha256",
                "schemas[1]",
                "updatedAt"
            ]
        );
        let mut http = descriptor("application-forward", "v1");
        http["interface"] = json!({"protocol": "http", "method": "FETCH"});
        let body: Value = put(&sim, &path, &http, None).await.json().await.unwrap();
        assert_eq!(body["errors"][0]["field"], "interface.method");
        assert_eq!(body["errors"][1]["field"], "interface.path");

        let r = put(&sim, "lower-case/x", &descriptor("x", "v1"), None).await;
        assert_eq!(r.status(), 400);
        let r = put(
            &sim,
            &format!("{SYSTEM_CODE}/bad%20id"),
            &descriptor("bad id", "v1"),
            None,
        )
        .await;
        assert_eq!(r.status(), 400);
        let r = reqwest::Client::new()
            .put(url(&sim, &path))
            .json(&descriptor("application-forward", "v1"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let r = reqwest::Client::new()
            .get(url(&sim, &path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        assert!(state.descriptors(SYSTEM_CODE).is_empty());
    }

    #[test]
    fn path_segment_rules() {
        assert!(is_system_code(SYSTEM_CODE) && is_system_code("VPVKAC_IS"));
        assert!(!is_system_code("tilts") && !is_system_code("X") && !is_system_code("-AB"));
        assert!(is_route_id("person-lookup-soap") && is_route_id("a_b"));
        assert!(!is_route_id("") && !is_route_id("a/b") && !is_route_id(&"a".repeat(65)));
        assert!(is_sha256_hex(&"0a".repeat(32)) && !is_sha256_hex(&"0A".repeat(32)));
    }
}
