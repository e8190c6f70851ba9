//! The durable queue for later: a call no model can answer now is stored and answered with a
//! job id at once, replayed when the model recovers, finished exactly once (done, failed or
//! expired) and announced. Paused time, scripted upstream, the in-memory store (the redb store's
//! crash test is in the root crate's `tests/queue.rs`).

mod support;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use seawall_actors::scripted::{Answer, ScriptedUpstream};
use seawall_actors::{
    BreakerConfig, Call, Degrade, Error, Event, JobState, JobStore, MemoryJobStore, QueueConfig,
    RetryPolicy, Seawall, Source,
};
use support::{builder, secs};

const UP: u8 = 0;
const DOWN: u8 = 1;
const REJECTS: u8 = 2;

/// A model whose behaviour the test switches: up, down (529) or rejecting (400).
fn switchable() -> (ScriptedUpstream, Arc<AtomicU8>) {
    let up = ScriptedUpstream::new();
    let mode = Arc::new(AtomicU8::new(DOWN));
    let m = mode.clone();
    up.on("m", move |_, n| match m.load(Ordering::SeqCst) {
        UP => Answer::ok("m", &format!("live answer {n}")),
        DOWN => Answer::status(529, "overloaded_error"),
        _ => Answer::status(400, "invalid_request_error"),
    });
    (up, mode)
}

fn policy(degrade: Vec<Degrade>) -> RetryPolicy {
    RetryPolicy {
        deadline: secs(2),
        degrade,
        ..RetryPolicy::default()
    }
}

fn config(ttl: Duration) -> QueueConfig {
    QueueConfig {
        ttl,
        poll: secs(1),
        run_timeout: Some(secs(5)),
        ..QueueConfig::default()
    }
}

async fn runtime(up: &ScriptedUpstream, store: Arc<dyn JobStore>, ttl: Duration) -> Seawall {
    builder(up)
        .model("m", BreakerConfig::consecutive_failures(3, secs(10)))
        .chain_with("code", ["m"], policy(vec![Degrade::Queue]))
        .chain_with(
            "chat",
            ["m"],
            policy(vec![Degrade::Static("Back soon.".into())]),
        )
        .queue(store, config(ttl))
        .spawn()
        .await
        .unwrap()
}

fn ask(chain: &str, n: usize) -> Call {
    Call::new("m", 32)
        .user(&format!("write function {n}"))
        .chain(chain)
}

/// Attempts the upstream saw that carried this idempotency key.
fn attempts_for(up: &ScriptedUpstream, key: &str) -> usize {
    up.log()
        .iter()
        .filter(|l| l.idempotency_key.as_deref() == Some(key))
        .count()
}

#[tokio::test(start_paused = true)]
async fn queued_calls_get_a_job_id_at_once_and_finish_exactly_once_when_the_model_recovers() {
    let (up, mode) = switchable();
    let sw = runtime(&up, Arc::new(MemoryJobStore::default()), secs(600)).await;
    let mut events = sw.subscribe();

    let mut ids = Vec::new();
    for n in 0..5 {
        let reply = sw
            .complete(ask("code", n))
            .await
            .expect("queued, not failed");
        assert_eq!(reply.source, Source::Queued);
        assert!(reply.source.is_degraded());
        assert_eq!(reply.status, 202);
        let id = reply.job_id().expect("the reply carries the job id");
        assert!(id.starts_with("job_"), "{id}");
        let job = sw.job(&id).await.unwrap().expect("stored before the reply");
        assert_eq!(job.state, JobState::Pending { last_error: None });
        assert_eq!(job.chain, "code");
        ids.push(id);
    }
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 5, "every job has its own id");

    // While the model stays down, the queue costs it little: the breaker refuses replays
    // without an upstream call, and one failing job holds back the chain's younger ones.
    let before = up.log().len();
    tokio::time::sleep(secs(60)).await;
    let while_down = up.log().len() - before;
    println!("upstream calls in 60 s of outage with 5 queued jobs: {while_down}");
    assert!(
        while_down <= 8,
        "{while_down} upstream calls in 60 s of outage for 5 jobs"
    );
    // The oldest job keeps checking, and records why it is not done yet; younger ones wait.
    let oldest = sw.job(&ids[0]).await.unwrap().unwrap();
    assert!(
        matches!(&oldest.state, JobState::Pending { last_error: Some(e) } if e.contains("no model could answer")),
        "{:?}",
        oldest.state
    );
    assert!(oldest.runs >= 2, "replayed {} times", oldest.runs);
    let youngest = sw.job(&ids[4]).await.unwrap().unwrap();
    assert!(youngest.runs < oldest.runs, "held back behind the oldest");

    mode.store(UP, Ordering::SeqCst);
    let recovered_at = up.log().len();
    for id in &ids {
        let job = sw
            .wait_job(id, secs(120))
            .await
            .unwrap()
            .expect("known job");
        match &job.state {
            JobState::Done {
                model,
                status,
                body,
                ..
            } => {
                assert_eq!(model, "m");
                assert_eq!(*status, 200);
                assert!(body.contains("live answer"), "{body}");
            }
            other => panic!("job {id} should be done: {other:?}"),
        }
    }
    // Exactly once: one successful upstream call per job, keyed by the job id.
    let after: Vec<_> = up.log().into_iter().skip(recovered_at).collect();
    for id in &ids {
        let n = after
            .iter()
            .filter(|l| l.idempotency_key.as_deref() == Some(id.as_str()))
            .count();
        assert_eq!(n, 1, "job {id} ran {n} times after recovery");
    }
    let mut done = Vec::new();
    while let Ok(e) = events.try_recv() {
        if let Event::Job { id, outcome, chain } = e {
            assert_eq!(chain, "code");
            assert_eq!(outcome, "done");
            done.push(id);
        }
    }
    done.sort();
    assert_eq!(done, unique, "each job announced exactly once");
    assert_eq!(sw.queue_depth().await.unwrap(), (0, 0));
    // Finished jobs stay retrievable.
    assert!(sw.job(&ids[0]).await.unwrap().unwrap().state.is_final());
    assert_eq!(sw.job("job_unknown").await.unwrap(), None);
}

#[tokio::test(start_paused = true)]
async fn a_permanent_rejection_on_replay_fails_the_job_once_and_is_never_retried() {
    let (up, mode) = switchable();
    let sw = runtime(&up, Arc::new(MemoryJobStore::default()), secs(600)).await;
    let id = sw.complete(ask("code", 1)).await.unwrap().job_id().unwrap();
    mode.store(REJECTS, Ordering::SeqCst);
    let job = sw.wait_job(&id, secs(120)).await.unwrap().unwrap();
    match &job.state {
        JobState::Failed { status, error, .. } => {
            assert_eq!(*status, Some(400));
            assert!(error.contains("invalid_request_error"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    let tried = attempts_for(&up, &id);
    tokio::time::sleep(secs(120)).await;
    assert_eq!(
        attempts_for(&up, &id),
        tried,
        "a failed job never runs again"
    );
    assert_eq!(tried, 1, "one rejected attempt, never retried");
}

#[tokio::test(start_paused = true)]
async fn a_job_not_answered_within_its_ttl_expires_with_its_last_error_recorded() {
    let (up, _mode) = switchable();
    let sw = runtime(&up, Arc::new(MemoryJobStore::default()), secs(30)).await;
    let mut events = sw.subscribe();
    let id = sw.complete(ask("code", 1)).await.unwrap().job_id().unwrap();
    let job = sw.wait_job(&id, secs(120)).await.unwrap().unwrap();
    match &job.state {
        JobState::Expired {
            last_error,
            finished_ms,
        } => {
            assert!(last_error.is_some(), "why it never ran is kept");
            let lived = finished_ms - job.created_ms;
            assert!(
                (30_000..31_000).contains(&lived),
                "expired after {lived} ms"
            );
        }
        other => panic!("{other:?}"),
    }
    let tried = attempts_for(&up, &id);
    tokio::time::sleep(secs(60)).await;
    assert_eq!(
        attempts_for(&up, &id),
        tried,
        "an expired job never runs again"
    );
    let expired = std::iter::from_fn(|| events.try_recv().ok())
        .filter(|e| {
            matches!(
                e,
                Event::Job {
                    outcome: "expired",
                    ..
                }
            )
        })
        .count();
    assert_eq!(expired, 1);
}

#[tokio::test(start_paused = true)]
async fn jobs_survive_a_restart_and_are_finished_by_the_next_runtime_from_the_same_store() {
    let store: Arc<dyn JobStore> = Arc::new(MemoryJobStore::default());
    let (up, mode) = switchable();
    let first = runtime(&up, store.clone(), secs(600)).await;
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(
            first
                .complete(ask("code", n))
                .await
                .unwrap()
                .job_id()
                .unwrap(),
        );
    }
    first.shutdown(secs(1)).await;

    mode.store(UP, Ordering::SeqCst);
    let second = runtime(&up, store.clone(), secs(600)).await;
    for id in &ids {
        let job = second.wait_job(id, secs(60)).await.unwrap().unwrap();
        assert_eq!(job.state.as_str(), "done", "{id}: {:?}", job.state);
        assert_eq!(
            store.get(id).await.unwrap().unwrap().state,
            job.state,
            "stored"
        );
    }
    assert_eq!(store.pending_count().await.unwrap(), 0);
}

#[tokio::test(start_paused = true)]
async fn each_chain_degrades_by_its_own_policy() {
    let (up, _mode) = switchable();
    let sw = runtime(&up, Arc::new(MemoryJobStore::default()), secs(600)).await;
    // Chat may answer with its static text; code generation waits in the queue instead.
    let chat = sw.complete(ask("chat", 1)).await.unwrap();
    assert_eq!(chat.source, Source::Static);
    assert_eq!(chat.text(), "Back soon.");
    let code = sw.complete(ask("code", 2)).await.unwrap();
    assert_eq!(code.source, Source::Queued);
    // A chain with no degradation gives the honest error with a retry-after.
    let plain = builder(&up)
        .model("m", BreakerConfig::consecutive_failures(3, secs(10)))
        .chain_with("plain", ["m"], policy(vec![]))
        .spawn()
        .await
        .unwrap();
    let err = plain.complete(ask("plain", 3)).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err}");
    assert!(
        plain.job("job_x").await.is_err(),
        "no queue, no jobs to ask about"
    );
}

#[tokio::test(start_paused = true)]
async fn a_chain_that_may_queue_needs_a_queue() {
    let (up, _mode) = switchable();
    let err = builder(&up)
        .chain_with("code", ["m"], policy(vec![Degrade::Queue]))
        .spawn()
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("no queue is configured"), "{err}");
    let err = Seawall::builder()
        .upstream("s", up)
        .chain("m", ["m"])
        .queue(
            Arc::new(MemoryJobStore::default()),
            QueueConfig {
                concurrency: 0,
                ..QueueConfig::default()
            },
        )
        .spawn()
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("concurrency"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_refuses_to_grow_and_the_next_option_answers() {
    let (up, _mode) = switchable();
    let sw = builder(&up)
        .model("m", BreakerConfig::consecutive_failures(3, secs(10)))
        .chain_with(
            "code",
            ["m"],
            policy(vec![Degrade::Queue, Degrade::Static("Try later.".into())]),
        )
        .queue(
            Arc::new(MemoryJobStore::default()),
            QueueConfig {
                max_pending: 2,
                ..config(secs(600))
            },
        )
        .spawn()
        .await
        .unwrap();
    for n in 0..2 {
        let r = sw.complete(ask("code", n)).await.unwrap();
        assert_eq!(r.source, Source::Queued);
    }
    let third = sw.complete(ask("code", 2)).await.unwrap();
    assert_eq!(third.source, Source::Static, "not queued past max_pending");
    assert_eq!(sw.queue_depth().await.unwrap().0, 2);
}

#[tokio::test(start_paused = true)]
async fn a_repeated_idempotency_key_gets_the_same_job_not_a_second_one() {
    let (up, _mode) = switchable();
    let sw = builder(&up)
        .model("m", BreakerConfig::consecutive_failures(3, secs(10)))
        .chain_with("code", ["m"], policy(vec![Degrade::Queue]))
        .queue(Arc::new(MemoryJobStore::default()), config(secs(600)))
        .idempotency(secs(600))
        .spawn()
        .await
        .unwrap();
    let first = sw
        .complete(ask("code", 1).idempotency_key("client-retry-1"))
        .await
        .unwrap();
    let again = sw
        .complete(ask("code", 1).idempotency_key("client-retry-1"))
        .await
        .unwrap();
    assert_eq!(again.source, Source::Queued, "still the queued receipt");
    assert_eq!(again.job_id(), first.job_id(), "the same job");
    assert_eq!(sw.queue_depth().await.unwrap(), (1, 0), "one job, not two");
}

#[tokio::test(start_paused = true)]
async fn finished_jobs_are_purged_while_the_queue_runs() {
    let (up, mode) = switchable();
    let store = Arc::new(MemoryJobStore::default());
    let sw = builder(&up)
        .model("m", BreakerConfig::consecutive_failures(3, secs(10)))
        .chain_with("code", ["m"], policy(vec![Degrade::Queue]))
        .queue(
            store.clone(),
            QueueConfig {
                keep_finished: secs(120),
                ..config(secs(600))
            },
        )
        .spawn()
        .await
        .unwrap();
    let id = sw.complete(ask("code", 1)).await.unwrap().job_id().unwrap();
    mode.store(UP, Ordering::SeqCst);
    let job = sw.wait_job(&id, secs(60)).await.unwrap().unwrap();
    assert_eq!(job.state.as_str(), "done");
    tokio::time::sleep(secs(60)).await;
    assert!(
        sw.job(&id).await.unwrap().is_some(),
        "kept for keep_finished"
    );
    // Purged within a purge interval (a minute here) after keep_finished passed.
    tokio::time::sleep(secs(180)).await;
    assert_eq!(sw.job(&id).await.unwrap(), None);
    assert!(store.get(&id).await.unwrap().is_none());
}

#[tokio::test(start_paused = true)]
async fn a_restarted_queue_takes_back_the_jobs_it_held_and_finishes_each_once() {
    let (up, mode) = switchable();
    let store = Arc::new(MemoryJobStore::default());
    let sw = runtime(&up, store.clone(), secs(600)).await;
    let mut events = sw.subscribe();
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(sw.complete(ask("code", n)).await.unwrap().job_id().unwrap());
    }
    assert_eq!(
        sw.queue_depth().await.unwrap(),
        (3, 0),
        "held by this queue"
    );
    sw.inject_panic("queue").await.unwrap();
    // The supervisor restarts the queue; the new incarnation claims under the same name and
    // gets its jobs back from the store.
    let restarted = loop {
        match events.recv().await {
            Ok(Event::Restarted { .. }) => break true,
            Ok(_) => continue,
            Err(_) => break false,
        }
    };
    assert!(restarted, "the queue was restarted");
    assert_eq!(sw.queue_depth().await.unwrap(), (3, 0), "taken back");
    let before: Vec<usize> = ids.iter().map(|id| attempts_for(&up, id)).collect();
    mode.store(UP, Ordering::SeqCst);
    for (id, before) in ids.iter().zip(before) {
        let job = sw.wait_job(id, secs(60)).await.unwrap().unwrap();
        assert_eq!(job.state.as_str(), "done", "{id}: {:?}", job.state);
        assert_eq!(attempts_for(&up, id) - before, 1, "{id} answered once");
    }
}

#[tokio::test(start_paused = true)]
async fn a_job_finished_elsewhere_is_let_go_not_run_and_its_waiters_get_that_outcome() {
    let (up, mode) = switchable();
    let store = Arc::new(MemoryJobStore::default());
    let sw = runtime(&up, store.clone(), secs(600)).await;
    let mut events = sw.subscribe();
    let id = sw.complete(ask("code", 1)).await.unwrap().job_id().unwrap();
    let waiting = {
        let sw = sw.clone();
        let id = id.clone();
        tokio::spawn(async move { sw.wait_job(&id, secs(120)).await })
    };
    // Another instance of a fleet finishes it (as the store sees it) while this one waits for
    // the model to recover.
    let mut elsewhere = store.get(&id).await.unwrap().unwrap();
    elsewhere.state = JobState::Done {
        model: "m".into(),
        status: 200,
        body: "answered elsewhere".into(),
        finished_ms: elsewhere.created_ms + 1,
    };
    assert_eq!(
        store.finish(&elsewhere).await.unwrap(),
        seawall_actors::Finished::Stored
    );
    let before = attempts_for(&up, &id);
    mode.store(UP, Ordering::SeqCst);
    let job = waiting.await.unwrap().unwrap().unwrap();
    assert_eq!(
        job.state, elsewhere.state,
        "the stored outcome, not a second run"
    );
    tokio::time::sleep(secs(30)).await;
    assert_eq!(attempts_for(&up, &id), before, "never replayed here again");
    assert_eq!(sw.queue_depth().await.unwrap(), (0, 0), "let go");
    let announced = std::iter::from_fn(|| events.try_recv().ok())
        .filter(|e| {
            matches!(
                e,
                Event::Job {
                    outcome: "done",
                    ..
                }
            )
        })
        .count();
    assert_eq!(announced, 0, "announced where it finished, not here");
}
