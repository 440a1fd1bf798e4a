//! The admin JSON API over a real store: every case runs against SQLite (a temporary file) and
//! PostgreSQL (its own schema in the database at `TILTS_TEST_DATABASE_URL`; skipped when that is
//! unset, failing when it is set and the database cannot be reached).
//!
//! Dead letters are made with the store API (enqueue, claim, record attempts) at fixed times in
//! the past; the router is driven without a socket through `tower::ServiceExt::oneshot`.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use serde_json::{Value, json};
use tilts_engine::store::{Attempt, MessageId, NewMessage, Outcome, Payload, Store};
use tower::ServiceExt as _;

#[macro_use]
mod support;
use support::{on_postgres, on_sqlite};

on_both_stores!(
    get_shows_state_and_attempts,
    payloads_only_when_asked_for,
    unknown_and_malformed_ids,
    list_pages_and_filters,
    list_refuses_bad_parameters,
    requeue_one,
    requeue_by_filter,
    empty_filter_is_refused,
    discard_with_reason,
    discard_refuses_without_reason,
    stats_count_by_state,
    unknown_endpoints_and_methods,
);

const LEASE: Duration = Duration::from_secs(30);
/// Personal data in the test messages: must never appear unless payloads are asked for.
const NAME: &str = "Jānis Bērziņš";

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 8, 0, 0).unwrap()
}

fn secs(n: i64) -> TimeDelta {
    TimeDelta::seconds(n)
}

/// Makes a dead letter of `route` received at `at`: a retry (`status:503`) at `at`, then a
/// final failure of class `class` at `at + 60 s` that dead-letters it (finished at
/// `at + 60.12 s`). Create dead letters before requeueing anything: a requeued message is due
/// now, and the claims here would pick it up.
async fn dead_letter(
    store: &Store,
    route: &str,
    key: Option<&str>,
    class: &str,
    at: DateTime<Utc>,
) -> MessageId {
    let mut msg = NewMessage::new(route, Payload::json(&json!({"applicant": NAME})), at);
    msg.ordering_key = key.map(str::to_owned);
    msg.original = Some(Payload::new(
        "application/xml",
        format!("<application><name>{NAME}</name></application>"),
    ));
    let id = store.enqueue(msg).await.unwrap().id;

    let claimed = store.claim("worker-1", 1, LEASE, at).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, id);
    let retry = Attempt {
        started_at: at,
        duration: Duration::from_millis(120),
        outcome: Outcome::Retry {
            next_at: at + secs(60),
        },
        error_class: Some("status:503".into()),
        error_text: Some("system 'registry' answered HTTP 503".into()),
        request: Some(Payload::json(&json!({"name": NAME, "try": 1}))),
    };
    store
        .record_attempt(id, claimed[0].lease_token, retry)
        .await
        .unwrap();

    let claimed = store
        .claim("worker-2", 1, LEASE, at + secs(60))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, id);
    let last = Attempt {
        started_at: at + secs(60),
        duration: Duration::from_millis(120),
        outcome: Outcome::DeadLetter,
        error_class: Some(class.into()),
        error_text: Some(format!("failed with {class}")),
        request: Some(Payload::json(&json!({"name": NAME, "try": 2}))),
    };
    store
        .record_attempt(id, claimed[0].lease_token, last)
        .await
        .unwrap();
    id
}

/// A response: status, `Content-Type`, the body as JSON and as text.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    content_type: String,
    json: Value,
    text: String,
}

async fn send(app: &Router, req: Request<Body>) -> Reply {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let content_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply {
        status,
        content_type,
        json,
        text,
    }
}

async fn get(app: &Router, uri: &str) -> Reply {
    send(app, Request::get(uri).body(Body::empty()).unwrap()).await
}

async fn post(app: &Router, uri: &str, body: Option<Value>) -> Reply {
    let req = Request::post(uri);
    let req = match body {
        Some(b) => req
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    };
    send(app, req.unwrap()).await
}

/// Asserts a problem+json answer with this status whose detail mentions `mentions`.
#[track_caller]
fn assert_problem(reply: &Reply, status: u16, mentions: &str) {
    assert_eq!(reply.status.as_u16(), status, "{}", reply.text);
    assert_eq!(
        reply.content_type, "application/problem+json",
        "{}",
        reply.text
    );
    assert_eq!(reply.json["status"], status, "{}", reply.text);
    assert!(
        reply.json["type"]
            .as_str()
            .unwrap()
            .starts_with("urn:tilts:problem:")
    );
    let detail = reply.json["detail"].as_str().unwrap();
    assert!(
        detail.contains(mentions),
        "detail {detail:?} does not mention {mentions:?}"
    );
}

#[track_caller]
fn ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The cases.

async fn get_shows_state_and_attempts(store: Store) {
    let app = tilts_engine::admin::router(store.clone());
    let id = dead_letter(&store, "applications", Some("case-7"), "status:400", t0()).await;

    let reply = get(&app, &format!("/admin/messages/{id}")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.content_type, "application/json");
    let m = &reply.json;
    assert_eq!(m["id"], id.to_string());
    assert_eq!(m["state"], "dead");
    assert_eq!(m["route"], "applications");
    assert_eq!(m["orderingKey"], "case-7");
    assert_eq!(m["idempotencyKey"], Value::Null);
    assert_eq!(m["receivedAt"], "2026-03-01T08:00:00Z");
    assert_eq!(m["finishedAt"], "2026-03-01T08:01:00.120Z");
    assert_eq!(m["nextAttemptAt"], Value::Null, "only while pending");
    assert_eq!(m["lease"], Value::Null);
    assert_eq!(m["attemptCount"], 2);
    assert_eq!(m["attemptsSinceRequeue"], 2);
    assert_eq!(m["lastErrorClass"], "status:400");
    assert_eq!(m["lastErrorText"], "failed with status:400");
    assert_eq!(m["discardReason"], Value::Null);
    assert_eq!(m["purgedAt"], Value::Null);
    assert_eq!(
        m["attempts"],
        json!([
            {
                "number": 1,
                "worker": "worker-1",
                "startedAt": "2026-03-01T08:00:00Z",
                "durationMs": 120,
                "outcome": "retry",
                "retryAt": "2026-03-01T08:01:00Z",
                "errorClass": "status:503",
                "errorText": "system 'registry' answered HTTP 503",
            },
            {
                "number": 2,
                "worker": "worker-2",
                "startedAt": "2026-03-01T08:01:00Z",
                "durationMs": 120,
                "outcome": "dead_letter",
                "retryAt": null,
                "errorClass": "status:400",
                "errorText": "failed with status:400",
            },
        ])
    );
}

async fn payloads_only_when_asked_for(store: Store) {
    let app = tilts_engine::admin::router(store.clone());
    let id = dead_letter(&store, "applications", None, "status:400", t0()).await;

    // Never by default.
    let reply = get(&app, &format!("/admin/messages/{id}")).await;
    assert_eq!(reply.status, StatusCode::OK);
    for field in ["original", "lastRequest", "payload", "answer"] {
        assert!(reply.json.get(field).is_none(), "{field} shown by default");
    }
    assert!(
        !reply.text.contains(NAME),
        "personal data leaked: {}",
        reply.text
    );

    // With include=payload: the original as text (XML), the last request as JSON.
    let reply = get(&app, &format!("/admin/messages/{id}?include=payload")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(
        reply.json["original"],
        json!({
            "contentType": "application/xml",
            "encoding": "text",
            "body": format!("<application><name>{NAME}</name></application>"),
        })
    );
    assert_eq!(
        reply.json["lastRequest"],
        json!({
            "contentType": "application/json",
            "encoding": "json",
            "body": {"name": NAME, "try": 2},
        })
    );
    assert_eq!(reply.json["attempts"].as_array().unwrap().len(), 2);

    // A message stored without a separate original: its payload is the original.
    let plain = store
        .enqueue(NewMessage::new(
            "r",
            Payload::json(&json!({"applicant": NAME})),
            t0(),
        ))
        .await
        .unwrap()
        .id;
    let reply = get(&app, &format!("/admin/messages/{plain}?include=payload")).await;
    assert_eq!(reply.json["state"], "pending");
    assert_eq!(
        reply.json["original"]["body"],
        json!({"applicant": NAME}),
        "{}",
        reply.text
    );
    assert_eq!(reply.json["lastRequest"], Value::Null);

    // Dead letters are listed without bodies.
    let reply = get(&app, "/admin/dead-letters").await;
    assert_eq!(ids(&reply.json), [id.to_string()]);
    assert!(
        !reply.text.contains(NAME),
        "personal data leaked: {}",
        reply.text
    );
    assert!(reply.json["items"][0].get("attempts").is_none());

    let reply = get(&app, &format!("/admin/messages/{id}?include=everything")).await;
    assert_problem(&reply, 400, "include");
}

async fn unknown_and_malformed_ids(store: Store) {
    let app = tilts_engine::admin::router(store.clone());
    let unknown = "0190f0e4-0000-7000-8000-000000000000";

    let reply = get(&app, &format!("/admin/messages/{unknown}")).await;
    assert_problem(&reply, 404, unknown);
    let reply = post(
        &app,
        &format!("/admin/dead-letters/{unknown}/requeue"),
        None,
    )
    .await;
    assert_problem(&reply, 404, unknown);
    let reply = post(
        &app,
        &format!("/admin/dead-letters/{unknown}/discard"),
        Some(json!({"reason": "duplicate"})),
    )
    .await;
    assert_problem(&reply, 404, unknown);

    for bad in ["42", "not-a-uuid", "0190f0e4-0000-7000-8000-00000000000Z"] {
        let reply = get(&app, &format!("/admin/messages/{bad}")).await;
        assert_problem(&reply, 400, "UUID");
        let reply = post(&app, &format!("/admin/dead-letters/{bad}/requeue"), None).await;
        assert_problem(&reply, 400, "UUID");
        let reply = post(
            &app,
            &format!("/admin/dead-letters/{bad}/discard"),
            Some(json!({"reason": "x"})),
        )
        .await;
        assert_problem(&reply, 400, "UUID");
    }
}

async fn list_pages_and_filters(store: Store) {
    let app = tilts_engine::admin::router(store.clone());
    // Five dead letters, 10 minutes apart (each dead-lettered 60.12 s after its start).
    let a1 = dead_letter(&store, "a", Some("k1"), "status:400", t0()).await;
    let a2 = dead_letter(&store, "a", Some("k2"), "mapping", t0() + secs(600)).await;
    let b1 = dead_letter(&store, "b", Some("k1"), "status:400", t0() + secs(1200)).await;
    let a3 = dead_letter(&store, "a", None, "status:400", t0() + secs(1800)).await;
    let b2 = dead_letter(&store, "b", None, "timeout", t0() + secs(2400)).await;
    // Not dead letters: never listed.
    store
        .enqueue(NewMessage::new("a", Payload::json(&json!({})), Utc::now()))
        .await
        .unwrap();
    let all: Vec<String> = [a1, a2, b1, a3, b2].iter().map(|i| i.to_string()).collect();

    // Everything fits the default page.
    let page = get(&app, "/admin/dead-letters").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    assert_eq!(ids(&page.json), all);
    assert_eq!(page.json["next"], Value::Null);
    let first = &page.json["items"][0];
    assert_eq!(first["state"], "dead");
    assert_eq!(first["route"], "a");
    assert_eq!(first["attemptCount"], 2);
    assert_eq!(first["lastErrorClass"], "status:400");

    // Pages of two, following `next`.
    let mut seen = Vec::new();
    let mut uri = "/admin/dead-letters?limit=2".to_owned();
    let mut pages = 0;
    loop {
        let page = get(&app, &uri).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text);
        pages += 1;
        seen.extend(ids(&page.json));
        match page.json["next"].as_str() {
            Some(next) => uri = format!("/admin/dead-letters?limit=2&after={next}"),
            None => break,
        }
    }
    assert_eq!((seen, pages), (all.clone(), 3));
    // A page that exactly ends the list has no `next`.
    let page = get(&app, "/admin/dead-letters?limit=5").await;
    assert_eq!(ids(&page.json).len(), 5);
    assert_eq!(page.json["next"], Value::Null);

    // Filters, alone and together; empty values count as absent (as from an HTML form).
    let cases = [
        ("route=a", vec![a1, a2, a3]),
        ("route=a&key=k1", vec![a1]),
        ("key=k1", vec![a1, b1]),
        ("error_class=status:400", vec![a1, b1, a3]),
        ("error_class=status%3A400&route=b", vec![b1]),
        // Dead-lettered at or after `since`, before `until`.
        ("since=2026-03-01T08:21:00.120Z", vec![b1, a3, b2]),
        ("until=2026-03-01T08:21:00.120Z", vec![a1, a2]),
        (
            "since=2026-03-01T10:10:00%2B02:00&until=2026-03-01T08:35:00Z",
            vec![a2, b1, a3],
        ),
        (
            "route=&key=&error_class=&since=&until=",
            vec![a1, a2, b1, a3, b2],
        ),
        ("route=nope", vec![]),
    ];
    for (query, expected) in cases {
        let page = get(&app, &format!("/admin/dead-letters?{query}")).await;
        assert_eq!(page.status, StatusCode::OK, "{query}: {}", page.text);
        let expected: Vec<String> = expected.iter().map(|i| i.to_string()).collect();
        assert_eq!(ids(&page.json), expected, "{query}");
    }
    // Paging with a filter.
    let page = get(&app, "/admin/dead-letters?route=a&limit=2").await;
    assert_eq!(ids(&page.json), [a1.to_string(), a2.to_string()]);
    let next = page.json["next"].as_str().unwrap();
    let page = get(
        &app,
        &format!("/admin/dead-letters?route=a&limit=2&after={next}"),
    )
    .await;
    assert_eq!(ids(&page.json), [a3.to_string()]);
    assert_eq!(page.json["next"], Value::Null);
}

async fn list_refuses_bad_parameters(store: Store) {
    let app = tilts_engine::admin::router(store.clone());
    let cases = [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=ten", "limit"),
        ("limit=-1", "limit"),
        ("after=abc", "after"),
        ("after=-5", "after"),
        ("since=yesterday", "since"),
        ("since=2026-03-01", "since"),
        ("until=2026-03-01T08:00:00", "until"),
        (
            "since=2026-03-02T00:00:00Z&until=2026-03-01T00:00:00Z",
            "until",
        ),
        ("route_id=a", "route_id"),
        ("route=a&route=b", "route"),
        ("include=payload", "include"),
    ];
    for (query, parameter) in cases {
        let reply = get(&app, &format!("/admin/dead-letters?{query}")).await;
        assert_problem(&reply, 400, &format!("`{parameter}`"));
    }
    let reply = get(&app, "/admin/dead-letters?limit=500").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
}

async fn requeue_one(store: Store) {
    let app = tilts_engine::admin::router(store.clone());
    let id = dead_letter(&store, "applications", Some("case-1"), "status:503", t0()).await;

    let reply = post(&app, &format!("/admin/dead-letters/{id}/requeue"), None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let m = &reply.json;
    assert_eq!(m["id"], id.to_string());
    assert_eq!(m["state"], "pending");
    assert_eq!(m["finishedAt"], Value::Null);
    assert!(m["nextAttemptAt"].is_string());
    // A fresh attempt budget; the history stays.
    assert_eq!(m["attemptsSinceRequeue"], 0);
    assert_eq!(m["attemptCount"], 2);
    assert_eq!(m["attempts"].as_array().unwrap().len(), 2);
    assert!(m.get("original").is_none());

    // Claimable again, and no longer a dead letter.
    let claimed = store
        .claim("worker-3", 10, LEASE, Utc::now() + secs(1))
        .await
        .unwrap();
    assert_eq!(claimed.iter().map(|c| c.id).collect::<Vec<_>>(), [id]);
    assert_eq!(claimed[0].attempt, 1);
    let page = get(&app, "/admin/dead-letters").await;
    assert!(ids(&page.json).is_empty());
    let reply = get(&app, &format!("/admin/messages/{id}")).await;
    assert_eq!(reply.json["lease"]["owner"], "worker-3");

    // Not a dead letter any more: 409.
    let reply = post(&app, &format!("/admin/dead-letters/{id}/requeue"), None).await;
    assert_problem(&reply, 409, "pending");
    store
        .record_attempt(
            id,
            claimed[0].lease_token,
            Attempt {
                started_at: Utc::now(),
                duration: Duration::from_millis(5),
                outcome: Outcome::Delivered,
                error_class: None,
                error_text: None,
                request: None,
            },
        )
        .await
        .unwrap();
    let reply = post(&app, &format!("/admin/dead-letters/{id}/requeue"), None).await;
    assert_problem(&reply, 409, "delivered");
    let reply = get(&app, &format!("/admin/messages/{id}")).await;
    assert_eq!(reply.json["state"], "delivered");
    assert_eq!(reply.json["attempts"][2]["outcome"], "delivered");
}

async fn requeue_by_filter(store: Store) {
    let app = tilts_engine::admin::router(store.clone());
    let a1 = dead_letter(&store, "a", None, "status:503", t0()).await;
    let a2 = dead_letter(&store, "a", None, "mapping", t0() + secs(600)).await;
    let a3 = dead_letter(&store, "a", None, "status:503", t0() + secs(1200)).await;
    let b1 = dead_letter(&store, "b", None, "status:503", t0() + secs(1800)).await;
    let b2 = dead_letter(&store, "b", Some("k"), "timeout", t0() + secs(2400)).await;

    // Route a, class status:503, dead-lettered before 08:30: a1 and a3.
    let reply = post(
        &app,
        "/admin/dead-letters/requeue",
        Some(json!({
            "route": "a",
            "error_class": "status:503",
            "since": null,
            "until": "2026-03-01T08:30:00Z",
        })),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.json, json!({"requeued": 2}));
    let page = get(&app, "/admin/dead-letters").await;
    assert_eq!(
        ids(&page.json),
        [a2, b1, b2].map(|i| i.to_string()).to_vec()
    );
    let mut claimed: Vec<MessageId> = store
        .claim("w", 10, LEASE, Utc::now() + secs(1))
        .await
        .unwrap()
        .iter()
        .map(|c| c.id)
        .collect();
    claimed.sort();
    let mut expected = vec![a1, a3];
    expected.sort();
    assert_eq!(claimed, expected);

    // By ordering key.
    let reply = post(
        &app,
        "/admin/dead-letters/requeue",
        Some(json!({"key": "k"})),
    )
    .await;
    assert_eq!(reply.json, json!({"requeued": 1}), "{}", reply.text);
    // Nothing matching is not an error.
    let reply = post(
        &app,
        "/admin/dead-letters/requeue",
        Some(json!({"route": "nope"})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json, json!({"requeued": 0}));
    // Everything, when said explicitly.
    let reply = post(
        &app,
        "/admin/dead-letters/requeue",
        Some(json!({"all": true})),
    )
    .await;
    assert_eq!(reply.json, json!({"requeued": 2}), "{}", reply.text);
    assert_eq!(store.counts().await.unwrap().dead, 0);
}

async fn empty_filter_is_refused(store: Store) {
    let app = tilts_engine::admin::router(store.clone());
    dead_letter(&store, "a", None, "status:503", t0()).await;

    for body in [
        json!({}),
        json!({"all": false}),
        json!({"route": null, "key": null}),
    ] {
        let reply = post(&app, "/admin/dead-letters/requeue", Some(body.clone())).await;
        assert_problem(&reply, 400, "all");
        assert_eq!(
            reply.json["type"], "urn:tilts:problem:empty-filter",
            "{body}"
        );
    }
    let cases = [
        (json!({"route": ""}), "route"),
        (json!({"route": 7}), "route"),
        (json!({"since": "last week"}), "since"),
        (json!({"error_class": "x", "until": "2026-03-01"}), "until"),
        (
            json!({"since": "2026-03-02T00:00:00Z", "until": "2026-03-01T00:00:00Z"}),
            "until",
        ),
        (json!({"all": "yes"}), "all"),
        (json!({"route_id": "a"}), "route_id"),
        (json!({"errorClass": "x"}), "errorClass"),
    ];
    for (body, field) in cases {
        let reply = post(&app, "/admin/dead-letters/requeue", Some(body.clone())).await;
        assert_problem(&reply, 400, &format!("`{field}`"));
        assert_eq!(
            reply.json["errors"][0]["pointer"],
            format!("/{field}"),
            "{body}"
        );
    }
    let reply = post(&app, "/admin/dead-letters/requeue", Some(json!(["a"]))).await;
    assert_problem(&reply, 400, "JSON object");
    // Not JSON at all, or not said to be JSON.
    let req = Request::post("/admin/dead-letters/requeue")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{route: a"))
        .unwrap();
    assert_problem(&send(&app, req).await, 400, "not valid JSON");
    let req = Request::post("/admin/dead-letters/requeue")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from(r#"{"all": true}"#))
        .unwrap();
    assert_problem(&send(&app, req).await, 415, "application/json");
    let reply = post(&app, "/admin/dead-letters/requeue", None).await;
    assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // Nothing was requeued by any of these.
    assert_eq!(store.counts().await.unwrap().dead, 1);
}

async fn discard_with_reason(store: Store) {
    let app = tilts_engine::admin::router(store.clone());
    let id = dead_letter(&store, "applications", Some("case-1"), "status:400", t0()).await;
    let later = dead_letter(&store, "applications", Some("case-2"), "status:400", t0()).await;
    let reason = "duplicate of an application already handled by phone";

    let reply = post(
        &app,
        &format!("/admin/dead-letters/{id}/discard"),
        Some(json!({"reason": reason})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.json["state"], "discarded");
    assert_eq!(reply.json["discardReason"], reason);
    assert!(reply.json["finishedAt"].is_string());
    assert_eq!(reply.json["attempts"].as_array().unwrap().len(), 2);
    let reply = get(&app, &format!("/admin/messages/{id}")).await;
    assert_eq!(reply.json["state"], "discarded");
    assert_eq!(reply.json["discardReason"], reason);
    let page = get(&app, "/admin/dead-letters").await;
    assert_eq!(ids(&page.json), [later.to_string()]);

    // Only dead letters: a discarded one again, or a pending one, is a conflict.
    let reply = post(
        &app,
        &format!("/admin/dead-letters/{id}/discard"),
        Some(json!({"reason": "again"})),
    )
    .await;
    assert_problem(&reply, 409, "discarded");
    let pending = store
        .enqueue(NewMessage::new("r", Payload::json(&json!({})), Utc::now()))
        .await
        .unwrap()
        .id;
    let reply = post(
        &app,
        &format!("/admin/dead-letters/{pending}/discard"),
        Some(json!({"reason": "not wanted"})),
    )
    .await;
    assert_problem(&reply, 409, "pending");
    let reply = get(&app, &format!("/admin/messages/{pending}")).await;
    assert_eq!(reply.json["state"], "pending");
    assert_eq!(reply.json["discardReason"], Value::Null);
    // Nor can a discarded message be requeued.
    let reply = post(&app, &format!("/admin/dead-letters/{id}/requeue"), None).await;
    assert_problem(&reply, 409, "discarded");

    // 500 characters (not bytes) is the limit.
    let long = "ā".repeat(500);
    let reply = post(
        &app,
        &format!("/admin/dead-letters/{later}/discard"),
        Some(json!({"reason": long})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.json["discardReason"], long);
}

async fn discard_refuses_without_reason(store: Store) {
    let app = tilts_engine::admin::router(store.clone());
    let id = dead_letter(&store, "applications", None, "status:400", t0()).await;
    let uri = format!("/admin/dead-letters/{id}/discard");

    let cases = [
        (json!({}), "required"),
        (json!({"reason": null}), "required"),
        (json!({"reason": ""}), "blank"),
        (json!({"reason": "   "}), "blank"),
        (json!({"reason": 42}), "string"),
        (json!({"reason": "x".repeat(501)}), "500"),
        (json!({"reason": "ok", "force": true}), "unknown"),
    ];
    for (body, why) in cases {
        let reply = post(&app, &uri, Some(body.clone())).await;
        assert_problem(&reply, 400, why);
        assert!(reply.json["errors"][0]["pointer"].is_string(), "{body}");
    }
    let reply = post(&app, &uri, None).await;
    assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // Still a dead letter.
    let reply = get(&app, &format!("/admin/messages/{id}")).await;
    assert_eq!(reply.json["state"], "dead");
}

async fn stats_count_by_state(store: Store) {
    let app = tilts_engine::admin::router(store.clone());
    let reply = get(&app, "/admin/stats").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(
        reply.json,
        json!({"pending": 0, "delivered": 0, "dead": 0, "discarded": 0})
    );

    let d1 = dead_letter(&store, "a", None, "status:400", t0()).await;
    dead_letter(&store, "a", None, "status:400", t0()).await;
    dead_letter(&store, "a", None, "status:400", t0()).await;
    let reply = post(
        &app,
        &format!("/admin/dead-letters/{d1}/discard"),
        Some(json!({"reason": "test"})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    store
        .enqueue(NewMessage::new("a", Payload::json(&json!({})), Utc::now()))
        .await
        .unwrap();
    let reply = get(&app, "/admin/stats").await;
    assert_eq!(
        reply.json,
        json!({"pending": 1, "delivered": 0, "dead": 2, "discarded": 1})
    );
}

async fn unknown_endpoints_and_methods(store: Store) {
    let app = tilts_engine::admin::router(store.clone());
    let reply = get(&app, "/admin/nothing-here").await;
    assert_problem(&reply, 404, "admin endpoint");
    let reply = get(&app, "/").await;
    assert_problem(&reply, 404, "admin endpoint");
    let reply = post(&app, "/admin/stats", Some(json!({}))).await;
    assert_problem(&reply, 405, "method");
    let id = dead_letter(&store, "a", None, "status:400", t0()).await;
    let reply = get(&app, &format!("/admin/dead-letters/{id}/requeue")).await;
    assert_problem(&reply, 405, "method");
    // The GET did not requeue it.
    let reply = get(&app, &format!("/admin/messages/{id}")).await;
    assert_eq!(reply.json["state"], "dead");
}

// ---------------------------------------------------------------------------------------------
// Fixtures (as in tests/store.rs).
