//! The durable queue through the real binary: `seawall serve` queues calls its chain cannot
//! answer (HTTP 202 + job id), is killed with SIGKILL, and the next process finishes every
//! accepted job exactly once from the redb file. Real loopback HTTP, the simulator upstream.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use seawall::sim::{Scenario, Sim, SimHandle};
use serde_json::{json, Value};

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

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn temp_dir() -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("seawall-queue-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

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

/// A `seawall serve` process and its base URL.
struct Gateway {
    child: Child,
    base: String,
}

impl Gateway {
    fn start(config: &std::path::Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_seawall"))
            .args(["serve", "--config"])
            .arg(config)
            .env(KEY_ENV, KEY)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the binary starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("a first line");
        let base = line
            .trim_end()
            .strip_prefix("seawall serve listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Self { child, base }
    }

    /// SIGKILL: no shutdown code runs, nothing is flushed.
    fn kill_9(mut self) {
        let killed = Command::new("kill")
            .args(["-KILL", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let status = self.child.wait().unwrap();
        assert_eq!(status.code(), None, "killed by a signal: {status:?}");
    }

    async fn ask(&self, n: usize) -> reqwest::Response {
        client()
            .post(format!("{}/v1/messages", self.base))
            .header("x-api-key", TOKEN)
            .header("anthropic-version", "2023-06-01")
            .json(&json!({"model": "m", "max_tokens": 16,
                          "messages": [{"role": "user", "content": format!("job number {n}")}]}))
            .send()
            .await
            .unwrap()
    }

    async fn job(&self, id: &str, wait: &str) -> (u16, Value) {
        let r = client()
            .get(format!("{}/v1/seawall/jobs/{id}?wait={wait}", self.base))
            .header("x-api-key", TOKEN)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    async fn status(&self) -> Value {
        client()
            .get(format!("{}/status", self.base))
            .header("x-api-key", TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_jobs_survive_kill_9_and_complete_exactly_once_after_restart() {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let sim = Sim::start(Scenario::from_toml(DOWN).unwrap(), addr)
        .await
        .unwrap();
    let dir = temp_dir();
    let config_path = dir.join("seawall.toml");
    std::fs::write(&config_path, config(&sim, &dir.join("jobs.redb"))).unwrap();

    // The model is down: every call is stored and answered at once with its job id.
    let first = Gateway::start(&config_path);
    let mut ids = Vec::new();
    for n in 0..5 {
        let r = first.ask(n).await;
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
    let second = Gateway::start(&config_path);
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
    let third = Gateway::start(&config_path);
    let status = third.status().await;
    assert_eq!(status["queue"]["pending"], 0, "{status}");
    let (code, job) = third.job(&ids[4], "0s").await;
    assert_eq!((code, job["state"].as_str()), (200, Some("done")));
    third.kill_9();
    let _ = std::fs::remove_dir_all(&dir);
}
