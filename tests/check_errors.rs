//! Black-box tests of `tilts check` on broken route files.
//!
//! Every folder under `tests/fixtures/broken/` is a small, realistic route file (with its own
//! `mappings/` folder) that has one deliberate problem, except `many/`, which has several in
//! different routes, systems and files. The tests run the real binary with a controlled
//! environment, from the repository root so that the file paths in the messages are the relative
//! paths passed on the command line, and compare stderr *exactly*: `file:line:col`, the
//! `route <id> › <path>` context, the message, the `help:` line and the summary.
//!
//! In the expected texts, `@` stands for the case's folder, e.g. `tests/fixtures/broken/unknown-field`.
//! Lines and columns were read off the fixtures (1-based; a value's column is where the value
//! starts, an unknown key's column is where the key starts).

use std::path::Path;
use std::process::Command;

const BROKEN: &str = "tests/fixtures/broken";

/// What one run of `tilts check` produced.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `tilts check <route_file>` from the repository root with an empty environment except
/// `PATH` and `env`.
fn tilts_check(route_file: &str, env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tilts"));
    cmd.arg("check")
        .arg(route_file)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("cannot run the tilts binary");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs the checker on `tests/fixtures/broken/<case>/routes.yaml`.
fn check_case(case: &str, env: &[(&str, &str)]) -> Run {
    tilts_check(&format!("{BROKEN}/{case}/routes.yaml"), env)
}

/// The whole stderr expected for `diagnostics` (each one line, plus `\n  help: ...` when it has
/// help), with `@` replaced by the case folder, and the summary line.
fn expected_stderr(case: &str, diagnostics: &[&str]) -> String {
    let dir = format!("{BROKEN}/{case}");
    let mut s = String::new();
    for d in diagnostics {
        s.push_str(&d.replace('@', &dir));
        s.push('\n');
    }
    let n = diagnostics.len();
    s.push_str(&format!(
        "{n} problem{} found\n",
        if n == 1 { "" } else { "s" }
    ));
    s
}

/// Checks exit code 1, empty stdout and the exact stderr; returns a description of every
/// mismatch (empty when the run is as expected).
fn mismatches(case: &str, run: &Run, diagnostics: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    if run.code != Some(1) {
        out.push(format!("{case}: exit code {:?}, expected 1", run.code));
    }
    if !run.stdout.is_empty() {
        out.push(format!("{case}: unexpected stdout:\n{}", run.stdout));
    }
    let want = expected_stderr(case, diagnostics);
    if run.stderr != want {
        out.push(format!(
            "{case}: stderr differs\n--- expected\n{want}--- actual\n{}",
            run.stderr
        ));
    }
    out
}

fn assert_case(case: &str, env: &[(&str, &str)], diagnostics: &[&str]) {
    let run = check_case(case, env);
    let problems = mismatches(case, &run, diagnostics);
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

/// One broken fixture: its folder, extra environment variables, and the exact diagnostics.
struct Case {
    dir: &'static str,
    env: &'static [(&'static str, &'static str)],
    diagnostics: &'static [&'static str],
}

/// A value only the missing-env cases put in the environment; it must never be printed.
const SECRET_TOKEN: &str = "tok-LV-9f8e7d6c5b4a-do-not-print";

const CASES: &[Case] = &[
    Case {
        dir: "yaml-syntax",
        env: &[],
        diagnostics: &[
            "@/routes.yaml:16:5: error: YAML syntax: while parsing a flow mapping, did not find expected ',' or '}'",
        ],
    },
    Case {
        dir: "unknown-field",
        env: &[],
        diagnostics: &["@/routes.yaml:14:5: error in route company-lookup › desciption: unknown field `desciption`
  help: did you mean `description`?"],
    },
    Case {
        dir: "unknown-top-level-field",
        env: &[],
        diagnostics: &["@/routes.yaml:11:1: error: unknown field `route`
  help: did you mean `routes`?"],
    },
    Case {
        dir: "unknown-step-kind",
        env: &[],
        diagnostics: &["@/routes.yaml:17:9: error in route company-lookup › steps[0].transform: unknown kind `transform`
  help: write one of: validate, map, call, choice, respond"],
    },
    Case {
        dir: "duplicate-route-id",
        env: &[],
        diagnostics: &["@/routes.yaml:29:9: error in route company-lookup › id: duplicate route id `company-lookup` (first used on line 12)
  help: give every route its own id"],
    },
    Case {
        dir: "duplicate-endpoint",
        env: &[],
        diagnostics: &["@/routes.yaml:31:40: error in route address-details › from.http.path: GET /v1/addresses/{addressCode} is already taken by route `address-lookup`
  help: give each route its own method and path"],
    },
    Case {
        dir: "unknown-system-call",
        env: &[],
        diagnostics: &["@/routes.yaml:19:19: error in route company-lookup › steps[1].call.system: unknown system `enterprise-registr`
  help: did you mean `enterprise-register`?"],
    },
    Case {
        dir: "exchange-profiles",
        env: &[],
        diagnostics: &[
            "@/routes.yaml:7:22: error in system population-register › soap.version: X-Road 4.0 messages are SOAP 1.1
  help: remove `version` or write \"1.1\"",
            "@/routes.yaml:10:17: error in system population-register › exchange.x_road.client: an X-Road client must be written INSTANCE/CLASS/MEMBER or INSTANCE/CLASS/MEMBER/SUBSYSTEM (e.g. EE/GOV/70000310/subsys), each part visible ASCII without : ; % / \\ ? #",
            "@/routes.yaml:14:14: error in system viss-register › timeout: a delivery to `viss-register` may take longer than `server.lease` (120s): two requests (StartTransaction and SubmitSync) of `timeout` each, and another worker would deliver the message again while it is still in flight
  help: make `server.lease` longer than every delivery, or the timeout shorter",
            "@/routes.yaml:25:15: error in route person-lookup › steps[0].call: a VISS call needs a MessageType, and system `viss-register` has no default
  help: add `message_type: URN:IVIS:...`",
            "@/routes.yaml:26:64: error in route person-lookup › steps[1].call.faults: `faults` applies to SOAP systems, and system `enterprise-register` is not one
  help: remove `faults`, or give system `enterprise-register` `soap:`",
            "@/routes.yaml:26:80: error in route person-lookup › steps[1].call.permission: `permission` applies to DAGR systems, and system `enterprise-register` is not one
  help: remove `permission`, or give system `enterprise-register` `exchange: { dagr: ... }`",
        ],
    },
    Case {
        dir: "tls-files",
        env: &[],
        diagnostics: &[
            "@/routes.yaml:8:12: error in system dagr › http.tls: cannot read client_cert '@/certs/tilts.pem': No such file or directory (os error 2); check the path and the file permissions
  help: give PEM files: client_cert with client_key, and/or ca",
            "@/routes.yaml:13:9: error in system dagr-no-cert › http.auth.dagr: DAGR issues tokens against a client certificate, and this system has none
  help: add `tls: { client_cert: ..., client_key: ... }` under `http`",
        ],
    },
    Case {
        dir: "unknown-system-to",
        env: &[],
        diagnostics: &["@/routes.yaml:20:15: error in route application-submit › to.system: unknown system `social-service`
  help: did you mean `social-services`?"],
    },
    Case {
        dir: "missing-template",
        env: &[],
        diagnostics: &["@/routes.yaml:27:39: error in route company-lookup › steps[3].respond.body: file `company-lookup/respons.json.hbs` not found in @/mappings
  help: did you mean `company-lookup/response.json.hbs`?"],
    },
    Case {
        dir: "missing-schema",
        env: &[],
        diagnostics: &["@/routes.yaml:17:19: error in route application-submit › steps[0].validate: file `applications/submitted.schema.json` not found in @/mappings
  help: create @/mappings/applications/submitted.schema.json"],
    },
    Case {
        dir: "template-syntax",
        env: &[],
        // Positioned in the template file; the context names the route and the line using it.
        diagnostics: &["@/mappings/company-lookup/response.json.hbs:6:71: error in template used by route company-lookup › steps[3].respond.body (@/routes.yaml:27): template syntax: helper \"if\" was opened, but \"iff\" is closing
  help: check that every {{#if}}/{{#each}} has its {{/if}}/{{/each}} and that every {{ is closed"],
    },
    Case {
        dir: "schema-invalid-json",
        env: &[],
        diagnostics: &["@/mappings/company-lookup/request.schema.json:9:3: error in schema used by route company-lookup › steps[0].validate (@/routes.yaml:17): not valid JSON: trailing comma"],
    },
    Case {
        dir: "schema-invalid",
        env: &[],
        diagnostics: &["@/mappings/company-lookup/request.schema.json:8:26: error in schema used by route company-lookup › steps[0].validate (@/routes.yaml:17): not a valid JSON Schema: the value is not valid under any of the schemas listed in the 'anyOf' keyword (at /properties/purpose/type)
  help: see https://json-schema.org/draft/2020-12 for the keywords and their values"],
    },
    Case {
        dir: "missing-env",
        env: &[("ENTERPRISE_REGISTER_TOKEN", SECRET_TOKEN)],
        diagnostics: &["@/routes.yaml:8:12: error in system enterprise-register › http.url: environment variable ENTERPRISE_REGISTER_URL is not set: set it, or give a default with ${ENTERPRISE_REGISTER_URL:-value}"],
    },
    Case {
        dir: "wrong-type-timeout",
        env: &[],
        diagnostics: &["@/routes.yaml:9:14: error in system enterprise-register › timeout: a duration is written with a unit, as a string: \"250ms\", \"5s\", \"2m\", \"1h\""],
    },
    Case {
        dir: "wrong-type-steps",
        env: &[],
        diagnostics: &[
            "@/routes.yaml:17:7: error in route company-lookup › steps: invalid type: map, expected a sequence",
        ],
    },
    Case {
        dir: "bad-duration",
        env: &[],
        diagnostics: &["@/routes.yaml:24:20: error in route company-lookup › steps[1].call.timeout: '5 sec' has an unknown unit 'sec': write a number and a unit: 250ms, 5s, 2m, 1h or 1d"],
    },
    Case {
        dir: "server-limits",
        env: &[],
        diagnostics: &[
            "@/routes.yaml:5:19: error in server.header_timeout: `header_timeout` must be at least 1s",
            "@/routes.yaml:6:17: error in server.http_threads: `http_threads` must be between 1 and 1024
  help: leave it out for one thread per CPU",
        ],
    },
    Case {
        dir: "invalid-owner",
        env: &[],
        diagnostics: &["@/routes.yaml:13:12: error in route company-lookup › owner: `owner` must be the owning institution's Enterprise Register number: the check digit of the Enterprise Register number does not match
  help: write the 11-digit number in quotes, e.g. owner: \"90000038741\""],
    },
    Case {
        dir: "condition-syntax",
        env: &[],
        diagnostics: &["@/routes.yaml:25:19: error in route company-lookup › steps[2].choice[0].when: condition: '=' is not an operator; write '==' to compare (at character 16)"],
    },
    Case {
        dir: "condition-unknown-name",
        env: &[],
        diagnostics: &["@/routes.yaml:25:19: error in route company-lookup › steps[2].choice[0].when: unknown name `compnay` in condition (at character 1)
  help: did you mean `company`?"],
    },
    Case {
        dir: "otherwise-not-last",
        env: &[],
        diagnostics: &["@/routes.yaml:26:13: error in route address-lookup › steps[1].choice[1].otherwise: `otherwise` must be the last branch
  help: move it to the end of the choice"],
    },
    Case {
        dir: "path-no-slash",
        env: &[],
        diagnostics: &["@/routes.yaml:15:41: error in route company-lookup › from.http.path: a path starts with `/`
  help: e.g. `path: /v1/cases/{caseId}`"],
    },
    Case {
        dir: "reserved-path",
        env: &[],
        diagnostics: &["@/routes.yaml:15:40: error in route company-lookup › from.http.path: `/healthz` is served by tilts itself
  help: e.g. `path: /v1/cases/{caseId}`"],
    },
    Case {
        dir: "invalid-method",
        env: &[],
        diagnostics: &["@/routes.yaml:15:29: error in route company-lookup › from.http.method: `FETCH` is not a method routes can take
  help: write GET, POST, PUT, PATCH or DELETE"],
    },
    Case {
        dir: "template-escape",
        env: &[],
        diagnostics: &["@/routes.yaml:26:43: error in route company-lookup › steps[2].choice[0].respond.body: `../company-lookup/not-found.json.hbs` must be a path inside the mappings folder
  help: write it relative to the mappings folder, without `..`, e.g. company-lookup/response.json.hbs"],
    },
    Case {
        dir: "as-builtin",
        env: &[],
        diagnostics: &["@/routes.yaml:22:15: error in route company-lookup › steps[1].call.as: `body` is a built-in name
  help: pick another name; built-ins are body, headers, query, params, payload, route, message"],
    },
    Case {
        dir: "missing-version",
        env: &[],
        // Reported at the start of the document (its first key, after the comment lines).
        diagnostics: &["@/routes.yaml:3:1: error: missing field `version`
  help: add `version: 1` at the top"],
    },
    Case {
        dir: "missing-field",
        env: &[],
        diagnostics: &["@/routes.yaml:19:11: error in route company-lookup › steps[1].call: missing field `as`
  help: add `as: ...` here"],
    },
];

/// Every single-problem fixture gives exactly its one diagnostic. All cases run before the test
/// fails, so one run shows every mismatch.
#[test]
fn every_broken_fixture_reports_its_problem_with_position_and_context() {
    assert!(CASES.len() >= 15, "the issue asks for at least 15 cases");
    let mut problems = Vec::new();
    for case in CASES {
        let run = check_case(case.dir, case.env);
        problems.extend(mismatches(case.dir, &run, case.diagnostics));
    }
    assert!(
        problems.is_empty(),
        "{} of {} cases differ:\n\n{}",
        problems.len(),
        CASES.len(),
        problems.join("\n\n")
    );
}

#[test]
fn shipped_route_file_checks_clean() {
    let run = tilts_check("routes.yaml", &[]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.stderr, "", "{run:?}");
    assert!(
        run.stdout.starts_with("routes.yaml: ok (") && run.stdout.ends_with(" systems)\n"),
        "{run:?}"
    );
}

#[test]
fn route_file_that_does_not_exist() {
    let run = tilts_check(&format!("{BROKEN}/does-not-exist/routes.yaml"), &[]);
    assert!(
        !Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(BROKEN)
            .join("does-not-exist")
            .exists()
    );
    let problems = mismatches(
        "does-not-exist",
        &run,
        &[
            "@/routes.yaml:1:1: error: cannot read the route file: No such file or directory (os error 2)
  help: pass the route file's path: tilts check path/to/routes.yaml",
        ],
    );
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

#[test]
fn missing_env_var_is_named_and_no_value_is_printed() {
    let other_secret = "hunter2-db-password";
    let run = check_case(
        "missing-env",
        &[
            ("ENTERPRISE_REGISTER_TOKEN", SECRET_TOKEN),
            ("TILTS_DB_PASSWORD", other_secret),
        ],
    );
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr.contains(
            "error in system enterprise-register › http.url: environment variable ENTERPRISE_REGISTER_URL is not set"
        ),
        "{}",
        run.stderr
    );
    for secret in [SECRET_TOKEN, other_secret] {
        assert!(
            !run.stderr.contains(secret) && !run.stdout.contains(secret),
            "a variable's value was printed:\n{}{}",
            run.stdout,
            run.stderr
        );
    }
    // The variable that is set is not reported, and nothing follows from the missing URL.
    assert!(
        !run.stderr.contains("ENTERPRISE_REGISTER_TOKEN"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.ends_with("\n1 problem found\n"),
        "{}",
        run.stderr
    );
}

/// Setting the variable fixes the file: the problem really was the variable (and the token,
/// whose value stays secret, is accepted).
#[test]
fn missing_env_fixture_checks_clean_once_the_variable_is_set() {
    let run = check_case(
        "missing-env",
        &[
            ("ENTERPRISE_REGISTER_TOKEN", SECRET_TOKEN),
            ("ENTERPRISE_REGISTER_URL", "http://127.0.0.1:9102"),
        ],
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(
        run.stdout,
        format!("{BROKEN}/missing-env/routes.yaml: ok (1 routes, 1 systems)\n")
    );
    assert!(!run.stdout.contains(SECRET_TOKEN) && !run.stderr.contains(SECRET_TOKEN));
}

/// Several problems in different routes, systems and files: all are reported in one run, sorted
/// by position in the route file, then the problems in other files. The address register's URL
/// is missing, so that system is unusable: the route calling it gets no follow-on error.
#[test]
fn many_problems_are_all_reported_in_one_run_sorted_by_position() {
    let run = check_case("many", &[("SOCIAL_SERVICES_TOKEN", SECRET_TOKEN)]);
    let diagnostics = [
        "@/routes.yaml:8:18: error in server.route_timeout: '30 seconds' has an unknown unit 'seconds': write a number and a unit: 250ms, 5s, 2m, 1h or 1d",
        "@/routes.yaml:20:12: error in system address-register › http.url: environment variable ADDRESS_REGISTER_URL is not set: set it, or give a default with ${ADDRESS_REGISTER_URL:-value}",
        "@/routes.yaml:40:19: error in route company-lookup › steps[1].call.system: unknown system `enterprise-registr`
  help: did you mean `enterprise-register`?",
        "@/routes.yaml:64:19: error in route address-lookup › steps[1].choice[1].when: unknown name `adress` in condition (at character 1)
  help: did you mean `address`?",
        "@/routes.yaml:69:12: error in route application-submit › owner: `owner` must be the owning institution's Enterprise Register number: the check digit of the Enterprise Register number does not match
  help: write the 11-digit number in quotes, e.g. owner: \"90000038741\"",
        "@/routes.yaml:85:5: error in route application-status › desciption: unknown field `desciption`
  help: did you mean `description`?",
        "@/routes.yaml:94:9: error in route company-lookup › id: duplicate route id `company-lookup` (first used on line 33)
  help: give every route its own id",
        "@/routes.yaml:104:39: error in route company-lookup › steps[1].respond.body: file `company-lookup/respone.json.hbs` not found in @/mappings
  help: did you mean `company-lookup/response.json.hbs`?",
        "@/mappings/applications/status.json.hbs:5:69: error in template used by route application-case › steps[1].respond.body (@/routes.yaml:116): template syntax: helper \"if\" was opened, but \"each\" is closing
  help: check that every {{#if}}/{{#each}} has its {{/if}}/{{/each}} and that every {{ is closed",
    ];
    let problems = mismatches("many", &run, &diagnostics);
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));

    // The same, stated as properties: at least 5 problems in at least 5 different routes (by id;
    // `in route X` or `used by route X`), and the route file's diagnostics come first, in (line,
    // column) order.
    let heads: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with(BROKEN))
        .collect();
    assert!(heads.len() >= 5, "{}", run.stderr);
    let mut routes: Vec<&str> = heads
        .iter()
        .filter_map(|l| l.split("route ").nth(1)?.split(' ').next())
        .collect();
    routes.sort_unstable();
    routes.dedup();
    assert!(routes.len() >= 5, "{routes:?}");
    let route_file = format!("{BROKEN}/many/routes.yaml:");
    let positions: Vec<(bool, u64, u64)> = heads
        .iter()
        .map(|l| {
            let in_route_file = l.starts_with(&route_file);
            let mut nums = l.split(": error").next().unwrap().rsplit(':');
            let col = nums.next().unwrap().parse().unwrap();
            let line = nums.next().unwrap().parse().unwrap();
            (!in_route_file, line, col)
        })
        .collect();
    let mut sorted = positions.clone();
    sorted.sort();
    assert_eq!(positions, sorted, "{}", run.stderr);
    assert!(!run.stderr.contains(SECRET_TOKEN) && !run.stdout.contains(SECRET_TOKEN));
}

/// Without the token the social-services system is broken too: one more problem, still one run.
#[test]
fn many_reports_a_further_missing_variable_in_the_same_run() {
    let run = check_case("many", &[]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr.contains(&format!(
            "{BROKEN}/many/routes.yaml:29:18: error in system social-services › http.auth.bearer.token: environment variable SOCIAL_SERVICES_TOKEN is not set"
        )),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.ends_with("\n10 problems found\n"),
        "{}",
        run.stderr
    );
}

/// A key written twice is reported where the second one is, with tilts' own message naming the
/// key and the line of the first.
#[test]
fn duplicate_yaml_key_is_reported_at_the_second_key() {
    assert_case(
        "yaml-duplicate-key",
        &[],
        &[
            "@/routes.yaml:22:11: error: duplicate key `path` (first on line 20)
  help: a key may appear once in a mapping: remove or rename one of them",
        ],
    );
}

#[test]
fn unit_enum_value_is_rejected() {
    let run = check_case("delivery-async", &[]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("`async`"), "{}", run.stderr);
    assert!(
        run.stderr.contains("help: did you mean `sync`?"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.ends_with("\n1 problem found\n"),
        "{}",
        run.stderr
    );
}

#[test]
fn unknown_delivery_value_is_reported_at_the_value() {
    let run = check_case("delivery-async", &[]);
    let dir = format!("{BROKEN}/delivery-async");
    let mut lines = run.stderr.lines();
    let head = lines.next().unwrap_or_default();
    assert!(
        head.starts_with(&format!(
            "{dir}/routes.yaml:16:15: error in route company-lookup › delivery: "
        )),
        "{}",
        run.stderr
    );
    assert!(head.contains("`async`") && !head.contains("kind"), "{head}");
    assert_eq!(lines.next(), Some("  help: did you mean `sync`?"));
}

#[test]
fn unknown_field_in_a_two_field_mapping_is_located() {
    for (case, head) in [
        (
            "map-named-typo",
            "@/routes.yaml:18:16: error in route application-submit › steps[1].map.tempate: unknown field `tempate`",
        ),
        (
            "unknown-field-from",
            "@/routes.yaml:15:35: error in route company-lookup › from.http.pth: unknown field `pth`",
        ),
    ] {
        let run = check_case(case, &[]);
        assert_eq!(run.code, Some(1), "{run:?}");
        let head = head.replace('@', &format!("{BROKEN}/{case}"));
        assert!(
            run.stderr.starts_with(&format!("{head}\n")),
            "{}",
            run.stderr
        );
        assert!(
            run.stderr.ends_with("\n1 problem found\n"),
            "{}",
            run.stderr
        );
    }
}

#[test]
fn unknown_field_in_a_two_field_mapping_gets_did_you_mean() {
    assert_case(
        "map-named-typo",
        &[],
        &["@/routes.yaml:18:16: error in route application-submit › steps[1].map.tempate: unknown field `tempate`
  help: did you mean `template`?"],
    );
    assert_case(
        "unknown-field-from",
        &[],
        &["@/routes.yaml:15:35: error in route company-lookup › from.http.pth: unknown field `pth`
  help: did you mean `path`?"],
    );
}

#[test]
fn unclosed_handlebars_tag_is_located_in_the_template_file() {
    let run = check_case("template-unclosed", &[]);
    assert_eq!(run.code, Some(1), "{run:?}");
    let dir = format!("{BROKEN}/template-unclosed");
    assert!(
        run.stderr.starts_with(&format!(
            "{dir}/mappings/applications/status.json.hbs:5:"
        )) && run.stderr.contains(&format!(
            " error in template used by route application-case › steps[1].respond.body ({dir}/routes.yaml:22): template syntax: "
        )),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.ends_with("\n1 problem found\n"),
        "{}",
        run.stderr
    );
}

#[test]
fn unclosed_handlebars_tag_message_says_what_is_missing() {
    let run = check_case("template-unclosed", &[]);
    let head = run.stderr.lines().next().unwrap_or_default();
    assert!(
        head.starts_with(&format!(
            "{BROKEN}/template-unclosed/mappings/applications/status.json.hbs:5:69: "
        )),
        "{head}"
    );
    assert!(
        !head.contains("trailing_tilde") && head.contains("}}"),
        "{head}"
    );
}

#[test]
fn tab_indentation_is_a_yaml_syntax_error() {
    let run = check_case("yaml-tab", &[]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr
            .starts_with(&format!("{BROKEN}/yaml-tab/routes.yaml:"))
            && run.stderr.contains(": error: YAML syntax: ")
            && run.stderr.contains("tab"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.ends_with("\n1 problem found\n"),
        "{}",
        run.stderr
    );
}

#[test]
fn tab_indentation_is_reported_on_the_tab_line() {
    let run = check_case("yaml-tab", &[]);
    let head = run.stderr.lines().next().unwrap_or_default();
    assert!(
        head.starts_with(&format!(
            "{BROKEN}/yaml-tab/routes.yaml:13:1: error: YAML syntax: "
        )),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("spaces"), "{}", run.stderr);
}

#[test]
fn two_problems_in_one_route_are_both_reported() {
    assert_case(
        "two-problems-one-route",
        &[],
        &[
            "@/routes.yaml:15:5: error in route company-lookup › desciption: unknown field `desciption`
  help: did you mean `description`?",
            "@/routes.yaml:25:20: error in route company-lookup › steps[1].call.timeout: '5 sec' has an unknown unit 'sec': write a number and a unit: 250ms, 5s, 2m, 1h or 1d",
        ],
    );
}

/// Every fixture folder is used by a test here (no forgotten, untested fixture).
#[test]
fn every_fixture_folder_is_tested() {
    const OTHERS: &[&str] = &[
        "many",
        "yaml-duplicate-key",
        "delivery-async",
        "map-named-typo",
        "unknown-field-from",
        "template-unclosed",
        "yaml-tab",
        "two-problems-one-route",
    ];
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(BROKEN);
    let mut untested = Vec::new();
    for entry in std::fs::read_dir(&root).expect("fixtures folder") {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        assert!(
            entry.path().join("routes.yaml").is_file(),
            "{name} has no routes.yaml"
        );
        if !CASES.iter().any(|c| c.dir == name) && !OTHERS.contains(&name.as_str()) {
            untested.push(name);
        }
    }
    assert!(untested.is_empty(), "untested fixtures: {untested:?}");
}
