//! Durability tests with the real `tilts` binary and the queued route `application-forward`
//! (`POST /v1/applications/forward`, 202 after the commit, delivered by workers to the
//! social-services simulator running in this test process).
//!
//! - `two_processes_share_one_postgres`: two `tilts serve` processes on one PostgreSQL schema
//!   deliver 10,000 messages, none lost, none delivered twice.
//! - `kill_9_under_load_loses_nothing::{sqlite, postgres}`: `kill -9` of the only process several
//!   times while a producer sends; every accepted message is delivered in the end, and the
//!   messages delivered twice are counted (and bounded by what was in flight at the kills).
//! - `postgres_restart_under_load_loses_nothing`: the same with PostgreSQL restarted under load;
//!   the ingress answers 503 while it is down, never 202.
//!
//! The PostgreSQL tests use a schema of their own in the database at `TILTS_TEST_DATABASE_URL`
//! (dropped afterwards); they print "skipped" when it is not set and fail when it is set but the
//! database is unreachable. The restart test runs `pg_ctlcluster` for the one cluster under
//! `/etc/postgresql` (root only) and starts it again at the end, also when the test fails.
//!
//! Counting: the simulator deduplicates cases on `X-Tilts-Message-Id`, so these tests count the
//! raw requests it recorded per message id, not its cases. A crashed process leaves its claimed
//! messages leased for the worker lease (`server.lease`; these tests run the shipped routes with
//! a short lease, [`LEASE`]), so after a crash the last messages arrive once that lease expires.
//!
//! Run with `cargo test --test durability -- --test-threads=1 --nocapture` to see the figures.

mod common;

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Launch, Tilts, client};
use serde_json::{Value, json};
use tilts_adapters::ident::PersonalCode;
use tilts_adapters::sim::{SimServer, Simulators};
use tilts_engine::store::{MessageId, Store};

/// The queued route's path in the shipped routes.yaml.
const FORWARD: &str = "/v1/applications/forward";

/// Deliveries in flight per process (`server.workers`, which these tests set; the shipped
/// default is 128): at most this many deliveries can have reached the receiver without their
/// commit when a process dies, so it bounds the duplicates a kill can cause.
const WORKERS: usize = 32;

/// The worker lease these tests configure (`server.lease`; the shipped default is 2m): how long a
/// dead process's claimed messages wait before another worker takes them. Longer than every
/// system's timeout in routes.yaml (at most 5s), as `tilts check` requires.
const LEASE: Duration = Duration::from_secs(8);

/// These tests load the machine, kill processes and restart PostgreSQL: they run one at a
/// time even when the test harness runs tests in parallel.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

/// The shipped routes.yaml with the short [`LEASE`], written once per test process.
fn routes() -> &'static std::path::Path {
    static CONFIG: std::sync::OnceLock<common::TempConfig> = std::sync::OnceLock::new();
    &CONFIG
        .get_or_init(|| {
            common::shipped_with(&[(
                "  route_timeout: 30s\n",
                &format!("  route_timeout: 30s\n  lease: 8s\n  workers: {WORKERS}\n"),
            )])
        })
        .path
}

/// The simulator remembers at most this many requests (older ones are dropped).
const SIM_MAX_RECORDED: usize = 10_000;

/// A valid personal code (a fixture of the adapters' tests).
const PERSONAL_CODE: &str = "161175-19997";

// ------------------------------------------------------------------------------------------
// PostgreSQL: the URL, a schema per test, the cluster.

/// `TILTS_TEST_DATABASE_URL`, or `None` after printing that `test` is skipped.
fn pg_url_or_skip(test: &str) -> Option<String> {
    match std::env::var("TILTS_TEST_DATABASE_URL") {
        Ok(url) => Some(url),
        Err(_) => {
            eprintln!("skipped {test}: TILTS_TEST_DATABASE_URL is not set");
            None
        }
    }
}

/// Runs one SQL command with psql; the output (unaligned, tuples only) or the error text.
fn psql(url: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .arg(url)
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGCONNECT_TIMEOUT", "5")
        .output()
        .map_err(|e| format!("cannot run psql: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "psql failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A schema of its own in the test database, dropped (with everything in it) on drop. Declare
/// it before the processes that use it, so they are gone first.
struct PgSchema {
    admin_url: String,
    name: String,
    /// The store URL for tilts: the test database with this schema as its `search_path`.
    store_url: String,
}

impl PgSchema {
    /// Creates the schema; panics when the database is unreachable.
    fn create(url: &str) -> PgSchema {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let name = format!("tilts_dur_{}_{nanos}", std::process::id());
        if let Err(e) = psql(url, &format!("CREATE SCHEMA {name}")) {
            panic!("TILTS_TEST_DATABASE_URL is set but the database is unreachable: {e}");
        }
        let sep = if url.contains('?') { '&' } else { '?' };
        PgSchema {
            admin_url: url.to_string(),
            store_url: format!("{url}{sep}options[search_path]={name}"),
            name,
        }
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        if let Err(e) = psql(
            &self.admin_url,
            &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name),
        ) {
            eprintln!("could not drop schema {}: {e}", self.name);
        }
    }
}

/// The local PostgreSQL cluster (`/etc/postgresql/<version>/main`), restarted with
/// `pg_ctlcluster`. Dropping it starts the cluster if it is not running, so a failing test never
/// leaves PostgreSQL down.
struct PgCluster {
    version: String,
}

impl PgCluster {
    fn find() -> PgCluster {
        let mut versions: Vec<(u32, String)> = std::fs::read_dir("/etc/postgresql")
            .unwrap_or_else(|e| {
                panic!("no PostgreSQL cluster to restart (cannot read /etc/postgresql: {e})")
            })
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                Some((name.parse().ok()?, name))
            })
            .filter(|(_, v)| std::path::Path::new(&format!("/etc/postgresql/{v}/main")).is_dir())
            .collect();
        versions.sort();
        let (_, version) = versions
            .pop()
            .expect("no cluster /etc/postgresql/<version>/main to restart");
        PgCluster { version }
    }

    fn ctl(&self, action: &str) -> Command {
        let mut c = Command::new("pg_ctlcluster");
        c.args(["--skip-systemctl-redirect", &self.version, "main", action]);
        c
    }

    /// `pg_ctlcluster ... restart` (fast shutdown: sessions are terminated), waiting until it
    /// accepts connections again. Returns how long it took.
    async fn restart(&self) -> Duration {
        let started = Instant::now();
        let mut c = tokio::process::Command::from(self.ctl("restart"));
        let out = tokio::time::timeout(Duration::from_secs(60), c.output())
            .await
            .expect("pg_ctlcluster restart did not finish within 60 s")
            .expect("run pg_ctlcluster");
        assert!(
            out.status.success(),
            "pg_ctlcluster restart failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        started.elapsed()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let running = self
            .ctl("status")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !running {
            match self.ctl("start").output() {
                Ok(o) if o.status.success() => eprintln!("started PostgreSQL again"),
                Ok(o) => eprintln!(
                    "could not start PostgreSQL again ({}): {}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr)
                ),
                Err(e) => eprintln!("could not run pg_ctlcluster start: {e}"),
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// The producer: valid applications, bounded concurrency, re-sent on transport errors and 503.

fn application_id(n: usize) -> String {
    format!("VPVKAC-2026-{n:06}")
}

/// A valid application, distinct per `n`.
fn application(n: usize) -> Value {
    json!({
        "applicationId": application_id(n),
        "centre": {"code": "RIGA-CENTRS", "municipality": "Rīga"},
        "service": {"code": "SOC-ASSIST-01", "title": "Trūcīgas personas statusa noteikšana"},
        "applicant": {
            "personalCode": PERSONAL_CODE,
            "firstName": "Anna",
            "lastName": "Kalniņa"
        },
        "submittedAt": "2026-11-28T09:15:00+02:00",
        "channel": "visit"
    })
}

#[derive(Debug, Clone)]
struct Produce {
    /// The ingress URLs; application `n` goes to `urls[n % urls.len()]`.
    urls: Vec<String>,
    /// Applications to send (at most, with `stop`).
    count: usize,
    concurrency: usize,
    /// Send `Idempotency-Key: <applicationId>`, so a re-send after a lost answer gets the first
    /// message back instead of a second message.
    idempotency_key: bool,
    /// Give up (and report) after this long.
    within: Duration,
    /// When set, no further application is started (those started are still sent until
    /// accepted): a controller keeps the load running until it has done what it tests.
    stop: Option<Arc<AtomicBool>>,
}

/// What the producer saw. Shared while it runs, so a controller can act on its progress.
#[derive(Debug, Default)]
struct Tally {
    /// Message id per application number, once answered 202.
    ids: Mutex<Vec<Option<String>>>,
    /// Applications started (each is sent until accepted or given up on).
    started: AtomicUsize,
    accepted: AtomicUsize,
    /// 202 answers with `idempotent-replayed: true` (a re-send of a committed message).
    replayed: AtomicUsize,
    unavailable: AtomicUsize,
    transport_errors: AtomicUsize,
    /// Anything else: a wrong answer, or giving up.
    unexpected: Mutex<Vec<String>>,
}

impl Tally {
    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    fn accepted_ids(&self) -> HashSet<String> {
        self.ids.lock().unwrap().iter().flatten().cloned().collect()
    }
}

/// Sends `count` applications with `concurrency` requests in flight; returns when each was
/// answered 202 or given up on.
async fn produce(p: Produce, tally: Arc<Tally>) {
    *tally.ids.lock().unwrap() = vec![None; p.count];
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + p.within;
    let c = client();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..p.concurrency {
        let (p, tally, next, c) = (p.clone(), tally.clone(), next.clone(), c.clone());
        tasks.spawn(async move {
            loop {
                if p.stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed)) {
                    return;
                }
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= p.count {
                    return;
                }
                tally.started.fetch_add(1, Ordering::Relaxed);
                let url = &p.urls[n % p.urls.len()];
                if let Some(id) = send_until_accepted(&c, url, n, &p, &tally, deadline).await {
                    tally.ids.lock().unwrap()[n] = Some(id);
                    tally.accepted.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("producer task");
    }
}

async fn send_until_accepted(
    c: &reqwest::Client,
    url: &str,
    n: usize,
    p: &Produce,
    tally: &Tally,
    deadline: Instant,
) -> Option<String> {
    let body = application(n);
    let give_up = |why: String| {
        tally
            .unexpected
            .lock()
            .unwrap()
            .push(format!("{}: {why}", application_id(n)));
        None
    };
    loop {
        if Instant::now() > deadline {
            return give_up("not accepted before the producer's deadline".into());
        }
        let mut req = c.post(url).json(&body);
        if p.idempotency_key {
            req = req.header("Idempotency-Key", application_id(n));
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(_) => {
                // Refused while tilts restarts, or reset by a kill: send it again.
                tally.transport_errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = match resp.text().await {
            Ok(t) => t,
            Err(_) => {
                tally.transport_errors.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        match status {
            202 => {
                let Some(id) = headers
                    .get("x-tilts-message-id")
                    .and_then(|v| v.to_str().ok())
                else {
                    return give_up(format!("202 without x-tilts-message-id: {text}"));
                };
                let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                if answer["messageId"] != id || answer["status"] != "accepted" {
                    return give_up(format!("202 with id {id} and body {text}"));
                }
                if headers.get("idempotent-replayed").is_some() {
                    tally.replayed.fetch_add(1, Ordering::Relaxed);
                }
                return Some(id.to_string());
            }
            503 => {
                if headers.get("retry-after").is_none() {
                    return give_up(format!("503 without Retry-After: {text}"));
                }
                tally.unavailable.fetch_add(1, Ordering::Relaxed);
                // A real client honours Retry-After (5 s); a shorter pause keeps the test short.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return give_up(format!("answered {other}: {text}")),
        }
    }
}

// ------------------------------------------------------------------------------------------
// What the receivers saw, and what the store says.

/// Raw delivery requests per `x-tilts-message-id`, over the given simulators.
fn deliveries(sims: &[&SimServer]) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for sim in sims {
        for r in sim.requests() {
            let id = r.header("x-tilts-message-id").unwrap_or("<none>");
            *seen.entry(id.to_string()).or_insert(0) += 1;
        }
    }
    seen
}

/// Polls the simulators until every id in `accepted` was delivered at least once; returns the
/// tally. On timeout, panics with the state of a few missing messages in the store.
async fn wait_delivered(
    sims: &[&SimServer],
    accepted: &HashSet<String>,
    within: Duration,
    store_url: &str,
    logs: impl Fn() -> String,
) -> HashMap<String, usize> {
    let deadline = Instant::now() + within;
    loop {
        let seen = deliveries(sims);
        let missing: Vec<&String> = accepted
            .iter()
            .filter(|id| !seen.contains_key(*id))
            .collect();
        if missing.is_empty() {
            return seen;
        }
        if Instant::now() > deadline {
            let mut detail = String::new();
            if let Ok(store) = Store::open(store_url).await {
                for id in missing.iter().take(5) {
                    let view = match id.parse::<MessageId>() {
                        Ok(mid) => store.get(mid).await,
                        Err(_) => Ok(None),
                    };
                    detail.push_str(&format!("\n  {id}: {view:?}"));
                }
                detail.push_str(&format!("\n  counts: {:?}", store.counts().await));
                store.close().await;
            }
            panic!(
                "{} of {} accepted messages never reached the receiver within {within:?}; \
                 some of them in the store:{detail}\nstderr of tilts (end):\n{}",
                missing.len(),
                accepted.len(),
                tail(&logs(), 60)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Polls tilts' admin API (`GET /admin/stats`) until no message is pending: from then on
/// nothing more can be delivered (a delivery whose commit was lost leaves its message pending
/// until the lease expires and it is delivered again). Answers other than 200 (503 while the
/// store is down) are polled through. Returns the last stats.
async fn wait_settled(tilts: &Tilts, within: Duration) -> Value {
    let c = client();
    let deadline = Instant::now() + within;
    let mut last = Value::Null;
    loop {
        if let Ok(r) = c.get(tilts.admin_url("/admin/stats")).send().await
            && r.status() == 200
        {
            last = r.json().await.unwrap_or(Value::Null);
            if last["pending"] == 0 {
                return last;
            }
        }
        assert!(
            Instant::now() < deadline,
            "messages still pending after {within:?}: {last}\nstderr of tilts (end):\n{}",
            tail(&tilts.logs(), 40)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Lines of `logs` that contain `needle`.
fn count_lines(logs: &str, needle: &str) -> usize {
    logs.lines().filter(|l| l.contains(needle)).count()
}

/// Duplicates in a delivery tally: (messages delivered more than once, extra deliveries).
fn duplicates(seen: &HashMap<String, usize>) -> (Vec<(String, usize)>, usize) {
    let mut twice: Vec<(String, usize)> = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, n)| (id.clone(), *n))
        .collect();
    twice.sort();
    let extra = twice.iter().map(|(_, n)| n - 1).sum();
    (twice, extra)
}

/// Checks the store after the processes stopped: every accepted message delivered, nothing
/// pending, dead or unknown, and every message with exactly one recorded attempt (the receiver
/// never fails here, so a second recorded attempt would mean a delivery recorded twice), and no
/// delivered message id that was never answered 202.
async fn check_store(store_url: &str, accepted: &HashSet<String>, seen: &HashMap<String, usize>) {
    let store = Store::open(store_url).await.expect("open the store");
    let counts = store.counts().await.expect("counts");
    assert_eq!(
        (counts.pending, counts.dead, counts.discarded),
        (0, 0, 0),
        "nothing may be left pending or dead: {counts:?}"
    );
    assert_eq!(
        counts.delivered as usize,
        accepted.len(),
        "the store holds exactly the accepted messages, all delivered: {counts:?}"
    );
    let mut not_one = Vec::new();
    for id in accepted {
        let view = store
            .get(id.parse().expect("message id is a UUID"))
            .await
            .expect("get a message")
            .unwrap_or_else(|| panic!("accepted message {id} is not in the store"));
        let delivered = view
            .attempts
            .iter()
            .filter(|a| a.outcome == "delivered")
            .count();
        if view.attempts.len() != 1 || delivered != 1 {
            not_one.push(format!("{id}: {:?}", view.attempts));
        }
    }
    store.close().await;
    assert!(
        not_one.is_empty(),
        "{} messages do not have exactly one recorded (delivered) attempt, e.g. {:?}",
        not_one.len(),
        &not_one[..not_one.len().min(5)]
    );
    let strays: Vec<&String> = seen.keys().filter(|id| !accepted.contains(*id)).collect();
    assert!(
        strays.is_empty(),
        "the receiver got {} message ids that were never answered 202, e.g. {:?}",
        strays.len(),
        &strays[..strays.len().min(5)]
    );
}

// ------------------------------------------------------------------------------------------
// Starting and restarting tilts.

async fn launch(sims: &Simulators, log: &str, launch: &Launch) -> Tilts {
    Tilts::try_launch(routes(), sims, log, launch)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Starts tilts again on the same address after a kill; the port may take a moment to be free.
async fn relaunch(sims: &Simulators, log: &str, l: &Launch) -> Tilts {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Tilts::try_launch(routes(), sims, log, l).await {
            Ok(t) => return t,
            Err(e) if e.contains("cannot listen") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("tilts did not start again: {e}"),
        }
    }
}

/// A small pseudo-random sequence (xorshift), seeded from `TILTS_TEST_SEED` or the clock, so a
/// failing run can be repeated.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("TILTS_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos() as u64
            });
        println!("durability: random seed {seed} (TILTS_TEST_SEED to repeat)");
        Rng(seed | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

// ------------------------------------------------------------------------------------------
// 1. Two processes, one PostgreSQL database, no crashes: exactly once.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_one_postgres() {
    let _serial = serial().await;
    const COUNT: usize = 10_000;
    let Some(url) = pg_url_or_skip("two_processes_share_one_postgres") else {
        return;
    };
    assert!(PersonalCode::parse(PERSONAL_CODE).is_ok());
    let schema = PgSchema::create(&url);
    // One simulator per process, so each receiver's recording tells which process delivered
    // (and none of them reaches the simulator's 10,000-request memory unless one process
    // delivered everything, which the test rejects).
    let sims_a = Simulators::start().await.expect("simulators");
    let sims_b = Simulators::start().await.expect("simulators");
    let l = Launch {
        database: Some(schema.store_url.clone()),
        ..Launch::default()
    };
    let mut a = launch(&sims_a, "warn", &l).await;
    let mut b = launch(&sims_b, "warn", &l).await;
    let receivers = [&sims_a.social_services, &sims_b.social_services];

    let started = Instant::now();
    let tally = Arc::new(Tally::default());
    produce(
        Produce {
            urls: vec![a.url(FORWARD), b.url(FORWARD)],
            count: COUNT,
            concurrency: 32,
            idempotency_key: false,
            within: Duration::from_secs(300),
            stop: None,
        },
        tally.clone(),
    )
    .await;
    let produced_in = started.elapsed();
    let unexpected = tally.unexpected.lock().unwrap().clone();
    assert!(
        unexpected.is_empty(),
        "{} applications were not accepted: {:?}\nstderr a:\n{}\nstderr b:\n{}",
        unexpected.len(),
        &unexpected[..unexpected.len().min(5)],
        tail(&a.logs(), 30),
        tail(&b.logs(), 30)
    );
    let accepted = tally.accepted_ids();
    assert_eq!(
        accepted.len(),
        COUNT,
        "every application has its own message"
    );

    wait_delivered(
        &receivers,
        &accepted,
        Duration::from_secs(300),
        &schema.store_url,
        || format!("{}\n{}", a.logs(), b.logs()),
    )
    .await;
    let delivered_in = started.elapsed();
    // Nothing more can be delivered once no message is pending (no lease can expire).
    wait_settled(&a, Duration::from_secs(60)).await;
    let logs_a = a.stop().await;
    let logs_b = b.stop().await;

    let per_a = deliveries(&receivers[..1]);
    let per_b = deliveries(&receivers[1..]);
    let seen = deliveries(&receivers);
    let (twice, extra) = duplicates(&seen);
    check_store(&schema.store_url, &accepted, &seen).await;

    let n_a: usize = per_a.values().sum();
    let n_b: usize = per_b.values().sum();
    println!(
        "durability: two processes on one PostgreSQL: {COUNT} accepted in {produced_in:.1?} \
         ({:.0}/s, {} answered 503 first), all delivered after {delivered_in:.1?} \
         ({:.0} msg/s end to end); process A delivered {n_a}, B {n_b}; {} delivered twice; \
         WARN/ERROR lines: A {}, B {}",
        COUNT as f64 / produced_in.as_secs_f64(),
        tally.unavailable.load(Ordering::Relaxed),
        COUNT as f64 / delivered_in.as_secs_f64(),
        twice.len(),
        count_lines(&logs_a, "WARN") + count_lines(&logs_a, "ERROR"),
        count_lines(&logs_b, "WARN") + count_lines(&logs_b, "ERROR"),
    );
    assert!(
        n_a < SIM_MAX_RECORDED && n_b < SIM_MAX_RECORDED,
        "one receiver reached the simulator's memory limit"
    );
    assert!(
        n_a > 0 && n_b > 0,
        "both processes deliver: A {n_a}, B {n_b}"
    );
    assert_eq!(
        extra,
        0,
        "no message may be delivered twice without a crash: {:?}",
        &twice[..twice.len().min(10)]
    );
    assert_eq!(n_a + n_b, COUNT, "one request per message");
}

// ------------------------------------------------------------------------------------------
// 2. kill -9 under load.

/// One process on `database`; a producer sends `COUNT` applications (with Idempotency-Key, as
/// a client that re-sends after a lost answer should); the process is SIGKILLed `KILLS` times
/// at random moments while messages are being delivered and started again on the same store
/// and port.
async fn kill_9_under_load(database: String, store_name: &str) {
    const COUNT: usize = 2_000;
    const KILLS: usize = 4;
    assert!(PersonalCode::parse(PERSONAL_CODE).is_ok());
    let mut rng = Rng::new();
    let sims = Simulators::start().await.expect("simulators");
    let receiver = &sims.social_services;
    let mut l = Launch {
        database: Some(database.clone()),
        ..Launch::default()
    };
    let mut tilts = launch(&sims, "info", &l).await;
    // Restarts keep the address, as a service manager would.
    l.listen = Some(tilts.addr.to_string());

    let started = Instant::now();
    let tally = Arc::new(Tally::default());
    let producer = tokio::spawn(produce(
        Produce {
            urls: vec![tilts.url(FORWARD)],
            count: COUNT,
            concurrency: 16,
            idempotency_key: true,
            within: Duration::from_secs(180),
            stop: None,
        },
        tally.clone(),
    ));

    let mut earlier_logs = Vec::new();
    let mut kills = Vec::new();
    for k in 0..KILLS {
        // Spread the kills over the load: kill k once about (k + 1) / (KILLS + 1) of the messages
        // were accepted, give or take a random amount, and only while deliveries are running.
        let slice = COUNT / (KILLS + 1);
        let at = slice * (k + 1) - slice / 4 + rng.below((slice / 2) as u64) as usize;
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut last = receiver.requests().len();
        loop {
            assert!(
                Instant::now() < deadline,
                "the load stalled before kill {}: {} accepted; stderr:\n{}",
                k + 1,
                tally.accepted(),
                tail(&tilts.logs(), 40)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
            let now = receiver.requests().len();
            let delivering = now > last;
            last = now;
            if tally.accepted() >= at && delivering {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.below(20))).await;
        let accepted_then = tally.accepted();
        let received_then = receiver.requests().len();
        tilts.sigkill().await;
        let down_at = started.elapsed();
        earlier_logs.push(tilts.logs());
        kills.push(format!(
            "kill {} at {down_at:.1?}: {accepted_then} accepted, {received_then} requests received",
            k + 1
        ));
        tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
        tilts = relaunch(&sims, "info", &l).await;
    }
    let last_kill = Instant::now();
    tokio::time::timeout(Duration::from_secs(240), producer)
        .await
        .expect("the producer finishes")
        .expect("producer");
    let produced_in = started.elapsed();
    let unexpected = tally.unexpected.lock().unwrap().clone();
    assert!(
        unexpected.is_empty(),
        "{} applications were not accepted: {:?}\nstderr:\n{}",
        unexpected.len(),
        &unexpected[..unexpected.len().min(5)],
        tail(&tilts.logs(), 40)
    );
    let accepted = tally.accepted_ids();
    assert_eq!(
        accepted.len(),
        COUNT,
        "one message per application (re-sends were idempotent)"
    );

    // Messages claimed by a killed process wait for its lease to expire.
    wait_delivered(
        &[receiver],
        &accepted,
        LEASE + Duration::from_secs(90),
        &database,
        || tilts.logs(),
    )
    .await;
    let delivered_in = started.elapsed();
    let drained_after_last_kill = last_kill.elapsed();
    // Deliveries whose commit the kills lost are made again when their lease expires.
    wait_settled(&tilts, LEASE + Duration::from_secs(90)).await;
    let settled_after_last_kill = last_kill.elapsed();
    let seen = deliveries(&[receiver]);
    let logs = tilts.stop().await;
    // Once nothing is pending nothing more arrives, also not while tilts stops.
    let seen_final = deliveries(&[receiver]);
    assert_eq!(
        seen, seen_final,
        "no delivery after all were seen and tilts stopped"
    );
    check_store(&database, &accepted, &seen_final).await;

    let (twice, extra) = duplicates(&seen_final);
    let all_logs = format!("{}\n{logs}", earlier_logs.join("\n"));
    println!(
        "durability: kill -9 on {store_name}: {COUNT} accepted in {produced_in:.1?} with {KILLS} \
         kills ({} re-sends after transport errors, {} idempotent replays, {} answered 503); \
         all delivered after {delivered_in:.1?} ({drained_after_last_kill:.1?} after the last \
         kill), store settled {settled_after_last_kill:.1?} after the last kill; {} messages delivered more than once ({extra} extra deliveries, bound {}); \
         'lease expired' warnings {}, 'cannot record' errors {}\n  {}",
        tally.transport_errors.load(Ordering::Relaxed),
        tally.replayed.load(Ordering::Relaxed),
        tally.unavailable.load(Ordering::Relaxed),
        twice.len(),
        KILLS * WORKERS,
        count_lines(&all_logs, "lease expired"),
        count_lines(&all_logs, "cannot record"),
        kills.join("\n  "),
    );
    assert!(
        extra <= KILLS * WORKERS,
        "{extra} extra deliveries; at most {WORKERS} deliveries per kill can be lost commits: \
         {:?}",
        &twice[..twice.len().min(10)]
    );
}

mod kill_9_under_load_loses_nothing {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        let _serial = super::serial().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}/tilts.db", dir.path().display());
        kill_9_under_load(url, "SQLite").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let _serial = super::serial().await;
        let Some(url) = pg_url_or_skip("kill_9_under_load_loses_nothing::postgres") else {
            return;
        };
        let schema = PgSchema::create(&url);
        kill_9_under_load(schema.store_url.clone(), "PostgreSQL").await;
    }
}

// ------------------------------------------------------------------------------------------
// 3. PostgreSQL restarted under load.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_under_load_loses_nothing() {
    let _serial = serial().await;
    // The producer runs until both restarts are over and this many more were accepted after
    // the last one; MAX_COUNT only bounds it.
    const AFTER: usize = 300;
    const MAX_COUNT: usize = 50_000;
    const RESTARTS: usize = 2;
    let Some(url) = pg_url_or_skip("postgres_restart_under_load_loses_nothing") else {
        return;
    };
    assert!(PersonalCode::parse(PERSONAL_CODE).is_ok());
    let schema = PgSchema::create(&url);
    // Declared after the schema: dropped first, so PostgreSQL is up again to drop the schema.
    let cluster = PgCluster::find();
    let mut rng = Rng::new();
    let sims = Simulators::start().await.expect("simulators");
    let receiver = &sims.social_services;
    let l = Launch {
        database: Some(schema.store_url.clone()),
        ..Launch::default()
    };
    let mut tilts = launch(&sims, "info", &l).await;

    let started = Instant::now();
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let producer = tokio::spawn(produce(
        Produce {
            urls: vec![tilts.url(FORWARD)],
            count: MAX_COUNT,
            concurrency: 16,
            idempotency_key: true,
            within: Duration::from_secs(180),
            stop: Some(stop.clone()),
        },
        tally.clone(),
    ));
    // Until `accepted` have been accepted, with the load still running.
    let wait_for = |accepted: usize, what: String| {
        let (tally, logs) = (tally.clone(), &tilts);
        async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            while tally.accepted() < accepted {
                assert!(
                    Instant::now() < deadline,
                    "the load stalled before {what}: {} accepted; stderr:\n{}",
                    tally.accepted(),
                    tail(&logs.logs(), 40)
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };

    let mut restarts = Vec::new();
    for k in 0..RESTARTS {
        // Each restart after a few hundred more acceptances, so it meets the load in full flow.
        let at = tally.accepted() + 200 + rng.below(400) as usize;
        wait_for(at, format!("restart {}", k + 1)).await;
        let accepted_then = tally.accepted();
        let unavailable_before = tally.unavailable.load(Ordering::Relaxed);
        let at_time = started.elapsed();
        let up_since = psql(&url, "SELECT pg_postmaster_start_time()").expect("PostgreSQL is up");
        let took = cluster.restart().await;
        let up_again = psql(&url, "SELECT pg_postmaster_start_time()").expect("PostgreSQL is up");
        // The server did stop and start (not only answer the restart command).
        assert_ne!(up_since, up_again, "PostgreSQL did not restart");
        // Until the pool has reconnected, answers may still be 503.
        let accepted_after = tally.accepted();
        restarts.push(format!(
            "restart {} at {at_time:.1?}: {accepted_then} accepted before, took {took:.1?}, \
             {} answered 503 meanwhile, {} accepted meanwhile",
            k + 1,
            tally.unavailable.load(Ordering::Relaxed) - unavailable_before,
            accepted_after - accepted_then
        ));
    }
    // Accepting goes on after the last restart; then the load stops.
    wait_for(tally.accepted() + AFTER, "the end".into()).await;
    stop.store(true, Ordering::Relaxed);
    tokio::time::timeout(Duration::from_secs(240), producer)
        .await
        .expect("the producer finishes")
        .expect("producer");
    let producer_done = Instant::now();
    let produced_in = started.elapsed();
    let unexpected = tally.unexpected.lock().unwrap().clone();
    assert!(
        unexpected.is_empty(),
        "{} applications were not accepted (only 202 and 503 are right): {:?}\nstderr:\n{}",
        unexpected.len(),
        &unexpected[..unexpected.len().min(5)],
        tail(&tilts.logs(), 40)
    );
    let accepted = tally.accepted_ids();
    let count = tally.started.load(Ordering::Relaxed);
    assert!(count < MAX_COUNT, "the load ran to its bound ({MAX_COUNT})");
    assert_eq!(accepted.len(), count, "one message per application");

    // A delivery whose commit failed during the outage waits for its lease to expire.
    wait_delivered(
        &[receiver],
        &accepted,
        LEASE + Duration::from_secs(90),
        &schema.store_url,
        || tilts.logs(),
    )
    .await;
    let delivered_in = started.elapsed();
    let drained_after = producer_done.elapsed();
    // Deliveries whose commit the outage lost are made again when their lease expires.
    wait_settled(&tilts, LEASE + Duration::from_secs(90)).await;
    let settled_after = producer_done.elapsed();
    let seen = deliveries(&[receiver]);
    let logs = tilts.stop().await;
    let seen_final = deliveries(&[receiver]);
    assert_eq!(
        seen, seen_final,
        "no delivery after all were seen and tilts stopped"
    );
    check_store(&schema.store_url, &accepted, &seen_final).await;

    let (twice, extra) = duplicates(&seen_final);
    let unavailable = tally.unavailable.load(Ordering::Relaxed);
    println!(
        "durability: PostgreSQL restarted {RESTARTS} times under load: {count} accepted in \
         {produced_in:.1?} ({unavailable} answers 503 re-sent, {} transport errors, {} idempotent \
         replays); all delivered after {delivered_in:.1?} ({drained_after:.1?} after the \
         producer finished, store settled after {settled_after:.1?}); {} messages delivered more than once ({extra} extra deliveries); \
         'cannot store' errors {}, 'cannot claim' warnings {}, 'cannot record' errors {}\n  {}",
        tally.transport_errors.load(Ordering::Relaxed),
        tally.replayed.load(Ordering::Relaxed),
        twice.len(),
        count_lines(&logs, "cannot store"),
        count_lines(&logs, "cannot claim"),
        count_lines(&logs, "cannot record"),
        restarts.join("\n  "),
    );
    assert!(
        extra <= RESTARTS * WORKERS,
        "{extra} extra deliveries; at most {WORKERS} deliveries per outage can lose their commit: \
         {:?}",
        &twice[..twice.len().min(10)]
    );
}
