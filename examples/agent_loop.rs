//! Embedding seawall in an agent backend: a small agent loop whose model calls go through the
//! runtime while the primary model has an outage.
//!
//! Run: `cargo run --example agent_loop` (no API key, no server: an in-process scripted upstream
//! plays the API, with the primary overloaded for a stretch).
//! With a real key: `ANTHROPIC_API_KEY=... cargo run --example agent_loop -- --live`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use seawall::core::scripted::{Answer, ScriptedUpstream};
use seawall::core::{BreakerConfig, Call, Event, RetryPolicy, Seawall, WindowKind};
use seawall::{AnthropicOptions, AnthropicUpstream, ApiKey};

const PRIMARY: &str = "claude-sonnet-4-5";
const FALLBACK: &str = "claude-haiku-4-5";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let live = std::env::args().any(|a| a == "--live");
    let breaker = BreakerConfig {
        window: WindowKind::Count(10),
        min_calls: 4,
        failure_rate: 50.0,
        half_open_calls: 1,
        open_for: Duration::from_millis(400),
        ..BreakerConfig::default()
    };
    let policy = RetryPolicy {
        deadline: Duration::from_secs(30),
        attempt_timeout: Duration::from_secs(20),
        ..RetryPolicy::default()
    };
    let builder = Seawall::builder().breaker_defaults(breaker).chain_with(
        PRIMARY,
        [PRIMARY, FALLBACK],
        policy,
    );
    let builder = if live {
        // The key is read by name; its value never reaches a log or an error message.
        let key = ApiKey::from_env("ANTHROPIC_API_KEY")?;
        builder.upstream(
            "anthropic",
            AnthropicUpstream::new(vec![key], AnthropicOptions::default())?,
        )
    } else {
        builder.upstream("scripted", incident())
    };
    let seawall = builder.spawn().await?;

    // Print breaker transitions as they happen.
    let mut events = seawall.subscribe();
    let t0 = Instant::now();
    tokio::spawn(async move {
        while let Ok(ev) = events.recv().await {
            if let Event::Breaker {
                model,
                from,
                to,
                reason,
                ..
            } = ev
            {
                println!(
                    "  [{:>5} ms] breaker {model}: {from:?} -> {to:?} ({reason})",
                    t0.elapsed().as_millis()
                );
            }
        }
    });

    // The agent: a task broken into steps; each step is one model call that sees the history.
    let steps = if live { 3 } else { 40 };
    let mut history: Vec<(String, String)> = Vec::new();
    let (mut by_primary, mut by_fallback, mut failed) = (0, 0, 0);
    for step in 1..=steps {
        let mut call = Call::new(PRIMARY, 128).system("You are a terse planning agent.");
        for (q, a) in &history {
            call = call.user(q).assistant(a);
        }
        let question = format!("Step {step}: what is the next action? One line.");
        call = call.user(&question);
        match seawall.complete(call).await {
            Ok(reply) => {
                if reply.model == PRIMARY {
                    by_primary += 1;
                } else {
                    by_fallback += 1;
                }
                println!(
                    "step {step:>2}: {:<18} attempts {} in {:>4} ms: {}",
                    reply.model,
                    reply.attempts,
                    reply.latency.as_millis(),
                    reply.text().lines().next().unwrap_or("")
                );
                history.push((question, reply.text()));
                history.truncate(6);
            }
            Err(e) => {
                failed += 1;
                println!("step {step:>2}: no answer: {e}");
            }
        }
        if !live {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    let report = seawall.shutdown(Duration::from_secs(5)).await;
    println!(
        "\n{steps} steps: {by_primary} served by {PRIMARY}, {by_fallback} by {FALLBACK}, {failed} failed; \
         abandoned at shutdown: {}",
        report.abandoned
    );
    Ok(())
}

/// The scripted API: the primary is overloaded (529) from 0.4 s to 1.4 s after start.
fn incident() -> ScriptedUpstream {
    let up = ScriptedUpstream::new();
    let start = Arc::new(Instant::now());
    let s = start.clone();
    up.on(PRIMARY, move |_, n| {
        let t = s.elapsed();
        if t > Duration::from_millis(400) && t < Duration::from_millis(1400) {
            Answer::status(529, "overloaded_error").after(Duration::from_millis(15))
        } else {
            Answer::ok(PRIMARY, &format!("(primary) do task #{n}")).after(Duration::from_millis(30))
        }
    });
    up.on(FALLBACK, |_, n| {
        Answer::ok(FALLBACK, &format!("(fallback) do task #{n}")).after(Duration::from_millis(20))
    });
    up
}
