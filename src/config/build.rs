//! What the file means to the runtime: each section over the core's defaults, the resolved
//! settings of a model and its chain, the transports of `[[upstreams]]`, one
//! [`seawall_actors::Builder`] with everything, and [`Config::spawn`], which starts it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use seawall_actors::fleet::Fleet as _;
use seawall_actors::upstream::Upstream;
use seawall_actors::{
    AlertConfig, Backoff, BreakerConfig, Bulkhead, Degrade, Error as CoreError, Estimate, Jitter,
    JobStore, Limits, OpenBackoff, Price, ProbeConfig, ProbeKind, QueueConfig, RestartIntensity,
    RetryBudgetConfig, RetryPolicy, Seawall, SlaConfig, SlaTarget, Trip,
};

use crate::cluster::jobs::{RedisJobStore, RedisStoreOptions};
use crate::cluster::{ClusterBuilder, RedisCluster};
use crate::transport::anthropic::{AnthropicOptions, AnthropicUpstream, AuthStyle};
use crate::transport::bedrock::{BedrockOptions, BedrockUpstream};
use crate::transport::openai::{Azure, MaxTokensField, OpenAiOptions, OpenAiUpstream};
use crate::transport::vertex::{GoogleCredentials, VertexOptions, VertexUpstream};
use crate::transport::AwsCredentials;
use crate::transport::TransportSetupError;

use super::env::{process_env, read_key};
use super::error::invalid;
use super::webhook::AlertWebhook;
use super::{
    AlertsSection, AuthHeader, BackoffSection, BreakerSection, ClientToken, Config, ConfigError,
    DegradeKind, EstimateKind, FallbackEntry, JitterKind, LimitsConfig, MaxTokensFieldConfig,
    ModelConfig, PriceConfig, ProbeKindConfig, QueueSection, RateLimits, RetryBudgetSection,
    RetrySection, SlaTargetSection, Threshold, UpstreamKind, DEFAULT_CACHE_ENTRIES,
    DEFAULT_CACHE_TTL, DEFAULT_PROBE_INTERVAL, DEFAULT_PROBE_TIMEOUT,
};

// ---------------------------------------------------------------------------------------------
// Each section over the core's defaults

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

impl PriceConfig {
    /// The runtime's price type.
    pub fn to_price(self) -> Price {
        Price {
            input_per_mtok: self.input_per_mtok,
            output_per_mtok: self.output_per_mtok,
        }
    }
}

impl FallbackEntry {
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

// ---------------------------------------------------------------------------------------------
// A model's settings in force

impl Config {
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
}

/// The Bedrock endpoint the AWS environment names, as the SDKs read it:
/// `AWS_ENDPOINT_URL_BEDROCK_RUNTIME`, else `AWS_ENDPOINT_URL`, unless
/// `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS` is `true`. A `base_url` in the file wins over both.
fn aws_endpoint_url(env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    if env("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
    {
        return None;
    }
    ["AWS_ENDPOINT_URL_BEDROCK_RUNTIME", "AWS_ENDPOINT_URL"]
        .into_iter()
        .find_map(|var| env(var).filter(|v| !v.trim().is_empty()))
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
        self.spawn_with_env(process_env).await
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
                TransportSetupError::HeaderValue { field }
                | TransportSetupError::QueryValue { field } => invalid(at(field), e.to_string()),
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
                UpstreamKind::Openai | UpstreamKind::AzureOpenai => {
                    let d = OpenAiOptions::default();
                    let options = OpenAiOptions {
                        base_url: u.base_url.clone().unwrap_or(d.base_url),
                        connect_timeout: u.connect_timeout.unwrap_or(d.connect_timeout),
                        pool_idle_timeout: u.pool_idle_timeout.unwrap_or(d.pool_idle_timeout),
                        organization: u.organization.clone(),
                        azure: (u.kind == UpstreamKind::AzureOpenai).then(|| Azure {
                            api_version: u.api_version.clone(),
                        }),
                        max_tokens_field: u.max_tokens_field.map(|f| match f {
                            MaxTokensFieldConfig::MaxTokens => MaxTokensField::MaxTokens,
                            MaxTokensFieldConfig::MaxCompletionTokens => {
                                MaxTokensField::MaxCompletionTokens
                            }
                        }),
                    };
                    Arc::new(OpenAiUpstream::new(keys, options).map_err(setup)?)
                }
                UpstreamKind::Bedrock => {
                    let region = u.region.clone().unwrap_or_default();
                    let mut options = BedrockOptions::new(&region);
                    options.base_url = u.base_url.clone().or_else(|| aws_endpoint_url(env));
                    options.credentials = AwsCredentials::DefaultChain {
                        profile: u.profile.clone(),
                        config_file: env("AWS_CONFIG_FILE").map(Into::into),
                        credentials_file: env("AWS_SHARED_CREDENTIALS_FILE").map(Into::into),
                    };
                    options.beta = u.beta.clone();
                    options.connect_timeout = u.connect_timeout.unwrap_or(options.connect_timeout);
                    options.pool_idle_timeout =
                        u.pool_idle_timeout.unwrap_or(options.pool_idle_timeout);
                    Arc::new(BedrockUpstream::new(options).map_err(setup)?)
                }
                UpstreamKind::Vertex => {
                    let mut options = VertexOptions::new(
                        u.project.as_deref().unwrap_or_default(),
                        u.region.as_deref().unwrap_or_default(),
                    );
                    options.base_url = u.base_url.clone();
                    options.credentials = match env("GOOGLE_APPLICATION_CREDENTIALS") {
                        Some(path) if !path.is_empty() => {
                            GoogleCredentials::ServiceAccountFile(path.into())
                        }
                        _ => GoogleCredentials::Adc,
                    };
                    options.beta = u.beta.clone();
                    options.connect_timeout = u.connect_timeout.unwrap_or(options.connect_timeout);
                    options.pool_idle_timeout =
                        u.pool_idle_timeout.unwrap_or(options.pool_idle_timeout);
                    Arc::new(VertexUpstream::new(options).map_err(setup)?)
                }
            };
            out.push((u.name.clone(), upstream));
        }
        Ok(out)
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
            if let Some(id) = &m.id {
                b = b.model_id(&m.name, id);
            }
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
