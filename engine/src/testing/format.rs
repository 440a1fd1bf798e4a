//! The route-test file format (`route-tests/*.yaml`) and how it is read.
//!
//! A file holds `tests:`, each a request to one route, the scripted answers of the systems it
//! calls, and what must come out. Unknown keys are errors, as in the route file; so are a route
//! or system that the route file does not declare. Errors name the file, the line, the test
//! and what to write instead. See docs/route-tests.md.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::config::types::Dur;
use crate::config::yaml;
use crate::diag::closest;
use crate::plan::{Ingress, Plan};

/// A file of route tests.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFileDoc {
    tests: Vec<Value>,
}

/// One test case.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// What the test shows, in words (unique per route).
    pub name: String,
    /// The id of the route under test; it must exist in the route file.
    pub route: String,
    /// The request sent to tilts.
    #[serde(default)]
    pub request: RequestSpec,
    /// Per system: its answers, in the order of the calls it gets.
    #[serde(default)]
    pub systems: BTreeMap<String, Vec<ScriptedAnswer>>,
    /// What tilts must answer (and, for queued routes, how delivery must end).
    pub expect: Expect,
    /// Per system: the requests tilts must have sent it, in order; `[]` means none.
    #[serde(default)]
    pub requests: BTreeMap<String, Vec<RequestExpect>>,
    /// Where the test is: file and line (filled in when read).
    #[serde(skip)]
    pub origin: Origin,
}

impl Case {
    /// `route › name`, as the output shows it.
    pub fn full_name(&self) -> String {
        format!("{} › {}", self.route, self.name)
    }
}

/// Where a test is written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// The test file.
    pub file: PathBuf,
    /// The line of the test's entry.
    pub line: u64,
}

/// The request a test sends. Give at most one of `body`, `xml`, `soap`, `text`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    /// Default: the route's method (SOAP endpoints: POST).
    pub method: Option<String>,
    /// Path with the query string. Default: the route's path, when it has no `{params}`.
    pub path: Option<String>,
    /// Request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A JSON body (`content-type: application/json`).
    pub body: Option<Value>,
    /// An XML body (`application/xml`).
    pub xml: Option<String>,
    /// A whole SOAP envelope, sent with the content type of the endpoint's SOAP version.
    pub soap: Option<String>,
    /// A body sent as it is (`text/plain` unless `headers` say otherwise).
    pub text: Option<String>,
}

/// One scripted answer of a system. Give at most one of `body`, `xml`, `soap`, `text`,
/// `fault`; none answers an empty body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedAnswer {
    /// HTTP status; default 200 (500 with `fault`).
    pub status: Option<u16>,
    /// JSON data: sent as JSON by REST systems; written as XML (see docs/routes.md, XML as
    /// data) and wrapped like `xml` by SOAP and VISS systems.
    pub body: Option<Value>,
    /// XML: as it is from REST systems; the Body of an envelope of the system's SOAP version
    /// from SOAP systems; the SubmitSync result from VISS systems.
    pub xml: Option<String>,
    /// A whole envelope, sent as it is.
    pub soap: Option<String>,
    /// A body sent as it is (`text/plain` unless `headers` say otherwise).
    pub text: Option<String>,
    /// A SOAP Fault envelope of the system's SOAP version.
    pub fault: Option<FaultSpec>,
    /// Answer headers (they override the default content type).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Wait this long before answering.
    pub delay: Option<Dur>,
    /// Never answer: the call times out.
    #[serde(default)]
    pub timeout: bool,
    /// VISS systems: this answers the StartTransaction request (otherwise answered
    /// automatically with a transaction id).
    #[serde(default)]
    pub start_transaction: bool,
}

/// A scripted SOAP Fault.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// `Client` (1.2 `Sender`), `Server` (1.2 `Receiver`), `VersionMismatch`,
    /// `MustUnderstand`, or another code as written.
    pub code: String,
    /// The reason text.
    pub reason: String,
    /// A subcode: `PersonNotFound` or `pr:PersonNotFound`.
    pub subcode: Option<String>,
    /// The namespace of the subcode's prefix; default `urn:x-tilts:route-tests`.
    pub subcode_namespace: Option<String>,
    /// The detail's content, an XML fragment.
    pub detail: Option<String>,
}

/// What tilts must answer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The HTTP status.
    pub status: u16,
    /// The answer contains this (JSON: objects may have more keys, lists have the same length
    /// and each item contains the expected one; XML answers are compared as data, see
    /// docs/routes.md, with local names; SOAP answers: the Body's content).
    pub body: Option<Value>,
    /// The answer equals this (as data).
    pub body_exact: Option<Value>,
    /// Answer headers (names in any case; `application/json` matches
    /// `application/json; charset=utf-8`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Headers the answer must not have.
    #[serde(default)]
    pub absent_headers: Vec<String>,
    /// XML and SOAP answers: XPath-like path -> the first match's text (`null`: no match).
    /// SOAP answers are selected from the Envelope.
    #[serde(default)]
    pub xpath: BTreeMap<String, Value>,
    /// SOAP answers: the Fault contains this (`code`, `subcode`, `reason`, `detail`).
    pub fault: Option<Value>,
    /// Queued routes: the message was delivered.
    pub delivered: Option<bool>,
    /// Queued routes: the message became a dead letter.
    pub dead: Option<bool>,
    /// Queued routes: the number of delivery attempts.
    pub attempts: Option<u32>,
}

/// A request tilts must have sent (each field a check; all optional).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestExpect {
    /// The method.
    pub method: Option<String>,
    /// The path and query, exactly.
    pub path: Option<String>,
    /// Headers the request has (see [`Expect::headers`]).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Headers the request must not have.
    #[serde(default)]
    pub absent_headers: Vec<String>,
    /// A JSON request contains this; an XML one, as data (local names; SOAP: the Body's
    /// content, for VISS the SubmitSync request's payload).
    pub body: Option<Value>,
    /// The request equals this (as data).
    pub body_exact: Option<Value>,
    /// XML and SOAP requests: path -> text, selected from the whole document (the Envelope).
    #[serde(default)]
    pub xpath: BTreeMap<String, Value>,
}

/// Why the tests could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatError {
    /// The file.
    pub file: PathBuf,
    /// The line, when known.
    pub line: Option<u64>,
    /// The test's name (or its index when it has none), when the error is inside a test.
    pub test: Option<String>,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": error")?;
        if let Some(t) = &self.test {
            write!(f, " in test `{t}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for FormatError {}

/// The `*.yaml` and `*.yml` files of `dir`, sorted by name.
pub fn test_files(dir: &Path) -> Result<Vec<PathBuf>, FormatError> {
    let entries = std::fs::read_dir(dir).map_err(|e| FormatError {
        file: dir.to_owned(),
        line: None,
        test: None,
        message: format!(
            "cannot read the route-test folder: {e}; write tests in a route-tests/ folder next to the route file, or pass --tests DIR"
        ),
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    Ok(files)
}

/// Reads one test file and checks its tests against the plan.
pub fn read_file(path: &Path, plan: &Plan) -> Result<Vec<Case>, FormatError> {
    let err = |line: Option<u64>, test: Option<String>, message: String| FormatError {
        file: path.to_owned(),
        line,
        test,
        message,
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| err(None, None, format!("cannot read the test file: {e}")))?;
    parse(&text, path, plan)
}

/// Parses the text of a test file (`file` is named in errors and origins).
pub fn parse(text: &str, file: &Path, plan: &Plan) -> Result<Vec<Case>, FormatError> {
    let err = |line: Option<u64>, test: Option<String>, message: String| FormatError {
        file: file.to_owned(),
        line,
        test,
        message,
    };
    let located = yaml::parse(text).map_err(|e| {
        err(
            Some(e.pos.line),
            None,
            format!("YAML syntax: {}", e.message),
        )
    })?;
    if let Some((key, pos, first)) = located.duplicates.first() {
        return Err(err(
            Some(pos.line),
            None,
            format!("duplicate key `{key}` (first on line {first}): a key may appear once"),
        ));
    }
    let doc: TestFileDoc =
        serde_path_to_error::deserialize(located.value.clone()).map_err(|e| {
            err(
                Some(located.key_pos(&pointer_of(e.path())).line),
                None,
                format!(
                    "{}; a test file is `tests:` followed by a list of tests",
                    e.inner()
                ),
            )
        })?;
    let mut cases = Vec::new();
    let mut seen = HashSet::new();
    for (i, raw) in doc.tests.into_iter().enumerate() {
        let base = format!("/tests/{i}");
        let label = raw
            .get("name")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| format!("tests[{i}]"));
        let line = located.pos(&base).line;
        let mut case: Case = serde_path_to_error::deserialize(raw).map_err(|e| {
            let at = format!("{base}{}", pointer_of(e.path()));
            err(
                Some(located.key_pos(&at).line),
                Some(label.clone()),
                format!("at {}: {}", dotted(&at, &base), e.inner()),
            )
        })?;
        case.origin = Origin {
            file: file.to_owned(),
            line,
        };
        let at_line = |p: &str| Some(located.key_pos(&format!("{base}{p}")).line);
        let Some(route) = plan.route(&case.route) else {
            let hint = match closest(&case.route, plan.routes.iter().map(|r| r.id.as_str())) {
                Some(c) => format!("did you mean `{c}`?"),
                None => format!(
                    "the route file has: {}",
                    plan.routes
                        .iter()
                        .map(|r| r.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            return Err(err(
                at_line("/route"),
                Some(label),
                format!("no route `{}` in the route file; {hint}", case.route),
            ));
        };
        if !matches!(route.ingress, Ingress::Http | Ingress::Soap(_)) {
            return Err(err(
                at_line("/route"),
                Some(label),
                format!(
                    "route `{}` does not take HTTP or SOAP requests: tilts test runs routes with `from: http` or `from: soap`",
                    case.route
                ),
            ));
        }
        for (key, names) in [
            ("systems", case.systems.keys().collect::<Vec<_>>()),
            ("requests", case.requests.keys().collect()),
        ] {
            for name in names {
                if !plan.systems.contains_key(name.as_str()) {
                    let hint = closest(name, plan.systems.keys().map(String::as_str))
                        .map(|c| format!("; did you mean `{c}`?"))
                        .unwrap_or_default();
                    return Err(err(
                        at_line(&format!("/{key}/{}", yaml::escape_pointer(name))),
                        Some(label),
                        format!("no system `{name}` in the route file{hint}"),
                    ));
                }
            }
        }
        let bodies = [
            case.request.body.is_some(),
            case.request.xml.is_some(),
            case.request.soap.is_some(),
            case.request.text.is_some(),
        ];
        if bodies.iter().filter(|b| **b).count() > 1 {
            return Err(err(
                at_line("/request"),
                Some(label),
                "give one of request.body, request.xml, request.soap, request.text".into(),
            ));
        }
        for (system, answers) in &case.systems {
            for (j, a) in answers.iter().enumerate() {
                let n = [
                    a.body.is_some(),
                    a.xml.is_some(),
                    a.soap.is_some(),
                    a.text.is_some(),
                    a.fault.is_some(),
                ]
                .iter()
                .filter(|b| **b)
                .count();
                if n > 1 {
                    return Err(err(
                        at_line(&format!("/systems/{}/{j}", yaml::escape_pointer(system))),
                        Some(label),
                        format!("systems.{system}[{j}]: give one of body, xml, soap, text, fault"),
                    ));
                }
            }
        }
        if case.request.path.is_none() && route.path.contains('{') {
            return Err(err(
                Some(line),
                Some(label),
                format!(
                    "route `{}` has path parameters ({}): write request.path, e.g. the path with values filled in",
                    route.id, route.path
                ),
            ));
        }
        if !seen.insert((case.route.clone(), case.name.clone())) {
            return Err(err(
                Some(line),
                Some(label),
                format!(
                    "another test of route `{}` has this name: give each test its own name",
                    case.route
                ),
            ));
        }
        cases.push(case);
    }
    Ok(cases)
}

fn pointer_of(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut p = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => p.push_str(&format!("/{index}")),
            Segment::Map { key } => {
                p.push('/');
                p.push_str(&yaml::escape_pointer(key));
            }
            Segment::Enum { variant } => {
                p.push('/');
                p.push_str(&yaml::escape_pointer(variant));
            }
            Segment::Unknown => {}
        }
    }
    p
}

/// `/tests/0/expect/status` relative to `/tests/0` as `expect.status` (`systems.x[0]` for
/// list items).
fn dotted(pointer: &str, base: &str) -> String {
    let rest = pointer.strip_prefix(base).unwrap_or(pointer);
    let mut out = String::new();
    for seg in rest.split('/').filter(|s| !s.is_empty()) {
        if seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{seg}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&seg.replace("~1", "/").replace("~0", "~"));
        }
    }
    if out.is_empty() {
        "the test".into()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTES: &str = r#"
version: 1
systems:
  enterprise-register: { http: { url: "http://127.0.0.1:9" } }
routes:
  - id: company-lookup
    owner: "90000038741"
    from: { http: { method: POST, path: /v1/company-lookup } }
    to: { system: enterprise-register, path: /companies }
  - id: address-lookup
    owner: "90000038741"
    from: { http: { method: GET, path: "/v1/addresses/{code}" } }
    to: { system: enterprise-register, method: GET, path: "/addresses/{{params.code}}" }
"#;

    fn plan() -> Plan {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("routes.yaml");
        std::fs::write(&file, ROUTES).unwrap();
        std::fs::create_dir(dir.path().join("mappings")).unwrap();
        crate::check::load_with_env(&file, &|_| None)
            .unwrap_or_else(|d| panic!("the test routes do not check:\n{d}"))
    }

    fn parse_err(text: &str) -> FormatError {
        parse(text, Path::new("route-tests/x.yaml"), &plan()).unwrap_err()
    }

    #[test]
    fn a_valid_file_reads_with_defaults_and_origins() {
        let text = "tests:\n  - name: found\n    route: company-lookup\n    request: { body: { regNo: \"40003521600\" } }\n    systems:\n      enterprise-register: [{ body: { name: A } }]\n    expect: { status: 200, body: { name: A } }\n";
        let cases = parse(text, Path::new("t.yaml"), &plan()).unwrap();
        assert_eq!(cases.len(), 1);
        let c = &cases[0];
        assert_eq!(c.full_name(), "company-lookup › found");
        assert_eq!(c.origin.line, 2);
        assert_eq!(c.request.method, None);
        assert_eq!(c.systems["enterprise-register"].len(), 1);
        assert_eq!(c.expect.status, 200);
    }

    #[test]
    fn an_unknown_field_names_file_line_test_and_place() {
        let e = parse_err(
            "tests:\n  - name: found\n    route: company-lookup\n    expect:\n      status: 200\n      bodyy: {}\n",
        );
        assert_eq!(e.file, Path::new("route-tests/x.yaml"));
        assert_eq!(e.line, Some(6));
        assert_eq!(e.test.as_deref(), Some("found"));
        assert!(
            e.message
                .starts_with("at expect.bodyy: unknown field `bodyy`"),
            "{e}"
        );
        assert!(
            e.to_string()
                .starts_with("route-tests/x.yaml:6: error in test `found`: at expect.bodyy"),
            "{e}"
        );
    }

    #[test]
    fn an_unknown_route_is_an_error_with_a_suggestion() {
        let e = parse_err(
            "tests:\n  - name: found\n    route: company-lokup\n    expect: { status: 200 }\n",
        );
        assert_eq!(e.line, Some(3));
        assert_eq!(e.test.as_deref(), Some("found"));
        assert!(e.message.contains("no route `company-lokup`"), "{e}");
        assert!(e.message.contains("did you mean `company-lookup`?"), "{e}");
    }

    #[test]
    fn an_unknown_system_is_an_error() {
        let e = parse_err(
            "tests:\n  - name: found\n    route: company-lookup\n    expect: { status: 200 }\n    requests:\n      enterprise-registr: []\n",
        );
        assert_eq!(e.line, Some(6));
        assert!(e.message.contains("no system `enterprise-registr`"), "{e}");
        assert!(
            e.message.contains("did you mean `enterprise-register`?"),
            "{e}"
        );
    }

    #[test]
    fn other_mistakes_are_errors() {
        // A route path with parameters needs request.path.
        let e = parse_err(
            "tests:\n  - name: a\n    route: address-lookup\n    expect: { status: 200 }\n",
        );
        assert!(e.message.contains("write request.path"), "{e}");
        // Two bodies.
        let e = parse_err(
            "tests:\n  - name: a\n    route: company-lookup\n    request: { body: {}, xml: \"<a/>\" }\n    expect: { status: 200 }\n",
        );
        assert!(e.message.contains("give one of request.body"), "{e}");
        // The same name twice for one route.
        let e = parse_err(
            "tests:\n  - { name: a, route: company-lookup, expect: { status: 200 } }\n  - { name: a, route: company-lookup, expect: { status: 201 } }\n",
        );
        assert_eq!(e.line, Some(3));
        assert!(
            e.message
                .contains("another test of route `company-lookup` has this name"),
            "{e}"
        );
        // A missing `expect`.
        let e = parse_err("tests:\n  - { name: a, route: company-lookup }\n");
        assert!(e.message.contains("missing field `expect`"), "{e}");
        // Not a test file at all.
        let e = parse_err("routes: []\n");
        assert!(e.message.contains("unknown field `routes`"), "{e}");
        assert_eq!(e.test, None);
        // YAML syntax.
        let e = parse_err("tests:\n  - name: [a\n");
        assert!(e.message.starts_with("YAML syntax"), "{e}");
    }
}
