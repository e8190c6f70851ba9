//! Pure policies: no tokio, no ractor, no reqwest. Time (`now: Instant`) and randomness are
//! arguments, so every rule is unit-tested with hand-set times (the quinn-proto way).

pub mod alert;
pub mod backoff;
pub mod breaker;
pub mod bucket;
pub mod chain;
pub mod classify;
pub mod invalid;
pub mod lanes;
pub mod latency;
pub mod ledger;
pub mod pins;
pub mod retry_budget;
pub mod rng;
pub mod sla;
pub mod trials;
pub mod window;

#[cfg(test)]
mod props;
