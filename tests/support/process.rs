//! A real `seawall serve` process for the tests that check what an operator sees: the binary
//! built by cargo (`CARGO_BIN_EXE_seawall`), its first stdout line read for the address, its
//! stderr collected whole once it has stopped.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;

/// A fresh directory under the system's temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("seawall-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Write `text` as `seawall.toml` in a fresh temp dir; return its path.
pub fn write_config(tag: &str, text: &str) -> PathBuf {
    let path = temp_dir(tag).join("seawall.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A running `seawall` process.
pub struct Serve {
    child: Child,
    /// `http://ADDR` from the first stdout line.
    pub base: String,
    stderr: Option<JoinHandle<String>>,
}

/// What a stopped process left.
pub struct Stopped {
    /// How it exited.
    pub status: ExitStatus,
    /// Everything it wrote on stderr.
    pub stderr: String,
}

impl Serve {
    /// Run `seawall <args>` in `dir` with exactly `env` (nothing inherited), and wait for its
    /// `seawall serve listening on http://ADDR` line. Panics with its stderr if it exits first.
    pub fn start(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::announcing(dir, args, env, "seawall serve listening on ")
    }

    /// [`Serve::start`] for a subcommand whose first stdout line is `announcement` then its
    /// address (`seawall sim listening on `).
    pub fn announcing(dir: &Path, args: &[&str], env: &[(&str, &str)], announcement: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_seawall"))
            .args(args)
            .current_dir(dir)
            .env_clear()
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let mut stderr = child.stderr.take().expect("stderr");
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("a first line");
        let Some(base) = line
            .trim_end()
            .strip_prefix(announcement)
            .map(str::to_owned)
        else {
            let status = child.wait().unwrap();
            let text = reader.join().unwrap();
            panic!("no listening line ({status}); stdout {line:?}; stderr:\n{text}");
        };
        Self {
            child,
            base,
            stderr: Some(reader),
        }
    }

    /// SIGKILL: no shutdown code runs, nothing is flushed (and a fleet's heartbeat just stops).
    pub fn kill_9(mut self) {
        let killed = Command::new("kill")
            .args(["-KILL", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let status = self.child.wait().unwrap();
        assert_eq!(status.code(), None, "killed by a signal: {status:?}");
    }

    /// SIGTERM, then wait for the exit and the whole stderr.
    pub fn stop(mut self) -> Stopped {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let status = self.child.wait().unwrap();
        let stderr = self
            .stderr
            .take()
            .map(|r| r.join().unwrap())
            .unwrap_or_default();
        Stopped { status, stderr }
    }
}

/// `seawall serve --config FILE` (with `env`, logs at `warn`) as a client holding `token`
/// sees it: messages, job lookups and `/status`.
pub struct Served {
    /// The process.
    pub serve: Serve,
    token: String,
    http: reqwest::Client,
}

impl Served {
    /// Start it and wait until it listens.
    pub fn start(config: &Path, token: &str, env: &[(&str, &str)]) -> Self {
        let dir = config.parent().expect("the config's directory");
        let path = config.to_str().expect("a UTF-8 path");
        let mut vars = env.to_vec();
        vars.push(("RUST_LOG", "warn"));
        Self {
            serve: Serve::start(dir, &["serve", "--config", path], &vars),
            token: token.to_owned(),
            // No timeout of its own: a job lookup's `?wait=` bounds it.
            http: super::http::plain_client(),
        }
    }

    /// SIGKILL (see [`Serve::kill_9`]).
    pub fn kill_9(self) {
        self.serve.kill_9();
    }

    /// `POST /v1/messages` of a 16-token call to model `m` saying `prompt`.
    pub async fn ask(&self, prompt: &str) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/messages", self.serve.base))
            .header("x-api-key", &self.token)
            .header("anthropic-version", "2023-06-01")
            .json(&serde_json::json!({"model": "m", "max_tokens": 16,
                          "messages": [{"role": "user", "content": prompt}]}))
            .send()
            .await
            .unwrap()
    }

    /// `GET /v1/seawall/jobs/{id}?wait={wait}`: its status and body.
    pub async fn job(&self, id: &str, wait: &str) -> (u16, serde_json::Value) {
        let r = self
            .http
            .get(format!(
                "{}/v1/seawall/jobs/{id}?wait={wait}",
                self.serve.base
            ))
            .header("x-api-key", &self.token)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    /// `GET /status`.
    pub async fn status(&self) -> serde_json::Value {
        self.http
            .get(format!("{}/status", self.serve.base))
            .header("x-api-key", &self.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        // A test that panicked before stop(): do not leave the process behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run `seawall <args>` with exactly `env` until it exits; (status, stdout, stderr).
pub fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_seawall"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("the binary runs");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
