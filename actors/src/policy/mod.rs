//! Pure policies: no tokio, no ractor, no reqwest. Time (`now: Instant`) and randomness are
//! arguments, so every rule is unit-tested with hand-set times (the quinn-proto way).
//!
//! Everything in this wing is hand-written, on purpose: classification, backoff, the breaker and
//! its windows, the buckets and lanes, the retry budget, the chain walk and the ledger are the
//! product itself, not glue (each file says what it follows: resilience4j, Finagle, the API's
//! own limiter and the official SDK's retry rule).

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
