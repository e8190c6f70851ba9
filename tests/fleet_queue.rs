//! The fleet's shared queue over a real `redis-server` (started per test on a free loopback
//! port by `support::redis`): the store's semantics (one consumer per job, exactly one finisher,
//! reclaim from a dead instance, reads from any instance) and its bounds when Redis dies or
//! stops answering. Real time, ms settings.

mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use seawall::cluster::conn::{ConnOptions, RedisConn};
use seawall::cluster::jobs::{RedisJobStore, RedisStoreOptions};
use seawall::core::{Finished, Job, JobState, JobStore};
use support::redis::RedisServer;

static FLEETS: AtomicU64 = AtomicU64::new(0);

/// A fleet name of its own for each test (the tests of one binary share no server, but a name
/// per test keeps the keys apart when reading a failure's dump).
fn fleet() -> String {
    format!(
        "t{}-{}",
        std::process::id(),
        FLEETS.fetch_add(1, Ordering::Relaxed)
    )
}

fn job(id: &str) -> Job {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    Job {
        id: id.into(),
        chain: "code".into(),
        request: serde_json::Map::new(),
        anthropic_version: None,
        anthropic_beta: None,
        feature: None,
        tenant: None,
        created_ms: now,
        expires_ms: now + 3_600_000,
        runs: 0,
        state: JobState::Pending { last_error: None },
    }
}

fn done(mut j: Job, body: &str) -> Job {
    j.state = JobState::Done {
        model: "m".into(),
        status: 200,
        body: body.into(),
        finished_ms: j.created_ms + 1,
    };
    j
}

async fn conn(redis: &RedisServer) -> RedisConn {
    RedisConn::connect(&redis.url(), ConnOptions::default())
        .await
        .expect("connects")
}

/// Fast heartbeats, so a dead instance is noticed in half a second.
fn fast() -> RedisStoreOptions {
    RedisStoreOptions {
        heartbeat_every: Duration::from_millis(100),
        heartbeat_ttl: Duration::from_millis(500),
        ..RedisStoreOptions::default()
    }
}

async fn store(c: &RedisConn, fleet: &str, instance: &str) -> RedisJobStore {
    RedisJobStore::start(c.clone(), fleet, instance, fast())
        .await
        .expect("the store starts")
}

/// Claim in batches of 7 until nothing is left; the ids claimed.
async fn drain(s: &RedisJobStore, me: &str) -> Vec<String> {
    let mut got = Vec::new();
    loop {
        let batch = s.claim(me, 7).await.unwrap();
        if batch.is_empty() {
            return got;
        }
        got.extend(ids(&batch));
    }
}

fn ids(jobs: &[Job]) -> Vec<String> {
    jobs.iter().map(|j| j.id.clone()).collect()
}

/// Poll `f` until it returns `Some`, or panic at the deadline.
async fn eventually<T, F, Fut>(what: &str, within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The store

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_job_is_claimed_by_one_instance_and_readable_from_any() {
    let redis = RedisServer::start();
    let c = conn(&redis).await;
    let f = fleet();
    let (a, b) = (store(&c, &f, "a").await, store(&c, &f, "b").await);
    let all: Vec<String> = (0..40).map(|n| format!("job_{n:04}")).collect();
    for id in &all {
        a.put(&job(id)).await.unwrap();
    }
    assert!(a.put(&job(&all[0])).await.is_err(), "an id is stored once");
    assert_eq!(b.pending_count().await.unwrap(), 40);
    // Both claim at once, in small batches, until nothing is left.
    let (got_a, got_b) = tokio::join!(drain(&a, "a"), drain(&b, "b"));
    let (set_a, set_b): (HashSet<_>, HashSet<_>) = (
        got_a.iter().cloned().collect(),
        got_b.iter().cloned().collect(),
    );
    assert!(set_a.is_disjoint(&set_b), "a job went to both");
    assert_eq!(set_a.len() + set_b.len(), 40, "every job went to someone");
    println!("claimed: a {} b {}", set_a.len(), set_b.len());
    // What an instance holds comes back after its queue restarts, oldest first.
    let held = ids(&a.held("a").await.unwrap());
    let mut sorted = got_a.clone();
    sorted.sort();
    assert_eq!(held, sorted);
    // Any instance reads any job.
    let theirs = &got_a[0];
    let seen = b.get(theirs).await.unwrap().expect("b reads a's job");
    assert_eq!(seen.state.as_str(), "pending");
    assert_eq!(b.get("job_unknown").await.unwrap(), None);
    // Progress is recorded only by the holder.
    let mut progress = seen.clone();
    progress.runs = 2;
    assert!(!b.update("b", &progress).await.unwrap(), "not b's job");
    assert!(a.update("a", &progress).await.unwrap());
    assert_eq!(b.get(theirs).await.unwrap().unwrap().runs, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_racing_finishers_exactly_one_stores_the_outcome() {
    let redis = RedisServer::start();
    let c = conn(&redis).await;
    let f = fleet();
    let (a, b) = (store(&c, &f, "a").await, store(&c, &f, "b").await);
    for round in 0..20 {
        let id = format!("job_race_{round:02}");
        a.put(&job(&id)).await.unwrap();
        assert_eq!(
            ids(&a.claim("a", 1).await.unwrap()),
            std::slice::from_ref(&id)
        );
        let (mine, theirs) = (done(job(&id), "from a"), done(job(&id), "from b"));
        let (ra, rb) = tokio::join!(a.finish(&mine), b.finish(&theirs));
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        let stored = a.get(&id).await.unwrap().unwrap();
        match (&ra, &rb) {
            (Finished::Stored, Finished::Already(s)) => {
                assert_eq!(**s, mine);
                assert_eq!(stored, mine);
            }
            (Finished::Already(s), Finished::Stored) => {
                assert_eq!(**s, theirs);
                assert_eq!(stored, theirs);
            }
            other => panic!("round {round}: {other:?}"),
        }
        let mut late = job(&id);
        late.runs = 9;
        assert!(!a.update("a", &late).await.unwrap(), "final stays final");
        assert!(a.claim("a", 10).await.unwrap().is_empty(), "acknowledged");
    }
    assert_eq!(a.pending_count().await.unwrap(), 0);
    assert!(a.held("a").await.unwrap().is_empty());
    let unknown = done(job("job_never_stored"), "x");
    assert_eq!(a.finish(&unknown).await.unwrap(), Finished::Unknown);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_instances_jobs_are_reclaimed_once_its_heartbeat_expires() {
    let redis = RedisServer::start();
    let c = conn(&redis).await;
    let f = fleet();
    let a = store(&c, &f, "a").await;
    let b = store(&c, &f, "b").await;
    for n in 0..3 {
        a.put(&job(&format!("job_dead_{n}"))).await.unwrap();
    }
    assert_eq!(a.claim("a", 10).await.unwrap().len(), 3);
    assert_eq!(c.live_instances(&f).await.unwrap(), ["a", "b"]);
    assert!(b.claim("b", 10).await.unwrap().is_empty(), "a is alive");
    // a dies: its heartbeat stops with its store.
    drop(a);
    let died = Instant::now();
    let taken = eventually("b takes a's jobs", Duration::from_secs(5), || async {
        let got = b.claim("b", 10).await.unwrap();
        (!got.is_empty()).then_some(got)
    })
    .await;
    let after = died.elapsed();
    println!("a's jobs reclaimed {after:?} after its last heartbeat store was dropped");
    assert_eq!(ids(&taken), ["job_dead_0", "job_dead_1", "job_dead_2"]);
    assert!(
        after >= Duration::from_millis(300),
        "not before the ttl: {after:?}"
    );
    assert_eq!(c.live_instances(&f).await.unwrap(), ["b"]);
    // If a comes back (a stalled process), the jobs are no longer its own.
    let mut j = taken[0].clone();
    j.runs = 1;
    assert!(!b.update("a", &j).await.unwrap());
    assert!(b.update("b", &j).await.unwrap());
    assert_eq!(b.held("b").await.unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_instances_job_is_taken_only_once_it_went_stale() {
    let redis = RedisServer::start();
    let c = conn(&redis).await;
    let f = fleet();
    let stale = RedisStoreOptions {
        stale_after: Duration::from_millis(400),
        ..fast()
    };
    let a = RedisJobStore::start(c.clone(), &f, "a", stale)
        .await
        .unwrap();
    let b = RedisJobStore::start(c.clone(), &f, "b", stale)
        .await
        .unwrap();
    a.put(&job("job_busy")).await.unwrap();
    a.put(&job("job_lost")).await.unwrap();
    let held = a.claim("a", 10).await.unwrap();
    let busy = held[0].clone();
    // a keeps replaying job_busy (each start resets its idle time) and forgot job_lost.
    let started = Instant::now();
    let taken = eventually("b takes the stale job", Duration::from_secs(5), || async {
        assert!(a.update("a", &busy).await.unwrap(), "busy stays a's");
        let got = b.claim("b", 10).await.unwrap();
        (!got.is_empty()).then_some(got)
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(350),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(ids(&taken), ["job_lost"]);
    assert!(a.update("a", &busy).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_are_purged_and_a_restarted_redis_is_used_again() {
    let mut redis = RedisServer::start();
    let c = conn(&redis).await;
    let f = fleet();
    let a = store(&c, &f, "a").await;
    a.put(&job("job_old")).await.unwrap();
    let old = done(job("job_old"), "x");
    assert_eq!(a.finish(&old).await.unwrap(), Finished::Stored);
    let at = old.created_ms + 1;
    assert_eq!(a.purge_finished(at).await.unwrap(), 0, "finished at `at`");
    assert_eq!(a.purge_finished(at + 1).await.unwrap(), 1);
    assert_eq!(a.get("job_old").await.unwrap(), None);

    // Redis dies: calls fail within about a second, never hang.
    redis.kill();
    let t = Instant::now();
    let e = a.pending_count().await.unwrap_err();
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    assert!(e.contains("unavailable"), "{e}");
    // It comes back empty (no persistence): the store recreates its group and works again.
    redis.restart();
    eventually("the store works again", Duration::from_secs(5), || async {
        a.put(&job("job_new")).await.ok()
    })
    .await;
    let got = eventually("the new job is claimed", Duration::from_secs(5), || async {
        a.claim("a", 10).await.ok().filter(|j| !j.is_empty())
    })
    .await;
    assert_eq!(ids(&got), ["job_new"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_redis_costs_about_a_second_per_call_not_a_hang() {
    let redis = RedisServer::start();
    let c = conn(&redis).await;
    let a = store(&c, &fleet(), "a").await;
    a.put(&job("job_1")).await.unwrap();
    redis.pause(); // accepts TCP, answers nothing
    for call in ["get", "claim", "blocking"] {
        let t = Instant::now();
        let failed = match call {
            "get" => a.get("job_1").await.is_err(),
            "claim" => a.claim("a", 1).await.is_err(),
            _ => c.blocking().await.is_err(),
        };
        let took = t.elapsed();
        println!("{call} against a paused Redis failed after {took:?}");
        assert!(failed, "{call}");
        assert!(took < Duration::from_millis(1500), "{call}: {took:?}");
    }
    redis.resume();
    eventually("answers again", Duration::from_secs(5), || async {
        a.get("job_1").await.ok().flatten()
    })
    .await;
}
