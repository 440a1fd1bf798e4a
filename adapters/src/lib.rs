//! The adapter side of tilts: the contract between the engine and the peers it talks to, the
//! adapters themselves, and simulators of the external systems.
//!
//! Dependency direction: `tilts-engine` depends on this crate, never the other way round. An
//! adapter only *classifies* what happened (delivered, retryable, permanent); retries, queues and
//! dead letters belong to the engine (see `../shared/STYLE.md`, "adapters classify, the engine
//! retries").
//!
//! - [`contract`]: the outcome classes every adapter reports.
//! - [`http`]: HTTP/REST request/response to a declared system.
//! - [`ident`]: Latvian identifiers (personal codes, Enterprise Register numbers): validation and masking.
//! - [`redact`]: scrubbing personal codes out of free text (logs, error messages).
//! - [`sim`]: simulators of the systems tilts talks to, for tests and `tilts demo`.

pub mod contract;
pub mod http;
pub mod ident;
pub mod redact;
pub mod sim;
