//! The chain walk as a pure state machine: which model of a fallback chain to try, when, and
//! what the call's answer is.
//!
//! [`ChainWalk`] is sans-IO in the style of
//! quinn-proto's `Connection`: the driver (the request actor) feeds it [`Event`]s (a breaker's
//! admission, the governor's decision, an attempt's classified outcome) with the time they
//! happened, drains [`Step`]s with [`ChainWalk::poll`] and arms a timer for
//! [`ChainWalk::poll_timeout`]. No tokio, no ractor, no clock of its own: every rule is a unit
//! test with hand-set instants.
//!
//! The rules:
//!
//! - Hops are tried in chain order; a hop is *ready* when nothing (backoff, retry-after, an open
//!   breaker, budget) tells it to wait. The first ready hop is tried. Hops before a
//!   conversation's pinned hop are tried only when no later hop can go now.
//! - A capacity error, an open breaker or a lack of budget on one hop moves to the next ready hop
//!   at once: no sleep while another model can serve.
//! - A transient failure schedules the same hop again after backoff (the server's retry hint
//!   wins). Only when no hop is ready does the walk sleep, until the earliest hop is; and only if
//!   an attempt could still start before the deadline with `min_attempt` to spare. Otherwise it
//!   ends at once with the honest error and a retry-after.
//! - A permanent error is never retried: a request-scoped one (400, 413, 422, any client 4xx)
//!   ends the call with the upstream's answer; a model-scoped one ends that hop; a key-scoped one
//!   (401) lets the hop go again with another key; an organization-scoped one (402, spend cap)
//!   ends every hop on that upstream.
//! - A refusal (`stop_reason: "refusal"`) with `refusal_fallback` moves on, handing later hops
//!   the refusal's credit; if no later hop serves, the refusal itself is the answer.
//! - Several attempts may be in flight: an attempt that has not answered within its hop's
//!   `hedge_after` starts a hedge on the next candidate (a retry for the budget; no waiting for
//!   budget). The first success wins and the others are cancelled.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::call::{AttemptRecord, Outcome};
use crate::policy::backoff::Wait;
use crate::policy::breaker::{Admission, Permit};
use crate::policy::classify::{Scope, Verdict};
use crate::policy::lanes::{Decision, RejectReason, Ticket};
use crate::policy::rng::SplitMix64;
use crate::wire::Cost;

mod answers;
mod settings;
mod vocab;

pub use answers::{refusal_in_event, refusal_in_message, stream_error_class, stream_error_status};
pub use settings::{
    Degrade, Estimate, Hedge, RetryPolicy, MIN_AUTO_HEDGE, MIN_LEARNED_TIMEOUT, UNLEARNED_HEDGE,
};
pub use vocab::{
    AttemptId, AttemptReport, CallFacts, Credit, Ending, Event, Finish, HopFacts, Refusal, Send,
    Step,
};

/// Smallest pause before re-asking a breaker whose state we could not predict.
const MIN_PAUSE: Duration = Duration::from_millis(1);

#[derive(Clone, Debug)]
struct HopState {
    /// Upstream attempts on this hop (a second one is a retry, which the budget must allow).
    attempts: u32,
    failures: u32,
    ready_at: Instant,
    done: bool,
    /// When this hop is expected to recover, for the caller's retry-after.
    recovers_at: Option<Instant>,
    /// The attempt whose permanent answer ended this hop, kept to pass through.
    permanent: Option<AttemptId>,
    /// Why this hop can never take the request (its transport cannot send it, or it is
    /// larger than a limit allows at all).
    unfit: Option<String>,
    /// Before the conversation's pinned hop: tried only when no later hop can go now.
    deferred: bool,
    /// The input-token count, once made.
    counted: Option<u64>,
}

/// An ask outstanding with the breaker or the governor.
#[derive(Clone, Copy, Debug)]
enum Ask {
    /// May the model of `hedged` pay a hedge from its retry budget?
    HedgeBudget {
        hedged: usize,
        candidate: usize,
    },
    Admission {
        hop: usize,
        hedge: bool,
    },
    Count {
        hop: usize,
        permit: Permit,
        hedge: bool,
    },
    Budget {
        hop: usize,
        permit: Permit,
        hedge: bool,
    },
    /// Granted for later: the budget is held for us until `at`.
    Granted {
        hop: usize,
        permit: Permit,
        ticket: Ticket,
        at: Instant,
        hedge: bool,
    },
}

#[derive(Clone, Copy, Debug)]
struct Flight {
    attempt: AttemptId,
    hop: usize,
    /// Started as a hedge.
    hedge: bool,
    /// When to hedge it, if it is still in flight then.
    hedge_at: Option<Instant>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Start,
    Pinning,
    Walking,
    Done,
}

/// One call's walk of its chain.
#[derive(Debug)]
pub struct ChainWalk {
    facts: CallFacts,
    policy: Arc<RetryPolicy>,
    now: Instant,
    deadline: Instant,
    min_attempt: Duration,
    hops: Vec<HopState>,
    trail: Vec<AttemptRecord>,
    /// Upstream attempts sent.
    sent: u32,
    next_attempt: AttemptId,
    rng: SplitMix64,
    phase: Phase,
    ask: Option<Ask>,
    flights: Vec<Flight>,
    hedges: u32,
    /// Nothing is ready before this: the walk sleeps until then.
    wake: Option<Instant>,
    /// A refusal kept as the answer if no later hop serves: (attempt, hop).
    refusal: Option<(AttemptId, usize)>,
    credit: Option<Credit>,
    /// The pinned hop, when the conversation was pinned to a later one.
    pinned: Option<usize>,
    out: VecDeque<Step>,
}

impl ChainWalk {
    /// A walk of `facts.hops` under `policy`, starting at `now`.
    pub fn new(facts: CallFacts, policy: Arc<RetryPolicy>, now: Instant) -> Self {
        let total = policy.deadline_of(facts.timeout);
        let hops = facts
            .hops
            .iter()
            .map(|_| HopState {
                attempts: 0,
                failures: 0,
                ready_at: now,
                done: false,
                recovers_at: None,
                permanent: None,
                unfit: None,
                deferred: false,
                counted: None,
            })
            .collect();
        Self {
            rng: SplitMix64::new(facts.seed),
            deadline: now + total,
            // At least MIN_PAUSE: with a zero `min_attempt` an attempt could start at the
            // deadline itself, with no time to run (found by policy/props/).
            min_attempt: policy.min_attempt.min(total / 2).max(MIN_PAUSE),
            facts,
            policy,
            now,
            hops,
            trail: Vec::new(),
            sent: 0,
            next_attempt: 0,
            phase: Phase::Start,
            ask: None,
            flights: Vec::new(),
            hedges: 0,
            wake: None,
            refusal: None,
            credit: None,
            pinned: None,
            out: VecDeque::new(),
        }
    }

    /// The call's deadline.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// True once the walk has finished.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done && self.out.is_empty()
    }

    /// Attempts in flight now.
    pub fn in_flight(&self) -> usize {
        self.flights.len()
    }

    /// When the walk wants [`ChainWalk::handle_timeout`] to be called, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.phase != Phase::Walking {
            return None;
        }
        let granted = match self.ask {
            Some(Ask::Granted { at, .. }) => Some(at),
            _ => None,
        };
        let hedge = if self.ask.is_none() && self.can_hedge() {
            self.flights.iter().filter_map(|f| f.hedge_at).min()
        } else {
            None
        };
        [self.wake, granted, hedge].into_iter().flatten().min()
    }

    /// Time passed: the clock is now `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = self.now.max(now);
    }

    /// Take in what happened at `now`.
    pub fn handle(&mut self, event: Event, now: Instant) {
        self.now = self.now.max(now);
        if self.phase == Phase::Done {
            return; // late news (a cancelled attempt's report) changes nothing
        }
        match event {
            Event::Pinned(model) => self.on_pinned(model),
            Event::Admission { hop, admission } => self.on_admission(hop, admission),
            Event::Counted { hop, tokens } => self.on_counted(hop, tokens),
            Event::Budget { hop, decision } => self.on_budget(hop, decision),
            Event::RetryBudget { hop, granted } => self.on_retry_budget(hop, granted),
            Event::Finished { attempt, report } => self.on_finished(attempt, report),
            Event::Lost(why) => self.end(Ending::Internal(why)),
        }
    }

    /// The next thing to do, if any; call until `None`, then wait for an event or the timeout.
    pub fn poll(&mut self) -> Option<Step> {
        if self.out.is_empty() {
            self.advance();
        }
        self.out.pop_front()
    }

    // ---- the walk ----

    fn advance(&mut self) {
        match self.phase {
            Phase::Done | Phase::Pinning => return,
            Phase::Start => {
                if self.facts.conversation && self.facts.hops.len() > 1 {
                    self.phase = Phase::Pinning;
                    self.out.push_back(Step::AskPin);
                    return;
                }
                self.phase = Phase::Walking;
            }
            Phase::Walking => {}
        }
        let now = self.now;
        if let Some(Ask::Granted {
            hop,
            permit,
            ticket,
            at,
            hedge,
        }) = self.ask
        {
            if at <= now {
                self.ask = None;
                self.send(hop, permit, ticket, hedge);
            }
            return;
        }
        if self.ask.is_some() {
            return; // waiting for an answer
        }
        if !self.flights.is_empty() {
            self.maybe_hedge();
            return;
        }
        self.wake = None;
        if self.sent >= self.policy.max_attempts {
            return self.give_up(false);
        }
        // Hops before a pinned one are the last resort: only when no later hop can go now.
        let ready = self
            .hops
            .iter()
            .position(|h| !h.done && !h.deferred && h.ready_at <= now)
            .or_else(|| self.hops.iter().position(|h| !h.done && h.ready_at <= now));
        let Some(hop) = ready else {
            let next = self
                .hops
                .iter()
                .filter(|h| !h.done)
                .map(|h| h.ready_at)
                .min();
            match next {
                Some(at) if at + self.min_attempt <= self.deadline => self.wake = Some(at),
                // Nothing can start in time: say so now rather than sleep into the deadline.
                Some(_) => self.give_up(true),
                None => self.give_up(false),
            }
            return;
        };
        if self.deadline.saturating_duration_since(now) < self.min_attempt {
            return self.give_up(true);
        }
        self.acquire(hop, false);
    }

    fn acquire(&mut self, hop: usize, hedge: bool) {
        // A re-attempt on this hop's model, which its retry budget must allow (a hedge's own
        // budget was spent on the model it hedges).
        let retry = self.hops[hop].attempts > 0;
        self.ask = Some(Ask::Admission { hop, hedge });
        self.out.push_back(Step::Acquire { hop, retry });
    }

    fn can_hedge(&self) -> bool {
        self.hedges < self.policy.max_hedges
            && self.sent < self.policy.max_attempts
            && self.deadline.saturating_duration_since(self.now) >= self.min_attempt
    }

    /// An attempt in flight past its hedge delay starts a hedge on the next candidate: a later
    /// ready hop not in flight, or the same model when the chain has only one.
    fn maybe_hedge(&mut self) {
        let now = self.now;
        if !self.can_hedge() {
            return;
        }
        let Some(due) = self
            .flights
            .iter()
            .position(|f| f.hedge_at.is_some_and(|at| at <= now))
        else {
            return;
        };
        // One hedge per attempt: whatever happens next, this one is not hedged again.
        self.flights[due].hedge_at = None;
        let busy: Vec<usize> = self.flights.iter().map(|f| f.hop).collect();
        let candidate = (0..self.hops.len())
            .find(|&h| {
                let s = &self.hops[h];
                !s.done && !s.deferred && s.ready_at <= now && !busy.contains(&h)
            })
            .or_else(|| {
                (0..self.hops.len()).find(|&h| {
                    let s = &self.hops[h];
                    !s.done && s.ready_at <= now && !busy.contains(&h)
                })
            })
            .or_else(|| (self.hops.len() == 1 && !self.hops[0].done).then_some(0));
        if let Some(candidate) = candidate {
            self.hedges += 1;
            // A hedge is paid from the retry budget of the model that made it necessary.
            let hedged = self.flights[due].hop;
            self.ask = Some(Ask::HedgeBudget { hedged, candidate });
            self.out.push_back(Step::SpendRetry { hop: hedged });
        }
    }

    fn on_retry_budget(&mut self, hop: usize, granted: bool) {
        let Some(Ask::HedgeBudget { hedged, candidate }) = self.ask else {
            return;
        };
        if hedged != hop {
            return;
        }
        self.ask = None;
        if granted {
            self.acquire(candidate, true);
        } else {
            // No budget for a hedge: the attempt in flight goes on alone.
            self.note(hedged, Outcome::RetryBudgetSpent);
        }
    }

    fn on_pinned(&mut self, model: Option<usize>) {
        if self.phase != Phase::Pinning {
            return;
        }
        self.phase = Phase::Walking;
        let hop = model.and_then(|m| {
            self.facts
                .hops
                .iter()
                .position(|h| h.model == m)
                .filter(|&k| k > 0)
        });
        if let Some(k) = hop {
            for h in &mut self.hops[..k] {
                h.deferred = true;
            }
            self.pinned = Some(k);
        }
    }

    fn note(&mut self, hop: usize, outcome: Outcome) {
        self.trail.push(AttemptRecord {
            model: self.facts.hops[hop].name.clone(),
            outcome,
        });
    }

    /// `hop` must wait until `until`, or (`None`) cannot go again in this call.
    fn hold(&mut self, hop: usize, until: Option<Instant>) {
        let now = self.now;
        let h = &mut self.hops[hop];
        match until {
            Some(at) => {
                h.ready_at = at.max(now + MIN_PAUSE);
                h.recovers_at = Some(at);
            }
            None => h.done = true,
        }
    }

    fn on_admission(&mut self, hop: usize, admission: Admission) {
        let Some(Ask::Admission { hop: asked, hedge }) = self.ask else {
            return;
        };
        if asked != hop {
            return;
        }
        self.ask = None;
        match admission {
            Admission::Permitted(permit) => {
                let count = self.policy.estimate == Estimate::CountTokens;
                if count && self.hops[hop].counted.is_none() {
                    self.ask = Some(Ask::Count { hop, permit, hedge });
                    self.out.push_back(Step::CountTokens { hop });
                } else {
                    self.reserve(hop, permit, hedge);
                }
            }
            Admission::Open { until } => {
                self.note(hop, Outcome::BreakerOpen);
                // Half-open with every trial slot taken (`None`): others are finding out.
                self.hold(hop, until);
            }
            Admission::RetryBudgetSpent => {
                // Retrying this model would feed a retry storm: move on (or degrade) instead.
                self.note(hop, Outcome::RetryBudgetSpent);
                if !hedge {
                    self.hops[hop].done = true;
                }
            }
        }
    }

    fn on_counted(&mut self, hop: usize, tokens: Option<u64>) {
        let Some(Ask::Count {
            hop: asked,
            permit,
            hedge,
        }) = self.ask
        else {
            return;
        };
        if asked != hop {
            return;
        }
        self.ask = None;
        self.hops[hop].counted = Some(tokens.unwrap_or(self.facts.hops[hop].input_estimate));
        self.reserve(hop, permit, hedge);
    }

    fn reserve(&mut self, hop: usize, permit: Permit, hedge: bool) {
        let now = self.now;
        let others_ready = self
            .hops
            .iter()
            .enumerate()
            .any(|(j, h)| j != hop && !h.done && h.ready_at <= now);
        // A hedge never waits for budget; a hop with another ready behind it moves on instead.
        let max_wait = if hedge || others_ready {
            Duration::ZERO
        } else {
            self.deadline
                .saturating_duration_since(now)
                .saturating_sub(self.min_attempt)
        };
        let facts = &self.facts.hops[hop];
        let input = self.hops[hop].counted.unwrap_or(facts.input_estimate);
        let cost = Cost::request(input, facts.max_tokens);
        self.ask = Some(Ask::Budget { hop, permit, hedge });
        self.out.push_back(Step::Reserve {
            hop,
            cost,
            max_wait,
        });
    }

    fn on_budget(&mut self, hop: usize, decision: Decision) {
        let Some(Ask::Budget {
            hop: asked,
            permit,
            hedge,
        }) = self.ask
        else {
            return;
        };
        if asked != hop {
            return;
        }
        self.ask = None;
        match decision {
            Decision::Grant { ticket, at } if at > self.now => {
                // The budget is already held for us: waiting in line is fair and bounded.
                self.ask = Some(Ask::Granted {
                    hop,
                    permit,
                    ticket,
                    at,
                    hedge,
                });
            }
            Decision::Grant { ticket, .. } => self.send(hop, permit, ticket, hedge),
            Decision::Reject { reason, earliest } => {
                self.out.push_back(Step::Release {
                    hop,
                    permit,
                    ticket: None,
                });
                self.note(
                    hop,
                    Outcome::NoBudget {
                        reason: reason.to_string(),
                    },
                );
                if hedge {
                    return; // no hedge when budget is short; the hop itself is fine
                }
                self.hold(hop, earliest);
                // Larger than the limit itself: no wait makes it fit, so this hop can never
                // take the request (the caller's to fix, not a 503).
                if let (None, RejectReason::TooLarge { dimension }) = (earliest, reason) {
                    self.hops[hop].unfit = Some(format!(
                        "it needs more {} than the upstream's per-minute limit allows at all: \
                         lower max_tokens or shorten the input",
                        dimension.as_str()
                    ));
                }
            }
        }
    }

    fn send(&mut self, hop: usize, permit: Permit, ticket: Ticket, hedge: bool) {
        let now = self.now;
        let facts = &self.facts.hops[hop];
        let limit = facts.attempt_timeout.unwrap_or(if self.facts.stream {
            self.policy.first_token_timeout
        } else {
            self.policy.attempt_timeout
        });
        let timeout = limit.min(self.deadline.saturating_duration_since(now));
        let hedge_after = facts.hedge_after;
        let attempt = self.next_attempt;
        self.next_attempt += 1;
        let retry_count = self.sent;
        self.sent += 1;
        self.hops[hop].attempts += 1;
        self.flights.push(Flight {
            attempt,
            hop,
            hedge,
            hedge_at: hedge_after.map(|d| now + d),
        });
        self.out.push_back(Step::Send(Send {
            attempt,
            hop,
            permit,
            ticket,
            timeout,
            retry_count,
            retry: self.hops[hop].attempts > 1,
            hedge,
            credit: self.credit.clone(),
        }));
    }

    /// Is any hop other than `hop` still able to serve?
    fn others_left(&self, hop: usize) -> bool {
        self.hops
            .iter()
            .enumerate()
            .any(|(j, h)| j != hop && !h.done)
    }

    fn on_finished(&mut self, attempt: AttemptId, report: AttemptReport) {
        let Some(i) = self.flights.iter().position(|f| f.attempt == attempt) else {
            return;
        };
        let flight = self.flights.remove(i);
        let hop = flight.hop;
        let now = self.now;
        let class = report.verdict.class();
        self.note(
            hop,
            Outcome::Attempted {
                status: report.status,
                class,
                latency: report.latency,
                request_id: report.request_id.clone(),
                hedge: flight.hedge,
            },
        );
        if let (Verdict::Success, Some(refusal)) = (report.verdict, &report.refusal) {
            if self.policy.refusal_fallback && self.others_left(hop) {
                // A refusal is a healthy answer: keep it in case no later hop serves, and hand
                // the next hop the refusal's credit.
                self.note(hop, Outcome::Refused);
                self.hops[hop].done = true;
                if let Some(credit) = &refusal.credit {
                    self.credit = Some(credit.clone());
                }
                if self.refusal.is_none() {
                    self.refusal = Some((attempt, hop));
                }
                return;
            }
        }
        match report.verdict {
            Verdict::Success => self.end(Ending::Served { attempt, hop }),
            Verdict::Permanent {
                scope: Scope::Request,
                ..
            } => self.end(Ending::Rejected { attempt, hop }),
            Verdict::Permanent { scope, .. } => {
                let kept = report.status.map(|_| attempt);
                match scope {
                    // The key is quarantined on settle (before our next reservation): the same
                    // model may go again with another key, refused at once when none is left.
                    Scope::Key => self.hops[hop].permanent = kept,
                    // Nothing on this upstream can be paid for: end every hop that uses it.
                    Scope::Organization => {
                        let upstream = self.facts.hops[hop].upstream;
                        for (h, f) in self.hops.iter_mut().zip(&self.facts.hops) {
                            if f.upstream == upstream {
                                h.done = true;
                                h.permanent = h.permanent.or(kept);
                            }
                        }
                    }
                    Scope::Model | Scope::Request => {
                        let h = &mut self.hops[hop];
                        h.done = true;
                        h.permanent = kept;
                        h.unfit = report.unsent;
                    }
                }
            }
            Verdict::Retryable { hint, .. } => {
                let remaining = self.deadline.saturating_duration_since(now);
                let r = self.rng.next_f64();
                let h = &mut self.hops[hop];
                h.failures += 1;
                match self.policy.backoff.next(
                    h.failures,
                    hint,
                    Some(remaining),
                    self.min_attempt,
                    r,
                ) {
                    Wait::Retry(delay) => {
                        h.ready_at = now + delay;
                        h.recovers_at = Some(now + delay);
                    }
                    Wait::Exhausted => {
                        h.done = true;
                        h.recovers_at = hint.map(|d| now + d);
                    }
                    Wait::BeyondDeadline { wanted } => {
                        h.done = true;
                        h.recovers_at = Some(now + wanted);
                    }
                }
            }
        }
    }

    /// The retry delay a retryable failure of `hop` set, if it is waiting (for traces).
    pub fn retry_delay(&self, hop: usize) -> Option<Duration> {
        let h = self.hops.get(hop)?;
        (!h.done && h.ready_at > self.now).then(|| h.ready_at - self.now)
    }

    /// End the walk: cancel what is still in flight, pin the conversation by who served, and
    /// hand out the answer.
    fn end(&mut self, ending: Ending) {
        for f in std::mem::take(&mut self.flights) {
            self.note(f.hop, Outcome::Cancelled { hedge: f.hedge });
            self.out.push_back(Step::Cancel { attempt: f.attempt });
        }
        if let Some(ask) = self.ask.take() {
            // A permit we hold but will not use goes back.
            match ask {
                Ask::Count { hop, permit, .. } | Ask::Budget { hop, permit, .. } => {
                    self.out.push_back(Step::Release {
                        hop,
                        permit,
                        ticket: None,
                    });
                }
                Ask::Granted {
                    hop,
                    permit,
                    ticket,
                    ..
                } => {
                    self.out.push_back(Step::Release {
                        hop,
                        permit,
                        ticket: Some(ticket),
                    });
                }
                // Its answer, when it comes, is released by the driver (the walk is over).
                Ask::Admission { .. } | Ask::HedgeBudget { .. } => {}
            }
        }
        let served = match ending {
            Ending::Served { hop, .. } | Ending::Refusal { hop, .. } => Some(hop),
            _ => None,
        };
        // Served by a later hop: pin there. Served by the first: unpin (if it was pinned).
        if let Some(hop) = served {
            if self.facts.conversation && (hop > 0 || self.pinned.is_some()) {
                self.out.push_back(Step::Pin { hop });
            }
        }
        self.phase = Phase::Done;
        self.out.push_back(Step::Finish(Finish {
            ending,
            trail: std::mem::take(&mut self.trail),
            attempts: self.sent,
        }));
    }

    /// Nothing more can be tried: a kept refusal is an honest answer; every hop permanently
    /// refused passes the first such answer through; otherwise the honest error.
    fn give_up(&mut self, deadline_exceeded: bool) {
        let now = self.now;
        if let Some((attempt, hop)) = self.refusal {
            return self.end(Ending::Refusal { attempt, hop });
        }
        let all_permanent = self
            .hops
            .iter()
            .all(|h| h.done && (h.permanent.is_some() || h.unfit.is_some()));
        if all_permanent {
            if let Some((hop, attempt)) = self
                .hops
                .iter()
                .enumerate()
                .find_map(|(i, h)| h.permanent.map(|a| (i, a)))
            {
                return self.end(Ending::Rejected { attempt, hop });
            }
            let reasons: Vec<String> = self
                .hops
                .iter()
                .zip(&self.facts.hops)
                .filter_map(|(h, f)| h.unfit.as_ref().map(|r| format!("{}: {r}", f.name)))
                .collect();
            return self.end(Ending::Invalid(reasons.join("; ")));
        }
        let deadline_spent = now + self.min_attempt >= self.deadline;
        let deadline_exceeded = deadline_exceeded || now + self.min_attempt > self.deadline;
        let retry_after = self
            .hops
            .iter()
            .filter_map(|h| h.recovers_at)
            .min()
            .map(|at| at.saturating_duration_since(now));
        let degrade = if self.facts.replay {
            Vec::new()
        } else {
            self.policy
                .degrade
                .iter()
                // A stream is never queued: its caller is reading now.
                .filter(|d| !(self.facts.stream && **d == Degrade::Queue))
                .cloned()
                .collect()
        };
        self.end(Ending::Unavailable {
            retry_after,
            deadline_exceeded,
            deadline_spent,
            degrade,
        });
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod hedge_tests {
    use super::*;
    use crate::policy::latency::Expected;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_automatic_hedge_delay_knows_the_request_and_the_chain() {
        let p = RetryPolicy::default();
        let e = Some(Expected {
            fixed: 40 * MS,
            per_token: 2 * MS,
        });
        // Twice the expected latency: 40 ms + 16 x 2 ms = 72 ms.
        assert_eq!(p.hedge_after(e, 16, false, false), Some(144 * MS));
        // Never below the floor, never for a chain of one, not for streams by default.
        let fast = Some(Expected {
            fixed: 5 * MS,
            per_token: Duration::ZERO,
        });
        assert_eq!(p.hedge_after(fast, 16, false, false), Some(MIN_AUTO_HEDGE));
        assert_eq!(p.hedge_after(e, 16, false, true), None);
        assert_eq!(p.hedge_after(e, 16, true, false), None);
        // Unlearned: a conservative delay.
        assert_eq!(p.hedge_after(None, 16, false, false), Some(UNLEARNED_HEDGE));
        let streams = RetryPolicy {
            hedge_streams: true,
            ..RetryPolicy::default()
        };
        assert_eq!(
            streams.hedge_after(e, 4096, true, false),
            Some(80 * MS),
            "first content"
        );
        let fixed = RetryPolicy {
            hedge: Hedge::After(2 * MS),
            ..RetryPolicy::default()
        };
        assert_eq!(
            fixed.hedge_after(None, 16, false, true),
            Some(2 * MS),
            "any chain"
        );
        let off = RetryPolicy {
            hedge: Hedge::Off,
            ..RetryPolicy::default()
        };
        assert_eq!(off.hedge_after(e, 16, false, false), None);
    }

    #[test]
    fn a_learned_timeout_fits_the_request_under_the_cap() {
        let p = RetryPolicy::default();
        let e = Some(Expected {
            fixed: 400 * MS,
            per_token: 20 * MS,
        });
        // 16 tokens: 0.72 s x 4 = 2.88 s, not the minute of attempt_timeout.
        assert_eq!(p.attempt_timeout_for(e, 16), Some(2880 * MS));
        assert_eq!(
            p.attempt_timeout_for(e, 100_000),
            Some(p.attempt_timeout),
            "capped"
        );
        let tiny = Some(Expected {
            fixed: MS,
            per_token: Duration::ZERO,
        });
        assert_eq!(p.attempt_timeout_for(tiny, 1), Some(MIN_LEARNED_TIMEOUT));
        assert_eq!(
            p.attempt_timeout_for(None, 16),
            None,
            "unlearned: the policy's"
        );
    }
}
