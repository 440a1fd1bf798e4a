//! The route-test file format (`route-tests/*.yaml`) and how it is read.
//!
//! A file holds `tests:`, each a request to one route, the scripted answers of the systems it
//! calls, and what must come out. Unknown keys are errors, as in the route file; so are a route
//! or system that the route file does not declare. Errors name the file, the line, the test
//! and what to write instead. See docs/route-tests.md.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::Value;
use tilts_adapters::amqp::Decision;
use tilts_adapters::contract::{DeliveryError, FailureKind};

use crate::config::types::Dur;
use crate::config::yaml;
use crate::diag::closest;
use crate::plan::{Ingress, Plan, Route};

/// A file of route tests.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFileDoc {
    tests: Vec<Value>,
}

/// One test case.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// What the test shows, in words (unique per route).
    pub name: String,
    /// The id of the route under test; it must exist in the route file.
    pub route: String,
    /// The request sent to tilts.
    #[serde(default)]
    pub request: RequestSpec,
    /// Per system, as written: answers (HTTP systems) or publish outcomes (brokers). Read
    /// [`Case::systems`] and [`Case::publishes`] instead.
    #[serde(default, rename = "systems")]
    pub script: BTreeMap<String, Vec<Scripted>>,
    /// Per HTTP system: its answers, in the order of the calls it gets (filled in when read).
    #[serde(skip)]
    pub systems: BTreeMap<String, Vec<ScriptedAnswer>>,
    /// Per broker (`amqp` system): the outcomes of its next publishes, in order (filled in
    /// when read).
    #[serde(skip)]
    pub publishes: BTreeMap<String, Vec<PublishOutcome>>,
    /// What tilts must answer (and, for queued routes, how delivery must end).
    pub expect: Expect,
    /// Per system: the requests tilts must have sent it, in order; `[]` means none.
    #[serde(default)]
    pub requests: BTreeMap<String, Vec<RequestExpect>>,
    /// Where the test is: file and line (filled in when read).
    #[serde(skip)]
    pub origin: Origin,
}

impl Case {
    /// `route › name`, as the output shows it.
    pub fn full_name(&self) -> String {
        format!("{} › {}", self.route, self.name)
    }
}

/// Where a test is written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// The test file.
    pub file: PathBuf,
    /// The line of the test's entry.
    pub line: u64,
}

/// The request a test sends. Give at most one of `body`, `xml`, `soap`, `text`. Routes fed by
/// a RabbitMQ queue take `amqp` instead, timer routes `timer`, and nothing else.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    /// Default: the route's method (SOAP endpoints: POST).
    pub method: Option<String>,
    /// Path with the query string. Default: the route's path, when it has no `{params}`.
    pub path: Option<String>,
    /// Request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A JSON body (`content-type: application/json`).
    pub body: Option<Value>,
    /// An XML body (`application/xml`).
    pub xml: Option<String>,
    /// A whole SOAP envelope, sent with the content type of the endpoint's SOAP version.
    pub soap: Option<String>,
    /// A body sent as it is (`text/plain` unless `headers` say otherwise).
    pub text: Option<String>,
    /// Routes with `from: amqp`: the message taken from the queue.
    pub amqp: Option<AmqpRequest>,
    /// Routes with `from: timer`: one run of the schedule.
    pub timer: Option<TimerRequest>,
}

impl RequestSpec {
    /// Whether anything but `amqp` and `timer` is given.
    fn has_http_parts(&self) -> bool {
        self.method.is_some()
            || self.path.is_some()
            || !self.headers.is_empty()
            || self.body.is_some()
            || self.xml.is_some()
            || self.soap.is_some()
            || self.text.is_some()
    }
}

/// A message a route with `from: amqp` takes from its queue. Give one of `body`, `text`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpRequest {
    /// A JSON body (content type `application/json` unless `content_type` says otherwise).
    pub body: Option<Value>,
    /// A body as it is (no content type unless `content_type` gives one: tilts then reads it
    /// as JSON, as it does such a message from the broker).
    pub text: Option<String>,
    /// The message's `content-type` property.
    pub content_type: Option<String>,
    /// The message's `message-id` property (on queued routes the idempotency key).
    pub message_id: Option<String>,
    /// Application headers (string values).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// One run of a timer route.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimerRequest {
    /// The run's time, RFC 3339 (`2026-11-28T05:00:00Z`); default: the schedule's next run
    /// after now. Sent as tilts' timer sends it: UTC, whole seconds.
    #[serde(rename = "scheduledAt")]
    pub scheduled_at: Option<String>,
}

/// One entry of a system's script: an answer of an HTTP system, or a publish outcome of a
/// broker (`confirmed`, or an answer with only `fail`).
#[derive(Debug, Clone)]
pub enum Scripted {
    /// A map: an HTTP answer, or `{ fail: ... }` for a broker.
    Answer(Box<ScriptedAnswer>),
    /// `confirmed`: the broker confirms the publish.
    Confirmed,
}

impl<'de> Deserialize<'de> for Scripted {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scripted;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "an answer such as `{ status: 200, body: {...} }`, or for a broker `confirmed` or `{ fail: connect }`",
                )
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Scripted, E> {
                if s == "confirmed" {
                    Ok(Scripted::Confirmed)
                } else {
                    Err(E::custom(format!(
                        "unknown publish outcome `{s}`: write `confirmed`, or `fail: connect`, `fail: timeout`, `fail: nack` or `fail: unroutable`"
                    )))
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Scripted, A::Error> {
                ScriptedAnswer::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|a| Scripted::Answer(Box::new(a)))
            }
        }
        d.deserialize_any(V)
    }
}

/// How a broker answers one publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishOutcome {
    /// The broker confirms it.
    Confirmed,
    /// The publish fails this way.
    Fail(PublishFailure),
}

/// A scripted publish failure, as the RabbitMQ adapter classifies the real one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishFailure {
    /// The broker is unreachable (retryable).
    Connect,
    /// No confirm within the system's timeout (retryable).
    Timeout,
    /// The broker refused to store it (retryable).
    Nack,
    /// No queue is bound for the exchange and routing key (permanent).
    Unroutable,
}

impl PublishFailure {
    /// The error the adapter gives for this failure of `system`.
    pub fn error(self, system: &str) -> DeliveryError {
        let (kind, detail) = match self {
            PublishFailure::Connect => (
                FailureKind::Connect,
                "route test: the broker is unreachable",
            ),
            PublishFailure::Timeout => (
                FailureKind::Timeout,
                "route test: the broker did not confirm the message in time",
            ),
            PublishFailure::Nack => (
                FailureKind::Connect,
                "route test: the broker refused to store the message (nack)",
            ),
            PublishFailure::Unroutable => (
                FailureKind::Request,
                "route test: no queue is bound for the exchange and routing key",
            ),
        };
        DeliveryError {
            system: system.to_owned(),
            kind,
            retry_after: None,
            detail: detail.to_owned(),
        }
    }
}

/// One scripted answer of a system. Give at most one of `body`, `xml`, `soap`, `text`,
/// `fault`; none answers an empty body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedAnswer {
    /// HTTP status; default 200 (500 with `fault`).
    pub status: Option<u16>,
    /// JSON data: sent as JSON by REST systems; written as XML (see docs/routes.md, XML as
    /// data) and wrapped like `xml` by SOAP and VISS systems.
    pub body: Option<Value>,
    /// XML: as it is from REST systems; the Body of an envelope of the system's SOAP version
    /// from SOAP systems; the SubmitSync result from VISS systems.
    pub xml: Option<String>,
    /// A whole envelope, sent as it is.
    pub soap: Option<String>,
    /// A body sent as it is (`text/plain` unless `headers` say otherwise).
    pub text: Option<String>,
    /// A SOAP Fault envelope of the system's SOAP version.
    pub fault: Option<FaultSpec>,
    /// Answer headers (they override the default content type).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Wait this long before answering.
    pub delay: Option<Dur>,
    /// Never answer: the call times out.
    #[serde(default)]
    pub timeout: bool,
    /// VISS systems: this answers the StartTransaction request (otherwise answered
    /// automatically with a transaction id).
    #[serde(default)]
    pub start_transaction: bool,
    /// Brokers only: the publish fails this way (the entry has no other key).
    pub fail: Option<PublishFailure>,
}

impl ScriptedAnswer {
    /// Whether the entry is `{ fail: ... }` and nothing else.
    fn is_only_fail(&self) -> bool {
        self.fail.is_some()
            && self.status.is_none()
            && self.body.is_none()
            && self.xml.is_none()
            && self.soap.is_none()
            && self.text.is_none()
            && self.fault.is_none()
            && self.headers.is_empty()
            && self.delay.is_none()
            && !self.timeout
            && !self.start_transaction
    }
}

/// A scripted SOAP Fault.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// `Client` (1.2 `Sender`), `Server` (1.2 `Receiver`), `VersionMismatch`,
    /// `MustUnderstand`, or another code as written.
    pub code: String,
    /// The reason text.
    pub reason: String,
    /// A subcode: `PersonNotFound` or `pr:PersonNotFound`.
    pub subcode: Option<String>,
    /// The namespace of the subcode's prefix; default `urn:x-tilts:route-tests`.
    pub subcode_namespace: Option<String>,
    /// The detail's content, an XML fragment.
    pub detail: Option<String>,
}

/// What tilts must answer (and, for queued routes, how delivery must end).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The HTTP status (required, except for AMQP messages, which get no answer).
    pub status: Option<u16>,
    /// AMQP messages: what tilts tells the broker.
    pub decision: Option<DecisionSpec>,
    /// The answer contains this (JSON: objects may have more keys, lists have the same length
    /// and each item contains the expected one; XML answers are compared as data, see
    /// docs/routes.md, with local names; SOAP answers: the Body's content).
    pub body: Option<Value>,
    /// The answer equals this (as data).
    pub body_exact: Option<Value>,
    /// Answer headers (names in any case; `application/json` matches
    /// `application/json; charset=utf-8`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Headers the answer must not have.
    #[serde(default)]
    pub absent_headers: Vec<String>,
    /// XML and SOAP answers: XPath-like path -> the first match's text (`null`: no match).
    /// SOAP answers are selected from the Envelope.
    #[serde(default)]
    pub xpath: BTreeMap<String, Value>,
    /// SOAP answers: the Fault contains this (`code`, `subcode`, `reason`, `detail`).
    pub fault: Option<Value>,
    /// Queued routes: the message was delivered.
    pub delivered: Option<bool>,
    /// Queued routes: the message became a dead letter.
    pub dead: Option<bool>,
    /// Queued routes: the number of delivery attempts.
    pub attempts: Option<u32>,
}

/// What tilts does with a message it took from a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecisionSpec {
    /// Acknowledged: done.
    Ack,
    /// Rejected: dead-lettered by the broker.
    Reject,
    /// Handed back to the queue to be tried again.
    Requeue,
}

impl DecisionSpec {
    /// The decision this names.
    pub fn decision(self) -> Decision {
        match self {
            DecisionSpec::Ack => Decision::Ack,
            DecisionSpec::Reject => Decision::Reject,
            DecisionSpec::Requeue => Decision::Requeue,
        }
    }

    /// The name written in tests for a decision.
    pub fn name_of(d: Decision) -> &'static str {
        match d {
            Decision::Ack => "ack",
            Decision::Reject => "reject",
            Decision::Requeue => "requeue",
        }
    }
}

/// A request tilts must have sent (each field a check; all optional). For a broker, a message
/// it published: `exchange`, `routing_key`, `headers`, `body`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestExpect {
    /// The method.
    pub method: Option<String>,
    /// The path and query, exactly.
    pub path: Option<String>,
    /// Headers the request has (see [`Expect::headers`]).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Headers the request must not have.
    #[serde(default)]
    pub absent_headers: Vec<String>,
    /// A JSON request contains this; an XML one, as data (local names; SOAP: the Body's
    /// content, for VISS the SubmitSync request's payload).
    pub body: Option<Value>,
    /// The request equals this (as data).
    pub body_exact: Option<Value>,
    /// XML and SOAP requests: path -> text, selected from the whole document (the Envelope).
    #[serde(default)]
    pub xpath: BTreeMap<String, Value>,
    /// Brokers: the exchange published to, exactly.
    pub exchange: Option<String>,
    /// Brokers: the routing key, exactly.
    pub routing_key: Option<String>,
}

/// Why the tests could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatError {
    /// The file.
    pub file: PathBuf,
    /// The line, when known.
    pub line: Option<u64>,
    /// The test's name (or its index when it has none), when the error is inside a test.
    pub test: Option<String>,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": error")?;
        if let Some(t) = &self.test {
            write!(f, " in test `{t}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for FormatError {}

/// The `*.yaml` and `*.yml` files of `dir`, sorted by name.
pub fn test_files(dir: &Path) -> Result<Vec<PathBuf>, FormatError> {
    let entries = std::fs::read_dir(dir).map_err(|e| FormatError {
        file: dir.to_owned(),
        line: None,
        test: None,
        message: format!(
            "cannot read the route-test folder: {e}; write tests in a route-tests/ folder next to the route file, or pass --tests DIR"
        ),
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    Ok(files)
}

/// Reads one test file and checks its tests against the plan.
pub fn read_file(path: &Path, plan: &Plan) -> Result<Vec<Case>, FormatError> {
    let err = |line: Option<u64>, test: Option<String>, message: String| FormatError {
        file: path.to_owned(),
        line,
        test,
        message,
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| err(None, None, format!("cannot read the test file: {e}")))?;
    parse(&text, path, plan)
}

/// Parses the text of a test file (`file` is named in errors and origins).
pub fn parse(text: &str, file: &Path, plan: &Plan) -> Result<Vec<Case>, FormatError> {
    let err = |line: Option<u64>, test: Option<String>, message: String| FormatError {
        file: file.to_owned(),
        line,
        test,
        message,
    };
    let located = yaml::parse(text).map_err(|e| {
        err(
            Some(e.pos.line),
            None,
            format!("YAML syntax: {}", e.message),
        )
    })?;
    if let Some((key, pos, first)) = located.duplicates.first() {
        return Err(err(
            Some(pos.line),
            None,
            format!("duplicate key `{key}` (first on line {first}): a key may appear once"),
        ));
    }
    let doc: TestFileDoc =
        serde_path_to_error::deserialize(located.value.clone()).map_err(|e| {
            err(
                Some(located.key_pos(&pointer_of(e.path())).line),
                None,
                format!(
                    "{}; a test file is `tests:` followed by a list of tests",
                    e.inner()
                ),
            )
        })?;
    let mut cases = Vec::new();
    let mut seen = HashSet::new();
    for (i, raw) in doc.tests.into_iter().enumerate() {
        let base = format!("/tests/{i}");
        let label = raw
            .get("name")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| format!("tests[{i}]"));
        let line = located.pos(&base).line;
        let mut case: Case = serde_path_to_error::deserialize(raw).map_err(|e| {
            let at = format!("{base}{}", pointer_of(e.path()));
            err(
                Some(located.key_pos(&at).line),
                Some(label.clone()),
                format!("at {}: {}", dotted(&at, &base), e.inner()),
            )
        })?;
        case.origin = Origin {
            file: file.to_owned(),
            line,
        };
        let at_line = |p: &str| Some(located.key_pos(&format!("{base}{p}")).line);
        let Some(route) = plan.route(&case.route) else {
            let hint = match closest(&case.route, plan.routes.iter().map(|r| r.id.as_str())) {
                Some(c) => format!("did you mean `{c}`?"),
                None => format!(
                    "the route file has: {}",
                    plan.routes
                        .iter()
                        .map(|r| r.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            return Err(err(
                at_line("/route"),
                Some(label),
                format!("no route `{}` in the route file; {hint}", case.route),
            ));
        };
        for (key, names) in [
            ("systems", case.script.keys().collect::<Vec<_>>()),
            ("requests", case.requests.keys().collect()),
        ] {
            for name in names {
                if !plan.systems.contains_key(name.as_str()) {
                    let hint = closest(name, plan.systems.keys().map(String::as_str))
                        .map(|c| format!("; did you mean `{c}`?"))
                        .unwrap_or_default();
                    return Err(err(
                        at_line(&format!("/{key}/{}", yaml::escape_pointer(name))),
                        Some(label),
                        format!("no system `{name}` in the route file{hint}"),
                    ));
                }
            }
        }
        check_request_kind(&case, route).map_err(|(p, m)| {
            err(
                p.map_or(Some(line), |p| at_line(&p)),
                Some(label.clone()),
                m,
            )
        })?;
        let script = std::mem::take(&mut case.script);
        for (system, entries) in script {
            let is_broker = plan
                .systems
                .get(&system)
                .is_some_and(|s| s.amqp().is_some());
            let at = |j: usize| at_line(&format!("/systems/{}/{j}", yaml::escape_pointer(&system)));
            let mut answers = Vec::new();
            let mut outcomes = Vec::new();
            for (j, entry) in entries.into_iter().enumerate() {
                match (is_broker, entry) {
                    (true, Scripted::Confirmed) => outcomes.push(PublishOutcome::Confirmed),
                    (true, Scripted::Answer(a)) => match a.fail {
                        Some(f) if a.is_only_fail() => outcomes.push(PublishOutcome::Fail(f)),
                        _ => {
                            return Err(err(
                                at(j),
                                Some(label),
                                format!(
                                    "systems.{system}[{j}]: `{system}` is a RabbitMQ broker: its script lists publish outcomes, `confirmed` or `fail: connect` (or `timeout`, `nack`, `unroutable`), nothing else"
                                ),
                            ));
                        }
                    },
                    (false, Scripted::Answer(a)) if a.fail.is_none() => answers.push(*a),
                    (false, _) => {
                        return Err(err(
                            at(j),
                            Some(label),
                            format!(
                                "systems.{system}[{j}]: `confirmed` and `fail` are publish outcomes of RabbitMQ brokers, and `{system}` is an HTTP system: script its answer, e.g. `{{ status: 200, body: {{...}} }}`"
                            ),
                        ));
                    }
                }
            }
            for (j, a) in answers.iter().enumerate() {
                let n = [
                    a.body.is_some(),
                    a.xml.is_some(),
                    a.soap.is_some(),
                    a.text.is_some(),
                    a.fault.is_some(),
                ]
                .iter()
                .filter(|b| **b)
                .count();
                if n > 1 {
                    return Err(err(
                        at(j),
                        Some(label),
                        format!("systems.{system}[{j}]: give one of body, xml, soap, text, fault"),
                    ));
                }
            }
            if is_broker {
                case.publishes.insert(system, outcomes);
            } else {
                case.systems.insert(system, answers);
            }
        }
        for (system, expected) in &case.requests {
            let is_broker = plan.systems.get(system).is_some_and(|s| s.amqp().is_some());
            for (j, e) in expected.iter().enumerate() {
                let wrong = if is_broker {
                    [
                        ("method", e.method.is_some()),
                        ("path", e.path.is_some()),
                        ("xpath", !e.xpath.is_empty()),
                    ]
                    .into_iter()
                    .find(|(_, given)| *given)
                    .map(|(k, _)| {
                        format!(
                            "requests.{system}[{j}].{k}: `{system}` is a RabbitMQ broker: check a published message with exchange, routing_key, headers, absent_headers, body, body_exact"
                        )
                    })
                } else {
                    [
                        ("exchange", e.exchange.is_some()),
                        ("routing_key", e.routing_key.is_some()),
                    ]
                    .into_iter()
                    .find(|(_, given)| *given)
                    .map(|(k, _)| {
                        format!(
                            "requests.{system}[{j}].{k}: `{k}` applies to messages published to a RabbitMQ broker, and `{system}` is an HTTP system"
                        )
                    })
                };
                if let Some(m) = wrong {
                    return Err(err(
                        at_line(&format!("/requests/{}/{j}", yaml::escape_pointer(system))),
                        Some(label),
                        m,
                    ));
                }
            }
        }
        if !seen.insert((case.route.clone(), case.name.clone())) {
            return Err(err(
                Some(line),
                Some(label),
                format!(
                    "another test of route `{}` has this name: give each test its own name",
                    case.route
                ),
            ));
        }
        cases.push(case);
    }
    Ok(cases)
}

/// Checks that the request suits the route's source (HTTP, SOAP, AMQP or timer) and that
/// `expect` asks what that source can show. On error: the pointer (relative to the test) and
/// the message.
fn check_request_kind(case: &Case, route: &Route) -> Result<(), (Option<String>, String)> {
    let r = &case.request;
    let e = &case.expect;
    match &route.ingress {
        Ingress::Amqp { system, queue, .. } => {
            let Some(m) = &r.amqp else {
                return Err((
                    Some("/request".into()),
                    format!(
                        "route `{}` takes messages from queue `{queue}` of `{}`: write the message as request.amqp, e.g. `amqp: {{ body: {{...}} }}`",
                        route.id, system.name
                    ),
                ));
            };
            if r.has_http_parts() || r.timer.is_some() {
                return Err((
                    Some("/request".into()),
                    "request.amqp is the whole request of a route fed by a queue: move headers and the body into it (amqp: { body, text, content_type, message_id, headers })".into(),
                ));
            }
            if m.body.is_some() && m.text.is_some() {
                return Err((
                    Some("/request/amqp".into()),
                    "give one of request.amqp.body, request.amqp.text".into(),
                ));
            }
            let answer_keys = [
                ("status", e.status.is_some()),
                ("body", e.body.is_some()),
                ("body_exact", e.body_exact.is_some()),
                ("headers", !e.headers.is_empty()),
                ("absent_headers", !e.absent_headers.is_empty()),
                ("xpath", !e.xpath.is_empty()),
                ("fault", e.fault.is_some()),
            ];
            if let Some((k, _)) = answer_keys.iter().find(|(_, given)| *given) {
                return Err((
                    Some(format!("/expect/{k}")),
                    format!(
                        "expect.{k}: a message from a queue gets no answer: expect `decision: ack`, `reject` or `requeue` (and `delivered`, `dead`, `attempts` on queued routes)"
                    ),
                ));
            }
            if e.decision.is_none() {
                return Err((
                    Some("/expect".into()),
                    "expect.decision is missing: say what tilts tells the broker, `ack`, `reject` or `requeue`".into(),
                ));
            }
        }
        other => {
            let timer = matches!(other, Ingress::Timer(_));
            if r.amqp.is_some() {
                return Err((
                    Some("/request/amqp".into()),
                    format!(
                        "request.amqp is for routes fed by a RabbitMQ queue, and route `{}` is not one",
                        route.id
                    ),
                ));
            }
            if e.decision.is_some() {
                return Err((
                    Some("/expect/decision".into()),
                    format!(
                        "expect.decision is for routes fed by a RabbitMQ queue, and route `{}` is not one: expect `status`",
                        route.id
                    ),
                ));
            }
            if timer {
                if r.timer.is_none() || r.has_http_parts() {
                    return Err((
                        Some("/request".into()),
                        format!(
                            "route `{}` runs on a timer: write the run as request.timer, e.g. `timer: {{ scheduledAt: \"2026-11-28T05:00:00Z\" }}`, and nothing else",
                            route.id
                        ),
                    ));
                }
                if let Some(t) = r.timer.as_ref().and_then(|t| t.scheduled_at.as_deref())
                    && t.parse::<chrono::DateTime<chrono::Utc>>().is_err()
                {
                    return Err((
                        Some("/request/timer/scheduledAt".into()),
                        format!(
                            "request.timer.scheduledAt: `{t}` is not an RFC 3339 time; write e.g. \"2026-11-28T05:00:00Z\""
                        ),
                    ));
                }
            } else if r.timer.is_some() {
                return Err((
                    Some("/request/timer".into()),
                    format!(
                        "request.timer is for routes with `from: timer`, and route `{}` is not one",
                        route.id
                    ),
                ));
            }
            if e.status.is_none() {
                return Err((
                    Some("/expect".into()),
                    "expect.status is missing: write the HTTP status tilts must answer".into(),
                ));
            }
            let bodies = [
                r.body.is_some(),
                r.xml.is_some(),
                r.soap.is_some(),
                r.text.is_some(),
            ];
            if bodies.iter().filter(|b| **b).count() > 1 {
                return Err((
                    Some("/request".into()),
                    "give one of request.body, request.xml, request.soap, request.text".into(),
                ));
            }
            if !timer && r.path.is_none() && route.path.contains('{') {
                return Err((
                    None,
                    format!(
                        "route `{}` has path parameters ({}): write request.path, e.g. the path with values filled in",
                        route.id, route.path
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn pointer_of(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut p = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => p.push_str(&format!("/{index}")),
            Segment::Map { key } => {
                p.push('/');
                p.push_str(&yaml::escape_pointer(key));
            }
            Segment::Enum { variant } => {
                p.push('/');
                p.push_str(&yaml::escape_pointer(variant));
            }
            Segment::Unknown => {}
        }
    }
    p
}

/// `/tests/0/expect/status` relative to `/tests/0` as `expect.status` (`systems.x[0]` for
/// list items).
fn dotted(pointer: &str, base: &str) -> String {
    let rest = pointer.strip_prefix(base).unwrap_or(pointer);
    let mut out = String::new();
    for seg in rest.split('/').filter(|s| !s.is_empty()) {
        if seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{seg}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&seg.replace("~1", "/").replace("~0", "~"));
        }
    }
    if out.is_empty() {
        "the test".into()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTES: &str = r#"
version: 1
systems:
  enterprise-register: { http: { url: "http://127.0.0.1:9" } }
  broker:
    amqp:
      url: "amqp://127.0.0.1:1/%2f"
      exchanges: [{ name: out, type: topic }]
      queues: [{ name: in, bindings: [{ exchange: out, routing_key: "status.#" }] }]
routes:
  - id: company-lookup
    owner: "90000038741"
    from: { http: { method: POST, path: /v1/company-lookup } }
    to: { system: enterprise-register, path: /companies }
  - id: address-lookup
    owner: "90000038741"
    from: { http: { method: GET, path: "/v1/addresses/{code}" } }
    to: { system: enterprise-register, method: GET, path: "/addresses/{{params.code}}" }
  - id: publish
    owner: "90000038741"
    from: { http: { method: POST, path: /v1/publish } }
    to: { system: broker, exchange: out, routing_key: applications.x }
  - id: consume
    owner: "90000038741"
    from: { amqp: { system: broker, queue: in } }
    delivery: queued
    to: { system: enterprise-register, path: /status }
  - id: tick
    owner: "90000038741"
    from: { timer: { cron: "0 0 5 * * *" } }
    delivery: queued
    to: { system: enterprise-register, method: GET, path: /services }
"#;

    fn plan() -> Plan {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("routes.yaml");
        std::fs::write(&file, ROUTES).unwrap();
        std::fs::create_dir(dir.path().join("mappings")).unwrap();
        crate::check::load_with_env(&file, &|_| None)
            .unwrap_or_else(|d| panic!("the test routes do not check:\n{d}"))
    }

    fn parse_err(text: &str) -> FormatError {
        parse(text, Path::new("route-tests/x.yaml"), &plan()).unwrap_err()
    }

    #[test]
    fn a_valid_file_reads_with_defaults_and_origins() {
        let text = "tests:\n  - name: found\n    route: company-lookup\n    request: { body: { regNo: \"40003521600\" } }\n    systems:\n      enterprise-register: [{ body: { name: A } }]\n    expect: { status: 200, body: { name: A } }\n";
        let cases = parse(text, Path::new("t.yaml"), &plan()).unwrap();
        assert_eq!(cases.len(), 1);
        let c = &cases[0];
        assert_eq!(c.full_name(), "company-lookup › found");
        assert_eq!(c.origin.line, 2);
        assert_eq!(c.request.method, None);
        assert_eq!(c.systems["enterprise-register"].len(), 1);
        assert_eq!(c.expect.status, Some(200));
    }

    #[test]
    fn an_unknown_field_names_file_line_test_and_place() {
        let e = parse_err(
            "tests:\n  - name: found\n    route: company-lookup\n    expect:\n      status: 200\n      bodyy: {}\n",
        );
        assert_eq!(e.file, Path::new("route-tests/x.yaml"));
        assert_eq!(e.line, Some(6));
        assert_eq!(e.test.as_deref(), Some("found"));
        assert!(
            e.message
                .starts_with("at expect.bodyy: unknown field `bodyy`"),
            "{e}"
        );
        assert!(
            e.to_string()
                .starts_with("route-tests/x.yaml:6: error in test `found`: at expect.bodyy"),
            "{e}"
        );
    }

    #[test]
    fn an_unknown_route_is_an_error_with_a_suggestion() {
        let e = parse_err(
            "tests:\n  - name: found\n    route: company-lokup\n    expect: { status: 200 }\n",
        );
        assert_eq!(e.line, Some(3));
        assert_eq!(e.test.as_deref(), Some("found"));
        assert!(e.message.contains("no route `company-lokup`"), "{e}");
        assert!(e.message.contains("did you mean `company-lookup`?"), "{e}");
    }

    #[test]
    fn an_unknown_system_is_an_error() {
        let e = parse_err(
            "tests:\n  - name: found\n    route: company-lookup\n    expect: { status: 200 }\n    requests:\n      enterprise-registr: []\n",
        );
        assert_eq!(e.line, Some(6));
        assert!(e.message.contains("no system `enterprise-registr`"), "{e}");
        assert!(
            e.message.contains("did you mean `enterprise-register`?"),
            "{e}"
        );
    }

    #[test]
    fn other_mistakes_are_errors() {
        // A route path with parameters needs request.path.
        let e = parse_err(
            "tests:\n  - name: a\n    route: address-lookup\n    expect: { status: 200 }\n",
        );
        assert!(e.message.contains("write request.path"), "{e}");
        // Two bodies.
        let e = parse_err(
            "tests:\n  - name: a\n    route: company-lookup\n    request: { body: {}, xml: \"<a/>\" }\n    expect: { status: 200 }\n",
        );
        assert!(e.message.contains("give one of request.body"), "{e}");
        // The same name twice for one route.
        let e = parse_err(
            "tests:\n  - { name: a, route: company-lookup, expect: { status: 200 } }\n  - { name: a, route: company-lookup, expect: { status: 201 } }\n",
        );
        assert_eq!(e.line, Some(3));
        assert!(
            e.message
                .contains("another test of route `company-lookup` has this name"),
            "{e}"
        );
        // A missing `expect`.
        let e = parse_err("tests:\n  - { name: a, route: company-lookup }\n");
        assert!(e.message.contains("missing field `expect`"), "{e}");
        // Not a test file at all.
        let e = parse_err("routes: []\n");
        assert!(e.message.contains("unknown field `routes`"), "{e}");
        assert_eq!(e.test, None);
        // YAML syntax.
        let e = parse_err("tests:\n  - name: [a\n");
        assert!(e.message.starts_with("YAML syntax"), "{e}");
    }
    #[test]
    fn a_broker_script_is_read_as_publish_outcomes() {
        let text = "tests:\n  - name: p\n    route: publish\n    request: { body: { a: 1 } }\n    systems:\n      broker: [confirmed, { fail: connect }, { fail: timeout }, { fail: nack }, { fail: unroutable }]\n    expect: { status: 202 }\n    requests:\n      broker:\n        - { exchange: out, routing_key: applications.x, body: { a: 1 }, headers: { x-tilts-route: publish } }\n";
        let cases = parse(text, Path::new("t.yaml"), &plan()).unwrap();
        let c = &cases[0];
        assert_eq!(
            c.publishes["broker"],
            vec![
                PublishOutcome::Confirmed,
                PublishOutcome::Fail(PublishFailure::Connect),
                PublishOutcome::Fail(PublishFailure::Timeout),
                PublishOutcome::Fail(PublishFailure::Nack),
                PublishOutcome::Fail(PublishFailure::Unroutable),
            ]
        );
        assert!(c.systems.is_empty());
        assert!(c.script.is_empty());
        let e = &c.requests["broker"][0];
        assert_eq!(e.exchange.as_deref(), Some("out"));
        assert_eq!(e.routing_key.as_deref(), Some("applications.x"));
        // The failures are classified as the adapter classifies real ones.
        use tilts_adapters::contract::Retry;
        for (f, retry) in [
            (PublishFailure::Connect, Retry::Retryable),
            (PublishFailure::Timeout, Retry::Retryable),
            (PublishFailure::Nack, Retry::Retryable),
            (PublishFailure::Unroutable, Retry::Permanent),
        ] {
            let err = f.error("broker");
            assert_eq!(err.system, "broker");
            assert_eq!(err.retry(), retry, "{f:?}");
        }
    }

    #[test]
    fn broker_and_http_scripts_are_not_mixed_up() {
        let head = "tests:\n  - name: p\n    route: publish\n    request: { body: {} }\n    expect: { status: 202 }\n";
        // An HTTP answer for a broker.
        let e = parse_err(&format!(
            "{head}    systems:\n      broker:\n        - status: 200\n"
        ));
        assert_eq!(e.line, Some(8));
        assert!(
            e.message
                .contains("systems.broker[0]: `broker` is a RabbitMQ broker"),
            "{e}"
        );
        // `fail` with another key.
        let e = parse_err(&format!(
            "{head}    systems:\n      broker:\n        - {{ fail: connect, delay: 1s }}\n"
        ));
        assert!(e.message.contains("is a RabbitMQ broker"), "{e}");
        // A publish outcome for an HTTP system.
        let e = parse_err(&format!(
            "{head}    systems:\n      enterprise-register: [confirmed]\n"
        ));
        assert!(
            e.message
                .contains("`enterprise-register` is an HTTP system"),
            "{e}"
        );
        let e = parse_err(&format!(
            "{head}    systems:\n      enterprise-register: [{{ fail: connect }}]\n"
        ));
        assert!(
            e.message
                .contains("`enterprise-register` is an HTTP system"),
            "{e}"
        );
        // Unknown outcomes.
        let e = parse_err(&format!("{head}    systems:\n      broker: [confirmd]\n"));
        assert_eq!(e.line, Some(7));
        assert!(
            e.message.contains("unknown publish outcome `confirmd`"),
            "{e}"
        );
        let e = parse_err(&format!(
            "{head}    systems:\n      broker:\n        - fail: away\n"
        ));
        assert_eq!(e.line, Some(8));
        assert!(
            e.message
                .contains("at systems.broker[0].fail: unknown variant `away`"),
            "{e}"
        );
        // Request checks of the other kind.
        let e = parse_err(&format!(
            "{head}    requests:\n      broker:\n        - path: /x\n"
        ));
        assert_eq!(e.line, Some(8));
        assert!(
            e.message
                .contains("requests.broker[0].path: `broker` is a RabbitMQ broker"),
            "{e}"
        );
        let e = parse_err(&format!(
            "{head}    requests:\n      enterprise-register:\n        - routing_key: x\n"
        ));
        assert!(
            e.message
                .contains("`routing_key` applies to messages published"),
            "{e}"
        );
    }

    #[test]
    fn an_unknown_field_in_an_answer_keeps_its_place() {
        let e = parse_err(
            "tests:\n  - name: a\n    route: company-lookup\n    systems:\n      enterprise-register:\n        - status: 200\n          bdy: {}\n    expect: { status: 200 }\n",
        );
        assert_eq!(e.line, Some(7));
        assert!(
            e.message
                .starts_with("at systems.enterprise-register[0].bdy: unknown field `bdy`"),
            "{e}"
        );
    }

    #[test]
    fn a_message_from_a_queue_is_read_and_checked() {
        let text = "tests:\n  - name: m\n    route: consume\n    request:\n      amqp: { body: { caseId: C-1 }, message_id: m-1, headers: { x-source: vsaa } }\n    expect: { decision: reject }\n";
        let cases = parse(text, Path::new("t.yaml"), &plan()).unwrap();
        let m = cases[0].request.amqp.as_ref().unwrap();
        assert_eq!(m.body, Some(serde_json::json!({"caseId": "C-1"})));
        assert_eq!(m.message_id.as_deref(), Some("m-1"));
        assert_eq!(m.headers["x-source"], "vsaa");
        assert_eq!(cases[0].expect.decision, Some(DecisionSpec::Reject));
        assert_eq!(DecisionSpec::Reject.decision(), Decision::Reject);
        assert_eq!(DecisionSpec::name_of(Decision::Requeue), "requeue");

        let route = "tests:\n  - name: m\n    route: consume\n";
        // An HTTP request for a queue's route.
        let e = parse_err(&format!(
            "{route}    request: {{ body: {{}} }}\n    expect: {{ decision: ack }}\n"
        ));
        assert_eq!(e.line, Some(4));
        assert!(
            e.message.contains(
                "takes messages from queue `in` of `broker`: write the message as request.amqp"
            ),
            "{e}"
        );
        let e = parse_err(&format!(
            "{route}    request: {{ headers: {{ a: b }}, amqp: {{ body: {{}} }} }}\n    expect: {{ decision: ack }}\n"
        ));
        assert!(
            e.message.contains("request.amqp is the whole request"),
            "{e}"
        );
        let e = parse_err(&format!(
            "{route}    request: {{ amqp: {{ body: {{}}, text: x }} }}\n    expect: {{ decision: ack }}\n"
        ));
        assert!(
            e.message
                .contains("give one of request.amqp.body, request.amqp.text"),
            "{e}"
        );
        // It gets no answer.
        let e = parse_err(&format!(
            "{route}    request: {{ amqp: {{ body: {{}} }} }}\n    expect:\n      decision: ack\n      status: 202\n"
        ));
        assert_eq!(e.line, Some(7));
        assert!(
            e.message
                .contains("expect.status: a message from a queue gets no answer"),
            "{e}"
        );
        let e = parse_err(&format!(
            "{route}    request: {{ amqp: {{ body: {{}} }} }}\n    expect: {{ delivered: true }}\n"
        ));
        assert!(e.message.contains("expect.decision is missing"), "{e}");
        let e = parse_err(&format!(
            "{route}    request: {{ amqp: {{ body: {{}} }} }}\n    expect: {{ decision: nack }}\n"
        ));
        assert!(e.message.contains("unknown variant `nack`"), "{e}");
        // A queue's message or a decision for an HTTP route.
        let e = parse_err(
            "tests:\n  - name: m\n    route: company-lookup\n    request: { amqp: { body: {} } }\n    expect: { status: 200 }\n",
        );
        assert!(
            e.message
                .contains("request.amqp is for routes fed by a RabbitMQ queue"),
            "{e}"
        );
        let e = parse_err(
            "tests:\n  - name: m\n    route: company-lookup\n    expect: { status: 200, decision: ack }\n",
        );
        assert!(
            e.message
                .contains("expect.decision is for routes fed by a RabbitMQ queue"),
            "{e}"
        );
        // An HTTP test still needs its status.
        let e =
            parse_err("tests:\n  - name: m\n    route: company-lookup\n    expect: { body: {} }\n");
        assert!(e.message.contains("expect.status is missing"), "{e}");
    }

    #[test]
    fn a_timer_run_is_read_and_checked() {
        let text = "tests:\n  - name: t\n    route: tick\n    request: { timer: { scheduledAt: \"2026-11-28T03:00:00Z\" } }\n    expect: { status: 202, delivered: true }\n  - name: u\n    route: tick\n    request: { timer: {} }\n    expect: { status: 202 }\n";
        let cases = parse(text, Path::new("t.yaml"), &plan()).unwrap();
        assert_eq!(
            cases[0]
                .request
                .timer
                .as_ref()
                .unwrap()
                .scheduled_at
                .as_deref(),
            Some("2026-11-28T03:00:00Z")
        );
        assert_eq!(cases[1].request.timer.as_ref().unwrap().scheduled_at, None);

        let e = parse_err(
            "tests:\n  - name: t\n    route: tick\n    request: { timer: { scheduledAt: \"28.11.2026 05:00\" } }\n    expect: { status: 202 }\n",
        );
        assert_eq!(e.line, Some(4));
        assert!(
            e.message
                .contains("`28.11.2026 05:00` is not an RFC 3339 time"),
            "{e}"
        );
        let e = parse_err("tests:\n  - name: t\n    route: tick\n    expect: { status: 202 }\n");
        assert!(
            e.message
                .contains("route `tick` runs on a timer: write the run as request.timer"),
            "{e}"
        );
        let e = parse_err(
            "tests:\n  - name: t\n    route: tick\n    request: { timer: {}, body: {} }\n    expect: { status: 202 }\n",
        );
        assert!(e.message.contains("runs on a timer"), "{e}");
        let e = parse_err(
            "tests:\n  - name: t\n    route: tick\n    request: { timer: { at: x } }\n    expect: { status: 202 }\n",
        );
        assert!(e.message.contains("unknown field `at`"), "{e}");
        let e = parse_err(
            "tests:\n  - name: t\n    route: company-lookup\n    request: { timer: {} }\n    expect: { status: 202 }\n",
        );
        assert!(
            e.message
                .contains("request.timer is for routes with `from: timer`"),
            "{e}"
        );
    }
}
