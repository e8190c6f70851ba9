//! seawall's core: pure resilience policies and the ractor actors that drive them.
//!
//! No HTTP, no files, no clocks of its own: the outside is reached only through
//! [`upstream::Upstream`], and time is tokio's, so every actor test runs on paused time.
//!
//! - [`policy`]: pure state machines, time passed in (classify, backoff, breaker, buckets,
//!   the governor's lanes, the chain walk, windows, SLA, alerts, pins).
//! - [`protocol`]: the messages the actors exchange; [`directory`]: where they find each other.
//! - [`breaker`], [`governor`], [`request`], [`monitor`], [`idempotency`], [`queue`],
//!   [`supervisor`]: the actors that drive the policies.
//! - [`runtime`]: the facade, [`Seawall`].
//! - Plain data: [`call`], [`wire`], [`job`], [`error`], [`events`], [`digest`].

pub mod assemble;
mod attempt;
pub(crate) mod breaker;
pub mod call;
pub(crate) mod clock;
pub mod digest;
pub(crate) mod directory;
pub mod error;
pub mod events;
pub mod fleet;
pub(crate) mod governor;
pub mod idempotency;
pub mod job;
pub(crate) mod latency;
pub(crate) mod monitor;
pub mod policy;
pub mod protocol;
pub(crate) mod queue;
pub(crate) mod request;
pub mod runtime;
pub mod scripted;
pub(crate) mod supervisor;
pub(crate) mod timer;
pub(crate) mod trail;
pub mod upstream;
pub mod wire;

pub use call::{AttemptRecord, Call, CountMiss, Lane, Outcome, Reply, Source, TokenCount};
pub use error::Error;
pub use events::{AlertKind, Event};
pub use fleet::{
    Fleet, FleetCache, FleetError, FleetHealth, FleetIdempotency, FleetLeases, FleetPins,
    HealthNews,
};
pub use idempotency::IdempotencyConfig;
pub use job::{Finished, Job, JobState, JobStore, MemoryJobStore, QueueConfig, StoreFuture};
pub use monitor::{ProbeConfig, ProbeKind};
pub use policy::alert::AlertConfig;
pub use policy::backoff::{Backoff, Jitter};
pub use policy::breaker::{BreakerConfig, OpenBackoff, StateKind, Trip};
pub use policy::bucket::Limits;
pub use policy::chain::{Degrade, Estimate, Hedge, RetryPolicy};
pub use policy::classify::Class;
pub use policy::lanes::Bulkhead;
pub use policy::lanes::FleetMode;
pub use policy::pins::PinLimits;
pub use policy::retry_budget::RetryBudgetConfig;
pub use policy::sla::{SlaConfig, SlaStats, SlaTarget, SlaViolation};
pub use policy::window::WindowKind;
pub use protocol::{BreakerStatus, ChainReadiness, Readiness, SlaEntry, SlaReport};
pub use request::StreamReply;
pub use runtime::{Builder, FleetStatus, HopSpec, Seawall, ShutdownReport};
pub use supervisor::RestartIntensity;
pub use upstream::{StreamBody, StreamResponse, Upstream, UpstreamFuture};
pub use wire::{Attempt, Cost, Headers, Price, SseEvent, TransportError, UpstreamResponse, Usage};
