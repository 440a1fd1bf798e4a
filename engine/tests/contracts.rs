//! The published contracts of the VPVKAC IS, PIKTAPS and Riga's client-information system
//! (`mappings/contracts/*.openapi.json`) and their simulators (`tilts_adapters::sim::{vpvkac,
//! piktaps, riga}`) agree: every example in each OpenAPI file is valid against its schema, and
//! every answer the simulators give, success or problem, is valid against the schema the
//! contract documents for that path, method, status and media type (an undocumented status
//! fails the test). Request bodies are checked too: what the simulator accepts the contract
//! accepts, and bodies the contract refuses the simulator refuses with 422.
//!
//! jsonschema has remote references off (default features off): `#/components/schemas/...`
//! references resolve because each schema is validated inside a document that embeds the
//! contract's `components`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;

use axum::Router;
use serde_json::{Value, json};
use tilts_adapters::sim::{SimServer, piktaps, population_register as pr, riga, vpvkac};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// One OpenAPI document, and which (path, method, status) answers the test saw.
struct Contract {
    name: &'static str,
    doc: Value,
    seen: BTreeSet<(String, String, u16)>,
}

impl Contract {
    fn load(name: &'static str) -> Contract {
        let path = repo().join("mappings/contracts").join(name);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        let doc: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(doc["openapi"], "3.1.0", "{name}");
        assert!(doc["components"]["schemas"].is_object(), "{name}");
        Contract {
            name,
            doc,
            seen: BTreeSet::new(),
        }
    }

    /// A validator for `schema`, inside a document holding the contract's components so that
    /// local `#/components/schemas/...` references resolve.
    fn validator(&self, schema: &Value) -> jsonschema::Validator {
        let root = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "allOf": [schema],
            "components": self.doc["components"],
        });
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(&root)
            .unwrap_or_else(|e| panic!("{}: schema {schema} does not compile: {e}", self.name))
    }

    fn component(name: &str) -> Value {
        json!({"$ref": format!("#/components/schemas/{name}")})
    }

    fn errors(&self, schema: &Value, instance: &Value) -> Vec<String> {
        self.validator(schema)
            .iter_errors(instance)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect()
    }

    fn assert_valid(&self, schema: &Value, instance: &Value, what: &str) {
        let errors = self.errors(schema, instance);
        assert!(
            errors.is_empty(),
            "{}: {what} is not valid: {errors:#?}\n{instance:#}",
            self.name
        );
    }

    /// Validates every example in the document; returns how many there were.
    fn check_examples(&self) -> usize {
        let mut count = 0;
        // Named component schemas, each with its own `examples` array.
        let schemas = self.doc["components"]["schemas"].as_object().unwrap();
        for (name, schema) in schemas {
            // Every component compiles on its own (all its references resolve).
            let component = Self::component(name);
            self.validator(&component);
            for (i, example) in schema["examples"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                self.assert_valid(&component, example, &format!("{name}.examples[{i}]"));
                count += 1;
            }
        }
        // Media types and parameters: a `schema` beside `example` or `examples`.
        let mut stack = vec![("#".to_owned(), &self.doc)];
        while let Some((at, node)) = stack.pop() {
            match node {
                Value::Object(map) => {
                    if let Some(schema) = map.get("schema") {
                        if let Some(example) = map.get("example") {
                            self.assert_valid(schema, example, &format!("{at}/example"));
                            count += 1;
                        }
                        if let Some(examples) = map.get("examples").and_then(Value::as_object) {
                            for (key, example) in examples {
                                let value = &example["value"];
                                assert!(
                                    !value.is_null(),
                                    "{}: {at}/examples/{key} has no value",
                                    self.name
                                );
                                self.assert_valid(schema, value, &format!("{at}/examples/{key}"));
                                count += 1;
                            }
                        }
                    }
                    for (k, v) in map {
                        if at == "#/components" && k == "schemas" {
                            continue;
                        }
                        stack.push((format!("{at}/{k}"), v));
                    }
                }
                Value::Array(items) => {
                    for (i, v) in items.iter().enumerate() {
                        stack.push((format!("{at}/{i}"), v));
                    }
                }
                _ => {}
            }
        }
        count
    }

    /// Every operation's request body and success answers carry at least one example.
    fn assert_operations_have_examples(&self) {
        for (path, item) in self.doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                if !["get", "put", "post", "delete"].contains(&method.as_str()) {
                    continue;
                }
                let has_examples = |content: &Value| {
                    content
                        .as_object()
                        .is_some_and(|c| c.values().all(|m| m["examples"].is_object()))
                };
                if !op["requestBody"].is_null() {
                    assert!(
                        has_examples(&op["requestBody"]["content"]),
                        "{}: {method} {path} request body has no examples",
                        self.name
                    );
                }
                for (status, response) in op["responses"].as_object().unwrap() {
                    if !response["content"].is_null() {
                        assert!(
                            has_examples(&response["content"]),
                            "{}: {method} {path} {status} has no examples",
                            self.name
                        );
                    }
                }
            }
        }
    }

    fn operation(&self, path: &str, method: &str) -> &Value {
        let op = &self.doc["paths"][path][method];
        assert!(op.is_object(), "{}: no {method} {path}", self.name);
        op
    }

    /// Asserts that `body` is a valid request body of the operation, or an invalid one.
    fn request(&self, path: &str, method: &str, body: &Value, valid: bool) {
        let schema =
            &self.operation(path, method)["requestBody"]["content"]["application/json"]["schema"];
        let errors = self.errors(schema, body);
        assert_eq!(
            errors.is_empty(),
            valid,
            "{}: {method} {path} request {body} should be {}: {errors:?}",
            self.name,
            if valid { "valid" } else { "invalid" }
        );
    }

    /// Checks one simulator answer against the contract; returns its status and JSON body
    /// (`null` for none).
    async fn answer(
        &mut self,
        path: &str,
        method: &str,
        response: reqwest::Response,
    ) -> (u16, Value) {
        let status = response.status().as_u16();
        let media = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or_default().trim().to_owned());
        let text = response.text().await.unwrap();
        let documented = self.operation(path, method)["responses"][status.to_string()].clone();
        assert!(
            documented.is_object(),
            "{}: {method} {path} answered {status}, which the contract does not document: {text}",
            self.name
        );
        self.seen
            .insert((path.to_owned(), method.to_owned(), status));
        let Some(media) = media.filter(|_| !text.is_empty()) else {
            assert!(
                documented["content"].is_null(),
                "{}: {method} {path} {status} has no body, the contract documents one",
                self.name
            );
            return (status, Value::Null);
        };
        let schema = &documented["content"][&media]["schema"];
        assert!(
            schema.is_object(),
            "{}: {method} {path} {status} answered {media}, which the contract does not document",
            self.name
        );
        let body: Value = serde_json::from_str(&text).unwrap();
        self.assert_valid(
            schema,
            &body,
            &format!("the answer to {method} {path} ({status})"),
        );
        (status, body)
    }

    /// Asserts that every documented status of the listed operations was seen, except those in
    /// `unexercised`.
    fn assert_covered(&self, operations: &[(&str, &str)], unexercised: &[(&str, &str, u16)]) {
        for (path, method) in operations {
            for status in self.operation(path, method)["responses"]
                .as_object()
                .unwrap()
                .keys()
            {
                let status: u16 = status.parse().unwrap();
                let key = (path.to_string(), method.to_string(), status);
                if unexercised.contains(&(path, method, status)) {
                    continue;
                }
                assert!(
                    self.seen.contains(&key),
                    "{}: the test never saw {method} {path} answer {status}",
                    self.name
                );
            }
        }
    }
}

async fn start(name: &str, router: Router) -> SimServer {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    SimServer::start(name, addr, router).await.unwrap()
}

#[test]
fn every_example_matches_its_schema() {
    for name in [
        "vpvkac-is.openapi.json",
        "piktaps.openapi.json",
        "riga-clients.openapi.json",
    ] {
        let contract = Contract::load(name);
        let count = contract.check_examples();
        assert!(count >= 20, "{name}: only {count} examples");
        contract.assert_operations_have_examples();
    }
}

#[test]
fn schemas_refuse_what_the_rules_refuse() {
    let vpvkac = Contract::load("vpvkac-is.openapi.json");
    let change = Contract::component("StatusChange");
    let ok = json!({"status": "received", "changedAt": "2026-03-02T09:20:00+02:00",
        "institution": {"regNo": vpvkac::SOCIAL_SERVICE}});
    assert!(vpvkac.errors(&change, &ok).is_empty());
    let mut early_result = ok.clone();
    early_result["result"] = json!({"decision": "granted"});
    assert!(!vpvkac.errors(&change, &early_result).is_empty());
    let mut bad_time = ok.clone();
    bad_time["changedAt"] = json!("02.03.2026");
    assert!(!vpvkac.errors(&change, &bad_time).is_empty());

    // The case document is the shape the shipped application route validates.
    let submitted: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("mappings/applications/submitted.schema.json"))
            .unwrap(),
    )
    .unwrap();
    let document = &vpvkac.doc["components"]["schemas"]["CaseDocument"];
    assert_eq!(document["required"], submitted["required"]);
    let example = &document["examples"][0];
    let shipped = jsonschema::validator_for(&submitted).unwrap();
    assert!(
        shipped.is_valid(example),
        "the shipped route accepts the documented case"
    );

    let piktaps = Contract::load("piktaps.openapi.json");
    let interface = Contract::component("Interface");
    assert!(
        piktaps
            .errors(&interface, &json!({"protocol": "amqp", "queue": "q"}))
            .is_empty()
    );
    assert!(
        !piktaps
            .errors(&interface, &json!({"protocol": "http", "path": "/x"}))
            .is_empty()
    );
    assert!(
        !piktaps
            .errors(&interface, &json!({"protocol": "timer"}))
            .is_empty()
    );
}

#[tokio::test]
async fn vpvkac_simulator_answers_match_the_contract() {
    let mut contract = Contract::load("vpvkac-is.openapi.json");
    let (router, state) = vpvkac::router_with_state();
    let sim = start("vpvkac-is", router).await;
    let c = reqwest::Client::new();
    let base = format!("{}{}", sim.url(), vpvkac::BASE_PATH);
    let services = "/services";
    let status = "/cases/{caseId}/status";
    let history = "/cases/{caseId}/history";

    for query in ["", "?institution=90001263019&channel=post", "?channel=fax"] {
        let r = c
            .get(format!("{base}/services{query}"))
            .bearer_auth(vpvkac::TOKEN)
            .send()
            .await
            .unwrap();
        contract.answer(services, "get", r).await;
    }
    let r = c.get(format!("{base}/services")).send().await.unwrap();
    assert_eq!(contract.answer(services, "get", r).await.0, 401);

    let case = "VPVKAC-2026-000123";
    let post = |case: &str, body: &Value, id: Option<&str>| {
        let mut req = c
            .post(format!("{base}/cases/{case}/status"))
            .bearer_auth(vpvkac::TOKEN)
            .json(body);
        if let Some(id) = id {
            req = req.header("X-Tilts-Message-Id", id);
        }
        req.send()
    };
    let received = json!({"status": "received", "changedAt": "2026-03-02T09:20:00+02:00",
        "institution": {"regNo": vpvkac::SOCIAL_SERVICE, "caseNumber": "SD-2026-000123"}});
    let decided = json!({"status": "decided", "changedAt": "2026-03-20T14:30:00+02:00",
        "institution": {"regNo": vpvkac::SOCIAL_SERVICE},
        "comment": "Lēmums nosūtīts uz e-adresi.",
        "result": {"decision": "granted", "documentUrl": "https://docs.lielupe.example.lv/d/1.pdf"}});
    let closed = json!({"status": "closed", "changedAt": "2026-03-21T08:00:00+02:00",
        "institution": {"regNo": vpvkac::SOCIAL_SERVICE}});
    for body in [&received, &decided, &closed] {
        contract.request(status, "post", body, true);
    }
    for (body, id) in [
        (&received, Some("m-1")),
        (&received, Some("m-1")),
        (&decided, None),
        (&closed, None),
    ] {
        let (code, _) = contract
            .answer(status, "post", post(case, body, id).await.unwrap())
            .await;
        assert_eq!(code, 200);
    }
    assert_eq!(state.history(case).len(), 3, "the repeat added nothing");
    // Closed; a reused message id; an unknown case; a malformed id; not JSON; no token.
    let (code, _) = contract
        .answer(status, "post", post(case, &received, None).await.unwrap())
        .await;
    assert_eq!(code, 409);
    let (code, _) = contract
        .answer(
            status,
            "post",
            post("VPVKAC-2026-000124", &decided, Some("m-1"))
                .await
                .unwrap(),
        )
        .await;
    assert_eq!(code, 409);
    let (code, _) = contract
        .answer(
            status,
            "post",
            post(vpvkac::UNKNOWN_CASE, &received, None).await.unwrap(),
        )
        .await;
    assert_eq!(code, 404);
    let (code, _) = contract
        .answer(
            status,
            "post",
            post("CASE-1", &received, None).await.unwrap(),
        )
        .await;
    assert_eq!(code, 400);
    let r = c
        .post(format!("{base}/cases/{case}/status"))
        .bearer_auth(vpvkac::TOKEN)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(contract.answer(status, "post", r).await.0, 415);
    let r = c
        .post(format!("{base}/cases/{case}/status"))
        .json(&received)
        .send()
        .await
        .unwrap();
    assert_eq!(contract.answer(status, "post", r).await.0, 401);
    // Bodies the contract refuses, the simulator refuses.
    let invalid = [
        json!({"status": "lost", "changedAt": "2026-03-02T09:20:00+02:00", "institution": {"regNo": vpvkac::SOCIAL_SERVICE}}),
        json!({"status": "received", "changedAt": "2026-03-02T09:20:00+02:00", "institution": {"regNo": vpvkac::SOCIAL_SERVICE}, "result": {"decision": "granted"}}),
        json!({"status": "received", "changedAt": "2026-03-02T09:20:00+02:00", "institution": {"regNo": vpvkac::SOCIAL_SERVICE}, "priority": "high"}),
        json!({"status": "decided", "changedAt": "2026-03-02T09:20:00+02:00", "institution": {"regNo": vpvkac::SOCIAL_SERVICE}, "result": {"decision": "granted", "documentUrl": "http://insecure.example.lv/d.pdf"}}),
        json!({"status": "received", "institution": {"regNo": vpvkac::SOCIAL_SERVICE}}),
    ];
    for body in &invalid {
        contract.request(status, "post", body, false);
        let (code, _) = contract
            .answer(
                status,
                "post",
                post("VPVKAC-2026-000125", body, None).await.unwrap(),
            )
            .await;
        assert_eq!(code, 422, "{body}");
    }

    for case in [case, vpvkac::DECIDED_CASE, "VPVKAC-2026-000777", "bad"] {
        let r = c
            .get(format!("{base}/cases/{case}/history"))
            .bearer_auth(vpvkac::TOKEN)
            .send()
            .await
            .unwrap();
        contract.answer(history, "get", r).await;
    }
    let r = c
        .get(format!("{base}/cases/{case}/history"))
        .send()
        .await
        .unwrap();
    contract.answer(history, "get", r).await;

    contract.assert_covered(
        &[(services, "get"), (status, "post"), (history, "get")],
        &[],
    );
}

#[tokio::test]
async fn piktaps_simulator_answers_match_the_contract() {
    let mut contract = Contract::load("piktaps.openapi.json");
    let (router, state) = piktaps::router_with_state();
    let sim = start("piktaps", router).await;
    let c = reqwest::Client::new();
    let base = format!("{}{}/descriptors", sim.url(), piktaps::BASE_PATH);
    let list = "/descriptors/{systemCode}";
    let one = "/descriptors/{systemCode}/{routeId}";
    let system = piktaps::SYSTEM_CODE;

    // The contract's own examples, published through the simulator.
    let examples = contract.doc["components"]["schemas"]["Descriptor"]["examples"]
        .as_array()
        .unwrap()
        .clone();
    assert!(examples.len() >= 3);
    let put = |route: &str, body: &Value, id: Option<&str>| {
        let mut req = c
            .put(format!("{base}/{system}/{route}"))
            .bearer_auth(piktaps::TOKEN)
            .json(body);
        if let Some(id) = id {
            req = req.header("X-Tilts-Message-Id", id);
        }
        req.send()
    };
    for example in &examples {
        let route = example["routeId"].as_str().unwrap();
        let (code, body) = contract
            .answer(one, "put", put(route, example, None).await.unwrap())
            .await;
        assert_eq!((code, body["revision"].clone()), (201, json!(1)));
        let (code, body) = contract
            .answer(one, "put", put(route, example, None).await.unwrap())
            .await;
        assert_eq!((code, body["changed"].clone()), (200, json!(false)));
    }
    let mut changed = examples[0].clone();
    changed["version"] =
        json!("sha256:0000000000000000000000000000000000000000000000000000000000000002");
    let route = changed["routeId"].as_str().unwrap().to_owned();
    let (code, body) = contract
        .answer(
            one,
            "put",
            put(&route, &changed, Some("p-1")).await.unwrap(),
        )
        .await;
    assert_eq!(
        (code, body["revision"].clone(), body["changed"].clone()),
        (200, json!(2), json!(true))
    );
    let (code, _) = contract
        .answer(
            one,
            "put",
            put(&route, &examples[0], Some("p-1")).await.unwrap(),
        )
        .await;
    assert_eq!(code, 409);
    assert_eq!(state.descriptor(system, &route).unwrap().revision, 2);

    let mut wrong = examples[0].clone();
    wrong["interface"] = json!({"protocol": "amqp"});
    wrong["colour"] = json!("blue");
    contract.request(one, "put", &wrong, false);
    let (code, _) = contract
        .answer(one, "put", put(&route, &wrong, None).await.unwrap())
        .await;
    assert_eq!(code, 422);
    let (code, _) = contract
        .answer(
            one,
            "put",
            put("bad route", &examples[0], None).await.unwrap(),
        )
        .await;
    assert_eq!(code, 400);
    let r = c
        .put(format!("{base}/{system}/{route}"))
        .bearer_auth(piktaps::TOKEN)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(contract.answer(one, "put", r).await.0, 415);
    let r = c
        .put(format!("{base}/{system}/{route}"))
        .json(&examples[0])
        .send()
        .await
        .unwrap();
    assert_eq!(contract.answer(one, "put", r).await.0, 401);

    for path in [system, "OTHER", "lower"] {
        let r = c
            .get(format!("{base}/{path}"))
            .bearer_auth(piktaps::TOKEN)
            .send()
            .await
            .unwrap();
        contract.answer(list, "get", r).await;
    }
    let r = c.get(format!("{base}/{system}")).send().await.unwrap();
    contract.answer(list, "get", r).await;
    for path in [
        format!("{system}/{route}"),
        format!("{system}/absent"),
        "x/y".to_owned(),
    ] {
        let r = c
            .get(format!("{base}/{path}"))
            .bearer_auth(piktaps::TOKEN)
            .send()
            .await
            .unwrap();
        contract.answer(one, "get", r).await;
    }
    let r = c
        .get(format!("{base}/{system}/{route}"))
        .send()
        .await
        .unwrap();
    contract.answer(one, "get", r).await;

    let delete = |path: String, id: Option<&'static str>, token: bool| {
        let mut req = c.delete(format!("{base}/{path}"));
        if token {
            req = req.bearer_auth(piktaps::TOKEN);
        }
        if let Some(id) = id {
            req = req.header("X-Tilts-Message-Id", id);
        }
        req.send()
    };
    let target = format!("{system}/{route}");
    for (path, id, token, expected) in [
        (target.clone(), Some("d-1"), true, 204),
        (target.clone(), Some("d-1"), true, 204),
        (target.clone(), None, true, 404),
        (format!("{system}/person-lookup"), Some("d-1"), true, 409),
        ("x/y".to_owned(), None, true, 400),
        (target.clone(), None, false, 401),
    ] {
        let (code, _) = contract
            .answer(one, "delete", delete(path, id, token).await.unwrap())
            .await;
        assert_eq!(code, expected);
    }

    contract.assert_covered(
        &[(list, "get"), (one, "put"), (one, "get"), (one, "delete")],
        &[],
    );
}

#[tokio::test]
async fn riga_simulator_answers_match_the_contract() {
    let mut contract = Contract::load("riga-clients.openapi.json");
    let (router, state) = riga::router_with_state();
    let sim = start("riga-clients", router).await;
    let c = reqwest::Client::new();
    let token_path = "/oauth/token";
    let search = "/clients/search";
    let interactions = "/clients/{clientId}/interactions";
    assert_eq!(riga::TOKEN_PATH, token_path);

    let form = |body: &'static str, basic: Option<(&str, &str)>| {
        let mut req = c
            .post(format!("{}{token_path}", sim.url()))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some((id, secret)) = basic {
            req = req.basic_auth(id, Some(secret));
        }
        req.send()
    };
    let creds = Some((riga::CLIENT_ID, riga::CLIENT_SECRET));
    let (code, token) = contract
        .answer(
            token_path,
            "post",
            form("grant_type=client_credentials", creds).await.unwrap(),
        )
        .await;
    assert_eq!(code, 200);
    let token = token["access_token"].as_str().unwrap().to_owned();
    for (body, basic, expected) in [
        ("grant_type=password", creds, 400),
        ("grant_type=client_credentials&scope=admin", creds, 400),
        (
            "grant_type=client_credentials",
            Some((riga::CLIENT_ID, "wrong")),
            401,
        ),
    ] {
        let (code, _) = contract
            .answer(token_path, "post", form(body, basic).await.unwrap())
            .await;
        assert_eq!(code, expected, "{body}");
    }

    let base = format!("{}{}", sim.url(), riga::BASE_PATH);
    let find = |body: Value| {
        c.post(format!("{base}/clients/search"))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };
    for (code_sent, expected) in [
        (pr::ACTIVE, 200),
        (pr::DECEASED, 200),
        (pr::NEW_FORM, 200),
        (riga::NO_PROFILE, 404),
        (pr::INVALID, 422),
    ] {
        let body = json!({"personalCode": code_sent});
        contract.request(search, "post", &body, true);
        let (code, profile) = contract
            .answer(search, "post", find(body).await.unwrap())
            .await;
        assert_eq!(code, expected);
        if code == 200 {
            assert_eq!(profile["personalCode"], code_sent);
        }
    }
    let r = c
        .post(format!("{base}/clients/search"))
        .bearer_auth(&token)
        .body("{")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(contract.answer(search, "post", r).await.0, 400);
    let r = c
        .post(format!("{base}/clients/search"))
        .bearer_auth(&token)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(contract.answer(search, "post", r).await.0, 415);
    let r = c
        .post(format!("{base}/clients/search"))
        .bearer_auth("forged")
        .json(&json!({"personalCode": pr::ACTIVE}))
        .send()
        .await
        .unwrap();
    assert_eq!(contract.answer(search, "post", r).await.0, 401);

    let examples = contract.doc["components"]["schemas"]["Interaction"]["examples"]
        .as_array()
        .unwrap()
        .clone();
    let post = |client: &str, body: &Value, id: Option<&str>| {
        let mut req = c
            .post(format!("{base}/clients/{client}/interactions"))
            .bearer_auth(&token)
            .json(body);
        if let Some(id) = id {
            req = req.header("X-Tilts-Message-Id", id);
        }
        req.send()
    };
    for (i, example) in examples.iter().enumerate() {
        let (code, _) = contract
            .answer(
                interactions,
                "post",
                post(riga::ACTIVE_CLIENT, example, Some(["i-1", "i-2", "i-3"][i]))
                    .await
                    .unwrap(),
            )
            .await;
        assert_eq!(code, 201);
    }
    let (code, _) = contract
        .answer(
            interactions,
            "post",
            post(riga::ACTIVE_CLIENT, &examples[0], Some("i-1"))
                .await
                .unwrap(),
        )
        .await;
    assert_eq!(code, 201, "the first answer again");
    assert_eq!(
        state.interactions(riga::ACTIVE_CLIENT).len(),
        examples.len()
    );
    let (code, _) = contract
        .answer(
            interactions,
            "post",
            post(riga::ACTIVE_CLIENT, &examples[1], Some("i-1"))
                .await
                .unwrap(),
        )
        .await;
    assert_eq!(code, 409);
    let mut leaky = examples[0].clone();
    leaky["summary"] = json!(format!("Klients {} zvanīja", pr::ACTIVE));
    let mut unknown_field = examples[0].clone();
    unknown_field["personalCode"] = json!(pr::ACTIVE);
    let mut no_summary = examples[0].clone();
    no_summary.as_object_mut().unwrap().remove("summary");
    for body in [&unknown_field, &no_summary] {
        contract.request(interactions, "post", body, false);
    }
    for body in [&leaky, &unknown_field, &no_summary] {
        let (code, problem) = contract
            .answer(
                interactions,
                "post",
                post(riga::ACTIVE_CLIENT, body, None).await.unwrap(),
            )
            .await;
        assert_eq!(code, 422);
        assert!(!problem.to_string().contains(&pr::ACTIVE[7..]), "{problem}");
    }
    for (client, expected) in [(riga::UNKNOWN_CLIENT, 404), ("not-an-id", 400)] {
        let (code, _) = contract
            .answer(
                interactions,
                "post",
                post(client, &examples[0], None).await.unwrap(),
            )
            .await;
        assert_eq!(code, expected);
    }
    let r = c
        .post(format!(
            "{base}/clients/{}/interactions",
            riga::ACTIVE_CLIENT
        ))
        .bearer_auth(&token)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(contract.answer(interactions, "post", r).await.0, 415);
    let r = c
        .post(format!(
            "{base}/clients/{}/interactions",
            riga::ACTIVE_CLIENT
        ))
        .json(&examples[0])
        .send()
        .await
        .unwrap();
    assert_eq!(contract.answer(interactions, "post", r).await.0, 401);

    for (client, auth, expected) in [
        (riga::ACTIVE_CLIENT, true, 200),
        (riga::NEW_FORM_CLIENT, true, 200),
        (riga::UNKNOWN_CLIENT, true, 404),
        ("x", true, 400),
        (riga::ACTIVE_CLIENT, false, 401),
    ] {
        let mut req = c.get(format!("{base}/clients/{client}/interactions"));
        if auth {
            req = req.bearer_auth(&token);
        }
        let (code, body) = contract
            .answer(interactions, "get", req.send().await.unwrap())
            .await;
        assert_eq!(code, expected);
        assert!(
            !body.to_string().contains(&pr::ACTIVE[7..]),
            "no personal code in a history"
        );
    }

    contract.assert_covered(
        &[
            (token_path, "post"),
            (search, "post"),
            (interactions, "post"),
            (interactions, "get"),
        ],
        // Only with 10,000 live tokens.
        &[(token_path, "post", 503)],
    );
}
