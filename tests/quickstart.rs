//! The README's quick starts, run as written, so they cannot rot.
//!
//! The gateway block is parsed from README.md and run: the `cargo run --release -- ARGS` line
//! becomes the built binary with the same ARGS (`CARGO_BIN_EXE_seawall`; cargo itself is not run
//! again), with exactly the environment the line names (nothing inherited). Two things differ,
//! and only these: the config is a copy of `examples/gateway.toml` whose `listen` is port 0 and
//! whose `base_url` is the in-process simulator (the test checks no other line differs); and the
//! `curl` line goes to the port the gateway announced instead of 8700.

mod support;

use std::path::Path;

use serde_json::Value;
use support::process::{temp_dir, Serve};
use support::readme::{blocks, commands, curl, readme, split};

/// The simulator: both models of the quick start, answering in 2 ms.
const SIM: &str = r#"
[[models]]
name = "claude-sonnet-4-5"
latency = "2ms"
[[models]]
name = "claude-haiku-4-5"
latency = "2ms"
"#;

#[test]
fn the_readme_opens_with_what_seawall_is_then_the_two_commands() {
    let text = readme();
    let intro: String = text
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("```"))
        .collect::<Vec<_>>()
        .join(" ");
    assert!(intro.contains("seawall keeps LLM API calls"), "{intro}");
    assert!(!intro.contains("##"), "no heading before the commands");
    let first = &blocks(&text, None, "sh")[0];
    assert_eq!(first, &["cargo run -- demo", "cargo test --workspace"]);
    let after = text
        .split("cargo test --workspace\n```")
        .nth(1)
        .unwrap_or("");
    let build = after
        .split("\n\n")
        .find(|p| !p.trim().is_empty())
        .unwrap_or("");
    assert!(build.contains("The first build takes"), "{build}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_gateway_quick_start_answers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = readme();
    let block = blocks(&text, Some("## The gateway"), "sh")
        .into_iter()
        .next()
        .expect("a sh block in the gateway section");
    let lines = commands(&block);
    assert_eq!(lines.len(), 3, "serve, curl, the SDK: {lines:?}");
    let (serve, request, sdk) = (&lines[0], &lines[1], &lines[2]);

    // 1. `VARS cargo run --release -- ARGS`: only the two variables the README names.
    let names: Vec<&str> = serve.env.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["ANTHROPIC_API_KEY", "SEAWALL_TOKEN"]);
    assert_eq!(serve.argv[..4], ["cargo", "run", "--release", "--"]);
    let args: Vec<&str> = serve.argv[4..].iter().map(String::as_str).collect();
    assert_eq!(args, ["serve", "--config", "examples/gateway.toml"]);
    let token = serve.var("SEAWALL_TOKEN").unwrap();

    // The config, with listen and base_url changed and nothing else.
    let sim = support::gateway::sim(SIM).await;
    let example = std::fs::read_to_string(root.join(args[2])).unwrap();
    let listen = example
        .lines()
        .find_map(|l| l.strip_prefix("listen = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("the example sets listen");
    let copy: Vec<String> = example
        .lines()
        .map(|l| {
            if l.starts_with("listen = ") {
                "listen = \"127.0.0.1:0\"".to_owned()
            } else if l.starts_with("base_url = ") {
                format!("base_url = \"{}\"", sim.base_url())
            } else {
                l.to_owned()
            }
        })
        .collect();
    let changed = example.lines().zip(&copy).filter(|(a, b)| a != b).count();
    assert_eq!(changed, 2, "only listen and base_url differ");
    let dir = temp_dir("quickstart");
    let config = dir.join("gateway.toml");
    std::fs::write(&config, copy.join("\n")).unwrap();
    let config = config.to_string_lossy().into_owned();
    let run_args = [args[0], args[1], config.as_str()];
    let env: Vec<(&str, &str)> = serve
        .env
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let gateway = Serve::start(root, &run_args, &env);

    // 2. The curl line, to the announced address.
    let req = curl(&request.argv);
    let origin = format!("http://{listen}");
    let path = req
        .url
        .strip_prefix(&origin)
        .unwrap_or_else(|| panic!("{} is not on {origin}", req.url));
    let mut http = reqwest::Client::new().request(
        req.method.parse().unwrap(),
        format!("{}{path}", gateway.base),
    );
    for (name, value) in &req.headers {
        http = http.header(name, value);
    }
    assert!(
        req.headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case("x-api-key") && v == token),
        "the request carries SEAWALL_TOKEN as its key"
    );
    // The gateway holds the token from SEAWALL_TOKEN: another one is refused.
    let mut wrong = reqwest::Client::new().request(
        req.method.parse().unwrap(),
        format!("{}{path}", gateway.base),
    );
    for (name, value) in &req.headers {
        let value = if name.eq_ignore_ascii_case("x-api-key") {
            "not-the-token-from-the-readme"
        } else {
            value
        };
        wrong = wrong.header(name, value);
    }
    let refused = wrong
        .body(req.body.clone().unwrap_or_default())
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let response = http
        .body(req.body.clone().unwrap_or_default())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response
            .headers()
            .get("seawall-model")
            .and_then(|v| v.to_str().ok()),
        Some("claude-sonnet-4-5")
    );
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["type"], "message", "{answer}");
    assert!(
        answer["content"][0]["text"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "{answer}"
    );

    // 3. The SDK line points at the same gateway with the same token.
    assert_eq!(sdk.var("ANTHROPIC_BASE_URL"), Some(origin.as_str()));
    assert_eq!(sdk.var("ANTHROPIC_API_KEY"), Some(token));

    let stopped = gateway.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    // One request reached the upstream, with the README's key, not the token.
    let log = sim.log();
    let calls: Vec<_> = log.iter().filter(|e| e.path == "/v1/messages").collect();
    assert_eq!(calls.len(), 1, "{log:?}");
    assert_eq!(calls[0].model.as_deref(), Some("claude-sonnet-4-5"));
    assert!(!stopped.stderr.contains(token), "{}", stopped.stderr);
}

#[test]
fn shell_words_split_as_sh_does() {
    let w = |s: &str| split(s).unwrap();
    assert_eq!(
        w("A=1 b 'c d' \"e \\\" f\" g\\ h # no"),
        ["A=1", "b", "c d", "e \" f", "g h"]
    );
    assert_eq!(w("x'y'\"z\""), ["xyz"]);
    assert!(split("'open").is_err());
    let c = commands(&["K=v V='a b' cmd --x \\".into(), "  y".into()]);
    assert_eq!(
        c[0].env,
        [("K".into(), "v".into()), ("V".into(), "a b".into())]
    );
    assert_eq!(c[0].argv, ["cmd", "--x", "y"]);
}
