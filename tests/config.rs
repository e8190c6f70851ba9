//! `seawall.toml`: every key parsed, the defaults, and errors that name their key and never a
//! secret.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use seawall::config::{Config, ConfigError, UpstreamKind, DEFAULT_MAX_BODY_BYTES};
use seawall::core::{
    Backoff, BreakerConfig, Estimate, Jitter, OpenBackoff, RetryBudgetConfig, RetryPolicy, Trip,
    WindowKind,
};

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
            minimal("[[models]]\nname = \"c\"\ndegrade = [\"cache\"]"),
            "models[1].degrade[0]",
            "needs a [cache] section",
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
