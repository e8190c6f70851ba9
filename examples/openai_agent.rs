//! An agent loop with tools over the OpenAI SDK's wire, through seawall's gateway: what any
//! OpenAI-SDK agent framework sends to `POST /v1/chat/completions`, served by a Claude chain.
//!
//! Run: `cargo run --example openai_agent` (no API key, no server: the gateway runs in-process
//! over a small scripted Messages API that asks for the tool once, then answers).
//! With a real key: `ANTHROPIC_API_KEY=... cargo run --example openai_agent -- --live`.
//!
//! The loop is the one every OpenAI-style agent runs: send the conversation and the tools; if
//! the answer has `tool_calls`, run each tool, append the assistant message and one `tool`
//! message per call, and ask again; stop at the first answer without tool calls.

use std::time::Duration;

use axum::body::Bytes;
use serde_json::{json, Value};

use seawall::config::Config;
use seawall::gateway::Gateway;

const TOKEN: &str = "example-client-token-0001";

/// The tool the agent offers, in OpenAI's shape.
fn tools() -> Value {
    json!([{"type": "function", "function": {
        "name": "get_weather", "description": "The current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}}])
}

/// The tool itself.
fn get_weather(args: &Value) -> String {
    let city = args["city"].as_str().unwrap_or("nowhere");
    format!("18C and sunny in {city}")
}

/// A scripted Messages API: asks for `get_weather` until it sees the tool's result.
async fn scripted_api() -> String {
    let app = axum::Router::new().route(
        "/v1/messages",
        axum::routing::post(|body: Bytes| async move {
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let last = &body["messages"].as_array().and_then(|m| m.last()).cloned();
            let answered = last
                .as_ref()
                .and_then(|m| m["content"].as_array())
                .is_some_and(|c| c.iter().any(|b| b["type"] == "tool_result"));
            let (content, stop) = if answered {
                (
                    json!([{"type": "text", "text": "It is 18C and sunny in Paris."}]),
                    "end_turn",
                )
            } else {
                (
                    json!([{"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                            "input": {"city": "Paris"}}]),
                    "tool_use",
                )
            };
            axum::Json(
                json!({"id": "msg_1", "type": "message", "role": "assistant",
                "model": body["model"], "content": content, "stop_reason": stop,
                "stop_sequence": null, "usage": {"input_tokens": 40, "output_tokens": 12}}),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let addr = listener.local_addr().expect("its address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let live = std::env::args().any(|a| a == "--live");
    let base_url = if live {
        "https://api.anthropic.com".to_owned()
    } else {
        scripted_api().await
    };
    let config = Config::from_toml(&format!(
        r#"
[[upstreams]]
name = "anthropic"
base_url = "{base_url}"
api_key_env = "ANTHROPIC_API_KEY"

[[models]]
name = "claude-sonnet-4-5"
fallbacks = ["claude-haiku-4-5"]

[[models]]
name = "claude-haiku-4-5"

[gateway]
tokens = ["{TOKEN}"]
"#
    ))?;
    let key = std::env::var("ANTHROPIC_API_KEY").ok();
    let gateway = Gateway::start_with_env(&config, move |name| {
        (name == "ANTHROPIC_API_KEY")
            .then(|| key.clone().unwrap_or_else(|| "sk-ant-scripted".into()))
    })
    .await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v1/chat/completions", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(gateway.serve(listener, async move {
        let _ = stopped.await;
    }));

    // The agent: an OpenAI-SDK-shaped loop over plain HTTP.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let mut messages = vec![
        json!({"role": "system", "content": "Use the tools you are given."}),
        json!({"role": "user", "content": "What is the weather in Paris?"}),
    ];
    for turn in 1..=5 {
        let answer: Value = client
            .post(&url)
            .bearer_auth(TOKEN)
            .json(
                &json!({"model": "claude-sonnet-4-5", "max_completion_tokens": 512,
                          "messages": messages, "tools": tools()}),
            )
            .send()
            .await?
            .json()
            .await?;
        if let Some(error) = answer.get("error") {
            return Err(format!("the gateway said: {error}").into());
        }
        let message = answer["choices"][0]["message"].clone();
        let calls = message["tool_calls"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        println!(
            "turn {turn}: finish_reason={} tool_calls={}",
            answer["choices"][0]["finish_reason"],
            calls.len()
        );
        if calls.is_empty() {
            println!("answer: {}", message["content"].as_str().unwrap_or(""));
            break;
        }
        messages.push(message);
        for call in calls {
            let args: Value =
                serde_json::from_str(call["function"]["arguments"].as_str().unwrap_or("{}"))?;
            let result = get_weather(&args);
            println!("  ran {}({args}) -> {result}", call["function"]["name"]);
            messages.push(json!({"role": "tool", "tool_call_id": call["id"], "content": result}));
        }
    }
    let _ = stop.send(());
    let _ = server.await;
    Ok(())
}
