//! The durable queue for later: when no model of a chain can answer and the chain allows it
//! (`Degrade::Queue`), the call is stored and the caller gets a job id at once; the
//! `QueueActor` replays stored jobs on the background lane as models recover.
//!
//! Hand-written: when and how a stored call is replayed is the product. Storage is not: a
//! [`JobStore`] persists jobs (the `seawall` crate ships one on redb, an embedded file with no
//! server; [`MemoryJobStore`] keeps them in memory for tests and ephemeral use).
//!
//! Rules:
//! - a job is written to the store *before* its id is handed out: an accepted job survives a
//!   crash or `kill -9` of the process; on start, every pending job is loaded and replayed;
//! - this actor is the store's only writer, and a job leaves `Pending` exactly once: `Done`
//!   (a live answer), `Failed` (a permanent rejection: never retried) or `Expired` (its TTL
//!   passed first). Each outcome is stored, announced as [`Event::Job`] and handed to waiters;
//! - replays run as ordinary calls on [`Lane::Background`] with the job id as idempotency key
//!   (forwarded upstream), so a replay cut short by a crash and run again is recognisable
//!   upstream, and budget goes to interactive callers first;
//! - a replay that finds the chain still down fails fast inside the runtime (open breakers and
//!   empty buckets cost no upstream call) and is tried again at its `retry_after` or the next
//!   poll; one failing job per chain holds back that chain's younger jobs, so a down chain
//!   costs one cheap check per poll, not one per job.
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
use crate::job::{Job, JobState, JobStore, QueueConfig};
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
    /// By id: ids sort in acceptance order, so iteration is oldest first without a sort.
    pending: BTreeMap<String, Waiting>,
    running: HashSet<String>,
    waiters: HashMap<String, Vec<oneshot::Sender<Job>>>,
    /// Keyed by the OS's randomness (std's `RandomState`): job ids cannot be predicted from
    /// other ids, so holding one id reveals nobody else's answer.
    ids: std::collections::hash_map::RandomState,
    seq: u64,
    /// A store write failed: leave expiries alone until then (no retry storm on a full disk).
    store_backoff: Option<Instant>,
    /// When finished jobs older than `keep_finished` are next purged.
    next_purge: Instant,
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
        self.anchor_at + Duration::from_millis(job.expires_ms.saturating_sub(self.anchor_ms))
    }

    fn enqueue(&mut self, chain: String, call: Call, now: Instant) -> Result<Job, String> {
        if self.pending.len() >= self.args.config.max_pending {
            return Err(format!(
                "the queue is full ({} jobs pending, max_pending)",
                self.pending.len()
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
        self.args.store.put(&job)?;
        tracing::info!(job = %job.id, chain = %job.chain, "queued for later");
        metrics::counter!("seawall_jobs_total", "chain" => job.chain.clone(), "outcome" => "queued")
            .increment(1);
        // Not before the next poll: it was queued because nothing could answer just now.
        let not_before = now + self.args.config.poll;
        self.pending.insert(
            job.id.clone(),
            Waiting {
                job: job.clone(),
                not_before,
            },
        );
        Ok(job)
    }

    /// Store a final state and tell everyone; false when the store refused (it stays pending).
    fn finish(&mut self, mut job: Job, state: JobState) -> bool {
        job.state = state;
        if let Err(e) = self.args.store.put(&job) {
            tracing::error!(job = %job.id, error = %e, "could not store a job's outcome; it stays pending");
            return false;
        }
        let outcome = job.state.as_str();
        tracing::info!(job = %job.id, chain = %job.chain, outcome, runs = job.runs, "job finished");
        metrics::counter!("seawall_jobs_total", "chain" => job.chain.clone(), "outcome" => outcome)
            .increment(1);
        let _ = self.args.events.send(Event::Job {
            id: job.id.clone(),
            chain: job.chain.clone(),
            outcome,
        });
        for w in self.waiters.remove(&job.id).unwrap_or_default() {
            let _ = w.send(job.clone());
        }
        true
    }

    /// A job stored for a caller who was gone before it learnt the id: it must not run.
    fn disown(&mut self, job: Job, now: Instant) {
        if self.pending.remove(&job.id).is_some() {
            let state = JobState::Failed {
                error: "not accepted: the caller had stopped waiting before it got the job id"
                    .into(),
                status: None,
                finished_ms: self.wall_ms(now),
            };
            self.finish(job, state);
        }
    }

    /// Expire what is past its TTL and is not running (a running replay may still answer).
    fn expire(&mut self, now: Instant) {
        if self.store_backoff.is_some_and(|until| until > now) {
            return;
        }
        self.store_backoff = None;
        let now_ms = self.wall_ms(now);
        let due: Vec<String> = self
            .pending
            .iter()
            .filter(|(id, w)| w.job.expires_ms <= now_ms && !self.running.contains(*id))
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            if let Some(w) = self.pending.remove(&id) {
                let last_error = match &w.job.state {
                    JobState::Pending { last_error } => last_error.clone(),
                    _ => None,
                };
                let state = JobState::Expired {
                    last_error,
                    finished_ms: now_ms,
                };
                if !self.finish(w.job.clone(), state) {
                    self.pending.insert(id, w);
                    self.store_backoff = Some(now + self.args.config.poll);
                    return;
                }
            }
        }
    }

    /// Delete finished jobs past `keep_finished`, when it is time.
    fn purge(&mut self, now: Instant) {
        if now < self.next_purge {
            return;
        }
        let keep = self.args.config.keep_finished;
        self.next_purge = now + purge_every(keep);
        let before = self.wall_ms(now).saturating_sub(keep.as_millis() as u64);
        match self.args.store.purge_finished(before) {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, "purged old finished jobs"),
            Err(e) => tracing::warn!(error = %e, "could not purge finished jobs"),
        }
    }

    /// Waiting jobs (not running), oldest first, each with the instant it becomes due: its own
    /// `not_before`, but never before the chain's oldest waiting job is due. A chain whose oldest
    /// job failed recently holds its younger jobs back: a down chain costs one check per wake.
    fn due_order(&self) -> Vec<(String, Instant)> {
        let mut gate: HashMap<&str, Instant> = HashMap::new();
        self.pending
            .iter()
            .filter(|(id, _)| !self.running.contains(*id))
            .map(|(id, w)| {
                let chain_gate = *gate.entry(w.job.chain.as_str()).or_insert(w.not_before);
                (id.clone(), w.not_before.max(chain_gate))
            })
            .collect()
    }

    /// Start the due replays, oldest first, up to the concurrency limit.
    fn start_due(&mut self, myself: &ActorRef<QueueMsg>, now: Instant) {
        let Some(runner) = self.args.runner.get().cloned() else {
            return;
        };
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
            let Some(w) = self.pending.get_mut(&id) else {
                continue;
            };
            w.job.runs += 1;
            let left = Duration::from_millis(w.job.expires_ms.saturating_sub(now_ms));
            let timeout = self.args.config.run_timeout.map(|t| t.min(left));
            let call = replay_call(&w.job, timeout);
            self.running.insert(id.clone());
            let run = runner.clone();
            let me = myself.clone();
            tokio::spawn(async move {
                let result = run(call).await;
                let _ = me.cast(QueueMsg::Ran { id, result });
            });
        }
    }

    fn ran(&mut self, id: String, result: Result<Reply, Error>, now: Instant) {
        self.running.remove(&id);
        let Some(mut w) = self.pending.remove(&id) else {
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
                if let Err(e) = self.args.store.put(&w.job) {
                    tracing::warn!(job = %id, error = %e, "could not record a replay's failure");
                }
                let wait = wait
                    .unwrap_or(self.args.config.poll)
                    .max(Duration::from_millis(1));
                w.not_before = now + wait;
                self.pending.insert(id, w);
                return;
            }
        };
        if !self.finish(w.job.clone(), state) {
            w.not_before = now + self.args.config.poll;
            self.pending.insert(id, w);
        }
    }

    /// The next instant something is due: an expiry, or a replay when a slot is free (a full
    /// house is woken by the next `Ran` instead). Always later than `now`.
    fn next_wake(&self, now: Instant) -> Option<Instant> {
        let expiry = self
            .pending
            .iter()
            .filter(|(id, _)| !self.running.contains(*id))
            .map(|(_, w)| match self.store_backoff {
                Some(until) => self.expiry_at(&w.job).max(until),
                None => self.expiry_at(&w.job),
            })
            .min();
        let replay = if self.args.runner.get().is_none() {
            // Replays wait for the runner; look again at the next poll.
            (!self.pending.is_empty()).then(|| now + self.args.config.poll)
        } else if self.running.len() < self.args.config.concurrency {
            self.due_order().into_iter().map(|(_, due)| due).min()
        } else {
            None
        };
        let next = [expiry, replay, Some(self.next_purge)]
            .into_iter()
            .flatten()
            .min();
        // Never a wake at `now` itself: whatever was due now has just been handled.
        next.map(|n| n.max(now + Duration::from_millis(1)))
    }
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
            pending: BTreeMap::new(),
            running: HashSet::new(),
            waiters: HashMap::new(),
            ids: std::collections::hash_map::RandomState::new(),
            seq: 0,
            store_backoff: None,
            next_purge: now + purge_every(keep_finished),
            timer: Timer::default(),
        };
        // Whatever was accepted before a crash or restart is replayed now.
        let keep = state.args.config.keep_finished.as_millis() as u64;
        match state
            .args
            .store
            .purge_finished(anchor_ms.saturating_sub(keep))
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, "purged old finished jobs"),
            Err(e) => tracing::warn!(error = %e, "could not purge finished jobs"),
        }
        let loaded = state.args.store.pending()?;
        if !loaded.is_empty() {
            tracing::info!(jobs = loaded.len(), "resuming pending jobs from the store");
        }
        for job in loaded {
            state.pending.insert(
                job.id.clone(),
                Waiting {
                    job,
                    not_before: now,
                },
            );
        }
        state.expire(now);
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
                    let stored = state.enqueue(chain, *call, now);
                    if let Err(ractor::MessagingErr::SendErr(Ok(job))) = reply.send(stored) {
                        state.disown(job, now);
                    }
                }
            }
            QueueMsg::Get { id, reply } => {
                let job = match state.pending.get(&id) {
                    Some(w) => Ok(Some(w.job.clone())),
                    None => state.args.store.get(&id),
                };
                let _ = reply.send(job);
            }
            QueueMsg::Wait { id, reply } => {
                if state.pending.contains_key(&id) {
                    let waiters = state.waiters.entry(id).or_default();
                    // Callers whose wait ended are gone: do not keep their senders.
                    waiters.retain(|w| !w.is_closed());
                    waiters.push(reply);
                } else if let Ok(Some(job)) = state.args.store.get(&id) {
                    let _ = reply.send(job);
                }
            }
            QueueMsg::Count(reply) => {
                let running = state.running.len();
                let _ = reply.send((state.pending.len().saturating_sub(running), running));
            }
            QueueMsg::Ran { id, result } => state.ran(id, result, now),
            QueueMsg::Timer(epoch) => {
                if !state.timer.fired(epoch) {
                    return Ok(()); // stale: the next wake moved
                }
            }
            QueueMsg::InjectPanic => panic!("injected panic in the queue"),
        }
        state.expire(now);
        state.purge(now);
        state.start_due(&myself, now);
        let next = state.next_wake(now);
        state.timer.rearm(&myself, next, now, QueueMsg::Timer);
        Ok(())
    }
}
