//! `tilts test`: route tests written in YAML beside the routes, run against the real engine.
//!
//! Contract:
//! - Tests are every `*.yaml` (and `*.yml`) file in `route-tests/` next to the route file (or
//!   another folder), in the format of [`format`] (docs/route-tests.md). A test file with an
//!   unknown key, a route or system the route file does not declare, or a YAML error is a
//!   [`SetupError`] naming the file, line and test; nothing runs then.
//! - The route file is loaded with [`check::load_with`]: every system's `http.url` points at a
//!   stand-in on 127.0.0.1 (one per system, see `standin`), `http.tls` and `http.auth` are
//!   removed, so no certificates or secrets are needed; other `${VAR}`s come from the
//!   environment as in `tilts serve`. Brokers (`amqp` systems) get a placeholder URL and are
//!   never connected to: [`AmqpHandle::capture`](crate::plan::AmqpHandle::capture) makes each
//!   a recorder before anything runs, so publishes are recorded and answered from the test's
//!   script (`confirmed` or a failure classified as the adapter classifies real ones). Queued routes retry after 20 ms (at most 200 ms) instead of
//!   their own delays, so a test of a message running out of attempts takes moments; timeouts
//!   stay those of the route file.
//! - Tests run one after another. Each gets its own tilts (the plan served by
//!   [`server::app`] on 127.0.0.1:0, so no AMQP consumer and no timer runs), a fresh in-memory
//!   store and workers when its route queues, and stand-ins and brokers reset to its script: a
//!   test never sees another's requests.
//! - HTTP and SOAP routes get the test's request over HTTP. A route fed by a queue gets the
//!   test's message through [`amqp_ingress::handle_message`](crate::amqp_ingress::handle_message)
//!   (the decision is checked; on a queued route an acknowledged message is followed until
//!   nothing is pending). A timer route gets one run, built as `timer.rs` fires it, through the
//!   route's ingress.
//! - A test passes when the answer, the delivery outcome and the requests the systems received
//!   match every expectation, no system was called beyond its script and no scripted answer was
//!   left unused. A failure prints each mismatch with the JSON pointer (or XPath, or header)
//!   where it is, what was expected and what came.
//! - Output follows `cargo test`: a line per test, the failures with their diffs, and
//!   `test result: ok. N passed, N failed`. tilts' own logs stay off.

pub mod format;
pub mod matcher;
pub mod standin;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use chrono::{DateTime, Utc};
use serde_json::Value;
use tilts_adapters::amqp::{Decision, Incoming, Outgoing};
use tilts_adapters::soap::{self, SoapVersion};
use tilts_adapters::xml;
use tokio::sync::watch;

use crate::check;
use crate::config::types::Delivery;
use crate::plan::{Capture, Ingress, Plan, Profile, Route};
use crate::server::{self, AppState};
use crate::store::{MessageFilter, MessageId, MessageState, Store};
use crate::worker::{self, WorkerOptions};
use format::{AmqpRequest, Case, DecisionSpec, FormatError, PublishOutcome, RequestExpect};
use matcher::{Mismatch, Mode};
use standin::{Framing, Recorded, StandIn};

/// How long a queued test waits for its message to be delivered or dead-lettered.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(30);
/// The retry delays of queued routes under test.
const TEST_RETRY_INITIAL: Duration = Duration::from_millis(20);
const TEST_RETRY_MAX: Duration = Duration::from_millis(200);
/// Longest body shown in a failure's "full answer" line, in characters.
const SHOWN_BODY_CHARS: usize = 600;
/// Deepest XML read from answers.
const MAX_XML_DEPTH: usize = 64;
/// The URL brokers get under test: never connected to (they record publishes instead), so no
/// `AMQP_URL` or password is needed.
const TEST_AMQP_URL: &str = "amqp://tilts-test@127.0.0.1:1/%2f";

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The route file.
    pub routes: PathBuf,
    /// The test folder; default `route-tests/` next to the route file.
    pub tests: Option<PathBuf>,
    /// Run only tests whose `route › name` contains this text.
    pub filter: Option<String>,
}

impl Options {
    /// The test folder these options name.
    pub fn tests_dir(&self) -> PathBuf {
        self.tests.clone().unwrap_or_else(|| {
            self.routes
                .parent()
                .unwrap_or(Path::new(""))
                .join("route-tests")
        })
    }
}

/// Why tests could not run at all (`tilts test` exits 2). The message starts with `error` and
/// names the file (and line and test) concerned.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The route file cannot be read or does not check.
    #[error("error: the route file {file} cannot be used:\n{diagnostics}")]
    Routes {
        /// The route file.
        file: PathBuf,
        /// Every problem, as `tilts check` prints them.
        diagnostics: String,
    },
    /// A test file cannot be read or is not valid.
    #[error("{0}")]
    Tests(#[from] FormatError),
    /// A stand-in or the runtime could not start.
    #[error("error: cannot start the test harness: {0}")]
    Harness(String),
}

/// How a run went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    /// Tests that passed.
    pub passed: usize,
    /// Tests that failed.
    pub failed: usize,
    /// Tests left out by the filter.
    pub filtered_out: usize,
}

/// Loads the routes and the tests, runs the tests and writes the report to `out`.
pub async fn run(opts: &Options, out: &mut dyn Write) -> Result<Summary, SetupError> {
    let started = Instant::now();
    let (plan, listeners) = load_plan(&opts.routes)?;
    let dir = opts.tests_dir();
    let mut cases = Vec::new();
    for file in format::test_files(&dir)? {
        cases.extend(format::read_file(&file, &plan)?);
    }
    let total = cases.len();
    if let Some(f) = &opts.filter {
        cases.retain(|c| c.full_name().contains(f.as_str()));
    }
    let mut standins = HashMap::new();
    for (name, listener) in listeners {
        let framing = match plan.systems.get(&name) {
            Some(s) => match (&s.profile, &s.soap) {
                (Some(Profile::Viss { .. }), _) => Framing::Viss,
                (_, Some(soap)) => Framing::Soap(soap.version),
                _ => Framing::Rest,
            },
            None => Framing::Rest,
        };
        let s = StandIn::start(&name, framing, listener)
            .map_err(|e| SetupError::Harness(format!("a stand-in for `{name}`: {e}")))?;
        standins.insert(name, s);
    }
    // Brokers record what routes publish and answer as each test scripts; none is connected.
    let brokers: BTreeMap<String, Arc<Capture>> = plan
        .systems
        .iter()
        .filter_map(|(name, s)| s.amqp().map(|a| (name.clone(), a.capture())))
        .collect();
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(plan.settings.route_timeout.0 + Duration::from_secs(10))
        .build()
        .map_err(|e| SetupError::Harness(format!("the HTTP client: {e}")))?;
    let ctx = Ctx {
        plan: Arc::new(plan),
        standins,
        brokers,
        http,
    };

    let _ = writeln!(
        out,
        "\nrunning {} route test{} from {}",
        cases.len(),
        if cases.len() == 1 { "" } else { "s" },
        dir.display()
    );
    let mut summary = Summary {
        filtered_out: total - cases.len(),
        ..Summary::default()
    };
    let mut failures: Vec<(&Case, Vec<String>)> = Vec::new();
    for case in &cases {
        let _ = write!(out, "test {} ... ", case.full_name());
        let _ = out.flush();
        let problems = ctx.run_case(case).await;
        if problems.is_empty() {
            summary.passed += 1;
            let _ = writeln!(out, "ok");
        } else {
            summary.failed += 1;
            let _ = writeln!(out, "FAILED");
            failures.push((case, problems));
        }
        let _ = out.flush();
    }
    if !failures.is_empty() {
        let _ = writeln!(out, "\nfailures:\n");
        for (case, lines) in &failures {
            let _ = writeln!(
                out,
                "---- {} ({}:{}) ----",
                case.full_name(),
                case.origin.file.display(),
                case.origin.line
            );
            for l in lines {
                let _ = writeln!(out, "{l}");
            }
            let _ = writeln!(out);
        }
        let _ = writeln!(out, "failures:");
        for (case, _) in &failures {
            let _ = writeln!(out, "    {}", case.full_name());
        }
    }
    let _ = writeln!(
        out,
        "\ntest result: {}. {} passed, {} failed; {} filtered out; finished in {:.2}s\n",
        if summary.failed == 0 { "ok" } else { "FAILED" },
        summary.passed,
        summary.failed,
        summary.filtered_out,
        started.elapsed().as_secs_f64()
    );
    for (_, s) in ctx.standins {
        s.stop().await;
    }
    Ok(summary)
}

/// Loads the route file with every system pointed at a stand-in listener bound here.
fn load_plan(path: &Path) -> Result<(Plan, Vec<(String, std::net::TcpListener)>), SetupError> {
    let bound = std::cell::RefCell::new(Vec::new());
    let bind_error = std::cell::RefCell::new(None);
    let rewrite = |root: &mut Value| {
        let Some(systems) = root.get_mut("systems").and_then(Value::as_object_mut) else {
            return;
        };
        for (name, sys) in systems.iter_mut() {
            if let Some(amqp) = sys.get_mut("amqp").and_then(Value::as_object_mut) {
                amqp.insert("url".into(), Value::String(TEST_AMQP_URL.into()));
                continue;
            }
            let Some(http) = sys.get_mut("http").and_then(Value::as_object_mut) else {
                continue;
            };
            match StandIn::bind() {
                Ok((listener, addr)) => {
                    http.insert("url".into(), Value::String(format!("http://{addr}")));
                    http.remove("tls");
                    http.remove("auth");
                    bound.borrow_mut().push((name.clone(), listener));
                }
                Err(e) => *bind_error.borrow_mut() = Some(format!("{name}: {e}")),
            }
        }
    };
    let loaded = check::load_with(path, &|k| std::env::var(k).ok(), &rewrite);
    if let Some(e) = bind_error.into_inner() {
        return Err(SetupError::Harness(format!(
            "cannot bind a stand-in for {e}"
        )));
    }
    let mut plan = loaded.map_err(|d| SetupError::Routes {
        file: path.to_owned(),
        diagnostics: d.to_string(),
    })?;
    for route in &mut plan.routes {
        // Freshly compiled, so nothing else holds the route yet.
        if let Some(r) = Arc::get_mut(route) {
            r.retry.initial = TEST_RETRY_INITIAL;
            r.retry.max_delay = TEST_RETRY_MAX;
            r.retry.jitter = false;
        }
    }
    Ok((plan, bound.into_inner()))
}

/// Everything the tests share.
struct Ctx {
    plan: Arc<Plan>,
    standins: HashMap<String, StandIn>,
    /// Per broker: the recorder its publishes go to.
    brokers: BTreeMap<String, Arc<Capture>>,
    http: reqwest::Client,
}

/// What the route under test gave back.
enum Reply {
    /// An HTTP answer (HTTP, SOAP and timer sources).
    Answer(Answer),
    /// What tilts told the broker (AMQP sources).
    Decision(Decision),
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain data: a panic while holding the lock cannot leave it inconsistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// tilts' answer to a test's request.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: bytes::Bytes,
}

impl Answer {
    fn content_type(&self) -> &str {
        self.headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// How a queued message ended.
struct Outcome {
    state: Option<MessageState>,
    attempts: u32,
    last_error: Option<String>,
}

impl Ctx {
    /// Runs one test; returns the lines describing what failed (empty: passed).
    async fn run_case(&self, case: &Case) -> Vec<String> {
        let Some(route) = self.plan.route(&case.route).cloned() else {
            return vec![format!("  no route `{}`", case.route)];
        };
        for (name, s) in &self.standins {
            s.reset(case.systems.get(name).cloned().unwrap_or_default());
        }
        for (name, c) in &self.brokers {
            lock(&c.published).clear();
            *lock(&c.script) = case
                .publishes
                .get(name)
                .map(|outcomes| {
                    outcomes
                        .iter()
                        .map(|o| match o {
                            PublishOutcome::Confirmed => None,
                            PublishOutcome::Fail(f) => Some(f.error(name)),
                        })
                        .collect()
                })
                .unwrap_or_default();
        }
        let queues = route.delivery == Delivery::Queued || route.fallback_queue;
        let store = if queues {
            match Store::open("sqlite::memory:").await {
                Ok(s) => Some(s),
                Err(e) => return vec![format!("  cannot open a temporary store: {e}")],
            }
        } else {
            None
        };
        let (stop, stop_rx) = watch::channel(false);
        let workers = store.as_ref().map(|s| {
            tokio::spawn(worker::run(
                s.clone(),
                self.plan.clone(),
                WorkerOptions {
                    worker_id: "tilts-test".into(),
                    concurrency: 4,
                    lease: Duration::from_secs(60),
                    poll_interval: Duration::from_millis(10),
                    batch: 8,
                },
                stop_rx.clone(),
            ))
        });
        // Served with `server::app` only: AMQP consumers and timers are not started.
        let (router, state) = server::app(self.plan.clone(), store.clone());
        let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => return vec![format!("  cannot listen on 127.0.0.1: {e}")],
        };
        let addr = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => return vec![format!("  cannot listen on 127.0.0.1: {e}")],
        };
        let mut rx = stop_rx.clone();
        let tilts = tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await;
        });

        let mut problems = Vec::new();
        let reply = match &route.ingress {
            Ingress::Amqp { queue, .. } => Ok(Reply::Decision(
                crate::amqp_ingress::handle_message(
                    state.clone(),
                    route.clone(),
                    incoming(case.request.amqp.clone().unwrap_or_default(), queue),
                )
                .await,
            )),
            Ingress::Timer(sched) => fire(case, &state, &route, sched).await.map(Reply::Answer),
            Ingress::Http | Ingress::Soap(_) => self
                .send(case, &route, &format!("http://{addr}"))
                .await
                .map(Reply::Answer),
        };
        let reply = match reply {
            Ok(r) => Some(r),
            Err(e) => {
                problems.push(format!("  request: {e}"));
                None
            }
        };
        let delivery = match (&reply, &store) {
            (Some(Reply::Answer(a)), Some(store)) if a.status == 202 => {
                Some(wait_delivery(store, a).await)
            }
            (Some(Reply::Decision(Decision::Ack)), Some(store)) => {
                Some(self.wait_settled(store).await)
            }
            _ => None,
        };

        let _ = stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(15), tilts).await;
        if let Some(w) = workers {
            let _ = tokio::time::timeout(Duration::from_secs(15), w).await;
        }
        if let Some(s) = store {
            s.close().await;
        }

        match &reply {
            Some(Reply::Answer(a)) => problems.extend(check_answer(case, &route, a)),
            Some(Reply::Decision(d)) => problems.extend(check_decision(case, *d)),
            None => {}
        }
        problems.extend(check_delivery(case, delivery.as_ref()));
        problems.extend(self.check_requests(case));
        if !problems.is_empty() {
            match &reply {
                Some(Reply::Answer(a)) => problems.push(format!(
                    "  (full answer: {} {})",
                    a.status,
                    shorten(&String::from_utf8_lossy(&a.body))
                )),
                Some(Reply::Decision(d)) => {
                    problems.push(format!("  (decision: {})", DecisionSpec::name_of(*d)))
                }
                None => {}
            }
        }
        problems
    }

    /// Waits until nothing is pending in the test's store (an acknowledged message from a
    /// queue was delivered or dead-lettered), then reports on that message. Its id is found
    /// where it went: the `X-Tilts-Message-Id` of a request a stand-in received, the message
    /// id of a publish, or the dead letters.
    async fn wait_settled(&self, store: &Store) -> Outcome {
        let deadline = Instant::now() + DELIVERY_DEADLINE;
        loop {
            match store.counts().await {
                Ok(c) if c.pending == 0 && c.delivered + c.dead + c.discarded == 0 => {
                    return Outcome {
                        state: None,
                        attempts: 0,
                        last_error: Some("the acknowledged message is not in the store".into()),
                    };
                }
                Ok(c) if c.pending == 0 => break,
                Ok(_) if Instant::now() < deadline => {}
                Ok(_) => break,
                Err(e) => {
                    return Outcome {
                        state: None,
                        attempts: 0,
                        last_error: Some(format!("the store cannot be read: {e}")),
                    };
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut ids: Vec<String> = Vec::new();
        for s in self.standins.values() {
            for r in s.seen().requests {
                ids.extend(
                    r.headers
                        .iter()
                        .filter(|(k, _)| k == "x-tilts-message-id")
                        .map(|(_, v)| v.clone()),
                );
            }
        }
        for c in self.brokers.values() {
            ids.extend(lock(&c.published).iter().map(|m| m.message_id.clone()));
        }
        if let Ok(dead) = store.dead_letters(&MessageFilter::default()).await {
            ids.extend(dead.iter().map(|m| m.id.to_string()));
        }
        for id in ids.iter().filter_map(|i| i.parse::<MessageId>().ok()) {
            if let Ok(Some(v)) = store.get(id).await {
                return Outcome {
                    state: Some(v.meta.state),
                    attempts: v.meta.attempts,
                    last_error: v.meta.last_error_text.clone(),
                };
            }
        }
        Outcome {
            state: None,
            attempts: 0,
            last_error: Some(
                "the stored message was neither sent to a system nor dead-lettered".into(),
            ),
        }
    }

    async fn send(&self, case: &Case, route: &Route, base: &str) -> Result<Answer, String> {
        let r = &case.request;
        let method = match &r.method {
            Some(m) => reqwest::Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                .map_err(|_| format!("`{m}` is not an HTTP method"))?,
            None => match route.ingress {
                Ingress::Soap(_) => reqwest::Method::POST,
                _ => route.method.clone(),
            },
        };
        let path = r.path.clone().unwrap_or_else(|| route.path.clone());
        let mut req = self.http.request(method, format!("{base}{path}"));
        let (content_type, body): (Option<String>, Option<Vec<u8>>) = if let Some(b) = &r.body {
            (
                Some("application/json".into()),
                Some(b.to_string().into_bytes()),
            )
        } else if let Some(x) = &r.xml {
            (Some("application/xml".into()), Some(x.clone().into_bytes()))
        } else if let Some(s) = &r.soap {
            let version = match &route.ingress {
                Ingress::Soap(s) => s.version,
                _ => SoapVersion::V11,
            };
            (
                Some(version.content_type(None)),
                Some(s.clone().into_bytes()),
            )
        } else if let Some(t) = &r.text {
            (Some("text/plain".into()), Some(t.clone().into_bytes()))
        } else {
            (None, None)
        };
        let has_ct = r
            .headers
            .keys()
            .any(|k| k.eq_ignore_ascii_case("content-type"));
        if let (Some(ct), false) = (content_type, has_ct) {
            req = req.header(reqwest::header::CONTENT_TYPE, ct);
        }
        for (k, v) in &r.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| format!("tilts did not answer: {e}"))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .bytes()
            .await
            .map_err(|e| format!("tilts' answer could not be read: {e}"))?;
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    fn check_requests(&self, case: &Case) -> Vec<String> {
        let mut out = Vec::new();
        let mut names: Vec<&String> = self.standins.keys().collect();
        names.sort();
        for name in names {
            let s = &self.standins[name];
            let seen = s.seen();
            for p in &seen.problems {
                out.push(format!("  systems.{name}: {p}"));
            }
            if seen.unused > 0 {
                out.push(format!(
                    "  systems.{name}: {} scripted answer(s) were not used: the route called `{name}` {} time(s)",
                    seen.unused,
                    seen.requests.len()
                ));
            }
            let Some(expected) = case.requests.get(name) else {
                continue;
            };
            if expected.len() != seen.requests.len() {
                out.push(format!(
                    "  requests.{name}: `{name}` got {} request(s), the test expects {}",
                    seen.requests.len(),
                    expected.len()
                ));
                for r in &seen.requests {
                    out.push(format!("    + {} {}", r.method, r.path));
                }
            }
            for (i, (e, r)) in expected.iter().zip(&seen.requests).enumerate() {
                let section = format!("requests.{name}[{i}]");
                out.extend(check_request(&section, e, r, s.framing()));
            }
        }
        for (name, c) in &self.brokers {
            let published = lock(&c.published).clone();
            let unused = lock(&c.script).len();
            if unused > 0 {
                out.push(format!(
                    "  systems.{name}: {unused} scripted publish outcome(s) were not used: the route published to `{name}` {} time(s)",
                    published.len()
                ));
            }
            let Some(expected) = case.requests.get(name) else {
                continue;
            };
            if expected.len() != published.len() {
                out.push(format!(
                    "  requests.{name}: `{name}` got {} published message(s), the test expects {}",
                    published.len(),
                    expected.len()
                ));
                for m in &published {
                    out.push(format!(
                        "    + exchange `{}`, routing key `{}`",
                        m.exchange, m.routing_key
                    ));
                }
            }
            for (i, (e, m)) in expected.iter().zip(&published).enumerate() {
                out.extend(check_publish(&format!("requests.{name}[{i}]"), e, m));
            }
        }
        out
    }
}

/// The message a test of a route fed by `queue` takes from it: a JSON `body` is
/// `application/json` unless `content_type` says otherwise; `text` has only the content type
/// given.
fn incoming(m: AmqpRequest, queue: &str) -> Incoming {
    let (body, content_type) = match (&m.body, &m.text) {
        (Some(b), _) => (
            b.to_string().into_bytes(),
            Some(
                m.content_type
                    .clone()
                    .unwrap_or_else(|| "application/json".into()),
            ),
        ),
        (None, Some(t)) => (t.clone().into_bytes(), m.content_type.clone()),
        (None, None) => (Vec::new(), m.content_type.clone()),
    };
    Incoming {
        body: body.into(),
        content_type,
        message_id: m.message_id.clone(),
        headers: m.headers.into_iter().collect(),
        redelivered: false,
        routing_key: queue.to_owned(),
        exchange: String::new(),
        delivery_count: None,
    }
}

/// Runs one run of a timer route as tilts' timer fires it: `POST {"scheduledAt": ...}` with
/// the idempotency key `timer:<route>:<scheduledAt>`, through the route's ingress.
async fn fire(
    case: &Case,
    state: &Arc<AppState>,
    route: &Arc<Route>,
    sched: &crate::plan::TimerSchedule,
) -> Result<Answer, String> {
    let given = case
        .request
        .timer
        .as_ref()
        .and_then(|t| t.scheduled_at.as_deref());
    let at: DateTime<Utc> = match given {
        Some(t) => t
            .parse()
            .map_err(|e| format!("request.timer.scheduledAt `{t}` is not an RFC 3339 time: {e}"))?,
        None => crate::timer::next_after(sched, Utc::now()).ok_or_else(|| {
            "the schedule has no future run: write request.timer.scheduledAt".to_string()
        })?,
    };
    let scheduled = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let req = http::Request::builder()
        .method(http::Method::POST)
        .uri("/")
        .header(http::header::CONTENT_TYPE, "application/json")
        .header("idempotency-key", format!("timer:{}:{scheduled}", route.id))
        .body(Body::from(
            serde_json::json!({ "scheduledAt": scheduled }).to_string(),
        ))
        .map_err(|e| format!("the timer's request cannot be built: {e}"))?;
    let resp = server::handle(state.clone(), route.clone(), req).await;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .map_err(|e| format!("tilts' answer could not be read: {e}"))?;
    Ok(Answer {
        status,
        headers,
        body,
    })
}

fn check_decision(case: &Case, d: Decision) -> Vec<String> {
    match case.expect.decision {
        Some(want) if want.decision() != d => vec![
            "  expect.decision:".into(),
            format!("    - expected: {}", DecisionSpec::name_of(want.decision())),
            format!("    + actual:   {}", DecisionSpec::name_of(d)),
        ],
        _ => Vec::new(),
    }
}

/// Checks a message published to a broker: exchange, routing key, headers (the content type
/// as `content-type`) and body.
fn check_publish(section: &str, e: &RequestExpect, m: &Outgoing) -> Vec<String> {
    let mut out = Vec::new();
    for (key, want, got) in [
        ("exchange", &e.exchange, &m.exchange),
        ("routing_key", &e.routing_key, &m.routing_key),
    ] {
        if let Some(w) = want
            && w != got
        {
            out.push(format!("  {section}.{key}:"));
            out.push(format!("    - expected: {w}"));
            out.push(format!("    + actual:   {got}"));
        }
    }
    let mut headers = m.headers.clone();
    if !m.content_type.is_empty() {
        headers.push(("content-type".into(), m.content_type.clone()));
    }
    out.extend(check_headers(
        section,
        &e.headers,
        &e.absent_headers,
        &headers,
    ));
    if e.body.is_some() || e.body_exact.is_some() {
        match data_of(&m.content_type, &m.body, false, false) {
            Ok(actual) => out.extend(check_body(section, &e.body, &e.body_exact, &actual)),
            Err(msg) => out.push(format!("  {section}.body: {msg}")),
        }
    }
    out
}

/// Waits until the message of a 202 answer is delivered or dead (or the deadline passes).
async fn wait_delivery(store: &Store, a: &Answer) -> Outcome {
    let id = a
        .headers
        .get("x-tilts-message-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| {
            serde_json::from_slice::<Value>(&a.body)
                .ok()?
                .get("messageId")?
                .as_str()
                .map(str::to_owned)
        })
        .and_then(|s| s.parse::<MessageId>().ok());
    let Some(id) = id else {
        return Outcome {
            state: None,
            attempts: 0,
            last_error: Some("the 202 answer names no message id".into()),
        };
    };
    let deadline = Instant::now() + DELIVERY_DEADLINE;
    loop {
        let view = store.get(id).await;
        let (state, attempts, last_error) = match &view {
            Ok(Some(v)) => (
                Some(v.meta.state),
                v.meta.attempts,
                v.meta.last_error_text.clone(),
            ),
            Ok(None) => (None, 0, Some("the message is not in the store".into())),
            Err(e) => (None, 0, Some(format!("the store cannot be read: {e}"))),
        };
        let done = !matches!(state, Some(MessageState::Pending));
        if done || Instant::now() >= deadline {
            return Outcome {
                state,
                attempts,
                last_error,
            };
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn check_delivery(case: &Case, d: Option<&Outcome>) -> Vec<String> {
    let e = &case.expect;
    if e.delivered.is_none() && e.dead.is_none() && e.attempts.is_none() {
        return Vec::new();
    }
    let Some(d) = d else {
        return vec!["  expect.delivered: no message was queued (the answer was not 202, or the message was not acknowledged, on a queued route)".into()];
    };
    let mut out = Vec::new();
    let state = d.state.map(|s| s.as_str()).unwrap_or("unknown");
    let mut flag = |key: &str, want: Option<bool>, is: bool| {
        if let Some(w) = want
            && w != is
        {
            out.push(format!("  expect.{key}:"));
            out.push(format!("    - expected: {key}: {w}"));
            out.push(format!(
                "    + actual:   the message is {state} after {} attempt(s){}",
                d.attempts,
                d.last_error
                    .as_deref()
                    .map(|t| format!(" (last error: {t})"))
                    .unwrap_or_default()
            ));
        }
    };
    flag(
        "delivered",
        e.delivered,
        d.state == Some(MessageState::Delivered),
    );
    flag("dead", e.dead, d.state == Some(MessageState::Dead));
    if let Some(n) = e.attempts
        && n != d.attempts
    {
        out.push("  expect.attempts:".into());
        out.push(format!("    - expected: {n}"));
        out.push(format!(
            "    + actual:   {} (the message is {state})",
            d.attempts
        ));
    }
    out
}

fn check_answer(case: &Case, route: &Route, a: &Answer) -> Vec<String> {
    let e = &case.expect;
    let mut out = Vec::new();
    if let Some(want) = e.status
        && want != a.status
    {
        out.push("  expect.status:".into());
        out.push(format!("    - expected: {want}"));
        out.push(format!("    + actual:   {}", a.status));
    }
    let headers: Vec<(String, String)> = a
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    out.extend(check_headers(
        "expect",
        &e.headers,
        &e.absent_headers,
        &headers,
    ));
    let soap = matches!(route.ingress, Ingress::Soap(_));
    if e.body.is_some() || e.body_exact.is_some() {
        match data_of(a.content_type(), &a.body, soap, false) {
            Ok(actual) => out.extend(check_body("expect", &e.body, &e.body_exact, &actual)),
            Err(msg) => out.push(format!("  expect.body: {msg}")),
        }
    }
    if !e.xpath.is_empty() {
        out.extend(check_xpath("expect.xpath", &e.xpath, &a.body));
    }
    if let Some(want) = &e.fault {
        match soap::parse_envelope(&a.body, usize::MAX, MAX_XML_DEPTH) {
            Ok(env) => match env.fault {
                Some(f) => render_all(
                    &mut out,
                    "expect.fault",
                    &matcher::compare(want, &f.to_json(), Mode::Subset),
                ),
                None => {
                    out.push("  expect.fault: the answer is an envelope without a Fault".into())
                }
            },
            Err(err) => out.push(format!(
                "  expect.fault: the answer is not a SOAP envelope: {err}"
            )),
        }
    }
    out
}

fn check_request(section: &str, e: &RequestExpect, r: &Recorded, framing: Framing) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(m) = &e.method
        && !m.eq_ignore_ascii_case(&r.method)
    {
        out.push(format!("  {section}.method:"));
        out.push(format!("    - expected: {m}"));
        out.push(format!("    + actual:   {}", r.method));
    }
    if let Some(p) = &e.path
        && *p != r.path
    {
        out.push(format!("  {section}.path:"));
        out.push(format!("    - expected: {p}"));
        out.push(format!("    + actual:   {}", r.path));
    }
    out.extend(check_headers(
        section,
        &e.headers,
        &e.absent_headers,
        &r.headers,
    ));
    if e.body.is_some() || e.body_exact.is_some() {
        let ct = r
            .headers
            .iter()
            .find(|(k, _)| k == "content-type")
            .map(|(_, v)| v.as_str())
            .unwrap_or("");
        let soap = framing != Framing::Rest;
        match data_of(ct, &r.body, soap, framing == Framing::Viss) {
            Ok(actual) => out.extend(check_body(section, &e.body, &e.body_exact, &actual)),
            Err(msg) => out.push(format!("  {section}.body: {msg}")),
        }
    }
    if !e.xpath.is_empty() {
        out.extend(check_xpath(&format!("{section}.xpath"), &e.xpath, &r.body));
    }
    out
}

fn check_headers(
    section: &str,
    want: &std::collections::BTreeMap<String, String>,
    absent: &[String],
    actual: &[(String, String)],
) -> Vec<String> {
    let mut out = Vec::new();
    let get = |name: &str| {
        actual
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    for (k, v) in want {
        let got = get(k);
        if !got.is_some_and(|g| matcher::header_matches(v, g)) {
            out.push(format!("  {section}.headers: {}", k.to_ascii_lowercase()));
            out.push(format!("    - expected: {v}"));
            out.push(format!("    + actual:   {}", got.unwrap_or("(missing)")));
        }
    }
    for k in absent {
        if let Some(g) = get(k) {
            out.push(format!(
                "  {section}.absent_headers: {}",
                k.to_ascii_lowercase()
            ));
            out.push("    - expected: (absent)".into());
            out.push(format!("    + actual:   {g}"));
        }
    }
    out
}

fn check_body(
    section: &str,
    subset: &Option<Value>,
    exact: &Option<Value>,
    actual: &Value,
) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(want) = subset {
        render_all(
            &mut out,
            &format!("{section}.body"),
            &matcher::compare(want, actual, Mode::Subset),
        );
    }
    if let Some(want) = exact {
        render_all(
            &mut out,
            &format!("{section}.body_exact"),
            &matcher::compare(want, actual, Mode::Exact),
        );
    }
    out
}

fn check_xpath(
    section: &str,
    want: &std::collections::BTreeMap<String, Value>,
    body: &[u8],
) -> Vec<String> {
    let mut out = Vec::new();
    match xml::to_json(body, &xml::Limits::default()) {
        Ok(doc) => render_all(&mut out, section, &matcher::check_xpaths(&doc, want)),
        Err(e) => out.push(format!("  {section}: the body is not XML: {e}")),
    }
    out
}

/// A body as data: JSON as it is; XML read as data with local names (SOAP: the Body's
/// content; VISS requests: the SubmitSync request's payload); other text as a string.
fn data_of(content_type: &str, body: &[u8], soap: bool, viss: bool) -> Result<Value, String> {
    if body.is_empty() {
        return Ok(Value::Null);
    }
    let ct = content_type.to_ascii_lowercase();
    if ct.contains("json") {
        return serde_json::from_slice(body)
            .map_err(|e| format!("the body is not the JSON its content type says: {e}"));
    }
    if ct.contains("xml") {
        let limits = xml::Limits::default();
        if soap && let Ok(env) = soap::parse_envelope(body, usize::MAX, MAX_XML_DEPTH) {
            let v = xml::fragment_to_local_json(env.body.as_bytes(), &limits)
                .map_err(|e| format!("the SOAP Body is not readable XML: {e}"))?;
            if viss && let Some(payload) = v.pointer("/SubmitSync/request") {
                return Ok(payload.clone());
            }
            return Ok(v);
        }
        return xml::to_local_json(body, &limits)
            .map_err(|e| format!("the body is not readable XML: {e}"));
    }
    Ok(Value::String(String::from_utf8_lossy(body).into_owned()))
}

fn render_all(out: &mut Vec<String>, section: &str, ms: &[Mismatch]) {
    for m in ms {
        let at = if m.at.is_empty() {
            "the whole value".to_owned()
        } else {
            m.at.clone()
        };
        out.push(format!("  {section}: at {at}"));
        if let Some(n) = &m.note {
            out.push(format!("    ({n})"));
        }
        let show = |v: &Option<Value>| match v {
            Some(v) => shorten(&v.to_string()),
            None => "(missing)".into(),
        };
        if m.expected.is_some() || m.actual.is_some() {
            out.push(format!(
                "    - expected: {}",
                match &m.expected {
                    Some(v) => shorten(&v.to_string()),
                    None => "(absent)".into(),
                }
            ));
            out.push(format!("    + actual:   {}", show(&m.actual)));
        }
    }
}

fn shorten(s: &str) -> String {
    match s.char_indices().nth(SHOWN_BODY_CHARS) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_message_is_built_as_the_broker_would_deliver_it() {
        let json = incoming(
            AmqpRequest {
                body: Some(serde_json::json!({"caseId": "VPVKAC-2026-000123"})),
                message_id: Some("m-1".into()),
                headers: [("x-source".to_string(), "vsaa".to_string())].into(),
                ..AmqpRequest::default()
            },
            "tilts.status",
        );
        assert_eq!(&json.body[..], br#"{"caseId":"VPVKAC-2026-000123"}"#);
        assert_eq!(json.content_type.as_deref(), Some("application/json"));
        assert_eq!(json.message_id.as_deref(), Some("m-1"));
        assert_eq!(json.headers, vec![("x-source".into(), "vsaa".into())]);
        assert_eq!(json.routing_key, "tilts.status");
        assert!(!json.redelivered);

        let text = incoming(
            AmqpRequest {
                text: Some("<a/>".into()),
                ..AmqpRequest::default()
            },
            "q",
        );
        assert_eq!(&text.body[..], b"<a/>");
        assert_eq!(text.content_type, None);
        assert_eq!(text.message_id, None);

        let typed = incoming(
            AmqpRequest {
                text: Some("<a/>".into()),
                content_type: Some("application/xml".into()),
                ..AmqpRequest::default()
            },
            "q",
        );
        assert_eq!(typed.content_type.as_deref(), Some("application/xml"));
    }
}
