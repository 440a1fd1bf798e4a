//! Talking to a system the way it expects: plain HTTP/REST, SOAP envelopes, and the exchange
//! profiles a system declares (X-Road 4.0 SOAP, X-Road REST, the VISS request service, DAGR).
//!
//! The runtime renders a call's *logical* request (path, headers, payload) from the route's
//! templates; [`send`] frames it for the system at send time, so a queued message stores only
//! the payload and every attempt gets fresh transport ids (a WS-Addressing MessageID, an X-Road
//! `id`, a VISS transaction), while `X-Tilts-Message-Id` and the VISS CorrelationID stay the
//! message's own id across attempts.
//!
//! What comes back is an [`Answer`]: the status, headers and payload, plus the payload as data
//! (JSON as is; XML converted with namespaces and attributes kept, see
//! `tilts_adapters::xml`) and, for SOAP, the Fault when the call accepts faults. Failures are
//! classified for the engine: connect errors, timeouts, 5xx, 429 and SOAP Server faults may
//! pass; other statuses and faults are permanent; an answer that is not what the protocol
//! promises (not an envelope, no transaction id) is a protocol failure.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use tilts_adapters::contract::{DeliveryError, FailureKind};
use tilts_adapters::http::{HttpRequest, HttpResponse, MAX_RESPONSE_BYTES};
use tilts_adapters::profile::{self, UserId, VissRequestHeader, XRoadHeader};
use tilts_adapters::soap::{self, Addressing, Envelope, ParsedEnvelope, SoapVersion};
use tilts_adapters::xml;

use crate::plan::{Call, Profile, Soap};

/// The validity window of the WS-Security timestamp on VISS requests.
const VISS_TIMESTAMP_TTL: Duration = Duration::from_secs(300);

/// Deepest XML tilts reads from a peer.
const MAX_XML_DEPTH: usize = 64;

/// XML read as data for templates and conditions: element and attribute names without their
/// prefixes (a peer may choose any prefix, so routes must not depend on them) and without
/// namespace declarations. The exact form is the XML text (`Answer::body`), and
/// `tilts_adapters::xml` converts losslessly where that matters. Two names that differ only by
/// prefix become one array. `xml::fragment_to_local_json` and `xml::to_local_json` read XML
/// straight into this form, in one pass.
pub use tilts_adapters::xml::local_names;

/// A system's answer to one call.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    /// The payload: the HTTP body, or for SOAP the Body's content (for VISS the SubmitSync
    /// result), as XML text.
    pub body: Bytes,
    /// Content type of `body`.
    pub content_type: String,
    /// `body` as data: JSON as is, XML converted, other text as a string, null when empty.
    pub data: Value,
    /// The SOAP Fault as data (`{code, subcode, reason, ...}`) when the call accepts faults.
    pub fault: Option<Value>,
}

impl Answer {
    /// The form later steps read under the call's `as` name (the answer is moved into it,
    /// not copied: a registry's answer can be large).
    pub fn into_value(self) -> Value {
        let mut headers = serde_json::Map::with_capacity(self.headers.len());
        for (k, v) in &self.headers {
            if let Ok(v) = v.to_str() {
                headers.insert(k.as_str().to_string(), Value::String(v.to_string()));
            }
        }
        let mut v = serde_json::Map::with_capacity(4);
        v.insert("status".into(), Value::from(self.status));
        v.insert("headers".into(), Value::Object(headers));
        v.insert("body".into(), self.data);
        if let Some(f) = self.fault {
            v.insert("fault".into(), f);
        }
        Value::Object(v)
    }
}

/// Sends one logical request to `call`'s system, framed as the system requires.
/// `correlation_id` is the tilts message id (stable across attempts).
pub async fn send(
    call: &Call,
    req: HttpRequest,
    correlation_id: &str,
    user_id: Option<&UserId>,
) -> Result<Answer, DeliveryError> {
    let sys = &call.system;
    if let Some(broker) = sys.amqp() {
        return publish(call, broker, req, correlation_id).await;
    }
    match (&sys.soap, &sys.profile) {
        (Some(soap), Some(Profile::Viss { .. })) => {
            viss(call, *soap, req, correlation_id, user_id).await
        }
        (Some(soap), _) => soap_call(call, *soap, req, user_id).await,
        (None, _) => rest(call, req, user_id).await,
    }
}

/// The HTTP client of the call's system (the checker sends only HTTP calls here).
fn http(call: &Call) -> Result<&tilts_adapters::http::HttpSystem, DeliveryError> {
    call.system
        .http()
        .ok_or_else(|| err(call, FailureKind::Request, "not an HTTP system"))
}

/// Publishes to a broker: `req.path` is the rendered routing key, the body the message. The
/// message id is tilts' (stable across attempts), so consumers can deduplicate; Ok only once
/// the broker confirmed it.
async fn publish(
    call: &Call,
    broker: &crate::plan::AmqpHandle,
    req: HttpRequest,
    correlation_id: &str,
) -> Result<Answer, DeliveryError> {
    let mut content_type = "application/json".to_string();
    let mut headers = Vec::new();
    for (k, v) in &req.headers {
        let Ok(v) = v.to_str() else { continue };
        if k == http::header::CONTENT_TYPE {
            content_type = v.to_string();
        } else {
            headers.push((k.as_str().to_string(), v.to_string()));
        }
    }
    let msg = tilts_adapters::amqp::Outgoing {
        exchange: call.exchange.clone(),
        routing_key: req.path,
        body: req.body.unwrap_or_default(),
        content_type,
        message_id: correlation_id.to_string(),
        headers,
    };
    if let Some(capture) = broker.captured() {
        // `tilts test`: record, and answer as scripted.
        let outcome = capture.script.lock().ok().and_then(|mut s| s.pop_front());
        if let Ok(mut p) = capture.published.lock() {
            p.push(msg);
        }
        if let Some(Some(e)) = outcome {
            return Err(e);
        }
    } else {
        broker.get().await?.publish(msg).await?;
    }
    Ok(Answer {
        status: 202,
        headers: HeaderMap::new(),
        body: Bytes::new(),
        content_type: "application/json".into(),
        data: Value::Null,
        fault: None,
    })
}

fn err(call: &Call, kind: FailureKind, detail: impl Into<String>) -> DeliveryError {
    DeliveryError {
        system: call.system.name.clone(),
        kind,
        retry_after: None,
        detail: detail.into(),
    }
}

/// Plain HTTP/REST, with the X-Road REST or DAGR framing when the system has it.
async fn rest(
    call: &Call,
    mut req: HttpRequest,
    user_id: Option<&UserId>,
) -> Result<Answer, DeliveryError> {
    match &call.system.profile {
        Some(Profile::XRoadRest { client, .. }) => {
            let service = call
                .service
                .as_ref()
                .ok_or_else(|| err(call, FailureKind::Request, "no X-Road service"))?;
            req.path = profile::xroad_rest_path(service, &req.path);
            let id = uuid::Uuid::new_v4().to_string();
            let headers = profile::xroad_rest_headers(client, &id, user_id, None)
                .map_err(|e| err(call, FailureKind::Request, e.to_string()))?;
            req.headers.extend(headers);
        }
        Some(Profile::Dagr { .. }) => {
            if let Some(p) = &call.permission {
                let value = HeaderValue::from_str(p).map_err(|_| {
                    err(
                        call,
                        FailureKind::Request,
                        "the DAGR permission is not a valid header value",
                    )
                })?;
                req.headers
                    .push((HeaderName::from_static("x-dagr-permission"), value));
            }
        }
        _ => {}
    }
    let resp = http(call)?.send(req).await?;
    let accepted = call.accept.iter().any(|a| a.matches(resp.status));
    if !accepted {
        if matches!(call.system.profile, Some(Profile::XRoadRest { .. }))
            && let Some(e) = profile::parse_xroad_rest_error(&resp.body)
        {
            let mut error = resp.into_status_error(&call.system.name);
            if e.retry() == tilts_adapters::contract::Retry::Permanent {
                // An X-Road Client.* error is the caller's fault whatever the status says.
                error.kind = FailureKind::Fault(e.retry());
            }
            error.detail =
                tilts_adapters::redact::redact(&format!("X-Road error {}", e.type_)).into_owned();
            return Err(error);
        }
        return Err(resp.into_status_error(&call.system.name));
    }
    Ok(rest_answer(resp))
}

fn rest_answer(resp: HttpResponse) -> Answer {
    let content_type = resp
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_string();
    let data = parse_body(&content_type, &resp.body);
    Answer {
        status: resp.status,
        headers: resp.headers,
        body: resp.body,
        content_type,
        data,
        fault: None,
    }
}

/// A body as data: JSON when it is JSON, XML converted when it is XML, text otherwise, null
/// when empty.
pub fn parse_body(content_type: &str, body: &[u8]) -> Value {
    if body.is_empty() {
        return Value::Null;
    }
    if content_type.contains("json")
        && let Ok(v) = serde_json::from_slice(body)
    {
        return v;
    }
    if content_type.contains("xml")
        && let Ok(v) = xml::to_local_json(body, &xml_limits())
    {
        return v;
    }
    Value::String(String::from_utf8_lossy(body).into_owned())
}

fn xml_limits() -> xml::Limits {
    xml::Limits {
        max_bytes: MAX_RESPONSE_BYTES,
        ..xml::Limits::default()
    }
}

/// The payload of a SOAP call as XML text: a template's output as is, the current message
/// converted when it is JSON data.
pub fn soap_payload(body: Option<&Bytes>) -> &str {
    body.map(|b| std::str::from_utf8(b).unwrap_or_default())
        .unwrap_or_default()
}

/// One SOAP request/response (plain or X-Road).
async fn soap_call(
    call: &Call,
    soap: Soap,
    req: HttpRequest,
    user_id: Option<&UserId>,
) -> Result<Answer, DeliveryError> {
    let mut header_blocks = Vec::new();
    if let Some(Profile::XRoad { client, .. }) = &call.system.profile {
        let service = call
            .service
            .clone()
            .ok_or_else(|| err(call, FailureKind::Request, "no X-Road service"))?;
        header_blocks.extend(profile::xroad_soap_headers(&XRoadHeader {
            client: client.clone(),
            service,
            id: uuid::Uuid::new_v4().to_string(),
            user_id: user_id.cloned(),
            issue: None,
            protocol_version: "4.0".into(),
        }));
    }
    let url = http(call)?.url_for(&req.path);
    let addressing = soap
        .addressing
        .then(|| Addressing::new(call.action.clone().unwrap_or_default(), Some(url)));
    let payload = soap_payload(req.body.as_ref());
    let posted = post_envelope(
        call,
        soap.version,
        call.action.as_deref(),
        &req,
        header_blocks,
        addressing,
        payload,
        true,
    )
    .await?;
    finish(call, posted, Payload::Body)
}

/// The VISS request service: StartTransaction, then SubmitSync with the transaction id.
async fn viss(
    call: &Call,
    soap: Soap,
    req: HttpRequest,
    correlation_id: &str,
    user_id: Option<&UserId>,
) -> Result<Answer, DeliveryError> {
    let Some(Profile::Viss {
        e_service,
        sender,
        destination,
        test,
        start_action,
        submit_action,
        ..
    }) = &call.system.profile
    else {
        return Err(err(call, FailureKind::Request, "not a VISS system"));
    };
    let to = http(call)?.url_for(&req.path);
    let now = chrono::Utc::now();
    // 1. StartTransaction.
    let start = Addressing::new(start_action.clone(), Some(to.clone()));
    let body = profile::start_transaction_body(e_service);
    let Posted { parsed, status, .. } = post_envelope(
        call,
        soap.version,
        Some(start_action),
        &req,
        vec![profile::wsse_timestamp(now, VISS_TIMESTAMP_TTL)],
        Some(start),
        &body,
        false,
    )
    .await?;
    if let Some(f) = &parsed.fault {
        return Err(f.to_delivery_error(&call.system.name));
    }
    if !(200..300).contains(&status) {
        return Err(err(
            call,
            FailureKind::Status(status),
            "StartTransaction was not answered",
        ));
    }
    let transaction_id = profile::parse_start_transaction_response(&parsed.body).map_err(|e| {
        err(
            call,
            FailureKind::Protocol,
            format!("StartTransaction answer unreadable: {e}"),
        )
    })?;
    // 2. SubmitSync.
    let message_type = call
        .message_type
        .clone()
        .ok_or_else(|| err(call, FailureKind::Request, "no VISS MessageType"))?;
    let header = profile::viss_request_header(&VissRequestHeader {
        message_id: format!("urn:uuid:{}", uuid::Uuid::new_v4()),
        message_type,
        transaction_id,
        correlation_id: format!("urn:uuid:{correlation_id}"),
        sender: sender.clone(),
        destination: destination.clone(),
        test: *test,
        milestone_id: None,
        initiator: user_id.cloned(),
    });
    let submit = Addressing::new(submit_action.clone(), Some(to));
    let body = profile::submit_sync_body(soap_payload(req.body.as_ref()));
    let posted = post_envelope(
        call,
        soap.version,
        Some(submit_action),
        &req,
        vec![header, profile::wsse_timestamp(now, VISS_TIMESTAMP_TTL)],
        Some(submit),
        &body,
        false,
    )
    .await?;
    finish(call, posted, Payload::SubmitSync)
}

/// An answer read as an envelope.
struct Posted {
    parsed: ParsedEnvelope,
    /// The Body's content as data (local names), when asked for: read in the same pass as the
    /// envelope, exactly what `xml::fragment_to_local_json(parsed.body)` gives.
    data: Option<Result<Value, xml::XmlError>>,
    status: u16,
    headers: HeaderMap,
}

/// Builds and posts one envelope; reads the answer as an envelope, and with `with_data` its
/// Body's content as data too.
#[allow(clippy::too_many_arguments)]
async fn post_envelope(
    call: &Call,
    version: SoapVersion,
    action: Option<&str>,
    req: &HttpRequest,
    header_blocks: Vec<String>,
    addressing: Option<Addressing>,
    body: &str,
    with_data: bool,
) -> Result<Posted, DeliveryError> {
    let envelope = soap::build_envelope(&Envelope {
        version,
        header_blocks,
        addressing,
        body,
    });
    let mut headers: Vec<(HeaderName, HeaderValue)> = req
        .headers
        .iter()
        .filter(|(k, _)| *k != http::header::CONTENT_TYPE)
        .cloned()
        .collect();
    headers.extend(soap::request_headers(version, action));
    let resp = http(call)?
        .send(HttpRequest {
            method: http::Method::POST,
            path: req.path.clone(),
            headers,
            body: Some(Bytes::from(envelope)),
            timeout: req.timeout,
        })
        .await?;
    let status = resp.status;
    let read = if with_data {
        soap::parse_envelope_with_data(&resp.body, MAX_RESPONSE_BYTES, MAX_XML_DEPTH, &xml_limits())
            .map(|(parsed, data)| (parsed, Some(data)))
    } else {
        soap::parse_envelope(&resp.body, MAX_RESPONSE_BYTES, MAX_XML_DEPTH).map(|p| (p, None))
    };
    match read {
        Ok((parsed, data)) => Ok(Posted {
            parsed,
            data,
            status,
            headers: resp.headers,
        }),
        Err(e) => {
            // Not an envelope: a gateway error page, say. The status tells more than the body.
            if !(200..300).contains(&status) {
                Err(resp.into_status_error(&call.system.name))
            } else {
                Err(err(
                    call,
                    FailureKind::Protocol,
                    format!("the answer is not a SOAP envelope: {e}"),
                ))
            }
        }
    }
}

/// Where a call's payload is in the answer's Body.
enum Payload {
    /// The Body's content itself.
    Body,
    /// The VISS SubmitSync result inside the Body.
    SubmitSync,
}

/// Applies the call's fault and status rules to a parsed answer.
fn finish(call: &Call, posted: Posted, payload: Payload) -> Result<Answer, DeliveryError> {
    let Posted {
        parsed,
        data,
        status,
        headers,
    } = posted;
    if let Some(f) = &parsed.fault {
        if !call.accept_faults {
            return Err(f.to_delivery_error(&call.system.name));
        }
        return Ok(Answer {
            status,
            headers,
            body: Bytes::new(),
            content_type: "application/xml".into(),
            data: Value::Null,
            fault: Some(fault_value(f)),
        });
    }
    if !call.accept.iter().any(|a| a.matches(status)) {
        return Err(err(
            call,
            FailureKind::Status(status),
            "a SOAP answer with a status the call does not accept",
        ));
    }
    let (payload, data) = match payload {
        // The data was read with the envelope (`post_envelope` asked for it).
        Payload::Body => (parsed.body, data),
        Payload::SubmitSync => {
            let payload = profile::unwrap_submit_sync_response(&parsed.body).map_err(|e| {
                err(
                    call,
                    FailureKind::Protocol,
                    format!("answer unreadable: {e}"),
                )
            })?;
            (payload, None)
        }
    };
    let data = if payload.trim().is_empty() {
        Value::Null
    } else {
        data.unwrap_or_else(|| xml::fragment_to_local_json(payload.as_bytes(), &xml_limits()))
            .map_err(|e| {
                err(
                    call,
                    FailureKind::Protocol,
                    format!("the answer's Body is not readable XML: {e}"),
                )
            })?
    };
    Ok(Answer {
        status,
        headers,
        body: Bytes::from(payload),
        content_type: "application/xml".into(),
        data,
        fault: None,
    })
}

/// A fault as data, with its detail converted when it is XML.
fn fault_value(f: &soap::Fault) -> Value {
    let mut v = f.to_json();
    if let Some(d) = &f.detail
        && let Ok(data) = xml::fragment_to_local_json(d.as_bytes(), &xml_limits())
    {
        v["detail"] = data;
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn xml_bodies_are_read_with_local_names() {
        let xml = br#"<?xml version="1.0"?><pr:R xmlns:pr="urn:pr" pr:v="1"><pr:A>x</pr:A><q:A xmlns:q="urn:q">y</q:A></pr:R>"#;
        let expected = json!({"R": {"@v": "1", "A": ["x", "y"]}});
        assert_eq!(parse_body("application/xml", xml), expected);
        assert_eq!(
            local_names(xml::to_json(xml, &xml_limits()).unwrap()),
            expected
        );
        assert_eq!(
            parse_body("text/xml", b"<a>"),
            json!("<a>"),
            "unreadable XML is text"
        );
        assert_eq!(
            parse_body("application/json", br#"{"a":1}"#),
            json!({"a": 1})
        );
        assert_eq!(parse_body("application/xml", b""), Value::Null);
    }

    #[test]
    fn a_fault_detail_is_read_with_local_names() {
        let mut fault = soap::Fault {
            version: SoapVersion::V11,
            code: soap::FaultCode::Client,
            subcode: None,
            reason: "No such person".into(),
            node: None,
            role: None,
            detail: Some(r#"<e:Error xmlns:e="urn:e"><e:Code>404</e:Code></e:Error>"#.into()),
        };
        assert_eq!(
            fault_value(&fault)["detail"],
            json!({"Error": {"Code": "404"}})
        );
        // A detail that is not XML stays as written.
        fault.detail = Some("not <xml".into());
        assert_eq!(fault_value(&fault)["detail"], json!("not <xml"));
    }

    #[test]
    fn local_names_drop_prefixes_and_declarations() {
        let v = json!({"pr:GetPersonResponse": {
            "@xmlns:pr": "urn:x", "@pr:version": "1",
            "pr:Person": {"pr:GivenName": "Anna", "pr:DeclaredAddress": {"@code": "103", "#text": "Rīga"}},
            "a:Note": "one", "b:Note": "two"
        }});
        assert_eq!(
            local_names(v),
            json!({"GetPersonResponse": {
                "@version": "1",
                "Person": {"GivenName": "Anna", "DeclaredAddress": {"@code": "103", "#text": "Rīga"}},
                "Note": ["one", "two"]
            }})
        );
        // An element whose only other key was a namespace declaration reads as its text.
        assert_eq!(
            local_names(json!({"x:Status": {"@xmlns:x": "urn:x", "#text": "active"}})),
            json!({"Status": "active"})
        );
    }
}
