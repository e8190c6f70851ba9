//! Degraded answers when no model can answer: the response cache and static answers, per chain,
//! always flagged. Paused time, scripted upstream.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use seawall_actors::scripted::{Answer, ScriptedUpstream};
use seawall_actors::{Call, Degrade, Error, RetryPolicy, Seawall, Source};

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

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
    let sw = Seawall::builder()
        .upstream("s", up.clone())
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
    let sw = Seawall::builder()
        .upstream("s", up.clone())
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
    let sw = Seawall::builder()
        .upstream("s", up.clone())
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
