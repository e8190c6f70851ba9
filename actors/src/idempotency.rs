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
//! A key belongs to one tenant and names one request. Entries are keyed by the digest of
//! (tenant, key), so two tenants that pick the same key never meet; and each entry keeps the
//! fingerprint of its request, so the same key sent with another request is refused
//! ([`Claim::Conflict`]), never answered with the first request's result.
//!
//! Memory is bounded whatever clients send: an entry costs two 32-byte digests plus the stored
//! answer; at most `max_entries` entries are kept (the oldest finished ones go first), and one
//! tenant holds at most `max_per_tenant` of them (its own oldest finished ones go first; when
//! all of its entries are running, its next call runs without deduplication).
//!
//! Handlers never await; expiry runs on the shared epoch-tagged [`Timer`].

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::oneshot;

use crate::call::{Reply, Source};
use crate::clock;
use crate::digest::Digest;
use crate::error::Error;
use crate::policy::invalid::Invalid;
use crate::protocol::{Claim, IdempotencyMsg};
use crate::timer::Timer;

/// How the idempotency table is bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdempotencyConfig {
    /// How long a finished key is answered from its stored result.
    pub ttl: Duration,
    /// At most this many keys (running and finished) in the table.
    pub max_entries: usize,
    /// At most this many keys of one tenant.
    pub max_per_tenant: usize,
}

impl IdempotencyConfig {
    /// Keys kept `ttl`, with the default bounds (10 000 keys, 1 000 per tenant).
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            max_entries: 10_000,
            max_per_tenant: 1_000,
        }
    }

    /// Check the settings.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.ttl.is_zero() {
            return Err(Invalid::new("ttl", "must be greater than zero"));
        }
        if self.max_entries == 0 {
            return Err(Invalid::new("max_entries", "must be at least 1"));
        }
        if self.max_per_tenant == 0 {
            return Err(Invalid::new("max_per_tenant", "must be at least 1"));
        }
        Ok(())
    }
}

enum Stage {
    Running(Vec<oneshot::Sender<Result<Reply, Error>>>),
    /// Finished; kept until `expires`.
    Done {
        result: Result<Reply, Error>,
        expires: Instant,
    },
}

struct Entry {
    tenant: Digest,
    fingerprint: Digest,
    stage: Stage,
}

/// One tenant's share: its entry count and its finished keys, oldest first.
#[derive(Default)]
struct Share {
    entries: usize,
    done: VecDeque<(Instant, Digest)>,
}

/// The actor.
pub struct IdempotencyActor;

/// The actor's state.
pub struct IdempotencyState {
    config: IdempotencyConfig,
    entries: HashMap<Digest, Entry>,
    /// Finished keys in completion order (with one TTL, the oldest expires first), tagged with
    /// their expiry so a key evicted and stored again is not removed by its old tag.
    expiries: VecDeque<(Instant, Digest)>,
    tenants: HashMap<Digest, Share>,
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
    fn new(config: IdempotencyConfig) -> Self {
        Self {
            config,
            entries: HashMap::new(),
            expiries: VecDeque::new(),
            tenants: HashMap::new(),
            timer: Timer::default(),
        }
    }

    /// Remove `key` if it is finished with expiry `tag` (or with any expiry when `tag` is
    /// `None`); true when it was removed.
    fn remove_done(&mut self, key: &Digest, tag: Option<Instant>) -> bool {
        let matches = match self.entries.get(key) {
            Some(Entry {
                stage: Stage::Done { expires, .. },
                ..
            }) => tag.is_none_or(|t| t == *expires),
            _ => false,
        };
        if !matches {
            return false;
        }
        if let Some(e) = self.entries.remove(key) {
            if let Some(share) = self.tenants.get_mut(&e.tenant) {
                share.entries = share.entries.saturating_sub(1);
                if share.entries == 0 {
                    self.tenants.remove(&e.tenant);
                }
            }
        }
        true
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(at, key)) = self.expiries.front() {
            if at > now {
                break;
            }
            self.expiries.pop_front();
            // A key re-run after a transient failure may be running again: keep that one.
            self.remove_done(&key, Some(at));
        }
        // The tenants' lists only point at entries: drop the tags that went stale.
        for share in self.tenants.values_mut() {
            while share.done.front().is_some_and(|&(at, _)| at <= now) {
                share.done.pop_front();
            }
        }
    }

    /// Make room for one more entry of `tenant`; false when its share is all running keys.
    fn make_room(&mut self, tenant: Digest) -> bool {
        while let Some(share) = self.tenants.get_mut(&tenant) {
            if share.entries < self.config.max_per_tenant {
                break;
            }
            let Some((at, key)) = share.done.pop_front() else {
                return false;
            };
            self.remove_done(&key, Some(at));
        }
        while self.entries.len() >= self.config.max_entries {
            let Some((at, key)) = self.expiries.pop_front() else {
                // Every entry is running: the table is full of calls in flight.
                return false;
            };
            self.remove_done(&key, Some(at));
        }
        true
    }

    fn begin(&mut self, key: Digest, tenant: Digest, fingerprint: Digest) -> Claim {
        match self.entries.get_mut(&key) {
            Some(e) if e.fingerprint != fingerprint => return Claim::Conflict,
            Some(Entry {
                stage: Stage::Done { result, .. },
                ..
            }) => return Claim::Done(result.clone()),
            Some(Entry {
                stage: Stage::Running(waiters),
                ..
            }) => {
                let (tx, rx) = oneshot::channel();
                waiters.push(tx);
                return Claim::Wait(rx);
            }
            None => {}
        }
        if !self.make_room(tenant) {
            return Claim::Bypass;
        }
        self.entries.insert(
            key,
            Entry {
                tenant,
                fingerprint,
                stage: Stage::Running(Vec::new()),
            },
        );
        self.tenants.entry(tenant).or_default().entries += 1;
        Claim::Lead
    }

    /// Forget a running key (its leader is gone before it began).
    fn abandon(&mut self, key: &Digest) {
        if let Some(e) = self.entries.remove(key) {
            if let Some(share) = self.tenants.get_mut(&e.tenant) {
                share.entries = share.entries.saturating_sub(1);
                if share.entries == 0 && share.done.is_empty() {
                    self.tenants.remove(&e.tenant);
                }
            }
        }
    }

    fn finish(&mut self, key: Digest, result: Result<Reply, Error>, now: Instant) {
        let Some(entry) = self.entries.get_mut(&key) else {
            return;
        };
        let Stage::Running(waiters) = std::mem::replace(
            &mut entry.stage,
            Stage::Done {
                result: result.clone(),
                expires: now + self.config.ttl,
            },
        ) else {
            return;
        };
        for w in waiters {
            let _ = w.send(result.clone());
        }
        if keepable(&result) {
            let expires = now + self.config.ttl;
            let tenant = entry.tenant;
            self.expiries.push_back((expires, key));
            self.tenants
                .entry(tenant)
                .or_default()
                .done
                .push_back((expires, key));
        } else {
            self.abandon(&key);
        }
    }
}

impl Actor for IdempotencyActor {
    type Msg = IdempotencyMsg;
    type State = IdempotencyState;
    type Arguments = IdempotencyConfig;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        config: IdempotencyConfig,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(IdempotencyState::new(config))
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
            IdempotencyMsg::Begin {
                key,
                tenant,
                fingerprint,
                reply,
            } => {
                let claim = state.begin(key, tenant, fingerprint);
                // A leader whose caller is already gone would hold the key forever: free it.
                if let Err(ractor::MessagingErr::SendErr(Claim::Lead)) = reply.send(claim) {
                    state.abandon(&key);
                }
            }
            IdempotencyMsg::Finish { key, result } => state.finish(key, result, now),
            IdempotencyMsg::Count(reply) => {
                let running = state
                    .entries
                    .values()
                    .filter(|e| matches!(e.stage, Stage::Running(_)))
                    .count();
                let _ = reply.send((running, state.entries.len() - running));
            }
            IdempotencyMsg::Timer(epoch) => {
                if !state.timer.fired(epoch) {
                    return Ok(()); // a stale timer: the next expiry moved
                }
            }
            IdempotencyMsg::InjectPanic => panic!("injected panic in the idempotency table"),
        }
        let next = state.expiries.front().map(|(at, _)| *at);
        state.timer.rearm(&myself, next, now, IdempotencyMsg::Timer);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::digest_of;
    use crate::wire::{Headers, Usage};

    fn reply() -> Result<Reply, Error> {
        Ok(Reply {
            model: "m".into(),
            source: Source::Live,
            age: None,
            status: 200,
            headers: Headers::default(),
            body: bytes::Bytes::from_static(b"{}"),
            usage: Usage::default(),
            attempts: 1,
            trail: Vec::new(),
            latency: Duration::ZERO,
        })
    }

    fn d(s: &str) -> Digest {
        digest_of(&[s.as_bytes()])
    }

    fn table(max_entries: usize, max_per_tenant: usize) -> IdempotencyState {
        IdempotencyState::new(IdempotencyConfig {
            ttl: Duration::from_secs(60),
            max_entries,
            max_per_tenant,
        })
    }

    #[test]
    fn a_key_reused_with_another_request_is_a_conflict_running_or_done() {
        let now = Instant::now();
        let mut t = table(10, 10);
        assert!(matches!(t.begin(d("k"), d("a"), d("req1")), Claim::Lead));
        assert!(matches!(
            t.begin(d("k"), d("a"), d("req2")),
            Claim::Conflict
        ));
        assert!(matches!(t.begin(d("k"), d("a"), d("req1")), Claim::Wait(_)));
        t.finish(d("k"), reply(), now);
        assert!(matches!(
            t.begin(d("k"), d("a"), d("req2")),
            Claim::Conflict
        ));
        assert!(matches!(
            t.begin(d("k"), d("a"), d("req1")),
            Claim::Done(Ok(_))
        ));
    }

    #[test]
    fn a_tenant_is_bounded_by_its_share_and_evicts_its_own_oldest() {
        let now = Instant::now();
        let mut t = table(100, 2);
        for k in ["a1", "a2"] {
            assert!(matches!(t.begin(d(k), d("a"), d(k)), Claim::Lead));
        }
        // Both running: the tenant's next key runs without deduplication.
        assert!(matches!(t.begin(d("a3"), d("a"), d("a3")), Claim::Bypass));
        // Another tenant is not affected.
        assert!(matches!(t.begin(d("b1"), d("b"), d("b1")), Claim::Lead));
        t.finish(d("a1"), reply(), now);
        // a1 is finished: it is evicted to make room for a3.
        assert!(matches!(t.begin(d("a3"), d("a"), d("a3")), Claim::Lead));
        assert!(matches!(t.begin(d("a1"), d("a"), d("a1")), Claim::Bypass));
        assert_eq!(t.entries.len(), 3);
        assert!(t.entries.contains_key(&d("b1")));
    }

    #[test]
    fn the_table_is_bounded_and_the_oldest_finished_key_goes_first() {
        let now = Instant::now();
        let mut t = table(2, 10);
        assert!(matches!(t.begin(d("k1"), d("a"), d("k1")), Claim::Lead));
        t.finish(d("k1"), reply(), now);
        assert!(matches!(t.begin(d("k2"), d("b"), d("k2")), Claim::Lead));
        t.finish(d("k2"), reply(), now);
        assert!(matches!(t.begin(d("k3"), d("c"), d("k3")), Claim::Lead));
        assert_eq!(t.entries.len(), 2);
        assert!(
            !t.entries.contains_key(&d("k1")),
            "the oldest finished key went"
        );
        assert!(t.entries.contains_key(&d("k2")));
    }

    #[test]
    fn transient_failures_are_not_kept_and_expiry_frees_the_share() {
        let now = Instant::now();
        let mut t = table(10, 1);
        assert!(matches!(t.begin(d("k"), d("a"), d("k")), Claim::Lead));
        t.finish(d("k"), Err(Error::ShuttingDown), now);
        assert!(t.entries.is_empty());
        assert!(matches!(t.begin(d("k"), d("a"), d("k")), Claim::Lead));
        t.finish(d("k"), reply(), now);
        t.expire(now + Duration::from_secs(61));
        assert!(t.entries.is_empty());
        assert!(t.tenants.is_empty(), "nothing left of the tenant");
    }
}
