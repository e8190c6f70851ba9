//! [`RedisCluster`]: the core's [`Fleet`] on Redis (redis-rs, its async connection manager;
//! no hand-written RESP).
//!
//! Keys live under `seawall:{fleet}:`:
//!
//! | key | what |
//! |---|---|
//! | `bucket:{upstream}:{org}:{class}` | a shared token bucket (hash: level and refill instant per dimension), changed only by one Lua script, so a lease takes all dimensions or none |
//! | `alive` | sorted set: instance -> expiry (ms), refreshed by each instance's heartbeat |
//! | `health` (channel) and `breaker:{model}` | breaker news, and the open state with a TTL for instances that join late |
//! | `elect:{what}` | one instance's election (SET NX PX) |
//! | `pin:{digest}` | a conversation's pinned model |
//! | `idem:{digest}` | an idempotency key: fingerprint, state (`running` / `done`), answer |
//! | `cache:{key}` | a cached live answer and its time |
//!
//! Every exchange is bounded: the connection manager gives up a reconnect after one retry, and
//! every command is cut at [`OP_TIMEOUT`], so an unreachable Redis costs milliseconds and is
//! reported as [`FleetError::Unavailable`] (the runtime then falls back to each instance's own
//! decisions). Clocks: the buckets and the live set run on Redis's `TIME`, so instances need no
//! synchronized clocks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};
use seawall_actors::digest::Digest;
use seawall_actors::fleet::{
    Fleet, FleetClaim, FleetError, FleetFuture, GroupKey, HealthNews, Lease, StoredAnswer,
};
use seawall_actors::policy::bucket::Limits;
use seawall_actors::policy::lanes::ServerLimits;
use seawall_actors::wire::Cost;

/// The longest one exchange with Redis may take before the fleet is deemed unreachable.
pub const OP_TIMEOUT: Duration = Duration::from_millis(1000);
/// How long an instance stays counted alive after its last heartbeat.
const ALIVE_TTL: Duration = Duration::from_secs(5);
/// How long a claimed idempotency key may stay `running` (its leader may have died): a call's
/// default deadline and some.
const RUNNING_TTL: Duration = Duration::from_secs(150);
/// Shared buckets not touched for this long expire (they would have refilled anyway).
const BUCKET_TTL_MS: u64 = 120_000;

/// Why a cluster could not be joined. Messages say what to fix and never hold a password.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The URL cannot be used.
    #[error("redis_url {url:?} is not usable: {why}")]
    BadUrl {
        /// The URL, password redacted.
        url: String,
        /// What is wrong.
        why: String,
    },
    /// The fleet name cannot be used.
    #[error("the fleet name {0:?} is not usable: use 1 to 64 letters, digits, '-' or '_'")]
    BadName(String),
    /// Redis refused the credentials.
    #[error("redis at {url} refused the credentials ({why}): check the password in redis_url")]
    Auth {
        /// The URL, password redacted.
        url: String,
        /// Redis's word.
        why: String,
    },
    /// Redis cannot be reached.
    #[error("redis at {url} cannot be reached ({why}): is it running, and is redis_url right?")]
    Unreachable {
        /// The URL, password redacted.
        url: String,
        /// What failed.
        why: String,
    },
    /// Redis answers but cannot keep the fleet's state.
    #[error("redis at {url} cannot keep the fleet's state: {why}")]
    Unusable {
        /// The URL, password redacted.
        url: String,
        /// What Redis said, and what to do.
        why: String,
    },
}

/// A password in a Redis URL replaced by `***`, for errors, Debug and logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or("", |(u, _)| u);
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}

/// A fleet of seawall instances sharing one Redis. Cheap to clone.
#[derive(Clone)]
pub struct RedisCluster {
    inner: Arc<Inner>,
}

struct Inner {
    prefix: String,
    instance: String,
    url: String,
    client: redis::Client,
    conn: ConnectionManager,
    round_trips: AtomicU64,
}

impl std::fmt::Debug for RedisCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCluster")
            .field("url", &self.inner.url)
            .field("prefix", &self.inner.prefix)
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
  local m = {tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])}
  local function fits(x)
    for k = 1, 3 do
      if caps[k] > 0 and lv[k] + 1e-9 < x[k] then return false end
    end
    return true
  end
  local take = nil
  if fits(a) then take = a elseif fits(m) then take = m end
  if take then
    for k = 1, 3 do
      if caps[k] > 0 and take[k] > 0 then
        if lag > 0 and lv[k] >= caps[k] - 1e-9 then last[k] = math.max(last[k], now + lag) end
        lv[k] = lv[k] - take[k]
      end
    end
    save()
    return {take[1], take[2], take[3], 0}
  end
  local wait = 0
  for k = 1, 3 do
    if caps[k] > 0 and m[k] > 0 then
      if m[k] > caps[k] then save() return {0, 0, 0, -1} end
      local w = (m[k] - lv[k]) * 60000 / caps[k] + math.max(0, last[k] - now)
      if w > wait then wait = w end
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

/// Say an instance is alive until now + ttl, forget the expired, count the live.
static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 4)
return redis.call('ZCARD', KEYS[1])
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

/// Redis's word on a command, in the fleet's terms.
fn fleet_error(e: redis::RedisError) -> FleetError {
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
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

/// `fleet` names are used in Redis keys: keep them plain.
fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
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
    /// Join the fleet `name` on the Redis at `url` (`redis://[:password@]host:port[/db]` or
    /// `rediss://`): connect, and check Redis can keep the fleet's state (it answers, accepts
    /// the credentials, is writable and not full). Errors say what to fix, at start.
    pub async fn connect(url: &str, name: &str) -> Result<Self, ClusterError> {
        let shown = redact(url);
        if !name_ok(name) {
            return Err(ClusterError::BadName(name.to_owned()));
        }
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(ClusterError::BadUrl {
                url: shown,
                why: "it must start with redis:// or rediss://".into(),
            });
        }
        let client = redis::Client::open(url).map_err(|e| ClusterError::BadUrl {
            url: shown.clone(),
            why: e.to_string(),
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_millis(500)))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let made = tokio::time::timeout(
            OP_TIMEOUT * 3,
            client.get_connection_manager_with_config(config),
        )
        .await;
        let conn = match made {
            Err(_) => {
                return Err(ClusterError::Unreachable {
                    url: shown,
                    why: "no answer in time".into(),
                })
            }
            Ok(Err(e)) => return Err(connect_error(&shown, e)),
            Ok(Ok(c)) => c,
        };
        let instance = instance_id();
        let cluster = Self {
            inner: Arc::new(Inner {
                prefix: format!("seawall:{name}:"),
                instance,
                url: shown.clone(),
                client,
                conn,
                round_trips: AtomicU64::new(0),
            }),
        };
        // Writable and not full: a tiny write with a short life.
        let probe = format!("{}probe:{}", cluster.inner.prefix, cluster.inner.instance);
        let mut conn = cluster.inner.conn.clone();
        let wrote: Result<Result<(), redis::RedisError>, _> = tokio::time::timeout(
            OP_TIMEOUT,
            redis::cmd("SET")
                .arg(&probe)
                .arg("1")
                .arg("PX")
                .arg(1000)
                .query_async(&mut conn),
        )
        .await;
        match wrote {
            Err(_) => Err(ClusterError::Unreachable {
                url: shown,
                why: "no answer in time".into(),
            }),
            Ok(Err(e)) => Err(connect_error(&shown, e)),
            Ok(Ok(())) => Ok(cluster),
        }
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.inner.prefix)
    }

    fn bucket_key(&self, g: &GroupKey) -> String {
        self.key(&format!(
            "bucket:{}:{}:{}",
            part(&g.upstream),
            part(&g.org),
            part(&g.class)
        ))
    }

    /// One exchange, counted and bounded in time.
    async fn run<T, F>(&self, f: F) -> Result<T, FleetError>
    where
        F: std::future::Future<Output = Result<T, redis::RedisError>>,
    {
        self.inner.round_trips.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(OP_TIMEOUT, f).await {
            Ok(r) => r.map_err(fleet_error),
            Err(_) => Err(FleetError::Unavailable(format!(
                "redis at {} did not answer within {OP_TIMEOUT:?}",
                self.inner.url
            ))),
        }
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
        let mut conn = self.inner.conn.clone();
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
        self.run(inv.invoke_async(&mut conn)).await
    }

    /// Deliver the fleet's breaker news to `on_news` from a subscription of its own,
    /// re-subscribing (and re-reading the open states it may have missed) whenever it breaks.
    async fn watch_loop(self, on_news: Box<dyn Fn(HealthNews) + Send + Sync>) {
        let channel = self.key("health");
        let mut pause = Duration::from_millis(100);
        loop {
            let subscribed = async {
                let mut pubsub = self.inner.client.get_async_pubsub().await?;
                pubsub.subscribe(&channel).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            let pubsub = match tokio::time::timeout(OP_TIMEOUT, subscribed).await {
                Ok(Ok(p)) => p,
                _ => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                    continue;
                }
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

    /// Read every open breaker state (with its time left) and deliver it as news.
    async fn resync(&self, on_news: &(dyn Fn(HealthNews) + Send + Sync)) {
        let pattern = self.key("breaker:*");
        let mut conn = self.inner.conn.clone();
        let keys: Vec<String> = match self.run(conn.keys(&pattern)).await {
            Ok(k) => k,
            Err(_) => return,
        };
        for key in keys {
            let mut conn = self.inner.conn.clone();
            let got: Result<(Option<String>, i64), FleetError> = self
                .run(async {
                    redis::pipe()
                        .get(&key)
                        .pttl(&key)
                        .query_async(&mut conn)
                        .await
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

fn connect_error(url: &str, e: redis::RedisError) -> ClusterError {
    let text = e.to_string();
    let code = e.code().unwrap_or("");
    if matches!(e.kind(), redis::ErrorKind::AuthenticationFailed)
        || matches!(code, "NOAUTH" | "WRONGPASS" | "NOPERM")
    {
        ClusterError::Auth {
            url: url.to_owned(),
            why: text,
        }
    } else if code == "OOM" {
        ClusterError::Unusable {
            url: url.to_owned(),
            why: format!("it is full ({text}): raise maxmemory or free memory"),
        }
    } else if code == "READONLY" {
        ClusterError::Unusable {
            url: url.to_owned(),
            why: format!("it is a read-only replica ({text}): point redis_url at the primary"),
        }
    } else if e.is_io_error() || e.is_timeout() || e.is_connection_refusal() {
        ClusterError::Unreachable {
            url: url.to_owned(),
            why: text,
        }
    } else {
        ClusterError::Unusable {
            url: url.to_owned(),
            why: text,
        }
    }
}

/// This process's id in the fleet: host, pid and a random part.
fn instance_id() -> String {
    use std::hash::BuildHasher;
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into());
    let random = std::collections::hash_map::RandomState::new().hash_one(wall_ms());
    format!(
        "{}-{}-{:08x}",
        part(&host),
        std::process::id(),
        random as u32
    )
}

impl Fleet for RedisCluster {
    fn instance(&self) -> &str {
        &self.inner.instance
    }

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

    fn heartbeat(&self) -> FleetFuture<'_, usize> {
        Box::pin(async move {
            let mut conn = self.inner.conn.clone();
            let mut inv = HEARTBEAT.key(self.key("alive"));
            inv.arg(&self.inner.instance)
                .arg(ALIVE_TTL.as_millis() as u64);
            let n: i64 = self.run(inv.invoke_async(&mut conn)).await?;
            Ok(usize::try_from(n).unwrap_or(1).max(1))
        })
    }

    fn publish(&self, news: HealthNews) -> FleetFuture<'_, ()> {
        Box::pin(async move {
            let payload =
                serde_json::to_string(&news).map_err(|e| FleetError::Refused(e.to_string()))?;
            let mut conn = self.inner.conn.clone();
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
            self.run(pipe.query_async::<()>(&mut conn)).await
        })
    }

    fn watch(&self, on_news: Box<dyn Fn(HealthNews) + Send + Sync>) {
        tokio::spawn(self.clone().watch_loop(on_news));
    }

    fn elect(&self, what: &str, ttl: Duration) -> FleetFuture<'_, bool> {
        let key = self.key(&format!("elect:{}", part(what)));
        Box::pin(async move {
            let mut conn = self.inner.conn.clone();
            let set: Option<String> = self
                .run(
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(&self.inner.instance)
                        .arg("NX")
                        .arg("PX")
                        .arg(ttl.as_millis().max(1) as u64)
                        .query_async(&mut conn),
                )
                .await?;
            if set.is_some() {
                return Ok(true);
            }
            let holder: Option<String> = self.run(conn.get(&key)).await?;
            Ok(holder.as_deref() == Some(self.inner.instance.as_str()))
        })
    }

    fn pin(&self, conversation: Digest, model: &str, ttl: Duration) -> FleetFuture<'_, ()> {
        let key = self.key(&format!("pin:{}", key_hex(&conversation)));
        let model = model.to_owned();
        Box::pin(async move {
            let mut conn = self.inner.conn.clone();
            self.run(
                redis::cmd("SET")
                    .arg(&key)
                    .arg(&model)
                    .arg("PX")
                    .arg(ttl.as_millis().max(1) as u64)
                    .query_async::<()>(&mut conn),
            )
            .await
        })
    }

    fn unpin(&self, conversation: Digest) -> FleetFuture<'_, ()> {
        let key = self.key(&format!("pin:{}", key_hex(&conversation)));
        Box::pin(async move {
            let mut conn = self.inner.conn.clone();
            self.run(conn.del::<_, ()>(&key)).await
        })
    }

    fn pinned(&self, conversation: Digest) -> FleetFuture<'_, Option<String>> {
        let key = self.key(&format!("pin:{}", key_hex(&conversation)));
        Box::pin(async move {
            let mut conn = self.inner.conn.clone();
            self.run(conn.get(&key)).await
        })
    }

    fn claim(
        &self,
        key: Digest,
        fingerprint: Digest,
        ttl: Duration,
    ) -> FleetFuture<'_, FleetClaim> {
        let key = self.key(&format!("idem:{}", key_hex(&key)));
        Box::pin(async move {
            let mut conn = self.inner.conn.clone();
            let running = ttl.min(RUNNING_TTL).max(Duration::from_secs(1));
            let mut inv = CLAIM.key(&key);
            inv.arg(key_hex(&fingerprint))
                .arg(&self.inner.instance)
                .arg(running.as_millis() as u64);
            let answer: Vec<String> = self.run(inv.invoke_async(&mut conn)).await?;
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
            let mut conn = self.inner.conn.clone();
            let Some(answer) = answer else {
                return self.run(conn.del::<_, ()>(&key)).await;
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
            self.run(pipe.query_async::<()>(&mut conn)).await
        })
    }

    fn cache_get(&self, key: &str) -> FleetFuture<'_, Option<(StoredAnswer, Duration)>> {
        let key = self.key(&format!("cache:{}", part(key)));
        Box::pin(async move {
            let mut conn = self.inner.conn.clone();
            let got: Option<String> = self.run(conn.get(&key)).await?;
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
            let mut conn = self.inner.conn.clone();
            self.run(
                redis::cmd("SET")
                    .arg(&key)
                    .arg(json)
                    .arg("PX")
                    .arg(ttl.as_millis().max(1) as u64)
                    .query_async::<()>(&mut conn),
            )
            .await
        })
    }

    fn round_trips(&self) -> u64 {
        self.inner.round_trips.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact("redis://:s3cret@localhost:6379/0"),
            "redis://:***@localhost:6379/0"
        );
        assert_eq!(
            redact("rediss://user:s3cret@host:6380"),
            "rediss://user:***@host:6380"
        );
        assert_eq!(redact("redis://localhost:6379"), "redis://localhost:6379");
        assert!(!redact("redis://:p@ss@host").contains("p@ss"));
    }

    #[test]
    fn names_and_key_parts_stay_plain() {
        assert!(name_ok("prod-eu_1"));
        assert!(!name_ok("a:b"));
        assert!(!name_ok(""));
        assert_eq!(part("claude-sonnet-4.5/x y"), "claude-sonnet-4.5_x_y");
    }
}
