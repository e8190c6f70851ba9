//! The validation rules: everything [`Config::validate`] checks without the environment, each
//! error at the exact key path with what to fix. The core's own rules (breaker, retry, backoff)
//! are not written twice: their `Invalid { field, problem }` is mapped to the TOML key through
//! one field-to-key table ([`field_error`]).

use std::collections::HashSet;

use seawall_actors::policy::invalid::Invalid;
use seawall_actors::policy::lanes::{validate_interactive_reserve, Bulkhead};

use super::env::env_name_problem;
use super::error::invalid;
use super::webhook::webhook_url_problem;
use super::{
    BreakerSection, ClientToken, ClusterSection, Config, ConfigError, DegradeKind, FallbackEntry,
    ProbeSection, RateLimits, RetrySection, UpstreamKind, MIN_HEADER_BYTES, MIN_TOKEN_CHARS,
};

impl Config {
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
        // The runtime's own rules, over its defaults: an unset key cannot be the bad one.
        self.retry_budget
            .to_config()
            .validate()
            .map_err(|e| invalid(format!("retry_budget.{}", e.field), e.problem))?;
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
            if u.kind.takes_api_keys() {
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
            } else {
                let source = match u.kind {
                    UpstreamKind::Bedrock => {
                        "the AWS default credential chain (AWS_ACCESS_KEY_ID, \
                         AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN; profile files with \
                         `profile`; web identity; ECS; IMDS)"
                    }
                    _ => {
                        "Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS, \
                         gcloud's application_default_credentials.json, the metadata server)"
                    }
                };
                for (key, set) in [
                    ("api_key_env", u.api_key_env.is_some()),
                    ("api_key_envs", !u.api_key_envs.is_empty()),
                    ("key_organizations", u.key_organizations.is_some()),
                ] {
                    if set {
                        return Err(invalid(
                            at(key),
                            format!(
                                "a {} upstream takes no API keys: its credentials come from \
                                 {source}; remove {key}",
                                u.kind.as_str()
                            ),
                        ));
                    }
                }
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
            self.validate_upstream_kind(i)?;
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

    /// The keys that belong to some kinds only, and what bedrock and vertex require.
    fn validate_upstream_kind(&self, i: usize) -> Result<(), ConfigError> {
        let Some(u) = self.upstreams.get(i) else {
            return Ok(());
        };
        let at = |k: &str| format!("upstreams[{i}].{k}");
        let k = u.kind;
        let only = |set: bool, key: &str, kinds: &str| {
            if set {
                Err(invalid(
                    at(key),
                    format!(
                        "only applies to upstreams of kind = {kinds}, not \"{}\"",
                        k.as_str()
                    ),
                ))
            } else {
                Ok(())
            }
        };
        use UpstreamKind::{Anthropic, AzureOpenai, Bedrock, Openai, Vertex};
        only(
            u.organization.is_some() && k != Openai,
            "organization",
            "\"openai\"",
        )?;
        only(
            u.api_version.is_some() && k != AzureOpenai,
            "api_version",
            "\"azure_openai\"",
        )?;
        only(
            u.max_tokens_field.is_some() && !k.is_openai(),
            "max_tokens_field",
            "\"openai\" or \"azure_openai\"",
        )?;
        if k == AzureOpenai && u.base_url.is_none() {
            return Err(invalid(
                at("base_url"),
                "missing: an azure_openai upstream needs its resource's endpoint \
                 (base_url = \"https://RESOURCE.openai.azure.com\")",
            ));
        }
        only(
            u.version.is_some() && k != Anthropic,
            "version",
            "\"anthropic\"",
        )?;
        only(u.auth.is_some() && k != Anthropic, "auth", "\"anthropic\"")?;
        only(
            u.beta.is_some() && k.is_openai(),
            "beta",
            "\"anthropic\", \"bedrock\" or \"vertex\"",
        )?;
        only(
            u.profile.is_some() && k != Bedrock,
            "profile",
            "\"bedrock\"",
        )?;
        only(u.project.is_some() && k != Vertex, "project", "\"vertex\"")?;
        only(
            u.region.is_some() && k.takes_api_keys(),
            "region",
            "\"bedrock\" or \"vertex\"",
        )?;
        if k.takes_api_keys() {
            return Ok(());
        }
        let example = if k == Bedrock {
            "\"us-east-1\""
        } else {
            "\"us-east5\" (or \"global\")"
        };
        match &u.region {
            None => {
                return Err(invalid(
                    at("region"),
                    format!(
                        "missing: a {} upstream needs its region, e.g. region = {example}",
                        k.as_str()
                    ),
                ))
            }
            Some(r) if !is_region(r) => {
                return Err(invalid(
                    at("region"),
                    format!(
                        "{r:?} is not a region name (lower-case letters, digits and dashes), \
                         e.g. region = {example}"
                    ),
                ))
            }
            Some(_) => {}
        }
        if k == Vertex {
            match &u.project {
                None => {
                    return Err(invalid(
                        at("project"),
                        "missing: a vertex upstream needs its Google Cloud project id, e.g. \
                         project = \"my-project\"",
                    ))
                }
                Some(p) if !is_project(p) => {
                    return Err(invalid(
                        at("project"),
                        format!(
                            "{p:?} is not a project id (lower-case letters, digits and dashes; \
                             a legacy id may have a domain prefix with `.` and `:`)"
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
        if let Some(p) = &u.profile {
            if p.is_empty() || p.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(invalid(
                    at("profile"),
                    format!(
                        "{p:?} is not a profile name: give the name of a profile in \
                         ~/.aws/config (or ~/.aws/credentials)"
                    ),
                ));
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
            if let Some(id) = &m.id {
                if let Some(problem) = model_id_problem(id) {
                    return Err(invalid(at("id"), problem));
                }
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
            Bulkhead {
                max_concurrent: b.max_concurrent,
                budget_share: b.budget_share,
            }
            .validate()
            .map_err(|e| invalid(at(e.field), e.problem))?;
        }
        if let Some(r) = self.governor.interactive_reserve {
            validate_interactive_reserve(r)
                .map_err(|e| invalid(format!("governor.{}", e.field), e.problem))?;
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
        if self
            .gateway
            .default_max_tokens
            .is_some_and(|n| n == 0 || n > u64::from(u32::MAX))
        {
            return Err(invalid(
                "gateway.default_max_tokens",
                "must be a whole number from 1 (an answer's length limit in tokens)",
            ));
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
        // The runtime's own rules for [sla] and [alerts]; only the names and the webhook are
        // the file's.
        let sla = &self.sla;
        self.sla_config().validate().map_err(|e| {
            // A window too short for its buckets is the buckets' fault when only they are set.
            let field = match e.field {
                "window" if sla.window.is_none() && sla.buckets.is_some() => "buckets",
                f => f,
            };
            invalid(format!("sla.{field}"), format!("{} {}", e.field, e.problem))
        })?;
        let target_error = |prefix: &str, e: Invalid| {
            invalid(
                format!("{prefix}.{}", e.field),
                format!("{} {}", e.field, e.problem),
            )
        };
        self.sla_target()
            .validate()
            .map_err(|e| target_error("sla", e))?;
        let declared: HashSet<&str> = self.models.iter().map(|m| m.name.as_str()).collect();
        for (name, t) in self.sla_targets() {
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
            t.validate().map_err(|e| target_error(&at, e))?;
        }
        let a = &self.alerts;
        a.to_config().validate().map_err(|e| {
            invalid(
                format!("alerts.{}", e.field),
                format!("{} {}", e.field, e.problem),
            )
        })?;
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

impl FallbackEntry {
    fn patched(&self) -> bool {
        matches!(self, FallbackEntry::Hop(h) if !h.patch.is_empty() || !h.remove.is_empty())
    }
}

impl ClientToken {
    /// What is wrong with this token, if anything (it is never repeated).
    pub(super) fn problem(&self) -> Option<String> {
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

/// A region as AWS and Google spell them: `us-east-1`, `us-east5`, `global`.
fn is_region(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 40
        && r.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !r.starts_with('-')
        && !r.ends_with('-')
}

/// A Google Cloud project id (`my-project-123`, or a legacy `example.com:my-project`): it goes
/// into the URL path.
fn is_project(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 100
        && p.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | ':'))
}

/// What is wrong with a model's `id`, if anything: it goes into a request body or URL path.
fn model_id_problem(id: &str) -> Option<String> {
    if id.is_empty() {
        Some("must not be empty: leave it out to use the model's name".into())
    } else if id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some(format!(
            "{id:?} contains whitespace or control characters: give the upstream's model id, \
             e.g. \"anthropic.claude-sonnet-4-5-20250929-v1:0\""
        ))
    } else {
        None
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
