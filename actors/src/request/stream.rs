//! A committed stream: the caller gets a [`StreamReply`] with the events read so far already
//! queued, and a task pumps the rest until the upstream's stream ends, then records how it went
//! (breaker, governor, monitor) and concludes the call.
//!
//! A break after content (an upstream `error` event, a reset, the call's deadline) reaches the
//! caller as an `error` event in the API's shape: a stream is never cut silently.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::cache::ResponseCache;
use super::report::{CallEnd, Report};
use crate::assemble::Assembler;
use crate::attempt::Head;
use crate::call::{AttemptRecord, Reply, Source};
use crate::clock;
use crate::policy::chain::stream_error_class;
use crate::policy::classify::{classify_transport, Class};
use crate::policy::ledger::Ending;
use crate::protocol::AttemptSample;
use crate::wire::{Headers, SseEvent, Usage};

/// A streaming answer, handed over once the first content event is ready: from then on the call
/// is committed to `model`.
///
/// `events` yields the upstream's events in order, starting with the ones that preceded the
/// first content (`message_start`, `content_block_start`, `ping`). It ends after
/// `message_stop`; if the stream breaks after content (an upstream `error` event, a reset, the
/// deadline), the last event is an `error` event in the API's shape: never a silent cut.
#[derive(Debug)]
pub struct StreamReply {
    /// The model that is serving the stream.
    pub model: String,
    /// Where it comes from: live, or (degraded) the cache or the chain's static answer,
    /// replayed as the API's event sequence.
    pub source: Source,
    /// For a cached answer: how old it is.
    pub age: Option<Duration>,
    /// HTTP status (2xx).
    pub status: u16,
    /// Response headers from the upstream.
    pub headers: Headers,
    /// Upstream attempts made before this stream was committed.
    pub attempts: u32,
    /// Every step of the call up to the commit.
    pub trail: Vec<AttemptRecord>,
    /// Time from the call to the first content event.
    pub time_to_first_token: Duration,
    /// The events.
    pub events: tokio::sync::mpsc::Receiver<SseEvent>,
}

/// Where a committed stream goes and what it must report when it ends.
pub(crate) struct Commit {
    /// The serving model's id and name, and its hop.
    pub model: usize,
    pub model_name: String,
    pub hop: usize,
    /// Upstream attempts made before the commit, and the trail so far.
    pub attempts: u32,
    pub trail: Vec<AttemptRecord>,
    /// A re-attempt on this model (for the sample).
    pub retry: bool,
    /// The call's deadline: it bounds the whole stream.
    pub deadline: Instant,
    /// The longest silence between two events after content.
    pub idle_timeout: Duration,
    pub time_to_first_token: Duration,
    /// The response cache and this call's key, when the chain caches its answers.
    pub cache: Option<(Arc<ResponseCache>, String)>,
    pub report: Report,
}

/// The rest of a committed stream, pumped by a task of its own.
pub(crate) struct Pump {
    head: Head,
    tx: tokio::sync::mpsc::Sender<SseEvent>,
    model: usize,
    model_name: String,
    hop: usize,
    retry: bool,
    deadline: Instant,
    idle_timeout: Duration,
    time_to_first_token: Duration,
    /// Rebuilds the whole answer for the response cache, when the chain caches.
    cache: Option<(Arc<ResponseCache>, String, Assembler)>,
    report: Report,
}

/// Hand a stream to the caller: the reply with the buffered events already queued, and the
/// pump for the rest.
pub(crate) fn commit(mut head: Head, c: Commit) -> (StreamReply, Pump) {
    let buffered = std::mem::take(&mut head.buffered);
    let (tx, rx) = tokio::sync::mpsc::channel(64 + buffered.len());
    let mut cache = c
        .cache
        .map(|(cache, key)| (cache, key, Assembler::default()));
    // The head's usage (from these same events) is already noted in `head.observed`.
    for ev in buffered {
        if let Some((_, _, a)) = cache.as_mut() {
            a.push(&ev);
        }
        // Capacity was sized for them: this cannot fail.
        let _ = tx.try_send(ev);
    }
    let reply = StreamReply {
        model: c.model_name.clone(),
        source: Source::Live,
        age: None,
        status: head.status,
        headers: head.headers.clone(),
        attempts: c.attempts,
        trail: c.trail,
        time_to_first_token: c.time_to_first_token,
        events: rx,
    };
    let pump = Pump {
        head,
        tx,
        model: c.model,
        model_name: c.model_name,
        hop: c.hop,
        retry: c.retry,
        deadline: c.deadline,
        idle_timeout: c.idle_timeout,
        time_to_first_token: c.time_to_first_token,
        cache,
        report: c.report,
    };
    (reply, pump)
}

/// An `error` event in the API's shape, for breaks the upstream could not report itself.
pub(crate) fn error_event(kind: &str, message: &str) -> SseEvent {
    let data = serde_json::json!({"type": "error", "error": {"type": kind, "message": message}});
    SseEvent::new("error", data.to_string())
}

impl Pump {
    /// Pump the rest of the stream to the caller until it ends, then record how it went and
    /// conclude the call.
    pub(crate) async fn run(self) {
        let Pump {
            mut head,
            tx,
            model,
            model_name,
            hop,
            retry,
            deadline,
            idle_timeout,
            time_to_first_token,
            mut cache,
            report,
        } = self;
        let end = tokio::time::Instant::from_std(deadline);
        let status = head.status;
        let request_id = head.headers.get("request-id").map(str::to_owned);
        let class = if head.finished {
            Class::Success
        } else {
            loop {
                // Whichever comes first: the call's deadline, or a silence too long.
                let idle = tokio::time::Instant::now() + idle_timeout;
                let item = match tokio::time::timeout_at(end.min(idle), head.events.recv()).await {
                    Err(_) => {
                        let message = if idle < end {
                            format!(
                                "the upstream sent nothing for {} mid-stream",
                                humantime::format_duration(idle_timeout)
                            )
                        } else {
                            "the call's deadline passed mid-stream".to_owned()
                        };
                        let _ = tx.send(error_event("timeout_error", &message)).await;
                        break Class::Timeout;
                    }
                    Ok(None) => break Class::Success,
                    Ok(Some(item)) => item,
                };
                match item {
                    Ok(ev) => {
                        head.observed.note(&ev);
                        if let Some((_, _, a)) = cache.as_mut() {
                            a.push(&ev);
                        }
                        let failed = (ev.event == "error").then(|| stream_error_class(&ev.data));
                        if tx.send(ev).await.is_err() {
                            // The caller stopped reading: the model did nothing wrong.
                            if !head.recorded {
                                head.book(Ending::Abandoned {
                                    observed: head.observed,
                                });
                            }
                            report.conclude(ended(
                                hop,
                                model,
                                status,
                                &request_id,
                                head.observed.usage,
                                time_to_first_token,
                                None,
                            ));
                            return;
                        }
                        if let Some(class) = failed {
                            break class;
                        }
                    }
                    Err(e) => {
                        let _ = tx
                            .send(error_event(
                                "api_error",
                                &format!("the upstream stream broke: {e}"),
                            ))
                            .await;
                        break classify_transport(&e).class();
                    }
                }
            }
        };
        let mut report = report;
        if !head.recorded {
            // A refusal kept as the answer was booked when it came and must not count twice.
            let latency = clock::now().saturating_duration_since(head.started);
            let ending = if class == Class::Success {
                Ending::Complete {
                    observed: head.observed,
                }
            } else {
                Ending::Cut {
                    class,
                    observed: head.observed,
                }
            };
            let entry = head.book(ending);
            if class == Class::Success {
                if let Some((cache, key, assembler)) = cache {
                    if let Some(message) = assembler.finish() {
                        cache.put(
                            key,
                            Reply {
                                model: model_name,
                                source: Source::Live,
                                age: None,
                                status,
                                headers: head.headers.clone(),
                                body: bytes::Bytes::from(message.to_string()),
                                usage: head.observed.usage,
                                attempts: 0,
                                trail: Vec::new(),
                                latency,
                            },
                        );
                    }
                }
            }
            report.sample(AttemptSample {
                model,
                class,
                status: Some(status),
                latency,
                at: clock::now(),
                retry,
                usage: entry.usage,
            });
        }
        let usage = head.observed.usage;
        report.conclude(ended(
            hop,
            model,
            status,
            &request_id,
            usage,
            time_to_first_token,
            Some(class),
        ));
    }
}

/// A committed stream is an answered call: the SLA's latency is the time to first token.
fn ended<'a>(
    hop: usize,
    model: usize,
    status: u16,
    request_id: &'a Option<String>,
    usage: Usage,
    ttft: Duration,
    class: Option<Class>,
) -> CallEnd<'a> {
    CallEnd {
        served: Some((hop, model)),
        latency: ttft,
        http_status: Some(status),
        request_id: request_id.as_deref().map(std::borrow::Cow::Borrowed),
        usage,
        error: None,
        stream: true,
        stream_class: class,
        source: Some("live"),
    }
}
