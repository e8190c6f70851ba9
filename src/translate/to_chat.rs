//! Messages shapes become chat completion shapes: a Messages request goes out to an
//! OpenAI-compatible provider ([`request`]), and a Messages answer goes back to an OpenAI-SDK
//! client of the gateway ([`completion`], [`Chunks`]).
//!
//! # Request: Messages → chat completions
//!
//! | Messages request field             | sent as                                                          |
//! |------------------------------------|------------------------------------------------------------------|
//! | `model`, `max_tokens`              | `model`, `max_tokens` (or `max_completion_tokens`: [`Wire`])     |
//! | `temperature`, `top_p`             | `temperature`, `top_p` (values unchanged)                        |
//! | `stop_sequences`                   | `stop`                                                           |
//! | `system` (string or text blocks)   | a leading `{"role":"system","content":TEXT}`                     |
//! | `messages[]` text                  | `{"role":"user"\|"assistant","content":TEXT}` (text blocks joined with `"\n"`) |
//! | `image` blocks (base64 or URL)     | `image_url` content parts (base64 as a `data:` URL)              |
//! | assistant `tool_use` blocks        | the message's `tool_calls` (`arguments`: the input as a JSON string) |
//! | user `tool_result` blocks          | one `{"role":"tool","tool_call_id","content"}` message each, before the rest of that user turn; `is_error` results start with `"Error: "`; images in a result follow in a user message |
//! | `tools` (custom tools)             | function tools, `parameters` = `input_schema`                    |
//! | `tool_choice` auto / any / tool / none | `"auto"` / `"required"` / `{"type":"function","function":{"name"}}` / `"none"`; `disable_parallel_tool_use` → `parallel_tool_calls: false` |
//! | `stream: true`                     | `stream: true` with `stream_options: {"include_usage": true}`    |
//! | `metadata`, `stream: false`        | dropped: they do not change the answer                           |
//! | `thinking` (and thinking blocks), `top_k`, `service_tier`, `cache_control` (anywhere), `citations` on a text block | dropped **and reported** in [`DROPPED_HEADER`](super::DROPPED_HEADER) |
//! | `document` and server-tool blocks, server tools (`web_search_…`), file images | refused |
//! | any other field                    | refused (it may change the answer; seawall cannot know)          |
//!
//! A field whose value is `null` counts as absent. What is refused is refused before anything
//! is sent, with [`TransportError::Invalid`]`("… cannot be sent to an OpenAI-compatible
//! provider: FIELD")`, which ends that hop only.

use seawall_actors::upstream::{SseEvent, TransportError};
use serde_json::{json, Map, Value};

use super::{chat_usage, data_url, finish_reason_of, Dropped};

/// Which field carries the answer's length limit. OpenAI's newer models refuse `max_tokens`
/// and take `max_completion_tokens`; many compatible servers know only `max_tokens`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaxTokensField {
    /// `max_tokens`.
    MaxTokens,
    /// `max_completion_tokens`.
    MaxCompletionTokens,
}

impl MaxTokensField {
    fn name(self) -> &'static str {
        match self {
            Self::MaxTokens => "max_tokens",
            Self::MaxCompletionTokens => "max_completion_tokens",
        }
    }
}

/// What differs between OpenAI-compatible providers on the request body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wire {
    /// The field `max_tokens` goes in.
    pub max_tokens: MaxTokensField,
}

/// A Messages request rewritten for chat completions.
#[derive(Debug)]
pub struct ChatRequest {
    /// The chat request body.
    pub body: Vec<u8>,
    /// The model asked for, for the answer when the provider names none.
    pub model: String,
    /// Whether it asks for a stream.
    pub stream: bool,
    /// Lossy-but-answerable features left out.
    pub dropped: Dropped,
}

/// Refuse what cannot be translated without changing what the request asks for.
fn refuse(what: &str, field: &str) -> TransportError {
    TransportError::Invalid(format!(
        "{what} cannot be sent to an OpenAI-compatible provider: {field}"
    ))
}

fn invalid(message: String) -> TransportError {
    TransportError::Invalid(message)
}

/// Translate a Messages request body for an OpenAI-compatible provider.
///
/// # Errors
///
/// [`TransportError::Invalid`] for a body that is not a Messages request, or one that asks for
/// something no OpenAI-compatible provider can do (see the module table).
pub fn request(
    body: &[u8],
    attempt_model: &str,
    wire: Wire,
) -> Result<ChatRequest, TransportError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("the request body is not valid JSON: {e}")))?;
    let Value::Object(fields) = value else {
        return Err(invalid("the request body must be a JSON object".to_owned()));
    };
    let mut dropped = Dropped::default();
    let mut system = None;
    let mut messages = None;
    let mut tools = None;
    let mut tool_choice = None;
    let mut stream = false;
    for (key, value) in &fields {
        if value.is_null() {
            continue;
        }
        match key.as_str() {
            "model" | "max_tokens" | "temperature" | "top_p" | "stop_sequences" | "metadata" => {}
            "system" => system = Some(text_of(value, "system", &mut dropped)?),
            "messages" => messages = Some(messages_of(value, &mut dropped)?),
            "stream" => match value.as_bool() {
                Some(s) => stream = s,
                None => return Err(invalid("`stream` must be true or false".to_owned())),
            },
            "tools" => tools = Some(tools_of(value, &mut dropped)?),
            "tool_choice" => tool_choice = Some(tool_choice_of(value)?),
            "thinking" => dropped.note("thinking"),
            "top_k" => dropped.note("top_k"),
            "service_tier" => dropped.note("service_tier"),
            "cache_control" => dropped.note("cache_control"),
            other => {
                return Err(refuse(
                    "a field seawall does not know how to translate",
                    other,
                ))
            }
        }
    }
    let model = match fields.get("model") {
        Some(Value::String(m)) => m.clone(),
        _ => attempt_model.to_owned(),
    };
    let mut out = Map::new();
    out.insert("model".into(), Value::from(model.clone()));
    let mut chat = Vec::new();
    if let Some(text) = system {
        chat.push(json!({"role": "system", "content": text}));
    }
    chat.extend(messages.unwrap_or_default());
    out.insert("messages".into(), Value::Array(chat));
    for (from, to) in [
        ("max_tokens", wire.max_tokens.name()),
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("stop_sequences", "stop"),
    ] {
        if let Some(v) = fields.get(from).filter(|v| !v.is_null()) {
            out.insert(to.into(), v.clone());
        }
    }
    if let Some(tools) = tools {
        out.insert("tools".into(), Value::Array(tools));
    }
    if let Some((choice, parallel)) = tool_choice {
        if let Some(choice) = choice {
            out.insert("tool_choice".into(), choice);
        }
        if !parallel {
            out.insert("parallel_tool_calls".into(), Value::Bool(false));
        }
    }
    if stream {
        out.insert("stream".into(), Value::Bool(true));
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    let body = serde_json::to_vec(&Value::Object(out))
        .map_err(|e| invalid(format!("the translated body: {e}")))?;
    Ok(ChatRequest {
        body,
        model,
        stream,
        dropped,
    })
}

/// A custom tool as an OpenAI function tool.
pub fn function_tool(name: &str, description: Option<&str>, parameters: &Value) -> Value {
    let mut function = json!({"name": name});
    if let Some(d) = description {
        function["description"] = Value::from(d);
    }
    function["parameters"] = parameters.clone();
    json!({"type": "function", "function": function})
}

/// An assistant's tool call: `arguments` is the input as a JSON string.
pub fn tool_call(id: &str, name: &str, input: &Value) -> Value {
    json!({"id": id, "type": "function",
           "function": {"name": name, "arguments": input.to_string()}})
}

fn tools_of(value: &Value, dropped: &mut Dropped) -> Result<Vec<Value>, TransportError> {
    let Value::Array(list) = value else {
        return Err(invalid("`tools` must be an array".into()));
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, tool) in list.iter().enumerate() {
        let at = format!("tools[{i}]");
        let Value::Object(tool) = tool else {
            return Err(invalid(format!("{at} must be an object")));
        };
        match tool.get("type").and_then(Value::as_str) {
            None | Some("custom") => {}
            Some(kind) => {
                return Err(refuse(
                    &format!("a server tool ({kind})"),
                    &format!("{at}.type"),
                ))
            }
        }
        for (key, v) in tool {
            match key.as_str() {
                "type" | "name" | "description" | "input_schema" => {}
                _ if v.is_null() => {}
                "cache_control" => dropped.note("cache_control"),
                other => {
                    return Err(refuse(
                        "a tool field seawall does not know how to translate",
                        &format!("{at}.{other}"),
                    ))
                }
            }
        }
        let Some(name) = tool.get("name").and_then(Value::as_str) else {
            return Err(invalid(format!("{at}.name must be a string")));
        };
        let schema = tool
            .get("input_schema")
            .filter(|s| s.is_object())
            .ok_or_else(|| invalid(format!("{at}.input_schema must be an object")))?;
        let description = tool.get("description").and_then(Value::as_str);
        out.push(function_tool(name, description, schema));
    }
    Ok(out)
}

/// `tool_choice` as OpenAI's (`None`: leave it to the provider's default), and whether
/// parallel tool calls stay allowed.
fn tool_choice_of(value: &Value) -> Result<(Option<Value>, bool), TransportError> {
    let kind = value.get("type").and_then(Value::as_str);
    let parallel = value
        .get("disable_parallel_tool_use")
        .and_then(Value::as_bool)
        != Some(true);
    let choice = match kind {
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => {
            let Some(name) = value.get("name").and_then(Value::as_str) else {
                return Err(invalid(
                    "tool_choice.name must be a string for type \"tool\"".into(),
                ));
            };
            json!({"type": "function", "function": {"name": name}})
        }
        _ => {
            return Err(invalid(
                "tool_choice.type must be \"auto\", \"any\", \"tool\" or \"none\"".into(),
            ))
        }
    };
    Ok((Some(choice), parallel))
}

fn messages_of(value: &Value, dropped: &mut Dropped) -> Result<Vec<Value>, TransportError> {
    let Value::Array(list) = value else {
        return Err(invalid("`messages` must be an array".into()));
    };
    let mut out = Vec::with_capacity(list.len() + 1);
    for (i, message) in list.iter().enumerate() {
        let Value::Object(message) = message else {
            return Err(invalid(format!(
                "messages[{i}] must be an object with `role` and `content`"
            )));
        };
        if let Some(other) = message.keys().find(|k| *k != "role" && *k != "content") {
            return Err(refuse(
                "a message field seawall does not know how to translate",
                &format!("messages[{i}].{other}"),
            ));
        }
        let path = format!("messages[{i}].content");
        let content = message.get("content").unwrap_or(&Value::Null);
        match message.get("role").and_then(Value::as_str) {
            Some("user") => user_turn(content, &path, dropped, &mut out)?,
            Some("assistant") => out.push(assistant_turn(content, &path, dropped)?),
            _ => {
                return Err(invalid(format!(
                    "messages[{i}].role must be \"user\" or \"assistant\""
                )))
            }
        }
    }
    Ok(out)
}

/// The blocks of a content value (`None` for a plain string).
fn blocks<'a>(value: &'a Value, path: &str) -> Result<Option<&'a Vec<Value>>, TransportError> {
    match value {
        Value::String(_) => Ok(None),
        Value::Array(blocks) => Ok(Some(blocks)),
        _ => Err(invalid(format!(
            "{path} must be a string or an array of content blocks"
        ))),
    }
}

/// A block as an object with its type, or an error naming it.
fn typed<'a>(
    block: &'a Value,
    at: &str,
) -> Result<(&'a Map<String, Value>, &'a str), TransportError> {
    let Value::Object(block) = block else {
        return Err(invalid(format!("{at} must be a content block object")));
    };
    match block.get("type").and_then(Value::as_str) {
        Some(kind) => Ok((block, kind)),
        None => Err(invalid(format!("{at} has no string `type`"))),
    }
}

/// Check a block's fields: `known` pass, `cache_control` (and `citations` on text) are dropped
/// and noted, anything else is refused.
fn check_fields(
    block: &Map<String, Value>,
    known: &[&str],
    at: &str,
    dropped: &mut Dropped,
) -> Result<(), TransportError> {
    for (key, v) in block {
        match key.as_str() {
            k if known.contains(&k) => {}
            _ if v.is_null() => {}
            "cache_control" => dropped.note("cache_control"),
            "citations" if known.contains(&"text") => dropped.note("citations"),
            other => {
                let kind = block.get("type").and_then(Value::as_str).unwrap_or("a");
                return Err(refuse(
                    &format!("a {kind} block field seawall does not know how to translate"),
                    &format!("{at}.{other}"),
                ));
            }
        }
    }
    Ok(())
}

fn text_block<'a>(
    block: &'a Map<String, Value>,
    at: &str,
    dropped: &mut Dropped,
) -> Result<&'a str, TransportError> {
    check_fields(block, &["type", "text"], at, dropped)?;
    block
        .get("text")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("{at}.text must be a string")))
}

/// An `image` block as an `image_url` content part.
fn image_part(
    block: &Map<String, Value>,
    at: &str,
    dropped: &mut Dropped,
) -> Result<Value, TransportError> {
    check_fields(block, &["type", "source"], at, dropped)?;
    let source = block.get("source").unwrap_or(&Value::Null);
    let str_of = |k: &str| source.get(k).and_then(Value::as_str);
    let url = match str_of("type") {
        Some("base64") => match (str_of("media_type"), str_of("data")) {
            (Some(media), Some(data)) => data_url(media, data),
            _ => {
                return Err(invalid(format!(
                    "{at}.source needs string `media_type` and `data`"
                )))
            }
        },
        Some("url") => match str_of("url") {
            Some(url) => url.to_owned(),
            None => return Err(invalid(format!("{at}.source.url must be a string"))),
        },
        Some(other) => {
            return Err(refuse(
                &format!("an image from a {other} source"),
                &format!("{at}.source"),
            ))
        }
        None => return Err(invalid(format!("{at}.source.type must be a string"))),
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

/// Content parts as chat `content`: a string when there is only text (joined with `"\n"`),
/// else the parts.
fn content_of(parts: Vec<Value>) -> Value {
    if parts.iter().all(|p| p["type"] == "text") {
        let texts: Vec<&str> = parts.iter().filter_map(|p| p["text"].as_str()).collect();
        Value::from(texts.join("\n"))
    } else {
        Value::Array(parts)
    }
}

/// A user turn: its tool results first, each a `tool` message, then the rest as one user
/// message (when there is a rest).
fn user_turn(
    content: &Value,
    path: &str,
    dropped: &mut Dropped,
    out: &mut Vec<Value>,
) -> Result<(), TransportError> {
    let Some(blocks) = blocks(content, path)? else {
        out.push(json!({"role": "user", "content": content}));
        return Ok(());
    };
    let mut parts = Vec::new();
    let mut result_images = Vec::new();
    for (j, block) in blocks.iter().enumerate() {
        let at = format!("{path}[{j}]");
        let (block, kind) = typed(block, &at)?;
        match kind {
            "text" => {
                let text = text_block(block, &at, dropped)?;
                parts.push(json!({"type": "text", "text": text}));
            }
            "image" => parts.push(image_part(block, &at, dropped)?),
            "tool_result" => {
                let (message, images) = tool_message(block, &at, dropped)?;
                out.push(message);
                result_images.extend(images);
            }
            other => {
                return Err(refuse(
                    &format!("a {other} block"),
                    &format!("{at} ({other})"),
                ))
            }
        }
    }
    // Images a tool returned cannot ride in a `tool` message: they follow, before the turn's
    // own content.
    let mut all = result_images;
    all.extend(parts);
    if !all.is_empty() {
        out.push(json!({"role": "user", "content": content_of(all)}));
    }
    Ok(())
}

/// A `tool_result` block as a `tool` message, and the images it carried (as a text part
/// naming the call, then the image parts).
fn tool_message(
    block: &Map<String, Value>,
    at: &str,
    dropped: &mut Dropped,
) -> Result<(Value, Vec<Value>), TransportError> {
    check_fields(
        block,
        &["type", "tool_use_id", "content", "is_error"],
        at,
        dropped,
    )?;
    let Some(id) = block.get("tool_use_id").and_then(Value::as_str) else {
        return Err(invalid(format!("{at}.tool_use_id must be a string")));
    };
    let mut texts = Vec::new();
    let mut images = Vec::new();
    match block.get("content") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => texts.push(s.clone()),
        Some(Value::Array(list)) => {
            for (k, inner) in list.iter().enumerate() {
                let at = format!("{at}.content[{k}]");
                let (inner, kind) = typed(inner, &at)?;
                match kind {
                    "text" => texts.push(text_block(inner, &at, dropped)?.to_owned()),
                    "image" => images.push(image_part(inner, &at, dropped)?),
                    other => {
                        return Err(refuse(
                            &format!("a {other} block"),
                            &format!("{at} ({other})"),
                        ))
                    }
                }
            }
        }
        Some(_) => {
            return Err(invalid(format!(
                "{at}.content must be a string or an array of content blocks"
            )))
        }
    }
    let mut text = texts.join("\n");
    if block.get("is_error").and_then(Value::as_bool) == Some(true) {
        text = format!("Error: {text}");
    }
    if !images.is_empty() {
        let note = format!("The images the tool call {id} returned:");
        images.insert(0, json!({"type": "text", "text": note}));
    }
    Ok((
        json!({"role": "tool", "tool_call_id": id, "content": text}),
        images,
    ))
}

/// An assistant turn: its text as `content`, its `tool_use` blocks as `tool_calls`; thinking
/// is dropped.
fn assistant_turn(
    content: &Value,
    path: &str,
    dropped: &mut Dropped,
) -> Result<Value, TransportError> {
    let Some(blocks) = blocks(content, path)? else {
        return Ok(json!({"role": "assistant", "content": content}));
    };
    let mut texts = Vec::new();
    let mut calls = Vec::new();
    for (j, block) in blocks.iter().enumerate() {
        let at = format!("{path}[{j}]");
        let (block, kind) = typed(block, &at)?;
        match kind {
            "text" => texts.push(text_block(block, &at, dropped)?),
            "tool_use" => {
                check_fields(block, &["type", "id", "name", "input"], &at, dropped)?;
                let (Some(id), Some(name)) = (
                    block.get("id").and_then(Value::as_str),
                    block.get("name").and_then(Value::as_str),
                ) else {
                    return Err(invalid(format!("{at} needs string `id` and `name`")));
                };
                let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                calls.push(tool_call(id, name, &input));
            }
            "thinking" | "redacted_thinking" => dropped.note("thinking"),
            other => {
                return Err(refuse(
                    &format!("a {other} block"),
                    &format!("{at} ({other})"),
                ))
            }
        }
    }
    let mut message = json!({"role": "assistant"});
    message["content"] = if texts.is_empty() && !calls.is_empty() {
        Value::Null
    } else {
        Value::from(texts.join("\n"))
    };
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    Ok(message)
}

/// The text of a `system` value: a string, or text blocks joined with `"\n"`.
fn text_of(value: &Value, path: &str, dropped: &mut Dropped) -> Result<String, TransportError> {
    let Some(blocks) = blocks(value, path)? else {
        return Ok(value.as_str().unwrap_or_default().to_owned());
    };
    let mut parts = Vec::with_capacity(blocks.len());
    for (j, block) in blocks.iter().enumerate() {
        let at = format!("{path}[{j}]");
        let (block, kind) = typed(block, &at)?;
        if kind != "text" {
            return Err(refuse(
                &format!("a {kind} block"),
                &format!("{at} ({kind})"),
            ));
        }
        parts.push(text_block(block, &at, dropped)?);
    }
    Ok(parts.join("\n"))
}

// ---------------------------------------------------------------------------------------------
// answers: Messages → chat completion (the gateway's OpenAI face)

/// The parts of a Messages answer a completion needs, borrowed from its bytes (no tree of
/// values is built: the face's answer costs one parse and one write).
#[derive(serde::Deserialize)]
struct Answer<'a> {
    #[serde(borrow, default)]
    id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Vec<AnswerBlock<'a>>,
    #[serde(borrow, default)]
    stop_reason: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    usage: Option<AnswerUsage>,
}

#[derive(serde::Deserialize)]
struct AnswerBlock<'a> {
    #[serde(borrow, rename = "type")]
    kind: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    text: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    input: Option<&'a serde_json::value::RawValue>,
}

#[derive(serde::Deserialize, Default)]
struct AnswerUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
}

#[derive(serde::Serialize)]
struct Completion<'a> {
    id: String,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [CompletionChoice<'a>; 1],
    usage: CompletionUsage,
}

#[derive(serde::Serialize)]
struct CompletionChoice<'a> {
    index: u32,
    message: CompletionMessage<'a>,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(serde::Serialize)]
struct CompletionMessage<'a> {
    role: &'static str,
    content: Option<String>,
    refusal: Option<()>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<CompletionCall<'a>>,
}

#[derive(serde::Serialize)]
struct CompletionCall<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: CompletionFunction<'a>,
}

#[derive(serde::Serialize)]
struct CompletionFunction<'a> {
    name: &'a str,
    arguments: &'a str,
}

#[derive(serde::Serialize)]
struct CompletionUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: CachedTokens,
}

#[derive(serde::Serialize)]
struct CachedTokens {
    cached_tokens: u64,
}

/// A Messages answer (its bytes) as a `chat.completion`: text blocks joined as `content`
/// (`null` when there is none), `tool_use` blocks as `tool_calls` (the input, as written, is
/// the `arguments` string), thinking left out, `stop_reason` as `finish_reason`, usage in
/// OpenAI's terms (as [`chat_usage`]). `model` is the name the client asked for.
///
/// # Errors
///
/// When `body` is not a Messages answer.
pub fn completion(body: &[u8], model: &str, created: u64) -> Result<Vec<u8>, serde_json::Error> {
    let answer: Answer<'_> = serde_json::from_slice(body)?;
    let mut text: Option<String> = None;
    let mut tool_calls = Vec::new();
    for block in &answer.content {
        match block.kind.as_ref() {
            "text" => text
                .get_or_insert_with(String::new)
                .push_str(block.text.as_deref().unwrap_or("")),
            "tool_use" => tool_calls.push(CompletionCall {
                id: block.id.as_deref().unwrap_or(""),
                kind: "function",
                function: CompletionFunction {
                    name: block.name.as_deref().unwrap_or(""),
                    arguments: block.input.map_or("{}", |raw| raw.get()),
                },
            }),
            _ => {}
        }
    }
    let usage = answer.usage.unwrap_or_default();
    let cached = usage.cache_read_input_tokens.unwrap_or(0);
    let prompt = usage.input_tokens + cached + usage.cache_creation_input_tokens.unwrap_or(0);
    let out = Completion {
        id: chat_id(answer.id.as_deref().unwrap_or("")),
        object: "chat.completion",
        created,
        model,
        choices: [CompletionChoice {
            index: 0,
            message: CompletionMessage {
                role: "assistant",
                content: text,
                refusal: None,
                tool_calls,
            },
            logprobs: None,
            finish_reason: finish_reason_of(answer.stop_reason.as_deref().unwrap_or("end_turn")),
        }],
        usage: CompletionUsage {
            prompt_tokens: prompt,
            completion_tokens: usage.output_tokens,
            total_tokens: prompt + usage.output_tokens,
            prompt_tokens_details: CachedTokens {
                cached_tokens: cached,
            },
        },
    };
    serde_json::to_vec(&out)
}

/// `chatcmpl-` and the message's id, so a completion can be matched to the upstream's logs.
fn chat_id(message_id: &str) -> String {
    format!(
        "chatcmpl-{}",
        message_id.strip_prefix("msg_").unwrap_or(message_id)
    )
}

/// Messages stream events as `chat.completion.chunk` payloads (each one `data:` line), for the
/// gateway's OpenAI face. Feed events in order with [`Chunks::push`]; after the last event,
/// [`Chunks::finish`] gives the usage chunk (when asked for). Thinking and pings give nothing.
#[derive(Debug)]
pub struct Chunks {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    /// The tool call index of each content block that is a tool use.
    tool_of_block: Vec<Option<usize>>,
    tools: usize,
    usage: Map<String, Value>,
}

impl Chunks {
    /// A translator for one stream. `model` is the name the client asked for.
    pub fn new(model: &str, created: u64, include_usage: bool) -> Self {
        Self {
            id: "chatcmpl-seawall".to_owned(),
            model: model.to_owned(),
            created,
            include_usage,
            tool_of_block: Vec::new(),
            tools: 0,
            usage: Map::new(),
        }
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> String {
        let mut chunk = json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk.to_string()
    }

    fn take_usage(&mut self, usage: Option<&Value>) {
        if let Some(Value::Object(u)) = usage {
            for (k, v) in u {
                if !v.is_null() {
                    self.usage.insert(k.clone(), v.clone());
                }
            }
        }
    }

    /// The chunks for one event. An `error` event becomes OpenAI's in-stream error payload
    /// (`{"error":{...}}`), after which the stream ends.
    pub fn push(&mut self, event: &SseEvent) -> Vec<String> {
        let Ok(data) = serde_json::from_str::<Value>(&event.data) else {
            return Vec::new();
        };
        match event.event.as_str() {
            "message_start" => {
                let message = data.get("message");
                if let Some(m) = message {
                    self.id = chat_id(m.get("id").and_then(Value::as_str).unwrap_or(""));
                }
                self.take_usage(message.and_then(|m| m.get("usage")));
                vec![self.chunk(json!({"role": "assistant", "content": ""}), None)]
            }
            "content_block_start" => {
                let block = data.get("content_block");
                if block.and_then(|b| b.get("type")).and_then(Value::as_str) != Some("tool_use") {
                    self.tool_of_block.push(None);
                    return Vec::new();
                }
                let index = self.tools;
                self.tools += 1;
                self.tool_of_block.push(Some(index));
                let field = |k: &str| block.and_then(|b| b.get(k)).cloned().unwrap_or(json!(""));
                vec![self.chunk(
                    json!({"tool_calls": [{"index": index, "id": field("id"), "type": "function",
                        "function": {"name": field("name"), "arguments": ""}}]}),
                    None,
                )]
            }
            "content_block_delta" => {
                let delta = data.get("delta");
                let text = |k: &str| delta.and_then(|d| d.get(k)).and_then(Value::as_str);
                match delta.and_then(|d| d.get("type")).and_then(Value::as_str) {
                    Some("text_delta") => match text("text") {
                        Some(t) => vec![self.chunk(json!({"content": t}), None)],
                        None => Vec::new(),
                    },
                    Some("input_json_delta") => {
                        let block = data.get("index").and_then(Value::as_u64);
                        let tool = block
                            .and_then(|b| usize::try_from(b).ok())
                            .and_then(|b| self.tool_of_block.get(b).copied().flatten());
                        match (tool, text("partial_json")) {
                            (Some(index), Some(part)) if !part.is_empty() => vec![self.chunk(
                                json!({"tool_calls": [{"index": index,
                                    "function": {"arguments": part}}]}),
                                None,
                            )],
                            _ => Vec::new(),
                        }
                    }
                    _ => Vec::new(),
                }
            }
            "message_delta" => {
                self.take_usage(data.get("usage"));
                let stop = data
                    .pointer("/delta/stop_reason")
                    .and_then(Value::as_str)
                    .unwrap_or("end_turn");
                vec![self.chunk(json!({}), Some(finish_reason_of(stop)))]
            }
            "error" => {
                let error = data.get("error");
                let field = |k: &str| error.and_then(|e| e.get(k)).and_then(Value::as_str);
                vec![json!({"error": {
                    "message": field("message").unwrap_or("the stream broke"),
                    "type": field("type").unwrap_or("api_error"),
                    "param": null, "code": null}})
                .to_string()]
            }
            _ => Vec::new(),
        }
    }

    /// The closing usage chunk (empty `choices`), when the client asked for usage.
    pub fn finish(&self) -> Option<String> {
        self.include_usage.then(|| {
            json!({
                "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "choices": [],
                "usage": chat_usage(Some(&Value::Object(self.usage.clone()))),
            })
            .to_string()
        })
    }
}

#[cfg(test)]
mod tests;
