//! Black-box tests of `tilts test`: the real binary runs the route tests in `route-tests/`.
//!
//! - The shipped routes pass their tests, and every shipped route has tests.
//! - On a copy of the routes, mappings and tests with one mapping broken (a field renamed in
//!   `mappings/company-lookup/response.json.hbs`), `tilts test` exits 1 and prints the diff of
//!   the expected and actual body at the JSON pointers concerned, and the summary line.
//! - Tests that fail on purpose (`tests/fixtures/route-tests/failing/`) report a system called
//!   beyond its script, an unused scripted answer, a wrong request, a published message that
//!   differs, an unused publish outcome and a wrong decision on a queue's message.
//! - The routes with a RabbitMQ broker are tested without one: the broker's URL is not used
//!   (an `AMQP_URL` that is not even a URL changes nothing).
//! - Test files that cannot be used (`tests/fixtures/route-tests/unknown-*`), and a route file
//!   that cannot be read, exit 2 naming the file, the test and the problem.

use std::path::Path;
use std::process::Command;

/// What one run of `tilts test` produced.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `tilts test ARGS` in `dir` with an empty environment except `PATH`.
fn tilts_test(dir: &Path, args: &[&str]) -> Run {
    tilts_test_env(dir, args, &[])
}

/// [`tilts_test`] with these variables set.
fn tilts_test_env(dir: &Path, args: &[&str], vars: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tilts"));
    cmd.arg("test")
        .args(args)
        .current_dir(dir)
        .env_clear()
        .envs(vars.iter().copied());
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    let out = cmd.output().expect("cannot run the tilts binary");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The ids of the routes in the shipped route file (`  - id: x` lines).
fn shipped_route_ids() -> Vec<String> {
    std::fs::read_to_string(repo().join("routes.yaml"))
        .unwrap()
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("- id: "))
        .map(|id| id.trim().trim_matches('"').to_owned())
        .collect()
}

/// The number after "N passed" in the summary line.
fn count(stdout: &str, what: &str) -> usize {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("test result: "))
        .unwrap_or_else(|| panic!("no summary line in:\n{stdout}"));
    let before = line
        .split(&format!(" {what}"))
        .next()
        .unwrap_or_else(|| panic!("no `{what}` in {line}"));
    before
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count before `{what}` in {line}"))
}

#[test]
fn the_shipped_routes_pass_their_tests() {
    let run = tilts_test(repo(), &["routes.yaml"]);
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert!(run.stdout.contains("running "), "{}", run.stdout);
    assert!(run.stdout.contains("test result: ok. "), "{}", run.stdout);
    assert_eq!(count(&run.stdout, "failed"), 0, "{}", run.stdout);
    assert!(count(&run.stdout, "passed") >= 20, "{}", run.stdout);
    assert!(!run.stdout.contains("FAILED"), "{}", run.stdout);
    for id in shipped_route_ids() {
        assert!(
            run.stdout.contains(&format!("test {id} › ")),
            "route `{id}` of routes.yaml has no test in route-tests/:\n{}",
            run.stdout
        );
    }
    // tilts' own logs stay quiet.
    assert!(run.stderr.trim().is_empty(), "stderr: {}", run.stderr);
}

#[test]
fn broker_routes_are_tested_without_a_broker() {
    let run = tilts_test_env(
        repo(),
        &["routes.yaml", "--filter", "case-"],
        &[("AMQP_URL", "no broker here")],
    );
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert!(count(&run.stdout, "passed") >= 10, "{}", run.stdout);
    assert!(
        run.stdout
            .contains("test case-submit › a case is stored while the broker is away and published when it is back ... ok"),
        "{}",
        run.stdout
    );
}

#[test]
fn a_broken_mapping_fails_with_a_readable_diff() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(repo().join("routes.yaml"), tmp.path().join("routes.yaml")).unwrap();
    copy_dir(&repo().join("mappings"), &tmp.path().join("mappings"));
    copy_dir(&repo().join("route-tests"), &tmp.path().join("route-tests"));
    let template = tmp.path().join("mappings/company-lookup/response.json.hbs");
    let text = std::fs::read_to_string(&template).unwrap();
    let broken = text.replace(
        "\"name\": \"{{company.body.name}}\"",
        "\"companyName\": \"{{company.body.name}}\"",
    );
    assert_ne!(
        text, broken,
        "the template no longer has the `name` field this test renames"
    );
    std::fs::write(&template, broken).unwrap();

    let run = tilts_test(tmp.path(), &["routes.yaml", "--filter", "company-lookup"]);
    assert_eq!(run.code, Some(1), "{run:#?}");
    let out = &run.stdout;
    assert!(
        out.contains(
            "test company-lookup › an active company is answered from the register ... FAILED"
        ),
        "{out}"
    );
    assert!(out.contains("\nfailures:\n"), "{out}");
    assert!(
        out.contains("---- company-lookup › an active company is answered from the register (route-tests/company-lookup.yaml:"),
        "{out}"
    );
    // The diff: where, what was expected, what came.
    let diff = [
        "  expect.body_exact: at /name",
        "    - expected: \"SIA Zaļā Josla\"",
        "    + actual:   (missing)",
        "  expect.body_exact: at /companyName",
        "    - expected: (absent)",
        "    + actual:   \"SIA Zaļā Josla\"",
    ]
    .join("\n");
    assert!(out.contains(&diff), "no diff like\n{diff}\nin:\n{out}");
    assert!(out.contains("  (full answer: 200 {"), "{out}");
    // Tests that do not look at the name still pass; other routes are filtered out.
    assert!(out.contains("test result: FAILED. "), "{out}");
    assert_eq!(count(out, "failed"), 1, "{out}");
    assert!(count(out, "passed") >= 5, "{out}");
    assert!(count(out, "filtered out") > 0, "{out}");
    assert!(
        out.contains(
            "failures:\n    company-lookup › an active company is answered from the register\n"
        ),
        "{out}"
    );
}

#[test]
fn misscripted_tests_say_what_went_wrong() {
    let run = tilts_test(
        repo(),
        &[
            "routes.yaml",
            "--tests",
            "tests/fixtures/route-tests/failing",
        ],
    );
    assert_eq!(run.code, Some(1), "{run:#?}");
    let out = &run.stdout;
    assert_eq!(count(out, "failed"), 5, "{out}");
    assert_eq!(count(out, "passed"), 0, "{out}");
    // A call beyond the script: answered 500, so the route's 502 is the answer.
    assert!(
        out.contains("  expect.status:\n    - expected: 200\n    + actual:   502\n"),
        "{out}"
    );
    assert!(
        out.contains("  systems.enterprise-register: no scripted answer left: system `enterprise-register` was called 1 time(s), the test scripts 0 answer(s)"),
        "{out}"
    );
    // An answer never asked for: the request was refused before the call.
    assert!(
        out.contains("  systems.enterprise-register: 1 scripted answer(s) were not used: the route called `enterprise-register` 0 time(s)"),
        "{out}"
    );
    // A request that differs from the expected one.
    assert!(
        out.contains(
            "  requests.address-register[0].method:\n    - expected: POST\n    + actual:   GET\n"
        ),
        "{out}"
    );
    assert!(
        out.contains("  requests.address-register[0].path:\n    - expected: /addresses/100000000\n    + actual:   /addresses/103716270\n"),
        "{out}"
    );
    // A broker: a publish outcome never used, a message published with another routing key.
    assert!(
        out.contains("  systems.broker: 1 scripted publish outcome(s) were not used: the route published to `broker` 1 time(s)\n"),
        "{out}"
    );
    assert!(
        out.contains("  requests.broker[0].routing_key:\n    - expected: applications.lad\n    + actual:   applications.vsaa\n"),
        "{out}"
    );
    // A message from a queue: the decision.
    assert!(
        out.contains("  expect.decision:\n    - expected: ack\n    + actual:   reject\n  (decision: reject)\n"),
        "{out}"
    );
}

#[test]
fn a_test_of_an_unknown_route_is_refused_naming_file_and_test() {
    let run = tilts_test(
        repo(),
        &[
            "routes.yaml",
            "--tests",
            "tests/fixtures/route-tests/unknown-route",
        ],
    );
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert!(
        run.stderr.contains(
            "tests/fixtures/route-tests/unknown-route/tests.yaml:3: error in test `a company is looked up`: no route `company-lookups` in the route file; did you mean `company-lookup`?"
        ),
        "{}",
        run.stderr
    );
    assert!(!run.stdout.contains("test result"), "{}", run.stdout);
}

#[test]
fn an_unknown_field_is_refused_naming_file_line_and_test() {
    let run = tilts_test(
        repo(),
        &[
            "routes.yaml",
            "--tests",
            "tests/fixtures/route-tests/unknown-field",
        ],
    );
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert!(
        run.stderr.contains("tests/fixtures/route-tests/unknown-field/tests.yaml:9: error in test `a company is looked up`: at systems.enterprise-register[0].bdy: unknown field `bdy`"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_missing_route_file_exits_2() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tilts_test(tmp.path(), &["routes.yaml"]);
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert!(
        run.stderr.contains("cannot read the route file"),
        "{}",
        run.stderr
    );
}
