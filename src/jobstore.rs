//! The durable job store: the queue's jobs in one redb file (embedded, no server).
//!
//! Every write is its own transaction committed with redb's default durability (fsync before
//! `commit` returns), so a job whose id was handed out survives `kill -9` and power loss. Two
//! tables: `jobs` (id -> the job as JSON) and `pending` (ids of unfinished jobs). Job ids sort
//! in acceptance order, so `pending` iterates oldest first without a sort.
//!
//! The queue's calls are async; the file I/O (an fsync per write) runs on
//! `tokio::task::spawn_blocking`, never on a runtime worker. One process uses the file (redb
//! locks it: a second process opening the same store gets a clear error instead of two
//! writers), so there is one consumer at a time: who holds which pending job is kept in memory,
//! and a new consumer (the process restarted) takes over every pending job.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use seawall_actors::job::finished_ms;
use seawall_actors::{Finished, Job, JobStore, StoreFuture};

const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
const PENDING: TableDefinition<&str, ()> = TableDefinition::new("pending");

/// Jobs in a redb file.
#[derive(Clone)]
pub struct RedbJobStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    path: PathBuf,
    /// Pending job id -> the consumer holding it (this process only).
    holders: Mutex<HashMap<String, String>>,
}

impl std::fmt::Debug for RedbJobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbJobStore")
            .field("path", &self.inner.path)
            .finish()
    }
}

/// Turn any redb error into the store's message, naming the file.
fn err(path: &Path, what: &str, e: impl std::fmt::Display) -> String {
    format!("job store {}: {what}: {e}", path.display())
}

impl RedbJobStore {
    /// Open the store at `path`, creating the file (not its directory) if it does not exist.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, String> {
        let path = path.as_ref().to_path_buf();
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => err(
                &path,
                "cannot open",
                "another process has it open (one seawall per queue file)",
            ),
            e => err(&path, "cannot open", e),
        })?;
        // Create both tables once, so readers never meet a missing table.
        let tx = db.begin_write().map_err(|e| err(&path, "write", e))?;
        tx.open_table(JOBS).map_err(|e| err(&path, "write", e))?;
        tx.open_table(PENDING).map_err(|e| err(&path, "write", e))?;
        tx.commit().map_err(|e| err(&path, "commit", e))?;
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                path,
                holders: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Run `f` on a blocking thread: redb reads and fsyncs must not stall a runtime worker.
    fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, String> + Send + 'static,
    ) -> StoreFuture<'static, T> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let path = inner.path.clone();
            tokio::task::spawn_blocking(move || f(&inner))
                .await
                .map_err(|e| err(&path, "the store's worker thread failed", e))?
        })
    }
}

impl Inner {
    fn decode(&self, bytes: &[u8]) -> Result<Job, String> {
        serde_json::from_slice(bytes).map_err(|e| err(&self.path, "a stored job is unreadable", e))
    }

    fn holders(&self) -> Result<std::sync::MutexGuard<'_, HashMap<String, String>>, String> {
        self.holders
            .lock()
            .map_err(|_| err(&self.path, "holders", "poisoned"))
    }

    /// Write one job (its `pending` entry follows its state) in its own transaction; with
    /// `if_pending`, only while the stored job is pending (read and written in the same write
    /// transaction, which redb serialises). `Err(Some(stored))`/`Err(None)`: not written, the
    /// stored job is final / unknown.
    fn write(&self, job: &Job, if_pending: bool) -> Result<Result<(), Option<Job>>, String> {
        let p = &self.path;
        let bytes = serde_json::to_vec(job).map_err(|e| err(p, "encode", e))?;
        let tx = self.db.begin_write().map_err(|e| err(p, "write", e))?;
        {
            let mut jobs = tx.open_table(JOBS).map_err(|e| err(p, "write", e))?;
            if if_pending {
                let stored = match jobs.get(job.id.as_str()).map_err(|e| err(p, "read", e))? {
                    Some(v) => Some(self.decode(v.value())?),
                    None => None,
                };
                match stored {
                    Some(s) if !s.state.is_final() => {}
                    other => return Ok(Err(other)), // dropping `tx` aborts it
                }
            }
            jobs.insert(job.id.as_str(), bytes.as_slice())
                .map_err(|e| err(p, "write", e))?;
            let mut pending = tx.open_table(PENDING).map_err(|e| err(p, "write", e))?;
            if job.state.is_final() {
                pending
                    .remove(job.id.as_str())
                    .map_err(|e| err(p, "write", e))?;
            } else {
                pending
                    .insert(job.id.as_str(), ())
                    .map_err(|e| err(p, "write", e))?;
            }
        }
        tx.commit().map_err(|e| err(p, "commit", e))?;
        Ok(Ok(()))
    }

    fn read(&self, id: &str) -> Result<Option<Job>, String> {
        let p = &self.path;
        let tx = self.db.begin_read().map_err(|e| err(p, "read", e))?;
        let jobs = tx.open_table(JOBS).map_err(|e| err(p, "read", e))?;
        let found = jobs.get(id).map_err(|e| err(p, "read", e))?;
        found.map(|v| self.decode(v.value())).transpose()
    }

    /// Pending jobs whose id passes `keep`, oldest first, at most `max`.
    fn pending(&self, max: usize, keep: impl Fn(&str) -> bool) -> Result<Vec<Job>, String> {
        let p = &self.path;
        let tx = self.db.begin_read().map_err(|e| err(p, "read", e))?;
        let jobs = tx.open_table(JOBS).map_err(|e| err(p, "read", e))?;
        let pending = tx.open_table(PENDING).map_err(|e| err(p, "read", e))?;
        let mut out = Vec::new();
        for entry in pending.iter().map_err(|e| err(p, "read", e))? {
            if out.len() >= max {
                break;
            }
            let (id, _) = entry.map_err(|e| err(p, "read", e))?;
            if !keep(id.value()) {
                continue;
            }
            if let Some(v) = jobs.get(id.value()).map_err(|e| err(p, "read", e))? {
                out.push(self.decode(v.value())?);
            }
        }
        Ok(out)
    }
}

impl JobStore for RedbJobStore {
    fn put<'a>(&'a self, job: &'a Job) -> StoreFuture<'a, ()> {
        let job = job.clone();
        self.blocking(move |s| s.write(&job, false).map(|_| ()))
    }

    fn get<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<Job>> {
        let id = id.to_owned();
        self.blocking(move |s| s.read(&id))
    }

    fn claim<'a>(&'a self, consumer: &'a str, max: usize) -> StoreFuture<'a, Vec<Job>> {
        let consumer = consumer.to_owned();
        self.blocking(move |s| {
            // One process per file: a job held by another consumer belongs to a previous run
            // of the queue in this process.
            let holders = s.holders()?.clone();
            let jobs = s.pending(max, |id| holders.get(id) != Some(&consumer))?;
            let mut holders = s.holders()?;
            for j in &jobs {
                holders.insert(j.id.clone(), consumer.clone());
            }
            Ok(jobs)
        })
    }

    fn held<'a>(&'a self, consumer: &'a str) -> StoreFuture<'a, Vec<Job>> {
        let consumer = consumer.to_owned();
        self.blocking(move |s| {
            let holders = s.holders()?.clone();
            s.pending(usize::MAX, |id| holders.get(id) == Some(&consumer))
        })
    }

    fn update<'a>(&'a self, consumer: &'a str, job: &'a Job) -> StoreFuture<'a, bool> {
        let (consumer, job) = (consumer.to_owned(), job.clone());
        self.blocking(move |s| {
            if s.holders()?.get(&job.id) != Some(&consumer) || job.state.is_final() {
                return Ok(false);
            }
            Ok(s.write(&job, true)?.is_ok())
        })
    }

    fn finish<'a>(&'a self, job: &'a Job) -> StoreFuture<'a, Finished> {
        let job = job.clone();
        self.blocking(move |s| {
            let found = match s.write(&job, true)? {
                Ok(()) => Finished::Stored,
                Err(Some(stored)) => Finished::Already(Box::new(stored)),
                Err(None) => Finished::Unknown,
            };
            s.holders()?.remove(&job.id);
            Ok(found)
        })
    }

    fn purge_finished(&self, before_ms: u64) -> StoreFuture<'_, usize> {
        self.blocking(move |s| {
            let p = &s.path;
            let tx = s.db.begin_write().map_err(|e| err(p, "write", e))?;
            let mut purged = 0;
            {
                let mut jobs = tx.open_table(JOBS).map_err(|e| err(p, "write", e))?;
                jobs.retain(|_, bytes| {
                    // An unreadable record is kept: deleting what we cannot read could lose a job.
                    let old = serde_json::from_slice::<Job>(bytes)
                        .ok()
                        .and_then(|j| finished_ms(&j.state))
                        .is_some_and(|at| at < before_ms);
                    purged += usize::from(old);
                    !old
                })
                .map_err(|e| err(p, "write", e))?;
            }
            tx.commit().map_err(|e| err(p, "commit", e))?;
            Ok(purged)
        })
    }

    fn pending_count(&self) -> StoreFuture<'_, usize> {
        self.blocking(|s| {
            let p = &s.path;
            let tx = s.db.begin_read().map_err(|e| err(p, "read", e))?;
            let pending = tx.open_table(PENDING).map_err(|e| err(p, "read", e))?;
            let n = pending.len().map_err(|e| err(p, "read", e))?;
            Ok(usize::try_from(n).unwrap_or(usize::MAX))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use seawall_actors::JobState;

    fn job(id: &str, state: JobState) -> Job {
        Job {
            id: id.into(),
            chain: "c".into(),
            request: serde_json::Map::new(),
            anthropic_version: Some("2023-06-01".into()),
            anthropic_beta: None,
            feature: None,
            tenant: None,
            created_ms: 1,
            expires_ms: 2,
            runs: 0,
            state,
        }
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("seawall-jobstore-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        path
    }

    #[tokio::test]
    async fn jobs_persist_across_reopen_and_a_new_consumer_claims_pending_oldest_first() {
        let path = temp("persist.redb");
        let pending = JobState::Pending { last_error: None };
        let done = JobState::Done {
            model: "m".into(),
            status: 200,
            body: "{}".into(),
            finished_ms: 10,
        };
        {
            let s = RedbJobStore::open(&path).unwrap();
            s.put(&job("job_2", pending.clone())).await.unwrap();
            s.put(&job("job_1", pending.clone())).await.unwrap();
            s.put(&job("job_3", pending.clone())).await.unwrap();
            assert_eq!(s.claim("before", 9).await.unwrap().len(), 3);
            assert_eq!(
                s.finish(&job("job_3", done.clone())).await.unwrap(),
                Finished::Stored
            );
        }
        let s = RedbJobStore::open(&path).unwrap();
        assert!(s.held("after").await.unwrap().is_empty());
        let ids: Vec<String> = s
            .claim("after", 9)
            .await
            .unwrap()
            .into_iter()
            .map(|j| j.id)
            .collect();
        assert_eq!(
            ids,
            ["job_1", "job_2"],
            "the restarted process takes them over"
        );
        assert!(s.claim("after", 9).await.unwrap().is_empty(), "held now");
        assert_eq!(s.held("after").await.unwrap().len(), 2);
        assert_eq!(s.pending_count().await.unwrap(), 2);
        assert_eq!(
            s.get("job_3").await.unwrap().unwrap().state.as_str(),
            "done"
        );
        assert_eq!(s.get("nope").await.unwrap(), None);
        assert_eq!(
            s.purge_finished(5).await.unwrap(),
            0,
            "finished at 10, not before 5"
        );
        assert_eq!(s.purge_finished(11).await.unwrap(), 1);
        assert_eq!(s.get("job_3").await.unwrap(), None);
        assert_eq!(
            s.pending_count().await.unwrap(),
            2,
            "pending jobs are never purged"
        );
    }

    #[tokio::test]
    async fn a_job_is_finished_once_and_progress_is_recorded_only_while_pending() {
        let path = temp("finish.redb");
        let s = RedbJobStore::open(&path).unwrap();
        s.put(&job("job_1", JobState::Pending { last_error: None }))
            .await
            .unwrap();
        let mut progress = s.claim("me", 1).await.unwrap().remove(0);
        progress.runs = 1;
        assert!(!s.update("someone-else", &progress).await.unwrap());
        assert!(s.update("me", &progress).await.unwrap());
        assert_eq!(s.get("job_1").await.unwrap().unwrap().runs, 1);
        let expired = |at| JobState::Expired {
            last_error: None,
            finished_ms: at,
        };
        let (a, b) = (job("job_1", expired(5)), job("job_1", expired(6)));
        let (ra, rb) = tokio::join!(s.finish(&a), s.finish(&b));
        let results = [ra.unwrap(), rb.unwrap()];
        assert_eq!(
            results.iter().filter(|f| **f == Finished::Stored).count(),
            1,
            "{results:?}"
        );
        assert!(results.iter().any(|f| matches!(f, Finished::Already(_))));
        assert!(
            !s.update("me", &progress).await.unwrap(),
            "final stays final"
        );
        assert!(s.get("job_1").await.unwrap().unwrap().state.is_final());
        assert_eq!(
            s.finish(&job("job_x", expired(1))).await.unwrap(),
            Finished::Unknown
        );
    }

    #[test]
    fn a_second_opener_is_told_the_file_is_in_use() {
        let path = temp("locked.redb");
        let _first = RedbJobStore::open(&path).unwrap();
        let e = RedbJobStore::open(&path).unwrap_err();
        assert!(e.contains("another process has it open"), "{e}");
        assert!(e.contains("locked.redb"), "names the file: {e}");
    }

    #[test]
    fn a_missing_directory_is_a_clear_error() {
        let e = RedbJobStore::open("/nonexistent-seawall-dir/jobs.redb").unwrap_err();
        assert!(e.contains("/nonexistent-seawall-dir/jobs.redb"), "{e}");
    }
}
