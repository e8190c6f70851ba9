//! `IdempotencyActor`: a repeated call never costs or does twice what it already did.
//!
//! It owns the table of idempotency keys (hand-written: deduplication is the product):
//! - the first call with a key **leads**: it runs, then reports its result;
//! - calls with the same key while the leader runs **wait** and get the leader's result
//!   (single-flight: one upstream call for all of them);
//! - calls after it finished get the stored result, flagged as a **replay**, until the key
//!   expires (`ttl`). Only answers worth repeating are stored: successes and permanent
//!   rejections. A transient failure is handed to the waiters but not kept, so the next call
//!   tries again.
//!
//! Handlers never await; expiry runs on the shared epoch-tagged [`Timer`].

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::oneshot;

use crate::call::{Reply, Source};
use crate::clock;
use crate::error::Error;
use crate::timer::Timer;

/// What a call with an idempotency key should do.
#[derive(Debug)]
pub enum Claim {
    /// Run it, then send `Finish` with the result.
    Lead,
    /// Another call with this key is running: its result arrives here.
    Wait(oneshot::Receiver<Result<Reply, Error>>),
    /// Already answered: the stored result.
    Done(Result<Reply, Error>),
}

/// Messages the idempotency actor understands.
pub enum IdempotencyMsg {
    /// Claim `key` for a call.
    Begin {
        /// The idempotency key.
        key: String,
        /// Where the claim goes.
        reply: RpcReplyPort<Claim>,
    },
    /// The leader of `key` finished.
    Finish {
        /// The idempotency key.
        key: String,
        /// Its result.
        result: Result<Reply, Error>,
    },
    /// Keys held now: (running, stored).
    Count(RpcReplyPort<(usize, usize)>),
    /// A scheduled timer fired.
    #[doc(hidden)]
    Timer(u64),
}

enum Entry {
    Running(Vec<oneshot::Sender<Result<Reply, Error>>>),
    Done(Result<Reply, Error>),
}

/// The actor.
pub struct IdempotencyActor;

/// The actor's state.
pub struct IdempotencyState {
    ttl: Duration,
    entries: HashMap<String, Entry>,
    /// Completed keys in completion order: with one TTL, the oldest expires first.
    expiries: VecDeque<(Instant, String)>,
    timer: Timer,
}

/// Is this result worth answering again without asking the upstream? Live answers, permanent
/// rejections, and a queued call's receipt (a repeat must get the same job, not queue a second
/// one). Cache and static answers are not: the next try may get a live one.
fn keepable(result: &Result<Reply, Error>) -> bool {
    match result {
        Ok(r) => matches!(r.source, Source::Live | Source::Queued),
        Err(e) => matches!(e, Error::Rejected { .. }),
    }
}

impl IdempotencyState {
    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.expiries.front() {
            if *at > now {
                break;
            }
            if let Some((_, key)) = self.expiries.pop_front() {
                // A key re-run after a transient failure may be running again: keep that one.
                if matches!(self.entries.get(&key), Some(Entry::Done(_))) {
                    self.entries.remove(&key);
                }
            }
        }
    }
}

impl Actor for IdempotencyActor {
    type Msg = IdempotencyMsg;
    type State = IdempotencyState;
    type Arguments = Duration;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        ttl: Duration,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(IdempotencyState {
            ttl,
            entries: HashMap::new(),
            expiries: VecDeque::new(),
            timer: Timer::default(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let now = clock::now();
        state.expire(now);
        match msg {
            IdempotencyMsg::Begin { key, reply } => {
                let claim = match state.entries.get_mut(&key) {
                    Some(Entry::Done(result)) => Claim::Done(result.clone()),
                    Some(Entry::Running(waiters)) => {
                        let (tx, rx) = oneshot::channel();
                        waiters.push(tx);
                        Claim::Wait(rx)
                    }
                    None => {
                        state
                            .entries
                            .insert(key.clone(), Entry::Running(Vec::new()));
                        Claim::Lead
                    }
                };
                // A leader whose caller is already gone would hold the key forever: free it.
                if let Err(ractor::MessagingErr::SendErr(Claim::Lead)) = reply.send(claim) {
                    state.entries.remove(&key);
                }
            }
            IdempotencyMsg::Finish { key, result } => {
                if let Some(Entry::Running(waiters)) = state.entries.remove(&key) {
                    for w in waiters {
                        let _ = w.send(result.clone());
                    }
                }
                if keepable(&result) {
                    state.entries.insert(key.clone(), Entry::Done(result));
                    state.expiries.push_back((now + state.ttl, key));
                }
            }
            IdempotencyMsg::Count(reply) => {
                let running = state
                    .entries
                    .values()
                    .filter(|e| matches!(e, Entry::Running(_)))
                    .count();
                let _ = reply.send((running, state.entries.len() - running));
            }
            IdempotencyMsg::Timer(epoch) => {
                if !state.timer.fired(epoch) {
                    return Ok(()); // a stale timer: the next expiry moved
                }
            }
        }
        let next = state.expiries.front().map(|(at, _)| *at);
        state.timer.rearm(&myself, next, now, IdempotencyMsg::Timer);
        Ok(())
    }
}
