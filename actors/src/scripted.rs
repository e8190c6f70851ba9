//! An in-process [`Upstream`] that answers from a script: for tests, examples and benchmarks that
//! need exact, instant, deterministic answers without sockets. (The fault simulator that speaks
//! real HTTP lives in the `seawall` crate.)
//!
//! Each model gets a behaviour: a function from (attempt, how many calls this model has seen
//! before) to an answer and a latency. Latency is slept on tokio's clock, so paused-time tests
//! run it instantly. Every attempt is logged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::clock;
use crate::upstream::{
    Attempt, SseEvent, StreamBody, StreamFuture, StreamResponse, TransportError, Upstream,
    UpstreamFuture, UpstreamResponse,
};

/// One scripted answer.
#[derive(Clone, Debug)]
pub struct Answer {
    /// How long the upstream takes (slept on tokio's clock).
    pub latency: Duration,
    /// What it returns.
    pub result: Result<UpstreamResponse, TransportError>,
}

impl Answer {
    /// A 200 with a Messages API body saying `text`, served by `model`.
    pub fn ok(model: &str, text: &str) -> Self {
        Self::from(Ok(ok_response(model, text)))
    }

    /// An API error with the given status and `error.type`.
    pub fn status(status: u16, error_type: &str) -> Self {
        Self::from(Ok(error_response(status, error_type, None)))
    }

    /// A transport failure.
    pub fn transport(err: TransportError) -> Self {
        Self::from(Err(err))
    }

    /// Take this long.
    pub fn after(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// Add a response header (no effect on transport failures).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        if let Ok(r) = &mut self.result {
            r.headers.insert(name, value);
        }
        self
    }
}

impl From<Result<UpstreamResponse, TransportError>> for Answer {
    fn from(result: Result<UpstreamResponse, TransportError>) -> Self {
        Self {
            latency: Duration::ZERO,
            result,
        }
    }
}

/// A successful Messages API response.
pub fn ok_response(model: &str, text: &str) -> UpstreamResponse {
    let body = serde_json::json!({
        "id": "msg_scripted",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": null,
        "usage": {"input_tokens": 12, "output_tokens": 8}
    });
    UpstreamResponse::new(200, body.to_string()).with_header("request-id", "req_scripted")
}

/// An API error response in the documented shape.
pub fn error_response(status: u16, error_type: &str, error_code: Option<&str>) -> UpstreamResponse {
    let mut error =
        serde_json::json!({"type": error_type, "message": format!("scripted {status}")});
    if let Some(code) = error_code {
        error["details"] = serde_json::json!({ "error_code": code });
    }
    let body = serde_json::json!({"type": "error", "error": error, "request_id": "req_scripted"});
    UpstreamResponse::new(status, body.to_string()).with_header("request-id", "req_scripted")
}

/// One scripted streaming answer.
#[derive(Clone, Debug)]
pub enum StreamAnswer {
    /// A 200 event stream: the head after `head_after`, then each event after its delay (a
    /// transport error item ends the stream there).
    Events {
        /// Time to the response head.
        head_after: Duration,
        /// (delay since the previous item, item).
        items: Vec<(Duration, Result<SseEvent, TransportError>)>,
    },
    /// A whole answer (an error status), like a non-streaming one.
    Whole(Answer),
}

impl StreamAnswer {
    /// The API's event sequence for an answer of `words`, one content delta each,
    /// `interval` apart.
    pub fn message(model: &str, words: &[&str], interval: Duration) -> Self {
        let mut items = vec![
            (Duration::ZERO, Ok(SseEvent::new("message_start", serde_json::json!({
                "type": "message_start",
                "message": {"id": "msg_scripted", "type": "message", "role": "assistant", "model": model,
                    "content": [], "stop_reason": null, "stop_sequence": null,
                    "usage": {"input_tokens": 12, "output_tokens": 1}}
            }).to_string()))),
            (Duration::ZERO, Ok(SseEvent::new("content_block_start", r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#))),
            (Duration::ZERO, Ok(SseEvent::new("ping", r#"{"type":"ping"}"#))),
        ];
        for w in words {
            let data = serde_json::json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": w}});
            items.push((
                interval,
                Ok(SseEvent::new("content_block_delta", data.to_string())),
            ));
        }
        items.push((
            Duration::ZERO,
            Ok(SseEvent::new(
                "content_block_stop",
                r#"{"type":"content_block_stop","index":0}"#,
            )),
        ));
        let delta = serde_json::json!({"type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": null},
            "usage": {"output_tokens": words.len()}});
        items.push((
            Duration::ZERO,
            Ok(SseEvent::new("message_delta", delta.to_string())),
        ));
        items.push((
            Duration::ZERO,
            Ok(SseEvent::new("message_stop", r#"{"type":"message_stop"}"#)),
        ));
        StreamAnswer::Events {
            head_after: Duration::ZERO,
            items,
        }
    }

    /// Wait this long for the response head.
    pub fn head_after(mut self, d: Duration) -> Self {
        if let StreamAnswer::Events { head_after, .. } = &mut self {
            *head_after = d;
        }
        self
    }

    /// Keep the first `n` content deltas (and what precedes them), then end with `item`.
    pub fn break_after(mut self, n: usize, item: Result<SseEvent, TransportError>) -> Self {
        if let StreamAnswer::Events { items, .. } = &mut self {
            let mut seen = 0;
            let cut = items
                .iter()
                .position(|(_, e)| {
                    if matches!(e, Ok(ev) if ev.is_content()) {
                        seen += 1;
                    }
                    seen > n
                })
                .unwrap_or(items.len());
            items.truncate(cut);
            items.push((Duration::ZERO, item));
        }
        self
    }

    /// An `overloaded_error` event, as the API sends mid-stream.
    pub fn overloaded_event() -> SseEvent {
        SseEvent::new(
            "error",
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        )
    }
}

/// A model's streaming behaviour: (attempt, calls this model saw before this one) -> answer.
pub type StreamBehaviour = Arc<dyn Fn(&Attempt, u64) -> StreamAnswer + Send + Sync>;

/// A model's behaviour: (attempt, calls this model saw before this one) -> answer.
pub type Behaviour = Arc<dyn Fn(&Attempt, u64) -> Answer + Send + Sync>;

/// A scripted `count_tokens` answer: attempt -> input tokens.
pub type TokenCounter = Arc<dyn Fn(&Attempt) -> u64 + Send + Sync>;

/// One logged attempt.
#[derive(Clone, Debug)]
pub struct LoggedAttempt {
    /// When it arrived (tokio's clock).
    pub at: Instant,
    /// The model asked for.
    pub model: String,
    /// The key slot used.
    pub key: usize,
    /// The call's retry count.
    pub retry_count: u32,
    /// The request body as sent.
    pub body: bytes::Bytes,
    /// The idempotency key forwarded with it.
    pub idempotency_key: Option<String>,
}

#[derive(Default)]
struct Script {
    behaviours: HashMap<String, Behaviour>,
    streams: HashMap<String, StreamBehaviour>,
    counts: HashMap<String, u64>,
    log: Vec<LoggedAttempt>,
}

/// The scripted upstream. Clones share the script and the log.
#[derive(Clone, Default)]
pub struct ScriptedUpstream {
    script: Arc<Mutex<Script>>,
    keys: usize,
    counter: Option<TokenCounter>,
}

impl ScriptedUpstream {
    /// An upstream with one key and no models (unknown models answer 404).
    pub fn new() -> Self {
        Self {
            script: Arc::default(),
            keys: 1,
            counter: None,
        }
    }

    /// Pretend to hold `n` keys.
    pub fn with_keys(mut self, n: usize) -> Self {
        self.keys = n.max(1);
        self
    }

    /// Offer a `count_tokens` endpoint that answers with `f(attempt)`.
    pub fn with_token_counter(
        mut self,
        f: impl Fn(&Attempt) -> u64 + Send + Sync + 'static,
    ) -> Self {
        self.counter = Some(Arc::new(f));
        self
    }

    /// Set (or replace, at any time) a model's behaviour.
    pub fn on(
        &self,
        model: &str,
        f: impl Fn(&Attempt, u64) -> Answer + Send + Sync + 'static,
    ) -> &Self {
        if let Ok(mut s) = self.script.lock() {
            s.behaviours.insert(model.to_owned(), Arc::new(f));
        }
        self
    }

    /// Set (or replace) a model's streaming behaviour.
    pub fn on_stream(
        &self,
        model: &str,
        f: impl Fn(&Attempt, u64) -> StreamAnswer + Send + Sync + 'static,
    ) -> &Self {
        if let Ok(mut s) = self.script.lock() {
            s.streams.insert(model.to_owned(), Arc::new(f));
        }
        self
    }

    /// A model that always answers 200 after `latency`.
    pub fn healthy(&self, model: &str, latency: Duration) -> &Self {
        let m = model.to_owned();
        self.on(model, move |_, _| Answer::ok(&m, "ok").after(latency))
    }

    /// Attempts a model has received.
    pub fn calls(&self, model: &str) -> u64 {
        self.script
            .lock()
            .map(|s| s.counts.get(model).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Every attempt so far, in arrival order.
    pub fn log(&self) -> Vec<LoggedAttempt> {
        self.script
            .lock()
            .map(|s| s.log.clone())
            .unwrap_or_default()
    }
}

impl ScriptedUpstream {
    /// Count and log an attempt; return how many this model saw before it.
    fn arrive(s: &mut Script, attempt: &Attempt) -> u64 {
        let c = s.counts.entry(attempt.model.clone()).or_insert(0);
        *c += 1;
        let n = *c - 1;
        s.log.push(LoggedAttempt {
            at: clock::now(),
            model: attempt.model.clone(),
            key: attempt.key,
            retry_count: attempt.retry_count,
            body: attempt.body.clone(),
            idempotency_key: attempt.idempotency_key.clone(),
        });
        n
    }
}

impl Upstream for ScriptedUpstream {
    fn send_stream(&self, attempt: Attempt) -> StreamFuture<'_> {
        let answer = match self.script.lock() {
            Ok(mut s) => {
                let n = Self::arrive(&mut s, &attempt);
                match s.streams.get(&attempt.model) {
                    Some(f) => f(&attempt, n),
                    None => StreamAnswer::Whole(Answer::from(Ok(error_response(
                        404,
                        "not_found_error",
                        None,
                    )))),
                }
            }
            Err(_) => StreamAnswer::Whole(Answer::transport(TransportError::Invalid(
                "script lock poisoned".into(),
            ))),
        };
        Box::pin(async move {
            match answer {
                StreamAnswer::Whole(a) => {
                    tokio::time::sleep(a.latency).await;
                    let r = a.result?;
                    Ok(StreamResponse {
                        status: r.status,
                        headers: r.headers,
                        body: StreamBody::Complete(r.body),
                    })
                }
                StreamAnswer::Events { head_after, items } => {
                    tokio::time::sleep(head_after).await;
                    let (tx, rx) = tokio::sync::mpsc::channel(16);
                    tokio::spawn(async move {
                        for (delay, item) in items {
                            tokio::time::sleep(delay).await;
                            if tx.send(item).await.is_err() {
                                return;
                            }
                        }
                    });
                    let mut headers = crate::upstream::Headers::default();
                    headers.insert("content-type", "text/event-stream");
                    headers.insert("request-id", "req_scripted_stream");
                    Ok(StreamResponse {
                        status: 200,
                        headers,
                        body: StreamBody::Events(rx),
                    })
                }
            }
        })
    }

    fn send(&self, attempt: Attempt) -> UpstreamFuture<'_> {
        let answer = match self.script.lock() {
            Ok(mut s) => {
                let n = Self::arrive(&mut s, &attempt);
                match s.behaviours.get(&attempt.model) {
                    Some(f) => f(&attempt, n),
                    None => Answer::from(Ok(error_response(404, "not_found_error", None))),
                }
            }
            Err(_) => Answer::transport(TransportError::Invalid("script lock poisoned".into())),
        };
        Box::pin(async move {
            if !answer.latency.is_zero() {
                tokio::time::sleep(answer.latency).await;
            }
            answer.result
        })
    }

    fn count_tokens(&self, attempt: Attempt) -> Option<crate::upstream::CountFuture<'_>> {
        let n = self.counter.as_ref().map(|f| f(&attempt))?;
        Some(Box::pin(async move { Ok(n) }))
    }

    fn key_count(&self) -> usize {
        self.keys
    }
}
