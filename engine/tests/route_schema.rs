//! The published JSON Schema of the route file (docs/routes.schema.json) is what `tilts schema`
//! prints, and the shipped routes.yaml is valid against it, so editors never disagree with tilts.

use std::path::Path;

use tilts_engine::config::{types::RouteFile, yaml};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

#[test]
fn published_schema_is_up_to_date() {
    let generated = serde_json::to_value(schemars::schema_for!(RouteFile)).unwrap();
    let text = std::fs::read_to_string(repo().join("docs/routes.schema.json")).unwrap();
    let published: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(
        generated == published,
        "docs/routes.schema.json is stale: run `cargo run -- schema > docs/routes.schema.json`"
    );
}

#[test]
fn shipped_routes_are_valid_against_the_schema() {
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("docs/routes.schema.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let routes =
        yaml::parse(&std::fs::read_to_string(repo().join("routes.yaml")).unwrap()).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&routes.value)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    // And the schema rejects what the checker rejects: an unknown field in a route.
    let mut broken = routes.value.clone();
    broken["routes"][0]["form"] = serde_json::json!({});
    assert!(!validator.is_valid(&broken));
}
