//! One attempt at one model: send with a time budget, classify what came back, and give account
//! of it to the breaker and the governor. Request actors run one per `Send` step (several may be
//! in flight: a hedge); probes run the same code. Not an actor: the request actor and the
//! monitor's probes both use it, so it lives beside them, not inside either.
//!
//! What an attempt cost and what each party hears is never decided here: every ending is
//! described as a [`ledger::Ending`] and booked by [`Holds::book`], which follows
//! [`ledger::account`]. The task is the only owner of its [`Holds`] from the send on: dropped
//! before an answer came (a hedge lost, the caller went away), it books the attempt as
//! abandoned.
//!
//! A stream's attempt ends at its first content event (or when it fails before one): the head
//! goes back to the driver unrecorded, to be committed (and recorded when the stream ends) or
//! disposed of.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ractor::ActorRef;
use tracing::Instrument;

use crate::call::CountMiss;
use crate::clock;
use crate::policy::breaker::Permit;
use crate::policy::chain::{
    refusal_in_event, refusal_in_message, stream_error_status, AttemptReport,
};
use crate::policy::classify::{classify, Class, Verdict};
use crate::policy::lanes::{ServerLimits, Settlement, Ticket};
use crate::policy::ledger::{self, Ending, Entry, Note, Observed};
use crate::protocol::{AttemptSample, BreakerMsg, GovernorMsg};
use crate::upstream::{StreamBody, Upstream};
use crate::wire::{Attempt, Headers, SseEvent, TransportError, UpstreamResponse};

/// The events of a stream as its transport delivers them.
pub(crate) type Events = tokio::sync::mpsc::Receiver<Result<SseEvent, TransportError>>;

/// What an attempt needs to run.
pub(crate) struct Spec {
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
    /// Its permit and reservation, and to whom it gives account.
    pub holds: Holds,
    /// The `seawall.attempt` span.
    pub span: tracing::Span,
}

/// What one attempt holds (the breaker's permit, the governor's reservation) and whom it owes
/// an account of how it ended.
#[derive(Clone)]
pub(crate) struct Holds {
    /// Where the outcome is recorded.
    pub breaker: Option<ActorRef<BreakerMsg>>,
    /// Where the reservation is settled.
    pub governor: Option<ActorRef<GovernorMsg>>,
    /// The breaker's permit.
    pub permit: Permit,
    /// The governor's reservation.
    pub ticket: Ticket,
}

impl Holds {
    /// Book how the attempt ended, as the ledger says: the breaker hears its note, the
    /// governor its charge (with what the server said: remaining budget, a bad or paused key).
    pub fn book(
        &self,
        ending: Ending,
        latency: Duration,
        server: ServerLimits,
        verdict: Option<&Verdict>,
    ) -> Entry {
        let entry = ledger::account(ending, self.ticket.reserved());
        match entry.breaker {
            Note::Record(class) => record(&self.breaker, self.permit, class, latency),
            Note::Release => release(&self.breaker, self.permit),
        }
        if let Some(actual) = entry.charge {
            settle(
                &self.governor,
                Settlement {
                    ticket: self.ticket,
                    actual,
                    server,
                    key_bad: verdict.is_some_and(Verdict::key_is_bad),
                    key_pause: match verdict {
                        Some(Verdict::Retryable {
                            class: Class::RateLimited,
                            hint,
                        }) => *hint,
                        _ => None,
                    },
                },
            );
        }
        entry
    }
}

/// A probe's token count, booked as the ledger says: the breaker hears it, and there is no
/// reservation to settle (a count is free against the limits).
pub(crate) fn counted(
    breaker: &ActorRef<BreakerMsg>,
    permit: Permit,
    class: Class,
    latency: Duration,
) -> Entry {
    let entry = ledger::account(Ending::Counted { class }, Default::default());
    let breaker = Some(breaker.clone());
    match entry.breaker {
        Note::Record(class) => record(&breaker, permit, class, latency),
        Note::Release => release(&breaker, permit),
    }
    entry
}

/// A permit or a reservation the walk got but will not use: given back whole (the ledger's
/// [`Ending::Unused`]).
pub(crate) fn unused(
    breaker: &Option<ActorRef<BreakerMsg>>,
    permit: Option<Permit>,
    governor: &Option<ActorRef<GovernorMsg>>,
    ticket: Option<Ticket>,
) {
    let entry = ledger::account(Ending::Unused, Default::default());
    if let (Some(permit), Note::Release) = (permit, entry.breaker) {
        release(breaker, permit);
    }
    if let (Some(ticket), Some(actual)) = (ticket, entry.charge) {
        settle(
            governor,
            Settlement {
                actual,
                ..Settlement::unused(ticket)
            },
        );
    }
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
    /// Its permit and reservation.
    pub holds: Holds,
    /// The usage reported so far (the buffered events', then the pump's).
    pub observed: Observed,
    /// Breaker and governor already heard how it went (a refusal kept for later, or the
    /// stream ended and was booked): dropping the head then books nothing.
    pub recorded: bool,
}

impl Drop for Head {
    /// A head nobody committed (another attempt won, the caller went away): the connection is
    /// dropped and the attempt booked as abandoned.
    fn drop(&mut self) {
        if !self.recorded {
            self.book(Ending::Abandoned {
                observed: self.observed,
            });
        }
    }
}

impl Head {
    /// Book the stream's ending once (a later call books nothing).
    pub fn book(&mut self, ending: Ending) -> Entry {
        self.recorded = true;
        let latency = clock::now().saturating_duration_since(self.started);
        self.holds.book(
            ending,
            latency,
            ServerLimits::from_headers(&self.headers),
            None,
        )
    }

    /// Book the head now as a whole answer (a stream that ended before content, or a refusal
    /// kept in case no later hop serves): the stream's own end must not count it again.
    pub fn record_now(&mut self) -> Option<Entry> {
        if self.recorded {
            return None;
        }
        Some(self.book(Ending::Complete {
            observed: self.observed,
        }))
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

/// An attempt in flight's holds: booked as abandoned if the attempt is dropped before it
/// finishes (a cancelled hedge, a caller gone).
struct Unfinished {
    holds: Holds,
    armed: bool,
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if self.armed {
            self.holds.book(
                Ending::Abandoned {
                    observed: Observed::default(),
                },
                Duration::ZERO,
                ServerLimits::default(),
                None,
            );
        }
    }
}

// Casts: a breaker or governor that died meanwhile lost its state with it; a record meant for
// the old incarnation has nowhere useful to go, so a failed cast is not an error.

fn record(breaker: &Option<ActorRef<BreakerMsg>>, permit: Permit, class: Class, latency: Duration) {
    if let Some(b) = breaker {
        let _ = b.cast(BreakerMsg::Record {
            permit,
            class,
            latency,
        });
    }
}

fn release(breaker: &Option<ActorRef<BreakerMsg>>, permit: Permit) {
    if let Some(b) = breaker {
        let _ = b.cast(BreakerMsg::Release(permit));
    }
}

fn settle(governor: &Option<ActorRef<GovernorMsg>>, settlement: Settlement) {
    if let Some(g) = governor {
        let _ = g.cast(GovernorMsg::Settle(settlement));
    }
}

/// Run one attempt to its end (a stream: to its first content event).
pub(crate) async fn run(spec: Spec) -> Done {
    let Spec {
        upstream,
        attempt,
        stream,
        model,
        retry,
        holds,
        span,
    } = spec;
    let mut guard = Unfinished { holds, armed: true };
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
                let mut observed = Observed::default();
                for ev in &head.buffered {
                    observed.note(ev);
                }
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
                        holds: guard.holds.clone(),
                        observed,
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
    let ending = match &result {
        Ok(r) if class == Class::Success => Ending::Complete {
            observed: Observed::from_body(&r.body),
        },
        Ok(_) => Ending::Refused { class },
        // The request went out but no whole answer came back.
        Err(
            TransportError::Timeout(_) | TransportError::Reset(_) | TransportError::Truncated(_),
        ) => Ending::Cut {
            class,
            observed: Observed::default(),
        },
        Err(
            TransportError::Connect(_) | TransportError::Invalid(_) | TransportError::Status(_),
        ) => Ending::Unsent { class },
    };
    let (status, headers) = match &result {
        Ok(r) => (Some(r.status), r.headers.clone()),
        Err(_) => (None, Headers::default()),
    };
    let entry = guard.holds.book(
        ending,
        latency,
        ServerLimits::from_headers(&headers),
        Some(&verdict),
    );
    let usage = entry.usage;
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

/// The `model` a successful answer names (`gen_ai.response.model`).
fn response_model(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Named {
        model: Option<String>,
    }
    serde_json::from_slice::<Named>(body).ok()?.model
}

/// Count a request's input tokens on `upstream` with the key the governor's pool picks, within
/// `budget`: the one token-count exchange (the walk's `Estimate::CountTokens`, the facade's
/// `count_tokens` behind the gateway's endpoint).
pub(crate) async fn count_tokens(
    upstream: &dyn Upstream,
    upstream_id: usize,
    governor: Option<ActorRef<GovernorMsg>>,
    mut attempt: Attempt,
    budget: Duration,
) -> Result<u64, CountMiss> {
    let Some(governor) = governor else {
        return Err(CountMiss::NoKey);
    };
    let key = match governor
        .call(
            |reply| GovernorMsg::PickKey(upstream_id, reply),
            Some(Duration::from_secs(5)),
        )
        .await
    {
        Ok(ractor::rpc::CallResult::Success(Some(key))) => key,
        _ => return Err(CountMiss::NoKey),
    };
    attempt.key = key;
    attempt.timeout = budget;
    let model = attempt.model.clone();
    let Some(count) = upstream.count_tokens(attempt) else {
        return Err(CountMiss::NoCounter);
    };
    let failed = match tokio::time::timeout(budget, count).await {
        Ok(Ok(n)) => return Ok(n),
        Ok(Err(TransportError::Status(status))) => classify(
            &Ok(UpstreamResponse::new(status, bytes::Bytes::new())),
            SystemTime::now(),
        ),
        Ok(Err(e)) => classify(&Err(e), SystemTime::now()),
        Err(_) => classify(&Err(TransportError::Timeout(budget)), SystemTime::now()),
    };
    tracing::debug!(
        model = %model,
        class = failed.class().as_str(),
        "count_tokens failed: using the heuristic estimate"
    );
    Err(CountMiss::Failed(failed.class()))
}
