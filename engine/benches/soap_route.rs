//! Benchmark (a measurement, not a test): SOAP request/response through tilts against calling
//! the Population Register simulator directly, in the same run.
//!
//! Run from the workspace root:
//!
//! ```text
//! cargo bench -p tilts-engine --bench soap_route
//! ```
//!
//! In one process, each part on its own tokio runtime as if they were separate processes: the
//! Population Register simulator (plain SOAP 1.1, `POST /pmlp/person`), tilts serving
//! `benches/soap_route/routes.yaml` (a SOAP 1.1 endpoint: parse the caller's envelope, render the
//! register request, call it over SOAP, read the answer as data, render the reply envelope), and
//! the load generator. Direct: the generator posts a GetPerson envelope to the simulator.
//! Through tilts: it posts a GetPerson envelope to tilts' endpoint. Both closed loop,
//! `BENCH_CONCURRENCY` workers back to back over keep-alive connections for `BENCH_SECONDS` after
//! a 2 s warm-up; every answer is checked (status 200 and the person's name in it).
//!
//! Target: tilts >= 30% of the direct throughput. A missed target prints MISS; the exit code is
//! 0 either way (2 only when the setup itself fails).
//!
//! Environment: `BENCH_CONCURRENCY` (default 32), `BENCH_SECONDS` (default 10),
//! `BENCH_THREADS` worker threads per runtime (default: the number of CPUs).

// The same allocator as the `tilts` binary (engine/src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use tilts_adapters::sim::{SimServer, population_register as pr};
use tokio::runtime::Runtime;

#[path = "common/bench.rs"]
mod bench;
use bench::env_num;
#[path = "common/usage.rs"]
mod usage;
use usage::{Usage, thread_usage, usage_delta};

const WARMUP: Duration = Duration::from_secs(2);
const TARGET_SHARE: f64 = 0.30;

fn main() {
    if let Err(e) = run() {
        eprintln!("soap_route benchmark could not run: {e:#}");
        std::process::exit(2);
    }
}

fn runtime(name: &str, threads: usize) -> anyhow::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .enable_all()
        .build()
        .context("building a runtime")
}

fn envelope(code: &str) -> String {
    format!(
        r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><GetPerson xmlns="{}"><PersonalCode>{code}</PersonalCode></GetPerson></soapenv:Body></soapenv:Envelope>"#,
        "NS"
    )
}

struct Target {
    url: String,
    body: String,
    action: &'static str,
    expect: &'static str,
}

struct Result {
    requests: u64,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
    latencies_us: Vec<u64>,
    /// CPU used by each part of the process during the measured seconds.
    usage: std::collections::BTreeMap<&'static str, Usage>,
}

impl Result {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
    fn pct_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[i] as f64 / 1000.0
    }
}

async fn one(client: &reqwest::Client, t: &Target) -> std::result::Result<(), String> {
    let resp = client
        .post(&t.url)
        .header("content-type", "text/xml; charset=utf-8")
        .header("soapaction", t.action)
        .body(t.body.clone())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let text = resp.text().await.map_err(|e| e.to_string())?;
    if status != 200 || !text.contains(t.expect) {
        return Err(format!(
            "HTTP {status}: {}",
            text.chars().take(300).collect::<String>()
        ));
    }
    Ok(())
}

fn closed_loop(rt: &Runtime, t: Arc<Target>, concurrency: usize, seconds: u64) -> Result {
    rt.block_on(async move {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(concurrency)
            .tcp_nodelay(true)
            .build()
            .expect("client");
        let measuring = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let (client, t) = (client.clone(), t.clone());
            let (measuring, stop, requests, errors) = (
                measuring.clone(),
                stop.clone(),
                requests.clone(),
                errors.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut first_error = None;
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let r = one(&client, &t).await;
                    if measuring.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
                        match r {
                            Ok(()) => {
                                requests.fetch_add(1, Ordering::Relaxed);
                                lat.push(started.elapsed().as_micros() as u64);
                            }
                            Err(e) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                                first_error.get_or_insert(e);
                            }
                        }
                    }
                }
                (lat, first_error)
            }));
        }
        tokio::time::sleep(WARMUP).await;
        measuring.store(true, Ordering::Relaxed);
        let started = Instant::now();
        let usage_before = thread_usage(part);
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        stop.store(true, Ordering::Relaxed);
        let elapsed = started.elapsed();
        let usage = usage_delta(&usage_before, &thread_usage(part));
        let mut latencies_us = Vec::new();
        let mut first_error = None;
        for task in tasks {
            let (lat, err) = task.await.expect("worker");
            latencies_us.extend(lat);
            if first_error.is_none() {
                first_error = err;
            }
        }
        latencies_us.sort_unstable();
        Result {
            requests: requests.load(Ordering::Relaxed),
            errors: errors.load(Ordering::Relaxed),
            first_error,
            elapsed,
            latencies_us,
            usage,
        }
    })
}

/// The part of the process a thread belongs to, from its runtime's name.
fn part(comm: &str) -> &'static str {
    match comm {
        c if c.starts_with("load") => "load generator",
        c if c.starts_with("tilts") => "tilts",
        c if c.starts_with("sim") => "simulator",
        _ => "other threads",
    }
}

fn print(name: &str, r: &Result) {
    println!(
        "  {name:<14} {:>9.0} req/s   p50 {:>6.2} ms   p99 {:>6.2} ms   ({} requests, {} errors)",
        r.rate(),
        r.pct_ms(0.50),
        r.pct_ms(0.99),
        r.requests,
        r.errors
    );
    if let Some(e) = &r.first_error {
        println!("    first error: {e}");
    }
    let per_request = |part: &str| {
        let u = r.usage.get(part).copied().unwrap_or_default();
        let n = r.requests.max(1) as f64;
        format!(
            "{part} {:.1} us [{:.2}]",
            u.ns as f64 / 1000.0 / n,
            u.switches as f64 / n
        )
    };
    println!(
        "  {:<14} CPU per request [context switches]: {}, {}, {}",
        "",
        per_request("load generator"),
        per_request("tilts"),
        per_request("simulator")
    );
}

fn run() -> anyhow::Result<()> {
    let concurrency: usize = env_num("BENCH_CONCURRENCY", 32)?;
    let seconds: u64 = env_num("BENCH_SECONDS", 10)?;
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let threads: usize = env_num("BENCH_THREADS", cpus)?;

    let sim_rt = runtime("sim", threads)?;
    let tilts_rt = runtime("tilts", threads)?;
    let load_rt = runtime("load", threads)?;

    let any: SocketAddr = "127.0.0.1:0".parse()?;
    let sim = sim_rt.block_on(SimServer::start("population-register", any, pr::router()))?;
    let sim_url = sim.url();

    let routes = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/soap_route/routes.yaml");
    let plan =
        tilts_engine::check::load_with_env(&routes, &|k| (k == "PR_URL").then(|| sim_url.clone()))
            .map_err(|d| anyhow!("{} does not check:\n{d}", routes.display()))?;
    let listener = tilts_rt.block_on(tokio::net::TcpListener::bind(any))?;
    let tilts_addr = listener.local_addr()?;
    let plan = Arc::new(plan);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tilts_rt.spawn(async move {
        let _ = tilts_engine::server::serve(plan, None, listener, async {
            let _ = stop_rx.await;
        })
        .await;
    });

    let person = pr::find(pr::ACTIVE).context("the ACTIVE fixture")?;
    let direct = Arc::new(Target {
        url: format!("{}{}", sim.url(), pr::PERSON_PATH),
        body: envelope(pr::ACTIVE).replace("NS", pr::PAYLOAD_NS),
        action: "\"urn:x-tilts-sim:pmlp:person:v1/GetPerson\"",
        expect: person.given_name,
    });
    let through = Arc::new(Target {
        url: format!("http://{tilts_addr}/soap/person"),
        body: envelope(pr::ACTIVE).replace("NS", "urn:x-tilts:person:v1"),
        action: "\"urn:x-tilts:person:v1/GetPerson\"",
        expect: person.given_name,
    });
    // Sanity: both answer what they should before anything is measured.
    load_rt.block_on(async {
        let client = reqwest::Client::new();
        for t in [&direct, &through] {
            one(&client, t)
                .await
                .map_err(|e| anyhow!("{} does not answer as expected: {e}", t.url))?;
        }
        anyhow::Ok(())
    })?;

    println!("soap_route: SOAP 1.1 request/response, through tilts vs the simulator directly");
    println!(
        "  {cpus} CPUs, {threads} threads per runtime, {concurrency} workers, {seconds} s per run after a {} s warm-up\n",
        WARMUP.as_secs()
    );
    let d = closed_loop(&load_rt, direct, concurrency, seconds);
    print("direct", &d);
    sim.clear_requests();
    let t = closed_loop(&load_rt, through, concurrency, seconds);
    print("through tilts", &t);
    if d.requests == 0 || t.requests == 0 {
        bail!("a run completed no requests");
    }
    let share = t.rate() / d.rate();
    println!(
        "\n  tilts = {:.1}% of direct (target >= {:.0}%): {}",
        share * 100.0,
        TARGET_SHARE * 100.0,
        if share >= TARGET_SHARE { "ok" } else { "MISS" }
    );
    println!(
        "  added latency: p50 {:+.2} ms, p99 {:+.2} ms",
        t.pct_ms(0.5) - d.pct_ms(0.5),
        t.pct_ms(0.99) - d.pct_ms(0.99)
    );
    let _ = stop_tx.send(());
    sim_rt.block_on(sim.shutdown());
    Ok(())
}
