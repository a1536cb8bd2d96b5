//! A scripted [`Host`] for native tests: a clock that only moves when told (and can fail),
//! recorded callouts, shared data with compare-and-swap (and injectable mismatches), counters,
//! and the request headers or callout answer "being delivered".

use std::cell::Cell;
use std::collections::HashMap;
use std::time::Duration;

use crate::callout::Callout;
use crate::fault::HostError;
use crate::headers::encode_pairs;
use crate::host::{Counter, Histogram, Host};

/// A callout the core sent.
#[derive(Debug, Clone)]
pub struct Dispatched {
    pub token: u32,
    pub cluster: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub timeout: Duration,
}

impl Dispatched {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn path(&self) -> &str {
        self.header(":path").unwrap_or_default()
    }
}

/// The answer of the callout being delivered.
#[derive(Debug, Clone, Default)]
pub struct MockAnswer {
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl MockAnswer {
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> MockAnswer {
        MockAnswer {
            headers: vec![
                (":status".into(), status.to_string().into_bytes()),
                ("content-type".into(), content_type.as_bytes().to_vec()),
            ],
            body: body.into(),
        }
    }

    pub fn json(body: &str) -> MockAnswer {
        MockAnswer::new(200, "application/json", body)
    }
}

#[derive(Debug, Default)]
pub struct MockHost {
    /// Unix seconds; `None`: the clock fails.
    pub now: Option<i64>,
    /// Extra nanoseconds on top of `now` (for latencies).
    pub nanos: u64,
    /// The headers of the request being handled.
    pub request: Vec<(Vec<u8>, Vec<u8>)>,
    /// Fail `request_headers` and `request_header`.
    pub request_headers_fail: bool,
    /// Whole-map reads (`request_headers`) and single-header reads (`request_header`), to
    /// check what a path costs the host.
    pub map_reads: std::cell::Cell<u32>,
    pub header_reads: std::cell::Cell<u32>,
    /// The trailers of the request being handled.
    pub trailers: Vec<(Vec<u8>, Vec<u8>)>,
    /// Envoy's `route_name` for the request being handled.
    pub route_name: Option<String>,
    pub dispatched: Vec<Dispatched>,
    /// Refuse dispatches.
    pub dispatch_fails: bool,
    next_token: u32,
    /// The answer being delivered.
    pub answer: MockAnswer,
    /// Shared data: value and CAS.
    pub shared: HashMap<String, (Vec<u8>, u32)>,
    /// How many of the next shared-data writes fail with a CAS mismatch (as if another worker
    /// wrote in between).
    pub cas_mismatches: u32,
    /// Writes attempted, successful or not.
    pub shared_writes: u32,
    pub counters: HashMap<String, u64>,
    pub histograms: HashMap<&'static str, Vec<u64>>,
    /// Every tick period set, in order.
    pub ticks: Vec<Duration>,
    /// The proxy's foreign functions: `None` has none (every call is NotFound).
    pub foreign: Option<ForeignFunction>,
    /// Foreign calls made.
    pub foreign_calls: Cell<u32>,
}

/// A scripted foreign function: name and serialised arguments to the serialised result.
pub type ForeignFunction = fn(&str, &[u8]) -> Result<Vec<u8>, HostError>;

impl MockHost {
    pub fn at(now: i64) -> MockHost {
        MockHost {
            now: Some(now),
            next_token: 100,
            ..MockHost::default()
        }
    }

    /// Sets the headers of the next request handled.
    pub fn request_with(&mut self, headers: &[(&str, &[u8])]) -> &mut Self {
        self.request = headers
            .iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.to_vec()))
            .collect();
        self
    }

    /// A request with `Authorization: Bearer <token>`.
    pub fn bearer(&mut self, token: &str) -> &mut Self {
        let value = format!("Bearer {token}");
        self.request_with(&[(":path", b"/api"), ("authorization", value.as_bytes())])
    }

    pub fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }

    /// The last callout sent.
    pub fn last(&self) -> Option<&Dispatched> {
        self.dispatched.last()
    }

    /// Callouts sent to this path.
    pub fn sent_to(&self, path: &str) -> usize {
        self.dispatched.iter().filter(|d| d.path() == path).count()
    }

    pub fn advance(&mut self, secs: i64) {
        self.now = self.now.map(|n| n + secs);
    }
}

impl Host for MockHost {
    fn now_unix(&self) -> Result<i64, HostError> {
        self.now.ok_or(HostError::Status(2))
    }

    fn now_nanos(&self) -> Option<u64> {
        let secs = u64::try_from(self.now?).ok()?;
        Some(secs * 1_000_000_000 + self.nanos)
    }

    fn request_headers(&self) -> Result<Vec<u8>, HostError> {
        if self.request_headers_fail {
            return Err(HostError::Status(2));
        }
        self.map_reads.set(self.map_reads.get() + 1);
        Ok(encode_pairs(&self.request))
    }

    /// As Envoy does for its inline headers (`Authorization` among them): every field of that
    /// name, case-insensitively, joined with `,`.
    fn request_header(&self, name: &str) -> Result<Option<Vec<u8>>, HostError> {
        if self.request_headers_fail {
            return Err(HostError::Status(2));
        }
        self.header_reads.set(self.header_reads.get() + 1);
        let values: Vec<&[u8]> = self
            .request
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v.as_slice())
            .collect();
        Ok((!values.is_empty()).then(|| values.join(&b","[..])))
    }

    fn request_trailers(&self) -> Result<Vec<u8>, HostError> {
        Ok(encode_pairs(&self.trailers))
    }

    fn route_name(&self) -> Result<Option<String>, HostError> {
        Ok(self.route_name.clone())
    }

    fn dispatch(
        &mut self,
        cluster: &str,
        request: &Callout,
        timeout: Duration,
    ) -> Result<u32, HostError> {
        if self.dispatch_fails {
            return Err(HostError::Status(2));
        }
        self.next_token += 1;
        self.dispatched.push(Dispatched {
            token: self.next_token,
            cluster: cluster.to_string(),
            headers: request
                .headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.clone()))
                .collect(),
            body: request.body.clone(),
            timeout,
        });
        Ok(self.next_token)
    }

    fn callout_header(&self, name: &str) -> Result<Option<Vec<u8>>, HostError> {
        Ok(self
            .answer
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone()))
    }

    fn callout_body(&self, size: usize) -> Result<Vec<u8>, HostError> {
        Ok(self.answer.body.iter().take(size).copied().collect())
    }

    fn shared_get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, HostError> {
        Ok(self.shared.get(key).cloned())
    }

    fn shared_set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<(), HostError> {
        self.shared_writes += 1;
        if self.cas_mismatches > 0 {
            self.cas_mismatches -= 1;
            // Another worker wrote the slot: its CAS moved on.
            if let Some(entry) = self.shared.get_mut(key) {
                entry.1 += 1;
            } else {
                self.shared.insert(key.to_string(), (Vec::new(), 1));
            }
            return Err(HostError::CasMismatch);
        }
        let current = self.shared.get(key).map(|(_, c)| *c);
        match current {
            Some(c) if cas != 0 && cas != c => Err(HostError::CasMismatch),
            _ => {
                let next = current.unwrap_or(0) + 1;
                self.shared.insert(key.to_string(), (value.to_vec(), next));
                Ok(())
            }
        }
    }

    fn count(&mut self, counter: Counter) {
        *self.counters.entry(counter.name()).or_insert(0) += 1;
    }

    fn record(&mut self, histogram: Histogram, value: u64) {
        self.histograms
            .entry(histogram.name())
            .or_default()
            .push(value);
    }

    fn set_tick_period(&mut self, period: Duration) -> Result<(), HostError> {
        self.ticks.push(period);
        Ok(())
    }

    fn call_foreign(&self, function: &str, arguments: &[u8]) -> Result<Vec<u8>, HostError> {
        self.foreign_calls.set(self.foreign_calls.get() + 1);
        match self.foreign {
            Some(f) => f(function, arguments),
            None => Err(HostError::Status(1)),
        }
    }
}
