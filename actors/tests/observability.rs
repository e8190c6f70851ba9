//! Observability on paused time with the scripted upstream: SLA figures, probe-driven recovery,
//! alerts, metrics and the call log line, each asserted exactly from scripted traffic.

mod support;

use std::cell::RefCell;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use seawall_actors::policy::breaker::StateKind;
use seawall_actors::runtime::DEFAULT_TRANSIT_ALLOWANCE;
use seawall_actors::scripted::{Answer, ScriptedUpstream, StreamAnswer};
use seawall_actors::{
    AlertConfig, AlertKind, BreakerConfig, Call, Class, Event, Limits, Price, ProbeConfig,
    ProbeKind, RetryPolicy, Seawall, SlaTarget, SlaViolation, WindowKind,
};
use support::{builder, call, drain, secs, MS};

/// A breaker that never opens during these tests' traffic.
fn lenient() -> BreakerConfig {
    BreakerConfig {
        window: WindowKind::Count(100),
        min_calls: 100,
        failure_rate: 100.0,
        ..BreakerConfig::default()
    }
}

/// One attempt per call: each scripted failure is exactly one failed call.
fn one_attempt() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 1,
        ..RetryPolicy::default()
    }
}

/// No alerts unless a test asks for them.
fn quiet() -> AlertConfig {
    AlertConfig {
        failure_rate: None,
        fallback_rate: None,
        breaker_open_for: None,
        ..AlertConfig::default()
    }
}

fn close_to(actual: Option<Duration>, expected: Duration) {
    let a = actual.expect("a percentile").as_secs_f64();
    let e = expected.as_secs_f64();
    // hdrhistogram with 2 significant digits: within 1 %.
    assert!((a - e).abs() <= e * 0.01, "{a} s is not within 1% of {e} s");
}

#[tokio::test(start_paused = true)]
async fn availability_error_rate_and_failure_streaks_from_100_calls() {
    let up = ScriptedUpstream::new();
    // 7 failures among 100 calls: call 10, a run of five from 40, and call 80.
    let failing = [10u64, 40, 41, 42, 43, 44, 80];
    up.on("m", move |_, n| {
        if failing.contains(&n) {
            Answer::status(503, "api_error").after(5 * MS)
        } else {
            Answer::ok("m", "fine").after(5 * MS)
        }
    });
    let sw = builder(&up)
        .model("m", lenient())
        .retry_policy(one_attempt())
        .alerts(quiet())
        .spawn()
        .await
        .unwrap();
    let mut failed = 0;
    for _ in 0..100 {
        if sw.complete(call("m")).await.is_err() {
            failed += 1;
        }
    }
    assert_eq!(failed, 7);

    let report = sw.sla_report().await.unwrap();
    assert_eq!(report.window, secs(3600));
    let chain = report.chain("m").expect("the model's own chain");
    assert_eq!((chain.stats.calls, chain.stats.failures), (100, 7));
    assert!((chain.stats.availability - 93.0).abs() < 1e-9);
    assert!((chain.stats.error_rate - 7.0).abs() < 1e-9);
    assert_eq!(chain.stats.max_consecutive_failures, 5);
    assert_eq!(chain.stats.consecutive_failures, 0);
    close_to(chain.stats.p99, 5 * MS);
    // Default target: 99.5 % availability.
    assert_eq!(
        chain.violations,
        vec![SlaViolation::Availability {
            actual: 93.0,
            target: 99.5
        }]
    );
    assert!(!chain.is_healthy());
    assert!(!report.is_healthy());

    let model = report.model("m").unwrap();
    assert_eq!((model.stats.calls, model.stats.failures), (100, 7));
    assert_eq!(
        model.stats.by_class,
        vec![(Class::Success, 93), (Class::ServerError, 7)]
    );
    assert_eq!(model.stats.max_consecutive_failures, 5);
}

#[tokio::test(start_paused = true)]
async fn latency_percentiles_from_known_latencies() {
    let up = ScriptedUpstream::new();
    // The n-th call takes n+1 ms: latencies 1..=100 ms.
    up.on("m", |_, n| {
        Answer::ok("m", "fine").after(Duration::from_millis(n + 1))
    });
    let sw = builder(&up)
        .model("m", lenient())
        .sla_target_for(
            "m",
            SlaTarget {
                availability: 99.0,
                p99: 50 * MS,
                max_consecutive_failures: Some(0),
                min_calls: 10,
            },
        )
        .alerts(quiet())
        .spawn()
        .await
        .unwrap();
    for _ in 0..100 {
        sw.complete(call("m")).await.unwrap();
    }
    let report = sw.sla_report().await.unwrap();
    for entry in [report.chain("m").unwrap(), report.model("m").unwrap()] {
        assert_eq!(entry.stats.calls, 100, "{}", entry.name);
        assert_eq!(entry.stats.availability, 100.0);
        close_to(entry.stats.p50, 50 * MS);
        close_to(entry.stats.p95, 95 * MS);
        close_to(entry.stats.p99, 99 * MS);
        // The p99 target of 50 ms is missed; nothing else is.
        assert_eq!(entry.violations.len(), 1);
        assert!(matches!(
            entry.violations[0],
            SlaViolation::P99 { target, .. } if target == 50 * MS
        ));
    }
}

#[tokio::test(start_paused = true)]
async fn caller_errors_are_excluded_and_rate_limits_do_not_count_against_a_model() {
    let up = ScriptedUpstream::new();
    up.on("m", |a, _| {
        let body: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        match body["messages"][0]["content"].as_str() {
            Some("bad") => Answer::status(400, "invalid_request_error"),
            Some("busy") => Answer::status(429, "rate_limit_error"),
            _ => Answer::ok("m", "fine"),
        }
    });
    let sw = builder(&up)
        .model("m", lenient())
        .retry_policy(one_attempt())
        .alerts(quiet())
        .spawn()
        .await
        .unwrap();
    sw.complete(call("m")).await.unwrap();
    sw.complete(Call::new("m", 8).user("bad"))
        .await
        .expect_err("a 400 passes through");
    sw.complete(Call::new("m", 8).user("busy"))
        .await
        .expect_err("one attempt, rate limited");
    let report = sw.sla_report().await.unwrap();
    let chain = report.chain("m").unwrap();
    // The 400 is the caller's fault; the 429 left the caller without an answer.
    assert_eq!(
        (
            chain.stats.calls,
            chain.stats.failures,
            chain.stats.excluded
        ),
        (2, 1, 1)
    );
    let model = report.model("m").unwrap();
    // For the model both 4xx are excluded: neither says it is sick.
    assert_eq!(
        (
            model.stats.calls,
            model.stats.failures,
            model.stats.excluded
        ),
        (1, 0, 2)
    );
    assert_eq!(model.stats.availability, 100.0);
}

#[tokio::test(start_paused = true)]
async fn probes_find_out_a_dead_model_recovered_and_no_user_call_reaches_it_meanwhile() {
    let up = ScriptedUpstream::new();
    let down = Arc::new(AtomicBool::new(true));
    let d = down.clone();
    up.on("primary", move |_, _| {
        if d.load(Ordering::SeqCst) {
            Answer::status(529, "overloaded_error").after(100 * MS)
        } else {
            Answer::ok("primary", "back").after(100 * MS)
        }
    });
    up.healthy("fallback", 10 * MS);
    let sw = builder(&up)
        .breaker_defaults(BreakerConfig {
            window: WindowKind::Count(4),
            min_calls: 4,
            // Two trials: while a probe's trial is in flight, a slot is free that a user call
            // would take if trials were not reserved for probes.
            half_open_calls: 2,
            open_for: secs(3),
            ..BreakerConfig::default()
        })
        .chain("primary", ["primary", "fallback"])
        .probe(
            "primary",
            ProbeConfig {
                interval: secs(60),
                timeout: secs(1),
                kind: ProbeKind::Message,
            },
        )
        .alerts(quiet())
        .spawn()
        .await
        .unwrap();
    let is_probe = |body: &[u8]| {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        v["max_tokens"] == 1
    };
    let user_calls_to_primary = || {
        up.log()
            .iter()
            .filter(|a| a.model == "primary" && !is_probe(&a.body))
            .count()
    };
    let probes_to_primary = || {
        up.log()
            .iter()
            .filter(|a| a.model == "primary" && is_probe(&a.body))
            .count()
    };

    for _ in 0..10 {
        assert_eq!(
            sw.complete(call("primary")).await.unwrap().model,
            "fallback"
        );
    }
    // The breaker opened after its window of 4 failures; no probe yet.
    assert_eq!(user_calls_to_primary(), 4);
    assert_eq!(probes_to_primary(), 0);
    let status = sw.breaker_status("primary").await.unwrap();
    assert_eq!(status.state, StateKind::Open);
    let ready = sw.ready().await.unwrap();
    assert!(ready.ready, "the fallback serves");
    assert_eq!(ready.chains.len(), 1);
    assert_eq!(ready.chains[0].usable, vec!["fallback".to_owned()]);

    // The open state ends; the probe takes the first trial (100 ms in flight). A user call
    // 50 ms into it finds a free trial slot but is turned away: trials belong to probes.
    let open_for = status.open_for.expect("open");
    tokio::time::sleep(open_for + 50 * MS).await;
    assert_eq!(probes_to_primary(), 1);
    assert_eq!(
        sw.complete(call("primary")).await.unwrap().model,
        "fallback"
    );
    assert_eq!(user_calls_to_primary(), 4);

    // The model stays down for another 20 s of steady user traffic: only probes reach it.
    for _ in 0..40 {
        tokio::time::sleep(500 * MS).await;
        assert_eq!(
            sw.complete(call("primary")).await.unwrap().model,
            "fallback"
        );
    }
    assert_eq!(
        user_calls_to_primary(),
        4,
        "not one user call while it is down"
    );
    // Each open period (3 s) ends in a probe run of two failing trials (the breaker decides on
    // two), 100 ms each: 7 runs in these 20 s.
    let probes = probes_to_primary();
    assert_eq!(probes, 14);

    // It recovers: the next probe run passes both trials and closes the breaker.
    down.store(false, Ordering::SeqCst);
    let status = sw.breaker_status("primary").await.unwrap();
    let wait = status.open_for.unwrap_or(Duration::ZERO) + secs(1);
    tokio::time::sleep(wait).await;
    assert_eq!(probes_to_primary(), probes + 2, "two trial probes");
    assert_eq!(
        sw.breaker_status("primary").await.unwrap().state,
        StateKind::Closed
    );
    assert_eq!(user_calls_to_primary(), 4);
    // Users flow again.
    assert_eq!(sw.complete(call("primary")).await.unwrap().model, "primary");
    assert_eq!(user_calls_to_primary(), 5);
    let ready = sw.ready().await.unwrap();
    assert_eq!(
        ready.chains[0].usable,
        vec!["primary".to_owned(), "fallback".to_owned()]
    );

    // The probes count for the model like attempts: 4 user failures, the failed probes, the
    // passing ones and the last user call.
    let report = sw.sla_report().await.unwrap();
    let model = report.model("primary").unwrap();
    assert_eq!(model.stats.failures, 4 + probes as u64);
    assert_eq!(model.stats.calls, 4 + probes as u64 + 2 + 1);
    assert_eq!(model.stats.max_consecutive_failures, 4 + probes as u64);
}

#[tokio::test(start_paused = true)]
async fn a_fallback_rate_alert_fires_once_when_crossing_and_clears_once_after_recovery() {
    let up = ScriptedUpstream::new();
    // Calls 20, 21 and 22 find the primary overloaded; every other call it serves.
    up.on("primary", |_, n| {
        if (20..23).contains(&n) {
            Answer::status(529, "overloaded_error")
        } else {
            Answer::ok("primary", "fine")
        }
    });
    up.healthy("fallback", MS);
    let sw = builder(&up)
        .breaker_defaults(lenient())
        .chain("primary", ["primary", "fallback"])
        .alerts(AlertConfig {
            window: secs(600),
            min_calls: 20,
            failure_rate: Some(5.0),
            fallback_rate: Some(5.0),
            breaker_open_for: None,
        })
        .spawn()
        .await
        .unwrap();
    let mut events = sw.subscribe();
    let mut alerts = Vec::new();
    let drain = |events: &mut tokio::sync::broadcast::Receiver<Event>,
                 alerts: &mut Vec<(AlertKind, String, f64, f64, bool)>| {
        while let Ok(ev) = events.try_recv() {
            if let Event::Alert {
                kind,
                subject,
                value,
                threshold,
                firing,
            } = ev
            {
                alerts.push((
                    kind,
                    subject,
                    (value * 100.0).round() / 100.0,
                    threshold,
                    firing,
                ));
            }
        }
    };
    let mut fired_at = None;
    let mut cleared_at = None;
    for i in 1..=100u32 {
        sw.complete(call("primary")).await.unwrap();
        // The monitor has handled the call once it answers a query behind it.
        sw.sla_report().await.unwrap();
        drain(&mut events, &mut alerts);
        if fired_at.is_none() && !alerts.is_empty() {
            fired_at = Some(i);
        }
        if cleared_at.is_none() && alerts.len() == 2 {
            cleared_at = Some(i);
        }
    }
    // 1 fallback in 21 calls is 4.76 %; 2 in 22 is 9.09 %: fired then, once. 3 in 76 is
    // 3.95 %, under 80 % of the threshold: cleared then, once. Failures stayed at 0 %.
    assert_eq!(fired_at, Some(22));
    assert_eq!(cleared_at, Some(76));
    assert_eq!(
        alerts,
        vec![
            (
                AlertKind::FallbackRate,
                "primary".to_owned(),
                9.09,
                5.0,
                true
            ),
            (
                AlertKind::FallbackRate,
                "primary".to_owned(),
                3.95,
                5.0,
                false
            ),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_breaker_open_too_long_alerts_once_and_clears_when_it_closes() {
    let up = ScriptedUpstream::new();
    let down = Arc::new(AtomicBool::new(true));
    let d = down.clone();
    up.on("m", move |_, _| {
        if d.load(Ordering::SeqCst) {
            Answer::status(500, "api_error")
        } else {
            Answer::ok("m", "back")
        }
    });
    let sw = builder(&up)
        .model("m", BreakerConfig::consecutive_failures(1, secs(10)))
        .retry_policy(one_attempt())
        .alerts(AlertConfig {
            breaker_open_for: Some(secs(25)),
            ..quiet()
        })
        .spawn()
        .await
        .unwrap();
    let mut events = sw.subscribe();
    sw.complete(call("m")).await.expect_err("down");
    assert!(!sw.ready().await.unwrap().ready, "its only model is open");
    // Open for 10 s, a failed half-open trial, open again: still one outage.
    tokio::time::sleep(secs(10)).await;
    sw.complete(call("m")).await.expect_err("still down");
    tokio::time::sleep(secs(24)).await;
    sw.ready().await.unwrap();
    let alerts = |events: &mut tokio::sync::broadcast::Receiver<Event>| {
        let mut out = Vec::new();
        while let Ok(ev) = events.try_recv() {
            if let Event::Alert {
                kind,
                value,
                firing,
                ..
            } = ev
            {
                out.push((kind, value, firing));
            }
        }
        out
    };
    assert_eq!(
        alerts(&mut events),
        vec![(AlertKind::BreakerOpen, 25.0, true)],
        "25 s after it first opened"
    );
    // Half-open again at 30 s: without probes, a user call may take the trial.
    assert!(sw.ready().await.unwrap().ready);
    down.store(false, Ordering::SeqCst);
    tokio::time::sleep(secs(10)).await;
    sw.complete(call("m"))
        .await
        .expect("a half-open trial closes it");
    sw.ready().await.unwrap();
    assert_eq!(
        alerts(&mut events),
        vec![(AlertKind::BreakerOpen, 0.0, false)]
    );
    assert!(sw.ready().await.unwrap().ready);
}

fn find<'a>(
    snapshot: &'a [(
        metrics_util::CompositeKey,
        Option<metrics::Unit>,
        Option<metrics::SharedString>,
        DebugValue,
    )],
    name: &str,
    labels: &[(&str, &str)],
) -> Option<&'a DebugValue> {
    snapshot.iter().find_map(|(key, _, _, value)| {
        let key = key.key();
        let mut have: Vec<(&str, &str)> = key.labels().map(|l| (l.key(), l.value())).collect();
        let mut want = labels.to_vec();
        have.sort_unstable();
        want.sort_unstable();
        (key.name() == name && have == want).then_some(value)
    })
}

fn counter(
    snapshot: &[(
        metrics_util::CompositeKey,
        Option<metrics::Unit>,
        Option<metrics::SharedString>,
        DebugValue,
    )],
    name: &str,
    labels: &[(&str, &str)],
) -> u64 {
    match find(snapshot, name, labels) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("{name} {labels:?}: {other:?}"),
    }
}

async fn metrics_traffic(snapshotter: &Snapshotter) {
    let up = ScriptedUpstream::new();
    up.on("primary", |_, n| {
        if n < 3 {
            Answer::status(529, "overloaded_error")
        } else {
            Answer::ok("primary", "fine")
        }
    });
    up.healthy("fallback", MS);
    up.on("solo", |_, _| Answer::status(503, "api_error"));
    let sw = builder(&up)
        .breaker_defaults(lenient())
        .chain("primary", ["primary", "fallback"])
        .chain_with("solo", ["solo"], one_attempt())
        .prices(
            "primary",
            Price {
                input_per_mtok: 3.0,
                output_per_mtok: 15.0,
            },
        )
        .prices(
            "fallback",
            Price {
                input_per_mtok: 1.0,
                output_per_mtok: 5.0,
            },
        )
        .alerts(quiet())
        .spawn()
        .await
        .unwrap();
    for _ in 0..10 {
        sw.complete(call("primary")).await.unwrap();
    }
    sw.complete(call("solo")).await.expect_err("solo is down");
    // Every cast so far is handled once the monitor answers this.
    sw.sla_report().await.unwrap();

    let s = snapshotter.snapshot().into_vec();
    let c = |name: &str, labels: &[(&str, &str)]| counter(&s, name, labels);
    assert_eq!(
        c(
            "seawall_calls_total",
            &[("chain", "primary"), ("status", "ok")]
        ),
        10
    );
    assert_eq!(
        c(
            "seawall_calls_total",
            &[("chain", "solo"), ("status", "error")]
        ),
        1
    );
    assert_eq!(
        c(
            "seawall_call_failures_total",
            &[("chain", "solo"), ("class", "unavailable")]
        ),
        1
    );
    assert_eq!(
        c(
            "seawall_fallbacks_total",
            &[("chain", "primary"), ("model", "fallback")]
        ),
        3
    );
    assert_eq!(
        c(
            "seawall_degraded_answers_total",
            &[("chain", "primary"), ("source", "live")]
        ),
        3
    );
    assert_eq!(
        c(
            "seawall_attempts_total",
            &[("model", "primary"), ("class", "success")]
        ),
        7
    );
    assert_eq!(
        c(
            "seawall_attempts_total",
            &[("model", "primary"), ("class", "overloaded")]
        ),
        3
    );
    assert_eq!(
        c(
            "seawall_failures_total",
            &[
                ("model", "primary"),
                ("class", "overloaded"),
                ("status", "529")
            ]
        ),
        3
    );
    assert_eq!(
        c(
            "seawall_failures_total",
            &[
                ("model", "solo"),
                ("class", "server_error"),
                ("status", "503")
            ]
        ),
        1
    );
    // Scripted answers use 12 input and 8 output tokens.
    assert_eq!(c("seawall_input_tokens_total", &[("model", "primary")]), 84);
    assert_eq!(
        c("seawall_output_tokens_total", &[("model", "primary")]),
        56
    );
    assert_eq!(
        c("seawall_input_tokens_total", &[("model", "fallback")]),
        36
    );
    assert_eq!(
        c("seawall_output_tokens_total", &[("model", "fallback")]),
        24
    );
    // 7 × (12 × $3 + 8 × $15) / 1M = $0.001092; 3 × (12 × $1 + 8 × $5) / 1M = $0.000156.
    assert_eq!(
        c("seawall_cost_microdollars_total", &[("model", "primary")]),
        1092
    );
    assert_eq!(
        c("seawall_cost_microdollars_total", &[("model", "fallback")]),
        156
    );
    assert_eq!(
        find(&s, "seawall_breaker_state", &[("model", "primary")]),
        Some(&DebugValue::Gauge(0.0.into()))
    );
    match find(
        &s,
        "seawall_call_duration_seconds",
        &[("chain", "primary"), ("status", "ok")],
    ) {
        Some(DebugValue::Histogram(v)) => assert_eq!(v.len(), 10),
        other => panic!("call durations: {other:?}"),
    }
}

async fn governor_traffic(snapshotter: &Snapshotter) {
    let up = ScriptedUpstream::new();
    up.healthy("x", Duration::ZERO);
    let sw = Seawall::builder()
        .upstream("g", up.clone())
        .model("x", lenient())
        .limits(
            "g",
            Limits {
                requests_per_minute: Some(2),
                ..Limits::default()
            },
        )
        .alerts(quiet())
        .spawn()
        .await
        .unwrap();
    // Two requests fit the bucket; the third waits 30 s for one to refill, counted from the
    // transit allowance after the bucket started to drain.
    for _ in 0..3 {
        sw.complete(call("x")).await.unwrap();
    }
    // The next token comes 30 s later still: more than this call's 10 s can wait.
    sw.complete(call("x").timeout(secs(10)))
        .await
        .expect_err("no budget in time");
    sw.sla_report().await.unwrap();

    let s = snapshotter.snapshot().into_vec();
    let waits = [("upstream", "g"), ("lane", "interactive")];
    assert_eq!(counter(&s, "seawall_governor_waits_total", &waits), 1);
    match find(&s, "seawall_governor_wait_seconds", &waits) {
        Some(DebugValue::Histogram(v)) => {
            assert_eq!(v.len(), 1);
            let expected = 30.0 + DEFAULT_TRANSIT_ALLOWANCE.as_secs_f64();
            assert!((v[0].0 - expected).abs() < 1e-6, "{v:?}");
        }
        other => panic!("waits: {other:?}"),
    }
    assert_eq!(
        counter(
            &s,
            "seawall_governor_rejections_total",
            &[("upstream", "g"), ("reason", "no_budget")]
        ),
        1
    );
    // Labels name things: the upstream, the key organization's label, the model class.
    let level = [
        ("upstream", "g"),
        ("org", "default"),
        ("model_class", "default"),
        ("dimension", "requests"),
    ];
    match find(&s, "seawall_bucket_level", &level) {
        // Settled right after the third grant emptied it.
        Some(DebugValue::Gauge(v)) => assert!(v.0.abs() < 1e-6, "{v}"),
        other => panic!("bucket level: {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn metrics_count_calls_failures_fallbacks_tokens_cost_and_governor_waits() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // This test's runtime is single-threaded: every actor runs on this thread and sees the
    // thread's recorder, and no other test does.
    let _guard = metrics::set_default_local_recorder(&recorder);
    metrics_traffic(&snapshotter).await;
    governor_traffic(&snapshotter).await;
}

#[tokio::test(start_paused = true)]
async fn a_counting_upstream_is_probed_with_count_tokens_not_with_messages() {
    let up = ScriptedUpstream::new().with_token_counter(|_| 5);
    up.on("m", |_, n| {
        if n == 0 {
            Answer::status(500, "api_error")
        } else {
            Answer::ok("m", "fine")
        }
    });
    let sw = builder(&up)
        .model("m", BreakerConfig::consecutive_failures(1, secs(5)))
        .retry_policy(one_attempt())
        .probe(
            "m",
            ProbeConfig {
                interval: secs(60),
                timeout: secs(1),
                kind: ProbeKind::Auto,
            },
        )
        .alerts(quiet())
        .spawn()
        .await
        .unwrap();
    sw.complete(call("m")).await.expect_err("down");
    assert_eq!(sw.breaker_status("m").await.unwrap().state, StateKind::Open);
    // At the end of the open state a count_tokens probe passes the trial and closes it; no
    // message reached the model.
    tokio::time::sleep(secs(5) + MS).await;
    assert_eq!(
        sw.breaker_status("m").await.unwrap().state,
        StateKind::Closed
    );
    assert_eq!(up.calls("m"), 1);
    let report = sw.sla_report().await.unwrap();
    assert_eq!(
        report.model("m").unwrap().stats.by_class,
        vec![(Class::Success, 1), (Class::ServerError, 1)]
    );
    assert_eq!(sw.complete(call("m")).await.unwrap().model, "m");
}

thread_local! {
    /// What this thread's tests logged: a current-thread test runtime runs every actor on the
    /// test's own thread.
    static LOGGED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Writes into the calling thread's buffer.
struct ThreadLog;

impl Write for ThreadLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGGED.with(|l| l.borrow_mut().extend_from_slice(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Install one global subscriber for this test binary (a per-test `set_default` loses events
/// to callsite interest cached by tests on other threads) and empty this thread's buffer.
fn capture_logs() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_writer(|| ThreadLog)
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
    LOGGED.with(|l| l.borrow_mut().clear());
}

fn logged() -> String {
    LOGGED.with(|l| String::from_utf8_lossy(&l.borrow()).into_owned())
}

async fn logged_call(log_prompts: bool) -> String {
    capture_logs();
    let up = ScriptedUpstream::new();
    up.healthy("m", 7 * MS);
    let sw = Seawall::builder()
        .upstream("anthropic", up.clone())
        .model("m", lenient())
        .prices(
            "m",
            Price {
                input_per_mtok: 3.0,
                output_per_mtok: 15.0,
            },
        )
        .log_prompts(log_prompts)
        .alerts(quiet())
        .spawn()
        .await
        .unwrap();
    sw.complete(
        Call::new("m", 64)
            .system("the secret system prompt")
            .user("my private question")
            .feature("chat"),
    )
    .await
    .unwrap();
    sw.sla_report().await.unwrap();
    logged()
}

#[tokio::test(start_paused = true)]
async fn the_call_log_line_has_the_facts_and_no_prompt_unless_asked() {
    let text = logged_call(false).await;
    let line = text
        .lines()
        .find(|l| l.contains(" call ") || l.ends_with(" call"))
        .unwrap_or_else(|| panic!("no call line in:\n{text}"));
    for field in [
        "chain=\"m\"",
        "model=\"m\"",
        "feature=\"chat\"",
        "lane=\"interactive\"",
        "status=\"ok\"",
        "http_status=200",
        "served_by=\"m\"",
        "request_id=\"req_scripted\"",
        "latency_ms=7",
        "input_tokens=12",
        "output_tokens=8",
        "attempts=1",
        "retries=0",
        "cost_usd=0.000156",
    ] {
        assert!(line.contains(field), "{field} missing from: {line}");
    }
    assert!(!text.contains("secret system prompt"), "{text}");
    assert!(!text.contains("private question"), "{text}");
    // The spans carry the GenAI fields.
    let attempt = text
        .lines()
        .find(|l| l.contains("seawall.attempt{") && l.contains("close"))
        .unwrap_or_else(|| panic!("no attempt span in:\n{text}"));
    for field in [
        "gen_ai.system=\"anthropic\"",
        "gen_ai.request.model=m",
        "gen_ai.response.model=\"m\"",
        "gen_ai.usage.input_tokens=12",
        "gen_ai.usage.output_tokens=8",
        "attempt=1",
        "http.response.status_code=200",
        "class=\"success\"",
        "request_id=\"req_scripted\"",
    ] {
        assert!(attempt.contains(field), "{field} missing from: {attempt}");
    }
    let call_span = text
        .lines()
        .find(|l| {
            l.contains("seawall.call{") && l.contains("close") && !l.contains("seawall.attempt")
        })
        .unwrap_or_else(|| panic!("no call span in:\n{text}"));
    for field in [
        "gen_ai.request.model=\"m\"",
        "served_by=\"m\"",
        "source=\"live\"",
        "lane=\"interactive\"",
        "feature=\"chat\"",
    ] {
        assert!(
            call_span.contains(field),
            "{field} missing from: {call_span}"
        );
    }

    let text = logged_call(true).await;
    let line = text.lines().find(|l| l.contains("cost_usd=")).unwrap();
    assert!(line.contains("the secret system prompt"), "{line}");
    assert!(line.contains("my private question"), "{line}");
}

#[tokio::test(start_paused = true)]
async fn streams_count_as_calls_with_their_time_to_first_token() {
    let up = ScriptedUpstream::new();
    up.on_stream("m", |_, _| {
        StreamAnswer::message("m", &["a", "b"], 20 * MS).head_after(30 * MS)
    });
    let sw = builder(&up)
        .model("m", lenient())
        .alerts(quiet())
        .spawn()
        .await
        .unwrap();
    let reply = sw.stream(call("m")).await.unwrap();
    drain(reply).await;
    let report = sw.sla_report().await.unwrap();
    let chain = report.chain("m").unwrap();
    assert_eq!((chain.stats.calls, chain.stats.failures), (1, 0));
    close_to(chain.stats.p50, 50 * MS);
    // The model's attempt lasted the whole stream: head, two deltas.
    close_to(report.model("m").unwrap().stats.p50, 70 * MS);
}

#[tokio::test(start_paused = true)]
async fn a_restarted_monitor_learns_the_breakers_states_again() {
    let up = ScriptedUpstream::new();
    up.on("m", |_, _| Answer::status(500, "api_error"));
    let sw = builder(&up)
        .model("m", BreakerConfig::consecutive_failures(1, secs(30)))
        .retry_policy(one_attempt())
        .alerts(quiet())
        .spawn()
        .await
        .unwrap();
    sw.complete(call("m")).await.expect_err("down");
    assert!(!sw.ready().await.unwrap().ready);
    sw.inject_panic("monitor").await.unwrap();
    // On paused time the clock moves only once every actor is idle: the restart and the
    // breakers' answers to the new monitor have happened by then.
    tokio::time::sleep(MS).await;
    assert_eq!(sw.restarts().await.unwrap(), 1);
    let ready = sw.ready().await.unwrap();
    assert!(!ready.ready, "it heard from the breaker that m is open");
    let report = sw.sla_report().await.unwrap();
    assert_eq!(report.model("m").unwrap().stats.calls, 0, "a fresh window");
}

#[tokio::test(start_paused = true)]
async fn a_refused_stream_kept_as_the_answer_counts_once() {
    let up = ScriptedUpstream::new();
    let start = serde_json::json!({"type": "message_start", "message": {"id": "m",
        "type": "message", "role": "assistant", "model": "a", "content": [],
        "stop_reason": null, "usage": {"input_tokens": 5, "output_tokens": 0}}});
    let delta = serde_json::json!({"type": "message_delta",
        "delta": {"stop_reason": "refusal", "stop_sequence": null},
        "usage": {"output_tokens": 0}});
    up.on_stream("a", move |_, _| StreamAnswer::Events {
        head_after: Duration::ZERO,
        items: vec![
            (
                Duration::ZERO,
                Ok(seawall_actors::SseEvent::new(
                    "message_start",
                    start.to_string(),
                )),
            ),
            (
                Duration::ZERO,
                Ok(seawall_actors::SseEvent::new(
                    "message_delta",
                    delta.to_string(),
                )),
            ),
        ],
    });
    up.on_stream("b", |_, _| {
        StreamAnswer::Whole(Answer::status(404, "not_found_error"))
    });
    let sw = builder(&up)
        .breaker_defaults(lenient())
        .chain_with(
            "a",
            ["a", "b"],
            RetryPolicy {
                refusal_fallback: true,
                ..RetryPolicy::default()
            },
        )
        .alerts(quiet())
        .spawn()
        .await
        .unwrap();
    let reply = sw
        .stream(call("a"))
        .await
        .expect("the refusal is the answer");
    assert_eq!(reply.model, "a");
    drain(reply).await;
    let report = sw.sla_report().await.unwrap();
    let a = report.model("a").unwrap();
    assert_eq!(
        (a.stats.calls, a.stats.failures),
        (1, 0),
        "one attempt, once"
    );
    let chain = report.chain("a").unwrap();
    assert_eq!((chain.stats.calls, chain.stats.failures), (1, 0));
    // The governor got its ticket back exactly once: nothing in flight on the key.
    assert_eq!(sw.governor_status().await.unwrap()[0].in_flight, vec![0]);
}
