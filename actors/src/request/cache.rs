//! The response cache a chain degrades to: written by every live answer (unary, or a stream
//! once whole), read when no model can answer.

use std::time::{Duration, Instant};

use crate::call::Reply;
use crate::clock;

/// The response cache: the last live answer per request (without its model), with its time.
/// Bounded by moka (size and TTL); freshness is also checked on tokio's clock, which is the one
/// the runtime (and paused-time tests) run on.
pub struct ResponseCache {
    entries: moka::sync::Cache<String, (Instant, Reply)>,
    ttl: Duration,
}

impl ResponseCache {
    /// At most `max_entries` answers, each kept `ttl`.
    pub fn new(max_entries: u64, ttl: Duration) -> Self {
        Self {
            entries: moka::sync::Cache::builder()
                .max_capacity(max_entries)
                .time_to_live(ttl)
                .build(),
            ttl,
        }
    }

    /// How long an answer is kept.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Keep a live answer.
    pub(crate) fn put(&self, key: String, reply: Reply) {
        self.entries.insert(key, (clock::now(), reply));
    }

    /// A fresh answer for `key` and its age.
    pub(super) fn fresh(&self, key: &str) -> Option<(Duration, Reply)> {
        let (at, reply) = self.entries.get(key)?;
        let age = clock::now().saturating_duration_since(at);
        if age > self.ttl {
            self.entries.invalidate(key);
            return None;
        }
        Some((age, reply))
    }
}
