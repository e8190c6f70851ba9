//! Alarms with hysteresis: fire once when a figure crosses its threshold, clear once when it has
//! recovered, never a storm in between.
//!
//! - [`RateAlarm`]: a share of hits over a sliding time window (failed calls, fallback answers),
//!   judged only once the window holds enough calls.
//! - [`DownAlarm`]: something has been down (a breaker not closed) for longer than a limit.
//!
//! Pure: time is an argument, never read from a clock.

use std::time::{Duration, Instant};

use super::window::{Window, WindowKind};

use crate::policy::invalid::Invalid;

/// Alert thresholds. A `None` threshold disables that alert.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AlertConfig {
    /// The window rates are judged over. Default 5 minutes.
    pub window: Duration,
    /// Calls the window must hold before a rate may fire. Default 20.
    pub min_calls: u32,
    /// Failed calls of a chain, in percent, above which it alerts. Default 5 %.
    pub failure_rate: Option<f64>,
    /// Answers of a chain served by a fallback hop, in percent, above which it alerts. Default 5 %.
    pub fallback_rate: Option<f64>,
    /// A model's breaker not closed for longer than this alerts. Default 60 s.
    pub breaker_open_for: Option<Duration>,
}

impl Default for AlertConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(300),
            min_calls: 20,
            failure_rate: Some(5.0),
            fallback_rate: Some(5.0),
            breaker_open_for: Some(Duration::from_secs(60)),
        }
    }
}

impl AlertConfig {
    /// Check the settings.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.window < Duration::from_secs(1) {
            return Err(Invalid::new(
                "window",
                format!(
                    "must be at least 1s, got {}",
                    humantime::format_duration(self.window)
                ),
            ));
        }
        if self.min_calls == 0 {
            return Err(Invalid::new("min_calls", "must be at least 1"));
        }
        for (field, rate) in [
            ("failure_rate", self.failure_rate),
            ("fallback_rate", self.fallback_rate),
        ] {
            if let Some(r) = rate {
                // Written so that NaN fails too.
                if !(r > 0.0 && r < 100.0) {
                    return Err(Invalid::new(
                        field,
                        format!(
                            "must be a percentage in (0, 100) or \"off\" (None: no alarm), got {r}"
                        ),
                    ));
                }
            }
        }
        if self.breaker_open_for.is_some_and(|d| d.is_zero()) {
            return Err(Invalid::new(
                "breaker_open_for",
                "must be longer than zero (or \"off\", None: no alarm)",
            ));
        }
        Ok(())
    }
}

/// A firing alarm clears only once its figure is below this share of the threshold, so a figure
/// hovering at the threshold cannot make it flap.
pub const CLEAR_RATIO: f64 = 0.8;

/// A change an alarm wants announced.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AlarmChange {
    /// The figure crossed the threshold.
    Fired {
        /// The figure.
        value: f64,
    },
    /// The figure recovered.
    Cleared {
        /// The figure.
        value: f64,
    },
}

/// The share of hits among calls over a sliding window, with a firing state.
#[derive(Clone, Debug)]
pub struct RateAlarm {
    window: Window,
    firing: bool,
}

impl RateAlarm {
    /// An alarm over the last `window`, anchored at `origin`.
    pub fn new(window: Duration, origin: Instant) -> Self {
        Self {
            window: Window::with_origin(WindowKind::Time(window), origin),
            firing: false,
        }
    }

    /// Count one call at `now`; `hit` when it is what the alarm watches.
    pub fn record(&mut self, hit: bool, now: Instant) {
        self.window.record(hit, false, now);
    }

    /// Whether it is firing.
    pub fn firing(&self) -> bool {
        self.firing
    }

    /// The hit rate now, in percent, and the calls it is over.
    pub fn rate(&mut self, now: Instant) -> (f64, u32) {
        let stats = self.window.stats(now);
        (stats.failure_rate(), stats.calls)
    }

    /// Judge the rate at `now` against `threshold` (percent): fires when it exceeds it with at
    /// least `min_calls` in the window; clears when it falls below `threshold × CLEAR_RATIO`
    /// (an empty window has recovered).
    pub fn judge(&mut self, threshold: f64, min_calls: u32, now: Instant) -> Option<AlarmChange> {
        let (value, calls) = self.rate(now);
        if !self.firing && calls >= min_calls.max(1) && value > threshold {
            self.firing = true;
            return Some(AlarmChange::Fired { value });
        }
        if self.firing && value < threshold * CLEAR_RATIO {
            self.firing = false;
            return Some(AlarmChange::Cleared { value });
        }
        None
    }
}

/// How long something has been down, with a firing state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DownAlarm {
    down_since: Option<Instant>,
    firing: bool,
}

impl DownAlarm {
    /// Whether it is firing.
    pub fn firing(&self) -> bool {
        self.firing
    }

    /// Since when it has been down, if it is.
    pub fn down_since(&self) -> Option<Instant> {
        self.down_since
    }

    /// Note that the subject is down (`true`) or up at `now`. Going down again while down keeps
    /// the first instant: a breaker flapping between open and half-open stays one outage.
    pub fn set(&mut self, down: bool, now: Instant) {
        match (down, self.down_since) {
            (true, None) => self.down_since = Some(now),
            (false, _) => self.down_since = None,
            (true, Some(_)) => {}
        }
    }

    /// Judge at `now` against `limit`: fires once down for longer than `limit`, clears once up.
    /// The value is the seconds down so far.
    pub fn judge(&mut self, limit: Duration, now: Instant) -> Option<AlarmChange> {
        match self.down_since {
            Some(since) => {
                let down = now.saturating_duration_since(since);
                if !self.firing && down >= limit {
                    self.firing = true;
                    return Some(AlarmChange::Fired {
                        value: down.as_secs_f64(),
                    });
                }
                None
            }
            None if self.firing => {
                self.firing = false;
                Some(AlarmChange::Cleared { value: 0.0 })
            }
            None => None,
        }
    }

    /// When [`DownAlarm::judge`] would next have something to say, if ever (without an event).
    #[must_use]
    pub fn poll_timeout(&self, limit: Duration) -> Option<Instant> {
        match self.down_since {
            Some(since) if !self.firing => since.checked_add(limit),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_rate_fires_once_and_clears_once() {
        let t0 = Instant::now();
        let mut a = RateAlarm::new(secs(60), t0);
        for _ in 0..19 {
            a.record(false, t0);
        }
        a.record(true, t0);
        // 1 in 20 = 5 %: not above 5 %.
        assert_eq!(a.judge(5.0, 20, t0), None);
        a.record(true, t0);
        let Some(AlarmChange::Fired { value }) = a.judge(5.0, 20, t0) else {
            panic!("should fire")
        };
        assert!((value - 200.0 / 21.0).abs() < 1e-9);
        // More bad calls: no second alert.
        a.record(true, t0);
        assert_eq!(a.judge(5.0, 20, t0), None);
        assert!(a.firing());
        // 3 in 60 = 5 %: recovered below the threshold but not below 4 %: still firing.
        for _ in 0..38 {
            a.record(false, t0);
        }
        assert_eq!(a.rate(t0), (5.0, 60));
        assert_eq!(a.judge(5.0, 20, t0), None);
        for _ in 0..20 {
            a.record(false, t0);
        }
        assert_eq!(
            a.judge(5.0, 20, t0),
            Some(AlarmChange::Cleared { value: 3.75 })
        );
        assert_eq!(a.judge(5.0, 20, t0), None);
    }

    #[test]
    fn a_rate_needs_enough_calls_and_an_empty_window_recovers() {
        let t0 = Instant::now();
        let mut a = RateAlarm::new(secs(10), t0);
        for _ in 0..5 {
            a.record(true, t0);
        }
        assert_eq!(a.judge(5.0, 6, t0), None, "5 calls are too few");
        a.record(true, t0);
        assert!(matches!(
            a.judge(5.0, 6, t0),
            Some(AlarmChange::Fired { .. })
        ));
        assert_eq!(
            a.judge(5.0, 6, t0 + secs(10)),
            Some(AlarmChange::Cleared { value: 0.0 })
        );
    }

    #[test]
    fn down_fires_after_the_limit_and_clears_when_up() {
        let t0 = Instant::now();
        let mut d = DownAlarm::default();
        assert_eq!(d.poll_timeout(secs(60)), None);
        d.set(true, t0);
        d.set(true, t0 + secs(30)); // flapping open -> half-open -> open: one outage
        assert_eq!(d.poll_timeout(secs(60)), Some(t0 + secs(60)));
        assert_eq!(d.judge(secs(60), t0 + secs(59)), None);
        assert_eq!(
            d.judge(secs(60), t0 + secs(60)),
            Some(AlarmChange::Fired { value: 60.0 })
        );
        assert_eq!(d.judge(secs(60), t0 + secs(90)), None);
        assert_eq!(d.poll_timeout(secs(60)), None);
        d.set(false, t0 + secs(100));
        assert_eq!(
            d.judge(secs(60), t0 + secs(100)),
            Some(AlarmChange::Cleared { value: 0.0 })
        );
        assert_eq!(d.judge(secs(60), t0 + secs(200)), None);
    }

    #[test]
    fn bad_settings_are_named() {
        let bad = AlertConfig {
            fallback_rate: Some(f64::NAN),
            ..AlertConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().field, "fallback_rate");
        assert!(AlertConfig::default().validate().is_ok());
    }
}
