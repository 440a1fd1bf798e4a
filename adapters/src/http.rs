//! HTTP/REST adapter: one client per declared system, request/response, failures classified.
//!
//! The adapter never retries and never sleeps: it reports a [`DeliveryError`] with a class and the
//! engine decides (see `contract`). Error texts are built without URLs or bodies, because an
//! integrator may put a personal code in a path.
//!
//! A system may use client TLS ([`crate::tls::ClientTls`]: client certificate, extra CAs) and an
//! access token from a token endpoint ([`crate::token::TokenSource`]). With a token source, every
//! request carries `Authorization: Bearer <token>` from the system's [`TokenCache`]; when the
//! system answers 401 to a cached token, the token is dropped, a new one fetched and the request
//! sent exactly once more (a token revoked early is not a delivery failure). A failed handshake
//! is a `Connect` failure whose detail starts with "TLS handshake failed".

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::contract::{DeliveryError, FailureKind};
use crate::http1::{Failure, PlainHttp};
use crate::token::TokenCache;

/// The `User-Agent` of tilts' requests.
const USER_AGENT: &str = concat!("tilts/", env!("CARGO_PKG_VERSION"));

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
    /// Static authentication. Ignored when `token` is set (the token takes the
    /// `Authorization` header).
    pub auth: Option<HttpAuth>,
    /// Client certificate and extra trusted CAs; `None` uses the built-in roots only.
    pub tls: Option<crate::tls::ClientTls>,
    /// Where to get access tokens from; each request then carries `Authorization: Bearer`.
    pub token: Option<crate::token::TokenSource>,
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
    spec: Arc<HttpSystemSpec>,
    client: reqwest::Client,
    /// The lean transport for plain `http://` systems without an outbound proxy
    /// ([`crate::http1`]); reqwest takes everything else.
    plain: Option<Arc<PlainHttp>>,
    /// Shared by all clones, so the whole process makes one token request per expiry.
    tokens: Option<Arc<TokenCache>>,
}

impl HttpSystem {
    /// Builds the client (with the system's TLS settings). Fails only on a TLS/backend setup
    /// problem.
    pub fn new(spec: HttpSystemSpec) -> Result<Self, String> {
        let plain =
            PlainHttp::for_base(&spec.base_url, spec.connect_timeout, USER_AGENT).map(Arc::new);
        let mut builder = reqwest::Client::builder()
            .timeout(spec.timeout)
            .connect_timeout(spec.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .user_agent(USER_AGENT);
        if let Some(tls) = &spec.tls {
            builder = tls.apply(builder);
        }
        let client = builder
            .build()
            .map_err(|e| format!("cannot build the HTTP client for '{}': {e}", spec.name))?;
        let tokens = spec
            .token
            .clone()
            .map(|source| Arc::new(TokenCache::new(spec.name.clone(), source)));
        Ok(Self {
            spec: Arc::new(spec),
            client,
            plain,
            tokens,
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
    /// get an answer (or, with a token source, to get a token) is an `Err`.
    pub async fn send(&self, req: HttpRequest) -> Result<HttpResponse, DeliveryError> {
        let Some(tokens) = &self.tokens else {
            return self.send_once(&req, None).await;
        };
        let token = tokens.get(&self.client).await?;
        let resp = self.send_once(&req, Some(&token)).await?;
        if resp.status != 401 {
            return Ok(resp);
        }
        // The token was revoked or expired early: one new token, one more try.
        tracing::debug!(system = %self.spec.name, "401 with a cached token; fetching a new one");
        tokens.invalidate_token(&token).await;
        let token = tokens.get(&self.client).await?;
        self.send_once(&req, Some(&token)).await
    }

    async fn send_once(
        &self,
        req: &HttpRequest,
        token: Option<&str>,
    ) -> Result<HttpResponse, DeliveryError> {
        if let Some(plain) = &self.plain {
            return self.send_plain(plain, req, token).await;
        }
        let url = self.url_for(&req.path);
        let mut builder = self.client.request(req.method.clone(), &url);
        for (k, v) in &self.spec.headers {
            builder = builder.header(k, v);
        }
        for (k, v) in &req.headers {
            builder = builder.header(k, v);
        }
        if let Some(auth) = self.authorization(token)? {
            builder = builder.header(http::header::AUTHORIZATION, auth);
        }
        if let Some(body) = &req.body {
            // Bytes clone is a reference count, not a copy.
            builder = builder.body(body.clone());
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

    /// [`Self::send_once`] on the lean plain-HTTP transport: the same headers, timeouts and
    /// failure classes as through reqwest.
    async fn send_plain(
        &self,
        plain: &PlainHttp,
        req: &HttpRequest,
        token: Option<&str>,
    ) -> Result<HttpResponse, DeliveryError> {
        let url = self.url_for(&req.path);
        let auth = self.authorization(token)?;
        let mut headers = Vec::with_capacity(self.spec.headers.len() + req.headers.len() + 1);
        headers.extend(self.spec.headers.iter().map(|(k, v)| (k, v)));
        headers.extend(req.headers.iter().map(|(k, v)| (k, v)));
        if let Some(a) = &auth {
            headers.push((&http::header::AUTHORIZATION, a));
        }
        let timeout = req.timeout.unwrap_or(self.spec.timeout);
        let sent = plain.send(
            &req.method,
            &url,
            &headers,
            req.body.as_ref(),
            MAX_RESPONSE_BYTES,
        );
        match tokio::time::timeout(timeout, sent).await {
            Err(_) | Ok(Err(Failure::ConnectTimeout)) => {
                Err(self.error(FailureKind::Timeout, "no answer in time"))
            }
            Ok(Ok(r)) => Ok(HttpResponse {
                status: r.status,
                headers: r.headers,
                body: r.body,
            }),
            Ok(Err(Failure::Connect(t) | Failure::Broken(t))) => {
                Err(self.error(FailureKind::Connect, &crate::redact::redact(&t)))
            }
            Ok(Err(Failure::Protocol(t))) => Err(self.error(FailureKind::Protocol, &t)),
            Ok(Err(Failure::Request(t))) => Err(self.error(FailureKind::Request, &t)),
        }
    }

    /// The `Authorization` header of a request: the bearer token when there is one, else the
    /// system's static credentials (sensitive: never printed).
    fn authorization(&self, token: Option<&str>) -> Result<Option<HeaderValue>, DeliveryError> {
        let auth = match (token, &self.spec.auth) {
            (Some(token), _) => Some(format!("Bearer {token}")),
            (None, Some(HttpAuth::Bearer(token))) => Some(format!("Bearer {token}")),
            (None, Some(HttpAuth::Basic { username, password })) => {
                use base64::Engine as _;
                let pair = format!("{username}:{password}");
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                ))
            }
            (None, None) => None,
        };
        match auth.map(|a| HeaderValue::from_str(&a)) {
            None => Ok(None),
            Some(Ok(mut v)) => {
                v.set_sensitive(true);
                Ok(Some(v))
            }
            Some(Err(_)) => Err(self.error(
                FailureKind::Request,
                "the credentials cannot be sent in an Authorization header",
            )),
        }
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
        } else if e.is_connect() || is_tls_failure(e) {
            (FailureKind::Connect, failure_text(e))
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

/// Operator text for a transport failure: "TLS handshake failed: <reason>" when TLS refused the
/// connection (unknown CA, missing or rejected client certificate), else the innermost cause.
/// Never contains a URL.
pub(crate) fn failure_text(e: &reqwest::Error) -> String {
    match tls_cause(e) {
        Some(cause) => format!("TLS handshake failed: {cause}"),
        None => source_text(e),
    }
}

fn is_tls_failure(e: &reqwest::Error) -> bool {
    tls_cause(e).is_some()
}

/// The rustls error somewhere in the cause chain. An `io::Error` does not list the error it
/// wraps as its source, so wrapped errors are looked into explicitly.
fn tls_cause(e: &reqwest::Error) -> Option<&rustls::Error> {
    find_tls_cause(e)
}

fn find_tls_cause<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    // Cause chains are a handful of links long; the depth bound only guards against cycles.
    let mut next = Some(e);
    for _ in 0..16 {
        let err = next?;
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            && let Some(tls) = find_tls_cause(inner)
        {
            return Some(tls);
        }
        next = err.source();
    }
    None
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
            tls: None,
            token: None,
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

    /// Plain-HTTP systems go through the lean client: a redirect is an answer (not followed),
    /// and static Basic credentials and the system's headers are on the wire.
    #[tokio::test]
    async fn plain_http_answers_redirects_as_they_are_and_sends_credentials() {
        let (url, peer) = crate::http1::tests::raw_peer(vec![
            b"HTTP/1.1 302 Found\r\nlocation: /elsewhere\r\ncontent-length: 0\r\n\r\n".to_vec(),
        ])
        .await;
        let sys = HttpSystem::new(HttpSystemSpec {
            headers: vec![(
                HeaderName::from_static("x-client"),
                HeaderValue::from_static("tilts"),
            )],
            auth: Some(HttpAuth::Basic {
                username: "tilts".into(),
                password: "s3cret".into(),
            }),
            ..spec("plain", url)
        })
        .unwrap();
        assert!(sys.plain.is_some(), "an http:// system without a proxy");
        let resp = sys.send(get("/cases/1")).await.unwrap();
        assert_eq!(resp.status, 302);
        assert_eq!(resp.headers["location"], "/elsewhere");
        drop(sys);
        let seen = String::from_utf8(peer.await.unwrap().remove(0)).unwrap();
        assert!(seen.starts_with("GET /cases/1 HTTP/1.1\r\n"), "{seen}");
        assert!(seen.contains("\r\nx-client: tilts\r\n"), "{seen}");
        // base64("tilts:s3cret")
        assert!(
            seen.contains("\r\nauthorization: Basic dGlsdHM6czNjcmV0\r\n"),
            "{seen}"
        );
    }

    fn spec(name: &str, base_url: String) -> HttpSystemSpec {
        HttpSystemSpec {
            name: name.into(),
            base_url,
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            headers: vec![],
            auth: None,
            tls: None,
            token: None,
        }
    }

    fn get(path: &str) -> HttpRequest {
        HttpRequest {
            method: Method::GET,
            path: path.into(),
            headers: vec![],
            body: None,
            timeout: None,
        }
    }

    mod token {
        use super::*;
        use crate::token::testing::{count, token_server};
        use crate::token::{Secret, TokenSource};

        fn with_token(url: &str) -> HttpSystemSpec {
            HttpSystemSpec {
                // Ignored: the token takes the Authorization header.
                auth: Some(HttpAuth::Basic {
                    username: "u".into(),
                    password: "p".into(),
                }),
                token: Some(TokenSource::OAuth2 {
                    token_url: format!("{url}/token"),
                    client_id: "tilts".into(),
                    client_secret: Secret::new("s3cret"),
                    scope: None,
                }),
                ..spec("riga-clients", url.to_owned())
            }
        }

        #[tokio::test]
        async fn bearer_token_is_fetched_once_and_reused_by_clones() {
            let (sim, _) = token_server().await;
            let sys = HttpSystem::new(with_token(&sim.url())).unwrap();
            let clone = sys.clone();
            for s in [&sys, &clone, &sys] {
                let r = s.send(get("/data")).await.unwrap();
                assert_eq!(r.status, 200);
                assert_eq!(r.body, "ok:tok-1");
            }
            assert_eq!(count(&sim, "/token"), 1);
            let data = sim
                .requests()
                .into_iter()
                .find(|r| r.path == "/data")
                .unwrap();
            assert_eq!(data.header("authorization"), Some("Bearer tok-1"));
        }

        #[tokio::test]
        async fn a_401_invalidates_the_token_and_retries_exactly_once() {
            let (sim, issuer) = token_server().await;
            let sys = HttpSystem::new(with_token(&sim.url())).unwrap();
            assert_eq!(sys.send(get("/data")).await.unwrap().status, 200);

            issuer.revoke_all();
            let r = sys.send(get("/data")).await.unwrap();
            assert_eq!(r.status, 200);
            assert_eq!(r.body, "ok:tok-2");
            assert_eq!(count(&sim, "/token"), 2);
            assert_eq!(count(&sim, "/data"), 3);

            // The retry happened with the new token.
            let data: Vec<_> = sim
                .requests()
                .into_iter()
                .filter(|r| r.path == "/data")
                .collect();
            assert_eq!(data[1].header("authorization"), Some("Bearer tok-1"));
            assert_eq!(data[2].header("authorization"), Some("Bearer tok-2"));
        }

        #[tokio::test]
        async fn a_persistent_401_is_retried_once_with_a_new_token() {
            let routes = axum::Router::new()
                .route(
                    "/token",
                    axum::routing::post(|| async {
                        axum::Json(serde_json::json!({"access_token": "t", "expires_in": 600}))
                    }),
                )
                .route(
                    "/data",
                    axum::routing::get(|| async { http::StatusCode::UNAUTHORIZED }),
                );
            let sim = crate::sim::SimServer::start("p", "127.0.0.1:0".parse().unwrap(), routes)
                .await
                .unwrap();
            let sys = HttpSystem::new(with_token(&sim.url())).unwrap();
            let r = sys.send(get("/data")).await.unwrap();
            assert_eq!(r.status, 401);
            assert_eq!(count(&sim, "/data"), 2, "exactly one retry");
            assert_eq!(count(&sim, "/token"), 2, "a new token for the retry");
        }

        #[tokio::test]
        async fn token_failures_are_delivery_errors() {
            let (sim, _) = token_server().await;
            let sys = HttpSystem::new(with_token(&sim.url())).unwrap();
            sim.faults().fail_next(1, 503);
            let e = sys.send(get("/data")).await.unwrap_err();
            assert_eq!(e.kind, FailureKind::Status(503));
            assert_eq!(e.retry(), crate::contract::Retry::Retryable);
            assert_eq!(e.detail, "token request failed: HTTP 503");
            sim.faults().fail_next(1, 401);
            let e = sys.send(get("/data")).await.unwrap_err();
            assert_eq!(e.retry(), crate::contract::Retry::Permanent);
            assert!(!format!("{e:?}").contains("s3cret"));
            assert_eq!(count(&sim, "/data"), 0, "no data request without a token");
        }
    }

    mod tls {
        use super::*;
        use crate::sim::SimServer;
        use crate::sim::pki::TestPki;
        use crate::tls::ClientTls;

        async fn mtls_sim(pki: &TestPki) -> SimServer {
            let routes =
                axum::Router::new().route("/ping", axum::routing::get(|| async { "pong" }));
            SimServer::start_tls(
                "mtls",
                "127.0.0.1:0".parse().unwrap(),
                routes,
                pki.sim_tls_mtls(),
            )
            .await
            .unwrap()
        }

        fn system(url: String, tls: ClientTls) -> HttpSystem {
            HttpSystem::new(HttpSystemSpec {
                tls: Some(tls),
                ..spec("vraa", url)
            })
            .unwrap()
        }

        #[tokio::test]
        async fn mtls_happy_path_from_files() {
            let pki = TestPki::generate();
            let dir = tempfile::tempdir().unwrap();
            let files = pki.write_to(dir.path()).unwrap();
            let tls = ClientTls::from_files(
                Some(&files.client_cert),
                Some(&files.client_key),
                Some(&files.ca),
            )
            .unwrap();
            let sim = mtls_sim(&pki).await;
            let r = system(sim.url(), tls).send(get("/ping")).await.unwrap();
            assert_eq!((r.status, &r.body[..]), (200, &b"pong"[..]));
        }

        async fn handshake_error(pki: &TestPki, tls: ClientTls) -> DeliveryError {
            let sim = mtls_sim(pki).await;
            let e = system(sim.url(), tls)
                .send(get("/persons/010190-12349"))
                .await
                .unwrap_err();
            assert!(sim.requests().is_empty());
            assert_eq!(e.kind, FailureKind::Connect, "{e}");
            assert_eq!(e.retry(), crate::contract::Retry::Retryable);
            assert!(e.detail.starts_with("TLS handshake failed"), "{e}");
            assert!(!e.to_string().contains("010190"), "{e}");
            e
        }

        #[tokio::test]
        async fn no_client_certificate_is_a_connect_failure() {
            let pki = TestPki::generate();
            let tls = ClientTls::from_pem(None, Some(pki.ca_pem.clone().into_bytes())).unwrap();
            handshake_error(&pki, tls).await;
        }

        #[tokio::test]
        async fn a_client_certificate_from_another_ca_is_refused() {
            let pki = TestPki::generate();
            let tls = ClientTls::from_pem(
                Some((
                    pki.other_client_cert_pem.clone().into_bytes(),
                    pki.other_client_key_pem.clone().into_bytes(),
                )),
                Some(pki.ca_pem.clone().into_bytes()),
            )
            .unwrap();
            handshake_error(&pki, tls).await;
        }

        #[tokio::test]
        async fn a_server_from_an_untrusted_ca_is_refused() {
            let pki = TestPki::generate();
            let stranger = TestPki::generate();
            let tls = ClientTls::from_pem(
                Some((
                    pki.client_cert_pem.clone().into_bytes(),
                    pki.client_key_pem.clone().into_bytes(),
                )),
                Some(stranger.ca_pem.clone().into_bytes()),
            )
            .unwrap();
            let e = handshake_error(&pki, tls).await;
            assert!(e.detail.to_lowercase().contains("certificate"), "{e}");
        }
    }
}
