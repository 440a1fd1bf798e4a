//! Simulator of the Population Register (PMLP, Fizisko personu reģistrs): person lookup by
//! personal code over SOAP, in the three profiles tilts speaks: plain SOAP 1.1/1.2, X-Road
//! message protocol 4.0 headers, and the VISS request service (WS-Addressing, WS-Security
//! timestamp, `StartTransaction` + `SubmitSync`).
//!
//! It is the independent check of tilts' SOAP client code, so it parses requests with its own
//! small namespace-aware reader (quick-xml's `NsReader`: elements are matched by namespace URI
//! and local name, never by prefix; DTDs and processing instructions are refused; body size,
//! depth, element and attribute counts are capped) and refuses anything that does not follow
//! the profile with a SOAP fault saying which header or element is missing or wrong. No fault
//! ever echoes a personal code.
//!
//! # Contract
//!
//! Payload (namespace [`PAYLOAD_NS`], any prefix): request
//! `<GetPerson><PersonalCode>010190-12349</PersonalCode></GetPerson>` (the code with or without
//! its hyphen, no surrounding whitespace), answer
//! `<GetPersonResponse><Person><PersonalCode/><GivenName/><FamilyName/><BirthDate/><Status/>
//! <DeclaredAddress code="…"><Text/></DeclaredAddress></Person></GetPersonResponse>`.
//! Payload faults: invalid code -> Client/Sender, subcode `pr:InvalidPersonalCode`; unknown
//! person -> Client/Sender, `pr:PersonNotFound`; [`SERVER_FAULT`] -> Server/Receiver,
//! `pr:RegisterUnavailable`, HTTP 500; [`FAULT_HTTP_200`] -> the same fault with HTTP 200;
//! [`SLOW`] answers after [`SLOW_DELAY`].
//!
//! - `POST /pmlp/person` ([`PERSON_PATH`]): SOAP 1.1 (Content-Type `text/xml`, `SOAPAction`
//!   header required, any value including `""`) or SOAP 1.2 (`application/soap+xml`), chosen by
//!   the Envelope namespace. A Content-Type that does not match the envelope's version (or is
//!   missing) is answered with a `VersionMismatch` fault in the envelope's version; a root that
//!   is not a SOAP 1.1 or 1.2 `Envelope` gets a `VersionMismatch` fault in the version the
//!   Content-Type suggests. Plain mode: `GetPerson` in the Body, any header blocks without
//!   `mustUnderstand` are ignored. X-Road mode, as soon as any header block is in the
//!   [`XROAD_NS`] namespace: SOAP 1.1 only; `xrd:client` (objectType `SUBSYSTEM` or `MEMBER`),
//!   `xrd:service` (objectType `SERVICE`), `xrd:id`, `xrd:userId`?, `xrd:issue`?,
//!   `xrd:protocolVersion` = `4.0`, in this order, identifiers well formed (non-empty, at most
//!   255 characters, no whitespace, control characters, `/`, `\`, `:`, `;` or `%`). The service
//!   identity itself is not checked, only its form. The answer repeats those blocks and adds
//!   `xrd:requestHash` (algorithm [`REQUEST_HASH_ALGORITHM`]) = base64(SHA-512) of the raw HTTP
//!   request body bytes.
//! - `POST /viss/RequestService` ([`VISS_PATH`]): SOAP 1.2 only (anything else is a
//!   `VersionMismatch` fault). Headers required: `wsa:Action`, `wsa:MessageID` (an absolute URI),
//!   `wsa:To` (an absolute http(s) URI ending in `/viss/RequestService`), each once; `wsa:ReplyTo`
//!   optional; an `action` parameter of the Content-Type, when present, must equal `wsa:Action`
//!   (`wsa:ActionMismatch`). `wsse:Security` with `wsu:Timestamp` holding `wsu:Created` and
//!   `wsu:Expires` (RFC 3339) whose window contains now, allowing [`CLOCK_SKEW`] either side
//!   (`wsse:InvalidSecurity` when missing or malformed, `wsse:MessageExpired` when outside).
//!   Dispatch by `wsa:Action`: any URI ending in `/StartTransaction` (e.g.
//!   [`ACTION_START_TRANSACTION`]) or `/SubmitSync` ([`ACTION_SUBMIT_SYNC`]); anything else is
//!   a Sender fault with subcode `wsa:ActionNotSupported`. The answer's action is the request's
//!   plus `Response`, with a new `wsa:MessageID` and `wsa:RelatesTo` = the request's MessageID.
//!   - StartTransaction: body `StartTransaction/eServiceID` = [`E_SERVICE_ID`] -> a new
//!     transaction URN [`TRANSACTION_PREFIX`]`<n>`, numbered from [`FIRST_TRANSACTION`].
//!   - SubmitSync: header `IVISRequest` with, in order, MessageID, MessageType
//!     (= [`MESSAGE_TYPE`]), TransactionID (issued by this simulator), CorrelationID, Sender
//!     (a `URN:IVIS:` URN), Destination (= [`DESTINATION`]), Test (`true`/`false`/`1`/`0`),
//!     MilestoneID?, Initiator? (`PK:<code>`, `AU:<reg no>`, `AU:<reg no>-PK:<code>` or
//!     `PK:<code>-UR:<reg no>`, all valid); body `SubmitSync/request/GetPerson`. Answer: header
//!     `IVISResponse` (new MessageID, the request's MessageType, TransactionID, CorrelationID,
//!     TimeStamp, Result `OK`), body `SubmitSyncResponse/SubmitSyncResult/GetPersonResponse`.
//!
//! Faults: SOAP 1.1 `faultcode` is `Client`, `Server`, `VersionMismatch` or `MustUnderstand` in
//! the envelope namespace, with a payload subcode in the dot notation of SOAP 1.1 §4.4.1
//! (`SOAP-ENV:Client.InvalidPersonalCode`); SOAP 1.2 faults carry `env:Sender`/`env:Receiver`
//! etc. with the subcode as a qualified `env:Subcode/env:Value`. Every fault is HTTP 500 except
//! [`FAULT_HTTP_200`]. VISS faults carry `wsa:Action`
//! `http://www.w3.org/2005/08/addressing/soap/fault` and `wsa:RelatesTo` when the request's
//! MessageID was readable.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use quick_xml::NsReader;
use quick_xml::XmlVersion;
use quick_xml::escape::{escape, resolve_predefined_entity};
use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use sha2::{Digest, Sha512};

use super::address_register;
use crate::ident::{PersonalCode, is_valid_reg_no, mask_personal_code};
use crate::redact::redact;

/// SOAP 1.1 envelope namespace.
pub const SOAP11_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
/// SOAP 1.2 envelope namespace.
pub const SOAP12_NS: &str = "http://www.w3.org/2003/05/soap-envelope";
/// WS-Addressing 1.0 namespace.
pub const WSA_NS: &str = "http://www.w3.org/2005/08/addressing";
/// WS-Security 1.x secext namespace.
pub const WSSE_NS: &str =
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd";
/// WS-Security utility namespace (`Timestamp`, `Created`, `Expires`).
pub const WSU_NS: &str =
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd";
/// The VISS request service namespace (body and `IVISRequest`/`IVISResponse` headers).
pub const VISS_NS: &str = "http://ivis.eps.gov.lv/ISS/RequestServiss/v1-0";
/// X-Road message protocol 4.0 header namespace.
pub const XROAD_NS: &str = "http://x-road.eu/xsd/xroad.xsd";
/// X-Road identifier namespace (`xRoadInstance`, `memberClass`, …, `objectType`).
pub const IDEN_NS: &str = "http://x-road.eu/xsd/identifiers";
/// Namespace of the simulated Population Register payload (`GetPerson`).
pub const PAYLOAD_NS: &str = "urn:x-tilts-sim:pmlp:person:v1";

/// Path of the plain / X-Road SOAP endpoint.
pub const PERSON_PATH: &str = "/pmlp/person";
/// Path of the VISS request service endpoint.
pub const VISS_PATH: &str = "/viss/RequestService";

/// The `wsa:Action` of StartTransaction this simulator expects (any URI ending in
/// `/StartTransaction` is accepted: the real URI is unconfirmed).
pub const ACTION_START_TRANSACTION: &str =
    "http://ivis.eps.gov.lv/ISS/RequestServiss/v1-0/IRequestService/StartTransaction";
/// The `wsa:Action` of SubmitSync this simulator expects (any URI ending in `/SubmitSync` is
/// accepted).
pub const ACTION_SUBMIT_SYNC: &str =
    "http://ivis.eps.gov.lv/ISS/RequestServiss/v1-0/IRequestService/SubmitSync";
/// The `wsa:Action` of VISS fault answers.
pub const ACTION_FAULT: &str = "http://www.w3.org/2005/08/addressing/soap/fault";
/// The only e-service this VISS simulator knows.
pub const E_SERVICE_ID: &str = "EP-PMLP-PERSON-v1-0";
/// Issued transaction ids are this prefix followed by a sequence number.
pub const TRANSACTION_PREFIX: &str = "URN:IVIS:100001:EP-PMLP-PERSON-v1-0-TR-";
/// Sequence number of the first transaction a fresh simulator issues.
pub const FIRST_TRANSACTION: u64 = 861;
/// The `IVISRequest/MessageType` SubmitSync requires.
pub const MESSAGE_TYPE: &str = "URN:IVIS:100001:MT-PMLP-GetPerson";
/// The `IVISRequest/Destination` SubmitSync requires.
pub const DESTINATION: &str = "URN:IVIS:100001:IS-PMLP";
/// The `algorithmId` of `xrd:requestHash`.
pub const REQUEST_HASH_ALGORITHM: &str = "http://www.w3.org/2001/04/xmlenc#sha512";
/// Clock skew allowed either side of the WS-Security timestamp window.
pub const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// An active person: Jānis Bērziņš, born 1990-01-01, in Rīga.
pub const ACTIVE: &str = "010190-12349";
/// A deceased person (`Status` `deceased`).
pub const DECEASED: &str = "070765-10317";
/// A person with a new-form code (`32…`, no birth date in the code).
pub const NEW_FORM: &str = "329512-40217";
/// A valid code of nobody in the register (`pr:PersonNotFound`).
pub const NOT_FOUND: &str = "190863-10771";
/// A code failing the check digit (`pr:InvalidPersonalCode`).
pub const INVALID: &str = "010190-12340";
/// A valid code whose lookup fails inside the register: Server/Receiver fault
/// `pr:RegisterUnavailable`, HTTP 500.
pub const SERVER_FAULT: &str = "301055-10208";
/// A valid code whose lookup answers the `pr:RegisterUnavailable` fault with HTTP status 200, as
/// some servers do.
pub const FAULT_HTTP_200: &str = "251270-10881";
/// An active person whose lookup answers only after [`SLOW_DELAY`].
pub const SLOW: &str = "050393-10448";
/// How long the lookup of [`SLOW`] takes.
pub const SLOW_DELAY: Duration = Duration::from_secs(3);

/// Largest request envelope accepted: the VISS request limit.
const MAX_ENVELOPE_BYTES: usize = 4 * 1024 * 1024;
/// Deepest element nesting accepted.
const MAX_DEPTH: usize = 32;
/// Most elements accepted in one request.
const MAX_ELEMENTS: usize = 10_000;
/// Most attributes (namespace declarations included) accepted on one element.
const MAX_ATTRIBUTES: usize = 32;
/// How many issued transactions are remembered; older ones are forgotten so a long demo does
/// not grow without bound.
const MAX_TRANSACTIONS: usize = 100_000;
/// Longest X-Road identifier part accepted.
const MAX_IDENTIFIER_LEN: usize = 255;

/// One person in the register. All data is fictional. `Debug` masks the code and leaves the
/// names out: they are personal data.
#[derive(Clone, Copy)]
pub struct Person {
    /// Personal code as the register writes it, `DDMMYY-CNNNK` or `32NNNN-NNNNN`.
    pub code: &'static str,
    /// Given name.
    pub given_name: &'static str,
    /// Family name.
    pub family_name: &'static str,
    /// Birth date, `YYYY-MM-DD`.
    pub birth_date: &'static str,
    /// `active` or `deceased`.
    pub status: &'static str,
    /// Declared address: a building code of the address register simulator.
    pub address_code: &'static str,
}

impl fmt::Debug for Person {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Person")
            .field("code", &mask_personal_code(self.code))
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl Person {
    /// The `GetPersonResponse` payload element for this person.
    fn response_xml(&self) -> String {
        let address_text = address_register::find(self.address_code)
            .map(|a| a.text)
            .unwrap_or_default();
        format!(
            "<GetPersonResponse xmlns=\"{PAYLOAD_NS}\"><Person><PersonalCode>{}</PersonalCode>\
             <GivenName>{}</GivenName><FamilyName>{}</FamilyName><BirthDate>{}</BirthDate>\
             <Status>{}</Status><DeclaredAddress code=\"{}\"><Text>{}</Text></DeclaredAddress>\
             </Person></GetPersonResponse>",
            escape(self.code),
            escape(self.given_name),
            escape(self.family_name),
            escape(self.birth_date),
            escape(self.status),
            escape(self.address_code),
            escape(address_text),
        )
    }
}

const fn p(
    code: &'static str,
    given_name: &'static str,
    family_name: &'static str,
    birth_date: &'static str,
    status: &'static str,
    address_code: &'static str,
) -> Person {
    Person {
        code,
        given_name,
        family_name,
        birth_date,
        status,
        address_code,
    }
}

/// Everyone in the register (all fictional).
#[rustfmt::skip]
pub const PEOPLE: &[Person] = &[
    p(ACTIVE, "Jānis", "Bērziņš", "1990-01-01", "active", address_register::RIGA_GERTRUDES_34),
    p("161175-19997", "Ilze", "Kalniņa", "1975-11-16", "active", address_register::JELGAVA_KATOLU_2),
    p("150285-10005", "Anna", "Ozola", "1985-02-15", "active", address_register::VALMIERA_RIGAS_25),
    p(DECEASED, "Pēteris", "Liepiņš", "1965-07-07", "deceased", "104108871"),
    p("230478-10564", "Līga", "Krūmiņa", "1978-04-23", "active", address_register::KOCENI_KLAVAS),
    p("120988-11029", "Mārtiņš", "Zariņš", "1988-09-12", "active", address_register::RIGA_LAZDU_12_K3),
    p(SLOW, "Elīna", "Vītola", "1993-03-05", "active", "105226421"),
    p("280200-22034", "Kristaps", "Ozoliņš", "2000-02-28", "active", "104108897"),
    p(NEW_FORM, "Roberts", "Jansons", "2018-08-14", "active", "103716262"),
];

/// The person with this code (with or without the hyphen), if registered.
pub fn find(code: &str) -> Option<&'static Person> {
    let digits = |s: &str| s.bytes().filter(|b| *b != b'-').collect::<Vec<u8>>();
    let wanted = digits(code);
    PEOPLE.iter().find(|p| digits(p.code) == wanted)
}

/// The routes of the Population Register simulator (without the shared `/_sim/` machinery).
/// Each call starts with no VISS transactions issued.
pub fn router() -> Router {
    let shared = Shared(Arc::new(Mutex::new(Transactions {
        next: FIRST_TRANSACTION,
        ..Transactions::default()
    })));
    Router::new()
        .route(PERSON_PATH, post(person_endpoint))
        .route(VISS_PATH, post(viss_endpoint))
        .with_state(shared)
}

// ---------------------------------------------------------------------------------------------
// State

/// The VISS transactions issued so far.
#[derive(Default)]
struct Transactions {
    next: u64,
    issued: HashSet<String>,
    order: VecDeque<String>,
}

/// One mutex: every operation is a short in-memory update.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Transactions>>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Transactions> {
        // Plain data: a panic while holding the lock cannot leave it inconsistent.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn start_transaction(&self) -> String {
        let mut t = self.lock();
        let id = format!("{TRANSACTION_PREFIX}{}", t.next);
        t.next += 1;
        if t.order.len() == MAX_TRANSACTIONS
            && let Some(old) = t.order.pop_front()
        {
            t.issued.remove(&old);
        }
        t.order.push_back(id.clone());
        t.issued.insert(id.clone());
        id
    }

    fn is_issued(&self, id: &str) -> bool {
        self.lock().issued.contains(id)
    }
}

// ---------------------------------------------------------------------------------------------
// A minimal namespace-aware XML tree

/// An element with its namespace URI resolved (`""` when in no namespace).
#[derive(Debug, Default)]
struct Element {
    ns: String,
    local: String,
    /// Attributes other than namespace declarations.
    attrs: Vec<Attr>,
    children: Vec<Element>,
    /// The element's own character data (CDATA included), concatenated, entities resolved.
    text: String,
}

#[derive(Debug)]
struct Attr {
    ns: String,
    local: String,
    value: String,
}

impl Element {
    fn is(&self, ns: &str, local: &str) -> bool {
        self.ns == ns && self.local == local
    }

    /// The value of the attribute `{ns}local`.
    fn attr(&self, ns: &str, local: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|a| a.ns == ns && a.local == local)
            .map(|a| a.value.as_str())
    }

    /// Children named `{ns}local`.
    fn children_named<'a, 'n>(
        &'a self,
        ns: &'n str,
        local: &'n str,
    ) -> impl Iterator<Item = &'a Element> + 'n
    where
        'a: 'n,
    {
        self.children.iter().filter(move |c| c.is(ns, local))
    }

    fn has_text(&self) -> bool {
        !self.text.trim().is_empty()
    }
}

/// Parses a request body into an element tree. The error says what is wrong, never quoting
/// the document's text.
fn parse_xml(bytes: &[u8]) -> Result<Element, String> {
    if bytes.len() > MAX_ENVELOPE_BYTES {
        return Err(format!(
            "the request body exceeds the limit of {MAX_ENVELOPE_BYTES} bytes"
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        format!(
            "the request body is not UTF-8 (at byte {})",
            e.valid_up_to()
        )
    })?;
    let mut reader = NsReader::from_str(text);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut elements = 0usize;
    loop {
        let event = reader.read_event().map_err(|e| {
            format!(
                "the request is not well-formed XML (at byte {}): {}",
                reader.error_position(),
                redact(&e.to_string())
            )
        })?;
        match event {
            Event::Start(ref start) | Event::Empty(ref start) => {
                elements += 1;
                if elements > MAX_ELEMENTS {
                    return Err(format!("the request has more than {MAX_ELEMENTS} elements"));
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(format!(
                        "the request nests elements deeper than {MAX_DEPTH}"
                    ));
                }
                if root.is_some() {
                    return Err("the request has more than one root element".into());
                }
                let (ns, local) = reader.resolver().resolve_element(start.name());
                let ns = namespace(ns, "element")?;
                let mut element = Element {
                    ns,
                    local: local.as_ref().to_owned(),
                    ..Element::default()
                };
                for (i, attr) in start.attributes().enumerate() {
                    if i >= MAX_ATTRIBUTES {
                        return Err(format!(
                            "an element of the request has more than {MAX_ATTRIBUTES} attributes"
                        ));
                    }
                    let attr = attr.map_err(|e| {
                        format!(
                            "the request has a malformed attribute: {}",
                            redact(&e.to_string())
                        )
                    })?;
                    if attr.key.as_namespace_binding().is_some() {
                        continue;
                    }
                    let (ns, local) = reader.resolver().resolve_attribute(attr.key);
                    let ns = namespace(ns, "attribute")?;
                    let value = attr
                        .normalized_value(XmlVersion::Implicit1_0)
                        .map_err(|_| "an attribute value has an unknown entity reference")?;
                    element.attrs.push(Attr {
                        ns,
                        local: local.as_ref().to_owned(),
                        value: value.into_owned(),
                    });
                }
                if matches!(event, Event::Start(_)) {
                    stack.push(element);
                } else {
                    attach(&mut stack, &mut root, element);
                }
            }
            Event::End(_) => {
                // quick-xml has already checked that the end tag matches the open element.
                let element = stack
                    .pop()
                    .ok_or("the request has an end tag without a start tag")?;
                attach(&mut stack, &mut root, element);
            }
            Event::Text(t) => match stack.last_mut() {
                Some(open) => open.text.push_str(&t.xml10_content()),
                None if t.xml10_content().trim().is_empty() => {}
                None => return Err("the request has text outside the root element".into()),
            },
            Event::CData(c) => match stack.last_mut() {
                Some(open) => open.text.push_str(&c.xml10_content()),
                None => return Err("the request has CDATA outside the root element".into()),
            },
            Event::GeneralRef(r) => {
                let resolved = match r.resolve_char_ref() {
                    Ok(Some(c)) => c.to_string(),
                    Ok(None) => resolve_predefined_entity(&r.xml10_content())
                        .ok_or("the request uses an entity that is not predefined in XML")?
                        .to_owned(),
                    Err(_) => return Err("the request has an invalid character reference".into()),
                };
                match stack.last_mut() {
                    Some(open) => open.text.push_str(&resolved),
                    None => {
                        return Err("the request has a reference outside the root element".into());
                    }
                }
            }
            Event::Decl(d) => {
                if let Some(Ok(encoding)) = d.encoding()
                    && !encoding.eq_ignore_ascii_case("utf-8")
                {
                    return Err("the XML declaration names an encoding other than UTF-8".into());
                }
            }
            Event::DocType(_) => {
                return Err("a document type declaration (DOCTYPE) is not allowed in SOAP".into());
            }
            Event::PI(_) => {
                return Err("processing instructions are not allowed in SOAP".into());
            }
            Event::Comment(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err("the request ends before its root element is closed".into());
    }
    root.ok_or_else(|| "the request body holds no XML element".into())
}

fn namespace(resolved: ResolveResult<'_>, what: &str) -> Result<String, String> {
    match resolved {
        ResolveResult::Bound(ns) => Ok(ns.0.to_owned()),
        ResolveResult::Unbound => Ok(String::new()),
        ResolveResult::Unknown(_) => Err(format!(
            "the request uses an undeclared namespace prefix on an {what}"
        )),
    }
}

fn attach(stack: &mut [Element], root: &mut Option<Element>, element: Element) {
    match stack.last_mut() {
        Some(parent) => parent.children.push(element),
        None => *root = Some(element),
    }
}

/// Writes `element` and its subtree as XML, declaring on the way every namespace not in
/// `scope` (pairs of prefix and URI); the writer never uses a default namespace, so names in
/// no namespace stay unprefixed.
fn write_element(element: &Element, out: &mut String, scope: &mut Vec<(String, String)>) {
    let depth = scope.len();
    let mut declarations = String::new();
    let mut prefix_of = |ns: &str, scope: &mut Vec<(String, String)>| -> Option<String> {
        if ns.is_empty() {
            return None;
        }
        if let Some((prefix, _)) = scope.iter().rev().find(|(_, uri)| uri == ns) {
            return Some(prefix.clone());
        }
        let preferred = match ns {
            XROAD_NS => "xrd".to_owned(),
            IDEN_NS => "iden".to_owned(),
            _ => format!("ns{}", scope.len() + 1),
        };
        let prefix = if scope.iter().any(|(p, _)| *p == preferred) {
            format!("ns{}", scope.len() + 1)
        } else {
            preferred
        };
        declarations.push_str(&format!(" xmlns:{prefix}=\"{}\"", escape(ns)));
        scope.push((prefix.clone(), ns.to_owned()));
        Some(prefix)
    };
    let qname = |prefix: Option<String>, local: &str| match prefix {
        Some(p) => format!("{p}:{local}"),
        None => local.to_owned(),
    };
    let name = qname(prefix_of(&element.ns, scope), &element.local);
    let mut attributes = String::new();
    for attr in &element.attrs {
        let attr_name = qname(prefix_of(&attr.ns, scope), &attr.local);
        attributes.push_str(&format!(" {attr_name}=\"{}\"", escape(attr.value.as_str())));
    }
    out.push_str(&format!("<{name}{declarations}{attributes}>"));
    out.push_str(&escape(element.text.as_str()));
    for child in &element.children {
        write_element(child, out, scope);
    }
    out.push_str(&format!("</{name}>"));
    scope.truncate(depth);
}

// ---------------------------------------------------------------------------------------------
// SOAP envelopes and faults

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SoapVersion {
    V11,
    V12,
}

impl SoapVersion {
    fn ns(self) -> &'static str {
        match self {
            SoapVersion::V11 => SOAP11_NS,
            SoapVersion::V12 => SOAP12_NS,
        }
    }

    /// The envelope prefix used in answers (deliberately different per version, so clients
    /// that match prefixes instead of namespaces fail against the simulator).
    fn prefix(self) -> &'static str {
        match self {
            SoapVersion::V11 => "SOAP-ENV",
            SoapVersion::V12 => "env",
        }
    }

    fn media_type(self) -> &'static str {
        match self {
            SoapVersion::V11 => "text/xml",
            SoapVersion::V12 => "application/soap+xml",
        }
    }

    fn name(self) -> &'static str {
        match self {
            SoapVersion::V11 => "SOAP 1.1",
            SoapVersion::V12 => "SOAP 1.2",
        }
    }
}

/// The four fault classes of SOAP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FaultCode {
    /// SOAP 1.1 `Client`, SOAP 1.2 `Sender`.
    Client,
    /// SOAP 1.1 `Server`, SOAP 1.2 `Receiver`.
    Server,
    VersionMismatch,
    MustUnderstand,
}

/// A qualified fault subcode: namespace, prefix used in answers, local name.
type Subcode = (&'static str, &'static str, &'static str);

const INVALID_PERSONAL_CODE: Subcode = (PAYLOAD_NS, "pr", "InvalidPersonalCode");
const PERSON_NOT_FOUND: Subcode = (PAYLOAD_NS, "pr", "PersonNotFound");
const REGISTER_UNAVAILABLE: Subcode = (PAYLOAD_NS, "pr", "RegisterUnavailable");
const WSA_ACTION_NOT_SUPPORTED: Subcode = (WSA_NS, "wsa", "ActionNotSupported");
const WSA_ACTION_MISMATCH: Subcode = (WSA_NS, "wsa", "ActionMismatch");
const WSA_HEADER_REQUIRED: Subcode = (WSA_NS, "wsa", "MessageAddressingHeaderRequired");
const WSA_INVALID_HEADER: Subcode = (WSA_NS, "wsa", "InvalidAddressingHeader");
const WSSE_INVALID_SECURITY: Subcode = (WSSE_NS, "wsse", "InvalidSecurity");
const WSSE_MESSAGE_EXPIRED: Subcode = (WSSE_NS, "wsse", "MessageExpired");

/// A SOAP fault to answer, in whatever SOAP version the request used.
#[derive(Debug)]
struct Fault {
    code: FaultCode,
    subcode: Option<Subcode>,
    /// Human-readable reason; never contains a personal code.
    reason: String,
    status: StatusCode,
}

impl Fault {
    fn client(reason: impl Into<String>) -> Fault {
        Fault {
            code: FaultCode::Client,
            subcode: None,
            reason: reason.into(),
            status: StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn client_sub(subcode: Subcode, reason: impl Into<String>) -> Fault {
        Fault {
            subcode: Some(subcode),
            ..Fault::client(reason)
        }
    }

    fn with_code(code: FaultCode, reason: impl Into<String>) -> Fault {
        Fault {
            code,
            ..Fault::client(reason)
        }
    }

    /// The `Fault` element.
    fn xml(&self, version: SoapVersion) -> String {
        let env = version.prefix();
        let reason = escape(self.reason.as_str());
        match version {
            SoapVersion::V11 => {
                let code = match self.code {
                    FaultCode::Client => "Client",
                    FaultCode::Server => "Server",
                    FaultCode::VersionMismatch => "VersionMismatch",
                    FaultCode::MustUnderstand => "MustUnderstand",
                };
                let sub = self
                    .subcode
                    .map(|(_, _, local)| format!(".{local}"))
                    .unwrap_or_default();
                format!(
                    "<{env}:Fault><faultcode>{env}:{code}{sub}</faultcode>\
                     <faultstring xml:lang=\"en\">{reason}</faultstring></{env}:Fault>"
                )
            }
            SoapVersion::V12 => {
                let code = match self.code {
                    FaultCode::Client => "Sender",
                    FaultCode::Server => "Receiver",
                    FaultCode::VersionMismatch => "VersionMismatch",
                    FaultCode::MustUnderstand => "MustUnderstand",
                };
                let sub = self
                    .subcode
                    .map(|(ns, prefix, local)| {
                        format!(
                            "<{env}:Subcode><{env}:Value xmlns:{prefix}=\"{ns}\">{prefix}:{local}\
                             </{env}:Value></{env}:Subcode>"
                        )
                    })
                    .unwrap_or_default();
                format!(
                    "<{env}:Fault><{env}:Code><{env}:Value>{env}:{code}</{env}:Value>{sub}\
                     </{env}:Code><{env}:Reason><{env}:Text xml:lang=\"en\">{reason}</{env}:Text>\
                     </{env}:Reason></{env}:Fault>"
                )
            }
        }
    }

    fn response(&self, version: SoapVersion, header: &str, action: Option<&str>) -> Response {
        soap_response(
            version,
            self.status,
            envelope_xml(version, header, &self.xml(version)),
            action,
        )
    }
}

fn envelope_xml(version: SoapVersion, header: &str, body: &str) -> String {
    let env = version.prefix();
    let ns = version.ns();
    let header = if header.is_empty() {
        String::new()
    } else {
        format!("<{env}:Header>{header}</{env}:Header>")
    };
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><{env}:Envelope xmlns:{env}=\"{ns}\">{header}\
         <{env}:Body>{body}</{env}:Body></{env}:Envelope>"
    )
}

fn soap_response(
    version: SoapVersion,
    status: StatusCode,
    xml: String,
    action: Option<&str>,
) -> Response {
    let content_type = match action {
        Some(action) if version == SoapVersion::V12 => format!(
            "{}; charset=utf-8; action=\"{action}\"",
            version.media_type()
        ),
        _ => format!("{}; charset=utf-8", version.media_type()),
    };
    let mut response = (status, xml).into_response();
    let value = HeaderValue::from_str(&content_type)
        .unwrap_or_else(|_| HeaderValue::from_static("application/soap+xml; charset=utf-8"));
    response.headers_mut().insert(header::CONTENT_TYPE, value);
    response
}

/// The media type of the request (lower case) and its parameters (names lower case, values
/// unquoted).
fn content_type(headers: &HeaderMap) -> Option<(String, Vec<(String, String)>)> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let mut parts = value.split(';');
    let media = parts.next()?.trim().to_ascii_lowercase();
    let params = parts
        .filter_map(|p| {
            let (name, value) = p.split_once('=')?;
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            Some((name.trim().to_ascii_lowercase(), value.to_owned()))
        })
        .collect();
    Some((media, params))
}

/// The SOAP version a request's Content-Type suggests, for faults about unreadable envelopes.
fn version_hint(headers: &HeaderMap) -> SoapVersion {
    match content_type(headers) {
        Some((media, _)) if media == SoapVersion::V12.media_type() => SoapVersion::V12,
        _ => SoapVersion::V11,
    }
}

/// A parsed envelope: its version, header blocks (if any) and Body.
struct Envelope<'a> {
    version: SoapVersion,
    header: Option<&'a Element>,
    body: &'a Element,
}

/// Checks the envelope structure and its agreement with the Content-Type. `allowed` lists the
/// versions the endpoint serves. On error: the fault and the version to answer it in.
fn read_envelope<'a>(
    root: &'a Element,
    headers: &HeaderMap,
    allowed: &[SoapVersion],
) -> Result<Envelope<'a>, (Fault, SoapVersion)> {
    let hint = version_hint(headers);
    let version = match root.ns.as_str() {
        SOAP11_NS if root.local == "Envelope" => SoapVersion::V11,
        SOAP12_NS if root.local == "Envelope" => SoapVersion::V12,
        _ if root.local == "Envelope" => {
            return Err((
                Fault::with_code(
                    FaultCode::VersionMismatch,
                    "The Envelope is in neither the SOAP 1.1 nor the SOAP 1.2 namespace.",
                ),
                hint,
            ));
        }
        _ => {
            return Err((
                Fault::client("The root element must be a SOAP Envelope."),
                hint,
            ));
        }
    };
    if !allowed.contains(&version) {
        let answer_in = allowed.first().copied().unwrap_or(version);
        return Err((
            Fault::with_code(
                FaultCode::VersionMismatch,
                format!(
                    "This endpoint speaks {} only; the request is a {} envelope.",
                    answer_in.name(),
                    version.name()
                ),
            ),
            answer_in,
        ));
    }
    let mismatch = |detail: String| {
        Err((
            Fault::with_code(FaultCode::VersionMismatch, detail),
            version,
        ))
    };
    match content_type(headers) {
        None => {
            return mismatch(format!(
                "The Content-Type header is missing; a {} envelope needs {}.",
                version.name(),
                version.media_type()
            ));
        }
        Some((media, params)) => {
            if media != version.media_type() {
                return mismatch(format!(
                    "The Content-Type does not match the envelope: a {} envelope needs {}.",
                    version.name(),
                    version.media_type()
                ));
            }
            if let Some((_, charset)) = params.iter().find(|(n, _)| n == "charset")
                && !charset.eq_ignore_ascii_case("utf-8")
            {
                return Err((
                    Fault::client("The Content-Type charset must be utf-8."),
                    version,
                ));
            }
        }
    }
    if version == SoapVersion::V11 && !headers.contains_key("soapaction") {
        return Err((
            Fault::client(
                "The SOAPAction HTTP header is missing; SOAP 1.1 requires it (any value, e.g. \"\").",
            ),
            version,
        ));
    }
    let fail = |reason: &str| Err((Fault::client(reason), version));
    if root.has_text() {
        return fail("The Envelope must hold only a Header and a Body, no text.");
    }
    let mut header = None;
    let mut body = None;
    for child in &root.children {
        match (child.ns == version.ns(), child.local.as_str()) {
            (true, "Header") if header.is_none() && body.is_none() => header = Some(child),
            (true, "Header") => return fail("The Envelope has a misplaced or second Header."),
            (true, "Body") if body.is_none() => body = Some(child),
            (true, "Body") => return fail("The Envelope has more than one Body."),
            _ => {
                return fail(
                    "The Envelope may hold only an optional Header followed by the Body \
                     (in the envelope's namespace).",
                );
            }
        }
    }
    let Some(body) = body else {
        return fail("The Envelope has no Body.");
    };
    if header.is_some_and(Element::has_text) || body.has_text() {
        return fail("The Header and the Body must hold elements, not text.");
    }
    Ok(Envelope {
        version,
        header,
        body,
    })
}

/// A `MustUnderstand` fault for the first header block flagged `mustUnderstand` whose
/// namespace is not in `understood`.
fn check_must_understand(envelope: &Envelope<'_>, understood: &[&str]) -> Result<(), Fault> {
    let Some(header) = envelope.header else {
        return Ok(());
    };
    for block in &header.children {
        let flagged = matches!(
            block.attr(envelope.version.ns(), "mustUnderstand"),
            Some("1" | "true")
        );
        if flagged && !understood.contains(&block.ns.as_str()) {
            return Err(Fault::with_code(
                FaultCode::MustUnderstand,
                format!(
                    "The header block {} is marked mustUnderstand but this service does not \
                     understand it.",
                    block.local
                ),
            ));
        }
    }
    Ok(())
}

/// The single element child of the Body.
fn body_child<'a>(envelope: &Envelope<'a>, expected: &str) -> Result<&'a Element, Fault> {
    match envelope.body.children.as_slice() {
        [only] => Ok(only),
        [] => Err(Fault::client(format!(
            "The Body is empty; it must hold one {expected} element."
        ))),
        _ => Err(Fault::client(format!(
            "The Body must hold exactly one element, {expected}."
        ))),
    }
}

// ---------------------------------------------------------------------------------------------
// The payload

/// Reads `GetPerson` and looks the person up, applying the fault fixtures.
async fn get_person(element: &Element) -> Result<&'static Person, Fault> {
    if !element.is(PAYLOAD_NS, "GetPerson") {
        return Err(Fault::client(format!(
            "Expected a GetPerson element in namespace {PAYLOAD_NS}."
        )));
    }
    let code = match element.children.as_slice() {
        [only] if only.is(PAYLOAD_NS, "PersonalCode") && only.children.is_empty() => {
            only.text.as_str()
        }
        _ => {
            return Err(Fault::client(format!(
                "GetPerson must hold exactly one PersonalCode element (namespace {PAYLOAD_NS}) \
                 with text only."
            )));
        }
    };
    if element.has_text() {
        return Err(Fault::client(
            "GetPerson must not hold text outside PersonalCode.",
        ));
    }
    let Ok(code) = PersonalCode::parse(code) else {
        return Err(Fault::client_sub(
            INVALID_PERSONAL_CODE,
            "The personal code is not valid",
        ));
    };
    let code = code.formatted();
    if code == SERVER_FAULT || code == FAULT_HTTP_200 {
        let status = if code == FAULT_HTTP_200 {
            StatusCode::OK
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        return Err(Fault {
            code: FaultCode::Server,
            subcode: Some(REGISTER_UNAVAILABLE),
            reason: "The Population Register is temporarily unavailable; try again later".into(),
            status,
        });
    }
    if code == SLOW {
        tokio::time::sleep(SLOW_DELAY).await;
    }
    find(&code)
        .ok_or_else(|| Fault::client_sub(PERSON_NOT_FOUND, "No person with this personal code"))
}

// ---------------------------------------------------------------------------------------------
// POST /pmlp/person: plain SOAP and X-Road 4.0

async fn person_endpoint(headers: HeaderMap, body: Bytes) -> Response {
    let root = match parse_xml(&body) {
        Ok(root) => root,
        Err(reason) => {
            return Fault::client(reason).response(version_hint(&headers), "", None);
        }
    };
    let envelope = match read_envelope(&root, &headers, &[SoapVersion::V11, SoapVersion::V12]) {
        Ok(envelope) => envelope,
        Err((fault, version)) => return fault.response(version, "", None),
    };
    let version = envelope.version;
    match serve_person(&envelope, &body).await {
        Ok((header, payload)) => soap_response(
            version,
            StatusCode::OK,
            envelope_xml(version, &header, &payload),
            None,
        ),
        Err(fault) => fault.response(version, "", None),
    }
}

/// Handles a well-formed envelope; answers the header blocks and the body payload.
async fn serve_person(envelope: &Envelope<'_>, raw: &[u8]) -> Result<(String, String), Fault> {
    let xroad_blocks: Vec<&Element> = envelope
        .header
        .map(|h| h.children.iter().filter(|c| c.ns == XROAD_NS).collect())
        .unwrap_or_default();
    let header = if xroad_blocks.is_empty() {
        check_must_understand(envelope, &[])?;
        String::new()
    } else {
        if envelope.version != SoapVersion::V11 {
            return Err(Fault::client(
                "X-Road message protocol 4.0 headers need a SOAP 1.1 envelope.",
            ));
        }
        check_xroad_headers(&xroad_blocks)?;
        check_must_understand(envelope, &[XROAD_NS])?;
        let mut out = String::new();
        for block in &xroad_blocks {
            write_element(block, &mut out, &mut Vec::new());
        }
        let hash = base64::engine::general_purpose::STANDARD.encode(Sha512::digest(raw));
        out.push_str(&format!(
            "<xrd:requestHash xmlns:xrd=\"{XROAD_NS}\" algorithmId=\"{REQUEST_HASH_ALGORITHM}\">\
             {hash}</xrd:requestHash>"
        ));
        out
    };
    let request = body_child(envelope, "GetPerson")?;
    let person = get_person(request).await?;
    Ok((header, person.response_xml()))
}

/// The X-Road 4.0 header blocks in their required order, with whether each is required.
const XROAD_HEADERS: [(&str, bool); 6] = [
    ("client", true),
    ("service", true),
    ("id", true),
    ("userId", false),
    ("issue", false),
    ("protocolVersion", true),
];

/// Checks the X-Road header blocks (all elements of the header in [`XROAD_NS`], in document
/// order).
fn check_xroad_headers(blocks: &[&Element]) -> Result<(), Fault> {
    let mut last_rank: Option<usize> = None;
    let mut seen = [false; XROAD_HEADERS.len()];
    for block in blocks {
        let Some(rank) = XROAD_HEADERS.iter().position(|(n, _)| *n == block.local) else {
            return Err(Fault::client(format!(
                "Unexpected X-Road header element xrd:{}; a request carries client, service, id, \
                 userId, issue and protocolVersion.",
                block.local
            )));
        };
        if seen[rank] {
            return Err(Fault::client(format!(
                "The X-Road header xrd:{} appears more than once.",
                block.local
            )));
        }
        if last_rank.is_some_and(|last| last > rank) {
            return Err(Fault::client(format!(
                "The X-Road header xrd:{} is out of order; the order is client, service, id, \
                 userId, issue, protocolVersion.",
                block.local
            )));
        }
        seen[rank] = true;
        last_rank = Some(rank);
    }
    for (i, (name, required)) in XROAD_HEADERS.iter().enumerate() {
        if *required && !seen[i] {
            return Err(Fault::client(format!(
                "The X-Road header xrd:{name} is missing; X-Road 4.0 requires client, service, \
                 id and protocolVersion."
            )));
        }
    }
    for block in blocks {
        match block.local.as_str() {
            "client" => check_xroad_identifier(block, "client")?,
            "service" => check_xroad_identifier(block, "service")?,
            name @ ("id" | "userId" | "issue") => {
                if !block.children.is_empty() || block.text.trim().is_empty() {
                    return Err(Fault::client(format!(
                        "The X-Road header xrd:{name} must hold non-empty text."
                    )));
                }
            }
            _ => {
                // protocolVersion, the only one left.
                if !block.children.is_empty() || block.text != "4.0" {
                    return Err(Fault::client(
                        "The X-Road header xrd:protocolVersion must be 4.0.",
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Checks `xrd:client` or `xrd:service`: the `iden:objectType` and the identifier parts, in
/// order.
fn check_xroad_identifier(block: &Element, which: &str) -> Result<(), Fault> {
    let object_type = block.attr(IDEN_NS, "objectType");
    let (expected, optional): (&[&str], &[&str]) = match (which, object_type) {
        ("client", Some("SUBSYSTEM")) => (
            &[
                "xRoadInstance",
                "memberClass",
                "memberCode",
                "subsystemCode",
            ],
            &[],
        ),
        ("client", Some("MEMBER")) => (&["xRoadInstance", "memberClass", "memberCode"], &[]),
        ("service", Some("SERVICE")) => (
            &[
                "xRoadInstance",
                "memberClass",
                "memberCode",
                "subsystemCode",
                "serviceCode",
                "serviceVersion",
            ],
            &["subsystemCode", "serviceVersion"],
        ),
        ("client", _) => {
            return Err(Fault::client(
                "xrd:client needs iden:objectType SUBSYSTEM or MEMBER.",
            ));
        }
        _ => {
            return Err(Fault::client("xrd:service needs iden:objectType SERVICE."));
        }
    };
    if block.has_text() {
        return Err(Fault::client(format!(
            "xrd:{which} must hold identifier elements only, no text."
        )));
    }
    let mut parts = block.children.iter().peekable();
    for name in expected {
        match parts.peek() {
            Some(part) if part.is(IDEN_NS, name) => {
                if !part.children.is_empty() || !is_xroad_identifier(&part.text) {
                    return Err(Fault::client(format!(
                        "iden:{name} of xrd:{which} is not a well-formed X-Road identifier \
                         (non-empty, at most {MAX_IDENTIFIER_LEN} characters, no whitespace, \
                         control characters, '/', '\\', ':', ';' or '%')."
                    )));
                }
                parts.next();
            }
            _ if optional.contains(name) => {}
            _ => {
                return Err(Fault::client(format!(
                    "xrd:{which} lacks iden:{name} (or it is out of order); expected {}.",
                    expected
                        .iter()
                        .map(|n| format!("iden:{n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
    }
    if let Some(extra) = parts.next() {
        return Err(Fault::client(format!(
            "xrd:{which} has an unexpected element {} after its identifier parts.",
            extra.local
        )));
    }
    Ok(())
}

/// Whether `s` is a well-formed X-Road identifier part.
fn is_xroad_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.chars().count() <= MAX_IDENTIFIER_LEN
        && s.chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && !"/\\:;%".contains(c))
}

// ---------------------------------------------------------------------------------------------
// POST /viss/RequestService

/// The WS-Addressing headers of a VISS request.
struct Addressing {
    action: String,
    message_id: String,
}

async fn viss_endpoint(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let v = SoapVersion::V12;
    let root = match parse_xml(&body) {
        Ok(root) => root,
        Err(reason) => return viss_fault(Fault::client(reason), None),
    };
    let envelope = match read_envelope(&root, &headers, &[v]) {
        Ok(envelope) => envelope,
        Err((fault, _)) => return viss_fault(fault, None),
    };
    // The MessageID, if readable, lets even a fault answer relate to the request.
    let message_id = envelope
        .header
        .and_then(|h| single_text(h, WSA_NS, "MessageID"));
    match serve_viss(&shared, &envelope, &headers).await {
        Ok(response) => response,
        Err(fault) => viss_fault(fault, message_id),
    }
}

/// The text of the only child `{ns}local` of `parent`, when there is exactly one.
fn single_text<'a>(parent: &'a Element, ns: &str, local: &str) -> Option<&'a str> {
    let mut found = parent.children_named(ns, local);
    match (found.next(), found.next()) {
        (Some(only), None) => Some(only.text.as_str()),
        _ => None,
    }
}

/// A SOAP 1.2 fault answer with WS-Addressing headers.
fn viss_fault(fault: Fault, relates_to: Option<&str>) -> Response {
    let header = wsa_headers(ACTION_FAULT, relates_to);
    fault.response(SoapVersion::V12, &header, Some(ACTION_FAULT))
}

fn wsa_headers(action: &str, relates_to: Option<&str>) -> String {
    let relates = relates_to
        .map(|id| {
            format!(
                "<wsa:RelatesTo xmlns:wsa=\"{WSA_NS}\">{}</wsa:RelatesTo>",
                escape(id)
            )
        })
        .unwrap_or_default();
    format!(
        "<wsa:Action xmlns:wsa=\"{WSA_NS}\" env:mustUnderstand=\"true\">{}</wsa:Action>\
         <wsa:MessageID xmlns:wsa=\"{WSA_NS}\">urn:uuid:{}</wsa:MessageID>{relates}",
        escape(action),
        uuid::Uuid::new_v4(),
    )
}

async fn serve_viss(
    shared: &Shared,
    envelope: &Envelope<'_>,
    headers: &HeaderMap,
) -> Result<Response, Fault> {
    let empty = Element::default();
    let header = envelope.header.unwrap_or(&empty);
    let addressing = check_addressing(header, headers)?;
    check_security(header, Utc::now())?;
    check_must_understand(envelope, &[WSA_NS, WSSE_NS, VISS_NS])?;
    let request = body_child(envelope, "StartTransaction or SubmitSync")?;
    let (header_xml, body_xml) = if addressing.action.ends_with("/StartTransaction") {
        (String::new(), start_transaction(shared, request)?)
    } else if addressing.action.ends_with("/SubmitSync") {
        submit_sync(shared, header, request).await?
    } else {
        return Err(Fault::client_sub(
            WSA_ACTION_NOT_SUPPORTED,
            format!(
                "The wsa:Action is not supported; this service handles {ACTION_START_TRANSACTION} \
                 and {ACTION_SUBMIT_SYNC}."
            ),
        ));
    };
    let action = format!("{}Response", addressing.action);
    let header_xml = format!(
        "{}{header_xml}",
        wsa_headers(&action, Some(&addressing.message_id))
    );
    Ok(soap_response(
        SoapVersion::V12,
        StatusCode::OK,
        envelope_xml(SoapVersion::V12, &header_xml, &body_xml),
        Some(&action),
    ))
}

/// Checks `wsa:Action`, `wsa:MessageID` and `wsa:To` (and the Content-Type `action`).
fn check_addressing(header: &Element, headers: &HeaderMap) -> Result<Addressing, Fault> {
    let one = |local: &str| one_wsa_header(header, local);
    let action = one("Action")?.text.trim();
    if !is_absolute_uri(action) {
        return Err(Fault::client_sub(
            WSA_INVALID_HEADER,
            "wsa:Action must be an absolute URI.",
        ));
    }
    let message_id = one("MessageID")?.text.trim();
    if !is_absolute_uri(message_id) {
        return Err(Fault::client_sub(
            WSA_INVALID_HEADER,
            "wsa:MessageID must be an absolute URI, e.g. urn:uuid:….",
        ));
    }
    let to = one("To")?.text.trim();
    if !(to.starts_with("http://") || to.starts_with("https://")) || !to.ends_with(VISS_PATH) {
        return Err(Fault::client_sub(
            WSA_INVALID_HEADER,
            format!(
                "wsa:To must be the absolute http(s) address of this service, ending in {VISS_PATH}."
            ),
        ));
    }
    if header.children_named(WSA_NS, "ReplyTo").count() > 1 {
        return Err(Fault::client_sub(
            WSA_INVALID_HEADER,
            "The WS-Addressing header wsa:ReplyTo appears more than once.",
        ));
    }
    if let Some((_, params)) = content_type(headers)
        && let Some((_, ct_action)) = params.iter().find(|(n, _)| n == "action")
        && ct_action != action
    {
        return Err(Fault::client_sub(
            WSA_ACTION_MISMATCH,
            "The action parameter of the Content-Type differs from wsa:Action.",
        ));
    }
    Ok(Addressing {
        action: action.to_owned(),
        message_id: message_id.to_owned(),
    })
}

/// The only `wsa:{local}` header block; a fault when it is missing or repeated.
fn one_wsa_header<'a>(header: &'a Element, local: &str) -> Result<&'a Element, Fault> {
    let mut found = header.children_named(WSA_NS, local);
    match (found.next(), found.next()) {
        (Some(only), None) => Ok(only),
        (None, _) => Err(Fault::client_sub(
            WSA_HEADER_REQUIRED,
            format!("The WS-Addressing header wsa:{local} is required."),
        )),
        (Some(_), Some(_)) => Err(Fault::client_sub(
            WSA_INVALID_HEADER,
            format!("The WS-Addressing header wsa:{local} appears more than once."),
        )),
    }
}

/// `scheme:rest` with an RFC 3986 scheme.
fn is_absolute_uri(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once(':') else {
        return false;
    };
    !rest.is_empty()
        && !s.chars().any(char::is_whitespace)
        && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
}

/// Checks `wsse:Security/wsu:Timestamp` against `now`.
fn check_security(header: &Element, now: DateTime<Utc>) -> Result<(), Fault> {
    let invalid = |reason: &str| Err(Fault::client_sub(WSSE_INVALID_SECURITY, reason));
    let mut security = header.children_named(WSSE_NS, "Security");
    let security = match (security.next(), security.next()) {
        (Some(only), None) => only,
        (None, _) => return invalid("The wsse:Security header is required."),
        _ => return invalid("The wsse:Security header appears more than once."),
    };
    let Some(timestamp) = single_child(security, WSU_NS, "Timestamp") else {
        return invalid("wsse:Security must hold exactly one wsu:Timestamp.");
    };
    let time = |local: &str| -> Result<DateTime<Utc>, Fault> {
        let Some(text) = single_child(timestamp, WSU_NS, local).map(|e| e.text.trim()) else {
            return Err(Fault::client_sub(
                WSSE_INVALID_SECURITY,
                format!("wsu:Timestamp must hold exactly one wsu:{local}."),
            ));
        };
        DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| {
                Fault::client_sub(
                    WSSE_INVALID_SECURITY,
                    format!("wsu:{local} is not an xsd:dateTime with a time zone, e.g. 2026-11-28T06:00:00Z."),
                )
            })
    };
    let created = time("Created")?;
    let expires = time("Expires")?;
    if expires < created {
        return invalid("wsu:Expires is before wsu:Created.");
    }
    let skew = chrono::TimeDelta::from_std(CLOCK_SKEW).unwrap_or(chrono::TimeDelta::zero());
    if created > now + skew {
        return invalid(
            "wsu:Created is in the future (beyond the allowed clock skew of 5 minutes).",
        );
    }
    if expires < now - skew {
        return Err(Fault::client_sub(
            WSSE_MESSAGE_EXPIRED,
            "The message has expired: wsu:Expires is past (beyond the allowed clock skew of 5 minutes).",
        ));
    }
    Ok(())
}

/// The only child `{ns}local` of `parent`, when there is exactly one.
fn single_child<'a>(parent: &'a Element, ns: &str, local: &str) -> Option<&'a Element> {
    let mut found = parent.children.iter().filter(|c| c.is(ns, local));
    match (found.next(), found.next()) {
        (Some(only), None) => Some(only),
        _ => None,
    }
}

/// StartTransaction: answers the `StartTransactionResponse` body.
fn start_transaction(shared: &Shared, request: &Element) -> Result<String, Fault> {
    if !request.is(VISS_NS, "StartTransaction") {
        return Err(Fault::client(format!(
            "wsa:Action is StartTransaction but the Body does not hold StartTransaction in \
             namespace {VISS_NS}."
        )));
    }
    let service = match request.children.as_slice() {
        [only] if only.is(VISS_NS, "eServiceID") && only.children.is_empty() => only.text.trim(),
        _ => {
            return Err(Fault::client(format!(
                "StartTransaction must hold exactly one eServiceID element (namespace {VISS_NS})."
            )));
        }
    };
    if service != E_SERVICE_ID {
        return Err(Fault::client(format!(
            "Unknown eServiceID; this service offers {E_SERVICE_ID}."
        )));
    }
    let id = shared.start_transaction();
    Ok(format!(
        "<StartTransactionResponse xmlns=\"{VISS_NS}\"><StartTransactionResult>{}\
         </StartTransactionResult></StartTransactionResponse>",
        escape(id.as_str())
    ))
}

/// The `IVISRequest` header elements in their required order, with whether each is required.
const IVIS_REQUEST_FIELDS: [(&str, bool); 9] = [
    ("MessageID", true),
    ("MessageType", true),
    ("TransactionID", true),
    ("CorrelationID", true),
    ("Sender", true),
    ("Destination", true),
    ("Test", true),
    ("MilestoneID", false),
    ("Initiator", false),
];

/// SubmitSync: answers the `IVISResponse` header block and the `SubmitSyncResponse` body.
async fn submit_sync(
    shared: &Shared,
    header: &Element,
    request: &Element,
) -> Result<(String, String), Fault> {
    let mut ivis = header.children_named(VISS_NS, "IVISRequest");
    let ivis = match (ivis.next(), ivis.next()) {
        (Some(only), None) => only,
        (None, _) => {
            return Err(Fault::client(format!(
                "The IVISRequest header (namespace {VISS_NS}) is required for SubmitSync."
            )));
        }
        _ => {
            return Err(Fault::client(
                "The IVISRequest header appears more than once.",
            ));
        }
    };
    let fields = read_ivis_request(ivis)?;
    let field = |name: &str| {
        fields
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .unwrap_or_default()
    };
    if field("MessageType") != MESSAGE_TYPE {
        return Err(Fault::client(format!(
            "IVISRequest/MessageType must be {MESSAGE_TYPE} for this service."
        )));
    }
    if field("Destination") != DESTINATION {
        return Err(Fault::client(format!(
            "IVISRequest/Destination must be {DESTINATION} for this service."
        )));
    }
    if !field("Sender").starts_with("URN:IVIS:") {
        return Err(Fault::client(
            "IVISRequest/Sender must be a URN:IVIS: system URN.",
        ));
    }
    if !matches!(field("Test"), "true" | "false" | "1" | "0") {
        return Err(Fault::client(
            "IVISRequest/Test must be an xsd:boolean (true or false).",
        ));
    }
    if let Some((_, initiator)) = fields.iter().find(|(n, _)| *n == "Initiator")
        && !is_sign_in_identity(initiator)
    {
        return Err(Fault::client(
            "IVISRequest/Initiator is not a valid identity (PK:<code>, AU:<reg no>, \
             AU:<reg no>-PK:<code> or PK:<code>-UR:<reg no>).",
        ));
    }
    let transaction = field("TransactionID");
    if !shared.is_issued(transaction) {
        return Err(Fault::client(
            "IVISRequest/TransactionID is not a transaction this service started; call \
             StartTransaction first.",
        ));
    }
    if !request.is(VISS_NS, "SubmitSync") {
        return Err(Fault::client(format!(
            "wsa:Action is SubmitSync but the Body does not hold SubmitSync in namespace {VISS_NS}."
        )));
    }
    let payload = match request.children.as_slice() {
        [only] if only.is(VISS_NS, "request") && !only.has_text() => {
            match only.children.as_slice() {
                [payload] => payload,
                _ => {
                    return Err(Fault::client(
                        "SubmitSync/request must hold exactly one payload element, GetPerson.",
                    ));
                }
            }
        }
        _ => {
            return Err(Fault::client(format!(
                "SubmitSync must hold exactly one request element (namespace {VISS_NS})."
            )));
        }
    };
    let person = get_person(payload).await?;
    let response_header = format!(
        "<IVISResponse xmlns=\"{VISS_NS}\"><MessageID>urn:uuid:{}</MessageID>\
         <MessageType>{}</MessageType><TransactionID>{}</TransactionID>\
         <CorrelationID>{}</CorrelationID><TimeStamp>{}</TimeStamp><Result>OK</Result>\
         </IVISResponse>",
        uuid::Uuid::new_v4(),
        escape(field("MessageType")),
        escape(transaction),
        escape(field("CorrelationID")),
        Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
    );
    let body = format!(
        "<SubmitSyncResponse xmlns=\"{VISS_NS}\"><SubmitSyncResult>{}</SubmitSyncResult>\
         </SubmitSyncResponse>",
        person.response_xml()
    );
    Ok((response_header, body))
}

/// Checks the `IVISRequest` children (order, presence, no extras, non-empty text) and returns
/// them as `(name, text)`.
fn read_ivis_request(ivis: &Element) -> Result<Vec<(&'static str, &str)>, Fault> {
    if ivis.has_text() {
        return Err(Fault::client(
            "IVISRequest must hold elements only, no text.",
        ));
    }
    let mut fields = Vec::new();
    let mut children = ivis.children.iter().peekable();
    for (name, required) in IVIS_REQUEST_FIELDS {
        match children.peek() {
            Some(child) if child.is(VISS_NS, name) => {
                let text = child.text.trim();
                if !child.children.is_empty() || text.is_empty() {
                    return Err(Fault::client(format!(
                        "IVISRequest/{name} must hold non-empty text."
                    )));
                }
                fields.push((name, text));
                children.next();
            }
            _ if !required => {}
            _ => {
                return Err(Fault::client(format!(
                    "IVISRequest/{name} is missing or out of order; the order is MessageID, \
                     MessageType, TransactionID, CorrelationID, Sender, Destination, Test, \
                     MilestoneID?, Initiator? (namespace {VISS_NS})."
                )));
            }
        }
    }
    if let Some(extra) = children.next() {
        return Err(Fault::client(format!(
            "IVISRequest has an unexpected element {} (or one out of order).",
            extra.local
        )));
    }
    Ok(fields)
}

/// Whether `s` is a state sign-in identity: `PK:<code>`, `AU:<reg no>`,
/// `AU:<reg no>-PK:<code>` or `PK:<code>-UR:<reg no>`, every part valid.
fn is_sign_in_identity(s: &str) -> bool {
    if let Some(rest) = s.strip_prefix("AU:") {
        match rest.split_once("-PK:") {
            Some((reg_no, code)) => is_valid_reg_no(reg_no) && PersonalCode::parse(code).is_ok(),
            None => is_valid_reg_no(rest),
        }
    } else if let Some(rest) = s.strip_prefix("PK:") {
        match rest.split_once("-UR:") {
            Some((code, reg_no)) => PersonalCode::parse(code).is_ok() && is_valid_reg_no(reg_no),
            None => PersonalCode::parse(rest).is_ok(),
        }
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ident::PersonalCodeForm;
    use crate::sim::SimServer;

    async fn sim() -> SimServer {
        SimServer::start(
            "population-register",
            "127.0.0.1:0".parse().unwrap(),
            router(),
        )
        .await
        .unwrap()
    }

    /// An HTTP answer: status, Content-Type and the parsed body.
    struct Answer {
        status: u16,
        content_type: String,
        text: String,
        xml: Element,
    }

    impl Answer {
        /// The element at `path` (local names; namespaces checked by the caller's `ns`).
        fn at(&self, path: &[(&str, &str)]) -> &Element {
            let mut here = &self.xml;
            assert!(
                here.is(path[0].0, path[0].1),
                "root {}:{}",
                here.ns,
                here.local
            );
            for (ns, local) in &path[1..] {
                here = here
                    .children
                    .iter()
                    .find(|c| c.is(ns, local))
                    .unwrap_or_else(|| panic!("no {local} under {}: {}", here.local, self.text));
            }
            here
        }

        fn text_at(&self, path: &[(&str, &str)]) -> &str {
            &self.at(path).text
        }
    }

    async fn post(sim: &SimServer, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
        let mut request = reqwest::Client::new()
            .post(format!("{}{path}", sim.url()))
            .body(body.to_owned());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let content_type = response.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_owned();
        let text = response.text().await.unwrap();
        let xml = parse_xml(text.as_bytes()).unwrap_or_else(|e| panic!("{e}: {text}"));
        Answer {
            status,
            content_type,
            text,
            xml,
        }
    }

    const S11: &str = SOAP11_NS;
    const S12: &str = SOAP12_NS;
    const PR: &str = PAYLOAD_NS;

    fn get_person(code: &str) -> String {
        format!(
            "<p:GetPerson xmlns:p=\"{PR}\"><p:PersonalCode>{code}</p:PersonalCode></p:GetPerson>"
        )
    }

    fn soap11(header: &str, body: &str) -> String {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<s:Envelope xmlns:s=\"{S11}\">\
             <s:Header>{header}</s:Header><s:Body>{body}</s:Body></s:Envelope>"
        )
    }

    fn soap12(header: &str, body: &str) -> String {
        format!(
            "<soap12:Envelope xmlns:soap12=\"{S12}\"><soap12:Header>{header}</soap12:Header>\
             <soap12:Body>{body}</soap12:Body></soap12:Envelope>"
        )
    }

    const TEXT_XML: (&str, &str) = ("content-type", "text/xml; charset=utf-8");
    const SOAP_XML: (&str, &str) = ("content-type", "application/soap+xml; charset=utf-8");
    const SOAP_ACTION: (&str, &str) = ("soapaction", "\"\"");

    /// Checks a person answer body element `GetPersonResponse`.
    fn assert_person(response: &Element, code: &str) {
        assert!(response.is(PR, "GetPersonResponse"));
        let person = find(code).unwrap();
        let p = &response.children[0];
        assert!(p.is(PR, "Person"));
        let field = |name: &str| {
            p.children
                .iter()
                .find(|c| c.is(PR, name))
                .unwrap_or_else(|| panic!("{name}"))
        };
        assert_eq!(field("PersonalCode").text, person.code);
        assert_eq!(field("GivenName").text, person.given_name);
        assert_eq!(field("FamilyName").text, person.family_name);
        assert_eq!(field("BirthDate").text, person.birth_date);
        assert_eq!(field("Status").text, person.status);
        let address = field("DeclaredAddress");
        assert_eq!(address.attr("", "code"), Some(person.address_code));
        assert_eq!(
            address.children[0].text,
            address_register::find(person.address_code).unwrap().text
        );
    }

    /// A fault expected: SOAP 1.1 faultcode, SOAP 1.2 code, subcode, HTTP status.
    type ExpectedFault = (&'static str, &'static str, &'static str, u16);

    /// The payload fixtures and what each answers: `None` for a person, else the fault.
    fn expectations() -> Vec<(&'static str, Option<ExpectedFault>)> {
        vec![
            (ACTIVE, None),
            (DECEASED, None),
            (NEW_FORM, None),
            (
                INVALID,
                Some(("Client", "Sender", "InvalidPersonalCode", 500)),
            ),
            (NOT_FOUND, Some(("Client", "Sender", "PersonNotFound", 500))),
            (
                SERVER_FAULT,
                Some(("Server", "Receiver", "RegisterUnavailable", 500)),
            ),
            (
                FAULT_HTTP_200,
                Some(("Server", "Receiver", "RegisterUnavailable", 200)),
            ),
        ]
    }

    /// Asserts that no personal code of the request leaks into an answer.
    fn assert_no_code(text: &str, code: &str) {
        assert!(!text.contains(&code[7..]), "code echoed: {text}");
        assert!(
            !text.contains(&code.replace('-', "")),
            "code echoed: {text}"
        );
    }

    #[test]
    fn fixtures_are_valid_and_consistent() {
        let mut seen = HashSet::new();
        for person in PEOPLE {
            assert!(seen.insert(person.code), "duplicate");
            let code = PersonalCode::parse(person.code).unwrap();
            assert_eq!(code.formatted(), person.code);
            match code.form() {
                PersonalCodeForm::Old => {
                    let (y, m, d) = code.birth_date().unwrap();
                    assert_eq!(format!("{y:04}-{m:02}-{d:02}"), person.birth_date);
                }
                PersonalCodeForm::New => assert!(person.code.starts_with("32")),
            }
            assert!(matches!(person.status, "active" | "deceased"));
            let address = address_register::find(person.address_code).unwrap();
            assert_eq!(address.type_code, 108);
            assert_eq!(person.address_code.len(), 9);
            assert_eq!(find(person.code).unwrap().code, person.code);
            assert_eq!(
                find(&person.code.replace('-', "")).unwrap().code,
                person.code
            );
        }
        assert!(PEOPLE.len() >= 8);
        assert_eq!(find(DECEASED).unwrap().status, "deceased");
        assert_eq!(find(ACTIVE).unwrap().status, "active");
        assert_eq!(
            PersonalCode::parse(NEW_FORM).unwrap().form(),
            PersonalCodeForm::New
        );
        assert!(find(SLOW).is_some());
        for absent in [NOT_FOUND, SERVER_FAULT, FAULT_HTTP_200] {
            assert!(PersonalCode::parse(absent).is_ok());
            assert!(find(absent).is_none());
        }
        assert!(PersonalCode::parse(INVALID).is_err());
        let debug = format!("{:?}", find(ACTIVE).unwrap());
        assert!(
            debug.contains("010190-*****") && !debug.contains("12349"),
            "{debug}"
        );
        assert!(!debug.contains("Bērziņš"));
    }

    #[tokio::test]
    async fn soap11_plain_every_fixture() {
        let sim = sim().await;
        for (code, expected) in expectations() {
            let body = soap11("", &get_person(code));
            let a = post(&sim, PERSON_PATH, &[TEXT_XML, SOAP_ACTION], &body).await;
            assert_eq!(a.content_type, "text/xml; charset=utf-8");
            let content = &a.at(&[(S11, "Envelope"), (S11, "Body")]).children[0];
            match expected {
                None => {
                    assert_eq!(a.status, 200, "{}", a.text);
                    assert_person(content, code);
                }
                Some((code11, _, sub, status)) => {
                    assert_eq!(a.status, status, "{}", a.text);
                    assert!(content.is(S11, "Fault"));
                    assert_eq!(
                        a.text_at(&[
                            (S11, "Envelope"),
                            (S11, "Body"),
                            (S11, "Fault"),
                            ("", "faultcode")
                        ]),
                        format!("SOAP-ENV:{code11}.{sub}")
                    );
                    assert_no_code(&a.text, code);
                }
            }
            let recorded = sim.requests().pop().unwrap();
            assert_eq!(recorded.method, "POST");
            assert_eq!(recorded.path, PERSON_PATH);
            assert_eq!(recorded.header("soapaction"), Some("\"\""));
            assert_eq!(recorded.header("content-type"), Some(TEXT_XML.1));
            assert_eq!(recorded.body, body.as_bytes());
        }
        let a = post(
            &sim,
            PERSON_PATH,
            &[TEXT_XML, SOAP_ACTION],
            &soap11("", &get_person(INVALID)),
        )
        .await;
        assert!(a.text.contains("The personal code is not valid"));
        let a = post(
            &sim,
            PERSON_PATH,
            &[TEXT_XML, SOAP_ACTION],
            &soap11("", &get_person(NOT_FOUND)),
        )
        .await;
        assert!(a.text.contains("No person with this personal code"));
    }

    #[tokio::test]
    async fn soap12_plain_every_fixture() {
        let sim = sim().await;
        for (code, expected) in expectations() {
            let body = soap12("", &get_person(code));
            let a = post(&sim, PERSON_PATH, &[SOAP_XML], &body).await;
            assert!(a.content_type.starts_with("application/soap+xml"));
            let content = &a.at(&[(S12, "Envelope"), (S12, "Body")]).children[0];
            match expected {
                None => {
                    assert_eq!(a.status, 200, "{}", a.text);
                    assert_person(content, code);
                }
                Some((_, code12, sub, status)) => {
                    assert_eq!(a.status, status, "{}", a.text);
                    let fault = [(S12, "Envelope"), (S12, "Body"), (S12, "Fault")];
                    let code_path = [fault.as_slice(), &[(S12, "Code"), (S12, "Value")]].concat();
                    assert_eq!(a.text_at(&code_path), format!("env:{code12}"));
                    let sub_path = [
                        fault.as_slice(),
                        &[(S12, "Code"), (S12, "Subcode"), (S12, "Value")],
                    ]
                    .concat();
                    assert_eq!(a.text_at(&sub_path), format!("pr:{sub}"));
                    assert!(a.text.contains(&format!("xmlns:pr=\"{PR}\"")));
                    assert_no_code(&a.text, code);
                }
            }
            let recorded = sim.requests().pop().unwrap();
            assert_eq!(recorded.header("soapaction"), None);
            assert_eq!(recorded.body, body.as_bytes());
        }
    }

    #[tokio::test]
    async fn prefixes_and_default_namespaces_do_not_matter() {
        let sim = sim().await;
        // Default namespaces everywhere, a code without hyphen, entities and a comment.
        let body = format!(
            "<Envelope xmlns=\"{S12}\"><!-- c --><Body><GetPerson xmlns=\"{PR}\">\
             <PersonalCode>&#48;1019012349</PersonalCode></GetPerson></Body></Envelope>"
        );
        let a = post(&sim, PERSON_PATH, &[SOAP_XML], &body).await;
        assert_eq!(a.status, 200, "{}", a.text);
        assert_person(
            &a.at(&[(S12, "Envelope"), (S12, "Body")]).children[0],
            ACTIVE,
        );

        // The right local names in the wrong namespace are refused.
        let body = soap12(
            "",
            &format!(
                "<GetPerson xmlns=\"urn:other\"><PersonalCode>{ACTIVE}</PersonalCode></GetPerson>"
            ),
        );
        let a = post(&sim, PERSON_PATH, &[SOAP_XML], &body).await;
        assert_eq!(a.status, 500);
        assert!(
            a.text.contains("Expected a GetPerson element"),
            "{}",
            a.text
        );
    }

    #[tokio::test]
    async fn slow_fixture_answers_after_the_delay() {
        let sim = sim().await;
        let started = std::time::Instant::now();
        let a = post(
            &sim,
            PERSON_PATH,
            &[SOAP_XML],
            &soap12("", &get_person(SLOW)),
        )
        .await;
        assert!(started.elapsed() >= SLOW_DELAY);
        assert_eq!(a.status, 200);
        assert_person(&a.at(&[(S12, "Envelope"), (S12, "Body")]).children[0], SLOW);
    }

    #[tokio::test]
    async fn envelope_and_http_errors() {
        let sim = sim().await;
        let fault11 = |a: &Answer| {
            a.text_at(&[
                (S11, "Envelope"),
                (S11, "Body"),
                (S11, "Fault"),
                ("", "faultcode"),
            ])
            .to_owned()
        };
        let body11 = soap11("", &get_person(ACTIVE));
        // SOAP 1.1 without SOAPAction.
        let a = post(&sim, PERSON_PATH, &[TEXT_XML], &body11).await;
        assert_eq!((a.status, fault11(&a).as_str()), (500, "SOAP-ENV:Client"));
        assert!(a.text.contains("SOAPAction"));
        // A SOAP 1.1 envelope sent as SOAP 1.2 and the reverse.
        let a = post(&sim, PERSON_PATH, &[SOAP_XML, SOAP_ACTION], &body11).await;
        assert_eq!(fault11(&a), "SOAP-ENV:VersionMismatch");
        assert_eq!(a.content_type, "text/xml; charset=utf-8");
        let a = post(
            &sim,
            PERSON_PATH,
            &[TEXT_XML],
            &soap12("", &get_person(ACTIVE)),
        )
        .await;
        let code = a.text_at(&[
            (S12, "Envelope"),
            (S12, "Body"),
            (S12, "Fault"),
            (S12, "Code"),
            (S12, "Value"),
        ]);
        assert_eq!(code, "env:VersionMismatch");
        let a = post(&sim, PERSON_PATH, &[SOAP_ACTION], &body11).await;
        assert_eq!(fault11(&a), "SOAP-ENV:VersionMismatch");
        // An envelope of an unknown namespace.
        let a = post(
            &sim,
            PERSON_PATH,
            &[TEXT_XML, SOAP_ACTION],
            "<e:Envelope xmlns:e=\"urn:soap-3\"><e:Body/></e:Envelope>",
        )
        .await;
        assert_eq!(fault11(&a), "SOAP-ENV:VersionMismatch");
        // Hostile or broken XML.
        for (xml, says) in [
            (
                format!("<!DOCTYPE x [<!ENTITY e \"x\">]>{body11}"),
                "DOCTYPE",
            ),
            (body11.replace("</s:Body>", ""), "not well-formed"),
            (body11.replace("<s:Body>", "<s:Body><?pi x?>"), "processing"),
            (body11.replace("010190-12349", "&e;"), "entity"),
            (soap11("", "x"), "not text"),
            (
                format!("<s:Envelope xmlns:s=\"{S11}\"><s:Header/></s:Envelope>"),
                "no Body",
            ),
            (
                format!("<s:Envelope xmlns:s=\"{S11}\"><s:Body/><s:Body/></s:Envelope>"),
                "more than one Body",
            ),
            (soap11("", ""), "Body is empty"),
            (
                soap11("", &format!("{}{}", get_person(ACTIVE), get_person(ACTIVE))),
                "exactly one element",
            ),
            (
                soap11(
                    "",
                    &format!(
                        "<p:GetPerson xmlns:p=\"{PR}\"><p:PersonalCode> {ACTIVE} </p:PersonalCode></p:GetPerson>"
                    ),
                ),
                "The personal code is not valid",
            ),
            (
                soap11(
                    "<h:Ticket xmlns:h=\"urn:t\" s:mustUnderstand=\"1\">t</h:Ticket>",
                    &get_person(ACTIVE),
                ),
                "mustUnderstand",
            ),
        ] {
            let a = post(&sim, PERSON_PATH, &[TEXT_XML, SOAP_ACTION], &xml).await;
            assert_eq!(a.status, 500, "{says}");
            assert!(a.text.contains(says), "{says}: {}", a.text);
            assert!(fault11(&a).starts_with("SOAP-ENV:"), "{says}");
            assert!(!a.text.contains("12349"), "{says}: {}", a.text);
        }
        let deep = format!("{}{}", "<a>".repeat(40), "</a>".repeat(40));
        let a = post(&sim, PERSON_PATH, &[TEXT_XML, SOAP_ACTION], &deep).await;
        assert!(a.text.contains("deeper than"), "{}", a.text);
        // A header block without mustUnderstand is ignored in plain mode.
        let a = post(
            &sim,
            PERSON_PATH,
            &[TEXT_XML, SOAP_ACTION],
            &soap11(
                "<h:Ticket xmlns:h=\"urn:t\">t</h:Ticket>",
                &get_person(ACTIVE),
            ),
        )
        .await;
        assert_eq!(a.status, 200);
    }

    // --- X-Road 4.0 ---

    fn xroad_client() -> String {
        "<xrd:client iden:objectType=\"SUBSYSTEM\"><iden:xRoadInstance>LV</iden:xRoadInstance>\
         <iden:memberClass>GOV</iden:memberClass><iden:memberCode>90000038741</iden:memberCode>\
         <iden:subsystemCode>TILTS</iden:subsystemCode></xrd:client>"
            .to_owned()
    }

    fn xroad_service() -> String {
        "<xrd:service iden:objectType=\"SERVICE\"><iden:xRoadInstance>LV</iden:xRoadInstance>\
         <iden:memberClass>GOV</iden:memberClass><iden:memberCode>90000013606</iden:memberCode>\
         <iden:subsystemCode>PMLP</iden:subsystemCode><iden:serviceCode>GetPerson</iden:serviceCode>\
         <iden:serviceVersion>v1</iden:serviceVersion></xrd:service>"
            .to_owned()
    }

    fn xroad_envelope(blocks: &[String], code: &str) -> String {
        format!(
            "<SOAP-ENV:Envelope xmlns:SOAP-ENV=\"{S11}\" xmlns:xrd=\"{XROAD_NS}\" \
             xmlns:iden=\"{IDEN_NS}\"><SOAP-ENV:Header>{}</SOAP-ENV:Header><SOAP-ENV:Body>{}\
             </SOAP-ENV:Body></SOAP-ENV:Envelope>",
            blocks.concat(),
            get_person(code)
        )
    }

    fn xroad_blocks() -> Vec<String> {
        vec![
            xroad_client(),
            xroad_service(),
            "<xrd:id>4894e35d-bf0f-44a6-867a-8e51f1daa7e0</xrd:id>".into(),
            "<xrd:userId>LV010190-12349</xrd:userId>".into(),
            "<xrd:issue>CASE-7</xrd:issue>".into(),
            "<xrd:protocolVersion>4.0</xrd:protocolVersion>".into(),
        ]
    }

    #[tokio::test]
    async fn xroad_answer_echoes_headers_and_hashes_the_request() {
        let sim = sim().await;
        let body = xroad_envelope(&xroad_blocks(), ACTIVE);
        let a = post(&sim, PERSON_PATH, &[TEXT_XML, SOAP_ACTION], &body).await;
        assert_eq!(a.status, 200, "{}", a.text);
        let header = a.at(&[(S11, "Envelope"), (S11, "Header")]);
        let names: Vec<&str> = header.children.iter().map(|c| c.local.as_str()).collect();
        assert_eq!(
            names,
            [
                "client",
                "service",
                "id",
                "userId",
                "issue",
                "protocolVersion",
                "requestHash"
            ]
        );
        assert!(header.children.iter().all(|c| c.ns == XROAD_NS));
        // The echo is the request's blocks, element for element.
        let request = parse_xml(body.as_bytes()).unwrap();
        let sent = &request.children[0].children;
        for (echo, sent) in header.children.iter().zip(sent) {
            let (mut e, mut s) = (String::new(), String::new());
            write_element(echo, &mut e, &mut Vec::new());
            write_element(sent, &mut s, &mut Vec::new());
            assert_eq!(e, s);
        }
        let client = &header.children[0];
        assert_eq!(client.attr(IDEN_NS, "objectType"), Some("SUBSYSTEM"));
        assert_eq!(client.children[3].text, "TILTS");
        assert!(client.children[3].is(IDEN_NS, "subsystemCode"));
        let hash = &header.children[6];
        assert_eq!(hash.attr("", "algorithmId"), Some(REQUEST_HASH_ALGORITHM));
        let expected =
            base64::engine::general_purpose::STANDARD.encode(Sha512::digest(body.as_bytes()));
        assert_eq!(hash.text, expected);
        assert_person(
            &a.at(&[(S11, "Envelope"), (S11, "Body")]).children[0],
            ACTIVE,
        );
        assert_eq!(sim.requests()[0].body, body.as_bytes());

        // Payload faults in X-Road mode, and without the optional blocks.
        let mut minimal = xroad_blocks();
        minimal.remove(4);
        minimal.remove(3);
        let a = post(
            &sim,
            PERSON_PATH,
            &[TEXT_XML, SOAP_ACTION],
            &xroad_envelope(&minimal, NOT_FOUND),
        )
        .await;
        assert_eq!(a.status, 500);
        assert!(
            a.text.contains("SOAP-ENV:Client.PersonNotFound"),
            "{}",
            a.text
        );
        let a = post(
            &sim,
            PERSON_PATH,
            &[TEXT_XML, SOAP_ACTION],
            &xroad_envelope(&minimal, DECEASED),
        )
        .await;
        assert_eq!(a.status, 200);
        assert_person(
            &a.at(&[(S11, "Envelope"), (S11, "Body")]).children[0],
            DECEASED,
        );
    }

    #[tokio::test]
    async fn xroad_header_errors_name_the_header() {
        let sim = sim().await;
        let blocks = xroad_blocks();
        let without = |i: usize| {
            let mut b = blocks.clone();
            b.remove(i);
            b
        };
        let replace = |i: usize, with: &str| {
            let mut b = blocks.clone();
            b[i] = with.to_owned();
            b
        };
        let mut swapped = blocks.clone();
        swapped.swap(0, 1);
        let cases: Vec<(Vec<String>, &str)> = vec![
            (without(0), "xrd:client is missing"),
            (without(1), "xrd:service is missing"),
            (without(2), "xrd:id is missing"),
            (without(5), "xrd:protocolVersion is missing"),
            (
                replace(5, "<xrd:protocolVersion>3.1</xrd:protocolVersion>"),
                "must be 4.0",
            ),
            (
                replace(2, "<xrd:id> </xrd:id>"),
                "xrd:id must hold non-empty text",
            ),
            (swapped, "out of order"),
            (
                replace(0, &xroad_client().replace("90000038741", "9000/0038741")),
                "iden:memberCode of xrd:client is not a well-formed",
            ),
            (
                replace(
                    0,
                    &xroad_client().replace("<iden:memberClass>GOV</iden:memberClass>", ""),
                ),
                "xrd:client lacks iden:memberClass",
            ),
            (
                replace(0, &xroad_client().replace("SUBSYSTEM", "SERVICE")),
                "xrd:client needs iden:objectType",
            ),
            (
                replace(
                    1,
                    &xroad_service().replace("<iden:serviceCode>GetPerson</iden:serviceCode>", ""),
                ),
                "xrd:service lacks iden:serviceCode",
            ),
            (
                vec![
                    blocks.concat(),
                    "<xrd:requestHash>x</xrd:requestHash>".into(),
                ],
                "Unexpected X-Road header element xrd:requestHash",
            ),
            (
                vec![blocks.concat(), "<xrd:id>2</xrd:id>".into()],
                "xrd:id appears more than once",
            ),
        ];
        for (blocks, says) in cases {
            let a = post(
                &sim,
                PERSON_PATH,
                &[TEXT_XML, SOAP_ACTION],
                &xroad_envelope(&blocks, ACTIVE),
            )
            .await;
            assert_eq!(a.status, 500, "{says}");
            assert!(
                a.text.contains("<faultcode>SOAP-ENV:Client</faultcode>"),
                "{says}: {}",
                a.text
            );
            assert!(a.text.contains(says), "{says}: {}", a.text);
            assert!(!a.text.contains("12349"), "{says}: {}", a.text);
        }
        // X-Road over SOAP 1.2 is refused.
        let body = soap12(
            &format!("<xrd:protocolVersion xmlns:xrd=\"{XROAD_NS}\">4.0</xrd:protocolVersion>"),
            &get_person(ACTIVE),
        );
        let a = post(&sim, PERSON_PATH, &[SOAP_XML], &body).await;
        assert!(a.text.contains("need a SOAP 1.1 envelope"), "{}", a.text);
    }

    // --- VISS ---

    fn wsa(action: &str, message_id: &str, to: &str) -> String {
        format!(
            "<wsa:Action>{action}</wsa:Action><wsa:MessageID>{message_id}</wsa:MessageID>\
             <wsa:ReplyTo><wsa:Address>http://www.w3.org/2005/08/addressing/anonymous</wsa:Address></wsa:ReplyTo>\
             <wsa:To>{to}</wsa:To>"
        )
    }

    fn security(created: DateTime<Utc>, expires: DateTime<Utc>) -> String {
        let t = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
        format!(
            "<wsse:Security xmlns:wsse=\"{WSSE_NS}\" xmlns:wsu=\"{WSU_NS}\"><wsu:Timestamp>\
             <wsu:Created>{}</wsu:Created><wsu:Expires>{}</wsu:Expires></wsu:Timestamp>\
             </wsse:Security>",
            t(created),
            t(expires)
        )
    }

    fn fresh_security() -> String {
        let now = Utc::now();
        security(
            now - chrono::TimeDelta::seconds(5),
            now + chrono::TimeDelta::minutes(5),
        )
    }

    fn viss_envelope(header: &str, body: &str) -> String {
        format!(
            "<env:Envelope xmlns:env=\"{S12}\" xmlns:wsa=\"{WSA_NS}\"><env:Header>{header}\
             </env:Header><env:Body>{body}</env:Body></env:Envelope>"
        )
    }

    fn start_body(service: &str) -> String {
        format!(
            "<StartTransaction xmlns=\"{VISS_NS}\"><eServiceID>{service}</eServiceID></StartTransaction>"
        )
    }

    fn ivis_request(transaction: &str) -> String {
        format!(
            "<v:IVISRequest xmlns:v=\"{VISS_NS}\"><v:MessageID>urn:uuid:m-1</v:MessageID>\
             <v:MessageType>{MESSAGE_TYPE}</v:MessageType><v:TransactionID>{transaction}</v:TransactionID>\
             <v:CorrelationID>urn:uuid:c-1</v:CorrelationID><v:Sender>URN:IVIS:100001:IS-TILTS</v:Sender>\
             <v:Destination>{DESTINATION}</v:Destination><v:Test>false</v:Test>\
             <v:MilestoneID>1</v:MilestoneID><v:Initiator>AU:90000038741-PK:010190-12349</v:Initiator>\
             </v:IVISRequest>"
        )
    }

    fn submit_body(code: &str) -> String {
        format!(
            "<SubmitSync xmlns=\"{VISS_NS}\"><request>{}</request></SubmitSync>",
            get_person(code)
        )
    }

    fn ct(action: &str) -> String {
        format!("application/soap+xml; charset=utf-8; action=\"{action}\"")
    }

    /// Posts a VISS request with the Content-Type naming `action`.
    async fn viss(sim: &SimServer, action: &str, header: &str, body: &str) -> Answer {
        let content_type = ct(action);
        post(
            sim,
            VISS_PATH,
            &[("content-type", content_type.as_str())],
            &viss_envelope(header, body),
        )
        .await
    }

    async fn start(sim: &SimServer) -> String {
        let to = format!("{}{VISS_PATH}", sim.url());
        let header = format!(
            "{}{}",
            wsa(ACTION_START_TRANSACTION, "urn:uuid:start-1", &to),
            fresh_security()
        );
        let a = viss(
            sim,
            ACTION_START_TRANSACTION,
            &header,
            &start_body(E_SERVICE_ID),
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.text);
        a.text_at(&[
            (S12, "Envelope"),
            (S12, "Body"),
            (VISS_NS, "StartTransactionResponse"),
            (VISS_NS, "StartTransactionResult"),
        ])
        .to_owned()
    }

    const H12: [(&str, &str); 2] = [(S12, "Envelope"), (S12, "Header")];

    fn fault12(a: &Answer) -> (String, String) {
        let base = [
            (S12, "Envelope"),
            (S12, "Body"),
            (S12, "Fault"),
            (S12, "Code"),
        ];
        let code = a
            .text_at(&[base.as_slice(), &[(S12, "Value")]].concat())
            .to_owned();
        let sub = a
            .at(&base)
            .children_named(S12, "Subcode")
            .next()
            .map(|s| s.children[0].text.clone())
            .unwrap_or_default();
        (code, sub)
    }

    #[tokio::test]
    async fn viss_start_transaction_then_submit_sync() {
        let sim = sim().await;
        let to = format!("{}{VISS_PATH}", sim.url());
        let header = format!(
            "{}{}",
            wsa(ACTION_START_TRANSACTION, "urn:uuid:start-1", &to),
            fresh_security()
        );
        let a = viss(
            &sim,
            ACTION_START_TRANSACTION,
            &header,
            &start_body(E_SERVICE_ID),
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.text);
        assert_eq!(
            a.content_type,
            format!(
                "application/soap+xml; charset=utf-8; action=\"{ACTION_START_TRANSACTION}Response\""
            )
        );
        let h = a.at(&H12);
        assert_eq!(
            single_text(h, WSA_NS, "Action"),
            Some(format!("{ACTION_START_TRANSACTION}Response").as_str())
        );
        assert_eq!(
            single_text(h, WSA_NS, "RelatesTo"),
            Some("urn:uuid:start-1")
        );
        assert!(
            single_text(h, WSA_NS, "MessageID")
                .unwrap()
                .starts_with("urn:uuid:")
        );
        let transaction = a.text_at(&[
            (S12, "Envelope"),
            (S12, "Body"),
            (VISS_NS, "StartTransactionResponse"),
            (VISS_NS, "StartTransactionResult"),
        ]);
        assert_eq!(
            transaction,
            format!("{TRANSACTION_PREFIX}{FIRST_TRANSACTION}")
        );
        assert_eq!(transaction, "URN:IVIS:100001:EP-PMLP-PERSON-v1-0-TR-861");
        let recorded = sim.requests().pop().unwrap();
        assert_eq!(recorded.path, VISS_PATH);
        assert_eq!(
            recorded.header("content-type"),
            Some(ct(ACTION_START_TRANSACTION).as_str())
        );
        assert_eq!(
            recorded.body,
            viss_envelope(&header, &start_body(E_SERVICE_ID)).as_bytes()
        );
        // Each StartTransaction issues a new transaction.
        assert_eq!(start(&sim).await, format!("{TRANSACTION_PREFIX}862"));

        for (code, expected) in expectations() {
            let header = format!(
                "{}{}{}",
                wsa(ACTION_SUBMIT_SYNC, "urn:uuid:submit-1", &to),
                fresh_security(),
                ivis_request(transaction)
            );
            let a = viss(&sim, ACTION_SUBMIT_SYNC, &header, &submit_body(code)).await;
            let h = a.at(&H12);
            assert_eq!(
                single_text(h, WSA_NS, "RelatesTo"),
                Some("urn:uuid:submit-1")
            );
            match expected {
                None => {
                    assert_eq!(a.status, 200, "{}", a.text);
                    assert_eq!(
                        single_text(h, WSA_NS, "Action"),
                        Some(format!("{ACTION_SUBMIT_SYNC}Response").as_str())
                    );
                    let response = single_child(h, VISS_NS, "IVISResponse").unwrap();
                    let field = |n: &str| single_text(response, VISS_NS, n).unwrap();
                    assert!(field("MessageID").starts_with("urn:uuid:"));
                    assert_eq!(field("MessageType"), MESSAGE_TYPE);
                    assert_eq!(field("TransactionID"), transaction);
                    assert_eq!(field("CorrelationID"), "urn:uuid:c-1");
                    assert_eq!(field("Result"), "OK");
                    let stamp = DateTime::parse_from_rfc3339(field("TimeStamp")).unwrap();
                    assert!((Utc::now() - stamp.with_timezone(&Utc)).num_seconds().abs() < 60);
                    let result = a.at(&[
                        (S12, "Envelope"),
                        (S12, "Body"),
                        (VISS_NS, "SubmitSyncResponse"),
                        (VISS_NS, "SubmitSyncResult"),
                    ]);
                    assert_person(&result.children[0], code);
                }
                Some((_, code12, sub, status)) => {
                    assert_eq!(a.status, status, "{}", a.text);
                    assert_eq!(single_text(h, WSA_NS, "Action"), Some(ACTION_FAULT));
                    assert_eq!(fault12(&a), (format!("env:{code12}"), format!("pr:{sub}")));
                    assert_no_code(&a.text, code);
                }
            }
        }
    }

    #[tokio::test]
    async fn viss_refuses_what_does_not_follow_the_profile() {
        let sim = sim().await;
        let transaction = start(&sim).await;
        let to = format!("{}{VISS_PATH}", sim.url());
        let now = Utc::now();
        let minutes = chrono::TimeDelta::minutes;
        let submit = |wsa_headers: String, security: String, ivis: String| {
            format!("{wsa_headers}{security}{ivis}")
        };
        let ok_wsa = wsa(ACTION_SUBMIT_SYNC, "urn:uuid:s", &to);
        let ok_ivis = ivis_request(&transaction);
        let sender = "env:Sender".to_owned();
        let cases: Vec<(String, String, &str, &str)> = vec![
            (
                submit(
                    ok_wsa.clone(),
                    fresh_security(),
                    ivis_request(&format!("{TRANSACTION_PREFIX}1")),
                ),
                submit_body(ACTIVE),
                "",
                "not a transaction this service started",
            ),
            (
                submit(ok_wsa.clone(), fresh_security(), String::new()),
                submit_body(ACTIVE),
                "",
                "IVISRequest header",
            ),
            (
                submit(
                    ok_wsa.clone(),
                    fresh_security(),
                    ok_ivis.replace("<v:CorrelationID>urn:uuid:c-1</v:CorrelationID>", ""),
                ),
                submit_body(ACTIVE),
                "",
                "IVISRequest/CorrelationID is missing",
            ),
            (
                submit(
                    ok_wsa.clone(),
                    fresh_security(),
                    ok_ivis.replace("<v:Test>false</v:Test>", "<v:Test>no</v:Test>"),
                ),
                submit_body(ACTIVE),
                "",
                "IVISRequest/Test",
            ),
            (
                submit(
                    ok_wsa.clone(),
                    fresh_security(),
                    ok_ivis.replace(
                        "AU:90000038741-PK:010190-12349",
                        "AU:90000038741-PK:010190-12340",
                    ),
                ),
                submit_body(ACTIVE),
                "",
                "IVISRequest/Initiator",
            ),
            (
                submit(
                    ok_wsa.clone(),
                    fresh_security(),
                    ok_ivis.replace(DESTINATION, "URN:IVIS:100001:IS-UR"),
                ),
                submit_body(ACTIVE),
                "",
                "IVISRequest/Destination",
            ),
            (
                submit(ok_wsa.clone(), String::new(), ok_ivis.clone()),
                submit_body(ACTIVE),
                "wsse:InvalidSecurity",
                "wsse:Security header is required",
            ),
            (
                submit(
                    ok_wsa.clone(),
                    security(now - minutes(20), now - minutes(10)),
                    ok_ivis.clone(),
                ),
                submit_body(ACTIVE),
                "wsse:MessageExpired",
                "expired",
            ),
            (
                submit(
                    ok_wsa.clone(),
                    security(now + minutes(10), now + minutes(15)),
                    ok_ivis.clone(),
                ),
                submit_body(ACTIVE),
                "wsse:InvalidSecurity",
                "in the future",
            ),
            (
                submit(
                    ok_wsa.clone(),
                    fresh_security()
                        .replace("<wsu:Expires>", "<wsu:Expired>")
                        .replace("</wsu:Expires>", "</wsu:Expired>"),
                    ok_ivis.clone(),
                ),
                submit_body(ACTIVE),
                "wsse:InvalidSecurity",
                "wsu:Expires",
            ),
            (
                submit(
                    wsa(ACTION_SUBMIT_SYNC, "urn:uuid:s", &to)
                        .replace("<wsa:Action>", "<wsa:Nope>")
                        .replace("</wsa:Action>", "</wsa:Nope>"),
                    fresh_security(),
                    ok_ivis.clone(),
                ),
                submit_body(ACTIVE),
                "wsa:MessageAddressingHeaderRequired",
                "wsa:Action is required",
            ),
            (
                submit(
                    ok_wsa.replace("<wsa:MessageID>urn:uuid:s</wsa:MessageID>", ""),
                    fresh_security(),
                    ok_ivis.clone(),
                ),
                submit_body(ACTIVE),
                "wsa:MessageAddressingHeaderRequired",
                "wsa:MessageID is required",
            ),
            (
                submit(
                    ok_wsa.replace(&format!("<wsa:To>{to}</wsa:To>"), ""),
                    fresh_security(),
                    ok_ivis.clone(),
                ),
                submit_body(ACTIVE),
                "wsa:MessageAddressingHeaderRequired",
                "wsa:To is required",
            ),
            (
                submit(
                    ok_wsa.replace(&to, "http://elsewhere/service"),
                    fresh_security(),
                    ok_ivis.clone(),
                ),
                submit_body(ACTIVE),
                "wsa:InvalidAddressingHeader",
                "wsa:To must be",
            ),
            (
                submit(ok_wsa.clone(), fresh_security(), ok_ivis.clone()),
                start_body(E_SERVICE_ID),
                "",
                "does not hold SubmitSync",
            ),
            (
                submit(ok_wsa.clone(), fresh_security(), ok_ivis.clone()),
                submit_body(INVALID),
                "pr:InvalidPersonalCode",
                "The personal code is not valid",
            ),
        ];
        for (header, body, subcode, says) in cases {
            let a = viss(&sim, ACTION_SUBMIT_SYNC, &header, &body).await;
            assert_eq!(a.status, 500, "{says}: {}", a.text);
            let (code, sub) = fault12(&a);
            assert_eq!(code, sender, "{says}");
            assert_eq!(sub, subcode, "{says}: {}", a.text);
            assert!(a.text.contains(says), "{says}: {}", a.text);
            assert!(
                !a.text.contains("12340") && !a.text.contains("12349"),
                "{says}"
            );
        }

        // Unknown eServiceID.
        let header = format!(
            "{}{}",
            wsa(ACTION_START_TRANSACTION, "urn:uuid:x", &to),
            fresh_security()
        );
        let a = viss(
            &sim,
            ACTION_START_TRANSACTION,
            &header,
            &start_body("EP-NOPE-v1-0"),
        )
        .await;
        assert_eq!(fault12(&a), (sender.clone(), String::new()));
        assert!(a.text.contains("Unknown eServiceID"));
        // An unknown action; a Content-Type action that differs from wsa:Action.
        let other = "http://ivis.eps.gov.lv/ISS/RequestServiss/v1-0/IRequestService/Submit";
        let header = format!("{}{}", wsa(other, "urn:uuid:x", &to), fresh_security());
        let a = viss(&sim, other, &header, &start_body(E_SERVICE_ID)).await;
        assert_eq!(
            fault12(&a),
            (sender.clone(), "wsa:ActionNotSupported".into())
        );
        assert_eq!(
            single_text(a.at(&H12), WSA_NS, "RelatesTo"),
            Some("urn:uuid:x")
        );
        let header = format!(
            "{}{}",
            wsa(ACTION_START_TRANSACTION, "urn:uuid:x", &to),
            fresh_security()
        );
        let a = viss(&sim, ACTION_SUBMIT_SYNC, &header, &start_body(E_SERVICE_ID)).await;
        assert_eq!(fault12(&a), (sender.clone(), "wsa:ActionMismatch".into()));
        // Any URI ending in /StartTransaction is accepted; the answer's action follows it.
        let custom = "urn:viss:IRequestService/StartTransaction";
        let header = format!("{}{}", wsa(custom, "urn:uuid:x", &to), fresh_security());
        let a = viss(&sim, custom, &header, &start_body(E_SERVICE_ID)).await;
        assert_eq!(a.status, 200, "{}", a.text);
        assert_eq!(
            single_text(a.at(&H12), WSA_NS, "Action"),
            Some("urn:viss:IRequestService/StartTransactionResponse")
        );
        // SOAP 1.1 is refused with a SOAP 1.2 VersionMismatch.
        let a = post(
            &sim,
            VISS_PATH,
            &[TEXT_XML, SOAP_ACTION],
            &soap11("", &start_body(E_SERVICE_ID)),
        )
        .await;
        assert_eq!(fault12(&a).0, "env:VersionMismatch");
    }

    #[test]
    fn timestamp_window_allows_five_minutes_of_skew() {
        let now = Utc::now();
        let m = chrono::TimeDelta::minutes;
        let check = |created, expires| {
            let xml = security(created, expires);
            let header =
                parse_xml(format!("<h xmlns:wsse=\"{WSSE_NS}\">{xml}</h>").as_bytes()).unwrap();
            check_security(&header, now).map_err(|f| f.subcode.map(|s| s.2))
        };
        assert_eq!(check(now - m(1), now + m(4)), Ok(()));
        assert_eq!(
            check(now + m(4), now + m(9)),
            Ok(()),
            "created slightly ahead"
        );
        assert_eq!(check(now - m(9), now - m(4)), Ok(()), "expired within skew");
        assert_eq!(check(now - m(12), now - m(6)), Err(Some("MessageExpired")));
        assert_eq!(check(now + m(6), now + m(11)), Err(Some("InvalidSecurity")));
        assert_eq!(check(now, now - m(1)), Err(Some("InvalidSecurity")));
    }

    #[test]
    fn sign_in_identities() {
        for ok in [
            "PK:010190-12349",
            "AU:90000038741",
            "AU:90000038741-PK:010190-12349",
            "PK:161175-19997-UR:40003521600",
            "PK:32951240217",
        ] {
            assert!(is_sign_in_identity(ok), "{ok}");
        }
        for bad in [
            "",
            "PK:010190-12340",
            "AU:90000038742",
            "AU:90000038741-PK:",
            "XX:90000038741",
            "PK:161175-19997-UR:40003123454",
        ] {
            assert!(!is_sign_in_identity(bad), "{bad}");
        }
    }
}
