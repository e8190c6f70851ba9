//! The fleet's shared queue for later: a [`JobStore`] on Redis Streams.
//!
//! Keys (`F` is the fleet name; the braces make one Redis Cluster hash slot per fleet):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `seawall:{F}:job:ID` | hash | `json` (the job), `entry` (its stream entry id) |
//! | `seawall:{F}:jobs` | stream | one entry per accepted job (`id` = job id); consumer group `seawall-queue` |
//! | `seawall:{F}:pending` | set | ids of pending jobs: the truth "still pending" |
//! | `seawall:{F}:finished` | sorted set | finished ids by `finished_ms`, for purging |
//! | `seawall:{F}:alive` | sorted set | instance -> heartbeat expiry (ms, Redis' clock) |
//!
//! How a job moves: [`put`](JobStore::put) writes the hash, adds the id to `pending` and
//! XADDs the entry, in one script. An instance's queue claims with XREADGROUP (count-limited,
//! never blocking on the shared connection): the entry is then in that instance's pending list
//! (PEL). Before each replay the instance checks in one script that the job is still pending
//! and the entry still its own, and resets the entry's idle time. Finishing is one script: the
//! final state is written only if the id leaves `pending` now (SREM returned 1), and the entry
//! is XACKed and XDELed whatever happened, so of two finishers exactly one stores and announces.
//!
//! Reclaiming: an instance heartbeats into `alive` every second with a few seconds' expiry. A
//! claim first runs the reclaim script: entries held by a consumer whose heartbeat has expired
//! are XCLAIMed at once; entries held by a live consumer are taken only when idle longer than
//! `stale_after` (default 10 minutes, well above any replay's deadline: a live holder resets the
//! idle time whenever it starts a replay, so only a job its holder has lost track of goes stale).
//! Dead consumers with nothing pending are deleted from the group.
//!
//! Durability is Redis': with `appendonly yes` and `appendfsync everysec` an accepted job
//! survives a Redis crash except for the last second.

use std::sync::LazyLock;
use std::time::Duration;

use redis::streams::StreamReadReply;
use redis::Script;
use seawall_actors::{Finished, Job, JobStore, StoreFuture};

use super::conn::{fleet_key, ClusterError, Heartbeat, RedisConn};

/// The consumer group every instance of a fleet reads the job stream in.
pub const GROUP: &str = "seawall-queue";

/// How the store heartbeats and reclaims.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RedisStoreOptions {
    /// How often this instance's heartbeat is refreshed. Default 1 s.
    pub heartbeat_every: Duration,
    /// How long a heartbeat vouches for the instance: past it, its jobs are reclaimed.
    /// Default 5 s.
    pub heartbeat_ttl: Duration,
    /// A live instance's job untouched this long is taken over too. Default 10 min.
    pub stale_after: Duration,
    /// At most this many jobs per claim. Default 100.
    pub batch: usize,
}

impl Default for RedisStoreOptions {
    fn default() -> Self {
        Self {
            heartbeat_every: Duration::from_secs(1),
            heartbeat_ttl: Duration::from_secs(5),
            stale_after: Duration::from_secs(600),
            batch: 100,
        }
    }
}

/// A fleet's jobs in Redis. One per instance: it heartbeats for the instance while it lives.
pub struct RedisJobStore {
    conn: RedisConn,
    fleet: String,
    instance: String,
    opts: RedisStoreOptions,
    stream: String,
    pending: String,
    finished: String,
    alive: String,
    _heartbeat: Heartbeat,
}

impl std::fmt::Debug for RedisJobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisJobStore")
            .field("redis", &self.conn.url())
            .field("fleet", &self.fleet)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl RedisJobStore {
    /// Create the consumer group if needed, beat the instance's heartbeat once and keep it
    /// beating while the store lives.
    ///
    /// # Errors
    ///
    /// The classified [`ClusterError`] of the first calls.
    pub async fn start(
        conn: RedisConn,
        fleet: &str,
        instance: &str,
        opts: RedisStoreOptions,
    ) -> Result<RedisJobStore, ClusterError> {
        let stream = fleet_key(fleet, "jobs");
        ensure_group(&conn, &stream).await?;
        let heartbeat = Heartbeat::start(
            conn.clone(),
            fleet,
            instance,
            opts.heartbeat_every,
            opts.heartbeat_ttl,
        )
        .await?;
        tracing::info!(fleet, instance, "shared job queue on Redis");
        Ok(RedisJobStore {
            fleet: fleet.to_owned(),
            instance: instance.to_owned(),
            stream,
            pending: fleet_key(fleet, "pending"),
            finished: fleet_key(fleet, "finished"),
            alive: fleet_key(fleet, "alive"),
            conn,
            opts,
            _heartbeat: heartbeat,
        })
    }

    /// The instance this store claims for (its consumer name).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    fn encode(&self, job: &Job) -> Result<String, ClusterError> {
        serde_json::to_string(job).map_err(|e| ClusterError::Other {
            url: self.conn.url().to_owned(),
            reason: format!("cannot encode job {}: {e}", job.id),
        })
    }

    fn job_key(&self, id: &str) -> String {
        fleet_key(&self.fleet, &format!("job:{id}"))
    }

    /// Read the jobs behind claimed stream entries, oldest first. An entry whose job is gone or
    /// already final is acknowledged and deleted; an unreadable one is left alone (deleting what
    /// cannot be read could lose a job).
    async fn load(&self, entries: Vec<(String, String)>) -> Result<Vec<Job>, ClusterError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (_, id) in &entries {
            pipe.cmd("HGET").arg(self.job_key(id)).arg("json");
        }
        let found: Vec<Option<String>> = self
            .conn
            .call("read claimed jobs", |mut m| async move {
                pipe.query_async(&mut m).await
            })
            .await?;
        let mut jobs = Vec::new();
        let mut settled = Vec::new();
        for ((entry, id), json) in entries.into_iter().zip(found) {
            match json.map(|j| serde_json::from_str::<Job>(&j)) {
                Some(Ok(job)) if !job.state.is_final() => jobs.push(job),
                Some(Err(e)) => {
                    tracing::warn!(job = %id, error = %e, "a stored job is unreadable; left alone")
                }
                Some(Ok(_)) | None => settled.push(entry),
            }
        }
        if !settled.is_empty() {
            let stream = self.stream.clone();
            // Best effort: an entry left over comes back with a later claim and is settled then.
            let acked: Result<(), ClusterError> = self
                .conn
                .call("acknowledge settled entries", |mut m| async move {
                    redis::pipe()
                        .cmd("XACK")
                        .arg(&stream)
                        .arg(GROUP)
                        .arg(&settled)
                        .ignore()
                        .cmd("XDEL")
                        .arg(&stream)
                        .arg(&settled)
                        .ignore()
                        .query_async(&mut m)
                        .await
                })
                .await;
            if let Err(e) = acked {
                tracing::debug!(error = %e, "could not acknowledge settled stream entries");
            }
        }
        jobs.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(jobs)
    }

    /// XREADGROUP for `consumer` from `from` (`>`: new entries; an id: its own history after it).
    async fn read_group(
        &self,
        consumer: &str,
        from: &str,
        count: usize,
    ) -> Result<Vec<(String, String)>, ClusterError> {
        let (stream, consumer, from) = (self.stream.clone(), consumer.to_owned(), from.to_owned());
        let reply: Option<StreamReadReply> = self
            .conn
            .call("read the job stream", |mut m| async move {
                redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(GROUP)
                    .arg(&consumer)
                    .arg("COUNT")
                    .arg(count)
                    .arg("STREAMS")
                    .arg(&stream)
                    .arg(&from)
                    .query_async(&mut m)
                    .await
            })
            .await?;
        Ok(reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|k| k.ids)
            .filter_map(|e| {
                let id = e.get::<String>("id")?;
                Some((e.id, id))
            })
            .collect())
    }

    async fn claim_jobs(&self, consumer: &str, max: usize) -> Result<Vec<Job>, ClusterError> {
        match self.claim_once(consumer, max).await {
            Err(e) if group_missing(&e) => {
                tracing::warn!(fleet = %self.fleet, "the job stream's consumer group was gone (Redis restarted without persistence?); created it again");
                ensure_group(&self.conn, &self.stream).await?;
                self.claim_once(consumer, max).await
            }
            other => other,
        }
    }

    async fn claim_once(&self, consumer: &str, max: usize) -> Result<Vec<Job>, ClusterError> {
        let max = max.min(self.opts.batch);
        if max == 0 {
            return Ok(Vec::new());
        }
        let (stream, alive, consumer_owned) =
            (self.stream.clone(), self.alive.clone(), consumer.to_owned());
        let stale = self.opts.stale_after.as_millis() as u64;
        let flat: Vec<String> = self
            .conn
            .call("reclaim jobs of gone instances", |mut m| async move {
                RECLAIM
                    .key(&stream)
                    .key(&alive)
                    .arg(GROUP)
                    .arg(&consumer_owned)
                    .arg(max)
                    .arg(stale)
                    .invoke_async(&mut m)
                    .await
            })
            .await?;
        let mut entries: Vec<(String, String)> = flat
            .chunks_exact(2)
            .map(|p| (p[0].clone(), p[1].clone()))
            .collect();
        if !entries.is_empty() {
            tracing::info!(jobs = entries.len(), instance = %consumer, "took over jobs of a gone instance");
        }
        let room = max.saturating_sub(entries.len());
        if room > 0 {
            entries.extend(self.read_group(consumer, ">", room).await?);
        }
        self.load(entries).await
    }

    async fn held_jobs(&self, consumer: &str) -> Result<Vec<Job>, ClusterError> {
        match self.held_once(consumer).await {
            Err(e) if group_missing(&e) => {
                ensure_group(&self.conn, &self.stream).await?;
                self.held_once(consumer).await
            }
            other => other,
        }
    }

    async fn held_once(&self, consumer: &str) -> Result<Vec<Job>, ClusterError> {
        let mut entries = Vec::new();
        let mut cursor = "0".to_owned();
        loop {
            let batch = self.read_group(consumer, &cursor, self.opts.batch).await?;
            let Some((last, _)) = batch.last() else {
                break;
            };
            cursor = last.clone();
            let full = batch.len() >= self.opts.batch;
            entries.extend(batch);
            if !full {
                break;
            }
        }
        self.load(entries).await
    }

    async fn update_job(&self, consumer: &str, job: &Job) -> Result<bool, ClusterError> {
        if job.state.is_final() {
            return Ok(false);
        }
        let json = self.encode(job)?;
        let keys = [
            self.job_key(&job.id),
            self.pending.clone(),
            self.stream.clone(),
        ];
        let (consumer, id) = (consumer.to_owned(), job.id.clone());
        let n: i64 = self
            .conn
            .call("record a job's progress", |mut m| async move {
                UPDATE
                    .key(&keys[0])
                    .key(&keys[1])
                    .key(&keys[2])
                    .arg(GROUP)
                    .arg(&consumer)
                    .arg(&json)
                    .arg(&id)
                    .invoke_async(&mut m)
                    .await
            })
            .await?;
        Ok(n == 1)
    }

    async fn finish_job(&self, job: &Job) -> Result<Finished, ClusterError> {
        let json = self.encode(job)?;
        let at = seawall_actors::job::finished_ms(&job.state).unwrap_or_default();
        let keys = [
            self.job_key(&job.id),
            self.pending.clone(),
            self.stream.clone(),
            self.finished.clone(),
        ];
        let id = job.id.clone();
        let out: Vec<String> = self
            .conn
            .call("store a job's outcome", |mut m| async move {
                FINISH
                    .key(&keys[0])
                    .key(&keys[1])
                    .key(&keys[2])
                    .key(&keys[3])
                    .arg(GROUP)
                    .arg(&json)
                    .arg(at)
                    .arg(&id)
                    .invoke_async(&mut m)
                    .await
            })
            .await?;
        match out.as_slice() {
            [s] if s == "stored" => Ok(Finished::Stored),
            [s, stored] if s == "already" => Ok(serde_json::from_str::<Job>(stored)
                .map(|j| Finished::Already(Box::new(j)))
                .unwrap_or(Finished::Unknown)),
            _ => Ok(Finished::Unknown),
        }
    }

    async fn purge(&self, before_ms: u64) -> Result<usize, ClusterError> {
        const LIMIT: usize = 500;
        let mut purged = 0;
        loop {
            let finished = self.finished.clone();
            let ids: Vec<String> = self
                .conn
                .call("list old finished jobs", |mut m| async move {
                    redis::cmd("ZRANGEBYSCORE")
                        .arg(&finished)
                        .arg("-inf")
                        .arg(format!("({before_ms}"))
                        .arg("LIMIT")
                        .arg(0)
                        .arg(LIMIT)
                        .query_async(&mut m)
                        .await
                })
                .await?;
            if ids.is_empty() {
                return Ok(purged);
            }
            let mut pipe = redis::pipe();
            for id in &ids {
                pipe.cmd("DEL").arg(self.job_key(id)).ignore();
            }
            pipe.cmd("ZREM").arg(&self.finished).arg(&ids).ignore();
            let _: () = self
                .conn
                .call("purge old finished jobs", |mut m| async move {
                    pipe.query_async(&mut m).await
                })
                .await?;
            purged += ids.len();
            if ids.len() < LIMIT {
                return Ok(purged);
            }
        }
    }
}

/// Create the consumer group (and the stream) unless it exists. From "0", so entries added
/// before the group existed are delivered too.
async fn ensure_group(conn: &RedisConn, stream: &str) -> Result<(), ClusterError> {
    let key = stream.to_owned();
    let created: Result<(), ClusterError> = conn
        .call("create the consumer group", |mut m| async move {
            redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&key)
                .arg(GROUP)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut m)
                .await
        })
        .await;
    match created {
        Err(ClusterError::Other { reason, .. }) if reason.contains("BUSYGROUP") => Ok(()),
        other => other,
    }
}

/// The stream or its group is gone: Redis restarted without persistence, or someone deleted
/// the keys. The jobs are lost with them; the queue must still work for new ones.
fn group_missing(e: &ClusterError) -> bool {
    matches!(e, ClusterError::Other { reason, .. }
        if reason.contains("NOGROUP") || reason.contains("no such key"))
}

impl JobStore for RedisJobStore {
    fn consumer(&self) -> Option<String> {
        Some(self.instance.clone())
    }

    fn put<'a>(&'a self, job: &'a Job) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let json = self.encode(job).map_err(|e| e.to_string())?;
            let keys = [
                self.job_key(&job.id),
                self.pending.clone(),
                self.stream.clone(),
            ];
            let id = job.id.clone();
            let n: i64 = self
                .conn
                .call("store a job", |mut m| async move {
                    PUT.key(&keys[0])
                        .key(&keys[1])
                        .key(&keys[2])
                        .arg(&id)
                        .arg(&json)
                        .invoke_async(&mut m)
                        .await
                })
                .await
                .map_err(|e| e.to_string())?;
            if n != 1 {
                return Err(format!("a job with id {} is stored already", job.id));
            }
            Ok(())
        })
    }

    fn get<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<Job>> {
        Box::pin(async move {
            let key = self.job_key(id);
            let json: Option<String> = self
                .conn
                .call("read a job", |mut m| async move {
                    redis::cmd("HGET")
                        .arg(&key)
                        .arg("json")
                        .query_async(&mut m)
                        .await
                })
                .await
                .map_err(|e| e.to_string())?;
            json.map(|j| {
                serde_json::from_str::<Job>(&j)
                    .map_err(|e| format!("job {id} in Redis is unreadable: {e}"))
            })
            .transpose()
        })
    }

    fn claim<'a>(&'a self, consumer: &'a str, max: usize) -> StoreFuture<'a, Vec<Job>> {
        Box::pin(async move {
            self.claim_jobs(consumer, max)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn held<'a>(&'a self, consumer: &'a str) -> StoreFuture<'a, Vec<Job>> {
        Box::pin(async move { self.held_jobs(consumer).await.map_err(|e| e.to_string()) })
    }

    fn update<'a>(&'a self, consumer: &'a str, job: &'a Job) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            self.update_job(consumer, job)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn finish<'a>(&'a self, job: &'a Job) -> StoreFuture<'a, Finished> {
        Box::pin(async move { self.finish_job(job).await.map_err(|e| e.to_string()) })
    }

    fn purge_finished(&self, before_ms: u64) -> StoreFuture<'_, usize> {
        Box::pin(async move { self.purge(before_ms).await.map_err(|e| e.to_string()) })
    }

    fn pending_count(&self) -> StoreFuture<'_, usize> {
        Box::pin(async move {
            let key = self.pending.clone();
            self.conn
                .call("count pending jobs", |mut m| async move {
                    redis::cmd("SCARD").arg(&key).query_async(&mut m).await
                })
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// Store a new job: hash, pending set, stream entry. 0 when the id exists already.
/// KEYS: job hash, pending set, stream. ARGV: id, json.
static PUT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local entry = redis.call('XADD', KEYS[3], '*', 'id', ARGV[1])
redis.call('HSET', KEYS[1], 'json', ARGV[2], 'entry', entry)
redis.call('SADD', KEYS[2], ARGV[1])
return 1
",
    )
});

/// Record progress of a pending job its consumer still holds, and reset the entry's idle time.
/// 0 when the job is final or another consumer holds it now.
/// KEYS: job hash, pending set, stream. ARGV: group, consumer, json, id.
static UPDATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('SISMEMBER', KEYS[2], ARGV[4]) == 0 then return 0 end
local entry = redis.call('HGET', KEYS[1], 'entry')
if not entry then return 0 end
local p = redis.call('XPENDING', KEYS[3], ARGV[1], entry, entry, 1)
if #p == 0 or p[1][2] ~= ARGV[2] then return 0 end
redis.call('XCLAIM', KEYS[3], ARGV[1], ARGV[2], 0, entry, 'JUSTID')
redis.call('HSET', KEYS[1], 'json', ARGV[3])
return 1
",
    )
});

/// Store the final state only if the job leaves `pending` now; acknowledge and delete its entry
/// either way. {'stored'} | {'already', stored json} | {} (unknown).
/// KEYS: job hash, pending set, stream, finished zset. ARGV: group, json, finished_ms, id.
static FINISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local entry = redis.call('HGET', KEYS[1], 'entry')
if entry then
  redis.call('XACK', KEYS[3], ARGV[1], entry)
  redis.call('XDEL', KEYS[3], entry)
end
if redis.call('SREM', KEYS[2], ARGV[4]) == 1 then
  redis.call('HSET', KEYS[1], 'json', ARGV[2])
  redis.call('ZADD', KEYS[4], ARGV[3], ARGV[4])
  return {'stored'}
end
local stored = redis.call('HGET', KEYS[1], 'json')
if stored then return {'already', stored} end
return {}
",
    )
});

/// Take over entries of consumers whose heartbeat expired (all of them) and entries of live
/// consumers idle longer than `stale` ms; delete dead consumers with nothing pending. Returns
/// a flat list: entry id, job id, ...
/// KEYS: stream, alive zset. ARGV: group, me, max, stale ms.
static RECLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local group, me = ARGV[1], ARGV[2]
local max, stale = tonumber(ARGV[3]), tonumber(ARGV[4])
local out, n = {}, 0
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], group)) do
  if n >= max then break end
  local name, pending = nil, 0
  for i = 1, #c, 2 do
    if c[i] == 'name' then name = c[i + 1] elseif c[i] == 'pending' then pending = c[i + 1] end
  end
  if name and name ~= me then
    local expiry = redis.call('ZSCORE', KEYS[2], name)
    local dead = (not expiry) or tonumber(expiry) < now
    local entries, min_idle = {}, 0
    if dead and pending == 0 then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], group, name)
    elseif dead then
      entries = redis.call('XPENDING', KEYS[1], group, '-', '+', max - n, name)
    elseif pending > 0 then
      entries = redis.call('XPENDING', KEYS[1], group, 'IDLE', stale, '-', '+', max - n, name)
      min_idle = stale
    end
    if #entries > 0 then
      local ids = {}
      for _, e in ipairs(entries) do table.insert(ids, e[1]) end
      for _, got in ipairs(redis.call('XCLAIM', KEYS[1], group, me, min_idle, unpack(ids))) do
        if type(got) == 'table' and type(got[2]) == 'table' then
          local fields = got[2]
          for i = 1, #fields, 2 do
            if fields[i] == 'id' then
              table.insert(out, got[1])
              table.insert(out, fields[i + 1])
              n = n + 1
            end
          end
        end
      end
    end
  end
end
return out
",
    )
});
