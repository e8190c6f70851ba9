//! Sliding windows over call outcomes: the last N calls, or the last N seconds.
//!
//! These windows are what the breaker judges a model's health on. Semantics follow resilience4j's `COUNT_BASED` and `TIME_BASED`
//! sliding windows. Pure: time is an argument, never read from a clock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How far back a [`Window`] looks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum WindowKind {
    /// The last `n` recorded outcomes (a ring buffer). `Count(0)` behaves as `Count(1)`.
    Count(u32),
    /// The outcomes of the last `d`, in per-second buckets: `d` is rounded up to whole seconds,
    /// and anything under one second behaves as one second.
    Time(Duration),
}

/// Totals over a window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WindowStats {
    /// Outcomes counted.
    pub calls: u32,
    /// Of those, failures.
    pub failures: u32,
    /// Of those, calls slower than the slow-call threshold (failed or not).
    pub slow: u32,
}

impl WindowStats {
    /// Failures as a percentage of calls, 0 to 100; 0 when there are no calls.
    pub fn failure_rate(self) -> f64 {
        percent(self.failures, self.calls)
    }

    /// Slow calls as a percentage of calls, 0 to 100; 0 when there are no calls.
    pub fn slow_rate(self) -> f64 {
        percent(self.slow, self.calls)
    }

    fn one(failed: bool, slow: bool) -> Self {
        Self {
            calls: 1,
            failures: u32::from(failed),
            slow: u32::from(slow),
        }
    }

    // Saturating both ways: four billion calls in one window is absurd, but must not panic.
    fn add(&mut self, other: Self) {
        self.calls = self.calls.saturating_add(other.calls);
        self.failures = self.failures.saturating_add(other.failures);
        self.slow = self.slow.saturating_add(other.slow);
    }

    fn sub(&mut self, other: Self) {
        self.calls = self.calls.saturating_sub(other.calls);
        self.failures = self.failures.saturating_sub(other.failures);
        self.slow = self.slow.saturating_sub(other.slow);
    }
}

fn percent(part: u32, whole: u32) -> f64 {
    if whole == 0 {
        0.0
    } else {
        f64::from(part) * 100.0 / f64::from(whole)
    }
}

/// A sliding window of call outcomes with running totals: recording and reading are O(1)
/// (amortized, for time windows).
#[derive(Clone, Debug)]
pub struct Window {
    slots: Slots,
    /// Running totals of everything still in `slots`, so `stats` never walks the window.
    totals: WindowStats,
}

#[derive(Clone, Debug)]
enum Slots {
    Count {
        size: usize,
        ring: VecDeque<WindowStats>,
    },
    Time(TimeSlots),
}

/// Per-second buckets, kept sparse: only seconds that saw a call hold a bucket, so a long span
/// costs nothing up front and idle seconds cost nothing at all.
#[derive(Clone, Debug)]
struct TimeSlots {
    span_secs: u64,
    /// Slot `n` covers `[origin + n s, origin + n+1 s)`.
    origin: Option<Instant>,
    /// The latest second seen: time never runs backwards, even if a caller's `now` does.
    latest: u64,
    /// Oldest first, seconds strictly increasing.
    buckets: VecDeque<Slot>,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    second: u64,
    stats: WindowStats,
}

impl TimeSlots {
    /// Move the window to `now`, drop the buckets that fell out of it, and return `now`'s second.
    fn advance(&mut self, now: Instant, totals: &mut WindowStats) -> u64 {
        let origin = *self.origin.get_or_insert(now);
        let second = now
            .saturating_duration_since(origin)
            .as_secs()
            .max(self.latest);
        self.latest = second;
        while let Some(oldest) = self.buckets.front() {
            if second - oldest.second < self.span_secs {
                break;
            }
            totals.sub(oldest.stats);
            self.buckets.pop_front();
        }
        second
    }
}

impl Window {
    /// An empty window. A time window's buckets are anchored at the first `now` it is given.
    pub fn new(kind: WindowKind) -> Self {
        let slots = match kind {
            WindowKind::Count(n) => Slots::Count {
                size: usize::try_from(n.max(1)).unwrap_or(usize::MAX),
                ring: VecDeque::new(),
            },
            WindowKind::Time(d) => {
                let whole = d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0));
                Slots::Time(TimeSlots {
                    span_secs: whole.max(1),
                    origin: None,
                    latest: 0,
                    buckets: VecDeque::new(),
                })
            }
        };
        Self {
            slots,
            totals: WindowStats::default(),
        }
    }

    /// An empty window whose time buckets are anchored at `origin` (for example the creation of
    /// the breaker that owns it). A count window ignores `origin`.
    pub fn with_origin(kind: WindowKind, origin: Instant) -> Self {
        let mut window = Self::new(kind);
        if let Slots::Time(t) = &mut window.slots {
            t.origin = Some(origin);
        }
        window
    }

    /// Record one outcome observed at `now`.
    pub fn record(&mut self, failed: bool, slow: bool, now: Instant) {
        let one = WindowStats::one(failed, slow);
        match &mut self.slots {
            Slots::Count { size, ring } => {
                if ring.len() >= *size {
                    if let Some(oldest) = ring.pop_front() {
                        self.totals.sub(oldest);
                    }
                }
                ring.push_back(one);
            }
            Slots::Time(t) => {
                let second = t.advance(now, &mut self.totals);
                match t.buckets.back_mut() {
                    Some(bucket) if bucket.second == second => bucket.stats.add(one),
                    _ => t.buckets.push_back(Slot { second, stats: one }),
                }
            }
        }
        self.totals.add(one);
    }

    /// The totals as of `now`; a time window first drops the seconds older than its span.
    pub fn stats(&mut self, now: Instant) -> WindowStats {
        if let Slots::Time(t) = &mut self.slots {
            t.advance(now, &mut self.totals);
        }
        self.totals
    }

    /// Forget every outcome (the time anchor stays).
    pub fn clear(&mut self) {
        match &mut self.slots {
            Slots::Count { ring, .. } => ring.clear(),
            Slots::Time(t) => t.buckets.clear(),
        }
        self.totals = WindowStats::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn stats(calls: u32, failures: u32, slow: u32) -> WindowStats {
        WindowStats {
            calls,
            failures,
            slow,
        }
    }

    #[test]
    fn rates_are_percent_and_zero_when_empty() {
        assert_eq!(WindowStats::default().failure_rate(), 0.0);
        assert_eq!(WindowStats::default().slow_rate(), 0.0);
        let s = stats(4, 1, 3);
        assert_eq!(s.failure_rate(), 25.0);
        assert_eq!(s.slow_rate(), 75.0);
        assert_eq!(stats(4, 2, 4).failure_rate(), 50.0);
        assert_eq!(stats(4, 2, 4).slow_rate(), 100.0);
    }

    #[test]
    fn count_window_forgets_the_oldest() {
        let t0 = Instant::now();
        let mut w = Window::new(WindowKind::Count(3));
        w.record(true, false, t0);
        w.record(true, true, t0);
        w.record(false, false, t0);
        assert_eq!(w.stats(t0), stats(3, 2, 1));
        w.record(false, false, t0);
        assert_eq!(w.stats(t0), stats(3, 1, 1), "first failure pushed out");
        w.record(false, false, t0);
        assert_eq!(
            w.stats(t0),
            stats(3, 0, 0),
            "second (slow) failure pushed out"
        );
        // A count window does not age with time.
        assert_eq!(w.stats(t0 + secs(3600)), stats(3, 0, 0));
    }

    #[test]
    fn time_window_drops_what_is_older_than_its_span() {
        let t0 = Instant::now();
        let mut w = Window::with_origin(WindowKind::Time(secs(10)), t0);
        w.record(true, false, t0);
        w.record(true, true, t0 + Duration::from_millis(900));
        w.record(false, false, t0 + secs(5));
        assert_eq!(w.stats(t0 + secs(9)), stats(3, 2, 1));
        // Second 0 is out once second 10 begins (per-second buckets anchored at t0).
        assert_eq!(w.stats(t0 + secs(10)), stats(1, 0, 0));
        assert_eq!(w.stats(t0 + secs(14)), stats(1, 0, 0));
        assert_eq!(w.stats(t0 + secs(15)), stats(0, 0, 0));
        w.record(true, false, t0 + secs(100));
        assert_eq!(w.stats(t0 + secs(100)), stats(1, 1, 0));
    }

    #[test]
    fn time_window_anchors_at_first_use_without_an_origin() {
        let t0 = Instant::now();
        let mut w = Window::new(WindowKind::Time(secs(2)));
        let start = t0 + Duration::from_millis(700);
        w.record(true, false, start);
        // 1.9 s after the first record: still within second 1 of the window.
        assert_eq!(w.stats(start + Duration::from_millis(1900)).calls, 1);
        assert_eq!(w.stats(start + secs(2)).calls, 0);
    }

    #[test]
    fn an_earlier_now_counts_in_the_latest_second() {
        let t0 = Instant::now();
        let mut w = Window::with_origin(WindowKind::Time(secs(3)), t0);
        w.record(false, false, t0 + secs(5));
        w.record(true, false, t0 + secs(1));
        assert_eq!(w.stats(t0 + secs(7)), stats(2, 1, 0));
        assert_eq!(w.stats(t0 + secs(8)), stats(0, 0, 0));
    }

    #[test]
    fn degenerate_sizes_behave_as_one() {
        let t0 = Instant::now();
        let mut c = Window::new(WindowKind::Count(0));
        c.record(true, false, t0);
        c.record(false, false, t0);
        assert_eq!(c.stats(t0), stats(1, 0, 0));

        let mut t = Window::with_origin(WindowKind::Time(Duration::ZERO), t0);
        t.record(true, false, t0);
        assert_eq!(t.stats(t0 + Duration::from_millis(999)).calls, 1);
        assert_eq!(t.stats(t0 + secs(1)).calls, 0);

        // 1.5 s rounds up to 2 s.
        let mut t = Window::with_origin(WindowKind::Time(Duration::from_millis(1500)), t0);
        t.record(true, false, t0);
        assert_eq!(t.stats(t0 + secs(1)).calls, 1);
        assert_eq!(t.stats(t0 + secs(2)).calls, 0);

        // An absurd span neither overflows nor allocates.
        let mut t = Window::with_origin(WindowKind::Time(Duration::MAX), t0);
        t.record(true, false, t0);
        assert_eq!(t.stats(t0 + secs(1_000_000)).calls, 1);
    }

    #[test]
    fn clear_forgets_everything() {
        let t0 = Instant::now();
        for kind in [WindowKind::Count(5), WindowKind::Time(secs(5))] {
            let mut w = Window::new(kind);
            w.record(true, true, t0);
            w.clear();
            assert_eq!(w.stats(t0), WindowStats::default(), "{kind:?}");
            w.record(false, false, t0 + secs(1));
            assert_eq!(w.stats(t0 + secs(1)), stats(1, 0, 0), "{kind:?}");
        }
    }
}
