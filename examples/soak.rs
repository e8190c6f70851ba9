//! A bounded soak: the gateway (in-process, on loopback) in front of the simulator with random
//! faults (529s, 429s with `retry-after`, connection resets, hangs, truncated bodies, errors in
//! the middle of streams), driven by concurrent clients over real HTTP. It checks that every
//! call got exactly one complete answer (a message, a stream that ends with `message_stop` or an
//! `error` event, or an API-shaped error) and that nothing stays in flight, samples the
//! process's resident memory (`VmRSS` in `/proc/self/status`) after warm-up and at the end, and
//! prints a summary. It exits non-zero when a call was lost or cut.
//!
//! Run: `cargo run --release --example soak -- [--calls 100000] [--concurrency 32] [--seed 7]`
//!
//! The default finishes in about a minute on two cores; `--calls 1000000` is the long run
//! (figures in BENCHMARKS.md, "Soak"). The simulator, the gateway and the clients share one
//! process, so the RSS figures cover all three; the simulator's request log (its last 100 000
//! requests) is started over every 10 000 calls so that it does not pass for growth.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use seawall::config::Config;
use seawall::gateway::Gateway;
use seawall::sim::{Scenario, Sim};
use serde_json::{json, Value};
use tokio::net::TcpListener;

const TOKEN: &str = "soak-client-token-0123456789";

/// Calls between two restarts of the simulator's log (see below).
const SIM_RESET_EVERY: u64 = 10_000;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// Resident memory of this process, in KiB (0 where /proc is missing).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The simulator: two models on one organization, every fault kind at a small probability.
fn scenario(seed: u64) -> String {
    format!(
        r#"
seed = {seed}

[[models]]
name = "primary"
latency = "1ms"
latency_jitter = "2ms"
time_to_first_token = "1ms"
output_tokens = 8

[[models.faults]]
kind = "status"
status = 529
probability = 0.03

[[models.faults]]
kind = "status"
status = 429
retry_after = 0.05
probability = 0.01

[[models.faults]]
kind = "status"
status = 500
probability = 0.01

[[models.faults]]
kind = "reset"
probability = 0.01

[[models.faults]]
kind = "hang"
probability = 0.001

[[models.faults]]
kind = "truncated"
probability = 0.005

[[models.faults]]
kind = "mid_stream_error"
after_deltas = 2
probability = 0.03

[[models]]
name = "fallback"
latency = "2ms"
time_to_first_token = "1ms"
output_tokens = 8

[[models.faults]]
kind = "status"
status = 529
probability = 0.02

[[models.faults]]
kind = "reset"
probability = 0.005
"#
    )
}

/// The gateway: the primary falls back to the fallback, short deadlines, two keys.
fn gateway_config(base_url: &str) -> String {
    format!(
        r#"
listen = "127.0.0.1:0"

[[upstreams]]
name = "sim"
base_url = "{base_url}"
api_key_envs = ["SOAK_KEY_1", "SOAK_KEY_2"]
connect_timeout = "500ms"

[retry]
deadline = "3s"
attempt_timeout = "300ms"
first_token_timeout = "300ms"
min_attempt = "20ms"

[retry.backoff]
base = "5ms"
cap = "50ms"

[[models]]
name = "primary"
fallbacks = ["fallback"]

[[models]]
name = "fallback"

[gateway]
tokens = ["{TOKEN}"]
max_connections = 4096
"#
    )
}

/// How one call ended, as the client saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    /// A whole message.
    Message,
    /// A stream that ended with `message_stop`.
    Stream,
    /// A stream that ended with an `error` event (the fault came after content).
    StreamError,
    /// An API-shaped error with this status.
    Error(u16),
    /// Lost: no answer, a broken body, a stream cut silently, or an answer of the wrong shape.
    Lost,
}

async fn one_call(client: &reqwest::Client, url: &str, n: u64) -> (Outcome, String) {
    let stream = n.is_multiple_of(3);
    let body = json!({
        "model": "primary",
        "max_tokens": 8,
        "stream": stream,
        "messages": [{"role": "user", "content": format!("soak call {n}")}],
    });
    let resp = match client
        .post(format!("{url}/v1/messages"))
        .header("x-api-key", TOKEN)
        .json(&body)
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => return (Outcome::Lost, format!("no answer: {e}")),
    };
    let status = resp.status().as_u16();
    let sse = resp
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if status == 200 && sse {
        // Read the stream as it comes; the last event names how it ended.
        let mut last_event = String::new();
        let mut pending = Vec::new();
        let mut resp = resp;
        loop {
            let chunk = match resp.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(_) => return (Outcome::Lost, "the stream broke".into()),
            };
            pending.extend_from_slice(&chunk);
            while let Some(i) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=i).collect();
                if let Some(name) = line.strip_prefix(b"event: ") {
                    last_event = String::from_utf8_lossy(name).trim().to_owned();
                }
            }
        }
        return match last_event.as_str() {
            "message_stop" => (Outcome::Stream, String::new()),
            "error" => (Outcome::StreamError, String::new()),
            other => (Outcome::Lost, format!("a stream cut after {other:?}")),
        };
    }
    let bytes = match resp.bytes().await {
        Ok(b) => b,
        Err(e) => return (Outcome::Lost, format!("the body broke: {e}")),
    };
    let Ok(v) = serde_json::from_slice::<Value>(&bytes) else {
        return (Outcome::Lost, format!("{status}: not JSON"));
    };
    match (status, v["type"].as_str()) {
        (200, Some("message")) if !stream => (Outcome::Message, String::new()),
        (400..=599, Some("error")) if v["error"]["type"].is_string() => {
            (Outcome::Error(status), String::new())
        }
        _ => (Outcome::Lost, format!("{status}: {v}")),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let calls = arg("--calls", 100_000);
    let concurrency = arg("--concurrency", 32).max(1);
    let seed = arg("--seed", 7);
    let warm_up = (calls / 10).clamp(1, 20_000);

    let sim = Arc::new(
        Sim::start(
            Scenario::from_toml(&scenario(seed))?,
            "127.0.0.1:0".parse::<SocketAddr>()?,
        )
        .await?,
    );
    let config = Config::from_toml(&gateway_config(&sim.base_url()))?;
    let gateway = Gateway::start_with_env(&config, |v| match v {
        "SOAK_KEY_1" => Some("sk-soak-key-0000000001".to_owned()),
        "SOAK_KEY_2" => Some("sk-soak-key-0000000002".to_owned()),
        _ => None,
    })
    .await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(gateway.clone().serve(listener, async move {
        let _ = stopped.await;
    }));

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(concurrency as usize)
        .build()?;
    let next = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(AtomicU64::new(0));
    let outcomes: Arc<Mutex<BTreeMap<Outcome, u64>>> = Arc::default();
    let lost_samples: Arc<Mutex<Vec<String>>> = Arc::default();
    let warm_rss = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    println!(
        "soak: {calls} calls, {concurrency} at a time, seed {seed}; RSS at start {:.1} MiB",
        mib(rss_kib())
    );

    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let sim = Arc::clone(&sim);
        let (client, url, next, answered, outcomes, lost_samples, warm_rss) = (
            client.clone(),
            url.clone(),
            Arc::clone(&next),
            Arc::clone(&answered),
            Arc::clone(&outcomes),
            Arc::clone(&lost_samples),
            Arc::clone(&warm_rss),
        );
        workers.push(tokio::spawn(async move {
            let mut local: BTreeMap<Outcome, u64> = BTreeMap::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= calls {
                    break;
                }
                let (outcome, why) = one_call(&client, &url, n).await;
                *local.entry(outcome).or_default() += 1;
                if outcome == Outcome::Lost {
                    let mut samples = lost_samples.lock().unwrap_or_else(|e| e.into_inner());
                    if samples.len() < 10 {
                        samples.push(why);
                    }
                }
                let done = answered.fetch_add(1, Ordering::Relaxed) + 1;
                if done.is_multiple_of(SIM_RESET_EVERY) {
                    // The simulator keeps the last 100 000 requests it saw: start it over (with
                    // a new seed) so that RSS measures the gateway, not that log filling up.
                    let k = done / SIM_RESET_EVERY;
                    if let Ok(next) = Scenario::from_toml(&scenario(seed.wrapping_add(k))) {
                        let _ = sim.set_scenario(next);
                    }
                    sim.reset();
                }
                if done == warm_up {
                    warm_rss.store(rss_kib(), Ordering::Relaxed);
                    println!(
                        "  warmed up after {done} calls: RSS {:.1} MiB",
                        mib(rss_kib())
                    );
                }
                if done.is_multiple_of((calls / 10).max(1)) {
                    let secs = started.elapsed().as_secs_f64();
                    println!(
                        "  {done:>9} calls  {secs:>7.1} s  {:>7.0} calls/s  RSS {:.1} MiB",
                        done as f64 / secs,
                        mib(rss_kib())
                    );
                }
            }
            let mut all = outcomes.lock().unwrap_or_else(|e| e.into_inner());
            for (k, v) in local {
                *all.entry(k).or_default() += v;
            }
        }));
    }
    for w in workers {
        w.await?;
    }
    let elapsed = started.elapsed();
    let end_rss = rss_kib();
    let in_flight = gateway.seawall().in_flight();
    let restarts = gateway.seawall().restarts().await.unwrap_or(0);
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(15), server).await;
    if let Ok(sim) = Arc::try_unwrap(sim) {
        sim.shutdown().await;
    }

    let outcomes = outcomes.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let counted: u64 = outcomes.values().sum();
    let lost = outcomes.get(&Outcome::Lost).copied().unwrap_or(0);
    let warm = warm_rss.load(Ordering::Relaxed);
    println!("\nsoak summary");
    println!("  calls            {calls}");
    println!(
        "  answered         {counted} ({} by a worker's count)",
        answered.load(Ordering::Relaxed)
    );
    println!("  duration         {:.1} s", elapsed.as_secs_f64());
    println!(
        "  throughput       {:.0} calls/s",
        calls as f64 / elapsed.as_secs_f64()
    );
    for (outcome, n) in &outcomes {
        println!("  {:<16} {n}", format!("{outcome:?}"));
    }
    println!("  in flight at end {in_flight}");
    println!("  actor restarts   {restarts}");
    println!(
        "  RSS after warm-up {:.1} MiB, at the end {:.1} MiB ({:+.1} MiB)",
        mib(warm),
        mib(end_rss),
        mib(end_rss) - mib(warm)
    );
    for why in lost_samples
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
    {
        println!("  lost: {why}");
    }
    if counted != calls || lost > 0 || in_flight > 0 {
        return Err(format!(
            "{} of {calls} calls answered, {lost} lost or cut, {in_flight} still in flight",
            counted - lost
        )
        .into());
    }
    println!("  every call answered exactly once");
    Ok(())
}
