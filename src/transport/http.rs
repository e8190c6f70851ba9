//! The HTTP layer the transports share: one reqwest client setup (no redirects, no proxy from
//! the environment, a bounded idle pool, seawall's user agent), the base URL check, the headers
//! they send and read, the SSE stream reader (the Anthropic API and Vertex speak the same
//! stream), and what a reqwest error means as a [`TransportError`]: which way the exchange
//! broke.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderName, CONTENT_TYPE};
use reqwest::Url;
use seawall_actors::upstream::{Headers, SseEvent, TransportError};
use tokio::sync::mpsc;

use super::TransportSetupError;
use crate::secret::Redactor;
use crate::sse::SseParser;

/// Events buffered between a stream reader and the caller. Bounded so that a slow caller
/// slows the reader (and, through TCP, the upstream) instead of filling memory.
pub(crate) const STREAM_CHANNEL: usize = 64;

/// The header both transports send a call's idempotency key in.
pub(crate) const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// The `user-agent` of every request: `seawall/<version>`.
pub(crate) const USER_AGENT: &str = concat!("seawall/", env!("CARGO_PKG_VERSION"));

/// Idle connections kept per upstream host. A burst of N concurrent calls over HTTP/1.1 opens N
/// connections; keeping them all for `pool_idle_timeout` held ~26 KB each after the burst (issue
/// 14: 2000 calls left 53 MB behind for 90 s). Steady traffic reuses far fewer than this.
const POOL_MAX_IDLE_PER_HOST: usize = 256;

/// The HTTP client both transports use: no redirects and no proxy from the environment, so what
/// is configured is what is contacted.
pub(crate) fn http_client(
    connect_timeout: Duration,
    pool_idle_timeout: Duration,
) -> Result<reqwest::Client, TransportSetupError> {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .pool_idle_timeout(pool_idle_timeout)
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .user_agent(USER_AGENT)
        .build()
        .map_err(|e| TransportSetupError::Client(chain(&e)))
}

/// `base_url` checked (http or https, a host, no credentials, no query or fragment), with
/// `path` appended (a trailing slash on the base is fine). `example` is shown when it is not a
/// URL at all.
pub(crate) fn base_endpoint(
    base_url: &str,
    example: &str,
    path: &str,
) -> Result<Url, TransportSetupError> {
    let bad = |why: String| TransportSetupError::BaseUrl(why);
    let url = Url::parse(base_url.trim()).map_err(|e| {
        bad(format!(
            "not a URL ({e}): expected something like {example}"
        ))
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad(format!(
            "scheme {:?} is not supported: use http or https",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("it has no host".to_owned()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        // reqwest puts the URL into its errors; credentials there would end up in logs.
        return Err(bad(
            "it contains credentials (user:password@): pass keys as ApiKey instead".to_owned(),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad(
            "it has a query or fragment: give scheme, host and an optional path prefix only"
                .to_owned(),
        ));
    }
    let full = format!("{}{path}", url.as_str().trim_end_matches('/'));
    Url::parse(&full).map_err(|e| bad(format!("{full:?} is not a URL ({e})")))
}

/// The configured `anthropic-beta` list followed by the caller's, each once, in order.
pub(crate) fn merge_betas<'a>(ours: Option<&'a str>, theirs: Option<&'a str>) -> Vec<&'a str> {
    let mut all: Vec<&str> = Vec::new();
    for b in [ours, theirs]
        .into_iter()
        .flatten()
        .flat_map(|list| list.split(','))
        .map(str::trim)
    {
        if !b.is_empty() && !all.contains(&b) {
            all.push(b);
        }
    }
    all
}

/// Send `request` and read the whole answer within `budget` (head and body): status, headers
/// and body for any status, or which way the exchange broke.
pub(crate) async fn send_whole(
    request: reqwest::RequestBuilder,
    budget: Duration,
) -> Result<seawall_actors::upstream::UpstreamResponse, TransportError> {
    let response = request
        .timeout(budget)
        .send()
        .await
        .map_err(|e| send_error(&e, budget))?;
    let status = response.status().as_u16();
    let headers = capture_headers(response.headers());
    let body = response.bytes().await.map_err(|e| body_error(&e, budget))?;
    Ok(seawall_actors::upstream::UpstreamResponse {
        status,
        headers,
        body,
    })
}

/// Send `request` and wait for the response head until `deadline`. No reqwest timeout: it
/// would cover a stream's body too and cut a healthy long stream.
pub(crate) async fn send_head(
    request: reqwest::RequestBuilder,
    deadline: tokio::time::Instant,
    budget: Duration,
) -> Result<reqwest::Response, TransportError> {
    match tokio::time::timeout_at(deadline, request.send()).await {
        Ok(response) => response.map_err(|e| send_error(&e, budget)),
        Err(_) => Err(TransportError::Timeout(budget)),
    }
}

/// The whole body of an answer read in full (an error, or a 2xx that is no stream), still
/// within the attempt's `deadline`.
pub(crate) async fn read_rest(
    response: reqwest::Response,
    deadline: tokio::time::Instant,
    budget: Duration,
) -> Result<bytes::Bytes, TransportError> {
    match tokio::time::timeout_at(deadline, response.bytes()).await {
        Ok(body) => body.map_err(|e| body_error(&e, budget)),
        Err(_) => Err(TransportError::Timeout(budget)),
    }
}

/// Map an error from `send()` (before the response head arrived).
pub(crate) fn send_error(err: &reqwest::Error, budget: Duration) -> TransportError {
    // Connect first: a `connect_timeout` is both, and "could not connect" is the truer story
    // (the request never left). The attempt budget firing during connect is not `is_connect`.
    if err.is_connect() {
        TransportError::Connect(chain(err))
    } else if err.is_timeout() {
        TransportError::Timeout(budget)
    } else if err.is_builder() {
        TransportError::Invalid(chain(err))
    } else {
        // Closed or reset before the response head (hyper's IncompleteMessage, or an io error
        // such as ECONNRESET / EPIPE).
        TransportError::Reset(chain(err))
    }
}

/// Map an error from reading the body (the head had arrived).
pub(crate) fn body_error(err: &reqwest::Error, budget: Duration) -> TransportError {
    if err.is_timeout() {
        TransportError::Timeout(budget)
    } else {
        // `bytes()` reports everything as a decode error wrapping the body error: EOF before
        // Content-Length, a reset mid-body, a malformed chunk. All mean the body is incomplete.
        TransportError::Truncated(chain(err))
    }
}

/// Map an error from reading a stream's body. Unlike [`body_error`], a reset is told apart from
/// a cut: a stream that was reset and one that was cut short are different stories for the
/// caller's logs, though both end the stream.
pub(crate) fn stream_body_error(err: &reqwest::Error, budget: Duration) -> TransportError {
    if err.is_timeout() {
        TransportError::Timeout(budget)
    } else if is_reset(err) {
        TransportError::Reset(chain(err))
    } else {
        TransportError::Truncated(chain(err))
    }
}

/// Whether an io error somewhere in the chain says the peer reset or aborted the connection.
fn is_reset(err: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
            ) {
                return true;
            }
        }
        source = e.source();
    }
    false
}

/// An error and its sources, `": "`-separated. reqwest errors carry the URL, never headers.
pub(crate) fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        // hyper and hyper-util sometimes repeat their source's text; skip exact repeats.
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// What the stream reader's closing log line needs to be matched with the head's line.
pub(crate) struct StreamLog {
    /// The transport, for the log line (`anthropic`, `vertex`, `bedrock`).
    pub platform: &'static str,
    pub model: String,
    pub key: String,
    pub request_id: Option<String>,
    /// For the data of `error` events.
    pub redactor: Redactor,
}

/// Read a 2xx event stream chunk by chunk and send its events into `tx`, until the body ends,
/// breaks (one last `Err`), or the receiver is dropped.
///
/// Memory stays bounded: one chunk, the parser's unfinished line and event, and the channel.
/// Dropping `response` on the way out closes the connection when the body was not finished
/// (hyper does not pool a connection with unread body).
pub(crate) async fn pump(
    mut response: reqwest::Response,
    tx: mpsc::Sender<Result<SseEvent, TransportError>>,
    budget: Duration,
    log: StreamLog,
) {
    let started = Instant::now();
    let mut parser = SseParser::new();
    let mut events: u64 = 0;
    let ended: Cow<'static, str> = 'read: loop {
        let chunk = tokio::select! {
            // Checked first, and while waiting for a chunk: a caller that went away must not
            // keep the connection (and an upstream that stalls) busy.
            biased;
            () = tx.closed() => break 'read "receiver dropped".into(),
            chunk = response.chunk() => chunk,
        };
        let bytes = match chunk {
            Ok(Some(bytes)) => bytes,
            Ok(None) => match std::mem::take(&mut parser).finish() {
                Ok(()) => break 'read "end of body".into(),
                Err(incomplete) => {
                    let err = TransportError::Truncated(incomplete.to_string());
                    let how = err.to_string();
                    let _ = tx.send(Err(err)).await;
                    break 'read how.into();
                }
            },
            Err(e) => {
                let err = stream_body_error(&e, budget);
                let how = err.to_string();
                let _ = tx.send(Err(err)).await;
                break 'read how.into();
            }
        };
        for item in parser.push(&bytes) {
            match item {
                Ok(mut event) => {
                    // An error event's message may echo the key; content is the model's own.
                    if event.event == "error" {
                        if let Cow::Owned(clean) = log.redactor.redact_str(&event.data) {
                            event.data = clean;
                        }
                    }
                    if tx.send(Ok(event)).await.is_err() {
                        break 'read "receiver dropped".into();
                    }
                    events += 1;
                }
                Err(too_long) => {
                    let err = TransportError::Truncated(too_long.to_string());
                    let how = err.to_string();
                    let _ = tx.send(Err(err)).await;
                    break 'read how.into();
                }
            }
        }
    };
    drop(response);
    let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    tracing::debug!(
        model = %log.model,
        key = %log.key,
        request_id = log.request_id.as_deref().unwrap_or("-"),
        events,
        ended = %ended,
        elapsed_ms,
        "{} stream ended",
        log.platform
    );
}

/// Response headers as [`Headers`], names lower-cased (http already keeps them so).
pub(crate) fn capture_headers(map: &reqwest::header::HeaderMap) -> Headers {
    let mut headers = Headers::default();
    for (name, value) in map {
        // `to_str` would also drop valid UTF-8 outside ASCII; only skip what is not text.
        if let Ok(value) = std::str::from_utf8(value.as_bytes()) {
            headers.insert(name.as_str(), value);
        }
    }
    headers
}

/// Whether the content-type is `text/event-stream` (parameters such as `charset` allowed).
pub(crate) fn is_event_stream(map: &reqwest::header::HeaderMap) -> bool {
    map.get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/event-stream"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn betas_merge_ours_first_each_once() {
        assert_eq!(merge_betas(None, None), Vec::<&str>::new());
        assert_eq!(merge_betas(Some("a, b"), None), vec!["a", "b"]);
        assert_eq!(merge_betas(None, Some("c,,a")), vec!["c", "a"]);
        assert_eq!(merge_betas(Some("a,b"), Some("b, c")), vec!["a", "b", "c"]);
    }
}
