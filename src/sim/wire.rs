//! The bytes the simulator answers with: Messages API and OpenAI-compatible bodies, error
//! shapes (the Anthropic API's, OpenAI's, Bedrock's and Google's), SSE events, Bedrock's
//! event-stream frames and rate-limit headers. Pure functions; no I/O, no state.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::{json, Value};

use super::limiter::{Dimension, Remaining};

/// The words answers are made of: one word is one output token, so usage is exact.
const WORDS: [&str; 24] = [
    "The",
    "simulated",
    "model",
    "answers",
    "with",
    "a",
    "steady",
    "stream",
    "of",
    "plausible",
    "words",
    "so",
    "that",
    "clients",
    "can",
    "measure",
    "tokens,",
    "latency",
    "and",
    "recovery",
    "under",
    "injected",
    "faults",
    "today.",
];

/// Word `i` of an answer, with its leading space (none for the first): the text of delta `i`.
pub(crate) fn delta_text(i: usize) -> String {
    let word = WORDS[i % WORDS.len()];
    if i == 0 {
        word.to_owned()
    } else {
        format!(" {word}")
    }
}

/// An answer of `n` words.
pub(crate) fn answer_text(n: usize) -> String {
    (0..n).map(delta_text).collect()
}

/// The Messages API `error.type` for an HTTP status.
pub(crate) fn error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "gateway_timeout_error",
        529 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

/// A default `error.message` for a simulated error status.
pub(crate) fn default_message(status: u16) -> String {
    match status {
        401 => "invalid x-api-key".to_owned(),
        402 => "Your credit balance is too low to access the API (simulated)".to_owned(),
        403 => "Your API key does not have permission to use the specified resource (simulated)"
            .to_owned(),
        429 => "Number of requests has exceeded your rate limit (simulated)".to_owned(),
        500 => "Internal server error (simulated)".to_owned(),
        502 => "Bad gateway (simulated)".to_owned(),
        503 => "Service unavailable (simulated)".to_owned(),
        504 => "Gateway timeout (simulated)".to_owned(),
        529 => "Overloaded".to_owned(),
        s => format!("Simulated error {s}"),
    }
}

/// The Messages API error object: `{"type":"error","error":{...},"request_id":...}`.
pub(crate) fn anthropic_error(
    status: u16,
    message: &str,
    error_code: Option<&str>,
    request_id: &str,
) -> Value {
    let mut error = json!({"type": error_type(status), "message": message});
    if let Some(code) = error_code {
        error["details"] = json!({ "error_code": code });
    }
    json!({"type": "error", "error": error, "request_id": request_id})
}

/// The OpenAI error object: `{"error":{"message","type","code","param":null}}`.
///
/// `kind` overrides the `type` chosen from the status (rate limits use `requests`/`tokens`).
pub(crate) fn openai_error(
    status: u16,
    message: &str,
    kind: Option<&str>,
    code: Option<&str>,
) -> Value {
    let (default_kind, default_code) = match status {
        401 => ("invalid_request_error", Some("invalid_api_key")),
        404 => ("invalid_request_error", Some("model_not_found")),
        429 => ("requests", Some("rate_limit_exceeded")),
        500..=599 => ("server_error", None),
        _ => ("invalid_request_error", None),
    };
    json!({"error": {
        "message": message,
        "type": kind.unwrap_or(default_kind),
        "code": code.or(default_code),
        "param": null,
    }})
}

/// A Messages API success body.
pub(crate) fn message_body(
    id: &str,
    model: &str,
    input_tokens: u64,
    output_tokens: u64,
    stop_reason: &str,
) -> Value {
    json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": answer_text(to_usize(output_tokens))}],
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": usage(input_tokens, output_tokens),
    })
}

fn usage(input_tokens: u64, output_tokens: u64) -> Value {
    json!({
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    })
}

/// An OpenAI chat completion body.
pub(crate) fn chat_completion_body(
    id: &str,
    model: &str,
    prompt_tokens: u64,
    completion_tokens: u64,
    finish_reason: &str,
) -> Value {
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": answer_text(to_usize(completion_tokens))},
            "finish_reason": finish_reason,
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens.saturating_add(completion_tokens),
        },
    })
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// One part of a streamed body and the pause before it: an SSE event's text, or an AWS
/// event-stream frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Part {
    /// Time to wait before sending this part.
    pub wait: Duration,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// One Anthropic stream event, before it is put on a wire.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct StreamEvent {
    /// Time to wait before sending this event.
    pub wait: Duration,
    /// The SSE event name (`message_start`, ..., `error`).
    pub name: &'static str,
    /// The event's JSON.
    pub data: Value,
    /// For the `error` event that ends a broken stream: the status it stands for.
    pub error_status: Option<u16>,
}

fn event(wait: Duration, name: &'static str, data: Value) -> StreamEvent {
    StreamEvent {
        wait,
        name,
        data,
        error_status: None,
    }
}

/// A streamed error to put in place of the rest of a stream.
pub(crate) struct StreamError {
    /// Text deltas sent before it.
    pub after_deltas: u64,
    /// Pause before the error event.
    pub wait: Duration,
    /// The status the error stands for (its type on the Anthropic wire, its exception on
    /// Bedrock's).
    pub status: u16,
    /// The error payload (the Messages API error object).
    pub body: Value,
}

/// Everything one streamed answer needs.
pub(crate) struct StreamSpec<'a> {
    pub id: &'a str,
    pub model: &'a str,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub stop_reason: &'a str,
    pub delta_interval: Duration,
    pub error: Option<StreamError>,
}

/// The events of a streamed answer, in the API's order: `message_start`, `content_block_start`,
/// `ping`, one `content_block_delta` per word (spaced by the delta interval),
/// `content_block_stop`, `message_delta`, `message_stop`. With an error, `event: error` takes
/// the place of everything after the first `after_deltas` deltas.
pub(crate) fn stream_events(spec: &StreamSpec<'_>) -> Vec<StreamEvent> {
    let zero = Duration::ZERO;
    let mut out = vec![
        event(
            zero,
            "message_start",
            json!({"type": "message_start", "message": {
                "id": spec.id,
                "type": "message",
                "role": "assistant",
                "model": spec.model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": usage(spec.input_tokens, 1),
            }}),
        ),
        event(
            zero,
            "content_block_start",
            json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "text", "text": ""}}),
        ),
        event(zero, "ping", json!({"type": "ping"})),
    ];
    let deltas = match &spec.error {
        Some(e) => e.after_deltas.min(spec.output_tokens),
        None => spec.output_tokens,
    };
    for i in 0..to_usize(deltas) {
        out.push(event(
            spec.delta_interval,
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": delta_text(i)}}),
        ));
    }
    if let Some(e) = &spec.error {
        out.push(StreamEvent {
            wait: e.wait,
            name: "error",
            data: e.body.clone(),
            error_status: Some(e.status),
        });
        return out;
    }
    out.push(event(
        zero,
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    out.push(event(
        zero,
        "message_delta",
        json!({"type": "message_delta",
                "delta": {"stop_reason": spec.stop_reason, "stop_sequence": null},
                "usage": {"output_tokens": spec.output_tokens}}),
    ));
    out.push(event(zero, "message_stop", json!({"type": "message_stop"})));
    out
}

/// The events as server-sent events: `event: NAME\ndata: JSON\n\n` each (the Anthropic API's
/// and Vertex's `streamRawPredict` wire).
pub(crate) fn sse(events: Vec<StreamEvent>) -> Vec<Part> {
    events
        .into_iter()
        .map(|e| Part {
            wait: e.wait,
            bytes: format!("event: {}\ndata: {}\n\n", e.name, e.data).into_bytes(),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Bedrock

/// What Bedrock's `message_stop` chunk reports in `amazon-bedrock-invocationMetrics`.
pub(crate) struct InvocationMetrics {
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Time to the whole answer, in milliseconds.
    pub invocation_ms: u64,
    /// Time to the first byte, in milliseconds.
    pub first_byte_ms: u64,
}

/// The events as Bedrock's `InvokeModelWithResponseStream` sends them: one AWS event-stream
/// frame per event (`:message-type: event`, `:event-type: chunk`, payload
/// `{"bytes": "<base64 of the event JSON>"}`), `message_stop` carrying
/// `amazon-bedrock-invocationMetrics`; the `error` event of a broken stream becomes an
/// `exception` frame ([`bedrock_stream_exception`]).
pub(crate) fn event_stream(events: Vec<StreamEvent>, metrics: &InvocationMetrics) -> Vec<Part> {
    events
        .into_iter()
        .map(|mut e| {
            let bytes = if let Some(status) = e.error_status {
                let message = e.data["error"]["message"].as_str().unwrap_or("").to_owned();
                let (kind, payload) = bedrock_stream_exception(status, &message);
                frame(&[(":exception-type", kind)], "exception", &payload)
            } else {
                if e.name == "message_stop" {
                    e.data["amazon-bedrock-invocationMetrics"] = json!({
                        "inputTokenCount": metrics.input_tokens,
                        "outputTokenCount": metrics.output_tokens,
                        "invocationLatency": metrics.invocation_ms,
                        "firstByteLatency": metrics.first_byte_ms,
                    });
                }
                let encoded = base64::engine::general_purpose::STANDARD.encode(e.data.to_string());
                let payload = json!({ "bytes": encoded });
                frame(&[(":event-type", "chunk")], "event", &payload)
            };
            Part {
                wait: e.wait,
                bytes,
            }
        })
        .collect()
}

/// One event-stream frame: `:message-type`, the given headers, `:content-type:
/// application/json` and the JSON payload, with its prelude and CRCs.
fn frame(
    headers: &[(&'static str, &'static str)],
    message_type: &'static str,
    payload: &Value,
) -> Vec<u8> {
    use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
    let mut message = Message::new(payload.to_string().into_bytes());
    for (name, value) in headers {
        message = message.add_header(Header::new(*name, HeaderValue::String((*value).into())));
    }
    let message = message
        .add_header(Header::new(
            ":content-type",
            HeaderValue::String("application/json".into()),
        ))
        .add_header(Header::new(
            ":message-type",
            HeaderValue::String(message_type.into()),
        ));
    let mut out = Vec::new();
    // Writing fails only for headers or payloads beyond the format's limits (names of 255
    // bytes, 16 MiB frames): the simulator writes neither. An empty frame would be a broken
    // stream, which the client reports.
    if aws_smithy_eventstream::frame::write_message_to(&message, &mut out).is_err() {
        out.clear();
    }
    out
}

/// The `:exception-type` and payload of an in-stream failure that stands for `status`:
/// 429 `throttlingException`, 503 `serviceUnavailableException`, 408/504
/// `modelTimeoutException`, 400 `validationException`, 500 `internalServerException`, anything
/// else (the model's own failure, such as an overload) `modelStreamErrorException` with the
/// original status.
pub(crate) fn bedrock_stream_exception(status: u16, message: &str) -> (&'static str, Value) {
    let kind = match status {
        429 => "throttlingException",
        503 => "serviceUnavailableException",
        408 | 504 => "modelTimeoutException",
        400 => "validationException",
        500 => "internalServerException",
        _ => "modelStreamErrorException",
    };
    let payload = if kind == "modelStreamErrorException" {
        json!({"message": message, "originalStatusCode": status, "originalMessage": message})
    } else {
        json!({ "message": message })
    };
    (kind, payload)
}

/// A Bedrock error: the HTTP status Bedrock sends for an error that stands for `status`, the
/// exception (`x-amzn-ErrorType`, before its `:`) and the body `{"message": ...}`.
///
/// | stands for | Bedrock sends |
/// |---|---|
/// | 400, 413, 422 | 400 `ValidationException` |
/// | 401 | 403 `UnrecognizedClientException` |
/// | 403 | 403 `AccessDeniedException` |
/// | 404 | 404 `ResourceNotFoundException` |
/// | 408, 504 | 408 `ModelTimeoutException` |
/// | 424 | 424 `ModelErrorException` |
/// | 429 | 429 `ThrottlingException` |
/// | 500, 502 | 500 `InternalServerException` |
/// | 503, 529 | 503 `ServiceUnavailableException` |
/// | other 4xx / 5xx | the status, `ValidationException` / `InternalServerException` |
pub(crate) fn bedrock_error(status: u16, message: &str) -> (u16, &'static str, Value) {
    let (sent, kind) = match status {
        400 | 413 | 422 => (400, "ValidationException"),
        401 => (403, "UnrecognizedClientException"),
        403 => (403, "AccessDeniedException"),
        404 => (404, "ResourceNotFoundException"),
        408 | 504 => (408, "ModelTimeoutException"),
        424 => (424, "ModelErrorException"),
        429 => (429, "ThrottlingException"),
        500 | 502 => (500, "InternalServerException"),
        503 | 529 => (503, "ServiceUnavailableException"),
        s if s < 500 => (s, "ValidationException"),
        s => (s, "InternalServerException"),
    };
    (sent, kind, json!({ "message": message }))
}

/// The `x-amzn-ErrorType` value of exception `kind`, as Bedrock writes it.
pub(crate) fn bedrock_error_type(kind: &str) -> String {
    format!("{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/")
}

/// A default message of a Bedrock status fault or refusal.
pub(crate) fn bedrock_default_message(status: u16) -> String {
    match status {
        429 => "Too many requests, please wait before trying again. (simulated)".to_owned(),
        503 | 529 => "Bedrock is unable to process your request. (simulated)".to_owned(),
        500 => "The server encountered an internal error. (simulated)".to_owned(),
        s => default_message(s),
    }
}

// ---------------------------------------------------------------------------------------------
// Vertex AI

/// Google's status name for the platform errors Vertex answers itself: 400
/// `INVALID_ARGUMENT`, 401 `UNAUTHENTICATED`, 403 `PERMISSION_DENIED`, 404 `NOT_FOUND`, 429
/// `RESOURCE_EXHAUSTED`, 500 `INTERNAL`, 503 `UNAVAILABLE`, 504 `DEADLINE_EXCEEDED`. Other
/// statuses (a 529 overload, the model's own 4xx) come from the model and keep Anthropic's
/// shape, which Vertex passes through.
pub(crate) fn google_status(status: u16) -> Option<&'static str> {
    Some(match status {
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        500 => "INTERNAL",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => return None,
    })
}

/// Google's error shape: `{"error": {"code", "message", "status"}}`.
pub(crate) fn google_error(code: u16, status: &str, message: &str) -> Value {
    json!({"error": {"code": code, "message": message, "status": status}})
}

/// The most restrictive of the token dimensions: the one with the fewest tokens left.
fn tightest_tokens(left: &[Remaining]) -> Option<&Remaining> {
    left.iter()
        .filter(|l| l.dimension != Dimension::Requests)
        .min_by_key(|l| l.remaining)
}

/// `anthropic-ratelimit-*` headers. `reset` is the RFC 3339 instant (whole seconds, rounded
/// up, as the API sends it) at which the bucket is full again.
pub(crate) fn anthropic_ratelimit_headers(left: &[Remaining], out: &mut Vec<(String, String)>) {
    let now = SystemTime::now();
    let mut push = |name: &str, l: &Remaining| {
        let reset = rfc3339_ceil(now, l.until_full);
        out.push((
            format!("anthropic-ratelimit-{name}-limit"),
            l.limit.to_string(),
        ));
        out.push((
            format!("anthropic-ratelimit-{name}-remaining"),
            l.remaining.to_string(),
        ));
        out.push((format!("anthropic-ratelimit-{name}-reset"), reset));
    };
    for l in left {
        let name = match l.dimension {
            Dimension::Requests => "requests",
            Dimension::InputTokens => "input-tokens",
            Dimension::OutputTokens => "output-tokens",
        };
        push(name, l);
    }
    if let Some(l) = tightest_tokens(left) {
        push("tokens", l);
    }
}

/// `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` as OpenAI sends them, resets as Go
/// durations (`1s`, `6m0s`). `tokens` is the most restrictive token dimension.
pub(crate) fn openai_ratelimit_headers(left: &[Remaining], out: &mut Vec<(String, String)>) {
    let requests = left.iter().find(|l| l.dimension == Dimension::Requests);
    for (name, l) in [("requests", requests), ("tokens", tightest_tokens(left))] {
        if let Some(l) = l {
            out.push((format!("x-ratelimit-limit-{name}"), l.limit.to_string()));
            out.push((
                format!("x-ratelimit-remaining-{name}"),
                l.remaining.to_string(),
            ));
            out.push((
                format!("x-ratelimit-reset-{name}"),
                go_duration(l.until_full),
            ));
        }
    }
}

/// `now + wait` as RFC 3339 in whole seconds, rounded up so the promise holds.
fn rfc3339_ceil(now: SystemTime, wait: Duration) -> String {
    let at = now.checked_add(wait).unwrap_or(now);
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() + u64::from(since.subsec_nanos() > 0);
    let rounded = UNIX_EPOCH
        .checked_add(Duration::from_secs(secs))
        .unwrap_or(at);
    humantime::format_rfc3339_seconds(rounded).to_string()
}

/// A duration the way Go prints it (and OpenAI sends it): `250ms`, `1s`, `1.5s`, `6m0s`,
/// `1h2m3s`; rounded up to the millisecond.
pub(crate) fn go_duration(d: Duration) -> String {
    let ms = d.as_millis() + u128::from(!d.subsec_nanos().is_multiple_of(1_000_000));
    if ms == 0 {
        return "0s".to_owned();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let hours = ms / 3_600_000;
    let minutes = (ms / 60_000) % 60;
    let sec_ms = ms % 60_000;
    let (whole, frac) = (sec_ms / 1000, sec_ms % 1000);
    let secs = if frac == 0 {
        format!("{whole}s")
    } else {
        let frac = format!("{frac:03}");
        format!("{whole}.{}s", frac.trim_end_matches('0'))
    };
    if hours > 0 {
        format!("{hours}h{minutes}m{secs}")
    } else if minutes > 0 {
        format!("{minutes}m{secs}")
    } else {
        secs
    }
}

/// The reason phrase of a status line.
pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        529 => "Overloaded",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_look_like_go() {
        let ms = Duration::from_millis;
        assert_eq!(go_duration(Duration::ZERO), "0s");
        assert_eq!(go_duration(ms(250)), "250ms");
        assert_eq!(go_duration(Duration::from_micros(1)), "1ms");
        assert_eq!(go_duration(ms(1000)), "1s");
        assert_eq!(go_duration(ms(1500)), "1.5s");
        assert_eq!(go_duration(ms(59_999)), "59.999s");
        assert_eq!(go_duration(ms(360_000)), "6m0s");
        assert_eq!(go_duration(ms(3_723_000)), "1h2m3s");
    }

    #[test]
    fn answers_have_one_word_per_token() {
        assert_eq!(answer_text(0), "");
        assert_eq!(answer_text(3), "The simulated model");
        assert_eq!(answer_text(100).split(' ').count(), 100);
    }

    #[test]
    fn error_types_follow_the_table() {
        for (s, t) in [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (402, "billing_error"),
            (403, "permission_error"),
            (404, "not_found_error"),
            (413, "request_too_large"),
            (429, "rate_limit_error"),
            (500, "api_error"),
            (502, "api_error"),
            (503, "api_error"),
            (504, "gateway_timeout_error"),
            (529, "overloaded_error"),
        ] {
            assert_eq!(error_type(s), t, "{s}");
        }
    }

    #[test]
    fn reset_rounds_up_to_whole_seconds() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            rfc3339_ceil(t, Duration::from_millis(1)),
            "2023-11-14T22:13:21Z"
        );
        assert_eq!(rfc3339_ceil(t, Duration::ZERO), "2023-11-14T22:13:20Z");
    }
}
