//! Benchmark (a measurement, not a test): a synchronous route, validate + map + call + map,
//! through tilts, against calling the upstream system directly, in the same run.
//!
//! Run from the workspace root:
//!
//! ```text
//! cargo bench -p tilts-engine --bench sync_route
//! ```
//!
//! In one process: an upstream simulator (axum, `POST /cases` answers 201 with a fixed case),
//! tilts serving `benches/sync_route/routes.yaml` (compiled with `check::load_with_env`, served
//! with `server::serve`), and the load generator. Each has its own tokio runtime, as if they were
//! three processes on the same machine.
//!
//! - Phase 1, maximum throughput: closed loop, `BENCH_CONCURRENCY` workers sending back to back
//!   over keep-alive connections for `BENCH_SECONDS` after a 2 s warm-up, direct and through tilts.
//! - Phase 2, latency at half the tilts maximum: open loop on a fixed schedule of send times, the
//!   same rate for direct and through tilts, latency measured from the *scheduled* send time (no
//!   coordinated omission); `BENCH_REPEAT` pairs of runs, the verdict on the median added p99.
//! - Phase 3 (`BENCH_SWEEP`), the added latency against load, with tilts' bare-proxy route as a
//!   control: what one more process hop costs on this machine without the route's work.
//!
//! Targets: tilts >= 40% of the direct throughput; added p99 < 1 ms at half the maximum rate. A
//! missed target prints MISS; the exit code is 0 either way (2 only when the setup itself fails).
//!
//! Environment:
//! - `BENCH_CONCURRENCY` closed-loop workers (default 32)
//! - `BENCH_SECONDS` measured seconds per run (default 10), after a 2 s warm-up
//! - `BENCH_RATE` open-loop rate in req/s (default: half of the measured tilts maximum)
//! - `BENCH_THREADS` worker threads per runtime (default: the number of CPUs)
//! - `BENCH_SHARED_RUNTIME=1` one runtime for the three parts instead of one each
//! - `BENCH_PIN=1` tilts' threads on the last CPU, everything else on the others (`taskset`), as
//!   if tilts ran on a machine of its own: the share then says how much traffic one core of
//!   tilts carries against what the other cores' generator and upstream can make
//! - `BENCH_PROFILE=1` also measure route variants (without validate, without templates, bare
//!   proxy, without the call) and the cost of each step in isolation
//! - `BENCH_REPEAT` runs of direct and through tilts (alternately) behind each latency figure
//!   (default 3): the latency verdict takes the median added p99, since one run's p99 swings
//!   with the machine's stalls
//! - `BENCH_SWEEP=1` also measure the added latency against load (phase 3): at 10, 20, 30, 40
//!   and 50% of the tilts maximum, or at the fractions given (`BENCH_SWEEP=0.05,0.25,0.5`),
//!   direct, through tilts and through tilts' bare-proxy route in turn, `BENCH_REPEAT` times;
//!   says up to which load the added p99 stays under the target on this machine
//! - `BENCH_LOG=1` install tilts' logging (one line per request on stderr, as `tilts serve`
//!   does); redirect stderr, e.g. `2>/dev/null`

// The same allocator as the `tilts` binary (engine/src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use axum::Router;
use axum::extract::Request;
use axum::routing::post;
use axum::serve::ListenerExt;
use bytes::Bytes;
use http::{HeaderMap, StatusCode, header};
use serde_json::{Value, json};
use tilts_engine::plan::{Plan, Step};
use tokio::runtime::Runtime;

#[path = "common/bench.rs"]
mod bench;
use bench::{
    Errors, cpu_model, env_flag, env_num, error_text, load_average, narrow_timer_slack,
    nearest_rank, sleep_lateness_us, thread_id, verdict,
};
#[path = "common/usage.rs"]
mod usage;
use usage::{Usage, usage_delta};

/// The upstream's fixed answer.
const CASE_ANSWER: &str = r#"{"caseNumber":"SD-2026-000123","status":"registered"}"#;
const CASE_NUMBER: &str = "SD-2026-000123";
const WARMUP: Duration = Duration::from_secs(2);
const ROUTE_PATH: &str = "/v1/applications";
/// The bench route file's bare proxy: call + respond(echo), no engine steps.
const PROXY_PATH: &str = "/v1/variants/call-only";
/// Connections the upstream simulator accepted so far (shows whether callers reuse them).
static UPSTREAM_CONNECTIONS: AtomicU64 = AtomicU64::new(0);
/// Throughput target: tilts at least this share of the direct throughput.
const TARGET_SHARE: f64 = 0.40;
/// Latency target: added p99 below this, at half the maximum rate.
const TARGET_ADDED_P99_MS: f64 = 1.0;

fn main() {
    // `cargo bench` passes `--bench` (and any filter); this benchmark takes no arguments.
    if let Err(e) = run() {
        eprintln!("sync_route benchmark could not run: {e:#}");
        std::process::exit(2);
    }
}

struct Settings {
    concurrency: usize,
    seconds: u64,
    rate: Option<f64>,
    threads: usize,
    shared_runtime: bool,
    pin: bool,
    profile: bool,
    log: bool,
    /// Fractions of the tilts maximum the latency sweep measures at (empty: no sweep).
    sweep: Vec<f64>,
    /// Runs of direct and through tilts at each point of the sweep.
    repeat: usize,
}

/// The sweep's points when `BENCH_SWEEP=1`.
const DEFAULT_SWEEP: [f64; 5] = [0.1, 0.2, 0.3, 0.4, 0.5];

/// `BENCH_SWEEP`: off, `1` (the default points) or a comma-separated list of fractions of the
/// maximum, each above 0 and at most 1.
fn sweep_points(value: Option<&str>) -> anyhow::Result<Vec<f64>> {
    let v = value.map(str::trim).unwrap_or("");
    match v {
        "" | "0" | "false" | "no" | "off" => return Ok(Vec::new()),
        "1" | "true" | "yes" | "on" => return Ok(DEFAULT_SWEEP.to_vec()),
        _ => {}
    }
    v.split(',')
        .map(|f| {
            let f = f.trim();
            match f.parse::<f64>() {
                Ok(x) if x > 0.0 && x <= 1.0 => Ok(x),
                _ => Err(anyhow!(
                    "BENCH_SWEEP={v:?}: {f:?} is not a fraction of the maximum above 0 and at \
                     most 1 (write e.g. BENCH_SWEEP=0.1,0.25,0.5, or BENCH_SWEEP=1 for 10% to 50%)"
                )),
            }
        })
        .collect()
}

impl Settings {
    fn from_env(cpus: usize) -> anyhow::Result<Settings> {
        let s = Settings {
            concurrency: env_num("BENCH_CONCURRENCY", 32)?,
            seconds: env_num("BENCH_SECONDS", 10)?,
            rate: match std::env::var("BENCH_RATE") {
                Ok(v) if !v.trim().is_empty() => Some(
                    v.trim()
                        .parse()
                        .map_err(|_| anyhow!("BENCH_RATE={v:?} is not a number"))?,
                ),
                _ => None,
            },
            threads: env_num("BENCH_THREADS", cpus)?,
            shared_runtime: env_flag("BENCH_SHARED_RUNTIME"),
            pin: env_flag("BENCH_PIN"),
            profile: env_flag("BENCH_PROFILE"),
            log: env_flag("BENCH_LOG"),
            sweep: sweep_points(std::env::var("BENCH_SWEEP").ok().as_deref())?,
            repeat: env_num("BENCH_REPEAT", 3)?,
        };
        if s.pin && (s.shared_runtime || cpus < 2) {
            bail!("BENCH_PIN needs two CPUs or more and a runtime per part");
        }
        if s.concurrency == 0 || s.seconds == 0 || s.threads == 0 || s.repeat == 0 {
            bail!(
                "BENCH_CONCURRENCY, BENCH_SECONDS, BENCH_THREADS and BENCH_REPEAT must be at least 1"
            );
        }
        if s.rate.is_some_and(|r: f64| r.is_nan() || r <= 0.0) {
            bail!("BENCH_RATE must be a positive number of requests per second");
        }
        Ok(s)
    }
}

/// The three parts' runtimes (the same one three times with `BENCH_SHARED_RUNTIME=1`).
struct Runtimes {
    load: Arc<Runtime>,
    tilts: Arc<Runtime>,
    upstream: Arc<Runtime>,
}

fn runtime(name: &str, threads: usize) -> anyhow::Result<Arc<Runtime>> {
    Ok(Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name(name)
            .enable_all()
            .build()
            .with_context(|| format!("cannot start the {name} runtime"))?,
    ))
}

fn run() -> anyhow::Result<()> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let settings = Settings::from_env(cpus)?;
    // Kept to the end: its drop writes out the queued log lines.
    let _log = settings
        .log
        .then(|| tilts_engine::logging::init(tilts_engine::logging::LogFormat::Text));
    let rts = if settings.shared_runtime {
        let rt = runtime("shared-rt", settings.threads)?;
        Runtimes {
            load: rt.clone(),
            tilts: rt.clone(),
            upstream: rt,
        }
    } else {
        Runtimes {
            load: runtime("loadgen-rt", settings.threads)?,
            tilts: {
                // tilts serves HTTP connections on threads of its own, as many as the runtimes'.
                tilts_engine::server::set_http_threads(settings.threads);
                runtime("tilts-rt", settings.threads)?
            },
            upstream: runtime("upstream-rt", settings.threads)?,
        }
    };

    if settings.pin {
        pin_threads(cpus)?;
    }
    let (upstream_addr, seen) = start_upstream(&rts.upstream)?;
    let (tilts_addr, plan, stop_tilts) = start_tilts(&rts.tilts, upstream_addr)?;
    let application = Bytes::from(serde_json::to_vec(&tilts_engine::demo::application(
        451,
        "010190-12349",
    ))?);
    let mapped = sanity_check(&rts.load, tilts_addr, upstream_addr, &application, &seen)?;

    let tilts_target = Arc::new(Target {
        url: format!("http://{tilts_addr}{ROUTE_PATH}"),
        body: application.clone(),
    });
    let direct_target = Arc::new(Target {
        url: format!("http://{upstream_addr}/cases"),
        body: mapped.clone(),
    });
    let measure = Duration::from_secs(settings.seconds);

    print_header(&settings, cpus);

    // Phase 1.
    println!();
    println!(
        "Phase 1: maximum throughput (closed loop, {} workers back to back over keep-alive \
         connections, {} s warm-up + {} s measured)",
        settings.concurrency,
        WARMUP.as_secs(),
        settings.seconds
    );
    let client = new_client(settings.concurrency)?;
    let direct = closed_loop(
        &rts.load,
        &client,
        &direct_target,
        settings.concurrency,
        measure,
    );
    print_throughput("direct", &direct, None);
    let tilts = closed_loop(
        &rts.load,
        &client,
        &tilts_target,
        settings.concurrency,
        measure,
    );
    let share = tilts.rate() / direct.rate().max(f64::MIN_POSITIVE);
    print_throughput("tilts", &tilts, Some(share));
    drop(client);
    println!();
    print_usage_table(
        "Phase 1",
        &[("direct", &direct.usage), ("tilts", &tilts.usage)],
    );

    // Phase 2.
    let rate = settings.rate.unwrap_or((tilts.rate() / 2.0).max(1.0));
    println!();
    println!(
        "Phase 2: latency at {rate:.0} req/s{} (open loop: a fixed schedule of send times, sent \
         every {} us, latency from the scheduled send time; {} s warm-up + {} s measured each)",
        if settings.rate.is_some() {
            " (BENCH_RATE)"
        } else {
            " = half of the tilts maximum"
        },
        DISPATCH_TICK.as_micros(),
        WARMUP.as_secs(),
        settings.seconds
    );
    let client = new_client(settings.concurrency)?;
    let direct_lat = open_loop(&rts.load, &client, &direct_target, rate, measure);
    let tilts_lat = open_loop(&rts.load, &client, &tilts_target, rate, measure);
    let mut added_runs = vec![print_latency(&direct_lat, &tilts_lat)];
    println!();
    print_usage_table(
        "Phase 2",
        &[("direct", &direct_lat.usage), ("tilts", &tilts_lat.usage)],
    );
    // One run's p99 swings with the machine's stalls; the verdict takes the median of several.
    let mut phase2_errors = direct_lat.errors + tilts_lat.errors;
    for _ in 1..settings.repeat {
        let d = open_loop(&rts.load, &client, &direct_target, rate, measure);
        let t = open_loop(&rts.load, &client, &tilts_target, rate, measure);
        for l in [&d, &t] {
            print_errors(l.errors, &l.first_errors);
        }
        phase2_errors += d.errors + t.errors;
        added_runs.push(t.added_ms(&d, 99.0));
    }
    let added_p99 = median(&added_runs);
    println!();
    println!(
        "  added p99 in {} run(s) (direct and through tilts alternately; BENCH_REPEAT): {}",
        added_runs.len(),
        added_runs
            .iter()
            .map(|a| format!("{a:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  median: {added_p99:.3} ms (target < {TARGET_ADDED_P99_MS:.0} ms)  {}",
        verdict(added_p99 < TARGET_ADDED_P99_MS)
    );

    // Phase 3.
    let mut sweep_errors = 0;
    if !settings.sweep.is_empty() {
        let sweep = Sweep {
            rt: &rts.load,
            client: &client,
            direct: &direct_target,
            tilts: &tilts_target,
            proxy: &Arc::new(Target {
                url: format!("http://{tilts_addr}{PROXY_PATH}"),
                body: application.clone(),
            }),
            measure,
            repeat: settings.repeat,
        };
        sweep_errors = sweep.run(&settings.sweep, tilts.rate());
    }
    drop(client);

    // Verdict.
    let errors = direct.errors + tilts.errors + phase2_errors + sweep_errors;
    println!();
    println!("Targets:");
    println!(
        "  throughput through tilts >= {:.0}% of direct:  {:5.1}%   {}",
        TARGET_SHARE * 100.0,
        share * 100.0,
        verdict(share >= TARGET_SHARE)
    );
    println!(
        "  added p99 < {TARGET_ADDED_P99_MS:.0} ms at {rate:.0} req/s (median):  {added_p99:6.3} ms  {}",
        verdict(added_p99 < TARGET_ADDED_P99_MS)
    );
    if errors > 0 {
        println!();
        println!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
        println!(
            "!!! {errors} REQUEST(S) FAILED during the measurement: the figures above are NOT valid"
        );
        println!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
    }

    if settings.profile {
        profile(&rts, &settings, &plan, tilts_addr, &direct, &application)?;
    } else {
        println!();
        println!("(BENCH_PROFILE=1 also measures route variants and the cost of each step.)");
    }
    if settings.sweep.is_empty() {
        println!("(BENCH_SWEEP=1 also measures the added latency at 10% to 50% of the maximum.)");
    }

    println!();
    println!("load average at the end: {}", load_average());
    let _ = stop_tilts.send(());
    drop(plan);
    Ok(())
}

fn print_header(s: &Settings, cpus: usize) {
    println!("tilts benchmark: sync route, validate + map + call + map, against the direct call");
    println!("==============================================================================");
    println!("machine:   {cpus} CPUs (nproc), {}", cpu_model());
    let (p50, p99, p999, max) = sleep_lateness_us(5000);
    println!(
        "           a 100 us sleep on the idle process wakes late by p50 {p50:.0} us, p99 {p99:.0} \
         us, p99.9 {p999:.0} us, max {max:.0} us (the machine's own stalls; they count in every \
         latency below)"
    );
    println!(
        "           load average at start: {} (other processes compete for the same cores and add noise)",
        load_average()
    );
    println!(
        "setup:     the load generator, tilts and the upstream simulator run in THIS process, \
         {} ({} worker threads each);",
        if s.shared_runtime {
            "one shared tokio runtime"
        } else {
            "three tokio runtimes"
        },
        s.threads
    );
    if s.pin {
        println!(
            "           PINNED (BENCH_PIN=1): tilts' threads on CPU {}, the generator, the upstream \
             and everything else on the other CPUs",
            cpus - 1
        );
    } else {
        println!(
            "           on a machine with few cores they share the cores, which penalizes the \
             through-tilts figure (tilts' own work competes with the generator and the upstream)"
        );
    }
    println!(
        "route:     POST {ROUTE_PATH}: validate (JSON Schema) -> map (Handlebars) -> call \
         POST /cases -> respond 201 (Handlebars)"
    );
    println!(
        "direct:    POST /cases to the upstream with the already-mapped body (as tilts sends it)"
    );
    println!(
        "logging:   {}",
        if s.log {
            "tilts' logging installed (BENCH_LOG=1), one line per request on stderr"
        } else {
            "no log subscriber (tilts serve logs one line per request; BENCH_LOG=1 includes it)"
        }
    );
}

/// `BENCH_PIN=1`: tilts' runtime threads to the last CPU, every other thread of the process
/// (the generator, the upstream, this dispatcher) to the others, with `taskset`.
fn pin_threads(cpus: usize) -> anyhow::Result<()> {
    let last = cpus - 1;
    let others = if last == 1 {
        "0".to_string()
    } else {
        format!("0-{}", last - 1)
    };
    for task in std::fs::read_dir("/proc/self/task").context("cannot list the threads")? {
        let task = task?;
        let tid = task.file_name().to_string_lossy().into_owned();
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let cpu = if comm.starts_with("tilts") {
            last.to_string()
        } else {
            others.clone()
        };
        let status = std::process::Command::new("taskset")
            .args(["-pc", &cpu, &tid])
            .stdout(std::process::Stdio::null())
            .status()
            .context("cannot run taskset (util-linux)")?;
        if !status.success() {
            bail!("taskset -pc {cpu} {tid} failed");
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// The upstream simulator and tilts.

/// The first request the upstream received: what tilts sends, after mapping.
struct Seen {
    headers: HeaderMap,
    body: Bytes,
}

fn start_upstream(rt: &Runtime) -> anyhow::Result<(SocketAddr, Arc<OnceLock<Seen>>)> {
    let seen = Arc::new(OnceLock::new());
    let first = seen.clone();
    let app = Router::new().route(
        "/cases",
        post(move |req: Request| {
            let first = first.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = axum::body::to_bytes(body, 1 << 20)
                    .await
                    .unwrap_or_default();
                if first.get().is_none() {
                    let _ = first.set(Seen {
                        headers: parts.headers,
                        body,
                    });
                }
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
    let listener = listener.tap_io(|tcp| {
        UPSTREAM_CONNECTIONS.fetch_add(1, Ordering::Relaxed);
        let _ = tcp.set_nodelay(true);
    });
    rt.spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("upstream simulator stopped: {e}");
        }
    });
    Ok((addr, seen))
}

fn start_tilts(
    rt: &Runtime,
    upstream: SocketAddr,
) -> anyhow::Result<(SocketAddr, Arc<Plan>, tokio::sync::oneshot::Sender<()>)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/sync_route/routes.yaml");
    let url = format!("http://{upstream}");
    let lookup = |k: &str| (k == "UPSTREAM_URL").then(|| url.clone());
    // Inside the runtime: the plan builds the HTTP clients of its systems.
    let plan = rt
        .block_on(async { tilts_engine::check::load_with_env(&path, &lookup) })
        .map_err(|d| anyhow!("{} does not check:\n{d}", path.display()))?;
    let plan = Arc::new(plan);
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .context("cannot bind tilts")?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = plan.clone();
    rt.spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
        };
        // No store: the benchmark's routes are all synchronous.
        if let Err(e) = tilts_engine::server::serve(served, None, listener, shutdown).await {
            eprintln!("tilts stopped: {e}");
        }
    });
    Ok((addr, plan, stop))
}

/// One request through tilts and one direct, checked in full; returns the mapped body tilts
/// sent upstream (the direct baseline sends exactly that).
fn sanity_check(
    rt: &Runtime,
    tilts: SocketAddr,
    upstream: SocketAddr,
    application: &Bytes,
    seen: &OnceLock<Seen>,
) -> anyhow::Result<Bytes> {
    let client = new_client(1)?;
    rt.block_on(async {
        let resp = client
            .post(format!("http://{tilts}{ROUTE_PATH}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(application.clone())
            .send()
            .await
            .context("tilts did not answer")?;
        let status = resp.status();
        let body = resp.bytes().await?;
        let answer: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if status != StatusCode::CREATED
            || answer.pointer("/institution/caseNumber") != Some(&json!(CASE_NUMBER))
            || answer["status"] != "forwarded"
        {
            bail!(
                "tilts answered {status} {}; expected 201 with institution.caseNumber {CASE_NUMBER}",
                String::from_utf8_lossy(&body)
            );
        }
        let sent = seen
            .get()
            .ok_or_else(|| anyhow!("the upstream received nothing"))?;
        let mapped: Value = serde_json::from_slice(&sent.body)
            .context("tilts sent the upstream a body that is not JSON")?;
        if mapped["serviceCode"] != "SOC-ASSIST-01"
            || mapped["applicationId"] != "VPVKAC-2026-000451"
            || mapped.pointer("/source/system") != Some(&json!("VPVKAC"))
            || sent.headers.get("idempotency-key").map(|v| v.as_bytes())
                != Some(b"VPVKAC-2026-000451".as_slice())
        {
            bail!(
                "tilts sent the upstream an unexpected request: {}",
                String::from_utf8_lossy(&sent.body)
            );
        }
        let direct = Target {
            url: format!("http://{upstream}/cases"),
            body: sent.body.clone(),
        };
        send(&client, &direct)
            .await
            .map_err(|e| anyhow!("the direct call failed: {e}"))?;
        Ok(sent.body.clone())
    })
}

// ------------------------------------------------------------------------------------------
// Load generation.

struct Target {
    url: String,
    body: Bytes,
}

fn new_client(concurrency: usize) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency.max(64) * 4)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .context("cannot build the load generator's HTTP client")
}

/// One request; Ok only for a 201 with the whole answer read.
async fn send(client: &reqwest::Client, t: &Target) -> Result<(), String> {
    let resp = client
        .post(&t.url)
        .header(header::CONTENT_TYPE, "application/json")
        .header("idempotency-key", "VPVKAC-2026-000451")
        .body(t.body.clone())
        .send()
        .await
        .map_err(|e| error_text(&e))?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| error_text(&e))?;
    if status != StatusCode::CREATED {
        let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        return Err(format!("answered {status}: {text}"));
    }
    Ok(())
}

struct Throughput {
    ok: u64,
    /// Failed requests during the whole run, warm-up included.
    errors: u64,
    first_errors: Vec<String>,
    secs: f64,
    latency_sum: Duration,
    /// What the parts of the process used during the measured window.
    usage: Window,
    /// Connections the upstream accepted during the run, warm-up included.
    upstream_connections: u64,
}

impl Throughput {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.secs
    }
    fn mean_ms(&self) -> f64 {
        if self.ok == 0 {
            0.0
        } else {
            self.latency_sum.as_secs_f64() * 1000.0 / self.ok as f64
        }
    }
}

/// Closed loop: `concurrency` workers, each sending back to back; counts the answers that
/// complete inside the measured window.
fn closed_loop(
    rt: &Runtime,
    client: &reqwest::Client,
    target: &Arc<Target>,
    concurrency: usize,
    measure: Duration,
) -> Throughput {
    let connections = UPSTREAM_CONNECTIONS.load(Ordering::Relaxed);
    rt.block_on(async {
        let start = Instant::now();
        let m_start = start + WARMUP;
        let m_end = m_start + measure;
        let workers: Vec<_> = (0..concurrency)
            .map(|_| {
                let client = client.clone();
                let target = target.clone();
                tokio::spawn(async move {
                    let (mut ok, mut lat, mut errors) = (0u64, Duration::ZERO, Errors::default());
                    loop {
                        let sent = Instant::now();
                        if sent >= m_end {
                            break;
                        }
                        let r = send(&client, &target).await;
                        let done = Instant::now();
                        match r {
                            Ok(()) if done >= m_start && done < m_end => {
                                ok += 1;
                                lat += done - sent;
                            }
                            Ok(()) => {}
                            Err(e) => errors.add(e),
                        }
                    }
                    (ok, lat, errors)
                })
            })
            .collect();
        tokio::time::sleep_until(m_start.into()).await;
        let usage_start = thread_usage();
        tokio::time::sleep_until(m_end.into()).await;
        let usage_end = thread_usage();
        let mut t = Throughput {
            ok: 0,
            errors: 0,
            first_errors: Vec::new(),
            secs: measure.as_secs_f64(),
            latency_sum: Duration::ZERO,
            usage: Window {
                requests: 0,
                secs: measure.as_secs_f64(),
                parts: usage_delta(&usage_start, &usage_end),
            },
            upstream_connections: 0,
        };
        let mut errors = Errors::default();
        for w in workers {
            match w.await {
                Ok((ok, lat, e)) => {
                    t.ok += ok;
                    t.latency_sum += lat;
                    errors.merge(e);
                }
                Err(e) => errors.add(format!("worker panicked: {e}")),
            }
        }
        t.errors = errors.count;
        t.first_errors = errors.first;
        t.upstream_connections = UPSTREAM_CONNECTIONS.load(Ordering::Relaxed) - connections;
        t.usage.requests = t.ok;
        t
    })
}

struct Latencies {
    /// Latencies (ns) of the measured requests, sorted.
    sorted: Vec<u64>,
    errors: u64,
    first_errors: Vec<String>,
    /// How late the dispatcher sent its latest request (already counted in the latencies).
    max_dispatch_lag: Duration,
    /// Requests due inside the measured window.
    scheduled: u64,
    /// What the parts of the process used while the measured requests were sent.
    usage: Window,
    /// Why the dispatcher may be less punctual than it tries to be.
    punctual: Option<String>,
}

/// Most requests the open loop lets wait or run at once; beyond that the system is not keeping
/// up with the rate, and a request is counted as failed instead of queueing yet more.
const MAX_IN_FLIGHT: usize = 1000;

/// Connections (each a task sending one request at a time) the open loop sends over. Far more
/// than the rate needs (a request takes well under a millisecond), so a request waits for a
/// connection only when the system under test is behind; never more, so a stall does not turn
/// into a burst of new connections that the measurement would then also pay for.
const OPEN_CONNECTIONS: usize = 64;

/// The open loop's dispatcher wakes at most this often and sends everything due by then. A
/// wake-up per request (11,000 a second at half the maximum on two cores) cost the dispatcher
/// ~25 us of CPU per request on a VM, which the system under test then lacked. The wait until
/// the tick (0 to 250 us, the same for direct and through tilts) counts in the latencies.
const DISPATCH_TICK: Duration = Duration::from_micros(250);

/// Open loop: request i is due at `start + i / rate` whatever happened to the earlier ones; its
/// latency runs from that due time to the end of its answer.
///
/// A dispatcher thread (this one, at a raised priority and with a fine timer slack, so that it
/// keeps to its schedule on a busy machine) hands the due requests, every [`DISPATCH_TICK`], to
/// [`OPEN_CONNECTIONS`] sender tasks on the load runtime: no task spawned and no connection
/// opened per request, so the generator stays cheap and the latencies are the system's, not
/// the generator's.
fn open_loop(
    rt: &Runtime,
    client: &reqwest::Client,
    target: &Arc<Target>,
    rate: f64,
    measure: Duration,
) -> Latencies {
    let total = (rate * (WARMUP + measure).as_secs_f64()).round() as u64;
    // Many receivers on one queue, each message waking one of them (a shared receiver behind
    // a lock woke a second task per request to hand the lock on).
    let (tx, rx) = async_channel::unbounded::<(Instant, bool)>();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let senders: Vec<_> = (0..OPEN_CONNECTIONS)
        .map(|_| {
            let (client, target) = (client.clone(), target.clone());
            let (rx, in_flight) = (rx.clone(), in_flight.clone());
            rt.spawn(async move {
                let (mut latencies, mut errors) = (Vec::new(), Errors::default());
                loop {
                    let Ok((due, measured)) = rx.recv().await else {
                        break;
                    };
                    let r = send(&client, &target).await;
                    let latency = due.elapsed();
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                    match r {
                        Ok(()) if measured => latencies.push(latency.as_nanos() as u64),
                        Ok(()) => {}
                        Err(e) => errors.add(e),
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let punctual = make_dispatcher_punctual();

    let start = Instant::now() + Duration::from_millis(20);
    let m_start = start + WARMUP;
    let mut errors = Errors::default();
    let mut max_lag = Duration::ZERO;
    let mut scheduled = 0u64;
    let mut usage_start = None;
    let mut next_wake = start;
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        let now = Instant::now();
        if due > now {
            // One wake-up per tick at most; what is due by then goes out together.
            let wake = due.max(next_wake);
            std::thread::sleep(wake - now);
            next_wake = wake + DISPATCH_TICK;
        } else {
            max_lag = max_lag.max(now - due);
        }
        let measured = due >= m_start;
        scheduled += u64::from(measured);
        if measured && usage_start.is_none() {
            usage_start = Some((Instant::now(), thread_usage()));
        }
        if in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
            errors.add(format!(
                "not sent: {MAX_IN_FLIGHT} requests waiting or in flight already (not keeping up with the rate)"
            ));
            continue;
        }
        in_flight.fetch_add(1, Ordering::Relaxed);
        if tx.try_send((due, measured)).is_err() {
            errors.add("the sender tasks stopped early".to_string());
            break;
        }
    }
    drop(tx);
    let (since, usage_start) = usage_start.unwrap_or_else(|| (Instant::now(), BTreeMap::new()));
    let usage = Window {
        requests: scheduled,
        secs: since.elapsed().as_secs_f64(),
        parts: usage_delta(&usage_start, &thread_usage()),
    };
    let mut sorted = Vec::with_capacity(scheduled as usize);
    rt.block_on(async {
        for s in senders {
            match s.await {
                Ok((latencies, e)) => {
                    sorted.extend(latencies);
                    errors.merge(e);
                }
                Err(e) => errors.add(format!("sender task panicked: {e}")),
            }
        }
    });
    sorted.sort_unstable();
    Latencies {
        sorted,
        errors: errors.count,
        first_errors: errors.first,
        max_dispatch_lag: max_lag,
        scheduled,
        usage,
        punctual,
    }
}

/// Raises the calling thread's priority and narrows its timer slack (Linux, through `/proc` and
/// `renice`; the priority needs root or CAP_SYS_NICE). Returns what could not be done, for the
/// report.
fn make_dispatcher_punctual() -> Option<String> {
    let Some(tid) = thread_id() else {
        return Some("the dispatcher runs as is (no /proc/thread-self)".into());
    };
    let mut missed = Vec::new();
    if !narrow_timer_slack() {
        missed.push("keeps the default 50 us timer slack");
    }
    let reniced = std::process::Command::new("renice")
        .args(["-n", "-10", "-p", &tid.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !reniced {
        missed.push("runs at normal priority (renice -n -10 failed)");
    }
    (!missed.is_empty()).then(|| format!("the dispatcher {}", missed.join(" and ")))
}

impl Latencies {
    /// The nearest-rank `p`th percentile, in ms.
    fn pct_ms(&self, p: f64) -> f64 {
        nearest_rank(&self.sorted, p).map_or(f64::NAN, |ns| ns as f64 / 1e6)
    }

    /// What this run adds to `direct`'s latency at the `p`th percentile, in ms.
    fn added_ms(&self, direct: &Latencies, p: f64) -> f64 {
        self.pct_ms(p) - direct.pct_ms(p)
    }
}

// ------------------------------------------------------------------------------------------
// CPU accounting per part of the process (threads are named per runtime).

/// The parts' usage between two snapshots, and the requests answered meanwhile.
struct Window {
    requests: u64,
    secs: f64,
    parts: BTreeMap<&'static str, Usage>,
}

impl Window {
    /// CPUs the process kept busy on average during the window.
    fn cpus_busy(&self) -> f64 {
        let ns: u64 = self.parts.values().map(|u| u.ns).sum();
        ns as f64 / 1e9 / self.secs.max(f64::MIN_POSITIVE)
    }
}

/// Usage per part, summed over the process' threads.
fn thread_usage() -> BTreeMap<&'static str, Usage> {
    usage::thread_usage(|comm| match comm {
        c if c.starts_with("loadgen") => "load generator",
        c if c.starts_with("tilts") => "tilts",
        c if c.starts_with("upstream") => "upstream",
        c if c.starts_with("shared") => "all (shared runtime)",
        _ => "other threads",
    })
}

// ------------------------------------------------------------------------------------------
// Report.

fn print_throughput(name: &str, t: &Throughput, share: Option<f64>) {
    let share = share.map_or(String::new(), |s| {
        format!(
            "  ({:.1}% of direct; target >= {:.0}%)  {}",
            s * 100.0,
            TARGET_SHARE * 100.0,
            verdict(s >= TARGET_SHARE)
        )
    });
    println!(
        "  {:<8} {:>8.0} req/s   errors: {:<4} mean latency {:6.3} ms   upstream connections opened: {:<5}{share}",
        format!("{name}:"),
        t.rate(),
        t.errors,
        t.mean_ms(),
        t.upstream_connections
    );
    print_errors(t.errors, &t.first_errors);
}

fn print_errors(count: u64, first: &[String]) {
    if count > 0 {
        println!("  !!! {count} request(s) FAILED; first errors:");
        for e in first {
            println!("  !!!   {e}");
        }
    }
}

/// CPU time and context switches per answered request, per part of the process.
fn print_usage_table(title: &str, runs: &[(&str, &Window)]) {
    let mut parts: Vec<&'static str> = Vec::new();
    for (_, w) in runs {
        for k in w.parts.keys() {
            if !parts.contains(k) {
                parts.push(k);
            }
        }
    }
    let order = |p: &str| match p {
        "load generator" => 0,
        "tilts" => 1,
        "upstream" => 2,
        "all (shared runtime)" => 3,
        _ => 4,
    };
    parts.sort_by_key(|p| order(p));
    println!("  {title}: CPU time per request in microseconds [context switches per request]");
    print!("  {:<14}", "");
    for p in &parts {
        print!("{p:>22}");
    }
    println!("{:>18}{:>11}", "total", "CPUs busy");
    for (name, w) in runs {
        print!("  {name:<14}");
        let mut total = Usage::default();
        for p in &parts {
            let u = w.parts.get(p).copied().unwrap_or_default();
            total.ns += u.ns;
            total.switches += u.switches;
            print!("{:>22}", usage_cell(u, w.requests));
        }
        println!(
            "{:>18}{:>11.2}",
            usage_cell(total, w.requests),
            w.cpus_busy()
        );
    }
}

fn usage_cell(u: Usage, requests: u64) -> String {
    format!(
        "{:.1} [{:.2}]",
        per_request_us(u.ns, requests),
        u.switches as f64 / requests.max(1) as f64
    )
}

fn per_request_us(ns: u64, requests: u64) -> f64 {
    if requests == 0 {
        0.0
    } else {
        ns as f64 / requests as f64 / 1000.0
    }
}

/// Prints one run's latency table; returns its added p99 in ms.
fn print_latency(direct: &Latencies, tilts: &Latencies) -> f64 {
    const PS: [(f64, &str); 5] = [
        (50.0, "p50"),
        (90.0, "p90"),
        (99.0, "p99"),
        (99.9, "p99.9"),
        (100.0, "max"),
    ];
    print!("  {:<8}", "(ms)");
    for (_, n) in PS {
        print!("{n:>10}");
    }
    println!("{:>12}{:>9}", "answered", "errors");
    for (name, l) in [("direct", direct), ("tilts", tilts)] {
        print!("  {name:<8}");
        for (p, _) in PS {
            print!("{:>10.3}", l.pct_ms(p));
        }
        println!(
            "{:>12}{:>9}",
            format!("{}/{}", l.sorted.len(), l.scheduled),
            l.errors
        );
    }
    print!("  {:<8}", "added");
    for (p, _) in PS {
        print!("{:>10.3}", tilts.added_ms(direct, p));
    }
    println!();
    for (name, l) in [("direct", direct), ("tilts", tilts)] {
        print_errors(l.errors, &l.first_errors);
        if let Some(why) = &l.punctual {
            println!("  note: {why}");
        }
        if l.max_dispatch_lag > Duration::from_millis(1) {
            println!(
                "  note: the {name} dispatcher fell up to {:.1} ms behind its schedule (counted in the latencies)",
                l.max_dispatch_lag.as_secs_f64() * 1000.0
            );
        }
    }
    let (added_p50, added_p99) = (tilts.added_ms(direct, 50.0), tilts.added_ms(direct, 99.0));
    println!("  added p50: {added_p50:.3} ms, added p99: {added_p99:.3} ms (this run)");
    added_p99
}

// ------------------------------------------------------------------------------------------
// BENCH_SWEEP: the added latency against load.

/// Phase 3: the open loop at several fractions of the tilts maximum, direct and through tilts
/// alternately, so that a slow spell of the machine falls on both alike.
struct Sweep<'a> {
    rt: &'a Runtime,
    client: &'a reqwest::Client,
    direct: &'a Arc<Target>,
    tilts: &'a Arc<Target>,
    /// The same request through tilts' bare-proxy route (call + echo, no engine steps): what
    /// the two extra socket hops cost on this machine, without the route's work.
    proxy: &'a Arc<Target>,
    measure: Duration,
    repeat: usize,
}

/// One point of the sweep: what the runs at one rate gave.
#[derive(Default)]
struct SweepPoint {
    direct_p99: Vec<f64>,
    tilts_p99: Vec<f64>,
    added_p50: Vec<f64>,
    added_p99: Vec<f64>,
    proxy_added_p99: Vec<f64>,
    /// CPUs the process kept busy, direct and through tilts.
    direct_busy: Vec<f64>,
    tilts_busy: Vec<f64>,
    /// CPU time of tilts' threads per request, in microseconds.
    tilts_us: Vec<f64>,
    errors: u64,
}

impl SweepPoint {
    fn add(&mut self, direct: &Latencies, tilts: &Latencies, proxy: &Latencies) {
        self.direct_p99.push(direct.pct_ms(99.0));
        self.tilts_p99.push(tilts.pct_ms(99.0));
        self.added_p50.push(tilts.added_ms(direct, 50.0));
        self.added_p99.push(tilts.added_ms(direct, 99.0));
        self.proxy_added_p99.push(proxy.added_ms(direct, 99.0));
        self.direct_busy.push(direct.usage.cpus_busy());
        self.tilts_busy.push(tilts.usage.cpus_busy());
        let tilts_ns = tilts.usage.parts.get("tilts").map_or(0, |u| u.ns);
        self.tilts_us
            .push(per_request_us(tilts_ns, tilts.usage.requests));
        self.errors += direct.errors + tilts.errors + proxy.errors;
    }

    /// Whether the median added p99 meets the target, with no request failed.
    fn meets_target(&self) -> bool {
        self.errors == 0 && median(&self.added_p99) < TARGET_ADDED_P99_MS
    }
}

impl Sweep<'_> {
    /// Measures and prints every point; returns the failed requests.
    fn run(&self, fractions: &[f64], max_rate: f64) -> u64 {
        println!();
        println!(
            "Phase 3: added latency against load (BENCH_SWEEP; at each rate direct, through \
             tilts and through tilts' bare-proxy route (call + echo) in turn, {} time(s), {} s \
             warm-up + {} s measured each; medians, with the lowest and highest run)",
            self.repeat,
            WARMUP.as_secs(),
            self.measure.as_secs()
        );
        println!(
            "  {:>7} {:>8} {:>15} {:>12} {:>11} {:>10} {:>10} {:>25} {:>11} {:>10}",
            "of max",
            "req/s",
            "CPUs busy",
            "tilts CPU",
            "direct p99",
            "tilts p99",
            "added p50",
            "added p99 [runs]",
            "bare proxy",
            "p99 < 1ms"
        );
        println!(
            "  {:>7} {:>8} {:>15} {:>12} {:>11} {:>10} {:>10} {:>25} {:>11}",
            "", "", "direct/tilts", "us/request", "ms", "ms", "ms", "ms", "added p99"
        );
        let mut errors = 0;
        let mut met_up_to = None;
        let mut missed = false;
        for &f in fractions {
            let rate = (max_rate * f).max(1.0);
            let mut point = SweepPoint::default();
            for _ in 0..self.repeat {
                let d = open_loop(self.rt, self.client, self.direct, rate, self.measure);
                let t = open_loop(self.rt, self.client, self.tilts, rate, self.measure);
                let p = open_loop(self.rt, self.client, self.proxy, rate, self.measure);
                point.add(&d, &t, &p);
            }
            errors += point.errors;
            let met = point.meets_target();
            if met && !missed {
                met_up_to = Some(f);
            }
            missed |= !met;
            println!(
                "  {:>6.0}% {:>8.0} {:>15} {:>12.1} {:>11.3} {:>10.3} {:>10.3} {:>9.3} [{:.3}..{:.3}] {:>11.3} {:>5}{}",
                f * 100.0,
                rate,
                format!(
                    "{:.2} / {:.2}",
                    median(&point.direct_busy),
                    median(&point.tilts_busy)
                ),
                median(&point.tilts_us),
                median(&point.direct_p99),
                median(&point.tilts_p99),
                median(&point.added_p50),
                median(&point.added_p99),
                min(&point.added_p99),
                max(&point.added_p99),
                median(&point.proxy_added_p99),
                point
                    .added_p99
                    .iter()
                    .filter(|&&a| a < TARGET_ADDED_P99_MS)
                    .count(),
                if point.errors > 0 {
                    format!("   !!! {} request(s) failed", point.errors)
                } else {
                    format!(" of {}", self.repeat)
                }
            );
        }
        match met_up_to {
            Some(f) => println!(
                "  the median added p99 stays under {TARGET_ADDED_P99_MS:.0} ms up to {:.0}% of the \
                 maximum ({:.0} req/s) on this machine",
                f * 100.0,
                max_rate * f
            ),
            None => println!(
                "  the median added p99 is over {TARGET_ADDED_P99_MS:.0} ms already at the lowest \
                 rate measured"
            ),
        }
        errors
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

// ------------------------------------------------------------------------------------------
// BENCH_PROFILE=1: where the time goes.

fn profile(
    rts: &Runtimes,
    s: &Settings,
    plan: &Plan,
    tilts: SocketAddr,
    direct: &Throughput,
    application: &Bytes,
) -> anyhow::Result<()> {
    println!();
    println!(
        "Profile 1: route variants, maximum throughput (closed loop, {} workers, {} s each)",
        s.concurrency, s.seconds
    );
    let variants = [
        (
            "/v1/applications",
            "full: validate + map + call + respond(template)",
        ),
        (
            "/v1/variants/no-validate",
            "no-validate: map + call + respond(template)",
        ),
        (
            "/v1/variants/no-maps",
            "no-maps: validate + call + respond(echo, no template)",
        ),
        (PROXY_PATH, "call-only: call + respond(echo), a bare proxy"),
        (
            "/v1/variants/no-call",
            "no-call: validate + map + respond(echo), no upstream hop",
        ),
    ];
    let client = new_client(s.concurrency)?;
    let mut runs = Vec::new();
    for (path, what) in variants {
        let target = Arc::new(Target {
            url: format!("http://{tilts}{path}"),
            body: application.clone(),
        });
        let t = closed_loop(&rts.load, &client, &target, s.concurrency, measure(s));
        println!(
            "  {what:<58} {:>7.0} req/s ({:5.1}% of direct)  errors: {}  upstream connections opened: {}",
            t.rate(),
            t.rate() / direct.rate().max(f64::MIN_POSITIVE) * 100.0,
            t.errors,
            t.upstream_connections
        );
        print_errors(t.errors, &t.first_errors);
        runs.push((what.split(':').next().unwrap_or(what), t));
    }
    drop(client);
    println!();
    let mut table: Vec<(&str, &Window)> = vec![("direct", &direct.usage)];
    table.extend(runs.iter().map(|(n, t)| (*n, &t.usage)));
    print_usage_table("Profile 1", &table);

    println!();
    println!("Profile 2: cost of each piece in isolation (one thread, no I/O, mean of many runs)");
    step_costs(plan, application)?;
    Ok(())
}

fn measure(s: &Settings) -> Duration {
    Duration::from_secs(s.seconds)
}

/// Mean wall time of `f` over `n` runs (after a warm-up), in microseconds.
fn per_op_us<R>(n: u32, mut f: impl FnMut() -> R) -> f64 {
    for _ in 0..n / 10 {
        std::hint::black_box(f());
    }
    let start = Instant::now();
    for _ in 0..n {
        std::hint::black_box(f());
    }
    start.elapsed().as_secs_f64() * 1e6 / f64::from(n)
}

fn step_costs(plan: &Plan, application: &Bytes) -> anyhow::Result<()> {
    let route = plan
        .routes
        .iter()
        .find(|r| r.path == ROUTE_PATH)
        .ok_or_else(|| anyhow!("no route for {ROUTE_PATH}"))?;
    let (mut schema, mut map, mut reply) = (None, None, None);
    for step in &route.steps {
        match step {
            Step::Validate { schema: s, .. } => schema = Some(s.clone()),
            Step::Map { template, .. } => map = Some(template),
            Step::Respond { respond, .. } => reply = respond.body.as_ref(),
            _ => {}
        }
    }
    let (Some(schema), Some(map), Some(reply)) = (schema, map, reply) else {
        bail!("the measured route lost its validate, map or respond step");
    };
    let body: Value = serde_json::from_slice(application)?;
    let message_id = uuid::Uuid::new_v4().to_string();
    let headers = json!({
        "host": "127.0.0.1:8080", "content-type": "application/json",
        "idempotency-key": "VPVKAC-2026-000451", "accept": "*/*",
        "content-length": application.len().to_string(),
    });
    let base = |body: &Value| {
        json!({
            "payload": body.clone(), "body": body.clone(), "headers": headers.clone(),
            "query": {}, "params": {},
            "route": {"id": route.id, "owner": route.owner}, "message": {"id": message_id},
        })
    };
    let ctx = handlebars::Context::from(base(&body));
    let mapped = plan.mappings.render(map, &ctx)?.into_value();
    let mut after = base(&body);
    after["payload"] = mapped.clone();
    after["intake"] = json!({
        "status": 201,
        "headers": {"content-type": "application/json", "content-length": "52"},
        "body": serde_json::from_str::<Value>(CASE_ANSWER)?,
    });
    let after = handlebars::Context::from(after);
    plan.mappings.render_body(reply, &after)?;
    let headers_t = match route.steps.iter().find_map(|s| match s {
        Step::Call { call, .. } => Some(call),
        _ => None,
    }) {
        Some(call) => call.headers.first().map(|(_, t)| t),
        None => None,
    };

    let n = 20_000;
    let rows: Vec<(&str, f64)> = vec![
        (
            "parse the request body (serde_json, 350 B)",
            per_op_us(n, || serde_json::from_slice::<Value>(application).ok()),
        ),
        (
            "message id (uuid v4 to string)",
            per_op_us(n, || uuid::Uuid::new_v4().to_string()),
        ),
        (
            "build the exchange context (json! + body clone)",
            per_op_us(n, || handlebars::Context::from(base(&body))),
        ),
        (
            "validate (jsonschema, formats on)",
            per_op_us(n, || schema.validate(&body)),
        ),
        (
            "map: render to-social-services (text + JSON parse)",
            per_op_us(n, || plan.mappings.render(map, &ctx).ok()),
        ),
        (
            "serialize the call body (serde_json)",
            per_op_us(n, || serde_json::to_vec(&mapped).ok()),
        ),
        (
            "Idempotency-Key header template",
            per_op_us(n, || {
                headers_t.map(|t| plan.mappings.render_string(t, &ctx).ok())
            }),
        ),
        (
            "parse the upstream answer (serde_json)",
            per_op_us(n, || serde_json::from_str::<Value>(CASE_ANSWER).ok()),
        ),
        (
            "respond: render accepted (text, checked as JSON)",
            per_op_us(n, || plan.mappings.render_body(reply, &after).ok()),
        ),
    ];
    let mut total = 0.0;
    for (what, us) in &rows {
        total += us;
        println!("  {what:<56} {us:8.2} us");
    }
    println!("  {:<56} {total:8.2} us", "sum of the pieces above");

    // The no-call variant through the runtime, without HTTP: all the route work but the call.
    let no_call = plan
        .routes
        .iter()
        .find(|r| r.id == "variant-no-call")
        .ok_or_else(|| anyhow!("no variant-no-call route"))?;
    let input_headers: serde_json::Map<String, Value> =
        headers.as_object().cloned().unwrap_or_default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let us = per_op_us(n, || {
        let input = tilts_engine::runtime::Input {
            message_id: uuid::Uuid::new_v4().to_string(),
            body: body.clone(),
            headers: input_headers.clone(),
            query: Default::default(),
            params: Default::default(),
        };
        rt.block_on(tilts_engine::runtime::run(plan, no_call, input))
            .ok()
    });
    println!(
        "  {:<56} {us:8.2} us",
        "runtime::run of the no-call variant (validate + map)"
    );
    Ok(())
}
