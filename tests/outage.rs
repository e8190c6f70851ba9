//! What a primary's outage costs through the gateway, with and without its default probes:
//! the gateway in-process on loopback, the simulator as the upstream, steady traffic over real
//! HTTP, real time.
//!
//! Issue 15's figure is a 10 s outage at 20 requests/s with `open_for = "3s"`: about 18 user
//! calls reached the dead model without probes, and the target with them is 10 or fewer (the
//! probes counted apart). The default test runs it five times faster, so it fits in a few
//! seconds: a 2 s outage at 100 requests/s with `open_for = "600ms"` and the simulator's
//! latencies divided by five. Every phase then holds as many calls as at full scale (a trip
//! needs the same number of failures, an open period spans as many arrivals), so the target
//! stays 10. `a_ten_second_outage_at_full_scale` runs the unscaled figure (15 s; ignored by
//! default: `cargo test --test outage -- --ignored --nocapture`).
//!
//! Who sent what: the simulator logs every request (ground truth); the runtime counts user
//! attempts (`seawall_attempts_total`) and probes (`seawall_probes_total`) apart, and the test
//! checks that the two counts add up to the simulator's.

mod support;

use std::time::{Duration, Instant};

use support::eventually;
use support::gateway::{client, get, Gw, TOKEN};

/// One run's settings.
#[derive(Clone, Copy)]
struct Outage {
    /// How long the primary answers 529.
    down_for: Duration,
    /// Calls per second, evenly spaced.
    rps: u32,
    /// How long the run lasts (the outage, then recovery).
    run_for: Duration,
    /// The breaker's open duration.
    open_for: Duration,
    /// The simulator's latency of the primary and of the fallback.
    latency: (Duration, Duration),
}

/// What a run cost.
#[derive(Debug)]
struct Figures {
    /// User attempts the dead model answered with 529.
    user_calls: u64,
    /// Probes it answered with 529.
    probes: u64,
    /// Calls answered (all of them must be).
    answered: usize,
    /// Calls started once the primary was back and an open period had passed (plus 100 ms)
    /// that the primary served, of how many.
    late_on_primary: (usize, usize),
}

/// A counter's value in a Prometheus text (0 when absent).
fn counter(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .parse::<f64>()
                .ok()
        })
        .map_or(0, |v| v as u64)
}

async fn run(o: Outage, probes: bool, name: &str) -> Figures {
    let (primary, fallback) = (format!("{name}-primary"), format!("{name}-fallback"));
    let ms = |d: Duration| d.as_millis();
    let sim = support::gateway::sim(&format!(
        r#"
seed = 15
[[models]]
name = "{primary}"
latency = "{}ms"
[[models.faults]]
kind = "status"
status = 529
until = "{}ms"
[[models]]
name = "{fallback}"
latency = "{}ms"
"#,
        ms(o.latency.0),
        ms(o.down_for),
        ms(o.latency.1),
    ))
    .await;
    // The breaker's defaults but its open duration; the retry defaults; the gateway's default
    // probes, or none.
    let probe_section = if probes {
        String::new()
    } else {
        "[probes]\nenabled = false\n".to_owned()
    };
    let toml = format!(
        r#"
listen = "127.0.0.1:0"
[[upstreams]]
name = "sim"
base_url = "{base}"
api_key_env = "SIM_KEY"
[[models]]
name = "{primary}"
fallbacks = ["{fallback}"]
[[models]]
name = "{fallback}"
[breaker]
open_for = "{open_for}ms"
{probe_section}
[gateway]
tokens = ["{TOKEN}"]
shutdown_grace = "2s"
"#,
        base = sim.base_url(),
        open_for = ms(o.open_for),
    );
    let gw = Gw::start(&toml).await;
    let http = client();
    // Warm the connection pool, then start the outage's clock with the first call.
    let warm = http
        .get(format!("{}/healthz", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(warm.status(), 200);
    sim.reset();
    let t0 = Instant::now();
    let interval = Duration::from_secs(1) / o.rps;
    let n = (o.run_for.as_secs_f64() * f64::from(o.rps)) as u32;
    let mut calls = Vec::new();
    for i in 0..n {
        let at = t0 + interval * i;
        tokio::time::sleep_until(at.into()).await;
        let request = http
            .post(format!("{}/v1/messages", gw.url))
            .header("x-api-key", TOKEN)
            .json(&support::gateway::body(&primary));
        calls.push(tokio::spawn(async move {
            let r = request.send().await.unwrap();
            let model = r
                .headers()
                .get("seawall-model")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            (at - t0, r.status().as_u16(), model)
        }));
    }
    let mut results = Vec::new();
    for c in calls {
        results.push(c.await.expect("no call panicked"));
    }
    let answered = results.iter().filter(|(_, s, _)| *s == 200).count();
    let late: Vec<_> = results
        .iter()
        .filter(|(at, _, _)| *at >= o.down_for + o.open_for + Duration::from_millis(100))
        .collect();
    let late_on_primary = late
        .iter()
        .filter(|(_, _, m)| m.as_deref() == Some(primary.as_str()))
        .count();

    // The simulator's 529s for the primary are user attempts plus probes: wait until the
    // monitor has counted them all (it is told after each attempt), then split them.
    let dead = sim
        .log()
        .iter()
        .filter(|e| e.model.as_deref() == Some(primary.as_str()) && e.status == Some(529))
        .count() as u64;
    let user = format!("seawall_attempts_total{{model=\"{primary}\",class=\"overloaded\"}}");
    let probe = format!("seawall_probes_total{{model=\"{primary}\",class=\"overloaded\"}}");
    let (user_calls, probes) = eventually(
        "the monitor counts every 529 the simulator sent",
        Duration::from_secs(5),
        || async {
            let text = get(&gw, "/metrics", Some(TOKEN))
                .await
                .text()
                .await
                .unwrap();
            let (u, p) = (counter(&text, &user), counter(&text, &probe));
            if u + p == dead {
                Ok((u, p))
            } else {
                Err(format!("user {u} + probes {p} != the simulator's {dead}"))
            }
        },
    )
    .await;
    Figures {
        user_calls,
        probes,
        answered,
        late_on_primary: (late_on_primary, late.len()),
    }
}

fn check(o: Outage, with: &Figures, without: &Figures, target: u64) {
    let n = (o.run_for.as_secs_f64() * f64::from(o.rps)) as usize;
    for f in [with, without] {
        assert_eq!(f.answered, n, "every caller gets a 200: {f:?}");
        assert_eq!(
            f.late_on_primary.0, f.late_on_primary.1,
            "after recovery the primary serves: {f:?}"
        );
    }
    assert_eq!(without.probes, 0, "{without:?}");
    assert!(with.probes >= 1, "the outage was probed: {with:?}");
    assert!(
        with.user_calls < without.user_calls,
        "probes spare users: with {with:?}, without {without:?}"
    );
    assert!(
        with.user_calls <= target,
        "at most {target} user calls reach the dead model: {with:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_probes_spare_user_calls_during_an_outage() {
    let ms = Duration::from_millis;
    let o = Outage {
        down_for: ms(2000),
        rps: 100,
        run_for: ms(3000),
        open_for: ms(600),
        latency: (ms(4), ms(6)),
    };
    let without = run(o, false, "scaled-unprobed").await;
    let with = run(o, true, "scaled-probed").await;
    println!(
        "2 s outage at 100 rps, open_for 600ms: user calls to the dead model {} with the \
         default probes (+{} probes), {} without",
        with.user_calls, with.probes, without.user_calls
    );
    check(o, &with, &without, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "15 s of real time: run with --ignored for issue 15's figure at full scale"]
async fn a_ten_second_outage_at_full_scale() {
    let ms = Duration::from_millis;
    let o = Outage {
        down_for: ms(10_000),
        rps: 20,
        run_for: ms(15_000),
        open_for: ms(3000),
        latency: (ms(20), ms(30)),
    };
    let without = run(o, false, "full-unprobed").await;
    let with = run(o, true, "full-probed").await;
    println!(
        "10 s outage at 20 rps, open_for 3s: user calls to the dead model {} with the default \
         probes (+{} probes), {} without",
        with.user_calls, with.probes, without.user_calls
    );
    check(o, &with, &without, 10);
}
