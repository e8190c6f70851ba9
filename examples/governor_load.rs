//! Load harness for the governor: offer several times an organization's limit to the runtime,
//! against the simulator enforcing that limit over loopback HTTP, and measure upstream 429s
//! (target 0) and goodput (answered live, as a share of all the limiter could admit; target
//! >= 95%).
//!
//! Run: `cargo run --release --example governor_load -- [--seconds 120] [--rpm 60] [--load 3]`
//!
//! The simulator and the runtime are configured with the same limits (requests, input and
//! output tokens per minute). Each caller has a 10 s deadline: what cannot be served in time is
//! refused by the governor locally, with a retry-after, and never reaches the upstream.

use std::time::{Duration, Instant};

use seawall::core::{Call, Error, Limits, RetryPolicy, Seawall};
use seawall::sim::{Scenario, Sim};
use seawall::{AnthropicOptions, AnthropicUpstream, ApiKey};

fn arg(name: &str, default: f64) -> f64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds = arg("--seconds", 120.0);
    let rpm = arg("--rpm", 60.0) as u64;
    let load = arg("--load", 3.0);
    let (itpm, otpm) = (rpm * 400, rpm * 60);
    let scenario = Scenario::from_toml(&format!(
        r#"
        seed = 9
        [limits]
        requests_per_minute = {rpm}
        input_tokens_per_minute = {itpm}
        output_tokens_per_minute = {otpm}
        [[models]]
        name = "claude-sonnet-4-5"
        latency = "150ms"
        latency_jitter = "100ms"
        output_tokens = 40
        "#
    ))?;
    let sim = Sim::start(scenario, "127.0.0.1:0".parse()?).await?;
    let limits = Limits {
        requests_per_minute: Some(rpm),
        input_tokens_per_minute: Some(itpm),
        output_tokens_per_minute: Some(otpm),
    };
    let upstream = AnthropicUpstream::new(
        vec![ApiKey::new("sk-ant-load-000000000001")?],
        AnthropicOptions {
            base_url: sim.base_url(),
            ..AnthropicOptions::default()
        },
    )?;
    let sw = Seawall::builder()
        .upstream("sim", upstream)
        .limits("sim", limits)
        .chain_with(
            "claude-sonnet-4-5",
            ["claude-sonnet-4-5"],
            RetryPolicy {
                deadline: Duration::from_secs(10),
                ..RetryPolicy::default()
            },
        )
        .spawn()
        .await?;

    let offered_per_sec = rpm as f64 / 60.0 * load;
    let total = (offered_per_sec * seconds).round() as usize;
    let interval = Duration::from_secs_f64(1.0 / offered_per_sec);
    println!(
        "offering {total} calls over {seconds} s ({offered_per_sec:.2}/s = {load}x the {rpm} rpm limit)"
    );
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        tokio::time::sleep_until((t0 + interval * i as u32).into()).await;
        let sw = sw.clone();
        tasks.push(tokio::spawn(async move {
            let call = Call::new("claude-sonnet-4-5", 60)
                .user("Summarise the incident report in two sentences, please.");
            let r = sw.complete(call).await;
            (Instant::now(), r)
        }));
    }
    let (mut live, mut refused, mut other, mut in_window) = (0usize, 0usize, 0usize, 0usize);
    let window_end = t0 + Duration::from_secs_f64(seconds);
    for t in tasks {
        let (done, r) = t.await?;
        match r {
            Ok(_) => {
                live += 1;
                if done <= window_end {
                    in_window += 1;
                }
            }
            Err(Error::Unavailable { .. }) => refused += 1,
            Err(e) => {
                other += 1;
                eprintln!("unexpected: {e}");
            }
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let log = sim.log();
    let upstream_429 = log.iter().filter(|e| e.status == Some(429)).count();
    // All the limiter could admit in the window: a full bucket plus the refill.
    let admissible = rpm as f64 + rpm as f64 / 60.0 * elapsed;
    println!(
        "elapsed {elapsed:.1} s; answered live {live} ({in_window} inside the {seconds} s window), refused locally {refused}, other errors {other}"
    );
    println!(
        "upstream requests {}, upstream 429s {upstream_429}; goodput {:.1}% of the {admissible:.0} requests the limit admits in that time",
        log.len(),
        100.0 * live as f64 / admissible
    );
    sw.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
