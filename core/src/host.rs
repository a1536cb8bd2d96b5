//! The port through which the core uses the proxy: the clock, callouts and their answers,
//! shared data, metrics and the tick timer. The proxy-wasm adapter implements it with raw host
//! calls; [`crate::mock::MockHost`] implements it for the native tests.
//!
//! Nothing in this trait resumes a request or sends a local reply: those can re-enter the VM,
//! so they are effects the core returns as data ([`crate::gate::Verdict`]) and the adapter
//! applies once it has released the core's state.

use std::time::Duration;

use crate::callout::Callout;
use crate::fault::{Fault, HostError};

/// Counters (Envoy shows them in `/stats` as `wasmcustom.introspection.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Counter {
    Allowed,
    /// A request let through by a public rule, with no token.
    Public,
    /// `introspection.denied.<kind>` (see [`crate::decision::Denial::kind`]).
    Denied(&'static str),
    /// `introspection.denied.unavailable.<code>`, beside the total.
    UnavailableCause(&'static str),
    CacheHit,
    CacheMiss,
    CacheStore,
    CalloutSent,
    CalloutFailed,
    CalloutCoalesced,
    JwksFetchOk,
    JwksFetchFailed,
}

impl Counter {
    /// The metric's name.
    pub fn name(self) -> String {
        match self {
            Counter::Allowed => "introspection.allowed".into(),
            Counter::Public => "introspection.public".into(),
            Counter::Denied(kind) => format!("introspection.denied.{kind}"),
            Counter::UnavailableCause(code) => format!("introspection.denied.unavailable.{code}"),
            Counter::CacheHit => "introspection.cache.hit".into(),
            Counter::CacheMiss => "introspection.cache.miss".into(),
            Counter::CacheStore => "introspection.cache.store".into(),
            Counter::CalloutSent => "introspection.callout.sent".into(),
            Counter::CalloutFailed => "introspection.callout.failed".into(),
            Counter::CalloutCoalesced => "introspection.callout.coalesced".into(),
            Counter::JwksFetchOk => "introspection.jwks.fetch_ok".into(),
            Counter::JwksFetchFailed => "introspection.jwks.fetch_failed".into(),
        }
    }

    /// Every counter, so the adapter can define them all at configuration (Envoy then shows
    /// zeros instead of missing series).
    pub fn all() -> Vec<Counter> {
        let mut all = vec![
            Counter::Allowed,
            Counter::Public,
            Counter::CacheHit,
            Counter::CacheMiss,
            Counter::CacheStore,
            Counter::CalloutSent,
            Counter::CalloutFailed,
            Counter::CalloutCoalesced,
            Counter::JwksFetchOk,
            Counter::JwksFetchFailed,
        ];
        for kind in ["missing", "malformed", "inactive", "scope", "unavailable"] {
            all.push(Counter::Denied(kind));
        }
        all.extend(Fault::CODES.iter().map(|c| Counter::UnavailableCause(c)));
        all
    }
}

/// Histograms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Histogram {
    /// `introspection.callout.latency_ms`.
    CalloutLatencyMs,
}

impl Histogram {
    pub fn name(self) -> &'static str {
        match self {
            Histogram::CalloutLatencyMs => "introspection.callout.latency_ms",
        }
    }
}

/// What the core needs from the proxy. Every call may fail; none may panic.
pub trait Host {
    /// Wall clock, unix seconds.
    fn now_unix(&self) -> Result<i64, HostError>;
    /// Wall clock, nanoseconds (for latencies); `None` if unreadable.
    fn now_nanos(&self) -> Option<u64>;

    /// The current request's headers, serialised (see [`crate::headers::decode_pairs`]).
    /// Costly (the host serialises every header): the hit path reads single headers instead.
    fn request_headers(&self) -> Result<Vec<u8>, HostError>;
    /// One header of the current request (`name` lowercase), `None` if absent. Envoy answers
    /// with the first value of the field; repeated fields of its inline headers, among them
    /// `Authorization`, arrive already joined into one value with `,`.
    fn request_header(&self, name: &str) -> Result<Option<Vec<u8>>, HostError>;
    /// The current request's trailers, serialised.
    fn request_trailers(&self) -> Result<Vec<u8>, HostError>;
    /// The name of the route Envoy chose for the current request (`None`: it has none).
    fn route_name(&self) -> Result<Option<String>, HostError>;

    /// Sends a callout; returns its token. The answer comes back through the core's
    /// `on_callout_response` with that token.
    fn dispatch(
        &mut self,
        cluster: &str,
        request: &Callout,
        timeout: Duration,
    ) -> Result<u32, HostError>;
    /// A header of the callout answer being delivered.
    fn callout_header(&self, name: &str) -> Result<Option<Vec<u8>>, HostError>;
    /// The body of the callout answer being delivered (`size` bytes).
    fn callout_body(&self, size: usize) -> Result<Vec<u8>, HostError>;

    /// Shared data (all VMs of the proxy): the value and its CAS, `None` if never written.
    fn shared_get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, HostError>;
    /// Compare-and-swap write: [`HostError::CasMismatch`] if the value changed since `cas`
    /// (0: no check).
    fn shared_set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<(), HostError>;

    fn count(&mut self, counter: Counter);
    fn record(&mut self, histogram: Histogram, value: u64);

    /// Ticks of this VM's root every `period` (zero: none).
    fn set_tick_period(&mut self, period: Duration) -> Result<(), HostError>;

    /// Calls a function the proxy registers for modules (`proxy_call_foreign_function`), such
    /// as Envoy's `verify_signature` ([`crate::foreign`]). A missing function is
    /// `HostError::Status(1)` (NotFound).
    fn call_foreign(&self, function: &str, arguments: &[u8]) -> Result<Vec<u8>, HostError>;
}
