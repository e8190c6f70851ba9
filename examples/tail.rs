//! The tail of issue 13: a primary that answers in 20-40 ms but hangs on a few percent of
//! requests, a healthy fallback, and what the p50 / p99 / max of a call are with hedging on (the
//! defaults) and off, in the same run, against the simulator over loopback HTTP.
//!
//! Run: `cargo run --release --example tail -- [--calls 1000] [--hang 0.03]`
//!
//! Three runtimes, each on its own simulator with the same seed (so each sees the same faults):
//!
//! - **defaults**: hedging `auto` and learned timeouts, nothing tuned;
//! - **no hedging**: `hedge_after = "off"`, learned timeouts still on (a hang is cut at four
//!   times the model's learned latency, at least 2 s, then the fallback answers);
//! - **neither, attempt_timeout 10 s**: what a 10 s attempt timeout alone gives.
//!
//! Each runtime first answers 40 calls (a model's latency is learned from 20 answers), then the
//! measured calls arrive every 10 ms.

use std::time::{Duration, Instant};

use seawall::core::{Call, Hedge, RetryPolicy, Seawall};
use seawall::sim::{Scenario, Sim, SimHandle};
use seawall::{AnthropicOptions, AnthropicUpstream, ApiKey};

fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn sim(hang: f64) -> Result<SimHandle, Box<dyn std::error::Error>> {
    let scenario = Scenario::from_toml(&format!(
        r#"
        seed = 21
        [[models]]
        name = "primary"
        latency = "20ms"
        latency_jitter = "20ms"
        [[models.faults]]
        kind = "hang"
        probability = {hang}
        [[models]]
        name = "fallback"
        latency = "30ms"
        "#
    ))?;
    Ok(Sim::start(scenario, "127.0.0.1:0".parse()?).await?)
}

async fn runtime(
    sim: &SimHandle,
    policy: RetryPolicy,
) -> Result<Seawall, Box<dyn std::error::Error>> {
    let upstream = AnthropicUpstream::new(
        vec![ApiKey::new("sk-ant-tail-example-0001")?],
        AnthropicOptions {
            base_url: sim.base_url(),
            ..AnthropicOptions::default()
        },
    )?;
    Ok(Seawall::builder()
        .upstream("sim", upstream)
        .chain_with("primary", ["primary", "fallback"], policy)
        .spawn()
        .await?)
}

/// `n` calls, one every 10 ms; each call's latency (an error counts as its time too).
async fn run(sw: &Seawall, n: usize) -> (Vec<Duration>, usize) {
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let at = t0 + Duration::from_millis(10) * i as u32;
        tokio::time::sleep_until(at.into()).await;
        let sw = sw.clone();
        tasks.push(tokio::spawn(async move {
            let start = Instant::now();
            let ok = sw
                .complete(Call::new("primary", 16).user("the tail"))
                .await
                .is_ok();
            (start.elapsed(), ok)
        }));
    }
    let mut out = Vec::with_capacity(n);
    let mut failed = 0;
    for t in tasks {
        match t.await {
            Ok((d, ok)) => {
                out.push(d);
                if !ok {
                    failed += 1;
                }
            }
            Err(_) => failed += 1,
        }
    }
    out.sort();
    (out, failed)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let calls: usize = arg("--calls", 1000);
    let hang: f64 = arg("--hang", 0.03);
    let configs = [
        ("defaults (hedge auto)", RetryPolicy::default()),
        (
            "no hedging",
            RetryPolicy {
                hedge: Hedge::Off,
                ..RetryPolicy::default()
            },
        ),
        (
            "neither, attempt_timeout 10 s",
            RetryPolicy {
                hedge: Hedge::Off,
                learned_timeouts: false,
                attempt_timeout: Duration::from_secs(10),
                ..RetryPolicy::default()
            },
        ),
    ];
    println!(
        "{calls} calls, one every 10 ms; the primary hangs on {:.0} % of requests, the fallback is \
         healthy\n",
        hang * 100.0
    );
    println!(
        "| run | p50 | p99 | max | upstream attempts per call | failed |\n|---|---|---|---|---|---|"
    );
    // All three at once, each on its own simulator (same seed, same faults).
    let mut handles = Vec::new();
    for (name, policy) in configs {
        let s = sim(hang).await?;
        let sw = runtime(&s, policy).await?;
        handles.push(tokio::spawn(async move {
            run(&sw, 40).await; // learn the primary's latency, open connections
            let warm = s.log().len();
            let (lat, failed) = run(&sw, calls).await;
            let attempts = s.log().len() - warm;
            (name, lat, failed, attempts)
        }));
    }
    for h in handles {
        let (name, lat, failed, attempts) = h.await?;
        let q = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize];
        println!(
            "| {name} | {:.0?} | {:.0?} | {:.0?} | {:.3} | {failed} |",
            q(0.5),
            q(0.99),
            q(1.0),
            attempts as f64 / calls as f64
        );
    }
    Ok(())
}
