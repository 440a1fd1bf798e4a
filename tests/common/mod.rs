//! Shared helpers for the black-box tests: the simulators in-process, the real `tilts` binary
//! as a child process (killed by a guard when a test fails), temporary route files derived from
//! the shipped one, and small HTTP helpers.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;
use tilts_adapters::sim::Simulators;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// The repository root (the root package's manifest dir).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shipped route file.
pub fn shipped_routes() -> PathBuf {
    repo_root().join("routes.yaml")
}

/// How long the binary may take to start listening.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// Polls `cond` every 10 ms until it holds; panics with `what` after `within`.
pub async fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A route file in a temporary directory: the shipped routes.yaml with a few exact textual
/// edits, next to a copy of the shipped mappings folder.
pub struct TempConfig {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

/// Copies the shipped routes.yaml with `edits` applied, each `(from, to)` replacing a text that
/// must occur exactly once (so a change to the shipped file fails loudly instead of silently
/// testing something else), and copies the mappings folder next to it.
pub fn shipped_with(edits: &[(&str, &str)]) -> TempConfig {
    let mut text = std::fs::read_to_string(shipped_routes()).expect("read routes.yaml");
    for (from, to) in edits {
        assert_eq!(
            text.matches(from).count(),
            1,
            "routes.yaml must contain {from:?} exactly once for this test"
        );
        text = text.replacen(from, to, 1);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(&repo_root().join("mappings"), &dir.path().join("mappings"));
    let path = dir.path().join("routes.yaml");
    std::fs::write(&path, text).expect("write temp routes.yaml");
    TempConfig { _dir: dir, path }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

/// How [`Tilts::try_launch`] starts the binary, beyond what [`Tilts::start`] does.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    /// The store URL; `None`: a fresh SQLite file in a temporary folder of the process's own.
    pub database: Option<String>,
    /// The ingress address; `None`: `127.0.0.1:0`.
    pub listen: Option<String>,
    /// More environment variables, set after the defaults (so they may override them, e.g.
    /// `SOCIAL_SERVICES_URL`).
    pub env: Vec<(String, String)>,
}

/// A running `tilts serve` child process. Dropping it kills the process if it still runs.
pub struct Tilts {
    child: Child,
    pub addr: SocketAddr,
    pub base: String,
    /// `http://<admin address>`, from the line tilts prints after the listening line.
    pub admin_base: Option<String>,
    stderr: Arc<Mutex<Vec<u8>>>,
    stderr_reader: Option<JoinHandle<()>>,
    exit: Option<ExitStatus>,
    /// The process's store folder, removed when the test ends.
    _data: tempfile::TempDir,
}

impl Tilts {
    /// Starts `tilts serve --config <config> --listen 127.0.0.1:0` against the simulators, with
    /// `TILTS_LOG=<log>`, and waits until it prints the line with its address.
    pub async fn start(config: &Path, sims: &Simulators, log: &str) -> Tilts {
        Tilts::try_launch(config, sims, log, &Launch::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Tilts::start`] with the settings of `launch` (a given store, a fixed address, more
    /// environment). An error (the process exited or did not listen in time) carries its stderr;
    /// the process is gone by then.
    pub async fn try_launch(
        config: &Path,
        sims: &Simulators,
        log: &str,
        launch: &Launch,
    ) -> Result<Tilts, String> {
        // Each process gets its own store and admin port, so tests can run side by side.
        let data = tempfile::tempdir().expect("tempdir for the store");
        let database = launch
            .database
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}/tilts.db", data.path().display()));
        let mut command = Command::new(env!("CARGO_BIN_EXE_tilts"));
        command
            .current_dir(repo_root())
            .arg("serve")
            .arg("--config")
            .arg(config)
            .arg("--listen")
            .arg(launch.listen.as_deref().unwrap_or("127.0.0.1:0"))
            .arg("--admin-listen")
            .arg("127.0.0.1:0")
            .arg("--database")
            .arg(&database)
            .env_remove("TILTS_DATABASE_URL")
            .env_remove("TILTS_ADMIN_LISTEN")
            .env_remove("TILTS_LISTEN")
            .env_remove("TILTS_CONFIG")
            .env_remove("TILTS_LOG_FORMAT")
            .env("TILTS_LOG", log)
            // Tests that want RabbitMQ say so in `launch.env`; the others must not touch the
            // machine's broker (its queues are shared), so by default it is unreachable.
            .env("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
            .envs(tilts_engine::demo::sim_env(sims));
        for (k, v) in &launch.env {
            command.env(k, v);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the tilts binary");

        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut err_pipe = child.stderr.take().expect("stderr pipe");
        let sink = stderr.clone();
        let stderr_reader = std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                match err_pipe.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => sink.lock().unwrap().extend_from_slice(&buf[..n]),
                }
            }
        });

        let out_pipe = child.stdout.take().expect("stdout pipe");
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            // Keeps draining stdout for the life of the process.
            for line in BufReader::new(out_pipe).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });

        let mut tilts = Tilts {
            child,
            addr: "127.0.0.1:0".parse().unwrap(),
            base: String::new(),
            admin_base: None,
            stderr,
            stderr_reader: Some(stderr_reader),
            exit: None,
            _data: data,
        };
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            match rx.try_recv() {
                Ok(line) => {
                    if let Some(url) = line.trim().strip_prefix("listening on http://") {
                        tilts.addr = url.parse().expect("address in the listening line");
                        tilts.base = format!("http://{url}");
                        // The admin API's line follows at once (a store is always open here).
                        let until = Instant::now() + Duration::from_secs(2);
                        while Instant::now() < until {
                            match rx.try_recv() {
                                Ok(line) => {
                                    if let Some(a) =
                                        line.trim().strip_prefix("admin API on http://")
                                    {
                                        tilts.admin_base = Some(format!("http://{a}"));
                                        break;
                                    }
                                }
                                Err(mpsc::TryRecvError::Empty) => {
                                    tokio::time::sleep(Duration::from_millis(5)).await;
                                }
                                Err(mpsc::TryRecvError::Disconnected) => break,
                            }
                        }
                        return Ok(tilts);
                    }
                }
                Err(mpsc::TryRecvError::Empty) => {
                    if let Some(status) = tilts.child.try_wait().expect("try_wait") {
                        tilts.exit = Some(status);
                        tilts.join_stderr();
                        return Err(format!(
                            "tilts exited ({status}) before listening; stderr:\n{}",
                            tilts.logs()
                        ));
                    }
                    if Instant::now() >= deadline {
                        return Err(format!(
                            "tilts did not print its address within {START_DEADLINE:?}; stderr:\n{}",
                            tilts.logs()
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(mpsc::TryRecvError::Disconnected) => {
                    // stdout closed: the process is exiting.
                    let status = tilts.child.wait().expect("wait");
                    tilts.exit = Some(status);
                    tilts.join_stderr();
                    return Err(format!(
                        "tilts closed stdout ({status}) before listening; stderr:\n{}",
                        tilts.logs()
                    ));
                }
            }
        }
    }

    /// Waits (briefly) until the stderr reader has read everything of an exited process.
    fn join_stderr(&mut self) {
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
    }

    /// SIGKILL (`kill -9`: no shutdown at all, as a crash or the OOM killer), then waits until
    /// the process is gone. Afterwards the whole of its stderr has been read.
    pub async fn sigkill(&mut self) {
        let status = Command::new("kill")
            .arg("-KILL")
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -KILL failed: {status}");
        self.wait_exit(Duration::from_secs(15)).await;
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Full URL of a path on this tilts.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Full URL of a path on this tilts' admin API.
    pub fn admin_url(&self, path: &str) -> String {
        let base = self
            .admin_base
            .as_deref()
            .expect("tilts printed no admin API address");
        format!("{base}{path}")
    }

    /// Sends SIGTERM (as systemd or Kubernetes would).
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    /// Waits until the process exits by itself; panics after `within`. Afterwards the whole of
    /// stderr has been read.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(s) = self.exit {
                break s;
            }
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                self.exit = Some(s);
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "tilts did not exit within {within:?}; stderr:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
        status
    }

    /// SIGTERM, wait for a clean exit, and return everything the process wrote on stderr.
    pub async fn stop(&mut self) -> String {
        self.sigterm();
        let status = self.wait_exit(Duration::from_secs(15)).await;
        assert!(
            status.success(),
            "tilts exited with {status}; stderr:\n{}",
            self.logs()
        );
        self.logs()
    }

    /// What the process wrote on stderr so far.
    pub fn logs(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }
}

impl Drop for Tilts {
    fn drop(&mut self) {
        if self.exit.is_none() && matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// An HTTP client that never uses a proxy.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// One answer, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
}

impl Answer {
    pub async fn from(resp: reqwest::Response) -> Answer {
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("read the answer body");
        Answer {
            status,
            headers,
            text,
        }
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {}", self.text))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn content_type(&self) -> &str {
        self.header("content-type").unwrap_or("")
    }

    /// Asserts an RFC 9457 problem with this status and type suffix and returns its body.
    pub fn problem(&self, status: u16, kind: &str) -> Value {
        assert_eq!(self.status.as_u16(), status, "status; body: {}", self.text);
        assert_eq!(
            self.content_type(),
            "application/problem+json",
            "content type; body: {}",
            self.text
        );
        let body = self.json();
        assert_eq!(body["status"], status, "{body}");
        assert_eq!(body["type"], format!("urn:tilts:problem:{kind}"), "{body}");
        assert!(
            body["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{body}"
        );
        body
    }
}

pub async fn post_json(client: &reqwest::Client, url: &str, body: &Value) -> Answer {
    Answer::from(client.post(url).json(body).send().await.expect("POST")).await
}

pub async fn get(client: &reqwest::Client, url: &str) -> Answer {
    Answer::from(client.get(url).send().await.expect("GET")).await
}

/// A raw HTTP/1.1 answer.
#[derive(Debug)]
pub struct RawAnswer {
    pub status: u16,
    /// Header names lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Writes `request` as is on a fresh connection and reads one answer (the request should say
/// `Connection: close`). A connection error after the whole answer arrived is tolerated.
pub async fn raw_http(addr: SocketAddr, request: &[u8]) -> RawAnswer {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write request");
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(answer) = parse_raw(&buf) {
            return answer;
        }
        let mut chunk = [0u8; 4096];
        let read = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no complete answer in time; got {:?}",
                    String::from_utf8_lossy(&buf)
                )
            });
        match read {
            Ok(0) | Err(_) => {
                return parse_raw(&buf).unwrap_or_else(|| {
                    panic!(
                        "connection ended before a complete answer: {:?}",
                        String::from_utf8_lossy(&buf)
                    )
                });
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Parses a complete HTTP/1.1 answer, or `None` when more bytes are needed.
fn parse_raw(buf: &[u8]) -> Option<RawAnswer> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..head_end]).expect("ASCII head");
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()?
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &buf[head_end + 4..];
    let find = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let body = if let Some(len) = find("content-length") {
        let len: usize = len.parse().expect("content-length");
        if rest.len() < len {
            return None;
        }
        rest[..len].to_vec()
    } else if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        let mut body = Vec::new();
        let mut at = 0;
        loop {
            let line_end = rest[at..].windows(2).position(|w| w == b"\r\n")? + at;
            let size_text = std::str::from_utf8(&rest[at..line_end]).ok()?;
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            let data = line_end + 2;
            if size == 0 {
                break;
            }
            if rest.len() < data + size + 2 {
                return None;
            }
            body.extend_from_slice(&rest[data..data + size]);
            at = data + size + 2;
        }
        body
    } else {
        return None;
    };
    Some(RawAnswer {
        status,
        headers,
        body,
    })
}

/// A `POST` with a chunked body, written as raw HTTP/1.1 (`chunks` are sent as separate chunks).
pub fn chunked_post(addr: SocketAddr, path: &str, chunks: &[&[u8]]) -> Vec<u8> {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for c in chunks {
        req.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        req.extend_from_slice(c);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    req
}
