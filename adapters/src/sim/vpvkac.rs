//! Simulator of the VPVKAC IS, the one-stop centres' information system, on the side tilts
//! calls: the service catalogue and the intake of case status changes sent back by institutions.
//!
//! No public interface of the VPVKAC IS exists; this is tilts' own proposal, published as
//! `mappings/contracts/vpvkac-is.openapi.json` (OpenAPI 3.1) and described in `docs/systems.md`.
//! The base path, the token and every field are configuration on tilts' side. Contract, all
//! under [`BASE_PATH`] and all requiring `Authorization: Bearer <token>` ([`TOKEN`] by default;
//! 401 problem+json otherwise):
//!
//! - `GET /services[?institution=<regNo>][&channel=<channel>]` -> 200 `{"items":[service],"total"}`,
//!   a service being `{"code","title":{"lv","en"},"institution":{"regNo","name"},"channels",
//!   "handlingDays"}` ([`SERVICES`]); 400 when `institution` is not a valid registration number
//!   or `channel` not one of [`CHANNELS`].
//! - `POST /cases/{caseId}/status` with `{"status","changedAt","institution":{"regNo",
//!   "caseNumber"?},"comment"?,"result"?:{"decision","documentUrl"?}}` -> 200
//!   `{"caseId","sequence","status","receivedAt"}`. `status` is one of [`STATUSES`]; a `result`
//!   is only allowed with `decided` or `closed`, its `decision` one of [`DECISIONS`]. Errors:
//!   400 when the case id is not shaped `VPVKAC-YYYY-NNNNNN`, or the body is not JSON; 415
//!   without a JSON content type; 422 with `errors: [{field, message}]` for every missing,
//!   unknown or invalid field (a `comment` holding anything shaped like a personal code
//!   included); 404 for [`UNKNOWN_CASE`]; 409 once the case is `closed`.
//! - Idempotency: a repeat with the same `X-Tilts-Message-Id` gets the first answer again
//!   (header `Idempotent-Replayed: true`) and adds nothing to the history; the same id with a
//!   different request is 409.
//! - `GET /cases/{caseId}/history` -> 200 `{"caseId","status","changes":[change]}`, what the
//!   simulator received for that case, oldest first; 404 when nothing was received.
//!
//! The other direction, VPVKAC IS -> tilts (a submitted application, the case document), is a
//! tilts route, not part of this simulator; the contract documents it as a webhook.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::{get, post};
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde_json::{Map, Value, json};

use super::http_kit::{
    self, FieldError, Fields, Replays, fingerprint, invalid, json_body, json_response, message_id,
    now, require_bearer,
};
use super::server::problem;
use crate::ident::reg_no_check_error;
use crate::redact::redact;

/// Base path of every endpoint.
pub const BASE_PATH: &str = "/api/v1";
/// The bearer token the simulator accepts unless built with another ([`VpvkacState::new`]).
pub const TOKEN: &str = "vpvkac-sim-token";
/// A well-formed case id the simulator does not know: status changes for it answer 404.
pub const UNKNOWN_CASE: &str = "VPVKAC-2026-999999";
/// A case id with status changes already received, so its history is not empty from the start.
pub const DECIDED_CASE: &str = "VPVKAC-2026-000042";

/// The statuses a case moves through, in their usual order.
pub const STATUSES: &[&str] = &[
    "received",
    "in-progress",
    "waiting-for-client",
    "decided",
    "closed",
];
/// The decisions a result can carry.
pub const DECISIONS: &[&str] = &["granted", "partially-granted", "refused", "withdrawn"];
/// The channels a service is applied for through (as in `mappings/applications/submitted.schema.json`).
pub const CHANNELS: &[&str] = &["visit", "e-service", "phone", "post"];

/// The municipal social service of the fictional Lielupe municipality.
pub const SOCIAL_SERVICE: &str = "90009533706";
/// The State Revenue Service (VID), fictional number.
pub const STATE_REVENUE_SERVICE: &str = "90000069277";
/// The Office of Citizenship and Migration Affairs (PMLP), fictional number.
pub const PMLP: &str = "90001263019";
/// The State Social Insurance Agency (VSAA), fictional number.
pub const VSAA: &str = "90009485711";
/// The State Land Service (VZD), fictional number.
pub const STATE_LAND_SERVICE: &str = "90009636012";

/// Longest accepted `comment`.
const MAX_COMMENT: usize = 2000;

/// An institution whose services the centres provide.
#[derive(Clone, Copy, Debug)]
pub struct Institution {
    /// Enterprise Register number (valid checksum).
    pub reg_no: &'static str,
    /// Official name.
    pub name: &'static str,
}

/// Every institution of the catalogue (numbers fictional).
pub const INSTITUTIONS: &[Institution] = &[
    Institution {
        reg_no: SOCIAL_SERVICE,
        name: "Lielupes novada Sociālais dienests",
    },
    Institution {
        reg_no: STATE_REVENUE_SERVICE,
        name: "Valsts ieņēmumu dienests",
    },
    Institution {
        reg_no: PMLP,
        name: "Pilsonības un migrācijas lietu pārvalde",
    },
    Institution {
        reg_no: VSAA,
        name: "Valsts sociālās apdrošināšanas aģentūra",
    },
    Institution {
        reg_no: STATE_LAND_SERVICE,
        name: "Valsts zemes dienests",
    },
];

/// One service of the catalogue.
#[derive(Clone, Copy, Debug)]
pub struct Service {
    /// Service code, `^[A-Z0-9-]{3,40}$` (the `service.code` of an application).
    pub code: &'static str,
    /// Title in Latvian.
    pub title_lv: &'static str,
    /// Title in English.
    pub title_en: &'static str,
    /// Registration number of the institution that decides on it.
    pub institution: &'static str,
    /// The channels it can be applied for through, a subset of [`CHANNELS`].
    pub channels: &'static [&'static str],
    /// Handling time target, in calendar days.
    pub handling_days: u16,
}

impl Service {
    /// The catalogue entry as served by `GET /services`.
    pub fn to_json(&self) -> Value {
        let name = INSTITUTIONS
            .iter()
            .find(|i| i.reg_no == self.institution)
            .map(|i| i.name);
        json!({
            "code": self.code,
            "title": {"lv": self.title_lv, "en": self.title_en},
            "institution": {"regNo": self.institution, "name": name},
            "channels": self.channels,
            "handlingDays": self.handling_days,
        })
    }
}

const fn s(
    code: &'static str,
    title_lv: &'static str,
    title_en: &'static str,
    institution: &'static str,
    channels: &'static [&'static str],
    handling_days: u16,
) -> Service {
    Service {
        code,
        title_lv,
        title_en,
        institution,
        channels,
        handling_days,
    }
}

const VISIT_ONLINE: &[&str] = &["visit", "e-service"];
const ALL_CHANNELS: &[&str] = &["visit", "e-service", "phone", "post"];

/// The service catalogue (fictional, modelled on the centres' minimum service basket).
#[rustfmt::skip]
pub const SERVICES: &[Service] = &[
    s("SOC-PABALSTS-GMI", "Garantētā minimālā ienākuma pabalsts", "Guaranteed minimum income benefit", SOCIAL_SERVICE, VISIT_ONLINE, 30),
    s("SOC-MAJOKLA-PABALSTS", "Mājokļa pabalsts", "Housing benefit", SOCIAL_SERVICE, VISIT_ONLINE, 30),
    s("VID-GADA-IENAKUMI", "Gada ienākumu deklarācijas iesniegšana", "Annual income tax return", STATE_REVENUE_SERVICE, ALL_CHANNELS, 30),
    s("VID-ALGAS-GRAMATINA", "Algas nodokļa grāmatiņas pieprasīšana", "Payroll tax book request", STATE_REVENUE_SERVICE, VISIT_ONLINE, 5),
    s("PMLP-DZIVESVIETA", "Dzīvesvietas deklarēšana", "Declaration of residence", PMLP, &["visit", "e-service", "post"], 3),
    s("PMLP-PASE", "Pases pieteikums", "Passport application", PMLP, &["visit"], 10),
    s("VSAA-BERNA-KOPSANA", "Bērna kopšanas pabalsts", "Childcare benefit", VSAA, VISIT_ONLINE, 10),
    s("VZD-KADASTRA-IZZINA", "Kadastra informācijas izziņa", "Cadastral information statement", STATE_LAND_SERVICE, ALL_CHANNELS, 10),
];

/// The catalogue entry with this code, if any.
pub fn find_service(code: &str) -> Option<&'static Service> {
    SERVICES.iter().find(|s| s.code == code)
}

/// The result of a decided case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaseResult {
    /// One of [`DECISIONS`].
    pub decision: String,
    /// Where the client can fetch the decision document, when there is one.
    pub document_url: Option<String>,
}

/// One status change the simulator received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusChange {
    /// The case (application) id, `VPVKAC-YYYY-NNNNNN`.
    pub case_id: String,
    /// Position in the case's history, from 1.
    pub sequence: u32,
    /// One of [`STATUSES`].
    pub status: String,
    /// When the institution changed the status (RFC 3339, as sent).
    pub changed_at: String,
    /// Registration number of the institution.
    pub institution: String,
    /// The institution's own case number, when sent.
    pub institution_case_number: Option<String>,
    /// A free-text comment for the clerk, when sent.
    pub comment: Option<String>,
    /// The decision, with `decided` or `closed`.
    pub result: Option<CaseResult>,
    /// The `X-Tilts-Message-Id` it came with.
    pub message_id: Option<String>,
    /// When the simulator received it (RFC 3339, UTC).
    pub received_at: String,
}

impl StatusChange {
    /// The change as listed by `GET /cases/{caseId}/history`.
    pub fn to_json(&self) -> Value {
        let mut institution = Map::new();
        institution.insert("regNo".into(), self.institution.clone().into());
        if let Some(n) = &self.institution_case_number {
            institution.insert("caseNumber".into(), n.clone().into());
        }
        let mut change = Map::new();
        change.insert("sequence".into(), self.sequence.into());
        change.insert("status".into(), self.status.clone().into());
        change.insert("changedAt".into(), self.changed_at.clone().into());
        change.insert("institution".into(), institution.into());
        if let Some(c) = &self.comment {
            change.insert("comment".into(), c.clone().into());
        }
        if let Some(r) = &self.result {
            let mut result = Map::new();
            result.insert("decision".into(), r.decision.clone().into());
            if let Some(url) = &r.document_url {
                result.insert("documentUrl".into(), url.clone().into());
            }
            change.insert("result".into(), result.into());
        }
        change.insert("messageId".into(), self.message_id.clone().into());
        change.insert("receivedAt".into(), self.received_at.clone().into());
        Value::Object(change)
    }

    fn receipt(&self) -> Value {
        json!({
            "caseId": self.case_id,
            "sequence": self.sequence,
            "status": self.status,
            "receivedAt": self.received_at,
        })
    }
}

#[derive(Default)]
struct Data {
    /// Case id -> its changes, oldest first.
    cases: HashMap<String, Vec<StatusChange>>,
    /// Every change in arrival order (for [`VpvkacState::received`]).
    received: Vec<StatusChange>,
    replays: Replays,
}

struct Inner {
    token: String,
    data: Mutex<Data>,
}

/// The simulator's state: the token it accepts and the status changes it received. Cheap to
/// clone; clones share the same state, so a test or the demo keeps one and reads what the
/// router received. `Debug` never prints the token.
#[derive(Clone)]
pub struct VpvkacState(Arc<Inner>);

impl fmt::Debug for VpvkacState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VpvkacState")
            .field("cases", &self.lock().cases.len())
            .finish_non_exhaustive()
    }
}

impl Default for VpvkacState {
    fn default() -> Self {
        VpvkacState::new(TOKEN)
    }
}

impl VpvkacState {
    /// A state accepting `token`, seeded with the history of [`DECIDED_CASE`].
    pub fn new(token: impl Into<String>) -> VpvkacState {
        let mut data = Data::default();
        let seeded = [
            ("received", "2026-02-02T09:10:00+02:00", None),
            ("in-progress", "2026-02-03T11:00:00+02:00", None),
            (
                "decided",
                "2026-02-20T14:30:00+02:00",
                Some(CaseResult {
                    decision: "granted".into(),
                    document_url: Some(
                        "https://docs.lielupe.example.lv/decisions/SD-2026-000042.pdf".into(),
                    ),
                }),
            ),
        ];
        for (i, (status, at, result)) in seeded.into_iter().enumerate() {
            let change = StatusChange {
                case_id: DECIDED_CASE.into(),
                sequence: i as u32 + 1,
                status: status.into(),
                changed_at: at.into(),
                institution: SOCIAL_SERVICE.into(),
                institution_case_number: Some("SD-2026-000042".into()),
                comment: None,
                result,
                message_id: None,
                received_at: at.into(),
            };
            data.received.push(change.clone());
            data.cases
                .entry(DECIDED_CASE.into())
                .or_default()
                .push(change);
        }
        VpvkacState(Arc::new(Inner {
            token: token.into(),
            data: Mutex::new(data),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Data> {
        http_kit::lock(&self.0.data)
    }

    /// The status changes received for `case_id`, oldest first (empty when none).
    pub fn history(&self, case_id: &str) -> Vec<StatusChange> {
        self.lock().cases.get(case_id).cloned().unwrap_or_default()
    }

    /// Every status change received (the seeded [`DECIDED_CASE`] included), in arrival order.
    pub fn received(&self) -> Vec<StatusChange> {
        self.lock().received.clone()
    }
}

/// The routes of the VPVKAC IS simulator (without the shared `/_sim/` machinery), accepting
/// [`TOKEN`].
pub fn router() -> Router {
    router_with_state().0
}

/// The routes and a handle on their state, to read what they received.
pub fn router_with_state() -> (Router, VpvkacState) {
    let state = VpvkacState::default();
    (router_for(state.clone()), state)
}

/// The routes over a given state (e.g. one built with another token).
pub fn router_for(state: VpvkacState) -> Router {
    Router::new()
        .route(&format!("{BASE_PATH}/services"), get(list_services))
        .route(
            &format!("{BASE_PATH}/cases/{{case_id}}/status"),
            post(change_status),
        )
        .route(
            &format!("{BASE_PATH}/cases/{{case_id}}/history"),
            get(show_history),
        )
        .with_state(state)
}

async fn list_services(
    State(state): State<VpvkacState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Some(denied) = require_bearer(&headers, &state.0.token, "vpvkac-is") {
        return denied;
    }
    let institution = query.get("institution");
    if let Some(reason) = institution.and_then(|i| reg_no_check_error(i)) {
        return problem(
            StatusCode::BAD_REQUEST,
            "invalid-query",
            "Invalid query",
            format!("Parameter institution: {reason}."),
        );
    }
    let channel = query.get("channel");
    if channel.is_some_and(|c| !CHANNELS.contains(&c.as_str())) {
        return problem(
            StatusCode::BAD_REQUEST,
            "invalid-query",
            "Invalid query",
            format!("Parameter channel must be one of: {}.", CHANNELS.join(", ")),
        );
    }
    let items: Vec<Value> = SERVICES
        .iter()
        .filter(|s| institution.is_none_or(|i| s.institution == i))
        .filter(|s| channel.is_none_or(|c| s.channels.contains(&c.as_str())))
        .map(Service::to_json)
        .collect();
    let total = items.len();
    json_response(StatusCode::OK, json!({"items": items, "total": total}))
}

/// Whether `s` is shaped `VPVKAC-YYYY-NNNNNN`.
pub fn is_case_id(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 18
        && s.starts_with("VPVKAC-")
        && b[11] == b'-'
        && b[7..11].iter().chain(&b[12..]).all(u8::is_ascii_digit)
}

fn invalid_case_id() -> Response {
    problem(
        StatusCode::BAD_REQUEST,
        "invalid-case-id",
        "Invalid case id",
        "A case id looks like VPVKAC-2026-000123.",
    )
}

fn case_not_found(case_id: &str) -> Response {
    problem(
        StatusCode::NOT_FOUND,
        "case-not-found",
        "Case not found",
        format!("The VPVKAC IS has no case {case_id}."),
    )
}

/// A validated status change body.
struct StatusBody {
    status: String,
    changed_at: String,
    institution: String,
    institution_case_number: Option<String>,
    comment: Option<String>,
    result: Option<CaseResult>,
}

fn validate_status(body: &Value) -> Result<StatusBody, Vec<FieldError>> {
    let mut f = Fields::new(
        body,
        &["status", "changedAt", "institution", "comment", "result"],
    )?;
    let status = f.one_of("status", STATUSES);
    let changed_at = f.timestamp("changedAt");
    let mut institution = None;
    let mut case_number = None;
    if let Some(inst) = f.object("institution", true) {
        let mut i = f.nested("institution", inst, &["regNo", "caseNumber"]);
        institution = i.reg_no("regNo");
        case_number = i.text("caseNumber", false, 64);
        f.absorb(i);
    }
    let comment = f.text("comment", false, MAX_COMMENT);
    if let Some(c) = &comment
        && redact(c) != c.as_str()
    {
        f.error("comment", "must not contain personal codes");
    }
    let mut result = None;
    if let Some(r) = f.object("result", false) {
        if status
            .as_deref()
            .is_some_and(|s| s != "decided" && s != "closed")
        {
            f.error("result", "is only allowed with status decided or closed");
        }
        let mut rf = f.nested("result", r, &["decision", "documentUrl"]);
        let decision = rf.one_of("decision", DECISIONS);
        let document_url = rf.https_url("documentUrl", false);
        f.absorb(rf);
        result = decision.map(|decision| CaseResult {
            decision,
            document_url,
        });
    }
    match (status, changed_at, institution) {
        (Some(status), Some(changed_at), Some(institution)) if f.errors.is_empty() => {
            Ok(StatusBody {
                status,
                changed_at,
                institution,
                institution_case_number: case_number,
                comment,
                result,
            })
        }
        _ => Err(f.errors),
    }
}

async fn change_status(
    State(state): State<VpvkacState>,
    Path(case_id): Path<String>,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    if let Some(denied) = require_bearer(&headers, &state.0.token, "vpvkac-is") {
        return denied;
    }
    if !is_case_id(&case_id) {
        return invalid_case_id();
    }
    let body = match json_body(&headers, &raw) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let message_id = match message_id(&headers) {
        Ok(m) => m,
        Err(r) => return *r,
    };
    let fingerprint = fingerprint("POST", &case_id, &raw);
    if let Some(replayed) = message_id
        .as_deref()
        .and_then(|m| state.lock().replays.replay(m, &fingerprint))
    {
        return replayed;
    }
    let change = match validate_status(&body) {
        Ok(c) => c,
        Err(errors) => return invalid("invalid-status-change", "status change", errors),
    };
    if case_id == UNKNOWN_CASE {
        return case_not_found(&case_id);
    }
    let mut data = state.lock();
    // Checked again under the lock: two concurrent repeats must not both be applied.
    if let Some(replayed) = message_id
        .as_deref()
        .and_then(|m| data.replays.replay(m, &fingerprint))
    {
        return replayed;
    }
    let history = data.cases.entry(case_id.clone()).or_default();
    if history.last().is_some_and(|c| c.status == "closed") {
        return problem(
            StatusCode::CONFLICT,
            "case-closed",
            "Case closed",
            format!("Case {case_id} is closed; a closed case takes no further status changes."),
        );
    }
    let change = StatusChange {
        case_id: case_id.clone(),
        sequence: history.len() as u32 + 1,
        status: change.status,
        changed_at: change.changed_at,
        institution: change.institution,
        institution_case_number: change.institution_case_number,
        comment: change.comment,
        result: change.result,
        message_id: message_id.clone(),
        received_at: now(),
    };
    let receipt = change.receipt();
    history.push(change.clone());
    data.received.push(change);
    if let Some(m) = message_id {
        data.replays
            .remember(m, fingerprint, StatusCode::OK, receipt.clone());
    }
    json_response(StatusCode::OK, receipt)
}

async fn show_history(
    State(state): State<VpvkacState>,
    Path(case_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(denied) = require_bearer(&headers, &state.0.token, "vpvkac-is") {
        return denied;
    }
    if !is_case_id(&case_id) {
        return invalid_case_id();
    }
    let history = state.history(&case_id);
    let Some(last) = history.last() else {
        return case_not_found(&case_id);
    };
    let changes: Vec<Value> = history.iter().map(StatusChange::to_json).collect();
    json_response(
        StatusCode::OK,
        json!({"caseId": case_id, "status": last.status, "changes": changes}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ident::{complete_reg_no, is_valid_reg_no};
    use crate::sim::SimServer;
    use crate::sim::http_kit::error_fields;

    async fn sim() -> (SimServer, VpvkacState) {
        let (router, state) = router_with_state();
        let sim = SimServer::start("vpvkac-is", "127.0.0.1:0".parse().unwrap(), router)
            .await
            .unwrap();
        (sim, state)
    }

    fn url(sim: &SimServer, path: &str) -> String {
        format!("{}{BASE_PATH}{path}", sim.url())
    }

    fn change(status: &str) -> Value {
        json!({
            "status": status,
            "changedAt": "2026-03-04T10:00:00+02:00",
            "institution": {"regNo": SOCIAL_SERVICE, "caseNumber": "SD-2026-000123"},
        })
    }

    async fn post_status(
        sim: &SimServer,
        case_id: &str,
        body: &Value,
        message_id: Option<&str>,
    ) -> reqwest::Response {
        let mut req = reqwest::Client::new()
            .post(url(sim, &format!("/cases/{case_id}/status")))
            .bearer_auth(TOKEN)
            .json(body);
        if let Some(m) = message_id {
            req = req.header("X-Tilts-Message-Id", m);
        }
        req.send().await.unwrap()
    }

    #[test]
    fn fixtures_are_valid_and_consistent() {
        for i in INSTITUTIONS {
            assert!(is_valid_reg_no(i.reg_no), "{}", i.reg_no);
            assert_eq!(complete_reg_no(&i.reg_no[..10]).as_deref(), Some(i.reg_no));
            assert!(i.reg_no.starts_with('9'), "a public body: {}", i.reg_no);
        }
        let mut codes = std::collections::HashSet::new();
        for s in SERVICES {
            assert!(codes.insert(s.code), "duplicate {}", s.code);
            assert!(
                s.code.len() >= 3
                    && s.code.len() <= 40
                    && s.code
                        .bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-'),
                "{}",
                s.code
            );
            assert!(INSTITUTIONS.iter().any(|i| i.reg_no == s.institution));
            assert!(!s.channels.is_empty() && s.channels.iter().all(|c| CHANNELS.contains(c)));
            assert!(s.handling_days > 0);
        }
        assert_eq!(SERVICES.len(), 8);
        let used: std::collections::HashSet<&str> =
            SERVICES.iter().map(|s| s.institution).collect();
        assert_eq!(
            used.len(),
            INSTITUTIONS.len(),
            "every institution offers a service"
        );
        assert!(is_case_id(UNKNOWN_CASE) && is_case_id(DECIDED_CASE));
        assert!(!is_case_id("VPVKAC-2026-00012") && !is_case_id("SD-2026-000123"));
    }

    #[tokio::test]
    async fn catalogue_lists_and_filters_services() {
        let (sim, _) = sim().await;
        let c = reqwest::Client::new();
        let r = c
            .get(url(&sim, "/services"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["total"], 8);
        assert_eq!(
            body["items"][0],
            json!({
                "code": "SOC-PABALSTS-GMI",
                "title": {"lv": "Garantētā minimālā ienākuma pabalsts", "en": "Guaranteed minimum income benefit"},
                "institution": {"regNo": SOCIAL_SERVICE, "name": "Lielupes novada Sociālais dienests"},
                "channels": ["visit", "e-service"],
                "handlingDays": 30
            })
        );
        let r = c
            .get(url(
                &sim,
                &format!("/services?institution={PMLP}&channel=post"),
            ))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["total"], 1);
        assert_eq!(body["items"][0]["code"], "PMLP-DZIVESVIETA");

        for bad in ["institution=90000069278", "channel=fax"] {
            let r = c
                .get(url(&sim, &format!("/services?{bad}")))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 400, "{bad}");
            assert_eq!(r.headers()["content-type"], "application/problem+json");
        }
        let r = c.get(url(&sim, "/services")).send().await.unwrap();
        assert_eq!(r.status(), 401);
        assert!(r.headers().contains_key("www-authenticate"));
        let r = c
            .get(url(&sim, "/services"))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }

    #[tokio::test]
    async fn status_changes_build_the_history_and_repeats_are_not_duplicated() {
        let (sim, state) = sim().await;
        let case = "VPVKAC-2026-000123";
        let r = post_status(&sim, case, &change("received"), Some("m-1")).await;
        assert_eq!(r.status(), 200);
        let first: Value = r.json().await.unwrap();
        assert_eq!(first["caseId"], case);
        assert_eq!(first["sequence"], 1);
        assert_eq!(first["status"], "received");

        let r = post_status(&sim, case, &change("received"), Some("m-1")).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["idempotent-replayed"], "true");
        assert_eq!(r.json::<Value>().await.unwrap(), first);

        let mut decided = change("decided");
        decided["result"] = json!({"decision": "granted", "documentUrl": "https://docs.lielupe.example.lv/d/1.pdf"});
        decided["comment"] = json!("Lēmums nosūtīts uz e-adresi.");
        let r = post_status(&sim, case, &decided, Some("m-2")).await;
        assert_eq!(r.json::<Value>().await.unwrap()["sequence"], 2);

        // The same message id with another body is a conflict, not a change.
        let r = post_status(&sim, case, &change("closed"), Some("m-2")).await;
        assert_eq!(r.status(), 409);

        let history = state.history(case);
        assert_eq!(history.len(), 2);
        assert_eq!(history[0].message_id.as_deref(), Some("m-1"));
        assert_eq!(history[1].result.as_ref().unwrap().decision, "granted");
        assert_eq!(
            history[1].institution_case_number.as_deref(),
            Some("SD-2026-000123")
        );

        let r = reqwest::Client::new()
            .get(url(&sim, &format!("/cases/{case}/history")))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["status"], "decided");
        assert_eq!(body["changes"].as_array().unwrap().len(), 2);
        assert_eq!(body["changes"][1]["result"]["decision"], "granted");

        // Closed is final.
        assert_eq!(
            post_status(&sim, case, &change("closed"), None)
                .await
                .status(),
            200
        );
        let r = post_status(&sim, case, &change("in-progress"), None).await;
        assert_eq!(r.status(), 409);
        assert_eq!(state.history(case).len(), 3);
        // The seeded case plus the three changes.
        assert_eq!(state.received().len(), 6);
    }

    #[tokio::test]
    async fn invalid_status_changes_name_every_field() {
        let (sim, state) = sim().await;
        let case = "VPVKAC-2026-000124";
        let r = post_status(
            &sim,
            case,
            &json!({
                "status": "lost",
                "changedAt": "yesterday",
                "institution": {"regNo": "90009533707"},
                "result": {"decision": "maybe", "documentUrl": "ftp://x"},
                "comment": "Klients 010190-12349 zvanīja",
                "extra": 1
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
                "extra",
                "status",
                "changedAt",
                "institution.regNo",
                "comment",
                "result.decision",
                "result.documentUrl"
            ]
        );
        let mut early = change("received");
        early["result"] = json!({"decision": "granted"});
        let r = post_status(&sim, case, &early, None).await;
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["errors"][0]["field"], "result");

        assert_eq!(
            post_status(&sim, "12345", &change("received"), None)
                .await
                .status(),
            400
        );
        assert_eq!(
            post_status(&sim, UNKNOWN_CASE, &change("received"), None)
                .await
                .status(),
            404
        );
        let r = reqwest::Client::new()
            .post(url(&sim, &format!("/cases/{case}/status")))
            .bearer_auth(TOKEN)
            .body(change("received").to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 415);
        let r = reqwest::Client::new()
            .post(url(&sim, &format!("/cases/{case}/status")))
            .json(&change("received"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        assert!(state.history(case).is_empty());
        let r = reqwest::Client::new()
            .get(url(&sim, &format!("/cases/{case}/history")))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    }

    #[tokio::test]
    async fn another_token_and_the_seeded_case() {
        let state = VpvkacState::new("other-token");
        assert!(!format!("{state:?}").contains("other-token"));
        let sim = SimServer::start(
            "vpvkac-is",
            "127.0.0.1:0".parse().unwrap(),
            router_for(state),
        )
        .await
        .unwrap();
        let c = reqwest::Client::new();
        let history = url(&sim, &format!("/cases/{DECIDED_CASE}/history"));
        assert_eq!(
            c.get(&history)
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap()
                .status(),
            401
        );
        let r = c
            .get(&history)
            .bearer_auth("other-token")
            .send()
            .await
            .unwrap();
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["status"], "decided");
        assert_eq!(body["changes"].as_array().unwrap().len(), 3);
    }
}
