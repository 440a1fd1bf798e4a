//! The compiled configuration: what `tilts check` produces and `tilts serve` runs.
//!
//! Everything here is resolved and compiled: systems are clients, templates are registered,
//! schemas and conditions compiled. Running a route never parses configuration.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method};
use tilts_adapters::http::HttpSystem;
use tilts_adapters::profile::{XRoadClient, XRoadService};
use tilts_adapters::soap::SoapVersion;

use crate::config::types::{Delivery, ServerSettings, StatusPattern};
use crate::expr::Expr;
use crate::mapping::{Mappings, TemplateRef};
use crate::retry::RetryPolicy;
use crate::schema::Schema;

/// A checked, compiled route file.
#[derive(Debug)]
pub struct Plan {
    pub settings: ServerSettings,
    pub systems: HashMap<String, Arc<System>>,
    pub routes: Vec<Arc<Route>>,
    pub mappings: Mappings,
}

/// A declared peer: its HTTP client and how requests to it are framed.
#[derive(Debug)]
pub struct System {
    pub name: String,
    pub http: HttpSystem,
    /// SOAP framing, when the system speaks SOAP (always set for `x_road` and `viss`).
    pub soap: Option<Soap>,
    pub profile: Option<Profile>,
}

/// SOAP framing of a system.
#[derive(Debug, Clone, Copy)]
pub struct Soap {
    pub version: SoapVersion,
    /// Send WS-Addressing headers.
    pub addressing: bool,
}

/// A compiled exchange profile.
#[derive(Debug)]
pub enum Profile {
    XRoad {
        client: XRoadClient,
        service: Option<XRoadService>,
    },
    XRoadRest {
        client: XRoadClient,
        service: Option<XRoadService>,
    },
    Viss {
        e_service: String,
        sender: String,
        destination: String,
        message_type: Option<String>,
        test: bool,
        start_action: String,
        submit_action: String,
    },
    Dagr {
        permission: Option<String>,
    },
}

/// How a route receives requests.
#[derive(Debug)]
pub enum Ingress {
    Http,
    Soap(SoapIngress),
}

/// A SOAP endpoint.
#[derive(Debug)]
pub struct SoapIngress {
    pub version: SoapVersion,
    pub operation: String,
    pub namespace: String,
    /// A WSDL file's text (with `{{address}}` to fill in), or `None` to generate one.
    pub wsdl: Option<String>,
}

/// A compiled route.
#[derive(Debug)]
pub struct Route {
    pub id: String,
    pub owner: String,
    pub description: Option<String>,
    pub method: Method,
    /// Path in axum's syntax (`/v1/cases/{id}`).
    pub path: String,
    pub ingress: Ingress,
    pub steps: Vec<Step>,
    pub to: Option<Call>,
    pub delivery: Delivery,
    /// Queued routes: template of the ordering key.
    pub ordering_key: Option<TemplateRef>,
    /// Queued routes: retry policy of deliveries.
    pub retry: RetryPolicy,
    /// Queued routes: most deliveries at once per process.
    pub concurrency: usize,
    /// Sync routes: store the message for later delivery when `to` fails retryably.
    pub fallback_queue: bool,
}

/// A compiled step. `label` is the step's place for errors and logs, e.g. `steps[2].call`.
#[derive(Debug)]
pub enum Step {
    Validate {
        label: String,
        schema: Arc<Schema>,
    },
    Map {
        label: String,
        template: TemplateRef,
        as_name: Option<String>,
    },
    Call {
        label: String,
        call: Box<Call>,
    },
    Choice {
        label: String,
        branches: Vec<Branch>,
    },
    Respond {
        label: String,
        respond: Respond,
    },
}

/// A request to a system (a `call` step or a route's `to`).
#[derive(Debug)]
pub struct Call {
    pub system: Arc<System>,
    pub method: Method,
    /// Path template (URL-escaped); `None` when the path is empty.
    pub path: Option<TemplateRef>,
    /// Body template; `None` sends the current message as JSON (nothing for GET/DELETE).
    pub body: Option<TemplateRef>,
    pub headers: Vec<(HeaderName, TemplateRef)>,
    /// Name the answer is kept under (`None` for a route's `to`).
    pub as_name: Option<String>,
    pub accept: Vec<StatusPattern>,
    pub timeout: Option<Duration>,
    /// SOAP action.
    pub action: Option<String>,
    /// SOAP faults are answers (`faults: accept`).
    pub accept_faults: bool,
    /// X-Road service (the call's, else the system's).
    pub service: Option<XRoadService>,
    /// VISS MessageType (the call's, else the system's).
    pub message_type: Option<String>,
    /// DAGR permission (the call's, else the system's).
    pub permission: Option<String>,
    /// Template of the employee's user id.
    pub user_id: Option<TemplateRef>,
}

/// One branch of a choice; `when: None` is `otherwise`.
#[derive(Debug)]
pub struct Branch {
    pub when: Option<Expr>,
    pub steps: Vec<Step>,
}

/// A compiled `respond`.
#[derive(Debug)]
pub struct Respond {
    pub status: u16,
    pub body: Option<TemplateRef>,
    pub headers: Vec<(HeaderName, TemplateRef)>,
}

impl Plan {
    /// The route with this id.
    pub fn route(&self, id: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| r.id == id)
    }

    /// Whether any route is queued (and so needs the store and workers).
    pub fn has_queued_routes(&self) -> bool {
        self.routes
            .iter()
            .any(|r| r.delivery == Delivery::Queued || r.fallback_queue)
    }
}
