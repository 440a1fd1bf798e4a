//! HTTP/REST adapter: one client per declared system, request/response, failures classified.
//!
//! The adapter never retries and never sleeps: it reports a [`DeliveryError`] with a class and the
//! engine decides (see `contract`). Error texts are built without URLs or bodies, because an
//! integrator may put a personal code in a path.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::contract::{DeliveryError, FailureKind};

/// Largest answer body tilts reads from a peer; a larger one is a protocol failure.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// How a system authenticates tilts.
#[derive(Clone)]
pub enum HttpAuth {
    /// `Authorization: Bearer <token>`.
    Bearer(String),
    /// `Authorization: Basic ...`.
    Basic { username: String, password: String },
}

impl std::fmt::Debug for HttpAuth {
    // Secrets are never printed, not even in debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpAuth::Bearer(_) => f.write_str("Bearer(***)"),
            HttpAuth::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
        }
    }
}

/// Everything needed to talk to one system over HTTP, already validated by the config checker.
#[derive(Debug, Clone)]
pub struct HttpSystemSpec {
    /// The system's name in routes.yaml (used in errors and logs).
    pub name: String,
    /// Base URL; a request's path is appended to it.
    pub base_url: String,
    /// Whole-request timeout (connect, send, and read the answer).
    pub timeout: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Headers sent with every request to this system.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Authentication.
    pub auth: Option<HttpAuth>,
}

/// One request to a system.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub method: Method,
    /// Path (and query) appended to the system's base URL.
    pub path: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Option<Bytes>,
    /// Overrides the system's timeout for this request.
    pub timeout: Option<Duration>,
}

/// A system's answer (any status: whether it is acceptable is the route's decision).
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl HttpResponse {
    /// `Retry-After` in seconds, when the peer sent the delta-seconds form.
    pub fn retry_after(&self) -> Option<u64> {
        self.headers
            .get(http::header::RETRY_AFTER)?
            .to_str()
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The failure this answer means when the route does not accept its status.
    pub fn into_status_error(self, system: &str) -> DeliveryError {
        DeliveryError {
            system: system.to_string(),
            kind: FailureKind::Status(self.status),
            retry_after: self.retry_after(),
            detail: String::new(),
        }
    }
}

/// A client for one declared system. Cheap to clone (the connection pool is shared).
#[derive(Debug, Clone)]
pub struct HttpSystem {
    spec: std::sync::Arc<HttpSystemSpec>,
    client: reqwest::Client,
}

impl HttpSystem {
    /// Builds the client. Fails only on a TLS/backend setup problem.
    pub fn new(spec: HttpSystemSpec) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(spec.timeout)
            .connect_timeout(spec.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .user_agent(concat!("tilts/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client for '{}': {e}", spec.name))?;
        Ok(Self {
            spec: std::sync::Arc::new(spec),
            client,
        })
    }

    /// The system's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The full URL for a path (base URL + path, with exactly one slash between them).
    pub fn url_for(&self, path: &str) -> String {
        join_url(&self.spec.base_url, path)
    }

    /// Sends one request and reads the whole answer. Any HTTP status is `Ok`; only a failure to
    /// get an answer is an `Err`.
    pub async fn send(&self, req: HttpRequest) -> Result<HttpResponse, DeliveryError> {
        let url = self.url_for(&req.path);
        let mut builder = self.client.request(req.method, &url);
        for (k, v) in &self.spec.headers {
            builder = builder.header(k, v);
        }
        for (k, v) in req.headers {
            builder = builder.header(k, v);
        }
        builder = match &self.spec.auth {
            Some(HttpAuth::Bearer(token)) => builder.bearer_auth(token),
            Some(HttpAuth::Basic { username, password }) => {
                builder.basic_auth(username, Some(password))
            }
            None => builder,
        };
        if let Some(body) = req.body {
            builder = builder.body(body);
        }
        if let Some(t) = req.timeout {
            builder = builder.timeout(t);
        }
        let mut resp = builder.send().await.map_err(|e| self.classify(&e))?;
        let status = resp.status().as_u16();
        let headers = std::mem::take(resp.headers_mut());
        if resp
            .content_length()
            .is_some_and(|n| n as usize > MAX_RESPONSE_BYTES)
        {
            return Err(self.error(FailureKind::Protocol, "answer larger than 16 MiB"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.classify(&e))? {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(self.error(FailureKind::Protocol, "answer larger than 16 MiB"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(HttpResponse {
            status,
            headers,
            body: Bytes::from(body),
        })
    }

    fn error(&self, kind: FailureKind, detail: &str) -> DeliveryError {
        DeliveryError {
            system: self.spec.name.clone(),
            kind,
            retry_after: None,
            detail: detail.to_string(),
        }
    }

    fn classify(&self, e: &reqwest::Error) -> DeliveryError {
        let (kind, detail) = if e.is_timeout() {
            (FailureKind::Timeout, "no answer in time".to_string())
        } else if e.is_connect() {
            (FailureKind::Connect, source_text(e))
        } else if e.is_builder() {
            (
                FailureKind::Request,
                "the request could not be built".into(),
            )
        } else if e.is_body() || e.is_decode() {
            (FailureKind::Protocol, source_text(e))
        } else {
            // Resets and broken connections mid-request: the peer may be back next time.
            (FailureKind::Connect, source_text(e))
        };
        self.error(kind, &detail)
    }
}

/// The innermost cause of a reqwest error, without the URL (which may carry personal data).
fn source_text(e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let text = cause.to_string();
    if text.contains("://") {
        // Never echo a URL.
        "connection failed".to_string()
    } else {
        crate::redact::redact(&text).into_owned()
    }
}

/// Joins a base URL and a path with exactly one slash between them; an empty path is the base.
pub fn join_url(base: &str, path: &str) -> String {
    if path.is_empty() {
        return base.to_string();
    }
    match (base.ends_with('/'), path.starts_with('/')) {
        (true, true) => format!("{base}{}", &path[1..]),
        (false, false) if !path.starts_with('?') => format!("{base}/{path}"),
        _ => format!("{base}{path}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_joined_with_one_slash() {
        assert_eq!(join_url("http://h/api", "/x"), "http://h/api/x");
        assert_eq!(join_url("http://h/api/", "/x"), "http://h/api/x");
        assert_eq!(join_url("http://h/api", "x"), "http://h/api/x");
        assert_eq!(join_url("http://h/api", "?q=1"), "http://h/api?q=1");
        assert_eq!(join_url("http://h/api", ""), "http://h/api");
    }

    #[test]
    fn auth_debug_hides_secrets() {
        let a = HttpAuth::Basic {
            username: "tilts".into(),
            password: "s3cret".into(),
        };
        assert!(!format!("{a:?}").contains("s3cret"));
        assert!(!format!("{:?}", HttpAuth::Bearer("tok".into())).contains("tok"));
    }

    #[tokio::test]
    async fn connection_refused_is_a_retryable_connect_failure() {
        // Bind then drop a listener to get a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let sys = HttpSystem::new(HttpSystemSpec {
            name: "nowhere".into(),
            base_url: format!("http://127.0.0.1:{port}"),
            timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            headers: vec![],
            auth: None,
        })
        .unwrap();
        let err = sys
            .send(HttpRequest {
                method: Method::GET,
                path: "/persons/010190-12349".into(),
                headers: vec![],
                body: None,
                timeout: None,
            })
            .await
            .unwrap_err();
        assert_eq!(err.kind, FailureKind::Connect);
        assert_eq!(err.retry(), crate::contract::Retry::Retryable);
        assert!(!err.to_string().contains("010190"), "{err}");
    }
}
