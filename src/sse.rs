//! An incremental parser for server-sent events, the wire format of Messages API streams.
//!
//! Written by hand because the format is small and the parts the API uses are few: `event:` and
//! `data:` fields, comments, blank lines that dispatch. Bytes arrive in chunks cut anywhere (in
//! the middle of a line, of a `\r\n`, of a UTF-8 character), so the parser keeps the bytes of the
//! unfinished line and decodes a line only once it is complete.
//!
//! What it follows from the [SSE specification](https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation):
//!
//! - a line ends in `\n`, `\r\n` or `\r`;
//! - `field: value` with one leading space of the value stripped; a line without a colon is a
//!   field with an empty value; a line starting with `:` is a comment;
//! - `event` sets the type, `data` lines are joined with `\n`, `id` and `retry` (and any other
//!   field) are ignored;
//! - a blank line dispatches the event: type `message` when no (or an empty) `event` was given,
//!   and nothing at all when it had no `data` line.
//!
//! Not followed, because the API never sends them: a byte-order mark at the start of the stream
//! and `NUL` in `id`. Invalid UTF-8 in a line is replaced (U+FFFD), not refused.
//!
//! Limits keep a broken or hostile upstream from growing memory without bound: a line may hold
//! at most [`MAX_LINE`] bytes and an event's data at most [`MAX_EVENT`] bytes.

use std::borrow::Cow;

use seawall_actors::upstream::SseEvent;

/// Longest line accepted, in bytes, without its line ending (1 MiB). Messages API events are one
/// `data:` line each and far smaller; anything longer is a broken stream.
pub const MAX_LINE: usize = 1 << 20;

/// Most data one event may gather over several `data:` lines, in bytes (8 MiB), so that a
/// stream of data lines without a blank line cannot grow the buffer forever.
pub const MAX_EVENT: usize = 8 << 20;

/// Why the parser stopped. After one of these it ignores any further input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// A line was longer than [`MAX_LINE`].
    #[error("event line too long")]
    LineTooLong,
    /// An event's data was longer than [`MAX_EVENT`].
    #[error("event too long")]
    EventTooLong,
}

/// The stream ended inside an event: a line without its line ending, or fields without the blank
/// line that dispatches them. What was pending is lost, as the specification says; for a Messages
/// API stream it means the body was cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the stream ended inside an event")]
pub struct Incomplete;

/// An incremental SSE parser: feed it chunks with [`SseParser::push`], then call
/// [`SseParser::finish`] at the end of the body.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of the line not yet ended (it may end in the middle of a UTF-8 character).
    line: Vec<u8>,
    /// The last line ended in `\r`: a `\n` right after it (maybe in the next chunk) belongs to it.
    after_cr: bool,
    /// The `event` field of the event being gathered.
    event: Option<String>,
    /// The `data` lines of the event being gathered, joined with `\n`.
    data: String,
    /// Whether a `data` line was seen (an event with `data:` and nothing after it has empty
    /// data, yet is dispatched).
    has_data: bool,
    /// Set once a limit was broken: everything after is ignored.
    failed: bool,
}

impl SseParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parse the next chunk of the body and return the events it completed, in order.
    ///
    /// A limit broken by this chunk comes as a last `Err` item; from then on the parser returns
    /// nothing (the stream cannot be trusted past a line it could not read).
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Result<SseEvent, SseError>> {
        let mut out = Vec::new();
        if self.failed {
            return out;
        }
        let mut rest = chunk;
        // An empty chunk must not forget the `\r`: the `\n` may still come.
        if self.after_cr && !rest.is_empty() {
            self.after_cr = false;
            if let Some(tail) = rest.strip_prefix(b"\n") {
                rest = tail;
            }
        }
        while let Some(end) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            let (body, tail) = rest.split_at(end);
            // `tail` starts with the line ending; a `\r\n` is one ending, even when the `\n`
            // only comes with the next chunk.
            rest = match tail {
                [b'\r', b'\n', after @ ..] => after,
                [b'\r'] => {
                    self.after_cr = true;
                    &[]
                }
                [_, after @ ..] => after,
                [] => &[],
            };
            let result = if self.line.is_empty() {
                // The whole line is in this chunk: parse it in place, no copy.
                self.line_done(body)
            } else if self.line.len() + body.len() > MAX_LINE {
                Err(SseError::LineTooLong)
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(body);
                let result = self.line_done(&line);
                // Keep the buffer's capacity for the next long line.
                line.clear();
                self.line = line;
                result
            };
            match result {
                Ok(Some(event)) => out.push(Ok(event)),
                Ok(None) => {}
                Err(e) => {
                    self.fail();
                    out.push(Err(e));
                    return out;
                }
            }
        }
        if self.line.len() + rest.len() > MAX_LINE {
            self.fail();
            out.push(Err(SseError::LineTooLong));
            return out;
        }
        self.line.extend_from_slice(rest);
        out
    }

    /// The end of the body: `Err(Incomplete)` when an event was still pending (an unfinished
    /// line, or fields not yet dispatched by a blank line).
    ///
    /// # Errors
    ///
    /// [`Incomplete`] as above. A parser that already failed reports `Ok`: its error was
    /// returned by [`SseParser::push`].
    pub fn finish(self) -> Result<(), Incomplete> {
        if !self.failed && (!self.line.is_empty() || self.event.is_some() || self.has_data) {
            Err(Incomplete)
        } else {
            Ok(())
        }
    }

    fn fail(&mut self) {
        self.failed = true;
        self.line = Vec::new();
        self.data = String::new();
        self.event = None;
        self.has_data = false;
    }

    /// One complete line, without its ending: a field, a comment, or the blank line that
    /// dispatches.
    fn line_done(&mut self, line: &[u8]) -> Result<Option<SseEvent>, SseError> {
        if line.len() > MAX_LINE {
            return Err(SseError::LineTooLong);
        }
        if line.is_empty() {
            return Ok(self.dispatch());
        }
        if line[0] == b':' {
            return Ok(None);
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        match name {
            b"event" => self.event = Some(text(value).into_owned()),
            b"data" => {
                if self.data.len() + value.len() + 1 > MAX_EVENT {
                    return Err(SseError::EventTooLong);
                }
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(&text(value));
                self.has_data = true;
            }
            // `id`, `retry` and unknown fields: the API's streams do not resume, so ignore them.
            _ => {}
        }
        Ok(None)
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        let event = self.event.take();
        if !std::mem::take(&mut self.has_data) {
            return None;
        }
        let event = match event {
            Some(e) if !e.is_empty() => e,
            _ => "message".to_owned(),
        };
        // The event owns its data; the next one starts from an empty (unallocated) string, so a
        // one-line event costs exactly one allocation of its own size.
        let data = std::mem::take(&mut self.data);
        Some(SseEvent { event, data })
    }
}

/// A line's bytes as text: borrowed when valid UTF-8, else with U+FFFD for the bad bytes.
fn text(bytes: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event: &str, data: &str) -> SseEvent {
        SseEvent::new(event, data)
    }

    /// All events of `input` fed as one chunk, plus the verdict of `finish`.
    fn parse(input: &[u8]) -> (Vec<SseEvent>, Result<(), Incomplete>) {
        parse_chunks(&[input])
    }

    fn parse_chunks(chunks: &[&[u8]]) -> (Vec<SseEvent>, Result<(), Incomplete>) {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for c in chunks {
            for item in p.push(c) {
                out.push(item.unwrap());
            }
        }
        (out, p.finish())
    }

    /// A stream shaped like the API's, with every line ending and the awkward parts mixed in.
    const MIXED: &[u8] = b"event: message_start\r\ndata: {\"type\":\"message_start\",\"x\":\"\xc3\xa9t\xc3\xa9 \xe2\x82\xac \xf0\x9f\xa6\x80\"}\r\n\r\n\
: a comment\n\
event: ping\rdata: {\"type\": \"ping\"}\r\r\
id: 7\nretry: 100\ndata:first\ndata:  second\ndata\n\n\
event:\ndata: x\n\n\
event: lonely\n\n\
event: content_block_delta\ndata: {\"delta\":\"a\"}\n\n";

    fn mixed_events() -> Vec<SseEvent> {
        vec![
            ev(
                "message_start",
                "{\"type\":\"message_start\",\"x\":\"été € 🦀\"}",
            ),
            ev("ping", "{\"type\": \"ping\"}"),
            ev("message", "first\n second\n"),
            ev("message", "x"),
            ev("content_block_delta", "{\"delta\":\"a\"}"),
        ]
    }

    #[test]
    fn the_fields_the_api_uses() {
        let (events, end) = parse(MIXED);
        assert_eq!(events, mixed_events());
        assert_eq!(end, Ok(()));
    }

    #[test]
    fn one_leading_space_is_stripped_not_more() {
        let (events, _) = parse(b"event:  two\ndata:  x \n\n");
        assert_eq!(events, vec![ev(" two", " x ")]);
    }

    #[test]
    fn an_event_without_data_is_not_dispatched_and_its_type_does_not_leak() {
        let (events, end) = parse(b"event: a\n\ndata: b\n\n");
        assert_eq!(events, vec![ev("message", "b")]);
        assert_eq!(end, Ok(()));
    }

    #[test]
    fn an_empty_data_line_still_dispatches() {
        let (events, _) = parse(b"event: e\ndata:\n\n");
        assert_eq!(events, vec![ev("e", "")]);
    }

    #[test]
    fn comments_and_ignored_fields_never_dispatch() {
        let (events, end) = parse(b": hi\n\n:\r\nid: 1\n\nretry: 5\n\n");
        assert!(events.is_empty(), "{events:?}");
        assert_eq!(end, Ok(()));
    }

    #[test]
    fn split_at_every_byte_position_gives_the_same_events() {
        let want = mixed_events();
        for cut in 0..=MIXED.len() {
            let (a, b) = MIXED.split_at(cut);
            let (events, end) = parse_chunks(&[a, b]);
            assert_eq!(events, want, "cut at {cut}");
            assert_eq!(end, Ok(()), "cut at {cut}");
        }
        for cut1 in 0..=MIXED.len() {
            for cut2 in cut1..=MIXED.len() {
                let chunks = [&MIXED[..cut1], &MIXED[cut1..cut2], &MIXED[cut2..]];
                let (events, _) = parse_chunks(&chunks);
                assert_eq!(events, want, "cuts at {cut1} and {cut2}");
            }
        }
    }

    #[test]
    fn one_byte_at_a_time_gives_the_same_events() {
        let chunks: Vec<&[u8]> = MIXED.chunks(1).collect();
        let (events, end) = parse_chunks(&chunks);
        assert_eq!(events, mixed_events());
        assert_eq!(end, Ok(()));
    }

    #[test]
    fn cr_lf_split_across_chunks_is_one_line_ending() {
        // Were the `\n` a second ending, it would be a blank line and dispatch early.
        let (events, _) = parse_chunks(&[b"data: a\r", b"", b"\ndata: b\r", b"\n\r", b"\n"]);
        assert_eq!(events, vec![ev("message", "a\nb")]);
    }

    #[test]
    fn cr_cr_is_a_line_and_a_blank_line() {
        let (events, _) = parse_chunks(&[b"data: a\r", b"\r"]);
        assert_eq!(events, vec![ev("message", "a")]);
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        let (events, _) = parse(b"event: e\xff\ndata: a\xc3\n\n");
        assert_eq!(events, vec![ev("e\u{fffd}", "a\u{fffd}")]);
    }

    #[test]
    fn eof_inside_an_event_is_incomplete() {
        for input in [
            &b"data: {\"partial"[..],
            b"event: message_stop\n",
            b"event: x\ndata: y\n",
            b"data: y\r",
            b"event: a\ndata: b\n\nevent: c",
        ] {
            let (_, end) = parse(input);
            assert_eq!(end, Err(Incomplete), "{:?}", String::from_utf8_lossy(input));
        }
        for input in [
            &b""[..],
            b"data: y\n\n",
            b": comment\n",
            b"id: 3\n",
            b"\n\n",
        ] {
            let (_, end) = parse(input);
            assert_eq!(end, Ok(()), "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn a_line_over_the_limit_is_an_error_and_the_parser_stops() {
        let mut p = SseParser::new();
        let mut long = b"data: ".to_vec();
        long.resize(MAX_LINE + 1, b'x');
        // Events before the long line still come out, in order, then the error.
        let mut first = b"data: ok\n\n".to_vec();
        first.extend_from_slice(&long[..10]);
        let items = p.push(&first);
        assert_eq!(items, vec![Ok(ev("message", "ok"))]);
        let items = p.push(&long[10..]);
        assert_eq!(items, vec![Err(SseError::LineTooLong)]);
        assert!(p.push(b"\n\ndata: later\n\n").is_empty());
        assert_eq!(p.finish(), Ok(()));

        // The same line arriving whole, with its ending, in one chunk.
        let mut p = SseParser::new();
        let mut whole = long.clone();
        whole.extend_from_slice(b"\n\n");
        assert_eq!(p.push(&whole), vec![Err(SseError::LineTooLong)]);

        // Completed from the buffer by a later chunk.
        let mut p = SseParser::new();
        assert!(p.push(&long[..MAX_LINE / 2]).is_empty());
        let mut end = long[MAX_LINE / 2..].to_vec();
        end.extend_from_slice(b"\n\n");
        assert_eq!(p.push(&end), vec![Err(SseError::LineTooLong)]);
    }

    #[test]
    fn a_line_at_the_limit_is_fine() {
        let mut line = b"data: ".to_vec();
        line.resize(MAX_LINE, b'x');
        let mut p = SseParser::new();
        assert!(p.push(&line[..100]).is_empty());
        assert!(p.push(&line[100..]).is_empty());
        let items = p.push(b"\n\n");
        assert_eq!(items.len(), 1);
        let Ok(event) = &items[0] else {
            panic!("{items:?}")
        };
        assert_eq!(event.data.len(), MAX_LINE - 6);
    }

    #[test]
    fn data_lines_over_the_event_limit_are_an_error() {
        let mut line = b"data: ".to_vec();
        line.resize(MAX_LINE / 2, b'x');
        line.push(b'\n');
        let mut p = SseParser::new();
        let mut got = Vec::new();
        for _ in 0..(2 * MAX_EVENT / MAX_LINE + 2) {
            got.extend(p.push(&line));
        }
        assert_eq!(got, vec![Err(SseError::EventTooLong)]);
    }

    #[test]
    fn the_messages_api_wire_form_round_trips() {
        let sent = [
            ev("message_start", "{\"type\":\"message_start\"}"),
            ev("content_block_delta", "{\"text\":\"two\\nlines\"}"),
            ev("multi", "a\nb\n\nc"),
            ev("message_stop", "{\"type\":\"message_stop\"}"),
        ];
        let wire: String = sent.iter().map(SseEvent::to_wire).collect();
        let (events, end) = parse(wire.as_bytes());
        assert_eq!(events, sent);
        assert_eq!(end, Ok(()));
    }
}
