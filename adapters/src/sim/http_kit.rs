//! The request and answer helpers the HTTP simulators share: bearer tokens, JSON bodies and
//! their field errors (422 problem+json naming each field), replay of idempotent answers on
//! `X-Tilts-Message-Id`, and the pieces of an OAuth2 client-credentials token endpoint.
//!
//! Every helper keeps the contract its simulators document; where two simulators differ on
//! purpose (e.g. which bearer schemes they accept), the helper takes the difference as a
//! parameter or comes in two variants, each named for what it does.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use axum::extract::Form;
use axum::extract::rejection::FormRejection;
use axum::response::{IntoResponse, Response};
use chrono::{SecondsFormat, Utc};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::server::{problem, problem_with};
use crate::ident::{is_valid_reg_no, reg_no_check_error};

/// Longest accepted `X-Tilts-Message-Id`.
const MAX_MESSAGE_ID: usize = 200;
/// How many idempotent answers are remembered; older ones are forgotten so a long demo does
/// not grow without bound.
const MAX_REPLAYS: usize = 100_000;

/// Locks a simulator's in-memory data, recovering it from a poisoned lock: it is plain data,
/// and a panic elsewhere cannot leave it half-updated in a way that matters.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The current time, RFC 3339 in UTC with seconds.
pub(super) fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A JSON answer.
pub(super) fn json_response(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// `Some(401 answer)` unless the request carries `Authorization: Bearer <expected>`.
pub(super) fn require_bearer(headers: &HeaderMap, expected: &str, realm: &str) -> Option<Response> {
    let token = bearer(headers);
    if token.is_some_and(|t| t == expected) {
        return None;
    }
    Some(unauthorized(realm))
}

/// The bearer token of the request, if it has one.
pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The token after a literal `Bearer ` or `bearer ` prefix, trimmed (possibly empty), for the
/// simulators that accept only those two spellings of the scheme (social services, DAGR).
pub(super) fn prefixed_bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
}

/// The 401 answer for a missing or wrong bearer token; it never echoes the token.
pub(super) fn unauthorized(realm: &str) -> Response {
    unauthorized_with(
        realm,
        "Send a valid token as Authorization: Bearer <token>; it is missing, malformed, expired or unknown.",
    )
}

/// The 401 answer for a bad bearer token with the simulator's own `detail`, and
/// `WWW-Authenticate: Bearer realm="<realm>", error="invalid_token"`.
pub(super) fn unauthorized_with(realm: &str, detail: &str) -> Response {
    let mut r = problem(
        StatusCode::UNAUTHORIZED,
        "invalid-token",
        "Unauthorized",
        detail,
    );
    if let Ok(v) = HeaderValue::from_str(&format!(
        "Bearer realm=\"{realm}\", error=\"invalid_token\""
    )) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

/// Whether the request's `Content-Type` is `application/json` or `application/*+json`
/// (parameters such as `charset` ignored, case-insensitive).
pub(super) fn is_json_media_type(headers: &HeaderMap) -> bool {
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase())
        .unwrap_or_default();
    media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
}

/// The body as JSON: 415 without a JSON content type, 400 when it does not parse (see
/// [`parse_json`]).
pub(super) fn json_body(headers: &HeaderMap, raw: &[u8]) -> Result<Value, Box<Response>> {
    if !is_json_media_type(headers) {
        return Err(Box::new(problem(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported Media Type",
            "Send the body as application/json.",
        )));
    }
    parse_json(raw)
}

/// The body parsed as JSON, 400 problem+json when it does not parse. The 400 names only the
/// position: serde's message could quote part of the body.
pub(super) fn parse_json(raw: &[u8]) -> Result<Value, Box<Response>> {
    serde_json::from_slice(raw).map_err(|e| {
        Box::new(problem(
            StatusCode::BAD_REQUEST,
            "malformed-json",
            "Malformed JSON",
            format!(
                "The body is not valid JSON (line {}, column {}).",
                e.line(),
                e.column()
            ),
        ))
    })
}

/// The `X-Tilts-Message-Id` of the request: `Ok(None)` without one, 400 when it is empty, too
/// long or not visible ASCII.
pub(super) fn message_id(headers: &HeaderMap) -> Result<Option<String>, Box<Response>> {
    let Some(value) = headers.get("x-tilts-message-id") else {
        return Ok(None);
    };
    match value.to_str().map(str::trim) {
        Ok(id) if !id.is_empty() && id.len() <= MAX_MESSAGE_ID => Ok(Some(id.to_owned())),
        _ => Err(Box::new(problem(
            StatusCode::BAD_REQUEST,
            "invalid-message-id",
            "Invalid message id",
            format!("X-Tilts-Message-Id must be 1 to {MAX_MESSAGE_ID} visible ASCII characters."),
        ))),
    }
}

/// What identifies a request for idempotency: method, resource and the exact body.
pub(super) fn fingerprint(method: &str, resource: &str, body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(method.as_bytes());
    h.update([0]);
    h.update(resource.as_bytes());
    h.update([0]);
    h.update(body);
    h.finalize().into()
}

/// Marks an answer as the replay of an earlier one (`Idempotent-Replayed: true`).
pub(super) fn mark_replayed(response: &mut Response) {
    response
        .headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
}

/// Answers remembered per `X-Tilts-Message-Id`, so a repeat gets the first answer again.
#[derive(Default)]
pub(super) struct Replays {
    by_id: HashMap<String, (usize, [u8; 32], StatusCode, Value)>,
    next: usize,
}

impl Replays {
    /// The first answer for `id` (with `Idempotent-Replayed: true`), 409 when `id` came with
    /// another request, `None` when `id` is new.
    pub(super) fn replay(&self, id: &str, fingerprint: &[u8; 32]) -> Option<Response> {
        let (_, seen, status, body) = self.by_id.get(id)?;
        if seen != fingerprint {
            return Some(problem(
                StatusCode::CONFLICT,
                "message-id-reused",
                "Conflict",
                "This X-Tilts-Message-Id was already used for a different request; use a new id.",
            ));
        }
        let mut r = if *status == StatusCode::NO_CONTENT {
            status.into_response()
        } else {
            json_response(*status, body.clone())
        };
        mark_replayed(&mut r);
        Some(r)
    }

    /// Remembers the answer given to `id`.
    pub(super) fn remember(
        &mut self,
        id: String,
        fingerprint: [u8; 32],
        status: StatusCode,
        body: Value,
    ) {
        if self.by_id.len() >= MAX_REPLAYS {
            // Forget the oldest answer; a linear scan, rare and bounded.
            if let Some(oldest) = self
                .by_id
                .iter()
                .min_by_key(|(_, v)| v.0)
                .map(|(k, _)| k.clone())
            {
                self.by_id.remove(&oldest);
            }
        }
        self.next += 1;
        self.by_id
            .insert(id, (self.next, fingerprint, status, body));
    }
}

/// Forbids caching an answer (`Cache-Control: no-store`), as RFC 6749 wants of token answers.
pub(super) fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// An RFC 6749 §5.2 error answer, `{"error","error_description"}`, not to be cached; a 401
/// carries `WWW-Authenticate: Basic realm="<realm>"`.
pub(super) fn oauth_error(
    status: StatusCode,
    error: &str,
    description: &str,
    realm: &str,
) -> Response {
    let mut r = no_store(json_response(
        status,
        json!({"error": error, "error_description": description}),
    ));
    if status == StatusCode::UNAUTHORIZED
        && let Ok(v) = HeaderValue::from_str(&format!("Basic realm=\"{realm}\""))
    {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

/// Why a token request is refused before its client is looked at: (status, RFC 6749 error
/// code, description). Each simulator words the answer in its own error format.
pub(super) type GrantError = (StatusCode, &'static str, &'static str);

/// The form of a client-credentials token request: `Err` when the body is not a form
/// (`invalid_request`) or the grant is not `client_credentials` (`unsupported_grant_type`).
pub(super) fn client_credentials_form(
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Result<HashMap<String, String>, GrantError> {
    let Ok(Form(form)) = form else {
        return Err((
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Send an application/x-www-form-urlencoded body.",
        ));
    };
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return Err((
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "Only grant_type=client_credentials is supported.",
        ));
    }
    Ok(form)
}

/// The form of a client-credentials token request whose client authenticates as
/// `client` (id, secret), HTTP Basic read by `decode` (see [`client_credentials`]); `Err` the
/// RFC 6749 error answer ([`oauth_error`] with `realm`): `invalid_request`,
/// `unsupported_grant_type` or, for other credentials, 401 `invalid_client`.
pub(super) fn authenticated_grant(
    headers: &HeaderMap,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
    client: (&str, &str),
    decode: fn(&str) -> Option<Vec<u8>>,
    realm: &str,
) -> Result<HashMap<String, String>, Box<Response>> {
    let form = client_credentials_form(form).map_err(|(status, error, description)| {
        Box::new(oauth_error(status, error, description, realm))
    })?;
    let (id, secret) = client_credentials(headers, &form, decode);
    if id != client.0 || secret != client.1 {
        return Err(Box::new(oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Client authentication failed.",
            realm,
        )));
    }
    Ok(form)
}

/// The client credentials of a token request: HTTP Basic first (its base64 read by `decode`,
/// as strict as the simulator is), else the form's `client_id` and `client_secret` (empty when
/// absent).
fn client_credentials(
    headers: &HeaderMap,
    form: &HashMap<String, String>,
    decode: fn(&str) -> Option<Vec<u8>>,
) -> (String, String) {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b64| decode(b64.trim()))
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|pair| {
            let (id, secret) = pair.split_once(':')?;
            Some((id.to_owned(), secret.to_owned()))
        });
    basic.unwrap_or_else(|| {
        (
            form.get("client_id").cloned().unwrap_or_default(),
            form.get("client_secret").cloned().unwrap_or_default(),
        )
    })
}

/// One problem with one field of a request body. Messages name the rule, never the value.
pub(super) type FieldError = (String, String);

/// The 422 answer listing every field error.
pub(super) fn invalid(slug: &str, what: &str, errors: Vec<FieldError>) -> Response {
    let fields: Vec<&str> = errors.iter().map(|(f, _)| f.as_str()).collect();
    let detail = format!(
        "The {what} is incomplete or invalid: {}.",
        fields.join(", ")
    );
    let mut extra = Map::new();
    extra.insert(
        "errors".into(),
        errors
            .iter()
            .map(|(field, message)| json!({"field": field, "message": message}))
            .collect(),
    );
    problem_with(
        StatusCode::UNPROCESSABLE_ENTITY,
        slug,
        "Unprocessable Content",
        detail,
        extra,
    )
}

/// Reads the fields of one JSON object and collects every problem, with dotted field paths.
pub(super) struct Fields<'a> {
    object: &'a Map<String, Value>,
    prefix: String,
    /// Every problem found so far.
    pub(super) errors: Vec<FieldError>,
}

impl<'a> Fields<'a> {
    /// The top-level object; `Err` when `body` is not an object. Fields outside `known` are
    /// errors.
    pub(super) fn new(body: &'a Value, known: &[&str]) -> Result<Fields<'a>, Vec<FieldError>> {
        let Some(object) = body.as_object() else {
            return Err(vec![("$".into(), "the body must be a JSON object".into())]);
        };
        let mut f = Fields {
            object,
            prefix: String::new(),
            errors: Vec::new(),
        };
        f.reject_unknown(known);
        Ok(f)
    }

    /// The fields of a nested object `name`.
    pub(super) fn nested(
        &self,
        name: &str,
        object: &'a Map<String, Value>,
        known: &[&str],
    ) -> Fields<'a> {
        let mut f = Fields {
            object,
            prefix: self.path(name),
            errors: Vec::new(),
        };
        f.reject_unknown(known);
        f
    }

    /// Takes over the problems of a nested reader.
    pub(super) fn absorb(&mut self, nested: Fields<'_>) {
        self.errors.extend(nested.errors);
    }

    fn reject_unknown(&mut self, known: &[&str]) {
        let unknown: Vec<String> = self
            .object
            .keys()
            .filter(|k| !known.contains(&k.as_str()))
            .cloned()
            .collect();
        for k in unknown {
            self.error(&k, "is not a field of this contract");
        }
    }

    fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// Records a problem with field `name`.
    pub(super) fn error(&mut self, name: &str, message: &str) {
        let path = self.path(name);
        self.errors.push((path, message.to_owned()));
    }

    /// The raw value, `None` when absent or null (an error when `required`).
    pub(super) fn value(&mut self, name: &str, required: bool) -> Option<&'a Value> {
        match self.object.get(name) {
            None | Some(Value::Null) => {
                if required {
                    self.error(name, "is required");
                }
                None
            }
            Some(v) => Some(v),
        }
    }

    /// A non-blank string of at most `max` characters.
    pub(super) fn text(&mut self, name: &str, required: bool, max: usize) -> Option<String> {
        match self.value(name, required)? {
            Value::String(s) if !s.trim().is_empty() && s.chars().count() <= max => Some(s.clone()),
            Value::String(s) if !s.trim().is_empty() => {
                self.error(name, &format!("must be at most {max} characters"));
                None
            }
            _ => {
                self.error(name, "must be a non-empty string");
                None
            }
        }
    }

    /// A required string, one of `allowed`.
    pub(super) fn one_of(&mut self, name: &str, allowed: &[&str]) -> Option<String> {
        let v = self.value(name, true)?;
        match v.as_str() {
            Some(s) if allowed.contains(&s) => Some(s.to_owned()),
            _ => {
                self.error(name, &format!("must be one of: {}", allowed.join(", ")));
                None
            }
        }
    }

    /// A required RFC 3339 date-time with an offset.
    pub(super) fn timestamp(&mut self, name: &str) -> Option<String> {
        let v = self.value(name, true)?;
        match v.as_str() {
            Some(s) if chrono::DateTime::parse_from_rfc3339(s).is_ok() => Some(s.to_owned()),
            _ => {
                self.error(
                    name,
                    "must be an RFC 3339 date-time, e.g. 2026-03-02T09:15:00+02:00",
                );
                None
            }
        }
    }

    /// A required Enterprise Register number with a valid checksum.
    pub(super) fn reg_no(&mut self, name: &str) -> Option<String> {
        let v = self.value(name, true)?;
        match v.as_str() {
            Some(s) if is_valid_reg_no(s) => Some(s.to_owned()),
            Some(s) => {
                let reason = reg_no_check_error(s).unwrap_or("is not valid");
                self.error(name, reason);
                None
            }
            None => {
                self.error(name, "must be a string of 11 digits");
                None
            }
        }
    }

    /// An object field.
    pub(super) fn object(&mut self, name: &str, required: bool) -> Option<&'a Map<String, Value>> {
        match self.value(name, required)? {
            Value::Object(o) => Some(o),
            _ => {
                self.error(name, "must be an object");
                None
            }
        }
    }

    /// An array field.
    pub(super) fn array(&mut self, name: &str, required: bool) -> Option<&'a Vec<Value>> {
        match self.value(name, required)? {
            Value::Array(a) => Some(a),
            _ => {
                self.error(name, "must be an array");
                None
            }
        }
    }

    /// An absolute `https://` URL without spaces.
    pub(super) fn https_url(&mut self, name: &str, required: bool) -> Option<String> {
        let v = self.value(name, required)?;
        match v.as_str() {
            Some(s)
                if s.len() > "https://".len()
                    && s.len() <= 2000
                    && s.starts_with("https://")
                    && !s.chars().any(|c| c.is_whitespace() || c.is_control()) =>
            {
                Some(s.to_owned())
            }
            _ => {
                self.error(name, "must be an absolute https:// URL");
                None
            }
        }
    }
}

/// The `field` of every entry of a 422 answer's `errors`, in order (for the simulators' tests;
/// panics when the answer has no such list).
#[cfg(test)]
pub(super) fn error_fields(body: &Value) -> Vec<&str> {
    body["errors"]
        .as_array()
        .expect("a 422 answer lists its errors")
        .iter()
        .map(|e| e["field"].as_str().expect("every error names its field"))
        .collect()
}
