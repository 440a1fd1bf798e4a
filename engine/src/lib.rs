//! tilts: an integration engine for Latvian municipalities. Integrators describe flows in YAML;
//! tilts receives requests, validates, maps, routes and delivers them.
//!
//! Map of the crate:
//! - [`config`]: the route file's language and how it is read (YAML with positions, `${VAR}`s).
//! - [`check`]: compiles a route file into a [`plan::Plan`], reporting every problem ([`diag`]).
//! - [`mapping`]: Handlebars templates with per-format escaping and helpers.
//! - [`schema`]: JSON Schema validation with Latvian identifier formats.
//! - [`expr`]: the condition language of `choice` steps.
//! - [`runtime`]: runs a request through a route.
//! - [`exchange`]: frames calls for each system (REST, SOAP, X-Road, VISS, DAGR) and reads answers.
//! - [`server`]: the HTTP ingress (`fn app`), problem responses ([`problem`]), graceful shutdown.
//! - [`demo`]: `tilts demo`, the whole thing against simulators in one command.
//! - [`logging`]: tracing with personal codes scrubbed.
//! - [`store`]: the durable message store (SQLite embedded default, PostgreSQL for production):
//!   enqueue, leased claims, attempts, dead letters, idempotency; [`worker`] delivers from it.
//!
//! The adapter contract and the adapters live in `tilts-adapters`; this crate depends on it.

pub mod admin;
pub mod amqp_ingress;
pub mod catalogue;
pub mod check;
pub mod config;
pub mod demo;
pub mod diag;
pub mod exchange;
pub mod expr;
pub mod logging;
pub mod mapping;
pub mod plan;
pub mod problem;
pub mod retry;
pub mod runtime;
pub mod schema;
pub mod server;
pub mod service;
mod simple_template;
pub mod soap_ingress;
pub mod store;
pub mod testing;
pub mod timer;
pub mod worker;
