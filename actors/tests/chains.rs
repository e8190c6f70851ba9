//! Chains as the API defines them: hops that patch the request, and refusal fallback with the
//! refusal's credit forwarded. Paused time, scripted upstream.

mod support;

use std::time::Duration;

use seawall_actors::scripted::{Answer, ScriptedUpstream, StreamAnswer};
use seawall_actors::{Call, HopSpec, Outcome, RetryPolicy, SseEvent, UpstreamResponse};
use serde_json::{json, Value};
use support::{builder, drain};

fn sent(up: &ScriptedUpstream) -> Vec<Value> {
    up.log()
        .iter()
        .map(|l| serde_json::from_slice(&l.body).unwrap())
        .collect()
}

fn refusal(model: &str, token: Option<&str>, prefill_claim: bool) -> Answer {
    let body = json!({
        "id": "msg_refused", "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": "Partial"}],
        "stop_reason": "refusal",
        "stop_details": {"type": "refusal", "category": "cyber",
            "fallback_credit_token": token, "fallback_has_prefill_claim": prefill_claim},
        "usage": {"input_tokens": 10, "output_tokens": 1}
    });
    Answer::from(Ok(UpstreamResponse::new(200, body.to_string())))
}

fn refusal_policy() -> RetryPolicy {
    RetryPolicy {
        refusal_fallback: true,
        ..RetryPolicy::default()
    }
}

#[tokio::test(start_paused = true)]
async fn patches_override_remove_and_keep_and_never_compound() {
    let up = ScriptedUpstream::new();
    up.on("big", |_, _| Answer::status(529, "overloaded_error"));
    up.on("mid", |_, _| Answer::status(529, "overloaded_error"));
    up.healthy("small", Duration::ZERO);
    let sw = builder(&up)
        .chain_hops(
            "big",
            [
                HopSpec::model("big"),
                HopSpec::model("mid").patch(json!({"max_tokens": 512, "thinking": null})),
                HopSpec::model("small").patch(json!({"temperature": 0.2})),
            ],
            None,
        )
        .spawn()
        .await
        .unwrap();
    let call = Call::from_value(json!({
        "model": "big", "max_tokens": 4096, "temperature": 1.0,
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "messages": [{"role": "user", "content": "hi"}],
        "future_field": {"kept": true}
    }))
    .unwrap();
    let reply = sw.complete(call).await.unwrap();
    assert_eq!(reply.model, "small");
    let bodies = sent(&up);
    assert_eq!(bodies.len(), 3);
    // Hop 1: the original.
    assert_eq!(bodies[0]["max_tokens"], 4096);
    assert_eq!(bodies[0]["thinking"]["type"], "enabled");
    // Hop 2: max_tokens overridden, thinking removed, the rest kept.
    assert_eq!(bodies[1]["model"], "mid");
    assert_eq!(bodies[1]["max_tokens"], 512);
    assert!(bodies[1].get("thinking").is_none());
    assert_eq!(bodies[1]["temperature"], 1.0);
    assert_eq!(bodies[1]["future_field"]["kept"], true);
    // Hop 3 patches the original, not hop 2: max_tokens and thinking are back.
    assert_eq!(bodies[2]["temperature"], 0.2);
    assert_eq!(bodies[2]["max_tokens"], 4096);
    assert_eq!(bodies[2]["thinking"]["type"], "enabled");
}

#[tokio::test(start_paused = true)]
async fn bad_patches_are_refused_at_spawn() {
    let up = ScriptedUpstream::new();
    for (patch, needle) in [
        (json!([1, 2]), "must be a JSON object"),
        (json!({"model": "x"}), "may not set `model`"),
    ] {
        let err = builder(&up)
            .chain_hops(
                "a",
                [HopSpec::model("a"), HopSpec::model("b").patch(patch)],
                None,
            )
            .spawn()
            .await
            .err()
            .expect("refused");
        assert!(err.to_string().contains(needle), "{err}");
    }
    // The same model twice is fine with different requests.
    builder(&up)
        .chain_hops(
            "a",
            [
                HopSpec::model("a"),
                HopSpec::model("a").patch(json!({"thinking": null})),
            ],
            None,
        )
        .spawn()
        .await
        .expect("a model twice with different patches");
}

#[tokio::test(start_paused = true)]
async fn a_refusal_moves_to_the_next_hop_with_the_fallback_credit() {
    let up = ScriptedUpstream::new();
    up.on("strict", |_, _| refusal("strict", Some("tok_123"), true));
    up.healthy("lenient", Duration::ZERO);
    let sw = builder(&up)
        .chain_with("strict", ["strict", "lenient"], refusal_policy())
        .chain("no-fallback", ["strict", "lenient"])
        .spawn()
        .await
        .unwrap();
    let reply = sw
        .complete(Call::new("strict", 100).user("hi"))
        .await
        .unwrap();
    assert_eq!(reply.model, "lenient");
    assert!(reply.trail.iter().any(|s| s.outcome == Outcome::Refused));
    let bodies = sent(&up);
    assert_eq!(bodies[1]["fallback_credit_token"], "tok_123");
    // The prefill claim: the refused partial output continues as an assistant turn.
    let last = bodies[1]["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["role"], "assistant");
    assert_eq!(last["content"][0]["text"], "Partial");

    // Without the opt-in a refusal is simply the answer.
    let reply = sw
        .complete(Call::new("strict", 100).user("hi").chain("no-fallback"))
        .await
        .unwrap();
    assert_eq!(reply.model, "strict");
    assert_eq!(reply.json().unwrap()["stop_reason"], "refusal");
}

#[tokio::test(start_paused = true)]
async fn when_every_hop_refuses_or_fails_the_first_refusal_is_the_answer() {
    let up = ScriptedUpstream::new();
    up.on("a", |_, _| refusal("a", None, false));
    up.on("b", |_, _| Answer::status(529, "overloaded_error"));
    let sw = builder(&up)
        .chain_with(
            "a",
            ["a", "b"],
            RetryPolicy {
                deadline: Duration::from_secs(2),
                ..refusal_policy()
            },
        )
        .spawn()
        .await
        .unwrap();
    let reply = sw
        .complete(Call::new("a", 100).user("hi"))
        .await
        .expect("honest answer");
    assert_eq!(reply.model, "a");
    assert_eq!(reply.json().unwrap()["stop_reason"], "refusal");
    // No token was minted: none is forwarded.
    assert!(sent(&up)[1].get("fallback_credit_token").is_none());
}

fn refusal_stream(model: &str) -> StreamAnswer {
    let start = json!({"type": "message_start", "message": {"id": "m", "type": "message",
        "role": "assistant", "model": model, "content": [], "stop_reason": null,
        "usage": {"input_tokens": 5, "output_tokens": 0}}});
    let delta = json!({"type": "message_delta",
        "delta": {"stop_reason": "refusal", "stop_sequence": null,
            "stop_details": {"type": "refusal", "fallback_credit_token": "tok_stream",
                "fallback_has_prefill_claim": false}},
        "usage": {"output_tokens": 0}});
    StreamAnswer::Events {
        head_after: Duration::ZERO,
        items: vec![
            (
                Duration::ZERO,
                Ok(SseEvent::new("message_start", start.to_string())),
            ),
            (
                Duration::ZERO,
                Ok(SseEvent::new("message_delta", delta.to_string())),
            ),
            (
                Duration::ZERO,
                Ok(SseEvent::new("message_stop", r#"{"type":"message_stop"}"#)),
            ),
        ],
    }
}

#[tokio::test(start_paused = true)]
async fn a_stream_refused_before_content_falls_back_but_not_after_content() {
    let up = ScriptedUpstream::new();
    up.on_stream("strict", |_, _| refusal_stream("strict"));
    up.on_stream("lenient", |_, _| {
        StreamAnswer::message("lenient", &["fine"], Duration::from_millis(1))
    });
    up.on_stream("late", |_, _| {
        // Content first, then the refusal: the caller already has content, so it stays.
        let StreamAnswer::Events { mut items, .. } =
            StreamAnswer::message("late", &["some"], Duration::from_millis(1))
        else {
            unreachable!()
        };
        let delta = json!({"type": "message_delta",
            "delta": {"stop_reason": "refusal", "stop_sequence": null}, "usage": {"output_tokens": 1}});
        let n = items.len();
        items[n - 2] = (Duration::ZERO, Ok(SseEvent::new("message_delta", delta.to_string())));
        StreamAnswer::Events {
            head_after: Duration::ZERO,
            items,
        }
    });
    let sw = builder(&up)
        .chain_with("strict", ["strict", "lenient"], refusal_policy())
        .chain_with("late", ["late", "lenient"], refusal_policy())
        .spawn()
        .await
        .unwrap();
    let reply = sw
        .stream(Call::new("strict", 100).user("hi"))
        .await
        .unwrap();
    assert_eq!(reply.model, "lenient");
    assert_eq!(sent(&up)[1]["fallback_credit_token"], "tok_stream");
    let reply = sw.stream(Call::new("late", 100).user("hi")).await.unwrap();
    assert_eq!(reply.model, "late");
    let saw_refusal = drain(reply)
        .await
        .iter()
        .any(|ev| ev.data.contains("\"refusal\""));
    assert!(
        saw_refusal,
        "the caller gets the refusal as the API sent it"
    );
    assert_eq!(up.calls("lenient"), 1);
}

/// One model id on two upstreams (two platforms, or two regions): two models with two
/// breakers. The id goes on the wire; seawall's names key the breakers and the reply.
#[tokio::test(start_paused = true)]
async fn one_model_id_on_two_upstreams_is_two_hops_with_two_breakers() {
    use seawall_actors::{BreakerConfig, Seawall, StateKind, Trip};
    const ID: &str = "claude-sonnet-4-5";
    let east = ScriptedUpstream::new();
    east.on(ID, |_, _| Answer::status(529, "overloaded_error"));
    let west = ScriptedUpstream::new();
    west.healthy(ID, Duration::ZERO);
    let trip_at_two = BreakerConfig {
        trip: Trip::ConsecutiveFailures(2),
        ..BreakerConfig::default()
    };
    let policy = RetryPolicy {
        backoff: seawall_actors::Backoff {
            max_attempts: 1,
            ..seawall_actors::Backoff::default()
        },
        hedge: seawall_actors::Hedge::Off,
        ..RetryPolicy::default()
    };
    let sw = Seawall::builder()
        .upstream("east", east.clone())
        .upstream("west", west.clone())
        .model_on("sonnet-east", "east", Some(trip_at_two))
        .model_on("sonnet-west", "west", Some(trip_at_two))
        .model_id("sonnet-east", ID)
        .model_id("sonnet-west", ID)
        .chain_hops(
            "sonnet-east",
            [HopSpec::model("sonnet-east"), HopSpec::model("sonnet-west")],
            Some(policy),
        )
        .spawn()
        .await
        .unwrap();
    for _ in 0..3 {
        let reply = sw
            .complete(Call::new("sonnet-east", 16).user("hi"))
            .await
            .unwrap();
        assert_eq!(reply.model, "sonnet-west", "seawall's name, not the id");
    }
    // Both upstreams were asked for the id, in the attempt and in the body.
    for (up, n) in [(&east, 2), (&west, 3)] {
        let log = up.log();
        assert_eq!(log.len(), n);
        for l in &log {
            assert_eq!(l.model, ID);
            let body: Value = serde_json::from_slice(&l.body).unwrap();
            assert_eq!(body["model"], ID);
        }
    }
    // East's two failures opened east's breaker only (the third call skipped it).
    let east_b = sw.breaker_status("sonnet-east").await.unwrap();
    let west_b = sw.breaker_status("sonnet-west").await.unwrap();
    assert_eq!(east_b.state, StateKind::Open);
    assert_eq!(west_b.state, StateKind::Closed);
    assert_eq!(west_b.stats.calls, 3);
}

#[tokio::test(start_paused = true)]
async fn a_model_id_for_an_undeclared_model_or_an_empty_id_is_refused() {
    use seawall_actors::Seawall;
    let up = ScriptedUpstream::new();
    let err = Seawall::builder()
        .upstream("s", up.clone())
        .model_on("a", "s", None)
        .model_id("b", "x")
        .spawn()
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("\"b\""), "{err}");
    let err = Seawall::builder()
        .upstream("s", up)
        .model_on("a", "s", None)
        .model_id("a", " ")
        .spawn()
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("empty"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn the_runtime_reports_the_chain_table_it_was_built_with() {
    let up = ScriptedUpstream::new();
    let sw = builder(&up)
        .chain("big", ["big", "small"])
        .chain("alias", ["small", "big"])
        .spawn()
        .await
        .unwrap();
    assert_eq!(sw.chain_of("big").unwrap(), ["big", "small"]);
    assert_eq!(sw.chain_of("alias").unwrap(), ["small", "big"]);
    assert_eq!(
        sw.chain_of("small").unwrap(),
        ["small"],
        "a model heads its own chain"
    );
    assert_eq!(sw.chain_of("nope"), None);
    sw.shutdown(Duration::from_secs(1)).await;
}
