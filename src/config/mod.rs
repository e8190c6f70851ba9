//! `seawall.toml`: the whole runtime and the gateway in one file.
//!
//! [`Config::from_toml`] / [`Config::from_file`] parse and validate; [`Config::spawn`] reads the
//! API keys from the environment, builds the transports and starts the runtime. Every error names
//! the key that is wrong and what is wrong with it, e.g.
//! `models[1].fallbacks[0]: model "x" is not declared: ...`, and never contains a secret: a
//! missing key variable is reported by its name, a bad client token by its position.
//!
//! Unknown keys are errors, so a typo never silently becomes a default. Durations are humantime
//! strings (`"250ms"`, `"30s"`, `"1m 30s"`). `examples/seawall.toml` documents every key.
//!
//! ```toml
//! listen = "127.0.0.1:8700"
//!
//! [[upstreams]]
//! name = "anthropic"
//! kind = "anthropic"
//! api_key_env = "ANTHROPIC_API_KEY"
//!
//! [[models]]
//! name = "claude-sonnet-4-5"
//! upstream = "anthropic"
//! fallbacks = ["claude-haiku-4-5"]
//!
//! [[models]]
//! name = "claude-haiku-4-5"
//! upstream = "anthropic"
//!
//! [limits.anthropic]
//! rpm = 50
//! input_tpm = 40000
//! output_tpm = 8000
//!
//! [breaker]
//! failure_rate = 50
//! window = 20          # the last 20 calls; window = "60s" is a time window
//! open_for = "30s"
//!
//! [gateway]
//! tokens = ["a-long-random-client-token"]
//! ```

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use seawall_actors::fleet::Fleet as _;
use seawall_actors::policy::invalid::Invalid;
use seawall_actors::upstream::Upstream;
use seawall_actors::{
    AlertConfig, Backoff, BreakerConfig, Bulkhead, Degrade, Error as CoreError, Estimate, Hedge,
    Jitter, JobStore, Limits, OpenBackoff, Price, ProbeConfig, ProbeKind, QueueConfig,
    RestartIntensity, RetryBudgetConfig, RetryPolicy, Seawall, SlaConfig, SlaTarget, Trip,
    WindowKind,
};

use crate::anthropic::{AnthropicOptions, AnthropicUpstream, AuthStyle, TransportSetupError};
use crate::cluster::jobs::{RedisJobStore, RedisStoreOptions};
use crate::cluster::{ClusterBuilder, RedisCluster};
use crate::openai::{OpenAiOptions, OpenAiUpstream};
use crate::secret::{ApiKey, KeyError};

/// Where the gateway listens when `listen` is not set.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8700";
/// The largest request body the gateway reads when `[gateway] max_body_bytes` is not set: 32 MiB,
/// the Messages API's own limit.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 32 * 1024 * 1024;
/// How long a shutdown waits for calls in flight when `[gateway] shutdown_grace` is not set.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// The shortest client token accepted: a token is a password for the gateway.
pub const MIN_TOKEN_CHARS: usize = 16;
/// Default `[gateway] header_read_timeout`: a connection must deliver a whole request head
/// within this long of starting to wait for one (slow clients, idle keep-alive connections).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `[gateway] body_read_timeout`: the whole request body must arrive within this.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `[gateway] max_connections`: client connections served at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Default `[gateway] max_header_bytes`: the largest request head (request line and headers).
pub const DEFAULT_MAX_HEADER_BYTES: usize = 32 * 1024;
/// The smallest `[gateway] max_header_bytes` the HTTP server accepts.
pub const MIN_HEADER_BYTES: usize = 8192;
/// `[cache] max_entries` when not set.
pub const DEFAULT_CACHE_ENTRIES: u64 = 10_000;
/// `[cache] ttl` when not set.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(600);
/// `[probes] interval` when not set: a healthy model costs one probe per interval.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(30);
/// `[probes] timeout` when not set.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// `[alerts] webhook_timeout` when not set: a slow webhook never holds up the next alert long.
pub const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(2);
/// Delivery attempts per alert before the webhook is given up on for that alert.
pub const WEBHOOK_ATTEMPTS: u32 = 3;

// ---------------------------------------------------------------------------------------------
// The file's shape

/// A whole `seawall.toml`. Build it with [`Config::from_toml`] or [`Config::from_file`], which
/// validate it; the fields are public for inspection.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the gateway listens (`IP:PORT`). Default [`DEFAULT_LISTEN`].
    #[serde(default = "default_listen", deserialize_with = "de_socket_addr")]
    pub listen: SocketAddr,
    /// The upstream APIs, in order; the first is the default for models that name none.
    #[serde(default)]
    pub upstreams: Vec<UpstreamConfig>,
    /// The models served. A request for a model walks it, then its fallbacks.
    #[serde(default)]
    pub models: Vec<ModelConfig>,
    /// Rate limits per upstream name (`[limits.<upstream>]`).
    #[serde(default)]
    pub limits: BTreeMap<String, LimitsConfig>,
    /// Breaker defaults for every model (each model may override keys in `[models.breaker]`).
    #[serde(default)]
    pub breaker: BreakerSection,
    /// Retry and deadline defaults for every chain (each model may override keys in
    /// `[models.retry]`).
    #[serde(default)]
    pub retry: RetrySection,
    /// Every model's retry budget: same-model retries bounded by a share of recent calls.
    #[serde(default)]
    pub retry_budget: RetryBudgetSection,
    /// The gateway: client tokens, body limit, shutdown grace.
    #[serde(default)]
    pub gateway: GatewaySection,
    /// Feature bulkheads (`[[bulkheads]]`); requests name their feature with the
    /// `seawall-feature` header.
    #[serde(default)]
    pub bulkheads: Vec<BulkheadConfig>,
    /// Governor settings beyond the limits.
    #[serde(default)]
    pub governor: GovernorSection,
    /// How many actor restarts the supervisor tolerates.
    #[serde(default)]
    pub supervisor: SupervisorSection,
    /// The response cache, for models whose `degrade` lists `"cache"`.
    pub cache: Option<CacheSection>,
    /// The durable queue for later, for models whose `degrade` lists `"queue"`.
    pub queue: Option<QueueSection>,
    /// Active health probes (`[probes]`): on by default for every model that heads a chain
    /// with fallbacks.
    #[serde(default)]
    pub probes: ProbeSection,
    /// The SLA window and targets (`[sla]`, `[sla.targets.<name>]`).
    #[serde(default)]
    pub sla: SlaSection,
    /// Alert thresholds and the optional webhook (`[alerts]`).
    #[serde(default)]
    pub alerts: AlertsSection,
    /// Logging: the format and whether prompts are logged (`[log]`).
    #[serde(default)]
    pub log: LogSection,
    /// The fleet: instances sharing one Redis (opt-in; without it nothing connects).
    pub cluster: Option<ClusterSection>,
}

/// `[probes]` (and `[models.probe]`): active health probes. A probed model's half-open trials
/// belong to its probes, so user calls fall back instead of being spent on a model that is
/// still down. Every key optional.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeSection {
    /// In `[probes]`: probe every model that heads a chain with fallbacks (default `true`). In
    /// `[models.probe]`: probe this model (`true`) or not (`false`), whatever the default.
    pub enabled: Option<bool>,
    /// Time between probes of a healthy model. An open breaker is probed when its open state
    /// ends, whatever the interval. Default [`DEFAULT_PROBE_INTERVAL`].
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub interval: Option<Duration>,
    /// A probe's own time budget. Default [`DEFAULT_PROBE_TIMEOUT`].
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub timeout: Option<Duration>,
    /// What a probe sends. Default `"message"`.
    pub kind: Option<ProbeKindConfig>,
}

/// What a probe sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeKindConfig {
    /// A 1-token message (`max_tokens: 1`), budgeted by the governor like any call: it
    /// exercises generation itself, so it sees an overload (529) that `count_tokens` does not.
    Message,
    /// The upstream's `count_tokens` (free, no generation; a 1-token message where the upstream
    /// has no counter). It proves the API answers, not that the model can generate: during an
    /// overload it succeeds and closes the breaker early.
    CountTokens,
}

/// `[sla]`: the window the SLA report looks over, and the target every model and chain is
/// judged against (`[sla.targets.<name>]` overrides it per model or chain). Every key optional.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlaSection {
    /// How far back the report looks. Default "60m".
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub window: Option<Duration>,
    /// Buckets the window is cut into (its resolution). Default 12.
    pub buckets: Option<u32>,
    /// The default target: lowest acceptable availability in percent, [0, 100]. Default 99.5.
    pub availability: Option<f64>,
    /// The default target: highest acceptable 99th-percentile latency of answered calls.
    /// Default "30s".
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub p99: Option<Duration>,
    /// The default target: longest acceptable run of consecutive failures in the window.
    /// Default: not judged.
    pub max_consecutive_failures: Option<u64>,
    /// The default target: outcomes the window must hold before it is judged. Default 20.
    pub min_calls: Option<u64>,
    /// Targets of single models or chains, by name; keys left out come from `[sla]`.
    #[serde(default)]
    pub targets: BTreeMap<String, SlaTargetSection>,
}

impl SlaSection {
    /// The default target's keys, as a target section.
    pub fn target(&self) -> SlaTargetSection {
        SlaTargetSection {
            availability: self.availability,
            p99: self.p99,
            max_consecutive_failures: self.max_consecutive_failures,
            min_calls: self.min_calls,
        }
    }
}

/// An SLA target's keys (in `[sla]` and `[sla.targets.<name>]`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlaTargetSection {
    /// Lowest acceptable availability in percent, [0, 100]. Default 99.5.
    pub availability: Option<f64>,
    /// Highest acceptable 99th-percentile latency of answered calls. Default "30s".
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub p99: Option<Duration>,
    /// Longest acceptable run of consecutive failures in the window. Default: not judged.
    pub max_consecutive_failures: Option<u64>,
    /// Outcomes the window must hold before the target is judged. Default 20.
    pub min_calls: Option<u64>,
}

impl SlaTargetSection {
    /// These keys over `base`.
    pub fn apply(&self, base: SlaTarget) -> SlaTarget {
        SlaTarget {
            availability: self.availability.unwrap_or(base.availability),
            p99: self.p99.unwrap_or(base.p99),
            max_consecutive_failures: self
                .max_consecutive_failures
                .or(base.max_consecutive_failures),
            min_calls: self.min_calls.unwrap_or(base.min_calls),
        }
    }
}

/// An alert threshold that may be switched off: a value, or `"off"`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Threshold<T> {
    /// Alert past this value.
    At(T),
    /// This alert is off.
    Off,
}

impl<T> Threshold<T> {
    fn value(self) -> Option<T> {
        match self {
            Threshold::At(v) => Some(v),
            Threshold::Off => None,
        }
    }
}

/// `[alerts]`: when an alert fires (each is logged as a `warn` and published to subscribers
/// once per crossing, and once when it clears), and where else it is delivered. Every key
/// optional. `Debug` never shows the webhook URL.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsSection {
    /// The window rates are judged over, at least "1s". Default "5m".
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub window: Option<Duration>,
    /// Calls the window must hold before a rate may fire. Default 20.
    pub min_calls: Option<u32>,
    /// A chain's failed calls, in percent (0, 100), above which it alerts; `"off"` disables it.
    /// Default 5.
    #[serde(default, deserialize_with = "de_opt_rate")]
    pub failure_rate: Option<Threshold<f64>>,
    /// A chain's answers served by a fallback, in percent (0, 100), above which it alerts;
    /// `"off"` disables it. Default 5.
    #[serde(default, deserialize_with = "de_opt_rate")]
    pub fallback_rate: Option<Threshold<f64>>,
    /// A model's breaker not closed for longer than this alerts; `"off"` disables it. Default
    /// "60s".
    #[serde(default, deserialize_with = "de_opt_limit")]
    pub breaker_open_for: Option<Threshold<Duration>>,
    /// POST every alert (firing and cleared) as JSON to this http(s) URL. Optional. The URL is
    /// treated as a secret (chat webhooks carry their token in the path): never logged whole.
    pub webhook_url: Option<String>,
    /// The environment variable holding the webhook URL (instead of `webhook_url`).
    pub webhook_url_env: Option<String>,
    /// Time allowed to one delivery attempt. Default [`DEFAULT_WEBHOOK_TIMEOUT`].
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub webhook_timeout: Option<Duration>,
}

impl fmt::Debug for AlertsSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlertsSection")
            .field("window", &self.window)
            .field("min_calls", &self.min_calls)
            .field("failure_rate", &self.failure_rate)
            .field("fallback_rate", &self.fallback_rate)
            .field("breaker_open_for", &self.breaker_open_for)
            .field(
                "webhook_url",
                &self.webhook_url.as_ref().map(|_| "<redacted>"),
            )
            .field("webhook_url_env", &self.webhook_url_env)
            .field("webhook_timeout", &self.webhook_timeout)
            .finish()
    }
}

/// `[cluster]`: several seawall instances share one Redis and behave like one fleet. The queue
/// (when `[queue]` is set) lives in Redis: any instance accepts a job and answers for it, one
/// replays it, and a dead instance's jobs are taken over.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// `redis://[:PASSWORD@]HOST[:PORT][/DB]` (`rediss://` for TLS). Shown only redacted.
    pub redis_url: String,
    /// The fleet's name: instances with the same name share state. Letters, digits, `_`, `-`.
    pub name: String,
}

impl fmt::Debug for ClusterSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterSection")
            .field("redis_url", &crate::cluster::conn::redact(&self.redis_url))
            .field("name", &self.name)
            .finish()
    }
}

impl AlertsSection {
    /// The runtime's alert thresholds: these keys over [`AlertConfig::default`].
    pub fn to_config(&self) -> AlertConfig {
        let d = AlertConfig::default();
        AlertConfig {
            window: self.window.unwrap_or(d.window),
            min_calls: self.min_calls.unwrap_or(d.min_calls),
            failure_rate: self.failure_rate.map_or(d.failure_rate, Threshold::value),
            fallback_rate: self.fallback_rate.map_or(d.fallback_rate, Threshold::value),
            breaker_open_for: self
                .breaker_open_for
                .map_or(d.breaker_open_for, Threshold::value),
        }
    }

    /// The webhook's time budget per attempt in force.
    pub fn webhook_timeout(&self) -> Duration {
        self.webhook_timeout.unwrap_or(DEFAULT_WEBHOOK_TIMEOUT)
    }
}

/// How log lines are written (stderr).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One human-readable line per event: time, level, target, message, fields (the default).
    #[default]
    Pretty,
    /// Shorter human-readable lines.
    Compact,
    /// One JSON object per line; an event's fields (the per-call line's `chain`, `model`,
    /// `status`, `latency_ms`, ...) are top-level keys beside `timestamp`, `level`, `target`
    /// and `message`.
    Json,
}

impl LogFormat {
    /// The names accepted by `--log-format`, `SEAWALL_LOG_FORMAT` and `[log] format`.
    pub const NAMES: &'static str = "json, pretty or compact";
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "pretty" => Ok(LogFormat::Pretty),
            "compact" => Ok(LogFormat::Compact),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!(
                "{s:?} is not a log format: use {}",
                LogFormat::NAMES
            )),
        }
    }
}

/// `[log]`. Every key optional.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// `"pretty"` (default), `"compact"` or `"json"`. `--log-format` and `SEAWALL_LOG_FORMAT`
    /// win over it.
    pub format: Option<LogFormat>,
    /// Put each call's conversation (system prompt and messages) in its log line. Default
    /// `false`: prompts may hold personal data, and logs travel further than answers.
    pub prompts: Option<bool>,
}

impl ClusterSection {
    fn validate(&self) -> Result<(), ConfigError> {
        use crate::cluster::conn::{check_fleet_name, check_url, redact};
        check_url(&self.redis_url).map_err(|problem| {
            invalid(
                "cluster.redis_url",
                format!("{} {problem}", redact(&self.redis_url)),
            )
        })?;
        check_fleet_name(&self.name).map_err(|e| invalid("cluster.name", e.to_string()))
    }
}

/// `[cache]`: a bounded in-memory cache of live answers, served only as degradation.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSection {
    /// At most this many answers. Default 10000.
    pub max_entries: Option<u64>,
    /// Each kept this long. Default "10m".
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub ttl: Option<Duration>,
}

/// `[queue]`: calls no model can answer are stored and answered with a job id: in a redb file,
/// or in the fleet's Redis with `[cluster]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSection {
    /// The store file (created if missing; its directory must exist). Required without
    /// `[cluster]`; refused with it (the fleet's jobs live in Redis).
    pub path: Option<PathBuf>,
    /// A job not answered within this long expires. Default "1h".
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub ttl: Option<Duration>,
    /// How often pending jobs are looked at. Default "1s".
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub poll: Option<Duration>,
    /// Replays in flight at once. Default 2.
    pub concurrency: Option<usize>,
    /// The deadline of one replay. Default: the chain's own deadline.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub run_timeout: Option<Duration>,
    /// Finished jobs stay retrievable this long. Default "24h".
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub keep_finished: Option<Duration>,
    /// At most this many jobs pending; past it calls are not queued. Default 10000.
    pub max_pending: Option<usize>,
}

impl QueueSection {
    /// The queue's settings, defaults filled in.
    pub fn to_config(&self) -> QueueConfig {
        let d = QueueConfig::default();
        QueueConfig {
            ttl: self.ttl.unwrap_or(d.ttl),
            poll: self.poll.unwrap_or(d.poll),
            concurrency: self.concurrency.unwrap_or(d.concurrency),
            run_timeout: self.run_timeout.or(d.run_timeout),
            keep_finished: self.keep_finished.unwrap_or(d.keep_finished),
            max_pending: self.max_pending.unwrap_or(d.max_pending),
        }
    }
}

/// One `degrade` entry of a model: what its chain answers with when no model can.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DegradeKind {
    /// The last live answer to the same request, from `[cache]` (its defaults when the
    /// section is left out).
    Cache,
    /// The model's `static_answer`.
    Static,
    /// Store the call for later and answer with a job id (needs `[queue]`).
    Queue,
}

/// Which API an upstream speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamKind {
    /// The Anthropic Messages API.
    #[default]
    Anthropic,
    /// An OpenAI-compatible chat completions API (requests are translated).
    Openai,
}

/// How an Anthropic upstream sends its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum AuthHeader {
    /// `x-api-key: KEY` (the default).
    #[serde(rename = "x-api-key")]
    XApiKey,
    /// `Authorization: Bearer KEY`.
    #[serde(rename = "bearer")]
    Bearer,
}

/// One `[[upstreams]]` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The name models and limits refer to.
    pub name: String,
    /// `"anthropic"` (default) or `"openai"`.
    #[serde(default)]
    pub kind: UpstreamKind,
    /// Scheme, host and optional path prefix. Default: the provider's public API.
    pub base_url: Option<String>,
    /// The environment variable holding the API key.
    pub api_key_env: Option<String>,
    /// The environment variables of a key pool (instead of `api_key_env`).
    #[serde(default)]
    pub api_key_envs: Vec<String>,
    /// `anthropic-version` sent upstream (anthropic only). Default `2023-06-01`.
    pub version: Option<String>,
    /// `anthropic-beta` sent upstream (anthropic only), a comma-separated list.
    pub beta: Option<String>,
    /// How the key is sent (anthropic only): `"x-api-key"` (default) or `"bearer"`.
    pub auth: Option<AuthHeader>,
    /// `OpenAI-Organization` sent upstream (openai only).
    pub organization: Option<String>,
    /// Time allowed to connect. Default 5 s.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub connect_timeout: Option<Duration>,
    /// How long an idle pooled connection is kept. Default 90 s.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub pool_idle_timeout: Option<Duration>,
    /// The organization of each key, one label per key: keys of one organization share
    /// buckets. Default: all keys are one organization.
    pub key_organizations: Option<Vec<String>>,
}

/// One `[[models]]` entry: a model, and the chain a request for it walks.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The model name, as requests and the upstream spell it.
    pub name: String,
    /// The upstream serving it. Default: the first `[[upstreams]]` entry.
    pub upstream: Option<String>,
    /// Models tried after this one, in order; each must be declared. An entry is a model name,
    /// or a hop that patches the request: `{ model = "...", patch = { max_tokens = 512 },
    /// remove = ["thinking"] }` (TOML has no null: `remove` lists the fields to drop).
    #[serde(default)]
    pub fallbacks: Vec<FallbackEntry>,
    /// The model class (a key of `[limits.<upstream>.classes]`): its own buckets.
    pub class: Option<String>,
    /// Breaker keys overriding `[breaker]` for this model.
    pub breaker: Option<BreakerSection>,
    /// Retry keys overriding `[retry]` for requests for this model (its whole chain).
    pub retry: Option<RetrySection>,
    /// What the chain answers with, in order, when no model of it can: `"cache"`, `"static"`,
    /// `"queue"`. Default: nothing (the honest error with a retry-after).
    #[serde(default)]
    pub degrade: Vec<DegradeKind>,
    /// The text of the `"static"` degradation.
    pub static_answer: Option<String>,
    /// Probe keys for this model, over `[probes]`; `enabled` turns its probes on or off.
    pub probe: Option<ProbeSection>,
    /// The model's price, for the cost metric and the call log line. Default: costs nothing.
    pub price: Option<PriceConfig>,
}

/// `price = { input_per_mtok = 3.0, output_per_mtok = 15.0 }`: USD per million tokens.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceConfig {
    /// USD per million input tokens.
    pub input_per_mtok: f64,
    /// USD per million output tokens.
    pub output_per_mtok: f64,
}

impl PriceConfig {
    /// The runtime's price type.
    pub fn to_price(self) -> Price {
        Price {
            input_per_mtok: self.input_per_mtok,
            output_per_mtok: self.output_per_mtok,
        }
    }
}

/// One `fallbacks` entry: a model name (the shorthand), or a patched hop.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum FallbackEntry {
    /// `"claude-haiku-4-5"`: the request as is.
    Model(String),
    /// `{ model = "...", patch = {...}, remove = [...] }`.
    Hop(HopConfig),
}

/// A fallback hop that patches the original request (hops never compound).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HopConfig {
    /// The model of this hop.
    pub model: String,
    /// Fields to set (override) in the request.
    #[serde(default)]
    pub patch: serde_json::Map<String, serde_json::Value>,
    /// Fields to remove from the request.
    #[serde(default)]
    pub remove: Vec<String>,
}

impl FallbackEntry {
    /// The model of this entry.
    pub fn model(&self) -> &str {
        match self {
            FallbackEntry::Model(m) => m,
            FallbackEntry::Hop(h) => &h.model,
        }
    }

    /// The hop for the runtime: the model, and the patch with removals as `null`.
    pub fn hop(&self) -> seawall_actors::HopSpec {
        match self {
            FallbackEntry::Model(m) => seawall_actors::HopSpec::model(m),
            FallbackEntry::Hop(h) if h.patch.is_empty() && h.remove.is_empty() => {
                seawall_actors::HopSpec::model(&h.model)
            }
            FallbackEntry::Hop(h) => {
                let mut patch = h.patch.clone();
                for field in &h.remove {
                    patch.insert(field.clone(), serde_json::Value::Null);
                }
                seawall_actors::HopSpec::model(&h.model).patch(serde_json::Value::Object(patch))
            }
        }
    }

    fn patched(&self) -> bool {
        matches!(self, FallbackEntry::Hop(h) if !h.patch.is_empty() || !h.remove.is_empty())
    }
}

/// Per-minute limits: `rpm`, `input_tpm`, `output_tpm`; a key left out is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    /// Requests per minute.
    pub rpm: Option<u64>,
    /// Input tokens per minute (cache reads excluded, as the API counts them).
    pub input_tpm: Option<u64>,
    /// Output tokens per minute.
    pub output_tpm: Option<u64>,
}

impl RateLimits {
    /// The runtime's limits type.
    pub fn to_limits(self) -> Limits {
        Limits {
            requests_per_minute: self.rpm,
            input_tokens_per_minute: self.input_tpm,
            output_tokens_per_minute: self.output_tpm,
        }
    }
}

/// `[limits.<upstream>]`: the organization's limits, and those of model classes.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Requests per minute.
    pub rpm: Option<u64>,
    /// Input tokens per minute.
    pub input_tpm: Option<u64>,
    /// Output tokens per minute.
    pub output_tpm: Option<u64>,
    /// Limits of model classes (`[limits.<upstream>.classes.<class>]`), separate buckets for
    /// the models whose `class` names them.
    #[serde(default)]
    pub classes: BTreeMap<String, RateLimits>,
}

impl LimitsConfig {
    /// The organization-wide limits.
    pub fn to_limits(&self) -> Limits {
        RateLimits {
            rpm: self.rpm,
            input_tpm: self.input_tpm,
            output_tpm: self.output_tpm,
        }
        .to_limits()
    }
}

/// `[breaker]` (and `[models.breaker]`): every key optional; what is left out keeps the
/// default (or, for a model, the `[breaker]` value).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerSection {
    /// `window = 20`: the last 20 calls; `window = "60s"`: the calls of the last 60 s.
    #[serde(default, deserialize_with = "de_window")]
    pub window: Option<WindowKind>,
    /// Percent of failed calls in the window that opens the breaker (0, 100].
    pub failure_rate: Option<f64>,
    /// Percent of slow calls in the window that opens the breaker (0, 100].
    pub slow_call_rate: Option<f64>,
    /// A call longer than this is slow.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub slow_call_duration: Option<Duration>,
    /// No rate decision before the window holds this many calls.
    pub min_calls: Option<u32>,
    /// How long the breaker stays open.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub open_for: Option<Duration>,
    /// Trial calls let through when half-open.
    pub half_open_calls: Option<u32>,
    /// Half-open longer than this without a decision opens again.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub max_wait_in_half_open: Option<Duration>,
    /// Growth of `open_for` on consecutive re-opens.
    pub open_backoff: Option<OpenBackoffConfig>,
    /// Trip on this many failures in a row instead of on rates.
    pub consecutive_failures: Option<u32>,
    /// Whether a 429 counts as a health failure (default false: it is a budget signal).
    pub rate_limit_is_failure: Option<bool>,
}

/// `open_backoff = { multiplier = 2.0, max = "5m" }`.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenBackoffConfig {
    /// Factor per consecutive re-open (at least 1).
    pub multiplier: f64,
    /// The open duration never exceeds this.
    #[serde(deserialize_with = "de_duration")]
    pub max: Duration,
}

/// `[retry]` (and `[models.retry]`): deadlines and retries of a call. Every key optional.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySection {
    /// Total time of a call across every attempt and hop (a client's `x-stainless-timeout`
    /// overrides it).
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub deadline: Option<Duration>,
    /// Longest single attempt.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub attempt_timeout: Option<Duration>,
    /// Streaming: longest wait from an attempt's start to its first content event (until then
    /// the call may still fall back).
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub first_token_timeout: Option<Duration>,
    /// Move to the next model when one answers `stop_reason: "refusal"`.
    pub refusal_fallback: Option<bool>,
    /// No attempt starts with less than this left before the deadline.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub min_attempt: Option<Duration>,
    /// Upstream attempts per call, across all hops.
    pub max_attempts: Option<u32>,
    /// `"heuristic"` (default) or `"count_tokens"` (ask the provider once per call).
    pub estimate: Option<EstimateKind>,
    /// When to hedge an attempt that has not answered: `"auto"` (default: chains with a
    /// fallback, after the model's learned latency for the request), `"off"`, or a duration.
    #[serde(default, deserialize_with = "de_opt_hedge")]
    pub hedge_after: Option<Hedge>,
    /// Hedge streams too, before their first content event. Default false.
    pub hedge_streams: Option<bool>,
    /// Hedges per call at most (0: never). Default 1.
    pub max_hedges: Option<u32>,
    /// Streams, after content: the longest silence between events before the stream ends with
    /// an `error` event. Default "30s".
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub idle_timeout: Option<Duration>,
    /// Cut a unary attempt at what the request should take, learned from the model's recent
    /// answers (`attempt_timeout` stays the cap). Default true.
    pub learned_timeouts: Option<bool>,
    /// Delays between attempts on one model.
    pub backoff: Option<BackoffSection>,
}

/// `[retry_budget]`: same-model retries at most `ratio` x first attempts in `window`, plus
/// `min_per_sec` x window seconds, so an outage cannot multiply the load. Every key optional.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudgetSection {
    /// Retries allowed per first attempt (0.2: one retry per five calls). Default 0.2.
    pub ratio: Option<f64>,
    /// The sliding window, at least 1 s. Default 10 s.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub window: Option<Duration>,
    /// Retries always allowed per second of window. Default 1.
    pub min_per_sec: Option<f64>,
}

impl RetryBudgetSection {
    /// These keys over the runtime's defaults.
    pub fn to_config(&self) -> RetryBudgetConfig {
        let d = RetryBudgetConfig::default();
        RetryBudgetConfig {
            ratio: self.ratio.unwrap_or(d.ratio),
            window: self.window.unwrap_or(d.window),
            min_per_sec: self.min_per_sec.unwrap_or(d.min_per_sec),
        }
    }
}

/// How input tokens are estimated before budget is reserved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EstimateKind {
    /// About four bytes of JSON per token.
    Heuristic,
    /// The provider's `count_tokens`, once per call.
    CountTokens,
}

/// How a backoff delay is randomised.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JitterKind {
    /// Uniform in `[0, d]`.
    Full,
    /// `d x (1 - 0.25 x r)`, the official SDK's.
    Sdk,
    /// Exactly `d`.
    None,
}

/// `[retry.backoff]`.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffSection {
    /// Delay before the first retry.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub base: Option<Duration>,
    /// Largest computed delay (a server's `retry-after` is not capped).
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub cap: Option<Duration>,
    /// Attempts per model, including the first.
    pub attempts: Option<u32>,
    /// `"full"` (default), `"sdk"` or `"none"`.
    pub jitter: Option<JitterKind>,
}

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
}

impl GatewaySection {
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

/// `[[bulkheads]]`: a feature's share of the runtime.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkheadConfig {
    /// The feature, as requests name it in the `seawall-feature` header.
    pub name: String,
    /// At most this many of its calls in flight.
    pub max_concurrent: Option<u32>,
    /// At most this share (0, 1] of every bucket.
    pub budget_share: Option<f64>,
}

/// `[governor]`.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GovernorSection {
    /// Share [0, 1) of every bucket that background calls (`seawall-lane: background`) may not
    /// use. Default 0.
    pub interactive_reserve: Option<f64>,
    /// How far behind ours the upstream's refill may run (transit time of a call); default
    /// 250ms. See `Builder::transit_allowance`.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub transit_allowance: Option<Duration>,
}

/// `[supervisor]`.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisorSection {
    /// Restarts tolerated within `within` before the runtime gives up. Default 10.
    pub max_restarts: Option<u32>,
    /// The restart window. Default 10 s.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub within: Option<Duration>,
}

/// A client token of the gateway. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct ClientToken(String);

impl ClientToken {
    /// Wrap a token (checked by [`Config`] validation, not here).
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// The secret, for comparison with what a client presents.
    pub fn expose(&self) -> &str {
        &self.0
    }

    fn problem(&self) -> Option<String> {
        let t = &self.0;
        if t.chars().any(|c| !c.is_ascii_graphic()) {
            return Some(
                "a client token must be visible ASCII without whitespace (it is sent in an \
                 HTTP header)"
                    .into(),
            );
        }
        if t.chars().count() < MIN_TOKEN_CHARS {
            return Some(format!(
                "a client token must have at least {MIN_TOKEN_CHARS} characters (it is the \
                 gateway's password): generate one, e.g. `openssl rand -hex 24`"
            ));
        }
        None
    }
}

impl fmt::Debug for ClientToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientToken(<redacted>)")
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

/// Why a configuration cannot be used. Every variant names the key; none contains a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {message}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        message: String,
    },
    /// Not valid TOML, a value of the wrong type, or an unknown key.
    #[error("{}", parse_message(key, line, message))]
    Parse {
        /// The key path where it went wrong (`"."` for the document itself).
        key: String,
        /// 1-based line and column, when known.
        line: Option<(usize, usize)>,
        /// What the parser said.
        message: String,
    },
    /// A value that parsed but cannot be used.
    #[error("{key}: {problem}")]
    Invalid {
        /// The key path, e.g. `models[1].fallbacks[0]`.
        key: String,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// The gateway would listen beyond loopback without client tokens: anyone who reaches it
    /// would spend the upstream keys.
    #[error(
        "listen: {listen} is not a loopback address and [gateway] has no tokens: anyone who can \
         reach it would spend your API keys. Add tokens = [\"...\"] (or token_envs = [\"VAR\"]) \
         under [gateway], or listen on 127.0.0.1"
    )]
    Unauthenticated {
        /// The configured address.
        listen: SocketAddr,
    },
    /// The runtime refused the configuration (a check this module does not repeat).
    #[error("the runtime refused the configuration: {0}")]
    Runtime(String),
}

impl ConfigError {
    /// The key path the error is about, if it is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Parse { key, .. } | ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::Unauthenticated { .. } => Some("listen"),
            ConfigError::Read { .. } | ConfigError::Runtime(_) => None,
        }
    }
}

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

fn parse_message(key: &str, line: &Option<(usize, usize)>, message: &str) -> String {
    let mut out = String::from("config TOML");
    if let Some((l, c)) = line {
        out.push_str(&format!(" (line {l}, column {c})"));
    }
    out.push_str(": ");
    if key != "." && !key.is_empty() {
        out.push_str(key);
        out.push_str(": ");
    }
    out.push_str(message);
    out
}

// ---------------------------------------------------------------------------------------------
// Parsing and validation

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8700))
}

impl Config {
    /// Parse and validate a TOML configuration. Key variables are not read here: see
    /// [`Config::spawn`].
    ///
    /// # Errors
    ///
    /// [`ConfigError::Parse`] for bad TOML, wrong types and unknown keys;
    /// [`ConfigError::Invalid`] for unusable values; [`ConfigError::Unauthenticated`] for a
    /// non-loopback `listen` without client tokens.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Config = crate::toml_keyed::parse(text).map_err(|p| {
            // Name the unknown key itself, not only the table it is in.
            let key = match unknown_field(&p.message) {
                Some(field) if p.key == "." || p.key.is_empty() => field.to_owned(),
                Some(field) if p.key != field && !p.key.ends_with(&format!(".{field}")) => {
                    format!("{}.{field}", p.key)
                }
                _ => p.key,
            };
            ConfigError::Parse {
                key,
                line: p.line,
                message: p.message,
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Read, parse and validate a TOML file.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Read`] when the file cannot be read, else as [`Config::from_toml`].
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        Self::from_toml(&text)
    }

    /// Check everything that can be checked without the environment.
    ///
    /// # Errors
    ///
    /// The first problem found, naming its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_upstreams()?;
        self.validate_limits()?;
        self.breaker_defaults()
            .validate()
            .map_err(|e| field_error("breaker", e, |_| true))?;
        self.retry_defaults()
            .validate()
            .map_err(|e| field_error("retry", e, |_| true))?;
        self.validate_models()?;
        self.validate_degradation()?;
        let budget = &self.retry_budget;
        for (key, v) in [("ratio", budget.ratio), ("min_per_sec", budget.min_per_sec)] {
            if v.is_some_and(|v| !(v >= 0.0 && v.is_finite())) {
                return Err(invalid(
                    format!("retry_budget.{key}"),
                    format!("must be a number >= 0, got {}", v.unwrap_or_default()),
                ));
            }
        }
        if budget.window.is_some_and(|w| w < Duration::from_secs(1)) {
            return Err(invalid("retry_budget.window", "must be at least 1s"));
        }
        self.validate_rest()?;
        self.validate_observability()?;
        if !self.gateway.has_tokens() && !self.listen.ip().is_loopback() {
            return Err(ConfigError::Unauthenticated {
                listen: self.listen,
            });
        }
        Ok(())
    }

    fn validate_upstreams(&self) -> Result<(), ConfigError> {
        if self.upstreams.is_empty() {
            return Err(invalid(
                "upstreams",
                "no upstream is declared: add an [[upstreams]] entry with name, kind and \
                 api_key_env",
            ));
        }
        let mut names = HashSet::new();
        for (i, u) in self.upstreams.iter().enumerate() {
            let at = |k: &str| format!("upstreams[{i}].{k}");
            if u.name.is_empty() {
                return Err(invalid(at("name"), "must not be empty"));
            }
            if !names.insert(u.name.as_str()) {
                return Err(invalid(
                    at("name"),
                    format!("upstream {:?} is declared twice", u.name),
                ));
            }
            match (&u.api_key_env, u.api_key_envs.is_empty()) {
                (Some(_), false) => {
                    return Err(invalid(
                        at("api_key_envs"),
                        "set either api_key_env (one key) or api_key_envs (a pool), not both",
                    ))
                }
                (None, true) => {
                    return Err(invalid(
                        at("api_key_env"),
                        "missing: name the environment variable holding the API key \
                         (api_key_env = \"ANTHROPIC_API_KEY\"), or a pool with \
                         api_key_envs = [...]",
                    ))
                }
                _ => {}
            }
            for (key, var) in self.key_vars(i) {
                if let Some(problem) = env_name_problem(var) {
                    return Err(invalid(key, problem));
                }
            }
            if let Some(orgs) = &u.key_organizations {
                let keys = self.key_vars(i).len();
                if orgs.len() != keys {
                    return Err(invalid(
                        at("key_organizations"),
                        format!(
                            "{} labels for {keys} key(s): give one label per key",
                            orgs.len()
                        ),
                    ));
                }
            }
            let only = |set: bool, key: &str, kind: &str| {
                if set {
                    Err(invalid(
                        at(key),
                        format!("only applies to upstreams of kind = \"{kind}\""),
                    ))
                } else {
                    Ok(())
                }
            };
            match u.kind {
                UpstreamKind::Anthropic => {
                    only(u.organization.is_some(), "organization", "openai")?
                }
                UpstreamKind::Openai => {
                    only(u.version.is_some(), "version", "anthropic")?;
                    only(u.beta.is_some(), "beta", "anthropic")?;
                    only(u.auth.is_some(), "auth", "anthropic")?;
                }
            }
            for (key, d) in [
                ("connect_timeout", u.connect_timeout),
                ("pool_idle_timeout", u.pool_idle_timeout),
            ] {
                if d.is_some_and(|d| d.is_zero()) {
                    return Err(invalid(at(key), "must be longer than zero"));
                }
            }
            if let Some(url) = &u.base_url {
                if let Some(problem) = base_url_problem(url) {
                    return Err(invalid(at("base_url"), problem));
                }
            }
        }
        Ok(())
    }

    fn validate_limits(&self) -> Result<(), ConfigError> {
        for (name, l) in &self.limits {
            let at = |k: &str| format!("limits.{name}.{k}");
            if !self.upstreams.iter().any(|u| &u.name == name) {
                return Err(invalid(
                    format!("limits.{name}"),
                    format!("upstream {name:?} is not declared in [[upstreams]]"),
                ));
            }
            let check = |prefix: &dyn Fn(&str) -> String, r: RateLimits| {
                for (k, v) in [
                    ("rpm", r.rpm),
                    ("input_tpm", r.input_tpm),
                    ("output_tpm", r.output_tpm),
                ] {
                    if v == Some(0) {
                        return Err(invalid(
                            prefix(k),
                            "must be at least 1 (leave the key out for no limit)",
                        ));
                    }
                }
                Ok(())
            };
            check(
                &at,
                RateLimits {
                    rpm: l.rpm,
                    input_tpm: l.input_tpm,
                    output_tpm: l.output_tpm,
                },
            )?;
            for (class, r) in &l.classes {
                check(&|k: &str| format!("limits.{name}.classes.{class}.{k}"), *r)?;
            }
        }
        Ok(())
    }

    fn validate_degradation(&self) -> Result<(), ConfigError> {
        if let Some(c) = &self.cache {
            if c.max_entries == Some(0) {
                return Err(invalid("cache.max_entries", "must be at least 1"));
            }
            if c.ttl.is_some_and(|d| d.is_zero()) {
                return Err(invalid("cache.ttl", "must be longer than zero"));
            }
        }
        if let Some(c) = &self.cluster {
            c.validate()?;
        }
        if let Some(q) = &self.queue {
            match (&q.path, &self.cluster) {
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        "queue.path",
                        "with [cluster] the queue lives in the fleet's Redis: remove path (or \
                         remove [cluster] to keep jobs in this file)",
                    ))
                }
                (None, None) => {
                    return Err(invalid(
                        "queue.path",
                        "is required: name the store file, e.g. \"seawall-jobs.redb\" (or add \
                         [cluster] to keep jobs in the fleet's Redis)",
                    ))
                }
                (Some(p), None) if p.as_os_str().is_empty() => {
                    return Err(invalid(
                        "queue.path",
                        "must name the store file, e.g. \"seawall-jobs.redb\"",
                    ));
                }
                _ => {}
            }
            for (key, d) in [
                ("ttl", q.ttl),
                ("poll", q.poll),
                ("run_timeout", q.run_timeout),
            ] {
                if d.is_some_and(|d| d.is_zero()) {
                    return Err(invalid(format!("queue.{key}"), "must be longer than zero"));
                }
            }
            if q.concurrency == Some(0) {
                return Err(invalid("queue.concurrency", "must be at least 1"));
            }
            if q.max_pending == Some(0) {
                return Err(invalid("queue.max_pending", "must be at least 1"));
            }
        }
        for (i, m) in self.models.iter().enumerate() {
            let mut seen = HashSet::new();
            for (j, d) in m.degrade.iter().enumerate() {
                let key = format!("models[{i}].degrade[{j}]");
                if !seen.insert(*d) {
                    return Err(invalid(key, format!("{d:?} is listed twice")));
                }
                match d {
                    DegradeKind::Queue if self.queue.is_none() => {
                        return Err(invalid(
                            key,
                            "\"queue\" needs a [queue] section with path = \"<file>.redb\" \
                             (or [cluster] for the fleet's queue in Redis)",
                        ));
                    }
                    DegradeKind::Static if m.static_answer.as_deref().is_none_or(str::is_empty) => {
                        return Err(invalid(
                            format!("models[{i}].static_answer"),
                            "\"static\" is listed in degrade: set the text to answer with",
                        ));
                    }
                    _ => {}
                }
            }
            if m.static_answer.is_some() && !seen.contains(&DegradeKind::Static) {
                return Err(invalid(
                    format!("models[{i}].static_answer"),
                    "is set but degrade does not list \"static\": add it where it should apply",
                ));
            }
        }
        Ok(())
    }

    fn validate_models(&self) -> Result<(), ConfigError> {
        if self.models.is_empty() {
            return Err(invalid(
                "models",
                "no model is declared: add a [[models]] entry with name and upstream",
            ));
        }
        let declared: HashSet<&str> = self.models.iter().map(|m| m.name.as_str()).collect();
        let mut seen = HashSet::new();
        for (i, m) in self.models.iter().enumerate() {
            let at = |k: &str| format!("models[{i}].{k}");
            if m.name.is_empty() {
                return Err(invalid(at("name"), "must not be empty"));
            }
            if !seen.insert(m.name.as_str()) {
                return Err(invalid(
                    at("name"),
                    format!("model {:?} is declared twice", m.name),
                ));
            }
            if let Some(u) = &m.upstream {
                if !self.upstreams.iter().any(|x| &x.name == u) {
                    return Err(invalid(
                        at("upstream"),
                        format!("upstream {u:?} is not declared in [[upstreams]]"),
                    ));
                }
            }
            let mut hops = HashSet::from([m.name.as_str()]);
            for (j, entry) in m.fallbacks.iter().enumerate() {
                let key = format!("models[{i}].fallbacks[{j}]");
                let f = entry.model();
                if let FallbackEntry::Hop(h) = entry {
                    if h.patch.contains_key("model") {
                        return Err(invalid(
                            format!("{key}.patch.model"),
                            "a hop's patch may not set `model`: set the hop's `model` instead",
                        ));
                    }
                }
                if !declared.contains(f) {
                    return Err(invalid(
                        key,
                        format!("model {f:?} is not declared: add a [[models]] entry named {f:?}"),
                    ));
                }
                // The same model twice only makes sense with a patched request.
                if !hops.insert(f) && !entry.patched() {
                    return Err(invalid(
                        key,
                        format!("model {f:?} appears twice in the chain of {:?}", m.name),
                    ));
                }
            }
            if let Some(class) = &m.class {
                let upstream = self.upstream_of(m);
                let known = self
                    .limits
                    .get(upstream)
                    .is_some_and(|l| l.classes.contains_key(class));
                if !known {
                    return Err(invalid(
                        at("class"),
                        format!(
                            "class {class:?} is not declared: add [limits.{upstream}.classes.{class}]"
                        ),
                    ));
                }
            }
            if let Some(b) = &m.breaker {
                let prefix = format!("models[{i}].breaker");
                self.breaker_for(m)
                    .validate()
                    .map_err(|e| field_error(&prefix, e, |f| b.sets(f)))?;
            }
            if let Some(r) = &m.retry {
                let prefix = format!("models[{i}].retry");
                self.retry_for(m)
                    .validate()
                    .map_err(|e| field_error(&prefix, e, |f| r.sets(f)))?;
            }
        }
        Ok(())
    }

    fn validate_rest(&self) -> Result<(), ConfigError> {
        let mut features = HashSet::new();
        for (i, b) in self.bulkheads.iter().enumerate() {
            let at = |k: &str| format!("bulkheads[{i}].{k}");
            if b.name.is_empty() {
                return Err(invalid(at("name"), "must not be empty"));
            }
            if !features.insert(b.name.as_str()) {
                return Err(invalid(
                    at("name"),
                    format!("bulkhead {:?} is declared twice", b.name),
                ));
            }
            if b.max_concurrent == Some(0) {
                return Err(invalid(at("max_concurrent"), "must be at least 1"));
            }
            if let Some(s) = b.budget_share {
                if !(s > 0.0 && s <= 1.0) {
                    return Err(invalid(
                        at("budget_share"),
                        format!("must be in (0, 1], got {s}"),
                    ));
                }
            }
        }
        if let Some(r) = self.governor.interactive_reserve {
            if !(0.0..1.0).contains(&r) {
                return Err(invalid(
                    "governor.interactive_reserve",
                    format!("must be in [0, 1), got {r}"),
                ));
            }
        }
        if self.supervisor.within.is_some_and(|d| d.is_zero()) {
            return Err(invalid("supervisor.within", "must be longer than zero"));
        }
        for (i, t) in self.gateway.tokens.iter().enumerate() {
            if let Some(problem) = t.problem() {
                return Err(invalid(format!("gateway.tokens[{i}]"), problem));
            }
        }
        for (i, var) in self.gateway.token_envs.iter().enumerate() {
            if let Some(problem) = env_name_problem(var) {
                return Err(invalid(format!("gateway.token_envs[{i}]"), problem));
            }
        }
        if self.gateway.max_body_bytes == Some(0) {
            return Err(invalid("gateway.max_body_bytes", "must be at least 1"));
        }
        let g = &self.gateway;
        for (key, value) in [
            ("gateway.idempotency_max_entries", g.idempotency_max_entries),
            (
                "gateway.idempotency_max_per_client",
                g.idempotency_max_per_client,
            ),
            ("gateway.max_pins", g.max_pins),
            ("gateway.max_pins_per_client", g.max_pins_per_client),
            ("gateway.max_connections", g.max_connections),
        ] {
            if value == Some(0) {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        for (key, value) in [
            ("gateway.header_read_timeout", g.header_read_timeout),
            ("gateway.body_read_timeout", g.body_read_timeout),
            ("gateway.idempotency_ttl", g.idempotency_ttl),
        ] {
            if value.is_some_and(|d| d.is_zero()) {
                return Err(invalid(key, "must be longer than zero"));
            }
        }
        if g.max_header_bytes.is_some_and(|n| n < MIN_HEADER_BYTES) {
            return Err(invalid(
                "gateway.max_header_bytes",
                format!("must be at least {MIN_HEADER_BYTES} (the HTTP server's smallest buffer)"),
            ));
        }
        for (i, origin) in g.allowed_origins.iter().enumerate() {
            if let Some(problem) = origin_problem(origin) {
                return Err(invalid(format!("gateway.allowed_origins[{i}]"), problem));
            }
        }
        Ok(())
    }

    fn validate_observability(&self) -> Result<(), ConfigError> {
        check_probe(&self.probes, "probes")?;
        for (i, m) in self.models.iter().enumerate() {
            let at = |k: &str| format!("models[{i}].{k}");
            if let Some(p) = &m.probe {
                check_probe(p, &at("probe"))?;
                let tuned = p.interval.is_some() || p.timeout.is_some() || p.kind.is_some();
                if tuned && self.probe_for(m).is_none() {
                    return Err(invalid(
                        at("probe"),
                        format!(
                            "sets probe keys but {:?} is not probed ({}): add enabled = true",
                            m.name,
                            if m.probe.and_then(|p| p.enabled) == Some(false) {
                                "enabled = false"
                            } else if m.fallbacks.is_empty() {
                                "probes are on by default only for models with fallbacks"
                            } else {
                                "[probes] enabled = false"
                            }
                        ),
                    ));
                }
            }
            if let Some(price) = m.price {
                for (k, v) in [
                    ("input_per_mtok", price.input_per_mtok),
                    ("output_per_mtok", price.output_per_mtok),
                ] {
                    // Written so that NaN fails too.
                    if !(v >= 0.0 && v.is_finite()) {
                        return Err(invalid(
                            at(&format!("price.{k}")),
                            format!("must be a price in USD per million tokens >= 0, got {v}"),
                        ));
                    }
                }
            }
        }
        let sla = &self.sla;
        if sla.window.is_some_and(|d| d.is_zero()) {
            return Err(invalid("sla.window", "must be longer than zero"));
        }
        if sla.buckets == Some(0) {
            return Err(invalid("sla.buckets", "must be at least 1"));
        }
        let window = self.sla_config();
        if window.window < Duration::from_millis(u64::from(window.buckets)) {
            return Err(invalid(
                if sla.window.is_some() {
                    "sla.window"
                } else {
                    "sla.buckets"
                },
                format!(
                    "the window ({}) must hold at least 1ms per bucket ({} buckets)",
                    humantime::format_duration(window.window),
                    window.buckets
                ),
            ));
        }
        check_sla_target(&sla.target(), "sla")?;
        let declared: HashSet<&str> = self.models.iter().map(|m| m.name.as_str()).collect();
        for (name, t) in &sla.targets {
            let at = format!("sla.targets.{name}");
            if !declared.contains(name.as_str()) {
                return Err(invalid(
                    at,
                    format!(
                        "{name:?} is neither a model nor a chain: name a [[models]] entry (its \
                         chain has the same name)"
                    ),
                ));
            }
            check_sla_target(t, &at)?;
        }
        let a = &self.alerts;
        if a.window.is_some_and(|d| d < Duration::from_secs(1)) {
            return Err(invalid("alerts.window", "must be at least 1s"));
        }
        if a.min_calls == Some(0) {
            return Err(invalid("alerts.min_calls", "must be at least 1"));
        }
        for (k, rate) in [
            ("failure_rate", a.failure_rate),
            ("fallback_rate", a.fallback_rate),
        ] {
            if let Some(Threshold::At(r)) = rate {
                if !(r > 0.0 && r < 100.0) {
                    return Err(invalid(
                        format!("alerts.{k}"),
                        format!("must be a percentage in (0, 100) or \"off\", got {r}"),
                    ));
                }
            }
        }
        if let Some(Threshold::At(d)) = a.breaker_open_for {
            if d.is_zero() {
                return Err(invalid(
                    "alerts.breaker_open_for",
                    "must be longer than zero (or \"off\")",
                ));
            }
        }
        if a.webhook_timeout.is_some_and(|d| d.is_zero()) {
            return Err(invalid(
                "alerts.webhook_timeout",
                "must be longer than zero",
            ));
        }
        match (&a.webhook_url, &a.webhook_url_env) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "alerts.webhook_url_env",
                    "set either webhook_url or webhook_url_env, not both",
                ))
            }
            (Some(url), None) => {
                if let Some(problem) = webhook_url_problem(url) {
                    return Err(invalid("alerts.webhook_url", problem));
                }
            }
            (None, Some(var)) => {
                if let Some(problem) = env_name_problem(var) {
                    return Err(invalid("alerts.webhook_url_env", problem));
                }
            }
            (None, None) => {
                if a.webhook_timeout.is_some() {
                    return Err(invalid(
                        "alerts.webhook_timeout",
                        "is set but there is no webhook: add webhook_url (or webhook_url_env)",
                    ));
                }
            }
        }
        Ok(())
    }

    /// The upstream a model is on: its `upstream`, or the first one declared.
    pub fn upstream_of<'a>(&'a self, model: &'a ModelConfig) -> &'a str {
        model
            .upstream
            .as_deref()
            .or_else(|| self.upstreams.first().map(|u| u.name.as_str()))
            .unwrap_or("")
    }

    /// The chain a request for `model` walks: the model, then its fallbacks. `None` for a model
    /// that is not declared.
    pub fn chain_of(&self, model: &str) -> Option<Vec<&str>> {
        let m = self.models.iter().find(|m| m.name == model)?;
        let mut hops = vec![m.name.as_str()];
        hops.extend(m.fallbacks.iter().map(FallbackEntry::model));
        Some(hops)
    }

    /// The response cache in force, `(max_entries, ttl)`: `[cache]`, or its defaults when a
    /// model's `degrade` lists `"cache"` without the section; `None` when nothing uses it.
    pub fn response_cache(&self) -> Option<(u64, Duration)> {
        let used = self
            .models
            .iter()
            .any(|m| m.degrade.contains(&DegradeKind::Cache));
        match &self.cache {
            Some(c) => Some((
                c.max_entries.unwrap_or(DEFAULT_CACHE_ENTRIES),
                c.ttl.unwrap_or(DEFAULT_CACHE_TTL),
            )),
            None if used => Some((DEFAULT_CACHE_ENTRIES, DEFAULT_CACHE_TTL)),
            None => None,
        }
    }

    /// The probes of one model, `None` when it is not probed: its `[models.probe] enabled`
    /// when set, else `[probes] enabled` (default `true`) for a model that heads a chain with
    /// fallbacks. Its keys over `[probes]` over the defaults (30 s interval, 10 s timeout, a
    /// 1-token message).
    pub fn probe_for(&self, model: &ModelConfig) -> Option<ProbeConfig> {
        let own = model.probe.unwrap_or_default();
        let on = own
            .enabled
            .unwrap_or(self.probes.enabled.unwrap_or(true) && !model.fallbacks.is_empty());
        if !on {
            return None;
        }
        let all = self.probes;
        let kind = match own.kind.or(all.kind).unwrap_or(ProbeKindConfig::Message) {
            ProbeKindConfig::Message => ProbeKind::Message,
            ProbeKindConfig::CountTokens => ProbeKind::Auto,
        };
        Some(ProbeConfig {
            interval: own
                .interval
                .or(all.interval)
                .unwrap_or(DEFAULT_PROBE_INTERVAL),
            timeout: own.timeout.or(all.timeout).unwrap_or(DEFAULT_PROBE_TIMEOUT),
            kind,
        })
    }

    /// The SLA window in force (`[sla] window, buckets` over 60 minutes in 12 buckets).
    pub fn sla_config(&self) -> SlaConfig {
        let d = SlaConfig::default();
        SlaConfig {
            window: self.sla.window.unwrap_or(d.window),
            buckets: self.sla.buckets.unwrap_or(d.buckets),
        }
    }

    /// The SLA target of every model and chain without one of its own (`[sla]`).
    pub fn sla_target(&self) -> SlaTarget {
        self.sla.target().apply(SlaTarget::default())
    }

    /// The targets of single models or chains (`[sla.targets.<name>]` over `[sla]`).
    pub fn sla_targets(&self) -> Vec<(String, SlaTarget)> {
        let base = self.sla_target();
        self.sla
            .targets
            .iter()
            .map(|(name, t)| (name.clone(), t.apply(base)))
            .collect()
    }

    /// The `[breaker]` section over the runtime's defaults.
    pub fn breaker_defaults(&self) -> BreakerConfig {
        self.breaker.apply(BreakerConfig::default())
    }

    /// The breaker of one model: its `[models.breaker]` over [`Config::breaker_defaults`].
    pub fn breaker_for(&self, model: &ModelConfig) -> BreakerConfig {
        let base = self.breaker_defaults();
        match &model.breaker {
            Some(b) => b.apply(base),
            None => base,
        }
    }

    /// The `[retry]` section over the runtime's defaults.
    pub fn retry_defaults(&self) -> RetryPolicy {
        self.retry.apply(RetryPolicy::default())
    }

    /// The retry policy of a model's chain: its `[models.retry]` over [`Config::retry_defaults`],
    /// with its `degrade` list.
    pub fn retry_for(&self, model: &ModelConfig) -> RetryPolicy {
        let base = self.retry_defaults();
        let mut policy = match &model.retry {
            Some(r) => r.apply(base),
            None => base,
        };
        policy.degrade = model
            .degrade
            .iter()
            .map(|d| match d {
                DegradeKind::Cache => Degrade::Cache,
                DegradeKind::Static => {
                    Degrade::Static(model.static_answer.clone().unwrap_or_default())
                }
                DegradeKind::Queue => Degrade::Queue,
            })
            .collect();
        policy
    }

    /// (key path, variable) of every key variable of upstream `i`, in key-slot order.
    fn key_vars(&self, i: usize) -> Vec<(String, &str)> {
        let Some(u) = self.upstreams.get(i) else {
            return Vec::new();
        };
        match &u.api_key_env {
            Some(var) => vec![(format!("upstreams[{i}].api_key_env"), var.as_str())],
            None => u
                .api_key_envs
                .iter()
                .enumerate()
                .map(|(j, v)| (format!("upstreams[{i}].api_key_envs[{j}]"), v.as_str()))
                .collect(),
        }
    }
}

/// Checks on one probe section's own values, with exact key paths.
fn check_probe(p: &ProbeSection, prefix: &str) -> Result<(), ConfigError> {
    for (k, d) in [("interval", p.interval), ("timeout", p.timeout)] {
        if d.is_some_and(|d| d.is_zero()) {
            return Err(invalid(format!("{prefix}.{k}"), "must be longer than zero"));
        }
    }
    Ok(())
}

/// Checks on one SLA target's own values, with exact key paths.
fn check_sla_target(t: &SlaTargetSection, prefix: &str) -> Result<(), ConfigError> {
    if let Some(a) = t.availability {
        // Written so that NaN fails too.
        if !(0.0..=100.0).contains(&a) {
            return Err(invalid(
                format!("{prefix}.availability"),
                format!("must be a percentage in [0, 100], got {a}"),
            ));
        }
    }
    if t.p99.is_some_and(|d| d.is_zero()) {
        return Err(invalid(format!("{prefix}.p99"), "must be longer than zero"));
    }
    Ok(())
}

/// What is wrong with a webhook URL, without repeating it (it may carry a token).
fn webhook_url_problem(url: &str) -> Option<String> {
    match reqwest::Url::parse(url) {
        Err(e) => Some(format!(
            "is not a URL ({e}): write it like \"https://hooks.example.com/seawall\""
        )),
        Ok(u) if u.scheme() != "http" && u.scheme() != "https" => {
            Some(format!("must use http or https, not {:?}", u.scheme()))
        }
        Ok(u) if u.host_str().is_none() => Some("has no host".into()),
        Ok(_) => None,
    }
}

/// The config key of a core settings field (they differ in two places).
fn key_of(field: &'static str) -> &'static str {
    match field {
        "trip" => "consecutive_failures",
        "backoff.max_attempts" => "backoff.attempts",
        other => other,
    }
}

/// A core validation error as a config error: at `prefix.key` when the section sets that key,
/// else at the section itself (its value clashes with one it inherits).
fn field_error(prefix: &str, e: Invalid, sets: impl Fn(&str) -> bool) -> ConfigError {
    let key = key_of(e.field);
    let path = if sets(key) {
        format!("{prefix}.{key}")
    } else {
        prefix.to_owned()
    };
    invalid(path, format!("{key} {}", e.problem))
}

impl BreakerSection {
    /// These keys over `base`.
    pub fn apply(&self, base: BreakerConfig) -> BreakerConfig {
        let mut c = base;
        if let Some(w) = self.window {
            c.window = w;
        }
        if let Some(v) = self.failure_rate {
            c.failure_rate = v;
        }
        if let Some(v) = self.slow_call_rate {
            c.slow_call_rate = v;
        }
        if let Some(v) = self.slow_call_duration {
            c.slow_call_duration = v;
        }
        if let Some(v) = self.min_calls {
            c.min_calls = v;
        }
        if let Some(v) = self.open_for {
            c.open_for = v;
        }
        if let Some(v) = self.half_open_calls {
            c.half_open_calls = v;
        }
        if let Some(v) = self.max_wait_in_half_open {
            c.max_wait_in_half_open = Some(v);
        }
        if let Some(o) = self.open_backoff {
            c.open_backoff = Some(OpenBackoff {
                multiplier: o.multiplier,
                max: o.max,
            });
        }
        if let Some(n) = self.consecutive_failures {
            c.trip = Trip::ConsecutiveFailures(n);
        }
        if let Some(v) = self.rate_limit_is_failure {
            c.rate_limit_is_failure = v;
        }
        c
    }

    fn sets(&self, field: &str) -> bool {
        match field {
            "window" => self.window.is_some(),
            "failure_rate" => self.failure_rate.is_some(),
            "slow_call_rate" => self.slow_call_rate.is_some(),
            "slow_call_duration" => self.slow_call_duration.is_some(),
            "min_calls" => self.min_calls.is_some(),
            "half_open_calls" => self.half_open_calls.is_some(),
            "open_for" => self.open_for.is_some(),
            "open_backoff.multiplier" | "open_backoff.max" => self.open_backoff.is_some(),
            "max_wait_in_half_open" => self.max_wait_in_half_open.is_some(),
            "consecutive_failures" => self.consecutive_failures.is_some(),
            _ => false,
        }
    }
}

impl RetrySection {
    /// These keys over `base`.
    pub fn apply(&self, base: RetryPolicy) -> RetryPolicy {
        let mut p = base;
        if let Some(d) = self.deadline {
            p.deadline = d;
        }
        if let Some(d) = self.attempt_timeout {
            p.attempt_timeout = d;
        }
        if let Some(d) = self.first_token_timeout {
            p.first_token_timeout = d;
        }
        if let Some(b) = self.refusal_fallback {
            p.refusal_fallback = b;
        }
        if let Some(d) = self.min_attempt {
            p.min_attempt = d;
        }
        if let Some(n) = self.max_attempts {
            p.max_attempts = n;
        }
        if let Some(e) = self.estimate {
            p.estimate = match e {
                EstimateKind::Heuristic => Estimate::Heuristic,
                EstimateKind::CountTokens => Estimate::CountTokens,
            };
        }
        if let Some(h) = self.hedge_after {
            p.hedge = h;
        }
        if let Some(b) = self.hedge_streams {
            p.hedge_streams = b;
        }
        if let Some(n) = self.max_hedges {
            p.max_hedges = n;
        }
        if let Some(d) = self.idle_timeout {
            p.idle_timeout = d;
        }
        if let Some(b) = self.learned_timeouts {
            p.learned_timeouts = b;
        }
        if let Some(b) = self.backoff {
            p.backoff = b.apply(p.backoff);
        }
        p
    }

    fn sets(&self, field: &str) -> bool {
        let b = self.backoff.unwrap_or_default();
        match field {
            "deadline" => self.deadline.is_some(),
            "attempt_timeout" => self.attempt_timeout.is_some(),
            "first_token_timeout" => self.first_token_timeout.is_some(),
            "min_attempt" => self.min_attempt.is_some(),
            "max_attempts" => self.max_attempts.is_some(),
            "idle_timeout" => self.idle_timeout.is_some(),
            "hedge_after" => self.hedge_after.is_some(),
            "backoff.base" => b.base.is_some(),
            "backoff.cap" => b.cap.is_some(),
            "backoff.attempts" => b.attempts.is_some(),
            _ => false,
        }
    }
}

impl BackoffSection {
    /// These keys over `base`.
    pub fn apply(&self, base: Backoff) -> Backoff {
        Backoff {
            base: self.base.unwrap_or(base.base),
            cap: self.cap.unwrap_or(base.cap),
            max_attempts: self.attempts.unwrap_or(base.max_attempts),
            jitter: match self.jitter {
                Some(JitterKind::Full) => Jitter::Full,
                Some(JitterKind::Sdk) => Jitter::Sdk,
                Some(JitterKind::None) => Jitter::None,
                None => base.jitter,
            },
        }
    }
}

/// What is wrong with an `allowed_origins` entry: it must be an origin as browsers send it
/// (`scheme://host[:port]`, no path).
fn origin_problem(origin: &str) -> Option<String> {
    let rest = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    match rest {
        Some(host) if !host.is_empty() && !host.contains('/') && host.is_ascii() => None,
        _ => Some(format!(
            "{origin:?} is not an origin: write it as browsers send it, like \
             \"http://localhost:3000\" (scheme, host, optional port, no path)"
        )),
    }
}

fn env_name_problem(var: &str) -> Option<String> {
    if var.is_empty() {
        Some("the variable name is empty".into())
    } else if var.contains(['=', '\0']) || var.chars().any(char::is_whitespace) {
        Some(format!("{var:?} is not a usable environment variable name"))
    } else {
        None
    }
}

fn base_url_problem(url: &str) -> Option<String> {
    match reqwest::Url::parse(url) {
        Err(e) => Some(format!(
            "{url:?} is not a URL ({e}): write it like \"https://api.anthropic.com\""
        )),
        Ok(u) if u.scheme() != "http" && u.scheme() != "https" => Some(format!(
            "{url:?} must use http or https, not {:?}",
            u.scheme()
        )),
        Ok(_) => None,
    }
}

fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

// ---------------------------------------------------------------------------------------------
// Spawning

/// Transports by config name, in config order.
pub type Upstreams = Vec<(String, Arc<dyn Upstream>)>;

/// A runtime built from a [`Config`]: the running [`Seawall`], the upstreams it sends to (by
/// config name, in config order) and the resolved client tokens.
pub struct Runtime {
    /// The running runtime.
    pub seawall: Seawall,
    /// Each `[[upstreams]]` entry's transport, in config order.
    pub upstreams: Upstreams,
    /// Client tokens: `[gateway] tokens` plus the values of `token_envs`.
    pub tokens: Vec<ClientToken>,
    /// Where alerts are POSTed (`[alerts] webhook_url` or `webhook_url_env`), if anywhere.
    pub alert_webhook: Option<AlertWebhook>,
}

/// An alert webhook: its URL (a secret: `Debug` and [`AlertWebhook::redacted`] show only the
/// scheme and host) and the time allowed to one delivery attempt.
#[derive(Clone)]
pub struct AlertWebhook {
    url: reqwest::Url,
    /// Time allowed to one delivery attempt.
    pub timeout: Duration,
}

impl AlertWebhook {
    /// The URL, to send to.
    pub fn url(&self) -> &reqwest::Url {
        &self.url
    }

    /// The URL as it may be logged: scheme, host and port, the rest elided.
    pub fn redacted(&self) -> String {
        let host = self.url.host_str().unwrap_or("?");
        match self.url.port() {
            Some(port) => format!("{}://{host}:{port}/…", self.url.scheme()),
            None => format!("{}://{host}/…", self.url.scheme()),
        }
    }
}

impl fmt::Debug for AlertWebhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlertWebhook")
            .field("url", &self.redacted())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field(
                "upstreams",
                &self.upstreams.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("tokens", &self.tokens.len())
            .field("alert_webhook", &self.alert_webhook)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Read the key variables from the process environment, build the transports and start the
    /// runtime.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming the key whose variable is missing or unusable (by the
    /// variable's name, never its value), or whose transport cannot be built;
    /// [`ConfigError::Runtime`] when the runtime refuses to start.
    pub async fn spawn(&self) -> Result<Runtime, ConfigError> {
        self.spawn_with_env(|var| std::env::var_os(var).map(|v| v.to_string_lossy().into_owned()))
            .await
    }

    /// Like [`Config::spawn`], with variables looked up in `env` (tests, secret managers).
    ///
    /// # Errors
    ///
    /// As [`Config::spawn`].
    pub async fn spawn_with_env(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Runtime, ConfigError> {
        let upstreams = self.build_upstreams(&env)?;
        let tokens = self.resolve_tokens(&env)?;
        let alert_webhook = self.resolve_webhook(&env)?;
        let mut builder = self.builder(&upstreams);
        let cluster = self.connect_cluster().await?;
        if let Some(c) = &cluster {
            builder = builder.cluster(c.clone());
        }
        if let Some(q) = &self.queue {
            let store: Arc<dyn JobStore> = match (&cluster, &q.path) {
                (Some(c), _) => {
                    let store = RedisJobStore::start(
                        c.conn().clone(),
                        c.name(),
                        c.instance(),
                        RedisStoreOptions::default(),
                    )
                    .await
                    .map_err(|e| invalid("cluster.redis_url", e.to_string()))?;
                    Arc::new(store)
                }
                (None, Some(path)) => Arc::new(
                    crate::jobstore::RedbJobStore::open(path)
                        .map_err(|e| invalid("queue.path", e))?,
                ),
                (None, None) => return Err(invalid("queue.path", "is required")),
            };
            builder = builder.queue(store, q.to_config());
        }
        let seawall = builder.spawn().await.map_err(|e| match e {
            CoreError::Config(m) => ConfigError::Runtime(m),
            other => ConfigError::Runtime(other.to_string()),
        })?;
        Ok(Runtime {
            seawall,
            upstreams,
            tokens,
            alert_webhook,
        })
    }

    /// The alert webhook of `[alerts]`, its URL read through `env` for `webhook_url_env`.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming `alerts.webhook_url_env` when the variable is missing or
    /// does not hold a usable URL (never the value).
    pub fn resolve_webhook(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<AlertWebhook>, ConfigError> {
        let a = &self.alerts;
        let (key, text) = match (&a.webhook_url, &a.webhook_url_env) {
            (Some(url), _) => ("alerts.webhook_url", url.clone()),
            (None, Some(var)) => {
                let value = env(var).ok_or_else(|| {
                    invalid(
                        "alerts.webhook_url_env",
                        format!("environment variable {var} is not set: export it with the webhook's URL"),
                    )
                })?;
                if let Some(problem) = webhook_url_problem(&value) {
                    return Err(invalid(
                        "alerts.webhook_url_env",
                        format!("environment variable {var} {problem}"),
                    ));
                }
                ("alerts.webhook_url_env", value)
            }
            (None, None) => return Ok(None),
        };
        let url =
            reqwest::Url::parse(&text).map_err(|e| invalid(key, format!("is not a URL ({e})")))?;
        Ok(Some(AlertWebhook {
            url,
            timeout: a.webhook_timeout(),
        }))
    }

    /// With `[cluster]`: connect to the fleet's Redis and check that it takes writes, so a bad
    /// URL, a wrong password, a read-only replica or a full Redis is a clear error at start
    /// (within about a second, never a hang). Without it: nothing connects.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] for `cluster.redis_url`, saying what to fix (the password
    /// redacted).
    pub async fn connect_cluster(&self) -> Result<Option<RedisCluster>, ConfigError> {
        let Some(c) = &self.cluster else {
            return Ok(None);
        };
        let cluster = RedisCluster::connect(&c.redis_url, &c.name)
            .await
            .map_err(|e| invalid("cluster.redis_url", e.to_string()))?;
        tracing::info!(fleet = %c.name, instance = %cluster.instance(), "joined the fleet");
        Ok(Some(cluster))
    }

    /// The transports of every `[[upstreams]]` entry, keys read through `env`.
    ///
    /// # Errors
    ///
    /// As [`Config::spawn`].
    pub fn build_upstreams(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Upstreams, ConfigError> {
        let mut out: Upstreams = Vec::new();
        for (i, u) in self.upstreams.iter().enumerate() {
            let mut keys = Vec::new();
            for (key, var) in self.key_vars(i) {
                keys.push(read_key(env, var).map_err(|e| invalid(key, e.to_string()))?);
            }
            let at = |k: &str| format!("upstreams[{i}].{k}");
            let setup = |e: TransportSetupError| match e {
                TransportSetupError::BaseUrl(m) => invalid(at("base_url"), m),
                TransportSetupError::HeaderValue { field } => invalid(at(field), e.to_string()),
                other => invalid(format!("upstreams[{i}]"), other.to_string()),
            };
            let upstream: Arc<dyn Upstream> = match u.kind {
                UpstreamKind::Anthropic => {
                    let d = AnthropicOptions::default();
                    let options = AnthropicOptions {
                        base_url: u.base_url.clone().unwrap_or(d.base_url),
                        version: u.version.clone().unwrap_or(d.version),
                        beta: u.beta.clone(),
                        connect_timeout: u.connect_timeout.unwrap_or(d.connect_timeout),
                        auth: match u.auth {
                            Some(AuthHeader::Bearer) => AuthStyle::Bearer,
                            Some(AuthHeader::XApiKey) | None => AuthStyle::XApiKey,
                        },
                        pool_idle_timeout: u.pool_idle_timeout.unwrap_or(d.pool_idle_timeout),
                    };
                    Arc::new(AnthropicUpstream::new(keys, options).map_err(setup)?)
                }
                UpstreamKind::Openai => {
                    let d = OpenAiOptions::default();
                    let options = OpenAiOptions {
                        base_url: u.base_url.clone().unwrap_or(d.base_url),
                        connect_timeout: u.connect_timeout.unwrap_or(d.connect_timeout),
                        pool_idle_timeout: u.pool_idle_timeout.unwrap_or(d.pool_idle_timeout),
                        organization: u.organization.clone(),
                    };
                    Arc::new(OpenAiUpstream::new(keys, options).map_err(setup)?)
                }
            };
            out.push((u.name.clone(), upstream));
        }
        Ok(out)
    }

    /// `[gateway] tokens` plus the values of `token_envs`, read through `env`.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming `gateway.token_envs[i]` when a variable is missing or
    /// holds an unusable token (never the value).
    pub fn resolve_tokens(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Vec<ClientToken>, ConfigError> {
        let mut tokens = self.gateway.tokens.clone();
        for (i, var) in self.gateway.token_envs.iter().enumerate() {
            let key = format!("gateway.token_envs[{i}]");
            let value = env(var).ok_or_else(|| {
                invalid(
                    key.clone(),
                    format!("environment variable {var} is not set: export it with a client token"),
                )
            })?;
            let token = ClientToken::new(value);
            if let Some(problem) = token.problem() {
                return Err(invalid(
                    key,
                    format!("environment variable {var} does not hold a usable token: {problem}"),
                ));
            }
            tokens.push(token);
        }
        Ok(tokens)
    }

    /// A runtime builder with everything in this file, over the given transports (in config
    /// order, as [`Config::build_upstreams`] returns them).
    pub fn builder(&self, upstreams: &[(String, Arc<dyn Upstream>)]) -> seawall_actors::Builder {
        let d = RestartIntensity::default();
        let mut b = Seawall::builder()
            .breaker_defaults(self.breaker_defaults())
            .retry_policy(self.retry_defaults())
            .interactive_reserve(self.governor.interactive_reserve.unwrap_or(0.0))
            .transit_allowance(
                self.governor
                    .transit_allowance
                    .unwrap_or(seawall_actors::runtime::DEFAULT_TRANSIT_ALLOWANCE),
            )
            .retry_budget(self.retry_budget.to_config())
            .restart_intensity(RestartIntensity {
                max_restarts: self.supervisor.max_restarts.unwrap_or(d.max_restarts),
                within: self.supervisor.within.unwrap_or(d.within),
            });
        if let Some(ttl) = self.gateway.idempotency_ttl {
            let d = seawall_actors::IdempotencyConfig::new(ttl);
            b = b.idempotency_config(seawall_actors::IdempotencyConfig {
                ttl,
                max_entries: self
                    .gateway
                    .idempotency_max_entries
                    .unwrap_or(d.max_entries),
                max_per_tenant: self
                    .gateway
                    .idempotency_max_per_client
                    .unwrap_or(d.max_per_tenant),
            });
        }
        let pins = seawall_actors::PinLimits::default();
        b = b.pin_limits(seawall_actors::PinLimits {
            max_pins: self.gateway.max_pins.unwrap_or(pins.max_pins),
            max_per_tenant: self
                .gateway
                .max_pins_per_client
                .unwrap_or(pins.max_per_tenant),
        });
        if let Some((max_entries, ttl)) = self.response_cache() {
            b = b.response_cache(max_entries, ttl);
        }
        b = b
            .sla_window(self.sla_config())
            .sla_target(self.sla_target())
            .alerts(self.alerts.to_config())
            .log_prompts(self.log.prompts.unwrap_or(false));
        for (name, target) in self.sla_targets() {
            b = b.sla_target_for(&name, target);
        }
        for (name, upstream) in upstreams {
            b = b.upstream_arc(name, Arc::clone(upstream));
        }
        for m in &self.models {
            b = b.model_on(&m.name, self.upstream_of(m), Some(self.breaker_for(m)));
            if let Some(probe) = self.probe_for(m) {
                b = b.probe(&m.name, probe);
            }
            if let Some(price) = m.price {
                b = b.prices(&m.name, price.to_price());
            }
        }
        for m in &self.models {
            let hops = std::iter::once(seawall_actors::HopSpec::model(&m.name))
                .chain(m.fallbacks.iter().map(FallbackEntry::hop));
            b = b.chain_hops(&m.name, hops, Some(self.retry_for(m)));
        }
        for (upstream, l) in &self.limits {
            b = b.limits(upstream, l.to_limits());
            for (class, r) in &l.classes {
                let members: Vec<&str> = self
                    .models
                    .iter()
                    .filter(|m| {
                        self.upstream_of(m) == upstream && m.class.as_deref() == Some(class)
                    })
                    .map(|m| m.name.as_str())
                    .collect();
                b = b.class_limits(upstream, class, members, r.to_limits());
            }
        }
        for u in &self.upstreams {
            if let Some(orgs) = &u.key_organizations {
                b = b.key_organizations(&u.name, orgs.iter().map(String::as_str));
            }
        }
        for bh in &self.bulkheads {
            b = b.bulkhead(
                &bh.name,
                Bulkhead {
                    max_concurrent: bh.max_concurrent,
                    budget_share: bh.budget_share,
                },
            );
        }
        b
    }
}

/// A key from `env`, with [`ApiKey::from_env`]'s errors (the variable's name, never the value).
fn read_key(env: &dyn Fn(&str) -> Option<String>, var: &str) -> Result<ApiKey, KeyError> {
    match env(var) {
        None => Err(KeyError::EnvMissing {
            var: var.to_owned(),
        }),
        Some(value) => ApiKey::new(value).map_err(|e| match e {
            KeyError::Invalid(problem) => KeyError::EnvInvalid {
                var: var.to_owned(),
                problem,
            },
            other => other,
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Value deserializers

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration string such as \"250ms\", \"30s\" or \"1m 30s\"")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        humantime::parse_duration(v).map_err(|e| {
            E::custom(format!(
                "{v:?} is not a duration ({e}): write it like \"250ms\", \"30s\" or \"1m 30s\""
            ))
        })
    }
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_str(DurationVisitor)
}

fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

/// A percentage threshold, or `"off"`.
struct RateVisitor;

impl Visitor<'_> for RateVisitor {
    type Value = Threshold<f64>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a percentage (5 or 2.5) or \"off\"")
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Threshold<f64>, E> {
        Ok(Threshold::At(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Threshold<f64>, E> {
        Ok(Threshold::At(v as f64))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Threshold<f64>, E> {
        Ok(Threshold::At(v as f64))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Threshold<f64>, E> {
        if v == "off" {
            Ok(Threshold::Off)
        } else {
            Err(E::custom(format!(
                "{v:?} is neither a percentage nor \"off\": write failure_rate = 5 or \"off\""
            )))
        }
    }
}

fn de_opt_rate<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Threshold<f64>>, D::Error> {
    d.deserialize_any(RateVisitor).map(Some)
}

/// `"auto"`, `"off"` or a duration.
struct HedgeVisitor;

impl Visitor<'_> for HedgeVisitor {
    type Value = Hedge;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"auto\", \"off\" or a duration string such as \"2s\"")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Hedge, E> {
        match v {
            "auto" => Ok(Hedge::Auto),
            "off" => Ok(Hedge::Off),
            _ => DurationVisitor
                .visit_str(v)
                .map(Hedge::After)
                .map_err(|_: E| {
                    E::custom(format!(
                        "{v:?} is not \"auto\", \"off\" or a duration such as \"2s\""
                    ))
                }),
        }
    }
}

fn de_opt_hedge<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Hedge>, D::Error> {
    d.deserialize_str(HedgeVisitor).map(Some)
}

/// A duration threshold, or `"off"`.
struct LimitVisitor;

impl Visitor<'_> for LimitVisitor {
    type Value = Threshold<Duration>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration string such as \"60s\", or \"off\"")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Threshold<Duration>, E> {
        if v == "off" {
            return Ok(Threshold::Off);
        }
        DurationVisitor.visit_str(v).map(Threshold::At)
    }
}

fn de_opt_limit<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Threshold<Duration>>, D::Error> {
    d.deserialize_str(LimitVisitor).map(Some)
}

struct WindowVisitor;

impl Visitor<'_> for WindowVisitor {
    type Value = WindowKind;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a call count (window = 20) or a duration (window = \"60s\")")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<WindowKind, E> {
        match u32::try_from(v) {
            Ok(n) if n >= 1 => Ok(WindowKind::Count(n)),
            _ => Err(E::custom(format!(
                "a count window must hold 1 to {} calls, got {v}",
                u32::MAX
            ))),
        }
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<WindowKind, E> {
        self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<WindowKind, E> {
        DurationVisitor.visit_str(v).map(WindowKind::Time)
    }
}

fn de_window<'de, D: Deserializer<'de>>(d: D) -> Result<Option<WindowKind>, D::Error> {
    d.deserialize_any(WindowVisitor).map(Some)
}

struct SocketAddrVisitor;

impl Visitor<'_> for SocketAddrVisitor {
    type Value = SocketAddr;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an address such as \"127.0.0.1:8700\"")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<SocketAddr, E> {
        v.parse().map_err(|_| {
            E::custom(format!(
                "{v:?} is not an IP:PORT address: write it like \"127.0.0.1:8700\" or \"[::1]:8700\""
            ))
        })
    }
}

fn de_socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    d.deserialize_str(SocketAddrVisitor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_fields_map_to_keys_by_table() {
        let e = |field, problem: &str| Invalid::new(field, problem);
        let key = |err: ConfigError| err.key().map(str::to_owned);
        assert_eq!(
            key(field_error(
                "breaker",
                e("min_calls", "(30) exceeds"),
                |_| true
            )),
            Some("breaker.min_calls".into())
        );
        assert_eq!(
            key(field_error("retry", e("backoff.max_attempts", "x"), |_| {
                true
            })),
            Some("retry.backoff.attempts".into())
        );
        assert_eq!(
            key(field_error("models[0].breaker", e("trip", "x"), |k| {
                k == "consecutive_failures"
            })),
            Some("models[0].breaker.consecutive_failures".into())
        );
        // A key the section does not set: the clash is the section's.
        let err = field_error("models[0].retry", e("deadline", "must be"), |_| false);
        assert_eq!(err.key(), Some("models[0].retry"));
        assert!(err.to_string().contains("deadline must be"), "{err}");
    }
}
