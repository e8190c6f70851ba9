//! Conversation pinning: a conversation a fallback served stays on that model until the
//! primary's breaker has closed again, so one task does not flap between models. Paused time,
//! scripted upstream.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use seawall_actors::policy::breaker::StateKind;
use seawall_actors::scripted::{Answer, ScriptedUpstream};
use seawall_actors::{BreakerConfig, Call, RetryPolicy, Seawall};
use support::{builder, drain, secs};

/// A model that answers 529 while its switch is on.
fn switchable(up: &ScriptedUpstream, model: &'static str, down: bool) -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(down));
    let f = flag.clone();
    up.on(model, move |_, _| {
        if f.load(Ordering::SeqCst) {
            Answer::status(529, "overloaded_error")
        } else {
            Answer::ok(model, "ok")
        }
    });
    flag
}

async fn runtime(up: &ScriptedUpstream, hops: &[&str]) -> Seawall {
    let mut b = builder(up);
    for m in hops {
        b = b.model(m, BreakerConfig::consecutive_failures(1, secs(10)));
    }
    b.chain_with(
        "chat",
        hops.iter().copied(),
        RetryPolicy {
            deadline: secs(5),
            ..RetryPolicy::default()
        },
    )
    .spawn()
    .await
    .unwrap()
}

fn turn(conversation: Option<&str>) -> Call {
    let call = Call::new("primary", 16).user("next step").chain("chat");
    match conversation {
        Some(c) => call.conversation(c),
        None => call,
    }
}

fn calls_to(up: &ScriptedUpstream, model: &str) -> usize {
    up.log().iter().filter(|l| l.model == model).count()
}

#[tokio::test(start_paused = true)]
async fn a_conversation_stays_on_its_fallback_until_the_primary_has_closed_again() {
    let up = ScriptedUpstream::new();
    let primary = switchable(&up, "primary", true);
    up.healthy("fallback", Duration::ZERO);
    let sw = runtime(&up, &["primary", "fallback"]).await;

    // The primary fails; the conversation is served by the fallback and pinned there.
    let r = sw.complete(turn(Some("task-1"))).await.unwrap();
    assert_eq!(r.model, "fallback");
    assert_eq!(
        sw.breaker_status("primary").await.unwrap().state,
        StateKind::Open
    );

    // The primary recovers and its breaker goes half-open. A call without a conversation is
    // the trial; the pinned conversation is not sent to a model still on trial.
    primary.store(false, Ordering::SeqCst);
    tokio::time::sleep(secs(11)).await;
    let before = calls_to(&up, "primary");
    let pinned = sw.complete(turn(Some("task-1"))).await.unwrap();
    assert_eq!(
        pinned.model, "fallback",
        "pinned while the primary is not closed"
    );
    assert_eq!(
        calls_to(&up, "primary"),
        before,
        "no call of it went to the primary"
    );
    let trial = sw.complete(turn(None)).await.unwrap();
    assert_eq!(trial.model, "primary");
    assert_eq!(
        sw.breaker_status("primary").await.unwrap().state,
        StateKind::Closed
    );

    // Closed again: the conversation comes back to the primary.
    let back = sw.complete(turn(Some("task-1"))).await.unwrap();
    assert_eq!(back.model, "primary");
    // And a new fallback episode starts unpinned.
    let other = sw.complete(turn(Some("task-2"))).await.unwrap();
    assert_eq!(other.model, "primary");
}

#[tokio::test(start_paused = true)]
async fn the_pin_is_the_hop_that_served_and_pinned_calls_skip_the_hops_before_it() {
    let up = ScriptedUpstream::new();
    switchable(&up, "primary", true);
    let second = switchable(&up, "second", true);
    up.healthy("third", Duration::ZERO);
    let sw = runtime(&up, &["primary", "second", "third"]).await;
    let r = sw.complete(turn(Some("task"))).await.unwrap();
    assert_eq!(r.model, "third");

    // The second model recovers at once (its breaker is closed again after a trial); the
    // conversation still stays where it was served.
    second.store(false, Ordering::SeqCst);
    tokio::time::sleep(secs(11)).await;
    let (p, s) = (calls_to(&up, "primary"), calls_to(&up, "second"));
    for _ in 0..3 {
        let r = sw.complete(turn(Some("task"))).await.unwrap();
        assert_eq!(r.model, "third");
    }
    assert_eq!(
        (calls_to(&up, "primary"), calls_to(&up, "second")),
        (p, s),
        "pinned calls went straight to the pinned hop"
    );
    // An unpinned call walks the chain as usual.
    let free = sw.complete(turn(None)).await.unwrap();
    assert_ne!(free.model, "third");
}

#[tokio::test(start_paused = true)]
async fn when_the_pinned_model_fails_the_call_still_gets_an_answer_and_moves_the_pin() {
    let up = ScriptedUpstream::new();
    let primary = switchable(&up, "primary", true);
    let fallback = switchable(&up, "fallback", false);
    let sw = runtime(&up, &["primary", "fallback"]).await;
    assert_eq!(
        sw.complete(turn(Some("t"))).await.unwrap().model,
        "fallback"
    );

    // Now the pinned fallback fails, and the primary is back (half-open after its open time).
    fallback.store(true, Ordering::SeqCst);
    primary.store(false, Ordering::SeqCst);
    tokio::time::sleep(secs(11)).await;
    let r = sw
        .complete(turn(Some("t")))
        .await
        .expect("the hops before the pin are the last resort, not a lost call");
    assert_eq!(r.model, "primary");
    // Served by the primary: unpinned, so the next turn starts at the primary again.
    fallback.store(false, Ordering::SeqCst);
    let next = sw.complete(turn(Some("t"))).await.unwrap();
    assert_eq!(next.model, "primary");
}

#[tokio::test(start_paused = true)]
async fn a_streamed_turn_pins_its_conversation_too() {
    use seawall_actors::scripted::StreamAnswer;
    let up = ScriptedUpstream::new();
    up.on_stream("primary", |_, _| {
        StreamAnswer::Whole(Answer::status(529, "overloaded_error"))
    });
    up.on_stream("fallback", |_, _| {
        StreamAnswer::message("fallback", &["hi"], Duration::from_millis(1))
    });
    let recovered = switchable(&up, "primary", false);
    up.healthy("fallback", Duration::ZERO);
    let sw = runtime(&up, &["primary", "fallback"]).await;
    let s = sw.stream(turn(Some("chat-9"))).await.unwrap();
    assert_eq!(s.model, "fallback");
    drain(s).await;
    // The primary answers unary calls again and its breaker is half-open, so an unpinned call
    // would be its trial; the conversation stays where its streamed turn was served.
    assert!(!recovered.load(Ordering::SeqCst));
    tokio::time::sleep(secs(11)).await;
    assert_eq!(
        sw.breaker_status("primary").await.unwrap().state,
        StateKind::HalfOpen
    );
    let next = sw.complete(turn(Some("chat-9"))).await.unwrap();
    assert_eq!(next.model, "fallback", "pinned by the streamed turn");
    let free = sw.complete(turn(None)).await.unwrap();
    assert_eq!(free.model, "primary", "the unpinned call is the trial");
}
