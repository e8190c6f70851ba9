//! [`Upstream`] for Claude on Google Vertex AI (`rawPredict`, `streamRawPredict`,
//! `count-tokens:rawPredict`), with `Authorization: Bearer` from Application Default
//! Credentials through `gcp_auth`.
//!
//! What goes out: `POST {base}/v1/projects/{project}/locations/{region}/publishers/anthropic/
//! models/{id}:rawPredict` (`:streamRawPredict` for streams) with the Messages request minus
//! `model`, plus `anthropic_version: "vertex-2023-10-16"` (`stream` stays, as the official SDK
//! sends it); `anthropic-beta` goes as the header, configured values before the caller's.
//!
//! What comes back: the Anthropic answer and stream as they are (the stream is read by the same
//! SSE reader as the Anthropic transport's), Anthropic-shaped errors (the 529 of an overloaded
//! model) unchanged, and Google-shaped errors (`{"error": {"code", "status", "message"}}`)
//! as the Anthropic error they mean ([`map_google_error`]).
//!
//! Tokens: `gcp_auth` finds the credentials once (`GOOGLE_APPLICATION_CREDENTIALS`'s service
//! account, whose key signs a JWT exchanged at the file's `token_uri`; gcloud's
//! `application_default_credentials.json`; the metadata server), caches each token and fetches
//! a new one shortly before it expires: a call never waits for a token while the cached one is
//! good. No credentials, or a token that cannot be had, is a 401 `authentication_error`: the
//! core quarantines this upstream's key and checks it again later. Tokens go on the wire
//! (sensitive-marked) and nowhere else.

use std::borrow::Cow;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::Url;
use seawall_actors::upstream::{
    Attempt, CountFuture, StreamBody, StreamFuture, StreamResponse, TransportError, Upstream,
    UpstreamFuture, UpstreamResponse,
};
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, OnceCell};

use super::http::{
    base_endpoint, capture_headers, http_client, is_event_stream, merge_betas, pump, read_rest,
    send_head, send_whole, StreamLog, STREAM_CHANNEL,
};
pub use super::TransportSetupError;
use crate::secret::Redactor;

/// The `anthropic_version` Vertex's Claude models take.
pub const ANTHROPIC_VERSION: &str = "vertex-2023-10-16";
/// The OAuth scope the token is asked for.
pub const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
const ANTHROPIC_BETA: HeaderName = HeaderName::from_static("anthropic-beta");

/// The default endpoint of a region (`global`: the global endpoint).
pub fn default_base_url(region: &str) -> String {
    if region == "global" {
        "https://aiplatform.googleapis.com".to_owned()
    } else {
        format!("https://{region}-aiplatform.googleapis.com")
    }
}

/// Where a Vertex upstream's tokens come from.
#[derive(Clone, Default)]
pub enum GoogleCredentials {
    /// Application Default Credentials, as `gcp_auth::provider` finds them.
    #[default]
    Adc,
    /// This service-account key file (what `GOOGLE_APPLICATION_CREDENTIALS` names).
    ServiceAccountFile(PathBuf),
    /// A token provider of the embedding app's own.
    Provider(Arc<dyn gcp_auth::TokenProvider>),
}

impl fmt::Debug for GoogleCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GoogleCredentials::Adc => f.write_str("Adc"),
            GoogleCredentials::ServiceAccountFile(p) => {
                f.debug_tuple("ServiceAccountFile").field(p).finish()
            }
            GoogleCredentials::Provider(_) => f.write_str("Provider(..)"),
        }
    }
}

/// Settings for a [`VertexUpstream`].
#[derive(Clone, Debug)]
pub struct VertexOptions {
    /// The Google Cloud project.
    pub project: String,
    /// The region (`us-east5`, `europe-west1`, ...) or `global`.
    pub region: String,
    /// Scheme, host and optional path prefix. Default [`default_base_url`] of the region.
    pub base_url: Option<String>,
    /// Where tokens come from. Default: Application Default Credentials.
    pub credentials: GoogleCredentials,
    /// `anthropic-beta` values (a comma list) sent with every request, before the caller's.
    pub beta: Option<String>,
    /// Time allowed to establish a connection. Default 5 s.
    pub connect_timeout: Duration,
    /// How long an idle pooled connection is kept. Default 90 s.
    pub pool_idle_timeout: Duration,
}

impl VertexOptions {
    /// Options for `project` in `region` with every default.
    pub fn new(project: &str, region: &str) -> Self {
        Self {
            project: project.to_owned(),
            region: region.to_owned(),
            base_url: None,
            credentials: GoogleCredentials::default(),
            beta: None,
            connect_timeout: Duration::from_secs(5),
            pool_idle_timeout: Duration::from_secs(90),
        }
    }
}

/// Claude on Vertex AI as an [`Upstream`]. Cheap to share (`Arc` it).
pub struct VertexUpstream {
    client: reqwest::Client,
    /// `{base}/v1/projects/{project}/locations/{region}/publishers/anthropic/models/`.
    models: String,
    tokens: OnceCell<Arc<dyn gcp_auth::TokenProvider>>,
    redactor: Redactor,
    options: VertexOptions,
}

impl VertexUpstream {
    /// Check the options and build the HTTP client once; the credentials are found on the
    /// first call.
    ///
    /// # Errors
    ///
    /// [`TransportSetupError::BaseUrl`] for an unusable `base_url`,
    /// [`TransportSetupError::HeaderValue`] for a `beta` that cannot be sent,
    /// [`TransportSetupError::Client`] when the HTTP client cannot be built.
    pub fn new(options: VertexOptions) -> Result<Self, TransportSetupError> {
        let base_url = options
            .base_url
            .clone()
            .unwrap_or_else(|| default_base_url(&options.region));
        let path = format!(
            "/v1/projects/{}/locations/{}/publishers/anthropic/models/",
            encode(&options.project),
            encode(&options.region)
        );
        let models = base_endpoint(&base_url, &default_base_url("us-east5"), &path)?;
        if let Some(beta) = &options.beta {
            if HeaderValue::from_str(beta).is_err() {
                return Err(TransportSetupError::HeaderValue { field: "beta" });
            }
        }
        let client = http_client(options.connect_timeout, options.pool_idle_timeout)?;
        Ok(Self {
            client,
            models: models.to_string(),
            tokens: OnceCell::new(),
            redactor: Redactor::new(&[]),
            options,
        })
    }

    /// The options this upstream was built with.
    pub fn options(&self) -> &VertexOptions {
        &self.options
    }

    fn url(&self, id: &str, method: &str) -> Result<Url, TransportError> {
        let full = format!("{}{}:{method}", self.models, encode(id));
        Url::parse(&full)
            .map_err(|e| TransportError::Invalid(format!("model id {id:?} makes no URL: {e}")))
    }

    async fn provider(&self) -> Result<&Arc<dyn gcp_auth::TokenProvider>, String> {
        self.tokens
            .get_or_try_init(|| async {
                match &self.options.credentials {
                    GoogleCredentials::Provider(p) => Ok(Arc::clone(p)),
                    GoogleCredentials::ServiceAccountFile(path) => {
                        gcp_auth::CustomServiceAccount::from_file(path)
                            .map(|a| Arc::new(a) as Arc<dyn gcp_auth::TokenProvider>)
                            .map_err(|e| {
                                format!(
                                    "the service account file {} is not usable: {e}",
                                    path.display()
                                )
                            })
                    }
                    GoogleCredentials::Adc => gcp_auth::provider()
                        .await
                        .map_err(|e| format!("no Application Default Credentials found: {e}")),
                }
            })
            .await
    }

    /// The bearer header value, or the 401 that stands for "no token".
    async fn bearer(&self) -> Result<HeaderValue, UpstreamResponse> {
        let token = match self.provider().await {
            Ok(p) => p.token(&[SCOPE]).await.map_err(|e| e.to_string()),
            Err(why) => Err(why),
        };
        let token = token.map_err(|why| {
            let body = json!({"type": "error", "error": {"type": "authentication_error",
                "message": format!("no Google access token: {why}")}});
            UpstreamResponse::new(401, body.to_string())
        })?;
        let mut value = HeaderValue::from_str(&format!("Bearer {}", token.as_str()))
            .map_err(|_| UpstreamResponse::new(401, r#"{"type":"error","error":{"type":"authentication_error","message":"the access token is not a valid header value"}}"#))?;
        value.set_sensitive(true);
        Ok(value)
    }

    /// The rawPredict body: the Messages request without `model`, with `anthropic_version`.
    fn body(attempt: &Attempt, keep_model: bool) -> Result<Bytes, TransportError> {
        let mut body: Map<String, Value> = serde_json::from_slice(&attempt.body)
            .map_err(|e| TransportError::Invalid(format!("the body is not a JSON object: {e}")))?;
        if !keep_model {
            body.remove("model");
        }
        body.insert("anthropic_version".into(), Value::from(ANTHROPIC_VERSION));
        Ok(Bytes::from(serde_json::to_vec(&body).unwrap_or_default()))
    }

    async fn request(
        &self,
        attempt: &Attempt,
        url: Url,
        body: Bytes,
    ) -> Result<reqwest::RequestBuilder, UpstreamResponse> {
        let bearer = self.bearer().await?;
        let mut request = self
            .client
            .post(url)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(AUTHORIZATION, bearer);
        let betas = merge_betas(
            self.options.beta.as_deref(),
            attempt.forward.beta.as_deref(),
        );
        if !betas.is_empty() {
            if let Ok(v) = HeaderValue::from_str(&betas.join(",")) {
                request = request.header(ANTHROPIC_BETA, v);
            }
        }
        Ok(request.body(body))
    }

    /// An error answer in the Anthropic shape, without anything that looks like a key.
    fn error_answer(
        &self,
        status: u16,
        headers: seawall_actors::upstream::Headers,
        raw: Bytes,
    ) -> UpstreamResponse {
        let (status, body) = map_google_error(status, raw);
        let body = match self.redactor.redact(&body) {
            Cow::Borrowed(_) => body,
            Cow::Owned(clean) => Bytes::from(clean),
        };
        UpstreamResponse {
            status,
            headers,
            body,
        }
    }

    async fn send_attempt(&self, attempt: Attempt) -> Result<UpstreamResponse, TransportError> {
        let started = Instant::now();
        let result = self.unary(&attempt, "rawPredict", false).await;
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        match &result {
            Ok(r) => {
                tracing::debug!(model = %attempt.model, status = r.status, elapsed_ms, "vertex attempt answered")
            }
            Err(e) => {
                tracing::debug!(model = %attempt.model, error = %e, elapsed_ms, "vertex attempt failed")
            }
        }
        result
    }

    async fn unary(
        &self,
        attempt: &Attempt,
        method: &str,
        keep_model: bool,
    ) -> Result<UpstreamResponse, TransportError> {
        let id = if keep_model {
            "count-tokens"
        } else {
            attempt.model.as_str()
        };
        let url = self.url(id, method)?;
        let body = Self::body(attempt, keep_model)?;
        let request = match self.request(attempt, url, body).await {
            Ok(r) => r,
            Err(no_token) => return Ok(no_token),
        };
        let UpstreamResponse {
            status,
            headers,
            body: raw,
        } = send_whole(request, attempt.timeout).await?;
        if (200..300).contains(&status) {
            return Ok(UpstreamResponse {
                status,
                headers,
                body: raw,
            });
        }
        Ok(self.error_answer(status, headers, raw))
    }

    async fn stream_attempt(&self, attempt: Attempt) -> Result<StreamResponse, TransportError> {
        let budget = attempt.timeout;
        let deadline = tokio::time::Instant::now() + budget;
        let url = self.url(&attempt.model, "streamRawPredict")?;
        let body = Self::body(&attempt, false)?;
        let request =
            match tokio::time::timeout_at(deadline, self.request(&attempt, url, body)).await {
                Ok(Ok(r)) => r,
                Ok(Err(no_token)) => {
                    return Ok(StreamResponse {
                        status: no_token.status,
                        headers: no_token.headers,
                        body: StreamBody::Complete(no_token.body),
                    })
                }
                Err(_) => return Err(TransportError::Timeout(budget)),
            };
        let response = send_head(request, deadline, budget).await?;
        let status = response.status().as_u16();
        let headers = capture_headers(response.headers());
        if !(response.status().is_success() && is_event_stream(response.headers())) {
            let raw = read_rest(response, deadline, budget).await?;
            let answer = if (200..300).contains(&status) {
                UpstreamResponse {
                    status,
                    headers,
                    body: raw,
                }
            } else {
                self.error_answer(status, headers, raw)
            };
            return Ok(StreamResponse {
                status: answer.status,
                headers: answer.headers,
                body: StreamBody::Complete(answer.body),
            });
        }
        let (tx, rx) = mpsc::channel(STREAM_CHANNEL);
        let log = StreamLog {
            platform: "vertex",
            model: attempt.model.clone(),
            key: "adc".to_owned(),
            request_id: headers.get("request-id").map(str::to_owned),
            redactor: self.redactor.clone(),
        };
        tokio::spawn(pump(response, tx, budget, log));
        Ok(StreamResponse {
            status,
            headers,
            body: StreamBody::Events(rx),
        })
    }

    /// `count-tokens:rawPredict`: the body names the model.
    async fn count(&self, attempt: Attempt) -> Result<u64, TransportError> {
        const COUNTED: [&str; 6] = [
            "model",
            "messages",
            "system",
            "tools",
            "tool_choice",
            "thinking",
        ];
        let mut body: Map<String, Value> = serde_json::from_slice(&attempt.body)
            .map_err(|e| TransportError::Invalid(format!("the body is not a JSON object: {e}")))?;
        body.retain(|k, _| COUNTED.contains(&k.as_str()));
        body.insert("model".into(), Value::from(attempt.model.clone()));
        let attempt = Attempt {
            body: Bytes::from(serde_json::to_vec(&body).unwrap_or_default()),
            ..attempt
        };
        let resp = self.unary(&attempt, "rawPredict", true).await?;
        if resp.status != 200 {
            return Err(TransportError::Status(resp.status));
        }
        serde_json::from_slice::<Value>(&resp.body)
            .ok()
            .and_then(|v| v.get("input_tokens").and_then(Value::as_u64))
            .ok_or_else(|| {
                TransportError::Truncated("count_tokens: no input_tokens in the answer".into())
            })
    }
}

/// A path segment: everything but RFC 3986's unreserved characters and `@` (model versions)
/// percent-encoded.
fn encode(segment: &str) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~')
        .remove(b'@');
    utf8_percent_encode(segment, SEGMENT).to_string()
}

/// A Vertex error answer as the Anthropic error it means: Anthropic-shaped bodies (the model's
/// own errors, such as a 529) pass unchanged; Google's `{"error": {"code", "status",
/// "message"}}` (also inside a one-element array) is mapped by its `status`:
/// `RESOURCE_EXHAUSTED` 429, `UNAVAILABLE` 503, `PERMISSION_DENIED` 403, `UNAUTHENTICATED` 401,
/// `NOT_FOUND` 404, `INVALID_ARGUMENT` / `FAILED_PRECONDITION` / `OUT_OF_RANGE` 400,
/// `DEADLINE_EXCEEDED` 504, `INTERNAL` 500; any other keeps the HTTP status.
pub fn map_google_error(status: u16, raw: Bytes) -> (u16, Bytes) {
    let Ok(v) = serde_json::from_slice::<Value>(&raw) else {
        return (status, raw);
    };
    if v.get("type").and_then(Value::as_str) == Some("error") {
        return (status, raw);
    }
    let inner = match &v {
        Value::Array(items) => items.first().and_then(|i| i.get("error")),
        other => other.get("error"),
    };
    let Some(e) = inner.filter(|e| e.is_object()) else {
        return (status, raw);
    };
    let google = e.get("status").and_then(Value::as_str).unwrap_or("");
    let message = e.get("message").and_then(Value::as_str).unwrap_or("");
    let mapped = match google {
        "RESOURCE_EXHAUSTED" => 429,
        "UNAVAILABLE" => 503,
        "PERMISSION_DENIED" => 403,
        "UNAUTHENTICATED" => 401,
        "NOT_FOUND" => 404,
        "INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE" => 400,
        "DEADLINE_EXCEEDED" => 504,
        "INTERNAL" => 500,
        _ => status,
    };
    let kind = seawall_actors::wire::error_type_of(mapped);
    let body = json!({"type": "error", "error": {"type": kind,
        "message": if google.is_empty() { message.to_owned() } else { format!("{google}: {message}") }}});
    (mapped, Bytes::from(body.to_string()))
}

impl Upstream for VertexUpstream {
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
        format!("gcp:{}", self.options.project)
    }
}

impl fmt::Debug for VertexUpstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VertexUpstream")
            .field("models", &self.models)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_follow_the_region() {
        assert_eq!(
            default_base_url("us-east5"),
            "https://us-east5-aiplatform.googleapis.com"
        );
        assert_eq!(
            default_base_url("global"),
            "https://aiplatform.googleapis.com"
        );
        let up = VertexUpstream::new(VertexOptions::new("my-project", "us-east5")).unwrap();
        assert_eq!(
            up.url("claude-sonnet-4-5@20250929", "rawPredict").unwrap().as_str(),
            "https://us-east5-aiplatform.googleapis.com/v1/projects/my-project/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929:rawPredict"
        );
    }

    #[test]
    fn google_errors_map_by_status_and_anthropic_errors_pass() {
        let google = |code: u16, status: &str| {
            let raw = json!({"error": {"code": code, "message": "m", "status": status}});
            map_google_error(code, Bytes::from(raw.to_string()))
        };
        for (code, status, want, kind) in [
            (429, "RESOURCE_EXHAUSTED", 429, "rate_limit_error"),
            (503, "UNAVAILABLE", 503, "api_error"),
            (403, "PERMISSION_DENIED", 403, "permission_error"),
            (401, "UNAUTHENTICATED", 401, "authentication_error"),
            (400, "INVALID_ARGUMENT", 400, "invalid_request_error"),
            (404, "NOT_FOUND", 404, "not_found_error"),
        ] {
            let (s, body) = google(code, status);
            assert_eq!(s, want, "{status}");
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["error"]["type"], kind, "{status}");
        }
        // The array form of streamRawPredict.
        let raw = json!([{"error": {"code": 429, "message": "m", "status": "RESOURCE_EXHAUSTED"}}]);
        assert_eq!(map_google_error(429, Bytes::from(raw.to_string())).0, 429);
        let overloaded = Bytes::from_static(
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        );
        assert_eq!(map_google_error(529, overloaded.clone()), (529, overloaded));
    }
}
