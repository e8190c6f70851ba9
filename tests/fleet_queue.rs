//! The fleet's shared queue over a real `redis-server` (started per test on a free loopback
//! port by `support::redis`): the store's semantics (one consumer per job, exactly one finisher,
//! reclaim from a dead instance, reads from any instance), start-up errors that say what to fix
//! within about a second, and the issue's done-means: `kill -9` of a `seawall serve` holding
//! queued jobs, and another instance finishes every job exactly once. Real time, ms settings.

mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use seawall::cluster::conn::{ConnOptions, RedisConn};
use seawall::cluster::jobs::{RedisJobStore, RedisStoreOptions};
use seawall::config::Config;
use seawall::core::{Finished, Job, JobState, JobStore};
use seawall::sim::{Scenario, SimHandle};
use support::eventually;
use support::process::{run, temp_dir, Served};
use support::redis::RedisServer;
use support::sim::sim;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_reads_have_their_own_connection_and_do_not_delay_other_calls() {
    let redis = RedisServer::start();
    let c = conn(&redis).await;
    let mut blocking = c.blocking().await.unwrap();
    let block = tokio::spawn(async move {
        let t = Instant::now();
        // Longer than the shared manager's 500 ms reply timeout: it would be cut there.
        let r: redis::RedisResult<Option<redis::Value>> = redis::cmd("XREAD")
            .arg("BLOCK")
            .arg(800)
            .arg("STREAMS")
            .arg("nothing-here")
            .arg("$")
            .query_async(&mut blocking)
            .await;
        (r, t.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    let pong: String = c
        .call("PING", |mut m| async move {
            redis::cmd("PING").query_async(&mut m).await
        })
        .await
        .unwrap();
    assert_eq!(pong, "PONG");
    assert!(
        t.elapsed() < Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
    let (r, took) = block.await.unwrap();
    assert!(matches!(r, Ok(None)), "{r:?}");
    assert!(took >= Duration::from_millis(750), "{took:?}");
}

// ---------------------------------------------------------------------------------------------
// Start-up errors: clear, redacted, within about a second

const MINIMAL: &str = r#"
listen = "127.0.0.1:0"
[[upstreams]]
name = "sim"
base_url = "http://127.0.0.1:9"
api_key_env = "K"
[[models]]
name = "m"
degrade = ["queue"]
[queue]
"#;

/// Start a runtime from `[cluster] redis_url = url`: the error, and how long it took.
async fn start_error(url: &str) -> (String, Duration) {
    let toml = format!(
        "{MINIMAL}\n[cluster]\nredis_url = \"{url}\"\nname = \"{}\"\n",
        fleet()
    );
    let config = Config::from_toml(&toml).expect("valid config");
    let started = Instant::now();
    let e = match config
        .spawn_with_env(|_| Some("sk-ant-test-key-000000000000".into()))
        .await
    {
        Ok(_) => panic!("started against {url}"),
        Err(e) => e,
    };
    assert_eq!(e.key(), Some("cluster.redis_url"), "{e}");
    (e.to_string(), started.elapsed())
}

fn assert_quick_and_secret(what: &str, (message, took): &(String, Duration), says: &str) {
    println!("{what}: {took:?}: {message}");
    assert!(message.contains(says), "{what}: {message}");
    assert!(
        !message.contains("hunter2"),
        "{what} leaks the password: {message}"
    );
    assert!(*took < Duration::from_secs(2), "{what} took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_problems_at_start_are_clear_errors_within_a_second_or_two() {
    let redis = RedisServer::start_with(&["--requirepass", "right-one"]);
    let port = redis.port();
    let wrong = start_error(&format!("redis://:hunter2@127.0.0.1:{port}/0")).await;
    assert_quick_and_secret("wrong password", &wrong, "check the password in redis_url");
    assert!(wrong.0.contains("redis://:***@127.0.0.1"), "{}", wrong.0);
    let none = start_error(&format!("redis://127.0.0.1:{port}/0")).await;
    assert_quick_and_secret("no password", &none, "check the password in redis_url");

    let primary = RedisServer::start();
    let replica =
        RedisServer::start_with(&["--replicaof", "127.0.0.1", &primary.port().to_string()]);
    let read_only = start_error(&replica.url()).await;
    assert_quick_and_secret("replica", &read_only, "point redis_url at the primary");

    let full = RedisServer::start();
    full.command(&["CONFIG", "SET", "maxmemory", "1"]);
    let oom = start_error(&full.url()).await;
    assert_quick_and_secret("maxmemory", &oom, "out of memory");

    let mut gone = RedisServer::start();
    let gone_url = format!("redis://:hunter2@127.0.0.1:{}/0", gone.port());
    gone.kill();
    let refused = start_error(&gone_url).await;
    assert_quick_and_secret("nothing listening", &refused, "unavailable");

    let paused = RedisServer::start();
    paused.pause();
    let silent = start_error(&paused.url()).await;
    assert_quick_and_secret("a paused server", &silent, "unavailable");
    paused.resume();
}

#[test]
fn the_cluster_section_is_checked_when_the_file_is_read() {
    let with = |cluster: &str| Config::from_toml(&format!("{MINIMAL}\n[cluster]\n{cluster}\n"));
    let e = with("redis_url = \"http://:hunter2@h\"\nname = \"f\"").unwrap_err();
    assert_eq!(e.key(), Some("cluster.redis_url"), "{e}");
    assert!(e.to_string().contains("redis://"), "{e}");
    assert!(!e.to_string().contains("hunter2"), "{e}");
    // No host: caught when the file is read, before anything connects.
    let e = with("redis_url = \"redis://:hunter2@/0\"\nname = \"f\"").unwrap_err();
    assert_eq!(e.key(), Some("cluster.redis_url"), "{e}");
    assert!(e.to_string().contains("no host"), "{e}");
    assert!(!e.to_string().contains("hunter2"), "{e}");
    let e = with("redis_url = \"redis://h\"\nname = \"prod eu\"").unwrap_err();
    assert_eq!(e.key(), Some("cluster.name"), "{e}");
    let e = with("redis_url = \"redis://h\"\nname = \"\"").unwrap_err();
    assert_eq!(e.key(), Some("cluster.name"), "{e}");
    let e = with("redis_url = \"redis://h\"").unwrap_err();
    assert!(e.to_string().contains("name"), "{e}");
    let c = with("redis_url = \"redis://:hunter2@h:6379/0\"\nname = \"prod-eu_1\"").unwrap();
    let shown = format!("{c:?}");
    assert!(
        !shown.contains("hunter2"),
        "Debug leaks the password: {shown}"
    );
    assert!(shown.contains("redis://:***@h:6379/0"), "{shown}");
    // The fleet's queue lives in Redis: a file path alongside [cluster] is a mistake.
    let e = Config::from_toml(&format!(
        "{MINIMAL}path = \"jobs.redb\"\n[cluster]\nredis_url = \"redis://h\"\nname = \"f\"\n"
    ))
    .unwrap_err();
    assert_eq!(e.key(), Some("queue.path"), "{e}");
    // Without [cluster], the file is required.
    let e = Config::from_toml(MINIMAL).unwrap_err();
    assert_eq!(e.key(), Some("queue.path"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seawall_serve_with_a_wrong_redis_password_exits_at_once_saying_what_to_fix() {
    let redis = RedisServer::start_with(&["--requirepass", "right-one"]);
    let dir = temp_dir("fleet");
    let path = dir.join("seawall.toml");
    let toml = format!(
        "{MINIMAL}\n[cluster]\nredis_url = \"redis://:hunter2@127.0.0.1:{}/0\"\nname = \"f\"\n",
        redis.port()
    );
    std::fs::write(&path, toml).unwrap();
    let started = Instant::now();
    let (status, _, stderr) = run(
        &dir,
        &["serve", "--config", path.to_str().unwrap()],
        &[("K", "sk-ant-test-key-000000000000")],
    );
    let took = started.elapsed();
    println!(
        "seawall serve exited {:?} after {took:?}: {stderr}",
        status.code()
    );
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cluster.redis_url"), "{stderr}");
    assert!(
        stderr.contains("check the password in redis_url"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// The done-means: kill -9 of an instance holding jobs; another finishes each exactly once

const KEY_ENV: &str = "SEAWALL_FLEET_TEST_KEY";
const KEY: &str = "sk-ant-api03-FLEETSECRETFLEETSECRET-ffff";
const TOKEN: &str = "fleet-test-client-token-0123456789";

const DOWN: &str = r#"
    seed = 7
    [[models]]
    name = "m"
    latency = "1ms"
    [[models.faults]]
    kind = "status"
    status = 529
"#;

const UP: &str = r#"
    seed = 7
    [[models]]
    name = "m"
    latency = "1ms"
"#;

fn fleet_config(sim: &SimHandle, redis: &RedisServer, fleet: &str) -> String {
    format!(
        r#"
listen = "127.0.0.1:0"
[[upstreams]]
name = "sim"
base_url = "{base}"
api_key_env = "{KEY_ENV}"
[[models]]
name = "m"
degrade = ["queue"]
[models.retry]
deadline = "1s"
# One failure opens the breaker for longer than the instances take to start: once its first
# call has failed, an instance sends nothing more upstream, so none of its requests is in flight
# when it is killed. The fleet shares the open state, so the survivor waits it out too (the
# model's health does not die with the instance that saw it), then replays.
[breaker]
window = 1
min_calls = 1
open_for = "8s"
[queue]
poll = "50ms"
run_timeout = "1s"
ttl = "1h"
[cluster]
redis_url = "{url}"
name = "{fleet}"
[gateway]
tokens = ["{TOKEN}"]
"#,
        base = sim.base_url(),
        url = redis.url(),
    )
}

/// A `seawall serve` instance of this test's fleet.
fn instance(config: &std::path::Path) -> Served {
    Served::start(config, TOKEN, &[(KEY_ENV, KEY)])
}

/// Jobs an instance holds and is not running, and replays it runs.
async fn queue(instance: &Served) -> (u64, u64) {
    let status = instance.status().await;
    let q = &status["queue"];
    (
        q["pending"].as_u64().unwrap_or(u64::MAX),
        q["running"].as_u64().unwrap_or(u64::MAX),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_an_instance_holding_jobs_and_another_finishes_each_exactly_once() {
    let redis = RedisServer::start();
    let sim = sim(DOWN).await;
    let dir = temp_dir("fleet");
    let config = dir.join("seawall.toml");
    std::fs::write(&config, fleet_config(&sim, &redis, &fleet())).unwrap();

    // The model is down: instance A accepts five calls as jobs and holds them.
    let a = instance(&config);
    let mut ids = Vec::new();
    for n in 0..5 {
        let r = a.ask(&format!("fleet job {n}")).await;
        assert_eq!(r.status(), 202, "queued, not failed");
        assert_eq!(r.headers()["seawall-source"], "queued");
        ids.push(r.headers()["seawall-job-id"].to_str().unwrap().to_owned());
    }
    let (waiting, running) = queue(&a).await;
    assert_eq!(waiting + running, 5, "A holds every job it accepted");
    // B joins the fleet: it can answer for A's jobs, but does not take them while A lives.
    let b = instance(&config);
    let (status, seen) = b.job(&ids[0], "0s").await;
    assert_eq!(
        (status, seen["state"].as_str()),
        (200, Some("pending")),
        "{seen}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await; // six of B's polls
    assert_eq!(queue(&b).await, (0, 0), "A is alive: its jobs stay its own");
    assert_eq!(
        sim.log().len(),
        1,
        "after A's first failure its open breaker kept everything else local"
    );

    a.kill_9();
    let killed = Instant::now();
    sim.set_scenario(Scenario::from_toml(UP).unwrap()).unwrap();
    for (n, id) in ids.iter().enumerate() {
        let (status, job) = b.job(id, "20s").await;
        assert_eq!(status, 200);
        assert_eq!(job["state"], "done", "job {n}: {job}");
        assert_eq!(job["result"]["status"], 200);
        assert_eq!(job["result"]["body"]["type"], "message", "{job}");
    }
    println!(
        "every job done {:?} after A was killed (heartbeat ttl 5 s)",
        killed.elapsed()
    );
    // Exactly once: one upstream 200 per job id, and nothing else reached the model.
    let log = sim.log();
    for id in &ids {
        let ok = log
            .iter()
            .filter(|e| e.idempotency_key.as_deref() == Some(id.as_str()))
            .filter(|e| e.status == Some(200))
            .count();
        assert_eq!(ok, 1, "job {id} answered {ok} times");
    }
    assert_eq!(
        log.iter().filter(|e| e.status == Some(200)).count(),
        ids.len()
    );
    assert_eq!(queue(&b).await, (0, 0), "nothing left");
    // A third instance finds every job finished, and reads them.
    let c = instance(&config);
    let (code, job) = c.job(&ids[4], "0s").await;
    assert_eq!((code, job["state"].as_str()), (200, Some("done")));
    assert_eq!(queue(&c).await, (0, 0));
    drop((b, c));
    let _ = std::fs::remove_dir_all(&dir);
}
