//! The adapter side of tilts: the contract between the engine and the peers it talks to, the
//! adapters themselves, and simulators of the external systems.
//!
//! Dependency direction: `tilts-engine` depends on this crate, never the other way round. An
//! adapter only *classifies* what happened (delivered, retryable, permanent); retries, queues and
//! dead letters belong to the engine (see `../shared/STYLE.md`, "adapters classify, the engine
//! retries").
//!
//! - [`amqp`]: RabbitMQ (AMQP 0-9-1): topology, confirmed publishing, acknowledged consuming, reconnects.
//! - [`contract`]: the outcome classes every adapter reports.
//! - [`http`]: HTTP/REST request/response to a declared system.
//! - [`ident`]: Latvian identifiers (personal codes, Enterprise Register numbers): validation and masking.
//! - [`redact`]: scrubbing personal codes out of free text (logs, error messages).
//! - [`xml`]: XML <-> JSON conversion (namespaces and attributes kept), XPath-like selection, hard limits.
//! - [`soap`]: SOAP 1.1/1.2 envelopes, WS-Addressing headers, faults parsed and classified.
//! - [`profile`]: exchange profiles: X-Road 4.0 (SOAP and REST), VISS request service, DAGR.
//! - [`tls`]: client certificates (mTLS) and custom CA bundles.
//! - [`token`]: access tokens fetched and cached per system (OAuth2 client credentials, DAGR).
//! - [`sim`]: simulators of the systems tilts talks to, for tests and `tilts demo`.

pub mod amqp;
pub mod contract;
pub mod http;
mod http1;
pub mod ident;
pub mod profile;
pub mod redact;
pub mod sim;
pub mod soap;
pub mod tls;
pub mod token;
pub mod xml;
