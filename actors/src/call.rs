//! What a caller hands the runtime ([`Call`]) and what it gets back ([`Reply`], [`AttemptRecord`]).

use std::time::Duration;

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::error::Error;
use crate::policy::classify::Class;
use crate::wire::{ForwardHeaders, Headers, Usage};

/// Which queue a call waits in when budget is short. Interactive calls go first.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Lane {
    /// A user is waiting on it.
    #[default]
    Interactive,
    /// Batch or background work that can wait.
    Background,
}

impl Lane {
    /// A short stable name for logs and traces.
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Interactive => "interactive",
            Lane::Background => "background",
        }
    }
}

/// One Messages API call: the request body plus how the runtime should treat it.
///
/// The body is kept as a JSON object so fields seawall does not know survive untouched; only
/// `model` is rewritten on each hop of the fallback chain.
#[derive(Clone, Debug)]
pub struct Call {
    body: Map<String, Value>,
    /// The chain to walk. `None` walks the chain named by the body's `model` (or that model alone).
    pub chain: Option<String>,
    /// Total time the caller will wait for an answer, across every attempt and hop. `None` uses
    /// the chain's default deadline.
    pub timeout: Option<Duration>,
    /// A caller-chosen idempotency key, forwarded upstream.
    pub idempotency_key: Option<String>,
    /// Priority lane.
    pub lane: Lane,
    /// The product feature this call serves (`"chat"`, `"batch-summaries"`), for bulkheads.
    pub feature: Option<String>,
    /// The caller's `anthropic-version` / `anthropic-beta`, forwarded to every attempt.
    pub forward: ForwardHeaders,
    /// Derive an idempotency key from the canonical request when none was given.
    pub derive_idempotency_key: bool,
    /// A conversation or session key: once a fallback served it, the conversation stays on
    /// that model until the primary's breaker has closed again (no flapping mid-task).
    pub conversation: Option<String>,
    /// Who is calling, as an opaque label (the gateway uses a digest of the client's token,
    /// never the token): idempotency keys, conversation pins and queued jobs are scoped to it,
    /// so one tenant can never be served another's answer. `None`: the single tenant of an
    /// embedding app.
    pub tenant: Option<String>,
    /// The queued job this call replays: it is never degraded (nor queued again).
    pub(crate) job: Option<String>,
}

/// The largest `max_tokens` a call may ask for: no model produces more in one answer, so a
/// larger value is a mistake (or an attack on the budget), refused before anything is sent.
pub const MAX_TOKENS_LIMIT: u64 = 1_000_000;

pub use crate::digest::{digest_of, Digest};
pub use crate::trail::{AttemptRecord, Outcome};

impl Call {
    /// A call for `model` with `max_tokens` and no messages yet: add them with [`Call::user`] and
    /// [`Call::assistant`].
    pub fn new(model: &str, max_tokens: u32) -> Self {
        let mut body = Map::new();
        body.insert("model".into(), Value::from(model));
        body.insert("max_tokens".into(), Value::from(max_tokens));
        body.insert("messages".into(), Value::Array(Vec::new()));
        Self::from_parts(body)
    }

    pub(crate) fn from_parts(body: Map<String, Value>) -> Self {
        Self {
            body,
            chain: None,
            timeout: None,
            idempotency_key: None,
            lane: Lane::Interactive,
            feature: None,
            forward: ForwardHeaders::default(),
            derive_idempotency_key: false,
            conversation: None,
            tenant: None,
            job: None,
        }
    }

    /// Append a user turn with plain text.
    pub fn user(self, text: &str) -> Self {
        self.turn("user", text)
    }

    /// Append an assistant turn with plain text.
    pub fn assistant(self, text: &str) -> Self {
        self.turn("assistant", text)
    }

    fn turn(mut self, role: &str, text: &str) -> Self {
        let msg = serde_json::json!({"role": role, "content": text});
        match self.body.get_mut("messages") {
            Some(Value::Array(list)) => list.push(msg),
            _ => {
                self.body.insert("messages".into(), Value::Array(vec![msg]));
            }
        }
        self
    }

    /// Set the system prompt.
    pub fn system(mut self, text: &str) -> Self {
        self.body.insert("system".into(), Value::from(text));
        self
    }

    /// Set the total deadline.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Walk the named chain instead of the body's model.
    pub fn chain(mut self, chain: &str) -> Self {
        self.chain = Some(chain.to_owned());
        self
    }

    /// Set the idempotency key.
    pub fn idempotency_key(mut self, key: &str) -> Self {
        self.idempotency_key = Some(key.to_owned());
        self
    }

    /// Pin this call's conversation: after a fallback served it, later calls with the same key
    /// stay on that model until the primary's breaker has closed again.
    pub fn conversation(mut self, key: &str) -> Self {
        self.conversation = Some(key.to_owned());
        self
    }

    /// Scope this call to a tenant (see [`Call::tenant`]).
    pub fn for_tenant(mut self, tenant: &str) -> Self {
        self.tenant = Some(tenant.to_owned());
        self
    }

    /// The digest that keys this call's idempotency entry: its tenant and its effective
    /// idempotency key. `None` without a key.
    pub fn idempotency_digest(&self) -> Option<Digest> {
        let key = self.effective_idempotency_key()?;
        Some(digest_of(&[
            b"idempotency",
            self.tenant.as_deref().unwrap_or("").as_bytes(),
            key.as_bytes(),
        ]))
    }

    /// The digest of this call's tenant, which its share of the bounded tables is counted by.
    pub fn tenant_digest(&self) -> Digest {
        digest_of(&[b"tenant", self.tenant.as_deref().unwrap_or("").as_bytes()])
    }

    /// The digest that keys this call's conversation pin: its tenant and its conversation key.
    pub fn conversation_digest(&self) -> Option<Digest> {
        let conversation = self.conversation.as_deref()?;
        Some(digest_of(&[
            b"conversation",
            self.tenant.as_deref().unwrap_or("").as_bytes(),
            conversation.as_bytes(),
        ]))
    }

    /// The request's fingerprint: the digest of its canonical body (keys sorted, `stream` left
    /// out). One idempotency key names one request: a key reused with another fingerprint is
    /// refused, never answered with the first request's result.
    pub fn fingerprint(&self) -> Digest {
        digest_of(&[self.canonical_text(&["stream"]).as_bytes()])
    }

    /// Name the feature this call serves (its bulkhead applies).
    pub fn feature(mut self, feature: &str) -> Self {
        self.feature = Some(feature.to_owned());
        self
    }

    /// Deduplicate this call by its content: identical calls share one upstream call and a
    /// finished one is replayed (see `Seawall` idempotency).
    pub fn idempotent_by_content(mut self) -> Self {
        self.derive_idempotency_key = true;
        self
    }

    /// The idempotency key that applies: the caller's, or one derived from the canonical
    /// request when asked for.
    pub fn effective_idempotency_key(&self) -> Option<String> {
        self.idempotency_key
            .clone()
            .or_else(|| self.derive_idempotency_key.then(|| self.canonical_key()))
    }

    /// `sha256:` + the hex SHA-256 of the canonical request: the body with object keys sorted
    /// at every depth and `stream` left out, so two spellings of one request share a key.
    pub fn canonical_key(&self) -> String {
        self.canonical_hash(&["stream"])
    }

    /// The response cache's key: the canonical request without `model` (any model's answer
    /// to the same request serves) and without `stream`.
    pub fn cache_key(&self) -> String {
        self.canonical_hash(&["stream", "model"])
    }

    fn canonical_hash(&self, without: &[&str]) -> String {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(self.canonical_text(without).as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex}")
    }

    /// The body with object keys sorted at every depth and `without` left out, as JSON text.
    fn canonical_text(&self, without: &[&str]) -> String {
        fn canonical(v: &Value) -> Value {
            match v {
                Value::Object(m) => {
                    let mut keys: Vec<&String> = m.keys().collect();
                    keys.sort();
                    Value::Object(
                        keys.into_iter()
                            .map(|k| (k.clone(), canonical(&m[k])))
                            .collect(),
                    )
                }
                Value::Array(a) => Value::Array(a.iter().map(canonical).collect()),
                other => other.clone(),
            }
        }
        let mut body = self.body.clone();
        for field in without {
            body.remove(*field);
        }
        canonical(&Value::Object(body)).to_string()
    }

    /// Set the priority lane.
    pub fn lane(mut self, lane: Lane) -> Self {
        self.lane = lane;
        self
    }

    /// A call from a raw Messages API request body, validated: it must be a JSON object with a
    /// string `model`, a positive integer `max_tokens` and a non-empty `messages` array. Every
    /// other field is kept as is.
    pub fn from_json(bytes: &[u8]) -> Result<Self, Error> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| Error::InvalidCall(format!("the request body is not valid JSON: {e}")))?;
        Self::from_value(value)
    }

    /// Like [`Call::from_json`], from an already parsed value.
    pub fn from_value(value: Value) -> Result<Self, Error> {
        let Value::Object(body) = value else {
            return Err(Error::InvalidCall(
                "the request body must be a JSON object".into(),
            ));
        };
        let call = Self::from_parts(body);
        call.validate()?;
        Ok(call)
    }

    /// Check the fields the runtime relies on.
    pub fn validate(&self) -> Result<(), Error> {
        match self.body.get("model") {
            Some(Value::String(m)) if !m.is_empty() => {}
            _ => {
                return Err(Error::InvalidCall(
                    "`model` must be a non-empty string".into(),
                ))
            }
        }
        match self.body.get("max_tokens").and_then(Value::as_u64) {
            Some(n) if n > 0 && n <= MAX_TOKENS_LIMIT => {}
            Some(n) if n > 0 => {
                return Err(Error::InvalidCall(format!(
                    "`max_tokens` is {n}, more than any model answers with (at most \
                     {MAX_TOKENS_LIMIT}): lower it"
                )))
            }
            _ => {
                return Err(Error::InvalidCall(
                    "`max_tokens` must be a positive integer".into(),
                ))
            }
        }
        if let Some(stream) = self.body.get("stream") {
            if !stream.is_boolean() {
                return Err(Error::InvalidCall(format!(
                    "`stream` must be a boolean (true or false), got {stream}"
                )));
            }
        }
        match self.body.get("messages") {
            Some(Value::Array(list)) if !list.is_empty() => Ok(()),
            _ => Err(Error::InvalidCall(
                "`messages` must be a non-empty array".into(),
            )),
        }
    }

    /// The model named in the body.
    pub fn model(&self) -> &str {
        self.body.get("model").and_then(Value::as_str).unwrap_or("")
    }

    /// The chain the call walks: the one it names, else the one its model heads.
    pub fn chain_name(&self) -> &str {
        self.chain.as_deref().unwrap_or(self.model())
    }

    /// `max_tokens` from the body (0 if absent).
    pub fn max_tokens(&self) -> u64 {
        self.body
            .get("max_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0)
    }

    /// The request body.
    pub fn body(&self) -> &Map<String, Value> {
        &self.body
    }

    /// A fast input-token estimate: about four bytes of JSON text per token, the usual rule of
    /// thumb for English. Settlement with the real usage corrects it afterwards.
    pub fn estimate_input_tokens(&self) -> u64 {
        let text_bytes: usize = ["system", "messages", "tools"]
            .iter()
            .filter_map(|k| self.body.get(*k))
            .map(|v| v.to_string().len())
            .sum();
        (text_bytes as u64).div_ceil(4).max(1)
    }

    /// The body for one hop: the original with `model` replaced, serialized.
    pub fn body_for(&self, model: &str) -> Bytes {
        self.hop_body(model, None)
    }

    /// The body for one streaming hop: as [`Call::body_for`], with `"stream": true`.
    pub fn stream_body_for(&self, model: &str) -> Bytes {
        self.hop_body(model, Some(true))
    }

    fn hop_body(&self, model: &str, stream: Option<bool>) -> Bytes {
        let mut body = self.body.clone();
        body.insert("model".into(), Value::from(model));
        if let Some(stream) = stream {
            body.insert("stream".into(), Value::Bool(stream));
        }
        // Serializing a map of JSON values cannot fail.
        Bytes::from(serde_json::to_vec(&Value::Object(body)).unwrap_or_default())
    }

    /// This call with `patch` applied to its body: a field set in the patch overrides, a field
    /// set to `null` is removed, an absent field keeps the original. Patches always apply to the
    /// original call, so hops never compound.
    pub fn patched(&self, patch: &Map<String, Value>) -> Call {
        let mut call = self.clone();
        for (k, v) in patch {
            if v.is_null() {
                call.body.remove(k);
            } else {
                call.body.insert(k.clone(), v.clone());
            }
        }
        call
    }

    /// Set a top-level body field (used for the refusal's fallback credit token).
    pub fn set_field(&mut self, key: &str, value: Value) {
        self.body.insert(key.to_owned(), value);
    }

    /// Append an assistant turn with these content blocks (a refusal's prefill claim).
    pub fn push_assistant_blocks(&mut self, blocks: Vec<Value>) {
        let msg = serde_json::json!({"role": "assistant", "content": blocks});
        if let Some(Value::Array(list)) = self.body.get_mut("messages") {
            list.push(msg);
        }
    }

    /// True when the body asks for a stream (`"stream": true`).
    pub fn wants_stream(&self) -> bool {
        self.body.get("stream").and_then(Value::as_bool) == Some(true)
    }
}

/// Where an answer came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Live from the upstream, for this call (or for an identical call in flight with it).
    #[default]
    Live,
    /// The stored answer of an earlier call with the same idempotency key.
    Replay,
    /// Degraded: a cached live answer to the same request (see `Reply::age`).
    Cache,
    /// Degraded: the chain's configured static answer.
    Static,
    /// Degraded: nothing could answer now; the call was stored in the durable queue and will
    /// run later. The reply (HTTP 202) carries the job id: see [`Reply::job_id`].
    Queued,
}

impl Source {
    /// The `seawall-source` header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Live => "live",
            Source::Replay => "replay",
            Source::Cache => "cache",
            Source::Static => "static",
            Source::Queued => "queued",
        }
    }

    /// True for answers that did not come live from a model for this call's request.
    pub fn is_degraded(self) -> bool {
        matches!(self, Source::Cache | Source::Static | Source::Queued)
    }
}

/// A successful answer, with what it took to get it.
#[derive(Clone, Debug)]
pub struct Reply {
    /// The model that served the answer.
    pub model: String,
    /// Where the answer came from.
    pub source: Source,
    /// For a cached answer: how old it is.
    pub age: Option<Duration>,
    /// HTTP status (2xx).
    pub status: u16,
    /// Response headers from the upstream.
    pub headers: Headers,
    /// The raw response body (a Messages API `message` object).
    pub body: Bytes,
    /// Token usage from the body.
    pub usage: Usage,
    /// Upstream attempts made for this call (1 when the first try served it).
    pub attempts: u32,
    /// Every step of the call in order.
    pub trail: Vec<AttemptRecord>,
    /// Time from the call to the answer.
    pub latency: Duration,
}

impl Reply {
    /// The upstream's `request-id`.
    pub fn request_id(&self) -> Option<&str> {
        self.headers.get("request-id")
    }

    /// For a queued call ([`Source::Queued`]): the job id to ask `Seawall::job` about.
    pub fn job_id(&self) -> Option<String> {
        if self.source != Source::Queued {
            return None;
        }
        let v = self.json().ok()?;
        v.get("job_id")?.as_str().map(str::to_owned)
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> Result<Value, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    /// The concatenated text of the answer's `text` content blocks.
    pub fn text(&self) -> String {
        let Ok(v) = self.json() else {
            return String::new();
        };
        v.get("content")
            .and_then(Value::as_array)
            .map(|blocks| {
                blocks
                    .iter()
                    .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
                    .filter_map(|b| b.get("text").and_then(Value::as_str))
                    .collect::<String>()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_json_keeps_unknown_fields_and_rewrites_only_the_model() {
        let raw = br#"{"model":"a","max_tokens":5,"messages":[{"role":"user","content":"hi"}],"future_field":{"x":1}}"#;
        let call = Call::from_json(raw).unwrap();
        let hop: Value = serde_json::from_slice(&call.body_for("b")).unwrap();
        assert_eq!(hop["model"], "b");
        assert_eq!(hop["future_field"]["x"], 1);
        assert_eq!(call.model(), "a");
    }

    #[test]
    fn invalid_bodies_say_what_to_fix() {
        let cases: [(&[u8], &str); 8] = [
            (b"not json", "not valid JSON"),
            (b"[1]", "JSON object"),
            (br#"{"max_tokens":5,"messages":[1]}"#, "`model`"),
            (
                br#"{"model":"m","max_tokens":0,"messages":[1]}"#,
                "`max_tokens`",
            ),
            (
                br#"{"model":"m","max_tokens":3,"messages":[]}"#,
                "`messages`",
            ),
            (
                br#"{"model":"m","max_tokens":3,"stream":"yes","messages":[1]}"#,
                "`stream` must be a boolean",
            ),
            (
                br#"{"model":"m","max_tokens":1e30,"messages":[1]}"#,
                "`max_tokens`",
            ),
            (
                br#"{"model":"m","max_tokens":99999999999,"messages":[1]}"#,
                "more than any model answers with",
            ),
        ];
        for (raw, needle) in cases {
            let err = Call::from_json(raw).unwrap_err().to_string();
            assert!(err.contains(needle), "{err} should mention {needle}");
        }
    }

    #[test]
    fn digests_scope_keys_by_tenant_and_fingerprints_ignore_spelling() {
        let a = Call::new("m", 5).user("hi").idempotency_key("k");
        let b = a.clone().for_tenant("tenant-b");
        assert_ne!(a.idempotency_digest(), b.idempotency_digest());
        assert_eq!(a.fingerprint(), b.fingerprint(), "the same request");
        let other = Call::new("m", 5).user("bye").idempotency_key("k");
        assert_ne!(a.fingerprint(), other.fingerprint());
        assert_eq!(a.idempotency_digest(), other.idempotency_digest());
        let spelled = Call::from_json(
            br#"{"messages":[{"content":"hi","role":"user"}],"max_tokens":5,"model":"m","stream":false}"#,
        )
        .unwrap();
        assert_eq!(
            spelled.fingerprint(),
            a.fingerprint(),
            "key order and stream do not count"
        );
        let c1 = Call::new("m", 5).user("x").conversation("c");
        let c2 = c1.clone().for_tenant("t");
        assert_ne!(c1.conversation_digest(), c2.conversation_digest());
        assert_eq!(Call::new("m", 5).conversation_digest(), None);
    }

    #[test]
    fn builder_and_estimate() {
        let call = Call::new("m", 100).system("be brief").user("hello there");
        call.validate().unwrap();
        assert_eq!(call.max_tokens(), 100);
        let est = call.estimate_input_tokens();
        assert!((5..50).contains(&est), "{est}");
    }

    #[test]
    fn reply_text_joins_text_blocks() {
        let body = r#"{"content":[{"type":"text","text":"a"},{"type":"tool_use"},{"type":"text","text":"b"}]}"#;
        let reply = Reply {
            source: Default::default(),
            age: None,
            model: "m".into(),
            status: 200,
            headers: Headers::default(),
            body: Bytes::from(body),
            usage: Usage::default(),
            attempts: 1,
            trail: vec![],
            latency: Duration::ZERO,
        };
        assert_eq!(reply.text(), "ab");
    }
}

/// Why a token count gave no number (the caller estimates instead).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CountMiss {
    /// The upstream has no token counter.
    NoCounter,
    /// No key of the upstream is usable now (every one quarantined or paused), or the governor
    /// did not answer.
    NoKey,
    /// The count failed, classified as an attempt would be.
    Failed(Class),
}

/// A request's input tokens, as [`Seawall::count_tokens`](crate::Seawall::count_tokens) found
/// them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenCount {
    /// The provider counted them.
    Counted(u64),
    /// The heuristic estimate ([`Call::estimate_input_tokens`]), and why no count was had.
    Estimated {
        /// The estimate.
        tokens: u64,
        /// Why the provider did not count.
        why: CountMiss,
    },
}

impl TokenCount {
    /// The number, counted or estimated.
    pub fn tokens(&self) -> u64 {
        match *self {
            TokenCount::Counted(n) | TokenCount::Estimated { tokens: n, .. } => n,
        }
    }
}
