//! One bounded connection to the fleet's Redis, the errors it reports, and the fleet's heartbeat.
//!
//! Every call is bounded: a connection attempt and a reply each get ~500 ms, a lost connection is
//! retried once after a short backoff, and a `tokio::time::timeout` backstop wraps every call,
//! so a dead or blackholed Redis costs a second at most, never a hang. redis-rs' defaults would
//! retry a dead server for ~9 s per command (see the research notes, B2).
//!
//! Blocking commands (`BLOCK`, `BLPOP`) must never run on the shared manager: its response
//! timeout would cut them and the next command would queue behind them in Redis.
//! [`RedisConn::blocking`] gives a second manager without a response timeout for those.
//!
//! Secrets stay secret: the URL is kept and shown only redacted (`redis://:***@host:6379/0`), and
//! error messages are scrubbed of the password.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError, RedisResult, Script, ServerErrorKind};
use tokio::sync::OnceCell;

/// How a [`RedisConn`] bounds its calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnOptions {
    /// One connection attempt (TCP, TLS, AUTH, SELECT). Default 500 ms.
    pub connect_timeout: Duration,
    /// One command's reply on the shared manager. Default 500 ms.
    pub response_timeout: Duration,
    /// Reconnect attempts after the first one fails. Default 1.
    pub retries: usize,
    /// The first delay before a reconnect attempt (exponential, jittered). Default 50 ms.
    pub min_backoff: Duration,
    /// The longest delay between reconnect attempts. Default 200 ms.
    pub max_backoff: Duration,
    /// The backstop on every call, connecting included. Default 1 s.
    pub call_timeout: Duration,
}

impl Default for ConnOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_millis(500),
            response_timeout: Duration::from_millis(500),
            retries: 1,
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(200),
            call_timeout: Duration::from_secs(1),
        }
    }
}

impl ConnOptions {
    fn manager_config(&self, response_timeout: Option<Duration>) -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(response_timeout)
            .set_number_of_retries(self.retries)
            .set_min_delay(self.min_backoff)
            .set_max_delay(self.max_backoff)
            .set_exponent_base(2.0)
    }
}

/// What went wrong talking to Redis, classified by what the operator should do. Every message
/// names the (redacted) URL and never contains the password.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// Redis could not be reached or did not answer in time: refused, reset, timed out, still
    /// loading its data, or a replica without its primary.
    #[error(
        "Redis at {url} is unavailable ({reason}): check that it runs and that this host can \
         reach it"
    )]
    Unavailable {
        /// The redacted URL.
        url: String,
        /// What happened.
        reason: String,
    },
    /// Redis refused the credentials (WRONGPASS, NOAUTH, NOPERM): a configuration error.
    #[error("Redis at {url} refused the credentials ({reason}): check the password in redis_url")]
    Auth {
        /// The redacted URL.
        url: String,
        /// What Redis said.
        reason: String,
    },
    /// Redis is at its `maxmemory` and refuses writes (OOM).
    #[error(
        "Redis at {url} is out of memory ({reason}): raise its maxmemory or free memory; nothing \
         can be stored until then"
    )]
    Full {
        /// The redacted URL.
        url: String,
        /// What Redis said.
        reason: String,
    },
    /// The server is a read-only replica (READONLY).
    #[error("Redis at {url} is a read-only replica ({reason}): point redis_url at the primary")]
    ReadOnly {
        /// The redacted URL.
        url: String,
        /// What Redis said.
        reason: String,
    },
    /// The URL cannot be used.
    #[error("redis_url {url}: {problem}")]
    BadUrl {
        /// The redacted URL.
        url: String,
        /// What is wrong with it and how to write it.
        problem: String,
    },
    /// The fleet's name cannot be used in Redis keys.
    #[error("the fleet name {name:?} {problem}")]
    BadName {
        /// The name as given.
        name: String,
        /// What is wrong with it and how to write it.
        problem: String,
    },
    /// Anything else Redis answered (a bug on our side or an unexpected server).
    #[error("Redis at {url}: {reason}")]
    Other {
        /// The redacted URL.
        url: String,
        /// What happened.
        reason: String,
    },
}

impl ClusterError {
    /// True when Redis could not be reached or did not answer: worth trying again later.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, ClusterError::Unavailable { .. })
    }
}

/// `redis_url` with any password replaced by `***`: `redis://:***@host:6379/0`. Everything
/// before the last `@` of the authority is user info; its part after the first `:` is the
/// password (a lone user info is redacted whole: it may be a password written without `:`).
/// Query values whose key mentions `pass` are redacted too.
pub fn redact(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rfind('@') {
        Some(at) => {
            let (info, host) = authority.split_at(at);
            match info.split_once(':') {
                Some((user, _)) => format!("{user}:***{host}"),
                None => format!("***{host}"),
            }
        }
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k.to_ascii_lowercase().contains("pass") => format!("{k}=***"),
                    _ => kv.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}{authority}{tail}")
}

/// The password of `url` as written and percent-decoded, to scrub from messages.
fn secrets(url: &str) -> Vec<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let Some(at) = authority.rfind('@') else {
        return Vec::new();
    };
    let info = &authority[..at];
    let secret = info.split_once(':').map_or(info, |(_, p)| p);
    if secret.is_empty() {
        return Vec::new();
    }
    let mut out = vec![secret.to_owned()];
    let decoded = percent_decode(secret);
    if decoded != secret {
        out.push(decoded);
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Check the URL's shape before redis-rs sees it, so the error says what to write.
///
/// # Errors
///
/// What is wrong and how to write it.
pub fn check_url(url: &str) -> Result<(), String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(
            "must start with redis:// or rediss://, e.g. \"redis://:PASSWORD@10.0.0.5:6379/0\""
                .into(),
        );
    };
    if scheme != "redis" && scheme != "rediss" {
        return Err(format!(
            "the scheme {scheme:?} is not supported: use redis:// (or rediss:// for TLS)"
        ));
    }
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.is_empty() || host.starts_with(':') {
        return Err("names no host: write redis://HOST:PORT/DB".into());
    }
    Ok(())
}

/// The longest fleet name.
pub const MAX_FLEET_NAME: usize = 64;

/// A fleet's name goes into every key: 1 to [`MAX_FLEET_NAME`] letters, digits, `_` or `-`.
///
/// # Errors
///
/// [`ClusterError::BadName`] saying what to write.
pub fn check_fleet_name(name: &str) -> Result<(), ClusterError> {
    let bad = |problem: String| ClusterError::BadName {
        name: name.to_owned(),
        problem,
    };
    if name.is_empty() || name.len() > MAX_FLEET_NAME {
        return Err(bad(format!(
            "must be 1 to {MAX_FLEET_NAME} characters, e.g. \"prod-eu\""
        )));
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        Some(c) => Err(bad(format!(
            "has {c:?}: use only letters, digits, '_' and '-'"
        ))),
        None => Ok(()),
    }
}

/// A connection to the fleet's Redis: a shared multiplexed manager for ordinary commands and, on
/// demand, a second one for blocking reads. Cheap to clone.
#[derive(Clone)]
pub struct RedisConn {
    client: redis::Client,
    manager: ConnectionManager,
    blocking: Arc<OnceCell<ConnectionManager>>,
    url: Arc<str>,
    secrets: Arc<[String]>,
    opts: ConnOptions,
}

impl fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConn")
            .field("url", &self.url)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl RedisConn {
    /// Connect to `url` (`redis://[:PASSWORD@]HOST[:PORT][/DB]`, or `rediss://` for TLS).
    ///
    /// # Errors
    ///
    /// [`ClusterError::BadUrl`] for a URL that cannot be used; [`ClusterError::Unavailable`]
    /// when Redis cannot be reached within the options' bounds; [`ClusterError::Auth`] for a
    /// refused password.
    pub async fn connect(url: &str, opts: ConnOptions) -> Result<RedisConn, ClusterError> {
        let shown = redact(url);
        let bad = |problem: String| ClusterError::BadUrl {
            url: shown.clone(),
            problem,
        };
        check_url(url).map_err(bad)?;
        let secrets: Arc<[String]> = secrets(url).into();
        let client = redis::Client::open(url).map_err(|e| {
            let problem =
                if e.kind() == ErrorKind::InvalidClientConfig && url.starts_with("rediss://") {
                    "rediss:// (TLS) is not supported by this build: use redis:// over a private \
                 network or a TLS tunnel"
                        .to_owned()
                } else {
                    format!("cannot be used: {}", scrub(&e.to_string(), &secrets))
                };
            bad(problem)
        })?;
        let config = opts.manager_config(Some(opts.response_timeout));
        let manager = match tokio::time::timeout(
            opts.call_timeout,
            client.get_connection_manager_with_config(config),
        )
        .await
        {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => return Err(classify(&e, &shown, &secrets)),
            Err(_) => {
                return Err(ClusterError::Unavailable {
                    url: shown,
                    reason: format!("no connection within {:?}", opts.call_timeout),
                })
            }
        };
        tracing::info!(redis = %shown, "connected to the fleet's Redis");
        Ok(RedisConn {
            client,
            manager,
            blocking: Arc::new(OnceCell::new()),
            url: shown.into(),
            secrets,
            opts,
        })
    }

    /// The URL with its password redacted.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The options it was connected with.
    pub fn options(&self) -> ConnOptions {
        self.opts
    }

    /// Run one call on the shared manager, bounded by the backstop, its error classified.
    /// `what` names the operation in a timeout's message.
    ///
    /// # Errors
    ///
    /// The classified [`ClusterError`].
    pub async fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T, ClusterError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        self.bounded(what, self.opts.call_timeout, f(self.manager.clone()))
            .await
    }

    /// A second manager without a response timeout, for blocking reads (`XREADGROUP ... BLOCK`):
    /// bound those with their own `BLOCK` and a `tokio::time::timeout` above it. Connected on
    /// first use.
    ///
    /// # Errors
    ///
    /// As [`RedisConn::connect`].
    pub async fn blocking(&self) -> Result<ConnectionManager, ClusterError> {
        self.blocking
            .get_or_try_init(|| {
                let config = self.opts.manager_config(None);
                self.bounded(
                    "connect for blocking reads",
                    self.opts.call_timeout,
                    self.client.get_connection_manager_with_config(config),
                )
            })
            .await
            .cloned()
    }

    /// A subscription connection of its own (pub/sub takes a connection over), bounded like
    /// any call.
    ///
    /// # Errors
    ///
    /// The classified [`ClusterError`].
    pub async fn pubsub(&self) -> Result<redis::aio::PubSub, ClusterError> {
        self.bounded(
            "subscribe",
            self.opts.call_timeout,
            self.client.get_async_pubsub(),
        )
        .await
    }

    async fn bounded<T>(
        &self,
        what: &str,
        limit: Duration,
        fut: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, ClusterError> {
        match tokio::time::timeout(limit, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.classify(&e)),
            Err(_) => Err(ClusterError::Unavailable {
                url: self.url.to_string(),
                reason: format!("{what}: no answer within {limit:?}"),
            }),
        }
    }

    /// Classify a redis-rs error for this connection.
    pub fn classify(&self, e: &RedisError) -> ClusterError {
        classify(e, &self.url, &self.secrets)
    }

    /// The start-up check: PING, then a tiny `SET ... PX` that expires by itself, so a Redis that
    /// is unreachable, refuses the password, is read-only or is full is a clear error at start
    /// rather than at the first queued job.
    ///
    /// # Errors
    ///
    /// The classified [`ClusterError`].
    pub async fn ping_writable(&self) -> Result<(), ClusterError> {
        let pong: String = self
            .call("PING", |mut m| async move {
                redis::cmd("PING").query_async(&mut m).await
            })
            .await?;
        if pong != "PONG" {
            return Err(ClusterError::Other {
                url: self.url.to_string(),
                reason: format!("PING answered {pong:?}, not PONG: is this a Redis server?"),
            });
        }
        let _: () = self
            .call("a test write", |mut m| async move {
                redis::cmd("SET")
                    .arg("seawall:writable-check")
                    .arg("1")
                    .arg("PX")
                    .arg(1000)
                    .query_async(&mut m)
                    .await
            })
            .await?;
        Ok(())
    }

    /// Mark `instance` alive in `fleet` for `ttl` from now (Redis' clock, so hosts need not agree
    /// on the time), and forget instances whose mark has expired. Call it more often than `ttl`.
    /// Returns how many instances are alive, this one included.
    ///
    /// # Errors
    ///
    /// The classified [`ClusterError`].
    pub async fn heartbeat(
        &self,
        fleet: &str,
        instance: &str,
        ttl: Duration,
    ) -> Result<usize, ClusterError> {
        let key = fleet_key(fleet, "alive");
        let ttl_ms = ttl.as_millis() as u64;
        let live: i64 = self
            .call("heartbeat", |mut m| async move {
                HEARTBEAT
                    .key(key)
                    .arg(instance)
                    .arg(ttl_ms)
                    .invoke_async(&mut m)
                    .await
            })
            .await?;
        Ok(usize::try_from(live).unwrap_or(1))
    }

    /// The instances of `fleet` whose heartbeat has not expired, sorted by name.
    ///
    /// # Errors
    ///
    /// The classified [`ClusterError`].
    pub async fn live_instances(&self, fleet: &str) -> Result<Vec<String>, ClusterError> {
        let key = fleet_key(fleet, "alive");
        let mut live: Vec<String> = self
            .call("live instances", |mut m| async move {
                LIVE.key(key).invoke_async(&mut m).await
            })
            .await?;
        live.sort();
        Ok(live)
    }
}

/// A fleet's key: `seawall:{FLEET}:PART`. The braces are a Redis Cluster hash tag, so all of one
/// fleet's keys share a slot and multi-key scripts stay valid there too.
pub fn fleet_key(fleet: &str, part: &str) -> String {
    format!("seawall:{{{fleet}}}:{part}")
}

/// `ZADD alive (now + ttl) instance` on Redis' clock, drop expired members, count the live.
static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 10)
return redis.call('ZCARD', KEYS[1])
",
    )
});

/// Members of `alive` whose expiry is still ahead, on Redis' clock.
static LIVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
",
    )
});

/// A new instance id: `seawall-PID-RANDOM`, unique per process start (a restarted process is a
/// new instance; its predecessor's heartbeat expires and its jobs are reclaimed).
pub fn new_instance_id() -> String {
    use std::hash::{BuildHasher, RandomState};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let random = RandomState::new().hash_one((nanos, std::process::id()));
    format!("seawall-{}-{random:016x}", std::process::id())
}

/// Keeps one instance's heartbeat going: beats every `every` with a mark valid for `ttl`, until
/// dropped.
#[derive(Debug)]
pub struct Heartbeat {
    task: tokio::task::JoinHandle<()>,
}

impl Heartbeat {
    /// Beat once now (so the instance is alive before it claims anything), then every `every`.
    ///
    /// # Errors
    ///
    /// The first beat's [`ClusterError`].
    pub async fn start(
        conn: RedisConn,
        fleet: &str,
        instance: &str,
        every: Duration,
        ttl: Duration,
    ) -> Result<Heartbeat, ClusterError> {
        conn.heartbeat(fleet, instance, ttl).await?;
        let (fleet, instance) = (fleet.to_owned(), instance.to_owned());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await; // the first tick is now: beaten already
            let mut failing = false;
            loop {
                tick.tick().await;
                match conn.heartbeat(&fleet, &instance, ttl).await {
                    Ok(_) if failing => {
                        failing = false;
                        tracing::info!(%instance, "heartbeat to Redis works again");
                    }
                    Ok(_) => {}
                    // Once per outage, not once a second.
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(%instance, error = %e, "heartbeat to Redis failed; other instances will take over this one's jobs if it lasts");
                    }
                    Err(_) => {}
                }
            }
        });
        Ok(Heartbeat { task })
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Replace every occurrence of a secret in `text` by `***`.
fn scrub(text: &str, secrets: &[String]) -> String {
    secrets
        .iter()
        .filter(|s| !s.is_empty())
        .fold(text.to_owned(), |t, s| t.replace(s.as_str(), "***"))
}

/// What a redis-rs error means for the operator (research notes, B7).
fn classify(e: &RedisError, url: &str, secrets: &[String]) -> ClusterError {
    let url = url.to_owned();
    let reason = scrub(&e.to_string(), secrets);
    // Errors raised inside a script may arrive without a parsed code: look for the word too.
    let code = e.code().unwrap_or_default().to_owned();
    let words: Vec<&str> = reason.split(|c: char| !c.is_ascii_alphanumeric()).collect();
    let mentions = |c: &str| code == c || words.contains(&c);
    match e.kind() {
        ErrorKind::AuthenticationFailed | ErrorKind::Server(ServerErrorKind::NoPerm) => {
            return ClusterError::Auth { url, reason }
        }
        ErrorKind::Server(ServerErrorKind::ReadOnly) => {
            return ClusterError::ReadOnly { url, reason }
        }
        ErrorKind::InvalidClientConfig => {
            return ClusterError::BadUrl {
                url,
                problem: reason,
            }
        }
        _ => {}
    }
    if ["NOAUTH", "WRONGPASS", "NOPERM"]
        .iter()
        .any(|c| mentions(c))
    {
        ClusterError::Auth { url, reason }
    } else if mentions("OOM") {
        ClusterError::Full { url, reason }
    } else if mentions("READONLY") {
        ClusterError::ReadOnly { url, reason }
    } else if e.is_io_error()
        || e.is_timeout()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || ["LOADING", "MASTERDOWN", "TRYAGAIN"]
            .iter()
            .any(|c| mentions(c))
    {
        ClusterError::Unavailable { url, reason }
    } else {
        ClusterError::Other { url, reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_from_urls() {
        let cases = [
            (
                "redis://:hunter2@10.0.0.5:6379/0",
                "redis://:***@10.0.0.5:6379/0",
            ),
            ("redis://app:hunter2@host/1", "redis://app:***@host/1"),
            ("rediss://:p%40ss@host:6380", "rediss://:***@host:6380"),
            ("redis://:p@ss@host:6379/0", "redis://:***@host:6379/0"),
            ("redis://hunter2@host", "redis://***@host"),
            ("redis://host:6379/0", "redis://host:6379/0"),
            (
                "redis://host/0?password=hunter2&x=1",
                "redis://host/0?password=***&x=1",
            ),
            (":hunter2@host", ":***@host"),
        ];
        for (url, shown) in cases {
            assert_eq!(redact(url), shown, "{url}");
            assert!(!redact(url).contains("hunter2"), "{url}");
        }
    }

    #[test]
    fn secrets_are_found_raw_and_decoded_and_scrubbed() {
        let s = secrets("redis://:p%40ss@host/0");
        assert_eq!(s, ["p%40ss", "p@ss"]);
        assert_eq!(scrub("auth p@ss failed", &s), "auth *** failed");
        assert!(secrets("redis://host/0").is_empty());
        assert!(secrets("redis://:@host/0").is_empty());
    }

    #[test]
    fn a_bad_url_says_what_to_write() {
        assert!(check_url("localhost:6379")
            .unwrap_err()
            .contains("redis://"));
        assert!(check_url("http://host").unwrap_err().contains("scheme"));
        assert!(check_url("redis://:pw@/0").unwrap_err().contains("no host"));
        assert!(check_url("redis://127.0.0.1:6379/0").is_ok());
        assert!(check_url("rediss://h").is_ok());
    }

    #[tokio::test]
    async fn errors_and_debug_never_show_the_password() {
        let e = RedisConn::connect("redis://:hunter2@", ConnOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(e, ClusterError::BadUrl { .. }), "{e:?}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(!format!("{e:?}").contains("hunter2"), "{e:?}");
        // Nothing listens on port 1: refused at once, classified, redacted.
        let started = std::time::Instant::now();
        let e = RedisConn::connect("redis://:hunter2@127.0.0.1:1/0", ConnOptions::default())
            .await
            .unwrap_err();
        assert!(e.is_unavailable(), "{e:?}");
        let text = format!("{e} {e:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("redis://:***@127.0.0.1:1/0"), "{text}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn fleet_keys_share_a_hash_tag() {
        assert_eq!(fleet_key("prod-eu", "jobs"), "seawall:{prod-eu}:jobs");
    }
}
