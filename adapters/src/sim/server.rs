//! The machinery every simulator shares: the listener, request recording, fault injection and the
//! `/_sim/` control endpoints.
//!
//! A simulator only supplies its own [`Router`]; [`SimServer::start`] wraps it in one middleware
//! that records each request and applies the current [`Faults`], adds the control routes and a
//! problem+json fallback, and serves it on a socket of its own.
//!
//! [`SimServer::start_tls`] serves the same over HTTPS ([`SimTls`]); with a client CA it requires
//! a client certificate issued by that CA (mutual TLS) and hands the verified certificate's
//! name to handlers as the request extension [`ClientCertName`]. Failed handshakes are logged at
//! debug level and only cost that one connection.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::{IncomingStream, Listener};
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Largest request body a simulator accepts (the VISS request limit is 4 MB; leave headroom).
const MAX_BODY: usize = 8 * 1024 * 1024;

/// How many requests a simulator remembers; older ones are dropped so a long `tilts demo` does
/// not grow without bound. Tests stay far below it.
const MAX_RECORDED: usize = 10_000;

/// How long [`SimServer::shutdown`] waits for in-flight requests before aborting them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Path prefix of the control endpoints, which are neither recorded nor faulted.
const CONTROL_PREFIX: &str = "/_sim/";

/// How long a client may take to complete the TLS handshake before its connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The server side of a TLS simulator: its certificate, its key and, for mutual TLS, the CA
/// whose client certificates it accepts.
#[derive(Clone)]
pub struct SimTls {
    /// Server certificate chain, PEM (leaf first).
    pub cert_pem: Vec<u8>,
    /// The server certificate's private key, PEM.
    pub key_pem: Vec<u8>,
    /// With `Some`, a client certificate issued by one of these CAs (PEM bundle) is required.
    pub client_ca_pem: Option<Vec<u8>>,
}

impl fmt::Debug for SimTls {
    // Never prints the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimTls")
            .field("mutual", &self.client_ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

/// The verified client certificate's subject CN (or its first DNS name when the subject has
/// no CN), present as a request extension on mutual-TLS simulators only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCertName(pub String);

/// One request a simulator received, as it arrived on the wire.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// HTTP method, e.g. `POST`.
    pub method: String,
    /// Path and query string, e.g. `/companies?name=maizn%C4%ABca`.
    pub path: String,
    /// Every header in arrival order; names are lower case.
    pub headers: Vec<(String, String)>,
    /// The raw body (empty when the request had none, or when it exceeded the body limit).
    pub body: Bytes,
}

impl RecordedRequest {
    /// The body parsed as JSON, or `None` when it is not JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The first value of a header, matched case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The form served by `GET /_sim/requests`: headers as `[name, value]` pairs and the body as
    /// (lossy UTF-8) text.
    fn to_json(&self) -> Value {
        json!({
            "method": self.method,
            "path": self.path,
            "headers": self.headers.iter().map(|(n, v)| json!([n, v])).collect::<Vec<_>>(),
            "body": String::from_utf8_lossy(&self.body),
        })
    }
}

/// The faults a simulator injects, shared between the server, its owner and the control
/// endpoint (`POST /_sim/faults`). Cheap to clone: clones control the same simulator.
///
/// Settings combine: a delay applies to every request, then the first matching action wins in
/// this order: a pending connection reset, a pending `fail_next` failure, `fail_always`.
#[derive(Clone, Default)]
pub struct Faults(Arc<Mutex<FaultState>>);

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct FaultState {
    fail_next: usize,
    fail_next_status: u16,
    fail_always: Option<u16>,
    delay: Option<Duration>,
    reset_next: usize,
}

/// What the middleware does with one request, decided when it arrives.
#[derive(Debug, PartialEq, Eq)]
enum Action {
    Pass,
    Fail(u16),
    Reset,
}

impl Faults {
    /// The next `count` requests are answered with `status` and the error body a real gateway
    /// or server would send (nginx HTML for 502/503/504, problem+json otherwise). A status
    /// outside 100..=999 is answered as 500.
    pub fn fail_next(&self, count: usize, status: u16) {
        let mut s = self.lock();
        s.fail_next = count;
        s.fail_next_status = status;
    }

    /// Every request is answered with `status` until [`Faults::clear`].
    pub fn fail_always(&self, status: u16) {
        self.lock().fail_always = Some(status);
    }

    /// Every request waits `d` before it is handled (or failed), to provoke client timeouts.
    /// The request is recorded when it arrives, before the wait.
    pub fn delay(&self, d: Duration) {
        self.lock().delay = (!d.is_zero()).then_some(d);
    }

    /// The next `count` requests get no answer at all: the connection is closed with a TCP
    /// reset, as when the peer process crashes mid-request. The client sees a connection
    /// error, never a status code.
    pub fn reset_connection_next(&self, count: usize) {
        self.lock().reset_next = count;
    }

    /// Back to normal service: no failures, no delay, no resets.
    pub fn clear(&self) {
        *self.lock() = FaultState::default();
    }

    fn lock(&self) -> MutexGuard<'_, FaultState> {
        // A panic while holding this lock cannot leave the plain-data state inconsistent.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Decides the fate of one arriving request and consumes the one-shot faults it uses.
    fn plan(&self) -> (Option<Duration>, Action) {
        let mut s = self.lock();
        let action = if s.reset_next > 0 {
            s.reset_next -= 1;
            Action::Reset
        } else if s.fail_next > 0 {
            s.fail_next -= 1;
            Action::Fail(s.fail_next_status)
        } else if let Some(status) = s.fail_always {
            Action::Fail(status)
        } else {
            Action::Pass
        };
        (s.delay, action)
    }

    fn to_json(&self) -> Value {
        let s = self.lock().clone();
        json!({
            "failNext": s.fail_next,
            "failNextStatus": (s.fail_next > 0).then_some(s.fail_next_status),
            "failAlways": s.fail_always,
            "delayMs": s.delay.map(|d| d.as_millis() as u64),
            "resetNext": s.reset_next,
        })
    }
}

impl fmt::Debug for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Faults").field(&*self.lock()).finish()
    }
}

/// State shared by the middleware, the control endpoints and the [`SimServer`] handle.
struct Shared {
    name: String,
    faults: Faults,
    recorded: Mutex<VecDeque<RecordedRequest>>,
}

impl Shared {
    fn recorded(&self) -> MutexGuard<'_, VecDeque<RecordedRequest>> {
        self.recorded.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, request: RecordedRequest) {
        let mut log = self.recorded();
        if log.len() == MAX_RECORDED {
            log.pop_front();
        }
        log.push_back(request);
    }
}

/// One running simulator on its own socket.
///
/// Dropping it aborts the server task (so a failing test never leaks a listener);
/// [`SimServer::shutdown`] stops it gracefully.
pub struct SimServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    tls: bool,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl SimServer {
    /// Binds `addr` (port 0 picks a free port) and serves `routes` with the shared recording,
    /// fault and control machinery. `name` identifies the simulator in health answers and logs.
    pub async fn start(name: &str, addr: SocketAddr, routes: Router) -> io::Result<SimServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        Self::serve(name, SimListener::Plain(listener), addr, false, routes)
    }

    /// Like [`SimServer::start`], over HTTPS. With `tls.client_ca_pem` set, clients must present
    /// a certificate issued by that CA (the handshake fails otherwise), and handlers find the
    /// certificate's name in the [`ClientCertName`] request extension. Fails with
    /// `InvalidInput` when the certificate, key or CA cannot be used.
    pub async fn start_tls(
        name: &str,
        addr: SocketAddr,
        routes: Router,
        tls: SimTls,
    ) -> io::Result<SimServer> {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config(&tls)?));
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let accept_task = tokio::spawn(accept_tls(name.to_owned(), listener, acceptor, tx));
        let listener = SimListener::Tls {
            incoming: rx,
            addr,
            accept_task,
        };
        Self::serve(name, listener, addr, true, routes)
    }

    fn serve(
        name: &str,
        listener: SimListener,
        addr: SocketAddr,
        tls: bool,
        routes: Router,
    ) -> io::Result<SimServer> {
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            faults: Faults::default(),
            recorded: Mutex::new(VecDeque::new()),
        });
        let app = routes
            .merge(control_routes(shared.clone()))
            .fallback(unknown_path)
            .layer(middleware::from_fn_with_state(shared.clone(), intercept));
        let (stop, stopped) = oneshot::channel::<()>();
        let log_name = shared.name.clone();
        let task = tokio::spawn(async move {
            let service = app.into_make_service_with_connect_info::<ConnHandle>();
            let served = axum::serve(listener, service)
                .with_graceful_shutdown(async {
                    // A dropped sender also means "stop".
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = served {
                tracing::warn!(simulator = %log_name, error = %e, "simulator stopped with an error");
            }
        });
        tracing::debug!(simulator = %name, %addr, "simulator listening");
        Ok(SimServer {
            shared,
            addr,
            tls,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The simulator's name, e.g. `enterprise-register`.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The socket address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL without a trailing slash, e.g. `http://127.0.0.1:40123`
    /// (`https://` when started with [`SimServer::start_tls`]).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Every request received so far (control calls under `/_sim/` excluded), oldest first,
    /// including those answered with an injected fault.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.recorded().iter().cloned().collect()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.shared.recorded().clear();
    }

    /// The fault switches of this simulator.
    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// Stops accepting connections, lets in-flight requests finish (for at most a few seconds)
    /// and waits until the server task has ended.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(SHUTDOWN_GRACE, task).await.is_err() {
                abort.abort();
            }
        }
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl fmt::Debug for SimServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimServer")
            .field("name", &self.shared.name)
            .field("addr", &self.addr)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// Records the request, then applies the current faults before the simulator sees it.
async fn intercept(
    State(shared): State<Arc<Shared>>,
    mut request: Request,
    next: Next,
) -> Response {
    let client_name = request
        .extensions()
        .get::<ConnectInfo<ConnHandle>>()
        .and_then(|ConnectInfo(conn)| conn.client_name.clone());
    if let Some(client_name) = client_name {
        request
            .extensions_mut()
            .insert(ClientCertName(client_name.to_string()));
    }
    if request.uri().path().starts_with(CONTROL_PREFIX) {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let (body, too_large) = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(bytes) => (bytes, false),
        Err(_) => (Bytes::new(), true),
    };
    shared.record(RecordedRequest {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.to_string()),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                let value = String::from_utf8_lossy(v.as_bytes()).into_owned();
                (n.as_str().to_owned(), value)
            })
            .collect(),
        body: body.clone(),
    });
    tracing::debug!(simulator = %shared.name, method = %parts.method, path = %parts.uri.path(), "simulator request");

    let (delay, action) = shared.faults.plan();
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    match action {
        Action::Pass => {}
        Action::Fail(status) => return fault_response(status),
        Action::Reset => {
            if let Some(ConnectInfo(conn)) = parts.extensions.get::<ConnectInfo<ConnHandle>>() {
                conn.kill();
                // Never reaches the client: writing it fails and the connection is reset.
                return StatusCode::INTERNAL_SERVER_ERROR.into_response();
            }
            // Served without our listener (no connection handle): the closest thing is the
            // 502 a gateway in front of a crashed process would send.
            return fault_response(502);
        }
    }
    if too_large {
        return problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Payload Too Large",
            format!("The request body exceeds {MAX_BODY} bytes."),
        );
    }
    next.run(Request::from_parts(parts, Body::from(body))).await
}

/// The answer an injected failure gets, shaped like what real peers send for that status.
fn fault_response(status: u16) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let reason = status.canonical_reason().unwrap_or("Error");
    let mut response = match status.as_u16() {
        // What nginx in front of an upstream that is down or slow sends.
        502..=504 => {
            let title = if status == StatusCode::SERVICE_UNAVAILABLE {
                "503 Service Temporarily Unavailable".to_owned()
            } else {
                format!("{} {reason}", status.as_u16())
            };
            let html = format!(
                "<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
            );
            let mut r = (status, html).into_response();
            let headers = r.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
            headers.insert(header::SERVER, HeaderValue::from_static("nginx"));
            r
        }
        429 => {
            let mut r = problem(
                status,
                "rate-limited",
                reason,
                "Request quota exceeded; retry later.",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
        401 => {
            let mut r = problem(
                status,
                "unauthorized",
                reason,
                "The access token is missing, expired or revoked.",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
            r
        }
        500..=599 => problem(
            status,
            "server-error",
            reason,
            "The service failed to process the request. Incident logged.",
        ),
        _ => problem(status, "error", reason, "The request was refused."),
    };
    // Lets a test tell an injected failure from a real answer of the simulator.
    response
        .headers_mut()
        .insert("x-sim-fault", HeaderValue::from_static("injected"));
    response
}

/// An RFC 9457 problem+json answer.
pub(crate) fn problem(
    status: StatusCode,
    slug: &str,
    title: &str,
    detail: impl Into<String>,
) -> Response {
    problem_with(status, slug, title, detail, serde_json::Map::new())
}

/// An RFC 9457 problem+json answer with extension members (e.g. `errors`).
pub(crate) fn problem_with(
    status: StatusCode,
    slug: &str,
    title: &str,
    detail: impl Into<String>,
    extra: serde_json::Map<String, Value>,
) -> Response {
    let mut body = serde_json::Map::new();
    body.insert(
        "type".into(),
        format!("https://sim.tilts.invalid/problems/{slug}").into(),
    );
    body.insert("title".into(), title.into());
    body.insert("status".into(), status.as_u16().into());
    body.insert("detail".into(), detail.into().into());
    body.extend(extra);
    let mut response = (status, Value::Object(body).to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

async fn unknown_path() -> Response {
    problem(
        StatusCode::NOT_FOUND,
        "not-found",
        "Not Found",
        "No resource at this path.",
    )
}

fn control_routes(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/_sim/health", get(health))
        .route("/_sim/requests", get(list_requests).delete(clear_requests))
        .route("/_sim/faults", get(show_faults).post(set_faults))
        .with_state(shared)
}

async fn health(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(json!({"status": "ok", "simulator": shared.name})).into_response()
}

async fn list_requests(State(shared): State<Arc<Shared>>) -> Response {
    let list: Vec<Value> = shared.recorded().iter().map(|r| r.to_json()).collect();
    axum::Json(Value::Array(list)).into_response()
}

async fn clear_requests(State(shared): State<Arc<Shared>>) -> StatusCode {
    shared.recorded().clear();
    StatusCode::NO_CONTENT
}

async fn show_faults(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(shared.faults.to_json()).into_response()
}

/// Body of `POST /_sim/faults`.
#[derive(Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
enum FaultCommand {
    /// The next `count` (default 1) requests fail with `status`.
    Fail {
        status: u16,
        #[serde(default = "one")]
        count: usize,
    },
    /// Every request fails with `status`.
    FailAlways { status: u16 },
    /// Every request waits `ms` milliseconds.
    Delay { ms: u64 },
    /// The next `count` (default 1) connections are reset without an answer.
    Reset {
        #[serde(default = "one")]
        count: usize,
    },
    /// Back to normal service.
    None,
}

fn one() -> usize {
    1
}

async fn set_faults(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let command: FaultCommand = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "invalid-fault",
                "Bad Request",
                format!(
                    "{e}. Expected e.g. {{\"mode\":\"fail\",\"status\":503,\"count\":2}}, \
                     {{\"mode\":\"fail_always\",\"status\":500}}, {{\"mode\":\"delay\",\"ms\":3000}}, \
                     {{\"mode\":\"reset\",\"count\":1}} or {{\"mode\":\"none\"}}."
                ),
            );
        }
    };
    let status_ok = |s: u16| (400..=599).contains(&s);
    let faults = &shared.faults;
    match command {
        FaultCommand::Fail { status, count } if status_ok(status) => {
            faults.fail_next(count, status)
        }
        FaultCommand::FailAlways { status } if status_ok(status) => faults.fail_always(status),
        FaultCommand::Fail { .. } | FaultCommand::FailAlways { .. } => {
            return problem(
                StatusCode::BAD_REQUEST,
                "invalid-fault",
                "Bad Request",
                "status must be an error status between 400 and 599.",
            );
        }
        FaultCommand::Delay { ms } => faults.delay(Duration::from_millis(ms)),
        FaultCommand::Reset { count } => faults.reset_connection_next(count),
        FaultCommand::None => faults.clear(),
    }
    axum::Json(faults.to_json()).into_response()
}

/// A handle on one accepted connection, given to every request on it (as `ConnectInfo`) so the
/// middleware can kill the connection instead of answering, and learn the client certificate's
/// name on mutual TLS.
#[derive(Clone)]
struct ConnHandle {
    killed: Arc<AtomicBool>,
    client_name: Option<Arc<str>>,
}

impl ConnHandle {
    fn new(client_name: Option<Arc<str>>) -> Self {
        ConnHandle {
            killed: Arc::new(AtomicBool::new(false)),
            client_name,
        }
    }

    fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
    }

    fn killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }
}

impl Connected<IncomingStream<'_, SimListener>> for ConnHandle {
    fn connect_info(stream: IncomingStream<'_, SimListener>) -> Self {
        stream.io().conn.clone()
    }
}

/// A listener whose connections can be killed from inside a request: plain TCP, or TLS
/// connections whose handshakes a background task completes (so one slow client never holds up
/// the others).
enum SimListener {
    Plain(TcpListener),
    Tls {
        incoming: mpsc::Receiver<(SimIo, SocketAddr)>,
        addr: SocketAddr,
        accept_task: JoinHandle<()>,
    },
}

impl Drop for SimListener {
    fn drop(&mut self) {
        // The accept task owns the socket: stop it so the port is released with the server.
        if let SimListener::Tls { accept_task, .. } = self {
            accept_task.abort();
        }
    }
}

impl Listener for SimListener {
    type Io = SimIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (SimIo, SocketAddr) {
        match self {
            SimListener::Plain(listener) => loop {
                if let Some((stream, peer)) = accept_tcp(listener).await {
                    let io = SimIo {
                        stream: SimStream::Plain(stream),
                        conn: ConnHandle::new(None),
                    };
                    return (io, peer);
                }
            },
            SimListener::Tls { incoming, .. } => match incoming.recv().await {
                Some(accepted) => accepted,
                // The accept task ended (it only does when aborted): never accept again.
                None => std::future::pending().await,
            },
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            SimListener::Plain(listener) => listener.local_addr(),
            SimListener::Tls { addr, .. } => Ok(*addr),
        }
    }
}

/// Accepts one TCP connection; `None` after a per-connection error or a backoff.
async fn accept_tcp(listener: &TcpListener) -> Option<(TcpStream, SocketAddr)> {
    match listener.accept().await {
        Ok((stream, peer)) => {
            let _ = stream.set_nodelay(true);
            Some((stream, peer))
        }
        // Per-connection errors (the client gave up) do not concern the listener.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::ConnectionReset
            ) =>
        {
            None
        }
        // Out of file descriptors and the like: back off instead of spinning.
        Err(e) => {
            tracing::warn!(error = %e, "simulator accept failed");
            tokio::time::sleep(Duration::from_millis(100)).await;
            None
        }
    }
}

/// Accepts TCP connections and completes each TLS handshake in a task of its own, handing the
/// established connections to the server. Ends when the server drops its end of the channel.
async fn accept_tls(
    name: String,
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    tx: mpsc::Sender<(SimIo, SocketAddr)>,
) {
    loop {
        let accepted = tokio::select! {
            _ = tx.closed() => return,
            accepted = accept_tcp(&listener) => accepted,
        };
        let Some((stream, peer)) = accepted else {
            continue;
        };
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        let name = name.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(simulator = %name, %peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(simulator = %name, %peer, "TLS handshake timed out");
                    return;
                }
            };
            let client_name = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(|cert| crate::tls::cert_subject_name(cert))
                .map(Arc::<str>::from);
            let io = SimIo {
                stream: SimStream::Tls(Box::new(tls)),
                conn: ConnHandle::new(client_name),
            };
            // A closed channel means the server is stopping: the connection is dropped.
            let _ = tx.send((io, peer)).await;
        });
    }
}

/// The rustls server configuration for `tls`, on aws-lc-rs.
fn server_config(tls: &SimTls) -> io::Result<rustls::ServerConfig> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    let bad = |what: &str, e: &dyn fmt::Display| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("simulator TLS {what}: {e}"),
        )
    };
    let certs = CertificateDer::pem_slice_iter(&tls.cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("certificate", &e))?;
    if certs.is_empty() {
        return Err(bad("certificate", &"no PEM certificate found"));
    }
    // The pem error names the section, never the key bytes.
    let key = PrivateKeyDer::from_pem_slice(&tls.key_pem).map_err(|e| bad("key", &e))?;
    let provider = crate::tls::crypto_provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("protocol versions", &e))?;
    let builder = match &tls.client_ca_pem {
        Some(ca_pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for ca in CertificateDer::pem_slice_iter(ca_pem) {
                let ca = ca.map_err(|e| bad("client CA", &e))?;
                roots.add(ca).map_err(|e| bad("client CA", &e))?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| bad("client CA", &e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| bad("certificate and key", &e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The byte stream under a [`SimIo`].
enum SimStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl SimStream {
    fn tcp(&self) -> &TcpStream {
        match self {
            SimStream::Plain(s) => s,
            SimStream::Tls(s) => s.get_ref().0,
        }
    }
}

/// A connection that fails every read and write once it is killed, so hyper drops it; dropping
/// it then sends a TCP reset (zero linger) rather than an orderly close.
struct SimIo {
    stream: SimStream,
    conn: ConnHandle,
}

impl SimIo {
    fn check(&self) -> io::Result<()> {
        if self.conn.killed() {
            Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "connection killed by fault injection",
            ))
        } else {
            Ok(())
        }
    }
}

impl AsyncRead for SimIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check()?;
        match &mut self.stream {
            SimStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            SimStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for SimIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check()?;
        match &mut self.stream {
            SimStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            SimStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check()?;
        match &mut self.stream {
            SimStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            SimStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            SimStream::Plain(s) => s.is_write_vectored(),
            SimStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check()?;
        match &mut self.stream {
            SimStream::Plain(s) => Pin::new(s).poll_flush(cx),
            SimStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check()?;
        match &mut self.stream {
            SimStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            SimStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl Drop for SimIo {
    fn drop(&mut self) {
        if self.conn.killed() {
            let _ = self.stream.tcp().set_zero_linger();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::post;

    async fn echo_sim() -> SimServer {
        let routes = Router::new()
            .route("/ping", get(|| async { "pong" }))
            .route("/echo", post(|body: Bytes| async move { body }));
        SimServer::start("echo", "127.0.0.1:0".parse().unwrap(), routes)
            .await
            .unwrap()
    }

    fn client() -> reqwest::Client {
        reqwest::Client::new()
    }

    #[tokio::test]
    async fn records_requests_in_order_with_headers_and_body() {
        let sim = echo_sim().await;
        let c = client();
        let r = c
            .get(format!("{}/ping?x=1", sim.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.text().await.unwrap(), "pong");
        let r = c
            .post(format!("{}/echo", sim.url()))
            .header("content-type", "application/json")
            .header("X-Tilts-Message-Id", "m-1")
            .body(r#"{"a":1}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.text().await.unwrap(), r#"{"a":1}"#);

        let log = sim.requests();
        assert_eq!(log.len(), 2);
        assert_eq!(log[0].method, "GET");
        assert_eq!(log[0].path, "/ping?x=1");
        assert_eq!(log[1].method, "POST");
        assert_eq!(log[1].header("x-tilts-message-id"), Some("m-1"));
        assert_eq!(log[1].header("Content-Type"), Some("application/json"));
        assert_eq!(log[1].json(), Some(json!({"a": 1})));
        assert_eq!(log[0].json(), None);

        sim.clear_requests();
        assert!(sim.requests().is_empty());
    }

    #[tokio::test]
    async fn unknown_path_is_problem_json_404_and_recorded() {
        let sim = echo_sim().await;
        let r = client()
            .get(format!("{}/nope", sim.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        assert_eq!(sim.requests().len(), 1);
    }

    #[tokio::test]
    async fn fail_next_fails_that_many_then_recovers_and_faulted_requests_are_recorded() {
        let sim = echo_sim().await;
        sim.faults().fail_next(2, 503);
        let c = client();
        let url = format!("{}/ping", sim.url());
        for _ in 0..2 {
            let r = c.get(&url).send().await.unwrap();
            assert_eq!(r.status(), 503);
            assert_eq!(r.headers()["x-sim-fault"], "injected");
            assert_eq!(r.headers()["content-type"], "text/html");
            assert!(
                r.text()
                    .await
                    .unwrap()
                    .contains("503 Service Temporarily Unavailable")
            );
        }
        let r = c.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(sim.requests().len(), 3);
    }

    #[tokio::test]
    async fn fault_bodies_look_like_real_errors() {
        let sim = echo_sim().await;
        let c = client();
        let url = format!("{}/ping", sim.url());

        sim.faults().fail_next(1, 500);
        let r = c.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 500);
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["status"], 500);

        sim.faults().fail_next(1, 429);
        let r = c.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "1");

        sim.faults().fail_next(1, 401);
        let r = c.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 401);
        assert!(r.headers().contains_key("www-authenticate"));

        sim.faults().fail_next(1, 999);
        let r = c.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 999, "any valid status code is passed through");
    }

    #[tokio::test]
    async fn fail_always_until_cleared() {
        let sim = echo_sim().await;
        sim.faults().fail_always(500);
        let c = client();
        let url = format!("{}/ping", sim.url());
        for _ in 0..3 {
            assert_eq!(c.get(&url).send().await.unwrap().status(), 500);
        }
        sim.faults().clear();
        assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
        assert_eq!(sim.requests().len(), 4);
    }

    #[tokio::test]
    async fn delay_provokes_a_client_timeout() {
        let sim = echo_sim().await;
        sim.faults().delay(Duration::from_millis(200));
        let c = reqwest::Client::builder()
            .timeout(Duration::from_millis(50))
            .build()
            .unwrap();
        let err = c
            .get(format!("{}/ping", sim.url()))
            .send()
            .await
            .unwrap_err();
        assert!(err.is_timeout(), "{err:?}");
        assert_eq!(sim.requests().len(), 1, "recorded on arrival");

        sim.faults().clear();
        let r = c.get(format!("{}/ping", sim.url())).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }

    #[tokio::test]
    async fn reset_closes_the_connection_without_an_answer() {
        let sim = echo_sim().await;
        sim.faults().reset_connection_next(1);
        let c = client();
        let url = format!("{}/ping", sim.url());
        let err = c.get(&url).send().await.unwrap_err();
        assert!(
            err.is_request() && !err.is_timeout() && err.status().is_none(),
            "{err:?}"
        );
        // The next request is served normally on a fresh connection.
        let r = c.get(&url).send().await.unwrap();
        assert_eq!(r.text().await.unwrap(), "pong");
        assert_eq!(sim.requests().len(), 2);
    }

    #[tokio::test]
    async fn control_endpoints() {
        let sim = echo_sim().await;
        let c = client();
        let base = sim.url();

        let health: Value = c
            .get(format!("{base}/_sim/health"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(health, json!({"status": "ok", "simulator": "echo"}));

        c.post(format!("{base}/echo"))
            .body("hello")
            .send()
            .await
            .unwrap();
        let list: Value = c
            .get(format!("{base}/_sim/requests"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            list.as_array().unwrap().len(),
            1,
            "control calls are not recorded"
        );
        assert_eq!(list[0]["method"], "POST");
        assert_eq!(list[0]["path"], "/echo");
        assert_eq!(list[0]["body"], "hello");

        let set = |body: Value| {
            let c = c.clone();
            let url = format!("{base}/_sim/faults");
            async move { c.post(url).json(&body).send().await.unwrap() }
        };
        let r = set(json!({"mode": "fail", "status": 503, "count": 2})).await;
        assert_eq!(r.status(), 200);
        assert_eq!(sim.faults().plan().1, Action::Fail(503));
        assert_eq!(sim.faults().plan().1, Action::Fail(503));
        assert_eq!(sim.faults().plan().1, Action::Pass);

        set(json!({"mode": "fail_always", "status": 500})).await;
        assert_eq!(sim.faults().plan().1, Action::Fail(500));
        set(json!({"mode": "none"})).await;
        assert_eq!(sim.faults().plan(), (None, Action::Pass));

        set(json!({"mode": "delay", "ms": 3000})).await;
        assert_eq!(sim.faults().plan().0, Some(Duration::from_secs(3)));
        set(json!({"mode": "reset"})).await;
        assert_eq!(sim.faults().plan().1, Action::Reset);
        let state: Value = c
            .get(format!("{base}/_sim/faults"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(state["delayMs"], 3000);
        set(json!({"mode": "none"})).await;

        assert_eq!(set(json!({"mode": "explode"})).await.status(), 400);
        assert_eq!(
            set(json!({"mode": "fail", "status": 200})).await.status(),
            400
        );

        // Control calls are never faulted.
        sim.faults().fail_always(500);
        let r = c.get(format!("{base}/_sim/health")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        sim.faults().clear();

        let r = c
            .delete(format!("{base}/_sim/requests"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        assert!(sim.requests().is_empty());
    }

    #[tokio::test]
    async fn shutdown_and_drop_stop_the_server() {
        let sim = echo_sim().await;
        let url = format!("{}/ping", sim.url());
        let c = client();
        assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
        sim.shutdown().await;
        assert!(c.get(&url).send().await.is_err());

        let sim = echo_sim().await;
        let addr = sim.addr();
        drop(sim);
        // The aborted task releases the listener on its next poll.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while TcpStream::connect(addr).await.is_ok() {
            assert!(tokio::time::Instant::now() < deadline, "still listening");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    mod tls {
        use super::*;
        use crate::sim::pki::{CLIENT_NAME, TestPki};

        async fn whoami_sim(pki: &TestPki, mutual: bool) -> SimServer {
            let routes = Router::new().route(
                "/whoami",
                get(|name: Option<axum::Extension<ClientCertName>>| async move {
                    name.map_or_else(|| "anonymous".to_owned(), |n| n.0.0)
                }),
            );
            let tls = if mutual {
                pki.sim_tls_mtls()
            } else {
                pki.sim_tls()
            };
            SimServer::start_tls("tls-echo", "127.0.0.1:0".parse().unwrap(), routes, tls)
                .await
                .unwrap()
        }

        fn client(identity: Option<(&str, &str)>, ca: Option<&str>) -> reqwest::Client {
            let tls = crate::tls::ClientTls::from_pem(
                identity.map(|(c, k)| (c.as_bytes().to_vec(), k.as_bytes().to_vec())),
                ca.map(|c| c.as_bytes().to_vec()),
            )
            .unwrap();
            tls.apply(reqwest::Client::builder()).build().unwrap()
        }

        #[tokio::test]
        async fn mtls_happy_path_exposes_the_client_name_and_keeps_the_machinery() {
            let pki = TestPki::generate();
            let sim = whoami_sim(&pki, true).await;
            assert!(sim.url().starts_with("https://127.0.0.1:"), "{}", sim.url());
            let c = client(
                Some((&pki.client_cert_pem, &pki.client_key_pem)),
                Some(&pki.ca_pem),
            );
            let r = c.get(format!("{}/whoami", sim.url())).send().await.unwrap();
            assert_eq!(r.text().await.unwrap(), CLIENT_NAME);
            // `localhost` is in the server certificate too.
            let r = c
                .get(format!(
                    "https://localhost:{}/_sim/health",
                    sim.addr().port()
                ))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(sim.requests().len(), 1, "control calls are not recorded");

            sim.faults().fail_next(1, 503);
            let r = c.get(format!("{}/whoami", sim.url())).send().await.unwrap();
            assert_eq!(r.status(), 503);
            sim.faults().reset_connection_next(1);
            assert!(c.get(format!("{}/whoami", sim.url())).send().await.is_err());
            let r = c.get(format!("{}/whoami", sim.url())).send().await.unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(sim.requests().len(), 4);
            sim.shutdown().await;
        }

        #[tokio::test]
        async fn without_client_auth_there_is_no_client_name() {
            let pki = TestPki::generate();
            let sim = whoami_sim(&pki, false).await;
            let c = client(None, Some(&pki.ca_pem));
            let r = c.get(format!("{}/whoami", sim.url())).send().await.unwrap();
            assert_eq!(r.text().await.unwrap(), "anonymous");
        }

        #[tokio::test]
        async fn rejected_handshakes_fail_the_request_but_not_the_server() {
            let pki = TestPki::generate();
            let sim = whoami_sim(&pki, true).await;
            let url = format!("{}/whoami", sim.url());
            // No client certificate.
            let e = client(None, Some(&pki.ca_pem))
                .get(&url)
                .send()
                .await
                .unwrap_err();
            assert!(e.status().is_none(), "{e:?}");
            // A client certificate from a CA the server does not trust.
            let other = client(
                Some((&pki.other_client_cert_pem, &pki.other_client_key_pem)),
                Some(&pki.ca_pem),
            );
            assert!(other.get(&url).send().await.is_err());
            // The client does not trust the server's CA.
            let stranger = TestPki::generate();
            let wrong_ca = client(
                Some((&pki.client_cert_pem, &pki.client_key_pem)),
                Some(&stranger.ca_pem),
            );
            let e = wrong_ca.get(&url).send().await.unwrap_err();
            assert!(e.is_connect(), "{e:?}");
            // Plain HTTP to a TLS port gets no answer either.
            let plain = format!("http://{}/whoami", sim.addr());
            assert!(reqwest::get(plain).await.is_err());
            assert!(sim.requests().is_empty(), "nothing reached the handlers");

            // The server still serves a proper client.
            let good = client(
                Some((&pki.client_cert_pem, &pki.client_key_pem)),
                Some(&pki.ca_pem),
            );
            assert_eq!(good.get(&url).send().await.unwrap().status(), 200);
        }

        #[tokio::test]
        async fn unusable_server_material_is_an_invalid_input_error() {
            let pki = TestPki::generate();
            let tls = SimTls {
                cert_pem: pki.server_cert_pem.clone().into_bytes(),
                key_pem: pki.client_key_pem.clone().into_bytes(),
                client_ca_pem: None,
            };
            assert!(!format!("{tls:?}").contains("PRIVATE"));
            let e = SimServer::start_tls("bad", "127.0.0.1:0".parse().unwrap(), Router::new(), tls)
                .await
                .unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
            assert!(!e.to_string().contains("PRIVATE"), "{e}");
        }

        #[tokio::test]
        async fn dropping_a_tls_server_releases_the_port() {
            let pki = TestPki::generate();
            let sim = whoami_sim(&pki, true).await;
            let addr = sim.addr();
            drop(sim);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            while TcpStream::connect(addr).await.is_ok() {
                assert!(tokio::time::Instant::now() < deadline, "still listening");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
