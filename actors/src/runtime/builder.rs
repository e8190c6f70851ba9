//! The builder: what a runtime is made of (upstreams, models, chains, limits, policies), checked
//! once by the rules that own each setting (`plan`), then started as a supervised actor tree.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ractor::{Actor, ActorCell};
use tokio::sync::broadcast;

use crate::call::Call;
use crate::directory::Directory;
use crate::error::Error;
use crate::fleet::{Fleet, HealthNews};
use crate::idempotency::IdempotencyConfig;
use crate::job::{JobStore, QueueConfig};
use crate::monitor::{MonitorArgs, MonitoredChain, MonitoredModel, ProbeConfig};
use crate::policy::alert::AlertConfig;
use crate::policy::breaker::BreakerConfig;
use crate::policy::bucket::Limits;
use crate::policy::chain::{Degrade, RetryPolicy};
use crate::policy::lanes::{Bulkhead, GovernorArgs, UpstreamBudget};
use crate::policy::pins::PinLimits;
use crate::policy::retry_budget::RetryBudgetConfig;
use crate::policy::sla::{SlaConfig, SlaTarget};
use crate::protocol::BreakerMsg;
use crate::queue::{QueueArgs, Runner};
use crate::request::{Chain, InFlight, ModelInfo, ResponseCache, Shared};
use crate::supervisor::{RestartIntensity, Supervisor, SupervisorArgs};
use crate::upstream::Upstream;
use crate::wire::Price;

use super::{Inner, Seawall};

/// Default [`Builder::transit_allowance`].
pub const DEFAULT_TRANSIT_ALLOWANCE: Duration = Duration::from_millis(250);

/// One hop of a chain: a model, and optionally a patch against the original request.
///
/// Like the API's server-side `fallbacks` and the SDK's fallback middleware, a hop may change
/// any request field: a field set in the patch overrides, a field set to `null` removes it, an
/// absent field keeps the original. Every hop patches the original request; hops never compound.
#[derive(Clone, Debug, PartialEq)]
pub struct HopSpec {
    /// The model of this hop.
    pub model: String,
    /// The patch (a JSON object without `model`), if any.
    pub patch: Option<serde_json::Value>,
}

impl HopSpec {
    /// A hop that sends the request as is to `model`.
    pub fn model(model: &str) -> Self {
        Self {
            model: model.to_owned(),
            patch: None,
        }
    }

    /// Patch the request for this hop, e.g. `json!({"max_tokens": 512, "thinking": null})`.
    pub fn patch(mut self, patch: serde_json::Value) -> Self {
        self.patch = Some(patch);
        self
    }
}

/// Configures and spawns a runtime. Start with [`Seawall::builder`].
pub struct Builder {
    upstreams: Vec<(String, Arc<dyn Upstream>)>,
    models: Vec<(String, Option<String>, Option<BreakerConfig>)>,
    /// (model, the upstream's id for it), from [`Builder::model_id`].
    model_ids: Vec<(String, String)>,
    chains: Vec<(String, Vec<HopSpec>, Option<RetryPolicy>)>,
    limits: Vec<(String, Limits)>,
    class_limits: Vec<(String, String, Vec<String>, Limits)>,
    key_orgs: Vec<(String, Vec<String>)>,
    bulkheads: Vec<(String, Bulkhead)>,
    interactive_reserve: f64,
    transit_allowance: Duration,
    retry_budget: RetryBudgetConfig,
    idempotency: Option<IdempotencyConfig>,
    pins: PinLimits,
    fleet: Option<Arc<dyn Fleet>>,
    response_cache: Option<(u64, Duration)>,
    queue: Option<(Arc<dyn JobStore>, QueueConfig)>,
    breaker_defaults: BreakerConfig,
    policy: RetryPolicy,
    intensity: RestartIntensity,
    log_prompts: bool,
    prices: Vec<(String, Price)>,
    sla: SlaConfig,
    sla_target: SlaTarget,
    sla_targets: Vec<(String, SlaTarget)>,
    alerts: AlertConfig,
    probes: Vec<(Option<String>, ProbeConfig)>,
}

impl Builder {
    pub(super) fn new() -> Self {
        Self {
            upstreams: Vec::new(),
            models: Vec::new(),
            model_ids: Vec::new(),
            chains: Vec::new(),
            limits: Vec::new(),
            class_limits: Vec::new(),
            key_orgs: Vec::new(),
            bulkheads: Vec::new(),
            interactive_reserve: 0.0,
            transit_allowance: DEFAULT_TRANSIT_ALLOWANCE,
            retry_budget: RetryBudgetConfig::default(),
            idempotency: None,
            pins: PinLimits::default(),
            fleet: None,
            response_cache: None,
            queue: None,
            breaker_defaults: BreakerConfig::default(),
            policy: RetryPolicy::default(),
            intensity: RestartIntensity::default(),
            log_prompts: false,
            prices: Vec::new(),
            sla: SlaConfig::default(),
            sla_target: SlaTarget::default(),
            sla_targets: Vec::new(),
            alerts: AlertConfig::default(),
            probes: Vec::new(),
        }
    }

    /// Add an upstream under a name. The first one added is the default for models.
    pub fn upstream(self, name: &str, upstream: impl Upstream) -> Self {
        self.upstream_arc(name, Arc::new(upstream))
    }

    /// Add an already shared upstream.
    pub fn upstream_arc(mut self, name: &str, upstream: Arc<dyn Upstream>) -> Self {
        self.upstreams.push((name.to_owned(), upstream));
        self
    }

    /// Declare a model on the default upstream with its own breaker policy.
    pub fn model(mut self, name: &str, breaker: BreakerConfig) -> Self {
        self.models.push((name.to_owned(), None, Some(breaker)));
        self
    }

    /// Declare a model on a named upstream (`breaker: None` uses the defaults).
    pub fn model_on(mut self, name: &str, upstream: &str, breaker: Option<BreakerConfig>) -> Self {
        self.models
            .push((name.to_owned(), Some(upstream.to_owned()), breaker));
        self
    }

    /// The upstream's id for model `name` (declared with [`Builder::model`] or
    /// [`Builder::model_on`]): what goes on the wire (the body's `model`, the path on Bedrock
    /// and Vertex), while `name` stays the key of its breaker, metrics and chains. The same id
    /// on two upstreams (or twice on one, e.g. two regions) is two models with two breakers.
    /// Default: the name.
    pub fn model_id(mut self, name: &str, id: &str) -> Self {
        self.model_ids.push((name.to_owned(), id.to_owned()));
        self
    }

    /// Declare a fallback chain: a call for `name` walks `hops` in order. Hops that were not
    /// declared with `model` are declared on the default upstream with the default breaker.
    /// Naming a chain after its first model makes every call for that model walk the chain.
    pub fn chain<'a>(mut self, name: &str, hops: impl IntoIterator<Item = &'a str>) -> Self {
        let hops = hops.into_iter().map(HopSpec::model).collect();
        self.chains.push((name.to_owned(), hops, None));
        self
    }

    /// Like [`Builder::chain`], with a retry policy of its own.
    pub fn chain_with<'a>(
        mut self,
        name: &str,
        hops: impl IntoIterator<Item = &'a str>,
        policy: RetryPolicy,
    ) -> Self {
        let hops = hops.into_iter().map(HopSpec::model).collect();
        self.chains.push((name.to_owned(), hops, Some(policy)));
        self
    }

    /// Declare a chain whose hops may patch the request (see [`HopSpec`]); `policy: None`
    /// uses the default retry policy.
    pub fn chain_hops(
        mut self,
        name: &str,
        hops: impl IntoIterator<Item = HopSpec>,
        policy: Option<RetryPolicy>,
    ) -> Self {
        self.chains
            .push((name.to_owned(), hops.into_iter().collect(), policy));
        self
    }

    /// The breaker policy for models declared without one.
    pub fn breaker_defaults(mut self, config: BreakerConfig) -> Self {
        self.breaker_defaults = config;
        self
    }

    /// The retry policy for chains declared without one.
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The organization limits of an upstream (shared by its keys).
    pub fn limits(mut self, upstream: &str, limits: Limits) -> Self {
        self.limits.push((upstream.to_owned(), limits));
        self
    }

    /// Limits of one model class of an upstream (the API limits each class apart): `models`
    /// share buckets named `class`, separate from the upstream's default ones.
    pub fn class_limits<'a>(
        mut self,
        upstream: &str,
        class: &str,
        models: impl IntoIterator<Item = &'a str>,
        limits: Limits,
    ) -> Self {
        let models = models.into_iter().map(str::to_owned).collect();
        self.class_limits
            .push((upstream.to_owned(), class.to_owned(), models, limits));
        self
    }

    /// The organization of each of an upstream's keys, one label per key slot. Keys of one
    /// organization share buckets; keys of different ones get their own. Default: all one.
    pub fn key_organizations<'a>(
        mut self,
        upstream: &str,
        orgs: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        let orgs = orgs.into_iter().map(str::to_owned).collect();
        self.key_orgs.push((upstream.to_owned(), orgs));
        self
    }

    /// A feature's bulkhead: calls with `Call::feature(name)` get at most `max_concurrent` in
    /// flight and at most `budget_share` of every bucket.
    pub fn bulkhead(mut self, feature: &str, bulkhead: Bulkhead) -> Self {
        self.bulkheads.push((feature.to_owned(), bulkhead));
        self
    }

    /// Share (0..1) of every bucket that background calls may not use.
    pub fn interactive_reserve(mut self, share: f64) -> Self {
        self.interactive_reserve = share;
        self
    }

    /// How far behind ours the upstream's own rate-limit refill may run, because our calls take
    /// time to reach it (default 250 ms: a TLS handshake on a fresh connection). Each time an
    /// organization bucket starts to drain from full, its refill is counted from this much
    /// later, so a call that travels faster than the first one cannot arrive a fraction of a
    /// token early and earn a 429. Zero trusts the network to be instant.
    pub fn transit_allowance(mut self, allowance: Duration) -> Self {
        self.transit_allowance = allowance;
        self
    }

    /// Deduplicate calls that carry an idempotency key (`Call::idempotency_key`, or
    /// `Call::idempotent_by_content`): concurrent identical calls share one upstream call, and a
    /// finished one is answered again from its stored result (`Source::Replay`) for `ttl`.
    /// Successes and permanent rejections are stored; transient failures are not.
    ///
    /// Keys are scoped to the call's tenant ([`Call::tenant`]) and bound to the request: the same
    /// key with a different request is refused (`Error::InvalidCall`), never replayed. The table
    /// is bounded with the default limits of [`IdempotencyConfig::new`].
    pub fn idempotency(self, ttl: Duration) -> Self {
        self.idempotency_config(IdempotencyConfig::new(ttl))
    }

    /// Join a fleet: this runtime shares the organization budget, model health, conversation
    /// pins, idempotency keys and the response cache with the other instances of `fleet` (the
    /// `seawall` crate's `RedisCluster`). Without it everything stays in-process.
    pub fn fleet(mut self, fleet: Arc<dyn Fleet>) -> Self {
        self.fleet = Some(fleet);
        self
    }

    /// Bounds of the conversation pins (see [`Call::conversation`]): per primary model, at most
    /// `max_pins` pins, and at most `max_per_tenant` of one tenant. Default: 100 000 and 10 000.
    pub fn pin_limits(mut self, limits: PinLimits) -> Self {
        self.pins = limits;
        self
    }

    /// Like [`Builder::idempotency`], with the table's bounds chosen.
    pub fn idempotency_config(mut self, config: IdempotencyConfig) -> Self {
        self.idempotency = Some(config);
        self
    }

    /// A bounded response cache (`max_entries` answers, each kept `ttl`) of live answers, for
    /// chains whose `RetryPolicy::degrade` lists `Degrade::Cache`: served only when no model
    /// can answer, flagged `Source::Cache` with its age.
    pub fn response_cache(mut self, max_entries: u64, ttl: Duration) -> Self {
        self.response_cache = Some((max_entries, ttl));
        self
    }

    /// The durable queue for chains whose `RetryPolicy::degrade` lists `Degrade::Queue`: when
    /// no model can answer, the call is stored in `store` and answered at once with a job id
    /// (`Source::Queued`, HTTP 202). Jobs are replayed on the background lane as models recover,
    /// complete exactly once (`Seawall::job`, `Seawall::wait_job`, `Event::Job`) and expire after
    /// `config.ttl`. A durable store (the `seawall` crate's redb store) keeps them across
    /// restarts and crashes.
    pub fn queue(mut self, store: Arc<dyn JobStore>, config: QueueConfig) -> Self {
        self.queue = Some((store, config));
        self
    }

    /// The retry budget of every model: same-model re-attempts at most `ratio` x recent first
    /// attempts (plus a floor), so an outage cannot multiply the load.
    pub fn retry_budget(mut self, budget: RetryBudgetConfig) -> Self {
        self.retry_budget = budget;
        self
    }

    /// How many child restarts in what time the supervisor tolerates.
    pub fn restart_intensity(mut self, intensity: RestartIntensity) -> Self {
        self.intensity = intensity;
        self
    }

    /// Put each call's conversation (system prompt and messages) in its log line. Default
    /// `false`: prompts may hold personal data, and logs travel further than answers.
    pub fn log_prompts(mut self, on: bool) -> Self {
        self.log_prompts = on;
        self
    }

    /// A model's price (USD per million tokens), for the `seawall_cost_microdollars_total`
    /// metric and the cost in the call log line. Models without a price cost nothing.
    pub fn prices(mut self, model: &str, price: Price) -> Self {
        self.prices.push((model.to_owned(), price));
        self
    }

    /// The SLA window (default: 60 minutes in 12 buckets).
    pub fn sla_window(mut self, sla: SlaConfig) -> Self {
        self.sla = sla;
        self
    }

    /// The SLA target of every model and chain without one of its own.
    pub fn sla_target(mut self, target: SlaTarget) -> Self {
        self.sla_target = target;
        self
    }

    /// The SLA target of one model or chain (by name; a name that is both sets both).
    pub fn sla_target_for(mut self, name: &str, target: SlaTarget) -> Self {
        self.sla_targets.push((name.to_owned(), target));
        self
    }

    /// Alert thresholds (default: [`AlertConfig::default`]).
    pub fn alerts(mut self, alerts: AlertConfig) -> Self {
        self.alerts = alerts;
        self
    }

    /// Probe one model's health actively. Its breaker's half-open trials then go to probes
    /// only, so no user call is spent to find out the model is still down.
    pub fn probe(mut self, model: &str, probe: ProbeConfig) -> Self {
        self.probes.push((Some(model.to_owned()), probe));
        self
    }

    /// Probe every model (a model's own [`Builder::probe`] wins).
    pub fn probes(mut self, probe: ProbeConfig) -> Self {
        self.probes.push((None, probe));
        self
    }

    /// Start the runtime as a root actor tree.
    pub async fn spawn(self) -> Result<Seawall, Error> {
        self.start(None).await
    }

    /// Start the runtime under your own ractor supervisor: if seawall's supervisor gives up
    /// (restart intensity exceeded), yours receives `ActorFailed`.
    pub async fn spawn_linked(self, supervisor: ActorCell) -> Result<Seawall, Error> {
        self.start(Some(supervisor)).await
    }

    async fn start(self, parent: Option<ActorCell>) -> Result<Seawall, Error> {
        let fleet = self.fleet.clone();
        let idempotency_ttl = self.idempotency.map_or(Duration::ZERO, |c| c.ttl);
        let self_cache = self.response_cache;
        if self_cache.is_some_and(|(n, ttl)| n == 0 || ttl.is_zero()) {
            return Err(Error::Config(
                "response_cache: max_entries and ttl must be greater than zero".into(),
            ));
        }
        let queue = self.queue.clone();
        if let Some((_, config)) = &queue {
            config
                .validate()
                .map_err(|e| Error::Config(format!("queue {e}")))?;
        }
        let plan = self.plan()?;
        if queue.is_none() {
            if let Some(c) = plan
                .chains
                .values()
                .find(|c| c.policy.degrade.contains(&Degrade::Queue))
            {
                return Err(Error::Config(format!(
                    "chain {:?} may degrade to the queue, but no queue is configured: add \
                     .queue(store, config)",
                    c.name
                )));
            }
        }
        let (events, _) = broadcast::channel(1024);
        let runner: Arc<OnceLock<Runner>> = Arc::new(OnceLock::new());
        let directory = Arc::new(Directory::default());
        let mut chain_list: Vec<&Arc<Chain>> = plan.chains.values().collect();
        chain_list.sort_by_key(|c| c.id);
        // Entry chains are the ones callers use: named chains, and models no chain falls back to.
        let in_named: std::collections::HashSet<usize> = chain_list
            .iter()
            .filter(|c| plan.named.contains(&c.name))
            .flat_map(|c| c.hops.iter().copied())
            .collect();
        let target_of = |name: &str| {
            plan.sla_targets
                .get(name)
                .copied()
                .unwrap_or(plan.sla_target)
        };
        let latency = Arc::new(crate::latency::LatencyBook::new(plan.models.len()));
        let monitor = MonitorArgs {
            models: plan
                .models
                .iter()
                .enumerate()
                .map(|(id, m)| MonitoredModel {
                    name: m.name.clone(),
                    id: m.id.clone(),
                    upstream: m.upstream,
                    class: m.class,
                    probe: plan.probes[id],
                    target: target_of(&m.name),
                    price: plan.prices[id],
                })
                .collect(),
            chains: chain_list
                .iter()
                .map(|c| MonitoredChain {
                    name: c.name.clone(),
                    hops: c.hops.clone(),
                    entry: plan.named.contains(&c.name)
                        || c.hops.iter().all(|h| !in_named.contains(h)),
                    target: target_of(&c.name),
                })
                .collect(),
            sla: plan.sla,
            alerts: plan.alerts,
            upstreams: plan.upstreams.clone(),
            directory: directory.clone(),
            events: events.clone(),
            fleet: fleet.clone(),
            latency: Arc::clone(&latency),
        };
        let args = SupervisorArgs {
            breakers: plan
                .models
                .iter()
                .zip(&plan.breakers)
                .zip(&plan.probes)
                .map(|((m, b), p)| {
                    (
                        m.name.clone(),
                        *b,
                        plan.retry_budget,
                        p.as_ref().map(ProbeConfig::grace),
                    )
                })
                .collect(),
            governor: crate::governor::GovernorSetup {
                rules: plan.governor,
                fleet: fleet.clone(),
                // A quarantined key is checked with a token count for the first model its
                // upstream serves.
                key_checkers: plan
                    .upstreams
                    .iter()
                    .enumerate()
                    .map(|(i, u)| crate::governor::KeyChecker {
                        upstream: Arc::clone(u),
                        model: plan
                            .models
                            .iter()
                            .find(|m| m.upstream == i)
                            .map(|m| m.id.clone()),
                    })
                    .collect(),
            },
            monitor,
            idempotency: plan.idempotency,
            pins: plan.pins,
            queue: queue.map(|(store, config)| QueueArgs {
                consumer: store.consumer().unwrap_or_else(crate::queue::new_consumer),
                store,
                config,
                events: events.clone(),
                runner: runner.clone(),
            }),
            directory: directory.clone(),
            events: events.clone(),
            intensity: plan.intensity,
        };
        let spawned = match parent {
            Some(p) => Actor::spawn_linked(None, Supervisor, args, p).await,
            None => Actor::spawn(None, Supervisor, args).await,
        };
        let (supervisor, _) =
            spawned.map_err(|e| Error::Internal(format!("could not start the supervisor: {e}")))?;
        let cache = self_cache.map(|(n, ttl)| Arc::new(ResponseCache::new(n, ttl)));
        let shared = Arc::new(Shared {
            cache,
            directory,
            supervisor: supervisor.clone(),
            upstreams: plan.upstreams,
            upstream_names: plan.upstream_names,
            models: plan.models,
            prices: plan.prices,
            log_prompts: plan.log_prompts,
            in_flight: Arc::new(InFlight::default()),
            seed: AtomicU64::new(seed()),
            panic_next: AtomicBool::new(false),
            fleet: fleet.clone(),
            latency,
        });
        if let Some(fleet) = &fleet {
            // Another instance's breaker news goes to this instance's breaker of that model.
            let directory = Arc::clone(&shared.directory);
            let ids = plan.model_ids.clone();
            fleet.watch(Box::new(move |news: HealthNews| {
                let model = match &news {
                    HealthNews::Opened { model, .. } | HealthNews::Closed { model, .. } => model,
                };
                if let Some(b) = ids.get(model).and_then(|&id| directory.breaker(id)) {
                    let _ = b.cast(BreakerMsg::Peer(news));
                }
            }));
        }
        let sw = Seawall {
            inner: Arc::new(Inner {
                shared,
                chains: plan.chains,
                model_ids: plan.model_ids,
                feature_ids: plan.feature_ids,
                supervisor,
                events,
                accepting: AtomicBool::new(true),
                idempotency_ttl,
            }),
        };
        // Replays run through this very runtime; weak, so the queue keeps nothing alive.
        let weak = Arc::downgrade(&sw.inner);
        let run: Runner = Arc::new(move |call: Call| {
            let weak = weak.clone();
            Box::pin(async move {
                match weak.upgrade() {
                    Some(inner) => Seawall { inner }.complete(call).await,
                    None => Err(Error::ShuttingDown),
                }
            })
        });
        let _ = runner.set(run);
        Ok(sw)
    }

    /// Resolve names and validate everything before any actor starts.
    fn plan(self) -> Result<Plan, Error> {
        let cfg = |m: String| Error::Config(m);
        if self.upstreams.is_empty() {
            return Err(cfg("no upstream: add one with .upstream(name, ..)".into()));
        }
        let mut upstream_ids = HashMap::new();
        for (i, (name, _)) in self.upstreams.iter().enumerate() {
            if upstream_ids.insert(name.clone(), i).is_some() {
                return Err(cfg(format!("upstream {name:?} is declared twice")));
            }
        }
        self.policy
            .validate()
            .map_err(|e| cfg(format!("retry policy: {e}")))?;
        self.retry_budget
            .validate()
            .map_err(|e| cfg(format!("retry_budget.{e}")))?;
        if let Some(c) = &self.idempotency {
            c.validate().map_err(|e| cfg(format!("idempotency {e}")))?;
        }
        self.pins.validate().map_err(|e| cfg(format!("pins {e}")))?;

        let mut models: Vec<ModelInfo> = Vec::new();
        let mut breakers: Vec<BreakerConfig> = Vec::new();
        let mut model_ids: HashMap<String, usize> = HashMap::new();
        for (name, upstream, breaker) in self.models {
            if name.is_empty() {
                return Err(cfg("a model name is empty".into()));
            }
            if model_ids.contains_key(&name) {
                return Err(cfg(format!("model {name:?} is declared twice")));
            }
            let up = match &upstream {
                None => 0,
                Some(u) => *upstream_ids.get(u).ok_or_else(|| {
                    cfg(format!(
                        "model {name:?} names upstream {u:?}, which is not declared"
                    ))
                })?,
            };
            let breaker = breaker.unwrap_or(self.breaker_defaults);
            breaker
                .validate()
                .map_err(|e| cfg(format!("breaker of model {name:?}: {e}")))?;
            model_ids.insert(name.clone(), models.len());
            models.push(ModelInfo {
                id: name.clone(),
                name,
                upstream: up,
                class: 0,
            });
            breakers.push(breaker);
        }
        for (name, id) in self.model_ids {
            let Some(&m) = model_ids.get(&name) else {
                return Err(cfg(format!(
                    "model_id names model {name:?}, which is not declared: declare it with \
                     .model_on(..) first"
                )));
            };
            if id.trim().is_empty() {
                return Err(cfg(format!("the id of model {name:?} is empty")));
            }
            models[m].id = id;
        }
        let mut chain_specs = Vec::new();
        for (name, hops, policy) in self.chains {
            if hops.is_empty() {
                return Err(cfg(format!("chain {name:?} has no models")));
            }
            let mut ids = Vec::new();
            let mut patches = Vec::new();
            for (i, HopSpec { model: hop, patch }) in hops.into_iter().enumerate() {
                let patch = match patch {
                    None => None,
                    Some(serde_json::Value::Object(map)) if !map.contains_key("model") => Some(map),
                    Some(serde_json::Value::Object(_)) => {
                        return Err(cfg(format!(
                            "chain {name:?} hop {i}: a patch may not set `model`: name the hop's model instead"
                        )))
                    }
                    Some(other) => {
                        return Err(cfg(format!(
                            "chain {name:?} hop {i}: a patch must be a JSON object, got {other}"
                        )))
                    }
                };
                let id = match model_ids.get(&hop) {
                    Some(&id) => id,
                    None => {
                        self.breaker_defaults
                            .validate()
                            .map_err(|e| cfg(format!("default breaker: {e}")))?;
                        model_ids.insert(hop.clone(), models.len());
                        models.push(ModelInfo {
                            id: hop.clone(),
                            name: hop,
                            upstream: 0,
                            class: 0,
                        });
                        breakers.push(self.breaker_defaults);
                        models.len() - 1
                    }
                };
                // The same model twice only makes sense with different patches.
                if ids
                    .iter()
                    .zip(&patches)
                    .any(|(&other, p): (&usize, &Option<_>)| other == id && *p == patch)
                {
                    return Err(cfg(format!(
                        "chain {name:?} names model {:?} twice with the same request",
                        models[id].name
                    )));
                }
                ids.push(id);
                patches.push(patch);
            }
            if let Some(p) = &policy {
                p.validate()
                    .map_err(|e| cfg(format!("retry policy of chain {name:?}: {e}")))?;
            }
            chain_specs.push((name, ids, patches, policy));
        }
        if models.is_empty() {
            return Err(cfg("no model: add one with .model(..) or .chain(..)".into()));
        }
        // Every model is also a one-hop chain of its own; named chains override.
        let mut chains: HashMap<String, Chain> = models
            .iter()
            .enumerate()
            .map(|(id, m)| {
                let chain = Chain {
                    id: 0,
                    name: m.name.clone(),
                    hops: vec![id],
                    patches: vec![None],
                    policy: Arc::new(self.policy.clone()),
                };
                (m.name.clone(), chain)
            })
            .collect();
        let mut named = std::collections::HashSet::new();
        for (name, hops, patches, policy) in chain_specs {
            if !named.insert(name.clone()) {
                return Err(cfg(format!("chain {name:?} is declared twice")));
            }
            let chain = Chain {
                id: 0,
                name: name.clone(),
                hops,
                patches,
                policy: Arc::new(policy.unwrap_or_else(|| self.policy.clone())),
            };
            chains.insert(name, chain);
        }
        // Chain ids in name order: the monitor's chain list is indexed by them.
        let mut names: Vec<String> = chains.keys().cloned().collect();
        names.sort();
        let chains: HashMap<String, Arc<Chain>> = names
            .into_iter()
            .enumerate()
            .filter_map(|(id, name)| {
                let mut chain = chains.remove(&name)?;
                chain.id = id;
                Some((name, Arc::new(chain)))
            })
            .collect();

        let mut prices = vec![None; models.len()];
        for (model, price) in self.prices {
            price
                .validate()
                .map_err(|e| cfg(format!("price of model {model:?}: {e}")))?;
            let id = *model_ids.get(&model).ok_or_else(|| {
                cfg(format!(
                    "prices names model {model:?}, which is not declared"
                ))
            })?;
            prices[id] = Some(price);
        }
        let mut probes: Vec<Option<ProbeConfig>> = vec![None; models.len()];
        let mut all_probe = None;
        for (model, probe) in self.probes {
            probe
                .validate()
                .map_err(|e| cfg(format!("probe: probe {e}")))?;
            match model {
                None => all_probe = Some(probe),
                Some(model) => {
                    let id = *model_ids.get(&model).ok_or_else(|| {
                        cfg(format!(
                            "probe names model {model:?}, which is not declared"
                        ))
                    })?;
                    probes[id] = Some(probe);
                }
            }
        }
        for p in &mut probes {
            *p = p.or(all_probe);
        }
        self.sla.validate().map_err(|e| cfg(format!("sla.{e}")))?;
        self.alerts
            .validate()
            .map_err(|e| cfg(format!("alerts.{e}")))?;
        self.sla_target
            .validate()
            .map_err(|e| cfg(format!("sla target: {e}")))?;
        let mut sla_targets = HashMap::new();
        for (name, target) in self.sla_targets {
            target
                .validate()
                .map_err(|e| cfg(format!("sla target of {name:?}: {e}")))?;
            if !chains.contains_key(&name) && !model_ids.contains_key(&name) {
                return Err(cfg(format!(
                    "sla_target_for names {name:?}, which is neither a model nor a chain"
                )));
            }
            sla_targets.insert(name, target);
        }

        let mut budgets: Vec<UpstreamBudget> = self
            .upstreams
            .iter()
            .map(|(name, up)| {
                let keys = up.key_count().max(1);
                UpstreamBudget {
                    name: name.clone(),
                    class_limits: vec![Limits::default()],
                    key_labels: (0..keys).map(|k| up.key_label(k)).collect(),
                    key_orgs: vec![0; keys],
                    org_names: vec!["default".into()],
                    class_names: vec!["default".into()],
                }
            })
            .collect();
        let upstream_id = |upstream: &str, what: &str| {
            upstream_ids.get(upstream).copied().ok_or_else(|| {
                cfg(format!(
                    "{what} name upstream {upstream:?}, which is not declared"
                ))
            })
        };
        for (upstream, limits) in self.limits {
            budgets[upstream_id(&upstream, "limits")?].class_limits[0] = limits;
        }
        for (upstream, class, class_models, limits) in self.class_limits {
            let u = upstream_id(&upstream, "class_limits")?;
            budgets[u].class_limits.push(limits);
            budgets[u].class_names.push(class.clone());
            let class_id = budgets[u].class_limits.len() - 1;
            for m in class_models {
                let id = *model_ids.get(&m).ok_or_else(|| {
                    cfg(format!(
                        "class_limits {class:?} names model {m:?}, which is not declared"
                    ))
                })?;
                if models[id].upstream != u {
                    return Err(cfg(format!(
                        "class_limits {class:?}: model {m:?} is not on upstream {upstream:?}"
                    )));
                }
                models[id].class = class_id;
            }
        }
        for (upstream, orgs) in self.key_orgs {
            let u = upstream_id(&upstream, "key_organizations")?;
            let keys = budgets[u].key_labels.len();
            if orgs.len() != keys {
                return Err(cfg(format!(
                    "key_organizations of {upstream:?}: {} labels for {keys} keys",
                    orgs.len()
                )));
            }
            let mut names: Vec<&String> = Vec::new();
            budgets[u].key_orgs = orgs
                .iter()
                .map(|o| match names.iter().position(|n| *n == o) {
                    Some(i) => i,
                    None => {
                        names.push(o);
                        names.len() - 1
                    }
                })
                .collect();
            budgets[u].org_names = names.into_iter().cloned().collect();
        }
        let mut feature_ids = HashMap::new();
        for (i, (name, b)) in self.bulkheads.iter().enumerate() {
            b.validate()
                .map_err(|e| cfg(format!("bulkhead {name:?}: {e}")))?;
            if feature_ids.insert(name.clone(), i).is_some() {
                return Err(cfg(format!("bulkhead {name:?} is declared twice")));
            }
        }
        crate::policy::lanes::validate_interactive_reserve(self.interactive_reserve)
            .map_err(|e| cfg(e.to_string()))?;
        Ok(Plan {
            upstream_names: self.upstreams.iter().map(|(n, _)| n.clone()).collect(),
            upstreams: self.upstreams.into_iter().map(|(_, u)| u).collect(),
            named,
            prices,
            probes,
            sla: self.sla,
            sla_target: self.sla_target,
            sla_targets,
            alerts: self.alerts,
            log_prompts: self.log_prompts,
            models,
            breakers,
            model_ids,
            chains,
            governor: GovernorArgs {
                upstreams: budgets,
                bulkheads: self.bulkheads,
                interactive_reserve: self.interactive_reserve,
                transit_allowance: self.transit_allowance,
                shared: false,
            },
            feature_ids,
            retry_budget: self.retry_budget,
            idempotency: self.idempotency,
            pins: self.pins,
            intensity: self.intensity,
        })
    }
}

struct Plan {
    upstreams: Vec<Arc<dyn Upstream>>,
    upstream_names: Vec<String>,
    /// Names of the chains declared with `.chain*` (not a model's own one-hop chain).
    named: std::collections::HashSet<String>,
    prices: Vec<Option<Price>>,
    probes: Vec<Option<ProbeConfig>>,
    sla: SlaConfig,
    sla_target: SlaTarget,
    sla_targets: HashMap<String, SlaTarget>,
    alerts: AlertConfig,
    log_prompts: bool,
    models: Vec<ModelInfo>,
    breakers: Vec<BreakerConfig>,
    model_ids: HashMap<String, usize>,
    chains: HashMap<String, Arc<Chain>>,
    governor: GovernorArgs,
    feature_ids: HashMap<String, usize>,
    retry_budget: RetryBudgetConfig,
    idempotency: Option<IdempotencyConfig>,
    pins: PinLimits,
    intensity: RestartIntensity,
}

fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x5EED)
}
