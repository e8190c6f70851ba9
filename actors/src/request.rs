//! `RequestActor`: one per call, and the only actor that awaits I/O.
//!
//! It walks the call's fallback chain by messaging the breakers and the governor (hand-written:
//! chain walking is the product). The rules:
//!
//! - Hops are tried in chain order; a hop is *ready* when nothing (backoff, retry-after, open
//!   breaker, budget) tells it to wait. The first ready hop is tried.
//! - A capacity error, an open breaker or a lack of budget on one hop moves to the next ready hop
//!   at once: no sleep while another model can serve.
//! - A transient failure schedules the same hop again after backoff (the server's retry hint
//!   wins). Only when no hop is ready does the actor sleep, until the earliest hop is; and only if
//!   an attempt could still start before the deadline with `min_attempt` to spare. Otherwise it
//!   answers at once with the honest error and a retry-after.
//! - A permanent error is never retried: a request-scoped one (400, 413, 422) goes back to the
//!   caller unchanged; a model-, key- or organization-scoped one ends that hop only.
//! - Every call is answered exactly once: the reply travels on a oneshot channel that is consumed
//!   by the answer, and a dropped channel (a panic) reaches the caller as an internal error.
//!
//! Observability rides on the same walk. A call runs inside a `seawall.call` span, and each
//! upstream attempt inside a `seawall.attempt` span, both with OpenTelemetry GenAI fields. When
//! the call ends, one structured log line says how it went, and one cast carries its outcome and
//! its attempts' samples to the monitor (SLA windows, metrics, alerts). Nothing else is added to
//! the hot path: no lock, no extra await.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ractor::rpc::CallResult;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::{oneshot, Notify};
use tracing::field::Empty;
use tracing::Instrument;

use crate::assemble::{events_of, Assembler};
use crate::breaker::{Admission, BreakerMsg};
use crate::call::{AttemptRecord, Call, Outcome, Reply, StreamReply};
use crate::clock;
use crate::error::Error;
use crate::governor::{Decision, GovernorMsg, RejectReason, ReserveRequest, ServerLimits, Ticket};
use crate::monitor::{AttemptSample, CallRecord, CallStatus, MonitorMsg, Price};
use crate::policy::backoff::{Backoff, SplitMix64, Step};
use crate::policy::breaker::Permit;
use crate::policy::classify::{classify, Class, Scope, Verdict};
use crate::queue::{Job, QueueMsg};
use crate::supervisor::{Directory, SupervisorMsg};
use crate::upstream::{
    Attempt, Cost, Headers, SseEvent, StreamBody, TransportError, Upstream, UpstreamResponse, Usage,
};

/// How a chain retries and how long a call may take.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Delays between attempts on the same model.
    pub backoff: Backoff,
    /// Default total deadline of a call (a call's own `timeout` overrides it).
    pub deadline: Duration,
    /// Longest single attempt.
    pub attempt_timeout: Duration,
    /// Streaming: longest wait from the start of an attempt to its first content event. Until
    /// then the call may still move to another model; after it, only the deadline bounds the
    /// stream.
    pub first_token_timeout: Duration,
    /// No attempt starts with less than this left before the deadline: it could not finish.
    /// A call whose own timeout is short uses at most half of it.
    pub min_attempt: Duration,
    /// Upstream attempts per call across all hops.
    pub max_attempts: u32,
    /// How input tokens are estimated before the governor reserves them.
    pub estimate: Estimate,
    /// Move to the next hop when a model answers `stop_reason: "refusal"` (forwarding the
    /// refusal's `fallback_credit_token`). Streams: only when the refusal came before content.
    pub refusal_fallback: bool,
    /// What a unary call of this chain falls back to, in order, when no model can answer
    /// (`Error::Unavailable`); never for a rejected request. Empty: the honest error.
    pub degrade: Vec<Degrade>,
}

/// A degraded answer a chain may give when no model can answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Degrade {
    /// The response cache's last live answer to the same request (any model), if one is
    /// fresh enough; the chain's live answers are stored for it.
    Cache,
    /// A fixed text, flagged as static.
    Static(String),
    /// Store the call in the durable queue and answer at once with its job id (HTTP 202,
    /// `Source::Queued`); it runs later on the background lane (see `Builder::queue`).
    Queue,
}

/// How a call's input tokens are estimated before budget is reserved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Estimate {
    /// About four bytes of JSON text per token: instant, usually within 20-30%; settlement with
    /// the real usage corrects it.
    #[default]
    Heuristic,
    /// Ask the upstream's `count_tokens` endpoint once per call and upstream (falls back to the
    /// heuristic when the upstream has no counter or the count fails). Exact, costs a round trip.
    CountTokens,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            backoff: Backoff::default(),
            deadline: Duration::from_secs(120),
            attempt_timeout: Duration::from_secs(60),
            first_token_timeout: Duration::from_secs(60),
            min_attempt: Duration::from_millis(200),
            max_attempts: 6,
            estimate: Estimate::Heuristic,
            refusal_fallback: false,
            degrade: Vec::new(),
        }
    }
}

impl RetryPolicy {
    /// Check the settings; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        self.backoff.validate()?;
        if self.deadline.is_zero() {
            return Err("deadline must be greater than zero".into());
        }
        if self.attempt_timeout.is_zero() {
            return Err("attempt_timeout must be greater than zero".into());
        }
        if self.first_token_timeout.is_zero() {
            return Err("first_token_timeout must be greater than zero".into());
        }
        if self.min_attempt >= self.deadline {
            return Err("min_attempt must be shorter than deadline".into());
        }
        if self.max_attempts == 0 {
            return Err("max_attempts must be at least 1".into());
        }
        Ok(())
    }
}

/// A resolved fallback chain: model ids in order, and its retry policy.
#[derive(Debug)]
pub struct Chain {
    /// The chain's id (its index in the monitor's chain list).
    pub id: usize,
    /// The chain's name.
    pub name: String,
    /// Model ids, first choice first.
    pub hops: Vec<usize>,
    /// Per hop: a patch against the original request (`None`: the request as is).
    pub patches: Vec<Option<serde_json::Map<String, serde_json::Value>>>,
    /// Retry and deadline rules.
    pub policy: RetryPolicy,
}

/// A model as request actors see it.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    /// The model name sent upstream.
    pub name: String,
    /// Index of its upstream.
    pub upstream: usize,
    /// Its model class within the upstream, for per-class limits (0: the upstream's default).
    pub class: usize,
}

/// Counts calls in flight so shutdown can wait for them.
#[derive(Default)]
pub struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

impl InFlight {
    /// Register a call; the guard unregisters it when dropped.
    pub fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.count.fetch_add(1, Ordering::SeqCst);
        InFlightGuard(self.clone())
    }

    /// Calls in flight now.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Wait until no call is in flight.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Keeps a call counted as in flight while it lives.
pub struct InFlightGuard(Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// What every request actor of one runtime shares (read-only after spawn).
pub struct Shared {
    /// Live actor refs.
    pub directory: Arc<Directory>,
    /// The supervisor, asked for fresh refs after a child restart.
    pub supervisor: ActorRef<SupervisorMsg>,
    /// Upstreams by index.
    pub upstreams: Vec<Arc<dyn Upstream>>,
    /// Upstream names by index (the `gen_ai.system` of traces).
    pub upstream_names: Vec<String>,
    /// Models by id.
    pub models: Vec<ModelInfo>,
    /// Prices by model id, for the cost in the call log line.
    pub prices: Vec<Option<Price>>,
    /// Put the request's messages and system prompt in the call log line (off by default:
    /// prompts may hold personal data).
    pub log_prompts: bool,
    /// Calls in flight.
    pub in_flight: Arc<InFlight>,
    /// Seed source for per-call jitter.
    pub seed: AtomicU64,
    /// The response cache, when configured.
    pub cache: Option<Arc<ResponseCache>>,
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
    /// Keeps the call counted until the actor ends.
    pub guard: InFlightGuard,
}

/// Where a request actor's answer goes: a whole reply, or a committed stream.
pub enum ReplyTo {
    /// `Seawall::complete`.
    Unary(oneshot::Sender<Result<Reply, Error>>),
    /// `Seawall::stream`.
    Stream(oneshot::Sender<Result<StreamReply, Error>>),
}

/// The actor.
pub struct RequestActor;

impl Actor for RequestActor {
    type Msg = ();
    type State = Option<RequestArgs>;
    type Arguments = RequestArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: RequestArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(Some(args))
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(args) = state.take() {
            let RequestArgs {
                call,
                chain,
                feature,
                shared,
                reply,
                guard,
            } = args;
            let span = call_span(&call, &chain, &shared);
            match reply {
                ReplyTo::Unary(reply) => {
                    let fallback = Fallback::new(&call, &chain, &shared, false);
                    let mut walk = Walk::new(call, chain, feature, shared.clone(), false);
                    let result = walk
                        .run()
                        .instrument(span.clone())
                        .await
                        .and_then(Done::into_reply);
                    let result = degraded(result, fallback, walk.elapsed()).await;
                    let end = CallEnd::of_unary(&result, walk.served, walk.elapsed());
                    walk.conclude(&span, end);
                    // The caller may have stopped waiting; then nobody needs the answer.
                    let _ = reply.send(result);
                }
                ReplyTo::Stream(reply) => {
                    let fallback = Fallback::new(&call, &chain, &shared, true);
                    let mut walk = Walk::new(call, chain, feature, shared, true);
                    match walk.run().instrument(span.clone()).await {
                        Ok(Done::Stream(committed)) => {
                            let hop = committed.idx;
                            let (stream_reply, forward) = walk.commit(*committed);
                            let ttft = stream_reply.time_to_first_token;
                            if reply.send(Ok(stream_reply)).is_ok() {
                                let end = walk.forward(forward).instrument(span.clone()).await;
                                walk.conclude(&span, end.into_call_end(hop, ttft));
                            } else {
                                let end = StreamEnd::abandoned(&forward);
                                walk.abandon(forward);
                                walk.conclude(&span, end.into_call_end(hop, ttft));
                            }
                        }
                        Ok(Done::Reply(_)) => {
                            let e =
                                Error::Internal("a streaming call produced a whole reply".into());
                            walk.conclude(&span, CallEnd::of_error(&e, walk.elapsed(), true));
                            let _ = reply.send(Err(e));
                        }
                        Err(e @ Error::Unavailable { .. }) if !fallback.degrade.is_empty() => {
                            let elapsed = walk.elapsed();
                            let result = degraded(Err(e), fallback, elapsed).await;
                            let end = CallEnd::of_unary(&result, None, elapsed);
                            walk.conclude(&span, end);
                            let _ = reply.send(result.map(stream_of));
                        }
                        Err(e) => {
                            walk.conclude(&span, CallEnd::of_error(&e, walk.elapsed(), true));
                            let _ = reply.send(Err(e));
                        }
                    }
                }
            }
            drop(guard);
        }
        myself.stop(None);
        Ok(())
    }
}

/// How long a breaker, governor or supervisor may take to answer before it is presumed dead.
const ACTOR_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Tries at reaching a restarted breaker or governor before giving up on it.
const ACTOR_RETRIES: usize = 3;
/// Smallest pause before re-asking a breaker whose state we could not predict.
const MIN_PAUSE: Duration = Duration::from_millis(1);

struct Hop {
    model: usize,
    /// The request for this hop: the original, patched when the chain says so.
    call: Option<Call>,
    /// Upstream attempts made on this hop (a second one is a retry, which the budget must allow).
    attempts: u32,
    failures: u32,
    ready_at: Instant,
    done: bool,
    /// When this hop is expected to recover, for the caller's retry-after.
    recovers_at: Option<Instant>,
    /// A permanent answer that ended this hop, kept to pass through if all hops end that way.
    permanent: Option<(u16, bytes::Bytes, crate::upstream::Headers)>,
    /// Why this hop's transport refused to send the request at all.
    refused: Option<String>,
    /// Before the conversation's pinned hop: tried only when no later hop can go now.
    deferred: bool,
}

struct Walk {
    call: Call,
    chain: Arc<Chain>,
    feature: Option<usize>,
    shared: Arc<Shared>,
    started: Instant,
    deadline: Instant,
    min_attempt: Duration,
    hops: Vec<Hop>,
    trail: Vec<AttemptRecord>,
    attempts: u32,
    rng: SplitMix64,
    breakers: Vec<Option<ActorRef<BreakerMsg>>>,
    governor: Option<ActorRef<GovernorMsg>>,
    /// Input-token estimate per hop, made once per call.
    estimates: Vec<Option<u64>>,
    /// A refusal kept as the answer if no later hop serves.
    refusal: Option<Reply>,
    /// A refused stream (ended before content) kept the same way.
    refused_stream: Option<Box<Committed>>,
    /// The hop of the kept refusal.
    refusal_hop: Option<usize>,
    /// The hop that served the answer.
    served: Option<usize>,
    /// What each upstream attempt did, for the monitor.
    samples: Vec<AttemptSample>,
    /// The credit a refusal minted, forwarded to later hops (token, prefill blocks).
    credit: Option<(serde_json::Value, Vec<serde_json::Value>)>,
    /// A streaming call: attempts stream, and the walk ends at the first content event.
    stream: bool,
}

enum Visit {
    Answer(Result<Done, Error>),
    Continue,
}

/// How a walk ended well: a whole reply, or a stream whose first content is ready.
enum Done {
    Reply(Reply),
    Stream(Box<Committed>),
}

impl Done {
    fn into_reply(self) -> Result<Reply, Error> {
        match self {
            Done::Reply(r) => Ok(r),
            Done::Stream(_) => Err(Error::Internal("a unary call produced a stream".into())),
        }
    }
}

/// A stream that reached its first content event on hop `idx`: everything needed to hand it to
/// the caller and then pump the rest, recording the outcome at its end.
struct Committed {
    idx: usize,
    permit: Permit,
    ticket: Ticket,
    model: String,
    status: u16,
    headers: Headers,
    started: Instant,
    /// Events up to and including the first content event.
    buffered: Vec<SseEvent>,
    events: tokio::sync::mpsc::Receiver<Result<SseEvent, TransportError>>,
    /// True when the upstream's stream already ended (an answer with no content).
    finished: bool,
    /// Breaker and governor already heard how it went (a refusal kept for later).
    recorded: bool,
}

/// What the rest of a committed stream needs once the caller has it.
struct Forward {
    c: Committed,
    tx: tokio::sync::mpsc::Sender<SseEvent>,
    /// Rebuilds the whole answer for the response cache, when the chain caches.
    assembler: Option<Assembler>,
}

/// A stream read up to its first content event.
struct StreamHead {
    status: u16,
    headers: Headers,
    buffered: Vec<SseEvent>,
    events: tokio::sync::mpsc::Receiver<Result<SseEvent, TransportError>>,
    finished: bool,
}

/// How a streaming attempt started: ready to commit, or failed as the classifier sees it.
enum StreamStart {
    Ready(Box<StreamHead>),
    Failed(Result<UpstreamResponse, TransportError>),
}

impl Walk {
    fn new(
        call: Call,
        chain: Arc<Chain>,
        feature: Option<usize>,
        shared: Arc<Shared>,
        stream: bool,
    ) -> Self {
        let started = clock::now();
        let total = call.timeout.unwrap_or(chain.policy.deadline);
        let deadline = started + total;
        let min_attempt = chain.policy.min_attempt.min(total / 2);
        let hops = chain
            .hops
            .iter()
            .enumerate()
            .map(|(i, &model)| Hop {
                model,
                call: chain
                    .patches
                    .get(i)
                    .and_then(Option::as_ref)
                    .map(|p| call.patched(p)),
                attempts: 0,
                failures: 0,
                ready_at: started,
                done: false,
                recovers_at: None,
                permanent: None,
                refused: None,
                deferred: false,
            })
            .collect();
        let seed = shared
            .seed
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        let breakers = vec![None; chain.hops.len()];
        let estimates = vec![None; chain.hops.len()];
        Self {
            call,
            chain,
            feature,
            shared,
            started,
            deadline,
            min_attempt,
            hops,
            trail: Vec::new(),
            attempts: 0,
            rng: SplitMix64::new(seed),
            breakers,
            governor: None,
            estimates,
            refusal: None,
            refused_stream: None,
            refusal_hop: None,
            served: None,
            samples: Vec::new(),
            credit: None,
            stream,
        }
    }

    /// Time since the call started.
    fn elapsed(&self) -> Duration {
        clock::now().saturating_duration_since(self.started)
    }

    /// Note one upstream attempt's outcome for the monitor.
    fn sample(
        &mut self,
        idx: usize,
        class: Class,
        status: Option<u16>,
        latency: Duration,
        usage: Usage,
    ) {
        let retry = self.hops[idx].attempts > 1;
        self.samples.push(AttemptSample {
            model: self.hops[idx].model,
            class,
            status,
            latency,
            at: clock::now(),
            retry,
            usage,
        });
    }

    /// The call ended: fill the call span, write the call's log line and tell the monitor.
    fn conclude(&mut self, span: &tracing::Span, end: CallEnd<'_>) {
        let samples = std::mem::take(&mut self.samples);
        let cost: f64 = samples
            .iter()
            .filter_map(|s| {
                let price = self.shared.prices.get(s.model).copied().flatten()?;
                Some(price.cost(&s.usage))
            })
            .sum();
        let status = match (end.error, end.served) {
            (Some(e), _) => call_status(e),
            (None, Some(hop)) => CallStatus::Answered {
                hop,
                model: self.hops[hop].model,
            },
            (None, None) => CallStatus::Failed("internal"),
        };
        let served_by = match status {
            CallStatus::Answered { model, .. } => {
                self.shared.models.get(model).map(|m| m.name.as_str())
            }
            _ => None,
        };
        let attempts = samples.len();
        let retries = samples.iter().filter(|s| s.retry).count();
        if !span.is_disabled() {
            span.record("status", status.label());
            span.record("attempts", attempts);
            span.record("latency_ms", end.latency.as_millis() as u64);
            span.record("cost_usd", cost);
            if let Some(model) = served_by {
                span.record("gen_ai.response.model", model);
                span.record("served_by", model);
                span.record("source", "live");
                span.record("gen_ai.usage.input_tokens", end.usage.input_tokens);
                span.record("gen_ai.usage.output_tokens", end.usage.output_tokens);
            }
            if let Some(id) = end.request_id.as_deref() {
                span.record("request_id", id);
            }
        }
        let prompt = self.shared.log_prompts.then(|| prompt_text(&self.call));
        log_call(&CallLog {
            chain: &self.chain.name,
            model: self.call.model(),
            feature: self.call.feature.as_deref(),
            lane: self.call.lane,
            stream: end.stream,
            stream_end: end.stream_class.map(Class::as_str),
            status,
            http_status: end.http_status,
            served_by,
            request_id: end.request_id.as_deref(),
            latency: end.latency,
            usage: end.usage,
            attempts,
            retries,
            cost,
            error: end.error,
            prompt: prompt.as_deref(),
        });
        if let Some(monitor) = self.shared.directory.monitor() {
            // A monitor being restarted loses this record, as its windows died with it.
            let _ = monitor.cast(MonitorMsg::Call(CallRecord {
                chain: self.chain.id,
                status,
                latency: end.latency,
                at: clock::now(),
                attempts: samples,
            }));
        }
    }

    /// The request for hop `idx`: patched as the chain says, plus a refusal's credit.
    fn hop_call(&self, idx: usize) -> Call {
        let mut call = self.hops[idx]
            .call
            .clone()
            .unwrap_or_else(|| self.call.clone());
        if let Some((token, prefill)) = &self.credit {
            call.set_field("fallback_credit_token", token.clone());
            if !prefill.is_empty() {
                call.push_assistant_blocks(prefill.clone());
            }
        }
        call
    }

    /// Is any hop other than `idx` still able to serve?
    fn others_left(&self, idx: usize) -> bool {
        self.hops
            .iter()
            .enumerate()
            .any(|(j, h)| j != idx && !h.done)
    }

    /// End the walk: a kept refusal is an honest answer; otherwise the honest error.
    fn finish(&mut self, now: Instant, deadline_exceeded: bool) -> Result<Done, Error> {
        if let Some(mut reply) = self.refusal.take() {
            reply.trail = std::mem::take(&mut self.trail);
            reply.attempts = self.attempts;
            self.served = self.refusal_hop;
            return Ok(Done::Reply(reply));
        }
        if let Some(stream) = self.refused_stream.take() {
            return Ok(Done::Stream(stream));
        }
        Err(self.give_up(now, deadline_exceeded))
    }

    /// Walk the chain. A call with a conversation key starts at the hop its conversation is
    /// pinned to, and pins (or unpins) it by who served.
    async fn run(&mut self) -> Result<Done, Error> {
        let pinned = self.pinned_hop().await;
        if let Some(k) = pinned {
            for h in &mut self.hops[..k] {
                h.deferred = true;
            }
            tracing::debug!(hop = k, "conversation pinned to a fallback");
        }
        let result = self.run_hops().await;
        let served = match &result {
            Ok(Done::Stream(committed)) => Some(committed.idx),
            Ok(Done::Reply(_)) => self.served,
            Err(_) => None,
        };
        if let (Some(conversation), Some(served)) = (self.call.conversation_digest(), served) {
            // Served by a later hop: pin there. Served by the first: unpin (if it was pinned).
            if served > 0 || pinned.is_some() {
                if let Ok(primary) = self.breaker(0, false).await {
                    let _ = primary.cast(BreakerMsg::Pin {
                        conversation,
                        tenant: self.call.tenant_digest(),
                        model: self.hops[served].model,
                    });
                }
            }
        }
        result
    }

    /// The hop this call's conversation is pinned to, when it is a later hop of this chain.
    async fn pinned_hop(&mut self) -> Option<usize> {
        let conversation = self.call.conversation_digest()?;
        if self.hops.len() < 2 {
            return None;
        }
        let primary = self.breaker(0, false).await.ok()?;
        let model = match primary
            .call(
                |reply| BreakerMsg::Pinned {
                    conversation,
                    reply,
                },
                Some(ACTOR_CALL_TIMEOUT),
            )
            .await
        {
            Ok(CallResult::Success(Some(model))) => model,
            _ => return None,
        };
        self.hops
            .iter()
            .position(|h| h.model == model)
            .filter(|&k| k > 0)
    }

    async fn run_hops(&mut self) -> Result<Done, Error> {
        let policy = self.chain.policy.clone();
        loop {
            let now = clock::now();
            if self.attempts >= policy.max_attempts {
                return self.finish(now, false);
            }
            // Hops before a pinned one are the last resort: only when no later hop can go now.
            let ready = self
                .hops
                .iter()
                .position(|h| !h.done && !h.deferred && h.ready_at <= now)
                .or_else(|| self.hops.iter().position(|h| !h.done && h.ready_at <= now));
            let idx = match ready {
                Some(i) => i,
                None => {
                    let next = self
                        .hops
                        .iter()
                        .filter(|h| !h.done)
                        .map(|h| h.ready_at)
                        .min();
                    match next {
                        Some(at) if at + self.min_attempt <= self.deadline => {
                            clock::sleep_until(at).await;
                            continue;
                        }
                        // Nothing can start in time: say so now rather than sleep into the deadline.
                        Some(_) => return self.finish(now, true),
                        None => return self.finish(now, false),
                    }
                }
            };
            if self.deadline.saturating_duration_since(now) < self.min_attempt {
                return self.finish(now, true);
            }
            match self.try_hop(idx, now).await {
                Visit::Answer(result) => return result,
                Visit::Continue => {}
            }
        }
    }

    /// One visit to hop `idx`: breaker, budget, attempt, verdict.
    async fn try_hop(&mut self, idx: usize, now: Instant) -> Visit {
        let chain = self.chain.clone();
        let policy = &chain.policy;
        let model = self.hops[idx].model;
        let model_name = self.shared.models[model].name.clone();

        let retry = self.hops[idx].attempts > 0;
        let permit = match self.acquire(idx, retry).await {
            Ok(Admission::Permitted(p)) => p,
            Ok(Admission::RetryBudgetSpent) => {
                // Retrying this model would feed a retry storm: move on (or degrade) instead.
                tracing::debug!(model = %model_name, "hop skipped: retry budget spent");
                self.trail.push(AttemptRecord {
                    model: model_name,
                    outcome: Outcome::RetryBudgetSpent,
                });
                self.hops[idx].done = true;
                return Visit::Continue;
            }
            Ok(Admission::Open { until }) => {
                tracing::debug!(
                    model = %model_name,
                    breaker = if until.is_some() { "open" } else { "half_open" },
                    open_for_ms = until.map(|u| u.saturating_duration_since(now).as_millis() as u64),
                    "hop skipped: breaker"
                );
                self.trail.push(AttemptRecord {
                    model: model_name,
                    outcome: Outcome::BreakerOpen,
                });
                let hop = &mut self.hops[idx];
                match until {
                    Some(until) => {
                        hop.ready_at = until.max(now + MIN_PAUSE);
                        hop.recovers_at = Some(until);
                    }
                    // Half-open with every trial slot taken: others are finding out; not us.
                    None => hop.done = true,
                }
                return Visit::Continue;
            }
            Err(e) => return Visit::Answer(Err(e)),
        };

        let others_ready = self
            .hops
            .iter()
            .enumerate()
            .any(|(j, h)| j != idx && !h.done && h.ready_at <= now);
        let max_wait = if others_ready {
            Duration::ZERO
        } else {
            self.deadline
                .saturating_duration_since(now)
                .saturating_sub(self.min_attempt)
        };
        let upstream = self.shared.models[model].upstream;
        let request = ReserveRequest {
            upstream,
            class: self.shared.models[model].class,
            cost: Cost::request(
                self.input_estimate(idx, upstream, &model_name).await,
                self.hop_call(idx).max_tokens(),
            ),
            lane: self.call.lane,
            feature: self.feature,
            max_wait,
        };
        let (ticket, at) = match self.reserve(request).await {
            Ok(Decision::Grant { ticket, at }) => (ticket, at),
            Ok(Decision::Reject { reason, earliest }) => {
                self.release(idx, permit);
                tracing::debug!(model = %model_name, %reason, "hop skipped: no budget");
                self.trail.push(AttemptRecord {
                    model: model_name,
                    outcome: Outcome::NoBudget {
                        reason: reason.to_string(),
                    },
                });
                let hop = &mut self.hops[idx];
                match earliest {
                    Some(at) => {
                        hop.ready_at = at.max(now + MIN_PAUSE);
                        hop.recovers_at = Some(at);
                    }
                    None => {
                        hop.done = true;
                        // Larger than the limit itself: no wait makes it fit, so this hop
                        // can never take the request (the caller's to fix, not a 503).
                        if let RejectReason::TooLarge { dimension } = reason {
                            hop.refused = Some(format!(
                                "it needs more {} than the upstream's per-minute limit \
                                 allows at all: lower max_tokens or shorten the input",
                                dimension.as_str()
                            ));
                        }
                    }
                }
                return Visit::Continue;
            }
            Err(e) => {
                self.release(idx, permit);
                return Visit::Answer(Err(e));
            }
        };
        if at > clock::now() {
            // The budget is already held for us: waiting in line is fair and bounded by max_wait.
            clock::sleep_until(at).await;
        }

        let start = clock::now();
        let limit = if self.stream {
            policy.first_token_timeout
        } else {
            policy.attempt_timeout
        };
        let budget = limit.min(self.deadline.saturating_duration_since(start));
        let hop_call = self.hop_call(idx);
        let attempt = Attempt {
            model: model_name.clone(),
            body: if self.stream {
                hop_call.stream_body_for(&model_name)
            } else {
                hop_call.body_for(&model_name)
            },
            key: ticket.key,
            retry_count: self.attempts,
            timeout: budget,
            idempotency_key: self.call.idempotency_key.clone(),
            forward: self.call.forward.clone(),
        };
        self.attempts += 1;
        self.hops[idx].attempts += 1;
        let upstream_ref = self.shared.upstreams[upstream].clone();
        let span = tracing::info_span!(
            "seawall.attempt",
            gen_ai.system = self.shared.upstream_names.get(upstream).map_or("", String::as_str),
            gen_ai.request.model = %model_name,
            gen_ai.response.model = Empty,
            gen_ai.usage.input_tokens = Empty,
            gen_ai.usage.output_tokens = Empty,
            attempt = self.attempts,
            retry,
            key = ticket.key,
            http.response.status_code = Empty,
            class = Empty,
            latency_ms = Empty,
            request_id = Empty,
            retry_delay_ms = Empty,
        );
        let result = if self.stream {
            match stream_start(upstream_ref.as_ref(), attempt, start + budget)
                .instrument(span.clone())
                .await
            {
                StreamStart::Ready(head) => {
                    let StreamHead {
                        status,
                        headers,
                        buffered,
                        events,
                        finished,
                    } = *head;
                    let committed = Box::new(Committed {
                        idx,
                        permit,
                        ticket,
                        model: model_name,
                        status,
                        headers,
                        started: start,
                        buffered,
                        events,
                        finished,
                        recorded: false,
                    });
                    let refusal = committed.finished
                        && policy.refusal_fallback
                        && self.others_left(idx)
                        && committed
                            .buffered
                            .iter()
                            .find_map(refusal_in_event)
                            .is_some();
                    if !refusal {
                        return Visit::Answer(Ok(Done::Stream(committed)));
                    }
                    // Refused before any content: the model is healthy, the answer is kept in
                    // case no later hop serves, and the next hop gets the refusal's credit.
                    let mut committed = committed;
                    let mut usage = Usage::default();
                    for ev in &committed.buffered {
                        note_usage(ev, &mut usage);
                    }
                    let latency = clock::now().saturating_duration_since(start);
                    self.record(idx, permit, Class::Success, latency);
                    self.sample(idx, Class::Success, Some(committed.status), latency, usage);
                    span.record("class", "refusal");
                    self.settle(
                        ticket,
                        usage.cost(),
                        ServerLimits::from_headers(&committed.headers),
                        false,
                        None,
                    );
                    committed.recorded = true;
                    if let Some(credit) = committed.buffered.iter().find_map(refusal_in_event) {
                        self.credit = credit;
                    }
                    self.trail.push(AttemptRecord {
                        model: committed.model.clone(),
                        outcome: Outcome::Refused,
                    });
                    self.hops[idx].done = true;
                    if self.refused_stream.is_none() {
                        self.refused_stream = Some(committed);
                    }
                    return Visit::Continue;
                }
                StreamStart::Failed(result) => result,
            }
        } else {
            match tokio::time::timeout(budget, upstream_ref.send(attempt))
                .instrument(span.clone())
                .await
            {
                Ok(r) => r,
                Err(_) => Err(TransportError::Timeout(budget)),
            }
        };
        let latency = clock::now().saturating_duration_since(start);
        let verdict = classify(&result, SystemTime::now());
        let class = verdict.class();
        self.record(idx, permit, class, latency);
        // The request went out but no answer came back: the upstream may well have counted it
        // against the limits, so keep what was reserved rather than believe it was free.
        let maybe_charged = matches!(
            result,
            Err(TransportError::Timeout(_)
                | TransportError::Reset(_)
                | TransportError::Truncated(_))
        );
        let (status, headers, body, transport_error) = match result {
            Ok(r) => (Some(r.status), r.headers, r.body, None),
            Err(e) => (
                None,
                Default::default(),
                Default::default(),
                Some(e.to_string()),
            ),
        };
        let (usage, actual) = if class == Class::Success {
            let usage = usage_of(&body);
            (usage, usage.cost())
        } else if maybe_charged {
            (Usage::default(), ticket.reserved())
        } else {
            (Usage::default(), Cost::request(0, 0))
        };
        self.sample(idx, class, status, latency, usage);
        let key_pause = match verdict {
            Verdict::Retryable {
                class: Class::RateLimited,
                hint,
            } => hint,
            _ => None,
        };
        self.settle(
            ticket,
            actual,
            ServerLimits::from_headers(&headers),
            verdict.key_is_bad(),
            key_pause,
        );
        if !span.is_disabled() {
            span.record("http.response.status_code", status.unwrap_or(0));
            span.record("class", class.as_str());
            span.record("latency_ms", latency.as_millis() as u64);
            if let Some(id) = headers.get("request-id") {
                span.record("request_id", id);
            }
            if class == Class::Success {
                span.record("gen_ai.usage.input_tokens", usage.input_tokens);
                span.record("gen_ai.usage.output_tokens", usage.output_tokens);
                if let Some(m) = response_model(&body) {
                    span.record("gen_ai.response.model", m.as_str());
                }
            }
        }
        tracing::debug!(
            parent: &span,
            chain = %self.chain.name,
            model = %model_name,
            attempt = self.attempts,
            status = status.unwrap_or(0),
            class = class.as_str(),
            latency_ms = latency.as_millis() as u64,
            request_id = headers.get("request-id").unwrap_or(""),
            "attempt"
        );
        self.trail.push(AttemptRecord {
            model: model_name.clone(),
            outcome: Outcome::Attempted {
                status,
                class,
                latency,
                request_id: headers.get("request-id").map(str::to_owned),
            },
        });

        let now = clock::now();
        let refused = if matches!(verdict, Verdict::Success)
            && policy.refusal_fallback
            && self.others_left(idx)
        {
            serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| refusal_in_message(&v))
        } else {
            None
        };
        if let Some(credit) = refused {
            // A refusal is a healthy answer (the breaker heard Success): keep it in case no
            // later hop serves, and hand the next hop the refusal's credit.
            self.trail.push(AttemptRecord {
                model: model_name.clone(),
                outcome: Outcome::Refused,
            });
            self.hops[idx].done = true;
            if credit.is_some() {
                self.credit = credit;
            }
            if self.refusal.is_none() {
                self.refusal_hop = Some(idx);
                self.refusal = Some(Reply {
                    source: Default::default(),
                    age: None,
                    model: model_name,
                    status: status.unwrap_or(200),
                    headers,
                    body,
                    usage,
                    attempts: self.attempts,
                    trail: Vec::new(),
                    latency: now.saturating_duration_since(self.started),
                });
            }
            return Visit::Continue;
        }
        match verdict {
            Verdict::Success => {
                self.served = Some(idx);
                Visit::Answer(Ok(Done::Reply(Reply {
                    source: Default::default(),
                    age: None,
                    model: model_name,
                    status: status.unwrap_or(200),
                    headers,
                    body,
                    usage,
                    attempts: self.attempts,
                    trail: std::mem::take(&mut self.trail),
                    latency: now.saturating_duration_since(self.started),
                })))
            }
            Verdict::Permanent {
                scope: Scope::Request,
                ..
            } => Visit::Answer(Err(Error::Rejected {
                model: model_name,
                status: status.unwrap_or(0),
                headers,
                body,
                trail: std::mem::take(&mut self.trail),
            })),
            Verdict::Permanent { scope, .. } => {
                let kept = status.map(|s| (s, body, headers));
                match scope {
                    // The governor quarantines the key on settle (a cast that reaches it before
                    // our next Reserve): the same model may go again with another key, and is
                    // refused at once when none is left.
                    Scope::Key => self.hops[idx].permanent = kept,
                    // Nothing on this upstream can be paid for: end every hop that uses it.
                    Scope::Organization => {
                        for hop in &mut self.hops {
                            if self.shared.models[hop.model].upstream == upstream {
                                hop.done = true;
                                hop.permanent = hop.permanent.take().or_else(|| kept.clone());
                            }
                        }
                    }
                    Scope::Model | Scope::Request => {
                        let hop = &mut self.hops[idx];
                        hop.done = true;
                        hop.permanent = kept;
                        hop.refused = transport_error;
                    }
                }
                Visit::Continue
            }
            Verdict::Retryable { hint, .. } => {
                let remaining = self.deadline.saturating_duration_since(now);
                let min_attempt = self.min_attempt;
                let r = self.rng.next_f64();
                let hop = &mut self.hops[idx];
                hop.failures += 1;
                match policy
                    .backoff
                    .next(hop.failures, hint, Some(remaining), min_attempt, r)
                {
                    Step::Retry(delay) => {
                        hop.ready_at = now + delay;
                        hop.recovers_at = Some(now + delay);
                        span.record("retry_delay_ms", delay.as_millis() as u64);
                    }
                    Step::Exhausted => {
                        hop.done = true;
                        hop.recovers_at = hint.map(|h| now + h);
                    }
                    Step::BeyondDeadline { wanted } => {
                        hop.done = true;
                        hop.recovers_at = Some(now + wanted);
                    }
                }
                Visit::Continue
            }
        }
    }

    /// Hand a committed stream to the caller: the reply with the buffered events already queued.
    fn commit(&mut self, mut c: Committed) -> (StreamReply, Forward) {
        let buffered = std::mem::take(&mut c.buffered);
        let (tx, rx) = tokio::sync::mpsc::channel(64 + buffered.len());
        let mut assembler = caches(&self.call, &self.chain, &self.shared).then(Assembler::default);
        for ev in buffered {
            if let Some(a) = assembler.as_mut() {
                a.push(&ev);
            }
            // Capacity was sized for them: this cannot fail.
            let _ = tx.try_send(ev);
        }
        self.trail.push(AttemptRecord {
            model: c.model.clone(),
            outcome: Outcome::Attempted {
                status: Some(c.status),
                class: Class::Success,
                latency: clock::now().saturating_duration_since(c.started),
                request_id: c.headers.get("request-id").map(str::to_owned),
            },
        });
        let reply = StreamReply {
            model: c.model.clone(),
            source: crate::call::Source::Live,
            age: None,
            status: c.status,
            headers: c.headers.clone(),
            attempts: self.attempts,
            trail: std::mem::take(&mut self.trail),
            time_to_first_token: clock::now().saturating_duration_since(self.started),
            events: rx,
        };
        (reply, Forward { c, tx, assembler })
    }

    /// The caller went away before taking the stream: give the permit and budget back.
    fn abandon(&self, f: Forward) {
        if f.c.recorded {
            return;
        }
        self.release(f.c.idx, f.c.permit);
        self.settle(
            f.c.ticket,
            Cost::request(0, 0),
            ServerLimits::default(),
            false,
            None,
        );
    }

    /// Pump the rest of a committed stream to the caller until it ends, then record how it went.
    /// A break after content reaches the caller as an `error` event in the API's shape.
    async fn forward(&mut self, f: Forward) -> StreamEnd {
        let Forward {
            mut c,
            tx,
            mut assembler,
        } = f;
        let mut usage = Usage::default();
        let end = tokio::time::Instant::from_std(self.deadline);
        let class = if c.finished {
            Class::Success
        } else {
            loop {
                let item = match tokio::time::timeout_at(end, c.events.recv()).await {
                    Err(_) => {
                        let _ = tx
                            .send(error_event(
                                "timeout_error",
                                "the call's deadline passed mid-stream",
                            ))
                            .await;
                        break Class::Timeout;
                    }
                    Ok(None) => break Class::Success,
                    Ok(Some(item)) => item,
                };
                match item {
                    Ok(ev) => {
                        note_usage(&ev, &mut usage);
                        if let Some(a) = assembler.as_mut() {
                            a.push(&ev);
                        }
                        let failed = (ev.event == "error").then(|| stream_error_class(&ev.data));
                        if tx.send(ev).await.is_err() {
                            // The caller stopped reading: the model did nothing wrong.
                            self.release(c.idx, c.permit);
                            self.settle(
                                c.ticket,
                                usage.cost(),
                                ServerLimits::from_headers(&c.headers),
                                false,
                                None,
                            );
                            return StreamEnd {
                                status: c.status,
                                request_id: c.headers.get("request-id").map(str::to_owned),
                                usage,
                                class: None,
                            };
                        }
                        if let Some(class) = failed {
                            break class;
                        }
                    }
                    Err(e) => {
                        let _ = tx
                            .send(error_event(
                                "api_error",
                                &format!("the upstream stream broke: {e}"),
                            ))
                            .await;
                        break crate::policy::classify::classify_transport(&e).class();
                    }
                }
            }
        };
        if c.recorded {
            // A refusal kept as the answer: the breaker, the governor and the monitor heard of
            // it when it came, and must not count it twice.
            return StreamEnd {
                status: c.status,
                request_id: c.headers.get("request-id").map(str::to_owned),
                usage,
                class: Some(class),
            };
        }
        let latency = clock::now().saturating_duration_since(c.started);
        if class == Class::Success {
            self.cache_streamed(assembler, &c, usage, latency);
        }
        self.record(c.idx, c.permit, class, latency);
        let sampled = if class == Class::Success {
            usage
        } else {
            Usage::default()
        };
        self.sample(c.idx, class, Some(c.status), latency, sampled);
        let actual = if usage == Usage::default() {
            Cost::request(0, 0)
        } else {
            usage.cost()
        };
        self.settle(
            c.ticket,
            actual,
            ServerLimits::from_headers(&c.headers),
            false,
            None,
        );
        StreamEnd {
            status: c.status,
            request_id: c.headers.get("request-id").map(str::to_owned),
            usage,
            class: Some(class),
        }
    }

    /// Keep a whole streamed answer in the response cache, as a unary answer would be.
    fn cache_streamed(
        &self,
        assembler: Option<Assembler>,
        c: &Committed,
        usage: Usage,
        latency: Duration,
    ) {
        let (Some(cache), Some(message)) = (
            self.shared.cache.as_ref(),
            assembler.and_then(Assembler::finish),
        ) else {
            return;
        };
        let reply = Reply {
            model: c.model.clone(),
            source: crate::call::Source::Live,
            age: None,
            status: c.status,
            headers: c.headers.clone(),
            body: bytes::Bytes::from(message.to_string()),
            usage,
            attempts: self.attempts,
            trail: Vec::new(),
            latency,
        };
        cache.put(self.call.cache_key(), reply);
    }

    /// Input tokens for budget: the heuristic, or the upstream's own count when the chain asks
    /// for it (once per call and upstream; a failed count falls back to the heuristic).
    async fn input_estimate(&mut self, idx: usize, upstream: usize, model: &str) -> u64 {
        if let Some(n) = self.estimates[idx] {
            return n;
        }
        let heuristic = self.hop_call(idx).estimate_input_tokens();
        let counted = match self.chain.policy.estimate {
            Estimate::Heuristic => None,
            Estimate::CountTokens => self.count_tokens(idx, upstream, model).await,
        };
        let n = counted.unwrap_or(heuristic);
        self.estimates[idx] = Some(n);
        n
    }

    async fn count_tokens(&mut self, idx: usize, upstream: usize, model: &str) -> Option<u64> {
        let governor = self.governor(false).await.ok()?;
        let key = match governor
            .call(
                |reply| GovernorMsg::PickKey(upstream, reply),
                Some(ACTOR_CALL_TIMEOUT),
            )
            .await
        {
            Ok(CallResult::Success(Some(key))) => key,
            _ => return None,
        };
        // A count is worth at most a quarter of what is left, and never more than 2 s.
        let budget =
            (self.deadline.saturating_duration_since(clock::now()) / 4).min(Duration::from_secs(2));
        let attempt = Attempt {
            model: model.to_owned(),
            body: self.hop_call(idx).body_for(model),
            key,
            retry_count: 0,
            timeout: budget,
            idempotency_key: None,
            forward: self.call.forward.clone(),
        };
        let up = self.shared.upstreams[upstream].clone();
        let count = up.count_tokens(attempt)?;
        match tokio::time::timeout(budget, count).await {
            Ok(Ok(n)) => Some(n),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "count_tokens failed: using the heuristic estimate");
                None
            }
            Err(_) => None,
        }
    }

    /// The honest error once nothing more can be tried.
    fn give_up(&mut self, now: Instant, deadline_exceeded: bool) -> Error {
        let deadline_exceeded = deadline_exceeded || now + self.min_attempt > self.deadline;
        let trail = std::mem::take(&mut self.trail);
        // Every hop ended on a permanent answer: pass the first one through unchanged; if no hop
        // even had a transport that could send it, say why.
        if self
            .hops
            .iter()
            .all(|h| h.done && (h.permanent.is_some() || h.refused.is_some()))
        {
            if let Some(hop) = self.hops.iter_mut().find(|h| h.permanent.is_some()) {
                if let Some((status, body, headers)) = hop.permanent.take() {
                    return Error::Rejected {
                        model: self.shared.models[hop.model].name.clone(),
                        status,
                        headers,
                        body,
                        trail,
                    };
                }
            }
            let reasons: Vec<String> = self
                .hops
                .iter()
                .filter_map(|h| {
                    h.refused
                        .as_ref()
                        .map(|r| format!("{}: {r}", self.shared.models[h.model].name))
                })
                .collect();
            return Error::InvalidCall(format!(
                "no model of chain {:?} can take this request ({})",
                self.chain.name,
                reasons.join("; ")
            ));
        }
        let retry_after = self
            .hops
            .iter()
            .filter_map(|h| h.recovers_at)
            .min()
            .map(|at| at.saturating_duration_since(now));
        Error::Unavailable {
            retry_after,
            deadline_exceeded,
            trail,
        }
    }

    // ---- messaging, with recovery from a restarted breaker or governor ----

    async fn breaker(&mut self, idx: usize, refresh: bool) -> Result<ActorRef<BreakerMsg>, Error> {
        let model = self.hops[idx].model;
        let stale = refresh
            .then(|| self.breakers[idx].as_ref().map(|r| r.get_id()))
            .flatten();
        if !refresh {
            if let Some(r) = &self.breakers[idx] {
                return Ok(r.clone());
            }
            if let Some(r) = self.shared.directory.breaker(model) {
                self.breakers[idx] = Some(r.clone());
                return Ok(r);
            }
        }
        let fresh = ask_supervisor(&self.shared.supervisor, |reply| SupervisorMsg::BreakerRef {
            model,
            stale,
            reply,
        })
        .await?;
        self.breakers[idx] = Some(fresh.clone());
        Ok(fresh)
    }

    async fn governor(&mut self, refresh: bool) -> Result<ActorRef<GovernorMsg>, Error> {
        let stale = refresh
            .then(|| self.governor.as_ref().map(|r| r.get_id()))
            .flatten();
        if !refresh {
            if let Some(r) = &self.governor {
                return Ok(r.clone());
            }
            if let Some(r) = self.shared.directory.governor() {
                self.governor = Some(r.clone());
                return Ok(r);
            }
        }
        let fresh = ask_supervisor(&self.shared.supervisor, |reply| {
            SupervisorMsg::GovernorRef { stale, reply }
        })
        .await?;
        self.governor = Some(fresh.clone());
        Ok(fresh)
    }

    async fn acquire(&mut self, idx: usize, retry: bool) -> Result<Admission, Error> {
        for attempt in 0..ACTOR_RETRIES {
            let breaker = self.breaker(idx, attempt > 0).await?;
            if let Ok(CallResult::Success(a)) = breaker
                .call(
                    |reply| BreakerMsg::Acquire { retry, reply },
                    Some(ACTOR_CALL_TIMEOUT),
                )
                .await
            {
                return Ok(a);
            }
        }
        Err(Error::Internal(
            "the breaker actor did not come back after restarts".into(),
        ))
    }

    async fn reserve(&mut self, request: ReserveRequest) -> Result<Decision, Error> {
        // The governor may park the request for up to max_wait before it answers.
        let patience = request.max_wait + ACTOR_CALL_TIMEOUT;
        for attempt in 0..ACTOR_RETRIES {
            let governor = self.governor(attempt > 0).await?;
            if let Ok(CallResult::Success(d)) = governor
                .call(|reply| GovernorMsg::Reserve(request, reply), Some(patience))
                .await
            {
                return Ok(d);
            }
        }
        Err(Error::Internal(
            "the governor actor did not come back after restarts".into(),
        ))
    }

    // Casts: a breaker or governor that died meanwhile lost its state with it; a record meant for
    // the old incarnation has nowhere useful to go, so a failed cast is not an error.
    fn record(&self, idx: usize, permit: Permit, class: Class, latency: Duration) {
        if let Some(b) = &self.breakers[idx] {
            let _ = b.cast(BreakerMsg::Record {
                permit,
                class,
                latency,
            });
        }
    }

    fn release(&self, idx: usize, permit: Permit) {
        if let Some(b) = &self.breakers[idx] {
            let _ = b.cast(BreakerMsg::Release(permit));
        }
    }

    fn settle(
        &self,
        ticket: Ticket,
        actual: Cost,
        server: ServerLimits,
        key_bad: bool,
        key_pause: Option<Duration>,
    ) {
        if let Some(g) = &self.governor {
            let _ = g.cast(GovernorMsg::Settle {
                ticket,
                actual,
                server,
                key_bad,
                key_pause,
            });
        }
    }
}

async fn ask_supervisor<T: Send + 'static>(
    supervisor: &ActorRef<SupervisorMsg>,
    build: impl FnOnce(RpcReplyPort<T>) -> SupervisorMsg,
) -> Result<T, Error> {
    match supervisor.call(build, Some(ACTOR_CALL_TIMEOUT)).await {
        Ok(CallResult::Success(r)) => Ok(r),
        Ok(CallResult::Timeout) => Err(Error::Internal(
            "the seawall supervisor did not answer in time".into(),
        )),
        Ok(CallResult::SenderError) | Err(_) => Err(Error::ShuttingDown),
    }
}

/// Start a streaming attempt and read it up to its first content event, within `until`.
/// Whatever goes wrong before that is turned into what the classifier understands, so the walk
/// treats a pre-content failure exactly like a failed unary attempt.
async fn stream_start(upstream: &dyn Upstream, attempt: Attempt, until: Instant) -> StreamStart {
    let budget = attempt.timeout;
    let until = tokio::time::Instant::from_std(until);
    let head = match tokio::time::timeout_at(until, upstream.send_stream(attempt)).await {
        Err(_) => return StreamStart::Failed(Err(TransportError::Timeout(budget))),
        Ok(Err(e)) => return StreamStart::Failed(Err(e)),
        Ok(Ok(head)) => head,
    };
    let mut events = match head.body {
        StreamBody::Complete(body) if !(200..300).contains(&head.status) => {
            return StreamStart::Failed(Ok(UpstreamResponse {
                status: head.status,
                headers: head.headers,
                body,
            }))
        }
        StreamBody::Complete(_) => {
            return StreamStart::Failed(Err(TransportError::Truncated(
                "asked for an event stream, got a whole body".into(),
            )))
        }
        StreamBody::Events(rx) => rx,
    };
    let mut buffered = Vec::new();
    let finished = loop {
        match tokio::time::timeout_at(until, events.recv()).await {
            Err(_) => return StreamStart::Failed(Err(TransportError::Timeout(budget))),
            // The stream ended without content (an empty answer): commit it whole.
            Ok(None) => break true,
            Ok(Some(Err(e))) => return StreamStart::Failed(Err(e)),
            Ok(Some(Ok(ev))) if ev.event == "error" => {
                // An error before any content: the caller has seen nothing, so it is a failed
                // attempt like any other (the API's mid-stream overload is the classic case).
                return StreamStart::Failed(Ok(UpstreamResponse {
                    status: stream_error_status(&ev.data),
                    headers: head.headers,
                    body: bytes::Bytes::from(ev.data),
                }));
            }
            Ok(Some(Ok(ev))) => {
                let content = ev.is_content();
                buffered.push(ev);
                if content {
                    break false;
                }
            }
        }
    };
    StreamStart::Ready(Box::new(StreamHead {
        status: head.status,
        headers: head.headers,
        buffered,
        events,
        finished,
    }))
}

/// The credit of a refusal: the token to forward (JSON null when none was minted) and, when
/// the refusal holds a prefill claim, the partial content to continue from.
type Credit = Option<(serde_json::Value, Vec<serde_json::Value>)>;

/// `Some(credit)` when a whole message is a refusal (`stop_reason: "refusal"`).
fn refusal_in_message(v: &serde_json::Value) -> Option<Credit> {
    if v.get("stop_reason").and_then(serde_json::Value::as_str) != Some("refusal") {
        return None;
    }
    Some(credit_of(v.get("stop_details"), v.get("content")))
}

/// `Some(credit)` when a stream event announces a refusal (`message_delta` with
/// `stop_reason: "refusal"`; the token rides in its `stop_details`).
fn refusal_in_event(ev: &SseEvent) -> Option<Credit> {
    if ev.event != "message_delta" {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&ev.data).ok()?;
    if v.pointer("/delta/stop_reason")
        .and_then(serde_json::Value::as_str)
        != Some("refusal")
    {
        return None;
    }
    let details = v
        .pointer("/delta/stop_details")
        .or_else(|| v.get("stop_details"));
    Some(credit_of(details, None))
}

fn credit_of(details: Option<&serde_json::Value>, content: Option<&serde_json::Value>) -> Credit {
    let details = details?;
    let token = details.get("fallback_credit_token")?;
    if token.is_null() {
        return None;
    }
    let prefill = if details
        .get("fallback_has_prefill_claim")
        .and_then(serde_json::Value::as_bool)
        == Some(true)
    {
        content
            .and_then(serde_json::Value::as_array)
            .cloned()
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    Some((token.clone(), prefill))
}

/// The HTTP status an in-stream `error` event stands for, so the classifier can read it.
fn stream_error_status(data: &str) -> u16 {
    match crate::policy::classify::error_type(data.as_bytes()).as_deref() {
        Some("overloaded_error") => 529,
        Some("rate_limit_error") => 429,
        Some("timeout_error") | Some("gateway_timeout_error") => 504,
        Some("invalid_request_error") => 400,
        _ => 500,
    }
}

fn stream_error_class(data: &str) -> Class {
    match stream_error_status(data) {
        529 => Class::Overloaded,
        429 => Class::RateLimited,
        400 => Class::InvalidRequest,
        _ => Class::ServerError,
    }
}

/// An `error` event in the API's shape, for breaks the upstream could not report itself.
fn error_event(kind: &str, message: &str) -> SseEvent {
    let data = serde_json::json!({"type": "error", "error": {"type": kind, "message": message}});
    SseEvent::new("error", data.to_string())
}

/// Usage as a stream reports it: input in `message_start`, output in `message_delta`.
fn note_usage(ev: &SseEvent, usage: &mut Usage) {
    let pointer = match ev.event.as_str() {
        "message_start" => "/message/usage",
        "message_delta" => "/usage",
        _ => return,
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&ev.data) else {
        return;
    };
    if let Some(u) = v.pointer(pointer) {
        let n = |k: &str| u.get(k).and_then(serde_json::Value::as_u64);
        if let Some(x) = n("input_tokens") {
            usage.input_tokens = x;
        }
        if let Some(x) = n("output_tokens") {
            usage.output_tokens = x;
        }
        if let Some(x) = n("cache_creation_input_tokens") {
            usage.cache_creation_input_tokens = x;
        }
        if let Some(x) = n("cache_read_input_tokens") {
            usage.cache_read_input_tokens = x;
        }
    }
}

/// How a committed stream ended, for the call's conclusion.
struct StreamEnd {
    status: u16,
    request_id: Option<String>,
    usage: Usage,
    /// How the stream ended; `None` when the caller went away first.
    class: Option<Class>,
}

impl StreamEnd {
    /// The caller dropped the stream before taking it.
    fn abandoned(f: &Forward) -> Self {
        Self {
            status: f.c.status,
            request_id: f.c.headers.get("request-id").map(str::to_owned),
            usage: Usage::default(),
            class: None,
        }
    }

    /// A committed stream is an answered call: the SLA's latency is the time to first token.
    fn into_call_end(self, hop: usize, ttft: Duration) -> CallEnd<'static> {
        CallEnd {
            served: Some(hop),
            latency: ttft,
            http_status: Some(self.status),
            request_id: self.request_id.map(std::borrow::Cow::Owned),
            usage: self.usage,
            error: None,
            stream: true,
            stream_class: self.class,
        }
    }
}

/// How a call ended, as the conclusion needs it.
struct CallEnd<'a> {
    /// The hop that served it (with no error: an answered call).
    served: Option<usize>,
    latency: Duration,
    http_status: Option<u16>,
    request_id: Option<std::borrow::Cow<'a, str>>,
    usage: Usage,
    error: Option<&'a Error>,
    stream: bool,
    /// How a stream ended after its commit.
    stream_class: Option<Class>,
}

impl<'a> CallEnd<'a> {
    fn of_unary(
        result: &'a Result<Reply, Error>,
        served: Option<usize>,
        elapsed: Duration,
    ) -> Self {
        match result {
            Ok(r) => CallEnd {
                served,
                latency: r.latency,
                http_status: Some(r.status),
                request_id: r.request_id().map(std::borrow::Cow::Borrowed),
                usage: r.usage,
                error: None,
                stream: false,
                stream_class: None,
            },
            Err(e) => Self::of_error(e, elapsed, false),
        }
    }

    fn of_error(e: &'a Error, latency: Duration, stream: bool) -> Self {
        let http_status = match e {
            Error::Rejected { status, .. } => Some(*status),
            _ => None,
        };
        CallEnd {
            served: None,
            latency,
            http_status,
            request_id: match e {
                Error::Rejected { headers, .. } => {
                    headers.get("request-id").map(std::borrow::Cow::Borrowed)
                }
                _ => None,
            },
            usage: Usage::default(),
            error: Some(e),
            stream,
            stream_class: None,
        }
    }
}

/// How an error returned to the caller counts: the caller's fault (a malformed request the
/// upstream rejected, an invalid call) is not held against the runtime.
fn call_status(e: &Error) -> CallStatus {
    match e {
        Error::Rejected {
            status,
            headers,
            body,
            ..
        } => {
            let response = UpstreamResponse {
                status: *status,
                headers: headers.clone(),
                body: body.clone(),
            };
            match crate::policy::classify::classify_response(&response, SystemTime::now()) {
                Verdict::Permanent {
                    scope: Scope::Request,
                    ..
                } => CallStatus::Invalid,
                _ => CallStatus::Failed("rejected"),
            }
        }
        Error::InvalidCall(_) | Error::UnknownModel(_) | Error::Config(_) => CallStatus::Invalid,
        Error::Unavailable {
            deadline_exceeded: true,
            ..
        } => CallStatus::Failed("deadline_exceeded"),
        Error::Unavailable { .. } => CallStatus::Failed("unavailable"),
        Error::ShuttingDown => CallStatus::Failed("shutting_down"),
        Error::Internal(_) => CallStatus::Failed("internal"),
    }
}

/// The call span: one per call, with OpenTelemetry GenAI fields and seawall's own.
fn call_span(call: &Call, chain: &Chain, shared: &Shared) -> tracing::Span {
    let system = chain
        .hops
        .first()
        .and_then(|&m| shared.models.get(m))
        .and_then(|m| shared.upstream_names.get(m.upstream))
        .map_or("", String::as_str);
    tracing::info_span!(
        "seawall.call",
        gen_ai.operation.name = "chat",
        gen_ai.system = system,
        gen_ai.request.model = call.model(),
        gen_ai.request.max_tokens = call.max_tokens(),
        gen_ai.response.model = Empty,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        chain = %chain.name,
        feature = call.feature.as_deref().unwrap_or(""),
        lane = call.lane.as_str(),
        status = Empty,
        served_by = Empty,
        source = Empty,
        attempts = Empty,
        latency_ms = Empty,
        cost_usd = Empty,
        request_id = Empty,
    )
}

/// What the call log line says.
struct CallLog<'a> {
    chain: &'a str,
    model: &'a str,
    feature: Option<&'a str>,
    lane: crate::call::Lane,
    stream: bool,
    stream_end: Option<&'static str>,
    status: CallStatus,
    http_status: Option<u16>,
    served_by: Option<&'a str>,
    request_id: Option<&'a str>,
    latency: Duration,
    usage: Usage,
    attempts: usize,
    retries: usize,
    cost: f64,
    error: Option<&'a Error>,
    prompt: Option<&'a str>,
}

/// The response cache: the last live answer per request (without its model), with its time.
/// Bounded by moka (size and TTL); freshness is also checked on tokio's clock, which is the one
/// the runtime (and paused-time tests) run on.
pub struct ResponseCache {
    entries: moka::sync::Cache<String, (Instant, Reply)>,
    ttl: Duration,
}

impl ResponseCache {
    /// At most `max_entries` answers, each kept `ttl`.
    pub fn new(max_entries: u64, ttl: Duration) -> Self {
        Self {
            entries: moka::sync::Cache::builder()
                .max_capacity(max_entries)
                .time_to_live(ttl)
                .build(),
            ttl,
        }
    }

    fn put(&self, key: String, reply: Reply) {
        self.entries.insert(key, (clock::now(), reply));
    }

    /// A fresh answer for `key` and its age.
    fn fresh(&self, key: &str) -> Option<(Duration, Reply)> {
        let (at, reply) = self.entries.get(key)?;
        let age = clock::now().saturating_duration_since(at);
        if age > self.ttl {
            self.entries.invalidate(key);
            return None;
        }
        Some((age, reply))
    }
}

/// Does this call keep its live answer in the response cache (and may it be answered from it)?
/// Never for a replayed job: it stands for a call answered long ago.
fn caches(call: &Call, chain: &Chain, shared: &Shared) -> bool {
    shared.cache.is_some() && call.job.is_none() && chain.policy.degrade.contains(&Degrade::Cache)
}

/// What a call may degrade to, decided before its walk (the walk consumes the call).
struct Fallback {
    chain: String,
    degrade: Vec<Degrade>,
    cache: Option<Arc<ResponseCache>>,
    key: Option<String>,
    /// The queue and the call, when the chain may queue.
    queue: Option<(ActorRef<QueueMsg>, Call)>,
}

impl Fallback {
    /// The chain's degradation for `call`. A replayed job never degrades: it waits in the queue
    /// for a live answer. A stream is never queued: its caller is reading now.
    fn new(call: &Call, chain: &Chain, shared: &Shared, stream: bool) -> Self {
        let degrade: Vec<Degrade> = if call.job.is_some() {
            Vec::new()
        } else {
            chain
                .policy
                .degrade
                .iter()
                .filter(|d| !(stream && **d == Degrade::Queue))
                .cloned()
                .collect()
        };
        let queue = degrade
            .contains(&Degrade::Queue)
            .then(|| shared.directory.queue())
            .flatten()
            .map(|q| (q, call.clone()));
        Self {
            chain: chain.name.clone(),
            key: caches(call, chain, shared).then(|| call.cache_key()),
            cache: shared.cache.clone(),
            degrade,
            queue,
        }
    }
}

/// Keep a live answer for the cache, or degrade an `Unavailable` as the chain allows. A
/// degraded answer carries this call's own latency (`elapsed`), not that of the answer it
/// stands in for.
async fn degraded(
    result: Result<Reply, Error>,
    fallback: Fallback,
    elapsed: Duration,
) -> Result<Reply, Error> {
    let Fallback {
        chain,
        degrade,
        cache,
        key,
        mut queue,
    } = fallback;
    let count = |mut reply: Reply| {
        reply.latency = elapsed;
        metrics::counter!(
            "seawall_degraded_answers_total",
            "chain" => chain.clone(),
            "source" => reply.source.as_str()
        )
        .increment(1);
        Ok(reply)
    };
    match result {
        Ok(reply) => {
            if let (Some(cache), Some(key)) = (&cache, key) {
                if reply.source == crate::call::Source::Live {
                    cache.put(key, reply.clone());
                }
            }
            Ok(reply)
        }
        Err(err @ Error::Unavailable { .. }) => {
            for d in &degrade {
                match d {
                    Degrade::Cache => {
                        let hit = match (&cache, &key) {
                            (Some(cache), Some(key)) => cache.fresh(key),
                            _ => None,
                        };
                        if let Some((age, mut reply)) = hit {
                            reply.source = crate::call::Source::Cache;
                            reply.age = Some(age);
                            reply.trail = err.trail().to_vec();
                            reply.attempts = attempted(&reply.trail);
                            tracing::info!(model = %reply.model, age_ms = reply.age.map(|a| a.as_millis() as u64), "degraded: answered from the cache");
                            return count(reply);
                        }
                    }
                    Degrade::Static(text) => {
                        tracing::info!("degraded: answered with the static answer");
                        return count(static_reply(text, err.trail().to_vec()));
                    }
                    Degrade::Queue => {
                        let Some((queue, call)) = queue.take() else {
                            continue;
                        };
                        let stored = queue
                            .call(
                                |reply| QueueMsg::Enqueue {
                                    chain: chain.clone(),
                                    call: Box::new(call),
                                    reply,
                                },
                                Some(Duration::from_secs(5)),
                            )
                            .await;
                        match stored {
                            Ok(CallResult::Success(Ok(job))) => {
                                return count(queued_reply(&job, err.trail().to_vec()));
                            }
                            // Not stored: the caller must know, so the next option or the
                            // honest error follows.
                            Ok(CallResult::Success(Err(e))) => {
                                tracing::error!(error = %e, "could not queue the call");
                            }
                            _ => tracing::error!("the queue did not answer"),
                        }
                    }
                }
            }
            Err(err)
        }
        Err(other) => Err(other),
    }
}

/// A whole (degraded) answer as a stream: the API's event sequence for it, all queued at once.
fn stream_of(reply: Reply) -> StreamReply {
    let message = reply.json().unwrap_or(serde_json::Value::Null);
    let events = events_of(&message);
    let (tx, rx) = tokio::sync::mpsc::channel(events.len().max(1));
    for ev in events {
        // Capacity was sized for them: this cannot fail.
        let _ = tx.try_send(ev);
    }
    StreamReply {
        model: reply.model,
        source: reply.source,
        age: reply.age,
        status: reply.status,
        headers: reply.headers,
        attempts: reply.attempts,
        trail: reply.trail,
        time_to_first_token: reply.latency,
        events: rx,
    }
}

/// Upstream attempts in a trail.
fn attempted(trail: &[AttemptRecord]) -> u32 {
    trail
        .iter()
        .filter(|s| matches!(s.outcome, Outcome::Attempted { .. }))
        .count() as u32
}

/// The answer to a queued call: HTTP 202 with the job id.
fn queued_reply(job: &Job, trail: Vec<AttemptRecord>) -> Reply {
    let body = serde_json::json!({
        "type": "queued",
        "job_id": job.id,
        "chain": job.chain,
        "expires_at_ms": job.expires_ms,
    });
    made_reply(
        crate::call::Source::Queued,
        "seawall-queue",
        202,
        &body,
        trail,
    )
}

/// A Messages-shaped answer carrying the chain's static text.
fn static_reply(text: &str, trail: Vec<AttemptRecord>) -> Reply {
    let body = serde_json::json!({
        "id": "msg_seawall_static", "type": "message", "role": "assistant",
        "model": "seawall-static", "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": 0, "output_tokens": 0}
    });
    made_reply(
        crate::call::Source::Static,
        "seawall-static",
        200,
        &body,
        trail,
    )
}

/// An answer seawall made itself (no upstream served it), carrying the live attempts' trail.
fn made_reply(
    source: crate::call::Source,
    model: &str,
    status: u16,
    body: &serde_json::Value,
    trail: Vec<AttemptRecord>,
) -> Reply {
    Reply {
        source,
        age: None,
        model: model.into(),
        status,
        headers: Headers::default(),
        body: bytes::Bytes::from(body.to_string()),
        usage: Usage::default(),
        attempts: attempted(&trail),
        trail,
        latency: Duration::ZERO,
    }
}

/// One structured line per call, for operators: who served it, how, how fast, at what cost.
/// Never a key; the prompt only when the runtime was built with `.log_prompts(true)`.
fn log_call(l: &CallLog<'_>) {
    tracing::info!(
        chain = l.chain,
        model = l.model,
        feature = l.feature.unwrap_or(""),
        lane = l.lane.as_str(),
        stream = l.stream,
        stream_end = l.stream_end,
        status = l.status.label(),
        http_status = l.http_status,
        served_by = l.served_by.unwrap_or(""),
        request_id = l.request_id.unwrap_or(""),
        latency_ms = l.latency.as_millis() as u64,
        input_tokens = l.usage.input_tokens,
        output_tokens = l.usage.output_tokens,
        attempts = l.attempts,
        retries = l.retries,
        cost_usd = l.cost,
        error = l.error.map(tracing::field::display),
        retry_after_ms = l
            .error
            .and_then(Error::retry_after)
            .map(|d| d.as_millis() as u64),
        prompt = l.prompt,
        "call"
    );
}

/// The request's conversation as JSON (system prompt and messages), for `.log_prompts(true)`.
fn prompt_text(call: &Call) -> String {
    let body = call.body();
    let mut out = serde_json::Map::new();
    for key in ["system", "messages"] {
        if let Some(v) = body.get(key) {
            out.insert(key.to_owned(), v.clone());
        }
    }
    serde_json::Value::Object(out).to_string()
}

/// The `model` a successful answer names (`gen_ai.response.model`).
fn response_model(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Named {
        model: Option<String>,
    }
    serde_json::from_slice::<Named>(body).ok()?.model
}

/// Usage from a Messages API body (zero when absent or unreadable).
pub(crate) fn usage_of(body: &[u8]) -> Usage {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("usage").cloned())
        .and_then(|u| serde_json::from_value(u).ok())
        .unwrap_or_default()
}
