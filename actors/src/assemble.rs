//! A Messages answer and its stream events, both ways: [`Assembler`] rebuilds the whole message
//! from a stream (so a streamed live answer can be cached), and [`events_of`] turns a whole
//! message back into the API's event sequence (so a cached or static answer can be streamed).
//!
//! Hand-written: it is a few dozen lines over `serde_json`, and the event grammar is the API's
//! own (`message_start`, `content_block_start` / `_delta` / `_stop`, `message_delta`,
//! `message_stop`).

use serde_json::{json, Map, Value};

use crate::upstream::SseEvent;

/// Rebuilds a Messages response from its stream events, in order.
#[derive(Debug, Default)]
pub struct Assembler {
    message: Option<Map<String, Value>>,
    blocks: Vec<Value>,
    /// Per block: `input_json_delta` fragments, parsed at `content_block_stop`.
    partial_json: Vec<String>,
    stopped: bool,
    broken: bool,
}

impl Assembler {
    /// Take the next event.
    pub fn push(&mut self, ev: &SseEvent) {
        if self.broken || self.stopped {
            return;
        }
        let Ok(data) = serde_json::from_str::<Value>(&ev.data) else {
            // `ping` carries a body too; anything unparseable but a ping spoils the copy.
            self.broken = ev.event != "ping";
            return;
        };
        let index = data
            .get("index")
            .and_then(Value::as_u64)
            .and_then(|i| usize::try_from(i).ok());
        match ev.event.as_str() {
            "message_start" => match data.get("message") {
                Some(Value::Object(m)) => self.message = Some(m.clone()),
                _ => self.broken = true,
            },
            "content_block_start" => match (index, data.get("content_block")) {
                (Some(i), Some(block)) if i == self.blocks.len() => {
                    self.blocks.push(block.clone());
                    self.partial_json.push(String::new());
                }
                _ => self.broken = true,
            },
            "content_block_delta" => {
                let (Some(i), Some(delta)) = (index, data.get("delta")) else {
                    self.broken = true;
                    return;
                };
                let Some(Value::Object(block)) = self.blocks.get_mut(i) else {
                    self.broken = true;
                    return;
                };
                let text = |k: &str| delta.get(k).and_then(Value::as_str).unwrap_or("");
                match delta.get("type").and_then(Value::as_str) {
                    Some("text_delta") => append(block, "text", text("text")),
                    Some("thinking_delta") => append(block, "thinking", text("thinking")),
                    Some("signature_delta") => {
                        block.insert("signature".into(), Value::from(text("signature")));
                    }
                    Some("input_json_delta") => {
                        if let Some(p) = self.partial_json.get_mut(i) {
                            p.push_str(text("partial_json"));
                        }
                    }
                    Some("citations_delta") => {
                        let citation = delta.get("citation").cloned().unwrap_or(Value::Null);
                        match block.get_mut("citations") {
                            Some(Value::Array(a)) => a.push(citation),
                            _ => {
                                block.insert("citations".into(), Value::Array(vec![citation]));
                            }
                        }
                    }
                    // A delta kind this copy does not know: do not cache a wrong answer.
                    _ => self.broken = true,
                }
            }
            "content_block_stop" => {
                let Some(i) = index else {
                    self.broken = true;
                    return;
                };
                let partial = self.partial_json.get(i).cloned().unwrap_or_default();
                if !partial.is_empty() {
                    match (
                        serde_json::from_str::<Value>(&partial),
                        self.blocks.get_mut(i),
                    ) {
                        (Ok(input), Some(Value::Object(block))) => {
                            block.insert("input".into(), input);
                        }
                        _ => self.broken = true,
                    }
                }
            }
            "message_delta" => {
                let Some(message) = self.message.as_mut() else {
                    self.broken = true;
                    return;
                };
                if let Some(Value::Object(delta)) = data.get("delta") {
                    for (k, v) in delta {
                        message.insert(k.clone(), v.clone());
                    }
                }
                if let Some(Value::Object(usage)) = data.get("usage") {
                    let entry = message
                        .entry("usage")
                        .or_insert_with(|| Value::Object(Map::new()));
                    if let Value::Object(u) = entry {
                        for (k, v) in usage {
                            u.insert(k.clone(), v.clone());
                        }
                    }
                }
            }
            "message_stop" => self.stopped = true,
            "error" => self.broken = true,
            _ => {}
        }
    }

    /// The whole message, if the stream ended with `message_stop` and every event made sense.
    pub fn finish(self) -> Option<Value> {
        if self.broken || !self.stopped {
            return None;
        }
        let mut message = self.message?;
        message.insert("content".into(), Value::Array(self.blocks));
        Some(Value::Object(message))
    }
}

fn append(block: &mut Map<String, Value>, key: &str, more: &str) {
    let mut s = block
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    s.push_str(more);
    block.insert(key.into(), Value::from(s));
}

/// The API's event sequence for a whole message: each text, thinking and tool-input block in
/// one delta. A block of a kind without deltas is started whole and stopped.
pub fn events_of(message: &Value) -> Vec<SseEvent> {
    let ev = |name: &str, data: Value| SseEvent::new(name, data.to_string());
    let mut head = message.as_object().cloned().unwrap_or_default();
    let blocks = match head.insert("content".into(), Value::Array(Vec::new())) {
        Some(Value::Array(b)) => b,
        _ => Vec::new(),
    };
    let stop_reason = head.insert("stop_reason".into(), Value::Null);
    let stop_sequence = head.insert("stop_sequence".into(), Value::Null);
    let output_tokens = head
        .get("usage")
        .and_then(|u| u.get("output_tokens"))
        .cloned()
        .unwrap_or(json!(0));
    let mut out = vec![ev(
        "message_start",
        json!({"type": "message_start", "message": head}),
    )];
    for (i, block) in blocks.into_iter().enumerate() {
        let kind = block.get("type").and_then(Value::as_str).unwrap_or("");
        let (start, deltas) = match kind {
            "text" => {
                let text = block.get("text").cloned().unwrap_or(json!(""));
                let mut start = block.clone();
                start["text"] = json!("");
                (start, vec![json!({"type": "text_delta", "text": text})])
            }
            "thinking" => {
                let mut start = block.clone();
                start["thinking"] = json!("");
                let mut d = vec![json!({"type": "thinking_delta",
                    "thinking": block.get("thinking").cloned().unwrap_or(json!(""))})];
                if let Some(sig) = block.get("signature") {
                    start["signature"] = json!("");
                    d.push(json!({"type": "signature_delta", "signature": sig}));
                }
                (start, d)
            }
            "tool_use" | "server_tool_use" => {
                let mut start = block.clone();
                start["input"] = json!({});
                let input = block.get("input").cloned().unwrap_or(json!({}));
                (
                    start,
                    vec![json!({"type": "input_json_delta", "partial_json": input.to_string()})],
                )
            }
            _ => (block, Vec::new()),
        };
        out.push(ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": i, "content_block": start}),
        ));
        for delta in deltas {
            out.push(ev(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": i, "delta": delta}),
            ));
        }
        out.push(ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": i}),
        ));
    }
    out.push(ev(
        "message_delta",
        json!({"type": "message_delta",
               "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
               "usage": {"output_tokens": output_tokens}}),
    ));
    out.push(ev("message_stop", json!({"type": "message_stop"})));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> Value {
        json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "m",
            "content": [
                {"type": "thinking", "thinking": "let me see", "signature": "sig"},
                {"type": "text", "text": "Hello, world"},
                {"type": "tool_use", "id": "tu_1", "name": "lookup", "input": {"q": "x", "n": 2}},
            ],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 12, "output_tokens": 8}
        })
    }

    fn assemble(events: &[SseEvent]) -> Option<Value> {
        let mut a = Assembler::default();
        for e in events {
            a.push(e);
        }
        a.finish()
    }

    #[test]
    fn a_message_survives_the_round_trip_through_its_events() {
        let events = events_of(&message());
        let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
        assert_eq!(names[0], "message_start");
        assert_eq!(names[names.len() - 1], "message_stop");
        assert_eq!(
            names
                .iter()
                .filter(|n| **n == "content_block_start")
                .count(),
            3
        );
        assert_eq!(assemble(&events), Some(message()));
    }

    #[test]
    fn split_deltas_and_pings_assemble_like_the_api_streams_them() {
        let mut events = vec![
            SseEvent::new("message_start", json!({"type": "message_start", "message": {"id": "m", "role": "assistant", "content": [], "stop_reason": null, "usage": {"input_tokens": 3, "output_tokens": 1}}}).to_string()),
            SseEvent::new("ping", json!({"type": "ping"}).to_string()),
            SseEvent::new("content_block_start", json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}).to_string()),
        ];
        for part in ["Hel", "lo"] {
            events.push(SseEvent::new("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": part}}).to_string()));
        }
        events.push(SseEvent::new(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}).to_string(),
        ));
        events.push(SseEvent::new("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 5}}).to_string()));
        let unfinished = assemble(&events);
        assert_eq!(unfinished, None, "no message_stop: not a whole answer");
        events.push(SseEvent::new(
            "message_stop",
            json!({"type": "message_stop"}).to_string(),
        ));
        let m = assemble(&events).expect("whole");
        assert_eq!(m["content"][0]["text"], "Hello");
        assert_eq!(m["stop_reason"], "end_turn");
        assert_eq!(m["usage"], json!({"input_tokens": 3, "output_tokens": 5}));
    }

    #[test]
    fn an_error_event_or_an_unknown_delta_spoils_the_copy() {
        let mut events = events_of(&message());
        events.insert(
            3,
            SseEvent::new(
                "error",
                json!({"type": "error", "error": {"type": "overloaded_error"}}).to_string(),
            ),
        );
        assert_eq!(assemble(&events), None);
        let mut odd = events_of(&message());
        odd.insert(3, SseEvent::new("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "new_kind_delta"}}).to_string()));
        assert_eq!(assemble(&odd), None);
    }
}
