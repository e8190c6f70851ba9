//! The governor's rules, sans I/O: who gets budget, when, and with which key.
//!
//! [`Lanes`] owns every token bucket, the key pool,
//! the priority lanes and the bulkheads; it deals in waiter ids, never in reply ports, so the
//! actor that drives it (`GovernorActor`) keeps only the id -> port map, the timer and the
//! metrics. Time is an argument.
//!
//! - **Buckets** ([`Buckets`]: requests, input and output tokens per minute, continuous refill)
//!   exist per upstream, per key organization and per model class. Keys of one organization
//!   share them; keys of different organizations have their own.
//! - **Reserve** grants at once when budget, a usable key and the feature's bulkhead allow it, and
//!   nobody of the same or a higher lane already waits at that bucket group (FIFO within a lane;
//!   interactive before background). Otherwise the request is parked in its lane until the refill
//!   (or a settle) lets it through, which paces a burst across the refill instead of firing it at
//!   once. A wait that could not end within the caller's `max_wait` is refused at once, not parked.
//! - **Gates**: a parked waiter short of budget waits at one gate, the group (or the feature's
//!   share of a group) that would serve it soonest, and holds back only later calls that need that
//!   gate. One upstream's spent budget never stalls another upstream's, organization's, class's or
//!   feature's calls.
//! - **Lanes**: interactive calls are granted before background ones; background may not dip
//!   into the interactive lane's reserved share of a bucket.
//! - **Bulkheads**: a feature may have at most N calls in flight and at most a share of each
//!   bucket, so a runaway batch job cannot starve chat.
//! - **Keys**: the least-loaded usable key is chosen; a 429 with `retry-after` pauses that key
//!   until then, shifting traffic to the other keys; a 401 quarantines it.
//! - **Server truth**: `anthropic-ratelimit-*-remaining` lowers a bucket to what the server says
//!   is left (a shared organization, another client).
//!
//! Rooms: this file holds the lanes, FIFO per gate, the reserve and bulkheads; `keys.rs` the key
//! pool and quarantine; `leasing.rs` how a group is funded (own buckets or fleet leases).

mod keys;
mod leasing;
mod status;

use keys::KeySlot;
pub use keys::{KeyCheck, KeyCheckStatus};
use leasing::{cost_of, dims, funding, limit_dims, Funding};
pub use leasing::{FleetMode, LeaseAsk};
pub use status::{GroupStatus, UpstreamStatus};

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::call::Lane;
use crate::policy::bucket::{Buckets, Dimension, Limits, Reservation};
use crate::policy::invalid::Invalid;
use crate::wire::{Cost, Headers};

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
    /// The organizations' labels, by index (for metrics and status).
    pub org_names: Vec<String>,
    /// The model classes' names, by index (class 0: `default`).
    pub class_names: Vec<String>,
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
    /// Check the settings.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.max_concurrent == Some(0) {
            return Err(Invalid::new("max_concurrent", "must be at least 1"));
        }
        if let Some(s) = self.budget_share {
            if !(s > 0.0 && s <= 1.0) {
                return Err(Invalid::new(
                    "budget_share",
                    format!("must be in (0, 1], got {s}"),
                ));
            }
        }
        Ok(())
    }
}

/// Check an interactive reserve: the share (in `[0, 1)`) of every bucket background calls may
/// not use.
pub fn validate_interactive_reserve(share: f64) -> Result<(), Invalid> {
    if (0.0..1.0).contains(&share) {
        Ok(())
    } else {
        Err(Invalid::new(
            "interactive_reserve",
            format!("must be in [0, 1), got {share}"),
        ))
    }
}

/// What the governor is built from.
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
    /// The organization buckets are a fleet's, shared with other instances: budget is leased
    /// from them in slices (see [`Funding`]).
    pub shared: bool,
}

/// Proof of a reservation, handed back in a settlement. It carries what was reserved, so the
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

impl Ticket {
    /// What this reservation took from the buckets.
    pub fn reserved(&self) -> Cost {
        self.reserved
    }

    /// A ticket for tests of the policies that handle tickets without a governor.
    #[cfg(test)]
    pub(crate) fn for_test(key: usize, reserved: Cost) -> Self {
        Self {
            upstream: 0,
            class: 0,
            key,
            feature: None,
            reserved,
            generation: 0,
        }
    }
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

    /// True when no wait can make the request fit.
    fn is_final(&self) -> bool {
        matches!(
            self,
            RejectReason::NoUsableKey | RejectReason::TooLarge { .. }
        )
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

/// The governor's answer to a reservation.
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

/// What an attempt really cost and what the server said, to correct its reservation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settlement {
    /// The reservation.
    pub ticket: Ticket,
    /// What the attempt really cost (`Cost::default()` when no request was sent).
    pub actual: Cost,
    /// The server's rate-limit headers.
    pub server: ServerLimits,
    /// The key was refused (401): quarantine it.
    pub key_bad: bool,
    /// A 429 said to come back after this long: pause the key until then.
    pub key_pause: Option<Duration>,
}

impl Settlement {
    /// Nothing was sent: the whole reservation comes back.
    pub fn unused(ticket: Ticket) -> Self {
        Self {
            ticket,
            actual: Cost::default(),
            server: ServerLimits::default(),
            key_bad: false,
            key_pause: None,
        }
    }
}

/// What a settlement changed about a key, for the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyNews {
    /// The key just quarantined: (upstream name, key label).
    pub quarantined: Option<(String, String)>,
    /// The key just paused: (upstream name, key label, pause).
    pub paused: Option<(String, String, Duration)>,
}

/// Identifies a parked reservation's caller; the driver maps it to its reply port.
pub type WaiterId = u64;

/// The answer to [`Lanes::reserve`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reserved {
    /// Answered now.
    Now(Decision),
    /// Parked in its lane: the answer comes from a later [`Lanes::pump`].
    Parked,
}

/// A decision for a parked waiter, as [`Lanes::pump`] hands them out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    /// Whose it is.
    pub waiter: WaiterId,
    /// The decision.
    pub decision: Decision,
    /// The request it answers.
    pub request: ReserveRequest,
    /// When it was parked.
    pub since: Instant,
}

/// A bucket group: (upstream, organization, model class).
pub type Group = (usize, usize, usize);

struct UpstreamState {
    name: String,
    class_limits: Vec<Limits>,
    keys: Vec<KeySlot>,
    /// Funding per (org, class), created on first use.
    buckets: HashMap<(usize, usize), Funding>,
}

struct FeatureState {
    bulkhead: Bulkhead,
    in_flight: u32,
    /// The feature's share of each (upstream, org, class) group.
    buckets: HashMap<Group, Buckets>,
}

struct Parked {
    req: ReserveRequest,
    waiter: WaiterId,
    expires: Instant,
    since: Instant,
    /// Where it waits, as its last look found it.
    gate: Option<Gate>,
}

/// Why a request could not be granted now.
#[derive(Clone, Copy, Debug)]
struct Blocked {
    reason: RejectReason,
    /// When budget could allow it (None: unknown or never).
    earliest: Option<Instant>,
    /// The gate to wait at, when budget is what is missing (None: a key or a bulkhead, which
    /// hold back nobody else).
    gate: Option<Gate>,
}

/// Where a waiter short of budget waits: one bucket group, or one feature's share of it (its
/// bulkhead's `budget_share`). FIFO and the interactive reserve hold per gate: a waiter holds
/// back only the later calls that need the same gate, never those of another upstream,
/// organization, class or feature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Gate {
    group: Group,
    /// `Some(f)`: only feature `f`'s share is short; the group itself has room for others.
    feature: Option<usize>,
}

impl Gate {
    /// Does a waiter at this gate hold back a call of `feature` on `group`?
    fn holds(&self, group: Group, feature: Option<usize>) -> bool {
        self.group == group && (self.feature.is_none() || self.feature == feature)
    }
}

/// The governor's state and rules.
pub struct Lanes {
    upstreams: Vec<UpstreamState>,
    features: Vec<FeatureState>,
    interactive_reserve: f64,
    transit_allowance: Duration,
    interactive: VecDeque<Parked>,
    background: VecDeque<Parked>,
    generation: u64,
    /// The next instant worth a look, as the last pump found it.
    next: Option<Instant>,
    /// Groups whose levels changed since the driver last asked.
    touched: Vec<Group>,
    /// How the organization buckets are funded.
    mode: FleetMode,
}

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
    let short = |buckets: &mut Buckets, at: Option<Instant>| Blocked {
        reason: RejectReason::NoBudget {
            dimension: short_dimension(buckets, cost, now),
        },
        earliest: at,
        gate: None,
    };
    match buckets.earliest(plus(cost, floor), now) {
        Some(at) if at <= now => Ok(()),
        Some(at) => Err(short(buckets, Some(at))),
        // Too large with the floor: the floor shrinks to what a full bucket can keep beside the
        // call, so the call goes once the bucket is full (it would never go otherwise).
        None => match buckets.earliest(plus(cost, room_beside(buckets.limits(), cost, floor)), now)
        {
            Some(at) if at <= now => Ok(()),
            Some(at) => Err(short(buckets, Some(at))),
            None => Err(Blocked {
                reason: RejectReason::TooLarge {
                    dimension: short_dimension(buckets, cost, now),
                },
                earliest: None,
                gate: None,
            }),
        },
    }
}

/// Per dimension, the part of `floor` a bucket of `limits` can keep beside `cost`.
fn room_beside(limits: Limits, cost: Cost, floor: Cost) -> Cost {
    let (l, c, f) = (limit_dims(limits), dims(cost), dims(floor));
    cost_of([0, 1, 2].map(|i| l[i].map_or(0, |cap| f[i].min(cap.saturating_sub(c[i])))))
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

/// Of two reasons a grant failed, the one to report and wait on: one that can still pass before
/// one that never will, then the sooner; the earliest instant is the sooner of both.
fn better(prev: Option<Blocked>, b: Blocked) -> Blocked {
    let Some(prev) = prev else { return b };
    let rank = |x: &Blocked| (x.reason.is_final(), x.earliest.is_none(), x.earliest);
    let earliest = earlier(prev.earliest, b.earliest);
    let best = if rank(&b) < rank(&prev) { b } else { prev };
    Blocked { earliest, ..best }
}

/// The earlier of two optional instants.
fn earlier(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

impl Lanes {
    /// A governor for `args`; `generation` tags its tickets so a settlement meant for an
    /// earlier incarnation is ignored.
    pub fn new(args: GovernorArgs, generation: u64) -> Self {
        Self {
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
                            recheck_at: None,
                            failed_checks: 0,
                            last_checked: None,
                            paused_until: None,
                            in_flight: 0,
                        })
                        .collect(),
                    buckets: HashMap::new(),
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
            generation,
            next: None,
            touched: Vec::new(),
            mode: if args.shared {
                FleetMode::Shared
            } else {
                FleetMode::Alone
            },
        }
    }

    /// The name of upstream `upstream` (for logs and metrics).
    pub fn upstream_name(&self, upstream: usize) -> Option<&str> {
        self.upstreams.get(upstream).map(|u| u.name.as_str())
    }

    /// True when a reservation waits in a lane.
    pub fn has_waiters(&self) -> bool {
        !(self.interactive.is_empty() && self.background.is_empty())
    }

    /// The next instant worth a look ([`Lanes::pump`] and [`Lanes::due_key_checks`]): the
    /// earliest of the parked waiters' next chance, as the last pump found it, and the next
    /// quarantined key's check.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let waiters = if self.has_waiters() { self.next } else { None };
        earlier(waiters, self.next_key_check())
    }

    /// Groups whose levels changed since the last call (for the level gauges).
    pub fn take_touched(&mut self) -> Vec<Group> {
        std::mem::take(&mut self.touched)
    }

    fn buckets(
        &mut self,
        upstream: usize,
        org: usize,
        class: usize,
        now: Instant,
    ) -> Option<&mut Funding> {
        let lag = self.transit_allowance;
        let mode = self.mode;
        let up = self.upstreams.get_mut(upstream)?;
        let limits = up
            .class_limits
            .get(class)
            .or_else(|| up.class_limits.first())
            .copied()
            .unwrap_or_default();
        Some(
            up.buckets
                .entry((org, class))
                .or_insert_with(|| funding(mode, limits, lag, now)),
        )
    }

    /// The group a ticket was reserved from.
    pub fn group_of(&self, ticket: &Ticket) -> Option<Group> {
        let org = self
            .upstreams
            .get(ticket.upstream)?
            .keys
            .get(ticket.key)?
            .org;
        Some((ticket.upstream, org, ticket.class))
    }

    /// The configured limits of a group.
    pub fn limits_of(&self, (upstream, _, class): Group) -> Limits {
        self.upstreams
            .get(upstream)
            .and_then(|u| u.class_limits.get(class).or_else(|| u.class_limits.first()))
            .copied()
            .unwrap_or_default()
    }

    /// What is left in each dimension of a group now (`None`: unlimited).
    pub fn available(&mut self, group: Group, now: Instant) -> [Option<f64>; 3] {
        let (upstream, org, class) = group;
        match self.buckets(upstream, org, class, now) {
            Some(b) => Dimension::ALL.map(|dim| b.available(dim, now)),
            None => [None; 3],
        }
    }

    /// Grant `req` now if everything allows it. A group (or the feature's share of one) held by
    /// a waiter in `ahead` is not tried: that waiter is first there. Other groups are.
    fn try_grant(
        &mut self,
        req: &ReserveRequest,
        ahead: &[Gate],
        now: Instant,
    ) -> Result<Ticket, Blocked> {
        if let Some(f) = req.feature.and_then(|f| self.features.get(f)) {
            if f.bulkhead.max_concurrent.is_some_and(|m| f.in_flight >= m) {
                return Err(Blocked {
                    reason: RejectReason::Bulkhead,
                    earliest: None,
                    gate: None,
                });
            }
        }
        let Some(up) = self.upstreams.get(req.upstream) else {
            return Err(Blocked {
                reason: RejectReason::NoUsableKey,
                earliest: None,
                gate: None,
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
                gate: None,
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
            let group = (upstream, org, class);
            let outcome = if let Some(held) = ahead.iter().find(|g| g.holds(group, req.feature)) {
                // Someone waits here already: queue behind them (when is the estimate's).
                Err(Blocked {
                    reason: RejectReason::NoBudget {
                        dimension: Dimension::Requests,
                    },
                    earliest: None,
                    gate: Some(*held),
                })
            } else {
                let Some(buckets) = self.buckets(upstream, org, class, now) else {
                    continue;
                };
                let limits = buckets.limits();
                let floor = floor_cost(limits, reserve);
                match buckets.fits(req.cost, floor, now) {
                    Ok(()) => match req.feature {
                        Some(f) => {
                            self.feature_fits(f, group, limits, req.cost, now)
                                .map_err(|b| Blocked {
                                    gate: Some(Gate {
                                        group,
                                        feature: Some(f),
                                    }),
                                    ..b
                                })
                        }
                        None => Ok(()),
                    },
                    Err(b) => Err(Blocked {
                        gate: Some(Gate {
                            group,
                            feature: None,
                        }),
                        ..b
                    }),
                }
            };
            match outcome {
                Ok(()) => return Ok(self.take(req, key, org, now)),
                Err(b) => blocked = Some(better(blocked, b)),
            }
        }
        Err(blocked.unwrap_or(Blocked {
            reason: RejectReason::NoUsableKey,
            earliest: None,
            gate: None,
        }))
    }

    fn feature_fits(
        &mut self,
        feature: usize,
        group: Group,
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
            .entry(group)
            .or_insert_with(|| Buckets::new(scaled(limits, share), now));
        fits(buckets, cost, Cost::default(), now)
    }

    /// Take the budget for a grant that `try_grant` found possible.
    fn take(&mut self, req: &ReserveRequest, key: usize, org: usize, now: Instant) -> Ticket {
        if let Some(b) = self.buckets(req.upstream, org, req.class, now) {
            b.take(req.cost, now);
        }
        self.touched.push((req.upstream, org, req.class));
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

    /// A new reservation from `waiter`: granted or refused now, or parked in its lane.
    /// It is granted at once when a group it may use has room and nobody waits there ahead of
    /// it, whatever waits at other groups.
    pub fn reserve(&mut self, req: ReserveRequest, waiter: WaiterId, now: Instant) -> Reserved {
        let ahead = self.gates_ahead(&req);
        let mut blocked = match self.try_grant(&req, &ahead, now) {
            Ok(ticket) => return Reserved::Now(Decision::Grant { ticket, at: now }),
            Err(b) => b,
        };
        if blocked.gate.is_some() && !ahead.is_empty() {
            // Others wait ahead at some gate: when its turn could come, behind them.
            blocked.earliest = self.estimate(&req, now);
        }
        let doomed = blocked
            .earliest
            .is_some_and(|at| at.saturating_duration_since(now) > req.max_wait);
        if blocked.reason.is_final() || doomed || req.max_wait.is_zero() {
            return Reserved::Now(Decision::Reject {
                reason: blocked.reason,
                earliest: blocked.earliest,
            });
        }
        let parked = Parked {
            req,
            waiter,
            expires: now + req.max_wait,
            since: now,
            gate: blocked.gate,
        };
        match req.lane {
            Lane::Interactive => self.interactive.push_back(parked),
            Lane::Background => self.background.push_back(parked),
        }
        Reserved::Parked
    }

    /// The gates of the waiters ahead of `req` (its lane and any higher) on its upstream and
    /// class: the only ones that may hold it back.
    fn gates_ahead(&self, req: &ReserveRequest) -> Vec<Gate> {
        let lanes: &[&VecDeque<Parked>] = match req.lane {
            Lane::Interactive => &[&self.interactive],
            Lane::Background => &[&self.interactive, &self.background],
        };
        let mut gates: Vec<Gate> = Vec::new();
        for p in lanes.iter().flat_map(|q| q.iter()) {
            if let Some(g) = p.gate {
                let (upstream, _, class) = g.group;
                if upstream == req.upstream && class == req.class && !gates.contains(&g) {
                    gates.push(g);
                }
            }
        }
        gates
    }

    /// Forget a parked waiter whose caller gave up.
    pub fn cancel(&mut self, waiter: WaiterId) {
        self.interactive.retain(|p| p.waiter != waiter);
        self.background.retain(|p| p.waiter != waiter);
    }

    /// When `req` could be granted behind the waiters ahead of it at each gate it may use: the
    /// earliest over its organizations.
    fn estimate(&mut self, req: &ReserveRequest, now: Instant) -> Option<Instant> {
        let mut orgs: Vec<usize> = self
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
        orgs.sort_unstable();
        orgs.dedup();
        let mut at = None;
        for org in orgs {
            let group = (req.upstream, org, req.class);
            let waiting_here = |p: &&Parked| p.gate.is_some_and(|g| g.holds(group, req.feature));
            let mut ahead = req.cost;
            for p in self.interactive.iter().filter(waiting_here) {
                ahead = plus(ahead, p.req.cost);
            }
            if req.lane == Lane::Background {
                for p in self.background.iter().filter(waiting_here) {
                    ahead = plus(ahead, p.req.cost);
                }
            }
            if let Some(b) = self.buckets(req.upstream, org, req.class, now) {
                at = earlier(at, b.earliest(ahead, now));
            }
        }
        at
    }

    /// Grant what the lanes allow now and refuse what waited too long; every decision goes to
    /// its waiter. Also computes [`Lanes::poll_timeout`].
    pub fn pump(&mut self, now: Instant) -> Vec<Answer> {
        let mut out = Vec::new();
        let mut next = None;
        // Gates held by a waiter short of budget, in arrival order: the ones behind it at the
        // same gate (and the lower lane there) wait too, while those at other gates go on.
        // Waiters held by their bulkhead or paused keys hold back nobody.
        let mut held: Vec<Gate> = Vec::new();
        for lane in [Lane::Interactive, Lane::Background] {
            let mut queue = std::mem::take(match lane {
                Lane::Interactive => &mut self.interactive,
                Lane::Background => &mut self.background,
            });
            let mut kept = VecDeque::with_capacity(queue.len());
            while let Some(mut p) = queue.pop_front() {
                let answer = |decision| Answer {
                    waiter: p.waiter,
                    decision,
                    request: p.req,
                    since: p.since,
                };
                if p.expires <= now {
                    let earliest = self.estimate(&p.req, now);
                    out.push(answer(Decision::Reject {
                        reason: RejectReason::NoBudget {
                            dimension: Dimension::Requests,
                        },
                        earliest,
                    }));
                    continue;
                }
                match self.try_grant(&p.req, &held, now) {
                    Ok(ticket) => {
                        out.push(answer(Decision::Grant { ticket, at: now }));
                        continue;
                    }
                    Err(b) if b.reason.is_final() => {
                        out.push(answer(Decision::Reject {
                            reason: b.reason,
                            earliest: b.earliest,
                        }));
                        continue;
                    }
                    Err(b) => {
                        p.gate = b.gate;
                        if let Some(g) = b.gate {
                            if !held.contains(&g) {
                                held.push(g);
                            }
                        }
                        next = earlier(next, b.earliest);
                    }
                }
                next = earlier(next, Some(p.expires));
                kept.push_back(p);
            }
            match lane {
                Lane::Interactive => self.interactive = kept,
                Lane::Background => self.background = kept,
            }
        }
        self.next = next;
        out
    }

    /// Correct a reservation after its attempt; returns what changed about its key.
    pub fn settle(&mut self, s: Settlement, now: Instant) -> KeyNews {
        let ticket = s.ticket;
        if ticket.generation != self.generation {
            return KeyNews::default(); // reserved from an earlier incarnation
        }
        let Some(org) = self
            .upstreams
            .get(ticket.upstream)
            .and_then(|u| u.keys.get(ticket.key))
            .map(|k| k.org)
        else {
            return KeyNews::default();
        };
        if let Some(b) = self.buckets(ticket.upstream, org, ticket.class, now) {
            b.settle(ticket.reserved, s.actual, &s.server, now);
        }
        self.touched.push((ticket.upstream, org, ticket.class));
        if let Some(f) = ticket.feature.and_then(|f| self.features.get_mut(f)) {
            f.in_flight = f.in_flight.saturating_sub(1);
            if let Some(b) = f.buckets.get_mut(&(ticket.upstream, org, ticket.class)) {
                b.settle(ticket.reserved, s.actual, now);
            }
        }
        self.key_settled(ticket.upstream, ticket.key, s.key_bad, s.key_pause, now)
    }
}

#[cfg(test)]
mod testing;

#[cfg(test)]
mod tests {
    use super::testing::*;
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

    #[test]
    fn a_burst_is_parked_fifo_and_paced_by_the_refill() {
        let t0 = Instant::now();
        let mut l = one_upstream(60, 1);
        // The bucket holds 60 requests: take them all.
        for w in 0..60 {
            assert!(matches!(
                l.reserve(req(Lane::Interactive, S * 10), w, t0),
                Reserved::Now(Decision::Grant { .. })
            ));
        }
        assert_eq!(
            l.reserve(req(Lane::Interactive, S * 10), 100, t0),
            Reserved::Parked
        );
        assert_eq!(
            l.reserve(req(Lane::Interactive, S * 10), 101, t0),
            Reserved::Parked
        );
        assert!(l.pump(t0).is_empty());
        assert_eq!(
            l.poll_timeout(),
            Some(t0 + S),
            "one request refills per second"
        );
        let first = l.pump(t0 + S);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].waiter, 100, "first in, first out");
        assert!(matches!(first[0].decision, Decision::Grant { .. }));
        let second = l.pump(t0 + S * 2);
        assert_eq!(second[0].waiter, 101);
    }

    #[test]
    fn a_wait_longer_than_allowed_is_refused_at_once_and_zero_wait_never_parks() {
        let t0 = Instant::now();
        let mut l = one_upstream(60, 1);
        for w in 0..60 {
            l.reserve(req(Lane::Interactive, S), w, t0);
        }
        match l.reserve(req(Lane::Interactive, Duration::from_millis(500)), 99, t0) {
            Reserved::Now(Decision::Reject { earliest, .. }) => {
                assert_eq!(earliest, Some(t0 + S))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            l.reserve(req(Lane::Interactive, Duration::ZERO), 98, t0),
            Reserved::Now(Decision::Reject { .. })
        ));
        assert!(!l.has_waiters());
    }

    #[test]
    fn background_leaves_the_interactive_reserve_and_waits_behind_interactive() {
        let t0 = Instant::now();
        let mut l = one_upstream(10, 1);
        // Reserve 0.5: background may use at most 5 of the 10.
        let mut granted = 0;
        for w in 0..10 {
            if let Reserved::Now(Decision::Grant { .. }) =
                l.reserve(req(Lane::Background, Duration::ZERO), w, t0)
            {
                granted += 1;
            }
        }
        assert_eq!(granted, 5);
        assert!(matches!(
            l.reserve(req(Lane::Interactive, Duration::ZERO), 50, t0),
            Reserved::Now(Decision::Grant { .. })
        ));
    }

    #[test]
    fn a_bulkhead_caps_its_feature_and_a_stale_ticket_is_ignored() {
        let t0 = Instant::now();
        let mut l = one_upstream(100, 1);
        let mut batch = req(Lane::Interactive, Duration::ZERO);
        batch.feature = Some(0);
        let ticket = match l.reserve(batch, 1, t0) {
            Reserved::Now(Decision::Grant { ticket, .. }) => ticket,
            other => panic!("{other:?}"),
        };
        assert!(matches!(
            l.reserve(batch, 2, t0),
            Reserved::Now(Decision::Reject {
                reason: RejectReason::Bulkhead,
                ..
            })
        ));
        // A ticket of another incarnation changes nothing.
        let mut stale = ticket;
        stale.generation = 1;
        l.settle(Settlement::unused(stale), t0);
        assert!(matches!(
            l.reserve(batch, 3, t0),
            Reserved::Now(Decision::Reject { .. })
        ));
        l.settle(Settlement::unused(ticket), t0);
        assert!(matches!(
            l.reserve(batch, 4, t0),
            Reserved::Now(Decision::Grant { .. })
        ));
    }

    #[test]
    fn a_cancelled_waiter_is_never_answered() {
        let t0 = Instant::now();
        let mut l = one_upstream(1, 1);
        l.reserve(req(Lane::Interactive, S * 120), 1, t0);
        assert_eq!(
            l.reserve(req(Lane::Interactive, S * 120), 2, t0),
            Reserved::Parked
        );
        l.cancel(2);
        assert!(l.pump(t0 + S * 61).is_empty());
        assert!(!l.has_waiters());
    }

    // --- A waiter holds back only its own gate (upstream, organization, class, feature). ---

    #[test]
    fn a_waiter_on_a_spent_upstream_never_holds_back_another_upstream() {
        let t0 = Instant::now();
        let mut l = lanes_of(
            vec![
                upstream("anthropic", vec![limits(Some(1), None)], vec![0]),
                upstream("other", vec![Limits::default()], vec![0]),
            ],
            vec![],
        );
        let i = Lane::Interactive;
        granted(l.reserve(to(0, 0, 0, i), 1, t0));
        assert_eq!(l.reserve(to(0, 0, 0, i), 2, t0), Reserved::Parked);
        assert_eq!(l.reserve(to(0, 0, 0, i), 3, t0), Reserved::Parked);
        // `other` has no limits: its calls go at once, in both lanes, however many wait.
        for w in 10..20 {
            granted(l.reserve(to(1, 0, 0, i), w, t0));
            granted(l.reserve(to(1, 0, 0, Lane::Background), w + 100, t0));
        }
        assert!(
            l.pump(t0 + S).is_empty(),
            "the spent bucket holds its waiters"
        );
        // rpm 1: one request a minute refills; the waiters go first in, first out.
        assert_eq!(waiters(&l.pump(t0 + S * 60)), vec![2]);
        assert_eq!(waiters(&l.pump(t0 + S * 120)), vec![3]);
        assert!(!l.has_waiters());
    }

    #[test]
    fn a_waiter_on_one_organization_never_holds_back_a_call_another_can_take() {
        let t0 = Instant::now();
        // One upstream, key 0 in org a, key 1 in org b; 1000 input tokens a minute each.
        let mut l = lanes_of(
            vec![upstream("u", vec![limits(None, Some(1000))], vec![0, 1])],
            vec![],
        );
        let i = Lane::Interactive;
        assert_eq!(granted(l.reserve(to(0, 0, 600, i), 1, t0)).key, 0); // a: 400 left
        assert_eq!(granted(l.reserve(to(0, 0, 900, i), 2, t0)).key, 1); // b: 100 left
                                                                        // 1000 tokens: a refills 600 in 36 s, b 900 in 54 s: it waits at a.
        assert_eq!(l.reserve(to(0, 0, 1000, i), 3, t0), Reserved::Parked);
        // A small call fits a, but a's waiter is first there: it takes b, at once.
        assert_eq!(granted(l.reserve(to(0, 0, 100, i), 4, t0)).key, 1);
        // Another small one: a is held, b is spent for now: it waits at b, which refills its
        // 100 tokens in 6 s, long before a's waiter is served.
        assert_eq!(l.reserve(to(0, 0, 100, i), 5, t0), Reserved::Parked);
        let at_b = l.pump(t0 + S * 6);
        assert_eq!(waiters(&at_b), vec![5]);
        assert!(matches!(at_b[0].decision, Decision::Grant { ticket, .. } if ticket.key == 1));
        assert!(
            l.pump(t0 + S * 35).is_empty(),
            "a's waiter is not served early"
        );
        assert_eq!(waiters(&l.pump(t0 + S * 36)), vec![3]);
        assert!(!l.has_waiters());
    }

    #[test]
    fn a_waiter_on_one_class_never_holds_back_another_class() {
        let t0 = Instant::now();
        // Class 0 (the default) 100 rpm, class 1 (say, opus) 2 rpm.
        let mut l = lanes_of(
            vec![upstream(
                "u",
                vec![limits(Some(100), None), limits(Some(2), None)],
                vec![0],
            )],
            vec![],
        );
        let i = Lane::Interactive;
        granted(l.reserve(to(0, 1, 0, i), 1, t0));
        granted(l.reserve(to(0, 1, 0, i), 2, t0));
        assert_eq!(l.reserve(to(0, 1, 0, i), 3, t0), Reserved::Parked);
        assert_eq!(
            l.reserve(to(0, 1, 0, Lane::Background), 4, t0),
            Reserved::Parked
        );
        granted(l.reserve(to(0, 0, 0, i), 5, t0));
        // The interactive reserve holds per group too: background on class 0 is not behind
        // class 1's interactive waiter.
        granted(l.reserve(to(0, 0, 0, Lane::Background), 6, t0));
        // Class 1 refills one request every 30 s: interactive first; background only once the
        // interactive reserve (half of 2) is left over.
        assert_eq!(waiters(&l.pump(t0 + S * 30)), vec![3]);
        assert!(l.pump(t0 + S * 60).is_empty());
        assert_eq!(waiters(&l.pump(t0 + S * 90)), vec![4]);
    }

    #[test]
    fn a_feature_short_of_its_share_holds_back_only_that_feature() {
        let t0 = Instant::now();
        let mut l = lanes_of(
            vec![upstream("u", vec![limits(Some(100), None)], vec![0])],
            vec![(
                "batch".into(),
                Bulkhead {
                    max_concurrent: None,
                    budget_share: Some(0.1),
                },
            )],
        );
        let batch = |w| {
            let mut r = to(0, 0, 0, Lane::Interactive);
            r.feature = Some(0);
            (r, w)
        };
        for w in 0..10 {
            let (r, w) = batch(w);
            granted(l.reserve(r, w, t0));
        }
        let (r, w) = batch(10);
        assert_eq!(l.reserve(r, w, t0), Reserved::Parked);
        let (r, w) = batch(11);
        assert_eq!(l.reserve(r, w, t0), Reserved::Parked);
        // The group has 90 left: calls outside the feature go at once.
        for w in 20..30 {
            granted(l.reserve(to(0, 0, 0, Lane::Interactive), w, t0));
        }
        // The share refills 10 a minute (one every 6 s), first in, first out.
        assert_eq!(waiters(&l.pump(t0 + S * 6)), vec![10]);
        assert_eq!(waiters(&l.pump(t0 + S * 12)), vec![11]);
    }

    #[test]
    fn background_on_a_bucket_smaller_than_its_reserve_goes_once_the_bucket_is_full() {
        let t0 = Instant::now();
        // rpm 1 with a reserve of half: call + reserve never fit, so background waits for a
        // full bucket instead of never going.
        let mut l = one_upstream(1, 1);
        granted(l.reserve(req(Lane::Background, S * 300), 1, t0));
        assert_eq!(
            l.reserve(req(Lane::Background, S * 300), 2, t0),
            Reserved::Parked
        );
        assert!(l.pump(t0 + S * 59).is_empty());
        assert_eq!(waiters(&l.pump(t0 + S * 60)), vec![2]);
    }
}
