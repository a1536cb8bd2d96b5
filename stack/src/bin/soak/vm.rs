//! VM failures, as Envoy 1.40 reports them.
//!
//! A wasm VM fails when the module traps (a Rust panic in the filter aborts, which traps) or a
//! callback reports an error; proxy-wasm marks it failed and Envoy logs
//! `Wasm VM failed <reason>` (e.g. `Function: proxy_on_request_headers failed: ...`). What
//! `/stats` then shows, read on a real Envoy 1.40 (names under `wasm.`; the filter's own
//! counters are under `wasmcustom.` and say nothing about the VM):
//!
//! - `wasm.<plugin name>.vm_reload_success`, `.vm_reload_failure`, `.vm_reload_backoff`
//!   (counters): with `failure_policy: FAIL_RELOAD`, which the shipped templates use, the first
//!   request that finds its worker's VM failed reloads it (success or failure) or, within the
//!   back-off, is refused with a 503 (backoff). Under load that request comes at once, so each
//!   failure shows here. (`.vm_reload` counts the attempts, already in success + failure.)
//! - `wasm.envoy.wasm.runtime.v8.created` (counter): VMs created. Start-up creates them all
//!   (a throw-away canary, the base VM, one per worker); one created later is a replacement.
//! - `wasm.envoy.wasm.runtime.v8.active`, `wasm.wasm_vm_count` (gauges) and
//!   `wasm.remote_load_*` (remote code fetches, unused here) are not failures.
//!
//! The soak counts, per Envoy run, the largest of three views of the same events, so that none
//! is counted twice and none is missed: the reload counters' increase, the VMs created after
//! start-up, and the `Wasm VM failed` / `panicked at` lines of Envoy's log.

use std::collections::BTreeMap;

/// The wasm counters that matter, read from one `/stats` snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Sum of every plugin's `vm_reload_success`, `vm_reload_failure`, `vm_reload_backoff`.
    pub reload_events: u64,
    /// Sum of every runtime's `created`.
    pub created: u64,
}

/// Parses `name: value` lines of `/stats`.
pub fn parse_stats(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (name, value) = l.split_once(": ")?;
            Some((name.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

pub fn snapshot(stats: &BTreeMap<String, u64>) -> Snapshot {
    let mut s = Snapshot::default();
    for (name, value) in stats {
        let Some(rest) = name.strip_prefix("wasm.") else {
            continue;
        };
        if [
            ".vm_reload_success",
            ".vm_reload_failure",
            ".vm_reload_backoff",
        ]
        .iter()
        .any(|suffix| rest.ends_with(suffix))
        {
            s.reload_events += value;
        } else if rest.starts_with("envoy.wasm.runtime.") && rest.ends_with(".created") {
            s.created += value;
        }
    }
    s
}

/// Lines of Envoy's log that report a VM failure or a panic in the filter.
pub fn failure_lines(log: &str) -> u64 {
    let n = log
        .lines()
        .filter(|l| l.contains("Wasm VM failed") || l.contains("panicked at"))
        .count();
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// VM failures during a run: see the module's comment.
pub fn failures(before: Snapshot, after: Snapshot, log_lines: u64) -> u64 {
    let reloads = after.reload_events.saturating_sub(before.reload_events);
    let replaced = after.created.saturating_sub(before.created);
    reloads.max(replaced).max(log_lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `wasm.` lines of a real Envoy 1.40 `/stats` (two workers, the shipped template),
    /// with one reload and one back-off added.
    const STATS: &str = "\
cluster.sample_sr.upstream_cx_connect_fail: 0
wasm.envoy.wasm.runtime.v8.active: 4
wasm.envoy.wasm.runtime.v8.created: 6
wasm.proconnect_introspection.vm_reload: 1
wasm.proconnect_introspection.vm_reload_backoff: 2
wasm.proconnect_introspection.vm_reload_failure: 0
wasm.proconnect_introspection.vm_reload_success: 1
wasm.remote_load_cache_entries: 0
wasm.remote_load_fetch_failures: 3
wasm.wasm_vm_count: 4
wasmcustom.introspection.callout.failed: 7
wasmcustom.introspection.latency: P0(nan,1) P25(nan,1.025)
";

    #[test]
    fn only_vm_failure_counters_count() {
        let stats = parse_stats(STATS);
        assert_eq!(stats.get("wasm.wasm_vm_count"), Some(&4));
        assert!(!stats.contains_key("wasmcustom.introspection.latency"));
        assert_eq!(
            snapshot(&stats),
            Snapshot {
                reload_events: 3,
                created: 6
            }
        );
        // Istio's plugin names hold dots.
        let istio = parse_stats("wasm.api.introspection-a.vm_reload_backoff: 5\n");
        assert_eq!(snapshot(&istio).reload_events, 5);
    }

    #[test]
    fn failures_take_the_largest_view() {
        let before = Snapshot {
            reload_events: 0,
            created: 5,
        };
        assert_eq!(failures(before, before, 0), 0);
        let after = Snapshot {
            reload_events: 3,
            created: 6,
        };
        assert_eq!(failures(before, after, 0), 3);
        assert_eq!(failures(before, after, 4), 4);
        let log =
            "[warning] x\n[error][wasm] Wasm VM failed Function: proxy_on_request_headers failed\n\
                   [critical][wasm] panicked at src/lib.rs:1:1\n";
        assert_eq!(failure_lines(log), 2);
    }
}
