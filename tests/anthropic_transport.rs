//! `AnthropicUpstream` over real loopback HTTP: axum servers where a well-behaved server will do,
//! raw sockets where the server has to misbehave (hang, cut the body short, close, reset).
//! Real time, millisecond budgets, no internet.

mod support;

use support::raw::{find, raw_server, read_request};

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::http::serve_app;
use support::sim::anthropic_options;
use support::{init_logs, logs};

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use seawall::core::upstream::{Attempt, TransportError, Upstream, UpstreamResponse};
use seawall::transport::anthropic::TransportSetupError;
use seawall::{AnthropicOptions, AnthropicUpstream, ApiKey, AuthStyle};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

const KEY0: &str = "sk-ant-api03-FIRSTSECRETFIRSTSECRET-aaaa";
const KEY1: &str = "sk-ant-api03-OTHERSECRETOTHERSECRET-bbbb";
/// Unusual spacing, key order and an unknown field: must arrive exactly like this.
const BODY: &str = r#"{"model":"claude-test-1",  "max_tokens":16,"messages":[{"role":"user","content":"hi"}],"future_field":{"x":1}}"#;
const OK_BODY: &str = r#"{"id":"msg_01","type":"message","role":"assistant","model":"claude-test-1","content":[{"type":"text","text":"hello"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":3,"output_tokens":1}}"#;

// ---------------------------------------------------------------------------------------------
// helpers

fn keys() -> Vec<ApiKey> {
    support::sim::keys(&[KEY0, KEY1])
}

fn options(addr: SocketAddr) -> AnthropicOptions {
    anthropic_options(format!("http://{addr}"))
}

fn upstream(addr: SocketAddr) -> AnthropicUpstream {
    AnthropicUpstream::new(keys(), options(addr)).unwrap()
}

fn attempt(timeout: Duration) -> Attempt {
    init_logs();
    support::sim::attempt(
        "claude-test-1",
        Bytes::from_static(BODY.as_bytes()),
        timeout,
    )
}

/// Well inside what loopback needs, far below anything that would slow the suite.
const BUDGET: Duration = Duration::from_secs(5);

/// What the capture server saw of one request.
#[derive(Debug)]
struct Seen {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

/// What the capture server answers.
#[derive(Clone)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, HeaderValue)>,
    body: &'static str,
}

impl Reply {
    fn ok() -> Self {
        Self {
            status: 200,
            headers: vec![
                ("content-type", HeaderValue::from_static("application/json")),
                ("request-id", HeaderValue::from_static("req_011CTest")),
            ],
            body: OK_BODY,
        }
    }

    fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.push((name, HeaderValue::from_static(value)));
        self
    }
}

/// An axum server on 127.0.0.1:0 that answers every request with `reply` and reports what it
/// saw on the returned channel.
async fn capture_server(reply: Reply) -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handler = move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
        let tx = tx.clone();
        let reply = reply.clone();
        async move {
            let _ = tx.send(Seen {
                method,
                path: uri.path().to_owned(),
                headers,
                body,
            });
            let mut resp = Response::new(axum::body::Body::from(reply.body));
            *resp.status_mut() = StatusCode::from_u16(reply.status).unwrap();
            for (name, value) in reply.headers {
                resp.headers_mut().append(name, value);
            }
            resp
        }
    };
    let app = axum::Router::new().fallback(handler);
    let addr = serve_app(app).await;
    (addr, rx)
}

fn header<'a>(seen: &'a Seen, name: &str) -> Option<&'a str> {
    seen.headers.get(name).map(|v| v.to_str().unwrap())
}

fn assert_no_key(text: &str) {
    for secret in [KEY0, KEY1, "FIRSTSECRET", "OTHERSECRET"] {
        assert!(!text.contains(secret), "a key leaked into: {text}");
    }
}

// ---------------------------------------------------------------------------------------------
// the happy path

#[tokio::test]
async fn success_sends_exact_body_and_headers_and_returns_everything() {
    let reply = Reply::ok()
        .header("anthropic-ratelimit-requests-limit", "50")
        .header("anthropic-ratelimit-requests-remaining", "49")
        .header("anthropic-ratelimit-tokens-reset", "2026-11-20T10:00:00Z");
    let (addr, mut seen) = capture_server(reply).await;
    let up = upstream(addr);

    let mut a = attempt(BUDGET);
    a.retry_count = 3;
    a.idempotency_key = Some("idem-42".into());
    let resp = up.send(a).await.unwrap();

    let req = seen.recv().await.unwrap();
    assert_eq!(req.method, Method::POST);
    assert_eq!(req.path, "/v1/messages");
    assert_eq!(
        &req.body[..],
        BODY.as_bytes(),
        "body must arrive byte for byte"
    );
    assert_eq!(header(&req, "content-type"), Some("application/json"));
    assert_eq!(header(&req, "anthropic-version"), Some("2023-06-01"));
    assert_eq!(header(&req, "anthropic-beta"), None);
    assert_eq!(header(&req, "x-api-key"), Some(KEY0));
    assert_eq!(header(&req, "authorization"), None);
    assert_eq!(header(&req, "x-stainless-retry-count"), Some("3"));
    assert_eq!(header(&req, "idempotency-key"), Some("idem-42"));

    assert_eq!(resp.status, 200);
    assert_eq!(&resp.body[..], OK_BODY.as_bytes());
    assert_eq!(resp.request_id(), Some("req_011CTest"));
    assert_eq!(resp.headers.get("content-type"), Some("application/json"));
    assert_eq!(
        resp.headers.get("anthropic-ratelimit-requests-limit"),
        Some("50")
    );
    assert_eq!(
        resp.headers.get("anthropic-ratelimit-requests-remaining"),
        Some("49")
    );
    assert_eq!(
        resp.headers.get("anthropic-ratelimit-tokens-reset"),
        Some("2026-11-20T10:00:00Z")
    );
    assert!(resp
        .headers
        .iter()
        .all(|(n, _)| n == n.to_ascii_lowercase()));
}

#[tokio::test]
async fn bearer_auth_beta_header_and_second_key_slot() {
    let (addr, mut seen) = capture_server(Reply::ok()).await;
    let up = AnthropicUpstream::new(
        keys(),
        AnthropicOptions {
            auth: AuthStyle::Bearer,
            version: "2026-10-21".into(),
            beta: Some("fallback-credit-2026-07-01,other-beta".into()),
            ..options(addr)
        },
    )
    .unwrap();

    let mut a = attempt(BUDGET);
    a.key = 1;
    let resp = up.send(a).await.unwrap();
    assert_eq!(resp.status, 200);

    let req = seen.recv().await.unwrap();
    assert_eq!(
        header(&req, "authorization"),
        Some(format!("Bearer {KEY1}").as_str())
    );
    assert_eq!(header(&req, "x-api-key"), None);
    assert_eq!(header(&req, "anthropic-version"), Some("2026-10-21"));
    assert_eq!(
        header(&req, "anthropic-beta"),
        Some("fallback-credit-2026-07-01,other-beta")
    );
    assert_eq!(header(&req, "x-stainless-retry-count"), Some("0"));
    assert_eq!(header(&req, "idempotency-key"), None);
    assert_eq!(&req.body[..], BODY.as_bytes());
}

#[tokio::test]
async fn base_url_trailing_slash_and_path_prefix() {
    let (addr, mut seen) = capture_server(Reply::ok()).await;
    for (base, path) in [
        (format!("http://{addr}/"), "/v1/messages"),
        (format!("http://{addr}/anthropic"), "/anthropic/v1/messages"),
        (
            format!("http://{addr}/anthropic/"),
            "/anthropic/v1/messages",
        ),
    ] {
        let up = AnthropicUpstream::new(
            keys(),
            AnthropicOptions {
                base_url: base.clone(),
                ..options(addr)
            },
        )
        .unwrap();
        assert_eq!(up.endpoint(), format!("http://{addr}{path}"));
        assert_eq!(up.send(attempt(BUDGET)).await.unwrap().status, 200);
        assert_eq!(seen.recv().await.unwrap().path, path, "base_url {base}");
    }
}

// ---------------------------------------------------------------------------------------------
// statuses pass through unclassified

#[tokio::test]
async fn error_statuses_come_back_as_responses_with_their_headers() {
    for (status, retry_after, body) in [
        (
            529,
            "3",
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"req_529"}"#,
        ),
        (
            429,
            "17",
            r#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"},"request_id":"req_429"}"#,
        ),
    ] {
        let reply = Reply {
            status,
            headers: vec![
                ("retry-after", HeaderValue::from_static(retry_after)),
                ("request-id", HeaderValue::from_static("req_err")),
                ("x-should-retry", HeaderValue::from_static("true")),
            ],
            body,
        };
        let (addr, mut seen) = capture_server(reply).await;
        let resp: UpstreamResponse = upstream(addr).send(attempt(BUDGET)).await.unwrap();
        assert_eq!(resp.status, status);
        assert_eq!(resp.headers.get("retry-after"), Some(retry_after));
        assert_eq!(resp.headers.get("x-should-retry"), Some("true"));
        assert_eq!(resp.request_id(), Some("req_err"));
        assert_eq!(&resp.body[..], body.as_bytes());
        assert!(seen.recv().await.is_some());
    }
}

#[tokio::test]
async fn redirects_are_returned_not_followed() {
    let reply = Reply {
        status: 307,
        headers: vec![(
            "location",
            HeaderValue::from_static("http://127.0.0.1:9/elsewhere"),
        )],
        body: "",
    };
    let (addr, mut seen) = capture_server(reply).await;
    let resp = upstream(addr).send(attempt(BUDGET)).await.unwrap();
    assert_eq!(resp.status, 307);
    assert_eq!(
        resp.headers.get("location"),
        Some("http://127.0.0.1:9/elsewhere")
    );
    assert_eq!(seen.recv().await.unwrap().path, "/v1/messages");
}

#[tokio::test]
async fn header_values_that_are_not_utf8_are_skipped_others_kept() {
    let reply = Reply {
        status: 200,
        headers: vec![
            ("x-binary", HeaderValue::from_bytes(b"\xff\xfe").unwrap()),
            (
                "x-cafe",
                HeaderValue::from_bytes("café".as_bytes()).unwrap(),
            ),
            ("x-multi", HeaderValue::from_static("one")),
            ("x-multi", HeaderValue::from_static("two")),
            ("request-id", HeaderValue::from_static("req_hdr")),
        ],
        body: OK_BODY,
    };
    let (addr, _seen) = capture_server(reply).await;
    let resp = upstream(addr).send(attempt(BUDGET)).await.unwrap();
    assert_eq!(resp.headers.get("x-binary"), None);
    assert_eq!(resp.headers.get("x-cafe"), Some("café"));
    let multi: Vec<_> = resp
        .headers
        .iter()
        .filter(|(n, _)| *n == "x-multi")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(multi, ["one", "two"]);
    assert_eq!(resp.request_id(), Some("req_hdr"));
}

// ---------------------------------------------------------------------------------------------
// no complete answer

#[tokio::test]
async fn connection_refused_is_connect() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);

    let err = upstream(addr).send(attempt(BUDGET)).await.unwrap_err();
    assert!(matches!(err, TransportError::Connect(_)), "{err:?}");
    assert_no_key(&err.to_string());
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_at_the_attempt_budget() {
    let (got_request, request_seen) = oneshot::channel();
    let addr = raw_server(|mut stream| async move {
        let req = read_request(&mut stream).await.unwrap();
        let _ = got_request.send(req);
        // Hold the connection open and never answer.
        std::future::pending::<()>().await;
    })
    .await;

    let budget = Duration::from_millis(200);
    let started = Instant::now();
    let err = upstream(addr).send(attempt(budget)).await.unwrap_err();
    let elapsed = started.elapsed();

    assert_eq!(err, TransportError::Timeout(budget));
    assert!(elapsed >= budget, "fired early: {elapsed:?}");
    assert!(
        elapsed < Duration::from_secs(2),
        "timeout did not fire: {elapsed:?}"
    );
    let req = request_seen.await.unwrap();
    assert!(
        find(&req, BODY.as_bytes()).is_some(),
        "the request was sent in full"
    );
}

#[tokio::test]
async fn a_body_that_stalls_times_out_at_the_attempt_budget() {
    let addr = raw_server(|mut stream| async move {
        read_request(&mut stream).await.unwrap();
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"id\":")
            .await
            .unwrap();
        std::future::pending::<()>().await;
    })
    .await;

    let budget = Duration::from_millis(200);
    let started = Instant::now();
    let err = upstream(addr).send(attempt(budget)).await.unwrap_err();
    let elapsed = started.elapsed();

    assert_eq!(err, TransportError::Timeout(budget));
    assert!(elapsed >= budget, "fired early: {elapsed:?}");
    assert!(
        elapsed < Duration::from_secs(2),
        "timeout did not fire: {elapsed:?}"
    );
}

#[tokio::test]
async fn a_body_shorter_than_its_content_length_is_truncated() {
    let addr = raw_server(|mut stream| async move {
        read_request(&mut stream).await.unwrap();
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\nrequest-id: req_cut\r\n\r\n0123456789")
            .await
            .unwrap();
        stream.shutdown().await.unwrap();
        // Dropping the stream closes it: a clean FIN after 10 of the promised 100 bytes.
    })
    .await;

    let err = upstream(addr).send(attempt(BUDGET)).await.unwrap_err();
    assert!(matches!(err, TransportError::Truncated(_)), "{err:?}");
    assert_no_key(&err.to_string());
}

#[tokio::test]
async fn a_reset_in_the_middle_of_the_body_is_truncated() {
    let addr = raw_server(|mut stream| async move {
        read_request(&mut stream).await.unwrap();
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
            .await
            .unwrap();
        stream.flush().await.unwrap();
        stream.set_zero_linger().unwrap();
        // Drop with SO_LINGER 0: the kernel sends RST instead of FIN.
    })
    .await;

    let err = upstream(addr).send(attempt(BUDGET)).await.unwrap_err();
    assert!(matches!(err, TransportError::Truncated(_)), "{err:?}");
}

/// hyper reports "connection closed before message completed" (an incomplete message) when the
/// server closes cleanly without answering; reqwest gives it as a request error, which is Reset.
#[tokio::test]
async fn a_server_that_closes_without_answering_is_reset() {
    let addr = raw_server(|mut stream| async move {
        read_request(&mut stream).await.unwrap();
        stream.shutdown().await.unwrap();
    })
    .await;

    let err = upstream(addr).send(attempt(BUDGET)).await.unwrap_err();
    let TransportError::Reset(msg) = &err else {
        panic!("expected Reset, got {err:?}");
    };
    assert!(msg.contains("closed"), "{msg}");
    assert_no_key(&err.to_string());
}

/// A TCP RST before any answer: hyper reports the io error (ECONNRESET), also Reset.
#[tokio::test]
async fn a_server_that_resets_without_answering_is_reset() {
    let addr = raw_server(|mut stream| async move {
        read_request(&mut stream).await.unwrap();
        stream.set_zero_linger().unwrap();
    })
    .await;

    let err = upstream(addr).send(attempt(BUDGET)).await.unwrap_err();
    assert!(matches!(err, TransportError::Reset(_)), "{err:?}");
}

/// Closing right after accept, before the request was read, races the client's write: the
/// client sees either EOF or a reset. Both are the same Reset.
#[tokio::test]
async fn a_server_that_hangs_up_on_accept_is_reset() {
    let addr = raw_server(|stream| async move { drop(stream) }).await;
    let err = upstream(addr).send(attempt(BUDGET)).await.unwrap_err();
    assert!(matches!(err, TransportError::Reset(_)), "{err:?}");
}

// ---------------------------------------------------------------------------------------------
// keys and setup

#[tokio::test]
async fn key_slot_out_of_range_is_invalid_and_nothing_is_sent() {
    let (addr, mut seen) = capture_server(Reply::ok()).await;
    let up = upstream(addr);
    let mut a = attempt(BUDGET);
    a.key = 2;
    let err = up.send(a).await.unwrap_err();
    let TransportError::Invalid(msg) = &err else {
        panic!("expected Invalid, got {err:?}");
    };
    assert!(msg.contains("key slot 2"), "{msg}");
    assert_no_key(msg);
    assert!(matches!(
        seen.try_recv(),
        Err(mpsc::error::TryRecvError::Empty)
    ));
}

#[tokio::test]
async fn an_idempotency_key_that_cannot_be_a_header_is_invalid() {
    let (addr, _seen) = capture_server(Reply::ok()).await;
    let mut a = attempt(BUDGET);
    a.idempotency_key = Some("line\nbreak".into());
    let err = upstream(addr).send(a).await.unwrap_err();
    assert!(matches!(err, TransportError::Invalid(_)), "{err:?}");
}

#[test]
fn labels_and_debug_show_tails_only() {
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let up = upstream(addr);
    assert_eq!(up.key_count(), 2);
    assert_eq!(up.key_label(0), "…aaaa");
    assert_eq!(up.key_label(1), "…bbbb");
    assert!(!up.key_label(7).contains("SECRET"));

    let debug = format!("{up:?}");
    assert_no_key(&debug);
    assert!(
        debug.contains("…aaaa") && debug.contains("…bbbb"),
        "{debug}"
    );
    assert_no_key(&format!("{up:#?}"));

    let bearer = AnthropicUpstream::new(
        keys(),
        AnthropicOptions {
            auth: AuthStyle::Bearer,
            ..options(addr)
        },
    )
    .unwrap();
    assert_no_key(&format!("{bearer:?}"));
}

#[test]
fn new_rejects_unusable_settings_naming_the_field() {
    let err = AnthropicUpstream::new(Vec::new(), AnthropicOptions::default()).unwrap_err();
    assert_eq!(err, TransportSetupError::NoKeys);
    assert!(err.to_string().contains("no API keys"), "{err}");

    for base in ["ftp://x", "not a url", "https://user:pw@api.anthropic.com"] {
        let err = AnthropicUpstream::new(
            keys(),
            AnthropicOptions {
                base_url: base.into(),
                ..AnthropicOptions::default()
            },
        )
        .unwrap_err();
        assert!(
            matches!(err, TransportSetupError::BaseUrl(_)),
            "{base}: {err:?}"
        );
        assert!(err.to_string().contains("base_url"), "{base}: {err}");
    }

    let err = AnthropicUpstream::new(
        keys(),
        AnthropicOptions {
            beta: Some("a\r\nx-evil: 1".into()),
            ..AnthropicOptions::default()
        },
    )
    .unwrap_err();
    assert_eq!(err, TransportSetupError::HeaderValue { field: "beta" });
    assert!(err.to_string().starts_with("beta "), "{err}");

    assert!(AnthropicUpstream::new(keys(), AnthropicOptions::default()).is_ok());
}

// ---------------------------------------------------------------------------------------------
// logs

/// The per-attempt debug line carries model, key tail, status and request-id, and no key; the
/// failure line likewise. The whole log of this test binary so far must hold no key either.
#[tokio::test]
async fn attempt_logs_show_the_tail_never_the_key() {
    let (addr, _seen) = capture_server(Reply::ok()).await;
    let up = upstream(addr);
    let mut good = attempt(BUDGET);
    good.model = "claude-log-probe-ok".into();
    up.send(good).await.unwrap();
    let mut bad = attempt(BUDGET);
    bad.model = "claude-log-probe-bad".into();
    bad.key = 1;
    bad.idempotency_key = Some("bad\nvalue".into());
    up.send(bad).await.unwrap_err();

    let text = logs();
    assert_no_key(&text);
    let answered = text
        .lines()
        .find(|l| l.contains("claude-log-probe-ok"))
        .unwrap_or_else(|| panic!("no line for the good attempt in:\n{text}"));
    for part in [
        "anthropic attempt answered",
        "…aaaa",
        "status=200",
        "req_011CTest",
    ] {
        assert!(answered.contains(part), "{part} missing from: {answered}");
    }
    let failed = text
        .lines()
        .find(|l| l.contains("claude-log-probe-bad"))
        .unwrap_or_else(|| panic!("no line for the bad attempt in:\n{text}"));
    assert!(failed.contains("anthropic attempt failed"), "{failed}");
    assert!(failed.contains("…bbbb"), "{failed}");
}

#[tokio::test]
async fn the_callers_version_and_betas_are_forwarded_after_the_configured_ones() {
    let (addr, mut seen) = capture_server(Reply::ok()).await;
    let up = AnthropicUpstream::new(
        vec![ApiKey::new("sk-ant-forward-000000000001").unwrap()],
        AnthropicOptions {
            base_url: format!("http://{addr}"),
            beta: Some("ours-1".into()),
            ..AnthropicOptions::default()
        },
    )
    .unwrap();
    let mut a = attempt(Duration::from_secs(2));
    a.forward = seawall::core::upstream::ForwardHeaders {
        version: Some("2026-10-21".into()),
        beta: Some("theirs-2, ours-1".into()),
    };
    up.send(a).await.unwrap();
    let req = seen.recv().await.unwrap();
    assert_eq!(req.headers["anthropic-version"], "2026-10-21");
    assert_eq!(req.headers["anthropic-beta"], "ours-1,theirs-2");
}
