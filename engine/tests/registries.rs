//! Talking to the state registries through each exchange profile, against the simulators: tilts
//! started in this process with `tests/registries/routes.yaml` (one route per profile) in front
//! of the Population Register (plain SOAP 1.1 and 1.2, X-Road 4.0, VISS), the Enterprise
//! Register behind an X-Road REST security server, and DAGR over mTLS with the test PKI.
//!
//! What is asserted is what the simulators RECEIVED (envelopes, headers, the order of the VISS
//! calls), what tilts answered (the registry's answer read as data), and how faults are
//! classified (sync routes: 502 with or without Retry-After; queued routes: retried or
//! dead-lettered at once). The simulators are strict: a request that breaks its profile gets a
//! Client fault, so a 200 here also means the framing was accepted.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tilts_adapters::sim::pki::TestPki;
use tilts_adapters::sim::{
    self, RecordedRequest, SimServer, Simulators, address_register as ar,
    enterprise_register as er, population_register as pr,
};
use tilts_adapters::soap::{self, SoapVersion};
use tilts_adapters::xml;
use tilts_engine::check;
use tilts_engine::service::{self, Running, StartOptions};
use tilts_engine::store::{MessageId, MessageState};
use tilts_engine::worker::WorkerOptions;
use tokio::time::Instant;

const CLERK: &str = "AU:90000038741-PK:161175-19997";

struct Env {
    running: Running,
    sims: Simulators,
    xroad: SimServer,
    dagr: SimServer,
    http: reqwest::Client,
    base: String,
    _dir: tempfile::TempDir,
}

impl Env {
    async fn start() -> Env {
        let any = "127.0.0.1:0".parse().unwrap();
        let sims = Simulators::start().await.unwrap();
        let xroad = SimServer::start("xroad-rest", any, sim::xroad_rest::router())
            .await
            .unwrap();
        let pki = TestPki::generate();
        let dir = tempfile::tempdir().unwrap();
        let files = pki.write_to(dir.path()).unwrap();
        let dagr = SimServer::start_tls("dagr", any, sim::dagr::router(), pki.sim_tls_mtls())
            .await
            .unwrap();
        let vars: Vec<(&str, String)> = vec![
            ("PR_URL", sims.population_register.url()),
            ("XROAD_REST_URL", xroad.url()),
            ("DAGR_URL", dagr.url()),
            ("DAGR_CERT", files.client_cert.display().to_string()),
            ("DAGR_KEY", files.client_key.display().to_string()),
            ("DAGR_CA", files.ca.display().to_string()),
        ];
        let routes = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/registries/routes.yaml");
        let plan = check::load_with_env(&routes, &|k| {
            vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
        })
        .unwrap_or_else(|d| panic!("tests/registries/routes.yaml does not check:\n{d}"));
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
            xroad,
            dagr,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
            base,
            _dir: dir,
        }
    }

    fn pr(&self) -> &SimServer {
        &self.sims.population_register
    }

    async fn post(
        &self,
        path: &str,
        body: Value,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .header("x-user-id", CLERK)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let v = resp.json().await.unwrap_or(Value::Null);
        (status, headers, v)
    }

    async fn stop(self) {
        self.running.stop().await;
        self.sims.shutdown().await;
        self.xroad.shutdown().await;
        self.dagr.shutdown().await;
    }
}

/// A recorded SOAP request, parsed: its version, header blocks and Body content as data (local
/// names, so the assertions do not depend on the prefixes tilts chose).
struct Sent {
    version: SoapVersion,
    headers: Vec<soap::HeaderBlock>,
    body: Value,
}

fn sent(r: &RecordedRequest) -> Sent {
    let env = soap::parse_envelope(&r.body, 1 << 20, 64).expect("tilts sent a SOAP envelope");
    let body = xml::fragment_to_json(env.body.as_bytes(), &xml::Limits::default()).unwrap();
    Sent {
        version: env.version,
        headers: env.headers,
        body: tilts_engine::exchange::local_names(body),
    }
}

impl Sent {
    /// The text of the header block `local_name` in `ns`, with its children as data.
    fn header(&self, ns: &str, local_name: &str) -> Option<Value> {
        let h = self
            .headers
            .iter()
            .find(|h| h.namespace.as_deref() == Some(ns) && h.local_name == local_name)?;
        let v = xml::to_json(h.xml.as_bytes(), &xml::Limits::default()).unwrap();
        Some(tilts_engine::exchange::local_names(v)[local_name].clone())
    }

    fn header_names(&self) -> Vec<String> {
        self.headers.iter().map(|h| h.local_name.clone()).collect()
    }
}

fn person(code: &str) -> &'static pr::Person {
    pr::find(code).expect("a fixture person")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_soap_11_and_12_framing_as_each_version_requires() {
    let env = Env::start().await;
    let want = person(pr::ACTIVE);

    let (status, _, answer) = env
        .post("/t/soap11", json!({"personalCode": pr::ACTIVE}))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["body"]["GetPersonResponse"]["Person"]["GivenName"],
        want.given_name
    );
    let r = env.pr().requests().pop().unwrap();
    assert_eq!(r.path, pr::PERSON_PATH);
    assert!(r.header("content-type").unwrap().starts_with("text/xml"));
    assert_eq!(
        r.header("soapaction"),
        Some("\"urn:x-tilts-sim:pmlp:person:v1/GetPerson\"")
    );
    let s = sent(&r);
    assert_eq!(s.version, SoapVersion::V11);
    assert!(s.headers.is_empty(), "plain SOAP sends no header blocks");
    assert_eq!(s.body["GetPerson"]["PersonalCode"], pr::ACTIVE);

    env.pr().clear_requests();
    let (status, _, answer) = env
        .post("/t/soap12", json!({"personalCode": pr::ACTIVE}))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["body"]["GetPersonResponse"]["Person"]["FamilyName"],
        want.family_name
    );
    let r = env.pr().requests().pop().unwrap();
    let ct = r.header("content-type").unwrap();
    assert!(ct.starts_with("application/soap+xml"), "{ct}");
    assert!(
        ct.contains("action=\"urn:x-tilts-sim:pmlp:person:v1/GetPerson\""),
        "{ct}"
    );
    assert!(
        r.header("soapaction").is_none(),
        "SOAP 1.2 has no SOAPAction header"
    );
    let s = sent(&r);
    assert_eq!(s.version, SoapVersion::V12);
    let wsa = soap::WSA_NS;
    assert_eq!(
        s.header(wsa, "Action").unwrap(),
        "urn:x-tilts-sim:pmlp:person:v1/GetPerson"
    );
    assert!(
        s.header(wsa, "MessageID")
            .unwrap()
            .as_str()
            .unwrap()
            .starts_with("urn:uuid:")
    );
    assert_eq!(
        s.header(wsa, "To").unwrap(),
        format!("{}{}", env.pr().url(), pr::PERSON_PATH)
    );
    assert_eq!(
        s.header(wsa, "ReplyTo").unwrap()["Address"],
        soap::WSA_ANONYMOUS
    );

    // The same request built from mapped JSON instead of an XML template.
    env.pr().clear_requests();
    let (status, _, from_json) = env
        .post("/t/soap12-json", json!({"personalCode": pr::ACTIVE}))
        .await;
    assert_eq!(status, 200, "{from_json}");
    assert_eq!(from_json["body"], answer["body"]);
    assert_eq!(sent(&env.pr().requests()[0]).body, s.body);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soap_faults_are_classified_and_can_be_accepted_as_answers() {
    let env = Env::start().await;
    // A Server fault may pass: 502 with Retry-After.
    let (status, headers, problem) = env
        .post("/t/soap11", json!({"personalCode": pr::SERVER_FAULT}))
        .await;
    assert_eq!(status, 502, "{problem}");
    assert_eq!(problem["type"], "urn:tilts:problem:upstream-fault");
    assert!(
        headers.get("retry-after").is_some(),
        "a Server fault is retryable"
    );
    // A Client fault will not: 502 without Retry-After.
    let (status, headers, problem) = env
        .post("/t/soap11", json!({"personalCode": pr::NOT_FOUND}))
        .await;
    assert_eq!(status, 502, "{problem}");
    assert_eq!(problem["type"], "urn:tilts:problem:upstream-fault");
    assert!(
        headers.get("retry-after").is_none(),
        "a Client fault is permanent"
    );
    assert!(
        !problem.to_string().contains(pr::NOT_FOUND),
        "no personal code in problems: {problem}"
    );
    // A fault in an HTTP 200 answer is still a fault.
    let (status, _, problem) = env
        .post("/t/soap11", json!({"personalCode": pr::FAULT_HTTP_200}))
        .await;
    assert_eq!(status, 502, "{problem}");
    assert_eq!(problem["type"], "urn:tilts:problem:upstream-fault");

    // `faults: accept`: the fault is data for later steps.
    let (status, _, answer) = env
        .post("/t/soap-faults", json!({"personalCode": pr::NOT_FOUND}))
        .await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["fault"]["code"], "Client");
    assert!(
        answer["fault"]["subcode"]
            .as_str()
            .unwrap()
            .ends_with("PersonNotFound"),
        "{answer}"
    );
    assert_eq!(answer["body"], Value::Null);
    let (status, _, answer) = env
        .post("/t/soap-faults", json!({"personalCode": pr::SERVER_FAULT}))
        .await;
    assert_eq!(status, 409);
    assert_eq!(answer["fault"]["code"], "Server");
    let (status, _, answer) = env
        .post("/t/soap-faults", json!({"personalCode": pr::ACTIVE}))
        .await;
    assert_eq!(status, 200);
    assert!(answer.get("fault").is_none());
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_road_soap_headers_as_the_protocol_requires() {
    let env = Env::start().await;
    let (status, _, answer) = env
        .post("/t/xroad", json!({"personalCode": pr::ACTIVE}))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["body"]["GetPersonResponse"]["Person"]["GivenName"],
        person(pr::ACTIVE).given_name
    );
    let r = env.pr().requests().pop().unwrap();
    assert!(r.header("content-type").unwrap().starts_with("text/xml"));
    let s = sent(&r);
    assert_eq!(s.version, SoapVersion::V11);
    assert_eq!(
        s.header_names(),
        ["client", "service", "id", "userId", "protocolVersion"],
        "X-Road 4.0 header order"
    );
    let xrd = "http://x-road.eu/xsd/xroad.xsd";
    let client = s.header(xrd, "client").unwrap();
    assert_eq!(client["@objectType"], "SUBSYSTEM");
    assert_eq!(client["xRoadInstance"], "LV");
    assert_eq!(client["memberClass"], "GOV");
    assert_eq!(client["memberCode"], "90000038741");
    assert_eq!(client["subsystemCode"], "tilts");
    let service = s.header(xrd, "service").unwrap();
    assert_eq!(service["@objectType"], "SERVICE");
    assert_eq!(service["memberCode"], "90000010008");
    assert_eq!(service["subsystemCode"], "PMLP");
    assert_eq!(service["serviceCode"], "getPerson");
    assert_eq!(service["serviceVersion"], "v1");
    assert_eq!(s.header(xrd, "userId").unwrap(), CLERK);
    assert_eq!(s.header(xrd, "protocolVersion").unwrap(), "4.0");
    let id = s.header(xrd, "id").unwrap();
    assert!(!id.as_str().unwrap().is_empty());
    // Each request gets its own id.
    env.post("/t/xroad", json!({"personalCode": pr::ACTIVE}))
        .await;
    let again = sent(&env.pr().requests().pop().unwrap());
    assert_ne!(again.header(xrd, "id").unwrap(), id);

    // An XPath-like condition on the registry's XML answer.
    let (status, _, answer) = env
        .post("/t/xroad", json!({"personalCode": pr::DECEASED}))
        .await;
    assert_eq!(status, 410, "{answer}");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viss_starts_a_transaction_then_submits_with_the_ivis_header() {
    let env = Env::start().await;
    let resp = env
        .http
        .post(format!("{}/t/viss", env.base))
        .header("x-user-id", CLERK)
        .json(&json!({"personalCode": pr::NEW_FORM}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let message_id = resp.headers()["x-tilts-message-id"]
        .to_str()
        .unwrap()
        .to_string();
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(
        answer["body"]["GetPersonResponse"]["Person"]["GivenName"],
        person(pr::NEW_FORM).given_name
    );
    let reqs = env.pr().requests();
    assert_eq!(reqs.len(), 2, "StartTransaction, then SubmitSync");
    let wsa = soap::WSA_NS;
    let viss = "http://ivis.eps.gov.lv/ISS/RequestServiss/v1-0";
    let wsse = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd";
    let start = sent(&reqs[0]);
    assert_eq!(start.version, SoapVersion::V12);
    assert!(
        start
            .header(wsa, "Action")
            .unwrap()
            .as_str()
            .unwrap()
            .ends_with("/StartTransaction")
    );
    assert_eq!(
        start.body["StartTransaction"]["eServiceID"],
        pr::E_SERVICE_ID
    );
    assert!(start.header(wsse, "Security").unwrap()["Timestamp"]["Created"].is_string());

    let submit = sent(&reqs[1]);
    assert!(
        submit
            .header(wsa, "Action")
            .unwrap()
            .as_str()
            .unwrap()
            .ends_with("/SubmitSync")
    );
    let ivis = submit.header(viss, "IVISRequest").unwrap();
    assert!(
        ivis["TransactionID"]
            .as_str()
            .unwrap()
            .starts_with(pr::TRANSACTION_PREFIX),
        "{ivis}"
    );
    assert_eq!(ivis["MessageType"], pr::MESSAGE_TYPE);
    assert_eq!(ivis["Sender"], "URN:IVIS:100001:IS-TILTS");
    assert_eq!(ivis["Destination"], pr::DESTINATION);
    assert_eq!(ivis["Test"], "false");
    assert_eq!(ivis["Initiator"], CLERK);
    assert_eq!(ivis["CorrelationID"], format!("urn:uuid:{message_id}"));
    assert_eq!(
        submit.body["SubmitSync"]["request"]["GetPerson"]["PersonalCode"],
        pr::NEW_FORM
    );
    env.stop().await;
}

async fn wait_state(env: &Env, id: &str, want: MessageState) -> tilts_engine::store::MessageView {
    let store = env.running.store.as_ref().unwrap();
    let id = MessageId(id.parse().unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = store.get(id).await.unwrap().unwrap();
        if v.meta.state == want {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "message stayed {:?}, wanted {want:?}",
            v.meta.state
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_viss_deliveries_retry_server_faults_and_dead_letter_client_faults() {
    let env = Env::start().await;
    let (status, _, ok) = env
        .post("/t/viss-queued", json!({"personalCode": pr::ACTIVE}))
        .await;
    assert_eq!(status, 202, "{ok}");
    let (_, _, server) = env
        .post("/t/viss-queued", json!({"personalCode": pr::SERVER_FAULT}))
        .await;
    let (_, _, client) = env
        .post("/t/viss-queued", json!({"personalCode": pr::NOT_FOUND}))
        .await;

    let v = wait_state(
        &env,
        ok["messageId"].as_str().unwrap(),
        MessageState::Delivered,
    )
    .await;
    assert_eq!(v.meta.attempts, 1);
    let v = wait_state(
        &env,
        server["messageId"].as_str().unwrap(),
        MessageState::Dead,
    )
    .await;
    assert_eq!(
        v.meta.attempts, 3,
        "a Server fault is retried up to max_attempts"
    );
    assert_eq!(v.meta.last_error_class.as_deref(), Some("fault"));
    let v = wait_state(
        &env,
        client["messageId"].as_str().unwrap(),
        MessageState::Dead,
    )
    .await;
    assert_eq!(
        v.meta.attempts, 1,
        "a Client fault goes to dead letters at once"
    );
    assert_eq!(v.meta.last_error_class.as_deref(), Some("fault"));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_road_rest_path_and_headers() {
    let env = Env::start().await;
    let (status, _, answer) = env
        .post("/t/xroad-rest", json!({"regNo": er::ACTIVE_SIA}))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], 200);
    assert_eq!(answer["body"]["regNo"], er::ACTIVE_SIA);
    let r = env.xroad.requests().pop().unwrap();
    assert_eq!(
        r.path,
        format!("/r1/LV/GOV/90000010008/UR/company/{}", er::ACTIVE_SIA)
    );
    assert_eq!(r.header("x-road-client"), Some("LV/GOV/90000038741/tilts"));
    assert_eq!(r.header("x-road-userid"), Some(CLERK));
    assert!(r.header("x-road-id").is_some_and(|id| !id.is_empty()));
    // The security server's answer headers reach the route.
    assert!(
        answer["headers"]["x-road-request-id"].is_string(),
        "{answer}"
    );

    let (status, _, answer) = env
        .post("/t/xroad-rest", json!({"regNo": er::UNREGISTERED}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(answer["status"], 404);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dagr_over_mtls_with_a_cached_token_and_the_permission_header() {
    let env = Env::start().await;
    let (status, _, answer) = env
        .post("/t/dagr", json!({"code": ar::RIGA_GERTRUDES_34}))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], 200);
    assert_eq!(answer["body"]["code"], ar::RIGA_GERTRUDES_34);
    let (status, _, _) = env
        .post("/t/dagr", json!({"code": ar::JELGAVA_KATOLU_2}))
        .await;
    assert_eq!(status, 200);

    let reqs = env.dagr.requests();
    let tokens: Vec<&RecordedRequest> = reqs.iter().filter(|r| r.path == "/oauth/token").collect();
    assert_eq!(tokens.len(), 1, "the token is fetched once and cached");
    let data: Vec<&RecordedRequest> = reqs
        .iter()
        .filter(|r| r.path.starts_with("/vzd/addresses/"))
        .collect();
    assert_eq!(data.len(), 2);
    for r in data {
        assert_eq!(r.header("x-dagr-permission"), Some("P-1002"));
        assert!(r.header("authorization").unwrap().starts_with("Bearer "));
    }

    // Without the permission the platform refuses: 403, a permanent failure (502, no retry).
    let (status, headers, problem) = env
        .post("/t/dagr-person", json!({"personalCode": pr::ACTIVE}))
        .await;
    assert_eq!(status, 502, "{problem}");
    assert!(headers.get("retry-after").is_none());
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_without_a_client_certificate_fails_clearly() {
    let env = Env::start().await;
    let (status, headers, problem) = env.post("/t/dagr-no-cert", json!({})).await;
    assert_eq!(status, 502, "{problem}");
    assert_eq!(problem["type"], "urn:tilts:problem:upstream-unreachable");
    let detail = problem["detail"].as_str().unwrap().to_lowercase();
    assert!(
        detail.contains("tls") || detail.contains("certificate"),
        "the problem says it is about TLS: {detail}"
    );
    assert!(headers.get("retry-after").is_some());
    // Nothing reached the platform's handlers.
    assert!(env.dagr.requests().is_empty());
    env.stop().await;
}

/// A SOAP 1.1 request to tilts' own SOAP endpoint, the way an institution's client sends it
/// (its own prefixes, which tilts must not depend on).
fn get_person_11(code: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<SOAP-ENV:Envelope xmlns:SOAP-ENV="http://schemas.xmlsoap.org/soap/envelope/" xmlns:ns1="urn:x-tilts:test:v1">
  <SOAP-ENV:Header/>
  <SOAP-ENV:Body><ns1:GetPerson><ns1:PersonalCode>{code}</ns1:PersonalCode></ns1:GetPerson></SOAP-ENV:Body>
</SOAP-ENV:Envelope>"#
    )
}

async fn post_soap(env: &Env, content_type: &str, body: String) -> (StatusCode, String, String) {
    let resp = env
        .http
        .post(format!("{}/soap/person", env.base))
        .header("content-type", content_type)
        .header("soapaction", "\"urn:x-tilts:test:v1/GetPerson\"")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, ct, resp.text().await.unwrap())
}

fn fault_of(text: &str) -> soap::Fault {
    soap::parse_envelope(text.as_bytes(), 1 << 20, 64)
        .expect("an envelope")
        .fault
        .expect("a fault")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tilts_answers_soap_callers_with_envelopes_and_faults() {
    let env = Env::start().await;
    let want = person(pr::ACTIVE);
    let (status, ct, text) =
        post_soap(&env, "text/xml; charset=utf-8", get_person_11(pr::ACTIVE)).await;
    assert_eq!(status, 200, "{text}");
    assert!(ct.starts_with("text/xml"), "{ct}");
    let answer = soap::parse_envelope(text.as_bytes(), 1 << 20, 64).unwrap();
    assert_eq!(answer.version, SoapVersion::V11);
    assert!(answer.fault.is_none());
    let data = xml::fragment_to_json(answer.body.as_bytes(), &xml::Limits::default()).unwrap();
    // The JSON reply is wrapped in <GetPersonResponse xmlns="urn:x-tilts:test:v1">.
    assert_eq!(data["GetPersonResponse"]["@xmlns"], "urn:x-tilts:test:v1");
    assert_eq!(
        data["GetPersonResponse"]["Person"]["GivenName"],
        want.given_name
    );

    // A 404 of the route is a Client fault (HTTP 400) whose reason is the problem's title.
    let (status, _, text) = post_soap(&env, "text/xml", get_person_11(pr::NOT_FOUND)).await;
    assert_eq!(status, 400, "{text}");
    let f = fault_of(&text);
    assert_eq!(f.code.name(), "Client");
    assert_eq!(f.reason, "No such person");
    assert!(
        !text.contains(pr::NOT_FOUND),
        "no personal code in faults: {text}"
    );

    // The wrong operation, and the wrong SOAP version.
    let wrong_op = get_person_11(pr::ACTIVE).replace("GetPerson", "DeletePerson");
    let (status, _, text) = post_soap(&env, "text/xml", wrong_op).await;
    assert_eq!(status, 400);
    assert_eq!(fault_of(&text).code.name(), "Client");
    let v12 = get_person_11(pr::ACTIVE).replace(
        "http://schemas.xmlsoap.org/soap/envelope/",
        "http://www.w3.org/2003/05/soap-envelope",
    );
    let (status, _, text) = post_soap(&env, "application/soap+xml", v12).await;
    assert_eq!(status, 400);
    assert_eq!(fault_of(&text).code.name(), "VersionMismatch");

    // The generated WSDL names the operation and the endpoint.
    let wsdl = env
        .http
        .get(format!("{}/soap/person?wsdl", env.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(wsdl.contains(r#"<xsd:element name="GetPerson">"#), "{wsdl}");
    assert!(
        wsdl.contains(&format!(
            r#"location="http://{}/soap/person""#,
            env.running.addr
        )),
        "{wsdl}"
    );
    env.stop().await;
}

const XXE: &str = r#"<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<SOAP-ENV:Envelope xmlns:SOAP-ENV="http://schemas.xmlsoap.org/soap/envelope/"><SOAP-ENV:Body><GetPerson xmlns="urn:x-tilts:test:v1"><PersonalCode>&xxe;</PersonalCode></GetPerson></SOAP-ENV:Body></SOAP-ENV:Envelope>"#;

fn billion_laughs() -> String {
    let mut dtd = String::from(r#"<!ENTITY lol "lol">"#);
    for i in 1..10 {
        let prev = if i == 1 {
            "lol".to_string()
        } else {
            format!("lol{}", i - 1)
        };
        dtd.push_str(&format!(
            r#"<!ENTITY lol{i} "{}">"#,
            format!("&{prev};").repeat(10)
        ));
    }
    format!(
        r#"<?xml version="1.0"?><!DOCTYPE lolz [{dtd}]><SOAP-ENV:Envelope xmlns:SOAP-ENV="http://schemas.xmlsoap.org/soap/envelope/"><SOAP-ENV:Body><GetPerson xmlns="urn:x-tilts:test:v1"><PersonalCode>&lol9;</PersonalCode></GetPerson></SOAP-ENV:Body></SOAP-ENV:Envelope>"#
    )
}

fn deep(levels: usize) -> String {
    format!("{}{}", "<a>".repeat(levels), "</a>".repeat(levels))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xml_attacks_are_refused_with_400() {
    let env = Env::start().await;
    for (what, body) in [
        ("XXE", XXE.to_string()),
        ("billion laughs", billion_laughs()),
        ("deep nesting", deep(100_000)),
    ] {
        let (status, _, text) = post_soap(&env, "text/xml", body.clone()).await;
        assert_eq!(status, 400, "{what} on the SOAP endpoint: {text}");
        assert_eq!(fault_of(&text).code.name(), "Client", "{what}");
        assert!(
            !text.contains("root:"),
            "{what}: nothing was read from /etc/passwd"
        );

        let resp = env
            .http
            .post(format!("{}/t/xml-in", env.base))
            .header("content-type", "application/xml")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{what} on a REST route");
        let problem: Value = resp.json().await.unwrap();
        assert_eq!(problem["type"], "urn:tilts:problem:malformed-xml", "{what}");
    }
    // Nothing reached the registry.
    assert!(env.pr().requests().is_empty());
    // Ordinary XML on the REST route is read as data.
    let resp = env
        .http
        .post(format!("{}/t/xml-in", env.base))
        .header("content-type", "application/xml")
        .body(r#"<case id="7"><status>open</status></case>"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v, json!({"case": {"@id": "7", "status": "open"}}));
    env.stop().await;
}
