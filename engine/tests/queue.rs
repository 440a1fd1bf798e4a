//! Durable delivery, end to end in one process: tilts started with `service::start` (ingress,
//! store, workers) in front of the social-services simulator, on both stores.
//!
//! Every case runs against SQLite (a temporary file) and PostgreSQL (a schema of its own in the
//! database at `TILTS_TEST_DATABASE_URL`; skipped when that is unset, failing when it is set and
//! the database cannot be reached). The PostgreSQL outage case runs on PostgreSQL only, through a
//! TCP proxy the test can cut.
//!
//! The routes are in `tests/queue/routes.yaml`: queued routes with fast retries and an ordering
//! key. Outcomes are awaited by polling the store and the simulator with a deadline, never with
//! fixed sleeps; what is asserted is what the simulator received (method, path, body, the
//! `X-Tilts-Message-Id` of each attempt) and what the store recorded (state, attempts, error
//! classes).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tilts_adapters::sim::{RecordedRequest, SimServer, Simulators};
use tilts_engine::check;
use tilts_engine::service::{self, Running, StartOptions};
use tilts_engine::store::{MessageFilter, MessageId, MessageState, MessageView, Store};
use tilts_engine::worker::WorkerOptions;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;

mod support;
use support::{with_postgres_url as on_postgres, with_sqlite_url as on_sqlite};

/// Generates one test per case and backend: `sqlite::case` and `postgres::case`.
macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::on_sqlite(super::$case).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::on_postgres(super::$case).await;
                }
            )*

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn store_outage_answers_503_then_recovers() {
                super::on_postgres(async |db| {
                    super::store_outage(db, super::Outage::Cut).await
                })
                .await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn store_blackhole_answers_503_then_recovers() {
                super::on_postgres(async |db| {
                    super::store_outage(db, super::Outage::Blackhole).await
                })
                .await;
            }
        }
    };
}

suite!(
    retry_then_success,
    retry_until_dead_letter,
    other_retryable_failures_are_retried,
    permanent_error_dead_lettered_at_once,
    requeue_from_dead_letters,
    ordering_key_holds_order_under_failures,
    idempotent_repeat_returns_the_first_answer,
    conflicting_repeat_is_422,
    invalid_input_is_422_and_not_stored,
    sync_route_falls_back_to_the_queue,
);

/// The mapped body's `message.id` is the id of the stored message (docs/routes.md: "the message
/// id tilts gave this request, also sent to systems as `X-Tilts-Message-Id`").
mod message_id_in_mappings {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::on_sqlite(super::mapped_message_id_is_the_delivered_id).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::on_postgres(super::mapped_message_id_is_the_delivered_id).await;
    }
}

/// A valid old-form personal code (fictional).
const VALID_CODE: &str = "150285-10005";
/// Shaped like a personal code but with a wrong check digit: the route's schema lets it through,
/// the social service answers 422.
const INVALID_CODE: &str = "150285-10006";

const INTAKE: &str = "/v1/cases";
const ORDERED: &str = "/v1/ordered-cases";

/// How long a delivery outcome may take to show up (retries of the test routes take < 2 s).
const OUTCOME: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// The cases.

/// `fallback: queue`: a sync route answers the institution's reply when it can; on a failure
/// that may pass it stores the message (202) and the workers deliver it with the same id the
/// first attempt carried; a permanent failure still fails the caller (502), nothing stored.
async fn sync_route_falls_back_to_the_queue(db: String) {
    let t = Tilts::start(&db).await;
    let path = "/v1/sync-cases";

    // The institution answers: the caller gets its answer directly.
    let r = t
        .post(path, &application("CASE-SYNC-OK", 1, VALID_CODE), None)
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let answer: Value = r.json().await.unwrap();
    assert!(answer["caseNumber"].is_string(), "{answer:#}");

    // It fails with 503 (twice: the sync attempt and the first queued one): 202, then delivered.
    t.sim().clear_requests();
    t.sim().faults().fail_next(2, 503);
    let id = t
        .accept(path, &application("CASE-SYNC-LATER", 1, VALID_CODE), None)
        .await;
    let view = t.wait_state(id, MessageState::Delivered).await;
    assert_eq!(outcomes(&view), ["retry", "delivered"], "{view:#?}");
    let got = t.sim().requests();
    assert_eq!(got.len(), 3, "sync attempt + 2 queued attempts: {got:#?}");
    for r in &got {
        assert_eq!(
            r.header("x-tilts-message-id"),
            Some(id.to_string().as_str())
        );
        assert_mapped(r, "CASE-SYNC-LATER", 1, VALID_CODE);
    }

    // A permanent failure is the caller's answer, not a queued message.
    t.sim().clear_requests();
    t.sim().faults().fail_next(1, 400);
    let r = t
        .post(path, &application("CASE-SYNC-BAD", 1, VALID_CODE), None)
        .await;
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    let stats = t.store().counts().await.unwrap();
    assert_eq!(stats.pending + stats.dead, 0, "{stats:?}");
    t.stop().await;
}

async fn retry_then_success(db: String) {
    let t = Tilts::start(&db).await;
    t.sim().faults().fail_next(2, 503);
    let body = application("CASE-RETRY", 1, VALID_CODE);
    let id = t.accept(INTAKE, &body, None).await;

    let view = t.wait_state(id, MessageState::Delivered).await;
    assert_eq!(view.meta.attempts, 3, "{view:#?}");
    assert_eq!(outcomes(&view), ["retry", "retry", "delivered"]);
    assert_eq!(
        classes(&view),
        [Some("http-503"), Some("http-503"), None],
        "{view:#?}"
    );
    assert!(view.meta.finished_at.is_some());
    // The schedule: 100 ms, then 200 ms (no jitter on this route).
    let gap = |a: usize| (view.attempts[a + 1].started_at - view.attempts[a].started_at).to_std();
    assert!(gap(0).unwrap() >= Duration::from_millis(100), "{view:#?}");
    assert!(gap(1).unwrap() >= Duration::from_millis(200), "{view:#?}");

    // The simulator got three attempts of the same request, each with the same message id.
    let got = t.deliveries(id);
    assert_eq!(got.len(), 3, "{got:#?}");
    for r in &got {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/cases");
        assert_eq!(
            r.header("x-tilts-message-id"),
            Some(id.to_string().as_str())
        );
        assert!(
            r.header("content-type")
                .is_some_and(|c| c.starts_with("application/json")),
            "{r:#?}"
        );
        assert_mapped(r, "CASE-RETRY", 1, VALID_CODE);
    }
    assert_eq!(t.sim().requests().len(), 3, "nothing else was sent");
    t.stop().await;
}

async fn retry_until_dead_letter(db: String) {
    let t = Tilts::start(&db).await;
    t.sim().faults().fail_always(503);
    let body = application("CASE-DEAD", 1, VALID_CODE);
    let id = t.accept(INTAKE, &body, None).await;

    let view = t.wait_state(id, MessageState::Dead).await;
    assert_eq!(view.meta.attempts, 3, "{view:#?}");
    assert_eq!(outcomes(&view), ["retry", "retry", "dead_letter"]);
    assert_eq!(classes(&view), [Some("http-503"); 3]);
    assert!(
        view.attempts
            .iter()
            .all(|a| a.retry_at.is_some() == (a.outcome == "retry")),
        "{view:#?}"
    );
    assert!(
        view.attempts
            .iter()
            .all(|a| a.error_text.as_deref().is_some_and(|t| !t.is_empty())),
        "{view:#?}"
    );
    assert_eq!(view.meta.last_error_class.as_deref(), Some("http-503"));
    // The dead letter keeps what came in and what was sent.
    assert_eq!(
        view.original.as_ref().and_then(|p| p.to_json()),
        Some(body.clone())
    );
    assert!(view.payload.is_some() && view.last_request.is_some());

    let dead = t
        .store()
        .dead_letters(&MessageFilter {
            route_id: Some("case-intake".into()),
            ..MessageFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(dead.iter().map(|m| m.id).collect::<Vec<_>>(), [id]);

    let got = t.deliveries(id);
    assert_eq!(got.len(), 3, "exactly max_attempts attempts: {got:#?}");
    t.stop().await;
}

/// A connection reset mid-request and a 429 are retryable too, and the 429's Retry-After (1 s)
/// is honoured over the route's shorter backoff (200 ms).
async fn other_retryable_failures_are_retried(db: String) {
    let t = Tilts::start(&db).await;
    // Applied in this order: the reset first, then the 429.
    t.sim().faults().reset_connection_next(1);
    t.sim().faults().fail_next(1, 429);
    let id = t
        .accept(INTAKE, &application("CASE-429", 1, VALID_CODE), None)
        .await;
    let view = t.wait_state(id, MessageState::Delivered).await;
    assert_eq!(outcomes(&view), ["retry", "retry", "delivered"]);
    assert_eq!(classes(&view), [Some("connect"), Some("http-429"), None]);
    let after_429 = (view.attempts[2].started_at - view.attempts[1].started_at)
        .to_std()
        .unwrap();
    assert!(
        after_429 >= Duration::from_secs(1),
        "Retry-After: 1 honoured, waited {after_429:?}"
    );
    assert_eq!(t.deliveries(id).len(), 3);
    t.stop().await;
}

async fn permanent_error_dead_lettered_at_once(db: String) {
    let t = Tilts::start(&db).await;
    // The social service refuses an invalid personal code with 422: permanent.
    let refused = t
        .accept(INTAKE, &application("CASE-422", 1, INVALID_CODE), None)
        .await;
    let view = t.wait_state(refused, MessageState::Dead).await;
    assert_eq!(view.meta.attempts, 1, "{view:#?}");
    assert_eq!(outcomes(&view), ["dead_letter"]);
    assert_eq!(classes(&view), [Some("http-422")]);
    assert_eq!(t.deliveries(refused).len(), 1);
    // Error texts are for operators: no personal data in them.
    for a in &view.attempts {
        let text = a.error_text.as_deref().unwrap_or("");
        assert!(
            !text.contains("150285"),
            "personal code in an error text: {text}"
        );
    }

    // Any other 4xx (not 408/429) is permanent too.
    t.sim().faults().fail_next(1, 400);
    let bad = t
        .accept(INTAKE, &application("CASE-400", 1, VALID_CODE), None)
        .await;
    let view = t.wait_state(bad, MessageState::Dead).await;
    assert_eq!(outcomes(&view), ["dead_letter"]);
    assert_eq!(classes(&view), [Some("http-400")]);
    assert_eq!(t.deliveries(bad).len(), 1);
    t.stop().await;
}

async fn requeue_from_dead_letters(db: String) {
    let t = Tilts::start(&db).await;
    t.sim().faults().fail_always(503);
    let id = t
        .accept(INTAKE, &application("CASE-REQUEUE", 1, VALID_CODE), None)
        .await;
    t.wait_state(id, MessageState::Dead).await;
    assert_eq!(t.deliveries(id).len(), 3);

    t.sim().faults().clear();
    t.store().requeue(id, Utc::now()).await.unwrap();
    let view = t.wait_state(id, MessageState::Delivered).await;
    assert_eq!(
        view.meta.attempts, 4,
        "attempts count across requeues: {view:#?}"
    );
    assert_eq!(view.meta.attempts_since_requeue, 1, "{view:#?}");
    assert_eq!(
        outcomes(&view),
        ["retry", "retry", "dead_letter", "delivered"]
    );
    assert_eq!(view.attempts[3].number, 4);

    let got = t.deliveries(id);
    assert_eq!(got.len(), 4, "{got:#?}");
    assert_mapped(&got[3], "CASE-REQUEUE", 1, VALID_CODE);
    let dead = t
        .store()
        .dead_letters(&MessageFilter::default())
        .await
        .unwrap();
    assert!(dead.is_empty(), "{dead:#?}");
    t.stop().await;
}

/// k1#1 fails twice, then succeeds; k1#2 and k1#3 wait for it and follow in order, while k2#1
/// (another key) is delivered in the meantime.
async fn ordering_key_holds_order_under_failures(db: String) {
    let t = Tilts::start(&db).await;
    // Only k1#1 is claimable until it is delivered, so it takes both failures.
    t.sim().faults().fail_next(2, 503);
    let k1 = [
        t.accept(ORDERED, &application("K1", 1, VALID_CODE), None)
            .await,
        t.accept(ORDERED, &application("K1", 2, VALID_CODE), None)
            .await,
        t.accept(ORDERED, &application("K1", 3, VALID_CODE), None)
            .await,
    ];
    let failing = t
        .wait_for("k1#1 to fail twice", OUTCOME, async || {
            let v = t.store().get(k1[0]).await.unwrap().unwrap();
            (v.attempts.len() >= 2).then_some(v)
        })
        .await;
    assert_eq!(classes(&failing), [Some("http-503"), Some("http-503")]);

    // k1#1 now waits 1 s for its third attempt; k2#1 does not wait for it.
    let k2 = t
        .accept(ORDERED, &application("K2", 1, VALID_CODE), None)
        .await;
    t.wait_state(k2, MessageState::Delivered).await;
    let k1_first = t.store().get(k1[0]).await.unwrap().unwrap();
    assert_eq!(
        (k1_first.meta.state, k1_first.meta.attempts),
        (MessageState::Pending, 2),
        "k2#1 was delivered while k1#1 was still failing: {k1_first:#?}"
    );
    for later in &k1[1..] {
        let v = t.store().get(*later).await.unwrap().unwrap();
        assert_eq!((v.meta.state, v.meta.attempts), (MessageState::Pending, 0));
    }

    for id in k1 {
        t.wait_state(id, MessageState::Delivered).await;
    }
    // What the social service saw, in arrival order.
    let order: Vec<(MessageId, String)> = t
        .sim()
        .requests()
        .iter()
        .map(|r| {
            let id: MessageId = r.header("x-tilts-message-id").unwrap().parse().unwrap();
            let app = r.json().unwrap()["applicationId"]
                .as_str()
                .unwrap()
                .to_owned();
            (id, app)
        })
        .collect();
    let k1_seen: Vec<&str> = order
        .iter()
        .filter(|(id, _)| k1.contains(id))
        .map(|(_, a)| a.as_str())
        .collect();
    assert_eq!(
        k1_seen,
        ["K1/1", "K1/1", "K1/1", "K1/2", "K1/3"],
        "k1 in order, k1#2 only after k1#1 succeeded: {order:#?}"
    );
    let k2_at = order.iter().position(|(id, _)| *id == k2).unwrap();
    let k1_success_at = order
        .iter()
        .enumerate()
        .filter(|(_, (id, _))| *id == k1[0])
        .map(|(i, _)| i)
        .nth(2)
        .unwrap();
    assert!(k2_at < k1_success_at, "{order:#?}");
    assert_eq!(order.len(), 6, "{order:#?}");

    // The store agrees: each later message of k1 started after its predecessor finished.
    let mut finished_before = None;
    for id in k1 {
        let v = t.store().get(id).await.unwrap().unwrap();
        let last = v.attempts.last().unwrap();
        if let Some(f) = finished_before {
            assert!(last.started_at >= f, "{v:#?}");
        }
        finished_before = v.meta.finished_at;
    }
    t.stop().await;
}

async fn idempotent_repeat_returns_the_first_answer(db: String) {
    let t = Tilts::start(&db).await;
    let body = application("CASE-IDEM", 1, VALID_CODE);
    let first = t.post(INTAKE, &body, Some("idem-1")).await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();
    let id: MessageId = first["messageId"].as_str().unwrap().parse().unwrap();

    // A repeat at once (maybe before delivery) and one after delivery: the same answer.
    let mut repeats = vec![t.post(INTAKE, &body, Some("idem-1")).await];
    t.wait_state(id, MessageState::Delivered).await;
    repeats.push(t.post(INTAKE, &body, Some("idem-1")).await);
    for r in repeats {
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        assert_eq!(r.headers()["idempotent-replayed"], "true");
        assert_eq!(r.headers()["x-tilts-message-id"], id.to_string().as_str());
        let again: Value = r.json().await.unwrap();
        assert_eq!(again, first);
    }

    // Repeats racing each other, with a key not seen before: one message, one answer.
    let other = application("CASE-IDEM", 2, VALID_CODE);
    let racing =
        futures::future::join_all((0..6).map(|_| t.post(INTAKE, &other, Some("idem-race")))).await;
    let mut ids = HashSet::new();
    let mut replayed = 0;
    for r in racing {
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        replayed += usize::from(r.headers().contains_key("idempotent-replayed"));
        let v: Value = r.json().await.unwrap();
        ids.insert(v["messageId"].as_str().unwrap().to_owned());
    }
    assert_eq!((ids.len(), replayed), (1, 5), "{ids:?}");
    let raced: MessageId = ids.into_iter().next().unwrap().parse().unwrap();
    t.wait_state(raced, MessageState::Delivered).await;

    let counts = t.store().counts().await.unwrap();
    assert_eq!(
        (counts.pending, counts.delivered, counts.dead),
        (0, 2, 0),
        "one message stored per key"
    );
    let view = t.store().get(id).await.unwrap().unwrap();
    assert_eq!(view.meta.attempts, 1);
    assert_eq!(view.meta.idempotency_key.as_deref(), Some("idem-1"));
    assert_eq!(t.sim().requests().len(), 2, "each delivered once");
    assert_eq!(t.deliveries(id).len(), 1);
    assert_eq!(t.deliveries(raced).len(), 1);
    t.stop().await;
}

async fn conflicting_repeat_is_422(db: String) {
    let t = Tilts::start(&db).await;
    let id = t
        .accept(
            INTAKE,
            &application("CASE-KEY", 1, VALID_CODE),
            Some("idem-2"),
        )
        .await;
    let other = application("CASE-KEY", 2, VALID_CODE);
    let r = t.post(INTAKE, &other, Some("idem-2")).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["type"], "urn:tilts:problem:idempotency-conflict");
    assert_eq!(problem["status"], 422);
    assert_eq!(problem["route"], "case-intake");
    assert_ne!(problem["messageId"], id.to_string().as_str());

    // The key belongs to its route: the same key on another route is a new message.
    let elsewhere = t.accept(ORDERED, &other, Some("idem-2")).await;
    assert_ne!(elsewhere, id);

    t.wait_state(id, MessageState::Delivered).await;
    t.wait_state(elsewhere, MessageState::Delivered).await;
    let counts = t.store().counts().await.unwrap();
    assert_eq!((counts.pending, counts.delivered, counts.dead), (0, 2, 0));
    let apps: Vec<String> = t
        .sim()
        .requests()
        .iter()
        .map(|r| {
            r.json().unwrap()["applicationId"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect::<Vec<_>>();
    assert_eq!(apps.len(), 2, "{apps:?}");
    assert_eq!(apps.iter().filter(|a| *a == "CASE-KEY/1").count(), 1);
    t.stop().await;
}

async fn invalid_input_is_422_and_not_stored(db: String) {
    let t = Tilts::start(&db).await;
    let mut body = application("CASE-BAD", 1, VALID_CODE);
    body.as_object_mut().unwrap().remove("caseId");
    body["seq"] = json!(0);
    let r = t.post(INTAKE, &body, Some("idem-bad")).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["type"], "urn:tilts:problem:invalid-request");
    let pointers: HashSet<String> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert!(pointers.len() >= 2, "{problem:#}");

    // Malformed JSON: 400, not stored either.
    let r = t
        .http
        .post(format!("{}{INTAKE}", t.base))
        .header("content-type", "application/json")
        .body("{\"caseId\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    let counts = t.store().counts().await.unwrap();
    assert_eq!(
        (
            counts.pending,
            counts.delivered,
            counts.dead,
            counts.discarded
        ),
        (0, 0, 0, 0)
    );
    // The idempotency key of a refused request is not used up.
    let id = t
        .accept(
            INTAKE,
            &application("CASE-BAD", 1, VALID_CODE),
            Some("idem-bad"),
        )
        .await;
    t.wait_state(id, MessageState::Delivered).await;
    assert_eq!(t.sim().requests().len(), 1);
    t.stop().await;
}

async fn mapped_message_id_is_the_delivered_id(db: String) {
    let t = Tilts::start(&db).await;
    let id = t
        .accept(INTAKE, &application("CASE-ID", 1, VALID_CODE), None)
        .await;
    t.wait_state(id, MessageState::Delivered).await;
    let got = t.deliveries(id);
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].json().unwrap()["source"]["messageId"],
        id.to_string().as_str(),
        "the mapped body's message.id is the X-Tilts-Message-Id and the 202's messageId"
    );
    t.stop().await;
}

/// How PostgreSQL goes away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outage {
    /// Connections are closed and new ones refused (the server or its host is down).
    Cut,
    /// Nothing gets through but nothing is closed either: connections open and then hang (a
    /// network partition, a frozen server).
    Blackhole,
}

/// PostgreSQL goes away (through the proxy between tilts and it) and comes back: while it is
/// away the ingress answers 503 with Retry-After and never 202; afterwards tilts accepts again
/// and delivers everything it accepted, on its own.
async fn store_outage(db: String, how: Outage) {
    let upstream = pg_host_port(&db);
    let mut proxy = Proxy::start(upstream.clone(), "127.0.0.1:0".parse().unwrap()).await;
    let proxied = with_host_port(&db, &proxy.addr.to_string());
    // A short lease: deliveries whose attempt cannot be recorded are redelivered soon after.
    let t = Tilts::start_with(
        &proxied,
        WorkerOptions {
            lease: Duration::from_secs(3),
            ..worker_options()
        },
    )
    .await;
    let mut accepted = Vec::new();

    // Up: accepted and delivered through the proxy.
    for i in 1..=3 {
        accepted.push(
            t.accept(INTAKE, &application("UP", i, VALID_CODE), None)
                .await,
        );
    }
    for id in &accepted {
        t.wait_state(*id, MessageState::Delivered).await;
    }
    let (status, ready) = t.readiness().await;
    assert_eq!(status, StatusCode::OK, "{ready:#}");
    assert_eq!(
        ready["store"],
        json!({"backend": "postgres", "status": "ok"})
    );

    // Deliveries in flight (the social service is slow) when the database goes away...
    t.sim().faults().delay(Duration::from_millis(700));
    let mut in_flight = Vec::new();
    for i in 1..=3 {
        in_flight.push(
            t.accept(INTAKE, &application("INFLIGHT", i, VALID_CODE), None)
                .await,
        );
    }
    accepted.extend(&in_flight);
    t.wait_for(
        "the in-flight deliveries to reach the service",
        OUTCOME,
        async || {
            in_flight
                .iter()
                .all(|id| !t.deliveries(*id).is_empty())
                .then_some(())
        },
    )
    .await;
    // ...and callers sending all the while.
    let load = Load::start(&t, 4);
    t.wait_for("callers to be accepted", OUTCOME, async || {
        (load.accepted() >= 20).then_some(())
    })
    .await;

    match how {
        Outage::Cut => proxy.stop().await,
        Outage::Blackhole => proxy.freeze(),
    }
    let down_at = Instant::now();
    t.sim().faults().clear();

    // Down: every answer is 503 with Retry-After, within a few seconds; never 202.
    let outage = futures::future::join_all((1..=4).map(|i| {
        let body = application("DOWN", i, VALID_CODE);
        let t = &t;
        async move {
            let sent = Instant::now();
            let r = t.post(INTAKE, &body, None).await;
            (sent.elapsed(), r)
        }
    }))
    .await;
    for (took, r) in outage {
        let status = r.status();
        let retry_after = r
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let problem: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "while the store is unreachable: {problem:#}"
        );
        assert!(
            retry_after.is_some_and(|s| s > 0),
            "Retry-After: {retry_after:?}"
        );
        assert_eq!(problem["type"], "urn:tilts:problem:store-unavailable");
        assert!(took < Duration::from_secs(10), "answered after {took:?}");
        eprintln!("{how:?}: 503 after {took:?}, Retry-After: {retry_after:?}");
    }
    // The callers that were sending when the store went away got their answers too.
    let calls = load.stop().await;
    let mut late = Vec::new();
    for c in &calls {
        match &c.answer {
            Ok((StatusCode::ACCEPTED, Some(id))) => {
                assert!(
                    c.sent < down_at,
                    "202 for a request sent {:?} after the store went away",
                    c.sent - down_at
                );
                accepted.push(*id);
            }
            Ok((StatusCode::SERVICE_UNAVAILABLE, _)) => {}
            Ok((other, _)) => panic!("a caller got {other} around the outage"),
            Err(e) => late.push(format!(
                "sent {} the store went away, no answer after {:?}: {e}",
                relative(c.sent, down_at),
                c.took
            )),
        }
        if c.took >= Duration::from_secs(10) && c.answer.is_ok() {
            late.push(format!(
                "sent {} the store went away, answered after {:?}",
                relative(c.sent, down_at),
                c.took
            ));
        }
    }
    let (ok, unavailable) = (
        calls
            .iter()
            .filter(|c| matches!(c.answer, Ok((StatusCode::ACCEPTED, _))))
            .count(),
        calls
            .iter()
            .filter(|c| matches!(c.answer, Ok((StatusCode::SERVICE_UNAVAILABLE, _))))
            .count(),
    );
    eprintln!("{how:?}: callers got {ok} × 202 and {unavailable} × 503; late: {late:?}");
    assert!(
        late.is_empty(),
        "callers waited too long around the outage: {late:#?}"
    );
    // Load balancers see it too: /readyz answers 503 (within its 2 s wait for the store).
    let asked = Instant::now();
    let (status, ready) = t.readiness().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{ready:#}");
    assert_eq!(ready["status"], "store unavailable");
    assert_eq!(
        ready["store"],
        json!({"backend": "postgres", "status": "unavailable"})
    );
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );

    // Back: the same port again; tilts accepts again without a restart. (A blackhole heals as
    // a cut: its frozen connections are closed.)
    proxy.stop().await;
    proxy = Proxy::start(upstream, proxy.addr).await;
    let restored = Instant::now();
    let back = t
        .wait_for(
            "the ingress to accept again",
            Duration::from_secs(30),
            async || {
                let r = t
                    .post(INTAKE, &application("BACK", 1, VALID_CODE), None)
                    .await;
                match r.status() {
                    StatusCode::ACCEPTED => {
                        let v: Value = r.json().await.unwrap();
                        Some(
                            v["messageId"]
                                .as_str()
                                .unwrap()
                                .parse::<MessageId>()
                                .unwrap(),
                        )
                    }
                    StatusCode::SERVICE_UNAVAILABLE => None,
                    other => panic!("after the store came back: {other}"),
                }
            },
        )
        .await;
    eprintln!(
        "{how:?}: accepting again {:?} after the store came back",
        restored.elapsed()
    );
    let (status, ready) = t.readiness().await;
    assert_eq!(status, StatusCode::OK, "ready again: {ready:#}");
    accepted.push(back);
    for i in 2..=3 {
        accepted.push(
            t.accept(INTAKE, &application("BACK", i, VALID_CODE), None)
                .await,
        );
    }

    // Nothing accepted is lost: every 202 is delivered, and the service has seen each one.
    for id in &accepted {
        let v = t
            .wait_for(
                "every accepted message to be delivered",
                Duration::from_secs(40),
                async || {
                    let v = t.store().get(*id).await.ok()??;
                    (v.meta.state == MessageState::Delivered).then_some(v)
                },
            )
            .await;
        assert!(!t.deliveries(*id).is_empty(), "{v:#?}");
    }
    let twice = accepted
        .iter()
        .filter(|id| t.deliveries(**id).len() > 1)
        .count();
    eprintln!(
        "{how:?}: {} accepted, all delivered {:?} after the store came back; {twice} delivered \
         twice (delivered, but the attempt could not be recorded while the store was away)",
        accepted.len(),
        restored.elapsed(),
    );
    t.stop().await;
    proxy.stop().await;
}

fn relative(t: Instant, reference: Instant) -> String {
    if t < reference {
        format!("{:?} before", reference - t)
    } else {
        format!("{:?} after", t - reference)
    }
}

/// Callers sending messages back to back, each waiting for its answer.
struct Load {
    stop: tokio::sync::watch::Sender<bool>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    tasks: Vec<JoinHandle<Vec<Call>>>,
}

/// One caller's request and its answer.
struct Call {
    sent: Instant,
    took: Duration,
    /// Status and, for a 202, the message id; or why no answer came.
    answer: Result<(StatusCode, Option<MessageId>), reqwest::Error>,
}

impl Load {
    fn start(t: &Tilts, callers: usize) -> Load {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tasks = (0..callers)
            .map(|caller| {
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(15))
                    .build()
                    .unwrap();
                let url = format!("{}{INTAKE}", t.base);
                let stopped = stopped.clone();
                let accepted = accepted.clone();
                tokio::spawn(async move {
                    let mut calls = Vec::new();
                    for n in 1.. {
                        if *stopped.borrow() {
                            break;
                        }
                        let body = application(&format!("LOAD-{caller}"), n, VALID_CODE);
                        let sent = Instant::now();
                        let answer = match http.post(&url).json(&body).send().await {
                            Ok(r) => {
                                let status = r.status();
                                let v: Value = r.json().await.unwrap_or(Value::Null);
                                let id = v["messageId"].as_str().and_then(|s| s.parse().ok());
                                if status == StatusCode::ACCEPTED {
                                    accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                }
                                Ok((status, id))
                            }
                            Err(e) => Err(e),
                        };
                        calls.push(Call {
                            sent,
                            took: sent.elapsed(),
                            answer,
                        });
                    }
                    calls
                })
            })
            .collect();
        Load {
            stop,
            accepted,
            tasks,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops sending and returns every call, once each has its answer.
    async fn stop(self) -> Vec<Call> {
        self.stop.send_replace(true);
        let mut calls = Vec::new();
        for t in self.tasks {
            calls.extend(t.await.unwrap());
        }
        calls
    }
}

// ---------------------------------------------------------------------------------------------
// tilts and the simulator.

struct Tilts {
    running: Running,
    sims: Simulators,
    http: reqwest::Client,
    base: String,
}

fn worker_options() -> WorkerOptions {
    WorkerOptions {
        worker_id: "queue-test".into(),
        concurrency: 8,
        lease: Duration::from_secs(10),
        poll_interval: Duration::from_millis(50),
        batch: 16,
    }
}

impl Tilts {
    async fn start(db: &str) -> Tilts {
        Tilts::start_with(db, worker_options()).await
    }

    async fn start_with(db: &str, workers: WorkerOptions) -> Tilts {
        let sims = Simulators::start().await.unwrap();
        let sim_url = sims.social_services.url();
        let routes = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/queue/routes.yaml");
        let plan = check::load_with_env(&routes, &|k| {
            (k == "SOCIAL_SERVICES_URL").then(|| sim_url.clone())
        })
        .unwrap_or_else(|d| panic!("tests/queue/routes.yaml does not check:\n{d}"));
        let running = service::start(
            plan,
            StartOptions {
                listen: Some("127.0.0.1:0".into()),
                admin_listen: Some("127.0.0.1:0".into()),
                database: Some(db.to_owned()),
                workers: Some(workers),
                no_workers: false,
            },
        )
        .await
        .unwrap();
        assert!(running.store.is_some());
        let base = format!("http://{}", running.addr);
        Tilts {
            running,
            sims,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
            base,
        }
    }

    fn store(&self) -> &Store {
        self.running.store.as_ref().unwrap()
    }

    fn sim(&self) -> &SimServer {
        &self.sims.social_services
    }

    /// What the social service received for one message (every attempt).
    fn deliveries(&self, id: MessageId) -> Vec<RecordedRequest> {
        let id = id.to_string();
        self.sim()
            .requests()
            .into_iter()
            .filter(|r| r.header("x-tilts-message-id") == Some(id.as_str()))
            .collect()
    }

    async fn post(&self, path: &str, body: &Value, key: Option<&str>) -> reqwest::Response {
        let mut req = self.http.post(format!("{}{path}", self.base)).json(body);
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        req.send().await.unwrap()
    }

    /// `GET /readyz`: the status code and the body.
    async fn readiness(&self) -> (StatusCode, Value) {
        let r = self
            .http
            .get(format!("{}/readyz", self.base))
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Sends a message that must be accepted; returns its id.
    async fn accept(&self, path: &str, body: &Value, key: Option<&str>) -> MessageId {
        let r = self.post(path, body, key).await;
        let status = r.status();
        let header = r
            .headers()
            .get("x-tilts-message-id")
            .map(|v| v.to_str().unwrap().to_owned());
        let answer: Value = r.json().await.unwrap();
        assert_eq!(status, StatusCode::ACCEPTED, "{answer:#}");
        assert_eq!(answer["status"], "accepted");
        assert!(answer["route"].is_string());
        let id = answer["messageId"].as_str().unwrap();
        assert_eq!(header.as_deref(), Some(id));
        id.parse().unwrap()
    }

    /// Polls `probe` every 20 ms until it gives a value; panics after `within`.
    async fn wait_for<T>(
        &self,
        what: &str,
        within: Duration,
        mut probe: impl AsyncFnMut() -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + within;
        loop {
            if let Some(v) = probe().await {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {within:?} waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the message is in `state`; panics (showing the message) after [`OUTCOME`].
    async fn wait_state(&self, id: MessageId, state: MessageState) -> MessageView {
        let deadline = Instant::now() + OUTCOME;
        loop {
            let view = self.store().get(id).await.unwrap().unwrap();
            if view.meta.state == state {
                return view;
            }
            assert!(
                Instant::now() < deadline,
                "message {id} is not {state} after {OUTCOME:?}: {view:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(self) {
        self.running.stop().await;
        self.sims.shutdown().await;
    }
}

/// An application as a centre sends it to the test routes.
fn application(case_id: &str, seq: u32, personal_code: &str) -> Value {
    json!({
        "caseId": case_id,
        "seq": seq,
        "serviceCode": "SOC-BENEFIT",
        "personalCode": personal_code,
        "firstName": "Anna",
        "lastName": "Kalniņa",
    })
}

/// The request body the social service must have received for `application(...)`.
fn assert_mapped(r: &RecordedRequest, case_id: &str, seq: u32, personal_code: &str) {
    let mut got = r.json().expect("a JSON body");
    // The message id in the body is checked by its own test.
    assert!(got["source"]["messageId"].is_string(), "{got:#}");
    got["source"].as_object_mut().unwrap().remove("messageId");
    assert_eq!(
        got,
        json!({
            "applicationId": format!("{case_id}/{seq}"),
            "serviceCode": "SOC-BENEFIT",
            "applicant": {"personalCode": personal_code, "firstName": "Anna", "lastName": "Kalniņa"},
            "channel": "e-service",
            "source": {"system": "tilts-queue-test"},
        })
    );
}

fn outcomes(view: &MessageView) -> Vec<&str> {
    view.attempts.iter().map(|a| a.outcome.as_str()).collect()
}

fn classes(view: &MessageView) -> Vec<Option<&str>> {
    view.attempts
        .iter()
        .map(|a| a.error_class.as_deref())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// A TCP proxy between tilts and PostgreSQL that the test can cut and restore.

/// The proxy's connection tasks: aborting one closes both of its sockets.
type Conns = Arc<Mutex<Vec<JoinHandle<()>>>>;

struct Proxy {
    addr: SocketAddr,
    accept: Option<JoinHandle<()>>,
    conns: Conns,
    frozen: tokio::sync::watch::Sender<bool>,
}

impl Proxy {
    /// Listens on `addr` (port 0: any) and forwards every connection to `upstream`.
    async fn start(upstream: String, addr: SocketAddr) -> Proxy {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket
            .bind(addr)
            .unwrap_or_else(|e| panic!("proxy cannot bind {addr}: {e}"));
        let listener: TcpListener = socket.listen(128).unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Conns::default();
        let registry = conns.clone();
        let (frozen, frozen_rx) = tokio::sync::watch::channel(false);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                let upstream = upstream.clone();
                let mut frozen = frozen_rx.clone();
                let task = tokio::spawn(async move {
                    // Frozen: hold the connection open and forward nothing, until stopped.
                    let _ = frozen.wait_for(|f| !*f).await;
                    let Ok(mut server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = async { drop(frozen.wait_for(|f| *f).await) } => {
                            std::future::pending::<()>().await
                        }
                    }
                });
                let mut conns = registry.lock().unwrap();
                conns.retain(|t| !t.is_finished());
                conns.push(task);
            }
        });
        Proxy {
            addr,
            accept: Some(accept),
            conns,
            frozen,
        }
    }

    /// Stops forwarding in both directions but closes nothing; new connections are accepted
    /// and then hang.
    fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// Closes the listener and cuts every open connection; returns when all are closed.
    async fn stop(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
            let _ = accept.await;
        }
        let conns = std::mem::take(&mut *self.conns.lock().unwrap());
        for task in &conns {
            task.abort();
        }
        for task in conns {
            let _ = task.await;
        }
    }
}

impl Drop for Proxy {
    /// A failed test cuts everything too, so no frozen connection keeps its locks.
    fn drop(&mut self) {
        if let Some(accept) = &self.accept {
            accept.abort();
        }
        for task in self.conns.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            task.abort();
        }
    }
}

/// `host:port` of a `postgres://` URL (port 5432 when not written).
fn pg_host_port(url: &str) -> String {
    let (start, end) = authority(url);
    let auth = &url[start..end];
    let host = auth.rsplit_once('@').map_or(auth, |(_, h)| h);
    assert!(
        !host.is_empty(),
        "the outage test needs a TCP host in TILTS_TEST_DATABASE_URL"
    );
    if host
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        host.to_owned()
    } else {
        format!("{host}:5432")
    }
}

/// The URL with its `host:port` replaced.
fn with_host_port(url: &str, host_port: &str) -> String {
    let (start, end) = authority(url);
    let auth = &url[start..end];
    let creds = auth.rsplit_once('@').map(|(c, _)| format!("{c}@"));
    format!(
        "{}{}{host_port}{}",
        &url[..start],
        creds.unwrap_or_default(),
        &url[end..]
    )
}

/// Byte range of the URL's authority (`user@host:port`).
fn authority(url: &str) -> (usize, usize) {
    let start = url.find("://").expect("a postgres:// URL") + 3;
    let end = url[start..]
        .find(['/', '?'])
        .map_or(url.len(), |i| start + i);
    (start, end)
}

// ---------------------------------------------------------------------------------------------
// The backends.

#[test]
fn url_rewriting() {
    assert_eq!(
        pg_host_port("postgres://postgres@127.0.0.1:5432/tilts_test?options[search_path]=x"),
        "127.0.0.1:5432"
    );
    assert_eq!(pg_host_port("postgres://u:p@db/x"), "db:5432");
    assert_eq!(
        with_host_port(
            "postgres://u:p@db:5432/x?options[search_path]=s",
            "127.0.0.1:9"
        ),
        "postgres://u:p@127.0.0.1:9/x?options[search_path]=s"
    );
    assert_eq!(
        with_host_port("postgresql://h", "127.0.0.1:9"),
        "postgresql://127.0.0.1:9"
    );
}
