//! Retry budget: same-model re-attempts are limited to a fraction of recent first attempts, the
//! way Finagle's `RetryBudget` and Envoy's retry budgets bound retry storms.
//!
//! Over a sliding window of `window` (whole
//! seconds, per-second buckets), retries may be at most `ratio` × first attempts plus a floor of
//! `min_per_sec` × window seconds. When an outage makes every first attempt fail, the retries it
//! triggers stay a fraction of the offered load instead of multiplying it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::policy::invalid::Invalid;

/// Settings of a retry budget.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryBudgetConfig {
    /// Retries allowed per first attempt in the window (0.2: one retry per five calls).
    pub ratio: f64,
    /// The sliding window.
    pub window: Duration,
    /// Retries always allowed per second of window, so a quiet model can still retry.
    pub min_per_sec: f64,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            window: Duration::from_secs(10),
            min_per_sec: 1.0,
        }
    }
}

impl RetryBudgetConfig {
    /// Check the settings.
    pub fn validate(&self) -> Result<(), Invalid> {
        if !(self.ratio >= 0.0 && self.ratio.is_finite()) {
            return Err(Invalid::new(
                "ratio",
                format!("must be a number >= 0, got {}", self.ratio),
            ));
        }
        if self.window < Duration::from_secs(1) {
            return Err(Invalid::new("window", "must be at least 1s"));
        }
        if !(self.min_per_sec >= 0.0 && self.min_per_sec.is_finite()) {
            return Err(Invalid::new(
                "min_per_sec",
                format!("must be a number >= 0, got {}", self.min_per_sec),
            ));
        }
        Ok(())
    }
}

/// What the budget looks like now.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct RetryBudgetStats {
    /// First attempts in the window.
    pub first_attempts: u64,
    /// Retries granted in the window.
    pub retries: u64,
    /// Retries refused since the start.
    pub refused_total: u64,
    /// Retries still allowed now.
    pub available: f64,
}

#[derive(Clone, Copy, Debug, Default)]
struct Second {
    at: u64,
    firsts: u64,
    retries: u64,
}

/// A retry budget for one model.
#[derive(Clone, Debug)]
pub struct RetryBudget {
    config: RetryBudgetConfig,
    origin: Instant,
    seconds: VecDeque<Second>,
    refused_total: u64,
}

impl RetryBudget {
    /// An empty budget; the window's seconds count from `now`.
    pub fn new(config: RetryBudgetConfig, now: Instant) -> Self {
        Self {
            config,
            origin: now,
            seconds: VecDeque::new(),
            refused_total: 0,
        }
    }

    fn span(&self) -> u64 {
        self.config.window.as_secs().max(1)
    }

    /// The bucket for `now`, after dropping buckets that left the window.
    fn current(&mut self, now: Instant) -> &mut Second {
        let sec = now.saturating_duration_since(self.origin).as_secs();
        let span = self.span();
        while self.seconds.front().is_some_and(|s| s.at + span <= sec) {
            self.seconds.pop_front();
        }
        if self.seconds.back().is_none_or(|s| s.at < sec) {
            self.seconds.push_back(Second {
                at: sec,
                ..Second::default()
            });
        }
        // Never empty: a bucket for `sec` (or a later one, if time went backwards) is last.
        let last = self.seconds.len() - 1;
        &mut self.seconds[last]
    }

    /// A first attempt was made: it earns `ratio` retries.
    pub fn record_first(&mut self, now: Instant) {
        self.current(now).firsts += 1;
    }

    /// May a retry go now? If so it is counted.
    #[must_use]
    pub fn try_retry(&mut self, now: Instant) -> bool {
        let stats = self.stats(now);
        if stats.available >= 1.0 {
            self.current(now).retries += 1;
            true
        } else {
            self.refused_total += 1;
            false
        }
    }

    /// The window as of `now`.
    pub fn stats(&mut self, now: Instant) -> RetryBudgetStats {
        self.current(now);
        let (firsts, retries) = self
            .seconds
            .iter()
            .fold((0, 0), |(f, r), s| (f + s.firsts, r + s.retries));
        let allowed =
            self.config.ratio * firsts as f64 + self.config.min_per_sec * self.span() as f64;
        RetryBudgetStats {
            first_attempts: firsts,
            retries,
            refused_total: self.refused_total,
            available: (allowed - retries as f64).max(0.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(ratio: f64, min_per_sec: f64) -> (RetryBudget, Instant) {
        let t0 = Instant::now();
        let config = RetryBudgetConfig {
            ratio,
            window: Duration::from_secs(10),
            min_per_sec,
        };
        (RetryBudget::new(config, t0), t0)
    }

    #[test]
    fn retries_are_a_fraction_of_first_attempts() {
        let (mut b, t0) = budget(0.2, 0.0);
        for _ in 0..100 {
            b.record_first(t0);
        }
        let granted = (0..100).filter(|_| b.try_retry(t0)).count();
        assert_eq!(granted, 20);
        let s = b.stats(t0);
        assert_eq!(
            (s.first_attempts, s.retries, s.refused_total),
            (100, 20, 80)
        );
    }

    #[test]
    fn the_floor_lets_a_quiet_model_retry() {
        let (mut b, t0) = budget(0.2, 0.5);
        // No first attempts at all: 0.5/s over 10 s = 5 retries.
        let granted = (0..10).filter(|_| b.try_retry(t0)).count();
        assert_eq!(granted, 5);
    }

    #[test]
    fn old_attempts_leave_the_window() {
        let (mut b, t0) = budget(1.0, 0.0);
        for _ in 0..10 {
            b.record_first(t0);
        }
        assert_eq!(b.stats(t0 + Duration::from_secs(9)).first_attempts, 10);
        assert_eq!(b.stats(t0 + Duration::from_secs(10)).first_attempts, 0);
        assert!(!b.try_retry(t0 + Duration::from_secs(10)));
        // Retries granted long ago free the budget again.
        let (mut b, t0) = budget(0.0, 0.1);
        assert!(b.try_retry(t0));
        assert!(!b.try_retry(t0));
        assert!(b.try_retry(t0 + Duration::from_secs(10)));
    }

    #[test]
    fn validate_names_the_field() {
        let bad = RetryBudgetConfig {
            ratio: -1.0,
            ..RetryBudgetConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().field, "ratio");
        let bad = RetryBudgetConfig {
            window: Duration::from_millis(10),
            ..RetryBudgetConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().field, "window");
    }
}
