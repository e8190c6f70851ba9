//! The chain walk's rules, each with hand-set instants and no runtime.

use super::*;
use crate::policy::backoff::{Backoff, Jitter};
use crate::policy::bucket::Dimension;
use crate::policy::classify::Class;
use crate::wire::SseEvent;
use serde_json::Value;

const MS: Duration = Duration::from_millis(1);
const S: Duration = Duration::from_secs(1);

fn hop(model: usize, name: &str) -> HopFacts {
    HopFacts {
        model,
        name: name.into(),
        upstream: 0,
        input_estimate: 10,
        max_tokens: 100,
        attempt_timeout: None,
        hedge_after: None,
    }
}

fn facts(n: usize) -> CallFacts {
    CallFacts {
        hops: (0..n).map(|i| hop(i, &format!("m{i}"))).collect(),
        stream: false,
        timeout: None,
        conversation: false,
        replay: false,
        seed: 7,
    }
}

fn policy() -> RetryPolicy {
    RetryPolicy {
        backoff: Backoff {
            base: 100 * MS,
            cap: S,
            max_attempts: 3,
            jitter: Jitter::None,
        },
        deadline: 10 * S,
        attempt_timeout: 2 * S,
        first_token_timeout: S,
        min_attempt: 200 * MS,
        ..RetryPolicy::default()
    }
}

fn walk(facts: CallFacts, policy: RetryPolicy, t0: Instant) -> ChainWalk {
    ChainWalk::new(facts, Arc::new(policy), t0)
}

fn drain(w: &mut ChainWalk) -> Vec<Step> {
    std::iter::from_fn(|| w.poll()).collect()
}

fn permit(n: u64) -> Permit {
    Permit::for_test(n)
}

fn ticket() -> Ticket {
    Ticket::for_test(0, Cost::request(10, 100))
}

fn grant(at: Instant) -> Decision {
    Decision::Grant {
        ticket: ticket(),
        at,
    }
}

fn report(verdict: Verdict, status: Option<u16>) -> AttemptReport {
    AttemptReport {
        verdict,
        status,
        latency: 50 * MS,
        request_id: Some("req_1".into()),
        refusal: None,
        unsent: None,
    }
}

fn ok() -> AttemptReport {
    report(Verdict::Success, Some(200))
}

fn overloaded() -> AttemptReport {
    report(
        Verdict::Retryable {
            class: Class::Overloaded,
            hint: None,
        },
        Some(529),
    )
}

fn permanent(class: Class, scope: Scope, status: u16) -> AttemptReport {
    report(Verdict::Permanent { class, scope }, Some(status))
}

/// Drive `hop` from its admission to a sent attempt at `now`; returns the Send.
fn admit_and_send(w: &mut ChainWalk, hop: usize, now: Instant) -> Send {
    w.handle(
        Event::Admission {
            hop,
            admission: Admission::Permitted(permit(hop as u64)),
        },
        now,
    );
    let steps = drain(w);
    assert!(
        matches!(steps.as_slice(), [Step::Reserve { hop: h, .. }] if *h == hop),
        "{steps:?}"
    );
    w.handle(
        Event::Budget {
            hop,
            decision: grant(now),
        },
        now,
    );
    match drain(w).as_slice() {
        [Step::Send(s)] => s.clone(),
        other => panic!("expected a send, got {other:?}"),
    }
}

fn finish(steps: &[Step]) -> &Finish {
    match steps.last() {
        Some(Step::Finish(f)) => f,
        other => panic!("expected the end, got {other:?} in {steps:?}"),
    }
}

#[test]
fn the_first_hop_serves_in_one_attempt() {
    let t0 = Instant::now();
    let mut w = walk(facts(2), policy(), t0);
    assert_eq!(
        drain(&mut w),
        vec![Step::Acquire {
            hop: 0,
            retry: false
        }]
    );
    let send = admit_and_send(&mut w, 0, t0);
    assert_eq!(send.attempt, 0);
    assert_eq!(send.retry_count, 0);
    assert_eq!(send.timeout, 2 * S, "the attempt timeout");
    assert!(!send.retry && !send.hedge);
    w.handle(
        Event::Finished {
            attempt: 0,
            report: ok(),
        },
        t0 + 50 * MS,
    );
    let steps = drain(&mut w);
    let f = finish(&steps);
    assert_eq!(f.ending, Ending::Served { attempt: 0, hop: 0 });
    assert_eq!(f.attempts, 1);
    assert!(matches!(
        f.trail.as_slice(),
        [AttemptRecord {
            outcome: Outcome::Attempted {
                status: Some(200),
                ..
            },
            ..
        }]
    ));
    assert!(w.is_done());
    assert_eq!(w.poll(), None);
}

#[test]
fn a_capacity_error_moves_to_the_next_hop_at_once() {
    let t0 = Instant::now();
    let mut w = walk(facts(2), policy(), t0);
    drain(&mut w);
    admit_and_send(&mut w, 0, t0);
    w.handle(
        Event::Finished {
            attempt: 0,
            report: overloaded(),
        },
        t0 + 10 * MS,
    );
    // No sleep: the fallback is ready now.
    assert_eq!(
        drain(&mut w),
        vec![Step::Acquire {
            hop: 1,
            retry: false
        }]
    );
    let send = admit_and_send(&mut w, 1, t0 + 10 * MS);
    assert_eq!(send.retry_count, 1, "the call's second attempt");
    w.handle(
        Event::Finished {
            attempt: send.attempt,
            report: ok(),
        },
        t0 + 60 * MS,
    );
    let steps = drain(&mut w);
    assert_eq!(finish(&steps).ending, Ending::Served { attempt: 1, hop: 1 });
    assert_eq!(finish(&steps).trail.len(), 2);
}

#[test]
fn a_transient_failure_retries_the_only_hop_after_backoff_as_a_retry() {
    let t0 = Instant::now();
    let mut w = walk(facts(1), policy(), t0);
    drain(&mut w);
    admit_and_send(&mut w, 0, t0);
    w.handle(
        Event::Finished {
            attempt: 0,
            report: overloaded(),
        },
        t0,
    );
    assert_eq!(drain(&mut w), vec![], "sleeps: nothing is ready");
    assert_eq!(
        w.poll_timeout(),
        Some(t0 + 100 * MS),
        "backoff base, no jitter"
    );
    assert_eq!(w.retry_delay(0), Some(100 * MS));
    w.handle_timeout(t0 + 100 * MS);
    assert_eq!(
        drain(&mut w),
        vec![Step::Acquire {
            hop: 0,
            retry: true
        }]
    );
    let send = admit_and_send(&mut w, 0, t0 + 100 * MS);
    assert!(send.retry);
}

#[test]
fn the_servers_retry_hint_wins_and_a_doomed_wait_ends_the_call_at_once() {
    let t0 = Instant::now();
    let mut p = policy();
    p.deadline = 3 * S;
    let mut w = walk(facts(1), p, t0);
    drain(&mut w);
    admit_and_send(&mut w, 0, t0);
    let mut r = overloaded();
    r.verdict = Verdict::Retryable {
        class: Class::RateLimited,
        hint: Some(10 * S),
    };
    w.handle(
        Event::Finished {
            attempt: 0,
            report: r,
        },
        t0 + 100 * MS,
    );
    let steps = drain(&mut w);
    match &finish(&steps).ending {
        Ending::Unavailable {
            retry_after,
            deadline_exceeded,
            ..
        } => {
            assert_eq!(*retry_after, Some(10 * S), "the server's word");
            assert!(!deadline_exceeded, "refused early, not timed out");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_open_breaker_moves_on_and_a_full_half_open_ends_the_hop() {
    let t0 = Instant::now();
    let mut w = walk(facts(3), policy(), t0);
    drain(&mut w);
    w.handle(
        Event::Admission {
            hop: 0,
            admission: Admission::Open {
                until: Some(t0 + 5 * S),
            },
        },
        t0,
    );
    assert_eq!(
        drain(&mut w),
        vec![Step::Acquire {
            hop: 1,
            retry: false
        }]
    );
    w.handle(
        Event::Admission {
            hop: 1,
            admission: Admission::Open { until: None },
        },
        t0,
    );
    assert_eq!(
        drain(&mut w),
        vec![Step::Acquire {
            hop: 2,
            retry: false
        }]
    );
    w.handle(
        Event::Admission {
            hop: 2,
            admission: Admission::RetryBudgetSpent,
        },
        t0,
    );
    // Only the primary is left, open for 5 s, which fits the 10 s deadline: sleep until then.
    assert_eq!(drain(&mut w), vec![]);
    assert_eq!(w.poll_timeout(), Some(t0 + 5 * S));
    w.handle_timeout(t0 + 5 * S);
    assert_eq!(
        drain(&mut w),
        vec![Step::Acquire {
            hop: 0,
            retry: false
        }]
    );
    w.handle(
        Event::Admission {
            hop: 0,
            admission: Admission::Open {
                until: Some(t0 + 20 * S),
            },
        },
        t0 + 5 * S,
    );
    let steps = drain(&mut w);
    let f = finish(&steps);
    let outcomes: Vec<&Outcome> = f.trail.iter().map(|r| &r.outcome).collect();
    assert_eq!(
        outcomes,
        vec![
            &Outcome::BreakerOpen,
            &Outcome::BreakerOpen,
            &Outcome::RetryBudgetSpent,
            &Outcome::BreakerOpen
        ]
    );
    match &f.ending {
        Ending::Unavailable {
            retry_after,
            deadline_exceeded,
            ..
        } => {
            assert_eq!(*retry_after, Some(15 * S));
            assert!(*deadline_exceeded, "the next chance is past the deadline");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn budget_waits_only_when_no_other_hop_is_ready() {
    let t0 = Instant::now();
    let mut w = walk(facts(2), policy(), t0);
    drain(&mut w);
    w.handle(
        Event::Admission {
            hop: 0,
            admission: Admission::Permitted(permit(0)),
        },
        t0,
    );
    assert_eq!(
        drain(&mut w),
        vec![Step::Reserve {
            hop: 0,
            cost: Cost::request(10, 100),
            max_wait: Duration::ZERO
        }],
        "another hop is ready: now or never"
    );
    w.handle(
        Event::Budget {
            hop: 0,
            decision: Decision::Reject {
                reason: RejectReason::NoBudget {
                    dimension: Dimension::Requests,
                },
                earliest: Some(t0 + 2 * S),
            },
        },
        t0,
    );
    let steps = drain(&mut w);
    assert_eq!(
        steps[0],
        Step::Release {
            hop: 0,
            permit: permit(0),
            ticket: None
        }
    );
    assert_eq!(
        steps[1],
        Step::Acquire {
            hop: 1,
            retry: false
        }
    );
    w.handle(
        Event::Admission {
            hop: 1,
            admission: Admission::Permitted(permit(1)),
        },
        t0,
    );
    // The primary waits for budget: the fallback may wait in line, up to the deadline less
    // one attempt.
    assert_eq!(
        drain(&mut w),
        vec![Step::Reserve {
            hop: 1,
            cost: Cost::request(10, 100),
            max_wait: 10 * S - 200 * MS
        }]
    );
}

#[test]
fn a_grant_for_later_is_waited_for() {
    let t0 = Instant::now();
    let mut w = walk(facts(1), policy(), t0);
    drain(&mut w);
    w.handle(
        Event::Admission {
            hop: 0,
            admission: Admission::Permitted(permit(0)),
        },
        t0,
    );
    drain(&mut w);
    w.handle(
        Event::Budget {
            hop: 0,
            decision: grant(t0 + 300 * MS),
        },
        t0,
    );
    assert_eq!(drain(&mut w), vec![]);
    assert_eq!(w.poll_timeout(), Some(t0 + 300 * MS));
    w.handle_timeout(t0 + 300 * MS);
    assert!(matches!(drain(&mut w).as_slice(), [Step::Send(_)]));
}

#[test]
fn a_call_too_large_for_every_limit_is_invalid_not_unavailable() {
    let t0 = Instant::now();
    let mut w = walk(facts(2), policy(), t0);
    for hop in 0..2 {
        assert_eq!(
            drain(&mut w).last(),
            Some(&Step::Acquire { hop, retry: false })
        );
        w.handle(
            Event::Admission {
                hop,
                admission: Admission::Permitted(permit(0)),
            },
            t0,
        );
        drain(&mut w);
        w.handle(
            Event::Budget {
                hop,
                decision: Decision::Reject {
                    reason: RejectReason::TooLarge {
                        dimension: Dimension::OutputTokens,
                    },
                    earliest: None,
                },
            },
            t0,
        );
    }
    let steps = drain(&mut w);
    match &finish(&steps).ending {
        Ending::Invalid(why) => {
            assert!(why.contains("m0: it needs more output_tokens"), "{why}");
            assert!(why.contains("lower max_tokens"), "{why}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn no_attempt_starts_without_min_attempt_left_and_timeouts_fit_the_deadline() {
    let t0 = Instant::now();
    let mut f = facts(1);
    f.timeout = Some(S);
    let mut w = walk(f, policy(), t0);
    drain(&mut w);
    let send = admit_and_send(&mut w, 0, t0 + 100 * MS);
    assert_eq!(
        send.timeout,
        900 * MS,
        "cut at the deadline, not the attempt timeout"
    );
    // The failure leaves 100 ms: backoff (100 ms) + min_attempt (200 ms) cannot fit.
    w.handle(
        Event::Finished {
            attempt: 0,
            report: overloaded(),
        },
        t0 + 900 * MS,
    );
    let steps = drain(&mut w);
    match &finish(&steps).ending {
        Ending::Unavailable {
            deadline_exceeded, ..
        } => assert!(deadline_exceeded),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_stream_attempt_is_cut_at_the_first_token_timeout() {
    let t0 = Instant::now();
    let mut f = facts(1);
    f.stream = true;
    let mut w = walk(f, policy(), t0);
    drain(&mut w);
    assert_eq!(admit_and_send(&mut w, 0, t0).timeout, S);
    // A hop that knows its own timeout wins.
    let mut f = facts(1);
    f.hops[0].attempt_timeout = Some(300 * MS);
    let mut w = walk(f, policy(), t0);
    drain(&mut w);
    assert_eq!(admit_and_send(&mut w, 0, t0).timeout, 300 * MS);
}

#[test]
fn a_request_scoped_rejection_ends_the_call_unchanged() {
    let t0 = Instant::now();
    let mut w = walk(facts(2), policy(), t0);
    drain(&mut w);
    admit_and_send(&mut w, 0, t0);
    w.handle(
        Event::Finished {
            attempt: 0,
            report: permanent(Class::InvalidRequest, Scope::Request, 400),
        },
        t0,
    );
    let steps = drain(&mut w);
    assert_eq!(
        finish(&steps).ending,
        Ending::Rejected { attempt: 0, hop: 0 },
        "never tried elsewhere"
    );
}

#[test]
fn model_scoped_rejections_end_their_hop_and_all_of_them_pass_the_first_through() {
    let t0 = Instant::now();
    let mut w = walk(facts(2), policy(), t0);
    drain(&mut w);
    admit_and_send(&mut w, 0, t0);
    w.handle(
        Event::Finished {
            attempt: 0,
            report: permanent(Class::NotFound, Scope::Model, 404),
        },
        t0,
    );
    assert_eq!(
        drain(&mut w),
        vec![Step::Acquire {
            hop: 1,
            retry: false
        }]
    );
    admit_and_send(&mut w, 1, t0);
    w.handle(
        Event::Finished {
            attempt: 1,
            report: permanent(Class::Permission, Scope::Model, 403),
        },
        t0,
    );
    let steps = drain(&mut w);
    assert_eq!(
        finish(&steps).ending,
        Ending::Rejected { attempt: 0, hop: 0 }
    );
}

#[test]
fn a_transport_that_cannot_send_is_invalid_when_no_hop_can() {
    let t0 = Instant::now();
    let mut w = walk(facts(1), policy(), t0);
    drain(&mut w);
    admit_and_send(&mut w, 0, t0);
    let mut r = report(
        Verdict::Permanent {
            class: Class::InvalidRequest,
            scope: Scope::Model,
        },
        None,
    );
    r.unsent = Some("streaming is not supported".into());
    w.handle(
        Event::Finished {
            attempt: 0,
            report: r,
        },
        t0,
    );
    let steps = drain(&mut w);
    assert_eq!(
        finish(&steps).ending,
        Ending::Invalid("m0: streaming is not supported".into())
    );
}

#[test]
fn a_bad_key_lets_the_hop_go_again_and_a_spend_cap_ends_its_whole_upstream() {
    let t0 = Instant::now();
    let mut f = facts(3);
    f.hops[2].upstream = 1;
    let mut w = walk(f, policy(), t0);
    drain(&mut w);
    admit_and_send(&mut w, 0, t0);
    w.handle(
        Event::Finished {
            attempt: 0,
            report: permanent(Class::Authentication, Scope::Key, 401),
        },
        t0,
    );
    assert_eq!(
        drain(&mut w),
        vec![Step::Acquire {
            hop: 0,
            retry: true
        }],
        "the same model, with another key"
    );
    admit_and_send(&mut w, 0, t0);
    w.handle(
        Event::Finished {
            attempt: 1,
            report: permanent(Class::Billing, Scope::Organization, 402),
        },
        t0,
    );
    // Hop 1 shares the upstream: skipped. Hop 2 is on another one.
    assert_eq!(
        drain(&mut w),
        vec![Step::Acquire {
            hop: 2,
            retry: false
        }]
    );
}

#[test]
fn a_refusal_falls_back_with_its_credit_and_answers_when_nothing_else_serves() {
    let t0 = Instant::now();
    let mut p = policy();
    p.refusal_fallback = true;
    let mut w = walk(facts(2), p, t0);
    drain(&mut w);
    admit_and_send(&mut w, 0, t0);
    let credit = Credit {
        token: Value::from("tok_123"),
        prefill: vec![serde_json::json!({"type": "text", "text": "partial"})],
    };
    let mut r = ok();
    r.refusal = Some(Refusal {
        credit: Some(credit.clone()),
    });
    w.handle(
        Event::Finished {
            attempt: 0,
            report: r,
        },
        t0,
    );
    assert_eq!(
        drain(&mut w),
        vec![Step::Acquire {
            hop: 1,
            retry: false
        }]
    );
    let send = admit_and_send(&mut w, 1, t0);
    assert_eq!(send.credit, Some(credit), "the next hop gets the credit");
    // The fallback does not serve either: the refusal is the honest answer.
    w.handle(
        Event::Finished {
            attempt: 1,
            report: permanent(Class::NotFound, Scope::Model, 404),
        },
        t0,
    );
    let steps = drain(&mut w);
    let f = finish(&steps);
    assert_eq!(f.ending, Ending::Refusal { attempt: 0, hop: 0 });
    assert!(f
        .trail
        .iter()
        .any(|r| r.outcome == Outcome::Refused && r.model == "m0"));
}

#[test]
fn without_refusal_fallback_a_refusal_is_simply_the_answer() {
    let t0 = Instant::now();
    let mut w = walk(facts(2), policy(), t0);
    drain(&mut w);
    admit_and_send(&mut w, 0, t0);
    let mut r = ok();
    r.refusal = Some(Refusal { credit: None });
    w.handle(
        Event::Finished {
            attempt: 0,
            report: r,
        },
        t0,
    );
    let steps = drain(&mut w);
    assert_eq!(finish(&steps).ending, Ending::Served { attempt: 0, hop: 0 });
}

#[test]
fn each_hop_reserves_its_own_request() {
    let t0 = Instant::now();
    let mut f = facts(2);
    f.hops[1].max_tokens = 2048; // a patched hop
    f.hops[1].input_estimate = 40;
    let mut w = walk(f, policy(), t0);
    drain(&mut w);
    w.handle(
        Event::Admission {
            hop: 0,
            admission: Admission::Open { until: None },
        },
        t0,
    );
    drain(&mut w);
    w.handle(
        Event::Admission {
            hop: 1,
            admission: Admission::Permitted(permit(1)),
        },
        t0,
    );
    match drain(&mut w).as_slice() {
        [Step::Reserve { cost, .. }] => assert_eq!(*cost, Cost::request(40, 2048)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn counted_tokens_replace_the_estimate() {
    let t0 = Instant::now();
    let mut p = policy();
    p.estimate = Estimate::CountTokens;
    let mut w = walk(facts(1), p, t0);
    drain(&mut w);
    w.handle(
        Event::Admission {
            hop: 0,
            admission: Admission::Permitted(permit(0)),
        },
        t0,
    );
    assert_eq!(drain(&mut w), vec![Step::CountTokens { hop: 0 }]);
    w.handle(
        Event::Counted {
            hop: 0,
            tokens: Some(77),
        },
        t0,
    );
    match drain(&mut w).as_slice() {
        [Step::Reserve { cost, .. }] => assert_eq!(cost.input_tokens, 77),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_pinned_conversation_starts_at_its_hop_and_pins_who_served() {
    let t0 = Instant::now();
    let mut f = facts(3);
    f.conversation = true;
    let mut w = walk(f.clone(), policy(), t0);
    assert_eq!(drain(&mut w), vec![Step::AskPin]);
    assert_eq!(w.poll_timeout(), None);
    w.handle(Event::Pinned(Some(1)), t0);
    assert_eq!(
        drain(&mut w),
        vec![Step::Acquire {
            hop: 1,
            retry: false
        }]
    );
    admit_and_send(&mut w, 1, t0);
    w.handle(
        Event::Finished {
            attempt: 0,
            report: ok(),
        },
        t0,
    );
    let steps = drain(&mut w);
    assert_eq!(steps[0], Step::Pin { hop: 1 });

    // Pinned, but the pinned hop cannot go now: an answer beats a pin.
    let mut w = walk(f.clone(), policy(), t0);
    drain(&mut w);
    w.handle(Event::Pinned(Some(1)), t0);
    drain(&mut w);
    w.handle(
        Event::Admission {
            hop: 1,
            admission: Admission::Open { until: None },
        },
        t0,
    );
    assert_eq!(
        drain(&mut w),
        vec![Step::Acquire {
            hop: 2,
            retry: false
        }]
    );
    w.handle(
        Event::Admission {
            hop: 2,
            admission: Admission::Open { until: None },
        },
        t0,
    );
    assert_eq!(
        drain(&mut w),
        vec![Step::Acquire {
            hop: 0,
            retry: false
        }],
        "the deferred primary, last"
    );
    admit_and_send(&mut w, 0, t0);
    w.handle(
        Event::Finished {
            attempt: 0,
            report: ok(),
        },
        t0,
    );
    assert_eq!(drain(&mut w)[0], Step::Pin { hop: 0 }, "unpinned");

    // Not pinned and served by the primary: nothing to pin.
    let mut w = walk(f, policy(), t0);
    drain(&mut w);
    w.handle(Event::Pinned(None), t0);
    assert_eq!(
        drain(&mut w),
        vec![Step::Acquire {
            hop: 0,
            retry: false
        }]
    );
    admit_and_send(&mut w, 0, t0);
    w.handle(
        Event::Finished {
            attempt: 0,
            report: ok(),
        },
        t0,
    );
    assert!(matches!(drain(&mut w).as_slice(), [Step::Finish(_)]));
}

#[test]
fn the_call_stops_at_max_attempts() {
    let t0 = Instant::now();
    let mut p = policy();
    p.max_attempts = 2;
    let mut w = walk(facts(3), p, t0);
    drain(&mut w);
    for (attempt, hop) in [(0, 0), (1, 1)] {
        admit_and_send(&mut w, hop, t0);
        w.handle(
            Event::Finished {
                attempt,
                report: overloaded(),
            },
            t0,
        );
        let _ = drain(&mut w);
    }
    assert!(
        w.is_done(),
        "a third hop was ready, but the budget of attempts is spent"
    );
}

#[test]
fn a_lost_actor_ends_the_call_as_internal() {
    let t0 = Instant::now();
    let mut w = walk(facts(1), policy(), t0);
    drain(&mut w);
    w.handle(Event::Lost("the breaker did not come back".into()), t0);
    let steps = drain(&mut w);
    assert_eq!(
        finish(&steps).ending,
        Ending::Internal("the breaker did not come back".into())
    );
}

#[test]
fn degradation_is_filtered_for_streams_and_replays() {
    let t0 = Instant::now();
    let mut p = policy();
    p.degrade = vec![Degrade::Queue, Degrade::Static("busy".into())];
    let all_open = |mut w: ChainWalk| {
        drain(&mut w);
        w.handle(
            Event::Admission {
                hop: 0,
                admission: Admission::Open { until: None },
            },
            t0,
        );
        match drain(&mut w).last() {
            Some(Step::Finish(Finish {
                ending: Ending::Unavailable { degrade, .. },
                ..
            })) => degrade.clone(),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(all_open(walk(facts(1), p.clone(), t0)).len(), 2);
    let mut f = facts(1);
    f.stream = true;
    assert_eq!(
        all_open(walk(f, p.clone(), t0)),
        vec![Degrade::Static("busy".into())],
        "a stream is never queued"
    );
    let mut f = facts(1);
    f.replay = true;
    assert!(
        all_open(walk(f, p, t0)).is_empty(),
        "a replay never degrades"
    );
}

// ---- several attempts in flight ----

fn hedged(n: usize, after: Duration) -> CallFacts {
    let mut f = facts(n);
    for h in &mut f.hops {
        h.hedge_after = Some(after);
    }
    f
}

#[test]
fn a_slow_attempt_is_hedged_on_the_next_hop_and_the_first_answer_wins() {
    let t0 = Instant::now();
    let mut w = walk(hedged(2, 300 * MS), policy(), t0);
    drain(&mut w);
    admit_and_send(&mut w, 0, t0);
    assert_eq!(w.poll_timeout(), Some(t0 + 300 * MS), "the hedge delay");
    w.handle_timeout(t0 + 299 * MS);
    assert_eq!(drain(&mut w), vec![]);
    w.handle_timeout(t0 + 300 * MS);
    assert_eq!(
        drain(&mut w),
        vec![Step::SpendRetry { hop: 0 }],
        "a hedge is paid from the retry budget of the model it hedges"
    );
    w.handle(
        Event::RetryBudget {
            hop: 0,
            granted: true,
        },
        t0 + 300 * MS,
    );
    assert_eq!(
        drain(&mut w),
        vec![Step::Acquire {
            hop: 1,
            retry: false
        }],
        "the call's first attempt on the fallback"
    );
    w.handle(
        Event::Admission {
            hop: 1,
            admission: Admission::Permitted(permit(1)),
        },
        t0 + 300 * MS,
    );
    assert_eq!(
        drain(&mut w),
        vec![Step::Reserve {
            hop: 1,
            cost: Cost::request(10, 100),
            max_wait: Duration::ZERO
        }],
        "a hedge never waits for budget"
    );
    w.handle(
        Event::Budget {
            hop: 1,
            decision: grant(t0 + 300 * MS),
        },
        t0 + 300 * MS,
    );
    let send = match drain(&mut w).as_slice() {
        [Step::Send(s)] => s.clone(),
        other => panic!("{other:?}"),
    };
    assert!(send.hedge);
    assert_eq!(w.in_flight(), 2);
    // The hedge answers first: it wins, the primary is cancelled.
    w.handle(
        Event::Finished {
            attempt: send.attempt,
            report: ok(),
        },
        t0 + 350 * MS,
    );
    let steps = drain(&mut w);
    assert_eq!(steps[0], Step::Cancel { attempt: 0 });
    assert_eq!(
        finish(&steps).ending,
        Ending::Served {
            attempt: send.attempt,
            hop: 1
        }
    );
    assert_eq!(finish(&steps).attempts, 2);
    // The loser's late report changes nothing.
    w.handle(
        Event::Finished {
            attempt: 0,
            report: ok(),
        },
        t0 + 400 * MS,
    );
    assert_eq!(w.poll(), None);
}

#[test]
fn a_failed_attempt_while_its_hedge_flies_waits_for_the_hedge() {
    let t0 = Instant::now();
    let mut w = walk(hedged(2, 100 * MS), policy(), t0);
    drain(&mut w);
    admit_and_send(&mut w, 0, t0);
    w.handle_timeout(t0 + 100 * MS);
    drain(&mut w);
    w.handle(
        Event::RetryBudget {
            hop: 0,
            granted: true,
        },
        t0 + 100 * MS,
    );
    drain(&mut w);
    let hedge = admit_and_send(&mut w, 1, t0 + 100 * MS);
    w.handle(
        Event::Finished {
            attempt: 0,
            report: overloaded(),
        },
        t0 + 150 * MS,
    );
    assert_eq!(drain(&mut w), vec![], "the hedge is still in flight");
    w.handle(
        Event::Finished {
            attempt: hedge.attempt,
            report: ok(),
        },
        t0 + 200 * MS,
    );
    let steps = drain(&mut w);
    assert_eq!(
        finish(&steps).ending,
        Ending::Served {
            attempt: hedge.attempt,
            hop: 1
        }
    );
}

#[test]
fn no_retry_budget_means_no_hedge() {
    let t0 = Instant::now();
    let mut w = walk(hedged(2, 100 * MS), policy(), t0);
    drain(&mut w);
    admit_and_send(&mut w, 0, t0);
    w.handle_timeout(t0 + 100 * MS);
    assert_eq!(drain(&mut w), vec![Step::SpendRetry { hop: 0 }]);
    w.handle(
        Event::RetryBudget {
            hop: 0,
            granted: false,
        },
        t0 + 100 * MS,
    );
    assert_eq!(drain(&mut w), vec![], "the attempt in flight goes on alone");
    assert_eq!(w.in_flight(), 1);
    assert_eq!(w.poll_timeout(), None);
}

#[test]
fn a_budget_refusal_stops_the_hedge_and_the_primary_goes_on() {
    let t0 = Instant::now();
    let mut w = walk(hedged(2, 100 * MS), policy(), t0);
    drain(&mut w);
    admit_and_send(&mut w, 0, t0);
    w.handle_timeout(t0 + 100 * MS);
    drain(&mut w);
    w.handle(
        Event::RetryBudget {
            hop: 0,
            granted: true,
        },
        t0 + 100 * MS,
    );
    drain(&mut w);
    w.handle(
        Event::Admission {
            hop: 1,
            admission: Admission::Permitted(permit(1)),
        },
        t0 + 100 * MS,
    );
    drain(&mut w);
    w.handle(
        Event::Budget {
            hop: 1,
            decision: Decision::Reject {
                reason: RejectReason::NoBudget {
                    dimension: Dimension::Requests,
                },
                earliest: Some(t0 + 5 * S),
            },
        },
        t0 + 100 * MS,
    );
    let steps = drain(&mut w);
    assert!(
        matches!(steps.as_slice(), [Step::Release { hop: 1, .. }]),
        "{steps:?}"
    );
    assert_eq!(w.in_flight(), 1);
    assert_eq!(
        w.poll_timeout(),
        None,
        "one hedge per call by default: no more"
    );
    w.handle(
        Event::Finished {
            attempt: 0,
            report: ok(),
        },
        t0 + 2 * S,
    );
    let steps = drain(&mut w);
    assert_eq!(finish(&steps).ending, Ending::Served { attempt: 0, hop: 0 });
}

#[test]
fn a_chain_of_one_hedges_the_same_model_and_no_hedge_is_started_without_time() {
    let t0 = Instant::now();
    let mut w = walk(hedged(1, 100 * MS), policy(), t0);
    drain(&mut w);
    admit_and_send(&mut w, 0, t0);
    w.handle_timeout(t0 + 100 * MS);
    assert_eq!(drain(&mut w), vec![Step::SpendRetry { hop: 0 }]);
    w.handle(
        Event::RetryBudget {
            hop: 0,
            granted: true,
        },
        t0 + 100 * MS,
    );
    assert_eq!(
        drain(&mut w),
        vec![Step::Acquire {
            hop: 0,
            retry: true
        }],
        "the same model again: a re-attempt on it"
    );

    // Less than min_attempt left: no hedge.
    let mut f = hedged(1, 100 * MS);
    f.timeout = Some(400 * MS);
    let mut w = walk(f, policy(), t0);
    drain(&mut w);
    admit_and_send(&mut w, 0, t0);
    w.handle_timeout(t0 + 250 * MS);
    assert_eq!(drain(&mut w), vec![]);
}

#[test]
fn hedging_off_keeps_one_attempt_in_flight() {
    let t0 = Instant::now();
    let mut p = policy();
    p.max_hedges = 0;
    let mut w = walk(hedged(2, 100 * MS), p, t0);
    drain(&mut w);
    admit_and_send(&mut w, 0, t0);
    assert_eq!(w.poll_timeout(), None);
    w.handle_timeout(t0 + 10 * S);
    assert_eq!(drain(&mut w), vec![]);
}

#[test]
fn the_refusal_detectors_read_messages_and_stream_events() {
    let msg = serde_json::json!({
        "stop_reason": "refusal",
        "content": [{"type": "text", "text": "partial"}],
        "stop_details": {"fallback_credit_token": "tok", "fallback_has_prefill_claim": true}
    });
    let r = refusal_in_message(&msg).unwrap();
    let credit = r.credit.unwrap();
    assert_eq!(credit.token, Value::from("tok"));
    assert_eq!(credit.prefill.len(), 1);
    assert!(refusal_in_message(&serde_json::json!({"stop_reason": "end_turn"})).is_none());
    let ev = SseEvent::new(
        "message_delta",
        r#"{"delta":{"stop_reason":"refusal","stop_details":{"fallback_credit_token":null}}}"#,
    );
    assert_eq!(refusal_in_event(&ev), Some(Refusal { credit: None }));
    assert_eq!(
        stream_error_status(r#"{"error":{"type":"overloaded_error"}}"#),
        529
    );
    assert_eq!(
        stream_error_class(r#"{"error":{"type":"weird"}}"#),
        Class::ServerError
    );
}
