//! `RequestActor`: one per call. It drives the call's [`ChainWalk`] (the pure walk of the
//! fallback chain): the walk says what to do next, the actor does it and feeds back what
//! happened.
//!
//! Everything arrives as a message: a breaker's admission and the governor's decision come back
//! as casts (a [`Reply`] into this mailbox), attempts run as tasks of their own that report
//! their outcome, and the walk's timer is an epoch-tagged `send_after`. So the actor never
//! blocks on one thing while another (a hedge, a timeout) is due, and several attempts can be
//! in flight.
//!
//! - Attempts: [`attempt`] (one attempt: send with a budget, classify, record, settle; probes
//!   run it too).
//! - A committed stream is handed to the caller and pumped by a task of its own ([`stream`]).
//! - When no model can answer, the chain's degradation answers ([`degrade`]).
//! - The call's span, log line and monitor record ([`report`]).
//!
//! Every call is answered exactly once: the answer travels on a oneshot channel consumed by
//! the answer; a panicking request actor drops it, and the caller gets an internal error. Its
//! `FailureWatch` logs and counts such failures.
//!
//! Breaker or governor restarts: an ask whose answer is lost (the actor died holding it, or its
//! mailbox was closed) is asked again of the live incarnation, found through the supervisor.

pub(crate) mod cache;
mod context;
pub(crate) mod degrade;
mod finish;
pub(crate) mod report;
pub(crate) mod stream;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::oneshot;

pub use crate::policy::chain::Degrade;
pub use cache::ResponseCache;
pub use context::{Chain, InFlight, InFlightGuard, ModelInfo, Shared};
pub use stream::StreamReply;

use crate::attempt;
use crate::call::{Call, Reply, Source};
use crate::clock;
use crate::error::Error;
use crate::policy::breaker::Admission;
use crate::policy::chain::{
    AttemptId, CallFacts, ChainWalk, Credit, Ending, Event, Finish, HopFacts, Step,
};
use crate::policy::classify::{Class, Verdict};
use crate::policy::lanes::{Decision, ReserveRequest};
use crate::policy::ledger::Observed;
use crate::protocol::AttemptSample;
use crate::protocol::{BreakerMsg, GovernorMsg, PinAnswer, Responder, SupervisorMsg};
use crate::timer::Timer;
use crate::wire::Attempt;
use report::{CallEnd, Report};

/// Notices a request actor that failed: dropped with its state without having stopped cleanly
/// (`post_stop` marks a clean stop; ractor skips it when a handler panics or errs).
///
/// Request actors are not linked to the supervisor: linking cost two supervision messages to
/// one shared actor per call, ~9 µs of CPU of a ~28 µs call (BENCHMARKS.md, `call/complete` on a
/// current-thread runtime, 28.8 -> 19.3 µs median). The supervisor never restarted a request
/// actor anyway (its call is over); what it did, counting and logging the failure, is done here.
struct FailureWatch {
    in_flight: Arc<InFlight>,
    /// This actor, once registered in `in_flight.live` (by `pre_start`).
    id: Option<ractor::ActorId>,
    stopped: bool,
}

impl Drop for FailureWatch {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.in_flight.live.remove(&id);
        }
        if !self.stopped {
            self.in_flight.failures.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("seawall_request_actor_failures_total").increment(1);
            tracing::error!("a request actor failed: its call was answered with an internal error");
        }
    }
}

/// Start arguments of one request actor.
pub struct RequestArgs {
    /// The call.
    pub call: Call,
    /// Its chain.
    pub chain: Arc<Chain>,
    /// The call's feature id, for bulkheads.
    pub feature: Option<usize>,
    /// Runtime-wide data.
    pub shared: Arc<Shared>,
    /// Where the answer goes, exactly once.
    pub reply: ReplyTo,
    /// Keeps the call counted until it ends.
    pub guard: InFlightGuard,
}

/// Where a request actor's answer goes: a whole reply, or a committed stream.
pub enum ReplyTo {
    /// `Seawall::complete`.
    Unary(oneshot::Sender<Result<Reply, Error>>),
    /// `Seawall::stream`.
    Stream(oneshot::Sender<Result<StreamReply, Error>>),
}

/// What a request actor hears.
pub(crate) enum RequestMsg {
    /// A breaker's answer (`None`: lost with a breaker that died).
    Admission {
        /// The hop asked about.
        hop: usize,
        /// The answer.
        admission: Option<Admission>,
    },
    /// The governor's answer (`None`: lost).
    Budget {
        /// The hop.
        hop: usize,
        /// The answer.
        decision: Option<Decision>,
    },
    /// The primary breaker's pin answer (`None`: the answer was lost).
    Pinned(Option<PinAnswer>),
    /// Where the fleet has the conversation pinned (a model name), if anywhere.
    FleetPinned(Option<String>),
    /// A model's retry budget answered a hedge (`None`: lost).
    RetryBudget {
        /// The hop whose model pays.
        hop: usize,
        /// It may.
        granted: Option<bool>,
    },
    /// An input-token count.
    Counted {
        /// The hop.
        hop: usize,
        /// The count, if the upstream could count.
        tokens: Option<u64>,
    },
    /// The supervisor's answer: the live breaker of a hop (`None`: none is coming).
    BreakerRef {
        /// The hop.
        hop: usize,
        /// The live breaker.
        breaker: Option<ActorRef<BreakerMsg>>,
    },
    /// The supervisor's answer: the live governor (`None`: none is coming).
    GovernorRef(Option<ActorRef<GovernorMsg>>),
    /// An attempt ended.
    Done {
        /// Which.
        attempt: AttemptId,
        /// How.
        done: Box<attempt::Done>,
    },
    /// The walk's timer fired.
    Timer(u64),
}

/// How long a fleet-wide conversation pin lasts (a local one lasts until the primary closes).
const FLEET_PIN_TTL: Duration = Duration::from_secs(600);

/// Tries at reaching a restarted breaker or governor before giving up on it.
const ACTOR_RETRIES: u32 = 3;

/// An ask that waits for a live breaker or governor, to be asked again.
#[derive(Clone, Copy, Debug)]
enum Stalled {
    Acquire { hop: usize, retry: bool },
    Reserve { hop: usize, request: ReserveRequest },
}

/// An attempt in flight.
struct Flight {
    task: tokio::task::AbortHandle,
    hop: usize,
    retry: bool,
}

/// Count a hedge event of `model`: `started`, `won` or `cancelled`.
fn hedge_event(model: &str, outcome: &'static str) {
    metrics::counter!("seawall_hedges_total", "model" => model.to_owned(), "outcome" => outcome)
        .increment(1);
}

/// The actor.
pub(crate) struct RequestActor;

/// The actor's state.
pub(crate) struct RequestState {
    /// First, so it is dropped first: a failure is counted before the caller, woken by the
    /// reply port dropping below, can ask for the count.
    failure: FailureWatch,
    call: Call,
    chain: Arc<Chain>,
    feature: Option<usize>,
    shared: Arc<Shared>,
    /// Fault injection: this actor was chosen to panic at its first message (taken from
    /// `Shared::panic_next` once, at the start, so no message pays for the check).
    panic: bool,
    reply: Option<ReplyTo>,
    guard: Option<InFlightGuard>,
    walk: ChainWalk,
    report: Option<Report>,
    started: Instant,
    stream: bool,
    breakers: Vec<Option<ActorRef<BreakerMsg>>>,
    governor: Option<ActorRef<GovernorMsg>>,
    /// Asks waiting for a live breaker or governor.
    stalled: Vec<Stalled>,
    refreshes: u32,
    /// The supervisor could not be reached: the runtime is stopping.
    shutting_down: bool,
    /// Breaker asks awaiting an answer: hop -> the ask's `retry` (to ask again if lost).
    acquiring: HashMap<usize, bool>,
    /// Governor asks awaiting an answer: hop -> the request (to ask again if lost).
    reserving: HashMap<usize, ReserveRequest>,
    /// Attempts in flight: their tasks (to cancel a loser), hops and flags.
    flights: HashMap<AttemptId, Flight>,
    /// Attempts started as hedges (to count the ones that win).
    hedges: Vec<AttemptId>,
    /// Finished attempts whose answer the call may still return (or pass through).
    answers: HashMap<AttemptId, Box<attempt::Done>>,
    timer: Timer,
}

impl RequestState {
    fn new(args: RequestArgs) -> Self {
        let RequestArgs {
            call,
            chain,
            feature,
            shared,
            reply,
            guard,
        } = args;
        let now = clock::now();
        let stream = matches!(reply, ReplyTo::Stream(_));
        let seed = shared
            .seed
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        let original = call.estimate_input_tokens();
        let hops = chain
            .hops
            .iter()
            .enumerate()
            .map(|(i, &model)| {
                let info = &shared.models[model];
                let patched = chain.patches.get(i).and_then(Option::as_ref);
                let (input_estimate, max_tokens) = match patched {
                    Some(p) => {
                        let c = call.patched(p);
                        (c.estimate_input_tokens(), c.max_tokens())
                    }
                    None => (original, call.max_tokens()),
                };
                let expected = shared.latency.get(model);
                let policy = &chain.policy;
                let chain_of_one = chain.hops.len() == 1;
                HopFacts {
                    model,
                    name: info.name.clone(),
                    upstream: info.upstream,
                    input_estimate,
                    max_tokens,
                    attempt_timeout: (!stream)
                        .then(|| policy.attempt_timeout_for(expected, max_tokens))
                        .flatten(),
                    hedge_after: policy.hedge_after(expected, max_tokens, stream, chain_of_one),
                }
            })
            .collect();
        let facts = CallFacts {
            hops,
            stream,
            timeout: call.timeout,
            conversation: call.conversation.is_some(),
            replay: call.job.is_some(),
            seed,
        };
        let walk = ChainWalk::new(facts, Arc::clone(&chain.policy), now);
        let report = Report::new(&call, &chain, &shared);
        Self {
            failure: FailureWatch {
                in_flight: Arc::clone(&shared.in_flight),
                id: None,
                stopped: false,
            },
            breakers: vec![None; chain.hops.len()],
            governor: None,
            walk,
            report: Some(report),
            started: now,
            stream,
            call,
            chain,
            feature,
            // A plain load first: the swap, a write to a line every call shares, happens only
            // when a panic was asked for.
            panic: shared.panic_next.load(Ordering::Relaxed)
                && shared.panic_next.swap(false, Ordering::Relaxed),
            shared,
            reply: Some(reply),
            guard: Some(guard),
            stalled: Vec::new(),
            refreshes: 0,
            shutting_down: false,
            acquiring: HashMap::new(),
            reserving: HashMap::new(),
            flights: HashMap::new(),
            hedges: Vec::new(),
            answers: HashMap::new(),
            timer: Timer::default(),
        }
    }

    fn model_of(&self, hop: usize) -> usize {
        self.chain.hops[hop]
    }

    fn breaker(&mut self, hop: usize) -> Option<ActorRef<BreakerMsg>> {
        if self.breakers[hop].is_none() {
            self.breakers[hop] = self.shared.directory.breaker(self.model_of(hop));
        }
        self.breakers[hop].clone()
    }

    fn governor(&mut self) -> Option<ActorRef<GovernorMsg>> {
        if self.governor.is_none() {
            self.governor = self.shared.directory.governor();
        }
        self.governor.clone()
    }

    /// The request for `hop`: the original, patched as the chain says, plus a refusal's credit.
    fn hop_call(&self, hop: usize, credit: Option<&Credit>) -> Call {
        let mut call = match self.chain.patches.get(hop).and_then(Option::as_ref) {
            Some(p) => self.call.patched(p),
            None => self.call.clone(),
        };
        if let Some(credit) = credit {
            call.set_field("fallback_credit_token", credit.token.clone());
            if !credit.prefill.is_empty() {
                call.push_assistant_blocks(credit.prefill.clone());
            }
        }
        call
    }

    /// Ask `hop`'s breaker for a permit; a dead breaker is looked up again.
    fn acquire(&mut self, myself: &ActorRef<RequestMsg>, hop: usize, retry: bool) {
        let Some(breaker) = self.breaker(hop) else {
            return self.refresh_breaker(myself, Stalled::Acquire { hop, retry });
        };
        self.acquiring.insert(hop, retry);
        let reply = Responder::cast(
            myself,
            move |admission| RequestMsg::Admission { hop, admission },
            |m| match m {
                RequestMsg::Admission { admission, .. } => admission,
                _ => None,
            },
        );
        // A failed cast drops the reply, which reports the answer lost: asked again then.
        let _ = breaker.cast(BreakerMsg::Acquire { retry, reply });
    }

    fn reserve(&mut self, myself: &ActorRef<RequestMsg>, hop: usize, request: ReserveRequest) {
        let Some(governor) = self.governor() else {
            return self.refresh_governor(myself, Stalled::Reserve { hop, request });
        };
        self.reserving.insert(hop, request);
        let reply = Responder::cast(
            myself,
            move |decision| RequestMsg::Budget { hop, decision },
            |m| match m {
                RequestMsg::Budget { decision, .. } => decision,
                _ => None,
            },
        );
        let _ = governor.cast(GovernorMsg::Reserve(request, reply));
    }

    /// `ask` waits for the live breaker: ask the supervisor (it answers once the breaker is
    /// back, if it is being restarted).
    fn refresh_breaker(&mut self, myself: &ActorRef<RequestMsg>, ask: Stalled) {
        let hop = match ask {
            Stalled::Acquire { hop, .. } | Stalled::Reserve { hop, .. } => hop,
        };
        self.stalled.push(ask);
        self.refreshes += 1;
        if self.refreshes > ACTOR_RETRIES * self.chain.hops.len() as u32 + ACTOR_RETRIES {
            let now = clock::now();
            return self.walk.handle(
                Event::Lost("the breaker actor did not come back after restarts".into()),
                now,
            );
        }
        let stale = self.breakers[hop].take().map(|b| b.get_id());
        let reply = Responder::cast(
            myself,
            move |breaker| RequestMsg::BreakerRef { hop, breaker },
            |_| None,
        );
        if self
            .shared
            .supervisor
            .cast(SupervisorMsg::BreakerRef {
                model: self.model_of(hop),
                stale,
                reply,
            })
            .is_err()
        {
            self.shutting_down = true;
        }
    }

    fn refresh_governor(&mut self, myself: &ActorRef<RequestMsg>, ask: Stalled) {
        self.stalled.push(ask);
        self.refreshes += 1;
        if self.refreshes > ACTOR_RETRIES * self.chain.hops.len() as u32 + ACTOR_RETRIES {
            let now = clock::now();
            return self.walk.handle(
                Event::Lost("the governor actor did not come back after restarts".into()),
                now,
            );
        }
        let stale = self.governor.take().map(|g| g.get_id());
        let reply = Responder::cast(myself, RequestMsg::GovernorRef, |_| None);
        if self
            .shared
            .supervisor
            .cast(SupervisorMsg::GovernorRef { stale, reply })
            .is_err()
        {
            self.shutting_down = true;
        }
    }

    /// Ask again what waited for a live breaker or governor.
    fn resume(&mut self, myself: &ActorRef<RequestMsg>, governor: bool, hop: Option<usize>) {
        let (ready, waiting): (Vec<Stalled>, Vec<Stalled>) = std::mem::take(&mut self.stalled)
            .into_iter()
            .partition(|s| match (s, governor) {
                (Stalled::Reserve { .. }, true) => true,
                (Stalled::Acquire { hop: h, .. }, false) => Some(*h) == hop,
                _ => false,
            });
        self.stalled = waiting;
        for s in ready {
            match s {
                Stalled::Acquire { hop, retry } => self.acquire(myself, hop, retry),
                Stalled::Reserve { hop, request } => self.reserve(myself, hop, request),
            }
        }
    }

    fn lost(&mut self, why: &str) {
        let why = if self.shutting_down {
            "the seawall runtime is shutting down".to_owned()
        } else {
            why.to_owned()
        };
        let now = clock::now();
        self.walk.handle(Event::Lost(why), now);
    }

    /// Start an attempt's task.
    fn send(&mut self, myself: &ActorRef<RequestMsg>, s: crate::policy::chain::Send) {
        let model = self.model_of(s.hop);
        let info = &self.shared.models[model];
        let call = self.hop_call(s.hop, s.credit.as_ref());
        let body = if self.stream {
            call.stream_body_for(&info.id)
        } else {
            call.body_for(&info.id)
        };
        let upstream = Arc::clone(&self.shared.upstreams[info.upstream]);
        let system = self
            .shared
            .upstream_names
            .get(info.upstream)
            .map_or("", String::as_str);
        let span = report::attempt_span(
            self.report
                .as_ref()
                .map_or(&tracing::Span::none(), |r| &r.span),
            system,
            &info.name,
            s.retry_count + 1,
            s.retry,
            s.hedge,
            s.ticket.key,
        );
        let job = attempt::Spec {
            upstream,
            attempt: Attempt {
                model: info.id.clone(),
                body,
                key: s.ticket.key,
                retry_count: s.retry_count,
                timeout: s.timeout,
                idempotency_key: self.call.idempotency_key.clone(),
                forward: self.call.forward.clone(),
            },
            stream: self.stream,
            model,
            retry: s.retry,
            holds: attempt::Holds {
                breaker: self.breakers[s.hop].clone(),
                governor: self.governor.clone(),
                permit: s.permit,
                ticket: s.ticket,
            },
            span,
        };
        let me = myself.clone();
        let id = s.attempt;
        let task = tokio::spawn(async move {
            let done = attempt::run(job).await;
            // The actor may be gone (the call ended): an unwanted head gives itself back.
            let _ = me.cast(RequestMsg::Done {
                attempt: id,
                done: Box::new(done),
            });
        });
        if s.hedge {
            hedge_event(&self.shared.models[model].name, "started");
            self.hedges.push(id);
        }
        self.flights.insert(
            id,
            Flight {
                task: task.abort_handle(),
                hop: s.hop,
                retry: s.retry,
            },
        );
    }

    /// Count `hop`'s input tokens with its upstream's counter (a task: it is I/O).
    fn count_tokens(&mut self, myself: &ActorRef<RequestMsg>, hop: usize) {
        let model = self.model_of(hop);
        let info = self.shared.models[model].clone();
        let upstream = Arc::clone(&self.shared.upstreams[info.upstream]);
        let governor = self.governor();
        let body = self.hop_call(hop, None).body_for(&info.id);
        let forward = self.call.forward.clone();
        // A count is worth at most a quarter of what is left, and never more than 2 s.
        let budget = (self.walk.deadline().saturating_duration_since(clock::now()) / 4)
            .min(Duration::from_secs(2));
        let me = myself.clone();
        tokio::spawn(async move {
            let attempt = Attempt {
                model: info.id.clone(),
                body,
                key: 0,
                retry_count: 0,
                timeout: budget,
                idempotency_key: None,
                forward,
            };
            let tokens =
                attempt::count_tokens(upstream.as_ref(), info.upstream, governor, attempt, budget)
                    .await
                    .ok();
            let _ = me.cast(RequestMsg::Counted { hop, tokens });
        });
    }

    /// Carry out what the walk asks until it waits; true once the call has ended.
    async fn drive(&mut self, myself: &ActorRef<RequestMsg>) -> bool {
        while let Some(step) = self.walk.poll() {
            match step {
                Step::AskPin => {
                    let conversation = self.call.conversation_digest();
                    match (self.breaker(0), conversation) {
                        (Some(primary), Some(conversation)) => {
                            let reply = Responder::cast(myself, RequestMsg::Pinned, |_| None);
                            let _ = primary.cast(BreakerMsg::Pinned {
                                conversation,
                                reply,
                            });
                        }
                        _ => self.walk.handle(Event::Pinned(None), clock::now()),
                    }
                }
                Step::Acquire { hop, retry } => self.acquire(myself, hop, retry),
                Step::SpendRetry { hop } => match self.breaker(hop) {
                    Some(breaker) => {
                        let reply = Responder::cast(
                            myself,
                            move |granted| RequestMsg::RetryBudget { hop, granted },
                            |_| None,
                        );
                        let _ = breaker.cast(BreakerMsg::SpendRetry(reply));
                    }
                    // No breaker to ask (being restarted): no hedge this time.
                    None => self.walk.handle(
                        Event::RetryBudget {
                            hop,
                            granted: false,
                        },
                        clock::now(),
                    ),
                },
                Step::CountTokens { hop } => self.count_tokens(myself, hop),
                Step::Reserve {
                    hop,
                    cost,
                    max_wait,
                } => {
                    let info = &self.shared.models[self.model_of(hop)];
                    let request = ReserveRequest {
                        upstream: info.upstream,
                        class: info.class,
                        cost,
                        lane: self.call.lane,
                        feature: self.feature,
                        max_wait,
                    };
                    self.reserve(myself, hop, request);
                }
                Step::Release {
                    hop,
                    permit,
                    ticket,
                } => {
                    attempt::unused(&self.breakers[hop], Some(permit), &self.governor, ticket);
                }
                Step::Send(s) => self.send(myself, s),
                Step::Cancel { attempt } => {
                    if let Some(f) = self.flights.remove(&attempt) {
                        f.task.abort();
                        let model = self.model_of(f.hop);
                        hedge_event(&self.shared.models[model].name, "cancelled");
                    }
                    self.answers.remove(&attempt);
                }
                Step::Pin { hop } => {
                    let conversation = self.call.conversation_digest();
                    if let (Some(primary), Some(conversation)) = (self.breaker(0), conversation) {
                        let _ = primary.cast(BreakerMsg::Pin {
                            conversation,
                            tenant: self.call.tenant_digest(),
                            model: self.model_of(hop),
                        });
                    }
                    if let (Some(fleet), Some(conversation)) =
                        (self.shared.fleet.clone(), conversation)
                    {
                        let model = self.shared.models[self.model_of(hop)].name.clone();
                        tokio::spawn(async move {
                            // Served by the primary: unpin. Lost with the fleet: local only.
                            let _ = if hop == 0 {
                                fleet.unpin(conversation).await
                            } else {
                                fleet.pin(conversation, &model, FLEET_PIN_TTL).await
                            };
                        });
                    }
                }
                Step::Finish(f) => {
                    // Boxed: degrading awaits caches, the fleet and the queue, and inline that
                    // state would size every message's future, which ractor keeps boxed for
                    // the actor's life (BENCHMARKS.md, memory).
                    Box::pin(self.finish(f)).await;
                    return true;
                }
            }
        }
        let next = self.walk.poll_timeout();
        self.timer
            .rearm(myself, next, clock::now(), RequestMsg::Timer);
        false
    }
}

impl Actor for RequestActor {
    type Msg = RequestMsg;
    type State = RequestState;
    type Arguments = RequestArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: RequestArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = RequestState::new(args);
        // Registered here, before the actor can end, so its removal (when the state drops)
        // always comes after.
        let id = myself.get_id();
        state.failure.in_flight.live.insert(id, myself);
        state.failure.id = Some(id);
        Ok(state)
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if state.drive(&myself).await {
            myself.stop(None);
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if state.panic {
            panic!("injected panic in a request actor");
        }
        let now = clock::now();
        if state.report.is_none() {
            // The call has ended; only late news arrives now. A late grant or permit goes back.
            match msg {
                RequestMsg::Admission {
                    hop,
                    admission: Some(Admission::Permitted(p)),
                } => attempt::unused(&state.breakers[hop], Some(p), &state.governor, None),
                RequestMsg::Budget {
                    decision: Some(Decision::Grant { ticket, .. }),
                    ..
                } => attempt::unused(&None, None, &state.governor, Some(ticket)),
                _ => {}
            }
            return Ok(());
        }
        match msg {
            RequestMsg::Admission { hop, admission } => {
                let retry = state.acquiring.remove(&hop);
                match (admission, retry) {
                    (Some(admission), _) => {
                        state.walk.handle(Event::Admission { hop, admission }, now)
                    }
                    // The breaker died holding the ask: ask its next incarnation.
                    (None, Some(retry)) => {
                        state.refresh_breaker(&myself, Stalled::Acquire { hop, retry })
                    }
                    (None, None) => {}
                }
            }
            RequestMsg::Budget { hop, decision } => {
                let request = state.reserving.remove(&hop);
                match (decision, request) {
                    (Some(decision), _) => state.walk.handle(Event::Budget { hop, decision }, now),
                    (None, Some(request)) => {
                        state.refresh_governor(&myself, Stalled::Reserve { hop, request })
                    }
                    (None, None) => {}
                }
            }
            RequestMsg::Pinned(answer) => match (answer, state.shared.fleet.clone()) {
                (Some(PinAnswer::Open(Some(model))), _) => {
                    state.walk.handle(Event::Pinned(Some(model)), now)
                }
                // Not pinned here, the primary not closed: the fleet may know.
                (Some(PinAnswer::Open(None)), Some(fleet)) => {
                    match state.call.conversation_digest() {
                        Some(conversation) => {
                            let me = myself.clone();
                            tokio::spawn(async move {
                                let pinned = fleet.pinned(conversation).await.unwrap_or(None);
                                let _ = me.cast(RequestMsg::FleetPinned(pinned));
                            });
                        }
                        None => state.walk.handle(Event::Pinned(None), now),
                    }
                }
                _ => state.walk.handle(Event::Pinned(None), now),
            },
            RequestMsg::FleetPinned(name) => {
                let model = name.and_then(|n| state.shared.models.iter().position(|m| m.name == n));
                state.walk.handle(Event::Pinned(model), now)
            }
            RequestMsg::Counted { hop, tokens } => {
                state.walk.handle(Event::Counted { hop, tokens }, now)
            }
            RequestMsg::RetryBudget { hop, granted } => state.walk.handle(
                Event::RetryBudget {
                    hop,
                    granted: granted.unwrap_or(false),
                },
                now,
            ),
            RequestMsg::BreakerRef { hop, breaker } => match breaker {
                Some(b) => {
                    state.breakers[hop] = Some(b);
                    state.resume(&myself, false, Some(hop));
                }
                None => state.lost("the breaker actor did not come back after restarts"),
            },
            RequestMsg::GovernorRef(governor) => match governor {
                Some(g) => {
                    state.governor = Some(g);
                    state.resume(&myself, true, None);
                }
                None => state.lost("the governor actor did not come back after restarts"),
            },
            RequestMsg::Done { attempt, mut done } => {
                // A cancelled attempt's late result: dropping it gives back what it holds.
                let Some(Flight { hop, retry, .. }) = state.flights.remove(&attempt) else {
                    return Ok(());
                };
                let model = state.model_of(hop);
                if let Some(sample) = done.sample {
                    if let Some(r) = state.report.as_mut() {
                        r.sample(sample);
                    }
                }
                if let Some(head) = done.head.as_mut() {
                    if head.finished {
                        // The stream ended before any content: it is whole now, so it is
                        // booked now (a refusal kept in case no later hop serves counts once).
                        let latency = done.report.latency;
                        if let Some(entry) = head.record_now() {
                            if let Some(r) = state.report.as_mut() {
                                r.sample(AttemptSample {
                                    model,
                                    class: Class::Success,
                                    status: Some(head.status),
                                    latency,
                                    at: now,
                                    retry,
                                    usage: entry.usage,
                                });
                            }
                        }
                    }
                }
                let report = done.report.clone();
                state.walk.handle(Event::Finished { attempt, report }, now);
                if let Some(delay) = state.walk.retry_delay(hop) {
                    done.span.record("retry_delay_ms", delay.as_millis() as u64);
                }
                if matches!(
                    done.report.verdict,
                    Verdict::Success | Verdict::Permanent { .. }
                ) {
                    state.answers.insert(attempt, done);
                }
            }
            RequestMsg::Timer(epoch) => {
                if !state.timer.fired(epoch) {
                    return Ok(()); // a stale timer: the walk's deadline moved
                }
                state.walk.handle_timeout(now);
            }
        }
        if state.drive(&myself).await {
            myself.stop(None);
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        for (_, f) in state.flights.drain() {
            f.task.abort();
        }
        state.failure.stopped = true;
        Ok(())
    }
}

/// Spawn a request actor for `args`; a failing one is noticed by its `FailureWatch`.
pub(crate) async fn spawn(args: RequestArgs) -> Result<(), Error> {
    Actor::spawn(None, RequestActor, args)
        .await
        .map(|_| ())
        .map_err(|e| Error::Internal(format!("could not start a request actor: {e}")))
}
