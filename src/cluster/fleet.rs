//! [`RedisCluster`]: the core's [`Fleet`] on Redis (redis-rs, its async connection manager;
//! no hand-written RESP), over the bounded [`RedisConn`] the queue uses too.
//!
//! Keys live under `seawall:{fleet}:` (see [`fleet_key`]):
//!
//! | key | what |
//! |---|---|
//! | `bucket:{upstream}:{org}:{class}` | a shared token bucket (hash: level and refill instant per dimension), changed only by one Lua script, so a lease takes all dimensions or none |
//! | `alive` | sorted set: instance -> expiry (ms), refreshed by each instance's heartbeat (the queue reclaims from the same set) |
//! | `health` (channel) and `breaker:{model}` | breaker news, and the open state with a TTL for instances that join late |
//! | `elect:{what}` | one instance's election (SET NX PX) |
//! | `pin:{digest}` | a conversation's pinned model |
//! | `idem:{digest}` | an idempotency key: fingerprint, state (`running` / `done`), answer |
//! | `cache:{key}` | a cached live answer and its time |
//!
//! Every exchange is bounded by the connection's options (about a second at most), so an
//! unreachable Redis costs milliseconds and is reported as [`FleetError::Unavailable`] (the
//! runtime then falls back to each instance's own decisions). Clocks: the buckets and the live
//! set run on Redis's `TIME`, so instances need no synchronized clocks.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, RedisResult, Script};
use seawall_actors::digest::Digest;
use seawall_actors::fleet::{
    Fleet, FleetCache, FleetClaim, FleetError, FleetFuture, FleetHealth, FleetIdempotency,
    FleetLeases, FleetPins, GroupKey, HealthNews, Lease, StoredAnswer,
};
use seawall_actors::policy::bucket::Limits;
use seawall_actors::policy::lanes::ServerLimits;
use seawall_actors::wire::Cost;

use super::conn::{
    check_fleet_name, fleet_key, new_instance_id, ClusterError, ConnOptions, RedisConn,
};

/// How long an instance stays counted alive after its last heartbeat.
const ALIVE_TTL: Duration = Duration::from_secs(5);
/// How long a claimed idempotency key may stay `running` (its leader may have died): a call's
/// default deadline and some.
const RUNNING_TTL: Duration = Duration::from_secs(150);
/// Shared buckets not touched for this long expire (they would have refilled anyway).
const BUCKET_TTL_MS: u64 = 120_000;
/// At most this many SCAN pages when re-reading the open breakers after a broken subscription.
const MAX_SCAN_PAGES: usize = 100;

/// A fleet of seawall instances sharing one Redis. Cheap to clone.
#[derive(Clone)]
pub struct RedisCluster {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    instance: String,
    conn: RedisConn,
    round_trips: AtomicU64,
}

impl std::fmt::Debug for RedisCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCluster")
            .field("redis", &self.inner.conn.url())
            .field("name", &self.inner.name)
            .field("instance", &self.inner.instance)
            .finish()
    }
}

/// One token bucket shared by the fleet, in the same terms as the governor's: capacity per
/// minute, continuous refill, a transit allowance after draining from full. One script changes
/// it, so a lease takes all dimensions or none and no two instances see the same tokens.
static BUCKET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local op = ARGV[1]
local lag = tonumber(ARGV[5])
local names = {'r', 'i', 'o'}
local caps, lv, last = {}, {}, {}
for k = 1, 3 do
  caps[k] = tonumber(ARGV[1 + k])
  if caps[k] > 0 then
    local v = redis.call('HGET', KEYS[1], names[k])
    local l = redis.call('HGET', KEYS[1], 't' .. names[k])
    lv[k] = v and tonumber(v) or caps[k]
    last[k] = l and tonumber(l) or now
    if now > last[k] then
      lv[k] = math.min(caps[k], lv[k] + caps[k] * (now - last[k]) / 60000)
      last[k] = now
    end
  end
end
local function save()
  for k = 1, 3 do
    if caps[k] > 0 then
      redis.call('HSET', KEYS[1], names[k], tostring(lv[k]), 't' .. names[k], tostring(last[k]))
    end
  end
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[12]))
end
local a = {tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])}
if op == 'lease' then
  -- As much of the wish as the bucket holds, if that covers the minimum in every dimension.
  local m = {tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])}
  local take, ok, any = {0, 0, 0}, true, false
  for k = 1, 3 do
    if caps[k] > 0 then
      take[k] = math.max(0, math.min(a[k], math.floor(lv[k] + 1e-9)))
      if take[k] < m[k] then ok = false end
      if take[k] > 0 then any = true end
    end
  end
  if ok and any then
    for k = 1, 3 do
      if caps[k] > 0 and take[k] > 0 then
        if lag > 0 and lv[k] >= caps[k] - 1e-9 then last[k] = math.max(last[k], now + lag) end
        lv[k] = lv[k] - take[k]
      end
    end
    save()
    return {take[1], take[2], take[3], 0}
  end
  -- Nothing now: when the minimum (at least one unit of what is wished) fits.
  local wait = 0
  for k = 1, 3 do
    if caps[k] > 0 then
      local need = m[k]
      if need < 1 and a[k] > 0 then need = 1 end
      if need > caps[k] then save() return {0, 0, 0, -1} end
      if need > lv[k] then
        local w = (need - lv[k]) * 60000 / caps[k] + math.max(0, last[k] - now)
        if w > wait then wait = w end
      end
    end
  end
  save()
  return {0, 0, 0, math.ceil(wait) + 1}
elseif op == 'give' then
  for k = 1, 3 do
    if caps[k] > 0 then lv[k] = math.min(caps[k], lv[k] + a[k]) end
  end
  save()
  return {}
else
  for k = 1, 3 do
    if caps[k] > 0 and a[k] >= 0 then lv[k] = math.min(lv[k], a[k] + 0.999) end
  end
  save()
  return {}
end
"#,
    )
});

/// Claim an idempotency key: lead, conflict, running, or the stored answer.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local fp = redis.call('HGET', KEYS[1], 'fp')
if not fp then
  redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'state', 'running', 'owner', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
  return {'lead'}
end
if fp ~= ARGV[1] then return {'conflict'} end
if redis.call('HGET', KEYS[1], 'state') == 'done' then
  return {'done', redis.call('HGET', KEYS[1], 'answer')}
end
return {'running'}
"#,
    )
});

fn key_hex(d: &Digest) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// A failed exchange, in the fleet's terms: unreachable (fall back to local decisions) or
/// refused.
fn fleet_error(e: ClusterError) -> FleetError {
    if e.is_unavailable() {
        FleetError::Unavailable(e.to_string())
    } else {
        FleetError::Refused(e.to_string())
    }
}

fn dims(c: Cost) -> [u64; 3] {
    [c.requests, c.input_tokens, c.output_tokens]
}

fn caps(l: Limits) -> [u64; 3] {
    [
        l.requests_per_minute.unwrap_or(0),
        l.input_tokens_per_minute.unwrap_or(0),
        l.output_tokens_per_minute.unwrap_or(0),
    ]
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Parts of a name used in a key: anything but plain characters is replaced.
fn part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl RedisCluster {
    /// Join the fleet `name` on the Redis at `url` (`redis://[:password@]host:port[/db]`):
    /// connect, and check Redis can keep the fleet's state (it answers, accepts the credentials,
    /// is writable and not full). Errors say what to fix, at start, within about a second.
    ///
    /// # Errors
    ///
    /// [`ClusterError`]: a bad name or URL, an unreachable Redis, refused credentials, a
    /// read-only replica or a full Redis.
    pub async fn connect(url: &str, name: &str) -> Result<Self, ClusterError> {
        check_fleet_name(name)?;
        let conn = RedisConn::connect(url, ConnOptions::default()).await?;
        conn.ping_writable().await?;
        Ok(Self::over(conn, name))
    }

    /// Join the fleet `name` over a connection already made (and checked).
    pub fn over(conn: RedisConn, name: &str) -> Self {
        Self {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                instance: new_instance_id(),
                conn,
                round_trips: AtomicU64::new(0),
            }),
        }
    }

    /// The connection, for the fleet's other users (the shared queue).
    pub fn conn(&self) -> &RedisConn {
        &self.inner.conn
    }

    /// The fleet's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    fn key(&self, rest: &str) -> String {
        fleet_key(&self.inner.name, rest)
    }

    fn bucket_key(&self, g: &GroupKey) -> String {
        self.key(&format!(
            "bucket:{}:{}:{}",
            part(&g.upstream),
            part(&g.org),
            part(&g.class)
        ))
    }

    /// One exchange, counted, bounded by the connection, its error in the fleet's terms.
    async fn run<T, F, Fut>(&self, what: &str, f: F) -> Result<T, FleetError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        self.inner.round_trips.fetch_add(1, Ordering::Relaxed);
        self.inner.conn.call(what, f).await.map_err(fleet_error)
    }

    #[allow(clippy::too_many_arguments)]
    async fn bucket(
        &self,
        op: &str,
        group: &GroupKey,
        limits: Limits,
        lag: Duration,
        a: [i64; 3],
        m: [u64; 3],
    ) -> Result<Vec<i64>, FleetError> {
        let key = self.bucket_key(group);
        let c = caps(limits);
        let mut inv = BUCKET.key(key);
        inv.arg(op)
            .arg(c[0])
            .arg(c[1])
            .arg(c[2])
            .arg(lag.as_millis() as u64)
            .arg(a[0])
            .arg(a[1])
            .arg(a[2])
            .arg(m[0])
            .arg(m[1])
            .arg(m[2])
            .arg(BUCKET_TTL_MS);
        self.run("a shared bucket", |mut c| async move {
            inv.invoke_async(&mut c).await
        })
        .await
    }

    /// Deliver the fleet's breaker news to `on_news` from a subscription of its own,
    /// re-subscribing (and re-reading the open states it may have missed) whenever it breaks.
    async fn watch_loop(self, on_news: Box<dyn Fn(HealthNews) + Send + Sync>) {
        let channel = self.key("health");
        let mut pause = Duration::from_millis(100);
        loop {
            let subscribed = async {
                let mut pubsub = self.inner.conn.pubsub().await.ok()?;
                pubsub.subscribe(&channel).await.ok()?;
                Some(pubsub)
            };
            let limit = self.inner.conn.options().call_timeout;
            let Ok(Some(pubsub)) = tokio::time::timeout(limit, subscribed).await else {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
                continue;
            };
            pause = Duration::from_millis(100);
            // News published while this instance was not listening: the open states.
            self.resync(&on_news).await;
            let mut stream = pubsub.into_on_message();
            use futures_util::StreamExt;
            while let Some(msg) = stream.next().await {
                let Ok(payload) = msg.get_payload::<String>() else {
                    continue;
                };
                match serde_json::from_str::<HealthNews>(&payload) {
                    Ok(news) if !self.is_mine(&news) => on_news(news),
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "unreadable fleet news"),
                }
            }
            tracing::warn!("the fleet's news subscription broke: subscribing again");
        }
    }

    fn is_mine(&self, news: &HealthNews) -> bool {
        let who = match news {
            HealthNews::Opened { instance, .. } | HealthNews::Closed { instance, .. } => instance,
        };
        who == &self.inner.instance
    }

    /// The fleet's open breaker keys, by SCAN (never KEYS: it would stall a shared Redis).
    async fn open_breaker_keys(&self) -> Vec<String> {
        let pattern = self.key("breaker:*");
        let mut keys = Vec::new();
        let mut cursor = 0u64;
        for _ in 0..MAX_SCAN_PAGES {
            let pattern = pattern.clone();
            let page: Result<(u64, Vec<String>), FleetError> = self
                .run("scan the open breakers", |mut c| async move {
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(200)
                        .query_async(&mut c)
                        .await
                })
                .await;
            let Ok((next, found)) = page else { break };
            keys.extend(found);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        keys.sort();
        keys.dedup();
        keys
    }

    /// Read every open breaker state (with its time left) and deliver it as news.
    async fn resync(&self, on_news: &(dyn Fn(HealthNews) + Send + Sync)) {
        for key in self.open_breaker_keys().await {
            let got: Result<(Option<String>, i64), FleetError> = self
                .run("read an open breaker", |mut c| async move {
                    redis::pipe().get(&key).pttl(&key).query_async(&mut c).await
                })
                .await;
            if let Ok((Some(payload), ttl)) = got {
                if let Ok(HealthNews::Opened {
                    model, instance, ..
                }) = serde_json::from_str::<HealthNews>(&payload)
                {
                    if ttl > 0 && instance != self.inner.instance {
                        on_news(HealthNews::Opened {
                            model,
                            open_ms: ttl as u64,
                            instance,
                        });
                    }
                }
            }
        }
    }
}

impl Fleet for RedisCluster {
    fn instance(&self) -> &str {
        &self.inner.instance
    }

    fn round_trips(&self) -> u64 {
        self.inner.round_trips.load(Ordering::Relaxed)
    }
}

impl FleetLeases for RedisCluster {
    fn lease(
        &self,
        group: &GroupKey,
        limits: Limits,
        lag: Duration,
        want: Cost,
        min: Cost,
    ) -> FleetFuture<'_, Lease> {
        let group = group.clone();
        Box::pin(async move {
            let w = dims(want).map(|v| i64::try_from(v).unwrap_or(i64::MAX));
            let r = self
                .bucket("lease", &group, limits, lag, w, dims(min))
                .await?;
            let get = |i: usize| r.get(i).copied().unwrap_or(0);
            let granted = Cost {
                requests: get(0).max(0) as u64,
                input_tokens: get(1).max(0) as u64,
                output_tokens: get(2).max(0) as u64,
            };
            let retry_after = match get(3) {
                0 => None,
                // Never fits: larger than the limit itself (the governor refuses it anyway).
                ms if ms < 0 => Some(Duration::from_secs(60)),
                ms => Some(Duration::from_millis(ms as u64)),
            };
            Ok(Lease {
                granted,
                retry_after,
            })
        })
    }

    fn give_back(&self, group: &GroupKey, limits: Limits, amount: Cost) -> FleetFuture<'_, ()> {
        let group = group.clone();
        Box::pin(async move {
            let a = dims(amount).map(|v| i64::try_from(v).unwrap_or(i64::MAX));
            self.bucket("give", &group, limits, Duration::ZERO, a, [0; 3])
                .await
                .map(|_| ())
        })
    }

    fn observe(
        &self,
        group: &GroupKey,
        limits: Limits,
        server: ServerLimits,
    ) -> FleetFuture<'_, ()> {
        let group = group.clone();
        Box::pin(async move {
            let seen = |d: Option<(Option<u64>, u64)>| {
                d.map_or(-1, |(_, remaining)| {
                    i64::try_from(remaining).unwrap_or(i64::MAX)
                })
            };
            let a = [
                seen(server.requests),
                seen(server.input_tokens),
                seen(server.output_tokens),
            ];
            self.bucket("observe", &group, limits, Duration::ZERO, a, [0; 3])
                .await
                .map(|_| ())
        })
    }
}

impl FleetHealth for RedisCluster {
    fn heartbeat(&self) -> FleetFuture<'_, usize> {
        Box::pin(async move {
            self.inner.round_trips.fetch_add(1, Ordering::Relaxed);
            let live = self
                .inner
                .conn
                .heartbeat(&self.inner.name, &self.inner.instance, ALIVE_TTL)
                .await
                .map_err(fleet_error)?;
            Ok(live.max(1))
        })
    }

    fn publish(&self, news: HealthNews) -> FleetFuture<'_, ()> {
        Box::pin(async move {
            let payload =
                serde_json::to_string(&news).map_err(|e| FleetError::Refused(e.to_string()))?;
            let mut pipe = redis::pipe();
            match &news {
                HealthNews::Opened { model, open_ms, .. } => {
                    let key = self.key(&format!("breaker:{}", part(model)));
                    pipe.cmd("SET")
                        .arg(&key)
                        .arg(&payload)
                        .arg("PX")
                        .arg((*open_ms).max(1))
                        .ignore();
                }
                HealthNews::Closed { model, .. } => {
                    pipe.del(self.key(&format!("breaker:{}", part(model))))
                        .ignore();
                }
            }
            pipe.publish(self.key("health"), &payload).ignore();
            self.run("publish breaker news", |mut c| async move {
                pipe.query_async::<()>(&mut c).await
            })
            .await
        })
    }

    fn watch(&self, on_news: Box<dyn Fn(HealthNews) + Send + Sync>) {
        tokio::spawn(self.clone().watch_loop(on_news));
    }

    fn elect(&self, what: &str, ttl: Duration) -> FleetFuture<'_, bool> {
        let key = self.key(&format!("elect:{}", part(what)));
        Box::pin(async move {
            let me = self.inner.instance.clone();
            let ttl_ms = ttl.as_millis().max(1) as u64;
            let k = key.clone();
            let set: Option<String> = self
                .run("an election", |mut c| async move {
                    redis::cmd("SET")
                        .arg(&k)
                        .arg(me)
                        .arg("NX")
                        .arg("PX")
                        .arg(ttl_ms)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            if set.is_some() {
                return Ok(true);
            }
            let holder: Option<String> = self
                .run(
                    "an election's holder",
                    |mut c| async move { c.get(&key).await },
                )
                .await?;
            Ok(holder.as_deref() == Some(self.inner.instance.as_str()))
        })
    }
}

impl FleetPins for RedisCluster {
    fn pin(&self, conversation: Digest, model: &str, ttl: Duration) -> FleetFuture<'_, ()> {
        let key = self.key(&format!("pin:{}", key_hex(&conversation)));
        let model = model.to_owned();
        Box::pin(async move {
            let ttl_ms = ttl.as_millis().max(1) as u64;
            self.run("a pin", |mut c| async move {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(&model)
                    .arg("PX")
                    .arg(ttl_ms)
                    .query_async::<()>(&mut c)
                    .await
            })
            .await
        })
    }

    fn unpin(&self, conversation: Digest) -> FleetFuture<'_, ()> {
        let key = self.key(&format!("pin:{}", key_hex(&conversation)));
        Box::pin(async move {
            self.run(
                "an unpin",
                |mut c| async move { c.del::<_, ()>(&key).await },
            )
            .await
        })
    }

    fn pinned(&self, conversation: Digest) -> FleetFuture<'_, Option<String>> {
        let key = self.key(&format!("pin:{}", key_hex(&conversation)));
        Box::pin(async move {
            self.run("a pin's model", |mut c| async move { c.get(&key).await })
                .await
        })
    }
}

impl FleetIdempotency for RedisCluster {
    fn claim(
        &self,
        key: Digest,
        fingerprint: Digest,
        ttl: Duration,
    ) -> FleetFuture<'_, FleetClaim> {
        let key = self.key(&format!("idem:{}", key_hex(&key)));
        Box::pin(async move {
            let running = ttl.min(RUNNING_TTL).max(Duration::from_secs(1));
            let mut inv = CLAIM.key(&key);
            inv.arg(key_hex(&fingerprint))
                .arg(&self.inner.instance)
                .arg(running.as_millis() as u64);
            let answer: Vec<String> = self
                .run("an idempotency claim", |mut c| async move {
                    inv.invoke_async(&mut c).await
                })
                .await?;
            Ok(match answer.first().map(String::as_str) {
                Some("lead") => FleetClaim::Lead,
                Some("conflict") => FleetClaim::Conflict,
                Some("done") => match answer
                    .get(1)
                    .and_then(|a| serde_json::from_str::<StoredAnswer>(a).ok())
                {
                    Some(a) => FleetClaim::Done(a),
                    None => FleetClaim::Running,
                },
                _ => FleetClaim::Running,
            })
        })
    }

    fn finish(
        &self,
        key: Digest,
        answer: Option<StoredAnswer>,
        ttl: Duration,
    ) -> FleetFuture<'_, ()> {
        let key = self.key(&format!("idem:{}", key_hex(&key)));
        Box::pin(async move {
            let Some(answer) = answer else {
                return self
                    .run("an idempotency release", |mut c| async move {
                        c.del::<_, ()>(&key).await
                    })
                    .await;
            };
            let json =
                serde_json::to_string(&answer).map_err(|e| FleetError::Refused(e.to_string()))?;
            let mut pipe = redis::pipe();
            pipe.hset(&key, "state", "done")
                .ignore()
                .hset(&key, "answer", json)
                .ignore()
                .pexpire(&key, ttl.as_millis().max(1) as i64)
                .ignore();
            self.run("an idempotent answer", |mut c| async move {
                pipe.query_async::<()>(&mut c).await
            })
            .await
        })
    }
}

impl FleetCache for RedisCluster {
    fn cache_get(&self, key: &str) -> FleetFuture<'_, Option<(StoredAnswer, Duration)>> {
        let key = self.key(&format!("cache:{}", part(key)));
        Box::pin(async move {
            let got: Option<String> = self
                .run("a cached answer", |mut c| async move { c.get(&key).await })
                .await?;
            let Some(text) = got else { return Ok(None) };
            #[derive(serde::Deserialize)]
            struct Cached {
                at_ms: u64,
                answer: StoredAnswer,
            }
            Ok(serde_json::from_str::<Cached>(&text).ok().map(|c| {
                let age = Duration::from_millis(wall_ms().saturating_sub(c.at_ms));
                (c.answer, age)
            }))
        })
    }

    fn cache_put(&self, key: &str, answer: StoredAnswer, ttl: Duration) -> FleetFuture<'_, ()> {
        let key = self.key(&format!("cache:{}", part(key)));
        Box::pin(async move {
            let json = serde_json::json!({"at_ms": wall_ms(), "answer": answer}).to_string();
            let ttl_ms = ttl.as_millis().max(1) as u64;
            self.run("cache an answer", |mut c| async move {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(json)
                    .arg("PX")
                    .arg(ttl_ms)
                    .query_async::<()>(&mut c)
                    .await
            })
            .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_parts_stay_plain() {
        assert_eq!(part("claude-sonnet-4.5/x y"), "claude-sonnet-4.5_x_y");
    }
}
