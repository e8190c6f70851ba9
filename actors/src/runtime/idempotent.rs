//! A call with an idempotency key: lead it, wait for the identical one in flight, or replay its
//! answer; in a fleet, the claim is the fleet's so two instances never run one key twice.

use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::ActorRef;

use crate::call::{Call, Digest, Reply, Source};
use crate::error::Error;
use crate::fleet::{FleetClaim, StoredAnswer};
use crate::protocol::{Claim, IdempotencyMsg};

use super::Seawall;

/// Reports the leader's result to the idempotency table exactly once, even if the leader's
/// task ends without one.
struct FinishGuard {
    table: ActorRef<IdempotencyMsg>,
    key: Digest,
    done: bool,
}

impl FinishGuard {
    fn finish(&mut self, result: Result<Reply, Error>) {
        self.done = true;
        let _ = self.table.cast(IdempotencyMsg::Finish {
            key: self.key,
            result,
        });
    }
}

impl Drop for FinishGuard {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.table.cast(IdempotencyMsg::Finish {
                key: self.key,
                result: Err(Error::Internal("the leading call was lost".into())),
            });
        }
    }
}

impl Seawall {
    /// A call with an idempotency key: lead it, wait for the identical one in flight, or replay.
    pub(super) async fn complete_once(
        &self,
        call: Call,
        key: Digest,
        table: ActorRef<IdempotencyMsg>,
    ) -> Result<Reply, Error> {
        // A malformed call is refused before it can claim a key.
        call.validate()?;
        let tenant = call.tenant_digest();
        let fingerprint = call.fingerprint();
        let claim = table
            .call(
                |reply| IdempotencyMsg::Begin {
                    key,
                    tenant,
                    fingerprint,
                    reply,
                },
                Some(Duration::from_secs(5)),
            )
            .await;
        match claim {
            Ok(CallResult::Success(Claim::Lead)) => {
                // Detached, so the waiters get the result even if this caller goes away; the
                // guard reports a lost leader too, so nobody waits forever.
                let sw = self.clone();
                let task = tokio::spawn(async move {
                    let mut guard = FinishGuard {
                        table,
                        key,
                        done: false,
                    };
                    let result = sw.complete_in_fleet(call, key, fingerprint).await;
                    guard.finish(result.clone());
                    result
                });
                task.await.unwrap_or_else(|_| {
                    Err(Error::Internal("the idempotent call's task failed".into()))
                })
            }
            Ok(CallResult::Success(Claim::Wait(rx))) => rx.await.unwrap_or_else(|_| {
                Err(Error::Internal(
                    "the identical call this one waited for was lost".into(),
                ))
            }),
            Ok(CallResult::Success(Claim::Done(result))) => result.map(|mut reply| {
                // A queued call's receipt stays one: the repeat gets the same job id.
                if reply.source == Source::Live {
                    reply.source = Source::Replay;
                }
                reply
            }),
            Ok(CallResult::Success(Claim::Conflict)) => Err(Error::InvalidCall(
                "this idempotency key was already used with a different request: a key names \
                 one request; use a new key for a new request"
                    .into(),
            )),
            // The tenant's share of the table is all calls in flight, or the table is being
            // restarted: answer without deduplication rather than not at all.
            _ => self.complete_now(call).await,
        }
    }

    /// A keyed call this process leads: in a fleet, claim the key fleet-wide first, so
    /// concurrent duplicates on other instances make one upstream call and all get its answer.
    async fn complete_in_fleet(
        &self,
        call: Call,
        key: Digest,
        fingerprint: Digest,
    ) -> Result<Reply, Error> {
        let Some(fleet) = self.inner.shared.fleet.clone() else {
            return self.complete_now(call).await;
        };
        let ttl = self.inner.idempotency_ttl;
        let replayed = |answer: StoredAnswer| {
            answer.into_result().map(|mut r| {
                if r.source == Source::Live {
                    r.source = Source::Replay;
                }
                r
            })
        };
        let Some(chain) = self.inner.chains.get(call.chain_name()) else {
            return Err(Error::UnknownModel(call.chain_name().to_owned()));
        };
        let deadline = tokio::time::Instant::now() + chain.policy.deadline_of(call.timeout);
        let mut pause = Duration::from_millis(10);
        loop {
            match fleet.claim(key, fingerprint, ttl).await {
                Ok(FleetClaim::Lead) => {
                    let result = self.complete_now(call).await;
                    // A transient failure releases the claim: the next try runs again.
                    let kept = StoredAnswer::of(&result);
                    if let Err(e) = fleet.finish(key, kept, ttl).await {
                        tracing::warn!(error = %e, "the fleet did not store an idempotent answer");
                    }
                    return result;
                }
                Ok(FleetClaim::Done(answer)) => return replayed(answer),
                Ok(FleetClaim::Conflict) => {
                    return Err(Error::InvalidCall(
                        "this idempotency key was already used with a different request: a \
                         key names one request; use a new key for a new request"
                            .into(),
                    ))
                }
                Ok(FleetClaim::Running) => {
                    // Another instance runs it: wait for its answer (or for its claim to go).
                    if tokio::time::Instant::now() + pause > deadline {
                        return Err(Error::Unavailable {
                            retry_after: Some(Duration::from_secs(1)),
                            deadline_exceeded: true,
                            deadline_spent: true,
                            trail: Vec::new(),
                        });
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
                Err(e) => {
                    // The fleet is unreachable: deduplicate in this process only.
                    tracing::debug!(error = %e, "idempotency without the fleet");
                    return self.complete_now(call).await;
                }
            }
        }
    }
}
