//! One probe run for one model: the only place the monitor's work awaits I/O. The monitor
//! schedules runs; each run is a task of its own.
//!
//! A run asks the breaker for a probe permit (a half-open trial, which user calls do not get
//! while probes run, or a health check when closed), sends `count_tokens` when the upstream has
//! a counter, or else a 1-token message run as an ordinary attempt (budgeted by the governor,
//! recorded by the breaker: the request actors' own attempt code), and reports the result here.

use std::sync::Arc;
use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::ActorRef;

use super::{model_outcome, ProbeConfig, ProbeKind};
use crate::attempt;
use crate::call::{Call, Lane};
use crate::clock;
use crate::directory::Directory;
use crate::fleet::Fleet;
use crate::policy::classify::{classify_transport, Class};
use crate::policy::lanes::{Decision, ReserveRequest};
use crate::policy::sla::SlaOutcome;
use crate::protocol::{
    AttemptSample, BreakerMsg, GovernorMsg, MonitorMsg, ProbeAdmission, Responder,
};
use crate::upstream::Upstream;
use crate::wire::{Attempt, Cost, TransportError};

/// How long a breaker or governor may take to answer a probe task.
const ACTOR_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// A probe task stops after this many half-open trials in a row (a breaker decides on
/// `half_open_calls` of them; the bound only guards against a loop).
const MAX_TRIALS: usize = 32;

/// One probe run.
pub(super) struct ProbeTask {
    pub model: usize,
    pub name: String,
    /// The upstream's id for the model: what goes on the wire.
    pub id: String,
    pub upstream: Arc<dyn Upstream>,
    pub upstream_id: usize,
    pub class: usize,
    pub cfg: ProbeConfig,
    pub directory: Arc<Directory>,
    pub monitor: ActorRef<MonitorMsg>,
    /// In a fleet, one instance probes a model per interval: the others hear its findings.
    pub fleet: Option<Arc<dyn Fleet>>,
}

impl ProbeTask {
    pub(super) async fn run(self) {
        let mut trial_only = false;
        let mut retry_at = None;
        if let Some(fleet) = &self.fleet {
            let what = format!("probe:{}", self.name);
            // An unreachable fleet: probe alone, as one instance would.
            if !fleet.elect(&what, self.cfg.interval).await.unwrap_or(true) {
                let _ = self.monitor.cast(MonitorMsg::ProbeDone {
                    model: self.model,
                    retry_at: None,
                });
                return;
            }
        }
        for _ in 0..MAX_TRIALS {
            let Some(breaker) = self.directory.breaker(self.model) else {
                break;
            };
            let admission = match breaker
                .call(
                    |reply| BreakerMsg::Probe { trial_only, reply },
                    Some(ACTOR_CALL_TIMEOUT),
                )
                .await
            {
                Ok(CallResult::Success(a)) => a,
                _ => break,
            };
            let (permit, trial) = match admission {
                ProbeAdmission::Trial(p) => (p, true),
                ProbeAdmission::Check(p) => (p, false),
                ProbeAdmission::Denied { until } => {
                    retry_at = until;
                    break;
                }
            };
            let Some(sample) = self.send(&breaker, permit).await else {
                // Nothing was sent (no key or no budget): the slot goes to the next prober.
                let _ = breaker.cast(BreakerMsg::Release(permit));
                break;
            };
            tracing::debug!(
                model = %self.name,
                class = sample.class.as_str(),
                status = sample.status.unwrap_or(0),
                latency_ms = sample.latency.as_millis() as u64,
                trial,
                "probe"
            );
            let _ = self.monitor.cast(MonitorMsg::ProbeSample(sample));
            // A half-open breaker decides on `half_open_calls` trials, and user calls may not
            // take them: go again until it decides (it then denies a trial). A closed breaker
            // needs one check; an answer that says nothing about health (a 429) ends the run.
            if !trial || model_outcome(sample.class) == SlaOutcome::Excluded {
                break;
            }
            trial_only = true;
        }
        let _ = self.monitor.cast(MonitorMsg::ProbeDone {
            model: self.model,
            retry_at,
        });
    }

    fn attempt(&self, key: usize) -> Attempt {
        Attempt {
            model: self.id.clone(),
            body: Call::new(&self.id, 1).user("ping").body_for(&self.id),
            key,
            retry_count: 0,
            timeout: self.cfg.timeout,
            idempotency_key: None,
            forward: Default::default(),
        }
    }

    /// Send one probe under `permit` and have it recorded; `None` when none could be sent.
    async fn send(
        &self,
        breaker: &ActorRef<BreakerMsg>,
        permit: crate::policy::breaker::Permit,
    ) -> Option<AttemptSample> {
        let governor = self.directory.governor()?;
        if self.cfg.kind == ProbeKind::Auto {
            let key = match governor
                .call(
                    |reply| GovernorMsg::PickKey(self.upstream_id, reply),
                    Some(ACTOR_CALL_TIMEOUT),
                )
                .await
            {
                Ok(CallResult::Success(Some(key))) => key,
                _ => return None,
            };
            if let Some(count) = self.upstream.count_tokens(self.attempt(key)) {
                let start = clock::now();
                let class = match tokio::time::timeout(self.cfg.timeout, count).await {
                    Ok(Ok(_)) => Class::Success,
                    Err(_) | Ok(Err(TransportError::Timeout(_))) => Class::Timeout,
                    // A counter reports an error status as `Invalid` without the status: for
                    // a probe, any error answer means the model is not healthy.
                    Ok(Err(TransportError::Invalid(_))) => Class::ServerError,
                    Ok(Err(e)) => classify_transport(&e).class(),
                };
                let at = clock::now();
                let latency = at.saturating_duration_since(start);
                let entry = attempt::counted(breaker, permit, class, latency);
                return Some(AttemptSample {
                    model: self.model,
                    class,
                    status: None,
                    latency,
                    at,
                    retry: false,
                    usage: entry.usage,
                });
            }
        }
        // A 1-token message, paid for like any attempt (background lane, no waiting): a probe
        // must never cause a 429.
        let request = ReserveRequest {
            upstream: self.upstream_id,
            class: self.class,
            cost: Cost::request(8, 1),
            lane: Lane::Background,
            feature: None,
            max_wait: Duration::ZERO,
        };
        let ticket = match governor
            .call(
                |reply| GovernorMsg::Reserve(request, Responder::port(reply)),
                Some(ACTOR_CALL_TIMEOUT),
            )
            .await
        {
            Ok(CallResult::Success(Decision::Grant { ticket, .. })) => ticket,
            _ => return None,
        };
        let done = attempt::run(attempt::Spec {
            upstream: Arc::clone(&self.upstream),
            attempt: self.attempt(ticket.key),
            stream: false,
            model: self.model,
            retry: false,
            holds: attempt::Holds {
                breaker: Some(breaker.clone()),
                governor: Some(governor),
                permit,
                ticket,
            },
            span: tracing::Span::none(),
        })
        .await;
        done.sample
    }
}
