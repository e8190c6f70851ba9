//! The gateway over real loopback HTTP: the gateway on 127.0.0.1:0 in-process, the simulator
//! (or a capturing axum server) as its upstream, reqwest as the client speaking exactly what the
//! official SDK sends. Real time, millisecond settings.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use seawall::config::Config;
use seawall::gateway::{Gateway, ServeError, REQUEST_ID_PREFIX};
use seawall::sim::{estimate_input_tokens, Scenario, SimHandle};
use support::eventually;
use support::gateway::*;
use support::http::sse_events;

// ---------------------------------------------------------------------------------------------
// the call

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unary_call_is_served_with_seawalls_headers() {
    let sim = sim(ONE_MODEL_SIM).await;
    let gw = Gw::start(&config(
        &sim.base_url(),
        &format!("[[models]]\nname = \"m\"\n{}", gateway_section("")),
    ))
    .await;
    let resp = post(&gw, "/v1/messages", Some(TOKEN), &body("m")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "seawall-model").as_deref(), Some("m"));
    assert_eq!(header(&resp, "seawall-source").as_deref(), Some("live"));
    assert_eq!(header(&resp, "seawall-attempts").as_deref(), Some("1"));
    assert_eq!(
        header(&resp, "content-type").as_deref(),
        Some("application/json")
    );
    let rid = header(&resp, "request-id").unwrap();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["model"], "m");
    assert_eq!(v["content"][0]["type"], "text");
    assert!(v["usage"]["output_tokens"].as_u64().unwrap() > 0, "{v}");
    // The upstream's own request-id, passed through.
    let log = sim.log();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].request_id.as_deref(), Some(rid.as_str()));
    // The upstream saw the configured key, never the client token.
    let tail: String = KEY.chars().skip(KEY.chars().count() - 4).collect();
    assert_eq!(log[0].key_tail.as_deref(), Some(tail.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_auth_styles_are_accepted_and_bad_tokens_get_401() {
    let sim = sim(ONE_MODEL_SIM).await;
    let gw = Gw::start(&config(
        &sim.base_url(),
        &format!("[[models]]\nname = \"m\"\n{}", gateway_section("")),
    ))
    .await;
    let url = format!("{}/v1/messages", gw.url);
    let x_api_key = post(&gw, "/v1/messages", Some(TOKEN), &body("m")).await;
    assert_eq!(x_api_key.status(), 200);
    let bearer = client()
        .post(&url)
        .bearer_auth(TOKEN)
        .json(&body("m"))
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 200);

    let missing = post(&gw, "/v1/messages", None, &body("m")).await;
    let (v, rid) = api_error(missing, 401, "authentication_error").await;
    assert!(rid.starts_with(REQUEST_ID_PREFIX), "{rid}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("required"),
        "{v}"
    );
    let wrong = post(
        &gw,
        "/v1/messages",
        Some("client-token-wrong-000000000"),
        &body("m"),
    )
    .await;
    api_error(wrong, 401, "authentication_error").await;
    let wrong_bearer = client()
        .post(&url)
        .bearer_auth(TOKEN_B)
        .json(&body("m"))
        .send()
        .await
        .unwrap();
    api_error(wrong_bearer, 401, "authentication_error").await;
    // The upstream key is not a client token.
    let upstream_key = post(&gw, "/v1/messages", Some(KEY), &body("m")).await;
    api_error(upstream_key, 401, "authentication_error").await;
    // count_tokens, /metrics and /status are guarded too; the probes are not.
    let count = post(&gw, "/v1/messages/count_tokens", None, &body("m")).await;
    api_error(count, 401, "authentication_error").await;
    for path in ["/metrics", "/status"] {
        assert_eq!(get(&gw, path, None).await.status(), 401, "{path}");
        assert_eq!(get(&gw, path, Some(TOKEN)).await.status(), 200, "{path}");
    }
    for path in ["/healthz", "/readyz"] {
        assert_eq!(get(&gw, path, None).await.status(), 200, "{path}");
    }
    assert_eq!(
        sim.log().len(),
        2,
        "refused requests never reach the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_primary_fails_over_to_the_fallback() {
    let sim = sim(r#"
        [[models]]
        name = "primary"
        latency = "5ms"
        [[models.faults]]
        kind = "status"
        status = 529
        [[models]]
        name = "fallback"
        latency = "5ms"
    "#)
    .await;
    let gw = Gw::start(&config(
        &sim.base_url(),
        &format!(
            "[[models]]\nname = \"primary\"\nfallbacks = [\"fallback\"]\n\
             [[models]]\nname = \"fallback\"\n{}",
            gateway_section("")
        ),
    ))
    .await;
    let resp = post(&gw, "/v1/messages", Some(TOKEN), &body("primary")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "seawall-model").as_deref(), Some("fallback"));
    assert_eq!(header(&resp, "seawall-attempts").as_deref(), Some("2"));
    let rid = header(&resp, "request-id").unwrap();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["model"], "fallback");
    let log = sim.log();
    let served = log
        .iter()
        .find(|e| e.model.as_deref() == Some("fallback"))
        .unwrap();
    assert_eq!(served.request_id.as_deref(), Some(rid.as_str()));
    assert_eq!(
        sim.count("primary"),
        1,
        "no backoff sleep on the dead primary"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_upstream_error_is_passed_through_unchanged() {
    let sim = sim(r#"
        [[models]]
        name = "m"
        [[models.faults]]
        kind = "status"
        status = 400
        message = "messages.0.content: bad block"
        [[models]]
        name = "fallback"
    "#)
    .await;
    let gw = Gw::start(&config(
        &sim.base_url(),
        &format!(
            "[[models]]\nname = \"m\"\nfallbacks = [\"fallback\"]\n\
             [[models]]\nname = \"fallback\"\n{}",
            gateway_section("")
        ),
    ))
    .await;
    let resp = post(&gw, "/v1/messages", Some(TOKEN), &body("m")).await;
    assert_eq!(header(&resp, "seawall-model").as_deref(), Some("m"));
    assert_eq!(header(&resp, "seawall-attempts").as_deref(), Some("1"));
    let (v, rid) = api_error(resp, 400, "invalid_request_error").await;
    assert_eq!(v["error"]["message"], "messages.0.content: bad block");
    // The upstream's request-id, in the header and in its own body.
    let log = sim.log();
    assert_eq!(
        log.len(),
        1,
        "a permanent error is not retried nor failed over"
    );
    assert_eq!(log[0].request_id.as_deref(), Some(rid.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_models_down_gives_503_with_retry_after() {
    let sim = sim(r#"
        [[models]]
        name = "a"
        [[models.faults]]
        kind = "status"
        status = 529
        retry_after = 2
        [[models]]
        name = "b"
        [[models.faults]]
        kind = "status"
        status = 503
        retry_after = 2
    "#)
    .await;
    let gw = Gw::start(&config(
        &sim.base_url(),
        &format!(
            "[[models]]\nname = \"a\"\nfallbacks = [\"b\"]\n\
             [models.retry]\ndeadline = \"1s\"\n\
             [[models]]\nname = \"b\"\n{}",
            gateway_section("")
        ),
    ))
    .await;
    let started = Instant::now();
    let resp = post(&gw, "/v1/messages", Some(TOKEN), &body("a")).await;
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "no doomed wait: {:?}",
        started.elapsed()
    );
    assert_eq!(header(&resp, "retry-after").as_deref(), Some("2"));
    let ms: u64 = header(&resp, "retry-after-ms").unwrap().parse().unwrap();
    assert!((1000..=2000).contains(&ms), "{ms}");
    assert_eq!(header(&resp, "seawall-attempts").as_deref(), Some("2"));
    let (v, rid) = api_error(resp, 503, "api_error").await;
    assert!(rid.starts_with(REQUEST_ID_PREFIX), "{rid}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("a: 529"), "{message}");
    assert!(message.contains("b: 503"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_timeout_is_the_deadline_and_a_miss_is_504() {
    let sim = sim(r#"
        [[models]]
        name = "m"
        [[models.faults]]
        kind = "hang"
    "#)
    .await;
    let gw = Gw::start(&config(
        &sim.base_url(),
        &format!("[[models]]\nname = \"m\"\n{}", gateway_section("")),
    ))
    .await;
    let started = Instant::now();
    let resp = client()
        .post(format!("{}/v1/messages", gw.url))
        .header("x-api-key", TOKEN)
        .header("x-stainless-timeout", "1.5")
        .json(&body("m"))
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    // The client's 1.5 s, less a tenth (1.35 s), not the chain's 3 s: the answer comes before
    // the client would give up.
    assert!(
        took >= Duration::from_millis(1300) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    api_error(resp, 504, "gateway_timeout_error").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_api_shaped_errors() {
    let sim = sim(ONE_MODEL_SIM).await;
    let gw = Gw::start(&config(
        &sim.base_url(),
        &format!(
            "[[models]]\nname = \"m\"\n{}",
            gateway_section("max_body_bytes = 1024")
        ),
    ))
    .await;
    let url = format!("{}/v1/messages", gw.url);
    let raw = |bytes: Vec<u8>| {
        client()
            .post(&url)
            .header("x-api-key", TOKEN)
            .header("content-type", "application/json")
            .body(bytes)
            .send()
    };

    let mut big = body("m");
    big["messages"][0]["content"] = json!("x".repeat(2000));
    let resp = raw(serde_json::to_vec(&big).unwrap()).await.unwrap();
    let (v, _) = api_error(resp, 413, "request_too_large").await;
    assert!(
        v["error"]["message"].as_str().unwrap().contains("1024"),
        "{v}"
    );

    let resp = raw(b"{\"model\": \"m\", ".to_vec()).await.unwrap();
    let (v, _) = api_error(resp, 400, "invalid_request_error").await;
    assert!(
        v["error"]["message"].as_str().unwrap().contains("JSON"),
        "{v}"
    );
    let resp = raw(br#"{"model":"m","max_tokens":5,"messages":[]}"#.to_vec())
        .await
        .unwrap();
    api_error(resp, 400, "invalid_request_error").await;
    let resp = client()
        .post(&url)
        .header("x-api-key", TOKEN)
        .header("seawall-lane", "urgent")
        .json(&body("m"))
        .send()
        .await
        .unwrap();
    api_error(resp, 400, "invalid_request_error").await;

    let resp = post(&gw, "/v1/messages", Some(TOKEN), &body("claude-nope")).await;
    let (v, _) = api_error(resp, 404, "not_found_error").await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("claude-nope"),
        "{v}"
    );
    let resp = get(&gw, "/v2/nothing", Some(TOKEN)).await;
    api_error(resp, 404, "not_found_error").await;
    let resp = get(&gw, "/v1/messages", Some(TOKEN)).await;
    api_error(resp, 405, "invalid_request_error").await;
    assert!(sim.log().is_empty(), "nothing bad reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_tokens_asks_the_first_hops_upstream_or_estimates() {
    let sim = sim(ONE_MODEL_SIM).await;
    // "m" is on the sim's Anthropic face (a counter); "gpt" on its OpenAI face (none).
    let toml = config(
        &sim.base_url(),
        &format!(
            "[[upstreams]]\nname = \"oai\"\nkind = \"openai\"\nbase_url = \"{}\"\n\
             api_key_env = \"SIM_KEY\"\n\
             [[models]]\nname = \"m\"\n\
             [[models]]\nname = \"gpt\"\nupstream = \"oai\"\n{}",
            sim.base_url(),
            gateway_section("")
        ),
    );
    let gw = Gw::start(&toml).await;
    let mut req = body("m");
    req.as_object_mut().unwrap().remove("max_tokens");
    req["system"] = json!("count me too");
    let expected = estimate_input_tokens(&req).unwrap();

    let resp = post(&gw, "/v1/messages/count_tokens", Some(TOKEN), &req).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&resp, "seawall-estimate"),
        None,
        "the provider counted"
    );
    assert!(header(&resp, "request-id").is_some());
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v, json!({"input_tokens": expected}));
    assert_eq!(sim.log()[0].path, "/v1/messages/count_tokens");

    req["model"] = json!("gpt");
    let resp = post(&gw, "/v1/messages/count_tokens", Some(TOKEN), &req).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&resp, "seawall-estimate").as_deref(),
        Some("heuristic")
    );
    let v: Value = resp.json().await.unwrap();
    assert!(v["input_tokens"].as_u64().unwrap() > 0, "{v}");

    req["model"] = json!("unknown");
    let resp = post(&gw, "/v1/messages/count_tokens", Some(TOKEN), &req).await;
    api_error(resp, 404, "not_found_error").await;
    let resp = post(
        &gw,
        "/v1/messages/count_tokens",
        Some(TOKEN),
        &json!({"model": "m"}),
    )
    .await;
    api_error(resp, 400, "invalid_request_error").await;
}

// ---------------------------------------------------------------------------------------------
// operations

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_metrics_and_status_follow_the_breaker_and_show_no_secret() {
    let sim = sim(r#"
        [[models]]
        name = "metrics-m"
        [[models.faults]]
        kind = "status"
        status = 529
    "#)
    .await;
    let gw = Gw::start(&config(
        &sim.base_url(),
        &format!(
            "[[models]]\nname = \"metrics-m\"\n[models.breaker]\nconsecutive_failures = 1\n\
             open_for = \"60s\"\n{}",
            gateway_section("")
        ),
    ))
    .await;
    let health = get(&gw, "/healthz", None).await;
    assert_eq!(health.status(), 200);
    assert!(header(&health, "request-id").is_some());
    let ready = get(&gw, "/readyz", None).await;
    assert_eq!(ready.status(), 200);
    assert_eq!(ready.json::<Value>().await.unwrap()["status"], "ready");

    // One overload opens the only model's breaker.
    let resp = post(&gw, "/v1/messages", Some(TOKEN), &body("metrics-m")).await;
    assert_eq!(resp.status(), 503);
    let ready = get(&gw, "/readyz", None).await;
    assert_eq!(ready.status(), 503);
    let v: Value = ready.json().await.unwrap();
    assert_eq!(v["status"], "unavailable");
    assert_eq!(v["chains"], json!(["metrics-m"]));
    assert!(v["reason"].as_str().unwrap().contains("open"), "{v}");
    assert_eq!(get(&gw, "/healthz", None).await.status(), 200);

    let metrics = get(&gw, "/metrics", Some(TOKEN)).await;
    assert_eq!(metrics.status(), 200);
    assert!(header(&metrics, "content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = metrics.text().await.unwrap();
    for line in [
        "seawall_breaker_state{model=\"metrics-m\"} 2\n",
        "seawall_calls_in_flight 0\n",
        "seawall_gateway_requests_total{route=\"/v1/messages\"} 1\n",
        "seawall_gateway_responses_total{route=\"/v1/messages\",status=\"503\"} 1\n",
        "seawall_gateway_responses_total{route=\"/readyz\",status=\"200\"} 1\n",
        "seawall_gateway_responses_total{route=\"/readyz\",status=\"503\"} 1\n",
    ] {
        assert!(text.contains(line), "{line:?} missing from:\n{text}");
    }
    // The runtime's own metrics, through the exporter the gateway installed.
    for needle in [
        "seawall_calls_total{",
        "chain=\"metrics-m\"",
        "seawall_attempts_total{",
        "seawall_breaker_transitions_total{",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
    assert_no_secret(&text);

    let status = get(&gw, "/status", Some(TOKEN)).await;
    assert_eq!(status.status(), 200);
    let text = status.text().await.unwrap();
    assert_no_secret(&text);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["in_flight"], 0);
    assert_eq!(v["breakers"][0]["model"], "metrics-m");
    assert_eq!(v["breakers"][0]["state"], "open");
    assert!(v["breakers"][0]["open_for_ms"].as_u64().unwrap() > 50_000);
    assert!(
        v["breakers"][0]["retry_budget"]["available"].is_number(),
        "{v}"
    );
    assert!(v["governor"][0]["buckets"].is_array(), "{v}");
    assert_eq!(v["governor"][0]["upstream"], "sim");
    assert_eq!(v["chains"]["metrics-m"], json!(["metrics-m"]));
    // The SLA monitor's view: the one call failed.
    let chain = v["sla"]["chains"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "metrics-m")
        .unwrap_or_else(|| panic!("no SLA entry for the chain: {v}"));
    assert_eq!(chain["stats"]["failures"], 1, "{chain}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_a_call_in_flight() {
    let sim = sim(r#"
        [[models]]
        name = "slow"
        latency = "700ms"
    "#)
    .await;
    let mut gw = Gw::start(&config(
        &sim.base_url(),
        &format!("[[models]]\nname = \"slow\"\n{}", gateway_section("")),
    ))
    .await;
    let url = format!("{}/v1/messages", gw.url);
    let call = tokio::spawn(
        client()
            .post(url.clone())
            .header("x-api-key", TOKEN)
            .json(&body("slow"))
            .send(),
    );
    // Wait until the call is inside the runtime (a condition, polled; not a guess).
    eventually("the call starts", Duration::from_secs(5), || async {
        gw.gateway.seawall().in_flight() > 0
    })
    .await;
    let began = Instant::now();
    let report = gw.shutdown().await;
    assert_eq!(report.abandoned, 0, "the call drained");
    let resp = call.await.unwrap().expect("the drained call is answered");
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "seawall-model").as_deref(), Some("slow"));
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["type"], "message");
    assert!(began.elapsed() < Duration::from_secs(5));
    // Nothing is accepted any more.
    let after = client()
        .post(&url)
        .header("x-api-key", TOKEN)
        .json(&body("slow"))
        .send()
        .await;
    assert!(after.is_err(), "{after:?}");
    assert_eq!(sim.count("slow"), 1);
}

#[tokio::test]
async fn a_gateway_without_tokens_serves_loopback_only() {
    let sim = sim(ONE_MODEL_SIM).await;
    let toml = config(&sim.base_url(), "[[models]]\nname = \"m\"\n");
    let config = Config::from_toml(&toml).unwrap();
    let gateway = Gateway::start_with_env(&config, |_| Some(KEY.to_owned()))
        .await
        .unwrap();
    // Any non-loopback local address will do; without one, there is nothing to refuse.
    if let Ok(listener) = TcpListener::bind("0.0.0.0:0").await {
        let e = gateway
            .clone()
            .serve(listener, std::future::pending())
            .await
            .unwrap_err();
        assert!(matches!(e, ServeError::Unauthenticated { .. }), "{e:?}");
    }
    // On loopback, no token is asked for.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(gateway.serve(listener, async move {
        let _ = stopped.await;
    }));
    let resp = client()
        .post(format!("http://{addr}/v1/messages"))
        .json(&body("m"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

// ---------------------------------------------------------------------------------------------
// the official SDK's wire shapes

/// The headers anthropic-python 2.12 sends with `messages.create(...)`.
fn sdk_request(url: &str, bearer: bool) -> reqwest::RequestBuilder {
    let req = client()
        .post(format!("{url}/v1/messages"))
        .header("accept", "application/json")
        .header("content-type", "application/json")
        .header("user-agent", "Anthropic/Python 2.12.0")
        .header("anthropic-version", "2026-10-21")
        .header("x-stainless-lang", "python")
        .header("x-stainless-package-version", "2.12.0")
        .header("x-stainless-os", "Linux")
        .header("x-stainless-arch", "x64")
        .header("x-stainless-runtime", "CPython")
        .header("x-stainless-runtime-version", "3.12.7")
        .header("x-stainless-async", "false")
        .header("x-stainless-retry-count", "0")
        .header("x-stainless-timeout", "600");
    if bearer {
        req.header("authorization", format!("Bearer {TOKEN}"))
    } else {
        req.header("x-api-key", TOKEN)
    }
}

fn sdk_body(model: &str) -> String {
    // Key order, spacing and fields the gateway does not know, as a client may send them.
    format!(
        r#"{{"max_tokens": 64, "messages": [{{"role": "user", "content": [{{"type": "text", "text": "Plan my day"}}]}}], "model": "{model}", "metadata": {{"user_id": "u-42"}}, "future_field": {{"x": 1}}}}"#
    )
}

/// What the SDK reads from a message response.
async fn assert_sdk_message(resp: reqwest::Response, model: &str) -> String {
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&resp, "content-type").as_deref(),
        Some("application/json")
    );
    let rid = header(&resp, "request-id").expect("request-id");
    assert_eq!(header(&resp, "seawall-model").as_deref(), Some(model));
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["type"], "message", "{v}");
    assert_eq!(v["role"], "assistant");
    assert!(v["id"].as_str().unwrap().starts_with("msg_"), "{v}");
    assert!(
        v["content"].as_array().is_some_and(|c| !c.is_empty()),
        "{v}"
    );
    assert!(v["stop_reason"].is_string(), "{v}");
    assert!(v["usage"]["input_tokens"].is_u64(), "{v}");
    assert!(v["usage"]["output_tokens"].is_u64(), "{v}");
    rid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdks_requests_work_against_the_simulator() {
    let sim = sim(ONE_MODEL_SIM).await;
    let gw = Gw::start(&config(
        &sim.base_url(),
        &format!("[[models]]\nname = \"m\"\n{}", gateway_section("")),
    ))
    .await;
    for bearer in [true, false] {
        let resp = sdk_request(&gw.url, bearer)
            .body(sdk_body("m"))
            .send()
            .await
            .unwrap();
        let rid = assert_sdk_message(resp, "m").await;
        assert_eq!(
            sim.log().last().unwrap().request_id.as_deref(),
            Some(rid.as_str())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdks_request_reaches_the_upstream_intact_without_the_client_token() {
    let (upstream, seen) = capture_upstream().await;
    let gw = Gw::start(&config(
        &upstream,
        &format!("[[models]]\nname = \"m\"\n{}", gateway_section("")),
    ))
    .await;
    let resp = sdk_request(&gw.url, true)
        .header("idempotency-key", "idem-7")
        .header("anthropic-beta", "fallback-credit-2026-07-01")
        .body(sdk_body("m"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&resp, "anthropic-organization-id"),
        None,
        "upstream organization details stay inside"
    );
    let rid = assert_sdk_message(resp, "m").await;
    assert_eq!(rid, "req_capture_0001");

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    let (headers, body) = &seen[0];
    let sent: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(
        sent["future_field"],
        json!({"x": 1}),
        "unknown fields survive"
    );
    assert_eq!(sent["metadata"], json!({"user_id": "u-42"}));
    assert_eq!(sent["model"], "m");
    assert_eq!(sent["max_tokens"], 64);
    // The upstream key goes upstream; the client token never does.
    assert_eq!(headers["x-api-key"], KEY);
    assert!(headers.get("authorization").is_none());
    for (name, value) in headers {
        assert!(
            !value.to_str().unwrap_or("").contains(TOKEN),
            "the client token was forwarded in {name}"
        );
    }
    // The client's API version and betas reach the upstream unchanged.
    assert_eq!(headers["anthropic-version"], "2026-10-21");
    assert_eq!(headers["anthropic-beta"], "fallback-credit-2026-07-01");
    assert_eq!(headers["idempotency-key"], "idem-7");
}

// ---------------------------------------------------------------------------------------------
// streaming

fn stream_body(model: &str) -> String {
    format!(
        r#"{{"model": "{model}", "max_tokens": 64, "stream": true, "messages": [{{"role": "user", "content": "stream please"}}], "future_field": 1}}"#
    )
}

const STREAM_SIM: &str = r#"
    seed = 7
    [[models]]
    name = "steady"
    delta_interval = "2ms"
    output_tokens = 5
    [[models]]
    name = "breaks-early"
    delta_interval = "2ms"
    [[models.faults]]
    kind = "mid_stream_error"
    after_deltas = 0
    [[models]]
    name = "breaks-late"
    delta_interval = "2ms"
    output_tokens = 10
    [[models.faults]]
    kind = "mid_stream_error"
    after_deltas = 3
    [[models]]
    name = "down"
    [[models.faults]]
    kind = "status"
    status = 529
    retry_after = 2
"#;

fn stream_config(sim: &SimHandle) -> String {
    config(
        &sim.base_url(),
        &format!(
            "[[models]]\nname = \"steady\"\n\
             [[models]]\nname = \"breaks-early\"\nfallbacks = [\"steady\"]\n\
             [[models]]\nname = \"breaks-late\"\nfallbacks = [\"steady\"]\n\
             [[models]]\nname = \"down\"\n[models.retry]\ndeadline = \"1s\"\n{}",
            gateway_section("")
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_arrives_event_by_event_in_the_apis_order() {
    let sim = sim(STREAM_SIM).await;
    let gw = Gw::start(&stream_config(&sim)).await;
    let resp = sdk_request(&gw.url, true)
        .header("x-stainless-helper-method", "stream")
        .body(stream_body("steady"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        header(&resp, "content-type")
            .unwrap()
            .starts_with("text/event-stream"),
        "{:?}",
        resp.headers()
    );
    assert_eq!(header(&resp, "seawall-model").as_deref(), Some("steady"));
    assert_eq!(header(&resp, "seawall-attempts").as_deref(), Some("1"));
    let rid = header(&resp, "request-id").unwrap();
    assert_eq!(sim.log()[0].request_id.as_deref(), Some(rid.as_str()));
    assert!(sim.log()[0].stream);

    let events = sse_events(&resp.text().await.unwrap());
    let names: Vec<&str> = events
        .iter()
        .map(|(e, _)| e.as_str())
        .filter(|e| *e != "ping")
        .collect();
    let mut want = vec!["message_start", "content_block_start"];
    want.extend(["content_block_delta"; 5]);
    want.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(names, want);
    for (event, data) in &events {
        assert_eq!(data["type"], event.as_str(), "{data}");
    }
    assert_eq!(events[0].1["message"]["model"], "steady");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overload_before_content_falls_back_unseen() {
    let sim = sim(STREAM_SIM).await;
    let gw = Gw::start(&stream_config(&sim)).await;
    let resp = sdk_request(&gw.url, false)
        .body(stream_body("breaks-early"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "seawall-model").as_deref(), Some("steady"));
    assert_eq!(header(&resp, "seawall-attempts").as_deref(), Some("2"));
    let events = sse_events(&resp.text().await.unwrap());
    assert!(events.iter().all(|(e, _)| e != "error"), "{events:?}");
    assert_eq!(events.first().unwrap().0, "message_start");
    assert_eq!(events[0].1["message"]["model"], "steady");
    assert_eq!(events.last().unwrap().0, "message_stop");
    // Exactly one message: the failed attempt's opening events never reached the client.
    let starts = events.iter().filter(|(e, _)| e == "message_start").count();
    assert_eq!(starts, 1);
    assert_eq!(sim.count("breaks-early"), 1);
    assert_eq!(sim.count("steady"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overload_after_content_reaches_the_client_as_an_error_event() {
    let sim = sim(STREAM_SIM).await;
    let gw = Gw::start(&stream_config(&sim)).await;
    let resp = sdk_request(&gw.url, true)
        .body(stream_body("breaks-late"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&resp, "seawall-model").as_deref(),
        Some("breaks-late")
    );
    let events = sse_events(&resp.text().await.unwrap());
    let deltas = events
        .iter()
        .filter(|(e, _)| e == "content_block_delta")
        .count();
    assert_eq!(deltas, 3);
    let (last, data) = events.last().unwrap();
    assert_eq!(last, "error", "not a silent cut: {events:?}");
    assert_eq!(data["type"], "error");
    assert_eq!(data["error"]["type"], "overloaded_error");
    assert!(events.iter().all(|(e, _)| e != "message_stop"));
    assert_eq!(
        sim.count("steady"),
        0,
        "committed: no fallback after content"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_cannot_start_gets_a_json_error() {
    let sim = sim(STREAM_SIM).await;
    let gw = Gw::start(&stream_config(&sim)).await;
    let resp = sdk_request(&gw.url, true)
        .body(stream_body("down"))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&resp, "retry-after").as_deref(), Some("2"));
    let (_, rid) = api_error(resp, 503, "api_error").await;
    assert!(rid.starts_with(REQUEST_ID_PREFIX), "{rid}");
    let resp = sdk_request(&gw.url, true)
        .body(stream_body("nope"))
        .send()
        .await
        .unwrap();
    api_error(resp, 404, "not_found_error").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_events_are_written_as_they_arrive_not_buffered() {
    let sim = sim(r#"
        [[models]]
        name = "drip"
        delta_interval = "200ms"
        output_tokens = 4
    "#)
    .await;
    let gw = Gw::start(&config(
        &sim.base_url(),
        &format!("[[models]]\nname = \"drip\"\n{}", gateway_section("")),
    ))
    .await;
    let mut resp = sdk_request(&gw.url, true)
        .body(stream_body("drip"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut text = String::new();
    let mut first_delta = None;
    while let Some(chunk) = resp.chunk().await.unwrap() {
        text.push_str(std::str::from_utf8(&chunk).unwrap());
        if first_delta.is_none() && text.contains("content_block_delta") {
            first_delta = Some(Instant::now());
        }
    }
    let end = Instant::now();
    let first_delta = first_delta.expect("a delta arrived");
    // Three more deltas follow the first, 200 ms apart: the client saw the first long before
    // the end.
    assert!(
        end - first_delta >= Duration::from_millis(400),
        "the stream was buffered: {:?} between first delta and end",
        end - first_delta
    );
    assert_eq!(sse_events(&text).last().unwrap().0, "message_stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_idempotency_key_is_replayed_not_resent() {
    let sim = sim(ONE_MODEL_SIM).await;
    let gw = Gw::start(&config(
        &sim.base_url(),
        &format!(
            "[[models]]\nname = \"m\"\n{}",
            gateway_section("idempotency_ttl = \"1m\"")
        ),
    ))
    .await;
    let send = || {
        client()
            .post(format!("{}/v1/messages", gw.url))
            .header("x-api-key", TOKEN)
            .header("idempotency-key", "order-7")
            .json(&body("m"))
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(header(&first, "seawall-source").as_deref(), Some("live"));
    let first: Value = first.json().await.unwrap();
    let again = send().await.unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(header(&again, "seawall-source").as_deref(), Some("replay"));
    let again: Value = again.json().await.unwrap();
    assert_eq!(again, first, "the stored answer, byte for byte");
    assert_eq!(sim.log().len(), 1, "the upstream saw it once");
    assert_eq!(sim.log()[0].idempotency_key.as_deref(), Some("order-7"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_chain_degrades_to_the_cache_then_its_static_answer_flagged() {
    let up = r#"
        [[models]]
        name = "chat"
        latency = "2ms"
    "#;
    let sim = sim(up).await;
    let gw = Gw::start(&config(
        &sim.base_url(),
        &format!(
            "[[models]]\nname = \"chat\"\ndegrade = [\"cache\", \"static\"]\n\
             static_answer = \"Busy, back soon.\"\n[models.breaker]\nopen_for = \"10s\"\n\
             [cache]\nmax_entries = 100\nttl = \"1m\"\n{}",
            gateway_section("")
        ),
    ))
    .await;
    let live = post(&gw, "/v1/messages", Some(TOKEN), &body("chat")).await;
    assert_eq!(live.status(), 200);
    assert_eq!(header(&live, "seawall-source").as_deref(), Some("live"));
    let live: Value = live.json().await.unwrap();

    sim.set_scenario(
        Scenario::from_toml(
            r#"
            [[models]]
            name = "chat"
            latency = "2ms"
            [[models.faults]]
            kind = "status"
            status = 529
        "#,
        )
        .unwrap(),
    )
    .unwrap();
    // The same request: the cached live answer, flagged.
    let cached = post(&gw, "/v1/messages", Some(TOKEN), &body("chat")).await;
    assert_eq!(cached.status(), 200);
    assert_eq!(header(&cached, "seawall-source").as_deref(), Some("cache"));
    let cached: Value = cached.json().await.unwrap();
    assert_eq!(cached["content"], live["content"]);
    // A request never answered live: the static answer, flagged.
    let mut other = body("chat");
    other["messages"][0]["content"] = json!("a question nobody asked before");
    let fixed = post(&gw, "/v1/messages", Some(TOKEN), &other).await;
    assert_eq!(fixed.status(), 200);
    assert_eq!(header(&fixed, "seawall-source").as_deref(), Some("static"));
    let fixed: Value = fixed.json().await.unwrap();
    assert_eq!(fixed["content"][0]["text"], "Busy, back soon.");
    // A stream degrades the same way, as the API's event sequence.
    let mut streamed = other.clone();
    streamed["stream"] = json!(true);
    let resp = post(&gw, "/v1/messages", Some(TOKEN), &streamed).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "seawall-source").as_deref(), Some("static"));
    let events = sse_events(&resp.text().await.unwrap());
    assert_eq!(events.first().map(|e| e.0.as_str()), Some("message_start"));
    assert_eq!(events.last().map(|e| e.0.as_str()), Some("message_stop"));
    let text: String = events
        .iter()
        .filter_map(|(_, d)| d.pointer("/delta/text").and_then(Value::as_str))
        .collect();
    assert_eq!(text, "Busy, back soon.");
}

/// The state of `model`'s breaker, as `/status` reports it.
async fn breaker_state(gw: &Gw, model: &str) -> String {
    let v: Value = get(gw, "/status", Some(TOKEN)).await.json().await.unwrap();
    v["breakers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|b| b["model"] == model)
        .and_then(|b| b["state"].as_str())
        .unwrap_or_else(|| panic!("no breaker state for {model}: {v}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_header_pins_the_fallback_until_the_primary_closes() {
    let down = r#"
        [[models]]
        name = "primary"
        latency = "2ms"
        [[models.faults]]
        kind = "status"
        status = 529
        [[models]]
        name = "fallback"
        latency = "2ms"
    "#;
    let sim = sim(down).await;
    // One failure opens the primary's breaker for 300 ms; one trial call closes it again. The
    // trial is a user call's: without probes (with them, a probe takes it at 300 ms).
    let gw = Gw::start(&config(
        &sim.base_url(),
        &format!(
            "[[models]]\nname = \"primary\"\nfallbacks = [\"fallback\"]\n\
             [models.breaker]\nwindow = 1\nmin_calls = 1\nopen_for = \"300ms\"\nhalf_open_calls = 1\n\
             [models.probe]\nenabled = false\n\
             [[models]]\nname = \"fallback\"\n{}",
            gateway_section("")
        ),
    ))
    .await;
    let turn = |conversation: Option<&'static str>| {
        let mut req = client()
            .post(format!("{}/v1/messages", gw.url))
            .header("x-api-key", TOKEN)
            .json(&body("primary"));
        if let Some(c) = conversation {
            req = req.header("seawall-conversation", c);
        }
        req.send()
    };
    let first = turn(Some("task-7")).await.unwrap();
    assert_eq!(header(&first, "seawall-model").as_deref(), Some("fallback"));
    assert_eq!(breaker_state(&gw, "primary").await, "open");

    // The primary recovers; once its open time is over its breaker is half-open (as `/status`
    // reports it, within the open time and the same 100 ms a sleep used to allow).
    let up = r#"
        [[models]]
        name = "primary"
        latency = "2ms"
        [[models]]
        name = "fallback"
        latency = "2ms"
    "#;
    sim.set_scenario(Scenario::from_toml(up).unwrap()).unwrap();
    eventually(
        "the primary's breaker is half-open",
        Duration::from_millis(400),
        || async {
            match breaker_state(&gw, "primary").await.as_str() {
                "half_open" => Ok(()),
                other => Err(other.to_owned()),
            }
        },
    )
    .await;
    let pinned = turn(Some("task-7")).await.unwrap();
    assert_eq!(
        header(&pinned, "seawall-model").as_deref(),
        Some("fallback"),
        "the conversation stays where it was served while the primary is on trial"
    );
    let free = turn(None).await.unwrap();
    assert_eq!(header(&free, "seawall-model").as_deref(), Some("primary"));
    // The trial closed the primary's breaker: the conversation comes back.
    let back = turn(Some("task-7")).await.unwrap();
    assert_eq!(header(&back, "seawall-model").as_deref(), Some("primary"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hedged_call_says_so_in_its_headers() {
    let sim = sim(r#"
        [[models]]
        name = "m"
        [[models.faults]]
        kind = "hang"
        [[models]]
        name = "f"
        latency = "5ms"
    "#)
    .await;
    let gw = Gw::start(&config(
        &sim.base_url(),
        &format!(
            "[[models]]\nname = \"m\"\nfallbacks = [\"f\"]\n[models.retry]\nhedge_after = \"100ms\"\n\
             [[models]]\nname = \"f\"\n{}",
            gateway_section("")
        ),
    ))
    .await;
    let started = Instant::now();
    let resp = post(&gw, "/v1/messages", Some(TOKEN), &body("m")).await;
    let took = started.elapsed();
    assert_eq!(resp.status(), 200);
    assert!(took < Duration::from_secs(1), "hedged at 100 ms: {took:?}");
    let h = resp.headers();
    assert_eq!(h["seawall-model"], "f");
    assert_eq!(h["seawall-attempts"], "2", "the hung attempt was sent too");
    assert_eq!(h["seawall-hedges"], "1");
}
