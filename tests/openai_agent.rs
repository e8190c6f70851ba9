//! An agent's call leaves Anthropic's API for an OpenAI-compatible model and keeps its tools,
//! images and stream: the gateway in-process over loopback, the scripted Messages API fake
//! (overloaded) and the scripted chat completions fake behind it, each checking its own wire.
//! Real time, millisecond settings.

mod support;

use serde_json::{json, Value};

use support::agents::{anthropic_fake, openai_fake, Fake, CITY, WEATHER};
use support::gateway::*;
use support::http::{header, sse_events};

const OPENAI_KEY: &str = "sk-proj-OPENAISECRET-agent-0001";

async fn two_vendors() -> (Gw, Fake, Fake) {
    let (anthropic, claude) = anthropic_fake().await;
    let (openai, gpt) = openai_fake().await;
    let toml = config(
        &anthropic,
        &format!(
            r#"
[[upstreams]]
name = "openai"
kind = "openai"
base_url = "{openai}"
api_key_env = "OPENAI_KEY"

[[models]]
name = "claude-sonnet-4-5"
fallbacks = ["gpt-4o"]

[[models]]
name = "gpt-4o"
upstream = "openai"

{}"#,
            gateway_section("")
        ),
    );
    let gw = Gw::start_with_keys(&toml, &[("OPENAI_KEY", OPENAI_KEY)]).await;
    (gw, claude, gpt)
}

fn tools() -> Value {
    json!([{"name": "get_weather", "description": "Weather for a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                             "required": ["city"]}}])
}

fn first_turn() -> Value {
    json!({"role": "user", "content": [
        {"type": "text", "text": "Weather where this photo was taken?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_use_call_falls_back_to_openai_unary_and_the_next_turn_keeps_its_shape() {
    let (gw, claude, gpt) = two_vendors().await;
    claude.fail(true);
    let resp = post(
        &gw,
        "/v1/messages",
        Some(TOKEN),
        &json!({"model": "claude-sonnet-4-5", "max_tokens": 256, "tools": tools(),
                "tool_choice": {"type": "auto"}, "messages": [first_turn()]}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "seawall-model").as_deref(), Some("gpt-4o"));
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["stop_reason"], "tool_use");
    let call = answer["content"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["type"] == "tool_use")
        .cloned()
        .expect("a tool_use block");
    assert_eq!(call["name"], "get_weather");
    assert_eq!(
        call["input"],
        json!({"city": CITY}),
        "the input parses as an object"
    );
    assert!(claude.count() >= 1, "the primary was tried first");
    // What OpenAI saw: function tools, the image as a data URL.
    let sent = &gpt.bodies()[0];
    assert_eq!(sent["tools"][0]["type"], "function");
    assert_eq!(
        sent["tools"][0]["function"]["parameters"]["required"],
        json!(["city"])
    );
    assert_eq!(sent["tool_choice"], "auto");
    assert_eq!(
        sent["messages"][0]["content"][1],
        json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}})
    );
    let auth = gpt.headers.lock().unwrap()[0]
        .get("authorization")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(auth, format!("Bearer {OPENAI_KEY}"));

    // The next turn: the answer as the assistant turn, the tool's result as a user turn.
    let resp = post(
        &gw,
        "/v1/messages",
        Some(TOKEN),
        &json!({"model": "claude-sonnet-4-5", "max_tokens": 256, "tools": tools(), "messages": [
            first_turn(),
            {"role": "assistant", "content": answer["content"]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call["id"],
                                          "content": "18C and sunny"}]}]}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["content"][0]["text"], WEATHER);
    let sent = &gpt.bodies()[1];
    let messages = sent["messages"].as_array().unwrap();
    assert_eq!(messages[1]["role"], "assistant");
    assert_eq!(messages[1]["tool_calls"][0]["id"], call["id"]);
    assert_eq!(
        serde_json::from_str::<Value>(
            messages[1]["tool_calls"][0]["function"]["arguments"]
                .as_str()
                .unwrap()
        )
        .unwrap(),
        json!({"city": CITY})
    );
    assert_eq!(
        messages[2],
        json!({"role": "tool", "tool_call_id": call["id"], "content": "18C and sunny"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_tool_use_call_falls_back_before_content_and_streams_from_openai() {
    let (gw, claude, gpt) = two_vendors().await;
    claude.fail(true);
    let resp = post(
        &gw,
        "/v1/messages",
        Some(TOKEN),
        &json!({"model": "claude-sonnet-4-5", "max_tokens": 256, "stream": true,
                "tools": tools(), "messages": [first_turn()]}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "seawall-model").as_deref(), Some("gpt-4o"));
    assert!(header(&resp, "content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let events = sse_events(&resp.text().await.unwrap());
    let kinds: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"message_start"));
    assert_eq!(kinds.last(), Some(&"message_stop"));
    assert!(!kinds.contains(&"error"), "{kinds:?}");
    let start = events
        .iter()
        .find(|(e, d)| e == "content_block_start" && d["content_block"]["type"] == "tool_use")
        .expect("a tool_use block starts");
    let index = start.1["index"].clone();
    assert_eq!(start.1["content_block"]["name"], "get_weather");
    let json: String = events
        .iter()
        .filter(|(e, d)| e == "content_block_delta" && d["index"] == index)
        .filter_map(|(_, d)| d["delta"]["partial_json"].as_str())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&json).unwrap(),
        json!({"city": CITY})
    );
    let delta = events.iter().find(|(e, _)| e == "message_delta").unwrap();
    assert_eq!(delta.1["delta"]["stop_reason"], "tool_use");
    assert_eq!(delta.1["usage"]["output_tokens"], 7);
    assert_eq!(
        delta.1["usage"]["input_tokens"], 30,
        "usage from the last chunk"
    );
    let sent = &gpt.bodies()[0];
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["stream_options"], json!({"include_usage": true}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_model_out_of_quota_is_answered_at_once_and_never_retried() {
    let (gw, _claude, gpt) = two_vendors().await;
    gpt.fail(true);
    for _ in 0..3 {
        let resp = post(&gw, "/v1/messages", Some(TOKEN), &body("gpt-4o")).await;
        assert_eq!(resp.status(), 429);
        assert_eq!(
            header(&resp, "x-should-retry").as_deref(),
            Some("false"),
            "the SDK must not retry it either"
        );
        let v: Value = resp.json().await.unwrap();
        assert!(
            v["error"]["message"].as_str().unwrap().contains("quota"),
            "{v}"
        );
    }
    assert_eq!(gpt.count(), 3, "one attempt per call: no retry storm");
}
