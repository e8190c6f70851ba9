//! What the simulator serves: keys, limits, models and their faults, read from TOML or JSON.
//!
//! A [`Scenario`] is plain data (`serde`), checked once by [`Scenario::validate`] so the server
//! never meets a value it cannot act on. Every error names the key path that is wrong, e.g.
//! `models[1].faults[0].status: 200 is not an error status`, and never echoes an API key.
//!
//! `examples/sim_scenario.toml` documents every key with comments.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Largest `output_tokens` a model may declare: answers are generated word by word, and a
/// simulator that builds megabyte answers by accident only slows the tests that use it.
pub const MAX_OUTPUT_TOKENS: u32 = 100_000;

/// A whole simulation: who may call, how fast, and what goes wrong when.
///
/// Deserialize it with [`Scenario::from_toml`], [`Scenario::from_json`] or
/// [`Scenario::from_file`] (all three validate), or build it in code and call
/// [`Scenario::validate`] (which [`crate::sim::Sim::start`] does anyway).
///
/// `Debug` hides key values; `Serialize` writes them, because a scenario sent to a simulator
/// subprocess (`PUT /_sim/scenario`) must carry them.
#[derive(Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Seed of every random draw (fault probabilities, latency jitter). The same seed and the same
    /// sequence of requests give the same outcomes.
    #[serde(default)]
    pub seed: u64,
    /// The accepted API keys. `None` accepts any non-empty key that is not revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<Vec<String>>,
    /// Keys that get `401 authentication_error`, as a revoked key does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked_keys: Vec<String>,
    /// Rate limits applied to every model that sets none of its own. `None`: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<RateLimits>,
    /// The models served; any other model name gets `404 not_found_error`.
    #[serde(default)]
    pub models: Vec<ModelSpec>,
}

impl fmt::Debug for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Key values stay out of debug output: say how many there are, never what they are.
        f.debug_struct("Scenario")
            .field("seed", &self.seed)
            .field("keys", &self.keys.as_ref().map(|k| Redacted(k.len())))
            .field("revoked_keys", &Redacted(self.revoked_keys.len()))
            .field("limits", &self.limits)
            .field("models", &self.models)
            .finish()
    }
}

/// Prints as `<N redacted>`.
struct Redacted(usize);

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} redacted>", self.0)
    }
}

/// Per-minute limits, enforced as continuously refilled token buckets (the API's algorithm), by
/// the simulator's own limiter: it shares no code with the runtime's governor, so it checks it.
///
/// Each model has its own buckets, as the API limits each model class separately; all keys
/// share them, as the keys of one organization do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    /// Requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u64>,
    /// Input tokens per minute (as counted by the simulator: see
    /// [`crate::sim::estimate_input_tokens`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_tokens_per_minute: Option<u64>,
    /// Output tokens per minute (a request costs the tokens it will generate; a stream cut by
    /// a `mid_stream_error` gets back those it never sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tokens_per_minute: Option<u64>,
}

impl RateLimits {
    /// True when no dimension is limited.
    pub fn is_unlimited(&self) -> bool {
        *self == Self::default()
    }
}

/// One model the simulator serves.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// The model name requests use, e.g. `claude-sonnet-4-5`.
    pub name: String,
    /// Time to the whole answer of a non-streaming request. Default 0.
    #[serde(default, with = "duration", skip_serializing_if = "Duration::is_zero")]
    pub latency: Duration,
    /// A uniform random extra in `[0, latency_jitter)` added to `latency` and to
    /// `time_to_first_token`, drawn from the seeded generator. Default 0.
    #[serde(default, with = "duration", skip_serializing_if = "Duration::is_zero")]
    pub latency_jitter: Duration,
    /// Streaming: time before the response head and `message_start`. Default 0.
    #[serde(default, with = "duration", skip_serializing_if = "Duration::is_zero")]
    pub time_to_first_token: Duration,
    /// Streaming: time between two `content_block_delta` events. Default 0.
    #[serde(default, with = "duration", skip_serializing_if = "Duration::is_zero")]
    pub delta_interval: Duration,
    /// Tokens (words) in a full answer; an answer has `min(max_tokens, output_tokens)`.
    /// Default 16, at most [`MAX_OUTPUT_TOKENS`].
    #[serde(default = "default_output_tokens")]
    pub output_tokens: u32,
    /// This model's own limits, replacing the scenario's `[limits]` for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<RateLimits>,
    /// What goes wrong, checked in order: the first that applies wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<Fault>,
    /// The wires this model is served on, e.g. `["bedrock"]` for a Bedrock model id. Default:
    /// every wire (the same faults and limits whichever one a request comes by). Over any other
    /// wire the name is unknown (`404`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wires: Option<Vec<Wire>>,
}

/// The APIs the simulator speaks. A model is named by the body's `model` on the Anthropic and
/// OpenAI wires, by the URL path on Bedrock and Vertex.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Wire {
    /// The Messages API: `/v1/messages`, `/v1/messages/count_tokens`.
    Anthropic,
    /// OpenAI-compatible chat completions: `/v1/chat/completions`.
    OpenAi,
    /// AWS Bedrock Runtime: `/model/{id}/invoke`, `/invoke-with-response-stream`,
    /// `/count-tokens`.
    Bedrock,
    /// Google Vertex AI: `.../publishers/anthropic/models/{model}:rawPredict`,
    /// `:streamRawPredict`, `count-tokens:rawPredict`.
    Vertex,
}

impl Wire {
    /// The name used in scenarios.
    pub fn as_str(self) -> &'static str {
        match self {
            Wire::Anthropic => "anthropic",
            Wire::OpenAi => "openai",
            Wire::Bedrock => "bedrock",
            Wire::Vertex => "vertex",
        }
    }
}

fn default_output_tokens() -> u32 {
    16
}

impl ModelSpec {
    /// A healthy, instant model with 16-token answers and no faults.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            latency: Duration::ZERO,
            latency_jitter: Duration::ZERO,
            time_to_first_token: Duration::ZERO,
            delta_interval: Duration::ZERO,
            output_tokens: default_output_tokens(),
            limits: None,
            faults: Vec::new(),
            wires: None,
        }
    }

    /// Whether requests over `wire` reach this model.
    pub fn serves(&self, wire: Wire) -> bool {
        self.wires.as_ref().is_none_or(|w| w.contains(&wire))
    }
}

/// How a fault breaks a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// Answer with an API error: `status`, the matching `error.type`, and the optional
    /// `retry_after`, `retry_after_ms`, `should_retry`, `error_code` and `message`.
    Status,
    /// Close the connection with a TCP reset (SO_LINGER 0) without answering.
    Reset,
    /// Read the request and never answer; the socket is held until the client gives up or the
    /// simulator shuts down.
    Hang,
    /// Wait `delay` before the first byte of the answer (which is otherwise normal).
    SlowFirstByte,
    /// Announce the full length, send half of the answer, then close.
    Truncated,
    /// Streaming requests only: after `after_deltas` text deltas, send `event: error` (type from
    /// `status`, default 529 `overloaded_error`) and end the stream. Non-streaming requests are
    /// not affected (the next fault in the list may apply to them).
    MidStreamError,
}

impl FaultKind {
    /// The name used in scenarios and in [`crate::sim::LogEntry::outcome`].
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Status => "status",
            FaultKind::Reset => "reset",
            FaultKind::Hang => "hang",
            FaultKind::SlowFirstByte => "slow_first_byte",
            FaultKind::Truncated => "truncated",
            FaultKind::MidStreamError => "mid_stream_error",
        }
    }
}

/// One fault of a model. Fields that do not apply to its `kind` are refused by validation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// What the fault does.
    pub kind: FaultKind,
    /// `status`: the HTTP status (400..=599), required. `mid_stream_error`: the error event's
    /// type is the one of this status (default 529).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Start of the active window on the simulator's clock (since start or reset). Default 0.
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub from: Option<Duration>,
    /// End of the active window (exclusive). Default: forever.
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub until: Option<Duration>,
    /// Chance that the fault hits a request inside its window, drawn from the seeded generator.
    /// Default 1.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub probability: f64,
    /// `status` only: `retry-after` header, in seconds (fractions allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<f64>,
    /// `status` only: `retry-after-ms` header, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<f64>,
    /// `status` only: `x-should-retry` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub should_retry: Option<bool>,
    /// `status` and `mid_stream_error`: `error.details.error_code`, e.g.
    /// `ramp_limit_exceeded` or `enforced_spend_limit_reached` on a 429.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// `status` and `mid_stream_error`: `error.message` (a default per status otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `slow_first_byte`: the delay, required. `status`, `reset`, `truncated`,
    /// `mid_stream_error`: an optional wait before the fault acts. Not allowed on `hang`.
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub delay: Option<Duration>,
    /// `mid_stream_error` only: text deltas sent before the error event. Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_deltas: Option<u32>,
}

fn one() -> f64 {
    1.0
}

fn is_one(p: &f64) -> bool {
    *p == 1.0
}

impl Fault {
    /// A fault of `kind` that always applies, with no other field set (a `status` fault still
    /// needs its `status`, a `slow_first_byte` its `delay`).
    pub fn new(kind: FaultKind) -> Self {
        Self {
            kind,
            status: None,
            from: None,
            until: None,
            probability: 1.0,
            retry_after: None,
            retry_after_ms: None,
            should_retry: None,
            error_code: None,
            message: None,
            delay: None,
            after_deltas: None,
        }
    }

    /// A `status` fault answering `status`.
    pub fn status(status: u16) -> Self {
        Self {
            status: Some(status),
            ..Self::new(FaultKind::Status)
        }
    }

    /// Whether the window contains sim time `t`: `from <= t < until`.
    pub fn active_at(&self, t: Duration) -> bool {
        self.from.is_none_or(|from| t >= from) && self.until.is_none_or(|until| t < until)
    }
}

/// Why a scenario was refused. The message names the key path and what is wrong; it never
/// contains an API key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScenarioError {
    /// The text is not valid TOML or JSON, or a value has the wrong type or an unknown key.
    #[error("{}", parse_message(format, key, line, message))]
    Parse {
        /// `"TOML"` or `"JSON"`.
        format: &'static str,
        /// The key path where it went wrong (`"."` for the document itself).
        key: String,
        /// 1-based line and column, when known.
        line: Option<(usize, usize)>,
        /// What the parser said.
        message: String,
    },
    /// The scenario parsed but a value cannot be used.
    #[error("{key}: {problem}")]
    Invalid {
        /// The key path, e.g. `models[1].faults[0].status`.
        key: String,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// The scenario file could not be read.
    #[error("cannot read scenario file {}: {message}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        message: String,
    },
}

impl ScenarioError {
    /// The key path the error is about, if it is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ScenarioError::Parse { key, .. } | ScenarioError::Invalid { key, .. } => Some(key),
            ScenarioError::Read { .. } => None,
        }
    }

    fn invalid(key: impl Into<String>, problem: impl Into<String>) -> Self {
        ScenarioError::Invalid {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

fn parse_message(format: &str, key: &str, line: &Option<(usize, usize)>, message: &str) -> String {
    let mut out = format!("scenario {format}");
    if let Some((l, c)) = line {
        out.push_str(&format!(" (line {l}, column {c})"));
    }
    out.push_str(": ");
    if key != "." && !key.is_empty() {
        out.push_str(key);
        out.push_str(": ");
    }
    out.push_str(message);
    out
}

impl Scenario {
    /// Parse and validate a TOML scenario.
    ///
    /// # Errors
    ///
    /// [`ScenarioError::Parse`] for bad TOML, wrong types or unknown keys;
    /// [`ScenarioError::Invalid`] for values [`Scenario::validate`] refuses.
    pub fn from_toml(text: &str) -> Result<Self, ScenarioError> {
        let scenario: Scenario =
            crate::toml_keyed::parse(text).map_err(|p| ScenarioError::Parse {
                format: "TOML",
                key: p.key,
                line: p.line,
                message: p.message,
            })?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// Parse and validate a JSON scenario (the same keys as TOML).
    ///
    /// # Errors
    ///
    /// As [`Scenario::from_toml`].
    pub fn from_json(text: &str) -> Result<Self, ScenarioError> {
        let json_error = |key: String, err: serde_json::Error| ScenarioError::Parse {
            format: "JSON",
            key,
            line: (err.line() > 0).then(|| (err.line(), err.column())),
            message: strip_position(&err.to_string()),
        };
        let mut de = serde_json::Deserializer::from_str(text);
        let scenario: Scenario = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let key = e.path().to_string();
            json_error(key, e.into_inner())
        })?;
        de.end().map_err(|e| json_error(".".into(), e))?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// Read, parse and validate a scenario file: JSON if the name ends in `.json` (or the text
    /// starts with `{`), TOML otherwise.
    ///
    /// # Errors
    ///
    /// [`ScenarioError::Read`] when the file cannot be read, else as [`Scenario::from_toml`].
    pub fn from_file(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|e| ScenarioError::Read {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let is_json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"))
            || text.trim_start().starts_with('{');
        if is_json {
            Self::from_json(&text)
        } else {
            Self::from_toml(&text)
        }
    }

    /// The model named `name`, if served.
    pub fn model(&self, name: &str) -> Option<&ModelSpec> {
        self.models.iter().find(|m| m.name == name)
    }

    /// The model named `name`, if served on `wire`.
    pub fn model_on(&self, name: &str, wire: Wire) -> Option<&ModelSpec> {
        self.model(name).filter(|m| m.serves(wire))
    }

    /// The limits in force for `model`: its own, else the scenario's; `None` when unlimited.
    pub fn limits_for(&self, model: &ModelSpec) -> Option<RateLimits> {
        model.limits.or(self.limits).filter(|l| !l.is_unlimited())
    }

    /// Check every value; the error names the first key that is wrong.
    ///
    /// # Errors
    ///
    /// [`ScenarioError::Invalid`] naming the key path and the problem.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        if let Some(keys) = &self.keys {
            if keys.is_empty() {
                return Err(ScenarioError::invalid(
                    "keys",
                    "the list is empty, so every request would get 401: list at least one key, \
                     or leave `keys` out to accept any key",
                ));
            }
            for (i, key) in keys.iter().enumerate() {
                check_key(&format!("keys[{i}]"), key)?;
            }
        }
        for (i, key) in self.revoked_keys.iter().enumerate() {
            let path = format!("revoked_keys[{i}]");
            check_key(&path, key)?;
            if let Some(j) = self
                .keys
                .iter()
                .flatten()
                .position(|accepted| accepted == key)
            {
                return Err(ScenarioError::invalid(
                    path,
                    format!("the same key is also listed in keys[{j}]: a key is either accepted or revoked"),
                ));
            }
        }
        if let Some(limits) = &self.limits {
            check_limits("limits", limits)?;
        }
        if self.models.is_empty() {
            return Err(ScenarioError::invalid(
                "models",
                "no models: add at least one [[models]] entry with a `name`",
            ));
        }
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, model) in self.models.iter().enumerate() {
            let path = format!("models[{i}]");
            check_model(&path, model)?;
            if let Some(j) = seen.insert(model.name.as_str(), i) {
                return Err(ScenarioError::invalid(
                    format!("{path}.name"),
                    format!("{:?} is already the name of models[{j}]", model.name),
                ));
            }
        }
        Ok(())
    }
}

fn check_key(path: &str, key: &str) -> Result<(), ScenarioError> {
    // The message describes the problem only: the key itself never goes into an error.
    if key.is_empty() {
        return Err(ScenarioError::invalid(path, "the key is empty"));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ScenarioError::invalid(
            path,
            "the key contains whitespace or a character that is not visible ASCII, so no \
             client could send it in a header",
        ));
    }
    Ok(())
}

fn check_limits(path: &str, limits: &RateLimits) -> Result<(), ScenarioError> {
    for (name, value) in [
        ("requests_per_minute", limits.requests_per_minute),
        ("input_tokens_per_minute", limits.input_tokens_per_minute),
        ("output_tokens_per_minute", limits.output_tokens_per_minute),
    ] {
        if value == Some(0) {
            return Err(ScenarioError::invalid(
                format!("{path}.{name}"),
                "0 would refuse every request forever: use at least 1, or leave the key out \
                 for no limit",
            ));
        }
    }
    Ok(())
}

fn check_model(path: &str, model: &ModelSpec) -> Result<(), ScenarioError> {
    if model.name.trim().is_empty() {
        return Err(ScenarioError::invalid(
            format!("{path}.name"),
            "the model name is empty",
        ));
    }
    if model.output_tokens == 0 || model.output_tokens > MAX_OUTPUT_TOKENS {
        return Err(ScenarioError::invalid(
            format!("{path}.output_tokens"),
            format!(
                "{} is out of range: use 1 to {MAX_OUTPUT_TOKENS}",
                model.output_tokens
            ),
        ));
    }
    if let Some(limits) = &model.limits {
        check_limits(&format!("{path}.limits"), limits)?;
    }
    if model.wires.as_ref().is_some_and(Vec::is_empty) {
        return Err(ScenarioError::invalid(
            format!("{path}.wires"),
            "the list is empty, so no request could reach the model: name at least one of \
             \"anthropic\", \"openai\", \"bedrock\", \"vertex\", or leave `wires` out for all",
        ));
    }
    for (j, fault) in model.faults.iter().enumerate() {
        check_fault(&format!("{path}.faults[{j}]"), fault)?;
    }
    Ok(())
}

fn check_fault(path: &str, f: &Fault) -> Result<(), ScenarioError> {
    use FaultKind::*;
    let kind = f.kind;
    let key = |name: &str| format!("{path}.{name}");
    let only = |name: &str, kinds: &str| {
        ScenarioError::invalid(
            key(name),
            format!(
                "does not apply to kind = {:?}: it is used by {kinds} only",
                kind.as_str()
            ),
        )
    };
    if !(0.0..=1.0).contains(&f.probability) {
        return Err(ScenarioError::invalid(
            key("probability"),
            format!("{} is not between 0 and 1", f.probability),
        ));
    }
    if let (Some(from), Some(until)) = (f.from, f.until) {
        if until <= from {
            return Err(ScenarioError::invalid(
                key("until"),
                format!(
                    "{} is not after from ({}): the window would be empty",
                    humantime::format_duration(until),
                    humantime::format_duration(from)
                ),
            ));
        }
    }
    match (kind, f.status) {
        (Status, None) => {
            return Err(ScenarioError::invalid(
                key("status"),
                "required for kind = \"status\": the HTTP status to answer, e.g. 529",
            ))
        }
        (Status | MidStreamError, Some(s)) if !(400..=599).contains(&s) => {
            return Err(ScenarioError::invalid(
                key("status"),
                format!("{s} is not an error status: use 400 to 599"),
            ))
        }
        (Status | MidStreamError, _) | (_, None) => {}
        (_, Some(_)) => return Err(only("status", "\"status\" and \"mid_stream_error\"")),
    }
    if kind != Status {
        if f.retry_after.is_some() {
            return Err(only("retry_after", "\"status\""));
        }
        if f.retry_after_ms.is_some() {
            return Err(only("retry_after_ms", "\"status\""));
        }
        if f.should_retry.is_some() {
            return Err(only("should_retry", "\"status\""));
        }
    }
    for (name, value) in [
        ("retry_after", f.retry_after),
        ("retry_after_ms", f.retry_after_ms),
    ] {
        if let Some(v) = value {
            if !v.is_finite() || v < 0.0 {
                return Err(ScenarioError::invalid(
                    key(name),
                    format!("{v} is not a number of at least 0"),
                ));
            }
        }
    }
    if !matches!(kind, Status | MidStreamError) {
        if f.error_code.is_some() {
            return Err(only("error_code", "\"status\" and \"mid_stream_error\""));
        }
        if f.message.is_some() {
            return Err(only("message", "\"status\" and \"mid_stream_error\""));
        }
    }
    if f.error_code.as_deref().is_some_and(|c| c.trim().is_empty()) {
        return Err(ScenarioError::invalid(
            key("error_code"),
            "is empty: leave it out for no details.error_code",
        ));
    }
    match (kind, f.delay) {
        (SlowFirstByte, None) => {
            return Err(ScenarioError::invalid(
                key("delay"),
                "required for kind = \"slow_first_byte\", e.g. delay = \"3s\"",
            ))
        }
        (Hang, Some(_)) => {
            return Err(ScenarioError::invalid(
                key("delay"),
                "does not apply to kind = \"hang\": a hang never answers",
            ))
        }
        _ => {}
    }
    if kind != MidStreamError && f.after_deltas.is_some() {
        return Err(only("after_deltas", "\"mid_stream_error\""));
    }
    Ok(())
}

/// serde_json appends " at line L column C" to its messages; the position is reported apart.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// `Duration` as a humantime string (`"40ms"`, `"2s"`, `"1m 30s"`).
mod duration {
    use std::fmt;
    use std::time::Duration;

    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_str(DurationVisitor)
    }

    pub(super) struct DurationVisitor;

    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration string such as \"40ms\", \"2s\" or \"1m 30s\"")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            humantime::parse_duration(v).map_err(|e| {
                E::custom(format!(
                    "{v:?} is not a duration ({e}): write it like \"40ms\", \"2s\" or \"1m 30s\""
                ))
            })
        }
    }
}

/// `Option<Duration>` as an optional humantime string.
mod opt_duration {
    use std::fmt;
    use std::time::Duration;

    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    use super::duration::DurationVisitor;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        d.deserialize_option(OptVisitor)
    }

    struct OptVisitor;

    impl<'de> Visitor<'de> for OptVisitor {
        type Value = Option<Duration>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            DurationVisitor.expecting(f)
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            super::duration::deserialize(d).map(Some)
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            DurationVisitor.visit_str(v).map(Some)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
seed = 7
keys = ["sk-sim-key-aaaa"]
[limits]
requests_per_minute = 60
[[models]]
name = "m"
latency = "40ms"
[[models.faults]]
kind = "status"
status = 529
from = "2s"
until = "12s"
retry_after = 2.5
"#;

    #[test]
    fn toml_and_json_give_the_same_scenario() {
        let a = Scenario::from_toml(GOOD).unwrap();
        assert_eq!(a.models[0].latency, Duration::from_millis(40));
        assert_eq!(a.models[0].faults[0].from, Some(Duration::from_secs(2)));
        assert_eq!(a.models[0].output_tokens, 16);
        let json = serde_json::to_string(&a).unwrap();
        let b = Scenario::from_json(&json).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn errors_name_the_key() {
        let bad_status = GOOD.replace("status = 529", "status = 200");
        let err = Scenario::from_toml(&bad_status).unwrap_err();
        assert_eq!(
            err.to_string(),
            "models[0].faults[0].status: 200 is not an error status: use 400 to 599"
        );
        let bad_dur = GOOD.replace("\"40ms\"", "\"40 parsecs\"");
        let err = Scenario::from_toml(&bad_dur).unwrap_err();
        assert_eq!(err.key(), Some("models[0].latency"), "{err}");
        assert!(err.to_string().contains("line 8"), "{err}");
        let unknown = GOOD.replace("latency =", "latencyy =");
        let err = Scenario::from_toml(&unknown).unwrap_err();
        assert!(err.to_string().contains("latencyy"), "{err}");
        let err =
            Scenario::from_json(r#"{"models":[{"name":"m","output_tokens":"x"}]}"#).unwrap_err();
        assert_eq!(err.key(), Some("models[0].output_tokens"), "{err}");
    }

    #[test]
    fn keys_never_appear_in_errors_or_debug() {
        let s = GOOD.replace(
            "keys = [\"sk-sim-key-aaaa\"]",
            "keys = [\"sk-sim-key-aaaa\"]\nrevoked_keys = [\"sk-sim-key-aaaa\"]",
        );
        let err = Scenario::from_toml(&s).unwrap_err();
        assert_eq!(err.key(), Some("revoked_keys[0]"));
        assert!(!err.to_string().contains("aaaa"), "{err}");
        let ok = Scenario::from_toml(GOOD).unwrap();
        assert!(!format!("{ok:?}").contains("aaaa"));
    }

    #[test]
    fn wires_restrict_a_model_and_an_empty_list_is_refused() {
        let s = Scenario::from_toml("[[models]]\nname = \"m\"\nwires = [\"bedrock\"]\n").unwrap();
        assert!(s.models[0].serves(Wire::Bedrock));
        assert!(!s.models[0].serves(Wire::Anthropic));
        assert!(s.model_on("m", Wire::Vertex).is_none());
        assert!(ModelSpec::new("x").serves(Wire::OpenAi));
        let err = Scenario::from_toml("[[models]]\nname = \"m\"\nwires = []\n").unwrap_err();
        assert_eq!(err.key(), Some("models[0].wires"), "{err}");
        let err =
            Scenario::from_toml("[[models]]\nname = \"m\"\nwires = [\"azure\"]\n").unwrap_err();
        assert!(err.to_string().contains("azure"), "{err}");
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains(r#""wires":["bedrock"]"#), "{json}");
    }

    #[test]
    fn windows_are_half_open() {
        let f = Fault {
            from: Some(Duration::from_secs(1)),
            until: Some(Duration::from_secs(2)),
            ..Fault::status(529)
        };
        assert!(!f.active_at(Duration::from_millis(999)));
        assert!(f.active_at(Duration::from_secs(1)));
        assert!(!f.active_at(Duration::from_secs(2)));
        assert!(Fault::status(529).active_at(Duration::ZERO));
    }
}
