//! Claude on three platforms behind one gateway (issue 22): Anthropic's API (a fake answering
//! 529), Bedrock and Vertex (fakes that check signatures, tokens and bodies as the platforms
//! do, tests/support/bedrock.rs and vertex.rs). Real time over loopback, millisecond settings.

#[path = "support/bedrock.rs"]
mod bedrock_fake;
mod support;
#[path = "support/vertex.rs"]
mod vertex_fake;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::{json, Value};

use bedrock_fake::{Bedrock, Mode as BedrockMode};
use seawall::config::Config;
use seawall::gateway::Gateway;
use support::gateway::{assert_no_secret, client, Gw, KEY, TOKEN};
use support::http::{serve_app, sse_events};
use vertex_fake::{Mode as VertexMode, Vertex};

/// Anthropic's API, overloaded.
async fn overloaded_anthropic() -> String {
    let app = axum::Router::new().fallback(|| async {
        (
            StatusCode::from_u16(529).unwrap(),
            [("content-type", "application/json")],
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        )
            .into_response()
    });
    format!("http://{}", serve_app(app).await)
}

/// A temporary directory of this test's own.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("seawall-platforms-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

struct World {
    gw: Gw,
    bedrock: Bedrock,
    vertex: Vertex,
}

/// The three platforms and a gateway over them: `sonnet` walks Anthropic, then Bedrock, then
/// Vertex. `secret` is the AWS secret key the profile file holds.
async fn world(name: &str, secret: &str) -> World {
    world_with(name, secret, 1000).await
}

/// As [`world`], with Bedrock's requests per minute.
async fn world_with(name: &str, secret: &str, bedrock_rpm: u64) -> World {
    let anthropic = overloaded_anthropic().await;
    let bedrock = Bedrock::start().await;
    let vertex = Vertex::start().await;
    let dir = temp_dir(name);
    let credentials = dir.join("credentials");
    std::fs::write(
        &credentials,
        format!(
            "[seawall-test]\naws_access_key_id = {}\naws_secret_access_key = {secret}\naws_session_token = {}\n",
            bedrock_fake::ACCESS_KEY,
            bedrock_fake::SESSION_TOKEN
        ),
    )
    .unwrap();
    let aws_config = dir.join("config");
    std::fs::write(&aws_config, "").unwrap();
    let sa = dir.join("service-account.json");
    std::fs::write(&sa, vertex.service_account_json()).unwrap();
    let toml = format!(
        r#"
listen = "127.0.0.1:0"

[[upstreams]]
name = "anthropic"
base_url = "{anthropic}"
api_key_env = "SIM_KEY"

[[upstreams]]
name = "bedrock"
kind = "bedrock"
region = "{region}"
profile = "seawall-test"
beta = "configured-beta-2025-01-01"
connect_timeout = "500ms"

[[upstreams]]
name = "vertex"
kind = "vertex"
project = "{project}"
region = "{vregion}"
base_url = "{vertex_url}"
connect_timeout = "500ms"

[[models]]
name = "sonnet"
upstream = "anthropic"
id = "claude-sonnet-4-5"
fallbacks = ["sonnet-bedrock", "sonnet-vertex"]

[[models]]
name = "sonnet-bedrock"
upstream = "bedrock"
id = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"

[[models]]
name = "sonnet-vertex"
upstream = "vertex"
id = "{vmodel}"

[limits.bedrock]
rpm = {bedrock_rpm}

[retry]
deadline = "5s"
attempt_timeout = "3s"
min_attempt = "20ms"
hedge_after = "off"

[retry.backoff]
base = "20ms"
cap = "100ms"
attempts = 1

[probes]
enabled = false

[gateway]
tokens = ["{TOKEN}"]
shutdown_grace = "2s"
"#,
        region = bedrock_fake::REGION,
        project = vertex_fake::PROJECT,
        vregion = vertex_fake::REGION,
        vertex_url = vertex.url(),
        vmodel = vertex_fake::MODEL,
    );
    let config = Config::from_toml(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
    let bedrock_url = bedrock.url();
    let env = move |var: &str| match var {
        "SIM_KEY" => Some(KEY.to_owned()),
        "AWS_SHARED_CREDENTIALS_FILE" => Some(credentials.display().to_string()),
        "AWS_CONFIG_FILE" => Some(aws_config.display().to_string()),
        // The endpoint override the AWS SDKs honour (no base_url in the file).
        "AWS_ENDPOINT_URL_BEDROCK_RUNTIME" => Some(bedrock_url.clone()),
        "GOOGLE_APPLICATION_CREDENTIALS" => Some(sa.display().to_string()),
        _ => None,
    };
    let gateway = Gateway::start_with_env(&config, env).await.unwrap();
    let gw = Gw::from_gateway(gateway).await;
    World {
        gw,
        bedrock,
        vertex,
    }
}

fn tool_call(stream: bool) -> Value {
    json!({
        "model": "sonnet",
        "max_tokens": 256,
        "stream": stream,
        "tools": [{"name": "get_weather", "description": "Weather of a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}],
        "messages": [{"role": "user", "content": "Weather in Paris?"}]
    })
}

async fn post(gw: &Gw, body: &Value, beta: Option<&str>) -> reqwest::Response {
    let mut req = client()
        .post(format!("{}/v1/messages", gw.url))
        .header("x-api-key", TOKEN)
        .header("anthropic-version", "2023-06-01")
        .json(body);
    if let Some(beta) = beta {
        req = req.header("anthropic-beta", beta);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn tool_use_is_answered_by_bedrock_while_anthropic_is_overloaded_unary_and_streamed() {
    let w = world("bedrock-serves", bedrock_fake::SECRET_KEY).await;
    for beta in [None, Some("fine-grained-tool-streaming-2025-05-14")] {
        // Unary.
        let resp = post(&w.gw, &tool_call(false), beta).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["request-id"], "aws-req-invoke-1");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["stop_reason"], "tool_use");
        assert_eq!(v["content"][1]["name"], "get_weather");
        assert_eq!(v["content"][1]["input"]["city"], "Paris");
        // Streamed: the same SSE the Anthropic API sends.
        let resp = post(&w.gw, &tool_call(true), beta).await;
        assert_eq!(resp.status(), 200);
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        let events = sse_events(&resp.text().await.unwrap());
        let kinds: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        let json: String = events
            .iter()
            .filter_map(|(_, d)| d.pointer("/delta/partial_json").and_then(Value::as_str))
            .collect();
        assert_eq!(
            serde_json::from_str::<Value>(&json).unwrap()["city"],
            "Paris"
        );
    }
    // What Bedrock saw: four signed calls on the id's path, Bedrock's body, the betas in it.
    let seen = w.bedrock.seen();
    assert_eq!(seen.len(), 4, "{seen:?}");
    for (i, s) in seen.iter().enumerate() {
        assert!(s.signed, "call {i} verified");
        assert_eq!(
            s.session_token.as_deref(),
            Some(bedrock_fake::SESSION_TOKEN)
        );
        let op = if i % 2 == 0 {
            "invoke"
        } else {
            "invoke-with-response-stream"
        };
        assert_eq!(
            s.path,
            format!("/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/{op}")
        );
        assert_eq!(s.body["anthropic_version"], "bedrock-2023-05-31");
        assert!(s.body.get("model").is_none() && s.body.get("stream").is_none());
        assert_eq!(s.body["tools"][0]["name"], "get_weather");
        let mut betas = vec![json!("configured-beta-2025-01-01")];
        if i >= 2 {
            betas.push(json!("fine-grained-tool-streaming-2025-05-14"));
        }
        assert_eq!(s.body["anthropic_beta"], Value::Array(betas), "call {i}");
    }
    assert!(w.vertex.calls().is_empty(), "Bedrock served everything");
}

#[tokio::test]
async fn vertex_answers_while_bedrock_throttles_with_a_token_from_a_verified_jwt() {
    let w = world("vertex-serves", bedrock_fake::SECRET_KEY).await;
    w.bedrock.set_mode(BedrockMode::Throttle);
    for stream in [false, true] {
        let resp = post(&w.gw, &tool_call(stream), Some("beta-x")).await;
        assert_eq!(resp.status(), 200);
        let text = resp.text().await.unwrap();
        if stream {
            let events = sse_events(&text);
            assert_eq!(events.last().map(|(e, _)| e.as_str()), Some("message_stop"));
            assert!(text.contains("toolu_vrtx_02"), "{text}");
        } else {
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["content"][0]["input"]["city"], "Lyon");
        }
    }
    // One token for both calls (cached), obtained with a JWT the token endpoint verified.
    assert_eq!(w.vertex.tokens_issued().len(), 1);
    assert_eq!(w.vertex.jwt_rejections(), 0);
    let calls = w.vertex.calls();
    assert_eq!(calls.len(), 2);
    assert!(calls.iter().all(|(_, _, issued)| *issued));
    assert!(
        calls[0]
            .0
            .ends_with("/models/claude-sonnet-4-5@20250929:rawPredict"),
        "{}",
        calls[0].0
    );
    assert!(calls[1].0.ends_with(":streamRawPredict"));
    assert_eq!(
        calls[1].1["stream"], true,
        "the SDK keeps stream for streamRawPredict"
    );
    // Bedrock was asked (and throttled) once per call: a 429 moves on, it is not retried here.
    assert_eq!(w.bedrock.seen().len(), 2);
}

#[tokio::test]
async fn a_bedrock_stream_that_fails_after_content_ends_with_an_error_event() {
    let w = world("bedrock-breaks", bedrock_fake::SECRET_KEY).await;
    w.bedrock.set_mode(BedrockMode::BreakAfterContent);
    let resp = post(&w.gw, &tool_call(true), None).await;
    assert_eq!(resp.status(), 200);
    let events = sse_events(&resp.text().await.unwrap());
    let kinds: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"message_start"));
    assert!(kinds.contains(&"content_block_delta"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"error"), "{kinds:?}");
    assert!(!kinds.contains(&"message_stop"));
    let (_, err) = events.last().unwrap();
    assert_eq!(err["type"], "error");
    assert!(err["error"]["type"].is_string());
    // After content the call could not move on: Vertex never saw it.
    assert!(w.vertex.calls().is_empty());
}

#[tokio::test]
async fn a_wrong_secret_key_is_a_fast_clear_error_and_no_secret_shows() {
    let w = world("wrong-key", "not-the-right-secret-key-0001").await;
    w.vertex.set_mode(VertexMode::Exhausted);
    let started = Instant::now();
    let resp = post(&w.gw, &tool_call(false), None).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "answered in {took:?}");
    assert_ne!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    // Bedrock refused the signature once: the same credentials were not sent again.
    let seen = w.bedrock.seen();
    assert_eq!(seen.len(), 1, "no retry storm: {seen:?}");
    assert!(!seen[0].signed);
    // The next call skips Bedrock at once: its (only) credentials are quarantined.
    let _ = post(&w.gw, &tool_call(false), None).await;
    assert_eq!(
        w.bedrock.seen().len(),
        1,
        "quarantined credentials are not used again at once"
    );
    // No secret in the answer, in /status, in the transports' Debug.
    let status = client()
        .get(format!("{}/status", w.gw.url))
        .header("x-api-key", TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(status.contains("bedrock"), "{status}");
    for text in [&text, &status] {
        assert_no_secret(text);
        for secret in [
            bedrock_fake::SECRET_KEY,
            "not-the-right-secret-key-0001",
            bedrock_fake::SESSION_TOKEN,
            "ya29.test-access-token",
            "BEGIN PRIVATE KEY",
        ] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
    }
}

#[tokio::test]
async fn count_tokens_uses_the_platform_counters() {
    use seawall::core::upstream::{Attempt, ForwardHeaders, Upstream};
    use seawall::transport::{
        AwsCredentials, BedrockOptions, BedrockUpstream, GoogleCredentials, VertexOptions,
        VertexUpstream,
    };
    let bedrock = Bedrock::start().await;
    let vertex = Vertex::start().await;
    let attempt = |model: &str| Attempt {
        model: model.to_owned(),
        body: bytes::Bytes::from(tool_call(false).to_string()),
        key: 0,
        retry_count: 0,
        timeout: Duration::from_secs(2),
        idempotency_key: None,
        forward: ForwardHeaders::default(),
    };
    let mut options = BedrockOptions::new(bedrock_fake::REGION);
    options.base_url = Some(bedrock.url());
    options.credentials = AwsCredentials::Provider(
        aws_credential_types::provider::SharedCredentialsProvider::new(
            aws_credential_types::Credentials::new(
                bedrock_fake::ACCESS_KEY,
                bedrock_fake::SECRET_KEY,
                Some(bedrock_fake::SESSION_TOKEN.to_owned()),
                None,
                "test",
            ),
        ),
    );
    let b = BedrockUpstream::new(options).unwrap();
    let n = b
        .count_tokens(attempt("us.anthropic.claude-sonnet-4-5-20250929-v1:0"))
        .unwrap()
        .await
        .unwrap();
    assert_eq!(n, 42);
    assert!(bedrock.seen()[0].signed);
    assert!(bedrock.seen()[0].path.ends_with("/count-tokens"));
    let debug = format!("{b:?}");
    assert!(
        !debug.contains(bedrock_fake::SECRET_KEY) && !debug.contains(bedrock_fake::SESSION_TOKEN),
        "{debug}"
    );

    let dir = temp_dir("count");
    let sa = dir.join("sa.json");
    std::fs::write(&sa, vertex.service_account_json()).unwrap();
    let mut options = VertexOptions::new(vertex_fake::PROJECT, vertex_fake::REGION);
    options.base_url = Some(vertex.url());
    options.credentials = GoogleCredentials::ServiceAccountFile(sa);
    let v = VertexUpstream::new(options).unwrap();
    assert_eq!(
        v.count_tokens(attempt(vertex_fake::MODEL))
            .unwrap()
            .await
            .unwrap(),
        17
    );
    let calls = vertex.calls();
    assert!(
        calls[0].0.ends_with("/models/count-tokens:rawPredict"),
        "{}",
        calls[0].0
    );
    assert_eq!(
        calls[0].1["model"],
        vertex_fake::MODEL,
        "the counter's body names the model"
    );
    // An overloaded model on Vertex answers in Anthropic's shape: passed through as it is.
    vertex.set_mode(VertexMode::Overloaded);
    let r = v.send(attempt(vertex_fake::MODEL)).await.unwrap();
    assert_eq!(r.status, 529);
    vertex.set_mode(VertexMode::Exhausted);
    let r = v.send(attempt(vertex_fake::MODEL)).await.unwrap();
    assert_eq!(r.status, 429);
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert!(!format!("{v:?}").contains("PRIVATE KEY"));
}

#[tokio::test]
async fn bedrock_limits_hold_calls_within_its_quota_and_the_chain_moves_on() {
    let w = world_with("bedrock-limits", bedrock_fake::SECRET_KEY, 1).await;
    for _ in 0..3 {
        let resp = post(&w.gw, &tool_call(false), None).await;
        assert_eq!(resp.status(), 200);
    }
    // One request per minute on Bedrock: it saw one call, never a call past its quota (no
    // 429 from it); Vertex served the rest.
    assert_eq!(w.bedrock.seen().len(), 1);
    assert_eq!(w.vertex.calls().len(), 2);
}
