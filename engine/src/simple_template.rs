//! A fast path for the commonest templates: literal text, field expressions (`{{a.b.c}}`,
//! `{{{raw}}}`) and plain `{{#with a.b}}...{{/with}}` blocks, nothing else.
//!
//! Most templates of a route (request bodies, headers, paths, answers) only copy fields of the
//! message into text. Handlebars renders those through its general machinery (a render
//! context, helper lookups, a string per value); this renders them in one pass over the
//! compiled template into one buffer.
//!
//! It never decides anything Handlebars would decide differently. A template qualifies only
//! when Handlebars' own parse of it has nothing but those elements, and a one-word expression
//! (`{{name}}`) only when `name` is no helper (helpers take precedence over fields in
//! Handlebars). [`Simple::render`] gives up (returns `None`) on any value it does not render the
//! way Handlebars does (a missing field, null, an object, an array, a path through an array, a
//! `with` of anything but a non-empty object); the caller then renders with Handlebars, which
//! produces the output or the error. A property test holds the two to the same output.

use std::fmt::Write as _;

use handlebars::template::{Parameter, TemplateElement};
use handlebars::{Path, PathSeg, Template};
use serde_json::Value;

use crate::mapping::Format;

/// A template of text, value expressions and `with` blocks.
#[derive(Debug)]
pub(crate) struct Simple {
    parts: Vec<Part>,
    /// Bytes of literal text, to size the output.
    text_len: usize,
}

#[derive(Debug)]
enum Part {
    Text(String),
    /// A field, from the current object; `escape` is false for `{{{triple}}}` expressions.
    Value {
        path: Vec<String>,
        escape: bool,
    },
    /// `{{#with path}}...{{/with}}` (no `else`, no block parameter): the parts rendered with
    /// the object at `path` as the current object.
    With {
        path: Vec<String>,
        parts: Vec<Part>,
    },
}

impl Simple {
    /// The fast form of a compiled template, when it has one. `is_helper` says whether a
    /// one-word expression (`{{name}}`) names a helper, which Handlebars would call instead of
    /// reading the field.
    pub(crate) fn compile(t: &Template, is_helper: &dyn Fn(&str) -> bool) -> Option<Simple> {
        let mut text_len = 0;
        let parts = compile_parts(t, is_helper, &mut text_len)?;
        Some(Simple { parts, text_len })
    }

    /// Renders against `data` (the context's root), or `None` where Handlebars must decide.
    pub(crate) fn render(&self, data: &Value, format: Format) -> Option<String> {
        let mut out = String::with_capacity(self.text_len + 16 * self.parts.len());
        render_parts(&self.parts, data, format, &mut out)?;
        Some(out)
    }
}

fn compile_parts(
    t: &Template,
    is_helper: &dyn Fn(&str) -> bool,
    text_len: &mut usize,
) -> Option<Vec<Part>> {
    let mut parts = Vec::with_capacity(t.elements.len());
    for e in &t.elements {
        match e {
            TemplateElement::RawString(s) => {
                *text_len += s.len();
                parts.push(Part::Text(s.clone()));
            }
            TemplateElement::Comment(_) => {}
            TemplateElement::Expression(ht) | TemplateElement::HtmlExpression(ht) => {
                let name_only = !ht.block
                    && ht.params.is_empty()
                    && ht.hash.is_empty()
                    && ht.template.is_none()
                    && ht.inverse.is_none()
                    && ht.block_param.is_none();
                if !name_only {
                    return None;
                }
                let (path, raw) = field_path(&ht.name)?;
                // A dotted path is never a helper's name.
                if path.len() == 1 && is_helper(raw) {
                    return None;
                }
                parts.push(Part::Value {
                    path,
                    escape: matches!(e, TemplateElement::Expression(_)),
                });
            }
            TemplateElement::HelperBlock(ht) => {
                let plain_with = matches!(&ht.name, Parameter::Name(n) if n == "with")
                    && ht.block
                    && ht.params.len() == 1
                    && ht.hash.is_empty()
                    && ht.inverse.is_none()
                    && ht.block_param.is_none();
                if !plain_with {
                    return None;
                }
                let (path, _) = field_path(&ht.params[0])?;
                let inner = match &ht.template {
                    Some(t) => compile_parts(t, is_helper, text_len)?,
                    None => Vec::new(),
                };
                parts.push(Part::With { path, parts: inner });
            }
            _ => return None,
        }
    }
    Some(parts)
}

/// The segments of a plain field path (`a.b.[c d]`) and its text; none for `this`, `..`,
/// `@root`, locals.
fn field_path(p: &Parameter) -> Option<(Vec<String>, &str)> {
    let Parameter::Path(Path::Relative((segs, raw))) = p else {
        return None;
    };
    if segs.is_empty() {
        return None;
    }
    let path = segs
        .iter()
        .map(|s| match s {
            PathSeg::Named(n) => Some(n.clone()),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    Some((path, raw))
}

fn lookup<'v>(mut v: &'v Value, path: &[String]) -> Option<&'v Value> {
    for seg in path {
        v = v.as_object()?.get(seg)?;
    }
    Some(v)
}

fn render_parts(parts: &[Part], here: &Value, format: Format, out: &mut String) -> Option<()> {
    for p in parts {
        match p {
            Part::Text(s) => out.push_str(s),
            Part::Value { path, escape } => {
                let v = lookup(here, path)?;
                match v {
                    Value::String(s) if *escape => escape_into(format, s, out),
                    Value::String(s) => out.push_str(s),
                    Value::Number(_) | Value::Bool(_) => {
                        let mut s = String::new();
                        // Writing to a String cannot fail.
                        let _ = write!(s, "{v}");
                        if *escape {
                            escape_into(format, &s, out);
                        } else {
                            out.push_str(&s);
                        }
                    }
                    Value::Null | Value::Array(_) | Value::Object(_) => return None,
                }
            }
            Part::With { path, parts } => match lookup(here, path)? {
                // A non-empty object is truthy: the block renders with it as `this`.
                v @ Value::Object(m) if !m.is_empty() => render_parts(parts, v, format, out)?,
                // Anything else (the `else` branch, a strict-mode error, a scalar as `this`).
                _ => return None,
            },
        }
    }
    Some(())
}

/// Appends `s` escaped as the format's registry escapes it (see `mapping::escape_*`).
fn escape_into(format: Format, s: &str, out: &mut String) {
    match format {
        Format::Json => crate::mapping::escape_json_into(s, out),
        Format::Xml => crate::mapping::escape_xml_into(s, out),
        Format::Text => out.push_str(s),
        Format::Url => crate::mapping::escape_url_into(s, out),
    }
}

#[cfg(test)]
mod tests {
    use handlebars::Context;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use crate::mapping::{Format, Mappings};

    const FORMATS: [Format; 4] = [Format::Json, Format::Xml, Format::Text, Format::Url];

    /// Renders through `Mappings` (fast path first) and through Handlebars alone.
    fn both(
        format: Format,
        src: &str,
        data: &Value,
    ) -> (Result<String, String>, Result<String, String>) {
        let mut m = Mappings::new();
        let t = m.add(format, "t", src).expect("the template compiles");
        let ctx = Context::from(data.clone());
        let fast = m.render_string(&t, &ctx).map_err(|e| e.message);
        let slow = m
            .reg(format)
            .render_with_context("t", &ctx)
            .map_err(|e| crate::mapping::render_error_text("t", &e));
        (fast, slow)
    }

    #[test]
    fn text_and_value_templates_take_the_fast_path() {
        let compile = |src: &str| {
            super::Simple::compile(&handlebars::Template::compile(src).unwrap(), &|n| {
                n == "now"
            })
        };
        let s = compile("{\"id\": \"{{body.id}}\", \"n\": {{{body.n}}}{{! a comment }}}").unwrap();
        let data = json!({"body": {"id": "a\"b", "n": 3}});
        assert_eq!(
            s.render(&data, Format::Json).as_deref(),
            Some("{\"id\": \"a\\\"b\", \"n\": 3}")
        );
        assert_eq!(
            compile("/cases")
                .unwrap()
                .render(&data, Format::Url)
                .as_deref(),
            Some("/cases")
        );
        // Anything else is Handlebars' to render.
        for src in [
            "{{json body}}",
            "{{#if body.id}}x{{/if}}",
            "{{../body}}",
            "{{@root.body}}",
            "{{> part}}",
            "{{this}}",
            "{{lookup body \"id\"}}",
        ] {
            assert!(compile(src).is_none(), "{src} must not take the fast path");
        }
        // A one-word expression may name a helper (`{{now}}`): Handlebars decides.
        assert!(compile("{{now}}").is_none());
        // `with` blocks render with their object as the current one.
        let w = compile("{{#with body.p}}<{{name}}|{{a.b}}>{{/with}}").unwrap();
        let p = json!({"body": {"p": {"name": "N", "a": {"b": 1}}}});
        assert_eq!(w.render(&p, Format::Xml).as_deref(), Some("<N|1>"));
        // An empty object, a scalar or a missing one: Handlebars' `else`, error or scalar context.
        for v in [json!({}), json!("s"), json!(null)] {
            assert_eq!(w.render(&json!({"body": {"p": v}}), Format::Xml), None);
        }
        assert!(compile("{{#with body.p}}x{{else}}y{{/with}}").is_none());
        assert!(compile("{{#with body.p as |q|}}{{q.name}}{{/with}}").is_none());
        // A one-word field that holds an object is Handlebars' to render.
        let body = compile("{{body}}").expect("body is no helper");
        assert_eq!(body.render(&data, Format::Text), None);
        // Values Handlebars renders its own way are left to it.
        let s = compile("{{body.v}}").unwrap();
        for v in [json!(null), json!([1, 2]), json!({"a": 1})] {
            assert_eq!(s.render(&json!({"body": {"v": v}}), Format::Text), None);
        }
        assert_eq!(s.render(&json!({"body": {}}), Format::Text), None);
        assert_eq!(s.render(&json!({"body": [1]}), Format::Text), None);
    }

    #[test]
    fn one_word_expressions_that_name_helpers_are_left_to_handlebars() {
        let m = Mappings::new();
        for format in FORMATS {
            let reg = m.reg(format);
            for helper in ["upper", "now", "json", "len", "lookup"] {
                assert!(crate::mapping::names_helper(reg, helper), "{helper}");
            }
            for field in ["GivenName", "body", "[upper]", "uppercase"] {
                assert!(!crate::mapping::names_helper(reg, field), "{field}");
            }
        }
    }

    #[test]
    fn a_missing_field_is_still_handlebars_error() {
        for format in FORMATS {
            let (fast, slow) = both(format, "x {{body.gone}} y", &json!({"body": {}}));
            let err = fast.expect_err("strict mode");
            assert!(err.contains("'body.gone' is missing"), "{err}");
            assert_eq!(Err(err), slow);
        }
    }

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            "[a-z\"'<>&\\\\/ \n\t\u{1}\u{2028}ā%+?#]{0,12}".prop_map(Value::String),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| json!(f)),
            any::<bool>().prop_map(Value::Bool),
            Just(Value::Null),
        ]
    }

    fn data() -> impl Strategy<Value = Value> {
        let value = leaf().prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::btree_map("[abc0]", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        });
        prop::collection::btree_map("[abc]", value, 0..4)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
    }

    /// Pieces of templates: text (with characters every format escapes), value expressions on
    /// paths that may or may not exist, and some Handlebars constructs the fast path leaves alone.
    fn piece() -> impl Strategy<Value = String> {
        // The first segment a name (`0.a` would read as a number), then names or indexes.
        let path = ("[abc]", prop::collection::vec("[abc0]", 0..3)).prop_map(|(first, rest)| {
            std::iter::once(first)
                .chain(rest)
                .collect::<Vec<_>>()
                .join(".")
        });
        prop_oneof![
            "[a-z \"'<>&\n{}:,\\[\\]]{0,8}",
            path.clone().prop_map(|p| format!("{{{{{p}}}}}")),
            path.clone().prop_map(|p| format!("{{{{{{{p}}}}}}}")),
            path.clone().prop_map(|p| format!("{{{{this.{p}}}}}")),
            path.clone().prop_map(|p| format!("{{{{~ {p} ~}}}}")),
            path.clone()
                .prop_map(|p| format!("{{{{#if {p}}}}}y{{{{/if}}}}")),
            path.clone()
                .prop_map(|p| format!("{{{{default {p} \"d\"}}}}")),
            "[abc]".prop_map(|p| format!("{{{{{p}}}}}")),
            (path.clone(), path.clone(), "[abc]").prop_map(|(w, p, q)| format!(
                "{{{{#with {w}}}}}<{{{{{p}}}}}|{{{{{q}}}}}>{{{{/with}}}}"
            )),
            (path.clone(), path).prop_map(|(w, p)| format!(
                "{{{{#with {w}}}}}{{{{{p}}}}}{{{{else}}}}none{{{{/with}}}}"
            )),
            Just("{{! note }}".to_string()),
        ]
    }

    #[test]
    fn the_fast_path_renders_what_handlebars_renders() {
        use proptest::test_runner::{Config, TestRunner};
        use std::cell::Cell;
        let fast_rendered = Cell::new(0u32);
        let mut runner = TestRunner::new(Config::with_cases(1024));
        let cases = (
            prop::collection::vec(piece(), 0..6),
            data(),
            prop::sample::select(FORMATS.to_vec()),
        );
        let result = runner.run(&cases, |(pieces, data, format)| {
            let src = pieces.concat();
            // Text pieces next to tags can make `{{{` or `}}}` that do not parse: not a template.
            let Ok(t) = handlebars::Template::compile(&src) else {
                return Err(TestCaseError::reject("not a template"));
            };
            let (fast, slow) = both(format, &src, &data);
            prop_assert_eq!(fast, slow, "template {:?}", src);
            if super::Simple::compile(&t, &|n| {
                crate::mapping::names_helper(Mappings::new().reg(format), n)
            })
            .is_some_and(|s| s.render(&data, format).is_some())
            {
                fast_rendered.set(fast_rendered.get() + 1);
            }
            Ok(())
        });
        if let Err(e) = result {
            panic!("{e}");
        }
        // The cases must exercise the fast path, not only the fallback.
        assert!(
            fast_rendered.get() >= 100,
            "only {} of 1024 cases rendered on the fast path",
            fast_rendered.get()
        );
    }
}
