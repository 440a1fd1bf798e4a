//! End-to-end tests: the real `tilts` binary, started as a child process with the shipped route
//! file (or a temporary copy with one setting changed), against the simulators of the external
//! systems running in this test process. Everything goes over real sockets.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{
    Answer, Tilts, chunked_post, client, get, post_json, raw_http, shipped_routes, shipped_with,
    wait_until,
};
use serde_json::{Value, json};
use tilts_adapters::ident::PersonalCode;
use tilts_adapters::sim::{
    Simulators, address_register as ar, enterprise_register as er, population_register as pr,
};

/// The social-services system's timeout line in the shipped routes.yaml.
const SOCIAL_TIMEOUT: &str = "    timeout: 3s\n";

async fn sims() -> Simulators {
    Simulators::start().await.expect("start the simulators")
}

/// A valid application as a VPVKAC centre sends it.
fn application(n: u32, personal_code: &str) -> Value {
    json!({
        "applicationId": format!("VPVKAC-2026-{n:06}"),
        "centre": {"code": "RIGA-CENTRS", "municipality": "Rīga"},
        "service": {"code": "SOC-ASSIST-01", "title": "Trūcīgas personas statusa noteikšana"},
        "applicant": {
            "personalCode": personal_code,
            "firstName": "Anna",
            "lastName": "Kalniņa",
            "email": "anna@example.lv"
        },
        "submittedAt": "2026-11-28T09:15:00+02:00",
        "channel": "visit"
    })
}

/// A valid old-form personal code (`DDMMYY-CNNNK`) born on `birth`, the serial chosen from
/// `serial` on so that a check digit exists.
fn old_code(birth: &str, century: u32, serial: u32) -> String {
    for s in serial..serial + 50 {
        for k in 0..10 {
            let code = format!("{birth}-{century}{:03}{k}", s % 1000);
            if PersonalCode::parse(&code).is_ok() {
                return code;
            }
        }
    }
    panic!("no valid personal code for {birth}");
}

/// `dd.mm.yyyy` from `yyyy-mm-dd`.
fn lv_date(iso: &str) -> String {
    let parts: Vec<&str> = iso.split('-').collect();
    format!("{}.{}.{}", parts[2], parts[1], parts[0])
}

fn is_case_number(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 14
        && s.starts_with("SD-")
        && b[3..7].iter().all(u8::is_ascii_digit)
        && b[7] == b'-'
        && b[8..].iter().all(u8::is_ascii_digit)
}

fn violations(problem: &Value) -> Vec<(String, String)> {
    let errors = problem["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors[] in {problem}"));
    assert!(!errors.is_empty(), "{problem}");
    errors
        .iter()
        .map(|e| {
            let pointer = e["pointer"]
                .as_str()
                .unwrap_or_else(|| panic!("error without a pointer: {e}"));
            assert!(
                pointer.is_empty() || pointer.starts_with('/'),
                "not a JSON pointer: {pointer:?}"
            );
            let message = e["message"]
                .as_str()
                .unwrap_or_else(|| panic!("error without a message: {e}"));
            assert!(!message.is_empty(), "{e}");
            (pointer.to_string(), message.to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_requests_are_mapped_answered_and_forwarded() {
    let sims = sims().await;
    let tilts = Tilts::start(&shipped_routes(), &sims, "info").await;
    let c = client();

    // Company lookup: the register's answer mapped by company-lookup/response.json.hbs.
    let company = er::find(er::ACTIVE_SIA).unwrap();
    let a = post_json(
        &c,
        &tilts.url("/v1/company-lookup"),
        &json!({"regNo": er::ACTIVE_SIA, "purpose": "application on behalf of a company"}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert!(a.content_type().starts_with("application/json"), "{a:?}");
    let message_id = a
        .header("x-tilts-message-id")
        .expect("message id")
        .to_string();
    assert_eq!(
        a.json(),
        json!({
            "found": true,
            "regNo": er::ACTIVE_SIA,
            "name": company.name,
            "legalForm": "SIA",
            "active": true,
            "status": "active",
            "registered": lv_date(company.registered),
            "address": {
                "code": company.address_code,
                "text": ar::find(company.address_code).unwrap().text
            }
        })
    );
    assert_eq!(lv_date(company.registered), "22.05.2001");
    let asked = sims.enterprise_register.requests();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(asked[0].method, "GET");
    assert_eq!(asked[0].path, format!("/companies/{}", er::ACTIVE_SIA));
    assert_eq!(
        asked[0].header("x-tilts-message-id"),
        Some(message_id.as_str())
    );
    assert_eq!(asked[0].header("x-tilts-route"), Some("company-lookup"));

    // A liquidated company is found but not active.
    let a = post_json(
        &c,
        &tilts.url("/v1/company-lookup"),
        &json!({"regNo": er::LIQUIDATED}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let body = a.json();
    assert_eq!(body["found"], true);
    assert_eq!(body["active"], false);
    assert_eq!(body["status"], "liquidated");
    assert_eq!(
        body["registered"],
        lv_date(er::find(er::LIQUIDATED).unwrap().registered)
    );

    // A valid number the register does not know: the route's own 404 body.
    let a = post_json(
        &c,
        &tilts.url("/v1/company-lookup"),
        &json!({"regNo": er::UNREGISTERED}),
    )
    .await;
    assert_eq!(a.status, 404, "{}", a.text);
    let body = a.json();
    assert_eq!(body["found"], false);
    assert_eq!(body["regNo"], er::UNREGISTERED);

    // An application: mapped, forwarded to the social service, answered 201.
    let code = "010190-12349";
    let app = application(451, code);
    let a = post_json(&c, &tilts.url("/v1/applications"), &app).await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert!(a.content_type().starts_with("application/json"), "{a:?}");
    let message_id = a
        .header("x-tilts-message-id")
        .expect("message id")
        .to_string();
    let body = a.json();
    assert_eq!(body["applicationId"], "VPVKAC-2026-000451");
    assert_eq!(body["status"], "forwarded");
    assert_eq!(body["institution"]["owner"], er::MUNICIPALITY);
    assert_eq!(body["messageId"], message_id.as_str());
    let case_number = body["institution"]["caseNumber"]
        .as_str()
        .unwrap_or_else(|| panic!("no caseNumber in {body}"))
        .to_string();
    assert!(is_case_number(&case_number), "{case_number}");
    assert!(
        !a.text.contains(code) && !a.text.contains("01019012349"),
        "the answer must not echo the personal code: {}",
        a.text
    );

    let received = sims.social_services.requests();
    assert_eq!(received.len(), 1, "{received:?}");
    let r = &received[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/cases");
    assert!(
        r.header("content-type")
            .is_some_and(|ct| ct.starts_with("application/json")),
        "{r:?}"
    );
    assert_eq!(r.header("idempotency-key"), Some("VPVKAC-2026-000451"));
    assert_eq!(r.header("x-tilts-message-id"), Some(message_id.as_str()));
    assert_eq!(r.header("x-tilts-route"), Some("application-submit"));
    // Exactly the mapped case: e-mail and the service title are not forwarded.
    assert_eq!(
        r.json().expect("JSON body"),
        json!({
            "applicationId": "VPVKAC-2026-000451",
            "serviceCode": "SOC-ASSIST-01",
            "applicant": {"personalCode": code, "firstName": "Anna", "lastName": "Kalniņa"},
            "submittedAt": "2026-11-28T09:15:00+02:00",
            "channel": "visit",
            "source": {"system": "VPVKAC", "centre": "RIGA-CENTRS", "messageId": message_id}
        })
    );

    // Names with quotes, backslashes and non-ASCII letters are forwarded intact (JSON escaping).
    let mut app = application(452, "320645-11111");
    app["applicant"]["firstName"] = json!("Anna \"Annija\"");
    app["applicant"]["lastName"] = json!("Bērziņa\\Kalniņa </x>");
    let a = post_json(&c, &tilts.url("/v1/applications"), &app).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let received = sims.social_services.requests();
    assert_eq!(received.len(), 2);
    let forwarded = received[1].json().expect("JSON body");
    assert_eq!(
        forwarded["applicant"],
        json!({
            "personalCode": "320645-11111",
            "firstName": "Anna \"Annija\"",
            "lastName": "Bērziņa\\Kalniņa </x>"
        })
    );

    // The case number tilts answered is the case the institution registered.
    let case = get(
        &c,
        &format!("{}/cases/{case_number}", sims.social_services.url()),
    )
    .await;
    assert_eq!(case.status, 200, "{}", case.text);
    assert_eq!(case.json()["applicationId"], "VPVKAC-2026-000451");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_request_is_422_problem_and_nothing_is_forwarded() {
    let sims = sims().await;
    let tilts = Tilts::start(&shipped_routes(), &sims, "info").await;
    let c = client();

    // A personal code failing its check digit, and no last name.
    let bad_code = "010190-12340";
    let mut app = application(453, bad_code);
    app["applicant"].as_object_mut().unwrap().remove("lastName");
    let a = post_json(&c, &tilts.url("/v1/applications"), &app).await;
    let problem = a.problem(422, "invalid-request");
    assert_eq!(problem["route"], "application-submit");
    assert_eq!(
        problem["messageId"].as_str(),
        a.header("x-tilts-message-id"),
        "{problem}"
    );
    let errors = violations(&problem);
    assert!(
        errors
            .iter()
            .any(|(p, m)| p == "/applicant/personalCode" && m.contains("personal code")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|(p, m)| p == "/applicant" && m.contains("lastName")),
        "{errors:?}"
    );
    assert!(
        !a.text.contains(bad_code) && !a.text.contains("01019012340"),
        "a violation must not quote the value: {}",
        a.text
    );

    // Several violations at once, each with its own pointer.
    let mut app = application(454, "010190-12349");
    app["applicationId"] = json!("nope");
    app["channel"] = json!("pigeon");
    app["applicant"]["email"] = json!("not an e-mail");
    let a = post_json(&c, &tilts.url("/v1/applications"), &app).await;
    let problem = a.problem(422, "invalid-request");
    let pointers: Vec<String> = violations(&problem).into_iter().map(|(p, _)| p).collect();
    for p in ["/applicationId", "/channel", "/applicant/email"] {
        assert!(pointers.iter().any(|x| x == p), "{p} not in {pointers:?}");
    }

    // Company lookup: a number failing the checksum, and a field the schema does not allow.
    let a = post_json(
        &c,
        &tilts.url("/v1/company-lookup"),
        &json!({"regNo": er::BAD_CHECKSUM}),
    )
    .await;
    let problem = a.problem(422, "invalid-request");
    assert_eq!(problem["route"], "company-lookup");
    let errors = violations(&problem);
    assert!(
        errors
            .iter()
            .any(|(p, m)| p == "/regNo" && m.contains("Enterprise Register number")),
        "{errors:?}"
    );
    let a = post_json(
        &c,
        &tilts.url("/v1/company-lookup"),
        &json!({"regNo": er::ACTIVE_SIA, "colour": "blue"}),
    )
    .await;
    let errors = violations(&a.problem(422, "invalid-request"));
    assert!(
        errors
            .iter()
            .any(|(p, m)| p.is_empty() && m.contains("colour")),
        "{errors:?}"
    );

    // Nothing reached the systems.
    assert!(
        sims.social_services.requests().is_empty(),
        "{:?}",
        sims.social_services.requests()
    );
    assert!(
        sims.enterprise_register.requests().is_empty(),
        "{:?}",
        sims.enterprise_register.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_system_is_504_problem_after_the_system_timeout() {
    let sims = sims().await;
    let config = shipped_with(&[(SOCIAL_TIMEOUT, "    timeout: 300ms\n")]);
    let tilts = Tilts::start(&config.path, &sims, "info").await;
    let c = client();

    let delay = Duration::from_secs(3);
    sims.social_services.faults().delay(delay);
    let started = Instant::now();
    let a = post_json(
        &c,
        &tilts.url("/v1/applications"),
        &application(455, "150285-10005"),
    )
    .await;
    let elapsed = started.elapsed();
    let problem = a.problem(504, "upstream-timeout");
    assert_eq!(problem["route"], "application-submit");
    assert!(a.header("retry-after").is_some(), "{a:?}");
    assert!(
        elapsed >= Duration::from_millis(250) && elapsed < Duration::from_millis(2500),
        "answered after {elapsed:?}: the 300ms system timeout should have cut the {delay:?} wait"
    );
    assert_eq!(
        sims.social_services.requests().len(),
        1,
        "called once, no retry"
    );

    // Once the system is fast again, the route works.
    sims.social_services.faults().clear();
    let a = post_json(
        &c,
        &tilts.url("/v1/applications"),
        &application(456, "150285-10005"),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_route_is_504_problem_after_the_route_timeout() {
    let sims = sims().await;
    let config = shipped_with(&[("route_timeout: 30s", "route_timeout: 300ms")]);
    let tilts = Tilts::start(&config.path, &sims, "info").await;
    let c = client();

    sims.social_services.faults().delay(Duration::from_secs(2));
    let started = Instant::now();
    let a = post_json(
        &c,
        &tilts.url("/v1/applications"),
        &application(457, "150285-10005"),
    )
    .await;
    let elapsed = started.elapsed();
    let problem = a.problem(504, "route-timeout");
    assert_eq!(problem["route"], "application-submit");
    assert_eq!(a.header("retry-after"), Some("5"));
    assert!(elapsed < Duration::from_millis(1800), "{elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_5xx_is_502_problem_with_retry_after() {
    let sims = sims().await;
    let tilts = Tilts::start(&shipped_routes(), &sims, "info").await;
    let c = client();

    sims.social_services.faults().fail_next(1, 503);
    let a = post_json(
        &c,
        &tilts.url("/v1/applications"),
        &application(458, "161175-19997"),
    )
    .await;
    let problem = a.problem(502, "upstream-error");
    assert_eq!(problem["route"], "application-submit");
    let retry_after: u64 = a
        .header("retry-after")
        .unwrap_or_else(|| panic!("no Retry-After: {a:?}"))
        .parse()
        .expect("Retry-After in seconds");
    assert!(retry_after >= 1, "{retry_after}");
    // The peer's HTML error page is not passed on.
    assert!(!a.text.contains("nginx"), "{}", a.text);
    assert_eq!(
        sims.social_services.requests().len(),
        1,
        "called once, no retry"
    );

    // The fault was one-shot: the next application goes through.
    let a = post_json(
        &c,
        &tilts.url("/v1/applications"),
        &application(459, "161175-19997"),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.text);

    // Same for the Enterprise Register behind company-lookup.
    sims.enterprise_register.faults().fail_next(1, 500);
    let a = post_json(
        &c,
        &tilts.url("/v1/company-lookup"),
        &json!({"regNo": er::ACTIVE_AS}),
    )
    .await;
    a.problem(502, "upstream-error");
    assert!(a.header("retry-after").is_some(), "{a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_body_is_413_problem_with_and_without_content_length() {
    let sims = sims().await;
    let config = shipped_with(&[("body_limit: 4MB", "body_limit: 1KB")]);
    let tilts = Tilts::start(&config.path, &sims, "info").await;
    let c = client();

    // Within the limit: accepted.
    let small = application(460, "150285-10005");
    assert!(serde_json::to_vec(&small).unwrap().len() < 1024);
    let a = post_json(&c, &tilts.url("/v1/applications"), &small).await;
    assert_eq!(a.status, 201, "{}", a.text);

    // 2 KB with a Content-Length.
    let mut big = application(461, "150285-10005");
    big["notes"] = json!("");
    let base = serde_json::to_vec(&big).unwrap().len();
    big["notes"] = json!("x".repeat(2048 - base));
    let big = serde_json::to_vec(&big).unwrap();
    assert_eq!(big.len(), 2048);
    let a = Answer::from(
        c.post(tilts.url("/v1/applications"))
            .header("content-type", "application/json")
            .body(big.clone())
            .send()
            .await
            .expect("POST"),
    )
    .await;
    let problem = a.problem(413, "body-too-large");
    assert_eq!(problem["route"], "application-submit");

    // The same 2 KB chunked, without a Content-Length.
    let (first, second) = big.split_at(700);
    let answer = raw_http(
        tilts.addr,
        &chunked_post(tilts.addr, "/v1/applications", &[first, second]),
    )
    .await;
    let text = String::from_utf8_lossy(&answer.body);
    assert_eq!(answer.status, 413, "{answer:?} {text}");
    assert_eq!(
        answer.header("content-type"),
        Some("application/problem+json")
    );
    let problem: Value = serde_json::from_slice(&answer.body).expect("problem JSON");
    assert_eq!(problem["type"], "urn:tilts:problem:body-too-large");
    assert_eq!(problem["status"], 413);

    // A small chunked body is read and forwarded normally.
    let small = serde_json::to_vec(&application(462, "150285-10005")).unwrap();
    let (first, second) = small.split_at(100);
    let answer = raw_http(
        tilts.addr,
        &chunked_post(tilts.addr, "/v1/applications", &[first, second]),
    )
    .await;
    assert_eq!(
        answer.status,
        201,
        "{answer:?} {}",
        String::from_utf8_lossy(&answer.body)
    );

    // Only the two small ones reached the institution.
    let ids: Vec<Value> = sims
        .social_services
        .requests()
        .iter()
        .map(|r| r.json().unwrap()["applicationId"].clone())
        .collect();
    assert_eq!(
        ids,
        [json!("VPVKAC-2026-000460"), json!("VPVKAC-2026-000462")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_route_malformed_json_and_health_endpoints() {
    let sims = sims().await;
    let tilts = Tilts::start(&shipped_routes(), &sims, "info").await;
    let c = client();

    let a = get(&c, &tilts.url("/v1/nothing-here")).await;
    a.problem(404, "not-found");
    let a = post_json(&c, &tilts.url("/v2/applications"), &json!({})).await;
    a.problem(404, "not-found");

    // A route's path with another method.
    let a = get(&c, &tilts.url("/v1/applications")).await;
    a.problem(405, "method-not-allowed");

    let a = Answer::from(
        c.post(tilts.url("/v1/applications"))
            .header("content-type", "application/json")
            .body(r#"{"applicationId": "VPVKAC-2026-000463", "applicant": {"#)
            .send()
            .await
            .expect("POST"),
    )
    .await;
    let problem = a.problem(400, "malformed-json");
    assert_eq!(problem["route"], "application-submit");

    let a = Answer::from(
        c.post(tilts.url("/v1/applications"))
            .header("content-type", "text/plain")
            .body("hello")
            .send()
            .await
            .expect("POST"),
    )
    .await;
    a.problem(415, "unsupported-media-type");

    assert!(sims.social_services.requests().is_empty());

    let a = get(&c, &tilts.url("/healthz")).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.json()["status"], "ok");
    let a = get(&c, &tilts.url("/readyz")).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let routes = tilts_engine::check::load(&shipped_routes())
        .expect("the shipped routes check")
        .routes
        .len();
    // The store answers; the broker (unreachable in these tests) is listed, not required:
    // what goes to it is stored and retried.
    assert_eq!(
        a.json(),
        json!({
            "status": "ready",
            "routes": routes,
            "store": {"backend": "sqlite", "status": "ok"},
            "brokers": {"broker": "not connected yet"},
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_loses_no_request_in_flight() {
    let sims = sims().await;
    // The system is slow (3 s) but within its timeout, so every request is in flight at SIGTERM.
    let config = shipped_with(&[(SOCIAL_TIMEOUT, "    timeout: 20s\n")]);
    let mut tilts = Tilts::start(&config.path, &sims, "info").await;
    let c = client();
    sims.social_services.faults().delay(Duration::from_secs(3));

    const N: u32 = 20;
    let answered = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..N {
        let c = c.clone();
        let url = tilts.url("/v1/applications");
        let answered = answered.clone();
        tasks.push(tokio::spawn(async move {
            let a = post_json(&c, &url, &application(500 + i, "320645-11111")).await;
            answered.fetch_add(1, Ordering::SeqCst);
            a
        }));
    }
    wait_until(
        "the institution has received every request",
        Duration::from_secs(20),
        || sims.social_services.requests().len() == N as usize,
    )
    .await;
    assert_eq!(
        answered.load(Ordering::SeqCst),
        0,
        "all requests must still be in flight when SIGTERM is sent"
    );

    tilts.sigterm();

    // tilts stops accepting connections at once, while the requests are still in flight.
    let deadline = Instant::now() + Duration::from_secs(2);
    while tokio::net::TcpStream::connect(tilts.addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "tilts still accepts connections 2s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        answered.load(Ordering::SeqCst) < N as usize,
        "the listener should close before the in-flight requests finish"
    );

    // Every request in flight gets its answer.
    let mut cases = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let a = t.await.expect("request task");
        assert_eq!(a.status, 201, "request {i}: {}", a.text);
        let body = a.json();
        assert_eq!(body["applicationId"], format!("VPVKAC-2026-{:06}", 500 + i));
        cases.push(
            body["institution"]["caseNumber"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    cases.sort();
    cases.dedup();
    assert_eq!(cases.len(), N as usize, "one case per application");

    // Then the process exits by itself, successfully.
    let status = tilts.wait_exit(Duration::from_secs(15)).await;
    assert!(
        status.success(),
        "exit status {status}; stderr:\n{}",
        tilts.logs()
    );
    assert!(
        tokio::net::TcpStream::connect(tilts.addr).await.is_err(),
        "connection accepted after exit"
    );
    let log = tilts.logs();
    assert!(log.contains("shutdown requested"), "{log}");
    assert!(
        !log.contains("did not finish"),
        "the grace period must not have cut requests: {log}"
    );
    assert_eq!(sims.social_services.requests().len(), N as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_personal_code_in_the_log_at_any_level() {
    let sims = sims().await;
    let config = shipped_with(&[(SOCIAL_TIMEOUT, "    timeout: 300ms\n")]);
    let mut tilts = Tilts::start(&config.path, &sims, "trace").await;
    let c = client();
    let apps = tilts.url("/v1/applications");

    let valid = old_code("010190", 1, 234);
    let invalid = "010190-12340".to_string();
    let new_form = "320645-11111".to_string();
    let in_unknown_field = old_code("280270", 1, 111);
    let in_unknown_field_lookup = old_code("120388", 1, 765);
    let failing = old_code("161175", 1, 999);
    let timing_out = old_code("150285", 1, 0);
    let in_malformed = old_code("311299", 2, 123);
    let in_path = old_code("050505", 2, 50);
    let in_query = "321234-56789".to_string();
    let clerk = old_code("030303", 2, 77);
    let (pr_active, pr_missing, pr_fault, pr_soap) = (
        pr::ACTIVE.to_string(),
        pr::NOT_FOUND.to_string(),
        pr::SERVER_FAULT.to_string(),
        pr::DECEASED.to_string(),
    );
    let codes = [
        &clerk,
        &pr_active,
        &pr_missing,
        &pr_fault,
        &pr_soap,
        &valid,
        &invalid,
        &new_form,
        &in_unknown_field,
        &in_unknown_field_lookup,
        &failing,
        &timing_out,
        &in_malformed,
        &in_path,
        &in_query,
    ];
    let digits = |code: &str| code.replace('-', "");

    // A valid application (old and new form).
    let a = post_json(&c, &apps, &application(601, &valid)).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let mut app = application(602, &new_form);
    app["applicant"]["phone"] = json!("+371 29123456");
    let a = post_json(&c, &apps, &app).await;
    assert_eq!(a.status, 201, "{}", a.text);

    // An invalid personal code.
    let a = post_json(&c, &apps, &application(603, &invalid)).await;
    a.problem(422, "invalid-request");

    // Personal codes in fields no schema knows: allowed (and not forwarded) by applications,
    // refused by company-lookup.
    let mut app = application(604, &valid);
    app["guardian"] = json!({"personalCode": digits(&in_unknown_field)});
    let a = post_json(&c, &apps, &app).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let a = post_json(
        &c,
        &tilts.url("/v1/company-lookup"),
        &json!({"regNo": er::ACTIVE_SIA, "personalCode": in_unknown_field_lookup}),
    )
    .await;
    a.problem(422, "invalid-request");

    // A personal code in malformed JSON.
    let a = Answer::from(
        c.post(&apps)
            .header("content-type", "application/json")
            .body(format!(
                r#"{{"applicant": {{"personalCode": "{in_malformed}", "x": "{}" "#,
                digits(&in_malformed)
            ))
            .send()
            .await
            .unwrap(),
    )
    .await;
    a.problem(400, "malformed-json");

    // A personal code in a path (forwarded to the address register, which refuses it) and in
    // an unknown route's path and query.
    let a = get(
        &c,
        &tilts.url(&format!("/v1/addresses/{}", digits(&in_path))),
    )
    .await;
    assert_eq!(a.status, 422, "{}", a.text);
    let a = get(
        &c,
        &tilts.url(&format!(
            "/v1/persons/{in_query}?personalCode={}",
            digits(&in_query)
        )),
    )
    .await;
    a.problem(404, "not-found");

    // A failing system.
    sims.social_services.faults().fail_next(1, 500);
    let a = post_json(&c, &apps, &application(605, &failing)).await;
    a.problem(502, "upstream-error");

    // A system that does not answer in time.
    sims.social_services.faults().delay(Duration::from_secs(1));
    let a = post_json(&c, &apps, &application(606, &timing_out)).await;
    a.problem(504, "upstream-timeout");
    sims.social_services.faults().clear();

    // Person lookups through VISS on behalf of a clerk (whose own code travels as the
    // Initiator), and a SOAP caller.
    let lookup = tilts.url("/v1/person-lookup");
    let user = format!("AU:90000038741-PK:{clerk}");
    for (code, status) in [(&pr_active, 200), (&pr_missing, 404), (&pr_fault, 502)] {
        let a = Answer::from(
            c.post(&lookup)
                .header("x-user-id", &user)
                .json(&json!({"personalCode": code}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(a.status, status, "{}", a.text);
    }
    let a = Answer::from(
        c.post(tilts.url("/soap/person"))
            .header("content-type", "text/xml; charset=utf-8")
            .header("soapaction", "\"urn:x-tilts:person:v1/GetPerson\"")
            .body(format!(
                r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><p:GetPerson xmlns:p="urn:x-tilts:person:v1"><p:PersonalCode>{pr_soap}</p:PersonalCode></p:GetPerson></s:Body></s:Envelope>"#
            ))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let submitted = sims
        .population_register
        .requests()
        .iter()
        .any(|r| String::from_utf8_lossy(&r.body).contains(&user));
    assert!(
        submitted,
        "the register received the clerk's id as the Initiator"
    );

    // The institution did receive the real codes: they were in the data, just not in the log.
    let forwarded: Vec<Value> = sims
        .social_services
        .requests()
        .iter()
        .filter_map(|r| r.json())
        .collect();
    assert!(
        forwarded
            .iter()
            .any(|b| b["applicant"]["personalCode"] == json!(valid)),
        "{forwarded:?}"
    );

    let log = tilts.stop().await;

    // The log is real: it has the requests, their routes and statuses, and debug lines.
    assert!(log.lines().count() > 10, "log too short:\n{log}");
    for needle in [
        "route=application-submit",
        "route=company-lookup",
        "route=address-lookup",
        "route=person-lookup",
        "route=person-lookup-soap",
        "status=201",
        "status=422",
        "status=400",
        "status=502",
        "status=504",
        "DEBUG",
        "TRACE",
    ] {
        assert!(log.contains(needle), "log lacks {needle:?}:\n{log}");
    }

    let mut leaks = Vec::new();
    for code in codes {
        for form in [code.clone(), digits(code)] {
            for line in log.lines().filter(|l| l.contains(&form)) {
                leaks.push(format!("{form}: {line}"));
            }
        }
    }
    assert!(
        leaks.is_empty(),
        "personal codes in the log:\n{}",
        leaks.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_lookup_is_mapped_and_path_parameters_stay_in_their_segment() {
    let sims = sims().await;
    let tilts = Tilts::start(&shipped_routes(), &sims, "info").await;
    let c = client();

    let a = get(
        &c,
        &tilts.url(&format!("/v1/addresses/{}", ar::RIGA_GERTRUDES_34)),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let address = ar::find(ar::RIGA_GERTRUDES_34).unwrap();
    let body = a.json();
    assert_eq!(body["found"], true);
    assert_eq!(body["code"], ar::RIGA_GERTRUDES_34);
    assert_eq!(body["text"], address.text);
    assert_eq!(
        sims.address_register.requests()[0].path,
        format!("/addresses/{}", ar::RIGA_GERTRUDES_34)
    );

    // An encoded `../` in the parameter must not reach another path of the system (here the
    // simulator's control endpoint, which would answer 200 and not be recorded).
    sims.address_register.clear_requests();
    let a = get(&c, &tilts.url("/v1/addresses/..%2F..%2F_sim%2Fhealth")).await;
    assert_eq!(a.status, 422, "{}", a.text);
    let asked = sims.address_register.requests();
    assert_eq!(asked.len(), 1, "{asked:?}");
    let rest = asked[0]
        .path
        .strip_prefix("/addresses/")
        .unwrap_or_else(|| panic!("{}", asked[0].path));
    assert!(!rest.contains('/'), "{}", asked[0].path);
}

/// `server.header_timeout` closes the connection of a client that sends its request head too
/// slowly (slow-loris), and `server.http_threads` sets how many threads serve connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_http_threads_are_as_configured() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sims = sims().await;
    let config = shipped_with(&[(
        "route_timeout: 30s",
        "route_timeout: 30s\n  header_timeout: 1s\n  http_threads: 3",
    )]);
    let tilts = Tilts::start(&config.path, &sims, "info").await;

    // A head that never ends: the default (30s) would keep the connection far longer.
    let mut slow = tokio::net::TcpStream::connect(tilts.addr).await.unwrap();
    slow.write_all(b"POST /v1/applications HTTP/1.1\r\nHost: tilts\r\nX-Slow: 1")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(10), slow.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            // hyper may answer before closing; read on until the end.
            Ok(Ok(_)) => continue,
            Err(_) => break false,
        }
    };
    assert!(closed, "the slow connection was still open after 10 s");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900),
        "closed after {elapsed:?}, before the timeout"
    );

    // Clients that send their requests normally are served as before.
    let a = get(&client(), &tilts.url("/healthz")).await;
    assert_eq!(a.status, 200);

    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", tilts.pid()))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        .filter(|c| c.starts_with("tilts-http-"))
        .collect();
    assert_eq!(threads.len(), 3, "HTTP threads: {threads:?}");
}

/// Bodies above 256 KB are read as data on the blocking pool rather than on the connection's
/// HTTP thread; they must come out the same: a JSON body is validated (here: a field too
/// long), and a SOAP envelope's Body runs through its route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_are_read_as_data_like_small_ones() {
    let sims = sims().await;
    let tilts = Tilts::start(&shipped_routes(), &sims, "info").await;
    let c = client();

    let mut big = application(470, "150285-10005");
    big["notes"] = json!("n".repeat(400 * 1024));
    let a = post_json(&c, &tilts.url("/v1/applications"), &big).await;
    let problem = a.problem(422, "invalid-request");
    assert_eq!(
        violations(&problem)
            .iter()
            .map(|(p, _)| p.as_str())
            .collect::<Vec<_>>(),
        ["/notes"],
        "{problem}"
    );

    let padding = "p".repeat(400 * 1024);
    let a = Answer::from(
        c.post(tilts.url("/soap/person"))
            .header("content-type", "text/xml; charset=utf-8")
            .body(format!(
                r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><p:GetPerson xmlns:p="urn:x-tilts:person:v1"><p:PersonalCode>{}</p:PersonalCode><p:Note>{padding}</p:Note></p:GetPerson></s:Body></s:Envelope>"#,
                pr::ACTIVE
            ))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 200, "{}", &a.text[..a.text.len().min(500)]);
    assert!(a.text.contains("GetPersonResponse"), "{}", a.text);
    let asked = sims
        .population_register
        .requests()
        .iter()
        .any(|r| String::from_utf8_lossy(&r.body).contains(pr::ACTIVE));
    assert!(
        asked,
        "the register was asked for the person in the large envelope"
    );
}
