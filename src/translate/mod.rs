//! The OpenAI chat completions wire, both ways, as one translation layer.
//!
//! seawall speaks the Anthropic Messages API everywhere inside. Two edges speak OpenAI's chat
//! completions instead:
//!
//! - **outbound**, the `openai` transport ([`crate::transport::openai`]): a Messages request goes
//!   out as a chat request ([`to_chat::request`]), and the chat answer comes back as a Messages
//!   answer ([`from_chat::message`]) or as Messages stream events ([`from_chat::Events`]);
//! - **inbound**, the gateway's OpenAI face (`POST /v1/chat/completions`): a chat request becomes
//!   the runtime's Messages call ([`from_chat::request`]), and its answer goes back as a chat
//!   completion ([`to_chat::completion`]) or as chat completion chunks ([`to_chat::Chunks`]).
//!
//! The files are cut by the direction data flows (`to_chat`: Messages shapes become chat
//! shapes; `from_chat`: the other way), so a mapping both edges need (a tool, a tool call, an
//! image, a stop reason) is written once, here or in the file of its direction.
//!
//! Everything here is pure: JSON in, JSON out, no I/O and no clock (the caller passes
//! `created`), so every mapping is unit-tested without a server.

pub mod from_chat;
pub mod to_chat;

use serde_json::Value;

/// The response header naming the request features that were dropped in translation
/// (comma-separated, e.g. `top_k,cache_control`). Absent when nothing was dropped.
pub const DROPPED_HEADER: &str = "seawall-translation-dropped";

/// Features left out in translation, first occurrence first, no repeats: what the other side
/// never saw, for [`DROPPED_HEADER`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dropped(Vec<&'static str>);

impl Dropped {
    /// Note that `feature` was left out.
    pub fn note(&mut self, feature: &'static str) {
        if !self.0.contains(&feature) {
            self.0.push(feature);
        }
    }

    /// The features, in the order first seen.
    pub fn features(&self) -> &[&'static str] {
        &self.0
    }

    /// Whether nothing was dropped.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The header value: `top_k,cache_control`.
    pub fn header(&self) -> String {
        self.0.join(",")
    }
}

/// An Anthropic `stop_reason` for an OpenAI `finish_reason`. `stop` is `end_turn`: a stop
/// sequence cannot be told from a natural end. An unknown reason is passed on unchanged.
pub fn stop_reason_of(finish_reason: &str) -> &str {
    match finish_reason {
        "stop" => "end_turn",
        "length" => "max_tokens",
        "content_filter" => "refusal",
        "tool_calls" | "function_call" => "tool_use",
        other => other,
    }
}

/// An OpenAI `finish_reason` for an Anthropic `stop_reason`: `length`, `tool_calls`,
/// `content_filter`, else `stop` (a natural end, a stop sequence, a paused turn).
pub fn finish_reason_of(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

/// An image's `data:` URL from an Anthropic base64 source.
pub fn data_url(media_type: &str, data: &str) -> String {
    format!("data:{media_type};base64,{data}")
}

/// The media type and base64 data of a `data:` URL, or `None` when it is not one
/// (`data:image/png;base64,AAAA`; the media type must be `type/subtype`, the data base64).
pub fn parse_data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (media_type, data) = rest.split_once(";base64,")?;
    let (kind, sub) = media_type.split_once('/')?;
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    };
    let base64 = data
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b));
    (token(kind) && token(sub) && base64 && !data.is_empty()).then_some((media_type, data))
}

/// Usage in OpenAI's terms from Anthropic's: `prompt_tokens` counts every input token (cache
/// reads and writes too), `prompt_tokens_details.cached_tokens` the cache reads.
pub fn chat_usage(usage: Option<&Value>) -> Value {
    let n = |k: &str| {
        usage
            .and_then(|u| u.get(k))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let cached = n("cache_read_input_tokens");
    let prompt = n("input_tokens") + cached + n("cache_creation_input_tokens");
    let completion = n("output_tokens");
    serde_json::json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}

/// Usage in Anthropic's terms from OpenAI's: `input_tokens` leaves the cached tokens out (they
/// go in `cache_read_input_tokens`), as the Messages API counts them.
pub fn messages_usage(usage: Option<&Value>) -> Value {
    let n = |p: &str| {
        usage
            .and_then(|u| u.pointer(p))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let prompt = n("/prompt_tokens");
    let cached = n("/prompt_tokens_details/cached_tokens").min(prompt);
    let mut out = serde_json::json!({
        "input_tokens": prompt - cached,
        "output_tokens": n("/completion_tokens"),
    });
    if cached > 0 {
        out["cache_read_input_tokens"] = Value::from(cached);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stop_and_finish_reasons_map_both_ways() {
        for (finish, stop) in [
            ("stop", "end_turn"),
            ("length", "max_tokens"),
            ("tool_calls", "tool_use"),
            ("content_filter", "refusal"),
        ] {
            assert_eq!(stop_reason_of(finish), stop);
            assert_eq!(finish_reason_of(stop), finish);
        }
        assert_eq!(stop_reason_of("function_call"), "tool_use");
        assert_eq!(stop_reason_of("eos"), "eos", "unknown reasons pass");
        for stop in ["stop_sequence", "pause_turn", "end_turn", "whatever"] {
            assert_eq!(finish_reason_of(stop), "stop", "{stop}");
        }
    }

    #[test]
    fn data_urls_round_trip_and_other_urls_are_not_data() {
        let url = data_url("image/png", "iVBORw0KGgo=");
        assert_eq!(url, "data:image/png;base64,iVBORw0KGgo=");
        assert_eq!(parse_data_url(&url), Some(("image/png", "iVBORw0KGgo=")));
        for bad in [
            "https://example.com/a.png",
            "data:image/png,raw",
            "data:;base64,AAAA",
            "data:image;base64,AAAA",
            "data:image/png;base64,",
            "data:image/png;base64,not base64!",
            "data:image/p\"ng;base64,AAAA",
        ] {
            assert_eq!(parse_data_url(bad), None, "{bad}");
        }
    }

    #[test]
    fn usage_counts_cache_reads_the_way_each_side_does() {
        let anthropic = json!({"input_tokens": 10, "output_tokens": 4,
            "cache_read_input_tokens": 100, "cache_creation_input_tokens": 5});
        assert_eq!(
            chat_usage(Some(&anthropic)),
            json!({"prompt_tokens": 115, "completion_tokens": 4, "total_tokens": 119,
                   "prompt_tokens_details": {"cached_tokens": 100}})
        );
        let openai = json!({"prompt_tokens": 115, "completion_tokens": 4,
            "prompt_tokens_details": {"cached_tokens": 100}});
        assert_eq!(
            messages_usage(Some(&openai)),
            json!({"input_tokens": 15, "output_tokens": 4, "cache_read_input_tokens": 100})
        );
        assert_eq!(
            messages_usage(None),
            json!({"input_tokens": 0, "output_tokens": 0})
        );
        // A provider claiming more cached than prompt tokens cannot make input negative.
        let odd = json!({"prompt_tokens": 3, "prompt_tokens_details": {"cached_tokens": 9}});
        assert_eq!(messages_usage(Some(&odd))["input_tokens"], 0);
    }
}
