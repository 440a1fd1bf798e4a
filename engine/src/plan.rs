//! The compiled configuration: what `tilts check` produces and `tilts serve` runs.
//!
//! Everything here is resolved and compiled: systems are clients, templates are registered,
//! schemas and conditions compiled. Running a route never parses configuration.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method};
use tilts_adapters::amqp::{AmqpSpec, AmqpSystem};
use tilts_adapters::contract::DeliveryError;
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

/// A declared peer: how to reach it and how requests to it are framed.
#[derive(Debug)]
pub struct System {
    pub name: String,
    pub transport: Transport,
    /// SOAP framing, when the system speaks SOAP (always set for `x_road` and `viss`).
    pub soap: Option<Soap>,
    pub profile: Option<Profile>,
}

/// How a system is reached.
#[derive(Debug)]
pub enum Transport {
    Http(HttpSystem),
    Amqp(Arc<AmqpHandle>),
}

impl System {
    /// The HTTP client, for systems reached over HTTP (the checker lets only those be called
    /// with HTTP semantics).
    pub fn http(&self) -> Option<&HttpSystem> {
        match &self.transport {
            Transport::Http(h) => Some(h),
            Transport::Amqp(_) => None,
        }
    }

    /// The broker, for AMQP systems.
    pub fn amqp(&self) -> Option<&Arc<AmqpHandle>> {
        match &self.transport {
            Transport::Amqp(a) => Some(a),
            Transport::Http(_) => None,
        }
    }
}

/// A broker connection made on first use (so `tilts check` never connects) and kept: the
/// adapter reconnects by itself after that. A failed first connect is retried on the next use.
pub struct AmqpHandle {
    pub spec: AmqpSpec,
    conn: tokio::sync::OnceCell<AmqpSystem>,
    /// Set by `tilts test`: publishes are recorded here (and answered from the script)
    /// instead of going to a broker.
    capture: std::sync::OnceLock<Arc<Capture>>,
}

/// What a captured broker records, and how it answers (`tilts test`).
#[derive(Debug, Default)]
pub struct Capture {
    pub published: std::sync::Mutex<Vec<tilts_adapters::amqp::Outgoing>>,
    /// Scripted outcomes for the next publishes, in order (`None` = confirmed); when empty,
    /// every publish is confirmed.
    pub script: std::sync::Mutex<std::collections::VecDeque<Option<DeliveryError>>>,
}

impl std::fmt::Debug for AmqpHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The spec's URL holds the broker password.
        f.debug_struct("AmqpHandle")
            .field("system", &self.spec.name)
            .field("connected", &self.conn.initialized())
            .finish()
    }
}

impl AmqpHandle {
    pub fn new(spec: AmqpSpec) -> Self {
        AmqpHandle {
            spec,
            conn: tokio::sync::OnceCell::new(),
            capture: std::sync::OnceLock::new(),
        }
    }

    /// Makes this broker a recorder (for `tilts test`): nothing connects; publishes are kept
    /// in the returned [`Capture`]. Must be called before the first use.
    pub fn capture(&self) -> Arc<Capture> {
        self.capture
            .get_or_init(|| Arc::new(Capture::default()))
            .clone()
    }

    /// The recorder, when [`AmqpHandle::capture`] made this broker one.
    pub fn captured(&self) -> Option<&Arc<Capture>> {
        self.capture.get()
    }

    /// The connection's state right now, for `/readyz`: `not connected yet` (connects on first
    /// use), `connected`, `reconnecting` (lost; being re-established) or `captured` (`tilts
    /// test`).
    pub fn state(&self) -> &'static str {
        if self.capture.get().is_some() {
            return "captured";
        }
        match self.conn.get() {
            None => "not connected yet",
            Some(c) if c.is_connected() => "connected",
            Some(_) => "reconnecting",
        }
    }

    /// The connected broker (connecting and declaring the topology on first use).
    pub async fn get(&self) -> Result<&AmqpSystem, DeliveryError> {
        self.conn
            .get_or_try_init(|| AmqpSystem::connect(self.spec.clone()))
            .await
    }
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
    Amqp {
        system: Arc<System>,
        queue: String,
        prefetch: u16,
    },
    Timer(Box<TimerSchedule>),
}

/// A timer source's schedule.
#[derive(Debug, Clone)]
pub struct TimerSchedule {
    /// The cron expression as written (for logs and the catalogue).
    pub expression: String,
    pub cron: croner::Cron,
    pub timezone: chrono_tz::Tz,
    /// Most missed runs fired at start.
    pub catch_up: u32,
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
    /// What the catalogue (PIKTAPS) is told about the route: systems, files, version.
    pub about: RouteAbout,
}

/// A route's catalogue facts, fixed at check time.
#[derive(Debug, Clone, Default)]
pub struct RouteAbout {
    /// The systems the route talks to, sorted.
    pub systems: Vec<String>,
    /// Mapping files the route uses (schemas, templates, WSDL) with the SHA-256 of each.
    pub files: Vec<(String, String)>,
    /// SHA-256 over the route's definition and its files: changes when anything it runs changes.
    pub version: String,
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
    /// AMQP systems: the exchange (`""` the default exchange).
    pub exchange: String,
    /// AMQP systems: template of the routing key.
    pub routing_key: Option<TemplateRef>,
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
