//! The shipped flows end to end, with the real binary, the real RabbitMQ (`TILTS_TEST_AMQP_URL`;
//! skipped when unset, failing when set and unreachable) and every simulator: a centre's case
//! goes through tilts to the registries, Riga's client history and an institution over
//! RabbitMQ, whose status update comes back to the VPVKAC IS and into Riga's client history;
//! and PIKTAPS holds a descriptor of every shipped route, updated when a route changes.

mod common;

use std::time::Duration;

use common::{Launch, Tilts, client, shipped_routes, shipped_with, wait_until};
use serde_json::{Value, json};
use tilts_adapters::sim::amqp_institution::{AmqpInstitution, INSTITUTION};
use tilts_adapters::sim::{Simulators, piktaps, population_register as pr};

/// The tests here share the broker's queues of the shipped routes: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn amqp_url() -> Option<String> {
    let url = std::env::var("TILTS_TEST_AMQP_URL").ok();
    if url.is_none() {
        eprintln!("skipped: TILTS_TEST_AMQP_URL is not set");
    }
    url
}

fn launch(amqp: &str) -> Launch {
    Launch {
        env: vec![("AMQP_URL".into(), amqp.into())],
        ..Launch::default()
    }
}

fn case(n: u32, code: &str) -> Value {
    json!({
        "applicationId": format!("VPVKAC-2026-{n:06}"),
        "centre": {"code": "RIGA-CENTRS", "municipality": "Rīga"},
        "service": {"code": "SOC-ASSIST-01", "title": "Trūcīgas personas statusa noteikšana"},
        "applicant": {"personalCode": code, "firstName": "Jānis", "lastName": "Bērziņš"},
        "submittedAt": "2026-11-28T09:15:00+02:00",
        "channel": "visit"
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_case_reaches_every_system_and_its_status_comes_back() {
    let Some(url) = amqp_url() else { return };
    let _serial = SERIAL.lock().await;
    let sims = Simulators::start().await.unwrap();
    let mut tilts = Tilts::try_launch(&shipped_routes(), &sims, "info", &launch(&url))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // The institution, with the same topology the shipped routes declare.
    let plan = tilts_engine::check::load_with_env(&shipped_routes(), &|k| {
        (k == "AMQP_URL").then(|| url.clone())
    })
    .unwrap();
    let spec = plan.systems["broker"].amqp().unwrap().spec.clone();
    let vsaa = AmqpInstitution::start(spec, "vsaa.applications", "tilts.status", "status.vsaa")
        .await
        .unwrap_or_else(|e| {
            panic!("TILTS_TEST_AMQP_URL is set but the broker is unreachable: {e}")
        });

    let id = format!("VPVKAC-2026-{:06}", 700_000 + std::process::id() % 100_000);
    let mut body = case(0, pr::ACTIVE);
    body["applicationId"] = json!(id);
    let resp = client()
        .post(tilts.url("/v1/cases"))
        .header("x-user-id", "AU:90000038741-PK:161175-19997")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["status"], "published", "{answer}");

    // The Population Register was asked through VISS for the applicant.
    let pr_reqs = sims.population_register.requests();
    assert!(
        pr_reqs
            .iter()
            .any(|r| String::from_utf8_lossy(&r.body).contains("SubmitSync")
                && String::from_utf8_lossy(&r.body).contains(pr::ACTIVE)),
        "no SubmitSync for the applicant"
    );
    // Riga's client history has the application.
    let interactions = sims.riga_state.all_interactions();
    assert!(
        interactions.iter().any(|i| format!("{i:?}").contains(&id)),
        "no interaction for {id} in Riga: {interactions:?}"
    );
    // The institution received the enriched application over RabbitMQ.
    wait_until(
        "the institution's application",
        Duration::from_secs(20),
        || {
            vsaa.received()
                .iter()
                .any(|a| a["applicationId"] == id.as_str())
        },
    )
    .await;
    let got = vsaa
        .received()
        .into_iter()
        .find(|a| a["applicationId"] == id.as_str())
        .unwrap();
    let person = pr::find(pr::ACTIVE).unwrap();
    assert_eq!(got["applicant"]["birthDate"], person.birth_date);
    assert_eq!(
        got["applicant"]["declaredAddress"]["code"],
        person.address_code
    );
    // Its status update came back through tilts to the VPVKAC IS.
    wait_until(
        "the status in the VPVKAC IS",
        Duration::from_secs(20),
        || !sims.vpvkac_state.history(&id).is_empty(),
    )
    .await;
    let change = sims.vpvkac_state.history(&id).pop().unwrap();
    assert_eq!(change.status, "received");
    assert_eq!(change.institution, INSTITUTION);
    assert!(change.institution_case_number.is_some());
    // And into Riga's client history, for the client whose application carried the case.
    let of_case = |kind: &str| {
        sims.riga_state
            .all_interactions()
            .into_iter()
            .find(|i| i.case_id.as_deref() == Some(id.as_str()) && i.kind == kind)
    };
    wait_until(
        "the status in Riga's client history",
        Duration::from_secs(20),
        || of_case("status").is_some(),
    )
    .await;
    let (application, status) = (of_case("application").unwrap(), of_case("status").unwrap());
    assert_eq!(status.client_id, application.client_id);
    assert_eq!(status.channel, "e-service");
    assert!(
        status.summary.contains("received") && status.summary.contains(INSTITUTION),
        "{status:?}"
    );

    // An applicant the register does not know: 422, and nothing goes out.
    let before = vsaa.received().len();
    let mut unknown = case(1, pr::NOT_FOUND);
    unknown["applicationId"] = json!(format!("{}9", &id[..id.len() - 1]));
    let resp = client()
        .post(tilts.url("/v1/cases"))
        .json(&unknown)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(vsaa.received().len(), before);

    let log = tilts.stop().await;
    assert!(!log.contains(pr::ACTIVE), "a personal code in the log");
    vsaa.stop().await;
    sims.shutdown().await;
}

fn revisions(sims: &Simulators) -> Vec<(String, u32)> {
    let mut v: Vec<(String, u32)> = sims
        .piktaps_state
        .descriptors(piktaps::SYSTEM_CODE)
        .iter()
        .map(|d| (d.route_id.clone(), d.revision))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn piktaps_holds_a_descriptor_per_route_and_follows_changes() {
    let _serial = SERIAL.lock().await;
    let sims = Simulators::start().await.unwrap();
    let shipped = tilts_engine::check::load(&shipped_routes()).unwrap();
    let ids: Vec<String> = shipped.routes.iter().map(|r| r.id.clone()).collect();

    let mut tilts = Tilts::start(&shipped_routes(), &sims, "info").await;
    wait_until("every descriptor", Duration::from_secs(20), || {
        revisions(&sims).len() == ids.len()
    })
    .await;
    tilts.stop().await;
    let first = revisions(&sims);
    assert!(first.iter().all(|(_, rev)| *rev == 1), "{first:?}");
    let mut described: Vec<String> = first.iter().map(|(id, _)| id.clone()).collect();
    described.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(described, want);
    let stored = sims
        .piktaps_state
        .descriptors(piktaps::SYSTEM_CODE)
        .into_iter()
        .find(|d| d.route_id == "person-lookup-soap")
        .unwrap();
    assert_eq!(stored.descriptor["interface"]["protocol"], "soap");
    assert_eq!(stored.descriptor["interface"]["path"], "/soap/person");
    assert_eq!(stored.descriptor["owner"], "90000038741");

    // Restart unchanged: nothing changes. Then change one route's template and drop a route.
    let mut again = Tilts::start(&shipped_routes(), &sims, "info").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    again.stop().await;
    assert_eq!(revisions(&sims), first);

    let changed = shipped_with(&[(
        "      - respond: { status: 200, body: company-lookup/response.json.hbs }\n",
        "      - respond: { status: 200, body: company-lookup/response.json.hbs, headers: { Cache-Control: no-store } }\n",
    )]);
    let text = std::fs::read_to_string(&changed.path).unwrap();
    let start = text.find("  - id: service-catalogue-refresh").unwrap();
    std::fs::write(&changed.path, &text[..start]).unwrap();
    let mut third = Tilts::start(&changed.path, &sims, "info").await;
    wait_until("the change in PIKTAPS", Duration::from_secs(20), || {
        let r = revisions(&sims);
        r.iter()
            .any(|(id, rev)| id == "company-lookup" && *rev == 2)
            && !r.iter().any(|(id, _)| id == "service-catalogue-refresh")
    })
    .await;
    third.stop().await;
    let after = revisions(&sims);
    for (id, rev) in &after {
        let want = if id == "company-lookup" { 2 } else { 1 };
        assert_eq!(*rev, want, "{id}: {after:?}");
    }
    assert_eq!(after.len(), ids.len() - 1);
    sims.shutdown().await;
}
