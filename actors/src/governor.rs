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
use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::clock;
use crate::policy::bucket::Dimension;
use crate::policy::lanes::{
    Answer, Decision, GovernorArgs, Group, Lanes, ReserveRequest, Reserved, Settlement, WaiterId,
};
use crate::protocol::{GovernorMsg, Reply};
use crate::timer::Timer;

/// The actor.
pub struct GovernorActor;

/// The actor's state.
pub struct GovernorState {
    lanes: Lanes,
    /// Parked callers by waiter id.
    waiting: HashMap<WaiterId, Reply<Decision>>,
    next_waiter: WaiterId,
    /// Names for the gauges' labels: per upstream, its organizations' and classes' names.
    org_names: Vec<Vec<String>>,
    class_names: Vec<Vec<String>>,
    /// `seawall_bucket_level` gauges per bucket group, made on first use.
    gauges: HashMap<Group, [metrics::Gauge; 3]>,
    timer: Timer,
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
        reply: Reply<Decision>,
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

    fn reserve(&mut self, req: ReserveRequest, reply: Reply<Decision>, now: Instant) {
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
        let next = if self.lanes.has_waiters() {
            self.lanes.poll_timeout()
        } else {
            None
        };
        self.timer.rearm(myself, next, now, GovernorMsg::Timer);
        self.publish_levels(now);
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
    type Arguments = GovernorArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: GovernorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
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
        })
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
            GovernorMsg::InjectPanic => panic!("injected panic in governor"),
        }
        state.after(&myself, now);
        Ok(())
    }
}
