//! `AnthropicUpstream::send_stream` over real loopback HTTP: the simulator for the API's
//! streams and faults, raw sockets where the server has to misbehave in one precise way (reset
//! mid-stream, stall, an endless line) or where the exact request bytes are wanted.
//! Real time, millisecond settings; tests wait on events, never on sleeps.

mod support;

use support::raw::{find, raw_server, read_request};

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::sim::{anthropic, sim};
use support::{eventually, init_logs, logs};

use bytes::Bytes;
use seawall::core::upstream::{
    Attempt, SseEvent, StreamBody, StreamResponse, TransportError, Upstream,
};
use seawall::sim::{LogEntry, SimHandle};
use seawall::AnthropicUpstream;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

const KEY: &str = "sk-ant-api03-STREAMSECRETSTREAMSECRET-aaaa";
const MODEL: &str = "claude-stream-1";
/// Well inside what loopback needs, far below anything that would slow the suite.
const BUDGET: Duration = Duration::from_secs(5);

type Events = mpsc::Receiver<Result<SseEvent, TransportError>>;

// ---------------------------------------------------------------------------------------------
// helpers

fn upstream(addr: SocketAddr) -> AnthropicUpstream {
    anthropic(format!("http://{addr}"), &[KEY])
}

/// A one-model simulator with five-token answers and `model_extra` TOML for the model.
async fn start(model_extra: &str) -> SimHandle {
    start_with(5, model_extra).await
}

async fn start_with(output_tokens: u32, model_extra: &str) -> SimHandle {
    let toml =
        format!("[[models]]\nname = \"{MODEL}\"\noutput_tokens = {output_tokens}\n{model_extra}\n");
    sim(&toml).await
}

/// A streaming body (`"stream": true`, as the core writes it).
fn stream_body() -> Bytes {
    Bytes::from(
        json!({"model": MODEL, "max_tokens": 100_000, "stream": true,
               "messages": [{"role": "user", "content": "hello there"}]})
        .to_string(),
    )
}

fn attempt(body: Bytes, timeout: Duration) -> Attempt {
    init_logs();
    support::sim::attempt(MODEL, body, timeout)
}

fn events_of(resp: StreamResponse) -> Events {
    match resp.body {
        StreamBody::Events(rx) => rx,
        StreamBody::Complete(body) => panic!(
            "expected events, got a complete body: {}",
            String::from_utf8_lossy(&body)
        ),
    }
}

/// Every item until the channel closes (bounded, so a reader that never ends fails the test).
async fn drain(rx: &mut Events) -> Vec<Result<SseEvent, TransportError>> {
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(BUDGET, rx.recv()).await {
            Ok(Some(item)) => out.push(item),
            Ok(None) => return out,
            Err(_) => panic!("the stream did not end; so far: {out:?}"),
        }
    }
}

fn names(events: &[SseEvent]) -> Vec<&str> {
    events.iter().map(|e| e.event.as_str()).collect()
}

fn data(event: &SseEvent) -> Value {
    serde_json::from_str(&event.data)
        .unwrap_or_else(|e| panic!("{} data is not JSON ({e}): {}", event.event, event.data))
}

fn last(sim: &SimHandle) -> LogEntry {
    sim.log().pop().expect("the simulator logged the request")
}

/// A chunked `text/event-stream` response head.
const SSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
transfer-encoding: chunked\r\nrequest-id: req_raw\r\n\r\n";

/// `data` as one HTTP chunk.
fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

fn ping(i: usize) -> Vec<u8> {
    chunk(format!("event: ping\ndata: {{\"type\":\"ping\",\"i\":{i}}}\n\n").as_bytes())
}

/// Wait until the client closes its end of `stream` (EOF or an error on read).
async fn closed_by_client(stream: &mut TcpStream) {
    let mut scratch = [0u8; 1024];
    while let Ok(n) = stream.read(&mut scratch).await {
        if n == 0 {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// the simulator

#[tokio::test]
async fn a_healthy_stream_returns_at_the_head_and_delivers_every_event_in_order() {
    let sim = start("time_to_first_token = \"100ms\"\ndelta_interval = \"20ms\"").await;
    let up = upstream(sim.addr());

    let started = Instant::now();
    let resp = up
        .send_stream(attempt(stream_body(), BUDGET))
        .await
        .unwrap();
    let head_at = started.elapsed();
    assert_eq!(resp.status, 200);
    assert!(resp
        .headers
        .get("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let request_id = resp.headers.get("request-id").unwrap().to_owned();
    assert!(head_at >= Duration::from_millis(100), "{head_at:?}");
    let mut rx = events_of(resp);
    let items = drain(&mut rx).await;
    let done_at = started.elapsed();
    // The five deltas come 20 ms apart after the head: send_stream did not wait for them.
    assert!(
        done_at - head_at >= Duration::from_millis(60),
        "head at {head_at:?}, end at {done_at:?}: the head waited for the body"
    );

    let events: Vec<SseEvent> = items.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        names(&events),
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
    for event in &events {
        assert_eq!(data(event)["type"], event.event.as_str());
    }
    assert_eq!(data(&events[0])["message"]["model"], MODEL);
    let text: String = events[3..8]
        .iter()
        .map(|e| data(e)["delta"]["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(text.split(' ').count(), 5, "{text}");
    let delta = data(&events[9]);
    assert_eq!(delta["usage"]["output_tokens"], 5);
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");

    let entry = last(&sim);
    assert!(entry.stream);
    assert_eq!(entry.outcome, "ok");
    assert_eq!(entry.request_id.as_deref(), Some(request_id.as_str()));
    sim.shutdown().await;
}

#[tokio::test]
async fn a_mid_stream_error_comes_as_an_error_event_then_the_channel_closes() {
    let sim = start(
        "delta_interval = \"2ms\"\n[[models.faults]]\nkind = \"mid_stream_error\"\nafter_deltas = 3",
    )
    .await;
    let resp = upstream(sim.addr())
        .send_stream(attempt(stream_body(), BUDGET))
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    let mut rx = events_of(resp);
    let events: Vec<SseEvent> = drain(&mut rx)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        names(&events),
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
    let error = data(&events[6]);
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["type"], "overloaded_error");
    assert!(rx.recv().await.is_none(), "closed for good");
    sim.shutdown().await;
}

#[tokio::test]
async fn an_error_status_comes_back_complete_with_its_body_and_headers() {
    let sim = start("[[models.faults]]\nkind = \"status\"\nstatus = 529\nretry_after = 2").await;
    let resp = upstream(sim.addr())
        .send_stream(attempt(stream_body(), BUDGET))
        .await
        .unwrap();
    assert_eq!(resp.status, 529);
    assert_eq!(resp.headers.get("retry-after"), Some("2"));
    assert_eq!(
        resp.headers.get("content-type"),
        Some("application/json"),
        "{:?}",
        resp.headers
    );
    let rid = resp.headers.get("request-id").unwrap().to_owned();
    assert!(resp
        .headers
        .iter()
        .all(|(n, _)| n == n.to_ascii_lowercase()));
    let StreamBody::Complete(body) = resp.body else {
        panic!("a 529 must come back complete");
    };
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "overloaded_error");
    assert_eq!(body["request_id"], rid.as_str());
    sim.shutdown().await;
}

#[tokio::test]
async fn a_2xx_that_is_not_an_event_stream_comes_back_complete() {
    let sim = start("").await;
    // No `"stream": true`: the simulator answers one JSON message.
    let body = Bytes::from(
        json!({"model": MODEL, "max_tokens": 16,
               "messages": [{"role": "user", "content": "hi"}]})
        .to_string(),
    );
    let resp = upstream(sim.addr())
        .send_stream(attempt(body, BUDGET))
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    let StreamBody::Complete(body) = resp.body else {
        panic!("JSON must come back complete");
    };
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["type"], "message");
    sim.shutdown().await;
}

#[tokio::test]
async fn a_truncated_stream_ends_with_truncated() {
    let sim = start("[[models.faults]]\nkind = \"truncated\"").await;
    let resp = upstream(sim.addr())
        .send_stream(attempt(stream_body(), BUDGET))
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    let mut rx = events_of(resp);
    let mut items = drain(&mut rx).await;
    let end = items.pop().expect("at least the error");
    assert!(matches!(end, Err(TransportError::Truncated(_))), "{end:?}");
    let events: Vec<SseEvent> = items.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        names(&events).first(),
        Some(&"message_start"),
        "the half that came is delivered: {events:?}"
    );
    assert!(!names(&events).contains(&"message_stop"));
    sim.shutdown().await;
}

#[tokio::test]
async fn a_hang_before_the_head_times_out_at_the_attempt_budget() {
    let sim = start("[[models.faults]]\nkind = \"hang\"").await;
    let budget = Duration::from_millis(300);
    let started = Instant::now();
    let err = upstream(sim.addr())
        .send_stream(attempt(stream_body(), budget))
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(err, TransportError::Timeout(budget));
    assert!(elapsed >= budget, "fired early: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(2), "fired late: {elapsed:?}");
    assert_eq!(last(&sim).outcome, "hang");
    sim.shutdown().await;
}

#[tokio::test]
async fn a_slow_stream_is_not_cut_by_the_head_budget() {
    // The budget covers the head only: a stream that runs longer than it is not cut.
    let sim = start("delta_interval = \"60ms\"").await;
    let budget = Duration::from_millis(150);
    let resp = upstream(sim.addr())
        .send_stream(attempt(stream_body(), budget))
        .await
        .unwrap();
    let mut rx = events_of(resp);
    let started = Instant::now();
    let items = drain(&mut rx).await;
    assert!(started.elapsed() > budget);
    let events: Vec<SseEvent> = items.into_iter().map(Result::unwrap).collect();
    assert_eq!(names(&events).last(), Some(&"message_stop"));
    sim.shutdown().await;
}

#[tokio::test]
async fn a_dropped_receiver_stops_a_stream_the_simulator_is_still_sending() {
    let sim = start_with(10_000, "delta_interval = \"5ms\"").await;
    let up = upstream(sim.addr());
    let resp = up
        .send_stream(attempt(stream_body(), BUDGET))
        .await
        .unwrap();
    let mut rx = events_of(resp);
    for _ in 0..5 {
        rx.recv().await.unwrap().unwrap();
    }
    drop(rx);
    // The simulator is unharmed and the upstream still works for the next call.
    let resp = up
        .send_stream(attempt(stream_body(), BUDGET))
        .await
        .unwrap();
    let mut rx = events_of(resp);
    assert_eq!(rx.recv().await.unwrap().unwrap().event, "message_start");
    drop(rx);
    assert_eq!(sim.log().len(), 2);
    sim.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// raw sockets

#[tokio::test]
async fn the_request_carries_the_headers_and_the_exact_body_bytes() {
    // Unusual spacing, key order and an unknown field: must arrive exactly like this.
    const BODY: &str = r#"{"model":"claude-stream-1",  "stream":true,"max_tokens":16,"messages":[{"role":"user","content":"hi"}],"future_field":{"x":1}}"#;
    let (got, seen) = oneshot::channel();
    let addr = raw_server(|mut stream| async move {
        let req = read_request(&mut stream).await.unwrap();
        let _ = got.send(req);
        let mut out = SSE_HEAD.to_vec();
        out.extend(chunk(
            b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        ));
        out.extend_from_slice(b"0\r\n\r\n");
        stream.write_all(&out).await.unwrap();
        closed_by_client(&mut stream).await;
    })
    .await;

    let mut a = attempt(Bytes::from_static(BODY.as_bytes()), BUDGET);
    a.retry_count = 2;
    a.idempotency_key = Some("idem-7".into());
    let resp = upstream(addr).send_stream(a).await.unwrap();
    assert_eq!(resp.headers.get("request-id"), Some("req_raw"));
    let mut rx = events_of(resp);
    let items = drain(&mut rx).await;
    assert_eq!(
        items,
        vec![Ok(SseEvent::new(
            "message_stop",
            "{\"type\":\"message_stop\"}"
        ))]
    );

    let req = seen.await.unwrap();
    let end = find(&req, b"\r\n\r\n").unwrap();
    assert_eq!(&req[end + 4..], BODY.as_bytes(), "body byte for byte");
    let head = String::from_utf8(req[..end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    assert_eq!(lines.next(), Some("POST /v1/messages HTTP/1.1"));
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get("content-type"), Some("application/json"));
    assert_eq!(get("anthropic-version"), Some("2023-06-01"));
    assert_eq!(get("x-api-key"), Some(KEY));
    assert_eq!(get("authorization"), None);
    assert_eq!(get("x-stainless-retry-count"), Some("2"));
    assert_eq!(get("idempotency-key"), Some("idem-7"));
    assert_eq!(get("content-length"), Some(BODY.len().to_string().as_str()));
}

#[tokio::test]
async fn a_dropped_receiver_closes_the_connection_while_the_server_stalls() {
    let (closed_tx, closed) = oneshot::channel();
    let addr = raw_server(|mut stream| async move {
        read_request(&mut stream).await.unwrap();
        let mut out = SSE_HEAD.to_vec();
        out.extend(ping(0));
        out.extend(ping(1));
        stream.write_all(&out).await.unwrap();
        // Then nothing: the reader is waiting for a chunk that never comes.
        closed_by_client(&mut stream).await;
        let _ = closed_tx.send(());
    })
    .await;
    let resp = upstream(addr)
        .send_stream(attempt(stream_body(), BUDGET))
        .await
        .unwrap();
    let mut rx = events_of(resp);
    rx.recv().await.unwrap().unwrap();
    rx.recv().await.unwrap().unwrap();
    drop(rx);
    tokio::time::timeout(BUDGET, closed)
        .await
        .expect("the reader must close the connection once the receiver is gone")
        .unwrap();
}

#[tokio::test]
async fn a_dropped_receiver_stops_a_reader_blocked_on_a_full_channel() {
    let (closed_tx, closed) = oneshot::channel();
    let addr = raw_server(|mut stream| async move {
        read_request(&mut stream).await.unwrap();
        // Far more than the channel holds, and then stall.
        let mut out = SSE_HEAD.to_vec();
        for i in 0..500 {
            out.extend(ping(i));
        }
        stream.write_all(&out).await.unwrap();
        closed_by_client(&mut stream).await;
        let _ = closed_tx.send(());
    })
    .await;
    let resp = upstream(addr)
        .send_stream(attempt(stream_body(), BUDGET))
        .await
        .unwrap();
    let rx = events_of(resp);
    // Wait until the reader filled the channel (and is blocked sending), then walk away.
    eventually("the channel fills", BUDGET, || async { rx.capacity() == 0 }).await;
    drop(rx);
    tokio::time::timeout(BUDGET, closed)
        .await
        .expect("the reader must stop once the receiver is gone")
        .unwrap();
}

#[tokio::test]
async fn a_reset_mid_stream_ends_with_reset() {
    let (delivered_tx, delivered) = oneshot::channel::<()>();
    let addr = raw_server(|mut stream| async move {
        read_request(&mut stream).await.unwrap();
        let mut out = SSE_HEAD.to_vec();
        out.extend(ping(0));
        out.extend(ping(1));
        stream.write_all(&out).await.unwrap();
        // Reset only once the client has the events, so none are lost in the kernel.
        let _ = delivered.await;
        stream.set_zero_linger().unwrap();
        // Drop with SO_LINGER 0: the kernel sends RST instead of FIN.
    })
    .await;
    let resp = upstream(addr)
        .send_stream(attempt(stream_body(), BUDGET))
        .await
        .unwrap();
    let mut rx = events_of(resp);
    assert_eq!(rx.recv().await.unwrap().unwrap().event, "ping");
    assert_eq!(rx.recv().await.unwrap().unwrap().event, "ping");
    delivered_tx.send(()).unwrap();
    let items = drain(&mut rx).await;
    assert!(
        matches!(items.as_slice(), [Err(TransportError::Reset(_))]),
        "{items:?}"
    );
}

#[tokio::test]
async fn a_body_that_ends_inside_an_event_is_truncated() {
    let addr = raw_server(|mut stream| async move {
        read_request(&mut stream).await.unwrap();
        let mut out = SSE_HEAD.to_vec();
        out.extend(ping(0));
        // A complete HTTP body whose last event has no blank line after it.
        out.extend(chunk(
            b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n",
        ));
        out.extend_from_slice(b"0\r\n\r\n");
        stream.write_all(&out).await.unwrap();
        closed_by_client(&mut stream).await;
    })
    .await;
    let resp = upstream(addr)
        .send_stream(attempt(stream_body(), BUDGET))
        .await
        .unwrap();
    let mut rx = events_of(resp);
    let items = drain(&mut rx).await;
    assert_eq!(items.len(), 2, "{items:?}");
    assert_eq!(items[0].as_ref().unwrap().event, "ping");
    assert_eq!(
        items[1],
        Err(TransportError::Truncated(
            "the stream ended inside an event".into()
        ))
    );
}

#[tokio::test]
async fn an_endless_line_is_truncated_without_reading_on() {
    let addr = raw_server(|mut stream| async move {
        read_request(&mut stream).await.unwrap();
        let mut out = SSE_HEAD.to_vec();
        out.extend(ping(0));
        stream.write_all(&out).await.unwrap();
        let mut line = b"data: ".to_vec();
        line.resize(64 * 1024, b'x');
        // 2 MiB of one line; the client gives up after 1 MiB and closes.
        for _ in 0..32 {
            if stream.write_all(&chunk(&line)).await.is_err() {
                return;
            }
        }
        closed_by_client(&mut stream).await;
    })
    .await;
    let resp = upstream(addr)
        .send_stream(attempt(stream_body(), BUDGET))
        .await
        .unwrap();
    let mut rx = events_of(resp);
    let items = drain(&mut rx).await;
    assert_eq!(items.len(), 2, "{items:?}");
    assert_eq!(items[0].as_ref().unwrap().event, "ping");
    assert_eq!(
        items[1],
        Err(TransportError::Truncated("event line too long".into()))
    );
}

#[tokio::test]
async fn an_event_stream_content_type_with_parameters_is_a_stream_and_others_are_not() {
    for (content_type, streams) in [
        ("Text/Event-Stream; charset=utf-8", true),
        ("text/event-stream", true),
        ("text/plain", false),
    ] {
        let addr = raw_server(move |mut stream| async move {
            read_request(&mut stream).await.unwrap();
            let body = b"event: ping\ndata: {}\n\n";
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).await.unwrap();
            stream.write_all(body).await.unwrap();
            closed_by_client(&mut stream).await;
        })
        .await;
        let resp = upstream(addr)
            .send_stream(attempt(stream_body(), BUDGET))
            .await
            .unwrap();
        match resp.body {
            StreamBody::Events(mut rx) => {
                assert!(streams, "{content_type}");
                let items = drain(&mut rx).await;
                assert_eq!(items, vec![Ok(SseEvent::new("ping", "{}"))]);
            }
            StreamBody::Complete(body) => {
                assert!(!streams, "{content_type}");
                assert_eq!(&body[..], b"event: ping\ndata: {}\n\n");
            }
        }
    }
}

#[tokio::test]
async fn connection_refused_is_connect() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let err = upstream(addr)
        .send_stream(attempt(stream_body(), BUDGET))
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Connect(_)), "{err:?}");
    assert!(!err.to_string().contains("STREAMSECRET"));
}

// ---------------------------------------------------------------------------------------------
// logs

/// One line at the head (model, key tail, status, request-id) and one at the end (events, how
/// it ended); no key anywhere in this binary's logs.
#[tokio::test]
async fn the_head_and_the_end_are_logged_with_the_tail_never_the_key() {
    let sim = start("").await;
    let resp = upstream(sim.addr())
        .send_stream(attempt(stream_body(), BUDGET))
        .await
        .unwrap();
    let rid = resp.headers.get("request-id").unwrap().to_owned();
    let mut rx = events_of(resp);
    let n = drain(&mut rx).await.len();
    // The end line is written after the channel closed; wait for it (bounded).
    let end_line = eventually("the end line is logged", BUDGET, || async {
        let text = logs();
        text.lines()
            .find(|l| l.contains("anthropic stream ended") && l.contains(&rid))
            .map(str::to_owned)
            .ok_or_else(|| format!("no end line in:\n{text}"))
    })
    .await;
    for part in [
        format!("events={n}"),
        "end of body".to_owned(),
        "…aaaa".to_owned(),
    ] {
        assert!(end_line.contains(&part), "{part} missing from: {end_line}");
    }
    let text = logs();
    let head_line = text
        .lines()
        .find(|l| l.contains("anthropic stream answered") && l.contains(&rid))
        .unwrap_or_else(|| panic!("no head line in:\n{text}"));
    for part in [MODEL, "…aaaa", "status=200", "streaming=true"] {
        assert!(head_line.contains(part), "{part} missing from: {head_line}");
    }
    assert!(!text.contains(KEY) && !text.contains("STREAMSECRET"));
    sim.shutdown().await;
}
