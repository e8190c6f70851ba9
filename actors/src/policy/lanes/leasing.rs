//! Fleet leasing: how a bucket group is funded (its own buckets, or slices leased from the
//! fleet's shared bucket), what to lease next, what an idle pool gives back, and the share an
//! instance spends on its own while the fleet is unreachable.

use std::time::{Duration, Instant};

use super::{fits, scaled, Blocked, Group, Lanes, RejectReason, ServerLimits};
use crate::policy::bucket::{Buckets, Dimension, Level, Limits};
use crate::wire::Cost;

/// How a bucket group is funded.
#[derive(Debug)]
pub(super) enum Funding {
    /// Its own buckets, refilled continuously: one process alone, or a fleet instance on its
    /// share while the fleet is unreachable.
    Local(Buckets),
    /// Slices leased from the fleet's shared bucket.
    Leased(Pool),
}

/// Budget leased from the fleet and not yet spent.
#[derive(Debug)]
pub(super) struct Pool {
    pub(super) limits: Limits,
    /// Per dimension (requests, input, output): leased and unspent; negative when calls cost
    /// more than they reserved (a debt the next lease covers).
    pub(super) level: [f64; 3],
    /// A lease is on its way.
    pub(super) leasing: bool,
    /// The fleet's bucket is dry: the last lease was refused or cut short, and the next is not
    /// asked before this (when the shared bucket said the minimum fits, and at least
    /// [`DRY_PAUSE`] later, so a dry fleet is not polled once per call).
    pub(super) not_before: Option<Instant>,
    /// What the lease on its way asked for.
    pub(super) asked: Cost,
    /// The largest shortfall of a call that could have gone now since the last lease was
    /// asked: a lease asks at least this (its minimum).
    pub(super) short: Cost,
    /// The largest shortfall seen since the last lease was asked, queues included: a lease
    /// wishes for at least this (never its minimum: one call's worth already helps a queue).
    pub(super) demand: Cost,
    /// When budget was last taken: a pool idle for a while gives its budget back.
    pub(super) last_take: Instant,
}

/// How long a lease round trip is expected to take: a waiter may wait this long for one.
pub(super) const LEASE_WAIT: Duration = Duration::from_millis(20);
/// A dry fleet (its bucket could not give a whole lease) is asked again no sooner than this:
/// the budget refilled meanwhile comes in one lease rather than one round trip per call.
pub(super) const DRY_PAUSE: Duration = Duration::from_millis(500);
/// A pool not drawn from for this long gives its budget back to the fleet.
pub(super) const IDLE_RETURN: Duration = Duration::from_secs(1);
/// A lease asks for this share of the limit per minute (at least the call that needs it): a
/// twentieth keeps round trips to one per twentieth of the limit, and the budget one instance
/// holds idle small.
pub(super) const LEASE_SHARE: u64 = 20;

pub(super) fn dims(c: Cost) -> [u64; 3] {
    [c.requests, c.input_tokens, c.output_tokens]
}

pub(super) fn limit_dims(l: Limits) -> [Option<u64>; 3] {
    [
        l.requests_per_minute,
        l.input_tokens_per_minute,
        l.output_tokens_per_minute,
    ]
}

/// Per dimension, the larger of `a` and `b`.
pub(super) fn max_of(a: Cost, b: [u64; 3]) -> Cost {
    let a = dims(a);
    cost_of([0, 1, 2].map(|i| a[i].max(b[i])))
}

pub(super) fn cost_of(d: [u64; 3]) -> Cost {
    Cost {
        requests: d[0],
        input_tokens: d[1],
        output_tokens: d[2],
    }
}

impl Pool {
    pub(super) fn new(limits: Limits, now: Instant) -> Self {
        Self {
            limits,
            level: [0.0; 3],
            leasing: false,
            not_before: None,
            asked: Cost::default(),
            short: Cost::default(),
            demand: Cost::default(),
            last_take: now,
        }
    }

    /// Per dimension, how much of `cost` the pool lacks (all zero: it fits); a cost larger than
    /// the limit itself never fits.
    pub(super) fn shortfall(&self, cost: Cost) -> Result<[u64; 3], Blocked> {
        let need = dims(cost);
        let limits = limit_dims(self.limits);
        let mut short = [0u64; 3];
        for i in 0..3 {
            let Some(limit) = limits[i] else { continue };
            if need[i] > limit {
                return Err(Blocked {
                    reason: RejectReason::TooLarge {
                        dimension: Dimension::ALL[i],
                    },
                    earliest: None,
                    gate: None,
                });
            }
            if self.level[i] + 1e-9 < need[i] as f64 {
                short[i] = (need[i] as f64 - self.level[i]).ceil().max(0.0) as u64;
            }
        }
        Ok(short)
    }

    /// Whether `cost` fits now; if not, the next lease asks at least what it lacks.
    pub(super) fn fits(&mut self, cost: Cost, now: Instant) -> Result<(), Blocked> {
        let short = self.shortfall(cost)?;
        if short == [0; 3] {
            return Ok(());
        }
        self.short = max_of(self.short, short);
        self.demand = max_of(self.demand, short);
        Err(self.blocked(short, now))
    }

    /// Remember what a queue lacks, for the next lease's wish.
    pub(super) fn note_demand(&mut self, cost: Cost) {
        if let Ok(short) = self.shortfall(cost) {
            self.demand = max_of(self.demand, short);
        }
    }

    /// When `cost` could fit, at best: after the next lease, and, when the fleet's bucket was
    /// dry at the last lease, after it has refilled what the pool lacks at the whole limit's
    /// rate. An estimate only: it asks for nothing (a queue's total cost must not become one
    /// lease's minimum).
    pub(super) fn earliest(&self, cost: Cost, now: Instant) -> Option<Instant> {
        match self.shortfall(cost) {
            Ok(short) if short == [0; 3] => Some(now),
            Ok(short) => self.blocked(short, now).earliest,
            Err(b) => b.earliest,
        }
    }

    pub(super) fn blocked(&self, short: [u64; 3], now: Instant) -> Blocked {
        // A fleet with budget to spare fills any shortfall with the next lease: only a dry one
        // (it said when the last minimum would fit) makes the shortfall wait for refill.
        let mut refill = Duration::ZERO;
        if self.not_before.is_some() {
            for (s, limit) in short.iter().zip(limit_dims(self.limits)) {
                if let Some(limit) = limit.filter(|l| *l > 0) {
                    let secs = *s as f64 * 60.0 / limit as f64;
                    refill = refill.max(Duration::from_secs_f64(secs));
                }
            }
        }
        let dimension = (0..3)
            .find(|&i| short[i] > 0)
            .map_or(Dimension::Requests, |i| Dimension::ALL[i]);
        let soon = now + LEASE_WAIT;
        let next_lease = self.not_before.map_or(soon, |t| t.max(soon));
        Blocked {
            reason: RejectReason::NoBudget { dimension },
            earliest: Some(next_lease.max(now + refill)),
            gate: None,
        }
    }

    pub(super) fn take(&mut self, cost: Cost, now: Instant) {
        let limits = limit_dims(self.limits);
        for ((level, c), limit) in self.level.iter_mut().zip(dims(cost)).zip(limits) {
            if limit.is_some() {
                *level -= c as f64;
            }
        }
        self.last_take = now;
    }

    pub(super) fn settle(&mut self, reserved: Cost, actual: Cost) {
        let (r, a) = (dims(reserved), dims(actual));
        for i in 0..3 {
            if limit_dims(self.limits)[i].is_some() {
                self.level[i] += r[i] as f64 - a[i] as f64;
            }
        }
    }

    pub(super) fn levels(&self) -> Vec<Level> {
        limit_dims(self.limits)
            .iter()
            .enumerate()
            .filter_map(|(i, l)| {
                l.map(|capacity| Level {
                    dimension: Dimension::ALL[i],
                    capacity,
                    available: self.level[i],
                })
            })
            .collect()
    }
}

impl Funding {
    pub(super) fn limits(&self) -> Limits {
        match self {
            Funding::Local(b) => b.limits(),
            Funding::Leased(p) => p.limits,
        }
    }

    pub(super) fn fits(&mut self, cost: Cost, floor: Cost, now: Instant) -> Result<(), Blocked> {
        match self {
            Funding::Local(b) => fits(b, cost, floor, now),
            // The interactive reserve is kept by the lanes' order here: a slice is too small
            // to keep a share of.
            Funding::Leased(p) => p.fits(cost, now),
        }
    }

    pub(super) fn take(&mut self, cost: Cost, now: Instant) {
        match self {
            Funding::Local(b) => {
                let _ = b.reserve(cost, Duration::ZERO, now);
            }
            Funding::Leased(p) => p.take(cost, now),
        }
    }

    pub(super) fn settle(
        &mut self,
        reserved: Cost,
        actual: Cost,
        server: &ServerLimits,
        now: Instant,
    ) {
        match self {
            Funding::Local(b) => {
                b.settle(reserved, actual, now);
                for (dim, seen) in [
                    (Dimension::Requests, server.requests),
                    (Dimension::InputTokens, server.input_tokens),
                    (Dimension::OutputTokens, server.output_tokens),
                ] {
                    if let Some((limit, remaining)) = seen {
                        b.observe(dim, limit, remaining, now);
                    }
                }
            }
            // The server's word lowers the shared bucket, through the driver.
            Funding::Leased(p) => p.settle(reserved, actual),
        }
    }

    pub(super) fn earliest(&mut self, cost: Cost, now: Instant) -> Option<Instant> {
        match self {
            Funding::Local(b) => b.earliest(cost, now),
            Funding::Leased(p) => {
                p.note_demand(cost);
                p.earliest(cost, now)
            }
        }
    }

    pub(super) fn available(&mut self, dim: Dimension, now: Instant) -> Option<f64> {
        match self {
            Funding::Local(b) => b.available(dim, now),
            Funding::Leased(p) => {
                let i = Dimension::ALL.iter().position(|d| *d == dim)?;
                limit_dims(p.limits)[i].map(|_| p.level[i])
            }
        }
    }

    pub(super) fn levels(&mut self, now: Instant) -> Vec<Level> {
        match self {
            Funding::Local(b) => b.levels(now),
            Funding::Leased(p) => p.levels(),
        }
    }
}

/// A lease the governor should ask the fleet for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseAsk {
    /// The group.
    pub group: Group,
    /// Its limits per minute.
    pub limits: Limits,
    /// What to ask for.
    pub want: Cost,
    /// What to take at least, when `want` does not fit.
    pub min: Cost,
}

/// How the organization buckets are funded now.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum FleetMode {
    /// One process, its own buckets.
    Alone,
    /// Leasing from the fleet's shared buckets.
    Shared,
    /// The fleet is unreachable: this instance spends its share of each limit (the limit
    /// divided by the live instances last counted).
    Local {
        /// The share of each limit (0, 1].
        share: f64,
    },
}

/// A new group's funding in `mode`.
pub(super) fn funding(mode: FleetMode, limits: Limits, lag: Duration, now: Instant) -> Funding {
    match mode {
        FleetMode::Alone => Funding::Local(Buckets::new(limits, now).with_transit_allowance(lag)),
        FleetMode::Shared => Funding::Leased(Pool::new(limits, now)),
        FleetMode::Local { share } => Funding::Local(
            Buckets::new(scaled(limits, share), now)
                .with_transit_allowance(lag)
                .emptied(),
        ),
    }
}

/// A lease's usual size: a twentieth of each limit (at least one request).
pub(super) fn batch_of(limits: Limits) -> Cost {
    let l = limit_dims(limits);
    cost_of([0, 1, 2].map(|i| l[i].map_or(0, |v| (v / LEASE_SHARE).max(1))))
}

impl Lanes {
    /// The fleet could not be reached, with `live` instances last counted (this one
    /// included): the mode to spend this instance's share of each limit in, if leasing was the
    /// mode until now.
    pub fn mode_without_fleet(&self, live: usize) -> Option<FleetMode> {
        (self.mode == FleetMode::Shared).then(|| FleetMode::Local {
            share: 1.0 / live.max(1) as f64,
        })
    }

    /// How the organization buckets are funded now.
    pub fn mode(&self) -> FleetMode {
        self.mode
    }

    /// Fund every group anew as `mode` says: leased slices, or local buckets (for a share,
    /// starting empty: the budget this instance was spending has not refilled yet).
    pub fn set_mode(&mut self, mode: FleetMode, now: Instant) {
        if mode == self.mode {
            return;
        }
        self.mode = mode;
        let lag = self.transit_allowance;
        for up in &mut self.upstreams {
            let configured = up.class_limits.clone();
            for (&(_, class), f) in up.buckets.iter_mut() {
                // Always from the configured limits: a share is never taken of a share.
                let limits = configured
                    .get(class)
                    .or_else(|| configured.first())
                    .copied()
                    .unwrap_or_default();
                *f = funding(mode, limits, lag, now);
            }
        }
    }

    /// The leases to ask the fleet for now: a group short of budget, or running low, with no
    /// lease on its way and nothing said against asking yet.
    pub fn lease_asks(&mut self, now: Instant) -> Vec<LeaseAsk> {
        let mut out = Vec::new();
        for (u, up) in self.upstreams.iter_mut().enumerate() {
            for (&(org, class), f) in up.buckets.iter_mut() {
                let Funding::Leased(p) = f else { continue };
                if p.leasing || p.not_before.is_some_and(|t| t > now) {
                    continue;
                }
                let batch = batch_of(p.limits);
                let low = (0..3).any(|i| {
                    limit_dims(p.limits)[i].is_some() && p.level[i] < dims(batch)[i] as f64 / 2.0
                });
                // Topping up ahead of need only while the fleet has budget to spare: from a dry
                // one, only what waiting calls need.
                let dry = p.not_before.is_some();
                if p.short == Cost::default() && p.demand == Cost::default() && (dry || !low) {
                    continue;
                }
                let mut want = dims(batch);
                let mut min = dims(p.short);
                for (w, d) in want.iter_mut().zip(dims(p.demand)) {
                    *w = (*w).max(d);
                }
                let limits = limit_dims(p.limits);
                for i in 0..3 {
                    // Cover the debt too, never more than the limit itself.
                    let debt = (-p.level[i]).max(0.0).ceil() as u64;
                    min[i] = min[i].saturating_add(debt);
                    want[i] = want[i].max(min[i]);
                    if let Some(l) = limits[i] {
                        want[i] = want[i].min(l);
                        min[i] = min[i].min(l);
                    } else {
                        want[i] = 0;
                        min[i] = 0;
                    }
                }
                p.leasing = true;
                p.asked = cost_of(want);
                p.short = Cost::default();
                p.demand = Cost::default();
                out.push(LeaseAsk {
                    group: (u, org, class),
                    limits: p.limits,
                    want: cost_of(want),
                    min: cost_of(min),
                });
            }
        }
        out
    }

    /// A lease came back: `granted` is this instance's to spend; with nothing granted,
    /// `retry_after` says when the minimum fits.
    pub fn leased(
        &mut self,
        group: Group,
        granted: Cost,
        retry_after: Option<Duration>,
        now: Instant,
    ) {
        let (upstream, org, class) = group;
        if let Some(Funding::Leased(p)) = self
            .upstreams
            .get_mut(upstream)
            .and_then(|u| u.buckets.get_mut(&(org, class)))
        {
            p.leasing = false;
            for (level, g) in p.level.iter_mut().zip(dims(granted)) {
                *level += g as f64;
            }
            let cut_short = dims(granted).iter().zip(dims(p.asked)).any(|(g, a)| *g < a);
            p.not_before = match retry_after {
                Some(d) => Some(now + d.max(DRY_PAUSE)),
                None if cut_short => Some(now + DRY_PAUSE),
                None => None,
            };
            self.touched.push(group);
        }
    }

    /// A lease did not come back (the fleet is unreachable): the group may ask again.
    pub fn lease_lost(&mut self, group: Group) {
        let (upstream, org, class) = group;
        if let Some(Funding::Leased(p)) = self
            .upstreams
            .get_mut(upstream)
            .and_then(|u| u.buckets.get_mut(&(org, class)))
        {
            p.leasing = false;
        }
    }

    /// Budget idle pools give back to the fleet now (taken out of the pools).
    pub fn returns(&mut self, now: Instant) -> Vec<(Group, Limits, Cost)> {
        let mut out = Vec::new();
        for (u, up) in self.upstreams.iter_mut().enumerate() {
            for (&(org, class), f) in up.buckets.iter_mut() {
                let Funding::Leased(p) = f else { continue };
                if p.leasing || now.saturating_duration_since(p.last_take) < IDLE_RETURN {
                    continue;
                }
                let mut back = [0u64; 3];
                for (level, b) in p.level.iter_mut().zip(back.iter_mut()) {
                    if *level >= 1.0 {
                        *b = level.floor() as u64;
                        *level -= *b as f64;
                    }
                }
                if back != [0; 3] {
                    out.push(((u, org, class), p.limits, cost_of(back)));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::*;
    use super::*;

    #[test]
    fn a_fleet_instance_spends_leased_slices_and_asks_for_more_before_it_runs_dry() {
        let t0 = Instant::now();
        let mut l = shared_upstream(600);
        // Nothing leased yet: a call that may wait parks, and a lease is asked for.
        assert_eq!(
            l.reserve(req(Lane::Interactive, S), 1, t0),
            Reserved::Parked
        );
        let asks = l.lease_asks(t0);
        assert_eq!(asks.len(), 1);
        assert_eq!(asks[0].min.requests, 1, "at least the call that waits");
        assert_eq!(asks[0].want.requests, 30, "a twentieth of the limit");
        assert!(
            l.lease_asks(t0).is_empty(),
            "one lease on its way at a time"
        );
        // A call that cannot wait is refused at once, with when it could go (a lease's time).
        match l.reserve(req(Lane::Interactive, Duration::ZERO), 2, t0) {
            Reserved::Now(Decision::Reject { earliest, .. }) => {
                assert_eq!(earliest, Some(t0 + LEASE_WAIT))
            }
            other => panic!("{other:?}"),
        }
        l.leased(asks[0].group, asks[0].want, None, t0);
        let answers = l.pump(t0);
        assert_eq!(answers.len(), 1);
        assert!(matches!(answers[0].decision, Decision::Grant { .. }));
        // 29 left: more calls are granted locally with no round trip...
        for w in 10..24 {
            assert!(matches!(
                l.reserve(req(Lane::Interactive, Duration::ZERO), w, t0),
                Reserved::Now(Decision::Grant { .. })
            ));
        }
        // ...and with demand refused meanwhile, the next lease is asked for before the pool runs
        // dry; its minimum is what a call that could have gone lacked (none here), never more.
        let asks = l.lease_asks(t0);
        assert_eq!(asks.len(), 1);
        assert_eq!(asks[0].min.requests, 0);
        assert_eq!(asks[0].want.requests, 30);
    }

    #[test]
    fn a_queue_raises_what_a_lease_wishes_for_never_its_minimum() {
        let t0 = Instant::now();
        let mut l = shared_upstream(600);
        for w in 1..=40 {
            assert_eq!(
                l.reserve(req(Lane::Interactive, S * 10), w, t0),
                Reserved::Parked
            );
        }
        let asks = l.lease_asks(t0);
        assert_eq!(asks.len(), 1);
        assert_eq!(asks[0].min.requests, 1, "the first call in line");
        assert_eq!(
            asks[0].want.requests, 40,
            "the whole line, over a twentieth"
        );
        // A dry fleet gives 5 (a partial lease): the next ask waits a pause, not once per call.
        let five = Cost {
            requests: 5,
            ..Cost::default()
        };
        l.leased(asks[0].group, five, None, t0);
        assert_eq!(l.pump(t0).len(), 5);
        assert!(l.lease_asks(t0 + DRY_PAUSE / 2).is_empty());
        assert_eq!(l.lease_asks(t0 + DRY_PAUSE).len(), 1);
        // While dry, the estimate for a call at the back counts the refill of the line ahead
        // (35 at 10 a second): far beyond a lease's round trip, so a short wait is refused at once.
        match l.reserve(req(Lane::Interactive, S), 99, t0 + DRY_PAUSE) {
            Reserved::Now(Decision::Reject { earliest, .. }) => {
                let wait = earliest.unwrap() - (t0 + DRY_PAUSE);
                assert!(wait >= S * 3, "{wait:?}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_refused_lease_says_when_and_an_idle_pool_gives_its_budget_back() {
        let t0 = Instant::now();
        let mut l = shared_upstream(600);
        assert_eq!(
            l.reserve(req(Lane::Interactive, S), 1, t0),
            Reserved::Parked
        );
        let ask = l.lease_asks(t0)[0];
        l.leased(ask.group, Cost::default(), Some(S / 2), t0);
        assert!(l.pump(t0).is_empty(), "still nothing to spend");
        assert!(l.lease_asks(t0).is_empty(), "not before the fleet said");
        assert_eq!(l.lease_asks(t0 + S / 2).len(), 1);
        let ten = Cost {
            requests: 10,
            ..Cost::default()
        };
        l.leased(ask.group, ten, None, t0 + S / 2);
        assert_eq!(l.pump(t0 + S / 2).len(), 1);
        assert!(l.returns(t0 + S).is_empty(), "drawn from half a second ago");
        let back = l.returns(t0 + S * 2);
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].2.requests, 9, "what was not spent goes back");
    }

    #[test]
    fn when_the_fleet_is_gone_an_instance_spends_its_share_starting_empty() {
        let t0 = Instant::now();
        let mut l = shared_upstream(600);
        l.reserve(req(Lane::Interactive, S), 1, t0);
        l.set_mode(FleetMode::Local { share: 0.5 }, t0);
        // The share refills from empty at 300/min: 5 per second.
        assert!(matches!(
            l.reserve(req(Lane::Interactive, Duration::ZERO), 2, t0),
            Reserved::Now(Decision::Reject { .. })
        ));
        let answers = l.pump(t0 + S / 5);
        assert_eq!(
            answers.len(),
            1,
            "the parked call goes once one request refilled"
        );
        assert!(matches!(answers[0].decision, Decision::Grant { .. }));
        // Back in the fleet: leases again.
        l.set_mode(FleetMode::Shared, t0 + S);
        assert_eq!(
            l.reserve(req(Lane::Interactive, S), 3, t0 + S),
            Reserved::Parked
        );
        assert_eq!(l.lease_asks(t0 + S).len(), 1);
    }

    #[test]
    fn a_slow_lease_or_paused_keys_on_one_upstream_never_hold_back_another() {
        let t0 = Instant::now();
        let ms = Duration::from_millis(1);
        let two = || {
            lanes_of(
                vec![
                    upstream("a", vec![limits(Some(100), None)], vec![0]),
                    upstream("b", vec![limits(Some(100), None)], vec![0]),
                ],
                vec![],
            )
        };
        // A fleet: each group spends leased slices, and starts with none.
        let mut l = two();
        l.set_mode(FleetMode::Shared, t0);
        let i = Lane::Interactive;
        assert_eq!(l.reserve(to(0, 0, 0, i), 1, t0), Reserved::Parked);
        assert_eq!(l.reserve(to(1, 0, 0, i), 2, t0), Reserved::Parked);
        let asks = l.lease_asks(t0);
        assert_eq!(asks.len(), 2, "one lease per group");
        // b's lease comes back; a's is slow. b's waiter goes, a's keeps waiting.
        l.leased((1, 0, 0), Cost::request(0, 0), None, t0 + ms * 5);
        assert_eq!(waiters(&l.pump(t0 + ms * 5)), vec![2]);
        assert!(l.has_waiters());
        l.leased((0, 0, 0), Cost::request(0, 0), None, t0 + ms * 50);
        assert_eq!(waiters(&l.pump(t0 + ms * 50)), vec![1]);

        // a's only key is paused by a 429: its call waits for the key, b's goes.
        let mut l = two();
        let t = granted(l.reserve(to(0, 0, 0, i), 1, t0));
        l.settle(
            Settlement {
                key_pause: Some(S * 5),
                ..Settlement::unused(t)
            },
            t0,
        );
        assert_eq!(l.reserve(to(0, 0, 0, i), 2, t0), Reserved::Parked);
        granted(l.reserve(to(1, 0, 0, i), 3, t0));
        assert_eq!(waiters(&l.pump(t0 + S * 5)), vec![2]);
    }

    #[test]
    fn without_the_fleet_an_instance_spends_one_live_instances_share() {
        let t0 = Instant::now();
        let mut l = one_upstream(100, 1);
        assert_eq!(
            l.mode_without_fleet(4),
            None,
            "alone: nothing to fall back from"
        );
        l.set_mode(FleetMode::Shared, t0);
        assert_eq!(
            l.mode_without_fleet(4),
            Some(FleetMode::Local { share: 0.25 })
        );
        assert_eq!(
            l.mode_without_fleet(0),
            Some(FleetMode::Local { share: 1.0 }),
            "no count yet: this one is alive"
        );
        l.set_mode(FleetMode::Local { share: 0.25 }, t0);
        assert_eq!(l.mode_without_fleet(2), None, "already on its share");
    }
}
