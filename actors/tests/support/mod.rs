//! Helpers shared by the actor test binaries.
#![allow(dead_code)]

use seawall_actors::{SseEvent, StreamReply};

/// Every event of a stream, until it ends.
pub async fn drain(mut r: StreamReply) -> Vec<SseEvent> {
    let mut out = Vec::new();
    while let Some(ev) = r.events.recv().await {
        out.push(ev);
    }
    out
}

/// The text the content deltas of a stream spell.
pub fn text(events: &[SseEvent]) -> String {
    events
        .iter()
        .filter(|e| e.is_content())
        .filter_map(|e| {
            let v: serde_json::Value = serde_json::from_str(&e.data).ok()?;
            v.pointer("/delta/text")?.as_str().map(str::to_owned)
        })
        .collect()
}

/// The event types of a stream, in order.
pub fn kinds(events: &[SseEvent]) -> Vec<&str> {
    events.iter().map(|e| e.event.as_str()).collect()
}
