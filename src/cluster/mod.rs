//! The fleet on Redis (opt-in: `[cluster]` in the config, or
//! `Seawall::builder().cluster(..)`): several seawall instances sharing one Redis behave like one.
//! Without a cluster nothing here connects to anything.
//!
//! - [`conn`]: one bounded connection (every call answers or fails within about a second), the
//!   errors it reports (what to fix, never the password), the instances' heartbeat;
//! - [`fleet`]: [`RedisCluster`], the core's `Fleet`: the organization budget, model health,
//!   conversation pins, idempotency keys and the response cache, shared;
//! - [`jobs`]: the shared queue for later on Redis Streams: any instance accepts a job, one
//!   replays it, a dead instance's jobs are reclaimed, each job finishes exactly once.

pub mod conn;
pub mod fleet;
pub mod jobs;

pub use conn::ClusterError;
pub use fleet::RedisCluster;

/// `Seawall::builder().cluster(cluster)`: join a fleet on Redis (see [`RedisCluster`]).
pub trait ClusterBuilder {
    /// Share the organization budget, model health, pins, idempotency keys and the response
    /// cache with the other instances of `cluster`.
    fn cluster(self, cluster: RedisCluster) -> Self;
}

impl ClusterBuilder for seawall_actors::Builder {
    fn cluster(self, cluster: RedisCluster) -> Self {
        self.fleet(std::sync::Arc::new(cluster))
    }
}
