//! Idempotency and single-flight on paused time: a repeated call never costs or does twice what
//! it already did.

mod support;

use std::time::Duration;

use seawall_actors::scripted::{Answer, ScriptedUpstream};
use seawall_actors::{Call, Error, Seawall, Source};
use serde_json::json;
use support::{builder, secs};

async fn runtime(up: &ScriptedUpstream) -> Seawall {
    builder(up)
        .chain("m", ["m"])
        .idempotency(secs(60))
        .spawn()
        .await
        .unwrap()
}

fn keyed(key: &str) -> Call {
    Call::new("m", 32)
        .user("charge the card once")
        .idempotency_key(key)
}

#[tokio::test(start_paused = true)]
async fn concurrent_identical_calls_share_one_upstream_call() {
    let up = ScriptedUpstream::new();
    up.on("m", |_, n| {
        Answer::ok("m", &format!("answer {n}")).after(secs(2))
    });
    let sw = runtime(&up).await;
    let handles: Vec<_> = (0..10)
        .map(|_| {
            let sw = sw.clone();
            tokio::spawn(async move { sw.complete(keyed("order-42")).await })
        })
        .collect();
    let mut texts = Vec::new();
    for h in handles {
        let r = h.await.unwrap().expect("served");
        assert_eq!(r.source, Source::Live);
        texts.push(r.text());
    }
    assert_eq!(up.calls("m"), 1, "single flight");
    assert!(texts.iter().all(|t| t == "answer 0"), "{texts:?}");
    // The key went upstream too.
    assert_eq!(up.log().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_finished_key_is_replayed_until_it_expires() {
    let up = ScriptedUpstream::new();
    up.on("m", |_, n| Answer::ok("m", &format!("answer {n}")));
    let sw = runtime(&up).await;
    let first = sw.complete(keyed("k")).await.unwrap();
    let again = sw.complete(keyed("k")).await.unwrap();
    assert_eq!(again.source, Source::Replay);
    assert_eq!(again.text(), first.text());
    assert_eq!(up.calls("m"), 1);
    // Other keys are other calls.
    assert_eq!(
        sw.complete(keyed("other")).await.unwrap().text(),
        "answer 1"
    );
    // After the TTL the key is free again.
    tokio::time::sleep(secs(61)).await;
    let later = sw.complete(keyed("k")).await.unwrap();
    assert_eq!(later.source, Source::Live);
    assert_eq!(later.text(), "answer 2");
}

#[tokio::test(start_paused = true)]
async fn a_transient_failure_is_shared_but_not_kept() {
    let up = ScriptedUpstream::new();
    up.on("m", |_, n| {
        if n < 3 {
            Answer::status(503, "api_error").after(Duration::from_millis(10))
        } else {
            Answer::ok("m", "recovered")
        }
    });
    let sw = runtime(&up).await;
    let call = || keyed("k").timeout(Duration::from_millis(100));
    let err = sw
        .complete(call())
        .await
        .expect_err("the only model is down");
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    let attempts = up.calls("m");
    // Not stored: the next call with the key tries again, and gets through.
    tokio::time::sleep(secs(5)).await;
    let ok = sw.complete(keyed("k")).await.expect("tried again");
    assert_eq!(ok.source, Source::Live);
    assert!(up.calls("m") > attempts);
}

#[tokio::test(start_paused = true)]
async fn a_permanent_rejection_is_kept_like_an_answer() {
    let up = ScriptedUpstream::new();
    up.on("m", |_, _| Answer::status(400, "invalid_request_error"));
    let sw = runtime(&up).await;
    for _ in 0..3 {
        let err = sw.complete(keyed("bad")).await.expect_err("rejected");
        assert!(
            matches!(err, Error::Rejected { status: 400, .. }),
            "{err:?}"
        );
    }
    assert_eq!(up.calls("m"), 1);
}

#[tokio::test(start_paused = true)]
async fn content_keys_match_the_same_request_however_it_is_spelled() {
    let up = ScriptedUpstream::new();
    up.on("m", |_, n| Answer::ok("m", &format!("answer {n}")));
    let sw = runtime(&up).await;
    let a = Call::from_value(json!({"model": "m", "max_tokens": 16, "temperature": 0.5,
        "messages": [{"role": "user", "content": "hi"}]}))
    .unwrap()
    .idempotent_by_content();
    let b = Call::from_value(json!({"messages": [{"content": "hi", "role": "user"}],
        "temperature": 0.5, "max_tokens": 16, "model": "m"}))
    .unwrap()
    .idempotent_by_content();
    let c = Call::new("m", 16)
        .user("something else")
        .idempotent_by_content();
    assert_eq!(a.canonical_key(), b.canonical_key());
    assert_ne!(a.canonical_key(), c.canonical_key());
    assert_eq!(sw.complete(a).await.unwrap().source, Source::Live);
    assert_eq!(sw.complete(b).await.unwrap().source, Source::Replay);
    assert_eq!(sw.complete(c).await.unwrap().source, Source::Live);
    assert_eq!(up.calls("m"), 2);
}

#[tokio::test(start_paused = true)]
async fn without_the_table_keys_are_only_forwarded() {
    let up = ScriptedUpstream::new();
    up.healthy("m", Duration::ZERO);
    let sw = builder(&up).chain("m", ["m"]).spawn().await.unwrap();
    for _ in 0..2 {
        assert_eq!(sw.complete(keyed("k")).await.unwrap().source, Source::Live);
    }
    assert_eq!(up.calls("m"), 2);
}
