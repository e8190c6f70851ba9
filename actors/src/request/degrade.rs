//! When no model of a chain can answer (`Error::Unavailable`; never for a rejected request), a
//! chain may still answer, in the order its `RetryPolicy::degrade` lists: the response cache's
//! last live answer, a static text, or the durable queue (HTTP 202 with a job id).

use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::ActorRef;

use super::cache::ResponseCache;
use super::stream::StreamReply;
use crate::assemble::events_of;
use crate::call::{AttemptRecord, Outcome, Reply, Source};
use crate::error::Error;
use crate::fleet::Fleet;
use crate::job::Job;
use crate::policy::chain::Degrade;
use crate::protocol::QueueMsg;
use crate::wire::{Headers, Usage};

/// Answer an `Unavailable` as the chain allows, trying `options` in order; the error itself
/// when none can. A degraded answer carries this call's own latency (`elapsed`), not that of
/// the answer it stands in for.
pub(crate) async fn degraded(
    err: Error,
    options: &[Degrade],
    chain: &str,
    cache: Option<(&ResponseCache, &str)>,
    fleet: Option<&dyn Fleet>,
    mut queue: Option<(ActorRef<QueueMsg>, crate::call::Call)>,
    elapsed: Duration,
) -> Result<Reply, Error> {
    let count = |mut reply: Reply| {
        reply.latency = elapsed;
        metrics::counter!(
            "seawall_degraded_answers_total",
            "chain" => chain.to_owned(),
            "source" => reply.source.as_str()
        )
        .increment(1);
        Ok(reply)
    };
    for d in options {
        match d {
            Degrade::Cache => {
                let mut hit = cache.and_then(|(c, key)| c.fresh(key));
                if let (None, Some(fleet), Some((_, key))) = (&hit, fleet, cache) {
                    // Another instance may have answered it: the fleet's copy.
                    hit = match fleet.cache_get(key).await {
                        Ok(Some((answer, age))) => answer.into_result().ok().map(|r| (age, r)),
                        _ => None,
                    };
                }
                if let Some((age, mut reply)) = hit {
                    reply.source = Source::Cache;
                    reply.age = Some(age);
                    reply.trail = err.trail().to_vec();
                    reply.attempts = attempted(&reply.trail);
                    tracing::info!(model = %reply.model, age_ms = age.as_millis() as u64, "degraded: answered from the cache");
                    return count(reply);
                }
            }
            Degrade::Static(text) => {
                tracing::info!("degraded: answered with the static answer");
                return count(static_reply(text, err.trail().to_vec()));
            }
            Degrade::Queue => {
                let Some((queue, call)) = queue.take() else {
                    continue;
                };
                let stored = queue
                    .call(
                        |reply| QueueMsg::Enqueue {
                            chain: chain.to_owned(),
                            call: Box::new(call),
                            reply,
                        },
                        Some(Duration::from_secs(5)),
                    )
                    .await;
                match stored {
                    Ok(CallResult::Success(Ok(job))) => {
                        return count(queued_reply(&job, err.trail().to_vec()));
                    }
                    // Not stored: the caller must know, so the next option or the honest error
                    // follows.
                    Ok(CallResult::Success(Err(e))) => {
                        tracing::error!(error = %e, "could not queue the call");
                    }
                    _ => tracing::error!("the queue did not answer"),
                }
            }
        }
    }
    Err(err)
}

/// A whole (degraded) answer as a stream: the API's event sequence for it, all queued at once.
pub(crate) fn stream_of(reply: Reply) -> StreamReply {
    let message = reply.json().unwrap_or(serde_json::Value::Null);
    let events = events_of(&message);
    let (tx, rx) = tokio::sync::mpsc::channel(events.len().max(1));
    for ev in events {
        // Capacity was sized for them: this cannot fail.
        let _ = tx.try_send(ev);
    }
    StreamReply {
        model: reply.model,
        source: reply.source,
        age: reply.age,
        status: reply.status,
        headers: reply.headers,
        attempts: reply.attempts,
        trail: reply.trail,
        time_to_first_token: reply.latency,
        events: rx,
    }
}

/// Upstream attempts in a trail.
fn attempted(trail: &[AttemptRecord]) -> u32 {
    trail
        .iter()
        .filter(|s| {
            matches!(
                s.outcome,
                Outcome::Attempted { .. } | Outcome::Cancelled { .. }
            )
        })
        .count() as u32
}

/// The answer to a queued call: HTTP 202 with the job id.
fn queued_reply(job: &Job, trail: Vec<AttemptRecord>) -> Reply {
    let body = serde_json::json!({
        "type": "queued",
        "job_id": job.id,
        "chain": job.chain,
        "expires_at_ms": job.expires_ms,
    });
    made_reply(Source::Queued, "seawall-queue", 202, &body, trail)
}

/// A Messages-shaped answer carrying the chain's static text.
fn static_reply(text: &str, trail: Vec<AttemptRecord>) -> Reply {
    let body = serde_json::json!({
        "id": "msg_seawall_static", "type": "message", "role": "assistant",
        "model": "seawall-static", "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": 0, "output_tokens": 0}
    });
    made_reply(Source::Static, "seawall-static", 200, &body, trail)
}

/// An answer seawall made itself (no upstream served it), carrying the live attempts' trail.
fn made_reply(
    source: Source,
    model: &str,
    status: u16,
    body: &serde_json::Value,
    trail: Vec<AttemptRecord>,
) -> Reply {
    Reply {
        source,
        age: None,
        model: model.into(),
        status,
        headers: Headers::default(),
        body: bytes::Bytes::from(body.to_string()),
        usage: Usage::default(),
        attempts: attempted(&trail),
        trail,
        latency: Duration::ZERO,
    }
}
