//! Properties of the pure policies, checked over random inputs and random event orders
//! (proptest, bounded so the suite stays fast): what each policy promises must hold for any
//! sequence of calls, not only for the hand-set ones of the unit tests. Test-only, like
//! `chain/tests.rs` (so it may read the clock).
//!
//! - a token bucket never grants beyond its capacity plus its refill over any window;
//! - a breaker never admits while open, and a fresh half-open state admits exactly
//!   `half_open_calls` trials;
//! - a backoff delay never exceeds its cap (a server hint aside) nor leaves an attempt less than
//!   `min_attempt` before the deadline;
//! - a chain walk driven by random answers never starts an attempt that cannot finish by the
//!   deadline, never sends more than `max_attempts`, and always finishes by its deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::backoff::{Backoff, Jitter, Wait};
use super::breaker::{Acquire, Admission, Breaker, BreakerConfig, Permit, StateKind, Trip};
use super::bucket::{Buckets, Limits, Reservation};
use super::chain::{
    AttemptReport, CallFacts, ChainWalk, Estimate, Event, Hedge, HopFacts, RetryPolicy, Step,
};
use super::classify::{Class, Scope, Verdict};
use super::lanes::{Decision, RejectReason, Ticket};
use super::window::WindowKind;
use crate::wire::Cost;

const MS: Duration = Duration::from_millis(1);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        // PROPTEST_CASES=N runs a longer fuzz.
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// bucket

/// One reservation: after `gap_ms`, reserve `cost` with at most `max_wait_ms` of wait; then
/// settle it with `extra` more than reserved (an answer that cost more than estimated).
#[derive(Clone, Debug)]
struct Ask {
    gap_ms: u64,
    cost: u64,
    max_wait_ms: u64,
    extra: u64,
}

fn ask() -> impl Strategy<Value = Ask> {
    (
        0u64..3_000,
        0u64..40,
        0u64..20_000,
        prop_oneof![3 => Just(0u64), 1 => 0u64..10],
    )
        .prop_map(|(gap_ms, cost, max_wait_ms, extra)| Ask {
            gap_ms,
            cost,
            max_wait_ms,
            extra,
        })
}

proptest! {
    #![proptest_config(config())]

    /// Over any window `[a, b]` of grant instants, what was granted with a start in it is at most
    /// the capacity plus the refill over `b - a`: the bucket never lets a burst or a queue of
    /// waiters through faster than the upstream's own bucket would. Settlements that charge more
    /// than reserved only make it stricter.
    #[test]
    fn a_bucket_never_grants_beyond_capacity_over_any_window(
        capacity in 1u64..200,
        lag_ms in prop_oneof![Just(0u64), 0u64..500],
        asks in prop::collection::vec(ask(), 1..60),
    ) {
        let t0 = Instant::now();
        let limits = Limits {
            requests_per_minute: Some(capacity),
            input_tokens_per_minute: None,
            output_tokens_per_minute: None,
        };
        let mut buckets = Buckets::new(limits, t0).with_transit_allowance(ms(lag_ms));
        let mut now = t0;
        let mut granted: Vec<(Instant, u64)> = Vec::new();
        for a in &asks {
            now += ms(a.gap_ms);
            let cost = Cost { requests: a.cost, input_tokens: 0, output_tokens: 0 };
            match buckets.reserve(cost, ms(a.max_wait_ms), now) {
                Reservation::Granted { at } => {
                    prop_assert!(at >= now, "a grant in the past");
                    prop_assert!(at - now <= ms(a.max_wait_ms) + MS, "waited past max_wait");
                    granted.push((at, a.cost));
                    let actual = Cost { requests: a.cost + a.extra, ..cost };
                    buckets.settle(cost, actual, now);
                }
                Reservation::Refused { earliest, .. } => {
                    if a.cost > capacity {
                        prop_assert_eq!(earliest, None, "a cost over capacity can never fit");
                    }
                }
            }
            let level = buckets.available(super::bucket::Dimension::Requests, now);
            prop_assert!(level.is_some_and(|l| l <= capacity as f64 + 1e-6), "{level:?}");
        }
        let rate = capacity as f64 / 60.0;
        granted.sort_by_key(|g| g.0);
        for i in 0..granted.len() {
            let mut sum = 0u64;
            for j in i..granted.len() {
                sum += granted[j].1;
                let window = (granted[j].0 - granted[i].0).as_secs_f64();
                let bound = capacity as f64 + rate * window + 1e-3;
                prop_assert!(
                    sum as f64 <= bound,
                    "granted {sum} within {window:.3}s, bound {bound:.3} (capacity {capacity})"
                );
            }
        }
    }

    /// The server's `remaining` caps what we believe is left (never raises it), whatever the
    /// order and values of the headers.
    #[test]
    fn a_bucket_never_believes_more_than_the_server_says(
        capacity in 1u64..1_000,
        observations in prop::collection::vec((0u64..2_000, prop::option::of(0u64..2_000), 0u64..5_000), 1..30),
    ) {
        let t0 = Instant::now();
        let limits = Limits { requests_per_minute: Some(capacity), ..Limits::default() };
        let mut buckets = Buckets::new(limits, t0);
        let mut now = t0;
        for (gap_ms, limit, remaining) in observations {
            now += ms(gap_ms);
            let before = buckets.available(super::bucket::Dimension::Requests, now).unwrap_or(f64::MAX);
            buckets.observe(super::bucket::Dimension::Requests, limit, remaining, now);
            let after = buckets.available(super::bucket::Dimension::Requests, now).unwrap_or(f64::MAX);
            prop_assert!(after <= before + 1e-6, "observe raised the level: {before} -> {after}");
            prop_assert!(after < remaining as f64 + 1.0, "{after} above remaining {remaining}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// breaker

fn class() -> impl Strategy<Value = Class> {
    prop::sample::select(Class::ALL.to_vec())
}

fn breaker_config() -> impl Strategy<Value = BreakerConfig> {
    (
        1u32..6,
        1u32..5,
        1u64..5_000,
        prop::option::of(1u64..5_000),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(n, half_open, open_ms, max_wait_ms, consecutive, rl)| {
            let trip = if consecutive {
                Trip::ConsecutiveFailures(n)
            } else {
                Trip::FailureRate
            };
            BreakerConfig {
                window: WindowKind::Count(8),
                min_calls: n.min(8),
                half_open_calls: half_open,
                open_for: ms(open_ms),
                max_wait_in_half_open: max_wait_ms.map(ms),
                trip,
                rate_limit_is_failure: rl,
                ..BreakerConfig::default()
            }
        })
}

/// What a driver may do to a breaker.
#[derive(Clone, Debug)]
enum BreakerOp {
    Wait(u64),
    Acquire,
    /// Record the permit at this index (modulo the outstanding ones).
    Record(usize, Class, u64),
    Release(usize),
}

fn breaker_op() -> impl Strategy<Value = BreakerOp> {
    prop_oneof![
        2 => (0u64..3_000).prop_map(BreakerOp::Wait),
        4 => Just(BreakerOp::Acquire),
        4 => (any::<usize>(), class(), 0u64..100).prop_map(|(i, c, l)| BreakerOp::Record(i, c, l)),
        1 => any::<usize>().prop_map(BreakerOp::Release),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Under any sequence of acquisitions, answers, releases and waits: no permit while the
    /// breaker is open (before its `until`), and in one half-open state never more trials in
    /// flight or decided than `half_open_calls`.
    #[test]
    fn a_breaker_never_admits_while_open_nor_beyond_its_trials(
        cfg in breaker_config(),
        ops in prop::collection::vec(breaker_op(), 1..200),
    ) {
        prop_assert!(cfg.validate().is_ok(), "{:?}", cfg.validate());
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg, t0);
        let mut now = t0;
        let mut outstanding: Vec<(Permit, u64)> = Vec::new();
        // Trials handed out in the current half-open epoch, less released and ignored ones.
        let mut trials: u32 = 0;
        let mut trial_epoch = u64::MAX;
        for op in ops {
            match op {
                BreakerOp::Wait(wait) => now += ms(wait),
                BreakerOp::Acquire => {
                    let open_until = b.open_until().filter(|&u| now < u);
                    let answer = b.try_acquire(now);
                    if let Some(until) = open_until {
                        prop_assert_eq!(answer, Acquire::Rejected { until: Some(until) }, "admitted while open");
                    }
                    if let Acquire::Permitted(p) = answer {
                        prop_assert_ne!(b.state(), StateKind::Open);
                        if b.state() == StateKind::HalfOpen {
                            if b.epoch() != trial_epoch {
                                trial_epoch = b.epoch();
                                trials = 0;
                            }
                            trials += 1;
                            prop_assert!(trials <= cfg.half_open_calls, "{} trials of {}", trials, cfg.half_open_calls);
                        }
                        outstanding.push((p, b.epoch()));
                    }
                }
                BreakerOp::Record(i, class, latency_ms) if !outstanding.is_empty() => {
                    let (p, epoch) = outstanding.remove(i % outstanding.len());
                    let ignored = b.health(class) == super::breaker::Health::Ignored;
                    b.record(p, class, ms(latency_ms), now);
                    if ignored && epoch == trial_epoch && b.epoch() == epoch {
                        trials = trials.saturating_sub(1);
                    }
                }
                BreakerOp::Release(i) if !outstanding.is_empty() => {
                    let (p, epoch) = outstanding.remove(i % outstanding.len());
                    b.release(p, now);
                    if epoch == trial_epoch && b.epoch() == epoch {
                        trials = trials.saturating_sub(1);
                    }
                }
                BreakerOp::Record(..) | BreakerOp::Release(_) => {}
            }
            if b.state() == StateKind::Open {
                prop_assert!(b.open_until().is_some());
            }
            while b.poll_transition().is_some() {}
        }
    }

    /// Opened by failures and left open until it turns half-open: exactly `half_open_calls`
    /// of any number of callers get a trial; the rest are told to wait (`until: None`).
    #[test]
    fn a_half_open_breaker_admits_exactly_its_trials(
        cfg in breaker_config(),
        callers in 0u32..12,
    ) {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg, t0);
        let mut now = t0;
        for _ in 0..20 {
            if b.state() == StateKind::Open {
                break;
            }
            match b.try_acquire(now) {
                Acquire::Permitted(p) => b.record(p, Class::ServerError, MS, now),
                Acquire::Rejected { .. } => break,
            }
            now += MS;
        }
        prop_assert_eq!(b.state(), StateKind::Open, "20 failures open any of these configs");
        let until = b.open_until().expect("open");
        let early = b.try_acquire(until - Duration::from_nanos(1));
        prop_assert!(matches!(early, Acquire::Rejected { until: Some(_) }), "{:?}", early);
        now = until;
        let extra = callers;
        let mut permitted = 0;
        for _ in 0..cfg.half_open_calls + extra {
            match b.try_acquire(now) {
                Acquire::Permitted(_) => permitted += 1,
                Acquire::Rejected { until } => prop_assert_eq!(until, None),
            }
        }
        prop_assert_eq!(b.state(), StateKind::HalfOpen);
        prop_assert_eq!(permitted, cfg.half_open_calls);
    }
}

// ---------------------------------------------------------------------------------------------
// backoff

fn backoff() -> impl Strategy<Value = Backoff> {
    (
        1u64..5_000,
        0u64..60_000,
        1u32..10,
        prop::sample::select(vec![Jitter::None, Jitter::Full, Jitter::Sdk]),
    )
        .prop_map(|(base, extra, max_attempts, jitter)| Backoff {
            base: ms(base),
            cap: ms(base + extra),
            max_attempts,
            jitter,
        })
}

proptest! {
    #![proptest_config(config())]

    /// Any number of failures, any random value (NaN and out-of-range included): without a
    /// hint the delay never exceeds the cap; a retry always leaves `min_attempt` before the
    /// deadline; past `max_attempts` there is no retry at all.
    #[test]
    fn a_backoff_never_passes_its_cap_nor_the_deadline(
        b in backoff(),
        failures in any::<u32>(),
        hint_ms in prop::option::of(0u64..100_000_000),
        remaining_ms in prop::option::of(0u64..100_000),
        min_attempt_ms in 0u64..10_000,
        r in prop_oneof![0.0f64..1.0, Just(f64::NAN), Just(-1.0), Just(7.0), Just(f64::INFINITY)],
    ) {
        prop_assert!(b.validate().is_ok());
        let hint = hint_ms.map(ms);
        let delay = b.delay(failures, None, r);
        prop_assert!(delay <= b.cap, "{delay:?} over the cap {:?}", b.cap);
        if let Some(h) = hint.filter(|h| !h.is_zero()) {
            prop_assert_eq!(b.delay(failures, hint, r), h, "a server hint is used as is");
        }
        let remaining = remaining_ms.map(ms);
        let min_attempt = ms(min_attempt_ms);
        match b.next(failures, hint, remaining, min_attempt, r) {
            Wait::Retry(d) => {
                prop_assert!(failures < b.max_attempts);
                if hint.is_none_or(|h| h.is_zero()) {
                    prop_assert!(d <= b.cap);
                }
                if let Some(rem) = remaining {
                    prop_assert!(d + min_attempt <= rem, "{d:?} + {min_attempt:?} > {rem:?}");
                }
            }
            Wait::Exhausted => prop_assert!(failures >= b.max_attempts),
            Wait::BeyondDeadline { wanted } => {
                let rem = remaining.expect("only a deadline makes a retry too late");
                prop_assert!(wanted.saturating_add(min_attempt) > rem);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// chain walk

/// One random answer the driver may give to what the walk asked, or to an attempt in flight.
#[derive(Clone, Debug)]
struct Choice {
    /// Delay before the answer, in ms (an attempt's is capped by its timeout).
    delay_ms: u64,
    /// Which kind of answer (interpreted per ask).
    pick: u8,
    /// A hint or `earliest` in ms.
    hint_ms: Option<u64>,
    /// Which in-flight attempt ends next, when several fly.
    which: usize,
}

fn choice() -> impl Strategy<Value = Choice> {
    (
        prop_oneof![3 => 0u64..5, 1 => 0u64..3_000],
        any::<u8>(),
        prop::option::of(0u64..20_000),
        any::<usize>(),
    )
        .prop_map(|(delay_ms, pick, hint_ms, which)| Choice {
            delay_ms,
            pick,
            hint_ms,
            which,
        })
}

fn walk_policy() -> impl Strategy<Value = RetryPolicy> {
    (
        backoff(),
        100u64..20_000,
        10u64..5_000,
        0u64..2_000,
        1u32..8,
        prop_oneof![Just(None), (1u64..1_000).prop_map(Some)],
        0u32..3,
        any::<bool>(),
    )
        .prop_map(
            |(backoff, deadline, attempt, min_attempt, max_attempts, hedge, max_hedges, count)| {
                RetryPolicy {
                    backoff,
                    deadline: ms(deadline),
                    attempt_timeout: ms(attempt),
                    first_token_timeout: ms(attempt),
                    min_attempt: ms(min_attempt % deadline),
                    max_attempts,
                    hedge: hedge.map_or(Hedge::Off, |h| Hedge::After(ms(h))),
                    max_hedges,
                    estimate: if count {
                        Estimate::CountTokens
                    } else {
                        Estimate::Heuristic
                    },
                    ..RetryPolicy::default()
                }
            },
        )
}

fn verdict(pick: u8, hint: Option<Duration>) -> (Verdict, Option<u16>) {
    let retry = |class| Verdict::Retryable { class, hint };
    match pick % 10 {
        0 | 1 => (Verdict::Success, Some(200)),
        2 => (retry(Class::Overloaded), Some(529)),
        3 => (retry(Class::RateLimited), Some(429)),
        4 => (retry(Class::Timeout), None),
        5 => (retry(Class::Network), None),
        6 => (
            Verdict::Permanent {
                class: Class::InvalidRequest,
                scope: Scope::Request,
            },
            Some(400),
        ),
        7 => (
            Verdict::Permanent {
                class: Class::Authentication,
                scope: Scope::Key,
            },
            Some(401),
        ),
        8 => (
            Verdict::Permanent {
                class: Class::NotFound,
                scope: Scope::Model,
            },
            Some(404),
        ),
        _ => (retry(Class::ServerError), Some(500)),
    }
}

/// What the walk is waiting for from the driver.
#[derive(Clone, Copy, Debug)]
enum Pending {
    Pin,
    Admission(usize),
    Count(usize),
    Budget {
        hop: usize,
        cost: Cost,
        max_wait: Duration,
        asked_at: Instant,
    },
    RetryBudget(usize),
}

proptest! {
    #![proptest_config(config())]

    /// A walk driven by random answers (breakers open or not, budget now, later or never,
    /// attempts that succeed, fail, time out or are refused, at random times; timers fired when
    /// due): every attempt it starts has a timeout that ends by the deadline, and had at least
    /// `min_attempt` left (or the hop's own shorter timeout) when the walk chose its hop; it
    /// never sends more than `max_attempts`; it always finishes, by its deadline.
    #[test]
    fn a_chain_walk_never_starts_a_doomed_attempt_nor_too_many(
        policy in walk_policy(),
        hops in 1usize..4,
        stream in any::<bool>(),
        conversation in any::<bool>(),
        hop_timeouts in prop::collection::vec(prop::option::of(10u64..5_000), 3),
        hedge_afters in prop::collection::vec(prop::option::of(1u64..2_000), 3),
        client_timeout in prop::option::of(100u64..20_000),
        choices in prop::collection::vec(choice(), 1..40),
    ) {
        prop_assert!(policy.validate().is_ok(), "{:?}", policy.validate());
        let t0 = Instant::now();
        let facts = CallFacts {
            hops: (0..hops)
                .map(|i| HopFacts {
                    model: i,
                    name: format!("m{i}"),
                    upstream: i % 2,
                    input_estimate: 10,
                    max_tokens: 100,
                    attempt_timeout: hop_timeouts[i].map(ms),
                    hedge_after: hedge_afters[i].map(ms),
                })
                .collect(),
            stream,
            timeout: client_timeout.map(ms),
            conversation,
            replay: false,
            seed: 7,
        };
        let min_attempt = policy
            .min_attempt
            .min(facts.timeout.unwrap_or(policy.deadline) / 2);
        let max_attempts = policy.max_attempts;
        let mut w = ChainWalk::new(facts.clone(), Arc::new(policy.clone()), t0);
        let deadline = w.deadline();
        let mut now = t0;
        let mut pending: Option<Pending> = None;
        // In flight: (attempt, ends at, report).
        let mut flights: Vec<(super::chain::AttemptId, Instant, AttemptReport)> = Vec::new();
        let mut sends = 0u32;
        let mut finished = None;
        let mut trace: Vec<String> = Vec::new();
        // When the walk last decided to try a hop (it checks the time left then; the answers
        // of the breaker and the governor take the driver's delays).
        let mut asked_at = t0;
        let mut choices = choices.into_iter().cycle();
        for _round in 0..2_000 {
            while let Some(step) = w.poll() {
                trace.push(format!("{:?} step {:?}", now - t0, step));
                match step {
                    Step::AskPin => pending = Some(Pending::Pin),
                    Step::Acquire { hop, .. } => {
                        pending = Some(Pending::Admission(hop));
                        asked_at = now;
                    }
                    Step::CountTokens { hop } => pending = Some(Pending::Count(hop)),
                    Step::Reserve { hop, cost, max_wait } => {
                        prop_assert!(now + max_wait <= deadline, "a wait for budget past the deadline");
                        pending = Some(Pending::Budget { hop, cost, max_wait, asked_at: now });
                    }
                    Step::SpendRetry { hop } => pending = Some(Pending::RetryBudget(hop)),
                    Step::Release { .. } | Step::Pin { .. } => {}
                    Step::Cancel { attempt } => flights.retain(|f| f.0 != attempt),
                    Step::Send(s) => {
                        sends += 1;
                        prop_assert!(sends <= max_attempts, "{sends} sends, max {max_attempts}");
                        prop_assert!(!s.timeout.is_zero(), "an attempt with no time: {:#?}", trace);
                        prop_assert!(now + s.timeout <= deadline, "an attempt past the deadline");
                        let limit = facts.hops[s.hop].attempt_timeout.unwrap_or(if stream {
                            policy.first_token_timeout
                        } else {
                            policy.attempt_timeout
                        });
                        prop_assert!(
                            s.timeout + (now - asked_at) >= min_attempt.min(limit),
                            "an attempt started with {:?} left, less than min_attempt {:?}",
                            s.timeout,
                            min_attempt
                        );
                        let c = choices.next().expect("cycle");
                        let (v, status) = verdict(c.pick, c.hint_ms.map(ms));
                        let took = ms(c.delay_ms).min(s.timeout);
                        let report = AttemptReport {
                            verdict: v,
                            status,
                            latency: took,
                            request_id: None,
                            refusal: None,
                            unsent: None,
                        };
                        flights.push((s.attempt, now + took, report));
                    }
                    Step::Finish(f) => {
                        prop_assert!(now <= deadline, "finished after the deadline");
                        prop_assert_eq!(f.attempts, sends);
                        finished = Some(f);
                    }
                }
            }
            if finished.is_some() {
                break;
            }
            let c = choices.next().expect("cycle");
            // The next thing to happen: an answer to the ask (after a short delay), the first
            // attempt to end, or the walk's own timer, whichever comes first.
            let ask_at = pending.map(|_| now + ms(c.delay_ms % 5));
            let flight_at = flights.iter().map(|f| f.1).min();
            let timer_at = w.poll_timeout();
            let next = [ask_at, flight_at, timer_at].into_iter().flatten().min();
            let Some(next) = next else {
                prop_assert!(false, "the walk waits for nothing and has not finished");
                unreachable!();
            };
            if timer_at == Some(next) && ask_at != Some(next) && flight_at != Some(next) {
                // A timer already due fires now (time never runs backwards).
                now = now.max(next);
                trace.push(format!("{:?} timer", now - t0));
                w.handle_timeout(now);
                continue;
            }
            if ask_at == Some(next) {
                now = next;
                let hint = c.hint_ms.map(|m| now + ms(m));
                let event = match pending.take().expect("pending") {
                    Pending::Pin => Event::Pinned((c.pick % 4 < 3).then_some(usize::from(c.pick) % hops)),
                    Pending::Admission(hop) => Event::Admission {
                        hop,
                        admission: match c.pick % 5 {
                            0 => Admission::Open { until: hint },
                            1 => Admission::RetryBudgetSpent,
                            _ => Admission::Permitted(Permit::for_test(0)),
                        },
                    },
                    Pending::Count(hop) => Event::Counted {
                        hop,
                        tokens: (c.pick % 2 == 0).then_some(u64::from(c.pick)),
                    },
                    Pending::Budget { hop, cost, max_wait, asked_at } => Event::Budget {
                        hop,
                        decision: match c.pick % 6 {
                            0 => Decision::Reject {
                                reason: RejectReason::NoBudget {
                                    dimension: super::bucket::Dimension::Requests,
                                },
                                earliest: hint,
                            },
                            1 => Decision::Reject { reason: RejectReason::KeysPaused, earliest: hint },
                            // The governor keeps its word: a grant for later is within max_wait
                            // of the ask.
                            2 | 3 => Decision::Grant {
                                ticket: Ticket::for_test(0, cost),
                                at: (now + ms(c.hint_ms.unwrap_or(0))).min(asked_at + max_wait).max(now),
                            },
                            _ => Decision::Grant { ticket: Ticket::for_test(0, cost), at: now },
                        },
                    },
                    Pending::RetryBudget(hop) => Event::RetryBudget { hop, granted: c.pick % 2 == 0 },
                };
                trace.push(format!("{:?} event {:?}", now - t0, event));
                w.handle(event, now);
                continue;
            }
            // An attempt ends.
            let ends: Vec<usize> = flights
                .iter()
                .enumerate()
                .filter(|(_, f)| Some(f.1) == flight_at)
                .map(|(i, _)| i)
                .collect();
            let i = ends[c.which % ends.len()];
            let (attempt, at, report) = flights.remove(i);
            now = now.max(at);
            trace.push(format!("{:?} finished {attempt} {:?}", now - t0, report.verdict));
            w.handle(Event::Finished { attempt, report }, now);
        }
        prop_assert!(finished.is_some(), "the walk did not finish in 2000 rounds");
        prop_assert!(w.is_done());
    }
}
