//! The durable queue through the real binary: `seawall serve` queues calls its chain cannot
//! answer (HTTP 202 + job id), is killed with SIGKILL, and the next process finishes every
//! accepted job exactly once from the redb file. Real loopback HTTP, the simulator upstream.

mod support;

use seawall::sim::{Scenario, SimHandle};
use serde_json::Value;
use support::process::{temp_dir, Served};
use support::sim::sim;

const KEY_ENV: &str = "SEAWALL_QUEUE_TEST_KEY";
const KEY: &str = "sk-ant-api03-QUEUESECRETQUEUESECRET-qqqq";
const TOKEN: &str = "queue-test-client-token-0123456789";

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

fn config(sim: &SimHandle, store: &std::path::Path) -> String {
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
# One failure opens the breaker for longer than the test: once the first call has failed, the
# first process sends nothing more upstream, so no request of it is still in flight when it is
# killed (one would land after the model recovers and count as a second run).
[breaker]
window = 1
min_calls = 1
open_for = "60s"
[queue]
path = "{store}"
poll = "50ms"
run_timeout = "1s"
ttl = "1h"
[gateway]
tokens = ["{TOKEN}"]
"#,
        base = sim.base_url(),
        store = store.display(),
    )
}

/// A `seawall serve` process of this test's config.
fn gateway(config: &std::path::Path) -> Served {
    Served::start(config, TOKEN, &[(KEY_ENV, KEY)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_jobs_survive_kill_9_and_complete_exactly_once_after_restart() {
    let sim = sim(DOWN).await;
    let dir = temp_dir("queue");
    let config_path = dir.join("seawall.toml");
    std::fs::write(&config_path, config(&sim, &dir.join("jobs.redb"))).unwrap();

    // The model is down: every call is stored and answered at once with its job id.
    let first = gateway(&config_path);
    let mut ids = Vec::new();
    for n in 0..5 {
        let r = first.ask(&format!("job number {n}")).await;
        assert_eq!(r.status(), 202, "queued, not failed");
        let h = r.headers();
        assert_eq!(h["seawall-source"], "queued");
        let id = h["seawall-job-id"].to_str().unwrap().to_owned();
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["type"], "queued");
        assert_eq!(body["job_id"], id.as_str());
        ids.push(id);
    }
    let (status, job) = first.job(&ids[0], "0s").await;
    assert_eq!(status, 200);
    assert_eq!(job["state"], "pending", "{job}");
    assert!(job.get("request").is_none(), "prompts are not echoed");
    let (status, unknown) = first.job("job_nope", "0s").await;
    assert_eq!(status, 404, "{unknown}");
    assert_eq!(
        sim.log().len(),
        1,
        "after the first failure the open breaker kept everything else local"
    );
    first.kill_9();

    // The model recovers while no seawall runs; the next process finds every job in the file.
    sim.set_scenario(Scenario::from_toml(UP).unwrap()).unwrap();
    let before = sim.log().len();
    let second = gateway(&config_path);
    for (n, id) in ids.iter().enumerate() {
        let (status, job) = second.job(id, "20s").await;
        assert_eq!(status, 200);
        assert_eq!(job["state"], "done", "{job}");
        assert_eq!(job["result"]["status"], 200);
        assert_eq!(job["result"]["model"], "m");
        assert_eq!(job["result"]["body"]["type"], "message", "{job}");
        assert!(job["runs"].as_u64().unwrap() >= 1, "{job}; job {n}");
    }
    // Exactly once: after the restart, one successful upstream call per job, keyed by its id.
    let after: Vec<_> = sim.log().into_iter().skip(before).collect();
    for id in &ids {
        let ok = after
            .iter()
            .filter(|e| e.idempotency_key.as_deref() == Some(id.as_str()))
            .filter(|e| e.status == Some(200))
            .count();
        assert_eq!(ok, 1, "job {id} answered {ok} times");
    }
    assert_eq!(
        after.iter().filter(|e| e.status == Some(200)).count(),
        ids.len(),
        "no other call reached the model"
    );
    second.kill_9();

    // A third process has nothing left to do: finished jobs stay finished and retrievable.
    let third = gateway(&config_path);
    let status = third.status().await;
    assert_eq!(status["queue"]["pending"], 0, "{status}");
    let (code, job) = third.job(&ids[4], "0s").await;
    assert_eq!((code, job["state"].as_str()), (200, Some("done")));
    third.kill_9();
    let _ = std::fs::remove_dir_all(&dir);
}
