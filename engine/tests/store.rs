//! The message store's compliance suite: every case runs against SQLite (a temporary file) and
//! PostgreSQL (its own schema in the database at `TILTS_TEST_DATABASE_URL`; skipped when that is
//! unset, failing when it is set and the database cannot be reached).
//!
//! Time is passed explicitly (`now`), never slept.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use serde_json::json;
use tilts_engine::store::{
    Attempt, Idempotency, MessageFilter, MessageId, MessageState, NewMessage, Outcome, Payload,
    Store, StoreError, StoreOptions,
};

#[macro_use]
mod support;
use support::{on_postgres, on_sqlite};

on_both_stores!(
    enqueue_claim_deliver,
    retry_schedules_next_attempt,
    dead_letter_keeps_attempts,
    requeue_from_dead_letters,
    requeue_matching_a_filter,
    discard_with_reason,
    idempotent_repeat_returns_same_id,
    conflicting_repeat_is_conflict,
    lease_expiry_lets_another_worker_claim,
    ordering_key_holds_back_only_its_key,
    concurrent_claimers_never_share_a_message,
    purge_keeps_metadata,
    listener_wakes_on_enqueue,
    unknown_ids,
    concurrent_enqueues_are_each_committed_once,
    a_rejected_message_fails_alone,
    concurrent_attempt_records_each_answered,
);

const LEASE: Duration = Duration::from_secs(30);

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 8, 0, 0).unwrap()
}

fn secs(n: i64) -> TimeDelta {
    TimeDelta::seconds(n)
}

fn message(route: &str, body: serde_json::Value) -> NewMessage {
    NewMessage::new(route, Payload::json(&body), t0())
}

fn attempt(started_at: DateTime<Utc>, outcome: Outcome) -> Attempt {
    let failed = !matches!(outcome, Outcome::Delivered);
    Attempt {
        started_at,
        duration: Duration::from_millis(120),
        outcome,
        error_class: failed.then(|| "status:503".to_owned()),
        error_text: failed.then(|| "system 'registry' answered HTTP 503".to_owned()),
        request: None,
    }
}

async fn enqueue(store: &Store, msg: NewMessage) -> MessageId {
    store.enqueue(msg).await.unwrap().id
}

async fn state(store: &Store, id: MessageId) -> MessageState {
    store.get(id).await.unwrap().unwrap().meta.state
}

// ---------------------------------------------------------------------------------------------
// The cases.

async fn enqueue_claim_deliver(store: Store) {
    let mut msg = message("applications", json!({"case": 1}));
    msg.original = Some(Payload::new("application/xml", "<a>1</a>"));
    msg.answer = Some(json!({"status": 202}));
    let id = enqueue(&store, msg).await;
    assert_eq!(store.counts().await.unwrap().pending, 1);

    // Not due before its time.
    assert!(
        store
            .claim("w1", 10, LEASE, t0() - secs(1))
            .await
            .unwrap()
            .is_empty()
    );
    let claimed = store.claim("w1", 10, LEASE, t0()).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let c = &claimed[0];
    assert_eq!(
        (c.id, c.route_id.as_str(), c.attempt),
        (id, "applications", 1)
    );
    assert_eq!(c.payload.to_json(), Some(json!({"case": 1})));
    assert_eq!(c.lease_until, t0() + secs(30));
    // Leased: nobody else gets it.
    assert!(store.claim("w2", 10, LEASE, t0()).await.unwrap().is_empty());

    let mut done = attempt(t0() + secs(1), Outcome::Delivered);
    done.request = Some(Payload::new("application/json", r#"{"mapped":true}"#));
    store.record_attempt(id, c.lease_token, done).await.unwrap();

    let view = store.get(id).await.unwrap().unwrap();
    assert_eq!(view.meta.state, MessageState::Delivered);
    assert_eq!(view.meta.attempts, 1);
    assert_eq!(view.meta.lease, None);
    assert_eq!(
        view.meta.finished_at,
        Some(t0() + secs(1) + TimeDelta::milliseconds(120))
    );
    assert_eq!(
        view.original,
        Some(Payload::new("application/xml", "<a>1</a>"))
    );
    assert_eq!(
        view.last_request,
        Some(Payload::new("application/json", r#"{"mapped":true}"#))
    );
    assert_eq!(view.answer, Some(json!({"status": 202})));
    assert_eq!(view.attempts.len(), 1);
    assert_eq!(view.attempts[0].worker_id, "w1");
    assert_eq!(view.attempts[0].outcome, "delivered");
    assert_eq!(view.attempts[0].duration, Duration::from_millis(120));

    // Delivered is final: not claimed again, even after the lease would have expired.
    assert!(
        store
            .claim("w1", 10, LEASE, t0() + secs(3600))
            .await
            .unwrap()
            .is_empty()
    );
    let counts = store.counts().await.unwrap();
    assert_eq!((counts.pending, counts.delivered), (0, 1));
}

async fn retry_schedules_next_attempt(store: Store) {
    let id = enqueue(&store, message("r", json!({}))).await;
    let c = store.claim("w1", 1, LEASE, t0()).await.unwrap().remove(0);
    let next_at = t0() + secs(60);
    store
        .record_attempt(id, c.lease_token, attempt(t0(), Outcome::Retry { next_at }))
        .await
        .unwrap();

    let view = store.get(id).await.unwrap().unwrap();
    assert_eq!(view.meta.state, MessageState::Pending);
    assert_eq!(view.meta.next_attempt_at, next_at);
    assert_eq!(view.meta.last_error_class.as_deref(), Some("status:503"));
    assert_eq!(view.attempts[0].retry_at, Some(next_at));

    // Not before its time, although it holds no lease.
    assert!(
        store
            .claim("w1", 1, LEASE, next_at - secs(1))
            .await
            .unwrap()
            .is_empty()
    );
    let again = store.claim("w2", 1, LEASE, next_at).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempt, 2);
    store
        .record_attempt(
            id,
            again[0].lease_token,
            attempt(next_at, Outcome::Delivered),
        )
        .await
        .unwrap();
    let view = store.get(id).await.unwrap().unwrap();
    assert_eq!(view.meta.state, MessageState::Delivered);
    let outcomes: Vec<_> = view.attempts.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, ["retry", "delivered"]);
    assert_eq!(view.attempts[1].number, 2);
}

async fn dead_letter_keeps_attempts(store: Store) {
    let mut msg = message("r", json!({"x": 1}));
    msg.original = Some(Payload::new("text/plain", "as received"));
    let id = enqueue(&store, msg).await;
    let mut now = t0();
    for _ in 0..2 {
        let c = store.claim("w", 1, LEASE, now).await.unwrap().remove(0);
        let next_at = now + secs(10);
        store
            .record_attempt(id, c.lease_token, attempt(now, Outcome::Retry { next_at }))
            .await
            .unwrap();
        now = next_at;
    }
    let c = store.claim("w", 1, LEASE, now).await.unwrap().remove(0);
    let mut last = attempt(now, Outcome::DeadLetter);
    last.error_text = Some("x".repeat(2000));
    last.request = Some(Payload::new("application/json", "{\"last\":1}"));
    store.record_attempt(id, c.lease_token, last).await.unwrap();

    let view = store.get(id).await.unwrap().unwrap();
    assert_eq!(view.meta.state, MessageState::Dead);
    assert_eq!(view.attempts.len(), 3);
    assert_eq!(view.attempts[2].outcome, "dead_letter");
    // Error texts are cut short.
    assert_eq!(
        view.attempts[2]
            .error_text
            .as_ref()
            .unwrap()
            .chars()
            .count(),
        500
    );
    // The original, the payload and the last mapped request are kept for the operator.
    assert_eq!(
        view.original,
        Some(Payload::new("text/plain", "as received"))
    );
    assert_eq!(view.payload.unwrap().to_json(), Some(json!({"x": 1})));
    assert_eq!(
        view.last_request,
        Some(Payload::new("application/json", "{\"last\":1}"))
    );

    assert!(
        store
            .claim("w", 1, LEASE, now + secs(3600))
            .await
            .unwrap()
            .is_empty()
    );
    let dead = store.dead_letters(&MessageFilter::default()).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, id);
    assert_eq!(dead[0].attempts, 3);
    assert_eq!(store.counts().await.unwrap().dead, 1);
}

/// Enqueues a message for `route` and runs it straight into the dead letters at `t0`.
async fn dead_letter(store: &Store, route: &str, class: &str) -> MessageId {
    let id = enqueue(store, message(route, json!({}))).await;
    let c = store.claim("w", 1, LEASE, t0()).await.unwrap().remove(0);
    assert_eq!(c.id, id);
    let mut a = attempt(t0(), Outcome::DeadLetter);
    a.error_class = Some(class.to_owned());
    store.record_attempt(id, c.lease_token, a).await.unwrap();
    id
}

async fn requeue_from_dead_letters(store: Store) {
    let id = dead_letter(&store, "r", "status:400").await;
    // Only dead letters can be requeued.
    let live = enqueue(&store, message("r", json!({}))).await;
    assert!(matches!(
        store.requeue(live, t0()).await,
        Err(StoreError::InvalidState {
            state: MessageState::Pending,
            ..
        })
    ));

    let later = t0() + secs(600);
    store.requeue(id, later).await.unwrap();
    let view = store.get(id).await.unwrap().unwrap();
    assert_eq!(view.meta.state, MessageState::Pending);
    assert_eq!(view.meta.finished_at, None);
    assert!(
        store
            .dead_letters(&MessageFilter::default())
            .await
            .unwrap()
            .is_empty()
    );

    // Due at the requeue time, with a fresh attempt budget; attempts keep their numbers.
    let claimed = store.claim("w", 10, LEASE, later).await.unwrap();
    let c = claimed.iter().find(|c| c.id == id).unwrap();
    assert_eq!(c.attempt, 1);
    store
        .record_attempt(id, c.lease_token, attempt(later, Outcome::Delivered))
        .await
        .unwrap();
    let view = store.get(id).await.unwrap().unwrap();
    assert_eq!(view.meta.state, MessageState::Delivered);
    assert_eq!(view.attempts.len(), 2);
    assert_eq!(view.attempts[1].number, 2);
    assert_eq!(view.meta.attempts_since_requeue, 1);
}

async fn requeue_matching_a_filter(store: Store) {
    let a1 = dead_letter(&store, "a", "status:400").await;
    let a2 = dead_letter(&store, "a", "mapping").await;
    let b1 = dead_letter(&store, "b", "status:400").await;

    let only_a = MessageFilter {
        route_id: Some("a".into()),
        ..Default::default()
    };
    let listed: Vec<_> = store
        .dead_letters(&only_a)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(listed, [a1, a2]);
    let paged = MessageFilter {
        limit: Some(1),
        ..only_a.clone()
    };
    let first = store.dead_letters(&paged).await.unwrap();
    assert_eq!(first.len(), 1);
    let next = MessageFilter {
        after: Some(first[0].seq),
        ..paged
    };
    assert_eq!(store.dead_letters(&next).await.unwrap()[0].id, a2);

    let filter = MessageFilter {
        error_class: Some("status:400".into()),
        ..Default::default()
    };
    assert_eq!(store.requeue_matching(&filter, t0()).await.unwrap(), 2);
    assert_eq!(state(&store, a1).await, MessageState::Pending);
    assert_eq!(state(&store, b1).await, MessageState::Pending);
    assert_eq!(state(&store, a2).await, MessageState::Dead);
    assert_eq!(store.requeue_matching(&filter, t0()).await.unwrap(), 0);
}

async fn discard_with_reason(store: Store) {
    let dead = dead_letter(&store, "r", "status:400").await;
    store
        .discard(dead, "duplicate application, confirmed by phone", t0())
        .await
        .unwrap();
    let view = store.get(dead).await.unwrap().unwrap();
    assert_eq!(view.meta.state, MessageState::Discarded);
    assert_eq!(
        view.meta.discard_reason.as_deref(),
        Some("duplicate application, confirmed by phone")
    );
    assert_eq!(view.attempts.len(), 1);

    // A pending message can be discarded while a worker holds it; the worker then cannot record.
    let id = enqueue(&store, message("r", json!({}))).await;
    let c = store.claim("w", 1, LEASE, t0()).await.unwrap().remove(0);
    store.discard(id, "withdrawn", t0()).await.unwrap();
    assert!(matches!(
        store.record_attempt(id, c.lease_token, attempt(t0(), Outcome::Delivered)).await,
        Err(StoreError::LeaseLost(lost)) if lost == id
    ));
    assert!(
        store
            .claim("w", 1, LEASE, t0() + secs(3600))
            .await
            .unwrap()
            .is_empty()
    );

    // Final states cannot be discarded.
    assert!(matches!(
        store.discard(id, "again", t0()).await,
        Err(StoreError::InvalidState {
            state: MessageState::Discarded,
            ..
        })
    ));
    assert_eq!(store.counts().await.unwrap().discarded, 2);
}

fn keyed(key: &str, hash: &str, body: serde_json::Value) -> NewMessage {
    let mut msg = message("applications", body);
    msg.idempotency = Some(Idempotency {
        key: key.into(),
        request_hash: hash.into(),
    });
    msg.answer = Some(json!({"accepted": key}));
    msg
}

async fn idempotent_repeat_returns_same_id(store: Store) {
    let first = store
        .enqueue(keyed("k-1", "h1", json!({"n": 1})))
        .await
        .unwrap();
    assert!(!first.duplicate);
    let mut repeat = keyed("k-1", "h1", json!({"n": 1}));
    repeat.answer = Some(json!({"other": true}));
    let again = store.enqueue(repeat).await.unwrap();
    assert_eq!(again.id, first.id);
    assert!(again.duplicate);
    // The first answer, not the repeat's.
    assert_eq!(again.answer, Some(json!({"accepted": "k-1"})));
    assert_eq!(store.counts().await.unwrap().pending, 1);

    // Keys are per route, and a repeat after delivery still finds the first message.
    let mut other_route = keyed("k-1", "h1", json!({"n": 1}));
    other_route.route_id = "other".into();
    assert_ne!(store.enqueue(other_route).await.unwrap().id, first.id);
    let c = store.claim("w", 10, LEASE, t0()).await.unwrap();
    for c in c {
        store
            .record_attempt(c.id, c.lease_token, attempt(t0(), Outcome::Delivered))
            .await
            .unwrap();
    }
    assert_eq!(
        store
            .enqueue(keyed("k-1", "h1", json!({"n": 1})))
            .await
            .unwrap()
            .id,
        first.id
    );
}

async fn conflicting_repeat_is_conflict(store: Store) {
    let first = store
        .enqueue(keyed("k-2", "h1", json!({"n": 1})))
        .await
        .unwrap();
    let err = store
        .enqueue(keyed("k-2", "h2", json!({"n": 2})))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict { key, .. } if key == "k-2"),
        "{err:?}"
    );
    assert!(!err.is_unavailable());
    // The error text names the key but never the body.
    assert!(!err.to_string().contains("\"n\""));
    assert_eq!(store.counts().await.unwrap().pending, 1);
    assert_eq!(state(&store, first.id).await, MessageState::Pending);
}

async fn lease_expiry_lets_another_worker_claim(store: Store) {
    let id = enqueue(&store, message("r", json!({}))).await;
    let old = store
        .claim("crashed", 1, LEASE, t0())
        .await
        .unwrap()
        .remove(0);
    assert!(
        store
            .claim("w2", 1, LEASE, t0() + secs(29))
            .await
            .unwrap()
            .is_empty()
    );

    let new = store.claim("w2", 1, LEASE, t0() + secs(30)).await.unwrap();
    assert_eq!(new.len(), 1);
    assert_eq!(new[0].id, id);
    assert_ne!(new[0].lease_token, old.lease_token);
    let view = store.get(id).await.unwrap().unwrap();
    assert_eq!(view.meta.lease.unwrap().owner, "w2");

    // The old owner comes back: its token no longer counts.
    let err = store
        .record_attempt(
            id,
            old.lease_token,
            attempt(t0() + secs(31), Outcome::DeadLetter),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::LeaseLost(lost) if lost == id),
        "{err:?}"
    );
    store
        .record_attempt(
            id,
            new[0].lease_token,
            attempt(t0() + secs(31), Outcome::Delivered),
        )
        .await
        .unwrap();
    let view = store.get(id).await.unwrap().unwrap();
    assert_eq!(view.meta.state, MessageState::Delivered);
    assert_eq!(view.attempts.len(), 1);
    assert_eq!(view.attempts[0].worker_id, "w2");
    // A token cannot be used twice.
    assert!(matches!(
        store
            .record_attempt(id, new[0].lease_token, attempt(t0(), Outcome::Delivered))
            .await,
        Err(StoreError::LeaseLost(_))
    ));
}

async fn ordering_key_holds_back_only_its_key(store: Store) {
    let with_key = |key: &str, n: u32| {
        let mut msg = message("cases", json!({"key": key, "n": n}));
        msg.ordering_key = Some(key.into());
        msg
    };
    let k1_1 = enqueue(&store, with_key("k1", 1)).await;
    let k1_2 = enqueue(&store, with_key("k1", 2)).await;
    let k2_1 = enqueue(&store, with_key("k2", 1)).await;
    // The same key on another route is another sequence.
    let mut elsewhere = with_key("k1", 1);
    elsewhere.route_id = "other".into();
    let other = enqueue(&store, elsewhere).await;

    let claimed = store.claim("w", 10, LEASE, t0()).await.unwrap();
    let ids: HashSet<_> = claimed.iter().map(|c| c.id).collect();
    assert_eq!(ids, HashSet::from([k1_1, k2_1, other]));
    let token = |id| claimed.iter().find(|c| c.id == id).unwrap().lease_token;

    // k1#1 fails and waits for a retry: k1#2 stays blocked, k2 goes on.
    let retry_at = t0() + secs(60);
    store
        .record_attempt(
            k1_1,
            token(k1_1),
            attempt(t0(), Outcome::Retry { next_at: retry_at }),
        )
        .await
        .unwrap();
    store
        .record_attempt(k2_1, token(k2_1), attempt(t0(), Outcome::Delivered))
        .await
        .unwrap();
    store
        .record_attempt(other, token(other), attempt(t0(), Outcome::Delivered))
        .await
        .unwrap();
    let k2_2 = enqueue(&store, with_key("k2", 2)).await;
    let claimed = store.claim("w", 10, LEASE, t0() + secs(1)).await.unwrap();
    assert_eq!(claimed.iter().map(|c| c.id).collect::<Vec<_>>(), [k2_2]);
    store
        .record_attempt(
            k2_2,
            claimed[0].lease_token,
            attempt(t0(), Outcome::Delivered),
        )
        .await
        .unwrap();
    // Even after a lease of k1#1 would have expired.
    assert!(
        store
            .claim("w", 10, LEASE, retry_at - secs(1))
            .await
            .unwrap()
            .is_empty()
    );

    // The retry is due: k1#1 again, still not k1#2.
    let claimed = store.claim("w", 10, LEASE, retry_at).await.unwrap();
    assert_eq!(claimed.iter().map(|c| c.id).collect::<Vec<_>>(), [k1_1]);
    store
        .record_attempt(
            k1_1,
            claimed[0].lease_token,
            attempt(retry_at, Outcome::Delivered),
        )
        .await
        .unwrap();
    let claimed = store.claim("w", 10, LEASE, retry_at).await.unwrap();
    assert_eq!(claimed.iter().map(|c| c.id).collect::<Vec<_>>(), [k1_2]);

    // A dead letter holds back its key until it is requeued or discarded.
    store
        .record_attempt(
            k1_2,
            claimed[0].lease_token,
            attempt(retry_at, Outcome::DeadLetter),
        )
        .await
        .unwrap();
    let k1_3 = enqueue(&store, with_key("k1", 3)).await;
    assert!(
        store
            .claim("w", 10, LEASE, retry_at + secs(1))
            .await
            .unwrap()
            .is_empty()
    );
    store.discard(k1_2, "superseded", retry_at).await.unwrap();
    let claimed = store
        .claim("w", 10, LEASE, retry_at + secs(1))
        .await
        .unwrap();
    assert_eq!(claimed.iter().map(|c| c.id).collect::<Vec<_>>(), [k1_3]);
}

async fn concurrent_claimers_never_share_a_message(store: Store) {
    const N: usize = 500;
    let mut enqueued = HashSet::new();
    for i in 0..N {
        let mut msg = message("bulk", json!({"i": i}));
        // Some keyed messages too, so the ordering rule runs under contention.
        if i % 5 == 0 {
            msg.ordering_key = Some(format!("key-{}", i % 3));
        }
        enqueued.insert(enqueue(&store, msg).await);
    }
    let worker = |name: &'static str| {
        let store = store.clone();
        tokio::spawn(async move {
            let mut delivered = Vec::new();
            let mut idle = 0;
            // Keyed messages only become claimable once their predecessor is delivered, so a
            // worker stops after seeing nothing to claim several times in a row, not once.
            while idle < 50 {
                let claimed = store.claim(name, 7, LEASE, t0()).await.unwrap();
                if claimed.is_empty() {
                    idle += 1;
                    tokio::task::yield_now().await;
                    continue;
                }
                idle = 0;
                for c in claimed {
                    store
                        .record_attempt(c.id, c.lease_token, attempt(t0(), Outcome::Delivered))
                        .await
                        .unwrap();
                    delivered.push(c.id);
                }
            }
            delivered
        })
    };
    let (a, b) = (worker("a"), worker("b"));
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    let all: Vec<_> = a.iter().chain(&b).copied().collect();
    let distinct: HashSet<_> = all.iter().copied().collect();
    assert_eq!(all.len(), distinct.len(), "a message was delivered twice");
    assert_eq!(distinct, enqueued, "a message was never delivered");
    let counts = store.counts().await.unwrap();
    assert_eq!((counts.pending, counts.delivered), (0, N as u64));
    for id in &all {
        assert_eq!(store.get(*id).await.unwrap().unwrap().attempts.len(), 1);
    }
}

async fn purge_keeps_metadata(store: Store) {
    let mut msg = message("r", json!({"personal": "data"}));
    msg.original = Some(Payload::new("text/plain", "personal data"));
    msg.answer = Some(json!({"ok": true}));
    let old = enqueue(&store, msg).await;
    let recent = enqueue(&store, message("r", json!({}))).await;
    let dead = enqueue(&store, message("r", json!({}))).await;
    let pending = enqueue(&store, message("r", json!({}))).await;
    for c in store.claim("w", 3, LEASE, t0()).await.unwrap() {
        let (at, outcome) = match c.id {
            id if id == old => (t0(), Outcome::Delivered),
            id if id == recent => (t0() + secs(3600), Outcome::Delivered),
            _ => (t0(), Outcome::DeadLetter),
        };
        let mut a = attempt(at, outcome);
        a.request = Some(Payload::new("application/json", "{}"));
        store.record_attempt(c.id, c.lease_token, a).await.unwrap();
    }

    let purged = store
        .purge_payloads(t0() + secs(60), t0() + secs(7200))
        .await
        .unwrap();
    assert_eq!(purged, 1);
    let view = store.get(old).await.unwrap().unwrap();
    assert_eq!(
        (view.payload, view.original, view.last_request, view.answer),
        (None, None, None, None)
    );
    assert_eq!(view.meta.state, MessageState::Delivered);
    assert_eq!(view.meta.purged_at, Some(t0() + secs(7200)));
    assert_eq!(view.attempts.len(), 1);
    assert_eq!(view.meta.route_id, "r");
    // Recently delivered, dead and pending messages keep their bodies.
    for id in [recent, dead, pending] {
        let view = store.get(id).await.unwrap().unwrap();
        assert!(view.payload.is_some(), "{:?}", view.meta.state);
    }
    // Idempotent: nothing left to purge.
    assert_eq!(
        store.purge_payloads(t0() + secs(60), t0()).await.unwrap(),
        0
    );
    assert_eq!(store.counts().await.unwrap().delivered, 2);
}

async fn listener_wakes_on_enqueue(store: Store) {
    let mut listener = store.listen().await.unwrap();
    let waiting = tokio::spawn(async move { listener.wait().await });
    enqueue(&store, message("r", json!({}))).await;
    tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("no wake-up within 10 s")
        .unwrap()
        .unwrap();
}

async fn unknown_ids(store: Store) {
    let id: MessageId = "0190f0e4-0000-7000-8000-000000000000".parse().unwrap();
    assert!(store.get(id).await.unwrap().is_none());
    assert!(matches!(
        store.requeue(id, t0()).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.discard(id, "x", t0()).await,
        Err(StoreError::NotFound(_))
    ));
    let token = {
        enqueue(&store, message("r", json!({}))).await;
        store
            .claim("w", 1, LEASE, t0())
            .await
            .unwrap()
            .remove(0)
            .lease_token
    };
    assert!(matches!(
        store
            .record_attempt(id, token, attempt(t0(), Outcome::Delivered))
            .await,
        Err(StoreError::NotFound(_))
    ));
}

// ---------------------------------------------------------------------------------------------
// Backend-specific behaviour.

#[tokio::test]
async fn sqlite_store_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("tilts.db").display());
    let store = Store::open(&url).await.unwrap();
    assert_eq!(store.backend(), "sqlite");
    let id = enqueue(&store, message("r", json!({"kept": true}))).await;
    store.close().await;
    // A plain path works too, and migrations already applied are skipped.
    let store = Store::open(dir.path().join("tilts.db").to_str().unwrap())
        .await
        .unwrap();
    let view = store.get(id).await.unwrap().unwrap();
    assert_eq!(view.payload.unwrap().to_json(), Some(json!({"kept": true})));
    store.close().await;
}

/// Two `tilts serve` on one SQLite file, or a restart while the old process still holds it:
/// stores opened on a fresh file at the same moment all open (one migrates, the others wait),
/// and the file ends up migrated once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_stores_opened_at_once_on_one_file_all_open() {
    for round in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("tilts.db").display());
        let opened = futures::future::join_all((0..8).map(|_| {
            let url = url.clone();
            tokio::spawn(async move { Store::open(&url).await })
        }))
        .await;
        let mut stores = Vec::new();
        for o in opened {
            match o.unwrap() {
                Ok(s) => stores.push(s),
                Err(e) => panic!("round {round}: a store did not open: {e:#}"),
            }
        }
        // Every handle writes to the same, fully migrated database.
        let id = enqueue(&stores[0], message("r", json!({"n": round}))).await;
        for s in &stores {
            assert!(s.get(id).await.unwrap().is_some());
        }
        for s in &stores {
            s.close().await;
        }
    }
}

#[tokio::test]
async fn unreachable_postgres_is_unavailable() {
    let options = StoreOptions {
        acquire_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    // Port 9 (discard) is closed on test machines.
    let err = Store::open_with("postgres://postgres@127.0.0.1:9/tilts", &options)
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
}

#[tokio::test]
async fn bad_urls_are_rejected() {
    let err = Store::open("mysql://localhost/x").await.unwrap_err();
    assert!(matches!(err, StoreError::BadUrl(_)), "{err:?}");
}

// ---------------------------------------------------------------------------------------------
// Fixtures.

// ---------------------------------------------------------------------------------------------
// Group commit: enqueues and attempt records that arrive together share one transaction; each
// caller still gets its own answer, only after the commit that holds its item.

async fn concurrent_enqueues_are_each_committed_once(store: Store) {
    const N: usize = 300;
    let mut batch = Vec::new();
    for i in 0..N {
        let mut msg = message("bulk", json!({"i": i}));
        msg.ordering_key = Some(format!("key-{}", i % 7));
        // Pairs of idempotent repeats, and one conflicting reuse of a key, in the same burst.
        if i % 10 < 2 {
            msg.idempotency = Some(Idempotency {
                key: format!("idem-{}", i / 10),
                request_hash: "same".into(),
            });
        }
        batch.push(msg);
    }
    let mut conflicting = message("bulk", json!({"conflict": true}));
    conflicting.idempotency = Some(Idempotency {
        key: "idem-0".into(),
        request_hash: "other".into(),
    });
    batch.push(conflicting);
    let results = futures::future::join_all(batch.into_iter().map(|m| store.enqueue(m))).await;

    let mut ids = HashSet::new();
    let mut duplicates = 0;
    let mut conflicts = 0;
    for r in results {
        match r {
            Ok(e) if e.duplicate => duplicates += 1,
            Ok(e) => assert!(ids.insert(e.id), "one id acknowledged twice"),
            Err(StoreError::Conflict { .. }) => conflicts += 1,
            Err(e) => panic!("enqueue failed: {e}"),
        }
    }
    // 30 keys used twice each: one new message and one repeat per key.
    assert_eq!((ids.len(), duplicates, conflicts), (N - 30, 30, 1));
    // Everything acknowledged is committed, and nothing else.
    assert_eq!(store.counts().await.unwrap().pending, (N - 30) as u64);
    for id in &ids {
        assert_eq!(state(&store, *id).await, MessageState::Pending);
    }
    // Each ordering key still comes out in enqueue order, one at a time.
    let mut last_seq = std::collections::HashMap::new();
    loop {
        let claimed = store.claim("w", 50, LEASE, t0()).await.unwrap();
        if claimed.is_empty() {
            break;
        }
        for c in claimed {
            let seq = store.get(c.id).await.unwrap().unwrap().meta.seq;
            let key = c.ordering_key.clone().unwrap();
            if let Some(prev) = last_seq.insert(key, seq) {
                assert!(prev < seq, "ordering key delivered out of order");
            }
            store
                .record_attempt(c.id, c.lease_token, attempt(t0(), Outcome::Delivered))
                .await
                .unwrap();
        }
    }
    assert_eq!(store.counts().await.unwrap().delivered, (N - 30) as u64);
}

async fn a_rejected_message_fails_alone(store: Store) {
    let first = enqueue(&store, message("bulk", json!({"first": true}))).await;
    // The same id again: the database rejects it (unique id), and with it the batch's
    // transaction; the others in that batch are committed on their own.
    let mut batch: Vec<NewMessage> = (0..40).map(|i| message("bulk", json!({"i": i}))).collect();
    let mut clash = message("bulk", json!({"clash": true}));
    clash.id = first;
    batch.insert(20, clash);
    let results = futures::future::join_all(batch.into_iter().map(|m| store.enqueue(m))).await;
    let failed: Vec<_> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is_err())
        .collect();
    assert_eq!(
        failed.len(),
        1,
        "only the clashing message fails: {failed:?}"
    );
    assert_eq!(failed[0].0, 20);
    assert!(!failed[0].1.as_ref().unwrap_err().is_unavailable());
    assert_eq!(store.counts().await.unwrap().pending, 41);
    let view = store.get(first).await.unwrap().unwrap();
    assert_eq!(
        view.payload.unwrap().to_json(),
        Some(json!({"first": true}))
    );
}

async fn concurrent_attempt_records_each_answered(store: Store) {
    for i in 0..60 {
        enqueue(&store, message("bulk", json!({"i": i}))).await;
    }
    let claimed = store.claim("w", 60, LEASE, t0()).await.unwrap();
    assert_eq!(claimed.len(), 60);
    // One lease taken over by another worker after expiry (the oldest message's), one unknown
    // message, the rest delivered, retried or dead-lettered, all at once.
    let stolen = claimed[0].clone();
    let late = t0() + secs(31);
    let retaken = store.claim("other", 1, LEASE, late).await.unwrap();
    assert_eq!(retaken[0].id, stolen.id);
    let unknown = tilts_engine::store::LeaseToken(uuid::Uuid::new_v4());
    let mut calls = Vec::new();
    for (i, c) in claimed.iter().enumerate() {
        let outcome = match i % 3 {
            0 => Outcome::Delivered,
            1 => Outcome::Retry {
                next_at: t0() + secs(60),
            },
            _ => Outcome::DeadLetter,
        };
        calls.push(store.record_attempt(c.id, c.lease_token, attempt(t0(), outcome)));
    }
    calls.push(store.record_attempt(MessageId::new(), unknown, attempt(t0(), Outcome::Delivered)));
    let results = futures::future::join_all(calls).await;
    for (i, r) in results.iter().enumerate() {
        match i {
            0 => assert!(matches!(r, Err(StoreError::LeaseLost(id)) if *id == stolen.id)),
            60 => assert!(matches!(r, Err(StoreError::NotFound(_)))),
            _ => assert!(r.is_ok(), "attempt {i}: {r:?}"),
        }
    }
    let counts = store.counts().await.unwrap();
    // 19 delivered (not the stolen one, i = 0), 20 retried + the stolen one pending, 20 dead.
    assert_eq!(
        (counts.delivered, counts.pending, counts.dead),
        (19, 21, 20)
    );
    for (i, c) in claimed.iter().enumerate() {
        let view = store.get(c.id).await.unwrap().unwrap();
        let expected = if i == 0 { 0 } else { 1 };
        assert_eq!(view.attempts.len(), expected, "attempts of message {i}");
        if i != 0 {
            assert_eq!(view.attempts[0].worker_id, "w");
            assert!(view.meta.lease.is_none());
        }
    }
}

/// SQLite: a batch whose transaction cannot start (another process holds the file's write lock)
/// fails as a whole: every caller gets "unavailable", nothing is written, and the store works
/// again once the lock is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_locked_file_fails_the_whole_batch() {
    support::with_sqlite_url(async |url| {
        let options = StoreOptions {
            busy_timeout: Duration::from_millis(200),
            ..StoreOptions::default()
        };
        let store = Store::open_with(&url, &options).await.unwrap();
        use sqlx::{Connection, Executor};
        let path = url.strip_prefix("sqlite://").unwrap();
        let mut other = sqlx::SqliteConnection::connect(&format!("sqlite://{path}"))
            .await
            .unwrap();
        other.execute("BEGIN IMMEDIATE").await.unwrap();
        let results = futures::future::join_all(
            (0..20).map(|i| store.enqueue(message("bulk", json!({"i": i})))),
        )
        .await;
        for r in &results {
            assert!(
                matches!(r, Err(e) if e.is_unavailable()),
                "expected unavailable, got {r:?}"
            );
        }
        other.execute("ROLLBACK").await.unwrap();
        assert_eq!(store.counts().await.unwrap().pending, 0);
        enqueue(&store, message("bulk", json!({"after": true}))).await;
        assert_eq!(store.counts().await.unwrap().pending, 1);
        store.close().await;
    })
    .await;
}
