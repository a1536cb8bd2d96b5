//! Envoy proxy-wasm adapter of the introspection filter.
//!
//! All decisions are made by `introspection_core` (pure, unit-tested natively). This crate only
//! moves bytes between the host and the core: it reads headers and time, dispatches callouts
//! (introspection; discovery and JWKS for signed answers), and applies the decision (set headers
//! and resume, or answer locally). Host calls go through [`host`], which cannot panic.

mod host;

use std::cell::RefCell;
use std::collections::HashMap;
use std::collections::HashSet;
use std::rc::Rc;
use std::time::Duration;

use introspection_core::bearer::{self, Credentials};
use introspection_core::cache::{self, CacheKey, CacheKeys, LocalCache};
use introspection_core::callout::{self, Callout, ACCEPT_JSON, ACCEPT_JWT};
use introspection_core::config::KeySource;
use introspection_core::decision::{self, Claims, Decision, Denial};
use introspection_core::discovery::{self, Endpoints};
use introspection_core::headers::decode_pairs;
use introspection_core::jwt::KeySet;
use introspection_core::keys::KeyState;
use introspection_core::response::{self, Answer, AnswerError};
use introspection_core::{reply, Config};
use log::{debug, error, info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType, Status};

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
/// Entries each VM keeps in its own memory in front of the shared cache.
const LOCAL_CACHE_MAX: u32 = 4096;
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
    /// Names, writes and reads cache entries for this configuration.
    cache_keys: CacheKeys,
    /// This VM's front of the shared cache.
    local: LocalCache,
    /// Requests of this VM that were let through (their body and trailers may flow).
    allowed: HashSet<u32>,
    /// Introspections in progress in this VM, by token fingerprint: one callout per token at a
    /// time, the other requests for the same token wait for its answer.
    flights: HashMap<[u8; 32], Flight>,
    metrics: Metrics,
}

type SharedRef = Rc<RefCell<Shared>>;

/// One introspection callout and the requests waiting for its answer.
struct Flight {
    leader: u32,
    waiters: Vec<u32>,
}

/// Metric ids (Envoy shows them in `/stats` as `wasmcustom.introspection.*`).
#[derive(Clone, Copy, Default)]
struct Metrics {
    allowed: Option<u32>,
    denied_missing: Option<u32>,
    denied_malformed: Option<u32>,
    denied_inactive: Option<u32>,
    denied_scope: Option<u32>,
    denied_unavailable: Option<u32>,
    cache_hit: Option<u32>,
    cache_miss: Option<u32>,
    cache_store: Option<u32>,
    callout_sent: Option<u32>,
    callout_failed: Option<u32>,
    callout_coalesced: Option<u32>,
    callout_latency_ms: Option<u32>,
    jwks_fetch_ok: Option<u32>,
    jwks_fetch_failed: Option<u32>,
}

impl Metrics {
    fn define() -> Metrics {
        let counter = |name: &str| host::define_metric(MetricType::Counter, name);
        Metrics {
            allowed: counter("introspection.allowed"),
            denied_missing: counter("introspection.denied.missing"),
            denied_malformed: counter("introspection.denied.malformed"),
            denied_inactive: counter("introspection.denied.inactive"),
            denied_scope: counter("introspection.denied.scope"),
            denied_unavailable: counter("introspection.denied.unavailable"),
            cache_hit: counter("introspection.cache.hit"),
            cache_miss: counter("introspection.cache.miss"),
            cache_store: counter("introspection.cache.store"),
            callout_sent: counter("introspection.callout.sent"),
            callout_failed: counter("introspection.callout.failed"),
            callout_coalesced: counter("introspection.callout.coalesced"),
            callout_latency_ms: host::define_metric(
                MetricType::Histogram,
                "introspection.callout.latency_ms",
            ),
            jwks_fetch_ok: counter("introspection.jwks.fetch_ok"),
            jwks_fetch_failed: counter("introspection.jwks.fetch_failed"),
        }
    }

    fn bump(id: Option<u32>) {
        if let Some(id) = id {
            host::increment_metric(id, 1);
        }
    }

    fn denied(&self, denial: &Denial) {
        Metrics::bump(match denial {
            Denial::Missing => self.denied_missing,
            Denial::Malformed(_) => self.denied_malformed,
            Denial::Invalid(_) => self.denied_inactive,
            Denial::InsufficientScope => self.denied_scope,
            Denial::Unavailable(_) => self.denied_unavailable,
        });
    }
}

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
        let Ok(now) = host::now_unix() else {
            warn!("cannot read the clock: discovery/JWKS answer dropped, will retry");
            let mut s = shared.borrow_mut();
            match fetch {
                Fetch::Discovery => s.discovery_in_flight = false,
                Fetch::Jwks => s.keys.fetch_abandoned(),
            }
            return;
        };
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
        // `None` (logging off) maps to Critical, which the SDK's logger treats as off.
        proxy_wasm::set_log_level(host::log_level().unwrap_or(LogLevel::Critical));
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
        let config = match Config::from_json_with_env(&bytes, &|name| std::env::var(name).ok()) {
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
        let cache_keys = CacheKeys::new(&config);
        let local_capacity =
            usize::try_from(config.cache.max_entries.min(LOCAL_CACHE_MAX)).unwrap_or(0);
        self.shared = Some(Rc::new(RefCell::new(Shared {
            config,
            endpoints,
            keys: KeyState::default(),
            discovery_attempt: None,
            discovery_in_flight: false,
            local: LocalCache::new(local_capacity),
            cache_keys,
            allowed: HashSet::new(),
            flights: HashMap::new(),
            metrics: Metrics::define(),
        })));
        if needs_fetches {
            if let Err(status) = hostcalls::set_tick_period(TICK) {
                error!("cannot set the tick period: {status:?}");
                return false;
            }
            if let Ok(now) = host::now_unix() {
                self.maintain(now);
            }
        }
        true
    }

    fn on_tick(&mut self) {
        if let Ok(now) = host::now_unix() {
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
            key: None,
            callout_started: None,
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
        if !matches!(signed.keys, KeySource::Remote { .. }) {
            return; // HS256 or an inline JWKS: nothing to fetch
        }
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
        s.keys.fetch_not_started(now, triggered);
        return Err("JWKS path not known yet".into());
    };
    let request = callout::get_request(authority, &path, ACCEPT_JWKS);
    match dispatch(cluster, &request, FETCH_TIMEOUT) {
        Ok(token) => {
            s.keys.fetch_started(now, triggered);
            Ok(token)
        }
        Err(e) => {
            s.keys.fetch_not_started(now, triggered);
            Err(e)
        }
    }
}

/// Installs the result of a JWKS fetch (a failure keeps the last good keys).
fn finish_jwks_fetch(shared: &SharedRef, now: i64, answer: Result<StoredAnswer, String>) {
    let parsed = answer.and_then(|a| {
        response::check_status(&a.view())?;
        KeySet::from_jwks(&a.body).map_err(String::from)
    });
    let skipped = parsed.as_ref().map_or(0, |k| k.skipped);
    let mut s = shared.borrow_mut();
    match s.keys.fetch_finished(now, parsed) {
        Ok(n) => {
            Metrics::bump(s.metrics.jwks_fetch_ok);
            info!("JWKS loaded: {n} usable keys ({skipped} skipped)");
        }
        Err(e) => {
            Metrics::bump(s.metrics.jwks_fetch_failed);
            warn!("JWKS fetch failed, keeping the previous keys if any: {e}");
        }
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
    /// Another request of this VM is introspecting the same token: waiting for its answer.
    Waiting,
    /// Decided.
    Done,
}

/// One request.
struct Gate {
    /// `None` only if the host created a request context without a valid configuration:
    /// every request is then refused.
    shared: Option<SharedRef>,
    id: u32,
    phase: Phase,
    /// Cache slot and fingerprint of this request's token.
    key: Option<CacheKey>,
    /// Host clock (ns) when the introspection callout left.
    callout_started: Option<u64>,
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
        let Ok(now) = host::now_unix() else {
            if let Phase::RefetchingKeys(_) = self.phase {
                shared.borrow_mut().keys.fetch_abandoned();
            }
            self.phase = Phase::Done;
            let deny = || Decision::Deny(Denial::Unavailable("cannot read the clock".into()));
            conclude(&shared, self.id, &config, deny(), true);
            return self.conclude_waiters(&shared, &config, deny);
        };
        let answer = read_answer(num_headers, body_size, config.max_response_bytes);
        let phase = std::mem::replace(&mut self.phase, Phase::Done);
        let outcome = match phase {
            Phase::Introspecting => {
                self.record_latency(&shared);
                match answer {
                    Ok(answer) => self.judge(&shared, &config, answer, now, true),
                    Err(fault) => Some(Err(fault)),
                }
            }
            Phase::RefetchingKeys(stored) => {
                finish_jwks_fetch(&shared, now, answer);
                self.judge(&shared, &config, stored, now, false)
            }
            other => {
                // Not waiting for an answer: never act on this request because of it.
                warn!("[{}] ignoring an unexpected callout answer", self.id);
                self.phase = other;
                return;
            }
        };
        let Some(outcome) = outcome else {
            return; // a JWKS refetch is under way; judged again when it answers
        };
        if outcome.is_err() {
            Metrics::bump(shared.borrow().metrics.callout_failed);
        }
        if let (Ok(claims), Some(key)) = (&outcome, &self.key) {
            store_in_cache(&shared, &config, key, claims, now);
        }
        let decide = |outcome: &Result<Claims, String>| match outcome {
            Ok(claims) => decision::evaluate(&config, claims, now),
            Err(fault) => Decision::Deny(Denial::Unavailable(fault.clone())),
        };
        conclude(&shared, self.id, &config, decide(&outcome), true);
        // The requests that waited for this answer get the same treatment, each its own
        // decision (the policy is the same, the verdict too).
        self.conclude_waiters(&shared, &config, || decide(&outcome));
    }

    fn on_done(&mut self) -> bool {
        let Some(shared) = self.shared.clone() else {
            return true;
        };
        shared.borrow_mut().allowed.remove(&self.id);
        if let Phase::RefetchingKeys(_) = self.phase {
            // Its JWKS answer will not be delivered (the SDK drops answers for a request that
            // is gone): let the next fetch start at once.
            shared.borrow_mut().keys.fetch_abandoned();
        }
        match self.phase {
            // This request was introspecting for others and goes away (client gone): the SDK
            // drops the answers of a request that is gone, so its waiters are refused rather
            // than left hanging.
            Phase::Introspecting | Phase::RefetchingKeys(_) => {
                let config = shared.borrow().config.clone();
                self.conclude_waiters(&shared, &config, || {
                    Decision::Deny(Denial::Unavailable(
                        "the request introspecting this token went away".into(),
                    ))
                });
            }
            Phase::Waiting => {
                if let Some(key) = &self.key {
                    if let Some(flight) = shared.borrow_mut().flights.get_mut(&key.fingerprint) {
                        flight.waiters.retain(|w| *w != self.id);
                    }
                }
            }
            Phase::Idle | Phase::Done => {}
        }
        true
    }
}

impl HttpContext for Gate {
    /// The body waits until the request is let through: nothing reaches the upstream before a
    /// positive decision, whatever Envoy's buffering settings.
    fn on_http_request_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
        self.hold_until_allowed()
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        self.hold_until_allowed()
    }

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

        // 1. No client may forge an identity: strip every header the filter may set, and every
        //    spelling an upstream could read as one (`X_User_Sub` for `x-user-sub`).
        for (name, _) in &pairs {
            if !config.is_identity_header(name) {
                continue;
            }
            let removed = std::str::from_utf8(name)
                .map_err(|_| Status::BadArgument)
                .and_then(host::remove_request_header);
            if let Err(status) = removed {
                return self.deny(
                    &config,
                    &Denial::Unavailable(format!("cannot remove an identity header: {status:?}")),
                );
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

        // 3. A cached answer (shared by all workers): the policy is applied to it afresh.
        let Ok(now) = host::now_unix() else {
            return self.deny(
                &config,
                &Denial::Unavailable("cannot read the clock".into()),
            );
        };
        let (key, metrics, cached) = {
            let mut s = shared.borrow_mut();
            let slots = config.cache.max_entries.max(1);
            let key = s.cache_keys.key_for(&token, slots);
            let cached = if config.cache.enabled() {
                s.local.get(&key.fingerprint, now).or_else(|| {
                    let (expires_at, claims) = cache_lookup(&s.cache_keys, &key, now)?;
                    let claims = Rc::new(claims);
                    s.local
                        .insert(key.fingerprint, expires_at, claims.clone(), now);
                    Some(claims)
                })
            } else {
                None
            };
            (key, s.metrics, cached)
        };
        if let Some(claims) = cached {
            Metrics::bump(metrics.cache_hit);
            self.phase = Phase::Done;
            return conclude(
                &shared,
                self.id,
                &config,
                decision::evaluate(&config, &claims, now),
                false,
            );
        }
        if config.cache.enabled() {
            Metrics::bump(metrics.cache_miss);
        }

        // 4. One callout per token at a time in this VM: join one in flight.
        if let Some(flight) = shared.borrow_mut().flights.get_mut(&key.fingerprint) {
            flight.waiters.push(self.id);
            Metrics::bump(metrics.callout_coalesced);
            self.key = Some(key);
            self.phase = Phase::Waiting;
            debug!("[{}] waiting for the introspection in flight", self.id);
            return Action::Pause;
        }

        // 5. Ask the authorization server; the request waits for its answer.
        let path = shared
            .borrow()
            .endpoints
            .as_ref()
            .map(|e| e.introspection_path.clone());
        let Some(path) = path else {
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
                Metrics::bump(metrics.callout_sent);
                shared.borrow_mut().flights.insert(
                    key.fingerprint,
                    Flight {
                        leader: self.id,
                        waiters: Vec::new(),
                    },
                );
                self.key = Some(key);
                self.phase = Phase::Introspecting;
                self.callout_started = host::now_nanos();
                debug!("[{}] introspection callout sent", self.id);
                Action::Pause
            }
            Err(e) => self.deny(&config, &Denial::Unavailable(e)),
        }
    }
}

impl Gate {
    fn hold_until_allowed(&self) -> Action {
        let allowed = self
            .shared
            .as_ref()
            .is_some_and(|s| s.borrow().allowed.contains(&self.id));
        if allowed {
            Action::Continue
        } else {
            Action::Pause
        }
    }

    /// Verifies an answer into claims (or a fault to answer 503 with); `None` when a JWKS
    /// refetch was started and the answer will be judged again when it arrives.
    fn judge(
        &mut self,
        shared: &SharedRef,
        config: &Config,
        answer: StoredAnswer,
        now: i64,
        may_refetch: bool,
    ) -> Option<Result<Claims, String>> {
        let started = host::now_nanos();
        let claims = {
            let s = shared.borrow();
            let Some(endpoints) = s.endpoints.as_ref() else {
                return Some(Err("discovery document not loaded yet".into()));
            };
            let keys = s.keys.keys();
            response::verified_claims(config, endpoints, keys.as_deref(), &answer.view(), now)
        };
        if let (Some(signed), Some(t0), Some(t1)) = (&config.signed, started, host::now_nanos()) {
            let micros = t1.saturating_sub(t0) / 1000;
            debug!(
                "[{}] {} answer checked in {micros} us",
                self.id,
                signed.alg.name()
            );
        }
        match claims {
            Ok(claims) => Some(Ok(claims)),
            Err(AnswerError::Fault(fault)) => Some(Err(fault)),
            Err(AnswerError::UnknownKey) => {
                let interval = config.signed.as_ref().map_or(0, |s| {
                    i64::try_from(s.refetch_interval.as_secs()).unwrap_or(0)
                });
                let mut s = shared.borrow_mut();
                if !may_refetch || !s.keys.kid_refetch_allowed(now, interval) {
                    return Some(Err("no JWKS key matches the answer's kid".into()));
                }
                match start_jwks_fetch(&mut s, now, true) {
                    Ok(_) => {
                        info!("[{}] unknown kid: refetching the JWKS", self.id);
                        self.phase = Phase::RefetchingKeys(answer);
                        None
                    }
                    Err(e) => Some(Err(format!(
                        "unknown kid and no JWKS refetch possible: {e}"
                    ))),
                }
            }
        }
    }

    /// Answers locally (see [`deny`]).
    fn deny(&mut self, config: &Config, denial: &Denial) -> Action {
        self.phase = Phase::Done;
        if let Some(shared) = &self.shared {
            shared.borrow().metrics.denied(denial);
        }
        deny(self.id, config, denial)
    }

    /// Ends this request's flight and applies `decision` to every request that waited for it.
    fn conclude_waiters(
        &self,
        shared: &SharedRef,
        config: &Config,
        decision: impl Fn() -> Decision,
    ) {
        let waiters = self.take_flight(shared);
        if waiters.is_empty() {
            return;
        }
        for waiter in waiters {
            match host::set_effective_context(waiter) {
                Ok(()) => {
                    conclude(shared, waiter, config, decision(), true);
                }
                Err(status) => warn!("[{waiter}] cannot reach a waiting request: {status:?}"),
            }
        }
        // Later host calls must act on this request again, not on the last waiter.
        if let Err(status) = host::set_effective_context(self.id) {
            warn!(
                "[{}] cannot switch back to this request: {status:?}",
                self.id
            );
        }
    }

    /// Ends this request's flight and returns the requests that waited for it.
    fn take_flight(&self, shared: &SharedRef) -> Vec<u32> {
        let Some(key) = &self.key else {
            return Vec::new();
        };
        let mut s = shared.borrow_mut();
        match s.flights.get(&key.fingerprint) {
            Some(flight) if flight.leader == self.id => s
                .flights
                .remove(&key.fingerprint)
                .map(|f| f.waiters)
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    fn record_latency(&self, shared: &SharedRef) {
        let (Some(id), Some(t0)) = (
            shared.borrow().metrics.callout_latency_ms,
            self.callout_started,
        ) else {
            return;
        };
        if let Some(t1) = host::now_nanos() {
            host::record_metric(id, t1.saturating_sub(t0) / 1_000_000);
        }
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

/// Applies a decision to request `id` (the effective context): set the identity headers and
/// let it through (resuming it if it was paused), or answer locally.
fn conclude(
    shared: &SharedRef,
    id: u32,
    config: &Config,
    decision: Decision,
    resume: bool,
) -> Action {
    let metrics = shared.borrow().metrics;
    let headers = match decision {
        Decision::Allow(headers) => headers,
        Decision::Deny(denial) => {
            metrics.denied(&denial);
            return deny(id, config, &denial);
        }
    };
    let mut failure = None;
    for (name, value) in &headers {
        if let Err(status) = host::set_request_header(name, value) {
            failure = Some(format!("cannot set header `{name}`: {status:?}"));
            break;
        }
    }
    if failure.is_none() && !config.forward_authorization {
        if let Err(status) = host::remove_request_header("authorization") {
            failure = Some(format!("cannot remove Authorization: {status:?}"));
        }
    }
    if let Some(reason) = failure {
        let denial = Denial::Unavailable(reason);
        metrics.denied(&denial);
        return deny(id, config, &denial);
    }
    Metrics::bump(metrics.allowed);
    shared.borrow_mut().allowed.insert(id);
    debug!("[{id}] allowed");
    if resume {
        if let Err(status) = host::resume_request() {
            error!("[{id}] cannot resume the request: {status:?}");
        }
    }
    Action::Continue
}

/// Answers request `id` locally. The request never reaches the upstream.
fn deny(id: u32, config: &Config, denial: &Denial) -> Action {
    match denial {
        Denial::Unavailable(reason) => warn!("[{id}] denied (unavailable): {reason}"),
        other => debug!("[{id}] denied ({}): {}", other.kind(), other.reason()),
    }
    let reply = reply::for_denial(config, denial);
    let headers: Vec<(&str, &str)> = reply
        .headers
        .iter()
        .map(|(n, v)| (*n, v.as_str()))
        .collect();
    if let Err(status) = host::send_local_response(reply.status, &headers, reply.body.as_bytes()) {
        error!("[{id}] cannot send the local reply: {status:?}");
    }
    Action::Pause
}

/// A live cache entry for this token, if any.
fn cache_lookup(keys: &CacheKeys, key: &CacheKey, now: i64) -> Option<(i64, Claims)> {
    match host::shared_data(&key.slot_key) {
        Ok(Some((bytes, _))) => keys.decode(&bytes, &key.fingerprint, now),
        Ok(None) => None,
        Err(status) => {
            warn!("cache read failed: {status:?}");
            None
        }
    }
}

/// Stores verified claims if the policy allows, replacing whatever the slot held. Written with
/// compare-and-swap; one retry if another worker wrote the slot in between.
fn store_in_cache(shared: &SharedRef, config: &Config, key: &CacheKey, claims: &Claims, now: i64) {
    let Some(expires_at) = config.cache.expires_at(config, claims, now) else {
        return;
    };
    let kept = cache::kept_claims(config, claims);
    let mut s = shared.borrow_mut();
    let entry = s.cache_keys.encode(&key.fingerprint, expires_at, &kept);
    s.local
        .insert(key.fingerprint, expires_at, Rc::new(kept), now);
    let keys = &s.cache_keys;
    for _ in 0..2 {
        let cas = match host::shared_data(&key.slot_key) {
            Ok(Some((bytes, cas))) => {
                if !keys.should_replace(&bytes, &key.fingerprint, expires_at, now) {
                    return;
                }
                cas
            }
            Ok(None) => 0,
            Err(status) => {
                warn!("cache read failed: {status:?}");
                return;
            }
        };
        match host::set_shared_data(&key.slot_key, &entry, cas) {
            Ok(()) => {
                Metrics::bump(s.metrics.cache_store);
                return;
            }
            Err(Status::CasMismatch) => continue,
            Err(status) => {
                warn!("cache write failed: {status:?}");
                return;
            }
        }
    }
}
