//! The messages the actors exchange, and the data they carry.
//!
//! Every actor imports this file, the policies and the `Directory`, never
//! another actor's file: the actor modules form no import cycle, and each can be read alone.
//!
//! Answers travel on a [`Responder`]: an awaiting caller's port (the facade's queries), or a cast
//! back into the asking actor's mailbox (a request actor never blocks on a breaker or the
//! governor: their answers arrive as messages, like an attempt's result). A reply dropped
//! unanswered (its actor died holding it) is noticed either way.

use std::time::{Duration, Instant};

use ractor::{ActorCell, ActorId, ActorRef, ActorStatus, Message, MessagingErr, RpcReplyPort};
use tokio::sync::oneshot;

use crate::call::{Call, Reply as CallReply};
use crate::digest::Digest;
use crate::error::Error;
use crate::fleet::{FleetError, HealthNews, Lease};
use crate::job::Job;
use crate::policy::breaker::{Admission, Permit, StateKind};
use crate::policy::classify::Class;
use crate::policy::lanes::{
    Decision, FleetMode, Group, ReserveRequest, Settlement, UpstreamStatus,
};
use crate::policy::retry_budget::RetryBudgetStats;
use crate::policy::sla::{SlaStats, SlaTarget, SlaViolation};
use crate::policy::window::WindowStats;
use crate::wire::Usage;

// ---- answers ----

enum Target<T> {
    Port(RpcReplyPort<T>),
    Actor {
        cell: ActorCell,
        /// Delivers `Some(answer)`, or `None` to say the answer is lost; gives an undelivered
        /// answer back.
        deliver: Box<dyn FnOnce(Option<T>) -> Option<T> + Send>,
    },
}

/// Where an actor's answer goes, exactly once.
///
/// Dropped without an answer (the answering actor died holding it), it tells the asker: a port
/// closes, and an actor gets its message with `None`.
pub struct Responder<T: Send + 'static>(Option<Target<T>>);

impl<T: Send + 'static> Responder<T> {
    /// Answer an awaiting caller.
    pub fn port(port: RpcReplyPort<T>) -> Self {
        Self(Some(Target::Port(port)))
    }

    /// Answer by casting `wrap(Some(answer))` to `actor`; `wrap(None)` if the answer is lost.
    /// `unwrap` takes an undelivered answer back out of its message (to give back what it
    /// holds, a permit or a reservation).
    pub fn cast<M: Message>(
        actor: &ActorRef<M>,
        wrap: impl FnOnce(Option<T>) -> M + Send + 'static,
        unwrap: fn(M) -> Option<T>,
    ) -> Self {
        let to = actor.clone();
        Self(Some(Target::Actor {
            cell: actor.get_cell(),
            deliver: Box::new(move |answer| {
                let lost = answer.is_none();
                match to.cast(wrap(answer)) {
                    Ok(()) => None,
                    Err(MessagingErr::SendErr(m)) if !lost => unwrap(m),
                    Err(_) => None,
                }
            }),
        }))
    }

    /// Deliver the answer; `Some(answer)` back when nobody can take it any more.
    pub fn send(mut self, answer: T) -> Option<T> {
        match self.0.take() {
            Some(Target::Port(port)) => match port.send(answer) {
                Ok(()) => None,
                Err(MessagingErr::SendErr(a)) => Some(a),
                Err(_) => None,
            },
            Some(Target::Actor { deliver, .. }) => deliver(Some(answer)),
            None => Some(answer),
        }
    }

    /// True when the asker is gone: an answer would be thrown away.
    pub fn is_closed(&self) -> bool {
        match &self.0 {
            Some(Target::Port(port)) => port.is_closed(),
            Some(Target::Actor { cell, .. }) => cell.get_status() >= ActorStatus::Stopping,
            None => true,
        }
    }
}

impl<T: Send + 'static> Drop for Responder<T> {
    fn drop(&mut self) {
        if let Some(Target::Actor { deliver, .. }) = self.0.take() {
            let _ = deliver(None);
        }
    }
}

// ---- breakers ----

/// The answer to [`BreakerMsg::Probe`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeAdmission {
    /// Half-open: this probe is a trial call; its result decides like any trial's.
    Trial(Permit),
    /// Closed: a health check, recorded like any attempt.
    Check(Permit),
    /// Open until then (`None`: half-open with every trial slot taken, or closed when only a
    /// trial was asked for).
    Denied {
        /// When the open state ends.
        until: Option<Instant>,
    },
}

/// Messages a breaker actor understands.
pub enum BreakerMsg {
    /// May an attempt go to this model now? `retry`: it is a re-attempt of the same call on
    /// this model, which the retry budget must allow.
    Acquire {
        /// A re-attempt on the same model.
        retry: bool,
        /// Where the answer goes; a permit it cannot deliver is given back.
        reply: Responder<Admission>,
    },
    /// May one retry be spent from this model's retry budget (a hedge this model made
    /// necessary)? Answered at once.
    SpendRetry(Responder<bool>),
    /// The result of a permitted call.
    Record {
        /// The permit the call was made under.
        permit: Permit,
        /// How the answer was classified.
        class: Class,
        /// How long the attempt took.
        latency: Duration,
    },
    /// A permitted call was never made, or was cancelled before it answered: give the permit
    /// back (nothing is learnt about health).
    Release(Permit),
    /// May a health probe go to this model now? `trial_only`: only as a half-open trial (a
    /// probe run continuing after a successful trial).
    Probe {
        /// Only a half-open trial is wanted.
        trial_only: bool,
        /// Where the answer goes.
        reply: RpcReplyPort<ProbeAdmission>,
    },
    /// A conversation was served by `model`, a later hop of a chain this breaker's model heads:
    /// keep it there until this breaker has closed again. `model` being this breaker's own
    /// model unpins it.
    Pin {
        /// The digest of (tenant, conversation key).
        conversation: Digest,
        /// The digest of the tenant, for its share of the pins.
        tenant: Digest,
        /// The model that served it.
        model: usize,
    },
    /// Where a conversation is pinned, if anywhere (never while this breaker is closed).
    Pinned {
        /// The digest of (tenant, conversation key).
        conversation: Digest,
        /// The answer.
        reply: Responder<PinAnswer>,
    },
    /// Cast the current state to this monitor (a restarted monitor asks).
    ReportTo(ActorRef<MonitorMsg>),
    /// Another instance of the fleet changed this model's breaker.
    Peer(HealthNews),
    /// The fleet's election of this model's half-open trials (for breaker epoch `epoch`).
    #[doc(hidden)]
    Elected {
        /// The half-open state it is for.
        epoch: u64,
        /// This instance won.
        won: bool,
    },
    /// Current state, for status pages and tests.
    Status(RpcReplyPort<BreakerStatus>),
    /// A scheduled timer fired.
    #[doc(hidden)]
    Timer(u64),
    /// Fault injection for supervision tests and chaos drills: the actor panics.
    #[doc(hidden)]
    InjectPanic,
}

/// The answer to [`BreakerMsg::Pinned`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinAnswer {
    /// The breaker is closed: no pin applies (conversations are back on the primary).
    Closed,
    /// Not closed: the model the conversation is pinned to here, if any.
    Open(Option<usize>),
}

/// A breaker's state as reported by [`BreakerMsg::Status`].
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct BreakerStatus {
    /// The model.
    pub model: String,
    /// Closed, open or half-open.
    pub state: StateKind,
    /// Time left in the open state.
    pub open_for: Option<Duration>,
    /// The current sliding window.
    #[serde(skip)]
    pub stats: WindowStats,
    /// The model's retry budget.
    pub retry_budget: RetryBudgetStats,
}

// ---- the governor ----

/// Messages the governor understands.
pub enum GovernorMsg {
    /// Take budget for one attempt; answered now, or later from the lane queue. A grant that
    /// cannot be delivered is given back.
    Reserve(ReserveRequest, Responder<Decision>),
    /// Correct a reservation after the attempt.
    Settle(Settlement),
    /// A usable key of an upstream (least loaded), for calls that are not attempts (token
    /// counting); `None` when every key is quarantined or paused.
    PickKey(usize, RpcReplyPort<Option<usize>>),
    /// Bucket levels, keys and queues, for status pages and tests.
    Status(RpcReplyPort<Vec<UpstreamStatus>>),
    /// The check of a quarantined key (a token count with it) came back.
    #[doc(hidden)]
    KeyChecked {
        /// Upstream index.
        upstream: usize,
        /// Key slot.
        key: usize,
        /// What it found.
        check: crate::policy::lanes::KeyCheck,
    },
    /// How the organization buckets are funded, and the live instances last counted.
    Mode(RpcReplyPort<(FleetMode, usize)>),
    /// A lease came back from the fleet.
    #[doc(hidden)]
    Leased {
        /// The group.
        group: Group,
        /// What the fleet granted, or why it could not answer.
        lease: Result<Lease, FleetError>,
    },
    /// Time for the fleet's heartbeat, give-backs and observations.
    #[doc(hidden)]
    FleetTick,
    /// The fleet counted the live instances (or could not be reached).
    #[doc(hidden)]
    FleetAlive(Result<usize, FleetError>),
    /// A scheduled timer fired.
    #[doc(hidden)]
    Timer(u64),
    /// Fault injection for supervision tests and chaos drills: the actor panics.
    #[doc(hidden)]
    InjectPanic,
}

// ---- the monitor ----

/// One upstream attempt (or probe), as the monitor records it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttemptSample {
    /// Model id.
    pub model: usize,
    /// How the answer was classified.
    pub class: Class,
    /// HTTP status; `None` for a transport failure.
    pub status: Option<u16>,
    /// How long it took.
    pub latency: Duration,
    /// When it ended.
    pub at: Instant,
    /// A re-attempt of the same call on the same model.
    pub retry: bool,
    /// Tokens it used (successes only).
    pub usage: Usage,
}

/// How a call ended, as the SLA sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallStatus {
    /// Answered live by hop `hop` (0: the chain's first choice), model `model`.
    Answered {
        /// The chain hop that served it.
        hop: usize,
        /// Its model id.
        model: usize,
    },
    /// An error returned to the caller: `unavailable`, `deadline_exceeded`, `rejected` (a
    /// 401/402/403/404 that ended every hop) or `internal`.
    Failed(&'static str),
    /// The caller's fault (a malformed request passed through, an invalid call): not counted.
    Invalid,
}

impl CallStatus {
    /// The `status` label of the call metrics: `ok`, `error` or `invalid`.
    pub fn label(&self) -> &'static str {
        match self {
            CallStatus::Answered { .. } => "ok",
            CallStatus::Failed(_) => "error",
            CallStatus::Invalid => "invalid",
        }
    }
}

/// One call, cast by its request actor when it ends.
#[derive(Clone, Debug, PartialEq)]
pub struct CallRecord {
    /// Chain id.
    pub chain: usize,
    /// How it ended.
    pub status: CallStatus,
    /// From the call to its answer (streams: to the first content event).
    pub latency: Duration,
    /// When it ended.
    pub at: Instant,
    /// Its upstream attempts in order.
    pub attempts: Vec<AttemptSample>,
}

/// One subject's SLA as reported.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SlaEntry {
    /// The model or chain.
    pub name: String,
    /// Its figures over the window.
    pub stats: SlaStats,
    /// Its target.
    pub target: SlaTarget,
    /// Where it falls short (empty: healthy, or too few calls to judge).
    pub violations: Vec<SlaViolation>,
}

impl SlaEntry {
    /// True when it meets its target (or has too few calls to be judged).
    pub fn is_healthy(&self) -> bool {
        self.violations.is_empty()
    }
}

/// The SLA of every model and chain over the window, from `Seawall::sla_report`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SlaReport {
    /// How far back the figures look.
    pub window: Duration,
    /// Per model (every attempt and probe), by name.
    pub models: Vec<SlaEntry>,
    /// Per chain (every call), by name.
    pub chains: Vec<SlaEntry>,
}

impl SlaReport {
    /// True when every model and chain meets its target.
    pub fn is_healthy(&self) -> bool {
        self.models
            .iter()
            .chain(&self.chains)
            .all(SlaEntry::is_healthy)
    }

    /// A model's entry.
    pub fn model(&self, name: &str) -> Option<&SlaEntry> {
        self.models.iter().find(|e| e.name == name)
    }

    /// A chain's entry.
    pub fn chain(&self, name: &str) -> Option<&SlaEntry> {
        self.chains.iter().find(|e| e.name == name)
    }
}

/// Whether the runtime can serve, from `Seawall::ready`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Readiness {
    /// Every entry chain has a usable model.
    pub ready: bool,
    /// Per entry chain.
    pub chains: Vec<ChainReadiness>,
}

/// One chain's readiness.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ChainReadiness {
    /// The chain.
    pub chain: String,
    /// At least one of its models is usable.
    pub ready: bool,
    /// Its models that user calls may reach now: breaker closed, or half-open with trials open
    /// to users (not reserved for probes).
    pub usable: Vec<String>,
}

/// Messages the monitor understands.
pub enum MonitorMsg {
    /// A call ended.
    Call(CallRecord),
    /// A model's breaker changed state (or reports it, after a restart of either side).
    Breaker {
        /// Model id.
        model: usize,
        /// Its state now.
        state: StateKind,
        /// When the open state ends, while open.
        open_until: Option<Instant>,
    },
    /// A probe's result.
    ProbeSample(AttemptSample),
    /// A probe task ended; `retry_at`: the breaker said when to come back.
    ProbeDone {
        /// Model id.
        model: usize,
        /// When the breaker's open state ends, if it refused the probe for that.
        retry_at: Option<Instant>,
    },
    /// The SLA report.
    Report(RpcReplyPort<SlaReport>),
    /// Readiness.
    Ready(RpcReplyPort<Readiness>),
    /// A scheduled timer fired.
    #[doc(hidden)]
    Timer(u64),
    /// Fault injection for supervision tests and chaos drills: the actor panics.
    #[doc(hidden)]
    InjectPanic,
}

// ---- the supervisor ----

/// Messages the supervisor understands.
pub enum SupervisorMsg {
    /// The live breaker of a model; answered after the restart if it is being restarted.
    BreakerRef {
        /// Model id.
        model: usize,
        /// The ref the caller found dead, if any: never answer with it again.
        stale: Option<ActorId>,
        /// Where the ref goes.
        reply: Responder<ActorRef<BreakerMsg>>,
    },
    /// The live governor; answered after the restart if it is being restarted.
    GovernorRef {
        /// The ref the caller found dead, if any: never answer with it again.
        stale: Option<ActorId>,
        /// Where the ref goes.
        reply: Responder<ActorRef<GovernorMsg>>,
    },
    /// Total restarts so far.
    Restarts(RpcReplyPort<u64>),
}

// ---- idempotency ----

/// What a call with an idempotency key should do.
#[derive(Debug)]
pub enum Claim {
    /// Run it, then send `Finish` with the result.
    Lead,
    /// Another call with this key is running: its result arrives here.
    Wait(oneshot::Receiver<Result<CallReply, Error>>),
    /// Already answered: the stored result.
    Done(Result<CallReply, Error>),
    /// The key was used with a different request: refuse this one.
    Conflict,
    /// The tenant holds its whole share of running keys: run without deduplication.
    Bypass,
}

/// Messages the idempotency actor understands.
pub enum IdempotencyMsg {
    /// Claim `key` for a call.
    Begin {
        /// The digest of (tenant, idempotency key).
        key: Digest,
        /// The digest of the tenant, for its share of the table.
        tenant: Digest,
        /// The request's fingerprint.
        fingerprint: Digest,
        /// Where the claim goes.
        reply: RpcReplyPort<Claim>,
    },
    /// The leader of `key` finished.
    Finish {
        /// The digest of (tenant, idempotency key).
        key: Digest,
        /// Its result.
        result: Result<CallReply, Error>,
    },
    /// Keys held now: (running, stored).
    Count(RpcReplyPort<(usize, usize)>),
    /// A scheduled timer fired.
    #[doc(hidden)]
    Timer(u64),
    /// Fault injection for supervision tests and chaos drills: the actor panics.
    InjectPanic,
}

// ---- the queue ----

/// Messages the queue understands.
pub enum QueueMsg {
    /// Store a call for later; answers the stored job (or why it could not be stored).
    Enqueue {
        /// The chain it walks.
        chain: String,
        /// The call.
        call: Box<Call>,
        /// The stored job.
        reply: RpcReplyPort<Result<Job, String>>,
    },
    /// One job as stored.
    Get {
        /// Its id.
        id: String,
        /// The job, `None` if unknown (or purged).
        reply: RpcReplyPort<Result<Option<Job>, String>>,
    },
    /// Send the job once it is final (at once if it is already).
    Wait {
        /// Its id.
        id: String,
        /// The final job; dropped unanswered for an unknown id.
        reply: oneshot::Sender<Job>,
    },
    /// Jobs waiting (not running) and replays running.
    Count(RpcReplyPort<(usize, usize)>),
    /// A replay ended.
    #[doc(hidden)]
    Ran {
        /// The job.
        id: String,
        /// The runtime's answer.
        result: Result<CallReply, Error>,
    },
    /// A scheduled timer fired.
    #[doc(hidden)]
    Timer(u64),
    /// Fault injection for supervision tests and chaos drills: the actor panics.
    InjectPanic,
}

#[cfg(test)]
mod tests {
    use super::*;
    use ractor::{Actor, ActorProcessingErr};

    struct Sink;

    impl Actor for Sink {
        type Msg = Option<u32>;
        type State = tokio::sync::mpsc::UnboundedSender<Option<u32>>;
        type Arguments = tokio::sync::mpsc::UnboundedSender<Option<u32>>;

        async fn pre_start(
            &self,
            _: ActorRef<Self::Msg>,
            tx: Self::Arguments,
        ) -> Result<Self::State, ActorProcessingErr> {
            Ok(tx)
        }

        async fn handle(
            &self,
            _: ActorRef<Self::Msg>,
            msg: Self::Msg,
            tx: &mut Self::State,
        ) -> Result<(), ActorProcessingErr> {
            let _ = tx.send(msg);
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_cast_reply_delivers_once_and_a_dropped_one_says_it_was_lost() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (sink, handle) = Actor::spawn(None, Sink, tx).await.unwrap();
        let reply = Responder::cast(&sink, |v: Option<u32>| v, |m| m);
        assert!(!reply.is_closed());
        assert_eq!(reply.send(7), None);
        assert_eq!(rx.recv().await, Some(Some(7)));
        drop(Responder::cast(&sink, |v: Option<u32>| v, |m| m));
        assert_eq!(
            rx.recv().await,
            Some(None),
            "a dropped reply is a lost answer"
        );
        sink.stop(None);
        handle.await.unwrap();
        let late = Responder::cast(&sink, |v: Option<u32>| v, |m| m);
        assert!(late.is_closed());
        assert_eq!(late.send(9), Some(9), "undelivered: given back");
    }

    #[tokio::test]
    async fn a_port_reply_gives_back_what_nobody_takes() {
        let (tx, rx) = oneshot::channel::<u32>();
        let reply = Responder::port(RpcReplyPort::from(tx));
        drop(rx);
        assert!(reply.is_closed());
        assert_eq!(reply.send(3), Some(3));
    }
}
