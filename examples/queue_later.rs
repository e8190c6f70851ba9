//! The durable queue for later: a code-generation chain that must not get a smaller model or a
//! stale answer queues its calls while the model is down, and gets every answer once it is back.
//!
//! Run: `cargo run --example queue_later` (no API key, no server: an in-process scripted upstream
//! plays a model that is down for its first 3 seconds; jobs live in a redb file in the temp dir).

use std::sync::Arc;
use std::time::{Duration, Instant};

use seawall::core::scripted::{Answer, ScriptedUpstream};
use seawall::core::{
    BreakerConfig, Call, Degrade, Event, JobState, QueueConfig, RetryPolicy, Seawall, Source,
};
use seawall::jobstore::RedbJobStore;

const MODEL: &str = "claude-sonnet-4-5";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let t0 = Instant::now();
    let up = ScriptedUpstream::new();
    up.on(MODEL, move |_, n| {
        if t0.elapsed() < Duration::from_secs(3) {
            Answer::status(529, "overloaded_error")
        } else {
            Answer::ok(MODEL, &format!("fn answer_{n}() {{}}"))
        }
    });
    let path =
        std::env::temp_dir().join(format!("seawall-queue-example-{}.redb", std::process::id()));
    let store = Arc::new(RedbJobStore::open(&path)?);
    let seawall = Seawall::builder()
        .upstream("scripted", up)
        .model(
            MODEL,
            BreakerConfig::consecutive_failures(3, Duration::from_secs(1)),
        )
        // Code generation: no smaller fallback, no cache: queue it.
        .chain_with(
            "codegen",
            [MODEL],
            RetryPolicy {
                deadline: Duration::from_millis(500),
                degrade: vec![Degrade::Queue],
                ..RetryPolicy::default()
            },
        )
        .queue(
            store,
            QueueConfig {
                poll: Duration::from_millis(200),
                ttl: Duration::from_secs(60),
                ..QueueConfig::default()
            },
        )
        .spawn()
        .await?;

    let mut events = seawall.subscribe();
    tokio::spawn(async move {
        while let Ok(ev) = events.recv().await {
            if let Event::Job { id, outcome, .. } = ev {
                println!(
                    "{:>6.2}s  event: job {id} {outcome}",
                    t0.elapsed().as_secs_f64()
                );
            }
        }
    });

    let mut ids = Vec::new();
    for n in 0..4 {
        let call = Call::new(MODEL, 256)
            .user(&format!("write function number {n}"))
            .chain("codegen");
        let reply = seawall.complete(call).await?;
        match reply.source {
            Source::Queued => {
                let id = reply.job_id().ok_or("a queued reply carries its job id")?;
                println!(
                    "{:>6.2}s  call {n}: model down, queued as {id} (HTTP {})",
                    t0.elapsed().as_secs_f64(),
                    reply.status
                );
                ids.push(id);
            }
            other => println!("call {n}: answered ({})", other.as_str()),
        }
    }

    for id in &ids {
        match seawall.wait_job(id, Duration::from_secs(30)).await? {
            Some(job) => match job.state {
                JobState::Done { model, body, .. } => {
                    let text = serde_json::from_str::<serde_json::Value>(&body)?
                        .pointer("/content/0/text")
                        .and_then(|t| t.as_str().map(str::to_owned))
                        .unwrap_or_default();
                    println!(
                        "{:>6.2}s  {id}: done by {model} after {} replay(s): {text}",
                        t0.elapsed().as_secs_f64(),
                        job.runs
                    );
                }
                other => println!("{id}: {}", other.as_str()),
            },
            None => println!("{id}: unknown"),
        }
    }
    seawall.shutdown(Duration::from_secs(1)).await;
    let _ = std::fs::remove_file(&path);
    Ok(())
}
