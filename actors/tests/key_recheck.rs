//! A key quarantined by a 401 is checked again after a back-off, with a token count (the
//! cheapest call there is), not left out for good: 30 s, then doubling while the upstream still
//! refuses it; back in service as soon as a check passes. With no token counter, the key goes
//! back for a trial by the next call. No user call is spent finding out. Paused time.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use seawall_actors::scripted::{Answer, ScriptedUpstream};
use seawall_actors::upstream::CountFuture;
use seawall_actors::{Attempt, Call, Error, Seawall, TransportError, Upstream, UpstreamFuture};
use support::secs;

/// The scripted upstream, with a token counter that refuses the key while it is revoked.
#[derive(Clone)]
struct Revocable {
    inner: ScriptedUpstream,
    revoked: Arc<AtomicBool>,
    counts: Arc<AtomicU64>,
    counter: bool,
    /// What the counter answers while the key is revoked.
    refusal: Arc<std::sync::Mutex<u16>>,
}

impl Upstream for Revocable {
    fn send(&self, attempt: Attempt) -> UpstreamFuture<'_> {
        self.inner.send(attempt)
    }

    fn count_tokens(&self, _attempt: Attempt) -> Option<CountFuture<'_>> {
        if !self.counter {
            return None;
        }
        Some(Box::pin(async move {
            self.counts.fetch_add(1, Ordering::SeqCst);
            if self.revoked.load(Ordering::SeqCst) {
                Err(TransportError::Status(*self.refusal.lock().unwrap()))
            } else {
                Ok(10)
            }
        }))
    }
}

async fn setup(counter: bool) -> (Seawall, Revocable) {
    let inner = ScriptedUpstream::new();
    let revoked = Arc::new(AtomicBool::new(true));
    let r = Arc::clone(&revoked);
    inner.on("m", move |_, _| {
        if r.load(Ordering::SeqCst) {
            Answer::status(401, "authentication_error")
        } else {
            Answer::ok("m", "served")
        }
    });
    let up = Revocable {
        inner,
        revoked,
        counts: Arc::default(),
        counter,
        refusal: Arc::new(std::sync::Mutex::new(401)),
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
    Call::new("m", 16).user("hello")
}

#[tokio::test(start_paused = true)]
async fn a_quarantined_key_is_checked_after_a_back_off_and_comes_back_when_it_passes() {
    let (sw, up) = setup(true).await;
    // The 401 quarantines the only key; the next call is refused at once, unsent.
    let err = sw.complete(call()).await.unwrap_err();
    assert!(
        matches!(err, Error::Rejected { status: 401, .. }),
        "{err:?}"
    );
    assert_eq!(up.inner.calls("m"), 1);
    let err = sw.complete(call()).await.unwrap_err();
    assert!(!matches!(err, Error::Rejected { .. }), "{err:?}");
    assert_eq!(up.inner.calls("m"), 1, "no call spent on a quarantined key");
    let status = &sw.governor_status().await.unwrap()[0];
    assert_eq!(status.quarantined_keys.len(), 1);
    let check = &status.key_checks[0];
    assert!(check.quarantined);
    assert_eq!(check.last_checked_ago, None, "not checked yet");
    assert_eq!(check.next_check_in, Some(secs(30)));
    assert_eq!(up.counts.load(Ordering::SeqCst), 0);

    // 30 s on, the check runs: still refused, so the next one is 60 s away.
    tokio::time::sleep(secs(30)).await;
    let status = &sw.governor_status().await.unwrap()[0];
    assert_eq!(up.counts.load(Ordering::SeqCst), 1, "one token count");
    let check = &status.key_checks[0];
    assert!(check.quarantined);
    assert_eq!(check.last_checked_ago, Some(Duration::ZERO));
    assert_eq!(check.next_check_in, Some(secs(60)));
    assert_eq!(up.inner.calls("m"), 1, "the check spent no call");

    // The key is fixed upstream; the next check (60 s later) finds it good and it serves again.
    up.revoked.store(false, Ordering::SeqCst);
    tokio::time::sleep(secs(59)).await;
    assert_eq!(up.counts.load(Ordering::SeqCst), 1, "not before its time");
    tokio::time::sleep(secs(1)).await;
    let status = &sw.governor_status().await.unwrap()[0];
    assert_eq!(up.counts.load(Ordering::SeqCst), 2);
    assert!(status.quarantined_keys.is_empty(), "{status:?}");
    let check = &status.key_checks[0];
    assert!(!check.quarantined);
    assert_eq!(check.last_checked_ago, Some(Duration::ZERO));
    assert_eq!(check.next_check_in, None);
    let reply = sw
        .complete(call())
        .await
        .expect("served with the key again");
    assert_eq!(reply.model, "m");
    assert_eq!(up.inner.calls("m"), 2);
}

#[tokio::test(start_paused = true)]
async fn without_a_token_counter_a_quarantined_key_goes_back_for_a_trial() {
    let (sw, up) = setup(false).await;
    sw.complete(call()).await.unwrap_err();
    assert_eq!(
        sw.governor_status().await.unwrap()[0]
            .quarantined_keys
            .len(),
        1
    );
    // Still revoked: after 30 s the next call tries it, is refused, and the key goes back
    // into quarantine for longer (60 s).
    tokio::time::sleep(secs(30)).await;
    assert!(sw.governor_status().await.unwrap()[0]
        .quarantined_keys
        .is_empty());
    let err = sw.complete(call()).await.unwrap_err();
    assert!(
        matches!(err, Error::Rejected { status: 401, .. }),
        "{err:?}"
    );
    assert_eq!(up.inner.calls("m"), 2);
    let status = &sw.governor_status().await.unwrap()[0];
    assert_eq!(status.key_checks[0].next_check_in, Some(secs(60)));
    // Fixed: the trial after the longer back-off is served.
    up.revoked.store(false, Ordering::SeqCst);
    tokio::time::sleep(secs(60)).await;
    sw.complete(call()).await.expect("served after the trial");
}

#[tokio::test(start_paused = true)]
async fn an_overloaded_counter_is_no_verdict_on_the_key() {
    let (sw, up) = setup(true).await;
    *up.refusal.lock().unwrap() = 529;
    let _ = sw.complete(call()).await.unwrap_err(); // the 401 quarantines the key
    tokio::time::sleep(secs(30)).await;
    let status = &sw.governor_status().await.unwrap()[0];
    assert_eq!(up.counts.load(Ordering::SeqCst), 1, "one token count");
    let check = &status.key_checks[0];
    assert!(check.quarantined, "not back on a 529");
    assert_eq!(
        check.next_check_in,
        Some(secs(30)),
        "the same back-off, not doubled: a 529 says nothing of the key"
    );
}
