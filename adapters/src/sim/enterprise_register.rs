//! Simulator of the Enterprise Register (Uzņēmumu reģistrs, UR): company lookup by registration
//! number and search by name, over REST/JSON.
//!
//! Twelve fictional legal entities with valid registration numbers (check digits computed, see
//! the tests), registered at addresses of the address register simulator. Contract:
//!
//! - `GET /companies/{regNo}` -> 200
//!   `{"regNo","name","legalForm","status","registered","terminated","address":{"code","text"}}`;
//!   `legalForm` is one of `SIA`, `AS`, `IK`, `biedrība`, `valsts iestāde`, `pašvaldība`;
//!   `status` is `active`, `liquidated` or `insolvent`; dates are `YYYY-MM-DD`, `terminated` is
//!   `null` unless liquidated. 400 problem+json when the number is not 11 digits or fails the
//!   checksum; 404 problem+json when valid but not registered.
//! - `GET /companies?name=<substring>[&limit=N]` -> 200 `{"items":[...],"total":N}`, matching the
//!   name case-insensitively; 400 when `name` has fewer than 2 characters.

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Path, Query};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::StatusCode;
use serde_json::{Value, json};

use super::address_register;
use super::server::problem;
use crate::ident::is_valid_reg_no;

/// The fictional municipality (`pašvaldība`) operating the one-stop centres, a public body.
pub const MUNICIPALITY: &str = "90000038741";
/// A fictional state agency (`valsts iestāde`) receiving social service applications.
pub const STATE_AGENCY: &str = "90009142052";
/// An active SIA in Rīga.
pub const ACTIVE_SIA: &str = "40003521600";
/// An active AS in Jelgava.
pub const ACTIVE_AS: &str = "40003123453";
/// A liquidated SIA.
pub const LIQUIDATED: &str = "40103186722";
/// An insolvent SIA.
pub const INSOLVENT: &str = "40102791539";
/// A number with a valid checksum that is not registered (answers 404).
pub const UNREGISTERED: &str = "40103472195";
/// A number that fails the checksum (answers 400).
pub const BAD_CHECKSUM: &str = "40003123454";

/// One registered legal entity.
#[derive(Clone, Copy, Debug)]
pub struct Company {
    /// 11-digit registration number.
    pub reg_no: &'static str,
    /// Official name, legal form included as the register writes it.
    pub name: &'static str,
    /// `SIA`, `AS`, `IK`, `biedrība`, `valsts iestāde` or `pašvaldība`.
    pub legal_form: &'static str,
    /// `active`, `liquidated` or `insolvent`.
    pub status: &'static str,
    /// Registration date, `YYYY-MM-DD`.
    pub registered: &'static str,
    /// Date the entity was struck off, when liquidated.
    pub terminated: Option<&'static str>,
    /// Legal address: a building code of the address register simulator.
    pub address_code: &'static str,
}

impl Company {
    /// The company as `GET /companies/{regNo}` answers it (also the X-Road REST simulator's
    /// answer).
    pub(crate) fn to_json(self) -> Value {
        let address_text = address_register::find(self.address_code).map(|a| a.text);
        json!({
            "regNo": self.reg_no,
            "name": self.name,
            "legalForm": self.legal_form,
            "status": self.status,
            "registered": self.registered,
            "terminated": self.terminated,
            "address": {"code": self.address_code, "text": address_text},
        })
    }
}

const fn c(
    reg_no: &'static str,
    name: &'static str,
    legal_form: &'static str,
    status: &'static str,
    registered: &'static str,
    terminated: Option<&'static str>,
    address_code: &'static str,
) -> Company {
    Company {
        reg_no,
        name,
        legal_form,
        status,
        registered,
        terminated,
        address_code,
    }
}

/// Every registered entity (all names fictional).
#[rustfmt::skip]
pub const COMPANIES: &[Company] = &[
    c(MUNICIPALITY, "Lielupes novada pašvaldība", "pašvaldība", "active", "2021-07-01", None, address_register::JELGAVA_KATOLU_2),
    c(STATE_AGENCY, "Valsts sociālo pakalpojumu aģentūra", "valsts iestāde", "active", "2011-03-15", None, "103716262"),
    c(ACTIVE_SIA, "SIA \"Kāpu Maiznīca\"", "SIA", "active", "2001-05-22", None, "103716270"),
    c(ACTIVE_AS, "AS \"Zemgales Enerģijas Tīkli\"", "AS", "active", "1993-02-11", None, "104108871"),
    c(LIQUIDATED, "SIA \"Ozolkalna Būve\"", "SIA", "liquidated", "2010-09-14", Some("2023-06-30"), "106031158"),
    c("40003862457", "SIA \"Gaujas Kods\"", "SIA", "active", "2006-04-03", None, address_register::VALMIERA_RIGAS_25),
    c("50003104702", "AS \"Baltijas Ūdensceļi\"", "AS", "active", "1994-10-27", None, "103716262"),
    c(INSOLVENT, "SIA \"Ziemeļu Loģistika\"", "SIA", "insolvent", "2016-11-08", None, address_register::RIGA_LAZDU_12_K3),
    c("40101542286", "IK \"Dzirnupe\"", "IK", "active", "2008-02-19", None, address_register::KOCENI_KLAVAS),
    c("40008806719", "Ģimeņu atbalsta biedrība \"Saulespuķe\"", "biedrība", "active", "2005-08-30", None, "105226421"),
    c("40102177436", "SIA \"Ābeļziedu Aptieka\"", "SIA", "active", "2013-01-09", None, address_register::RIGA_GERTRUDES_34),
    c("40203018454", "SIA \"Jelgavas Ķieģeļu Darbnīca\"", "SIA", "active", "2019-05-16", None, "104108897"),
];

/// The fixture with this registration number, if any.
pub fn find(reg_no: &str) -> Option<&'static Company> {
    COMPANIES.iter().find(|c| c.reg_no == reg_no)
}

/// The routes of the Enterprise Register simulator (without the shared `/_sim/` machinery).
pub fn router() -> Router {
    Router::new()
        .route("/companies", get(search))
        .route("/companies/{reg_no}", get(lookup))
}

async fn lookup(Path(reg_no): Path<String>) -> Response {
    lookup_answer(&reg_no)
}

/// The answer to `GET /companies/{reg_no}`: the company, 400 problem+json for a malformed
/// number, 404 for an unregistered one (also served by the X-Road REST simulator).
pub(crate) fn lookup_answer(reg_no: &str) -> Response {
    let invalid = |detail: &str| {
        problem(
            StatusCode::BAD_REQUEST,
            "invalid-registration-number",
            "Invalid registration number",
            detail,
        )
    };
    if reg_no.len() != 11 || !reg_no.bytes().all(|b| b.is_ascii_digit()) {
        return invalid("A registration number has exactly 11 digits.");
    }
    if !is_valid_reg_no(reg_no) {
        return invalid("The registration number fails the checksum.");
    }
    match find(reg_no) {
        Some(company) => axum::Json(company.to_json()).into_response(),
        None => problem(
            StatusCode::NOT_FOUND,
            "company-not-found",
            "Company not found",
            format!("No legal entity is registered under number {reg_no}."),
        ),
    }
}

const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 100;

async fn search(Query(params): Query<HashMap<String, String>>) -> Response {
    let bad = |detail: String| {
        problem(
            StatusCode::BAD_REQUEST,
            "invalid-query",
            "Invalid search",
            detail,
        )
    };
    let name = params.get("name").map(|n| n.trim()).unwrap_or_default();
    if name.chars().count() < 2 {
        return bad("Parameter name is required and needs at least 2 characters.".into());
    }
    let limit = match params.get("limit").map(|l| l.parse::<usize>()) {
        None => DEFAULT_LIMIT,
        Some(Ok(l)) if (1..=MAX_LIMIT).contains(&l) => l,
        Some(_) => {
            return bad(format!(
                "Parameter limit must be a number from 1 to {MAX_LIMIT}."
            ));
        }
    };
    let needle = name.to_lowercase();
    let hits: Vec<&Company> = COMPANIES
        .iter()
        .filter(|c| c.name.to_lowercase().contains(&needle))
        .collect();
    let items: Vec<Value> = hits.iter().take(limit).map(|c| c.to_json()).collect();
    axum::Json(json!({"items": items, "total": hits.len()})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ident::complete_reg_no;
    use crate::sim::{SimServer, enterprise_register};

    async fn sim() -> SimServer {
        enterprise_register("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap()
    }

    async fn get(sim: &SimServer, path: &str) -> (u16, Value) {
        let r = reqwest::get(format!("{}{path}", sim.url())).await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    #[test]
    fn fixtures_are_valid_and_consistent() {
        let mut seen = std::collections::HashSet::new();
        for c in COMPANIES {
            assert!(seen.insert(c.reg_no), "duplicate {}", c.reg_no);
            assert!(is_valid_reg_no(c.reg_no), "{}", c.reg_no);
            assert_eq!(complete_reg_no(&c.reg_no[..10]).as_deref(), Some(c.reg_no));
            let address = address_register::find(c.address_code)
                .unwrap_or_else(|| panic!("address of {}", c.reg_no));
            assert_eq!(address.type_code, 108, "{}", c.reg_no);
            assert_eq!(c.terminated.is_some(), c.status == "liquidated");
            assert_eq!(
                c.reg_no.starts_with('9'),
                matches!(c.legal_form, "pašvaldība" | "valsts iestāde")
            );
        }
        assert_eq!(COMPANIES.len(), 12);
        assert!(is_valid_reg_no(UNREGISTERED) && find(UNREGISTERED).is_none());
        assert!(!is_valid_reg_no(BAD_CHECKSUM));
    }

    #[tokio::test]
    async fn lookup_active_and_liquidated() {
        let sim = sim().await;
        let (status, body) = get(&sim, &format!("/companies/{MUNICIPALITY}")).await;
        assert_eq!(status, 200);
        assert_eq!(
            body,
            json!({
                "regNo": "90000038741", "name": "Lielupes novada pašvaldība",
                "legalForm": "pašvaldība", "status": "active", "registered": "2021-07-01",
                "terminated": null,
                "address": {"code": "104108889", "text": "Katoļu iela 2, Jelgava, LV-3001"}
            })
        );
        let (status, body) = get(&sim, &format!("/companies/{LIQUIDATED}")).await;
        assert_eq!(status, 200);
        assert_eq!(body["status"], "liquidated");
        assert_eq!(body["terminated"], "2023-06-30");
        let (_, body) = get(&sim, &format!("/companies/{INSOLVENT}")).await;
        assert_eq!(body["status"], "insolvent");
        assert_eq!(sim.requests().len(), 3);
    }

    #[tokio::test]
    async fn lookup_errors() {
        let sim = sim().await;
        let (status, body) = get(&sim, &format!("/companies/{UNREGISTERED}")).await;
        assert_eq!(status, 404);
        assert_eq!(body["title"], "Company not found");

        let r = reqwest::get(format!("{}/companies/{BAD_CHECKSUM}", sim.url()))
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let body: Value = r.json().await.unwrap();
        assert!(body["detail"].as_str().unwrap().contains("checksum"));

        for bad in ["4000312345", "400031234530", "4000312345x"] {
            let (status, _) = get(&sim, &format!("/companies/{bad}")).await;
            assert_eq!(status, 400, "{bad}");
        }
    }

    #[tokio::test]
    async fn search_by_name() {
        let sim = sim().await;
        let (status, body) = get(&sim, "/companies?name=MAIZN%C4%AACA").await; // MAIZNĪCA
        assert_eq!(status, 200);
        assert_eq!(body["total"], 1);
        assert_eq!(body["items"][0]["regNo"], ACTIVE_SIA);

        let (_, body) = get(&sim, "/companies?name=sia").await;
        assert_eq!(body["total"], 6);
        let (_, body) = get(&sim, "/companies?name=sia&limit=2").await;
        assert_eq!(body["items"].as_array().unwrap().len(), 2);

        let (_, body) = get(&sim, "/companies?name=nekas%20t%C4%81ds").await;
        assert_eq!(body, json!({"items": [], "total": 0}));

        for path in [
            "/companies",
            "/companies?name=x",
            "/companies?name=sia&limit=many",
        ] {
            let (status, _) = get(&sim, path).await;
            assert_eq!(status, 400, "{path}");
        }
    }
}
