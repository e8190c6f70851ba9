//! Gateway load benchmark (issue 14): what `seawall serve` adds to a call, in latency, throughput
//! and memory, measured against a baseline in the same run.
//!
//! Run: `cargo run --release --example gateway_load -- [--seconds 10] [--warmup 2]
//! [--connections 1,16] [--inflight 2000] [--hold 10] [--lib-inflight 10000] [--json]`
//!
//! **What runs.** Three parties, each on its own threads:
//!
//! - **Upstream** (this process, thread `upstream`): a fixed-answer Messages API on hyper
//!   (HTTP/1.1, keep-alive). Every request gets the same 200 JSON body with the headers the API
//!   sends (`request-id` and the twelve `anthropic-ratelimit-*` headers, with limits so high the
//!   governor never has to wait). No sleeps, except in the memory phase, where it holds every
//!   answer for `--hold` seconds.
//! - **Load generator** (this process, thread `loadgen`): closed loop over raw tokio TCP. Each of
//!   N keep-alive connections writes one pre-built request, reads the whole answer (httparse,
//!   `content-length`), and sends the next. Latency is recorded in an HDR histogram.
//! - **Gateway** (a child process by default, the same binary with `--role gateway`): a
//!   `seawall::gateway::Gateway` from `Config::from_toml` with the upstream's `base_url`, one
//!   model, one client token (so auth is measured), and large `[limits]` (so the governor's
//!   buckets do their work), on tokio's multi-thread runtime with one worker per core, as
//!   `seawall serve` runs. Logging is at `warn` (`--gateway-log`), so the per-call `info` log line
//!   of `seawall serve`'s default is *not* measured. `--in-process` runs it on its own runtime in
//!   this process instead.
//!
//! **Phases.**
//!
//! 1. `direct`: the generator against the upstream, at each `--connections` count: the floor,
//!    and the ceiling of generator plus upstream on this machine.
//! 2. `gateway`: the same through the gateway. `added` is gateway minus direct, same run.
//!    `chat`: the same question on the gateway's OpenAI face (`POST /v1/chat/completions`, the
//!    request an OpenAI SDK sends), translated both ways; `chat_p50_us` is its added latency.
//!    `nginx` (with `--nginx HOST:PORT`): the generator against an nginx answering a fixed body,
//!    a second floor from a server outside this process.
//!    Each phase runs `--warmup` seconds unrecorded, then `--seconds` recorded, on fresh
//!    connections.
//! 3. `memory`: a fresh gateway child; 1 s of 16-connection warm-up; its RSS at idle; then the
//!    upstream holds answers for `--hold` s and `--inflight` connections send one call each. RSS
//!    is sampled every 50 ms; `peak` is the largest sample taken while the upstream held all N
//!    calls. `after` is sampled `--settle` s after the calls were answered and the clients
//!    closed their connections; `--late S` adds a sample S s later (the upstream connection
//!    pool's idle timeout is 90 s). `KB/call` = (peak - idle) / N. `fds` counts the gateway's
//!    open descriptors (its client and upstream connections) at idle, peak, after and late.
//!    `--rounds R` repeats the burst R times in the same process (rows `gateway#2`, ...): a
//!    second peak no higher than the first means the memory kept after a burst is reused, not
//!    leaked.
//! 4. `library`: a child process with only the runtime (`seawall::core::Seawall`) and an
//!    in-process upstream that sleeps `--hold` s: `--lib-inflight` calls (`complete` in spawned
//!    tasks) in flight at once, same samples.
//!
//! **Reading it.** Latency and rps move with this 2-core machine's noise; compare rows of one
//! run. The `cpu` columns give CPU time per request (µs) of each party, from
//! `/proc/<pid>/task/*/schedstat`: the generator's and the upstream's own cost shows how much of
//! the 2 cores the gateway did not get; `irq` is interrupt work charged to no thread (mostly
//! this run's loopback traffic) and `other` is what the rest of the machine took meanwhile (a
//! run with `other` well above zero shared the machine). Pick phases with
//! `--phases latency,memory,library`; `--phases serve --seconds 60` only starts the upstream and
//! a gateway child and prints their addresses, for an outside generator such as wrk
//! (`benches/wrk_messages.lua`);
//! `--perf-out FILE` records `perf record -g` of the gateway during the recorded window of the
//! last gateway phase.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use seawall::config::Config;
use seawall::core::scripted::ok_response;
use seawall::core::{
    Attempt, Call, Limits, RetryPolicy, Seawall, Upstream, UpstreamFuture, UpstreamResponse,
};
use seawall::gateway::Gateway;

/// The model the gateway serves and every request asks for.
const MODEL: &str = "claude-sonnet-4-5";
/// The gateway's client token (sent as `x-api-key`).
const TOKEN: &str = "load-bench-client-token-0001";
/// The upstream key the gateway sends (the fake upstream ignores it).
const UPSTREAM_KEY: &str = "sk-ant-load-bench-upstream-0001";
/// A small Messages request, as an SDK sends it.
const REQUEST_BODY: &str = r#"{"model":"claude-sonnet-4-5","max_tokens":256,"messages":[{"role":"user","content":"Say hello in five words."}]}"#;
/// The upstream's fixed answer.
const ANSWER_BODY: &str = r#"{"id":"msg_01XFDUDYJgAACzvnptvVoYEL","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"Hello there, how are you?"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":14,"output_tokens":9}}"#;
/// Per-minute limits announced by the upstream and configured in the gateway: high enough
/// that no call ever waits for budget, so the buckets work but never throttle.
const RPM: u64 = 1_000_000_000;
const TPM: u64 = 1_000_000_000_000;

// ---------------------------------------------------------------------------------------------
// Arguments

#[derive(Clone, Debug)]
struct Args {
    role: String,
    seconds: f64,
    warmup: f64,
    connections: Vec<usize>,
    inflight: usize,
    hold: f64,
    settle: f64,
    late: f64,
    rounds: usize,
    lib_inflight: usize,
    phases: Vec<String>,
    in_process: bool,
    gateway_log: String,
    gen_threads: usize,
    upstream_threads: usize,
    json: bool,
    perf_out: Option<String>,
    upstream: Option<String>,
    /// A fixed-answer nginx to measure as a second direct baseline (`--nginx 127.0.0.1:8089`).
    nginx: Option<SocketAddr>,
    chat_first: bool,
}

fn parse_args() -> Args {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| -> Option<String> {
        argv.iter()
            .position(|a| a == name)
            .and_then(|i| argv.get(i + 1).cloned())
    };
    let num = |name: &str, default: f64| -> f64 {
        value(name).map_or(default, |v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number, got {v:?}"))
        })
    };
    let list = |name: &str, default: &str| -> Vec<String> {
        value(name)
            .unwrap_or_else(|| default.to_owned())
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    };
    Args {
        role: value("--role").unwrap_or_else(|| "main".into()),
        seconds: num("--seconds", 10.0),
        warmup: num("--warmup", 2.0),
        connections: list("--connections", "1,16")
            .iter()
            .map(|c| {
                c.parse()
                    .unwrap_or_else(|_| panic!("--connections takes numbers, got {c:?}"))
            })
            .collect(),
        inflight: num("--inflight", 2000.0) as usize,
        hold: num("--hold", 10.0),
        settle: num("--settle", 2.0),
        late: num("--late", 0.0),
        rounds: num("--rounds", 1.0) as usize,
        lib_inflight: num("--lib-inflight", 10_000.0) as usize,
        phases: list("--phases", "latency,memory,library"),
        in_process: argv.iter().any(|a| a == "--in-process"),
        gateway_log: value("--gateway-log").unwrap_or_else(|| "warn".into()),
        gen_threads: num("--gen-threads", 1.0) as usize,
        upstream_threads: num("--upstream-threads", 1.0) as usize,
        json: argv.iter().any(|a| a == "--json"),
        perf_out: value("--perf-out"),
        upstream: value("--upstream"),
        chat_first: argv.iter().any(|a| a == "--chat-first"),
        nginx: value("--nginx").map(|a| {
            a.parse()
                .unwrap_or_else(|_| panic!("--nginx takes HOST:PORT, got {a:?}"))
        }),
    }
}

fn main() {
    let args = parse_args();
    match args.role.as_str() {
        "gateway" => gateway_child(&args),
        "library" => library_child(&args),
        _ => coordinator(&args),
    }
}

// ---------------------------------------------------------------------------------------------
// The fixed-answer upstream

/// What the upstream shares with the coordinator.
struct UpstreamState {
    /// Hold every answer this long (ms); 0 answers at once.
    hold_ms: AtomicU64,
    /// Requests being held right now.
    held: AtomicUsize,
    /// Requests answered.
    served: AtomicU64,
    headers: HeaderMap,
    body: Bytes,
}

impl UpstreamState {
    fn new() -> Self {
        let mut headers = HeaderMap::new();
        let mut put = |name: &str, value: String| {
            headers.insert(
                HeaderName::from_bytes(name.as_bytes()).expect("a valid header name"),
                HeaderValue::from_str(&value).expect("a valid header value"),
            );
        };
        put("content-type", "application/json".into());
        put("request-id", "req_011CLoadBenchFixedAnswer0001".into());
        put("anthropic-organization-id", "load-bench-org".into());
        // A fixed reset in the future: the governor reads limit and remaining, not reset.
        let reset = "2099-01-01T00:00:00Z".to_owned();
        for (dim, limit) in [
            ("requests", RPM),
            ("tokens", TPM),
            ("input-tokens", TPM),
            ("output-tokens", TPM),
        ] {
            put(
                &format!("anthropic-ratelimit-{dim}-limit"),
                limit.to_string(),
            );
            put(
                &format!("anthropic-ratelimit-{dim}-remaining"),
                (limit - 1).to_string(),
            );
            put(&format!("anthropic-ratelimit-{dim}-reset"), reset.clone());
        }
        Self {
            hold_ms: AtomicU64::new(0),
            held: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            headers,
            body: Bytes::from_static(ANSWER_BODY.as_bytes()),
        }
    }
}

async fn answer(
    request: Request<Incoming>,
    state: Arc<UpstreamState>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    // Read the whole request, as a real server does (and so the connection can be reused).
    let _ = request.into_body().collect().await;
    let hold = state.hold_ms.load(Ordering::Relaxed);
    if hold > 0 {
        state.held.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(hold)).await;
        state.held.fetch_sub(1, Ordering::Relaxed);
    }
    state.served.fetch_add(1, Ordering::Relaxed);
    let mut response = Response::new(Full::new(state.body.clone()));
    *response.headers_mut() = state.headers.clone();
    Ok(response)
}

/// Start the upstream on its own runtime (`threads` workers named `upstream`); its address.
fn start_upstream(threads: usize, state: Arc<UpstreamState>) -> SocketAddr {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name("upstream")
        .enable_all()
        .build()
        .expect("the upstream's runtime");
    let listener = runtime
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .expect("the upstream binds on loopback");
    let addr = listener.local_addr().expect("the upstream's address");
    runtime.spawn(async move {
        let mut http = hyper::server::conn::http1::Builder::new();
        http.keep_alive(true);
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            let state = Arc::clone(&state);
            let service = hyper::service::service_fn(move |r| answer(r, Arc::clone(&state)));
            let conn = http.serve_connection(TokioIo::new(stream), service);
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
    });
    // The runtime lives as long as the process.
    std::mem::forget(runtime);
    addr
}

// ---------------------------------------------------------------------------------------------
// The gateway

fn gateway_toml(upstream_url: &str) -> String {
    format!(
        r#"
listen = "127.0.0.1:0"

[[upstreams]]
name = "fixed"
base_url = "{upstream_url}"
api_key_env = "LOAD_BENCH_KEY"

[[models]]
name = "{MODEL}"

[limits.fixed]
rpm = {RPM}
input_tpm = {TPM}
output_tpm = {TPM}

# The memory phase holds answers for 10 s from a model learned at ~0.1 ms: a learned timeout
# would cut them at 2 s (as it should in production) and measure retries, not calls in flight.
[retry]
learned_timeouts = false

[gateway]
tokens = ["{TOKEN}"]
"#
    )
}

/// Start the gateway for `upstream_url`, serving on loopback until `stop` resolves; its address
/// and the task that ends when it has drained.
async fn serve_gateway(
    upstream_url: &str,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let config = Config::from_toml(&gateway_toml(upstream_url)).expect("the benchmark's config");
    let gateway = Gateway::start_with_env(&config, |v| {
        (v == "LOAD_BENCH_KEY").then(|| UPSTREAM_KEY.to_owned())
    })
    .await
    .expect("the gateway starts");
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("the gateway binds on loopback");
    let addr = listener.local_addr().expect("the gateway's address");
    let served = tokio::spawn(async move {
        if let Err(e) = gateway.serve(listener, stop).await {
            eprintln!("gateway_load: the gateway stopped: {e}");
        }
    });
    (addr, served)
}

/// Logging as `seawall serve` sets it up (src/main.rs): `level` as the filter, the pretty
/// format without colours (stderr is not a terminal), through a non-blocking writer. The guard
/// flushes it: keep it until the process ends.
fn init_logging(level: &str) -> Option<tracing_appender::non_blocking::WorkerGuard> {
    if level == "off" {
        return None;
    }
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(level))
        .with_writer(writer)
        .with_ansi(false)
        .try_init();
    Some(guard)
}

/// `--role gateway`: serve until stdin closes (the coordinator ended or dropped us).
fn gateway_child(args: &Args) {
    let _log = init_logging(&args.gateway_log);
    let upstream = args
        .upstream
        .clone()
        .expect("--role gateway needs --upstream");
    // One worker per core, as `#[tokio::main]` gives `seawall serve`.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the gateway's runtime");
    runtime.block_on(async move {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let mut sink = String::new();
            while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
            let _ = stop_tx.send(());
        });
        let (addr, served) = serve_gateway(&upstream, async move {
            let _ = stop_rx.await;
        })
        .await;
        println!("listening {addr}");
        let _ = std::io::stdout().flush();
        // Serve until stdin closes and the gateway has drained.
        let _ = served.await;
    });
}

/// The gateway as the coordinator runs it: a child process, or threads of this one.
enum GatewayProc {
    Child(Child),
    InProcess,
}

impl GatewayProc {
    fn pid(&self) -> u32 {
        match self {
            Self::Child(c) => c.id(),
            Self::InProcess => std::process::id(),
        }
    }
}

impl Drop for GatewayProc {
    fn drop(&mut self) {
        if let Self::Child(c) = self {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn_gateway_child(args: &Args, upstream: SocketAddr) -> (GatewayProc, SocketAddr) {
    let exe = std::env::current_exe().expect("this example's path");
    // GATEWAY_LOAD_WRAP=heaptrack (or another wrapper) profiles the gateway child; its RSS
    // figures are then the wrapper's.
    let mut command = match std::env::var("GATEWAY_LOAD_WRAP") {
        Ok(wrapper) => {
            let mut c = Command::new(wrapper);
            c.arg(exe);
            c
        }
        Err(_) => Command::new(exe),
    };
    let mut child = command
        .args([
            "--role",
            "gateway",
            "--upstream",
            &format!("http://{upstream}"),
            "--gateway-log",
            &args.gateway_log,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(if args.gateway_log == "warn" || args.gateway_log == "off" {
            Stdio::inherit()
        } else {
            // A per-call log is written, as to a log file, but not to this terminal.
            Stdio::null()
        })
        .spawn()
        .expect("the gateway child starts");
    let stdout = child.stdout.take().expect("the child's stdout");
    let mut reader = BufReader::new(stdout);
    // A wrapper (GATEWAY_LOAD_WRAP) may say things first: skip to the child's own line.
    let mut line = String::new();
    let addr = loop {
        line.clear();
        let n = reader
            .read_line(&mut line)
            .expect("the gateway child says where it listens");
        if n == 0 {
            panic!("the gateway child ended before saying where it listens");
        }
        if let Some(a) = line.trim().strip_prefix("listening ") {
            break a
                .parse()
                .unwrap_or_else(|_| panic!("the gateway child said {line:?}"));
        }
    };
    (GatewayProc::Child(child), addr)
}

fn spawn_gateway_in_process(upstream: SocketAddr) -> (GatewayProc, SocketAddr) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("gateway-main".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .thread_name("gateway-wk")
                .enable_all()
                .build()
                .expect("the gateway's runtime");
            runtime.block_on(async move {
                let (addr, _served) =
                    serve_gateway(&format!("http://{upstream}"), std::future::pending()).await;
                let _ = tx.send(addr);
                std::future::pending::<()>().await;
            });
        })
        .expect("the gateway thread");
    let addr = rx.recv().expect("the in-process gateway starts");
    (GatewayProc::InProcess, addr)
}

// ---------------------------------------------------------------------------------------------
// The load generator

/// The same question on the OpenAI face.
const CHAT_BODY: &str = r#"{"model":"claude-sonnet-4-5","max_tokens":256,"messages":[{"role":"user","content":"Say hello in five words."}]}"#;

/// The request a phase sends: the Messages API's (`direct`, `gateway`, `nginx`) or the OpenAI
/// face's (`chat`: what an OpenAI SDK sends, with its bearer token).
fn request_bytes(addr: SocketAddr, target: &str) -> Arc<[u8]> {
    if target == "chat" {
        return format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
             authorization: Bearer {TOKEN}\r\naccept: application/json\r\n\
             content-length: {}\r\n\r\n{CHAT_BODY}",
            CHAT_BODY.len()
        )
        .into_bytes()
        .into();
    }
    format!(
        "POST /v1/messages HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         x-api-key: {TOKEN}\r\nanthropic-version: 2023-06-01\r\naccept: application/json\r\n\
         content-length: {}\r\n\r\n{REQUEST_BODY}",
        REQUEST_BODY.len()
    )
    .into_bytes()
    .into()
}

/// Read one whole response from `stream` into `buf`; its status. The bytes are consumed.
async fn read_response(stream: &mut TcpStream, buf: &mut BytesMut) -> Result<u16, String> {
    loop {
        let parsed = {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(buf) {
                Ok(httparse::Status::Complete(head)) => {
                    let length = response
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                        .and_then(|h| std::str::from_utf8(h.value).ok())
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .ok_or("a response without content-length")?;
                    Some((response.code.unwrap_or(0), head + length))
                }
                Ok(httparse::Status::Partial) => None,
                Err(e) => return Err(format!("a malformed response: {e}")),
            }
        };
        if let Some((status, total)) = parsed {
            while buf.len() < total {
                if stream
                    .read_buf(buf)
                    .await
                    .map_err(|e| format!("read: {e}"))?
                    == 0
                {
                    return Err("closed mid-response".into());
                }
            }
            buf.advance(total);
            return Ok(status);
        }
        if stream
            .read_buf(buf)
            .await
            .map_err(|e| format!("read: {e}"))?
            == 0
        {
            return Err("closed by the server".into());
        }
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000_000, 3).expect("histogram bounds")
}

/// What one connection (or a whole phase) saw.
struct Tally {
    /// Latency in ns of the requests that started inside the recorded window.
    latency: Histogram<u64>,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn new() -> Self {
        Self {
            latency: histogram(),
            ok: 0,
            errors: 0,
            first_error: None,
        }
    }

    fn error(&mut self, e: String) {
        self.errors += 1;
        self.first_error.get_or_insert(e);
    }

    fn merge(&mut self, other: Tally) {
        let _ = self.latency.add(&other.latency);
        self.ok += other.ok;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// One closed-loop connection: requests back to back until `until`; those started at or after
/// `record_from` are recorded.
async fn closed_loop(
    addr: SocketAddr,
    request: Arc<[u8]>,
    record_from: Instant,
    until: Instant,
) -> Tally {
    let mut tally = Tally::new();
    let mut stream = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => {
            tally.error(format!("connect: {e}"));
            return tally;
        }
    };
    let _ = stream.set_nodelay(true);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    loop {
        let started = Instant::now();
        if started >= until {
            break;
        }
        if let Err(e) = stream.write_all(&request).await {
            tally.error(format!("write: {e}"));
            break;
        }
        match read_response(&mut stream, &mut buf).await {
            // A wrong answer counts in the warm-up too: it means a misconfigured run.
            Ok(status) if status != 200 => tally.error(format!("status {status}")),
            Ok(_) if started >= record_from => {
                let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                tally.latency.saturating_record(ns.max(1));
                tally.ok += 1;
            }
            Ok(_) => {}
            Err(e) => {
                tally.error(e);
                break;
            }
        }
    }
    tally
}

/// CPU time (ns) of the threads of `pid`, by thread name.
fn cpu_by_thread(pid: u32) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let ns = std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        *out.entry(name.trim().to_owned()).or_default() += ns;
    }
    out
}

/// CPU time (ns) of each party: (gateway, generator, upstream), and the machine's busy and
/// total time (`/proc/stat` ticks) to tell how much the rest of the machine took.
#[derive(Clone, Copy, Default)]
struct Cpu {
    gateway: u64,
    generator: u64,
    upstream: u64,
    machine_busy: u64,
    machine_irq: u64,
    machine_total: u64,
}

/// The machine's (busy, irq + softirq, total) CPU ticks since boot, from the first line of
/// `/proc/stat`. Interrupt work (loopback packet delivery, mostly) is charged to no thread.
fn machine_ticks() -> (u64, u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().take(8).sum();
    // idle and iowait are the 4th and 5th fields.
    let field = |i: usize| fields.get(i).copied().unwrap_or(0);
    let idle = field(3) + field(4);
    (total.saturating_sub(idle), field(5) + field(6), total)
}

fn cpu_now(gateway: Option<&GatewayProc>) -> Cpu {
    let (machine_busy, machine_irq, machine_total) = machine_ticks();
    let mut cpu = Cpu {
        machine_busy,
        machine_irq,
        machine_total,
        ..Cpu::default()
    };
    for (name, ns) in cpu_by_thread(std::process::id()) {
        if name.starts_with("upstream") {
            cpu.upstream += ns;
        } else if name.starts_with("gateway") {
            cpu.gateway += ns;
        } else {
            cpu.generator += ns;
        }
    }
    if let Some(GatewayProc::Child(c)) = gateway {
        cpu.gateway += cpu_by_thread(c.id()).values().sum::<u64>();
    }
    cpu
}

/// One latency phase's result.
struct Phase {
    target: &'static str,
    connections: usize,
    seconds: f64,
    tally: Tally,
    /// CPU µs per recorded request: gateway, generator, upstream.
    cpu_per_request: [f64; 3],
    /// Cores busy on average: gateway, generator, upstream.
    cores: [f64; 3],
    /// Cores busy on average with interrupt work (irq + softirq: on an otherwise quiet machine,
    /// mostly the loopback traffic of this benchmark).
    irq_cores: f64,
    /// Cores busy on average with anything else (other processes, steal): a run with this well
    /// above zero shared the machine.
    other_cores: f64,
}

impl Phase {
    fn rps(&self) -> f64 {
        self.tally.ok as f64 / self.seconds
    }

    fn micros(&self, q: f64) -> f64 {
        self.tally.latency.value_at_quantile(q) as f64 / 1000.0
    }

    fn json(&self) -> Value {
        json!({
            "target": self.target,
            "connections": self.connections,
            "seconds": self.seconds,
            "requests": self.tally.ok,
            "errors": self.tally.errors,
            "first_error": self.tally.first_error,
            "rps": self.rps(),
            "p50_us": self.micros(0.5),
            "p99_us": self.micros(0.99),
            "p999_us": self.micros(0.999),
            "cpu_us_per_request": {
                "gateway": self.cpu_per_request[0],
                "generator": self.cpu_per_request[1],
                "upstream": self.cpu_per_request[2],
            },
            "cores": {
                "gateway": self.cores[0],
                "generator": self.cores[1],
                "upstream": self.cores[2],
                "irq": self.irq_cores,
                "other": self.other_cores,
            },
        })
    }
}

/// Run one closed-loop phase of `connections` against `addr`.
async fn run_phase(
    args: &Args,
    target: &'static str,
    addr: SocketAddr,
    connections: usize,
    gateway: Option<&GatewayProc>,
    perf_out: Option<&str>,
) -> Phase {
    let request = request_bytes(addr, target);
    let start = Instant::now();
    let record_from = start + Duration::from_secs_f64(args.warmup);
    let until = record_from + Duration::from_secs_f64(args.seconds);
    let tasks: Vec<_> = (0..connections)
        .map(|_| tokio::spawn(closed_loop(addr, Arc::clone(&request), record_from, until)))
        .collect();
    tokio::time::sleep_until(record_from.into()).await;
    let cpu_start = cpu_now(gateway);
    let perf = perf_out.map(|out| start_perf(out, gateway.map_or(0, GatewayProc::pid)));
    tokio::time::sleep_until(until.into()).await;
    let cpu_end = cpu_now(gateway);
    if let Some(perf) = perf {
        stop_perf(perf);
    }
    let mut tally = Tally::new();
    for t in tasks {
        tally.merge(t.await.expect("a load task"));
    }
    let n = tally.ok.max(1) as f64;
    let wall = args.seconds * 1e9;
    let spent = [
        cpu_end.gateway.saturating_sub(cpu_start.gateway),
        cpu_end.generator.saturating_sub(cpu_start.generator),
        cpu_end.upstream.saturating_sub(cpu_start.upstream),
    ];
    let cores = spent.map(|ns| ns as f64 / wall);
    let machine_cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let busy = cpu_end.machine_busy.saturating_sub(cpu_start.machine_busy) as f64;
    let total = cpu_end
        .machine_total
        .saturating_sub(cpu_start.machine_total) as f64;
    let irq = cpu_end.machine_irq.saturating_sub(cpu_start.machine_irq) as f64;
    let share = |ticks: f64| {
        if total > 0.0 {
            ticks / total * machine_cores
        } else {
            0.0
        }
    };
    let irq_cores = share(irq);
    Phase {
        target,
        connections,
        seconds: args.seconds,
        tally,
        cpu_per_request: spent.map(|ns| ns as f64 / 1000.0 / n),
        cores,
        irq_cores,
        other_cores: (share(busy) - irq_cores - cores.iter().sum::<f64>()).max(0.0),
    }
}

fn start_perf(out: &str, pid: u32) -> Child {
    Command::new("perf")
        .args(["record", "-g", "-o", out, "-p", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("perf starts (apt-get install linux-perf)")
}

fn stop_perf(mut perf: Child) {
    let _ = Command::new("kill")
        .args(["-INT", &perf.id().to_string()])
        .status();
    let _ = perf.wait();
}

// ---------------------------------------------------------------------------------------------
// Memory

/// VmRSS of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Open file descriptors of `pid` (its connections, mostly).
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// RSS samples of one memory phase.
struct Memory {
    what: &'static str,
    /// Which burst of `--rounds` (1-based); `idle` is always the one before the first.
    round: usize,
    inflight: usize,
    fresh_kib: u64,
    idle_kib: u64,
    peak_kib: u64,
    /// Calls held by the upstream at the peak sample.
    held_at_peak: usize,
    answered_kib: u64,
    after_kib: u64,
    /// RSS `--late` s after the last answer (when asked for).
    late_kib: Option<u64>,
    /// Open descriptors at idle, at the peak, after and late (gateway only).
    fds: [usize; 4],
    errors: usize,
}

impl Memory {
    fn per_call_kib(&self) -> f64 {
        self.peak_kib.saturating_sub(self.idle_kib) as f64 / self.held_at_peak.max(1) as f64
    }

    fn after_ratio(&self) -> f64 {
        self.after_kib as f64 / self.idle_kib.max(1) as f64
    }

    fn json(&self) -> Value {
        json!({
            "what": self.what,
            "round": self.round,
            "inflight": self.inflight,
            "held_at_peak": self.held_at_peak,
            "fresh_kib": self.fresh_kib,
            "idle_kib": self.idle_kib,
            "peak_kib": self.peak_kib,
            "answered_kib": self.answered_kib,
            "after_kib": self.after_kib,
            "late_kib": self.late_kib,
            "fds": {
                "idle": self.fds[0],
                "peak": self.fds[1],
                "after": self.fds[2],
                "late": self.fds[3],
            },
            "kib_per_call": self.per_call_kib(),
            "after_over_idle": self.after_ratio(),
            "errors": self.errors,
        })
    }

    fn from_json(v: &Value) -> Self {
        let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        Self {
            what: "library",
            round: n("round") as usize,
            inflight: n("inflight") as usize,
            fresh_kib: n("fresh_kib"),
            idle_kib: n("idle_kib"),
            peak_kib: n("peak_kib"),
            held_at_peak: n("held_at_peak") as usize,
            answered_kib: n("answered_kib"),
            after_kib: n("after_kib"),
            late_kib: v.get("late_kib").and_then(Value::as_u64),
            fds: [0; 4],
            errors: n("errors") as usize,
        }
    }
}

/// One call on its own connection: counted in `done` (and `ok` when answered 200) once
/// answered; the connection stays open until `close` turns true.
async fn one_held_call(
    addr: SocketAddr,
    request: Arc<[u8]>,
    done: Arc<AtomicUsize>,
    ok: Arc<AtomicUsize>,
    mut close: watch::Receiver<bool>,
) {
    let mut stream = TcpStream::connect(addr).await.ok();
    let mut answered = false;
    if let Some(s) = stream.as_mut() {
        let mut buf = BytesMut::with_capacity(4096);
        answered = s.write_all(&request).await.is_ok()
            && matches!(read_response(s, &mut buf).await, Ok(200));
    }
    if answered {
        ok.fetch_add(1, Ordering::Relaxed);
    }
    done.fetch_add(1, Ordering::Relaxed);
    let _ = close.wait_for(|c| *c).await;
    drop(stream);
}

/// Sample `rss` every 50 ms until `done` reaches `n`; the largest sample taken while `held`
/// was at its highest, and that count.
async fn sample_peak(
    n: usize,
    done: &AtomicUsize,
    held: impl Fn() -> usize,
    rss: impl Fn() -> u64,
) -> (u64, usize) {
    let (mut peak, mut peak_held) = (0, 0);
    while done.load(Ordering::Relaxed) < n {
        let h = held();
        let r = rss();
        if h > peak_held || (h == peak_held && r > peak) {
            (peak, peak_held) = (r, h);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (peak, peak_held)
}

/// The memory phase through a fresh gateway child.
async fn gateway_memory(args: &Args, upstream: SocketAddr, state: &UpstreamState) -> Vec<Memory> {
    let (gateway, addr) = spawn_gateway_child(args, upstream);
    let pid = gateway.pid();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fresh_kib = rss_kib(pid);
    // Warm-up, so lazily built state (pools, metrics, caches) counts as idle, not per call.
    let warm = Args {
        warmup: 0.0,
        seconds: 1.0,
        ..args.clone()
    };
    let _ = run_phase(&warm, "warm-up", addr, 16, None, None).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_kib = rss_kib(pid);
    let idle_fds = fds(pid);
    let mut rounds = Vec::new();
    for round in 1..=args.rounds.max(1) {
        state
            .hold_ms
            .store((args.hold * 1000.0) as u64, Ordering::Relaxed);
        let request = request_bytes(addr, "gateway");
        let (close_tx, close_rx) = watch::channel(false);
        let done = Arc::new(AtomicUsize::new(0));
        let ok = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..args.inflight)
            .map(|_| {
                tokio::spawn(one_held_call(
                    addr,
                    Arc::clone(&request),
                    Arc::clone(&done),
                    Arc::clone(&ok),
                    close_rx.clone(),
                ))
            })
            .collect();
        let peak_fds = AtomicUsize::new(0);
        let (peak_kib, held_at_peak) = sample_peak(
            args.inflight,
            &done,
            || state.held.load(Ordering::Relaxed),
            || {
                peak_fds.fetch_max(fds(pid), Ordering::Relaxed);
                rss_kib(pid)
            },
        )
        .await;
        let answered_kib = rss_kib(pid);
        state.hold_ms.store(0, Ordering::Relaxed);
        let _ = close_tx.send(true);
        for t in tasks {
            let _ = t.await;
        }
        tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
        let after_kib = rss_kib(pid);
        let after_fds = fds(pid);
        let (late_kib, late_fds) = if args.late > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(args.late)).await;
            (Some(rss_kib(pid)), fds(pid))
        } else {
            (None, 0)
        };
        rounds.push(Memory {
            what: "gateway",
            round,
            inflight: args.inflight,
            fresh_kib,
            idle_kib,
            peak_kib,
            held_at_peak,
            answered_kib,
            after_kib,
            late_kib,
            fds: [idle_fds, peak_fds.into_inner(), after_fds, late_fds],
            errors: args.inflight - ok.load(Ordering::Relaxed),
        });
    }
    drop(gateway);
    rounds
}

// ---------------------------------------------------------------------------------------------
// The library alone

/// An in-process upstream that answers after `hold_ms` (at once when 0).
struct Held {
    hold_ms: Arc<AtomicU64>,
    held: Arc<AtomicUsize>,
    response: UpstreamResponse,
}

impl Upstream for Held {
    fn send(&self, _attempt: Attempt) -> UpstreamFuture<'_> {
        let response = self.response.clone();
        let hold = self.hold_ms.load(Ordering::Relaxed);
        let held = Arc::clone(&self.held);
        Box::pin(async move {
            if hold > 0 {
                held.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(hold)).await;
                held.fetch_sub(1, Ordering::Relaxed);
            }
            Ok(response)
        })
    }
}

fn library_call() -> Call {
    Call::new(MODEL, 256)
        .user("Say hello in five words.")
        .timeout(Duration::from_secs(300))
}

/// `--role library`: the runtime alone with `--lib-inflight` calls held by the upstream; prints
/// one JSON line with the RSS samples.
fn library_child(args: &Args) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the library's runtime");
    let pid = std::process::id();
    let rounds = runtime.block_on(async {
        let hold_ms = Arc::new(AtomicU64::new(0));
        let held = Arc::new(AtomicUsize::new(0));
        let upstream = Held {
            hold_ms: Arc::clone(&hold_ms),
            held: Arc::clone(&held),
            response: ok_response(MODEL, "Hello there, how are you?"),
        };
        let big = Limits {
            requests_per_minute: Some(RPM),
            input_tokens_per_minute: Some(TPM),
            output_tokens_per_minute: Some(TPM),
        };
        let seawall = Seawall::builder()
            .upstream("held", upstream)
            .chain(MODEL, [MODEL])
            .limits("held", big)
            // As in the gateway's config: hold calls for `--hold`, do not cut them at a
            // timeout learned from the ~0.1 ms warm-up.
            .retry_policy(RetryPolicy {
                learned_timeouts: false,
                ..RetryPolicy::default()
            })
            .spawn()
            .await
            .expect("the runtime starts");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let fresh_kib = rss_kib(pid);
        // Warm-up: 16 callers for 1 s.
        let until = Instant::now() + Duration::from_secs(1);
        let warm: Vec<_> = (0..16)
            .map(|_| {
                let seawall = seawall.clone();
                tokio::spawn(async move {
                    while Instant::now() < until {
                        let _ = seawall.complete(library_call()).await;
                    }
                })
            })
            .collect();
        for w in warm {
            let _ = w.await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let idle_kib = rss_kib(pid);
        let mut rounds = Vec::new();
        for round in 1..=args.rounds.max(1) {
            hold_ms.store((args.hold * 1000.0) as u64, Ordering::Relaxed);
            let n = args.lib_inflight;
            let done = Arc::new(AtomicUsize::new(0));
            let ok = Arc::new(AtomicUsize::new(0));
            for _ in 0..n {
                let (seawall, done, ok) = (seawall.clone(), Arc::clone(&done), Arc::clone(&ok));
                tokio::spawn(async move {
                    if seawall.complete(library_call()).await.is_ok() {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                });
            }
            let (peak_kib, held_at_peak) =
                sample_peak(n, &done, || held.load(Ordering::Relaxed), || rss_kib(pid)).await;
            let answered_kib = rss_kib(pid);
            hold_ms.store(0, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
            let after_kib = rss_kib(pid);
            let late_kib = if args.late > 0.0 {
                tokio::time::sleep(Duration::from_secs_f64(args.late)).await;
                Some(rss_kib(pid))
            } else {
                None
            };
            rounds.push(Memory {
                what: "library",
                round,
                inflight: n,
                fresh_kib,
                idle_kib,
                peak_kib,
                held_at_peak,
                answered_kib,
                after_kib,
                late_kib,
                fds: [0; 4],
                errors: n - ok.load(Ordering::Relaxed),
            });
        }
        rounds
    });
    for memory in rounds {
        println!("{}", memory.json());
    }
}

fn library_memory(args: &Args) -> Vec<Memory> {
    let exe = std::env::current_exe().expect("this example's path");
    let output = Command::new(exe)
        .args([
            "--role",
            "library",
            "--lib-inflight",
            &args.lib_inflight.to_string(),
            "--hold",
            &args.hold.to_string(),
            "--settle",
            &args.settle.to_string(),
            "--late",
            &args.late.to_string(),
            "--rounds",
            &args.rounds.to_string(),
        ])
        .stderr(Stdio::inherit())
        .output()
        .expect("the library child runs");
    let text = String::from_utf8_lossy(&output.stdout);
    let rounds: Vec<Memory> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| Memory::from_json(&v))
        .collect();
    assert!(
        !rounds.is_empty(),
        "the library child printed no result: {text:?}"
    );
    rounds
}

// ---------------------------------------------------------------------------------------------
// The coordinator

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn coordinator(args: &Args) {
    let state = Arc::new(UpstreamState::new());
    let upstream = start_upstream(args.upstream_threads, Arc::clone(&state));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.gen_threads.max(1))
        .thread_name("loadgen")
        .enable_all()
        .build()
        .expect("the generator's runtime");
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mode = if args.in_process {
        "in-process"
    } else {
        "child process"
    };
    if !args.json {
        println!(
            "gateway_load: {cores} cores ({}); gateway as a {mode}, log {}; {} s recorded after \
             {} s warm-up per phase; generator {} thread(s), upstream {} thread(s)",
            cpu_model(),
            args.gateway_log,
            args.seconds,
            args.warmup,
            args.gen_threads,
            args.upstream_threads
        );
    }
    let has = |p: &str| args.phases.iter().any(|x| x == p);
    let (phases, memory) = runtime.block_on(async {
        let mut phases = Vec::new();
        let mut memory = Vec::new();
        if has("serve") {
            // For an outside load generator (wrk): the upstream and a gateway child, for
            // `--seconds`.
            let (gateway, addr) = spawn_gateway_child(args, upstream);
            println!(
                "upstream http://{upstream}  gateway http://{addr} (pid {})  for {} s",
                gateway.pid(),
                args.seconds
            );
            let _ = std::io::stdout().flush();
            tokio::time::sleep(Duration::from_secs_f64(args.seconds)).await;
        }
        if has("latency") {
            let (gateway, addr) = if args.in_process {
                spawn_gateway_in_process(upstream)
            } else {
                spawn_gateway_child(args, upstream)
            };
            for &c in &args.connections {
                let p = run_phase(args, "direct", upstream, c, Some(&gateway), None).await;
                progress(args, &p);
                phases.push(p);
            }
            if let Some(nginx) = args.nginx {
                for &c in &args.connections {
                    let p = run_phase(args, "nginx", nginx, c, Some(&gateway), None).await;
                    progress(args, &p);
                    phases.push(p);
                }
            }
            let last = args.connections.last().copied();
            // `--chat-first` swaps the faces' order, to tell an order effect from a cost.
            let faces = if args.chat_first {
                ["chat", "gateway"]
            } else {
                ["gateway", "chat"]
            };
            for face in faces {
                for &c in &args.connections {
                    let perf = args
                        .perf_out
                        .as_deref()
                        .filter(|_| Some(c) == last && face == "gateway");
                    let p = run_phase(args, face, addr, c, Some(&gateway), perf).await;
                    progress(args, &p);
                    phases.push(p);
                }
            }
        }
        if has("memory") {
            memory.extend(gateway_memory(args, upstream, &state).await);
        }
        if has("library") {
            memory.extend(library_memory(args));
        }
        (phases, memory)
    });
    report(args, cores, &phases, &memory);
}

fn progress(args: &Args, p: &Phase) {
    if !args.json {
        eprintln!(
            "  {} x{}: {:.0} rps, p50 {:.1} us",
            p.target,
            p.connections,
            p.rps(),
            p.micros(0.5)
        );
    }
}

fn report(args: &Args, cores: usize, phases: &[Phase], memory: &[Memory]) {
    let added: Vec<Value> = args
        .connections
        .iter()
        .filter_map(|&c| {
            let find = |t: &str| phases.iter().find(|p| p.target == t && p.connections == c);
            let (d, g) = (find("direct")?, find("gateway")?);
            let mut row = json!({
                "connections": c,
                "p50_us": g.micros(0.5) - d.micros(0.5),
                "p99_us": g.micros(0.99) - d.micros(0.99),
                "p999_us": g.micros(0.999) - d.micros(0.999),
                "direct_rps": d.rps(),
                "gateway_rps": g.rps(),
            });
            if let Some(chat) = find("chat") {
                row["chat_p50_us"] = json!(chat.micros(0.5) - d.micros(0.5));
                row["chat_p99_us"] = json!(chat.micros(0.99) - d.micros(0.99));
                row["chat_rps"] = json!(chat.rps());
            }
            if let Some(n) = find("nginx") {
                row["nginx_p50_us"] = json!(n.micros(0.5));
                row["nginx_rps"] = json!(n.rps());
            }
            Some(row)
        })
        .collect();
    if args.json {
        let out = json!({
            "cores": cores,
            "cpu": cpu_model(),
            "gateway": if args.in_process { "in-process" } else { "child process" },
            "gateway_log": args.gateway_log,
            "seconds": args.seconds,
            "warmup": args.warmup,
            "phases": phases.iter().map(Phase::json).collect::<Vec<_>>(),
            "added": added,
            "memory": memory.iter().map(Memory::json).collect::<Vec<_>>(),
        });
        println!("{out}");
        return;
    }
    if !phases.is_empty() {
        println!();
        println!(
            "{:<8} {:>5} {:>9} {:>9} {:>9} {:>9} {:>6}   {:>20}   {:>24}",
            "target",
            "conns",
            "rps",
            "p50 us",
            "p99 us",
            "p99.9 us",
            "errors",
            "cpu us/req gw/gen/up",
            "cores gw/gen/up/irq/other"
        );
        for p in phases {
            println!(
                "{:<8} {:>5} {:>9.0} {:>9.1} {:>9.1} {:>9.1} {:>6}   {:>6.1}/{:>6.1}/{:>6.1}   {:>4.2}/{:>4.2}/{:>4.2}/{:>4.2}/{:>4.2}",
                p.target,
                p.connections,
                p.rps(),
                p.micros(0.5),
                p.micros(0.99),
                p.micros(0.999),
                p.tally.errors,
                p.cpu_per_request[0],
                p.cpu_per_request[1],
                p.cpu_per_request[2],
                p.cores[0],
                p.cores[1],
                p.cores[2],
                p.irq_cores,
                p.other_cores,
            );
            if let Some(e) = &p.tally.first_error {
                println!("         first error: {e}");
            }
        }
        for a in &added {
            let f = |k: &str| a.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
            println!(
                "added by the gateway at {} connection(s): p50 {:+.1} us, p99 {:+.1} us, p99.9 {:+.1} us; \
                 rps {:.0} -> {:.0}",
                a.get("connections").and_then(Value::as_u64).unwrap_or(0),
                f("p50_us"),
                f("p99_us"),
                f("p999_us"),
                f("direct_rps"),
                f("gateway_rps"),
            );
        }
    }
    if !memory.is_empty() {
        println!();
        println!(
            "{:<8} {:>9} {:>6} {:>9} {:>8} {:>8} {:>9} {:>11} {:>9} {:>10} {:>8} {:>22} {:>6}",
            "memory",
            "in flight",
            "held",
            "fresh MB",
            "idle MB",
            "peak MB",
            "KB/call",
            "answered MB",
            "after MB",
            "after/idle",
            "late MB",
            "fds idle/peak/after/late",
            "errors"
        );
        let mb = |k: u64| k as f64 / 1024.0;
        for m in memory {
            let late = m
                .late_kib
                .map_or_else(|| "-".to_owned(), |k| format!("{:.1}", mb(k)));
            let fds = if m.fds[1] == 0 {
                "-".to_owned()
            } else {
                format!("{}/{}/{}/{}", m.fds[0], m.fds[1], m.fds[2], m.fds[3])
            };
            let what = if m.round > 1 {
                format!("{}#{}", m.what, m.round)
            } else {
                m.what.to_owned()
            };
            println!(
                "{:<8} {:>9} {:>6} {:>9.1} {:>8.1} {:>8.1} {:>9.1} {:>11.1} {:>9.1} {:>10.2} {:>8} {:>22} {:>6}",
                what,
                m.inflight,
                m.held_at_peak,
                mb(m.fresh_kib),
                mb(m.idle_kib),
                mb(m.peak_kib),
                m.per_call_kib(),
                mb(m.answered_kib),
                mb(m.after_kib),
                m.after_ratio(),
                late,
                fds,
                m.errors,
            );
        }
        println!(
            "(hold {} s; KB/call = (peak - idle) / held; after: {} s after the last answer, \
             client connections closed; late: --late {} s later)",
            args.hold, args.settle, args.late
        );
    }
}
