//! When to fetch the JWKS: at start, on a timer, and once more (rate-limited) when an answer
//! names a key we do not have. Pure: the adapter passes the time in.

use std::rc::Rc;

use crate::jwt::KeySet;

/// A fetch that has not answered after this long is considered lost (its requester may have
/// gone away before the answer came back).
const IN_FLIGHT_EXPIRY_SECS: i64 = 30;

/// The keys of one VM and the bookkeeping of their fetches.
#[derive(Debug, Default)]
pub struct KeyState {
    keys: Option<Rc<KeySet>>,
    loaded_at: Option<i64>,
    last_attempt: Option<i64>,
    last_triggered: Option<i64>,
    in_flight_since: Option<i64>,
}

impl KeyState {
    /// The last good key set, if any.
    pub fn keys(&self) -> Option<Rc<KeySet>> {
        self.keys.clone()
    }

    fn in_flight(&self, now: i64) -> bool {
        self.in_flight_since
            .is_some_and(|t| now.saturating_sub(t) < IN_FLIGHT_EXPIRY_SECS)
    }

    /// Whether the timer should fetch now: no keys yet (retry every `retry` seconds), or the
    /// keys are older than `refresh` seconds.
    pub fn timer_fetch_due(&self, now: i64, refresh: i64, retry: i64) -> bool {
        if self.in_flight(now) {
            return false;
        }
        match (self.loaded_at, self.last_attempt) {
            (Some(loaded), last) => {
                now.saturating_sub(loaded) >= refresh
                    && last.is_none_or(|t| now.saturating_sub(t) >= retry)
            }
            (None, None) => true,
            (None, Some(t)) => now.saturating_sub(t) >= retry,
        }
    }

    /// Whether an unknown `kid` may trigger a fetch now (at most one per `interval` seconds).
    pub fn kid_refetch_allowed(&self, now: i64, interval: i64) -> bool {
        !self.in_flight(now)
            && self
                .last_triggered
                .is_none_or(|t| now.saturating_sub(t) >= interval)
    }

    /// Records the start of a fetch; `triggered` when an unknown kid caused it.
    pub fn fetch_started(&mut self, now: i64, triggered: bool) {
        self.in_flight_since = Some(now);
        self.last_attempt = Some(now);
        if triggered {
            self.last_triggered = Some(now);
        }
    }

    /// Records a fetch that could not even be sent (path unknown, dispatch refused): the timer
    /// waits its retry delay, and an unknown kid its interval, before trying again.
    pub fn fetch_not_started(&mut self, now: i64, triggered: bool) {
        self.last_attempt = Some(now);
        if triggered {
            self.last_triggered = Some(now);
        }
    }

    /// The request that started a fetch went away before the answer (which will not be
    /// delivered): the next fetch may start at once.
    pub fn fetch_abandoned(&mut self) {
        self.in_flight_since = None;
    }

    /// Records the end of a fetch. A failure keeps the last good keys.
    pub fn fetch_finished(
        &mut self,
        now: i64,
        result: Result<KeySet, String>,
    ) -> Result<usize, String> {
        self.in_flight_since = None;
        match result {
            Ok(set) if set.is_empty() => Err("JWKS holds no usable key".into()),
            Ok(set) => {
                let n = set.len();
                self.keys = Some(Rc::new(set));
                self.loaded_at = Some(now);
                Ok(n)
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn some_keys() -> KeySet {
        // One EC key: P-256 generator point coordinates.
        let jwks = serde_json::json!({"keys":[{"kty":"EC","crv":"P-256","kid":"k",
            "x":"axfR8uEsQkf4vOblY6RA8ncDfYEt6zOg9KE5RdiYwpY",
            "y":"T-NC4v4af5uO5-tKfA-eFivOM1drMV7Oy7ZAaDe_UfU"}]});
        KeySet::from_jwks(jwks.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn start_retry_and_refresh() {
        let mut s = KeyState::default();
        assert!(s.timer_fetch_due(0, 600, 5));
        s.fetch_started(0, false);
        assert!(!s.timer_fetch_due(1, 600, 5), "one fetch at a time");
        assert!(s.fetch_finished(1, Err("down".into())).is_err());
        assert!(s.keys().is_none());
        assert!(!s.timer_fetch_due(4, 600, 5));
        assert!(s.timer_fetch_due(5, 600, 5));
        s.fetch_started(5, false);
        assert_eq!(s.fetch_finished(6, Ok(some_keys())), Ok(1));
        assert!(!s.timer_fetch_due(605, 600, 5));
        assert!(s.timer_fetch_due(606, 600, 5));
        // A failed refresh keeps the last good keys.
        s.fetch_started(606, false);
        assert!(s.fetch_finished(607, Err("500".into())).is_err());
        assert!(s.keys().is_some());
        assert!(s.fetch_finished(608, Ok(KeySet::default())).is_err());
        assert!(s.keys().is_some());
    }

    #[test]
    fn unknown_kid_refetch_is_rate_limited() {
        let mut s = KeyState::default();
        assert!(s.kid_refetch_allowed(100, 30));
        s.fetch_started(100, true);
        assert!(!s.kid_refetch_allowed(101, 30), "in flight");
        let _ = s.fetch_finished(101, Ok(some_keys()));
        assert!(!s.kid_refetch_allowed(129, 30));
        assert!(s.kid_refetch_allowed(130, 30));
    }

    #[test]
    fn unsent_and_abandoned_fetches() {
        let mut s = KeyState::default();
        s.fetch_not_started(0, true);
        assert!(!s.timer_fetch_due(4, 600, 5), "waits the retry delay");
        assert!(!s.kid_refetch_allowed(4, 30), "and the kid interval");
        assert!(s.timer_fetch_due(5, 600, 5));
        s.fetch_started(10, true);
        assert!(!s.timer_fetch_due(11, 600, 5));
        s.fetch_abandoned();
        assert!(s.timer_fetch_due(15, 600, 5));
    }

    #[test]
    fn a_lost_fetch_does_not_block_forever() {
        let mut s = KeyState::default();
        s.fetch_started(0, true);
        assert!(!s.kid_refetch_allowed(29, 0));
        assert!(s.kid_refetch_allowed(30, 0));
        assert!(s.timer_fetch_due(30, 600, 5));
    }
}
