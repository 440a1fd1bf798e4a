//! Stand-ins for the systems routes call: one small HTTP server per declared system, answering
//! the current test's scripted answers in order and recording what it receives.
//!
//! A stand-in is reset before each test ([`StandIn::reset`]): a new generation, so a call still
//! in flight from an earlier test (one scripted to time out, say) neither takes an answer nor
//! shows up among the new test's requests. A call beyond the script is answered 500 with
//! "no scripted answer left" and fails the test.
//!
//! Framing follows the system: REST systems answer as scripted; SOAP systems wrap `xml`/`body`
//! in an envelope of their version; VISS systems answer `StartTransaction` by themselves (with a
//! transaction id) and wrap the scripted answer in the `SubmitSync` answer, so one scripted
//! answer is one call of the route.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderName, HeaderValue, StatusCode, header};
use serde_json::Value;
use tilts_adapters::profile::VISS_NS;
use tilts_adapters::soap::{self, FaultCode, SoapVersion, Subcode};
use tilts_adapters::xml;
use tokio::sync::watch;

use super::format::{FaultSpec, ScriptedAnswer};

/// Namespace of fault subcodes written without one.
const SUBCODE_NS: &str = "urn:x-tilts:route-tests";
/// Largest request body a stand-in records.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// How a system's answers are framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Plain HTTP.
    Rest,
    /// SOAP of this version.
    Soap(SoapVersion),
    /// The VISS request service (SOAP 1.2; StartTransaction answered automatically).
    Viss,
}

/// A request a stand-in received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
}

/// What a stand-in saw during one test.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// The calls, in order (for VISS systems the SubmitSync requests).
    pub requests: Vec<Recorded>,
    /// Scripted answers that were never asked for.
    pub unused: usize,
    /// Problems that fail the test (calls beyond the script, answers that could not be built).
    pub problems: Vec<String>,
}

#[derive(Default)]
struct Slot {
    generation: u64,
    script: VecDeque<ScriptedAnswer>,
    scripted: usize,
    seen: Seen,
    transactions: u64,
}

/// One system's stand-in server.
pub struct StandIn {
    /// The system's name.
    pub name: String,
    framing: Framing,
    slot: Arc<Mutex<Slot>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// The answer to give, decided under the lock.
enum Plan {
    Answer(Box<ScriptedAnswer>),
    StartTransaction(u64),
    NoneLeft(String),
}

struct Shared {
    name: String,
    framing: Framing,
    slot: Arc<Mutex<Slot>>,
}

fn lock(slot: &Mutex<Slot>) -> MutexGuard<'_, Slot> {
    // Plain data: a panic while holding the lock cannot leave it inconsistent.
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

impl StandIn {
    /// Binds a listener on 127.0.0.1 with a free port (synchronously, so the route file's
    /// rewrite can point the system at it before anything runs).
    pub fn bind() -> std::io::Result<(std::net::TcpListener, SocketAddr)> {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.set_nonblocking(true)?;
        let addr = l.local_addr()?;
        Ok((l, addr))
    }

    /// Starts serving on a listener from [`StandIn::bind`].
    pub fn start(
        name: &str,
        framing: Framing,
        listener: std::net::TcpListener,
    ) -> std::io::Result<StandIn> {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let slot = Arc::new(Mutex::new(Slot::default()));
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            framing,
            slot: slot.clone(),
        });
        let router = Router::new().fallback(answer).with_state(shared);
        let (stop, mut rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await;
        });
        Ok(StandIn {
            name: name.to_owned(),
            framing,
            slot,
            stop,
            task,
        })
    }

    /// How this stand-in frames answers.
    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// Starts a new test: this script, nothing seen yet.
    pub fn reset(&self, script: Vec<ScriptedAnswer>) {
        let mut s = lock(&self.slot);
        s.generation += 1;
        s.scripted = script.len();
        s.script = script.into();
        s.seen = Seen::default();
    }

    /// What was seen since the last reset.
    pub fn seen(&self) -> Seen {
        let s = lock(&self.slot);
        let mut seen = s.seen.clone();
        seen.unused = s.script.len();
        seen
    }

    /// Stops the server (calls in flight are dropped).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        self.task.abort();
        let _ = self.task.await;
    }
}

async fn answer(State(sh): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, MAX_BODY)
        .await
        .unwrap_or_default();
    let recorded = Recorded {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| parts.uri.path().to_owned()),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
    };
    let start_transaction = sh.framing == Framing::Viss && is_start_transaction(&recorded.body);
    let (generation, plan) = {
        let mut s = lock(&sh.slot);
        let plan = if start_transaction && !s.script.front().is_some_and(|a| a.start_transaction) {
            s.transactions += 1;
            Plan::StartTransaction(s.transactions)
        } else {
            if !start_transaction {
                s.seen.requests.push(recorded);
            }
            match s.script.pop_front() {
                Some(a) => Plan::Answer(Box::new(a)),
                None => {
                    let msg = format!(
                        "no scripted answer left: system `{}` was called {} time(s), the test scripts {} answer(s)",
                        sh.name,
                        s.seen.requests.len(),
                        s.scripted
                    );
                    s.seen.problems.push(msg.clone());
                    Plan::NoneLeft(msg)
                }
            }
        };
        (s.generation, plan)
    };
    let a = match plan {
        Plan::NoneLeft(msg) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, msg).into_response();
        }
        Plan::StartTransaction(n) => {
            let body = format!(
                "<StartTransactionResponse xmlns=\"{VISS_NS}\"><StartTransactionResult>URN:IVIS:100001:ROUTE-TEST-TR-{n}</StartTransactionResult></StartTransactionResponse>"
            );
            return soap_response(SoapVersion::V12, StatusCode::OK, &body);
        }
        Plan::Answer(a) => a,
    };
    if a.timeout {
        std::future::pending::<()>().await;
    }
    if let Some(d) = a.delay {
        tokio::time::sleep(d.0).await;
    }
    match render(&sh, &a) {
        Ok(r) => r,
        Err(problem) => {
            let mut s = lock(&sh.slot);
            if s.generation == generation {
                s.seen.problems.push(problem.clone());
            }
            (StatusCode::INTERNAL_SERVER_ERROR, problem).into_response()
        }
    }
}

/// Whether a VISS request's Body holds a StartTransaction.
fn is_start_transaction(body: &[u8]) -> bool {
    let Ok(env) = soap::parse_envelope(body, MAX_BODY, 64) else {
        return false;
    };
    xml::fragment_to_local_json(env.body.as_bytes(), &xml::Limits::default())
        .is_ok_and(|v| v.get("StartTransaction").is_some())
}

fn render(sh: &Shared, a: &ScriptedAnswer) -> Result<Response, String> {
    let default_status = if a.fault.is_some() { 500 } else { 200 };
    let status = StatusCode::from_u16(a.status.unwrap_or(default_status)).map_err(|_| {
        format!(
            "system `{}`: status {} is not an HTTP status",
            sh.name,
            a.status.unwrap_or_default()
        )
    })?;
    // A scripted StartTransaction answer is a plain SOAP 1.2 answer, not a SubmitSync one.
    let framing = match sh.framing {
        Framing::Viss if a.start_transaction => Framing::Soap(SoapVersion::V12),
        f => f,
    };
    let version = match framing {
        Framing::Rest => None,
        Framing::Soap(v) => Some(v),
        Framing::Viss => Some(SoapVersion::V12),
    };
    let as_xml = |v: &Value| {
        xml::from_json(v).map_err(|e| {
            format!(
                "system `{}`: the scripted body cannot be written as XML: {e}",
                sh.name
            )
        })
    };
    let (content_type, body): (String, String) = if let Some(f) = &a.fault {
        let v = version.unwrap_or(SoapVersion::V11);
        (v.content_type(None), fault_envelope(v, f))
    } else if let Some(env) = &a.soap {
        (
            version.unwrap_or(SoapVersion::V11).content_type(None),
            env.clone(),
        )
    } else if let Some(t) = &a.text {
        ("text/plain; charset=utf-8".into(), t.clone())
    } else {
        let payload = match (&a.xml, &a.body) {
            (Some(x), _) => Some(x.clone()),
            (None, Some(b)) if version.is_some() => Some(as_xml(b)?),
            (None, Some(b)) => {
                return with_headers(
                    (
                        status,
                        [(header::CONTENT_TYPE, "application/json")],
                        b.to_string(),
                    )
                        .into_response(),
                    &a.headers,
                    &sh.name,
                );
            }
            (None, None) => None,
        };
        match (framing, payload) {
            (_, None) => (String::new(), String::new()),
            (Framing::Rest, Some(x)) => ("application/xml; charset=utf-8".into(), x),
            (Framing::Soap(v), Some(x)) => (v.content_type(None), envelope(v, &x)),
            (Framing::Viss, Some(x)) => (
                SoapVersion::V12.content_type(None),
                envelope(
                    SoapVersion::V12,
                    &format!(
                        "<SubmitSyncResponse xmlns=\"{VISS_NS}\"><SubmitSyncResult>{}</SubmitSyncResult></SubmitSyncResponse>",
                        strip_declaration(&x)
                    ),
                ),
            ),
        }
    };
    let mut resp = (status, body).into_response();
    if !content_type.is_empty()
        && let Ok(v) = HeaderValue::from_str(&content_type)
    {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    with_headers(resp, &a.headers, &sh.name)
}

fn with_headers(
    mut resp: Response,
    headers: &std::collections::BTreeMap<String, String>,
    system: &str,
) -> Result<Response, String> {
    for (k, v) in headers {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| format!("system `{system}`: `{k}` is not a header name"))?;
        let value = HeaderValue::from_str(v)
            .map_err(|_| format!("system `{system}`: the value of header `{k}` is not valid"))?;
        resp.headers_mut().insert(name, value);
    }
    Ok(resp)
}

fn soap_response(version: SoapVersion, status: StatusCode, body: &str) -> Response {
    let mut resp = (status, envelope(version, body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&version.content_type(None)) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp
}

fn envelope(version: SoapVersion, body: &str) -> String {
    soap::build_envelope(&soap::Envelope {
        version,
        header_blocks: Vec::new(),
        addressing: None,
        body,
    })
}

fn strip_declaration(x: &str) -> &str {
    let t = x.trim_start();
    if t.starts_with("<?xml")
        && let Some(end) = t.find("?>")
    {
        return &t[end + 2..];
    }
    x
}

/// The code a scripted fault names (SOAP 1.1 or 1.2 spelling).
pub fn fault_code(code: &str) -> FaultCode {
    match code {
        "Client" | "Sender" => FaultCode::Client,
        "Server" | "Receiver" => FaultCode::Server,
        "VersionMismatch" => FaultCode::VersionMismatch,
        "MustUnderstand" => FaultCode::MustUnderstand,
        "DataEncodingUnknown" => FaultCode::DataEncodingUnknown,
        other => FaultCode::Other(other.to_owned()),
    }
}

fn fault_envelope(version: SoapVersion, f: &FaultSpec) -> String {
    let qname = f.subcode.as_ref().map(|s| {
        if s.contains(':') {
            s.clone()
        } else {
            format!("sc:{s}")
        }
    });
    let sub = qname.as_deref().map(|q| Subcode {
        namespace: f.subcode_namespace.as_deref().unwrap_or(SUBCODE_NS),
        qname: q,
    });
    soap::fault_envelope_with_subcode(
        version,
        &fault_code(&f.code),
        sub.as_ref(),
        &f.reason,
        f.detail.as_deref(),
    )
}
