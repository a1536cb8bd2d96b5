//! Envoy proxy-wasm adapter of the introspection filter.
//!
//! All decisions are made by `introspection_core` (pure, unit-tested natively). This crate only
//! moves bytes between the host and the core: it reads headers and time, dispatches callouts
//! (introspection; discovery and JWKS for signed answers), and applies the decision (set headers
//! and resume, or answer locally). Every host call but `dispatch_http_call` goes through
//! [`host`], which cannot panic.

mod host;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use introspection_core::bearer::{self, Credentials};
use introspection_core::callout::{self, Callout, ACCEPT_JSON, ACCEPT_JWT};
use introspection_core::config::KeySource;
use introspection_core::decision::{self, Decision, Denial};
use introspection_core::discovery::{self, Endpoints};
use introspection_core::headers::decode_pairs;
use introspection_core::jwt::KeySet;
use introspection_core::keys::KeyState;
use introspection_core::response::{self, Answer, AnswerError};
use introspection_core::{reply, Config};
use log::{debug, error, info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};

proxy_wasm::main! {{
    // Installs the SDK's logger and a panic hook that logs at critical level before the abort.
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(GateRoot { shared: None, fetches: HashMap::new() })
    });
}}

/// How often the root context looks at discovery and JWKS freshness.
const TICK: Duration = Duration::from_secs(1);
/// Wait between two failed discovery or JWKS fetches.
const RETRY_SECS: i64 = 5;
/// Timeout of discovery and JWKS fetches.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const ACCEPT_JWKS: &str = "application/jwk-set+json, application/json";

/// What one VM knows beyond its configuration: the endpoints (after discovery, if configured)
/// and the JWKS. Shared by the root context and every request of the VM (one thread).
struct Shared {
    config: Rc<Config>,
    /// `None` until the discovery document has been read.
    endpoints: Option<Endpoints>,
    keys: KeyState,
    discovery_attempt: Option<i64>,
    discovery_in_flight: bool,
}

type SharedRef = Rc<RefCell<Shared>>;

/// A callout of the root context.
enum Fetch {
    Discovery,
    Jwks,
}

/// Per plugin configuration, per VM.
struct GateRoot {
    shared: Option<SharedRef>,
    fetches: HashMap<u32, Fetch>,
}

impl Context for GateRoot {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let (Some(shared), Some(fetch)) = (self.shared.clone(), self.fetches.remove(&token_id))
        else {
            return;
        };
        let now = now().unwrap_or(0);
        let max = shared.borrow().config.max_response_bytes;
        let answer = read_answer(num_headers, body_size, max);
        match fetch {
            Fetch::Discovery => {
                let mut s = shared.borrow_mut();
                s.discovery_in_flight = false;
                match answer.and_then(|a| {
                    response::check_status(&a.view())?;
                    discovery::parse(&a.body).map_err(String::from)
                }) {
                    Ok(found) => {
                        let config = s.config.clone();
                        let endpoints = Endpoints {
                            introspection_path: if config.introspection_path_explicit {
                                config.introspection_path.clone()
                            } else {
                                found.introspection_path
                            },
                            issuer: config.issuer.clone().or(Some(found.issuer)),
                            jwks_path: configured_jwks_path(&config).or(found.jwks_path),
                        };
                        info!(
                            "discovery: issuer {}, introspection {}, jwks {}",
                            endpoints.issuer.as_deref().unwrap_or("-"),
                            endpoints.introspection_path,
                            endpoints.jwks_path.as_deref().unwrap_or("-")
                        );
                        s.endpoints = Some(endpoints);
                    }
                    Err(e) => warn!("discovery failed, retrying in {RETRY_SECS} s: {e}"),
                }
            }
            Fetch::Jwks => finish_jwks_fetch(&shared, now, answer),
        }
        self.maintain(now);
    }
}

impl RootContext for GateRoot {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        // Forward only what Envoy will print: each log call is a host call.
        if let Ok(level) = hostcalls::get_log_level() {
            proxy_wasm::set_log_level(level);
        }
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = match host::buffer(BufferType::PluginConfiguration, usize::MAX) {
            Ok(bytes) => bytes,
            Err(status) => {
                error!("cannot read the plugin configuration: {status:?}");
                return false;
            }
        };
        let config = match Config::from_json(&bytes) {
            Ok(config) => Rc::new(config),
            Err(e) => {
                error!("{e}");
                return false;
            }
        };
        info!(
            "introspection filter configured: cluster `{}`, authority `{}`, client `{}`, {} answers, user claim `{}` -> `{}`",
            config.cluster,
            config.authority,
            config.client_id,
            config.signed.as_ref().map_or("plain JSON", |s| s.alg.name()),
            config.user_claim,
            config.user_header
        );
        let endpoints = config.discovery_path.is_none().then(|| Endpoints {
            introspection_path: config.introspection_path.clone(),
            issuer: config.issuer.clone(),
            jwks_path: configured_jwks_path(&config),
        });
        let needs_fetches = config.discovery_path.is_some()
            || matches!(
                config.signed.as_ref().map(|s| &s.keys),
                Some(KeySource::Remote { .. })
            );
        self.shared = Some(Rc::new(RefCell::new(Shared {
            config,
            endpoints,
            keys: KeyState::default(),
            discovery_attempt: None,
            discovery_in_flight: false,
        })));
        if needs_fetches {
            if let Err(status) = hostcalls::set_tick_period(TICK) {
                error!("cannot set the tick period: {status:?}");
                return false;
            }
            self.maintain(now().unwrap_or(0));
        }
        true
    }

    fn on_tick(&mut self) {
        if let Some(now) = now() {
            self.maintain(now);
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Gate {
            shared: self.shared.clone(),
            id: context_id,
            phase: Phase::Idle,
        }))
    }
}

impl GateRoot {
    /// Starts the discovery or JWKS fetch that is due, if any.
    fn maintain(&mut self, now: i64) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let mut s = shared.borrow_mut();
        let config = s.config.clone();
        if let (Some(path), None) = (&config.discovery_path, &s.endpoints) {
            let due = !s.discovery_in_flight
                && s.discovery_attempt
                    .is_none_or(|t| now.saturating_sub(t) >= RETRY_SECS);
            if due {
                s.discovery_attempt = Some(now);
                let request = callout::get_request(&config.authority, path, ACCEPT_JSON);
                match dispatch(&config.cluster, &request, FETCH_TIMEOUT) {
                    Ok(token) => {
                        s.discovery_in_flight = true;
                        self.fetches.insert(token, Fetch::Discovery);
                    }
                    Err(e) => warn!("discovery: {e}"),
                }
            }
            return;
        }
        let Some(signed) = &config.signed else {
            return;
        };
        let refresh = i64::try_from(signed.refresh.as_secs()).unwrap_or(i64::MAX);
        if s.keys.timer_fetch_due(now, refresh, RETRY_SECS) {
            match start_jwks_fetch(&mut s, now, false) {
                Ok(token) => {
                    self.fetches.insert(token, Fetch::Jwks);
                }
                Err(e) => warn!("JWKS: {e}"),
            }
        }
    }
}

/// The JWKS path given in the configuration, if the keys are fetched.
fn configured_jwks_path(config: &Config) -> Option<String> {
    match config.signed.as_ref().map(|s| &s.keys) {
        Some(KeySource::Remote { path, .. }) => path.clone(),
        _ => None,
    }
}

/// Dispatches a JWKS fetch (by the root's timer, or by a request that met an unknown kid).
fn start_jwks_fetch(s: &mut Shared, now: i64, triggered: bool) -> Result<u32, String> {
    let Some(Some(signed)) = Some(s.config.signed.as_ref()) else {
        return Err("not in signed mode".into());
    };
    let KeySource::Remote {
        cluster, authority, ..
    } = &signed.keys
    else {
        return Err("keys are not fetched".into());
    };
    let Some(path) = s.endpoints.as_ref().and_then(|e| e.jwks_path.clone()) else {
        return Err("JWKS path not known yet".into());
    };
    let request = callout::get_request(authority, &path, ACCEPT_JWKS);
    let token = dispatch(cluster, &request, FETCH_TIMEOUT)?;
    s.keys.fetch_started(now, triggered);
    Ok(token)
}

/// Installs the result of a JWKS fetch (a failure keeps the last good keys).
fn finish_jwks_fetch(shared: &SharedRef, now: i64, answer: Result<StoredAnswer, String>) {
    let parsed = answer.and_then(|a| {
        response::check_status(&a.view())?;
        KeySet::from_jwks(&a.body).map_err(String::from)
    });
    let skipped = parsed.as_ref().map_or(0, |k| k.skipped);
    match shared.borrow_mut().keys.fetch_finished(now, parsed) {
        Ok(n) => info!("JWKS loaded: {n} usable keys ({skipped} skipped)"),
        Err(e) => warn!("JWKS fetch failed, keeping the previous keys if any: {e}"),
    }
}

fn dispatch(cluster: &str, request: &Callout, timeout: Duration) -> Result<u32, String> {
    let headers: Vec<(&str, &str)> = request
        .headers
        .iter()
        .map(|(n, v)| (*n, v.as_str()))
        .collect();
    let body = (!request.body.is_empty()).then_some(request.body.as_slice());
    hostcalls::dispatch_http_call(cluster, headers, body, Vec::new(), timeout)
        .map_err(|status| format!("dispatch to cluster `{cluster}` failed: {status:?}"))
}

/// A callout answer, owned.
struct StoredAnswer {
    status: Option<Vec<u8>>,
    content_type: Option<Vec<u8>>,
    body: Vec<u8>,
}

impl StoredAnswer {
    fn view(&self) -> Answer<'_> {
        Answer {
            status: self.status.as_deref(),
            content_type: self.content_type.as_deref(),
            body: &self.body,
        }
    }
}

/// Reads the answer of the callout being delivered. A failed callout has no headers: reading
/// them would be an error, so `num_headers == 0` is checked first. Oversized bodies are not read.
fn read_answer(num_headers: usize, body_size: usize, max: usize) -> Result<StoredAnswer, String> {
    if num_headers == 0 {
        return Err("callout failed (reset or no answer)".into());
    }
    if body_size > max {
        return Err(format!(
            "answer of {body_size} bytes exceeds max_response_bytes ({max})"
        ));
    }
    let status = host::header(MapType::HttpCallResponseHeaders, ":status");
    let content_type = host::header(MapType::HttpCallResponseHeaders, "content-type");
    let body = if body_size == 0 {
        Ok(Vec::new())
    } else {
        host::buffer(BufferType::HttpCallResponseBody, body_size)
    };
    match (status, content_type, body) {
        (Ok(status), Ok(content_type), Ok(body)) => Ok(StoredAnswer {
            status,
            content_type,
            body,
        }),
        _ => Err("cannot read the callout answer".into()),
    }
}

/// Where a request stands.
enum Phase {
    Idle,
    /// Waiting for the introspection answer.
    Introspecting,
    /// A signed answer named an unknown key: waiting for a fresh JWKS to check it again.
    RefetchingKeys(StoredAnswer),
}

/// One request.
struct Gate {
    /// `None` only if the host created a request context without a valid configuration:
    /// every request is then refused.
    shared: Option<SharedRef>,
    id: u32,
    phase: Phase,
}

impl Context for Gate {
    fn on_http_call_response(
        &mut self,
        _token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let Some(shared) = self.shared.clone() else {
            return self.refuse_unconfigured();
        };
        let config = shared.borrow().config.clone();
        let now = now().unwrap_or(0);
        let answer = read_answer(num_headers, body_size, config.max_response_bytes);
        let phase = std::mem::replace(&mut self.phase, Phase::Idle);
        let decision = match phase {
            Phase::Introspecting => match answer {
                Ok(answer) => self.judge(&shared, &config, answer, now, true),
                Err(fault) => Some(Decision::Deny(Denial::Unavailable(fault))),
            },
            Phase::RefetchingKeys(stored) => {
                finish_jwks_fetch(&shared, now, answer);
                self.judge(&shared, &config, stored, now, false)
            }
            Phase::Idle => Some(Decision::Deny(Denial::Unavailable(
                "unexpected callout answer".into(),
            ))),
        };
        if let Some(decision) = decision {
            self.apply(&config, decision);
        }
    }
}

impl HttpContext for Gate {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else {
            self.refuse_unconfigured();
            return Action::Pause;
        };
        let config = shared.borrow().config.clone();
        let raw = match host::header_pairs(MapType::HttpRequestHeaders) {
            Ok(raw) => raw,
            Err(status) => {
                return self.deny(
                    &config,
                    &Denial::Unavailable(format!("cannot read request headers: {status:?}")),
                )
            }
        };
        let Some(pairs) = decode_pairs(&raw) else {
            return self.deny(
                &config,
                &Denial::Unavailable("host returned a malformed header map".into()),
            );
        };

        // 1. No client may forge an identity: strip every header the filter may set.
        for name in &config.identity_headers {
            let present = pairs
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()));
            if present {
                if let Err(status) = host::remove_request_header(name) {
                    return self.deny(
                        &config,
                        &Denial::Unavailable(format!(
                            "cannot remove identity header `{name}`: {status:?}"
                        )),
                    );
                }
            }
        }

        // 2. Exactly one well-formed bearer token.
        let authorization: Vec<&[u8]> = pairs
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(b"authorization"))
            .map(|(_, v)| *v)
            .collect();
        let token = match bearer::extract(&authorization, config.max_token_length) {
            Credentials::Bearer(token) => token.to_string(),
            Credentials::Missing => return self.deny(&config, &Denial::Missing),
            Credentials::Malformed(reason) => {
                return self.deny(&config, &Denial::Malformed(reason))
            }
        };
        drop(pairs);

        // 3. Ask the authorization server; the request waits for its answer.
        let Some(path) = shared
            .borrow()
            .endpoints
            .as_ref()
            .map(|e| e.introspection_path.clone())
        else {
            return self.deny(
                &config,
                &Denial::Unavailable("discovery document not loaded yet".into()),
            );
        };
        let accept = if config.signed.is_some() {
            ACCEPT_JWT
        } else {
            ACCEPT_JSON
        };
        let request = callout::introspection_request(&config, &path, &token, accept);
        match dispatch(&config.cluster, &request, config.timeout) {
            Ok(_) => {
                self.phase = Phase::Introspecting;
                debug!("[{}] introspection callout sent", self.id);
                Action::Pause
            }
            Err(e) => self.deny(&config, &Denial::Unavailable(e)),
        }
    }
}

impl Gate {
    /// Turns an answer into a decision; `None` when a JWKS refetch was started and the answer
    /// will be judged again when it arrives.
    fn judge(
        &mut self,
        shared: &SharedRef,
        config: &Config,
        answer: StoredAnswer,
        now: i64,
        may_refetch: bool,
    ) -> Option<Decision> {
        let started = hostcalls::get_current_time().ok();
        let claims = {
            let s = shared.borrow();
            let Some(endpoints) = s.endpoints.as_ref() else {
                return Some(Decision::Deny(Denial::Unavailable(
                    "discovery document not loaded yet".into(),
                )));
            };
            let keys = s.keys.keys();
            response::verified_claims(config, endpoints, keys.as_deref(), &answer.view(), now)
        };
        if let (Some(signed), Some(t0), Ok(t1)) =
            (&config.signed, started, hostcalls::get_current_time())
        {
            let micros = t1.duration_since(t0).map_or(0, |d| d.as_micros());
            debug!(
                "[{}] {} answer checked in {micros} us",
                self.id,
                signed.alg.name()
            );
        }
        match claims {
            Ok(claims) => Some(decision::evaluate(config, &claims, now)),
            Err(AnswerError::Fault(fault)) => Some(Decision::Deny(Denial::Unavailable(fault))),
            Err(AnswerError::UnknownKey) => {
                let interval = config.signed.as_ref().map_or(0, |s| {
                    i64::try_from(s.refetch_interval.as_secs()).unwrap_or(0)
                });
                let mut s = shared.borrow_mut();
                if !may_refetch || !s.keys.kid_refetch_allowed(now, interval) {
                    return Some(Decision::Deny(Denial::Unavailable(
                        "no JWKS key matches the answer's kid".into(),
                    )));
                }
                match start_jwks_fetch(&mut s, now, true) {
                    Ok(_) => {
                        info!("[{}] unknown kid: refetching the JWKS", self.id);
                        self.phase = Phase::RefetchingKeys(answer);
                        None
                    }
                    Err(e) => Some(Decision::Deny(Denial::Unavailable(format!(
                        "unknown kid and no JWKS refetch possible: {e}"
                    )))),
                }
            }
        }
    }

    /// Resumes with the identity headers set, or answers locally.
    fn apply(&self, config: &Config, decision: Decision) {
        let headers = match decision {
            Decision::Allow(headers) => headers,
            Decision::Deny(denial) => {
                self.deny(config, &denial);
                return;
            }
        };
        for (name, value) in &headers {
            if let Err(status) = host::set_request_header(name, value) {
                self.deny(
                    config,
                    &Denial::Unavailable(format!("cannot set header `{name}`: {status:?}")),
                );
                return;
            }
        }
        if !config.forward_authorization {
            if let Err(status) = host::remove_request_header("authorization") {
                self.deny(
                    config,
                    &Denial::Unavailable(format!("cannot remove Authorization: {status:?}")),
                );
                return;
            }
        }
        debug!("[{}] allowed", self.id);
        if let Err(status) = host::resume_request() {
            error!("[{}] cannot resume the request: {status:?}", self.id);
        }
    }

    /// Answers locally. The request stays paused: it never reaches the upstream.
    fn deny(&self, config: &Config, denial: &Denial) -> Action {
        match denial {
            Denial::Unavailable(reason) => warn!("[{}] denied (unavailable): {reason}", self.id),
            other => debug!(
                "[{}] denied ({}): {}",
                self.id,
                other.kind(),
                other.reason()
            ),
        }
        let reply = reply::for_denial(config, denial);
        let headers: Vec<(&str, &str)> = reply
            .headers
            .iter()
            .map(|(n, v)| (*n, v.as_str()))
            .collect();
        if let Err(status) =
            host::send_local_response(reply.status, &headers, reply.body.as_bytes())
        {
            error!("[{}] cannot send the local reply: {status:?}", self.id);
        }
        Action::Pause
    }

    fn refuse_unconfigured(&self) {
        error!("[{}] no valid configuration: request refused", self.id);
        let body = br#"{"error":"temporarily_unavailable","error_description":"the access token could not be verified, try again later"}"#;
        if let Err(status) = host::send_local_response(
            503,
            &[
                ("content-type", "application/json"),
                ("cache-control", "no-store"),
            ],
            body,
        ) {
            error!("[{}] cannot send the local reply: {status:?}", self.id);
        }
    }
}

/// Unix seconds from the host clock.
fn now() -> Option<i64> {
    let t = hostcalls::get_current_time().ok()?;
    let secs = t.duration_since(UNIX_EPOCH).ok()?.as_secs();
    i64::try_from(secs).ok()
}
