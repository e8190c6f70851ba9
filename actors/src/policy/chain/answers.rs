//! What the walk reads in an answer: a refusal (and the credit it leaves), a stream's `error`
//! event as a status and a class.

use serde_json::Value;

use crate::policy::classify::Class;
use crate::wire::SseEvent;

use super::{Credit, Refusal};

/// `Some(refusal)` when a whole Messages answer is a refusal (`stop_reason: "refusal"`).
pub fn refusal_in_message(v: &Value) -> Option<Refusal> {
    if v.get("stop_reason").and_then(Value::as_str) != Some("refusal") {
        return None;
    }
    Some(Refusal {
        credit: credit_of(v.get("stop_details"), v.get("content")),
    })
}

/// `Some(refusal)` when a stream event announces a refusal (`message_delta` with
/// `stop_reason: "refusal"`; the token rides in its `stop_details`).
pub fn refusal_in_event(ev: &SseEvent) -> Option<Refusal> {
    if ev.event != "message_delta" {
        return None;
    }
    let v: Value = serde_json::from_str(&ev.data).ok()?;
    if v.pointer("/delta/stop_reason").and_then(Value::as_str) != Some("refusal") {
        return None;
    }
    let details = v
        .pointer("/delta/stop_details")
        .or_else(|| v.get("stop_details"));
    Some(Refusal {
        credit: credit_of(details, None),
    })
}

fn credit_of(details: Option<&Value>, content: Option<&Value>) -> Option<Credit> {
    let details = details?;
    let token = details.get("fallback_credit_token")?;
    if token.is_null() {
        return None;
    }
    let prefill = if details
        .get("fallback_has_prefill_claim")
        .and_then(Value::as_bool)
        == Some(true)
    {
        content
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    Some(Credit {
        token: token.clone(),
        prefill,
    })
}

/// How a stream's `error` event classifies: the HTTP status it stands for (500 when unknown).
pub fn stream_error_status(data: &str) -> u16 {
    crate::policy::classify::error_type(data.as_bytes())
        .and_then(|t| crate::wire::status_of_error_type(&t))
        .unwrap_or(500)
}

/// The class of a stream's `error` event after content.
pub fn stream_error_class(data: &str) -> Class {
    match stream_error_status(data) {
        529 => Class::Overloaded,
        429 => Class::RateLimited,
        400 => Class::InvalidRequest,
        _ => Class::ServerError,
    }
}
