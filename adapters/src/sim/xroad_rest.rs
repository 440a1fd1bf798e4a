//! Simulator of an X-Road security server's REST interface (message protocol for REST) in front
//! of the Enterprise Register: the provider side as a client's security server would relay it.
//!
//! Contract:
//!
//! - `GET /r1/{instance}/{memberClass}/{memberCode}/{subsystemCode}/{serviceCode}/{rest..}`.
//!   The only service served is [`SERVICE`] (`LV/GOV/90000010008/UR/company`):
//!   `GET /r1/LV/GOV/90000010008/UR/company/{regNo}` answers the company JSON of the Enterprise
//!   Register simulator (`{"regNo","name","legalForm","status","registered","terminated",
//!   "address":{"code","text"}}`, data from [`super::enterprise_register::find`]); an invalid
//!   number answers 400 and an unregistered one 404, problem+json exactly as that simulator
//!   does; any other path below the service answers 404 problem+json.
//! - Header `X-Road-Client: INST/CLASS/MEMBER[/SUBSYS]` is required, each part non-empty, at
//!   most 255 characters, without whitespace, control characters, `\`, `:`, `;` or `%`.
//! - Every answer (errors too) carries `X-Road-Id` (the request's, or a new UUID when it sent
//!   none), a new `X-Road-Request-Id`, and echoes `X-Road-Client` (when well formed). Success
//!   answers also carry `X-Road-Service` (`INST/CLASS/MEMBER/SUBSYS/SERVICE`).
//!   `X-Road-UserId` and `X-Road-Issue` are optional and only recorded.
//! - X-Road errors have `Content-Type: application/json` and the body
//!   `{"type": "...", "message": "...", "detail": "<error id, a UUID>"}`: a missing or malformed
//!   `X-Road-Client` -> 400 `Client.InvalidClientIdentifier` (checked first); a service other
//!   than [`SERVICE`] (or a path too short to name one) -> 500
//!   `Server.ServerProxy.UnknownService`.

use axum::Router;
use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::json;

use super::enterprise_register;
use super::server::problem;

/// The one service this security server serves: `INSTANCE/CLASS/MEMBER/SUBSYSTEM/SERVICE`.
pub const SERVICE: &str = "LV/GOV/90000010008/UR/company";
/// Path prefix of the REST message protocol, version 1.
pub const PATH_PREFIX: &str = "/r1";
/// A well-formed client subsystem identifier, for tests and the demo.
pub const CLIENT: &str = "LV/GOV/90000038741/TILTS";
/// Error type for a missing or malformed `X-Road-Client` header (HTTP 400).
pub const INVALID_CLIENT: &str = "Client.InvalidClientIdentifier";
/// Error type for a service this security server does not serve (HTTP 500).
pub const UNKNOWN_SERVICE: &str = "Server.ServerProxy.UnknownService";

/// Longest identifier part accepted.
const MAX_IDENTIFIER_LEN: usize = 255;

/// The routes of the X-Road REST simulator (without the shared `/_sim/` machinery).
pub fn router() -> Router {
    Router::new()
        .route("/r1", get(relay_root))
        .route("/r1/{*rest}", get(relay))
}

async fn relay_root(headers: HeaderMap) -> Response {
    answer(&headers, "")
}

async fn relay(headers: HeaderMap, Path(rest): Path<String>) -> Response {
    answer(&headers, &rest)
}

/// Checks the client, resolves the service and answers; `rest` is the path after `/r1/`.
fn answer(headers: &HeaderMap, rest: &str) -> Response {
    let id = headers
        .get("x-road-id")
        .filter(|v| !v.is_empty())
        .cloned()
        .unwrap_or_else(|| {
            HeaderValue::from_str(&uuid::Uuid::new_v4().to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("x-road-id"))
        });
    let client = headers.get("x-road-client").and_then(|v| v.to_str().ok());
    let mut response = match client {
        Some(c) if is_client_identifier(c) => serve(rest),
        Some(_) => xroad_error(
            StatusCode::BAD_REQUEST,
            INVALID_CLIENT,
            "The X-Road-Client header is malformed; expected INSTANCE/CLASS/MEMBER[/SUBSYSTEM].",
        ),
        None => xroad_error(
            StatusCode::BAD_REQUEST,
            INVALID_CLIENT,
            "The X-Road-Client header is missing; expected INSTANCE/CLASS/MEMBER[/SUBSYSTEM].",
        ),
    };
    let out = response.headers_mut();
    out.insert("x-road-id", id);
    if let Ok(request_id) = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()) {
        out.insert("x-road-request-id", request_id);
    }
    if let Some(client) = client.filter(|c| is_client_identifier(c))
        && let Ok(value) = HeaderValue::from_str(client)
    {
        out.insert("x-road-client", value);
    }
    response
}

/// Serves `rest` (after `/r1/`) for an authenticated client.
fn serve(rest: &str) -> Response {
    let segments: Vec<&str> = rest.split('/').collect();
    if segments.len() < 5 || segments[..5].join("/") != SERVICE {
        return xroad_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            UNKNOWN_SERVICE,
            "Unknown service: this security server serves only SERVICE:LV/GOV/90000010008/UR/company.",
        );
    }
    let mut response = match &segments[5..] {
        [reg_no] if !reg_no.is_empty() => enterprise_register::lookup_answer(reg_no),
        _ => problem(
            StatusCode::NOT_FOUND,
            "not-found",
            "Not Found",
            "No resource at this path.",
        ),
    };
    response
        .headers_mut()
        .insert("x-road-service", HeaderValue::from_static(SERVICE));
    response
}

/// An X-Road REST error answer.
fn xroad_error(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = json!({
        "type": kind,
        "message": message,
        "detail": uuid::Uuid::new_v4().to_string(),
    });
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Whether `s` is `INSTANCE/CLASS/MEMBER` or `INSTANCE/CLASS/MEMBER/SUBSYSTEM` with well-formed
/// parts.
fn is_client_identifier(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    matches!(parts.len(), 3 | 4)
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars().count() <= MAX_IDENTIFIER_LEN
                && p.chars()
                    .all(|c| !c.is_whitespace() && !c.is_control() && !"\\:;%".contains(c))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::SimServer;
    use crate::sim::enterprise_register::{ACTIVE_SIA, BAD_CHECKSUM, LIQUIDATED, UNREGISTERED};
    use serde_json::Value;

    async fn sim() -> SimServer {
        SimServer::start("xroad-rest", "127.0.0.1:0".parse().unwrap(), router())
            .await
            .unwrap()
    }

    async fn get(sim: &SimServer, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut request = reqwest::Client::new().get(format!("{}{path}", sim.url()));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.unwrap()
    }

    fn company_path(reg_no: &str) -> String {
        format!("{PATH_PREFIX}/{SERVICE}/{reg_no}")
    }

    #[tokio::test]
    async fn serves_the_company_as_the_enterprise_register_does() {
        let sim = sim().await;
        let register = crate::sim::enterprise_register("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        for reg_no in [
            ACTIVE_SIA,
            LIQUIDATED,
            UNREGISTERED,
            BAD_CHECKSUM,
            "4000312345",
        ] {
            let r = get(
                &sim,
                &company_path(reg_no),
                &[
                    ("X-Road-Client", CLIENT),
                    ("X-Road-Id", "id-1"),
                    ("X-Road-UserId", "LV90000038741"),
                ],
            )
            .await;
            let expected = reqwest::get(format!("{}/companies/{reg_no}", register.url()))
                .await
                .unwrap();
            assert_eq!(r.status(), expected.status(), "{reg_no}");
            assert_eq!(
                r.headers()["content-type"],
                expected.headers()["content-type"],
                "{reg_no}"
            );
            assert_eq!(r.headers()["x-road-id"], "id-1");
            assert_eq!(r.headers()["x-road-client"], CLIENT);
            assert_eq!(r.headers()["x-road-service"], SERVICE);
            let request_id = r.headers()["x-road-request-id"]
                .to_str()
                .unwrap()
                .to_owned();
            assert!(uuid::Uuid::parse_str(&request_id).is_ok());
            let body: Value = r.json().await.unwrap();
            let expected: Value = expected.json().await.unwrap();
            assert_eq!(body, expected, "{reg_no}");
        }
        let log = sim.requests();
        assert_eq!(log.len(), 5);
        assert_eq!(log[0].path, "/r1/LV/GOV/90000010008/UR/company/40003521600");
        assert_eq!(log[0].header("x-road-client"), Some(CLIENT));
        assert_eq!(log[0].header("x-road-userid"), Some("LV90000038741"));
        assert_eq!(log[0].method, "GET");
    }

    #[tokio::test]
    async fn company_answer_shape() {
        let sim = sim().await;
        let r = get(
            &sim,
            &company_path(enterprise_register::MUNICIPALITY),
            &[("X-Road-Client", "LV/GOV/90000038741")],
        )
        .await;
        assert_eq!(r.status(), 200);
        // Without X-Road-Id the security server makes one.
        let id = r.headers()["x-road-id"].to_str().unwrap().to_owned();
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            body,
            json!({
                "regNo": "90000038741", "name": "Lielupes novada pašvaldība",
                "legalForm": "pašvaldība", "status": "active", "registered": "2021-07-01",
                "terminated": null,
                "address": {"code": "104108889", "text": "Katoļu iela 2, Jelgava, LV-3001"}
            })
        );
    }

    async fn assert_xroad_error(r: reqwest::Response, status: u16, kind: &str) -> Value {
        assert_eq!(r.status(), status);
        assert_eq!(r.headers()["content-type"], "application/json");
        assert!(r.headers().contains_key("x-road-id"));
        assert!(r.headers().contains_key("x-road-request-id"));
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["type"], kind);
        assert!(!body["message"].as_str().unwrap().is_empty());
        assert!(uuid::Uuid::parse_str(body["detail"].as_str().unwrap()).is_ok());
        assert_eq!(body.as_object().unwrap().len(), 3);
        body
    }

    #[tokio::test]
    async fn client_header_is_required_and_well_formed() {
        let sim = sim().await;
        let path = company_path(ACTIVE_SIA);
        let r = get(&sim, &path, &[]).await;
        let body = assert_xroad_error(r, 400, INVALID_CLIENT).await;
        assert!(body["message"].as_str().unwrap().contains("missing"));
        for bad in [
            "LV/GOV",
            "LV/GOV/90000038741/TILTS/EXTRA",
            "LV//90000038741",
            "LV/GOV/9000 0038741",
            "LV/GOV/90000038741/",
            "LV/GOV:X/90000038741",
            "",
        ] {
            let r = get(&sim, &path, &[("X-Road-Client", bad)]).await;
            let body = assert_xroad_error(r, 400, INVALID_CLIENT).await;
            assert!(
                body["message"].as_str().unwrap().contains("malformed"),
                "{bad}"
            );
        }
        // The client is checked before the service.
        let r = get(&sim, "/r1/EE/GOV/1/X/y", &[]).await;
        assert_xroad_error(r, 400, INVALID_CLIENT).await;
        assert_eq!(sim.requests().len(), 9);
    }

    #[tokio::test]
    async fn unknown_services_and_paths() {
        let sim = sim().await;
        let client = [("X-Road-Client", CLIENT)];
        for path in [
            "/r1/LV/GOV/90000010008/UR/persons/40003521600",
            "/r1/EE/GOV/90000010008/UR/company/40003521600",
            "/r1/LV/GOV/90000010008/UR",
            "/r1",
        ] {
            let r = get(&sim, path, &client).await;
            assert_xroad_error(r, 500, UNKNOWN_SERVICE).await;
        }
        for path in [
            "/r1/LV/GOV/90000010008/UR/company",
            "/r1/LV/GOV/90000010008/UR/company/",
            "/r1/LV/GOV/90000010008/UR/company/40003521600/owners",
        ] {
            let r = get(&sim, path, &client).await;
            assert_eq!(r.status(), 404, "{path}");
            assert_eq!(r.headers()["content-type"], "application/problem+json");
        }
    }
}
