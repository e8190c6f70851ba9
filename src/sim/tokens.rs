//! The simulator's own input-token count, independent of the runtime's estimate.
//!
//! A real tokenizer reads text, not JSON punctuation, at roughly four bytes of English per
//! token, and adds a few tokens of role and turn markers around each message. So the count is:
//!
//! - the UTF-8 bytes of the text the model reads: `system` (a string, or its text blocks);
//!   each message's `content` (a string, or its blocks: `text`, `thinking`, a `tool_use`'s
//!   name and its `input` as JSON, a `tool_result`'s content read the same way; any other
//!   block, such as an image or a document, as its JSON text, a stand-in for its real cost);
//!   each tool's `name`, `description` and `input_schema` (as JSON);
//! - divided by 4, rounded up;
//! - plus [`PER_MESSAGE`] tokens per message;
//! - at least 1.
//!
//! This is never more than the runtime's heuristic (the compact JSON text of `system`,
//! `messages` and `tools`, divided by 4, rounded up): every byte counted here is also in that
//! JSON text (escapes only make the JSON longer), and the smallest message object
//! `{"content":""}` alone has 14 bytes of punctuation, more than the 12 bytes that
//! [`PER_MESSAGE`] stands for. So a runtime that reserves by its heuristic never reserves less
//! than the simulator charges.

use serde_json::Value;

/// Tokens a chat tokenizer adds around each message (role and turn markers).
pub(crate) const PER_MESSAGE: u64 = 3;

/// Input tokens of a Messages API (or chat completions) body by the rule above; `None` unless
/// `messages` is a non-empty array.
pub(crate) fn count_input_tokens(body: &Value) -> Option<u64> {
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())?;
    let mut bytes = body.get("system").map_or(0, content_bytes);
    for message in messages {
        bytes += message.get("content").map_or(0, content_bytes);
    }
    if let Some(tools) = body.get("tools").and_then(Value::as_array) {
        bytes += tools.iter().map(tool_bytes).sum::<usize>();
    }
    let text = u64::try_from(bytes).unwrap_or(u64::MAX).div_ceil(4);
    let markers = PER_MESSAGE.saturating_mul(u64::try_from(messages.len()).unwrap_or(u64::MAX));
    Some(text.saturating_add(markers).max(1))
}

/// The text bytes of a content value: a string as is, blocks one by one, anything else as its
/// JSON text.
fn content_bytes(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len(),
        Value::Array(blocks) => blocks.iter().map(block_bytes).sum(),
        Value::Null => 0,
        other => json_bytes(other),
    }
}

fn block_bytes(block: &Value) -> usize {
    let field = |name: &str| block.get(name).map_or(0, content_bytes);
    match block.get("type").and_then(Value::as_str) {
        Some("text") => field("text"),
        Some("thinking") => field("thinking"),
        Some("tool_use" | "server_tool_use") => {
            field("name") + block.get("input").map_or(0, json_bytes)
        }
        Some("tool_result") => field("content"),
        _ => json_bytes(block),
    }
}

fn tool_bytes(tool: &Value) -> usize {
    let text = |name: &str| tool.get(name).map_or(0, content_bytes);
    text("name") + text("description") + tool.get("input_schema").map_or(0, json_bytes)
}

/// The length of `v` as compact JSON.
fn json_bytes(v: &Value) -> usize {
    v.to_string().len()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The runtime's rule, restated here only to check the bound against it.
    fn runtime_heuristic(body: &Value) -> u64 {
        let bytes: usize = ["system", "messages", "tools"]
            .iter()
            .filter_map(|k| body.get(*k))
            .map(|v| v.to_string().len())
            .sum();
        (bytes as u64).div_ceil(4).max(1)
    }

    #[test]
    fn counts_text_not_punctuation() {
        // "hello there" (11 bytes) -> 3 tokens, plus 3 for the message.
        let body = json!({"messages": [{"role": "user", "content": "hello there"}]});
        assert_eq!(count_input_tokens(&body), Some(3 + 3));
        // A text block reads the same as a string.
        let blocks = json!({"messages": [{"role": "user",
            "content": [{"type": "text", "text": "hello there"}]}]});
        assert_eq!(count_input_tokens(&blocks), Some(6));
        // System (8 bytes) and text are summed before rounding: 19 bytes -> 5, plus 3.
        let with_system = json!({"system": "be brief",
            "messages": [{"role": "user", "content": "hello there"}]});
        assert_eq!(count_input_tokens(&with_system), Some(5 + 3));
        let system_blocks = json!({"system": [{"type": "text", "text": "be brief"}],
            "messages": [{"role": "user", "content": "hello there"}]});
        assert_eq!(count_input_tokens(&system_blocks), Some(8));
        // UTF-8 bytes: "✈" is three.
        let plane = json!({"messages": [{"role": "user", "content": "✈"}]});
        assert_eq!(count_input_tokens(&plane), Some(1 + 3));
        // An empty message still costs its markers.
        let empty = json!({"messages": [{"role": "user", "content": ""}]});
        assert_eq!(count_input_tokens(&empty), Some(3));
    }

    #[test]
    fn tools_and_tool_blocks() {
        // name (6) + description (10) + schema {"type":"object"} (17) = 33; "hi" = 2: 35 -> 9.
        let body = json!({
            "tools": [{"name": "lookup", "description": "find a row",
                       "input_schema": {"type": "object"}}],
            "messages": [{"role": "user", "content": "hi"}],
        });
        assert_eq!(count_input_tokens(&body), Some(9 + 3));
        // tool_use: name (6) + input {"q":"x"} (9); tool_result: its text (2): 17 -> 5; 3 messages.
        let turns = json!({"messages": [
            {"role": "user", "content": ""},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": "x"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1",
                 "content": [{"type": "text", "text": "ok"}]}]},
        ]});
        assert_eq!(count_input_tokens(&turns), Some(5 + 9));
    }

    #[test]
    fn no_messages_no_count() {
        assert_eq!(count_input_tokens(&json!({"messages": []})), None);
        assert_eq!(count_input_tokens(&json!({"system": "x"})), None);
        assert_eq!(count_input_tokens(&json!({"messages": "hi"})), None);
    }

    #[test]
    fn never_above_the_runtime_heuristic() {
        let long = "line one\nline \"two\"\t\u{1F600} and some more words ".repeat(300);
        let bodies = [
            json!({"messages": [{"role": "user", "content": "x"}]}),
            json!({"messages": [{"content": ""}]}),
            json!({"system": "You are terse. Answer in one line.",
                   "tools": [{"name": "lookup", "input_schema": {"type": "object"}}],
                   "messages": [{"role": "user", "content": "What is the capital of France? ✈"}]}),
            json!({"system": [{"type": "text", "text": long}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": long},
                    {"type": "image", "source": {"type": "base64",
                     "media_type": "image/png", "data": "iVBORw0KGgo="}}]},
                {"role": "assistant", "content": [{"type": "thinking",
                    "thinking": "hmm", "signature": "sig"},
                    {"type": "tool_use", "id": "t", "name": "n", "input": {"a": [1, 2]}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                    "content": "done", "is_error": false}]},
            ]}),
            json!({"messages": (0..50)
                .map(|i| json!({"role": if i % 2 == 0 { "user" } else { "assistant" },
                                "content": format!("turn {i}")}))
                .collect::<Vec<_>>()}),
        ];
        for body in &bodies {
            let ours = count_input_tokens(body).unwrap();
            let theirs = runtime_heuristic(body);
            assert!(ours <= theirs, "{ours} > {theirs} for {body}");
            assert!(ours >= 1);
        }
    }
}
