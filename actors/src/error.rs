//! The errors a caller of the runtime can see. Each variant says what happened and what to do.

use std::time::Duration;

use bytes::Bytes;

use crate::trail::AttemptRecord;
use crate::wire::Headers;

/// Everything that can go wrong with a call or with building the runtime.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// The call itself is malformed; fix it before sending again. Nothing was sent upstream.
    #[error("invalid call: {0}")]
    InvalidCall(String),

    /// The call names a model or chain that is not configured.
    #[error("no chain or model named {0:?} is configured: add it with .model(..) or .chain(..)")]
    UnknownModel(String),

    /// The runtime's configuration is wrong; the message names the setting.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// The upstream answered with a permanent error. It is passed through unchanged and was not
    /// retried: status, headers and body are the upstream's own.
    #[error("{model} rejected the request with HTTP {status}{}: not retried", crate::policy::classify::error_type(body).map(|t| format!(" ({t})")).unwrap_or_default())]
    Rejected {
        /// The model that answered.
        model: String,
        /// The upstream's HTTP status.
        status: u16,
        /// The upstream's headers (including `request-id`).
        headers: Headers,
        /// The upstream's body, unchanged.
        body: Bytes,
        /// Every step of the call.
        trail: Vec<AttemptRecord>,
    },

    /// No model of the chain could answer within the deadline. `retry_after` is the earliest
    /// moment something is expected to recover (an open breaker's end, budget refill or the
    /// server's hint), when known: a caller can honour it.
    #[error("no model could answer ({}){}", summary(trail), retry_after.map(|d| format!("; retry after {:.1}s", d.as_secs_f64())).unwrap_or_default())]
    Unavailable {
        /// When to try again.
        retry_after: Option<Duration>,
        /// Whether the caller's deadline is what ended the walk (it ran out, or the next chance
        /// was past it).
        deadline_exceeded: bool,
        /// Whether the deadline really ran out: no attempt could start any more (false: the
        /// call was refused early, as nothing recovers before its deadline).
        deadline_spent: bool,
        /// Every step of the call.
        trail: Vec<AttemptRecord>,
    },

    /// The runtime is shutting down and takes no new calls.
    #[error("seawall is shutting down and accepts no new calls")]
    ShuttingDown,

    /// A part of the runtime failed in a way it could not recover from (a bug: please report).
    #[error("internal error: {0}")]
    Internal(String),
}

fn summary(trail: &[AttemptRecord]) -> String {
    use crate::trail::Outcome;
    if trail.is_empty() {
        return "nothing was tried".into();
    }
    trail
        .iter()
        .map(|r| match &r.outcome {
            Outcome::Attempted { status, class, .. } => match status {
                Some(s) => format!("{}: {s} {}", r.model, class.as_str()),
                None => format!("{}: {}", r.model, class.as_str()),
            },
            Outcome::BreakerOpen => format!("{}: breaker open", r.model),
            Outcome::NoBudget { reason } => format!("{}: {reason}", r.model),
            Outcome::RetryBudgetSpent => format!("{}: retry budget spent", r.model),
            Outcome::Refused => format!("{}: refused", r.model),
            Outcome::Cancelled { .. } => {
                format!("{}: cancelled (another attempt answered)", r.model)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl Error {
    /// The steps the call took before this error, if it got that far.
    pub fn trail(&self) -> &[AttemptRecord] {
        match self {
            Error::Rejected { trail, .. } | Error::Unavailable { trail, .. } => trail,
            _ => &[],
        }
    }

    /// The API's `error.type` of a passed-through rejection (`invalid_request_error`, ...).
    pub fn upstream_error_type(&self) -> Option<String> {
        match self {
            Error::Rejected { body, .. } => crate::policy::classify::error_type(body),
            _ => None,
        }
    }

    /// When the caller may try again, if the runtime knows.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}
