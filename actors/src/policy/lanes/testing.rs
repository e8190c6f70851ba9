//! Builders the lanes' unit tests share (each file's tests use them).

use std::time::{Duration, Instant};

use super::*;

pub(super) fn one_upstream(rpm: u64, keys: usize) -> Lanes {
    Lanes::new(
        GovernorArgs {
            upstreams: vec![UpstreamBudget {
                name: "u".into(),
                class_limits: vec![Limits {
                    requests_per_minute: Some(rpm),
                    input_tokens_per_minute: None,
                    output_tokens_per_minute: None,
                }],
                key_labels: (0..keys).map(|k| format!("key#{k}")).collect(),
                key_orgs: vec![0; keys],
                org_names: vec!["default".into()],
                class_names: vec!["default".into()],
            }],
            bulkheads: vec![(
                "batch".into(),
                Bulkhead {
                    max_concurrent: Some(1),
                    budget_share: None,
                },
            )],
            interactive_reserve: 0.5,
            transit_allowance: Duration::ZERO,
            shared: false,
        },
        7,
    )
}

pub(super) fn shared_upstream(rpm: u64) -> Lanes {
    let mut l = one_upstream(rpm, 1);
    l.set_mode(FleetMode::Shared, Instant::now());
    l
}

pub(super) fn req(lane: Lane, max_wait: Duration) -> ReserveRequest {
    ReserveRequest {
        upstream: 0,
        class: 0,
        cost: Cost::request(0, 0),
        lane,
        feature: None,
        max_wait,
    }
}

pub(super) const S: Duration = Duration::from_secs(1);

pub(super) fn limits(rpm: Option<u64>, itpm: Option<u64>) -> Limits {
    Limits {
        requests_per_minute: rpm,
        input_tokens_per_minute: itpm,
        output_tokens_per_minute: None,
    }
}

pub(super) fn upstream(
    name: &str,
    class_limits: Vec<Limits>,
    key_orgs: Vec<usize>,
) -> UpstreamBudget {
    UpstreamBudget {
        name: name.into(),
        class_names: (0..class_limits.len()).map(|c| format!("c{c}")).collect(),
        class_limits,
        key_labels: (0..key_orgs.len()).map(|k| format!("key#{k}")).collect(),
        org_names: vec!["a".into(), "b".into()],
        key_orgs,
    }
}

pub(super) fn lanes_of(
    upstreams: Vec<UpstreamBudget>,
    bulkheads: Vec<(String, Bulkhead)>,
) -> Lanes {
    Lanes::new(
        GovernorArgs {
            upstreams,
            bulkheads,
            interactive_reserve: 0.5,
            transit_allowance: Duration::ZERO,
            shared: false,
        },
        7,
    )
}

pub(super) fn to(upstream: usize, class: usize, input_tokens: u64, lane: Lane) -> ReserveRequest {
    ReserveRequest {
        upstream,
        class,
        cost: Cost::request(input_tokens, 0),
        lane,
        feature: None,
        max_wait: S * 300,
    }
}

pub(super) fn granted(r: Reserved) -> Ticket {
    match r {
        Reserved::Now(Decision::Grant { ticket, .. }) => ticket,
        other => panic!("expected a grant now, got {other:?}"),
    }
}

pub(super) fn waiters(answers: &[Answer]) -> Vec<WaiterId> {
    answers
        .iter()
        .filter(|a| matches!(a.decision, Decision::Grant { .. }))
        .map(|a| a.waiter)
        .collect()
}
