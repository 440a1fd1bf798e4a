//! Describing the routes to the ICT catalogue (PIKTAPS, `server.catalogue`): at start, tilts
//! puts a descriptor of every route (`PUT {catalogue}/descriptors/{system_code}/{route id}`) and
//! withdraws the descriptors of routes it no longer has (`GET` the list, `DELETE` the rest).
//!
//! A descriptor says what the route exposes or consumes: its interface (HTTP method and path,
//! SOAP endpoint and operation, AMQP queue, or timer schedule), owner institution, the systems
//! it talks to, the mapping files it uses with their SHA-256, and a `version` that changes
//! whenever the route's definition or any of its files does (see `check::route_about`), so the
//! catalogue sees a change exactly when a route changes. Publishing runs in the background and
//! retries with backoff while the catalogue is unreachable; it never holds up serving.
//! The contract is in `mappings/contracts/piktaps.openapi.json` and `docs/systems.md`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use serde_json::{Value, json};
use tilts_adapters::contract::DeliveryError;
use tilts_adapters::http::{HttpRequest, HttpSystem};
use tokio::sync::watch;

use crate::plan::{Ingress, Plan, Route};

/// The descriptor of one route (the `Descriptor` schema of the PIKTAPS contract).
pub fn descriptor(route: &Route) -> Value {
    let interface = match &route.ingress {
        Ingress::Http => {
            json!({"protocol": "http", "method": route.method.as_str(), "path": route.path})
        }
        Ingress::Soap(_) => json!({"protocol": "soap", "method": "POST", "path": route.path}),
        Ingress::Amqp { queue, .. } => json!({"protocol": "amqp", "queue": queue}),
        Ingress::Timer(t) => json!({"protocol": "timer", "schedule": t.expression}),
    };
    let direction = match route.ingress {
        Ingress::Timer(_) => "consumes",
        _ => "exposes",
    };
    let mut d = json!({
        "routeId": route.id,
        "name": route.id,
        "owner": route.owner,
        "direction": direction,
        "interface": interface,
        "systems": route.about.systems,
        "schemas": route.about.files.iter().map(|(name, sha)| json!({"name": name, "sha256": sha})).collect::<Vec<_>>(),
        "version": format!("sha256:{}", route.about.version),
        "updatedAt": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    });
    if let Some(text) = &route.description {
        d["description"] = Value::String(text.chars().take(2000).collect());
    }
    d
}

/// Publishes every route's descriptor and withdraws the others. Returns how many descriptors
/// were put and withdrawn.
pub async fn publish(
    plan: &Plan,
    catalogue: &HttpSystem,
    system_code: &str,
) -> Result<(usize, usize), DeliveryError> {
    let json_headers = || {
        vec![(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        )]
    };
    let mut put = 0;
    for route in &plan.routes {
        let body = serde_json::to_vec(&descriptor(route)).unwrap_or_default();
        let resp = catalogue
            .send(HttpRequest {
                method: Method::PUT,
                path: format!("/descriptors/{system_code}/{}", route.id),
                headers: json_headers(),
                body: Some(Bytes::from(body)),
                timeout: None,
            })
            .await?;
        if !(200..300).contains(&resp.status) {
            return Err(resp.into_status_error(catalogue.name()));
        }
        put += 1;
    }
    let resp = catalogue
        .send(HttpRequest {
            method: Method::GET,
            path: format!("/descriptors/{system_code}"),
            headers: Vec::new(),
            body: None,
            timeout: None,
        })
        .await?;
    if !(200..300).contains(&resp.status) {
        return Err(resp.into_status_error(catalogue.name()));
    }
    let listed: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
    let items = listed
        .as_array()
        .or_else(|| listed["items"].as_array())
        .cloned()
        .unwrap_or_default();
    let mut withdrawn = 0;
    for item in items {
        let Some(id) = item["routeId"].as_str() else {
            continue;
        };
        if plan.route(id).is_some() {
            continue;
        }
        let resp = catalogue
            .send(HttpRequest {
                method: Method::DELETE,
                path: format!("/descriptors/{system_code}/{id}"),
                headers: Vec::new(),
                body: None,
                timeout: None,
            })
            .await?;
        if !(200..300).contains(&resp.status) && resp.status != 404 {
            return Err(resp.into_status_error(catalogue.name()));
        }
        withdrawn += 1;
    }
    Ok((put, withdrawn))
}

/// The background task of `tilts serve`: publish, retrying with backoff until it succeeds.
pub async fn run(plan: Arc<Plan>, mut stop: watch::Receiver<bool>) {
    let Some(cfg) = plan.settings.catalogue.clone() else {
        return;
    };
    let Some(catalogue) = plan
        .systems
        .get(&cfg.system)
        .and_then(|s| s.http())
        .cloned()
    else {
        return;
    };
    let mut wait = Duration::from_secs(1);
    loop {
        match publish(&plan, &catalogue, &cfg.system_code).await {
            Ok((put, withdrawn)) => {
                tracing::info!(system = %cfg.system, put, withdrawn, "routes described in the catalogue");
                return;
            }
            Err(e) => {
                tracing::warn!(system = %cfg.system, error = %e, retry_in_s = wait.as_secs(), "cannot describe the routes in the catalogue yet");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        wait = (wait * 2).min(Duration::from_secs(300));
    }
}
