//! The logs of a real `seawall serve` process, as an operator's log pipeline reads them: JSON
//! with the per-call line's fields as keys, no colour codes when stderr is not a terminal,
//! `RUST_LOG` obeyed, and the format chosen by flag, then environment, then config.

mod support;

use std::path::Path;

use serde_json::Value;
use support::process::{run, temp_dir, write_config, Serve};

const KEY: &str = "sk-ant-api03-LOGSECRETLOGSECRET-logs-0001";
const TOKEN: &str = "logs-test-client-token-0123456789";

fn sim_config(base_url: &str, extra: &str) -> String {
    format!(
        r#"
listen = "127.0.0.1:0"
[[upstreams]]
name = "sim"
base_url = "{base_url}"
api_key_env = "SIM_KEY"
[[models]]
name = "m"
price = {{ input_per_mtok = 3.0, output_per_mtok = 15.0 }}
[gateway]
tokens = ["{TOKEN}"]
shutdown_grace = "1s"
{extra}
"#
    )
}

async fn call(base: &str) -> Value {
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/messages"))
        .header("x-api-key", TOKEN)
        .json(&serde_json::json!({
            "model": "m",
            "max_tokens": 16,
            "messages": [{"role": "user", "content": "a prompt worth logging"}],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

/// Start the gateway with `args` after `serve --config FILE`, make one call, stop it; its
/// stderr.
async fn one_call(config: &Path, args: &[&str], env: &[(&str, &str)]) -> (Value, String) {
    let path = config.to_string_lossy().into_owned();
    let mut all = vec!["serve", "--config", path.as_str()];
    all.extend_from_slice(args);
    let mut vars = vec![("SIM_KEY", KEY)];
    vars.extend_from_slice(env);
    let dir = temp_dir("logs");
    let serve = Serve::start(&dir, &all, &vars);
    let answer = call(&serve.base).await;
    let stopped = serve.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert!(!stopped.stderr.contains(KEY), "the key leaked");
    assert!(!stopped.stderr.contains(TOKEN), "the token leaked");
    // stderr is a pipe here: never a colour code.
    assert!(
        !stopped.stderr.contains('\u{1b}'),
        "ANSI escapes on a pipe:\n{}",
        stopped.stderr
    );
    (answer, stopped.stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_call_lines_fields_as_keys() {
    let sim = support::gateway::sim(support::gateway::ONE_MODEL_SIM).await;
    let config = write_config(
        "logs-json",
        &sim_config(&sim.base_url(), "[log]\nprompts = true"),
    );
    let (answer, stderr) = one_call(&config, &["--log-format", "json"], &[]).await;
    let lines: Vec<Value> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let call = lines
        .iter()
        .find(|l| l["message"] == "call")
        .unwrap_or_else(|| panic!("no call line in:\n{stderr}"));
    assert_eq!(call["level"], "INFO", "{call}");
    assert!(call["timestamp"].is_string(), "{call}");
    assert_eq!(call["chain"], "m", "{call}");
    assert_eq!(call["model"], "m", "{call}");
    assert_eq!(call["served_by"], "m", "{call}");
    assert_eq!(call["status"], "ok", "{call}");
    assert_eq!(call["http_status"], 200, "{call}");
    assert_eq!(call["attempts"], 1, "{call}");
    assert_eq!(call["stream"], false, "{call}");
    assert!(call["latency_ms"].is_u64(), "{call}");
    assert!(
        call["request_id"].as_str().unwrap().starts_with("req_"),
        "{call}"
    );
    // The price of [[models]] m, applied to the usage the upstream reported.
    let (input, output) = (
        answer["usage"]["input_tokens"].as_f64().unwrap(),
        answer["usage"]["output_tokens"].as_f64().unwrap(),
    );
    assert_eq!(call["input_tokens"].as_f64(), Some(input), "{call}");
    assert_eq!(call["output_tokens"].as_f64(), Some(output), "{call}");
    let cost = (input * 3.0 + output * 15.0) / 1e6;
    assert!(
        (call["cost_usd"].as_f64().unwrap() - cost).abs() < 1e-12,
        "cost {cost} in {call}"
    );
    // [log] prompts = true: the conversation is in the line.
    assert!(
        call["prompt"]
            .as_str()
            .unwrap()
            .contains("a prompt worth logging"),
        "{call}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_format_is_plain_text_without_prompts_and_rust_log_filters() {
    let sim = support::gateway::sim(support::gateway::ONE_MODEL_SIM).await;
    let config = write_config("logs-pretty", &sim_config(&sim.base_url(), ""));
    let (_, stderr) = one_call(&config, &[], &[]).await;
    let line = stderr
        .lines()
        .find(|l| l.contains(" call ") && l.contains("chain=\"m\""))
        .unwrap_or_else(|| panic!("no call line in:\n{stderr}"));
    assert!(serde_json::from_str::<Value>(line).is_err(), "{line}");
    assert!(line.contains("INFO"), "{line}");
    assert!(line.contains("status=\"ok\""), "{line}");
    assert!(
        !stderr.contains("a prompt worth logging"),
        "prompts are off by default"
    );
    // RUST_LOG=warn: the per-call line is info, so it is not written.
    let (_, stderr) = one_call(&config, &[], &[("RUST_LOG", "warn")]).await;
    assert!(!stderr.contains("chain=\"m\""), "{stderr}");
    // RUST_LOG names a target: only it.
    let (_, stderr) = one_call(
        &config,
        &[],
        &[("RUST_LOG", "seawall_actors::request=info")],
    )
    .await;
    assert!(stderr.contains("chain=\"m\""), "{stderr}");
    assert!(!stderr.contains("draining"), "{stderr}");
}

/// Start and stop the gateway (no call): its stderr, which holds at least the drain lines.
fn start_stop(config: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let path = config.to_string_lossy().into_owned();
    let mut all = vec!["serve", "--config", path.as_str()];
    all.extend_from_slice(args);
    let mut vars = vec![("SIM_KEY", KEY)];
    vars.extend_from_slice(env);
    let stopped = Serve::start(&temp_dir("logs"), &all, &vars).stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert!(stopped.stderr.contains("draining"), "{}", stopped.stderr);
    stopped.stderr
}

fn is_json(stderr: &str) -> bool {
    stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .all(|l| serde_json::from_str::<Value>(l).is_ok())
}

#[test]
fn the_format_comes_from_the_flag_then_the_environment_then_the_config() {
    let json = write_config(
        "logs-fmt",
        &sim_config("http://127.0.0.1:9", "[log]\nformat = \"json\""),
    );
    let pretty = write_config(
        "logs-fmt",
        &sim_config("http://127.0.0.1:9", "[log]\nformat = \"pretty\""),
    );
    assert!(is_json(&start_stop(&json, &[], &[])), "config: json");
    assert!(!is_json(&start_stop(&pretty, &[], &[])), "config: pretty");
    assert!(
        !is_json(&start_stop(
            &json,
            &[],
            &[("SEAWALL_LOG_FORMAT", "compact")]
        )),
        "the environment beats the config"
    );
    assert!(
        is_json(&start_stop(&pretty, &[], &[("SEAWALL_LOG_FORMAT", "json")])),
        "the environment beats the config"
    );
    assert!(
        !is_json(&start_stop(
            &pretty,
            &["--log-format", "compact"],
            &[("SEAWALL_LOG_FORMAT", "json")]
        )),
        "the flag beats the environment"
    );
    assert!(
        is_json(&start_stop(
            &pretty,
            &["--log-format", "json"],
            &[("SEAWALL_LOG_FORMAT", "pretty")]
        )),
        "the flag beats the environment"
    );

    // A bad value says where it came from and what is accepted.
    let dir = temp_dir("logs");
    let path = pretty.to_string_lossy().into_owned();
    let (status, _, stderr) = run(
        &dir,
        &["serve", "--config", &path],
        &[("SIM_KEY", KEY), ("SEAWALL_LOG_FORMAT", "xml")],
    );
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("SEAWALL_LOG_FORMAT"), "{stderr}");
    assert!(stderr.contains("json, pretty or compact"), "{stderr}");
    let (status, _, stderr) = run(
        &dir,
        &["serve", "--config", &path, "--log-format", "xml"],
        &[("SIM_KEY", KEY)],
    );
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("json, pretty or compact"), "{stderr}");
    // The flag is accepted by every subcommand.
    let (status, _, stderr) = run(&dir, &["demo", "--log-format", "xml"], &[]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("json, pretty or compact"), "{stderr}");
}
