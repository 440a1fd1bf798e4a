//! Error answers as `application/problem+json` (RFC 9457).
//!
//! Every error a caller sees goes through here, so internal details (upstream bodies, personal
//! data, file paths) cannot leak: a problem carries a fixed title, a short detail written by
//! tilts, and for invalid input the list of violations (pointer + message, never the value).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::schema::Violation;

/// An RFC 9457 problem.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    /// The route that answered, when one matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// The message id tilts gave the request (also in the `X-Tilts-Message-Id` header).
    #[serde(rename = "messageId", skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// For 422: each violation's JSON pointer and message.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<Violation>,
    /// Seconds after which a retry may succeed (also sent as `Retry-After`).
    #[serde(skip)]
    pub retry_after: Option<u64>,
}

impl Problem {
    /// A problem of a kind (`invalid-request`, `upstream-timeout`, ...), with a detail.
    pub fn new(status: u16, kind: &str, title: &'static str, detail: impl Into<String>) -> Self {
        Problem {
            type_uri: format!("urn:tilts:problem:{kind}"),
            title,
            status,
            detail: detail.into(),
            route: None,
            message_id: None,
            errors: Vec::new(),
            retry_after: None,
        }
    }

    pub fn not_found() -> Self {
        Problem::new(
            404,
            "not-found",
            "No route for this request",
            "no route matches this method and path",
        )
    }

    pub fn method_not_allowed() -> Self {
        Problem::new(
            405,
            "method-not-allowed",
            "Method not allowed",
            "a route has this path, but not for this method",
        )
    }

    pub fn too_large(limit: u64) -> Self {
        Problem::new(
            413,
            "body-too-large",
            "Request body too large",
            format!("the body is larger than the limit of {limit} bytes"),
        )
    }

    /// A queued route in a tilts that has no store.
    pub fn no_store() -> Self {
        Problem::new(
            503,
            "store-unavailable",
            "Queued delivery is not available",
            "this tilts runs without a store",
        )
    }

    /// The store cannot take the message now; the caller should send it again.
    pub fn store_unavailable() -> Self {
        let mut p = Problem::new(
            503,
            "store-unavailable",
            "tilts cannot store the message now",
            "the message was not accepted; send it again later",
        );
        p.retry_after = Some(5);
        p
    }

    pub fn invalid(errors: Vec<Violation>) -> Self {
        let mut p = Problem::new(
            422,
            "invalid-request",
            "The request is not valid",
            format!("{} violation(s) of the route's schema", errors.len()),
        );
        p.errors = errors;
        p
    }

    /// Names the route only: for answers about a message that was not accepted (its provisional
    /// id would only mislead the caller).
    pub fn for_route(mut self, route: &str) -> Self {
        self.route = Some(route.to_string());
        self
    }

    pub fn with_route(mut self, route: &str, message_id: &str) -> Self {
        self.route = Some(route.to_string());
        self.message_id = Some(message_id.to_string());
        self
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut resp = (status, body).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(id) = self
            .message_id
            .as_deref()
            .and_then(|m| HeaderValue::from_str(m).ok())
        {
            h.insert("x-tilts-message-id", id);
        }
        if let Some(s) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}
