//! When to fetch a document the VM keeps (the discovery document, the JWKS): at start, again
//! after a failure, on a refresh timer, and once more (rate-limited) when something asks for it
//! (an answer signed with an unknown key). Pure: the time is an argument. One fetch at a time.

/// A fetch that has not answered after this long is considered lost (the host answers every
/// callout by its timeout, 5 s, so this is only a safety net). Answers waiting for a lost JWKS
/// fetch are judged then.
const IN_FLIGHT_EXPIRY_SECS: i64 = 15;

/// The most one observation of the clock adds to a fetch's time in flight. The VM observes it
/// every second while it fetches; a wall clock that steps forward (an NTP step) must not make
/// a fetch under way look lost, nor one that steps back make a lost fetch look under way.
const MAX_STEP_SECS: i64 = 2;

/// The bookkeeping of one kind of fetch.
#[derive(Debug, Default, Clone)]
pub struct FetchSchedule {
    loaded_at: Option<i64>,
    last_attempt: Option<i64>,
    last_triggered: Option<i64>,
    in_flight: Option<InFlight>,
}

/// A fetch under way: how long it has been, counted in clamped steps of the clock.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    last_seen: i64,
    elapsed: i64,
}

impl InFlight {
    fn step(&self, now: i64) -> i64 {
        now.saturating_sub(self.last_seen).clamp(0, MAX_STEP_SECS)
    }
}

impl FetchSchedule {
    /// Whether a fetch is under way at `now`.
    pub fn in_flight(&self, now: i64) -> bool {
        self.in_flight
            .is_some_and(|f| f.elapsed.saturating_add(f.step(now)) < IN_FLIGHT_EXPIRY_SECS)
    }

    /// Counts the time since the last observation into a fetch's time in flight (at most
    /// `MAX_STEP_SECS`, never negative). Called on every tick.
    pub fn observe(&mut self, now: i64) {
        if let Some(f) = &mut self.in_flight {
            f.elapsed = f.elapsed.saturating_add(f.step(now));
            f.last_seen = now;
        }
    }

    /// Whether a document was ever loaded.
    pub fn loaded(&self) -> bool {
        self.loaded_at.is_some()
    }

    /// Whether the timer should fetch now: nothing loaded yet (retry every `retry` seconds), or
    /// the document is older than `refresh` seconds (`None`: never refreshed).
    pub fn timer_due(&self, now: i64, refresh: Option<i64>, retry: i64) -> bool {
        if self.in_flight(now) {
            return false;
        }
        let retry_ok = self
            .last_attempt
            .is_none_or(|t| now.saturating_sub(t) >= retry);
        match (self.loaded_at, refresh) {
            (Some(_), None) => false,
            (Some(loaded), Some(refresh)) => now.saturating_sub(loaded) >= refresh && retry_ok,
            (None, _) => retry_ok,
        }
    }

    /// Whether an out-of-schedule fetch may start now (at most one per `interval` seconds).
    pub fn trigger_allowed(&self, now: i64, interval: i64) -> bool {
        !self.in_flight(now)
            && self
                .last_triggered
                .is_none_or(|t| now.saturating_sub(t) >= interval)
    }

    /// Records the start of a fetch; `triggered` when it is out of schedule.
    pub fn started(&mut self, now: i64, triggered: bool) {
        self.in_flight = Some(InFlight {
            last_seen: now,
            elapsed: 0,
        });
        self.not_started(now, triggered);
    }

    /// Records a fetch that could not even be sent (path unknown, dispatch refused): the timer
    /// waits its retry delay, and a trigger its interval, before trying again.
    pub fn not_started(&mut self, now: i64, triggered: bool) {
        self.last_attempt = Some(now);
        if triggered {
            self.last_triggered = Some(now);
        }
    }

    /// Records the end of a fetch. A failure keeps whatever was loaded before.
    pub fn finished(&mut self, now: i64, success: bool) {
        self.in_flight = None;
        if success {
            self.loaded_at = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_fetch_retries_then_refreshes() {
        let mut s = FetchSchedule::default();
        assert!(s.timer_due(0, Some(600), 5));
        s.started(0, false);
        assert!(!s.timer_due(1, Some(600), 5), "one fetch at a time");
        s.finished(1, false);
        assert!(!s.loaded());
        assert!(!s.timer_due(4, Some(600), 5));
        assert!(s.timer_due(5, Some(600), 5));
        s.started(5, false);
        s.finished(6, true);
        assert!(!s.timer_due(605, Some(600), 5));
        assert!(s.timer_due(606, Some(600), 5));
        // A failed refresh keeps the document and waits the retry delay.
        s.started(606, false);
        s.finished(607, false);
        assert!(s.loaded());
        assert!(!s.timer_due(610, Some(600), 5));
        assert!(s.timer_due(611, Some(600), 5));
    }

    #[test]
    fn a_document_without_refresh_is_fetched_once() {
        let mut s = FetchSchedule::default();
        s.started(0, false);
        s.finished(0, true);
        assert!(!s.timer_due(1_000_000, None, 5));
    }

    #[test]
    fn triggered_fetches_are_rate_limited() {
        let mut s = FetchSchedule::default();
        assert!(s.trigger_allowed(100, 30));
        s.started(100, true);
        assert!(!s.trigger_allowed(101, 30), "in flight");
        s.finished(101, true);
        assert!(!s.trigger_allowed(129, 30));
        assert!(s.trigger_allowed(130, 30));
    }

    #[test]
    fn an_unsent_fetch_waits_the_retry_delay_and_the_interval() {
        let mut s = FetchSchedule::default();
        s.not_started(0, true);
        assert!(!s.timer_due(4, Some(600), 5));
        assert!(!s.trigger_allowed(4, 30));
        assert!(s.timer_due(5, Some(600), 5));
        assert!(s.trigger_allowed(30, 30));
    }

    #[test]
    fn a_lost_fetch_does_not_block_forever() {
        let mut s = FetchSchedule::default();
        s.started(0, true);
        for now in 1..IN_FLIGHT_EXPIRY_SECS {
            s.observe(now);
        }
        let last = IN_FLIGHT_EXPIRY_SECS - 1;
        assert!(!s.trigger_allowed(last, 0));
        assert!(s.in_flight(last));
        assert!(s.trigger_allowed(last + 1, 0));
        assert!(!s.in_flight(last + 1));
        assert!(s.timer_due(last + 1, Some(600), 5));
    }

    /// Found by review: with the time in flight read off the wall clock, a step forward made a
    /// fetch under way look lost (and its waiting answers were judged with the old keys), and a
    /// step back made a lost one look under way for the length of the step.
    #[test]
    fn clock_steps_neither_lose_a_fetch_nor_keep_a_lost_one() {
        let mut s = FetchSchedule::default();
        s.started(1000, true);
        s.observe(1020); // 20 s forward: counts 2
        assert!(s.in_flight(1020));
        assert!(s.in_flight(1100), "an unobserved jump counts 2 s too");
        let mut s = FetchSchedule::default();
        s.started(1000, true);
        s.observe(-2600); // an hour back: counts nothing
        for now in -2599..=-2600 + IN_FLIGHT_EXPIRY_SECS {
            s.observe(now);
        }
        assert!(
            !s.in_flight(-2600 + IN_FLIGHT_EXPIRY_SECS),
            "given up after 15 s of ticks"
        );
    }
}
