//! Envoy proxy-wasm adapter of the introspection filter.
//!
//! Everything that decides or keeps state lives in `introspection_core::gate` and reaches the
//! proxy through the core's host port, implemented here by [`host::Envoy`]. This crate forwards
//! the SDK's callbacks to the gate and applies the verdicts it returns: header edits, resuming a
//! paused request, local replies. Verdicts are applied only after the gate's borrow is released
//! (resuming a request or answering it can re-enter the VM).

mod host;

use std::cell::RefCell;
use std::rc::Rc;

use introspection_core::gate::{Effects, Gate, Step, Trailers, Verdict};
use introspection_core::{reply, Config, HostError};
use log::{error, info, warn};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};

proxy_wasm::main! {{
    // Installs the SDK's logger and a panic hook that logs at critical level before the abort.
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|id| -> Box<dyn RootContext> {
        Box::new(Root { id, vm: None })
    });
}}

/// The gate of one VM and the host it talks through.
struct Vm {
    gate: Gate,
    host: host::Envoy,
}

type VmRef = Rc<RefCell<Vm>>;

/// Runs `f` on the gate; the borrow ends when `f` returns, before any verdict is applied.
fn with_gate<R>(vm: &VmRef, f: impl FnOnce(&mut Gate, &mut host::Envoy) -> R) -> R {
    let Vm { gate, host } = &mut *vm.borrow_mut();
    f(gate, host)
}

/// Per plugin configuration, per VM.
struct Root {
    id: u32,
    vm: Option<VmRef>,
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, headers: usize, body: usize, _: usize) {
        deliver(self.vm.as_ref(), self.id, token, headers, body);
    }
}

/// A callout answer, whichever context the SDK hands it to: the gate knows what it was for.
fn deliver(vm: Option<&VmRef>, current: u32, token: u32, headers: usize, body: usize) {
    if let Some(vm) = vm {
        let effects = with_gate(vm, |gate, host| {
            gate.on_callout_response(token, headers, body, host)
        });
        apply_effects(vm, current, effects);
    }
}

impl RootContext for Root {
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
            Ok(config) => config,
            Err(e) => {
                error!("{e}");
                return false;
            }
        };
        info!("introspection filter configured: {}", config.summary());
        let mut vm = Vm {
            gate: Gate::new(config),
            host: host::Envoy::default(),
        };
        vm.host.define_all();
        if let Err(e) = vm.gate.start(&mut vm.host) {
            error!("{e}");
            return false;
        }
        self.vm = Some(Rc::new(RefCell::new(vm)));
        true
    }

    fn on_tick(&mut self) {
        if let Some(vm) = &self.vm {
            let effects = with_gate(vm, |gate, host| gate.on_tick(host));
            apply_effects(vm, self.id, effects);
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request {
            id,
            vm: self.vm.clone(),
        }))
    }
}

/// One request.
struct Request {
    id: u32,
    /// `None` only if the host created a request without a valid configuration: every request
    /// is then refused.
    vm: Option<VmRef>,
}

impl Context for Request {
    fn on_http_call_response(&mut self, token: u32, headers: usize, body: usize, _: usize) {
        deliver(self.vm.as_ref(), self.id, token, headers, body);
    }
}

/// The request is over: the gate forgets it (and a callout it owned). The SDK drops the context
/// when Envoy deletes it (`proxy_on_delete`, right after `proxy_on_done` when the stream is
/// destroyed), so `on_done` is not implemented: exporting `proxy_on_done` would cost a VM entry
/// on every request. Like `on_done`, this runs while the SDK holds its map of contexts; the gate
/// makes no call that re-enters the VM.
impl Drop for Request {
    fn drop(&mut self) {
        if let Some(vm) = &self.vm {
            with_gate(vm, |gate, host| gate.on_done(self.id, host));
        }
    }
}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(vm) = &self.vm else {
            send_reply(self.id, &reply::unconfigured());
            return Action::Pause;
        };
        let step = with_gate(vm, |gate, host| gate.on_request_headers(self.id, host));
        match step {
            Step::Pause => Action::Pause,
            Step::Verdict(verdict) => apply(vm, self.id, verdict, false),
        }
    }

    /// The body waits until the request is let through: nothing reaches the upstream before a
    /// positive decision, whatever Envoy's buffering settings.
    fn on_http_request_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
        self.hold_until_allowed()
    }

    /// Identity fields are stripped from trailers too (an upstream that reads trailers must
    /// not find a forged `x-user-sub` there).
    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        let Some(vm) = &self.vm else {
            return Action::Pause;
        };
        let step = with_gate(vm, |gate, host| gate.on_request_trailers(self.id, host));
        match step {
            Trailers::Strip { remove, hold } => {
                if let Err(e) = remove_all(MapType::HttpRequestTrailers, &remove) {
                    return apply(vm, self.id, fail_allow(vm, self.id, e), false);
                }
                if hold {
                    Action::Pause
                } else {
                    Action::Continue
                }
            }
            Trailers::Refuse(reply) => {
                send_reply(self.id, &reply);
                Action::Pause
            }
        }
    }
}

impl Request {
    fn hold_until_allowed(&self) -> Action {
        match &self.vm {
            Some(vm) if vm.borrow().gate.is_allowed(self.id) => Action::Continue,
            _ => Action::Pause,
        }
    }
}

/// Applies verdicts to the requests they name, each as the effective context, then makes
/// `current` (the context Envoy called) effective again.
fn apply_effects(vm: &VmRef, current: u32, effects: Effects) {
    if effects.is_empty() {
        return;
    }
    for (id, verdict) in effects {
        match host::set_effective_context(id) {
            Ok(()) => {
                apply(vm, id, verdict, true);
            }
            Err(status) => warn!("[{id}] cannot reach a waiting request: {status:?}"),
        }
    }
    if let Err(status) = host::set_effective_context(current) {
        warn!("[{current}] cannot switch back to this context: {status:?}");
    }
}

/// Applies a verdict to request `id` (the effective context): edit its headers and let it
/// through (resuming it if it was paused), or answer it locally.
fn apply(vm: &VmRef, id: u32, verdict: Verdict, resume: bool) -> Action {
    let verdict = match verdict {
        Verdict::Allow { remove, set } => match edit_headers(&remove, &set) {
            Ok(()) => {
                if resume {
                    if let Err(status) = host::resume_request() {
                        error!("[{id}] cannot resume the request: {status:?}");
                    }
                }
                return Action::Continue;
            }
            Err(e) => fail_allow(vm, id, e),
        },
        deny => deny,
    };
    if let Verdict::Deny(reply) = verdict {
        send_reply(id, &reply);
    }
    Action::Pause
}

/// The gate's 503 for a request whose headers could not be edited.
fn fail_allow(vm: &VmRef, id: u32, e: HostError) -> Verdict {
    with_gate(vm, |gate, host| gate.allow_failed(id, e, host))
}

/// Removes every field named in `remove` from a request's headers or trailers.
fn remove_all<N: AsRef<str>>(map: MapType, remove: &[N]) -> Result<(), HostError> {
    for name in remove {
        host::remove_header(map, name.as_ref()).map_err(|s| HostError::Status(s as u32))?;
    }
    Ok(())
}

fn edit_headers(remove: &[Rc<str>], set: &[(String, String)]) -> Result<(), HostError> {
    remove_all(MapType::HttpRequestHeaders, remove)?;
    for (name, value) in set {
        host::set_request_header(name, value).map_err(|s| HostError::Status(s as u32))?;
    }
    Ok(())
}

fn send_reply(id: u32, reply: &reply::LocalReply) {
    if let Err(status) = host::send_local_response(reply) {
        error!("[{id}] cannot send the local reply: {status:?}");
    }
}
