//! Envoy proxy-wasm adapter of the introspection filter.
//!
//! All decisions are made by `introspection_core` (pure, unit-tested natively). This crate only
//! moves bytes between the host and the core: it reads headers and time, dispatches the
//! introspection callout, and applies the decision (set headers and resume, or answer locally).
//! Every host call goes through [`host`], which cannot panic.

mod host;

use std::rc::Rc;
use std::time::UNIX_EPOCH;

use introspection_core::bearer::{self, Credentials};
use introspection_core::callout::{self, ACCEPT_JSON};
use introspection_core::decision::{self, Decision, Denial};
use introspection_core::headers::decode_pairs;
use introspection_core::response::{self, Answer};
use introspection_core::{reply, Config};
use log::{debug, error, info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};

proxy_wasm::main! {{
    // Installs the SDK's logger and a panic hook that logs at critical level before the abort.
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(GateRoot { config: None })
    });
}}

/// Per plugin configuration, per VM.
struct GateRoot {
    config: Option<Rc<Config>>,
}

impl Context for GateRoot {}

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
        match Config::from_json(&bytes) {
            Ok(config) => {
                info!(
                    "introspection filter configured: cluster `{}`, {}{}, client `{}`, user claim `{}` -> `{}`",
                    config.cluster,
                    config.authority,
                    config.introspection_path,
                    config.client_id,
                    config.user_claim,
                    config.user_header
                );
                self.config = Some(Rc::new(config));
                true
            }
            Err(e) => {
                error!("{e}");
                false
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Gate {
            config: self.config.clone(),
            id: context_id,
        }))
    }
}

/// One request.
struct Gate {
    /// `None` only if the host created a request context without a valid configuration:
    /// every request is then refused.
    config: Option<Rc<Config>>,
    id: u32,
}

impl Context for Gate {
    fn on_http_call_response(
        &mut self,
        _token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let Some(config) = self.config.clone() else {
            return self.refuse_unconfigured();
        };
        let decision = self.decide_on_answer(&config, num_headers, body_size);
        self.apply(&config, decision);
    }
}

impl HttpContext for Gate {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(config) = self.config.clone() else {
            self.refuse_unconfigured();
            return Action::Pause;
        };
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
        let request = callout::introspection_request(&config, &token, ACCEPT_JSON);
        let headers: Vec<(&str, &str)> = request
            .headers
            .iter()
            .map(|(n, v)| (*n, v.as_str()))
            .collect();
        match hostcalls::dispatch_http_call(
            &config.cluster,
            headers,
            Some(&request.body),
            Vec::new(),
            config.timeout,
        ) {
            Ok(_) => {
                debug!("[{}] introspection callout sent", self.id);
                Action::Pause
            }
            Err(status) => self.deny(
                &config,
                &Denial::Unavailable(format!(
                    "dispatch to cluster `{}` failed: {status:?}",
                    config.cluster
                )),
            ),
        }
    }
}

impl Gate {
    /// Reads the callout's answer and decides. A failed callout has no headers: reading them
    /// would be an error, so `num_headers == 0` is checked first.
    fn decide_on_answer(&self, config: &Config, num_headers: usize, body_size: usize) -> Decision {
        if num_headers == 0 {
            return Decision::Deny(Denial::Unavailable(
                "callout failed (reset or no answer)".into(),
            ));
        }
        if body_size > config.max_response_bytes {
            return Decision::Deny(Denial::Unavailable(format!(
                "answer of {body_size} bytes exceeds max_response_bytes ({})",
                config.max_response_bytes
            )));
        }
        let status = host::header(MapType::HttpCallResponseHeaders, ":status");
        let content_type = host::header(MapType::HttpCallResponseHeaders, "content-type");
        let body = if body_size == 0 {
            Ok(Vec::new())
        } else {
            host::buffer(BufferType::HttpCallResponseBody, body_size)
        };
        let (Ok(status), Ok(content_type), Ok(body)) = (status, content_type, body) else {
            return Decision::Deny(Denial::Unavailable("cannot read the callout answer".into()));
        };
        let answer = Answer {
            status: status.as_deref(),
            content_type: content_type.as_deref(),
            body: &body,
        };
        match response::parse_json_answer(&answer) {
            Ok(claims) => match now() {
                Some(now) => decision::evaluate(config, &claims, now),
                None => Decision::Deny(Denial::Unavailable("cannot read the clock".into())),
            },
            Err(fault) => Decision::Deny(Denial::Unavailable(fault)),
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
