//! What every request actor of one runtime shares: the resolved chains and models, the live
//! actor refs, the calls in flight, the response cache, the latency book. Built once by the
//! facade at spawn, read-only after (the counters aside).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use ractor::ActorRef;
use tokio::sync::Notify;

use super::{RequestMsg, ResponseCache};
use crate::directory::Directory;
use crate::fleet::Fleet;
use crate::latency::LatencyBook;
use crate::policy::chain::RetryPolicy;
use crate::protocol::SupervisorMsg;
use crate::upstream::Upstream;
use crate::wire::Price;

/// A resolved fallback chain: model ids in order, and its retry policy.
#[derive(Debug)]
pub struct Chain {
    /// The chain's id (its index in the monitor's chain list).
    pub id: usize,
    /// The chain's name.
    pub name: String,
    /// Model ids, first choice first.
    pub hops: Vec<usize>,
    /// Per hop: a patch against the original request (`None`: the request as is).
    pub patches: Vec<Option<serde_json::Map<String, serde_json::Value>>>,
    /// Retry and deadline rules.
    pub policy: Arc<RetryPolicy>,
}

/// A model as request actors see it.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    /// seawall's name for the model: the key of its breaker, metrics, pins and chains.
    pub name: String,
    /// The upstream's id for it, what goes on the wire (the body's `model`, or the path on
    /// Bedrock and Vertex): [`Builder::model_id`](crate::Builder::model_id), else `name`.
    pub id: String,
    /// Index of its upstream.
    pub upstream: usize,
    /// Its model class within the upstream, for per-class limits (0: the upstream's default).
    pub class: usize,
}

/// Counts calls in flight so shutdown can wait for them, and request actors that failed; knows
/// the live request actors so shutdown can stop the ones still running after its grace.
#[derive(Default)]
pub struct InFlight {
    pub(super) count: AtomicUsize,
    pub(super) idle: Notify,
    pub(super) failures: AtomicU64,
    /// Request actors between their `pre_start` and their end (clean or not).
    pub(super) live: dashmap::DashMap<ractor::ActorId, ActorRef<RequestMsg>>,
}

impl InFlight {
    /// Register a call; the guard unregisters it when dropped.
    pub fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.count.fetch_add(1, Ordering::SeqCst);
        InFlightGuard(self.clone())
    }

    /// Calls in flight now.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Request actors that failed so far (each such call got an internal error).
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Stop every request actor still running: each ends after the message it is handling,
    /// its attempts cancelled, and its caller gets an internal error (the call was abandoned).
    /// A clean stop: not counted as a failure.
    pub fn stop_all(&self, reason: &str) {
        for actor in self.live.iter() {
            actor.value().stop(Some(reason.to_owned()));
        }
    }

    /// Wait until no call is in flight.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Keeps a call counted as in flight while it lives.
pub struct InFlightGuard(pub(super) Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// What every request actor of one runtime shares (read-only after spawn).
pub struct Shared {
    /// Live actor refs.
    pub directory: Arc<Directory>,
    /// The supervisor, asked for fresh refs after a child restart.
    pub supervisor: ActorRef<SupervisorMsg>,
    /// Upstreams by index.
    pub upstreams: Vec<Arc<dyn Upstream>>,
    /// Upstream names by index (the `gen_ai.system` of traces).
    pub upstream_names: Vec<String>,
    /// Models by id.
    pub models: Vec<ModelInfo>,
    /// Prices by model id, for the cost in the call log line.
    pub prices: Vec<Option<Price>>,
    /// Put the request's messages and system prompt in the call log line (off by default:
    /// prompts may hold personal data).
    pub log_prompts: bool,
    /// Calls in flight.
    pub in_flight: Arc<InFlight>,
    /// Seed source for per-call jitter.
    pub seed: AtomicU64,
    /// The response cache, when configured.
    pub cache: Option<Arc<ResponseCache>>,
    /// Fault injection: the next request actor to start panics at its first message.
    #[doc(hidden)]
    pub panic_next: AtomicBool,
    /// The fleet this runtime belongs to, if any (shared pins and response cache).
    pub fleet: Option<Arc<dyn Fleet>>,
    /// The models' latency estimates (hedge delays, learned timeouts).
    pub latency: Arc<LatencyBook>,
}
