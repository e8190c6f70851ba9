//! Panics injected into every kind of actor (a breaker, the governor, the monitor, the
//! idempotency table, the queue, a request actor) in the middle of a load of unary calls,
//! idempotent calls, streams and calls queued for later: every call gets exactly one answer (a
//! reply or a typed error) within its deadline, none hangs, no idempotent call reaches the
//! upstream twice, and the runtime serves afterwards. Paused time and the scripted upstream:
//! no test waits on the wall clock.

mod support;

use std::collections::HashMap;
use std::sync::Arc;

use seawall_actors::scripted::{Answer, ScriptedUpstream, StreamAnswer};
use seawall_actors::{
    BreakerConfig, Call, Degrade, Error, MemoryJobStore, QueueConfig, RetryPolicy, Seawall, Source,
};
use support::{builder, secs, MS};

async fn runtime(up: &ScriptedUpstream) -> Seawall {
    let later = RetryPolicy {
        deadline: secs(2),
        degrade: vec![Degrade::Queue],
        ..RetryPolicy::default()
    };
    builder(up)
        .breaker_defaults(BreakerConfig::default())
        .chain("primary", ["primary", "fallback"])
        .model("down", BreakerConfig::consecutive_failures(3, secs(10)))
        .chain_with("later", ["down"], later)
        .queue(
            Arc::new(MemoryJobStore::default()),
            QueueConfig {
                ttl: secs(30),
                poll: secs(1),
                run_timeout: Some(secs(5)),
                ..QueueConfig::default()
            },
        )
        .idempotency(secs(600))
        .spawn()
        .await
        .expect("runtime starts")
}

/// The kinds of call in the load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Unary,
    Keyed,
    Stream,
    Queued,
}

/// How one call ended.
#[derive(Debug)]
enum Answered {
    Reply(Source),
    /// A stream that ended with `message_stop`, or with an `error` event.
    Stream {
        complete: bool,
    },
    Error(Error),
}

async fn one_call(sw: Seawall, kind: Kind, n: usize) -> Answered {
    let text = format!("call {n}");
    match kind {
        Kind::Unary => match sw.complete(Call::new("primary", 32).user(&text)).await {
            Ok(r) => Answered::Reply(r.source),
            Err(e) => Answered::Error(e),
        },
        Kind::Keyed => {
            let call = Call::new("primary", 32)
                .user(&text)
                .idempotency_key(&format!("key-{n}"));
            match sw.complete(call).await {
                Ok(r) => Answered::Reply(r.source),
                Err(e) => Answered::Error(e),
            }
        }
        Kind::Stream => match sw.stream(Call::new("primary", 32).user(&text)).await {
            Ok(reply) => {
                let events = support::drain(reply).await;
                let kinds = support::kinds(&events);
                Answered::Stream {
                    complete: kinds.last() == Some(&"message_stop"),
                }
            }
            Err(e) => Answered::Error(e),
        },
        Kind::Queued => match sw
            .complete(Call::new("down", 32).user(&text).chain("later"))
            .await
        {
            Ok(r) => Answered::Reply(r.source),
            Err(e) => Answered::Error(e),
        },
    }
}

/// Run a load of 80 calls, 5 ms apart, and panic `target` 120 ms in; return every answer
/// with its kind.
async fn drill(target: &str) -> (Seawall, ScriptedUpstream, Vec<(Kind, Answered)>) {
    let up = ScriptedUpstream::new();
    for model in ["primary", "fallback"] {
        up.healthy(model, 50 * MS);
        up.on_stream(model, move |_, _| {
            StreamAnswer::message(model, &["one", "two", "three"], 20 * MS)
        });
    }
    up.on("down", |_, _| {
        Answer::status(529, "overloaded_error").after(10 * MS)
    });
    let sw = runtime(&up).await;
    let kinds = [Kind::Unary, Kind::Keyed, Kind::Stream, Kind::Queued];
    let mut handles = Vec::new();
    for n in 0..80 {
        let sw = sw.clone();
        let kind = kinds[n % kinds.len()];
        handles.push((
            kind,
            tokio::spawn(async move {
                tokio::time::sleep(5 * MS * n as u32).await;
                // A hang would show as this timeout (on paused time it costs nothing).
                tokio::time::timeout(secs(120), one_call(sw, kind, n)).await
            }),
        ));
    }
    tokio::time::sleep(120 * MS).await;
    sw.inject_panic(target).await.expect("the target runs");
    let mut answers = Vec::new();
    for (kind, h) in handles {
        let answered = h
            .await
            .expect("no caller's task panicked")
            .unwrap_or_else(|_| panic!("a {kind:?} call hung after a panic in {target}"));
        answers.push((kind, answered));
    }
    (sw, up, answers)
}

/// What every drill must show.
async fn check(target: &str, sw: &Seawall, up: &ScriptedUpstream, answers: &[(Kind, Answered)]) {
    assert_eq!(answers.len(), 80);
    let mut internal = 0;
    for (kind, answered) in answers {
        match (kind, answered) {
            (Kind::Unary | Kind::Keyed, Answered::Reply(source)) => {
                assert!(
                    matches!(source, Source::Live | Source::Replay),
                    "{kind:?}: {source:?}"
                );
            }
            (Kind::Stream, Answered::Stream { complete }) => {
                assert!(complete, "a stream cut without an error event");
            }
            (Kind::Queued, Answered::Reply(source)) => {
                assert_eq!(*source, Source::Queued, "{kind:?}");
            }
            (_, Answered::Error(Error::Internal(_))) => internal += 1,
            (_, other) => panic!("{target}: a {kind:?} call got {other:?}"),
        }
    }
    // Only a panicking request actor costs its own caller the call (an internal error,
    // answered at once); a panic anywhere else costs nobody anything.
    let expected_internal = usize::from(target == "request");
    assert_eq!(internal, expected_internal, "{target}: {answers:?}");
    // No idempotent call reached the upstream twice.
    let mut per_key: HashMap<String, usize> = HashMap::new();
    for attempt in up.log() {
        if let Some(key) = attempt.idempotency_key {
            if key.starts_with("key-") {
                *per_key.entry(key).or_default() += 1;
            }
        }
    }
    assert!(per_key.values().all(|&n| n == 1), "{per_key:?}");
    // Every keyed call but one lost to a panicking request actor reached it.
    assert!(per_key.len() >= 19, "{} keyed calls seen", per_key.len());
    // The supervisor restarted the failed actor (a request actor is never restarted).
    let restarts = sw.restarts().await.unwrap();
    assert_eq!(restarts, u64::from(target != "request"), "{target}");
    assert_eq!(
        sw.request_failures().await.unwrap(),
        u64::from(target == "request")
    );
    // And serves every kind of call afterwards.
    assert_eq!(sw.in_flight(), 0, "a call still counted in flight");
    for (kind, n) in [
        (Kind::Unary, 1000),
        (Kind::Keyed, 1001),
        (Kind::Stream, 1002),
        (Kind::Queued, 1003),
    ] {
        let answered = one_call(sw.clone(), kind, n).await;
        assert!(
            matches!(
                answered,
                Answered::Reply(Source::Live | Source::Queued)
                    | Answered::Stream { complete: true }
            ),
            "{target}: after the panic a {kind:?} call got {answered:?}"
        );
    }
    for model in ["primary", "fallback", "down"] {
        sw.breaker_status(model).await.expect("a live breaker");
    }
    sw.governor_status().await.expect("a live governor");
    sw.sla_report().await.expect("a live monitor");
    sw.queue_depth().await.expect("a live queue");
}

#[tokio::test(start_paused = true)]
async fn a_breaker_panic_under_load_loses_no_call() {
    let (sw, up, answers) = drill("primary").await;
    check("primary", &sw, &up, &answers).await;
}

#[tokio::test(start_paused = true)]
async fn a_governor_panic_under_load_loses_no_call() {
    let (sw, up, answers) = drill("governor").await;
    check("governor", &sw, &up, &answers).await;
}

#[tokio::test(start_paused = true)]
async fn a_monitor_panic_under_load_loses_no_call() {
    let (sw, up, answers) = drill("monitor").await;
    check("monitor", &sw, &up, &answers).await;
}

#[tokio::test(start_paused = true)]
async fn an_idempotency_table_panic_under_load_loses_no_call() {
    let (sw, up, answers) = drill("idempotency").await;
    check("idempotency", &sw, &up, &answers).await;
}

#[tokio::test(start_paused = true)]
async fn a_queue_panic_under_load_loses_no_call() {
    let (sw, up, answers) = drill("queue").await;
    check("queue", &sw, &up, &answers).await;
}

#[tokio::test(start_paused = true)]
async fn a_request_actor_panic_under_load_costs_only_its_own_call() {
    let (sw, up, answers) = drill("request").await;
    check("request", &sw, &up, &answers).await;
}
