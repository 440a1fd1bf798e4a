//! Simulator of Riga's client-information system ("Pašvaldību klientu informācijas pārvaldības
//! risinājums"): client profiles and the history of each client's interactions with the
//! municipality, over REST/JSON with OAuth2 client credentials.
//!
//! No public interface of the Riga system exists; this is tilts' own proposal, published as
//! `mappings/contracts/riga-clients.openapi.json` (OpenAPI 3.1) and described in
//! `docs/systems.md`. Contract:
//!
//! - `POST /oauth/token` ([`TOKEN_PATH`]), form `grant_type=client_credentials[&scope=...]`,
//!   the client authenticated with HTTP Basic (or, as RFC 6749 allows, `client_id` and
//!   `client_secret` in the form); accepted: [`CLIENT_ID`] / [`CLIENT_SECRET`] -> 200
//!   `{"access_token","token_type":"Bearer","expires_in","scope"}`; RFC 6749 errors
//!   (`invalid_client` 401, `unsupported_grant_type`, `invalid_scope`, `invalid_request` 400).
//!   Tokens last [`TOKEN_LIFETIME`].
//! - Every other endpoint is under [`BASE_PATH`] and needs `Authorization: Bearer <token>` with
//!   a token issued and not expired (401 problem+json otherwise):
//! - `POST /clients/search` with `{"personalCode"}` -> 200 the profile `{"clientId",
//!   "personalCode","firstName","lastName","status","declaredAddress":{"code","text"},
//!   "preferredLanguage","contact":{"email"?,"phone"?},"consents":{"email","sms","eAddress"}}`;
//!   404 when the person has no profile ([`NO_PROFILE`], or anyone outside [`PROFILES`]); 422
//!   when the code is missing or invalid. The personal code travels only in this request body
//!   and this answer: never in a path, an error or any other answer.
//! - `POST /clients/{clientId}/interactions` with `{"type","channel","centre"?:{"code","name"?},
//!   "serviceCode"?,"caseId"?,"occurredAt","summary"}` -> 201 `{"interactionId","clientId",
//!   "receivedAt"}`; `type` one of [`INTERACTION_TYPES`], `channel` one of [`CHANNELS`], and a
//!   `summary` must not contain anything shaped like a personal code. 400 for a malformed
//!   client id or body, 404 for an unknown client, 415 without JSON, 422 with
//!   `errors: [{field, message}]`. A repeat with the same `X-Tilts-Message-Id` gets the first
//!   answer again (`Idempotent-Replayed: true`) and records nothing; the same id with another
//!   request is 409.
//! - `GET /clients/{clientId}/interactions` -> 200 `{"clientId","items":[interaction],"total"}`,
//!   oldest first; 404 for an unknown client.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, State};
use axum::response::Response;
use axum::routing::post;
use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde_json::{Map, Value, json};

use super::address_register;
use super::http_kit::{
    self, FieldError, Fields, Replays, authenticated_grant, bearer, fingerprint, invalid,
    json_body, json_response, message_id, no_store, now, unauthorized,
};
use super::population_register::{self, ACTIVE, DECEASED, NEW_FORM};
use super::server::problem;
use crate::ident::PersonalCode;
use crate::redact::redact;

/// Base path of the data endpoints.
pub const BASE_PATH: &str = "/api/v1";
/// Path of the OAuth2 token endpoint (outside [`BASE_PATH`], as an authorization server is).
pub const TOKEN_PATH: &str = "/oauth/token";
/// The OAuth2 client id accepted unless built with another ([`RigaState::new`]).
pub const CLIENT_ID: &str = "tilts-riga";
/// The OAuth2 client secret accepted unless built with another.
pub const CLIENT_SECRET: &str = "riga-sim-secret";
/// The scopes a token can carry; a token request without `scope` gets all of them.
pub const SCOPES: &[&str] = &["clients:read", "interactions:write"];
/// How long an issued token is accepted.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// The kinds of interaction.
pub const INTERACTION_TYPES: &[&str] = &["visit", "application", "answer", "status"];
/// The channels an interaction happens through.
pub const CHANNELS: &[&str] = &["visit", "e-service", "phone", "post", "email"];
/// The preferred languages a profile can state.
pub const LANGUAGES: &[&str] = &["lv", "en", "ru"];

/// Client id of the population register's [`ACTIVE`] person.
pub const ACTIVE_CLIENT: &str = "RK-000184";
/// Client id of the [`DECEASED`] person (profile status `deceased`).
pub const DECEASED_CLIENT: &str = "RK-000305";
/// Client id of the [`NEW_FORM`] person (a new-form personal code).
pub const NEW_FORM_CLIENT: &str = "RK-000412";
/// A person of the population register with no Riga profile: search answers 404.
pub const NO_PROFILE: &str = "230478-10564";
/// A well-formed client id nobody has: 404.
pub const UNKNOWN_CLIENT: &str = "RK-999999";

/// Longest accepted summary.
const MAX_SUMMARY: usize = 500;
/// Most tokens remembered; the oldest expire first anyway.
const MAX_TOKENS: usize = 10_000;

/// Consents a client gave for being contacted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Consents {
    /// Notices by e-mail.
    pub email: bool,
    /// Notices by SMS.
    pub sms: bool,
    /// Official documents to the client's e-address.
    pub e_address: bool,
}

/// One client profile. Names and address come from the population register simulator, so the
/// two never disagree. `Debug` leaves the personal code and the contacts out.
#[derive(Clone, Copy)]
pub struct Profile {
    /// The Riga system's own id, `RK-NNNNNN`: the only id that appears in paths.
    pub client_id: &'static str,
    /// Personal code of a person in [`population_register::PEOPLE`].
    pub personal_code: &'static str,
    /// One of [`LANGUAGES`].
    pub preferred_language: &'static str,
    /// E-mail address, when given.
    pub email: Option<&'static str>,
    /// Phone number, when given.
    pub phone: Option<&'static str>,
    /// Contact consents.
    pub consents: Consents,
}

impl fmt::Debug for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Profile")
            .field("client_id", &self.client_id)
            .field("preferred_language", &self.preferred_language)
            .finish_non_exhaustive()
    }
}

impl Profile {
    /// The profile as `POST /clients/search` answers it; `None` if the person is missing from
    /// the population register fixtures (a fixture bug, caught by the tests).
    pub fn to_json(&self) -> Option<Value> {
        let person = population_register::find(self.personal_code)?;
        let address = address_register::find(person.address_code).map(|a| a.text);
        let mut contact = Map::new();
        if let Some(e) = self.email {
            contact.insert("email".into(), e.into());
        }
        if let Some(p) = self.phone {
            contact.insert("phone".into(), p.into());
        }
        Some(json!({
            "clientId": self.client_id,
            "personalCode": person.code,
            "firstName": person.given_name,
            "lastName": person.family_name,
            "status": person.status,
            "declaredAddress": {"code": person.address_code, "text": address},
            "preferredLanguage": self.preferred_language,
            "contact": contact,
            "consents": {
                "email": self.consents.email,
                "sms": self.consents.sms,
                "eAddress": self.consents.e_address,
            },
        }))
    }
}

const fn profile(
    client_id: &'static str,
    personal_code: &'static str,
    preferred_language: &'static str,
    email: Option<&'static str>,
    phone: Option<&'static str>,
    (email_ok, sms, e_address): (bool, bool, bool),
) -> Profile {
    Profile {
        client_id,
        personal_code,
        preferred_language,
        email,
        phone,
        consents: Consents {
            email: email_ok,
            sms,
            e_address,
        },
    }
}

/// Every client profile (all fictional).
#[rustfmt::skip]
pub const PROFILES: &[Profile] = &[
    profile(ACTIVE_CLIENT, ACTIVE, "lv", Some("janis.berzins@example.lv"), Some("+371 20000184"), (true, true, false)),
    profile("RK-000217", "120988-11029", "en", Some("martins.zarins@example.lv"), None, (true, false, false)),
    profile(DECEASED_CLIENT, DECEASED, "lv", None, Some("+371 20000305"), (false, false, false)),
    profile(NEW_FORM_CLIENT, NEW_FORM, "lv", None, None, (false, false, true)),
    profile("RK-000533", "150285-10005", "ru", Some("anna.ozola@example.lv"), Some("+371 26000533"), (true, true, true)),
];

/// The profile of the person with this personal code (with or without the hyphen), if any.
pub fn find_by_code(code: &str) -> Option<&'static Profile> {
    let digits = |s: &str| s.bytes().filter(|b| *b != b'-').collect::<Vec<u8>>();
    let wanted = digits(code);
    PROFILES.iter().find(|p| digits(p.personal_code) == wanted)
}

/// The profile with this client id, if any.
pub fn find_client(client_id: &str) -> Option<&'static Profile> {
    PROFILES.iter().find(|p| p.client_id == client_id)
}

/// One interaction the simulator recorded. Holds no personal code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interaction {
    /// The id the simulator gave it, `INT-NNNNNN`.
    pub interaction_id: String,
    /// The client it belongs to.
    pub client_id: String,
    /// One of [`INTERACTION_TYPES`].
    pub kind: String,
    /// One of [`CHANNELS`].
    pub channel: String,
    /// The centre's code, when sent.
    pub centre_code: Option<String>,
    /// The centre's name, when sent.
    pub centre_name: Option<String>,
    /// The service code, when sent.
    pub service_code: Option<String>,
    /// The case (application) id, when sent.
    pub case_id: Option<String>,
    /// When it happened (RFC 3339, as sent).
    pub occurred_at: String,
    /// What happened, in a sentence.
    pub summary: String,
    /// The `X-Tilts-Message-Id` it came with.
    pub message_id: Option<String>,
    /// When the simulator received it (RFC 3339, UTC).
    pub received_at: String,
}

impl Interaction {
    /// The interaction as listed by `GET /clients/{clientId}/interactions`.
    pub fn to_json(&self) -> Value {
        let mut out = Map::new();
        out.insert("interactionId".into(), self.interaction_id.clone().into());
        out.insert("type".into(), self.kind.clone().into());
        out.insert("channel".into(), self.channel.clone().into());
        if let Some(code) = &self.centre_code {
            let mut centre = Map::new();
            centre.insert("code".into(), code.clone().into());
            if let Some(name) = &self.centre_name {
                centre.insert("name".into(), name.clone().into());
            }
            out.insert("centre".into(), centre.into());
        }
        if let Some(s) = &self.service_code {
            out.insert("serviceCode".into(), s.clone().into());
        }
        if let Some(c) = &self.case_id {
            out.insert("caseId".into(), c.clone().into());
        }
        out.insert("occurredAt".into(), self.occurred_at.clone().into());
        out.insert("summary".into(), self.summary.clone().into());
        out.insert("messageId".into(), self.message_id.clone().into());
        out.insert("receivedAt".into(), self.received_at.clone().into());
        Value::Object(out)
    }
}

#[derive(Default)]
struct Data {
    /// Issued token -> when it expires.
    tokens: HashMap<String, Instant>,
    issued: u64,
    interactions: Vec<Interaction>,
    replays: Replays,
}

struct Inner {
    client_id: String,
    client_secret: String,
    data: Mutex<Data>,
}

/// The simulator's state: the client credentials it accepts, the tokens it issued and the
/// interactions it recorded. Cheap to clone; clones share the same state. `Debug` never prints
/// the secret or a token.
#[derive(Clone)]
pub struct RigaState(Arc<Inner>);

impl fmt::Debug for RigaState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RigaState")
            .field("client_id", &self.0.client_id)
            .field("interactions", &self.lock().interactions.len())
            .finish_non_exhaustive()
    }
}

impl Default for RigaState {
    fn default() -> Self {
        RigaState::new(CLIENT_ID, CLIENT_SECRET)
    }
}

impl RigaState {
    /// A state accepting these OAuth2 client credentials, with no interactions.
    pub fn new(client_id: impl Into<String>, client_secret: impl Into<String>) -> RigaState {
        RigaState(Arc::new(Inner {
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            data: Mutex::new(Data::default()),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Data> {
        http_kit::lock(&self.0.data)
    }

    /// The interactions recorded for `client_id`, oldest first.
    pub fn interactions(&self, client_id: &str) -> Vec<Interaction> {
        self.lock()
            .interactions
            .iter()
            .filter(|i| i.client_id == client_id)
            .cloned()
            .collect()
    }

    /// Every interaction recorded, in arrival order.
    pub fn all_interactions(&self) -> Vec<Interaction> {
        self.lock().interactions.clone()
    }

    /// How many tokens were issued so far.
    pub fn tokens_issued(&self) -> u64 {
        self.lock().issued
    }

    /// `Some(401)` unless the request carries a token issued here and not yet expired.
    fn check_token(&self, headers: &HeaderMap) -> Option<Response> {
        let now = Instant::now();
        let valid = bearer(headers)
            .and_then(|t| self.lock().tokens.get(t).copied())
            .is_some_and(|expires| expires > now);
        (!valid).then(|| unauthorized("riga-clients"))
    }
}

/// The routes of the Riga simulator (without the shared `/_sim/` machinery), accepting
/// [`CLIENT_ID`] / [`CLIENT_SECRET`].
pub fn router() -> Router {
    router_with_state().0
}

/// The routes and a handle on their state, to read the interactions.
pub fn router_with_state() -> (Router, RigaState) {
    let state = RigaState::default();
    (router_for(state.clone()), state)
}

/// The routes over a given state (e.g. one built with other credentials).
pub fn router_for(state: RigaState) -> Router {
    Router::new()
        .route(TOKEN_PATH, post(issue_token))
        .route(&format!("{BASE_PATH}/clients/search"), post(search))
        .route(
            &format!("{BASE_PATH}/clients/{{client_id}}/interactions"),
            post(record_interaction).get(list_interactions),
        )
        .route(
            &format!("{BASE_PATH}/cases/{{case_id}}/interactions"),
            post(record_case_interaction),
        )
        .with_state(state)
}

/// Whether `s` is shaped `RK-NNNNNN`.
pub fn is_client_id(s: &str) -> bool {
    s.len() == 9 && s.starts_with("RK-") && s.bytes().skip(3).all(|b| b.is_ascii_digit())
}

/// 400 for a malformed client id, 404 for an unknown one.
fn client_error(client_id: &str) -> Response {
    if is_client_id(client_id) {
        problem(
            StatusCode::NOT_FOUND,
            "client-not-found",
            "Client not found",
            format!("There is no client {client_id}."),
        )
    } else {
        problem(
            StatusCode::BAD_REQUEST,
            "invalid-client-id",
            "Invalid client id",
            "A client id looks like RK-000184.",
        )
    }
}

async fn search(State(state): State<RigaState>, headers: HeaderMap, raw: Bytes) -> Response {
    if let Some(denied) = state.check_token(&headers) {
        return denied;
    }
    let body = match json_body(&headers, &raw) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let code = match validate_search(&body) {
        Ok(c) => c,
        Err(errors) => return invalid("invalid-search", "search", errors),
    };
    match find_by_code(code.as_str_digits()).and_then(Profile::to_json) {
        Some(profile) => json_response(StatusCode::OK, profile),
        // Deliberately says nothing about the code searched for.
        None => problem(
            StatusCode::NOT_FOUND,
            "client-not-found",
            "Client not found",
            "No client profile matches the personal code.",
        ),
    }
}

fn validate_search(body: &Value) -> Result<PersonalCode, Vec<FieldError>> {
    let mut f = Fields::new(body, &["personalCode"])?;
    let code = f
        .value("personalCode", true)
        .and_then(|v| match v.as_str() {
            Some(s) => match PersonalCode::parse(s) {
                Ok(code) => Some(code),
                Err(e) => {
                    // The error's message describes the rule broken, never the input.
                    f.error("personalCode", &format!("is not valid: {e}"));
                    None
                }
            },
            None => {
                f.error("personalCode", "must be a string");
                None
            }
        });
    match code {
        Some(code) if f.errors.is_empty() => Ok(code),
        _ => Err(f.errors),
    }
}

fn is_service_code(s: &str) -> bool {
    (3..=40).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-')
}

fn validate_interaction(body: &Value) -> Result<Interaction, Vec<FieldError>> {
    let mut f = Fields::new(
        body,
        &[
            "type",
            "channel",
            "centre",
            "serviceCode",
            "caseId",
            "occurredAt",
            "summary",
        ],
    )?;
    let kind = f.one_of("type", INTERACTION_TYPES);
    let channel = f.one_of("channel", CHANNELS);
    let (mut centre_code, mut centre_name) = (None, None);
    if let Some(centre) = f.object("centre", false) {
        let mut c = f.nested("centre", centre, &["code", "name"]);
        centre_code = c.text("code", true, 32);
        centre_name = c.text("name", false, 200);
        f.absorb(c);
    }
    let service_code = f.text("serviceCode", false, 40);
    if service_code.as_deref().is_some_and(|s| !is_service_code(s)) {
        f.error(
            "serviceCode",
            "must be 3 to 40 upper-case letters, digits or -",
        );
    }
    let case_id = f.text("caseId", false, 64);
    let occurred_at = f.timestamp("occurredAt");
    let summary = f.text("summary", true, MAX_SUMMARY);
    if let Some(s) = &summary
        && redact(s) != s.as_str()
    {
        f.error("summary", "must not contain personal codes");
    }
    match (kind, channel, occurred_at, summary) {
        (Some(kind), Some(channel), Some(occurred_at), Some(summary)) if f.errors.is_empty() => {
            Ok(Interaction {
                interaction_id: String::new(),
                client_id: String::new(),
                kind,
                channel,
                centre_code,
                centre_name,
                service_code,
                case_id,
                occurred_at,
                summary,
                message_id: None,
                received_at: String::new(),
            })
        }
        _ => Err(f.errors),
    }
}

async fn record_interaction(
    State(state): State<RigaState>,
    Path(client_id): Path<String>,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    if let Some(denied) = state.check_token(&headers) {
        return denied;
    }
    if find_client(&client_id).is_none() {
        return client_error(&client_id);
    }
    let body = match json_body(&headers, &raw) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    record(&state, client_id, &headers, &raw, &body)
}

/// An interaction about a case, for the client whose application recorded that case id (an
/// institution's status or answer knows the case, not Riga's client id). 404 when no
/// application with this case id was recorded: the client was not in Riga's system then.
async fn record_case_interaction(
    State(state): State<RigaState>,
    Path(case_id): Path<String>,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    if let Some(denied) = state.check_token(&headers) {
        return denied;
    }
    let client_id = state
        .lock()
        .interactions
        .iter()
        .find(|i| i.kind == "application" && i.case_id.as_deref() == Some(case_id.as_str()))
        .map(|i| i.client_id.clone());
    let Some(client_id) = client_id else {
        return problem(
            StatusCode::NOT_FOUND,
            "case-not-found",
            "Case not found",
            "No application with this case id was recorded for any client.",
        );
    };
    let body = match json_body(&headers, &raw) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    if body.get("caseId").and_then(Value::as_str) != Some(case_id.as_str()) {
        return invalid(
            "invalid-interaction",
            "interaction",
            vec![(
                "caseId".to_string(),
                "must be the case id of the path".to_string(),
            )],
        );
    }
    record(&state, client_id, &headers, &raw, &body)
}

/// Validates and records one interaction of `client_id` (an existing client), `body` being
/// `raw` parsed; 201 with the receipt, or the first answer again for a repeated message id.
fn record(
    state: &RigaState,
    client_id: String,
    headers: &HeaderMap,
    raw: &Bytes,
    body: &Value,
) -> Response {
    let message_id = match message_id(headers) {
        Ok(m) => m,
        Err(r) => return *r,
    };
    let mut interaction = match validate_interaction(body) {
        Ok(i) => i,
        Err(errors) => return invalid("invalid-interaction", "interaction", errors),
    };
    let fingerprint = fingerprint("POST", &client_id, raw);
    let mut data = state.lock();
    if let Some(replayed) = message_id
        .as_deref()
        .and_then(|m| data.replays.replay(m, &fingerprint))
    {
        return replayed;
    }
    interaction.interaction_id = format!("INT-{:06}", data.interactions.len() + 1);
    interaction.client_id = client_id;
    interaction.message_id = message_id.clone();
    interaction.received_at = now();
    let receipt = json!({
        "interactionId": interaction.interaction_id,
        "clientId": interaction.client_id,
        "receivedAt": interaction.received_at,
    });
    data.interactions.push(interaction);
    if let Some(m) = message_id {
        data.replays
            .remember(m, fingerprint, StatusCode::CREATED, receipt.clone());
    }
    json_response(StatusCode::CREATED, receipt)
}

async fn list_interactions(
    State(state): State<RigaState>,
    Path(client_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(denied) = state.check_token(&headers) {
        return denied;
    }
    if find_client(&client_id).is_none() {
        return client_error(&client_id);
    }
    let items: Vec<Value> = state
        .interactions(&client_id)
        .iter()
        .map(Interaction::to_json)
        .collect();
    let total = items.len();
    json_response(
        StatusCode::OK,
        json!({"clientId": client_id, "items": items, "total": total}),
    )
}

/// An RFC 6749 §5.2 error answer of this simulator.
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    http_kit::oauth_error(status, error, description, "riga-clients")
}

/// Strict standard base64, as HTTP Basic credentials are read here.
fn decode_base64(b64: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

async fn issue_token(
    State(state): State<RigaState>,
    headers: HeaderMap,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let client = (state.0.client_id.as_str(), state.0.client_secret.as_str());
    let form = match authenticated_grant(&headers, form, client, decode_base64, "riga-clients") {
        Ok(form) => form,
        Err(r) => return *r,
    };
    let scope = match form
        .get("scope")
        .map(|s| s.split_whitespace().collect::<Vec<_>>())
    {
        None => SCOPES.join(" "),
        Some(asked) if !asked.is_empty() && asked.iter().all(|s| SCOPES.contains(s)) => {
            asked.join(" ")
        }
        Some(_) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                "Ask for clients:read and/or interactions:write.",
            );
        }
    };
    let issued_at = Instant::now();
    let mut data = state.lock();
    data.tokens.retain(|_, expires| *expires > issued_at);
    if data.tokens.len() >= MAX_TOKENS {
        return oauth_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "Too many live tokens; reuse the token you have until it expires.",
        );
    }
    data.issued += 1;
    let token = format!("riga-at-{}-{}", data.issued, uuid::Uuid::new_v4().simple());
    data.tokens
        .insert(token.clone(), issued_at + TOKEN_LIFETIME);
    drop(data);
    no_store(json_response(
        StatusCode::OK,
        json!({
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": TOKEN_LIFETIME.as_secs(),
            "scope": scope,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::SimServer;
    use crate::sim::http_kit::error_fields;
    use crate::sim::population_register::NOT_FOUND;

    async fn sim() -> (SimServer, RigaState) {
        let (router, state) = router_with_state();
        let sim = SimServer::start("riga-clients", "127.0.0.1:0".parse().unwrap(), router)
            .await
            .unwrap();
        (sim, state)
    }

    /// `application/x-www-form-urlencoded` for the plain ASCII values of these tests.
    fn form_body(pairs: &[(&str, &str)]) -> String {
        pairs
            .iter()
            .map(|(k, v)| format!("{k}={}", v.replace(' ', "+").replace(':', "%3A")))
            .collect::<Vec<_>>()
            .join("&")
    }

    async fn token(sim: &SimServer) -> String {
        let r = reqwest::Client::new()
            .post(format!("{}{TOKEN_PATH}", sim.url()))
            .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form_body(&[("grant_type", "client_credentials")]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        body["access_token"].as_str().unwrap().to_owned()
    }

    fn url(sim: &SimServer, path: &str) -> String {
        format!("{}{BASE_PATH}{path}", sim.url())
    }

    async fn search_code(sim: &SimServer, token: &str, code: &Value) -> reqwest::Response {
        reqwest::Client::new()
            .post(url(sim, "/clients/search"))
            .bearer_auth(token)
            .json(&json!({"personalCode": code}))
            .send()
            .await
            .unwrap()
    }

    fn visit() -> Value {
        json!({
            "type": "application",
            "channel": "visit",
            "centre": {"code": "RIGA-BRIVIBAS-49", "name": "Rīgas VPVKAC Brīvības ielā"},
            "serviceCode": "SOC-PABALSTS-GMI",
            "caseId": "VPVKAC-2026-000123",
            "occurredAt": "2026-03-02T09:15:00+02:00",
            "summary": "Iesniegts garantētā minimālā ienākuma pabalsta iesniegums."
        })
    }

    async fn post_interaction(
        sim: &SimServer,
        token: &str,
        client: &str,
        body: &Value,
        id: Option<&str>,
    ) -> reqwest::Response {
        let mut req = reqwest::Client::new()
            .post(url(sim, &format!("/clients/{client}/interactions")))
            .bearer_auth(token)
            .json(body);
        if let Some(id) = id {
            req = req.header("X-Tilts-Message-Id", id);
        }
        req.send().await.unwrap()
    }

    #[test]
    fn fixtures_are_consistent_with_the_population_register() {
        let mut ids = std::collections::HashSet::new();
        for p in PROFILES {
            assert!(ids.insert(p.client_id), "duplicate {}", p.client_id);
            assert!(is_client_id(p.client_id), "{}", p.client_id);
            assert!(PersonalCode::parse(p.personal_code).is_ok());
            assert!(
                p.to_json().is_some(),
                "{} not in the population register",
                p.client_id
            );
            assert!(LANGUAGES.contains(&p.preferred_language));
            assert!(!format!("{p:?}").contains(&p.personal_code[7..]));
        }
        assert!(population_register::find(NO_PROFILE).is_some());
        assert!(find_by_code(NO_PROFILE).is_none());
        assert_eq!(
            find_by_code("01019012349").unwrap().client_id,
            ACTIVE_CLIENT
        );
        assert!(is_client_id(UNKNOWN_CLIENT) && find_client(UNKNOWN_CLIENT).is_none());
    }

    #[tokio::test]
    async fn token_endpoint_follows_rfc_6749() {
        let (sim, state) = sim().await;
        let c = reqwest::Client::new();
        let token_url = format!("{}{TOKEN_PATH}", sim.url());
        let r = c
            .post(&token_url)
            .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form_body(&[
                ("grant_type", "client_credentials"),
                ("scope", "clients:read"),
            ]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["cache-control"], "no-store");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], 3600);
        assert_eq!(body["scope"], "clients:read");
        // Credentials in the form work too.
        let r = c
            .post(&token_url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form_body(&[
                ("grant_type", "client_credentials"),
                ("client_id", CLIENT_ID),
                ("client_secret", CLIENT_SECRET),
            ]))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.json::<Value>().await.unwrap()["scope"],
            "clients:read interactions:write"
        );

        let r = c
            .post(&token_url)
            .basic_auth(CLIENT_ID, Some("wrong"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form_body(&[("grant_type", "client_credentials")]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        assert!(r.headers().contains_key("www-authenticate"));
        assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_client");
        for (form, error) in [
            (vec![("grant_type", "password")], "unsupported_grant_type"),
            (
                vec![("grant_type", "client_credentials"), ("scope", "admin")],
                "invalid_scope",
            ),
        ] {
            let r = c
                .post(&token_url)
                .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form_body(&form))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 400);
            assert_eq!(r.json::<Value>().await.unwrap()["error"], error);
        }
        let r = c
            .post(&token_url)
            .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
            .json(&json!({"grant_type": "client_credentials"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_request");
        assert_eq!(state.tokens_issued(), 2);

        // Data endpoints want an issued token.
        for bad in [None, Some("forged")] {
            let mut req = c
                .post(url(&sim, "/clients/search"))
                .json(&json!({"personalCode": ACTIVE}));
            if let Some(t) = bad {
                req = req.bearer_auth(t);
            }
            assert_eq!(req.send().await.unwrap().status(), 401);
        }
        let other = RigaState::new("someone", "else");
        assert!(!format!("{other:?}").contains("else"));
    }

    #[tokio::test]
    async fn search_finds_profiles_by_personal_code_only_in_bodies() {
        let (sim, _) = sim().await;
        let token = token(&sim).await;
        let r = search_code(&sim, &token, &json!(ACTIVE)).await;
        assert_eq!(r.status(), 200);
        let profile: Value = r.json().await.unwrap();
        assert_eq!(
            profile,
            json!({
                "clientId": ACTIVE_CLIENT, "personalCode": ACTIVE,
                "firstName": "Jānis", "lastName": "Bērziņš", "status": "active",
                "declaredAddress": {"code": "103716254", "text": address_register::find("103716254").unwrap().text},
                "preferredLanguage": "lv",
                "contact": {"email": "janis.berzins@example.lv", "phone": "+371 20000184"},
                "consents": {"email": true, "sms": true, "eAddress": false}
            })
        );
        let r = search_code(&sim, &token, &json!("32951240217")).await;
        let profile: Value = r.json().await.unwrap();
        assert_eq!(profile["clientId"], NEW_FORM_CLIENT);
        assert_eq!(profile["contact"], json!({}));
        let r = search_code(&sim, &token, &json!(DECEASED)).await;
        assert_eq!(r.json::<Value>().await.unwrap()["status"], "deceased");

        for code in [NO_PROFILE, NOT_FOUND] {
            let r = search_code(&sim, &token, &json!(code)).await;
            assert_eq!(r.status(), 404);
            let text = r.text().await.unwrap();
            assert!(!text.contains(&code[7..]), "{text}");
        }
        let r = search_code(&sim, &token, &json!("010190-12340")).await;
        assert_eq!(r.status(), 422);
        let text = r.text().await.unwrap();
        assert!(!text.contains("12340"), "{text}");
        let r = search_code(&sim, &token, &json!(10190123)).await;
        assert_eq!(r.status(), 422);
        let r = reqwest::Client::new()
            .post(url(&sim, "/clients/search"))
            .bearer_auth(&token)
            .json(&json!({"personalCode": ACTIVE, "name": "Jānis"}))
            .send()
            .await
            .unwrap();
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["errors"][0]["field"], "name");
    }

    #[tokio::test]
    async fn interactions_are_recorded_once_and_listed() {
        let (sim, state) = sim().await;
        let token = token(&sim).await;
        let r = post_interaction(&sim, &token, ACTIVE_CLIENT, &visit(), Some("i-1")).await;
        assert_eq!(r.status(), 201);
        let first: Value = r.json().await.unwrap();
        assert_eq!(first["interactionId"], "INT-000001");
        assert_eq!(first["clientId"], ACTIVE_CLIENT);
        let r = post_interaction(&sim, &token, ACTIVE_CLIENT, &visit(), Some("i-1")).await;
        assert_eq!(r.status(), 201);
        assert_eq!(r.headers()["idempotent-replayed"], "true");
        assert_eq!(r.json::<Value>().await.unwrap(), first);
        let mut answer = visit();
        answer["type"] = json!("answer");
        answer["channel"] = json!("email");
        let r = post_interaction(&sim, &token, ACTIVE_CLIENT, &answer, Some("i-1")).await;
        assert_eq!(r.status(), 409);
        let r = post_interaction(&sim, &token, ACTIVE_CLIENT, &answer, None).await;
        assert_eq!(
            r.json::<Value>().await.unwrap()["interactionId"],
            "INT-000002"
        );

        let recorded = state.interactions(ACTIVE_CLIENT);
        assert_eq!(recorded.len(), 2);
        assert_eq!(recorded[0].message_id.as_deref(), Some("i-1"));
        assert_eq!(recorded[0].centre_code.as_deref(), Some("RIGA-BRIVIBAS-49"));
        assert_eq!(recorded[1].kind, "answer");

        let r = reqwest::Client::new()
            .get(url(&sim, &format!("/clients/{ACTIVE_CLIENT}/interactions")))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        assert!(
            !text.contains("12349"),
            "no personal code outside the profile: {text}"
        );
        let list: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(list["total"], 2);
        assert_eq!(list["items"][0]["caseId"], "VPVKAC-2026-000123");
        assert_eq!(list["items"][1]["channel"], "email");
        assert!(state.interactions(NEW_FORM_CLIENT).is_empty());
    }

    #[tokio::test]
    async fn case_interactions_go_to_the_client_of_the_application() {
        let (sim, state) = sim().await;
        let token = token(&sim).await;
        let post_case = |case: &str, body: Value| {
            reqwest::Client::new()
                .post(url(&sim, &format!("/cases/{case}/interactions")))
                .bearer_auth(&token)
                .json(&body)
                .send()
        };
        let mut answer = visit();
        answer["type"] = json!("answer");
        answer["channel"] = json!("e-service");
        // No application with this case yet: the client was not in Riga's system then.
        let r = post_case("VPVKAC-2026-000123", answer.clone())
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        let p: Value = r.json().await.unwrap();
        assert!(
            p["type"].as_str().unwrap().ends_with("/case-not-found"),
            "{p}"
        );

        let r = post_interaction(&sim, &token, ACTIVE_CLIENT, &visit(), None).await;
        assert_eq!(r.status(), 201);
        let r = post_case("VPVKAC-2026-000123", answer.clone())
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let receipt: Value = r.json().await.unwrap();
        assert_eq!(receipt["clientId"], ACTIVE_CLIENT);
        let recorded = state.interactions(ACTIVE_CLIENT);
        assert_eq!(
            recorded.iter().map(|i| i.kind.as_str()).collect::<Vec<_>>(),
            ["application", "answer"]
        );

        // The body's case must be the path's.
        let r = post_case("VPVKAC-2026-000777", answer).await.unwrap();
        assert_eq!(r.status(), 404, "no application for that case either");
        let mut other = visit();
        other["caseId"] = json!("VPVKAC-2026-000777");
        let r = post_case("VPVKAC-2026-000123", other).await.unwrap();
        assert_eq!(r.status(), 422);
        assert_eq!(state.interactions(ACTIVE_CLIENT).len(), 2);
    }

    #[tokio::test]
    async fn invalid_interactions_and_unknown_clients() {
        let (sim, state) = sim().await;
        let token = token(&sim).await;
        let r = post_interaction(
            &sim,
            &token,
            ACTIVE_CLIENT,
            &json!({
                "type": "complaint",
                "centre": {"name": "Rīgas VPVKAC"},
                "serviceCode": "soc",
                "occurredAt": "02.03.2026",
                "summary": "Klients 010190-12349 zvanīja",
                "personalCode": ACTIVE
            }),
            None,
        )
        .await;
        assert_eq!(r.status(), 422);
        let text = r.text().await.unwrap();
        assert!(!text.contains("12349"), "{text}");
        let body: Value = serde_json::from_str(&text).unwrap();
        let fields = error_fields(&body);
        assert_eq!(
            fields,
            [
                "personalCode",
                "type",
                "channel",
                "centre.code",
                "serviceCode",
                "occurredAt",
                "summary"
            ]
        );
        let r = post_interaction(&sim, &token, UNKNOWN_CLIENT, &visit(), None).await;
        assert_eq!(r.status(), 404);
        let r = post_interaction(&sim, &token, "010190-12349", &visit(), None).await;
        assert_eq!(r.status(), 400, "personal codes are not client ids");
        let r = reqwest::Client::new()
            .get(url(
                &sim,
                &format!("/clients/{UNKNOWN_CLIENT}/interactions"),
            ))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        let r = reqwest::Client::new()
            .post(url(&sim, &format!("/clients/{ACTIVE_CLIENT}/interactions")))
            .bearer_auth(&token)
            .body(visit().to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 415);
        assert!(state.all_interactions().is_empty());
    }
}
