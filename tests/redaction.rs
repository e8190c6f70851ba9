//! An upstream that echoes the key it was sent (as some do: "invalid x-api-key sk-ant-…") must
//! not hand it to clients: over real loopback HTTP, its 4xx error body, and an `error` event in
//! the middle of a stream, reach the client with the configured key and anything shaped like an
//! API key (`sk-…`) replaced by `[redacted]`, and none reaches the logs.

mod support;

use axum::body::Bytes;
use axum::http::HeaderMap;
use serde_json::{json, Value};

use support::gateway::*;
use support::http::serve_app;
use support::{init_logs, logs};

/// Someone else's key, in the upstream's message: redacted all the same.
const OTHER: &str = "sk-ant-api03-SOMEONEELSESKEY-0123456789abcdef";

/// An upstream that echoes the `x-api-key` it got: in a 400 for plain requests, in an `error`
/// event after some content for streams.
async fn echoing_upstream() -> String {
    let app = axum::Router::new().route(
        "/v1/messages",
        axum::routing::post(|headers: HeaderMap, body: Bytes| async move {
            let key = headers
                .get("x-api-key")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let message = format!("invalid request for key {key} (not {OTHER}); see docs");
            let request: Value = serde_json::from_slice(&body).unwrap_or_default();
            if request["stream"] == json!(true) {
                let error = json!({"type": "error", "error": {"type": "overloaded_error", "message": message}});
                let sse = format!(
                    "event: message_start\ndata: {}\n\n\
                     event: content_block_start\ndata: {}\n\n\
                     event: content_block_delta\ndata: {}\n\n\
                     event: error\ndata: {error}\n\n",
                    json!({"type": "message_start", "message": {"id": "msg_1", "type": "message",
                        "role": "assistant", "model": "m", "content": [], "stop_reason": null,
                        "usage": {"input_tokens": 3, "output_tokens": 1}}}),
                    json!({"type": "content_block_start", "index": 0,
                        "content_block": {"type": "text", "text": ""}}),
                    json!({"type": "content_block_delta", "index": 0,
                        "delta": {"type": "text_delta", "text": "partial"}}),
                );
                return (
                    axum::http::StatusCode::OK,
                    [("content-type", "text/event-stream"), ("request-id", "req_echo_2")],
                    sse,
                );
            }
            let body = json!({"type": "error", "error": {"type": "invalid_request_error",
                "message": message}, "request_id": "req_echo_1"});
            (
                axum::http::StatusCode::BAD_REQUEST,
                [("content-type", "application/json"), ("request-id", "req_echo_1")],
                body.to_string(),
            )
        }),
    );
    let addr = serve_app(app).await;
    format!("http://{addr}")
}

fn assert_clean(text: &str) {
    assert_no_secret(text);
    assert!(!text.contains(OTHER), "another key leaked: {text}");
    assert!(
        !text.contains("SOMEONEELSE"),
        "a piece of a key leaked: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_echoes_the_key_never_hands_it_to_a_client_or_a_log() {
    init_logs();
    let url = echoing_upstream().await;
    let gw = Gw::start(&config(
        &url,
        &format!("[[models]]\nname = \"m\"\n{}", gateway_section("")),
    ))
    .await;

    // A 400 passes through with its status, type and request id; its message loses the keys.
    let resp = post(&gw, "/v1/messages", Some(TOKEN), &body("m")).await;
    assert_eq!(header(&resp, "request-id").as_deref(), Some("req_echo_1"));
    let (v, _) = api_error(resp, 400, "invalid_request_error").await;
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("invalid request for key [redacted] (not sk-[redacted]); see docs"),
        "{message}"
    );
    assert_clean(&v.to_string());

    // A stream that breaks after content ends with the upstream's error event, keys removed.
    let mut streamed = body("m");
    streamed["stream"] = json!(true);
    let resp = post(&gw, "/v1/messages", Some(TOKEN), &streamed).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(text.contains("partial"), "{text}");
    let error = text
        .split("event: error\ndata: ")
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .unwrap_or_else(|| panic!("no error event: {text}"));
    let error: Value = serde_json::from_str(error).unwrap();
    assert_eq!(error["error"]["type"], "overloaded_error", "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("key [redacted]"),
        "{error}"
    );
    assert_clean(&text);

    // Nothing the gateway logged about either call holds a key.
    assert_clean(&logs());
}
