//! seawall's core: pure resilience policies and the ractor actors that drive them.
//!
//! No HTTP, no files, no clocks of its own: the outside is reached only through
//! [`upstream::Upstream`], and time is tokio's, so every actor test runs on paused time.
//!
//! - [`policy`]: pure state machines (classify, backoff, breaker, buckets, windows).
//! - [`breaker`], [`governor`], [`request`], [`monitor`], [`supervisor`]: the actors that drive
//!   them.
//! - [`runtime`]: the facade, [`Seawall`].

pub mod assemble;
pub mod breaker;
pub mod call;
pub mod clock;
pub mod digest;
pub mod error;
pub mod events;
pub mod governor;
pub mod idempotency;
pub mod monitor;
pub mod policy;
pub mod queue;
pub mod request;
pub mod runtime;
pub mod scripted;
pub mod supervisor;
pub mod timer;
pub mod upstream;

pub use call::{AttemptRecord, Call, Lane, Outcome, Reply, Source, StreamReply};
pub use error::Error;
pub use events::{AlertKind, Event};
pub use governor::Bulkhead;
pub use idempotency::IdempotencyConfig;
pub use monitor::{ChainReadiness, Price, ProbeConfig, ProbeKind, Readiness, SlaEntry, SlaReport};
pub use policy::alert::AlertConfig;
pub use policy::backoff::{Backoff, Jitter};
pub use policy::breaker::{BreakerConfig, OpenBackoff, StateKind, Trip};
pub use policy::bucket::Limits;
pub use policy::classify::Class;
pub use policy::pins::PinLimits;
pub use policy::retry_budget::RetryBudgetConfig;
pub use policy::sla::{SlaConfig, SlaStats, SlaTarget, SlaViolation};
pub use policy::window::WindowKind;
pub use queue::{Job, JobState, JobStore, MemoryJobStore, QueueConfig};
pub use request::{Degrade, Estimate, RetryPolicy};
pub use runtime::{Builder, HopSpec, Seawall, ShutdownReport};
pub use supervisor::RestartIntensity;
pub use upstream::{
    Attempt, Cost, Headers, SseEvent, StreamBody, StreamResponse, TransportError, Upstream,
    UpstreamFuture, UpstreamResponse, Usage,
};
