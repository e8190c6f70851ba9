//! The simulator on loopback, and seawall's Anthropic transport pointed at a loopback server:
//! what the transport, chaos, fleet and gateway tests all start from, and a first attempt to
//! send it.
#![allow(dead_code)]

use std::time::Duration;

use bytes::Bytes;
use seawall::core::upstream::Attempt;
use seawall::sim::{Scenario, Sim, SimHandle};
use seawall::{AnthropicOptions, AnthropicUpstream, ApiKey};

/// The simulator with this scenario, on 127.0.0.1 (a free port).
pub async fn sim(toml: &str) -> SimHandle {
    let scenario = Scenario::from_toml(toml).expect("scenario");
    Sim::start(scenario, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("sim starts")
}

/// The keys, as the transports take them.
pub fn keys(list: &[&str]) -> Vec<ApiKey> {
    list.iter().map(|k| ApiKey::new(*k).unwrap()).collect()
}

/// The Anthropic transport's defaults, at `base_url`, with a loopback-sized 500 ms connect
/// timeout.
pub fn anthropic_options(base_url: String) -> AnthropicOptions {
    AnthropicOptions {
        base_url,
        connect_timeout: Duration::from_millis(500),
        ..AnthropicOptions::default()
    }
}

/// The Anthropic transport at `base_url` with these keys ([`anthropic_options`]).
pub fn anthropic(base_url: String, key_list: &[&str]) -> AnthropicUpstream {
    AnthropicUpstream::new(keys(key_list), anthropic_options(base_url)).unwrap()
}

/// A first attempt of `body` for `model` within `timeout`: key slot 0, no retry count, no
/// idempotency key, nothing forwarded.
pub fn attempt(model: &str, body: Bytes, timeout: Duration) -> Attempt {
    Attempt {
        model: model.to_owned(),
        body,
        key: 0,
        retry_count: 0,
        timeout,
        idempotency_key: None,
        forward: Default::default(),
    }
}
