//! The simulator's brain: given one parsed HTTP request, decide what happens to it (answer,
//! error, reset, hang, truncation, mid-stream error), record it in the log, and hand the server
//! an [`Action`] to carry out. No I/O here: the server does the waiting and the writing.
//!
//! Order of checks for an API request (the first that fails answers):
//!
//! 1. authentication (`401`),
//! 2. validation of the body (`400`),
//! 3. the model (`404`),
//! 4. the model's faults, in order (the first whose window holds the sim time and whose
//!    probability draw hits),
//! 5. the rate limits (`429`; a refused request takes nothing from the buckets),
//! 6. the answer.
//!
//! `status`, `reset` and `hang` faults replace the answer before the rate limits are consulted,
//! so they take nothing from the buckets. `slow_first_byte`, `truncated` and `mid_stream_error`
//! change how the answer (or the 429) is delivered, so the request goes through the limits.
//!
//! One mutex guards the state; it is held only for the decision (microseconds), never across
//! an await. The JSON body is parsed before taking it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use seawall_actors::{Call, Error as CoreError};
use serde_json::{json, Value};

use super::limiter::{Admission, Cost, Dimension, Limiter, Refusal};
use super::rng::Rng;
use super::scenario::{Fault, FaultKind, Scenario, ScenarioError, Wire};
use super::tokens::count_input_tokens;
use super::wire::{self, InvocationMetrics, Part, StreamError, StreamSpec};
use super::LogEntry;

/// The log keeps the most recent entries only, so a simulator serving a long benchmark does not
/// grow without bound. [`Engine::count`] stays exact past it.
pub(crate) const LOG_CAPACITY: usize = 100_000;

/// One HTTP request as the server read it.
pub(crate) struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path without its query string.
    pub path: String,
    /// Header names lower-cased, values as sent (lossy UTF-8).
    pub headers: Vec<(String, String)>,
    /// The body (empty when the server refused to read it).
    pub body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What the server must do with the connection.
pub(crate) enum Action {
    /// Wait `delay`, then write `response` (only half of it when `truncate`, then close).
    Send {
        delay: Duration,
        response: Response,
        truncate: bool,
    },
    /// Wait `delay`, then close with a TCP reset without answering.
    Reset { delay: Duration },
    /// Never answer; hold the socket until the client leaves or the simulator stops.
    Hang,
}

/// An answer to write.
pub(crate) struct Response {
    pub status: u16,
    /// Extra headers (framing, `content-type` and `date` are the server's job).
    pub headers: Vec<(String, String)>,
    pub body: Body,
    /// Close the connection after this response.
    pub close: bool,
}

/// A response body.
pub(crate) enum Body {
    /// `application/json` with a Content-Length.
    Json(Vec<u8>),
    /// A stream (`text/event-stream`, Bedrock's `application/vnd.amazon.eventstream`),
    /// chunked, part by part.
    Stream {
        content_type: &'static str,
        parts: Vec<Part>,
    },
}

impl Response {
    fn json(status: u16, value: &Value) -> Self {
        Self {
            status,
            headers: Vec::new(),
            // Serializing a `Value` cannot fail.
            body: Body::Json(serde_json::to_vec(value).unwrap_or_default()),
            close: false,
        }
    }

    fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }
}

/// What a request asks for, whatever the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    Messages,
    CountTokens,
    ChatCompletions,
}

/// Where a request goes: the wire it speaks (which decides every shape of the answer), the
/// endpoint, and what the path itself says on the platforms that name the model there.
struct Route {
    face: Wire,
    endpoint: Endpoint,
    /// The model named by the path, percent-decoded (Bedrock; Vertex but its counter).
    path_model: Option<String>,
    /// Whether the path asks for a stream (Bedrock, Vertex).
    path_stream: bool,
}

impl Route {
    fn new(face: Wire, endpoint: Endpoint) -> Self {
        Self {
            face,
            endpoint,
            path_model: None,
            path_stream: false,
        }
    }
}

/// The `anthropic_version` Bedrock's Claude models require in the body.
const BEDROCK_VERSION: &str = "bedrock-2023-05-31";
/// The `anthropic_version` Vertex's Claude models require in the body.
const VERTEX_VERSION: &str = "vertex-2023-10-16";
const EVENT_STREAM: &str = "application/vnd.amazon.eventstream";
const SSE: &str = "text/event-stream; charset=utf-8";

/// The route of `path`, or (the wire whose shape the 404 takes, why) when there is none.
fn route(path: &str) -> Result<Route, (Wire, String)> {
    match path {
        "/v1/messages" => return Ok(Route::new(Wire::Anthropic, Endpoint::Messages)),
        "/v1/messages/count_tokens" => {
            return Ok(Route::new(Wire::Anthropic, Endpoint::CountTokens))
        }
        "/v1/chat/completions" => return Ok(Route::new(Wire::OpenAi, Endpoint::ChatCompletions)),
        _ => {}
    }
    if let Some(rest) = path.strip_prefix("/model/") {
        return bedrock_route(rest).map_err(|why| (Wire::Bedrock, why));
    }
    if path.starts_with("/v1/projects/") {
        return vertex_route(path).map_err(|why| (Wire::Vertex, why));
    }
    Err((Wire::Anthropic, String::new()))
}

/// A percent-encoded path segment, decoded; `None` when it is empty or not UTF-8.
fn decode_segment(segment: &str) -> Option<String> {
    let decoded = percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .ok()?;
    (!decoded.trim().is_empty()).then(|| decoded.into_owned())
}

/// `/model/{modelId}/{invoke | invoke-with-response-stream | count-tokens}`, `rest` being what
/// follows `/model/`.
fn bedrock_route(rest: &str) -> Result<Route, String> {
    let Some((id, op)) = rest.split_once('/') else {
        return Err("no operation after the model id: use /model/{modelId}/invoke".into());
    };
    let (endpoint, stream) = match op {
        "invoke" => (Endpoint::Messages, false),
        "invoke-with-response-stream" => (Endpoint::Messages, true),
        "count-tokens" => (Endpoint::CountTokens, false),
        other => {
            return Err(format!(
                "no Bedrock operation {other:?}: use invoke, invoke-with-response-stream or \
                 count-tokens (an id with `/` must be percent-encoded)"
            ))
        }
    };
    let Some(model) = decode_segment(id) else {
        return Err("the model id is empty or not percent-encoded UTF-8".into());
    };
    Ok(Route {
        face: Wire::Bedrock,
        endpoint,
        path_model: Some(model),
        path_stream: stream,
    })
}

/// `/v1/projects/{p}/locations/{r}/publishers/anthropic/models/{model}:{rawPredict |
/// streamRawPredict}`, and `.../models/count-tokens:rawPredict`.
fn vertex_route(path: &str) -> Result<Route, String> {
    let segments: Vec<&str> = path.split('/').collect();
    let shaped = matches!(
        segments.as_slice(),
        ["", "v1", "projects", p, "locations", r, "publishers", "anthropic", "models", _]
            if !p.is_empty() && !r.is_empty()
    );
    let last = segments.last().copied().unwrap_or("");
    let (Some((model, method)), true) = (last.rsplit_once(':'), shaped) else {
        return Err(
            "use /v1/projects/{project}/locations/{region}/publishers/anthropic/models/\
                    {model}:rawPredict (or :streamRawPredict)"
                .into(),
        );
    };
    let (endpoint, stream) = match (model, method) {
        ("count-tokens", "rawPredict") => (Endpoint::CountTokens, false),
        (_, "rawPredict") => (Endpoint::Messages, false),
        (_, "streamRawPredict") => (Endpoint::Messages, true),
        (_, other) => {
            return Err(format!(
                "no method {other:?}: use :rawPredict or :streamRawPredict"
            ))
        }
    };
    let path_model = if endpoint == Endpoint::CountTokens {
        None
    } else {
        match decode_segment(model) {
            Some(m) => Some(m),
            None => return Err("the model is empty or not percent-encoded UTF-8".into()),
        }
    };
    Ok(Route {
        face: Wire::Vertex,
        endpoint,
        path_model,
        path_stream: stream,
    })
}

/// A body that passed validation.
struct Parsed {
    model: String,
    /// `None` only on the OpenAI face, where it is optional.
    max_tokens: Option<u64>,
    stream: bool,
    input_tokens: u64,
}

/// What the log wants to know even when the body is invalid.
#[derive(Default)]
struct Hints {
    model: Option<String>,
    stream: bool,
}

struct State {
    scenario: Arc<Scenario>,
    /// Sim time zero: start or the last reset.
    epoch: Instant,
    next_seq: u64,
    log: VecDeque<LogEntry>,
    counts: HashMap<String, usize>,
    /// Each limited model's limiter (the limits it was built from are kept in it, to keep its
    /// levels across a scenario change that does not touch them).
    limiters: HashMap<String, Limiter>,
}

impl State {
    fn record(&mut self, entry: LogEntry) {
        if let Some(model) = &entry.model {
            *self.counts.entry(model.clone()).or_default() += 1;
        }
        if self.log.len() >= LOG_CAPACITY {
            self.log.pop_front();
        }
        self.log.push_back(entry);
    }

    /// Rebuild the limiters for the current scenario; models whose limits did not change keep
    /// their levels unless `fresh`.
    fn rebuild_limiters(&mut self, fresh: bool, now: Instant) {
        let mut old = std::mem::take(&mut self.limiters);
        for model in &self.scenario.models {
            let Some(limits) = self.scenario.limits_for(model) else {
                continue;
            };
            let kept = old
                .remove(&model.name)
                .filter(|l| !fresh && l.limits() == limits);
            let limiter = kept.unwrap_or_else(|| Limiter::new(limits, now));
            self.limiters.insert(model.name.clone(), limiter);
        }
    }
}

/// The shared simulator state and the decision logic.
pub(crate) struct Engine {
    state: Mutex<State>,
    /// Makes ids differ between simulator instances.
    nonce: u64,
    /// Never reset, so ids stay unique across resets.
    ids: AtomicU64,
}

impl Engine {
    /// An engine for a validated scenario, its clock starting now.
    pub fn new(scenario: Scenario) -> Self {
        let now = Instant::now();
        let mut state = State {
            scenario: Arc::new(scenario),
            epoch: now,
            next_seq: 0,
            log: VecDeque::new(),
            counts: HashMap::new(),
            limiters: HashMap::new(),
        };
        state.rebuild_limiters(true, now);
        let nonce = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self {
            state: Mutex::new(state),
            nonce,
            ids: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; if something ever did, the state is still
        // consistent enough for a simulator, so keep serving.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn new_id(&self, prefix: &str) -> String {
        let n = self.ids.fetch_add(1, Ordering::Relaxed);
        let r = Rng::new(self.nonce ^ n.rotate_left(29)).next_u64();
        format!("{prefix}{r:016x}{n:08x}")
    }

    /// A copy of the log, oldest first.
    pub fn log(&self) -> Vec<LogEntry> {
        self.lock().log.iter().cloned().collect()
    }

    /// Requests logged for `model` since start or reset.
    pub fn count(&self, model: &str) -> usize {
        self.lock().counts.get(model).copied().unwrap_or(0)
    }

    /// The scenario in force.
    pub fn scenario(&self) -> Scenario {
        Scenario::clone(&self.lock().scenario)
    }

    /// Clock back to zero, sequence numbers, log, counts and buckets cleared.
    pub fn reset(&self) {
        let mut st = self.lock();
        let now = Instant::now();
        st.epoch = now;
        st.next_seq = 0;
        st.log.clear();
        st.counts.clear();
        st.rebuild_limiters(true, now);
    }

    /// Replace the scenario, keeping the clock, the log and the buckets of models whose limits
    /// did not change.
    pub fn set_scenario(&self, scenario: Scenario) -> Result<(), ScenarioError> {
        scenario.validate()?;
        let mut st = self.lock();
        st.scenario = Arc::new(scenario);
        st.rebuild_limiters(false, Instant::now());
        Ok(())
    }

    /// Decide what happens to one request.
    pub fn handle(&self, req: &Request) -> Action {
        let path = req.path.as_str();
        if path == "/_sim" || path.starts_with("/_sim/") {
            return self.control(req);
        }
        let route = match route(path) {
            Ok(route) => route,
            Err((face, why)) => {
                let mut message = format!("Not found: no route for {} {path}", req.method);
                if !why.is_empty() {
                    message = format!("{message}: {why}");
                }
                return now(self.refuse(req, face, 404, &message, "unknown_path"));
            }
        };
        if req.method != "POST" {
            let message = format!("Method {} is not allowed on {path}: use POST", req.method);
            return now(self.refuse(req, route.face, 405, &message, "method_not_allowed"));
        }
        self.api(req, &route)
    }

    /// An answer the server decided on before reading the body (411, 413, a bad
    /// Content-Length): logged like any API request, and the connection closes after it.
    pub fn early(&self, req: &Request, status: u16, message: &str, outcome: &str) -> Response {
        let face = route(&req.path).map_or_else(|(face, _)| face, |r| r.face);
        let is_control = req.path == "/_sim" || req.path.starts_with("/_sim/");
        let mut response = if is_control {
            control_error(status, message)
        } else {
            self.refuse(req, face, status, message, outcome)
        };
        response.close = true;
        response
    }

    /// Log and answer an error decided from the request line alone.
    fn refuse(
        &self,
        req: &Request,
        face: Wire,
        status: u16,
        message: &str,
        outcome: &str,
    ) -> Response {
        let request_id = self.new_id("req_");
        let mut st = self.lock();
        let mut entry = self.entry(&mut st, req, face, &Hints::default(), &request_id);
        let mut response = error_response(face, status, message, None, None, &request_id);
        id_headers(face, &request_id, &mut response.headers);
        entry.outcome = outcome.to_owned();
        entry.status = Some(response.status);
        st.record(entry);
        response
    }

    /// A log entry for `req`, taking the next sequence number.
    fn entry(
        &self,
        st: &mut State,
        req: &Request,
        face: Wire,
        hints: &Hints,
        request_id: &str,
    ) -> LogEntry {
        let seq = st.next_seq;
        st.next_seq += 1;
        let at = Instant::now().saturating_duration_since(st.epoch);
        LogEntry {
            seq,
            at_ms: u64::try_from(at.as_millis()).unwrap_or(u64::MAX),
            path: req.path.clone(),
            model: hints.model.clone(),
            key_tail: request_key(req, face).map(key_tail),
            retry_count: req
                .header("x-stainless-retry-count")
                .and_then(|v| v.trim().parse().ok()),
            idempotency_key: req.header("idempotency-key").map(str::to_owned),
            stream: hints.stream,
            status: None,
            outcome: String::new(),
            request_id: Some(request_id.to_owned()),
        }
    }

    /// `/v1/messages`, `/v1/messages/count_tokens`, `/v1/chat/completions`.
    fn api(&self, req: &Request, route: &Route) -> Action {
        let face = route.face;
        // Parsing needs no state: do it before taking the lock.
        let (hints, parsed) = parse(route, &req.body);
        let request_id = self.new_id("req_");
        let mut st = self.lock();
        let now = Instant::now();
        let mut entry = self.entry(&mut st, req, face, &hints, &request_id);
        let scenario = Arc::clone(&st.scenario);
        let sim_time = now.saturating_duration_since(st.epoch);
        let mut action = self.decide(
            &mut st,
            &scenario,
            Decide {
                req,
                route,
                parsed,
                now,
                sim_time,
                request_id: &request_id,
            },
            &mut entry,
        );
        if let Action::Send { response, .. } = &mut action {
            id_headers(face, &request_id, &mut response.headers);
            // Bedrock and Vertex send no rate-limit headers.
            let limited = entry.model.as_ref().and_then(|m| st.limiters.get(m));
            if let Some(limiter) = limited {
                let left = limiter.remaining(now);
                match face {
                    Wire::Anthropic => {
                        wire::anthropic_ratelimit_headers(&left, &mut response.headers)
                    }
                    Wire::OpenAi => wire::openai_ratelimit_headers(&left, &mut response.headers),
                    Wire::Bedrock | Wire::Vertex => {}
                }
            }
        }
        st.record(entry);
        action
    }

    fn decide(
        &self,
        st: &mut State,
        scenario: &Scenario,
        d: Decide<'_>,
        entry: &mut LogEntry,
    ) -> Action {
        let face = d.route.face;
        let rid = d.request_id;
        let send = |entry: &mut LogEntry, outcome: &str, response: Response| {
            entry.status = Some(response.status);
            entry.outcome = outcome.to_owned();
            Action::Send {
                delay: Duration::ZERO,
                response,
                truncate: false,
            }
        };

        // 1. Authentication.
        if let Err(denied) = authenticate(scenario, d.req, face) {
            return send(
                entry,
                "unauthenticated",
                denied_response(face, &denied, rid),
            );
        }
        // 2. Validation.
        let parsed = match d.parsed {
            Ok(p) => p,
            Err(message) => {
                let resp = error_response(face, 400, &message, None, None, rid);
                return send(entry, "invalid_request", resp);
            }
        };
        entry.model = Some(parsed.model.clone());
        // 3. The model.
        let Some(spec) = scenario.model_on(&parsed.model, face) else {
            let message = match face {
                Wire::Anthropic => format!("model: {}", parsed.model),
                Wire::OpenAi => format!(
                    "The model `{}` does not exist or you do not have access to it.",
                    parsed.model
                ),
                Wire::Bedrock => format!(
                    "Could not resolve the foundation model from the model identifier {} \
                     (simulated)",
                    parsed.model
                ),
                Wire::Vertex => format!(
                    "Publisher Model `publishers/anthropic/models/{}` was not found or your \
                     project does not have access to it (simulated)",
                    parsed.model
                ),
            };
            let resp = error_response(face, 404, &message, None, None, rid);
            return send(entry, "unknown_model", resp);
        };
        if d.route.endpoint == Endpoint::CountTokens {
            let counted = if face == Wire::Bedrock {
                json!({"inputTokens": parsed.input_tokens})
            } else {
                json!({"input_tokens": parsed.input_tokens})
            };
            return send(entry, "ok", Response::json(200, &counted));
        }
        if face == Wire::OpenAi && parsed.stream {
            let message = "stream = true is not supported by the simulator's chat completions \
                           endpoint: send stream = false, or stream from /v1/messages";
            let resp = error_response(face, 400, message, None, None, rid);
            return send(entry, "invalid_request", resp);
        }

        // 4. Faults: deterministic for a seed and a sequence number.
        let mut rng = Rng::new(scenario.seed ^ entry.seq);
        let fault = spec.faults.iter().find(|f| {
            f.active_at(d.sim_time)
                && applies(f, parsed.stream, face)
                && rng.next_f64() < f.probability
        });
        let mut extra = Duration::ZERO;
        let mut truncate = false;
        let mut stream_error = None;
        let mut outcome = "ok";
        if let Some(f) = fault {
            let delay = f.delay.unwrap_or_default();
            match f.kind {
                FaultKind::Status => {
                    let response = fault_response(face, f, rid);
                    entry.status = Some(response.status);
                    entry.outcome = "status".into();
                    return Action::Send {
                        delay,
                        response,
                        truncate: false,
                    };
                }
                FaultKind::Reset => {
                    entry.outcome = "reset".into();
                    return Action::Reset { delay };
                }
                FaultKind::Hang => {
                    entry.outcome = "hang".into();
                    return Action::Hang;
                }
                FaultKind::SlowFirstByte => {
                    extra = delay;
                    outcome = "slow_first_byte";
                }
                FaultKind::Truncated => {
                    extra = delay;
                    truncate = true;
                    outcome = "truncated";
                }
                FaultKind::MidStreamError => {
                    let status = f.status.unwrap_or(529);
                    let message = f
                        .message
                        .clone()
                        .unwrap_or_else(|| default_message(face, status));
                    stream_error = Some(StreamError {
                        after_deltas: u64::from(f.after_deltas.unwrap_or(0)),
                        wait: f.delay.unwrap_or(spec.delta_interval),
                        status,
                        body: wire::anthropic_error(status, &message, f.error_code.as_deref(), rid),
                    });
                    outcome = "mid_stream_error";
                }
            }
        }

        // 5. Rate limits: the request costs what it will generate.
        let output_tokens = parsed
            .max_tokens
            .map_or(u64::from(spec.output_tokens), |m| {
                m.min(u64::from(spec.output_tokens))
            });
        let cost = Cost::request(parsed.input_tokens, output_tokens);
        if let Some(limiter) = st.limiters.get_mut(&spec.name) {
            if let Admission::Refused(refusal) = limiter.admit(cost, d.now) {
                let response = rate_limited(face, refusal, rid);
                entry.status = (!truncate).then_some(response.status);
                entry.outcome = if truncate {
                    "truncated"
                } else {
                    "rate_limited"
                }
                .into();
                return Action::Send {
                    delay: extra,
                    response,
                    truncate,
                };
            }
            // Output is charged as produced: a stream that breaks after N deltas produced N
            // tokens, so the rest of the charge goes back. The simulator knows this now, so it
            // settles at once rather than when the stream breaks.
            if let Some(e) = &stream_error {
                limiter.settle_output(output_tokens, e.after_deltas.min(output_tokens), d.now);
            }
        }

        // 6. The answer.
        let jitter = spec.latency_jitter.mul_f64(rng.next_f64());
        let capped = output_tokens < u64::from(spec.output_tokens);
        entry.status = (!truncate).then_some(200);
        entry.outcome = outcome.into();
        let (delay, response) = if face == Wire::OpenAi {
            let id = self.new_id("chatcmpl-");
            let finish = if capped { "length" } else { "stop" };
            let body = wire::chat_completion_body(
                &id,
                &parsed.model,
                parsed.input_tokens,
                output_tokens,
                finish,
            );
            (spec.latency + jitter, Response::json(200, &body))
        } else {
            let id = self.new_id(match face {
                Wire::Bedrock => "msg_bdrk_",
                Wire::Vertex => "msg_vrtx_",
                Wire::Anthropic | Wire::OpenAi => "msg_",
            });
            let stop = if capped { "max_tokens" } else { "end_turn" };
            if parsed.stream {
                let deltas = stream_error
                    .as_ref()
                    .map_or(output_tokens, |e| e.after_deltas.min(output_tokens));
                let events = wire::stream_events(&StreamSpec {
                    id: &id,
                    model: &parsed.model,
                    input_tokens: parsed.input_tokens,
                    output_tokens,
                    stop_reason: stop,
                    delta_interval: spec.delta_interval,
                    error: stream_error,
                });
                let first_byte = spec.time_to_first_token + jitter;
                let response = if face == Wire::Bedrock {
                    let metrics = InvocationMetrics {
                        input_tokens: parsed.input_tokens,
                        output_tokens,
                        first_byte_ms: millis(first_byte),
                        invocation_ms: millis(first_byte + spec.delta_interval * to_u32(deltas)),
                    };
                    Response {
                        status: 200,
                        headers: vec![(
                            "x-amzn-bedrock-content-type".into(),
                            "application/json".into(),
                        )],
                        body: Body::Stream {
                            content_type: EVENT_STREAM,
                            parts: wire::event_stream(events, &metrics),
                        },
                        close: false,
                    }
                } else {
                    Response {
                        status: 200,
                        headers: vec![("cache-control".into(), "no-cache".into())],
                        body: Body::Stream {
                            content_type: SSE,
                            parts: wire::sse(events),
                        },
                        close: false,
                    }
                };
                (first_byte, response)
            } else {
                let body = wire::message_body(
                    &id,
                    &parsed.model,
                    parsed.input_tokens,
                    output_tokens,
                    stop,
                );
                let mut response = Response::json(200, &body);
                if face == Wire::Bedrock {
                    let latency = spec.latency + jitter;
                    response = response
                        .header(
                            "x-amzn-bedrock-input-token-count",
                            parsed.input_tokens.to_string(),
                        )
                        .header(
                            "x-amzn-bedrock-output-token-count",
                            output_tokens.to_string(),
                        )
                        .header(
                            "x-amzn-bedrock-invocation-latency",
                            millis(latency).to_string(),
                        );
                }
                (spec.latency + jitter, response)
            }
        };
        Action::Send {
            delay: extra + delay,
            response,
            truncate,
        }
    }

    /// `/_sim/...`: not logged, no auth (the simulator only listens on loopback).
    fn control(&self, req: &Request) -> Action {
        let response = match (req.method.as_str(), req.path.as_str()) {
            ("POST", "/_sim/reset") => {
                self.reset();
                Response::json(200, &json!({"reset": true}))
            }
            ("GET", "/_sim/log") => {
                let log = self.log();
                Response::json(200, &serde_json::to_value(log).unwrap_or_default())
            }
            ("PUT", "/_sim/scenario") => match self.put_scenario(req) {
                Ok(()) => Response::json(200, &json!({"scenario": "replaced"})),
                Err(message) => control_error(400, &message),
            },
            (_, "/_sim/reset" | "/_sim/log" | "/_sim/scenario") => control_error(
                405,
                "use POST /_sim/reset, GET /_sim/log or PUT /_sim/scenario",
            ),
            (_, path) => control_error(404, &format!("no control endpoint {path}")),
        };
        now(response)
    }

    fn put_scenario(&self, req: &Request) -> Result<(), String> {
        let text = std::str::from_utf8(&req.body)
            .map_err(|_| "the scenario is not valid UTF-8".to_owned())?;
        let is_toml = req
            .header("content-type")
            .is_some_and(|ct| ct.to_ascii_lowercase().contains("toml"));
        let scenario = if is_toml {
            Scenario::from_toml(text)
        } else {
            Scenario::from_json(text)
        }
        .map_err(|e| e.to_string())?;
        self.set_scenario(scenario).map_err(|e| e.to_string())
    }
}

/// Send `response` at once.
fn now(response: Response) -> Action {
    Action::Send {
        delay: Duration::ZERO,
        response,
        truncate: false,
    }
}

/// The inputs of one decision.
struct Decide<'a> {
    req: &'a Request,
    route: &'a Route,
    parsed: Result<Parsed, String>,
    now: Instant,
    sim_time: Duration,
    request_id: &'a str,
}

/// Whether `fault` can apply to this request at all (before its probability is drawn).
fn applies(fault: &Fault, stream: bool, face: Wire) -> bool {
    match fault.kind {
        // Only a stream can break in the middle; other requests fall through to later faults.
        FaultKind::MidStreamError => stream && face != Wire::OpenAi,
        _ => true,
    }
}

/// The key a request carries: on the Anthropic wire `x-api-key` first, then
/// `Authorization: Bearer` (the only one the OpenAI and Vertex wires read); on Bedrock the
/// access key id of a SigV4 `Authorization: AWS4-HMAC-SHA256 Credential=AKID/...` header
/// (the signature is not checked: the simulator stands in for Bedrock's capacity, not its
/// authentication). Empty values count as no key.
fn request_key(req: &Request, face: Wire) -> Option<&str> {
    if face == Wire::Bedrock {
        return sigv4_access_key(req.header("authorization")?);
    }
    let x_api_key = match face {
        Wire::Anthropic => req.header("x-api-key").map(str::trim),
        Wire::OpenAi | Wire::Vertex | Wire::Bedrock => None,
    };
    let bearer = || {
        let v = req.header("authorization")?.trim();
        let (scheme, token) = v.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then_some(token.trim())
    };
    x_api_key
        .filter(|k| !k.is_empty())
        .or_else(|| bearer().filter(|k| !k.is_empty()))
}

/// The access key id of a SigV4 authorization header that has a credential scope and a
/// signature.
fn sigv4_access_key(value: &str) -> Option<&str> {
    let params = value.trim().strip_prefix("AWS4-HMAC-SHA256 ")?;
    let mut credential = None;
    let mut signed = false;
    for param in params.split(',') {
        let (name, value) = param.trim().split_once('=')?;
        match name {
            "Credential" => credential = value.split('/').next(),
            "Signature" => signed = !value.is_empty(),
            _ => {}
        }
    }
    credential.filter(|k| !k.is_empty() && signed)
}

/// The last four characters of a key of at least 12 characters, else empty: the rule of
/// `ApiKey::tail`, so the log matches the runtime's key labels (`"…" + key_tail`).
pub(crate) fn key_tail(key: &str) -> String {
    let n = key.chars().count();
    if n < 12 {
        String::new()
    } else {
        key.chars().skip(n - 4).collect()
    }
}

/// Why a request's credentials were refused: the message (never the key), and the exception
/// Bedrock names it with.
struct Denied {
    message: &'static str,
    exception: &'static str,
}

/// Check the request's credentials against the scenario: a key on every wire (Bedrock's also
/// needs `x-amz-date`), then `revoked_keys` and `keys`, which hold API keys, bearer tokens
/// and AWS access key ids alike.
fn authenticate(scenario: &Scenario, req: &Request, face: Wire) -> Result<(), Denied> {
    let key = request_key(req, face);
    let denied = |message, exception| Err(Denied { message, exception });
    if face == Wire::Bedrock {
        if req.header("authorization").is_none() {
            return denied(
                "Missing Authentication Token",
                "MissingAuthenticationTokenException",
            );
        }
        if key.is_none() {
            return denied(
                "Authorization header requires 'Credential' and 'Signature' parameters of an \
                 AWS4-HMAC-SHA256 signature",
                "IncompleteSignatureException",
            );
        }
        if req.header("x-amz-date").is_none_or(|d| d.trim().is_empty()) {
            return denied(
                "Authorization header requires existence of a 'X-Amz-Date' header",
                "IncompleteSignatureException",
            );
        }
    }
    let Some(key) = key else {
        return denied(
            match face {
                Wire::Anthropic => {
                    "x-api-key header is required (or send the key as Authorization: Bearer)"
                }
                Wire::OpenAi => "You didn't provide an API key: send it as Authorization: Bearer",
                Wire::Vertex | Wire::Bedrock => {
                    "Request is missing required authentication credential. Expected OAuth 2 \
                     access token as Authorization: Bearer"
                }
            },
            "",
        );
    };
    let unrecognized = "UnrecognizedClientException";
    if scenario.revoked_keys.iter().any(|k| k == key) {
        return match face {
            Wire::Bedrock => denied(
                "The security token included in the request is expired",
                "ExpiredTokenException",
            ),
            _ => denied("this API key has been revoked", ""),
        };
    }
    if let Some(keys) = &scenario.keys {
        if !keys.iter().any(|k| k == key) {
            return denied(
                match face {
                    Wire::Anthropic => "invalid x-api-key",
                    Wire::OpenAi => "Incorrect API key provided",
                    Wire::Bedrock => "The security token included in the request is invalid",
                    Wire::Vertex => "Request had invalid authentication credentials",
                },
                unrecognized,
            );
        }
    }
    Ok(())
}

/// The answer to refused credentials, in the wire's shape: 401 on the Anthropic, OpenAI and
/// Vertex (`UNAUTHENTICATED`) wires, Bedrock's 403 with the exception's name.
fn denied_response(face: Wire, denied: &Denied, request_id: &str) -> Response {
    match face {
        Wire::Bedrock => bedrock_response(403, denied.exception, denied.message),
        _ => error_response(face, 401, denied.message, None, None, request_id),
    }
}

/// A Bedrock error answer: `status`, `x-amzn-ErrorType` and `{"message"}`.
fn bedrock_response(status: u16, exception: &str, message: &str) -> Response {
    Response::json(status, &json!({ "message": message }))
        .header("x-amzn-ErrorType", wire::bedrock_error_type(exception))
}

/// The request id headers of each wire: `request-id` (Anthropic, Vertex), also `x-request-id`
/// (OpenAI), `x-amzn-RequestId` (Bedrock).
fn id_headers(face: Wire, request_id: &str, out: &mut Vec<(String, String)>) {
    match face {
        Wire::Bedrock => out.push(("x-amzn-RequestId".into(), request_id.to_owned())),
        Wire::Anthropic | Wire::Vertex => out.push(("request-id".into(), request_id.to_owned())),
        Wire::OpenAi => {
            out.push(("request-id".into(), request_id.to_owned()));
            out.push(("x-request-id".into(), request_id.to_owned()));
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn to_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Parse and validate a body with the runtime's own rules ([`Call::from_value`]), so a body
/// the runtime accepts is one the simulator accepts; input tokens are the simulator's own
/// count ([`count_input_tokens`]), not the runtime's estimate.
fn parse(route: &Route, body: &[u8]) -> (Hints, Result<Parsed, String>) {
    let platform = matches!(route.face, Wire::Bedrock | Wire::Vertex);
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            let message = format!("the request body is not valid JSON: {e}");
            let hints = Hints {
                model: route.path_model.clone(),
                stream: route.path_stream,
            };
            return (hints, Err(message));
        }
    };
    let hints = if platform && route.path_model.is_some() {
        Hints {
            model: route.path_model.clone(),
            stream: route.path_stream,
        }
    } else {
        Hints {
            model: value
                .get("model")
                .and_then(Value::as_str)
                .map(str::to_owned),
            stream: value.get("stream").and_then(Value::as_bool) == Some(true),
        }
    };
    let result = if platform {
        platform_body(route, value).and_then(|v| validate(route.endpoint, v))
    } else {
        validate(route.endpoint, value)
    };
    (hints, result)
}

/// A Bedrock or Vertex body as the Messages request it carries: `anthropic_version` checked
/// and removed, `anthropic_beta` checked and removed, the path's model (and the path's stream)
/// put in. Bedrock's counter wraps the InvokeModel body (base64) in `input.invokeModel.body`.
fn platform_body(route: &Route, value: Value) -> Result<Value, String> {
    let Value::Object(mut body) = value else {
        return Err("the request body must be a JSON object".into());
    };
    let bedrock = route.face == Wire::Bedrock;
    if bedrock && route.endpoint == Endpoint::CountTokens {
        body = invoke_model_input(&body)?;
    }
    let version = if bedrock {
        BEDROCK_VERSION
    } else {
        VERTEX_VERSION
    };
    match body.remove("anthropic_version") {
        Some(Value::String(v)) if v == version => {}
        Some(other) => {
            return Err(format!(
                "anthropic_version: {other} is not supported here: send \"{version}\""
            ))
        }
        None => return Err(format!("anthropic_version is required: send \"{version}\"")),
    }
    if let Some(betas) = body.remove("anthropic_beta") {
        let strings = betas
            .as_array()
            .is_some_and(|a| a.iter().all(Value::is_string));
        if !strings {
            return Err("anthropic_beta must be an array of strings".into());
        }
    }
    if let Some(model) = &route.path_model {
        if body.contains_key("model") {
            return Err("extraneous key [model] is not permitted: the path names the model".into());
        }
        body.insert("model".into(), Value::from(model.clone()));
    }
    if route.endpoint == Endpoint::Messages {
        match body.remove("stream") {
            None | Some(Value::Null) => {}
            // Vertex takes the SDK's `stream` beside the method, which decides.
            Some(Value::Bool(_)) if !bedrock => {}
            Some(_) if bedrock => {
                return Err(
                    "extraneous key [stream] is not permitted: use invoke-with-response-stream"
                        .into(),
                )
            }
            Some(_) => return Err("`stream` must be a boolean".into()),
        }
        body.insert("stream".into(), Value::Bool(route.path_stream));
    }
    Ok(Value::Object(body))
}

/// The InvokeModel body inside a Bedrock `CountTokens` request.
fn invoke_model_input(
    body: &serde_json::Map<String, Value>,
) -> Result<serde_json::Map<String, Value>, String> {
    use base64::Engine as _;
    let Some(encoded) = body
        .get("input")
        .and_then(|i| i.get("invokeModel"))
        .and_then(|i| i.get("body"))
        .and_then(Value::as_str)
    else {
        return Err(
            "input.invokeModel.body is required (the simulator counts InvokeModel bodies only)"
                .into(),
        );
    };
    let raw = base64::engine::general_purpose::STANDARD
        .decode(encoded.as_bytes())
        .map_err(|e| format!("input.invokeModel.body is not base64: {e}"))?;
    match serde_json::from_slice(&raw) {
        Ok(Value::Object(inner)) => Ok(inner),
        _ => Err("input.invokeModel.body is not a JSON object".into()),
    }
}

fn validate(endpoint: Endpoint, value: Value) -> Result<Parsed, String> {
    let stream = match value.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("`stream` must be a boolean".into()),
    };
    match endpoint {
        Endpoint::Messages => {
            let input_tokens = count_input_tokens(&value);
            let call = Call::from_value(value).map_err(invalid)?;
            Ok(Parsed {
                model: call.model().to_owned(),
                max_tokens: Some(call.max_tokens()),
                stream,
                // The runtime's validation requires a non-empty `messages` array, so this is
                // always counted.
                input_tokens: input_tokens.unwrap_or(1),
            })
        }
        Endpoint::CountTokens | Endpoint::ChatCompletions => {
            let Value::Object(mut body) = value else {
                return Err("the request body must be a JSON object".into());
            };
            let max_tokens = if endpoint == Endpoint::ChatCompletions {
                let field = ["max_completion_tokens", "max_tokens"]
                    .into_iter()
                    .find(|k| body.get(*k).is_some_and(|v| !v.is_null()));
                match field {
                    None => None,
                    Some(k) => match body.get(k).and_then(Value::as_u64) {
                        Some(n) if n > 0 => Some(n),
                        _ => return Err(format!("`{k}` must be a positive integer")),
                    },
                }
            } else {
                None
            };
            // max_tokens is not part of these requests: a placeholder lets the runtime's
            // validation check `model` and `messages` only.
            body.insert("max_tokens".into(), Value::from(1));
            let body = Value::Object(body);
            let input_tokens = count_input_tokens(&body);
            let call = Call::from_value(body).map_err(invalid)?;
            Ok(Parsed {
                model: call.model().to_owned(),
                max_tokens,
                stream,
                input_tokens: input_tokens.unwrap_or(1),
            })
        }
    }
}

fn invalid(err: CoreError) -> String {
    match err {
        CoreError::InvalidCall(message) => message,
        other => other.to_string(),
    }
}

/// An error in the shape of the request's API (on Bedrock: the status Bedrock sends for it,
/// see [`wire::bedrock_error`]; on Vertex: Google's shape for the platform's own errors,
/// Anthropic's for the model's, see [`wire::google_status`]).
fn error_response(
    face: Wire,
    status: u16,
    message: &str,
    error_code: Option<&str>,
    openai_kind: Option<&str>,
    request_id: &str,
) -> Response {
    match face {
        Wire::Anthropic => Response::json(
            status,
            &wire::anthropic_error(status, message, error_code, request_id),
        ),
        Wire::OpenAi => Response::json(
            status,
            &wire::openai_error(status, message, openai_kind, error_code),
        ),
        Wire::Bedrock => {
            let (sent, exception, _) = wire::bedrock_error(status, message);
            bedrock_response(sent, exception, message)
        }
        Wire::Vertex => match wire::google_status(status) {
            Some(google) => Response::json(status, &wire::google_error(status, google, message)),
            None => Response::json(
                status,
                &wire::anthropic_error(status, message, error_code, request_id),
            ),
        },
    }
}

/// The default message of an error `status` on the wire.
fn default_message(face: Wire, status: u16) -> String {
    match face {
        Wire::Bedrock => wire::bedrock_default_message(status),
        _ => wire::default_message(status),
    }
}

/// The answer of a `status` fault, with its retry headers (Bedrock and Vertex send none).
fn fault_response(face: Wire, fault: &Fault, request_id: &str) -> Response {
    // Validation guarantees a status on `status` faults; 500 only keeps this total.
    let status = fault.status.unwrap_or(500);
    let message = fault
        .message
        .clone()
        .unwrap_or_else(|| default_message(face, status));
    let mut resp = error_response(
        face,
        status,
        &message,
        fault.error_code.as_deref(),
        None,
        request_id,
    );
    if matches!(face, Wire::Bedrock | Wire::Vertex) {
        return resp;
    }
    if let Some(secs) = fault.retry_after {
        resp = resp.header("retry-after", format_number(secs));
    }
    if let Some(ms) = fault.retry_after_ms {
        resp = resp.header("retry-after-ms", format_number(ms));
    }
    if let Some(retry) = fault.should_retry {
        resp = resp.header("x-should-retry", retry.to_string());
    }
    resp
}

/// `2` for 2.0, `2.5` for 2.5: whole numbers without a fraction, as servers usually send them.
fn format_number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        x.to_string()
    }
}

/// A truthful 429: `retry-after` is the whole seconds (rounded up) until the same request
/// would be admitted.
fn rate_limited(face: Wire, refusal: Refusal, request_id: &str) -> Response {
    let Refusal {
        dimension,
        limit,
        wanted,
        retry_after,
    } = refusal;
    let unit = dimension.unit();
    let Some(wait) = retry_after else {
        // More than the whole limit: waiting never helps, so say so and forbid retries.
        let message = format!(
            "This request needs {wanted} {unit} but your organization's rate limit is {limit} \
             {unit} per minute, so it can never be admitted: lower max_tokens or the prompt"
        );
        let kind = openai_dimension(dimension);
        let resp = error_response(face, 429, &message, None, Some(kind), request_id);
        return if matches!(face, Wire::Bedrock | Wire::Vertex) {
            resp
        } else {
            resp.header("x-should-retry", "false")
        };
    };
    // Whole seconds, rounded up so a client that waits them is admitted; a refusal always
    // waits, so at least 1.
    let retry_after = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
    let message = format!(
        "This request would exceed your organization's rate limit of {limit} {unit} per minute \
         (simulated). Retry after {retry_after} s."
    );
    let kind = openai_dimension(dimension);
    let resp = error_response(face, 429, &message, None, Some(kind), request_id);
    // Bedrock's ThrottlingException and Vertex's RESOURCE_EXHAUSTED carry no retry-after.
    if matches!(face, Wire::Bedrock | Wire::Vertex) {
        resp
    } else {
        resp.header("retry-after", retry_after.to_string())
    }
}

fn openai_dimension(d: Dimension) -> &'static str {
    match d {
        Dimension::Requests => "requests",
        Dimension::InputTokens | Dimension::OutputTokens => "tokens",
    }
}

/// An error from the control plane or the HTTP layer: the Messages API shape, no request id.
fn control_error(status: u16, message: &str) -> Response {
    Response::json(
        status,
        &json!({"type": "error", "error": {"type": wire::error_type(status), "message": message}}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_tail_follows_the_api_key_rule() {
        assert_eq!(key_tail("sk-ant-api03-abcdwxyz"), "wxyz");
        assert_eq!(key_tail("abcdefghijkl"), "ijkl");
        assert_eq!(key_tail("abcdefghijk"), "");
    }

    #[test]
    fn numbers_print_like_headers() {
        assert_eq!(format_number(2.0), "2");
        assert_eq!(format_number(2.5), "2.5");
        assert_eq!(format_number(1500.25), "1500.25");
    }

    #[test]
    fn validation_counts_with_the_simulators_own_rule() {
        let body = json!({"model": "m", "max_tokens": 5, "system": "be brief",
                          "messages": [{"role": "user", "content": "hello there"}]});
        let parsed = validate(Endpoint::Messages, body.clone()).unwrap();
        // "be brief" + "hello there": 19 bytes -> 5 tokens, plus 3 for the message.
        assert_eq!(parsed.input_tokens, 8);
        assert_eq!(Some(parsed.input_tokens), count_input_tokens(&body));
        let parsed = validate(Endpoint::CountTokens, body).unwrap();
        assert_eq!(parsed.input_tokens, 8);
    }
}
