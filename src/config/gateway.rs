//! `[gateway]`: what `seawall serve` accepts from clients, and its limits.

use std::time::Duration;

use serde::Deserialize;

use super::de::de_opt_duration;
use super::{
    ClientToken, DEFAULT_BODY_READ_TIMEOUT, DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_HEADER_BYTES, DEFAULT_SHUTDOWN_GRACE,
};

/// `[gateway]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    /// Client tokens, accepted as `x-api-key` or `Authorization: Bearer` (never forwarded).
    #[serde(default)]
    pub tokens: Vec<ClientToken>,
    /// Environment variables holding more client tokens (keeps them out of the file).
    #[serde(default)]
    pub token_envs: Vec<String>,
    /// Largest request body read; larger ones get 413. Default [`DEFAULT_MAX_BODY_BYTES`].
    pub max_body_bytes: Option<u64>,
    /// How long a shutdown waits for calls in flight. Default [`DEFAULT_SHUTDOWN_GRACE`].
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub shutdown_grace: Option<Duration>,
    /// Deduplicate requests by their `idempotency-key` header: identical requests in flight
    /// share one upstream call, and a finished one is replayed for this long. Unset: off.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub idempotency_ttl: Option<Duration>,
    /// At most this many idempotency keys held at once (oldest finished ones go first).
    /// Default 10 000.
    pub idempotency_max_entries: Option<usize>,
    /// At most this many idempotency keys of one client token. Default 1 000.
    pub idempotency_max_per_client: Option<usize>,
    /// At most this many pinned conversations per primary model. Default 100 000.
    pub max_pins: Option<usize>,
    /// At most this many pinned conversations of one client token per primary model.
    /// Default 10 000.
    pub max_pins_per_client: Option<usize>,
    /// Without tokens, browser pages (requests with an `Origin` header) are refused unless
    /// their origin is listed here, e.g. `["http://localhost:3000"]`.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// A connection must deliver a whole request head within this long of starting to wait
    /// for one; this also closes keep-alive connections idle for that long. Default 10 s.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub header_read_timeout: Option<Duration>,
    /// The whole request body must arrive within this long. Default 30 s.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub body_read_timeout: Option<Duration>,
    /// Client connections served at once; more wait to be accepted. Default 4096.
    pub max_connections: Option<usize>,
    /// The largest request head (request line and headers) in bytes; larger ones get 431.
    /// Default 32 KiB, at least 8192.
    pub max_header_bytes: Option<usize>,
    /// `max_tokens` of a `/v1/chat/completions` request that sets neither `max_tokens` nor
    /// `max_completion_tokens` (OpenAI's API needs no limit; the Messages API does).
    /// Default 4096.
    pub default_max_tokens: Option<u64>,
}

/// [`GatewaySection::default_max_tokens`] when it is not set.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

impl GatewaySection {
    /// The chat face's default answer length in force.
    pub fn default_max_tokens(&self) -> u64 {
        self.default_max_tokens.unwrap_or(DEFAULT_MAX_TOKENS)
    }

    /// The header read timeout in force.
    pub fn header_read_timeout(&self) -> Duration {
        self.header_read_timeout
            .unwrap_or(DEFAULT_HEADER_READ_TIMEOUT)
    }

    /// The body read timeout in force.
    pub fn body_read_timeout(&self) -> Duration {
        self.body_read_timeout.unwrap_or(DEFAULT_BODY_READ_TIMEOUT)
    }

    /// The connection cap in force.
    pub fn max_connections(&self) -> usize {
        self.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS)
    }

    /// The request head limit in force.
    pub fn max_header_bytes(&self) -> usize {
        self.max_header_bytes.unwrap_or(DEFAULT_MAX_HEADER_BYTES)
    }

    /// The body limit in force.
    pub fn max_body_bytes(&self) -> u64 {
        self.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES)
    }

    /// The shutdown grace in force.
    pub fn shutdown_grace(&self) -> Duration {
        self.shutdown_grace.unwrap_or(DEFAULT_SHUTDOWN_GRACE)
    }

    /// True when some client token is configured (in the file or by variable).
    pub fn has_tokens(&self) -> bool {
        !self.tokens.is_empty() || !self.token_envs.is_empty()
    }
}
