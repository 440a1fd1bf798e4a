//! Tests of the AMQP adapter. Most run against a real broker: set `TILTS_TEST_AMQP_URL`
//! (e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`); without it they print "skipped" and
//! return, and with it an unreachable broker fails them.
//!
//! Every test uses its own exchanges and queues (a uuid suffix) and deletes them afterwards,
//! also when it fails. The broker tests are serialized by [`BROKER`] because the restart test
//! stops the broker under everyone using it.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use lapin::options::{ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::*;
use crate::contract::Retry;

/// Serializes the tests that use the broker (see the module docs).
static BROKER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a test waits for something the broker should do quickly.
const WAIT: Duration = Duration::from_secs(15);

fn broker_url() -> Option<String> {
    match std::env::var("TILTS_TEST_AMQP_URL") {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            eprintln!("skipped: TILTS_TEST_AMQP_URL is not set");
            None
        }
    }
}

/// Unique resource names for one test.
struct Names {
    id: String,
    queues: Vec<String>,
    exchanges: Vec<String>,
}

impl Names {
    fn new() -> Self {
        Names {
            id: uuid::Uuid::new_v4().simple().to_string(),
            queues: Vec::new(),
            exchanges: Vec::new(),
        }
    }

    fn queue(&mut self, what: &str) -> String {
        let name = format!("tilts-test-{what}-{}", self.id);
        self.queues.push(name.clone());
        name
    }

    fn exchange(&mut self, what: &str) -> String {
        let name = format!("tilts-test-{what}-{}", self.id);
        self.exchanges.push(name.clone());
        name
    }

    fn system(&self, what: &str) -> String {
        format!("test-{what}-{}", self.id)
    }
}

fn spec(url: &str, name: String, topology: Topology) -> AmqpSpec {
    AmqpSpec {
        name,
        url: url.to_string(),
        topology,
        connect_timeout: Duration::from_secs(5),
        confirm_timeout: Duration::from_secs(5),
    }
}

fn exchange(name: &str, kind: ExchangeKind) -> ExchangeSpec {
    ExchangeSpec {
        name: name.to_string(),
        kind,
        durable: true,
    }
}

fn bound(mut queue: QueueSpec, exchange: &str, key: &str) -> QueueSpec {
    queue.bindings.push(Binding {
        exchange: exchange.to_string(),
        routing_key: key.to_string(),
    });
    queue
}

fn message(exchange: &str, key: &str, id: &str) -> Outgoing {
    Outgoing {
        exchange: exchange.to_string(),
        routing_key: key.to_string(),
        body: Bytes::from(format!(r#"{{"application":"{id}","service":"test"}}"#)),
        content_type: "application/json".to_string(),
        message_id: id.to_string(),
        headers: vec![("tilts-route".to_string(), "case-intake".to_string())],
    }
}

/// A raw connection for what the adapter does not offer (checks and clean-up).
async fn raw(url: &str) -> (Connection, Channel) {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("TILTS_TEST_AMQP_URL is set but the broker is unreachable");
    let channel = connection.create_channel().await.expect("channel");
    (connection, channel)
}

/// Ready (not unacked) messages in a queue.
async fn ready_count(url: &str, queue: &str) -> u32 {
    let (connection, channel) = raw(url).await;
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("the queue exists");
    let _ = connection.close(200, "done".into()).await;
    declared.message_count()
}

/// Deletes a test's queues and exchanges, each on a channel of its own (a failed delete
/// closes its channel).
async fn cleanup(url: &str, names: &Names) {
    let Ok(connection) = Connection::connect(url, ConnectionProperties::default()).await else {
        eprintln!("clean-up: the broker is unreachable; test queues and exchanges remain");
        return;
    };
    for queue in &names.queues {
        if let Ok(channel) = connection.create_channel().await {
            let _ = channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    }
    for exchange in &names.exchanges {
        if let Ok(channel) = connection.create_channel().await {
            let _ = channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
    }
    let _ = connection.close(200, "clean-up done".into()).await;
}

/// Runs a broker test: serialized, and cleaned up whether it passes or fails.
async fn broker_test<F, Fut>(test: F)
where
    F: FnOnce(String, Arc<StdMutex<Names>>) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(url) = broker_url() else { return };
    let _serial = BROKER.lock().await;
    let names = Arc::new(StdMutex::new(Names::new()));
    let outcome = AssertUnwindSafe(test(url.clone(), names.clone()))
        .catch_unwind()
        .await;
    let names = std::mem::replace(&mut *names.lock().unwrap(), Names::new());
    cleanup(&url, &names).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// A consumer running in a task; stopped by `stop` (or by being dropped).
struct Consuming {
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), DeliveryError>>,
}

impl Consuming {
    fn start<H, F>(system: &AmqpSystem, queue: &str, prefetch: u16, handler: H) -> Consuming
    where
        H: Fn(Incoming) -> F + Send + Sync + 'static,
        F: Future<Output = Decision> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<()>();
        let system = system.clone();
        let queue = queue.to_string();
        let task = tokio::spawn(async move {
            system
                .consume(&queue, prefetch, handler, async move {
                    let _ = rx.await;
                })
                .await
        });
        Consuming {
            shutdown: Some(tx),
            task,
        }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let task = &mut self.task;
        tokio::time::timeout(WAIT, task)
            .await
            .expect("the consumer stops within 15 s")
            .expect("the consumer task did not panic")
            .expect("the consumer ends without error");
    }
}

/// A handler that passes every delivery to the test and answers `decide(delivery number)`.
fn forwarding(
    decide: impl Fn(usize) -> Decision + Send + Sync + 'static,
) -> (
    impl Fn(Incoming) -> futures::future::Ready<Decision> + Send + Sync + 'static,
    mpsc::UnboundedReceiver<Incoming>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let count = AtomicUsize::new(0);
    let handler = move |incoming: Incoming| {
        let n = count.fetch_add(1, Ordering::SeqCst);
        let _ = tx.send(incoming);
        futures::future::ready(decide(n))
    };
    (handler, rx)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Incoming>) -> Incoming {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a delivery within 15 s")
        .expect("the handler is alive")
}

#[test]
fn redact_url_hides_the_password() {
    assert_eq!(
        redact_url("amqp://tilts:s3cret@mq.example.lv:5672/%2f"),
        "amqp://tilts:***@mq.example.lv:5672/%2f"
    );
    assert_eq!(
        redact_url("amqps://tilts:pa/ss@word@mq.example.lv/prod?heartbeat=30"),
        "amqps://tilts:***@mq.example.lv/prod?heartbeat=30"
    );
    assert_eq!(
        redact_url("amqp://mq.example.lv:5672/%2f"),
        "amqp://mq.example.lv:5672/%2f"
    );
    assert_eq!(redact_url("tilts:s3cret@mq"), "***");
    let spec = spec(
        "amqp://tilts:s3cret@mq.example.lv/%2f",
        "queue-system".into(),
        Topology::default(),
    );
    let debug = format!("{spec:?}");
    assert!(!debug.contains("s3cret"), "{debug}");
    assert!(debug.contains("tilts:***@mq.example.lv"), "{debug}");
}

#[test]
fn debug_output_shows_no_message_data() {
    let mut msg = message("applications", "intake", "msg-1");
    msg.body = Bytes::from_static(br#"{"personalCode":"010190-12349"}"#);
    msg.headers = vec![("x-person".into(), "010190-12349".into())];
    let debug = format!("{msg:?}");
    assert!(!debug.contains("12349"), "{debug}");
    assert!(debug.contains("x-person"), "{debug}");
}

#[test]
fn inconsistent_topologies_are_refused_with_every_problem() {
    let mut transient_quorum = QueueSpec::quorum("applications");
    transient_quorum.durable = false;
    let mut classic_with_limit = QueueSpec::quorum("archive");
    classic_with_limit.kind = QueueKind::Classic;
    classic_with_limit.delivery_limit = Some(5);
    let topology = Topology {
        exchanges: vec![exchange("amq.custom", ExchangeKind::Topic)],
        queues: vec![transient_quorum, classic_with_limit],
    };
    let problems = topology.problems();
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(problems[0].contains("'amq.custom'"), "{problems:?}");
    assert!(problems[1].contains("always durable"), "{problems:?}");
    assert!(problems[2].contains("only quorum queues"), "{problems:?}");
    assert!(Topology::default().problems().is_empty());
}

#[tokio::test]
async fn invalid_topology_or_url_fails_before_connecting() {
    let mut queue = QueueSpec::quorum("applications");
    queue.durable = false;
    let topology = Topology {
        exchanges: vec![],
        queues: vec![queue],
    };
    // Port 1: nothing may be contacted, the topology is refused first.
    let err = AmqpSystem::connect(spec(
        "amqp://tilts:s3cret@127.0.0.1:1/%2f",
        "queue-system".into(),
        topology,
    ))
    .await
    .unwrap_err();
    assert_eq!(err.retry(), Retry::Permanent);
    assert!(err.to_string().contains("always durable"), "{err}");

    let err = AmqpSystem::connect(spec(
        "http://tilts:s3cret@127.0.0.1:1/",
        "queue-system".into(),
        Topology::default(),
    ))
    .await
    .unwrap_err();
    assert_eq!(err.retry(), Retry::Permanent);
    assert!(err.to_string().contains("AMQP URL is not valid"), "{err}");
    assert!(!err.to_string().contains("s3cret"), "{err}");
}

#[tokio::test]
async fn an_unreachable_broker_is_a_retryable_connect_error_without_the_password() {
    // A port nothing listens on.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("amqp://tilts:s3cret@127.0.0.1:{port}/%2f");
    let mut spec = spec(&url, "queue-system".into(), Topology::default());
    spec.connect_timeout = Duration::from_secs(2);
    let err = AmqpSystem::connect(spec).await.unwrap_err();
    assert_eq!(err.retry(), Retry::Retryable, "{err}");
    assert_eq!(err.system, "queue-system");
    assert!(!err.to_string().contains("s3cret"), "{err}");
    assert!(!format!("{err:?}").contains("s3cret"), "{err:?}");
}

#[tokio::test]
async fn topology_can_be_declared_twice_and_queues_are_quorum_by_default() {
    broker_test(|url, names| async move {
        let (ex, q) = {
            let mut n = names.lock().unwrap();
            (n.exchange("applications"), n.queue("intake"))
        };
        let topology = Topology {
            exchanges: vec![exchange(&ex, ExchangeKind::Topic)],
            queues: vec![bound(QueueSpec::quorum(&q), &ex, "intake.#")],
        };
        let name = names.lock().unwrap().system("topology");
        let first = AmqpSystem::connect(spec(&url, name.clone(), topology.clone()))
            .await
            .expect("first declaration");
        let second = AmqpSystem::connect(spec(&url, name, topology))
            .await
            .expect("declaring the same topology again is fine");
        assert!(first.is_connected() && second.is_connected());

        // Declaring the queue as classic is refused: it is a quorum queue.
        let (connection, channel) = raw(&url).await;
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from("classic")),
        );
        let refused = channel
            .queue_declare(
                q.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                args,
            )
            .await
            .expect_err("a classic declaration of a quorum queue is refused");
        let classified = lapin_error(&ErrorContext::new("t"), "declaring", &refused);
        assert!(
            classified.detail.contains("406") && classified.detail.contains("x-queue-type"),
            "{classified}"
        );
        assert_eq!(classified.retry(), Retry::Permanent);
        let _ = connection.close(200, "done".into()).await;

        // And a system whose topology conflicts with the broker's fails to connect, saying
        // which queue.
        let mut classic = QueueSpec::quorum(&q);
        classic.kind = QueueKind::Classic;
        let conflicting = Topology {
            exchanges: vec![],
            queues: vec![classic],
        };
        let name = names.lock().unwrap().system("conflict");
        let err = AmqpSystem::connect(spec(&url, name, conflicting))
            .await
            .unwrap_err();
        assert_eq!(err.retry(), Retry::Permanent, "{err}");
        assert!(
            err.detail.contains(&format!("declaring queue '{q}'")),
            "{err}"
        );
    })
    .await;
}

#[tokio::test]
async fn published_messages_are_consumed_with_their_properties_and_acked() {
    broker_test(|url, names| async move {
        let (ex, q) = {
            let mut n = names.lock().unwrap();
            (n.exchange("applications"), n.queue("intake"))
        };
        let topology = Topology {
            exchanges: vec![exchange(&ex, ExchangeKind::Direct)],
            queues: vec![bound(QueueSpec::quorum(&q), &ex, "intake")],
        };
        let name = names.lock().unwrap().system("ack");
        let system = AmqpSystem::connect(spec(&url, name, topology))
            .await
            .unwrap();
        system
            .publish(message(&ex, "intake", "msg-0001"))
            .await
            .expect("confirmed");

        let (handler, mut rx) = forwarding(|_| Decision::Ack);
        let consuming = Consuming::start(&system, &q, 10, handler);
        let got = next(&mut rx).await;
        assert_eq!(
            got.body,
            Bytes::from(r#"{"application":"msg-0001","service":"test"}"#)
        );
        assert_eq!(got.content_type.as_deref(), Some("application/json"));
        assert_eq!(got.message_id.as_deref(), Some("msg-0001"));
        assert_eq!(
            got.headers,
            vec![("tilts-route".to_string(), "case-intake".to_string())]
        );
        assert!(!got.redelivered);
        assert_eq!(got.routing_key, "intake");
        assert_eq!(got.exchange, ex);
        assert_eq!(got.delivery_count, None);
        consuming.stop().await;
        // Acked: nothing came back to the queue when the consumer's channel closed.
        assert_eq!(ready_count(&url, &q).await, 0);
        assert!(rx.try_recv().is_err(), "delivered once");
    })
    .await;
}

#[tokio::test]
async fn a_requeued_message_comes_again_marked_redelivered() {
    broker_test(|url, names| async move {
        let q = names.lock().unwrap().queue("retry");
        let topology = Topology {
            exchanges: vec![],
            queues: vec![QueueSpec::quorum(&q)],
        };
        let name = names.lock().unwrap().system("requeue");
        let system = AmqpSystem::connect(spec(&url, name, topology))
            .await
            .unwrap();
        // The default exchange routes by queue name.
        system.publish(message("", &q, "msg-0002")).await.unwrap();

        let (handler, mut rx) = forwarding(|n| {
            if n == 0 {
                Decision::Requeue
            } else {
                Decision::Ack
            }
        });
        let consuming = Consuming::start(&system, &q, 1, handler);
        let first = next(&mut rx).await;
        assert!(!first.redelivered);
        let second = next(&mut rx).await;
        assert_eq!(second.message_id.as_deref(), Some("msg-0002"));
        assert!(
            second.redelivered,
            "the second delivery is marked redelivered"
        );
        assert_eq!(
            second.delivery_count,
            Some(1),
            "quorum queues count deliveries"
        );
        consuming.stop().await;
        assert_eq!(ready_count(&url, &q).await, 0);
    })
    .await;
}

#[tokio::test]
async fn a_rejected_message_goes_to_the_dead_letter_queue() {
    broker_test(|url, names| async move {
        let (ex, dlx, q, dlq) = {
            let mut n = names.lock().unwrap();
            (
                n.exchange("applications"),
                n.exchange("dead"),
                n.queue("intake"),
                n.queue("dead"),
            )
        };
        let mut intake = bound(QueueSpec::quorum(&q), &ex, "intake");
        intake.dead_letter_exchange = Some(dlx.clone());
        intake.dead_letter_routing_key = Some("rejected".into());
        intake.delivery_limit = Some(5);
        let topology = Topology {
            exchanges: vec![
                exchange(&ex, ExchangeKind::Direct),
                exchange(&dlx, ExchangeKind::Direct),
            ],
            queues: vec![intake, bound(QueueSpec::quorum(&dlq), &dlx, "rejected")],
        };
        let name = names.lock().unwrap().system("reject");
        let system = AmqpSystem::connect(spec(&url, name, topology))
            .await
            .unwrap();
        system
            .publish(message(&ex, "intake", "msg-0003"))
            .await
            .unwrap();

        let (handler, mut rx) = forwarding(|_| Decision::Reject);
        let consuming = Consuming::start(&system, &q, 5, handler);
        let rejected = next(&mut rx).await;
        assert_eq!(rejected.message_id.as_deref(), Some("msg-0003"));

        let (handler, mut dead_rx) = forwarding(|_| Decision::Ack);
        let dead_consuming = Consuming::start(&system, &dlq, 5, handler);
        let dead = next(&mut dead_rx).await;
        assert_eq!(dead.message_id.as_deref(), Some("msg-0003"));
        assert_eq!(dead.body, rejected.body);
        assert_eq!(dead.routing_key, "rejected");
        consuming.stop().await;
        dead_consuming.stop().await;
        assert_eq!(ready_count(&url, &q).await, 0, "not requeued");
        assert_eq!(ready_count(&url, &dlq).await, 0);
        assert!(rx.try_recv().is_err(), "the rejected message came once");
    })
    .await;
}

#[tokio::test]
async fn unroutable_messages_and_missing_exchanges_are_permanent_errors() {
    broker_test(|url, names| async move {
        let (ex, q) = {
            let mut n = names.lock().unwrap();
            (n.exchange("applications"), n.queue("intake"))
        };
        let missing = format!("tilts-test-missing-{}", names.lock().unwrap().id);
        let topology = Topology {
            exchanges: vec![exchange(&ex, ExchangeKind::Direct)],
            queues: vec![bound(QueueSpec::quorum(&q), &ex, "intake")],
        };
        let name = names.lock().unwrap().system("unroutable");
        let system = AmqpSystem::connect(spec(&url, name, topology))
            .await
            .unwrap();

        let err = system
            .publish(message(&ex, "nowhere", "msg-0004"))
            .await
            .unwrap_err();
        assert_eq!(err.retry(), Retry::Permanent, "{err}");
        assert!(
            err.detail.contains(&format!(
                "no queue is bound for exchange '{ex}' / routing key 'nowhere'"
            )),
            "{err}"
        );

        // A missing exchange is found before the shared channel is put at risk, and the
        // publishes in flight at the same time are not affected.
        let (bad, good) = tokio::join!(
            system.publish(message(&missing, "intake", "msg-0005")),
            system.publish(message(&ex, "intake", "msg-0006")),
        );
        let err = bad.unwrap_err();
        assert_eq!(err.retry(), Retry::Permanent, "{err}");
        assert!(
            err.detail
                .contains(&format!("exchange '{missing}' does not exist")),
            "{err}"
        );
        good.expect("a routable publish alongside is confirmed");
        system
            .publish(message(&ex, "intake", "msg-0007"))
            .await
            .expect("publishing still works");
        assert_eq!(ready_count(&url, &q).await, 2);
    })
    .await;
}

#[tokio::test]
async fn concurrent_publishes_are_all_confirmed_and_consumed_exactly_once() {
    broker_test(|url, names| async move {
        let q = names.lock().unwrap().queue("bulk");
        let topology = Topology {
            exchanges: vec![],
            queues: vec![QueueSpec::quorum(&q)],
        };
        let name = names.lock().unwrap().system("confirms");
        let system = AmqpSystem::connect(spec(&url, name, topology))
            .await
            .unwrap();
        const N: usize = 200;
        let publishes = (0..N).map(|i| system.publish(message("", &q, &format!("msg-{i:04}"))));
        let results = futures::future::join_all(publishes).await;
        for (i, result) in results.iter().enumerate() {
            assert!(result.is_ok(), "publish {i}: {result:?}");
        }

        let seen: Arc<StdMutex<HashMap<String, usize>>> = Arc::default();
        let handler = {
            let seen = seen.clone();
            move |incoming: Incoming| {
                let id = incoming.message_id.unwrap_or_default();
                *seen.lock().unwrap().entry(id).or_default() += 1;
                futures::future::ready(Decision::Ack)
            }
        };
        let consuming = Consuming::start(&system, &q, 50, handler);
        let deadline = Instant::now() + WAIT;
        while seen.lock().unwrap().len() < N {
            assert!(Instant::now() < deadline, "all {N} consumed within 15 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        consuming.stop().await;
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), N);
        let twice: Vec<_> = seen.iter().filter(|(_, n)| **n != 1).collect();
        assert!(twice.is_empty(), "consumed more than once: {twice:?}");
        assert_eq!(ready_count(&url, &q).await, 0);
    })
    .await;
}

#[tokio::test]
async fn prefetch_limits_the_handler_calls_in_flight() {
    broker_test(|url, names| async move {
        let q = names.lock().unwrap().queue("prefetch");
        let topology = Topology {
            exchanges: vec![],
            queues: vec![QueueSpec::quorum(&q)],
        };
        let name = names.lock().unwrap().system("prefetch");
        let system = AmqpSystem::connect(spec(&url, name, topology))
            .await
            .unwrap();
        const N: usize = 12;
        const PREFETCH: u16 = 3;
        for i in 0..N {
            system
                .publish(message("", &q, &format!("msg-{i:04}")))
                .await
                .unwrap();
        }
        let in_flight = Arc::new(AtomicUsize::new(0));
        let max = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicUsize::new(0));
        let handler = {
            let (in_flight, max, done) = (in_flight.clone(), max.clone(), done.clone());
            move |_incoming: Incoming| {
                let (in_flight, max, done) = (in_flight.clone(), max.clone(), done.clone());
                async move {
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    max.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    done.fetch_add(1, Ordering::SeqCst);
                    Decision::Ack
                }
            }
        };
        let consuming = Consuming::start(&system, &q, PREFETCH, handler);
        let deadline = Instant::now() + WAIT;
        while done.load(Ordering::SeqCst) < N {
            assert!(Instant::now() < deadline, "all handled within 15 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        consuming.stop().await;
        assert_eq!(
            max.load(Ordering::SeqCst),
            usize::from(PREFETCH),
            "handlers run concurrently, but never more than the prefetch"
        );
    })
    .await;
}

#[tokio::test]
async fn consuming_a_missing_queue_or_with_prefetch_zero_fails_permanently() {
    broker_test(|url, names| async move {
        let name = names.lock().unwrap().system("missing");
        let missing = format!("tilts-test-missing-{}", names.lock().unwrap().id);
        let system = AmqpSystem::connect(spec(&url, name, Topology::default()))
            .await
            .unwrap();
        let err = system
            .consume(
                &missing,
                5,
                |_| async { Decision::Ack },
                std::future::pending(),
            )
            .await
            .unwrap_err();
        assert_eq!(err.retry(), Retry::Permanent, "{err}");
        assert!(err.detail.contains("404"), "{err}");
        let err = system
            .consume(
                &missing,
                0,
                |_| async { Decision::Ack },
                std::future::pending(),
            )
            .await
            .unwrap_err();
        assert!(err.detail.contains("prefetch"), "{err}");
    })
    .await;
}

/// Runs `rabbitmqctl` (blocking); fails the test with a clear message when it is missing.
fn rabbitmqctl(args: &[&str]) -> String {
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run rabbitmqctl ({e}): this test controls the broker with RabbitMQ's CLI \
                 tools; install them on PATH or unset TILTS_TEST_AMQP_URL"
            )
        });
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn rabbitmqctl_async(args: &'static [&'static str]) -> String {
    tokio::task::spawn_blocking(move || rabbitmqctl(args))
        .await
        .expect("rabbitmqctl thread")
}

/// Starts the broker application again if a test stopped it and did not get to start it
/// (a failing assertion in between): the broker is shared and must be left running.
struct StartAppOnDrop {
    stopped: bool,
}

impl Drop for StartAppOnDrop {
    fn drop(&mut self) {
        if self.stopped {
            let _ = std::process::Command::new("rabbitmqctl")
                .arg("start_app")
                .status();
        }
    }
}

/// Waits until the broker accepts connections again.
async fn wait_for_broker(url: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let attempt = tokio::time::timeout(
            Duration::from_secs(5),
            Connection::connect(url, ConnectionProperties::default()),
        )
        .await;
        if let Ok(Ok(connection)) = attempt {
            let _ = connection.close(200, "broker is back".into()).await;
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the broker did not accept connections within {within:?} after start_app"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn a_decision_for_a_dead_channel_is_skipped_and_the_message_comes_again() {
    broker_test(|url, names| async move {
        let q = names.lock().unwrap().queue("stale");
        let topology = Topology {
            exchanges: vec![],
            queues: vec![QueueSpec::quorum(&q)],
        };
        let name = names.lock().unwrap().system("stale");
        let system = AmqpSystem::connect(spec(&url, name.clone(), topology))
            .await
            .unwrap();
        system.publish(message("", &q, "msg-0008")).await.unwrap();

        // Delivery 0 waits for gate 0 and answers Ack; delivery 1 waits for gate 1 and answers
        // Requeue; delivery 2 answers Ack.
        let gates: Vec<Arc<tokio::sync::Notify>> = (0..2)
            .map(|_| Arc::new(tokio::sync::Notify::new()))
            .collect();
        let (tx, mut rx) = mpsc::unbounded_channel::<Incoming>();
        let count = Arc::new(AtomicUsize::new(0));
        let handler = {
            let gates = gates.clone();
            move |incoming: Incoming| {
                let n = count.fetch_add(1, Ordering::SeqCst);
                let _ = tx.send(incoming);
                let gate = gates.get(n).cloned();
                async move {
                    if let Some(gate) = gate {
                        gate.notified().await;
                    }
                    if n == 1 {
                        Decision::Requeue
                    } else {
                        Decision::Ack
                    }
                }
            }
        };
        let consuming = Consuming::start(&system, &q, 5, handler);
        let first = next(&mut rx).await;
        assert!(!first.redelivered);

        // Close the adapter's connection from the broker side.
        let connections =
            rabbitmqctl_async(&["list_connections", "pid", "client_properties"]).await;
        let pid = connections
            .lines()
            .find(|line| line.contains(&format!("tilts {name}")))
            .and_then(|line| line.split_whitespace().next())
            .expect("the adapter's connection is listed with its name")
            .to_string();
        tokio::task::spawn_blocking(move || {
            rabbitmqctl(&[
                "close_connection",
                &pid,
                "test: connection closed by the broker",
            ])
        })
        .await
        .unwrap();

        // The consumer comes back on a new connection and gets the message again, with the
        // same delivery tag as on the dead channel.
        let second = next(&mut rx).await;
        assert!(second.redelivered);
        // The old handler now answers Ack for the dead channel: it must not ack the
        // redelivered message on the new channel.
        gates[0].notify_one();
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The new handler answers Requeue: the message comes a third time only if the stale
        // ack was skipped.
        gates[1].notify_one();
        let third = next(&mut rx).await;
        assert!(system.generation() >= Some(2), "reconnected");
        assert_eq!(third.message_id.as_deref(), Some("msg-0008"));
        assert!(third.redelivered);
        consuming.stop().await;
        assert_eq!(ready_count(&url, &q).await, 0);
    })
    .await;
}

#[tokio::test]
async fn a_broker_restart_mid_flow_loses_no_confirmed_message() {
    broker_test(|url, names| async move {
        let (ex, q) = {
            let mut n = names.lock().unwrap();
            (n.exchange("restart"), n.queue("restart"))
        };
        let topology = Topology {
            exchanges: vec![exchange(&ex, ExchangeKind::Direct)],
            queues: vec![bound(QueueSpec::quorum(&q), &ex, "intake")],
        };
        let name = names.lock().unwrap().system("restart");
        let mut spec = spec(&url, name, topology);
        spec.confirm_timeout = Duration::from_secs(3);
        let system = AmqpSystem::connect(spec).await.unwrap();
        let mut start_app = StartAppOnDrop { stopped: false };

        // Every delivery: (message id, redelivered).
        let consumed: Arc<StdMutex<Vec<(String, bool)>>> = Arc::default();
        let handler = {
            let consumed = consumed.clone();
            move |incoming: Incoming| {
                consumed.lock().unwrap().push((
                    incoming.message_id.unwrap_or_default(),
                    incoming.redelivered,
                ));
                futures::future::ready(Decision::Ack)
            }
        };
        let consuming = Consuming::start(&system, &q, 20, handler);

        // The publisher retries a failed publish as the engine's durable queue would; a
        // message published more than once may legitimately arrive twice.
        const N: usize = 500;
        let confirmed: Arc<StdMutex<Vec<String>>> = Arc::default();
        let retried: Arc<StdMutex<HashSet<String>>> = Arc::default();
        let failures = Arc::new(AtomicUsize::new(0));
        let publisher = {
            let (system, ex) = (system.clone(), ex.clone());
            let (confirmed, retried, failures) =
                (confirmed.clone(), retried.clone(), failures.clone());
            tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(180);
                for i in 0..N {
                    let id = format!("msg-{i:04}");
                    loop {
                        match system.publish(message(&ex, "intake", &id)).await {
                            Ok(()) => {
                                confirmed.lock().unwrap().push(id.clone());
                                break;
                            }
                            Err(e) => {
                                assert_eq!(e.retry(), Retry::Retryable, "{e}");
                                failures.fetch_add(1, Ordering::SeqCst);
                                retried.lock().unwrap().insert(id.clone());
                                assert!(Instant::now() < deadline, "publishing took over 3 min");
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    }
                    // Spread the flow over the restart.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };

        // Restart the broker once 100 messages are confirmed.
        let deadline = Instant::now() + WAIT;
        while confirmed.lock().unwrap().len() < 100 {
            assert!(Instant::now() < deadline, "100 publishes within 15 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        start_app.stopped = true;
        rabbitmqctl_async(&["stop_app"]).await;
        let confirmed_at_stop = confirmed.lock().unwrap().len();
        // While the broker is down a publish waits for the reconnect only up to the confirm
        // timeout, then fails retryably.
        let started = Instant::now();
        let err = system
            .publish(message(&ex, "intake", "msg-outage"))
            .await
            .expect_err("no publish is confirmed while the broker is down");
        assert_eq!(err.kind, FailureKind::Timeout, "{err}");
        assert_eq!(err.retry(), Retry::Retryable);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "bounded by confirm_timeout"
        );
        rabbitmqctl_async(&["start_app"]).await;
        start_app.stopped = false;
        wait_for_broker(&url, Duration::from_secs(60)).await;
        assert!(
            confirmed_at_stop < N,
            "the restart happened mid-flow ({confirmed_at_stop} of {N} confirmed at the stop)"
        );

        tokio::time::timeout(Duration::from_secs(200), publisher)
            .await
            .expect("the publisher finishes")
            .expect("the publisher did not panic");
        let confirmed = confirmed.lock().unwrap().clone();
        assert_eq!(confirmed.len(), N);

        // Everything confirmed is consumed.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let seen: HashSet<String> = consumed
                .lock()
                .unwrap()
                .iter()
                .map(|(id, _)| id.clone())
                .collect();
            let missing: Vec<&String> = confirmed.iter().filter(|id| !seen.contains(*id)).collect();
            if missing.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} confirmed messages were not consumed within 60 s, e.g. {:?}",
                missing.len(),
                &missing[..missing.len().min(5)]
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        consuming.stop().await;

        // A message consumed twice is explained only by a lost ack (the later delivery is
        // marked redelivered) or by a publish that was retried after a failure.
        let consumed = consumed.lock().unwrap().clone();
        let retried = retried.lock().unwrap().clone();
        let mut deliveries: HashMap<&str, Vec<bool>> = HashMap::new();
        for (id, redelivered) in &consumed {
            deliveries.entry(id).or_default().push(*redelivered);
        }
        let duplicates: Vec<(&str, &Vec<bool>)> = deliveries
            .iter()
            .filter(|(_, d)| d.len() > 1)
            .map(|(id, d)| (*id, d))
            .collect();
        eprintln!(
            "restart test: {N} confirmed ({confirmed_at_stop} before the stop), {} failed \
             publish attempts during the outage, {} deliveries, {} messages consumed more than \
             once: {:?}",
            failures.load(Ordering::SeqCst),
            consumed.len(),
            duplicates.len(),
            duplicates
        );
        for (id, redeliveries) in &duplicates {
            assert!(
                redeliveries[1..].iter().all(|r| *r) || retried.contains(*id),
                "{id} was consumed {} times without a lost ack or a retried publish to explain it",
                redeliveries.len()
            );
        }
        assert!(system.is_connected(), "the system is connected again");
        assert!(
            system.generation() >= Some(2),
            "the system reconnected after the restart: {:?}",
            system.generation()
        );
        assert_eq!(ready_count(&url, &q).await, 0);
    })
    .await;
}
