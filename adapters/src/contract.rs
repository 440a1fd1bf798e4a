//! The contract between the engine and every adapter: what a delivery or a call can end in.
//!
//! Adapters only *classify* a failure; the engine decides what to do with the class (answer 502 or
//! 504 on a synchronous route, schedule a retry or dead-letter on a queued one).

use std::fmt;

/// Whether trying again later can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Retry {
    /// Connect errors, timeouts, 5xx, 429, 408: the peer may recover.
    Retryable,
    /// Other 4xx, a request that cannot be built, an answer that cannot be read: the same
    /// request will fail the same way.
    Permanent,
}

/// What kind of failure happened, for metrics, attempt records and problem responses.
/// Deliberately coarse and free of payload data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The peer could not be reached (DNS, refused, reset, TLS handshake).
    Connect,
    /// No complete answer within the system's timeout.
    Timeout,
    /// The peer answered with an HTTP status outside what the step accepts.
    Status(u16),
    /// The peer answered something that could not be read (bad framing, undecodable body).
    Protocol,
    /// The request could not be built from the message (bad URL, header value).
    Request,
    /// The peer answered with a SOAP Fault (whatever the HTTP status). The class comes from the
    /// fault code: a `Server`/`Receiver` fault may pass, anything else will not (see
    /// `soap::Fault::retry`).
    Fault(Retry),
}

impl FailureKind {
    /// Short, stable name used in logs, metrics labels and attempt records.
    pub fn name(&self) -> &'static str {
        match self {
            FailureKind::Connect => "connect",
            FailureKind::Timeout => "timeout",
            FailureKind::Status(_) => "status",
            FailureKind::Protocol => "protocol",
            FailureKind::Request => "request",
            FailureKind::Fault(_) => "fault",
        }
    }

    /// The retry class of this failure (see [`Retry`]).
    pub fn retry(&self) -> Retry {
        match self {
            FailureKind::Connect | FailureKind::Timeout => Retry::Retryable,
            FailureKind::Status(code) => retry_for_status(*code),
            FailureKind::Protocol | FailureKind::Request => Retry::Permanent,
            FailureKind::Fault(retry) => *retry,
        }
    }
}

/// The retry class of an HTTP status that a step did not accept.
pub fn retry_for_status(code: u16) -> Retry {
    match code {
        408 | 425 | 429 => Retry::Retryable,
        500..=599 => Retry::Retryable,
        _ => Retry::Permanent,
    }
}

/// A failed call or delivery. `detail` is a short operator-facing text that never contains
/// payload data (adapters build it from the failure, not from bodies).
#[derive(Debug, Clone, thiserror::Error)]
pub struct DeliveryError {
    /// The system (as declared in routes.yaml) that failed.
    pub system: String,
    /// What happened.
    pub kind: FailureKind,
    /// A `Retry-After` the peer asked for, in seconds.
    pub retry_after: Option<u64>,
    /// Short operator-facing text without payload data.
    pub detail: String,
}

impl DeliveryError {
    /// Whether trying again later can help.
    pub fn retry(&self) -> Retry {
        self.kind.retry()
    }
}

impl fmt::Display for DeliveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            FailureKind::Status(code) => {
                write!(f, "system '{}' answered HTTP {code}", self.system)?
            }
            kind => write!(f, "system '{}' failed: {}", self.system, kind.name())?,
        }
        if !self.detail.is_empty() {
            write!(f, " ({})", self.detail)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_as_the_retry_policy_expects() {
        for code in [408, 429, 500, 502, 503, 504] {
            assert_eq!(retry_for_status(code), Retry::Retryable, "{code}");
        }
        for code in [400, 401, 403, 404, 409, 422] {
            assert_eq!(retry_for_status(code), Retry::Permanent, "{code}");
        }
        assert_eq!(FailureKind::Timeout.retry(), Retry::Retryable);
        assert_eq!(FailureKind::Connect.retry(), Retry::Retryable);
        assert_eq!(FailureKind::Protocol.retry(), Retry::Permanent);
        assert_eq!(
            FailureKind::Fault(Retry::Retryable).retry(),
            Retry::Retryable
        );
        assert_eq!(
            FailureKind::Fault(Retry::Permanent).retry(),
            Retry::Permanent
        );
        assert_eq!(FailureKind::Fault(Retry::Permanent).name(), "fault");
    }

    #[test]
    fn display_names_the_system_and_status() {
        let e = DeliveryError {
            system: "enterprise-register".into(),
            kind: FailureKind::Status(503),
            retry_after: None,
            detail: String::new(),
        };
        assert_eq!(
            e.to_string(),
            "system 'enterprise-register' answered HTTP 503"
        );
    }
}
