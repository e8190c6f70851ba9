//! [`Upstream`] for OpenAI-compatible chat completions over HTTP (reqwest, rustls): the other
//! vendor of a cross-provider fallback chain, at agent fidelity (tools, images, streams).
//!
//! The runtime speaks the Anthropic Messages API everywhere above the seam, so this transport
//! translates both ways through [`crate::translate`]: an [`Attempt`]'s Messages request becomes
//! a chat request ([`to_chat::request`](crate::translate::to_chat::request), whose table says
//! what is sent, dropped and refused), and the answer comes back Messages-shaped: a whole
//! answer through [`from_chat::message`], a stream as Messages events through
//! [`from_chat::Events`]. Classification, usage settlement, the governor, the gateway's stream
//! rules and [`Reply::text`](seawall_actors::Reply::text) then work unchanged.
//!
//! # Providers
//!
//! | provider | `base_url` | path | key header | length field |
//! |---|---|---|---|---|
//! | OpenAI (default) | `https://api.openai.com` | `/v1/chat/completions` | `Authorization: Bearer` | `max_completion_tokens` |
//! | Azure OpenAI ([`Azure`]) | `https://RESOURCE.openai.azure.com` | `/openai/deployments/{model}/chat/completions?api-version=V`, or `/openai/v1/chat/completions` without a version | `api-key` | `max_completion_tokens` |
//! | any other (vLLM, Ollama, Gemini's, Groq, ...) | theirs, the part before `/v1/chat/completions` | `/v1/chat/completions` | `Authorization: Bearer` | `max_tokens` |
//!
//! [`OpenAiOptions::max_tokens_field`] overrides the length field.
//!
//! # Answers
//!
//! - **2xx chat completion**: the Messages answer (text and `tool_use` blocks; `finish_reason`
//!   as `stop_reason`; usage with cached prompt tokens as `cache_read_input_tokens`).
//! - **2xx whose body is not JSON**: passed through unchanged; the classifier treats it as a
//!   broken answer and retries.
//! - **2xx JSON that is no chat completion** (an error object some gateways send with a 200),
//!   or one with a tool call whose `arguments` are not a JSON object: `502` with an `api_error`
//!   body quoting the provider, so it is retried rather than served broken.
//! - **4xx/5xx**: the status is kept; the body becomes
//!   `{"type":"error","error":{"type":T,"message":PROVIDER_MESSAGE},"request_id":ID}` with `T`
//!   from the status ([`seawall_actors::wire::error_type_of`]).
//! - **429 `insufficient_quota`** (OpenAI's "out of credit", in `error.code` or `error.type`):
//!   a spend cap. The body carries the provider's code as `error.details.error_code`, which the
//!   classifier reads as a billing failure of the whole upstream: never retried, nothing else on
//!   this upstream is tried for the call, the breaker does not count it (the model is not sick),
//!   and other upstreams of the chain go on. `x-should-retry: false` is set too.
//! - **429 rate limit** without `retry-after`/`retry-after-ms`: `retry-after-ms` from
//!   `x-ratelimit-reset-requests` / `-tokens` (`"1s"`, `"6m0s"`, `"20ms"`): the one whose
//!   `remaining` is 0, else the longer.
//! - **400 `context_length_exceeded`**: this model's context window is too small for the
//!   request. The code is passed on the same way, and the classifier ends this hop only: a
//!   later hop with a larger window may take it.
//! - No other provider code is passed on, and no Anthropic `error.details.error_code` is ever
//!   invented.
//! - Other statuses (3xx) are passed through unchanged.
//!
//! Headers: all of the provider's headers are kept, except `content-length` when the body was
//! rewritten. Added: `request-id` from `x-request-id`,
//! `anthropic-ratelimit-requests-{limit,remaining}` from `x-ratelimit-{limit,remaining}-requests`
//! (the governor reads these), `anthropic-ratelimit-tokens-{limit,remaining}` from
//! `x-ratelimit-{limit,remaining}-tokens` (OpenAI counts input and output together, so they are
//! informational), and [`DROPPED_HEADER`].
//!
//! # Streams
//!
//! `stream: true` is sent with `stream_options: {"include_usage": true}`. A 2xx event stream is
//! read chunk by chunk (the SSE parser of the Anthropic transport), each chunk translated as it
//! arrives: the first text piece is the first content, so the core's stream rules (fallback
//! before the first content, an `error` event after it) hold for this hop as for any other.
//! `data: [DONE]` (or the end of a body that said how it finished) closes the message with
//! `message_delta` (stop reason, usage) and `message_stop`. An in-stream `{"error":…}`, a chunk
//! that is not JSON, or a body cut before the answer finished ends the events with
//! [`TransportError::Truncated`] quoting the provider, so the core falls back (before content)
//! or ends the client's stream with an `error` event (after).
//! Anything but a 2xx event stream is read whole and translated as above.
//!
//! # Transport failures
//!
//! Exactly as [`AnthropicUpstream`](crate::AnthropicUpstream), with the same helpers:
//!
//! | what happened                                          | error                         |
//! |--------------------------------------------------------|-------------------------------|
//! | no connection (refused, DNS, TLS, `connect_timeout`)   | [`TransportError::Connect`]   |
//! | `attempt.timeout` ran out (before or during the body)  | [`TransportError::Timeout`]   |
//! | connection closed or reset before the response head    | [`TransportError::Reset`]     |
//! | connection broke while the body was being read         | [`TransportError::Truncated`] |
//! | untranslatable request, bad key slot or idempotency key (nothing was sent) | [`TransportError::Invalid`] |
//!
//! Keys go on the wire and nowhere else: header values are marked sensitive, errors are built
//! from reqwest errors (which carry the URL, never headers), and logs show the key's tail only.

use std::borrow::Cow;
use std::fmt;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::Url;
use seawall_actors::upstream::{
    Attempt, Headers, SseEvent, StreamBody, StreamFuture, StreamResponse, TransportError, Upstream,
    UpstreamFuture, UpstreamResponse,
};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::anthropic;
use super::http::{
    capture_headers, http_client, is_event_stream, read_rest, send_head, send_whole,
    stream_body_error, IDEMPOTENCY_KEY, STREAM_CHANNEL,
};
pub use super::TransportSetupError;
use crate::secret::{ApiKey, Redactor};
use crate::sse::SseParser;
pub use crate::translate::to_chat::MaxTokensField;
pub use crate::translate::DROPPED_HEADER;
use crate::translate::{from_chat, to_chat, Dropped};

/// OpenAI's own base URL. Other OpenAI-compatible providers need their own: give the part
/// before `/v1/chat/completions` (for example `https://api.groq.com/openai`).
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com";

const PATH: &str = "/v1/chat/completions";
const OPENAI_ORGANIZATION: HeaderName = HeaderName::from_static("openai-organization");
const API_KEY: HeaderName = HeaderName::from_static("api-key");
/// OpenAI error codes passed on as `error.details.error_code`: the ones the classifier reads.
const PASSED_CODES: [&str; 2] = ["insufficient_quota", "context_length_exceeded"];
/// The longest piece of a non-JSON error body quoted in a translated error message.
const MAX_QUOTED: usize = 500;

/// Azure OpenAI's wire: the `api-key` header, and the deployment in the path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Azure {
    /// `api-version` of the deployment path
    /// (`/openai/deployments/{model}/chat/completions?api-version=V`, the model being the
    /// deployment's name). `None`: the v1 API (`/openai/v1/chat/completions`, the deployment
    /// named in the body's `model`).
    pub api_version: Option<String>,
}

/// Settings for an [`OpenAiUpstream`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenAiOptions {
    /// Scheme, host and optional path prefix; the path is appended (a trailing slash is fine, a
    /// trailing `/v1` is refused because it would be doubled). Must be `http` or `https`,
    /// without credentials, query or fragment. Default [`DEFAULT_BASE_URL`], which is right for
    /// OpenAI only: set it for any other provider.
    pub base_url: String,
    /// Time allowed to establish a connection (TCP and TLS). Default 5 s. The whole attempt is
    /// additionally bounded by [`Attempt::timeout`].
    pub connect_timeout: Duration,
    /// How long an idle pooled connection is kept. Default 90 s.
    pub pool_idle_timeout: Duration,
    /// Sent as `OpenAI-Organization` when set. Default `None`.
    pub organization: Option<String>,
    /// Azure OpenAI instead of OpenAI's wire. Default `None`.
    pub azure: Option<Azure>,
    /// The field `max_tokens` is sent in. Default `None`: `max_completion_tokens` for OpenAI's
    /// own API and Azure, `max_tokens` for every other provider.
    pub max_tokens_field: Option<MaxTokensField>,
}

impl Default for OpenAiOptions {
    fn default() -> Self {
        Self {
            base_url: DEFAULT_BASE_URL.to_owned(),
            connect_timeout: Duration::from_secs(5),
            pool_idle_timeout: Duration::from_secs(90),
            organization: None,
            azure: None,
            max_tokens_field: None,
        }
    }
}

/// An OpenAI-compatible chat completions API as an [`Upstream`] that speaks the Messages API
/// to the runtime (see the [module documentation](self) for the translation).
///
/// Cheap to share (`Arc` it); the reqwest client inside pools connections across attempts.
pub struct OpenAiUpstream {
    client: reqwest::Client,
    endpoint: Url,
    keys: Vec<ApiKey>,
    /// Takes the keys (and `sk-` tokens) out of error bodies.
    redactor: Redactor,
    /// One ready-made, sensitive-marked key header value per key slot.
    auth_values: Vec<HeaderValue>,
    organization: Option<HeaderValue>,
    wire: to_chat::Wire,
    options: OpenAiOptions,
}

impl OpenAiUpstream {
    /// Validate the options and build the HTTP client once.
    ///
    /// The client follows no redirects and ignores proxy environment variables, so what is
    /// configured is what is contacted.
    ///
    /// # Errors
    ///
    /// [`TransportSetupError`] when `keys` is empty, `base_url` is not an `http`/`https` URL (or
    /// carries credentials, a query or a fragment, or ends in `/v1`), `organization` or the
    /// Azure `api_version` is not a valid header or query value, or the HTTP client cannot be
    /// built.
    pub fn new(keys: Vec<ApiKey>, options: OpenAiOptions) -> Result<Self, TransportSetupError> {
        if keys.is_empty() {
            return Err(TransportSetupError::NoKeys);
        }
        let endpoint = endpoint(&options.base_url, options.azure.as_ref())?;
        let organization = options
            .organization
            .as_deref()
            .map(HeaderValue::from_str)
            .transpose()
            .map_err(|_| TransportSetupError::HeaderValue {
                field: "organization",
            })?;
        let azure = options.azure.is_some();
        let auth_values = keys
            .iter()
            .map(|k| {
                let text = if azure {
                    k.expose().to_owned()
                } else {
                    format!("Bearer {}", k.expose())
                };
                // An ApiKey is visible ASCII, so this cannot fail; say so without the key if it does.
                let mut v =
                    HeaderValue::from_str(&text).map_err(|_| TransportSetupError::HeaderValue {
                        field: "keys (an ApiKey)",
                    })?;
                v.set_sensitive(true);
                Ok(v)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let official = azure || endpoint.host_str() == Some("api.openai.com");
        let max_tokens = options.max_tokens_field.unwrap_or(if official {
            MaxTokensField::MaxCompletionTokens
        } else {
            MaxTokensField::MaxTokens
        });
        let client = http_client(options.connect_timeout, options.pool_idle_timeout)?;
        Ok(Self {
            client,
            endpoint,
            redactor: Redactor::new(&keys),
            keys,
            auth_values,
            organization,
            wire: to_chat::Wire { max_tokens },
            options,
        })
    }

    /// The URL attempts are posted to (for Azure's deployment path, with `{model}` standing for
    /// the deployment).
    pub fn endpoint(&self) -> &str {
        self.endpoint.as_str()
    }

    /// The options this upstream was built with.
    pub fn options(&self) -> &OpenAiOptions {
        &self.options
    }

    /// The URL for one attempt: Azure's deployment path names the model.
    fn url_for(&self, model: &str) -> Url {
        if !matches!(
            &self.options.azure,
            Some(Azure {
                api_version: Some(_)
            })
        ) {
            return self.endpoint.clone();
        }
        let mut url = self.endpoint.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            // `{base}/openai/deployments/{model}/chat/completions`: the endpoint ends in
            // `deployments/_/chat/completions`; the model replaces the placeholder, encoded.
            segments
                .pop()
                .pop()
                .pop()
                .push(model)
                .push("chat")
                .push("completions");
        }
        url
    }

    async fn send_attempt(&self, attempt: Attempt) -> Result<UpstreamResponse, TransportError> {
        let started = Instant::now();
        let result = self.exchange(&attempt).await;
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let key = self.key_label(attempt.key);
        match &result {
            Ok(resp) => tracing::debug!(
                model = %attempt.model,
                key = %key,
                retry_count = attempt.retry_count,
                status = resp.status,
                request_id = resp.request_id().unwrap_or("-"),
                dropped = resp.headers.get(DROPPED_HEADER).unwrap_or("-"),
                elapsed_ms,
                "openai attempt answered"
            ),
            Err(err) => tracing::debug!(
                model = %attempt.model,
                key = %key,
                retry_count = attempt.retry_count,
                error = %err,
                elapsed_ms,
                "openai attempt failed"
            ),
        }
        result
    }

    /// The request for an attempt, translated; nothing is sent yet.
    fn request(
        &self,
        attempt: &Attempt,
    ) -> Result<(reqwest::RequestBuilder, to_chat::ChatRequest), TransportError> {
        let Some(auth) = self.auth_values.get(attempt.key) else {
            return Err(TransportError::Invalid(format!(
                "key slot {} is out of range: this upstream holds {} key(s), slots 0..{}",
                attempt.key,
                self.keys.len(),
                self.keys.len()
            )));
        };
        let mut translated = to_chat::request(&attempt.body, &attempt.model, self.wire)?;
        let auth_header = if self.options.azure.is_some() {
            API_KEY
        } else {
            AUTHORIZATION
        };
        let mut request = self
            .client
            .post(self.url_for(&translated.model))
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(auth_header, auth.clone());
        if let Some(org) = &self.organization {
            request = request.header(OPENAI_ORGANIZATION, org.clone());
        }
        if let Some(idem) = &attempt.idempotency_key {
            let value = HeaderValue::from_str(idem).map_err(|_| {
                TransportError::Invalid(
                    "the idempotency key is not a valid HTTP header value: \
                     use printable ASCII without line breaks"
                        .to_owned(),
                )
            })?;
            request = request.header(IDEMPOTENCY_KEY, value);
        }
        let body = std::mem::take(&mut translated.body);
        Ok((request.body(body), translated))
    }

    async fn exchange(&self, attempt: &Attempt) -> Result<UpstreamResponse, TransportError> {
        let (request, translated) = self.request(attempt)?;
        if translated.stream {
            return Err(TransportError::Invalid(
                "a streaming request was sent as a whole answer: use send_stream".to_owned(),
            ));
        }
        let whole = send_whole(request, attempt.timeout).await?;
        Ok(self.answer(
            whole.status,
            &whole.headers,
            whole.body,
            &translated.model,
            &translated.dropped,
        ))
    }

    /// The Messages-shaped answer for a whole chat answer, with keys out of any error.
    fn answer(
        &self,
        status: u16,
        headers: &Headers,
        body: bytes::Bytes,
        model: &str,
        dropped: &Dropped,
    ) -> UpstreamResponse {
        let mut answer = translate_response(status, headers, body, model, dropped);
        // An answer that is not a success passes on what the provider said (a 2xx without a
        // completion becomes a 502 quoting it): a key echoed there (or anything shaped like
        // one) loses it here, after translation, so the quote is checked as the client gets it.
        if !(200..300).contains(&answer.status) {
            if let Cow::Owned(clean) = self.redactor.redact(&answer.body) {
                answer.body = bytes::Bytes::from(clean);
            }
        }
        answer
    }

    /// One streaming attempt: the head within `attempt.timeout`, then either the translated
    /// events (read by a spawned [`pump`]) or the whole, translated, answer.
    async fn stream_attempt(&self, attempt: Attempt) -> Result<StreamResponse, TransportError> {
        let budget = attempt.timeout;
        let deadline = tokio::time::Instant::now() + budget;
        let key = self.key_label(attempt.key);
        let (request, translated) = self.request(&attempt)?;
        let response = send_head(request, deadline, budget).await?;
        let status = response.status().as_u16();
        let raw = capture_headers(response.headers());
        let streaming = response.status().is_success() && is_event_stream(response.headers());
        tracing::debug!(
            model = %attempt.model,
            key = %key,
            retry_count = attempt.retry_count,
            status,
            streaming,
            dropped = translated.dropped.header(),
            "openai stream answered"
        );
        if !streaming {
            let body = read_rest(response, deadline, budget).await?;
            let answer = self.answer(status, &raw, body, &translated.model, &translated.dropped);
            return Ok(StreamResponse {
                status: answer.status,
                headers: answer.headers,
                body: StreamBody::Complete(answer.body),
            });
        }
        let headers = translated_headers(&raw, &[], &translated.dropped);
        let (tx, rx) = mpsc::channel(STREAM_CHANNEL);
        let events = from_chat::Events::new(&translated.model);
        tokio::spawn(pump(response, tx, budget, events, self.redactor.clone()));
        Ok(StreamResponse {
            status,
            headers,
            body: StreamBody::Events(rx),
        })
    }
}

/// Read a 2xx chat completion stream and send its translation into `tx`, until `[DONE]`, the
/// end of the body, a break (one last `Err`), or the receiver is dropped.
async fn pump(
    mut response: reqwest::Response,
    tx: mpsc::Sender<Result<SseEvent, TransportError>>,
    budget: Duration,
    mut events: from_chat::Events,
    redactor: Redactor,
) {
    let mut parser = SseParser::new();
    let fail = |tx: mpsc::Sender<Result<SseEvent, TransportError>>, err: TransportError| async move {
        let _ = tx.send(Err(err)).await;
    };
    loop {
        let chunk = tokio::select! {
            biased;
            () = tx.closed() => return,
            chunk = response.chunk() => chunk,
        };
        let bytes = match chunk {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                if events.finished() {
                    for ev in events.done() {
                        if tx.send(Ok(ev)).await.is_err() {
                            return;
                        }
                    }
                } else {
                    let why = "the stream ended before the answer finished".to_owned();
                    fail(tx, TransportError::Truncated(why)).await;
                }
                return;
            }
            Err(e) => return fail(tx, stream_body_error(&e, budget)).await,
        };
        for item in parser.push(&bytes) {
            let event = match item {
                Ok(event) => event,
                Err(too_long) => {
                    return fail(tx, TransportError::Truncated(too_long.to_string())).await
                }
            };
            let data = event.data.trim();
            let out = if data == "[DONE]" {
                Ok(events.done())
            } else {
                match serde_json::from_str::<Value>(data) {
                    Ok(chunk) => events.push(&chunk),
                    Err(e) => Err(format!("a chunk that is not JSON ({e})")),
                }
            };
            let out = match out {
                Ok(out) => out,
                Err(why) => {
                    let why = redactor.redact_str(&why).into_owned();
                    return fail(tx, TransportError::Truncated(why)).await;
                }
            };
            for mut ev in out {
                if ev.event == "error" {
                    if let Cow::Owned(clean) = redactor.redact_str(&ev.data) {
                        ev.data = clean;
                    }
                }
                let last = ev.event == "message_stop" || ev.event == "error";
                if tx.send(Ok(ev)).await.is_err() || last {
                    return;
                }
            }
        }
    }
}

impl Upstream for OpenAiUpstream {
    fn send(&self, attempt: Attempt) -> UpstreamFuture<'_> {
        Box::pin(self.send_attempt(attempt))
    }

    fn send_stream(&self, attempt: Attempt) -> StreamFuture<'_> {
        Box::pin(self.stream_attempt(attempt))
    }

    fn key_count(&self) -> usize {
        self.keys.len()
    }

    fn key_label(&self, slot: usize) -> String {
        match self.keys.get(slot) {
            Some(key) => key.tail(),
            None => format!("key#{slot} (no such slot)"),
        }
    }
}

impl fmt::Debug for OpenAiUpstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `keys` prints through ApiKey's Debug (tail only); the auth header values are left out.
        f.debug_struct("OpenAiUpstream")
            .field("endpoint", &self.endpoint.as_str())
            .field("keys", &self.keys)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// The URL chat requests go to, after the Anthropic transport's checks of `base_url`:
/// `{base}/v1/chat/completions`, or Azure's paths (with `_` standing for the deployment).
fn endpoint(base_url: &str, azure: Option<&Azure>) -> Result<Url, TransportSetupError> {
    let messages = anthropic::endpoint(base_url).map_err(|e| match e {
        // Its "expected something like" example is the Anthropic URL; show ours.
        TransportSetupError::BaseUrl(why) => {
            TransportSetupError::BaseUrl(why.replace(anthropic::DEFAULT_BASE_URL, DEFAULT_BASE_URL))
        }
        other => other,
    })?;
    let bad = |why: String| TransportSetupError::BaseUrl(why);
    // The checked URL is `{base without trailing slash}/v1/messages`.
    let base = messages
        .as_str()
        .strip_suffix("/v1/messages")
        .ok_or_else(|| bad(format!("{base_url:?} cannot take a path")))?;
    if base.ends_with("/v1") {
        return Err(bad(format!(
            "it ends in /v1, which is appended with /chat/completions: use {:?}",
            base.trim_end_matches("/v1")
        )));
    }
    let full = match azure {
        None => format!("{base}{PATH}"),
        Some(Azure { api_version: None }) => format!("{base}/openai/v1/chat/completions"),
        Some(Azure {
            api_version: Some(v),
        }) => {
            let ok = !v.is_empty()
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
            if !ok {
                return Err(TransportSetupError::QueryValue {
                    field: "api_version",
                });
            }
            format!("{base}/openai/deployments/_/chat/completions?api-version={v}")
        }
    };
    Url::parse(&full).map_err(|e| bad(format!("{full:?} is not a URL ({e})")))
}

// ---------------------------------------------------------------------------------------------
// response translation

/// The provider's headers with seawall's additions ([module docs](self)); `replaced` are
/// left out (the caller sets its own).
fn translated_headers(raw: &Headers, replaced: &[&str], dropped: &Dropped) -> Headers {
    let mut headers = Headers::default();
    for (name, value) in raw.iter() {
        if !replaced.iter().any(|r| name.eq_ignore_ascii_case(r)) {
            headers.insert(name, value);
        }
    }
    if raw.get("request-id").is_none() {
        if let Some(id) = raw.get("x-request-id") {
            headers.insert("request-id", id);
        }
    }
    for (from, to) in [
        (
            "x-ratelimit-limit-requests",
            "anthropic-ratelimit-requests-limit",
        ),
        (
            "x-ratelimit-remaining-requests",
            "anthropic-ratelimit-requests-remaining",
        ),
        (
            "x-ratelimit-limit-tokens",
            "anthropic-ratelimit-tokens-limit",
        ),
        (
            "x-ratelimit-remaining-tokens",
            "anthropic-ratelimit-tokens-remaining",
        ),
    ] {
        if let (Some(v), None) = (raw.get(from), raw.get(to)) {
            headers.insert(to, v);
        }
    }
    if !dropped.is_empty() {
        headers.insert(DROPPED_HEADER, dropped.header());
    }
    headers
}

fn translate_response(
    status: u16,
    raw: &Headers,
    body: bytes::Bytes,
    requested_model: &str,
    dropped: &Dropped,
) -> UpstreamResponse {
    let request_id = raw.get("request-id").or_else(|| raw.get("x-request-id"));
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();

    let mut status_out = status;
    let mut no_retry = false;
    let mut retry_after_ms = None;
    let new_body = match status {
        200..=299 => match &parsed {
            None => None,
            Some(v) => match from_chat::message(v, requested_model) {
                Ok(Some(message)) => Some(message),
                Ok(None) => {
                    status_out = 502;
                    let why = provider_message(parsed.as_ref(), &body).map_or_else(
                        || "no choices[0].message".to_owned(),
                        |m| format!("no choices[0].message; it said: {m}"),
                    );
                    let message = format!(
                        "the OpenAI-compatible provider answered {status} without a chat \
                         completion ({why})"
                    );
                    Some(error_body(502, &message, request_id, None))
                }
                Err(why) => {
                    status_out = 502;
                    let message = format!(
                        "the OpenAI-compatible provider answered {status} with a broken \
                         chat completion: {why}"
                    );
                    Some(error_body(502, &message, request_id, None))
                }
            },
        },
        400..=599 => {
            let error = parsed.as_ref().and_then(|v| v.get("error"));
            let said = |k: &str| error.and_then(|e| e.get(k)).and_then(Value::as_str);
            let quota = status == 429
                && (said("code") == Some("insufficient_quota")
                    || said("type") == Some("insufficient_quota"));
            no_retry = quota;
            if status == 429 && !quota {
                retry_after_ms = reset_hint(raw);
            }
            let message = provider_message(parsed.as_ref(), &body).unwrap_or_else(|| {
                format!("HTTP {status} from the OpenAI-compatible provider (no error message)")
            });
            // The provider's own code rides along where the classifier reads codes, for the
            // codes that change what an answer means (`insufficient_quota` may come in `type`
            // only); no other code is passed on, so none can be mistaken for an Anthropic one.
            let code = if quota {
                Some("insufficient_quota")
            } else {
                said("code").filter(|c| PASSED_CODES.contains(c))
            };
            Some(error_body(status, &message, request_id, code))
        }
        _ => None,
    };

    let mut replaced = Vec::with_capacity(2);
    if new_body.is_some() {
        replaced.push("content-length");
    }
    if no_retry {
        replaced.push("x-should-retry");
    }
    let mut headers = translated_headers(raw, &replaced, dropped);
    if no_retry {
        headers.insert("x-should-retry", "false");
    }
    if let Some(ms) = retry_after_ms {
        headers.insert("retry-after-ms", ms.to_string());
    }
    let body = match new_body {
        // Serializing a `Value` cannot fail; the original body is the fallback all the same.
        Some(v) => serde_json::to_vec(&v).map_or(body, bytes::Bytes::from),
        None => body,
    };
    UpstreamResponse {
        status: status_out,
        headers,
        body,
    }
}

/// A rate limit's wait from `x-ratelimit-reset-{requests,tokens}`, in whole milliseconds, when
/// the provider sent no `retry-after`: the reset of the exhausted dimension, else the longer.
fn reset_hint(raw: &Headers) -> Option<u64> {
    if raw.get("retry-after").is_some() || raw.get("retry-after-ms").is_some() {
        return None;
    }
    let reset = |dim: &str| {
        raw.get(&format!("x-ratelimit-reset-{dim}"))
            .and_then(parse_reset)
    };
    let exhausted = |dim: &str| raw.get(&format!("x-ratelimit-remaining-{dim}")) == Some("0");
    let wait = match (reset("requests"), reset("tokens")) {
        (Some(r), _) if exhausted("requests") => Some(r),
        (_, Some(t)) if exhausted("tokens") => Some(t),
        (r, t) => r.max(t),
    }?;
    Some(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1))
}

/// OpenAI's reset durations: `"1s"`, `"6m0s"`, `"20ms"`, `"1h2m3.5s"`, `"0.5s"`. `None` for
/// anything else, zero, or over a day.
pub fn parse_reset(text: &str) -> Option<Duration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = 0.0_f64;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (0.001, 2)
        } else if rest.starts_with('h') {
            (3600.0, 1)
        } else if rest.starts_with('m') {
            (60.0, 1)
        } else if rest.starts_with('s') {
            (1.0, 1)
        } else {
            return None;
        };
        total += number * unit;
        rest = &rest[len..];
    }
    (total > 0.0 && total <= 86_400.0).then(|| Duration::from_secs_f64(total))
}

/// What the provider said: `error.message`, a string `error`, a top-level `message`, or the
/// start of a non-JSON body.
fn provider_message(parsed: Option<&Value>, body: &[u8]) -> Option<String> {
    if let Some(v) = parsed {
        let said = v
            .pointer("/error/message")
            .or_else(|| v.get("error").filter(|e| e.is_string()))
            .or_else(|| v.get("message"))
            .and_then(Value::as_str);
        return said.map(str::to_owned);
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let quoted: String = text.chars().take(MAX_QUOTED).collect();
    let more = if quoted.len() < text.len() { "…" } else { "" };
    Some(format!("{quoted}{more}"))
}

/// `{"type":"error","error":{"type","message","details"?},"request_id"?}`; `code` is the
/// provider's own error code, passed on for the classifier.
fn error_body(status: u16, message: &str, request_id: Option<&str>, code: Option<&str>) -> Value {
    let mut body = json!({
        "type": "error",
        "error": {"type": seawall_actors::wire::error_type_of(status), "message": message},
    });
    if let Some(code) = code {
        body["error"]["details"] = json!({ "error_code": code });
    }
    if let Some(id) = request_id {
        body["request_id"] = Value::from(id);
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_appends_the_path_and_refuses_a_trailing_v1() {
        for (base, want) in [
            (
                "https://api.openai.com",
                "https://api.openai.com/v1/chat/completions",
            ),
            (
                "https://api.openai.com/",
                "https://api.openai.com/v1/chat/completions",
            ),
            (
                "https://api.groq.com/openai",
                "https://api.groq.com/openai/v1/chat/completions",
            ),
        ] {
            assert_eq!(endpoint(base, None).unwrap().as_str(), want, "{base}");
        }
        for base in ["https://api.openai.com/v1", "https://api.openai.com/v1/"] {
            let err = endpoint(base, None).unwrap_err().to_string();
            assert!(
                err.contains("/v1") && err.contains("https://api.openai.com\""),
                "{err}"
            );
        }
        let err = endpoint("not a url", None).unwrap_err().to_string();
        assert!(
            err.contains(DEFAULT_BASE_URL) && !err.contains("anthropic"),
            "{err}"
        );
    }

    #[test]
    fn azure_paths_name_the_deployment_and_the_version() {
        let keys = vec![ApiKey::new("azure-key-0123456789").unwrap()];
        let up = |v: Option<&str>| {
            OpenAiUpstream::new(
                keys.clone(),
                OpenAiOptions {
                    base_url: "https://res.openai.azure.com".into(),
                    azure: Some(Azure {
                        api_version: v.map(str::to_owned),
                    }),
                    ..OpenAiOptions::default()
                },
            )
        };
        let versioned = up(Some("2024-10-21")).unwrap();
        assert_eq!(
            versioned.url_for("gpt 4o/mini").as_str(),
            "https://res.openai.azure.com/openai/deployments/gpt%204o%2Fmini/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(
            versioned.wire.max_tokens,
            MaxTokensField::MaxCompletionTokens
        );
        let v1 = up(None).unwrap();
        assert_eq!(
            v1.url_for("gpt-4o").as_str(),
            "https://res.openai.azure.com/openai/v1/chat/completions"
        );
        for bad in ["", "2024 10", "v&x=1"] {
            assert!(
                matches!(
                    up(Some(bad)),
                    Err(TransportSetupError::QueryValue {
                        field: "api_version"
                    })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_length_field_follows_the_provider_unless_set() {
        let keys = vec![ApiKey::new("sk-test-0123456789").unwrap()];
        let field = |base: &str, set: Option<MaxTokensField>| {
            OpenAiUpstream::new(
                keys.clone(),
                OpenAiOptions {
                    base_url: base.into(),
                    max_tokens_field: set,
                    ..OpenAiOptions::default()
                },
            )
            .unwrap()
            .wire
            .max_tokens
        };
        assert_eq!(
            field("https://api.openai.com", None),
            MaxTokensField::MaxCompletionTokens
        );
        assert_eq!(
            field("http://127.0.0.1:8000", None),
            MaxTokensField::MaxTokens
        );
        assert_eq!(
            field(
                "http://127.0.0.1:8000",
                Some(MaxTokensField::MaxCompletionTokens)
            ),
            MaxTokensField::MaxCompletionTokens
        );
    }

    #[test]
    fn reset_durations_parse_in_openais_forms() {
        let ms = |t: &str| parse_reset(t).map(|d| d.as_millis());
        assert_eq!(ms("1s"), Some(1000));
        assert_eq!(ms("6m0s"), Some(360_000));
        assert_eq!(ms("20ms"), Some(20));
        assert_eq!(ms("1h2m3.5s"), Some(3_723_500));
        assert_eq!(ms("0.5s"), Some(500));
        for bad in ["", "0s", "soon", "5", "1d", "-1s", "25h"] {
            assert_eq!(ms(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_rate_limit_waits_for_the_exhausted_dimensions_reset() {
        let mut h = Headers::default();
        h.insert("x-ratelimit-reset-requests", "2s");
        h.insert("x-ratelimit-reset-tokens", "6m0s");
        h.insert("x-ratelimit-remaining-requests", "0");
        h.insert("x-ratelimit-remaining-tokens", "5000");
        assert_eq!(reset_hint(&h), Some(2000));
        let mut h = Headers::default();
        h.insert("x-ratelimit-reset-requests", "2s");
        h.insert("x-ratelimit-reset-tokens", "6m0s");
        h.insert("x-ratelimit-remaining-requests", "3");
        assert_eq!(
            reset_hint(&h),
            Some(360_000),
            "neither exhausted: the longer"
        );
        h.insert("retry-after", "1");
        assert_eq!(reset_hint(&h), None, "the provider's own hint wins");
        assert_eq!(reset_hint(&Headers::default()), None);
    }

    #[test]
    fn insufficient_quota_carries_the_providers_code_for_the_classifier() {
        let body = br#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#;
        let r = translate_response(
            429,
            &Headers::default(),
            bytes::Bytes::from_static(body),
            "m",
            &Dropped::default(),
        );
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["error"]["details"]["error_code"], "insufficient_quota");
        assert_eq!(r.headers.get("x-should-retry"), Some("false"));
        assert_eq!(r.headers.get("retry-after-ms"), None);
    }

    #[test]
    fn error_types_follow_the_table() {
        for (s, t) in [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
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
            assert_eq!(seawall_actors::wire::error_type_of(s), t, "{s}");
        }
    }

    #[test]
    fn non_json_error_bodies_are_quoted_briefly() {
        let long = "x".repeat(2 * MAX_QUOTED);
        let m = provider_message(None, long.as_bytes()).unwrap();
        assert_eq!(m.chars().count(), MAX_QUOTED + 1);
        assert_eq!(provider_message(None, b"  "), None);
        assert_eq!(
            provider_message(Some(&json!({"error": "gone"})), b"").as_deref(),
            Some("gone")
        );
    }
}
