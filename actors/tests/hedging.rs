//! Hedged attempts and timeouts that know the request, through the real actors on paused time:
//! a hang costs the hedge delay, not a minute; the loser is cancelled and gives back what it
//! held; hedges are bounded by budget; streams never hedge after content.

use std::time::Duration;

mod support;

use seawall_actors::scripted::{Answer, ScriptedUpstream, StreamAnswer};
use seawall_actors::{
    BreakerConfig, Call, Hedge, Limits, Outcome, RetryBudgetConfig, RetryPolicy, Seawall, StateKind,
};
use support::{builder, drain, MS};
use tokio::time::Instant;

fn call() -> Call {
    Call::new("primary", 16).user("hello")
}

/// A stream whose first content comes at once, then nothing for `gap`.
fn content_then_silence(model: &str, gap: Duration) -> StreamAnswer {
    let mut answer = StreamAnswer::message(model, &["a", "b"], Duration::ZERO);
    if let StreamAnswer::Events { items, .. } = &mut answer {
        let second = items
            .iter()
            .enumerate()
            .filter(|(_, (_, e))| matches!(e, Ok(ev) if ev.is_content()))
            .nth(1)
            .map(|(i, _)| i);
        if let Some(i) = second {
            items[i].0 = gap;
        }
    }
    answer
}

fn policy(hedge: Hedge) -> RetryPolicy {
    RetryPolicy {
        hedge,
        ..RetryPolicy::default()
    }
}

async fn runtime(up: &ScriptedUpstream, policy: RetryPolicy) -> Seawall {
    builder(up)
        .chain_with("primary", ["primary", "fallback"], policy)
        .spawn()
        .await
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_hang_costs_the_hedge_delay_and_the_first_answer_wins() {
    let up = ScriptedUpstream::new();
    up.on("primary", |_, _| {
        Answer::ok("primary", "late").after(Duration::from_secs(600))
    });
    up.healthy("fallback", 30 * MS);
    let sw = runtime(&up, policy(Hedge::After(100 * MS))).await;
    let t0 = Instant::now();
    let reply = sw.complete(call()).await.unwrap();
    assert_eq!(
        t0.elapsed(),
        130 * MS,
        "the hedge at 100 ms, answered 30 ms later"
    );
    assert_eq!(reply.model, "fallback");
    assert_eq!(reply.attempts, 2);
    // The trail says what happened: the hedge answered, the hung attempt was cancelled.
    assert!(reply
        .trail
        .iter()
        .any(|r| r.model == "fallback"
            && matches!(r.outcome, Outcome::Attempted { hedge: true, .. })));
    assert!(reply
        .trail
        .iter()
        .any(|r| r.model == "primary" && r.outcome == Outcome::Cancelled { hedge: false }));
    // The cancelled attempt gave its permit back: nothing was learnt about the primary.
    tokio::task::yield_now().await;
    let status = sw.breaker_status("primary").await.unwrap();
    assert_eq!(status.state, StateKind::Closed);
    assert_eq!(
        status.stats.calls, 0,
        "a cancelled attempt is not a failure"
    );
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_attempt_keeps_its_budget_as_charged() {
    let up = ScriptedUpstream::new();
    up.on("primary", |_, _| {
        Answer::ok("primary", "late").after(Duration::from_secs(600))
    });
    up.healthy("fallback", 30 * MS);
    let sw = builder(&up)
        .chain_with(
            "primary",
            ["primary", "fallback"],
            policy(Hedge::After(100 * MS)),
        )
        .limits(
            "s",
            Limits {
                requests_per_minute: Some(600),
                input_tokens_per_minute: None,
                output_tokens_per_minute: None,
            },
        )
        .transit_allowance(Duration::ZERO)
        .spawn()
        .await
        .unwrap();
    sw.complete(call()).await.unwrap();
    tokio::task::yield_now().await;
    let level = sw.governor_status().await.unwrap()[0].buckets[0].levels[0].available;
    // Two requests went out (the upstream may have counted the cancelled one): 600 - 2, plus
    // the 130 ms of refill at 10 per second.
    assert!((level - (598.0 + 1.3)).abs() < 1e-6, "{level}");
}

#[tokio::test(start_paused = true)]
async fn no_hedge_without_retry_budget_and_at_most_one_per_call() {
    let up = ScriptedUpstream::new();
    up.on("primary", |_, _| {
        Answer::ok("primary", "slow").after(500 * MS)
    });
    up.on("fallback", |_, _| {
        Answer::ok("fallback", "slow too").after(500 * MS)
    });
    let sw = builder(&up)
        .chain_with(
            "primary",
            ["primary", "fallback"],
            policy(Hedge::After(100 * MS)),
        )
        // No retries allowed at all: a hedge is a retry for the budget.
        .retry_budget(RetryBudgetConfig {
            ratio: 0.0,
            window: Duration::from_secs(10),
            min_per_sec: 0.0,
        })
        .spawn()
        .await
        .unwrap();
    let t0 = Instant::now();
    let reply = sw.complete(call()).await.unwrap();
    assert_eq!(reply.model, "primary");
    assert_eq!(t0.elapsed(), 500 * MS, "no hedge was started");
    assert_eq!(up.calls("fallback"), 0);

    // With budget, one hedge and no more, even though both are slow.
    let up = ScriptedUpstream::new();
    up.on("primary", |_, _| {
        Answer::ok("primary", "slow").after(500 * MS)
    });
    up.on("fallback", |_, _| {
        Answer::ok("fallback", "slow too").after(500 * MS)
    });
    let sw = runtime(&up, policy(Hedge::After(100 * MS))).await;
    let reply = sw.complete(call()).await.unwrap();
    assert_eq!(reply.model, "primary", "the first answer wins");
    assert_eq!(up.calls("primary") + up.calls("fallback"), 2);
}

#[tokio::test(start_paused = true)]
async fn hedging_off_waits_out_the_attempt() {
    let up = ScriptedUpstream::new();
    up.on("primary", |_, _| {
        Answer::ok("primary", "slow").after(500 * MS)
    });
    up.healthy("fallback", 30 * MS);
    let sw = runtime(&up, policy(Hedge::Off)).await;
    let t0 = Instant::now();
    assert_eq!(sw.complete(call()).await.unwrap().model, "primary");
    assert_eq!(t0.elapsed(), 500 * MS);
    assert_eq!(up.calls("fallback"), 0);
}

#[tokio::test(start_paused = true)]
async fn the_automatic_hedge_learns_the_models_latency() {
    let up = ScriptedUpstream::new();
    // 40 ms answers, except every 25th call hangs.
    up.on("primary", |_, n| {
        if n % 25 == 24 {
            Answer::ok("primary", "late").after(Duration::from_secs(600))
        } else {
            Answer::ok("primary", "ok").after(40 * MS)
        }
    });
    up.healthy("fallback", 30 * MS);
    let sw = runtime(&up, RetryPolicy::default()).await;
    let mut worst = Duration::ZERO;
    for i in 0..100 {
        let t0 = Instant::now();
        sw.complete(call()).await.unwrap();
        if i >= 30 {
            worst = worst.max(t0.elapsed());
        }
    }
    // Learned: hedged after twice ~40 ms (the floor is 50 ms), answered 30 ms later.
    assert_eq!(worst, 110 * MS, "a hang costs the learned hedge delay");
    // Hedges only for the hangs (4 of 100), plus the ones before learning.
    let total = up.calls("primary") + up.calls("fallback");
    assert!(total <= 106, "{total} upstream attempts for 100 calls");
}

#[tokio::test(start_paused = true)]
async fn a_stream_hedges_before_its_first_content_never_after() {
    let up = ScriptedUpstream::new();
    // Content at 50 ms, then a slow stream: no hedge after content, whatever its delay.
    up.on_stream("primary", |_, _| {
        content_then_silence("primary", 300 * MS).head_after(50 * MS)
    });
    up.on_stream("fallback", |_, _| {
        StreamAnswer::message("fallback", &["x"], MS).head_after(10 * MS)
    });
    let hedged = RetryPolicy {
        hedge: Hedge::After(100 * MS),
        hedge_streams: true,
        ..RetryPolicy::default()
    };
    let sw = runtime(&up, hedged.clone()).await;
    let reply = sw.stream(call()).await.unwrap();
    assert_eq!(reply.model, "primary");
    drain(reply).await;
    assert_eq!(
        up.calls("fallback"),
        0,
        "committed at content: never hedged"
    );

    // A stream whose head never comes is hedged before content.
    let up = ScriptedUpstream::new();
    up.on_stream("primary", |_, _| {
        StreamAnswer::message("primary", &["a"], MS).head_after(Duration::from_secs(600))
    });
    up.on_stream("fallback", |_, _| {
        StreamAnswer::message("fallback", &["x"], MS).head_after(10 * MS)
    });
    let sw = runtime(&up, hedged).await;
    let t0 = Instant::now();
    let reply = sw.stream(call()).await.unwrap();
    assert_eq!(reply.model, "fallback");
    assert_eq!(
        t0.elapsed(),
        111 * MS,
        "hedged at 100 ms; content 11 ms later"
    );
    drain(reply).await;
}

#[tokio::test(start_paused = true)]
async fn a_silent_stream_ends_with_an_error_event_at_the_idle_timeout() {
    let up = ScriptedUpstream::new();
    up.on_stream("primary", |_, _| {
        content_then_silence("primary", Duration::from_secs(600))
    });
    let sw = builder(&up)
        .model("primary", BreakerConfig::default())
        .retry_policy(RetryPolicy {
            idle_timeout: Duration::from_secs(5),
            ..RetryPolicy::default()
        })
        .spawn()
        .await
        .unwrap();
    let reply = sw.stream(call()).await.unwrap();
    let t0 = Instant::now();
    let events = drain(reply).await;
    let last = events.last().unwrap();
    assert_eq!(last.event, "error");
    assert!(last.data.contains("timeout_error"), "{}", last.data);
    assert!(last.data.contains("sent nothing for 5s"), "{}", last.data);
    assert_eq!(
        t0.elapsed(),
        Duration::from_secs(5),
        "not the 2-minute deadline"
    );
}
