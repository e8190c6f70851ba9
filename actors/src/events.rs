//! Events the runtime publishes for applications: breaker transitions, supervision restarts and
//! alerts.
//!
//! Subscribe with `Seawall::subscribe()`. A slow subscriber lags and loses the oldest events
//! (a tokio broadcast channel); the runtime itself never waits for subscribers.

use std::time::Duration;

use crate::policy::breaker::StateKind;

/// Something an operator or an app may want to react to.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum Event {
    /// A model's breaker changed state.
    Breaker {
        /// The model.
        model: String,
        /// State before.
        from: StateKind,
        /// State after.
        to: StateKind,
        /// Why (`failure_rate`, `open_elapsed`, `half_open_succeeded`, ...).
        reason: &'static str,
        /// How long it will stay open, when it just opened.
        open_for: Option<Duration>,
    },
    /// The supervisor restarted a failed child.
    Restarted {
        /// Which child: `breaker:<model>` or `governor`.
        child: String,
        /// Why it failed.
        error: String,
        /// Restarts of this runtime inside the current intensity window.
        recent_restarts: u32,
    },
    /// An alert crossed its threshold (`firing: true`) or recovered (`firing: false`). Each
    /// alert fires once per crossing and clears once per recovery.
    Alert {
        /// What is watched.
        kind: AlertKind,
        /// The chain (rates) or model (breaker) it is about.
        subject: String,
        /// The figure: a percentage for rates, seconds not closed for a breaker (0 on clear).
        value: f64,
        /// The threshold it crossed: a percentage, or seconds.
        threshold: f64,
        /// Firing now, or cleared.
        firing: bool,
    },
    /// A queued job reached its final outcome (see `Seawall::job`).
    Job {
        /// The job id.
        id: String,
        /// Its chain.
        chain: String,
        /// `done`, `failed` or `expired`.
        outcome: &'static str,
    },
}

/// What an [`Event::Alert`] watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// A chain's share of failed calls over the alert window.
    FailureRate,
    /// A chain's share of answers served by a fallback hop over the alert window.
    FallbackRate,
    /// A model's breaker has not been closed for longer than the limit.
    BreakerOpen,
}

impl AlertKind {
    /// A short stable name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::FailureRate => "failure_rate",
            AlertKind::FallbackRate => "fallback_rate",
            AlertKind::BreakerOpen => "breaker_open",
        }
    }
}

/// Sender side kept by the supervisor and handed to every child, so it survives restarts.
pub type EventSender = tokio::sync::broadcast::Sender<Event>;
