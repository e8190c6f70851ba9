//! The facade: [`Seawall::builder`] configures upstreams, models, chains and limits; `spawn`
//! starts the supervised actor tree; [`Seawall::complete`] runs one call through it.
//!
//! Rooms: this file is the running facade (calls, streams, token counts, status, shutdown);
//! `builder.rs` what a runtime is made of and how it starts; `idempotent.rs` the keyed-call flow
//! (lead, wait, replay; the fleet's claims).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::ActorRef;
use tokio::sync::{broadcast, oneshot};

use crate::call::{Call, CountMiss, Reply, TokenCount};
use crate::error::Error;
use crate::events::Event;
use crate::job::Job;
use crate::policy::lanes::{FleetMode, UpstreamStatus};
use crate::protocol::{
    BreakerMsg, BreakerStatus, GovernorMsg, IdempotencyMsg, MonitorMsg, QueueMsg, Readiness,
    SlaReport, SupervisorMsg,
};
use crate::request::{Chain, ReplyTo, RequestArgs, Shared, StreamReply};

mod builder;
mod idempotent;

pub use builder::{Builder, HopSpec, DEFAULT_TRANSIT_ALLOWANCE};

/// How long a shutdown waits for the calls it ended past its grace to answer their callers.
const ABANDON_WAIT: Duration = Duration::from_secs(1);

/// A running seawall runtime. Cheap to clone; every clone drives the same actors.
#[derive(Clone)]
pub struct Seawall {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    chains: HashMap<String, Arc<Chain>>,
    model_ids: HashMap<String, usize>,
    feature_ids: HashMap<String, usize>,
    supervisor: ActorRef<SupervisorMsg>,
    events: broadcast::Sender<Event>,
    accepting: AtomicBool,
    /// How long answers to idempotency keys are kept (for the fleet's copy).
    idempotency_ttl: Duration,
}

/// How an instance stands in its fleet (see [`Seawall::fleet_status`]).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct FleetStatus {
    /// How the organization budget is funded now.
    pub mode: FleetMode,
    /// Live instances at the last count (1 alone).
    pub live_instances: usize,
    /// Exchanges with the fleet's store so far.
    pub round_trips: u64,
}

/// What [`Seawall::shutdown`] achieved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Calls still in flight when the grace period ended (0: everything drained). They are
    /// answered with an error once their actors notice the runtime is gone.
    pub abandoned: usize,
}

impl Seawall {
    /// Start configuring a runtime.
    pub fn builder() -> Builder {
        Builder::new()
    }

    /// Run one call through its chain and return the first good answer, or the honest error.
    pub async fn complete(&self, call: Call) -> Result<Reply, Error> {
        let table = self.inner.shared.directory.idempotency();
        match (call.idempotency_digest(), table) {
            // Boxed: a caller holds this future for the whole call, and the idempotent path's
            // state would make every call's future as large as its own (BENCHMARKS.md, memory).
            (Some(key), Some(table)) => Box::pin(self.complete_once(call, key, table)).await,
            _ => self.complete_now(call).await,
        }
    }

    async fn complete_now(&self, call: Call) -> Result<Reply, Error> {
        let (tx, rx) = oneshot::channel();
        // Boxed and gone once started: only the small wait for the answer stays held (4.6 KB
        // per call in flight before, in the library's 10k-calls measurement).
        Box::pin(self.start(call, ReplyTo::Unary(tx))).await?;
        rx.await.unwrap_or_else(|_| {
            Err(Error::Internal(
                "the request actor ended without an answer".into(),
            ))
        })
    }

    /// Run one call as a stream. Retries and fallback happen until the first content event;
    /// then the call is committed to the model serving it and the events flow to the caller.
    /// `"stream": true` is set on every attempt whatever the body said. The first-token
    /// timeout bounds each attempt until content; the call's deadline bounds the whole stream.
    pub async fn stream(&self, call: Call) -> Result<StreamReply, Error> {
        let (tx, rx) = oneshot::channel();
        Box::pin(self.start(call, ReplyTo::Stream(tx))).await?;
        rx.await.unwrap_or_else(|_| {
            Err(Error::Internal(
                "the request actor ended without an answer".into(),
            ))
        })
    }

    async fn start(&self, call: Call, reply: ReplyTo) -> Result<(), Error> {
        if !self.inner.accepting.load(Ordering::Acquire) {
            return Err(Error::ShuttingDown);
        }
        call.validate()?;
        let name = call.chain_name();
        let chain = self
            .inner
            .chains
            .get(name)
            .cloned()
            .ok_or_else(|| Error::UnknownModel(name.to_owned()))?;
        let feature = call
            .feature
            .as_ref()
            .and_then(|f| self.inner.feature_ids.get(f).copied());
        let args = RequestArgs {
            call,
            chain,
            feature,
            shared: self.inner.shared.clone(),
            reply,
            guard: self.inner.shared.in_flight.enter(),
        };
        crate::request::spawn(args).await
    }

    /// Count a request's input tokens as its chain would send it: on the upstream of the chain's
    /// first hop, with the key the governor's pool picks, within `timeout` (the same exchange
    /// as a call's [`Estimate::CountTokens`](crate::Estimate::CountTokens)). `body` is the
    /// request as the client wrote it, `call` the same request validated (its forwarded
    /// headers go along). When that upstream has no counter, no key is usable or the count
    /// fails, the answer is the heuristic estimate, and says why.
    pub async fn count_tokens(
        &self,
        call: &Call,
        body: bytes::Bytes,
        timeout: Duration,
    ) -> Result<TokenCount, Error> {
        call.validate()?;
        let chain = self
            .inner
            .chains
            .get(call.chain_name())
            .ok_or_else(|| Error::UnknownModel(call.chain_name().to_owned()))?;
        let shared = &self.inner.shared;
        let counted = match chain.hops.first().and_then(|&m| shared.models.get(m)) {
            None => Err(CountMiss::NoCounter),
            Some(info) => {
                let upstream = Arc::clone(&shared.upstreams[info.upstream]);
                // The client's bytes as they are, unless the upstream knows the model by
                // another id (then the validated request, with that id).
                let body = if call.model() == info.id {
                    body
                } else {
                    call.body_for(&info.id)
                };
                let attempt = crate::wire::Attempt {
                    model: info.id.clone(),
                    body,
                    key: 0,
                    retry_count: 0,
                    timeout,
                    idempotency_key: None,
                    forward: call.forward.clone(),
                };
                crate::attempt::count_tokens(
                    upstream.as_ref(),
                    info.upstream,
                    shared.directory.governor(),
                    attempt,
                    timeout,
                )
                .await
            }
        };
        Ok(match counted {
            Ok(n) => TokenCount::Counted(n),
            Err(why) => TokenCount::Estimated {
                tokens: call.estimate_input_tokens(),
                why,
            },
        })
    }

    /// The models a call naming `name` walks, in order (the chain of that name, or the chain
    /// its model heads): the one table the runtime was built with. `None` when nothing is
    /// served under `name`.
    pub fn chain_of(&self, name: &str) -> Option<Vec<String>> {
        let chain = self.inner.chains.get(name)?;
        let models = &self.inner.shared.models;
        Some(
            chain
                .hops
                .iter()
                .filter_map(|&m| models.get(m).map(|info| info.name.clone()))
                .collect(),
        )
    }

    /// Breaker transitions and supervision restarts, as they happen.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    fn queue_ref(&self) -> Result<ActorRef<QueueMsg>, Error> {
        self.inner.shared.directory.queue().ok_or_else(|| {
            Error::Config("no queue is configured: add .queue(store, config)".into())
        })
    }

    /// A queued job as stored: pending, or its final outcome. `None` for an unknown (or
    /// purged) id.
    pub async fn job(&self, id: &str) -> Result<Option<Job>, Error> {
        let queue = self.queue_ref()?;
        match queue
            .call(
                |reply| QueueMsg::Get {
                    id: id.to_owned(),
                    reply,
                },
                Some(Duration::from_secs(5)),
            )
            .await
        {
            Ok(CallResult::Success(found)) => found.map_err(Error::Internal),
            _ => Err(Error::Internal("the queue did not answer".into())),
        }
    }

    /// Wait up to `timeout` for a queued job's final outcome (`done`, `failed` or `expired`).
    /// An unknown id is `Ok(None)`; a job still pending when `timeout` ends is returned as it
    /// stands.
    pub async fn wait_job(&self, id: &str, timeout: Duration) -> Result<Option<Job>, Error> {
        let queue = self.queue_ref()?;
        let (tx, rx) = oneshot::channel();
        queue
            .cast(QueueMsg::Wait {
                id: id.to_owned(),
                reply: tx,
            })
            .map_err(|_| Error::Internal("the queue is not running".into()))?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(job)) => Ok(Some(job)),
            // Unknown id (the waiter was dropped unanswered), or time is up: say how it stands.
            _ => self.job(id).await,
        }
    }

    /// Like [`Seawall::job`], for one tenant: a job queued by another tenant is `None`, as if
    /// it did not exist (the gateway reads jobs so).
    pub async fn job_for(&self, id: &str, tenant: Option<&str>) -> Result<Option<Job>, Error> {
        Ok(self
            .job(id)
            .await?
            .filter(|job| job.tenant.as_deref() == tenant))
    }

    /// Like [`Seawall::wait_job`], for one tenant (see [`Seawall::job_for`]).
    pub async fn wait_job_for(
        &self,
        id: &str,
        tenant: Option<&str>,
        timeout: Duration,
    ) -> Result<Option<Job>, Error> {
        // Another tenant's job is answered at once, as an unknown id would be.
        if self.job_for(id, tenant).await?.is_none() {
            return Ok(None);
        }
        Ok(self
            .wait_job(id, timeout)
            .await?
            .filter(|job| job.tenant.as_deref() == tenant))
    }

    /// Jobs waiting in the queue and replays running now.
    pub async fn queue_depth(&self) -> Result<(usize, usize), Error> {
        let queue = self.queue_ref()?;
        match queue
            .call(QueueMsg::Count, Some(Duration::from_secs(5)))
            .await
        {
            Ok(CallResult::Success(counts)) => Ok(counts),
            _ => Err(Error::Internal("the queue did not answer".into())),
        }
    }

    /// The state of a model's breaker.
    pub async fn breaker_status(&self, model: &str) -> Result<BreakerStatus, Error> {
        let breaker = self.breaker_ref(model).await?;
        match breaker
            .call(BreakerMsg::Status, Some(Duration::from_secs(5)))
            .await
        {
            Ok(CallResult::Success(s)) => Ok(s),
            _ => Err(Error::Internal(format!(
                "the breaker of {model:?} did not answer"
            ))),
        }
    }

    /// Budget levels and key quarantine of every upstream.
    pub async fn governor_status(&self) -> Result<Vec<UpstreamStatus>, Error> {
        let governor = self.governor_ref().await?;
        match governor
            .call(GovernorMsg::Status, Some(Duration::from_secs(5)))
            .await
        {
            Ok(CallResult::Success(s)) => Ok(s),
            _ => Err(Error::Internal("the governor did not answer".into())),
        }
    }

    /// How this instance stands in its fleet: how the organization budget is funded (`alone`
    /// without a fleet, `shared` while leasing, `local` on its share while the fleet is
    /// unreachable), the live instances last counted, and the exchanges with the fleet's store.
    pub async fn fleet_status(&self) -> Result<FleetStatus, Error> {
        let governor = self.governor_ref().await?;
        match governor
            .call(GovernorMsg::Mode, Some(Duration::from_secs(5)))
            .await
        {
            Ok(CallResult::Success((mode, live))) => Ok(FleetStatus {
                mode,
                live_instances: live,
                round_trips: self
                    .inner
                    .shared
                    .fleet
                    .as_ref()
                    .map_or(0, |f| f.round_trips()),
            }),
            _ => Err(Error::Internal("the governor did not answer".into())),
        }
    }

    /// Availability, error rate, latency percentiles and failure streaks of every model and
    /// chain over the SLA window, judged against their targets.
    pub async fn sla_report(&self) -> Result<SlaReport, Error> {
        let monitor = self.monitor_ref()?;
        match monitor
            .call(MonitorMsg::Report, Some(Duration::from_secs(5)))
            .await
        {
            Ok(CallResult::Success(r)) => Ok(r),
            _ => Err(Error::Internal("the monitor did not answer".into())),
        }
    }

    /// Whether every entry chain (a named chain, or a model no chain falls back to) has a model
    /// user calls may reach now.
    pub async fn ready(&self) -> Result<Readiness, Error> {
        let monitor = self.monitor_ref()?;
        match monitor
            .call(MonitorMsg::Ready, Some(Duration::from_secs(5)))
            .await
        {
            Ok(CallResult::Success(r)) => Ok(r),
            _ => Err(Error::Internal("the monitor did not answer".into())),
        }
    }

    fn monitor_ref(&self) -> Result<ActorRef<MonitorMsg>, Error> {
        if !self.inner.accepting.load(Ordering::Acquire) {
            return Err(Error::ShuttingDown);
        }
        self.inner
            .shared
            .directory
            .monitor()
            .ok_or(Error::ShuttingDown)
    }

    /// Child restarts the supervisor performed so far.
    pub async fn restarts(&self) -> Result<u64, Error> {
        match self
            .inner
            .supervisor
            .call(SupervisorMsg::Restarts, Some(Duration::from_secs(5)))
            .await
        {
            Ok(CallResult::Success(n)) => Ok(n),
            _ => Err(Error::ShuttingDown),
        }
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> usize {
        self.inner.shared.in_flight.count()
    }

    /// The supervisor's ref, to monitor it or link it into your own tree.
    pub fn supervisor(&self) -> ActorRef<SupervisorMsg> {
        self.inner.supervisor.clone()
    }

    /// Make an actor panic (`"governor"`, `"monitor"`, `"idempotency"`, `"queue"`, a model
    /// name for its breaker, or `"request"` for the next request actor to start): a
    /// chaos drill for supervision.
    #[doc(hidden)]
    pub async fn inject_panic(&self, target: &str) -> Result<(), Error> {
        let directory = &self.inner.shared.directory;
        let sent = match target {
            "monitor" => self.monitor_ref()?.cast(MonitorMsg::InjectPanic).is_ok(),
            "governor" => self
                .governor_ref()
                .await?
                .cast(GovernorMsg::InjectPanic)
                .is_ok(),
            "idempotency" => directory
                .idempotency()
                .is_some_and(|r| r.cast(IdempotencyMsg::InjectPanic).is_ok()),
            "queue" => directory
                .queue()
                .is_some_and(|r| r.cast(QueueMsg::InjectPanic).is_ok()),
            "request" => {
                self.inner
                    .shared
                    .panic_next
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                true
            }
            model => self
                .breaker_ref(model)
                .await?
                .cast(BreakerMsg::InjectPanic)
                .is_ok(),
        };
        sent.then_some(())
            .ok_or_else(|| Error::Internal(format!("{target} is not running")))
    }

    /// Request actors that failed so far (each such call got an internal error).
    pub async fn request_failures(&self) -> Result<u64, Error> {
        Ok(self.inner.shared.in_flight.failures())
    }

    async fn breaker_ref(&self, model: &str) -> Result<ActorRef<BreakerMsg>, Error> {
        let id = *self
            .inner
            .model_ids
            .get(model)
            .ok_or_else(|| Error::UnknownModel(model.to_owned()))?;
        match self
            .inner
            .supervisor
            .call(
                |reply| SupervisorMsg::BreakerRef {
                    model: id,
                    stale: None,
                    reply: crate::protocol::Responder::port(reply),
                },
                Some(Duration::from_secs(5)),
            )
            .await
        {
            Ok(CallResult::Success(r)) => Ok(r),
            _ => Err(Error::ShuttingDown),
        }
    }

    async fn governor_ref(&self) -> Result<ActorRef<GovernorMsg>, Error> {
        match self
            .inner
            .supervisor
            .call(
                |reply| SupervisorMsg::GovernorRef {
                    stale: None,
                    reply: crate::protocol::Responder::port(reply),
                },
                Some(Duration::from_secs(5)),
            )
            .await
        {
            Ok(CallResult::Success(r)) => Ok(r),
            _ => Err(Error::ShuttingDown),
        }
    }

    /// Stop taking calls, let the ones in flight finish for up to `grace`, then stop the actors
    /// (calls still running are ended with an internal error).
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        self.inner.accepting.store(false, Ordering::Release);
        let in_flight = &self.inner.shared.in_flight;
        let _ = tokio::time::timeout(grace, in_flight.idle()).await;
        let abandoned = in_flight.count();
        if abandoned > 0 {
            // Past the grace: end the calls still running, so their callers get an answer now
            // (an internal error) rather than whenever their upstream would have answered.
            in_flight.stop_all("shutdown");
            let _ = tokio::time::timeout(ABANDON_WAIT, in_flight.idle()).await;
        }
        let _ = self
            .inner
            .supervisor
            .stop_and_wait(Some("shutdown".into()), Some(Duration::from_secs(5)))
            .await;
        ShutdownReport { abandoned }
    }
}
