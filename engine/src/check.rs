//! `tilts check`: reads routes.yaml and every file it refers to, compiles all of it into a
//! [`Plan`], and reports *every* problem at once with file, line, column, the route/step path and
//! what to write instead. `tilts serve` runs only a plan that checked clean.

use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tilts_adapters::amqp::{
    AmqpSpec, Binding, ExchangeKind, ExchangeSpec, QueueKind, QueueSpec, Topology,
};
use tilts_adapters::http::{HttpAuth, HttpSystem, HttpSystemSpec};
use tilts_adapters::ident;
use tilts_adapters::profile::{self, XRoadClient, XRoadService};
use tilts_adapters::soap::{self, SoapVersion};
use tilts_adapters::tls::ClientTls;
use tilts_adapters::token::{Secret, TokenSource};

use crate::config::types::{self, StatusPattern};
use crate::config::{env, yaml};
use crate::diag::{Diagnostic, Diagnostics, closest};
use crate::expr::Expr;
use crate::mapping::{Format, Mappings, TemplateRef};
use crate::plan::{self, Plan};
use crate::schema::Schema;

/// Names every route can read in conditions and templates.
pub const BUILTIN_NAMES: &[&str] = &[
    "body", "headers", "query", "params", "payload", "route", "message",
];

/// Paths tilts serves itself; routes cannot take them.
pub const RESERVED_PATHS: &[&str] = &["/healthz", "/readyz", "/metrics"];

/// Reads and compiles a route file, taking `${VAR}`s from the process environment.
pub fn load(path: &Path) -> Result<Plan, Diagnostics> {
    load_with_env(path, &|k| std::env::var(k).ok())
}

/// Reads and compiles a route file with the given variable lookup (tests pass their own).
pub fn load_with_env(
    path: &Path,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Plan, Diagnostics> {
    load_with(path, lookup, &|_| {})
}

/// [`load_with_env`], with `rewrite` applied to the parsed file before `${VAR}`s are filled in
/// and anything is checked. `tilts test` uses it to point every system at a stand-in (it
/// replaces `http.url` and drops `http.tls` and `http.auth`, so their variables need not be
/// set). `rewrite` must only replace or remove values: positions stay those of the file.
pub fn load_with(
    path: &Path,
    lookup: &dyn Fn(&str) -> Option<String>,
    rewrite: &dyn Fn(&mut Value),
) -> Result<Plan, Diagnostics> {
    let mut c = Checker::new(path);
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            c.push_at(
                1,
                1,
                "",
                format!("cannot read the route file: {e}"),
                Some("pass the route file's path: tilts check path/to/routes.yaml".into()),
            );
            return Err(c.finish_err());
        }
    };
    match yaml::parse(&text) {
        Ok(l) => c.located = l,
        Err(e) => {
            c.push_at(
                e.pos.line,
                e.pos.column,
                "",
                format!("YAML syntax: {}", e.message),
                None,
            );
            return Err(c.finish_err());
        }
    }
    for (key, pos, first) in std::mem::take(&mut c.located.duplicates) {
        c.push_at(
            pos.line,
            pos.column,
            "",
            format!("duplicate key `{key}` (first on line {first})"),
            Some("a key may appear once in a mapping: remove or rename one of them".into()),
        );
    }
    let mut root = std::mem::take(&mut c.located.value);
    rewrite(&mut root);
    let mut env_problems = Vec::new();
    env::interpolate(&mut root, "", lookup, &mut env_problems);
    for p in env_problems {
        c.bad_pointers.insert(p.pointer.clone());
        c.push(&p.pointer, p.message, None);
    }
    c.located.value = root;
    let plan = c.check_file();
    match plan {
        Some(plan) if c.diags.is_empty() => Ok(plan),
        _ => Err(c.finish_err()),
    }
}

struct Checker {
    file: PathBuf,
    base_dir: PathBuf,
    located: yaml::Located,
    diags: Vec<Diagnostic>,
    /// Pointers already reported (e.g. a missing env var), so follow-on errors are not repeated.
    bad_pointers: HashSet<String>,
    mappings: Mappings,
    mappings_dir: PathBuf,
    templates: HashMap<String, Option<TemplateRef>>,
    schemas: HashMap<String, Option<Arc<Schema>>>,
    system_names: Vec<String>,
    /// `server.lease`, which every system's timeout must stay under.
    lease: Duration,
}

impl Checker {
    fn new(path: &Path) -> Self {
        let base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        Checker {
            file: path.to_path_buf(),
            mappings_dir: base_dir.join("mappings"),
            base_dir,
            located: yaml::Located::default(),
            diags: Vec::new(),
            bad_pointers: HashSet::new(),
            mappings: Mappings::new(),
            templates: HashMap::new(),
            schemas: HashMap::new(),
            system_names: Vec::new(),
            lease: Duration::from_secs(120),
        }
    }

    fn finish_err(mut self) -> Diagnostics {
        self.diags.sort_by(|a, b| {
            (a.file != self.file, &a.file, a.line, a.column).cmp(&(
                b.file != self.file,
                &b.file,
                b.line,
                b.column,
            ))
        });
        self.diags.dedup();
        Diagnostics(self.diags)
    }

    fn push_at(
        &mut self,
        line: u64,
        column: u64,
        context: &str,
        message: String,
        help: Option<String>,
    ) {
        self.diags.push(Diagnostic {
            file: self.file.clone(),
            line,
            column,
            context: context.to_string(),
            message,
            help,
        });
    }

    /// Reports a problem at the value at `pointer`.
    fn push(&mut self, pointer: &str, message: impl Into<String>, help: Option<String>) {
        let pos = self.located.pos(pointer);
        let ctx = self.context(pointer);
        self.push_at(pos.line, pos.column, &ctx, message.into(), help);
    }

    /// Reports a problem at the key of the node at `pointer`.
    fn push_key(&mut self, pointer: &str, message: impl Into<String>, help: Option<String>) {
        let pos = self.located.key_pos(pointer);
        let ctx = self.context(pointer);
        self.push_at(pos.line, pos.column, &ctx, message.into(), help);
    }

    fn is_bad(&self, pointer: &str) -> bool {
        self.bad_pointers
            .iter()
            .any(|b| b == pointer || b.starts_with(&format!("{pointer}/")))
    }

    /// `route company-lookup › steps[1].call.system` for `/routes/3/steps/1/call/system`.
    fn context(&self, pointer: &str) -> String {
        let segs: Vec<String> = pointer
            .split('/')
            .skip(1)
            .map(|s| s.replace("~1", "/").replace("~0", "~"))
            .collect();
        let rest = |from: usize| {
            let mut s = String::new();
            for seg in segs.iter().skip(from) {
                if seg.parse::<usize>().is_ok() {
                    s.push_str(&format!("[{seg}]"));
                } else {
                    if !s.is_empty() {
                        s.push('.');
                    }
                    s.push_str(seg);
                }
            }
            s
        };
        match segs.first().map(String::as_str) {
            Some("routes") if segs.len() >= 2 => {
                let idx: usize = segs[1].parse().unwrap_or(0);
                let id = self.located.value["routes"][idx]["id"]
                    .as_str()
                    .map(|s| format!("route {s}"))
                    .unwrap_or_else(|| format!("routes[{idx}]"));
                let r = rest(2);
                if r.is_empty() {
                    id
                } else {
                    format!("{id} › {r}")
                }
            }
            Some("systems") if segs.len() >= 2 => {
                let r = rest(2);
                let s = format!("system {}", segs[1]);
                if r.is_empty() {
                    s
                } else {
                    format!("{s} › {r}")
                }
            }
            // A top-level key: the message names it, a context would only repeat it.
            _ if segs.len() <= 1 => String::new(),
            _ => rest(0),
        }
    }

    /// Deserializes the node at `pointer` into `T`, reporting serde's complaint at its place.
    ///
    /// serde stops at the first problem; to report the others in the same node too, the node
    /// is deserialized again without the offending part (an unknown field, or a value of the
    /// wrong shape in a mapping) until it passes or nothing more can be taken out. A problem at
    /// or around a part taken out is an artefact of the removal and ends the search.
    fn typed<T: DeserializeOwned>(&mut self, pointer: &str, value: &Value) -> Option<T> {
        let mut work = value.clone();
        let mut removed: Vec<String> = Vec::new();
        for _ in 0..MAX_PROBLEMS_PER_NODE {
            let (ptr, msg) = match self.typed_once::<T>(pointer, &work) {
                Ok(t) if removed.is_empty() => return Some(t),
                Ok(_) => return None,
                Err(problem) => problem,
            };
            let relative = ptr.strip_prefix(pointer).unwrap_or_default().to_string();
            if removed
                .iter()
                .any(|r| r == &relative || r.starts_with(&format!("{relative}/")))
            {
                // A problem around what was taken out (a required field now missing, a step
                // left without its one key) is an artefact of the removal: stop here.
                return None;
            }
            if !self.is_bad(&ptr) {
                self.serde_diag(&ptr, &msg);
            }
            // What to take out before trying again.
            let target = match msg
                .strip_prefix("unknown field `")
                .and_then(|m| m.split('`').next())
            {
                Some(field)
                    if !relative.ends_with(&format!("/{}", yaml::escape_pointer(field))) =>
                {
                    format!("{relative}/{}", yaml::escape_pointer(field))
                }
                _ => relative,
            };
            if !remove_key(&mut work, &target) {
                return None;
            }
            removed.push(target);
        }
        None
    }

    /// One deserialization; the problem as (pointer, serde's message).
    fn typed_once<T: DeserializeOwned>(
        &self,
        pointer: &str,
        value: &Value,
    ) -> Result<T, (String, String)> {
        match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(t) => Ok(t),
            Err(e) => {
                let mut ptr = pointer.to_string();
                for seg in e.path().iter() {
                    use serde_path_to_error::Segment;
                    match seg {
                        Segment::Seq { index } => ptr.push_str(&format!("/{index}")),
                        Segment::Map { key } => {
                            ptr.push('/');
                            ptr.push_str(&yaml::escape_pointer(key));
                        }
                        Segment::Enum { variant } => {
                            ptr.push('/');
                            ptr.push_str(&yaml::escape_pointer(variant));
                        }
                        Segment::Unknown => {}
                    }
                }
                Err((ptr, e.inner().to_string()))
            }
        }
    }

    fn serde_diag(&mut self, ptr: &str, msg: &str) {
        let quoted = |prefix: &str| -> Option<String> {
            let i = msg.find(prefix)? + prefix.len();
            let end = msg[i..].find('`')?;
            Some(msg[i..i + end].to_string())
        };
        // serde lists the allowed names as "expected one of `a`, `b`", "expected `a` or `b`"
        // or "expected `a`".
        let expected: Vec<String> = msg
            .split("expected one of ")
            .nth(1)
            .or_else(|| msg.split("expected ").nth(1))
            .map(|s| {
                s.split(',')
                    .flat_map(|p| p.split(" or "))
                    .map(|p| p.trim().trim_matches(|c| c == '`' || c == ' ').to_string())
                    .filter(|p| !p.is_empty() && !p.contains(' '))
                    .collect()
            })
            .unwrap_or_default();
        let help_for = |word: &str| -> Option<String> {
            let cands: Vec<&str> = expected.iter().map(String::as_str).collect();
            closest(word, cands.iter().copied())
                .map(|c| format!("did you mean `{c}`?"))
                .or_else(|| {
                    (!expected.is_empty()).then(|| format!("write one of: {}", expected.join(", ")))
                })
        };
        if let Some(field) = quoted("unknown field `") {
            let key_ptr = if ptr.ends_with(&format!("/{}", yaml::escape_pointer(&field))) {
                ptr.to_string()
            } else {
                format!("{ptr}/{}", yaml::escape_pointer(&field))
            };
            let help = help_for(&field);
            self.push_key(&key_ptr, format!("unknown field `{field}`"), help);
        } else if let Some(variant) = quoted("unknown variant `")
            && self.value_at(ptr).and_then(Value::as_str) == Some(variant.as_str())
        {
            // A plain value naming an unknown choice (`delivery: async`): point at the value.
            let help = help_for(&variant);
            self.push(ptr, format!("`{variant}` is not a valid value"), help);
        } else if let Some(variant) = quoted("unknown variant `") {
            let key_ptr = if ptr.ends_with(&format!("/{}", yaml::escape_pointer(&variant))) {
                ptr.to_string()
            } else {
                format!("{ptr}/{}", yaml::escape_pointer(&variant))
            };
            let help = help_for(&variant);
            self.push_key(&key_ptr, format!("unknown kind `{variant}`"), help);
        } else if let Some(field) = quoted("missing field `") {
            self.push(
                ptr,
                format!("missing field `{field}`"),
                Some(format!("add `{field}: ...` here")),
            );
        } else {
            // serde's text for type errors ("invalid type: integer `5`, expected a string") is
            // already specific; strip its position suffix, tilts prints the position itself.
            let clean = msg.split(" at line ").next().unwrap_or(msg).to_string();
            self.push(ptr, clean, None);
        }
    }

    fn value_at(&self, pointer: &str) -> Option<&Value> {
        self.located.value.pointer(pointer)
    }

    fn check_file(&mut self) -> Option<Plan> {
        let root = self.located.value.clone();
        let Some(obj) = root.as_object() else {
            self.push(
                "",
                "the route file must be a mapping with `version`, `systems` and `routes`",
                Some("start the file with `version: 1`".into()),
            );
            return None;
        };
        const TOP: &[&str] = &["version", "server", "systems", "routes"];
        for k in obj.keys() {
            if !TOP.contains(&k.as_str()) {
                let help = closest(k, TOP.iter().copied())
                    .map(|c| format!("did you mean `{c}`?"))
                    .or_else(|| Some(format!("top-level keys are: {}", TOP.join(", "))));
                self.push_key(
                    &format!("/{}", yaml::escape_pointer(k)),
                    format!("unknown field `{k}`"),
                    help,
                );
            }
        }
        match obj.get("version") {
            None => self.push(
                "",
                "missing field `version`",
                Some("add `version: 1` at the top".into()),
            ),
            Some(v) if v.as_u64() == Some(1) => {}
            Some(_) => self.push(
                "/version",
                "unsupported version",
                Some("this tilts reads `version: 1`".into()),
            ),
        }
        let settings: types::ServerSettings = match obj.get("server") {
            Some(v) => self.typed("/server", v).unwrap_or_default(),
            None => types::ServerSettings::default(),
        };
        self.check_settings(&settings);

        // Systems first: routes refer to them.
        let mut systems = HashMap::new();
        let empty = serde_json::Map::new();
        let sys_obj = match obj.get("systems") {
            Some(Value::Object(m)) => m,
            Some(Value::Null) | None => &empty,
            Some(_) => {
                self.push(
                    "/systems",
                    "`systems` must be a mapping of name -> system",
                    None,
                );
                &empty
            }
        };
        self.system_names = sys_obj.keys().cloned().collect();
        for (name, v) in sys_obj {
            let ptr = format!("/systems/{}", yaml::escape_pointer(name));
            if let Some(cfg) = self.typed::<types::SystemConfig>(&ptr, v)
                && let Some(sys) = self.check_system(&ptr, name, &cfg)
            {
                systems.insert(name.clone(), sys);
            }
        }

        if let Some(c) = &settings.catalogue {
            let cp = "/server/catalogue";
            match systems.get(&c.system) {
                Some(sys) if sys.http().is_some() => {}
                Some(_) => self.push(
                    &format!("{cp}/system"),
                    format!("the catalogue `{}` must be an HTTP system", c.system),
                    None,
                ),
                None if !self.system_names.contains(&c.system) => self.push(
                    &format!("{cp}/system"),
                    format!("unknown system `{}`", c.system),
                    Some("declare the catalogue (PIKTAPS) under `systems:`".into()),
                ),
                None => {}
            }
            if c.system_code.is_empty()
                || !c
                    .system_code
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
            {
                self.push(
                    &format!("{cp}/system_code"),
                    "`system_code` is letters, digits, `-` and `_`",
                    Some("e.g. system_code: RIGA-TILTS".into()),
                );
            }
        }
        let mut routes = Vec::new();
        let empty_routes = Vec::new();
        let route_list = match obj.get("routes") {
            Some(Value::Array(a)) => a,
            Some(Value::Null) | None => &empty_routes,
            Some(_) => {
                self.push(
                    "/routes",
                    "`routes` must be a list of routes (each item starts with `- id:`)",
                    None,
                );
                &empty_routes
            }
        };
        let mut ids: HashMap<String, u64> = HashMap::new();
        let mut endpoints: HashMap<(String, String), String> = HashMap::new();
        for (i, v) in route_list.iter().enumerate() {
            let ptr = format!("/routes/{i}");
            let Some(cfg) = self.typed::<types::RouteConfig>(&ptr, v) else {
                continue;
            };
            if let Some(line) = ids.get(&cfg.id) {
                self.push(
                    &format!("{ptr}/id"),
                    format!(
                        "duplicate route id `{}` (first used on line {line})",
                        cfg.id
                    ),
                    Some("give every route its own id".into()),
                );
            } else {
                ids.insert(cfg.id.clone(), self.located.pos(&format!("{ptr}/id")).line);
            }
            if let Some(route) = self.check_route(&ptr, &cfg, &systems, &mut endpoints) {
                routes.push(Arc::new(route));
            }
        }
        let mappings = std::mem::take(&mut self.mappings);
        Some(Plan {
            settings,
            systems,
            routes,
            mappings,
        })
    }

    fn check_settings(&mut self, s: &types::ServerSettings) {
        if s.listen.parse::<std::net::SocketAddr>().is_err() {
            self.push(
                "/server/listen",
                "`listen` is not an address",
                Some("write host:port, e.g. 127.0.0.1:8080 or 0.0.0.0:8080".into()),
            );
        }
        if s.body_limit.0 == 0 {
            self.push(
                "/server/body_limit",
                "`body_limit` must be more than 0",
                None,
            );
        }
        if s.header_timeout.0 < Duration::from_secs(1) {
            self.push(
                "/server/header_timeout",
                "`header_timeout` must be at least 1s",
                None,
            );
        }
        if s.http_threads.is_some_and(|n| !(1..=1024).contains(&n)) {
            self.push(
                "/server/http_threads",
                "`http_threads` must be between 1 and 1024",
                Some("leave it out for one thread per CPU".into()),
            );
        }
        self.lease = s.lease.0;
        if s.lease.0 < Duration::from_secs(1) {
            self.push("/server/lease", "`lease` must be at least 1s", None);
        }
        self.mappings_dir = self.base_dir.join(&s.mappings);
        if !self.mappings_dir.is_dir() {
            let ptr = if self.located.value["server"]["mappings"].is_null() {
                ""
            } else {
                "/server/mappings"
            };
            self.push(
                ptr,
                format!(
                    "the mappings folder {} does not exist",
                    self.mappings_dir.display()
                ),
                Some("create it next to the route file, or set `server.mappings`".into()),
            );
        }
    }

    fn check_system(
        &mut self,
        ptr: &str,
        name: &str,
        cfg: &types::SystemConfig,
    ) -> Option<Arc<plan::System>> {
        let timeout = cfg.timeout.map(|d| d.0).unwrap_or(Duration::from_secs(10));
        // A VISS delivery is two requests (StartTransaction, SubmitSync), each with the timeout.
        let requests = match cfg.exchange {
            Some(types::ExchangeConfig::Viss(_)) => 2,
            _ => 1,
        };
        if timeout * requests >= self.lease {
            let what = if requests == 2 {
                "two requests (StartTransaction and SubmitSync) of `timeout` each"
            } else {
                "its `timeout`"
            };
            self.push(
                &format!("{ptr}/timeout"),
                format!("a delivery to `{name}` may take longer than `server.lease` ({:?}): {what}, and another worker would deliver the message again while it is still in flight", self.lease),
                Some("make `server.lease` longer than every delivery, or the timeout shorter".into()),
            );
        }
        let connect_timeout = cfg
            .connect_timeout
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(3));
        if timeout.is_zero() {
            self.push(
                &format!("{ptr}/timeout"),
                "timeout must be more than 0",
                None,
            );
        }
        if let Some(amqp) = &cfg.amqp {
            return self.check_amqp_system(ptr, name, cfg, amqp, connect_timeout, timeout);
        }
        let Some(http) = &cfg.http else {
            self.push(
                ptr,
                format!("system `{name}` says nothing about how to reach it"),
                Some("add `http: { url: https://... }` (or `amqp: { url: amqp://... }` for a broker)".into()),
            );
            return None;
        };
        let url_ptr = format!("{ptr}/http/url");
        let mut ok = true;
        if !self.is_bad(&url_ptr) {
            if !is_http_url(&http.url) {
                ok = false;
                self.push(
                    &url_ptr,
                    "`url` is not an http:// or https:// URL",
                    Some("write e.g. https://registry.example.lv/api or ${REGISTRY_URL}".into()),
                );
            }
        } else {
            ok = false;
        }
        let headers = self.check_static_headers(&format!("{ptr}/http/headers"), &http.headers);
        let mut auth = None;
        let mut token = None;
        match &http.auth {
            None => {}
            Some(types::HttpAuthConfig::Bearer { token }) => {
                auth = Some(HttpAuth::Bearer(token.clone()))
            }
            Some(types::HttpAuthConfig::Basic { username, password }) => {
                auth = Some(HttpAuth::Basic {
                    username: username.clone(),
                    password: password.clone(),
                })
            }
            Some(types::HttpAuthConfig::Oauth2 {
                token_url,
                client_id,
                client_secret,
                scope,
            }) => {
                ok &= self.check_url(&format!("{ptr}/http/auth/oauth2/token_url"), token_url);
                token = Some(TokenSource::OAuth2 {
                    token_url: token_url.clone(),
                    client_id: client_id.clone(),
                    client_secret: Secret::new(client_secret.clone()),
                    scope: scope.clone(),
                });
            }
            Some(types::HttpAuthConfig::Dagr {
                token_url,
                client_id,
            }) => {
                ok &= self.check_url(&format!("{ptr}/http/auth/dagr/token_url"), token_url);
                if http.tls.as_ref().is_none_or(|t| t.client_cert.is_none()) {
                    ok = false;
                    self.push_key(
                        &format!("{ptr}/http/auth/dagr"),
                        "DAGR issues tokens against a client certificate, and this system has none",
                        Some(
                            "add `tls: { client_cert: ..., client_key: ... }` under `http`".into(),
                        ),
                    );
                }
                token = Some(TokenSource::Dagr {
                    token_url: token_url.clone(),
                    client_id: client_id.clone(),
                });
            }
        }
        let tls = match &http.tls {
            None => None,
            Some(t) => {
                let path = |f: &Option<String>| f.as_ref().map(|f| self.base_dir.join(f));
                let (cert, key, ca) = (path(&t.client_cert), path(&t.client_key), path(&t.ca));
                match ClientTls::from_files(cert.as_deref(), key.as_deref(), ca.as_deref()) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        ok = false;
                        self.push(
                            &format!("{ptr}/http/tls"),
                            e.to_string(),
                            Some("give PEM files: client_cert with client_key, and/or ca".into()),
                        );
                        None
                    }
                }
            }
        };
        let (soap, profile) = self.check_exchange(ptr, cfg, &mut ok);
        if !ok {
            return None;
        }
        match HttpSystem::new(HttpSystemSpec {
            name: name.to_string(),
            base_url: http.url.trim_end_matches('/').to_string(),
            timeout,
            connect_timeout,
            headers,
            auth,
            tls,
            token,
        }) {
            Ok(http) => Some(Arc::new(plan::System {
                name: name.to_string(),
                transport: plan::Transport::Http(http),
                soap,
                profile,
            })),
            Err(e) => {
                self.push(ptr, e, None);
                None
            }
        }
    }

    /// A RabbitMQ broker: its URL and topology. Nothing connects here; `tilts serve`
    /// connects on first use and keeps reconnecting.
    fn check_amqp_system(
        &mut self,
        ptr: &str,
        name: &str,
        cfg: &types::SystemConfig,
        amqp: &types::AmqpSystemConfig,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Option<Arc<plan::System>> {
        let mut ok = true;
        for (key, present) in [
            ("http", cfg.http.is_some()),
            ("soap", cfg.soap.is_some()),
            ("exchange", cfg.exchange.is_some()),
        ] {
            if present {
                ok = false;
                self.push_key(
                    &format!("{ptr}/{key}"),
                    format!("system `{name}` is a broker (`amqp`): `{key}` does not apply"),
                    Some("declare the broker and the HTTP/SOAP system as two systems".into()),
                );
            }
        }
        let url_ptr = format!("{ptr}/amqp/url");
        let amqp_url = amqp.url.starts_with("amqp://") || amqp.url.starts_with("amqps://");
        if !self.is_bad(&url_ptr) && !amqp_url {
            ok = false;
            // Never echo the URL: it holds the broker password.
            self.push(
                &url_ptr,
                "`url` is not an amqp:// or amqps:// URL",
                Some("write e.g. amqp://tilts:${AMQP_PASSWORD}@rabbit.example.lv:5672/%2f".into()),
            );
        }
        let mut exchanges = Vec::new();
        let mut names: Vec<&str> = Vec::new();
        for (i, e) in amqp.exchanges.iter().enumerate() {
            let kind = match e.kind.as_deref().unwrap_or("direct") {
                "direct" => ExchangeKind::Direct,
                "topic" => ExchangeKind::Topic,
                "fanout" => ExchangeKind::Fanout,
                "headers" => ExchangeKind::Headers,
                other => {
                    ok = false;
                    self.push(
                        &format!("{ptr}/amqp/exchanges/{i}/type"),
                        format!("`{other}` is not an exchange type"),
                        Some("write direct, topic, fanout or headers".into()),
                    );
                    ExchangeKind::Direct
                }
            };
            if e.name.is_empty() || e.name.starts_with("amq.") {
                ok = false;
                self.push(
                    &format!("{ptr}/amqp/exchanges/{i}/name"),
                    "an exchange tilts declares needs a name that does not start with `amq.`",
                    None,
                );
            }
            names.push(&e.name);
            exchanges.push(ExchangeSpec {
                name: e.name.clone(),
                kind,
                durable: true,
            });
        }
        let mut queues = Vec::new();
        for (i, q) in amqp.queues.iter().enumerate() {
            let qp = format!("{ptr}/amqp/queues/{i}");
            let kind = match q.kind.as_deref().unwrap_or("quorum") {
                "quorum" => QueueKind::Quorum,
                "classic" => QueueKind::Classic,
                other => {
                    ok = false;
                    self.push(
                        &format!("{qp}/type"),
                        format!("`{other}` is not a queue type tilts declares"),
                        Some("write quorum (the default) or classic".into()),
                    );
                    QueueKind::Quorum
                }
            };
            if q.delivery_limit.is_some() && kind != QueueKind::Quorum {
                ok = false;
                self.push_key(
                    &format!("{qp}/delivery_limit"),
                    "`delivery_limit` needs a quorum queue",
                    None,
                );
            }
            for (j, b) in q.bindings.iter().enumerate() {
                if !names.contains(&b.exchange.as_str()) && !b.exchange.starts_with("amq.") {
                    ok = false;
                    self.push(
                        &format!("{qp}/bindings/{j}/exchange"),
                        format!(
                            "exchange `{}` is not declared on system `{name}`",
                            b.exchange
                        ),
                        Some("add it under `exchanges`".into()),
                    );
                }
            }
            if let Some(dlx) = &q.dead_letter_exchange
                && !names.contains(&dlx.as_str())
            {
                ok = false;
                self.push(
                    &format!("{qp}/dead_letter_exchange"),
                    format!("exchange `{dlx}` is not declared on system `{name}`"),
                    Some("add it under `exchanges`, with a queue bound to it".into()),
                );
            }
            queues.push(QueueSpec {
                name: q.name.clone(),
                kind,
                durable: true,
                dead_letter_exchange: q.dead_letter_exchange.clone(),
                dead_letter_routing_key: q.dead_letter_routing_key.clone(),
                delivery_limit: q.delivery_limit,
                bindings: q
                    .bindings
                    .iter()
                    .map(|b| Binding {
                        exchange: b.exchange.clone(),
                        routing_key: b.routing_key.clone(),
                    })
                    .collect(),
            });
        }
        let topology = Topology { exchanges, queues };
        for problem in topology.problems() {
            ok = false;
            self.push(&format!("{ptr}/amqp"), problem, None);
        }
        if !ok {
            return None;
        }
        let spec = AmqpSpec {
            name: name.to_string(),
            url: amqp.url.clone(),
            topology,
            connect_timeout,
            confirm_timeout: timeout,
        };
        Some(Arc::new(plan::System {
            name: name.to_string(),
            transport: plan::Transport::Amqp(Arc::new(plan::AmqpHandle::new(spec))),
            soap: None,
            profile: None,
        }))
    }

    fn check_url(&mut self, ptr: &str, url: &str) -> bool {
        let ok = is_http_url(url);
        if !ok {
            self.push(
                ptr,
                "not an http:// or https:// URL",
                Some("write e.g. https://auth.example.lv/token or ${TOKEN_URL}".into()),
            );
        }
        ok
    }

    /// A system's SOAP framing and exchange profile.
    fn check_exchange(
        &mut self,
        ptr: &str,
        cfg: &types::SystemConfig,
        ok: &mut bool,
    ) -> (Option<plan::Soap>, Option<plan::Profile>) {
        let mut soap = cfg.soap.as_ref().map(|s| {
            let version = match s.version.as_deref() {
                None => SoapVersion::V11,
                Some(v) => v.parse().unwrap_or_else(|e: soap::SoapError| {
                    *ok = false;
                    self.push(&format!("{ptr}/soap/version"), e.to_string(), None);
                    SoapVersion::V11
                }),
            };
            plan::Soap {
                version,
                addressing: s.addressing.unwrap_or(false),
            }
        });
        let xroad = |this: &mut Self, p: &str, x: &types::XRoadConfig, ok: &mut bool| {
            let client = x.client.parse::<XRoadClient>().map_err(|e| {
                this.push(&format!("{p}/client"), e.to_string(), None);
            });
            let service = match &x.service {
                None => Ok(None),
                Some(sv) => sv.parse::<XRoadService>().map(Some).map_err(|e| {
                    this.push(&format!("{p}/service"), e.to_string(), None);
                }),
            };
            match (client, service) {
                (Ok(c), Ok(s)) => Some((c, s)),
                _ => {
                    *ok = false;
                    None
                }
            }
        };
        let profile = match &cfg.exchange {
            None => None,
            Some(types::ExchangeConfig::XRoad(x)) => {
                let p = format!("{ptr}/exchange/x_road");
                match soap {
                    None => {
                        soap = Some(plan::Soap {
                            version: SoapVersion::V11,
                            addressing: false,
                        })
                    }
                    Some(s) if s.version != SoapVersion::V11 => {
                        *ok = false;
                        self.push(
                            &format!("{ptr}/soap/version"),
                            "X-Road 4.0 messages are SOAP 1.1",
                            Some("remove `version` or write \"1.1\"".into()),
                        );
                    }
                    Some(_) => {}
                }
                xroad(self, &p, x, ok)
                    .map(|(client, service)| plan::Profile::XRoad { client, service })
            }
            Some(types::ExchangeConfig::XRoadRest(x)) => {
                let p = format!("{ptr}/exchange/x_road_rest");
                if soap.is_some() {
                    *ok = false;
                    self.push_key(
                        &format!("{ptr}/soap"),
                        "the X-Road REST form is not SOAP",
                        Some(
                            "remove `soap`, or use `exchange: { x_road: ... }` for X-Road SOAP"
                                .into(),
                        ),
                    );
                }
                xroad(self, &p, x, ok)
                    .map(|(client, service)| plan::Profile::XRoadRest { client, service })
            }
            Some(types::ExchangeConfig::Viss(v)) => {
                match soap {
                    None => {
                        soap = Some(plan::Soap {
                            version: SoapVersion::V12,
                            addressing: true,
                        })
                    }
                    Some(s) if s.version != SoapVersion::V12 => {
                        *ok = false;
                        self.push(
                            &format!("{ptr}/soap/version"),
                            "the VISS request service speaks SOAP 1.2",
                            Some("remove `version` or write \"1.2\"".into()),
                        );
                    }
                    Some(ref mut s) => s.addressing = true,
                }
                Some(plan::Profile::Viss {
                    e_service: v.e_service.clone(),
                    sender: v.sender.clone(),
                    destination: v.destination.clone(),
                    message_type: v.message_type.clone(),
                    test: v.test,
                    start_action: v
                        .start_action
                        .clone()
                        .unwrap_or_else(|| profile::VISS_ACTION_START_TRANSACTION.to_string()),
                    submit_action: v
                        .submit_action
                        .clone()
                        .unwrap_or_else(|| profile::VISS_ACTION_SUBMIT_SYNC.to_string()),
                })
            }
            Some(types::ExchangeConfig::Dagr(d)) => {
                if soap.is_some() {
                    *ok = false;
                    self.push_key(
                        &format!("{ptr}/soap"),
                        "DAGR is a REST platform",
                        Some("remove `soap`".into()),
                    );
                }
                Some(plan::Profile::Dagr {
                    permission: d.permission.clone(),
                })
            }
        };
        (soap, profile)
    }

    fn check_static_headers(
        &mut self,
        ptr: &str,
        headers: &std::collections::BTreeMap<String, String>,
    ) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::new();
        for (k, v) in headers {
            let hp = format!("{ptr}/{}", yaml::escape_pointer(k));
            let Ok(name) = HeaderName::from_bytes(k.as_bytes()) else {
                self.push_key(&hp, format!("`{k}` is not a valid header name"), None);
                continue;
            };
            let Ok(value) = HeaderValue::from_str(v) else {
                self.push(&hp, "not a valid header value (visible ASCII only)", None);
                continue;
            };
            out.push((name, value));
        }
        out
    }

    fn check_route(
        &mut self,
        ptr: &str,
        cfg: &types::RouteConfig,
        systems: &HashMap<String, Arc<plan::System>>,
        endpoints: &mut HashMap<(String, String), String>,
    ) -> Option<plan::Route> {
        let mut ok = true;
        if cfg.id.is_empty()
            || !cfg
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            ok = false;
            self.push(
                &format!("{ptr}/id"),
                "a route id is letters, digits, `-` and `_`",
                Some("e.g. `id: company-lookup`".into()),
            );
        }
        if !ident::is_valid_reg_no(&cfg.owner) {
            ok = false;
            let why = ident::reg_no_check_error(&cfg.owner).unwrap_or("is not valid");
            self.push(
                &format!("{ptr}/owner"),
                format!(
                    "`owner` must be the owning institution's Enterprise Register number: {why}"
                ),
                Some("write the 11-digit number in quotes, e.g. owner: \"90000038741\"".into()),
            );
        }
        let (method, src_path, path_ptr, ingress) = match &cfg.from {
            types::Source::Http(src) => {
                let method = match parse_method(&src.method) {
                    Some(m) => m,
                    None => {
                        ok = false;
                        self.push(
                            &format!("{ptr}/from/http/method"),
                            format!("`{}` is not a method routes can take", src.method),
                            Some("write GET, POST, PUT, PATCH or DELETE".into()),
                        );
                        Method::POST
                    }
                };
                (
                    method,
                    src.path.clone(),
                    format!("{ptr}/from/http/path"),
                    plan::Ingress::Http,
                )
            }
            types::Source::Soap(src) => {
                let sp = format!("{ptr}/from/soap");
                let version = match src.version.as_deref() {
                    None => SoapVersion::V11,
                    Some(v) => v.parse().unwrap_or_else(|e: soap::SoapError| {
                        ok = false;
                        self.push(&format!("{sp}/version"), e.to_string(), None);
                        SoapVersion::V11
                    }),
                };
                if !is_xml_name(&src.operation) {
                    ok = false;
                    self.push(
                        &format!("{sp}/operation"),
                        "`operation` is the local name of the request element, e.g. GetPerson",
                        None,
                    );
                }
                let wsdl = src.wsdl.as_ref().and_then(|f| {
                    let path = self.mapping_path(&format!("{sp}/wsdl"), f)?;
                    match std::fs::read_to_string(&path) {
                        Ok(text) => Some(text),
                        Err(e) => {
                            ok = false;
                            self.push(
                                &format!("{sp}/wsdl"),
                                format!("cannot read {}: {e}", path.display()),
                                None,
                            );
                            None
                        }
                    }
                });
                if src.wsdl.is_some() && wsdl.is_none() {
                    ok = false;
                }
                let gp = (Method::GET.to_string(), normalize_path(&src.path));
                if let Some(other) = endpoints.get(&gp) {
                    ok = false;
                    self.push(
                        &format!("{sp}/path"),
                        format!(
                            "GET {} (the WSDL) is already taken by route `{other}`",
                            src.path
                        ),
                        Some("give each route its own path".into()),
                    );
                } else {
                    endpoints.insert(gp, cfg.id.clone());
                }
                (
                    Method::POST,
                    src.path.clone(),
                    format!("{sp}/path"),
                    plan::Ingress::Soap(plan::SoapIngress {
                        version,
                        operation: src.operation.clone(),
                        namespace: src
                            .namespace
                            .clone()
                            .unwrap_or_else(|| format!("urn:x-tilts:{}", cfg.id)),
                        wsdl,
                    }),
                )
            }
            types::Source::Amqp(src) => {
                let sp = format!("{ptr}/from/amqp");
                let ingress = match systems.get(&src.system) {
                    // The queue may be declared by tilts or by whoever runs the broker.
                    Some(sys) if sys.amqp().is_some() => Some(plan::Ingress::Amqp {
                        system: sys.clone(),
                        queue: src.queue.clone(),
                        prefetch: src.prefetch.unwrap_or(16).max(1),
                    }),
                    Some(_) => {
                        ok = false;
                        self.push(
                            &format!("{sp}/system"),
                            format!("system `{}` is not a broker", src.system),
                            Some("consume from a system declared with `amqp: { url: ... }`".into()),
                        );
                        None
                    }
                    None => {
                        ok = false;
                        if !self.system_names.contains(&src.system) {
                            self.push(
                                &format!("{sp}/system"),
                                format!("unknown system `{}`", src.system),
                                closest(&src.system, self.system_names.iter().map(String::as_str))
                                    .map(|c| format!("did you mean `{c}`?")),
                            );
                        }
                        None
                    }
                };
                if src.queue.is_empty() {
                    ok = false;
                    self.push(&format!("{sp}/queue"), "`queue` is empty", None);
                }
                (
                    Method::POST,
                    String::new(),
                    sp,
                    ingress.unwrap_or(plan::Ingress::Http),
                )
            }
            types::Source::Timer(src) => {
                let sp = format!("{ptr}/from/timer");
                if cfg.delivery != types::Delivery::Queued {
                    ok = false;
                    self.push_key(
                        &format!("{ptr}/from"),
                        "a timer route must be `delivery: queued`: each run is stored together with the next run time, so a restart neither skips nor doubles it",
                        Some("add `delivery: queued` and a `to:`".into()),
                    );
                }
                let parser = croner::parser::CronParser::builder()
                    .seconds(croner::parser::Seconds::Optional)
                    .build();
                let cron = match parser.parse(&src.cron) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        ok = false;
                        self.push(
                            &format!("{sp}/cron"),
                            format!("not a cron expression: {e}"),
                            Some("write `sec min hour day month weekday`, e.g. \"0 0 6 * * MON-FRI\"".into()),
                        );
                        None
                    }
                };
                let tz_name = src.timezone.as_deref().unwrap_or("Europe/Riga");
                let timezone = match tz_name.parse::<chrono_tz::Tz>() {
                    Ok(tz) => Some(tz),
                    Err(_) => {
                        ok = false;
                        self.push(
                            &format!("{sp}/timezone"),
                            format!("`{tz_name}` is not a time zone"),
                            Some("write an IANA name such as Europe/Riga or UTC".into()),
                        );
                        None
                    }
                };
                let ingress = match (cron, timezone) {
                    (Some(cron), Some(timezone)) => {
                        plan::Ingress::Timer(Box::new(plan::TimerSchedule {
                            expression: src.cron.clone(),
                            cron,
                            timezone,
                            catch_up: src.catch_up.unwrap_or(10),
                        }))
                    }
                    _ => plan::Ingress::Http,
                };
                (Method::POST, String::new(), sp, ingress)
            }
        };
        let src_path = &src_path;
        let http_path = matches!(ingress, plan::Ingress::Http | plan::Ingress::Soap(_))
            && matches!(cfg.from, types::Source::Http(_) | types::Source::Soap(_));
        // AMQP and timer routes have no HTTP endpoint.
        let path_check = if http_path {
            check_route_path(src_path)
        } else {
            Err(String::new())
        };
        match path_check {
            Err(_) if !http_path => {}
            Err(msg) => {
                ok = false;
                self.push(
                    &path_ptr,
                    msg,
                    Some("e.g. `path: /v1/cases/{caseId}`".into()),
                );
            }
            Ok(()) => {
                let key = (method.to_string(), normalize_path(src_path));
                if let Some(other) = endpoints.get(&key) {
                    ok = false;
                    let msg = format!(
                        "{} {} is already taken by route `{other}`",
                        method, src_path
                    );
                    self.push(
                        &path_ptr,
                        msg,
                        Some("give each route its own method and path".into()),
                    );
                } else {
                    endpoints.insert(key, cfg.id.clone());
                }
            }
        }
        let mut names: Vec<String> = BUILTIN_NAMES.iter().map(|s| s.to_string()).collect();
        let steps = self.check_steps(
            &format!("{ptr}/steps"),
            "steps",
            &cfg.steps,
            systems,
            &mut names,
            &cfg.id,
        );
        let to = cfg.to.as_ref().and_then(|d| {
            let call = types::CallStep {
                system: d.system.clone(),
                method: Some(d.method.clone().unwrap_or_else(|| "POST".into())),
                path: d.path.clone(),
                body: None,
                headers: d.headers.clone(),
                as_name: String::new(),
                accept: d.accept.clone(),
                timeout: None,
                action: d.action.clone(),
                faults: None,
                service: d.service.clone(),
                message_type: d.message_type.clone(),
                permission: d.permission.clone(),
                user_id: d.user_id.clone(),
                exchange: d.exchange.clone(),
                routing_key: d.routing_key.clone(),
            };
            self.check_call(
                &format!("{ptr}/to"),
                "to",
                &call,
                systems,
                &names,
                &cfg.id,
                false,
            )
        });
        if cfg.to.is_some() && to.is_none() {
            ok = false;
        }
        let queued = cfg.delivery == types::Delivery::Queued;
        if queued {
            if cfg.to.is_none() {
                ok = false;
                self.push(
                    &format!("{ptr}/delivery"),
                    "a queued route needs a destination",
                    Some(
                        "add `to: { system: ..., path: ... }`: workers deliver the message there"
                            .into(),
                    ),
                );
            }
            ok &= self.check_queued_steps(&format!("{ptr}/steps"), &cfg.steps);
            if cfg.fallback.is_some() {
                ok = false;
                self.push_key(
                    &format!("{ptr}/fallback"),
                    "a queued route always queues: `fallback` is for sync routes",
                    Some("remove `fallback`".into()),
                );
            }
        } else if cfg.fallback.is_some() {
            if cfg.to.is_none() {
                ok = false;
                self.push_key(
                    &format!("{ptr}/fallback"),
                    "`fallback: queue` needs a destination: it queues the delivery to `to`",
                    Some("add `to: { system: ..., path: ... }`".into()),
                );
            }
        } else {
            for key in ["ordering_key", "retry", "concurrency"] {
                if !self
                    .located
                    .value
                    .pointer(&format!("{ptr}/{key}"))
                    .is_none_or(Value::is_null)
                {
                    ok = false;
                    self.push_key(
                        &format!("{ptr}/{key}"),
                        format!("`{key}` applies to queued routes only"),
                        Some("add `delivery: queued` (or `fallback: queue`), or remove it".into()),
                    );
                }
            }
        }
        let ordering_key = cfg.ordering_key.as_ref().and_then(|k| {
            let t = self.inline(
                &format!("{ptr}/ordering_key"),
                Format::Text,
                &format!("{}/ordering_key", cfg.id),
                k,
            );
            if t.is_none() {
                ok = false;
            }
            t
        });
        let retry = cfg
            .retry
            .as_ref()
            .map(|r| self.check_retry(&format!("{ptr}/retry"), r))
            .unwrap_or_default();
        let concurrency = cfg.concurrency.unwrap_or(8);
        if concurrency == 0 {
            ok = false;
            self.push(
                &format!("{ptr}/concurrency"),
                "concurrency must be at least 1",
                None,
            );
        }
        let steps = steps?;
        ok.then(|| plan::Route {
            id: cfg.id.clone(),
            owner: cfg.owner.clone(),
            description: cfg.description.clone(),
            method,
            path: src_path.clone(),
            ingress,
            steps,
            to,
            delivery: cfg.delivery,
            ordering_key,
            retry,
            concurrency: concurrency as usize,
            fallback_queue: cfg.fallback == Some(types::Fallback::Queue),
            about: self.route_about(ptr),
        })
    }

    /// The systems, files and version of the route at `ptr`, for the catalogue.
    fn route_about(&self, ptr: &str) -> plan::RouteAbout {
        use sha2::{Digest, Sha256};
        let hex = |d: &[u8]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let def = self.located.value.pointer(ptr).cloned().unwrap_or_default();
        let mut systems = Vec::new();
        let mut files = Vec::new();
        let mut stack = vec![(String::new(), &def)];
        while let Some((key, v)) = stack.pop() {
            match v {
                Value::Object(m) => stack.extend(m.iter().map(|(k, v)| (k.clone(), v))),
                Value::Array(a) => stack.extend(a.iter().map(|v| (key.clone(), v))),
                Value::String(s) if key == "system" => systems.push(s.clone()),
                Value::String(s) => {
                    let path = self.mappings_dir.join(s);
                    if s.contains('.')
                        && !s.contains("{{")
                        && path.is_file()
                        && let Ok(bytes) = std::fs::read(&path)
                    {
                        files.push((s.clone(), hex(&Sha256::digest(&bytes))));
                    }
                }
                _ => {}
            }
        }
        systems.sort();
        systems.dedup();
        files.sort();
        files.dedup();
        let mut h = Sha256::new();
        h.update(serde_json::to_vec(&def).unwrap_or_default());
        for (name, sum) in &files {
            h.update(name.as_bytes());
            h.update(sum.as_bytes());
        }
        plan::RouteAbout {
            systems,
            files,
            version: hex(&h.finalize()),
        }
    }

    /// A queued route's steps run when the message comes in, before it is stored: they may
    /// validate, map and choose, but not call systems or answer (the answer is 202).
    fn check_queued_steps(&mut self, ptr: &str, steps: &[types::Step]) -> bool {
        let mut ok = true;
        for (i, step) in steps.iter().enumerate() {
            let sp = format!("{ptr}/{i}/{}", step.kind());
            match step {
                types::Step::Call(_) | types::Step::Respond(_) => {
                    ok = false;
                    self.push_key(
                        &sp,
                        format!("a queued route cannot `{}`: its steps run before the message is stored, and the caller gets 202", step.kind()),
                        Some("deliver with `to:`; use a sync route for request/response".into()),
                    );
                }
                types::Step::Choice(branches) => {
                    for (j, b) in branches.iter().enumerate() {
                        let bp = format!("{sp}/{j}");
                        if b.respond.is_some() {
                            ok = false;
                            self.push_key(
                                &format!("{bp}/respond"),
                                "a queued route cannot `respond`",
                                Some("use `steps:` with `map` in the branch".into()),
                            );
                        }
                        ok &= self.check_queued_steps(&format!("{bp}/steps"), &b.steps);
                        if let Some(o) = &b.otherwise {
                            ok &= self.check_queued_steps(&format!("{bp}/otherwise"), o);
                        }
                    }
                }
                _ => {}
            }
        }
        ok
    }

    fn check_retry(&mut self, ptr: &str, r: &types::RetryConfig) -> crate::retry::RetryPolicy {
        let p = crate::retry::RetryPolicy::from_config(r);
        if p.max_attempts == 0 {
            self.push(
                &format!("{ptr}/max_attempts"),
                "max_attempts counts the first attempt too: at least 1",
                None,
            );
        }
        if !(1.0..=10.0).contains(&p.multiplier) {
            self.push(
                &format!("{ptr}/multiplier"),
                "multiplier must be from 1 to 10",
                Some("2 doubles the delay after each attempt".into()),
            );
        }
        if p.initial.is_zero() {
            self.push(
                &format!("{ptr}/initial"),
                "initial must be more than 0",
                None,
            );
        }
        if p.max_delay < p.initial {
            self.push(
                &format!("{ptr}/max_delay"),
                "max_delay is shorter than initial",
                None,
            );
        }
        p
    }

    #[allow(clippy::too_many_arguments)]
    fn check_steps(
        &mut self,
        ptr: &str,
        label: &str,
        steps: &[types::Step],
        systems: &HashMap<String, Arc<plan::System>>,
        names: &mut Vec<String>,
        route_id: &str,
    ) -> Option<Vec<plan::Step>> {
        let mut out = Vec::new();
        let mut ok = true;
        for (i, step) in steps.iter().enumerate() {
            let sp = format!("{ptr}/{i}/{}", step.kind());
            let sl = format!("{label}[{i}].{}", step.kind());
            let compiled = match step {
                types::Step::Validate(file) => self
                    .schema(&sp, file)
                    .map(|schema| plan::Step::Validate { label: sl, schema }),
                types::Step::Map(m) => {
                    let (file, as_name, fptr) = match m {
                        types::MapStep::Replace(f) => (f, None, sp.clone()),
                        types::MapStep::Named(n) => (
                            &n.template,
                            Some(n.as_name.clone()),
                            format!("{sp}/template"),
                        ),
                    };
                    if let Some(n) = &as_name
                        && !self.define_name(&format!("{sp}/as"), n, names)
                    {
                        ok = false;
                    }
                    self.template(&fptr, file).map(|template| plan::Step::Map {
                        label: sl,
                        template,
                        as_name,
                    })
                }
                types::Step::Call(c) => {
                    let call = self.check_call(&sp, &sl, c, systems, names, route_id, true);
                    if !self.define_name(&format!("{sp}/as"), &c.as_name, names) {
                        ok = false;
                    }
                    call.map(|call| plan::Step::Call {
                        label: sl,
                        call: Box::new(call),
                    })
                }
                types::Step::Choice(branches) => self
                    .check_choice(&sp, &sl, branches, systems, names, route_id)
                    .map(|branches| plan::Step::Choice {
                        label: sl,
                        branches,
                    }),
                types::Step::Respond(r) => self
                    .check_respond(&sp, &sl, r, route_id)
                    .map(|respond| plan::Step::Respond { label: sl, respond }),
            };
            match compiled {
                Some(s) => out.push(s),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn check_choice(
        &mut self,
        ptr: &str,
        label: &str,
        branches: &[types::ChoiceBranch],
        systems: &HashMap<String, Arc<plan::System>>,
        names: &mut Vec<String>,
        route_id: &str,
    ) -> Option<Vec<plan::Branch>> {
        let mut out = Vec::new();
        let mut ok = true;
        if branches.is_empty() {
            self.push(
                ptr,
                "a choice needs at least one branch",
                Some("add `- when: <condition>` with `steps:` or `respond:`".into()),
            );
            return None;
        }
        for (i, b) in branches.iter().enumerate() {
            let bp = format!("{ptr}/{i}");
            let bl = format!("{label}[{i}]");
            let (when, steps_cfg, steps_ptr, steps_label): (
                Option<Expr>,
                Vec<types::Step>,
                String,
                String,
            ) = match (&b.when, &b.otherwise) {
                (Some(_), Some(_)) => {
                    ok = false;
                    self.push(
                        &format!("{bp}/otherwise"),
                        "a branch has either `when` or `otherwise`, not both",
                        None,
                    );
                    continue;
                }
                (None, None) => {
                    ok = false;
                    self.push(
                        &bp,
                        "a branch needs `when: <condition>` (or `otherwise:` as the last branch)",
                        None,
                    );
                    continue;
                }
                (None, Some(steps)) => {
                    if i + 1 != branches.len() {
                        ok = false;
                        self.push_key(
                            &format!("{bp}/otherwise"),
                            "`otherwise` must be the last branch",
                            Some("move it to the end of the choice".into()),
                        );
                    }
                    if !b.steps.is_empty() || b.respond.is_some() {
                        ok = false;
                        self.push(
                            &bp,
                            "put the steps of `otherwise` under it: `otherwise: [ ... ]`",
                            None,
                        );
                    }
                    (
                        None,
                        steps.clone(),
                        format!("{bp}/otherwise"),
                        format!("{bl}.otherwise"),
                    )
                }
                (Some(cond), None) => {
                    let wp = format!("{bp}/when");
                    let expr = match Expr::parse(cond) {
                        Ok(e) => {
                            for (root, off) in e.roots() {
                                if !names.contains(&root) {
                                    ok = false;
                                    let help = closest(&root, names.iter().map(String::as_str))
                                        .map(|c| format!("did you mean `{c}`?"))
                                        .unwrap_or_else(|| {
                                            format!("names here: {}", names.join(", "))
                                        });
                                    self.push(
                                        &wp,
                                        format!(
                                            "unknown name `{root}` in condition (at character {})",
                                            off + 1
                                        ),
                                        Some(help),
                                    );
                                }
                            }
                            Some(e)
                        }
                        Err(e) => {
                            ok = false;
                            self.push(
                                &wp,
                                format!("condition: {} (at character {})", e.message, e.offset + 1),
                                None,
                            );
                            None
                        }
                    };
                    let mut steps = b.steps.clone();
                    if let Some(r) = &b.respond {
                        steps.push(types::Step::Respond(r.clone()));
                    }
                    if steps.is_empty() {
                        ok = false;
                        self.push(
                            &bp,
                            "this branch does nothing",
                            Some("add `steps: [...]` or `respond: {...}`".into()),
                        );
                    }
                    let sp = if b.respond.is_some() && b.steps.is_empty() {
                        // A shorthand respond is reported at the `respond` key.
                        bp.clone()
                    } else {
                        format!("{bp}/steps")
                    };
                    (expr, steps, sp, format!("{bl}.steps"))
                }
            };
            let compiled = if steps_ptr == bp {
                // Shorthand `respond:` → one step located at the branch's `respond` key.
                let r = b.respond.as_ref().expect("shorthand branch has respond");
                self.check_respond(
                    &format!("{bp}/respond"),
                    &format!("{bl}.respond"),
                    r,
                    route_id,
                )
                .map(|respond| {
                    vec![plan::Step::Respond {
                        label: format!("{bl}.respond"),
                        respond,
                    }]
                })
            } else {
                self.check_steps(
                    &steps_ptr,
                    &steps_label,
                    &steps_cfg,
                    systems,
                    names,
                    route_id,
                )
            };
            match compiled {
                Some(steps) => out.push(plan::Branch { when, steps }),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn define_name(&mut self, ptr: &str, name: &str, names: &mut Vec<String>) -> bool {
        if name.is_empty()
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            || name.starts_with(|c: char| c.is_ascii_digit())
        {
            self.push(
                ptr,
                format!("`{name}` cannot be a name: use letters, digits and `_`"),
                Some("e.g. `as: company`".into()),
            );
            return false;
        }
        if BUILTIN_NAMES.contains(&name) {
            self.push(
                ptr,
                format!("`{name}` is a built-in name"),
                Some(format!(
                    "pick another name; built-ins are {}",
                    BUILTIN_NAMES.join(", ")
                )),
            );
            return false;
        }
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
        true
    }

    #[allow(clippy::too_many_arguments)]
    fn check_call(
        &mut self,
        ptr: &str,
        label: &str,
        c: &types::CallStep,
        systems: &HashMap<String, Arc<plan::System>>,
        _names: &[String],
        route_id: &str,
        is_step: bool,
    ) -> Option<plan::Call> {
        let mut ok = true;
        let system = match systems.get(&c.system) {
            Some(s) => Some(s.clone()),
            None => {
                ok = false;
                if !self.system_names.contains(&c.system) {
                    let help = closest(&c.system, self.system_names.iter().map(String::as_str))
                        .map(|s| format!("did you mean `{s}`?"))
                        .unwrap_or_else(|| {
                            if self.system_names.is_empty() {
                                "declare it under `systems:` at the top of the file".into()
                            } else {
                                format!("declared systems: {}", self.system_names.join(", "))
                            }
                        });
                    self.push(
                        &format!("{ptr}/system"),
                        format!("unknown system `{}`", c.system),
                        Some(help),
                    );
                }
                // A declared but broken system was reported where it is declared.
                None
            }
        };
        let method = match &c.method {
            None => Method::POST,
            Some(m) => match parse_method(m) {
                Some(m) => m,
                None => {
                    ok = false;
                    self.push(
                        &format!("{ptr}/method"),
                        format!("`{m}` is not an HTTP method tilts sends"),
                        Some("write GET, POST, PUT, PATCH or DELETE".into()),
                    );
                    Method::GET
                }
            },
        };
        let path = if c.path.is_empty() {
            None
        } else {
            let name = format!("{route_id}/{label}.path");
            self.inline(&format!("{ptr}/path"), Format::Url, &name, &c.path)
        };
        if !c.path.is_empty() && path.is_none() {
            ok = false;
        }
        if !c.path.is_empty() && !c.path.starts_with('/') && !c.path.starts_with('?') {
            ok = false;
            self.push(
                &format!("{ptr}/path"),
                "a path starts with `/` (or `?` for a query only)",
                None,
            );
        }
        let body = match &c.body {
            Some(f) => {
                let t = self.template(&format!("{ptr}/body"), f);
                if t.is_none() {
                    ok = false;
                }
                t
            }
            None => None,
        };
        let mut headers = Vec::new();
        for (k, v) in &c.headers {
            let hp = format!("{ptr}/headers/{}", yaml::escape_pointer(k));
            match HeaderName::from_bytes(k.as_bytes()) {
                Ok(h) => {
                    if let Some(t) = self.inline(
                        &hp,
                        Format::Text,
                        &format!("{route_id}/{label}.headers.{k}"),
                        v,
                    ) {
                        headers.push((h, t));
                    } else {
                        ok = false;
                    }
                }
                Err(_) => {
                    ok = false;
                    self.push_key(&hp, format!("`{k}` is not a valid header name"), None);
                }
            }
        }
        let accept = if c.accept.is_empty() {
            vec![StatusPattern::Class(2)]
        } else {
            c.accept.clone()
        };
        if let Some(t) = c.timeout
            && t.0.is_zero()
        {
            ok = false;
            self.push(
                &format!("{ptr}/timeout"),
                "timeout must be more than 0",
                None,
            );
        }
        let ex = system
            .as_ref()
            .and_then(|sys| self.check_call_exchange(ptr, label, c, sys, route_id, &mut ok));
        let mut exchange = String::new();
        let mut routing_key = None;
        match system.as_ref().and_then(|s| s.amqp().map(|a| (s, a))) {
            Some((sys, amqp)) => {
                if is_step {
                    ok = false;
                    self.push(
                        &format!("{ptr}/system"),
                        format!("`{}` is a broker: a `call` waits for an answer, and a broker gives none", sys.name),
                        Some("publish with the route's `to: { system, exchange, routing_key }`".into()),
                    );
                }
                if !c.path.is_empty() {
                    ok = false;
                    self.push_key(
                        &format!("{ptr}/path"),
                        "a broker has no paths",
                        Some("use `exchange` and `routing_key`".into()),
                    );
                }
                exchange = c.exchange.clone().unwrap_or_default();
                let declared = exchange.is_empty()
                    || exchange.starts_with("amq.")
                    || amqp
                        .spec
                        .topology
                        .exchanges
                        .iter()
                        .any(|e| e.name == exchange);
                if !declared {
                    ok = false;
                    self.push(
                        &format!("{ptr}/exchange"),
                        format!(
                            "exchange `{exchange}` is not declared on system `{}`",
                            sys.name
                        ),
                        Some("add it under the system's `amqp.exchanges`".into()),
                    );
                }
                let rk = c.routing_key.clone().unwrap_or_default();
                routing_key = self.inline(
                    &format!("{ptr}/routing_key"),
                    Format::Text,
                    &format!("{route_id}/{label}.routing_key"),
                    &rk,
                );
                if routing_key.is_none() {
                    ok = false;
                }
            }
            None => {
                for (field, present) in [
                    ("exchange", c.exchange.is_some()),
                    ("routing_key", c.routing_key.is_some()),
                ] {
                    if present && system.is_some() {
                        ok = false;
                        self.push_key(
                            &format!("{ptr}/{field}"),
                            format!("`{field}` applies to brokers (`amqp` systems), and system `{}` is not one", c.system),
                            Some(format!("remove `{field}`")),
                        );
                    }
                }
            }
        }
        if !ok {
            return None;
        }
        let ex = ex?;
        Some(plan::Call {
            system: system?,
            method,
            path,
            body,
            headers,
            as_name: (!c.as_name.is_empty()).then(|| c.as_name.clone()),
            accept,
            timeout: c.timeout.map(|d| d.0),
            action: c.action.clone(),
            accept_faults: c.faults == Some(types::FaultHandling::Accept),
            service: ex.service,
            message_type: ex.message_type,
            permission: ex.permission,
            user_id: ex.user_id,
            exchange,
            routing_key,
        })
    }

    /// The profile-specific fields of a call, checked against the system they go to.
    fn check_call_exchange(
        &mut self,
        ptr: &str,
        label: &str,
        c: &types::CallStep,
        sys: &plan::System,
        route_id: &str,
        ok: &mut bool,
    ) -> Option<CallExchange> {
        let name = &sys.name;
        let mut out = CallExchange::default();
        let not_for = |this: &mut Self, field: &str, what: &str| {
            let declare = match what {
                "SOAP systems" => "`soap:`",
                "X-Road systems" => "`exchange: { x_road: ... }`",
                "VISS systems" => "`exchange: { viss: ... }`",
                "DAGR systems" => "`exchange: { dagr: ... }`",
                _ => "an `exchange:` profile",
            };
            this.push_key(
                &format!("{ptr}/{field}"),
                format!("`{field}` applies to {what}, and system `{name}` is not one"),
                Some(format!(
                    "remove `{field}`, or give system `{name}` {declare}"
                )),
            );
        };
        if sys.soap.is_none() {
            if c.action.is_some() {
                *ok = false;
                not_for(self, "action", "SOAP systems");
            }
            if c.faults.is_some() {
                *ok = false;
                not_for(self, "faults", "SOAP systems");
            }
        } else if let Some(soap) = sys.soap
            && soap.addressing
            && c.action.is_none()
            && !matches!(sys.profile, Some(plan::Profile::Viss { .. }))
        {
            *ok = false;
            self.push(
                ptr,
                format!("system `{name}` sends WS-Addressing headers, which need an Action"),
                Some("add `action: <the operation's action URI>`".into()),
            );
        }
        match &sys.profile {
            Some(plan::Profile::XRoad { service, .. })
            | Some(plan::Profile::XRoadRest { service, .. }) => {
                out.service = match &c.service {
                    Some(sv) => match sv.parse::<XRoadService>() {
                        Ok(s) => Some(s),
                        Err(e) => {
                            *ok = false;
                            self.push(&format!("{ptr}/service"), e.to_string(), None);
                            None
                        }
                    },
                    None => service.clone(),
                };
                if out.service.is_none() && c.service.is_none() {
                    *ok = false;
                    self.push(
                        ptr,
                        format!(
                            "an X-Road call needs a service, and system `{name}` has no default"
                        ),
                        Some("add `service: INSTANCE/CLASS/MEMBER/SUBSYSTEM/SERVICE`".into()),
                    );
                }
            }
            _ if c.service.is_some() => {
                *ok = false;
                not_for(self, "service", "X-Road systems");
            }
            _ => {}
        }
        match &sys.profile {
            Some(plan::Profile::Viss { message_type, .. }) => {
                out.message_type = c.message_type.clone().or_else(|| message_type.clone());
                if out.message_type.is_none() {
                    *ok = false;
                    self.push(
                        ptr,
                        format!(
                            "a VISS call needs a MessageType, and system `{name}` has no default"
                        ),
                        Some("add `message_type: URN:IVIS:...`".into()),
                    );
                }
            }
            _ if c.message_type.is_some() => {
                *ok = false;
                not_for(self, "message_type", "VISS systems");
            }
            _ => {}
        }
        match &sys.profile {
            Some(plan::Profile::Dagr { permission }) => {
                out.permission = c.permission.clone().or_else(|| permission.clone());
                if out.permission.is_none() {
                    *ok = false;
                    self.push(
                        ptr,
                        format!(
                            "a DAGR call needs a permission, and system `{name}` has no default"
                        ),
                        Some("add `permission: <permission number>`".into()),
                    );
                }
            }
            _ if c.permission.is_some() => {
                *ok = false;
                not_for(self, "permission", "DAGR systems");
            }
            _ => {}
        }
        if let Some(u) = &c.user_id {
            if matches!(
                sys.profile,
                Some(plan::Profile::XRoad { .. })
                    | Some(plan::Profile::XRoadRest { .. })
                    | Some(plan::Profile::Viss { .. })
            ) {
                out.user_id = self.inline(
                    &format!("{ptr}/user_id"),
                    Format::Text,
                    &format!("{route_id}/{label}.user_id"),
                    u,
                );
                if out.user_id.is_none() {
                    *ok = false;
                }
            } else {
                *ok = false;
                not_for(self, "user_id", "X-Road and VISS systems");
            }
        }
        Some(out)
    }

    fn check_respond(
        &mut self,
        ptr: &str,
        label: &str,
        r: &types::RespondStep,
        route_id: &str,
    ) -> Option<plan::Respond> {
        let mut ok = true;
        if !(100..=599).contains(&r.status) {
            ok = false;
            self.push(
                &format!("{ptr}/status"),
                format!("{} is not an HTTP status", r.status),
                Some("write a status from 100 to 599".into()),
            );
        }
        let body = match &r.body {
            Some(f) => {
                let t = self.template(&format!("{ptr}/body"), f);
                ok &= t.is_some();
                t
            }
            None => None,
        };
        let mut headers = Vec::new();
        for (k, v) in &r.headers {
            let hp = format!("{ptr}/headers/{}", yaml::escape_pointer(k));
            match HeaderName::from_bytes(k.as_bytes()) {
                Ok(h) => match self.inline(
                    &hp,
                    Format::Text,
                    &format!("{route_id}/{label}.headers.{k}"),
                    v,
                ) {
                    Some(t) => headers.push((h, t)),
                    None => ok = false,
                },
                Err(_) => {
                    ok = false;
                    self.push_key(&hp, format!("`{k}` is not a valid header name"), None);
                }
            }
        }
        ok.then_some(plan::Respond {
            status: r.status,
            body,
            headers,
        })
    }

    /// Compiles an inline template written in routes.yaml (paths, header values).
    fn inline(
        &mut self,
        ptr: &str,
        format: Format,
        name: &str,
        source: &str,
    ) -> Option<TemplateRef> {
        match self.mappings.add(format, name, source) {
            Ok(t) => Some(t),
            Err(e) => {
                self.push(
                    ptr,
                    format!(
                        "template syntax: {} (at {}:{} of the value)",
                        e.message, e.line, e.column
                    ),
                    None,
                );
                None
            }
        }
    }

    /// Resolves a file name in the mappings folder, refusing names that escape it.
    fn mapping_path(&mut self, ptr: &str, file: &str) -> Option<PathBuf> {
        let rel = Path::new(file);
        if file.is_empty()
            || rel.is_absolute()
            || rel.components().any(|c| !matches!(c, Component::Normal(_)))
        {
            self.push(ptr, format!("`{file}` must be a path inside the mappings folder"), Some("write it relative to the mappings folder, without `..`, e.g. company-lookup/response.json.hbs".into()));
            return None;
        }
        let full = self.mappings_dir.join(rel);
        if !full.is_file() {
            let dir = full
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| self.mappings_dir.clone());
            let fname = rel.file_name().and_then(|f| f.to_str()).unwrap_or(file);
            let siblings: Vec<String> = std::fs::read_dir(&dir)
                .map(|rd| {
                    rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                        .collect()
                })
                .unwrap_or_default();
            let help = closest(fname, siblings.iter().map(String::as_str))
                .map(|c| {
                    format!(
                        "did you mean `{}`?",
                        Path::new(file).with_file_name(c).display()
                    )
                })
                .unwrap_or_else(|| format!("create {}", full.display()));
            self.push(
                ptr,
                format!("file `{file}` not found in {}", self.mappings_dir.display()),
                Some(help),
            );
            return None;
        }
        Some(full)
    }

    fn template(&mut self, ptr: &str, file: &str) -> Option<TemplateRef> {
        if self.is_bad(ptr) {
            return None;
        }
        if let Some(t) = self.templates.get(file) {
            return t.clone();
        }
        let full = self.mapping_path(ptr, file)?;
        if !file.ends_with(".hbs") {
            self.push(
                ptr,
                format!("`{file}` is not a template"),
                Some("templates end in .json.hbs, .xml.hbs or .txt.hbs".into()),
            );
            return None;
        }
        let result = match self.mappings.add_file(file, &full) {
            Ok(t) => Some(t),
            Err(Err(e)) => {
                self.push(ptr, format!("cannot read `{file}`: {e}"), None);
                None
            }
            Err(Ok(e)) => {
                let used = self.context(ptr);
                let pos = self.located.pos(ptr);
                self.diags.push(Diagnostic {
                    file: full.clone(),
                    line: e.line as u64,
                    column: e.column as u64,
                    context: format!("template used by {used} ({}:{})", self.file.display(), pos.line),
                    message: format!("template syntax: {}", e.message),
                    help: Some("check that every {{#if}}/{{#each}} has its {{/if}}/{{/each}} and that every {{ is closed".into()),
                });
                None
            }
        };
        self.templates.insert(file.to_string(), result.clone());
        result
    }

    fn schema(&mut self, ptr: &str, file: &str) -> Option<Arc<Schema>> {
        if self.is_bad(ptr) {
            return None;
        }
        if let Some(s) = self.schemas.get(file) {
            return s.clone();
        }
        let full = self.mapping_path(ptr, file)?;
        let used = format!(
            "schema used by {} ({}:{})",
            self.context(ptr),
            self.file.display(),
            self.located.pos(ptr).line
        );
        let result = (|| {
            let text = match std::fs::read_to_string(&full) {
                Ok(t) => t,
                Err(e) => {
                    self.push(ptr, format!("cannot read `{file}`: {e}"), None);
                    return None;
                }
            };
            let doc: Value = match serde_json::from_str(&text) {
                Ok(d) => d,
                Err(e) => {
                    self.diags.push(Diagnostic {
                        file: full.clone(),
                        line: e.line() as u64,
                        column: e.column() as u64,
                        context: used.clone(),
                        message: format!(
                            "not valid JSON: {}",
                            e.to_string().split(" at line ").next().unwrap_or("")
                        ),
                        help: None,
                    });
                    return None;
                }
            };
            match Schema::compile(file, &doc) {
                Ok(s) => Some(Arc::new(s)),
                Err(e) => {
                    // JSON is YAML: reuse the YAML reader for the position of the bad keyword.
                    let pos = yaml::parse(&text)
                        .map(|l| l.pos(&e.pointer))
                        .unwrap_or_default();
                    self.diags.push(Diagnostic {
                        file: full.clone(),
                        line: pos.line.max(1),
                        column: pos.column.max(1),
                        context: used.clone(),
                        message: format!("{} (at {})", e.message, if e.pointer.is_empty() { "the root" } else { &e.pointer }),
                        help: Some("see https://json-schema.org/draft/2020-12 for the keywords and their values".into()),
                    });
                    None
                }
            }
        })();
        self.schemas.insert(file.to_string(), result.clone());
        result
    }
}

/// Whether `url` is an absolute http:// or https:// URL with a host.
fn is_http_url(url: &str) -> bool {
    url.parse::<http::Uri>()
        .is_ok_and(|u| matches!(u.scheme_str(), Some("http") | Some("https")) && u.host().is_some())
}

/// Whether `s` is an XML NCName-ish element name (letters, digits, `_`, `-`, `.`; not starting
/// with a digit, `-` or `.`).
fn is_xml_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// The profile-specific part of a compiled call.
#[derive(Default)]
struct CallExchange {
    service: Option<XRoadService>,
    message_type: Option<String>,
    permission: Option<String>,
    user_id: Option<TemplateRef>,
}

fn parse_method(m: &str) -> Option<Method> {
    match m.to_ascii_uppercase().as_str() {
        "GET" => Some(Method::GET),
        "POST" => Some(Method::POST),
        "PUT" => Some(Method::PUT),
        "PATCH" => Some(Method::PATCH),
        "DELETE" => Some(Method::DELETE),
        _ => None,
    }
}

/// Checks a route path: starts with `/`, `{name}` captures are whole segments with valid names.
fn check_route_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err("a path starts with `/`".into());
    }
    if path.contains(char::is_whitespace) || path.contains('?') || path.contains('#') {
        return Err("a path has no spaces, `?` or `#`".into());
    }
    if RESERVED_PATHS.contains(&path) || path.starts_with("/admin") {
        return Err(format!("`{path}` is served by tilts itself"));
    }
    let mut seen = HashSet::new();
    for seg in path.split('/').skip(1) {
        if seg.contains('{') || seg.contains('}') {
            let name = seg
                .strip_prefix('{')
                .and_then(|s| s.strip_suffix('}'))
                .ok_or_else(|| {
                    format!("`{seg}`: a capture is a whole segment, like `{{caseId}}`")
                })?;
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "`{seg}`: a capture name is letters, digits and `_`"
                ));
            }
            if !seen.insert(name) {
                return Err(format!("`{{{name}}}` is captured twice"));
            }
        }
    }
    Ok(())
}

/// `/v1/cases/{id}` and `/v1/cases/{caseId}` are the same endpoint.
fn normalize_path(path: &str) -> String {
    path.split('/')
        .map(|s| if s.starts_with('{') { "{}" } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

/// Most problems reported in one route or system before the checker gives up on it.
const MAX_PROBLEMS_PER_NODE: usize = 16;

/// Removes the mapping entry at `pointer` (relative, `/a/b`) from `v`; false when there is no
/// such entry or it is not in a mapping (removing from a list would renumber the rest).
fn remove_key(v: &mut Value, pointer: &str) -> bool {
    let Some((parent, key)) = pointer.rsplit_once('/') else {
        return false;
    };
    let key = key.replace("~1", "/").replace("~0", "~");
    match v.pointer_mut(parent) {
        Some(Value::Object(m)) => m.remove(&key).is_some(),
        _ => false,
    }
}
