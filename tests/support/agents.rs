//! Two scripted agent upstreams over loopback, each checking the wire it is sent the way the
//! real API would and written independently of seawall's translation code:
//!
//! - [`anthropic_fake`]: the Messages API. A turn whose last user message holds a
//!   `tool_result` gets a text answer; a turn with `tools` gets a `tool_use` of the first tool
//!   (`{"city": "Paris"}`); else a text answer. Streams as the API does. `overloaded` makes it
//!   answer 529.
//! - [`openai_fake`]: chat completions, the same script in OpenAI's shapes (a `tool` message
//!   last gets text; `tools` get a `tool_calls` answer; streams as chunks with a usage chunk when
//!   `stream_options.include_usage`). `out_of_quota` makes it answer 429 `insufficient_quota`.
//!
//! Each refuses what its API refuses: a `tool_result` whose id answers no earlier `tool_use`,
//! a `tool` message whose `tool_call_id` answers no earlier call, an unknown role, a missing key.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};

/// What a fake was sent, and its switches.
#[derive(Clone, Default)]
pub struct Fake {
    /// Every request body, in order.
    pub seen: Arc<Mutex<Vec<Value>>>,
    /// Every request's headers, in order.
    pub headers: Arc<Mutex<Vec<HeaderMap>>>,
    /// Anthropic: answer 529. OpenAI: answer 429 `insufficient_quota`.
    pub failing: Arc<AtomicBool>,
}

impl Fake {
    /// The bodies seen so far.
    pub fn bodies(&self) -> Vec<Value> {
        self.seen.lock().unwrap().clone()
    }

    /// How many requests arrived.
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Turn failing on or off.
    pub fn fail(&self, on: bool) {
        self.failing.store(on, Ordering::SeqCst);
    }
}

/// The tool call the fakes make, and its answer.
pub const CITY: &str = "Paris";
pub const WEATHER: &str = "It is 18C and sunny in Paris.";

fn json_response(status: u16, body: &Value) -> Response {
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

fn sse_response(frames: String) -> Response {
    let mut r = Response::new(Body::from(frames));
    r.headers_mut()
        .insert("content-type", "text/event-stream".parse().unwrap());
    r
}

// ---------------------------------------------------------------------------------------------
// the Messages API

fn anthropic_invalid(message: &str) -> Response {
    json_response(
        400,
        &json!({"type": "error", "error": {"type": "invalid_request_error", "message": message}}),
    )
}

/// Check a Messages request as the API would; the content blocks of the answer.
fn anthropic_script(body: &Value) -> Result<Vec<Value>, String> {
    if !body["max_tokens"].is_u64() {
        return Err("max_tokens: Field required".into());
    }
    let messages = body["messages"]
        .as_array()
        .ok_or("messages: Field required")?;
    let mut tool_uses = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let role = m["role"].as_str().unwrap_or("");
        if role != "user" && role != "assistant" {
            return Err(format!(
                "messages.{i}.role: Input should be 'user' or 'assistant'"
            ));
        }
        for block in m["content"].as_array().into_iter().flatten() {
            match block["type"].as_str() {
                Some("tool_use") => tool_uses.push(block["id"].as_str().unwrap_or("").to_owned()),
                Some("tool_result") => {
                    let id = block["tool_use_id"].as_str().unwrap_or("");
                    if !tool_uses.iter().any(|u| u == id) {
                        return Err(format!(
                            "messages.{i}: unexpected tool_use_id found in tool_result blocks: {id}"
                        ));
                    }
                }
                Some("text" | "image") => {}
                other => return Err(format!("messages.{i}: unknown block type {other:?}")),
            }
        }
    }
    let last = messages
        .last()
        .ok_or("messages: at least one message is required")?;
    let answered = last["content"]
        .as_array()
        .is_some_and(|c| c.iter().any(|b| b["type"] == "tool_result"));
    let tool = body["tools"][0]["name"].as_str();
    Ok(match (answered, tool) {
        (false, Some(name)) => vec![
            json!({"type": "text", "text": "Let me check."}),
            json!({"type": "tool_use", "id": "toolu_fake_1", "name": name, "input": {"city": CITY}}),
        ],
        (true, _) => vec![json!({"type": "text", "text": WEATHER})],
        (false, None) => vec![json!({"type": "text", "text": "Hello from the fake."})],
    })
}

fn anthropic_frames(blocks: &[Value], stop: &str) -> String {
    let mut out = String::new();
    let mut push = |event: &str, data: Value| {
        out.push_str(&format!("event: {event}\ndata: {data}\n\n"));
    };
    push(
        "message_start",
        json!({"type": "message_start", "message": {"id": "msg_fake_1", "type": "message",
            "role": "assistant", "model": "fake", "content": [], "stop_reason": null,
            "stop_sequence": null, "usage": {"input_tokens": 21, "output_tokens": 1}}}),
    );
    for (i, block) in blocks.iter().enumerate() {
        if block["type"] == "text" {
            push(
                "content_block_start",
                json!({"type": "content_block_start", "index": i,
                "content_block": {"type": "text", "text": ""}}),
            );
            let text = block["text"].as_str().unwrap_or("");
            let (a, b) = text.split_at(text.len() / 2);
            for piece in [a, b] {
                push(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": i,
                    "delta": {"type": "text_delta", "text": piece}}),
                );
            }
        } else {
            push(
                "content_block_start",
                json!({"type": "content_block_start", "index": i,
                "content_block": {"type": "tool_use", "id": block["id"], "name": block["name"],
                                  "input": {}}}),
            );
            let input = block["input"].to_string();
            let (a, b) = input.split_at(input.len() / 2);
            for piece in [a, b] {
                push(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": i,
                    "delta": {"type": "input_json_delta", "partial_json": piece}}),
                );
            }
        }
        push(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": i}),
        );
    }
    push(
        "message_delta",
        json!({"type": "message_delta",
        "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": 9}}),
    );
    push("message_stop", json!({"type": "message_stop"}));
    out
}

/// The scripted Messages API on loopback: its base URL and its record.
pub async fn anthropic_fake() -> (String, Fake) {
    let fake = Fake::default();
    let f = fake.clone();
    let app = axum::Router::new().route(
        "/v1/messages",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let f = f.clone();
            async move {
                let Ok(body) = serde_json::from_slice::<Value>(&body) else {
                    return anthropic_invalid("the body is not JSON");
                };
                f.seen.lock().unwrap().push(body.clone());
                f.headers.lock().unwrap().push(headers.clone());
                if headers.get("x-api-key").is_none() {
                    return json_response(401, &json!({"type": "error", "error": {
                        "type": "authentication_error", "message": "x-api-key header is required"}}));
                }
                if f.failing.load(Ordering::SeqCst) {
                    return json_response(529, &json!({"type": "error", "error": {
                        "type": "overloaded_error", "message": "Overloaded"}}));
                }
                let blocks = match anthropic_script(&body) {
                    Ok(b) => b,
                    Err(why) => return anthropic_invalid(&why),
                };
                let stop = if blocks.iter().any(|b| b["type"] == "tool_use") {
                    "tool_use"
                } else {
                    "end_turn"
                };
                if body["stream"] == true {
                    return sse_response(anthropic_frames(&blocks, stop));
                }
                json_response(200, &json!({"id": "msg_fake_1", "type": "message",
                    "role": "assistant", "model": body["model"], "content": blocks,
                    "stop_reason": stop, "stop_sequence": null,
                    "usage": {"input_tokens": 21, "output_tokens": 9}}))
            }
        }),
    );
    let addr = super::http::serve_app(app).await;
    (format!("http://{addr}"), fake)
}

// ---------------------------------------------------------------------------------------------
// chat completions

fn openai_invalid(message: &str, param: &str) -> Response {
    json_response(
        400,
        &json!({"error": {"message": message, "type": "invalid_request_error",
                          "param": param, "code": null}}),
    )
}

/// Check a chat request as OpenAI would; the answer's text and tool call name.
fn openai_script(body: &Value) -> Result<(Option<String>, Option<String>), (String, String)> {
    let messages = body["messages"]
        .as_array()
        .ok_or(("messages is required".to_owned(), "messages".to_owned()))?;
    let mut calls = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        match m["role"].as_str() {
            Some("system" | "developer" | "user") => {}
            Some("assistant") => {
                for c in m["tool_calls"].as_array().into_iter().flatten() {
                    let args = c["function"]["arguments"].as_str().unwrap_or("");
                    if serde_json::from_str::<Value>(args).map_or(true, |v| !v.is_object()) {
                        return Err((
                            "arguments must be a JSON object string".into(),
                            format!("messages.[{i}].tool_calls"),
                        ));
                    }
                    calls.push(c["id"].as_str().unwrap_or("").to_owned());
                }
            }
            Some("tool") => {
                let id = m["tool_call_id"].as_str().unwrap_or("");
                if !calls.iter().any(|c| c == id) {
                    return Err((
                        "Invalid parameter: messages with role 'tool' must be a response to a \
                         preceeding message with 'tool_calls'."
                            .into(),
                        format!("messages.[{i}].role"),
                    ));
                }
            }
            _ => return Err(("invalid role".into(), format!("messages.[{i}].role"))),
        }
    }
    let last_is_tool = messages.last().is_some_and(|m| m["role"] == "tool");
    let tool = body["tools"][0]["function"]["name"].as_str();
    Ok(match (last_is_tool, tool) {
        (false, Some(name)) => (None, Some(name.to_owned())),
        (true, _) => (Some(WEATHER.to_owned()), None),
        (false, None) => (Some("Hello from the OpenAI fake.".to_owned()), None),
    })
}

/// The scripted chat completions API on loopback: its base URL and its record.
pub async fn openai_fake() -> (String, Fake) {
    let fake = Fake::default();
    let f = fake.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let f = f.clone();
            async move {
                let Ok(body) = serde_json::from_slice::<Value>(&body) else {
                    return openai_invalid("We could not parse the JSON body", "");
                };
                f.seen.lock().unwrap().push(body.clone());
                f.headers.lock().unwrap().push(headers.clone());
                let bearer = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.starts_with("Bearer sk-"));
                if !bearer {
                    return json_response(401, &json!({"error": {"message": "Incorrect API key",
                        "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}}));
                }
                if f.failing.load(Ordering::SeqCst) {
                    return json_response(429, &json!({"error": {
                        "message": "You exceeded your current quota, please check your plan and billing details.",
                        "type": "insufficient_quota", "param": null, "code": "insufficient_quota"}}));
                }
                let (text, tool) = match openai_script(&body) {
                    Ok(a) => a,
                    Err((message, param)) => return openai_invalid(&message, &param),
                };
                let finish = if tool.is_some() { "tool_calls" } else { "stop" };
                let model = body["model"].clone();
                if body["stream"] == true {
                    let mut out = String::new();
                    let mut chunk = |delta: Value, finish: Value| {
                        let c = json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                            "created": 1, "model": model,
                            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
                        out.push_str(&format!("data: {c}\n\n"));
                    };
                    chunk(json!({"role": "assistant", "content": ""}), Value::Null);
                    if let Some(text) = &text {
                        let (a, b) = text.split_at(text.len() / 2);
                        chunk(json!({"content": a}), Value::Null);
                        chunk(json!({"content": b}), Value::Null);
                    }
                    if let Some(name) = &tool {
                        chunk(json!({"tool_calls": [{"index": 0, "id": "call_fake_1", "type": "function",
                            "function": {"name": name, "arguments": ""}}]}), Value::Null);
                        chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}), Value::Null);
                        chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": format!("\"{CITY}\"}}")}}]}), Value::Null);
                    }
                    chunk(json!({}), json!(finish));
                    if body["stream_options"]["include_usage"] == true {
                        let c = json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                            "created": 1, "model": model, "choices": [],
                            "usage": {"prompt_tokens": 30, "completion_tokens": 7, "total_tokens": 37}});
                        out.push_str(&format!("data: {c}\n\n"));
                    }
                    out.push_str("data: [DONE]\n\n");
                    return sse_response(out);
                }
                let mut message = json!({"role": "assistant", "content": text});
                if let Some(name) = &tool {
                    message["tool_calls"] = json!([{"id": "call_fake_1", "type": "function",
                        "function": {"name": name, "arguments": format!("{{\"city\":\"{CITY}\"}}")}}]);
                }
                json_response(200, &json!({"id": "chatcmpl-fake", "object": "chat.completion",
                    "created": 1, "model": model,
                    "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                    "usage": {"prompt_tokens": 30, "completion_tokens": 7, "total_tokens": 37}}))
            }
        }),
    );
    let addr = super::http::serve_app(app).await;
    (format!("http://{addr}"), fake)
}
