//! A queued call as stored ([`Job`]), where it stands ([`JobState`]), and where jobs are kept
//! ([`JobStore`]): the data of the durable queue for later, apart from the actor that runs it
//! (`QueueActor`), so stores and status pages need no runtime.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::policy::invalid::Invalid;

/// A stored call and what became of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// `job_` + creation time, a counter and a random part, in hex: sorts in acceptance
    /// order, unique across restarts.
    pub id: String,
    /// The chain the call walks.
    pub chain: String,
    /// The request body as the caller sent it.
    pub request: Map<String, Value>,
    /// The caller's `anthropic-version`, forwarded on replay.
    pub anthropic_version: Option<String>,
    /// The caller's `anthropic-beta`, forwarded on replay.
    pub anthropic_beta: Option<String>,
    /// The caller's feature (its bulkhead applies on replay).
    pub feature: Option<String>,
    /// The caller's tenant ([`Call::tenant`]): only the same tenant may read the job.
    #[serde(default)]
    pub tenant: Option<String>,
    /// When it was accepted (ms since the Unix epoch).
    pub created_ms: u64,
    /// When it expires if still pending (ms since the Unix epoch).
    pub expires_ms: u64,
    /// Replays started so far.
    pub runs: u32,
    /// Where it stands.
    pub state: JobState,
}

/// Where a job stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum JobState {
    /// Waiting to be replayed.
    Pending {
        /// Why the last replay did not answer, if one ran.
        last_error: Option<String>,
    },
    /// Answered live.
    Done {
        /// The model that served it.
        model: String,
        /// The upstream's HTTP status.
        status: u16,
        /// The answer's body (a Messages JSON object).
        body: String,
        /// When (ms since the Unix epoch).
        finished_ms: u64,
    },
    /// Rejected permanently (a malformed request, a revoked key): not retried.
    Failed {
        /// What went wrong.
        error: String,
        /// The upstream's status, when it answered.
        status: Option<u16>,
        /// When (ms since the Unix epoch).
        finished_ms: u64,
    },
    /// Its TTL passed before any model could answer.
    Expired {
        /// Why the last replay did not answer, if one ran.
        last_error: Option<String>,
        /// When (ms since the Unix epoch).
        finished_ms: u64,
    },
}

impl JobState {
    /// A short stable name: `pending`, `done`, `failed`, `expired`.
    pub fn as_str(&self) -> &'static str {
        match self {
            JobState::Pending { .. } => "pending",
            JobState::Done { .. } => "done",
            JobState::Failed { .. } => "failed",
            JobState::Expired { .. } => "expired",
        }
    }

    /// True once the job has its final outcome.
    pub fn is_final(&self) -> bool {
        !matches!(self, JobState::Pending { .. })
    }
}

/// What a store call returns: a boxed future, so the trait stays object-safe.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, String>> + Send + 'a>>;

/// What [`JobStore::finish`] found.
#[derive(Clone, Debug, PartialEq)]
pub enum Finished {
    /// The final state was stored now: the caller announces it.
    Stored,
    /// The job was already final (another instance or an earlier run finished it): this is the
    /// stored job; the caller must not announce it again.
    Already(Box<Job>),
    /// No such job (purged long after it finished, or never stored).
    Unknown,
}

/// Where jobs are kept, and who replays which: the seam between the queue and its storage.
///
/// Async because a fleet's store talks to a server over the network: the queue awaits these
/// calls in its handlers (accepted for the queue, never for the breaker or the governor), and a
/// store never blocks a tokio worker (the redb store does its file I/O on
/// `tokio::task::spawn_blocking`, the in-memory one is immediate, the Redis one is async I/O
/// with bounded timeouts). One async trait rather than a sync one plus an async twin: one set of
/// semantics, one queue, every store.
///
/// Claiming: a job is stored with [`put`](JobStore::put), handed to one consumer by
/// [`claim`](JobStore::claim), and acknowledged only by [`finish`](JobStore::finish) once its
/// final state is stored; a consumer that is gone (its process died) loses its jobs to the next
/// claim by another. A single-process store has one consumer at a time: a claim by a new
/// consumer (the process restarted) takes over everything pending.
pub trait JobStore: Send + Sync + 'static {
    /// The consumer name this process must claim under, when the store fixes it (a fleet store
    /// names the instance whose heartbeat vouches for it). `None`: the queue picks one per
    /// runtime.
    fn consumer(&self) -> Option<String> {
        None
    }
    /// Store a new, pending job and make it claimable. Durable before it returns: an id is
    /// handed out only after its job is stored.
    fn put<'a>(&'a self, job: &'a Job) -> StoreFuture<'a, ()>;
    /// One job by id, wherever it is held.
    fn get<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<Job>>;
    /// Up to `max` pending jobs `consumer` may replay now and does not hold yet: new ones, and
    /// ones held by consumers that are gone. Oldest first.
    fn claim<'a>(&'a self, consumer: &'a str, max: usize) -> StoreFuture<'a, Vec<Job>>;
    /// The pending jobs `consumer` already holds: its queue restarted and lost track of them.
    fn held<'a>(&'a self, consumer: &'a str) -> StoreFuture<'a, Vec<Job>>;
    /// Record a held job's progress (`runs`, `last_error`) before and after a replay. `false`:
    /// `consumer` may not replay it (it is final, or another consumer holds it now): let it go.
    fn update<'a>(&'a self, consumer: &'a str, job: &'a Job) -> StoreFuture<'a, bool>;
    /// Store `job`'s final state if the stored job is still pending, then acknowledge it:
    /// exactly one finisher gets [`Finished::Stored`].
    fn finish<'a>(&'a self, job: &'a Job) -> StoreFuture<'a, Finished>;
    /// Delete finished jobs that finished before `before_ms`; returns how many.
    fn purge_finished(&self, before_ms: u64) -> StoreFuture<'_, usize>;
    /// Pending jobs in the store, held or not (the bound `max_pending` applies to).
    fn pending_count(&self) -> StoreFuture<'_, usize>;
}

/// Jobs in memory: lost with the process. For tests and for deployments that want the queue's
/// replay without durability.
#[derive(Default)]
pub struct MemoryJobStore {
    inner: Mutex<Memory>,
}

#[derive(Default)]
struct Memory {
    jobs: HashMap<String, Job>,
    /// Pending job id -> the consumer holding it.
    holders: HashMap<String, String>,
}

impl MemoryJobStore {
    fn with<T>(&self, f: impl FnOnce(&mut Memory) -> T) -> Result<T, String> {
        let mut m = self
            .inner
            .lock()
            .map_err(|_| "the in-memory job store was poisoned".to_owned())?;
        Ok(f(&mut m))
    }

    fn ready<'a, T: Send + 'a>(r: Result<T, String>) -> StoreFuture<'a, T> {
        Box::pin(std::future::ready(r))
    }
}

impl Memory {
    /// Pending jobs matching `keep`, oldest first.
    fn pending_where(&self, keep: impl Fn(&str) -> bool) -> Vec<Job> {
        let mut jobs: Vec<Job> = self
            .jobs
            .values()
            .filter(|j| !j.state.is_final() && keep(&j.id))
            .cloned()
            .collect();
        jobs.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        jobs
    }
}

impl JobStore for MemoryJobStore {
    fn put<'a>(&'a self, job: &'a Job) -> StoreFuture<'a, ()> {
        Self::ready(self.with(|m| {
            m.jobs.insert(job.id.clone(), job.clone());
        }))
    }

    fn get<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<Job>> {
        Self::ready(self.with(|m| m.jobs.get(id).cloned()))
    }

    fn claim<'a>(&'a self, consumer: &'a str, max: usize) -> StoreFuture<'a, Vec<Job>> {
        Self::ready(self.with(|m| {
            // One process: a job held by another consumer belongs to a previous run.
            let holders = &m.holders;
            let mut jobs =
                m.pending_where(|id| holders.get(id).is_none_or(|h| h.as_str() != consumer));
            jobs.truncate(max);
            for j in &jobs {
                m.holders.insert(j.id.clone(), consumer.to_owned());
            }
            jobs
        }))
    }

    fn held<'a>(&'a self, consumer: &'a str) -> StoreFuture<'a, Vec<Job>> {
        Self::ready(self.with(|m| {
            let holders = &m.holders;
            m.pending_where(|id| holders.get(id).is_some_and(|h| h.as_str() == consumer))
        }))
    }

    fn update<'a>(&'a self, consumer: &'a str, job: &'a Job) -> StoreFuture<'a, bool> {
        Self::ready(self.with(|m| {
            let pending = m.jobs.get(&job.id).is_some_and(|j| !j.state.is_final());
            let mine = m.holders.get(&job.id).is_some_and(|h| h == consumer);
            if pending && mine && !job.state.is_final() {
                m.jobs.insert(job.id.clone(), job.clone());
            }
            pending && mine
        }))
    }

    fn finish<'a>(&'a self, job: &'a Job) -> StoreFuture<'a, Finished> {
        Self::ready(self.with(|m| {
            m.holders.remove(&job.id);
            match m.jobs.get(&job.id) {
                None => Finished::Unknown,
                Some(stored) if stored.state.is_final() => {
                    Finished::Already(Box::new(stored.clone()))
                }
                Some(_) => {
                    m.jobs.insert(job.id.clone(), job.clone());
                    Finished::Stored
                }
            }
        }))
    }

    fn purge_finished(&self, before_ms: u64) -> StoreFuture<'_, usize> {
        Self::ready(self.with(|m| {
            let before = m.jobs.len();
            m.jobs
                .retain(|_, j| finished_ms(&j.state).is_none_or(|at| at >= before_ms));
            before - m.jobs.len()
        }))
    }

    fn pending_count(&self) -> StoreFuture<'_, usize> {
        Self::ready(self.with(|m| m.jobs.values().filter(|j| !j.state.is_final()).count()))
    }
}

/// When a final state was reached.
pub fn finished_ms(state: &JobState) -> Option<u64> {
    match state {
        JobState::Pending { .. } => None,
        JobState::Done { finished_ms, .. }
        | JobState::Failed { finished_ms, .. }
        | JobState::Expired { finished_ms, .. } => Some(*finished_ms),
    }
}

/// How the queue behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// A job not answered within this long after it was accepted expires.
    pub ttl: Duration,
    /// How often pending jobs are looked at when nothing else wakes the queue.
    pub poll: Duration,
    /// Replays in flight at once.
    pub concurrency: usize,
    /// The deadline of one replay. `None` (the default): the chain's own deadline, so a replay
    /// gets the time a live call would, and a walk that cannot recover within it hands back at
    /// once with a `retry_after` the queue waits out without holding a slot. `Some(d)`: at most
    /// `d` and at most what is left of the job's TTL. A replay started before the TTL may finish
    /// after it.
    pub run_timeout: Option<Duration>,
    /// Finished jobs stay retrievable this long, then are purged from the store.
    pub keep_finished: Duration,
    /// At most this many jobs pending at once; past it a call is not queued (the chain's next
    /// degradation or the honest error answers it), so a long outage cannot exhaust memory.
    pub max_pending: usize,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(3600),
            poll: Duration::from_secs(1),
            concurrency: 2,
            run_timeout: None,
            keep_finished: Duration::from_secs(24 * 3600),
            max_pending: 10_000,
        }
    }
}

impl QueueConfig {
    /// Check the settings.
    pub fn validate(&self) -> Result<(), Invalid> {
        for (name, d) in [
            ("ttl", self.ttl),
            ("poll", self.poll),
            ("run_timeout", self.run_timeout.unwrap_or(Duration::MAX)),
        ] {
            if d.is_zero() {
                return Err(Invalid::new(name, "must be longer than zero"));
            }
        }
        if self.concurrency == 0 {
            return Err(Invalid::new("concurrency", "must be at least 1"));
        }
        if self.max_pending == 0 {
            return Err(Invalid::new("max_pending", "must be at least 1"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, created_ms: u64, state: JobState) -> Job {
        Job {
            id: id.into(),
            chain: "c".into(),
            request: Map::new(),
            anthropic_version: None,
            anthropic_beta: None,
            feature: None,
            tenant: None,
            created_ms,
            expires_ms: created_ms + 1000,
            runs: 0,
            state,
        }
    }

    #[tokio::test]
    async fn the_memory_store_hands_out_pending_jobs_oldest_first_and_purges_only_old_finished_jobs(
    ) {
        let s = MemoryJobStore::default();
        let pending = JobState::Pending { last_error: None };
        s.put(&job("b", 20, pending.clone())).await.unwrap();
        s.put(&job("a", 10, pending.clone())).await.unwrap();
        let done = |at| JobState::Expired {
            last_error: None,
            finished_ms: at,
        };
        s.put(&job("old", 5, done(100))).await.unwrap();
        s.put(&job("new", 6, done(300))).await.unwrap();
        assert_eq!(s.pending_count().await.unwrap(), 2);
        let ids: Vec<String> = s
            .claim("c1", 10)
            .await
            .unwrap()
            .into_iter()
            .map(|j| j.id)
            .collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(s.purge_finished(200).await.unwrap(), 1);
        assert!(s.get("old").await.unwrap().is_none());
        assert!(s.get("new").await.unwrap().is_some());
        assert!(s.get("a").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn the_memory_store_has_one_consumer_and_finishes_each_job_once() {
        let s = MemoryJobStore::default();
        for (id, at) in [("a", 1), ("b", 2), ("c", 3)] {
            s.put(&job(id, at, JobState::Pending { last_error: None }))
                .await
                .unwrap();
        }
        let first: Vec<String> = s
            .claim("c1", 2)
            .await
            .unwrap()
            .into_iter()
            .map(|j| j.id)
            .collect();
        assert_eq!(first, ["a", "b"], "at most max, oldest first");
        let rest: Vec<String> = s
            .claim("c1", 9)
            .await
            .unwrap()
            .into_iter()
            .map(|j| j.id)
            .collect();
        assert_eq!(rest, ["c"], "what it holds is not handed out again");
        assert_eq!(s.held("c1").await.unwrap().len(), 3);
        // A new consumer is the next process: it takes over everything pending.
        assert_eq!(s.claim("c2", 9).await.unwrap().len(), 3);
        let mut a = s.get("a").await.unwrap().unwrap();
        a.runs = 1;
        assert!(!s.update("c1", &a).await.unwrap(), "c1 lost it to c2");
        assert!(s.update("c2", &a).await.unwrap());
        assert_eq!(s.get("a").await.unwrap().unwrap().runs, 1);
        let mut fin = a.clone();
        fin.state = JobState::Expired {
            last_error: None,
            finished_ms: 9,
        };
        assert_eq!(s.finish(&fin).await.unwrap(), Finished::Stored);
        let mut again = a.clone();
        again.state = JobState::Failed {
            error: "late".into(),
            status: None,
            finished_ms: 10,
        };
        assert_eq!(
            s.finish(&again).await.unwrap(),
            Finished::Already(Box::new(fin.clone()))
        );
        assert!(
            !s.update("c2", &a).await.unwrap(),
            "final: never pending again"
        );
        assert_eq!(s.get("a").await.unwrap().unwrap().state, fin.state);
        assert_eq!(
            s.finish(&job("zz", 1, fin.state.clone())).await.unwrap(),
            Finished::Unknown
        );
        assert_eq!(s.pending_count().await.unwrap(), 2);
    }

    #[test]
    fn jobs_round_trip_through_json_with_their_state() {
        let j = job(
            "x",
            1,
            JobState::Done {
                model: "m".into(),
                status: 200,
                body: "{}".into(),
                finished_ms: 9,
            },
        );
        let text = serde_json::to_string(&j).unwrap();
        assert!(text.contains("\"state\":\"done\""), "{text}");
        assert_eq!(serde_json::from_str::<Job>(&text).unwrap(), j);
    }

    #[test]
    fn config_errors_name_the_field() {
        let bad = QueueConfig {
            concurrency: 0,
            ..QueueConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().field, "concurrency");
        let bad = QueueConfig {
            ttl: Duration::ZERO,
            ..QueueConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().field, "ttl");
    }
}
