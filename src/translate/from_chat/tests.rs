use serde_json::json;

use super::*;

fn face(body: Value) -> Result<Request, BadRequest> {
    request(body.to_string().as_bytes(), 4096)
}

fn bad_param(body: Value) -> String {
    match face(body) {
        Err(e) => e.param,
        Ok(r) => panic!("expected a 400, got {:?}", r.body),
    }
}

#[test]
fn a_recorded_sdk_tool_round_trip_becomes_a_messages_call() {
    let r = face(json!({
        "model": "claude-sonnet-4-5",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18C and sunny"},
            {"role": "user", "content": "Thanks"},
        ],
        "max_tokens": 128,
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
        "tool_choice": "required",
        "parallel_tool_calls": false,
        "seed": 7,
    }))
    .unwrap();
    assert_eq!(
        r.body,
        json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 128,
            "system": [{"type": "text", "text": "Be brief."}],
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "call_1",
                    "name": "get_weather", "input": {"city": "Paris"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "18C and sunny"},
                    {"type": "text", "text": "Thanks"}]},
            ],
            "tools": [{"name": "get_weather", "description": "Weather",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
        })
    );
    assert_eq!(r.dropped.features(), ["seed"]);
    assert!(!r.stream);
}

#[test]
fn a_string_turn_moves_as_is_and_joins_the_next_user_message_as_blocks() {
    let r = face(json!({"model": "m", "messages": [
        {"role": "user", "content": "first"},
        {"role": "user", "content": [{"type": "text", "text": "second"}]},
        {"role": "user", "content": "third"}]}))
    .unwrap();
    assert_eq!(
        r.body["messages"],
        json!([{"role": "user", "content": [
            {"type": "text", "text": "first"},
            {"type": "text", "text": "second"},
            {"type": "text", "text": "third"}]}])
    );
    let one =
        face(json!({"model": "m", "messages": [{"role": "user", "content": "only"}]})).unwrap();
    assert_eq!(
        one.body["messages"],
        json!([{"role": "user", "content": "only"}])
    );
}

#[test]
fn limits_default_and_max_completion_tokens_wins() {
    let base = |extra: Value| {
        let mut b = json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    assert_eq!(face(base(json!({}))).unwrap().body["max_tokens"], 4096);
    assert_eq!(
        face(base(json!({"max_tokens": 5, "max_completion_tokens": 9})))
            .unwrap()
            .body["max_tokens"],
        9
    );
    let r = face(base(
        json!({"stream": true, "stream_options": {"include_usage": true},
        "stop": "END", "user": "u-1", "temperature": 0.3}),
    ))
    .unwrap();
    assert!(r.stream && r.include_usage);
    assert_eq!(r.body["stream"], true);
    assert_eq!(r.body["stop_sequences"], json!(["END"]));
    assert_eq!(r.body["metadata"], json!({"user_id": "u-1"}));
    assert_eq!(r.body["temperature"], 0.3);
    assert!(
        !face(base(json!({"stream_options": {"include_usage": true}})))
            .unwrap()
            .include_usage,
        "usage chunks only for streams"
    );
}

#[test]
fn images_must_be_data_or_http_urls() {
    let with = |url: &str| {
        json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what?"}, {"type": "image_url", "image_url": {"url": url}}]}]})
    };
    let r = face(with("data:image/png;base64,iVBORw0KGgo=")).unwrap();
    assert_eq!(
        r.body["messages"][0]["content"][1],
        json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}})
    );
    let r = face(with("https://example.com/cat.png")).unwrap();
    assert_eq!(r.body["messages"][0]["content"][1]["source"]["type"], "url");
    for url in [
        "file:///etc/passwd",
        "ftp://x/y.png",
        "data:text/plain,hi",
        "javascript:alert(1)",
    ] {
        assert_eq!(
            bad_param(with(url)),
            "messages[0].content[1].image_url.url",
            "{url}"
        );
    }
}

#[test]
fn invalid_requests_name_the_field() {
    let m = |messages: Value| json!({"model": "m", "messages": messages});
    let user = json!({"role": "user", "content": "x"});
    for (body, param) in [
        (
            m(json!([{"role": "wizard", "content": "x"}])),
            "messages[0].role",
        ),
        (
            m(json!([user, {"role": "tool", "tool_call_id": "nope", "content": "r"}])),
            "messages[1].tool_call_id",
        ),
        (
            m(json!([user, {"role": "tool", "content": "r"}])),
            "messages[1].tool_call_id",
        ),
        (
            m(
                json!([user, {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                "function": {"name": "f", "arguments": "{not json"}}]}]),
            ),
            "messages[1].tool_calls[0].function.arguments",
        ),
        (
            m(
                json!([user, {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                "function": {"name": "f", "arguments": "[1,2]"}}]}]),
            ),
            "messages[1].tool_calls[0].function.arguments",
        ),
        (m(json!([])), "messages"),
        (
            m(json!([{"role": "system", "content": "only rules"}])),
            "messages",
        ),
        (
            m(json!([{"role": "user", "content": [{"type": "input_audio"}]}])),
            "messages[0].content[0].type",
        ),
        (json!({"messages": [user]}), "model"),
        (json!({"model": "m", "messages": [user], "n": 2}), "n"),
        (
            json!({"model": "m", "messages": [user], "max_tokens": 0}),
            "max_tokens",
        ),
        (
            json!({"model": "m", "messages": [user], "max_completion_tokens": 1e12}),
            "max_completion_tokens",
        ),
        (
            json!({"model": "m", "messages": [user], "logprobs": true}),
            "logprobs",
        ),
        (
            json!({"model": "m", "messages": [user], "response_format": {"type": "json_object"}}),
            "response_format",
        ),
        (
            json!({"model": "m", "messages": [user], "tools": [{"type": "custom", "name": "x"}]}),
            "tools[0].type",
        ),
        (
            json!({"model": "m", "messages": [user], "tool_choice": "sometimes"}),
            "tool_choice",
        ),
        (
            json!({"model": "m", "messages": [user], "frobnicate": 1}),
            "frobnicate",
        ),
        (
            json!({"model": "m", "messages": [user], "stop": [1]}),
            "stop",
        ),
    ] {
        assert_eq!(bad_param(body.clone()), param, "{body}");
    }
    let many: Vec<Value> = (0..=MAX_TOOLS)
        .map(|i| json!({"type": "function", "function": {"name": format!("t{i}")}}))
        .collect();
    assert_eq!(
        bad_param(json!({"model": "m", "messages": [user], "tools": many})),
        "tools"
    );
    let e = face(json!({"model": "m", "messages": [user, {"role": "tool", "tool_call_id": "nope", "content": "r"}]}))
        .unwrap_err();
    assert!(e.message.contains("\"nope\""), "{}", e.message);
}

#[test]
fn a_tool_call_is_answered_once() {
    let call = json!({"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
        "function": {"name": "f", "arguments": ""}}]});
    let result = json!({"role": "tool", "tool_call_id": "c1", "content": "r"});
    let ok =
        face(json!({"model": "m", "messages": [{"role": "user", "content": "x"}, call, result]}))
            .unwrap();
    assert_eq!(
        ok.body["messages"][1]["content"][0]["input"],
        json!({}),
        "blank arguments are {{}}"
    );
    assert_eq!(
        bad_param(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}, call, result, result]})
        ),
        "messages[3].tool_call_id"
    );
}

#[test]
fn completions_become_messages() {
    let c = json!({"id": "chatcmpl-1", "choices": [{"message": {"content": null,
        "refusal": "no"}, "finish_reason": "stop"}]});
    let m = message(&c, "asked").unwrap().unwrap();
    assert_eq!(m["model"], "asked");
    assert_eq!(m["stop_reason"], "refusal");
    assert_eq!(m["content"][0]["text"], "no");
    assert_eq!(m["usage"], json!({"input_tokens": 0, "output_tokens": 0}));
    let empty = json!({"id": "x", "choices": [{"message": {"content": ""},
        "finish_reason": "content_filter"}]});
    let m = message(&empty, "asked").unwrap().unwrap();
    assert_eq!(m["content"], json!([]));
    assert_eq!(m["stop_reason"], "refusal");
    assert!(message(&json!({"choices": []}), "m").unwrap().is_none());
}

#[test]
fn tool_calls_in_an_answer_become_tool_use_blocks_whose_input_parses() {
    let c = json!({"id": "c", "model": "gpt-x", "choices": [{"finish_reason": "tool_calls", "message": {
        "content": "Checking.", "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
            {"id": "call_b", "type": "function", "function": {"name": "now", "arguments": ""}}]}}],
        "usage": {"prompt_tokens": 30, "completion_tokens": 8, "prompt_tokens_details": {"cached_tokens": 10}}});
    let m = message(&c, "asked").unwrap().unwrap();
    assert_eq!(
        m["content"],
        json!([{"type": "text", "text": "Checking."},
               {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {"city": "Paris"}},
               {"type": "tool_use", "id": "call_b", "name": "now", "input": {}}])
    );
    assert_eq!(m["stop_reason"], "tool_use");
    assert_eq!(
        m["usage"],
        json!({"input_tokens": 20, "output_tokens": 8, "cache_read_input_tokens": 10})
    );
    let broken = json!({"choices": [{"message": {"tool_calls": [
        {"id": "x", "function": {"name": "f", "arguments": "{\"city\": "}}]}}]});
    assert!(
        message(&broken, "m").is_err(),
        "cut arguments are a broken answer"
    );
}

fn run(chunks: &[Value]) -> Vec<SseEvent> {
    let mut events = Events::new("asked");
    let mut out = Vec::new();
    for c in chunks {
        out.extend(events.push(c).unwrap());
    }
    assert!(events.finished());
    out.extend(events.done());
    out
}

#[test]
fn chunks_become_the_messages_event_grammar() {
    let out = run(&[
        json!({"id": "c1", "model": "gpt-x", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
        json!({"id": "c1", "choices": [{"index": 0, "delta": {"content": "Let me "}}]}),
        json!({"id": "c1", "choices": [{"index": 0, "delta": {"content": "check."}}]}),
        json!({"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1",
            "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}}]}),
        json!({"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}}]}),
        json!({"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]}}]}),
        json!({"id": "c1", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
        json!({"id": "c1", "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 9}}),
    ]);
    let kinds: Vec<&str> = out.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    // The events assemble into the message a unary call would have given.
    let mut assembler = seawall_actors::assemble::Assembler::default();
    for e in &out {
        assembler.push(e);
    }
    let m = assembler.finish().expect("a well-formed event sequence");
    assert_eq!(
        m["content"],
        json!([{"type": "text", "text": "Let me check."},
               {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}])
    );
    assert_eq!(m["stop_reason"], "tool_use");
    assert_eq!(m["model"], "gpt-x");
    assert_eq!(m["usage"]["input_tokens"], 12);
    assert_eq!(m["usage"]["output_tokens"], 9);
}

#[test]
fn an_in_stream_error_and_a_late_tool_piece_are_errors() {
    let mut events = Events::new("m");
    assert!(events
        .push(&json!({"error": {"message": "server overloaded"}}))
        .unwrap_err()
        .contains("server overloaded"));
    let mut events = Events::new("m");
    let call = |i: u64, args: &str| {
        json!({"choices": [{"delta": {"tool_calls": [{"index": i, "id": format!("c{i}"),
        "function": {"name": "f", "arguments": args}}]}}]})
    };
    events.push(&call(0, "{")).unwrap();
    events.push(&call(1, "{}")).unwrap();
    assert!(
        events.push(&call(0, "}")).is_err(),
        "tool 0's block already closed"
    );
    let mut cut = Events::new("m");
    cut.push(&json!({"choices": [{"delta": {"content": "half"}}]}))
        .unwrap();
    assert!(
        !cut.finished(),
        "no finish_reason yet: an end here is a cut"
    );
}
