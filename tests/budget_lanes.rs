//! One upstream's spent budget holds back only its own calls, through the real binary: a
//! `seawall serve` process with two upstreams, `anthropic` limited to 30 requests a minute and
//! `other` with no limits, both in front of the simulator. Once `anthropic`'s bucket is spent,
//! its next calls wait for the refill (one every 2 s), first in, first out, while a call to
//! `other` is answered before the first of them. Real loopback HTTP, real time.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::eventually;
use support::http::plain_client;
use support::process::{write_config, Served};
use support::sim::sim;

const KEY_ENV: &str = "SEAWALL_LANES_TEST_KEY";
const KEY: &str = "sk-ant-api03-LANESSECRETLANESSECRET-llll";
const TOKEN: &str = "lanes-test-client-token-0123456789";

const SIM: &str = r#"
    seed = 11
    [[models]]
    name = "claude-a"
    latency = "1ms"
    [[models]]
    name = "claude-b"
    latency = "1ms"
"#;

fn config(base: &str) -> String {
    format!(
        r#"
listen = "127.0.0.1:0"

[[upstreams]]
name = "anthropic"
base_url = "{base}"
api_key_env = "{KEY_ENV}"

[[upstreams]]
name = "other"
base_url = "{base}"
api_key_env = "{KEY_ENV}"

[[models]]
name = "claude-a"
upstream = "anthropic"

[[models]]
name = "claude-b"
upstream = "other"

[limits.anthropic]
rpm = 30

[retry]
deadline = "20s"

[gateway]
tokens = ["{TOKEN}"]
"#
    )
}

/// `POST /v1/messages` for `model` as the official SDK sends it (its own 90 s timeout); the
/// status, the body and when the answer was complete.
async fn ask(http: &reqwest::Client, base: &str, model: &str) -> (u16, Value, Instant) {
    let resp = http
        .post(format!("{base}/v1/messages"))
        .header("x-api-key", TOKEN)
        .header("anthropic-version", "2023-06-01")
        .header("x-stainless-timeout", "90")
        .json(&json!({"model": model, "max_tokens": 16,
                      "messages": [{"role": "user", "content": "hello"}]}))
        .send()
        .await
        .expect("the gateway answers");
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, body, Instant::now())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_upstream_holds_back_only_its_own_calls_and_serves_them_in_order() {
    let sim = sim(SIM).await;
    let path = write_config("lanes", &config(&sim.base_url()));
    let served = Served::start(&path, TOKEN, &[(KEY_ENV, KEY)]);
    let base = served.serve.base.clone();
    let http = plain_client();

    // Spend anthropic's bucket (30 requests, a full bucket at start), then call until one
    // waits: the bucket refills while the first 30 are answered.
    for _ in 0..30 {
        let (status, body, _) = ask(&http, &base, "claude-a").await;
        assert_eq!(status, 200, "{body}");
    }
    let waiting = |s: &Value| {
        s["governor"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|u| u["upstream"] == "anthropic")
            .and_then(|u| u["waiting"]["interactive"].as_u64())
            .unwrap_or(0)
    };
    let call = || {
        let (http, base) = (http.clone(), base.clone());
        tokio::spawn(async move { ask(&http, &base, "claude-a").await })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut sent = 30;
    let (first, parked_at) = loop {
        let c = call();
        eventually(
            "a call to anthropic waits (or is answered)",
            deadline.saturating_duration_since(Instant::now()),
            || async { waiting(&served.status().await) >= 1 || c.is_finished() },
        )
        .await;
        if !c.is_finished() {
            break (c, Instant::now());
        }
        let (status, body, _) = c.await.unwrap();
        assert_eq!(status, 200, "{body}");
        sent += 1;
    };
    // A second call waits behind the first.
    let second = call();
    eventually(
        "the second call waits",
        deadline.saturating_duration_since(Instant::now()),
        || async { waiting(&served.status().await) >= 2 },
    )
    .await;

    // `other` has no limits: its call goes while both wait, and is not counted against them.
    let (status, body, other_done) = ask(&http, &base, "claude-b").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(sim.count("claude-b"), 1, "sent upstream at once");
    assert_eq!(
        sim.count("claude-a"),
        sent,
        "anthropic's waiters are not sent yet"
    );

    let (s1, b1, first_done) = first.await.unwrap();
    let (s2, b2, second_done) = second.await.unwrap();
    assert_eq!(s1, 200, "{b1}");
    assert_eq!(s2, 200, "{b2}");
    assert!(
        other_done < first_done,
        "the call to `other` was answered while anthropic's first waiter still waited"
    );
    assert!(first_done < second_done, "first in, first out");
    // The second waited for a refill of its own: the bucket gives one request every 2 s.
    assert!(second_done.duration_since(first_done) >= Duration::from_millis(1800));
    assert!(first_done > parked_at);
    assert_eq!(sim.count("claude-a"), sent + 2);
}
