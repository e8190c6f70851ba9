//! The durable queue for later: when no model of a chain can answer and the chain allows it
//! (`Degrade::Queue`), the call is stored and the caller gets a job id at once; the
//! `QueueActor` replays stored jobs on the background lane as models recover.
//!
//! Hand-written: when and how a stored call is replayed is the product. Storage is not: a
//! [`JobStore`] keeps jobs and decides who replays which (the `seawall` crate ships one on redb,
//! an embedded file with no server, and one on Redis Streams shared by a fleet;
//! [`MemoryJobStore`] keeps them in memory for tests and ephemeral use).
//!
//! Rules:
//! - a job is written to the store *before* its id is handed out: an accepted job survives a
//!   crash or `kill -9` of the process;
//! - the queue replays only jobs it has claimed from the store under its consumer name: at
//!   start (and after a restart of this actor) the ones it already held, then, every `poll` and
//!   right after accepting a job, new ones and ones whose consumer is gone. In a fleet every
//!   instance accepts jobs and one replays each; alone, this queue claims them all;
//! - a job leaves `Pending` exactly once: `Done` (a live answer), `Failed` (a permanent
//!   rejection: never retried) or `Expired` (its TTL passed first). The store writes the final
//!   state only while the stored job is still pending, so of two finishers one wins; the winner
//!   announces it as [`Event::Job`], both hand the stored outcome to their waiters;
//! - before each replay the store confirms the job is still this consumer's (and records its
//!   run): a job another consumer took over is let go, not run twice;
//! - replays run as ordinary calls on [`Lane::Background`] with the job id as idempotency key
//!   (forwarded upstream), so a replay cut short by a crash and run again is recognisable
//!   upstream, and budget goes to interactive callers first;
//! - a replay that finds the chain still down fails fast inside the runtime (open breakers and
//!   empty buckets cost no upstream call) and is tried again at its `retry_after` or the next
//!   poll; one failing job per chain holds back that chain's younger jobs, so a down chain
//!   costs one cheap check per poll, not one per job.
//!
//! Store calls are awaited in the handlers: this actor serialises its store I/O (the breakers
//! and the governor never do I/O). A store that fails is left alone for a `poll`.
//!
//! Times in the store are wall-clock milliseconds since the Unix epoch (instants do not survive
//! a restart); the actor derives them from tokio's clock anchored once at start, so paused-time
//! tests move them too.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::oneshot;

use crate::call::{Call, Lane, Reply};
use crate::clock;
use crate::error::Error;
use crate::events::{Event, EventSender};
use crate::job::{Finished, Job, JobState, JobStore, QueueConfig};
use crate::protocol::QueueMsg;
use crate::timer::Timer;

/// A boxed future of one replay's result.
pub type RunFuture = Pin<Box<dyn Future<Output = Result<Reply, Error>> + Send>>;

/// Runs a replayed call through the runtime (set by the facade once it exists).
pub type Runner = Arc<dyn Fn(Call) -> RunFuture + Send + Sync>;

/// Start arguments.
#[derive(Clone)]
pub struct QueueArgs {
    /// Where jobs live.
    pub store: Arc<dyn JobStore>,
    /// Settings.
    pub config: QueueConfig,
    /// Where job outcomes are announced.
    pub events: EventSender,
    /// How replays run; empty until the facade is built (replays wait for it).
    pub runner: Arc<OnceLock<Runner>>,
    /// The name this runtime claims jobs under: the same across restarts of the actor, so a
    /// restarted queue takes back what it held.
    pub consumer: String,
}

/// A consumer name for a store that does not fix one: unique per runtime.
pub fn new_consumer() -> String {
    use std::hash::BuildHasher;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let random = std::collections::hash_map::RandomState::new().hash_one(nanos);
    format!("queue-{}-{random:016x}", std::process::id())
}

/// The actor.
pub struct QueueActor;

struct Waiting {
    job: Job,
    /// Not replayed before this.
    not_before: Instant,
}

/// The actor's state.
pub struct QueueState {
    args: QueueArgs,
    /// Wall-clock ms at `anchor_at`.
    anchor_ms: u64,
    anchor_at: Instant,
    /// The jobs this consumer holds, by id: ids sort in acceptance order, so iteration is
    /// oldest first without a sort.
    held: BTreeMap<String, Waiting>,
    running: HashSet<String>,
    waiters: HashMap<String, Vec<oneshot::Sender<Job>>>,
    /// Keyed by the OS's randomness (std's `RandomState`): job ids cannot be predicted from
    /// other ids, so holding one id reveals nobody else's answer.
    ids: std::collections::hash_map::RandomState,
    seq: u64,
    /// A store write failed: leave expiries and replays alone until then (no retry storm on a
    /// full disk or a Redis that is down).
    store_backoff: Option<Instant>,
    /// When finished jobs older than `keep_finished` are next purged.
    next_purge: Instant,
    /// When the store is next asked for work.
    next_claim: Instant,
    /// The jobs this consumer already held have been taken back (after a start or restart).
    resumed: bool,
    timer: Timer,
}

/// How often finished jobs are purged while the queue runs: a tenth of `keep_finished`, between
/// a minute and an hour.
fn purge_every(keep: Duration) -> Duration {
    (keep / 10).clamp(Duration::from_secs(60), Duration::from_secs(3600))
}

impl QueueState {
    fn wall_ms(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.anchor_at).as_millis() as u64;
        self.anchor_ms.saturating_add(since)
    }

    /// Ids sort in acceptance order: time, then a counter, then a random part that keeps
    /// them unique across restarts.
    fn new_id(&mut self, now_ms: u64) -> String {
        use std::hash::BuildHasher;
        self.seq = self.seq.wrapping_add(1);
        let random = |salt: u64| self.ids.hash_one((now_ms, self.seq, salt));
        format!(
            "job_{now_ms:011x}{:05x}{:016x}{:016x}",
            self.seq & 0xf_ffff,
            random(1),
            random(2)
        )
    }

    /// A job's expiry on the actor's clock: the same instant every time it is computed, so the
    /// timer is not re-armed for sub-millisecond differences.
    fn expiry_at(&self, job: &Job) -> Instant {
        self.at_wall(job.expires_ms)
    }

    /// The instant wall-clock `ms` falls on, on the actor's clock.
    fn at_wall(&self, ms: u64) -> Instant {
        self.anchor_at + Duration::from_millis(ms.saturating_sub(self.anchor_ms))
    }

    fn backing_off(&self, now: Instant) -> bool {
        self.store_backoff.is_some_and(|until| until > now)
    }

    async fn enqueue(&mut self, chain: String, call: Call, now: Instant) -> Result<Job, String> {
        let pending = self.args.store.pending_count().await?;
        if pending >= self.args.config.max_pending {
            return Err(format!(
                "the queue is full ({pending} jobs pending, max_pending)"
            ));
        }
        let now_ms = self.wall_ms(now);
        let job = Job {
            id: self.new_id(now_ms),
            chain,
            request: call.body().clone(),
            anthropic_version: call.forward.version.clone(),
            anthropic_beta: call.forward.beta.clone(),
            feature: call.feature.clone(),
            tenant: call.tenant.clone(),
            created_ms: now_ms,
            expires_ms: now_ms.saturating_add(self.args.config.ttl.as_millis() as u64),
            runs: 0,
            state: JobState::Pending { last_error: None },
        };
        self.args.store.put(&job).await?;
        tracing::info!(job = %job.id, chain = %job.chain, "queued for later");
        metrics::counter!("seawall_jobs_total", "chain" => job.chain.clone(), "outcome" => "queued")
            .increment(1);
        // Claimed at the end of this message, so the instance that accepted a job holds it
        // (unless another instance of a fleet is quicker); it first runs at the next poll.
        self.next_claim = now;
        Ok(job)
    }

    /// Store a final state and tell everyone. True when the job is settled (finished here, or
    /// found finished already); false when the store refused (it stays pending).
    async fn finish(&mut self, mut job: Job, state: JobState) -> bool {
        job.state = state;
        let stored = match self.args.store.finish(&job).await {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(job = %job.id, error = %e, "could not store a job's outcome; it stays pending");
                return false;
            }
        };
        let waiters = self.waiters.remove(&job.id).unwrap_or_default();
        let outcome = match stored {
            Finished::Stored => job,
            // Finished by another instance (or a run before a crash): its outcome stands and
            // was announced where it was reached.
            Finished::Already(earlier) => {
                tracing::info!(job = %earlier.id, outcome = earlier.state.as_str(), "job was already finished elsewhere");
                for w in waiters {
                    let _ = w.send((*earlier).clone());
                }
                return true;
            }
            Finished::Unknown => {
                tracing::warn!(job = %job.id, "the store no longer knows this job; dropped");
                return true;
            }
        };
        let name = outcome.state.as_str();
        tracing::info!(job = %outcome.id, chain = %outcome.chain, outcome = name, runs = outcome.runs, "job finished");
        metrics::counter!("seawall_jobs_total", "chain" => outcome.chain.clone(), "outcome" => name)
            .increment(1);
        let _ = self.args.events.send(Event::Job {
            id: outcome.id.clone(),
            chain: outcome.chain.clone(),
            outcome: name,
        });
        for w in waiters {
            let _ = w.send(outcome.clone());
        }
        true
    }

    /// A job stored for a caller who was gone before it learnt the id: it must not run.
    async fn disown(&mut self, job: Job, now: Instant) {
        self.held.remove(&job.id);
        let state = JobState::Failed {
            error: "not accepted: the caller had stopped waiting before it got the job id".into(),
            status: None,
            finished_ms: self.wall_ms(now),
        };
        self.finish(job, state).await;
    }

    /// Stop holding a job another consumer has now (or that is final): its waiters learn the
    /// outcome from the store.
    fn release(&mut self, id: &str) {
        self.held.remove(id);
        tracing::info!(job = %id, "job taken over elsewhere; let go");
        for w in self.waiters.remove(id).unwrap_or_default() {
            watch(&self.args.store, id.to_owned(), w, self.args.config.poll);
        }
    }

    /// Ask the store for work, when it is time: once after a start for what this consumer held,
    /// then new jobs and those of gone consumers.
    async fn claim(&mut self, now: Instant) {
        if now < self.next_claim {
            return;
        }
        self.next_claim = now + self.args.config.poll;
        let consumer = self.args.consumer.clone();
        let mut got = Vec::new();
        if !self.resumed {
            match self.args.store.held(&consumer).await {
                Ok(jobs) => {
                    self.resumed = true;
                    got = jobs;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not ask the job store what this queue held; trying again at the next poll");
                    return;
                }
            }
        }
        let room = self
            .args
            .config
            .max_pending
            .saturating_sub(self.held.len() + got.len());
        if room > 0 {
            match self.args.store.claim(&consumer, room).await {
                Ok(jobs) => got.extend(jobs),
                Err(e) => {
                    // A claim that failed halfway may have handed jobs to this consumer that
                    // never reached it: ask for what it holds again next time.
                    self.resumed = false;
                    tracing::warn!(error = %e, "could not claim jobs from the store")
                }
            }
        }
        let mut taken = 0;
        for job in got {
            if job.state.is_final() || self.held.contains_key(&job.id) {
                continue;
            }
            // Not before `poll` after it was accepted: it was queued because nothing could
            // answer then. A job older than that (a restart, a dead instance's) runs now.
            let not_before = self
                .at_wall(
                    job.created_ms
                        .saturating_add(self.args.config.poll.as_millis() as u64),
                )
                .max(now);
            taken += 1;
            self.held
                .insert(job.id.clone(), Waiting { job, not_before });
        }
        if taken > 0 {
            tracing::debug!(jobs = taken, consumer = %consumer, "claimed jobs from the store");
        }
    }

    /// Expire what is past its TTL and is not running (a running replay may still answer).
    async fn expire(&mut self, now: Instant) {
        if self.backing_off(now) {
            return;
        }
        self.store_backoff = None;
        let now_ms = self.wall_ms(now);
        let due: Vec<String> = self
            .held
            .iter()
            .filter(|(id, w)| w.job.expires_ms <= now_ms && !self.running.contains(*id))
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            if let Some(w) = self.held.remove(&id) {
                let last_error = match &w.job.state {
                    JobState::Pending { last_error } => last_error.clone(),
                    _ => None,
                };
                let state = JobState::Expired {
                    last_error,
                    finished_ms: now_ms,
                };
                if !self.finish(w.job.clone(), state).await {
                    self.held.insert(id, w);
                    self.store_backoff = Some(now + self.args.config.poll);
                    return;
                }
            }
        }
    }

    /// Delete finished jobs past `keep_finished`, when it is time.
    async fn purge(&mut self, now: Instant) {
        if now < self.next_purge {
            return;
        }
        let keep = self.args.config.keep_finished;
        self.next_purge = now + purge_every(keep);
        let before = self.wall_ms(now).saturating_sub(keep.as_millis() as u64);
        match self.args.store.purge_finished(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, "purged old finished jobs"),
            Err(e) => tracing::warn!(error = %e, "could not purge finished jobs"),
        }
    }

    /// Held jobs (not running), oldest first, each with the instant it becomes due: its own
    /// `not_before`, but never before the chain's oldest waiting job is due. A chain whose oldest
    /// job failed recently holds its younger jobs back: a down chain costs one check per wake.
    fn due_order(&self) -> Vec<(String, Instant)> {
        let mut gate: HashMap<&str, Instant> = HashMap::new();
        self.held
            .iter()
            .filter(|(id, _)| !self.running.contains(*id))
            .map(|(id, w)| {
                let chain_gate = *gate.entry(w.job.chain.as_str()).or_insert(w.not_before);
                (id.clone(), w.not_before.max(chain_gate))
            })
            .collect()
    }

    /// Start the due replays, oldest first, up to the concurrency limit. Each is recorded in the
    /// store first, which also confirms the job is still this consumer's.
    async fn start_due(&mut self, myself: &ActorRef<QueueMsg>, now: Instant) {
        let Some(runner) = self.args.runner.get().cloned() else {
            return;
        };
        if self.backing_off(now) {
            return;
        }
        let free = self
            .args
            .config
            .concurrency
            .saturating_sub(self.running.len());
        let start: Vec<String> = self
            .due_order()
            .into_iter()
            .filter(|(_, due)| *due <= now)
            .map(|(id, _)| id)
            .take(free)
            .collect();
        let now_ms = self.wall_ms(now);
        for id in start {
            let Some(w) = self.held.get(&id) else {
                continue;
            };
            let mut job = w.job.clone();
            job.runs += 1;
            match self.args.store.update(&self.args.consumer, &job).await {
                Ok(true) => {}
                Ok(false) => {
                    self.release(&id);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(job = %id, error = %e, "could not record a replay's start; not started");
                    self.store_backoff = Some(now + self.args.config.poll);
                    return;
                }
            }
            let left = Duration::from_millis(job.expires_ms.saturating_sub(now_ms));
            let timeout = self.args.config.run_timeout.map(|t| t.min(left));
            let call = replay_call(&job, timeout);
            if let Some(w) = self.held.get_mut(&id) {
                w.job = job;
            }
            self.running.insert(id.clone());
            let run = runner.clone();
            let me = myself.clone();
            tokio::spawn(async move {
                let result = run(call).await;
                let _ = me.cast(QueueMsg::Ran { id, result });
            });
        }
    }

    async fn ran(&mut self, id: String, result: Result<Reply, Error>, now: Instant) {
        self.running.remove(&id);
        let Some(mut w) = self.held.remove(&id) else {
            return;
        };
        let now_ms = self.wall_ms(now);
        let state = match result {
            Ok(reply) if !reply.source.is_degraded() => JobState::Done {
                model: reply.model.clone(),
                status: reply.status,
                body: String::from_utf8_lossy(&reply.body).into_owned(),
                finished_ms: now_ms,
            },
            Err(Error::Rejected {
                model,
                status,
                body,
                ..
            }) => JobState::Failed {
                error: format!(
                    "{model} rejected the request with HTTP {status}: {}",
                    String::from_utf8_lossy(&body)
                ),
                status: Some(status),
                finished_ms: now_ms,
            },
            Err(e @ (Error::InvalidCall(_) | Error::UnknownModel(_))) => JobState::Failed {
                error: e.to_string(),
                status: None,
                finished_ms: now_ms,
            },
            other => {
                // Not answered now (the chain is still down, the runtime is restarting): try
                // again when the runtime says something recovers, or at the next poll.
                let (error, wait) = match &other {
                    Err(e) => (e.to_string(), e.retry_after()),
                    Ok(_) => ("a degraded answer is not an answer".to_owned(), None),
                };
                tracing::debug!(job = %id, error = %error, "replay not answered yet");
                w.job.state = JobState::Pending {
                    last_error: Some(error),
                };
                match self.args.store.update(&self.args.consumer, &w.job).await {
                    Ok(true) => {}
                    Ok(false) => {
                        self.held.insert(id.clone(), w);
                        self.release(&id);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(job = %id, error = %e, "could not record a replay's failure")
                    }
                }
                let wait = wait
                    .unwrap_or(self.args.config.poll)
                    .max(Duration::from_millis(1));
                w.not_before = now + wait;
                self.held.insert(id, w);
                return;
            }
        };
        if !self.finish(w.job.clone(), state).await {
            w.not_before = now + self.args.config.poll;
            self.held.insert(id, w);
        }
    }

    /// The next instant something is due: an expiry, a claim, a purge, or a replay when a slot
    /// is free (a full house is woken by the next `Ran` instead). Always later than `now`.
    fn next_wake(&self, now: Instant) -> Option<Instant> {
        let backoff = self.store_backoff.filter(|until| *until > now);
        let later = |at: Instant| backoff.map_or(at, |until| at.max(until));
        let expiry = self
            .held
            .iter()
            .filter(|(id, _)| !self.running.contains(*id))
            .map(|(_, w)| later(self.expiry_at(&w.job)))
            .min();
        let replay = if self.args.runner.get().is_none() {
            // Replays wait for the runner; look again at the next poll.
            (!self.held.is_empty()).then(|| now + self.args.config.poll)
        } else if self.running.len() < self.args.config.concurrency {
            self.due_order()
                .into_iter()
                .map(|(_, due)| later(due))
                .min()
        } else {
            None
        };
        let next = [expiry, replay, Some(self.next_purge), Some(self.next_claim)]
            .into_iter()
            .flatten()
            .min();
        // Never a wake at `now` itself: whatever was due now has just been handled.
        next.map(|n| n.max(now + Duration::from_millis(1)))
    }
}

/// Hand `reply` the job once the store has it final: a job this queue does not hold finishes
/// elsewhere. Ends when the caller stops waiting or the job is unknown.
fn watch(store: &Arc<dyn JobStore>, id: String, mut reply: oneshot::Sender<Job>, every: Duration) {
    let store = store.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = reply.closed() => return,
                _ = tokio::time::sleep(every) => {}
            }
            match store.get(&id).await {
                Ok(Some(job)) if job.state.is_final() => {
                    let _ = reply.send(job);
                    return;
                }
                // Unknown (purged): the caller's own lookup says so.
                Ok(None) => return,
                // Pending elsewhere, or the store is down for now: look again.
                _ => {}
            }
        }
    });
}

/// The call a job replays: the stored request on the background lane, keyed by the job id.
fn replay_call(job: &Job, timeout: Option<Duration>) -> Call {
    let mut call = Call::from_parts(job.request.clone())
        .chain(&job.chain)
        .idempotency_key(&job.id)
        .lane(Lane::Background);
    call.forward.version = job.anthropic_version.clone();
    call.forward.beta = job.anthropic_beta.clone();
    call.feature = job.feature.clone();
    call.tenant = job.tenant.clone();
    call.job = Some(job.id.clone());
    call.timeout = timeout;
    call
}

impl Actor for QueueActor {
    type Msg = QueueMsg;
    type State = QueueState;
    type Arguments = QueueArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: QueueArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let now = clock::now();
        let anchor_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        let keep_finished = args.config.keep_finished;
        let mut state = QueueState {
            args,
            anchor_ms,
            anchor_at: now,
            held: BTreeMap::new(),
            running: HashSet::new(),
            waiters: HashMap::new(),
            ids: std::collections::hash_map::RandomState::new(),
            seq: 0,
            store_backoff: None,
            next_purge: now + purge_every(keep_finished),
            next_claim: now,
            resumed: false,
            timer: Timer::default(),
        };
        let keep = state.args.config.keep_finished.as_millis() as u64;
        match state
            .args
            .store
            .purge_finished(anchor_ms.saturating_sub(keep))
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, "purged old finished jobs"),
            Err(e) => tracing::warn!(error = %e, "could not purge finished jobs"),
        }
        // Whatever was accepted before a crash or restart is replayed now.
        state.claim(now).await;
        if !state.held.is_empty() {
            tracing::info!(
                jobs = state.held.len(),
                "resuming pending jobs from the store"
            );
        }
        state.expire(now).await;
        let next = state.next_wake(now);
        state.timer.rearm(&myself, next, now, QueueMsg::Timer);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let now = clock::now();
        match msg {
            QueueMsg::Enqueue { chain, call, reply } => {
                // A caller that stopped waiting has already been answered otherwise: storing
                // its call now would run a job nobody can ask about.
                if !reply.is_closed() {
                    let stored = state.enqueue(chain, *call, now).await;
                    if let Err(ractor::MessagingErr::SendErr(Ok(job))) = reply.send(stored) {
                        state.disown(job, now).await;
                    }
                }
            }
            QueueMsg::Get { id, reply } => {
                let job = match state.held.get(&id) {
                    Some(w) => Ok(Some(w.job.clone())),
                    None => state.args.store.get(&id).await,
                };
                let _ = reply.send(job);
            }
            QueueMsg::Wait { id, reply } => {
                if state.held.contains_key(&id) {
                    let waiters = state.waiters.entry(id).or_default();
                    // Callers whose wait ended are gone: do not keep their senders.
                    waiters.retain(|w| !w.is_closed());
                    waiters.push(reply);
                } else {
                    match state.args.store.get(&id).await {
                        Ok(Some(job)) if job.state.is_final() => {
                            let _ = reply.send(job);
                        }
                        // Unknown: dropped unanswered.
                        Ok(None) => {}
                        // Held by another instance, or the store is down for now.
                        _ => watch(&state.args.store, id, reply, state.args.config.poll),
                    }
                }
            }
            QueueMsg::Count(reply) => {
                let running = state.running.len();
                let _ = reply.send((state.held.len().saturating_sub(running), running));
            }
            QueueMsg::Ran { id, result } => state.ran(id, result, now).await,
            QueueMsg::Timer(epoch) => {
                if !state.timer.fired(epoch) {
                    return Ok(()); // stale: the next wake moved
                }
            }
            QueueMsg::InjectPanic => panic!("injected panic in the queue"),
        }
        state.claim(now).await;
        state.expire(now).await;
        state.purge(now).await;
        state.start_due(&myself, now).await;
        let next = state.next_wake(now);
        state.timer.rearm(&myself, next, now, QueueMsg::Timer);
        Ok(())
    }
}
