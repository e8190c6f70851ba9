//! A fleet of seawall instances on Redis: the organization budget, model health, conversation
//! pins, idempotency keys and the response cache, shared (see [`RedisCluster`]). Opt-in: without
//! a cluster nothing connects.

pub mod fleet;

pub use fleet::{ClusterError, RedisCluster};

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
