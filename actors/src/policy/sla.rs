//! SLA windows: availability, error rate, latency percentiles and failure streaks of one subject
//! (a model or a chain) over a sliding time window, judged against a target.
//!
//! The window is a ring of time buckets (e.g. 12 buckets of 5 minutes for a 60-minute window).
//! Each bucket holds its counters and an hdrhistogram of latencies, so recording is O(1) and a
//! report merges at most `buckets` histograms. A bucket leaves the window whole: the window is
//! exact to one bucket width, the usual trade of a bucketed SLO window.
//!
//! Pure: time is an argument, never read from a clock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::classify::Class;

use crate::policy::invalid::Invalid;

/// How one outcome counts toward a subject's SLA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlaOutcome {
    /// Served: counts as available; its latency enters the percentiles.
    Success,
    /// Not served: counts against availability.
    Failure,
    /// Neither: not the subject's fault (a malformed request, a rate limit for a model). Counted
    /// apart, never in availability, error rate or streaks.
    Excluded,
}

/// The window's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlaConfig {
    /// How far back the window looks. Default 60 minutes.
    pub window: Duration,
    /// Buckets the window is cut into (its resolution). Default 12 (5 minutes each).
    pub buckets: u32,
}

impl Default for SlaConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(3600),
            buckets: 12,
        }
    }
}

impl SlaConfig {
    /// Check the settings.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.window.is_zero() {
            return Err(Invalid::new("window", "must be longer than zero"));
        }
        if self.buckets == 0 {
            return Err(Invalid::new("buckets", "must be at least 1"));
        }
        if self.window < Duration::from_millis(u64::from(self.buckets)) {
            return Err(Invalid::new(
                "window",
                format!(
                    "({}) must hold at least 1ms per bucket ({} buckets)",
                    humantime::format_duration(self.window),
                    self.buckets
                ),
            ));
        }
        Ok(())
    }

    fn width(&self) -> Duration {
        self.window / self.buckets.max(1)
    }
}

/// What a subject promises. A subject with fewer than `min_calls` counted outcomes in the window
/// is not judged (one failure out of two calls says little).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct SlaTarget {
    /// Lowest acceptable availability, in percent (e.g. 99.5).
    pub availability: f64,
    /// Highest acceptable 99th-percentile latency of served outcomes.
    pub p99: Duration,
    /// Longest acceptable run of consecutive failures in the window, if judged.
    pub max_consecutive_failures: Option<u64>,
    /// Outcomes needed before the target is judged at all.
    pub min_calls: u64,
}

impl Default for SlaTarget {
    fn default() -> Self {
        Self {
            availability: 99.5,
            p99: Duration::from_secs(30),
            max_consecutive_failures: None,
            min_calls: 20,
        }
    }
}

impl SlaTarget {
    /// Check the settings.
    pub fn validate(&self) -> Result<(), Invalid> {
        // Written so that NaN fails too.
        if !(self.availability >= 0.0 && self.availability <= 100.0) {
            return Err(Invalid::new(
                "availability",
                format!(
                    "must be a percentage in [0, 100], got {}",
                    self.availability
                ),
            ));
        }
        if self.p99.is_zero() {
            return Err(Invalid::new("p99", "must be longer than zero"));
        }
        Ok(())
    }

    /// What `stats` falls short of, empty when it meets the target (or has too few outcomes to
    /// be judged).
    pub fn violations(&self, stats: &SlaStats) -> Vec<SlaViolation> {
        let mut out = Vec::new();
        if stats.calls < self.min_calls.max(1) {
            return out;
        }
        if stats.availability < self.availability {
            out.push(SlaViolation::Availability {
                actual: stats.availability,
                target: self.availability,
            });
        }
        if let Some(p99) = stats.p99.filter(|p| *p > self.p99) {
            out.push(SlaViolation::P99 {
                actual: p99,
                target: self.p99,
            });
        }
        if let Some(max) = self.max_consecutive_failures {
            if stats.max_consecutive_failures > max {
                out.push(SlaViolation::ConsecutiveFailures {
                    actual: stats.max_consecutive_failures,
                    target: max,
                });
            }
        }
        out
    }
}

/// One way a subject misses its target.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum SlaViolation {
    /// Availability below the target (percent).
    Availability {
        /// Measured.
        actual: f64,
        /// Promised.
        target: f64,
    },
    /// p99 latency above the target.
    P99 {
        /// Measured.
        actual: Duration,
        /// Promised.
        target: Duration,
    },
    /// A longer run of consecutive failures than allowed.
    ConsecutiveFailures {
        /// Measured.
        actual: u64,
        /// Allowed.
        target: u64,
    },
}

/// A subject's figures over its window.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct SlaStats {
    /// Counted outcomes (successes and failures).
    pub calls: u64,
    /// Of those, failures.
    pub failures: u64,
    /// Outcomes that did not count (see [`SlaOutcome::Excluded`]).
    pub excluded: u64,
    /// Successes over counted outcomes, in percent; 100 when nothing was counted.
    pub availability: f64,
    /// Failures over counted outcomes, in percent; 0 when nothing was counted.
    pub error_rate: f64,
    /// Median latency of successes (hdrhistogram, 2 significant digits).
    pub p50: Option<Duration>,
    /// 95th percentile latency of successes.
    pub p95: Option<Duration>,
    /// 99th percentile latency of successes.
    pub p99: Option<Duration>,
    /// The longest run of consecutive failures in the window.
    pub max_consecutive_failures: u64,
    /// The run of failures the window ends on (0 after a success).
    pub consecutive_failures: u64,
    /// Outcomes per class, for subjects recorded with one (models), most frequent first.
    pub by_class: Vec<(Class, u64)>,
}

/// Failure streaks of an ordered run of outcomes, mergeable in order: a monoid, so the window's
/// streaks come out exact from per-bucket summaries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Streaks {
    /// Failures before the first success.
    leading: u64,
    /// Failures after the last success.
    trailing: u64,
    /// The longest run anywhere.
    longest: u64,
    /// No success at all (then `leading == trailing == longest` is the whole count).
    all_failed: bool,
}

impl Default for Streaks {
    fn default() -> Self {
        Self {
            leading: 0,
            trailing: 0,
            longest: 0,
            all_failed: true,
        }
    }
}

impl Streaks {
    fn push(&mut self, failed: bool) {
        if failed {
            if self.all_failed {
                self.leading += 1;
            }
            self.trailing += 1;
            self.longest = self.longest.max(self.trailing);
        } else {
            self.all_failed = false;
            self.trailing = 0;
        }
    }

    /// `self` followed by `next`.
    fn then(self, next: Streaks) -> Streaks {
        Streaks {
            leading: if self.all_failed {
                self.leading + next.leading
            } else {
                self.leading
            },
            trailing: if next.all_failed {
                self.trailing + next.trailing
            } else {
                next.trailing
            },
            longest: self
                .longest
                .max(next.longest)
                .max(self.trailing + next.leading),
            all_failed: self.all_failed && next.all_failed,
        }
    }
}

const CLASSES: usize = Class::ALL.len();

/// Latencies are kept in microseconds with 2 significant digits (at most 1 % off): enough for
/// an SLA, and a bucket's histogram stays a few KiB (it grows only to the largest value seen).
const SIGFIG: u8 = 2;

fn histogram() -> Histogram<u64> {
    // Not an input path: `new` fails only for a precision above 5 digits, and SIGFIG is a
    // constant 2.
    #[allow(clippy::expect_used)]
    Histogram::new(SIGFIG).expect("2 significant digits is a valid hdrhistogram precision")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

#[derive(Clone, Debug)]
struct Span {
    /// Span `n` covers `[origin + n × width, origin + (n+1) × width)`.
    index: u64,
    calls: u64,
    failures: u64,
    excluded: u64,
    streaks: Streaks,
    by_class: [u64; CLASSES],
    latency: Histogram<u64>,
}

impl Span {
    fn new(index: u64) -> Self {
        Self {
            index,
            calls: 0,
            failures: 0,
            excluded: 0,
            streaks: Streaks::default(),
            by_class: [0; CLASSES],
            latency: histogram(),
        }
    }
}

/// A sliding SLA window of one subject.
#[derive(Clone, Debug)]
pub struct SlaWindow {
    config: SlaConfig,
    origin: Instant,
    /// Oldest first, indexes strictly increasing; only buckets that saw an outcome exist.
    buckets: VecDeque<Span>,
    /// The latest bucket index seen: time never runs backwards here.
    latest: u64,
}

impl SlaWindow {
    /// An empty window whose buckets are anchored at `origin`.
    pub fn new(config: SlaConfig, origin: Instant) -> Self {
        Self {
            config,
            origin,
            buckets: VecDeque::new(),
            latest: 0,
        }
    }

    fn index(&self, at: Instant) -> u64 {
        let width = self.config.width().as_nanos().max(1);
        let since = at.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(since / width).unwrap_or(u64::MAX)
    }

    fn span(&self) -> u64 {
        u64::from(self.config.buckets.max(1))
    }

    /// Drop the buckets that fell out of the window as of bucket `latest`.
    fn expire(&mut self, latest: u64) {
        self.latest = self.latest.max(latest);
        let span = self.span();
        while let Some(front) = self.buckets.front() {
            if front.index + span > self.latest {
                break;
            }
            self.buckets.pop_front();
        }
    }

    /// Record one outcome that ended at `at`, of class `class` (if the subject has classes),
    /// after `latency`. An outcome older than the window is dropped; a late one that is still
    /// inside it lands in its own bucket.
    pub fn record(
        &mut self,
        outcome: SlaOutcome,
        class: Option<Class>,
        latency: Duration,
        at: Instant,
    ) {
        let index = self.index(at);
        self.expire(index);
        if index + self.span() <= self.latest {
            return;
        }
        let pos = match self.buckets.iter().rposition(|b| b.index <= index) {
            Some(p) if self.buckets[p].index == index => p,
            Some(p) => {
                self.buckets.insert(p + 1, Span::new(index));
                p + 1
            }
            None => {
                self.buckets.push_front(Span::new(index));
                0
            }
        };
        let bucket = &mut self.buckets[pos];
        if let Some(c) = class {
            bucket.by_class[c.index()] += 1;
        }
        match outcome {
            SlaOutcome::Excluded => bucket.excluded += 1,
            SlaOutcome::Success => {
                bucket.calls += 1;
                bucket.streaks.push(false);
                // Saturating record: a latency beyond the histogram's reach counts as its max.
                let _ = bucket.latency.record(micros(latency));
            }
            SlaOutcome::Failure => {
                bucket.calls += 1;
                bucket.failures += 1;
                bucket.streaks.push(true);
            }
        }
    }

    /// The figures of the window as of `now`.
    pub fn report(&mut self, now: Instant) -> SlaStats {
        let index = self.index(now);
        self.expire(index);
        let mut stats = SlaStats::default();
        let mut streaks = Streaks::default();
        let mut latency = histogram();
        let mut by_class = [0u64; CLASSES];
        for b in &self.buckets {
            stats.calls += b.calls;
            stats.failures += b.failures;
            stats.excluded += b.excluded;
            streaks = streaks.then(b.streaks);
            // Only fails if the merged histogram cannot grow: then the percentiles are a lower
            // bound, never a panic.
            let _ = latency.add(&b.latency);
            for (total, n) in by_class.iter_mut().zip(b.by_class) {
                *total += n;
            }
        }
        if stats.calls > 0 {
            stats.error_rate = stats.failures as f64 * 100.0 / stats.calls as f64;
            stats.availability = 100.0 - stats.error_rate;
        } else {
            stats.availability = 100.0;
        }
        if !latency.is_empty() {
            let q = |q: f64| Some(Duration::from_micros(latency.value_at_quantile(q)));
            stats.p50 = q(0.50);
            stats.p95 = q(0.95);
            stats.p99 = q(0.99);
        }
        stats.max_consecutive_failures = streaks.longest;
        stats.consecutive_failures = streaks.trailing;
        let mut classes: Vec<(Class, u64)> = Class::ALL
            .iter()
            .zip(by_class)
            .filter(|(_, n)| *n > 0)
            .map(|(c, n)| (*c, n))
            .collect();
        classes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.index().cmp(&b.0.index())));
        stats.by_class = classes;
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn window() -> (SlaWindow, Instant) {
        let t0 = Instant::now();
        (SlaWindow::new(SlaConfig::default(), t0), t0)
    }

    fn close(actual: Option<Duration>, expected: Duration) {
        let a = actual.expect("a percentile").as_secs_f64();
        let e = expected.as_secs_f64();
        assert!((a - e).abs() <= e * 0.01, "{a} is not within 1% of {e}");
    }

    #[test]
    fn availability_and_error_rate_from_counts() {
        let (mut w, t0) = window();
        for i in 0..100 {
            let outcome = if i % 15 == 3 {
                SlaOutcome::Failure
            } else {
                SlaOutcome::Success
            };
            w.record(outcome, None, MS, t0);
        }
        // i % 15 == 3 for i < 100: 3, 18, 33, 48, 63, 78, 93.
        let s = w.report(t0);
        assert_eq!((s.calls, s.failures), (100, 7));
        assert!((s.availability - 93.0).abs() < 1e-9, "{}", s.availability);
        assert!((s.error_rate - 7.0).abs() < 1e-9);
        assert_eq!(s.max_consecutive_failures, 1);
    }

    #[test]
    fn empty_window_is_fully_available_with_no_percentiles() {
        let (mut w, t0) = window();
        let s = w.report(t0);
        assert_eq!(s.availability, 100.0);
        assert_eq!(s.error_rate, 0.0);
        assert_eq!(s.p99, None);
    }

    #[test]
    fn percentiles_of_known_latencies() {
        let (mut w, t0) = window();
        for ms in 1..=100 {
            w.record(SlaOutcome::Success, None, ms * MS, t0);
        }
        let s = w.report(t0);
        close(s.p50, 50 * MS);
        close(s.p95, 95 * MS);
        close(s.p99, 99 * MS);
    }

    #[test]
    fn failures_carry_no_latency_and_excluded_count_apart() {
        let (mut w, t0) = window();
        w.record(SlaOutcome::Success, Some(Class::Success), 10 * MS, t0);
        w.record(SlaOutcome::Failure, Some(Class::Timeout), 60_000 * MS, t0);
        w.record(SlaOutcome::Excluded, Some(Class::RateLimited), MS, t0);
        w.record(SlaOutcome::Excluded, Some(Class::RateLimited), MS, t0);
        let s = w.report(t0);
        assert_eq!((s.calls, s.failures, s.excluded), (2, 1, 2));
        close(s.p99, 10 * MS);
        assert_eq!(
            s.by_class,
            vec![
                (Class::RateLimited, 2),
                (Class::Success, 1),
                (Class::Timeout, 1)
            ]
        );
    }

    #[test]
    fn streaks_are_exact_across_buckets() {
        let (mut w, t0) = window();
        let five_min = Duration::from_secs(300);
        let f = SlaOutcome::Failure;
        let ok = SlaOutcome::Success;
        // Span 0: ok f f ; bucket 1: f f f (all failed) ; bucket 2: f ok f.
        for o in [ok, f, f] {
            w.record(o, None, MS, t0);
        }
        for _ in 0..3 {
            w.record(f, None, MS, t0 + five_min);
        }
        for o in [f, ok, f] {
            w.record(o, None, MS, t0 + 2 * five_min);
        }
        let s = w.report(t0 + 2 * five_min);
        assert_eq!(s.max_consecutive_failures, 6, "2 + 3 + 1 across buckets");
        assert_eq!(s.consecutive_failures, 1);
        // The streak monoid agrees with a plain scan.
        let mut plain = Streaks::default();
        for o in [ok, f, f, f, f, f, f, ok, f] {
            plain.push(o == f);
        }
        assert_eq!(plain.longest, 6);
    }

    #[test]
    fn buckets_leave_the_window_whole() {
        let t0 = Instant::now();
        let cfg = SlaConfig {
            window: Duration::from_secs(60),
            buckets: 6,
        };
        let mut w = SlaWindow::new(cfg, t0);
        w.record(SlaOutcome::Failure, None, MS, t0);
        w.record(SlaOutcome::Success, None, MS, t0 + Duration::from_secs(15));
        assert_eq!(w.report(t0 + Duration::from_secs(59)).calls, 2);
        // Span 0 ([0 s, 10 s)) leaves at 60 s; bucket 1 ([10 s, 20 s)) at 70 s.
        let s = w.report(t0 + Duration::from_secs(60));
        assert_eq!((s.calls, s.failures), (1, 0));
        assert_eq!(w.report(t0 + Duration::from_secs(70)).calls, 0);
        // A late outcome still inside the window lands in its own bucket; an older one is dropped.
        w.record(SlaOutcome::Failure, None, MS, t0 + Duration::from_secs(65));
        w.record(SlaOutcome::Failure, None, MS, t0 + Duration::from_secs(75));
        w.record(SlaOutcome::Failure, None, MS, t0 + Duration::from_secs(5));
        assert_eq!(w.report(t0 + Duration::from_secs(75)).failures, 2);
    }

    #[test]
    fn targets_name_each_violation_and_need_enough_calls() {
        let stats = SlaStats {
            calls: 100,
            failures: 7,
            availability: 93.0,
            error_rate: 7.0,
            p99: Some(2 * Duration::from_secs(1)),
            max_consecutive_failures: 4,
            ..SlaStats::default()
        };
        let target = SlaTarget {
            availability: 99.5,
            p99: Duration::from_secs(1),
            max_consecutive_failures: Some(3),
            min_calls: 10,
        };
        assert_eq!(
            target.violations(&stats),
            vec![
                SlaViolation::Availability {
                    actual: 93.0,
                    target: 99.5
                },
                SlaViolation::P99 {
                    actual: Duration::from_secs(2),
                    target: Duration::from_secs(1)
                },
                SlaViolation::ConsecutiveFailures {
                    actual: 4,
                    target: 3
                },
            ]
        );
        let few = SlaStats {
            calls: 9,
            ..stats.clone()
        };
        assert!(target.violations(&few).is_empty());
        let good = SlaStats {
            calls: 100,
            availability: 99.9,
            p99: Some(Duration::from_millis(900)),
            max_consecutive_failures: 1,
            ..SlaStats::default()
        };
        assert!(target.violations(&good).is_empty());
    }

    #[test]
    fn bad_settings_are_named() {
        let bad = SlaConfig {
            buckets: 0,
            ..SlaConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().field, "buckets");
        let bad = SlaTarget {
            availability: f64::NAN,
            ..SlaTarget::default()
        };
        assert_eq!(bad.validate().unwrap_err().field, "availability");
    }
}
