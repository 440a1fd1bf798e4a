//! Runs one request through a compiled route: the steps in order, then the destination.
//!
//! The exchange's state is one JSON object (the Handlebars context) with the roots `body`,
//! `headers`, `query`, `params`, `payload`, `route`, `message` and one entry per `as` name.
//! Templates and conditions read it directly, without copying it per render.

use std::time::Instant;

use bytes::Bytes;
use futures::future::BoxFuture;
use handlebars::Context;
use http::{HeaderName, HeaderValue, Method};
use serde_json::{Map, Value, json};
use tilts_adapters::contract::DeliveryError;
use tilts_adapters::http::HttpRequest;

use tilts_adapters::profile::UserId;
use tilts_adapters::xml;

use crate::exchange::{self, Answer};
use crate::mapping::{MappingError, Mappings, Rendered};
use crate::plan::{Call, Plan, Respond, Route, Step};
use crate::schema::Violation;

/// Request headers never exposed to templates (credentials of the caller).
const HIDDEN_HEADERS: &[&str] = &["authorization", "cookie", "proxy-authorization"];

/// What came in.
#[derive(Debug, Clone)]
pub struct Input {
    pub message_id: String,
    pub body: Value,
    pub headers: Map<String, Value>,
    pub query: Map<String, Value>,
    pub params: Map<String, Value>,
}

/// The answer to send back.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

/// Why a route did not produce a reply. Texts never contain message data.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// A `validate` step found violations (422).
    #[error("{label}: {} violation(s)", violations.len())]
    Invalid {
        label: String,
        violations: Vec<Violation>,
    },
    /// A template failed (a missing field, invalid JSON output) (500: the mapping is wrong for this input).
    #[error("{label}: {error}")]
    Mapping { label: String, error: MappingError },
    /// A system failed or answered a status the step does not accept (502/504).
    #[error("{label}: {error}")]
    Upstream { label: String, error: DeliveryError },
    /// The destination failed retryably on a route with `fallback: queue`: the request is to
    /// be stored for the workers (202), not failed.
    #[error("to: {} (deferred to the queue)", .0.error)]
    Deferred(Box<Deferred>),
    /// A condition could not be evaluated.
    #[error("{label}: condition failed: {message}")]
    Condition { label: String, message: String },
}

enum Flow {
    Continue,
    Replied(Reply),
}

/// Runs `route` for one request.
pub async fn run(plan: &Plan, route: &Route, input: Input) -> Result<Reply, RouteError> {
    // The context takes the input; only the message id is needed beside it.
    let message_id = input.message_id.clone();
    let mut ctx = new_context(route, input);
    let mut ex = Exchange {
        plan,
        route,
        message_id: &message_id,
    };
    if let Flow::Replied(reply) = ex.steps(&route.steps, &mut ctx).await? {
        return Ok(reply);
    }
    match &route.to {
        Some(to) => {
            let out = ex.render_request(to, "to", &ctx)?;
            let deferred = route
                .fallback_queue
                .then(|| StoredRequest::from_outgoing(&out));
            let mut sent = out.req;
            if let Ok(id) = HeaderValue::from_str(&message_id) {
                sent.headers
                    .push((HeaderName::from_static("x-tilts-message-id"), id));
            }
            let resp =
                match send(to, &route.id, "to", sent, &message_id, out.user_id.as_ref()).await {
                    Ok(r) => r,
                    Err(RouteError::Upstream { label, error }) => {
                        return Err(match deferred {
                            Some(request)
                                if error.retry() == tilts_adapters::contract::Retry::Retryable =>
                            {
                                RouteError::Deferred(Box::new(Deferred {
                                    request,
                                    ordering_key: ordering_key(plan, route, &ctx)?,
                                    error,
                                }))
                            }
                            _ => RouteError::Upstream { label, error },
                        });
                    }
                    Err(e) => return Err(e),
                };
            if to.system.soap.is_some() {
                // A SOAP answer's payload is XML inside an envelope: answer with it as data.
                return Ok(json_reply(resp.status, &resp.data));
            }
            if to.system.amqp().is_some() {
                return Ok(json_reply(
                    202,
                    &json!({"messageId": message_id, "status": "published"}),
                ));
            }
            Ok(Reply {
                status: resp.status,
                content_type: resp.content_type,
                headers: Vec::new(),
                body: resp.body,
            })
        }
        None => Ok(json_reply(200, &ctx.data()["payload"])),
    }
}

fn new_context(route: &Route, input: Input) -> Context {
    let mut headers = input.headers;
    headers.retain(|k, _| !HIDDEN_HEADERS.contains(&k.as_str()));
    Context::from(json!({
        "payload": input.body.clone(),
        "body": input.body,
        "headers": headers,
        "query": input.query,
        "params": input.params,
        "route": {"id": route.id, "owner": route.owner},
        "message": {"id": input.message_id},
    }))
}

fn json_reply(status: u16, v: &Value) -> Reply {
    Reply {
        status,
        content_type: "application/json".into(),
        headers: Vec::new(),
        body: Bytes::from(serde_json::to_vec(v).unwrap_or_default()),
    }
}

struct Exchange<'a> {
    plan: &'a Plan,
    route: &'a Route,
    message_id: &'a str,
}

impl<'a> Exchange<'a> {
    fn steps<'s>(
        &'s mut self,
        steps: &'a [Step],
        ctx: &'s mut Context,
    ) -> BoxFuture<'s, Result<Flow, RouteError>>
    where
        'a: 's,
    {
        Box::pin(async move {
            for step in steps {
                match step {
                    Step::Validate { label, schema } => {
                        let violations = schema.validate(&ctx.data()["payload"]);
                        if !violations.is_empty() {
                            return Err(RouteError::Invalid {
                                label: label.clone(),
                                violations,
                            });
                        }
                    }
                    Step::Map {
                        label,
                        template,
                        as_name,
                    } => {
                        let out = self
                            .plan
                            .mappings
                            .render(template, ctx)
                            .map_err(in_step(label))?
                            .into_value();
                        let key = as_name.as_deref().unwrap_or("payload");
                        set(ctx, key, out);
                    }
                    Step::Call { label, call } => {
                        let answer = self.call(call, label, ctx).await?;
                        let name = call.as_name.as_deref().unwrap_or("response");
                        set(ctx, name, answer.into_value());
                    }
                    Step::Choice { label, branches } => {
                        let mut chosen = None;
                        for b in branches {
                            let hit = match &b.when {
                                None => true,
                                Some(e) => e.eval_bool(ctx.data()).map_err(|err| {
                                    RouteError::Condition {
                                        label: label.clone(),
                                        message: err.message,
                                    }
                                })?,
                            };
                            if hit {
                                chosen = Some(&b.steps);
                                break;
                            }
                        }
                        if let Some(steps) = chosen
                            && let Flow::Replied(r) = self.steps(steps, ctx).await?
                        {
                            return Ok(Flow::Replied(r));
                        }
                    }
                    Step::Respond { label, respond } => {
                        return self.respond(respond, label, ctx).map(Flow::Replied);
                    }
                }
            }
            Ok(Flow::Continue)
        })
    }

    /// A template rendered by `render` (one of the [`Mappings`] renderers), a failure named after
    /// the step.
    fn rendered<T>(
        &self,
        label: &str,
        render: impl FnOnce(&Mappings) -> Result<T, MappingError>,
    ) -> Result<T, RouteError> {
        render(&self.plan.mappings).map_err(in_step(label))
    }

    fn render_headers(
        &self,
        label: &str,
        headers: &[(HeaderName, crate::mapping::TemplateRef)],
        ctx: &Context,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, RouteError> {
        headers
            .iter()
            .map(|(k, t)| {
                let v = self.rendered(label, |m| m.render_string(t, ctx))?;
                let v = HeaderValue::from_str(&v).map_err(|_| RouteError::Mapping {
                    label: label.to_string(),
                    error: MappingError {
                        message: format!(
                            "header {k} rendered to a value that is not allowed in HTTP headers"
                        ),
                    },
                })?;
                Ok((k.clone(), v))
            })
            .collect()
    }

    fn respond(&self, r: &Respond, label: &str, ctx: &Context) -> Result<Reply, RouteError> {
        let mut reply = match &r.body {
            Some(t) => Reply {
                status: r.status,
                content_type: t.format.content_type().to_string(),
                headers: Vec::new(),
                body: Bytes::from(self.rendered(label, |m| m.render_body(t, ctx))?),
            },
            None => json_reply(r.status, &ctx.data()["payload"]),
        };
        reply.headers = self.render_headers(label, &r.headers, ctx)?;
        Ok(reply)
    }

    async fn call(&self, call: &Call, label: &str, ctx: &Context) -> Result<Answer, RouteError> {
        let Outgoing { mut req, user_id } = self.render_request(call, label, ctx)?;
        if let Ok(id) = HeaderValue::from_str(self.message_id) {
            req.headers
                .push((HeaderName::from_static("x-tilts-message-id"), id));
        }
        send(
            call,
            &self.route.id,
            label,
            req,
            self.message_id,
            user_id.as_ref(),
        )
        .await
    }

    /// Renders a call's request (path, headers, body, user id) from the exchange.
    fn render_request(
        &self,
        call: &Call,
        label: &str,
        ctx: &Context,
    ) -> Result<Outgoing, RouteError> {
        let mapping_err = |message: String| RouteError::Mapping {
            label: label.to_string(),
            error: MappingError { message },
        };
        let user_id = match &call.user_id {
            Some(t) => {
                let text = self.rendered(label, |m| m.render_string(t, ctx))?;
                // An empty user id (e.g. `{{default headers.[x-user-id] ""}}`) means none.
                if text.trim().is_empty() {
                    None
                } else {
                    Some(text.trim().parse::<UserId>().map_err(|e| {
                        mapping_err(format!(
                            "user_id: {e} (write AU:<institution reg no>-PK:<personal code>)"
                        ))
                    })?)
                }
            }
            None => None,
        };
        // A broker's "path" is the routing key.
        let path = match call.path.as_ref().or(call.routing_key.as_ref()) {
            Some(t) => self.rendered(label, |m| m.render_string(t, ctx))?,
            None => String::new(),
        };
        let mut headers = self.render_headers(label, &call.headers, ctx)?;
        let to_xml = |v: &Value| {
            xml::from_json(v).map(Bytes::from).map_err(|e| {
                mapping_err(format!(
                    "the message cannot be written as XML for a SOAP call: {e}"
                ))
            })
        };
        let body = if call.system.soap.is_some() {
            // SOAP: the payload is XML, from an XML template or converted from JSON data.
            Some(match &call.body {
                Some(t) => match self.rendered(label, |m| m.render(t, ctx))? {
                    Rendered::Text(s) => Bytes::from(s),
                    Rendered::Json(v) => to_xml(&v)?,
                },
                None => match &ctx.data()["payload"] {
                    Value::String(s) => Bytes::from(s.clone()),
                    v => to_xml(v)?,
                },
            })
        } else {
            match &call.body {
                Some(t) => {
                    let body = self.rendered(label, |m| m.render_body(t, ctx))?;
                    headers.push((
                        http::header::CONTENT_TYPE,
                        HeaderValue::from_static(t.format.content_type()),
                    ));
                    Some(Bytes::from(body))
                }
                None if call.method == Method::GET || call.method == Method::DELETE => None,
                None => {
                    headers.push((
                        http::header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    ));
                    Some(Bytes::from(
                        serde_json::to_vec(&ctx.data()["payload"]).unwrap_or_default(),
                    ))
                }
            }
        };
        if let Ok(r) = HeaderValue::from_str(&self.route.id) {
            headers.push((HeaderName::from_static("x-tilts-route"), r));
        }
        Ok(Outgoing {
            req: HttpRequest {
                method: call.method.clone(),
                path,
                headers,
                body,
                timeout: call.timeout,
            },
            user_id,
        })
    }
}

/// A rendered request and the employee it is made for.
pub struct Outgoing {
    pub req: HttpRequest,
    pub user_id: Option<UserId>,
}

/// Sends a rendered request, framed for the system (see [`crate::exchange`]), and applies
/// the call's `accept` list and fault handling.
async fn send(
    call: &Call,
    route_id: &str,
    label: &str,
    req: HttpRequest,
    correlation_id: &str,
    user_id: Option<&UserId>,
) -> Result<Answer, RouteError> {
    let started = Instant::now();
    let result = exchange::send(call, req, correlation_id, user_id).await;
    let elapsed_ms = started.elapsed().as_millis() as u64;
    let system = call.system.name.as_str();
    match result {
        Ok(answer) => {
            tracing::debug!(route = %route_id, step = label, system, status = answer.status, fault = answer.fault.is_some(), elapsed_ms, "call answered");
            Ok(answer)
        }
        Err(error) => {
            tracing::warn!(route = %route_id, step = label, system, kind = error.kind.name(), %error, elapsed_ms, "call failed");
            Err(RouteError::Upstream {
                label: label.to_string(),
                error,
            })
        }
    }
}

/// A queued message: the destination request rendered when the message came in, so workers
/// send exactly what was accepted (and dead letters show it).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StoredRequest {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// The body as text (templates produce text); absent for GET/DELETE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The employee the message is delivered for (`AU:...-PK:...`): personal data, purged
    /// with the payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

impl StoredRequest {
    /// The durable form of a rendered request.
    pub fn from_outgoing(out: &Outgoing) -> Self {
        let mut s = Self::from_request(&out.req);
        s.user_id = out.user_id.as_ref().map(|u| u.expose().to_string());
        s
    }

    /// The durable form of a rendered request without a user id.
    pub fn from_request(req: &HttpRequest) -> Self {
        StoredRequest {
            user_id: None,
            method: req.method.to_string(),
            path: req.path.clone(),
            headers: req
                .headers
                .iter()
                .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
                .collect(),
            body: req
                .body
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned()),
        }
    }
}

/// A sync delivery handed over to the queue (`fallback: queue`).
#[derive(Debug)]
pub struct Deferred {
    pub request: StoredRequest,
    pub ordering_key: Option<String>,
    /// Why the destination failed.
    pub error: DeliveryError,
}

/// What a queued route's ingress produces.
#[derive(Debug)]
pub struct Prepared {
    pub request: StoredRequest,
    pub ordering_key: Option<String>,
}

/// Runs a queued route's steps (validate, map, choice) and renders its destination request.
pub async fn prepare(plan: &Plan, route: &Route, input: Input) -> Result<Prepared, RouteError> {
    let message_id = input.message_id.clone();
    let mut ctx = new_context(route, input);
    let mut ex = Exchange {
        plan,
        route,
        message_id: &message_id,
    };
    if let Flow::Replied(_) = ex.steps(&route.steps, &mut ctx).await? {
        // The checker forbids `respond` in queued routes; reaching this is a bug, not bad input.
        return Err(RouteError::Mapping {
            label: "steps".into(),
            error: MappingError {
                message: "a queued route answered before it was stored".into(),
            },
        });
    }
    let to = route.to.as_ref().ok_or_else(|| RouteError::Mapping {
        label: "to".into(),
        error: MappingError {
            message: "a queued route has no destination".into(),
        },
    })?;
    let out = ex.render_request(to, "to", &ctx)?;
    let ordering_key = ordering_key(plan, route, &ctx)?;
    Ok(Prepared {
        request: StoredRequest::from_outgoing(&out),
        ordering_key,
    })
}

/// Delivers a stored request to a queued route's destination (one attempt).
pub async fn deliver(
    route: &Route,
    request: &StoredRequest,
    message_id: &str,
) -> Result<Answer, DeliveryError> {
    use tilts_adapters::contract::FailureKind;
    let Some(to) = &route.to else {
        return Err(DeliveryError {
            system: String::new(),
            kind: FailureKind::Request,
            retry_after: None,
            detail: "the route has no destination".into(),
        });
    };
    let bad = |what: &str| DeliveryError {
        system: to.system.name.clone(),
        kind: FailureKind::Request,
        retry_after: None,
        detail: format!("stored request has an invalid {what}"),
    };
    let method: Method = request.method.parse().map_err(|_| bad("method"))?;
    let mut headers = Vec::with_capacity(request.headers.len() + 1);
    for (k, v) in &request.headers {
        let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| bad("header name"))?;
        let value = HeaderValue::from_str(v).map_err(|_| bad("header value"))?;
        headers.push((name, value));
    }
    // Stable across attempts, so receivers can deduplicate.
    if let Ok(id) = HeaderValue::from_str(message_id) {
        headers.push((HeaderName::from_static("x-tilts-message-id"), id));
    }
    let req = HttpRequest {
        method,
        path: request.path.clone(),
        headers,
        body: request.body.clone().map(Bytes::from),
        timeout: to.timeout,
    };
    let user_id = match &request.user_id {
        Some(u) => Some(u.parse::<UserId>().map_err(|_| bad("user id"))?),
        None => None,
    };
    match send(to, &route.id, "to", req, message_id, user_id.as_ref()).await {
        Ok(resp) => Ok(resp),
        Err(RouteError::Upstream { error, .. }) => Err(error),
        Err(other) => Err(DeliveryError {
            system: to.system.name.clone(),
            kind: FailureKind::Request,
            retry_after: None,
            detail: other.to_string(),
        }),
    }
}

/// Wraps a template's failure with the step (or setting) it happened in.
fn in_step(label: &str) -> impl FnOnce(MappingError) -> RouteError + '_ {
    move |error| RouteError::Mapping {
        label: label.to_string(),
        error,
    }
}

/// The queued message's `ordering_key`, rendered from the exchange.
fn ordering_key(plan: &Plan, route: &Route, ctx: &Context) -> Result<Option<String>, RouteError> {
    route
        .ordering_key
        .as_ref()
        .map(|t| {
            plan.mappings
                .render_string(t, ctx)
                .map_err(in_step("ordering_key"))
        })
        .transpose()
}

fn set(ctx: &mut Context, key: &str, v: Value) {
    if let Some(obj) = ctx.data_mut().as_object_mut() {
        obj.insert(key.to_string(), v);
    }
}
