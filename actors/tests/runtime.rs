//! Actor-level tests of the runtime on paused tokio time with the in-process scripted upstream:
//! a 30 s cooldown runs in microseconds, and every instant asserted is exact.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use seawall_actors::policy::breaker::StateKind;
use seawall_actors::scripted::{error_response, Answer, ScriptedUpstream};
use seawall_actors::{
    BreakerConfig, Call, Class, Error, Event, Limits, Outcome, RestartIntensity, RetryPolicy,
    Seawall, TransportError, WindowKind,
};
use support::{builder, call, secs, MS};
use tokio::time::Instant;

/// Breaker used by most tests: opens at 50% failures over the last 4 calls, 3 s open.
fn breaker() -> BreakerConfig {
    BreakerConfig {
        window: WindowKind::Count(4),
        min_calls: 4,
        failure_rate: 50.0,
        half_open_calls: 1,
        open_for: secs(3),
        ..BreakerConfig::default()
    }
}

async fn runtime(up: &ScriptedUpstream, chain: &[&str]) -> Seawall {
    let mut b = Seawall::builder()
        .upstream("scripted", up.clone())
        .breaker_defaults(breaker());
    b = b.chain(chain[0], chain.iter().copied());
    b.spawn().await.expect("runtime starts")
}

#[tokio::test(start_paused = true)]
async fn fails_over_at_once_when_the_primary_is_overloaded() {
    let up = ScriptedUpstream::new();
    up.on("primary", |_, _| {
        Answer::status(529, "overloaded_error").after(20 * MS)
    });
    up.healthy("fallback", 50 * MS);
    let sw = runtime(&up, &["primary", "fallback"]).await;

    let t0 = Instant::now();
    let reply = sw.complete(call("primary")).await.expect("served");
    assert_eq!(reply.model, "fallback");
    assert_eq!(reply.attempts, 2);
    // No backoff sleep before falling back: the primary's 20 ms plus the fallback's 50 ms.
    assert_eq!(t0.elapsed(), 70 * MS);
    assert_eq!(up.calls("primary"), 1);
    assert_eq!(reply.text(), "ok");
    assert!(matches!(
        reply.trail[0].outcome,
        Outcome::Attempted {
            status: Some(529),
            class: Class::Overloaded,
            ..
        }
    ));
}

#[tokio::test(start_paused = true)]
async fn the_breaker_stops_calls_to_a_dead_model_and_recovers_through_a_probe() {
    let up = ScriptedUpstream::new();
    let down = Arc::new(AtomicBool::new(true));
    let d = down.clone();
    up.on("primary", move |_, _| {
        if d.load(Ordering::SeqCst) {
            Answer::status(529, "overloaded_error").after(10 * MS)
        } else {
            Answer::ok("primary", "back").after(10 * MS)
        }
    });
    up.healthy("fallback", 10 * MS);
    let sw = runtime(&up, &["primary", "fallback"]).await;
    let mut events = sw.subscribe();

    for _ in 0..40 {
        let r = sw.complete(call("primary")).await.expect("served");
        assert_eq!(r.model, "fallback");
    }
    // The breaker opened after its window (4 calls at 50%): the dead model saw only those.
    assert_eq!(up.calls("primary"), 4);
    assert_eq!(
        sw.breaker_status("primary").await.unwrap().state,
        StateKind::Open
    );

    // Recovery: after the open duration one probe goes through and closes the breaker.
    down.store(false, Ordering::SeqCst);
    tokio::time::sleep(secs(3)).await;
    let r = sw.complete(call("primary")).await.expect("served");
    assert_eq!(r.model, "primary");
    assert_eq!(up.calls("primary"), 5);
    assert_eq!(
        sw.breaker_status("primary").await.unwrap().state,
        StateKind::Closed
    );

    let mut seen = Vec::new();
    while let Ok(ev) = events.try_recv() {
        if let Event::Breaker { from, to, .. } = ev {
            seen.push((from, to));
        }
    }
    assert_eq!(
        seen,
        vec![
            (StateKind::Closed, StateKind::Open),
            (StateKind::Open, StateKind::HalfOpen),
            (StateKind::HalfOpen, StateKind::Closed)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_reopens_and_no_user_call_reaches_the_model_while_open() {
    let up = ScriptedUpstream::new();
    up.on("primary", |_, _| Answer::status(503, "api_error"));
    up.healthy("fallback", MS);
    let sw = runtime(&up, &["primary", "fallback"]).await;
    for _ in 0..4 {
        sw.complete(call("primary")).await.unwrap();
    }
    assert_eq!(up.calls("primary"), 4);
    tokio::time::sleep(secs(2)).await;
    sw.complete(call("primary")).await.unwrap();
    assert_eq!(up.calls("primary"), 4, "still open: no call");
    tokio::time::sleep(secs(1)).await;
    sw.complete(call("primary")).await.unwrap();
    assert_eq!(up.calls("primary"), 5, "one half-open probe");
    assert_eq!(
        sw.breaker_status("primary").await.unwrap().state,
        StateKind::Open
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_on_the_only_model() {
    let up = ScriptedUpstream::new();
    up.on("solo", |_, n| {
        if n == 0 {
            Answer::status(429, "rate_limit_error").header("retry-after", "2")
        } else {
            Answer::ok("solo", "fine")
        }
    });
    let sw = runtime(&up, &["solo"]).await;
    let reply = sw
        .complete(call("solo"))
        .await
        .expect("served after the hint");
    let log = up.log();
    assert_eq!(log.len(), 2);
    assert_eq!(
        log[1].at - log[0].at,
        secs(2),
        "not one moment before retry-after"
    );
    assert_eq!((log[0].retry_count, log[1].retry_count), (0, 1));
    assert_eq!(reply.attempts, 2);
}

#[tokio::test(start_paused = true)]
async fn a_hint_beyond_the_deadline_means_leave_now_not_a_doomed_sleep() {
    let up = ScriptedUpstream::new();
    up.on("solo", |_, _| {
        Answer::status(529, "overloaded_error").header("retry-after", "30")
    });
    let sw = runtime(&up, &["solo"]).await;
    let t0 = Instant::now();
    let err = sw
        .complete(call("solo").timeout(secs(10)))
        .await
        .expect_err("cannot be served in time");
    assert_eq!(t0.elapsed(), Duration::ZERO);
    assert_eq!(up.calls("solo"), 1);
    assert_eq!(err.retry_after(), Some(secs(30)));
    assert!(matches!(err, Error::Unavailable { .. }));
}

#[tokio::test(start_paused = true)]
async fn permanent_errors_pass_through_unchanged_and_are_never_retried() {
    let up = ScriptedUpstream::new();
    let bad = error_response(400, "invalid_request_error", None);
    let expected = bad.body.clone();
    up.on("primary", move |_, _| Answer::from(Ok(bad.clone())));
    up.healthy("fallback", MS);
    let sw = runtime(&up, &["primary", "fallback"]).await;
    let err = sw.complete(call("primary")).await.expect_err("rejected");
    assert_eq!(
        err.upstream_error_type().as_deref(),
        Some("invalid_request_error")
    );
    match err {
        Error::Rejected {
            status,
            body,
            model,
            ..
        } => {
            assert_eq!(status, 400);
            assert_eq!(body, expected, "the upstream's body, byte for byte");
            assert_eq!(model, "primary");
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert_eq!(up.calls("primary"), 1);
    assert_eq!(up.calls("fallback"), 0, "a bad request is bad everywhere");
}

#[tokio::test(start_paused = true)]
async fn spend_cap_429_is_not_retried_on_any_model_of_that_organization() {
    let up = ScriptedUpstream::new();
    for m in ["a", "b"] {
        up.on(m, |_, _| {
            Answer::from(Ok(error_response(
                429,
                "rate_limit_error",
                Some("enforced_spend_limit_reached"),
            )))
            .header("retry-after", "1")
        });
    }
    let sw = runtime(&up, &["a", "b"]).await;
    let err = sw
        .complete(call("a"))
        .await
        .expect_err("no budget anywhere");
    assert!(
        matches!(err, Error::Rejected { status: 429, .. }),
        "{err:?}"
    );
    assert_eq!(up.calls("a") + up.calls("b"), 1);
}

#[tokio::test(start_paused = true)]
async fn unknown_model_moves_to_the_next_hop() {
    let up = ScriptedUpstream::new();
    up.healthy("b", MS); // "a" is not scripted: the fake answers 404
    let sw = runtime(&up, &["a", "b"]).await;
    let reply = sw.complete(call("a")).await.unwrap();
    assert_eq!(reply.model, "b");
    assert_eq!(up.calls("a"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_401_quarantines_the_key_and_the_next_key_serves() {
    let up = ScriptedUpstream::new().with_keys(2);
    up.on("m", |a, _| {
        if a.key == 0 {
            Answer::status(401, "authentication_error")
        } else {
            Answer::ok("m", "via key 1")
        }
    });
    let sw = runtime(&up, &["m"]).await;
    for _ in 0..3 {
        let reply = sw.complete(call("m")).await.expect("the good key serves");
        assert_eq!(reply.text(), "via key 1");
    }
    let keys: Vec<usize> = up.log().iter().map(|l| l.key).collect();
    assert_eq!(keys, vec![0, 1, 1, 1], "the bad key is never used again");
    let status = sw.governor_status().await.unwrap();
    assert_eq!(status[0].quarantined_keys, vec!["key#0".to_string()]);
}

#[tokio::test(start_paused = true)]
async fn all_keys_bad_passes_the_401_through() {
    let up = ScriptedUpstream::new();
    up.on("m", |_, _| Answer::status(401, "authentication_error"));
    let sw = runtime(&up, &["m"]).await;
    let err = sw.complete(call("m")).await.unwrap_err();
    assert!(
        matches!(err, Error::Rejected { status: 401, .. }),
        "{err:?}"
    );
    assert_eq!(up.calls("m"), 1);
    // Later calls do not even reach the upstream.
    let err = sw.complete(call("m")).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert_eq!(up.calls("m"), 1);
}

#[tokio::test(start_paused = true)]
async fn the_deadline_cuts_a_hanging_attempt() {
    let up = ScriptedUpstream::new();
    up.on("slow", |_, _| Answer::ok("slow", "late").after(secs(3600)));
    let sw = runtime(&up, &["slow"]).await;
    let t0 = Instant::now();
    let err = sw
        .complete(call("slow").timeout(secs(5)))
        .await
        .expect_err("hangs");
    assert_eq!(t0.elapsed(), secs(5), "answered exactly at the deadline");
    assert!(matches!(
        err,
        Error::Unavailable {
            deadline_exceeded: true,
            ..
        }
    ));
    assert!(matches!(
        err.trail()[0].outcome,
        Outcome::Attempted {
            class: Class::Timeout,
            ..
        }
    ));
}

#[tokio::test(start_paused = true)]
async fn an_attempt_timeout_moves_on_to_the_fallback() {
    let up = ScriptedUpstream::new();
    up.on("slow", |_, _| Answer::ok("slow", "late").after(secs(3600)));
    up.healthy("fast", 10 * MS);
    let policy = RetryPolicy {
        attempt_timeout: secs(2),
        ..RetryPolicy::default()
    };
    let sw = builder(&up)
        .chain_with("slow", ["slow", "fast"], policy)
        .spawn()
        .await
        .unwrap();
    let t0 = Instant::now();
    let r = sw.complete(call("slow")).await.unwrap();
    assert_eq!(r.model, "fast");
    assert_eq!(t0.elapsed(), secs(2) + 10 * MS);
}

#[tokio::test(start_paused = true)]
async fn transient_failures_retry_with_backoff_then_succeed() {
    let up = ScriptedUpstream::new();
    up.on("m", |_, n| match n {
        0 => Answer::transport(TransportError::Reset("rst".into())),
        1 => Answer::transport(TransportError::Truncated("eof".into())),
        _ => Answer::ok("m", "third time"),
    });
    let sw = runtime(&up, &["m"]).await;
    let r = sw.complete(call("m")).await.unwrap();
    assert_eq!(r.attempts, 3);
    let log = up.log();
    // Full jitter: each gap is within [0, base * 2^(n-1)].
    assert!(log[1].at - log[0].at <= Duration::from_millis(500));
    assert!(log[2].at - log[1].at <= Duration::from_millis(1000));
}

#[tokio::test(start_paused = true)]
async fn x_should_retry_false_is_obeyed() {
    let up = ScriptedUpstream::new();
    up.on("m", |_, _| {
        Answer::status(503, "api_error").header("x-should-retry", "false")
    });
    let sw = runtime(&up, &["m"]).await;
    let err = sw.complete(call("m")).await.unwrap_err();
    assert!(
        matches!(err, Error::Rejected { status: 503, .. }),
        "{err:?}"
    );
    assert_eq!(up.calls("m"), 1);
}

#[tokio::test(start_paused = true)]
async fn the_governor_grants_in_order_and_rejects_doomed_waits() {
    let up = ScriptedUpstream::new();
    up.healthy("m", Duration::ZERO);
    // 2 requests per minute: a full bucket of 2, then one every 30 s.
    let sw = builder(&up)
        .chain("m", ["m"])
        .limits(
            "s",
            Limits {
                requests_per_minute: Some(2),
                ..Limits::default()
            },
        )
        .spawn()
        .await
        .unwrap();
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for i in 0..4u64 {
        let sw = sw.clone();
        handles.push(tokio::spawn(async move {
            // Stagger the arrivals so their order is known.
            tokio::time::sleep(Duration::from_micros(i)).await;
            sw.complete(call("m").timeout(secs(100))).await
        }));
    }
    for h in handles {
        h.await.unwrap().expect("all fit their deadline");
    }
    let starts: Vec<u64> = up
        .log()
        .iter()
        .map(|l| (l.at - t0.into_std()).as_secs())
        .collect();
    assert_eq!(
        starts,
        vec![0, 0, 30, 60],
        "granted in arrival order, 30 s apart"
    );

    // The bucket is now 30 s from the next grant: a 10 s call is refused at once, not parked.
    let t1 = Instant::now();
    let err = sw
        .complete(call("m").timeout(secs(10)))
        .await
        .expect_err("doomed wait");
    assert_eq!(t1.elapsed(), Duration::ZERO);
    assert!(matches!(err.trail()[0].outcome, Outcome::NoBudget { .. }));
    let ra = err.retry_after().expect("knows when budget returns");
    assert!(ra > secs(29) && ra <= secs(30), "{ra:?}");
    assert_eq!(up.calls("m"), 4);
}

#[tokio::test(start_paused = true)]
async fn a_breaker_that_panics_mid_load_is_restarted_and_every_call_is_answered() {
    let up = ScriptedUpstream::new();
    up.healthy("primary", 100 * MS);
    up.healthy("fallback", 100 * MS);
    let sw = runtime(&up, &["primary", "fallback"]).await;
    let mut events = sw.subscribe();
    let mut handles = Vec::new();
    for i in 0..50u64 {
        let sw = sw.clone();
        handles.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(i * 4)).await;
            sw.complete(call("primary")).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(90)).await;
    sw.inject_panic("primary").await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    sw.inject_panic("governor").await.unwrap();
    let mut ok = 0;
    for h in handles {
        let r = h.await.expect("no task panicked");
        assert!(r.is_ok(), "{r:?}");
        ok += 1;
    }
    assert_eq!(ok, 50);
    assert_eq!(sw.restarts().await.unwrap(), 2);
    assert_eq!(up.calls("primary") + up.calls("fallback"), 50);
    let mut restarted = Vec::new();
    while let Ok(ev) = events.try_recv() {
        if let Event::Restarted { child, .. } = ev {
            restarted.push(child);
        }
    }
    assert_eq!(
        restarted,
        vec!["breaker:primary".to_string(), "governor".to_string()]
    );
    // The restarted breaker works.
    assert_eq!(
        sw.breaker_status("primary").await.unwrap().state,
        StateKind::Closed
    );
}

/// A parent supervisor that records what it is told.
struct Parent(tokio::sync::mpsc::UnboundedSender<String>);

impl Actor for Parent {
    type Msg = ();
    type State = ();
    type Arguments = ();
    async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
    async fn handle_supervisor_evt(
        &self,
        _: ActorRef<()>,
        evt: SupervisionEvent,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(_, e) = evt {
            let _ = self.0.send(e.to_string());
        }
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn past_the_restart_intensity_the_supervisor_fails_to_its_parent() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (parent, _) = Actor::spawn(None, Parent(tx), ()).await.unwrap();
    let up = ScriptedUpstream::new();
    up.healthy("m", MS);
    let sw = builder(&up)
        .chain("m", ["m"])
        .restart_intensity(RestartIntensity {
            max_restarts: 2,
            within: secs(10),
        })
        .spawn_linked(parent.get_cell())
        .await
        .unwrap();
    for _ in 0..2 {
        sw.inject_panic("m").await.unwrap();
        sw.complete(call("m")).await.expect("restarted and serving");
    }
    assert_eq!(sw.restarts().await.unwrap(), 2);
    sw.inject_panic("m").await.unwrap();
    let failure = rx.recv().await.expect("the parent hears of it");
    assert!(failure.contains("more than 2 restarts"), "{failure}");
    let err = sw.complete(call("m")).await.unwrap_err();
    assert!(
        matches!(err, Error::ShuttingDown | Error::Internal(_)),
        "{err:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn restarts_outside_the_intensity_window_are_forgiven() {
    let up = ScriptedUpstream::new();
    up.healthy("m", MS);
    let sw = builder(&up)
        .chain("m", ["m"])
        .restart_intensity(RestartIntensity {
            max_restarts: 1,
            within: secs(10),
        })
        .spawn()
        .await
        .unwrap();
    for _ in 0..3 {
        sw.inject_panic("m").await.unwrap();
        sw.complete(call("m")).await.expect("still supervised");
        tokio::time::sleep(secs(11)).await;
    }
    assert_eq!(sw.restarts().await.unwrap(), 3);
}

#[tokio::test(start_paused = true)]
async fn shutdown_drains_calls_in_flight_and_refuses_new_ones() {
    let up = ScriptedUpstream::new();
    up.healthy("m", secs(2));
    let sw = runtime(&up, &["m"]).await;
    let inflight: Vec<_> = (0..5)
        .map(|_| {
            let sw = sw.clone();
            tokio::spawn(async move { sw.complete(call("m")).await })
        })
        .collect();
    tokio::time::sleep(MS).await;
    assert_eq!(sw.in_flight(), 5);
    let report = sw.shutdown(secs(10)).await;
    assert_eq!(report.abandoned, 0);
    for h in inflight {
        assert!(h.await.unwrap().is_ok());
    }
    assert!(matches!(
        sw.complete(call("m")).await,
        Err(Error::ShuttingDown)
    ));
}

#[tokio::test(start_paused = true)]
async fn calls_still_running_past_the_grace_are_ended_at_once_and_not_counted_as_failures() {
    let up = ScriptedUpstream::new();
    up.healthy("m", secs(30));
    let sw = runtime(&up, &["m"]).await;
    let inflight: Vec<_> = (0..3)
        .map(|_| {
            let sw = sw.clone();
            tokio::spawn(async move { sw.complete(call("m")).await })
        })
        .collect();
    tokio::time::sleep(MS).await;
    assert_eq!(sw.in_flight(), 3);
    let started = Instant::now();
    let report = sw.shutdown(secs(1)).await;
    assert_eq!(report.abandoned, 3);
    for h in inflight {
        let err = h.await.unwrap().expect_err("abandoned");
        assert!(matches!(err, Error::Internal(_)), "{err:?}");
    }
    assert!(
        started.elapsed() < secs(3),
        "answered after the grace, not when the upstream would have: {:?}",
        started.elapsed()
    );
    assert_eq!(sw.in_flight(), 0);
    assert_eq!(sw.request_failures().await.unwrap(), 0, "a clean stop");
}

#[tokio::test(start_paused = true)]
async fn configuration_errors_name_what_to_fix() {
    let up = ScriptedUpstream::new();
    let err = Seawall::builder()
        .chain("a", ["a"])
        .spawn()
        .await
        .err()
        .expect("no upstream");
    assert!(err.to_string().contains("no upstream"), "{err}");
    let err = builder(&up)
        .model_on("a", "nope", None)
        .spawn()
        .await
        .err()
        .expect("bad upstream name");
    assert!(err.to_string().contains("\"nope\""), "{err}");
    let err = builder(&up)
        .model(
            "a",
            BreakerConfig {
                failure_rate: 0.0,
                ..BreakerConfig::default()
            },
        )
        .spawn()
        .await
        .err()
        .expect("bad breaker");
    assert!(err.to_string().contains("failure_rate"), "{err}");
    let sw = runtime(&up, &["a"]).await;
    assert!(matches!(
        sw.complete(call("zzz")).await,
        Err(Error::UnknownModel(m)) if m == "zzz"
    ));
    assert!(matches!(
        sw.complete(Call::new("a", 10)).await,
        Err(Error::InvalidCall(_))
    ));
    assert_eq!(up.calls("a"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_short_caller_timeout_still_gets_an_attempt() {
    let up = ScriptedUpstream::new();
    up.healthy("m", 30 * MS);
    let sw = runtime(&up, &["m"]).await;
    // Shorter than the default min_attempt (200 ms): half of it is kept in reserve instead.
    let r = sw
        .complete(call("m").timeout(100 * MS))
        .await
        .expect("one attempt fits");
    assert_eq!(r.attempts, 1);
}

#[tokio::test(start_paused = true)]
async fn a_transport_that_cannot_send_the_request_ends_only_its_hop() {
    let up = ScriptedUpstream::new();
    up.on("narrow", |_, _| {
        Answer::transport(TransportError::Invalid(
            "tools cannot be sent to an OpenAI-compatible provider".into(),
        ))
    });
    up.healthy("wide", MS);
    let sw = builder(&up)
        .chain("narrow", ["narrow", "wide"])
        .chain("only-narrow", ["narrow"])
        .spawn()
        .await
        .unwrap();
    let r = sw
        .complete(call("narrow"))
        .await
        .expect("the other hop takes it");
    assert_eq!(r.model, "wide");
    let err = sw
        .complete(call("narrow").chain("only-narrow"))
        .await
        .expect_err("nobody can take it");
    match err {
        Error::InvalidCall(msg) => {
            assert!(msg.contains("narrow: ") && msg.contains("tools"), "{msg}")
        }
        other => panic!("expected InvalidCall, got {other:?}"),
    }
    assert_eq!(up.calls("narrow"), 2, "never retried");
}

#[tokio::test(start_paused = true)]
async fn a_retry_budget_bounds_attempts_under_a_total_failure_burst() {
    let up = ScriptedUpstream::new();
    up.on("m", |_, _| Answer::status(503, "api_error").after(MS));
    // A breaker that never opens in this test, so only the retry budget limits the retries.
    let never_open = BreakerConfig {
        window: WindowKind::Count(1000),
        min_calls: 1000,
        ..BreakerConfig::default()
    };
    let sw = builder(&up)
        .breaker_defaults(never_open)
        .retry_budget(seawall_actors::RetryBudgetConfig {
            ratio: 0.2,
            window: secs(10),
            min_per_sec: 0.5,
        })
        .chain("m", ["m"])
        .spawn()
        .await
        .unwrap();
    // 200 calls over 2 s, all failing: the SDK-style policy would make 600 attempts.
    let mut handles = Vec::new();
    for i in 0..200u64 {
        let sw = sw.clone();
        handles.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(i * 10)).await;
            sw.complete(call("m").timeout(secs(5))).await
        }));
    }
    let mut spent = 0;
    for h in handles {
        let err = h.await.unwrap().expect_err("everything fails");
        assert!(
            matches!(err, Error::Unavailable { .. }),
            "an honest error: {err:?}"
        );
        if err
            .trail()
            .iter()
            .any(|s| s.outcome == Outcome::RetryBudgetSpent)
        {
            spent += 1;
        }
    }
    let attempts = up.calls("m");
    // First attempts (200) x (1 + 20%) plus the floor (0.5/s over the 10 s window).
    assert!(attempts <= 200 + 40 + 5, "{attempts} upstream attempts");
    assert!(attempts >= 200, "every call made its first attempt");
    assert!(
        spent > 100,
        "most calls were told the budget was spent: {spent}"
    );
    let budget = sw.breaker_status("m").await.unwrap().retry_budget;
    assert!(budget.refused_total > 100);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_request_actor_answers_its_caller_with_an_error_and_nothing_else_breaks() {
    let up = ScriptedUpstream::new();
    up.healthy("m", 10 * MS);
    let sw = runtime(&up, &["m"]).await;
    let mut events = sw.subscribe();
    sw.inject_panic("request").await.unwrap();
    let started = Instant::now();
    let err = sw.complete(call("m")).await.unwrap_err();
    assert!(matches!(err, Error::Internal(_)), "{err:?}");
    assert!(
        started.elapsed() < secs(1),
        "answered at once, not at the deadline"
    );
    // Noticed and counted apart from restarts; nothing restarted.
    assert_eq!(sw.request_failures().await.unwrap(), 1);
    assert_eq!(sw.restarts().await.unwrap(), 0);
    assert!(events.try_recv().is_err(), "no restart event");
    // The runtime goes on serving, and the in-flight count came back down.
    sw.complete(call("m"))
        .await
        .expect("the next call is served");
    assert_eq!(sw.in_flight(), 0);
}
