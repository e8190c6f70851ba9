//! Chat completion shapes become Messages shapes: an OpenAI-SDK client's request becomes the
//! runtime's Messages call ([`request`]), and an OpenAI-compatible provider's answer becomes a
//! Messages answer ([`message`]) or Messages stream events ([`Events`]).
//!
//! # Request: chat completions → Messages (the gateway's OpenAI face)
//!
//! | chat request field | becomes |
//! |---|---|
//! | `model` | `model` (a seawall model name: its chain serves the call) |
//! | `max_completion_tokens`, else `max_tokens`, else the gateway's default | `max_tokens` |
//! | `system` / `developer` messages (anywhere) | `system` text blocks, in order |
//! | `user` text and `image_url` parts (`data:` or `http(s)` URLs) | text and `image` blocks |
//! | `assistant` `content` and `tool_calls` | text and `tool_use` blocks (`arguments` must be a JSON object) |
//! | `tool` messages | `tool_result` blocks, in one user turn with what follows (the call must exist) |
//! | `tools` (function tools), `tool_choice`, `parallel_tool_calls: false` | `tools`, `tool_choice` (`required` → `any`), `disable_parallel_tool_use` |
//! | `stop` (string or list), `temperature`, `top_p`, `user` | `stop_sequences`, `temperature`, `top_p`, `metadata.user_id` |
//! | `stream`, `stream_options.include_usage` | `stream`; usage as a last chunk |
//! | `seed`, `frequency_penalty`, `presence_penalty`, `logit_bias`, `store`, `metadata`, `service_tier`, `reasoning_effort`, `verbosity`, `prediction` | dropped **and reported** |
//! | `n` ≠ 1, `logprobs`, `top_logprobs`, `audio`, non-text `modalities`, `response_format` other than `text`, `functions`, audio and file parts | refused: a 400 naming the field |
//! | any other field | refused: a 400 naming it |

use std::collections::HashSet;

use seawall_actors::upstream::SseEvent;
use serde_json::{json, Map, Value};

use super::{messages_usage, parse_data_url, stop_reason_of, Dropped};

/// The most tools one request may declare (OpenAI's own limit).
pub const MAX_TOOLS: usize = 128;
/// The most messages one request may hold.
pub const MAX_MESSAGES: usize = 100_000;

/// A chat request the gateway cannot serve: OpenAI's 400, naming the field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadRequest {
    /// The field at fault (`messages[2].tool_call_id`), OpenAI's `param`.
    pub param: String,
    /// What is wrong and what to do.
    pub message: String,
}

fn bad(param: impl Into<String>, message: impl Into<String>) -> BadRequest {
    BadRequest {
        param: param.into(),
        message: message.into(),
    }
}

/// A chat request as the runtime's Messages request.
#[derive(Debug)]
pub struct Request {
    /// The Messages request body.
    pub body: Value,
    /// The model name asked for.
    pub model: String,
    /// Whether the client wants a stream.
    pub stream: bool,
    /// Whether a streaming client wants the usage chunk.
    pub include_usage: bool,
    /// Features left out.
    pub dropped: Dropped,
}

/// Fields dropped with a note: they tune sampling or storage in ways Claude has no knob for.
const DROPPED: [&str; 10] = [
    "seed",
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "store",
    "metadata",
    "service_tier",
    "reasoning_effort",
    "verbosity",
    "prediction",
];

/// Translate an OpenAI chat request for the runtime. `default_max_tokens` applies when the
/// request names no limit.
///
/// # Errors
///
/// [`BadRequest`] naming the field for anything malformed or that cannot be served.
pub fn request(body: &[u8], default_max_tokens: u64) -> Result<Request, BadRequest> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| bad("", format!("the request body is not valid JSON: {e}")))?;
    let Value::Object(mut fields) = value else {
        return Err(bad("", "the request body must be a JSON object"));
    };
    let mut dropped = Dropped::default();
    let mut out = Map::new();
    let mut stream = false;
    let mut include_usage = false;
    let mut parallel = true;
    let mut tools_seen = false;
    for (key, v) in &fields {
        if v.is_null() {
            continue;
        }
        match key.as_str() {
            "model" | "messages" | "max_tokens" | "max_completion_tokens" | "tool_choice" => {}
            "temperature" | "top_p" => {
                if !v.is_number() {
                    return Err(bad(key, format!("{key} must be a number")));
                }
                out.insert(key.clone(), v.clone());
            }
            "stop" => {
                let list = match v {
                    Value::String(s) => vec![Value::from(s.as_str())],
                    Value::Array(l) if l.iter().all(Value::is_string) => l.clone(),
                    _ => return Err(bad("stop", "stop must be a string or a list of strings")),
                };
                if !list.is_empty() {
                    out.insert("stop_sequences".into(), Value::Array(list));
                }
            }
            "stream" => stream = bool_of(v, "stream")?,
            "stream_options" => {
                include_usage = match v.get("include_usage") {
                    None | Some(Value::Null) => false,
                    Some(b) => bool_of(b, "stream_options.include_usage")?,
                };
            }
            "n" => {
                if v.as_u64() != Some(1) {
                    return Err(bad("n", "only n = 1 is served: ask once per answer"));
                }
            }
            "user" => match v.as_str() {
                Some(u) => {
                    out.insert("metadata".into(), json!({"user_id": u}));
                }
                None => return Err(bad("user", "user must be a string")),
            },
            "tools" => {
                tools_seen = true;
                out.insert("tools".into(), Value::Array(tools_of(v)?));
            }
            "parallel_tool_calls" => parallel = bool_of(v, "parallel_tool_calls")?,
            "response_format" => {
                if v.get("type").and_then(Value::as_str) != Some("text") {
                    return Err(bad(
                        "response_format",
                        "only response_format {\"type\": \"text\"} is served: describe the \
                         format in the prompt, or use a tool whose parameters are the schema",
                    ));
                }
            }
            "modalities" => {
                if v.as_array()
                    .is_none_or(|m| m.iter().any(|x| x.as_str() != Some("text")))
                {
                    return Err(bad("modalities", "only the text modality is served"));
                }
            }
            "logprobs" | "top_logprobs" if v == &Value::Bool(false) => {}
            "logprobs" | "top_logprobs" | "audio" | "functions" | "function_call" => {
                return Err(bad(key, format!("{key} is not served by this gateway")));
            }
            k if DROPPED.contains(&k) => {
                if let Some(name) = DROPPED.iter().find(|d| **d == k) {
                    dropped.note(name);
                }
            }
            other => {
                return Err(bad(
                    other,
                    format!("unrecognized request argument supplied: {other}"),
                ))
            }
        }
    }
    let Some(model) = fields
        .get("model")
        .and_then(Value::as_str)
        .map(str::to_owned)
    else {
        return Err(bad("model", "model must be a string naming a served model"));
    };
    let limit = ["max_completion_tokens", "max_tokens"]
        .into_iter()
        .find_map(|k| fields.get(k).filter(|v| !v.is_null()).map(|v| (k, v)));
    let max_tokens = match limit {
        None => default_max_tokens,
        Some((k, v)) => match v.as_u64() {
            Some(n) if n >= 1 && n <= u64::from(u32::MAX) => n,
            _ => return Err(bad(k, format!("{k} must be a whole number from 1"))),
        },
    };
    // The messages move into the call: their text is not copied.
    let (system, messages) = messages_of(fields.remove("messages").unwrap_or(Value::Null))?;
    let mut body = Map::new();
    body.insert("model".into(), Value::from(model.as_str()));
    body.insert("max_tokens".into(), Value::from(max_tokens));
    if !system.is_empty() {
        body.insert("system".into(), Value::Array(system));
    }
    body.insert("messages".into(), Value::Array(messages));
    body.extend(out);
    match fields.get("tool_choice").filter(|v| !v.is_null()) {
        Some(choice) => {
            body.insert("tool_choice".into(), tool_choice_of(choice, parallel)?);
        }
        None if !parallel && tools_seen => {
            body.insert(
                "tool_choice".into(),
                json!({"type": "auto", "disable_parallel_tool_use": true}),
            );
        }
        None => {}
    }
    if stream {
        body.insert("stream".into(), Value::Bool(true));
    }
    Ok(Request {
        body: Value::Object(body),
        model,
        stream,
        include_usage: stream && include_usage,
        dropped,
    })
}

fn bool_of(v: &Value, field: &str) -> Result<bool, BadRequest> {
    v.as_bool()
        .ok_or_else(|| bad(field, format!("{field} must be true or false")))
}

fn tools_of(v: &Value) -> Result<Vec<Value>, BadRequest> {
    let Value::Array(list) = v else {
        return Err(bad("tools", "tools must be a list"));
    };
    if list.len() > MAX_TOOLS {
        return Err(bad(
            "tools",
            format!(
                "{} tools declared, over the limit of {MAX_TOOLS}",
                list.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, tool) in list.iter().enumerate() {
        let at = format!("tools[{i}]");
        if tool.get("type").and_then(Value::as_str) != Some("function") {
            return Err(bad(
                format!("{at}.type"),
                "only function tools are served: type must be \"function\"",
            ));
        }
        let f = tool.get("function");
        let Some(name) = f.and_then(|f| f.get("name")).and_then(Value::as_str) else {
            return Err(bad(
                format!("{at}.function.name"),
                "a tool needs a string name",
            ));
        };
        let mut t = json!({"name": name});
        if let Some(d) = f.and_then(|f| f.get("description")).and_then(Value::as_str) {
            t["description"] = Value::from(d);
        }
        t["input_schema"] = match f.and_then(|f| f.get("parameters")) {
            None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
            Some(p @ Value::Object(_)) => p.clone(),
            Some(_) => {
                return Err(bad(
                    format!("{at}.function.parameters"),
                    "parameters must be a JSON Schema object",
                ))
            }
        };
        out.push(t);
    }
    Ok(out)
}

/// `tool_choice` as Claude's (`none` is Claude's `{"type":"none"}`).
fn tool_choice_of(v: &Value, parallel: bool) -> Result<Value, BadRequest> {
    let mut choice =
        match v {
            Value::String(s) => match s.as_str() {
                "auto" => json!({"type": "auto"}),
                "required" => json!({"type": "any"}),
                "none" => json!({"type": "none"}),
                other => {
                    return Err(bad(
                        "tool_choice",
                        format!("tool_choice {other:?} is not \"auto\", \"required\" or \"none\""),
                    ))
                }
            },
            Value::Object(_) => match v.pointer("/function/name").and_then(Value::as_str) {
                Some(name) if v.get("type").and_then(Value::as_str) == Some("function") => {
                    json!({"type": "tool", "name": name})
                }
                _ => return Err(bad(
                    "tool_choice",
                    "tool_choice must be {\"type\": \"function\", \"function\": {\"name\": ...}}",
                )),
            },
            _ => {
                return Err(bad(
                    "tool_choice",
                    "tool_choice must be a string or an object",
                ))
            }
        };
    if !parallel && choice["type"] != "none" {
        choice["disable_parallel_tool_use"] = Value::Bool(true);
    }
    Ok(choice)
}

/// The system blocks and the Messages turns of a chat `messages` list.
fn messages_of(v: Value) -> Result<(Vec<Value>, Vec<Value>), BadRequest> {
    let Value::Array(list) = v else {
        return Err(bad("messages", "messages must be a non-empty list"));
    };
    if list.is_empty() {
        return Err(bad("messages", "messages must be a non-empty list"));
    }
    if list.len() > MAX_MESSAGES {
        return Err(bad(
            "messages",
            format!("{} messages, over the limit of {MAX_MESSAGES}", list.len()),
        ));
    }
    let mut system = Vec::new();
    let mut turns: Vec<Value> = Vec::new();
    // Tool call ids asked for and not yet answered.
    let mut open_calls: HashSet<String> = HashSet::new();
    for (i, mut m) in list.into_iter().enumerate() {
        // Paths are written only for an error: the happy path allocates none.
        let at = |rest: &str| format!("messages[{i}]{rest}");
        let content_at = || at(".content");
        let Some(role) = m.get("role").and_then(Value::as_str) else {
            return Err(bad(at(".role"), "each message needs a string role"));
        };
        let role = match role {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" => Role::Tool,
            other => {
                return Err(bad(
                    at(".role"),
                    format!(
                        "role {other:?} is not one of \"system\", \"developer\", \"user\", \
                         \"assistant\", \"tool\""
                    ),
                ))
            }
        };
        let owned = m
            .as_object_mut()
            .and_then(|o| o.remove("content"))
            .unwrap_or(Value::Null);
        let content = &owned;
        match role {
            Role::System => {
                for text in texts_of(content, &content_at)? {
                    system.push(json!({"type": "text", "text": text}));
                }
            }
            // A plain string is the Messages API's own shorthand for one text block: it moves.
            Role::User if owned.is_string() && !last_is(&turns, "user") => {
                turns.push(json!({"role": "user", "content": owned}));
            }
            Role::User => {
                let blocks = user_blocks(content, &content_at)?;
                push_turn(&mut turns, "user", blocks);
            }
            Role::Assistant => {
                let mut blocks: Vec<Value> = match content {
                    Value::Null => Vec::new(),
                    _ => texts_of(content, &content_at)?
                        .into_iter()
                        .filter(|t| !t.is_empty())
                        .map(|t| json!({"type": "text", "text": t}))
                        .collect(),
                };
                for (j, call) in m
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    let block = tool_use_of(call, &|| at(&format!(".tool_calls[{j}]")))?;
                    if let Some(id) = block["id"].as_str() {
                        open_calls.insert(id.to_owned());
                    }
                    blocks.push(block);
                }
                if !blocks.is_empty() {
                    push_turn(&mut turns, "assistant", blocks);
                }
            }
            Role::Tool => {
                let Some(id) = m.get("tool_call_id").and_then(Value::as_str) else {
                    return Err(bad(
                        at(".tool_call_id"),
                        "a tool message needs the tool_call_id it answers",
                    ));
                };
                if !open_calls.remove(id) {
                    return Err(bad(
                        at(".tool_call_id"),
                        format!(
                            "tool_call_id {id:?} answers no tool call of an earlier \
                             assistant message"
                        ),
                    ));
                }
                let text = texts_of(content, &content_at)?.join("\n");
                let result = json!({"type": "tool_result", "tool_use_id": id, "content": text});
                push_turn(&mut turns, "user", vec![result]);
            }
        }
    }
    if turns.is_empty() {
        return Err(bad(
            "messages",
            "messages must hold at least one user or assistant message",
        ));
    }
    Ok((system, turns))
}

/// A chat message's role, once read.
#[derive(Clone, Copy)]
enum Role {
    System,
    User,
    Assistant,
    Tool,
}

fn last_is(turns: &[Value], role: &str) -> bool {
    turns.last().is_some_and(|t| t["role"] == role)
}

/// Append blocks as a turn of `role`, joining the previous turn when it has the same role (a
/// run of tool messages and the user message after them are one user turn, results first).
fn push_turn(turns: &mut Vec<Value>, role: &str, blocks: Vec<Value>) {
    if let Some(last) = turns.last_mut() {
        if last["role"] == role {
            // A string turn becomes its one text block first.
            if let Value::String(text) = &mut last["content"] {
                let text = std::mem::take(text);
                last["content"] = json!([{"type": "text", "text": text}]);
            }
            if let Some(content) = last["content"].as_array_mut() {
                content.extend(blocks);
                return;
            }
        }
    }
    turns.push(json!({"role": role, "content": blocks}));
}

/// The texts of a string or of text parts (`refusal` parts count as text).
fn texts_of(content: &Value, at: &dyn Fn() -> String) -> Result<Vec<String>, BadRequest> {
    match content {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(parts) => parts
            .iter()
            .enumerate()
            .map(|(j, p)| {
                let kind = p.get("type").and_then(Value::as_str);
                let key = if kind == Some("refusal") {
                    "refusal"
                } else {
                    "text"
                };
                match (kind, p.get(key).and_then(Value::as_str)) {
                    (Some("text" | "refusal"), Some(t)) => Ok(t.to_owned()),
                    _ => Err(bad(
                        format!("{}[{j}]", at()),
                        "only text parts are allowed here",
                    )),
                }
            })
            .collect(),
        _ => Err(bad(at(), "content must be a string or a list of parts")),
    }
}

/// A user message's content as Messages blocks.
fn user_blocks(content: &Value, at: &dyn Fn() -> String) -> Result<Vec<Value>, BadRequest> {
    let parts = match content {
        Value::String(s) => return Ok(vec![json!({"type": "text", "text": s})]),
        Value::Array(parts) => parts,
        _ => return Err(bad(at(), "content must be a string or a list of parts")),
    };
    let mut out = Vec::with_capacity(parts.len());
    for (j, part) in parts.iter().enumerate() {
        let at = format!("{}[{j}]", at());
        match part.get("type").and_then(Value::as_str) {
            Some("text") => match part.get("text").and_then(Value::as_str) {
                Some(t) => out.push(json!({"type": "text", "text": t})),
                None => return Err(bad(format!("{at}.text"), "text must be a string")),
            },
            Some("image_url") => {
                let url = part
                    .pointer("/image_url/url")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad(format!("{at}.image_url.url"), "url must be a string"))?;
                out.push(image_block(url, &format!("{at}.image_url.url"))?);
            }
            Some(other) => {
                return Err(bad(
                    format!("{at}.type"),
                    format!("{other} parts are not served: use text and image_url parts"),
                ))
            }
            None => return Err(bad(format!("{at}.type"), "each part needs a string type")),
        }
    }
    Ok(out)
}

/// An `image_url` as an `image` block: a `data:` URL as a base64 source, an `http(s)` URL as a
/// URL source.
pub fn image_block(url: &str, at: &str) -> Result<Value, BadRequest> {
    if let Some((media_type, data)) = parse_data_url(url) {
        return Ok(json!({"type": "image", "source":
            {"type": "base64", "media_type": media_type, "data": data}}));
    }
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if lower.starts_with("https://") || lower.starts_with("http://") {
        return Ok(json!({"type": "image", "source": {"type": "url", "url": url}}));
    }
    Err(bad(
        at,
        "an image must be a data:<type>;base64,... URL or an http(s) URL",
    ))
}

/// An assistant's tool call as a `tool_use` block; `arguments` must be a JSON object.
fn tool_use_of(call: &Value, at: &dyn Fn() -> String) -> Result<Value, BadRequest> {
    let (Some(id), Some(name)) = (
        call.get("id").and_then(Value::as_str),
        call.pointer("/function/name").and_then(Value::as_str),
    ) else {
        return Err(bad(at(), "a tool call needs a string id and function.name"));
    };
    let args = call
        .pointer("/function/arguments")
        .and_then(Value::as_str)
        .unwrap_or("{}");
    let input = arguments(args).ok_or_else(|| {
        bad(
            format!("{}.function.arguments", at()),
            "arguments must be a JSON object, as a string",
        )
    })?;
    Ok(json!({"type": "tool_use", "id": id, "name": name, "input": input}))
}

/// Tool call arguments (a JSON string) as the input object; blank is `{}`.
fn arguments(text: &str) -> Option<Value> {
    if text.trim().is_empty() {
        return Some(json!({}));
    }
    serde_json::from_str::<Value>(text)
        .ok()
        .filter(Value::is_object)
}

// ---------------------------------------------------------------------------------------------
// answers: chat completion → Messages (the `openai` transport)

/// The Messages answer for a chat completion: `Ok(None)` when `v` is no chat completion (no
/// `choices[0].message`), `Err` when it is one seawall cannot pass on (a tool call whose
/// arguments are not a JSON object: a broken answer, worth another attempt).
///
/// # Errors
///
/// The reason, for the 502 the transport makes of it.
pub fn message(v: &Value, requested_model: &str) -> Result<Option<Value>, String> {
    let Some(choice) = v
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
    else {
        return Ok(None);
    };
    let Some(message) = choice.get("message").and_then(Value::as_object) else {
        return Ok(None);
    };
    let mut text = match message.get("content") {
        Some(Value::String(s)) => s.clone(),
        // Some providers send content parts even in answers.
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    };
    let mut stop_reason = match choice.get("finish_reason") {
        None | Some(Value::Null) => Value::from("end_turn"),
        Some(Value::String(r)) => Value::from(stop_reason_of(r)),
        Some(other) => other.clone(),
    };
    if text.is_empty() {
        if let Some(refusal) = message.get("refusal").and_then(Value::as_str) {
            text = refusal.to_owned();
            stop_reason = Value::from("refusal");
        }
    }
    // An empty text block is not valid in a later request: no text, no block.
    let mut content = Vec::new();
    if !text.is_empty() {
        content.push(json!({"type": "text", "text": text}));
    }
    for (i, call) in message
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let id = call.get("id").and_then(Value::as_str).unwrap_or_default();
        let name = call.pointer("/function/name").and_then(Value::as_str);
        let args = call
            .pointer("/function/arguments")
            .and_then(Value::as_str)
            .unwrap_or("");
        let (Some(name), Some(input)) = (name, arguments(args)) else {
            return Err(format!(
                "tool call {i} has no function name or its arguments are not a JSON object"
            ));
        };
        content.push(json!({"type": "tool_use", "id": id, "name": name, "input": input}));
    }
    Ok(Some(json!({
        "id": v.get("id").cloned().unwrap_or(Value::Null),
        "type": "message",
        "role": "assistant",
        "model": v.get("model").and_then(Value::as_str).unwrap_or(requested_model),
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": messages_usage(v.get("usage")),
    })))
}

/// Chat completion chunks as Messages stream events, for the `openai` transport: feed each
/// chunk's JSON to [`Events::push`] in order, then call [`Events::done`] at `data: [DONE]` (or
/// at the end of the body).
///
/// The first chunk opens the message (`message_start`); text pieces open a text block and
/// become `text_delta`s; a tool call's first piece (with `id` and `name`) opens a `tool_use`
/// block and its `arguments` pieces become `input_json_delta`s; a block closes when another
/// opens or the answer finishes. `finish_reason` and the usage chunk become `message_delta`,
/// then `message_stop`.
#[derive(Debug)]
pub struct Events {
    model: String,
    started: bool,
    /// The open content block: its index, and the tool call index when it is a tool use.
    open: Option<(usize, Option<u64>)>,
    blocks: usize,
    /// Tool call indices already given a block (a late piece for a closed one is an error).
    tools_seen: Vec<u64>,
    finish: Option<String>,
    usage: Option<Value>,
    ended: bool,
}

impl Events {
    /// A translator for one stream; `model` names the answer until the provider does.
    pub fn new(model: &str) -> Self {
        Self {
            model: model.to_owned(),
            started: false,
            open: None,
            blocks: 0,
            tools_seen: Vec::new(),
            finish: None,
            usage: None,
            ended: false,
        }
    }

    fn event(kind: &str, data: Value) -> SseEvent {
        SseEvent::new(kind, data.to_string())
    }

    fn start(&mut self, chunk: &Value, out: &mut Vec<SseEvent>) {
        if self.started {
            return;
        }
        self.started = true;
        let model = chunk
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or(&self.model);
        out.push(Self::event(
            "message_start",
            json!({"type": "message_start", "message": {
                "id": chunk.get("id").cloned().unwrap_or(Value::Null),
                "type": "message", "role": "assistant", "model": model, "content": [],
                "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0}}}),
        ));
    }

    fn close(&mut self, out: &mut Vec<SseEvent>) {
        if let Some((index, _)) = self.open.take() {
            out.push(Self::event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            ));
        }
    }

    fn open(&mut self, block: Value, tool: Option<u64>, out: &mut Vec<SseEvent>) -> usize {
        self.close(out);
        let index = self.blocks;
        self.blocks += 1;
        self.open = Some((index, tool));
        out.push(Self::event(
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block": block}),
        ));
        index
    }

    /// The events for one chunk.
    ///
    /// # Errors
    ///
    /// A chunk that cannot be followed: an in-stream `error` object (its message), or a tool
    /// call piece for a call whose block already closed.
    pub fn push(&mut self, chunk: &Value) -> Result<Vec<SseEvent>, String> {
        if let Some(error) = chunk.get("error") {
            let said = error
                .get("message")
                .and_then(Value::as_str)
                .or_else(|| error.as_str())
                .unwrap_or("no message");
            return Err(format!("the provider broke off the stream: {said}"));
        }
        let mut out = Vec::new();
        if self.ended {
            return Ok(out);
        }
        self.start(chunk, &mut out);
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(u.clone());
        }
        let Some(choice) = chunk
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|c| c.first())
        else {
            return Ok(out);
        };
        let delta = choice.get("delta");
        let text = delta
            .and_then(|d| d.get("content"))
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .or_else(|| {
                delta
                    .and_then(|d| d.get("refusal"))
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
            });
        if let Some(text) = text {
            let index = match self.open {
                Some((i, None)) => i,
                _ => self.open(json!({"type": "text", "text": ""}), None, &mut out),
            };
            out.push(Self::event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": index,
                       "delta": {"type": "text_delta", "text": text}}),
            ));
        }
        for call in delta
            .and_then(|d| d.get("tool_calls"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let tool = call.get("index").and_then(Value::as_u64).unwrap_or(0);
            let index = match self.open {
                Some((i, Some(t))) if t == tool => i,
                _ if self.tools_seen.contains(&tool) => {
                    return Err(format!(
                        "tool call {tool} went on after another block began"
                    ))
                }
                _ => {
                    self.tools_seen.push(tool);
                    let id = call.get("id").and_then(Value::as_str).unwrap_or_default();
                    let name = call
                        .pointer("/function/name")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    self.open(
                        json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
                        Some(tool),
                        &mut out,
                    )
                }
            };
            if let Some(part) = call
                .pointer("/function/arguments")
                .and_then(Value::as_str)
                .filter(|p| !p.is_empty())
            {
                out.push(Self::event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": index,
                           "delta": {"type": "input_json_delta", "partial_json": part}}),
                ));
            }
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            self.close(&mut out);
            self.finish = Some(stop_reason_of(reason).to_owned());
        }
        Ok(out)
    }

    /// Whether the answer said how it finished (a stream that ends before that was cut).
    pub fn finished(&self) -> bool {
        self.finish.is_some()
    }

    /// The closing events: `message_delta` with the stop reason and usage, `message_stop`.
    pub fn done(&mut self) -> Vec<SseEvent> {
        let mut out = Vec::new();
        if self.ended {
            return out;
        }
        self.start(&Value::Null, &mut out);
        self.close(&mut out);
        self.ended = true;
        let stop = self.finish.clone().unwrap_or_else(|| "end_turn".to_owned());
        out.push(Self::event(
            "message_delta",
            json!({"type": "message_delta",
                   "delta": {"stop_reason": stop, "stop_sequence": null},
                   "usage": messages_usage(self.usage.as_ref())}),
        ));
        out.push(Self::event("message_stop", json!({"type": "message_stop"})));
        out
    }
}

#[cfg(test)]
mod tests;
