//! `tilts demo`: the shipped routes against in-process simulators of the systems they talk to,
//! a realistic batch of requests (valid, invalid, and some against a failing or slow system),
//! and a table of what happened. Every case states what it expects, so the demo fails loudly
//! when tilts does not behave as shown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use tilts_adapters::ident;
use tilts_adapters::sim::{
    self, Simulators, address_register as ar, enterprise_register as er, population_register as pr,
};

use crate::check;

/// The environment variables routes.yaml reads for the systems' URLs, the simulator each one
/// points at, and the path after the simulator's address.
pub const URL_VARS: [(&str, &str, &str); 8] = [
    ("ENTERPRISE_REGISTER_URL", "enterprise-register", ""),
    ("ADDRESS_REGISTER_URL", "address-register", ""),
    ("SOCIAL_SERVICES_URL", "social-services", ""),
    ("POPULATION_REGISTER_URL", "population-register", ""),
    ("VPVKAC_IS_URL", "vpvkac-is", "/api/v1"),
    ("PIKTAPS_URL", "piktaps", "/api/v1"),
    ("RIGA_CLIENTS_URL", "riga-clients", "/api/v1"),
    ("RIGA_TOKEN_URL", "riga-clients", "/oauth/token"),
];

/// The variables that point the shipped routes at `sims`.
pub fn sim_env(sims: &Simulators) -> Vec<(String, String)> {
    let urls: HashMap<&str, String> = sims.all().iter().map(|s| (s.name(), s.url())).collect();
    URL_VARS
        .iter()
        .map(|(var, sys, path)| (var.to_string(), format!("{}{path}", urls[sys])))
        .collect()
}

/// The RabbitMQ the shipped routes use when `AMQP_URL` is not set.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The sign-in identity of the (fictional) clerk on whose behalf the demo asks: an employee of
/// the municipality, `AU:<reg no>-PK:<personal code>`, as the centres' system sends it.
pub const CLERK: &str = "AU:90000038741-PK:161175-19997";

/// What to do to a simulator before a case.
#[derive(Clone, Copy)]
enum Fault {
    None,
    Fail(&'static str, u16),
    Slow(&'static str, Duration),
}

struct Case {
    what: &'static str,
    method: &'static str,
    path: String,
    body: Option<Value>,
    /// A SOAP envelope sent instead of a JSON body.
    soap: Option<String>,
    fault: Fault,
    expect: u16,
    /// Queued cases: the state the message must reach ("delivered" or "dead").
    delivered: Option<&'static str>,
}

/// Waits (at most 20 s) for a queued message to be delivered or dead-lettered.
async fn follow(store: &crate::store::Store, id: &str) -> (String, u32, String) {
    let Ok(uuid) = id.parse::<uuid::Uuid>() else {
        return ("unknown".into(), 0, String::new());
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(v)) = store.get(crate::store::MessageId(uuid)).await {
            let state = v.meta.state.to_string();
            if state != "pending" || Instant::now() > deadline {
                return (
                    state,
                    v.meta.attempts,
                    v.meta.last_error_class.unwrap_or_default(),
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asks `found` every 100 ms until it has an answer, for at most `within`.
async fn poll<T>(within: Duration, mut found: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        let answer = found();
        if answer.is_some() || Instant::now() > deadline {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the demo.
pub async fn run(config: &Path, keep_running: bool) -> anyhow::Result<()> {
    let sims = Simulators::start()
        .await
        .context("starting the simulators")?;
    let overrides: HashMap<String, String> = sim_env(&sims).into_iter().collect();
    let lookup = move |k: &str| overrides.get(k).cloned().or_else(|| std::env::var(k).ok());
    let plan = match check::load_with_env(config, &lookup) {
        Ok(p) => p,
        Err(d) => bail!("{} does not check:\n{d}", config.display()),
    };
    // The institution that takes applications from RabbitMQ, when a broker is there.
    let institution = start_institution(&plan).await;
    let routes = plan.routes.len();
    let listen = if keep_running {
        plan.settings.listen.clone()
    } else {
        "127.0.0.1:0".to_string()
    };
    // The embedded default store (SQLite), in a fresh folder so every demo starts clean.
    let data = tempfile::tempdir().context("creating the demo's data folder")?;
    let database = format!("sqlite://{}/tilts.db", data.path().display());
    let running = crate::service::start(
        plan,
        crate::service::StartOptions {
            listen: Some(listen),
            admin_listen: Some("127.0.0.1:0".into()),
            database: Some(database),
            workers: Some(crate::worker::WorkerOptions {
                poll_interval: Duration::from_millis(100),
                ..Default::default()
            }),
            no_workers: false,
        },
    )
    .await?;
    let addr: SocketAddr = running.addr;
    let store = running.store.clone();
    let base = format!("http://{addr}");

    println!(
        "tilts demo: the shipped routes ({}) against simulated systems\n",
        config.display()
    );
    for s in sims.all() {
        println!("  simulator  {:<20} {}", s.name(), s.url());
    }
    match &institution {
        Ok(_) => println!(
            "  simulator  {:<20} consumes vsaa.applications on RabbitMQ",
            "vsaa (institution)"
        ),
        Err(why) => {
            println!("  (no RabbitMQ: {why}; cases are stored and published when a broker is up)")
        }
    }
    println!("  tilts      {:<20} {base}  ({routes} routes)\n", "");

    let cases = cases();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(40))
        .build()?;
    println!(
        "  {:>2}  {:<6} {:<28} {:<44} {:>6} {:>7}  result",
        "#", "method", "path", "case", "status", "ms"
    );
    let mut failures = 0;
    for (i, case) in cases.iter().enumerate() {
        for s in sims.all() {
            s.faults().clear();
        }
        match case.fault {
            Fault::None => {}
            Fault::Fail(sys, status) => sim_named(&sims, sys).faults().fail_next(1, status),
            Fault::Slow(sys, d) => sim_named(&sims, sys).faults().delay(d),
        }
        let started = Instant::now();
        let mut req = client
            .request(case.method.parse()?, format!("{base}{}", case.path))
            .header("x-user-id", CLERK);
        if let Some(b) = &case.body {
            req = req.json(b);
        }
        if let Some(envelope) = &case.soap {
            req = req
                .header("content-type", "text/xml; charset=utf-8")
                .header("soapaction", "\"urn:x-tilts:person:v1/GetPerson\"")
                .body(envelope.clone());
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("case {}: request", i + 1))?;
        let status = resp.status().as_u16();
        let body: Value = if case.soap.is_some() {
            soap_summary(&resp.bytes().await.unwrap_or_default())
        } else {
            resp.json().await.unwrap_or(Value::Null)
        };
        let ms = started.elapsed().as_millis();
        let mut ok = status == case.expect;
        let mut outcome = summarize(&body);
        if let (Some(want), Some(store), Some(id)) =
            (case.delivered, &store, body["messageId"].as_str())
        {
            // A queued message: follow it until the workers have delivered or dead-lettered it.
            let (state, attempts, class) = follow(store, id).await;
            ok &= state == want;
            outcome = match state.as_str() {
                "delivered" => format!("accepted; delivered on attempt {attempts}"),
                "dead" => format!(
                    "accepted; dead letter after {attempts} attempt(s) ({class}), requeue: POST /admin/dead-letters/{id}/requeue"
                ),
                other => format!("accepted; still {other} after {attempts} attempt(s)"),
            };
        }
        if !ok {
            failures += 1;
        }
        println!(
            "  {:>2}  {:<6} {:<28} {:<44} {:>6} {:>7}  {} {}",
            i + 1,
            case.method,
            case.path,
            case.what,
            status,
            ms,
            if ok { "ok  " } else { "FAIL" },
            outcome
        );
    }
    for s in sims.all() {
        s.faults().clear();
    }

    // The flow: the case went to the institution over RabbitMQ, and its status came back.
    let flow_case = "VPVKAC-2026-000460";
    println!(
        "\n  The case flow ({flow_case}: centre -> tilts -> registries, Riga, VSAA -> status back):"
    );
    let riga_calls = sims.riga_state.all_interactions().len();
    println!("    Riga client history     {riga_calls} interaction(s) recorded");
    if let Ok(inst) = &institution {
        let history = poll(Duration::from_secs(20), || {
            Some(sims.vpvkac_state.history(flow_case)).filter(|h| !h.is_empty())
        })
        .await
        .unwrap_or_default();
        let got = inst
            .received()
            .iter()
            .any(|a| a["applicationId"] == flow_case);
        println!(
            "    VSAA over RabbitMQ      {}",
            if got {
                "received the enriched application"
            } else {
                "did not receive it"
            }
        );
        match history.last() {
            Some(change) => println!(
                "    VPVKAC IS               status {:?} from {} (its case {})",
                change.status,
                change.institution,
                change.institution_case_number.as_deref().unwrap_or("-")
            ),
            None => {
                failures += 1;
                println!("    VPVKAC IS               FAIL: no status came back within 20 s");
            }
        }
        if !got {
            failures += 1;
        }
        // The same status, recorded in Riga's client history by the case-history route.
        let recorded = poll(Duration::from_secs(10), || {
            sims.riga_state
                .all_interactions()
                .into_iter()
                .find(|i| i.case_id.as_deref() == Some(flow_case) && i.kind != "application")
        })
        .await;
        match recorded {
            Some(i) => println!(
                "    Riga client history     the {} recorded for client {}",
                i.kind, i.client_id
            ),
            None => {
                failures += 1;
                println!("    Riga client history     FAIL: the status did not arrive within 10 s");
            }
        }
    }
    let descriptors = sims.piktaps_state.descriptors(sim::piktaps::SYSTEM_CODE);
    println!(
        "    PIKTAPS                 {} route descriptor(s) published",
        descriptors.len()
    );

    println!("\n  What the systems received (recorded by the simulators):");
    for s in sims.all() {
        println!("    {:<20} {} request(s)", s.name(), s.requests().len());
    }
    if let Some(first) = sims
        .social_services
        .requests()
        .iter()
        .find(|r| r.method == "POST")
        && let Some(mut body) = first.json()
    {
        // The demo prints the forwarded case with the personal code masked, as tilts' logs would.
        if let Some(pk) = body.pointer_mut("/applicant/personalCode") {
            *pk = Value::String(ident::mask_personal_code(pk.as_str().unwrap_or_default()));
        }
        println!(
            "\n  First case forwarded to social-services (mapped by mappings/applications/to-social-services.json.hbs,"
        );
        println!(
            "  personal code masked here for display; headers X-Tilts-Message-Id={} Idempotency-Key={}):",
            first.header("x-tilts-message-id").unwrap_or("-"),
            first.header("idempotency-key").unwrap_or("-")
        );
        for line in serde_json::to_string_pretty(&body)?.lines() {
            println!("    {line}");
        }
    }

    println!("\n  Where to look:");
    println!("    routes.yaml            the routes you just ran (from -> steps -> respond/to)");
    println!("    mappings/              their templates (*.hbs) and schemas (*.schema.json)");
    println!("    docs/routes.md         the route language reference");
    println!("    tilts check            checks routes.yaml and every file it names");
    println!(
        "    tilts demo --keep-running   keeps tilts and the simulators up for your own requests"
    );

    if keep_running {
        println!("\n  tilts is serving on {base}; try:");
        println!(
            "    curl -s {base}/v1/company-lookup -H 'content-type: application/json' -d '{{\"regNo\":\"{}\"}}'",
            er::ACTIVE_SIA
        );
        println!("    curl -s {base}/v1/addresses/{}", ar::RIGA_GERTRUDES_34);
        println!(
            "    curl -s {base}/v1/person-lookup -H 'content-type: application/json' -H 'x-user-id: {CLERK}' -d '{{\"personalCode\":\"{}\"}}'",
            pr::ACTIVE
        );
        println!("    curl -s '{base}/soap/person?wsdl'");
        println!("  Ctrl-C stops.");
        crate::server::shutdown_signal().await;
    }
    running.stop().await;
    if let Ok(inst) = institution {
        inst.stop().await;
    }
    drop(data);
    sims.shutdown().await;
    if failures > 0 {
        bail!("{failures} case(s) did not answer as expected");
    }
    println!("\n  {} cases, all answered as expected.", cases.len());
    Ok(())
}

fn sim_named<'a>(sims: &'a Simulators, name: &str) -> &'a sim::SimServer {
    sims.all()
        .into_iter()
        .find(|s| s.name() == name)
        .expect("known simulator")
}

/// Starts the simulated institution on the broker of the shipped routes, or says why not.
async fn start_institution(
    plan: &crate::plan::Plan,
) -> Result<sim::amqp_institution::AmqpInstitution, String> {
    let Some(handle) = plan.systems.get("broker").and_then(|s| s.amqp()) else {
        return Err("the routes declare no `broker`".into());
    };
    let mut spec = handle.spec.clone();
    spec.name = "vsaa-simulator".into();
    spec.connect_timeout = Duration::from_secs(2);
    let redacted = tilts_adapters::amqp::redact_url(&spec.url);
    sim::amqp_institution::AmqpInstitution::start(
        spec,
        "vsaa.applications",
        "tilts.status",
        "status.vsaa",
    )
    .await
    .map_err(|e| format!("{redacted} unreachable ({})", e.kind.name()))
}

/// A SOAP answer as the demo shows it: the Fault's reason, or the answer read as data.
fn soap_summary(bytes: &[u8]) -> Value {
    match tilts_adapters::soap::parse_envelope(bytes, 1 << 20, 64) {
        Ok(env) => match env.fault {
            Some(f) => {
                json!({"title": "SOAP Fault", "detail": format!("{} fault: {}", f.code.name(), f.reason)})
            }
            None => {
                let data = tilts_adapters::xml::fragment_to_local_json(
                    env.body.as_bytes(),
                    &tilts_adapters::xml::Limits::default(),
                )
                .unwrap_or(Value::Null);
                let p = &data["GetPersonResponse"]["Person"];
                json!({"givenName": p["GivenName"], "familyName": p["FamilyName"], "status": p["Status"], "soap": true})
            }
        },
        Err(e) => json!({"title": "not a SOAP answer", "detail": e.to_string()}),
    }
}

/// A SOAP 1.1 GetPerson request, as an institution's SOAP client sends it.
fn get_person_envelope(personal_code: &str) -> String {
    format!(
        r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:per="urn:x-tilts:person:v1"><soapenv:Header/><soapenv:Body><per:GetPerson><per:PersonalCode>{personal_code}</per:PersonalCode></per:GetPerson></soapenv:Body></soapenv:Envelope>"#
    )
}

/// One line about an answer: its key fields, or the problem's title and violations.
fn summarize(body: &Value) -> String {
    match body.get("status").and_then(Value::as_str) {
        Some("published") => return "published to RabbitMQ, confirmed by the broker".into(),
        Some("accepted") if body.get("route").and_then(Value::as_str) == Some("case-submit") => {
            return "stored by tilts: published when the broker is reachable".into();
        }
        _ => {}
    }
    if let (Some(given), Some(family)) = (
        body.get("givenName").and_then(Value::as_str),
        body.get("familyName").and_then(Value::as_str),
    ) {
        let via = if body["soap"] == true {
            " (SOAP answer)"
        } else {
            ""
        };
        return format!(
            "{given} {family}, {}{via}",
            body["status"].as_str().unwrap_or("")
        );
    }
    if let Some(title) = body.get("title").and_then(Value::as_str) {
        let errors: Vec<String> = body["errors"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| {
                        format!(
                            "{} {}",
                            e["pointer"].as_str().unwrap_or(""),
                            e["message"].as_str().unwrap_or("")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        if errors.is_empty() {
            let detail = body["detail"].as_str().or(body["message"].as_str());
            return format!("{title}: {}", detail.unwrap_or(""));
        }
        return format!("{title}: {}", errors.join("; "));
    }
    if let Some(name) = body.get("name").and_then(Value::as_str) {
        return format!("{name} ({})", body["status"].as_str().unwrap_or(""));
    }
    if let Some(text) = body.get("text").and_then(Value::as_str) {
        return text.to_string();
    }
    if let Some(id) = body.get("interactionId").and_then(Value::as_str) {
        return format!("recorded in Riga's client history as {id}");
    }
    if let Some(case) = body
        .pointer("/institution/caseNumber")
        .and_then(Value::as_str)
    {
        return format!("forwarded, institution case {case}");
    }
    body.get("message")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

/// A client's visit to a centre, as the VPVKAC IS reports it (fictional test codes).
fn visit(n: u32, personal_code: &str) -> Value {
    json!({
        "visitId": format!("VISIT-2026-{n:06}"),
        "centre": {"code": "RIGA-CENTRS", "name": "Rīgas VPVKAC"},
        "client": {"personalCode": personal_code},
        "serviceCode": "SOC-ASSIST-01",
        "visitedAt": "2026-03-02T09:05:00+02:00",
    })
}

/// A valid application as a VPVKAC centre sends it. Personal codes are fictional test codes.
pub fn application(n: u32, personal_code: &str) -> Value {
    json!({
        "applicationId": format!("VPVKAC-2026-{n:06}"),
        "centre": {"code": "RIGA-CENTRS", "municipality": "Rīga"},
        "service": {"code": "SOC-ASSIST-01", "title": "Trūcīgas personas statusa noteikšana"},
        "applicant": {"personalCode": personal_code, "firstName": "Anna", "lastName": "Kalniņa", "email": "anna@example.lv"},
        "submittedAt": "2026-11-28T09:15:00+02:00",
        "channel": "visit"
    })
}

/// A valid Enterprise Register number the simulator does not know.
fn unknown_reg_no() -> String {
    (4000390000u64..)
        .filter_map(|p| ident::complete_reg_no(&p.to_string()))
        .find(|r| er::find(r).is_none())
        .unwrap_or_default()
}

fn cases() -> Vec<Case> {
    let post = |what, path: &str, body, fault, expect| Case {
        what,
        method: "POST",
        path: path.to_string(),
        body: Some(body),
        soap: None,
        fault,
        expect,
        delivered: None,
    };
    let soap = |what, personal_code: &str, fault, expect| Case {
        what,
        method: "POST",
        path: "/soap/person".to_string(),
        body: None,
        soap: Some(get_person_envelope(personal_code)),
        fault,
        expect,
        delivered: None,
    };
    let queued = |what, body, fault, delivered| Case {
        what,
        method: "POST",
        path: "/v1/applications/forward".to_string(),
        body: Some(body),
        soap: None,
        fault,
        expect: 202,
        delivered: Some(delivered),
    };
    let get = |what, path: String, fault, expect| Case {
        what,
        method: "GET",
        path,
        body: None,
        soap: None,
        fault,
        expect,
        delivered: None,
    };
    vec![
        post(
            "active company",
            "/v1/company-lookup",
            json!({"regNo": er::ACTIVE_SIA}),
            Fault::None,
            200,
        ),
        post(
            "public body",
            "/v1/company-lookup",
            json!({"regNo": er::MUNICIPALITY}),
            Fault::None,
            200,
        ),
        post(
            "valid number, not registered",
            "/v1/company-lookup",
            json!({"regNo": unknown_reg_no()}),
            Fault::None,
            404,
        ),
        post(
            "number failing the checksum",
            "/v1/company-lookup",
            json!({"regNo": er::BAD_CHECKSUM}),
            Fault::None,
            422,
        ),
        post(
            "register answers 503",
            "/v1/company-lookup",
            json!({"regNo": er::ACTIVE_AS}),
            Fault::Fail("enterprise-register", 503),
            502,
        ),
        get(
            "Riga building",
            format!("/v1/addresses/{}", ar::RIGA_GERTRUDES_34),
            Fault::None,
            200,
        ),
        get(
            "Jelgava building",
            format!("/v1/addresses/{}", ar::JELGAVA_KATOLU_2),
            Fault::None,
            200,
        ),
        get(
            "unknown address code",
            "/v1/addresses/109999999".into(),
            Fault::None,
            404,
        ),
        get(
            "malformed address code",
            "/v1/addresses/12ab".into(),
            Fault::None,
            422,
        ),
        post(
            "person, via VISS (SOAP 1.2)",
            "/v1/person-lookup",
            json!({"personalCode": pr::ACTIVE}),
            Fault::None,
            200,
        ),
        post(
            "person, new-form code",
            "/v1/person-lookup",
            json!({"personalCode": pr::NEW_FORM}),
            Fault::None,
            200,
        ),
        post(
            "person not in the register",
            "/v1/person-lookup",
            json!({"personalCode": pr::NOT_FOUND}),
            Fault::None,
            404,
        ),
        post(
            "personal code failing the checksum",
            "/v1/person-lookup",
            json!({"personalCode": pr::INVALID}),
            Fault::None,
            422,
        ),
        post(
            "register answers a Server fault",
            "/v1/person-lookup",
            json!({"personalCode": pr::SERVER_FAULT}),
            Fault::None,
            502,
        ),
        soap("SOAP 1.1 client asks tilts", pr::DECEASED, Fault::None, 200),
        post(
            "case from a centre, to VSAA via RabbitMQ",
            "/v1/cases",
            application(460, pr::ACTIVE),
            Fault::None,
            202,
        ),
        post(
            "case, applicant not in the register",
            "/v1/cases",
            application(461, pr::NOT_FOUND),
            Fault::None,
            422,
        ),
        post(
            "visit at a centre, into Riga's history",
            "/v1/visits",
            visit(42, pr::ACTIVE),
            Fault::None,
            201,
        ),
        post(
            "visit by someone not Riga's client",
            "/v1/visits",
            visit(43, sim::riga::NO_PROFILE),
            Fault::None,
            404,
        ),
        soap(
            "SOAP client, unknown person",
            pr::NOT_FOUND,
            Fault::None,
            400,
        ),
        post(
            "application, old-form code",
            "/v1/applications",
            application(451, "010190-12349"),
            Fault::None,
            201,
        ),
        post(
            "application, new-form code",
            "/v1/applications",
            application(452, "320645-11111"),
            Fault::None,
            201,
        ),
        post(
            "application, bad code + missing name",
            "/v1/applications",
            {
                let mut a = application(453, "010190-12340");
                a["applicant"].as_object_mut().map(|o| o.remove("lastName"));
                a
            },
            Fault::None,
            422,
        ),
        post(
            "application, institution answers 500",
            "/v1/applications",
            application(454, "161175-19997"),
            Fault::Fail("social-services", 500),
            502,
        ),
        post(
            "application, institution too slow",
            "/v1/applications",
            application(455, "150285-10005"),
            Fault::Slow("social-services", Duration::from_secs(4)),
            504,
        ),
        queued(
            "queued application",
            application(456, "010190-12349"),
            Fault::None,
            "delivered",
        ),
        queued(
            "queued, institution answers 503 once",
            application(457, "161175-19997"),
            Fault::Fail("social-services", 503),
            "delivered",
        ),
        queued(
            "queued, institution refuses (409)",
            application(458, "150285-10005"),
            Fault::Fail("social-services", 409),
            "dead",
        ),
        post(
            "queued, invalid application",
            "/v1/applications/forward",
            {
                let mut a = application(459, "010190-12340");
                a["channel"] = json!("fax");
                a
            },
            Fault::None,
            422,
        ),
        get("no such route", "/v1/nothing-here".into(), Fault::None, 404),
    ]
}

/// `tilts simulate`: the simulators on fixed ports until Ctrl-C.
pub async fn simulate(first_port: u16) -> anyhow::Result<()> {
    let at = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    let sims = [
        sim::enterprise_register(at(first_port)).await?,
        sim::address_register(at(first_port + 1)).await?,
        sim::social_services(at(first_port + 2)).await?,
        sim::population_register(at(first_port + 3)).await?,
        sim::vpvkac(at(first_port + 4)).await?.0,
        sim::piktaps(at(first_port + 5)).await?.0,
        sim::riga(at(first_port + 6)).await?.0,
    ];
    for s in &sims {
        let vars: Vec<&str> = URL_VARS
            .iter()
            .filter(|(_, sys, _)| *sys == s.name())
            .map(|(var, _, _)| *var)
            .collect();
        println!("{:<20} {}   ({})", s.name(), s.url(), vars.join(", "));
    }
    println!("Ctrl-C stops.");
    crate::server::shutdown_signal().await;
    for s in sims {
        s.shutdown().await;
    }
    Ok(())
}
