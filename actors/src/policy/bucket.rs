//! Client-side rate limiting with the API's own algorithm: continuous-refill token buckets for
//! requests, input tokens and output tokens per minute, checked all at once.
//!
//! The API replenishes each limit continuously up to its capacity (not in fixed windows), so we model it
//! the same way and can say *when* a call will fit instead of only *whether* it fits now.
//!
//! A reservation that does not fit yet still takes its tokens, driving the level below zero (a
//! debt), and is told the instant at which the debt is repaid by refill. Later reservations see
//! that debt and are scheduled after it: waits are FIFO and nobody polls. Server truth
//! (`anthropic-ratelimit-*` headers) can only lower what we believe is left.
//!
//! Pure: time is an argument (`now: Instant`); nothing here reads a clock.

use std::time::{Duration, Instant};

use crate::wire::Cost;

/// Slack, in tokens, when comparing a level with a cost: refill is computed in `f64` and waits are
/// rounded to whole nanoseconds, so a caller arriving exactly at the promised instant must not miss
/// by a rounding error and be asked to wait one more nanosecond.
const EPSILON: f64 = 1e-6;

/// Configured limits per minute; `None` means unlimited in that dimension.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Limits {
    /// Requests per minute.
    pub requests_per_minute: Option<u64>,
    /// Input tokens per minute (cache reads excluded, as the API counts them).
    pub input_tokens_per_minute: Option<u64>,
    /// Output tokens per minute.
    pub output_tokens_per_minute: Option<u64>,
}

/// One of the three dimensions the API limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    /// Requests per minute.
    Requests,
    /// Input tokens per minute.
    InputTokens,
    /// Output tokens per minute.
    OutputTokens,
}

impl Dimension {
    /// All dimensions, in the order they are checked and reported.
    pub const ALL: [Dimension; 3] = [
        Dimension::Requests,
        Dimension::InputTokens,
        Dimension::OutputTokens,
    ];

    /// A short stable name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Dimension::Requests => "requests",
            Dimension::InputTokens => "input_tokens",
            Dimension::OutputTokens => "output_tokens",
        }
    }

    /// How much of this dimension `cost` uses.
    fn of(self, cost: Cost) -> u64 {
        match self {
            Dimension::Requests => cost.requests,
            Dimension::InputTokens => cost.input_tokens,
            Dimension::OutputTokens => cost.output_tokens,
        }
    }
}

/// One continuous-refill token bucket: `capacity` per minute, refilled at `capacity / 60` per
/// second, starting full.
///
/// The level may be negative: that is debt held by reservations scheduled for later.
#[derive(Clone, Debug, PartialEq)]
pub struct Bucket {
    capacity: u64,
    level: f64,
    /// Refill is counted from here; it may lie ahead of the clock (see `lag`).
    last: Instant,
    /// Transit allowance: when a full bucket starts to drain, refill is counted from `lag` later.
    lag: Duration,
}

impl Bucket {
    /// A full bucket of `capacity` tokens per minute.
    pub fn new(capacity: u64, now: Instant) -> Self {
        Self {
            capacity,
            level: capacity as f64,
            last: now,
            lag: Duration::ZERO,
        }
    }

    /// Tokens per minute.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Tokens available at `now` after refill (negative while in debt).
    pub fn available(&mut self, now: Instant) -> f64 {
        self.refill(now);
        self.level
    }

    /// Tokens per second.
    fn rate(&self) -> f64 {
        self.capacity as f64 / 60.0
    }

    /// Add what refilled since the last look, up to capacity. An earlier `now` changes nothing.
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        if elapsed > 0.0 {
            self.level = (self.level + self.rate() * elapsed).min(self.capacity as f64);
            self.last = now;
        }
    }

    /// Seconds until `amount` could be taken with the level staying >= 0; `None` if never (a
    /// zero capacity, or more than the capacity). Refill deferred by the transit allowance
    /// counts only from when it starts.
    fn wait_for(&self, amount: u64, now: Instant) -> Option<f64> {
        if self.capacity == 0 || amount > self.capacity {
            return None;
        }
        let deficit = amount as f64 - self.level;
        if deficit <= EPSILON {
            Some(0.0)
        } else {
            let deferred = self.last.saturating_duration_since(now).as_secs_f64();
            Some(deferred + deficit / self.rate())
        }
    }

    /// Take `amount` at `now` (already refilled to `now`). The server's bucket starts draining
    /// when our first call *arrives* there, up to a transit time after we granted it, so its
    /// refill runs behind ours by that much: a later call that travels faster than the first
    /// would find it short by a fraction of a token and get a 429. Counting our refill from
    /// `lag` after a full bucket starts to drain keeps us behind the server instead.
    fn take(&mut self, amount: f64, now: Instant) {
        if !self.lag.is_zero() && amount > 0.0 && self.level >= self.capacity as f64 - EPSILON {
            // Never stacked: drains from full that refunds undid defer from the latest one only.
            self.last = self.last.max(now + self.lag);
        }
        self.adjust(-amount);
    }

    /// Add `delta` tokens (negative to take), never above capacity.
    fn adjust(&mut self, delta: f64) {
        self.level = (self.level + delta).min(self.capacity as f64);
    }
}

/// The answer to [`Buckets::reserve`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Reservation {
    /// The tokens are taken; the call may start at `at` (`now` if they were there already).
    Granted {
        /// When the call may start.
        at: Instant,
    },
    /// Nothing was taken.
    Refused {
        /// When the same cost would be grantable with no wait, if ever (`None`: never, because
        /// the cost exceeds the limit or the limit is zero).
        earliest: Option<Instant>,
        /// The dimension that refused: the one that would need the longest wait.
        dimension: Dimension,
    },
}

/// What is left in one limited dimension, for status output.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Level {
    /// Which dimension.
    pub dimension: Dimension,
    /// Its limit per minute.
    pub capacity: u64,
    /// Tokens available now (negative while reservations hold debt).
    pub available: f64,
}

/// When a cost fits, as computed by [`Buckets::plan`].
enum Plan {
    /// Never, because of this dimension.
    Never(Dimension),
    /// After `wait`, at `at`; `slowest` is the dimension needing the longest wait (`None` when no
    /// dimension is limited).
    At {
        at: Instant,
        wait: Duration,
        slowest: Option<Dimension>,
    },
}

/// The three buckets of one rate-limited scope (an organization's model class, a key).
#[derive(Clone, Debug, PartialEq)]
pub struct Buckets {
    requests: Option<Bucket>,
    input_tokens: Option<Bucket>,
    output_tokens: Option<Bucket>,
    /// The latest `now` seen: time never runs backwards here, so an out-of-order `now` cannot
    /// make a promised instant come earlier than the refill that pays for it.
    now: Instant,
    /// Transit allowance given to every bucket, including ones adopted from the server.
    lag: Duration,
}

/// Just under one token: what the server's rounded-down `remaining` may hide.
const WHOLE_TOKEN_SLACK: f64 = 1.0 - 1e-3;

impl Buckets {
    /// Full buckets for `limits`; `None` dimensions are unlimited and never constrain.
    pub fn new(limits: Limits, now: Instant) -> Self {
        let bucket = |limit: Option<u64>| limit.map(|c| Bucket::new(c, now));
        Self {
            requests: bucket(limits.requests_per_minute),
            input_tokens: bucket(limits.input_tokens_per_minute),
            output_tokens: bucket(limits.output_tokens_per_minute),
            now,
            lag: Duration::ZERO,
        }
    }

    /// The same buckets with a transit allowance: whenever a full bucket starts to drain, its
    /// refill is counted from `lag` later. The server counts its own refill from when our first
    /// call reaches it; without the allowance a later call that travels faster than the first
    /// (a pooled connection after a fresh handshake, a quieter moment on the network) arrives
    /// while the server is still a fraction of a token short, and is refused with a 429. It
    /// costs at most `lag` of refill each time a bucket drains from full, nothing in steady state.
    pub fn with_transit_allowance(mut self, lag: Duration) -> Self {
        self.lag = lag;
        for (_, bucket) in self.limited() {
            bucket.lag = lag;
        }
        self
    }

    /// The same buckets, empty: refill starts from zero. A fleet instance that falls back to its
    /// own share starts so, since the budget it was spending from has not refilled yet.
    pub fn emptied(mut self) -> Self {
        for (_, bucket) in self.limited() {
            bucket.level = 0.0;
        }
        self
    }

    /// The limits in force, including any adopted from the server by [`Buckets::observe`].
    pub fn limits(&self) -> Limits {
        Limits {
            requests_per_minute: self.requests.as_ref().map(Bucket::capacity),
            input_tokens_per_minute: self.input_tokens.as_ref().map(Bucket::capacity),
            output_tokens_per_minute: self.output_tokens.as_ref().map(Bucket::capacity),
        }
    }

    /// Take `cost` at `now`.
    ///
    /// If every dimension has enough: `Granted { at: now }`. Otherwise the tokens are still taken
    /// (the level goes negative: a debt) and the caller may start at `at`, the instant when every
    /// dimension's level is back to >= 0 by refill. Later reservations queue behind that debt, so
    /// waits are FIFO and nobody has to ask again.
    ///
    /// If the wait would exceed `max_wait`, nothing is taken: `Refused { earliest: Some(at),
    /// dimension }` naming the slowest dimension. A cost larger than a dimension's capacity (or any
    /// cost against a zero limit) can never be granted: `Refused { earliest: None, dimension }`.
    pub fn reserve(&mut self, cost: Cost, max_wait: Duration, now: Instant) -> Reservation {
        match self.plan(cost, now) {
            Plan::Never(dimension) => Reservation::Refused {
                earliest: None,
                dimension,
            },
            Plan::At { at, wait, slowest } => {
                // `slowest` is None only when nothing is limited, and then the wait is zero.
                if let Some(dimension) = slowest.filter(|_| wait > max_wait) {
                    return Reservation::Refused {
                        earliest: Some(at),
                        dimension,
                    };
                }
                let now = self.now;
                for (dim, bucket) in self.limited() {
                    bucket.take(dim.of(cost) as f64, now);
                }
                Reservation::Granted { at }
            }
        }
    }

    /// Correct a reservation with what was really used: refund `reserved - actual` per dimension,
    /// or charge the difference when `actual` exceeds it (the level may go negative). A refund
    /// never lifts a level above capacity.
    pub fn settle(&mut self, reserved: Cost, actual: Cost, now: Instant) {
        self.advance(now);
        for (dim, bucket) in self.limited() {
            // In f64: u64 differences of arbitrary size can neither overflow nor underflow here.
            bucket.adjust(dim.of(reserved) as f64 - dim.of(actual) as f64);
        }
    }

    /// Server truth (`anthropic-ratelimit-*` headers): `remaining` are left for `dim`.
    ///
    /// We never believe we have more than the server says, but never raise a level from it
    /// either: the server has not yet seen our in-flight reservations. The server reports whole
    /// tokens, rounded down, so `remaining` means "at least that many and fewer than one more":
    /// the level is capped just below `remaining + 1`. Capping at `remaining` itself would throw
    /// away up to a token of refill on every response and lag the server's own pace.
    /// If `limit` is `Some` and differs from our capacity, it is adopted and the refill rate follows;
    /// an unlimited dimension that the server reports a limit for becomes limited.
    pub fn observe(&mut self, dim: Dimension, limit: Option<u64>, remaining: u64, now: Instant) {
        let now = self.advance(now);
        let lag = self.lag;
        let slot = self.slot(dim);
        match (slot.as_mut(), limit) {
            (Some(bucket), Some(limit)) if bucket.capacity != limit => {
                bucket.capacity = limit;
                bucket.level = bucket.level.min(limit as f64);
            }
            (None, Some(limit)) => {
                let mut bucket = Bucket::new(limit, now);
                bucket.lag = lag;
                *slot = Some(bucket);
            }
            _ => {}
        }
        if let Some(bucket) = slot.as_mut() {
            bucket.level = bucket.level.min(remaining as f64 + WHOLE_TOKEN_SLACK);
        }
    }

    /// The earliest instant at which `cost` could be granted with no wait (`None` if never).
    /// Changes nothing but the refill bookkeeping: `reserve(cost, _, that instant)` grants at once.
    pub fn earliest(&mut self, cost: Cost, now: Instant) -> Option<Instant> {
        match self.plan(cost, now) {
            Plan::Never(_) => None,
            Plan::At { at, .. } => Some(at),
        }
    }

    /// What is left now in `dim` (`None` when it is unlimited). Unlike [`Buckets::levels`], it
    /// allocates nothing: gauges read it on every reservation.
    pub fn available(&mut self, dim: Dimension, now: Instant) -> Option<f64> {
        self.advance(now);
        self.slot(dim).as_ref().map(|b| b.level)
    }

    /// What is left now in each limited dimension (unlimited ones are not listed).
    pub fn levels(&mut self, now: Instant) -> Vec<Level> {
        self.advance(now);
        self.limited()
            .map(|(dimension, bucket)| Level {
                dimension,
                capacity: bucket.capacity,
                available: bucket.level,
            })
            .collect()
    }

    /// Move the clock to `now` (never backwards) and refill every bucket; returns the clock.
    fn advance(&mut self, now: Instant) -> Instant {
        self.now = self.now.max(now);
        let now = self.now;
        for (_, bucket) in self.limited() {
            bucket.refill(now);
        }
        now
    }

    /// When `cost` fits, after refilling to `now`.
    fn plan(&mut self, cost: Cost, now: Instant) -> Plan {
        let now = self.advance(now);
        let mut slowest: Option<(f64, Dimension)> = None;
        for (dim, bucket) in self.limited() {
            let Some(secs) = bucket.wait_for(dim.of(cost), now) else {
                return Plan::Never(dim);
            };
            if slowest.is_none_or(|(worst, _)| secs > worst) {
                slowest = Some((secs, dim));
            }
        }
        let Some((secs, dim)) = slowest else {
            return Plan::At {
                at: now,
                wait: Duration::ZERO,
                slowest: None,
            };
        };
        // A wait too long to express as an Instant (a debt of astronomic size) counts as never.
        match secs_to_duration(secs).and_then(|wait| Some((now.checked_add(wait)?, wait))) {
            Some((at, wait)) => Plan::At {
                at,
                wait,
                slowest: Some(dim),
            },
            None => Plan::Never(dim),
        }
    }

    /// The bucket slot of one dimension.
    fn slot(&mut self, dim: Dimension) -> &mut Option<Bucket> {
        match dim {
            Dimension::Requests => &mut self.requests,
            Dimension::InputTokens => &mut self.input_tokens,
            Dimension::OutputTokens => &mut self.output_tokens,
        }
    }

    /// The limited dimensions with their buckets, in [`Dimension::ALL`] order.
    fn limited(&mut self) -> impl Iterator<Item = (Dimension, &mut Bucket)> {
        [
            (Dimension::Requests, self.requests.as_mut()),
            (Dimension::InputTokens, self.input_tokens.as_mut()),
            (Dimension::OutputTokens, self.output_tokens.as_mut()),
        ]
        .into_iter()
        .filter_map(|(dim, bucket)| Some((dim, bucket?)))
    }
}

/// Seconds to a `Duration`, rounded *up* to the nanosecond so that waiting that long always
/// refills enough; `None` for NaN, infinity or more than a `Duration` holds.
fn secs_to_duration(secs: f64) -> Option<Duration> {
    // 2^64 seconds: the first f64 a Duration's u64 seconds cannot hold.
    const LIMIT: f64 = 18_446_744_073_709_551_616.0;
    if !secs.is_finite() || !(0.0..LIMIT).contains(&secs) {
        return None;
    }
    let whole = secs.floor();
    let nanos = ((secs - whole) * 1e9).ceil();
    let base = Duration::from_secs(whole as u64);
    // `nanos` is in [0, 1e9]; 1e9 is a carry into the next second.
    base.checked_add(Duration::from_nanos(nanos as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::rng::SplitMix64;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn rpm(n: u64) -> Limits {
        Limits {
            requests_per_minute: Some(n),
            ..Limits::default()
        }
    }

    fn req() -> Cost {
        Cost::request(0, 0)
    }

    fn available(b: &mut Buckets, dim: Dimension, now: Instant) -> f64 {
        b.levels(now)
            .into_iter()
            .find(|l| l.dimension == dim)
            .map_or(f64::NAN, |l| l.available)
    }

    #[test]
    fn grants_until_empty_then_waits_the_exact_refill_time() {
        let t0 = Instant::now();
        let mut b = Buckets::new(rpm(60), t0);
        for _ in 0..60 {
            assert_eq!(
                b.reserve(req(), Duration::ZERO, t0),
                Reservation::Granted { at: t0 }
            );
        }
        // 60 per minute is one per second: the 61st waits exactly one second.
        assert_eq!(
            b.reserve(req(), secs(5), t0),
            Reservation::Granted { at: t0 + secs(1) }
        );
    }

    #[test]
    fn the_transit_allowance_defers_refill_once_per_drain_from_full() {
        let t0 = Instant::now();
        let lag = Duration::from_millis(250);
        let mut b = Buckets::new(rpm(60), t0).with_transit_allowance(lag);
        for _ in 0..60 {
            assert_eq!(
                b.reserve(req(), Duration::ZERO, t0),
                Reservation::Granted { at: t0 }
            );
        }
        // Refill starts 250 ms late, once: the 61st waits 1.25 s, the 62nd one more second.
        assert_eq!(
            b.reserve(req(), secs(5), t0),
            Reservation::Granted {
                at: t0 + secs(1) + lag
            }
        );
        assert_eq!(
            b.reserve(req(), secs(5), t0),
            Reservation::Granted {
                at: t0 + secs(2) + lag
            }
        );
        // A bucket that is not full when drawn from again is not deferred again.
        let t1 = t0 + secs(2) + lag;
        assert!(b
            .available(Dimension::Requests, t1)
            .is_some_and(|l| l.abs() < 1e-6));
        let mut c = Buckets::new(rpm(60), t0).with_transit_allowance(lag);
        let _ = c.reserve(req(), Duration::ZERO, t0);
        let _ = c.reserve(req(), Duration::ZERO, t0 + secs(1));
        // Drained from full at t0 (deferred to t0+250ms), 59 left; at t0+1s, 0.75 s refilled.
        let level = available(&mut c, Dimension::Requests, t0 + secs(1));
        assert!((level - 58.75).abs() < 1e-6, "{level}");
    }

    #[test]
    fn refunded_drains_from_full_do_not_stack_the_allowance() {
        let t0 = Instant::now();
        let lag = Duration::from_millis(250);
        let mut b = Buckets::new(rpm(60), t0).with_transit_allowance(lag);
        // A hundred calls that were refunded in full (never sent) leave the bucket full.
        for i in 0..100u32 {
            let at = t0 + Duration::from_millis(u64::from(i));
            let _ = b.reserve(req(), Duration::ZERO, at);
            b.settle(req(), Cost::default(), at);
        }
        // Now drain it for real: refill counts from 250 ms after the *last* drain, not 100 x 250 ms.
        let t1 = t0 + Duration::from_millis(99);
        for _ in 0..60 {
            let _ = b.reserve(req(), Duration::ZERO, t1);
        }
        assert_eq!(
            b.reserve(req(), secs(5), t1),
            Reservation::Granted {
                at: t1 + lag + secs(1)
            }
        );
    }

    #[test]
    fn with_the_allowance_a_server_that_started_late_never_refuses_what_we_grant() {
        // Our grants reach a server after a transit time that varies by call: the first call is
        // slow (a fresh connection), later ones fast. The server runs the same buckets with no
        // allowance, counting from when calls arrive. Every call we grant must fit there.
        let t0 = Instant::now();
        let first_transit = Duration::from_millis(40);
        let fast = Duration::from_millis(1);
        let run = |lag: Duration| {
            let mut ours = Buckets::new(rpm(60), t0).with_transit_allowance(lag);
            let mut server = Buckets::new(rpm(60), t0);
            let mut arrivals = Vec::new();
            for i in 0..150u32 {
                let offered = t0 + Duration::from_millis(6) * i;
                if let Reservation::Granted { at } = ours.reserve(req(), secs(60), offered) {
                    let transit = if i == 0 { first_transit } else { fast };
                    arrivals.push(at + transit);
                }
            }
            // The server sees them in the order they arrive.
            arrivals.sort();
            arrivals
                .into_iter()
                .filter(|&t| {
                    !matches!(
                        server.reserve(req(), Duration::ZERO, t),
                        Reservation::Granted { .. }
                    )
                })
                .count()
        };
        assert!(run(Duration::ZERO) > 0, "the race is real without it");
        assert_eq!(run(Duration::from_millis(250)), 0);
    }

    #[test]
    fn waits_are_fifo() {
        let t0 = Instant::now();
        let mut b = Buckets::new(rpm(60), t0);
        for _ in 0..60 {
            let _ = b.reserve(req(), Duration::ZERO, t0);
        }
        let ats: Vec<Reservation> = (0..3).map(|_| b.reserve(req(), secs(60), t0)).collect();
        assert_eq!(
            ats,
            vec![
                Reservation::Granted { at: t0 + secs(1) },
                Reservation::Granted { at: t0 + secs(2) },
                Reservation::Granted { at: t0 + secs(3) },
            ]
        );
        // Half a second later the queue has not moved: the next one is still behind the debt.
        assert_eq!(
            b.reserve(req(), secs(60), t0 + Duration::from_millis(500)),
            Reservation::Granted { at: t0 + secs(4) }
        );
    }

    #[test]
    fn a_refusal_takes_nothing() {
        let t0 = Instant::now();
        let mut b = Buckets::new(rpm(60), t0);
        for _ in 0..60 {
            let _ = b.reserve(req(), Duration::ZERO, t0);
        }
        assert_eq!(
            b.reserve(req(), Duration::from_millis(500), t0),
            Reservation::Refused {
                earliest: Some(t0 + secs(1)),
                dimension: Dimension::Requests,
            }
        );
        assert_eq!(
            b.reserve(req(), Duration::from_millis(999), t0),
            Reservation::Refused {
                earliest: Some(t0 + secs(1)),
                dimension: Dimension::Requests,
            }
        );
        // Had either refusal taken a token, this would be t0 + 2 s or 3 s.
        assert_eq!(
            b.reserve(req(), secs(1), t0),
            Reservation::Granted { at: t0 + secs(1) }
        );
    }

    #[test]
    fn the_slowest_of_three_dimensions_decides() {
        let t0 = Instant::now();
        // Refill per second: 1 request, 100 input tokens, 10 output tokens.
        let limits = Limits {
            requests_per_minute: Some(60),
            input_tokens_per_minute: Some(6000),
            output_tokens_per_minute: Some(600),
        };
        let mut b = Buckets::new(limits, t0);
        assert_eq!(
            b.reserve(Cost::request(6000, 600), Duration::ZERO, t0),
            Reservation::Granted { at: t0 }
        );
        // Input needs 1000 / 100 = 10 s, output 300 / 10 = 30 s, requests none.
        let cost = Cost::request(1000, 300);
        assert_eq!(
            b.reserve(cost, secs(1), t0),
            Reservation::Refused {
                earliest: Some(t0 + secs(30)),
                dimension: Dimension::OutputTokens,
            }
        );
        assert_eq!(
            b.reserve(cost, secs(30), t0),
            Reservation::Granted { at: t0 + secs(30) }
        );
        // Now input is in debt 1000 and output 300. A call wanting 2500 more input needs
        // 3500 / 100 = 35 s there, longer than the 30 s of output debt: input becomes the slowest.
        assert_eq!(
            b.reserve(Cost::request(2500, 0), secs(1), t0),
            Reservation::Refused {
                earliest: Some(t0 + secs(35)),
                dimension: Dimension::InputTokens,
            }
        );
        // A call with no output still queues behind the output debt.
        assert_eq!(
            b.reserve(Cost::request(0, 0), secs(60), t0),
            Reservation::Granted { at: t0 + secs(30) }
        );
    }

    #[test]
    fn a_cost_over_capacity_is_never_granted() {
        let t0 = Instant::now();
        let limits = Limits {
            input_tokens_per_minute: Some(1000),
            output_tokens_per_minute: Some(1000),
            ..Limits::default()
        };
        let mut b = Buckets::new(limits, t0);
        assert_eq!(
            b.reserve(Cost::request(1001, 10), Duration::MAX, t0),
            Reservation::Refused {
                earliest: None,
                dimension: Dimension::InputTokens,
            }
        );
        assert_eq!(
            b.reserve(Cost::request(10, u64::MAX), Duration::MAX, t0),
            Reservation::Refused {
                earliest: None,
                dimension: Dimension::OutputTokens,
            }
        );
        assert_eq!(b.earliest(Cost::request(1001, 0), t0), None);
        // Nothing was taken; exactly the capacity is fine.
        assert_eq!(
            b.reserve(Cost::request(1000, 1000), Duration::ZERO, t0),
            Reservation::Granted { at: t0 }
        );
    }

    #[test]
    fn settle_refunds_and_charges() {
        let t0 = Instant::now();
        let limits = Limits {
            output_tokens_per_minute: Some(10_000),
            ..Limits::default()
        };
        let mut b = Buckets::new(limits, t0);
        let reserved = Cost::request(0, 1000);
        assert_eq!(
            b.reserve(reserved, Duration::ZERO, t0),
            Reservation::Granted { at: t0 }
        );
        assert_eq!(available(&mut b, Dimension::OutputTokens, t0), 9000.0);
        b.settle(reserved, Cost::request(0, 100), t0);
        assert_eq!(available(&mut b, Dimension::OutputTokens, t0), 9900.0);
        // Used more than reserved: the difference is charged.
        b.settle(Cost::request(0, 100), Cost::request(0, 2000), t0);
        assert_eq!(available(&mut b, Dimension::OutputTokens, t0), 8000.0);
        // A charge beyond the level is a debt that delays the next reservation.
        b.settle(Cost::request(0, 0), Cost::request(0, 9000), t0);
        assert_eq!(available(&mut b, Dimension::OutputTokens, t0), -1000.0);
        // Output refills at 10000 / 60 per second: the 1000 debt takes 6 s.
        assert_eq!(b.earliest(Cost::request(0, 0), t0), Some(t0 + secs(6)));
        // Refunds never lift the level above capacity.
        b.settle(Cost::request(0, u64::MAX), Cost::request(0, 0), t0);
        assert_eq!(available(&mut b, Dimension::OutputTokens, t0), 10_000.0);
        // Huge charges neither overflow nor panic; the wait is merely unrepresentable.
        b.settle(Cost::request(0, 0), Cost::request(u64::MAX, u64::MAX), t0);
        assert!(available(&mut b, Dimension::OutputTokens, t0) < -1e18);
    }

    #[test]
    fn observe_lowers_the_level_and_adopts_a_new_limit() {
        let t0 = Instant::now();
        let mut b = Buckets::new(rpm(60), t0);
        // "10 remaining" is rounded down: at least 10, fewer than 11 whole requests.
        b.observe(Dimension::Requests, None, 10, t0);
        let level = available(&mut b, Dimension::Requests, t0);
        assert!(level > 10.9 && level < 11.0, "{level}");
        assert!(b.earliest(Cost::request(0, 0), t0) == Some(t0));
        assert_eq!(
            b.reserve(
                Cost {
                    requests: 11,
                    input_tokens: 0,
                    output_tokens: 0
                },
                Duration::ZERO,
                t0
            ),
            Reservation::Refused {
                earliest: b.earliest(
                    Cost {
                        requests: 11,
                        input_tokens: 0,
                        output_tokens: 0
                    },
                    t0
                ),
                dimension: Dimension::Requests
            },
            "never an 11th request the server did not promise"
        );
        // The server saying more is left never raises our belief.
        b.observe(Dimension::Requests, Some(60), 50, t0);
        assert!(available(&mut b, Dimension::Requests, t0) < 11.0);
        // A new limit is adopted and the refill rate follows (120 per minute = 2 per second).
        b.observe(Dimension::Requests, Some(120), 200, t0);
        assert_eq!(b.limits().requests_per_minute, Some(120));
        let level = available(&mut b, Dimension::Requests, t0 + secs(5));
        assert!(level > 20.9 && level < 21.0, "{level}");
        // A lower limit also caps the level.
        b.observe(Dimension::Requests, Some(6), 100, t0 + secs(5));
        assert_eq!(available(&mut b, Dimension::Requests, t0 + secs(5)), 6.0);
        // An unlimited dimension the server reports a limit for becomes limited.
        b.observe(Dimension::InputTokens, Some(1000), 400, t0 + secs(5));
        assert_eq!(b.limits().input_tokens_per_minute, Some(1000));
        let level = available(&mut b, Dimension::InputTokens, t0 + secs(5));
        assert!(level > 400.9 && level < 401.0, "{level}");
        // Without a limit there is nothing to build an unlimited dimension's bucket from.
        b.observe(Dimension::OutputTokens, None, 0, t0 + secs(5));
        assert_eq!(b.limits().output_tokens_per_minute, None);
    }

    #[test]
    fn refill_is_continuous_and_capped() {
        let t0 = Instant::now();
        let mut b = Buckets::new(rpm(60), t0);
        for _ in 0..60 {
            let _ = b.reserve(req(), Duration::ZERO, t0);
        }
        assert_eq!(available(&mut b, Dimension::Requests, t0), 0.0);
        assert_eq!(available(&mut b, Dimension::Requests, t0 + secs(30)), 30.0);
        assert_eq!(
            available(
                &mut b,
                Dimension::Requests,
                t0 + Duration::from_millis(45_500)
            ),
            45.5
        );
        assert_eq!(available(&mut b, Dimension::Requests, t0 + secs(600)), 60.0);
        assert_eq!(
            b.levels(t0 + secs(600)),
            vec![Level {
                dimension: Dimension::Requests,
                capacity: 60,
                available: 60.0,
            }]
        );
    }

    #[test]
    fn a_zero_limit_never_grants() {
        let t0 = Instant::now();
        let mut b = Buckets::new(rpm(0), t0);
        let refused = Reservation::Refused {
            earliest: None,
            dimension: Dimension::Requests,
        };
        assert_eq!(b.reserve(req(), Duration::MAX, t0), refused);
        assert_eq!(b.reserve(req(), Duration::MAX, t0 + secs(3600)), refused);
        assert_eq!(b.earliest(req(), t0 + secs(3600)), None);
        assert_eq!(b.earliest(Cost::default(), t0), None);
    }

    #[test]
    fn unlimited_never_constrains() {
        let t0 = Instant::now();
        let mut b = Buckets::new(Limits::default(), t0);
        let huge = Cost {
            requests: u64::MAX,
            input_tokens: u64::MAX,
            output_tokens: u64::MAX,
        };
        for _ in 0..3 {
            assert_eq!(
                b.reserve(huge, Duration::ZERO, t0),
                Reservation::Granted { at: t0 }
            );
        }
        assert!(b.levels(t0).is_empty());
        assert_eq!(b.limits(), Limits::default());
        b.settle(huge, Cost::default(), t0);
        b.observe(Dimension::Requests, None, 0, t0);
        assert_eq!(b.earliest(huge, t0), Some(t0));
    }

    #[test]
    fn earliest_matches_reserve() {
        let t0 = Instant::now();
        let limits = Limits {
            requests_per_minute: Some(7),
            input_tokens_per_minute: Some(1234),
            output_tokens_per_minute: Some(333),
        };
        let mut rng = SplitMix64::new(3);
        let mut b = Buckets::new(limits, t0);
        let mut now = t0;
        let (mut never, mut waited) = (0, 0);
        for _ in 0..200 {
            now += Duration::from_millis(rng.next_u64() % 3000);
            let cost = Cost::request(rng.next_u64() % 1300, rng.next_u64() % 400);
            let before = b.clone();
            let e = b.earliest(cost, now);
            // Asking changes nothing a reservation could notice.
            let mut probe = before.clone();
            let got = probe.reserve(cost, Duration::MAX, now);
            match e {
                None => {
                    never += 1;
                    assert!(matches!(got, Reservation::Refused { earliest: None, .. }));
                }
                Some(at) => {
                    assert!(at >= now);
                    assert_eq!(got, Reservation::Granted { at });
                    // Arriving exactly at that instant, it fits with no wait at all.
                    let mut late = before.clone();
                    assert_eq!(
                        late.reserve(cost, Duration::ZERO, at),
                        Reservation::Granted { at }
                    );
                    if at > now {
                        waited += 1;
                        // One nanosecond less patience and nothing is taken.
                        let mut impatient = before.clone();
                        let refused =
                            impatient.reserve(cost, at - now - Duration::from_nanos(1), now);
                        assert!(
                            matches!(refused, Reservation::Refused { earliest: Some(x), .. } if x == at),
                            "{refused:?}"
                        );
                        assert_eq!(impatient.levels(now), before.clone().levels(now));
                    }
                }
            }
            // Drive the real state forward like a caller would.
            let _ = b.reserve(cost, secs(20), now);
        }
        // The walk must have exercised both the never and the wait paths.
        assert!(never > 0 && waited > 0, "never {never}, waited {waited}");
    }

    #[test]
    fn time_never_runs_backwards() {
        let t0 = Instant::now();
        let mut b = Buckets::new(rpm(60), t0);
        for _ in 0..60 {
            let _ = b.reserve(req(), Duration::ZERO, t0 + secs(10));
        }
        // An older `now` is read as the latest seen: the promise stays one refill away from it.
        assert_eq!(
            b.reserve(req(), secs(5), t0),
            Reservation::Granted { at: t0 + secs(11) }
        );
    }

    #[test]
    fn secs_to_duration_rounds_up_and_guards() {
        assert_eq!(secs_to_duration(1.0), Some(secs(1)));
        assert_eq!(secs_to_duration(0.0), Some(Duration::ZERO));
        assert_eq!(secs_to_duration(1e-10), Some(Duration::from_nanos(1)));
        assert_eq!(secs_to_duration(2.5), Some(Duration::from_millis(2500)));
        assert_eq!(secs_to_duration(f64::NAN), None);
        assert_eq!(secs_to_duration(f64::INFINITY), None);
        assert_eq!(secs_to_duration(-1.0), None);
        assert_eq!(secs_to_duration(1e30), None);
    }
}
