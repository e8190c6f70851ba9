//! What crosses the seam to the outside, as plain data: an [`Attempt`] going out, an
//! [`UpstreamResponse`] or a [`TransportError`] coming back, [`Headers`], [`SseEvent`]s, and the
//! [`Usage`] and [`Cost`] the rate limits count.
//!
//! No runtime here (no tokio, no ractor): the pure policies classify and budget these types.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;

use crate::policy::invalid::Invalid;
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
    /// A side exchange that expects one kind of answer (a token count) got this HTTP status
    /// instead. Attempts never end so: their answers are classified by status.
    #[error("the upstream answered HTTP {0} where a result was expected")]
    Status(u16),
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

/// A model's price in USD per million tokens, for the cost metric and the call log line.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Price {
    /// USD per million input tokens.
    pub input_per_mtok: f64,
    /// USD per million output tokens.
    pub output_per_mtok: f64,
}

impl Price {
    /// What `usage` costs, in USD. Cache reads and writes are not priced apart: only
    /// `input_tokens` and `output_tokens` are charged.
    pub fn cost(&self, usage: &Usage) -> f64 {
        (usage.input_tokens as f64 * self.input_per_mtok
            + usage.output_tokens as f64 * self.output_per_mtok)
            / 1e6
    }

    /// Check the settings.
    pub fn validate(&self) -> Result<(), Invalid> {
        for (field, v) in [
            ("input_per_mtok", self.input_per_mtok),
            ("output_per_mtok", self.output_per_mtok),
        ] {
            // Written so that NaN fails too.
            if !(v >= 0.0 && v.is_finite()) {
                return Err(Invalid::new(
                    field,
                    format!("must be a finite price >= 0, got {v}"),
                ));
            }
        }
        Ok(())
    }
}

/// The Messages API's `error.type` of each status it answers errors with. The one table the
/// runtime's edges share (the OpenAI translation, stream errors); the simulator keeps its own,
/// written from the API's documentation apart, so it checks this one.
pub const ERROR_TYPES: [(u16, &str); 10] = [
    (400, "invalid_request_error"),
    (401, "authentication_error"),
    (402, "billing_error"),
    (403, "permission_error"),
    (404, "not_found_error"),
    (413, "request_too_large"),
    (429, "rate_limit_error"),
    (500, "api_error"),
    (504, "gateway_timeout_error"),
    (529, "overloaded_error"),
];

/// The `error.type` for an HTTP status: the table's, else `api_error` for a 5xx and
/// `invalid_request_error` for anything else.
pub fn error_type_of(status: u16) -> &'static str {
    match ERROR_TYPES.iter().find(|(s, _)| *s == status) {
        Some((_, t)) => t,
        None if (500..=599).contains(&status) => "api_error",
        None => "invalid_request_error",
    }
}

/// The HTTP status an `error.type` stands for (a stream's `error` event carries only the type);
/// `timeout_error` is read as the 504 it reports. Unknown types: `None`.
pub fn status_of_error_type(error_type: &str) -> Option<u16> {
    if error_type == "timeout_error" {
        return Some(504);
    }
    ERROR_TYPES
        .iter()
        .find(|(_, t)| *t == error_type)
        .map(|(s, _)| *s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_type_table_reads_both_ways() {
        for (status, t) in ERROR_TYPES {
            assert_eq!(error_type_of(status), t);
            assert_eq!(status_of_error_type(t), Some(status));
        }
        assert_eq!(error_type_of(503), "api_error");
        assert_eq!(error_type_of(418), "invalid_request_error");
        assert_eq!(status_of_error_type("timeout_error"), Some(504));
        assert_eq!(status_of_error_type("weird"), None);
    }
}
