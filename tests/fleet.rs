//! A fleet of seawall instances on a real `redis-server`, against the simulator over real
//! loopback HTTP: one organization budget, one view of model health, one idempotency table,
//! and what happens when Redis goes away and comes back. Real time, millisecond settings.

mod support;

use std::time::{Duration, Instant};

use seawall::cluster::{ClusterBuilder, ClusterError, RedisCluster};
use seawall::core::{
    Backoff, BreakerConfig, Builder, Call, Error, FleetMode, Jitter, Limits, RetryPolicy, Seawall,
    StateKind, WindowKind,
};
use seawall::sim::SimHandle;
use support::eventually;
use support::http::plain_client;
use support::redis::RedisServer;
use support::sim::{anthropic, sim};

const KEY: &str = "sk-ant-sim-fleet-0001";

fn policy(deadline: Duration) -> RetryPolicy {
    RetryPolicy {
        backoff: Backoff {
            base: Duration::from_millis(50),
            cap: Duration::from_millis(400),
            max_attempts: 3,
            jitter: Jitter::Full,
        },
        deadline,
        attempt_timeout: Duration::from_secs(1),
        min_attempt: Duration::from_millis(20),
        ..RetryPolicy::default()
    }
}

fn call(model: &str) -> Call {
    Call::new(model, 16).user("hello from the fleet")
}

/// Fire `n` calls at `sw`, one every `interval`, each in its own task.
/// `n` instances of one fleet on `redis`, each a runtime `build` configures.
async fn fleet_of(
    n: usize,
    redis: &RedisServer,
    name: &str,
    build: impl Fn(Builder) -> Builder,
) -> Vec<Seawall> {
    let mut instances = Vec::new();
    for _ in 0..n {
        let cluster = RedisCluster::connect(&redis.url(), name).await.unwrap();
        instances.push(
            build(Seawall::builder())
                .cluster(cluster)
                .spawn()
                .await
                .unwrap(),
        );
    }
    instances
}

fn fire(
    sw: &Seawall,
    model: &str,
    n: usize,
    interval: Duration,
) -> tokio::task::JoinHandle<Vec<Result<seawall::core::Reply, Error>>> {
    let sw = sw.clone();
    let model = model.to_owned();
    tokio::spawn(async move {
        let t0 = Instant::now();
        let mut tasks = Vec::with_capacity(n);
        for i in 0..n {
            tokio::time::sleep_until((t0 + interval * i as u32).into()).await;
            let sw = sw.clone();
            let model = model.clone();
            tasks.push(tokio::spawn(async move { sw.complete(call(&model)).await }));
        }
        let mut out = Vec::with_capacity(n);
        for t in tasks {
            out.push(t.await.expect("no call panicked"));
        }
        out
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_one_budget_and_never_trip_the_limiter() {
    let redis = RedisServer::start();
    let sim = sim(r#"
        seed = 11
        [limits]
        requests_per_minute = 60
        [[models]]
        name = "m"
        latency = "2ms"
    "#)
    .await;
    let limits = Limits {
        requests_per_minute: Some(60),
        input_tokens_per_minute: None,
        output_tokens_per_minute: None,
    };
    let instances = fleet_of(3, &redis, "budget", |b| {
        b.upstream("sim", anthropic(sim.base_url(), &[KEY]))
            .limits("sim", limits)
            .chain_with("m", ["m"], policy(Duration::from_millis(1500)))
    })
    .await;
    // 150 calls in about a second, 2.5x what the minute's bucket holds, spread unevenly:
    // each instance alone believes it may spend 60.
    let a = fire(&instances[0], "m", 90, Duration::from_millis(11));
    let b = fire(&instances[1], "m", 45, Duration::from_millis(22));
    let c = fire(&instances[2], "m", 15, Duration::from_millis(66));
    let mut results = a.await.unwrap();
    results.extend(b.await.unwrap());
    results.extend(c.await.unwrap());
    let served = results.iter().filter(|r| r.is_ok()).count();
    let log = sim.log();
    let limited = log.iter().filter(|e| e.status == Some(429)).count();
    println!("fleet budget: {served} of 150 served by 3 instances, {limited} upstream 429s");
    assert_eq!(limited, 0, "the simulator never had to say 429");
    // The bucket holds 60 and refills one a second over the ~2.5 s the calls may take.
    assert!(served >= 60, "the whole shared bucket was used: {served}");
    assert!(served <= 64, "no more than the limit allowed: {served}");
    for r in results.iter().filter(|r| r.is_err()) {
        let e = r.as_ref().unwrap_err();
        assert!(matches!(e, Error::Unavailable { .. }), "{e}");
    }
    for sw in &instances {
        let status = sw.fleet_status().await.unwrap();
        assert_eq!(status.mode, FleetMode::Shared);
        assert_eq!(status.live_instances, 3);
    }
    // Leasing keeps Redis off the hot path: far fewer exchanges than calls.
    let trips: u64 = {
        let mut t = 0;
        for sw in &instances {
            t += sw.fleet_status().await.unwrap().round_trips;
        }
        t
    };
    println!("fleet budget: {trips} Redis round trips for 150 calls (heartbeats included)");
    assert!(trips < 75, "{trips} round trips for 150 calls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_found_by_one_instance_is_skipped_by_all() {
    let redis = RedisServer::start();
    let sim = sim(r#"
        seed = 12
        [[models]]
        name = "primary"
        latency = "5ms"
        [[models.faults]]
        kind = "status"
        status = 529
        [[models]]
        name = "fallback"
        latency = "5ms"
    "#)
    .await;
    let breaker = BreakerConfig {
        window: WindowKind::Count(4),
        min_calls: 4,
        failure_rate: 50.0,
        half_open_calls: 1,
        open_for: Duration::from_secs(5),
        ..BreakerConfig::default()
    };
    let instances = fleet_of(3, &redis, "health", |b| {
        b.upstream("sim", anthropic(sim.base_url(), &[KEY]))
            .breaker_defaults(breaker)
            .chain_with(
                "primary",
                ["primary", "fallback"],
                policy(Duration::from_secs(3)),
            )
    })
    .await;
    // Instance 0 finds the primary dead (4 failures open its breaker)...
    for _ in 0..4 {
        instances[0].complete(call("primary")).await.unwrap();
    }
    assert_eq!(
        instances[0].breaker_status("primary").await.unwrap().state,
        StateKind::Open
    );
    // ...and the others hear of it: their breakers open without a failure of their own.
    for sw in &instances[1..] {
        eventually("the news arrives", Duration::from_secs(2), || async {
            sw.breaker_status("primary").await.unwrap().state == StateKind::Open
        })
        .await;
    }
    let before = sim.log().len();
    for sw in &instances {
        for _ in 0..10 {
            let reply = sw.complete(call("primary")).await.unwrap();
            assert_eq!(reply.model, "fallback");
        }
    }
    let dead = sim
        .log()
        .iter()
        .filter(|e| e.model.as_deref() == Some("primary"))
        .count();
    println!("fleet health: the dead model saw {dead} calls from 3 instances (threshold 4)");
    assert_eq!(dead, 4, "only the first instance's threshold, fleet-wide");
    assert_eq!(
        sim.log().len() - before,
        30,
        "30 calls, all to the fallback"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_on_different_instances_make_one_upstream_call() {
    let redis = RedisServer::start();
    let sim = sim(r#"
        [[models]]
        name = "m"
        latency = "200ms"
    "#)
    .await;
    let instances = fleet_of(3, &redis, "idem", |b| {
        b.upstream("sim", anthropic(sim.base_url(), &[KEY]))
            .chain_with("m", ["m"], policy(Duration::from_secs(5)))
            .idempotency(Duration::from_secs(60))
    })
    .await;
    let mut tasks = Vec::new();
    for i in 0..9 {
        let sw = instances[i % 3].clone();
        tasks.push(tokio::spawn(async move {
            sw.complete(call("m").idempotency_key("order-77")).await
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        let reply = t.await.unwrap().expect("every duplicate answered");
        ids.push(reply.json().unwrap()["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(sim.log().len(), 1, "one upstream call for the whole fleet");
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "all got its answer: {ids:?}"
    );
    // The same key with another request is refused, on any instance.
    let err = instances[2]
        .complete(
            Call::new("m", 16)
                .user("another")
                .idempotency_key("order-77"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidCall(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_each_instance_spends_its_share_and_shares_again_when_it_returns() {
    let mut redis = RedisServer::start();
    let sim = sim(r#"
        seed = 13
        [limits]
        requests_per_minute = 1200
        [[models]]
        name = "m"
        latency = "2ms"
    "#)
    .await;
    let limits = Limits {
        requests_per_minute: Some(1200),
        input_tokens_per_minute: None,
        output_tokens_per_minute: None,
    };
    let instances = fleet_of(2, &redis, "outage", |b| {
        b.upstream("sim", anthropic(sim.base_url(), &[KEY]))
            .limits("sim", limits)
            .chain_with("m", ["m"], policy(Duration::from_secs(2)))
    })
    .await;
    let wait_for = |sw: Seawall, want: fn(&seawall::core::FleetStatus) -> bool| async move {
        eventually(
            "the fleet reaches the status wanted",
            Duration::from_secs(5),
            || async {
                let s = sw.fleet_status().await.unwrap();
                if want(&s) {
                    Ok(s)
                } else {
                    Err(format!("still {s:?}"))
                }
            },
        )
        .await
    };
    for sw in &instances {
        wait_for(sw.clone(), |s| {
            s.mode == FleetMode::Shared && s.live_instances == 2
        })
        .await;
    }
    for sw in &instances {
        sw.complete(call("m")).await.unwrap();
    }
    // Calls keep coming on both instances while Redis dies and comes back.
    let traffic: Vec<_> = instances
        .iter()
        .map(|sw| fire(sw, "m", 150, Duration::from_millis(25)))
        .collect();
    redis.kill();
    // Calls keep being answered, each instance on half the limit (it counted 2 alive).
    for sw in &instances {
        for _ in 0..5 {
            let _ = sw.complete(call("m")).await;
        }
        let s = wait_for(sw.clone(), |s| matches!(s.mode, FleetMode::Local { .. })).await;
        assert_eq!(s.mode, FleetMode::Local { share: 0.5 });
    }
    let mut answered = 0;
    for sw in &instances {
        for _ in 0..10 {
            if sw.complete(call("m")).await.is_ok() {
                answered += 1;
            }
        }
    }
    assert!(
        answered > 0,
        "instances serve on their share while Redis is down"
    );
    redis.restart();
    for sw in &instances {
        let back = Instant::now();
        wait_for(sw.clone(), |s| s.mode == FleetMode::Shared).await;
        assert!(
            back.elapsed() < Duration::from_secs(3),
            "shared again within seconds"
        );
        sw.complete(call("m"))
            .await
            .expect("served again in shared mode");
    }
    // Every call of the traffic got exactly one answer: served, or an honest refusal.
    let mut served = 0;
    for t in traffic {
        for r in t.await.unwrap() {
            match r {
                Ok(_) => served += 1,
                Err(e) => assert!(matches!(e, Error::Unavailable { .. }), "{e}"),
            }
        }
    }
    println!("fleet outage: {served} of 300 calls served across Redis's death and return");
    assert!(served > 0);
    let log = sim.log();
    assert_eq!(log.iter().filter(|e| e.status == Some(429)).count(), 0);
    // No call reached the upstream twice: one request per served call at most, plus the
    // others of this test.
    assert!(
        log.len() <= served + 2 + 10 + 20 + 2,
        "{} upstream calls",
        log.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_cannot_serve_the_fleet_is_a_clear_error_at_start_never_a_hang() {
    // Nobody listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let err = RedisCluster::connect(&format!("redis://127.0.0.1:{port}/0"), "f")
        .await
        .unwrap_err();
    assert!(matches!(err, ClusterError::Unavailable { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // A bad URL, a bad name.
    let err = RedisCluster::connect("http://127.0.0.1:1", "f")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("redis://"), "{err}");
    let err = RedisCluster::connect("redis://127.0.0.1:1", "a:b")
        .await
        .unwrap_err();
    assert!(matches!(err, ClusterError::BadName { .. }), "{err}");
    // A wrong password: named, and the password never shown.
    let locked = RedisServer::start_with(&["--requirepass", "right-password"]);
    let url = format!("redis://:wrong-password@127.0.0.1:{}/0", locked.port());
    let started = Instant::now();
    let err = RedisCluster::connect(&url, "f").await.unwrap_err();
    assert!(matches!(err, ClusterError::Auth { .. }), "{err}");
    assert!(err.to_string().contains("password"), "{err}");
    assert!(!err.to_string().contains("wrong-password"), "{err}");
    assert!(!format!("{err:?}").contains("wrong-password"), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // Full.
    let full = RedisServer::start();
    full.command(&["CONFIG", "SET", "maxmemory", "1"]);
    let err = RedisCluster::connect(&full.url(), "f").await.unwrap_err();
    assert!(matches!(err, ClusterError::Full { .. }), "{err}");
    assert!(err.to_string().contains("maxmemory"), "{err}");
}

/// The gateway's config for one instance of a fleet of `seawall serve` processes.
fn serve_config(sim: &SimHandle, redis: &RedisServer, fleet: &str, rpm: u64) -> String {
    format!(
        r#"
listen = "127.0.0.1:0"
[[upstreams]]
name = "sim"
base_url = "{base}"
api_key_env = "SIM_KEY"
[[models]]
name = "m"
[limits.sim]
rpm = {rpm}
[retry]
deadline = "2s"
attempt_timeout = "1s"
[cluster]
redis_url = "{url}"
name = "{fleet}"
[log]
format = "compact"
[gateway]
tokens = ["{TOKEN}"]
"#,
        base = sim.base_url(),
        url = redis.url(),
    )
}

const TOKEN: &str = "fleet-test-client-token-0001";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_serve_processes_under_uneven_overload_share_one_limit_with_no_429() {
    use support::process::{write_config, Serve};
    let redis = RedisServer::start();
    let sim = sim(r#"
        seed = 14
        [limits]
        requests_per_minute = 120
        [[models]]
        name = "m"
        latency = "2ms"
    "#)
    .await;
    let config = write_config("fleet-serve", &serve_config(&sim, &redis, "serve3", 120));
    let dir = config.parent().unwrap().to_owned();
    let path = config.to_str().unwrap().to_owned();
    let env = [("SIM_KEY", KEY), ("RUST_LOG", "warn")];
    let instances: Vec<Serve> = (0..3)
        .map(|_| Serve::start(&dir, &["serve", "--config", &path], &env))
        .collect();
    let client = plain_client();
    // 300 calls over 2.5 s, 2.5x what the bucket holds plus its refill, spread 60/30/10 over
    // the three instances: each alone believes it may spend all 120.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, (share, every)) in [(180u32, 14u64), (90, 28), (30, 83)]
        .into_iter()
        .enumerate()
    {
        for n in 0..share {
            let url = format!("{}/v1/messages", instances[i].base);
            let client = client.clone();
            let at = started + Duration::from_millis(every * u64::from(n));
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep_until(at.into()).await;
                let r = client
                    .post(url)
                    .header("x-api-key", TOKEN)
                    .json(&serde_json::json!({"model": "m", "max_tokens": 16,
                        "messages": [{"role": "user", "content": format!("call {i}-{n}")}]}))
                    .send()
                    .await
                    .expect("the gateway answers");
                let status = r.status().as_u16();
                let retry_after = r.headers().contains_key("retry-after");
                (status, retry_after, Instant::now())
            }));
        }
    }
    let mut served = 0;
    let mut last_served = started;
    let mut statuses = std::collections::BTreeMap::new();
    for t in tasks {
        let (status, retry_after, at) = t.await.unwrap();
        *statuses.entry(status).or_insert(0) += 1;
        match status {
            200 => {
                served += 1;
                last_served = last_served.max(at);
            }
            // Honest refusals: over budget, with when to come back.
            429 | 503 | 504 => assert!(retry_after, "{status} without retry-after"),
            other => panic!("unexpected status {other}"),
        }
    }
    println!("statuses: {statuses:?}");
    let limited = sim.log().iter().filter(|e| e.status == Some(429)).count();
    // What the limit allowed while calls could be served (the last one offered at 2.5 s may
    // wait its 2 s deadline): the full bucket and its refill, 2 a second.
    let window = 2.5 + 2.0;
    let allowed = 120.0 + 2.0 * window;
    let goodput = served as f64 / allowed;
    println!(
        "3 serve processes: {served} of 300 served, the last at {:.2} s, {limited} upstream \
         429s, goodput {:.1} % of the limit ({allowed:.0} allowed)",
        last_served.duration_since(started).as_secs_f64(),
        goodput * 100.0
    );
    assert_eq!(limited, 0, "the simulator never had to say 429");
    assert!(goodput >= 0.95, "goodput {:.1} %", goodput * 100.0);
    assert!(
        served as f64 <= allowed + 1.0,
        "no more than the limit: {served}"
    );
    // Every instance says how the budget is funded, and leasing kept Redis off the hot path.
    let mut trips = 0;
    for s in &instances {
        let status: serde_json::Value = client
            .get(format!("{}/status", s.base))
            .header("x-api-key", TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(status["fleet"]["mode"], "shared", "{}", status["fleet"]);
        assert_eq!(status["fleet"]["live_instances"], 3, "{}", status["fleet"]);
        trips += status["fleet"]["round_trips"].as_u64().unwrap();
    }
    println!("3 serve processes: {trips} fleet round trips in all (heartbeats included)");
    assert!(trips < 150, "{trips} round trips for 300 calls");
    for s in instances {
        let stopped = s.stop();
        assert!(stopped.status.success(), "{}", stopped.stderr);
    }
}
