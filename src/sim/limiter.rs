//! The simulator's own rate limiter, written from the API's documentation (`ANTHROPIC.md`, "Rate
//! limits") and sharing no code with the runtime's governor, so the chaos suite's "zero
//! upstream 429" checks compare two independent implementations.
//!
//! # The rules
//!
//! - One token bucket per limited dimension: requests, input tokens, output tokens (per minute).
//!   Capacity is the per-minute limit; it refills continuously at `limit / 60` per second, never
//!   above capacity. A new limiter starts full.
//! - A request is admitted only if every limited dimension holds its whole cost at `now`; then
//!   its cost is taken from each. A refused request takes nothing from any dimension (all or
//!   nothing), and learns the dimension that was short and the exact wait until all of them
//!   would hold its cost (if nothing else is taken meanwhile). A cost above a dimension's
//!   capacity can never be admitted: that dimension is reported with no wait.
//! - Output tokens: the API charges them as they are produced. The simulator knows at admission
//!   what it will generate, so admission takes that amount (as the real API reserves its
//!   estimate); [`Limiter::settle_output`] then corrects the charge to what was really produced
//!   (a stream cut short gives the difference back). Production past the charge is charged
//!   anyway, even into debt below zero, because tokens once produced cannot be refused: later
//!   requests wait until the debt is refilled.
//!
//! # Exactness
//!
//! Levels are integers in token-nanoseconds-per-minute (a token is `60e9` units, and refill adds
//! `limit` units per elapsed nanosecond), so refill, waits and remaining counts are exact: no
//! float rounding can admit a request a nanosecond early or refuse one that fits.

use std::time::{Duration, Instant};

use super::scenario::RateLimits;

/// Units of one token: refill adds `limit` units per nanosecond, `limit` tokens per minute.
const UNITS_PER_TOKEN: i128 = 60_000_000_000;

/// A limited quantity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dimension {
    Requests,
    InputTokens,
    OutputTokens,
}

impl Dimension {
    const ALL: [Dimension; 3] = [
        Dimension::Requests,
        Dimension::InputTokens,
        Dimension::OutputTokens,
    ];

    fn index(self) -> usize {
        match self {
            Dimension::Requests => 0,
            Dimension::InputTokens => 1,
            Dimension::OutputTokens => 2,
        }
    }

    /// How messages name it: `requests`, `input tokens`, `output tokens`.
    pub(crate) fn unit(self) -> &'static str {
        match self {
            Dimension::Requests => "requests",
            Dimension::InputTokens => "input tokens",
            Dimension::OutputTokens => "output tokens",
        }
    }
}

/// What one request costs in each dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cost {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

impl Cost {
    /// One request with these token counts.
    pub(crate) fn request(input_tokens: u64, output_tokens: u64) -> Self {
        Self {
            requests: 1,
            input_tokens,
            output_tokens,
        }
    }

    fn of(self, dimension: Dimension) -> u64 {
        match dimension {
            Dimension::Requests => self.requests,
            Dimension::InputTokens => self.input_tokens,
            Dimension::OutputTokens => self.output_tokens,
        }
    }
}

/// The answer to [`Limiter::admit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub(crate) enum Admission {
    /// Admitted; the cost was taken.
    Admitted,
    /// Refused; nothing was taken.
    Refused(Refusal),
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// The dimension that decided the wait: one whose cost exceeds its capacity if any, else
    /// the one that takes longest to refill.
    pub dimension: Dimension,
    /// That dimension's per-minute limit.
    pub limit: u64,
    /// What the request wanted of it.
    pub wanted: u64,
    /// How long until every dimension holds the request's cost; `None` when it never will
    /// (the cost is above a capacity).
    pub retry_after: Option<Duration>,
}

/// What is left in one limited dimension, for the rate-limit headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Remaining {
    pub dimension: Dimension,
    /// The per-minute limit (the capacity).
    pub limit: u64,
    /// Whole tokens (or requests) available now; 0 in debt.
    pub remaining: u64,
    /// Time until the bucket is full again (exact, rounded up to the nanosecond).
    pub until_full: Duration,
}

/// One dimension's bucket.
#[derive(Clone, Debug)]
struct Bucket {
    limit: u64,
    /// In units (see [`UNITS_PER_TOKEN`]) at `at`; negative in debt, never above capacity.
    level: i128,
    at: Instant,
}

impl Bucket {
    fn full(limit: u64, now: Instant) -> Self {
        let mut bucket = Self {
            limit,
            level: 0,
            at: now,
        };
        bucket.level = bucket.capacity();
        bucket
    }

    fn capacity(&self) -> i128 {
        tokens(self.limit)
    }

    /// The level at `now`, refilled since the last update. A `now` before the last update (not
    /// monotonic) sees the level of the last update.
    fn level_at(&self, now: Instant) -> i128 {
        let elapsed = now.saturating_duration_since(self.at).as_nanos();
        let elapsed = i128::try_from(elapsed).unwrap_or(i128::MAX);
        let refill = i128::from(self.limit).saturating_mul(elapsed);
        self.level.saturating_add(refill).min(self.capacity())
    }

    /// Move the bucket to `now` (never backwards).
    fn advance(&mut self, now: Instant) {
        if now > self.at {
            self.level = self.level_at(now);
            self.at = now;
        }
    }

    /// How long from `now` until the bucket holds `amount`: zero if it already does, `None` if
    /// it never will (above capacity).
    fn wait_for(&self, amount: u64, now: Instant) -> Option<Duration> {
        let wanted = tokens(amount);
        if wanted > self.capacity() {
            return None;
        }
        let deficit = wanted - self.level_at(now);
        if deficit <= 0 {
            return Some(Duration::ZERO);
        }
        Some(nanos_to_refill(deficit, self.limit))
    }
}

/// `n` tokens in units.
fn tokens(n: u64) -> i128 {
    i128::from(n).saturating_mul(UNITS_PER_TOKEN)
}

/// The nanoseconds (rounded up) that refill `deficit` units at `limit` units per nanosecond.
fn nanos_to_refill(deficit: i128, limit: u64) -> Duration {
    let limit = i128::from(limit.max(1));
    let nanos = (deficit + limit - 1) / limit;
    u64::try_from(nanos).map_or(Duration::MAX, Duration::from_nanos)
}

/// The buckets of one model (one organization's limits for one model class).
#[derive(Clone, Debug)]
pub(crate) struct Limiter {
    limits: RateLimits,
    buckets: [Option<Bucket>; 3],
}

impl Limiter {
    /// Full buckets for every limited dimension of `limits`, as of `now`.
    pub(crate) fn new(limits: RateLimits, now: Instant) -> Self {
        let make = |limit: Option<u64>| limit.map(|l| Bucket::full(l, now));
        Self {
            limits,
            buckets: [
                make(limits.requests_per_minute),
                make(limits.input_tokens_per_minute),
                make(limits.output_tokens_per_minute),
            ],
        }
    }

    /// The limits it enforces.
    pub(crate) fn limits(&self) -> RateLimits {
        self.limits
    }

    fn limited(&self) -> impl Iterator<Item = (Dimension, &Bucket)> {
        Dimension::ALL
            .into_iter()
            .filter_map(|d| self.buckets[d.index()].as_ref().map(|b| (d, b)))
    }

    /// Admit a request arriving at `now` and take its cost, or refuse it and take nothing.
    pub(crate) fn admit(&mut self, cost: Cost, now: Instant) -> Admission {
        // Check every dimension first, so a refusal takes nothing from any of them. The
        // longest wait decides (all dimensions must hold the cost at once); a dimension that
        // can never hold it outranks any wait.
        let mut worst: Option<(Dimension, &Bucket, Option<Duration>)> = None;
        for (dimension, bucket) in self.limited() {
            let wait = bucket.wait_for(cost.of(dimension), now);
            if wait == Some(Duration::ZERO) {
                continue;
            }
            let longer = match (&worst, wait) {
                (None, _) => true,
                (Some((_, _, None)), _) => false,
                (Some(_), None) => true,
                (Some((_, _, Some(w))), Some(new)) => new > *w,
            };
            if longer {
                worst = Some((dimension, bucket, wait));
            }
        }
        if let Some((dimension, bucket, retry_after)) = worst {
            return Admission::Refused(Refusal {
                dimension,
                limit: bucket.limit,
                wanted: cost.of(dimension),
                retry_after,
            });
        }
        for dimension in Dimension::ALL {
            if let Some(bucket) = &mut self.buckets[dimension.index()] {
                bucket.advance(now);
                bucket.level = bucket.level.saturating_sub(tokens(cost.of(dimension)));
            }
        }
        Admission::Admitted
    }

    /// Correct an admitted request's output charge from `charged` (taken at admission) to
    /// `produced` (what the answer really generated), at `now`: the difference goes back (never
    /// above capacity), or an overrun is taken, into debt if need be.
    pub(crate) fn settle_output(&mut self, charged: u64, produced: u64, now: Instant) {
        let Some(bucket) = &mut self.buckets[Dimension::OutputTokens.index()] else {
            return;
        };
        bucket.advance(now);
        let back = tokens(charged) - tokens(produced);
        bucket.level = bucket.level.saturating_add(back).min(bucket.capacity());
    }

    /// What is left at `now` in each limited dimension, in the order requests, input tokens,
    /// output tokens.
    pub(crate) fn remaining(&self, now: Instant) -> Vec<Remaining> {
        self.limited()
            .map(|(dimension, bucket)| {
                let level = bucket.level_at(now);
                let whole = level.max(0) / UNITS_PER_TOKEN;
                Remaining {
                    dimension,
                    limit: bucket.limit,
                    remaining: u64::try_from(whole).unwrap_or(u64::MAX),
                    until_full: nanos_to_refill(bucket.capacity() - level, bucket.limit),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rpm: Option<u64>, itpm: Option<u64>, otpm: Option<u64>) -> RateLimits {
        RateLimits {
            requests_per_minute: rpm,
            input_tokens_per_minute: itpm,
            output_tokens_per_minute: otpm,
        }
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    fn left(l: &Limiter, now: Instant) -> Vec<(Dimension, u64)> {
        l.remaining(now)
            .iter()
            .map(|r| (r.dimension, r.remaining))
            .collect()
    }

    fn refusal(a: Admission) -> Refusal {
        match a {
            Admission::Refused(r) => r,
            Admission::Admitted => panic!("admitted"),
        }
    }

    #[test]
    fn starts_full_and_refills_continuously() {
        let t0 = Instant::now();
        // 60 per minute: one per second.
        let mut l = Limiter::new(limits(Some(60), None, None), t0);
        assert_eq!(left(&l, t0), [(Dimension::Requests, 60)]);
        for _ in 0..60 {
            assert_eq!(l.admit(Cost::request(0, 0), t0), Admission::Admitted);
        }
        assert_eq!(left(&l, t0), [(Dimension::Requests, 0)]);
        // Continuous, not stepped: half a second is half a request, 1.5 s is one and a half.
        assert_eq!(left(&l, t0 + secs(0.5)), [(Dimension::Requests, 0)]);
        assert_eq!(
            left(&l, t0 + Duration::from_millis(999)),
            [(Dimension::Requests, 0)]
        );
        assert_eq!(left(&l, t0 + secs(1.0)), [(Dimension::Requests, 1)]);
        assert_eq!(left(&l, t0 + secs(1.5)), [(Dimension::Requests, 1)]);
        assert_eq!(left(&l, t0 + secs(30.0)), [(Dimension::Requests, 30)]);
        // A half request refilled before a take is not lost by the take.
        let t1 = t0 + secs(1.5);
        assert_eq!(l.admit(Cost::request(0, 0), t1), Admission::Admitted);
        assert_eq!(left(&l, t1 + secs(0.5)), [(Dimension::Requests, 1)]);
        assert_eq!(
            left(&l, t1 + Duration::from_millis(499)),
            [(Dimension::Requests, 0)]
        );
    }

    #[test]
    fn refill_stops_at_capacity() {
        let t0 = Instant::now();
        let mut l = Limiter::new(limits(None, Some(600), None), t0);
        assert_eq!(l.admit(Cost::request(600, 0), t0), Admission::Admitted);
        // An hour of refill still leaves one minute's worth, no more.
        let later = t0 + secs(3600.0);
        assert_eq!(left(&l, later), [(Dimension::InputTokens, 600)]);
        assert_eq!(l.admit(Cost::request(600, 0), later), Admission::Admitted);
        let r = refusal(l.admit(Cost::request(1, 0), later));
        assert_eq!(r.dimension, Dimension::InputTokens);
        // A full bucket reports no time to full; an emptied one a whole minute.
        let fresh = Limiter::new(limits(None, Some(600), None), t0);
        assert_eq!(fresh.remaining(t0)[0].until_full, Duration::ZERO);
        assert_eq!(l.remaining(later)[0].until_full, secs(60.0));
        // A clock that runs backwards sees the last level, never more.
        assert_eq!(left(&l, t0), [(Dimension::InputTokens, 0)]);
    }

    #[test]
    fn a_refused_request_takes_nothing_from_any_dimension() {
        let t0 = Instant::now();
        let mut l = Limiter::new(limits(Some(10), Some(1000), Some(100)), t0);
        assert_eq!(l.admit(Cost::request(100, 90), t0), Admission::Admitted);
        let before = left(&l, t0);
        assert_eq!(
            before,
            [
                (Dimension::Requests, 9),
                (Dimension::InputTokens, 900),
                (Dimension::OutputTokens, 10)
            ]
        );
        // Short on output tokens only: requests and input tokens are left as they were.
        let r = refusal(l.admit(Cost::request(100, 20), t0));
        assert_eq!(r.dimension, Dimension::OutputTokens);
        assert_eq!((r.limit, r.wanted), (100, 20));
        assert_eq!(left(&l, t0), before);
        // Unlimited dimensions are not consulted and not reported.
        let mut open = Limiter::new(limits(None, None, Some(5)), t0);
        assert_eq!(
            open.admit(Cost::request(u64::MAX / 2, 5), t0),
            Admission::Admitted
        );
        assert_eq!(left(&open, t0), [(Dimension::OutputTokens, 0)]);
    }

    #[test]
    fn retry_after_is_exact_and_the_longest_wait_decides() {
        let t0 = Instant::now();
        // Requests refill one per 6 s, input tokens 10 per second.
        let mut l = Limiter::new(limits(Some(10), Some(600), None), t0);
        assert_eq!(l.admit(Cost::request(600, 0), t0), Admission::Admitted);
        // 50 tokens take 5 s; requests still hold 9.
        let r = refusal(l.admit(Cost::request(50, 0), t0));
        assert_eq!(r.dimension, Dimension::InputTokens);
        assert_eq!(r.retry_after, Some(secs(5.0)));
        // One nanosecond early is still refused, on time is admitted.
        let early = t0 + secs(5.0) - Duration::from_nanos(1);
        assert_eq!(
            refusal(l.admit(Cost::request(50, 0), early)).retry_after,
            Some(Duration::from_nanos(1))
        );
        assert_eq!(
            l.admit(Cost::request(50, 0), t0 + secs(5.0)),
            Admission::Admitted
        );

        // Both short: 5/6 of a request left needs 1 s more, 5 tokens need 0.5 s: requests
        // decide, and their wait is the one reported.
        let t1 = t0 + secs(5.0);
        for _ in 0..8 {
            assert_eq!(l.admit(Cost::request(0, 0), t1), Admission::Admitted);
        }
        let r = refusal(l.admit(Cost::request(5, 0), t1));
        assert_eq!(r.dimension, Dimension::Requests);
        assert_eq!(r.retry_after, Some(secs(1.0)));
        assert_eq!((r.limit, r.wanted), (10, 1));
        // A rate that does not divide evenly rounds the wait up to the nanosecond.
        let mut odd = Limiter::new(limits(None, None, Some(7)), t0);
        assert_eq!(odd.admit(Cost::request(0, 7), t0), Admission::Admitted);
        let wait = refusal(odd.admit(Cost::request(0, 1), t0))
            .retry_after
            .unwrap();
        assert_eq!(wait, Duration::from_nanos(8_571_428_572));
        assert_eq!(
            odd.admit(Cost::request(0, 1), t0 + wait),
            Admission::Admitted
        );
    }

    #[test]
    fn a_cost_above_capacity_is_never_admitted_and_outranks_waits() {
        let t0 = Instant::now();
        let mut l = Limiter::new(limits(Some(1), None, Some(50)), t0);
        assert_eq!(l.admit(Cost::request(0, 1), t0), Admission::Admitted);
        // Requests would need a minute, but output can never hold 51.
        let r = refusal(l.admit(Cost::request(0, 51), t0));
        assert_eq!(r.dimension, Dimension::OutputTokens);
        assert_eq!(r.retry_after, None);
        assert_eq!((r.limit, r.wanted), (50, 51));
        // Exactly the capacity fits a full bucket.
        let mut full = Limiter::new(limits(None, None, Some(50)), t0);
        assert_eq!(full.admit(Cost::request(0, 50), t0), Admission::Admitted);
    }

    #[test]
    fn output_settlement_refunds_and_charges_into_debt() {
        let t0 = Instant::now();
        // 60 output tokens per minute: one per second.
        let mut l = Limiter::new(limits(None, None, Some(60)), t0);
        assert_eq!(l.admit(Cost::request(0, 40), t0), Admission::Admitted);
        // The stream broke after 10 tokens: 30 come back.
        l.settle_output(40, 10, t0);
        assert_eq!(left(&l, t0), [(Dimension::OutputTokens, 50)]);
        // A refund never lifts the bucket above capacity.
        l.settle_output(40, 0, t0);
        assert_eq!(left(&l, t0), [(Dimension::OutputTokens, 60)]);

        // Produced more than charged: the overrun is charged, into debt.
        assert_eq!(l.admit(Cost::request(0, 60), t0), Admission::Admitted);
        l.settle_output(60, 70, t0);
        assert_eq!(left(&l, t0), [(Dimension::OutputTokens, 0)]);
        assert_eq!(l.remaining(t0)[0].until_full, secs(70.0));
        // The debt is repaid before anything is admitted: one token needs 11 s, not 1 s.
        let r = refusal(l.admit(Cost::request(0, 1), t0));
        assert_eq!(r.retry_after, Some(secs(11.0)));
        assert_eq!(left(&l, t0 + secs(10.0)), [(Dimension::OutputTokens, 0)]);
        assert_eq!(
            l.admit(Cost::request(0, 1), t0 + secs(11.0)),
            Admission::Admitted
        );
        // Settling a limiter without an output limit does nothing.
        let mut none = Limiter::new(limits(Some(5), None, None), t0);
        none.settle_output(10, 100, t0);
        assert_eq!(left(&none, t0), [(Dimension::Requests, 5)]);
    }

    #[test]
    fn remaining_reports_whole_units_and_time_to_full() {
        let t0 = Instant::now();
        let mut l = Limiter::new(limits(Some(30), Some(6000), None), t0);
        assert_eq!(l.admit(Cost::request(123, 0), t0), Admission::Admitted);
        let r = l.remaining(t0);
        assert_eq!(r.len(), 2);
        assert_eq!(
            (r[0].dimension, r[0].limit, r[0].remaining),
            (Dimension::Requests, 30, 29)
        );
        // One request of 30 per minute refills in 2 s.
        assert_eq!(r[0].until_full, secs(2.0));
        assert_eq!(
            (r[1].dimension, r[1].limit, r[1].remaining),
            (Dimension::InputTokens, 6000, 5877)
        );
        // 123 tokens at 100 per second: 1.23 s.
        assert_eq!(r[1].until_full, Duration::from_millis(1230));
        assert_eq!(l.limits(), limits(Some(30), Some(6000), None));
    }
}
