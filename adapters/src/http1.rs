//! A lean HTTP/1.1 client for systems reached over plain `http://` (a peer inside the
//! institution's network, an X-Road security server, a sidecar): one request, one whole answer.
//!
//! Why not reqwest for these: a request through reqwest crosses three tasks (the caller, the
//! pooled connection's task, the body channel) and costs about twice the CPU of the exchange
//! itself; for a sync route that is the largest single cost in tilts. Here the caller's task
//! writes the request and reads the answer on the connection itself, so an exchange is one
//! `write` and usually one `read`, with no other task woken.
//!
//! What it does: keep-alive connections pooled per system *and per thread* (a connection is used
//! by the thread that made it, so its readiness events never wake another thread); answers
//! framed by `Content-Length`, `chunked` or the connection's end; 1xx heads skipped; a 16 MiB
//! cap on answers and 64 KiB on their heads. What it leaves to reqwest ([`super::http`] picks):
//! TLS, outbound proxies (`HTTP_PROXY`, `ALL_PROXY`), HTTP/2. It never follows redirects: a 3xx
//! is an answer like any other, and the route's `accept` decides.
//!
//! A pooled connection the peer closed while it was idle is noticed before use and dropped. If a
//! reused connection fails anyway (the peer closed it at that very moment), the request is sent
//! again on a new connection when that cannot repeat it: the request was not written, or it is
//! idempotent (GET, HEAD, PUT, DELETE, OPTIONS, or it carries an `Idempotency-Key`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest answer head (status line and headers).
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most headers in an answer.
const MAX_HEADERS: usize = 128;
/// Longest chunk-size or trailer line in a chunked answer.
const MAX_LINE_BYTES: usize = 8 * 1024;
/// An idle connection older than this is closed instead of reused (as reqwest's pool did).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per system and thread; more are closed.
const MAX_IDLE: usize = 256;
/// A body up to this size is written together with the head (one `write`).
const INLINE_BODY_BYTES: usize = 64 * 1024;

static NEXT_POOL: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// Idle connections of each [`PlainHttp`] made on this thread, most recently used last.
    static IDLE: RefCell<HashMap<u64, Vec<Conn>>> = RefCell::new(HashMap::new());
}

struct Conn {
    stream: TcpStream,
    /// Bytes read and not yet consumed.
    buf: BytesMut,
    idle_since: Instant,
}

/// Why an exchange failed, in the terms [`super::http`] classifies.
#[derive(Debug, PartialEq)]
pub(crate) enum Failure {
    /// No connection: refused, unreachable, name not found.
    Connect(String),
    /// No connection within the connect timeout.
    ConnectTimeout,
    /// The connection broke during the exchange.
    Broken(String),
    /// The peer's answer is not acceptable HTTP (or too large).
    Protocol(String),
    /// The request cannot be sent as given.
    Request(String),
}

/// An answer: status, headers, the whole body.
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// The plain-HTTP transport of one system.
#[derive(Debug)]
pub(crate) struct PlainHttp {
    pool: u64,
    /// `host:port` to connect to.
    authority: String,
    /// The `Host` header.
    host_header: String,
    host: String,
    port: u16,
    connect_timeout: Duration,
    user_agent: &'static str,
}

impl PlainHttp {
    /// The transport for `base_url`, or `None` when this client does not serve it (not `http://`,
    /// or an outbound proxy is configured for it).
    pub(crate) fn for_base(
        base_url: &str,
        connect_timeout: Duration,
        user_agent: &'static str,
    ) -> Option<Self> {
        let url = url::Url::parse(base_url).ok()?;
        if url.scheme() != "http" || !url.username().is_empty() || url.password().is_some() {
            return None;
        }
        let host = url.host_str()?.to_string();
        let port = url.port_or_known_default()?;
        if proxy_configured(&host, &|k| std::env::var(k).ok()) {
            return None;
        }
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let authority = if bare.contains(':') {
            format!("[{bare}]:{port}")
        } else {
            format!("{bare}:{port}")
        };
        let host_header = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };
        Some(Self {
            pool: NEXT_POOL.fetch_add(1, Ordering::Relaxed),
            authority,
            host_header,
            host,
            port,
            connect_timeout,
            user_agent,
        })
    }

    /// Sends one request to `url` (a URL on this system's host and port) and reads the whole
    /// answer. `headers` are sent as given, except framing headers (`Host`, `Content-Length`,
    /// `Transfer-Encoding`, `Connection`), which this client writes itself.
    pub(crate) async fn send(
        &self,
        method: &Method,
        url: &str,
        headers: &[(&HeaderName, &HeaderValue)],
        body: Option<&Bytes>,
        max_body: usize,
    ) -> Result<Reply, Failure> {
        let target = self.target(url)?;
        let mut head = self.head(method, &target, headers, body);
        // A small body goes in the same write as the head.
        let rest = match body {
            Some(b) if b.len() <= INLINE_BODY_BYTES => {
                head.extend_from_slice(b);
                None
            }
            other => other,
        };
        let replayable = matches!(
            *method,
            Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS
        ) || headers
            .iter()
            .any(|(k, _)| k.as_str().eq_ignore_ascii_case("idempotency-key"));
        let no_body = *method == Method::HEAD;

        // A reused connection first; when it turns out stale, once more on a new one.
        let mut pooled = self.checkout();
        loop {
            let reused = pooled.is_some();
            let mut conn = match pooled.take() {
                Some(c) => c,
                None => self.connect().await?,
            };
            match exchange(&mut conn, &head, rest, no_body, max_body).await {
                Ok((reply, keep)) => {
                    if keep {
                        self.checkin(conn);
                    }
                    return Ok(reply);
                }
                Err(Exchange::NotWritten(_)) if reused => continue,
                Err(Exchange::NoAnswer(_)) if reused && replayable => continue,
                Err(e) => return Err(e.into_failure()),
            }
        }
    }

    /// The request target (path and query) of `url`, which must be on this system's host.
    fn target(&self, url: &str) -> Result<String, Failure> {
        let parsed = url::Url::parse(url)
            .map_err(|e| Failure::Request(format!("the request URL is not valid: {e}")))?;
        if parsed.scheme() != "http"
            || parsed.host_str() != Some(self.host.as_str())
            || parsed.port_or_known_default() != Some(self.port)
        {
            return Err(Failure::Request(
                "the request path leads to another host than the system's".into(),
            ));
        }
        Ok(parsed[url::Position::BeforePath..url::Position::AfterQuery].to_string())
    }

    fn head(
        &self,
        method: &Method,
        target: &str,
        headers: &[(&HeaderName, &HeaderValue)],
        body: Option<&Bytes>,
    ) -> Vec<u8> {
        let mut h = Vec::with_capacity(256 + body.map_or(0, |b| b.len().min(INLINE_BODY_BYTES)));
        h.extend_from_slice(method.as_str().as_bytes());
        h.push(b' ');
        h.extend_from_slice(target.as_bytes());
        h.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        h.extend_from_slice(self.host_header.as_bytes());
        h.extend_from_slice(b"\r\n");
        let mut agent = false;
        for (k, v) in headers {
            if matches!(
                k.as_str(),
                "host" | "content-length" | "transfer-encoding" | "connection"
            ) {
                continue;
            }
            agent |= *k == http::header::USER_AGENT;
            h.extend_from_slice(k.as_str().as_bytes());
            h.extend_from_slice(b": ");
            h.extend_from_slice(v.as_bytes());
            h.extend_from_slice(b"\r\n");
        }
        if !agent {
            h.extend_from_slice(b"user-agent: ");
            h.extend_from_slice(self.user_agent.as_bytes());
            h.extend_from_slice(b"\r\n");
        }
        let len = match body {
            Some(b) => Some(b.len()),
            None if matches!(*method, Method::POST | Method::PUT | Method::PATCH) => Some(0),
            None => None,
        };
        if let Some(len) = len {
            h.extend_from_slice(b"content-length: ");
            h.extend_from_slice(len.to_string().as_bytes());
            h.extend_from_slice(b"\r\n");
        }
        h.extend_from_slice(b"\r\n");
        h
    }

    async fn connect(&self) -> Result<Conn, Failure> {
        let stream =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(&self.authority))
                .await
            {
                Err(_) => return Err(Failure::ConnectTimeout),
                Ok(Err(e)) => return Err(Failure::Connect(e.to_string())),
                Ok(Ok(s)) => s,
            };
        // Requests are written whole; Nagle would only delay them.
        let _ = stream.set_nodelay(true);
        Ok(Conn {
            stream,
            buf: BytesMut::with_capacity(8 * 1024),
            idle_since: Instant::now(),
        })
    }

    /// The most recently used idle connection on this thread that is still open.
    fn checkout(&self) -> Option<Conn> {
        IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            let conns = idle.get_mut(&self.pool)?;
            while let Some(mut c) = conns.pop() {
                if c.idle_since.elapsed() < IDLE_TIMEOUT && still_open(&mut c) {
                    return Some(c);
                }
            }
            None
        })
    }

    fn checkin(&self, mut conn: Conn) {
        conn.idle_since = Instant::now();
        IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            let conns = idle.entry(self.pool).or_default();
            if conns.len() < MAX_IDLE {
                conns.push(conn);
            }
        });
    }
}

impl Drop for PlainHttp {
    fn drop(&mut self) {
        // Only this thread's idle connections can be reached; other threads' close with them.
        let _ = IDLE.try_with(|idle| idle.borrow_mut().remove(&self.pool));
    }
}

/// Whether an idle connection may be reused: the peer has neither closed it nor sent anything
/// (an idle HTTP/1.1 connection has nothing to read). Reads only what the runtime already saw.
fn still_open(c: &mut Conn) -> bool {
    let mut probe = [0u8; 1];
    matches!(c.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// How one exchange on one connection failed.
#[derive(Debug)]
enum Exchange {
    /// Writing the request failed: the peer cannot have acted on it.
    NotWritten(io::Error),
    /// The connection ended before any byte of an answer.
    NoAnswer(io::Error),
    /// The connection broke in the middle of the answer.
    Broken(io::Error),
    Protocol(String),
}

impl Exchange {
    fn into_failure(self) -> Failure {
        match self {
            Exchange::NotWritten(e) | Exchange::NoAnswer(e) | Exchange::Broken(e) => {
                Failure::Broken(broken_text(&e))
            }
            Exchange::Protocol(p) => Failure::Protocol(p),
        }
    }
}

fn broken_text(e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        "the connection was closed before the whole answer arrived".into()
    } else {
        format!("the connection broke: {e}")
    }
}

/// Writes the request and reads the whole answer. The `bool` says whether the connection can be
/// used again.
async fn exchange(
    conn: &mut Conn,
    first: &[u8],
    rest: Option<&Bytes>,
    no_body: bool,
    max_body: usize,
) -> Result<(Reply, bool), Exchange> {
    conn.stream
        .write_all(first)
        .await
        .map_err(Exchange::NotWritten)?;
    if let Some(rest) = rest {
        conn.stream
            .write_all(rest)
            .await
            .map_err(Exchange::Broken)?;
    }
    conn.buf.clear();
    let mut got_any = false;
    loop {
        let head = read_head(conn, &mut got_any).await?;
        if (100..200).contains(&head.status) {
            if head.status == 101 {
                return Err(Exchange::Protocol(
                    "the peer switched protocols (101), which tilts does not ask for".into(),
                ));
            }
            // 100 Continue, 103 Early Hints: the real answer follows.
            continue;
        }
        let framing = framing(&head, no_body, max_body)?;
        let body = match framing {
            Framing::None => Bytes::new(),
            Framing::Length(n) => {
                fill(conn, n).await?;
                conn.buf.split_to(n).freeze()
            }
            Framing::Chunked => read_chunked(conn, max_body).await?,
            Framing::UntilClose => read_to_end(conn, max_body).await?,
        };
        let keep = head.keep_alive && framing != Framing::UntilClose && conn.buf.is_empty();
        return Ok((
            Reply {
                status: head.status,
                headers: head.headers,
                body,
            },
            keep,
        ));
    }
}

struct Head {
    status: u16,
    headers: HeaderMap,
    keep_alive: bool,
}

async fn read_head(conn: &mut Conn, got_any: &mut bool) -> Result<Head, Exchange> {
    loop {
        if !conn.buf.is_empty() {
            let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut r = httparse::Response::new(&mut slots);
            match r.parse(&conn.buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let head = head_of(&r)?;
                    conn.buf.advance(len);
                    return Ok(head);
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => {
                    return Err(Exchange::Protocol(format!(
                        "the answer is not HTTP/1.1: {e}"
                    )));
                }
            }
            if conn.buf.len() > MAX_HEAD_BYTES {
                return Err(Exchange::Protocol(
                    "the answer's headers are larger than 64 KiB".into(),
                ));
            }
        }
        match conn.stream.read_buf(&mut conn.buf).await {
            Ok(0) => {
                let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
                return Err(if *got_any {
                    Exchange::Broken(eof)
                } else {
                    Exchange::NoAnswer(eof)
                });
            }
            Ok(_) => *got_any = true,
            Err(e) if *got_any => return Err(Exchange::Broken(e)),
            Err(e) => return Err(Exchange::NoAnswer(e)),
        }
    }
}

fn head_of(r: &httparse::Response<'_, '_>) -> Result<Head, Exchange> {
    let status = r.code.unwrap_or(0);
    let mut headers = HeaderMap::with_capacity(r.headers.len());
    let mut close = false;
    let mut keep_alive_token = false;
    for h in r.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| {
            Exchange::Protocol("the answer has a header with an invalid name".into())
        })?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| {
            Exchange::Protocol("the answer has a header with an invalid value".into())
        })?;
        if name == http::header::CONNECTION {
            for token in h.value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
        headers.append(name, value);
    }
    let keep_alive = match r.version {
        Some(1) => !close,
        _ => keep_alive_token && !close,
    };
    Ok(Head {
        status,
        headers,
        keep_alive,
    })
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    None,
    Length(usize),
    Chunked,
    UntilClose,
}

fn too_large() -> Exchange {
    Exchange::Protocol("answer larger than 16 MiB".into())
}

/// How the answer's body is delimited (RFC 9112 section 6.3).
fn framing(head: &Head, no_body: bool, max_body: usize) -> Result<Framing, Exchange> {
    if no_body || head.status == 204 || head.status == 304 {
        return Ok(Framing::None);
    }
    let mut te = head.headers.get_all(http::header::TRANSFER_ENCODING).iter();
    if te.size_hint().1 != Some(0) {
        let last = te
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .map(str::trim);
        return Ok(match last {
            Some(c) if c.eq_ignore_ascii_case("chunked") => Framing::Chunked,
            // Another coding last: the body runs to the connection's end.
            _ => Framing::UntilClose,
        });
    }
    let mut length: Option<usize> = None;
    for v in head.headers.get_all(http::header::CONTENT_LENGTH) {
        for part in v.as_bytes().split(|b| *b == b',') {
            let n = std::str::from_utf8(part.trim_ascii())
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| {
                    Exchange::Protocol("the answer's Content-Length is not a number".into())
                })?;
            let n = usize::try_from(n).map_err(|_| too_large())?;
            if length.is_some_and(|l| l != n) {
                return Err(Exchange::Protocol(
                    "the answer has two different Content-Length values".into(),
                ));
            }
            length = Some(n);
        }
    }
    match length {
        Some(n) if n > max_body => Err(too_large()),
        Some(n) => Ok(Framing::Length(n)),
        None => Ok(Framing::UntilClose),
    }
}

/// Reads until at least `n` bytes are buffered.
async fn fill(conn: &mut Conn, n: usize) -> Result<(), Exchange> {
    if conn.buf.len() < n {
        conn.buf.reserve(n - conn.buf.len());
    }
    while conn.buf.len() < n {
        match conn.stream.read_buf(&mut conn.buf).await {
            Ok(0) => {
                return Err(Exchange::Broken(io::ErrorKind::UnexpectedEof.into()));
            }
            Ok(_) => {}
            Err(e) => return Err(Exchange::Broken(e)),
        }
    }
    Ok(())
}

/// One CRLF-terminated line (without the CRLF), consumed from the buffer.
async fn read_line(conn: &mut Conn) -> Result<Bytes, Exchange> {
    let mut searched = 0;
    loop {
        if let Some(i) = conn.buf[searched..].windows(2).position(|w| w == b"\r\n") {
            let line = conn.buf.split_to(searched + i).freeze();
            conn.buf.advance(2);
            return Ok(line);
        }
        searched = conn.buf.len().saturating_sub(1);
        if conn.buf.len() > MAX_LINE_BYTES {
            return Err(Exchange::Protocol(
                "a line of the chunked answer is longer than 8 KiB".into(),
            ));
        }
        let want = conn.buf.len() + 1;
        fill(conn, want).await?;
    }
}

async fn read_chunked(conn: &mut Conn, max_body: usize) -> Result<Bytes, Exchange> {
    let mut body = BytesMut::new();
    loop {
        let line = read_line(conn).await?;
        let size = line.split(|b| *b == b';').next().unwrap_or_default();
        let size = std::str::from_utf8(size.trim_ascii())
            .ok()
            .filter(|s| !s.is_empty() && s.len() <= 16)
            .and_then(|s| usize::from_str_radix(s, 16).ok())
            .ok_or_else(|| Exchange::Protocol("the answer has a malformed chunk size".into()))?;
        if size == 0 {
            // Trailers (ignored) up to the empty line.
            while !read_line(conn).await?.is_empty() {}
            return Ok(body.freeze());
        }
        if body.len().saturating_add(size) > max_body {
            return Err(too_large());
        }
        fill(conn, size + 2).await?;
        body.extend_from_slice(&conn.buf[..size]);
        if &conn.buf[size..size + 2] != b"\r\n" {
            return Err(Exchange::Protocol(
                "a chunk of the answer does not end where its size says".into(),
            ));
        }
        conn.buf.advance(size + 2);
    }
}

async fn read_to_end(conn: &mut Conn, max_body: usize) -> Result<Bytes, Exchange> {
    loop {
        if conn.buf.len() > max_body {
            return Err(too_large());
        }
        match conn.stream.read_buf(&mut conn.buf).await {
            Ok(0) => return Ok(conn.buf.split().freeze()),
            Ok(_) => {}
            Err(e) => return Err(Exchange::Broken(e)),
        }
    }
}

/// Whether the environment configures an outbound proxy for plain HTTP to `host` (the variables
/// reqwest reads; `NO_PROXY` lists hosts and domains that bypass it, `*` all of them).
fn proxy_configured(host: &str, env: &dyn Fn(&str) -> Option<String>) -> bool {
    let set = |k: &str| env(k).is_some_and(|v| !v.trim().is_empty());
    if !["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"]
        .into_iter()
        .any(set)
    {
        return false;
    }
    let no_proxy = env("no_proxy")
        .or_else(|| env("NO_PROXY"))
        .unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let bypassed = no_proxy.split(',').map(str::trim).any(|entry| {
        let entry = entry.trim_start_matches('[').trim_end_matches(']');
        let domain = entry.trim_start_matches("*.").trim_start_matches('.');
        entry == "*"
            || (!domain.is_empty()
                && (host.eq_ignore_ascii_case(domain)
                    || host
                        .to_ascii_lowercase()
                        .ends_with(&format!(".{}", domain.to_ascii_lowercase()))))
    });
    !bypassed
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A peer that answers each request on a connection with the next of `answers` (raw bytes),
    /// records what it received, and closes after the last one.
    pub(crate) async fn raw_peer(
        answers: Vec<Vec<u8>>,
    ) -> (String, tokio::task::JoinHandle<Vec<Vec<u8>>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let h = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut seen = Vec::new();
            for answer in answers {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Read one request: head, then Content-Length bytes.
                loop {
                    let n = s.read(&mut chunk).await.unwrap();
                    if n == 0 {
                        return seen;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        if buf.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                seen.push(buf);
                s.write_all(&answer).await.unwrap();
            }
            seen
        });
        (url, h)
    }

    fn client(url: &str) -> PlainHttp {
        PlainHttp::for_base(url, Duration::from_secs(2), "tilts-test").unwrap()
    }

    async fn post(c: &PlainHttp, url: &str, body: &'static str) -> Result<Reply, Failure> {
        let ct = HeaderValue::from_static("application/json");
        c.send(
            &Method::POST,
            &format!("{url}/cases"),
            &[(&http::header::CONTENT_TYPE, &ct)],
            Some(&Bytes::from_static(body.as_bytes())),
            1024,
        )
        .await
    }

    #[tokio::test]
    async fn a_request_is_written_as_http_1_1_and_the_connection_reused() {
        let (url, peer) = raw_peer(vec![
            b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}".to_vec(),
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nX-A: 2\r\n\r\nhello".to_vec(),
        ])
        .await;
        let c = client(&url);
        let r = post(&c, &url, r#"{"a":1}"#).await.unwrap();
        assert_eq!((r.status, &r.body[..]), (201, &b"{}"[..]));
        assert_eq!(r.headers["content-type"], "application/json");
        let r = post(&c, &url, "").await.unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &b"hello"[..]));
        assert_eq!(r.headers.get_all("x-a").iter().count(), 2);
        drop(c);
        let seen = peer.await.unwrap();
        // Both on the one connection the peer accepted.
        assert_eq!(seen.len(), 2);
        let first = String::from_utf8(seen[0].clone()).unwrap();
        let host = url.trim_start_matches("http://");
        assert_eq!(
            first,
            format!(
                "POST /cases HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\nuser-agent: tilts-test\r\ncontent-length: 7\r\n\r\n{{\"a\":1}}"
            )
        );
        assert!(
            String::from_utf8(seen[1].clone())
                .unwrap()
                .ends_with("content-length: 0\r\n\r\n")
        );
    }

    #[tokio::test]
    async fn chunked_answers_and_interim_heads_are_read() {
        let (url, _peer) = raw_peer(vec![
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n".to_vec(),
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n!".to_vec(),
        ])
        .await;
        let c = client(&url);
        let r = post(&c, &url, "{}").await.unwrap();
        assert_eq!(&r.body[..], b"hello world");
        // The connection is still usable after the trailers.
        assert_eq!(&post(&c, &url, "{}").await.unwrap().body[..], b"!");
    }

    #[tokio::test]
    async fn an_answer_without_length_runs_to_the_connections_end() {
        let (url, _peer) = raw_peer(vec![
            b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it".to_vec(),
        ])
        .await;
        let c = client(&url);
        assert_eq!(&post(&c, &url, "{}").await.unwrap().body[..], b"all of it");
    }

    #[tokio::test]
    async fn malformed_and_oversized_answers_are_protocol_failures() {
        let cases: Vec<(&[u8], &str)> = vec![
            (b"NOT HTTP\r\n\r\n", "not HTTP/1.1"),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 2000\r\n\r\n",
                "larger than 16 MiB",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nxx",
                "two different Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
                "not a number",
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
                "malformed chunk size",
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n800\r\n",
                "larger than 16 MiB",
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
                "does not end where its size says",
            ),
            (
                b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
                "switched protocols",
            ),
        ];
        for (answer, want) in cases {
            let (url, _peer) = raw_peer(vec![answer.to_vec()]).await;
            let c = client(&url);
            match post(&c, &url, "{}").await {
                Err(Failure::Protocol(p)) => assert!(p.contains(want), "{p} / {want}"),
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(answer)),
            }
        }
    }

    #[tokio::test]
    async fn a_connection_closed_mid_answer_is_broken() {
        let (url, _peer) = raw_peer(vec![
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc".to_vec(),
        ])
        .await;
        let c = client(&url);
        match post(&c, &url, "{}").await {
            Err(Failure::Broken(t)) => assert!(t.contains("before the whole answer"), "{t}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_peer_that_closed_an_idle_connection_gets_a_new_one() {
        // The peer answers once, then closes; the second request must go on a new connection.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let accepted = std::sync::Arc::new(AtomicU64::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                count.fetch_add(1, Ordering::Relaxed);
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                // Closes without `connection: close`, as a server's idle timeout does.
            }
        });
        let c = client(&url);
        for _ in 0..3 {
            assert_eq!(&post(&c, &url, "{}").await.unwrap().body[..], b"ok");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(accepted.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn refused_and_foreign_hosts_fail_clearly() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}");
        let c = client(&url);
        assert!(matches!(
            post(&c, &url, "{}").await,
            Err(Failure::Connect(_))
        ));
        assert!(matches!(
            post(&c, "http://elsewhere.example", "{}").await,
            Err(Failure::Request(_))
        ));
    }

    #[test]
    fn paths_are_percent_encoded_in_the_target() {
        let c = client("http://127.0.0.1:9/api");
        assert_eq!(
            c.target("http://127.0.0.1:9/api/a b?q=x y").unwrap(),
            "/api/a%20b?q=x%20y"
        );
    }

    #[test]
    fn only_plain_http_without_a_proxy_is_served() {
        let none = |_: &str| None;
        assert!(PlainHttp::for_base("https://h", Duration::ZERO, "t").is_none());
        assert!(PlainHttp::for_base("http://u:p@h", Duration::ZERO, "t").is_none());
        assert!(!proxy_configured("h", &none));
        let env = |no_proxy: &'static str| {
            move |k: &str| match k {
                "HTTP_PROXY" => Some("http://proxy:3128".to_string()),
                "NO_PROXY" => Some(no_proxy.to_string()),
                _ => None,
            }
        };
        assert!(proxy_configured("registry.gov.lv", &env("")));
        assert!(!proxy_configured(
            "registry.gov.lv",
            &env("localhost,.gov.lv")
        ));
        assert!(!proxy_configured("registry.gov.lv", &env("*")));
        assert!(proxy_configured("registry.gov.lv", &env("other.lv")));
        assert!(!proxy_configured("127.0.0.1", &env("127.0.0.1")));
    }
}
