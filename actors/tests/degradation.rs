//! Degraded answers when no model can answer: the response cache and static answers, per chain,
//! always flagged. Paused time, scripted upstream.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod support;

use seawall_actors::scripted::{Answer, ScriptedUpstream};
use seawall_actors::{Call, Degrade, Error, RetryPolicy, Source};
use support::{builder, drain, kinds, secs, text};

fn policy(degrade: Vec<Degrade>) -> RetryPolicy {
    RetryPolicy {
        deadline: secs(2),
        degrade,
        ..RetryPolicy::default()
    }
}

fn ask(chain: &str) -> Call {
    Call::new("m", 32)
        .user("what is our refund policy?")
        .chain(chain)
}

#[tokio::test(start_paused = true)]
async fn a_down_model_is_covered_by_the_cache_then_the_static_answer_in_the_chains_order() {
    let up = ScriptedUpstream::new();
    let down = Arc::new(AtomicBool::new(false));
    let d = down.clone();
    up.on("m", move |_, n| {
        if d.load(Ordering::SeqCst) {
            Answer::status(529, "overloaded_error")
        } else {
            Answer::ok("m", &format!("live answer {n}"))
        }
    });
    let sw = builder(&up)
        .model(
            "m",
            seawall_actors::BreakerConfig::consecutive_failures(1000, secs(1)),
        )
        .chain_with(
            "chat",
            ["m"],
            policy(vec![Degrade::Cache, Degrade::Static("Back soon.".into())]),
        )
        .chain_with("code", ["m"], policy(vec![]))
        .response_cache(100, secs(600))
        .spawn()
        .await
        .unwrap();

    // Live answers are cached for the chain that opted in.
    let live = sw.complete(ask("chat")).await.unwrap();
    assert_eq!(live.source, Source::Live);
    assert_eq!(live.age, None);

    down.store(true, Ordering::SeqCst);
    tokio::time::sleep(secs(30)).await;
    let cached = sw
        .complete(ask("chat"))
        .await
        .expect("degraded to the cache");
    assert_eq!(cached.source, Source::Cache);
    assert!(cached.source.is_degraded());
    assert_eq!(cached.text(), live.text());
    assert!(cached.age.unwrap() >= secs(30), "{:?}", cached.age);
    assert!(cached.attempts >= 1, "the live attempts are still reported");

    // A request never seen: no cache entry, so the static answer.
    let other = Call::new("m", 32).user("something new").chain("chat");
    let fixed = sw
        .complete(other)
        .await
        .expect("degraded to the static answer");
    assert_eq!(fixed.source, Source::Static);
    assert_eq!(fixed.text(), "Back soon.");

    // A chain without degradation gets the honest error.
    let err = sw
        .complete(ask("code"))
        .await
        .expect_err("no degradation for code");
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
}

#[tokio::test(start_paused = true)]
async fn a_rejected_request_is_never_answered_from_the_cache() {
    let up = ScriptedUpstream::new();
    let bad = Arc::new(AtomicBool::new(false));
    let b = bad.clone();
    up.on("m", move |_, _| {
        if b.load(Ordering::SeqCst) {
            Answer::status(400, "invalid_request_error")
        } else {
            Answer::ok("m", "fine")
        }
    });
    let sw = builder(&up)
        .chain_with(
            "chat",
            ["m"],
            policy(vec![Degrade::Cache, Degrade::Static("x".into())]),
        )
        .response_cache(100, secs(600))
        .spawn()
        .await
        .unwrap();
    sw.complete(ask("chat")).await.unwrap();
    bad.store(true, Ordering::SeqCst);
    let err = sw
        .complete(ask("chat"))
        .await
        .expect_err("a bad request stays rejected");
    assert!(
        matches!(err, Error::Rejected { status: 400, .. }),
        "{err:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn cached_answers_expire() {
    let up = ScriptedUpstream::new();
    let down = Arc::new(AtomicBool::new(false));
    let d = down.clone();
    up.on("m", move |_, _| {
        if d.load(Ordering::SeqCst) {
            Answer::status(503, "api_error")
        } else {
            Answer::ok("m", "fresh")
        }
    });
    let sw = builder(&up)
        .chain_with("chat", ["m"], policy(vec![Degrade::Cache]))
        .response_cache(100, secs(60))
        .spawn()
        .await
        .unwrap();
    sw.complete(ask("chat")).await.unwrap();
    down.store(true, Ordering::SeqCst);
    tokio::time::sleep(secs(61)).await;
    let err = sw
        .complete(ask("chat"))
        .await
        .expect_err("the entry expired");
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
}

#[tokio::test(start_paused = true)]
async fn streams_are_cached_whole_and_degrade_to_the_cache_or_static_answer_as_events() {
    use seawall_actors::scripted::StreamAnswer;
    let up = ScriptedUpstream::new();
    let down = Arc::new(AtomicBool::new(false));
    let d = down.clone();
    up.on_stream("m", move |_, _| {
        if d.load(Ordering::SeqCst) {
            StreamAnswer::Whole(Answer::status(529, "overloaded_error"))
        } else {
            StreamAnswer::message(
                "m",
                &["streamed ", "live ", "answer"],
                Duration::from_millis(5),
            )
        }
    });
    // Unary calls only come once the model is down: they overload too.
    up.on("m", |_, _| Answer::status(529, "overloaded_error"));
    let sw = builder(&up)
        .model(
            "m",
            seawall_actors::BreakerConfig::consecutive_failures(1000, secs(1)),
        )
        .chain_with(
            "chat",
            ["m"],
            policy(vec![
                Degrade::Cache,
                Degrade::Static("Back soon.".into()),
                Degrade::Queue,
            ]),
        )
        .response_cache(100, secs(600))
        .queue(
            Arc::new(seawall_actors::MemoryJobStore::default()),
            seawall_actors::QueueConfig::default(),
        )
        .spawn()
        .await
        .unwrap();
    let live = sw.stream(ask("chat")).await.unwrap();
    assert_eq!(live.source, Source::Live);
    let live_events = drain(live).await;
    assert_eq!(text(&live_events), "streamed live answer");

    down.store(true, Ordering::SeqCst);
    tokio::time::sleep(secs(20)).await;
    // The streamed answer was kept whole: the same request now streams it from the cache.
    let cached = sw.stream(ask("chat")).await.expect("degraded to the cache");
    assert_eq!(cached.source, Source::Cache);
    assert!(cached.age.unwrap() >= secs(20));
    let events = drain(cached).await;
    assert_eq!(text(&events), "streamed live answer");
    let kinds = kinds(&events);
    assert_eq!(kinds.first(), Some(&"message_start"));
    assert_eq!(kinds.last(), Some(&"message_stop"));
    // The unary form of the same request is served by the same cache entry.
    let unary = sw.complete(ask("chat")).await.unwrap();
    assert_eq!(unary.source, Source::Cache);
    assert_eq!(unary.text(), "streamed live answer");

    // A request never answered: the static answer as events. A stream is never queued.
    let other = Call::new("m", 32).user("brand new").chain("chat");
    let fixed = sw
        .stream(other)
        .await
        .expect("degraded to the static answer");
    assert_eq!(fixed.source, Source::Static);
    assert_eq!(text(&drain(fixed).await), "Back soon.");
    assert_eq!(sw.queue_depth().await.unwrap(), (0, 0));
}
