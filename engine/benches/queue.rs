//! Benchmark (a measurement, not a test): durable delivery through a queued route, on each store:
//! accepted-and-delivered messages per second end to end, and the time to drain a backlog of
//! 350,000 messages (a year of VPVKAC traffic).
//!
//! Run from the workspace root:
//!
//! ```text
//! cargo bench -p tilts-engine --bench queue
//! TILTS_BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/tilts_test \
//!     cargo bench -p tilts-engine --bench queue
//! ```
//!
//! In one process, each part on its own tokio runtime as if they were processes on one machine:
//! an upstream simulator (axum; `POST /cases` answers 201 and counts deliveries per
//! `X-Tilts-Message-Id`), tilts started with `service::start` (ingress, store, workers, admin API)
//! serving `benches/queue/routes.yaml` (the shipped `application-forward` route: validate + map,
//! 202 once the message is committed, then delivered by the workers), and the load generator.
//!
//! Stores: SQLite (a file in a temporary folder, as shipped: WAL, `synchronous=FULL`, one writer
//! connection) always; PostgreSQL when `TILTS_BENCH_DATABASE_URL` (or `TILTS_TEST_DATABASE_URL`) is
//! set, each phase in a fresh schema of that database, dropped afterwards. Every phase starts on a
//! fresh, empty store.
//!
//! - Phase A, end to end: `BENCH_CONCURRENCY` producers POST applications (each its own
//!   applicationId) back to back for `BENCH_SECONDS` while the workers deliver. Reported: accepted/s
//!   (202s), delivered/s during the window, the time from the last 202 until the store has no
//!   pending message, and the end-to-end rate: accepted messages / (first request to last
//!   delivery recorded). Every accepted message must reach the upstream exactly once.
//! - Phase B, drain: `BENCH_BACKLOG` messages (prepared as the ingress prepares them) enqueued
//!   straight through `Store::enqueue` by a tilts started without workers, then tilts is started
//!   with workers and the drain timed until the store has no pending message.
//! - Profile (`BENCH_PROFILE=1`), on a fresh store opened directly: P1 the ingress's own work per
//!   message (no I/O); P2 `enqueue` with 1, 8 and 64 at once (PostgreSQL also with pools of 32
//!   and 64 connections); P3 `claim` per batch size, each batch then recorded with
//!   `record_attempt`; P4 concurrent claim + record loops without HTTP (the store's ceiling for
//!   delivery); P5 the HTTP delivery alone (`runtime::deliver`, no store); P6 the cost of a commit
//!   with raw SQL (fdatasync; SQLite `synchronous` FULL vs NORMAL; PostgreSQL
//!   `synchronous_commit` on vs off; one message per transaction vs 8 or 64, and one multi-row
//!   INSERT of 64; PostgreSQL: the enqueue's statements with and without `pg_notify`, and as one
//!   statement).
//!
//! Each phase also reports where the CPU went (this process per runtime, SQLite's connection
//! threads, all `postgres` processes, everything else on the machine), how many messages each
//! claim took (sampled from the leases in flight; on PostgreSQL also counted exactly as index
//! scans of `messages_due`), and checks that every accepted message reached the upstream exactly
//! once and that the store ends with nothing pending.
//!
//! Targets (issue 3, on the 2-core development machine): end to end at least 5,000 messages/s on
//! PostgreSQL and 2,000/s on SQLite. A missed target prints MISS; the exit code is 0 either way
//! (2 only when the setup itself fails).
//!
//! Environment:
//! - `BENCH_CONCURRENCY` producers in phase A (default 64)
//! - `BENCH_SECONDS` seconds of production in phase A (default 10)
//! - `BENCH_BACKLOG` messages to drain in phase B (default 350000)
//! - `BENCH_ENQUEUE_CONCURRENCY` enqueues at once while building the backlog (default 64)
//! - `BENCH_STORES` `sqlite`, `postgres` or both (default: sqlite, and postgres when a URL is set)
//! - `BENCH_PHASES` `a`, `b` or `ab` (default both; `none` with `BENCH_PROFILE=1` profiles only)
//! - `BENCH_WORKERS` deliveries at once per process (default: `server.workers` of the route file,
//!   32 as shipped); `BENCH_BATCH` most messages per claim (default 64, the worker default);
//!   `BENCH_ROUTE_CONCURRENCY` deliveries at once of the route (default: the shipped 8)
//! - `BENCH_THREADS` worker threads per runtime (default: the number of CPUs)
//! - `BENCH_DRAIN_TIMEOUT` seconds to wait for a backlog to drain (default 3600)
//! - `BENCH_SQLITE_DIR` folder for the SQLite files (default: the system temporary folder)
//! - `BENCH_PROFILE=1` also time the store operations one by one
//! - `BENCH_LOG=1` install tilts' logging (one line per request and per delivery on stderr, as
//!   `tilts serve` does); redirect stderr, e.g. `2>/dev/null`

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use axum::Router;
use axum::extract::Request;
use axum::routing::post;
use bytes::Bytes;
use chrono::Utc;
use futures::StreamExt as _;
use http::{HeaderMap, StatusCode, header};
use serde_json::Value;
use tilts_engine::plan::{Plan, Route};
use tilts_engine::runtime::{self, Input, StoredRequest};
use tilts_engine::service::{self, Running, StartOptions};
use tilts_engine::store::{
    Attempt, MessageId, NewMessage, Outcome, Payload, StateCounts, Store, StoreOptions,
};
use tilts_engine::worker::WorkerOptions;
use tokio::runtime::Runtime;
use uuid::Uuid;

#[path = "common/bench.rs"]
mod bench;
use bench::{Errors, cpu_model, env_flag, error_text, load_average, nearest_rank, verdict};

const ROUTE_ID: &str = "application-forward";
const ROUTE_PATH: &str = "/v1/applications/forward";
/// A year of VPVKAC traffic.
const YEAR: u64 = 350_000;
const TARGET_POSTGRES: f64 = 5_000.0;
const TARGET_SQLITE: f64 = 2_000.0;
/// The upstream's answer.
const CASE_ANSWER: &str = r#"{"caseNumber":"SD-2026-000123","status":"registered"}"#;
/// A valid (fictional) personal code for the applications.
const PERSONAL_CODE: &str = "010190-12349";
/// How often the end of a drain is checked.
const POLL: Duration = Duration::from_millis(20);

fn main() {
    // `cargo bench` passes `--bench` (and any filter); this benchmark takes no arguments.
    let outcome = std::panic::catch_unwind(run);
    // Drop the PostgreSQL schemas a failed phase left behind.
    cleanup_schemas();
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!("queue benchmark could not run: {e:#}");
            std::process::exit(2);
        }
        Err(_) => {
            eprintln!("queue benchmark panicked");
            std::process::exit(2);
        }
    }
}

// ------------------------------------------------------------------------------------------
// Settings.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres => "PostgreSQL",
        }
    }
    fn target(self) -> f64 {
        match self {
            Backend::Sqlite => TARGET_SQLITE,
            Backend::Postgres => TARGET_POSTGRES,
        }
    }
}

struct Settings {
    concurrency: usize,
    seconds: u64,
    backlog: u64,
    enqueue_concurrency: usize,
    stores: Vec<Backend>,
    phase_a: bool,
    phase_b: bool,
    workers: Option<usize>,
    batch: u32,
    route_concurrency: Option<usize>,
    threads: usize,
    drain_timeout: Duration,
    sqlite_dir: Option<PathBuf>,
    pg_url: Option<String>,
    profile: bool,
    log: bool,
}

impl Settings {
    fn from_env(cpus: usize) -> anyhow::Result<Settings> {
        let pg_url = ["TILTS_BENCH_DATABASE_URL", "TILTS_TEST_DATABASE_URL"]
            .iter()
            .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()));
        let stores = match std::env::var("BENCH_STORES") {
            Ok(v) if !v.trim().is_empty() => {
                let mut out = Vec::new();
                for s in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    out.push(match s.to_ascii_lowercase().as_str() {
                        "sqlite" => Backend::Sqlite,
                        "postgres" | "postgresql" | "pg" => Backend::Postgres,
                        other => bail!("BENCH_STORES: unknown store {other:?} (sqlite, postgres)"),
                    });
                }
                out
            }
            _ => {
                let mut out = vec![Backend::Sqlite];
                if pg_url.is_some() {
                    out.push(Backend::Postgres);
                }
                out
            }
        };
        if stores.contains(&Backend::Postgres) && pg_url.is_none() {
            bail!("BENCH_STORES names postgres but TILTS_BENCH_DATABASE_URL is not set");
        }
        let phases = std::env::var("BENCH_PHASES")
            .unwrap_or_default()
            .to_ascii_lowercase();
        let (phase_a, phase_b) = if phases.trim().is_empty() {
            (true, true)
        } else {
            (phases.contains('a'), phases.contains('b'))
        };
        let s = Settings {
            concurrency: env_num("BENCH_CONCURRENCY", 64)?,
            seconds: env_num("BENCH_SECONDS", 10)?,
            backlog: env_num("BENCH_BACKLOG", YEAR)?,
            enqueue_concurrency: env_num("BENCH_ENQUEUE_CONCURRENCY", 64)?,
            stores,
            phase_a,
            phase_b,
            workers: env_opt("BENCH_WORKERS")?,
            batch: env_num("BENCH_BATCH", WorkerOptions::default().batch)?,
            route_concurrency: env_opt("BENCH_ROUTE_CONCURRENCY")?,
            threads: env_num("BENCH_THREADS", cpus)?,
            drain_timeout: Duration::from_secs(env_num("BENCH_DRAIN_TIMEOUT", 3600)?),
            sqlite_dir: std::env::var_os("BENCH_SQLITE_DIR").map(PathBuf::from),
            pg_url,
            profile: env_flag("BENCH_PROFILE"),
            log: env_flag("BENCH_LOG"),
        };
        if s.concurrency == 0
            || s.seconds == 0
            || s.backlog == 0
            || s.enqueue_concurrency == 0
            || s.threads == 0
            || s.batch == 0
            || s.workers == Some(0)
            || s.route_concurrency == Some(0)
        {
            bail!("the BENCH_* numbers must be at least 1");
        }
        Ok(s)
    }
}

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    Ok(env_opt(name)?.unwrap_or(default))
}

fn env_opt<T: std::str::FromStr>(name: &str) -> anyhow::Result<Option<T>> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .replace('_', "")
            .parse()
            .map(Some)
            .map_err(|_| anyhow!("{name}={v:?} is not a valid number")),
        _ => Ok(None),
    }
}

// ------------------------------------------------------------------------------------------
// The run.

/// The three parts' runtimes.
struct Runtimes {
    load: Runtime,
    tilts: Runtime,
    upstream: Runtime,
}

fn runtime(name: &str, threads: usize) -> anyhow::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .enable_all()
        .build()
        .with_context(|| format!("cannot start the {name} runtime"))
}

/// One store's results, for the summary.
struct StoreResult {
    backend: Backend,
    a: Option<PhaseA>,
    b: Option<PhaseB>,
}

fn run() -> anyhow::Result<()> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let settings = Settings::from_env(cpus)?;
    // Kept to the end: its drop writes out the queued log lines.
    let _log = settings
        .log
        .then(|| tilts_engine::logging::init(tilts_engine::logging::LogFormat::Text));
    let rts = Runtimes {
        load: runtime("loadgen-rt", settings.threads)?,
        tilts: runtime("tilts-rt", settings.threads)?,
        upstream: runtime("upstream-rt", settings.threads)?,
    };
    let upstream = start_upstream(&rts.upstream)?;
    print_header(&settings, cpus);

    let mut results = Vec::new();
    for &backend in &settings.stores {
        println!();
        println!("==============================================================================");
        println!("Store: {}", backend.name());
        println!("==============================================================================");
        let mut r = StoreResult {
            backend,
            a: None,
            b: None,
        };
        if settings.phase_a {
            let db = Db::fresh(&rts, backend, &settings)?;
            let a = phase_a(&rts, &settings, &upstream, &db);
            db.drop_now(&rts);
            r.a = Some(a?);
        }
        if settings.phase_b {
            let db = Db::fresh(&rts, backend, &settings)?;
            let b = phase_b(&rts, &settings, &upstream, &db);
            db.drop_now(&rts);
            r.b = Some(b?);
        }
        if settings.profile {
            let db = Db::fresh(&rts, backend, &settings)?;
            let p = profile(&rts, &settings, &upstream, &db);
            db.drop_now(&rts);
            p?;
        }
        results.push(r);
    }
    if !settings.profile {
        println!();
        println!("(BENCH_PROFILE=1 also times the store operations one by one.)");
    }
    print_summary(&settings, &results, cpus);
    Ok(())
}

fn print_header(s: &Settings, cpus: usize) {
    println!("tilts benchmark: durable delivery through a queued route (accept, store, deliver)");
    println!("==============================================================================");
    println!("machine:   {cpus} CPUs (nproc), {}", cpu_model());
    println!(
        "           load average at start: {} (other processes compete for the same cores)",
        load_average()
    );
    println!(
        "setup:     the load generator, tilts and the upstream simulator run in THIS process, three \
         tokio runtimes ({} worker threads each);",
        s.threads
    );
    println!(
        "           PostgreSQL, when measured, runs on the same machine: everything shares the \
         same {cpus} cores"
    );
    println!(
        "route:     POST {ROUTE_PATH} (`{ROUTE_ID}` as shipped): validate (JSON Schema) -> map \
         (Handlebars) -> 202 once committed;"
    );
    println!(
        "           workers deliver POST /cases to the upstream (201), one attempt each, and \
         record it"
    );
    println!(
        "workers:   {} deliveries at once per process ({}), claims of up to {} messages (and of \
         the free delivery slots), route concurrency {} ({})",
        s.workers.map_or("32".to_string(), |w| w.to_string()),
        if s.workers.is_some() {
            "BENCH_WORKERS"
        } else {
            "server.workers"
        },
        s.batch,
        s.route_concurrency
            .map_or("8".to_string(), |c| c.to_string()),
        if s.route_concurrency.is_some() {
            "BENCH_ROUTE_CONCURRENCY"
        } else {
            "the shipped default"
        },
    );
    println!(
        "stores:    {}",
        s.stores
            .iter()
            .map(|b| match b {
                Backend::Sqlite => format!(
                    "SQLite (a file in {}, WAL, synchronous=FULL, one writer connection)",
                    s.sqlite_dir
                        .as_deref()
                        .unwrap_or(&std::env::temp_dir())
                        .display()
                ),
                Backend::Postgres => format!(
                    "PostgreSQL ({}, a fresh schema per phase, pool of {} connections)",
                    tilts_engine::service::redact_url(s.pg_url.as_deref().unwrap_or("")),
                    StoreOptions::default().max_connections
                ),
            })
            .collect::<Vec<_>>()
            .join("; ")
    );
    if !s.stores.contains(&Backend::Postgres) {
        println!(
            "           (PostgreSQL not measured: set TILTS_BENCH_DATABASE_URL=postgres://...)"
        );
    }
    println!(
        "logging:   {}",
        if s.log {
            "tilts' logging installed (BENCH_LOG=1), one line per request and delivery on stderr"
        } else {
            "no log subscriber (tilts serve logs a line per request and per delivery; BENCH_LOG=1 \
             includes it)"
        }
    );
}

// ------------------------------------------------------------------------------------------
// Stores: a fresh one per phase.

/// PostgreSQL schemas created and not dropped yet: (admin URL, schema).
static SCHEMAS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

struct Db {
    backend: Backend,
    /// The URL tilts opens.
    url: String,
    /// SQLite: the database file (its folder is removed on drop).
    sqlite_path: Option<PathBuf>,
    _dir: Option<tempfile::TempDir>,
    /// PostgreSQL: the admin URL and the schema.
    schema: Option<(String, String)>,
}

impl Db {
    fn fresh(rts: &Runtimes, backend: Backend, s: &Settings) -> anyhow::Result<Db> {
        match backend {
            Backend::Sqlite => {
                let dir = match &s.sqlite_dir {
                    Some(d) => tempfile::Builder::new()
                        .prefix("tilts-bench-")
                        .tempdir_in(d),
                    None => tempfile::Builder::new().prefix("tilts-bench-").tempdir(),
                }
                .context("cannot create a folder for the SQLite store")?;
                let path = dir.path().join("queue.db");
                Ok(Db {
                    backend,
                    url: format!("sqlite://{}", path.display()),
                    sqlite_path: Some(path),
                    _dir: Some(dir),
                    schema: None,
                })
            }
            Backend::Postgres => {
                let admin_url = s.pg_url.clone().unwrap_or_default();
                let schema = format!("tilts_bench_{}", Uuid::new_v4().simple());
                rts.load.block_on(async {
                    let admin = admin_pool(&admin_url).await?;
                    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
                        .execute(&admin)
                        .await
                        .context("cannot create the benchmark's schema")?;
                    admin.close().await;
                    anyhow::Ok(())
                })?;
                SCHEMAS
                    .lock()
                    .unwrap()
                    .push((admin_url.clone(), schema.clone()));
                let sep = if admin_url.contains('?') { '&' } else { '?' };
                Ok(Db {
                    backend,
                    url: format!("{admin_url}{sep}options[search_path]={schema}"),
                    sqlite_path: None,
                    _dir: None,
                    schema: Some((admin_url, schema)),
                })
            }
        }
    }

    fn drop_now(self, rts: &Runtimes) {
        if let Some((admin_url, schema)) = &self.schema {
            if let Err(e) = rts.load.block_on(drop_schema(admin_url, schema)) {
                eprintln!("cannot drop the benchmark's schema {schema}: {e:#}");
            } else {
                SCHEMAS.lock().unwrap().retain(|(_, s)| s != schema);
            }
        }
    }
}

async fn admin_pool(url: &str) -> anyhow::Result<sqlx::PgPool> {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .context("TILTS_BENCH_DATABASE_URL is set but the database is unreachable")
}

async fn drop_schema(admin_url: &str, schema: &str) -> anyhow::Result<()> {
    let admin = admin_pool(admin_url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE"
    )))
    .execute(&admin)
    .await?;
    admin.close().await;
    Ok(())
}

fn cleanup_schemas() {
    let left = std::mem::take(&mut *SCHEMAS.lock().unwrap());
    if left.is_empty() {
        return;
    }
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    for (url, schema) in left {
        if let Err(e) = rt.block_on(drop_schema(&url, &schema)) {
            eprintln!("cannot drop the benchmark's schema {schema}: {e:#}");
        }
    }
}

/// A connection of the benchmark's own to the store's database, to look at the queue without
/// going through tilts.
enum Probe {
    Sqlite(sqlx::SqlitePool),
    Pg(sqlx::PgPool),
}

impl Probe {
    async fn open(db: &Db) -> anyhow::Result<Probe> {
        Ok(match db.backend {
            Backend::Sqlite => {
                let opts = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(db.sqlite_path.as_deref().unwrap_or(Path::new(":memory:")))
                    .busy_timeout(Duration::from_secs(5))
                    .thread_name(|id| format!("bench-probe-{id}"));
                Probe::Sqlite(
                    sqlx::sqlite::SqlitePoolOptions::new()
                        .max_connections(1)
                        .connect_with(opts)
                        .await?,
                )
            }
            Backend::Postgres => Probe::Pg(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(1)
                    .connect(&db.url)
                    .await?,
            ),
        })
    }

    /// Messages leased right now and the number of distinct leases (claims) they came from,
    /// among the first 1,000 pending messages in claim order (where leased messages are).
    async fn leases(&self) -> Option<(u64, u64)> {
        const Q: &str = "SELECT lease_token FROM messages WHERE state = 'pending' \
                         ORDER BY next_attempt_at, seq LIMIT 1000";
        PROBE_DUE_SCANS.fetch_add(1, Ordering::SeqCst);
        let tokens: Vec<Vec<u8>> = match self {
            Probe::Sqlite(p) => sqlx::query_scalar::<_, Option<Vec<u8>>>(Q)
                .fetch_all(p)
                .await
                .ok()?
                .into_iter()
                .flatten()
                .collect(),
            Probe::Pg(p) => sqlx::query_scalar::<_, Option<Uuid>>(Q)
                .fetch_all(p)
                .await
                .ok()?
                .into_iter()
                .flatten()
                .map(|u| u.as_bytes().to_vec())
                .collect(),
        };
        let distinct = tokens.iter().collect::<HashSet<_>>().len();
        Some((tokens.len() as u64, distinct as u64))
    }

    /// PostgreSQL: index scans of `messages_due` in this schema so far. Every claim scans it
    /// once (nothing else of tilts does), as does each [`Probe::leases`]. Sessions publish their
    /// statistics when they end, so read this before tilts starts and after it stopped.
    async fn due_scans(&self) -> Option<i64> {
        match self {
            Probe::Sqlite(_) => None,
            Probe::Pg(p) => sqlx::query_scalar(
                "SELECT COALESCE((SELECT idx_scan FROM pg_stat_user_indexes \
                 WHERE schemaname = current_schema() AND indexrelname = 'messages_due'), 0)",
            )
            .fetch_one(p)
            .await
            .ok(),
        }
    }

    async fn close(self) {
        match self {
            Probe::Sqlite(p) => p.close().await,
            Probe::Pg(p) => p.close().await,
        }
    }
}

/// Scans of `messages_due` made by [`Probe::leases`].
static PROBE_DUE_SCANS: AtomicU64 = AtomicU64::new(0);

/// Where the count of claims stood (PostgreSQL).
struct ScanMark {
    scans: i64,
    probes: u64,
}

async fn scan_mark(probe: &Probe) -> Option<ScanMark> {
    Some(ScanMark {
        scans: probe.due_scans().await?,
        probes: PROBE_DUE_SCANS.load(Ordering::SeqCst),
    })
}

/// PostgreSQL: claims since `mark`, read once tilts and the probe are closed (their sessions
/// published their statistics on exit).
async fn claims_since(db: &Db, mark: Option<ScanMark>) -> Option<u64> {
    let mark = mark?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let p = Probe::open(db).await.ok()?;
    let now = p.due_scans().await;
    p.close().await;
    let probes = PROBE_DUE_SCANS.load(Ordering::SeqCst) - mark.probes;
    Some(((now? - mark.scans).max(0) as u64).saturating_sub(probes))
}

fn print_claims(claims: Option<u64>, messages: u64) {
    if let Some(c) = claims {
        println!(
            "  PostgreSQL claims:        {} claims for {} messages = {:.2} messages per claim \
             (index scans of messages_due from tilts' start to its stop; idle polls included)",
            fmt_n(c),
            fmt_n(messages),
            messages as f64 / c.max(1) as f64
        );
    }
}

// ------------------------------------------------------------------------------------------
// The upstream simulator: 201 to POST /cases, deliveries counted per X-Tilts-Message-Id.

#[derive(Default)]
struct UpState {
    /// Deliveries per message id.
    seen: Mutex<HashMap<Uuid, u32>>,
    requests: AtomicU64,
    distinct: AtomicU64,
    without_id: AtomicU64,
    /// While set, the next request is kept in `captured`.
    capture: AtomicBool,
    captured: Mutex<Option<(HeaderMap, Bytes)>>,
}

impl UpState {
    fn reset(&self) {
        self.seen.lock().unwrap().clear();
        self.requests.store(0, Ordering::SeqCst);
        self.distinct.store(0, Ordering::SeqCst);
        self.without_id.store(0, Ordering::SeqCst);
    }
    fn distinct(&self) -> u64 {
        self.distinct.load(Ordering::SeqCst)
    }
    fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

struct Upstream {
    addr: SocketAddr,
    state: Arc<UpState>,
}

fn start_upstream(rt: &Runtime) -> anyhow::Result<Upstream> {
    let state = Arc::new(UpState::default());
    let st = state.clone();
    let app = Router::new().route(
        "/cases",
        post(move |req: Request| {
            let st = st.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = axum::body::to_bytes(body, 1 << 20)
                    .await
                    .unwrap_or_default();
                let id = parts
                    .headers
                    .get("x-tilts-message-id")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|s| Uuid::parse_str(s).ok());
                match id {
                    Some(id) => {
                        let first = {
                            let mut seen = st.seen.lock().unwrap();
                            let n = seen.entry(id).or_insert(0);
                            *n += 1;
                            *n == 1
                        };
                        if first {
                            st.distinct.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    None => {
                        st.without_id.fetch_add(1, Ordering::SeqCst);
                    }
                }
                if st.capture.swap(false, Ordering::SeqCst) {
                    *st.captured.lock().unwrap() = Some((parts.headers, body));
                }
                // Counted last, so `requests` never runs ahead of `seen`.
                st.requests.fetch_add(1, Ordering::SeqCst);
                (
                    StatusCode::CREATED,
                    [(header::CONTENT_TYPE, "application/json")],
                    CASE_ANSWER,
                )
            }
        }),
    );
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .context("cannot bind the upstream simulator")?;
    let addr = listener.local_addr()?;
    rt.spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("upstream simulator stopped: {e}");
        }
    });
    Ok(Upstream { addr, state })
}

// ------------------------------------------------------------------------------------------
// tilts.

/// The benchmark's route file, compiled, with the BENCH_ROUTE_CONCURRENCY override.
fn load_plan(rts: &Runtimes, s: &Settings, upstream: SocketAddr) -> anyhow::Result<Plan> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/queue/routes.yaml");
    let url = format!("http://{upstream}");
    let lookup = |k: &str| (k == "UPSTREAM_URL").then(|| url.clone());
    // Inside a runtime: the plan builds the HTTP clients of its systems.
    let mut plan = rts
        .tilts
        .block_on(async { tilts_engine::check::load_with_env(&path, &lookup) })
        .map_err(|d| anyhow!("{} does not check:\n{d}", path.display()))?;
    if let Some(c) = s.route_concurrency {
        for r in &mut plan.routes {
            Arc::get_mut(r)
                .ok_or_else(|| anyhow!("the compiled route is shared; cannot set concurrency"))?
                .concurrency = c;
        }
    }
    if plan.route(ROUTE_ID).is_none() {
        bail!("{} has no route {ROUTE_ID}", path.display());
    }
    Ok(plan)
}

fn worker_options(s: &Settings, plan: &Plan) -> WorkerOptions {
    WorkerOptions {
        concurrency: s.workers.unwrap_or(plan.settings.workers as usize),
        batch: s.batch,
        lease: plan.settings.lease.0,
        ..WorkerOptions::default()
    }
}

fn start_tilts(
    rts: &Runtimes,
    s: &Settings,
    upstream: SocketAddr,
    db: &Db,
    workers: bool,
) -> anyhow::Result<Running> {
    let plan = load_plan(rts, s, upstream)?;
    let wopts = worker_options(s, &plan);
    rts.tilts
        .block_on(service::start(
            plan,
            StartOptions {
                listen: Some("127.0.0.1:0".into()),
                admin_listen: Some("127.0.0.1:0".into()),
                database: Some(db.url.clone()),
                workers: Some(wopts),
                no_workers: !workers,
            },
        ))
        .context("cannot start tilts")
}

fn running_store(running: &Running) -> anyhow::Result<Store> {
    running
        .store
        .clone()
        .ok_or_else(|| anyhow!("tilts started without a store"))
}

/// An application with its own applicationId (`VPVKAC-yyyy-nnnnnn`, the year part counting
/// millions), as a centre sends it.
fn application_body(n: u64) -> Vec<u8> {
    let mut app = tilts_engine::demo::application((n % 1_000_000) as u32, PERSONAL_CODE);
    app["applicationId"] = Value::String(format!(
        "VPVKAC-{:04}-{:06}",
        2026 + n / 1_000_000,
        n % 1_000_000
    ));
    serde_json::to_vec(&app).unwrap_or_default()
}

/// The message the ingress would store for application `n` (what `accept_queued` builds).
async fn prepared_message(plan: &Plan, route: &Route, n: u64) -> anyhow::Result<NewMessage> {
    let raw = application_body(n);
    let body: Value = serde_json::from_slice(&raw)?;
    // As the ingress does: the id is made first, so `{{message.id}}` is the stored id.
    let id = MessageId::new();
    let input = Input {
        message_id: id.to_string(),
        body,
        headers: [(
            "content-type".to_string(),
            Value::String("application/json".into()),
        )]
        .into_iter()
        .collect(),
        query: Default::default(),
        params: Default::default(),
    };
    let prepared = runtime::prepare(plan, route, input)
        .await
        .map_err(|e| anyhow!("the route rejected application {n}: {e}"))?;
    let payload = Payload::json(&serde_json::to_value(&prepared.request)?);
    let mut msg = NewMessage::new(route.id.clone(), payload.clone(), Utc::now());
    msg.id = id;
    msg.ordering_key = prepared.ordering_key;
    msg.original = Some(Payload::new("application/json", raw));
    msg.last_request = Some(payload);
    Ok(msg)
}

/// Waits until the upstream has seen `expected` distinct messages and the store has no pending
/// message; returns when that was seen, or `None` at the deadline. `progress` gets the distinct
/// count every poll.
async fn wait_drained(
    store: &Store,
    up: &UpState,
    expected: u64,
    deadline: Instant,
    mut progress: impl FnMut(u64),
) -> Option<Instant> {
    loop {
        let seen = up.distinct();
        progress(seen);
        if seen >= expected
            && let Ok(c) = store.counts().await
            && c.pending == 0
        {
            return Some(Instant::now());
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Exactly-once check of `ids` against the upstream's deliveries.
#[derive(Debug, Default, Clone, Copy)]
struct Check {
    /// Accepted but never delivered.
    missing: u64,
    /// Delivered more than once (count of messages).
    duplicated: u64,
    /// Extra deliveries of those messages.
    extra_deliveries: u64,
    /// Delivered but not among the accepted ids.
    unknown: u64,
    /// Requests the upstream received in all.
    requests: u64,
}

impl Check {
    fn ok(&self) -> bool {
        self.missing == 0 && self.duplicated == 0 && self.unknown == 0
    }
    fn text(&self) -> String {
        if self.ok() {
            format!(
                "every accepted message delivered exactly once ({} requests at the upstream)",
                self.requests
            )
        } else {
            format!(
                "!!! {} accepted message(s) NOT delivered, {} delivered more than once ({} extra \
                 deliveries), {} delivered but never accepted",
                self.missing, self.duplicated, self.extra_deliveries, self.unknown
            )
        }
    }
}

fn check_deliveries(up: &UpState, ids: &[Uuid]) -> Check {
    let seen = up.seen.lock().unwrap();
    let mut c = Check::default();
    let mut known = 0u64;
    for id in ids {
        match seen.get(id) {
            None => c.missing += 1,
            Some(&n) => {
                known += 1;
                if n > 1 {
                    c.duplicated += 1;
                    c.extra_deliveries += u64::from(n - 1);
                }
            }
        }
    }
    c.unknown = (seen.len() as u64).saturating_sub(known);
    c.requests = up.requests();
    c
}

// ------------------------------------------------------------------------------------------
// Phase A: end to end.

struct PhaseA {
    seconds: f64,
    accepted: u64,
    errors: Errors,
    latencies_us: Vec<u32>,
    delivered_in_window: u64,
    /// Seconds from the first request.
    last_accept: f64,
    drained: Option<f64>,
    check: Check,
    counts: Option<StateCounts>,
    timeline: Vec<Sample>,
    cpu: CpuWindow,
    /// PostgreSQL: claims made from tilts' start to its stop (idle polls included).
    claims: Option<u64>,
}

impl PhaseA {
    fn accepted_rate(&self) -> f64 {
        self.accepted as f64 / self.seconds
    }
    fn delivered_rate_in_window(&self) -> f64 {
        self.delivered_in_window as f64 / self.seconds
    }
    fn e2e_rate(&self) -> Option<f64> {
        self.drained.map(|d| self.accepted as f64 / d)
    }
}

struct Sample {
    t: f64,
    accepted: u64,
    delivered: u64,
    leases: Option<(u64, u64)>,
}

#[derive(Default)]
struct Producer {
    ids: Vec<Uuid>,
    latencies_us: Vec<u32>,
    last_accept: Option<Instant>,
    errors: Errors,
}

fn new_client(concurrency: usize) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency.max(64) * 2)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .context("cannot build the load generator's HTTP client")
}

/// POSTs one application; the stored message's id on a 202.
async fn post_application(client: &reqwest::Client, url: &str, n: u64) -> Result<Uuid, String> {
    let resp = client
        .post(url)
        .header(header::CONTENT_TYPE, "application/json")
        .body(application_body(n))
        .send()
        .await
        .map_err(|e| error_text(&e))?;
    let status = resp.status();
    let id = resp
        .headers()
        .get("x-tilts-message-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| Uuid::parse_str(s).ok());
    let body = resp.bytes().await.map_err(|e| error_text(&e))?;
    match (status, id) {
        (StatusCode::ACCEPTED, Some(id)) => Ok(id),
        _ => Err(format!(
            "answered {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        )),
    }
}

/// One application through tilts, checked in full at the upstream, before measuring.
async fn sanity_check(
    client: &reqwest::Client,
    url: &str,
    store: &Store,
    up: &UpState,
) -> anyhow::Result<()> {
    up.reset();
    up.capture.store(true, Ordering::SeqCst);
    let n = 9_999_999;
    let id = post_application(client, url, n)
        .await
        .map_err(|e| anyhow!("tilts did not accept the first application: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(15);
    if wait_drained(store, up, 1, deadline, |_| {}).await.is_none() {
        bail!("the first application was accepted ({id}) but not delivered within 15 s");
    }
    let (headers, body) = up
        .captured
        .lock()
        .unwrap()
        .take()
        .ok_or_else(|| anyhow!("the upstream kept nothing"))?;
    let mapped: Value = serde_json::from_slice(&body).context("the delivery is not JSON")?;
    let app_id = "VPVKAC-2035-999999";
    let header = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
    if mapped["applicationId"] != app_id
        || mapped["serviceCode"] != "SOC-ASSIST-01"
        || header("idempotency-key") != Some(app_id)
        || header("x-tilts-message-id") != Some(id.to_string().as_str())
    {
        bail!(
            "tilts delivered an unexpected request: {:?} {}",
            headers,
            String::from_utf8_lossy(&body)
        );
    }
    up.reset();
    Ok(())
}

fn phase_a(rts: &Runtimes, s: &Settings, up: &Upstream, db: &Db) -> anyhow::Result<PhaseA> {
    println!();
    println!(
        "Phase A: end to end, {} producers POST back to back for {} s while the workers deliver",
        s.concurrency, s.seconds
    );
    // PostgreSQL: where the claim count stands before tilts starts (the schema exists already;
    // an SQLite file does not).
    let mark = match db.backend {
        Backend::Postgres => rts.load.block_on(async {
            let p = Probe::open(db).await?;
            let m = scan_mark(&p).await;
            p.close().await;
            anyhow::Ok(m)
        })?,
        Backend::Sqlite => None,
    };
    let running = start_tilts(rts, s, up.addr, db, true)?;
    let probe = rts.load.block_on(Probe::open(db))?;
    let store = running_store(&running)?;
    let url = format!("http://{}{ROUTE_PATH}", running.addr);
    let client = new_client(s.concurrency)?;
    let result = rts.load.block_on(async {
        sanity_check(&client, &url, &store, &up.state).await?;
        let cpu_start = cpu_snapshot();
        let t0 = Instant::now();
        let end = t0 + Duration::from_secs(s.seconds);
        let counter = Arc::new(AtomicU64::new(0));
        let accepted = Arc::new(AtomicU64::new(0));
        let producers: Vec<_> = (0..s.concurrency)
            .map(|_| {
                let (client, url) = (client.clone(), url.clone());
                let (counter, accepted) = (counter.clone(), accepted.clone());
                tokio::spawn(async move {
                    let mut p = Producer::default();
                    loop {
                        let sent = Instant::now();
                        if sent >= end {
                            break;
                        }
                        let n = counter.fetch_add(1, Ordering::Relaxed);
                        match post_application(&client, &url, n).await {
                            Ok(id) => {
                                let done = Instant::now();
                                p.ids.push(id);
                                p.latencies_us
                                    .push((done - sent).as_micros().min(u32::MAX as u128) as u32);
                                p.last_accept = Some(done);
                                accepted.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => p.errors.add(e),
                        }
                    }
                    p
                })
            })
            .collect();

        // A sample per second while producing and draining.
        let mut timeline = Vec::new();
        let mut next = t0 + Duration::from_secs(1);
        while Instant::now() < end {
            tokio::time::sleep_until(next.min(end).into()).await;
            let now = Instant::now();
            if now >= next {
                timeline.push(Sample {
                    t: (now - t0).as_secs_f64(),
                    accepted: accepted.load(Ordering::Relaxed),
                    delivered: up.state.distinct(),
                    leases: probe.leases().await,
                });
                next += Duration::from_secs(1);
            }
        }
        let delivered_in_window = up.state.distinct();
        let mut done: Vec<Producer> = Vec::new();
        for p in producers {
            match p.await {
                Ok(p) => done.push(p),
                Err(e) => {
                    let mut p = Producer::default();
                    p.errors.add(format!("producer panicked: {e}"));
                    done.push(p);
                }
            }
        }
        let total = accepted.load(Ordering::Relaxed);
        // Drain: sample every second until the store is empty.
        let deadline = Instant::now() + s.drain_timeout;
        let drained = loop {
            let until = next.min(deadline);
            let waited = tokio::time::timeout_at(
                until.into(),
                wait_drained(&store, &up.state, total, deadline, |_| {}),
            )
            .await;
            match waited {
                Ok(d) => break d,
                Err(_) => {
                    let now = Instant::now();
                    timeline.push(Sample {
                        t: (now - t0).as_secs_f64(),
                        accepted: total,
                        delivered: up.state.distinct(),
                        leases: probe.leases().await,
                    });
                    next += Duration::from_secs(1);
                }
            }
        };
        let cpu = cpu_window(&cpu_start, &cpu_snapshot());
        let counts = store.counts().await.ok();
        let mut ids = Vec::with_capacity(total as usize);
        let mut latencies = Vec::with_capacity(total as usize);
        let mut errors = Errors::default();
        let mut last_accept = t0;
        for p in done {
            ids.extend(p.ids);
            latencies.extend(p.latencies_us);
            errors.merge(p.errors);
            if let Some(l) = p.last_accept {
                last_accept = last_accept.max(l);
            }
        }
        latencies.sort_unstable();
        let check = check_deliveries(&up.state, &ids);
        anyhow::Ok(PhaseA {
            seconds: s.seconds as f64,
            accepted: ids.len() as u64,
            errors,
            latencies_us: latencies,
            delivered_in_window,
            last_accept: (last_accept - t0).as_secs_f64(),
            drained: drained.map(|d| (d - t0).as_secs_f64()),
            check,
            counts,
            timeline,
            cpu,
            claims: None,
        })
    });
    rts.tilts.block_on(running.stop());
    rts.load.block_on(probe.close());
    let claims = rts.load.block_on(claims_since(db, mark));
    let mut a = result?;
    a.claims = claims;
    print_phase_a(&a, db.backend);
    Ok(a)
}

fn print_phase_a(a: &PhaseA, backend: Backend) {
    println!(
        "  timeline (cumulative; 'in flight' = leased messages / distinct claims they came from, \
         sampled):"
    );
    println!(
        "  {:>6} {:>10} {:>10} {:>10} {:>10} {:>10} {:>12}",
        "t (s)", "accepted", "acc/s", "delivered", "del/s", "backlog", "in flight"
    );
    let (mut pa, mut pd, mut pt) = (0u64, 0u64, 0.0f64);
    for smp in &a.timeline {
        let dt = (smp.t - pt).max(1e-9);
        println!(
            "  {:>6.1} {:>10} {:>10.0} {:>10} {:>10.0} {:>10} {:>12}",
            smp.t,
            smp.accepted,
            (smp.accepted - pa) as f64 / dt,
            smp.delivered,
            smp.delivered.saturating_sub(pd) as f64 / dt,
            smp.accepted.saturating_sub(smp.delivered),
            smp.leases
                .map_or("-".to_string(), |(m, c)| format!("{m} / {c}")),
        );
        (pa, pd, pt) = (smp.accepted, smp.delivered, smp.t);
    }
    println!();
    println!(
        "  accepted (202):           {:>9} in {:.0} s = {:>7.0}/s   errors: {}   202 latency mean \
         {:.2} ms, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        fmt_n(a.accepted),
        a.seconds,
        a.accepted_rate(),
        a.errors.count,
        mean_ms(&a.latencies_us),
        pct_ms(&a.latencies_us, 50.0),
        pct_ms(&a.latencies_us, 99.0),
        pct_ms(&a.latencies_us, 100.0),
    );
    print_errors(&a.errors);
    println!(
        "  delivered in the window:  {:>9} in {:.0} s = {:>7.0}/s",
        fmt_n(a.delivered_in_window),
        a.seconds,
        a.delivered_rate_in_window()
    );
    match a.drained {
        Some(d) => {
            println!(
                "  backlog empty:            {:.2} s after the last 202 ({:.2} s after the first \
                 request)",
                d - a.last_accept,
                d
            );
            let e2e = a.e2e_rate().unwrap_or(0.0);
            println!(
                "  end to end:               {:>7.0} messages/s accepted and delivered (accepted / \
                 first request to last delivery recorded); target >= {:.0}/s  {}",
                e2e,
                backend.target(),
                verdict(e2e >= backend.target())
            );
        }
        None => println!(
            "  !!! the backlog did NOT drain within BENCH_DRAIN_TIMEOUT: {} of {} delivered",
            a.timeline.last().map_or(0, |s| s.delivered),
            a.accepted
        ),
    }
    println!("  delivery check:           {}", a.check.text());
    if let Some(c) = a.counts {
        println!(
            "  store afterwards:         pending {}, delivered {} (1 is the sanity message), dead \
             {}, discarded {}",
            c.pending, c.delivered, c.dead, c.discarded
        );
    }
    print_claims(a.claims, a.accepted + 1);
    let (m, c) = a
        .timeline
        .iter()
        .filter_map(|s| s.leases)
        .filter(|(m, _)| *m > 0)
        .fold((0, 0), |(am, ac), (m, c)| (am + m, ac + c));
    if c > 0 {
        println!(
            "  claims:                   {:.2} messages per claim among the messages in flight \
             (mean over the samples)",
            m as f64 / c as f64
        );
    }
    print_cpu(&a.cpu, a.accepted);
}

// ------------------------------------------------------------------------------------------
// Phase B: drain a backlog.

struct PhaseB {
    n: u64,
    enqueue_secs: f64,
    enqueue_concurrency: usize,
    startup_secs: f64,
    drain_secs: Option<f64>,
    delivered: u64,
    /// When the drain did not finish: seconds waited.
    waited_secs: f64,
    check: Check,
    counts: Option<StateCounts>,
    cpu: CpuWindow,
    leases: (u64, u64),
    /// PostgreSQL: claims made from tilts' start to its stop (idle polls included).
    claims: Option<u64>,
}

impl PhaseB {
    fn drain_rate(&self) -> f64 {
        match self.drain_secs {
            Some(d) => self.n as f64 / d,
            None => self.delivered as f64 / self.waited_secs.max(1e-9),
        }
    }
    fn year_secs(&self) -> f64 {
        YEAR as f64 / self.drain_rate().max(1e-9)
    }
}

fn phase_b(rts: &Runtimes, s: &Settings, up: &Upstream, db: &Db) -> anyhow::Result<PhaseB> {
    let n = s.backlog;
    println!();
    println!(
        "Phase B: drain a backlog of {} messages{}",
        fmt_n(n),
        if n == YEAR {
            " (a year of VPVKAC traffic)".to_string()
        } else {
            format!(
                " (BENCH_BACKLOG; the time for {} is projected)",
                fmt_n(YEAR)
            )
        }
    );
    // 1. The backlog, through the store API of a tilts without workers.
    let running = start_tilts(rts, s, up.addr, db, false)?;
    let store = running_store(&running)?;
    let plan = Arc::new(load_plan(rts, s, up.addr)?);
    println!(
        "  enqueueing through Store::enqueue, {} at once, workers stopped (each message prepared \
         as the ingress prepares it: validate + map):",
        s.enqueue_concurrency
    );
    let started = Instant::now();
    let ids = rts.tilts.block_on(async {
        let next = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..s.enqueue_concurrency)
            .map(|_| {
                let (next, done, store, plan) =
                    (next.clone(), done.clone(), store.clone(), plan.clone());
                tokio::spawn(async move {
                    let route = plan.route(ROUTE_ID).cloned().expect("checked in load_plan");
                    let mut ids = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            return anyhow::Ok(ids);
                        }
                        let msg = prepared_message(&plan, &route, i).await?;
                        let enq = store
                            .enqueue(msg)
                            .await
                            .with_context(|| format!("enqueue of message {i} failed"))?;
                        ids.push(enq.id.0);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        let mut reported = 0;
        let step = (n / 10).max(1);
        while tasks.iter().any(|t| !t.is_finished()) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let d = done.load(Ordering::Relaxed);
            while d >= (reported + 1) * step && reported < 10 {
                reported += 1;
                let secs = started.elapsed().as_secs_f64();
                println!(
                    "    {:>3}%  {:>9} enqueued  {:>7.1} s  {:>7.0}/s",
                    reported * 10,
                    fmt_n(d),
                    secs,
                    d as f64 / secs
                );
            }
        }
        let mut ids = Vec::with_capacity(n as usize);
        for t in tasks {
            ids.extend(
                t.await
                    .map_err(|e| anyhow!("enqueue task panicked: {e}"))??,
            );
        }
        anyhow::Ok(ids)
    });
    let enqueue_secs = started.elapsed().as_secs_f64();
    rts.tilts.block_on(running.stop());
    drop(plan);
    let ids = ids?;
    println!(
        "  enqueued {} in {:.1} s = {:.0}/s",
        fmt_n(ids.len() as u64),
        enqueue_secs,
        ids.len() as f64 / enqueue_secs
    );

    // 2. tilts with workers; the drain is timed from the start.
    up.state.reset();
    let probe = rts.load.block_on(Probe::open(db))?;
    let mark = rts.load.block_on(scan_mark(&probe));
    println!("  starting tilts with workers; draining:");
    let cpu_start = cpu_snapshot();
    let t0 = Instant::now();
    let running = start_tilts(rts, s, up.addr, db, true)?;
    let startup_secs = t0.elapsed().as_secs_f64();
    let store = running_store(&running)?;
    let deadline = t0 + s.drain_timeout;
    let (drained, leases) = rts.load.block_on(async {
        let mut reported = 0;
        let step = (n / 10).max(1);
        let mut leases = (0, 0);
        let mut next_probe = Instant::now();
        let drained = wait_drained(&store, &up.state, n, deadline, |d| {
            while d >= (reported + 1) * step && reported < 10 {
                reported += 1;
                let secs = t0.elapsed().as_secs_f64();
                println!(
                    "    {:>3}%  {:>9} delivered  {:>7.1} s  {:>7.0}/s",
                    reported * 10,
                    fmt_n(d),
                    secs,
                    d as f64 / secs
                );
            }
        });
        tokio::pin!(drained);
        loop {
            tokio::select! {
                d = &mut drained => break (d, leases),
                _ = tokio::time::sleep_until(next_probe.into()) => {
                    if let Some((m, c)) = probe.leases().await && m > 0 {
                        leases.0 += m;
                        leases.1 += c;
                    }
                    next_probe += Duration::from_secs(2);
                }
            }
        }
    });
    let waited_secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_window(&cpu_start, &cpu_snapshot());
    let counts = rts.load.block_on(store.counts()).ok();
    let check = check_deliveries(&up.state, &ids);
    let delivered = up.state.distinct();
    rts.tilts.block_on(running.stop());
    rts.load.block_on(probe.close());
    let claims = rts.load.block_on(claims_since(db, mark));
    let b = PhaseB {
        n,
        enqueue_secs,
        enqueue_concurrency: s.enqueue_concurrency,
        startup_secs,
        drain_secs: drained.map(|d| (d - t0).as_secs_f64()),
        delivered,
        waited_secs,
        check,
        counts,
        cpu,
        leases,
        claims,
    };
    print_phase_b(&b, db.backend);
    Ok(b)
}

fn print_phase_b(b: &PhaseB, backend: Backend) {
    match b.drain_secs {
        Some(d) => println!(
            "  drained {} in {:.1} s (tilts start included: {:.2} s) = {:.0} messages/s",
            fmt_n(b.n),
            d,
            b.startup_secs,
            b.drain_rate()
        ),
        None => println!(
            "  !!! NOT drained within BENCH_DRAIN_TIMEOUT ({:.0} s): {} of {} delivered = {:.0}/s",
            b.waited_secs,
            fmt_n(b.delivered),
            fmt_n(b.n),
            b.drain_rate()
        ),
    }
    println!(
        "  a year ({} messages) drains in {} at this rate; {}/s is the end-to-end target  {}",
        fmt_n(YEAR),
        fmt_duration(b.year_secs()),
        backend.target(),
        verdict(b.drain_rate() >= backend.target())
    );
    println!(
        "  building the backlog: {:.0} enqueues/s ({} at once)",
        b.n as f64 / b.enqueue_secs,
        b.enqueue_concurrency
    );
    println!("  delivery check:           {}", b.check.text());
    if let Some(c) = b.counts {
        println!(
            "  store afterwards:         pending {}, delivered {}, dead {}, discarded {}",
            c.pending, c.delivered, c.dead, c.discarded
        );
    }
    if b.leases.1 > 0 {
        println!(
            "  claims:                   {:.2} messages per claim among the messages in flight \
             (mean over samples every 2 s)",
            b.leases.0 as f64 / b.leases.1 as f64
        );
    }
    print_claims(b.claims, b.delivered);
    print_cpu(&b.cpu, b.delivered);
}

// ------------------------------------------------------------------------------------------
// Profile: the store operations one by one.

/// What a timed batch of operations did.
struct Rate {
    ops: u64,
    secs: f64,
    latency: Duration,
    errors: Errors,
}

impl Rate {
    fn per_sec(&self) -> f64 {
        self.ops as f64 / self.secs.max(1e-9)
    }
    fn mean_ms(&self) -> f64 {
        if self.ops == 0 {
            f64::NAN
        } else {
            self.latency.as_secs_f64() * 1000.0 / self.ops as f64
        }
    }
    fn line(&self, what: &str) {
        println!(
            "    {what:<66} {:>8.0}/s   mean {:>7.3} ms   ({} ops{})",
            self.per_sec(),
            self.mean_ms(),
            self.ops,
            if self.errors.count > 0 {
                format!(
                    ", {} ERRORS: {}",
                    self.errors.count,
                    self.errors.first.join("; ")
                )
            } else {
                String::new()
            }
        );
    }
}

/// `concurrency` loops calling `op(i)` back to back for `dur`.
async fn closed<F, Fut>(concurrency: usize, dur: Duration, op: F) -> Rate
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + dur;
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (op, next) = (op.clone(), next.clone());
            tokio::spawn(async move {
                let (mut ops, mut lat, mut errors) = (0u64, Duration::ZERO, Errors::default());
                while Instant::now() < end {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let t = Instant::now();
                    match op(i).await {
                        Ok(()) => {
                            ops += 1;
                            lat += t.elapsed();
                        }
                        Err(e) => errors.add(e),
                    }
                }
                (ops, lat, errors)
            })
        })
        .collect();
    let mut r = Rate {
        ops: 0,
        secs: 0.0,
        latency: Duration::ZERO,
        errors: Errors::default(),
    };
    for t in tasks {
        if let Ok((ops, lat, e)) = t.await {
            r.ops += ops;
            r.latency += lat;
            r.errors.merge(e);
        }
    }
    r.secs = start.elapsed().as_secs_f64();
    r
}

/// `op` on every item, `concurrency` at once.
async fn each<T, F, Fut>(concurrency: usize, items: Vec<T>, op: F) -> Rate
where
    F: Fn(T) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let start = Instant::now();
    let results: Vec<(Duration, Result<(), String>)> = futures::stream::iter(items)
        .map(|it| {
            let f = op(it);
            async move {
                let t = Instant::now();
                let r = f.await;
                (t.elapsed(), r)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut r = Rate {
        ops: 0,
        secs: start.elapsed().as_secs_f64(),
        latency: Duration::ZERO,
        errors: Errors::default(),
    };
    for (lat, res) in results {
        match res {
            Ok(()) => {
                r.ops += 1;
                r.latency += lat;
            }
            Err(e) => r.errors.add(e),
        }
    }
    r
}

fn delivered_attempt() -> Attempt {
    Attempt {
        started_at: Utc::now(),
        duration: Duration::from_millis(1),
        outcome: Outcome::Delivered,
        error_class: None,
        error_text: None,
        request: None,
    }
}

fn profile(rts: &Runtimes, s: &Settings, up: &Upstream, db: &Db) -> anyhow::Result<()> {
    println!();
    println!(
        "Profile: the store operations one by one (a fresh {} store, opened directly)",
        db.backend.name()
    );
    let plan = Arc::new(load_plan(rts, s, up.addr)?);
    let route = plan.route(ROUTE_ID).cloned().expect("checked in load_plan");

    // P1: the ingress's own work per message (no I/O).
    let template = rts.tilts.block_on(prepared_message(&plan, &route, 1))?;
    {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let k = 3000;
        let t = Instant::now();
        for i in 0..k {
            std::hint::black_box(rt.block_on(prepared_message(&plan, &route, i))?);
        }
        println!(
            "  P1 ingress work without I/O: parse + validate + map + render the request + build \
             the message: {:.1} us/message (one thread)",
            t.elapsed().as_secs_f64() * 1e6 / k as f64
        );
        println!(
            "     stored sizes: payload {} B, original {} B, last request {} B",
            template.payload.bytes.len(),
            template.original.as_ref().map_or(0, |p| p.bytes.len()),
            template.last_request.as_ref().map_or(0, |p| p.bytes.len())
        );
    }

    let default_conns = StoreOptions::default().max_connections;
    let store = rts.tilts.block_on(Store::open(&db.url))?;
    let message = move |i: u64| {
        let mut m = template.clone();
        m.id = MessageId::new();
        m.ordering_key = Some(format!("VPVKAC-P-{i}"));
        m.received_at = Utc::now();
        m.next_attempt_at = m.received_at;
        m
    };
    let message: Arc<dyn Fn(u64) -> NewMessage + Send + Sync> = Arc::new(message);
    let dur = Duration::from_secs(2);

    // P2: enqueue.
    println!(
        "  P2 enqueue (one message per call, as the ingress does; {} s each; pool: {}):",
        dur.as_secs(),
        match db.backend {
            Backend::Sqlite => "1 writer connection".to_string(),
            Backend::Postgres => format!("{default_conns} connections"),
        }
    );
    for c in [1usize, 8, 64] {
        let (st, m) = (store.clone(), message.clone());
        let r = rts.tilts.block_on(closed(c, dur, move |i| {
            let (st, m) = (st.clone(), m.clone());
            async move {
                st.enqueue(m(i))
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        }));
        r.line(&format!("enqueue, {c} at once"));
    }
    if db.backend == Backend::Postgres {
        for conns in [32u32, 64] {
            let big = rts.tilts.block_on(Store::open_with(
                &db.url,
                &StoreOptions {
                    max_connections: conns,
                    ..StoreOptions::default()
                },
            ))?;
            let (st, m) = (big.clone(), message.clone());
            let r = rts.tilts.block_on(closed(64, dur, move |i| {
                let (st, m) = (st.clone(), m.clone());
                async move {
                    st.enqueue(m(1_000_000 + i))
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }
            }));
            r.line(&format!("enqueue, 64 at once, pool of {conns} connections"));
            rts.tilts.block_on(big.close());
        }
    }
    let backlog = rts
        .tilts
        .block_on(store.counts())
        .map(|c| c.pending)
        .unwrap_or(0);

    // P3: claim, then record_attempt of the claimed batch (what a worker does per batch).
    println!(
        "  P3 claim a batch, then record_attempt (delivered) of its messages all at once; one \
         batch after another (backlog of {} due messages):",
        fmt_n(backlog)
    );
    for (batch, times) in [(1u32, 300usize), (8, 100), (32, 40), (64, 25)] {
        let st = store.clone();
        let (mut claim_t, mut record_t, mut calls, mut msgs) =
            (Duration::ZERO, Duration::ZERO, 0u64, 0u64);
        let mut errors = Errors::default();
        rts.tilts.block_on(async {
            for _ in 0..times {
                let t = Instant::now();
                let got = match st
                    .claim("bench", batch, Duration::from_secs(600), Utc::now())
                    .await
                {
                    Ok(c) => c,
                    Err(e) => {
                        errors.add(e.to_string());
                        continue;
                    }
                };
                claim_t += t.elapsed();
                calls += 1;
                msgs += got.len() as u64;
                let t = Instant::now();
                let recs = got.into_iter().map(|m| {
                    let st = st.clone();
                    async move {
                        st.record_attempt(m.id, m.lease_token, delivered_attempt())
                            .await
                    }
                });
                for r in futures::future::join_all(recs).await {
                    if let Err(e) = r {
                        errors.add(e.to_string());
                    }
                }
                record_t += t.elapsed();
            }
        });
        let ms = |d: Duration, n: u64| d.as_secs_f64() * 1000.0 / n.max(1) as f64;
        println!(
            "    batch of up to {batch:>2}: claim {:>6.3} ms per call = {:>6.3} ms per message; \
             record_attempt {:>6.3} ms per message; together {:>6.0} messages/s ({} claims, {} \
             messages{})",
            ms(claim_t, calls),
            ms(claim_t, msgs),
            ms(record_t, msgs),
            msgs as f64 / (claim_t + record_t).as_secs_f64().max(1e-9),
            calls,
            msgs,
            if errors.count > 0 {
                format!(", {} ERRORS: {}", errors.count, errors.first.join("; "))
            } else {
                String::new()
            }
        );
    }

    // P4: the worker's steady state: many deliveries each claiming one or a few messages.
    let per_variant = 3000u64;
    let variants = [(32usize, 1u32), (8, 8), (4, 32)];
    let want = per_variant * variants.len() as u64 + 500;
    let pending = rts
        .tilts
        .block_on(store.counts())
        .map(|c| c.pending)
        .unwrap_or(0);
    if pending < want {
        let (st, m) = (store.clone(), message.clone());
        let missing = want - pending;
        rts.tilts
            .block_on(each(64, (0..missing).collect(), move |i| {
                let (st, m) = (st.clone(), m.clone());
                async move {
                    st.enqueue(m(2_000_000 + i))
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }
            }));
    }
    println!(
        "  P4 store-only delivery, concurrent loops of claim + record_attempt, no HTTP ({} messages \
         each):",
        fmt_n(per_variant)
    );
    for (loops, batch) in variants {
        let done = Arc::new(AtomicU64::new(0));
        let claims = Arc::new(AtomicU64::new(0));
        let t = Instant::now();
        let errors = rts.tilts.block_on(async {
            let tasks: Vec<_> = (0..loops)
                .map(|_| {
                    let (st, done, claims) = (store.clone(), done.clone(), claims.clone());
                    tokio::spawn(async move {
                        let mut errors = Errors::default();
                        while done.load(Ordering::Relaxed) < per_variant {
                            let got = match st
                                .claim("bench", batch, Duration::from_secs(600), Utc::now())
                                .await
                            {
                                Ok(g) if g.is_empty() => break,
                                Ok(g) => g,
                                Err(e) => {
                                    errors.add(e.to_string());
                                    continue;
                                }
                            };
                            claims.fetch_add(1, Ordering::Relaxed);
                            let n = got.len() as u64;
                            let recs = got.into_iter().map(|m| {
                                let st = st.clone();
                                async move {
                                    st.record_attempt(m.id, m.lease_token, delivered_attempt())
                                        .await
                                }
                            });
                            for r in futures::future::join_all(recs).await {
                                if let Err(e) = r {
                                    errors.add(e.to_string());
                                }
                            }
                            done.fetch_add(n, Ordering::Relaxed);
                        }
                        errors
                    })
                })
                .collect();
            let mut errors = Errors::default();
            for t in tasks {
                if let Ok(e) = t.await {
                    errors.merge(e);
                }
            }
            errors
        });
        let secs = t.elapsed().as_secs_f64();
        let n = done.load(Ordering::Relaxed);
        println!(
            "    {loops:>2} loops of claim {batch:>2} + record_attempt: {:>6.0} messages/s, {:.2} \
             messages per claim{}",
            n as f64 / secs,
            n as f64 / claims.load(Ordering::Relaxed).max(1) as f64,
            if errors.count > 0 {
                format!(", {} ERRORS: {}", errors.count, errors.first.join("; "))
            } else {
                String::new()
            }
        );
    }

    // P5: the HTTP side of delivery, without the store.
    println!(
        "  P5 HTTP delivery alone (runtime::deliver to the upstream, no store; {} s each):",
        dur.as_secs()
    );
    let request: StoredRequest =
        serde_json::from_slice(&message(0).payload.bytes).context("stored request")?;
    let request = Arc::new(request);
    for c in [1usize, 8, 32] {
        let (route, request) = (route.clone(), request.clone());
        let r = rts.tilts.block_on(closed(c, dur, move |_| {
            let (route, request) = (route.clone(), request.clone());
            async move {
                let id = Uuid::now_v7().to_string();
                runtime::deliver(&route, &request, &id)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        }));
        r.line(&format!("deliver, {c} at once"));
    }
    up.state.reset();
    rts.tilts.block_on(store.close());

    // P6: the cost of a commit.
    println!("  P6 the cost of a commit:");
    match db.backend {
        Backend::Sqlite => commit_costs_sqlite(rts, db, &message)?,
        Backend::Postgres => commit_costs_postgres(rts, db, &message)?,
    }
    Ok(())
}

fn commit_costs_sqlite(
    rts: &Runtimes,
    db: &Db,
    message: &Arc<dyn Fn(u64) -> NewMessage + Send + Sync>,
) -> anyhow::Result<()> {
    use std::io::Write as _;
    let path = db.sqlite_path.clone().unwrap_or_default();
    // The disk: write 4 KiB and fdatasync, as a WAL commit does.
    let probe_file = path.with_extension("fsync-probe");
    let mut f = std::fs::File::create(&probe_file)?;
    let k = 200;
    let t = Instant::now();
    for _ in 0..k {
        f.write_all(&[0u8; 4096])?;
        f.sync_data()?;
    }
    println!(
        "    write 4 KiB + fdatasync on the store's disk: {:.3} ms each",
        t.elapsed().as_secs_f64() * 1000.0 / k as f64
    );
    drop(f);
    let _ = std::fs::remove_file(&probe_file);

    rts.tilts.block_on(async {
        let opts = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .busy_timeout(Duration::from_secs(5))
            .thread_name(|id| format!("bench-probe-{id}"));
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await?;
        let insert = "INSERT INTO messages (id, route_id, ordering_key, received_at, updated_at, \
                      next_attempt_at, payload_type, payload, original_type, original, \
                      last_request_type, last_request) \
                      VALUES (?1, ?2, ?3, ?4, ?4, ?4, ?5, ?6, ?7, ?8, ?5, ?6)";
        let mut n = 5_000_000u64;
        let mut one = || {
            n += 1;
            let m = message(n);
            let now = Utc::now().timestamp_micros();
            let original = m.original.clone().unwrap_or_else(|| m.payload.clone());
            sqlx::query(insert)
                .bind(Uuid::now_v7())
                .bind(m.route_id)
                .bind(m.ordering_key)
                .bind(now)
                .bind(m.payload.content_type)
                .bind(m.payload.bytes)
                .bind(original.content_type)
                .bind(original.bytes)
        };
        let mut conn = pool.acquire().await?;
        for sync in ["FULL", "NORMAL"] {
            sqlx::query(sqlx::AssertSqlSafe(format!("PRAGMA synchronous = {sync}")))
                .execute(&mut *conn)
                .await?;
            let k = 300;
            let t = Instant::now();
            for _ in 0..k {
                one().execute(&mut *conn).await?;
            }
            println!(
                "    one message per transaction, synchronous={sync:<6}: {:.3} ms per message \
                 ({:.0}/s on one writer)",
                t.elapsed().as_secs_f64() * 1000.0 / k as f64,
                k as f64 / t.elapsed().as_secs_f64()
            );
        }
        sqlx::query("PRAGMA synchronous = FULL")
            .execute(&mut *conn)
            .await?;
        for per_tx in [8u64, 64] {
            let txs = 20;
            let t = Instant::now();
            for _ in 0..txs {
                sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
                for _ in 0..per_tx {
                    one().execute(&mut *conn).await?;
                }
                sqlx::query("COMMIT").execute(&mut *conn).await?;
            }
            let msgs = txs * per_tx;
            println!(
                "    {per_tx:>2} messages per transaction, synchronous=FULL  : {:.3} ms per \
                 message ({:.0}/s on one writer: group commit)",
                t.elapsed().as_secs_f64() * 1000.0 / msgs as f64,
                msgs as f64 / t.elapsed().as_secs_f64()
            );
        }
        // Statements: 64 rows in one multi-row INSERT per transaction.
        let row = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
        let multi = format!(
            "INSERT INTO messages (id, route_id, ordering_key, received_at, updated_at, \
             next_attempt_at, payload_type, payload, original_type, original, \
             last_request_type, last_request) VALUES {}",
            vec![row; 64].join(", ")
        );
        let txs = 20u64;
        let t = Instant::now();
        for b in 0..txs {
            let m = message(9_000_000 + b);
            let original = m.original.clone().unwrap_or_else(|| m.payload.clone());
            let now = Utc::now().timestamp_micros();
            let mut q = sqlx::query(sqlx::AssertSqlSafe(multi.clone()));
            for j in 0..64 {
                q = q
                    .bind(Uuid::now_v7())
                    .bind(m.route_id.clone())
                    .bind(format!("M-{b}-{j}"))
                    .bind(now)
                    .bind(now)
                    .bind(now)
                    .bind(m.payload.content_type.clone())
                    .bind(m.payload.bytes.clone())
                    .bind(original.content_type.clone())
                    .bind(original.bytes.clone())
                    .bind(m.payload.content_type.clone())
                    .bind(m.payload.bytes.clone());
            }
            q.execute(&mut *conn).await?;
        }
        let msgs = txs * 64;
        println!(
            "    64 rows in ONE multi-row INSERT per transaction, synchronous=FULL: {:.3} ms per \
             message ({:.0}/s on one writer)",
            t.elapsed().as_secs_f64() * 1000.0 / msgs as f64,
            msgs as f64 / t.elapsed().as_secs_f64()
        );
        drop(conn);
        pool.close().await;
        anyhow::Ok(())
    })
}

fn commit_costs_postgres(
    rts: &Runtimes,
    db: &Db,
    message: &Arc<dyn Fn(u64) -> NewMessage + Send + Sync>,
) -> anyhow::Result<()> {
    rts.tilts.block_on(async {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(&db.url)
            .await?;
        let insert = "INSERT INTO messages (id, route_id, ordering_key, received_at, updated_at, \
                      next_attempt_at, payload_type, payload, original_type, original, \
                      last_request_type, last_request) \
                      VALUES ($1, $2, $3, $4, $4, $4, $5, $6, $7, $8, $5, $6)";
        let mut n = 5_000_000u64;
        let mut one = || {
            n += 1;
            let m = message(n);
            let original = m.original.clone().unwrap_or_else(|| m.payload.clone());
            sqlx::query(insert)
                .bind(Uuid::now_v7())
                .bind(m.route_id)
                .bind(m.ordering_key)
                .bind(Utc::now())
                .bind(m.payload.content_type)
                .bind(m.payload.bytes)
                .bind(original.content_type)
                .bind(original.bytes)
        };
        let mut conn = pool.acquire().await?;
        for sync in ["on", "off"] {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SET synchronous_commit = {sync}"
            )))
            .execute(&mut *conn)
            .await?;
            let k = 300;
            let t = Instant::now();
            for _ in 0..k {
                one().execute(&mut *conn).await?;
            }
            println!(
                "    one INSERT per transaction (autocommit), one connection, \
                 synchronous_commit={sync:<3}: {:.3} ms per message",
                t.elapsed().as_secs_f64() * 1000.0 / k as f64
            );
        }
        sqlx::query("SET synchronous_commit = on")
            .execute(&mut *conn)
            .await?;
        // What the store's enqueue does: BEGIN, advisory lock, INSERT, pg_notify, COMMIT.
        let k = 300;
        let t = Instant::now();
        for i in 0..k {
            sqlx::query("BEGIN").execute(&mut *conn).await?;
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1), hashtext($2))")
                .bind(ROUTE_ID)
                .bind(format!("K-{i}"))
                .execute(&mut *conn)
                .await?;
            one().execute(&mut *conn).await?;
            sqlx::query("SELECT pg_notify('tilts_bench_unused', $1)")
                .bind(ROUTE_ID)
                .execute(&mut *conn)
                .await?;
            sqlx::query("COMMIT").execute(&mut *conn).await?;
        }
        println!(
            "    the enqueue's 5 statements (BEGIN, advisory lock, INSERT, pg_notify, COMMIT), one \
             connection: {:.3} ms per message",
            t.elapsed().as_secs_f64() * 1000.0 / k as f64
        );
        for per_tx in [8u64, 64] {
            let txs = 20;
            let t = Instant::now();
            for _ in 0..txs {
                sqlx::query("BEGIN").execute(&mut *conn).await?;
                for _ in 0..per_tx {
                    one().execute(&mut *conn).await?;
                }
                sqlx::query("COMMIT").execute(&mut *conn).await?;
            }
            let msgs = txs * per_tx;
            println!(
                "    {per_tx:>2} INSERTs per transaction, one connection, synchronous_commit=on: \
                 {:.3} ms per message (group commit)",
                t.elapsed().as_secs_f64() * 1000.0 / msgs as f64
            );
        }
        drop(conn);
        pool.close().await;

        // Round trips and NOTIFY: 8 connections enqueueing at once, three ways.
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(8)
            .connect(&db.url)
            .await?;
        let dur = Duration::from_secs(2);
        for (what, notify, single) in [
            ("the enqueue's 5 statements", true, false),
            ("the same without pg_notify (4 statements)", false, false),
            ("one statement (WITH lock, INSERT, pg_notify)", true, true),
        ] {
            let (pool, message) = (pool.clone(), message.clone());
            let r = closed(8, dur, move |i| {
                let (pool, message) = (pool.clone(), message.clone());
                async move {
                    let m = message(7_000_000 + i);
                    let original = m.original.clone().unwrap_or_else(|| m.payload.clone());
                    let key = m.ordering_key.clone().unwrap_or_default();
                    let e = |e: sqlx::Error| e.to_string();
                    if single {
                        sqlx::query(
                            "WITH l AS (SELECT pg_advisory_xact_lock(hashtext($2), hashtext($3))), \
                             i AS (INSERT INTO messages (id, route_id, ordering_key, received_at, \
                               updated_at, next_attempt_at, payload_type, payload, original_type, \
                               original, last_request_type, last_request) \
                               SELECT $1, $2, $3, $4, $4, $4, $5, $6, $7, $8, $5, $6 FROM l \
                               RETURNING id) \
                             SELECT pg_notify('tilts_bench_unused', $2) FROM i",
                        )
                        .bind(Uuid::now_v7())
                        .bind(m.route_id)
                        .bind(key)
                        .bind(Utc::now())
                        .bind(m.payload.content_type)
                        .bind(m.payload.bytes)
                        .bind(original.content_type)
                        .bind(original.bytes)
                        .execute(&pool)
                        .await
                        .map_err(e)?;
                        return Ok(());
                    }
                    let mut tx = pool.begin().await.map_err(e)?;
                    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1), hashtext($2))")
                        .bind(ROUTE_ID)
                        .bind(&key)
                        .execute(&mut *tx)
                        .await
                        .map_err(e)?;
                    sqlx::query(insert)
                        .bind(Uuid::now_v7())
                        .bind(m.route_id)
                        .bind(m.ordering_key)
                        .bind(Utc::now())
                        .bind(m.payload.content_type)
                        .bind(m.payload.bytes)
                        .bind(original.content_type)
                        .bind(original.bytes)
                        .execute(&mut *tx)
                        .await
                        .map_err(e)?;
                    if notify {
                        sqlx::query("SELECT pg_notify('tilts_bench_unused', $1)")
                            .bind(ROUTE_ID)
                            .execute(&mut *tx)
                            .await
                            .map_err(e)?;
                    }
                    tx.commit().await.map_err(e)
                }
            })
            .await;
            r.line(&format!("{what}, 8 connections at once"));
        }
        // Statements: 64 rows in one multi-row INSERT (UNNEST) per transaction.
        let k = 20u64;
        let t = Instant::now();
        for b in 0..k {
            let m = message(8_000_000 + b);
            let original = m.original.clone().unwrap_or_else(|| m.payload.clone());
            let ids: Vec<Uuid> = (0..64).map(|_| Uuid::now_v7()).collect();
            let keys: Vec<String> = (0..64).map(|j| format!("U-{b}-{j}")).collect();
            sqlx::query(
                "INSERT INTO messages (id, route_id, ordering_key, received_at, updated_at, \
                 next_attempt_at, payload_type, payload, original_type, original, \
                 last_request_type, last_request) \
                 SELECT id, $3, k, $4, $4, $4, $5, $6, $7, $8, $5, $6 \
                 FROM UNNEST($1::uuid[], $2::text[]) AS t(id, k)",
            )
            .bind(ids)
            .bind(keys)
            .bind(m.route_id)
            .bind(Utc::now())
            .bind(m.payload.content_type)
            .bind(m.payload.bytes)
            .bind(original.content_type)
            .bind(original.bytes)
            .execute(&pool)
            .await?;
        }
        println!(
            "    64 rows in ONE multi-row INSERT (UNNEST) per transaction, synchronous_commit=on: \
             {:.3} ms per message",
            t.elapsed().as_secs_f64() * 1000.0 / (k * 64) as f64
        );
        pool.close().await;
        anyhow::Ok(())
    })
}

// ------------------------------------------------------------------------------------------
// Summary.

fn print_summary(s: &Settings, results: &[StoreResult], cpus: usize) {
    println!();
    println!("==============================================================================");
    println!(
        "Summary ({cpus} CPUs, {}; load average now {})",
        cpu_model(),
        load_average()
    );
    println!(
        "phase A: {} producers for {} s; phase B: a backlog of {} (drain time for {} projected \
         when smaller)",
        s.concurrency,
        s.seconds,
        fmt_n(s.backlog),
        fmt_n(YEAR)
    );
    println!();
    println!(
        "  {:<11} {:>11} {:>11} {:>13} {:>11} {:>11} {:>14} {:>9}  verdict (e2e; drain)",
        "store",
        "accepted/s",
        "deliv/s win",
        "deliv/s e2e",
        "tail (s)",
        "drain/s",
        "drain 350k",
        "target",
    );
    let mut invalid = false;
    for r in results {
        let dash = || "-".to_string();
        let (acc, win, e2e, tail) = match &r.a {
            Some(a) => (
                format!("{:.0}", a.accepted_rate()),
                format!("{:.0}", a.delivered_rate_in_window()),
                a.e2e_rate()
                    .map_or("NOT DRAINED".into(), |e| format!("{e:.0}")),
                a.drained
                    .map_or(dash(), |d| format!("{:.2}", d - a.last_accept)),
            ),
            None => (dash(), dash(), dash(), dash()),
        };
        let (drain, year) = match &r.b {
            Some(b) => (
                format!("{:.0}", b.drain_rate()),
                format!(
                    "{}{}",
                    fmt_duration(b.year_secs()),
                    if b.n == YEAR && b.drain_secs.is_some() {
                        ""
                    } else {
                        "*"
                    }
                ),
            ),
            None => (dash(), dash()),
        };
        let target = r.backend.target();
        let v_e2e = r.a.as_ref().map_or("-", |a| {
            if a.e2e_rate().is_some_and(|e| e >= target) {
                "PASS"
            } else {
                "MISS"
            }
        });
        let v_drain = r.b.as_ref().map_or("-", |b| {
            if b.drain_rate() >= target {
                "PASS"
            } else {
                "MISS"
            }
        });
        println!(
            "  {:<11} {:>11} {:>11} {:>13} {:>11} {:>11} {:>14} {:>9}  {v_e2e}; {v_drain}{}",
            r.backend.name(),
            acc,
            win,
            e2e,
            tail,
            drain,
            year,
            format!(">= {target:.0}/s"),
            if v_e2e == "MISS" || v_drain == "MISS" {
                "  <<<<<<<<<< MISS"
            } else {
                ""
            }
        );
        let bad_a =
            r.a.as_ref()
                .is_some_and(|a| !a.check.ok() || a.errors.count > 0 || a.drained.is_none());
        let bad_b =
            r.b.as_ref()
                .is_some_and(|b| !b.check.ok() || b.drain_secs.is_none());
        invalid |= bad_a || bad_b;
    }
    println!();
    println!(
        "  accepted/s: 202 answers per second while producing; deliv/s win: deliveries per second \
         in that window;"
    );
    println!(
        "  deliv/s e2e: accepted messages / (first request to the store empty), the target's \
         figure; tail: last 202 to the store empty;"
    );
    println!(
        "  drain/s: a backlog delivered by a freshly started tilts; drain 350k: its time for a \
         year of traffic (* projected from BENCH_BACKLOG)."
    );
    if invalid {
        println!();
        println!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
        println!(
            "!!! requests failed, messages were lost or duplicated, or a backlog did not drain: \
             see the phases above"
        );
        println!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
    }
}

// ------------------------------------------------------------------------------------------
// CPU accounting: per part of this process (threads are named per runtime), the PostgreSQL
// server's processes, and the whole machine.

#[derive(Default, Clone)]
struct CpuSnapshot {
    at: Option<Instant>,
    /// On-CPU ns per part of this process.
    parts: BTreeMap<&'static str, u64>,
    postgres_ns: u64,
    /// /proc/stat jiffies: busy, iowait, total.
    machine: (u64, u64, u64),
}

struct CpuWindow {
    secs: f64,
    parts: Vec<(&'static str, f64)>,
    postgres_secs: f64,
    /// Busy and iowait shares of all CPUs.
    machine_busy: f64,
    machine_iowait: f64,
}

fn cpu_snapshot() -> CpuSnapshot {
    let mut parts: BTreeMap<&'static str, u64> = BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for task in dir.flatten() {
            let p = task.path();
            let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
            let part = match comm.trim() {
                c if c.starts_with("loadgen") => "load generator",
                c if c.starts_with("tilts") => "tilts (runtime threads)",
                c if c.starts_with("upstream") => "upstream simulator",
                c if c.starts_with("sqlx-sqlite") => "tilts (SQLite connection threads)",
                c if c.starts_with("bench-probe") => "benchmark's own probes",
                _ => "other threads",
            };
            let ns = std::fs::read_to_string(p.join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0);
            *parts.entry(part).or_default() += ns;
        }
    }
    // All `postgres` processes (utime + stime, clock ticks of 10 ms).
    let mut postgres_ns = 0;
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let p = e.path();
            let is_pid = p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
            if !is_pid {
                continue;
            }
            if std::fs::read_to_string(p.join("comm")).map_or(true, |c| c.trim() != "postgres") {
                continue;
            }
            let ticks = std::fs::read_to_string(p.join("stat"))
                .ok()
                .and_then(|stat| {
                    let rest = &stat[stat.rfind(')')? + 1..];
                    let f: Vec<&str> = rest.split_whitespace().collect();
                    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
                });
            postgres_ns += ticks.unwrap_or(0) * 10_000_000;
        }
    }
    let machine = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let line = s.lines().next()?.to_string();
            let v: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .take(8)
                .filter_map(|x| x.parse().ok())
                .collect();
            if v.len() < 8 {
                return None;
            }
            let total: u64 = v.iter().sum();
            let idle = v[3] + v[4];
            Some((total - idle, v[4], total))
        })
        .unwrap_or_default();
    CpuSnapshot {
        at: Some(Instant::now()),
        parts,
        postgres_ns,
        machine,
    }
}

fn cpu_window(a: &CpuSnapshot, b: &CpuSnapshot) -> CpuWindow {
    let secs = match (a.at, b.at) {
        (Some(x), Some(y)) => (y - x).as_secs_f64(),
        _ => 0.0,
    };
    let parts = b
        .parts
        .iter()
        .map(|(k, v)| {
            let before = a.parts.get(k).copied().unwrap_or(0);
            (*k, v.saturating_sub(before) as f64 / 1e9)
        })
        .collect();
    let total = b.machine.2.saturating_sub(a.machine.2).max(1) as f64;
    CpuWindow {
        secs,
        parts,
        postgres_secs: b.postgres_ns.saturating_sub(a.postgres_ns) as f64 / 1e9,
        machine_busy: b.machine.0.saturating_sub(a.machine.0) as f64 / total,
        machine_iowait: b.machine.1.saturating_sub(a.machine.1) as f64 / total,
    }
}

fn print_cpu(w: &CpuWindow, messages: u64) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "  CPU over the phase ({:.1} s wall, {cpus} CPUs = {:.1} CPU-s): machine {:.0}% busy, \
         {:.1}% iowait",
        w.secs,
        w.secs * cpus as f64,
        w.machine_busy * 100.0,
        w.machine_iowait * 100.0
    );
    let per = |secs: f64| secs * 1e6 / messages.max(1) as f64;
    let mut rows: Vec<(&str, f64)> = w.parts.iter().map(|(k, v)| (*k, *v)).collect();
    let ours: f64 = rows.iter().map(|(_, v)| v).sum();
    if w.postgres_secs > 0.0 {
        rows.push(("postgres server (all its processes)", w.postgres_secs));
    }
    let machine = w.machine_busy * w.secs * cpus as f64;
    rows.push((
        "other processes on the machine",
        (machine - ours - w.postgres_secs).max(0.0),
    ));
    for (k, v) in rows {
        if v < 0.005 {
            continue;
        }
        println!(
            "    {k:<38} {v:>7.2} CPU-s  {:>7.1} us/message  ({:.2} CPUs)",
            per(v),
            v / w.secs.max(1e-9)
        );
    }
}

// ------------------------------------------------------------------------------------------
// Small helpers.

fn print_errors(e: &Errors) {
    if e.count > 0 {
        println!("  !!! {} request(s) FAILED; first errors:", e.count);
        for t in &e.first {
            println!("  !!!   {t}");
        }
    }
}

fn mean_ms(sorted_us: &[u32]) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    sorted_us.iter().map(|&u| u as f64).sum::<f64>() / sorted_us.len() as f64 / 1000.0
}

/// Nearest-rank percentile, in ms.
fn pct_ms(sorted_us: &[u32], p: f64) -> f64 {
    nearest_rank(sorted_us, p).map_or(f64::NAN, |us| us as f64 / 1000.0)
}

fn fmt_n(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn fmt_duration(secs: f64) -> String {
    if !secs.is_finite() {
        return "never".into();
    }
    let s = secs.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{secs:.1}s")
    }
}
