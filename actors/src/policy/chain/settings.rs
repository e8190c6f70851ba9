//! How a chain retries, hedges, estimates and degrades: the walk's settings, with their defaults
//! and the rule that checks them.

use std::time::Duration;

use crate::policy::backoff::Backoff;
use crate::policy::invalid::Invalid;

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
    /// Upstream attempts per call across all hops (hedges included).
    pub max_attempts: u32,
    /// How input tokens are estimated before the governor reserves them.
    pub estimate: Estimate,
    /// Move to the next hop when a model answers `stop_reason: "refusal"` (forwarding the
    /// refusal's `fallback_credit_token`). Streams: only when the refusal came before content.
    pub refusal_fallback: bool,
    /// What a call of this chain falls back to, in order, when no model can answer
    /// (`Error::Unavailable`); never for a rejected request. Empty: the honest error.
    pub degrade: Vec<Degrade>,
    /// When an attempt that has not answered yet gets a hedge (a parallel attempt on the next
    /// candidate): see [`Hedge`]. Default [`Hedge::Auto`]: for unary calls of chains with a
    /// fallback, after twice the model's expected latency for the request.
    pub hedge: Hedge,
    /// Hedge streams too (only before their first content event). Default false.
    pub hedge_streams: bool,
    /// At most this many hedges per call (0: never hedge). Default 1.
    pub max_hedges: u32,
    /// Streams: after content, the longest silence between two events; past it the stream ends
    /// with an `error` event (never a silent hang). Default 30 s.
    pub idle_timeout: Duration,
    /// Cut a unary attempt at what the request should take (the model's expected latency for
    /// its `max_tokens`, times four, at least [`MIN_LEARNED_TIMEOUT`]) rather than at
    /// `attempt_timeout`, which stays the cap. Until the model has answered enough requests,
    /// `attempt_timeout` applies. Default true.
    pub learned_timeouts: bool,
}

/// When to hedge an attempt that has not answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hedge {
    /// Never.
    Off,
    /// After this long, whatever the chain.
    After(Duration),
    /// For chains with a fallback: after twice the model's expected latency for the request (a
    /// 95th percentile, scaled by `max_tokens`), at least [`MIN_AUTO_HEDGE`]; until the model
    /// has answered enough requests to know, after [`UNLEARNED_HEDGE`].
    Auto,
}

/// The earliest an automatic hedge starts: below it, ordinary jitter would hedge.
pub const MIN_AUTO_HEDGE: Duration = Duration::from_millis(50);
/// An automatic hedge's delay before the model's latency is learned.
pub const UNLEARNED_HEDGE: Duration = Duration::from_secs(2);
/// The shortest learned attempt timeout.
pub const MIN_LEARNED_TIMEOUT: Duration = Duration::from_secs(2);

impl RetryPolicy {
    /// The hedge delay of a hop, for a request that may generate `max_tokens`, given the
    /// model's learned latency and whether the chain has another hop.
    pub fn hedge_after(
        &self,
        expected: Option<crate::policy::latency::Expected>,
        max_tokens: u64,
        stream: bool,
        chain_of_one: bool,
    ) -> Option<Duration> {
        if self.max_hedges == 0 || (stream && !self.hedge_streams) {
            return None;
        }
        match self.hedge {
            Hedge::Off => None,
            Hedge::After(d) => Some(d),
            Hedge::Auto if chain_of_one => None,
            Hedge::Auto => {
                let Some(e) = expected else {
                    return Some(UNLEARNED_HEDGE);
                };
                // A stream hedges on its first content: the fixed part is what it waits for.
                let wait = if stream {
                    e.fixed
                } else {
                    e.for_tokens(max_tokens)
                };
                Some(wait.saturating_mul(2).max(MIN_AUTO_HEDGE))
            }
        }
    }

    /// A unary attempt's timeout for a request that may generate `max_tokens`: learned when
    /// the model is known, never above `attempt_timeout`.
    pub fn attempt_timeout_for(
        &self,
        expected: Option<crate::policy::latency::Expected>,
        max_tokens: u64,
    ) -> Option<Duration> {
        if !self.learned_timeouts {
            return None;
        }
        let e = expected?;
        let learned = e
            .for_tokens(max_tokens)
            .saturating_mul(4)
            .max(MIN_LEARNED_TIMEOUT);
        Some(learned.min(self.attempt_timeout))
    }
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

impl RetryPolicy {
    /// A call's whole deadline: its own timeout, else the chain's. The one rule, for the walk
    /// and for whatever waits on the call's behalf (a fleet's idempotent wait).
    pub fn deadline_of(&self, timeout: Option<Duration>) -> Duration {
        timeout.unwrap_or(self.deadline)
    }
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
            hedge: Hedge::Auto,
            hedge_streams: false,
            max_hedges: 1,
            idle_timeout: Duration::from_secs(30),
            learned_timeouts: true,
        }
    }
}

impl RetryPolicy {
    /// Check the settings.
    ///
    /// # Errors
    ///
    /// The first field that cannot work, and what is wrong with it.
    pub fn validate(&self) -> Result<(), Invalid> {
        self.backoff.validate()?;
        for (field, d) in [
            ("deadline", self.deadline),
            ("attempt_timeout", self.attempt_timeout),
            ("first_token_timeout", self.first_token_timeout),
            ("idle_timeout", self.idle_timeout),
        ] {
            if d.is_zero() {
                return Err(Invalid::new(field, "must be longer than zero"));
            }
        }
        if self.min_attempt >= self.deadline {
            return Err(Invalid::new("min_attempt", "must be shorter than deadline"));
        }
        if self.max_attempts == 0 {
            return Err(Invalid::new("max_attempts", "must be at least 1"));
        }
        if self.hedge == Hedge::After(Duration::ZERO) {
            return Err(Invalid::new(
                "hedge_after",
                "must be longer than zero (or \"off\")",
            ));
        }
        Ok(())
    }
}
