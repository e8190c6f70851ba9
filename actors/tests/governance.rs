//! Rate governance rules on paused time: lanes, reserves, bulkheads, burst pacing, server truth,
//! key pool, per-class buckets, deadline-aware waiting. Every instant asserted is exact.

mod support;

use std::time::Duration;

use seawall_actors::runtime::DEFAULT_TRANSIT_ALLOWANCE;
use seawall_actors::scripted::{Answer, ScriptedUpstream};
use seawall_actors::{Bulkhead, Call, Error, Lane, Limits, Outcome, Seawall};
use support::{builder, secs};
use tokio::time::Instant;

fn rpm(n: u64) -> Limits {
    Limits {
        requests_per_minute: Some(n),
        ..Limits::default()
    }
}

fn call(model: &str) -> Call {
    Call::new(model, 16).user("hi").timeout(secs(600))
}

/// Start times (whole seconds since `t0`) of the upstream's attempts, in arrival order.
fn starts(up: &ScriptedUpstream, t0: Instant) -> Vec<u64> {
    up.log()
        .iter()
        .map(|l| (l.at - t0.into_std()).as_secs())
        .collect()
}

/// Spawn calls one microsecond apart so their arrival order is known.
fn spawn_all(
    sw: &Seawall,
    calls: Vec<Call>,
) -> Vec<tokio::task::JoinHandle<Result<seawall_actors::Reply, Error>>> {
    calls
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let sw = sw.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_micros(i as u64)).await;
                sw.complete(c).await
            })
        })
        .collect()
}

async fn all_ok(
    handles: Vec<tokio::task::JoinHandle<Result<seawall_actors::Reply, Error>>>,
) -> Vec<seawall_actors::Reply> {
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("no panic").expect("served"));
    }
    out
}

#[tokio::test(start_paused = true)]
async fn a_burst_is_paced_across_the_refill_not_fired_at_once() {
    let up = ScriptedUpstream::new();
    up.healthy("m", Duration::ZERO);
    // 6 per minute: a full bucket of 6, then one every 10 s.
    let sw = builder(&up)
        .chain("m", ["m"])
        .limits("s", rpm(6))
        .spawn()
        .await
        .unwrap();
    let t0 = Instant::now();
    all_ok(spawn_all(&sw, (0..10).map(|_| call("m")).collect())).await;
    assert_eq!(starts(&up, t0), vec![0, 0, 0, 0, 0, 0, 10, 20, 30, 40]);
}

#[tokio::test(start_paused = true)]
async fn interactive_calls_are_granted_before_background_ones() {
    let up = ScriptedUpstream::new();
    up.on("m", |a, _| {
        Answer::ok("m", &format!("retry {}", a.retry_count))
    });
    let sw = builder(&up)
        .chain("m", ["m"])
        .limits("s", rpm(2))
        .spawn()
        .await
        .unwrap();
    let t0 = Instant::now();
    // Use up the bucket, then queue two background calls before one interactive call.
    for _ in 0..2 {
        sw.complete(call("m")).await.unwrap();
    }
    let calls = vec![
        call("m").lane(Lane::Background).system("bg-1"),
        call("m").lane(Lane::Background).system("bg-2"),
        call("m").system("interactive"),
    ];
    let handles = spawn_all(&sw, calls);
    let replies = all_ok(handles).await;
    // Refill brings one request every 30 s: the interactive call, which arrived last, goes first.
    // Arrivals are staggered by a millisecond (the timer's resolution): round to seconds.
    let at = |r: &seawall_actors::Reply| r.latency.as_secs_f64().round() as u64;
    assert_eq!(at(&replies[2]), 30, "interactive first");
    assert_eq!(
        (at(&replies[0]), at(&replies[1])),
        (60, 90),
        "background in arrival order"
    );
    assert_eq!(starts(&up, t0), vec![0, 0, 30, 60, 90]);
}

#[tokio::test(start_paused = true)]
async fn background_cannot_use_the_interactive_reserve() {
    let up = ScriptedUpstream::new();
    up.healthy("m", Duration::ZERO);
    // 10 per minute, 40% held for interactive: background gets 6 at once, interactive all 10.
    let sw = builder(&up)
        .chain("m", ["m"])
        .limits("s", rpm(10))
        .interactive_reserve(0.4)
        .spawn()
        .await
        .unwrap();
    let bg: Vec<Call> = (0..7)
        .map(|_| call("m").lane(Lane::Background).timeout(secs(1)))
        .collect();
    let handles = spawn_all(&sw, bg);
    let mut served = 0;
    for h in handles {
        if h.await.unwrap().is_ok() {
            served += 1;
        }
    }
    assert_eq!(served, 6, "background stops at the reserve");
    // Interactive still finds the reserve there.
    let handles = spawn_all(&sw, (0..4).map(|_| call("m").timeout(secs(1))).collect());
    all_ok(handles).await;
    assert_eq!(up.calls("m"), 10);
}

#[tokio::test(start_paused = true)]
async fn a_bulkhead_caps_a_features_concurrency_without_touching_others() {
    let up = ScriptedUpstream::new();
    up.healthy("m", secs(10));
    let sw = builder(&up)
        .chain("m", ["m"])
        .bulkhead(
            "batch",
            Bulkhead {
                max_concurrent: Some(2),
                budget_share: None,
            },
        )
        .spawn()
        .await
        .unwrap();
    let t0 = Instant::now();
    let mut calls: Vec<Call> = (0..5).map(|_| call("m").feature("batch")).collect();
    calls.push(call("m").feature("chat"));
    let replies = all_ok(spawn_all(&sw, calls)).await;
    // Two batch calls at a time, each 10 s; chat goes at once.
    let mut s = starts(&up, t0);
    s.sort();
    assert_eq!(s, vec![0, 0, 0, 10, 10, 20]);
    assert_eq!(replies[5].latency, secs(10), "chat never waited");
}

#[tokio::test(start_paused = true)]
async fn a_bulkhead_budget_share_keeps_a_batch_job_from_starving_chat() {
    let up = ScriptedUpstream::new();
    up.healthy("m", Duration::ZERO);
    // 10 per minute; the batch feature may use 20% of it.
    let sw = builder(&up)
        .chain("m", ["m"])
        .limits("s", rpm(10))
        .bulkhead(
            "batch",
            Bulkhead {
                max_concurrent: None,
                budget_share: Some(0.2),
            },
        )
        .spawn()
        .await
        .unwrap();
    let batch: Vec<Call> = (0..5)
        .map(|_| call("m").feature("batch").timeout(secs(1)))
        .collect();
    let mut served = 0;
    for h in spawn_all(&sw, batch) {
        if h.await.unwrap().is_ok() {
            served += 1;
        }
    }
    assert_eq!(served, 2, "the batch job got its 20%");
    let chat: Vec<Call> = (0..8)
        .map(|_| call("m").feature("chat").timeout(secs(1)))
        .collect();
    all_ok(spawn_all(&sw, chat)).await;
}

#[tokio::test(start_paused = true)]
async fn server_truth_slows_the_governor_before_a_429() {
    let up = ScriptedUpstream::new();
    // Another client shares the organization: the server says only 2 requests are left.
    up.on("m", |_, _| {
        Answer::ok("m", "ok")
            .header("anthropic-ratelimit-requests-limit", "60")
            .header("anthropic-ratelimit-requests-remaining", "2")
    });
    let sw = builder(&up)
        .chain("m", ["m"])
        .limits("s", rpm(60))
        // Exact instants below are the server's pace alone; the allowance is tested on its own.
        .transit_allowance(Duration::ZERO)
        .spawn()
        .await
        .unwrap();
    let t0 = Instant::now();
    sw.complete(call("m")).await.unwrap();
    // Locally 59 are left, but the server said 2 (rounded down: fewer than 3). One goes at once,
    // the next two at 1 ms (arrivals are staggered by the timer's millisecond, which refills the
    // server's fraction to a whole third request), then one per refill second.
    all_ok(spawn_all(&sw, (0..4).map(|_| call("m")).collect())).await;
    let ms: Vec<u128> = up
        .log()
        .iter()
        .map(|l| (l.at - t0.into_std()).as_millis())
        .collect();
    assert_eq!(ms, vec![0, 0, 1, 1, 1001]);
}

#[tokio::test(start_paused = true)]
async fn a_429_pauses_that_key_and_shifts_traffic_to_the_others() {
    let up = ScriptedUpstream::new().with_keys(2);
    up.on("a", |att, _| {
        if att.key == 0 {
            Answer::status(429, "rate_limit_error").header("retry-after", "20")
        } else {
            Answer::ok("a", "key 1")
        }
    });
    up.on("b", |_, _| Answer::ok("b", "fallback"));
    let sw = builder(&up).chain("a", ["a", "b"]).spawn().await.unwrap();
    let r = sw.complete(call("a")).await.unwrap();
    assert_eq!(r.model, "b", "the 429 moved the call on at once");
    for _ in 0..3 {
        let r = sw.complete(call("a")).await.unwrap();
        assert_eq!(r.model, "a");
    }
    let keys: Vec<usize> = up.log().iter().map(|l| l.key).collect();
    assert_eq!(
        keys,
        vec![0, 1, 1, 1, 1],
        "key 0 is paused for its retry-after"
    );
    let status = sw.governor_status().await.unwrap();
    assert_eq!(status[0].paused_keys.len(), 1);
    assert_eq!(status[0].paused_keys[0].1, secs(20));
}

#[tokio::test(start_paused = true)]
async fn keys_of_different_organizations_have_separate_buckets() {
    let up = ScriptedUpstream::new().with_keys(3);
    up.healthy("m", Duration::ZERO);
    let sw = builder(&up)
        .chain("m", ["m"])
        .limits("s", rpm(1))
        .key_organizations("s", ["org-a", "org-a", "org-b"])
        .spawn()
        .await
        .unwrap();
    let t0 = Instant::now();
    all_ok(spawn_all(&sw, (0..4).map(|_| call("m")).collect())).await;
    // One per organization at once; then each organization refills one a minute.
    assert_eq!(starts(&up, t0), vec![0, 0, 60, 60]);
    let mut orgs: Vec<usize> = up.log().iter().take(2).map(|l| l.key).collect();
    orgs.sort();
    assert!(
        orgs.contains(&2),
        "org-b's key served one of the first two: {orgs:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn model_classes_have_their_own_buckets() {
    let up = ScriptedUpstream::new();
    up.healthy("small", Duration::ZERO);
    up.healthy("big", Duration::ZERO);
    let sw = builder(&up)
        .chain("small", ["small"])
        .chain("big", ["big"])
        .limits("s", rpm(100))
        .class_limits("s", "haiku-class", ["small"], rpm(1))
        .spawn()
        .await
        .unwrap();
    let handles = spawn_all(
        &sw,
        vec![
            call("small").timeout(secs(5)),
            call("small").timeout(secs(5)),
            call("big"),
            call("big"),
        ],
    );
    let mut results = Vec::new();
    for h in handles {
        results.push(h.await.unwrap());
    }
    assert!(results[0].is_ok());
    let err = results[1]
        .as_ref()
        .expect_err("the class bucket is empty for a minute");
    assert!(matches!(err.trail()[0].outcome, Outcome::NoBudget { .. }));
    assert!(
        results[2].is_ok() && results[3].is_ok(),
        "the default class is untouched"
    );
}

#[tokio::test(start_paused = true)]
async fn when_every_hop_is_out_of_budget_the_call_waits_for_the_earliest_recovery() {
    let up = ScriptedUpstream::new();
    up.healthy("a", Duration::ZERO);
    up.healthy("b", Duration::ZERO);
    let sw = Seawall::builder()
        .upstream("u1", up.clone())
        .upstream("u2", up.clone())
        .model_on("a", "u1", None)
        .model_on("b", "u2", None)
        .chain("a", ["a", "b"])
        .limits("u1", rpm(2)) // refills one every 30 s
        .limits("u2", rpm(1)) // refills one every 60 s
        .spawn()
        .await
        .unwrap();
    // Empty both buckets (a's two, then b's one, all at the same instant).
    for _ in 0..3 {
        sw.complete(call("a")).await.unwrap();
    }
    let t0 = Instant::now();
    let r = sw
        .complete(call("a").timeout(secs(45)))
        .await
        .expect("waits for a's refill");
    assert_eq!(r.model, "a");
    // a's refill counts from the transit allowance after its bucket started to drain.
    assert_eq!(t0.elapsed(), secs(30) + DEFAULT_TRANSIT_ALLOWANCE);
    // A deadline shorter than any recovery is refused at once, with the time to come back.
    let t1 = Instant::now();
    let err = sw
        .complete(call("a").timeout(secs(10)))
        .await
        .expect_err("no budget within 10 s");
    assert_eq!(t1.elapsed(), Duration::ZERO);
    assert!(err.retry_after().is_some());
}

#[tokio::test(start_paused = true)]
async fn count_tokens_estimates_reserve_what_the_provider_counts() {
    // The heuristic would call this ~10 tokens; the provider's counter says 600.
    let up = ScriptedUpstream::new().with_token_counter(|_| 600);
    up.healthy("m", Duration::from_millis(500));
    let limits = Limits {
        input_tokens_per_minute: Some(1000),
        ..Limits::default()
    };
    let start = |estimate| {
        builder(&up)
            .chain_with(
                "m",
                ["m"],
                seawall_actors::RetryPolicy {
                    estimate,
                    ..seawall_actors::RetryPolicy::default()
                },
            )
            .limits("s", limits)
            .spawn()
    };
    // Two calls in flight together: both are reserved before either settles.
    let counted = start(seawall_actors::Estimate::CountTokens).await.unwrap();
    let pair = || vec![call("m").timeout(secs(1)), call("m").timeout(secs(1))];
    let mut results = Vec::new();
    for h in spawn_all(&counted, pair()) {
        results.push(h.await.unwrap());
    }
    assert!(results[0].is_ok());
    let err = results[1]
        .as_ref()
        .expect_err("600 + 600 > 1000: the second would wait ~12 s for refill");
    assert!(
        matches!(err.trail()[0].outcome, Outcome::NoBudget { .. }),
        "{err}"
    );
    // With the heuristic (~10 tokens each) both fit.
    let guessed = start(seawall_actors::Estimate::Heuristic).await.unwrap();
    all_ok(spawn_all(&guessed, pair())).await;
}

#[tokio::test(start_paused = true)]
async fn an_attempt_that_timed_out_keeps_its_budget_charged() {
    let up = ScriptedUpstream::new();
    // The upstream took the request (and counted it) but never answered in time.
    up.on("m", |_, _| Answer::ok("m", "late").after(secs(3600)));
    let sw = builder(&up)
        .chain_with(
            "m",
            ["m"],
            seawall_actors::RetryPolicy {
                attempt_timeout: secs(1),
                ..seawall_actors::RetryPolicy::default()
            },
        )
        .limits("s", rpm(1))
        .spawn()
        .await
        .unwrap();
    sw.complete(call("m").timeout(secs(2)))
        .await
        .expect_err("timed out");
    // Believing the timed-out request was free would send a second one the server refuses.
    let err = sw
        .complete(call("m").timeout(secs(5)))
        .await
        .expect_err("the minute's request is spent");
    assert!(
        matches!(err.trail()[0].outcome, Outcome::NoBudget { .. }),
        "{err}"
    );
    assert_eq!(up.calls("m"), 1);
}
