//! The README's first command, `tilts demo`, run as the real binary on the embedded default
//! (SQLite in a fresh folder, port 0, the in-process simulators): it must finish, exit 0 and
//! report every case answered as expected, with RabbitMQ (when `TILTS_TEST_AMQP_URL` is set, as
//! in CI) and without it (a newcomer's machine: cases are stored for a broker that is away).

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tilts_adapters::ident::PersonalCode;

/// The demo waits up to 20 s for the institution's status; the whole run takes far less.
const DEMO_TIMEOUT: Duration = Duration::from_secs(240);

/// Runs `tilts demo` with `AMQP_URL`; returns stdout and stderr after checking it succeeded.
fn run_demo(amqp_url: &str) -> (String, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_tilts"))
        .arg("demo")
        .current_dir(root)
        .env("AMQP_URL", amqp_url)
        .env_remove("TILTS_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tilts demo");
    // Read both pipes on threads so a full pipe never blocks the demo.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for tilts demo") {
            break status;
        }
        if started.elapsed() > DEMO_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "tilts demo did not finish within {DEMO_TIMEOUT:?}; stdout:\n{}",
                out.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    assert!(
        status.success(),
        "tilts demo exited with {status}\nstdout:\n{out}\nstderr:\n{err}"
    );
    (out, err)
}

fn check_report(out: &str, err: &str) {
    assert!(
        out.contains("cases, all answered as expected."),
        "the summary line is missing:\n{out}"
    );
    assert!(
        out.contains("What the systems received") && out.contains("Where to look:"),
        "the report is incomplete:\n{out}"
    );
    // The demo sends applications with personal codes; none may appear in full anywhere.
    for text in [out, err] {
        for start in (0..text.len()).filter(|&i| text.is_char_boundary(i)) {
            let Some(candidate) = text.get(start..start + 12) else {
                continue;
            };
            assert!(
                PersonalCode::parse(candidate).is_err(),
                "a personal code appears in the demo's output at byte {start}"
            );
        }
    }
}

#[test]
fn the_demo_runs_without_a_broker() {
    // Port 9 is closed: the broker is away, as on a machine without RabbitMQ.
    let (out, err) = run_demo("amqp://guest:guest@127.0.0.1:9/%2f");
    check_report(&out, &err);
    assert!(out.contains("no RabbitMQ"), "{out}");
}

#[test]
fn the_demo_runs_over_rabbitmq() {
    let Ok(url) = std::env::var("TILTS_TEST_AMQP_URL") else {
        eprintln!("skipped: TILTS_TEST_AMQP_URL is not set");
        return;
    };
    let (out, err) = run_demo(&url);
    check_report(&out, &err);
    assert!(!out.contains("no RabbitMQ"), "{out}");
}
