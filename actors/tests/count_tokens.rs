//! `Seawall::count_tokens` is the runtime's path, not a second one: the chain's first hop, the
//! key the governor's pool picks (a quarantined key is not used), failures classified like an
//! attempt's, and the heuristic estimate (saying why) when no count is had. Paused time.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use seawall_actors::scripted::{Answer, ScriptedUpstream};
use seawall_actors::upstream::CountFuture;
use seawall_actors::{
    Attempt, Call, Class, CountMiss, Error, Seawall, TokenCount, TransportError, Upstream,
    UpstreamFuture,
};

/// The scripted upstream with two keys and a counter that answers `count` (or fails with
/// `Status(fail)`), noting the key each count used.
#[derive(Clone)]
struct Counting {
    inner: ScriptedUpstream,
    counter: bool,
    fail: Arc<Mutex<Option<u16>>>,
    keys_used: Arc<Mutex<Vec<usize>>>,
}

impl Upstream for Counting {
    fn send(&self, attempt: Attempt) -> UpstreamFuture<'_> {
        self.inner.send(attempt)
    }

    fn count_tokens(&self, attempt: Attempt) -> Option<CountFuture<'_>> {
        if !self.counter {
            return None;
        }
        self.keys_used.lock().unwrap().push(attempt.key);
        let fail = *self.fail.lock().unwrap();
        Some(Box::pin(async move {
            match fail {
                Some(status) => Err(TransportError::Status(status)),
                None => Ok(42),
            }
        }))
    }

    fn key_count(&self) -> usize {
        2
    }
}

async fn setup(counter: bool) -> (Seawall, Counting) {
    let inner = ScriptedUpstream::new().with_keys(2);
    // Key 0 is refused (401): one call quarantines it and is served with key 1.
    inner.on("m", |a, _| {
        if a.key == 0 {
            Answer::status(401, "authentication_error")
        } else {
            Answer::ok("m", "served")
        }
    });
    let up = Counting {
        inner,
        counter,
        fail: Arc::default(),
        keys_used: Arc::default(),
    };
    let sw = Seawall::builder()
        .upstream("s", up.clone())
        .chain("m", ["m"])
        .spawn()
        .await
        .unwrap();
    (sw, up)
}

fn call() -> Call {
    Call::new("m", 1).user("how many tokens is this?")
}

fn body() -> Bytes {
    Bytes::from_static(
        br#"{"model":"m","messages":[{"role":"user","content":"how many tokens is this?"}]}"#,
    )
}

const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

#[tokio::test(start_paused = true)]
async fn a_count_uses_the_key_the_governor_picks_never_a_quarantined_one() {
    let (sw, up) = setup(true).await;
    // Quarantine key 0: the call's first attempt is refused with it and served with key 1.
    let reply = sw.complete(call()).await.unwrap();
    assert_eq!(reply.attempts, 2);
    let status = sw.governor_status().await.unwrap();
    assert_eq!(status[0].quarantined_keys.len(), 1, "{status:?}");
    up.keys_used.lock().unwrap().clear();
    for _ in 0..4 {
        let counted = sw.count_tokens(&call(), body(), TIMEOUT).await.unwrap();
        assert_eq!(counted, TokenCount::Counted(42));
    }
    assert_eq!(*up.keys_used.lock().unwrap(), vec![1, 1, 1, 1]);
}

#[tokio::test(start_paused = true)]
async fn without_a_counter_or_with_a_failing_one_the_answer_is_the_estimate_and_says_why() {
    let (sw, _) = setup(false).await;
    let estimate = call().estimate_input_tokens();
    assert_eq!(
        sw.count_tokens(&call(), body(), TIMEOUT).await.unwrap(),
        TokenCount::Estimated {
            tokens: estimate,
            why: CountMiss::NoCounter
        }
    );

    let (sw, up) = setup(true).await;
    *up.fail.lock().unwrap() = Some(529);
    assert_eq!(
        sw.count_tokens(&call(), body(), TIMEOUT).await.unwrap(),
        TokenCount::Estimated {
            tokens: estimate,
            why: CountMiss::Failed(Class::Overloaded)
        },
        "a 529 is classified as an attempt's would be"
    );
    *up.fail.lock().unwrap() = Some(401);
    match sw.count_tokens(&call(), body(), TIMEOUT).await.unwrap() {
        TokenCount::Estimated {
            why: CountMiss::Failed(class),
            ..
        } => assert_eq!(class, Class::Authentication),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn an_unknown_model_or_a_bad_call_is_a_clear_error() {
    let (sw, _) = setup(true).await;
    let err = sw
        .count_tokens(&Call::new("nope", 1).user("hi"), body(), TIMEOUT)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::UnknownModel(ref m) if m == "nope"),
        "{err}"
    );
    let err = sw
        .count_tokens(&Call::new("m", 1), body(), TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidCall(_)), "{err}");
}
