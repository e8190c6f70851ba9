//! What a call leaves behind when it ends: its `seawall.call` span filled, one log line, and
//! one cast to the monitor carrying its attempts' samples. Nothing else is added to the hot
//! path: no lock, no extra await.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tracing::field::Empty;

use super::{Chain, Shared};
use crate::call::{Call, Lane};
use crate::clock;
use crate::error::Error;
use crate::policy::classify::{classify_response, Class, Scope, Verdict};
use crate::protocol::{AttemptSample, CallRecord, CallStatus, MonitorMsg};
use crate::wire::{UpstreamResponse, Usage};

/// A call's observability, from its start to its conclusion (which may happen in the task
/// that pumps a committed stream, after the request actor is gone).
pub(crate) struct Report {
    shared: Arc<Shared>,
    chain: Arc<Chain>,
    model: String,
    feature: Option<String>,
    lane: Lane,
    /// The prompt, only when the runtime logs prompts.
    prompt: Option<String>,
    /// The `seawall.call` span.
    pub span: tracing::Span,
    /// What each upstream attempt did, for the monitor.
    samples: Vec<AttemptSample>,
}

/// How a call ended, as the conclusion needs it.
pub(crate) struct CallEnd<'a> {
    /// The model that served it (with no error: an answered call): (hop, model id).
    pub served: Option<(usize, usize)>,
    pub latency: Duration,
    pub http_status: Option<u16>,
    pub request_id: Option<Cow<'a, str>>,
    pub usage: Usage,
    pub error: Option<&'a Error>,
    pub stream: bool,
    /// How a stream ended after its commit.
    pub stream_class: Option<Class>,
    /// Where the answer came from (`live`, `cache`, ...), when it is one.
    pub source: Option<&'static str>,
}

impl<'a> CallEnd<'a> {
    /// A call that ended on an error.
    pub fn error(e: &'a Error, latency: Duration, stream: bool) -> Self {
        let (http_status, request_id) = match e {
            Error::Rejected {
                status, headers, ..
            } => (Some(*status), headers.get("request-id").map(Cow::Borrowed)),
            _ => (None, None),
        };
        CallEnd {
            served: None,
            latency,
            http_status,
            request_id,
            usage: Usage::default(),
            error: Some(e),
            stream,
            stream_class: None,
            source: None,
        }
    }
}

impl Report {
    /// Open the call's span.
    pub fn new(call: &Call, chain: &Arc<Chain>, shared: &Arc<Shared>) -> Self {
        Self {
            span: call_span(call, chain, shared),
            shared: Arc::clone(shared),
            chain: Arc::clone(chain),
            model: call.model().to_owned(),
            feature: call.feature.clone(),
            lane: call.lane,
            prompt: shared.log_prompts.then(|| prompt_text(call)),
            samples: Vec::new(),
        }
    }

    /// Note one upstream attempt's outcome for the monitor.
    pub fn sample(&mut self, s: AttemptSample) {
        self.samples.push(s);
    }

    /// A model's name.
    fn model_name(&self, model: usize) -> Option<&str> {
        self.shared.models.get(model).map(|m| m.name.as_str())
    }

    /// The call ended: fill the call span, write the call's log line and tell the monitor.
    pub fn conclude(mut self, end: CallEnd<'_>) {
        let samples = std::mem::take(&mut self.samples);
        let cost: f64 = samples
            .iter()
            .filter_map(|s| {
                let price = self.shared.prices.get(s.model).copied().flatten()?;
                Some(price.cost(&s.usage))
            })
            .sum();
        let status = match (end.error, end.served) {
            (Some(e), _) => call_status(e),
            (None, Some((hop, model))) => CallStatus::Answered { hop, model },
            (None, None) => CallStatus::Failed("internal"),
        };
        let served_by = match status {
            CallStatus::Answered { model, .. } => self.model_name(model),
            _ => None,
        };
        let attempts = samples.len();
        let retries = samples.iter().filter(|s| s.retry).count();
        let span = &self.span;
        if !span.is_disabled() {
            span.record("status", status.label());
            span.record("attempts", attempts);
            span.record("latency_ms", end.latency.as_millis() as u64);
            span.record("cost_usd", cost);
            if let Some(model) = served_by {
                span.record("gen_ai.response.model", model);
                span.record("served_by", model);
                span.record("source", end.source.unwrap_or("live"));
                span.record("gen_ai.usage.input_tokens", end.usage.input_tokens);
                span.record("gen_ai.usage.output_tokens", end.usage.output_tokens);
            }
            if let Some(id) = end.request_id.as_deref() {
                span.record("request_id", id);
            }
        }
        tracing::info!(
            chain = self.chain.name.as_str(),
            model = self.model.as_str(),
            feature = self.feature.as_deref().unwrap_or(""),
            lane = self.lane.as_str(),
            stream = end.stream,
            stream_end = end.stream_class.map(Class::as_str),
            status = status.label(),
            http_status = end.http_status,
            served_by = served_by.unwrap_or(""),
            request_id = end.request_id.as_deref().unwrap_or(""),
            latency_ms = end.latency.as_millis() as u64,
            input_tokens = end.usage.input_tokens,
            output_tokens = end.usage.output_tokens,
            attempts,
            retries,
            cost_usd = cost,
            error = end.error.map(tracing::field::display),
            retry_after_ms = end
                .error
                .and_then(Error::retry_after)
                .map(|d| d.as_millis() as u64),
            prompt = self.prompt.as_deref(),
            "call"
        );
        if let Some(monitor) = self.shared.directory.monitor() {
            // A monitor being restarted loses this record, as its windows died with it.
            let _ = monitor.cast(MonitorMsg::Call(CallRecord {
                chain: self.chain.id,
                status,
                latency: end.latency,
                at: clock::now(),
                attempts: samples,
            }));
        }
    }
}

/// The span of one attempt, inside the call's span.
pub(crate) fn attempt_span(
    call: &tracing::Span,
    system: &str,
    model: &str,
    attempt: u32,
    retry: bool,
    hedge: bool,
    key: usize,
) -> tracing::Span {
    tracing::info_span!(
        parent: call,
        "seawall.attempt",
        gen_ai.system = system,
        gen_ai.request.model = %model,
        gen_ai.response.model = Empty,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        attempt,
        retry,
        hedge,
        key,
        http.response.status_code = Empty,
        class = Empty,
        latency_ms = Empty,
        request_id = Empty,
        retry_delay_ms = Empty,
    )
}

/// How an error returned to the caller counts: the caller's fault (a malformed request the
/// upstream rejected, an invalid call) is not held against the runtime.
pub(crate) fn call_status(e: &Error) -> CallStatus {
    match e {
        Error::Rejected {
            status,
            headers,
            body,
            ..
        } => {
            let response = UpstreamResponse {
                status: *status,
                headers: headers.clone(),
                body: body.clone(),
            };
            match classify_response(&response, SystemTime::now()) {
                Verdict::Permanent {
                    scope: Scope::Request,
                    ..
                } => CallStatus::Invalid,
                _ => CallStatus::Failed("rejected"),
            }
        }
        Error::InvalidCall(_) | Error::UnknownModel(_) | Error::Config(_) => CallStatus::Invalid,
        Error::Unavailable {
            deadline_exceeded: true,
            ..
        } => CallStatus::Failed("deadline_exceeded"),
        Error::Unavailable { .. } => CallStatus::Failed("unavailable"),
        Error::ShuttingDown => CallStatus::Failed("shutting_down"),
        Error::Internal(_) => CallStatus::Failed("internal"),
    }
}

/// The call span: one per call, with OpenTelemetry GenAI fields and seawall's own.
fn call_span(call: &Call, chain: &Chain, shared: &Shared) -> tracing::Span {
    let system = chain
        .hops
        .first()
        .and_then(|&m| shared.models.get(m))
        .and_then(|m| shared.upstream_names.get(m.upstream))
        .map_or("", String::as_str);
    tracing::info_span!(
        "seawall.call",
        gen_ai.operation.name = "chat",
        gen_ai.system = system,
        gen_ai.request.model = call.model(),
        gen_ai.request.max_tokens = call.max_tokens(),
        gen_ai.response.model = Empty,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        chain = %chain.name,
        feature = call.feature.as_deref().unwrap_or(""),
        lane = call.lane.as_str(),
        status = Empty,
        served_by = Empty,
        source = Empty,
        attempts = Empty,
        latency_ms = Empty,
        cost_usd = Empty,
        request_id = Empty,
    )
}

/// The request's conversation as JSON (system prompt and messages), for `.log_prompts(true)`.
fn prompt_text(call: &Call) -> String {
    let body = call.body();
    let mut out = serde_json::Map::new();
    for key in ["system", "messages"] {
        if let Some(v) = body.get(key) {
            out.insert(key.to_owned(), v.clone());
        }
    }
    serde_json::Value::Object(out).to_string()
}

/// Time since `started`, on the runtime's clock.
pub(crate) fn since(started: Instant) -> Duration {
    clock::now().saturating_duration_since(started)
}
