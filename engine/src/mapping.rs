//! Mappings: Handlebars templates from the `mappings/` folder, rendered in strict mode with the
//! escaping their output format needs.
//!
//! Why one registry per format: Handlebars has one escape function per registry, and the escaping
//! that is right for JSON (string escapes) is wrong for XML (entities) and for URL paths
//! (percent-encoding). The format comes from the file name: `*.json.hbs`, `*.xml.hbs`, anything
//! else is text. Strict mode makes a missing field an error instead of an empty string.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

use handlebars::{
    Context, Handlebars, Helper, HelperDef, HelperResult, JsonRender, Output, RenderContext,
    RenderError, RenderErrorReason, ScopedJson, handlebars_helper,
};
use serde_json::Value;
use tilts_adapters::ident;

use crate::simple_template::Simple;

/// Output format of a template, which decides its escaping and how its output is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// Escapes `{{x}}` as JSON string content; the output must parse as JSON.
    Json,
    /// Escapes XML special characters.
    Xml,
    /// No escaping.
    Text,
    /// Percent-encodes values (for paths and query strings written inline in routes.yaml).
    Url,
}

impl Format {
    /// The format of a template file, from its name.
    pub fn of_file(name: &str) -> Format {
        if name.ends_with(".json.hbs") || name.ends_with(".json") {
            Format::Json
        } else if name.ends_with(".xml.hbs") || name.ends_with(".xml") {
            Format::Xml
        } else {
            Format::Text
        }
    }

    /// The content type of this format's output.
    pub fn content_type(&self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Xml => "application/xml; charset=utf-8",
            Format::Text | Format::Url => "text/plain; charset=utf-8",
        }
    }
}

/// A compiled template: its registry and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TemplateRef {
    pub format: Format,
    pub name: String,
}

/// A rendered template.
#[derive(Debug, Clone)]
pub enum Rendered {
    /// Output of a JSON template, parsed.
    Json(Value),
    /// Output of any other template.
    Text(String),
}

impl Rendered {
    /// The rendered output as JSON data (text becomes a JSON string).
    pub fn into_value(self) -> Value {
        match self {
            Rendered::Json(v) => v,
            Rendered::Text(s) => Value::String(s),
        }
    }
}

/// Why a render failed. Messages name the template and field, never data values.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct MappingError {
    pub message: String,
}

/// All compiled templates.
pub struct Mappings {
    json: Handlebars<'static>,
    xml: Handlebars<'static>,
    text: Handlebars<'static>,
    url: Handlebars<'static>,
    /// The templates that render without Handlebars (see [`crate::simple_template`]), per
    /// format in the order json, xml, text, url.
    simple: [HashMap<String, Simple>; 4],
}

impl std::fmt::Debug for Mappings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mappings")
            .field("json", &self.json.get_templates().len())
            .field("xml", &self.xml.get_templates().len())
            .field("text", &self.text.get_templates().len())
            .field("url", &self.url.get_templates().len())
            .finish()
    }
}

impl Default for Mappings {
    fn default() -> Self {
        Self::new()
    }
}

/// A template compile error with its position inside the template.
#[derive(Debug, Clone)]
pub struct TemplateCompileError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl Mappings {
    pub fn new() -> Self {
        Mappings {
            json: registry(escape_json),
            xml: registry(escape_xml),
            text: registry(|s| s.to_string()),
            url: registry(escape_url),
            simple: Default::default(),
        }
    }

    fn simple(&self, t: &TemplateRef) -> Option<&Simple> {
        self.simple[t.format as usize].get(&t.name)
    }

    pub(crate) fn reg(&self, f: Format) -> &Handlebars<'static> {
        match f {
            Format::Json => &self.json,
            Format::Xml => &self.xml,
            Format::Text => &self.text,
            Format::Url => &self.url,
        }
    }

    fn reg_mut(&mut self, f: Format) -> &mut Handlebars<'static> {
        match f {
            Format::Json => &mut self.json,
            Format::Xml => &mut self.xml,
            Format::Text => &mut self.text,
            Format::Url => &mut self.url,
        }
    }

    /// Whether a template of that name and format is compiled already.
    pub fn has(&self, t: &TemplateRef) -> bool {
        self.reg(t.format).has_template(&t.name)
    }

    /// Compiles `source` under `name`.
    pub fn add(
        &mut self,
        format: Format,
        name: &str,
        source: &str,
    ) -> Result<TemplateRef, TemplateCompileError> {
        self.simple[format as usize].remove(name);
        self.reg_mut(format)
            .register_template_string(name, source)
            .map_err(|e| {
                let (line, column) = e.pos().unwrap_or((1, 1));
                let (line, column) = unclosed_tag(source, line, column).unwrap_or((line, column));
                TemplateCompileError {
                    line,
                    column,
                    message: template_reason(&e),
                }
            })?;
        let reg = self.reg(format);
        if let Some(simple) = reg
            .get_template(name)
            .and_then(|t| Simple::compile(t, &|n| names_helper(reg, n)))
        {
            self.simple[format as usize].insert(name.to_string(), simple);
        }
        Ok(TemplateRef {
            format,
            name: name.to_string(),
        })
    }

    /// Compiles a template file (format from its name).
    pub fn add_file(
        &mut self,
        name: &str,
        path: &Path,
    ) -> Result<TemplateRef, Result<TemplateCompileError, std::io::Error>> {
        let source = std::fs::read_to_string(path).map_err(Err)?;
        self.add(Format::of_file(name), name, &source).map_err(Ok)
    }

    /// Renders a template against the exchange's context.
    pub fn render(&self, t: &TemplateRef, ctx: &Context) -> Result<Rendered, MappingError> {
        let text = self.render_string(t, ctx)?;
        match t.format {
            Format::Json => serde_json::from_str(&text)
                .map(Rendered::Json)
                .map_err(|e| invalid_json(t, &e)),
            _ => Ok(Rendered::Text(text)),
        }
    }

    /// Renders a template as a message body: JSON output checked and written compactly (as
    /// [`Mappings::render`] then serializing would, without building the data in between),
    /// anything else as it is.
    pub fn render_body(&self, t: &TemplateRef, ctx: &Context) -> Result<String, MappingError> {
        let text = self.render_string(t, ctx)?;
        match t.format {
            Format::Json => {
                serde_json::from_str::<serde::de::IgnoredAny>(&text)
                    .map_err(|e| invalid_json(t, &e))?;
                Ok(compact_json(text))
            }
            _ => Ok(text),
        }
    }

    /// Renders a template to text without interpreting the output.
    pub fn render_string(&self, t: &TemplateRef, ctx: &Context) -> Result<String, MappingError> {
        if let Some(out) = self.simple(t).and_then(|s| s.render(ctx.data(), t.format)) {
            return Ok(out);
        }
        self.reg(t.format)
            .render_with_context(&t.name, ctx)
            .map_err(|e| MappingError {
                message: render_error_text(&t.name, &e),
            })
    }
}

fn invalid_json(t: &TemplateRef, e: &serde_json::Error) -> MappingError {
    MappingError {
        message: format!(
            "template {} did not produce valid JSON (output line {}, column {}: {}); use {{{{json value}}}} to embed non-string values",
            t.name,
            e.line(),
            e.column(),
            json_error_class(e)
        ),
    }
}

/// Valid JSON text without the whitespace between tokens.
fn compact_json(text: String) -> String {
    let ws = |b: u8| matches!(b, b' ' | b'\n' | b'\r' | b'\t');
    if !text.bytes().any(ws) {
        return text;
    }
    let mut out = Vec::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for b in text.bytes() {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
            out.push(b);
        } else if !ws(b) {
            out.push(b);
        }
    }
    // Only ASCII whitespace outside strings was dropped: still UTF-8.
    String::from_utf8(out).unwrap_or(text)
}

/// Whether `{{expr}}` calls a helper in `reg` rather than reading the field of that name:
/// rendered against an object whose field of that name holds a marker, a field read gives
/// the marker back.
pub(crate) fn names_helper(reg: &Handlebars<'_>, expr: &str) -> bool {
    const MARK: &str = "tiltsfieldprobe";
    let Ok(path) = handlebars::Path::parse(expr) else {
        return true;
    };
    let field = match &path {
        handlebars::Path::Relative((segs, _)) => match segs.as_slice() {
            [handlebars::PathSeg::Named(n)] => n.clone(),
            _ => return true,
        },
        _ => return true,
    };
    let data = serde_json::json!({ field: MARK });
    reg.render_template(&format!("{{{{{expr}}}}}"), &data)
        .map_or(true, |out| out != MARK)
}

/// serde_json's error text without the part that quotes input.
fn json_error_class(e: &serde_json::Error) -> &'static str {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax => "syntax error",
        Category::Eof => "output ended early",
        Category::Data => "invalid data",
        Category::Io => "i/o error",
    }
}

/// The parser reports an unclosed tag where it gave up (often past the end of the line); the
/// integrator needs the `{{` that was never closed. Returns the last `{{` on the reported line
/// before the reported column with no `}}` after it on that line, as (line, column), 1-based.
fn unclosed_tag(source: &str, line: usize, column: usize) -> Option<(usize, usize)> {
    let text = source.lines().nth(line.checked_sub(1)?)?;
    let before: String = text.chars().take(column.saturating_sub(1)).collect();
    let open = before.rfind("{{")?;
    if text[open..].contains("}}") {
        return None;
    }
    Some((line, before[..open].chars().count() + 1))
}

fn template_reason(e: &handlebars::TemplateError) -> String {
    // TemplateError's Display repeats the whole template segment; its reason alone is enough.
    let reason = e.reason().to_string();
    let first = reason.lines().next().unwrap_or(&reason).trim();
    // The parser names its internal grammar rules ("expected trailing_tilde_to_omit_whitespace");
    // a person needs to hear what is malformed.
    if first.contains("expected") && first.contains('_') {
        "a tag is not closed or is malformed: every `{{` needs its `}}` (and `{{#x}}` its `{{/x}}`)"
            .to_string()
    } else {
        first.to_string()
    }
}

pub(crate) fn render_error_text(name: &str, e: &RenderError) -> String {
    let at = match (e.line_no, e.column_no) {
        (Some(l), Some(c)) => format!(" at {l}:{c}"),
        _ => String::new(),
    };
    let why = match e.reason() {
        RenderErrorReason::MissingVariable(Some(path)) => format!(
            "the field '{path}' is missing from the message; mark it required in the schema, or write {{{{default {path} \"...\"}}}} or {{{{#if {path}}}}}...{{{{/if}}}}"
        ),
        RenderErrorReason::MissingVariable(None) => "a field is missing from the message".into(),
        RenderErrorReason::HelperNotFound(h) => {
            format!("unknown helper '{h}'; helpers: {}", HELPERS.join(", "))
        }
        other => tilts_adapters::redact::redact(&other.to_string()).into_owned(),
    };
    format!("template {name}{at}: {why}")
}

/// The helpers registered besides Handlebars' built-ins (if, unless, each, with, lookup, eq,
/// ne, gt, gte, lt, lte, and, or, not, len).
pub const HELPERS: &[&str] = &[
    "json",
    "default",
    "now",
    "date",
    "mask_pk",
    "valid_pk",
    "valid_regno",
    "upper",
    "lower",
    "trim",
    "concat",
];

fn registry(escape: fn(&str) -> String) -> Handlebars<'static> {
    let mut h = Handlebars::new();
    h.set_strict_mode(true);
    h.set_dev_mode(false);
    h.register_escape_fn(escape);
    h.register_helper("json", Box::new(JsonHelper));
    h.register_helper("default", Box::new(DefaultHelper));
    h.register_helper("now", Box::new(now));
    h.register_helper("date", Box::new(date));
    h.register_helper("mask_pk", Box::new(mask_pk));
    h.register_helper("valid_pk", Box::new(valid_pk));
    h.register_helper("valid_regno", Box::new(valid_regno));
    h.register_helper("upper", Box::new(upper));
    h.register_helper("lower", Box::new(lower));
    h.register_helper("trim", Box::new(trim));
    h.register_helper("concat", Box::new(ConcatHelper));
    h
}

/// `{{json value}}`: the value as JSON text, unescaped (for embedding objects, numbers, null).
struct JsonHelper;

impl HelperDef for JsonHelper {
    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        r: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> HelperResult {
        let p = h
            .param(0)
            .ok_or(RenderErrorReason::ParamNotFoundForIndex("json", 0))?;
        if p.is_value_missing() && r.strict_mode() {
            return Err(RenderErrorReason::MissingVariable(p.relative_path().cloned()).into());
        }
        let text = serde_json::to_string(p.value())
            .map_err(|e| RenderErrorReason::Other(format!("json: {e}")))?;
        out.write(&text)?;
        Ok(())
    }
}

/// `{{default value fallback}}`: `value` unless it is missing or null.
struct DefaultHelper;

impl HelperDef for DefaultHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let v = h
            .param(0)
            .ok_or(RenderErrorReason::ParamNotFoundForIndex("default", 0))?;
        let fallback = h
            .param(1)
            .ok_or(RenderErrorReason::ParamNotFoundForIndex("default", 1))?;
        if v.is_value_missing() || v.value().is_null() {
            Ok(ScopedJson::Derived(fallback.value().clone()))
        } else {
            Ok(ScopedJson::Derived(v.value().clone()))
        }
    }
}

/// `{{concat a b ...}}`: the parameters' text joined.
struct ConcatHelper;

impl HelperDef for ConcatHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        r: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let mut s = String::new();
        for p in h.params() {
            if p.is_value_missing() && r.strict_mode() {
                return Err(RenderErrorReason::MissingVariable(p.relative_path().cloned()).into());
            }
            s.push_str(&p.value().render());
        }
        Ok(ScopedJson::Derived(Value::String(s)))
    }
}

handlebars_helper!(now: |*args| {
    let fmt = args.first().and_then(|v| v.as_str());
    let t = chrono::Utc::now();
    match fmt {
        Some(f) => t.format(f).to_string(),
        None => t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    }
});

handlebars_helper!(date: |value: str, fmt: str| {
    format_date(value, fmt).unwrap_or_default()
});

/// Reformats an RFC 3339 timestamp or a `YYYY-MM-DD` date with a strftime format; `None` when
/// the input is neither.
pub fn format_date(value: &str, fmt: &str) -> Option<String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(value) {
        return Some(t.format(fmt).to_string());
    }
    chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d")
        .ok()
        .map(|d| d.format(fmt).to_string())
}

handlebars_helper!(mask_pk: |value: str| ident::mask_personal_code(value));
handlebars_helper!(valid_pk: |value: str| ident::PersonalCode::parse(value).is_ok());
handlebars_helper!(valid_regno: |value: str| ident::is_valid_reg_no(value));
handlebars_helper!(upper: |value: str| value.to_uppercase());
handlebars_helper!(lower: |value: str| value.to_lowercase());
handlebars_helper!(trim: |value: str| value.trim().to_string());

/// Escapes text for the inside of a JSON string literal.
pub fn escape_json(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    escape_json_into(s, &mut out);
    out
}

/// [`escape_json`] appending to `out`.
pub fn escape_json_into(s: &str, out: &mut String) {
    escape_runs(
        s,
        out,
        |c| matches!(c, '"' | '\\' | '\u{2028}' | '\u{2029}') || (c as u32) < 0x20,
        |c, out| match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
        },
    );
}

/// Copies `s` to `out`, the runs of characters that need no escape at once and the others
/// through `escape`.
fn escape_runs(
    s: &str,
    out: &mut String,
    needs_escape: impl Fn(char) -> bool,
    escape: impl Fn(char, &mut String),
) {
    let mut start = 0;
    for (i, c) in s.char_indices() {
        if needs_escape(c) {
            out.push_str(&s[start..i]);
            escape(c, out);
            start = i + c.len_utf8();
        }
    }
    out.push_str(&s[start..]);
}

/// Escapes text for XML character data and attribute values.
pub fn escape_xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    escape_xml_into(s, &mut out);
    out
}

/// [`escape_xml`] appending to `out`.
pub fn escape_xml_into(s: &str, out: &mut String) {
    escape_runs(
        s,
        out,
        |c| {
            matches!(c, '&' | '<' | '>' | '"' | '\'')
                || ((c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r'))
        },
        |c, out| match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Characters XML 1.0 does not allow at all are dropped rather than sent.
            _ => {}
        },
    );
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn escape_url(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    escape_url_into(s, &mut out);
    out
}

/// [`escape_url`] appending to `out`.
pub fn escape_url_into(s: &str, out: &mut String) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_unclosed_tag_is_located_at_its_opening() {
        // Counted in characters: 'ā' is one column.
        assert_eq!(unclosed_tag("x\n\"ā\": {{/if}", 2, 14), Some((2, 6)));
        // The tag before the column is closed: nothing better to say.
        assert_eq!(unclosed_tag("{{a}} b", 1, 7), None);
        assert_eq!(unclosed_tag("one line", 3, 1), None);
    }

    fn render(format: Format, src: &str, data: Value) -> Result<Rendered, MappingError> {
        let mut m = Mappings::new();
        let t = m.add(format, "t", src).unwrap();
        m.render(&t, &Context::from(data))
    }

    #[test]
    fn json_escaping_keeps_output_valid() {
        let out = render(
            Format::Json,
            r#"{"name": "{{body.name}}", "n": {{json body.n}}, "o": {{json body.o}}}"#,
            json!({"body": {"name": "A \"quoted\" \\ name\n<&>", "n": 3, "o": {"a": [1, null]}}}),
        )
        .unwrap()
        .into_value();
        assert_eq!(out["name"], "A \"quoted\" \\ name\n<&>");
        assert_eq!(out["n"], 3);
        assert_eq!(out["o"], json!({"a": [1, null]}));
    }

    #[test]
    fn a_json_body_is_checked_and_written_compactly() {
        let mut m = Mappings::new();
        let src = "{\n  \"a\": \"{{body.s}}\",\n  \"n\": [ 1, 2.5e3 ],\t\"o\": { }\r\n}\n";
        let t = m.add(Format::Json, "t", src).unwrap();
        let ctx = Context::from(json!({"body": {"s": "x  \"y\" \\ \n z"}}));
        let body = m.render_body(&t, &ctx).unwrap();
        // Whitespace inside strings (and after escaped quotes and backslashes) stays.
        assert_eq!(body, r#"{"a":"x  \"y\" \\ \n z","n":[1,2.5e3],"o":{}}"#);
        let parsed: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(parsed, m.render(&t, &ctx).unwrap().into_value());
        // Output that is not JSON is the same error as for `render`.
        let bad = m.add(Format::Json, "bad", "{\"a\": {{body.s}}}").unwrap();
        let err = m.render_body(&bad, &ctx).unwrap_err().message;
        assert!(err.contains("did not produce valid JSON"), "{err}");
        assert!(!err.contains("x  "), "the error quotes no data: {err}");
        assert_eq!(err, m.render(&bad, &ctx).unwrap_err().message);
    }

    proptest::proptest! {
        #[test]
        fn escaped_text_reads_back_as_the_original(s in "(?s).{0,40}") {
            // JSON: inside quotes, any text parses back to itself.
            let json: String = serde_json::from_str(&format!("\"{}\"", escape_json(&s))).unwrap();
            proptest::prop_assert_eq!(&json, &s);
            // XML: the entities read back; characters XML cannot carry are dropped.
            let xml = escape_xml(&s);
            proptest::prop_assert!(!xml.contains(['<', '>', '"', '\'']));
            let back = xml
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&apos;", "'")
                .replace("&amp;", "&");
            let allowed: String = s
                .chars()
                .filter(|c| (*c as u32) >= 0x20 || matches!(c, '\t' | '\n' | '\r'))
                .collect();
            proptest::prop_assert_eq!(back, allowed);
        }
    }

    #[test]
    fn xml_escaping() {
        let out = render(
            Format::Xml,
            "<n>{{body.name}}</n>",
            json!({"body": {"name": "<a&b>\"'"}}),
        )
        .unwrap()
        .into_value();
        assert_eq!(out, "<n>&lt;a&amp;b&gt;&quot;&apos;</n>");
    }

    #[test]
    fn url_escaping() {
        let out = render(
            Format::Url,
            "/companies/{{body.q}}",
            json!({"body": {"q": "a b/c?"}}),
        )
        .unwrap()
        .into_value();
        assert_eq!(out, "/companies/a%20b%2Fc%3F");
    }

    #[test]
    fn missing_field_is_an_error_naming_the_field_not_an_empty_string() {
        let err = render(
            Format::Json,
            r#"{"a": "{{body.nope}}"}"#,
            json!({"body": {}}),
        )
        .unwrap_err();
        assert!(err.message.contains("body.nope"), "{}", err.message);
        assert!(err.message.contains("default"), "{}", err.message);
    }

    #[test]
    fn default_and_if_handle_optional_fields() {
        let out = render(
            Format::Json,
            r#"{"a": "{{default body.nope "n/a"}}", "b": {{#if body.x}}1{{else}}2{{/if}}}"#,
            json!({"body": {}}),
        )
        .unwrap()
        .into_value();
        assert_eq!(out, json!({"a": "n/a", "b": 2}));
    }

    #[test]
    fn identifier_helpers() {
        let out = render(
            Format::Json,
            r#"{"m": "{{mask_pk body.pk}}", "v": {{valid_pk body.pk}}, "bad": {{valid_pk body.bad}}, "r": {{valid_regno body.reg}}, "u": "{{upper body.s}}"}"#,
            json!({"body": {"pk": "010190-12349", "bad": "010190-12340", "reg": "40003521600", "s": "rīga"}}),
        )
        .unwrap()
        .into_value();
        assert_eq!(
            out,
            json!({"m": "010190-*****", "v": true, "bad": false, "r": true, "u": "RĪGA"})
        );
    }

    #[test]
    fn dates() {
        assert_eq!(format_date("2026-11-28", "%d.%m.%Y").unwrap(), "28.11.2026");
        assert_eq!(
            format_date("2026-11-28T10:00:00+02:00", "%Y-%m-%d %H:%M").unwrap(),
            "2026-11-28 10:00"
        );
        assert!(format_date("yesterday", "%Y").is_none());
        let out = render(Format::Text, "{{now \"%Y\"}}", json!({}))
            .unwrap()
            .into_value();
        assert_eq!(out.as_str().unwrap().len(), 4);
    }

    #[test]
    fn invalid_json_output_is_reported_without_content() {
        let err = render(
            Format::Json,
            r#"{"a": {{body.s}}}"#,
            json!({"body": {"s": "secret-010190-12349"}}),
        )
        .unwrap_err();
        assert!(
            err.message.contains("did not produce valid JSON"),
            "{}",
            err.message
        );
        assert!(!err.message.contains("010190"), "{}", err.message);
    }

    #[test]
    fn compile_errors_have_positions() {
        let mut m = Mappings::new();
        let e = m
            .add(Format::Json, "t", "{\n  \"a\": {{#if x}}\n}")
            .unwrap_err();
        assert!(e.line >= 2, "{e:?}");
    }
}
