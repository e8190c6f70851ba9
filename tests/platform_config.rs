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
