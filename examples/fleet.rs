//! Three seawall instances, one organization budget, on Redis: the fleet of issue 12, shown
//! against the simulator enforcing that budget over loopback HTTP.
//!
//! Run: `cargo run --release --example fleet -- [--seconds 10] [--rpm 600] [--load 2.5]
//! [--redis redis://HOST:PORT/DB] [--bench]`
//!
//! Without `--redis` it starts a throwaway `redis-server` from PATH on a free port (install it
//! with `apt-get install redis-server` or `brew install redis`).
//!
//! Two runs, the same offered load (`--load` times the limit, spread 60/30/10 % over the three
//! instances): first three instances alone, each believing it owns the whole limit (the
//! upstream answers 429s); then the same three joined in one fleet (no 429, goodput near the
//! limit, a fraction of a Redis round trip per call). `--bench` adds the per-call overhead of
//! cluster mode against the in-process runtime (one caller, sequential calls, no limit in
//! reach) and the round trips per call below the limit.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use seawall::cluster::{ClusterBuilder, RedisCluster};
use seawall::core::{Call, Limits, RetryPolicy, Seawall};
use seawall::sim::{Scenario, Sim, SimHandle};
use seawall::{AnthropicOptions, AnthropicUpstream, ApiKey};

fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

/// A `redis-server` of our own, stopped when dropped.
struct LocalRedis {
    child: Child,
    url: String,
}

impl LocalRedis {
    fn start() -> Result<Self, String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!(
                    "could not start redis-server ({e}): install it (apt-get install \
                     redis-server, brew install redis) or pass --redis redis://HOST:PORT/DB"
                )
            })?;
        Ok(Self {
            child,
            url: format!("redis://127.0.0.1:{port}/0"),
        })
    }
}

impl Drop for LocalRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn sim(rpm: u64, latency: &str) -> Result<SimHandle, Box<dyn std::error::Error>> {
    let scenario = Scenario::from_toml(&format!(
        r#"
        seed = 21
        [limits]
        requests_per_minute = {rpm}
        [[models]]
        name = "m"
        latency = "{latency}"
        output_tokens = 20
        "#
    ))?;
    Ok(Sim::start(scenario, "127.0.0.1:0".parse()?).await?)
}

async fn instance(
    sim: &SimHandle,
    rpm: u64,
    cluster: Option<RedisCluster>,
) -> Result<Seawall, Box<dyn std::error::Error>> {
    let upstream = AnthropicUpstream::new(
        vec![ApiKey::new("sk-ant-fleet-example-0001")?],
        AnthropicOptions {
            base_url: sim.base_url(),
            ..AnthropicOptions::default()
        },
    )?;
    let limits = Limits {
        requests_per_minute: Some(rpm),
        input_tokens_per_minute: None,
        output_tokens_per_minute: None,
    };
    let policy = RetryPolicy {
        deadline: Duration::from_secs(5),
        ..RetryPolicy::default()
    };
    let mut b = Seawall::builder()
        .upstream("sim", upstream)
        .limits("sim", limits)
        .chain_with("m", ["m"], policy);
    if let Some(c) = cluster {
        b = b.cluster(c);
    }
    Ok(b.spawn().await?)
}

/// What one run of the three instances did.
struct Run {
    served: [usize; 3],
    refused: usize,
    upstream_429: usize,
    round_trips: u64,
    offered: usize,
}

/// Offer `rate` calls a second for `seconds`, 60/30/10 % over `instances`.
async fn offer(instances: &[Seawall], sim: &SimHandle, rate: f64, seconds: f64) -> Run {
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for (i, share) in [0.6, 0.3, 0.1].into_iter().enumerate() {
        let n = (rate * share * seconds).round() as usize;
        let every = Duration::from_secs_f64(1.0 / (rate * share));
        for k in 0..n {
            let sw = instances[i].clone();
            let at = t0 + every.mul_f64(k as f64);
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep_until(at.into()).await;
                (
                    i,
                    sw.complete(Call::new("m", 16).user("fleet")).await.is_ok(),
                )
            }));
        }
    }
    let offered = tasks.len();
    let mut served = [0; 3];
    let mut refused = 0;
    for t in tasks {
        match t.await {
            Ok((i, true)) => served[i] += 1,
            _ => refused += 1,
        }
    }
    let mut round_trips = 0;
    for sw in instances {
        round_trips += sw.fleet_status().await.map_or(0, |s| s.round_trips);
    }
    let upstream_429 = sim.log().iter().filter(|e| e.status == Some(429)).count();
    Run {
        served,
        refused,
        upstream_429,
        round_trips,
        offered,
    }
}

/// What the limit allows over `seconds`: the full bucket and its refill.
fn allowed(rpm: u64, seconds: f64) -> f64 {
    rpm as f64 * (1.0 + seconds / 60.0)
}

fn report(title: &str, run: &Run, rpm: u64, seconds: f64) {
    let total: usize = run.served.iter().sum();
    // Over the run and the last calls' 5 s deadline.
    let allowed = allowed(rpm, seconds + 5.0);
    println!("{title}");
    println!(
        "  offered {} calls; served {total} ({} / {} / {} per instance), refused with retry-after {}",
        run.offered, run.served[0], run.served[1], run.served[2], run.refused
    );
    println!(
        "  upstream 429s: {}; goodput {:.1} % of what the limit allowed ({allowed:.0})",
        run.upstream_429,
        100.0 * total as f64 / allowed
    );
    if run.round_trips > 0 {
        println!(
            "  Redis round trips: {} ({:.3} per served call; {:.3} without the heartbeats, one \
             per instance per second)",
            run.round_trips,
            run.round_trips as f64 / total.max(1) as f64,
            (run.round_trips as f64 - 3.0 * (seconds + 1.0)).max(0.0) / total.max(1) as f64
        );
    }
}

async fn three(
    sim: &SimHandle,
    rpm: u64,
    redis: Option<(&str, &str)>,
) -> Result<Vec<Seawall>, Box<dyn std::error::Error>> {
    let mut out = Vec::new();
    for _ in 0..3 {
        let cluster = match redis {
            Some((url, name)) => Some(RedisCluster::connect(url, name).await?),
            None => None,
        };
        out.push(instance(sim, rpm, cluster).await?);
    }
    Ok(out)
}

/// Sequential calls through one instance, appended to `us` (microseconds per whole call).
async fn latency(sw: &Seawall, n: usize, us: &mut Vec<f64>) {
    for _ in 0..n {
        let t = Instant::now();
        let _ = sw.complete(Call::new("m", 16).user("overhead")).await;
        us.push(t.elapsed().as_secs_f64() * 1e6);
    }
}

/// p50 and p99 of `us`.
fn percentiles(us: &mut [f64]) -> (f64, f64) {
    us.sort_by(f64::total_cmp);
    let n = us.len().max(1);
    (
        us.get(n / 2).copied().unwrap_or(0.0),
        us.get(n * 99 / 100).copied().unwrap_or(0.0),
    )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds: f64 = arg("--seconds", 10.0);
    let rpm: u64 = arg("--rpm", 600);
    let load: f64 = arg("--load", 2.5);
    let given: Option<String> = arg("--redis", String::new()).into();
    let local;
    let url = match given.filter(|u| !u.is_empty()) {
        Some(u) => u,
        None => {
            local = LocalRedis::start()?;
            // Wait for it to answer.
            let mut tries = 0;
            while RedisCluster::connect(&local.url, "probe").await.is_err() {
                tries += 1;
                if tries > 100 {
                    return Err("redis-server did not come up within 5 s".into());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            local.url.clone()
        }
    };
    let run_id = std::process::id();
    // `load` x what the limit allows over the run (its full bucket and refill).
    let rate = load * allowed(rpm, seconds) / seconds;
    println!(
        "Three instances, one organization limit of {rpm} requests a minute; for {seconds} s \
         they are offered {load}x what it allows then ({rate:.0} calls a second, 60/30/10 % \
         over the instances)\n"
    );

    let s = sim(rpm, "20ms").await?;
    let alone = three(&s, rpm, None).await?;
    let run = offer(&alone, &s, rate, seconds).await;
    report(
        "Alone (each instance believes the whole limit is its own):",
        &run,
        rpm,
        seconds,
    );

    let s = sim(rpm, "20ms").await?;
    let name = format!("example-{run_id}");
    let fleet = three(&s, rpm, Some((&url, &name))).await?;
    let run = offer(&fleet, &s, rate, seconds).await;
    report(
        "\nA fleet on Redis (one shared budget):",
        &run,
        rpm,
        seconds,
    );

    if flag("--bench") {
        println!("\nOverhead per call, one caller, sequential calls, the limit far away:");
        let big = 1_000_000;
        let s = sim(big, "0ms").await?;
        let plain = instance(&s, big, None).await?;
        let name = format!("bench-{run_id}");
        let joined = instance(&s, big, Some(RedisCluster::connect(&url, &name).await?)).await?;
        let (mut a, mut b) = (Vec::new(), Vec::new());
        latency(&plain, 500, &mut a).await; // warm-up: connections, allocator
        latency(&joined, 500, &mut b).await;
        a.clear();
        b.clear();
        let before = joined.fleet_status().await.map_or(0, |f| f.round_trips);
        // Interleaved rounds, so drift on a noisy machine falls on both alike.
        let rounds = 10;
        for _ in 0..rounds {
            latency(&plain, 500, &mut a).await;
            latency(&joined, 500, &mut b).await;
        }
        let n = rounds * 500;
        let trips = joined.fleet_status().await.map_or(0, |f| f.round_trips) - before;
        let ((p50a, p99a), (p50b, p99b)) = (percentiles(&mut a), percentiles(&mut b));
        println!("  in-process: p50 {p50a:.0} us, p99 {p99a:.0} us");
        println!(
            "  cluster:    p50 {p50b:.0} us, p99 {p99b:.0} us ({:.4} Redis round trips per call)",
            trips as f64 / n as f64
        );

        let big = rpm * 10;
        println!("\nBelow the limit: {big} a minute, three instances at half its refill rate:");
        let s = sim(big, "20ms").await?;
        let name = format!("half-{run_id}");
        let fleet = three(&s, big, Some((&url, &name))).await?;
        let run = offer(&fleet, &s, 0.5 * big as f64 / 60.0, seconds).await;
        report("  a fleet at 50 % load:", &run, big, seconds);
    }
    Ok(())
}
