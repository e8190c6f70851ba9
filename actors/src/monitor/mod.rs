//! `MonitorActor`: what the runtime did and whether it keeps its promises. It drives one
//! [`SlaWindow`] per model and per chain, the alarms ([`RateAlarm`], [`DownAlarm`]), the metrics
//! of calls and attempts, and the active health probes.
//!
//! - **Feeding it.** Each request actor casts one [`CallRecord`] per call, carrying the samples of
//!   its upstream attempts. Breakers cast their state changes, and probe tasks cast their results.
//!   Handlers never await: each message updates windows and counters, and emits metrics. The
//!   metric keys are built here rather than on the request path, so a call pays for one cast.
//! - **What counts.** For a chain, a call answered live is a success. An error returned to the
//!   caller is a failure, except a request the upstream found malformed (400, 413, 422 passed
//!   through) or an invalid call: those are the caller's fault and are counted apart as
//!   `excluded`. A 401/402/403/404 that ended every hop is the operator's problem, so it is a
//!   failure. For a model, every attempt counts by class: success, or a health failure (529,
//!   5xx, timeouts, network). A 429 (a budget signal) and the request's own 4xx are excluded, as
//!   the breaker ignores them too. Probe results count like attempts.
//! - **Probes.** For a model with a [`ProbeConfig`], a timer (`send_after`, epoch-tagged) fires
//!   every interval, and at once when its breaker's open state ends. Each firing spawns a probe
//!   task that does the I/O: the actor only schedules. The task asks the breaker for a probe
//!   permit (a half-open trial, which user calls do not get while probes run, or a health check
//!   when closed). It then sends `count_tokens` when the upstream has a counter, or a 1-token
//!   message (budgeted by the governor), and records the result with the breaker and here.
//! - **Alerts.** Fire once when a figure crosses its threshold and clear once it has recovered,
//!   published as [`Event::Alert`] and logged with `tracing::warn!`.

mod metrics;
mod probe;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::clock;
use crate::directory::Directory;
use crate::events::{AlertKind, Event, EventSender};
use crate::fleet::Fleet;
use crate::latency::LatencyBook;
use crate::policy::alert::{AlarmChange, AlertConfig, DownAlarm, RateAlarm};
use crate::policy::breaker::StateKind;
use crate::policy::classify::Class;
use crate::policy::invalid::Invalid;
use crate::policy::latency::LatencyModel;
use crate::policy::sla::{SlaConfig, SlaOutcome, SlaTarget, SlaWindow};
use crate::protocol::{
    AttemptSample, BreakerMsg, CallRecord, CallStatus, ChainReadiness, MonitorMsg, Readiness,
    SlaEntry, SlaReport,
};
use crate::timer::Timer;
use crate::upstream::Upstream;
use crate::wire::{Price, Usage};
use metrics::{ChainMetrics, ModelMetrics};
use probe::ProbeTask;

/// What a probe sends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProbeKind {
    /// `count_tokens` when the upstream has a counter (free, no generation), else a 1-token
    /// message. Not the default: the API answers `count_tokens` during an overload, so such a
    /// probe finds an overloaded model healthy and closes its breaker (tests/outage.rs: 19 user
    /// calls reached a dead primary with these probes, 5 with message probes, 14 with none).
    Auto,
    /// A 1-token message (`max_tokens: 1`): it exercises generation itself. The default.
    #[default]
    Message,
}

/// Active health probing of one model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeConfig {
    /// Time between probes while the model is healthy. An open breaker is probed when its open
    /// state ends, whatever the interval. Default 30 s.
    pub interval: Duration,
    /// A probe's own time budget. Default 10 s.
    pub timeout: Duration,
    /// What a probe sends.
    pub kind: ProbeKind,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
            kind: ProbeKind::Message,
        }
    }
}

impl ProbeConfig {
    /// Check the settings.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.interval.is_zero() {
            return Err(Invalid::new("interval", "must be longer than zero"));
        }
        if self.timeout.is_zero() {
            return Err(Invalid::new("timeout", "must be longer than zero"));
        }
        Ok(())
    }

    /// How long a half-open breaker keeps its trials for probes before it lets user calls try:
    /// if probes stop coming (the monitor is restarting), users are not locked out for good.
    pub fn grace(&self) -> Duration {
        self.interval.saturating_mul(2).saturating_add(self.timeout)
    }
}

/// A model as the monitor sees it.
#[derive(Clone, Debug)]
pub struct MonitoredModel {
    /// The model name.
    pub name: String,
    /// The upstream's id for it (what its probes send).
    pub id: String,
    /// Its upstream's index.
    pub upstream: usize,
    /// Its model class within the upstream (for probe budgets).
    pub class: usize,
    /// Active probing, if enabled.
    pub probe: Option<ProbeConfig>,
    /// Its SLA target.
    pub target: SlaTarget,
    /// Its price, if known.
    pub price: Option<Price>,
}

/// A chain as the monitor sees it.
#[derive(Clone, Debug)]
pub struct MonitoredChain {
    /// The chain name.
    pub name: String,
    /// Model ids of its hops.
    pub hops: Vec<usize>,
    /// A chain callers use directly (a named chain, or a model no named chain falls back to):
    /// readiness is judged over these.
    pub entry: bool,
    /// Its SLA target.
    pub target: SlaTarget,
}

/// Start arguments (kept by the supervisor to restart the monitor).
#[derive(Clone)]
pub struct MonitorArgs {
    /// Models by id.
    pub models: Vec<MonitoredModel>,
    /// Chains by id.
    pub chains: Vec<MonitoredChain>,
    /// The SLA window.
    pub sla: SlaConfig,
    /// Alert thresholds.
    pub alerts: AlertConfig,
    /// Upstreams by index (probes send through them).
    pub upstreams: Vec<Arc<dyn Upstream>>,
    /// Live refs of breakers and the governor.
    pub directory: Arc<Directory>,
    /// Where alerts are published.
    pub events: EventSender,
    /// The fleet, whose instances elect one prober per model.
    pub fleet: Option<Arc<dyn Fleet>>,
    /// Where the models' latency estimates are published for request actors.
    pub latency: Arc<LatencyBook>,
}

/// The actor.
pub struct MonitorActor;

struct ModelState {
    metrics: ModelMetrics,
    info: MonitoredModel,
    sla: SlaWindow,
    breaker: StateKind,
    open_until: Option<Instant>,
    down: DownAlarm,
    /// The next probe, when probing is enabled and no probe task is running.
    next_probe: Option<Instant>,
    probing: bool,
    /// Fractions of a micro-dollar not yet counted, so the cost counter adds up exactly.
    cost_carry: f64,
    /// Its recent successful answers, whose estimate is published in the latency book.
    latency: LatencyModel,
}

struct ChainState {
    metrics: ChainMetrics,
    info: MonitoredChain,
    sla: SlaWindow,
    failures: RateAlarm,
    fallbacks: RateAlarm,
}

/// The actor's state.
pub struct MonitorState {
    models: Vec<ModelState>,
    chains: Vec<ChainState>,
    sla: SlaConfig,
    alerts: AlertConfig,
    upstreams: Vec<Arc<dyn Upstream>>,
    directory: Arc<Directory>,
    events: EventSender,
    fleet: Option<Arc<dyn Fleet>>,
    latency: Arc<LatencyBook>,
    timer: Timer,
}

/// A firing rate alarm is judged again this often without traffic, so it can clear as its
/// window empties.
const REJUDGE: Duration = Duration::from_secs(1);

/// How an attempt's class counts toward its model's SLA: as the breaker judges health.
pub(crate) fn model_outcome(class: Class) -> SlaOutcome {
    match class {
        Class::Success => SlaOutcome::Success,
        Class::Overloaded | Class::ServerError | Class::Timeout | Class::Network | Class::Other => {
            SlaOutcome::Failure
        }
        Class::RateLimited
        | Class::InvalidRequest
        | Class::Authentication
        | Class::Billing
        | Class::Permission
        | Class::NotFound => SlaOutcome::Excluded,
    }
}

fn status_label(status: Option<u16>) -> String {
    status.map_or_else(|| "transport".to_owned(), |s| s.to_string())
}

impl MonitorState {
    fn record_attempt(&mut self, s: &AttemptSample, probe: bool) {
        let Some(m) = self.models.get_mut(s.model) else {
            return;
        };
        m.sla
            .record(model_outcome(s.class), Some(s.class), s.latency, s.at);
        if !probe && s.class == Class::Success {
            m.latency.record(s.latency, s.usage.output_tokens);
            if m.latency.estimate_due() {
                if let Some(e) = m.latency.estimate() {
                    self.latency.set(s.model, e);
                }
            }
        }
        let name = &m.info.name;
        let mx = &mut m.metrics;
        if probe {
            mx.probes.counter(name, s.class).increment(1);
        } else {
            mx.attempts.counter(name, s.class).increment(1);
            mx.durations
                .histogram(name, s.class)
                .record(s.latency.as_secs_f64());
            if s.retry {
                mx.retries.increment(1);
            }
        }
        if s.class != Class::Success {
            mx.failures
                .entry((s.class, s.status))
                .or_insert_with(|| {
                    ::metrics::counter!(
                        "seawall_failures_total",
                        "model" => name.clone(),
                        "class" => s.class.as_str(),
                        "status" => status_label(s.status)
                    )
                })
                .increment(1);
        }
        if s.usage != Usage::default() {
            mx.input_tokens.increment(s.usage.input_tokens);
            mx.output_tokens.increment(s.usage.output_tokens);
            if let Some(price) = m.info.price {
                // Counters are integers: count micro-dollars and carry the fraction over.
                let micros = price.cost(&s.usage) * 1e6 + m.cost_carry;
                let whole = micros.floor();
                m.cost_carry = micros - whole;
                if whole >= 1.0 {
                    mx.cost.increment(whole as u64);
                }
            }
        }
    }

    fn record_call(&mut self, rec: &CallRecord, now: Instant) {
        for s in &rec.attempts {
            self.record_attempt(s, false);
        }
        let Some(c) = self.chains.get_mut(rec.chain) else {
            return;
        };
        let status = match rec.status {
            CallStatus::Answered { .. } => 0,
            CallStatus::Failed(_) => 1,
            CallStatus::Invalid => 2,
        };
        c.metrics.calls[status].increment(1);
        c.metrics.durations[status].record(rec.latency.as_secs_f64());
        match rec.status {
            CallStatus::Answered { hop, model } => {
                c.sla.record(SlaOutcome::Success, None, rec.latency, rec.at);
                c.failures.record(false, now);
                c.fallbacks.record(hop > 0, now);
                if hop > 0 {
                    let chain = &c.info.name;
                    let models = &self.models;
                    c.metrics
                        .fallbacks
                        .entry(model)
                        .or_insert_with(|| {
                            let served = models
                                .get(model)
                                .map(|m| m.info.name.clone())
                                .unwrap_or_default();
                            ::metrics::counter!(
                                "seawall_fallbacks_total",
                                "chain" => chain.clone(),
                                "model" => served
                            )
                        })
                        .increment(1);
                    c.metrics.degraded_live.increment(1);
                }
            }
            CallStatus::Failed(class) => {
                c.sla.record(SlaOutcome::Failure, None, rec.latency, rec.at);
                c.failures.record(true, now);
                let chain = &c.info.name;
                c.metrics
                    .failures
                    .entry(class)
                    .or_insert_with(|| {
                        ::metrics::counter!(
                            "seawall_call_failures_total",
                            "chain" => chain.clone(),
                            "class" => class
                        )
                    })
                    .increment(1);
            }
            CallStatus::Invalid => {
                c.sla
                    .record(SlaOutcome::Excluded, None, rec.latency, rec.at);
            }
        }
        self.judge_chain(rec.chain, now);
    }

    fn judge_chain(&mut self, chain: usize, now: Instant) {
        let alerts = self.alerts;
        let Some(c) = self.chains.get_mut(chain) else {
            return;
        };
        let mut changes = Vec::new();
        if let Some(t) = alerts.failure_rate {
            if let Some(ch) = c.failures.judge(t, alerts.min_calls, now) {
                changes.push((AlertKind::FailureRate, t, ch));
            }
        }
        if let Some(t) = alerts.fallback_rate {
            if let Some(ch) = c.fallbacks.judge(t, alerts.min_calls, now) {
                changes.push((AlertKind::FallbackRate, t, ch));
            }
        }
        let subject = c.info.name.clone();
        for (kind, threshold, change) in changes {
            self.announce(kind, &subject, threshold, change);
        }
    }

    fn judge_model(&mut self, model: usize, now: Instant) {
        let Some(limit) = self.alerts.breaker_open_for else {
            return;
        };
        let Some(m) = self.models.get_mut(model) else {
            return;
        };
        if let Some(change) = m.down.judge(limit, now) {
            let subject = m.info.name.clone();
            self.announce(
                AlertKind::BreakerOpen,
                &subject,
                limit.as_secs_f64(),
                change,
            );
        }
    }

    fn announce(&self, kind: AlertKind, subject: &str, threshold: f64, change: AlarmChange) {
        let (value, firing) = match change {
            AlarmChange::Fired { value } => (value, true),
            AlarmChange::Cleared { value } => (value, false),
        };
        if firing {
            tracing::warn!(
                alert = kind.as_str(),
                subject,
                value,
                threshold,
                "alert firing"
            );
        } else {
            tracing::warn!(
                alert = kind.as_str(),
                subject,
                value,
                threshold,
                "alert cleared"
            );
        }
        ::metrics::gauge!("seawall_alert_firing", "kind" => kind.as_str(), "subject" => subject.to_owned())
            .set(if firing { 1.0 } else { 0.0 });
        // No subscriber is fine: the send error only says nobody listens.
        let _ = self.events.send(Event::Alert {
            kind,
            subject: subject.to_owned(),
            value,
            threshold,
            firing,
        });
    }

    fn breaker_changed(
        &mut self,
        model: usize,
        state: StateKind,
        open_until: Option<Instant>,
        now: Instant,
    ) {
        let Some(m) = self.models.get_mut(model) else {
            return;
        };
        m.breaker = state;
        m.open_until = open_until;
        m.down.set(state != StateKind::Closed, now);
        if m.info.probe.is_some() && !m.probing {
            // Probe the moment the open state ends (or now, if it already did): the trial is
            // the probe's, not a user's.
            let at = match state {
                StateKind::Open => open_until,
                StateKind::HalfOpen => Some(now),
                StateKind::Closed => None,
            };
            if let Some(at) = at {
                m.next_probe = Some(m.next_probe.map_or(at, |n| n.min(at)));
            }
        }
        self.judge_model(model, now);
    }

    fn probe_done(&mut self, model: usize, retry_at: Option<Instant>, now: Instant) {
        let Some(m) = self.models.get_mut(model) else {
            return;
        };
        m.probing = false;
        let Some(cfg) = m.info.probe else {
            return;
        };
        let mut next = now + cfg.interval;
        // The breaker (or its last transition) says when it opens up again: probe then.
        for at in [
            retry_at,
            m.open_until.filter(|_| m.breaker == StateKind::Open),
        ]
        .into_iter()
        .flatten()
        {
            next = next.min(at.max(now));
        }
        m.next_probe = Some(next);
    }

    fn start_due_probes(&mut self, myself: &ActorRef<MonitorMsg>, now: Instant) {
        for (id, m) in self.models.iter_mut().enumerate() {
            let Some(cfg) = m.info.probe else { continue };
            if m.probing || m.next_probe.is_none_or(|at| at > now) {
                continue;
            }
            let Some(upstream) = self.upstreams.get(m.info.upstream).cloned() else {
                continue;
            };
            m.probing = true;
            m.next_probe = None;
            let task = ProbeTask {
                model: id,
                name: m.info.name.clone(),
                id: m.info.id.clone(),
                upstream,
                upstream_id: m.info.upstream,
                class: m.info.class,
                cfg,
                directory: self.directory.clone(),
                monitor: myself.clone(),
                fleet: self.fleet.clone(),
            };
            // The I/O runs in its own task: this handler only schedules it.
            tokio::spawn(task.run());
        }
    }

    /// The next instant worth waking for: a probe, a breaker alert coming due, or a firing rate
    /// alarm to judge again.
    fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |at: Option<Instant>| {
            if let Some(at) = at {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        };
        for m in &self.models {
            if !m.probing {
                consider(m.next_probe);
            }
            if let Some(limit) = self.alerts.breaker_open_for {
                consider(m.down.poll_timeout(limit));
            }
        }
        if self
            .chains
            .iter()
            .any(|c| c.failures.firing() || c.fallbacks.firing())
        {
            consider(Some(now + REJUDGE));
        }
        next
    }

    fn after(&mut self, myself: &ActorRef<MonitorMsg>, now: Instant) {
        self.start_due_probes(myself, now);
        let next = self.next_deadline(now);
        self.timer.rearm(myself, next, now, MonitorMsg::Timer);
    }

    fn report(&mut self, now: Instant) -> SlaReport {
        let entry = |name: &str, sla: &mut SlaWindow, target: SlaTarget| {
            let stats = sla.report(now);
            SlaEntry {
                name: name.to_owned(),
                violations: target.violations(&stats),
                stats,
                target,
            }
        };
        let mut models: Vec<SlaEntry> = self
            .models
            .iter_mut()
            .map(|m| entry(&m.info.name, &mut m.sla, m.info.target))
            .collect();
        let mut chains: Vec<SlaEntry> = self
            .chains
            .iter_mut()
            .map(|c| entry(&c.info.name, &mut c.sla, c.info.target))
            .collect();
        models.sort_by(|a, b| a.name.cmp(&b.name));
        chains.sort_by(|a, b| a.name.cmp(&b.name));
        SlaReport {
            window: self.sla.window,
            models,
            chains,
        }
    }

    fn readiness(&self) -> Readiness {
        let usable = |m: &ModelState| match m.breaker {
            StateKind::Closed => true,
            // With probes, the half-open trials are theirs: users are turned away until a
            // probe closes the breaker.
            StateKind::HalfOpen => m.info.probe.is_none(),
            StateKind::Open => false,
        };
        let mut chains: Vec<ChainReadiness> = self
            .chains
            .iter()
            .filter(|c| c.info.entry)
            .map(|c| {
                let mut names: Vec<String> = Vec::new();
                for m in c.info.hops.iter().filter_map(|&h| self.models.get(h)) {
                    if usable(m) && !names.contains(&m.info.name) {
                        names.push(m.info.name.clone());
                    }
                }
                ChainReadiness {
                    chain: c.info.name.clone(),
                    ready: !names.is_empty(),
                    usable: names,
                }
            })
            .collect();
        chains.sort_by(|a, b| a.chain.cmp(&b.chain));
        Readiness {
            ready: chains.iter().all(|c| c.ready),
            chains,
        }
    }
}

impl Actor for MonitorActor {
    type Msg = MonitorMsg;
    type State = MonitorState;
    type Arguments = MonitorArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: MonitorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let now = clock::now();
        let sla = args.sla;
        let window = args.alerts.window;
        Ok(MonitorState {
            models: args
                .models
                .into_iter()
                .map(|info| ModelState {
                    metrics: ModelMetrics::new(&info.name),
                    // A fresh breaker is closed and user calls will tell soon enough: the first
                    // probe goes out after one interval (at once if the breaker opens first).
                    next_probe: info.probe.map(|p| now + p.interval),
                    info,
                    sla: SlaWindow::new(sla, now),
                    breaker: StateKind::Closed,
                    open_until: None,
                    down: DownAlarm::default(),
                    probing: false,
                    cost_carry: 0.0,
                    latency: LatencyModel::default(),
                })
                .collect(),
            chains: args
                .chains
                .into_iter()
                .map(|info| ChainState {
                    metrics: ChainMetrics::new(&info.name),
                    info,
                    sla: SlaWindow::new(sla, now),
                    failures: RateAlarm::new(window, now),
                    fallbacks: RateAlarm::new(window, now),
                })
                .collect(),
            sla,
            alerts: args.alerts,
            upstreams: args.upstreams,
            directory: args.directory,
            events: args.events,
            fleet: args.fleet,
            latency: args.latency,
            timer: Timer::default(),
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // A restarted monitor starts blind: ask every breaker where it stands (they answer with
        // a cast, so nothing here waits).
        for id in 0..state.models.len() {
            if let Some(b) = state.directory.breaker(id) {
                let _ = b.cast(BreakerMsg::ReportTo(myself.clone()));
            }
        }
        state.after(&myself, clock::now());
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let now = clock::now();
        match msg {
            MonitorMsg::Call(rec) => state.record_call(&rec, now),
            MonitorMsg::Breaker {
                model,
                state: kind,
                open_until,
            } => state.breaker_changed(model, kind, open_until, now),
            MonitorMsg::ProbeSample(s) => state.record_attempt(&s, true),
            MonitorMsg::ProbeDone { model, retry_at } => state.probe_done(model, retry_at, now),
            MonitorMsg::Report(reply) => {
                let _ = reply.send(state.report(now));
                return Ok(());
            }
            MonitorMsg::Ready(reply) => {
                let _ = reply.send(state.readiness());
                return Ok(());
            }
            MonitorMsg::Timer(epoch) => {
                if !state.timer.fired(epoch) {
                    return Ok(()); // a stale timer: the instant it was armed for moved
                }
                for id in 0..state.models.len() {
                    state.judge_model(id, now);
                }
                for id in 0..state.chains.len() {
                    state.judge_chain(id, now);
                }
            }
            MonitorMsg::InjectPanic => panic!("injected panic in monitor"),
        }
        state.after(&myself, now);
        Ok(())
    }
}
