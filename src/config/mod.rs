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
//!
//! One concept per file: this one holds the schema (every section, as serde reads it) and the
//! entry points; `validate.rs` the rules [`Config::validate`] applies, `build.rs` what the file
//! means to the runtime (each section over the core's defaults, the transports, the builder,
//! [`Config::spawn`]), `env.rs` what is read from the environment (keys, client tokens),
//! `webhook.rs` the alert webhook, `error.rs` [`ConfigError`] and `de.rs` the value
//! deserializers (durations, `"off"` thresholds, windows, addresses).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use seawall_actors::{Hedge, WindowKind};

mod build;
mod de;
mod env;
mod error;
mod gateway;
mod validate;
mod webhook;

pub use build::{Runtime, Upstreams};
pub use error::ConfigError;
pub use gateway::{GatewaySection, DEFAULT_MAX_TOKENS};
pub use webhook::{AlertWebhook, WEBHOOK_ATTEMPTS};

use de::{
    de_duration, de_opt_duration, de_opt_hedge, de_opt_limit, de_opt_rate, de_socket_addr,
    de_window,
};

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
    /// Azure OpenAI: the same translation, the `api-key` header, the deployment in the path.
    AzureOpenai,
    /// Claude on AWS Bedrock (`InvokeModel`), SigV4-signed with credentials from the AWS
    /// default chain: needs `region`, takes `profile`, no API key.
    Bedrock,
    /// Claude on Google Vertex AI (`rawPredict`), with Application Default Credentials: needs
    /// `project` and `region`, no API key.
    Vertex,
}

impl UpstreamKind {
    /// The kind's name in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamKind::Anthropic => "anthropic",
            UpstreamKind::Openai => "openai",
            UpstreamKind::AzureOpenai => "azure_openai",
            UpstreamKind::Bedrock => "bedrock",
            UpstreamKind::Vertex => "vertex",
        }
    }

    /// True for the kinds that authenticate with API keys from `api_key_env(s)`; Bedrock and
    /// Vertex take their platform's credential chain instead.
    pub fn takes_api_keys(self) -> bool {
        matches!(
            self,
            UpstreamKind::Anthropic | UpstreamKind::Openai | UpstreamKind::AzureOpenai
        )
    }

    /// True for the kinds that speak OpenAI's chat completions.
    pub fn is_openai(self) -> bool {
        matches!(self, UpstreamKind::Openai | UpstreamKind::AzureOpenai)
    }
}

/// The field an OpenAI-compatible upstream takes the answer's length limit in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaxTokensFieldConfig {
    /// `max_tokens` (most compatible servers).
    MaxTokens,
    /// `max_completion_tokens` (OpenAI's newer models, Azure).
    MaxCompletionTokens,
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
    /// `"anthropic"` (default), `"openai"`, `"azure_openai"`, `"bedrock"` or `"vertex"`.
    #[serde(default)]
    pub kind: UpstreamKind,
    /// Scheme, host and optional path prefix. Default: the provider's public API (bedrock:
    /// `https://bedrock-runtime.{region}.amazonaws.com`, or `AWS_ENDPOINT_URL_BEDROCK_RUNTIME`
    /// / `AWS_ENDPOINT_URL` when set; vertex: `https://{region}-aiplatform.googleapis.com`,
    /// `https://aiplatform.googleapis.com` for region `global`).
    pub base_url: Option<String>,
    /// The platform region (bedrock and vertex, required there): `"us-east-1"`, `"us-east5"`,
    /// `"global"` (vertex).
    pub region: Option<String>,
    /// The AWS profile whose credentials and settings are used (bedrock only). Default: the
    /// AWS default chain's (`AWS_PROFILE`, else `default`).
    pub profile: Option<String>,
    /// The Google Cloud project (vertex only, required there).
    pub project: Option<String>,
    /// The environment variable holding the API key.
    pub api_key_env: Option<String>,
    /// The environment variables of a key pool (instead of `api_key_env`).
    #[serde(default)]
    pub api_key_envs: Vec<String>,
    /// `anthropic-version` sent upstream (anthropic only). Default `2023-06-01`.
    pub version: Option<String>,
    /// `anthropic-beta` sent upstream, a comma-separated list (anthropic and vertex send it as
    /// the header, bedrock as the body's `anthropic_beta`).
    pub beta: Option<String>,
    /// How the key is sent (anthropic only): `"x-api-key"` (default) or `"bearer"`.
    pub auth: Option<AuthHeader>,
    /// `OpenAI-Organization` sent upstream (openai only).
    pub organization: Option<String>,
    /// Azure's `api-version` (azure_openai only): the deployment path
    /// `/openai/deployments/{id}/chat/completions?api-version=V`. Default: the v1 API
    /// (`/openai/v1/chat/completions`, the deployment named by the body's model).
    pub api_version: Option<String>,
    /// The field `max_tokens` is sent in (openai and azure_openai): `"max_tokens"` or
    /// `"max_completion_tokens"`. Default: `max_completion_tokens` for OpenAI's own API and
    /// Azure, `max_tokens` for any other `base_url`.
    pub max_tokens_field: Option<MaxTokensFieldConfig>,
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
    /// seawall's name for the model, as requests spell it: the key of its breaker, metrics and
    /// chain.
    pub name: String,
    /// The upstream's id for the model, what goes on the wire (the body's `model`, the path on
    /// Bedrock and Vertex), e.g. `"us.anthropic.claude-sonnet-4-5-20250929-v1:0"`. Default:
    /// `name`. The same id on two upstreams is two models with two breakers.
    pub id: Option<String>,
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
}

impl fmt::Debug for ClientToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientToken(<redacted>)")
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing

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
}

fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split('`').next()
}
