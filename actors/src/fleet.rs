//! The seam to a fleet: several seawall instances (replicas behind a load balancer) that share
//! one organization budget, one view of model health, conversation pins, idempotency keys and
//! the response cache. The core knows the fleet only through [`Fleet`], as it knows upstreams
//! only through `Upstream`; the `seawall` crate implements it on Redis.
//!
//! Without a fleet nothing changes: every table stays in-process.
//!
//! The fleet is never on an actor's handler path: breaker and governor handlers only cast; the
//! fleet's I/O runs in tasks that answer with messages. When the fleet is unreachable, each
//! instance falls back to what it can decide alone (its share of the budget, its own breakers)
//! and resumes sharing when the fleet is back.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::call::{Reply, Source};
use crate::digest::Digest;
use crate::error::Error;
use crate::policy::bucket::Limits;
use crate::policy::lanes::ServerLimits;
use crate::wire::{Cost, Headers, Usage};

/// The future a [`Fleet`] returns.
pub type FleetFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, FleetError>> + Send + 'a>>;

/// Why the fleet could not answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FleetError {
    /// The fleet's store cannot be reached now (down, a network problem, a timeout): each
    /// instance decides alone until it is back.
    #[error("the fleet's store is unreachable: {0}")]
    Unavailable(String),
    /// The store answered with a refusal (full, read-only, a denied command).
    #[error("the fleet's store refused: {0}")]
    Refused(String),
}

/// A bucket group the fleet shares, by names that are the same on every instance.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GroupKey {
    /// The upstream's name.
    pub upstream: String,
    /// The key organization's label.
    pub org: String,
    /// The model class's name.
    pub class: String,
}

/// What a lease took from the shared bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Taken, now this instance's to spend (zero when even the minimum did not fit).
    pub granted: Cost,
    /// When nothing was granted: how long until the minimum will fit.
    pub retry_after: Option<Duration>,
}

/// A breaker change one instance tells the others.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "news", rename_all = "snake_case")]
pub enum HealthNews {
    /// The model was found down: skip it for `open_ms`.
    Opened {
        /// The model.
        model: String,
        /// How long its breaker stays open.
        open_ms: u64,
        /// Who found out.
        instance: String,
    },
    /// The model answers again (its trials succeeded).
    Closed {
        /// The model.
        model: String,
        /// Who found out.
        instance: String,
    },
}

/// An answer stored for the fleet: a live reply, or a permanent rejection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredAnswer {
    /// The model that answered.
    pub model: String,
    /// `live` or `queued` for a reply; `rejected` for a permanent upstream error.
    pub kind: String,
    /// The upstream's status.
    pub status: u16,
    /// The headers passed on.
    pub headers: Vec<(String, String)>,
    /// The body, as text (Messages bodies are JSON).
    pub body: String,
    /// Token usage.
    pub usage: Usage,
    /// Upstream attempts it took.
    pub attempts: u32,
}

/// How an idempotency key stands fleet-wide.
#[derive(Clone, Debug, PartialEq)]
pub enum FleetClaim {
    /// This instance claimed it: run the call, then `finish`.
    Lead,
    /// Another instance runs it now.
    Running,
    /// Answered already: the stored answer.
    Done(StoredAnswer),
    /// The key was used with another request.
    Conflict,
}

/// A fleet of seawall instances, as the core needs it: one small trait per concern (budget
/// leases, health and elections, conversation pins, idempotency claims, the shared response
/// cache), each used by the actor that needs it. Every method is one short exchange with the
/// fleet's store; an implementation bounds each in time (milliseconds when the store is gone),
/// never hangs.
pub trait Fleet:
    FleetLeases + FleetHealth + FleetPins + FleetIdempotency + FleetCache + Send + Sync + 'static
{
    /// This instance's id in the fleet.
    fn instance(&self) -> &str;

    /// Exchanges with the fleet's store so far (for benchmarks and status).
    fn round_trips(&self) -> u64;
}

/// The fleet's shared budget, leased in slices (the governor's).
pub trait FleetLeases {
    /// Take as much of `want` as the shared bucket of `group` holds, provided that covers `min`
    /// in every dimension and is not nothing (one change: all dimensions or none); else take
    /// nothing and say when `min` (at least one unit of what is wanted) fits. The bucket
    /// refills continuously at `limits` per minute, like the governor's own, with the same
    /// transit allowance `lag`.
    fn lease(
        &self,
        group: &GroupKey,
        limits: Limits,
        lag: Duration,
        want: Cost,
        min: Cost,
    ) -> FleetFuture<'_, Lease>;

    /// Give unspent budget back to the shared bucket.
    fn give_back(&self, group: &GroupKey, limits: Limits, amount: Cost) -> FleetFuture<'_, ()>;

    /// The server says this much is left: the shared bucket holds no more than that.
    fn observe(
        &self,
        group: &GroupKey,
        limits: Limits,
        server: ServerLimits,
    ) -> FleetFuture<'_, ()>;
}

/// Liveness, breaker news and elections (the governor's count, the breakers' news and trials,
/// the monitor's probes).
pub trait FleetHealth {
    /// Announce this instance alive (for a few seconds) and count the live ones.
    fn heartbeat(&self) -> FleetFuture<'_, usize>;

    /// Tell the other instances a breaker changed.
    fn publish(&self, news: HealthNews) -> FleetFuture<'_, ()>;

    /// Hand every other instance's news to `on_news`, from now on (re-subscribing after the
    /// store comes back).
    fn watch(&self, on_news: Box<dyn Fn(HealthNews) + Send + Sync>);

    /// Elect one instance for `what` (a model's trials or probes) for `ttl`: true when this
    /// instance won (or already holds it).
    fn elect(&self, what: &str, ttl: Duration) -> FleetFuture<'_, bool>;
}

/// Conversation pins, fleet-wide (the request actors').
pub trait FleetPins {
    /// Pin a conversation to a model fleet-wide for `ttl`.
    fn pin(&self, conversation: Digest, model: &str, ttl: Duration) -> FleetFuture<'_, ()>;

    /// Forget a conversation's pin.
    fn unpin(&self, conversation: Digest) -> FleetFuture<'_, ()>;

    /// Where a conversation is pinned fleet-wide.
    fn pinned(&self, conversation: Digest) -> FleetFuture<'_, Option<String>>;
}

/// Idempotency claims, fleet-wide (the facade's keyed calls).
pub trait FleetIdempotency {
    /// Claim an idempotency key for a request with `fingerprint`, for `ttl`; asked again by an
    /// instance waiting on another's call, until it is `Done` (or released: then `Lead`).
    fn claim(&self, key: Digest, fingerprint: Digest, ttl: Duration)
        -> FleetFuture<'_, FleetClaim>;

    /// The claimed call ended: store its answer for `ttl` (so repeats replay it), or release
    /// the claim (`None`: a transient failure, the next try runs again).
    fn finish(
        &self,
        key: Digest,
        answer: Option<StoredAnswer>,
        ttl: Duration,
    ) -> FleetFuture<'_, ()>;
}

/// The shared response cache (the request actors' degradation).
pub trait FleetCache {
    /// The shared response cache's answer for `key`, with its age.
    fn cache_get(&self, key: &str) -> FleetFuture<'_, Option<(StoredAnswer, Duration)>>;

    /// Keep a live answer in the shared response cache for `ttl`.
    fn cache_put(&self, key: &str, answer: StoredAnswer, ttl: Duration) -> FleetFuture<'_, ()>;
}

impl StoredAnswer {
    /// The answer worth keeping for the fleet (a live or queued reply, a permanent rejection),
    /// if `result` is one and its body is text.
    pub fn of(result: &Result<Reply, Error>) -> Option<StoredAnswer> {
        let headers = |h: &Headers| {
            h.iter()
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
                .collect()
        };
        match result {
            Ok(r) if matches!(r.source, Source::Live | Source::Queued) => Some(StoredAnswer {
                model: r.model.clone(),
                kind: r.source.as_str().to_owned(),
                status: r.status,
                headers: headers(&r.headers),
                body: String::from_utf8(r.body.to_vec()).ok()?,
                usage: r.usage,
                attempts: r.attempts,
            }),
            Err(Error::Rejected {
                model,
                status,
                headers: h,
                body,
                ..
            }) => Some(StoredAnswer {
                model: model.clone(),
                kind: "rejected".into(),
                status: *status,
                headers: headers(h),
                body: String::from_utf8(body.to_vec()).ok()?,
                usage: Usage::default(),
                attempts: 0,
            }),
            _ => None,
        }
    }

    /// The answer again, as a result.
    pub fn into_result(self) -> Result<Reply, Error> {
        let mut headers = Headers::default();
        for (n, v) in self.headers {
            headers.insert(&n, v);
        }
        let body = bytes::Bytes::from(self.body);
        if self.kind == "rejected" {
            return Err(Error::Rejected {
                model: self.model,
                status: self.status,
                headers,
                body,
                trail: Vec::new(),
            });
        }
        Ok(Reply {
            model: self.model,
            source: if self.kind == "queued" {
                Source::Queued
            } else {
                Source::Live
            },
            age: None,
            status: self.status,
            headers,
            body,
            usage: self.usage,
            attempts: self.attempts,
            trail: Vec::new(),
            latency: Duration::ZERO,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_round_trip_through_their_stored_form() {
        let mut headers = Headers::default();
        headers.insert("request-id", "req_1");
        let reply = Reply {
            model: "m".into(),
            source: Source::Live,
            age: None,
            status: 200,
            headers: headers.clone(),
            body: bytes::Bytes::from_static(br#"{"id":"msg_1"}"#),
            usage: Usage::default(),
            attempts: 2,
            trail: Vec::new(),
            latency: Duration::ZERO,
        };
        let stored = StoredAnswer::of(&Ok(reply.clone())).unwrap();
        let json = serde_json::to_string(&stored).unwrap();
        let back = serde_json::from_str::<StoredAnswer>(&json)
            .unwrap()
            .into_result()
            .unwrap();
        assert_eq!(back.body, reply.body);
        assert_eq!(back.request_id(), Some("req_1"));
        let rejected: Result<Reply, Error> = Err(Error::Rejected {
            model: "m".into(),
            status: 400,
            headers,
            body: bytes::Bytes::from_static(b"{}"),
            trail: Vec::new(),
        });
        let back = StoredAnswer::of(&rejected).unwrap().into_result();
        assert!(matches!(back, Err(Error::Rejected { status: 400, .. })));
        // A cache answer or a transient failure is not worth keeping.
        let mut cached = reply;
        cached.source = Source::Cache;
        assert!(StoredAnswer::of(&Ok(cached)).is_none());
        assert!(StoredAnswer::of(&Err(Error::ShuttingDown)).is_none());
    }
}
