//! Runtime overhead benchmarks (criterion). Run: `cargo bench --bench runtime`.
//!
//! - `call/complete`: one call through the whole actor path (request actor spawn, breaker
//!   Acquire, governor Reserve, upstream, Record + Settle casts, reply) against an upstream that
//!   answers instantly. Also printed as a latency distribution (p50/p99 over 50k calls).
//! - `governor/*` and `breaker/*`: decisions per second through the actors' mailboxes (one caller,
//!   and 8 concurrent callers), and the pure policies alone as the baseline.
//! - `queue/*`: storing one queued call (a 2 KB request): durably in the redb file (a committed,
//!   fsynced transaction) and, as the baseline, in memory. The durable rate bounds how many calls
//!   per second an outage can queue.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hdrhistogram::Histogram;
use ractor::rpc::CallResult;
use ractor::ActorRef;
use seawall::core::policy::breaker::{Acquire, Admission, Breaker};
use seawall::core::policy::bucket::Buckets;
use seawall::core::policy::lanes::{Decision, ReserveRequest, ServerLimits, Settlement};
use seawall::core::protocol::{BreakerMsg, GovernorMsg, Responder, SupervisorMsg};
use seawall::core::scripted::ok_response;
use seawall::core::{
    Attempt, BreakerConfig, Call, Class, Cost, Job, JobState, JobStore, Lane, Limits,
    MemoryJobStore, Seawall, Upstream, UpstreamFuture, UpstreamResponse,
};
use seawall::jobstore::RedbJobStore;

/// Answers every attempt at once with the same response.
struct Instant200(UpstreamResponse);

impl Upstream for Instant200 {
    fn send(&self, _attempt: Attempt) -> UpstreamFuture<'_> {
        let r = self.0.clone();
        Box::pin(async move { Ok(r) })
    }
}

/// The two runtimes an embedding app is likely to run: tokio's multi-thread scheduler with one
/// worker per core (cross-thread wake-ups on every mailbox hop), and a current-thread one.
fn runtimes() -> Vec<(&'static str, tokio::runtime::Runtime)> {
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let current = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    vec![("mt2", multi), ("ct", current)]
}

fn big_limits() -> Limits {
    // Limited in all three dimensions (so the buckets do real work) but never short.
    Limits {
        requests_per_minute: Some(1_000_000_000),
        input_tokens_per_minute: Some(1_000_000_000_000),
        output_tokens_per_minute: Some(1_000_000_000_000),
    }
}

async fn runtime() -> Seawall {
    Seawall::builder()
        .upstream("instant", Instant200(ok_response("m", "hi")))
        .chain("m", ["m", "fallback"])
        .limits("instant", big_limits())
        .spawn()
        .await
        .expect("spawn")
}

async fn breaker_ref(sw: &Seawall) -> ActorRef<BreakerMsg> {
    match sw
        .supervisor()
        .call(
            |reply| SupervisorMsg::BreakerRef {
                model: 0,
                stale: None,
                reply: Responder::port(reply),
            },
            None,
        )
        .await
    {
        Ok(CallResult::Success(r)) => r,
        _ => panic!("no breaker"),
    }
}

async fn governor_ref(sw: &Seawall) -> ActorRef<GovernorMsg> {
    match sw
        .supervisor()
        .call(
            |reply| SupervisorMsg::GovernorRef {
                stale: None,
                reply: Responder::port(reply),
            },
            None,
        )
        .await
    {
        Ok(CallResult::Success(r)) => r,
        _ => panic!("no governor"),
    }
}

async fn reserve_settle(g: &ActorRef<GovernorMsg>) {
    let d = g
        .call(
            |reply| {
                GovernorMsg::Reserve(
                    ReserveRequest {
                        upstream: 0,
                        class: 0,
                        cost: Cost::request(100, 100),
                        lane: Lane::Interactive,
                        feature: None,
                        max_wait: Duration::ZERO,
                    },
                    Responder::port(reply),
                )
            },
            None,
        )
        .await;
    if let Ok(CallResult::Success(Decision::Grant { ticket, .. })) = d {
        let _ = g.cast(GovernorMsg::Settle(Settlement {
            ticket,
            actual: Cost::request(90, 40),
            server: ServerLimits::default(),
            key_bad: false,
            key_pause: None,
        }));
    } else {
        panic!("governor refused");
    }
}

async fn acquire_record(b: &ActorRef<BreakerMsg>) {
    match b
        .call(
            |reply| BreakerMsg::Acquire {
                retry: false,
                reply: Responder::port(reply),
            },
            None,
        )
        .await
    {
        Ok(CallResult::Success(Admission::Permitted(permit))) => {
            let _ = b.cast(BreakerMsg::Record {
                permit,
                class: Class::Success,
                latency: Duration::from_millis(1),
            });
        }
        _ => panic!("breaker refused"),
    }
}

/// Latency distribution of whole calls, printed once (criterion reports means and medians).
fn print_call_percentiles(label: &str, rt: &tokio::runtime::Runtime, sw: &Seawall) {
    let mut hist = Histogram::<u64>::new(3).expect("histogram");
    rt.block_on(async {
        for _ in 0..5_000 {
            let _ = sw.complete(Call::new("m", 16).user("hi")).await;
        }
        for _ in 0..50_000 {
            let t = Instant::now();
            let r = sw.complete(Call::new("m", 16).user("hi")).await;
            let ns = t.elapsed().as_nanos() as u64;
            assert!(r.is_ok());
            let _ = hist.record(ns);
        }
    });
    println!(
        "{label} call/complete latency over 50000 calls: p50 {:.1} µs, p90 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs",
        hist.value_at_quantile(0.50) as f64 / 1e3,
        hist.value_at_quantile(0.90) as f64 / 1e3,
        hist.value_at_quantile(0.99) as f64 / 1e3,
        hist.value_at_quantile(0.999) as f64 / 1e3,
    );
}

fn benches(c: &mut Criterion) {
    for (label, rt) in runtimes() {
        suite(c, label, &rt);
    }
    queue(c);
}

fn queue(c: &mut Criterion) {
    let mut request = serde_json::Map::new();
    request.insert(
        "messages".into(),
        serde_json::json!([{"role": "user", "content": "x".repeat(2000)}]),
    );
    let job = |i: u64| Job {
        id: format!("job_{i:016x}"),
        chain: "codegen".into(),
        request: request.clone(),
        anthropic_version: None,
        anthropic_beta: None,
        feature: None,
        tenant: None,
        created_ms: i,
        expires_ms: i + 3_600_000,
        runs: 0,
        state: JobState::Pending { last_error: None },
    };
    let path = std::env::temp_dir().join(format!("seawall-bench-{}.redb", std::process::id()));
    let durable = match RedbJobStore::open(&path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("queue benches skipped: {e}");
            return;
        }
    };
    let memory = MemoryJobStore::default();
    // The store calls are async (redb's fsync runs on spawn_blocking): measured as the queue
    // sees them, awaited on a runtime.
    let rt = match tokio::runtime::Builder::new_multi_thread().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("queue benches skipped: {e}");
            return;
        }
    };
    let mut g = c.benchmark_group("queue");
    g.throughput(Throughput::Elements(1));
    let mut i = 0u64;
    g.bench_function("redb_put", |b| {
        b.iter(|| {
            i += 1;
            rt.block_on(durable.put(&job(i)))
        })
    });
    g.bench_function("memory_put", |b| {
        b.iter(|| {
            i += 1;
            rt.block_on(memory.put(&job(i)))
        })
    });
    g.finish();
    drop(durable);
    let _ = std::fs::remove_file(&path);
}

fn suite(c: &mut Criterion, label: &str, rt: &tokio::runtime::Runtime) {
    let sw = rt.block_on(runtime());
    print_call_percentiles(label, rt, &sw);

    let mut g = c.benchmark_group(format!("{label}/call"));
    g.throughput(Throughput::Elements(1));
    g.bench_function("complete", |b| {
        b.to_async(rt)
            .iter(|| async { sw.complete(Call::new("m", 16).user("hi")).await })
    });
    g.finish();

    let gov = rt.block_on(governor_ref(&sw));
    let brk = rt.block_on(breaker_ref(&sw));

    let mut g = c.benchmark_group(format!("{label}/governor"));
    g.throughput(Throughput::Elements(1));
    g.bench_function("policy_reserve_settle", |b| {
        let t0 = Instant::now();
        let mut buckets = Buckets::new(big_limits(), t0);
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            let now = t0 + Duration::from_nanos(i * 100);
            let r = buckets.reserve(Cost::request(100, 100), Duration::ZERO, now);
            buckets.settle(Cost::request(100, 100), Cost::request(90, 40), now);
            r
        })
    });
    g.bench_function("actor_reserve_settle_1_caller", |b| {
        b.to_async(rt).iter(|| reserve_settle(&gov))
    });
    g.throughput(Throughput::Elements(8));
    g.bench_function("actor_reserve_settle_8_callers", |b| {
        b.to_async(rt).iter(|| async {
            let tasks: Vec<_> = (0..8)
                .map(|_| {
                    let gov = gov.clone();
                    tokio::spawn(async move { reserve_settle(&gov).await })
                })
                .collect();
            for t in tasks {
                let _ = t.await;
            }
        })
    });
    g.finish();

    let mut g = c.benchmark_group(format!("{label}/breaker"));
    g.throughput(Throughput::Elements(1));
    g.bench_function("policy_acquire_record", |b| {
        let t0 = Instant::now();
        let mut breaker = Breaker::new(BreakerConfig::default(), t0);
        b.iter(|| {
            if let Acquire::Permitted(p) = breaker.try_acquire(t0) {
                breaker.record(p, Class::Success, Duration::from_millis(1), t0);
            }
        })
    });
    g.bench_function("actor_acquire_record_1_caller", |b| {
        b.to_async(rt).iter(|| acquire_record(&brk))
    });
    g.finish();

    rt.block_on(async {
        sw.shutdown(Duration::from_secs(5)).await;
    });
}

criterion_group! {
    name = overhead;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = benches
}
criterion_main!(overhead);
