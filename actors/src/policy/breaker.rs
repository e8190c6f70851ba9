//! The circuit breaker of one model: closed, open, half-open, with resilience4j's semantics and a
//! consecutive-failures preset.
//!
//! Sans-IO in the quinn-proto way. The driver (the breaker actor) asks [`Breaker::try_acquire`]
//! before a call and reports it with [`Breaker::record`] (or [`Breaker::release`] if the call was
//! never made), wakes [`Breaker::handle_timeout`] at [`Breaker::poll_timeout`], and publishes what
//! [`Breaker::poll_transition`] yields. Time is always an argument.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::classify::Class;
use super::invalid::Invalid;
use super::window::{Window, WindowKind, WindowStats};

/// What trips a closed breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trip {
    /// The window's failure rate or slow-call rate reaches its threshold (resilience4j).
    FailureRate,
    /// This many failures in a row, whatever the rates (linkerd's `consecutive_failures`).
    ConsecutiveFailures(u32),
}

/// Exponential growth of the open duration while a model keeps failing its half-open trials.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OpenBackoff {
    /// Factor applied to the open duration on each consecutive re-open (at least 1.0).
    pub multiplier: f64,
    /// The open duration never exceeds this.
    pub max: Duration,
}

/// The breaker's settings. [`BreakerConfig::validate`] says what is wrong with a bad one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BreakerConfig {
    /// The closed state's sliding window. Default `Count(20)`.
    pub window: WindowKind,
    /// Percent of failures in the window that opens the breaker (`rate >= this`). Default 50.
    pub failure_rate: f64,
    /// Percent of slow calls in the window that opens the breaker (`rate >= this`). Default 100.
    pub slow_call_rate: f64,
    /// A call that took longer than this is slow. Default 60 s.
    pub slow_call_duration: Duration,
    /// No rate decision before the window holds this many calls. Default 5.
    pub min_calls: u32,
    /// Trial calls let through in half-open. Default 3.
    pub half_open_calls: u32,
    /// How long the breaker stays open the first time. Default 30 s.
    pub open_for: Duration,
    /// Growth of the open duration on consecutive re-opens from half-open; reset when the breaker
    /// closes. Default `None` (always `open_for`).
    pub open_backoff: Option<OpenBackoff>,
    /// Half-open longer than this without a decision opens again. Default `None` (wait forever).
    pub max_wait_in_half_open: Option<Duration>,
    /// What trips the closed breaker. Default [`Trip::FailureRate`].
    pub trip: Trip,
    /// Whether a 429 counts as a health failure. Default `false`: a rate limit is a budget signal
    /// for the governor, not a sign that the model is sick.
    pub rate_limit_is_failure: bool,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            window: WindowKind::Count(20),
            failure_rate: 50.0,
            slow_call_rate: 100.0,
            slow_call_duration: Duration::from_secs(60),
            min_calls: 5,
            half_open_calls: 3,
            open_for: Duration::from_secs(30),
            open_backoff: None,
            max_wait_in_half_open: None,
            trip: Trip::FailureRate,
            rate_limit_is_failure: false,
        }
    }
}

impl BreakerConfig {
    /// The naive preset: `n` failures in a row open the breaker for `open_for`, then a single
    /// trial call decides.
    pub fn consecutive_failures(n: u32, open_for: Duration) -> Self {
        Self {
            trip: Trip::ConsecutiveFailures(n),
            open_for,
            half_open_calls: 1,
            ..Self::default()
        }
    }

    /// Check the settings.
    ///
    /// # Errors
    ///
    /// The first field that cannot work, and what is wrong with it.
    pub fn validate(&self) -> Result<(), Invalid> {
        let rate = |field: &'static str, value: f64| {
            // Written so that NaN fails too.
            if value > 0.0 && value <= 100.0 {
                Ok(())
            } else {
                Err(Invalid::new(
                    field,
                    format!("must be a percentage in (0, 100], got {value}"),
                ))
            }
        };
        let nonzero = |field: &'static str, value: Duration| {
            if value.is_zero() {
                Err(Invalid::new(field, "must be longer than zero"))
            } else {
                Ok(())
            }
        };
        match self.window {
            WindowKind::Count(0) => {
                return Err(Invalid::new("window", "must count at least 1 call"))
            }
            WindowKind::Count(n) if self.trip == Trip::FailureRate && self.min_calls > n => {
                return Err(Invalid::new(
                    "min_calls",
                    format!(
                        "({}) exceeds the window's {n} calls: the rates could never be judged",
                        self.min_calls
                    ),
                ))
            }
            WindowKind::Time(d) if d < Duration::from_secs(1) => {
                return Err(Invalid::new(
                    "window",
                    format!("a time window must be at least 1s, got {d:?}"),
                ))
            }
            _ => {}
        }
        rate("failure_rate", self.failure_rate)?;
        rate("slow_call_rate", self.slow_call_rate)?;
        nonzero("slow_call_duration", self.slow_call_duration)?;
        if self.min_calls == 0 {
            return Err(Invalid::new("min_calls", "must be at least 1"));
        }
        if self.half_open_calls == 0 {
            return Err(Invalid::new("half_open_calls", "must be at least 1"));
        }
        nonzero("open_for", self.open_for)?;
        if let Some(backoff) = self.open_backoff {
            // Written so that NaN fails too.
            if !(backoff.multiplier >= 1.0 && backoff.multiplier.is_finite()) {
                return Err(Invalid::new(
                    "open_backoff.multiplier",
                    format!("must be a finite number >= 1.0, got {}", backoff.multiplier),
                ));
            }
            if backoff.max < self.open_for {
                return Err(Invalid::new(
                    "open_backoff.max",
                    format!(
                        "({:?}) must be at least open_for ({:?})",
                        backoff.max, self.open_for
                    ),
                ));
            }
        }
        if let Some(wait) = self.max_wait_in_half_open {
            nonzero("max_wait_in_half_open", wait)?;
        }
        if self.trip == Trip::ConsecutiveFailures(0) {
            return Err(Invalid::new("trip", "needs at least 1 consecutive failure"));
        }
        Ok(())
    }
}

/// The breaker's state, as published to observers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StateKind {
    /// Calls flow; outcomes are counted.
    Closed,
    /// Calls are refused until the open duration ends.
    Open,
    /// A few trial calls decide between closed and open.
    HalfOpen,
}

/// Leave to make one call, to be handed back to [`Breaker::record`] or [`Breaker::release`].
///
/// It carries the epoch (state) it was issued in, so a late answer from an earlier state cannot
/// disturb the current one.
#[must_use = "a permit must be handed back to record() or release()"]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permit {
    epoch: u64,
}

impl Permit {
    /// A permit for tests of the policies that carry permits without a breaker.
    #[cfg(test)]
    pub(crate) fn for_test(epoch: u64) -> Self {
        Self { epoch }
    }
}

/// The answer to [`Breaker::try_acquire`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acquire {
    /// Make the call, then hand the permit back.
    Permitted(Permit),
    /// Do not call this model now.
    Rejected {
        /// When the open state ends; `None` in half-open, where a permit frees up whenever a trial
        /// call ends.
        until: Option<Instant>,
    },
}

/// A breaker actor's answer to "may an attempt go to this model now?": the breaker's
/// [`Acquire`] joined with the model's retry budget for re-attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Go; report the result under this permit.
    Permitted(Permit),
    /// The breaker is open until then (`None`: half-open with every trial slot taken).
    Open {
        /// When the open state ends.
        until: Option<Instant>,
    },
    /// A retry, and the model's retry budget is spent: move on instead.
    RetryBudgetSpent,
}

/// What one answer says about the model's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// The model works.
    Success,
    /// The model failed.
    Failure,
    /// Nothing about the model (a bad request, a bad key, a rate limit): not counted at all.
    Ignored,
}

/// One state change, queued for the driver to publish.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Transition {
    /// The state left.
    pub from: StateKind,
    /// The state entered.
    pub to: StateKind,
    /// When the change happened (the `now` of the call that made it).
    pub at: Instant,
    /// Why: `failure_rate`, `slow_call_rate`, `consecutive_failures`, `open_elapsed`,
    /// `half_open_succeeded`, `half_open_failed` or `half_open_max_wait`; `peer_opened` or
    /// `peer_closed` for one a peer of the fleet told of.
    pub reason: &'static str,
    /// Made on a peer's word, not on this instance's own calls (so not told back to the fleet).
    pub from_peer: bool,
    /// What the decision was made on: the closed window, or the half-open batch.
    pub stats: WindowStats,
}

#[derive(Clone, Copy, Debug)]
enum State {
    Closed {
        consecutive_failures: u32,
    },
    Open {
        until: Instant,
    },
    HalfOpen {
        entered: Instant,
        /// Permits handed out whose result has not come back.
        taken: u32,
        /// The trial results so far: a fresh window of its own.
        batch: WindowStats,
    },
}

impl State {
    fn kind(&self) -> StateKind {
        match self {
            State::Closed { .. } => StateKind::Closed,
            State::Open { .. } => StateKind::Open,
            State::HalfOpen { .. } => StateKind::HalfOpen,
        }
    }
}

/// The circuit breaker of one model. See the module documentation for how to drive it.
#[derive(Clone, Debug)]
pub struct Breaker {
    config: BreakerConfig,
    state: State,
    /// The closed state's window; left as it was while open, cleared when the breaker closes.
    window: Window,
    /// Bumped on every state change; permits from an older epoch are stale.
    epoch: u64,
    /// Re-opens from half-open since the breaker last closed: the open backoff's exponent.
    reopens: u32,
    /// Not yet polled by the driver, oldest first. The driver drains it after every call.
    transitions: VecDeque<Transition>,
}

/// Beyond what `Instant` can hold, "open for a year" is as good as forever.
const A_YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

fn deadline(now: Instant, after: Duration) -> Instant {
    now.checked_add(after)
        .or_else(|| now.checked_add(A_YEAR))
        .unwrap_or(now)
}

impl Breaker {
    /// A closed breaker; a time window's buckets are anchored at `now`.
    pub fn new(config: BreakerConfig, now: Instant) -> Self {
        Self {
            config,
            state: State::Closed {
                consecutive_failures: 0,
            },
            window: Window::with_origin(config.window, now),
            epoch: 0,
            reopens: 0,
            transitions: VecDeque::new(),
        }
    }

    /// The settings this breaker runs with.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// What an answer of class `class` says about the model's health.
    pub fn health(&self, class: Class) -> Health {
        match class {
            Class::Success => Health::Success,
            Class::Overloaded
            | Class::ServerError
            | Class::Timeout
            | Class::Network
            | Class::Other => Health::Failure,
            Class::RateLimited if self.config.rate_limit_is_failure => Health::Failure,
            // A budget signal: the governor slows down, the model is not sick.
            Class::RateLimited => Health::Ignored,
            // The request, key or account is wrong; the model answered, so it is not sick.
            Class::InvalidRequest
            | Class::Authentication
            | Class::Billing
            | Class::Permission
            | Class::NotFound => Health::Ignored,
        }
    }

    /// Ask leave to make one call at `now`. Time transitions due by `now` happen first, so an
    /// elapsed open state turns half-open here even if the driver's timer has not fired yet.
    #[must_use]
    pub fn try_acquire(&mut self, now: Instant) -> Acquire {
        self.handle_timeout(now);
        let permits = self.config.half_open_calls.max(1);
        match &mut self.state {
            State::Closed { .. } => Acquire::Permitted(Permit { epoch: self.epoch }),
            State::Open { until } => Acquire::Rejected {
                until: Some(*until),
            },
            State::HalfOpen { taken, batch, .. } => {
                if taken.saturating_add(batch.calls) < permits {
                    *taken += 1;
                    Acquire::Permitted(Permit { epoch: self.epoch })
                } else {
                    Acquire::Rejected { until: None }
                }
            }
        }
    }

    /// Report the answer of a permitted call, of class `class`, that took `latency`. A permit
    /// from an earlier state is ignored entirely.
    pub fn record(&mut self, permit: Permit, class: Class, latency: Duration, now: Instant) {
        self.handle_timeout(now);
        if permit.epoch != self.epoch {
            return;
        }
        let health = self.health(class);
        let slow = latency > self.config.slow_call_duration;
        match self.state {
            State::Closed {
                consecutive_failures,
            } => self.record_closed(consecutive_failures, health, slow, now),
            State::HalfOpen {
                entered,
                taken,
                batch,
            } => self.record_half_open(entered, taken, batch, health, slow, now),
            // Open hands out no permits, so no result of this epoch can arrive.
            State::Open { .. } => {}
        }
    }

    /// Hand back a permit whose call was never made (no budget, caller gone): in half-open, the
    /// trial slot goes to another caller.
    pub fn release(&mut self, permit: Permit, now: Instant) {
        self.handle_timeout(now);
        if permit.epoch != self.epoch {
            return;
        }
        if let State::HalfOpen { taken, .. } = &mut self.state {
            *taken = taken.saturating_sub(1);
        }
    }

    /// Make the time transitions due by `now`: open elapsed to half-open, half-open past its
    /// maximum wait to open.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.poll_timeout().is_none_or(|due| now < due) {
            return;
        }
        match self.state {
            State::Open { .. } => {
                let stats = self.window.stats(now);
                let half_open = State::HalfOpen {
                    entered: now,
                    taken: 0,
                    batch: WindowStats::default(),
                };
                self.transition(half_open, "open_elapsed", stats, now);
            }
            State::HalfOpen { batch, .. } => self.reopen("half_open_max_wait", batch, now),
            State::Closed { .. } => {}
        }
    }

    /// The next instant at which [`Breaker::handle_timeout`] has work to do, if any.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Closed { .. } => None,
            State::Open { until } => Some(until),
            State::HalfOpen { entered, .. } => self
                .config
                .max_wait_in_half_open
                .and_then(|wait| entered.checked_add(wait)),
        }
    }

    /// The oldest state change not yet polled.
    #[must_use]
    pub fn poll_transition(&mut self) -> Option<Transition> {
        self.transitions.pop_front()
    }

    /// The current state, as of the last call that was given a `now`.
    pub fn state(&self) -> StateKind {
        self.state.kind()
    }

    /// When the open state ends, while open.
    pub fn open_until(&self) -> Option<Instant> {
        match self.state {
            State::Open { until } => Some(until),
            _ => None,
        }
    }

    /// The current window as of `now`: the closed window (frozen while open), or the half-open
    /// batch.
    pub fn stats(&mut self, now: Instant) -> WindowStats {
        match self.state {
            State::HalfOpen { batch, .. } => batch,
            State::Closed { .. } | State::Open { .. } => self.window.stats(now),
        }
    }

    /// Bumped on every state change; a driver tags its timers with it to spot stale ones.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    fn record_closed(&mut self, consecutive: u32, health: Health, slow: bool, now: Instant) {
        let failed = match health {
            Health::Ignored => return,
            Health::Success => false,
            Health::Failure => true,
        };
        let consecutive = if failed {
            consecutive.saturating_add(1)
        } else {
            0
        };
        self.state = State::Closed {
            consecutive_failures: consecutive,
        };
        self.window.record(failed, slow, now);
        let stats = self.window.stats(now);
        let reason = match self.config.trip {
            Trip::ConsecutiveFailures(n) => {
                (consecutive >= n.max(1)).then_some("consecutive_failures")
            }
            Trip::FailureRate if stats.calls >= self.config.min_calls => self.rate_exceeded(stats),
            Trip::FailureRate => None,
        };
        if let Some(reason) = reason {
            self.open(reason, stats, now);
        }
    }

    fn record_half_open(
        &mut self,
        entered: Instant,
        taken: u32,
        mut batch: WindowStats,
        health: Health,
        slow: bool,
        now: Instant,
    ) {
        // No permit outstanding: a second report of a settled permit (`Permit` is `Copy`). With
        // several outstanding a duplicate cannot be told apart; reporting once is the driver's job.
        let Some(taken) = taken.checked_sub(1) else {
            return;
        };
        let failed = match health {
            Health::Success => false,
            Health::Failure => true,
            // Nothing learned: the slot goes back for another trial call.
            Health::Ignored => {
                self.state = State::HalfOpen {
                    entered,
                    taken,
                    batch,
                };
                return;
            }
        };
        batch.calls += 1;
        batch.failures += u32::from(failed);
        batch.slow += u32::from(slow);
        self.state = State::HalfOpen {
            entered,
            taken,
            batch,
        };
        let complete = batch.calls >= self.config.half_open_calls.max(1);
        let reopen = match self.config.trip {
            // The consecutive rule knows no rates: one failed trial is enough.
            Trip::ConsecutiveFailures(_) => failed,
            Trip::FailureRate => complete && self.rate_exceeded(batch).is_some(),
        };
        if reopen {
            self.reopen("half_open_failed", batch, now);
        } else if complete {
            self.window.clear();
            self.reopens = 0;
            let closed = State::Closed {
                consecutive_failures: 0,
            };
            self.transition(closed, "half_open_succeeded", batch, now);
        }
    }

    /// A peer of the fleet found the model down until `until` (wall time translated to this
    /// clock): open now, unless already open at least that long, so this instance does not
    /// spend its own failure threshold finding out. Reason `peer_opened`.
    pub fn open_by_peer(&mut self, until: Instant, now: Instant) {
        self.handle_timeout(now);
        if until <= now {
            return;
        }
        if matches!(self.state, State::Open { until: mine } if mine >= until) {
            return;
        }
        let stats = self.window.stats(now);
        self.record_transition(State::Open { until }, "peer_opened", true, stats, now);
    }

    /// A peer's trials found the model healthy again: close now. Reason `peer_closed`.
    pub fn close_by_peer(&mut self, now: Instant) {
        self.handle_timeout(now);
        if matches!(self.state, State::Closed { .. }) {
            return;
        }
        self.window.clear();
        self.reopens = 0;
        let closed = State::Closed {
            consecutive_failures: 0,
        };
        self.record_transition(closed, "peer_closed", true, WindowStats::default(), now);
    }

    /// The threshold `stats` reaches, if any; the failure rate is reported first.
    fn rate_exceeded(&self, stats: WindowStats) -> Option<&'static str> {
        if stats.failure_rate() >= self.config.failure_rate {
            Some("failure_rate")
        } else if stats.slow_rate() >= self.config.slow_call_rate {
            Some("slow_call_rate")
        } else {
            None
        }
    }

    fn reopen(&mut self, reason: &'static str, stats: WindowStats, now: Instant) {
        self.reopens = self.reopens.saturating_add(1);
        self.open(reason, stats, now);
    }

    fn open(&mut self, reason: &'static str, stats: WindowStats, now: Instant) {
        let until = deadline(now, self.open_duration());
        self.transition(State::Open { until }, reason, stats, now);
    }

    /// `open_for × multiplier^reopens`, capped at the backoff's max.
    fn open_duration(&self) -> Duration {
        let base = self.config.open_for;
        let Some(backoff) = self.config.open_backoff else {
            return base;
        };
        if self.reopens == 0 {
            return base;
        }
        let exponent = i32::try_from(self.reopens).unwrap_or(i32::MAX);
        let secs = base.as_secs_f64() * backoff.multiplier.powi(exponent);
        // Infinite, NaN or negative (an unvalidated multiplier) all fall back to the cap.
        Duration::try_from_secs_f64(secs).map_or(backoff.max, |d| d.min(backoff.max))
    }

    fn transition(&mut self, to: State, reason: &'static str, stats: WindowStats, now: Instant) {
        self.record_transition(to, reason, false, stats, now);
    }

    fn record_transition(
        &mut self,
        to: State,
        reason: &'static str,
        from_peer: bool,
        stats: WindowStats,
        now: Instant,
    ) {
        let from = self.state.kind();
        self.state = to;
        self.epoch = self.epoch.wrapping_add(1);
        self.transitions.push_back(Transition {
            from,
            to: to.kind(),
            at: now,
            reason,
            from_peer,
            stats,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Class::{ServerError as F, Success as S};

    const FAST: Duration = Duration::from_millis(100);

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// Count(4) window, min_calls 4, 50 % threshold, 3 half-open trials, 30 s open.
    fn cfg() -> BreakerConfig {
        BreakerConfig {
            window: WindowKind::Count(4),
            min_calls: 4,
            ..BreakerConfig::default()
        }
    }

    fn permit(b: &mut Breaker, now: Instant) -> Permit {
        match b.try_acquire(now) {
            Acquire::Permitted(p) => p,
            other => panic!("expected a permit, got {other:?}"),
        }
    }

    fn call(b: &mut Breaker, class: Class, now: Instant) {
        let p = permit(b, now);
        b.record(p, class, FAST, now);
    }

    fn calls(b: &mut Breaker, classes: &[Class], now: Instant) {
        for &class in classes {
            call(b, class, now);
        }
    }

    fn drain(b: &mut Breaker) -> Vec<(StateKind, StateKind, &'static str)> {
        std::iter::from_fn(|| b.poll_transition())
            .map(|t| (t.from, t.to, t.reason))
            .collect()
    }

    /// Trip a `cfg()`-like breaker at `now` with failures.
    fn trip(b: &mut Breaker, now: Instant) {
        while b.state() == StateKind::Closed {
            call(b, F, now);
        }
    }

    #[test]
    fn opens_exactly_at_the_threshold() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg(), t0);
        calls(&mut b, &[S, F, S, S], t0);
        assert_eq!(b.state(), StateKind::Closed, "25 % stays closed");
        assert_eq!(
            b.stats(t0),
            WindowStats {
                calls: 4,
                failures: 1,
                slow: 0
            }
        );
        // The ring now holds [F, S, S, F]: 50 %.
        call(&mut b, F, t0);
        assert_eq!(b.state(), StateKind::Open);
        let t = b.poll_transition().expect("a transition");
        assert_eq!(
            (t.from, t.to, t.reason, t.at),
            (StateKind::Closed, StateKind::Open, "failure_rate", t0)
        );
        assert_eq!(t.stats.failures, 2);
        assert_eq!(b.open_until(), Some(t0 + secs(30)));
        assert_eq!(
            b.try_acquire(t0 + secs(29)),
            Acquire::Rejected {
                until: Some(t0 + secs(30))
            }
        );
    }

    #[test]
    fn no_decision_below_min_calls() {
        let t0 = Instant::now();
        let mut b = Breaker::new(
            BreakerConfig {
                min_calls: 5,
                ..BreakerConfig::default()
            },
            t0,
        );
        calls(&mut b, &[F, F, F, F], t0);
        assert_eq!(b.state(), StateKind::Closed, "100 % of 4 calls, below 5");
        call(&mut b, F, t0);
        assert_eq!(b.state(), StateKind::Open);
    }

    #[test]
    fn time_window_forgets_old_failures() {
        let t0 = Instant::now();
        let config = BreakerConfig {
            window: WindowKind::Time(secs(10)),
            ..cfg()
        };
        let mut b = Breaker::new(config, t0);
        calls(&mut b, &[F, F], t0);
        calls(&mut b, &[S, S], t0 + secs(20));
        assert_eq!(b.state(), StateKind::Closed, "the failures aged out");
        assert_eq!(b.stats(t0 + secs(20)).calls, 2);

        // The same calls inside one span do open it.
        let mut b = Breaker::new(config, t0);
        calls(&mut b, &[F, F], t0);
        calls(&mut b, &[S, S], t0 + secs(9));
        assert_eq!(b.state(), StateKind::Open);
    }

    #[test]
    fn slow_calls_open_even_when_all_succeed() {
        let t0 = Instant::now();
        let config = BreakerConfig {
            slow_call_rate: 50.0,
            slow_call_duration: secs(1),
            ..cfg()
        };
        let mut b = Breaker::new(config, t0);
        for latency in [secs(1), secs(1), secs(2)] {
            let p = permit(&mut b, t0);
            b.record(p, S, latency, t0);
        }
        assert_eq!(b.stats(t0).slow, 1, "exactly the threshold is not slow");
        let p = permit(&mut b, t0);
        b.record(p, S, secs(5), t0);
        assert_eq!(b.state(), StateKind::Open);
        let t = b.poll_transition().expect("a transition");
        assert_eq!(t.reason, "slow_call_rate");
        assert_eq!(t.stats.failures, 0);
    }

    #[test]
    fn half_open_hands_out_exactly_its_permits() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg(), t0);
        trip(&mut b, t0);
        let t1 = t0 + secs(30);
        let p1 = permit(&mut b, t1);
        assert_eq!(b.state(), StateKind::HalfOpen, "lazily half-open");
        let _p2 = permit(&mut b, t1);
        let _p3 = permit(&mut b, t1);
        assert_eq!(b.try_acquire(t1), Acquire::Rejected { until: None });
        b.release(p1, t1);
        let p4 = permit(&mut b, t1);
        assert_eq!(b.try_acquire(t1), Acquire::Rejected { until: None });
        // An ignored answer also gives its slot back, and counts nothing.
        b.record(p4, Class::InvalidRequest, FAST, t1);
        assert_eq!(b.stats(t1).calls, 0);
        let p5 = permit(&mut b, t1);
        // A counted result keeps its slot used: the batch is 1 of 3.
        b.record(p5, S, FAST, t1);
        assert_eq!(b.try_acquire(t1), Acquire::Rejected { until: None });
        assert_eq!(b.stats(t1).calls, 1);
    }

    #[test]
    fn half_open_successes_close_and_clear_the_window() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg(), t0);
        trip(&mut b, t0);
        let t1 = t0 + secs(30);
        let ps = [permit(&mut b, t1), permit(&mut b, t1), permit(&mut b, t1)];
        b.record(ps[0], S, FAST, t1);
        b.record(ps[1], S, FAST, t1);
        assert_eq!(b.state(), StateKind::HalfOpen, "waits for the whole batch");
        b.record(ps[2], S, FAST, t1);
        assert_eq!(b.state(), StateKind::Closed);
        assert_eq!(b.stats(t1), WindowStats::default());
        // A fresh window: three failures are below min_calls again.
        calls(&mut b, &[F, F, F], t1);
        assert_eq!(b.state(), StateKind::Closed);
    }

    #[test]
    fn half_open_batch_at_the_threshold_reopens() {
        let t0 = Instant::now();
        let config = BreakerConfig {
            half_open_calls: 4,
            ..cfg()
        };
        for (batch, expect) in [
            ([S, F, S, F], StateKind::Open),
            ([S, F, S, S], StateKind::Closed),
        ] {
            let mut b = Breaker::new(config, t0);
            trip(&mut b, t0);
            let t1 = t0 + secs(30);
            let ps: Vec<Permit> = (0..4).map(|_| permit(&mut b, t1)).collect();
            for (p, class) in ps.into_iter().zip(batch) {
                b.record(p, class, FAST, t1);
            }
            assert_eq!(b.state(), expect, "{batch:?}");
            let last = drain(&mut b).pop().expect("a transition");
            let reason = match expect {
                StateKind::Open => "half_open_failed",
                _ => "half_open_succeeded",
            };
            assert_eq!(last, (StateKind::HalfOpen, expect, reason));
        }
    }

    #[test]
    fn open_duration_grows_caps_and_resets() {
        let t0 = Instant::now();
        let config = BreakerConfig {
            half_open_calls: 1,
            open_backoff: Some(OpenBackoff {
                multiplier: 2.0,
                max: secs(200),
            }),
            ..cfg()
        };
        let mut b = Breaker::new(config, t0);
        trip(&mut b, t0);
        let mut now = t0;
        for wait in [30, 60, 120, 200, 200] {
            assert_eq!(b.open_until(), Some(now + secs(wait)));
            now += secs(wait);
            call(&mut b, F, now);
        }
        // A successful trial closes, and the next trip starts from open_for again.
        now += secs(200);
        call(&mut b, S, now);
        assert_eq!(b.state(), StateKind::Closed);
        trip(&mut b, now);
        assert_eq!(b.open_until(), Some(now + secs(30)));
    }

    #[test]
    fn half_open_max_wait_reopens() {
        let t0 = Instant::now();
        let config = BreakerConfig {
            max_wait_in_half_open: Some(secs(10)),
            ..cfg()
        };
        let mut b = Breaker::new(config, t0);
        trip(&mut b, t0);
        assert_eq!(b.poll_timeout(), Some(t0 + secs(30)));
        let t1 = t0 + secs(30);
        b.handle_timeout(t1);
        assert_eq!(b.state(), StateKind::HalfOpen);
        assert_eq!(b.poll_timeout(), Some(t1 + secs(10)));
        let p = permit(&mut b, t1);
        b.handle_timeout(t1 + secs(9));
        assert_eq!(b.state(), StateKind::HalfOpen);
        b.handle_timeout(t1 + secs(10));
        assert_eq!(b.state(), StateKind::Open);
        assert_eq!(
            drain(&mut b),
            [
                (StateKind::Closed, StateKind::Open, "failure_rate"),
                (StateKind::Open, StateKind::HalfOpen, "open_elapsed"),
                (StateKind::HalfOpen, StateKind::Open, "half_open_max_wait"),
            ]
        );
        // The late trial answer belongs to a state that is gone.
        b.record(p, S, FAST, t1 + secs(11));
        assert_eq!(b.state(), StateKind::Open);
        assert_eq!(b.open_until(), Some(t1 + secs(40)));
    }

    #[test]
    fn without_max_wait_half_open_has_no_timeout() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg(), t0);
        assert_eq!(b.poll_timeout(), None);
        trip(&mut b, t0);
        b.handle_timeout(t0 + secs(29));
        assert_eq!(b.state(), StateKind::Open, "not yet elapsed");
        b.handle_timeout(t0 + secs(30));
        assert_eq!(b.state(), StateKind::HalfOpen);
        assert_eq!(b.poll_timeout(), None);
        b.handle_timeout(t0 + secs(100_000));
        assert_eq!(b.state(), StateKind::HalfOpen);
    }

    #[test]
    fn rate_limits_count_only_when_configured() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg(), t0);
        calls(&mut b, &[Class::RateLimited; 10], t0);
        assert_eq!(b.state(), StateKind::Closed);
        assert_eq!(b.stats(t0).calls, 0);

        let config = BreakerConfig {
            rate_limit_is_failure: true,
            ..cfg()
        };
        let mut b = Breaker::new(config, t0);
        calls(&mut b, &[Class::RateLimited; 4], t0);
        assert_eq!(b.state(), StateKind::Open);
    }

    #[test]
    fn permanent_errors_say_nothing_about_health() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg(), t0);
        let permanent = [
            Class::InvalidRequest,
            Class::Authentication,
            Class::Billing,
            Class::Permission,
            Class::NotFound,
        ];
        for class in permanent {
            assert_eq!(b.health(class), Health::Ignored, "{class:?}");
        }
        for class in [
            Class::Overloaded,
            Class::ServerError,
            Class::Timeout,
            Class::Network,
            Class::Other,
        ] {
            assert_eq!(b.health(class), Health::Failure, "{class:?}");
        }
        assert_eq!(b.health(Class::Success), Health::Success);
        calls(&mut b, &permanent, t0);
        calls(&mut b, &permanent, t0);
        assert_eq!(b.stats(t0).calls, 0);
        assert_eq!(b.state(), StateKind::Closed);
    }

    #[test]
    fn stale_permits_are_ignored() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg(), t0);
        let stale_a = permit(&mut b, t0);
        let stale_b = permit(&mut b, t0);
        trip(&mut b, t0);
        let t1 = t0 + secs(30);
        let trials = [permit(&mut b, t1), permit(&mut b, t1)];
        // Late closed-era answers: they neither fill the batch nor free a slot.
        b.record(stale_a, S, FAST, t1);
        b.release(stale_b, t1);
        assert_eq!(b.stats(t1).calls, 0);
        let third = permit(&mut b, t1);
        assert_eq!(b.try_acquire(t1), Acquire::Rejected { until: None });
        b.record(trials[0], S, FAST, t1);
        b.record(trials[1], S, FAST, t1);
        assert_eq!(b.state(), StateKind::HalfOpen);
        b.record(third, S, FAST, t1);
        assert_eq!(b.state(), StateKind::Closed);
    }

    #[test]
    fn a_result_with_no_permit_outstanding_is_ignored() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg(), t0);
        trip(&mut b, t0);
        let t1 = t0 + secs(30);
        let p = permit(&mut b, t1);
        // `Permit` is `Copy`: a duplicate report must not fill the batch.
        b.record(p, F, FAST, t1);
        b.record(p, F, FAST, t1);
        assert_eq!(b.stats(t1).calls, 1);
        assert_eq!(b.state(), StateKind::HalfOpen);
    }

    #[test]
    fn consecutive_failures_preset() {
        let t0 = Instant::now();
        let config = BreakerConfig::consecutive_failures(3, secs(10));
        assert_eq!(config.half_open_calls, 1);
        assert_eq!(config.validate(), Ok(()));
        let mut b = Breaker::new(config, t0);
        // Success resets the run; an ignored answer neither resets nor counts.
        calls(&mut b, &[F, F, S, F, F, Class::NotFound], t0);
        assert_eq!(b.state(), StateKind::Closed, "no rates: 4 of 6 failed");
        call(&mut b, F, t0);
        assert_eq!(b.state(), StateKind::Open);
        assert_eq!(
            b.poll_transition().map(|t| t.reason),
            Some("consecutive_failures")
        );
        assert_eq!(b.open_until(), Some(t0 + secs(10)));

        // One trial decides: a failure re-opens, a success closes.
        let t1 = t0 + secs(10);
        call(&mut b, F, t1);
        assert_eq!(b.state(), StateKind::Open);
        let t2 = t1 + secs(10);
        call(&mut b, S, t2);
        assert_eq!(b.state(), StateKind::Closed);
        calls(&mut b, &[F, F], t2);
        assert_eq!(
            b.state(),
            StateKind::Closed,
            "the run restarts after closing"
        );
    }

    #[test]
    fn a_peer_opens_and_closes_this_breaker_without_its_own_failures() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg(), t0);
        b.open_by_peer(t0 + secs(20), t0);
        assert_eq!(b.state(), StateKind::Open);
        assert_eq!(b.open_until(), Some(t0 + secs(20)));
        // A shorter news changes nothing; an elapsed one neither.
        b.open_by_peer(t0 + secs(5), t0);
        assert_eq!(b.open_until(), Some(t0 + secs(20)));
        b.close_by_peer(t0 + secs(1));
        assert_eq!(b.state(), StateKind::Closed);
        b.open_by_peer(t0, t0 + secs(2));
        assert_eq!(b.state(), StateKind::Closed, "a past until is no news");
        let peer: Vec<_> = std::iter::from_fn(|| b.poll_transition())
            .map(|t| (t.reason, t.from_peer))
            .collect();
        assert_eq!(peer, [("peer_opened", true), ("peer_closed", true)]);
        // Its own transitions are its own.
        trip(&mut b, t0 + secs(3));
        assert!(std::iter::from_fn(|| b.poll_transition()).all(|t| !t.from_peer));
    }

    #[test]
    fn transitions_are_queued_in_order_and_bump_the_epoch() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg(), t0);
        assert_eq!(b.epoch(), 0);
        assert_eq!(b.poll_transition(), None);
        trip(&mut b, t0);
        let t1 = t0 + secs(30);
        let ps = [permit(&mut b, t1), permit(&mut b, t1), permit(&mut b, t1)];
        let t2 = t1 + secs(1);
        for p in ps {
            b.record(p, S, FAST, t2);
        }
        assert_eq!(b.epoch(), 3);
        let all: Vec<Transition> = std::iter::from_fn(|| b.poll_transition()).collect();
        let seen: Vec<_> = all.iter().map(|t| (t.from, t.to, t.reason, t.at)).collect();
        assert_eq!(
            seen,
            [
                (StateKind::Closed, StateKind::Open, "failure_rate", t0),
                (StateKind::Open, StateKind::HalfOpen, "open_elapsed", t1),
                (
                    StateKind::HalfOpen,
                    StateKind::Closed,
                    "half_open_succeeded",
                    t2
                ),
            ]
        );
        assert_eq!(all[2].stats.calls, 3);
        assert_eq!(b.poll_transition(), None);
    }

    #[test]
    fn validate_names_the_field() {
        assert_eq!(BreakerConfig::default().validate(), Ok(()));
        let base = BreakerConfig::default();
        let backoff = OpenBackoff {
            multiplier: 2.0,
            max: secs(300),
        };
        let cases = [
            (
                BreakerConfig {
                    failure_rate: 0.0,
                    ..base
                },
                "failure_rate",
            ),
            (
                BreakerConfig {
                    failure_rate: f64::NAN,
                    ..base
                },
                "failure_rate",
            ),
            (
                BreakerConfig {
                    slow_call_rate: 100.5,
                    ..base
                },
                "slow_call_rate",
            ),
            (
                BreakerConfig {
                    slow_call_duration: Duration::ZERO,
                    ..base
                },
                "slow_call_duration",
            ),
            (
                BreakerConfig {
                    min_calls: 0,
                    ..base
                },
                "min_calls",
            ),
            (
                BreakerConfig {
                    min_calls: 21,
                    ..base
                },
                "min_calls",
            ),
            (
                BreakerConfig {
                    half_open_calls: 0,
                    ..base
                },
                "half_open_calls",
            ),
            (
                BreakerConfig {
                    open_for: Duration::ZERO,
                    ..base
                },
                "open_for",
            ),
            (
                BreakerConfig {
                    open_backoff: Some(OpenBackoff {
                        multiplier: 0.5,
                        ..backoff
                    }),
                    ..base
                },
                "open_backoff.multiplier",
            ),
            (
                BreakerConfig {
                    open_backoff: Some(OpenBackoff {
                        max: secs(10),
                        ..backoff
                    }),
                    ..base
                },
                "open_backoff.max",
            ),
            (
                BreakerConfig {
                    max_wait_in_half_open: Some(Duration::ZERO),
                    ..base
                },
                "max_wait_in_half_open",
            ),
            (
                BreakerConfig {
                    trip: Trip::ConsecutiveFailures(0),
                    ..base
                },
                "trip",
            ),
            (
                BreakerConfig {
                    window: WindowKind::Count(0),
                    ..base
                },
                "window",
            ),
            (
                BreakerConfig {
                    window: WindowKind::Time(Duration::from_millis(500)),
                    ..base
                },
                "window",
            ),
        ];
        for (config, field) in cases {
            let err = config.validate().expect_err(field);
            assert_eq!(err.field, field, "{err}");
        }
        let good = BreakerConfig {
            open_backoff: Some(backoff),
            max_wait_in_half_open: Some(secs(5)),
            ..base
        };
        assert_eq!(good.validate(), Ok(()));
    }
}
