//! The SSE parser (`seawall::sse`), fed any bytes an upstream may send, cut anywhere: no
//! panic, the same events however the bytes are cut, and events no larger than the bytes they
//! came from (a replaced invalid byte costs 3, a default event name 7).
#![no_main]

use libfuzzer_sys::fuzz_target;
use seawall::sse::SseParser;

fuzz_target!(|data: &[u8]| {
    // The first byte says where to cut the rest.
    let Some((&cut, bytes)) = data.split_first() else {
        return;
    };
    let cut = usize::from(cut) % (bytes.len() + 1);
    let mut whole = SseParser::new();
    let one = whole.push(bytes);
    let one_done = whole.finish().is_ok();
    let mut parts = SseParser::new();
    let mut two = parts.push(&bytes[..cut]);
    two.extend(parts.push(&[]));
    two.extend(parts.push(&bytes[cut..]));
    let two_done = parts.finish().is_ok();
    assert_eq!(one, two, "the cut changed what was read");
    assert_eq!(one_done, two_done);
    let size: usize = one
        .iter()
        .filter_map(|e| e.as_ref().ok())
        .map(|e| e.event.len() + e.data.len())
        .sum();
    assert!(size <= 3 * bytes.len() + 7 * one.len());
});
