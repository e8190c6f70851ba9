//! `seawall.toml` for the platforms (issue 22): a model's `id`, and the `bedrock` and `vertex`
//! upstream kinds. Every error names its key.

use std::sync::Arc;

use seawall::config::{Config, ConfigError};
use seawall::core::scripted::ScriptedUpstream;
use seawall::core::upstream::Upstream;
use seawall::core::Call;

fn err(toml: &str) -> ConfigError {
    match Config::from_toml(toml) {
        Ok(_) => panic!("expected an error for:\n{toml}"),
        Err(e) => e,
    }
}

fn assert_err(toml: &str, key: &str, says: &str) {
    let e = err(toml);
    assert_eq!(e.key(), Some(key), "{e}\n{toml}");
    assert!(e.to_string().contains(says), "{e:?} should say {says:?}");
}

const ANTHROPIC: &str = r#"
[[upstreams]]
name = "anthropic"
api_key_env = "SEAWALL_TEST_KEY"
"#;

#[tokio::test]
async fn a_models_id_goes_on_the_wire_and_its_name_keys_the_chain() {
    let toml = format!(
        r#"{ANTHROPIC}
[[models]]
name = "sonnet"
id = "claude-sonnet-4-5-20250929"
fallbacks = ["haiku"]

[[models]]
name = "haiku"
"#
    );
    let config = Config::from_toml(&toml).unwrap();
    assert_eq!(
        config.models[0].id.as_deref(),
        Some("claude-sonnet-4-5-20250929")
    );
    assert_eq!(config.models[1].id, None);
    let up = ScriptedUpstream::new();
    up.healthy("claude-sonnet-4-5-20250929", std::time::Duration::ZERO);
    let upstreams: Vec<(String, Arc<dyn Upstream>)> =
        vec![("anthropic".into(), Arc::new(up.clone()))];
    let sw = config.builder(&upstreams).spawn().await.unwrap();
    let reply = sw
        .complete(Call::new("sonnet", 8).user("hi"))
        .await
        .unwrap();
    assert_eq!(reply.model, "sonnet");
    let log = up.log();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].model, "claude-sonnet-4-5-20250929");
    let body: serde_json::Value = serde_json::from_slice(&log[0].body).unwrap();
    assert_eq!(body["model"], "claude-sonnet-4-5-20250929");
    sw.shutdown(std::time::Duration::from_secs(1)).await;
}

#[test]
fn a_bad_model_id_names_its_key() {
    // TOML strings, escapes as TOML spells them.
    for (id, says) in [
        ("\"\"", "must not be empty"),
        ("\"claude sonnet\"", "whitespace"),
        ("\"claude\\u0007\"", "control"),
    ] {
        let toml = format!("{ANTHROPIC}\n[[models]]\nname = \"m\"\nid = {id}\n");
        assert_err(&toml, "models[0].id", says);
    }
}

fn platform(upstream: &str) -> String {
    format!(
        "[[upstreams]]\nname = \"p\"\n{upstream}\n\n[[models]]\nname = \"m\"\nupstream = \"p\"\n"
    )
}

#[test]
fn bedrock_and_vertex_upstreams_parse_with_their_keys() {
    let config = Config::from_toml(
        r#"
[[upstreams]]
name = "bedrock"
kind = "bedrock"
region = "us-east-1"
profile = "prod"
beta = "context-1m-2025-08-07"

[[upstreams]]
name = "vertex"
kind = "vertex"
project = "my-project"
region = "global"
base_url = "https://vertex.example.test"

[[models]]
name = "sonnet-bedrock"
upstream = "bedrock"
id = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
fallbacks = ["sonnet-vertex"]

[[models]]
name = "sonnet-vertex"
upstream = "vertex"
id = "claude-sonnet-4-5@20250929"

[limits.bedrock]
rpm = 100
"#,
    )
    .unwrap();
    let b = &config.upstreams[0];
    assert_eq!(b.kind, seawall::config::UpstreamKind::Bedrock);
    assert_eq!(b.region.as_deref(), Some("us-east-1"));
    assert_eq!(b.profile.as_deref(), Some("prod"));
    let v = &config.upstreams[1];
    assert_eq!(v.kind, seawall::config::UpstreamKind::Vertex);
    assert_eq!(v.project.as_deref(), Some("my-project"));
    // No key variable is read for them; the transports build without the environment.
    let upstreams = config.build_upstreams(&|_| None).unwrap();
    assert_eq!(upstreams.len(), 2);
    assert_eq!(upstreams[0].1.key_label(0), "aws:us-east-1");
    assert_eq!(upstreams[1].1.key_label(0), "gcp:my-project");
}

#[test]
fn platform_keys_are_checked_with_their_keys() {
    let cases = [
        (
            platform("kind = \"bedrock\""),
            "upstreams[0].region",
            "missing",
        ),
        (
            platform("kind = \"bedrock\"\nregion = \"US East\""),
            "upstreams[0].region",
            "not a region",
        ),
        (
            platform("kind = \"vertex\"\nregion = \"us-east5\""),
            "upstreams[0].project",
            "missing",
        ),
        (
            platform("kind = \"vertex\"\nproject = \"p\""),
            "upstreams[0].region",
            "missing",
        ),
        (
            platform("kind = \"vertex\"\nproject = \"My Project\"\nregion = \"us-east5\""),
            "upstreams[0].project",
            "not a project id",
        ),
        (
            platform("kind = \"bedrock\"\nregion = \"us-east-1\"\napi_key_env = \"K\""),
            "upstreams[0].api_key_env",
            "AWS default credential chain",
        ),
        (
            platform(
                "kind = \"vertex\"\nproject = \"p\"\nregion = \"global\"\napi_key_envs = [\"K\"]",
            ),
            "upstreams[0].api_key_envs",
            "Application Default Credentials",
        ),
        (
            platform("kind = \"vertex\"\nproject = \"p\"\nregion = \"global\"\nprofile = \"x\""),
            "upstreams[0].profile",
            "kind = \"bedrock\"",
        ),
        (
            platform("kind = \"bedrock\"\nregion = \"us-east-1\"\nproject = \"x\""),
            "upstreams[0].project",
            "kind = \"vertex\"",
        ),
        (
            platform("kind = \"bedrock\"\nregion = \"us-east-1\"\nversion = \"2023-06-01\""),
            "upstreams[0].version",
            "kind = \"anthropic\"",
        ),
        (
            platform("api_key_env = \"K\"\nregion = \"us-east-1\""),
            "upstreams[0].region",
            "\"bedrock\" or \"vertex\"",
        ),
        (
            platform("kind = \"bedrock\"\nregion = \"us-east-1\"\nbase_url = \"ftp://x\""),
            "upstreams[0].base_url",
            "http or https",
        ),
        (
            platform("kind = \"bedrock\"\nregion = \"us-east-1\"\nprofile = \"a b\""),
            "upstreams[0].profile",
            "not a profile name",
        ),
    ];
    for (toml, key, says) in cases {
        assert_err(&toml, key, says);
    }
}

#[test]
fn the_platforms_example_parses_and_builds_without_platform_secrets() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/platforms.toml");
    let config = Config::from_file(&path).unwrap();
    assert_eq!(
        config.chain_of("claude-sonnet-4-5").unwrap(),
        ["claude-sonnet-4-5", "sonnet-bedrock", "sonnet-vertex"]
    );
    assert_eq!(config.limits["bedrock"].rpm, Some(200));
    let upstreams = config
        .build_upstreams(&|v| {
            (v == "ANTHROPIC_API_KEY").then(|| "sk-ant-example-key-aaaa".to_owned())
        })
        .unwrap();
    assert_eq!(upstreams.len(), 3);
}
