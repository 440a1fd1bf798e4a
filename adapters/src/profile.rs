//! Exchange profiles: what X-Road 4.0 (SOAP and REST), the VISS request service and DAGR add on
//! top of plain SOAP/HTTP, as header blocks, bodies, paths and HTTP headers.
//!
//! Like [`crate::soap`], this module builds and parses bytes and never does HTTP. Values that go
//! into XML are escaped; values that go into HTTP headers are validated and refused with a
//! [`ProfileError`] (never a panic). Parsers go by namespace URI and local name, never by prefix.
//! No error message quotes an input value: a user id carries a personal code.
//!
//! # Sign-in identities ([`UserId`])
//!
//! `AU:<institution reg no>-PK:<personal code>` (an institution's employee), `PK:<personal code>`
//! (a citizen), `AU:<reg no>` (a system) and `PK:<personal code>-UR:<reg no>` (a company's
//! signatory), both identifiers validated with [`crate::ident`]. `Display` and `Debug` print the
//! masked form (`AU:90000038741-PK:010190-*****`); [`UserId::expose`] gives the real one for the
//! wire.
//!
//! # X-Road message protocol 4.0 (SOAP 1.1)
//!
//! [`xroad_soap_headers`] gives the header blocks in the order client, service, id, userId,
//! issue, protocolVersion, each declaring the namespaces it uses:
//!
//! ```xml
//! <soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">
//!   <soap:Header>
//!     <xrd:client xmlns:xrd="http://x-road.eu/xsd/xroad.xsd" xmlns:iden="http://x-road.eu/xsd/identifiers" iden:objectType="SUBSYSTEM">
//!       <iden:xRoadInstance>EE</iden:xRoadInstance><iden:memberClass>GOV</iden:memberClass>
//!       <iden:memberCode>90000038741</iden:memberCode><iden:subsystemCode>tilts</iden:subsystemCode>
//!     </xrd:client>
//!     <xrd:service xmlns:xrd="http://x-road.eu/xsd/xroad.xsd" xmlns:iden="http://x-road.eu/xsd/identifiers" iden:objectType="SERVICE">
//!       <iden:xRoadInstance>EE</iden:xRoadInstance><iden:memberClass>GOV</iden:memberClass>
//!       <iden:memberCode>70000310</iden:memberCode><iden:subsystemCode>pmlp</iden:subsystemCode>
//!       <iden:serviceCode>getPerson</iden:serviceCode><iden:serviceVersion>v1</iden:serviceVersion>
//!     </xrd:service>
//!     <xrd:id xmlns:xrd="http://x-road.eu/xsd/xroad.xsd">4894e35d-bf0f-44a6-867a-8e51f1daa7e0</xrd:id>
//!     <xrd:userId xmlns:xrd="http://x-road.eu/xsd/xroad.xsd">AU:90000038741-PK:010190-12349</xrd:userId>
//!     <xrd:protocolVersion xmlns:xrd="http://x-road.eu/xsd/xroad.xsd">4.0</xrd:protocolVersion>
//!   </soap:Header>
//!   <soap:Body><GetPerson xmlns="urn:x-tilts-sim:pmlp:person:v1"><PersonalCode>010190-12349</PersonalCode></GetPerson></soap:Body>
//! </soap:Envelope>
//! ```
//!
//! The client is `iden:objectType="MEMBER"` when it has no subsystem. The answer repeats those
//! blocks and adds `<xrd:requestHash algorithmId="http://www.w3.org/2001/04/xmlenc#sha512">`
//! holding [`xroad_request_hash`] of the request's bytes ([`xroad_response_request_hash`] reads
//! it back). HTTP: `Content-Type: text/xml; charset=utf-8`, `SOAPAction: ""` allowed.
//!
//! # X-Road REST
//!
//! [`xroad_rest_path`]: `/r1/{instance}/{class}/{member}/{subsystem}/{service}/{rest}`;
//! [`xroad_rest_headers`]: `X-Road-Client: INST/CLASS/MEMBER[/SUBSYS]`, `X-Road-Id`,
//! `X-Road-UserId`, `X-Road-Issue`; errors come as
//! `{"type":"Server.ServerProxy...","message":...,"detail":...}` ([`parse_xroad_rest_error`]).
//!
//! # VISS request service (SOAP 1.2 + WS-Addressing 1.0 + WS-Security timestamp)
//!
//! A call is StartTransaction, then SubmitSync with the transaction URN. The WS-Addressing
//! Action URIs ([`VISS_ACTION_START_TRANSACTION`], [`VISS_ACTION_SUBMIT_SYNC`]) follow the WCF
//! convention `<namespace>/IRequestService/<operation>`; the real ones are *unconfirmed*, so the
//! engine lets a route override them. StartTransaction (HTTP `Content-Type:
//! application/soap+xml; charset=utf-8; action="<Action>"`):
//!
//! ```xml
//! <env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope" xmlns:wsa="http://www.w3.org/2005/08/addressing">
//!   <env:Header>
//!     <wsa:Action>http://ivis.eps.gov.lv/ISS/RequestServiss/v1-0/IRequestService/StartTransaction</wsa:Action>
//!     <wsa:MessageID>urn:uuid:6b3f0c52-2f44-4c1e-9a55-0d6f4f7e8a11</wsa:MessageID>
//!     <wsa:ReplyTo><wsa:Address>http://www.w3.org/2005/08/addressing/anonymous</wsa:Address></wsa:ReplyTo>
//!     <wsa:To>http://127.0.0.1:PORT/viss/RequestService</wsa:To>
//!     <wsse:Security xmlns:wsse="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd" xmlns:wsu="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"><wsu:Timestamp><wsu:Created>2026-11-28T06:00:00Z</wsu:Created><wsu:Expires>2026-11-28T06:05:00Z</wsu:Expires></wsu:Timestamp></wsse:Security>
//!   </env:Header>
//!   <env:Body><StartTransaction xmlns="http://ivis.eps.gov.lv/ISS/RequestServiss/v1-0"><eServiceID>EP-PMLP-PERSON-v1-0</eServiceID></StartTransaction></env:Body>
//! </env:Envelope>
//! ```
//!
//! Its answer carries `wsa:Action` `.../IRequestService/StartTransactionResponse`, a new
//! `wsa:MessageID` and `wsa:RelatesTo` (the request's MessageID), and the body
//!
//! ```xml
//! <StartTransactionResponse xmlns="http://ivis.eps.gov.lv/ISS/RequestServiss/v1-0"><StartTransactionResult>URN:IVIS:100001:EP-PMLP-PERSON-v1-0-TR-861</StartTransactionResult></StartTransactionResponse>
//! ```
//!
//! SubmitSync has the same WS-Addressing headers (Action `.../IRequestService/SubmitSync`) and
//! `wsse:Security`, plus the `IVISRequest` block ([`viss_request_header`]; MilestoneID and
//! Initiator optional) and the payload wrapped by [`submit_sync_body`]:
//!
//! ```xml
//! <IVISRequest xmlns="http://ivis.eps.gov.lv/ISS/RequestServiss/v1-0">
//!   <MessageID>urn:uuid:...</MessageID><MessageType>URN:IVIS:100001:MT-PMLP-GetPerson</MessageType>
//!   <TransactionID>URN:IVIS:100001:EP-PMLP-PERSON-v1-0-TR-861</TransactionID><CorrelationID>urn:uuid:...</CorrelationID>
//!   <Sender>URN:IVIS:100001:IS-TILTS</Sender><Destination>URN:IVIS:100001:IS-PMLP</Destination>
//!   <Test>false</Test><MilestoneID>1</MilestoneID><Initiator>AU:90000038741-PK:010190-12349</Initiator>
//! </IVISRequest>
//! ...
//! <env:Body><SubmitSync xmlns="http://ivis.eps.gov.lv/ISS/RequestServiss/v1-0"><request><GetPerson xmlns="urn:x-tilts-sim:pmlp:person:v1"><PersonalCode>010190-12349</PersonalCode></GetPerson></request></SubmitSync></env:Body>
//! ```
//!
//! Its answer: WS-Addressing Action `.../IRequestService/SubmitSyncResponse` with RelatesTo, the
//! header block read by [`parse_viss_response_header`]
//!
//! ```xml
//! <IVISResponse xmlns="http://ivis.eps.gov.lv/ISS/RequestServiss/v1-0"><MessageID>urn:uuid:...</MessageID><MessageType>URN:IVIS:100001:MT-PMLP-GetPerson</MessageType><TransactionID>URN:IVIS:100001:EP-PMLP-PERSON-v1-0-TR-861</TransactionID><CorrelationID>urn:uuid:...</CorrelationID><TimeStamp>2026-11-28T06:00:01Z</TimeStamp><Result>OK</Result></IVISResponse>
//! ```
//!
//! and the body unwrapped by [`unwrap_submit_sync_response`]:
//!
//! ```xml
//! <SubmitSyncResponse xmlns="http://ivis.eps.gov.lv/ISS/RequestServiss/v1-0"><SubmitSyncResult><GetPersonResponse xmlns="urn:x-tilts-sim:pmlp:person:v1">...</GetPersonResponse></SubmitSyncResult></SubmitSyncResponse>
//! ```
//!
//! A fault anywhere is a normal SOAP 1.2 Fault in the Body (HTTP 500 unless stated).
//!
//! **WS-Security is limited to the Timestamp** ([`wsse_timestamp`]): XML signatures (and
//! encryption) are out of scope here; transport security is TLS with client certificates
//! ([`crate::tls`]).
//!
//! # DAGR
//!
//! Every data request carries `X-DAGR-Permission: <permission number>`
//! ([`dagr_permission_header`]); tokens are [`crate::token`]'s job.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use http::{HeaderName, HeaderValue};
use sha2::{Digest, Sha512};

use crate::ident::{PersonalCode, PersonalCodeError, reg_no_check_error};
use crate::soap::{self, HeaderBlock, SoapError, escape};

/// The X-Road message protocol namespace (prefix `xrd`).
pub const XROAD_NS: &str = "http://x-road.eu/xsd/xroad.xsd";
/// The X-Road identifiers namespace (prefix `iden`).
pub const XROAD_IDEN_NS: &str = "http://x-road.eu/xsd/identifiers";
/// The X-Road message protocol version tilts speaks.
pub const XROAD_PROTOCOL_VERSION: &str = "4.0";
/// The `algorithmId` of an X-Road `requestHash` (SHA-512).
pub const XROAD_HASH_ALGORITHM: &str = "http://www.w3.org/2001/04/xmlenc#sha512";

/// The VISS request service namespace (headers and bodies).
pub const VISS_NS: &str = "http://ivis.eps.gov.lv/ISS/RequestServiss/v1-0";
/// WS-Addressing Action of StartTransaction. *Unconfirmed* (WCF naming convention): routes may
/// override it.
pub const VISS_ACTION_START_TRANSACTION: &str =
    "http://ivis.eps.gov.lv/ISS/RequestServiss/v1-0/IRequestService/StartTransaction";
/// WS-Addressing Action of the StartTransaction answer. *Unconfirmed*, like the request's.
pub const VISS_ACTION_START_TRANSACTION_RESPONSE: &str =
    "http://ivis.eps.gov.lv/ISS/RequestServiss/v1-0/IRequestService/StartTransactionResponse";
/// WS-Addressing Action of SubmitSync. *Unconfirmed* (WCF naming convention): routes may
/// override it.
pub const VISS_ACTION_SUBMIT_SYNC: &str =
    "http://ivis.eps.gov.lv/ISS/RequestServiss/v1-0/IRequestService/SubmitSync";
/// WS-Addressing Action of the SubmitSync answer. *Unconfirmed*, like the request's.
pub const VISS_ACTION_SUBMIT_SYNC_RESPONSE: &str =
    "http://ivis.eps.gov.lv/ISS/RequestServiss/v1-0/IRequestService/SubmitSyncResponse";

/// The WS-Security 1.0 extension namespace (prefix `wsse`).
pub const WSSE_NS: &str =
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd";
/// The WS-Security utility namespace (prefix `wsu`).
pub const WSU_NS: &str =
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd";
/// The VISS timestamp window: a message expires 5 minutes after it was created.
pub const WSSE_DEFAULT_TTL: Duration = Duration::from_secs(5 * 60);

/// The HTTP header every DAGR data request carries.
pub const DAGR_PERMISSION_HEADER: &str = "X-DAGR-Permission";
/// Longest DAGR permission accepted, in characters.
const MAX_PERMISSION_LEN: usize = 128;

/// What went wrong building or reading a profile's parts. Messages never quote the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    /// A user id that is none of the sign-in identity forms.
    #[error(
        "a user id must be AU:<11-digit institution reg no>-PK:<personal code>, PK:<personal code>, AU:<reg no> or PK:<personal code>-UR:<reg no>"
    )]
    UserIdForm,
    /// A user id whose personal code is not valid.
    #[error("the personal code in the user id is not valid: {0}")]
    UserIdPersonalCode(PersonalCodeError),
    /// A user id whose registration number is not valid.
    #[error("the registration number in the user id is not valid: {0}")]
    UserIdRegNo(&'static str),
    /// An X-Road identifier not in its slash form.
    #[error("{0}")]
    XRoadId(&'static str),
    /// A value that cannot be put into the named HTTP header.
    #[error(
        "the value for HTTP header {0} contains characters a header cannot carry (control characters)"
    )]
    HeaderValue(&'static str),
    /// A DAGR permission that is empty, too long or not visible ASCII.
    #[error(
        "a DAGR permission must be 1 to {MAX_PERMISSION_LEN} visible ASCII characters (the permission number from /current_user_permissions)"
    )]
    Permission,
    /// An answer without an element the profile requires.
    #[error("the answer has no {0}")]
    Missing(&'static str),
    /// An answer that is not readable XML.
    #[error("the answer is not readable: {0}")]
    Xml(#[from] SoapError),
}

// ---------------------------------------------------------------------------------------------
// Sign-in identities

/// A sign-in identity (state single sign-on form), as sent in X-Road `userId`, VISS `Initiator`
/// and `X-Road-UserId`.
///
/// `Display` and `Debug` print the masked form; only [`UserId::expose`] gives the personal code.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct UserId {
    kind: UserIdKind,
    /// The institution's (`AU:`) or company's (`UR:`) registration number.
    reg_no: Option<String>,
    person: Option<PersonalCode>,
}

/// Which sign-in identity form a [`UserId`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UserIdKind {
    /// `AU:<institution reg no>-PK:<personal code>`: an institution's employee.
    Employee,
    /// `PK:<personal code>`: a citizen.
    Citizen,
    /// `AU:<reg no>`: a system acting for an institution.
    System,
    /// `PK:<personal code>-UR:<reg no>`: a company's signatory.
    Signatory,
}

impl UserId {
    /// Which form this id is.
    pub fn kind(&self) -> UserIdKind {
        self.kind
    }

    /// The institution's or company's registration number, if the id has one.
    pub fn reg_no(&self) -> Option<&str> {
        self.reg_no.as_deref()
    }

    /// The person, if the id names one.
    pub fn personal_code(&self) -> Option<&PersonalCode> {
        self.person.as_ref()
    }

    /// The id with the personal code masked, e.g. `AU:90000038741-PK:010190-*****`: safe for logs.
    pub fn masked(&self) -> String {
        self.write(|p| p.mask())
    }

    /// The real id for the wire, e.g. `AU:90000038741-PK:010190-12349` (personal codes with the
    /// hyphen). Personal data: never log it.
    pub fn expose(&self) -> String {
        self.write(|p| p.formatted())
    }

    fn write(&self, code: impl Fn(&PersonalCode) -> String) -> String {
        let reg = self.reg_no.as_deref().unwrap_or_default();
        let person = self.person.as_ref().map(code).unwrap_or_default();
        match self.kind {
            UserIdKind::Employee => format!("AU:{reg}-PK:{person}"),
            UserIdKind::Citizen => format!("PK:{person}"),
            UserIdKind::System => format!("AU:{reg}"),
            UserIdKind::Signatory => format!("PK:{person}-UR:{reg}"),
        }
    }
}

impl FromStr for UserId {
    type Err = ProfileError;

    /// Parses any of the four forms; both identifiers are validated.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let reg = |r: &str| match reg_no_check_error(r) {
            None => Ok(r.to_owned()),
            Some(why) => Err(ProfileError::UserIdRegNo(why)),
        };
        let person = |p: &str| PersonalCode::parse(p).map_err(ProfileError::UserIdPersonalCode);
        if let Some(rest) = s.strip_prefix("AU:") {
            return match rest.split_once("-PK:") {
                Some((r, p)) => Ok(UserId {
                    kind: UserIdKind::Employee,
                    reg_no: Some(reg(r)?),
                    person: Some(person(p)?),
                }),
                None if !rest.contains(':') => Ok(UserId {
                    kind: UserIdKind::System,
                    reg_no: Some(reg(rest)?),
                    person: None,
                }),
                None => Err(ProfileError::UserIdForm),
            };
        }
        if let Some(rest) = s.strip_prefix("PK:") {
            return match rest.split_once("-UR:") {
                Some((p, r)) => Ok(UserId {
                    kind: UserIdKind::Signatory,
                    reg_no: Some(reg(r)?),
                    person: Some(person(p)?),
                }),
                None if !rest.contains(':') => Ok(UserId {
                    kind: UserIdKind::Citizen,
                    reg_no: None,
                    person: Some(person(rest)?),
                }),
                None => Err(ProfileError::UserIdForm),
            };
        }
        Err(ProfileError::UserIdForm)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserId({})", self.masked())
    }
}

// ---------------------------------------------------------------------------------------------
// X-Road identifiers and SOAP headers

/// Whether `part` can be one part of an X-Road identifier: visible ASCII without the characters
/// X-Road forbids in identifiers (`:`, `;`, `%`, `/`, `\`) nor the URL delimiters `?` and `#`.
fn valid_id_part(part: &str) -> bool {
    !part.is_empty()
        && part
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b":;%/\\?#".contains(&b))
}

/// An X-Road client (a member, or one of its subsystems): `EE/GOV/70000310[/subsys]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct XRoadClient {
    /// `xRoadInstance`, e.g. `EE`.
    pub instance: String,
    /// `memberClass`, e.g. `GOV`.
    pub member_class: String,
    /// `memberCode`, e.g. `70000310`.
    pub member_code: String,
    /// `subsystemCode`; `None` when the member itself is the client.
    pub subsystem_code: Option<String>,
}

impl FromStr for XRoadClient {
    type Err = ProfileError;

    /// Parses `INSTANCE/CLASS/MEMBER` or `INSTANCE/CLASS/MEMBER/SUBSYSTEM`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const EXPECTED: &str = "an X-Road client must be written INSTANCE/CLASS/MEMBER or INSTANCE/CLASS/MEMBER/SUBSYSTEM (e.g. EE/GOV/70000310/subsys), each part visible ASCII without : ; % / \\ ? #";
        let parts: Vec<&str> = s.split('/').collect();
        if !(3..=4).contains(&parts.len()) || !parts.iter().all(|p| valid_id_part(p)) {
            return Err(ProfileError::XRoadId(EXPECTED));
        }
        Ok(XRoadClient {
            instance: parts[0].to_owned(),
            member_class: parts[1].to_owned(),
            member_code: parts[2].to_owned(),
            subsystem_code: parts.get(3).map(|p| (*p).to_owned()),
        })
    }
}

impl fmt::Display for XRoadClient {
    /// The slash form, as in `X-Road-Client`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}",
            self.instance, self.member_class, self.member_code
        )?;
        if let Some(subsystem) = &self.subsystem_code {
            write!(f, "/{subsystem}")?;
        }
        Ok(())
    }
}

/// An X-Road service: `EE/GOV/70000310/subsys/getPerson[/v1]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct XRoadService {
    /// `xRoadInstance` of the provider.
    pub instance: String,
    /// `memberClass` of the provider.
    pub member_class: String,
    /// `memberCode` of the provider.
    pub member_code: String,
    /// `subsystemCode` of the provider; `None` for a service of the member itself.
    pub subsystem_code: Option<String>,
    /// `serviceCode`, e.g. `getPerson`.
    pub service_code: String,
    /// `serviceVersion`, e.g. `v1`.
    pub service_version: Option<String>,
}

impl FromStr for XRoadService {
    type Err = ProfileError;

    /// Parses `INSTANCE/CLASS/MEMBER/SUBSYSTEM/SERVICE[/VERSION]`; a service of a member without
    /// a subsystem is written with an empty subsystem part: `EE/GOV/70000310//getPerson/v1`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const EXPECTED: &str = "an X-Road service must be written INSTANCE/CLASS/MEMBER/SUBSYSTEM/SERVICE or INSTANCE/CLASS/MEMBER/SUBSYSTEM/SERVICE/VERSION (e.g. EE/GOV/70000310/subsys/getPerson/v1; an empty SUBSYSTEM for a member's own service), each part visible ASCII without : ; % / \\ ? #";
        let parts: Vec<&str> = s.split('/').collect();
        let subsystem_ok = |p: &str| p.is_empty() || valid_id_part(p);
        let ok = (5..=6).contains(&parts.len())
            && parts.iter().enumerate().all(|(i, p)| {
                if i == 3 {
                    subsystem_ok(p)
                } else {
                    valid_id_part(p)
                }
            });
        if !ok {
            return Err(ProfileError::XRoadId(EXPECTED));
        }
        Ok(XRoadService {
            instance: parts[0].to_owned(),
            member_class: parts[1].to_owned(),
            member_code: parts[2].to_owned(),
            subsystem_code: (!parts[3].is_empty()).then(|| parts[3].to_owned()),
            service_code: parts[4].to_owned(),
            service_version: parts.get(5).map(|p| (*p).to_owned()),
        })
    }
}

impl fmt::Display for XRoadService {
    /// The slash form accepted by `FromStr`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}/{}/{}",
            self.instance,
            self.member_class,
            self.member_code,
            self.subsystem_code.as_deref().unwrap_or_default(),
            self.service_code
        )?;
        if let Some(version) = &self.service_version {
            write!(f, "/{version}")?;
        }
        Ok(())
    }
}

/// The X-Road 4.0 SOAP header of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XRoadHeader {
    /// Who calls.
    pub client: XRoadClient,
    /// Which service is called.
    pub service: XRoadService,
    /// `xrd:id`: unique per message (a UUID).
    pub id: String,
    /// `xrd:userId`: the person on whose behalf the call is made.
    pub user_id: Option<UserId>,
    /// `xrd:issue`: the case or document the call is made for.
    pub issue: Option<String>,
    /// `xrd:protocolVersion`: [`XROAD_PROTOCOL_VERSION`].
    pub protocol_version: String,
}

/// The header blocks of an X-Road 4.0 request, in the order client, service, id, userId, issue,
/// protocolVersion; each declares the namespaces it uses (see the module docs for the shape).
pub fn xroad_soap_headers(h: &XRoadHeader) -> Vec<String> {
    let decl = format!("xmlns:xrd=\"{XROAD_NS}\" xmlns:iden=\"{XROAD_IDEN_NS}\"");
    let iden = |out: &mut String, name: &str, value: &str| {
        out.push_str(&format!("<iden:{name}>{}</iden:{name}>", escape(value)));
    };
    let mut blocks = Vec::with_capacity(6);

    let c = &h.client;
    let object_type = if c.subsystem_code.is_some() {
        "SUBSYSTEM"
    } else {
        "MEMBER"
    };
    let mut client = format!("<xrd:client {decl} iden:objectType=\"{object_type}\">");
    iden(&mut client, "xRoadInstance", &c.instance);
    iden(&mut client, "memberClass", &c.member_class);
    iden(&mut client, "memberCode", &c.member_code);
    if let Some(subsystem) = &c.subsystem_code {
        iden(&mut client, "subsystemCode", subsystem);
    }
    client.push_str("</xrd:client>");
    blocks.push(client);

    let s = &h.service;
    let mut service = format!("<xrd:service {decl} iden:objectType=\"SERVICE\">");
    iden(&mut service, "xRoadInstance", &s.instance);
    iden(&mut service, "memberClass", &s.member_class);
    iden(&mut service, "memberCode", &s.member_code);
    if let Some(subsystem) = &s.subsystem_code {
        iden(&mut service, "subsystemCode", subsystem);
    }
    iden(&mut service, "serviceCode", &s.service_code);
    if let Some(version) = &s.service_version {
        iden(&mut service, "serviceVersion", version);
    }
    service.push_str("</xrd:service>");
    blocks.push(service);

    let simple = |name: &str, value: &str| {
        format!(
            "<xrd:{name} xmlns:xrd=\"{XROAD_NS}\">{}</xrd:{name}>",
            escape(value)
        )
    };
    blocks.push(simple("id", &h.id));
    if let Some(user_id) = &h.user_id {
        blocks.push(simple("userId", &user_id.expose()));
    }
    if let Some(issue) = &h.issue {
        blocks.push(simple("issue", issue));
    }
    blocks.push(simple("protocolVersion", &h.protocol_version));
    blocks
}

/// What an X-Road answer's `xrd:requestHash` carries for a request: base64 of the SHA-512 of the
/// request message's bytes.
pub fn xroad_request_hash(request: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha512::digest(request))
}

/// The `xrd:requestHash` block of an answer: base64 of the SHA-512 of the request bytes, written
/// as a service (or simulator) answers.
pub fn xroad_request_hash_header(request: &[u8]) -> String {
    format!(
        "<xrd:requestHash xmlns:xrd=\"{XROAD_NS}\" algorithmId=\"{XROAD_HASH_ALGORITHM}\">{}</xrd:requestHash>",
        xroad_request_hash(request)
    )
}

/// The `xrd:requestHash` value of an answer's headers, when there is one; compare it with
/// [`xroad_request_hash`] of the request sent.
pub fn xroad_response_request_hash(headers: &[HeaderBlock]) -> Option<String> {
    headers
        .iter()
        .find(|h| h.is(XROAD_NS, "requestHash"))
        .and_then(HeaderBlock::text)
        .map(|t| t.trim().to_owned())
}

// ---------------------------------------------------------------------------------------------
// X-Road REST

/// The X-Road REST path of a service call: `/r1/EE/GOV/70000310/subsys/getPerson/<rest>`
/// (the service version is not part of REST paths; no subsystem part when the service has
/// none). `rest` is appended after one slash, as it is (query included).
pub fn xroad_rest_path(service: &XRoadService, rest: &str) -> String {
    let mut path = format!(
        "/r1/{}/{}/{}",
        service.instance, service.member_class, service.member_code
    );
    if let Some(subsystem) = &service.subsystem_code {
        path.push('/');
        path.push_str(subsystem);
    }
    path.push('/');
    path.push_str(&service.service_code);
    let rest = rest.trim_start_matches('/');
    if !rest.is_empty() {
        if !rest.starts_with('?') {
            path.push('/');
        }
        path.push_str(rest);
    }
    path
}

/// The X-Road REST request headers: `X-Road-Client: INST/CLASS/MEMBER[/SUBSYS]`, `X-Road-Id`
/// (left out when `id` is empty), `X-Road-UserId` and `X-Road-Issue` when given.
pub fn xroad_rest_headers(
    client: &XRoadClient,
    id: &str,
    user_id: Option<&UserId>,
    issue: Option<&str>,
) -> Result<Vec<(HeaderName, HeaderValue)>, ProfileError> {
    let value = |name: &'static str, v: &str| {
        HeaderValue::from_str(v).map_err(|_| ProfileError::HeaderValue(name))
    };
    let mut headers = vec![(
        HeaderName::from_static("x-road-client"),
        value("X-Road-Client", &client.to_string())?,
    )];
    if !id.is_empty() {
        headers.push((
            HeaderName::from_static("x-road-id"),
            value("X-Road-Id", id)?,
        ));
    }
    if let Some(user_id) = user_id {
        headers.push((
            HeaderName::from_static("x-road-userid"),
            value("X-Road-UserId", &user_id.expose())?,
        ));
    }
    if let Some(issue) = issue {
        headers.push((
            HeaderName::from_static("x-road-issue"),
            value("X-Road-Issue", issue)?,
        ));
    }
    Ok(headers)
}

/// An X-Road REST error answer: `{"type":"Server.ServerProxy...","message":...,"detail":...}`.
///
/// `message` and `detail` are the peer's text: `Debug` redacts personal codes in them; do not
/// log them otherwise.
#[derive(Clone, PartialEq, Eq)]
pub struct XRoadRestError {
    /// The error type, e.g. `Server.ServerProxy.ServiceFailed` or `Client.BadRequest`.
    pub type_: String,
    /// The human-readable message (empty when absent).
    pub message: String,
    /// The detail (X-Road puts an error id there), when present.
    pub detail: Option<String>,
}

impl XRoadRestError {
    /// `Server.*` errors are retryable (the security server or the provider failed); anything
    /// else (`Client.*`) is permanent.
    pub fn retry(&self) -> crate::contract::Retry {
        if self.type_ == "Server" || self.type_.starts_with("Server.") {
            crate::contract::Retry::Retryable
        } else {
            crate::contract::Retry::Permanent
        }
    }
}

impl fmt::Debug for XRoadRestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XRoadRestError")
            .field("type_", &self.type_)
            .field("message", &crate::redact::redact(&self.message))
            .field("detail", &self.detail.as_deref().map(crate::redact::redact))
            .finish()
    }
}

/// Reads an X-Road REST error body; `None` when the body is not a JSON object with a string
/// `type`.
pub fn parse_xroad_rest_error(body: &[u8]) -> Option<XRoadRestError> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let object = value.as_object()?;
    let type_ = object.get("type")?.as_str()?.to_owned();
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    Some(XRoadRestError {
        type_,
        message: object.get("message").map(text).unwrap_or_default(),
        detail: object.get("detail").filter(|v| !v.is_null()).map(text),
    })
}

// ---------------------------------------------------------------------------------------------
// VISS request service

/// The `IVISRequest` header of a SubmitSync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VissRequestHeader {
    /// `urn:uuid:<uuid>`, unique per message.
    pub message_id: String,
    /// The message type URN, e.g. `URN:IVIS:100001:MT-PMLP-GetPerson`.
    pub message_type: String,
    /// The URN StartTransaction returned.
    pub transaction_id: String,
    /// Ties the messages of one business exchange together (`urn:uuid:<uuid>`).
    pub correlation_id: String,
    /// The sending system's URN, e.g. `URN:IVIS:100001:IS-TILTS`.
    pub sender: String,
    /// The receiving system's URN, e.g. `URN:IVIS:100001:IS-PMLP`.
    pub destination: String,
    /// Whether this is a test message.
    pub test: bool,
    /// `MilestoneID`, when the e-service uses milestones.
    pub milestone_id: Option<String>,
    /// The person on whose behalf the call is made.
    pub initiator: Option<UserId>,
}

/// The `IVISRequest` header block, elements in the order MessageID, MessageType, TransactionID,
/// CorrelationID, Sender, Destination, Test, MilestoneID?, Initiator?.
pub fn viss_request_header(h: &VissRequestHeader) -> String {
    let mut out = format!("<IVISRequest xmlns=\"{VISS_NS}\">");
    let mut element = |name: &str, value: &str| {
        out.push_str(&format!("<{name}>{}</{name}>", escape(value)));
    };
    element("MessageID", &h.message_id);
    element("MessageType", &h.message_type);
    element("TransactionID", &h.transaction_id);
    element("CorrelationID", &h.correlation_id);
    element("Sender", &h.sender);
    element("Destination", &h.destination);
    element("Test", if h.test { "true" } else { "false" });
    if let Some(milestone) = &h.milestone_id {
        element("MilestoneID", milestone);
    }
    if let Some(initiator) = &h.initiator {
        element("Initiator", &initiator.expose());
    }
    out.push_str("</IVISRequest>");
    out
}

/// The `IVISResponse` header of a SubmitSync answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VissResponseHeader {
    /// The answer's MessageID.
    pub message_id: String,
    /// The message type URN.
    pub message_type: String,
    /// The transaction URN.
    pub transaction_id: String,
    /// The request's CorrelationID.
    pub correlation_id: String,
    /// When the answer was made (as written, e.g. `2026-11-28T06:00:01Z`).
    pub timestamp: String,
    /// The processing result, e.g. `OK`.
    pub result: String,
}

/// Reads the `IVISResponse` header block; `None` when there is none (or it cannot be read).
/// Missing children read as empty strings.
pub fn parse_viss_response_header(headers: &[HeaderBlock]) -> Option<VissResponseHeader> {
    let block = headers.iter().find(|h| h.is(VISS_NS, "IVISResponse"))?;
    let field = |name: &str| -> Option<String> {
        let text = soap::text_at(&block.xml, &[(VISS_NS, "IVISResponse"), (VISS_NS, name)]).ok()?;
        Some(text.map(|t| t.trim().to_owned()).unwrap_or_default())
    };
    Some(VissResponseHeader {
        message_id: field("MessageID")?,
        message_type: field("MessageType")?,
        transaction_id: field("TransactionID")?,
        correlation_id: field("CorrelationID")?,
        timestamp: field("TimeStamp")?,
        result: field("Result")?,
    })
}

/// A WS-Security `wsse:Security` header block holding only a `wsu:Timestamp` (Created = `now`,
/// Expires = `now + ttl`, whole seconds, UTC). XML signatures are out of scope: there is no
/// `ds:Signature` here. Use [`WSSE_DEFAULT_TTL`] for VISS's 5-minute window.
pub fn wsse_timestamp(now: DateTime<Utc>, ttl: Duration) -> String {
    let ttl = chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::seconds(300));
    let expires = now.checked_add_signed(ttl).unwrap_or(now);
    let format = |t: DateTime<Utc>| t.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    format!(
        "<wsse:Security xmlns:wsse=\"{WSSE_NS}\" xmlns:wsu=\"{WSU_NS}\"><wsu:Timestamp><wsu:Created>{}</wsu:Created><wsu:Expires>{}</wsu:Expires></wsu:Timestamp></wsse:Security>",
        format(now),
        format(expires)
    )
}

/// The StartTransaction body: `<StartTransaction xmlns=VISS_NS><eServiceID>..</eServiceID></StartTransaction>`.
pub fn start_transaction_body(e_service_id: &str) -> String {
    format!(
        "<StartTransaction xmlns=\"{VISS_NS}\"><eServiceID>{}</eServiceID></StartTransaction>",
        escape(e_service_id)
    )
}

/// The transaction URN from a StartTransaction answer's body
/// (`StartTransactionResponse/StartTransactionResult`).
pub fn parse_start_transaction_response(body_xml: &str) -> Result<String, ProfileError> {
    let urn = soap::text_at(
        body_xml,
        &[
            (VISS_NS, "StartTransactionResponse"),
            (VISS_NS, "StartTransactionResult"),
        ],
    )?
    .map(|t| t.trim().to_owned())
    .filter(|t| !t.is_empty());
    urn.ok_or(ProfileError::Missing(
        "StartTransactionResponse/StartTransactionResult with a transaction URN",
    ))
}

/// The SubmitSync body: `<SubmitSync xmlns=VISS_NS><request>PAYLOAD</request></SubmitSync>`.
/// `payload_xml` is inserted as it is, except that a top-level element using the default
/// namespace without declaring one gets `xmlns=""`, so it does not fall into the VISS namespace.
pub fn submit_sync_body(payload_xml: &str) -> String {
    let payload = soap::isolate_fragment(payload_xml).unwrap_or_else(|| payload_xml.to_owned());
    format!("<SubmitSync xmlns=\"{VISS_NS}\"><request>{payload}</request></SubmitSync>")
}

/// The payload of a SubmitSync answer's body (`SubmitSyncResponse/SubmitSyncResult`), as
/// self-contained XML. A result that holds only text (a service that sends the payload as an
/// escaped string) gives that text unescaped.
pub fn unwrap_submit_sync_response(body_xml: &str) -> Result<String, ProfileError> {
    const PATH: [(&str, &str); 2] = [
        (VISS_NS, "SubmitSyncResponse"),
        (VISS_NS, "SubmitSyncResult"),
    ];
    let content = soap::content_at(body_xml, &PATH)?
        .ok_or(ProfileError::Missing("SubmitSyncResponse/SubmitSyncResult"))?;
    if !content.is_empty() && !content.contains('<') {
        // Escaped XML: no markup inside, so the text is the payload.
        let text = soap::text_at(body_xml, &PATH)?.unwrap_or_default();
        return Ok(text.trim().to_owned());
    }
    Ok(content)
}

// ---------------------------------------------------------------------------------------------
// DAGR

/// The `X-DAGR-Permission` header for a permission number: 1 to 128 visible ASCII characters
/// (the permission format is *unconfirmed*, so only what a header needs is checked).
pub fn dagr_permission_header(permission: &str) -> Result<(HeaderName, HeaderValue), ProfileError> {
    let permission = permission.trim();
    if permission.is_empty()
        || permission.len() > MAX_PERMISSION_LEN
        || !permission.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(ProfileError::Permission);
    }
    let value = HeaderValue::from_str(permission).map_err(|_| ProfileError::Permission)?;
    Ok((HeaderName::from_static("x-dagr-permission"), value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::Retry;
    use crate::soap::testing::resolved_items;
    use crate::soap::{Addressing, Envelope, SoapVersion, build_envelope, parse_envelope};

    const PR_NS: &str = "urn:x-tilts-sim:pmlp:person:v1";
    const EMPLOYEE: &str = "AU:90000038741-PK:010190-12349";

    fn header() -> XRoadHeader {
        XRoadHeader {
            client: "EE/GOV/90000038741/tilts".parse().unwrap(),
            service: "EE/GOV/70000310/pmlp/getPerson/v1".parse().unwrap(),
            id: "4894e35d-bf0f-44a6-867a-8e51f1daa7e0".into(),
            user_id: Some(EMPLOYEE.parse().unwrap()),
            issue: Some("case <1> & 2".into()),
            protocol_version: XROAD_PROTOCOL_VERSION.into(),
        }
    }

    #[test]
    fn user_ids_of_every_form_parse_and_mask() {
        let id: UserId = EMPLOYEE.parse().unwrap();
        assert_eq!(id.kind(), UserIdKind::Employee);
        assert_eq!(id.reg_no(), Some("90000038741"));
        assert_eq!(id.masked(), "AU:90000038741-PK:010190-*****");
        assert_eq!(id.expose(), EMPLOYEE);
        assert_eq!(id.to_string(), "AU:90000038741-PK:010190-*****");
        assert_eq!(format!("{id:?}"), "UserId(AU:90000038741-PK:010190-*****)");
        // The digits without the hyphen are accepted and sent in the usual form.
        let id: UserId = "AU:90000038741-PK:01019012349".parse().unwrap();
        assert_eq!(id.expose(), EMPLOYEE);

        let citizen: UserId = "PK:161175-19997".parse().unwrap();
        assert_eq!(citizen.kind(), UserIdKind::Citizen);
        assert_eq!(citizen.masked(), "PK:161175-*****");
        assert_eq!(citizen.expose(), "PK:161175-19997");
        assert_eq!(citizen.reg_no(), None);

        let system: UserId = "AU:90000038741".parse().unwrap();
        assert_eq!(system.kind(), UserIdKind::System);
        assert_eq!(system.masked(), "AU:90000038741");
        assert!(system.personal_code().is_none());

        let signatory: UserId = "PK:150285-10005-UR:40003521600".parse().unwrap();
        assert_eq!(signatory.kind(), UserIdKind::Signatory);
        assert_eq!(signatory.masked(), "PK:150285-*****-UR:40003521600");
        assert_eq!(signatory.expose(), "PK:150285-10005-UR:40003521600");
    }

    #[test]
    fn bad_user_ids_are_refused_without_echoing_them() {
        let cases = [
            ("AU:90000038741-PK:010190-12340", "personal code"),
            ("AU:90000038742-PK:010190-12349", "registration number"),
            ("PK:010190-12340", "personal code"),
            ("PK:010190-12349-UR:4000352160", "registration number"),
            ("010190-12349", "must be"),
            ("AU:90000038741-XX:010190-12349", "must be"),
            ("pk:010190-12349", "must be"),
            ("PK: 010190-12349", "personal code"),
            ("", "must be"),
        ];
        for (input, expected) in cases {
            let err = input.parse::<UserId>().unwrap_err();
            let text = format!("{err} {err:?}");
            assert!(text.contains(expected), "{input}: {text}");
            assert!(!text.contains("12349") && !text.contains("12340"), "{text}");
        }
    }

    #[test]
    fn xroad_ids_parse_from_slash_forms() {
        let client: XRoadClient = "EE/GOV/70000310/subsys".parse().unwrap();
        assert_eq!(client.subsystem_code.as_deref(), Some("subsys"));
        assert_eq!(client.to_string(), "EE/GOV/70000310/subsys");
        let member: XRoadClient = "EE/GOV/70000310".parse().unwrap();
        assert_eq!(member.subsystem_code, None);
        assert_eq!(member.to_string(), "EE/GOV/70000310");

        let service: XRoadService = "EE/GOV/70000310/subsys/getPerson/v1".parse().unwrap();
        assert_eq!(
            service,
            XRoadService {
                instance: "EE".into(),
                member_class: "GOV".into(),
                member_code: "70000310".into(),
                subsystem_code: Some("subsys".into()),
                service_code: "getPerson".into(),
                service_version: Some("v1".into()),
            }
        );
        assert_eq!(service.to_string(), "EE/GOV/70000310/subsys/getPerson/v1");
        let unversioned: XRoadService = "EE/GOV/70000310/subsys/getPerson".parse().unwrap();
        assert_eq!(unversioned.service_version, None);
        let own: XRoadService = "EE/GOV/70000310//getPerson/v1".parse().unwrap();
        assert_eq!(own.subsystem_code, None);
        assert_eq!(own.to_string(), "EE/GOV/70000310//getPerson/v1");

        for bad in [
            "EE/GOV",
            "EE/GOV/70000310/a/b",
            "EE//70000310",
            "EE/GOV/7000 0310",
            "EE/GOV/x:y",
        ] {
            let err = bad.parse::<XRoadClient>().unwrap_err();
            assert!(err.to_string().contains("INSTANCE/CLASS/MEMBER"), "{bad}");
        }
        for bad in [
            "EE/GOV/70000310/subsys",
            "EE/GOV/70000310/s/getPerson/v1/x",
            "EE/GOV/70000310/s//v1",
            "EE/GOV/70000310/s/get%20/v1",
        ] {
            let err = bad.parse::<XRoadService>().unwrap_err();
            assert!(err.to_string().contains("SUBSYSTEM/SERVICE"), "{bad}");
        }
    }

    #[test]
    fn xroad_soap_headers_are_what_the_protocol_requires() {
        let blocks = xroad_soap_headers(&header());
        let expected = [
            r#"<xrd:client xmlns:xrd="http://x-road.eu/xsd/xroad.xsd" xmlns:iden="http://x-road.eu/xsd/identifiers" iden:objectType="SUBSYSTEM">
                 <iden:xRoadInstance>EE</iden:xRoadInstance><iden:memberClass>GOV</iden:memberClass>
                 <iden:memberCode>90000038741</iden:memberCode><iden:subsystemCode>tilts</iden:subsystemCode></xrd:client>"#,
            r#"<s:service xmlns:s="http://x-road.eu/xsd/xroad.xsd" xmlns:id="http://x-road.eu/xsd/identifiers" id:objectType="SERVICE">
                 <id:xRoadInstance>EE</id:xRoadInstance><id:memberClass>GOV</id:memberClass><id:memberCode>70000310</id:memberCode>
                 <id:subsystemCode>pmlp</id:subsystemCode><id:serviceCode>getPerson</id:serviceCode><id:serviceVersion>v1</id:serviceVersion></s:service>"#,
            r#"<id xmlns="http://x-road.eu/xsd/xroad.xsd">4894e35d-bf0f-44a6-867a-8e51f1daa7e0</id>"#,
            r#"<xrd:userId xmlns:xrd="http://x-road.eu/xsd/xroad.xsd">AU:90000038741-PK:010190-12349</xrd:userId>"#,
            r#"<xrd:issue xmlns:xrd="http://x-road.eu/xsd/xroad.xsd">case &lt;1&gt; &amp; 2</xrd:issue>"#,
            r#"<xrd:protocolVersion xmlns:xrd="http://x-road.eu/xsd/xroad.xsd">4.0</xrd:protocolVersion>"#,
        ];
        assert_eq!(blocks.len(), expected.len());
        for (block, expected) in blocks.iter().zip(expected) {
            assert_eq!(resolved_items(block), resolved_items(expected), "{block}");
        }

        // A member client, no user id, no issue, an unversioned service.
        let mut h = header();
        h.client = "EE/GOV/90000038741".parse().unwrap();
        h.service = "EE/GOV/70000310/pmlp/getPerson".parse().unwrap();
        h.user_id = None;
        h.issue = None;
        let blocks = xroad_soap_headers(&h);
        assert_eq!(blocks.len(), 4);
        assert_eq!(
            resolved_items(&blocks[0]),
            resolved_items(
                r#"<c xmlns="http://x-road.eu/xsd/xroad.xsd" xmlns:i="http://x-road.eu/xsd/identifiers" i:objectType="MEMBER"><i:xRoadInstance>EE</i:xRoadInstance><i:memberClass>GOV</i:memberClass><i:memberCode>90000038741</i:memberCode></c>"#
                    .replace("<c ", "<client ")
                    .replace("</c>", "</client>")
                    .as_str()
            )
        );
        assert!(!blocks[1].contains("serviceVersion"));
    }

    #[test]
    fn an_xroad_envelope_parses_back_in_header_order() {
        let request = build_envelope(&Envelope {
            version: SoapVersion::V11,
            header_blocks: xroad_soap_headers(&header()),
            addressing: None,
            body: &format!(
                "<GetPerson xmlns=\"{PR_NS}\"><PersonalCode>010190-12349</PersonalCode></GetPerson>"
            ),
        });
        let parsed = parse_envelope(request.as_bytes(), 1 << 20, 32).unwrap();
        let names: Vec<_> = parsed
            .headers
            .iter()
            .map(|h| (h.namespace.as_deref().unwrap(), h.local_name.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                "client",
                "service",
                "id",
                "userId",
                "issue",
                "protocolVersion"
            ]
            .map(|n| (XROAD_NS, n))
        );
        assert_eq!(
            parsed.header(XROAD_NS, "issue").unwrap().text().as_deref(),
            Some("case <1> & 2")
        );

        // The answer repeats the headers and adds the hash of the request bytes.
        let mut answer_headers = xroad_soap_headers(&header());
        answer_headers.push(xroad_request_hash_header(request.as_bytes()));
        let answer = build_envelope(&Envelope {
            version: SoapVersion::V11,
            header_blocks: answer_headers,
            addressing: None,
            body: "<r/>",
        });
        let parsed = parse_envelope(answer.as_bytes(), 1 << 20, 32).unwrap();
        let hash = xroad_response_request_hash(&parsed.headers).unwrap();
        assert_eq!(hash, xroad_request_hash(request.as_bytes()));
        assert_ne!(hash, xroad_request_hash(answer.as_bytes()));
        let block = parsed.header(XROAD_NS, "requestHash").unwrap();
        assert!(
            block
                .xml
                .contains(&format!("algorithmId=\"{XROAD_HASH_ALGORITHM}\""))
        );
    }

    #[test]
    fn request_hash_is_base64_sha512() {
        assert_eq!(
            xroad_request_hash(b"abc"),
            "3a81oZNherrMQXNJriBBMRLm+k6JqX6iCp7u5ktV05ohkpkqJ0/BqDa6PCOj/uu9RU1EI2Q86A4qmslPpUyknw=="
        );
    }

    #[test]
    fn xroad_rest_paths_headers_and_errors() {
        let service: XRoadService = "EE/GOV/70000310/subsys/getPerson/v1".parse().unwrap();
        assert_eq!(
            xroad_rest_path(&service, "/persons/1"),
            "/r1/EE/GOV/70000310/subsys/getPerson/persons/1"
        );
        assert_eq!(
            xroad_rest_path(&service, ""),
            "/r1/EE/GOV/70000310/subsys/getPerson"
        );
        assert_eq!(
            xroad_rest_path(&service, "?code=1"),
            "/r1/EE/GOV/70000310/subsys/getPerson?code=1"
        );
        let own: XRoadService = "EE/GOV/70000310//getPerson".parse().unwrap();
        assert_eq!(
            xroad_rest_path(&own, "x"),
            "/r1/EE/GOV/70000310/getPerson/x"
        );

        let client: XRoadClient = "EE/GOV/90000038741/tilts".parse().unwrap();
        let user: UserId = EMPLOYEE.parse().unwrap();
        let headers = xroad_rest_headers(&client, "id-1", Some(&user), Some("case-7")).unwrap();
        let as_text: Vec<_> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            as_text,
            [
                ("x-road-client", "EE/GOV/90000038741/tilts"),
                ("x-road-id", "id-1"),
                ("x-road-userid", EMPLOYEE),
                ("x-road-issue", "case-7"),
            ]
        );
        let headers = xroad_rest_headers(&client, "", None, None).unwrap();
        assert_eq!(headers.len(), 1);
        let err = xroad_rest_headers(&client, "id", None, Some("a\r\nInjected: 1")).unwrap_err();
        assert_eq!(err, ProfileError::HeaderValue("X-Road-Issue"));

        let e = parse_xroad_rest_error(
            br#"{"type":"Server.ServerProxy.ServiceFailed","message":"Person 010190-12349 failed","detail":"a1b2"}"#,
        )
        .unwrap();
        assert_eq!(e.type_, "Server.ServerProxy.ServiceFailed");
        assert_eq!(e.message, "Person 010190-12349 failed");
        assert_eq!(e.detail.as_deref(), Some("a1b2"));
        assert_eq!(e.retry(), Retry::Retryable);
        assert!(!format!("{e:?}").contains("12349"));
        let e = parse_xroad_rest_error(br#"{"type":"Client.InternalError"}"#).unwrap();
        assert_eq!(e.retry(), Retry::Permanent);
        assert_eq!((e.message.as_str(), e.detail), ("", None));
        assert_eq!(parse_xroad_rest_error(b"<html>Bad gateway</html>"), None);
        assert_eq!(parse_xroad_rest_error(br#"{"error":"x"}"#), None);
        assert_eq!(parse_xroad_rest_error(br#"["Server.X"]"#), None);
    }

    fn viss_header() -> VissRequestHeader {
        VissRequestHeader {
            message_id: "urn:uuid:11111111-1111-4111-8111-111111111111".into(),
            message_type: "URN:IVIS:100001:MT-PMLP-GetPerson".into(),
            transaction_id: "URN:IVIS:100001:EP-PMLP-PERSON-v1-0-TR-861".into(),
            correlation_id: "urn:uuid:22222222-2222-4222-8222-222222222222".into(),
            sender: "URN:IVIS:100001:IS-TILTS".into(),
            destination: "URN:IVIS:100001:IS-PMLP".into(),
            test: false,
            milestone_id: Some("1".into()),
            initiator: Some(EMPLOYEE.parse().unwrap()),
        }
    }

    #[test]
    fn viss_request_header_follows_the_fixed_shape() {
        let xml = viss_request_header(&viss_header());
        assert_eq!(
            xml,
            format!(
                "<IVISRequest xmlns=\"{VISS_NS}\"><MessageID>urn:uuid:11111111-1111-4111-8111-111111111111</MessageID><MessageType>URN:IVIS:100001:MT-PMLP-GetPerson</MessageType><TransactionID>URN:IVIS:100001:EP-PMLP-PERSON-v1-0-TR-861</TransactionID><CorrelationID>urn:uuid:22222222-2222-4222-8222-222222222222</CorrelationID><Sender>URN:IVIS:100001:IS-TILTS</Sender><Destination>URN:IVIS:100001:IS-PMLP</Destination><Test>false</Test><MilestoneID>1</MilestoneID><Initiator>{EMPLOYEE}</Initiator></IVISRequest>"
            )
        );
        let mut h = viss_header();
        h.milestone_id = None;
        h.initiator = None;
        h.test = true;
        h.sender = "a&b".into();
        let xml = viss_request_header(&h);
        assert!(xml.ends_with("<Test>true</Test></IVISRequest>"));
        assert!(xml.contains("<Sender>a&amp;b</Sender>"));
    }

    #[test]
    fn wsse_timestamp_has_a_five_minute_window() {
        let now = DateTime::parse_from_rfc3339("2026-11-28T06:00:00.750Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            wsse_timestamp(now, WSSE_DEFAULT_TTL),
            format!(
                "<wsse:Security xmlns:wsse=\"{WSSE_NS}\" xmlns:wsu=\"{WSU_NS}\"><wsu:Timestamp><wsu:Created>2026-11-28T06:00:00Z</wsu:Created><wsu:Expires>2026-11-28T06:05:00Z</wsu:Expires></wsu:Timestamp></wsse:Security>"
            )
        );
        assert!(
            wsse_timestamp(now, Duration::from_secs(60))
                .contains("<wsu:Expires>2026-11-28T06:01:00Z<")
        );
    }

    /// A whole VISS SubmitSync request, as the engine builds it, against the fixed shape.
    #[test]
    fn a_viss_submit_sync_request_has_the_fixed_shape() {
        let now = DateTime::parse_from_rfc3339("2026-11-28T06:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut addressing = Addressing::new(
            VISS_ACTION_SUBMIT_SYNC,
            Some("http://127.0.0.1:9/viss/RequestService".into()),
        );
        addressing.message_id = "urn:uuid:33333333-3333-4333-8333-333333333333".into();
        let payload = format!(
            "<GetPerson xmlns=\"{PR_NS}\"><PersonalCode>010190-12349</PersonalCode></GetPerson>"
        );
        let body = submit_sync_body(&payload);
        assert_eq!(
            body,
            format!("<SubmitSync xmlns=\"{VISS_NS}\"><request>{payload}</request></SubmitSync>")
        );
        let xml = build_envelope(&Envelope {
            version: SoapVersion::V12,
            header_blocks: vec![
                viss_request_header(&viss_header()),
                wsse_timestamp(now, WSSE_DEFAULT_TTL),
            ],
            addressing: Some(addressing),
            body: &body,
        });
        let expected = format!(
            r#"<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope" xmlns:wsa="http://www.w3.org/2005/08/addressing">
  <env:Header>
    <wsa:Action>http://ivis.eps.gov.lv/ISS/RequestServiss/v1-0/IRequestService/SubmitSync</wsa:Action>
    <wsa:MessageID>urn:uuid:33333333-3333-4333-8333-333333333333</wsa:MessageID>
    <wsa:ReplyTo><wsa:Address>http://www.w3.org/2005/08/addressing/anonymous</wsa:Address></wsa:ReplyTo>
    <wsa:To>http://127.0.0.1:9/viss/RequestService</wsa:To>
    <IVISRequest xmlns="http://ivis.eps.gov.lv/ISS/RequestServiss/v1-0">
      <MessageID>urn:uuid:11111111-1111-4111-8111-111111111111</MessageID><MessageType>URN:IVIS:100001:MT-PMLP-GetPerson</MessageType>
      <TransactionID>URN:IVIS:100001:EP-PMLP-PERSON-v1-0-TR-861</TransactionID><CorrelationID>urn:uuid:22222222-2222-4222-8222-222222222222</CorrelationID>
      <Sender>URN:IVIS:100001:IS-TILTS</Sender><Destination>URN:IVIS:100001:IS-PMLP</Destination>
      <Test>false</Test><MilestoneID>1</MilestoneID><Initiator>AU:90000038741-PK:010190-12349</Initiator>
    </IVISRequest>
    <wsse:Security xmlns:wsse="{WSSE_NS}" xmlns:wsu="{WSU_NS}"><wsu:Timestamp><wsu:Created>2026-11-28T06:00:00Z</wsu:Created><wsu:Expires>2026-11-28T06:05:00Z</wsu:Expires></wsu:Timestamp></wsse:Security>
  </env:Header>
  <env:Body><SubmitSync xmlns="http://ivis.eps.gov.lv/ISS/RequestServiss/v1-0"><request><GetPerson xmlns="urn:x-tilts-sim:pmlp:person:v1"><PersonalCode>010190-12349</PersonalCode></GetPerson></request></SubmitSync></env:Body>
</env:Envelope>"#
        );
        assert_eq!(resolved_items(&xml), resolved_items(&expected));
    }

    #[test]
    fn viss_start_transaction_body_and_answer() {
        assert_eq!(
            start_transaction_body("EP-PMLP-PERSON-v1-0"),
            format!(
                "<StartTransaction xmlns=\"{VISS_NS}\"><eServiceID>EP-PMLP-PERSON-v1-0</eServiceID></StartTransaction>"
            )
        );
        assert!(start_transaction_body("a<b").contains("<eServiceID>a&lt;b</eServiceID>"));
        // The answer as a service may write it: VISS namespace declared on the Envelope.
        let answer = format!(
            r#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:a="http://www.w3.org/2005/08/addressing" xmlns:v="{VISS_NS}">
<s:Header><a:Action>{VISS_ACTION_START_TRANSACTION_RESPONSE}</a:Action><a:MessageID>urn:uuid:4</a:MessageID><a:RelatesTo>urn:uuid:3</a:RelatesTo></s:Header>
<s:Body><v:StartTransactionResponse><v:StartTransactionResult> URN:IVIS:100001:EP-PMLP-PERSON-v1-0-TR-861 </v:StartTransactionResult></v:StartTransactionResponse></s:Body></s:Envelope>"#
        );
        let parsed = parse_envelope(answer.as_bytes(), 1 << 20, 32).unwrap();
        assert_eq!(
            parse_start_transaction_response(&parsed.body).unwrap(),
            "URN:IVIS:100001:EP-PMLP-PERSON-v1-0-TR-861"
        );
        let wsa = Addressing::from_headers(&parsed.headers).unwrap();
        assert_eq!(wsa.relates_to.as_deref(), Some("urn:uuid:3"));

        let wrong_ns = "<StartTransactionResponse><StartTransactionResult>URN:X</StartTransactionResult></StartTransactionResponse>";
        assert!(matches!(
            parse_start_transaction_response(wrong_ns),
            Err(ProfileError::Missing(_))
        ));
        let empty = format!(
            "<StartTransactionResponse xmlns=\"{VISS_NS}\"><StartTransactionResult/></StartTransactionResponse>"
        );
        assert!(matches!(
            parse_start_transaction_response(&empty),
            Err(ProfileError::Missing(_))
        ));
        assert!(matches!(
            parse_start_transaction_response(&format!(
                "<StartTransactionResponse xmlns=\"{VISS_NS}\"><StartTransactionResult>x</Other>"
            )),
            Err(ProfileError::Xml(_))
        ));
    }

    #[test]
    fn submit_sync_keeps_an_unqualified_payload_out_of_the_viss_namespace() {
        let body = submit_sync_body("<GetPerson><PersonalCode>1</PersonalCode></GetPerson>");
        assert_eq!(
            body,
            format!(
                "<SubmitSync xmlns=\"{VISS_NS}\"><request><GetPerson xmlns=\"\"><PersonalCode>1</PersonalCode></GetPerson></request></SubmitSync>"
            )
        );
        let items = resolved_items(&body);
        assert!(
            items.contains(&"start {}GetPerson []".to_owned()),
            "{items:?}"
        );
        // A prefixed payload with an unqualified child gets the same protection.
        let body = submit_sync_body(&format!(
            "<pr:GetPerson xmlns:pr=\"{PR_NS}\"><Code/></pr:GetPerson>"
        ));
        assert!(resolved_items(&body).contains(&"start {}Code []".to_owned()));
    }

    #[test]
    fn viss_submit_sync_answer_unwraps_to_a_self_contained_payload() {
        let answer = format!(
            r#"<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope" xmlns:wsa="http://www.w3.org/2005/08/addressing" xmlns:pr="{PR_NS}">
<env:Header><wsa:Action>{VISS_ACTION_SUBMIT_SYNC_RESPONSE}</wsa:Action><wsa:RelatesTo>urn:uuid:3</wsa:RelatesTo>
<IVISResponse xmlns="{VISS_NS}"><MessageID>urn:uuid:5</MessageID><MessageType>URN:IVIS:100001:MT-PMLP-GetPerson</MessageType><TransactionID>URN:IVIS:100001:EP-PMLP-PERSON-v1-0-TR-861</TransactionID><CorrelationID>urn:uuid:2</CorrelationID><TimeStamp>2026-11-28T06:00:01Z</TimeStamp><Result>OK</Result></IVISResponse></env:Header>
<env:Body><SubmitSyncResponse xmlns="{VISS_NS}"><SubmitSyncResult><pr:GetPersonResponse><pr:Person><pr:Status>active</pr:Status></pr:Person></pr:GetPersonResponse></SubmitSyncResult></SubmitSyncResponse></env:Body></env:Envelope>"#
        );
        let parsed = parse_envelope(answer.as_bytes(), 1 << 20, 32).unwrap();
        let header = parse_viss_response_header(&parsed.headers).unwrap();
        assert_eq!(
            header,
            VissResponseHeader {
                message_id: "urn:uuid:5".into(),
                message_type: "URN:IVIS:100001:MT-PMLP-GetPerson".into(),
                transaction_id: "URN:IVIS:100001:EP-PMLP-PERSON-v1-0-TR-861".into(),
                correlation_id: "urn:uuid:2".into(),
                timestamp: "2026-11-28T06:00:01Z".into(),
                result: "OK".into(),
            }
        );
        let payload = unwrap_submit_sync_response(&parsed.body).unwrap();
        assert_eq!(
            payload,
            format!(
                "<pr:GetPersonResponse xmlns:pr=\"{PR_NS}\"><pr:Person><pr:Status>active</pr:Status></pr:Person></pr:GetPersonResponse>"
            )
        );
        assert_eq!(
            resolved_items(&payload)[0],
            format!("start {{{PR_NS}}}GetPersonResponse []")
        );

        // A service that sends the payload as an escaped string.
        let escaped = format!(
            "<SubmitSyncResponse xmlns=\"{VISS_NS}\"><SubmitSyncResult>&lt;r xmlns=\"urn:r\"/&gt;</SubmitSyncResult></SubmitSyncResponse>"
        );
        assert_eq!(
            unwrap_submit_sync_response(&escaped).unwrap(),
            "<r xmlns=\"urn:r\"/>"
        );
        let missing = format!("<SubmitSyncResponse xmlns=\"{VISS_NS}\"/>");
        assert!(matches!(
            unwrap_submit_sync_response(&missing),
            Err(ProfileError::Missing(_))
        ));
        assert_eq!(parse_viss_response_header(&[]), None);
    }

    #[test]
    fn dagr_permission_header_is_validated() {
        let (name, value) = dagr_permission_header("1042").unwrap();
        assert_eq!(name.as_str(), DAGR_PERMISSION_HEADER.to_ascii_lowercase());
        assert_eq!(value, "1042");
        for bad in ["", "  ", "10 42", "10\n42", "nr-ā", &"9".repeat(129)] {
            assert_eq!(
                dagr_permission_header(bad),
                Err(ProfileError::Permission),
                "{bad:?}"
            );
        }
    }
}
