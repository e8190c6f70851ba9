//! A bounded fuzz run of every parser a client or an upstream can reach, in-process, on stable
//! Rust (proptest): request bodies, the SSE parser, upstream answers (status, error bodies,
//! `retry-after`, `x-should-retry`, `anthropic-ratelimit-*`), the stream assembler, the config
//! and the simulator's scenario. Each property: no panic, every error typed, and output bounded
//! by the input (no input makes a parser allocate out of proportion). The gateway's own header
//! and body handling is fuzzed over loopback HTTP in `fuzz_gateway.rs`; the cargo-fuzz targets
//! in `fuzz/` run the same parsers for as long as you like.

mod support;

use std::time::{Duration, SystemTime};

use proptest::prelude::*;
use serde_json::{json, Value};

use seawall::config::{Config, ConfigError};
use seawall::core::assemble::Assembler;
use seawall::core::policy::classify::{
    classify_response, error_code, error_type, retry_hint, Class, Verdict,
};
use seawall::core::policy::lanes::ServerLimits;
use seawall::core::wire::{error_type_of, status_of_error_type};
use seawall::core::{Call, Error, Headers, SseEvent, UpstreamResponse};
use seawall::secret::Redactor;
use seawall::sim::Scenario;
use seawall::sse::{SseError, SseParser};
use seawall::ApiKey;
use support::fuzz::json_value;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        // PROPTEST_CASES=N runs a longer fuzz.
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(cases),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Bytes that look like an SSE stream more often than random bytes would.
fn sse_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"event: ".to_vec()),
        Just(b"data: ".to_vec()),
        Just(b"data:".to_vec()),
        Just(b": comment".to_vec()),
        Just(b"id: 7".to_vec()),
        Just(b"retry: 10".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"\n\n".to_vec()),
        Just(b"message_start".to_vec()),
        Just("\u{e9}\u{1F600}".as_bytes().to_vec()),
        Just(vec![0xff, 0xfe, 0xc3]),
        Just(b"{\"type\":\"error\"}".to_vec()),
        prop::collection::vec(any::<u8>(), 0..16),
    ];
    prop::collection::vec(piece, 0..40).prop_map(|p| p.concat())
}

/// Split `bytes` at the given cut points.
fn chunks(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    let mut out = Vec::new();
    let mut start = 0;
    for c in cuts {
        out.push(bytes[start..c].to_vec());
        start = c;
    }
    out.push(bytes[start..].to_vec());
    out
}

fn parse_all(parts: &[Vec<u8>]) -> (Vec<Result<SseEvent, SseError>>, bool) {
    let mut p = SseParser::new();
    let mut out = Vec::new();
    for part in parts {
        out.extend(p.push(part));
    }
    let complete = p.finish().is_ok();
    (out, complete)
}

proptest! {
    #![proptest_config(config(512))]

    /// Any bytes cut anywhere: no panic, the same events as in one piece (the cut points
    /// never change what is read), and events no larger than the bytes they came from (a
    /// replaced invalid byte costs 3, a default event name 7).
    #[test]
    fn the_sse_parser_reads_the_same_events_however_the_bytes_are_cut(
        bytes in prop_oneof![sse_bytes(), prop::collection::vec(any::<u8>(), 0..512)],
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let (whole, whole_complete) = parse_all(std::slice::from_ref(&bytes));
        let (cut, cut_complete) = parse_all(&chunks(&bytes, &cuts));
        prop_assert_eq!(&whole, &cut);
        prop_assert_eq!(whole_complete, cut_complete);
        let size: usize = whole
            .iter()
            .filter_map(|e| e.as_ref().ok())
            .map(|e| e.event.len() + e.data.len())
            .sum();
        prop_assert!(size <= 3 * bytes.len() + 7 * whole.len(), "{size} bytes of events from {}", bytes.len());
        // An error is the last thing a parser says.
        if let Some(i) = whole.iter().position(Result::is_err) {
            prop_assert_eq!(i, whole.len() - 1);
        }
    }

    /// Events written the way the API writes them come back exactly, whatever the cuts.
    #[test]
    fn the_sse_parser_reads_back_what_was_written(
        events in prop::collection::vec(("[a-z_]{1,20}", "[ -~]{0,40}"), 0..12),
        crlf in any::<bool>(),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let nl = if crlf { "\r\n" } else { "\n" };
        let wire: String = events
            .iter()
            .map(|(e, d)| format!("event: {e}{nl}data: {d}{nl}{nl}"))
            .collect();
        let (read, complete) = parse_all(&chunks(wire.as_bytes(), &cuts));
        prop_assert!(complete);
        let read: Vec<(String, String)> = read
            .into_iter()
            .map(|r| r.map(|e| (e.event, e.data)))
            .collect::<Result<_, _>>()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(read, events);
    }
}

/// A request body whose known fields have random types and values.
fn request_body() -> impl Strategy<Value = Value> {
    (
        prop::option::of(prop_oneof![
            "[a-z0-9.-]{0,12}".prop_map(Value::String),
            json_value(3, 24, 4)
        ]),
        prop::option::of(prop_oneof![
            (0u64..200_000).prop_map(|n| json!(n)),
            Just(json!(u64::MAX)),
            Just(json!(-1)),
            Just(json!(1.5)),
            Just(json!(1e300)),
            json_value(3, 24, 4)
        ]),
        prop::option::of(json_value(3, 24, 4)),
        prop::option::of(prop_oneof![
            Just(json!([{"role": "user", "content": "hi"}])),
            json_value(3, 24, 4)
        ]),
        prop::collection::btree_map("[a-z_]{1,10}", json_value(3, 24, 4), 0..3),
    )
        .prop_map(|(model, max_tokens, stream, messages, extra)| {
            let mut body: serde_json::Map<String, Value> = extra.into_iter().collect();
            for (k, v) in [
                ("model", model),
                ("max_tokens", max_tokens),
                ("stream", stream),
                ("messages", messages),
            ] {
                if let Some(v) = v {
                    body.insert(k.into(), v);
                }
            }
            Value::Object(body)
        })
}

proptest! {
    #![proptest_config(config(512))]

    /// Any request body: a call, or `InvalidCall` (never another error, never a panic), and
    /// the error message no longer than a bound proportional to the body.
    #[test]
    fn a_request_body_is_a_call_or_an_invalid_call(
        body in prop_oneof![
            request_body().prop_map(|v| serde_json::to_vec(&v).expect("serializable")),
            prop::collection::vec(any::<u8>(), 0..256),
        ],
    ) {
        match Call::from_json(&body) {
            Ok(call) => {
                let v: Value = serde_json::from_slice(&body).expect("a call was JSON");
                prop_assert_eq!(Some(call.model()), v["model"].as_str());
                prop_assert!(call.max_tokens() > 0);
                prop_assert!(v.get("stream").is_none_or(Value::is_boolean));
                prop_assert!(v["messages"].as_array().is_some_and(|m| !m.is_empty()));
            }
            Err(Error::InvalidCall(message)) => {
                prop_assert!(message.len() <= 2 * body.len() + 256, "{} for {} bytes", message.len(), body.len());
            }
            Err(other) => prop_assert!(false, "not an InvalidCall: {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// upstream answers

/// A header value of the kinds servers send (and break).
fn header_value() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u64..100_000).prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| f.to_string()),
        prop::sample::select(vec![
            "",
            " 1 ",
            "-1",
            "0",
            "1e20",
            "1e300",
            "NaN",
            "inf",
            "-inf",
            "18446744073709551616",
            "0.001",
            "true",
            "false",
            "TRUE",
            "Wed, 21 Oct 2015 07:28:00 GMT",
            "Tue, 01 Dec 2099 00:00:00 GMT",
            "2026-12-01T00:00:00Z",
        ])
        .prop_map(str::to_owned),
        "[ -~]{0,24}",
    ]
}

fn upstream_headers() -> impl Strategy<Value = Headers> {
    let names = prop::sample::select(vec![
        "retry-after",
        "retry-after-ms",
        "x-should-retry",
        "request-id",
        "anthropic-ratelimit-requests-limit",
        "anthropic-ratelimit-requests-remaining",
        "anthropic-ratelimit-requests-reset",
        "anthropic-ratelimit-input-tokens-limit",
        "anthropic-ratelimit-input-tokens-remaining",
        "anthropic-ratelimit-output-tokens-limit",
        "anthropic-ratelimit-output-tokens-remaining",
        "anthropic-ratelimit-tokens-remaining",
    ]);
    prop::collection::vec((names, header_value()), 0..8).prop_map(|pairs| {
        let mut h = Headers::default();
        for (n, v) in pairs {
            h.insert(n, v);
        }
        h
    })
}

/// An error body as the API writes it, with random types, codes and shapes; or anything.
fn error_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (
            prop_oneof![
                prop::sample::select(vec![
                    "overloaded_error",
                    "rate_limit_error",
                    "invalid_request_error",
                    "authentication_error",
                    "api_error",
                ])
                .prop_map(str::to_owned),
                "[ -~]{0,16}",
            ],
            prop::option::of(prop_oneof![
                Just("contract_spend_limit_reached".to_owned()),
                Just("ramp_limit_exceeded".to_owned()),
                "[ -~]{0,16}",
            ]),
            json_value(3, 24, 4),
        )
            .prop_map(|(kind, code, extra)| {
                let mut error = json!({"type": kind, "message": "m", "extra": extra});
                if let Some(code) = code {
                    error["details"] = json!({"error_code": code});
                }
                serde_json::to_vec(&json!({"type": "error", "error": error})).expect("json")
            }),
        json_value(3, 24, 4).prop_map(|v| serde_json::to_vec(&v).expect("json")),
        prop::collection::vec(any::<u8>(), 0..128),
    ]
}

proptest! {
    #![proptest_config(config(512))]

    /// Any status, headers and body an upstream may send: a verdict, never a panic. A retry
    /// hint is positive and at most a day; a 2xx with a JSON object body is a success and
    /// nothing else is; 401 alone says the key is bad.
    #[test]
    fn any_upstream_answer_gets_a_verdict(
        status in prop_oneof![100u16..600, any::<u16>()],
        headers in upstream_headers(),
        body in error_body(),
    ) {
        let mut resp = UpstreamResponse::new(status, body.clone());
        resp.headers = headers.clone();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let verdict = classify_response(&resp, now);
        let object = serde_json::from_slice::<serde_json::Map<String, Value>>(&body).is_ok();
        if (200..300).contains(&status) {
            prop_assert_eq!(verdict == Verdict::Success, object);
        } else {
            prop_assert_ne!(verdict, Verdict::Success);
        }
        if let Verdict::Retryable { hint: Some(h), .. } = verdict {
            prop_assert!(!h.is_zero() && h <= Duration::from_secs(86_400), "{h:?}");
        }
        prop_assert_eq!(verdict.key_is_bad(), status == 401);
        prop_assert!(Class::ALL.contains(&verdict.class()));
        if let Some(h) = retry_hint(&headers, now) {
            prop_assert!(!h.is_zero() && h <= Duration::from_secs(86_400), "{h:?}");
        }
        for part in [error_code(&body), error_type(&body)].into_iter().flatten() {
            prop_assert!(part.len() <= body.len());
        }
    }

    /// `anthropic-ratelimit-*`: a dimension is read exactly when its `remaining` is a whole
    /// number, and then it is that number; a bad `limit` is simply absent.
    #[test]
    fn rate_limit_headers_are_read_only_when_they_are_numbers(headers in upstream_headers()) {
        let limits = ServerLimits::from_headers(&headers);
        let num = |name: &str| headers.get(name).and_then(|v| v.trim().parse::<u64>().ok());
        for (dim, got) in [
            ("requests", limits.requests),
            ("input-tokens", limits.input_tokens),
            ("output-tokens", limits.output_tokens),
        ] {
            let remaining = num(&format!("anthropic-ratelimit-{dim}-remaining"));
            let limit = num(&format!("anthropic-ratelimit-{dim}-limit"));
            prop_assert_eq!(got, remaining.map(|r| (limit, r)));
        }
    }

    /// The status <-> `error.type` table: any text maps to nothing or to an error status,
    /// and every status has a type.
    #[test]
    fn the_error_type_table_is_total(kind in "[ -~]{0,24}", status in any::<u16>()) {
        if let Some(s) = status_of_error_type(&kind) {
            prop_assert!((400..600).contains(&s), "{s}");
        }
        prop_assert!(!error_type_of(status).is_empty());
    }

    /// Stream events an upstream may send, in any order and shape: the assembler never
    /// panics, and what it rebuilds is no larger than what it was given (plus its own frame).
    #[test]
    fn the_stream_assembler_takes_any_events(
        events in prop::collection::vec(
            (
                prop::sample::select(vec![
                    "message_start", "content_block_start", "content_block_delta",
                    "content_block_stop", "message_delta", "message_stop", "ping", "error",
                ]),
                prop_oneof![
                    json_value(3, 24, 4).prop_map(|v| v.to_string()),
                    Just(r#"{"type":"message_start","message":{"id":"msg_1","content":[],"usage":{"input_tokens":3}}}"#.to_owned()),
                    Just(r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#.to_owned()),
                    Just(r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi"}}"#.to_owned()),
                    Just(r#"{"type":"content_block_delta","index":5,"delta":{"type":"input_json_delta","partial_json":"{\"a"}}"#.to_owned()),
                    Just(r#"{"type":"content_block_stop","index":0}"#.to_owned()),
                    Just(r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":1}}"#.to_owned()),
                    "[ -~]{0,32}",
                ],
            ),
            0..16,
        ),
    ) {
        let mut a = Assembler::default();
        let mut given = 0;
        for (event, data) in &events {
            given += data.len();
            a.push(&SseEvent::new(event, data.clone()));
        }
        if let Some(message) = a.finish() {
            let size = message.to_string().len();
            prop_assert!(size <= 2 * given + 512, "{size} bytes from {given}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// config

/// A valid config to mutate.
const BASE_CONFIG: &str = r#"
listen = "127.0.0.1:8080"

[[upstreams]]
name = "anthropic"
base_url = "http://127.0.0.1:9"
api_key_env = "ANTHROPIC_API_KEY"

[retry]
deadline = "30s"
attempt_timeout = "10s"

[retry.backoff]
base = "100ms"
cap = "2s"

[[models]]
name = "m1"
fallbacks = ["m2"]

[limits.anthropic]
rpm = 50
input_tpm = 40000

[[models]]
name = "m2"

[breaker]
failure_rate = 50
open_for = "30s"

[gateway]
tokens = ["fuzz-token-0123456789abcdef"]
"#;

/// A TOML value of the kinds a config holds, or a broken one.
fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        any::<bool>().prop_map(|b| b.to_string()),
        prop::sample::select(vec![
            "\"0s\"",
            "\"1ns\"",
            "\"99999999999999999d\"",
            "\"-1s\"",
            "\"\"",
            "[]",
            "{}",
            "[\"m1\", \"m1\"]",
            "\"m3\"",
            "nan",
            "inf",
            "\"127.0.0.1:0\"",
            "\"::\"",
            "\"http://\"",
            "18446744073709551616",
            "1e400",
            "\"off\"",
            "\"auto\"",
        ])
        .prop_map(str::to_owned),
        "\"[ -~&&[^\"\\\\]]{0,16}\"",
        "[ -~]{0,16}",
    ]
}

proptest! {
    #![proptest_config(config(256))]

    /// Any text: a config or a `ConfigError` whose message is bounded, never a panic.
    #[test]
    fn any_config_text_is_a_config_or_an_error(
        text in prop_oneof![
            "[ -~\n]{0,256}",
            // A valid config with one line's value replaced, or a line inserted.
            (any::<prop::sample::Index>(), toml_value(), "[a-z_]{1,24}", any::<bool>()).prop_map(
                |(at, value, key, replace)| {
                    let mut lines: Vec<String> = BASE_CONFIG.lines().map(str::to_owned).collect();
                    let i = at.index(lines.len());
                    match lines[i].split_once(" = ") {
                        Some((k, _)) if replace => lines[i] = format!("{k} = {value}"),
                        _ => lines.insert(i + 1, format!("{key} = {value}")),
                    }
                    lines.join("\n")
                },
            ),
        ],
    ) {
        match Config::from_toml(&text) {
            Ok(_) => {}
            Err(e) => {
                let message = e.to_string();
                prop_assert!(!message.is_empty());
                prop_assert!(message.len() <= 4 * text.len() + 1024, "{} bytes", message.len());
                prop_assert!(!matches!(e, ConfigError::Read { .. }), "no file was read: {e}");
            }
        }
    }

    /// The simulator's scenario (what `seawall sim` reads) is held to the same rule.
    #[test]
    fn any_scenario_text_is_a_scenario_or_an_error(text in "[ -~\n]{0,256}") {
        if let Err(e) = Scenario::from_toml(&text) {
            prop_assert!(!e.to_string().is_empty());
        }
        if let Err(e) = Scenario::from_json(&text) {
            prop_assert!(!e.to_string().is_empty());
        }
    }
}

#[test]
fn the_base_config_of_the_fuzz_run_is_valid() {
    // Otherwise the mutations above would only ever explore the first error.
    Config::from_toml(BASE_CONFIG).expect("valid");
}

// ---------------------------------------------------------------------------------------------
// redaction

proptest! {
    #![proptest_config(config(512))]

    /// Any text with keys and `sk-` tokens mixed in: none survives, a second pass changes
    /// nothing, and the output grows at most by the replacement's length over the key's.
    #[test]
    fn no_key_survives_redaction(
        pieces in prop::collection::vec(
            prop_oneof![
                "[ -~]{0,12}",
                Just(REDACTION_KEY.to_owned()),
                Just("sk-ant-api03-abcdefghijklmnop_QRST-uvwxyz".to_owned()),
                Just("sk-proj-0123456789abcdef".to_owned()),
                Just("sk-learn".to_owned()),
            ],
            0..12,
        ),
    ) {
        let redactor = Redactor::new(&[ApiKey::new(REDACTION_KEY).expect("a valid key")]);
        let text = pieces.concat();
        let once = redactor.redact_str(&text).into_owned();
        prop_assert!(!once.contains(REDACTION_KEY), "{}", once);
        prop_assert!(!once.contains("abcdefghijklmnop"), "{}", once);
        prop_assert!(!once.contains("0123456789abcdef"), "{}", once);
        prop_assert_eq!(redactor.redact_str(&once).into_owned(), once.clone());
        prop_assert!(once.len() <= text.len() * 10 / 8 + 10, "{} -> {}", text.len(), once.len());
        if !text.contains("sk-") && !text.contains(REDACTION_KEY) {
            prop_assert_eq!(&once, &text, "nothing to redact, nothing changed");
        }
    }
}

/// A configured key that is not `sk-`-shaped: only the key list catches it.
const REDACTION_KEY: &str = "AIzaKEY-not-sk-shaped-0042";

/// A chat completions request, often nearly valid: roles, parts, tool calls and tools from the
/// OpenAI vocabulary with random values mixed in.
fn chat_body() -> impl Strategy<Value = Value> {
    let role = prop_oneof![
        Just(json!("system")),
        Just(json!("developer")),
        Just(json!("user")),
        Just(json!("assistant")),
        Just(json!("tool")),
        json_value(1, 4, 2),
    ];
    let content = prop_oneof![
        Just(json!("hi")),
        Just(json!(null)),
        Just(json!([{"type": "text", "text": "x"}])),
        Just(json!([{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}])),
        json_value(2, 8, 3),
    ];
    let message = (role, content, json_value(2, 6, 2)).prop_map(|(role, content, extra)| {
        json!({"role": role, "content": content, "tool_call_id": "c1",
               "tool_calls": [{"id": "c1", "type": "function",
                               "function": {"name": "f", "arguments": extra.to_string()}}]})
    });
    (
        prop::collection::vec(message, 0..5),
        json_value(2, 8, 3),
        prop::option::of(json_value(1, 4, 2)),
    )
        .prop_map(|(messages, tools, limit)| {
            let mut body = json!({"model": "m", "messages": messages, "tools": tools});
            if let Some(limit) = limit {
                body["max_tokens"] = limit;
            }
            body
        })
}

proptest! {
    #![proptest_config(config(512))]

    /// Any chat request, through the OpenAI face's translation: a Messages call or a 400
    /// naming a field, never a panic; a translated request is one the runtime takes or refuses
    /// with `InvalidCall`, and its `max_tokens` is always a positive limit.
    #[test]
    fn a_chat_request_is_a_messages_call_or_a_bad_request(
        body in prop_oneof![
            chat_body().prop_map(|v| serde_json::to_vec(&v).expect("serializable")),
            prop::collection::vec(any::<u8>(), 0..256),
        ],
    ) {
        match seawall::translate::from_chat::request(&body, 4096) {
            Ok(r) => {
                prop_assert!(r.body["max_tokens"].as_u64().is_some_and(|n| n >= 1));
                let call = Call::from_value(r.body);
                prop_assert!(matches!(call, Ok(_) | Err(Error::InvalidCall(_))));
            }
            Err(bad) => prop_assert!(!bad.message.is_empty()),
        }
    }

    /// Any Messages request, through the outbound translation: a chat request or `Invalid`,
    /// never a panic; and any chunk sequence through the stream translation: events or an error.
    #[test]
    fn messages_requests_and_chat_chunks_translate_or_fail_typed(
        body in request_body(),
        chunks in prop::collection::vec(json_value(3, 10, 3), 0..6),
    ) {
        use seawall::translate::to_chat::{request, MaxTokensField, Wire};
        let wire = Wire { max_tokens: MaxTokensField::MaxTokens };
        match request(&serde_json::to_vec(&body).expect("serializable"), "m", wire) {
            Ok(t) => prop_assert!(serde_json::from_slice::<Value>(&t.body).is_ok()),
            Err(e) => prop_assert!(matches!(e, seawall::core::upstream::TransportError::Invalid(_))),
        }
        let mut events = seawall::translate::from_chat::Events::new("m");
        for chunk in &chunks {
            if events.push(chunk).is_err() {
                break;
            }
        }
        let closing = events.done();
        prop_assert_eq!(closing.last().map(|e| e.event.as_str()), Some("message_stop"));
    }
}
