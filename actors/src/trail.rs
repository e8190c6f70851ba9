//! A call's trail: what happened on each of its steps. Plain data, shared by the call's answer
//! ([`Reply`](crate::Reply)) and its errors ([`Error`](crate::Error)), so neither module
//! needs the other for it.

use std::time::Duration;

use crate::policy::classify::Class;

/// What happened on one step of a call: an answered attempt or a hop skipped without one.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct AttemptRecord {
    /// The model of this step.
    pub model: String,
    /// What happened.
    pub outcome: Outcome,
}

/// The outcome of one step of a call.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Outcome {
    /// An upstream attempt was made.
    Attempted {
        /// HTTP status, or `None` for a transport failure.
        status: Option<u16>,
        /// The classification.
        class: Class,
        /// How long the attempt took.
        latency: Duration,
        /// The upstream's `request-id`, if it sent one.
        request_id: Option<String>,
        /// Started as a hedge of another attempt still in flight.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        hedge: bool,
    },
    /// An attempt sent but cancelled before it answered: another attempt of the call (a
    /// hedge, or the one it hedged) answered first.
    Cancelled {
        /// It had been started as a hedge.
        hedge: bool,
    },
    /// The model's breaker was open (or its half-open trial was full): no attempt.
    BreakerOpen,
    /// The governor had no budget or no usable key within the allowed wait: no attempt.
    NoBudget {
        /// Why the governor refused.
        reason: String,
    },
    /// A retry on this model was refused by its retry budget: no attempt.
    RetryBudgetSpent,
    /// The model answered with `stop_reason: "refusal"` and the chain falls back on refusals.
    Refused,
}
