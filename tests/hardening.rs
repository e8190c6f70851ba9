//! The gateway against a hostile client, over real loopback HTTP: tenants isolated, slow and
//! idle clients bounded, client input that can never trip shared state, headers that cannot
//! panic a handler, and a token-less gateway that web pages cannot use. Real time, millisecond
//! settings.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use seawall::core::StateKind;
use support::gateway::*;
use support::process::temp_dir;

fn messages(gw: &Gw, token: &str) -> reqwest::RequestBuilder {
    client()
        .post(format!("{}/v1/messages", gw.url))
        .header("x-api-key", token)
}

fn prompt(text: &str) -> Value {
    json!({
        "model": "m",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": text}],
    })
}

// ---------------------------------------------------------------------------------------------
// tenants

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_is_the_clients_own_and_names_one_request() {
    let sim = sim(ONE_MODEL_SIM).await;
    let gw = Gw::start(&config(
        &sim.base_url(),
        &format!(
            "[[models]]\nname = \"m\"\n[gateway]\ntokens = [\"{TOKEN}\", \"{TOKEN_B}\"]\n\
             idempotency_ttl = \"1m\"\n"
        ),
    ))
    .await;
    let a = messages(&gw, TOKEN)
        .header("idempotency-key", "k")
        .json(&prompt("tenant A's question"))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&a, "seawall-source").as_deref(), Some("live"));
    let a: Value = a.json().await.unwrap();

    // B picks the same key for another prompt: B's own live answer, never A's.
    let b = messages(&gw, TOKEN_B)
        .header("idempotency-key", "k")
        .json(&prompt("tenant B's question"))
        .send()
        .await
        .unwrap();
    assert_eq!(b.status(), 200);
    assert_eq!(header(&b, "seawall-source").as_deref(), Some("live"));
    let b: Value = b.json().await.unwrap();
    assert_ne!(a["id"], b["id"], "B was served A's answer");
    assert_eq!(sim.log().len(), 2);

    // A reuses its key with another request: refused, never replayed.
    let reused = messages(&gw, TOKEN)
        .header("idempotency-key", "k")
        .json(&prompt("a different question"))
        .send()
        .await
        .unwrap();
    let (v, _) = api_error(reused, 400, "invalid_request_error").await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("different request"),
        "{v}"
    );
    assert_eq!(sim.log().len(), 2, "nothing was sent for the refused call");

    // The same request again is A's replay.
    let again = messages(&gw, TOKEN)
        .header("idempotency-key", "k")
        .json(&prompt("tenant A's question"))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&again, "seawall-source").as_deref(), Some("replay"));
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], a["id"]);
    assert_eq!(sim.log().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_share_of_idempotency_keys_is_bounded() {
    let sim = sim(ONE_MODEL_SIM).await;
    let gw = Gw::start(&config(
        &sim.base_url(),
        &format!(
            "[[models]]\nname = \"m\"\n{}",
            gateway_section("idempotency_ttl = \"1m\"\nidempotency_max_per_client = 1")
        ),
    ))
    .await;
    let send = |key: &'static str| {
        messages(&gw, TOKEN)
            .header("idempotency-key", key)
            .json(&prompt(key))
            .send()
    };
    let source = |r: &reqwest::Response| header(r, "seawall-source");
    assert_eq!(source(&send("k1").await.unwrap()).as_deref(), Some("live"));
    assert_eq!(
        source(&send("k1").await.unwrap()).as_deref(),
        Some("replay")
    );
    // A second key pushes the first out of this client's single slot.
    assert_eq!(source(&send("k2").await.unwrap()).as_deref(), Some("live"));
    assert_eq!(source(&send("k1").await.unwrap()).as_deref(), Some("live"));
    assert_eq!(sim.log().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_job_is_read_only_by_the_client_that_queued_it() {
    let sim = sim(r#"
        [[models]]
        name = "m"
        [[models.faults]]
        kind = "status"
        status = 529
    "#)
    .await;
    let dir = temp_dir("hardening");
    let path = dir.join("jobs.redb");
    let gw = Gw::start(&config(
        &sim.base_url(),
        &format!(
            "[[models]]\nname = \"m\"\ndegrade = [\"queue\"]\n\
             [queue]\npath = {:?}\n\
             [gateway]\ntokens = [\"{TOKEN}\", \"{TOKEN_B}\"]\n",
            path.display().to_string()
        ),
    ))
    .await;
    let queued = messages(&gw, TOKEN).json(&body("m")).send().await.unwrap();
    assert_eq!(queued.status(), 202);
    let id = header(&queued, "seawall-job-id").expect("a job id");
    let mine = get(&gw, &format!("/v1/seawall/jobs/{id}"), Some(TOKEN)).await;
    assert_eq!(mine.status(), 200);
    let theirs = get(&gw, &format!("/v1/seawall/jobs/{id}"), Some(TOKEN_B)).await;
    api_error(theirs, 404, "not_found_error").await;
    let waited = get(
        &gw,
        &format!("/v1/seawall/jobs/{id}?wait=200ms"),
        Some(TOKEN_B),
    )
    .await;
    api_error(waited, 404, "not_found_error").await;
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// slow and idle clients

/// Read until the server closes the connection (or `limit` passes); true when it closed.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let until = Instant::now() + limit;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_are_cut_and_real_clients_still_get_answers() {
    let sim = sim(ONE_MODEL_SIM).await;
    let gw = Gw::start(&config(
        &sim.base_url(),
        &format!(
            "[[models]]\nname = \"m\"\n{}",
            gateway_section("header_read_timeout = \"300ms\"\nmax_connections = 32")
        ),
    ))
    .await;
    // More half-sent requests than the gateway serves at once.
    let mut slow = Vec::new();
    for _ in 0..64 {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(b"POST /v1/messages HTTP/1.1\r\nhost: 127.0.0.1\r\nx-api-")
            .await
            .unwrap();
        slow.push(s);
    }
    // A real client is still answered: slots free as the slow ones run out of time.
    let started = Instant::now();
    let real = messages(&gw, TOKEN).json(&body("m")).send().await.unwrap();
    assert_eq!(real.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a real request waited {:?}",
        started.elapsed()
    );
    // Every slow connection is closed by the gateway, none left holding a descriptor.
    for s in &mut slow {
        assert!(
            closed_within(s, Duration::from_secs(5)).await,
            "a slow client kept its connection"
        );
    }
    // An idle keep-alive connection is closed too.
    let mut idle = TcpStream::connect(gw.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let idle_since = Instant::now();
    assert!(closed_within(&mut idle, Duration::from_secs(5)).await);
    assert!(
        idle_since.elapsed() >= Duration::from_millis(250),
        "closed before the idle timeout: {:?}",
        idle_since.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_is_refused_at_once_and_a_slow_body_in_time() {
    let sim = sim(ONE_MODEL_SIM).await;
    let gw = Gw::start(&config(
        &sim.base_url(),
        &format!(
            "[[models]]\nname = \"m\"\n{}",
            gateway_section("max_body_bytes = 1000\nbody_read_timeout = \"300ms\"")
        ),
    ))
    .await;
    // Announced over the limit, not a byte sent: 413 without waiting for the body.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nhost: 127.0.0.1\r\nx-api-key: {TOKEN}\r\n\
         content-type: application/json\r\ncontent-length: 1000000000\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
        .await
        .expect("answered without the body")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).to_lowercase();
    assert!(text.starts_with("http/1.1 413"), "{text}");
    assert!(text.contains("request_too_large"), "{text}");
    assert!(started.elapsed() < Duration::from_millis(250));

    // A body that trickles past the body read timeout: 408, and the slot is free again.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nhost: 127.0.0.1\r\nx-api-key: {TOKEN}\r\n\
         content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"model\""
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
        .await
        .expect("answered at the body timeout")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).to_lowercase();
    assert!(text.starts_with("http/1.1 408"), "{text}");
    assert_eq!(sim.log().len(), 0, "nothing reached the upstream");
}

// ---------------------------------------------------------------------------------------------
// headers and bodies

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_client_timeout_is_a_days_deadline_not_a_panic() {
    let sim = sim(ONE_MODEL_SIM).await;
    let gw = Gw::start(&config(
        &sim.base_url(),
        &format!("[[models]]\nname = \"m\"\n{}", gateway_section("")),
    ))
    .await;
    for value in ["1e20", "1e300", "18446744073709551616"] {
        let r = messages(&gw, TOKEN)
            .header("x-stainless-timeout", value)
            .json(&body("m"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "x-stainless-timeout: {value}");
        let r = client()
            .post(format!("{}/v1/messages/count_tokens", gw.url))
            .header("x-api-key", TOKEN)
            .header("x-stainless-timeout", value)
            .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            200,
            "count_tokens, x-stainless-timeout: {value}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_input_ends_only_its_own_request_and_never_opens_a_breaker() {
    // The upstream chokes on everything with a 431, as on a header too large.
    let sim = sim(r#"
        [[models]]
        name = "m"
        latency = "2ms"
        [[models.faults]]
        kind = "status"
        status = 431
        [limits]
        output_tokens_per_minute = 1000
    "#)
    .await;
    let gw = Gw::start(&config(
        &sim.base_url(),
        &format!(
            "[[models]]\nname = \"m\"\n[models.breaker]\nmin_calls = 2\nwindow = 4\n\
             [limits.sim]\noutput_tpm = 1000\n{}",
            gateway_section("")
        ),
    ))
    .await;
    for _ in 0..10 {
        let r = messages(&gw, TOKEN).json(&body("m")).send().await.unwrap();
        assert_eq!(r.status(), 431, "passed through, not retried");
    }
    let status = gw.gateway.seawall().breaker_status("m").await.unwrap();
    assert_eq!(status.state, StateKind::Closed, "{status:?}");
    let tried = sim.log().len();
    assert_eq!(tried, 10, "each was tried once, never retried");

    // A header the gateway would forward is bounded: refused before the upstream sees it.
    let r = messages(&gw, TOKEN)
        .header("idempotency-key", "k".repeat(70 * 1024))
        .json(&body("m"))
        .send()
        .await
        .unwrap();
    assert!(
        r.status() == 400 || r.status() == 431,
        "an oversized header: {}",
        r.status()
    );
    let r = messages(&gw, TOKEN)
        .header("idempotency-key", "k".repeat(300))
        .json(&body("m"))
        .send()
        .await
        .unwrap();
    let (v, _) = api_error(r, 400, "invalid_request_error").await;
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("idempotency-key"));
    let r = messages(&gw, TOKEN)
        .header("anthropic-beta", "b".repeat(2000))
        .json(&body("m"))
        .send()
        .await
        .unwrap();
    api_error(r, 400, "invalid_request_error").await;

    // Body fields the gateway relies on are checked.
    let mut streamy = body("m");
    streamy["stream"] = json!("yes");
    let r = messages(&gw, TOKEN).json(&streamy).send().await.unwrap();
    let (v, _) = api_error(r, 400, "invalid_request_error").await;
    assert!(v["error"]["message"].as_str().unwrap().contains("stream"));
    // max_tokens beyond what the output limit can ever grant: a 400 that says so, not a 503.
    let mut greedy = body("m");
    greedy["max_tokens"] = json!(5000);
    let r = messages(&gw, TOKEN).json(&greedy).send().await.unwrap();
    let (v, _) = api_error(r, 400, "invalid_request_error").await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_tokens"),
        "{v}"
    );
    assert_eq!(sim.log().len(), tried, "none of these reached the upstream");
}

// ---------------------------------------------------------------------------------------------
// credentials

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_different_credentials_are_refused_and_count_tokens_forwards_betas() {
    let (upstream, seen) = capture_upstream().await;
    let gw = Gw::start(&config(
        &upstream,
        &format!("[[models]]\nname = \"m\"\n{}", gateway_section("")),
    ))
    .await;
    let r = client()
        .post(format!("{}/v1/messages", gw.url))
        .header("x-api-key", "wrong-wrong-wrong-wrong")
        .bearer_auth(TOKEN)
        .json(&body("m"))
        .send()
        .await
        .unwrap();
    api_error(r, 401, "authentication_error").await;
    assert!(seen.lock().unwrap().is_empty());

    let r = client()
        .post(format!("{}/v1/messages/count_tokens", gw.url))
        .header("x-api-key", TOKEN)
        .header("anthropic-beta", "token-counting-2024-11-01")
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = seen.lock().unwrap();
    let beta = seen
        .last()
        .and_then(|(h, _)| h.get("anthropic-beta"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(beta.contains("token-counting-2024-11-01"), "{beta:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tokens_only_loopback_programs_are_served_not_web_pages() {
    let sim = sim(ONE_MODEL_SIM).await;
    let gw = Gw::start(&config(
        &sim.base_url(),
        "[[models]]\nname = \"m\"\n[gateway]\nallowed_origins = [\"http://localhost:3000\"]\n",
    ))
    .await;
    let url = format!("{}/v1/messages", gw.url);
    // A program on this machine.
    let ok = client().post(&url).json(&body("m")).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    // A cross-site "simple" POST from a web page: refused before the upstream key is spent.
    let page = client()
        .post(&url)
        .header("origin", "http://evil.example")
        .header("content-type", "text/plain")
        .body(body("m").to_string())
        .send()
        .await
        .unwrap();
    api_error(page, 403, "permission_error").await;
    // DNS rebinding: the page's own host name in Host.
    let rebound = client()
        .get(format!("{}/status", gw.url))
        .header("host", "evil.example:8700")
        .send()
        .await
        .unwrap();
    api_error(rebound, 403, "permission_error").await;
    // An origin the operator allowed.
    let allowed = client()
        .post(&url)
        .header("origin", "http://localhost:3000")
        .json(&body("m"))
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 200);
    assert_eq!(
        sim.log().len(),
        2,
        "only the program and the allowed page were served"
    );
}
