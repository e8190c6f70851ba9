//! The one seam to the outside: `trait Upstream`, and the domain types that cross it.
//!
//! The core never speaks HTTP itself. An [`Upstream`] takes one [`Attempt`] (a request body already
//! patched for the model of this hop, a key slot, a time budget) and returns what came back: an
//! [`UpstreamResponse`] for any HTTP status, or a [`TransportError`] when no complete answer arrived.
//! Classifying what that means is the job of [`crate::policy::classify`], not of the transport.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;

/// The future an [`Upstream`] returns for one attempt.
pub type UpstreamFuture<'a> =
    Pin<Box<dyn Future<Output = Result<UpstreamResponse, TransportError>> + Send + 'a>>;

/// The future an [`Upstream`] returns for a streaming attempt: the response head, then events.
pub type StreamFuture<'a> =
    Pin<Box<dyn Future<Output = Result<StreamResponse, TransportError>> + Send + 'a>>;

/// The future an [`Upstream`] returns for a token count.
pub type CountFuture<'a> = Pin<Box<dyn Future<Output = Result<u64, TransportError>> + Send + 'a>>;

/// A provider of Messages-API answers: the real API over HTTP, an OpenAI-compatible provider, the
/// simulator, or an in-process fake in tests.
///
/// Implementations must honour [`Attempt::timeout`] themselves where they can (connect and read
/// timeouts); the request actor additionally cuts the attempt at that budget, so an implementation
/// that hangs can never hold a caller past its deadline.
pub trait Upstream: Send + Sync + 'static {
    /// Send one attempt and return whatever came back.
    fn send(&self, attempt: Attempt) -> UpstreamFuture<'_>;

    /// How many API keys this upstream holds. Key slots `0..key_count()` appear in
    /// [`Attempt::key`]; the governor chooses among them and quarantines bad ones.
    fn key_count(&self) -> usize {
        1
    }

    /// Send one streaming attempt (`"stream": true` is already in `attempt.body`) and return
    /// the response head as soon as it arrives. A 2xx event stream comes back as
    /// [`StreamBody::Events`], fed as events arrive; anything else is read in full as
    /// [`StreamBody::Complete`]. The default refuses: that hop ends and the next may stream.
    fn send_stream(&self, _attempt: Attempt) -> StreamFuture<'_> {
        Box::pin(async {
            Err(TransportError::Invalid(
                "streaming is not supported by this upstream".into(),
            ))
        })
    }

    /// Count the input tokens of `attempt.body` with the provider's own counter (the
    /// `count_tokens` endpoint), if it has one. `None`: no counter; the runtime estimates.
    fn count_tokens(&self, _attempt: Attempt) -> Option<CountFuture<'_>> {
        None
    }

    /// A short, non-secret label for key slot `slot` (for example the key's last four characters),
    /// used in logs and status output.
    fn key_label(&self, slot: usize) -> String {
        format!("key#{slot}")
    }
}

/// One attempt at one model, as handed to an [`Upstream`].
#[derive(Clone, Debug)]
pub struct Attempt {
    /// The model this attempt asks for (already written into `body`).
    pub model: String,
    /// The serialized JSON request body for this hop.
    pub body: Bytes,
    /// Which of the upstream's keys to use.
    pub key: usize,
    /// 0 on the first attempt of a call, then 1, 2, ... across the whole call (all hops).
    pub retry_count: u32,
    /// Time budget for this attempt: the smaller of the per-attempt timeout and what is left of the
    /// caller's deadline.
    pub timeout: Duration,
    /// The caller's idempotency key, forwarded where the API accepts one.
    pub idempotency_key: Option<String>,
    /// API headers the caller sent that the upstream must see unchanged.
    pub forward: ForwardHeaders,
}

/// The caller's `anthropic-version` and `anthropic-beta`, forwarded unchanged (a gateway
/// client's SDK may rely on a beta such as server-side `fallbacks`). An Anthropic transport
/// sends the caller's version instead of its configured one, and the caller's betas after its
/// configured ones.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ForwardHeaders {
    /// `anthropic-version` as the caller sent it.
    pub version: Option<String>,
    /// `anthropic-beta` as the caller sent it (a comma list).
    pub beta: Option<String>,
}

/// A complete HTTP answer from an upstream, whatever its status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamResponse {
    /// The HTTP status code.
    pub status: u16,
    /// Response headers, names lower-cased.
    pub headers: Headers,
    /// The full response body.
    pub body: Bytes,
}

impl UpstreamResponse {
    /// A response with the given status and JSON body and no headers.
    pub fn new(status: u16, body: impl Into<Bytes>) -> Self {
        Self {
            status,
            headers: Headers::default(),
            body: body.into(),
        }
    }

    /// Add a header (builder style); the name is lower-cased.
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// The upstream's `request-id` header, which support asks for.
    pub fn request_id(&self) -> Option<&str> {
        self.headers.get("request-id")
    }
}

/// One server-sent event of a Messages API stream: `event: {event}\ndata: {data}\n\n`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    /// The event type (`message_start`, `content_block_delta`, `ping`, `error`, ...).
    pub event: String,
    /// The data line(s): a JSON document for the Messages API.
    pub data: String,
}

impl SseEvent {
    /// An event from its type and data.
    pub fn new(event: &str, data: impl Into<String>) -> Self {
        Self {
            event: event.to_owned(),
            data: data.into(),
        }
    }

    /// True for the events that carry answer content: once one reached the caller, the call
    /// can no longer move to another model.
    pub fn is_content(&self) -> bool {
        self.event == "content_block_delta"
    }

    /// The SSE wire form.
    pub fn to_wire(&self) -> String {
        let mut out = format!("event: {}\n", self.event);
        for line in self.data.split('\n') {
            out.push_str("data: ");
            out.push_str(line);
            out.push('\n');
        }
        out.push('\n');
        out
    }
}

/// The head of a streaming answer, and its body.
#[derive(Debug)]
pub struct StreamResponse {
    /// The HTTP status code.
    pub status: u16,
    /// Response headers, names lower-cased.
    pub headers: Headers,
    /// The body: events as they arrive, or the whole (error) body.
    pub body: StreamBody,
}

/// The body of a streaming answer.
#[derive(Debug)]
pub enum StreamBody {
    /// A non-2xx answer (or a 2xx that is not an event stream), read in full.
    Complete(Bytes),
    /// Events as they arrive. A transport failure mid-stream is the last item; the channel
    /// closing after `message_stop` is the normal end.
    Events(tokio::sync::mpsc::Receiver<Result<SseEvent, TransportError>>),
}

/// A small ordered list of response headers with lower-cased names.
///
/// Responses carry a dozen headers at most; a vector beats a map here and keeps duplicates.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    /// Append a header; the name is lower-cased.
    pub fn insert(&mut self, name: &str, value: impl Into<String>) {
        self.0.push((name.to_ascii_lowercase(), value.into()));
    }

    /// The first value of header `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All headers in arrival order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Number of headers.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no headers.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Response headers never carry our keys, but be strict anyway: hide anything auth-like.
        let mut m = f.debug_map();
        for (n, v) in &self.0 {
            if n.contains("key") || n.contains("auth") || n.contains("cookie") {
                m.entry(n, &"<redacted>");
            } else {
                m.entry(n, v);
            }
        }
        m.finish()
    }
}

/// Why no complete HTTP answer arrived.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The connection could not be established (refused, DNS, TLS handshake).
    #[error("could not connect to the upstream: {0}")]
    Connect(String),
    /// The attempt's time budget ran out before a complete answer arrived.
    #[error("the upstream did not answer within {0:?}")]
    Timeout(Duration),
    /// The connection broke after the request was sent (reset, closed early).
    #[error("the connection to the upstream broke: {0}")]
    Reset(String),
    /// The body ended before it was complete.
    #[error("the upstream's response body was cut short: {0}")]
    Truncated(String),
    /// The request could not even be built (a bug or bad configuration; not retried).
    #[error("the request could not be built: {0}")]
    Invalid(String),
}

/// Requests per minute, input tokens per minute and output tokens per minute: the three
/// dimensions the API limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cost {
    /// Number of requests (1 for a call).
    pub requests: u64,
    /// Input tokens (estimated before the call, actual after).
    pub input_tokens: u64,
    /// Output tokens (max_tokens before the call, actual after).
    pub output_tokens: u64,
}

impl Cost {
    /// One request with the given token counts.
    pub fn request(input_tokens: u64, output_tokens: u64) -> Self {
        Self {
            requests: 1,
            input_tokens,
            output_tokens,
        }
    }
}

/// Token usage reported by a successful answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    /// Uncached input tokens.
    #[serde(default)]
    pub input_tokens: u64,
    /// Output tokens generated.
    #[serde(default)]
    pub output_tokens: u64,
    /// Input tokens written to the prompt cache.
    #[serde(default)]
    pub cache_creation_input_tokens: u64,
    /// Input tokens read from the prompt cache (not counted against the input-token limit).
    #[serde(default)]
    pub cache_read_input_tokens: u64,
}

impl Usage {
    /// What this usage costs against the rate limits: cache reads are excluded from input.
    pub fn cost(&self) -> Cost {
        Cost::request(
            self.input_tokens + self.cache_creation_input_tokens,
            self.output_tokens,
        )
    }
}
