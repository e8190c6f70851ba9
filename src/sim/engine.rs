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
use super::scenario::{Fault, FaultKind, Scenario, ScenarioError};
use super::tokens::count_input_tokens;
use super::wire::{self, SseEvent, StreamError, StreamSpec};
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
    /// `text/event-stream`, chunked, event by event.
    Sse(Vec<SseEvent>),
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

/// Which API a request speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Face {
    Anthropic,
    OpenAi,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    Messages,
    CountTokens,
    ChatCompletions,
}

impl Endpoint {
    fn face(self) -> Face {
        match self {
            Endpoint::ChatCompletions => Face::OpenAi,
            Endpoint::Messages | Endpoint::CountTokens => Face::Anthropic,
        }
    }
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
        let endpoint = match path {
            "/v1/messages" => Endpoint::Messages,
            "/v1/messages/count_tokens" => Endpoint::CountTokens,
            "/v1/chat/completions" => Endpoint::ChatCompletions,
            _ => {
                let message = format!("Not found: no route for {} {path}", req.method);
                return now(self.refuse(req, Face::Anthropic, 404, &message, "unknown_path"));
            }
        };
        if req.method != "POST" {
            let message = format!("Method {} is not allowed on {path}: use POST", req.method);
            let face = endpoint.face();
            return now(self.refuse(req, face, 405, &message, "method_not_allowed"));
        }
        self.api(req, endpoint)
    }

    /// An answer the server decided on before reading the body (411, 413, a bad
    /// Content-Length): logged like any API request, and the connection closes after it.
    pub fn early(&self, req: &Request, status: u16, message: &str, outcome: &str) -> Response {
        let face = if req.path == "/v1/chat/completions" {
            Face::OpenAi
        } else {
            Face::Anthropic
        };
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
        face: Face,
        status: u16,
        message: &str,
        outcome: &str,
    ) -> Response {
        let request_id = self.new_id("req_");
        let mut st = self.lock();
        let mut entry = self.entry(&mut st, req, face, &Hints::default(), &request_id);
        entry.status = Some(status);
        entry.outcome = outcome.to_owned();
        st.record(entry);
        error_response(face, status, message, None, None, &request_id)
            .header("request-id", request_id)
    }

    /// A log entry for `req`, taking the next sequence number.
    fn entry(
        &self,
        st: &mut State,
        req: &Request,
        face: Face,
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
    fn api(&self, req: &Request, endpoint: Endpoint) -> Action {
        let face = endpoint.face();
        // Parsing needs no state: do it before taking the lock.
        let (hints, parsed) = parse(endpoint, &req.body);
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
                endpoint,
                parsed,
                now,
                sim_time,
                request_id: &request_id,
            },
            &mut entry,
        );
        if let Action::Send { response, .. } = &mut action {
            response
                .headers
                .push(("request-id".into(), request_id.clone()));
            if face == Face::OpenAi {
                response
                    .headers
                    .push(("x-request-id".into(), request_id.clone()));
            }
            let limited = entry.model.as_ref().and_then(|m| st.limiters.get(m));
            if let Some(limiter) = limited {
                let left = limiter.remaining(now);
                match face {
                    Face::Anthropic => {
                        wire::anthropic_ratelimit_headers(&left, &mut response.headers)
                    }
                    Face::OpenAi => wire::openai_ratelimit_headers(&left, &mut response.headers),
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
        let face = d.endpoint.face();
        let rid = d.request_id;
        let send = |entry: &mut LogEntry, status: u16, outcome: &str, response: Response| {
            entry.status = Some(status);
            entry.outcome = outcome.to_owned();
            Action::Send {
                delay: Duration::ZERO,
                response,
                truncate: false,
            }
        };

        // 1. Authentication.
        if let Err(message) = authenticate(scenario, request_key(d.req, face), face) {
            let resp = error_response(face, 401, message, None, None, rid);
            return send(entry, 401, "unauthenticated", resp);
        }
        // 2. Validation.
        let parsed = match d.parsed {
            Ok(p) => p,
            Err(message) => {
                let resp = error_response(face, 400, &message, None, None, rid);
                return send(entry, 400, "invalid_request", resp);
            }
        };
        entry.model = Some(parsed.model.clone());
        // 3. The model.
        let Some(spec) = scenario.model(&parsed.model) else {
            let message = match face {
                Face::Anthropic => format!("model: {}", parsed.model),
                Face::OpenAi => format!(
                    "The model `{}` does not exist or you do not have access to it.",
                    parsed.model
                ),
            };
            let resp = error_response(face, 404, &message, None, None, rid);
            return send(entry, 404, "unknown_model", resp);
        };
        if d.endpoint == Endpoint::CountTokens {
            let resp = Response::json(200, &json!({"input_tokens": parsed.input_tokens}));
            return send(entry, 200, "ok", resp);
        }
        if face == Face::OpenAi && parsed.stream {
            let message = "stream = true is not supported by the simulator's chat completions \
                           endpoint: send stream = false, or stream from /v1/messages";
            let resp = error_response(face, 400, message, None, None, rid);
            return send(entry, 400, "invalid_request", resp);
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
                    entry.status = f.status;
                    entry.outcome = "status".into();
                    return Action::Send {
                        delay,
                        response: fault_response(face, f, rid),
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
                        .unwrap_or_else(|| wire::default_message(status));
                    stream_error = Some(StreamError {
                        after_deltas: u64::from(f.after_deltas.unwrap_or(0)),
                        wait: f.delay.unwrap_or(spec.delta_interval),
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
                entry.status = (!truncate).then_some(429);
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
        let (delay, response) = if face == Face::OpenAi {
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
            let id = self.new_id("msg_");
            let stop = if capped { "max_tokens" } else { "end_turn" };
            if parsed.stream {
                let events = wire::stream_events(&StreamSpec {
                    id: &id,
                    model: &parsed.model,
                    input_tokens: parsed.input_tokens,
                    output_tokens,
                    stop_reason: stop,
                    delta_interval: spec.delta_interval,
                    error: stream_error,
                });
                let response = Response {
                    status: 200,
                    headers: vec![("cache-control".into(), "no-cache".into())],
                    body: Body::Sse(events),
                    close: false,
                };
                (spec.time_to_first_token + jitter, response)
            } else {
                let body = wire::message_body(
                    &id,
                    &parsed.model,
                    parsed.input_tokens,
                    output_tokens,
                    stop,
                );
                (spec.latency + jitter, Response::json(200, &body))
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
    endpoint: Endpoint,
    parsed: Result<Parsed, String>,
    now: Instant,
    sim_time: Duration,
    request_id: &'a str,
}

/// Whether `fault` can apply to this request at all (before its probability is drawn).
fn applies(fault: &Fault, stream: bool, face: Face) -> bool {
    match fault.kind {
        // Only a stream can break in the middle; other requests fall through to later faults.
        FaultKind::MidStreamError => stream && face == Face::Anthropic,
        _ => true,
    }
}

/// The key a request carries: `x-api-key` first, then `Authorization: Bearer` (the only one
/// the OpenAI face reads). Empty values count as no key.
fn request_key(req: &Request, face: Face) -> Option<&str> {
    let x_api_key = match face {
        Face::Anthropic => req.header("x-api-key").map(str::trim),
        Face::OpenAi => None,
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

/// Check the key against the scenario. The messages never contain the key.
fn authenticate(scenario: &Scenario, key: Option<&str>, face: Face) -> Result<(), &'static str> {
    let Some(key) = key else {
        return Err(match face {
            Face::Anthropic => {
                "x-api-key header is required (or send the key as Authorization: Bearer)"
            }
            Face::OpenAi => "You didn't provide an API key: send it as Authorization: Bearer",
        });
    };
    if scenario.revoked_keys.iter().any(|k| k == key) {
        return Err("this API key has been revoked");
    }
    if let Some(keys) = &scenario.keys {
        if !keys.iter().any(|k| k == key) {
            return Err(match face {
                Face::Anthropic => "invalid x-api-key",
                Face::OpenAi => "Incorrect API key provided",
            });
        }
    }
    Ok(())
}

/// Parse and validate a body with the runtime's own rules ([`Call::from_value`]), so a body
/// the runtime accepts is one the simulator accepts; input tokens are the simulator's own
/// count ([`count_input_tokens`]), not the runtime's estimate.
fn parse(endpoint: Endpoint, body: &[u8]) -> (Hints, Result<Parsed, String>) {
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            let message = format!("the request body is not valid JSON: {e}");
            return (Hints::default(), Err(message));
        }
    };
    let hints = Hints {
        model: value
            .get("model")
            .and_then(Value::as_str)
            .map(str::to_owned),
        stream: value.get("stream").and_then(Value::as_bool) == Some(true),
    };
    let result = validate(endpoint, value);
    (hints, result)
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

/// An error in the shape of the request's API.
fn error_response(
    face: Face,
    status: u16,
    message: &str,
    error_code: Option<&str>,
    openai_kind: Option<&str>,
    request_id: &str,
) -> Response {
    let body = match face {
        Face::Anthropic => wire::anthropic_error(status, message, error_code, request_id),
        Face::OpenAi => wire::openai_error(status, message, openai_kind, error_code),
    };
    Response::json(status, &body)
}

/// The answer of a `status` fault, with its retry headers.
fn fault_response(face: Face, fault: &Fault, request_id: &str) -> Response {
    // Validation guarantees a status on `status` faults; 500 only keeps this total.
    let status = fault.status.unwrap_or(500);
    let message = fault
        .message
        .clone()
        .unwrap_or_else(|| wire::default_message(status));
    let mut resp = error_response(
        face,
        status,
        &message,
        fault.error_code.as_deref(),
        None,
        request_id,
    );
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
fn rate_limited(face: Face, refusal: Refusal, request_id: &str) -> Response {
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
        return error_response(face, 429, &message, None, Some(kind), request_id)
            .header("x-should-retry", "false");
    };
    // Whole seconds, rounded up so a client that waits them is admitted; a refusal always
    // waits, so at least 1.
    let retry_after = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
    let message = format!(
        "This request would exceed your organization's rate limit of {limit} {unit} per minute \
         (simulated). Retry after {retry_after} s."
    );
    let kind = openai_dimension(dimension);
    error_response(face, 429, &message, None, Some(kind), request_id)
        .header("retry-after", retry_after.to_string())
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
