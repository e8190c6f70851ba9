//! `OpenAiUpstream` over real loopback HTTP: the simulator's OpenAI-compatible face for
//! translation, error mapping and faults, a raw socket server where the exact outbound bytes
//! must be seen or the server has to misbehave beyond the simulator, and the real runtime for
//! `Reply::text` and cross-provider fallback. Real time, millisecond budgets, no internet.

mod support;

use support::raw::raw_server;

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};
use support::{init_logs, logs};

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use seawall::core::policy::classify::{classify, Class, Scope, Verdict};
use seawall::core::upstream::{Attempt, TransportError, Upstream, UpstreamResponse};
use seawall::core::{Call, Outcome, Seawall};
use seawall::transport::openai::{TransportSetupError, DEFAULT_BASE_URL, DROPPED_HEADER};
use seawall::{OpenAiOptions, OpenAiUpstream};
use support::sim::{anthropic, keys, sim};

const KEY0: &str = "sk-proj-FIRSTSECRETFIRSTSECRET-aaaa";
const KEY1: &str = "sk-proj-OTHERSECRETOTHERSECRET-bbbb";
const REVOKED: &str = "sk-proj-REVOKEDSECRETREVOKED-cccc";
const ANTHROPIC_KEY: &str = "sk-ant-api03-ANTHROPICSECRET-dddd";

/// Well inside what loopback needs, far below anything that would slow the suite.
const BUDGET: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// helpers

fn options(base_url: String) -> OpenAiOptions {
    OpenAiOptions {
        base_url,
        connect_timeout: Duration::from_millis(500),
        ..OpenAiOptions::default()
    }
}

fn openai(base_url: String) -> OpenAiUpstream {
    OpenAiUpstream::new(keys(&[KEY0, KEY1]), options(base_url)).unwrap()
}

fn at(addr: SocketAddr) -> OpenAiUpstream {
    openai(format!("http://{addr}"))
}

/// A plain conversation: system prompt, three turns (one of them as text blocks).
fn conversation(model: &str, max_tokens: u64) -> Value {
    json!({
        "model": model,
        "max_tokens": max_tokens,
        "system": "You are terse.",
        "messages": [
            {"role": "user", "content": "What is a seawall?"},
            {"role": "assistant", "content": [{"type": "text", "text": "A barrier."},
                                              {"type": "text", "text": "Against the sea."}]},
            {"role": "user", "content": "And in software?"},
        ],
    })
}

/// What [`conversation`] must become on the wire.
fn conversation_translated() -> Value {
    json!([
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is a seawall?"},
        {"role": "assistant", "content": "A barrier.\nAgainst the sea."},
        {"role": "user", "content": "And in software?"},
    ])
}

fn attempt(body: &Value, timeout: Duration) -> Attempt {
    init_logs();
    support::sim::attempt(
        body["model"].as_str().unwrap_or("gpt-x"),
        Bytes::from(body.to_string()),
        timeout,
    )
}

fn json_of(resp: &UpstreamResponse) -> Value {
    serde_json::from_slice(&resp.body)
        .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&resp.body)))
}

fn verdict(resp: &UpstreamResponse) -> Verdict {
    classify(&Ok(resp.clone()), SystemTime::now())
}

fn assert_no_key(text: &str) {
    for secret in [
        KEY0,
        KEY1,
        REVOKED,
        ANTHROPIC_KEY,
        "FIRSTSECRET",
        "OTHERSECRET",
        "REVOKEDSECRET",
        "ANTHROPICSECRET",
    ] {
        assert!(!text.contains(secret), "a key leaked into: {text}");
    }
}

/// One request as the raw server read it.
#[derive(Debug)]
struct Seen {
    request_line: String,
    /// Names lower-cased.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// Read one whole request (head plus Content-Length bytes of body).
async fn read_request(stream: &mut TcpStream) -> io::Result<Seen> {
    let raw = support::raw::read_request(stream).await?;
    let r = support::raw::parse_request(&raw);
    Ok(Seen {
        request_line: r.request_line,
        headers: r.headers,
        body: r.body,
    })
}

/// A full HTTP/1.1 response with a correct Content-Length; the connection closes after it.
fn http_response(status: u16, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} X\r\ncontent-length: {}\r\n", body.len());
    for (n, v) in headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str("connection: close\r\n\r\n");
    out.push_str(body);
    out.into_bytes()
}

/// A raw server that answers every request with `answer` and reports what it read.
async fn capture_server(answer: Vec<u8>) -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            let answer = answer.clone();
            tokio::spawn(async move {
                if let Ok(seen) = read_request(&mut stream).await {
                    let _ = tx.send(seen);
                    let _ = stream.write_all(&answer).await;
                    let _ = stream.shutdown().await;
                }
            });
        }
    });
    (addr, rx)
}

const COMPLETION: &str = r#"{"id":"chatcmpl-raw1","object":"chat.completion","created":1,"model":"gpt-x-2026-01-01","choices":[{"index":0,"message":{"role":"assistant","content":"Hello there."},"finish_reason":"stop"}],"usage":{"prompt_tokens":21,"completion_tokens":3,"total_tokens":24}}"#;

// ---------------------------------------------------------------------------------------------
// translation round trip through the simulator

#[tokio::test]
async fn a_conversation_round_trips_through_the_sims_openai_face() {
    let sim = sim(&format!(
        r#"
        keys = ["{KEY0}", "{KEY1}"]
        [limits]
        requests_per_minute = 100
        input_tokens_per_minute = 100000
        output_tokens_per_minute = 100000
        [[models]]
        name = "gpt-x"
        output_tokens = 16
    "#
    ))
    .await;
    let up = openai(sim.base_url());
    let mut a = attempt(&conversation("gpt-x", 32), BUDGET);
    a.idempotency_key = Some("idem-openai-1".into());
    a.key = 1;
    let resp = up.send(a).await.unwrap();

    assert_eq!(resp.status, 200);
    let v = json_of(&resp);
    let id = v["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-"), "{id}");
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["model"], "gpt-x");
    assert_eq!(v["content"].as_array().unwrap().len(), 1);
    assert_eq!(v["content"][0]["type"], "text");
    let text = v["content"][0]["text"].as_str().unwrap();
    assert_eq!(text.split(' ').count(), 16, "{text}");
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["stop_sequence"], Value::Null);
    // The simulator counts the prompt it received: the translated messages, system first.
    let prompt =
        seawall::sim::estimate_input_tokens(&json!({"messages": conversation_translated()}))
            .unwrap();
    assert_eq!(
        v["usage"],
        json!({"input_tokens": prompt, "output_tokens": 16})
    );
    assert!(verdict(&resp) == Verdict::Success);

    // Headers: request id, translated rate-limit headers, originals kept, nothing dropped.
    let h = |n: &str| resp.headers.get(n).unwrap_or_else(|| panic!("no {n}"));
    assert_eq!(h("request-id"), h("x-request-id"));
    assert_eq!(h("anthropic-ratelimit-requests-limit"), "100");
    assert_eq!(h("anthropic-ratelimit-requests-remaining"), "99");
    assert_eq!(h("x-ratelimit-limit-requests"), "100");
    assert_eq!(
        h("anthropic-ratelimit-tokens-limit"),
        h("x-ratelimit-limit-tokens")
    );
    assert_eq!(
        h("anthropic-ratelimit-tokens-remaining"),
        h("x-ratelimit-remaining-tokens")
    );
    assert_eq!(resp.headers.get(DROPPED_HEADER), None);
    assert_eq!(resp.headers.get("content-length"), None, "the body changed");

    let log = sim.log();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].path, "/v1/chat/completions");
    assert_eq!(log[0].model.as_deref(), Some("gpt-x"));
    assert_eq!(log[0].key_tail.as_deref(), Some("bbbb"));
    assert_eq!(log[0].idempotency_key.as_deref(), Some("idem-openai-1"));
    assert_eq!(log[0].status, Some(200));
    assert_eq!(log[0].request_id.as_deref(), resp.request_id());
}

#[tokio::test]
async fn finish_reason_length_becomes_max_tokens() {
    let sim = sim("[[models]]\nname = \"gpt-x\"\noutput_tokens = 16\n").await;
    let resp = openai(sim.base_url())
        .send(attempt(&conversation("gpt-x", 5), BUDGET))
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    let v = json_of(&resp);
    assert_eq!(v["stop_reason"], "max_tokens");
    assert_eq!(v["usage"]["output_tokens"], 5);
    assert_eq!(
        v["content"][0]["text"].as_str().unwrap().split(' ').count(),
        5
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_serves_text_and_usage_from_an_openai_upstream() {
    let sim = sim("[[models]]\nname = \"gpt-x\"\noutput_tokens = 8\n").await;
    init_logs();
    let sw = Seawall::builder()
        .upstream("openai", openai(sim.base_url()))
        .model_on("gpt-x", "openai", None)
        .spawn()
        .await
        .unwrap();
    let reply = sw
        .complete(Call::new("gpt-x", 64).system("Be brief.").user("Hello?"))
        .await
        .unwrap();
    assert_eq!(reply.model, "gpt-x");
    assert_eq!(reply.text().split(' ').count(), 8, "{}", reply.text());
    assert_eq!(reply.usage.output_tokens, 8);
    let prompt = seawall::sim::estimate_input_tokens(&json!({"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello?"},
    ]}))
    .unwrap();
    assert_eq!(reply.usage.input_tokens, prompt);
    assert_eq!(reply.request_id(), sim.log()[0].request_id.as_deref());
    assert_eq!(reply.headers.get(DROPPED_HEADER), None);

    // A lossy request is served, and the reply says what the provider never saw.
    let lossy = Call::from_value(json!({
        "model": "gpt-x", "max_tokens": 8, "top_k": 5,
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "Hello?", "cache_control": {"type": "ephemeral"}}]}],
    }))
    .unwrap();
    let reply = sw.complete(lossy).await.unwrap();
    assert_eq!(reply.text().split(' ').count(), 8);
    assert_eq!(
        reply.headers.get(DROPPED_HEADER),
        Some("top_k,cache_control")
    );
    sw.shutdown(Duration::from_secs(1)).await;
}

// ---------------------------------------------------------------------------------------------
// the exact request on the wire

#[tokio::test]
async fn the_outbound_request_is_exactly_the_translation() {
    let answer = http_response(
        200,
        &[
            ("content-type", "application/json"),
            ("x-request-id", "req_raw_1"),
            ("x-ratelimit-limit-requests", "500"),
            ("x-ratelimit-remaining-requests", "499"),
            ("x-ratelimit-reset-requests", "120ms"),
        ],
        COMPLETION,
    );
    let (addr, mut seen) = capture_server(answer).await;
    let up = OpenAiUpstream::new(
        keys(&[KEY0, KEY1]),
        OpenAiOptions {
            organization: Some("org-seawall".into()),
            ..options(format!("http://{addr}"))
        },
    )
    .unwrap();
    let body = json!({
        "model": "gpt-x",
        "max_tokens": 100,
        "system": [
            {"type": "text", "text": "Rules.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "More rules."},
        ],
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": [{"type": "text", "text": "Hello."}]},
            {"role": "user", "content": "Bye"},
        ],
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 5,
        "stop_sequences": ["END", "STOP"],
        "metadata": {"user_id": "u-1"},
        "stream": false,
    });
    let mut a = attempt(&body, BUDGET);
    a.key = 1;
    a.idempotency_key = Some("idem-7".into());
    a.retry_count = 2;
    let resp = up.send(a).await.unwrap();

    let req = seen.recv().await.unwrap();
    assert_eq!(req.request_line, "POST /v1/chat/completions HTTP/1.1");
    assert_eq!(
        req.header("authorization"),
        Some(format!("Bearer {KEY1}").as_str())
    );
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert_eq!(req.header("openai-organization"), Some("org-seawall"));
    assert_eq!(req.header("idempotency-key"), Some("idem-7"));
    for absent in ["x-api-key", "anthropic-version", "x-stainless-retry-count"] {
        assert_eq!(req.header(absent), None, "{absent}");
    }
    let sent = req.json();
    assert_eq!(
        sent,
        json!({
            "model": "gpt-x",
            "messages": [
                {"role": "system", "content": "Rules.\nMore rules."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "Bye"},
            ],
            "max_tokens": 100,
            "temperature": 0.2,
            "top_p": 0.9,
            "stop": ["END", "STOP"],
        })
    );
    // Key order too: the body is built in the documented order.
    let keys_sent: Vec<_> = sent.as_object().unwrap().keys().cloned().collect();
    assert_eq!(
        keys_sent,
        [
            "model",
            "messages",
            "max_tokens",
            "temperature",
            "top_p",
            "stop"
        ]
    );

    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.headers.get(DROPPED_HEADER),
        Some("cache_control,top_k")
    );
    assert_eq!(resp.request_id(), Some("req_raw_1"));
    assert_eq!(resp.headers.get("x-request-id"), Some("req_raw_1"));
    assert_eq!(
        resp.headers.get("anthropic-ratelimit-requests-limit"),
        Some("500")
    );
    assert_eq!(
        resp.headers.get("anthropic-ratelimit-requests-remaining"),
        Some("499")
    );
    assert_eq!(
        resp.headers.get("x-ratelimit-reset-requests"),
        Some("120ms")
    );
    assert_eq!(resp.headers.get("content-length"), None);
    assert_eq!(
        json_of(&resp),
        json!({
            "id": "chatcmpl-raw1",
            "type": "message",
            "role": "assistant",
            "model": "gpt-x-2026-01-01",
            "content": [{"type": "text", "text": "Hello there."}],
            "stop_reason": "end_turn",
            "stop_sequence": null,
            "usage": {"input_tokens": 21, "output_tokens": 3},
        })
    );
}

#[tokio::test]
async fn untranslatable_requests_are_refused_naming_the_field_and_nothing_is_sent() {
    let (addr, mut seen) = capture_server(http_response(200, &[], COMPLETION)).await;
    let up = at(addr);
    let user = |content: Value| json!([{"role": "user", "content": content}]);
    let base = |extra: Value| {
        let mut b = json!({"model": "gpt-x", "max_tokens": 10,
                           "messages": user(json!("hi"))});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    // Tools, tool_use / tool_result blocks, images, thinking and streams are translated now
    // (tests below); what no OpenAI-compatible provider can take is still refused.
    let image = json!({"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="});
    let cases = [
        (base(json!({"mcp_servers": []})), "mcp_servers"),
        (
            base(json!({"tools": [{"type": "web_search_20250305", "name": "web_search"}]})),
            "tools[0].type",
        ),
        (
            base(json!({"messages": user(json!([
                {"type": "image", "source": {"type": "file", "file_id": "file_1"}}]))})),
            "messages[0].content[0].source",
        ),
        (
            base(json!({"messages": user(json!([{"type": "document", "source": {}}]))})),
            "messages[0].content[0] (document)",
        ),
        (
            base(json!({"system": [{"type": "image", "source": image}]})),
            "system[0] (image)",
        ),
    ];
    for (body, field) in cases {
        let err = up.send(attempt(&body, BUDGET)).await.unwrap_err();
        let TransportError::Invalid(msg) = &err else {
            panic!("{field}: expected Invalid, got {err:?}");
        };
        assert!(
            msg.contains("cannot be sent to an OpenAI-compatible provider"),
            "{msg}"
        );
        assert!(msg.ends_with(field), "{field}: {msg}");
        // The runtime never retries it on this model; another hop's transport may take it.
        assert_eq!(
            classify(&Err(err.clone()), SystemTime::now()),
            Verdict::Permanent {
                class: Class::InvalidRequest,
                scope: Scope::Model
            }
        );
    }
    // Nothing reached the server: the first request it sees is the one sent now.
    let ok = up
        .send(attempt(&conversation("after-refusals", 10), BUDGET))
        .await
        .unwrap();
    assert_eq!(ok.status, 200);
    assert_eq!(seen.recv().await.unwrap().json()["model"], "after-refusals");
    assert!(seen.try_recv().is_err(), "one request in all");
}

// ---------------------------------------------------------------------------------------------
// errors: status kept, body in the Anthropic shape, retry headers kept

#[tokio::test]
async fn sim_error_statuses_come_back_anthropic_shaped_with_their_headers() {
    let sim = sim(&format!(
        r#"
        revoked_keys = ["{REVOKED}"]
        [[models]]
        name = "overloaded"
        [[models.faults]]
        kind = "status"
        status = 529
        retry_after = 2
        [[models]]
        name = "unavailable"
        [[models.faults]]
        kind = "status"
        status = 503
        retry_after_ms = 1500
        should_retry = true
        message = "upstream connect error"
        [[models]]
        name = "limited"
        [[models.faults]]
        kind = "status"
        status = 429
        retry_after = 3
        [[models]]
        name = "gpt-x"
    "#
    ))
    .await;
    let up = openai(sim.base_url());
    let cases = [
        (
            "overloaded",
            529,
            "overloaded_error",
            Class::Overloaded,
            2000,
        ),
        ("unavailable", 503, "api_error", Class::ServerError, 1500),
        ("limited", 429, "rate_limit_error", Class::RateLimited, 3000),
    ];
    for (model, status, kind, class, hint_ms) in cases {
        let resp = up
            .send(attempt(&conversation(model, 10), BUDGET))
            .await
            .unwrap();
        assert_eq!(resp.status, status, "{model}");
        let v = json_of(&resp);
        assert_eq!(v["type"], "error", "{model}: {v}");
        assert_eq!(v["error"]["type"], kind, "{model}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().len() > 3, "{v}");
        assert_eq!(v["error"].get("details"), None, "no invented codes: {v}");
        assert_eq!(v["request_id"].as_str(), resp.request_id(), "{model}");
        assert_eq!(
            verdict(&resp),
            Verdict::Retryable {
                class,
                hint: Some(Duration::from_millis(hint_ms))
            },
            "{model}"
        );
    }
    let resp = up
        .send(attempt(&conversation("unavailable", 10), BUDGET))
        .await
        .unwrap();
    assert_eq!(resp.headers.get("retry-after-ms"), Some("1500"));
    assert_eq!(resp.headers.get("x-should-retry"), Some("true"));
    assert_eq!(
        json_of(&resp)["error"]["message"],
        "upstream connect error",
        "the provider's own message"
    );
    let resp = up
        .send(attempt(&conversation("overloaded", 10), BUDGET))
        .await
        .unwrap();
    assert_eq!(resp.headers.get("retry-after"), Some("2"));

    // A revoked key: 401, the key is bad (the governor quarantines it).
    let revoked = OpenAiUpstream::new(keys(&[REVOKED]), options(sim.base_url())).unwrap();
    let resp = revoked
        .send(attempt(&conversation("gpt-x", 10), BUDGET))
        .await
        .unwrap();
    assert_eq!(resp.status, 401);
    let v = json_of(&resp);
    assert_eq!(v["error"]["type"], "authentication_error");
    assert_eq!(v["error"]["message"], "this API key has been revoked");
    assert!(verdict(&resp).key_is_bad());
    assert_no_key(&String::from_utf8_lossy(&resp.body));

    // An unknown model: 404, permanent for this model only.
    let resp = up
        .send(attempt(&conversation("gpt-nope", 10), BUDGET))
        .await
        .unwrap();
    assert_eq!(resp.status, 404);
    assert_eq!(json_of(&resp)["error"]["type"], "not_found_error");
    assert_eq!(
        verdict(&resp),
        Verdict::Permanent {
            class: Class::NotFound,
            scope: Scope::Model
        }
    );
}

#[tokio::test]
async fn insufficient_quota_is_a_429_that_must_not_be_retried() {
    // `should_retry = true` from the provider is overridden: quota does not come back by waiting.
    let sim = sim(r#"
        [[models]]
        name = "broke"
        [[models.faults]]
        kind = "status"
        status = 429
        error_code = "insufficient_quota"
        should_retry = true
        message = "You exceeded your current quota, please check your plan and billing details."
    "#)
    .await;
    let resp = openai(sim.base_url())
        .send(attempt(&conversation("broke", 10), BUDGET))
        .await
        .unwrap();
    assert_eq!(resp.status, 429);
    let should_retry: Vec<_> = resp
        .headers
        .iter()
        .filter(|(n, _)| *n == "x-should-retry")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(should_retry, ["false"]);
    let v = json_of(&resp);
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert_eq!(
        v["error"]["details"],
        json!({"error_code": "insufficient_quota"}),
        "the provider's own code, where the classifier reads spend caps"
    );
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("exceeded your current quota"));
    // A spend cap: the organization cannot pay, so nothing on this upstream is tried again.
    assert_eq!(
        verdict(&resp),
        Verdict::Permanent {
            class: Class::Billing,
            scope: Scope::Organization
        }
    );
}

#[tokio::test]
async fn bodies_the_sim_cannot_send_are_mapped_too() {
    // Real OpenAI's quota error carries the code in `type` as well; a proxy's HTML error page;
    // a 200 that is not JSON; a 200 that is JSON but an error object.
    let cases: [(u16, &str, u16); 4] = [
        (
            429,
            r#"{"error":{"message":"quota","type":"insufficient_quota","param":null,"code":null}}"#,
            429,
        ),
        (502, "<html><body>502 Bad Gateway</body></html>", 502),
        (200, r#"{"id":"chatcmpl-cut","choi"#, 200),
        (
            200,
            r#"{"error":{"message":"provider down","code":502}}"#,
            502,
        ),
    ];
    for (status, body, want) in cases {
        let answer = http_response(status, &[("content-type", "application/json")], body);
        let (addr, _seen) = capture_server(answer).await;
        let resp = at(addr)
            .send(attempt(&conversation("gpt-x", 10), BUDGET))
            .await
            .unwrap();
        assert_eq!(resp.status, want, "{body}");
        match (status, want) {
            (429, _) => {
                assert_eq!(resp.headers.get("x-should-retry"), Some("false"));
                assert_eq!(json_of(&resp)["error"]["message"], "quota");
            }
            (502, _) => {
                let v = json_of(&resp);
                assert_eq!(v["error"]["type"], "api_error");
                assert!(v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("502 Bad Gateway"));
            }
            (200, 200) => {
                assert_eq!(&resp.body[..], body.as_bytes(), "passed through unchanged");
                assert_eq!(resp.headers.get("content-length"), Some("26"));
                assert_eq!(verdict(&resp).class(), Class::Network, "retried as broken");
            }
            _ => {
                let v = json_of(&resp);
                assert_eq!(v["error"]["type"], "api_error");
                assert!(v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("provider down"));
                assert_eq!(verdict(&resp).class(), Class::ServerError);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// no complete answer: mapped like the Anthropic transport

#[tokio::test]
async fn sim_reset_hang_and_truncation_are_reset_timeout_and_truncated() {
    let sim = sim(r#"
        [[models]]
        name = "resets"
        [[models.faults]]
        kind = "reset"
        [[models]]
        name = "hangs"
        [[models.faults]]
        kind = "hang"
        [[models]]
        name = "truncates"
        output_tokens = 200
        [[models.faults]]
        kind = "truncated"
    "#)
    .await;
    let up = openai(sim.base_url());

    let err = up
        .send(attempt(&conversation("resets", 10), BUDGET))
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Reset(_)), "{err:?}");
    assert_no_key(&err.to_string());

    let budget = Duration::from_millis(200);
    let started = Instant::now();
    let err = up
        .send(attempt(&conversation("hangs", 10), budget))
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(err, TransportError::Timeout(budget));
    assert!(elapsed >= budget, "fired early: {elapsed:?}");
    assert!(
        elapsed < Duration::from_secs(2),
        "did not fire: {elapsed:?}"
    );

    let err = up
        .send(attempt(&conversation("truncates", 200), BUDGET))
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Truncated(_)), "{err:?}");
    assert_no_key(&err.to_string());

    let outcomes: Vec<_> = sim.log().into_iter().map(|e| e.outcome).collect();
    assert_eq!(outcomes, ["reset", "hang", "truncated"]);
}

#[tokio::test]
async fn refused_closed_and_stalled_connections() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed = listener.local_addr().unwrap();
    drop(listener);
    let err = at(closed)
        .send(attempt(&conversation("gpt-x", 10), BUDGET))
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Connect(_)), "{err:?}");

    let (got, request) = oneshot::channel();
    let addr = raw_server(|mut stream| async move {
        let _ = got.send(read_request(&mut stream).await.unwrap());
        stream.shutdown().await.unwrap();
    })
    .await;
    let err = at(addr)
        .send(attempt(&conversation("gpt-x", 10), BUDGET))
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Reset(_)), "{err:?}");
    assert_eq!(request.await.unwrap().json()["model"], "gpt-x");

    let addr = raw_server(|mut stream| async move {
        read_request(&mut stream).await.unwrap();
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"id\":")
            .await
            .unwrap();
        std::future::pending::<()>().await;
    })
    .await;
    let budget = Duration::from_millis(200);
    let started = Instant::now();
    let err = at(addr)
        .send(attempt(&conversation("gpt-x", 10), budget))
        .await
        .unwrap_err();
    assert_eq!(err, TransportError::Timeout(budget));
    assert!(started.elapsed() < Duration::from_secs(2));
}

// ---------------------------------------------------------------------------------------------
// cross-provider fallback through the runtime

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_anthropic_model_falls_back_to_an_openai_model() {
    let sim = sim(r#"
        seed = 11
        [[models]]
        name = "claude-x"
        [[models.faults]]
        kind = "status"
        status = 529
        [[models]]
        name = "gpt-x"
        output_tokens = 12
    "#)
    .await;
    init_logs();
    let anthropic = anthropic(sim.base_url(), &[ANTHROPIC_KEY]);
    let sw = Seawall::builder()
        .upstream("anthropic", anthropic)
        .upstream("openai", openai(sim.base_url()))
        .model_on("claude-x", "anthropic", None)
        .model_on("gpt-x", "openai", None)
        .chain("claude-x", ["claude-x", "gpt-x"])
        .spawn()
        .await
        .unwrap();
    let reply = sw
        .complete(
            Call::new("claude-x", 64)
                .system("Be brief.")
                .user("Status?"),
        )
        .await
        .expect("the OpenAI hop serves");
    assert_eq!(reply.model, "gpt-x");
    assert_eq!(reply.text().split(' ').count(), 12, "{}", reply.text());
    assert_eq!(reply.usage.output_tokens, 12);
    assert_eq!(reply.attempts, 2);
    assert!(matches!(
        reply.trail[0].outcome,
        Outcome::Attempted {
            status: Some(529),
            class: Class::Overloaded,
            ..
        }
    ));
    assert!(reply.json().unwrap()["id"]
        .as_str()
        .unwrap()
        .starts_with("chatcmpl-"));

    assert_eq!(sim.count("claude-x"), 1);
    assert_eq!(sim.count("gpt-x"), 1);
    let log = sim.log();
    let path_of = |m: &str| {
        log.iter()
            .find(|e| e.model.as_deref() == Some(m))
            .map(|e| (e.path.as_str(), e.key_tail.clone().unwrap_or_default()))
            .unwrap()
    };
    assert_eq!(path_of("claude-x"), ("/v1/messages", "dddd".to_owned()));
    assert_eq!(
        path_of("gpt-x"),
        ("/v1/chat/completions", "aaaa".to_owned())
    );
    sw.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_model_out_of_quota_is_not_retried_and_the_chain_moves_on() {
    // A spend cap is the organization's: no model of that upstream is tried again for the
    // call, and the chain moves on to another upstream (another organization, another key).
    let sim = sim(r#"
        [[models]]
        name = "gpt-broke"
        [[models.faults]]
        kind = "status"
        status = 429
        error_code = "insufficient_quota"
        [[models]]
        name = "gpt-same-org"
        [[models]]
        name = "gpt-ok"
    "#)
    .await;
    init_logs();
    let sw = Seawall::builder()
        .upstream("openai", openai(sim.base_url()))
        .upstream("openai-b", openai(sim.base_url()))
        .model_on("gpt-broke", "openai", None)
        .model_on("gpt-same-org", "openai", None)
        .model_on("gpt-ok", "openai-b", None)
        .chain("gpt-broke", ["gpt-broke", "gpt-same-org", "gpt-ok"])
        .spawn()
        .await
        .unwrap();
    for _ in 0..2 {
        let reply = sw
            .complete(Call::new("gpt-broke", 16).user("hi"))
            .await
            .unwrap();
        assert_eq!(reply.model, "gpt-ok");
        assert_eq!(reply.attempts, 2, "one try each: {:?}", reply.trail);
        assert!(matches!(
            reply.trail[0].outcome,
            Outcome::Attempted {
                status: Some(429),
                class: Class::Billing,
                ..
            }
        ));
    }
    assert_eq!(sim.count("gpt-broke"), 2, "never retried within a call");
    assert_eq!(
        sim.count("gpt-same-org"),
        0,
        "nothing else of the capped organization is tried"
    );
    // A spend cap says nothing about the model's health: its breaker stays closed.
    let status = sw.breaker_status("gpt-broke").await.unwrap();
    assert_eq!(status.stats.failures, 0, "{status:?}");
    sw.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_window_too_small_moves_the_call_to_the_next_hop() {
    let sim = sim(r#"
        [[models]]
        name = "gpt-small"
        [[models.faults]]
        kind = "status"
        status = 400
        error_code = "context_length_exceeded"
        message = "This model's maximum context length is 8192 tokens."
        [[models]]
        name = "gpt-big"
    "#)
    .await;
    let sw = Seawall::builder()
        .upstream("openai", openai(sim.base_url()))
        .chain("gpt-small", ["gpt-small", "gpt-big"])
        .spawn()
        .await
        .unwrap();
    let reply = sw
        .complete(Call::new("gpt-small", 16).user("a long conversation"))
        .await
        .expect("the larger window serves");
    assert_eq!(reply.model, "gpt-big");
    assert_eq!(reply.attempts, 2, "{:?}", reply.trail);
    assert_eq!(sim.count("gpt-small"), 1, "not retried on the small model");
    sw.shutdown(Duration::from_secs(1)).await;
}

// ---------------------------------------------------------------------------------------------
// setup, keys, logs

#[test]
fn labels_and_debug_show_tails_only() {
    let up = openai("http://127.0.0.1:9".into());
    assert_eq!(up.key_count(), 2);
    assert_eq!(up.key_label(0), "…aaaa");
    assert_eq!(up.key_label(1), "…bbbb");
    assert!(!up.key_label(7).contains("SECRET"));
    assert_eq!(up.endpoint(), "http://127.0.0.1:9/v1/chat/completions");
    for debug in [format!("{up:?}"), format!("{up:#?}")] {
        assert_no_key(&debug);
        assert!(
            debug.contains("…aaaa") && debug.contains("…bbbb"),
            "{debug}"
        );
        assert!(!debug.contains("Bearer"), "{debug}");
    }
}

#[test]
fn new_rejects_unusable_settings_naming_the_field() {
    let err = OpenAiUpstream::new(Vec::new(), OpenAiOptions::default()).unwrap_err();
    assert_eq!(err, TransportSetupError::NoKeys);

    for base in [
        "ftp://x",
        "not a url",
        "https://user:pw@api.openai.com",
        "https://api.openai.com/v1",
        "https://api.groq.com/openai/v1/",
    ] {
        let err = OpenAiUpstream::new(
            keys(&[KEY0]),
            OpenAiOptions {
                base_url: base.into(),
                ..OpenAiOptions::default()
            },
        )
        .unwrap_err();
        assert!(
            matches!(err, TransportSetupError::BaseUrl(_)),
            "{base}: {err:?}"
        );
        assert!(err.to_string().starts_with("base_url "), "{base}: {err}");
        assert!(!err.to_string().contains("pw@"), "{err}");
    }

    let err = OpenAiUpstream::new(
        keys(&[KEY0]),
        OpenAiOptions {
            organization: Some("org\r\nx-evil: 1".into()),
            ..OpenAiOptions::default()
        },
    )
    .unwrap_err();
    assert_eq!(
        err,
        TransportSetupError::HeaderValue {
            field: "organization"
        }
    );

    let defaults = OpenAiOptions::default();
    assert_eq!(defaults.base_url, DEFAULT_BASE_URL);
    assert_eq!(defaults.base_url, "https://api.openai.com");
    assert_eq!(defaults.connect_timeout, Duration::from_secs(5));
    assert_eq!(defaults.pool_idle_timeout, Duration::from_secs(90));
    assert_eq!(defaults.organization, None);
    let up = OpenAiUpstream::new(keys(&[KEY0]), defaults).unwrap();
    assert_eq!(up.endpoint(), "https://api.openai.com/v1/chat/completions");
}

#[tokio::test]
async fn attempt_logs_show_the_tail_and_the_dropped_features_never_the_key() {
    let answer = http_response(200, &[("x-request-id", "req_log_1")], COMPLETION);
    let (addr, _seen) = capture_server(answer).await;
    let up = at(addr);
    let mut lossy = conversation("gpt-log-probe-ok", 10);
    lossy["top_k"] = json!(3);
    up.send(attempt(&lossy, BUDGET)).await.unwrap();
    let mut refused = conversation("gpt-log-probe-refused", 10);
    refused["mcp_servers"] = json!([]);
    let mut a = attempt(&refused, BUDGET);
    a.key = 1;
    up.send(a).await.unwrap_err();

    let text = logs();
    assert_no_key(&text);
    let answered = text
        .lines()
        .find(|l| l.contains("gpt-log-probe-ok"))
        .unwrap_or_else(|| panic!("no line for the good attempt in:\n{text}"));
    for part in [
        "openai attempt answered",
        "…aaaa",
        "status=200",
        "req_log_1",
        "top_k",
    ] {
        assert!(answered.contains(part), "{part} missing from: {answered}");
    }
    let failed = text
        .lines()
        .find(|l| l.contains("gpt-log-probe-refused"))
        .unwrap_or_else(|| panic!("no line for the refused attempt in:\n{text}"));
    assert!(failed.contains("openai attempt failed"), "{failed}");
    assert!(
        failed.contains("…bbbb") && failed.contains("mcp_servers"),
        "{failed}"
    );
}

#[tokio::test]
async fn a_2xx_without_a_completion_that_quotes_the_key_loses_it() {
    // A configured key not shaped like `sk-`: only the configured-key redaction can catch it.
    const GROQ_KEY: &str = "gsk_CONFIGUREDSECRET_0123456789abcdef";
    let echo = format!(r#"{{"error":{{"message":"invalid api key {GROQ_KEY}"}}}}"#);
    let (addr, _seen) = capture_server(http_response(200, &[], &echo)).await;
    let up = OpenAiUpstream::new(keys(&[GROQ_KEY]), options(format!("http://{addr}"))).unwrap();
    let resp = up
        .send(attempt(&conversation("gpt-x", 16), BUDGET))
        .await
        .expect("an answer");
    assert_eq!(resp.status, 502, "no completion in a 200");
    let text = String::from_utf8_lossy(&resp.body);
    assert!(
        text.contains("invalid api key"),
        "the quote is kept: {text}"
    );
    assert!(!text.contains("CONFIGUREDSECRET"), "{text}");
}

// ---------------------------------------------------------------------------------------------
// streams

/// A stream head (event-stream, `content-length` longer than `body` when `cut`) and `body`.
fn stream_response(body: &str, cut: bool) -> Vec<u8> {
    let len = if cut { body.len() + 1000 } else { body.len() };
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {len}\r\n\
         x-request-id: req_stream_1\r\nconnection: close\r\n\r\n{body}"
    )
    .into_bytes()
}

async fn stream_items(
    up: &OpenAiUpstream,
) -> (
    u16,
    Vec<Result<seawall::core::upstream::SseEvent, TransportError>>,
) {
    let mut body = conversation("gpt-x", 10);
    body["stream"] = json!(true);
    let resp = up.send_stream(attempt(&body, BUDGET)).await.unwrap();
    let seawall::core::upstream::StreamBody::Events(mut rx) = resp.body else {
        panic!("expected events");
    };
    let mut items = Vec::new();
    while let Some(item) = tokio::time::timeout(BUDGET, rx.recv()).await.unwrap() {
        items.push(item);
    }
    (resp.status, items)
}

const HELLO_CHUNK: &str = r#"data: {"id":"c1","model":"gpt-x","choices":[{"index":0,"delta":{"role":"assistant","content":"Hel"}}]}

"#;

#[tokio::test]
async fn a_stream_is_translated_as_it_arrives_and_sent_with_usage_asked_for() {
    let body = format!(
        "{HELLO_CHUNK}data: {{\"id\":\"c1\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"lo\"}},\"finish_reason\":\"stop\"}}]}}\n\n\
         data: {{\"id\":\"c1\",\"choices\":[],\"usage\":{{\"prompt_tokens\":5,\"completion_tokens\":2}}}}\n\ndata: [DONE]\n\n"
    );
    let (addr, mut seen) = capture_server(stream_response(&body, false)).await;
    let (status, items) = stream_items(&at(addr)).await;
    assert_eq!(status, 200);
    let events: Vec<_> = items.into_iter().map(|i| i.unwrap()).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
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
    let delta: Value = serde_json::from_str(&events[5].data).unwrap();
    assert_eq!(
        delta["usage"],
        json!({"input_tokens": 5, "output_tokens": 2})
    );
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    let sent = seen.recv().await.unwrap().json();
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["stream_options"], json!({"include_usage": true}));
}

#[tokio::test]
async fn a_stream_cut_or_broken_off_after_content_ends_with_an_error_item() {
    // Cut: the body ends early, before the answer said how it finished.
    let (addr, _seen) = capture_server(stream_response(HELLO_CHUNK, true)).await;
    let (_, items) = stream_items(&at(addr)).await;
    assert!(items[..items.len() - 1].iter().all(Result::is_ok));
    assert!(
        matches!(items.last(), Some(Err(TransportError::Truncated(_)))),
        "{items:?}"
    );
    // Broken off: the provider's in-stream error object, quoted, key-free.
    let broken = format!(
        "{HELLO_CHUNK}data: {{\"error\":{{\"message\":\"server overloaded for {KEY0}\"}}}}\n\n"
    );
    let (addr, _seen) = capture_server(stream_response(&broken, false)).await;
    let (_, items) = stream_items(&at(addr)).await;
    let Some(Err(TransportError::Truncated(why))) = items.last() else {
        panic!("{items:?}");
    };
    assert!(why.contains("server overloaded"), "{why}");
    assert_no_key(why);
}

#[tokio::test]
async fn a_streaming_request_refused_by_the_provider_is_a_whole_translated_answer() {
    let answer = http_response(
        429,
        &[
            ("content-type", "application/json"),
            ("x-ratelimit-reset-requests", "1s"),
            ("x-ratelimit-remaining-requests", "0"),
        ],
        r#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#,
    );
    let (addr, _seen) = capture_server(answer).await;
    let mut body = conversation("gpt-x", 10);
    body["stream"] = json!(true);
    let resp = at(addr).send_stream(attempt(&body, BUDGET)).await.unwrap();
    assert_eq!(resp.status, 429);
    assert_eq!(resp.headers.get("retry-after-ms"), Some("1000"));
    let seawall::core::upstream::StreamBody::Complete(bytes) = resp.body else {
        panic!("a whole answer");
    };
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error");
}
