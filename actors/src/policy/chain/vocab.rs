//! What the chain walk hears and says: the facts of a call and its hops, the [`Event`]s the
//! driver feeds in, the [`Step`]s it drains, and how a call ends ([`Ending`]).

use std::time::Duration;

use serde_json::Value;

use crate::call::AttemptRecord;
use crate::policy::breaker::{Admission, Permit};
use crate::policy::classify::Verdict;
use crate::policy::lanes::{Decision, Ticket};
use crate::wire::Cost;

use super::Degrade;

/// What the walk knows of one hop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HopFacts {
    /// The hop's model id.
    pub model: usize,
    /// The model's name (for the trail).
    pub name: String,
    /// The model's upstream (an organization-scoped failure ends every hop on it).
    pub upstream: usize,
    /// The heuristic input-token estimate of this hop's request.
    pub input_estimate: u64,
    /// This hop's `max_tokens`.
    pub max_tokens: u64,
    /// This hop's attempt timeout, when it knows better than the policy's (`None`: the
    /// policy's `attempt_timeout`, or `first_token_timeout` for a stream).
    pub attempt_timeout: Option<Duration>,
    /// Start a hedge when an attempt on this hop has not answered after this long.
    pub hedge_after: Option<Duration>,
}

/// What the walk knows of the call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallFacts {
    /// The chain's hops, first choice first.
    pub hops: Vec<HopFacts>,
    /// A streaming call: the walk ends at the first content event.
    pub stream: bool,
    /// The call's own total timeout (`None`: the policy's deadline).
    pub timeout: Option<Duration>,
    /// The call carries a conversation key: ask where it is pinned before the first hop.
    pub conversation: bool,
    /// A replay of a queued job: never degraded (it waits in the queue for a live answer).
    pub replay: bool,
    /// Seed of the call's backoff jitter.
    pub seed: u64,
}

/// A refusal's credit for the next hop: the token to forward and, with a prefill claim, the
/// refused partial output to continue from.
#[derive(Clone, Debug, PartialEq)]
pub struct Credit {
    /// `stop_details.fallback_credit_token`, forwarded as a top-level `fallback_credit_token`.
    pub token: Value,
    /// The refused content blocks, appended as an assistant turn (empty without a claim).
    pub prefill: Vec<Value>,
}

/// A model's answer was a refusal (`stop_reason: "refusal"`), with its credit if it minted one.
#[derive(Clone, Debug, PartialEq)]
pub struct Refusal {
    /// The credit, when the refusal carries a `fallback_credit_token`.
    pub credit: Option<Credit>,
}

/// Identifies one attempt of a call.
pub type AttemptId = u32;

/// How one attempt ended, as the driver classified it.
#[derive(Clone, Debug, PartialEq)]
pub struct AttemptReport {
    /// The classifier's verdict.
    pub verdict: Verdict,
    /// The HTTP status, if one came.
    pub status: Option<u16>,
    /// How long the attempt took (a stream: to its first content event).
    pub latency: Duration,
    /// The upstream's `request-id`.
    pub request_id: Option<String>,
    /// For a success: the answer was a refusal (a stream: before any content).
    pub refusal: Option<Refusal>,
    /// Why the transport could not send the request at all, when it could not.
    pub unsent: Option<String>,
}

/// What happened, for the walk.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Where the call's conversation is pinned (a model id), if anywhere.
    Pinned(Option<usize>),
    /// The breaker of `hop` answered.
    Admission {
        /// The hop asked about.
        hop: usize,
        /// The answer.
        admission: Admission,
    },
    /// The upstream counted `hop`'s input tokens (`None`: it could not).
    Counted {
        /// The hop counted.
        hop: usize,
        /// The count.
        tokens: Option<u64>,
    },
    /// The retry budget of `hop`'s model answered a hedge's request.
    RetryBudget {
        /// The hop whose model pays.
        hop: usize,
        /// It may.
        granted: bool,
    },
    /// The governor answered `hop`'s reservation.
    Budget {
        /// The hop.
        hop: usize,
        /// The answer.
        decision: Decision,
    },
    /// An attempt ended (a stream: reached its first content event, or failed before).
    Finished {
        /// Which attempt.
        attempt: AttemptId,
        /// How it went.
        report: AttemptReport,
    },
    /// The runtime could not be asked (an actor did not come back after restarts).
    Lost(String),
}

/// What the driver must do next.
#[derive(Clone, Debug, PartialEq)]
#[must_use]
pub enum Step {
    /// Ask the chain's primary breaker where the conversation is pinned; answer with
    /// [`Event::Pinned`].
    AskPin,
    /// Ask `hop`'s breaker for a permit (`retry`: a re-attempt on this model, which its retry
    /// budget must allow); answer with [`Event::Admission`].
    Acquire {
        /// The hop.
        hop: usize,
        /// A re-attempt on the same model.
        retry: bool,
    },
    /// Spend one retry from the retry budget of `hop`'s model (for a hedge it made necessary);
    /// answer with [`Event::RetryBudget`].
    SpendRetry {
        /// The hop whose model pays.
        hop: usize,
    },
    /// Count `hop`'s input tokens with the upstream's counter; answer with [`Event::Counted`].
    CountTokens {
        /// The hop.
        hop: usize,
    },
    /// Reserve budget for `hop`; answer with [`Event::Budget`].
    Reserve {
        /// The hop.
        hop: usize,
        /// What the attempt is expected to cost.
        cost: Cost,
        /// The longest the governor may park the request.
        max_wait: Duration,
    },
    /// Give an unused permit back to `hop`'s breaker (and an unused reservation back to the
    /// governor).
    Release {
        /// The hop.
        hop: usize,
        /// The permit.
        permit: Permit,
        /// A reservation granted but not used.
        ticket: Option<Ticket>,
    },
    /// Send an attempt; answer with [`Event::Finished`].
    Send(Send),
    /// Cancel an attempt in flight (a hedge lost): give its permit back, settle its budget as
    /// the upstream would charge it; its report, if one still comes, is ignored.
    Cancel {
        /// Which attempt.
        attempt: AttemptId,
    },
    /// Pin the conversation to `hop`'s model (the first hop: unpin).
    Pin {
        /// The hop that served.
        hop: usize,
    },
    /// The walk is over.
    Finish(Finish),
}

/// An attempt to start.
#[derive(Clone, Debug, PartialEq)]
pub struct Send {
    /// Its id.
    pub attempt: AttemptId,
    /// Its hop.
    pub hop: usize,
    /// The breaker's permit.
    pub permit: Permit,
    /// The governor's reservation.
    pub ticket: Ticket,
    /// Its time budget (a stream: to the first content event).
    pub timeout: Duration,
    /// 0 for the call's first attempt, then 1, 2, ... (the SDK's retry count).
    pub retry_count: u32,
    /// A re-attempt on this hop's model.
    pub retry: bool,
    /// Started as a hedge of another attempt in flight.
    pub hedge: bool,
    /// A refusal's credit to add to the request.
    pub credit: Option<Credit>,
}

/// How the call ends.
#[derive(Clone, Debug, PartialEq)]
pub struct Finish {
    /// The answer.
    pub ending: Ending,
    /// Every step of the call.
    pub trail: Vec<AttemptRecord>,
    /// Upstream attempts made.
    pub attempts: u32,
}

/// The call's answer.
#[derive(Clone, Debug, PartialEq)]
pub enum Ending {
    /// `attempt` on `hop` served it.
    Served {
        /// The attempt whose answer to return.
        attempt: AttemptId,
        /// Its hop.
        hop: usize,
    },
    /// No later hop served: the refusal of `attempt` is the answer.
    Refusal {
        /// The refused attempt.
        attempt: AttemptId,
        /// Its hop.
        hop: usize,
    },
    /// A permanent upstream answer, passed through unchanged.
    Rejected {
        /// The attempt whose answer to pass through.
        attempt: AttemptId,
        /// Its hop.
        hop: usize,
    },
    /// No hop can take this request at all (why, per hop); nothing more was sent.
    Invalid(String),
    /// No model could answer in time.
    Unavailable {
        /// When something is expected to recover.
        retry_after: Option<Duration>,
        /// The deadline is what ended the walk (it ran out, or the next chance is past it).
        deadline_exceeded: bool,
        /// The deadline really ran out: no attempt could start any more (false: the call was
        /// refused early, as nothing recovers before its deadline).
        deadline_spent: bool,
        /// What the chain may degrade to, in order (already filtered for this call).
        degrade: Vec<Degrade>,
    },
    /// The runtime failed (an actor did not come back).
    Internal(String),
}
