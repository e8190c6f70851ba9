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
            .strip_prefix("seawall serve listening on ")
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
