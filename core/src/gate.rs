//! The life of a VM and of its requests: configuration, ticks, one introspection in flight per
//! token (single flight), cache read-through and writes, the fetches of the discovery document
//! and the JWKS, and the verdict of each request.
//!
//! Everything the proxy does for the gate goes through a [`Host`] (the clock, callouts, shared
//! data, metrics, the tick). What could re-enter the VM — resuming a request, answering it
//! locally — is returned as data: a [`Step`] for the request being handled, [`Effects`] (a
//! verdict per request id) for the requests a callout answer concludes. The adapter applies them
//! after releasing its borrow of the gate.
//!
//! Who owns a callout matters to the host: a callout sent while handling a request belongs to
//! that request, and the host cancels it when the request goes away. So:
//! - the discovery and JWKS fetches are sent only by the VM (at configuration and on ticks);
//!   a request that meets an unknown key asks for a fetch and waits, it never sends one;
//! - an introspection is sent by the first request for a token; if that request goes away,
//!   the VM sends it again on the next tick for the requests still waiting.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::Duration;

use log::{debug, info, warn};

use crate::bearer::{self, Credentials, Malformed};
use crate::cache::{self, CacheKey, CacheKeys, LocalCache, LocalEntry};
use crate::callout::{self, Callout, ACCEPT_JSON, ACCEPT_JWT};
use crate::config::{Config, KeySource, SignatureCheck};
use crate::decision::{self, Claims, Decision, Denial, Remembered};
use crate::discovery::{self, Endpoints};
use crate::fault::{Fault, HostError};
use crate::floodlog::{loggable_request_id, FloodLog};
use crate::foreign::HostVerifier;
use crate::headers::decode_pairs;
use crate::host::{Counter, Histogram, Host};
use crate::jwt::{Crypto, KeySet, SigningAlg, VerifyError};
use crate::reply::{self, LocalReply};
use crate::response::{self, AnswerError, StoredAnswer};
use crate::rules::{self, Access, Facts, Requirements, Selection};
use crate::schedule::FetchSchedule;
use crate::selftest::{self, SelfTestFailure};

/// Most identity-header spellings removed by name on every request; with more, or with rules
/// (which read `:path` and `:method` too), the whole header map is read once and only the
/// spellings present are removed. Measured in Envoy 1.40: reading one header value costs about
/// 1.2 µs (the host calls back into the VM to allocate the copy), the whole map about 1.9 µs, a
/// removal about 0.2 µs.
pub const STRIP_BY_NAME_MAX: usize = 8;
/// The VM's regular tick when it fetches documents.
pub const TICK: Duration = Duration::from_secs(1);
/// The tick asked for when the VM has work to do at once (a fetch or a callout to send).
pub const KICK: Duration = Duration::from_millis(1);
/// Wait between two failed discovery or JWKS fetches, seconds.
pub const RETRY_SECS: i64 = 5;
/// Timeout of discovery and JWKS fetches.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Entries each VM keeps in its own memory in front of the shared cache.
pub const LOCAL_CACHE_MAX: u32 = 4096;
const ACCEPT_JWKS: &str = "application/jwk-set+json, application/json";

/// What to do with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Remove these headers, set these, and let the request through.
    Allow {
        remove: Vec<Rc<str>>,
        set: Vec<(String, String)>,
    },
    /// Answer locally; the request never reaches the upstream.
    Deny(LocalReply),
}

/// The outcome of a request's headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Verdict(Verdict),
    /// Wait: a verdict will come in [`Effects`].
    Pause,
}

/// What to do with a request's trailers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trailers {
    /// Remove these fields; `hold` while the request is not allowed yet.
    Strip { remove: Vec<String>, hold: bool },
    /// The trailers could not be read: answer 503.
    Refuse(LocalReply),
}

/// Verdicts for paused requests, by request (context) id, in order.
pub type Effects = Vec<(u32, Verdict)>;

/// Why a callout was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Introspection([u8; 32]),
    Discovery,
    Jwks,
}

/// One introspection and the requests waiting for its answer.
struct Flight {
    /// Requests waiting for the answer, in arrival order.
    members: Vec<u32>,
    /// The request whose context sent the callout (`None`: the VM sent it).
    owner: Option<u32>,
    stage: Stage,
    /// The request to the authorization server, kept to send it again if its owner goes away.
    request: Callout,
    key: CacheKey,
    /// The token, to fill this VM's local cache with the answer (the request holds it too).
    token: String,
    /// Host clock (ns) when the callout left.
    sent_at: Option<u64>,
}

enum Stage {
    /// The callout with this token is in flight.
    Introspecting(u32),
    /// The answer is signed with a key the VM does not have: waiting for a fresh JWKS.
    AwaitingKeys(StoredAnswer),
    /// Its sender went away (and the host cancelled the callout): the VM sends it again.
    Orphaned,
}

/// A paused request.
struct Waiting {
    fingerprint: [u8; 32],
    /// Identity headers to remove if the request is let through.
    remove: Vec<Rc<str>>,
    who: Who,
}

impl Waiting {
    fn new(fingerprint: [u8; 32], remove: Vec<Rc<str>>, who: Who) -> Waiting {
        Waiting {
            fingerprint,
            remove,
            who,
        }
    }
}

/// Whom a verdict is for: the request, its loggable `x-request-id`, the rule that applies.
#[derive(Debug, Clone)]
struct Who {
    id: u32,
    request_id: Option<String>,
    /// Index in `rules` of the rule that matched, if any.
    rule: Option<usize>,
}

impl Who {
    fn new(id: u32) -> Who {
        Who {
            id,
            request_id: None,
            rule: None,
        }
    }
}

/// How the identity headers a client may have forged are found.
#[derive(Debug)]
enum Strip {
    /// Every spelling is removed by name, present or not: no header map to read.
    ByName(Vec<Rc<str>>),
    /// The header map is read and the spellings present are removed.
    Scan,
}

/// What the gate reads from a request's headers.
struct Head {
    remove: Vec<Rc<str>>,
    /// `Authorization`: absent, or its values (Envoy joins repeated fields into one).
    authorization: Vec<Vec<u8>>,
    path: Vec<u8>,
    method: Vec<u8>,
    request_id: Option<String>,
}

/// One VM's state: its configuration, what it fetched, its caches and its requests.
pub struct Gate {
    config: Rc<Config>,
    strip: Strip,
    endpoints: Option<Endpoints>,
    keys: Option<Rc<KeySet>>,
    discovery: FetchSchedule,
    jwks: FetchSchedule,
    /// An answer signed with an unknown key asked for a JWKS fetch: the next tick sends it.
    jwks_wanted: bool,
    /// A short tick was asked for and has not come yet.
    kicked: bool,
    /// The last clock reading (for bookkeeping when the clock fails).
    last_now: i64,
    cache_keys: CacheKeys,
    local: LocalCache,
    /// Requests let through (their body and trailers may flow).
    allowed: HashSet<u32>,
    waiting: HashMap<u32, Waiting>,
    flights: HashMap<[u8; 32], Flight>,
    callouts: HashMap<u32, Purpose>,
    flood: FloodLog,
    /// RS256/ES256 signatures are checked by the proxy (chosen in [`Gate::start`]).
    native: bool,
}

/// Why a VM cannot start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartError {
    /// The tick period could not be set.
    Tick(HostError),
    /// `signature_check` is `envoy` but the proxy's check failed its known-answer test.
    NoNativeCrypto(SelfTestFailure),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Tick(e) => write!(f, "cannot set the tick period: {e}"),
            StartError::NoNativeCrypto(failure) => write!(
                f,
                "signature_check is `envoy` but the proxy's signature check is unusable: {failure}"
            ),
        }
    }
}

impl Gate {
    /// A VM with this configuration. Call [`Gate::start`] next.
    pub fn new(config: Config) -> Gate {
        let endpoints = config
            .endpoints
            .discovery_path
            .is_none()
            .then(|| Endpoints {
                introspection_path: config.endpoints.introspection_path.clone(),
                issuer: config.endpoints.issuer.clone(),
                jwks_path: configured_jwks_path(&config),
            });
        let local_capacity =
            usize::try_from(config.cache.max_entries.min(LOCAL_CACHE_MAX)).unwrap_or(0);
        let strip = match config.identity.spellings(STRIP_BY_NAME_MAX) {
            Some(names) if config.rules.is_empty() => {
                Strip::ByName(names.into_iter().map(Rc::from).collect())
            }
            _ => Strip::Scan,
        };
        Gate {
            strip,
            cache_keys: CacheKeys::new(&config),
            local: LocalCache::new(local_capacity),
            config: Rc::new(config),
            endpoints,
            keys: None,
            discovery: FetchSchedule::default(),
            jwks: FetchSchedule::default(),
            jwks_wanted: false,
            kicked: false,
            last_now: 0,
            allowed: HashSet::new(),
            waiting: HashMap::new(),
            flights: HashMap::new(),
            callouts: HashMap::new(),
            flood: FloodLog::default(),
            native: false,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Chooses who checks signatures, sets the tick and sends the first fetches. Called from
    /// the VM's own context, at configuration.
    pub fn start<H: Host>(&mut self, host: &mut H) -> Result<(), StartError> {
        self.native = self.choose_crypto(host)?;
        host.set_tick_period(self.base_tick())
            .map_err(StartError::Tick)?;
        self.maintain(host);
        Ok(())
    }

    /// Whether RS256/ES256 signatures are checked by the proxy: only if it passes the
    /// known-answer test ([`selftest`]) and the configuration allows it. Logged once per VM.
    fn choose_crypto<H: Host>(&self, host: &H) -> Result<bool, StartError> {
        let Some(signed) = &self.config.signed else {
            return Ok(false);
        };
        let alg = signed.alg.name();
        match (signed.alg, signed.check) {
            (SigningAlg::HS256, _) => Ok(false),
            (_, SignatureCheck::Wasm) => {
                info!("{alg} signatures checked in the module (signature_check `wasm`)");
                Ok(false)
            }
            (_, check) => match selftest::run(signed.alg, Crypto::Native(&HostVerifier(host))) {
                Ok(()) => {
                    info!("{alg} signatures checked by the proxy (verify_signature): known-answer test passed");
                    Ok(true)
                }
                Err(failure) if check == SignatureCheck::Envoy => {
                    Err(StartError::NoNativeCrypto(failure))
                }
                Err(failure) => {
                    info!("{alg} signatures checked in the module: the proxy's check is not used ({failure})");
                    Ok(false)
                }
            },
        }
    }

    /// Who checks RS256 and ES256 signatures in this VM.
    pub fn native_crypto(&self) -> bool {
        self.native
    }

    /// Whether the request was let through (its body and trailers may flow).
    pub fn is_allowed(&self, id: u32) -> bool {
        self.allowed.contains(&id)
    }

    /// Request `id`'s trailers arrived: the identity fields among them (in every spelling) and
    /// `Authorization` (unless forwarded) to remove, and whether the request may flow yet.
    /// Trailers are stripped whether or not the request is allowed yet: once held, they are not
    /// shown to the filter again.
    pub fn on_request_trailers<H: Host>(&mut self, id: u32, host: &mut H) -> Trailers {
        let hold = !self.is_allowed(id);
        let raw = match host.request_trailers() {
            Ok(raw) => raw,
            Err(e) => return self.trailers_refused(id, e, host),
        };
        let Some(pairs) = decode_pairs(&raw) else {
            return self.trailers_refused(id, HostError::Status(0), host);
        };
        let mut remove = Vec::new();
        let strip_authorization = !self.config.policy.forward_authorization;
        for (name, _) in pairs {
            if self.config.identity.is_identity_header(name)
                || (strip_authorization && name.eq_ignore_ascii_case(b"authorization"))
            {
                match std::str::from_utf8(name) {
                    Ok(name) => remove.push(name.to_string()),
                    Err(_) => return self.trailers_refused(id, HostError::Status(0), host),
                }
            }
        }
        Trailers::Strip { remove, hold }
    }

    fn trailers_refused<H: Host>(&mut self, id: u32, e: HostError, host: &mut H) -> Trailers {
        let denial = Denial::Unavailable(Fault::Host(e));
        Trailers::Refuse(self.denied(&Who::new(id), denial, host))
    }

    /// Requests paused, waiting for a verdict.
    pub fn paused(&self) -> usize {
        self.waiting.len()
    }

    /// Whether the VM fetches documents (and so ticks regularly).
    fn fetches(&self) -> bool {
        self.config.endpoints.discovery_path.is_some() || remote_keys(&self.config).is_some()
    }

    /// Every second when the VM fetches documents; otherwise often enough to report the
    /// denials the flood control counted.
    fn base_tick(&self) -> Duration {
        if self.fetches() {
            TICK
        } else {
            Duration::from_secs(crate::floodlog::INTERVAL_SECS.unsigned_abs())
        }
    }

    /// Asks for a tick as soon as possible.
    fn kick<H: Host>(&mut self, host: &mut H) {
        if self.kicked {
            return;
        }
        match host.set_tick_period(KICK) {
            Ok(()) => self.kicked = true,
            Err(e) => warn!("cannot ask for an early tick: {e}"),
        }
    }

    fn now<H: Host>(&mut self, host: &H) -> Result<i64, Fault> {
        let now = host.now_unix().map_err(|_| Fault::Clock)?;
        self.last_now = now;
        Ok(now)
    }

    // ---- A request's headers ------------------------------------------------------------

    /// What the gate needs from the current request's headers: the identity headers to remove
    /// (every spelling, by name or found in the map), `Authorization`, and, for the rules,
    /// `:path` and `:method`. Without rules and with few spellings, `Authorization` is the only
    /// header read (Envoy hands over repeated fields joined with `,`, which no token contains).
    fn read_head<H: Host>(&self, host: &H) -> Result<Head, HostError> {
        let names = match &self.strip {
            Strip::ByName(names) => names,
            Strip::Scan => return self.scan_head(host),
        };
        Ok(Head {
            remove: names.clone(),
            authorization: host.request_header("authorization")?.into_iter().collect(),
            path: Vec::new(),
            method: Vec::new(),
            request_id: None,
        })
    }

    /// [`Gate::read_head`] from the whole header map.
    fn scan_head<H: Host>(&self, host: &H) -> Result<Head, HostError> {
        let raw = host.request_headers()?;
        let pairs = decode_pairs(&raw).ok_or(HostError::Status(0))?;
        let mut head = Head {
            remove: Vec::new(),
            authorization: Vec::new(),
            path: Vec::new(),
            method: Vec::new(),
            request_id: None,
        };
        for (name, value) in pairs {
            match name {
                b":path" => head.path = value.to_vec(),
                b":method" => head.method = value.to_vec(),
                n if n.eq_ignore_ascii_case(b"authorization") => {
                    head.authorization.push(value.to_vec())
                }
                n if n.eq_ignore_ascii_case(b"x-request-id") => {
                    head.request_id = loggable_request_id(value)
                }
                _ => {}
            }
            if self.config.identity.is_identity_header(name) {
                let name = std::str::from_utf8(name).map_err(|_| HostError::Status(0))?;
                head.remove.push(Rc::from(name));
            }
        }
        Ok(head)
    }

    /// The request's loggable `x-request-id`, read only when a line may be logged about it.
    fn request_id<H: Host>(who: &mut Who, host: &H) {
        if who.request_id.is_none() {
            if let Ok(Some(value)) = host.request_header("x-request-id") {
                who.request_id = loggable_request_id(&value);
            }
        }
    }

    /// Refuses the current request (its `x-request-id` read first if the denial is logged).
    fn refuse_now<H: Host>(&mut self, who: &mut Who, denial: Denial, host: &mut H) -> Step {
        if matches!(denial, Denial::Unavailable(_)) {
            Gate::request_id(who, host);
        }
        self.refuse(who, denial, host)
    }

    /// Decides what to do with request `id` from its headers.
    pub fn on_request_headers<H: Host>(&mut self, id: u32, host: &mut H) -> Step {
        let config = self.config.clone();
        let mut who = Who::new(id);

        // 1. No client may forge an identity: every header the filter may set, in every
        //    spelling an upstream could read as one (`x_user_sub`), goes.
        let head = match self.read_head(host) {
            Ok(head) => head,
            Err(e) => return self.refuse_now(&mut who, Denial::Unavailable(Fault::Host(e)), host),
        };
        who.request_id = head.request_id;
        let remove = head.remove;

        // 2. The first rule that matches decides what the request needs.
        if !config.rules.is_empty() {
            let route_name = if rules::need_route_name(&config.rules) {
                match host.route_name() {
                    Ok(name) => name,
                    Err(e) => {
                        let denial = Denial::Unavailable(Fault::Host(e));
                        return self.refuse_now(&mut who, denial, host);
                    }
                }
            } else {
                None
            };
            let facts = Facts {
                route_name: route_name.as_deref(),
                path: &head.path,
                method: &head.method,
            };
            match rules::select(&config.rules, &facts) {
                Selection::Rule(index, rule) => {
                    who.rule = Some(index);
                    if rule.access == Access::Public {
                        host.count(Counter::Public);
                        debug!("[{id}] public by rule `{}`", rule.name);
                        return Step::Verdict(self.public(id, remove));
                    }
                }
                Selection::Unmatched => {}
                Selection::PathNotNormal => {
                    let denial = Denial::Malformed(Malformed::Path);
                    return self.refuse_now(&mut who, denial, host);
                }
            }
        }

        // 3. Exactly one well-formed bearer token.
        let values: Vec<&[u8]> = head.authorization.iter().map(Vec::as_slice).collect();
        let credential = match bearer::extract(&values, config.limits.max_token_length) {
            Credentials::Bearer(credential) => credential,
            Credentials::Missing => return self.refuse_now(&mut who, Denial::Missing, host),
            Credentials::Malformed(m) => {
                return self.refuse_now(&mut who, Denial::Malformed(m), host)
            }
        };
        let token = match bearer::decode(credential, config.bearer_encoding) {
            Ok(token) => token,
            Err(m) => return self.refuse_now(&mut who, Denial::Malformed(m), host),
        };

        let now = match self.now(host) {
            Ok(now) => now,
            Err(fault) => return self.refuse_now(&mut who, Denial::Unavailable(fault), host),
        };

        // 4. A cached answer: this VM's own memory first (keyed by the token: no HMAC), then
        //    the cache shared by all workers. The policy is applied to it afresh (a worker's own
        //    entry reuses its last allow for the same rule while that allow holds).
        let enabled = config.cache.enabled();
        if enabled {
            if let Some(entry) = self.local.get(&token, now) {
                host.count(Counter::CacheHit);
                let decision = decide_local(&config, entry, who.rule, now);
                return self.decided(&mut who, remove, decision, host);
            }
        }
        let key = self
            .cache_keys
            .key_for(&token, config.cache.max_entries.max(1));
        if enabled {
            if let Some(claims) = self.shared_cached(&key, &token, now, host) {
                return self.hit(&mut who, remove, &claims, now, host);
            }
            host.count(Counter::CacheMiss);
        }
        // The request may wait: its `x-request-id` is read now, while it is the current one.
        Gate::request_id(&mut who, host);

        // 5. One callout per token at a time in this VM: join the one in flight.
        if let Some(flight) = self.flights.get_mut(&key.fingerprint) {
            flight.members.push(id);
            self.waiting
                .insert(id, Waiting::new(key.fingerprint, remove, who));
            host.count(Counter::CalloutCoalesced);
            debug!("[{id}] waiting for the introspection in flight");
            return Step::Pause;
        }

        // 6. Ask the authorization server; the request waits for its answer.
        let Some(endpoints) = &self.endpoints else {
            return self.refuse(&who, Denial::Unavailable(Fault::NotConfigured), host);
        };
        let accept = if config.signed.is_some() {
            ACCEPT_JWT
        } else {
            ACCEPT_JSON
        };
        let request = callout::introspection_request(
            &config.client,
            &config.target.authority,
            &endpoints.introspection_path,
            &token,
            accept,
        );
        // Before the dispatch: Envoy's timer starts as soon as it takes the callout.
        let sent_at = host.now_nanos();
        let token_id = match host.dispatch(&config.target.cluster, &request, config.target.timeout)
        {
            Ok(token_id) => token_id,
            Err(e) => {
                warn!("[{id}] introspection callout not sent: {e}");
                return self.refuse(&who, Denial::Unavailable(Fault::DispatchFailed), host);
            }
        };
        host.count(Counter::CalloutSent);
        debug!("[{id}] introspection callout sent");
        self.callouts
            .insert(token_id, Purpose::Introspection(key.fingerprint));
        self.waiting
            .insert(id, Waiting::new(key.fingerprint, remove, who));
        self.flights.insert(
            key.fingerprint,
            Flight {
                members: vec![id],
                owner: Some(id),
                stage: Stage::Introspecting(token_id),
                request,
                key,
                token,
                sent_at,
            },
        );
        Step::Pause
    }

    /// A cache hit for the current request: the policy's verdict on the cached claims.
    fn hit<H: Host>(
        &mut self,
        who: &mut Who,
        remove: Vec<Rc<str>>,
        claims: &Claims,
        now: i64,
        host: &mut H,
    ) -> Step {
        host.count(Counter::CacheHit);
        let decision = self.decide(who, claims, now);
        self.decided(who, remove, decision, host)
    }

    /// The verdict of a decision made from cached claims.
    fn decided<H: Host>(
        &mut self,
        who: &mut Who,
        remove: Vec<Rc<str>>,
        decision: Decision,
        host: &mut H,
    ) -> Step {
        if matches!(decision, Decision::Deny(Denial::Unavailable(_))) {
            Gate::request_id(who, host);
        }
        Step::Verdict(self.verdict(who, remove, decision, host))
    }

    /// The requirements that apply to a request: its rule's, or the top-level ones.
    fn requirements(&self, rule: Option<usize>) -> &Requirements {
        requirements(&self.config, rule)
    }

    /// The policy's decision for this request on these claims.
    fn decide(&self, who: &Who, claims: &Claims, now: i64) -> Decision {
        let config = &self.config;
        let requirements = self.requirements(who.rule);
        decision::evaluate(&config.policy, requirements, &config.identity, claims, now)
    }

    /// A public route: through, without the identity headers the client sent.
    fn public(&mut self, id: u32, mut remove: Vec<Rc<str>>) -> Verdict {
        self.allowed.insert(id);
        if !self.config.policy.forward_authorization {
            remove.push(Rc::from("authorization"));
        }
        Verdict::Allow {
            remove,
            set: Vec::new(),
        }
    }

    /// A live answer for this token in the cache shared by all workers; kept in this VM's
    /// memory too.
    fn shared_cached<H: Host>(
        &mut self,
        key: &CacheKey,
        token: &str,
        now: i64,
        host: &H,
    ) -> Option<Rc<Claims>> {
        let bytes = match host.shared_get(&key.slot_key) {
            Ok(Some((bytes, _))) => bytes,
            Ok(None) => return None,
            Err(e) => {
                warn!("cache read failed: {e}");
                return None;
            }
        };
        let (expires_at, claims) = self.cache_keys.decode(&bytes, &key.fingerprint, now)?;
        let claims = Rc::new(claims);
        self.local.insert(token, expires_at, claims.clone(), now);
        Some(claims)
    }

    /// Stores the claims of a definite decision, if the policy allows, replacing whatever the
    /// slot held. Compare-and-swap, with one retry if another worker wrote the slot in between.
    fn store<H: Host>(
        &mut self,
        key: &CacheKey,
        token: &str,
        claims: &Claims,
        asked_at: i64,
        now: i64,
        host: &mut H,
    ) {
        let Some(expires_at) = cache::expires_at(
            &self.config.cache,
            &self.config.policy.expiry_claim,
            claims,
            asked_at,
            now,
        ) else {
            return;
        };
        let active = cache::is_active(claims);
        let kept = cache::kept_claims(&self.config.policy, &self.config.identity, claims);
        let entry = self
            .cache_keys
            .encode(&key.fingerprint, now, expires_at, &kept);
        self.local.insert(token, expires_at, Rc::new(kept), now);
        for _ in 0..2 {
            let cas = match host.shared_get(&key.slot_key) {
                Ok(Some((bytes, cas))) => {
                    let slot = &self.cache_keys;
                    if let Some((until, kept)) =
                        slot.kept_over(&bytes, &key.fingerprint, expires_at, active, now)
                    {
                        // The slot's entry for this token wins (a revocation another worker
                        // saw, or a longer life): this worker's front keeps it too.
                        self.local.insert(token, until, Rc::new(kept), now);
                        return;
                    }
                    cas
                }
                Ok(None) => 0,
                Err(e) => {
                    warn!("cache read failed: {e}");
                    return;
                }
            };
            match host.shared_set(&key.slot_key, &entry, cas) {
                Ok(()) => {
                    host.count(Counter::CacheStore);
                    return;
                }
                Err(HostError::CasMismatch) => continue,
                Err(e) => {
                    warn!("cache write failed: {e}");
                    return;
                }
            }
        }
        debug!("cache write lost twice to other workers: not stored");
    }

    // ---- Verdicts -----------------------------------------------------------------------

    /// The verdict of a decision for a request; counts it.
    fn verdict<H: Host>(
        &mut self,
        who: &Who,
        mut remove: Vec<Rc<str>>,
        decision: Decision,
        host: &mut H,
    ) -> Verdict {
        match decision {
            Decision::Allow(set) => {
                host.count(Counter::Allowed);
                self.allowed.insert(who.id);
                // Setting a header replaces every value it had: no need to remove it first.
                remove.retain(|name| set.iter().all(|(set, _)| set.as_str() != &**name));
                if !self.config.policy.forward_authorization {
                    remove.push(Rc::from("authorization"));
                }
                debug!("[{}] allowed", who.id);
                Verdict::Allow { remove, set }
            }
            Decision::Deny(denial) => Verdict::Deny(self.denied(who, denial, host)),
        }
    }

    /// Counts and logs a denial; the local reply for it.
    fn denied<H: Host>(&mut self, who: &Who, denial: Denial, host: &mut H) -> LocalReply {
        self.allowed.remove(&who.id);
        host.count(Counter::Denied(denial.kind()));
        match denial {
            Denial::Unavailable(fault) => {
                host.count(Counter::UnavailableCause(fault.code()));
                // One line per cause per interval, not one per request, during an outage.
                let request_id = who.request_id.as_deref();
                if let Some(line) = self.flood.note(fault.code(), self.last_now, request_id) {
                    warn!("{line}: {fault}");
                }
            }
            other => debug!("[{}] denied ({}): {other}", who.id, other.cause()),
        }
        let requirements = self.requirements(who.rule);
        reply::for_denial(&self.config.policy, requirements, &denial)
    }

    fn refuse<H: Host>(&mut self, who: &Who, denial: Denial, host: &mut H) -> Step {
        Step::Verdict(Verdict::Deny(self.denied(who, denial, host)))
    }

    /// The adapter could not apply an `Allow` (a header could not be set or removed): the
    /// request is answered 503 instead.
    pub fn allow_failed<H: Host>(&mut self, id: u32, error: HostError, host: &mut H) -> Verdict {
        let denial = Denial::Unavailable(Fault::Host(error));
        Verdict::Deny(self.denied(&Who::new(id), denial, host))
    }

    // ---- Callout answers ----------------------------------------------------------------

    /// A callout answered (or failed): `num_headers == 0` means it got no answer.
    pub fn on_callout_response<H: Host>(
        &mut self,
        token: u32,
        num_headers: usize,
        body_size: usize,
        host: &mut H,
    ) -> Effects {
        let Some(purpose) = self.callouts.remove(&token) else {
            debug!("ignoring the answer of an unknown callout");
            return Effects::new();
        };
        let answer = response::read_answer(
            host,
            num_headers,
            body_size,
            self.config.limits.max_response_bytes,
        );
        match purpose {
            Purpose::Discovery => {
                self.discovery_answered(answer, host);
                Effects::new()
            }
            Purpose::Jwks => self.jwks_answered(answer, host),
            Purpose::Introspection(fingerprint) => {
                self.introspection_answered(fingerprint, token, answer, host)
            }
        }
    }

    fn introspection_answered<H: Host>(
        &mut self,
        fingerprint: [u8; 32],
        token: u32,
        answer: Result<StoredAnswer, Fault>,
        host: &mut H,
    ) -> Effects {
        let Some(flight) = self.flights.get(&fingerprint) else {
            return Effects::new();
        };
        if !matches!(flight.stage, Stage::Introspecting(t) if t == token) {
            return Effects::new();
        }
        let elapsed_ms = match (flight.sent_at, host.now_nanos()) {
            (Some(t0), Some(t1)) => {
                let ms = t1.saturating_sub(t0) / 1_000_000;
                host.record(Histogram::CalloutLatencyMs, ms);
                Some(ms)
            }
            _ => None,
        };
        let now = match self.now(host) {
            Ok(now) => now,
            Err(fault) => return self.finish_flight(fingerprint, self.last_now, Err(fault), host),
        };
        let timeout = self.config.target.timeout;
        let answer = answer.and_then(|a| match is_timeout(&a, elapsed_ms, timeout) {
            true => Err(Fault::Timeout),
            false => Ok(a),
        });
        match answer {
            Ok(answer) => self.judge(fingerprint, answer, now, true, host),
            Err(fault) => self.finish_flight(fingerprint, now, Err(fault), host),
        }
    }

    /// Verifies an answer and concludes its flight — or parks it until a fresh JWKS.
    fn judge<H: Host>(
        &mut self,
        fingerprint: [u8; 32],
        answer: StoredAnswer,
        now: i64,
        may_refetch: bool,
        host: &mut H,
    ) -> Effects {
        let started = host.now_nanos();
        let verifier = HostVerifier(&*host);
        let crypto = if self.native {
            Crypto::Native(&verifier)
        } else {
            Crypto::Wasm
        };
        let verified = match &self.endpoints {
            None => Err(AnswerError::Fault(Fault::NotConfigured)),
            Some(endpoints) => response::verified_claims(
                &self.config,
                endpoints,
                self.keys.as_deref(),
                crypto,
                &answer.view(),
                now,
            ),
        };
        if let (Some(signed), Some(t0), Some(t1)) = (&self.config.signed, started, host.now_nanos())
        {
            let micros = t1.saturating_sub(t0) / 1000;
            let by = match crypto {
                Crypto::Native(_) => "proxy",
                Crypto::Wasm => "wasm",
            };
            debug!("{} answer checked in {micros} us ({by})", signed.alg.name());
        }
        match verified {
            Ok(claims) => self.finish_flight(fingerprint, now, Ok(claims), host),
            Err(AnswerError::Fault(fault)) => {
                self.finish_flight(fingerprint, now, Err(fault), host)
            }
            Err(AnswerError::UnknownKey) => {
                let interval = self.config.signed.as_ref().map_or(0, |s| {
                    i64::try_from(s.refetch_interval.as_secs()).unwrap_or(i64::MAX)
                });
                let coming = self.jwks.in_flight(now) || self.jwks_wanted;
                if may_refetch && (coming || self.jwks.trigger_allowed(now, interval)) {
                    if let Some(flight) = self.flights.get_mut(&fingerprint) {
                        flight.stage = Stage::AwaitingKeys(answer);
                    }
                    if !coming {
                        info!("answer signed with an unknown key: fetching the JWKS");
                        self.jwks_wanted = true;
                        self.kick(host);
                    }
                    return Effects::new();
                }
                let fault = if self.keys.is_some() {
                    Fault::Jwt(VerifyError::UnknownKey)
                } else {
                    Fault::NoKeys
                };
                self.finish_flight(fingerprint, now, Err(fault), host)
            }
        }
    }

    /// Ends a flight: its decision for every request that waited for it; caches it if it is
    /// definite.
    fn finish_flight<H: Host>(
        &mut self,
        fingerprint: [u8; 32],
        now: i64,
        outcome: Result<Claims, Fault>,
        host: &mut H,
    ) -> Effects {
        let Some(flight) = self.flights.remove(&fingerprint) else {
            return Effects::new();
        };
        // Only an answer the policy can fully read is cached: judged here without any route's
        // scope or client requirement, so no early refusal hides an unusable claim.
        let open = Requirements::default();
        match &outcome {
            Ok(claims) => {
                let config = &self.config;
                let full = decision::evaluate(&config.policy, &open, &config.identity, claims, now);
                if full.is_definite() {
                    // Lifetimes count from the question (the callout's dispatch).
                    let asked_at = flight
                        .sent_at
                        .and_then(|ns| i64::try_from(ns / 1_000_000_000).ok())
                        .unwrap_or(now);
                    self.store(&flight.key, &flight.token, claims, asked_at, now, host);
                }
            }
            Err(_) => host.count(Counter::CalloutFailed),
        }
        let mut effects = Effects::with_capacity(flight.members.len());
        for id in flight.members {
            let (remove, who) = match self.waiting.remove(&id) {
                Some(w) => (w.remove, w.who),
                None => (Vec::new(), Who::new(id)),
            };
            let decision = match &outcome {
                Ok(claims) => self.decide(&who, claims, now),
                Err(fault) => Decision::Deny(Denial::Unavailable(*fault)),
            };
            let verdict = self.verdict(&who, remove, decision, host);
            effects.push((id, verdict));
        }
        effects
    }

    fn discovery_answered<H: Host>(&mut self, answer: Result<StoredAnswer, Fault>, host: &mut H) {
        let now = self.now(host).unwrap_or(self.last_now);
        let found = answer.and_then(|a| {
            response::check_status(&a.view())?;
            discovery::parse(&a.body).map_err(|_| Fault::NotJson)
        });
        match found {
            Ok(found) => {
                self.discovery.finished(now, true);
                let endpoints = Endpoints {
                    introspection_path: if self.config.endpoints.introspection_path_explicit {
                        self.config.endpoints.introspection_path.clone()
                    } else {
                        found.introspection_path
                    },
                    issuer: self.config.endpoints.issuer.clone().or(Some(found.issuer)),
                    jwks_path: configured_jwks_path(&self.config).or(found.jwks_path),
                };
                info!(
                    "discovery: issuer {}, introspection {}, jwks {}",
                    endpoints.issuer.as_deref().unwrap_or("-"),
                    endpoints.introspection_path,
                    endpoints.jwks_path.as_deref().unwrap_or("-")
                );
                self.endpoints = Some(endpoints);
                if remote_keys(&self.config).is_some() {
                    self.kick(host); // the JWKS can be fetched now
                }
            }
            Err(fault) => {
                self.discovery.finished(now, false);
                warn!(
                    "discovery failed ({}), retrying in {RETRY_SECS} s: {fault}",
                    fault.code()
                );
            }
        }
    }

    fn jwks_answered<H: Host>(
        &mut self,
        answer: Result<StoredAnswer, Fault>,
        host: &mut H,
    ) -> Effects {
        let now = self.now(host).unwrap_or(self.last_now);
        let parsed = answer.map_err(|f| f.to_string()).and_then(|a| {
            response::check_status(&a.view()).map_err(|f| f.to_string())?;
            KeySet::from_jwks(&a.body).map_err(String::from)
        });
        match parsed {
            Ok(set) if !set.is_empty() => {
                info!(
                    "JWKS loaded: {} usable keys ({} skipped)",
                    set.len(),
                    set.skipped
                );
                self.keys = Some(Rc::new(set));
                self.jwks.finished(now, true);
                host.count(Counter::JwksFetchOk);
            }
            other => {
                let why = other.err().unwrap_or_else(|| "no usable key".into());
                warn!("JWKS fetch failed, keeping the previous keys if any: {why}");
                self.jwks.finished(now, false);
                host.count(Counter::JwksFetchFailed);
            }
        }
        self.judge_parked(now, host)
    }

    /// The flights whose stage matches.
    fn flights_where(&self, matches: impl Fn(&Stage) -> bool) -> Vec<[u8; 32]> {
        self.flights
            .iter()
            .filter(|(_, f)| matches(&f.stage))
            .map(|(fp, _)| *fp)
            .collect()
    }

    /// Judges again, with the keys the VM now has, every answer that waited for them.
    fn judge_parked<H: Host>(&mut self, now: i64, host: &mut H) -> Effects {
        let parked = self.flights_where(|s| matches!(s, Stage::AwaitingKeys(_)));
        let mut effects = Effects::new();
        for fp in parked {
            let Some(flight) = self.flights.get_mut(&fp) else {
                continue;
            };
            let Stage::AwaitingKeys(answer) = std::mem::replace(&mut flight.stage, Stage::Orphaned)
            else {
                continue;
            };
            effects.extend(self.judge(fp, answer, now, false, host));
        }
        effects
    }

    /// Concludes every flight in `stage_matches` with a fault.
    fn fail_flights<H: Host>(
        &mut self,
        now: i64,
        fault: Fault,
        stage_matches: fn(&Stage) -> bool,
        host: &mut H,
    ) -> Effects {
        let failed = self.flights_where(stage_matches);
        let mut effects = Effects::new();
        for fp in failed {
            effects.extend(self.finish_flight(fp, now, Err(fault), host));
        }
        effects
    }

    // ---- The VM's timer -----------------------------------------------------------------

    /// The tick: sends the fetches that are due and the introspections whose sender went away.
    pub fn on_tick<H: Host>(&mut self, host: &mut H) -> Effects {
        let effects = self.maintain(host);
        // Expired tokens leave the VM's memory within a tick.
        self.local.purge(self.last_now);
        for line in self.flood.flush(self.last_now) {
            warn!("{line}");
        }
        if std::mem::take(&mut self.kicked) {
            if let Err(e) = host.set_tick_period(self.base_tick()) {
                warn!("cannot restore the tick period: {e}");
            }
        }
        effects
    }

    fn maintain<H: Host>(&mut self, host: &mut H) -> Effects {
        let now = match self.now(host) {
            Ok(now) => now,
            Err(fault) => {
                // Nothing can be judged without a clock: the waiting requests are answered.
                let last = self.last_now;
                return self.fail_flights(
                    last,
                    fault,
                    |s| !matches!(s, Stage::Introspecting(_)),
                    host,
                );
            }
        };
        self.discovery.observe(now);
        self.jwks.observe(now);
        let mut effects = Effects::new();
        if let (Some(path), None) = (&self.config.endpoints.discovery_path, &self.endpoints) {
            if self.discovery.timer_due(now, None, RETRY_SECS) {
                let request =
                    callout::get_request(&self.config.target.authority, path, ACCEPT_JSON);
                match host.dispatch(&self.config.target.cluster, &request, FETCH_TIMEOUT) {
                    Ok(token) => {
                        self.discovery.started(now, false);
                        self.callouts.insert(token, Purpose::Discovery);
                    }
                    Err(e) => {
                        self.discovery.not_started(now, false);
                        warn!("discovery not sent: {e}");
                    }
                }
            }
        }
        if let Some(refresh) = self
            .config
            .signed
            .as_ref()
            .filter(|_| remote_keys(&self.config).is_some())
            .map(|s| i64::try_from(s.refresh.as_secs()).unwrap_or(i64::MAX))
        {
            if !self.jwks.in_flight(now) && !self.jwks_wanted {
                // Answers still waiting for keys with no fetch coming: theirs was lost (15 s of
                // ticks without an answer, the schedule's safety net). They are judged with
                // the keys there are rather than wait for the refresh timer.
                effects.extend(self.judge_parked(now, host));
            }
            let due = self.jwks.timer_due(now, Some(refresh), RETRY_SECS);
            if (due || self.jwks_wanted) && !self.jwks.in_flight(now) {
                let triggered = std::mem::take(&mut self.jwks_wanted) && !due;
                if let Err(fault) = self.send_jwks_fetch(now, triggered, host) {
                    warn!("JWKS fetch not sent ({}): {fault}", fault.code());
                    effects.extend(self.fail_flights(
                        now,
                        fault,
                        |s| matches!(s, Stage::AwaitingKeys(_)),
                        host,
                    ));
                }
            }
        }
        effects.extend(self.send_orphans(now, host));
        effects
    }

    fn send_jwks_fetch<H: Host>(
        &mut self,
        now: i64,
        triggered: bool,
        host: &mut H,
    ) -> Result<(), Fault> {
        let Some((cluster, authority)) = remote_keys(&self.config) else {
            return Err(Fault::NotConfigured);
        };
        let Some(path) = self.endpoints.as_ref().and_then(|e| e.jwks_path.as_deref()) else {
            self.jwks.not_started(now, triggered);
            return Err(Fault::NotConfigured);
        };
        let request = callout::get_request(authority, path, ACCEPT_JWKS);
        match host.dispatch(cluster, &request, FETCH_TIMEOUT) {
            Ok(token) => {
                self.jwks.started(now, triggered);
                self.callouts.insert(token, Purpose::Jwks);
                Ok(())
            }
            Err(e) => {
                warn!("JWKS fetch not sent: {e}");
                self.jwks.not_started(now, triggered);
                Err(Fault::DispatchFailed)
            }
        }
    }

    /// Sends again, from the VM, the introspections whose sender went away.
    fn send_orphans<H: Host>(&mut self, now: i64, host: &mut H) -> Effects {
        let orphans = self.flights_where(|s| matches!(s, Stage::Orphaned));
        let mut effects = Effects::new();
        for fp in orphans {
            let Some(flight) = self.flights.get_mut(&fp) else {
                continue;
            };
            match host.dispatch(
                &self.config.target.cluster,
                &flight.request,
                self.config.target.timeout,
            ) {
                Ok(token) => {
                    flight.stage = Stage::Introspecting(token);
                    flight.owner = None;
                    flight.sent_at = host.now_nanos();
                    self.callouts.insert(token, Purpose::Introspection(fp));
                    host.count(Counter::CalloutSent);
                    debug!("introspection sent again for the requests still waiting");
                }
                Err(e) => {
                    warn!("introspection not sent again: {e}");
                    effects.extend(self.finish_flight(fp, now, Err(Fault::DispatchFailed), host));
                }
            }
        }
        effects
    }

    // ---- A request goes away ------------------------------------------------------------

    /// Request `id` is done (answered, or its client went away).
    pub fn on_done<H: Host>(&mut self, id: u32, host: &mut H) {
        self.allowed.remove(&id);
        let Some(waiting) = self.waiting.remove(&id) else {
            return;
        };
        let fp = waiting.fingerprint;
        let Some(flight) = self.flights.get_mut(&fp) else {
            return;
        };
        flight.members.retain(|m| *m != id);
        let owned = flight.owner == Some(id);
        if owned {
            flight.owner = None;
        }
        match (&flight.stage, owned, flight.members.is_empty()) {
            // The host cancels the callouts of a request that goes away.
            (Stage::Introspecting(token), true, empty) => {
                self.callouts.remove(token);
                if empty {
                    self.flights.remove(&fp);
                } else {
                    debug!("[{id}] went away while introspecting for others: sent again");
                    flight.stage = Stage::Orphaned;
                    self.kick(host);
                }
            }
            // A callout the VM owns still answers (and fills the cache): keep it.
            (Stage::Introspecting(_), false, _) => {}
            (_, _, true) => {
                self.flights.remove(&fp);
            }
            _ => {}
        }
    }
}

/// The policy's decision on an entry of the worker's own cache: its remembered allow while that
/// holds for this rule and time (see [`Remembered`]), else `evaluate`, remembering a new allow.
fn decide_local(
    config: &Config,
    entry: &mut LocalEntry,
    rule: Option<usize>,
    now: i64,
) -> Decision {
    if let Some(headers) = entry.remembered.as_ref().and_then(|r| r.headers(rule, now)) {
        return Decision::Allow(headers.to_vec());
    }
    let requirements = requirements(config, rule);
    let decision = decision::evaluate(
        &config.policy,
        requirements,
        &config.identity,
        &entry.claims,
        now,
    );
    if let Decision::Allow(headers) = &decision {
        entry.remembered = Remembered::new(&config.policy, &entry.claims, rule, headers.clone());
    }
    decision
}

/// The requirements that apply to a request: its rule's, or the top-level ones.
fn requirements(config: &Config, rule: Option<usize>) -> &Requirements {
    match rule.and_then(|i| config.rules.get(i)).map(|r| &r.access) {
        Some(Access::Protected(requirements)) => requirements,
        _ => &config.policy.requirements,
    }
}

/// Whether a callout answer is Envoy's own reply to a callout that timed out: a 504 with its
/// `upstream request timeout` body, or any 504 once nearly the whole timeout has passed (Envoy's
/// timer starts a little before the filter's clock reading).
fn is_timeout(answer: &StoredAnswer, elapsed_ms: Option<u64>, timeout: Duration) -> bool {
    if answer.status.as_deref() != Some(b"504") {
        return false;
    }
    let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    answer.body == b"upstream request timeout"
        || elapsed_ms.is_some_and(|ms| ms.saturating_mul(10) >= timeout_ms.saturating_mul(9))
}

/// The cluster and authority the JWKS is fetched from, if it is fetched.
fn remote_keys(config: &Config) -> Option<(&str, &str)> {
    match config.signed.as_ref().map(|s| &s.keys) {
        Some(KeySource::Remote {
            cluster, authority, ..
        }) => Some((cluster, authority)),
        _ => None,
    }
}

/// The JWKS path given in the configuration, if the keys are fetched.
fn configured_jwks_path(config: &Config) -> Option<String> {
    match config.signed.as_ref().map(|s| &s.keys) {
        Some(KeySource::Remote { path, .. }) => path.clone(),
        _ => None,
    }
}
