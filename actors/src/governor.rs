//! `GovernorActor`: turns organization-wide limits into smooth traffic that never trips the API's
//! limiter. The rules (buckets, lanes, FIFO, the interactive reserve, bulkheads, key choice) are
//! the pure [`Lanes`](crate::policy::lanes::Lanes); this actor only drives them: it keeps the
//! parked callers' replies by waiter id, the timer, and the metrics.
//!
//! Handlers never await: each message is a few policy calls. Parked replies are answered from
//! later messages or from a timer armed with `send_after` and tagged with an epoch. A grant that
//! cannot be delivered (its caller gave up) is settled as unused at once.
//!
//! Metrics: waits (parked reservations) and how long they waited, refusals by reason, and the
//! level of every bucket as a gauge, set on each reservation and settlement. The gauges are
//! labelled with names, not indexes: the upstream, the key organization's label and the model
//! class's name. Their handles are made once per bucket group, so keeping them current costs
//! three atomic stores.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::call::Call;
use crate::clock;
use crate::fleet::{Fleet, FleetError, GroupKey};
use crate::policy::bucket::Dimension;
use crate::policy::lanes::{
    Answer, Decision, FleetMode, GovernorArgs, Group, KeyCheck, Lanes, ReserveRequest, Reserved,
    ServerLimits, Settlement, WaiterId,
};
use crate::protocol::{GovernorMsg, Responder};
use crate::timer::Timer;
use crate::upstream::Upstream;
use crate::wire::{Attempt, TransportError};

/// How often a fleet instance says it is alive, counts the others, gives idle budget back and
/// passes on what the server said is left.
const FLEET_TICK: Duration = Duration::from_secs(1);

/// What the governor is started with (kept by the supervisor to restart it).
#[derive(Clone)]
pub struct GovernorSetup {
    /// The rules' settings.
    pub rules: GovernorArgs,
    /// The fleet whose organization budget this instance shares, if any.
    pub fleet: Option<Arc<dyn Fleet>>,
    /// Per upstream (by index): how to check its quarantined keys.
    pub key_checkers: Vec<KeyChecker>,
}

/// How the governor checks a quarantined key of one upstream: a token count (the cheapest call
/// there is) with that key, for a model the upstream serves.
#[derive(Clone)]
pub struct KeyChecker {
    /// The upstream.
    pub upstream: Arc<dyn Upstream>,
    /// A model it serves (`None`: no check can be made; the key goes back untested).
    pub model: Option<String>,
}

/// Time allowed to one key check.
const KEY_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// The actor.
pub struct GovernorActor;

/// The actor's state.
pub struct GovernorState {
    lanes: Lanes,
    /// Parked callers by waiter id.
    waiting: HashMap<WaiterId, Responder<Decision>>,
    next_waiter: WaiterId,
    /// Names for the gauges' labels: per upstream, its organizations' and classes' names.
    org_names: Vec<Vec<String>>,
    class_names: Vec<Vec<String>>,
    /// `seawall_bucket_level` gauges per bucket group, made on first use.
    gauges: HashMap<Group, [metrics::Gauge; 3]>,
    timer: Timer,
    fleet: Option<Arc<dyn Fleet>>,
    /// Transit allowance, passed to the fleet's buckets.
    lag: Duration,
    /// Live instances at the last count (this one included).
    live: usize,
    /// The server's latest word per group, passed to the fleet once per tick.
    observed: HashMap<Group, ServerLimits>,
    /// Per upstream: how to check its quarantined keys.
    key_checkers: Vec<KeyChecker>,
}

/// Each governor incarnation gets a new generation so tickets from before a restart are ignored.
static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl GovernorState {
    fn upstream_name(&self, upstream: usize) -> String {
        self.lanes.upstream_name(upstream).unwrap_or("").to_owned()
    }

    /// Count a decision and deliver it; a grant its caller never receives goes back.
    fn answer(
        &mut self,
        reply: Responder<Decision>,
        decision: Decision,
        req: &ReserveRequest,
        since: Option<Instant>,
        now: Instant,
    ) {
        let upstream = self.upstream_name(req.upstream);
        match decision {
            Decision::Reject { reason, .. } => metrics::counter!(
                "seawall_governor_rejections_total",
                "upstream" => upstream,
                "reason" => reason.as_str()
            )
            .increment(1),
            Decision::Grant { .. } => {
                if let Some(since) = since {
                    metrics::histogram!(
                        "seawall_governor_wait_seconds",
                        "upstream" => upstream,
                        "lane" => req.lane.as_str()
                    )
                    .record(now.saturating_duration_since(since).as_secs_f64());
                }
            }
        }
        if let Some(Decision::Grant { ticket, .. }) = reply.send(decision) {
            self.lanes.settle(Settlement::unused(ticket), now);
        }
    }

    /// Check a quarantined key off the actor: a token count with it, its verdict cast back as
    /// `KeyChecked`. An upstream without a counter (or a model) lets the key go back untested.
    fn check_key(
        &mut self,
        myself: &ActorRef<GovernorMsg>,
        upstream: usize,
        key: usize,
        now: Instant,
    ) {
        let checker = self.key_checkers.get(upstream).and_then(|c| {
            let model = c.model.clone()?;
            let attempt = Attempt {
                body: Call::new(&model, 1).user("ping").body_for(&model),
                model,
                key,
                retry_count: 0,
                timeout: KEY_CHECK_TIMEOUT,
                idempotency_key: None,
                forward: Default::default(),
            };
            // Asked here only to learn whether there is a counter; the task asks again.
            c.upstream
                .count_tokens(attempt.clone())
                .is_some()
                .then(|| (Arc::clone(&c.upstream), attempt))
        });
        let Some((up, attempt)) = checker else {
            if let Some((name, label)) =
                self.lanes
                    .key_checked(upstream, key, KeyCheck::Untested, now)
            {
                tracing::info!(upstream = %name, key = %label, "API key back for a trial (no token counter to check it with)");
            }
            return;
        };
        let me = myself.clone();
        tokio::spawn(async move {
            let check = match up.count_tokens(attempt) {
                None => KeyCheck::Untested,
                Some(count) => match tokio::time::timeout(KEY_CHECK_TIMEOUT, count).await {
                    Ok(Ok(_)) => KeyCheck::Good,
                    // The key refused again.
                    Ok(Err(TransportError::Status(401 | 403))) => KeyCheck::Bad,
                    // No counter there after all: the key goes back for a trial.
                    Ok(Err(TransportError::Status(404))) => KeyCheck::Untested,
                    // An overload, a network failure: no verdict on the key.
                    Ok(Err(_)) | Err(_) => KeyCheck::Unknown,
                },
            };
            let _ = me.cast(GovernorMsg::KeyChecked {
                upstream,
                key,
                check,
            });
        });
    }

    fn reserve(&mut self, req: ReserveRequest, reply: Responder<Decision>, now: Instant) {
        let waiter = self.next_waiter;
        self.next_waiter += 1;
        match self.lanes.reserve(req, waiter, now) {
            Reserved::Now(decision) => self.answer(reply, decision, &req, None, now),
            Reserved::Parked => {
                metrics::counter!(
                    "seawall_governor_waits_total",
                    "upstream" => self.upstream_name(req.upstream),
                    "lane" => req.lane.as_str()
                )
                .increment(1);
                self.waiting.insert(waiter, reply);
            }
        }
    }

    fn settle(&mut self, s: Settlement, now: Instant) {
        if self.fleet.is_some()
            && self.lanes.mode() == FleetMode::Shared
            && s.server != ServerLimits::default()
        {
            if let Some(group) = self.lanes.group_of(&s.ticket) {
                self.observed.insert(group, s.server);
            }
        }
        let news = self.lanes.settle(s, now);
        if let Some((upstream, key)) = news.quarantined {
            tracing::warn!(upstream = %upstream, key = %key, "API key refused (401): quarantined");
        }
        if let Some((upstream, key, pause)) = news.paused {
            tracing::info!(upstream = %upstream, key = %key, pause_ms = pause.as_millis() as u64, "429: key paused");
        }
    }

    /// Forget callers who gave up, hand out what the lanes allow, re-arm the timer, and set the
    /// level gauges of the groups that moved.
    fn after(&mut self, myself: &ActorRef<GovernorMsg>, now: Instant) {
        if self.lanes.has_waiters() {
            let gone: Vec<WaiterId> = self
                .waiting
                .iter()
                .filter(|(_, r)| r.is_closed())
                .map(|(w, _)| *w)
                .collect();
            for w in gone {
                self.waiting.remove(&w);
                self.lanes.cancel(w);
            }
            for Answer {
                waiter,
                decision,
                request,
                since,
            } in self.lanes.pump(now)
            {
                if let Some(reply) = self.waiting.remove(&waiter) {
                    self.answer(reply, decision, &request, Some(since), now);
                } else if let Decision::Grant { ticket, .. } = decision {
                    self.lanes.settle(Settlement::unused(ticket), now);
                }
            }
        }
        for (upstream, key) in self.lanes.due_key_checks(now) {
            self.check_key(myself, upstream, key, now);
        }
        self.timer
            .rearm(myself, self.lanes.poll_timeout(), now, GovernorMsg::Timer);
        self.publish_levels(now);
        self.ask_leases(myself, now);
    }

    /// The fleet's name for a group.
    fn group_key(&self, (upstream, org, class): Group) -> GroupKey {
        let name = |names: &Vec<Vec<String>>, i: usize| {
            names
                .get(upstream)
                .and_then(|n| n.get(i))
                .cloned()
                .unwrap_or_else(|| i.to_string())
        };
        GroupKey {
            upstream: self.upstream_name(upstream),
            org: name(&self.org_names, org),
            class: name(&self.class_names, class),
        }
    }

    /// Ask the fleet for the leases the lanes need (tasks: the handler never awaits).
    fn ask_leases(&mut self, myself: &ActorRef<GovernorMsg>, now: Instant) {
        let Some(fleet) = self.fleet.clone() else {
            return;
        };
        for ask in self.lanes.lease_asks(now) {
            let key = self.group_key(ask.group);
            let fleet = Arc::clone(&fleet);
            let me = myself.clone();
            let lag = self.lag;
            tokio::spawn(async move {
                let lease = fleet.lease(&key, ask.limits, lag, ask.want, ask.min).await;
                let _ = me.cast(GovernorMsg::Leased {
                    group: ask.group,
                    lease,
                });
            });
        }
    }

    /// A fleet tick: say alive and count, give idle budget back, pass on the server's word.
    fn tick(&mut self, myself: &ActorRef<GovernorMsg>, now: Instant) {
        let Some(fleet) = self.fleet.clone() else {
            return;
        };
        let me = myself.clone();
        let f = Arc::clone(&fleet);
        tokio::spawn(async move {
            let alive = f.heartbeat().await;
            let _ = me.cast(GovernorMsg::FleetAlive(alive));
        });
        if self.lanes.mode() != FleetMode::Shared {
            return;
        }
        let returns: Vec<(GroupKey, crate::policy::bucket::Limits, crate::wire::Cost)> = self
            .lanes
            .returns(now)
            .into_iter()
            .map(|(g, l, c)| (self.group_key(g), l, c))
            .collect();
        let observed: Vec<(GroupKey, crate::policy::bucket::Limits, ServerLimits)> =
            std::mem::take(&mut self.observed)
                .into_iter()
                .map(|(g, server)| (self.group_key(g), self.lanes.limits_of(g), server))
                .collect();
        if returns.is_empty() && observed.is_empty() {
            return;
        }
        tokio::spawn(async move {
            for (key, limits, amount) in returns {
                // Lost with an unreachable fleet: it refills there in a minute anyway.
                let _ = fleet.give_back(&key, limits, amount).await;
            }
            for (key, limits, server) in observed {
                let _ = fleet.observe(&key, limits, server).await;
            }
        });
    }

    /// Switch how the organization buckets are funded, saying so once.
    fn set_mode(&mut self, mode: FleetMode, now: Instant) {
        if self.lanes.mode() == mode {
            return;
        }
        match mode {
            FleetMode::Local { share } => tracing::warn!(
                share,
                live_instances = self.live,
                "the fleet is unreachable: spending this instance's share of each limit"
            ),
            FleetMode::Shared => {
                tracing::info!("the fleet is back: leasing the shared budget again")
            }
            FleetMode::Alone => {}
        }
        self.lanes.set_mode(mode, now);
        publish_mode(mode, self.live);
    }

    fn fleet_lost(&mut self, why: &FleetError, now: Instant) {
        if let Some(mode) = self.lanes.mode_without_fleet(self.live) {
            tracing::debug!(error = %why, "fleet call failed");
            self.set_mode(mode, now);
        }
    }

    fn publish_levels(&mut self, now: Instant) {
        let mut touched = self.lanes.take_touched();
        touched.sort_unstable();
        touched.dedup();
        for group in touched {
            let levels = self.lanes.available(group, now);
            if !self.gauges.contains_key(&group) {
                let gauges = self.level_gauges(group);
                self.gauges.insert(group, gauges);
            }
            if let Some(g) = self.gauges.get(&group) {
                for (level, gauge) in levels.iter().zip(g) {
                    if let Some(level) = level {
                        gauge.set(*level);
                    }
                }
            }
        }
    }

    fn level_gauges(&self, (upstream, org, class): Group) -> [metrics::Gauge; 3] {
        let name = |names: &Vec<Vec<String>>, i: usize| {
            names
                .get(upstream)
                .and_then(|n| n.get(i))
                .cloned()
                .unwrap_or_else(|| i.to_string())
        };
        let upstream_name = self.upstream_name(upstream);
        let org = name(&self.org_names, org);
        let class = name(&self.class_names, class);
        Dimension::ALL.map(|dim| {
            metrics::gauge!(
                "seawall_bucket_level",
                "upstream" => upstream_name.clone(),
                "org" => org.clone(),
                "model_class" => class.clone(),
                "dimension" => dim.as_str()
            )
        })
    }
}

impl Actor for GovernorActor {
    type Msg = GovernorMsg;
    type State = GovernorState;
    type Arguments = GovernorSetup;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        setup: GovernorSetup,
    ) -> Result<Self::State, ActorProcessingErr> {
        let GovernorSetup {
            mut rules,
            fleet,
            key_checkers,
        } = setup;
        rules.shared = fleet.is_some();
        let lag = rules.transit_allowance;
        let args = rules;
        let org_names = args.upstreams.iter().map(|u| u.org_names.clone()).collect();
        let class_names = args
            .upstreams
            .iter()
            .map(|u| u.class_names.clone())
            .collect();
        let generation = GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(GovernorState {
            lanes: Lanes::new(args, generation),
            waiting: HashMap::new(),
            next_waiter: 0,
            org_names,
            class_names,
            gauges: HashMap::new(),
            timer: Timer::default(),
            fleet,
            lag,
            live: 1,
            observed: HashMap::new(),
            key_checkers,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if state.fleet.is_some() {
            publish_mode(state.lanes.mode(), state.live);
            state.tick(&myself, clock::now());
            myself.send_interval(FLEET_TICK, || GovernorMsg::FleetTick);
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let now = clock::now();
        match msg {
            GovernorMsg::Reserve(req, reply) => state.reserve(req, reply, now),
            GovernorMsg::Settle(s) => state.settle(s, now),
            GovernorMsg::PickKey(upstream, reply) => {
                let _ = reply.send(state.lanes.pick_key(upstream, now));
                return Ok(());
            }
            GovernorMsg::Status(reply) => {
                let _ = reply.send(state.lanes.status(now));
                return Ok(());
            }
            GovernorMsg::Timer(epoch) => {
                if !state.timer.fired(epoch) {
                    return Ok(()); // a stale timer: the instant it was armed for moved
                }
            }
            GovernorMsg::Leased { group, lease } => match lease {
                Ok(l) => state.lanes.leased(group, l.granted, l.retry_after, now),
                Err(e) => {
                    state.lanes.lease_lost(group);
                    state.fleet_lost(&e, now);
                }
            },
            GovernorMsg::FleetTick => state.tick(&myself, now),
            GovernorMsg::FleetAlive(alive) => match alive {
                Ok(n) => {
                    state.live = n.max(1);
                    state.set_mode(FleetMode::Shared, now);
                    publish_mode(state.lanes.mode(), state.live);
                }
                Err(e) => state.fleet_lost(&e, now),
            },
            GovernorMsg::Mode(reply) => {
                let _ = reply.send((state.lanes.mode(), state.live));
                return Ok(());
            }
            GovernorMsg::KeyChecked {
                upstream,
                key,
                check,
            } => {
                if let Some((name, label)) = state.lanes.key_checked(upstream, key, check, now) {
                    tracing::info!(upstream = %name, key = %label, ?check, "API key back in service after a check");
                }
            }
            GovernorMsg::InjectPanic => panic!("injected panic in governor"),
        }
        state.after(&myself, now);
        Ok(())
    }
}

/// `seawall_fleet_mode` (0 alone, 1 shared, 2 local share) and `seawall_fleet_instances`.
fn publish_mode(mode: FleetMode, live: usize) {
    let value = match mode {
        FleetMode::Alone => 0.0,
        FleetMode::Shared => 1.0,
        FleetMode::Local { .. } => 2.0,
    };
    metrics::gauge!("seawall_fleet_mode").set(value);
    metrics::gauge!("seawall_fleet_instances").set(live as f64);
}
