//! [`Upstream`] for Claude on AWS Bedrock (`InvokeModel`, `InvokeModelWithResponseStream`,
//! `CountTokens`), SigV4-signed (service `bedrock`) with aws-sigv4, credentials from
//! [`super::aws`] (aws-config's default chain), streams decoded with aws-smithy-eventstream.
//!
//! What goes out: `POST {base}/model/{id}/invoke` (`/invoke-with-response-stream`) with the
//! Messages request minus `model` and `stream`, plus `anthropic_version: "bedrock-2023-05-31"`;
//! the configured and the caller's `anthropic-beta` become the body's `anthropic_beta` array.
//! The id (the hop's [`Attempt::model`]) goes URL-encoded into the path.
//!
//! What comes back is handed to the core in the Anthropic API's shapes, so the same pure rules
//! classify it: the answer as is (with `usage` from the `x-amzn-bedrock-*-token-count` headers
//! when the body has none, and `request-id` from `x-amzn-requestid`), Bedrock's errors as the
//! Anthropic error they mean ([`map_error`]), and a stream's `chunk` events as the Anthropic
//! stream events they carry (base64 JSON), its `exception` frames as an `error` event.
//!
//! Credentials the platform rejects (`ExpiredTokenException`, `UnrecognizedClientException`,
//! `InvalidSignatureException`, ...) are fetched again once and the request sent again when
//! they changed; still rejected (or unchanged) they are a 401 `authentication_error`, which the
//! core reads as the upstream's key being bad: quarantined and re-checked later, never a model
//! failure. No credentials at all is the same 401, with the source's reason.

use std::borrow::Cow;
use std::fmt;
use std::time::{Duration, Instant, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};
use aws_smithy_types::event_stream::{HeaderValue as FrameValue, Message};
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use reqwest::header::{HeaderName, HeaderValue, ACCEPT, CONTENT_TYPE};
use reqwest::Url;
use seawall_actors::upstream::{
    Attempt, CountFuture, Headers, SseEvent, StreamBody, StreamFuture, StreamResponse,
    TransportError, Upstream, UpstreamFuture, UpstreamResponse,
};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use super::aws::{AwsCredentials, CredentialCache, SharedCache};
use super::http::{
    base_endpoint, capture_headers, http_client, merge_betas, read_rest, send_head,
    stream_body_error, STREAM_CHANNEL,
};
pub use super::TransportSetupError;
use crate::secret::Redactor;

/// The `anthropic_version` Bedrock's Claude models take.
pub const ANTHROPIC_VERSION: &str = "bedrock-2023-05-31";
/// The SigV4 service name.
pub const SIGNING_NAME: &str = "bedrock";
const EVENT_STREAM: &str = "application/vnd.amazon.eventstream";
/// The error types that say the credentials (not the request) are wrong.
const CREDENTIAL_ERRORS: [&str; 5] = [
    "ExpiredTokenException",
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "IncompleteSignatureException",
    "MissingAuthenticationTokenException",
];

/// The default endpoint of a region.
pub fn default_base_url(region: &str) -> String {
    format!("https://bedrock-runtime.{region}.amazonaws.com")
}

/// Settings for a [`BedrockUpstream`].
#[derive(Clone, Debug)]
pub struct BedrockOptions {
    /// The region: signed into every request, and the default endpoint's.
    pub region: String,
    /// Scheme, host and optional path prefix (VPC or FIPS endpoints, tests). Default
    /// [`default_base_url`] of the region.
    pub base_url: Option<String>,
    /// Where the credentials come from. Default: aws-config's default chain.
    pub credentials: AwsCredentials,
    /// `anthropic-beta` values (a comma list) sent with every request, before the caller's.
    pub beta: Option<String>,
    /// Time allowed to establish a connection. Default 5 s.
    pub connect_timeout: Duration,
    /// How long an idle pooled connection is kept. Default 90 s.
    pub pool_idle_timeout: Duration,
}

impl BedrockOptions {
    /// Options for `region` with every default.
    pub fn new(region: &str) -> Self {
        Self {
            region: region.to_owned(),
            base_url: None,
            credentials: AwsCredentials::default(),
            beta: None,
            connect_timeout: Duration::from_secs(5),
            pool_idle_timeout: Duration::from_secs(90),
        }
    }
}

/// Claude on AWS Bedrock as an [`Upstream`]. Cheap to share (`Arc` it).
pub struct BedrockUpstream {
    client: reqwest::Client,
    /// `{base_url}/model/`: the id and the operation are appended.
    base: Url,
    credentials: SharedCache,
    redactor: Redactor,
    options: BedrockOptions,
}

/// The operations, by path suffix.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Invoke,
    Stream,
    Count,
}

impl Op {
    fn suffix(self) -> &'static str {
        match self {
            Op::Invoke => "invoke",
            Op::Stream => "invoke-with-response-stream",
            Op::Count => "count-tokens",
        }
    }
}

impl BedrockUpstream {
    /// Check the options and build the HTTP client once. Credentials are fetched on the first
    /// call (the chain reads files and may ask a metadata service), then cached.
    ///
    /// # Errors
    ///
    /// [`TransportSetupError::BaseUrl`] for an unusable `base_url` (or region),
    /// [`TransportSetupError::HeaderValue`] for a `beta` that cannot be sent,
    /// [`TransportSetupError::Client`] when the HTTP client cannot be built.
    pub fn new(options: BedrockOptions) -> Result<Self, TransportSetupError> {
        let base_url = options
            .base_url
            .clone()
            .unwrap_or_else(|| default_base_url(&options.region));
        let base = base_endpoint(&base_url, &default_base_url("us-east-1"), "/model/")?;
        if let Some(beta) = &options.beta {
            if HeaderValue::from_str(beta).is_err() {
                return Err(TransportSetupError::HeaderValue { field: "beta" });
            }
        }
        let client = http_client(options.connect_timeout, options.pool_idle_timeout)?;
        let credentials = std::sync::Arc::new(CredentialCache::new(
            options.credentials.clone(),
            &options.region,
            options.connect_timeout,
        ));
        Ok(Self {
            client,
            base,
            credentials,
            redactor: Redactor::new(&[]),
            options,
        })
    }

    /// The URL of operation `op` on model `id`, as it is sent (the id URL-encoded).
    fn url(&self, id: &str, op: Op) -> Result<Url, TransportError> {
        let path = format!("{}/{}", encode_segment(id), op.suffix());
        self.base
            .join(&path)
            .map_err(|e| TransportError::Invalid(format!("model id {id:?} makes no URL: {e}")))
    }

    /// The options this upstream was built with.
    pub fn options(&self) -> &BedrockOptions {
        &self.options
    }

    /// The InvokeModel body for `attempt`: the Messages request without `model` and `stream`,
    /// with `anthropic_version` and the betas.
    fn invoke_body(&self, attempt: &Attempt) -> Result<Map<String, Value>, TransportError> {
        let mut body: Map<String, Value> = serde_json::from_slice(&attempt.body)
            .map_err(|e| TransportError::Invalid(format!("the body is not a JSON object: {e}")))?;
        body.remove("model");
        body.remove("stream");
        body.insert("anthropic_version".into(), Value::from(ANTHROPIC_VERSION));
        let betas = merge_betas(
            self.options.beta.as_deref(),
            attempt.forward.beta.as_deref(),
        );
        if !betas.is_empty() {
            let list = body
                .entry("anthropic_beta")
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(list) = list {
                for b in betas {
                    if !list.iter().any(|v| v.as_str() == Some(b)) {
                        list.push(Value::from(b));
                    }
                }
            }
        }
        Ok(body)
    }

    /// A signed POST of `body` to `url` with `creds`.
    fn signed(
        &self,
        url: &Url,
        body: &Bytes,
        accept: &'static str,
        creds: &Credentials,
    ) -> Result<reqwest::RequestBuilder, TransportError> {
        let identity = creds.clone().into();
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.options.region)
            .name(SIGNING_NAME)
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| TransportError::Invalid(format!("SigV4 parameters: {e}")))?
            .into();
        let headers = [("content-type", "application/json"), ("accept", accept)];
        let signable = SignableRequest::new(
            "POST",
            url.as_str(),
            headers.into_iter(),
            SignableBody::Bytes(body),
        )
        .map_err(|e| TransportError::Invalid(format!("SigV4 request: {e}")))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| TransportError::Invalid(format!("SigV4 signing failed: {e}")))?
            .into_parts();
        let mut request = self
            .client
            .post(url.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(ACCEPT, HeaderValue::from_static(accept));
        let (headers, _) = instructions.into_parts();
        for h in headers {
            let mut value = HeaderValue::from_str(h.value()).map_err(|_| {
                TransportError::Invalid(format!("SigV4 header {} is not a header value", h.name()))
            })?;
            value.set_sensitive(h.sensitive() || h.name() == "authorization");
            request = request.header(HeaderName::from_static(h.name()), value);
        }
        Ok(request.body(body.clone()))
    }

    /// Send `body` to operation `op`, signed; when the answer says the credentials were
    /// rejected, fetch them again once and, if they changed, send again. Returns the response
    /// head, or the 401 that stands for "no usable credentials".
    async fn exchange_head(
        &self,
        attempt: &Attempt,
        op: Op,
        body: &Bytes,
        deadline: tokio::time::Instant,
    ) -> Result<Head, TransportError> {
        let url = self.url(&attempt.model, op)?;
        let accept = if op == Op::Stream {
            EVENT_STREAM
        } else {
            "application/json"
        };
        let mut refreshed = false;
        loop {
            let creds = match self.credentials.get().await {
                Ok(c) => c,
                Err(e) => return Ok(Head::Answer(credentials_error(&e.to_string(), None))),
            };
            let request = self.signed(&url, body, accept, &creds)?;
            let response = send_head(request, deadline, attempt.timeout).await?;
            let status = response.status().as_u16();
            if (200..300).contains(&status) {
                return Ok(Head::Live(response));
            }
            let headers = capture_headers(response.headers());
            let raw = read_rest(response, deadline, attempt.timeout).await?;
            let kind = error_type(&headers, &raw);
            if CREDENTIAL_ERRORS.contains(&kind.as_str()) {
                self.credentials.invalidate(&creds).await;
                if !refreshed {
                    refreshed = true;
                    // Send again only with credentials that differ: the same set would be
                    // refused the same way.
                    if let Ok(fresh) = self.credentials.get().await {
                        if !super::aws::same(&fresh, &creds) {
                            tracing::debug!(model = %attempt.model, error_type = %kind, "bedrock refused the credentials: sending again with fresh ones");
                            continue;
                        }
                    }
                }
            }
            return Ok(Head::Answer(self.map_error(status, headers, &raw)));
        }
    }

    /// A Bedrock error answer as the Anthropic error it means.
    fn map_error(&self, status: u16, headers: Headers, raw: &[u8]) -> UpstreamResponse {
        let mapped = map_error(status, &headers, raw);
        let body = match self.redactor.redact(mapped.body.as_bytes()) {
            Cow::Borrowed(_) => Bytes::from(mapped.body),
            Cow::Owned(clean) => Bytes::from(clean),
        };
        UpstreamResponse {
            status: mapped.status,
            headers: with_request_id(headers),
            body,
        }
    }

    async fn send_attempt(&self, attempt: Attempt) -> Result<UpstreamResponse, TransportError> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + attempt.timeout;
        let result = self.unary(&attempt, deadline).await;
        log_answer(
            &attempt,
            &result.as_ref().map(|r| r.status),
            started,
            "attempt",
        );
        result
    }

    async fn unary(
        &self,
        attempt: &Attempt,
        deadline: tokio::time::Instant,
    ) -> Result<UpstreamResponse, TransportError> {
        let body = Bytes::from(serde_json::to_vec(&self.invoke_body(attempt)?).unwrap_or_default());
        match self
            .exchange_head(attempt, Op::Invoke, &body, deadline)
            .await?
        {
            Head::Answer(r) => Ok(r),
            Head::Live(response) => {
                let status = response.status().as_u16();
                let headers = with_request_id(capture_headers(response.headers()));
                let raw = read_rest(response, deadline, attempt.timeout).await?;
                Ok(UpstreamResponse {
                    status,
                    body: with_usage(raw, &headers),
                    headers,
                })
            }
        }
    }

    async fn stream_attempt(&self, attempt: Attempt) -> Result<StreamResponse, TransportError> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + attempt.timeout;
        let result = self.stream(&attempt, deadline).await;
        log_answer(
            &attempt,
            &result.as_ref().map(|r| r.status),
            started,
            "stream",
        );
        result
    }

    async fn stream(
        &self,
        attempt: &Attempt,
        deadline: tokio::time::Instant,
    ) -> Result<StreamResponse, TransportError> {
        let body = Bytes::from(serde_json::to_vec(&self.invoke_body(attempt)?).unwrap_or_default());
        let response = match self
            .exchange_head(attempt, Op::Stream, &body, deadline)
            .await?
        {
            Head::Answer(r) => {
                return Ok(StreamResponse {
                    status: r.status,
                    headers: r.headers,
                    body: StreamBody::Complete(r.body),
                })
            }
            Head::Live(response) => response,
        };
        let status = response.status().as_u16();
        let headers = with_request_id(capture_headers(response.headers()));
        let framed = headers
            .get("content-type")
            .and_then(|v| v.split(';').next())
            .is_some_and(|t| t.trim().eq_ignore_ascii_case(EVENT_STREAM));
        if !framed {
            // A 2xx that is not a stream: a plain answer, classified like one.
            let raw = read_rest(response, deadline, attempt.timeout).await?;
            return Ok(StreamResponse {
                status,
                headers,
                body: StreamBody::Complete(raw),
            });
        }
        let (tx, rx) = mpsc::channel(STREAM_CHANNEL);
        tokio::spawn(pump_frames(
            response,
            tx,
            attempt.timeout,
            attempt.model.clone(),
            self.redactor.clone(),
        ));
        Ok(StreamResponse {
            status,
            headers,
            body: StreamBody::Events(rx),
        })
    }

    /// `CountTokens`: the InvokeModel body, base64 in `input.invokeModel.body`.
    async fn count(&self, attempt: Attempt) -> Result<u64, TransportError> {
        let deadline = tokio::time::Instant::now() + attempt.timeout;
        let mut invoke = self.invoke_body(&attempt)?;
        // The counter takes the fields a count depends on; max_tokens is required by the body.
        invoke.remove("anthropic_beta");
        let inner = serde_json::to_vec(&invoke).unwrap_or_default();
        let wrapped = json!({"input": {"invokeModel": {
            "body": base64::engine::general_purpose::STANDARD.encode(inner)
        }}});
        let body = Bytes::from(serde_json::to_vec(&wrapped).unwrap_or_default());
        let response = match self
            .exchange_head(&attempt, Op::Count, &body, deadline)
            .await?
        {
            Head::Answer(r) => return Err(TransportError::Status(r.status)),
            Head::Live(response) => response,
        };
        let raw = read_rest(response, deadline, attempt.timeout).await?;
        serde_json::from_slice::<Value>(&raw)
            .ok()
            .and_then(|v| v.get("inputTokens").and_then(Value::as_u64))
            .ok_or_else(|| {
                TransportError::Truncated("count-tokens: no inputTokens in the answer".into())
            })
    }
}

/// A response head: a live 2xx (its body still to read), or an error answer already mapped.
enum Head {
    Live(reqwest::Response),
    Answer(UpstreamResponse),
}

fn log_answer(
    attempt: &Attempt,
    result: &Result<u16, &TransportError>,
    started: Instant,
    what: &str,
) {
    let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    match result {
        Ok(status) => {
            tracing::debug!(model = %attempt.model, retry_count = attempt.retry_count, status, elapsed_ms, "bedrock {what} answered")
        }
        Err(err) => {
            tracing::debug!(model = %attempt.model, retry_count = attempt.retry_count, error = %err, elapsed_ms, "bedrock {what} failed")
        }
    }
}

/// A path segment as the AWS SDKs encode a label: everything but RFC 3986's unreserved
/// characters percent-encoded (`:` and `/` of ids and ARNs included).
fn encode_segment(id: &str) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    const LABEL: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    utf8_percent_encode(id, LABEL).to_string()
}

/// `x-amzn-requestid` copied to `request-id`, where the core and the gateway read it.
fn with_request_id(mut headers: Headers) -> Headers {
    if headers.get("request-id").is_none() {
        if let Some(id) = headers.get("x-amzn-requestid").map(str::to_owned) {
            headers.insert("request-id", id);
        }
    }
    headers
}

/// An answer without `usage` gets it from the token-count headers (the core budgets by it).
fn with_usage(raw: Bytes, headers: &Headers) -> Bytes {
    let count = |name: &str| headers.get(name).and_then(|v| v.trim().parse::<u64>().ok());
    let (Some(input), Some(output)) = (
        count("x-amzn-bedrock-input-token-count"),
        count("x-amzn-bedrock-output-token-count"),
    ) else {
        return raw;
    };
    let Ok(mut body) = serde_json::from_slice::<Map<String, Value>>(&raw) else {
        return raw;
    };
    if body.contains_key("usage") {
        return raw;
    }
    let mut usage = json!({"input_tokens": input, "output_tokens": output});
    for (header, field) in [
        (
            "x-amzn-bedrock-cache-read-input-token-count",
            "cache_read_input_tokens",
        ),
        (
            "x-amzn-bedrock-cache-write-input-token-count",
            "cache_creation_input_tokens",
        ),
    ] {
        if let Some(n) = count(header) {
            usage[field] = Value::from(n);
        }
    }
    body.insert("usage".into(), usage);
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

/// The error type of a Bedrock error answer: `x-amzn-errortype` (up to its `:`), else the
/// body's `__type` (after its `#`), else empty.
fn error_type(headers: &Headers, raw: &[u8]) -> String {
    if let Some(t) = headers.get("x-amzn-errortype") {
        return t.split(':').next().unwrap_or("").trim().to_owned();
    }
    serde_json::from_slice::<Value>(raw)
        .ok()
        .and_then(|v| {
            v.get("__type")
                .and_then(Value::as_str)
                .map(|t| t.rsplit('#').next().unwrap_or(t).to_owned())
        })
        .unwrap_or_default()
}

/// An error mapped onto the Anthropic API's status and body.
struct Mapped {
    status: u16,
    body: String,
}

fn anthropic_error(status: u16, kind: &str, message: &str) -> Mapped {
    let body = json!({"type": "error", "error": {"type": kind, "message": message}});
    Mapped {
        status,
        body: body.to_string(),
    }
}

/// No usable credentials, as the core's 401: the upstream's key is bad.
fn credentials_error(message: &str, headers: Option<Headers>) -> UpstreamResponse {
    let m = anthropic_error(401, "authentication_error", message);
    UpstreamResponse {
        status: m.status,
        headers: headers.unwrap_or_default(),
        body: Bytes::from(m.body),
    }
}

/// A Bedrock error (`status`, `x-amzn-errortype`, `{"message": ...}`) as the Anthropic error
/// with the same meaning for the core's classifier:
///
/// | Bedrock                                          | Anthropic                     |
/// |--------------------------------------------------|-------------------------------|
/// | ThrottlingException, ServiceQuotaExceededException | 429 `rate_limit_error` (no retry-after) |
/// | ModelNotReadyException                           | 529 `overloaded_error`        |
/// | ServiceUnavailableException                      | 503 `api_error`               |
/// | InternalServerException, ModelErrorException     | 500 `api_error`               |
/// | ModelTimeoutException                            | 504 `timeout_error`           |
/// | ValidationException (a wrapped `serviceUnavailable`: 503) | 400 `invalid_request_error` |
/// | AccessDeniedException                            | 403 `permission_error`        |
/// | the credential errors                            | 401 `authentication_error`    |
/// | ResourceNotFoundException                        | 404 `not_found_error`         |
/// | anything else                                    | its status, that status's type |
fn map_error(status: u16, headers: &Headers, raw: &[u8]) -> Mapped {
    let kind = error_type(headers, raw);
    let message = serde_json::from_slice::<Value>(raw)
        .ok()
        .and_then(|v| {
            v.get("message")
                .or_else(|| v.get("Message"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(raw).chars().take(500).collect());
    let message = if kind.is_empty() {
        message
    } else {
        format!("{kind}: {message}")
    };
    let (status, t) = match kind.as_str() {
        "ThrottlingException" | "ServiceQuotaExceededException" => (429, "rate_limit_error"),
        "ModelNotReadyException" => (529, "overloaded_error"),
        "ServiceUnavailableException" => (503, "api_error"),
        "InternalServerException" | "ModelErrorException" => (500, "api_error"),
        "ModelTimeoutException" => (504, "timeout_error"),
        "ValidationException" if wraps_unavailable(&message) => (503, "api_error"),
        "ValidationException" => (400, "invalid_request_error"),
        "AccessDeniedException" => (403, "permission_error"),
        k if CREDENTIAL_ERRORS.contains(&k) => (401, "authentication_error"),
        "ResourceNotFoundException" => (404, "not_found_error"),
        _ => (status, seawall_actors::wire::error_type_of(status)),
    };
    anthropic_error(status, t, &message)
}

/// Whether a ValidationException only wraps an unavailable service: Bedrock reports some
/// capacity failures of the model behind it as a 400 whose message carries the inner error.
fn wraps_unavailable(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("serviceunavailable") || m.contains("service_unavailable")
}

/// The `error` event for an in-stream exception (`:exception-type`, payload `{"message"}`).
fn exception_event(kind: &str, payload: &[u8]) -> SseEvent {
    let t = match kind {
        "throttlingException" | "serviceQuotaExceededException" => "rate_limit_error",
        "serviceUnavailableException" | "modelNotReadyException" => "overloaded_error",
        "modelTimeoutException" => "timeout_error",
        "validationException" => "invalid_request_error",
        "accessDeniedException" => "permission_error",
        // modelStreamErrorException, internalServerException, and what is new.
        _ => "api_error",
    };
    let message = serde_json::from_slice::<Value>(payload)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_default();
    let data =
        json!({"type": "error", "error": {"type": t, "message": format!("{kind}: {message}")}});
    SseEvent::new("error", data.to_string())
}

/// A frame's string header.
fn header<'a>(m: &'a Message, name: &str) -> Option<&'a str> {
    m.headers()
        .iter()
        .find(|h| h.name().as_str() == name)
        .and_then(|h| match h.value() {
            FrameValue::String(s) => Some(s.as_str()),
            _ => None,
        })
}

/// What one decoded frame means for the stream: an event, or its last item.
fn frame_event(m: &Message) -> Result<Option<SseEvent>, SseEvent> {
    match header(m, ":message-type") {
        Some("event") => {
            if header(m, ":event-type") != Some("chunk") {
                // Event types beyond `chunk` carry nothing for the Messages stream.
                return Ok(None);
            }
            let bytes = serde_json::from_slice::<Value>(m.payload())
                .ok()
                .and_then(|v| v.get("bytes").and_then(Value::as_str).map(str::to_owned));
            let decoded = bytes.and_then(|b| {
                base64::engine::general_purpose::STANDARD
                    .decode(b.as_bytes())
                    .ok()
            });
            let event = decoded.and_then(|d| {
                let v = serde_json::from_slice::<Value>(&d).ok()?;
                let kind = v.get("type")?.as_str()?.to_owned();
                Some(SseEvent::new(&kind, String::from_utf8(d).ok()?))
            });
            match event {
                Some(e) => Ok(Some(e)),
                None => Err(exception_event(
                    "malformedChunk",
                    br#"{"message":"a chunk did not carry a base64 JSON stream event"}"#,
                )),
            }
        }
        Some("exception") => Err(exception_event(
            header(m, ":exception-type").unwrap_or("unknownException"),
            m.payload(),
        )),
        Some("error") => {
            let code = header(m, ":error-code").unwrap_or("unknownError");
            let message = header(m, ":error-message").unwrap_or("");
            Err(exception_event(
                code,
                json!({"message": message}).to_string().as_bytes(),
            ))
        }
        _ => Ok(None),
    }
}

/// Read an event stream body frame by frame and send the Anthropic events it carries into
/// `tx`, until the body ends, an exception frame ends it (one `error` event), it breaks (one
/// `Err`), or the receiver is dropped.
async fn pump_frames(
    mut response: reqwest::Response,
    tx: mpsc::Sender<Result<SseEvent, TransportError>>,
    budget: Duration,
    model: String,
    redactor: Redactor,
) {
    let started = Instant::now();
    let mut decoder = MessageFrameDecoder::new();
    let mut buf = BytesMut::new();
    let mut events: u64 = 0;
    let ended: Cow<'static, str> = 'read: loop {
        let chunk = tokio::select! {
            biased;
            () = tx.closed() => break 'read "receiver dropped".into(),
            chunk = response.chunk() => chunk,
        };
        match chunk {
            Ok(Some(bytes)) => buf.extend_from_slice(&bytes),
            Ok(None) if buf.is_empty() => break 'read "end of body".into(),
            Ok(None) => {
                let err = TransportError::Truncated(format!(
                    "the event stream ended inside a frame ({} bytes left)",
                    buf.len()
                ));
                let how = err.to_string();
                let _ = tx.send(Err(err)).await;
                break 'read how.into();
            }
            Err(e) => {
                let err = stream_body_error(&e, budget);
                let how = err.to_string();
                let _ = tx.send(Err(err)).await;
                break 'read how.into();
            }
        }
        loop {
            let message = match decoder.decode_frame(&mut buf) {
                Ok(DecodedFrame::Incomplete) => break,
                Ok(DecodedFrame::Complete(m)) => m,
                Err(e) => {
                    let err =
                        TransportError::Truncated(format!("a malformed event stream frame: {e}"));
                    let how = err.to_string();
                    let _ = tx.send(Err(err)).await;
                    break 'read how.into();
                }
            };
            match frame_event(&message) {
                Ok(None) => {}
                Ok(Some(event)) => {
                    if tx.send(Ok(event)).await.is_err() {
                        break 'read "receiver dropped".into();
                    }
                    events += 1;
                }
                Err(mut error) => {
                    if let Cow::Owned(clean) = redactor.redact_str(&error.data) {
                        error.data = clean;
                    }
                    let how = format!("exception frame: {}", error.data);
                    let _ = tx.send(Ok(error)).await;
                    break 'read how.into();
                }
            }
        }
    };
    drop(response);
    let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    tracing::debug!(model = %model, events, ended = %ended, elapsed_ms, "bedrock stream ended");
}

impl Upstream for BedrockUpstream {
    fn send(&self, attempt: Attempt) -> UpstreamFuture<'_> {
        Box::pin(self.send_attempt(attempt))
    }

    fn send_stream(&self, attempt: Attempt) -> StreamFuture<'_> {
        Box::pin(self.stream_attempt(attempt))
    }

    fn count_tokens(&self, attempt: Attempt) -> Option<CountFuture<'_>> {
        Some(Box::pin(self.count(attempt)))
    }

    fn key_label(&self, _slot: usize) -> String {
        format!("aws:{}", self.options.region)
    }
}

impl fmt::Debug for BedrockUpstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BedrockUpstream")
            .field("base", &self.base.as_str())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Headers {
        let mut out = Headers::default();
        for (n, v) in pairs {
            out.insert(n, *v);
        }
        out
    }

    #[test]
    fn ids_are_encoded_as_the_sdk_encodes_labels() {
        assert_eq!(
            encode_segment("us.anthropic.claude-sonnet-4-5-20250929-v1:0"),
            "us.anthropic.claude-sonnet-4-5-20250929-v1%3A0"
        );
        assert_eq!(
            encode_segment("arn:aws:bedrock:us-east-1:1:inference-profile/x"),
            "arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fx"
        );
    }

    #[test]
    fn errors_map_onto_the_anthropic_shape() {
        let cases = [
            ("ThrottlingException", 429, 429, "rate_limit_error"),
            ("ModelNotReadyException", 429, 529, "overloaded_error"),
            ("ServiceUnavailableException", 503, 503, "api_error"),
            ("InternalServerException", 500, 500, "api_error"),
            ("ModelTimeoutException", 408, 504, "timeout_error"),
            ("ModelErrorException", 424, 500, "api_error"),
            ("ValidationException", 400, 400, "invalid_request_error"),
            ("AccessDeniedException", 403, 403, "permission_error"),
            ("ExpiredTokenException", 403, 401, "authentication_error"),
            (
                "UnrecognizedClientException",
                403,
                401,
                "authentication_error",
            ),
            (
                "InvalidSignatureException",
                403,
                401,
                "authentication_error",
            ),
            ("ResourceNotFoundException", 404, 404, "not_found_error"),
            ("SomethingNewException", 418, 418, "invalid_request_error"),
        ];
        for (kind, status, want, t) in cases {
            let headers = h(&[(
                "x-amzn-errortype",
                &format!("{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/"),
            )]);
            let m = map_error(status, &headers, br#"{"message":"why"}"#);
            assert_eq!(m.status, want, "{kind}");
            let v: Value = serde_json::from_str(&m.body).unwrap();
            assert_eq!(v["type"], "error");
            assert_eq!(v["error"]["type"], t, "{kind}");
            assert_eq!(v["error"]["message"], format!("{kind}: why"));
        }
        // The type from the body when the header is missing.
        let m = map_error(
            429,
            &Headers::default(),
            br#"{"__type":"com.amazon#ThrottlingException","message":"slow"}"#,
        );
        assert_eq!(m.status, 429);
        // A wrapped serviceUnavailable is transient.
        let m = map_error(
            400,
            &h(&[("x-amzn-errortype", "ValidationException")]),
            br#"{"message":"The model returned: serviceUnavailableException"}"#,
        );
        assert_eq!(m.status, 503);
    }

    #[test]
    fn the_classifier_reads_the_mapped_errors_as_bedrock_means_them() {
        use seawall_actors::policy::classify::{classify, Class, Scope, Verdict};
        let verdict = |kind: &str, status: u16| {
            let m = map_error(
                status,
                &h(&[("x-amzn-errortype", kind)]),
                br#"{"message":"m"}"#,
            );
            classify(
                &Ok(UpstreamResponse::new(m.status, m.body)),
                SystemTime::now(),
            )
        };
        assert_eq!(
            verdict("ThrottlingException", 429),
            Verdict::Retryable {
                class: Class::RateLimited,
                hint: None
            }
        );
        assert!(matches!(
            verdict("ServiceUnavailableException", 503),
            Verdict::Retryable {
                class: Class::ServerError,
                ..
            }
        ));
        assert!(matches!(
            verdict("ModelNotReadyException", 429),
            Verdict::Retryable {
                class: Class::Overloaded,
                ..
            }
        ));
        assert!(matches!(
            verdict("ModelTimeoutException", 408),
            Verdict::Retryable { .. }
        ));
        assert_eq!(
            verdict("ValidationException", 400),
            Verdict::Permanent {
                class: Class::InvalidRequest,
                scope: Scope::Request
            }
        );
        // Credentials: the upstream's key, quarantined; never the model's health.
        assert_eq!(
            verdict("ExpiredTokenException", 403),
            Verdict::Permanent {
                class: Class::Authentication,
                scope: Scope::Key
            }
        );
        assert_eq!(
            verdict("AccessDeniedException", 403),
            Verdict::Permanent {
                class: Class::Permission,
                scope: Scope::Model
            }
        );
    }

    #[test]
    fn usage_comes_from_the_headers_when_the_body_has_none() {
        let headers = h(&[
            ("x-amzn-bedrock-input-token-count", "12"),
            ("x-amzn-bedrock-output-token-count", "3"),
        ]);
        let out = with_usage(Bytes::from_static(br#"{"id":"msg_1"}"#), &headers);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["usage"]["input_tokens"], 12);
        assert_eq!(v["usage"]["output_tokens"], 3);
        let own = Bytes::from_static(br#"{"usage":{"input_tokens":1,"output_tokens":2}}"#);
        assert_eq!(with_usage(own.clone(), &headers), own);
        let ids = with_request_id(h(&[("x-amzn-requestid", "abc")]));
        assert_eq!(ids.get("request-id"), Some("abc"));
    }

    #[test]
    fn exception_frames_become_anthropic_error_events() {
        let e = exception_event("throttlingException", br#"{"message":"slow down"}"#);
        assert_eq!(e.event, "error");
        let v: Value = serde_json::from_str(&e.data).unwrap();
        assert_eq!(v["error"]["type"], "rate_limit_error");
        let e = exception_event("modelStreamErrorException", br#"{"message":"x"}"#);
        let v: Value = serde_json::from_str(&e.data).unwrap();
        assert_eq!(v["error"]["type"], "api_error");
    }
}
