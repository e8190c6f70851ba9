//! Helpers shared by the actor test binaries (each includes this as `mod support;`): durations,
//! a runtime builder over the scripted upstream, the common call, and draining a stream. Paused
//! time throughout: every test here is `#[tokio::test(start_paused = true)]`.
#![allow(dead_code)]

use std::time::Duration;

use seawall_actors::scripted::ScriptedUpstream;
use seawall_actors::{Builder, Call, Seawall, SseEvent, StreamReply};

/// One millisecond: `5 * MS`.
pub const MS: Duration = Duration::from_millis(1);

/// `n` seconds.
pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A runtime builder with `up` as its one upstream, named `s`.
pub fn builder(up: &ScriptedUpstream) -> Builder {
    Seawall::builder().upstream("s", up.clone())
}

/// The plain call most tests send: 64 tokens of `hello` to `model`.
pub fn call(model: &str) -> Call {
    Call::new(model, 64).user("hello")
}

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
