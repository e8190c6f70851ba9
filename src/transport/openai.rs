//! [`Upstream`] for OpenAI-compatible chat completions over HTTP (reqwest, rustls): the other
//! provider of a cross-provider fallback chain.
//!
//! The runtime speaks the Anthropic Messages API everywhere above the seam, so this transport
//! translates both ways: an [`Attempt`]'s Messages request body becomes
//! `POST {base_url}/v1/chat/completions` (`Authorization: Bearer KEY`), and the answer comes back
//! as a Messages-API-shaped [`UpstreamResponse`]. Classification, usage settlement, the governor
//! and [`Reply::text`](seawall_actors::Reply::text) then work unchanged.
//!
//! # Request: Messages → chat completions
//!
//! | Messages request field             | sent as                                                          |
//! |------------------------------------|------------------------------------------------------------------|
//! | `model`, `max_tokens`              | `model`, `max_tokens`                                            |
//! | `temperature`, `top_p`             | `temperature`, `top_p` (values unchanged)                        |
//! | `stop_sequences`                   | `stop`                                                           |
//! | `system` (string or text blocks)   | a leading `{"role":"system","content":TEXT}`                     |
//! | `messages[]` (string or text blocks) | `{"role":"user"\|"assistant","content":TEXT}`                  |
//! | `metadata`, `stream: false`        | dropped: they do not change the answer                           |
//! | `top_k`, `service_tier`, `cache_control` (top level or on a block), `citations` on a text block | dropped **and reported** (below) |
//! | `tools`, `tool_choice`             | refused                                                          |
//! | `thinking`                         | refused                                                          |
//! | `stream: true`                     | refused (this transport reads whole answers)                     |
//! | `tool_use`, `tool_result`, `image`, `document`, `thinking`, ... blocks | refused            |
//! | any other field                    | refused (it may change the answer; seawall cannot know)          |
//!
//! A field whose value is `null` counts as absent. Text blocks are joined with `"\n"`.
//!
//! Lossy-but-answerable features are dropped and named, first occurrence first, in the response
//! header [`DROPPED_HEADER`] (`seawall-translation-dropped: top_k,cache_control`), so the reply
//! says what the provider never saw. Whatever cannot be translated without changing what the
//! request asks for is refused before anything is sent, with
//! [`TransportError::Invalid`]`("… cannot be sent to an OpenAI-compatible provider: FIELD")`.
//! The runtime classifies `Invalid` as a request-scoped permanent failure: the call ends there,
//! so put OpenAI-compatible hops only in chains whose calls are plain text conversations.
//!
//! # Response: chat completion → Messages
//!
//! - **2xx with a chat completion**: `{"id":ID,"type":"message","role":"assistant","model":M,
//!   "content":[{"type":"text","text":T}],"stop_reason":R,"stop_sequence":null,
//!   "usage":{"input_tokens":prompt_tokens,"output_tokens":completion_tokens}}`, where `M` is the
//!   response's `model` (else the requested one), `content` is `[]` when the text is empty (an
//!   empty text block is not valid in a later request), and `R` maps `finish_reason`: `stop` →
//!   `end_turn` (a stop sequence cannot be told apart from a natural end), `length` →
//!   `max_tokens`, `content_filter` → `refusal`, `tool_calls`/`function_call` → `tool_use`,
//!   `null` → `end_turn`; any other value is passed on unchanged. A message with no content but
//!   a `refusal` gives the refusal text with `stop_reason: refusal`.
//! - **2xx whose body is not JSON**: passed through unchanged; the classifier treats it as a
//!   broken answer and retries.
//! - **2xx JSON that is not a chat completion** (no `choices[0].message`, such as an error
//!   object some gateways send with a 200): answered as `502` with an `api_error` body carrying
//!   the provider's message, so it is retried rather than served as an empty success.
//! - **4xx/5xx**: the status is kept; the body becomes
//!   `{"type":"error","error":{"type":T,"message":PROVIDER_MESSAGE},"request_id":ID}` with `T`
//!   from the status (400 `invalid_request_error`, 401 `authentication_error`, 402
//!   `billing_error`, 403 `permission_error`, 404 `not_found_error`, 413 `request_too_large`, 429
//!   `rate_limit_error`, 504 `gateway_timeout_error`, 529 `overloaded_error`, other 5xx
//!   `api_error`, other 4xx `invalid_request_error`). No Anthropic `error.details.error_code` is
//!   ever invented.
//! - **429 `insufficient_quota`** (OpenAI's "out of credit", in `error.code` or `error.type`):
//!   retrying does not help, but it is not an Anthropic spend cap either, so the status stays 429
//!   and the header `x-should-retry: false` is set (replacing any the provider sent). The
//!   classifier then ends that model's hop as a permanent, model-scoped failure; the chain moves
//!   on.
//! - Other statuses (3xx) are passed through unchanged.
//!
//! Headers: all of the provider's headers are kept (`retry-after`, `retry-after-ms` and
//! `x-should-retry` included), except `content-length` when the body was rewritten. Added:
//! `request-id` from `x-request-id` (when the provider sent no `request-id`),
//! `anthropic-ratelimit-requests-{limit,remaining}` from `x-ratelimit-{limit,remaining}-requests`
//! (the governor reads these), and `anthropic-ratelimit-tokens-{limit,remaining}` from
//! `x-ratelimit-{limit,remaining}-tokens` (OpenAI counts input and output tokens together, so
//! they are informational: the governor reads only the input and output dimensions).
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

use std::fmt;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::Url;
use seawall_actors::upstream::{
    Attempt, Headers, TransportError, Upstream, UpstreamFuture, UpstreamResponse,
};
use serde_json::{json, Map, Value};

use super::anthropic;
use super::http::{body_error, http_client, send_error, IDEMPOTENCY_KEY};
pub use super::TransportSetupError;
use crate::secret::{ApiKey, Redactor};

/// OpenAI's own base URL. Other OpenAI-compatible providers need their own: give the part
/// before `/v1/chat/completions` (for example `https://api.groq.com/openai`).
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com";

/// The response header naming the request features that were dropped in translation
/// (comma-separated, e.g. `top_k,cache_control`). Absent when nothing was dropped.
pub const DROPPED_HEADER: &str = "seawall-translation-dropped";

const PATH: &str = "/v1/chat/completions";
const OPENAI_ORGANIZATION: HeaderName = HeaderName::from_static("openai-organization");
/// The longest piece of a non-JSON error body quoted in a translated error message.
const MAX_QUOTED: usize = 500;

/// Settings for an [`OpenAiUpstream`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenAiOptions {
    /// Scheme, host and optional path prefix; `/v1/chat/completions` is appended (a trailing
    /// slash is fine, a trailing `/v1` is refused because it would be doubled). Must be `http`
    /// or `https`, without credentials, query or fragment. Default [`DEFAULT_BASE_URL`], which
    /// is right for OpenAI only: set it for any other provider.
    pub base_url: String,
    /// Time allowed to establish a connection (TCP and TLS). Default 5 s. The whole attempt is
    /// additionally bounded by [`Attempt::timeout`].
    pub connect_timeout: Duration,
    /// How long an idle pooled connection is kept. Default 90 s.
    pub pool_idle_timeout: Duration,
    /// Sent as `OpenAI-Organization` when set. Default `None`.
    pub organization: Option<String>,
}

impl Default for OpenAiOptions {
    fn default() -> Self {
        Self {
            base_url: DEFAULT_BASE_URL.to_owned(),
            connect_timeout: Duration::from_secs(5),
            pool_idle_timeout: Duration::from_secs(90),
            organization: None,
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
    /// One ready-made, sensitive-marked `Bearer KEY` value per key slot.
    auth_values: Vec<HeaderValue>,
    organization: Option<HeaderValue>,
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
    /// carries credentials, a query or a fragment, or ends in `/v1`), `organization` is not a
    /// valid header value (`field: "organization"`), or the HTTP client cannot be built.
    pub fn new(keys: Vec<ApiKey>, options: OpenAiOptions) -> Result<Self, TransportSetupError> {
        if keys.is_empty() {
            return Err(TransportSetupError::NoKeys);
        }
        let endpoint = endpoint(&options.base_url)?;
        let organization = options
            .organization
            .as_deref()
            .map(HeaderValue::from_str)
            .transpose()
            .map_err(|_| TransportSetupError::HeaderValue {
                field: "organization",
            })?;
        let auth_values = keys
            .iter()
            .map(|k| {
                // An ApiKey is visible ASCII, so this cannot fail; say so without the key if it does.
                let mut v =
                    HeaderValue::from_str(&format!("Bearer {}", k.expose())).map_err(|_| {
                        TransportSetupError::HeaderValue {
                            field: "keys (an ApiKey)",
                        }
                    })?;
                v.set_sensitive(true);
                Ok(v)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let client = http_client(options.connect_timeout, options.pool_idle_timeout)?;
        Ok(Self {
            client,
            endpoint,
            redactor: Redactor::new(&keys),
            keys,
            auth_values,
            organization,
            options,
        })
    }

    /// The full URL attempts are posted to.
    pub fn endpoint(&self) -> &str {
        self.endpoint.as_str()
    }

    /// The options this upstream was built with.
    pub fn options(&self) -> &OpenAiOptions {
        &self.options
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

    async fn exchange(&self, attempt: &Attempt) -> Result<UpstreamResponse, TransportError> {
        let Some(auth) = self.auth_values.get(attempt.key) else {
            return Err(TransportError::Invalid(format!(
                "key slot {} is out of range: this upstream holds {} key(s), slots 0..{}",
                attempt.key,
                self.keys.len(),
                self.keys.len()
            )));
        };
        let translated = translate_request(&attempt.body, &attempt.model)?;
        let mut request = self
            .client
            .post(self.endpoint.clone())
            .timeout(attempt.timeout)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(AUTHORIZATION, auth.clone());
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
        let response = request
            .body(translated.body)
            .send()
            .await
            .map_err(|e| send_error(&e, attempt.timeout))?;

        let status = response.status().as_u16();
        let mut headers = Vec::with_capacity(response.headers().len() + 8);
        for (name, value) in response.headers() {
            // `to_str` would also drop valid UTF-8 outside ASCII; only skip what is not text.
            if let Ok(value) = std::str::from_utf8(value.as_bytes()) {
                headers.push((name.as_str().to_owned(), value.to_owned()));
            }
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| body_error(&e, attempt.timeout))?;
        let mut answer = translate_response(
            status,
            headers,
            body,
            &translated.model,
            &translated.dropped,
        );
        // An answer that is not a success passes on what the provider said (a 2xx without a
        // completion becomes a 502 quoting it): a key echoed there (or anything shaped like
        // one) loses it here, after translation, so the quote is checked as the client gets it.
        if !(200..300).contains(&answer.status) {
            if let std::borrow::Cow::Owned(clean) = self.redactor.redact(&answer.body) {
                answer.body = bytes::Bytes::from(clean);
            }
        }
        Ok(answer)
    }
}

impl Upstream for OpenAiUpstream {
    fn send(&self, attempt: Attempt) -> UpstreamFuture<'_> {
        Box::pin(self.send_attempt(attempt))
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

/// `{base_url}/v1/chat/completions`, after the Anthropic transport's checks of `base_url`.
fn endpoint(base_url: &str) -> Result<Url, TransportSetupError> {
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
    let full = format!("{base}{PATH}");
    Url::parse(&full).map_err(|e| bad(format!("{full:?} is not a URL ({e})")))
}

// ---------------------------------------------------------------------------------------------
// request translation

/// A Messages request rewritten for chat completions.
struct Translated {
    body: Vec<u8>,
    /// The model asked for, for the response when the provider names none.
    model: String,
    /// Lossy-but-answerable features left out, first occurrence first, no repeats.
    dropped: Vec<&'static str>,
}

/// Refuse what cannot be translated without changing what the request asks for.
fn refuse(what: &str, field: &str) -> TransportError {
    TransportError::Invalid(format!(
        "{what} cannot be sent to an OpenAI-compatible provider: {field}"
    ))
}

fn note(dropped: &mut Vec<&'static str>, feature: &'static str) {
    if !dropped.contains(&feature) {
        dropped.push(feature);
    }
}

fn translate_request(body: &[u8], attempt_model: &str) -> Result<Translated, TransportError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| TransportError::Invalid(format!("the request body is not valid JSON: {e}")))?;
    let Value::Object(fields) = value else {
        return Err(TransportError::Invalid(
            "the request body must be a JSON object".to_owned(),
        ));
    };
    let mut dropped = Vec::new();
    let mut system = None;
    let mut messages = None;
    let mut out = Map::new();
    for (key, value) in &fields {
        if value.is_null() {
            continue;
        }
        match key.as_str() {
            "model" | "max_tokens" | "temperature" | "top_p" | "stop_sequences" => {}
            "system" => system = Some(text_of(value, "system", &mut dropped)?),
            "messages" => messages = Some(translate_messages(value, &mut dropped)?),
            "metadata" => {}
            "stream" => {
                if value.as_bool() != Some(false) {
                    return Err(refuse("streaming (only `stream: false`)", "stream"));
                }
            }
            "top_k" => note(&mut dropped, "top_k"),
            "service_tier" => note(&mut dropped, "service_tier"),
            "cache_control" => note(&mut dropped, "cache_control"),
            "tools" | "tool_choice" => return Err(refuse("tool use", key)),
            "thinking" => return Err(refuse("extended thinking", key)),
            other => {
                return Err(refuse(
                    "a field seawall does not know how to translate",
                    other,
                ))
            }
        }
    }
    let model = match fields.get("model") {
        Some(Value::String(m)) => m.clone(),
        _ => attempt_model.to_owned(),
    };
    out.insert("model".into(), Value::from(model.clone()));
    let mut chat = Vec::new();
    if let Some(text) = system {
        chat.push(json!({"role": "system", "content": text}));
    }
    chat.extend(messages.unwrap_or_default());
    out.insert("messages".into(), Value::Array(chat));
    for (from, to) in [
        ("max_tokens", "max_tokens"),
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("stop_sequences", "stop"),
    ] {
        if let Some(v) = fields.get(from).filter(|v| !v.is_null()) {
            out.insert(to.into(), v.clone());
        }
    }
    let body = serde_json::to_vec(&Value::Object(out))
        .map_err(|e| TransportError::Invalid(format!("the translated body: {e}")))?;
    Ok(Translated {
        body,
        model,
        dropped,
    })
}

fn translate_messages(
    value: &Value,
    dropped: &mut Vec<&'static str>,
) -> Result<Vec<Value>, TransportError> {
    let Value::Array(list) = value else {
        return Err(TransportError::Invalid(
            "`messages` must be an array".into(),
        ));
    };
    let mut out = Vec::with_capacity(list.len() + 1);
    for (i, message) in list.iter().enumerate() {
        let Value::Object(message) = message else {
            return Err(TransportError::Invalid(format!(
                "messages[{i}] must be an object with `role` and `content`"
            )));
        };
        if let Some(other) = message.keys().find(|k| *k != "role" && *k != "content") {
            return Err(refuse(
                "a message field seawall does not know how to translate",
                &format!("messages[{i}].{other}"),
            ));
        }
        let role = match message.get("role").and_then(Value::as_str) {
            Some(role @ ("user" | "assistant")) => role,
            _ => {
                return Err(TransportError::Invalid(format!(
                    "messages[{i}].role must be \"user\" or \"assistant\""
                )))
            }
        };
        let content = message.get("content").unwrap_or(&Value::Null);
        let text = text_of(content, &format!("messages[{i}].content"), dropped)?;
        out.push(json!({"role": role, "content": text}));
    }
    Ok(out)
}

/// The text of a `system` or message `content`: a string, or text blocks joined with `"\n"`.
fn text_of(
    value: &Value,
    path: &str,
    dropped: &mut Vec<&'static str>,
) -> Result<String, TransportError> {
    let blocks = match value {
        Value::String(s) => return Ok(s.clone()),
        Value::Array(blocks) => blocks,
        _ => {
            return Err(TransportError::Invalid(format!(
                "{path} must be a string or an array of content blocks"
            )))
        }
    };
    let mut parts = Vec::with_capacity(blocks.len());
    for (j, block) in blocks.iter().enumerate() {
        let at = format!("{path}[{j}]");
        let Value::Object(block) = block else {
            return Err(TransportError::Invalid(format!(
                "{at} must be a content block object"
            )));
        };
        match block.get("type").and_then(Value::as_str) {
            Some("text") => {}
            Some(kind) => {
                return Err(refuse(
                    &format!("a {kind} block"),
                    &format!("{at} ({kind})"),
                ))
            }
            None => {
                return Err(TransportError::Invalid(format!(
                    "{at} has no string `type`"
                )))
            }
        }
        for (key, v) in block {
            match key.as_str() {
                "type" | "text" => {}
                _ if v.is_null() => {}
                "cache_control" => note(dropped, "cache_control"),
                "citations" => note(dropped, "citations"),
                other => {
                    return Err(refuse(
                        "a text block field seawall does not know how to translate",
                        &format!("{at}.{other}"),
                    ))
                }
            }
        }
        match block.get("text") {
            Some(Value::String(t)) => parts.push(t.as_str()),
            _ => {
                return Err(TransportError::Invalid(format!(
                    "{at}.text must be a string"
                )))
            }
        }
    }
    Ok(parts.join("\n"))
}

// ---------------------------------------------------------------------------------------------
// response translation

fn translate_response(
    status: u16,
    raw: Vec<(String, String)>,
    body: bytes::Bytes,
    requested_model: &str,
    dropped: &[&'static str],
) -> UpstreamResponse {
    let get = |name: &str| {
        raw.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let request_id = get("request-id").or_else(|| get("x-request-id"));
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();

    let mut status_out = status;
    let mut no_retry = false;
    let new_body = match status {
        200..=299 => match &parsed {
            None => None,
            Some(v) => match message_from_completion(v, requested_model) {
                Some(message) => Some(message),
                None => {
                    status_out = 502;
                    let why = provider_message(parsed.as_ref(), &body).map_or_else(
                        || "no choices[0].message".to_owned(),
                        |m| format!("no choices[0].message; it said: {m}"),
                    );
                    let message = format!(
                        "the OpenAI-compatible provider answered {status} without a chat \
                         completion ({why})"
                    );
                    Some(error_body(502, &message, request_id))
                }
            },
        },
        400..=599 => {
            let error = parsed.as_ref().and_then(|v| v.get("error"));
            no_retry = status == 429
                && ["code", "type"].iter().any(|k| {
                    error.and_then(|e| e.get(*k)).and_then(Value::as_str)
                        == Some("insufficient_quota")
                });
            let message = provider_message(parsed.as_ref(), &body).unwrap_or_else(|| {
                format!("HTTP {status} from the OpenAI-compatible provider (no error message)")
            });
            Some(error_body(status, &message, request_id))
        }
        _ => None,
    };

    let mut headers = Headers::default();
    for (name, value) in &raw {
        let rewritten = new_body.is_some() && name.eq_ignore_ascii_case("content-length");
        let overridden = no_retry && name.eq_ignore_ascii_case("x-should-retry");
        if !rewritten && !overridden {
            headers.insert(name, value.as_str());
        }
    }
    if no_retry {
        headers.insert("x-should-retry", "false");
    }
    if get("request-id").is_none() {
        if let Some(id) = get("x-request-id") {
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
        if let (Some(v), None) = (get(from), get(to)) {
            headers.insert(to, v);
        }
    }
    if !dropped.is_empty() {
        headers.insert(DROPPED_HEADER, dropped.join(","));
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

/// The Messages API body for a chat completion, or `None` when `v` is not one.
fn message_from_completion(v: &Value, requested_model: &str) -> Option<Value> {
    let choice = v.get("choices")?.as_array()?.first()?;
    let message = choice.get("message")?.as_object()?;
    let mut text = match message.get("content") {
        Some(Value::String(s)) => s.clone(),
        // Some providers send content parts even in answers.
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    };
    let mut stop_reason = match choice.get("finish_reason") {
        None | Some(Value::Null) => Value::from("end_turn"),
        Some(Value::String(r)) => Value::from(match r.as_str() {
            "stop" => "end_turn",
            "length" => "max_tokens",
            "content_filter" => "refusal",
            "tool_calls" | "function_call" => "tool_use",
            other => other,
        }),
        Some(other) => other.clone(),
    };
    if text.is_empty() {
        if let Some(refusal) = message.get("refusal").and_then(Value::as_str) {
            text = refusal.to_owned();
            stop_reason = Value::from("refusal");
        }
    }
    let content = if text.is_empty() {
        json!([])
    } else {
        json!([{"type": "text", "text": text}])
    };
    let usage = v.get("usage");
    let tokens = |k: &str| {
        usage
            .and_then(|u| u.get(k))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    Some(json!({
        "id": v.get("id").cloned().unwrap_or(Value::Null),
        "type": "message",
        "role": "assistant",
        "model": v.get("model").and_then(Value::as_str).unwrap_or(requested_model),
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": {
            "input_tokens": tokens("prompt_tokens"),
            "output_tokens": tokens("completion_tokens"),
        },
    }))
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

/// `{"type":"error","error":{"type","message"},"request_id"?}`.
fn error_body(status: u16, message: &str, request_id: Option<&str>) -> Value {
    let mut body = json!({
        "type": "error",
        "error": {"type": seawall_actors::wire::error_type_of(status), "message": message},
    });
    if let Some(id) = request_id {
        body["request_id"] = Value::from(id);
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    fn translate(body: Value) -> Result<(Value, Vec<&'static str>), TransportError> {
        let t = translate_request(body.to_string().as_bytes(), "m")?;
        let v =
            serde_json::from_slice(&t.body).map_err(|e| TransportError::Invalid(e.to_string()))?;
        Ok((v, t.dropped))
    }

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
            assert_eq!(endpoint(base).unwrap().as_str(), want, "{base}");
        }
        for base in ["https://api.openai.com/v1", "https://api.openai.com/v1/"] {
            let err = endpoint(base).unwrap_err().to_string();
            assert!(
                err.contains("/v1") && err.contains("https://api.openai.com\""),
                "{err}"
            );
        }
        let err = endpoint("not a url").unwrap_err().to_string();
        assert!(
            err.contains(DEFAULT_BASE_URL) && !err.contains("anthropic"),
            "{err}"
        );
    }

    #[test]
    fn nulls_count_as_absent_and_text_blocks_join() {
        let (v, dropped) = translate(json!({
            "model": "m", "max_tokens": 3, "tools": null, "system": [
                {"type": "text", "text": "a"}, {"type": "text", "text": "b", "cache_control": null}],
            "messages": [{"role": "user", "content": "hi"}]
        }))
        .unwrap();
        assert_eq!(
            v["messages"][0],
            json!({"role": "system", "content": "a\nb"})
        );
        assert!(dropped.is_empty());
    }

    #[test]
    fn completions_become_messages() {
        let c = json!({"id": "chatcmpl-1", "choices": [{"message": {"content": null,
            "refusal": "no"}, "finish_reason": "stop"}]});
        let m = message_from_completion(&c, "asked").unwrap();
        assert_eq!(m["model"], "asked");
        assert_eq!(m["stop_reason"], "refusal");
        assert_eq!(m["content"][0]["text"], "no");
        assert_eq!(m["usage"], json!({"input_tokens": 0, "output_tokens": 0}));
        let empty = json!({"id": "x", "choices": [{"message": {"content": ""},
            "finish_reason": "content_filter"}]});
        let m = message_from_completion(&empty, "asked").unwrap();
        assert_eq!(m["content"], json!([]));
        assert_eq!(m["stop_reason"], "refusal");
        assert!(message_from_completion(&json!({"choices": []}), "m").is_none());
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
