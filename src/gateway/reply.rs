//! Answers in the API's shape: successes with seawall's headers, and errors mapped from the
//! runtime's [`Error`] with the status a client can act on.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::body::Bytes;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use seawall_actors::policy::rng::SplitMix64;
use seawall_actors::upstream::{Headers, SseEvent};
use seawall_actors::{AttemptRecord, Error, Outcome, Reply, StreamReply};

use crate::secret::Redactor;

/// Every id the gateway makes for its own answers starts with this.
pub const REQUEST_ID_PREFIX: &str = "req_seawall_";

pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("request-id");
pub(crate) const SEAWALL_MODEL: HeaderName = HeaderName::from_static("seawall-model");
pub(crate) const SEAWALL_SOURCE: HeaderName = HeaderName::from_static("seawall-source");
pub(crate) const SEAWALL_ATTEMPTS: HeaderName = HeaderName::from_static("seawall-attempts");
/// Hedges started (attempts begun while another of the call was still in flight); only when
/// there were any.
pub(crate) const SEAWALL_HEDGES: HeaderName = HeaderName::from_static("seawall-hedges");
pub(crate) const SEAWALL_JOB_ID: HeaderName = HeaderName::from_static("seawall-job-id");
const RETRY_AFTER_MS: HeaderName = HeaderName::from_static("retry-after-ms");

/// Upstream headers a passed-through answer keeps. Everything else (rate-limit headers of the
/// upstream's organization, cookies, server details) stays inside.
const PASSED: [&str; 5] = [
    "request-id",
    "retry-after",
    "retry-after-ms",
    "x-should-retry",
    "seawall-translation-dropped",
];

/// Makes `req_seawall_…` ids: unique per process, unpredictable enough to never collide with
/// another instance's.
pub(crate) struct RequestIds {
    seed: u64,
    counter: AtomicU64,
}

impl RequestIds {
    pub(crate) fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Self {
            seed: nanos ^ (u64::from(std::process::id()) << 32),
            counter: AtomicU64::new(0),
        }
    }

    pub(crate) fn next(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut rng = SplitMix64::new(self.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        format!(
            "{REQUEST_ID_PREFIX}{:016x}{:08x}",
            rng.next_u64(),
            rng.next_u64() as u32
        )
    }
}

/// An Anthropic-shaped error made by the gateway, with `request_id` in body and header.
pub(crate) fn api_error(
    status: StatusCode,
    kind: &str,
    message: &str,
    request_id: &str,
) -> Response {
    let body = serde_json::json!({
        "type": "error",
        "error": {"type": kind, "message": message},
        "request_id": request_id,
    });
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert(REQUEST_ID, v);
    }
    response
}

/// Upstream attempts in a trail: those that answered and those cancelled in flight (a hedge,
/// or the attempt it hedged) alike, since each was sent.
fn attempts(trail: &[AttemptRecord]) -> usize {
    trail
        .iter()
        .filter(|r| {
            matches!(
                r.outcome,
                Outcome::Attempted { .. } | Outcome::Cancelled { .. }
            )
        })
        .count()
}

/// Hedges in a trail.
fn hedges(trail: &[AttemptRecord]) -> usize {
    trail
        .iter()
        .filter(|r| {
            matches!(
                r.outcome,
                Outcome::Attempted { hedge: true, .. } | Outcome::Cancelled { hedge: true }
            )
        })
        .count()
}

/// `seawall-attempts`, and `seawall-hedges` when the call hedged.
fn set_attempts(response: &mut Response, attempts: usize, trail: &[AttemptRecord]) {
    set(response, SEAWALL_ATTEMPTS, &attempts.to_string());
    let n = hedges(trail);
    if n > 0 {
        set(response, SEAWALL_HEDGES, &n.to_string());
    }
}

/// Copy the passed-through upstream headers onto `response`.
fn pass_headers(response: &mut Response, headers: &Headers) {
    for name in PASSED {
        if let Some(value) = headers.get(name) {
            if let Ok(v) = HeaderValue::from_str(value) {
                response
                    .headers_mut()
                    .insert(HeaderName::from_static(name), v);
            }
        }
    }
}

fn set(response: &mut Response, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, v);
    }
}

/// The upstream's answer, unchanged, with what happened in seawall's headers.
pub(crate) fn success(reply: &Reply, ids: &RequestIds) -> Response {
    success_with(reply, reply.body.clone(), ids)
}

/// An answer with `body` (the upstream's, or its translation for another face) and what
/// happened in seawall's headers.
pub(crate) fn success_with(reply: &Reply, body: Bytes, ids: &RequestIds) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    pass_headers(&mut response, &reply.headers);
    if reply.request_id().is_none() {
        set(&mut response, REQUEST_ID, &ids.next());
    }
    set(&mut response, SEAWALL_MODEL, &reply.model);
    set(&mut response, SEAWALL_SOURCE, reply.source.as_str());
    set_attempts(&mut response, reply.attempts as usize, &reply.trail);
    if let Some(job) = reply.job_id() {
        set(&mut response, SEAWALL_JOB_ID, &job);
    }
    response
}

/// How a committed stream's events are written on the wire of a face.
pub(crate) trait Framer: Send + 'static {
    /// The frames for one event (none, for an event this face does not show).
    fn frame(&mut self, event: &SseEvent) -> Vec<Bytes>;
    /// The frames after the last event.
    fn end(&mut self) -> Vec<Bytes>;
}

/// The Messages API's own frames: each event as it came.
pub(crate) struct MessagesFrames;

impl Framer for MessagesFrames {
    fn frame(&mut self, event: &SseEvent) -> Vec<Bytes> {
        vec![Bytes::from(event.to_wire())]
    }

    fn end(&mut self) -> Vec<Bytes> {
        Vec::new()
    }
}

/// A committed stream on the Messages API's wire. See [`stream_with`].
pub(crate) fn stream(reply: StreamReply, ids: &RequestIds) -> Response {
    stream_with(reply, MessagesFrames, ids)
}

/// A committed stream: 200 `text/event-stream`, each event framed by `framer` as it arrives,
/// with the same headers as a unary answer. A break after content arrives as the runtime's
/// final `error` event, never as a silent cut.
pub(crate) fn stream_with(reply: StreamReply, framer: impl Framer, ids: &RequestIds) -> Response {
    let StreamReply {
        model,
        source,
        status,
        headers,
        attempts,
        events,
        trail,
        ..
    } = reply;
    let served_by = model.clone();
    // Frames go out one at a time from `pending`, so an event that makes several (or none)
    // keeps the body's back-pressure on the runtime's channel.
    let state = (
        events,
        framer,
        std::collections::VecDeque::new(),
        0_u64,
        false,
        false,
    );
    let body = futures_util::stream::unfold(
        state,
        move |(mut events, mut framer, mut pending, count, errored, ended)| {
            let served_by = served_by.clone();
            async move {
                let (mut count, mut errored, mut ended) = (count, errored, ended);
                loop {
                    if let Some(frame) = pending.pop_front() {
                        return Some((
                            Ok::<_, std::convert::Infallible>(frame),
                            (events, framer, pending, count, errored, ended),
                        ));
                    }
                    if ended {
                        return None;
                    }
                    match events.recv().await {
                        Some(event) => {
                            errored = errored || event.event == "error";
                            count += 1;
                            pending.extend(framer.frame(&event));
                        }
                        None => {
                            ended = true;
                            pending.extend(framer.end());
                            tracing::info!(
                                served_by = %served_by,
                                events = count,
                                ended_with_error = errored,
                                "gateway stream ended"
                            );
                        }
                    }
                }
            }
        },
    );
    let mut response = Response::new(Body::from_stream(body));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let content_type = headers
        .get("content-type")
        .filter(|c| c.starts_with("text/event-stream"))
        .unwrap_or("text/event-stream; charset=utf-8");
    set(&mut response, CONTENT_TYPE, content_type);
    set(&mut response, CACHE_CONTROL, "no-cache");
    pass_headers(&mut response, &headers);
    if headers.get("request-id").is_none() {
        set(&mut response, REQUEST_ID, &ids.next());
    }
    set(&mut response, SEAWALL_MODEL, &model);
    set(&mut response, SEAWALL_SOURCE, source.as_str());
    set_attempts(&mut response, attempts as usize, &trail);
    response
}

/// Whole seconds, rounded up (a client must not come back early).
fn ceil_secs(d: Duration) -> u64 {
    let s = d.as_secs();
    if d.subsec_nanos() > 0 {
        s + 1
    } else {
        s
    }
}

/// The answer for a runtime error. See the module table in [`crate::gateway`].
///
/// `Unavailable` is a 504 only when the call's deadline really ran out (the walk says so); a
/// call refused early, because nothing could recover before its deadline, is a 503 with the
/// time to come back.
pub(crate) fn error(err: &Error, ids: &RequestIds) -> Response {
    match err {
        Error::Rejected {
            model,
            status,
            trail,
            ..
        } if !(400..=599).contains(status) => {
            // Not an error status (a 200 whose body is no answer, a 3xx) that the upstream
            // said not to retry: the client gets an error it can read, not a broken answer.
            let message = format!(
                "{model} answered HTTP {status} with something that is not an API answer; \
                 it was not retried"
            );
            let mut response =
                api_error(StatusCode::BAD_GATEWAY, "api_error", &message, &ids.next());
            set(&mut response, SEAWALL_MODEL, model);
            set(
                &mut response,
                SEAWALL_ATTEMPTS,
                &attempts(trail).to_string(),
            );
            response
        }
        Error::Rejected {
            model,
            status,
            headers,
            body,
            trail,
        } => {
            // The transports already took their own keys out; anything else shaped like a
            // key (an upstream of the embedding app's own) goes here.
            let body = match Redactor::default().redact(body) {
                Cow::Borrowed(_) => body.clone(),
                Cow::Owned(clean) => Bytes::from(clean),
            };
            let mut response = Response::new(Body::from(body));
            *response.status_mut() =
                StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY);
            let content_type = headers.get("content-type").unwrap_or("application/json");
            set(&mut response, CONTENT_TYPE, content_type);
            pass_headers(&mut response, headers);
            if headers.get("request-id").is_none() {
                set(&mut response, REQUEST_ID, &ids.next());
            }
            set(&mut response, SEAWALL_MODEL, model);
            set(&mut response, SEAWALL_SOURCE, "live");
            set_attempts(&mut response, attempts(trail), trail);
            response
        }
        Error::Unavailable {
            retry_after,
            deadline_exceeded,
            deadline_spent,
            trail,
        } => {
            let (status, kind) = if *deadline_exceeded && *deadline_spent {
                (StatusCode::GATEWAY_TIMEOUT, "gateway_timeout_error")
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "api_error")
            };
            let mut response = api_error(status, kind, &err.to_string(), &ids.next());
            if let Some(d) = retry_after {
                set(
                    &mut response,
                    RETRY_AFTER,
                    &ceil_secs(*d).max(1).to_string(),
                );
                set(
                    &mut response,
                    RETRY_AFTER_MS,
                    &d.as_millis().max(1).to_string(),
                );
            }
            set_attempts(&mut response, attempts(trail), trail);
            response
        }
        Error::InvalidCall(message) => api_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            message,
            &ids.next(),
        ),
        Error::UnknownModel(model) => api_error(
            StatusCode::NOT_FOUND,
            "not_found_error",
            &format!("model: {model} is not served by this gateway"),
            &ids.next(),
        ),
        Error::ShuttingDown => {
            let mut response = api_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "api_error",
                "the gateway is shutting down: retry shortly",
                &ids.next(),
            );
            set(&mut response, RETRY_AFTER, "1");
            response
        }
        Error::Config(_) | Error::Internal(_) => api_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "api_error",
            &err.to_string(),
            &ids.next(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_prefixed() {
        let ids = RequestIds::new();
        let a = ids.next();
        let b = ids.next();
        assert!(a.starts_with(REQUEST_ID_PREFIX), "{a}");
        assert_eq!(a.len(), REQUEST_ID_PREFIX.len() + 24);
        assert_ne!(a, b);
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(2)), 2);
        assert_eq!(ceil_secs(Duration::from_millis(2001)), 3);
    }
}
