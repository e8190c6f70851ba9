//! Streaming calls on paused time: retry and fallback until the first content event, then
//! committed; breaks after content reach the caller as an `error` event, never a silent cut.

use std::time::Duration;

mod support;

use seawall_actors::policy::breaker::StateKind;
use seawall_actors::scripted::{Answer, ScriptedUpstream, StreamAnswer};
use seawall_actors::{
    BreakerConfig, Call, Class, Error, Outcome, RetryPolicy, Seawall, TransportError, WindowKind,
};
use support::{builder, drain, kinds, text, MS};
use tokio::time::Instant;

fn call(model: &str) -> Call {
    Call::new(model, 64).user("stream please")
}

async fn runtime(up: &ScriptedUpstream, hops: &[&str], policy: RetryPolicy) -> Seawall {
    builder(up)
        .breaker_defaults(BreakerConfig {
            window: WindowKind::Count(4),
            min_calls: 2,
            ..BreakerConfig::default()
        })
        .chain_with(hops[0], hops.iter().copied(), policy)
        .spawn()
        .await
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_healthy_stream_is_handed_over_at_its_first_content_event() {
    let up = ScriptedUpstream::new();
    up.on_stream("m", |_, _| {
        StreamAnswer::message("m", &["Hello", " there"], 100 * MS).head_after(50 * MS)
    });
    let sw = runtime(&up, &["m"], RetryPolicy::default()).await;
    let t0 = Instant::now();
    let reply = sw.stream(call("m")).await.expect("streams");
    // Head at 50 ms, first delta 100 ms later: handed over then, not at the end.
    assert_eq!(reply.time_to_first_token, 150 * MS);
    assert_eq!(t0.elapsed(), 150 * MS);
    assert_eq!(
        (reply.model.as_str(), reply.status, reply.attempts),
        ("m", 200, 1)
    );
    let events = drain(reply).await;
    assert_eq!(
        kinds(&events),
        vec![
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(text(&events), "Hello there");
    assert_eq!(t0.elapsed(), 250 * MS);
}

#[tokio::test(start_paused = true)]
async fn an_overload_before_content_falls_back_and_the_caller_sees_one_clean_stream() {
    let up = ScriptedUpstream::new();
    up.on_stream("primary", |_, _| {
        StreamAnswer::message("primary", &["never", "seen"], 10 * MS)
            .break_after(0, Ok(StreamAnswer::overloaded_event()))
    });
    up.on_stream("fallback", |_, _| {
        StreamAnswer::message("fallback", &["from", " fallback"], 10 * MS)
    });
    let sw = runtime(&up, &["primary", "fallback"], RetryPolicy::default()).await;
    let reply = sw.stream(call("primary")).await.expect("fell back");
    assert_eq!(reply.model, "fallback");
    assert_eq!(reply.attempts, 2);
    assert!(matches!(
        reply.trail[0].outcome,
        Outcome::Attempted {
            class: Class::Overloaded,
            ..
        }
    ));
    let events = drain(reply).await;
    assert_eq!(
        text(&events),
        "from fallback",
        "nothing of the primary leaked"
    );
    assert_eq!(
        kinds(&events)
            .iter()
            .filter(|k| **k == "message_start")
            .count(),
        1
    );
    assert_eq!(*kinds(&events).last().unwrap(), "message_stop");
}

#[tokio::test(start_paused = true)]
async fn an_overload_after_content_reaches_the_caller_as_an_error_event() {
    let up = ScriptedUpstream::new();
    up.on_stream("primary", |_, _| {
        StreamAnswer::message("primary", &["one", "two", "three"], 10 * MS)
            .break_after(2, Ok(StreamAnswer::overloaded_event()))
    });
    up.on_stream("fallback", |_, _| {
        StreamAnswer::message("fallback", &["x"], MS)
    });
    let sw = runtime(&up, &["primary", "fallback"], RetryPolicy::default()).await;
    let reply = sw.stream(call("primary")).await.expect("committed");
    assert_eq!(reply.model, "primary");
    let events = drain(reply).await;
    assert_eq!(text(&events), "onetwo");
    let last = events.last().unwrap();
    assert_eq!(last.event, "error");
    assert!(last.data.contains("overloaded_error"));
    assert_eq!(
        up.calls("fallback"),
        0,
        "committed: no fallback after content"
    );
    // The breaker heard about the failure.
    let status = sw.breaker_status("primary").await.unwrap();
    assert_eq!(status.stats.failures, 1);
}

#[tokio::test(start_paused = true)]
async fn a_stream_that_breaks_after_content_ends_with_an_api_shaped_error() {
    let up = ScriptedUpstream::new();
    up.on_stream("m", |_, _| {
        StreamAnswer::message("m", &["a", "b"], 10 * MS)
            .break_after(1, Err(TransportError::Reset("connection reset".into())))
    });
    let sw = runtime(&up, &["m"], RetryPolicy::default()).await;
    let events = drain(sw.stream(call("m")).await.unwrap()).await;
    assert_eq!(text(&events), "a");
    let last = events.last().unwrap();
    assert_eq!(last.event, "error");
    let v: serde_json::Value = serde_json::from_str(&last.data).unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "api_error");
}

#[tokio::test(start_paused = true)]
async fn the_first_token_timeout_moves_a_silent_stream_to_the_fallback() {
    let up = ScriptedUpstream::new();
    // The primary sends its head and pings, but its first content would come after an hour.
    up.on_stream("primary", |_, _| {
        StreamAnswer::message("primary", &["late"], Duration::from_secs(3600))
    });
    up.on_stream("fallback", |_, _| {
        StreamAnswer::message("fallback", &["ok"], MS)
    });
    let policy = RetryPolicy {
        first_token_timeout: Duration::from_secs(2),
        ..RetryPolicy::default()
    };
    let sw = runtime(&up, &["primary", "fallback"], policy).await;
    let t0 = Instant::now();
    let reply = sw.stream(call("primary")).await.expect("fell back");
    assert_eq!(reply.model, "fallback");
    assert_eq!(t0.elapsed(), Duration::from_secs(2) + MS);
    assert!(matches!(
        reply.trail[0].outcome,
        Outcome::Attempted {
            class: Class::Timeout,
            ..
        }
    ));
}

#[tokio::test(start_paused = true)]
async fn the_deadline_ends_a_committed_stream_with_an_error_event() {
    let up = ScriptedUpstream::new();
    up.on_stream("m", |_, _| {
        StreamAnswer::message("m", &["a", "b", "c"], Duration::from_secs(4))
    });
    let sw = runtime(&up, &["m"], RetryPolicy::default()).await;
    let t0 = Instant::now();
    let reply = sw
        .stream(call("m").timeout(Duration::from_secs(10)))
        .await
        .unwrap();
    let events = drain(reply).await;
    assert_eq!(text(&events), "ab");
    assert_eq!(events.last().unwrap().event, "error");
    assert!(events.last().unwrap().data.contains("timeout_error"));
    assert_eq!(t0.elapsed(), Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn error_statuses_on_a_stream_request_are_classified_like_unary_ones() {
    let up = ScriptedUpstream::new();
    up.on_stream("bad", |_, _| {
        StreamAnswer::Whole(Answer::status(400, "invalid_request_error"))
    });
    up.on_stream("busy", |_, n| {
        if n == 0 {
            StreamAnswer::Whole(Answer::status(529, "overloaded_error").header("retry-after", "1"))
        } else {
            StreamAnswer::message("busy", &["ok"], MS)
        }
    });
    let sw = builder(&up)
        .chain("bad", ["bad"])
        .chain("busy", ["busy"])
        .spawn()
        .await
        .unwrap();
    let err = sw.stream(call("bad")).await.expect_err("permanent");
    assert!(
        matches!(err, Error::Rejected { status: 400, .. }),
        "{err:?}"
    );
    assert_eq!(up.calls("bad"), 1);
    let t0 = Instant::now();
    let reply = sw
        .stream(call("busy"))
        .await
        .expect("retried after the hint");
    assert_eq!(reply.attempts, 2);
    assert_eq!(t0.elapsed(), Duration::from_secs(1) + MS);
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_is_skipped_for_streams_too() {
    let up = ScriptedUpstream::new();
    up.on_stream("primary", |_, _| {
        StreamAnswer::Whole(Answer::status(529, "overloaded_error"))
    });
    up.on_stream("fallback", |_, _| {
        StreamAnswer::message("fallback", &["ok"], MS)
    });
    let sw = runtime(&up, &["primary", "fallback"], RetryPolicy::default()).await;
    for _ in 0..6 {
        let r = sw.stream(call("primary")).await.unwrap();
        assert_eq!(r.model, "fallback");
        drain(r).await;
    }
    assert_eq!(up.calls("primary"), 2, "opened after its 2-call minimum");
    assert_eq!(
        sw.breaker_status("primary").await.unwrap().state,
        StateKind::Open
    );
}

#[tokio::test(start_paused = true)]
async fn a_stream_settles_the_input_tokens_its_message_start_reports() {
    // The input-token count of a stream arrives in `message_start`, before the first content
    // event: it must reach the governor, or concurrent streams over-admit input tokens.
    let up = ScriptedUpstream::new();
    up.on_stream("m", |_, _| StreamAnswer::message("m", &["a", "b"], MS));
    let sw = builder(&up)
        .model("m", BreakerConfig::default())
        .limits(
            "s",
            seawall_actors::Limits {
                requests_per_minute: None,
                input_tokens_per_minute: Some(600),
                output_tokens_per_minute: None,
            },
        )
        .transit_allowance(Duration::ZERO)
        .spawn()
        .await
        .unwrap();
    let reply = sw.stream(call("m")).await.unwrap();
    drain(reply).await;
    // Let the settlement land. The stream took 2 ms, which refills 600/min x 2 ms = 0.02.
    tokio::task::yield_now().await;
    let status = sw.governor_status().await.unwrap();
    let input = status[0].buckets[0]
        .levels
        .iter()
        .find(|l| l.dimension.as_str() == "input_tokens")
        .expect("an input bucket")
        .available;
    // The scripted stream reports 12 input tokens in its message_start: exactly those are
    // charged (not 0, and not the reservation's estimate).
    assert!((input - (600.0 - 12.0)).abs() < 0.05, "{input}");
}
