//! Simulator of an institution that takes service applications in: a municipal social service's
//! case intake over REST/JSON, with an OAuth2 client-credentials token endpoint.
//!
//! Contract:
//!
//! - `POST /cases` with a JSON application
//!   `{"applicationId","serviceCode","applicant":{"personalCode","firstName","lastName"},"submittedAt","channel",...}`
//!   -> 201 `{"caseNumber":"SD-2026-000123","status":"registered","receivedAt"}` and a `Location`.
//!   Errors, all problem+json: 401 when an `Authorization` header is present but the token is not
//!   one this simulator issued (a missing header is accepted, so routes without auth work too);
//!   415 without a JSON content type; 400 on malformed JSON; 422 with `errors: [{field, message}]`
//!   when `applicationId`, `serviceCode` or `applicant.personalCode` is missing or the personal
//!   code is invalid. No answer ever contains the personal code, and the simulator does not
//!   store it.
//! - Idempotency: a repeat with the same `X-Tilts-Message-Id` (or, without it, `Idempotency-Key`)
//!   answers 200 with the same case (header `Idempotent-Replayed: true`); reusing the key for a
//!   different `applicationId`/`serviceCode` answers 409.
//! - `GET /cases/{caseNumber}` -> 200
//!   `{"caseNumber","applicationId","serviceCode","channel","status","receivedAt","updatedAt"}`;
//!   404 when unknown, 400 when not shaped `SD-YYYY-NNNNNN`.
//! - `POST /oauth2/token` (form `grant_type=client_credentials`, client credentials in the form or
//!   HTTP Basic; accepted: [`CLIENT_ID`] / [`CLIENT_SECRET`]) -> `{"access_token","token_type",
//!   "expires_in"}`; RFC 6749 errors otherwise.
//! - Control (not recorded): `POST /_sim/cases/{caseNumber}/status` with `{"status":"decided"}`
//!   moves a case along (`registered`, `in_review`, `awaiting_documents`, `decided`, `rejected`,
//!   `closed`), for tests of status polling.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use chrono::{Datelike, SecondsFormat, Utc};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::{Value, json};

use super::http_kit::{
    self, authenticated_grant, invalid, is_json_media_type, json_response, mark_replayed, no_store,
    parse_json, prefixed_bearer, unauthorized_with,
};
use super::server::problem;
use crate::ident::PersonalCode;

/// The OAuth2 client id the token endpoint accepts.
pub const CLIENT_ID: &str = "tilts";
/// The OAuth2 client secret the token endpoint accepts.
pub const CLIENT_SECRET: &str = "tilts-sim-secret";
/// The realm of this simulator's `WWW-Authenticate` challenges.
const REALM: &str = "social-services";
/// Lifetime announced for issued tokens, in seconds.
const TOKEN_LIFETIME_S: u64 = 3600;
/// The first case gets this sequence number, as if the register had been in use for a while.
const FIRST_CASE_SEQ: u64 = 123;

/// The statuses a case can be in, in their usual order.
pub const CASE_STATUSES: &[&str] = &[
    "registered",
    "in_review",
    "awaiting_documents",
    "decided",
    "rejected",
    "closed",
];

/// One registered case. Holds no personal data on purpose: the simulator answers status
/// queries, which never need the applicant's identity.
#[derive(Clone, Debug)]
struct Case {
    case_number: String,
    application_id: String,
    service_code: String,
    channel: Option<String>,
    status: &'static str,
    received_at: String,
    updated_at: String,
}

impl Case {
    fn receipt(&self) -> Value {
        json!({
            "caseNumber": self.case_number,
            "status": self.status,
            "receivedAt": self.received_at,
        })
    }

    fn to_json(&self) -> Value {
        json!({
            "caseNumber": self.case_number,
            "applicationId": self.application_id,
            "serviceCode": self.service_code,
            "channel": self.channel,
            "status": self.status,
            "receivedAt": self.received_at,
            "updatedAt": self.updated_at,
        })
    }
}

#[derive(Default)]
struct Intake {
    next_seq: u64,
    cases: HashMap<String, Case>,
    /// Idempotency key -> case number.
    by_key: HashMap<String, String>,
    tokens: HashSet<String>,
}

/// The intake's state; one mutex because every operation is a short in-memory update.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Intake>>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Intake> {
        http_kit::lock(&self.0)
    }
}

/// The routes of the social services simulator (without the shared `/_sim/` machinery).
/// Each call starts with an empty case register.
pub fn router() -> Router {
    let shared = Shared(Arc::new(Mutex::new(Intake {
        next_seq: FIRST_CASE_SEQ,
        ..Intake::default()
    })));
    Router::new()
        .route("/cases", post(create_case))
        .route("/cases/{case_number}", get(show_case))
        .route("/oauth2/token", post(issue_token))
        .route("/_sim/cases/{case_number}/status", post(set_status))
        .with_state(shared)
}

fn now() -> chrono::DateTime<Utc> {
    Utc::now()
}

fn timestamp(t: chrono::DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `Some(401 answer)` when an `Authorization` header is present but not a token we issued.
fn reject_bad_token(shared: &Shared, headers: &HeaderMap) -> Option<Response> {
    headers.get(header::AUTHORIZATION)?;
    if prefixed_bearer(headers).is_some_and(|t| shared.lock().tokens.contains(t)) {
        return None;
    }
    Some(unauthorized_with(
        REALM,
        "The bearer token is missing, malformed, expired or was not issued by this service.",
    ))
}

/// The fields the intake needs from an application.
struct Application {
    application_id: String,
    service_code: String,
    channel: Option<String>,
}

/// Checks an application; on failure lists every problem as `(field, message)`. Messages name
/// the field only, never its value.
fn validate(body: &Value) -> Result<Application, Vec<(&'static str, String)>> {
    let Some(object) = body.as_object() else {
        return Err(vec![("$", "the application must be a JSON object".into())]);
    };
    let mut errors = Vec::new();
    let mut text = |field: &'static str, value: Option<&Value>| match value {
        None | Some(Value::Null) => {
            errors.push((field, "is required".to_owned()));
            None
        }
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
        Some(_) => {
            errors.push((field, "must be a non-empty string".to_owned()));
            None
        }
    };
    let application_id = text("applicationId", object.get("applicationId"));
    let service_code = text("serviceCode", object.get("serviceCode"));
    match object.get("applicant") {
        None | Some(Value::Null) => {
            errors.push(("applicant.personalCode", "is required".into()));
        }
        Some(Value::Object(applicant)) => match applicant.get("personalCode") {
            None | Some(Value::Null) => {
                errors.push(("applicant.personalCode", "is required".into()));
            }
            Some(Value::String(code)) => {
                if let Err(e) = PersonalCode::parse(code) {
                    // The error's message describes the rule broken, never the input.
                    errors.push(("applicant.personalCode", format!("is not valid: {e}")));
                }
            }
            Some(_) => errors.push(("applicant.personalCode", "must be a string".into())),
        },
        Some(_) => errors.push(("applicant", "must be an object".into())),
    }
    let channel = object
        .get("channel")
        .and_then(Value::as_str)
        .map(str::to_owned);
    match (application_id, service_code) {
        (Some(application_id), Some(service_code)) if errors.is_empty() => Ok(Application {
            application_id,
            service_code,
            channel,
        }),
        _ => Err(errors),
    }
}

async fn create_case(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(denied) = reject_bad_token(&shared, &headers) {
        return denied;
    }
    if !is_json_media_type(&headers) {
        let mut r = problem(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported Media Type",
            "Applications must be sent as application/json.",
        );
        r.headers_mut()
            .insert("accept-post", HeaderValue::from_static("application/json"));
        return r;
    }
    let body = match parse_json(&body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let application = match validate(&body) {
        Ok(a) => a,
        Err(errors) => {
            let errors = errors
                .into_iter()
                .map(|(field, message)| (field.to_owned(), message))
                .collect();
            return invalid("invalid-application", "application", errors);
        }
    };
    let key = ["x-tilts-message-id", "idempotency-key"]
        .iter()
        .filter_map(|h| headers.get(*h)?.to_str().ok())
        .map(str::trim)
        .find(|k| !k.is_empty())
        .map(str::to_owned);

    let mut intake = shared.lock();
    if let Some(existing) = key
        .as_ref()
        .and_then(|k| intake.by_key.get(k))
        .and_then(|n| intake.cases.get(n))
    {
        if existing.application_id != application.application_id
            || existing.service_code != application.service_code
        {
            return problem(
                StatusCode::CONFLICT,
                "idempotency-key-reused",
                "Conflict",
                format!(
                    "The idempotency key was already used for another application (case {}).",
                    existing.case_number
                ),
            );
        }
        let mut r = json_response(StatusCode::OK, existing.receipt());
        mark_replayed(&mut r);
        return r;
    }
    let received = now();
    let case_number = format!("SD-{}-{:06}", received.year(), intake.next_seq);
    intake.next_seq += 1;
    let case = Case {
        case_number: case_number.clone(),
        application_id: application.application_id,
        service_code: application.service_code,
        channel: application.channel,
        status: "registered",
        received_at: timestamp(received),
        updated_at: timestamp(received),
    };
    let receipt = case.receipt();
    intake.cases.insert(case_number.clone(), case);
    if let Some(key) = key {
        intake.by_key.insert(key, case_number.clone());
    }
    drop(intake);
    let mut r = (StatusCode::CREATED, Json(receipt)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/cases/{case_number}")) {
        r.headers_mut().insert(header::LOCATION, location);
    }
    r
}

fn is_case_number(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 14
        && s.starts_with("SD-")
        && b[7] == b'-'
        && b[3..7].iter().chain(&b[8..]).all(u8::is_ascii_digit)
}

fn case_lookup_error(case_number: &str) -> Response {
    if is_case_number(case_number) {
        problem(
            StatusCode::NOT_FOUND,
            "case-not-found",
            "Case not found",
            format!("No case {case_number}."),
        )
    } else {
        problem(
            StatusCode::BAD_REQUEST,
            "invalid-case-number",
            "Invalid case number",
            "A case number looks like SD-2026-000123.",
        )
    }
}

async fn show_case(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Path(case_number): Path<String>,
) -> Response {
    if let Some(denied) = reject_bad_token(&shared, &headers) {
        return denied;
    }
    let found = shared.lock().cases.get(&case_number).map(Case::to_json);
    match found {
        Some(case) => Json(case).into_response(),
        None => case_lookup_error(&case_number),
    }
}

async fn set_status(
    State(shared): State<Shared>,
    Path(case_number): Path<String>,
    body: Bytes,
) -> Response {
    let wanted = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("status")?.as_str().map(str::to_owned));
    let Some(status) = wanted.and_then(|w| CASE_STATUSES.iter().find(|s| **s == w)) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "invalid-status",
            "Invalid status",
            format!(
                "Send {{\"status\": ...}} with one of: {}.",
                CASE_STATUSES.join(", ")
            ),
        );
    };
    let mut intake = shared.lock();
    match intake.cases.get_mut(&case_number) {
        Some(case) => {
            case.status = status;
            case.updated_at = timestamp(now());
            Json(case.to_json()).into_response()
        }
        None => case_lookup_error(&case_number),
    }
}

async fn issue_token(
    State(shared): State<Shared>,
    headers: HeaderMap,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let client = (CLIENT_ID, CLIENT_SECRET);
    if let Err(r) = authenticated_grant(&headers, form, client, decode_base64, REALM) {
        return *r;
    }
    let mut intake = shared.lock();
    let nanos = now().timestamp_subsec_nanos();
    let token = format!("sim-at-{}-{nanos:09}", intake.tokens.len() + 1);
    intake.tokens.insert(token.clone());
    drop(intake);
    no_store(
        Json(json!({
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": TOKEN_LIFETIME_S,
            "scope": "cases",
        }))
        .into_response(),
    )
}

/// Standard base64 (with or without padding); `None` when malformed.
fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::http_kit::error_fields;
    use crate::sim::{SimServer, social_services};

    const VALID_CODE: &str = "010190-12349";
    const NEW_FORM_CODE: &str = "32579461005";
    const INVALID_CODE: &str = "010190-12340";

    async fn sim() -> SimServer {
        social_services("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap()
    }

    fn application(id: &str, code: &str) -> Value {
        json!({
            "applicationId": id,
            "serviceCode": "SOC-PABALSTS-GMI",
            "applicant": {"personalCode": code, "firstName": "Anna", "lastName": "Paraudziņa"},
            "submittedAt": "2026-03-02T09:15:00+02:00",
            "channel": "vpvkac",
        })
    }

    async fn post(sim: &SimServer, body: &Value, key: Option<&str>) -> reqwest::Response {
        let mut req = reqwest::Client::new()
            .post(format!("{}/cases", sim.url()))
            .json(body);
        if let Some(key) = key {
            req = req.header("X-Tilts-Message-Id", key);
        }
        req.send().await.unwrap()
    }

    #[tokio::test]
    async fn registers_a_case_and_reports_its_status() {
        let sim = sim().await;
        let r = post(
            &sim,
            &application("APP-2026-0001", VALID_CODE),
            Some("msg-1"),
        )
        .await;
        assert_eq!(r.status(), 201);
        let year = Utc::now().year();
        let number = format!("SD-{year}-000123");
        assert_eq!(r.headers()["location"], format!("/cases/{number}").as_str());
        let receipt: Value = r.json().await.unwrap();
        assert_eq!(receipt["caseNumber"], number.as_str());
        assert_eq!(receipt["status"], "registered");
        assert!(receipt["receivedAt"].as_str().unwrap().ends_with('Z'));

        let r = post(&sim, &application("APP-2026-0002", NEW_FORM_CODE), None).await;
        assert_eq!(r.status(), 201);
        let second: Value = r.json().await.unwrap();
        assert_eq!(second["caseNumber"], format!("SD-{year}-000124").as_str());

        let r = reqwest::get(format!("{}/cases/{number}", sim.url()))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        assert!(
            !text.contains("12349") && !text.contains("010190"),
            "{text}"
        );
        let case: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(case["applicationId"], "APP-2026-0001");
        assert_eq!(case["serviceCode"], "SOC-PABALSTS-GMI");
        assert_eq!(case["channel"], "vpvkac");
        assert_eq!(case["status"], "registered");

        let recorded = sim.requests();
        assert_eq!(recorded.len(), 3);
        assert_eq!(recorded[0].header("x-tilts-message-id"), Some("msg-1"));
        assert_eq!(
            recorded[0].json().unwrap()["applicationId"],
            "APP-2026-0001"
        );
    }

    #[tokio::test]
    async fn repeat_with_the_same_message_id_returns_the_same_case() {
        let sim = sim().await;
        let app = application("APP-2026-0010", VALID_CODE);
        let first: Value = post(&sim, &app, Some("msg-10")).await.json().await.unwrap();
        let r = post(&sim, &app, Some("msg-10")).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["idempotent-replayed"], "true");
        let again: Value = r.json().await.unwrap();
        assert_eq!(again, first);

        // Idempotency-Key works the same when the tilts header is absent.
        let send = || {
            reqwest::Client::new()
                .post(format!("{}/cases", sim.url()))
                .header("Idempotency-Key", "key-20")
                .json(&application("APP-2026-0020", VALID_CODE))
                .send()
        };
        assert_eq!(send().await.unwrap().status(), 201);
        assert_eq!(send().await.unwrap().status(), 200);

        // A different application under a used key is a conflict.
        let r = post(
            &sim,
            &application("APP-2026-0011", VALID_CODE),
            Some("msg-10"),
        )
        .await;
        assert_eq!(r.status(), 409);

        // Without a key, each post is a new case.
        let a: Value = post(&sim, &app, None).await.json().await.unwrap();
        let b: Value = post(&sim, &app, None).await.json().await.unwrap();
        assert_ne!(a["caseNumber"], b["caseNumber"]);
    }

    #[tokio::test]
    async fn rejects_non_json_and_malformed_bodies() {
        let sim = sim().await;
        let c = reqwest::Client::new();
        let url = format!("{}/cases", sim.url());
        let body = application("APP-1", VALID_CODE).to_string();

        let r = c.post(&url).body(body.clone()).send().await.unwrap();
        assert_eq!(r.status(), 415);
        let r = c
            .post(&url)
            .header("content-type", "text/plain")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 415);
        let r = c
            .post(&url)
            .header("content-type", "application/json; charset=utf-8")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);

        let truncated = &body[..body.len() - 20];
        let r = c
            .post(&url)
            .header("content-type", "application/json")
            .body(truncated.to_owned())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let text = r.text().await.unwrap();
        assert!(
            !text.contains("010190") && !text.contains("12349"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn lists_missing_and_invalid_fields_without_the_personal_code() {
        let sim = sim().await;
        let r = post(&sim, &json!({"channel": "vpvkac"}), None).await;
        assert_eq!(r.status(), 422);
        let body: Value = r.json().await.unwrap();
        let fields = error_fields(&body);
        assert_eq!(
            fields,
            ["applicationId", "serviceCode", "applicant.personalCode"]
        );

        let r = post(&sim, &application("APP-3", INVALID_CODE), None).await;
        assert_eq!(r.status(), 422);
        let text = r.text().await.unwrap();
        assert!(
            !text.contains("010190") && !text.contains("12340"),
            "{text}"
        );
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["errors"][0]["field"], "applicant.personalCode");

        let mut app = application("APP-4", VALID_CODE);
        app["applicant"]["personalCode"] = json!(1019012349_u64);
        app["serviceCode"] = json!("");
        let r = post(&sim, &app, None).await;
        assert_eq!(r.status(), 422);
        let text = r.text().await.unwrap();
        assert!(!text.contains("1019012349"), "{text}");

        let r = post(&sim, &json!(["not", "an", "object"]), None).await;
        assert_eq!(r.status(), 422);
        assert!(sim.requests().len() == 4);
    }

    #[tokio::test]
    async fn case_lookup_errors_and_status_control() {
        let sim = sim().await;
        let c = reqwest::Client::new();
        let r = c
            .get(format!("{}/cases/SD-2026-999999", sim.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        let r = c
            .get(format!("{}/cases/12345", sim.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);

        let receipt: Value = post(&sim, &application("APP-5", VALID_CODE), None)
            .await
            .json()
            .await
            .unwrap();
        let number = receipt["caseNumber"].as_str().unwrap();
        let r = c
            .post(format!("{}/_sim/cases/{number}/status", sim.url()))
            .json(&json!({"status": "decided"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let case: Value = c
            .get(format!("{}/cases/{number}", sim.url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(case["status"], "decided");
        let r = c
            .post(format!("{}/_sim/cases/{number}/status", sim.url()))
            .json(&json!({"status": "lost"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        // Control calls are not recorded: the two lookups, the post and the final get.
        assert_eq!(sim.requests().len(), 4);
    }

    #[tokio::test]
    async fn oauth2_client_credentials() {
        let sim = sim().await;
        let c = reqwest::Client::new();
        let token_url = format!("{}/oauth2/token", sim.url());
        let form = |body: &str| {
            c.post(&token_url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body.to_owned())
                .send()
        };

        let r =
            form("grant_type=client_credentials&client_id=tilts&client_secret=tilts-sim-secret")
                .await
                .unwrap();
        assert_eq!(r.status(), 200);
        let token: Value = r.json().await.unwrap();
        assert_eq!(token["token_type"], "Bearer");
        let access = token["access_token"].as_str().unwrap().to_owned();

        // HTTP Basic: base64("tilts:tilts-sim-secret").
        let r = c
            .post(&token_url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("authorization", "Basic dGlsdHM6dGlsdHMtc2ltLXNlY3JldA==")
            .body("grant_type=client_credentials")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);

        let r = form("grant_type=client_credentials&client_id=tilts&client_secret=wrong")
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_client");
        let r = form("grant_type=password&username=x").await.unwrap();
        assert_eq!(r.status(), 400);

        let app = application("APP-6", VALID_CODE);
        let r = c
            .post(format!("{}/cases", sim.url()))
            .bearer_auth(&access)
            .json(&app)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let r = c
            .post(format!("{}/cases", sim.url()))
            .bearer_auth("forged")
            .json(&app)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        assert!(r.headers().contains_key("www-authenticate"));
    }

    #[test]
    fn base64_decoding() {
        assert_eq!(decode_base64("dGlsdHM6eA==").unwrap(), b"tilts:x");
        assert_eq!(decode_base64("dGlsdHM6eA").unwrap(), b"tilts:x");
        assert!(decode_base64("not base64!").is_none());
        assert!(is_case_number("SD-2026-000123"));
        assert!(!is_case_number("SD-2026-00012"));
        assert!(!is_case_number("XX-2026-000123"));
    }
}
