//! One attempt at one model: send with a time budget, classify what came back, tell the
//! breaker and the governor how it went. Request actors run one per [`Send`] step (several may
//! be in flight: a hedge); probes run the same code.
//!
//! The task is the only owner of its permit and reservation from the send on. When it is
//! cancelled (a hedge lost, the caller went away) before an answer came, dropping it gives the
//! permit back (nothing was learnt about health) and keeps the reservation as charged, since
//! the request may well have reached the upstream.
//!
//! A stream's attempt ends at its first content event (or when it fails before one): the head
//! goes back to the driver unrecorded, to be committed (and recorded when the stream ends) or
//! disposed of.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ractor::ActorRef;
use tracing::Instrument;

use crate::clock;
use crate::policy::breaker::Permit;
use crate::policy::chain::{
    refusal_in_event, refusal_in_message, stream_error_status, AttemptReport,
};
use crate::policy::classify::{classify, Class, Verdict};
use crate::policy::lanes::{ServerLimits, Settlement, Ticket};
use crate::protocol::{AttemptSample, BreakerMsg, GovernorMsg};
use crate::upstream::{StreamBody, Upstream};
use crate::wire::{Attempt, Cost, Headers, SseEvent, TransportError, UpstreamResponse, Usage};

/// The events of a stream as its transport delivers them.
pub(crate) type Events = tokio::sync::mpsc::Receiver<Result<SseEvent, TransportError>>;

/// What an attempt needs to run.
pub(crate) struct Job {
    /// The transport.
    pub upstream: Arc<dyn Upstream>,
    /// What to send.
    pub attempt: Attempt,
    /// Stream it, up to the first content event.
    pub stream: bool,
    /// The model's id (for the monitor's sample).
    pub model: usize,
    /// A re-attempt on the same model (for the sample).
    pub retry: bool,
    /// Where the result is recorded.
    pub breaker: Option<ActorRef<BreakerMsg>>,
    /// Where the reservation is settled.
    pub governor: Option<ActorRef<GovernorMsg>>,
    /// The breaker's permit.
    pub permit: Permit,
    /// The governor's reservation.
    pub ticket: Ticket,
    /// The `seawall.attempt` span.
    pub span: tracing::Span,
}

/// A stream read up to its first content event, not yet recorded: committing it (or disposing
/// of it) is the driver's.
pub(crate) struct Head {
    pub status: u16,
    pub headers: Headers,
    /// Events up to and including the first content event.
    pub buffered: Vec<SseEvent>,
    /// The rest.
    pub events: Events,
    /// The upstream's stream already ended (an answer with no content).
    pub finished: bool,
    /// When the attempt started.
    pub started: Instant,
    pub breaker: Option<ActorRef<BreakerMsg>>,
    pub governor: Option<ActorRef<GovernorMsg>>,
    pub permit: Permit,
    pub ticket: Ticket,
    /// Breaker and governor already heard how it went (a refusal kept for later, or the
    /// stream ended and was recorded): dropping the head then gives nothing back.
    pub recorded: bool,
}

impl Drop for Head {
    /// A head nobody committed (another attempt won, the caller went away): the connection is
    /// dropped, the permit goes back, and the reservation is kept as charged (the model did
    /// start answering).
    fn drop(&mut self) {
        if self.recorded {
            return;
        }
        release(&self.breaker, self.permit);
        settle(
            &self.governor,
            Settlement {
                actual: self.ticket.reserved(),
                ..Settlement::unused(self.ticket)
            },
        );
    }
}

impl Head {
    /// Usage the buffered events report (input from `message_start`).
    pub fn usage(&self) -> Usage {
        let mut usage = Usage::default();
        for ev in &self.buffered {
            note_usage(ev, &mut usage);
        }
        usage
    }

    /// Record the head now as a healthy answer (a refusal kept in case no later hop serves):
    /// the stream's own end must not count it again.
    pub fn record_now(&mut self, latency: Duration) {
        if self.recorded {
            return;
        }
        self.recorded = true;
        record(&self.breaker, self.permit, Class::Success, latency);
        settle(
            &self.governor,
            Settlement {
                ticket: self.ticket,
                actual: self.usage().cost(),
                server: ServerLimits::from_headers(&self.headers),
                key_bad: false,
                key_pause: None,
            },
        );
    }
}

/// How an attempt went.
pub(crate) struct Done {
    /// For the walk.
    pub report: AttemptReport,
    /// The whole answer (unary), for the reply or a passed-through rejection.
    pub response: Option<UpstreamResponse>,
    /// A stream's head, when it reached content (or ended without it).
    pub head: Option<Head>,
    /// For the monitor (a committed stream's sample is taken at its end).
    pub sample: Option<AttemptSample>,
    /// The attempt's span, to record the retry delay the walk chooses next.
    pub span: tracing::Span,
    /// A re-attempt on the same model.
    pub retry: bool,
}

/// The permit and reservation of an attempt in flight: given back if the attempt is dropped
/// before it finishes (a cancelled hedge, a caller gone).
struct InFlight {
    breaker: Option<ActorRef<BreakerMsg>>,
    governor: Option<ActorRef<GovernorMsg>>,
    permit: Permit,
    ticket: Ticket,
    armed: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.armed {
            release(&self.breaker, self.permit);
            // The request may have reached the upstream and been counted: keep the budget.
            settle(
                &self.governor,
                Settlement {
                    actual: self.ticket.reserved(),
                    ..Settlement::unused(self.ticket)
                },
            );
        }
    }
}

// Casts: a breaker or governor that died meanwhile lost its state with it; a record meant for
// the old incarnation has nowhere useful to go, so a failed cast is not an error.

pub(crate) fn record(
    breaker: &Option<ActorRef<BreakerMsg>>,
    permit: Permit,
    class: Class,
    latency: Duration,
) {
    if let Some(b) = breaker {
        let _ = b.cast(BreakerMsg::Record {
            permit,
            class,
            latency,
        });
    }
}

pub(crate) fn release(breaker: &Option<ActorRef<BreakerMsg>>, permit: Permit) {
    if let Some(b) = breaker {
        let _ = b.cast(BreakerMsg::Release(permit));
    }
}

pub(crate) fn settle(governor: &Option<ActorRef<GovernorMsg>>, settlement: Settlement) {
    if let Some(g) = governor {
        let _ = g.cast(GovernorMsg::Settle(settlement));
    }
}

/// Run one attempt to its end (a stream: to its first content event).
pub(crate) async fn run(job: Job) -> Done {
    let Job {
        upstream,
        attempt,
        stream,
        model,
        retry,
        breaker,
        governor,
        permit,
        ticket,
        span,
    } = job;
    let mut guard = InFlight {
        breaker,
        governor,
        permit,
        ticket,
        armed: true,
    };
    let start = clock::now();
    let budget = attempt.timeout;
    let result = if stream {
        match stream_start(upstream.as_ref(), attempt, start + budget)
            .instrument(span.clone())
            .await
        {
            Ok(head) => {
                guard.armed = false;
                let latency = clock::now().saturating_duration_since(start);
                let refusal = if head.finished {
                    head.buffered.iter().find_map(refusal_in_event)
                } else {
                    None
                };
                let request_id = head.headers.get("request-id").map(str::to_owned);
                span.record("http.response.status_code", head.status);
                span.record("class", "success");
                return Done {
                    report: AttemptReport {
                        verdict: Verdict::Success,
                        status: Some(head.status),
                        latency,
                        request_id,
                        refusal,
                        unsent: None,
                    },
                    response: None,
                    head: Some(Head {
                        status: head.status,
                        headers: head.headers,
                        buffered: head.buffered,
                        events: head.events,
                        finished: head.finished,
                        started: start,
                        breaker: guard.breaker.clone(),
                        governor: guard.governor.clone(),
                        permit,
                        ticket,
                        recorded: false,
                    }),
                    sample: None,
                    span,
                    retry,
                };
            }
            Err(failed) => failed,
        }
    } else {
        match tokio::time::timeout(budget, upstream.send(attempt))
            .instrument(span.clone())
            .await
        {
            Ok(r) => r,
            Err(_) => Err(TransportError::Timeout(budget)),
        }
    };
    guard.armed = false;
    let now = clock::now();
    let latency = now.saturating_duration_since(start);
    let verdict = classify(&result, SystemTime::now());
    let class = verdict.class();
    record(&guard.breaker, permit, class, latency);
    // The request went out but no answer came back: the upstream may well have counted it
    // against the limits, so keep what was reserved rather than believe it was free.
    let maybe_charged = matches!(
        result,
        Err(TransportError::Timeout(_) | TransportError::Reset(_) | TransportError::Truncated(_))
    );
    let (usage, actual) = match &result {
        Ok(r) if class == Class::Success => {
            let usage = usage_of(&r.body);
            (usage, usage.cost())
        }
        _ if maybe_charged => (Usage::default(), ticket.reserved()),
        _ => (Usage::default(), Cost::request(0, 0)),
    };
    let key_pause = match verdict {
        Verdict::Retryable {
            class: Class::RateLimited,
            hint,
        } => hint,
        _ => None,
    };
    let (status, headers) = match &result {
        Ok(r) => (Some(r.status), r.headers.clone()),
        Err(_) => (None, Headers::default()),
    };
    settle(
        &guard.governor,
        Settlement {
            ticket,
            actual,
            server: ServerLimits::from_headers(&headers),
            key_bad: verdict.key_is_bad(),
            key_pause,
        },
    );
    let request_id = headers.get("request-id").map(str::to_owned);
    if !span.is_disabled() {
        span.record("http.response.status_code", status.unwrap_or(0));
        span.record("class", class.as_str());
        span.record("latency_ms", latency.as_millis() as u64);
        if let Some(id) = &request_id {
            span.record("request_id", id.as_str());
        }
        if class == Class::Success {
            span.record("gen_ai.usage.input_tokens", usage.input_tokens);
            span.record("gen_ai.usage.output_tokens", usage.output_tokens);
            if let Ok(r) = &result {
                if let Some(m) = response_model(&r.body) {
                    span.record("gen_ai.response.model", m.as_str());
                }
            }
        }
    }
    tracing::debug!(
        parent: &span,
        status = status.unwrap_or(0),
        class = class.as_str(),
        latency_ms = latency.as_millis() as u64,
        request_id = request_id.as_deref().unwrap_or(""),
        "attempt"
    );
    let (response, unsent) = match result {
        Ok(r) => (Some(r), None),
        Err(TransportError::Invalid(why)) => (None, Some(why)),
        Err(_) => (None, None),
    };
    let refusal = match (&verdict, &response) {
        (Verdict::Success, Some(r)) => serde_json::from_slice::<serde_json::Value>(&r.body)
            .ok()
            .and_then(|v| refusal_in_message(&v)),
        _ => None,
    };
    Done {
        report: AttemptReport {
            verdict,
            status,
            latency,
            request_id,
            refusal,
            unsent,
        },
        response,
        head: None,
        sample: Some(AttemptSample {
            model,
            class,
            status,
            latency,
            at: now,
            retry,
            usage,
        }),
        span,
        retry,
    }
}

/// A stream read up to its first content event.
struct StreamHead {
    status: u16,
    headers: Headers,
    buffered: Vec<SseEvent>,
    events: Events,
    finished: bool,
}

/// Start a streaming attempt and read it up to its first content event, within `until`.
/// Whatever goes wrong before that is turned into what the classifier understands, so the walk
/// treats a pre-content failure exactly like a failed unary attempt.
async fn stream_start(
    upstream: &dyn Upstream,
    attempt: Attempt,
    until: Instant,
) -> Result<StreamHead, Result<UpstreamResponse, TransportError>> {
    let budget = attempt.timeout;
    let until = tokio::time::Instant::from_std(until);
    let head = match tokio::time::timeout_at(until, upstream.send_stream(attempt)).await {
        Err(_) => return Err(Err(TransportError::Timeout(budget))),
        Ok(Err(e)) => return Err(Err(e)),
        Ok(Ok(head)) => head,
    };
    let mut events = match head.body {
        StreamBody::Complete(body) if !(200..300).contains(&head.status) => {
            return Err(Ok(UpstreamResponse {
                status: head.status,
                headers: head.headers,
                body,
            }))
        }
        StreamBody::Complete(_) => {
            return Err(Err(TransportError::Truncated(
                "asked for an event stream, got a whole body".into(),
            )))
        }
        StreamBody::Events(rx) => rx,
    };
    let mut buffered = Vec::new();
    let finished = loop {
        match tokio::time::timeout_at(until, events.recv()).await {
            Err(_) => return Err(Err(TransportError::Timeout(budget))),
            // The stream ended without content (an empty answer): commit it whole.
            Ok(None) => break true,
            Ok(Some(Err(e))) => return Err(Err(e)),
            Ok(Some(Ok(ev))) if ev.event == "error" => {
                // An error before any content: the caller has seen nothing, so it is a failed
                // attempt like any other (the API's mid-stream overload is the classic case).
                return Err(Ok(UpstreamResponse {
                    status: stream_error_status(&ev.data),
                    headers: head.headers,
                    body: bytes::Bytes::from(ev.data),
                }));
            }
            Ok(Some(Ok(ev))) => {
                let content = ev.is_content();
                buffered.push(ev);
                if content {
                    break false;
                }
            }
        }
    };
    Ok(StreamHead {
        status: head.status,
        headers: head.headers,
        buffered,
        events,
        finished,
    })
}

/// Usage as a stream reports it: input in `message_start`, output in `message_delta`.
pub(crate) fn note_usage(ev: &SseEvent, usage: &mut Usage) {
    let pointer = match ev.event.as_str() {
        "message_start" => "/message/usage",
        "message_delta" => "/usage",
        _ => return,
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&ev.data) else {
        return;
    };
    if let Some(u) = v.pointer(pointer) {
        let n = |k: &str| u.get(k).and_then(serde_json::Value::as_u64);
        if let Some(x) = n("input_tokens") {
            usage.input_tokens = x;
        }
        if let Some(x) = n("output_tokens") {
            usage.output_tokens = x;
        }
        if let Some(x) = n("cache_creation_input_tokens") {
            usage.cache_creation_input_tokens = x;
        }
        if let Some(x) = n("cache_read_input_tokens") {
            usage.cache_read_input_tokens = x;
        }
    }
}

/// The `model` a successful answer names (`gen_ai.response.model`).
fn response_model(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Named {
        model: Option<String>,
    }
    serde_json::from_slice::<Named>(body).ok()?.model
}

/// Usage from a Messages API body (zero when absent or unreadable).
pub(crate) fn usage_of(body: &[u8]) -> Usage {
    #[derive(serde::Deserialize)]
    struct WithUsage {
        #[serde(default)]
        usage: Usage,
    }
    serde_json::from_slice::<WithUsage>(body)
        .map(|w| w.usage)
        .unwrap_or_default()
}
