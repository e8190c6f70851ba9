use serde_json::json;

use super::*;

const WIRE: Wire = Wire {
    max_tokens: MaxTokensField::MaxTokens,
};

fn translate(body: Value) -> Result<(Value, Vec<&'static str>), TransportError> {
    let t = request(body.to_string().as_bytes(), "m", WIRE)?;
    let v = serde_json::from_slice(&t.body).map_err(|e| TransportError::Invalid(e.to_string()))?;
    Ok((v, t.dropped.features().to_vec()))
}

fn refused(body: Value) -> String {
    match translate(body) {
        Err(TransportError::Invalid(m)) => m,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn nulls_count_as_absent_and_text_blocks_join() {
    let (v, dropped) = translate(json!({
        "model": "m", "max_tokens": 3, "tools": null, "system": [
            {"type": "text", "text": "a"}, {"type": "text", "text": "b", "cache_control": null}],
        "messages": [{"role": "user", "content": "hi"}]
    }))
    .unwrap();
    assert_eq!(
        v["messages"][0],
        json!({"role": "system", "content": "a\nb"})
    );
    assert!(dropped.is_empty());
}

#[test]
fn a_tool_round_trip_becomes_tools_tool_calls_and_tool_messages() {
    let (v, dropped) = translate(json!({
        "model": "gpt-x", "max_tokens": 100,
        "tools": [{"name": "get_weather", "description": "Weather for a city",
                   "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
                   "cache_control": {"type": "ephemeral"}}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hm", "signature": "sig"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "18C"}]},
                {"type": "text", "text": "And tomorrow?"}]},
        ],
    }))
    .unwrap();
    assert_eq!(
        v["tools"],
        json!([{"type": "function", "function": {"name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}])
    );
    assert_eq!(v["tool_choice"], "required");
    assert_eq!(v["parallel_tool_calls"], false);
    assert_eq!(
        v["messages"],
        json!([
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "Checking.", "tool_calls": [
                {"id": "toolu_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
            {"role": "user", "content": "And tomorrow?"},
        ])
    );
    assert_eq!(dropped, ["cache_control", "thinking"]);
}

#[test]
fn tool_choices_map_and_an_assistant_with_only_calls_has_null_content() {
    for (choice, want) in [
        (json!({"type": "auto"}), json!("auto")),
        (json!({"type": "none"}), json!("none")),
        (
            json!({"type": "tool", "name": "f"}),
            json!({"type": "function", "function": {"name": "f"}}),
        ),
    ] {
        let (v, _) = translate(json!({"max_tokens": 1, "tool_choice": choice,
            "messages": [{"role": "user", "content": "x"}]}))
        .unwrap();
        assert_eq!(v["tool_choice"], want);
        assert!(v.get("parallel_tool_calls").is_none());
    }
    let (v, _) = translate(json!({"max_tokens": 1, "messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]}))
    .unwrap();
    assert_eq!(v["messages"][1]["content"], Value::Null);
    assert_eq!(
        v["messages"][1]["tool_calls"][0]["function"]["arguments"],
        "{}"
    );
}

#[test]
fn images_become_image_url_parts_and_error_results_are_marked() {
    let (v, _) = translate(json!({"max_tokens": 1, "messages": [
        {"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "shot", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "is_error": true,
            "content": [{"type": "text", "text": "no screen"},
                        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "AAAA"}}]}]},
    ]}))
    .unwrap();
    assert_eq!(
        v["messages"][0]["content"],
        json!([
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
        ])
    );
    assert_eq!(
        v["messages"][2],
        json!({"role": "tool", "tool_call_id": "t1", "content": "Error: no screen"})
    );
    assert_eq!(
        v["messages"][3]["content"][1],
        json!({"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAAA"}}),
        "a tool's image follows in a user message"
    );
    assert_eq!(v["messages"].as_array().map(Vec::len), Some(4));
}

#[test]
fn a_stream_asks_for_usage_and_the_length_field_follows_the_wire() {
    let t = request(
        json!({"model": "m", "max_tokens": 9, "stream": true,
               "messages": [{"role": "user", "content": "x"}]})
        .to_string()
        .as_bytes(),
        "m",
        Wire {
            max_tokens: MaxTokensField::MaxCompletionTokens,
        },
    )
    .unwrap();
    assert!(t.stream);
    let v: Value = serde_json::from_slice(&t.body).unwrap();
    assert_eq!(v["max_completion_tokens"], 9);
    assert!(v.get("max_tokens").is_none());
    assert_eq!(v["stream"], true);
    assert_eq!(v["stream_options"], json!({"include_usage": true}));
}

#[test]
fn what_no_provider_can_take_is_refused_naming_the_field() {
    let user = |content: Value| json!({"max_tokens": 1, "messages": [{"role": "user", "content": content}]});
    for (body, field) in [
        (
            user(json!([{"type": "document", "source": {}}])),
            "messages[0].content[0] (document)",
        ),
        (
            user(json!([{"type": "image", "source": {"type": "file", "file_id": "f"}}])),
            "messages[0].content[0].source",
        ),
        (
            json!({"max_tokens": 1, "tools": [{"type": "web_search_20250305", "name": "web_search"}],
                   "messages": []}),
            "tools[0].type",
        ),
        (
            json!({"max_tokens": 1, "mcp_servers": [], "messages": []}),
            "mcp_servers",
        ),
        (
            json!({"max_tokens": 1, "messages": [{"role": "assistant", "content": [
                {"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}}]}]}),
            "messages[0].content[0] (server_tool_use)",
        ),
        (
            json!({"max_tokens": 1, "system": [{"type": "image", "source": {}}], "messages": []}),
            "system[0] (image)",
        ),
    ] {
        let m = refused(body);
        assert!(
            m.contains("cannot be sent to an OpenAI-compatible provider"),
            "{m}"
        );
        assert!(m.ends_with(field), "{field}: {m}");
    }
}

#[test]
fn a_whole_answer_becomes_a_chat_completion() {
    let message = json!({"id": "msg_01", "type": "message", "role": "assistant",
        "content": [{"type": "thinking", "thinking": "…"}, {"type": "text", "text": "Let me check."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 2}});
    let c: Value = serde_json::from_slice(
        &completion(message.to_string().as_bytes(), "sonnet", 1_700_000_000).unwrap(),
    )
    .unwrap();
    assert_eq!(c["id"], "chatcmpl-01");
    assert_eq!(c["object"], "chat.completion");
    assert_eq!(c["model"], "sonnet");
    assert_eq!(c["created"], 1_700_000_000);
    let choice = &c["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], "Let me check.");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["id"], "toolu_1");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"city": "Paris"}));
    assert_eq!(c["usage"]["prompt_tokens"], 12);
    assert_eq!(c["usage"]["total_tokens"], 17);
    assert_eq!(c["usage"]["prompt_tokens_details"]["cached_tokens"], 2);
    // The same usage as the stream's usage chunk.
    assert_eq!(c["usage"], chat_usage(Some(&message["usage"])));
    let empty: Value = serde_json::from_slice(
        &completion(br#"{"content": [], "stop_reason": "max_tokens"}"#, "m", 0).unwrap(),
    )
    .unwrap();
    assert_eq!(empty["choices"][0]["message"]["content"], Value::Null);
    assert_eq!(empty["choices"][0]["finish_reason"], "length");
    assert!(completion(b"not json", "m", 0).is_err());
    // A tool input with escapes is passed on as written, and parses back to itself.
    let tricky = json!({"content": [{"type": "tool_use", "id": "t", "name": "f",
        "input": {"q": "a \"quoted\" \u{e9} line\n"}}]});
    let c: Value =
        serde_json::from_slice(&completion(tricky.to_string().as_bytes(), "m", 0).unwrap())
            .unwrap();
    let args = c["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
        .as_str()
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(args).unwrap(),
        tricky["content"][0]["input"]
    );
}

fn ev(kind: &str, data: Value) -> SseEvent {
    SseEvent::new(kind, data.to_string())
}

#[test]
fn stream_events_become_chunks_with_tool_call_pieces_and_a_usage_chunk() {
    let mut chunks = Chunks::new("sonnet", 7, true);
    let events = [
        ev(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_9",
            "usage": {"input_tokens": 11, "output_tokens": 1}}}),
        ),
        ev("ping", json!({"type": "ping"})),
        ev(
            "content_block_start",
            json!({"index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
        ),
        ev(
            "content_block_delta",
            json!({"index": 0, "delta": {"type": "thinking_delta", "thinking": "hm"}}),
        ),
        ev(
            "content_block_start",
            json!({"index": 1, "content_block": {"type": "text", "text": ""}}),
        ),
        ev(
            "content_block_delta",
            json!({"index": 1, "delta": {"type": "text_delta", "text": "Hi"}}),
        ),
        ev("content_block_stop", json!({"index": 1})),
        ev(
            "content_block_start",
            json!({"index": 2, "content_block": {"type": "tool_use", "id": "toolu_7", "name": "f", "input": {}}}),
        ),
        ev(
            "content_block_delta",
            json!({"index": 2, "delta": {"type": "input_json_delta", "partial_json": "{\"a\":"}}),
        ),
        ev(
            "content_block_delta",
            json!({"index": 2, "delta": {"type": "input_json_delta", "partial_json": "1}"}}),
        ),
        ev(
            "message_delta",
            json!({"delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 6}}),
        ),
        ev("message_stop", json!({"type": "message_stop"})),
    ];
    let mut raw: Vec<String> = events.iter().flat_map(|e| chunks.push(e)).collect();
    raw.extend(chunks.finish());
    let out: Vec<Value> = raw
        .iter()
        .map(|c| serde_json::from_str(c).unwrap())
        .collect();
    let deltas: Vec<&Value> = out
        .iter()
        .filter_map(|c| c.pointer("/choices/0/delta"))
        .collect();
    assert_eq!(deltas[0], &json!({"role": "assistant", "content": ""}));
    assert_eq!(deltas[1], &json!({"content": "Hi"}));
    assert_eq!(
        deltas[2],
        &json!({"tool_calls": [{"index": 0, "id": "toolu_7", "type": "function",
                                "function": {"name": "f", "arguments": ""}}]})
    );
    let args: String = deltas
        .iter()
        .filter_map(|d| d.pointer("/tool_calls/0/function/arguments"))
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(args, "{\"a\":1}");
    assert_eq!(
        out.len(),
        7,
        "start, text, tool start, two pieces, finish, usage: {out:?}"
    );
    assert_eq!(out[5]["choices"][0]["finish_reason"], "tool_calls");
    assert!(out.iter().all(|c| c["id"] == "chatcmpl-9"));
    assert_eq!(out[6]["choices"], json!([]));
    assert_eq!(out[6]["usage"]["prompt_tokens"], 11);
    assert_eq!(out[6]["usage"]["completion_tokens"], 6);
}

#[test]
fn an_error_event_becomes_an_in_stream_error_and_no_usage_chunk_unless_asked() {
    let mut chunks = Chunks::new("m", 0, false);
    let out = chunks.push(&ev(
        "error",
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
    ));
    let v: Value = serde_json::from_str(&out[0]).unwrap();
    assert_eq!(v["error"]["type"], "overloaded_error");
    assert_eq!(v["error"]["message"], "Overloaded");
    assert_eq!(chunks.finish(), None);
    let start = chunks.push(&ev("message_start", json!({"message": {"id": "msg_1"}})));
    let v: Value = serde_json::from_str(&start[0]).unwrap();
    assert!(v.get("usage").is_none(), "no usage key unless asked for");
}
