//! Simulator of the State Address Register (VZD, Valsts adrešu reģistrs): address lookup by
//! 9-digit address code and free-text search, over REST/JSON.
//!
//! The data is a small fictional but plausible extract around Rīga, Jelgava and Valmiera: the
//! place names are real, the codes, ATVK codes and street numbers are made up. Contract:
//!
//! - `GET /addresses/{code}` -> 200 `{"code","type","typeCode","text","postcode","atvk","parent"}`;
//!   400 problem+json when the code is not 9 digits; 404 problem+json when unknown.
//!   `postcode` is set for buildings only (VZD assigns postcodes to buildings), `null` otherwise;
//!   `atvk` is `null` for the country; `parent` is the parent object's code (`null` for Latvia).
//! - `GET /addresses?q=<text>[&limit=N]` -> 200 `{"items":[...],"total":N}`: every query word must
//!   occur in the full text, case-insensitively; diacritics are significant (`riga` does not find
//!   `Rīga`), as in the register. 400 when `q` has fewer than 2 characters.

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Path, Query};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::StatusCode;
use serde_json::{Value, json};

use super::server::problem;

/// Latvia, the root of the address tree (type 101).
pub const LATVIA: &str = "100000000";
/// The city of Rīga (type 104).
pub const RIGA: &str = "100003003";
/// Building `Ģertrūdes iela 34, Rīga, LV-1011` (type 108).
pub const RIGA_GERTRUDES_34: &str = "103716254";
/// Building `Lazdu iela 12 k-3, Rīga, LV-1029` (type 108), the code used in the route sketch.
pub const RIGA_LAZDU_12_K3: &str = "101234567";
/// Building `Katoļu iela 2, Jelgava, LV-3001` (type 108), seat of the fictional municipality.
pub const JELGAVA_KATOLU_2: &str = "104108889";
/// Building `Rīgas iela 25, Valmiera, Valmieras nov., LV-4201` (type 108).
pub const VALMIERA_RIGAS_25: &str = "105226413";
/// Rural homestead `Kļavas, Kocēnu pag., Valmieras nov., LV-4220` (type 108, no street).
pub const KOCENI_KLAVAS: &str = "106031166";

/// One object of the address register.
#[derive(Clone, Copy, Debug)]
pub struct Address {
    /// 9-digit address code.
    pub code: &'static str,
    /// VZD object type code: 101 country, 104 city, 105 parish, 106 village, 107 street,
    /// 108 building, 113 municipality.
    pub type_code: u16,
    /// Full address text as VZD writes it.
    pub text: &'static str,
    /// Postcode (`LV-1050`), buildings only.
    pub postcode: Option<&'static str>,
    /// 7-digit ATVK territorial code of the unit the object lies in.
    pub atvk: Option<&'static str>,
    /// Code of the parent object.
    pub parent: Option<&'static str>,
}

impl Address {
    /// The English type name served in `type`.
    pub fn type_name(&self) -> &'static str {
        match self.type_code {
            101 => "country",
            104 => "city",
            105 => "parish",
            106 => "village",
            107 => "street",
            108 => "building",
            113 => "municipality",
            _ => "other",
        }
    }

    fn to_json(self) -> Value {
        json!({
            "code": self.code,
            "type": self.type_name(),
            "typeCode": self.type_code,
            "text": self.text,
            "postcode": self.postcode,
            "atvk": self.atvk,
            "parent": self.parent,
        })
    }
}

const fn a(
    code: &'static str,
    type_code: u16,
    text: &'static str,
    postcode: Option<&'static str>,
    atvk: Option<&'static str>,
    parent: Option<&'static str>,
) -> Address {
    Address {
        code,
        type_code,
        text,
        postcode,
        atvk,
        parent,
    }
}

const RIGA_ATVK: Option<&str> = Some("0001000");
const JELGAVA_ATVK: Option<&str> = Some("0003000");
const OZOLNIEKI_ATVK: Option<&str> = Some("0054240");
const VALMIERA_ATVK: Option<&str> = Some("0094010");
const KOCENI_ATVK: Option<&str> = Some("0094260");

/// The whole fictional extract, parents before children.
#[rustfmt::skip]
pub const ADDRESSES: &[Address] = &[
    a(LATVIA, 101, "Latvija", None, None, None),
    // Administrative units.
    a(RIGA, 104, "Rīga", None, RIGA_ATVK, Some(LATVIA)),
    a("100003011", 104, "Jelgava", None, JELGAVA_ATVK, Some(LATVIA)),
    a("100415437", 113, "Jelgavas nov.", None, Some("0054000"), Some(LATVIA)),
    a("100415451", 105, "Ozolnieku pag., Jelgavas nov.", None, OZOLNIEKI_ATVK, Some("100415437")),
    a("100415469", 106, "Ozolnieki, Ozolnieku pag., Jelgavas nov.", None, OZOLNIEKI_ATVK, Some("100415451")),
    a("100414870", 113, "Valmieras nov.", None, Some("0094000"), Some(LATVIA)),
    a("100003062", 104, "Valmiera, Valmieras nov.", None, VALMIERA_ATVK, Some("100414870")),
    a("100414888", 105, "Kocēnu pag., Valmieras nov.", None, KOCENI_ATVK, Some("100414870")),
    // Streets.
    a("100211401", 107, "Ģertrūdes iela, Rīga", None, RIGA_ATVK, Some(RIGA)),
    a("100211419", 107, "Krišjāņa Valdemāra iela, Rīga", None, RIGA_ATVK, Some(RIGA)),
    a("100211427", 107, "Šķūņu iela, Rīga", None, RIGA_ATVK, Some(RIGA)),
    a("100211435", 107, "Lazdu iela, Rīga", None, RIGA_ATVK, Some(RIGA)),
    a("100305228", 107, "Lielā iela, Jelgava", None, JELGAVA_ATVK, Some("100003011")),
    a("100305236", 107, "Katoļu iela, Jelgava", None, JELGAVA_ATVK, Some("100003011")),
    a("100305244", 107, "Rūpniecības iela, Jelgava", None, JELGAVA_ATVK, Some("100003011")),
    a("100512017", 107, "Rīgas iela, Valmiera, Valmieras nov.", None, VALMIERA_ATVK, Some("100003062")),
    a("100512025", 107, "Ausekļa iela, Valmiera, Valmieras nov.", None, VALMIERA_ATVK, Some("100003062")),
    a("100611343", 107, "Meža iela, Ozolnieki, Ozolnieku pag., Jelgavas nov.", None, OZOLNIEKI_ATVK, Some("100415469")),
    // Buildings.
    a(RIGA_GERTRUDES_34, 108, "Ģertrūdes iela 34, Rīga, LV-1011", Some("LV-1011"), RIGA_ATVK, Some("100211401")),
    a("103716262", 108, "Krišjāņa Valdemāra iela 118, Rīga, LV-1013", Some("LV-1013"), RIGA_ATVK, Some("100211419")),
    a("103716270", 108, "Šķūņu iela 7, Rīga, LV-1050", Some("LV-1050"), RIGA_ATVK, Some("100211427")),
    a(RIGA_LAZDU_12_K3, 108, "Lazdu iela 12 k-3, Rīga, LV-1029", Some("LV-1029"), RIGA_ATVK, Some("100211435")),
    a("104108871", 108, "Lielā iela 11, Jelgava, LV-3001", Some("LV-3001"), JELGAVA_ATVK, Some("100305228")),
    a(JELGAVA_KATOLU_2, 108, "Katoļu iela 2, Jelgava, LV-3001", Some("LV-3001"), JELGAVA_ATVK, Some("100305236")),
    a("104108897", 108, "Rūpniecības iela 14, Jelgava, LV-3008", Some("LV-3008"), JELGAVA_ATVK, Some("100305244")),
    a(VALMIERA_RIGAS_25, 108, "Rīgas iela 25, Valmiera, Valmieras nov., LV-4201", Some("LV-4201"), VALMIERA_ATVK, Some("100512017")),
    a("105226421", 108, "Ausekļa iela 4, Valmiera, Valmieras nov., LV-4201", Some("LV-4201"), VALMIERA_ATVK, Some("100512025")),
    a("106031158", 108, "Meža iela 5, Ozolnieki, Ozolnieku pag., Jelgavas nov., LV-3018", Some("LV-3018"), OZOLNIEKI_ATVK, Some("100611343")),
    a(KOCENI_KLAVAS, 108, "Kļavas, Kocēnu pag., Valmieras nov., LV-4220", Some("LV-4220"), KOCENI_ATVK, Some("100414888")),
];

/// The fixture with this code, if any.
pub fn find(code: &str) -> Option<&'static Address> {
    ADDRESSES.iter().find(|a| a.code == code)
}

/// The routes of the address register simulator (without the shared `/_sim/` machinery).
pub fn router() -> Router {
    Router::new()
        .route("/addresses", get(search))
        .route("/addresses/{code}", get(lookup))
}

async fn lookup(Path(code): Path<String>) -> Response {
    if code.len() != 9 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return problem(
            StatusCode::BAD_REQUEST,
            "invalid-address-code",
            "Invalid address code",
            "An address code has exactly 9 digits.",
        );
    }
    match find(&code) {
        Some(address) => axum::Json(address.to_json()).into_response(),
        None => problem(
            StatusCode::NOT_FOUND,
            "address-not-found",
            "Address not found",
            format!("No address object with code {code}."),
        ),
    }
}

const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 100;

async fn search(Query(params): Query<HashMap<String, String>>) -> Response {
    let query = params.get("q").map(|q| q.trim()).unwrap_or_default();
    if query.chars().count() < 2 {
        return problem(
            StatusCode::BAD_REQUEST,
            "invalid-query",
            "Invalid search",
            "Parameter q is required and needs at least 2 characters.",
        );
    }
    let limit = match params.get("limit").map(|l| l.parse::<usize>()) {
        None => DEFAULT_LIMIT,
        Some(Ok(l)) if (1..=MAX_LIMIT).contains(&l) => l,
        Some(_) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "invalid-query",
                "Invalid search",
                format!("Parameter limit must be a number from 1 to {MAX_LIMIT}."),
            );
        }
    };
    let words: Vec<String> = query.split_whitespace().map(str::to_lowercase).collect();
    let hits: Vec<&Address> = ADDRESSES
        .iter()
        .filter(|a| {
            let text = a.text.to_lowercase();
            words.iter().all(|w| text.contains(w.trim_end_matches(',')))
        })
        .collect();
    let items: Vec<Value> = hits.iter().take(limit).map(|a| a.to_json()).collect();
    axum::Json(json!({"items": items, "total": hits.len()})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{SimServer, address_register};

    async fn sim() -> SimServer {
        address_register("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap()
    }

    async fn get(sim: &SimServer, path: &str) -> (u16, Value) {
        let r = reqwest::get(format!("{}{path}", sim.url())).await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    #[test]
    fn fixtures_are_consistent() {
        let mut codes = std::collections::HashSet::new();
        for a in ADDRESSES {
            assert!(codes.insert(a.code), "duplicate {}", a.code);
            assert_eq!(a.code.len(), 9);
            assert!(a.code.bytes().all(|b| b.is_ascii_digit()));
            assert_ne!(a.type_name(), "other");
            if let Some(parent) = a.parent {
                let p = find(parent).unwrap_or_else(|| panic!("parent of {}", a.code));
                assert!(
                    ADDRESSES.iter().position(|x| x.code == p.code)
                        < ADDRESSES.iter().position(|x| x.code == a.code)
                );
            } else {
                assert_eq!(a.code, LATVIA);
            }
            if let Some(atvk) = a.atvk {
                assert_eq!(atvk.len(), 7);
            }
            assert_eq!(a.postcode.is_some(), a.type_code == 108, "{}", a.code);
            if let Some(pc) = a.postcode {
                assert!(a.text.ends_with(pc));
                assert!(pc.starts_with("LV-") && pc.len() == 7);
            }
        }
    }

    #[tokio::test]
    async fn lookup_building_and_units() {
        let sim = sim().await;
        let (status, body) = get(&sim, "/addresses/103716270").await;
        assert_eq!(status, 200);
        assert_eq!(
            body,
            json!({
                "code": "103716270", "type": "building", "typeCode": 108,
                "text": "Šķūņu iela 7, Rīga, LV-1050", "postcode": "LV-1050",
                "atvk": "0001000", "parent": "100211427"
            })
        );
        let (status, body) = get(&sim, "/addresses/100414870").await;
        assert_eq!(status, 200);
        assert_eq!(body["type"], "municipality");
        assert_eq!(body["typeCode"], 113);
        assert_eq!(body["postcode"], Value::Null);
        assert_eq!(sim.requests()[0].path, "/addresses/103716270");
    }

    #[tokio::test]
    async fn lookup_errors() {
        let sim = sim().await;
        let (status, body) = get(&sim, "/addresses/999999999").await;
        assert_eq!(status, 404);
        assert_eq!(body["status"], 404);
        for bad in ["12345678", "1234567890", "10371627x"] {
            let (status, body) = get(&sim, &format!("/addresses/{bad}")).await;
            assert_eq!(status, 400, "{bad}");
            assert_eq!(body["title"], "Invalid address code");
        }
    }

    #[tokio::test]
    async fn search_is_case_insensitive_and_keeps_diacritics() {
        let sim = sim().await;
        let (status, body) = get(&sim, "/addresses?q=%C4%A2ERTR%C5%AADES").await; // ĢERTRŪDES
        assert_eq!(status, 200);
        assert_eq!(body["total"], 2, "{body}");
        assert_eq!(body["items"][1]["code"], RIGA_GERTRUDES_34);

        let (_, body) = get(&sim, "/addresses?q=r%C4%ABgas%2025").await; // rīgas 25
        assert_eq!(body["total"], 1);
        assert_eq!(body["items"][0]["code"], VALMIERA_RIGAS_25);

        let (_, body) = get(&sim, "/addresses?q=gertrudes").await;
        assert_eq!(body["total"], 0);

        let (_, body) = get(&sim, "/addresses?q=LV-3001").await;
        assert_eq!(body["total"], 2);

        let (_, body) = get(&sim, "/addresses?q=iela&limit=3").await;
        assert_eq!(body["items"].as_array().unwrap().len(), 3);
        assert!(body["total"].as_u64().unwrap() > 3);
    }

    #[tokio::test]
    async fn search_errors() {
        let sim = sim().await;
        for path in ["/addresses", "/addresses?q=a", "/addresses?q=iela&limit=0"] {
            let (status, _) = get(&sim, path).await;
            assert_eq!(status, 400, "{path}");
        }
    }
}
