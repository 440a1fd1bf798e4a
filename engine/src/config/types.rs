//! The route file's language: every type here is both the parser and the documentation (doc
//! comments become descriptions in `tilts schema`, the JSON Schema editors use for routes.yaml).
//!
//! Unknown fields are errors everywhere (`deny_unknown_fields`), so a typo never silently turns
//! into a default. New transports (SOAP, AMQP, timers, databases) are new optional keys of
//! [`SystemConfig`] and [`Source`], and new step kinds are new variants of [`Step`]: the shape of
//! existing files never changes.

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};

/// A whole route file (`routes.yaml`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "tilts route file")]
pub struct RouteFile {
    /// Version of the route language. Always `1`.
    pub version: u32,
    /// Server settings (listen address, body limit, mapping folder).
    #[serde(default)]
    pub server: ServerSettings,
    /// The peers tilts talks to, declared once by name and referred to from routes.
    #[serde(default)]
    pub systems: BTreeMap<String, SystemConfig>,
    /// The flows: where a request comes in, what happens to it, where it goes.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

/// Server settings.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Address the HTTP ingress listens on. Default `127.0.0.1:8080`; `--listen` overrides it.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Largest request body accepted, e.g. `4MB`, `512KB`. Larger bodies get 413. Default `4MB`.
    #[serde(default = "default_body_limit")]
    pub body_limit: ByteSize,
    /// Folder with templates and schemas, relative to the route file. Default `mappings`.
    #[serde(default = "default_mappings")]
    pub mappings: String,
    /// How long a synchronous route may take in all before tilts answers 504. Default `30s`.
    #[serde(default = "default_route_timeout")]
    pub route_timeout: Dur,
    /// How long in-flight requests may take to finish after SIGTERM. Default `30s`.
    #[serde(default = "default_route_timeout")]
    pub shutdown_grace: Dur,
    /// How long a client may take to send a request's head (request line and headers); a
    /// slower one has its connection closed, so slow clients cannot hold connections open.
    /// Default `30s`.
    #[serde(default = "default_route_timeout")]
    pub header_timeout: Dur,
    /// Threads that serve HTTP connections (each connection stays on one). Default: one per
    /// CPU. Fewer leave more of the machine to other processes.
    #[serde(default)]
    pub http_threads: Option<u32>,
    /// Where tilts keeps queued messages: `sqlite://path/to/file.db` (the embedded default,
    /// `sqlite://tilts-data/tilts.db`, relative to the working directory) or
    /// `postgres://user@host/db` (production; several tilts processes share its work).
    /// `--database` and `TILTS_DATABASE_URL` override it.
    #[serde(default = "default_database")]
    pub database: String,
    /// Address of the admin API (messages, dead letters). Default `127.0.0.1:8081`; keep it
    /// on a private interface.
    #[serde(default = "default_admin_listen")]
    pub admin_listen: String,
    /// Deliveries running at once in this process, over all queued routes (each route also
    /// stays within its own `concurrency`). Default `128`.
    #[serde(default = "default_workers")]
    pub workers: u32,
    /// How long a worker holds a message it is delivering. If the process dies, another worker
    /// delivers the message once the lease runs out; it must be longer than the longest
    /// delivery (every system's `timeout`). Default `2m`.
    #[serde(default = "default_lease")]
    pub lease: Dur,
    /// How long a delivered message's payload is kept before it is purged (its metadata stays
    /// for reports). Default `7d`.
    #[serde(default = "default_retention")]
    pub retention: Dur,
    /// Publish a descriptor of every route to the ICT catalogue (PIKTAPS) when tilts starts,
    /// and withdraw the descriptors of routes that are gone.
    #[serde(default)]
    pub catalogue: Option<CatalogueConfig>,
}

/// Where tilts describes its routes.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CatalogueConfig {
    /// The catalogue: an HTTP system (its URL up to the API root, e.g. `.../api/v1`).
    pub system: String,
    /// This tilts installation's code in the catalogue, e.g. `RIGA-TILTS`.
    pub system_code: String,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            body_limit: default_body_limit(),
            mappings: default_mappings(),
            route_timeout: default_route_timeout(),
            shutdown_grace: default_route_timeout(),
            header_timeout: default_route_timeout(),
            http_threads: None,
            database: default_database(),
            admin_listen: default_admin_listen(),
            workers: default_workers(),
            lease: default_lease(),
            retention: default_retention(),
            catalogue: None,
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_body_limit() -> ByteSize {
    ByteSize(4 * 1024 * 1024)
}
fn default_mappings() -> String {
    "mappings".into()
}
fn default_route_timeout() -> Dur {
    Dur(Duration::from_secs(30))
}
/// The embedded default store.
pub const DEFAULT_DATABASE: &str = "sqlite://tilts-data/tilts.db";
fn default_database() -> String {
    DEFAULT_DATABASE.into()
}
fn default_admin_listen() -> String {
    "127.0.0.1:8081".into()
}
fn default_workers() -> u32 {
    128
}
fn default_lease() -> Dur {
    Dur(Duration::from_secs(120))
}
fn default_retention() -> Dur {
    Dur(Duration::from_secs(7 * 86400))
}

/// A peer system. Exactly one transport key (`http` for now) says how to reach it.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SystemConfig {
    /// What the system is, for people reading the file and for the catalogue.
    #[serde(default)]
    pub description: Option<String>,
    /// Reach the system over HTTP/REST.
    #[serde(default)]
    pub http: Option<HttpSystemConfig>,
    /// A RabbitMQ broker (AMQP 0-9-1): routes publish to it (`to:` with `exchange` and
    /// `routing_key`) and consume from it (`from: { amqp: ... }`).
    #[serde(default)]
    pub amqp: Option<AmqpSystemConfig>,
    /// The system speaks SOAP over its `http` transport: calls send an envelope and read
    /// the answer's Body as data (faults become errors, or data with `faults: accept`).
    #[serde(default)]
    pub soap: Option<SoapSystemConfig>,
    /// An exchange profile the system requires: `x_road` (X-Road 4.0 SOAP headers),
    /// `x_road_rest` (X-Road REST form), `viss` (VISS request service: StartTransaction,
    /// then SubmitSync) or `dagr` (DAGR data platform permission header).
    #[serde(default)]
    pub exchange: Option<ExchangeConfig>,
    /// Whole-request timeout for calls to this system (connect, send, read the answer). Default `10s`.
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// Connect timeout. Default `3s`.
    #[serde(default)]
    pub connect_timeout: Option<Dur>,
}

/// HTTP/REST transport of a system.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpSystemConfig {
    /// Base URL (`http://` or `https://`); a call's `path` is appended to it.
    pub url: String,
    /// Headers sent with every request to this system.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// How tilts authenticates itself. Put secrets in the environment: `${SECRET_NAME}`.
    #[serde(default)]
    pub auth: Option<HttpAuthConfig>,
    /// Client certificate (mTLS) and extra trusted CAs for `https://` systems.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

/// A RabbitMQ broker and the topology tilts declares on it at connect (idempotently).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AmqpSystemConfig {
    /// `amqp://user:password@host:5672/vhost` (or `amqps://`); the password is never printed.
    pub url: String,
    /// Exchanges to declare.
    #[serde(default)]
    pub exchanges: Vec<AmqpExchangeConfig>,
    /// Queues to declare, with their bindings.
    #[serde(default)]
    pub queues: Vec<AmqpQueueConfig>,
}

/// An exchange.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AmqpExchangeConfig {
    pub name: String,
    /// `direct` (default), `topic`, `fanout` or `headers`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

/// A queue (durable; quorum unless `type: classic`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AmqpQueueConfig {
    pub name: String,
    /// `quorum` (default: replicated, survives a broker restart) or `classic`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Where rejected messages go (the queue's dead-letter exchange).
    #[serde(default)]
    pub dead_letter_exchange: Option<String>,
    /// Routing key of dead-lettered messages (default: their own).
    #[serde(default)]
    pub dead_letter_routing_key: Option<String>,
    /// Quorum queues: deliveries of one message before the broker dead-letters it.
    #[serde(default)]
    pub delivery_limit: Option<u32>,
    /// `{exchange, routing_key}` pairs the queue is bound with.
    #[serde(default)]
    pub bindings: Vec<AmqpBindingConfig>,
}

/// A binding of a queue to an exchange.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AmqpBindingConfig {
    pub exchange: String,
    #[serde(default)]
    pub routing_key: String,
}

/// TLS settings of a system: files in PEM form, normally given through the environment
/// (`${PMLP_CLIENT_CERT}`). Relative paths are relative to the route file.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Client certificate chain (PEM) presented to the system. Needs `client_key`.
    #[serde(default)]
    pub client_cert: Option<String>,
    /// Private key (PEM) of `client_cert`.
    #[serde(default)]
    pub client_key: Option<String>,
    /// CA bundle (PEM) trusted for this system in addition to the built-in roots, e.g. a
    /// registry's test environment CA.
    #[serde(default)]
    pub ca: Option<String>,
}

/// SOAP settings of a system.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SoapSystemConfig {
    /// `"1.1"` (default) or `"1.2"`.
    #[serde(default)]
    pub version: Option<String>,
    /// Send WS-Addressing 1.0 headers (Action, MessageID, ReplyTo, To). Default false
    /// (the `viss` profile always sends them).
    #[serde(default)]
    pub addressing: Option<bool>,
}

/// Exchange profiles. Exactly one key.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum ExchangeConfig {
    /// X-Road message protocol 4.0 over SOAP 1.1: `client`, `service`, `id`, `userId`,
    /// `protocolVersion` headers.
    XRoad(XRoadConfig),
    /// X-Road REST: `/r1/{service}/...` paths and `X-Road-Client`, `X-Road-Id`,
    /// `X-Road-UserId` headers.
    XRoadRest(XRoadConfig),
    /// VISS request service (SOAP 1.2, WS-Addressing, WS-Security timestamp): each call
    /// starts a transaction, then submits the request with an `IVISRequest` header.
    Viss(VissConfig),
    /// DAGR data platform: every request carries `X-DAGR-Permission`; pair with
    /// `http.auth.dagr` for the token.
    Dagr(DagrConfig),
}

/// X-Road identifiers of a system.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct XRoadConfig {
    /// Our own subsystem: `INSTANCE/CLASS/MEMBER/SUBSYSTEM`, e.g. `LV/GOV/90000038741/tilts`.
    pub client: String,
    /// Default service: `INSTANCE/CLASS/MEMBER/SUBSYSTEM/SERVICE[/VERSION]`; a call's
    /// `service` overrides it.
    #[serde(default)]
    pub service: Option<String>,
}

/// VISS request service settings.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VissConfig {
    /// e-service id passed to StartTransaction, e.g. `EP-PMLP-PERSON-v1-0`.
    pub e_service: String,
    /// Our system's URN, e.g. `URN:IVIS:100001:IS-TILTS`.
    pub sender: String,
    /// The target system's URN, e.g. `URN:IVIS:100001:IS-PMLP`.
    pub destination: String,
    /// Default MessageType URN; a call's `message_type` overrides it.
    #[serde(default)]
    pub message_type: Option<String>,
    /// Mark requests as test traffic (`<Test>true</Test>`). Default false.
    #[serde(default)]
    pub test: bool,
    /// WS-Addressing Action of StartTransaction (the published URI is unconfirmed).
    #[serde(default)]
    pub start_action: Option<String>,
    /// WS-Addressing Action of SubmitSync (the published URI is unconfirmed).
    #[serde(default)]
    pub submit_action: Option<String>,
}

/// DAGR settings.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DagrConfig {
    /// Default permission number sent as `X-DAGR-Permission`; a call's `permission`
    /// overrides it.
    #[serde(default)]
    pub permission: Option<String>,
}

/// Authentication towards an HTTP system.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum HttpAuthConfig {
    /// `Authorization: Bearer <token>`.
    Bearer {
        /// The token, normally `${SOME_TOKEN}`.
        token: String,
    },
    /// HTTP Basic authentication.
    Basic {
        username: String,
        /// The password, normally `${SOME_PASSWORD}`.
        password: String,
    },
    /// OAuth2 client credentials: a token is fetched from `token_url`, cached until it
    /// expires, and sent as `Authorization: Bearer`.
    Oauth2 {
        token_url: String,
        client_id: String,
        /// The client secret, normally `${SOME_SECRET}`.
        client_secret: String,
        #[serde(default)]
        scope: Option<String>,
    },
    /// DAGR: a token fetched from `token_url` with `client_id` over the system's client
    /// certificate (`http.tls`), cached until it expires.
    Dagr {
        token_url: String,
        client_id: String,
    },
}

/// One flow.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Unique id: letters, digits, `-` and `_`. Appears in logs, metrics and the catalogue.
    pub id: String,
    /// Enterprise Register number (11 digits) of the institution that owns this route.
    pub owner: String,
    /// What the route does, in a sentence.
    #[serde(default)]
    pub description: Option<String>,
    /// Where requests come in.
    pub from: Source,
    /// How the route answers: `sync` (the caller waits for the result) or `queued` (202 once
    /// the message is stored; workers deliver it to `to` with retries). Default `sync`.
    #[serde(default)]
    pub delivery: Delivery,
    /// Queued routes: messages with the same key (rendered from this template, e.g.
    /// `"{{body.caseId}}"`) are delivered one at a time, in the order they came in.
    #[serde(default)]
    pub ordering_key: Option<String>,
    /// Queued routes: how failed deliveries are retried before they become dead letters.
    #[serde(default)]
    pub retry: Option<RetryConfig>,
    /// Queued routes: most deliveries of this route at once per tilts process. Default 8.
    #[serde(default)]
    pub concurrency: Option<u32>,
    /// Sync routes with `to`: `queue` makes a retryable failure of the destination (timeout,
    /// connect error, 5xx, 429) store the message for delivery by the workers and answer 202,
    /// instead of failing the caller with 502/504.
    #[serde(default)]
    pub fallback: Option<Fallback>,
    /// The ordered steps every request goes through.
    #[serde(default)]
    pub steps: Vec<Step>,
    /// Where the (mapped) message is delivered after the steps. On a sync route the
    /// destination's answer is the reply, unless a `respond` step answered already.
    #[serde(default)]
    pub to: Option<Destination>,
}

/// How a route answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// The caller waits; errors come back as problem responses.
    #[default]
    Sync,
    /// The caller gets 202 and a message id once the message is committed to the store;
    /// workers deliver it to `to`, retrying with backoff, then dead-lettering.
    Queued,
}

/// What a sync route does when its destination fails in a way that may pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// Store the message and deliver it later, as a queued route would; answer 202.
    Queue,
}

/// Retry policy of a queued route. Delays grow as `initial * multiplier^(attempt-1)`, capped
/// at `max_delay`, with up to 20% random jitter; a `Retry-After` from the system is honoured
/// when it asks for longer. Only retryable failures are retried (connect errors, timeouts,
/// 5xx, 408, 429); other 4xx go to dead letters at once.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts in all, the first included. Default 10.
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Delay before the second attempt. Default `5s`.
    #[serde(default)]
    pub initial: Option<Dur>,
    /// Growth factor of the delay. Default 2.
    #[serde(default)]
    pub multiplier: Option<f64>,
    /// Longest delay between attempts. Default `1h`.
    #[serde(default)]
    pub max_delay: Option<Dur>,
    /// Spread retries randomly by up to 20% so a recovering system is not hit all at once. Default true.
    #[serde(default)]
    pub jitter: Option<bool>,
}

/// Where requests come in. Exactly one key.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Source {
    /// An HTTP endpoint on tilts' listener.
    Http(HttpSource),
    /// A SOAP endpoint on tilts' listener: callers POST an envelope; the Body's content is
    /// `body` (XML read as data), the answer is wrapped in an envelope, errors are Faults.
    /// `GET path?wsdl` serves the service description.
    Soap(SoapSource),
    /// A RabbitMQ queue: each message runs through the route and is acknowledged only once
    /// the route has stored (queued routes) or delivered it.
    Amqp(AmqpSource),
    /// A schedule: each run is a message `{scheduledAt, firedAt}` through the route (a queued
    /// route). The next run time is kept in the store, so a restart neither skips nor doubles
    /// a run, and several tilts processes fire each run once.
    Timer(TimerSource),
}

/// Messages from a RabbitMQ queue.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AmqpSource {
    /// The broker: a system with `amqp`.
    pub system: String,
    /// The queue to consume (declare it under the system's `queues`).
    pub queue: String,
    /// Messages handled at once (unacknowledged at most). Default 16.
    #[serde(default)]
    pub prefetch: Option<u16>,
}

/// A schedule.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TimerSource {
    /// Cron expression with seconds: `sec min hour day-of-month month day-of-week`, e.g.
    /// `0 0 6 * * MON-FRI` (06:00 on workdays) or `0 */15 * * * *` (every 15 minutes); a
    /// 5-field expression (without seconds) is also accepted.
    pub cron: String,
    /// Time zone of the schedule. Default `Europe/Riga`.
    #[serde(default)]
    pub timezone: Option<String>,
    /// When several runs are due at once (no tilts was running), at most this many, the most
    /// recent, are fired. Default 10; 0 or 1 fires only the latest.
    #[serde(default)]
    pub catch_up: Option<u32>,
}

/// A SOAP endpoint.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SoapSource {
    /// Path beginning with `/`, e.g. `/soap/person`.
    pub path: String,
    /// `"1.1"` (default) or `"1.2"`; an envelope of the other version gets a VersionMismatch fault.
    #[serde(default)]
    pub version: Option<String>,
    /// The operation: the local name of the Body's request element, e.g. `GetPerson`. Also
    /// names the operation in the generated WSDL.
    pub operation: String,
    /// Target namespace of the service (generated WSDL, answer element). Default
    /// `urn:x-tilts:<route id>`.
    #[serde(default)]
    pub namespace: Option<String>,
    /// A WSDL file in the mappings folder served at `GET path?wsdl` instead of the generated
    /// one; `{{address}}` in it is replaced by the endpoint's URL.
    #[serde(default)]
    pub wsdl: Option<String>,
}

/// An HTTP endpoint.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpSource {
    /// `GET`, `POST`, `PUT`, `PATCH` or `DELETE`. Default `POST`.
    #[serde(default = "default_post")]
    pub method: String,
    /// Path beginning with `/`; `{name}` captures a segment as `params.name`.
    pub path: String,
}

fn default_post() -> String {
    "POST".into()
}

/// One step. Each is a single-key mapping: `- validate: ...`, `- map: ...`, `- call: ...`,
/// `- choice: ...`, `- respond: ...`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Step {
    /// Check the current message against a JSON Schema file in the mappings folder (draft
    /// 2020-12). A failure answers 422 with each violation's JSON pointer.
    Validate(String),
    /// Render a Handlebars template from the mappings folder. A bare file name replaces the
    /// current message with the result; `{template, as}` keeps it under a name instead.
    Map(MapStep),
    /// Request/response to a system; the answer is available to later steps under `as`.
    Call(Box<CallStep>),
    /// Content-based routing: the first branch whose `when` holds runs; `otherwise` runs when none does.
    Choice(Vec<ChoiceBranch>),
    /// Answer the caller now and end the route.
    Respond(RespondStep),
}

impl Step {
    /// The step's kind as written in YAML.
    pub fn kind(&self) -> &'static str {
        match self {
            Step::Validate(_) => "validate",
            Step::Map(_) => "map",
            Step::Call(_) => "call",
            Step::Choice(_) => "choice",
            Step::Respond(_) => "respond",
        }
    }
}

/// A `map` step: a template file, or a template kept under a name.
#[derive(Debug, Clone, JsonSchema)]
#[serde(untagged)]
pub enum MapStep {
    /// Template file; the result becomes the current message.
    Replace(String),
    /// Template file whose result is kept as `as` (the current message is unchanged).
    Named(NamedMap),
}

/// `{template, as}` form of `map`.
#[derive(Debug, Clone, serde::Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NamedMap {
    /// Template file in the mappings folder.
    pub template: String,
    /// Name under which later steps read the result.
    #[serde(rename = "as")]
    pub as_name: String,
}

// Hand-written so that a wrong shape gets a message saying what to write, not serde's
// "did not match any variant".
impl<'de> Deserialize<'de> for MapStep {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        match v {
            serde_json::Value::String(s) => Ok(MapStep::Replace(s)),
            serde_json::Value::Object(_) => serde_json::from_value::<NamedMap>(v)
                .map(MapStep::Named)
                .map_err(serde::de::Error::custom),
            _ => Err(serde::de::Error::custom(
                "map takes a template file name (`map: x.json.hbs`) or `{template: x.json.hbs, as: name}`",
            )),
        }
    }
}

/// A `call` step.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CallStep {
    /// Name of a system declared under `systems`.
    pub system: String,
    /// HTTP method. Default `POST`.
    #[serde(default)]
    pub method: Option<String>,
    /// Path appended to the system's URL; may use `{{...}}` (e.g. `/companies/{{body.regNo}}`).
    /// Never put personal codes in paths: send them in the body.
    #[serde(default)]
    pub path: String,
    /// Template file rendering the request body. Default: the current message as JSON
    /// (`method: GET` sends no body).
    #[serde(default)]
    pub body: Option<String>,
    /// Extra request headers; values may use `{{...}}`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Name under which later steps read the answer: `NAME.status`, `NAME.headers`, `NAME.body`.
    #[serde(rename = "as")]
    pub as_name: String,
    /// HTTP statuses that count as an answer rather than a failure, e.g. `[200, 404]` or
    /// `["2xx", 404]`. Default `["2xx"]`. Other statuses fail the route (502).
    #[serde(default)]
    pub accept: Vec<StatusPattern>,
    /// Timeout for this call, overriding the system's.
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// SOAP systems: the SOAPAction (1.1) / action parameter and WS-Addressing Action (1.2).
    #[serde(default)]
    pub action: Option<String>,
    /// SOAP systems: `fail` (default: a Fault fails the call, retryable when it is a Server
    /// fault) or `accept` (a Fault is an answer: `NAME.fault` holds code, subcode, reason).
    #[serde(default)]
    pub faults: Option<FaultHandling>,
    /// `x_road` / `x_road_rest` systems: the service, overriding the system's
    /// (`INSTANCE/CLASS/MEMBER/SUBSYSTEM/SERVICE[/VERSION]`).
    #[serde(default)]
    pub service: Option<String>,
    /// `viss` systems: the MessageType URN, overriding the system's.
    #[serde(default)]
    pub message_type: Option<String>,
    /// `dagr` systems: the permission number, overriding the system's.
    #[serde(default)]
    pub permission: Option<String>,
    /// The employee on whose behalf the call is made, `AU:<institution reg no>-PK:<personal
    /// code>` (a template, e.g. `"{{headers.x-user-id}}"`): sent as the X-Road `userId` or the
    /// VISS `Initiator`, masked in logs.
    #[serde(default)]
    pub user_id: Option<String>,
    /// Set from a `to:` on an AMQP system (a `call` cannot publish).
    #[serde(skip)]
    #[schemars(skip)]
    pub exchange: Option<String>,
    /// Set from a `to:` on an AMQP system.
    #[serde(skip)]
    #[schemars(skip)]
    pub routing_key: Option<String>,
}

/// What a SOAP Fault does to a call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FaultHandling {
    /// The call fails: 502 on a sync route; a retry (Server fault) or a dead letter (other
    /// faults) on a queued one.
    #[default]
    Fail,
    /// The call answers: `NAME.fault` is `{code, subcode, reason, detail}`, `NAME.body` null.
    Accept,
}

/// An HTTP status (`404`) or a class (`"4xx"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusPattern {
    Exact(u16),
    Class(u16),
}

impl StatusPattern {
    pub fn matches(&self, status: u16) -> bool {
        match self {
            StatusPattern::Exact(s) => *s == status,
            StatusPattern::Class(c) => status / 100 == *c,
        }
    }
}

impl<'de> Deserialize<'de> for StatusPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        let bad = || {
            serde::de::Error::custom(
                "a status is a number from 100 to 599 (e.g. 404) or a class like \"2xx\"",
            )
        };
        match &v {
            serde_json::Value::Number(n) => match n.as_u64() {
                Some(s @ 100..=599) => Ok(StatusPattern::Exact(s as u16)),
                _ => Err(bad()),
            },
            serde_json::Value::String(s) => {
                let b = s.as_bytes();
                if b.len() == 3
                    && (b'1'..=b'5').contains(&b[0])
                    && s[1..].eq_ignore_ascii_case("xx")
                {
                    Ok(StatusPattern::Class((b[0] - b'0') as u16))
                } else if let Ok(n @ 100..=599) = s.parse::<u16>() {
                    Ok(StatusPattern::Exact(n))
                } else {
                    Err(bad())
                }
            }
            _ => Err(bad()),
        }
    }
}

impl JsonSchema for StatusPattern {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "StatusPattern".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "An HTTP status (404) or a class (\"2xx\")",
            "anyOf": [
                {"type": "integer", "minimum": 100, "maximum": 599},
                {"type": "string", "pattern": "^[1-5](xx|XX|[0-9]{2})$"}
            ]
        })
    }
}

/// One branch of a `choice`: `when` + steps (or `respond`), or `otherwise`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChoiceBranch {
    /// Condition, e.g. `company.status == 404 && exists(body.urgent)`. Roots: `body`,
    /// `headers`, `query`, `params`, `payload`, `route`, and the names given with `as`.
    #[serde(default)]
    pub when: Option<String>,
    /// Steps to run when the condition holds.
    #[serde(default)]
    pub steps: Vec<Step>,
    /// Shorthand for a single `respond` step.
    #[serde(default)]
    pub respond: Option<RespondStep>,
    /// Steps to run when no `when` held. Must be the last branch.
    #[serde(default)]
    pub otherwise: Option<Vec<Step>>,
}

/// A `respond` step.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RespondStep {
    /// HTTP status. Default 200.
    #[serde(default = "default_200")]
    pub status: u16,
    /// Template file rendering the answer. Default: the current message as JSON.
    #[serde(default)]
    pub body: Option<String>,
    /// Extra answer headers; values may use `{{...}}`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn default_200() -> u16 {
    200
}

/// Where a route delivers its message.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    /// Name of a system declared under `systems`.
    pub system: String,
    /// HTTP method. Default `POST`.
    #[serde(default)]
    pub method: Option<String>,
    /// Path appended to the system's URL; may use `{{...}}`.
    #[serde(default)]
    pub path: String,
    /// Extra request headers; values may use `{{...}}`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Statuses that count as delivered. Default `["2xx"]`.
    #[serde(default)]
    pub accept: Vec<StatusPattern>,
    /// SOAP systems: the SOAPAction / WS-Addressing Action.
    #[serde(default)]
    pub action: Option<String>,
    /// `x_road` / `x_road_rest` systems: the service, overriding the system's.
    #[serde(default)]
    pub service: Option<String>,
    /// `viss` systems: the MessageType URN, overriding the system's.
    #[serde(default)]
    pub message_type: Option<String>,
    /// `dagr` systems: the permission number, overriding the system's.
    #[serde(default)]
    pub permission: Option<String>,
    /// The employee on whose behalf the message is delivered (`AU:...-PK:...`, a template).
    #[serde(default)]
    pub user_id: Option<String>,
    /// AMQP systems: the exchange to publish to (`""` is the default exchange).
    #[serde(default)]
    pub exchange: Option<String>,
    /// AMQP systems: the routing key; may use `{{...}}`.
    #[serde(default)]
    pub routing_key: Option<String>,
}

/// A duration written with a unit: `250ms`, `5s`, `2m`, `1h`, `1d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        match v {
            serde_json::Value::String(s) => parse_duration(&s)
                .map(Dur)
                .map_err(serde::de::Error::custom),
            _ => Err(serde::de::Error::custom(
                "a duration is written with a unit, as a string: \"250ms\", \"5s\", \"2m\", \"1h\"",
            )),
        }
    }
}

impl JsonSchema for Dur {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A duration with a unit: 250ms, 5s, 2m, 1h, 1d",
            "type": "string",
            "pattern": "^[0-9]+(\\.[0-9]+)?(ms|s|m|h|d)$"
        })
    }
}

/// Parses `250ms`, `5s`, `1.5s`, `2m`, `1h`, `1d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let unit = unit.trim();
    let hint = "write a number and a unit: 250ms, 5s, 2m, 1h or 1d";
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration: {hint}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        "" => return Err(format!("'{s}' has no unit: {hint}")),
        _ => return Err(format!("'{s}' has an unknown unit '{unit}': {hint}")),
    };
    if !secs.is_finite() || secs > 366.0 * 86400.0 {
        return Err(format!("'{s}' is too long: at most a year"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A size in bytes: `4MB`, `512KB`, `1GB`, or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        let hint = "write a size like 4MB, 512KB or a number of bytes";
        match v {
            serde_json::Value::Number(n) => n
                .as_u64()
                .map(ByteSize)
                .ok_or_else(|| serde::de::Error::custom(hint)),
            serde_json::Value::String(s) => {
                let t = s.trim();
                let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
                let (num, unit) = t.split_at(split);
                let n: u64 = num.parse().map_err(|_| {
                    serde::de::Error::custom(format!("'{s}' is not a size: {hint}"))
                })?;
                let mult = match unit.trim().to_ascii_uppercase().as_str() {
                    "" | "B" => 1,
                    "KB" | "KIB" => 1024,
                    "MB" | "MIB" => 1024 * 1024,
                    "GB" | "GIB" => 1024 * 1024 * 1024,
                    _ => {
                        return Err(serde::de::Error::custom(format!(
                            "'{s}' has an unknown unit: {hint}"
                        )));
                    }
                };
                Ok(ByteSize(n * mult))
            }
            _ => Err(serde::de::Error::custom(hint)),
        }
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ByteSize".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A size: 4MB, 512KB, 1GB or a number of bytes",
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": "^[0-9]+\\s*([KMG]i?B|B)?$"}
            ]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("5").unwrap_err().contains("no unit"));
        assert!(
            parse_duration("5 sec")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn sizes_and_statuses() {
        let b: ByteSize = serde_json::from_value(serde_json::json!("4MB")).unwrap();
        assert_eq!(b.0, 4 * 1024 * 1024);
        let s: Vec<StatusPattern> =
            serde_json::from_value(serde_json::json!(["2xx", 404, "409"])).unwrap();
        assert!(s[0].matches(204) && !s[0].matches(404));
        assert!(s[1].matches(404) && s[2].matches(409));
        assert!(serde_json::from_value::<StatusPattern>(serde_json::json!(42)).is_err());
    }
}
