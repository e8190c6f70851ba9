//! A queued call as stored ([`Job`]), where it stands ([`JobState`]), and where jobs are kept
//! ([`JobStore`]): the data of the durable queue for later, apart from the actor that runs it
//! (`QueueActor`), so stores and status pages need no runtime.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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

/// Where jobs are persisted. Implementations must make `put` durable before returning: an id is
/// handed out only after its job is stored.
pub trait JobStore: Send + Sync + 'static {
    /// Insert or replace a job.
    fn put(&self, job: &Job) -> Result<(), String>;
    /// One job by id.
    fn get(&self, id: &str) -> Result<Option<Job>, String>;
    /// Every pending job, oldest first.
    fn pending(&self) -> Result<Vec<Job>, String>;
    /// Delete finished jobs that finished before `before_ms`; returns how many.
    fn purge_finished(&self, before_ms: u64) -> Result<usize, String>;
}

/// Jobs in memory: lost with the process. For tests and for deployments that want the queue's
/// replay without durability.
#[derive(Default)]
pub struct MemoryJobStore {
    jobs: Mutex<HashMap<String, Job>>,
}

impl MemoryJobStore {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, HashMap<String, Job>>, String> {
        self.jobs
            .lock()
            .map_err(|_| "the in-memory job store was poisoned".to_owned())
    }
}

impl JobStore for MemoryJobStore {
    fn put(&self, job: &Job) -> Result<(), String> {
        self.lock()?.insert(job.id.clone(), job.clone());
        Ok(())
    }

    fn get(&self, id: &str) -> Result<Option<Job>, String> {
        Ok(self.lock()?.get(id).cloned())
    }

    fn pending(&self) -> Result<Vec<Job>, String> {
        let mut jobs: Vec<Job> = self
            .lock()?
            .values()
            .filter(|j| !j.state.is_final())
            .cloned()
            .collect();
        jobs.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        Ok(jobs)
    }

    fn purge_finished(&self, before_ms: u64) -> Result<usize, String> {
        let mut jobs = self.lock()?;
        let before = jobs.len();
        jobs.retain(|_, j| finished_ms(&j.state).is_none_or(|at| at >= before_ms));
        Ok(before - jobs.len())
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
    /// Check the settings; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        for (name, d) in [
            ("ttl", self.ttl),
            ("poll", self.poll),
            ("run_timeout", self.run_timeout.unwrap_or(Duration::MAX)),
        ] {
            if d.is_zero() {
                return Err(format!("queue {name} must be longer than zero"));
            }
        }
        if self.concurrency == 0 {
            return Err("queue concurrency must be at least 1".into());
        }
        if self.max_pending == 0 {
            return Err("queue max_pending must be at least 1".into());
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

    #[test]
    fn the_memory_store_lists_pending_oldest_first_and_purges_only_old_finished_jobs() {
        let s = MemoryJobStore::default();
        let pending = JobState::Pending { last_error: None };
        s.put(&job("b", 20, pending.clone())).unwrap();
        s.put(&job("a", 10, pending.clone())).unwrap();
        let done = |at| JobState::Expired {
            last_error: None,
            finished_ms: at,
        };
        s.put(&job("old", 5, done(100))).unwrap();
        s.put(&job("new", 6, done(300))).unwrap();
        let ids: Vec<String> = s.pending().unwrap().into_iter().map(|j| j.id).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(s.purge_finished(200).unwrap(), 1);
        assert!(s.get("old").unwrap().is_none());
        assert!(s.get("new").unwrap().is_some());
        assert!(s.get("a").unwrap().is_some());
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
        assert!(bad.validate().unwrap_err().contains("concurrency"));
        let bad = QueueConfig {
            ttl: Duration::ZERO,
            ..QueueConfig::default()
        };
        assert!(bad.validate().unwrap_err().contains("ttl"));
    }
}
