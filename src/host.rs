//! The proxy-wasm host calls the filter uses, wrapped so that no host answer can panic, and
//! [`Envoy`], the production implementation of the core's host port.
//!
//! The SDK's `hostcalls::*` panic on any status they do not expect (for instance reading the
//! headers of a callout that failed returns `BadArgument` in Envoy, and the SDK panics), and its
//! map decoder panics on a non-UTF-8 header name. A panic kills the VM: every later request on
//! that worker fails. These wrappers return the status instead. Only `dispatch_http_call` (the
//! SDK must register the callout to route its answer back) goes through the SDK.

use std::collections::HashMap;
use std::ptr::null_mut;
use std::time::Duration;

use introspection_core::callout::Callout;
use introspection_core::host::{Counter, Histogram, Host};
use introspection_core::reply::LocalReply;
use introspection_core::HostError;
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, MetricType, Status, StreamType};

// The raw ABI (proxy-wasm 0.2.1). Out-pointers are named `out_*`; `(p, n)` pairs are
// pointer and length.
#[rustfmt::skip]
#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(map: MapType, out_p: *mut *mut u8, out_n: *mut usize) -> Status;
    fn proxy_get_header_map_value(map: MapType, key_p: *const u8, key_n: usize,
        out_p: *mut *mut u8, out_n: *mut usize) -> Status;
    fn proxy_get_buffer_bytes(kind: BufferType, start: usize, max: usize,
        out_p: *mut *mut u8, out_n: *mut usize) -> Status;
    fn proxy_replace_header_map_value(map: MapType, key_p: *const u8, key_n: usize,
        value_p: *const u8, value_n: usize) -> Status;
    fn proxy_remove_header_map_value(map: MapType, key_p: *const u8, key_n: usize) -> Status;
    fn proxy_send_local_response(status: u32, details_p: *const u8, details_n: usize,
        body_p: *const u8, body_n: usize, headers_p: *const u8, headers_n: usize,
        grpc_status: i32) -> Status;
    fn proxy_continue_stream(stream: StreamType) -> Status;
    fn proxy_get_shared_data(key_p: *const u8, key_n: usize, out_p: *mut *mut u8,
        out_n: *mut usize, out_cas: *mut u32) -> Status;
    fn proxy_set_shared_data(key_p: *const u8, key_n: usize, value_p: *const u8,
        value_n: usize, cas: u32) -> Status;
    fn proxy_define_metric(kind: MetricType, name_p: *const u8, name_n: usize,
        out_id: *mut u32) -> Status;
    fn proxy_increment_metric(id: u32, offset: i64) -> Status;
    fn proxy_record_metric(id: u32, value: u64) -> Status;
    fn proxy_set_effective_context(context_id: u32) -> Status;
    fn proxy_get_current_time_nanoseconds(out: *mut u64) -> Status;
    fn proxy_get_log_level(out: *mut u32) -> Status;
    fn proxy_set_tick_period_milliseconds(period: u32) -> Status;
    fn proxy_get_property(path_p: *const u8, path_n: usize, out_p: *mut *mut u8,
        out_n: *mut usize) -> Status;
    fn proxy_call_foreign_function(name_p: *const u8, name_n: usize, args_p: *const u8,
        args_n: usize, out_p: *mut *mut u8, out_n: *mut usize) -> Status;
}

/// Takes ownership of memory the host allocated through the SDK's `proxy_on_memory_allocate`
/// (a `Vec<u8>` of exactly `size` capacity).
///
/// # Safety
/// `data` must come from that allocator with capacity `size`, or be null.
unsafe fn owned(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        Vec::new()
    } else {
        Vec::from_raw_parts(data, size, size)
    }
}

fn ok(status: Status) -> Result<(), Status> {
    match status {
        Status::Ok => Ok(()),
        other => Err(other),
    }
}

/// A whole header map, serialised.
fn header_pairs(map: MapType) -> Result<Vec<u8>, HostError> {
    let (mut data, mut size) = (null_mut(), 0);
    // SAFETY: out-pointers are valid locals; the host fills them with an allocation of ours.
    unsafe {
        ok(proxy_get_header_map_pairs(map, &mut data, &mut size)).map_err(host_error)?;
        Ok(owned(data, size))
    }
}

/// One header's value (the first, if there are several), `None` if absent.
pub fn header(map: MapType, name: &str) -> Result<Option<Vec<u8>>, Status> {
    let mut data = null_mut();
    let mut size = 0;
    // SAFETY: as above; `name` outlives the call.
    unsafe {
        match proxy_get_header_map_value(map, name.as_ptr(), name.len(), &mut data, &mut size) {
            Status::Ok => Ok(Some(owned(data, size))),
            Status::NotFound => Ok(None),
            other => Err(other),
        }
    }
}

/// Up to `max` bytes of a buffer from its start.
pub fn buffer(kind: BufferType, max: usize) -> Result<Vec<u8>, Status> {
    let mut data = null_mut();
    let mut size = 0;
    // SAFETY: as above.
    unsafe {
        match proxy_get_buffer_bytes(kind, 0, max, &mut data, &mut size) {
            Status::Ok => Ok(owned(data, size)),
            Status::NotFound => Ok(Vec::new()),
            other => Err(other),
        }
    }
}

/// Sets a request header, replacing every existing value.
pub fn set_request_header(name: &str, value: &str) -> Result<(), Status> {
    // SAFETY: pointers to live slices, lengths match.
    unsafe {
        ok(proxy_replace_header_map_value(
            MapType::HttpRequestHeaders,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        ))
    }
}

/// Removes every value of a header (or trailer) of the request.
pub fn remove_header(map: MapType, name: &str) -> Result<(), Status> {
    // SAFETY: pointer to a live slice, length matches.
    unsafe {
        ok(proxy_remove_header_map_value(
            map,
            name.as_ptr(),
            name.len(),
        ))
    }
}

/// Answers the request locally; `details` shows in Envoy's `%RESPONSE_CODE_DETAILS%`.
pub fn send_local_response(reply: &LocalReply) -> Result<(), Status> {
    let map = introspection_core::headers::encode_pairs(&reply.headers);
    let details = reply.details.as_bytes();
    let body = reply.body.as_bytes();
    // SAFETY: pointers to live buffers, lengths match.
    unsafe {
        ok(proxy_send_local_response(
            reply.status,
            details.as_ptr(),
            details.len(),
            body.as_ptr(),
            body.len(),
            map.as_ptr(),
            map.len(),
            -1,
        ))
    }
}

/// Resumes a paused request.
pub fn resume_request() -> Result<(), Status> {
    // SAFETY: no pointers.
    unsafe { ok(proxy_continue_stream(StreamType::HttpRequest)) }
}

/// Envoy's log level for wasm, as a proxy-wasm level; `None` when logging is off (Envoy
/// answers 6, which the SDK's `LogLevel` cannot hold) or unknown.
pub fn log_level() -> Option<proxy_wasm::types::LogLevel> {
    use proxy_wasm::types::LogLevel;
    let mut raw = u32::MAX;
    // SAFETY: valid out-pointer to a plain integer.
    if unsafe { proxy_get_log_level(&mut raw) } != Status::Ok {
        return None;
    }
    Some(match raw {
        0 => LogLevel::Trace,
        1 => LogLevel::Debug,
        2 => LogLevel::Info,
        3 => LogLevel::Warn,
        4 => LogLevel::Error,
        5 => LogLevel::Critical,
        _ => return None,
    })
}

/// Defines (or finds) a metric; `None` if the host refuses.
pub fn define_metric(kind: MetricType, name: &str) -> Option<u32> {
    let mut id = 0;
    // SAFETY: `name` outlives the call; `id` is a valid out-pointer.
    let status = unsafe { proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) };
    (status == Status::Ok).then_some(id)
}

/// Makes later host calls act on another request of this VM.
pub fn set_effective_context(id: u32) -> Result<(), Status> {
    // SAFETY: no pointers.
    unsafe { ok(proxy_set_effective_context(id)) }
}

/// The host port of the core, on Envoy.
#[derive(Default)]
pub struct Envoy {
    /// Metric ids, defined on first use.
    counters: HashMap<Counter, u32>,
    histograms: HashMap<Histogram, u32>,
}

fn host_error(status: Status) -> HostError {
    match status {
        Status::CasMismatch => HostError::CasMismatch,
        other => HostError::Status(other as u32),
    }
}

impl Envoy {
    fn counter(&mut self, counter: Counter) -> Option<u32> {
        if let Some(id) = self.counters.get(&counter) {
            return Some(*id);
        }
        let id = define_metric(MetricType::Counter, &counter.name())?;
        self.counters.insert(counter, id);
        Some(id)
    }

    fn histogram(&mut self, histogram: Histogram) -> Option<u32> {
        if let Some(id) = self.histograms.get(&histogram) {
            return Some(*id);
        }
        let id = define_metric(MetricType::Histogram, histogram.name())?;
        self.histograms.insert(histogram, id);
        Some(id)
    }

    /// Defines every metric, so Envoy shows zeros rather than nothing.
    pub fn define_all(&mut self) {
        for counter in Counter::all() {
            self.counter(counter);
        }
        self.histogram(Histogram::CalloutLatencyMs);
    }
}

impl Host for Envoy {
    fn now_unix(&self) -> Result<i64, HostError> {
        let nanos = self
            .now_nanos()
            .ok_or(HostError::Status(Status::InternalFailure as u32))?;
        i64::try_from(nanos / 1_000_000_000).map_err(|_| HostError::Status(0))
    }

    fn now_nanos(&self) -> Option<u64> {
        let mut nanos = 0u64;
        // SAFETY: valid out-pointer.
        let status = unsafe { proxy_get_current_time_nanoseconds(&mut nanos) };
        (status == Status::Ok).then_some(nanos)
    }

    fn request_headers(&self) -> Result<Vec<u8>, HostError> {
        header_pairs(MapType::HttpRequestHeaders)
    }

    fn request_trailers(&self) -> Result<Vec<u8>, HostError> {
        header_pairs(MapType::HttpRequestTrailers)
    }

    fn request_header(&self, name: &str) -> Result<Option<Vec<u8>>, HostError> {
        header(MapType::HttpRequestHeaders, name).map_err(host_error)
    }

    fn route_name(&self) -> Result<Option<String>, HostError> {
        let path = b"route_name"; // a one-segment property path
        let (mut data, mut size) = (null_mut(), 0);
        // SAFETY: out-pointers are valid locals; `path` outlives the call.
        let bytes = unsafe {
            match proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size) {
                Status::Ok => owned(data, size),
                Status::NotFound => return Ok(None),
                other => return Err(host_error(other)),
            }
        };
        Ok(String::from_utf8(bytes)
            .ok()
            .filter(|name| !name.is_empty()))
    }

    fn dispatch(
        &mut self,
        cluster: &str,
        request: &Callout,
        timeout: Duration,
    ) -> Result<u32, HostError> {
        let headers: Vec<(&str, &str)> = request
            .headers
            .iter()
            .map(|(n, v)| (*n, v.as_str()))
            .collect();
        let body = (!request.body.is_empty()).then_some(request.body.as_slice());
        hostcalls::dispatch_http_call(cluster, headers, body, Vec::new(), timeout)
            .map_err(host_error)
    }

    fn callout_header(&self, name: &str) -> Result<Option<Vec<u8>>, HostError> {
        header(MapType::HttpCallResponseHeaders, name).map_err(host_error)
    }

    fn callout_body(&self, size: usize) -> Result<Vec<u8>, HostError> {
        buffer(BufferType::HttpCallResponseBody, size).map_err(host_error)
    }

    fn shared_get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, HostError> {
        let (mut data, mut size, mut cas) = (null_mut(), 0, 0);
        // SAFETY: out-pointers are valid locals; `key` outlives the call.
        unsafe {
            match proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) {
                Status::Ok => Ok(Some((owned(data, size), cas))),
                Status::NotFound => Ok(None),
                other => Err(host_error(other)),
            }
        }
    }

    fn shared_set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<(), HostError> {
        let (k, v) = (key.as_bytes(), value);
        // SAFETY: pointers to live slices, lengths match.
        let status =
            unsafe { proxy_set_shared_data(k.as_ptr(), k.len(), v.as_ptr(), v.len(), cas) };
        ok(status).map_err(host_error)
    }

    fn count(&mut self, counter: Counter) {
        if let Some(id) = self.counter(counter) {
            // SAFETY: no pointers. A failure only loses a count.
            let _ = unsafe { proxy_increment_metric(id, 1) };
        }
    }

    fn record(&mut self, histogram: Histogram, value: u64) {
        if let Some(id) = self.histogram(histogram) {
            // SAFETY: no pointers. A failure only loses a sample.
            let _ = unsafe { proxy_record_metric(id, value) };
        }
    }

    fn set_tick_period(&mut self, period: Duration) -> Result<(), HostError> {
        let millis = u32::try_from(period.as_millis()).unwrap_or(u32::MAX);
        // SAFETY: no pointers.
        unsafe { ok(proxy_set_tick_period_milliseconds(millis)) }.map_err(host_error)
    }

    fn call_foreign(&self, function: &str, arguments: &[u8]) -> Result<Vec<u8>, HostError> {
        let (mut data, mut size) = (null_mut(), 0);
        // SAFETY: the slices outlive the call; out-pointers are valid locals; the host fills
        // them with an allocation of ours (or leaves them null for an empty result).
        unsafe {
            ok(proxy_call_foreign_function(
                function.as_ptr(),
                function.len(),
                arguments.as_ptr(),
                arguments.len(),
                &mut data,
                &mut size,
            ))
            .map_err(host_error)?;
            Ok(owned(data, size))
        }
    }
}
