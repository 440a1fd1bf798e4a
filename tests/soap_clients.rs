//! tilts as a SOAP service, seen from outside: the real binary with the shipped routes, called
//! by a third-party SOAP client (Python's zeep, reading the WSDL tilts serves), and fed XML
//! attacks while its memory is watched.
//!
//! zeep comes from PyPI: when `python3` cannot import it, the test makes a virtual environment
//! under `target/` and installs it there (`.ci/run` does the same up front). A machine without
//! python3 or without PyPI fails this test with a message saying so; it never passes silently.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{Tilts, client, repo_root, shipped_routes};
use serde_json::Value;
use tilts_adapters::sim::{Simulators, population_register as pr};

/// A python3 that can `import zeep`.
fn python_with_zeep() -> PathBuf {
    let can_import = |python: &std::path::Path| {
        Command::new(python)
            .args(["-c", "import zeep"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let system = PathBuf::from("python3");
    if can_import(&system) {
        return system;
    }
    let venv = repo_root().join("target/zeep-venv");
    let python = venv.join("bin/python3");
    if !can_import(&python) {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 is needed for the SOAP client test");
        assert!(made.success(), "python3 -m venv {} failed", venv.display());
        let pip = Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "zeep==4.3.3"])
            .status()
            .expect("run pip");
        assert!(pip.success(), "pip install zeep failed: is PyPI reachable?");
    }
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zeep_calls_tilts_from_the_wsdl_it_serves() {
    let python = tokio::task::spawn_blocking(python_with_zeep).await.unwrap();
    let sims = Simulators::start().await.unwrap();
    let mut tilts = Tilts::start(&shipped_routes(), &sims, "info").await;
    let wsdl = tilts.url("/soap/person?wsdl");
    let script = repo_root().join("tests/python/zeep_person_lookup.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .arg(wsdl)
            .arg(pr::ACTIVE)
            .arg(pr::NOT_FOUND)
            .output()
            .expect("run the zeep client")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "zeep client failed:\n{stdout}\n{}\ntilts log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        tilts.logs()
    );
    let answer: Value = serde_json::from_str(stdout.trim()).unwrap();
    let want = pr::find(pr::ACTIVE).unwrap();
    assert_eq!(answer["givenName"], want.given_name);
    assert_eq!(answer["familyName"], want.family_name);
    assert_eq!(answer["birthDate"], want.birth_date);
    assert_eq!(answer["status"], want.status);
    assert_eq!(answer["addressCode"], want.address_code);
    assert!(
        answer["addressText"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    );
    // zeep raised the Client fault tilts answered for the unknown person.
    assert_eq!(answer["fault"]["reason"], "No such person", "{answer}");
    assert!(
        answer["fault"]["code"]
            .as_str()
            .unwrap()
            .ends_with("Client"),
        "{answer}"
    );
    tilts.stop().await;
    sims.shutdown().await;
}

/// A `VmHWM`/`VmRSS` line of /proc/<pid>/status, in kB.
fn proc_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} not in /proc/{pid}/status"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xml_attacks_get_400_and_memory_stays_bounded() {
    let sims = Simulators::start().await.unwrap();
    let mut tilts = Tilts::start(&shipped_routes(), &sims, "info").await;
    let c = client();
    let before = proc_kb(tilts.pid(), "VmRSS:");

    let mut laughs = String::from(r#"<!ENTITY a "0123456789">"#);
    for i in 1..12 {
        let prev = if i == 1 {
            "a".to_string()
        } else {
            format!("a{}", i - 1)
        };
        laughs.push_str(&format!(
            r#"<!ENTITY a{i} "{}">"#,
            format!("&{prev};").repeat(10)
        ));
    }
    let envelope = |inner: &str| {
        format!(
            r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><GetPerson xmlns="urn:x-tilts:person:v1"><PersonalCode>{inner}</PersonalCode></GetPerson></s:Body></s:Envelope>"#
        )
    };
    let attacks = [
        (
            "billion laughs",
            format!(
                r#"<?xml version="1.0"?><!DOCTYPE s:Envelope [{laughs}]>{}"#,
                envelope("&a11;")
            ),
        ),
        (
            "XXE",
            format!(
                r#"<!DOCTYPE s:Envelope [<!ENTITY x SYSTEM "file:///etc/passwd">]>{}"#,
                envelope("&x;")
            ),
        ),
        // Just under the 4 MB body limit, nested as deep as it goes.
        ("deep nesting", "<a>".repeat(1_300_000)),
        ("many attributes", {
            let attrs: String = (0..100_000).map(|i| format!(r#" a{i}="x""#)).collect();
            format!(r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"{attrs}/>"#)
        }),
    ];
    for round in 0..3 {
        for (what, body) in &attacks {
            let resp = c
                .post(tilts.url("/soap/person"))
                .header("content-type", "text/xml; charset=utf-8")
                .header("soapaction", "\"\"")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 400, "{what} (round {round})");
            let text = resp.text().await.unwrap();
            assert!(text.contains("Fault"), "{what}: {text}");
            assert!(
                !text.contains("root:"),
                "{what}: nothing read from /etc/passwd"
            );
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let peak = proc_kb(tilts.pid(), "VmHWM:");
    // A billion laughs expanded would be gigabytes; the bodies themselves are at most 4 MB.
    assert!(
        peak < before + 64 * 1024,
        "tilts' peak memory grew from {before} kB to {peak} kB"
    );
    // And it still serves.
    let resp = c.get(tilts.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    tilts.stop().await;
    sims.shutdown().await;
}
