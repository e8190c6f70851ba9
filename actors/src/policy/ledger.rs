//! What one attempt cost, and what each party hears of it: the governor's charge, the
//! breaker's note and the monitor's usage. Every place an attempt ends (a unary answer, a stream's
//! head or end, a hedge that lost, a caller gone, a probe) describes how it ended as an
//! [`Ending`] and takes its entry from [`account`]; none decides on its own.
//!
//! The rule, one line per question:
//! - **Charge**: what the upstream may have counted. Nothing, if the request never left; one
//!   request and no tokens for an error answer (the API bills no tokens for it); otherwise, per
//!   dimension, what the upstream reported (a body's `usage`, a stream's `message_start` and
//!   `message_delta`), and where it reported nothing, what was reserved: an answer cut short or
//!   given up may well have been counted whole, and charging less risks the 429 the governor
//!   exists to prevent (a charge too high only costs a moment's refill).
//! - **Breaker**: an attempt that was judged (answered, failed, cut) is recorded with its class;
//!   one that we gave up, or never started, is released: it says nothing about the model.
//! - **Monitor**: usage counts only for a complete answer.

use crate::policy::classify::Class;
use crate::wire::{Cost, SseEvent, Usage};

/// The usage an upstream reported of one attempt, and which dimensions it reported at all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// The counts (zero where not reported).
    pub usage: Usage,
    /// The input tokens were reported (a body's `usage`, a stream's `message_start`).
    pub input: bool,
    /// The output tokens were reported (a body's `usage`, a stream's `message_delta`).
    pub output: bool,
}

impl Observed {
    /// Usage as a Messages API body reports it (nothing, when absent or unreadable).
    pub fn from_body(body: &[u8]) -> Self {
        #[derive(serde::Deserialize)]
        struct WithUsage {
            usage: Option<Reported>,
        }
        match serde_json::from_slice::<WithUsage>(body) {
            Ok(WithUsage { usage: Some(u) }) => {
                let mut seen = Self::default();
                seen.take(&u);
                seen
            }
            _ => Self::default(),
        }
    }

    /// Add what one stream event reports: input in `message_start`, output in `message_delta`.
    /// The output count `message_start` carries is a placeholder (the API sends 1), not a
    /// report: a stream cut after it has generated more than that.
    pub fn note(&mut self, ev: &SseEvent) {
        let (pointer, start) = match ev.event.as_str() {
            "message_start" => ("/message/usage", true),
            "message_delta" => ("/usage", false),
            _ => return,
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&ev.data) else {
            return;
        };
        if let Some(u) = v
            .pointer(pointer)
            .and_then(|u| serde_json::from_value::<Reported>(u.clone()).ok())
        {
            self.take(&Reported {
                output_tokens: if start { None } else { u.output_tokens },
                ..u
            });
        }
    }

    fn take(&mut self, u: &Reported) {
        if let Some(x) = u.input_tokens {
            self.usage.input_tokens = x;
            self.input = true;
        }
        if let Some(x) = u.output_tokens {
            self.usage.output_tokens = x;
            self.output = true;
        }
        if let Some(x) = u.cache_creation_input_tokens {
            self.usage.cache_creation_input_tokens = x;
        }
        if let Some(x) = u.cache_read_input_tokens {
            self.usage.cache_read_input_tokens = x;
        }
    }
}

/// A `usage` object as reported: each count may be missing.
#[derive(serde::Deserialize)]
struct Reported {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
}

/// How one attempt ended, as the code that saw it end describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Admitted but never started (the walk let its permit and reservation go).
    Unused,
    /// Started, but nothing reached the upstream: it could not connect, or the request could
    /// not be built. The breaker hears the failure (`class`).
    Unsent {
        /// The classifier's class.
        class: Class,
    },
    /// The upstream answered with an error status (for a stream: before any content).
    Refused {
        /// The classifier's class.
        class: Class,
    },
    /// A complete answer: a unary success, or a stream that ran to its end.
    Complete {
        /// What the upstream reported.
        observed: Observed,
    },
    /// The request went out and no whole answer came: a timeout, a reset, a body cut short, a
    /// stream that broke, failed or went silent after content.
    Cut {
        /// The failure's class.
        class: Class,
        /// What the upstream reported before it was cut.
        observed: Observed,
    },
    /// We gave it up: a hedge that lost, a caller gone, a stream head nobody committed.
    Abandoned {
        /// What the upstream reported before.
        observed: Observed,
    },
    /// A probe's token count: free against the limits (no reservation), judged by `class`.
    Counted {
        /// The count's class.
        class: Class,
    },
}

/// What the breaker hears of an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Note {
    /// Record the outcome under the attempt's permit.
    Record(Class),
    /// Give the permit back: nothing was learnt about the model.
    Release,
}

/// One attempt's entry: what each party hears.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// What to settle the reservation at (`None`: there was no reservation).
    pub charge: Option<Cost>,
    /// What the breaker hears.
    pub breaker: Note,
    /// The usage the monitor counts (zero unless the answer was complete).
    pub usage: Usage,
}

/// The entry for an attempt that ended so, against what it had `reserved`.
pub fn account(ending: Ending, reserved: Cost) -> Entry {
    let reported_or_reserved = |o: Observed| {
        let cost = o.usage.cost();
        Cost {
            requests: 1,
            input_tokens: if o.input {
                cost.input_tokens
            } else {
                reserved.input_tokens
            },
            output_tokens: if o.output {
                cost.output_tokens
            } else {
                reserved.output_tokens
            },
        }
    };
    let none = Usage::default();
    match ending {
        Ending::Unused => Entry {
            charge: Some(Cost::default()),
            breaker: Note::Release,
            usage: none,
        },
        Ending::Unsent { class } => Entry {
            charge: Some(Cost::default()),
            breaker: Note::Record(class),
            usage: none,
        },
        Ending::Refused { class } => Entry {
            charge: Some(Cost::request(0, 0)),
            breaker: Note::Record(class),
            usage: none,
        },
        Ending::Complete { observed } => Entry {
            charge: Some(reported_or_reserved(observed)),
            breaker: Note::Record(Class::Success),
            usage: observed.usage,
        },
        Ending::Cut { class, observed } => Entry {
            charge: Some(reported_or_reserved(observed)),
            breaker: Note::Record(class),
            usage: none,
        },
        Ending::Abandoned { observed } => Entry {
            charge: Some(reported_or_reserved(observed)),
            breaker: Note::Release,
            usage: none,
        },
        Ending::Counted { class } => Entry {
            charge: None,
            breaker: Note::Record(class),
            usage: none,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A call reserved with 100 input tokens (estimated) and max_tokens 50.
    const RESERVED: Cost = Cost {
        requests: 1,
        input_tokens: 100,
        output_tokens: 50,
    };

    fn usage(input: u64, output: u64) -> Usage {
        Usage {
            input_tokens: input,
            output_tokens: output,
            ..Usage::default()
        }
    }

    fn seen(input: Option<u64>, output: Option<u64>) -> Observed {
        Observed {
            usage: usage(input.unwrap_or(0), output.unwrap_or(0)),
            input: input.is_some(),
            output: output.is_some(),
        }
    }

    fn charged(input: u64, output: u64) -> Option<Cost> {
        Some(Cost::request(input, output))
    }

    /// The table: each way an attempt ends, and what each party hears.
    #[test]
    fn every_ending_has_one_entry() {
        let nothing = Some(Cost::default());
        let none = Usage::default();
        let rows: Vec<(&str, Ending, Entry)> = vec![
            (
                "unary success: what the body reports",
                Ending::Complete {
                    observed: seen(Some(12), Some(7)),
                },
                Entry {
                    charge: charged(12, 7),
                    breaker: Note::Record(Class::Success),
                    usage: usage(12, 7),
                },
            ),
            (
                "permanent error: one request, no tokens",
                Ending::Refused {
                    class: Class::InvalidRequest,
                },
                Entry {
                    charge: charged(0, 0),
                    breaker: Note::Record(Class::InvalidRequest),
                    usage: none,
                },
            ),
            (
                "transient error (529): one request, no tokens",
                Ending::Refused {
                    class: Class::Overloaded,
                },
                Entry {
                    charge: charged(0, 0),
                    breaker: Note::Record(Class::Overloaded),
                    usage: none,
                },
            ),
            (
                "could not connect: nothing left, the failure is the model's",
                Ending::Unsent {
                    class: Class::Network,
                },
                Entry {
                    charge: nothing,
                    breaker: Note::Record(Class::Network),
                    usage: none,
                },
            ),
            (
                "timeout: may have been counted whole",
                Ending::Cut {
                    class: Class::Timeout,
                    observed: Observed::default(),
                },
                Entry {
                    charge: Some(RESERVED),
                    breaker: Note::Record(Class::Timeout),
                    usage: none,
                },
            ),
            (
                "cancelled hedge loser: released, kept as charged",
                Ending::Abandoned {
                    observed: Observed::default(),
                },
                Entry {
                    charge: Some(RESERVED),
                    breaker: Note::Release,
                    usage: none,
                },
            ),
            (
                "client gone mid-stream: the input it reported, the output reserved",
                Ending::Abandoned {
                    observed: seen(Some(12), None),
                },
                Entry {
                    charge: charged(12, 50),
                    breaker: Note::Release,
                    usage: none,
                },
            ),
            (
                "stream cut before content (an error event): like an error answer",
                Ending::Refused {
                    class: Class::Overloaded,
                },
                Entry {
                    charge: charged(0, 0),
                    breaker: Note::Record(Class::Overloaded),
                    usage: none,
                },
            ),
            (
                "stream cut after content: the input reported, the output reserved",
                Ending::Cut {
                    class: Class::Overloaded,
                    observed: seen(Some(12), None),
                },
                Entry {
                    charge: charged(12, 50),
                    breaker: Note::Record(Class::Overloaded),
                    usage: none,
                },
            ),
            (
                "stream ran to its end: what message_start and message_delta report",
                Ending::Complete {
                    observed: seen(Some(12), Some(3)),
                },
                Entry {
                    charge: charged(12, 3),
                    breaker: Note::Record(Class::Success),
                    usage: usage(12, 3),
                },
            ),
            (
                "stream without usage: counted, so charged as reserved",
                Ending::Complete {
                    observed: Observed::default(),
                },
                Entry {
                    charge: Some(RESERVED),
                    breaker: Note::Record(Class::Success),
                    usage: none,
                },
            ),
            (
                "admitted, never started: everything back",
                Ending::Unused,
                Entry {
                    charge: nothing,
                    breaker: Note::Release,
                    usage: none,
                },
            ),
            (
                "probe by token count: no reservation, judged by its class",
                Ending::Counted {
                    class: Class::Overloaded,
                },
                Entry {
                    charge: None,
                    breaker: Note::Record(Class::Overloaded),
                    usage: none,
                },
            ),
        ];
        for (case, ending, want) in rows {
            assert_eq!(account(ending, RESERVED), want, "{case}");
        }
    }

    #[test]
    fn cache_reads_are_not_charged_and_cache_writes_are() {
        let mut o = seen(Some(10), Some(5));
        o.usage.cache_read_input_tokens = 1000;
        o.usage.cache_creation_input_tokens = 30;
        let e = account(Ending::Complete { observed: o }, RESERVED);
        assert_eq!(e.charge, charged(40, 5));
        assert_eq!(
            e.usage.cache_read_input_tokens, 1000,
            "the monitor sees it all"
        );
    }

    #[test]
    fn usage_is_read_from_a_body_and_from_stream_events() {
        let o = Observed::from_body(br#"{"usage":{"input_tokens":9,"output_tokens":4}}"#);
        assert_eq!(o, seen(Some(9), Some(4)));
        assert_eq!(
            Observed::from_body(br#"{"content":[]}"#),
            Observed::default()
        );
        assert_eq!(Observed::from_body(b"not json"), Observed::default());
        let mut s = Observed::default();
        s.note(&SseEvent::new(
            "message_start",
            r#"{"message":{"usage":{"input_tokens":12,"output_tokens":1}}}"#,
        ));
        s.note(&SseEvent::new(
            "content_block_delta",
            r#"{"usage":{"output_tokens":999}}"#,
        ));
        assert_eq!(
            s,
            seen(Some(12), None),
            "message_start's output is no report"
        );
        s.note(&SseEvent::new(
            "message_delta",
            r#"{"usage":{"output_tokens":6}}"#,
        ));
        assert_eq!(s, seen(Some(12), Some(6)));
    }
}
