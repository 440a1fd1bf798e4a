//! Access tokens fetched from a system's token endpoint and cached per system.
//!
//! Contract:
//! - [`TokenSource::OAuth2`]: the OAuth2 client credentials grant (RFC 6749 §4.4): `POST` of the
//!   form `grant_type=client_credentials[&scope=...]` with the client authenticated by HTTP Basic
//!   (`client_id:client_secret`, sent as configured).
//! - [`TokenSource::Dagr`]: the DAGR data platform. Its token request format is *unconfirmed*;
//!   tilts sends `POST` form `grant_type=client_credentials&client_id=...` over the system's
//!   mutual-TLS client (the client certificate authenticates, there is no secret).
//! - Both expect `{"access_token": "...", "token_type": "Bearer", "expires_in": 300}`
//!   (`token_type` may be absent; any other type than Bearer is refused; `expires_in` defaults to
//!   300 s when absent).
//! - A token is reused until `expires_in` minus a 30 s margin (half its lifetime for tokens that
//!   live a minute or less), so it is never sent in its last seconds.
//! - Concurrent callers share one fetch (single flight): the cache holds an async mutex across
//!   the token request, so a burst of 20 deliveries makes one token request, not 20.
//! - Failures are [`DeliveryError`]s of the system: connect/timeout and 5xx/429/408 of the token
//!   endpoint are retryable, 400/401/403 and unreadable answers permanent. Details never contain
//!   the secret, the token or the token URL (which may carry credentials).
//! - The adapter never retries a token request itself (the engine retries the delivery).

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::contract::{DeliveryError, FailureKind};

/// Reuse margin: a token is refreshed this long before it expires.
pub const EXPIRY_MARGIN: Duration = Duration::from_secs(30);
/// Lifetime assumed when the token answer has no `expires_in`.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);
/// Largest token answer read.
const MAX_TOKEN_ANSWER: usize = 64 * 1024;

/// A secret string (client secret): `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Secret {
        Secret(secret.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Secret {
        Secret(s)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Where a system's access tokens come from.
#[derive(Debug, Clone)]
pub enum TokenSource {
    /// OAuth2 client credentials grant, client authenticated with HTTP Basic.
    OAuth2 {
        /// The token endpoint (absolute URL).
        token_url: String,
        /// The client id.
        client_id: String,
        /// The client secret.
        client_secret: Secret,
        /// Requested scope (space-separated), if the endpoint needs one.
        scope: Option<String>,
    },
    /// DAGR: `client_id` in the form, authenticated by the system's client certificate (mTLS).
    Dagr {
        /// The token endpoint (absolute URL).
        token_url: String,
        /// The client id registered for the client certificate.
        client_id: String,
    },
}

/// A token that is still usable.
struct Cached {
    token: String,
    /// When to stop using it (expiry minus the margin).
    refresh_at: Instant,
}

/// The access token cache of one system. Share it (e.g. in an `Arc`) between everything that
/// calls the system.
pub struct TokenCache {
    system: String,
    source: TokenSource,
    // An async mutex held across the token request: that is what makes concurrent callers wait
    // for the one fetch in progress instead of starting their own.
    state: Mutex<Option<Cached>>,
}

impl fmt::Debug for TokenCache {
    // Never prints the token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCache")
            .field("system", &self.system)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// The token endpoint's answer (RFC 6749 §5.1).
#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl TokenCache {
    /// An empty cache for `system` (its name in routes.yaml, used in errors).
    pub fn new(system: impl Into<String>, source: TokenSource) -> TokenCache {
        TokenCache {
            system: system.into(),
            source,
            state: Mutex::new(None),
        }
    }

    /// The token source.
    pub fn source(&self) -> &TokenSource {
        &self.source
    }

    /// A usable token: the cached one, or a fresh one fetched with `client` (the system's
    /// client, so a DAGR token request carries the client certificate).
    pub async fn get(&self, client: &reqwest::Client) -> Result<String, DeliveryError> {
        let mut state = self.state.lock().await;
        if let Some(cached) = state.as_ref()
            && Instant::now() < cached.refresh_at
        {
            return Ok(cached.token.clone());
        }
        *state = None;
        let (token, lifetime) = self.fetch(client).await?;
        *state = Some(Cached {
            token: token.clone(),
            refresh_at: Instant::now() + usable_lifetime(lifetime),
        });
        Ok(token)
    }

    /// Forgets the cached token, whatever it is.
    pub async fn invalidate(&self) {
        *self.state.lock().await = None;
    }

    /// Forgets the cached token if it is still `rejected` (a peer answered 401 to it). When
    /// another caller already replaced it, the newer token is kept: a burst of 401s for one
    /// revoked token leads to one new token request, not one per request.
    pub async fn invalidate_token(&self, rejected: &str) {
        let mut state = self.state.lock().await;
        if state.as_ref().is_some_and(|c| c.token == rejected) {
            *state = None;
        }
    }

    async fn fetch(&self, client: &reqwest::Client) -> Result<(String, Duration), DeliveryError> {
        let request = match &self.source {
            TokenSource::OAuth2 {
                token_url,
                client_id,
                client_secret,
                scope,
            } => {
                let mut form = vec![("grant_type", "client_credentials")];
                if let Some(scope) = scope {
                    form.push(("scope", scope));
                }
                client
                    .post(token_url)
                    .basic_auth(client_id, Some(client_secret.expose()))
                    .body(form_encode(&form))
            }
            TokenSource::Dagr {
                token_url,
                client_id,
            } => client.post(token_url).body(form_encode(&[
                ("grant_type", "client_credentials"),
                ("client_id", client_id),
            ])),
        };
        let mut resp = request
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| self.transport_error(&e))?;
        let status = resp.status().as_u16();
        if !resp.status().is_success() {
            let retry_after = resp
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok());
            return Err(DeliveryError {
                retry_after,
                ..self.error(
                    FailureKind::Status(status),
                    format!("token request failed: HTTP {status}"),
                )
            });
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.transport_error(&e))? {
            if body.len() + chunk.len() > MAX_TOKEN_ANSWER {
                return Err(self.error(
                    FailureKind::Protocol,
                    "token request failed: answer larger than 64 KiB".into(),
                ));
            }
            body.extend_from_slice(&chunk);
        }
        // serde's message could quote the token: say only what was expected.
        let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|_| {
            self.error(
                FailureKind::Protocol,
                "token request failed: the answer is not JSON with a string \"access_token\""
                    .into(),
            )
        })?;
        if let Some(kind) = &answer.token_type
            && !kind.eq_ignore_ascii_case("bearer")
        {
            return Err(self.error(
                FailureKind::Protocol,
                "token request failed: token_type is not Bearer".into(),
            ));
        }
        if answer.access_token.trim().is_empty() {
            return Err(self.error(
                FailureKind::Protocol,
                "token request failed: empty access_token".into(),
            ));
        }
        let lifetime = answer
            .expires_in
            .map_or(DEFAULT_LIFETIME, Duration::from_secs);
        tracing::debug!(system = %self.system, lifetime_s = lifetime.as_secs(), "access token fetched");
        Ok((answer.access_token, lifetime))
    }

    fn error(&self, kind: FailureKind, detail: String) -> DeliveryError {
        DeliveryError {
            system: self.system.clone(),
            kind,
            retry_after: None,
            detail,
        }
    }

    fn transport_error(&self, e: &reqwest::Error) -> DeliveryError {
        let (kind, what) = if e.is_timeout() {
            (FailureKind::Timeout, "no answer in time".to_string())
        } else if e.is_builder() {
            (FailureKind::Request, "invalid token URL".to_string())
        } else {
            (FailureKind::Connect, crate::http::failure_text(e))
        };
        // The token URL is never quoted: it may carry credentials.
        self.error(kind, format!("token request failed: {what}"))
    }
}

/// How long a token with `lifetime` is reused.
fn usable_lifetime(lifetime: Duration) -> Duration {
    if lifetime > EXPIRY_MARGIN * 2 {
        lifetime - EXPIRY_MARGIN
    } else {
        lifetime / 2
    }
}

/// `application/x-www-form-urlencoded` encoding of `pairs`.
fn form_encode(pairs: &[(&str, &str)]) -> String {
    fn encode(out: &mut String, s: &str) {
        for b in s.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                    out.push(char::from(b))
                }
                b' ' => out.push('+'),
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
    }
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        encode(&mut out, k);
        out.push('=');
        encode(&mut out, v);
    }
    out
}

/// A token endpoint and a protected resource for tests, on a [`crate::sim::SimServer`] (which
/// records every request, so tests count token requests from the recording).
#[cfg(test)]
pub(crate) mod testing {
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use axum::Router;
    use axum::extract::State;
    use axum::routing::{get, post};
    use http::{HeaderMap, StatusCode};

    use crate::sim::SimServer;

    /// The issuer's state: tokens it accepts, and how it answers.
    #[derive(Default)]
    pub(crate) struct Issuer {
        issued: AtomicUsize,
        valid: Mutex<HashSet<String>>,
        /// Seconds announced in `expires_in`; `None` omits it.
        pub(crate) expires_in: Mutex<Option<u64>>,
        /// How long the token endpoint takes to answer.
        pub(crate) delay: Mutex<Duration>,
    }

    impl Issuer {
        /// Every token issued so far stops being accepted.
        pub(crate) fn revoke_all(&self) {
            self.valid.lock().unwrap().clear();
        }
    }

    /// Starts the server: `POST /token` issues `tok-1`, `tok-2`, ...; `GET /data` answers
    /// 200 `ok:<token>` to a valid bearer token, 401 otherwise.
    pub(crate) async fn token_server() -> (SimServer, Arc<Issuer>) {
        let issuer = Arc::new(Issuer {
            expires_in: Mutex::new(Some(3600)),
            ..Issuer::default()
        });
        let routes = Router::new()
            .route("/token", post(issue))
            .route("/data", get(data))
            .with_state(issuer.clone());
        let sim = SimServer::start("token-test", "127.0.0.1:0".parse().unwrap(), routes)
            .await
            .unwrap();
        (sim, issuer)
    }

    async fn issue(State(issuer): State<Arc<Issuer>>) -> axum::response::Response {
        let delay = *issuer.delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let n = issuer.issued.fetch_add(1, Ordering::SeqCst) + 1;
        let token = format!("tok-{n}");
        issuer.valid.lock().unwrap().insert(token.clone());
        let mut answer = serde_json::json!({"access_token": token, "token_type": "Bearer"});
        if let Some(s) = *issuer.expires_in.lock().unwrap() {
            answer["expires_in"] = s.into();
        }
        axum::response::IntoResponse::into_response(axum::Json(answer))
    }

    async fn data(State(issuer): State<Arc<Issuer>>, headers: HeaderMap) -> (StatusCode, String) {
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if issuer.valid.lock().unwrap().contains(token) {
            (StatusCode::OK, format!("ok:{token}"))
        } else {
            (StatusCode::UNAUTHORIZED, "invalid token".into())
        }
    }

    /// How many requests `sim` received on `path`.
    pub(crate) fn count(sim: &SimServer, path: &str) -> usize {
        sim.requests().iter().filter(|r| r.path == path).count()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::testing::{count, token_server};
    use super::*;
    use crate::contract::Retry;

    fn oauth2(url: &str) -> TokenSource {
        TokenSource::OAuth2 {
            token_url: format!("{url}/token"),
            client_id: "tilts client".into(),
            client_secret: Secret::new("s3cret-value"),
            scope: Some("cases read".into()),
        }
    }

    #[test]
    fn secrets_and_tokens_are_never_printed() {
        let secret = Secret::new("s3cret-value");
        assert_eq!(format!("{secret:?}"), "***");
        assert_eq!(secret.to_string(), "***");
        assert_eq!(secret.expose(), "s3cret-value");
        let cache = TokenCache::new("riga", oauth2("http://tilts:pw@127.0.0.1:1"));
        assert!(!format!("{cache:?}").contains("s3cret"), "{cache:?}");
    }

    #[test]
    fn tokens_are_refreshed_before_they_expire() {
        assert_eq!(
            usable_lifetime(Duration::from_secs(300)),
            Duration::from_secs(270)
        );
        assert_eq!(
            usable_lifetime(Duration::from_secs(40)),
            Duration::from_secs(20)
        );
        assert_eq!(usable_lifetime(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn forms_are_url_encoded() {
        assert_eq!(
            form_encode(&[("grant_type", "client_credentials"), ("scope", "a b&c=é")]),
            "grant_type=client_credentials&scope=a+b%26c%3D%C3%A9"
        );
    }

    #[tokio::test]
    async fn oauth2_request_shape_and_cached_reuse() {
        let (sim, _) = token_server().await;
        let cache = TokenCache::new("riga", oauth2(&sim.url()));
        let client = reqwest::Client::new();
        assert_eq!(cache.get(&client).await.unwrap(), "tok-1");
        assert_eq!(cache.get(&client).await.unwrap(), "tok-1");
        assert_eq!(count(&sim, "/token"), 1);

        let request = &sim.requests()[0];
        assert_eq!(request.method, "POST");
        assert_eq!(
            request.header("content-type"),
            Some("application/x-www-form-urlencoded")
        );
        assert_eq!(
            std::str::from_utf8(&request.body).unwrap(),
            "grant_type=client_credentials&scope=cases+read"
        );
        use base64::Engine as _;
        let basic = base64::engine::general_purpose::STANDARD.encode("tilts client:s3cret-value");
        assert_eq!(
            request.header("authorization"),
            Some(format!("Basic {basic}").as_str())
        );
    }

    #[tokio::test]
    async fn refreshes_after_expiry_and_after_invalidation() {
        let (sim, issuer) = token_server().await;
        *issuer.expires_in.lock().unwrap() = None; // default lifetime
        let cache = TokenCache::new("riga", oauth2(&sim.url()));
        let client = reqwest::Client::new();
        assert_eq!(cache.get(&client).await.unwrap(), "tok-1");
        {
            let state = cache.state.lock().await;
            let left = state.as_ref().unwrap().refresh_at - Instant::now();
            assert!(
                left > Duration::from_secs(260) && left <= Duration::from_secs(270),
                "{left:?}"
            );
        }
        // Time passes: the token reaches its refresh point.
        cache.state.lock().await.as_mut().unwrap().refresh_at = Instant::now();
        assert_eq!(cache.get(&client).await.unwrap(), "tok-2");
        assert_eq!(count(&sim, "/token"), 2);

        // Invalidating a token that was already replaced keeps the current one.
        cache.invalidate_token("tok-1").await;
        assert_eq!(cache.get(&client).await.unwrap(), "tok-2");
        cache.invalidate_token("tok-2").await;
        assert_eq!(cache.get(&client).await.unwrap(), "tok-3");
        cache.invalidate().await;
        assert_eq!(cache.get(&client).await.unwrap(), "tok-4");
        assert_eq!(count(&sim, "/token"), 4);
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_fetch() {
        let (sim, issuer) = token_server().await;
        *issuer.delay.lock().unwrap() = Duration::from_millis(100);
        let cache = Arc::new(TokenCache::new("riga", oauth2(&sim.url())));
        let client = reqwest::Client::new();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let (cache, client) = (cache.clone(), client.clone());
            set.spawn(async move { cache.get(&client).await.unwrap() });
        }
        let tokens = set.join_all().await;
        assert_eq!(tokens.len(), 20);
        assert!(tokens.iter().all(|t| t == "tok-1"), "{tokens:?}");
        assert_eq!(count(&sim, "/token"), 1);
    }

    #[tokio::test]
    async fn token_endpoint_failures_are_classified_without_secrets() {
        let (sim, _) = token_server().await;
        let cache = TokenCache::new("riga", oauth2(&sim.url()));
        let client = reqwest::Client::new();
        for (status, retry) in [
            (503, Retry::Retryable),
            (429, Retry::Retryable),
            (400, Retry::Permanent),
            (401, Retry::Permanent),
            (403, Retry::Permanent),
        ] {
            sim.faults().fail_next(1, status);
            let e = cache.get(&client).await.unwrap_err();
            assert_eq!(e.kind, FailureKind::Status(status));
            assert_eq!(e.retry(), retry, "{status}");
            assert_eq!(e.detail, format!("token request failed: HTTP {status}"));
            assert_eq!(e.system, "riga");
            assert!(!e.to_string().contains("s3cret"));
        }
        // It recovers on the next call.
        assert_eq!(cache.get(&client).await.unwrap(), "tok-1");

        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let nowhere = TokenCache::new(
            "riga",
            oauth2(&format!("http://tilts:pw-in-url@127.0.0.1:{port}")),
        );
        let e = nowhere.get(&client).await.unwrap_err();
        assert_eq!(e.kind, FailureKind::Connect);
        assert_eq!(e.retry(), Retry::Retryable);
        assert!(e.detail.starts_with("token request failed: "), "{e}");
        assert!(!e.to_string().contains("pw-in-url"), "{e}");
    }

    #[tokio::test]
    async fn unusable_token_answers_are_protocol_failures() {
        async fn answer(body: serde_json::Value) -> DeliveryError {
            let routes = axum::Router::new().route(
                "/token",
                axum::routing::post(move || async move { axum::Json(body) }),
            );
            let sim = crate::sim::SimServer::start("t", "127.0.0.1:0".parse().unwrap(), routes)
                .await
                .unwrap();
            let cache = TokenCache::new("riga", oauth2(&sim.url()));
            cache.get(&reqwest::Client::new()).await.unwrap_err()
        }
        let e = answer(serde_json::json!({"token": "secret-tok"})).await;
        assert_eq!(e.kind, FailureKind::Protocol);
        assert!(!e.to_string().contains("secret-tok"), "{e}");
        let e =
            answer(serde_json::json!({"access_token": "secret-tok", "token_type": "mac"})).await;
        assert_eq!(e.kind, FailureKind::Protocol);
        assert!(e.detail.contains("token_type"), "{e}");
        assert!(!e.to_string().contains("secret-tok"), "{e}");
    }

    #[tokio::test]
    async fn works_with_the_social_services_token_endpoint() {
        use crate::sim::social_services::{CLIENT_ID, CLIENT_SECRET};
        let sim = crate::sim::social_services("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let source = |secret: &str| TokenSource::OAuth2 {
            token_url: format!("{}/oauth2/token", sim.url()),
            client_id: CLIENT_ID.into(),
            client_secret: Secret::new(secret),
            scope: None,
        };
        let client = reqwest::Client::new();
        let token = TokenCache::new("social", source(CLIENT_SECRET))
            .get(&client)
            .await
            .unwrap();
        assert!(token.starts_with("sim-at-"), "{token}");
        let e = TokenCache::new("social", source("wrong"))
            .get(&client)
            .await
            .unwrap_err();
        assert_eq!(e.kind, FailureKind::Status(401));
        assert_eq!(e.retry(), Retry::Permanent);
    }
}
