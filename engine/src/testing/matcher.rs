//! The assertions of route tests: JSON subset and equality matching with a JSON pointer for
//! every mismatch, header matching, and XPath-like selections in XML read as data.
//!
//! A [`Mismatch`] says where (a pointer into the compared value) and what was expected and
//! found; the runner prints them as the diff of a failed test.

use serde_json::Value;
use tilts_adapters::xml;

/// One difference between what a test expects and what happened.
#[derive(Debug, Clone, PartialEq)]
pub struct Mismatch {
    /// Where: a JSON pointer (RFC 6901) into the compared value, an XPath, or a header name.
    pub at: String,
    /// What the test expects (`None`: the place must not exist).
    pub expected: Option<Value>,
    /// What was found (`None`: missing).
    pub actual: Option<Value>,
    /// A note when the difference is not in the values themselves (a list's length, say).
    pub note: Option<String>,
}

impl Mismatch {
    fn new(at: &str, expected: Option<&Value>, actual: Option<&Value>) -> Self {
        Mismatch {
            at: at.to_owned(),
            expected: expected.cloned(),
            actual: actual.cloned(),
            note: None,
        }
    }
}

/// How strictly objects are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The actual value contains the expected one: objects may have more keys, arrays must have
    /// the same length and each element contain the expected element.
    Subset,
    /// The values are equal (numbers by value: `1` equals `1.0`).
    Exact,
}

/// Compares `actual` with `expected`, returning every mismatch in document order.
pub fn compare(expected: &Value, actual: &Value, mode: Mode) -> Vec<Mismatch> {
    let mut out = Vec::new();
    walk(expected, actual, mode, &mut String::new(), &mut out);
    out
}

fn walk(expected: &Value, actual: &Value, mode: Mode, at: &mut String, out: &mut Vec<Mismatch>) {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (k, ev) in e {
                let len = at.len();
                at.push('/');
                at.push_str(&escape_pointer(k));
                match a.get(k) {
                    Some(av) => walk(ev, av, mode, at, out),
                    None => out.push(Mismatch::new(at, Some(ev), None)),
                }
                at.truncate(len);
            }
            if mode == Mode::Exact {
                for (k, av) in a {
                    if !e.contains_key(k) {
                        let p = format!("{at}/{}", escape_pointer(k));
                        out.push(Mismatch::new(&p, None, Some(av)));
                    }
                }
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            if e.len() != a.len() {
                let mut m = Mismatch::new(at, Some(expected), Some(actual));
                m.note = Some(format!(
                    "the list has {} items, the test expects {}",
                    a.len(),
                    e.len()
                ));
                out.push(m);
                return;
            }
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                let len = at.len();
                at.push_str(&format!("/{i}"));
                walk(ev, av, mode, at, out);
                at.truncate(len);
            }
        }
        (Value::Number(e), Value::Number(a)) => {
            if e != a && e.as_f64() != a.as_f64() {
                out.push(Mismatch::new(at, Some(expected), Some(actual)));
            }
        }
        (e, a) => {
            if e != a {
                out.push(Mismatch::new(at, Some(expected), Some(actual)));
            }
        }
    }
}

/// `~` and `/` escaped as RFC 6901 says.
pub fn escape_pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// Whether a header value matches the expected one: equal (ignoring ASCII case and surrounding
/// whitespace), or equal to the actual value's media type without its parameters
/// (`application/json` matches `application/json; charset=utf-8`).
pub fn header_matches(expected: &str, actual: &str) -> bool {
    let (e, a) = (expected.trim(), actual.trim());
    if e.eq_ignore_ascii_case(a) {
        return true;
    }
    !e.contains(';')
        && a.split(';')
            .next()
            .is_some_and(|essence| essence.trim().eq_ignore_ascii_case(e))
}

/// The text an expectation in an `xpath:` map stands for: strings as they are, numbers and
/// booleans written out (XML text is never typed), `null` for "no match".
pub fn expected_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// Checks `path -> expected text` selections against an XML document (read as data with
/// [`xml::to_json`]). The first match counts; its text is its own text (see [`xml::text_of`]).
/// An expected `null` means nothing may match. A path that is not valid is a mismatch saying so.
pub fn check_xpaths<'a>(
    doc: &Value,
    expectations: impl IntoIterator<Item = (&'a String, &'a Value)>,
) -> Vec<Mismatch> {
    let mut out = Vec::new();
    for (path, want) in expectations {
        let want = expected_text(want);
        let got = match xml::select(doc, path) {
            Ok(found) => found.first().map(|v| match xml::text_of(v) {
                Some(t) => t.to_owned(),
                // An element with children: show it as data, so the diff says what is there.
                None => v.to_string(),
            }),
            Err(e) => {
                let mut m = Mismatch::new(path, None, None);
                m.note = Some(format!("not a valid path: {e}"));
                out.push(m);
                continue;
            }
        };
        if want != got {
            out.push(Mismatch {
                at: path.clone(),
                expected: want.map(Value::String),
                actual: got.map(Value::String),
                note: None,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pointers(ms: &[Mismatch]) -> Vec<&str> {
        ms.iter().map(|m| m.at.as_str()).collect()
    }

    #[test]
    fn objects_may_have_more_keys_in_subset_mode() {
        let actual = json!({"found": true, "name": "SIA Zaļā Josla", "extra": 1});
        assert!(compare(&json!({"found": true}), &actual, Mode::Subset).is_empty());
        let ms = compare(&json!({"found": true}), &actual, Mode::Exact);
        assert_eq!(pointers(&ms), ["/name", "/extra"]);
        assert_eq!(ms[1].expected, None);
        assert_eq!(ms[1].actual, Some(json!(1)));
    }

    #[test]
    fn mismatches_point_at_the_place() {
        let expected = json!({"address": {"code": "100000001", "text": "Rīga"}, "name": "A"});
        let actual = json!({"address": {"code": "100000002"}, "name": "A"});
        let ms = compare(&expected, &actual, Mode::Subset);
        assert_eq!(pointers(&ms), ["/address/code", "/address/text"]);
        assert_eq!(ms[0].expected, Some(json!("100000001")));
        assert_eq!(ms[0].actual, Some(json!("100000002")));
        assert_eq!(ms[1].actual, None, "a missing key is reported as missing");
    }

    #[test]
    fn arrays_need_the_same_length_and_matching_elements() {
        let actual = json!({"errors": [{"pointer": "/regNo", "message": "x"}]});
        let ok = json!({"errors": [{"pointer": "/regNo"}]});
        assert!(compare(&ok, &actual, Mode::Subset).is_empty());
        let longer = json!({"errors": [{"pointer": "/regNo"}, {"pointer": "/purpose"}]});
        let ms = compare(&longer, &actual, Mode::Subset);
        assert_eq!(pointers(&ms), ["/errors"]);
        assert!(ms[0].note.as_deref().unwrap().contains("1 items"));
        let wrong = json!({"errors": [{"pointer": "/purpose"}]});
        assert_eq!(
            pointers(&compare(&wrong, &actual, Mode::Subset)),
            ["/errors/0/pointer"]
        );
    }

    #[test]
    fn numbers_compare_by_value_and_types_matter() {
        assert!(compare(&json!(1), &json!(1.0), Mode::Exact).is_empty());
        assert_eq!(compare(&json!("1"), &json!(1), Mode::Subset).len(), 1);
        assert_eq!(compare(&json!(null), &json!(false), Mode::Subset).len(), 1);
        assert_eq!(
            pointers(&compare(
                &json!({"a/b": 1}),
                &json!({"a/b": 2}),
                Mode::Subset
            )),
            ["/a~1b"]
        );
    }

    #[test]
    fn whole_value_mismatch_has_the_root_pointer() {
        let ms = compare(&json!({"a": 1}), &json!("text"), Mode::Subset);
        assert_eq!(pointers(&ms), [""]);
    }

    #[test]
    fn headers_match_case_insensitively_and_by_media_type() {
        assert!(header_matches(
            "application/json",
            "application/json; charset=utf-8"
        ));
        assert!(header_matches("Application/JSON", "application/json"));
        assert!(!header_matches(
            "application/json; charset=latin1",
            "application/json; charset=utf-8"
        ));
        assert!(!header_matches("text/xml", "application/xml"));
    }

    #[test]
    fn xpaths_select_text_in_xml_as_data() {
        let doc = xml::to_json(
            br#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><r:GetPersonResponse xmlns:r="urn:x"><r:Person code="7"><r:GivenName>Anna</r:GivenName></r:Person></r:GetPersonResponse></s:Body></s:Envelope>"#,
            &xml::Limits::default(),
        )
        .unwrap();
        let exp = [
            ("//GivenName".to_string(), json!("Anna")),
            ("//Person/@code".to_string(), json!(7)),
            ("//FamilyName".to_string(), json!(null)),
        ];
        assert!(check_xpaths(&doc, exp.iter().map(|(k, v)| (k, v))).is_empty());
        let wrong = [
            ("//GivenName".to_string(), json!("Ilze")),
            ("//Missing".to_string(), json!("x")),
            ("//Person[".to_string(), json!("x")),
        ];
        let ms = check_xpaths(&doc, wrong.iter().map(|(k, v)| (k, v)));
        assert_eq!(pointers(&ms), ["//GivenName", "//Missing", "//Person["]);
        assert_eq!(ms[0].actual, Some(json!("Anna")));
        assert_eq!(ms[1].actual, None);
        assert!(ms[2].note.as_deref().unwrap().contains("not a valid path"));
    }
}
