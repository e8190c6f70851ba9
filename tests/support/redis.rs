//! A real `redis-server` per test, on a free loopback port, with no persistence: the fleet tests
//! run against the real thing, not a fake.
//!
//! `cargo test --workspace` stays the only command on a fresh machine: when `redis-server` is not
//! on `PATH` and the test runs as root on Debian or Ubuntu (CI), it is installed once per test
//! binary with apt-get; anywhere else the test fails with the command to install it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long a started server has to answer PING.
const READY_WITHIN: Duration = Duration::from_secs(5);
/// Fresh ports tried when the one picked was taken between probing and binding.
const PORT_TRIES: usize = 8;

/// A running `redis-server`: killed (SIGKILL) and its directory removed on drop.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    extra: Vec<String>,
}

static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
static SEQ: AtomicU64 = AtomicU64::new(0);

/// Make sure `redis-server` can be run: installed already, or installed now with apt-get when
/// this is a root shell on Debian/Ubuntu (once per test binary).
fn ensure_installed() {
    let result = INSTALLED.get_or_init(|| {
        if on_path("redis-server") {
            return Ok(());
        }
        let debian = Path::new("/etc/debian_version").exists();
        let root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        if !(debian && root) {
            return Err(
                "redis-server is not on PATH. The fleet tests run a real Redis: install \
                 it (Debian/Ubuntu: `sudo apt-get install -y redis-server`; macOS: `brew install \
                 redis`) and run the tests again"
                    .into(),
            );
        }
        let script = "apt-get update -qq && apt-get install -y -qq redis-server";
        say(&format!(
            "redis-server is not on PATH; running `{script}` (root on Debian/Ubuntu)"
        ));
        let started = Instant::now();
        let status = Command::new("sh")
            .args(["-c", script])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .map_err(|e| format!("could not run `{script}`: {e}"))?;
        if !status.success() {
            return Err(format!(
                "`{script}` failed ({status}); install redis-server by hand and run the tests again"
            ));
        }
        if !on_path("redis-server") {
            return Err(format!(
                "`{script}` succeeded but redis-server is still not on PATH: add its directory \
                 (usually /usr/bin) to PATH"
            ));
        }
        say(&format!(
            "installed redis-server in {:.1?}",
            started.elapsed()
        ));
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Straight to the process's stderr: the test harness captures `eprintln!`, and CI logs should
/// show that something was installed.
fn say(what: &str) {
    let _ = writeln!(std::io::stderr(), "tests/support/redis: {what}");
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// A port nobody listened on a moment ago (the server may still lose a race for it: retried).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral loopback port")
}

impl RedisServer {
    /// A server with the test defaults.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A server with extra arguments (`["--requirepass", "pw"]`, `["--replicaof", "127.0.0.1",
    /// "6379"]`).
    pub fn start_with(extra: &[&str]) -> Self {
        ensure_installed();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let dir = std::env::temp_dir().join(format!(
            "seawall-redis-{}-{}-{nanos}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create the server's directory");
        let mut server = Self {
            child: None,
            port: 0,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        let mut last = String::new();
        for _ in 0..PORT_TRIES {
            server.port = free_port();
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => last = e,
            }
        }
        panic!("redis-server did not start after {PORT_TRIES} ports: {last}");
    }

    /// Start the process on `self.port` and wait until it answers PING.
    fn spawn(&mut self) -> Result<(), String> {
        let log = self.dir.join("redis.log");
        let mut child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("could not run redis-server: {e}"))?;
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                // Most likely the port was taken in the meantime: the caller tries another.
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!(
                    "redis-server on port {} exited at once ({status}): {}",
                    self.port,
                    tail.lines().rev().take(3).collect::<Vec<_>>().join(" | ")
                ));
            }
            if answers_ping(self.port) {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "redis-server on port {} did not answer PING within {READY_WITHIN:?}",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: no shutdown, the data is gone (there is no persistence).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kill it and start a fresh, empty server on the same port.
    pub fn restart(&mut self) {
        self.kill();
        // The port was released with the process; a foreign taker is retried a few times.
        let mut last = String::new();
        for _ in 0..PORT_TRIES {
            match self.spawn() {
                Ok(()) => return,
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not restart on port {}: {last}", self.port);
    }

    /// SIGSTOP: the port still accepts connections but nothing answers (a blackholed Redis).
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`RedisServer::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        if let Some(pid) = self.pid() {
            let ok = Command::new("kill")
                .args([sig, &pid.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "kill {sig} {pid}");
        }
    }

    /// Stop it (SIGKILL) and remove its directory.
    pub fn stop(mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// Run one command with `redis-cli`-free plain RESP (no password): `CONFIG SET maxmemory 1`.
    pub fn command(&self, args: &[&str]) -> String {
        command(self.port, args).unwrap_or_else(|e| panic!("redis command {args:?}: {e}"))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Any reply to PING (PONG, or NOAUTH when a password is required) means it is serving.
fn answers_ping(port: u16) -> bool {
    command(port, &["PING"]).is_ok()
}

/// Send one command as RESP and read the first reply line.
fn command(port: u16, args: &[&str]) -> Result<String, String> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    let mut out = format!("*{}\r\n", args.len());
    for a in args {
        out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    stream
        .write_all(out.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    if line.is_empty() {
        return Err("the connection closed without a reply".into());
    }
    Ok(line.trim_end().to_owned())
}
