//! SOAP endpoints (`from: { soap: ... }`): an institution calls tilts the way it calls a
//! registry.
//!
//! `POST path` takes an envelope of the route's SOAP version. The Body's request element is
//! read as data (see `tilts_adapters::xml`, with local names: the caller's prefixes and
//! namespace declarations dropped, see `exchange::local_names`) and runs through the route like
//! a JSON body: `body` in templates and conditions is e.g. `{"GetPerson": {"PersonalCode": "..."}}`.
//! The answer is wrapped in an envelope of the same version:
//! - a reply rendered by an XML template (`.xml.hbs`) is the Body's content as it is;
//! - a JSON reply is converted to XML inside `<{operation}Response xmlns="{namespace}">`;
//! - every error is a Fault: the caller's (bad envelope, wrong operation, 4xx such as a
//!   failed `validate`) a Client/Sender fault with HTTP 400, tilts' or a system's (5xx) a
//!   Server/Receiver fault with HTTP 500. The fault's detail carries the problem document
//!   (type, title, detail, the violations' JSON pointers), never message data.
//!   SOAP 1.1 (SOAP 1.1 itself says 500 for every fault; tilts answers 400 for the caller's
//!   faults, as SOAP 1.2 does, so proxies and monitors can tell the two apart).
//!
//! `GET path?wsdl` serves the service description: the route's `wsdl` file with
//! `{{address}}` replaced by the endpoint URL, or a generated document/literal WSDL whose
//! request and answer elements accept any content.

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use serde_json::{Value, json};
use tilts_adapters::soap::{self, FaultCode, SoapVersion};
use tilts_adapters::xml;

use crate::config::types::Delivery;
use crate::mapping::escape_xml;
use crate::plan::{Ingress, Route, SoapIngress};
use crate::server::AppState;

/// Deepest envelope accepted.
const MAX_DEPTH: usize = 64;

/// Adds a SOAP route's endpoint and its WSDL to the router.
pub fn route(router: Router, state: Arc<AppState>, route: Arc<Route>) -> Router {
    let (st, r) = (state.clone(), route.clone());
    let r2 = route.clone();
    router.route(
        &route.path,
        post(move |req: Request| {
            let (st, r) = (st.clone(), r.clone());
            async move { handle(st, r, req).await }
        })
        .get(move |req: Request| {
            let r = r2.clone();
            async move { wsdl(&r, &req) }
        }),
    )
}

fn ingress(route: &Route) -> &SoapIngress {
    match &route.ingress {
        Ingress::Soap(s) => s,
        // `route` registers SOAP routes only.
        Ingress::Http | Ingress::Amqp { .. } | Ingress::Timer(_) => {
            unreachable!("a SOAP handler on a route that is not a SOAP endpoint")
        }
    }
}

async fn handle(state: Arc<AppState>, route: Arc<Route>, req: Request) -> Response {
    let started = std::time::Instant::now();
    let ing = ingress(&route);
    let version = ing.version;
    let limit = state.plan.settings.body_limit.0 as usize;
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => {
            return fault(
                version,
                FaultCode::Client,
                "The request is larger than this endpoint accepts",
                &json!({"status": 413}),
            );
        }
    };
    let ct = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // The Body's request element is read as data in the same pass as the envelope.
    // A large envelope is read on the blocking pool, not on the connection's HTTP thread.
    let parse = {
        let bytes = bytes.clone();
        move || soap::parse_envelope_with_data(&bytes, limit, MAX_DEPTH, &xml::Limits::default())
    };
    let parsed = if bytes.len() <= crate::server::INLINE_PARSE_LIMIT {
        parse()
    } else {
        match tokio::task::spawn_blocking(parse).await {
            Ok(p) => p,
            Err(_) => {
                return fault(
                    version,
                    FaultCode::Server,
                    "The request could not be read",
                    &Value::Null,
                );
            }
        }
    };
    let (envelope, data) = match parsed {
        Ok(e) => e,
        Err(e) => {
            tracing::info!(route = %route.id, error = %e, "SOAP request refused");
            return fault(
                version,
                FaultCode::Client,
                "The request is not an acceptable SOAP envelope",
                &json!({"detail": e.to_string()}),
            );
        }
    };
    if envelope.version != version || !content_type_fits(version, ct) {
        return fault(
            version,
            FaultCode::VersionMismatch,
            match version {
                SoapVersion::V11 => "This endpoint speaks SOAP 1.1 (text/xml)",
                SoapVersion::V12 => "This endpoint speaks SOAP 1.2 (application/soap+xml)",
            },
            &Value::Null,
        );
    }
    let data = match data {
        Ok(v) => v,
        Err(e) => {
            return fault(
                version,
                FaultCode::Client,
                "The request's Body is not acceptable XML",
                &json!({"detail": e.to_string()}),
            );
        }
    };
    let operation_ok = data
        .as_object()
        .is_some_and(|o| o.len() == 1 && o.contains_key(&ing.operation));
    if !operation_ok {
        return fault(
            version,
            FaultCode::Client,
            "The Body does not hold this endpoint's operation",
            &json!({"detail": format!("send one {} element in the Body", ing.operation)}),
        );
    }
    // The route runs on the request as data, exactly like a JSON request; a queued message
    // keeps that data as its original body.
    let raw = if route.delivery == Delivery::Queued || route.fallback_queue {
        Bytes::from(serde_json::to_vec(&data).unwrap_or_default())
    } else {
        Bytes::new()
    };
    let message_id = crate::server::new_message_id(&route);
    let resp =
        crate::server::run_request(state, route.clone(), parts, data, raw, message_id, started)
            .await;
    wrap(&route, ing, resp).await
}

/// Whether the HTTP content type is the one of the SOAP version.
fn content_type_fits(version: SoapVersion, ct: &str) -> bool {
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match version {
        SoapVersion::V11 => essence == "text/xml",
        SoapVersion::V12 => essence == "application/soap+xml",
    }
}

/// Turns the route's HTTP answer into an envelope or a Fault.
async fn wrap(route: &Route, ing: &SoapIngress, resp: Response) -> Response {
    let status = resp.status();
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let ct = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if status.is_client_error() || status.is_server_error() {
        let problem: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let reason = problem["title"]
            .as_str()
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("Error"))
            .to_string();
        let code = if status.is_client_error() {
            FaultCode::Client
        } else {
            FaultCode::Server
        };
        let mut out = fault(ing.version, code, &reason, &problem);
        copy_tilts_headers(&parts.headers, out.headers_mut());
        return out;
    }
    let content = if crate::server::is_xml_content_type(ct) {
        String::from_utf8_lossy(&bytes).into_owned()
    } else {
        let data: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        match response_xml(ing, data) {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(route = %route.id, error = %e, "SOAP answer could not be written as XML");
                return fault(
                    ing.version,
                    FaultCode::Server,
                    "The answer could not be written as XML",
                    &Value::Null,
                );
            }
        }
    };
    let envelope = soap::build_envelope(&soap::Envelope {
        version: ing.version,
        header_blocks: Vec::new(),
        addressing: None,
        body: &content,
    });
    let mut out = (status, envelope).into_response();
    set_content_type(&mut out, ing.version);
    copy_tilts_headers(&parts.headers, out.headers_mut());
    out
}

/// A JSON answer inside `<{operation}Response xmlns="{namespace}">`.
fn response_xml(ing: &SoapIngress, data: Value) -> Result<String, xml::XmlError> {
    let mut inner = serde_json::Map::new();
    inner.insert("@xmlns".into(), Value::String(ing.namespace.clone()));
    match data {
        Value::Object(m) => inner.extend(m),
        Value::Null => {}
        other => {
            let text = match other {
                Value::String(s) => s,
                v => v.to_string(),
            };
            inner.insert("#text".into(), Value::String(text));
        }
    }
    let mut root = serde_json::Map::new();
    root.insert(format!("{}Response", ing.operation), Value::Object(inner));
    xml::from_json(&Value::Object(root))
}

fn copy_tilts_headers(from: &http::HeaderMap, to: &mut http::HeaderMap) {
    for name in ["x-tilts-message-id", "retry-after"] {
        if let Some(v) = from.get(name) {
            to.insert(name, v.clone());
        }
    }
}

fn set_content_type(resp: &mut Response, version: SoapVersion) {
    if let Ok(v) = HeaderValue::from_str(&version.content_type(None)) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
}

/// A Fault answer: 400 for the caller's faults, 500 for tilts' or a system's.
fn fault(version: SoapVersion, code: FaultCode, reason: &str, problem: &Value) -> Response {
    let detail = match problem {
        Value::Object(m) if !m.is_empty() => {
            let mut d = serde_json::Map::new();
            d.insert(
                "problem".into(),
                json!({"@xmlns": "urn:tilts:problem", "#text": serde_json::to_string(problem).unwrap_or_default()}),
            );
            xml::from_json(&Value::Object(d)).ok()
        }
        _ => None,
    };
    let status = match code {
        FaultCode::Server => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    };
    let body = soap::fault_envelope(version, &code, reason, detail.as_deref());
    let mut resp = (status, body).into_response();
    set_content_type(&mut resp, version);
    resp
}

/// `GET path?wsdl`.
fn wsdl(route: &Route, req: &Request) -> Response {
    let ing = ingress(route);
    if !req
        .uri()
        .query()
        .is_some_and(|q| q.eq_ignore_ascii_case("wsdl") || q.starts_with("wsdl"))
    {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            "POST a SOAP envelope here, or GET ?wsdl for the service description\n",
        )
            .into_response();
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    let address = format!("http://{host}{}", route.path);
    let text = match &ing.wsdl {
        Some(t) => t.replace("{{address}}", &escape_xml(&address)),
        None => generated_wsdl(route, ing, &address),
    };
    let mut resp = text.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/xml; charset=utf-8"),
    );
    resp
}

/// A document/literal WSDL 1.1 for one operation whose elements accept any content.
pub fn generated_wsdl(route: &Route, ing: &SoapIngress, address: &str) -> String {
    let ns = escape_xml(&ing.namespace);
    let op = escape_xml(&ing.operation);
    let id = escape_xml(&route.id);
    let address = escape_xml(address);
    let (soap_ns, soap_prefix) = match ing.version {
        SoapVersion::V11 => ("http://schemas.xmlsoap.org/wsdl/soap/", "soap"),
        SoapVersion::V12 => ("http://schemas.xmlsoap.org/wsdl/soap12/", "soap12"),
    };
    let any = r#"<xsd:complexType><xsd:sequence><xsd:any minOccurs="0" maxOccurs="unbounded" processContents="lax"/></xsd:sequence></xsd:complexType>"#;
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<wsdl:definitions name="{id}" targetNamespace="{ns}" xmlns:tns="{ns}" xmlns:wsdl="http://schemas.xmlsoap.org/wsdl/" xmlns:{soap_prefix}="{soap_ns}" xmlns:xsd="http://www.w3.org/2001/XMLSchema">
  <wsdl:types>
    <xsd:schema targetNamespace="{ns}" elementFormDefault="qualified">
      <xsd:element name="{op}">{any}</xsd:element>
      <xsd:element name="{op}Response">{any}</xsd:element>
    </xsd:schema>
  </wsdl:types>
  <wsdl:message name="{op}Request"><wsdl:part name="parameters" element="tns:{op}"/></wsdl:message>
  <wsdl:message name="{op}Response"><wsdl:part name="parameters" element="tns:{op}Response"/></wsdl:message>
  <wsdl:portType name="{id}PortType">
    <wsdl:operation name="{op}"><wsdl:input message="tns:{op}Request"/><wsdl:output message="tns:{op}Response"/></wsdl:operation>
  </wsdl:portType>
  <wsdl:binding name="{id}Binding" type="tns:{id}PortType">
    <{soap_prefix}:binding style="document" transport="http://schemas.xmlsoap.org/soap/http"/>
    <wsdl:operation name="{op}">
      <{soap_prefix}:operation soapAction="{ns}/{op}"/>
      <wsdl:input><{soap_prefix}:body use="literal"/></wsdl:input>
      <wsdl:output><{soap_prefix}:body use="literal"/></wsdl:output>
    </wsdl:operation>
  </wsdl:binding>
  <wsdl:service name="{id}">
    <wsdl:port name="{id}Port" binding="tns:{id}Binding"><{soap_prefix}:address location="{address}"/></wsdl:port>
  </wsdl:service>
</wsdl:definitions>
"#
    )
}
