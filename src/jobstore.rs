//! The durable job store: the queue's jobs in one redb file (embedded, no server).
//!
//! Every write is its own transaction committed with redb's default durability (fsync before
//! `commit` returns), so a job whose id was handed out survives `kill -9` and power loss. Two
//! tables: `jobs` (id -> the job as JSON) and `pending` (ids of unfinished jobs). Job ids sort
//! in acceptance order, so `pending` iterates oldest first without a sort.
//!
//! redb locks the file: a second process opening the same store gets a clear error instead of
//! two writers.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableTable, TableDefinition};
use seawall_actors::job::finished_ms;
use seawall_actors::{Job, JobStore};

const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
const PENDING: TableDefinition<&str, ()> = TableDefinition::new("pending");

/// Jobs in a redb file.
pub struct RedbJobStore {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for RedbJobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbJobStore")
            .field("path", &self.path)
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
        Ok(Self { db, path })
    }

    fn decode(&self, bytes: &[u8]) -> Result<Job, String> {
        serde_json::from_slice(bytes).map_err(|e| err(&self.path, "a stored job is unreadable", e))
    }
}

impl JobStore for RedbJobStore {
    fn put(&self, job: &Job) -> Result<(), String> {
        let p = &self.path;
        let bytes = serde_json::to_vec(job).map_err(|e| err(p, "encode", e))?;
        let tx = self.db.begin_write().map_err(|e| err(p, "write", e))?;
        {
            let mut jobs = tx.open_table(JOBS).map_err(|e| err(p, "write", e))?;
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
        tx.commit().map_err(|e| err(p, "commit", e))
    }

    fn get(&self, id: &str) -> Result<Option<Job>, String> {
        let p = &self.path;
        let tx = self.db.begin_read().map_err(|e| err(p, "read", e))?;
        let jobs = tx.open_table(JOBS).map_err(|e| err(p, "read", e))?;
        let found = jobs.get(id).map_err(|e| err(p, "read", e))?;
        found.map(|v| self.decode(v.value())).transpose()
    }

    fn pending(&self) -> Result<Vec<Job>, String> {
        let p = &self.path;
        let tx = self.db.begin_read().map_err(|e| err(p, "read", e))?;
        let jobs = tx.open_table(JOBS).map_err(|e| err(p, "read", e))?;
        let pending = tx.open_table(PENDING).map_err(|e| err(p, "read", e))?;
        let mut out = Vec::new();
        for entry in pending.iter().map_err(|e| err(p, "read", e))? {
            let (id, _) = entry.map_err(|e| err(p, "read", e))?;
            if let Some(v) = jobs.get(id.value()).map_err(|e| err(p, "read", e))? {
                out.push(self.decode(v.value())?);
            }
        }
        Ok(out)
    }

    fn purge_finished(&self, before_ms: u64) -> Result<usize, String> {
        let p = &self.path;
        let tx = self.db.begin_write().map_err(|e| err(p, "write", e))?;
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

    #[test]
    fn jobs_persist_across_reopen_and_pending_lists_oldest_first() {
        let path = temp("persist.redb");
        let pending = JobState::Pending { last_error: None };
        {
            let s = RedbJobStore::open(&path).unwrap();
            s.put(&job("job_2", pending.clone())).unwrap();
            s.put(&job("job_1", pending.clone())).unwrap();
            s.put(&job("job_3", pending.clone())).unwrap();
            let done = JobState::Done {
                model: "m".into(),
                status: 200,
                body: "{}".into(),
                finished_ms: 10,
            };
            s.put(&job("job_3", done)).unwrap();
        }
        let s = RedbJobStore::open(&path).unwrap();
        let ids: Vec<String> = s.pending().unwrap().into_iter().map(|j| j.id).collect();
        assert_eq!(ids, ["job_1", "job_2"]);
        assert_eq!(s.get("job_3").unwrap().unwrap().state.as_str(), "done");
        assert_eq!(s.get("nope").unwrap(), None);
        assert_eq!(
            s.purge_finished(5).unwrap(),
            0,
            "finished at 10, not before 5"
        );
        assert_eq!(s.purge_finished(11).unwrap(), 1);
        assert_eq!(s.get("job_3").unwrap(), None);
        assert_eq!(
            s.pending().unwrap().len(),
            2,
            "pending jobs are never purged"
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
