//! Simulator of DAGR, the state data platform: REST/JSON over mutual TLS, an access token per
//! client, and a permission number on every data request. Serve [`router`] with
//! [`SimServer::start_tls`](super::SimServer::start_tls) and a client CA, so that handlers see the
//! client certificate's name. The token request format of the real platform is *unconfirmed*;
//! this one is the simple form tilts' [`TokenSource::Dagr`](crate::token::TokenSource::Dagr)
//! sends. Contract:
//!
//! - `POST /oauth/token`, form `grant_type=client_credentials&client_id=<id>` -> 200
//!   `{"access_token","token_type":"Bearer","expires_in":300}`. `client_id` must equal the client
//!   certificate's name (CN, or first DNS name), else 401 `invalid_client`; 400
//!   `unsupported_grant_type` / `invalid_request` for a wrong grant or a missing `client_id`.
//!   Tokens are random and expire after [`TOKEN_LIFETIME_S`] seconds.
//! - `GET /current_user_permissions` (bearer) -> `[{"permission","service_name"}, ...]`:
//!   [`PERMISSION_PERSON`] for `fpr_person`, [`PERMISSION_ADDRESS`] for `vzd_address`.
//! - `GET /vzd/addresses/{code}` (bearer, `X-DAGR-Permission: P-1002`) -> 200 the address
//!   (`{"code","type","typeCode","text","postcode","atvk","parent"}`, the data of the
//!   [address register simulator](super::address_register)); 400 when not 9 digits, 404 unknown.
//! - `POST /fpr/persons/search` (bearer, `X-DAGR-Permission: P-1001`), JSON
//!   `{"personalCode": "..."}` -> 200 `{"personalCode","firstName","lastName","birthDate",
//!   "declaredAddress"}`; 400 when the code is missing or invalid, 404 when unknown. Personal codes
//!   travel only in bodies, never in URLs, and no error message contains one.
//! - Errors are `{"error": "...", "message": "..."}`: 401 for a missing, unknown or expired token
//!   (with `WWW-Authenticate: Bearer`), 403 `permission_required` when the header is missing and
//!   `permission_denied` when it names another permission than the service needs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::rejection::{FormRejection, JsonRejection};
use axum::extract::{Extension, Form, Json, Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::{Value, json};

use super::address_register;
use super::http_kit::{self, client_credentials_form, no_store, prefixed_bearer};
use super::server::ClientCertName;
use crate::ident::PersonalCode;

/// Lifetime of issued tokens, in seconds.
pub const TOKEN_LIFETIME_S: u64 = 300;
/// The permission for the Population Register person service (`fpr_person`).
pub const PERMISSION_PERSON: &str = "P-1001";
/// The permission for the State Address Register address service (`vzd_address`).
pub const PERMISSION_ADDRESS: &str = "P-1002";
/// The header that names the permission a data request uses.
pub const PERMISSION_HEADER: &str = "X-DAGR-Permission";

/// A fictional person of the simulated Population Register: `Anna Paraudziņa`, born 1 Jan 1990.
pub const PERSON_ANNA: &str = "010190-12349";
/// A fictional person: `Jānis Izdomātais`, born 16 Nov 1975.
pub const PERSON_JANIS: &str = "161175-19997";
/// A fictional person: `Līga Testa`, born 15 Feb 1985.
pub const PERSON_LIGA: &str = "150285-10005";

/// (personal code digits, first name, last name, birth date, declared address code)
const PEOPLE: &[(&str, &str, &str, &str, &str)] = &[
    (
        "01019012349",
        "Anna",
        "Paraudziņa",
        "1990-01-01",
        address_register::RIGA_LAZDU_12_K3,
    ),
    (
        "16117519997",
        "Jānis",
        "Izdomātais",
        "1975-11-16",
        address_register::JELGAVA_KATOLU_2,
    ),
    (
        "15028510005",
        "Līga",
        "Testa",
        "1985-02-15",
        address_register::VALMIERA_RIGAS_25,
    ),
];

/// The permissions every authenticated client holds: (permission, service name).
const PERMISSIONS: &[(&str, &str)] = &[
    (PERMISSION_PERSON, "fpr_person"),
    (PERMISSION_ADDRESS, "vzd_address"),
];

/// Issued tokens and when they expire.
#[derive(Clone, Default)]
struct Platform(Arc<Mutex<HashMap<String, Instant>>>);

impl Platform {
    fn tokens(&self) -> MutexGuard<'_, HashMap<String, Instant>> {
        http_kit::lock(&self.0)
    }
}

/// The routes of the DAGR simulator (without the shared `/_sim/` machinery). Each call starts
/// with no tokens issued.
pub fn router() -> Router {
    Router::new()
        .route("/oauth/token", post(issue_token))
        .route("/current_user_permissions", get(permissions))
        .route("/vzd/addresses/{code}", get(address))
        .route("/fpr/persons/search", post(person_search))
        .with_state(Platform::default())
}

/// A DAGR error answer.
fn error(status: StatusCode, error: &str, message: impl Into<String>) -> Response {
    let mut r = (
        status,
        Json(json!({"error": error, "message": message.into()})),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"dagr\""),
        );
    }
    r
}

async fn issue_token(
    State(platform): State<Platform>,
    client: Option<Extension<ClientCertName>>,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let form = match client_credentials_form(form) {
        Ok(form) => form,
        Err((status, code, message)) => return error(status, code, message),
    };
    let Some(client_id) = form.get("client_id").filter(|id| !id.is_empty()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "client_id is required.",
        );
    };
    let Some(Extension(ClientCertName(cert_name))) = client else {
        return error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "A client certificate is required (mutual TLS).",
        );
    };
    if *client_id != cert_name {
        return error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client_id does not match the client certificate.",
        );
    }
    let token = format!("dagr-{}", uuid::Uuid::new_v4().simple());
    let expires = Instant::now() + Duration::from_secs(TOKEN_LIFETIME_S);
    {
        let mut tokens = platform.tokens();
        let now = Instant::now();
        tokens.retain(|_, until| *until > now);
        tokens.insert(token.clone(), expires);
    }
    no_store(
        Json(json!({
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": TOKEN_LIFETIME_S,
        }))
        .into_response(),
    )
}

/// `Some(401 answer)` unless the request carries a valid, unexpired token.
fn reject_unauthenticated(platform: &Platform, headers: &HeaderMap) -> Option<Response> {
    let Some(token) = prefixed_bearer(headers) else {
        return Some(error(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "A bearer token from POST /oauth/token is required.",
        ));
    };
    match platform.tokens().get(token) {
        Some(until) if *until > Instant::now() => None,
        _ => Some(error(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "The token is unknown or expired; request a new one.",
        )),
    }
}

/// `Some(403 answer)` unless the request names `needed` in [`PERMISSION_HEADER`].
fn reject_unauthorized(headers: &HeaderMap, needed: &str, service: &str) -> Option<Response> {
    match headers
        .get(PERMISSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
    {
        None | Some("") => Some(error(
            StatusCode::FORBIDDEN,
            "permission_required",
            format!("Send the {PERMISSION_HEADER} header with your permission for {service}."),
        )),
        Some(p) if p == needed => None,
        Some(_) => Some(error(
            StatusCode::FORBIDDEN,
            "permission_denied",
            format!(
                "The permission in {PERMISSION_HEADER} does not grant {service}; \
                 see GET /current_user_permissions."
            ),
        )),
    }
}

async fn permissions(State(platform): State<Platform>, headers: HeaderMap) -> Response {
    if let Some(denied) = reject_unauthenticated(&platform, &headers) {
        return denied;
    }
    let list: Vec<Value> = PERMISSIONS
        .iter()
        .map(|(permission, service)| json!({"permission": permission, "service_name": service}))
        .collect();
    Json(Value::Array(list)).into_response()
}

async fn address(
    State(platform): State<Platform>,
    headers: HeaderMap,
    Path(code): Path<String>,
) -> Response {
    if let Some(denied) = reject_unauthenticated(&platform, &headers)
        .or_else(|| reject_unauthorized(&headers, PERMISSION_ADDRESS, "vzd_address"))
    {
        return denied;
    }
    if code.len() != 9 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_address_code",
            "An address code has exactly 9 digits.",
        );
    }
    match address_register::find(&code) {
        Some(a) => Json(json!({
            "code": a.code,
            "type": a.type_name(),
            "typeCode": a.type_code,
            "text": a.text,
            "postcode": a.postcode,
            "atvk": a.atvk,
            "parent": a.parent,
        }))
        .into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("No address object with code {code}."),
        ),
    }
}

async fn person_search(
    State(platform): State<Platform>,
    headers: HeaderMap,
    body: Result<Json<Value>, JsonRejection>,
) -> Response {
    if let Some(denied) = reject_unauthenticated(&platform, &headers)
        .or_else(|| reject_unauthorized(&headers, PERMISSION_PERSON, "fpr_person"))
    {
        return denied;
    }
    // The rejection text could quote the body (a personal code): give a fixed message.
    let Ok(Json(body)) = body else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Send a JSON body {\"personalCode\": \"DDMMYY-NNNNN\"}.",
        );
    };
    let Some(raw) = body.get("personalCode").and_then(Value::as_str) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "personalCode (a string) is required.",
        );
    };
    let Ok(code) = PersonalCode::parse(raw) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_personal_code",
            "personalCode is not a valid personal code.",
        );
    };
    let found = PEOPLE
        .iter()
        .find(|(digits, ..)| *digits == code.as_str_digits());
    match found {
        Some((_, first, last, born, address)) => Json(json!({
            "personalCode": code.formatted(),
            "firstName": first,
            "lastName": last,
            "birthDate": born,
            "declaredAddress": {
                "code": address,
                "text": address_register::find(address).map(|a| a.text),
            },
        }))
        .into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "not_found",
            "No person with this personal code.",
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use http::{HeaderName, Method};

    use super::*;
    use crate::contract::{FailureKind, Retry};
    use crate::http::{HttpRequest, HttpResponse, HttpSystem, HttpSystemSpec};
    use crate::sim::SimServer;
    use crate::sim::pki::{CLIENT_NAME, TestPki};
    use crate::tls::ClientTls;
    use crate::token::TokenSource;

    async fn dagr(pki: &TestPki) -> SimServer {
        SimServer::start_tls(
            "dagr",
            "127.0.0.1:0".parse().unwrap(),
            router(),
            pki.sim_tls_mtls(),
        )
        .await
        .unwrap()
    }

    fn client_tls(pki: &TestPki) -> ClientTls {
        ClientTls::from_pem(
            Some((
                pki.client_cert_pem.clone().into_bytes(),
                pki.client_key_pem.clone().into_bytes(),
            )),
            Some(pki.ca_pem.clone().into_bytes()),
        )
        .unwrap()
    }

    fn system(sim: &SimServer, tls: ClientTls, client_id: &str) -> HttpSystem {
        HttpSystem::new(HttpSystemSpec {
            name: "dagr".into(),
            base_url: sim.url(),
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            headers: vec![],
            auth: None,
            tls: Some(tls),
            token: Some(TokenSource::Dagr {
                token_url: format!("{}/oauth/token", sim.url()),
                client_id: client_id.into(),
            }),
        })
        .unwrap()
    }

    fn request(
        method: Method,
        path: &str,
        permission: Option<&str>,
        body: Option<Value>,
    ) -> HttpRequest {
        let mut headers = Vec::new();
        if let Some(p) = permission {
            headers.push((
                HeaderName::from_static("x-dagr-permission"),
                HeaderValue::from_str(p).unwrap(),
            ));
        }
        if body.is_some() {
            headers.push((
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ));
        }
        HttpRequest {
            method,
            path: path.into(),
            headers,
            body: body.map(|b| Bytes::from(b.to_string())),
            timeout: None,
        }
    }

    fn json_of(r: &HttpResponse) -> Value {
        serde_json::from_slice(&r.body).unwrap()
    }

    #[tokio::test]
    async fn end_to_end_token_permissions_and_data_through_http_system() {
        let pki = TestPki::generate();
        let sim = dagr(&pki).await;
        let sys = system(&sim, client_tls(&pki), CLIENT_NAME);

        let r = sys
            .send(request(
                Method::GET,
                "/current_user_permissions",
                None,
                None,
            ))
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(
            json_of(&r),
            json!([
                {"permission": "P-1001", "service_name": "fpr_person"},
                {"permission": "P-1002", "service_name": "vzd_address"},
            ])
        );

        let path = format!("/vzd/addresses/{}", address_register::RIGA_GERTRUDES_34);
        let r = sys
            .send(request(Method::GET, &path, Some(PERMISSION_ADDRESS), None))
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(json_of(&r)["text"], "Ģertrūdes iela 34, Rīga, LV-1011");
        assert_eq!(json_of(&r)["typeCode"], 108);

        // Without the permission header, and with the wrong permission.
        let r = sys
            .send(request(Method::GET, &path, None, None))
            .await
            .unwrap();
        assert_eq!(r.status, 403);
        assert_eq!(json_of(&r)["error"], "permission_required");
        let r = sys
            .send(request(Method::GET, &path, Some(PERMISSION_PERSON), None))
            .await
            .unwrap();
        assert_eq!(r.status, 403);
        assert_eq!(json_of(&r)["error"], "permission_denied");

        let search = |permission: Option<&'static str>, code: &str| {
            request(
                Method::POST,
                "/fpr/persons/search",
                permission,
                Some(json!({"personalCode": code})),
            )
        };
        let r = sys
            .send(search(Some(PERMISSION_PERSON), PERSON_ANNA))
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        let person = json_of(&r);
        assert_eq!(person["firstName"], "Anna");
        assert_eq!(person["birthDate"], "1990-01-01");
        assert_eq!(
            person["declaredAddress"]["code"],
            address_register::RIGA_LAZDU_12_K3
        );
        let r = sys.send(search(None, PERSON_ANNA)).await.unwrap();
        assert_eq!(r.status, 403);
        let r = sys
            .send(search(Some(PERMISSION_ADDRESS), PERSON_ANNA))
            .await
            .unwrap();
        assert_eq!(r.status, 403);

        // One token for the whole conversation, sent as a bearer token; the personal code only
        // ever travelled in bodies.
        let log = sim.requests();
        assert_eq!(log.iter().filter(|r| r.path == "/oauth/token").count(), 1);
        let token_request = &log[0];
        assert_eq!(
            std::str::from_utf8(&token_request.body).unwrap(),
            format!("grant_type=client_credentials&client_id={CLIENT_NAME}")
        );
        assert!(
            log[1]
                .header("authorization")
                .is_some_and(|a| a.starts_with("Bearer dagr-"))
        );
        assert!(log.iter().all(|r| !r.path.contains("010190")));
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn a_client_id_other_than_the_certificate_name_gets_no_token() {
        let pki = TestPki::generate();
        let sim = dagr(&pki).await;
        let sys = system(&sim, client_tls(&pki), "someone-else");
        let e = sys
            .send(request(
                Method::GET,
                "/current_user_permissions",
                None,
                None,
            ))
            .await
            .unwrap_err();
        assert_eq!(e.kind, FailureKind::Status(401));
        assert_eq!(e.retry(), Retry::Permanent);
        assert_eq!(e.detail, "token request failed: HTTP 401");
    }

    #[tokio::test]
    async fn without_a_valid_client_certificate_the_token_request_fails_to_connect() {
        let pki = TestPki::generate();
        let sim = dagr(&pki).await;
        let ca_only = ClientTls::from_pem(None, Some(pki.ca_pem.clone().into_bytes())).unwrap();
        let other = ClientTls::from_pem(
            Some((
                pki.other_client_cert_pem.clone().into_bytes(),
                pki.other_client_key_pem.clone().into_bytes(),
            )),
            Some(pki.ca_pem.clone().into_bytes()),
        )
        .unwrap();
        for tls in [ca_only, other] {
            let e = system(&sim, tls, CLIENT_NAME)
                .send(request(
                    Method::GET,
                    "/current_user_permissions",
                    None,
                    None,
                ))
                .await
                .unwrap_err();
            assert_eq!(e.kind, FailureKind::Connect, "{e}");
            assert_eq!(e.retry(), Retry::Retryable);
            assert!(
                e.detail
                    .starts_with("token request failed: TLS handshake failed"),
                "{e}"
            );
        }
        assert!(sim.requests().is_empty());
    }

    /// A raw client for checks below the HttpSystem (missing tokens, bad bodies).
    async fn raw(pki: &TestPki) -> (SimServer, reqwest::Client, String) {
        let sim = dagr(pki).await;
        let client = client_tls(pki)
            .apply(reqwest::Client::builder())
            .build()
            .unwrap();
        let token: Value = client
            .post(format!("{}/oauth/token", sim.url()))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(format!(
                "grant_type=client_credentials&client_id={CLIENT_NAME}"
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(token["token_type"], "Bearer");
        assert_eq!(token["expires_in"], TOKEN_LIFETIME_S);
        let token = token["access_token"].as_str().unwrap().to_owned();
        (sim, client, token)
    }

    #[tokio::test]
    async fn missing_or_unknown_tokens_are_401() {
        let pki = TestPki::generate();
        let (sim, client, _) = raw(&pki).await;
        let url = format!("{}/current_user_permissions", sim.url());
        let r = client.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 401);
        assert!(r.headers().contains_key("www-authenticate"));
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "invalid_token");
        assert!(body["message"].is_string());
        let r = client.get(&url).bearer_auth("forged").send().await.unwrap();
        assert_eq!(r.status(), 401);

        let r = client
            .post(format!("{}/oauth/token", sim.url()))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body("grant_type=password&client_id=x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
    }

    #[tokio::test]
    async fn person_search_validates_and_never_echoes_the_code() {
        let pki = TestPki::generate();
        let (sim, client, token) = raw(&pki).await;
        let search = |body: &'static str| {
            client
                .post(format!("{}/fpr/persons/search", sim.url()))
                .bearer_auth(&token)
                .header(PERMISSION_HEADER, PERMISSION_PERSON)
                .header(header::CONTENT_TYPE, "application/json")
                .body(body)
                .send()
        };
        for (body, status) in [
            (r#"{"personalCode": "010190-12340"}"#, 400),
            (r#"{"personalCode": "311299-19995"}"#, 400),
            (r#"{"personalCode": 10190}"#, 400),
            (r#"{"personalCode": "010190-12349""#, 400),
            (r#"{"personalCode": "320000-00000"}"#, 404),
            (r#"{"personalCode": "16117519997"}"#, 200),
        ] {
            let r = search(body).await.unwrap();
            assert_eq!(r.status(), status, "{body}");
            let text = r.text().await.unwrap();
            if status != 200 {
                assert!(!text.contains("0101") && !text.contains("3200"), "{text}");
            } else {
                assert!(text.contains("Izdomātais"), "{text}");
            }
        }
        let r = client
            .get(format!("{}/vzd/addresses/12345", sim.url()))
            .bearer_auth(&token)
            .header(PERMISSION_HEADER, PERMISSION_ADDRESS)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let r = client
            .get(format!("{}/vzd/addresses/999999999", sim.url()))
            .bearer_auth(&token)
            .header(PERMISSION_HEADER, PERMISSION_ADDRESS)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    }

    #[tokio::test]
    async fn served_without_mutual_tls_no_token_is_issued() {
        let sim = SimServer::start("dagr", "127.0.0.1:0".parse().unwrap(), router())
            .await
            .unwrap();
        let r = reqwest::Client::new()
            .post(format!("{}/oauth/token", sim.url()))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(format!(
                "grant_type=client_credentials&client_id={CLIENT_NAME}"
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "invalid_client");
    }

    #[tokio::test]
    async fn expired_tokens_are_refused() {
        let platform = Platform::default();
        platform
            .tokens()
            .insert("old".into(), Instant::now() - Duration::from_secs(1));
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer old"),
        );
        assert_eq!(
            reject_unauthenticated(&platform, &headers)
                .unwrap()
                .status(),
            StatusCode::UNAUTHORIZED
        );
    }
}
