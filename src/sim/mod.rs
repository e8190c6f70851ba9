//! A fault-injecting simulator of the Anthropic Messages API, and of Claude on AWS Bedrock and
//! Google Vertex AI (and an OpenAI-compatible chat completions face), over real HTTP on loopback.
//!
//! Point any client at it (seawall, the official SDKs, curl) to see how an agent behaves
//! through rate limits, 529 overloads, resets, hangs, cut-off bodies and streams that break
//! half-way, deterministically under a seed. seawall's own integration tests, demo and
//! benchmarks run against it.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use seawall::sim::{Scenario, Sim};
//!
//! let scenario = Scenario::from_toml(r#"
//!     [[models]]
//!     name = "claude-sonnet-4-5"
//!     latency = "40ms"
//!     [[models.faults]]
//!     kind = "status"
//!     status = 529
//!     until = "2s"
//! "#)?;
//! let sim = Sim::start(scenario, "127.0.0.1:0".parse()?).await?;
//! println!("point ANTHROPIC_BASE_URL at {}", sim.base_url());
//! // ... run the agent ...
//! for entry in sim.log() {
//!     println!("{} {} {:?}", entry.seq, entry.outcome, entry.status);
//! }
//! sim.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Endpoints
//!
//! | endpoint | |
//! |---|---|
//! | `POST /v1/messages` | JSON, or SSE with `"stream": true` |
//! | `POST /v1/messages/count_tokens` | `{"input_tokens": N}`; never faulted, rate-limited or delayed |
//! | `POST /v1/chat/completions` | OpenAI shape, non-streaming only (`stream: true` gets a 400 saying so) |
//! | `POST /model/{modelId}/invoke` | Bedrock `InvokeModel`: the Messages answer, `x-amzn-RequestId`, `x-amzn-bedrock-{input,output}-token-count` |
//! | `POST /model/{modelId}/invoke-with-response-stream` | Bedrock's stream: `application/vnd.amazon.eventstream` frames (below) |
//! | `POST /model/{modelId}/count-tokens` | Bedrock `CountTokens` of `input.invokeModel.body` (base64): `{"inputTokens": N}` |
//! | `POST /v1/projects/{p}/locations/{r}/publishers/anthropic/models/{model}:rawPredict` | Vertex: the Messages answer |
//! | `POST .../models/{model}:streamRawPredict` | Vertex: SSE, as `/v1/messages` streams |
//! | `POST .../models/count-tokens:rawPredict` | Vertex's counter (the body names the model): `{"input_tokens": N}` |
//! | `POST /_sim/reset` | clock, sequence numbers, log, counts and buckets back to zero |
//! | `PUT /_sim/scenario` | replace the scenario live (TOML if the content-type mentions `toml`, else JSON); keeps the clock |
//! | `GET /_sim/log` | the log, a JSON array of [`LogEntry`] |
//!
//! `/_sim/` calls need no key and are not logged. Keys are accepted as `x-api-key` or
//! `Authorization: Bearer` (the chat completions face reads Bearer only). `anthropic-version`
//! is not required (the real API requires it).
//!
//! # Wires
//!
//! One engine serves every wire: a request is routed, then authenticated, validated, faulted,
//! limited and answered by the same steps, and only the shapes differ. A scenario model is named
//! by the body's `model` on the Anthropic and OpenAI wires and by the (percent-decoded) path on
//! Bedrock and Vertex, so a Bedrock id such as `us.anthropic.claude-sonnet-4-5-20250929-v1:0`
//! is a model name like any other. A model is reachable over every wire, with the same faults,
//! limits and counts whichever one a request comes by, unless its `wires` list restricts it
//! (`wires = ["bedrock"]`: the other wires get a 404), which is how one scenario gives the
//! same model separate capacity on two platforms (two entries, two names).
//!
//! - **Bedrock.** Credentials: an `Authorization: AWS4-HMAC-SHA256 Credential=AKID/...,
//!   Signature=...` header and `x-amz-date` (else 403 `MissingAuthenticationTokenException` /
//!   `IncompleteSignatureException`); the signature is not verified (the simulator stands in
//!   for capacity, not for authentication); `keys` and `revoked_keys` hold access key ids
//!   (unknown: `UnrecognizedClientException`, revoked: `ExpiredTokenException`). Body: no
//!   `model`, no `stream`, `anthropic_version: "bedrock-2023-05-31"` (else 400
//!   `ValidationException`). Errors: the status Bedrock sends, `x-amzn-ErrorType` and
//!   `{"message"}`, never a `retry-after`: 429 `ThrottlingException` (also the limiter's
//!   refusals), 503 `ServiceUnavailableException` (for 503 and 529), 500
//!   `InternalServerException`, 400 `ValidationException`, 404 `ResourceNotFoundException`
//!   (an unknown model), 408 `ModelTimeoutException` (for 408 and 504). Streams: one frame per
//!   Anthropic event, `:message-type: event`, `:event-type: chunk`, payload `{"bytes": base64 of
//!   the event JSON}`; `message_stop` carries `amazon-bedrock-invocationMetrics`; a
//!   `mid_stream_error` is an `exception` frame whose `:exception-type` follows its status
//!   (429 `throttlingException`, 503 `serviceUnavailableException`, 529 and others
//!   `modelStreamErrorException`).
//! - **Vertex.** Credentials: `Authorization: Bearer <any non-empty token>` (else 401 in
//!   Google's shape, `UNAUTHENTICATED`). Body: no `model` (the path names it; the counter's body
//!   does), `anthropic_version: "vertex-2023-10-16"`; `stream` may be sent, the method decides.
//!   Errors: the platform's in Google's shape `{"error": {"code", "message", "status"}}`, no
//!   `retry-after` (429 `RESOURCE_EXHAUSTED`, 503 `UNAVAILABLE`, 500 `INTERNAL`, 504
//!   `DEADLINE_EXCEEDED`, 401, 403, 404), the model's own in Anthropic's shape, as Vertex passes
//!   them through (529 `overloaded_error`, 400 `invalid_request_error`); streams and their
//!   errors are the Anthropic API's SSE.
//!
//! # Order of checks
//!
//! Authentication (401; Bedrock 403), body validation (400), model (404), then the model's faults in order,
//! then the rate limits (429), then the answer. `status`, `reset` and `hang` faults answer
//! before the limits are consulted and take nothing from them; `slow_first_byte`, `truncated`
//! and `mid_stream_error` change how the admitted answer (or the 429) is delivered.
//!
//! # An independent check of the runtime
//!
//! The simulator keeps its own truth: its rate limiter, its token count and its random
//! generator are written here from the API's documentation and share no code with the runtime
//! (`seawall-actors`) they are used to test. A runtime bug in its buckets or its estimates
//! therefore shows up as upstream 429s in the chaos suite instead of being reproduced by the
//! simulator. (Bodies are still validated with the runtime's [`crate::core::Call`] rules, so a
//! body one accepts is one the other accepts.)
//!
//! # Tokens and limits
//!
//! Input tokens are the simulator's own count ([`estimate_input_tokens`]: the text the model
//! reads, four bytes a token, plus three tokens per message), never more than the runtime's
//! estimate, so a runtime that reserves by its estimate and settles with the reported usage
//! stays within the simulator's limits. An answer has `min(max_tokens, output_tokens)` words,
//! one token each. Limits are continuously refilled token buckets, one set per model (the API
//! limits each model class apart) shared by every key (one organization): capacity is the
//! per-minute limit, refilled at a sixtieth of it per second, starting full. A request is
//! admitted only if requests, input tokens and the output tokens it will generate all fit; a
//! refused one takes nothing and gets a `retry-after` of the whole seconds, rounded up, until
//! it would fit (or `x-should-retry: false` when it is larger than a limit). Output is charged
//! as produced: a stream cut by a `mid_stream_error` gets back the tokens it never sent.
//!
//! # Clock and randomness
//!
//! Sim time is the wall-clock time since start or the last reset; fault windows are on it.
//! Each request has a sequence number (0, 1, ... since start or reset) and its draws (one per
//! candidate fault, then the latency jitter) come from the splitmix64 generator seeded with
//! `seed ^ seq` (the top 53 bits of each output as a float in `[0, 1)`), so the same seed and
//! the same request sequence give the same outcomes.

mod engine;
mod limiter;
mod rng;
mod scenario;
mod server;
mod tokens;
mod wire;

use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use scenario::{
    Fault, FaultKind, ModelSpec, RateLimits, Scenario, ScenarioError, Wire, MAX_OUTPUT_TOKENS,
};
pub use server::{MAX_BODY, MAX_HEAD};

/// How many log entries the simulator keeps (the most recent); [`SimHandle::count`] stays
/// exact beyond it.
pub const LOG_CAPACITY: usize = engine::LOG_CAPACITY;

/// One request the simulator saw (control calls under `/_sim/` are not logged).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Sequence number since start or reset: 0, 1, 2, ...; seeds the request's random draws.
    pub seq: u64,
    /// Sim time at arrival, in milliseconds since start or reset.
    pub at_ms: u64,
    /// The request path, without query string.
    pub path: String,
    /// The model named in the body, if it could be read.
    pub model: Option<String>,
    /// The last four characters of the key (empty for keys shorter than 12 characters, the rule
    /// of [`crate::ApiKey::tail`]); `None` when no key was sent. Never the key.
    pub key_tail: Option<String>,
    /// `x-stainless-retry-count`, if sent and numeric.
    pub retry_count: Option<u32>,
    /// `idempotency-key`, if sent.
    pub idempotency_key: Option<String>,
    /// Whether the body asked for a stream.
    pub stream: bool,
    /// The HTTP status sent; `None` when no complete answer was (reset, hang, truncated).
    pub status: Option<u16>,
    /// What happened: `ok`, `status`, `reset`, `hang`, `truncated`, `slow_first_byte`,
    /// `mid_stream_error`, `rate_limited`, `unauthenticated`, `invalid_request`,
    /// `unknown_model`, `unknown_path`, `method_not_allowed`, `request_too_large`,
    /// `length_required`.
    pub outcome: String,
    /// The `request-id` the answer carries (also on a truncated answer's head); a reset or a
    /// hang sends none, but the id is still recorded here.
    pub request_id: Option<String>,
}

/// Why the simulator could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// The address is not a loopback address: the simulator accepts any key and must never be
    /// reachable from another machine.
    #[error("the simulator only listens on loopback (127.0.0.0/8 or ::1), not on {0}")]
    NotLoopback(SocketAddr),
    /// Binding the listener failed (port in use, permissions).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The scenario is not valid.
    #[error("invalid scenario: {0}")]
    Scenario(#[from] ScenarioError),
}

/// Starts simulators.
#[derive(Debug)]
pub struct Sim;

impl Sim {
    /// Validate `scenario`, listen on `addr` (loopback only; port 0 picks a free port) and
    /// serve in the background on the current tokio runtime. Ready when this returns.
    ///
    /// # Errors
    ///
    /// [`SimError::NotLoopback`], [`SimError::Bind`] or [`SimError::Scenario`].
    pub async fn start(scenario: Scenario, addr: SocketAddr) -> Result<SimHandle, SimError> {
        if !addr.ip().is_loopback() {
            return Err(SimError::NotLoopback(addr));
        }
        scenario.validate()?;
        let bind_error = |source| SimError::Bind { addr, source };
        let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
        let local = listener.local_addr().map_err(bind_error)?;
        let engine = Arc::new(engine::Engine::new(scenario));
        let (stop_tx, stop_rx) = watch::channel(false);
        let (done_tx, done_rx) = watch::channel(false);
        tokio::spawn(server::accept_loop(
            listener,
            Arc::clone(&engine),
            stop_rx,
            done_tx,
        ));
        Ok(SimHandle {
            inner: Arc::new(Inner {
                addr: local,
                engine,
                stop: stop_tx,
                done: done_rx,
            }),
        })
    }
}

struct Inner {
    addr: SocketAddr,
    engine: Arc<engine::Engine>,
    stop: watch::Sender<bool>,
    done: watch::Receiver<bool>,
}

/// A running simulator. Clones share it.
///
/// The simulator runs until [`SimHandle::shutdown`], or until the last handle is dropped (then
/// it stops on its own, closing every connection), or until its tokio runtime ends.
#[derive(Clone)]
pub struct SimHandle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimHandle")
            .field("addr", &self.inner.addr)
            .finish_non_exhaustive()
    }
}

impl SimHandle {
    /// The address it listens on (with the real port when started on port 0).
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// `http://ADDR`, the base URL for clients (`/v1/messages` is appended by them).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// Every logged request since start or reset (the most recent [`LOG_CAPACITY`]), oldest
    /// first.
    pub fn log(&self) -> Vec<LogEntry> {
        self.inner.engine.log()
    }

    /// Requests logged for `model` since start or reset (exact even past [`LOG_CAPACITY`]).
    pub fn count(&self, model: &str) -> usize {
        self.inner.engine.count(model)
    }

    /// Back to time zero: clock, sequence numbers, log, counts and buckets (full again).
    pub fn reset(&self) {
        self.inner.engine.reset();
    }

    /// The scenario in force.
    pub fn scenario(&self) -> Scenario {
        self.inner.engine.scenario()
    }

    /// Replace the scenario live. The clock, sequence numbers and log go on; models whose limits
    /// are unchanged keep their bucket levels, others start full. Requests already decided
    /// finish as decided.
    ///
    /// # Errors
    ///
    /// The [`ScenarioError`] of an invalid scenario (the old one stays in force).
    pub fn set_scenario(&self, scenario: Scenario) -> Result<(), ScenarioError> {
        self.inner.engine.set_scenario(scenario)
    }

    /// Stop accepting, close every connection (hanging ones included) and wait until they are
    /// closed.
    pub async fn shutdown(self) {
        self.inner.stop.send_replace(true);
        let mut done = self.inner.done.clone();
        // An error means the server task is already gone (its runtime ended): nothing to wait for.
        let _ = done.wait_for(|d| *d).await;
    }
}

/// Input tokens of a Messages API (or chat completions) body, by the simulator's own count,
/// independent of the runtime's estimate. The simulator counts with this very function, for
/// `usage.input_tokens` (`prompt_tokens`), `count_tokens` and the input-token bucket.
///
/// The rule, a rough tokenizer: the UTF-8 bytes of the text the model reads (the `system`
/// string or its text blocks; each message's `content` string or blocks: text, thinking, a
/// tool use's name and its input as JSON, a tool result's content, any other block as its JSON
/// text; each tool's name, description and input schema as JSON), divided by 4 and rounded up,
/// plus 3 tokens per message, at least 1. It never exceeds the runtime's estimate (the JSON
/// text of `system`, `messages` and `tools` divided by 4), since every byte it counts is in that
/// text and each message object brings more punctuation than its 3 tokens stand for.
///
/// `None` unless `messages` is a non-empty array (the runtime refuses such a body).
pub fn estimate_input_tokens(body: &serde_json::Value) -> Option<u64> {
    tokens::count_input_tokens(body)
}
