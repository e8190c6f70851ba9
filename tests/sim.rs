//! The simulator over real loopback HTTP: reqwest for the wire details, `AnthropicUpstream` to
//! prove seawall's own transport and the simulator agree, raw sockets for the HTTP layer, and
//! the `seawall sim` binary as a subprocess. Real time, millisecond settings, no internet.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use seawall::core::policy::rng::SplitMix64;
use seawall::core::upstream::{Attempt, TransportError, Upstream};
use seawall::core::Call;
use seawall::sim::{LogEntry, Scenario, ScenarioError, Sim, SimError, SimHandle};
use seawall::{AnthropicOptions, AnthropicUpstream, AuthStyle};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::eventually;
use support::http::{header, plain_client, sse_events};
use support::process::{run, temp_dir, Serve};
use support::sim::{anthropic_options, keys, sim};

const KEY: &str = "sk-sim-test-key-aaaa";
const KEY_B: &str = "sk-sim-test-key-bbbb";
const REVOKED: &str = "sk-sim-test-old-zzzz";
const MODEL: &str = "claude-sim-1";

// ---------------------------------------------------------------------------------------------
// helpers

/// A one-model scenario with the given extra TOML for the model (faults, latency, ...).
fn one_model(model_extra: &str) -> String {
    format!("[[models]]\nname = \"{MODEL}\"\noutput_tokens = 8\n{model_extra}\n")
}

fn body(model: &str, max_tokens: u64) -> Value {
    json!({"model": model, "max_tokens": max_tokens,
           "messages": [{"role": "user", "content": "hello there"}]})
}

async fn post(sim: &SimHandle, path: &str, key: Option<&str>, body: &Value) -> reqwest::Response {
    let mut req = plain_client()
        .post(format!("{}{path}", sim.base_url()))
        .header("anthropic-version", "2023-06-01")
        .json(body);
    if let Some(key) = key {
        req = req.header("x-api-key", key);
    }
    req.send().await.unwrap()
}

async fn messages(sim: &SimHandle, body: &Value) -> reqwest::Response {
    post(sim, "/v1/messages", Some(KEY), body).await
}

fn upstream(sim: &SimHandle, auth: AuthStyle) -> AnthropicUpstream {
    AnthropicUpstream::new(
        keys(&[KEY]),
        AnthropicOptions {
            auth,
            ..anthropic_options(sim.base_url())
        },
    )
    .unwrap()
}

fn attempt(body: &Value, timeout: Duration) -> Attempt {
    support::sim::attempt(
        body["model"].as_str().unwrap_or_default(),
        Bytes::from(serde_json::to_vec(body).unwrap()),
        timeout,
    )
}

const BUDGET: Duration = Duration::from_secs(5);

fn last(sim: &SimHandle) -> LogEntry {
    sim.log().pop().unwrap()
}

/// Write raw bytes, then read until the server closes (bounded by a timeout).
async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut out)).await;
    read.expect("the server did not close the connection")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------------
// the Messages API

#[tokio::test]
async fn success_has_the_api_shape_usage_request_id_and_ratelimit_headers() {
    let sim = sim(&format!(
        "[limits]\nrequests_per_minute = 60\ninput_tokens_per_minute = 10000\n\
         output_tokens_per_minute = 5000\n{}",
        one_model("")
    ))
    .await;
    let b = body(MODEL, 100);
    let expected_input = seawall::sim::estimate_input_tokens(&b).unwrap();
    let before = SystemTime::now();
    let resp = messages(&sim, &b).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-type").unwrap(), "application/json");
    let rid = header(&resp, "request-id").unwrap();
    assert!(rid.starts_with("req_"), "{rid}");
    let h = |name: &str| header(&resp, name).unwrap_or_else(|| panic!("no {name}"));
    assert_eq!(h("anthropic-ratelimit-requests-limit"), "60");
    assert_eq!(h("anthropic-ratelimit-requests-remaining"), "59");
    assert_eq!(h("anthropic-ratelimit-input-tokens-limit"), "10000");
    assert_eq!(
        h("anthropic-ratelimit-input-tokens-remaining"),
        (10000 - expected_input).to_string()
    );
    assert_eq!(h("anthropic-ratelimit-output-tokens-limit"), "5000");
    assert_eq!(h("anthropic-ratelimit-output-tokens-remaining"), "4992");
    // The most restrictive token dimension: output has fewer tokens left.
    assert_eq!(h("anthropic-ratelimit-tokens-limit"), "5000");
    assert_eq!(h("anthropic-ratelimit-tokens-remaining"), "4992");
    // One request of 60 per minute refills in one second: reset within two whole seconds.
    let reset = humantime::parse_rfc3339(&h("anthropic-ratelimit-requests-reset")).unwrap();
    let ahead = reset.duration_since(before).unwrap();
    assert!(ahead <= Duration::from_secs(3), "{ahead:?}");

    let v: Value = resp.json().await.unwrap();
    let id = v["id"].as_str().unwrap();
    assert!(id.starts_with("msg_"), "{id}");
    let text = v["content"][0]["text"].as_str().unwrap().to_owned();
    assert_eq!(
        v,
        json!({
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": MODEL,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": null,
            "usage": {"input_tokens": expected_input, "output_tokens": 8,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
        })
    );
    assert_eq!(text.split(' ').count(), 8, "{text}");

    // max_tokens below the model's answer: cut short, and a new request id.
    let resp = messages(&sim, &body(MODEL, 3)).await;
    assert_ne!(header(&resp, "request-id").unwrap(), rid);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["stop_reason"], "max_tokens");
    assert_eq!(v["usage"]["output_tokens"], 3);
    assert_eq!(
        v["content"][0]["text"].as_str().unwrap().split(' ').count(),
        3
    );
    assert_eq!(sim.count(MODEL), 2);
    let log = sim.log();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].seq, 0);
    assert_eq!(log[0].outcome, "ok");
    assert_eq!(log[0].status, Some(200));
    assert_eq!(log[0].request_id.as_deref(), Some(rid.as_str()));
    assert_eq!(log[1].seq, 1);
}

#[tokio::test]
async fn both_auth_styles_work_and_missing_unknown_or_revoked_keys_get_401() {
    let sim = sim(&format!(
        "keys = [\"{KEY}\", \"{KEY_B}\"]\nrevoked_keys = [\"{REVOKED}\"]\n{}",
        one_model("")
    ))
    .await;
    let b = body(MODEL, 5);
    let url = format!("{}/v1/messages", sim.base_url());

    assert_eq!(
        post(&sim, "/v1/messages", Some(KEY), &b).await.status(),
        200
    );
    let bearer = plain_client()
        .post(&url)
        .bearer_auth(KEY_B)
        .json(&b)
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 200);

    for (key, message) in [
        (None, "x-api-key header is required"),
        (Some("sk-sim-test-unknown-cccc"), "invalid x-api-key"),
        (Some(REVOKED), "revoked"),
    ] {
        let resp = post(&sim, "/v1/messages", key, &b).await;
        assert_eq!(resp.status(), 401, "{key:?}");
        let rid = header(&resp, "request-id").unwrap();
        let text = resp.text().await.unwrap();
        for k in [KEY, KEY_B, REVOKED, "sk-sim-test-unknown-cccc"] {
            assert!(!text.contains(k), "{text}");
        }
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "authentication_error");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(message),
            "{v}"
        );
        assert_eq!(v["request_id"], rid.as_str());
    }

    // seawall's transport in both auth styles.
    for style in [AuthStyle::XApiKey, AuthStyle::Bearer] {
        let resp = upstream(&sim, style)
            .send(attempt(&b, BUDGET))
            .await
            .unwrap();
        assert_eq!(resp.status, 200, "{style:?}");
    }

    let tails: Vec<Option<String>> = sim.log().into_iter().map(|e| e.key_tail).collect();
    let s = |t: &str| Some(t.to_owned());
    assert_eq!(
        tails,
        vec![
            s("aaaa"),
            s("bbbb"),
            None,
            s("cccc"),
            s("zzzz"),
            s("aaaa"),
            s("aaaa")
        ]
    );
    let outcomes: Vec<String> = sim.log().into_iter().map(|e| e.outcome).collect();
    assert_eq!(outcomes[2..5], ["unauthenticated"; 3]);
    let log_json = serde_json::to_string(&sim.log()).unwrap();
    assert!(!log_json.contains(KEY) && !log_json.contains(REVOKED));
}

#[tokio::test]
async fn invalid_bodies_get_400_and_unknown_models_404() {
    let sim = sim(&one_model("")).await;
    let client = plain_client();
    let url = format!("{}/v1/messages", sim.base_url());
    let not_json = client
        .post(&url)
        .header("x-api-key", KEY)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), 400);
    let v: Value = not_json.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not valid JSON"));

    let msgs = json!([{"role": "user", "content": "hi"}]);
    for (b, needle) in [
        (json!({"max_tokens": 5, "messages": msgs}), "`model`"),
        (json!({"model": MODEL, "messages": msgs}), "`max_tokens`"),
        (
            json!({"model": MODEL, "max_tokens": 5, "messages": []}),
            "`messages`",
        ),
        (
            json!({"model": MODEL, "max_tokens": 5, "messages": msgs, "stream": "yes"}),
            "`stream`",
        ),
    ] {
        let resp = messages(&sim, &b).await;
        assert_eq!(resp.status(), 400, "{b}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{message} should name {needle}");
        assert!(v["request_id"].as_str().unwrap().starts_with("req_"));
    }

    let resp = messages(&sim, &body("claude-nope", 5)).await;
    assert_eq!(resp.status(), 404);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "not_found_error");
    assert_eq!(v["error"]["message"], "model: claude-nope");

    let outcomes: Vec<(String, Option<u16>)> = sim
        .log()
        .into_iter()
        .map(|e| (e.outcome, e.status))
        .collect();
    let mut want = vec![("invalid_request".to_owned(), Some(400)); 5];
    want.push(("unknown_model".to_owned(), Some(404)));
    assert_eq!(outcomes, want);
    assert_eq!(last(&sim).model.as_deref(), Some("claude-nope"));
    assert_eq!(sim.count("claude-nope"), 1);
}

#[tokio::test]
async fn count_tokens_uses_the_simulators_own_count() {
    let sim = sim(&one_model("")).await;
    let b = json!({
        "model": MODEL,
        "system": "You are terse. Answer in one line.",
        "tools": [{"name": "lookup", "input_schema": {"type": "object"}}],
        "messages": [{"role": "user", "content": "What is the capital of France? ✈"}],
    });
    let resp = post(&sim, "/v1/messages/count_tokens", Some(KEY), &b).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    // The documented rule: system (34 bytes) + tool name (6) and schema {"type":"object"} (17)
    // + the message (34 bytes, "✈" is three) = 91 bytes -> 23 tokens, plus 3 for the message.
    assert_eq!(v, json!({"input_tokens": 26}));
    assert_eq!(seawall::sim::estimate_input_tokens(&b), Some(26));
    // Never above the runtime's estimate, which reserves for it.
    let mut with_max = b.clone();
    with_max["max_tokens"] = json!(64);
    let call = Call::from_value(with_max).unwrap();
    assert!(26 <= call.estimate_input_tokens());

    // The same count in usage, through seawall's transport with the runtime's own hop body:
    // "be brief" + "hello there, how are you?" = 33 bytes -> 9 tokens, plus 3.
    let call = Call::new(MODEL, 64)
        .system("be brief")
        .user("hello there, how are you?");
    let hop: Value = serde_json::from_slice(&call.body_for(MODEL)).unwrap();
    assert_eq!(seawall::sim::estimate_input_tokens(&hop), Some(12));
    assert!(12 <= call.estimate_input_tokens());
    let resp = upstream(&sim, AuthStyle::XApiKey)
        .send(Attempt {
            body: call.body_for(MODEL),
            ..attempt(&body(MODEL, 1), BUDGET)
        })
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(v["usage"]["input_tokens"], 12);
    assert_eq!(sim.count(MODEL), 2);
}

#[tokio::test]
async fn sse_events_come_in_the_api_order_with_the_configured_timing() {
    let sim = sim(&one_model(
        "time_to_first_token = \"60ms\"\ndelta_interval = \"10ms\"",
    ))
    .await;
    let mut b = body(MODEL, 5);
    b["stream"] = json!(true);
    let started = Instant::now();
    let resp = messages(&sim, &b).await;
    let first_byte = started.elapsed();
    assert_eq!(resp.status(), 200);
    assert!(header(&resp, "content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    assert_eq!(
        header(&resp, "transfer-encoding").as_deref(),
        Some("chunked")
    );
    assert!(header(&resp, "request-id").is_some());
    let text = resp.text().await.unwrap();
    let total = started.elapsed();
    assert!(first_byte >= Duration::from_millis(60), "{first_byte:?}");
    // Five deltas, each 10 ms after the one before.
    assert!(total >= Duration::from_millis(110), "{total:?}");

    let events = sse_events(&text);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    for (name, data) in &events {
        assert_eq!(data["type"], name.as_str());
    }
    let start = &events[0].1["message"];
    assert_eq!(start["model"], MODEL);
    assert_eq!(start["content"], json!([]));
    assert_eq!(
        start["usage"]["input_tokens"],
        seawall::sim::estimate_input_tokens(&b).unwrap()
    );
    let streamed: String = events
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, d)| {
            assert_eq!(d["delta"]["type"], "text_delta");
            d["delta"]["text"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(streamed.split(' ').count(), 5, "{streamed}");
    assert_eq!(events[9].1["delta"]["stop_reason"], "max_tokens");
    assert_eq!(events[9].1["usage"]["output_tokens"], 5);
    let entry = last(&sim);
    assert!(entry.stream);
    assert_eq!(entry.outcome, "ok");
}

// ---------------------------------------------------------------------------------------------
// faults

#[tokio::test]
async fn a_status_fault_sends_the_exact_error_body_and_its_retry_headers() {
    let sim = sim(&one_model(
        r#"
[[models.faults]]
kind = "status"
status = 429
retry_after = 2.5
retry_after_ms = 2500
should_retry = false
error_code = "ramp_limit_exceeded"
message = "Slow down"
"#,
    ))
    .await;
    let resp = messages(&sim, &body(MODEL, 5)).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(header(&resp, "retry-after").as_deref(), Some("2.5"));
    assert_eq!(header(&resp, "retry-after-ms").as_deref(), Some("2500"));
    assert_eq!(header(&resp, "x-should-retry").as_deref(), Some("false"));
    let rid = header(&resp, "request-id").unwrap();
    let text = resp.text().await.unwrap();
    assert_eq!(
        text,
        format!(
            r#"{{"type":"error","error":{{"type":"rate_limit_error","message":"Slow down","details":{{"error_code":"ramp_limit_exceeded"}}}},"request_id":"{rid}"}}"#
        )
    );
    let entry = last(&sim);
    assert_eq!(
        (entry.outcome.as_str(), entry.status),
        ("status", Some(429))
    );

    // Every documented status gets its error type; seawall's transport returns it as a response.
    for (status, error_type) in [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (402, "billing_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (500, "api_error"),
        (502, "api_error"),
        (503, "api_error"),
        (504, "gateway_timeout_error"),
        (529, "overloaded_error"),
    ] {
        let mut scenario = sim.scenario();
        scenario.models[0].faults = vec![seawall::sim::Fault::status(status)];
        sim.set_scenario(scenario).unwrap();
        let resp = upstream(&sim, AuthStyle::XApiKey)
            .send(attempt(&body(MODEL, 5), BUDGET))
            .await
            .unwrap();
        assert_eq!(resp.status, status);
        let v: Value = serde_json::from_slice(&resp.body).unwrap();
        assert_eq!(v["error"]["type"], error_type, "{status}");
        assert!(v["error"].get("details").is_none());
        assert_eq!(v["request_id"], resp.request_id().unwrap());
        assert!(resp.headers.get("retry-after").is_none());
    }
}

#[tokio::test]
async fn a_reset_fault_is_a_reset_for_the_transport() {
    let sim = sim(&one_model("")).await;
    // A pooled keep-alive connection first: the reset must not be retried away by the client.
    let up = upstream(&sim, AuthStyle::XApiKey);
    assert_eq!(
        up.send(attempt(&body(MODEL, 5), BUDGET))
            .await
            .unwrap()
            .status,
        200
    );
    sim.set_scenario(
        Scenario::from_toml(&one_model("[[models.faults]]\nkind = \"reset\"")).unwrap(),
    )
    .unwrap();
    let err = up.send(attempt(&body(MODEL, 5), BUDGET)).await.unwrap_err();
    assert!(matches!(err, TransportError::Reset(_)), "{err:?}");
    let entry = last(&sim);
    assert_eq!((entry.outcome.as_str(), entry.status), ("reset", None));
    assert_eq!(sim.count(MODEL), 2);

    // And on a fresh connection.
    let err = upstream(&sim, AuthStyle::Bearer)
        .send(attempt(&body(MODEL, 5), BUDGET))
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Reset(_)), "{err:?}");
}

#[tokio::test]
async fn a_hang_times_out_at_the_clients_own_attempt_timeout_and_ends_at_shutdown() {
    let sim = sim(&one_model("[[models.faults]]\nkind = \"hang\"")).await;
    let started = Instant::now();
    let err = upstream(&sim, AuthStyle::XApiKey)
        .send(attempt(&body(MODEL, 5), Duration::from_millis(150)))
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(err, TransportError::Timeout(Duration::from_millis(150)));
    assert!(elapsed >= Duration::from_millis(150), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
    let entry = last(&sim);
    assert_eq!((entry.outcome.as_str(), entry.status), ("hang", None));

    // A client without a timeout is held until the simulator shuts down, then sees the close.
    let url = format!("{}/v1/messages", sim.base_url());
    let waiting = tokio::spawn(async move {
        plain_client()
            .post(url)
            .header("x-api-key", KEY)
            .json(&body(MODEL, 5))
            .send()
            .await
    });
    eventually(
        "the second request reaches the simulator",
        BUDGET,
        || async { sim.count(MODEL) >= 2 },
    )
    .await;
    sim.shutdown().await;
    let result = tokio::time::timeout(Duration::from_secs(2), waiting)
        .await
        .expect("the hanging request was not released by shutdown")
        .unwrap();
    assert!(result.is_err(), "{result:?}");
}

#[tokio::test]
async fn slow_first_byte_delays_the_answer() {
    let sim = sim(&one_model(
        "[[models.faults]]\nkind = \"slow_first_byte\"\ndelay = \"150ms\"",
    ))
    .await;
    let started = Instant::now();
    let resp = messages(&sim, &body(MODEL, 5)).await;
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["usage"]["output_tokens"], 5);
    let entry = last(&sim);
    assert_eq!(
        (entry.outcome.as_str(), entry.status),
        ("slow_first_byte", Some(200))
    );
}

#[tokio::test]
async fn a_truncated_answer_is_truncated_for_the_transport_and_for_streams() {
    let sim = sim(&one_model("[[models.faults]]\nkind = \"truncated\"")).await;
    let err = upstream(&sim, AuthStyle::XApiKey)
        .send(attempt(&body(MODEL, 5), BUDGET))
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Truncated(_)), "{err:?}");
    let entry = last(&sim);
    assert_eq!((entry.outcome.as_str(), entry.status), ("truncated", None));

    let mut b = body(MODEL, 5);
    b["stream"] = json!(true);
    let resp = messages(&sim, &b).await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.bytes().await.is_err(),
        "a cut stream must not end cleanly"
    );
}

#[tokio::test]
async fn a_mid_stream_error_follows_n_deltas_and_spares_non_streaming_requests() {
    let sim = sim(&one_model(
        "delta_interval = \"2ms\"\n[[models.faults]]\nkind = \"mid_stream_error\"\nafter_deltas = 3",
    ))
    .await;
    let mut b = body(MODEL, 8);
    b["stream"] = json!(true);
    let resp = messages(&sim, &b).await;
    assert_eq!(resp.status(), 200);
    let rid = header(&resp, "request-id").unwrap();
    let events = sse_events(&resp.text().await.unwrap());
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "error",
        ]
    );
    assert_eq!(
        events[6].1,
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"},
               "request_id": rid})
    );
    let entry = last(&sim);
    assert_eq!(
        (entry.outcome.as_str(), entry.status),
        ("mid_stream_error", Some(200))
    );

    let resp = messages(&sim, &body(MODEL, 8)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(last(&sim).outcome, "ok");
}

#[tokio::test]
async fn faults_apply_only_inside_their_window() {
    let sim = sim(&one_model(
        r#"
[[models.faults]]
kind = "status"
status = 503
until = "100ms"
[[models.faults]]
kind = "status"
status = 500
from = "200ms"
until = "10s"
"#,
    ))
    .await;
    sim.reset();
    let t0 = Instant::now();
    assert_eq!(messages(&sim, &body(MODEL, 5)).await.status(), 503);
    // Waiting is the point here: the sim clock has to reach the next window.
    tokio::time::sleep_until((t0 + Duration::from_millis(120)).into()).await;
    assert_eq!(messages(&sim, &body(MODEL, 5)).await.status(), 200);
    tokio::time::sleep_until((t0 + Duration::from_millis(220)).into()).await;
    assert_eq!(messages(&sim, &body(MODEL, 5)).await.status(), 500);
    let at: Vec<u64> = sim.log().iter().map(|e| e.at_ms).collect();
    assert!(
        at[0] < 100 && (100..200).contains(&at[1]) && at[2] >= 200,
        "{at:?}"
    );

    // A live scenario change keeps the clock: the window at 200 ms+ still applies.
    let mut s = sim.scenario();
    s.models[0].faults.remove(0);
    sim.set_scenario(s).unwrap();
    assert_eq!(messages(&sim, &body(MODEL, 5)).await.status(), 500);
    assert!(last(&sim).at_ms >= 200);
}

#[tokio::test]
async fn fault_draws_are_deterministic_per_seed_and_sequence_number() {
    let scenario = |seed: u64| {
        format!(
            "seed = {seed}\n{}",
            one_model("[[models.faults]]\nkind = \"status\"\nstatus = 503\nprobability = 0.5")
        )
    };
    let sim = sim(&scenario(7)).await;
    let run = || async {
        let mut statuses = Vec::new();
        for _ in 0..200 {
            statuses.push(messages(&sim, &body(MODEL, 1)).await.status().as_u16());
        }
        statuses
    };
    let first = run().await;
    // The documented rule: request `seq` hits when SplitMix64(seed ^ seq).next_f64() < p.
    let predicted: Vec<u16> = (0..200u64)
        .map(|seq| {
            if SplitMix64::new(7 ^ seq).next_f64() < 0.5 {
                503
            } else {
                200
            }
        })
        .collect();
    assert_eq!(first, predicted);
    let failures = first.iter().filter(|s| **s == 503).count();
    assert!((50..150).contains(&failures), "{failures} of 200");

    sim.reset();
    assert_eq!(run().await, first, "same seed, same sequence");

    sim.set_scenario(Scenario::from_toml(&scenario(8)).unwrap())
        .unwrap();
    sim.reset();
    assert_ne!(run().await, first, "another seed draws otherwise");
}

// ---------------------------------------------------------------------------------------------
// rate limits

#[tokio::test]
async fn the_request_over_the_limit_gets_a_truthful_retry_after_and_takes_nothing() {
    let sim = sim(&format!(
        "[limits]\nrequests_per_minute = 3\ninput_tokens_per_minute = 1000\n{}",
        one_model("")
    ))
    .await;
    let b = body(MODEL, 5);
    let mut remaining_input = Vec::new();
    for _ in 0..3 {
        let resp = messages(&sim, &b).await;
        assert_eq!(resp.status(), 200);
        remaining_input.push(header(&resp, "anthropic-ratelimit-input-tokens-remaining").unwrap());
    }
    let after_last = std::time::Instant::now();
    let resp = messages(&sim, &b).await;
    let between = after_last.elapsed();
    assert_eq!(resp.status(), 429);
    // 3 per minute refill one request every 20 s, and the bucket is (just about) empty.
    assert_eq!(header(&resp, "retry-after").as_deref(), Some("20"));
    assert_eq!(
        header(&resp, "anthropic-ratelimit-requests-remaining").as_deref(),
        Some("0")
    );
    // Nothing was taken for the refused request: what remains is what the last accepted one
    // left, plus what 1000 tokens a minute refilled in between (real time, so a token or so).
    let num = |v: Option<&String>| v.and_then(|v| v.parse::<f64>().ok()).expect("a number");
    let refused = num(header(&resp, "anthropic-ratelimit-input-tokens-remaining").as_ref());
    let before = num(remaining_input.last());
    let refill = 1000.0 / 60.0 * (between.as_secs_f64() + 0.01);
    assert!(
        refused >= before && refused <= before + refill.ceil(),
        "remaining {refused} after the refusal, {before} before, {between:?} apart"
    );
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("3 requests per minute"));
    let entry = last(&sim);
    assert_eq!(
        (entry.outcome.as_str(), entry.status),
        ("rate_limited", Some(429))
    );

    // A reset refills the buckets.
    sim.reset();
    assert_eq!(messages(&sim, &b).await.status(), 200);
}

#[tokio::test]
async fn a_request_sent_after_retry_after_is_admitted() {
    // 600 output tokens per minute refill 10 per second.
    let sim = sim(&format!(
        "[limits]\noutput_tokens_per_minute = 600\n[[models]]\nname = \"{MODEL}\"\noutput_tokens = 600\n"
    ))
    .await;
    assert_eq!(messages(&sim, &body(MODEL, 600)).await.status(), 200);
    let resp = messages(&sim, &body(MODEL, 5)).await;
    assert_eq!(resp.status(), 429);
    // 5 tokens take half a second; whole seconds round up.
    let retry_after = header(&resp, "retry-after").unwrap();
    assert_eq!(retry_after, "1");
    let v: Value = resp.json().await.unwrap();
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("output tokens"));
    tokio::time::sleep(Duration::from_secs(retry_after.parse().unwrap())).await;
    let resp = messages(&sim, &body(MODEL, 5)).await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn a_request_larger_than_the_limit_is_told_never_to_retry() {
    let sim = sim(&format!(
        "[[models]]\nname = \"{MODEL}\"\noutput_tokens = 100\n[models.limits]\noutput_tokens_per_minute = 50\n"
    ))
    .await;
    let resp = messages(&sim, &body(MODEL, 100)).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(header(&resp, "x-should-retry").as_deref(), Some("false"));
    assert!(header(&resp, "retry-after").is_none());
}

// ---------------------------------------------------------------------------------------------
// the OpenAI-compatible face

#[tokio::test]
async fn chat_completions_success_errors_and_headers() {
    let sim = sim(&format!(
        "keys = [\"{KEY}\"]\n[limits]\nrequests_per_minute = 30\ninput_tokens_per_minute = 6000\n{}",
        one_model("")
    ))
    .await;
    let url = format!("{}/v1/chat/completions", sim.base_url());
    let chat = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]});
    let resp = plain_client()
        .post(&url)
        .bearer_auth(KEY)
        .json(&chat)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h = |name: &str| header(&resp, name).unwrap_or_else(|| panic!("no {name}"));
    assert_eq!(h("x-ratelimit-limit-requests"), "30");
    assert_eq!(h("x-ratelimit-remaining-requests"), "29");
    // One request of 30 per minute refills in 2 s.
    assert_eq!(h("x-ratelimit-reset-requests"), "2s");
    assert_eq!(h("x-ratelimit-limit-tokens"), "6000");
    let v: Value = resp.json().await.unwrap();
    let prompt = seawall::sim::estimate_input_tokens(&chat).unwrap();
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["object"], "chat.completion");
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(v["model"], MODEL);
    assert_eq!(v["choices"][0]["index"], 0);
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .split(' ')
            .count(),
        8
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": prompt, "completion_tokens": 8, "total_tokens": prompt + 8})
    );

    let send = |body: Value, key: Option<&'static str>| {
        let mut req = plain_client().post(&url).json(&body);
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        req.send()
    };
    let resp = send(
        json!({"model": "gpt-nope", "messages": [{"role": "user", "content": "x"}]}),
        Some(KEY),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 404);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "model_not_found");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(v["error"]["param"], Value::Null);
    assert!(v["error"]["message"].as_str().unwrap().contains("gpt-nope"));

    let resp = send(chat.clone(), None).await.unwrap();
    assert_eq!(resp.status(), 401);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_api_key");

    let mut streaming = chat.clone();
    streaming["stream"] = json!(true);
    let resp = send(streaming, Some(KEY)).await.unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not supported"));

    let mut capped = chat.clone();
    capped["max_tokens"] = json!(3);
    let v: Value = send(capped, Some(KEY)).await.unwrap().json().await.unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 3);

    // The model's faults apply on this face too, in its error shape.
    let mut s = sim.scenario();
    s.models[0].faults = vec![seawall::sim::Fault {
        retry_after: Some(1.0),
        ..seawall::sim::Fault::status(503)
    }];
    sim.set_scenario(s).unwrap();
    let resp = send(chat.clone(), Some(KEY)).await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(header(&resp, "retry-after").as_deref(), Some("1"));
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "server_error");
    assert_eq!(v["error"]["param"], Value::Null);

    // The bucket is per model and shared by both faces: 5 of 30 requests were admitted.
    let anthropic = messages(&sim, &body(MODEL, 1)).await;
    assert_eq!(anthropic.status(), 503);
}

// ---------------------------------------------------------------------------------------------
// control plane, lifecycle, scenarios

#[tokio::test]
async fn control_endpoints_reset_replace_and_read_the_log() {
    let sim = sim(&one_model("")).await;
    let client = plain_client();
    let base = sim.base_url();
    assert_eq!(messages(&sim, &body(MODEL, 5)).await.status(), 200);

    let log: Vec<LogEntry> = client
        .get(format!("{base}/_sim/log"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(log, sim.log());
    assert_eq!(log.len(), 1, "control calls are not logged");

    // PUT a TOML scenario: the model now answers 529.
    let toml = one_model("[[models.faults]]\nkind = \"status\"\nstatus = 529");
    let resp = client
        .put(format!("{base}/_sim/scenario"))
        .header("content-type", "application/toml")
        .body(toml)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(messages(&sim, &body(MODEL, 5)).await.status(), 529);

    // PUT JSON: healthy again.
    let healthy = serde_json::to_string(&Scenario::from_toml(&one_model("")).unwrap()).unwrap();
    let resp = client
        .put(format!("{base}/_sim/scenario"))
        .header("content-type", "application/json")
        .body(healthy)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(messages(&sim, &body(MODEL, 5)).await.status(), 200);

    // An invalid scenario is refused with the key path; the old one stays.
    let bad = one_model("[[models.faults]]\nkind = \"status\"\nstatus = 200");
    let resp = client
        .put(format!("{base}/_sim/scenario"))
        .header("content-type", "text/x-toml")
        .body(bad)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        v["error"]["message"],
        "models[0].faults[0].status: 200 is not an error status: use 400 to 599"
    );
    assert_eq!(messages(&sim, &body(MODEL, 5)).await.status(), 200);
    assert_eq!(sim.count(MODEL), 4);

    let resp = client
        .post(format!("{base}/_sim/reset"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(sim.log().is_empty());
    assert_eq!(sim.count(MODEL), 0);
    assert_eq!(messages(&sim, &body(MODEL, 5)).await.status(), 200);
    assert_eq!(sim.log()[0].seq, 0, "sequence numbers restart");

    let resp = client
        .get(format!("{base}/_sim/reset"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
}

#[tokio::test]
async fn retry_count_and_idempotency_key_are_logged() {
    let sim = sim(&one_model("")).await;
    let resp = upstream(&sim, AuthStyle::XApiKey)
        .send(Attempt {
            retry_count: 2,
            idempotency_key: Some("idem-123".into()),
            forward: Default::default(),
            ..attempt(&body(MODEL, 5), BUDGET)
        })
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    let entry = last(&sim);
    assert_eq!(entry.retry_count, Some(2));
    assert_eq!(entry.idempotency_key.as_deref(), Some("idem-123"));
    assert_eq!(entry.path, "/v1/messages");
    assert_eq!(entry.model.as_deref(), Some(MODEL));
    assert_eq!(entry.request_id.as_deref(), resp.request_id());
}

#[tokio::test]
async fn only_loopback_addresses_are_accepted() {
    for addr in ["0.0.0.0:0", "192.0.2.1:0", "[::]:0"] {
        let addr: SocketAddr = addr.parse().unwrap();
        let scenario = Scenario::from_toml(&one_model("")).unwrap();
        let err = Sim::start(scenario, addr).await.unwrap_err();
        assert!(
            matches!(err, SimError::NotLoopback(a) if a == addr),
            "{err}"
        );
        assert!(err.to_string().contains("loopback"), "{err}");
    }
    // Another loopback address of 127.0.0.0/8 works, and port 0 picks a real port.
    let scenario = Scenario::from_toml(&one_model("")).unwrap();
    let sim = Sim::start(scenario, "127.0.0.2:0".parse().unwrap())
        .await
        .unwrap();
    assert_ne!(sim.addr().port(), 0);
    assert_eq!(
        sim.base_url(),
        format!("http://127.0.0.2:{}", sim.addr().port())
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn dropping_the_last_handle_stops_the_simulator() {
    let sim = sim(&one_model("")).await;
    let addr = sim.addr();
    let clone = sim.clone();
    drop(sim);
    assert_eq!(clone.count(MODEL), 0, "a clone keeps it running");
    TcpStream::connect(addr).await.unwrap();
    drop(clone);
    eventually(
        "connections are refused after the last handle was dropped",
        Duration::from_secs(2),
        || async { TcpStream::connect(addr).await.is_err() },
    )
    .await;
}

#[tokio::test]
async fn scenario_errors_name_the_key() {
    let cases: [(&str, &str); 9] = [
        ("", "models: no models"),
        (
            "[[models]]\nname = \"a\"\n[[models]]\nname = \"a\"",
            "models[1].name: \"a\" is already the name of models[0]",
        ),
        (
            "[[models]]\nname = \"a\"\n[[models]]\nname = \"b\"\n[[models.faults]]\nkind = \"status\"\nstatus = 200",
            "models[1].faults[0].status: 200 is not an error status",
        ),
        (
            "[[models]]\nname = \"a\"\n[[models.faults]]\nkind = \"status\"",
            "models[0].faults[0].status: required",
        ),
        (
            "[[models]]\nname = \"a\"\n[[models.faults]]\nkind = \"reset\"\nprobability = 1.5",
            "models[0].faults[0].probability: 1.5 is not between 0 and 1",
        ),
        (
            "[[models]]\nname = \"a\"\n[[models.faults]]\nkind = \"slow_first_byte\"",
            "models[0].faults[0].delay: required",
        ),
        (
            "[[models]]\nname = \"a\"\n[[models.faults]]\nkind = \"reset\"\nafter_deltas = 2",
            "models[0].faults[0].after_deltas: does not apply",
        ),
        (
            "[limits]\nrequests_per_minute = 0\n[[models]]\nname = \"a\"",
            "limits.requests_per_minute: 0",
        ),
        (
            "[[models]]\nname = \"a\"\n[[models.faults]]\nkind = \"explode\"",
            "models[0].faults[0].kind: unknown variant `explode`",
        ),
    ];
    for (toml, needle) in cases {
        let err = Scenario::from_toml(toml).unwrap_err();
        assert!(
            err.to_string().contains(needle),
            "{err}\n  should contain {needle}"
        );
    }
    let err = Scenario::from_toml("[[models]]\nname = \"a\"\nlatency = 40").unwrap_err();
    assert_eq!(err.key(), Some("models[0].latency"));
    assert!(err.to_string().contains("duration"), "{err}");
    let err = Scenario::from_json(r#"{"models": [{"name": "a", "until": "1s"}]}"#).unwrap_err();
    assert!(err.to_string().contains("unknown field `until`"), "{err}");
    let err = Scenario::from_file(std::path::Path::new("/nonexistent/scenario.toml")).unwrap_err();
    assert!(matches!(err, ScenarioError::Read { .. }), "{err}");
    // Keys never show up in errors.
    let err = Scenario::from_toml(&format!(
        "keys = [\"{KEY}\"]\nrevoked_keys = [\"{KEY}\"]\n{}",
        one_model("")
    ))
    .unwrap_err();
    assert_eq!(err.key(), Some("revoked_keys[0]"));
    assert!(!err.to_string().contains(KEY), "{err}");
    // And a handle refuses an invalid scenario, keeping its own.
    let sim = sim(&one_model("")).await;
    let mut s = sim.scenario();
    s.models[0].output_tokens = 0;
    let err = sim.set_scenario(s).unwrap_err();
    assert_eq!(err.key(), Some("models[0].output_tokens"));
    assert_eq!(sim.scenario().models[0].output_tokens, 8);
}

#[tokio::test]
async fn the_example_scenario_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/sim_scenario.toml");
    let s = Scenario::from_file(std::path::Path::new(path)).unwrap();
    assert_eq!(s.models.len(), 3);
    assert!(s.models[0].faults.len() >= 6);
    // The same model on Bedrock, by its Bedrock id, on the Bedrock wire only.
    let bedrock = &s.models[2];
    assert!(bedrock.name.starts_with("us.anthropic."));
    assert!(bedrock.serves(seawall::sim::Wire::Bedrock));
    assert!(!bedrock.serves(seawall::sim::Wire::Anthropic));
    assert!(
        s.models[1].serves(seawall::sim::Wire::Vertex),
        "no `wires`: every wire"
    );
}

// ---------------------------------------------------------------------------------------------
// the HTTP layer

#[tokio::test]
async fn keep_alive_pipelining_and_connection_close() {
    let sim = sim(&one_model("")).await;
    let b = serde_json::to_string(&body(MODEL, 2)).unwrap();
    let request = |extra: &str| {
        format!(
            "POST /v1/messages?beta=true HTTP/1.1\r\nhost: x\r\nx-api-key: {KEY}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n{extra}\r\n{b}",
            b.len()
        )
    };
    // Two pipelined requests on one connection; the second asks to close.
    let both = format!("{}{}", request(""), request("connection: close\r\n"));
    let answer = raw(sim.addr(), both.as_bytes()).await;
    assert_eq!(answer.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{answer}");
    assert!(answer.contains("connection: close\r\n"));
    assert_eq!(
        sim.log()[0].path,
        "/v1/messages",
        "the query string is not part of the path"
    );

    // HTTP/1.0 closes after one answer.
    let old = request("").replace("HTTP/1.1", "HTTP/1.0");
    let answer = raw(sim.addr(), old.as_bytes()).await;
    assert_eq!(answer.matches("200 OK").count(), 1, "{answer}");
}

#[tokio::test]
async fn oversized_and_chunked_requests_are_refused() {
    let sim = sim(&one_model("")).await;
    let too_big = format!(
        "POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: {KEY}\r\ncontent-length: {}\r\n\r\n",
        32 * 1024 * 1024 + 1
    );
    let answer = raw(sim.addr(), too_big.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    let v: Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "request_too_large");
    let entry = last(&sim);
    assert_eq!(
        (entry.outcome.as_str(), entry.status),
        ("request_too_large", Some(413))
    );

    let chunked = "POST /v1/messages HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n";
    let answer = raw(sim.addr(), chunked.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 411 "), "{answer}");

    let huge_head = format!(
        "GET /v1/messages HTTP/1.1\r\nx-filler: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let answer = raw(sim.addr(), huge_head.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");

    let garbage = raw(sim.addr(), b"NOT HTTP AT ALL\r\n\r\n").await;
    assert!(garbage.starts_with("HTTP/1.1 400 "), "{garbage}");

    // Through reqwest: a body just over the limit gets the 413, not a broken connection.
    let resp = plain_client()
        .post(format!("{}/v1/messages", sim.base_url()))
        .header("x-api-key", KEY)
        .body(vec![b' '; 32 * 1024 * 1024 + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
}

#[tokio::test]
async fn unknown_paths_and_methods() {
    let sim = sim(&one_model("")).await;
    let resp = plain_client()
        .get(format!("{}/v1/messages", sim.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    let resp = plain_client()
        .post(format!("{}/v2/nothing", sim.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert!(header(&resp, "request-id").is_some());
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "not_found_error");
    let outcomes: Vec<String> = sim.log().into_iter().map(|e| e.outcome).collect();
    assert_eq!(outcomes, ["method_not_allowed", "unknown_path"]);
}

// ---------------------------------------------------------------------------------------------
// the `seawall sim` binary

/// `text` as `name` in a fresh temp dir: (the dir, the file).
fn temp_file(name: &str, text: &str) -> (PathBuf, PathBuf) {
    let dir = temp_dir("sim");
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[tokio::test]
async fn the_sim_subcommand_serves_until_sigterm() {
    let (dir, path) = temp_file("scenario.toml", &one_model(""));
    let scenario = path.to_str().unwrap();
    let args = ["sim", "--scenario", scenario, "--listen", "127.0.0.1:0"];
    let sim = Serve::announcing(&dir, &args, &[], "seawall sim listening on ");
    let base = sim.base.clone();
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");

    let resp = plain_client()
        .post(format!("{base}/v1/messages"))
        .header("x-api-key", KEY)
        .json(&body(MODEL, 5))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let log: Vec<LogEntry> = plain_client()
        .get(format!("{base}/_sim/log"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(log.len(), 1);

    let stopped = sim.stop();
    assert_eq!(stopped.status.code(), Some(0), "{:?}", stopped.status);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_bad_scenario_exits_2_naming_the_key() {
    let (dir, path) = temp_file(
        "bad.toml",
        "[[models]]\nname = \"a\"\n[[models.faults]]\nkind = \"status\"\nstatus = 200\n",
    );
    let (status, stdout, stderr) = run(&dir, &["sim", "--scenario", path.to_str().unwrap()], &[]);
    assert_eq!(status.code(), Some(2));
    assert!(stdout.is_empty());
    assert!(
        stderr.contains("models[0].faults[0].status: 200 is not an error status"),
        "{stderr}"
    );

    let (status, _, _) = run(
        &dir,
        &[
            "sim",
            "--scenario",
            "/nonexistent.toml",
            "--listen",
            "0.0.0.0:0",
        ],
        &[],
    );
    assert_eq!(status.code(), Some(2));
    let _ = std::fs::remove_dir_all(dir);
}
