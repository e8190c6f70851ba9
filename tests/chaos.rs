//! The chaos suite: every fault kind through the real runtime (actors + AnthropicUpstream) against
//! the simulator over real loopback HTTP, in real time with millisecond-scale settings.
//!
//! Each test checks what the caller gets, how many requests the simulator saw, that every call
//! is answered exactly once, and that nothing permanent is retried.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use seawall::core::{
    Backoff, BreakerConfig, Call, Error, Jitter, Limits, Outcome, RetryPolicy, Seawall, WindowKind,
};
use seawall::sim::LogEntry;
use support::sim::{anthropic, sim};

const KEY: &str = "sk-ant-sim-chaos-0001";

fn fast_policy() -> RetryPolicy {
    RetryPolicy {
        backoff: Backoff {
            base: Duration::from_millis(50),
            cap: Duration::from_millis(400),
            max_attempts: 3,
            jitter: Jitter::Full,
        },
        deadline: Duration::from_secs(3),
        attempt_timeout: Duration::from_secs(1),
        min_attempt: Duration::from_millis(20),
        max_attempts: 6,
        ..RetryPolicy::default()
    }
}

fn call(model: &str) -> Call {
    Call::new(model, 32).user("hello from the chaos suite")
}

fn statuses(log: &[LogEntry], model: &str) -> Vec<Option<u16>> {
    log.iter()
        .filter(|e| e.model.as_deref() == Some(model))
        .map(|e| e.status)
        .collect()
}

/// Fire `n` calls at a steady `interval`, each in its own task; return (start offset, result).
async fn steady(
    sw: &Seawall,
    model: &str,
    n: usize,
    interval: Duration,
) -> Vec<(Duration, Result<seawall::core::Reply, Error>)> {
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let at = t0 + interval * i as u32;
        tokio::time::sleep_until(at.into()).await;
        let sw = sw.clone();
        let model = model.to_owned();
        tasks.push(tokio::spawn(async move {
            (at - t0, sw.complete(call(&model)).await)
        }));
    }
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.expect("no call panicked"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_falls_back_at_once_and_spares_the_dead_model() {
    // The primary answers 529 for its first 1.5 s; the fallback is healthy throughout.
    let sim = sim(r#"
        seed = 1
        [[models]]
        name = "primary"
        latency = "5ms"
        [[models.faults]]
        kind = "status"
        status = 529
        until = "1500ms"
        [[models]]
        name = "fallback"
        latency = "15ms"
    "#)
    .await;
    let open_for = Duration::from_millis(300);
    let sw = Seawall::builder()
        .upstream("sim", anthropic(sim.base_url(), &[KEY]))
        .breaker_defaults(BreakerConfig {
            window: WindowKind::Count(10),
            min_calls: 5,
            failure_rate: 50.0,
            half_open_calls: 1,
            open_for,
            ..BreakerConfig::default()
        })
        .chain_with("primary", ["primary", "fallback"], fast_policy())
        .spawn()
        .await
        .unwrap();

    // 40 requests/s for 2.5 s: 1.5 s of outage, then 1 s of recovery.
    let results = steady(&sw, "primary", 100, Duration::from_millis(25)).await;
    assert_eq!(results.len(), 100, "every call answered exactly once");
    for (at, r) in &results {
        let reply = r
            .as_ref()
            .unwrap_or_else(|e| panic!("call at {at:?} failed: {e}"));
        // Never a backoff sleep on the primary before falling back: at most one primary attempt.
        let primary_attempts = reply
            .trail
            .iter()
            .filter(|s| s.model == "primary" && matches!(s.outcome, Outcome::Attempted { .. }))
            .count();
        assert!(primary_attempts <= 1, "call at {at:?}: {:?}", reply.trail);
        if reply.model == "fallback" && primary_attempts == 1 {
            assert_eq!(reply.attempts, 2);
        }
    }
    let log = sim.log();
    let dead: Vec<_> = log
        .iter()
        .filter(|e| e.model.as_deref() == Some("primary") && e.status == Some(529))
        .collect();
    // The breaker's threshold (5) plus one half-open probe per open period of the 1.5 s outage
    // (at most 5), with room for calls already in flight when it tripped.
    assert!(
        dead.len() <= 5 + 5 + 2,
        "dead model saw {} calls",
        dead.len()
    );
    println!("outage: the dead model saw {} calls", dead.len());
    // After recovery the primary serves again within the open duration plus one probe.
    let first_ok = log
        .iter()
        .find(|e| e.model.as_deref() == Some("primary") && e.status == Some(200))
        .expect("the primary recovers");
    assert!(
        first_ok.at_ms <= 1500 + open_for.as_millis() as u64 + 100,
        "primary back at {} ms",
        first_ok.at_ms
    );
    let late_primary = results
        .iter()
        .filter(|(at, r)| {
            *at > Duration::from_millis(2100) && r.as_ref().unwrap().model == "primary"
        })
        .count();
    let late = results
        .iter()
        .filter(|(at, _)| *at > Duration::from_millis(2100))
        .count();
    assert_eq!(
        late_primary, late,
        "after recovery every call is served by the primary"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_with_the_sims_limits_the_runtime_causes_no_429() {
    let sim = sim(r#"
        seed = 2
        [limits]
        requests_per_minute = 60
        input_tokens_per_minute = 100000
        output_tokens_per_minute = 100000
        [[models]]
        name = "m"
        latency = "2ms"
    "#)
    .await;
    let limits = Limits {
        requests_per_minute: Some(60),
        input_tokens_per_minute: Some(100_000),
        output_tokens_per_minute: Some(100_000),
    };
    let policy = RetryPolicy {
        deadline: Duration::from_millis(1500),
        ..fast_policy()
    };
    let sw = Seawall::builder()
        .upstream("sim", anthropic(sim.base_url(), &[KEY]))
        .limits("sim", limits)
        .chain_with("m", ["m"], policy)
        .spawn()
        .await
        .unwrap();
    // 150 calls in 1 s: 2.5x what a minute's bucket holds, all at once.
    let results = steady(&sw, "m", 150, Duration::from_millis(6)).await;
    assert_eq!(results.len(), 150);
    let served = results.iter().filter(|(_, r)| r.is_ok()).count();
    let log = sim.log();
    assert_eq!(
        log.iter().filter(|e| e.status == Some(429)).count(),
        0,
        "the simulator never had to say 429"
    );
    println!("rate limits: {served} of 150 served live, 0 upstream 429s");
    assert!(served >= 60, "the whole bucket was used: {served} served");
    assert_eq!(
        log.len(),
        served,
        "refused calls never reached the upstream"
    );
    for (_, r) in results.iter().filter(|(_, r)| r.is_err()) {
        let e = r.as_ref().unwrap_err();
        assert!(matches!(e, Error::Unavailable { .. }), "{e}");
        assert!(e.retry_after().is_some(), "an honest retry-after: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_and_should_retry_false_obeyed() {
    let sim = sim(r#"
        seed = 3
        [[models]]
        name = "limited"
        latency = "1ms"
        [[models.faults]]
        kind = "status"
        status = 429
        retry_after = 0.3
        until = "100ms"
        [[models]]
        name = "refuses"
        latency = "1ms"
        [[models.faults]]
        kind = "status"
        status = 503
        should_retry = false
    "#)
    .await;
    let sw = Seawall::builder()
        .upstream("sim", anthropic(sim.base_url(), &[KEY]))
        .chain_with("limited", ["limited"], fast_policy())
        .chain_with("refuses", ["refuses"], fast_policy())
        .spawn()
        .await
        .unwrap();
    let reply = sw
        .complete(call("limited"))
        .await
        .expect("served after retry-after");
    assert_eq!(reply.attempts, 2);
    let log = sim.log();
    assert_eq!(statuses(&log, "limited"), vec![Some(429), Some(200)]);
    assert!(
        log[1].at_ms - log[0].at_ms >= 300,
        "no attempt before retry-after: {} ms apart",
        log[1].at_ms - log[0].at_ms
    );
    assert_eq!(log[1].retry_count, Some(1));

    let err = sw.complete(call("refuses")).await.expect_err("refused");
    assert!(matches!(err, Error::Rejected { status: 503, .. }), "{err}");
    assert_eq!(statuses(&sim.log(), "refuses"), vec![Some(503)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hang_and_slow_first_byte_are_cut_by_the_attempt_timeout_then_fail_over() {
    let sim = sim(r#"
        seed = 4
        [[models]]
        name = "hangs"
        [[models.faults]]
        kind = "hang"
        [[models]]
        name = "slow"
        [[models.faults]]
        kind = "slow_first_byte"
        delay = "3s"
        [[models]]
        name = "ok"
        latency = "5ms"
    "#)
    .await;
    let policy = RetryPolicy {
        attempt_timeout: Duration::from_millis(200),
        ..fast_policy()
    };
    let sw = Seawall::builder()
        .upstream("sim", anthropic(sim.base_url(), &[KEY]))
        .chain_with("hangs", ["hangs", "ok"], policy.clone())
        .chain_with("slow", ["slow", "ok"], policy)
        .spawn()
        .await
        .unwrap();
    for model in ["hangs", "slow"] {
        let t = Instant::now();
        let reply = sw.complete(call(model)).await.expect("failed over");
        let took = t.elapsed();
        assert_eq!(reply.model, "ok");
        assert!(took >= Duration::from_millis(200), "{model}: {took:?}");
        assert!(
            took < Duration::from_secs(2),
            "{model}: cut, not waited out: {took:?}"
        );
        assert_eq!(sim.count(model), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_bodies_and_resets_are_retried() {
    let sim = sim(r#"
        seed = 5
        [[models]]
        name = "truncates"
        latency = "1ms"
        [[models.faults]]
        kind = "truncated"
        until = "60ms"
        [[models]]
        name = "resets"
        latency = "1ms"
        [[models.faults]]
        kind = "reset"
        until = "60ms"
    "#)
    .await;
    let policy = RetryPolicy {
        backoff: Backoff {
            base: Duration::from_millis(150),
            jitter: Jitter::None,
            ..fast_policy().backoff
        },
        ..fast_policy()
    };
    let sw = Seawall::builder()
        .upstream("sim", anthropic(sim.base_url(), &[KEY]))
        .chain_with("truncates", ["truncates"], policy.clone())
        .chain_with("resets", ["resets"], policy)
        .spawn()
        .await
        .unwrap();
    let (a, b) = tokio::join!(sw.complete(call("truncates")), sw.complete(call("resets")));
    for (model, r) in [("truncates", a), ("resets", b)] {
        let reply = r.unwrap_or_else(|e| panic!("{model}: {e}"));
        assert_eq!(reply.attempts, 2, "{model}: {:?}", reply.trail);
        let log = sim.log();
        let seen: Vec<_> = log
            .iter()
            .filter(|e| e.model.as_deref() == Some(model))
            .map(|e| e.outcome.clone())
            .collect();
        assert_eq!(seen.len(), 2, "{model}: {seen:?}");
        assert_eq!(seen[1], "ok", "{model}: {seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_quarantined_and_the_other_key_serves() {
    let sim = sim(r#"
        seed = 6
        keys = ["sk-ant-sim-good-2222"]
        revoked_keys = ["sk-ant-sim-revoked-1111"]
        [[models]]
        name = "m"
        latency = "1ms"
    "#)
    .await;
    let sw = Seawall::builder()
        .upstream(
            "sim",
            anthropic(
                sim.base_url(),
                &["sk-ant-sim-revoked-1111", "sk-ant-sim-good-2222"],
            ),
        )
        .chain_with("m", ["m"], fast_policy())
        .spawn()
        .await
        .unwrap();
    for _ in 0..5 {
        sw.complete(call("m")).await.expect("the good key serves");
    }
    let log = sim.log();
    let revoked = log
        .iter()
        .filter(|e| e.key_tail.as_deref() == Some("1111"))
        .count();
    assert_eq!(revoked, 1, "the revoked key is used once, then never again");
    assert_eq!(log.len(), 6);
    let status = sw.governor_status().await.unwrap();
    assert_eq!(status[0].quarantined_keys.len(), 1);
    assert!(
        !format!("{status:?}").contains("revoked-1111"),
        "no key in status"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_models_down_gives_an_honest_error_with_retry_after_promptly() {
    let sim = sim(r#"
        seed = 7
        [[models]]
        name = "a"
        latency = "2ms"
        [[models.faults]]
        kind = "status"
        status = 529
        [[models]]
        name = "b"
        latency = "2ms"
        [[models.faults]]
        kind = "status"
        status = 503
    "#)
    .await;
    let open_for = Duration::from_secs(5);
    let sw = Seawall::builder()
        .upstream("sim", anthropic(sim.base_url(), &[KEY]))
        .breaker_defaults(BreakerConfig::consecutive_failures(2, open_for))
        .chain_with("a", ["a", "b"], fast_policy())
        .spawn()
        .await
        .unwrap();
    let sw = Arc::new(sw);
    for i in 0..3 {
        let t = Instant::now();
        let err = sw.complete(call("a")).await.expect_err("nothing can serve");
        let took = t.elapsed();
        assert!(
            took < Duration::from_secs(1),
            "call {i} answered in {took:?}"
        );
        let ra = err.retry_after().expect("retry-after given");
        assert!(ra > Duration::ZERO && ra <= open_for, "call {i}: {ra:?}");
        assert!(matches!(err, Error::Unavailable { .. }), "{err}");
    }
    // Two failures per model opened both breakers; later calls cost the upstream nothing.
    assert_eq!(sim.count("a"), 2);
    assert_eq!(sim.count("b"), 2);
}

/// The outage at the scale users quote: 10 s of 529s at 20 requests/s, default breaker with a
/// 3 s open duration. LiteLLM's retry loop costs the dead model ~500 calls here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_second_outage_costs_the_dead_model_at_most_twenty_calls() {
    let sim = sim(r#"
        seed = 8
        [[models]]
        name = "primary"
        latency = "20ms"
        [[models.faults]]
        kind = "status"
        status = 529
        until = "10s"
        [[models]]
        name = "fallback"
        latency = "30ms"
    "#)
    .await;
    let open_for = Duration::from_secs(3);
    let sw = Seawall::builder()
        .upstream("sim", anthropic(sim.base_url(), &[KEY]))
        .breaker_defaults(BreakerConfig {
            open_for,
            ..BreakerConfig::default()
        })
        .chain("primary", ["primary", "fallback"])
        .spawn()
        .await
        .unwrap();
    // 20 requests/s for 15 s: the whole outage, then recovery.
    let results = steady(&sw, "primary", 300, Duration::from_millis(50)).await;
    assert_eq!(results.len(), 300);
    let failed: Vec<_> = results.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(failed.is_empty(), "every caller answered: {failed:?}");
    let log = sim.log();
    let dead = log
        .iter()
        .filter(|e| e.model.as_deref() == Some("primary") && e.status == Some(529))
        .count();
    let back = log
        .iter()
        .find(|e| e.model.as_deref() == Some("primary") && e.status == Some(200))
        .map(|e| e.at_ms);
    println!("10 s outage at 20 rps: the dead model saw {dead} calls; primary back at {back:?} ms");
    assert!(dead <= 20, "the dead model saw {dead} calls");
    let back = back.expect("the primary recovers");
    assert!(
        back <= 10_000 + open_for.as_millis() as u64 + 200,
        "back at {back} ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_tokens_estimates_match_the_simulators_count() {
    let sim = sim(r#"
        seed = 10
        [limits]
        input_tokens_per_minute = 1000
        [[models]]
        name = "m"
        latency = "1ms"
    "#)
    .await;
    let up = anthropic(sim.base_url(), &[KEY]);
    let body = call("m").body_for("m");
    let sims_count = seawall::sim::estimate_input_tokens(&serde_json::from_slice(&body).unwrap())
        .expect("a body with messages");
    let counted = seawall::core::Upstream::count_tokens(
        &up,
        support::sim::attempt("m", body, Duration::from_secs(1)),
    )
    .expect("the Anthropic transport has a counter")
    .await
    .expect("counted");
    assert_eq!(counted, sims_count);
    // The simulator's own count never exceeds the runtime's estimate.
    assert!(counted <= call("m").estimate_input_tokens());
    let sw = Seawall::builder()
        .upstream("sim", up)
        .chain_with(
            "m",
            ["m"],
            RetryPolicy {
                estimate: seawall::core::Estimate::CountTokens,
                ..fast_policy()
            },
        )
        .spawn()
        .await
        .unwrap();
    sw.complete(call("m")).await.unwrap();
    let paths: Vec<String> = sim.log().iter().map(|e| e.path.clone()).collect();
    assert_eq!(
        paths,
        vec![
            "/v1/messages/count_tokens",
            "/v1/messages/count_tokens",
            "/v1/messages"
        ]
    );
}

async fn drain(mut reply: seawall::core::StreamReply) -> Vec<seawall::core::SseEvent> {
    let mut out = Vec::new();
    while let Some(ev) = reply.events.recv().await {
        out.push(ev);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_fall_back_before_content_and_report_breaks_after_it() {
    let sim = sim(r#"
        seed = 11
        [[models]]
        name = "breaks-early"
        delta_interval = "5ms"
        [[models.faults]]
        kind = "mid_stream_error"
        after_deltas = 0
        [[models]]
        name = "breaks-late"
        delta_interval = "5ms"
        output_tokens = 10
        [[models.faults]]
        kind = "mid_stream_error"
        after_deltas = 3
        [[models]]
        name = "slow-start"
        time_to_first_token = "2s"
        [[models]]
        name = "steady"
        delta_interval = "2ms"
        output_tokens = 6
    "#)
    .await;
    let policy = RetryPolicy {
        first_token_timeout: Duration::from_millis(300),
        ..fast_policy()
    };
    let sw = Seawall::builder()
        .upstream("sim", anthropic(sim.base_url(), &[KEY]))
        .chain_with("breaks-early", ["breaks-early", "steady"], policy.clone())
        .chain_with("breaks-late", ["breaks-late", "steady"], policy.clone())
        .chain_with("slow-start", ["slow-start", "steady"], policy)
        .spawn()
        .await
        .unwrap();

    // An overload before any content: the caller sees one clean stream from the fallback.
    let reply = sw.stream(call("breaks-early")).await.expect("fell back");
    assert_eq!(reply.model, "steady");
    let events = drain(reply).await;
    assert_eq!(events.first().unwrap().event, "message_start");
    assert_eq!(events.last().unwrap().event, "message_stop");
    assert!(events.iter().all(|e| e.event != "error"));

    // After content: committed, and the break arrives as the API's error event.
    let reply = sw.stream(call("breaks-late")).await.expect("committed");
    assert_eq!(reply.model, "breaks-late");
    let events = drain(reply).await;
    assert_eq!(events.iter().filter(|e| e.is_content()).count(), 3);
    let last = events.last().unwrap();
    assert_eq!(last.event, "error");
    assert!(last.data.contains("overloaded_error"));

    // A slow first token is cut by the first-token timeout, then the fallback streams.
    let t = Instant::now();
    let reply = sw.stream(call("slow-start")).await.expect("fell back");
    assert_eq!(reply.model, "steady");
    assert!(t.elapsed() < Duration::from_secs(2));
    drain(reply).await;
    assert_eq!(sim.count("steady"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_hangs_now_and_then_costs_the_p99_milliseconds_with_default_settings() {
    // The primary answers in 20-40 ms but hangs on about 3 % of requests; the fallback is
    // healthy. Nothing is tuned: the default retry policy, a chain with a fallback.
    let sim = sim(r#"
        seed = 21
        [[models]]
        name = "primary"
        latency = "20ms"
        latency_jitter = "20ms"
        [[models.faults]]
        kind = "hang"
        probability = 0.03
        [[models]]
        name = "fallback"
        latency = "30ms"
    "#)
    .await;
    let sw = Seawall::builder()
        .upstream("sim", anthropic(sim.base_url(), &[KEY]))
        .chain("primary", ["primary", "fallback"])
        .spawn()
        .await
        .unwrap();
    // Warm-up: the runtime learns the primary's latency from its first answers (20 are
    // needed; until then an automatic hedge waits 2 s) and opens its connections.
    for r in steady(&sw, "primary", 40, Duration::from_millis(10)).await {
        r.1.expect("answered");
    }
    let warmup = sim.log().len();
    let results = steady(&sw, "primary", 400, Duration::from_millis(10)).await;
    let mut latencies: Vec<Duration> = results
        .iter()
        .map(|(_, r)| r.as_ref().expect("every call answered").latency)
        .collect();
    latencies.sort();
    let p50 = latencies[latencies.len() / 2];
    let p99 = latencies[latencies.len() * 99 / 100];
    let max = latencies[latencies.len() - 1];
    let log = sim.log().split_off(warmup);
    let hung = log
        .iter()
        .filter(|e| e.model.as_deref() == Some("primary") && e.status.is_none())
        .count();
    println!(
        "hangs: {} calls, {} upstream attempts ({hung} hung), p50 {p50:?} p99 {p99:?} max {max:?}",
        results.len(),
        log.len()
    );
    assert!(p99 < Duration::from_secs(1), "p99 {p99:?}");
    assert!(
        log.len() as f64 <= 1.1 * results.len() as f64,
        "{} upstream attempts for {} calls",
        log.len(),
        results.len()
    );
}
