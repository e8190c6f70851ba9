//! A bounded fuzz run of the gateway over real loopback HTTP (proptest, stable Rust): random
//! request bodies and random values of every header the gateway reads, from clients; random
//! statuses, headers and bodies, from an upstream. Properties: every request gets one
//! API-shaped answer in bounded time, never a 500 (a panic answers 500), an answer no larger
//! than a bound proportional to what went in, and nothing a client sends trips the breaker that
//! every tenant shares. Real time, millisecond settings; one gateway per property, reused by
//! its cases.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use serde_json::{json, Value};
use tokio::runtime::Runtime;

use seawall::core::StateKind;
use support::fuzz::json_value;
use support::gateway::*;
use support::http::serve_app;

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(ProptestConfig {
        // PROPTEST_CASES=N runs a longer fuzz.
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(cases),
        failure_persistence: None,
        ..ProptestConfig::default()
    })
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// A request body: mostly a Messages request with some fields of random type or value.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let good = json!([{"role": "user", "content": "hello"}]);
    let request = (
        prop_oneof![
            4 => Just(json!("m")),
            1 => Just(json!("no-such-model")),
            1 => json_value(2, 12, 3)
        ],
        prop_oneof![
            4 => (1u64..64).prop_map(|n| json!(n)),
            1 => prop::sample::select(vec![json!(0), json!(-1), json!(1.5), json!(1e300),
                json!(u64::MAX), json!("16"), json!(10_000_000)]),
            1 => json_value(2, 12, 3)
        ],
        prop_oneof![
            3 => Just(None),
            2 => any::<bool>().prop_map(|b| Some(json!(b))),
            1 => json_value(2, 12, 3).prop_map(Some)
        ],
        prop_oneof![4 => Just(good), 1 => json_value(2, 12, 3)],
        prop::option::of(json_value(2, 12, 3)),
    )
        .prop_map(|(model, max_tokens, stream, messages, extra)| {
            let mut v = json!({"model": model, "max_tokens": max_tokens, "messages": messages});
            if let Some(s) = stream {
                v["stream"] = s;
            }
            if let Some(e) = extra {
                v["metadata"] = e;
            }
            serde_json::to_vec(&v).expect("json")
        });
    prop_oneof![
        8 => request,
        1 => prop::collection::vec(any::<u8>(), 0..128),
        1 => Just(Vec::new()),
    ]
}

/// The headers the gateway reads, with values short and long, numeric and not, visible ASCII
/// and not.
fn headers() -> impl Strategy<Value = Vec<(&'static str, Vec<u8>)>> {
    let name = prop::sample::select(vec![
        "x-stainless-timeout",
        "idempotency-key",
        "seawall-conversation",
        "seawall-feature",
        "seawall-lane",
        "anthropic-version",
        "anthropic-beta",
        "x-stainless-retry-count",
        "retry-after",
        "anthropic-ratelimit-requests-remaining",
        "origin",
        "content-type",
    ]);
    let value = prop_oneof![
        prop::sample::select(vec![
            "1e20",
            "1e300",
            "18446744073709551616",
            "-1",
            "0",
            "NaN",
            "inf",
            "0.000001",
            "0.05",
            "30",
            "86401",
            "background",
            "interactive",
            "batch",
            "2023-06-01",
            "a,b,,c",
            "http://evil.example",
            "application/json",
            "text/plain",
            "",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        "[ -~]{0,40}".prop_map(String::into_bytes),
        (1usize..3_000).prop_map(|n| vec![b'k'; n]),
        prop::collection::vec(prop_oneof![0x20u8..0x7f, 0x80u8..=0xff, Just(b'\t')], 0..40),
    ];
    prop::collection::vec((name, value), 0..5)
}

/// How a client presents its token.
#[derive(Clone, Copy, Debug)]
enum Auth {
    Key,
    Bearer,
    Both,
    Conflicting,
    Wrong,
    None,
}

fn auth() -> impl Strategy<Value = Auth> {
    prop_oneof![
        6 => Just(Auth::Key),
        2 => Just(Auth::Bearer),
        1 => Just(Auth::Both),
        1 => Just(Auth::Conflicting),
        1 => Just(Auth::Wrong),
        1 => Just(Auth::None),
    ]
}

/// An API-shaped error, or a message, or a stream, or (`passed`) an upstream's error body
/// passed through unchanged; never a 500. Returns the status.
async fn check_answer(
    resp: reqwest::Response,
    sent: usize,
    passed: Option<&[u8]>,
) -> Result<u16, TestCaseError> {
    let status = resp.status().as_u16();
    let rid = resp
        .headers()
        .get("request-id")
        .map(|v| v.to_str().unwrap_or("").to_owned());
    let sse = resp
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| TestCaseError::fail(format!("the answer broke: {e}")))?;
    prop_assert!(status != 500, "a 500: {}", String::from_utf8_lossy(&bytes));
    prop_assert!(rid.is_some(), "no request-id");
    prop_assert!(
        bytes.len() <= 4 * sent + 16_384,
        "{} bytes of answer for {sent} sent",
        bytes.len()
    );
    if status == 200 && sse {
        prop_assert!(bytes.starts_with(b"event: "), "not SSE");
        return Ok(status);
    }
    if status >= 400 && passed.is_some_and(|p| p == &bytes[..]) {
        return Ok(status);
    }
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
        TestCaseError::fail(format!(
            "{status}: not JSON ({e}): {}",
            String::from_utf8_lossy(&bytes)
        ))
    })?;
    if (200..300).contains(&status) {
        prop_assert!(v.is_object(), "{v}");
    } else {
        prop_assert_eq!(&v["type"], "error", "{}", v);
        prop_assert!(v["error"]["type"].is_string(), "{}", v);
        prop_assert!(v["error"]["message"].is_string(), "{}", v);
    }
    Ok(status)
}

/// Clients: any body, any headers, any path and way of presenting the token. Each request
/// gets one API-shaped answer within its bound; none is a 500; afterwards the model's
/// breaker is still closed (no client input counted against it) and a plain call is served.
#[test]
fn any_client_request_gets_one_api_shaped_answer_and_trips_nothing() {
    let rt = runtime();
    let (sim, gw) = rt.block_on(async {
        let sim = sim(ONE_MODEL_SIM).await;
        let gw = Gw::start(&config(
            &sim.base_url(),
            &format!(
                "[[models]]\nname = \"m\"\n{}",
                gateway_section("idempotency_ttl = \"1m\"\nmax_body_bytes = 4096")
            ),
        ))
        .await;
        (sim, gw)
    });
    let client = client();
    let strategy = (
        body(),
        headers(),
        auth(),
        prop::sample::select(vec!["/v1/messages", "/v1/messages/count_tokens"]),
    );
    let statuses = Mutex::new(std::collections::BTreeMap::new());
    runner(256)
        .run(&strategy, |(body, headers, auth, path)| {
            rt.block_on(async {
                let mut req = client
                    .post(format!("{}{path}", gw.url))
                    .header("content-type", "application/json");
                let mut sent = body.len();
                for (name, value) in &headers {
                    // What a client can put on the wire (no line breaks, no NUL).
                    let Ok(v) = HeaderValue::from_bytes(value) else {
                        continue;
                    };
                    sent += value.len();
                    req = req.header(*name, v);
                }
                req = match auth {
                    Auth::Key => req.header("x-api-key", TOKEN),
                    Auth::Bearer => req.bearer_auth(TOKEN),
                    Auth::Both => req.header("x-api-key", TOKEN).bearer_auth(TOKEN),
                    Auth::Conflicting => req.header("x-api-key", TOKEN).bearer_auth(TOKEN_B),
                    Auth::Wrong => req.header("x-api-key", TOKEN_B),
                    Auth::None => req,
                };
                let started = Instant::now();
                let resp = req
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| TestCaseError::fail(format!("no answer: {e}")))?;
                let status = check_answer(resp, sent, None).await?;
                prop_assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "answered in {:?}",
                    started.elapsed()
                );
                if matches!(auth, Auth::Wrong | Auth::None | Auth::Conflicting) {
                    prop_assert_eq!(status, 401);
                }
                *statuses.lock().unwrap().entry(status).or_insert(0u32) += 1;
                Ok(())
            })
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let statuses = statuses.into_inner().unwrap();
    eprintln!("gateway statuses over the run: {statuses:?}");
    rt.block_on(async {
        // The run reached both the happy path and the refusals.
        assert!(statuses.contains_key(&200), "{statuses:?}");
        assert!(statuses.contains_key(&400), "{statuses:?}");
        assert!(statuses.contains_key(&401), "{statuses:?}");
        let status = gw.gateway.seawall().breaker_status("m").await.unwrap();
        assert_eq!(status.state, StateKind::Closed, "{statuses:?}");
        let ok = post(
            &gw,
            "/v1/messages",
            Some(TOKEN),
            &support::gateway::body("m"),
        )
        .await;
        assert_eq!(ok.status(), 200);
        assert!(!sim.log().is_empty());
    });
}

/// What the fake upstream answers next: status, headers, body.
type Answer = (u16, Vec<(String, String)>, Vec<u8>);

/// An upstream whose every answer is the one set last; `hits` counts the requests it saw.
async fn scripted_upstream(answer: Arc<Mutex<Answer>>, hits: Arc<AtomicUsize>) -> String {
    let handler = move || {
        let answer = Arc::clone(&answer);
        let hits = Arc::clone(&hits);
        async move {
            hits.fetch_add(1, Ordering::SeqCst);
            let (status, headers, body) = answer.lock().unwrap().clone();
            let mut map = HeaderMap::new();
            for (n, v) in headers {
                if let (Ok(n), Ok(v)) = (
                    axum::http::HeaderName::from_bytes(n.as_bytes()),
                    HeaderValue::from_str(&v),
                ) {
                    map.append(n, v);
                }
            }
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::IM_A_TEAPOT);
            (status, map, body)
        }
    };
    let app = axum::Router::new()
        .route("/v1/messages", axum::routing::post(handler.clone()))
        .route("/v1/messages/count_tokens", axum::routing::post(handler));
    let addr = serve_app(app).await;
    format!("http://{addr}")
}

fn upstream_answer() -> impl Strategy<Value = Answer> {
    let status = prop_oneof![
        2 => Just(200u16),
        1 => prop::sample::select(vec![400u16, 401, 403, 404, 408, 409, 413, 422, 429, 431,
            500, 502, 503, 504, 529]),
        1 => 100u16..600,
    ];
    let header = (
        prop::sample::select(vec![
            "retry-after",
            "retry-after-ms",
            "x-should-retry",
            "request-id",
            "content-type",
            "anthropic-ratelimit-requests-remaining",
            "anthropic-ratelimit-requests-limit",
            "anthropic-ratelimit-input-tokens-remaining",
            "anthropic-ratelimit-output-tokens-limit",
        ]),
        prop_oneof![
            prop::sample::select(vec![
                "0",
                "1",
                "0.01",
                "-5",
                "1e300",
                "NaN",
                "86400",
                "true",
                "false",
                "Wed, 21 Oct 2015 07:28:00 GMT",
                "text/event-stream",
                "application/json",
                "18446744073709551616",
                "",
            ])
            .prop_map(str::to_owned),
            "[ -~]{0,20}",
        ],
    )
        .prop_map(|(n, v)| (n.to_owned(), v));
    let body = prop_oneof![
        Just(br#"{"id":"msg_1","type":"message","role":"assistant","model":"m","content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":3,"output_tokens":1}}"#.to_vec()),
        (
            prop::sample::select(vec!["overloaded_error", "rate_limit_error",
                "invalid_request_error", "api_error", "x"]),
            prop::option::of(prop::sample::select(vec!["contract_spend_limit_reached",
                "ramp_limit_exceeded", "x"])),
        )
            .prop_map(|(t, code)| {
                let mut e = json!({"type": t, "message": "m"});
                if let Some(c) = code {
                    e["details"] = json!({"error_code": c});
                }
                serde_json::to_vec(&json!({"type": "error", "error": e})).expect("json")
            }),
        Just(b"event: message_start\ndata: {\"type\":\"message_start\"}\n\n".to_vec()),
        json_value(2, 12, 3).prop_map(|v| serde_json::to_vec(&v).expect("json")),
        prop::collection::vec(any::<u8>(), 0..64),
    ];
    (status, prop::collection::vec(header, 0..4), body)
}

/// Upstreams: any status, headers and body, for unary calls and streams. The gateway answers
/// every call once, within its deadline and a margin (a `retry-after` of a day or an absurd
/// one never holds a call), never with a 500, and a permanent 4xx the upstream chose comes
/// back with its status.
#[test]
fn any_upstream_answer_reaches_the_client_as_one_api_shaped_answer() {
    let rt = runtime();
    let answer: Arc<Mutex<Answer>> = Arc::new(Mutex::new((200, Vec::new(), Vec::new())));
    let hits = Arc::new(AtomicUsize::new(0));
    let url = rt.block_on(scripted_upstream(Arc::clone(&answer), Arc::clone(&hits)));
    let toml = format!(
        r#"
listen = "127.0.0.1:0"

[[upstreams]]
name = "fuzz"
base_url = "{url}"
api_key_env = "SIM_KEY"
connect_timeout = "500ms"

[retry]
deadline = "400ms"
attempt_timeout = "200ms"
min_attempt = "20ms"

[retry.backoff]
base = "5ms"
cap = "20ms"

[[models]]
name = "m"

{}
"#,
        gateway_section("")
    );
    let client = client();
    runner(128)
        .run(&upstream_answer(), |up| {
            let status = up.0;
            // The server's explicit word may make any status retryable.
            let forced = up.1.iter().any(|(n, _)| n == "x-should-retry");
            let upstream_body = up.2.clone();
            *answer.lock().unwrap() = up;
            rt.block_on(async {
                // A fresh gateway per case: no breaker opened, no key quarantined by an
                // earlier case.
                let mut gw = Gw::start(&toml).await;
                for stream in [false, true] {
                    let mut body = support::gateway::body("m");
                    body["stream"] = json!(stream);
                    let started = Instant::now();
                    let before = hits.load(Ordering::SeqCst);
                    let resp = client
                        .post(format!("{}/v1/messages", gw.url))
                        .header("x-api-key", TOKEN)
                        .json(&body)
                        .send()
                        .await
                        .map_err(|e| TestCaseError::fail(format!("no answer: {e}")))?;
                    let got = check_answer(resp, 4096, Some(&upstream_body)).await?;
                    prop_assert!(
                        started.elapsed() < Duration::from_secs(3),
                        "answered in {:?}",
                        started.elapsed()
                    );
                    // (The second call may be answered by what the first taught the gateway:
                    // an open breaker, a quarantined key.)
                    let reached = hits.load(Ordering::SeqCst) > before;
                    if reached && !forced && matches!(status, 400 | 413 | 422 | 431) {
                        prop_assert_eq!(got, status, "a request-scoped error passes through");
                    }
                    prop_assert!(
                        reached || stream,
                        "the first call never reached the upstream"
                    );
                }
                gw.shutdown().await;
                Ok(())
            })
        })
        .unwrap_or_else(|e| panic!("{e}"));
    // Every case's first call reached the upstream (checked in each case).
    assert!(hits.load(Ordering::SeqCst) >= 128);
    eprintln!(
        "upstream requests over the run: {}",
        hits.load(Ordering::SeqCst)
    );
}
