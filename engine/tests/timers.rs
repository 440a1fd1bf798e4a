//! Timer sources on both stores: runs are fired once each, a restart neither skips nor doubles
//! one (runs missed while tilts was down are caught up), and two processes sharing one store
//! fire each run once. tilts runs in this process (`service::start`) with
//! `tests/timers/routes.yaml` (a per-second timer) in front of the social-services simulator;
//! what is asserted is the `scheduledAt` of every run the simulator received.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tilts_adapters::sim::Simulators;
use tilts_engine::check;
use tilts_engine::service::{self, Running, StartOptions};
use tilts_engine::worker::WorkerOptions;

mod support;
use support::{with_postgres_url as on_postgres, with_sqlite_url as on_sqlite};

async fn start(db: &str, sims: &Simulators) -> Running {
    let intake = sims.social_services.url();
    let routes = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/timers/routes.yaml");
    let plan = check::load_with_env(&routes, &|k| (k == "INTAKE_URL").then(|| intake.clone()))
        .unwrap_or_else(|d| panic!("tests/timers/routes.yaml does not check:\n{d}"));
    service::start(
        plan,
        StartOptions {
            listen: Some("127.0.0.1:0".into()),
            admin_listen: Some("127.0.0.1:0".into()),
            database: Some(db.to_string()),
            workers: Some(WorkerOptions {
                poll_interval: Duration::from_millis(50),
                ..Default::default()
            }),
            no_workers: false,
        },
    )
    .await
    .unwrap()
}

/// Every run the intake received: scheduledAt -> the message ids that carried it.
fn runs(sims: &Simulators) -> BTreeMap<DateTime<Utc>, Vec<String>> {
    let mut out: BTreeMap<DateTime<Utc>, Vec<String>> = BTreeMap::new();
    for r in sims.social_services.requests() {
        let Some(body) = r.json() else { continue };
        let at: DateTime<Utc> = body["scheduledAt"].as_str().unwrap().parse().unwrap();
        let id = r.header("x-tilts-message-id").unwrap().to_string();
        let ids = out.entry(at).or_default();
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    out
}

/// No run twice (one message per scheduledAt) and none skipped (consecutive seconds).
fn assert_each_run_once(runs: &BTreeMap<DateTime<Utc>, Vec<String>>, at_least: usize) {
    assert!(runs.len() >= at_least, "only {} runs: {runs:?}", runs.len());
    for (at, ids) in runs {
        assert_eq!(ids.len(), 1, "run {at} stored as {} messages", ids.len());
    }
    let times: Vec<&DateTime<Utc>> = runs.keys().collect();
    for w in times.windows(2) {
        assert_eq!(
            (*w[1] - *w[0]).num_seconds(),
            1,
            "a run between {} and {} is missing",
            w[0],
            w[1]
        );
    }
}

async fn restart_neither_skips_nor_doubles(db: String) {
    let sims = Simulators::start().await.unwrap();
    let first = start(&db, &sims).await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    first.stop().await;
    let before = runs(&sims);
    // Down for a while: the runs of these seconds are fired when tilts is back.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let second = start(&db, &sims).await;
    tokio::time::sleep(Duration::from_millis(3000)).await;
    second.stop().await;
    let after = runs(&sims);
    assert!(after.len() >= before.len() + 5, "{before:?}\n{after:?}");
    assert_each_run_once(&after, 8);
    sims.shutdown().await;
}

async fn two_processes_fire_each_run_once(db: String) {
    let sims = Simulators::start().await.unwrap();
    let (a, b) = tokio::join!(start(&db, &sims), start(&db, &sims));
    tokio::time::sleep(Duration::from_millis(4000)).await;
    tokio::join!(a.stop(), b.stop());
    assert_each_run_once(&runs(&sims), 3);
    sims.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_restart_neither_skips_nor_doubles_a_run() {
    on_sqlite(restart_neither_skips_nor_doubles).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_neither_skips_nor_doubles_a_run() {
    on_postgres(restart_neither_skips_nor_doubles).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_two_processes_fire_each_run_once() {
    on_sqlite(two_processes_fire_each_run_once).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_processes_fire_each_run_once() {
    on_postgres(two_processes_fire_each_run_once).await;
}
