//! `GovernorActor`: turns organization-wide limits into smooth traffic that never trips the API's
//! limiter. It owns every token bucket, the key pool, the priority lanes and the bulkheads.
//!
//! Hand-written: rate governance is the product. The rules:
//!
//! - **Buckets** ([`Buckets`]: requests, input and output tokens per minute, continuous refill)
//!   exist per upstream, per key organization and per model class. Keys of one organization
//!   share them; keys of different organizations have their own.
//! - **Reserve** grants at once when budget, a usable key and the feature's bulkhead allow it, and
//!   nobody of the same or a higher lane is already waiting (FIFO within a lane; interactive
//!   before background). Otherwise the request is parked in its lane until the refill (or a
//!   settle) lets it through, which paces a burst across the refill instead of firing it at once.
//!   A wait that could not end within the caller's `max_wait` is refused at once, not parked.
//! - **Lanes**: interactive calls are granted before background ones; background may not dip
//!   into the interactive lane's reserved share of a bucket.
//! - **Bulkheads**: a feature may have at most N calls in flight and at most a share of each
//!   bucket, so a runaway batch job cannot starve chat.
//! - **Server truth**: `anthropic-ratelimit-*-remaining` lowers a bucket to what the server says
//!   is left (a shared organization, another client); a 429 with `retry-after` pauses that key
//!   until then, shifting traffic to the other keys; a 401 quarantines the key for good.
//!
//! Handlers never await: each message is a few policy calls. Parked replies are answered from
//! later messages or from a timer armed with `send_after` and tagged with an epoch.
//!
//! Metrics: waits (parked reservations) and how long they waited, refusals by reason, and the
//! level of every bucket as a gauge, set on each reservation and settlement. The gauge handles
//! are made once per bucket group, so keeping them current costs three atomic stores.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::call::Lane;
use crate::clock;
use crate::policy::bucket::{Buckets, Dimension, Level, Limits, Reservation};
use crate::timer::Timer;
use crate::upstream::{Cost, Headers};

/// One upstream as the governor sees it.
#[derive(Clone, Debug)]
pub struct UpstreamBudget {
    /// The upstream's name (for status and logs).
    pub name: String,
    /// Limits per model class; class 0 is the upstream's default.
    pub class_limits: Vec<Limits>,
    /// Non-secret labels of its keys, one per key slot.
    pub key_labels: Vec<String>,
    /// The organization of each key slot (an index; keys with the same index share buckets).
    pub key_orgs: Vec<usize>,
}

/// A feature's bulkhead.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Bulkhead {
    /// At most this many calls of the feature in flight at once.
    pub max_concurrent: Option<u32>,
    /// At most this share (0, 1] of every bucket.
    pub budget_share: Option<f64>,
}

impl Bulkhead {
    /// Check the settings; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_concurrent == Some(0) {
            return Err("max_concurrent must be at least 1".into());
        }
        if let Some(s) = self.budget_share {
            if !(s > 0.0 && s <= 1.0) {
                return Err(format!("budget_share must be in (0, 1], got {s}"));
            }
        }
        Ok(())
    }
}

/// Start arguments.
#[derive(Clone, Debug, Default)]
pub struct GovernorArgs {
    /// One entry per upstream, indexed like the runtime's upstream list.
    pub upstreams: Vec<UpstreamBudget>,
    /// Bulkheads, indexed by feature id.
    pub bulkheads: Vec<(String, Bulkhead)>,
    /// Share (0..1) of every bucket that background calls may not use: the interactive lane's
    /// reserve.
    pub interactive_reserve: f64,
    /// Transit allowance of the organization buckets (see [`Buckets::with_transit_allowance`]).
    pub transit_allowance: Duration,
}

/// Proof of a reservation, handed back in `Settle`. It carries what was reserved, so the
/// governor keeps no table of open reservations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket {
    upstream: usize,
    class: usize,
    /// The key slot to use.
    pub key: usize,
    feature: Option<usize>,
    reserved: Cost,
    generation: u64,
}

/// Why the governor refused a reservation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum RejectReason {
    /// Not enough budget within the allowed wait.
    NoBudget {
        /// The dimension that was short.
        dimension: Dimension,
    },
    /// The cost is larger than the limit itself: it can never be granted.
    TooLarge {
        /// The dimension it exceeds.
        dimension: Dimension,
    },
    /// Every key of the upstream is quarantined.
    NoUsableKey,
    /// Every usable key is paused by a 429's retry-after.
    KeysPaused,
    /// The feature's bulkhead is full.
    Bulkhead,
}

impl RejectReason {
    /// A short stable name for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            RejectReason::NoBudget { .. } => "no_budget",
            RejectReason::TooLarge { .. } => "too_large",
            RejectReason::NoUsableKey => "no_usable_key",
            RejectReason::KeysPaused => "keys_paused",
            RejectReason::Bulkhead => "bulkhead",
        }
    }
}

impl Ticket {
    /// What this reservation took from the buckets.
    pub fn reserved(&self) -> Cost {
        self.reserved
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RejectReason::NoBudget { dimension } => {
                write!(f, "no {} budget in time", dimension.as_str())
            }
            RejectReason::TooLarge { dimension } => {
                write!(
                    f,
                    "the call exceeds the {} limit itself",
                    dimension.as_str()
                )
            }
            RejectReason::NoUsableKey => write!(f, "every API key is quarantined"),
            RejectReason::KeysPaused => write!(f, "every API key is paused by a 429"),
            RejectReason::Bulkhead => write!(f, "the feature's bulkhead is full"),
        }
    }
}

/// The governor's answer to `Reserve`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Go now with the ticket's key; the budget is taken.
    Grant {
        /// The reservation.
        ticket: Ticket,
        /// When the attempt may start (the grant instant).
        at: Instant,
    },
    /// No budget for this call within the allowed wait; nothing was taken.
    Reject {
        /// Why.
        reason: RejectReason,
        /// When the call could have been granted, if known.
        earliest: Option<Instant>,
    },
}

/// What a request asks of the governor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReserveRequest {
    /// Upstream index.
    pub upstream: usize,
    /// Model class within the upstream (0: the default class).
    pub class: usize,
    /// Estimated cost.
    pub cost: Cost,
    /// Priority lane.
    pub lane: Lane,
    /// Feature id, for bulkheads.
    pub feature: Option<usize>,
    /// The longest the caller accepts to wait (zero: now or never).
    pub max_wait: Duration,
}

/// The server's view of the remaining budget, read from `anthropic-ratelimit-*` headers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerLimits {
    /// (limit, remaining) for requests.
    pub requests: Option<(Option<u64>, u64)>,
    /// (limit, remaining) for input tokens.
    pub input_tokens: Option<(Option<u64>, u64)>,
    /// (limit, remaining) for output tokens.
    pub output_tokens: Option<(Option<u64>, u64)>,
}

impl ServerLimits {
    /// Read the `anthropic-ratelimit-{requests,input-tokens,output-tokens}-{limit,remaining}`
    /// headers. Missing or malformed values are simply absent.
    pub fn from_headers(headers: &Headers) -> Self {
        let dim = |name: &str| {
            let num = |suffix: &str| {
                headers
                    .get(&format!("anthropic-ratelimit-{name}-{suffix}"))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            };
            num("remaining").map(|remaining| (num("limit"), remaining))
        };
        Self {
            requests: dim("requests"),
            input_tokens: dim("input-tokens"),
            output_tokens: dim("output-tokens"),
        }
    }
}

/// Messages the governor understands.
pub enum GovernorMsg {
    /// Take budget for one attempt; answered now, or later from the lane queue.
    Reserve(ReserveRequest, RpcReplyPort<Decision>),
    /// Correct a reservation after the attempt.
    Settle {
        /// The reservation.
        ticket: Ticket,
        /// What the attempt really cost (`Cost::default()` when no request was sent).
        actual: Cost,
        /// The server's rate-limit headers.
        server: ServerLimits,
        /// The key was refused (401): quarantine it.
        key_bad: bool,
        /// A 429 said to come back after this long: pause the key until then.
        key_pause: Option<Duration>,
    },
    /// A usable key of an upstream (least loaded), for calls that are not attempts (token
    /// counting); `None` when every key is quarantined or paused.
    PickKey(usize, RpcReplyPort<Option<usize>>),
    /// Bucket levels, keys and queues, for status pages and tests.
    Status(RpcReplyPort<Vec<UpstreamStatus>>),
    /// A scheduled timer fired.
    #[doc(hidden)]
    Timer(u64),
    /// Fault injection for supervision tests and chaos drills: the actor panics.
    #[doc(hidden)]
    InjectPanic,
}

/// One upstream's budget as reported by `Status`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct UpstreamStatus {
    /// The upstream's name.
    pub upstream: String,
    /// Bucket levels per (organization, class) that has been used.
    pub buckets: Vec<GroupStatus>,
    /// Labels of quarantined keys.
    pub quarantined_keys: Vec<String>,
    /// Labels of keys paused by a 429, with the time left.
    pub paused_keys: Vec<(String, Duration)>,
    /// Attempts in flight per key slot.
    pub in_flight: Vec<u32>,
    /// Requests waiting for budget: (interactive, background).
    pub waiting: (usize, usize),
}

/// The levels of one bucket group.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GroupStatus {
    /// Organization index.
    pub org: usize,
    /// Model class index.
    pub class: usize,
    /// Levels of the limited dimensions.
    pub levels: Vec<Level>,
}

struct KeySlot {
    label: String,
    org: usize,
    quarantined: bool,
    paused_until: Option<Instant>,
    in_flight: u32,
}

impl KeySlot {
    fn usable(&self, now: Instant) -> bool {
        !self.quarantined && self.paused_until.is_none_or(|t| t <= now)
    }
}

struct UpstreamState {
    name: String,
    class_limits: Vec<Limits>,
    keys: Vec<KeySlot>,
    /// Buckets per (org, class), created on first use.
    buckets: HashMap<(usize, usize), Buckets>,
    /// `seawall_bucket_level` gauges per (org, class), made with the buckets.
    gauges: HashMap<(usize, usize), [metrics::Gauge; 3]>,
}

fn level_gauges(upstream: &str, org: usize, class: usize) -> [metrics::Gauge; 3] {
    Dimension::ALL.map(|dim| {
        metrics::gauge!(
            "seawall_bucket_level",
            "upstream" => upstream.to_owned(),
            "org" => org.to_string(),
            "model_class" => class.to_string(),
            "dimension" => dim.as_str()
        )
    })
}

struct FeatureState {
    bulkhead: Bulkhead,
    in_flight: u32,
    /// The feature's share of each (upstream, org, class) group.
    buckets: HashMap<(usize, usize, usize), Buckets>,
}

struct Parked {
    req: ReserveRequest,
    reply: RpcReplyPort<Decision>,
    expires: Instant,
    /// When it was parked, for the wait metric.
    since: Instant,
}

/// Why a request could not be granted now.
#[derive(Clone, Copy, Debug)]
struct Blocked {
    reason: RejectReason,
    /// When budget could allow it (None: unknown or never).
    earliest: Option<Instant>,
}

/// The actor.
pub struct GovernorActor;

/// The actor's state.
pub struct GovernorState {
    upstreams: Vec<UpstreamState>,
    features: Vec<FeatureState>,
    interactive_reserve: f64,
    transit_allowance: Duration,
    interactive: VecDeque<Parked>,
    background: VecDeque<Parked>,
    generation: u64,
    timer: Timer,
}

/// Each governor incarnation gets a new generation so tickets from before a restart are ignored.
static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn scaled(limits: Limits, share: f64) -> Limits {
    let s = |v: Option<u64>| v.map(|v| ((v as f64 * share).floor() as u64).max(1));
    Limits {
        requests_per_minute: s(limits.requests_per_minute),
        input_tokens_per_minute: s(limits.input_tokens_per_minute),
        output_tokens_per_minute: s(limits.output_tokens_per_minute),
    }
}

/// `share` of each limited dimension, as a cost that must stay in the bucket.
fn floor_cost(limits: Limits, share: f64) -> Cost {
    let f = |v: Option<u64>| v.map(|v| (v as f64 * share).ceil() as u64).unwrap_or(0);
    Cost {
        requests: f(limits.requests_per_minute),
        input_tokens: f(limits.input_tokens_per_minute),
        output_tokens: f(limits.output_tokens_per_minute),
    }
}

fn plus(a: Cost, b: Cost) -> Cost {
    Cost {
        requests: a.requests.saturating_add(b.requests),
        input_tokens: a.input_tokens.saturating_add(b.input_tokens),
        output_tokens: a.output_tokens.saturating_add(b.output_tokens),
    }
}

/// Can `cost` be taken from `buckets` now while leaving `floor` in it? Ok, or when it could.
fn fits(buckets: &mut Buckets, cost: Cost, floor: Cost, now: Instant) -> Result<(), Blocked> {
    match buckets.earliest(plus(cost, floor), now) {
        Some(at) if at <= now => Ok(()),
        Some(at) => Err(Blocked {
            reason: RejectReason::NoBudget {
                dimension: short_dimension(buckets, cost, now),
            },
            earliest: Some(at),
        }),
        // Too large with the floor: the floor does not apply to a call that only a full bucket
        // can hold (it would never go otherwise).
        None => match buckets.earliest(cost, now) {
            Some(at) if at <= now && floor == Cost::default() => Ok(()),
            Some(at) => Err(Blocked {
                reason: RejectReason::NoBudget {
                    dimension: short_dimension(buckets, cost, now),
                },
                earliest: Some(at),
            }),
            None => Err(Blocked {
                reason: RejectReason::TooLarge {
                    dimension: short_dimension(buckets, cost, now),
                },
                earliest: None,
            }),
        },
    }
}

fn short_dimension(buckets: &mut Buckets, cost: Cost, now: Instant) -> Dimension {
    match buckets.reserve(cost, Duration::ZERO, now) {
        Reservation::Refused { dimension, .. } => dimension,
        Reservation::Granted { .. } => {
            // Only a probe: give it straight back.
            buckets.settle(cost, Cost::default(), now);
            Dimension::Requests
        }
    }
}

fn later(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

impl GovernorState {
    fn buckets(
        &mut self,
        upstream: usize,
        org: usize,
        class: usize,
        now: Instant,
    ) -> Option<&mut Buckets> {
        let lag = self.transit_allowance;
        let up = self.upstreams.get_mut(upstream)?;
        let limits = up
            .class_limits
            .get(class)
            .or_else(|| up.class_limits.first())
            .copied()
            .unwrap_or_default();
        if !up.gauges.contains_key(&(org, class)) {
            let gauges = level_gauges(&up.name, org, class);
            up.gauges.insert((org, class), gauges);
        }
        Some(
            up.buckets
                .entry((org, class))
                .or_insert_with(|| Buckets::new(limits, now).with_transit_allowance(lag)),
        )
    }

    /// Set the level gauges of one bucket group to what is left now.
    fn publish_levels(&mut self, upstream: usize, org: usize, class: usize, now: Instant) {
        let Some(up) = self.upstreams.get_mut(upstream) else {
            return;
        };
        let (Some(b), Some(g)) = (
            up.buckets.get_mut(&(org, class)),
            up.gauges.get(&(org, class)),
        ) else {
            return;
        };
        for (dim, gauge) in Dimension::ALL.iter().zip(g) {
            if let Some(level) = b.available(*dim, now) {
                gauge.set(level);
            }
        }
    }

    /// Grant `req` now if everything allows it.
    fn try_grant(&mut self, req: &ReserveRequest, now: Instant) -> Result<Ticket, Blocked> {
        if let Some(f) = req.feature.and_then(|f| self.features.get(f)) {
            if f.bulkhead.max_concurrent.is_some_and(|m| f.in_flight >= m) {
                return Err(Blocked {
                    reason: RejectReason::Bulkhead,
                    earliest: None,
                });
            }
        }
        let Some(up) = self.upstreams.get(req.upstream) else {
            return Err(Blocked {
                reason: RejectReason::NoUsableKey,
                earliest: None,
            });
        };
        // Least-loaded usable keys first.
        let mut keys: Vec<(usize, u32, usize)> = up
            .keys
            .iter()
            .enumerate()
            .filter(|(_, k)| k.usable(now))
            .map(|(i, k)| (i, k.in_flight, k.org))
            .collect();
        if keys.is_empty() {
            let paused = up
                .keys
                .iter()
                .filter(|k| !k.quarantined)
                .filter_map(|k| k.paused_until)
                .min();
            return Err(Blocked {
                reason: if paused.is_some() {
                    RejectReason::KeysPaused
                } else {
                    RejectReason::NoUsableKey
                },
                earliest: paused,
            });
        }
        keys.sort_by_key(|&(i, load, _)| (load, i));
        let reserve = match req.lane {
            Lane::Interactive => 0.0,
            Lane::Background => self.interactive_reserve,
        };
        let mut blocked: Option<Blocked> = None;
        for (key, _, org) in keys {
            let (upstream, class) = (req.upstream, req.class);
            let Some(buckets) = self.buckets(upstream, org, class, now) else {
                continue;
            };
            let floor = floor_cost(buckets.limits(), reserve);
            let limits = buckets.limits();
            let group = fits(buckets, req.cost, floor, now);
            let share = match (group, req.feature) {
                (Ok(()), Some(f)) => {
                    self.feature_fits(f, upstream, org, class, limits, req.cost, now)
                }
                (r, _) => r,
            };
            match share {
                Ok(()) => return Ok(self.take(req, key, org, now)),
                Err(b) => {
                    blocked = Some(match blocked {
                        Some(prev) => Blocked {
                            reason: prev.reason,
                            earliest: later(prev.earliest, b.earliest),
                        },
                        None => b,
                    });
                }
            }
        }
        Err(blocked.unwrap_or(Blocked {
            reason: RejectReason::NoUsableKey,
            earliest: None,
        }))
    }

    #[allow(clippy::too_many_arguments)]
    fn feature_fits(
        &mut self,
        feature: usize,
        upstream: usize,
        org: usize,
        class: usize,
        limits: Limits,
        cost: Cost,
        now: Instant,
    ) -> Result<(), Blocked> {
        let Some(f) = self.features.get_mut(feature) else {
            return Ok(());
        };
        let Some(share) = f.bulkhead.budget_share else {
            return Ok(());
        };
        let buckets = f
            .buckets
            .entry((upstream, org, class))
            .or_insert_with(|| Buckets::new(scaled(limits, share), now));
        fits(buckets, cost, Cost::default(), now)
    }

    /// Take the budget for a grant that `try_grant` found possible.
    fn take(&mut self, req: &ReserveRequest, key: usize, org: usize, now: Instant) -> Ticket {
        if let Some(b) = self.buckets(req.upstream, org, req.class, now) {
            let _ = b.reserve(req.cost, Duration::ZERO, now);
        }
        self.publish_levels(req.upstream, org, req.class, now);
        if let Some(f) = req.feature.and_then(|f| self.features.get_mut(f)) {
            f.in_flight += 1;
            if let Some(b) = f.buckets.get_mut(&(req.upstream, org, req.class)) {
                let _ = b.reserve(req.cost, Duration::ZERO, now);
            }
        }
        if let Some(k) = self
            .upstreams
            .get_mut(req.upstream)
            .and_then(|u| u.keys.get_mut(key))
        {
            k.in_flight += 1;
        }
        Ticket {
            upstream: req.upstream,
            class: req.class,
            key,
            feature: req.feature,
            reserved: req.cost,
            generation: self.generation,
        }
    }

    /// A new reservation: grant, park, or refuse at once.
    fn reserve(&mut self, req: ReserveRequest, reply: RpcReplyPort<Decision>, now: Instant) {
        let queue_empty = match req.lane {
            Lane::Interactive => self.interactive.is_empty(),
            Lane::Background => self.interactive.is_empty() && self.background.is_empty(),
        };
        let blocked = if queue_empty {
            match self.try_grant(&req, now) {
                Ok(ticket) => {
                    return self.answer(reply, Decision::Grant { ticket, at: now }, &req, None, now)
                }
                Err(b) => b,
            }
        } else {
            // Others are waiting ahead: estimate when this one's turn could come.
            self.estimate(&req, now)
        };
        let permanent = matches!(
            blocked.reason,
            RejectReason::NoUsableKey | RejectReason::TooLarge { .. }
        );
        let doomed = blocked
            .earliest
            .is_some_and(|at| at.saturating_duration_since(now) > req.max_wait);
        if permanent || doomed || req.max_wait.is_zero() {
            return self.answer(
                reply,
                Decision::Reject {
                    reason: blocked.reason,
                    earliest: blocked.earliest,
                },
                &req,
                None,
                now,
            );
        }
        if let Some(up) = self.upstreams.get(req.upstream) {
            metrics::counter!(
                "seawall_governor_waits_total",
                "upstream" => up.name.clone(),
                "lane" => req.lane.as_str()
            )
            .increment(1);
        }
        let parked = Parked {
            req,
            reply,
            expires: now + req.max_wait,
            since: now,
        };
        match req.lane {
            Lane::Interactive => self.interactive.push_back(parked),
            Lane::Background => self.background.push_back(parked),
        }
    }

    /// When a request could be granted behind everyone waiting ahead of it in its lane (and, for
    /// background, the interactive lane).
    fn estimate(&mut self, req: &ReserveRequest, now: Instant) -> Blocked {
        let mut ahead = req.cost;
        let same = |p: &&Parked| p.req.upstream == req.upstream && p.req.class == req.class;
        for p in self.interactive.iter().filter(same) {
            ahead = plus(ahead, p.req.cost);
        }
        if req.lane == Lane::Background {
            for p in self.background.iter().filter(same) {
                ahead = plus(ahead, p.req.cost);
            }
        }
        let orgs: Vec<usize> = self
            .upstreams
            .get(req.upstream)
            .map(|u| {
                u.keys
                    .iter()
                    .filter(|k| !k.quarantined)
                    .map(|k| k.org)
                    .collect()
            })
            .unwrap_or_default();
        let mut earliest = None;
        for org in orgs {
            if let Some(b) = self.buckets(req.upstream, org, req.class, now) {
                earliest = later(earliest, b.earliest(ahead, now));
            }
        }
        Blocked {
            reason: RejectReason::NoBudget {
                dimension: Dimension::Requests,
            },
            earliest,
        }
    }

    /// Send a decision; a caller that gave up never uses its grant, so hand that budget back.
    /// `since`: when the request was parked, if it waited.
    fn answer(
        &mut self,
        reply: RpcReplyPort<Decision>,
        decision: Decision,
        req: &ReserveRequest,
        since: Option<Instant>,
        now: Instant,
    ) {
        if let Some(up) = self.upstreams.get(req.upstream) {
            match decision {
                Decision::Reject { reason, .. } => metrics::counter!(
                    "seawall_governor_rejections_total",
                    "upstream" => up.name.clone(),
                    "reason" => reason.as_str()
                )
                .increment(1),
                Decision::Grant { .. } => {
                    if let Some(since) = since {
                        metrics::histogram!(
                            "seawall_governor_wait_seconds",
                            "upstream" => up.name.clone(),
                            "lane" => req.lane.as_str()
                        )
                        .record(now.saturating_duration_since(since).as_secs_f64());
                    }
                }
            }
        }
        if let Err(ractor::MessagingErr::SendErr(Decision::Grant { ticket, .. })) =
            reply.send(decision)
        {
            self.settle(
                ticket,
                Cost::default(),
                ServerLimits::default(),
                false,
                None,
                now,
            );
        }
    }

    /// Grant what the queues allow now, expire what waited too long; return the next instant
    /// worth looking again.
    fn pump(&mut self, now: Instant) -> Option<Instant> {
        let mut next = None;
        for lane in [Lane::Interactive, Lane::Background] {
            let mut queue = std::mem::take(match lane {
                Lane::Interactive => &mut self.interactive,
                Lane::Background => &mut self.background,
            });
            let mut kept = VecDeque::with_capacity(queue.len());
            // Budget is handed out in arrival order: once one waiter is short of budget, the
            // ones behind it (and the lower lane) wait too. Waiters held by their bulkhead or
            // paused keys do not block others.
            let mut budget_blocked = lane == Lane::Background && !self.interactive.is_empty();
            while let Some(p) = queue.pop_front() {
                if p.reply.is_closed() {
                    continue; // the caller gave up
                }
                if p.expires <= now {
                    let earliest = self.estimate(&p.req, now).earliest;
                    self.answer(
                        p.reply,
                        Decision::Reject {
                            reason: RejectReason::NoBudget {
                                dimension: Dimension::Requests,
                            },
                            earliest,
                        },
                        &p.req,
                        Some(p.since),
                        now,
                    );
                    continue;
                }
                if !budget_blocked {
                    match self.try_grant(&p.req, now) {
                        Ok(ticket) => {
                            self.answer(
                                p.reply,
                                Decision::Grant { ticket, at: now },
                                &p.req,
                                Some(p.since),
                                now,
                            );
                            continue;
                        }
                        Err(b) => {
                            if matches!(
                                b.reason,
                                RejectReason::NoUsableKey | RejectReason::TooLarge { .. }
                            ) {
                                self.answer(
                                    p.reply,
                                    Decision::Reject {
                                        reason: b.reason,
                                        earliest: b.earliest,
                                    },
                                    &p.req,
                                    Some(p.since),
                                    now,
                                );
                                continue;
                            }
                            if matches!(b.reason, RejectReason::NoBudget { .. }) {
                                budget_blocked = true;
                            }
                            next = later(next, b.earliest);
                        }
                    }
                }
                next = later(next, Some(p.expires));
                kept.push_back(p);
            }
            match lane {
                Lane::Interactive => self.interactive = kept,
                Lane::Background => self.background = kept,
            }
        }
        next
    }

    fn settle(
        &mut self,
        ticket: Ticket,
        actual: Cost,
        server: ServerLimits,
        key_bad: bool,
        key_pause: Option<Duration>,
        now: Instant,
    ) {
        if ticket.generation != self.generation {
            return; // reserved from a governor that has since been restarted
        }
        let Some(org) = self
            .upstreams
            .get(ticket.upstream)
            .and_then(|u| u.keys.get(ticket.key))
            .map(|k| k.org)
        else {
            return;
        };
        if let Some(b) = self.buckets(ticket.upstream, org, ticket.class, now) {
            b.settle(ticket.reserved, actual, now);
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
        self.publish_levels(ticket.upstream, org, ticket.class, now);
        if let Some(f) = ticket.feature.and_then(|f| self.features.get_mut(f)) {
            f.in_flight = f.in_flight.saturating_sub(1);
            if let Some(b) = f.buckets.get_mut(&(ticket.upstream, org, ticket.class)) {
                b.settle(ticket.reserved, actual, now);
            }
        }
        let Some(up) = self.upstreams.get_mut(ticket.upstream) else {
            return;
        };
        let name = up.name.clone();
        if let Some(slot) = up.keys.get_mut(ticket.key) {
            slot.in_flight = slot.in_flight.saturating_sub(1);
            if key_bad && !slot.quarantined {
                slot.quarantined = true;
                tracing::warn!(upstream = %name, key = %slot.label, "API key refused (401): quarantined");
            }
            if let Some(pause) = key_pause {
                let until = now + pause;
                slot.paused_until = Some(slot.paused_until.map_or(until, |t| t.max(until)));
                tracing::info!(upstream = %name, key = %slot.label, pause_ms = pause.as_millis() as u64, "429: key paused");
            }
        }
    }

    /// Re-run the queues and re-arm the timer for the next instant worth a look.
    fn after(&mut self, myself: &ActorRef<GovernorMsg>, now: Instant) {
        let next = self.pump(now);
        self.timer.rearm(myself, next, now, GovernorMsg::Timer);
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
        Ok(GovernorState {
            upstreams: args
                .upstreams
                .into_iter()
                .map(|u| UpstreamState {
                    name: u.name,
                    class_limits: u.class_limits,
                    keys: u
                        .key_labels
                        .into_iter()
                        .enumerate()
                        .map(|(i, label)| KeySlot {
                            label,
                            org: u.key_orgs.get(i).copied().unwrap_or(0),
                            quarantined: false,
                            paused_until: None,
                            in_flight: 0,
                        })
                        .collect(),
                    buckets: HashMap::new(),
                    gauges: HashMap::new(),
                })
                .collect(),
            features: args
                .bulkheads
                .into_iter()
                .map(|(_, bulkhead)| FeatureState {
                    bulkhead,
                    in_flight: 0,
                    buckets: HashMap::new(),
                })
                .collect(),
            interactive_reserve: args.interactive_reserve.clamp(0.0, 1.0),
            transit_allowance: args.transit_allowance,
            interactive: VecDeque::new(),
            background: VecDeque::new(),
            generation: GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
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
            GovernorMsg::Reserve(req, reply) => {
                state.reserve(req, reply, now);
                // A grant or refusal needs no pump; a parked request may need the timer.
                if state.interactive.is_empty() && state.background.is_empty() {
                    return Ok(());
                }
            }
            GovernorMsg::Settle {
                ticket,
                actual,
                server,
                key_bad,
                key_pause,
            } => state.settle(ticket, actual, server, key_bad, key_pause, now),
            GovernorMsg::PickKey(upstream, reply) => {
                let key = state.upstreams.get(upstream).and_then(|u| {
                    u.keys
                        .iter()
                        .enumerate()
                        .filter(|(_, k)| k.usable(now))
                        .min_by_key(|(i, k)| (k.in_flight, *i))
                        .map(|(i, _)| i)
                });
                let _ = reply.send(key);
                return Ok(());
            }
            GovernorMsg::Status(reply) => {
                let status = state
                    .upstreams
                    .iter_mut()
                    .enumerate()
                    .map(|(i, u)| {
                        let mut buckets: Vec<GroupStatus> = u
                            .buckets
                            .iter_mut()
                            .map(|(&(org, class), b)| GroupStatus {
                                org,
                                class,
                                levels: b.levels(now),
                            })
                            .collect();
                        buckets.sort_by_key(|g| (g.org, g.class));
                        let waiting =
                            |q: &VecDeque<Parked>| q.iter().filter(|p| p.req.upstream == i).count();
                        UpstreamStatus {
                            upstream: u.name.clone(),
                            buckets,
                            quarantined_keys: u
                                .keys
                                .iter()
                                .filter(|k| k.quarantined)
                                .map(|k| k.label.clone())
                                .collect(),
                            paused_keys: u
                                .keys
                                .iter()
                                .filter_map(|k| {
                                    k.paused_until
                                        .filter(|t| *t > now)
                                        .map(|t| (k.label.clone(), t - now))
                                })
                                .collect(),
                            in_flight: u.keys.iter().map(|k| k.in_flight).collect(),
                            waiting: (waiting(&state.interactive), waiting(&state.background)),
                        }
                    })
                    .collect();
                let _ = reply.send(status);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_limits_read_known_headers_only() {
        let mut h = Headers::default();
        h.insert("anthropic-ratelimit-requests-limit", "50");
        h.insert("anthropic-ratelimit-requests-remaining", "49");
        h.insert("anthropic-ratelimit-input-tokens-remaining", "garbage");
        h.insert("anthropic-ratelimit-output-tokens-remaining", "800");
        let s = ServerLimits::from_headers(&h);
        assert_eq!(s.requests, Some((Some(50), 49)));
        assert_eq!(s.input_tokens, None);
        assert_eq!(s.output_tokens, Some((None, 800)));
    }

    #[test]
    fn floor_and_share_scale_each_dimension() {
        let l = Limits {
            requests_per_minute: Some(50),
            input_tokens_per_minute: None,
            output_tokens_per_minute: Some(1000),
        };
        assert_eq!(
            floor_cost(l, 0.2),
            Cost {
                requests: 10,
                input_tokens: 0,
                output_tokens: 200
            }
        );
        let s = scaled(l, 0.1);
        assert_eq!(s.requests_per_minute, Some(5));
        assert_eq!(s.input_tokens_per_minute, None);
        assert_eq!(s.output_tokens_per_minute, Some(100));
    }
}
