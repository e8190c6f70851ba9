//! `seawall.toml`: every key parsed, the defaults, and errors that name their key and never a
//! secret.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use seawall::config::{
    Config, ConfigError, LogFormat, UpstreamKind, DEFAULT_CACHE_ENTRIES, DEFAULT_CACHE_TTL,
    DEFAULT_MAX_BODY_BYTES,
};
use seawall::core::{
    AlertConfig, AlertKind, Backoff, BreakerConfig, Call, Estimate, Event, Jitter, OpenBackoff,
    Price, ProbeConfig, ProbeKind, RetryBudgetConfig, RetryPolicy, SlaConfig, SlaTarget, Source,
    Trip, WindowKind,
};
use seawall::sim::Scenario;
use support::eventually;
use support::sim::sim;

/// The smallest useful config, with a placeholder for more keys.
fn minimal(extra: &str) -> String {
    format!(
        r#"
[[upstreams]]
name = "anthropic"
api_key_env = "SEAWALL_TEST_KEY"

[[models]]
name = "m1"
{extra}
"#
    )
}

fn err(toml: &str) -> ConfigError {
    match Config::from_toml(toml) {
        Ok(_) => panic!("expected an error for:\n{toml}"),
        Err(e) => e,
    }
}

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |k| map.get(k).cloned()
}

#[test]
fn the_example_parses_and_every_key_lands() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/seawall.toml");
    let c = Config::from_file(&path).unwrap();
    assert_eq!(c.listen, "127.0.0.1:8700".parse().unwrap());

    let a = &c.upstreams[0];
    assert_eq!(a.name, "anthropic");
    assert_eq!(a.kind, UpstreamKind::Anthropic);
    assert_eq!(a.base_url.as_deref(), Some("https://api.anthropic.com"));
    assert_eq!(a.api_key_envs, ["ANTHROPIC_API_KEY", "ANTHROPIC_API_KEY_2"]);
    assert_eq!(
        a.key_organizations.as_deref(),
        Some(&["org-main".to_owned(), "org-main".to_owned()][..])
    );
    assert_eq!(a.version.as_deref(), Some("2023-06-01"));
    assert_eq!(a.connect_timeout, Some(Duration::from_secs(5)));
    assert_eq!(a.pool_idle_timeout, Some(Duration::from_secs(90)));
    let o = &c.upstreams[1];
    assert_eq!(o.kind, UpstreamKind::Openai);
    assert_eq!(o.api_key_env.as_deref(), Some("OPENAI_API_KEY"));

    assert_eq!(
        c.chain_of("claude-sonnet-4-5").unwrap(),
        ["claude-sonnet-4-5", "claude-haiku-4-5", "gpt-4o"]
    );
    assert_eq!(c.chain_of("gpt-4o").unwrap(), ["gpt-4o"]);
    assert_eq!(c.chain_of("nope"), None);
    assert_eq!(c.models[1].class.as_deref(), Some("haiku"));
    assert_eq!(c.upstream_of(&c.models[2]), "openai");

    let l = &c.limits["anthropic"];
    assert_eq!(
        (l.rpm, l.input_tpm, l.output_tpm),
        (Some(50), Some(40_000), Some(8_000))
    );
    assert_eq!(l.classes["haiku"].input_tpm, Some(50_000));
    assert_eq!(c.limits["openai"].rpm, Some(500));

    let defaults = c.breaker_defaults();
    assert_eq!(
        defaults,
        BreakerConfig {
            window: WindowKind::Count(20),
            failure_rate: 50.0,
            slow_call_rate: 80.0,
            slow_call_duration: Duration::from_secs(20),
            min_calls: 5,
            half_open_calls: 3,
            open_for: Duration::from_secs(30),
            open_backoff: Some(OpenBackoff {
                multiplier: 2.0,
                max: Duration::from_secs(300),
            }),
            max_wait_in_half_open: Some(Duration::from_secs(120)),
            trip: Trip::FailureRate,
            rate_limit_is_failure: false,
        }
    );
    // The model's [models.breaker] keys over [breaker].
    let sonnet = c.breaker_for(&c.models[0]);
    assert_eq!(sonnet.failure_rate, 40.0);
    assert_eq!(sonnet.open_for, Duration::from_secs(20));
    assert_eq!(sonnet.slow_call_rate, 80.0, "inherited");

    assert_eq!(
        c.retry_defaults(),
        RetryPolicy {
            backoff: Backoff {
                base: Duration::from_millis(500),
                cap: Duration::from_secs(8),
                max_attempts: 3,
                jitter: Jitter::Full,
            },
            deadline: Duration::from_secs(120),
            attempt_timeout: Duration::from_secs(60),
            first_token_timeout: Duration::from_secs(30),
            min_attempt: Duration::from_millis(200),
            max_attempts: 6,
            estimate: Estimate::Heuristic,
            refusal_fallback: false,
            degrade: Vec::new(),
            hedge: seawall::core::Hedge::Auto,
            hedge_streams: false,
            max_hedges: 1,
            idle_timeout: Duration::from_secs(30),
            learned_timeouts: true,
        }
    );
    assert_eq!(c.retry_for(&c.models[0]).deadline, Duration::from_secs(90));
    // Sonnet's chain degrades to the cache, then its static answer; haiku's not at all.
    assert_eq!(
        c.retry_for(&c.models[0]).degrade,
        vec![
            seawall::core::Degrade::Cache,
            seawall::core::Degrade::Static(
                "We are experiencing heavy load; please try again in a minute.".into()
            )
        ]
    );
    assert!(c.retry_for(&c.models[1]).degrade.is_empty());
    let cache = c.cache.expect("[cache]");
    assert_eq!(cache.max_entries, Some(10_000));
    assert_eq!(cache.ttl, Some(Duration::from_secs(600)));
    assert!(c.queue.is_none(), "commented out in the example");

    assert_eq!(
        c.retry_budget.to_config(),
        RetryBudgetConfig {
            ratio: 0.2,
            window: Duration::from_secs(10),
            min_per_sec: 1.0,
        }
    );
    assert_eq!(c.bulkheads[0].name, "batch-summaries");
    assert_eq!(c.bulkheads[0].max_concurrent, Some(4));
    assert_eq!(c.bulkheads[0].budget_share, Some(0.3));
    assert_eq!(c.governor.interactive_reserve, Some(0.2));
    assert_eq!(
        c.governor.transit_allowance,
        Some(Duration::from_millis(250))
    );
    assert_eq!(c.supervisor.max_restarts, Some(10));
    assert_eq!(c.supervisor.within, Some(Duration::from_secs(10)));
    assert_eq!(c.gateway.tokens.len(), 1);
    assert_eq!(c.gateway.max_body_bytes(), 32 * 1024 * 1024);
    assert_eq!(c.gateway.shutdown_grace(), Duration::from_secs(30));
    assert_eq!(c.gateway.idempotency_ttl, Some(Duration::from_secs(600)));

    // Observability: probes, SLA, alerts, prices, logs.
    assert_eq!(
        c.probe_for(&c.models[0]),
        Some(ProbeConfig {
            interval: Duration::from_secs(15),
            timeout: Duration::from_secs(10),
            kind: ProbeKind::Message,
        }),
        "sonnet heads a chain with fallbacks; its own interval"
    );
    assert_eq!(c.probe_for(&c.models[1]), None, "haiku has no fallbacks");
    assert_eq!(
        c.sla_config(),
        SlaConfig {
            window: Duration::from_secs(3600),
            buckets: 12,
        }
    );
    assert_eq!(
        c.sla_target(),
        SlaTarget {
            availability: 99.5,
            p99: Duration::from_secs(30),
            max_consecutive_failures: Some(10),
            min_calls: 20,
        }
    );
    assert_eq!(
        c.sla_targets(),
        vec![(
            "claude-sonnet-4-5".to_owned(),
            SlaTarget {
                availability: 99.9,
                p99: Duration::from_secs(20),
                max_consecutive_failures: Some(10),
                min_calls: 20,
            }
        )]
    );
    assert_eq!(c.alerts.to_config(), AlertConfig::default());
    assert!(c.alerts.webhook_url.is_none(), "commented out");
    assert_eq!(
        c.models[0].price.map(|p| p.to_price()),
        Some(Price {
            input_per_mtok: 3.0,
            output_per_mtok: 15.0,
        })
    );
    assert_eq!(c.models[2].price, None);
    assert_eq!(c.log.format, Some(LogFormat::Pretty));
    assert_eq!(c.log.prompts, Some(false));
}

#[tokio::test]
async fn the_quick_start_config_needs_only_the_two_variables_the_readme_names() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/gateway.toml");
    let c = Config::from_file(&path).unwrap();
    assert_eq!(
        c.chain_of("claude-sonnet-4-5").unwrap(),
        ["claude-sonnet-4-5", "claude-haiku-4-5"]
    );
    assert!(c.cache.is_none(), "the cache runs on its defaults");
    assert_eq!(
        c.response_cache(),
        Some((DEFAULT_CACHE_ENTRIES, DEFAULT_CACHE_TTL))
    );
    assert_eq!(
        c.probe_for(&c.models[0]).map(|p| (p.interval, p.kind)),
        Some((Duration::from_secs(30), ProbeKind::Message))
    );
    assert_eq!(c.gateway.token_envs, ["SEAWALL_TOKEN"]);
    let rt = c
        .spawn_with_env(env(&[
            ("ANTHROPIC_API_KEY", "sk-ant-quickstart-key-aaaa"),
            ("SEAWALL_TOKEN", "choose-a-long-token"),
        ]))
        .await
        .unwrap();
    assert_eq!(rt.tokens.len(), 1);
    assert_eq!(rt.tokens[0].expose(), "choose-a-long-token");
    rt.seawall.shutdown(Duration::from_millis(10)).await;
    // Without the token variable, the error names it.
    let e = c
        .spawn_with_env(env(&[("ANTHROPIC_API_KEY", "sk-ant-quickstart-key-aaaa")]))
        .await
        .unwrap_err();
    assert_eq!(e.key(), Some("gateway.token_envs[0]"), "{e}");
    assert!(e.to_string().contains("SEAWALL_TOKEN is not set"), "{e}");
}

#[test]
fn cache_degradation_without_a_cache_section_uses_the_defaults() {
    let c = Config::from_toml(&minimal("degrade = [\"cache\"]")).unwrap();
    assert!(c.cache.is_none());
    assert_eq!(
        c.response_cache(),
        Some((DEFAULT_CACHE_ENTRIES, DEFAULT_CACHE_TTL))
    );
    assert_eq!(
        c.retry_for(&c.models[0]).degrade,
        vec![seawall::core::Degrade::Cache]
    );
    // A section's own keys still win, and nothing that uses no cache gets one.
    let c = Config::from_toml(&minimal("degrade = [\"cache\"]\n[cache]\nttl = \"1m\"")).unwrap();
    assert_eq!(
        c.response_cache(),
        Some((DEFAULT_CACHE_ENTRIES, Duration::from_secs(60)))
    );
    assert_eq!(
        Config::from_toml(&minimal("")).unwrap().response_cache(),
        None
    );
}

const KEY: &str = "sk-ant-config-test-key-0001";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_degradation_without_a_cache_section_answers_from_the_cache() {
    let sim = sim("[[models]]\nname = \"m\"\nlatency = \"2ms\"").await;
    let toml = format!(
        r#"
[[upstreams]]
name = "sim"
base_url = "{}"
api_key_env = "K"
[[models]]
name = "m"
degrade = ["cache"]
[models.retry]
deadline = "1s"
[breaker]
consecutive_failures = 1
open_for = "60s"
"#,
        sim.base_url()
    );
    let c = Config::from_toml(&toml).unwrap();
    let rt = c.spawn_with_env(env(&[("K", KEY)])).await.unwrap();
    let call = || Call::new("m", 16).user("the same question twice");
    let live = rt.seawall.complete(call()).await.unwrap();
    assert_eq!(live.source, Source::Live);
    // The model goes down: the next call is answered from the cache, flagged.
    let mut down = sim.scenario();
    down.models[0].faults = Scenario::from_toml(
        "[[models]]\nname = \"m\"\n[[models.faults]]\nkind = \"status\"\nstatus = 529",
    )
    .unwrap()
    .models[0]
        .faults
        .clone();
    sim.set_scenario(down).unwrap();
    let cached = rt.seawall.complete(call()).await.unwrap();
    assert_eq!(cached.source, Source::Cache);
    assert_eq!(cached.body, live.body);
    rt.seawall.shutdown(Duration::from_millis(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_go_to_chain_heads_by_default_and_follow_the_model_keys() {
    let sim = sim(r#"
[[models]]
name = "head"
latency = "2ms"
[[models]]
name = "fallback"
latency = "2ms"
[[models]]
name = "opted-out"
latency = "2ms"
[[models]]
name = "alone"
latency = "2ms"
[[models]]
name = "opted-in"
latency = "2ms"
[[models]]
name = "counted"
latency = "2ms"
"#)
    .await;
    let toml = format!(
        r#"
[[upstreams]]
name = "sim"
base_url = "{}"
api_key_env = "K"
[probes]
interval = "40ms"
timeout = "1s"
[[models]]
name = "head"
fallbacks = ["fallback"]
[[models]]
name = "fallback"
[[models]]
name = "opted-out"
fallbacks = ["fallback"]
[models.probe]
enabled = false
[[models]]
name = "alone"
[[models]]
name = "opted-in"
[models.probe]
enabled = true
interval = "20ms"
[[models]]
name = "counted"
fallbacks = ["fallback"]
[models.probe]
kind = "count_tokens"
"#,
        sim.base_url()
    );
    let c = Config::from_toml(&toml).unwrap();
    let kinds: Vec<_> = c
        .models
        .iter()
        .map(|m| c.probe_for(m).map(|p| (p.interval, p.kind)))
        .collect();
    let ms = Duration::from_millis;
    assert_eq!(
        kinds,
        [
            Some((ms(40), ProbeKind::Message)),
            None,
            None,
            None,
            Some((ms(20), ProbeKind::Message)),
            Some((ms(40), ProbeKind::Auto)),
        ]
    );
    let rt = c.spawn_with_env(env(&[("K", KEY)])).await.unwrap();
    // No user call is made: every request the simulator sees is a probe.
    let probes = |model: &str, path: &str| {
        sim.log()
            .iter()
            .filter(|e| e.model.as_deref() == Some(model) && e.path == path)
            .count()
    };
    eventually(
        "three probes to each of head, opted-in and counted",
        Duration::from_secs(5),
        || async {
            if probes("head", "/v1/messages") >= 3
                && probes("opted-in", "/v1/messages") >= 3
                && probes("counted", "/v1/messages/count_tokens") >= 3
            {
                Ok(())
            } else {
                Err(format!("probes: {:?}", sim.log()))
            }
        },
    )
    .await;
    for model in ["fallback", "opted-out", "alone"] {
        assert_eq!(sim.count(model), 0, "{model} is not probed");
    }
    assert_eq!(probes("counted", "/v1/messages"), 0, "count_tokens only");
    rt.seawall.shutdown(Duration::from_millis(10)).await;

    // [probes] enabled = false turns the default off; a model's own enabled = true still wins.
    let c =
        Config::from_toml(&toml.replace("[probes]\n", "[probes]\nenabled = false\n")).unwrap_err();
    assert_eq!(c.key(), Some("models[5].probe"), "{c}");
    assert!(c.to_string().contains("[probes] enabled = false"), "{c}");
    let c = Config::from_toml(&minimal(
        "fallbacks = [\"m2\"]\n[[models]]\nname = \"m2\"\n[models.probe]\nenabled = true\n[probes]\nenabled = false",
    ))
    .unwrap();
    assert_eq!(c.probe_for(&c.models[0]), None);
    assert!(c.probe_for(&c.models[1]).is_some());
}

#[tokio::test]
async fn sla_keys_reach_the_report() {
    let c = Config::from_toml(&minimal(
        "fallbacks = [\"m2\"]\n[[models]]\nname = \"m2\"\n\
         [sla]\nwindow = \"10m\"\nbuckets = 5\navailability = 99\nmin_calls = 3\n\
         [sla.targets.m2]\np99 = \"2s\"\nmax_consecutive_failures = 4",
    ))
    .unwrap();
    let rt = c
        .spawn_with_env(env(&[("SEAWALL_TEST_KEY", KEY)]))
        .await
        .unwrap();
    let report = rt.seawall.sla_report().await.unwrap();
    assert_eq!(report.window, Duration::from_secs(600));
    let defaults = SlaTarget {
        availability: 99.0,
        p99: Duration::from_secs(30),
        max_consecutive_failures: None,
        min_calls: 3,
    };
    assert_eq!(report.chain("m1").unwrap().target, defaults);
    assert_eq!(
        report.model("m2").unwrap().target,
        SlaTarget {
            p99: Duration::from_secs(2),
            max_consecutive_failures: Some(4),
            ..defaults
        }
    );
    rt.seawall.shutdown(Duration::from_millis(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_keys_set_the_thresholds_and_off_disables() {
    let c = Config::from_toml(&minimal(
        "[alerts]\nwindow = \"1m\"\nmin_calls = 3\nfailure_rate = 12.5\nfallback_rate = \"off\"\n\
         breaker_open_for = \"off\"",
    ))
    .unwrap();
    assert_eq!(
        c.alerts.to_config(),
        AlertConfig {
            window: Duration::from_secs(60),
            min_calls: 3,
            failure_rate: Some(12.5),
            fallback_rate: None,
            breaker_open_for: None,
        }
    );
    // A breaker alert after 50 ms: one overload opens the breaker, and the alert fires.
    let sim = sim(
        "[[models]]\nname = \"m\"\nlatency = \"2ms\"\n[[models.faults]]\nkind = \"status\"\nstatus = 529",
    )
    .await;
    let toml = format!(
        r#"
[[upstreams]]
name = "sim"
base_url = "{}"
api_key_env = "K"
[[models]]
name = "m"
[models.retry]
deadline = "1s"
[breaker]
consecutive_failures = 1
open_for = "60s"
[alerts]
breaker_open_for = "50ms"
"#,
        sim.base_url()
    );
    let rt = Config::from_toml(&toml)
        .unwrap()
        .spawn_with_env(env(&[("K", KEY)]))
        .await
        .unwrap();
    let mut events = rt.seawall.subscribe();
    assert!(rt
        .seawall
        .complete(Call::new("m", 8).user("hi"))
        .await
        .is_err());
    let alert = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(e @ Event::Alert { .. }) = events.recv().await {
                return e;
            }
        }
    })
    .await
    .expect("the breaker alert fires");
    match alert {
        Event::Alert {
            kind,
            subject,
            firing,
            threshold,
            ..
        } => {
            assert_eq!(kind, AlertKind::BreakerOpen);
            assert_eq!(subject, "m");
            assert!(firing);
            assert_eq!(threshold, 0.05);
        }
        other => panic!("{other:?}"),
    }
    rt.seawall.shutdown(Duration::from_millis(10)).await;
}

#[tokio::test]
async fn the_webhook_url_is_checked_and_read_from_its_variable_never_shown() {
    let secret = "https://hooks.example.com/services/T000/B000/SECRETSECRET";
    let c = Config::from_toml(&minimal(
        "[alerts]\nwebhook_url_env = \"HOOK\"\nwebhook_timeout = \"500ms\"",
    ))
    .unwrap();
    let hook = c
        .resolve_webhook(&env(&[("HOOK", secret)]))
        .unwrap()
        .expect("a webhook");
    assert_eq!(hook.url().as_str(), secret);
    assert_eq!(hook.timeout, Duration::from_millis(500));
    assert_eq!(hook.redacted(), "https://hooks.example.com/…");
    assert!(!format!("{hook:?}").contains("SECRET"), "{hook:?}");
    let e = c.resolve_webhook(&env(&[])).unwrap_err();
    assert_eq!(e.key(), Some("alerts.webhook_url_env"), "{e}");
    assert!(e.to_string().contains("HOOK is not set"), "{e}");
    let e = c
        .resolve_webhook(&env(&[("HOOK", "ftp://x.example/SECRETSECRET")]))
        .unwrap_err();
    assert_eq!(e.key(), Some("alerts.webhook_url_env"), "{e}");
    assert!(!e.to_string().contains("SECRET"), "{e}");
    // Nothing configured: no webhook.
    let c = Config::from_toml(&minimal("")).unwrap();
    assert!(c.resolve_webhook(&env(&[])).unwrap().is_none());
    // Written in the file, the URL never shows in a Debug of the config either.
    let c = Config::from_toml(&minimal(&format!("[alerts]\nwebhook_url = \"{secret}\""))).unwrap();
    assert!(!format!("{c:?}").contains("SECRET"), "{c:?}");
    let hook = c.resolve_webhook(&env(&[])).unwrap().expect("a webhook");
    assert_eq!(hook.url().as_str(), secret);
}

#[test]
fn observability_keys_are_checked_with_their_keys() {
    let chain = "fallbacks = [\"m2\"]\n[[models]]\nname = \"m2\"\n";
    let cases: Vec<(String, &str, &str)> = vec![
        (
            minimal("[probes]\ninterval = \"0s\""),
            "probes.interval",
            "longer than zero",
        ),
        (
            minimal("[probes]\ntimeout = \"soon\""),
            "probes.timeout",
            "not a duration",
        ),
        (
            minimal("[probes]\nkind = \"ping\""),
            "probes.kind",
            "unknown variant",
        ),
        (
            minimal("[probes]\nevery = \"1s\""),
            "probes.every",
            "unknown field",
        ),
        (
            minimal("[models.probe]\ninterval = \"1s\""),
            "models[0].probe",
            "only for models with fallbacks",
        ),
        (
            minimal(&format!("{chain}[[models]]\nname = \"m3\"\n[models.probe]\ntimeout = \"0s\"")),
            "models[2].probe.timeout",
            "longer than zero",
        ),
        (
            minimal("fallbacks = [\"m2\"]\n[models.probe]\nenabled = false\nkind = \"message\"\n[[models]]\nname = \"m2\""),
            "models[0].probe",
            "enabled = false",
        ),
        (
            minimal("price = { input_per_mtok = -1.0, output_per_mtok = 1.0 }"),
            "models[0].price.input_per_mtok",
            ">= 0",
        ),
        (
            minimal("price = { input_per_mtok = 1.0, output_per_mtok = nan }"),
            "models[0].price.output_per_mtok",
            ">= 0",
        ),
        (
            minimal("price = { input_per_mtok = 1.0 }"),
            "models[0].price",
            "missing field `output_per_mtok`",
        ),
        (
            minimal("[sla]\nwindow = \"0s\""),
            "sla.window",
            "longer than zero",
        ),
        (
            minimal("[sla]\nbuckets = 0"),
            "sla.buckets",
            "at least 1",
        ),
        (
            minimal("[sla]\nwindow = \"5ms\"\nbuckets = 12"),
            "sla.window",
            "1ms per bucket",
        ),
        (
            // The default window (1h) cannot hold 5 million 1ms buckets: the buckets' fault.
            minimal("[sla]\nbuckets = 5000000"),
            "sla.buckets",
            "1ms per bucket",
        ),
        (
            minimal("[sla]\navailability = 101"),
            "sla.availability",
            "[0, 100]",
        ),
        (
            minimal("[sla]\np99 = \"0s\""),
            "sla.p99",
            "longer than zero",
        ),
        (
            minimal("[sla]\np50 = \"1s\""),
            "sla.p50",
            "unknown field",
        ),
        (
            minimal("[sla.targets.nope]\navailability = 99"),
            "sla.targets.nope",
            "neither a model nor a chain",
        ),
        (
            minimal("[sla.targets.m1]\navailability = -3"),
            "sla.targets.m1.availability",
            "[0, 100]",
        ),
        (
            minimal("[alerts]\nwindow = \"500ms\""),
            "alerts.window",
            "at least 1s",
        ),
        (
            minimal("[alerts]\nmin_calls = 0"),
            "alerts.min_calls",
            "at least 1",
        ),
        (
            minimal("[alerts]\nfailure_rate = 100"),
            "alerts.failure_rate",
            "(0, 100) or \"off\"",
        ),
        (
            minimal("[alerts]\nfallback_rate = \"never\""),
            "alerts.fallback_rate",
            "\"off\"",
        ),
        (
            minimal("[alerts]\nbreaker_open_for = \"0s\""),
            "alerts.breaker_open_for",
            "longer than zero",
        ),
        (
            minimal("[alerts]\nbreaker_open_for = \"a while\""),
            "alerts.breaker_open_for",
            "not a duration",
        ),
        (
            minimal("[alerts]\nwebhook_url = \"hooks.example.com/SECRETSECRET\""),
            "alerts.webhook_url",
            "not a URL",
        ),
        (
            minimal("[alerts]\nwebhook_url = \"ftp://hooks.example.com/SECRETSECRET\""),
            "alerts.webhook_url",
            "http or https",
        ),
        (
            minimal("[alerts]\nwebhook_url = \"https://h.example/SECRETSECRET\"\nwebhook_url_env = \"H\""),
            "alerts.webhook_url_env",
            "not both",
        ),
        (
            minimal("[alerts]\nwebhook_url_env = \"A B\""),
            "alerts.webhook_url_env",
            "not a usable environment variable name",
        ),
        (
            minimal("[alerts]\nwebhook_timeout = \"1s\""),
            "alerts.webhook_timeout",
            "no webhook",
        ),
        (
            minimal("[alerts]\nwebhook_url = \"https://h.example/x\"\nwebhook_timeout = \"0s\""),
            "alerts.webhook_timeout",
            "longer than zero",
        ),
        (
            minimal("[log]\nformat = \"xml\""),
            "log.format",
            "unknown variant",
        ),
        (
            minimal("[log]\nprompts = \"yes\""),
            "log.prompts",
            "invalid type",
        ),
    ];
    for (toml, key, needle) in cases {
        let e = err(&toml);
        assert_eq!(e.key(), Some(key), "{e}\n{toml}");
        assert!(e.to_string().contains(needle), "{e} should say {needle:?}");
        assert!(!e.to_string().contains("SECRETSECRET"), "{e}");
    }
}

#[test]
fn defaults_fill_what_is_left_out() {
    let c = Config::from_toml(&minimal("")).unwrap();
    assert_eq!(c.listen, "127.0.0.1:8700".parse().unwrap());
    assert_eq!(c.upstreams[0].kind, UpstreamKind::Anthropic);
    assert_eq!(
        c.upstream_of(&c.models[0]),
        "anthropic",
        "the first upstream"
    );
    assert_eq!(c.chain_of("m1").unwrap(), ["m1"]);
    assert_eq!(c.breaker_defaults(), BreakerConfig::default());
    assert_eq!(c.breaker_for(&c.models[0]), BreakerConfig::default());
    assert_eq!(c.retry_defaults(), RetryPolicy::default());
    assert_eq!(c.gateway.max_body_bytes(), DEFAULT_MAX_BODY_BYTES);
    assert_eq!(c.gateway.shutdown_grace(), Duration::from_secs(30));
    assert!(c.gateway.tokens.is_empty());
    assert!(c.limits.is_empty() && c.bulkheads.is_empty());
    assert_eq!(c.retry_budget.to_config(), RetryBudgetConfig::default());
}

#[test]
fn window_is_a_count_or_a_duration() {
    let c = Config::from_toml(&minimal("[breaker]\nwindow = 10\nmin_calls = 2")).unwrap();
    assert_eq!(c.breaker_defaults().window, WindowKind::Count(10));
    let c = Config::from_toml(&minimal("[breaker]\nwindow = \"1m\"")).unwrap();
    assert_eq!(
        c.breaker_defaults().window,
        WindowKind::Time(Duration::from_secs(60))
    );
    let e = err(&minimal("[breaker]\nwindow = 0"));
    assert_eq!(e.key(), Some("breaker.window"), "{e}");
    let e = err(&minimal("[breaker]\nwindow = \"500ms\""));
    assert_eq!(e.key(), Some("breaker.window"), "{e}");
    assert!(e.to_string().contains("at least 1s"), "{e}");
    let e = err(&minimal("[breaker]\nwindow = 2.5"));
    assert_eq!(e.key(), Some("breaker.window"), "{e}");
    assert!(e.to_string().contains("call count"), "{e}");
}

#[test]
fn consecutive_failures_selects_the_preset() {
    let c = Config::from_toml(&minimal("[breaker]\nconsecutive_failures = 3")).unwrap();
    assert_eq!(c.breaker_defaults().trip, Trip::ConsecutiveFailures(3));
}

#[test]
fn a_bad_duration_names_its_key_and_line() {
    let e = err(&minimal("[retry]\ndeadline = \"ten seconds\""));
    assert_eq!(e.key(), Some("retry.deadline"), "{e}");
    let text = e.to_string();
    assert!(text.contains("\"ten seconds\" is not a duration"), "{text}");
    assert!(text.contains("line 9"), "{text}");
    let e = err(&minimal(
        "[[models]]\nname = \"m2\"\n[models.breaker]\nopen_for = 30",
    ));
    assert_eq!(e.key(), Some("models[1].breaker.open_for"), "{e}");
}

#[test]
fn unknown_keys_are_errors_naming_the_key() {
    let e = err(&minimal("[breaker]\nfailur_rate = 50"));
    assert_eq!(e.key(), Some("breaker.failur_rate"), "{e}");
    assert!(e.to_string().contains("unknown field `failur_rate`"), "{e}");
    let e = err(&minimal("fallback = [\"x\"]"));
    assert_eq!(e.key(), Some("models[0].fallback"), "{e}");
    let e = err(&format!("lsiten = \"127.0.0.1:1\"\n{}", minimal("")));
    assert_eq!(e.key(), Some("lsiten"), "{e}");
    let e = err(&minimal("[gateway]\ntoken = [\"abcdefghijklmnopqrstu\"]"));
    assert_eq!(e.key(), Some("gateway.token"), "{e}");
}

#[test]
fn an_undeclared_fallback_is_named() {
    let e = err(&minimal("fallbacks = [\"x\"]"));
    assert_eq!(
        e.to_string(),
        "models[0].fallbacks[0]: model \"x\" is not declared: add a [[models]] entry named \"x\""
    );
    let e = err(&minimal("fallbacks = [\"m1\"]"));
    assert_eq!(e.key(), Some("models[0].fallbacks[0]"), "{e}");
    assert!(e.to_string().contains("twice"), "{e}");
}

#[test]
fn references_and_values_are_checked_with_their_keys() {
    let cases: Vec<(String, &str, &str)> = vec![
        (
            minimal("upstream = \"nope\""),
            "models[0].upstream",
            "not declared",
        ),
        (
            minimal("class = \"haiku\""),
            "models[0].class",
            "[limits.anthropic.classes.haiku]",
        ),
        (
            minimal("[[models]]\nname = \"m1\""),
            "models[1].name",
            "declared twice",
        ),
        (
            minimal("[limits.nope]\nrpm = 5"),
            "limits.nope",
            "not declared",
        ),
        (
            minimal("[limits.anthropic]\nrpm = 0"),
            "limits.anthropic.rpm",
            "at least 1",
        ),
        (
            minimal("[limits.anthropic.classes.h]\ninput_tpm = 0"),
            "limits.anthropic.classes.h.input_tpm",
            "at least 1",
        ),
        (
            minimal("[breaker]\nfailure_rate = 150"),
            "breaker.failure_rate",
            "(0, 100]",
        ),
        (
            minimal("[breaker]\nfailure_rate = 0"),
            "breaker.failure_rate",
            "(0, 100]",
        ),
        (
            minimal("[models.breaker]\nfailure_rate = 101"),
            "models[0].breaker.failure_rate",
            "(0, 100]",
        ),
        (
            minimal("[breaker]\nslow_call_rate = -1"),
            "breaker.slow_call_rate",
            "(0, 100]",
        ),
        (
            minimal("[breaker]\nmin_calls = 30"),
            "breaker.min_calls",
            "exceeds",
        ),
        (
            minimal("[models.breaker]\nmin_calls = 30"),
            "models[0].breaker.min_calls",
            "exceeds",
        ),
        (
            minimal("[breaker]\nhalf_open_calls = 0"),
            "breaker.half_open_calls",
            "at least 1",
        ),
        (
            minimal(
                "[breaker]\nopen_for = \"10m\"\nopen_backoff = { multiplier = 2.0, max = \"1m\" }",
            ),
            "breaker.open_backoff.max",
            "at least open_for",
        ),
        (
            minimal("[breaker]\nopen_backoff = { multiplier = 0.5, max = \"1m\" }"),
            "breaker.open_backoff.multiplier",
            ">= 1.0",
        ),
        (
            minimal("[retry]\nmax_attempts = 0"),
            "retry.max_attempts",
            "at least 1",
        ),
        (
            minimal("[retry]\nfirst_token_timeout = \"0s\""),
            "retry.first_token_timeout",
            "longer than zero",
        ),
        (
            minimal("[retry_budget]\nratio = -0.5"),
            "retry_budget.ratio",
            ">= 0",
        ),
        (
            minimal("[retry_budget]\nwindow = \"100ms\""),
            "retry_budget.window",
            "at least 1s",
        ),
        (
            minimal("[retry.backoff]\nbase = \"2s\"\ncap = \"1s\""),
            "retry.backoff.cap",
            "at least backoff.base",
        ),
        (
            minimal("[models.retry]\nmin_attempt = \"5m\""),
            "models[0].retry.min_attempt",
            "shorter than deadline",
        ),
        (
            minimal("[[bulkheads]]\nname = \"b\"\nbudget_share = 1.5"),
            "bulkheads[0].budget_share",
            "(0, 1]",
        ),
        (
            minimal("[[models]]\nname = \"q\"\ndegrade = [\"queue\"]"),
            "models[1].degrade[0]",
            "needs a [queue] section",
        ),
        (
            minimal("[[models]]\nname = \"s\"\ndegrade = [\"static\"]"),
            "models[1].static_answer",
            "set the text",
        ),
        (
            minimal("[[models]]\nname = \"s\"\nstatic_answer = \"hi\""),
            "models[1].static_answer",
            "does not list",
        ),
        (
            minimal("[[models]]\nname = \"d\"\ndegrade = [\"later\"]"),
            "models[1].degrade[0]",
            "unknown variant",
        ),
        (
            minimal("[queue]\npath = \"q.redb\"\nconcurrency = 0"),
            "queue.concurrency",
            "at least 1",
        ),
        (
            minimal("[queue]\npath = \"q.redb\"\nttl = \"0s\""),
            "queue.ttl",
            "longer than zero",
        ),
        (
            minimal("[governor]\ntransit_allowance = \"a bit\""),
            "governor.transit_allowance",
            "250ms",
        ),
        (
            minimal("[governor]\ninteractive_reserve = 1.0"),
            "governor.interactive_reserve",
            "[0, 1)",
        ),
        (
            minimal("[gateway]\nmax_body_bytes = 0"),
            "gateway.max_body_bytes",
            "at least 1",
        ),
        (
            minimal("[gateway]\nshutdown_grace = \"soon\""),
            "gateway.shutdown_grace",
            "not a duration",
        ),
    ];
    for (toml, key, needle) in cases {
        let e = err(&toml);
        assert_eq!(e.key(), Some(key), "{e}\n{toml}");
        assert!(e.to_string().contains(needle), "{e} should say {needle:?}");
    }
}

#[test]
fn upstream_entries_are_checked_with_their_keys() {
    let up =
        |extra: &str| format!("[[upstreams]]\nname = \"u\"\n{extra}\n[[models]]\nname = \"m\"\n");
    let cases = [
        (up(""), "upstreams[0].api_key_env", "missing"),
        (
            up("api_key_env = \"A\"\napi_key_envs = [\"B\"]"),
            "upstreams[0].api_key_envs",
            "not both",
        ),
        (
            up("api_key_envs = [\"A\", \"\"]"),
            "upstreams[0].api_key_envs[1]",
            "empty",
        ),
        (
            up("api_key_envs = [\"A\", \"B\"]\nkey_organizations = [\"o\"]"),
            "upstreams[0].key_organizations",
            "1 labels for 2 key(s)",
        ),
        (
            up("api_key_env = \"A\"\nkind = \"openai\"\nversion = \"x\""),
            "upstreams[0].version",
            "anthropic",
        ),
        (
            up("api_key_env = \"A\"\norganization = \"o\""),
            "upstreams[0].organization",
            "openai",
        ),
        (
            up("api_key_env = \"A\"\nbase_url = \"ftp://x\""),
            "upstreams[0].base_url",
            "http or https",
        ),
        (
            up("api_key_env = \"A\"\nkind = \"grpc\""),
            "upstreams[0].kind",
            "unknown variant",
        ),
        (
            up("api_key_env = \"A\"\nconnect_timeout = \"0s\""),
            "upstreams[0].connect_timeout",
            "longer than zero",
        ),
    ];
    for (toml, key, needle) in cases {
        let e = err(&toml);
        assert_eq!(e.key(), Some(key), "{e}\n{toml}");
        assert!(e.to_string().contains(needle), "{e} should say {needle:?}");
    }
    let e = err("[[models]]\nname = \"m\"");
    assert_eq!(e.key(), Some("upstreams"), "{e}");
    let e = err("[[upstreams]]\nname = \"u\"\napi_key_env = \"A\"");
    assert_eq!(e.key(), Some("models"), "{e}");
}

#[test]
fn no_tokens_means_loopback_only() {
    for listen in ["0.0.0.0:8700", "192.0.2.7:80", "[::]:8700"] {
        let toml = format!("listen = \"{listen}\"\n{}", minimal(""));
        let e = err(&toml);
        assert!(
            matches!(e, ConfigError::Unauthenticated { .. }),
            "{listen}: {e:?}"
        );
        assert_eq!(e.key(), Some("listen"));
        assert!(e.to_string().contains("no tokens"), "{e}");
        // With a token (in the file or by variable) it is allowed.
        let with = format!(
            "listen = \"{listen}\"\n{}",
            minimal("[gateway]\ntokens = [\"0123456789abcdef0123\"]")
        );
        Config::from_toml(&with).unwrap();
        let by_env = format!(
            "listen = \"{listen}\"\n{}",
            minimal("[gateway]\ntoken_envs = [\"SEAWALL_TOKEN\"]")
        );
        Config::from_toml(&by_env).unwrap();
    }
    for listen in ["127.0.0.1:0", "[::1]:8700", "127.3.2.1:9"] {
        Config::from_toml(&format!("listen = \"{listen}\"\n{}", minimal(""))).unwrap();
    }
    let e = err(&format!("listen = \"localhost:80\"\n{}", minimal("")));
    assert_eq!(e.key(), Some("listen"), "{e}");
}

#[test]
fn a_weak_token_is_refused_without_being_echoed() {
    let e = err(&minimal(
        "[gateway]\ntokens = [\"0123456789abcdef\", \"hunter2\"]",
    ));
    assert_eq!(e.key(), Some("gateway.tokens[1]"), "{e}");
    assert!(!e.to_string().contains("hunter2"), "{e}");
    assert!(!format!("{e:?}").contains("hunter2"));
    let e = err(&minimal("[gateway]\ntokens = [\"0123456789 abcdef0123\"]"));
    assert_eq!(e.key(), Some("gateway.tokens[0]"), "{e}");
    assert!(!e.to_string().contains("0123456789 abcdef"), "{e}");
    // Debug of a whole config shows no token.
    let c =
        Config::from_toml(&minimal("[gateway]\ntokens = [\"s3cr3t-t0ken-value-xyz\"]")).unwrap();
    assert!(!format!("{c:?}").contains("s3cr3t"), "{c:?}");
}

#[tokio::test]
async fn a_missing_key_variable_is_named_and_a_bad_value_never_shown() {
    let toml = r#"
[[upstreams]]
name = "a"
api_key_envs = ["ANTHROPIC_KEY_1", "ANTHROPIC_KEY_2"]
[[models]]
name = "m"
"#;
    let c = Config::from_toml(toml).unwrap();
    let e = c
        .spawn_with_env(env(&[("ANTHROPIC_KEY_1", "sk-ant-first-key-0001")]))
        .await
        .unwrap_err();
    assert_eq!(e.key(), Some("upstreams[0].api_key_envs[1]"), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("environment variable ANTHROPIC_KEY_2 is not set"),
        "{text}"
    );
    assert!(!text.contains("sk-ant-first-key-0001"), "{text}");

    let bad = "sk-ant-secret with-space";
    let e = c
        .spawn_with_env(env(&[
            ("ANTHROPIC_KEY_1", "sk-ant-first-key-0001"),
            ("ANTHROPIC_KEY_2", bad),
        ]))
        .await
        .unwrap_err();
    assert_eq!(e.key(), Some("upstreams[0].api_key_envs[1]"), "{e}");
    assert!(e.to_string().contains("ANTHROPIC_KEY_2"), "{e}");
    assert!(!e.to_string().contains("secret"), "{e}");
    assert!(!format!("{e:?}").contains("secret"), "{e:?}");

    // The single-key form names api_key_env.
    let c = Config::from_toml(&minimal("")).unwrap();
    let e = c.spawn_with_env(env(&[])).await.unwrap_err();
    assert_eq!(e.key(), Some("upstreams[0].api_key_env"), "{e}");
    assert!(e.to_string().contains("SEAWALL_TEST_KEY"), "{e}");

    // A client token variable likewise.
    let c = Config::from_toml(&minimal("[gateway]\ntoken_envs = [\"SEAWALL_TOKEN\"]")).unwrap();
    let e = c
        .spawn_with_env(env(&[("SEAWALL_TEST_KEY", "sk-ant-test-key-000000")]))
        .await
        .unwrap_err();
    assert_eq!(e.key(), Some("gateway.token_envs[0]"), "{e}");
    assert!(e.to_string().contains("SEAWALL_TOKEN is not set"), "{e}");
    let e = c
        .spawn_with_env(env(&[
            ("SEAWALL_TEST_KEY", "sk-ant-test-key-000000"),
            ("SEAWALL_TOKEN", "short"),
        ]))
        .await
        .unwrap_err();
    assert_eq!(e.key(), Some("gateway.token_envs[0]"), "{e}");
    assert!(!e.to_string().contains("short\""), "{e}");
}

#[tokio::test]
async fn the_example_spawns_a_runtime() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/seawall.toml");
    let c = Config::from_file(&path).unwrap();
    let rt = c
        .spawn_with_env(env(&[
            ("ANTHROPIC_API_KEY", "sk-ant-example-key-aaaa"),
            ("ANTHROPIC_API_KEY_2", "sk-ant-example-key-bbbb"),
            ("OPENAI_API_KEY", "sk-openai-example-key-cccc"),
        ]))
        .await
        .unwrap();
    assert_eq!(rt.upstreams.len(), 2);
    assert_eq!(rt.upstreams[0].1.key_count(), 2);
    assert_eq!(rt.tokens.len(), 1);
    for m in ["claude-sonnet-4-5", "claude-haiku-4-5", "gpt-4o"] {
        rt.seawall.breaker_status(m).await.unwrap();
    }
    let debug = format!("{rt:?}");
    assert!(!debug.contains("example-key"), "{debug}");
    rt.seawall.shutdown(Duration::from_millis(10)).await;
}

#[test]
fn an_unreadable_file_is_named() {
    let e = Config::from_file(Path::new("/nonexistent/seawall.toml")).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }), "{e:?}");
    assert!(e.to_string().contains("/nonexistent/seawall.toml"), "{e}");
}

#[test]
fn fallbacks_take_model_names_and_patched_hops() {
    let c = Config::from_toml(
        r#"
[[upstreams]]
name = "anthropic"
api_key_env = "SEAWALL_TEST_KEY"

[[models]]
name = "big"
fallbacks = [
  "small",
  { model = "big", patch = { max_tokens = 512, temperature = 0.2 }, remove = ["thinking"] },
]

[[models]]
name = "small"
"#,
    )
    .unwrap();
    assert_eq!(c.chain_of("big").unwrap(), vec!["big", "small", "big"]);
    let hops: Vec<_> = c.models[0].fallbacks.iter().map(|f| f.hop()).collect();
    assert_eq!(hops[0], seawall::core::HopSpec::model("small"));
    assert_eq!(
        hops[1],
        seawall::core::HopSpec::model("big").patch(serde_json::json!({
            "max_tokens": 512, "temperature": 0.2, "thinking": null
        }))
    );
    // The same model again without a patch is a mistake, and a patch may not set the model.
    let e = err(&minimal(r#"fallbacks = ["m1"]"#));
    assert_eq!(e.key(), Some("models[0].fallbacks[0]"), "{e}");
    let e = err(&format!(
        "{}\n[[models]]\nname = \"m2\"\n",
        minimal(r#"fallbacks = [{ model = "m2", patch = { model = "x" } }]"#)
    ));
    assert_eq!(e.key(), Some("models[0].fallbacks[0].patch.model"), "{e}");
}

#[test]
fn the_queue_section_fills_defaults_and_keeps_what_is_set() {
    let c = Config::from_toml(&minimal(
        "degrade = [\"queue\"]\n[queue]\npath = \"jobs.redb\"\nttl = \"2h\"\nconcurrency = 4",
    ))
    .unwrap();
    let q = c.queue.as_ref().expect("[queue]").to_config();
    assert_eq!(q.ttl, Duration::from_secs(7200));
    assert_eq!(q.concurrency, 4);
    assert_eq!(q.poll, Duration::from_secs(1), "default");
    assert_eq!(q.run_timeout, None, "default: the chain's own deadline");
    assert_eq!(
        c.retry_for(&c.models[0]).degrade,
        vec![seawall::core::Degrade::Queue]
    );
}

#[test]
fn hedging_and_learned_timeouts_are_keys_of_retry() {
    let c = Config::from_toml(&minimal(
        "[retry]\nhedge_after = \"off\"\nidle_timeout = \"5s\"\nlearned_timeouts = false\n\
         [models.retry]\nhedge_after = \"750ms\"\nhedge_streams = true\nmax_hedges = 2",
    ))
    .unwrap();
    let all = c.retry_defaults();
    assert_eq!(all.hedge, seawall::core::Hedge::Off);
    assert_eq!(all.idle_timeout, Duration::from_secs(5));
    assert!(!all.learned_timeouts);
    let m1 = c.retry_for(&c.models[0]);
    assert_eq!(
        m1.hedge,
        seawall::core::Hedge::After(Duration::from_millis(750))
    );
    assert!(m1.hedge_streams);
    assert_eq!(m1.max_hedges, 2);
    assert_eq!(m1.idle_timeout, Duration::from_secs(5), "inherited");
    let c = Config::from_toml(&minimal("[retry]\nhedge_after = \"auto\"")).unwrap();
    assert_eq!(c.retry_defaults().hedge, seawall::core::Hedge::Auto);

    // Bad values name their key.
    let e = err(&minimal("[retry]\nhedge_after = \"sometimes\""));
    assert_eq!(e.key(), Some("retry.hedge_after"), "{e}");
    assert!(e.to_string().contains("\"auto\""), "{e}");
    let e = err(&minimal("[retry]\nhedge_after = \"0s\""));
    assert_eq!(e.key(), Some("retry.hedge_after"), "{e}");
    let e = err(&minimal("[models.retry]\nidle_timeout = \"0s\""));
    assert_eq!(e.key(), Some("models[0].retry.idle_timeout"), "{e}");
}
