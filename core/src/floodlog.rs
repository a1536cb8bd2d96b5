//! Log flood control: during an outage every request is a 503 for the same cause. The first
//! one of a cause is logged at once; the others of the next `interval` are counted, and one
//! line reports them with the request id of one of them. Pure: the time is an argument.

use std::collections::HashMap;

/// How long the requests of one cause are counted before a line reports them.
pub const INTERVAL_SECS: i64 = 10;

#[derive(Debug, Default)]
struct Window {
    /// When the last line for this cause was written.
    logged_at: i64,
    /// Requests since then.
    suppressed: u64,
    /// The request id of one of them.
    sample: Option<String>,
}

/// One window per cause code.
#[derive(Debug, Default)]
pub struct FloodLog {
    windows: HashMap<&'static str, Window>,
}

impl FloodLog {
    /// A request was denied for `cause` at `now`: the line to log now, if any.
    pub fn note(
        &mut self,
        cause: &'static str,
        now: i64,
        request_id: Option<&str>,
    ) -> Option<String> {
        match self.windows.get_mut(cause) {
            Some(w) if now.saturating_sub(w.logged_at) < INTERVAL_SECS => {
                w.suppressed += 1;
                if w.sample.is_none() {
                    w.sample = request_id.map(String::from);
                }
                None
            }
            Some(w) => {
                let line = report(cause, w);
                *w = Window {
                    logged_at: now,
                    ..Window::default()
                };
                Some(line.unwrap_or_default() + &first_line(cause, request_id))
            }
            None => {
                self.windows.insert(
                    cause,
                    Window {
                        logged_at: now,
                        ..Window::default()
                    },
                );
                Some(first_line(cause, request_id))
            }
        }
    }

    /// Lines for the causes whose window has closed with requests in it (called on ticks).
    pub fn flush(&mut self, now: i64) -> Vec<String> {
        let mut lines = Vec::new();
        for (cause, w) in self.windows.iter_mut() {
            if w.suppressed > 0 && now.saturating_sub(w.logged_at) >= INTERVAL_SECS {
                lines.extend(report(cause, w));
                *w = Window {
                    logged_at: now,
                    ..Window::default()
                };
            }
        }
        lines
    }
}

fn first_line(cause: &str, request_id: Option<&str>) -> String {
    format!(
        "request denied (unavailable, {cause}), request id {}",
        request_id.unwrap_or("-")
    )
}

fn report(cause: &str, w: &Window) -> Option<String> {
    (w.suppressed > 0).then(|| {
        format!(
            "{} more requests denied (unavailable, {cause}) in the last {INTERVAL_SECS} s, e.g. request id {}; ",
            w.suppressed,
            w.sample.as_deref().unwrap_or("-")
        )
    })
}

/// A client-sent `x-request-id` may hold anything, a token included: it is logged only if it
/// looks like an id (letters, digits, `-`, `_`, `.`, at most 64), otherwise not at all.
pub fn loggable_request_id(value: &[u8]) -> Option<String> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    ok.then(|| String::from_utf8_lossy(value).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_logs_one_line_then_one_count_per_interval() {
        let mut log = FloodLog::default();
        assert!(log.note("timeout", 100, Some("r1")).is_some());
        for i in 0..999 {
            assert_eq!(log.note("timeout", 100 + i % 9, Some("rx")), None);
        }
        assert!(log.flush(109).is_empty(), "window still open");
        let lines = log.flush(110);
        assert_eq!(lines.len(), 1);
        assert!(lines[0].starts_with("999 more requests denied (unavailable, timeout)"));
        assert!(lines[0].contains("request id rx"));
        assert!(log.flush(200).is_empty(), "nothing new to report");
    }

    #[test]
    fn each_cause_has_its_own_window() {
        let mut log = FloodLog::default();
        assert!(log.note("timeout", 0, None).is_some());
        assert!(log.note("status_5xx", 1, None).is_some());
        assert!(log.note("timeout", 2, None).is_none());
    }

    #[test]
    fn a_request_after_the_interval_reports_the_count_and_itself() {
        let mut log = FloodLog::default();
        log.note("callout_failed", 0, Some("a"));
        log.note("callout_failed", 1, Some("b"));
        let line = log.note("callout_failed", 15, Some("c")).unwrap();
        assert!(line.starts_with("1 more requests denied"), "{line}");
        assert!(line.ends_with("request id c"), "{line}");
    }

    #[test]
    fn request_ids_that_could_be_secrets_are_not_logged() {
        assert_eq!(
            loggable_request_id(b"3b9c1c2e-7d5f-4e8a-9d4b-1f2e3d4c5b6a").as_deref(),
            Some("3b9c1c2e-7d5f-4e8a-9d4b-1f2e3d4c5b6a")
        );
        assert_eq!(loggable_request_id(b"Bearer eyJhbGciOi"), None);
        assert_eq!(loggable_request_id(&[b'a'; 65]), None);
        assert_eq!(loggable_request_id(b"a\r\nb"), None);
        assert_eq!(loggable_request_id(b""), None);
    }
}
