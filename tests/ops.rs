//! What an operator reads from a running gateway, over real loopback HTTP with the simulator as
//! the upstream: `/metrics` (every answer counted by route and status, latencies as histograms
//! with buckets), `/status` (durations in milliseconds), and alerts delivered to a webhook.

mod support;

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::Value;
use tokio::sync::mpsc;

use support::eventually;
use support::gateway::{
    assert_no_secret, body, client, config, gateway_section, get, post, sim, Gw, ONE_MODEL_SIM,
    TOKEN,
};
use support::http::serve_app;

/// A model that always answers 529.
const DOWN_SIM: &str = r#"
[[models]]
name = "m"
latency = "2ms"
[[models.faults]]
kind = "status"
status = 529
"#;

/// The count of `name{labels}` in a Prometheus text, if the line exists.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_is_counted_by_route_and_status_including_the_refusals() {
    let sim = sim(ONE_MODEL_SIM).await;
    let gw = Gw::start(&config(
        &sim.base_url(),
        &format!(
            "[[models]]\nname = \"m\"\n{}",
            gateway_section("max_body_bytes = 2000")
        ),
    ))
    .await;
    let c = client();
    // 200: a call through the runtime.
    assert_eq!(
        post(&gw, "/v1/messages", Some(TOKEN), &body("m"))
            .await
            .status(),
        200
    );
    // 401: no token, answered before the runtime.
    assert_eq!(
        post(&gw, "/v1/messages", None, &body("m")).await.status(),
        401
    );
    // 413: a body over the limit, refused from its Content-Length.
    let big = c
        .post(format!("{}/v1/messages", gw.url))
        .header("x-api-key", TOKEN)
        .header("content-type", "application/json")
        .body(vec![b' '; 5000])
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 413);
    // 400: not JSON.
    let bad = c
        .post(format!("{}/v1/messages", gw.url))
        .header("x-api-key", TOKEN)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    // 405 and 404: the router's own answers.
    assert_eq!(get(&gw, "/v1/messages", Some(TOKEN)).await.status(), 405);
    assert_eq!(get(&gw, "/wp-admin", Some(TOKEN)).await.status(), 404);
    // A job lookup: every id under one route label.
    assert_eq!(
        get(&gw, "/v1/seawall/jobs/job_0123", Some(TOKEN))
            .await
            .status(),
        404
    );
    // 431: a head over max_header_bytes (32 KiB by default), answered by the HTTP server
    // before any route is known.
    let huge = c
        .post(format!("{}/v1/messages", gw.url))
        .header("x-api-key", TOKEN)
        .header("x-padding", "p".repeat(40_000))
        .json(&body("m"))
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status(), 431);

    let text = get(&gw, "/metrics", Some(TOKEN))
        .await
        .text()
        .await
        .unwrap();
    let responses = |route: &str, status: u16| {
        sample(
            &text,
            &format!("seawall_gateway_responses_total{{route=\"{route}\",status=\"{status}\"}}"),
        )
    };
    for (route, status) in [
        ("/v1/messages", 200),
        ("/v1/messages", 401),
        ("/v1/messages", 413),
        ("/v1/messages", 400),
        ("/v1/messages", 405),
        ("other", 404),
        ("/v1/seawall/jobs/{id}", 404),
    ] {
        assert_eq!(
            responses(route, status),
            Some(1.0),
            "{route} {status} in:\n{text}"
        );
    }
    assert_eq!(
        sample(
            &text,
            "seawall_gateway_requests_total{route=\"/v1/messages\"}"
        ),
        Some(5.0),
        "{text}"
    );
    // The 431 is counted when hyper's connection ends, just after it wrote the answer: look
    // again for a moment rather than race it.
    let counted = eventually("the 431 is counted", Duration::from_secs(1), || async {
        let text = get(&gw, "/metrics", Some(TOKEN))
            .await
            .text()
            .await
            .unwrap();
        sample(
            &text,
            "seawall_gateway_responses_total{route=\"other\",status=\"431\"}",
        )
    })
    .await;
    assert_eq!(counted, 1.0, "the 431 hyper answered is counted");

    // 403: a gateway without tokens refuses a page and a foreign Host, and counts both.
    let open = Gw::start(&config(
        &sim.base_url(),
        "[[models]]\nname = \"m\"\n[gateway]\nshutdown_grace = \"1s\"\n",
    ))
    .await;
    let page = c
        .post(format!("{}/v1/messages", open.url))
        .header("origin", "https://evil.example")
        .json(&body("m"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 403);
    let rebound = c
        .get(format!("{}/status", open.url))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), 403);
    let text = get(&open, "/metrics", None).await.text().await.unwrap();
    for route in ["/v1/messages", "/status"] {
        assert_eq!(
            sample(
                &text,
                &format!("seawall_gateway_responses_total{{route=\"{route}\",status=\"403\"}}")
            ),
            Some(1.0),
            "{route} 403 in:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latencies_are_histograms_with_buckets_not_summaries() {
    let sim = sim(ONE_MODEL_SIM).await;
    let gw = Gw::start(&config(
        &sim.base_url(),
        &format!("[[models]]\nname = \"m\"\n{}", gateway_section("")),
    ))
    .await;
    for _ in 0..3 {
        assert_eq!(
            post(&gw, "/v1/messages", Some(TOKEN), &body("m"))
                .await
                .status(),
            200
        );
    }
    let text = get(&gw, "/metrics", Some(TOKEN))
        .await
        .text()
        .await
        .unwrap();
    for metric in [
        "seawall_call_duration_seconds",
        "seawall_attempt_duration_seconds",
    ] {
        assert!(
            text.contains(&format!("# TYPE {metric} histogram\n")),
            "{metric} in:\n{text}"
        );
        let bucket = |le: &str| {
            text.lines()
                .filter(|l| l.starts_with(&format!("{metric}_bucket{{")))
                .filter(|l| l.contains(&format!("le=\"{le}\"")))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>()
        };
        // The 5 ms bucket through 120 s; every call of this test fell under +Inf.
        assert!(bucket("+Inf") >= 3.0, "{metric}: {text}");
        assert!(
            text.contains(&format!("{metric}_bucket{{")) && text.contains("le=\"0.005\""),
            "{text}"
        );
        assert!(text.contains("le=\"120\""), "{text}");
        assert!(bucket("0.005") <= bucket("120"), "cumulative: {text}");
        assert!(
            text.contains(&format!("{metric}_count{{")),
            "{metric}_count in:\n{text}"
        );
    }
    assert!(!text.contains("quantile="), "no summaries: {text}");
}

/// True for serde's rendering of a `std::time::Duration`.
fn find_secs_nanos(v: &Value, path: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            if o.contains_key("secs") || o.contains_key("nanos") {
                out.push(path.to_owned());
            }
            for (k, v) in o {
                find_secs_nanos(v, &format!("{path}.{k}"), out);
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                find_secs_nanos(v, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_renders_every_duration_in_milliseconds() {
    let sim = sim(r#"
[[models]]
name = "m"
latency = "3ms"
[[models]]
name = "down"
latency = "1ms"
[[models.faults]]
kind = "status"
status = 529
"#)
    .await;
    // A p99 target of 1 ms is missed by every call: the violation carries two durations.
    let gw = Gw::start(&config(
        &sim.base_url(),
        &format!(
            "[[models]]\nname = \"m\"\n[[models]]\nname = \"down\"\n\
             [models.breaker]\nconsecutive_failures = 1\nopen_for = \"60s\"\n\
             [sla]\nwindow = \"10m\"\nbuckets = 10\nmin_calls = 1\np99 = \"1ms\"\n{}",
            gateway_section("")
        ),
    ))
    .await;
    for _ in 0..3 {
        assert_eq!(
            post(&gw, "/v1/messages", Some(TOKEN), &body("m"))
                .await
                .status(),
            200
        );
    }
    assert_eq!(
        post(&gw, "/v1/messages", Some(TOKEN), &body("down"))
            .await
            .status(),
        503
    );
    let text = get(&gw, "/status", Some(TOKEN)).await.text().await.unwrap();
    assert_no_secret(&text);
    let v: Value = serde_json::from_str(&text).unwrap();
    let mut found = Vec::new();
    find_secs_nanos(&v, "", &mut found);
    assert!(found.is_empty(), "secs/nanos objects at {found:?} in {v}");

    assert_eq!(v["sla"]["window_ms"], 600_000.0, "{v}");
    let down = v["breakers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["model"] == "down")
        .unwrap();
    assert!(down["open_for_ms"].as_u64().unwrap() > 50_000, "{down}");
    let chain = v["sla"]["chains"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "m")
        .unwrap_or_else(|| panic!("no chain m: {v}"));
    let p50 = chain["stats"]["p50_ms"].as_f64().unwrap();
    assert!((3.0..5_000.0).contains(&p50), "{chain}");
    assert!(chain["stats"]["p99_ms"].as_f64().unwrap() >= p50, "{chain}");
    assert_eq!(chain["target"]["p99_ms"], 1.0, "{chain}");
    assert_eq!(chain["healthy"], false, "{chain}");
    let p99 = chain["violations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["kind"] == "p99")
        .unwrap_or_else(|| panic!("a p99 violation: {chain}"));
    assert_eq!(p99["target_ms"], 1.0, "{p99}");
    assert!(p99["actual_ms"].as_f64().unwrap() >= 3.0, "{p99}");
    // Classes by name, not as pairs.
    let model = v["sla"]["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "down")
        .unwrap();
    assert_eq!(model["stats"]["by_class"]["overloaded"], 1, "{model}");
}

/// A webhook receiver answering `status`; each request's JSON body goes to the channel.
async fn webhook(status: StatusCode) -> (String, mpsc::UnboundedReceiver<Value>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/hooks/T000/SECRETPATHSECRET",
        axum::routing::post(move |body: axum::body::Bytes| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(serde_json::from_slice(&body).unwrap_or(Value::Null));
                status
            }
        }),
    );
    let addr = serve_app(app).await;
    (format!("http://{addr}/hooks/T000/SECRETPATHSECRET"), rx)
}

/// A gateway whose only model is down, with a breaker alert after 50 ms going to `hook`.
fn alerting_config(sim_url: &str, hook: &str) -> String {
    config(
        sim_url,
        &format!(
            "[[models]]\nname = \"m\"\n[models.breaker]\nconsecutive_failures = 1\n\
             open_for = \"60s\"\n[alerts]\nbreaker_open_for = \"50ms\"\nwebhook_url = \"{hook}\"\n\
             webhook_timeout = \"500ms\"\n{}",
            gateway_section("")
        ),
    )
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Value>) -> Value {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("the webhook is called")
        .expect("the receiver runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_are_posted_to_the_webhook_as_json() {
    support::init_logs();
    let sim = sim(DOWN_SIM).await;
    let (hook, mut rx) = webhook(StatusCode::OK).await;
    let gw = Gw::start(&alerting_config(&sim.base_url(), &hook)).await;
    assert_eq!(
        post(&gw, "/v1/messages", Some(TOKEN), &body("m"))
            .await
            .status(),
        503
    );
    let alert = next(&mut rx).await;
    assert_eq!(alert["event"], "alert", "{alert}");
    assert_eq!(alert["kind"], "breaker_open", "{alert}");
    assert_eq!(alert["subject"], "m", "{alert}");
    assert_eq!(alert["firing"], true, "{alert}");
    assert_eq!(alert["threshold"], 0.05, "{alert}");
    assert!(alert["at"].as_str().unwrap().ends_with('Z'), "{alert}");
    assert!(
        alert["text"]
            .as_str()
            .unwrap()
            .contains("breaker_open of m"),
        "{alert}"
    );
    assert_no_secret(&alert.to_string());
    // Delivered at the first attempt: no retry is queued behind it.
    assert!(rx.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_webhook_gets_bounded_retries_is_logged_by_host_and_never_blocks() {
    support::init_logs();
    let sim = sim(DOWN_SIM).await;
    let (hook, mut rx) = webhook(StatusCode::SERVICE_UNAVAILABLE).await;
    let gw = Gw::start(&alerting_config(&sim.base_url(), &hook)).await;
    assert_eq!(
        post(&gw, "/v1/messages", Some(TOKEN), &body("m"))
            .await
            .status(),
        503
    );
    // The alert, three times (a 503 is worth retrying), then given up on.
    for _ in 0..3 {
        assert_eq!(next(&mut rx).await["kind"], "breaker_open");
    }
    let logged = eventually("the failure is logged", Duration::from_secs(5), || async {
        support::logs()
            .lines()
            .find(|l| l.contains("alert webhook delivery failed"))
            .map(str::to_owned)
    })
    .await;
    assert!(logged.contains("HTTP 503"), "{logged}");
    let host = hook.split("/hooks").next().unwrap();
    assert!(logged.contains(&format!("{host}/…")), "{logged}");
    assert!(
        !support::logs().contains("SECRETPATHSECRET"),
        "the path is a secret"
    );
    // The failure is logged after the last attempt: there was no fourth. The gateway served
    // on throughout.
    assert!(rx.try_recv().is_err(), "at most three attempts");
    assert_eq!(get(&gw, "/healthz", None).await.status(), 200);
}
