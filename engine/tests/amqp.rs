//! RabbitMQ as a source and a destination of routes, against the real broker at
//! `TILTS_TEST_AMQP_URL` (skipped when unset, failing when set and unreachable): tilts started
//! in this process with `tests/amqp/routes.yaml` (every exchange and queue name suffixed per
//! test) on a temporary SQLite store, in front of the social-services simulator.
//!
//! Shown: a consumed message is acknowledged only after it is committed (and then delivered);
//! an invalid one is dead-lettered; a redelivered message is not stored twice; publishing waits
//! for confirms; an unroutable publish is a dead letter at once; and a broker restart in the
//! middle of a flow loses nothing.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tilts_adapters::amqp::{AmqpSpec, AmqpSystem, Decision, Incoming, Outgoing};
use tilts_adapters::sim::Simulators;
use tilts_engine::check;
use tilts_engine::service::{self, Running, StartOptions};
use tilts_engine::store::{MessageId, MessageState};
use tilts_engine::worker::WorkerOptions;
use tokio::time::Instant;

/// Broker tests run one at a time: the restart test takes the broker away from everyone.
static BROKER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn amqp_url() -> Option<String> {
    match std::env::var("TILTS_TEST_AMQP_URL") {
        Ok(u) => Some(u),
        Err(_) => {
            eprintln!("skipped: TILTS_TEST_AMQP_URL is not set");
            None
        }
    }
}

struct Env {
    running: Running,
    sims: Simulators,
    /// A plain client of the broker, to publish and consume as other systems do.
    client: AmqpSystem,
    suffix: String,
    http: reqwest::Client,
    base: String,
    _dir: tempfile::TempDir,
}

impl Env {
    async fn start(url: &str) -> Env {
        let suffix = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let sims = Simulators::start().await.unwrap();
        let intake = sims.social_services.url();
        let routes = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/amqp/routes.yaml");
        let vars = [
            ("AMQP_URL", url.to_string()),
            ("SUFFIX", suffix.clone()),
            ("INTAKE_URL", intake),
        ];
        let plan = check::load_with_env(&routes, &|k| {
            vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
        })
        .unwrap_or_else(|d| panic!("tests/amqp/routes.yaml does not check:\n{d}"));
        // The same topology as tilts declares, so either side may come first.
        let topology = plan.systems["broker"].amqp().unwrap().spec.topology.clone();
        let client = AmqpSystem::connect(AmqpSpec {
            name: "test-client".into(),
            url: url.to_string(),
            topology,
            connect_timeout: Duration::from_secs(5),
            confirm_timeout: Duration::from_secs(10),
        })
        .await
        .unwrap_or_else(|e| {
            panic!("TILTS_TEST_AMQP_URL is set but the broker is unreachable: {e}")
        });
        let dir = tempfile::tempdir().unwrap();
        let running = service::start(
            plan,
            StartOptions {
                listen: Some("127.0.0.1:0".into()),
                admin_listen: Some("127.0.0.1:0".into()),
                database: Some(format!("sqlite://{}/tilts.db", dir.path().display())),
                workers: Some(WorkerOptions {
                    poll_interval: Duration::from_millis(50),
                    ..Default::default()
                }),
                no_workers: false,
            },
        )
        .await
        .unwrap();
        let base = format!("http://{}", running.addr);
        Env {
            running,
            sims,
            client,
            suffix,
            http: reqwest::Client::new(),
            base,
            _dir: dir,
        }
    }

    fn name(&self, base: &str) -> String {
        format!("{base}.{}", self.suffix)
    }

    async fn publish_in(&self, body: &Value, message_id: &str) {
        self.client
            .publish(Outgoing {
                exchange: self.name("tilts.in"),
                routing_key: "in".into(),
                body: serde_json::to_vec(body).unwrap().into(),
                content_type: "application/json".into(),
                message_id: message_id.into(),
                headers: vec![],
            })
            .await
            .unwrap();
    }

    /// Collects what arrives on `queue` (acking it) until `stop` is called.
    fn collect(&self, queue: &str) -> Collector {
        let got = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let client = self.client.clone();
        let queue = queue.to_string();
        let sink = got.clone();
        let task = tokio::spawn(async move {
            let handler = move |m: Incoming| {
                let sink = sink.clone();
                async move {
                    sink.lock().unwrap().push(m);
                    Decision::Ack
                }
            };
            let _ = client
                .consume(&queue, 32, handler, async move {
                    let _ = rx.await;
                })
                .await;
        });
        Collector {
            got,
            stop: Some(tx),
            task,
        }
    }

    async fn stop(self) {
        let queues: Vec<String> = ["in", "out", "dead"].iter().map(|q| self.name(q)).collect();
        self.running.stop().await;
        self.sims.shutdown().await;
        // Leave no queues behind on the shared broker.
        for q in queues {
            let _ = std::process::Command::new("rabbitmqctl")
                .args(["delete_queue", &q])
                .output();
        }
    }
}

struct Collector {
    got: Arc<Mutex<Vec<Incoming>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    fn messages(&self) -> Vec<(Option<String>, Value)> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m.message_id.clone(),
                    serde_json::from_slice(&m.body).unwrap_or(Value::Null),
                )
            })
            .collect()
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }
}

async fn eventually(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn application(n: usize, kind: &str) -> Value {
    json!({"applicationId": format!("APP-{n:05}"), "kind": kind})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumed_messages_are_stored_acked_and_delivered_once() {
    let Some(url) = amqp_url() else { return };
    let _serial = BROKER.lock().await;
    let env = Env::start(&url).await;
    let dead = env.collect(&env.name("dead"));
    for n in 0..20 {
        env.publish_in(&application(n, "social"), &format!("m-{n}"))
            .await;
    }
    // The same message again (a redelivery after a lost ack looks like this): not stored twice.
    env.publish_in(&application(0, "social"), "m-0").await;
    // An invalid one: rejected to the dead-letter exchange, never delivered.
    env.publish_in(&json!({"applicationId": "BAD", "kind": "unknown"}), "m-bad")
        .await;

    let intake = &env.sims.social_services;
    eventually("20 deliveries", Duration::from_secs(30), || {
        intake.requests().len() >= 20
    })
    .await;
    eventually(
        "the invalid message in the dead-letter queue",
        Duration::from_secs(10),
        || !dead.messages().is_empty(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let delivered: Vec<Value> = intake.requests().iter().filter_map(|r| r.json()).collect();
    let ids: HashSet<&str> = delivered
        .iter()
        .filter_map(|b| b["applicationId"].as_str())
        .collect();
    assert_eq!(delivered.len(), 20, "each message delivered once");
    assert_eq!(ids.len(), 20);
    assert!(!ids.contains("BAD"));
    let dead_msgs = dead.messages();
    assert_eq!(dead_msgs.len(), 1);
    assert_eq!(dead_msgs[0].1["applicationId"], "BAD");
    dead.stop().await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_messages_are_confirmed_and_unroutable_ones_dead_lettered() {
    let Some(url) = amqp_url() else { return };
    let _serial = BROKER.lock().await;
    let env = Env::start(&url).await;
    let out = env.collect(&env.name("out"));
    let mut accepted = Vec::new();
    for n in 0..30 {
        let kind = if n % 2 == 0 { "social" } else { "pension" };
        let resp = env
            .http
            .post(format!("{}/t/publish", env.base))
            .json(&application(n, kind))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        let v: Value = resp.json().await.unwrap();
        accepted.push(v["messageId"].as_str().unwrap().to_string());
    }
    eventually("30 published messages", Duration::from_secs(30), || {
        out.messages().len() >= 30
    })
    .await;
    let got = out.messages();
    let ids: HashSet<String> = got.iter().filter_map(|(id, _)| id.clone()).collect();
    // The AMQP message id is tilts' message id: consumers can deduplicate on it.
    assert_eq!(ids, accepted.iter().cloned().collect());
    let store = env.running.store.as_ref().unwrap();
    for id in &accepted {
        let v = store
            .get(MessageId(id.parse().unwrap()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(v.meta.state, MessageState::Delivered);
    }

    // Nothing is bound to this exchange: a permanent failure, dead at the first attempt.
    let resp = env
        .http
        .post(format!("{}/t/unroutable", env.base))
        .json(&json!({"x": 1}))
        .send()
        .await
        .unwrap();
    let v: Value = resp.json().await.unwrap();
    let id = MessageId(v["messageId"].as_str().unwrap().parse().unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = store.get(id).await.unwrap().unwrap();
        if m.meta.state == MessageState::Dead {
            assert_eq!(m.meta.attempts, 1);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the unroutable message did not die"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    out.stop().await;
    env.stop().await;
}

fn rabbitmqctl(args: &[&str]) {
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl is needed for the broker restart test");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts the broker again if the test fails while it is stopped.
struct RestartGuard;
impl Drop for RestartGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .arg("start_app")
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_flow_loses_nothing() {
    let Some(url) = amqp_url() else { return };
    let _serial = BROKER.lock().await;
    let env = Env::start(&url).await;
    let out = env.collect(&env.name("out"));
    let _guard = RestartGuard;
    let total = 150;
    let mut accepted = Vec::new();
    for n in 0..total {
        if n == 50 {
            // The broker goes away in the middle of the flow, and comes back.
            tokio::task::spawn_blocking(|| {
                rabbitmqctl(&["stop_app"]);
                std::thread::sleep(Duration::from_secs(2));
                rabbitmqctl(&["start_app"]);
            });
        }
        let resp = env
            .http
            .post(format!("{}/t/publish", env.base))
            .json(&application(n, "social"))
            .send()
            .await
            .unwrap();
        // tilts' own store takes the message whether or not the broker is up.
        assert_eq!(resp.status(), 202);
        let v: Value = resp.json().await.unwrap();
        accepted.push(v["messageId"].as_str().unwrap().to_string());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eventually(
        "every accepted message on the queue",
        Duration::from_secs(90),
        || {
            let got: HashSet<String> = out
                .messages()
                .into_iter()
                .filter_map(|(id, _)| id)
                .collect();
            accepted.iter().all(|id| got.contains(id))
        },
    )
    .await;
    let got = out.messages();
    let distinct: HashSet<String> = got.iter().filter_map(|(id, _)| id.clone()).collect();
    println!(
        "broker restart: {total} accepted, {} received, {} duplicates (publishes confirmed after the restart of one sent before it)",
        got.len(),
        got.len() - distinct.len()
    );
    assert_eq!(distinct.len(), total);
    out.stop().await;
    env.stop().await;
}

#[tokio::test]
async fn topology_problems_are_reported_by_check() {
    // No broker needed: the checker never connects.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("mappings")).unwrap();
    let file = dir.path().join("routes.yaml");
    std::fs::write(
        &file,
        r#"version: 1
systems:
  broker:
    amqp:
      url: http://not-amqp
      exchanges: [{ name: x, type: diagonal }]
      queues:
        - name: q
          type: classic
          delivery_limit: 3
          bindings: [{ exchange: undeclared }]
routes: []
"#,
    )
    .unwrap();
    let d = check::load(&file).unwrap_err().to_string();
    for needle in [
        "`url` is not an amqp:// or amqps:// URL",
        "`diagonal` is not an exchange type",
        "`delivery_limit` needs a quorum queue",
        "exchange `undeclared` is not declared on system `broker`",
    ] {
        assert!(d.contains(needle), "missing {needle:?} in:\n{d}");
    }
}
