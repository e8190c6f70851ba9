//! `BreakerActor`: drives one [`policy::breaker::Breaker`](crate::policy::breaker::Breaker) for
//! one model, and that model's [retry budget](crate::policy::retry_budget): both answer the same
//! question per attempt ("may this attempt go to this model now?"), so one mailbox serves both.
//!
//! Its handlers never await anything: each message is one policy call and an answer, in
//! microseconds. Time-driven transitions (open elapsed, half-open max wait) are scheduled with
//! `send_after`, tagged with a timer epoch so a stale timer is ignored.
//!
//! When the model is probed (the monitor's `ProbeConfig`), the half-open trials belong to
//! the probes: a user `Acquire` in half-open is turned away as if every trial slot were taken, so
//! no user request is spent to find out the model is still down. Should probes stop coming for
//! longer than the probe's grace (the monitor restarting), users may take the trials again.
//! Every transition is logged, published as an event, counted in metrics and cast to the monitor.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::clock;
use crate::directory::Directory;
use crate::events::{Event, EventSender};
use crate::fleet::{Fleet, HealthNews};
use crate::policy::breaker::{Acquire, Admission, Breaker, BreakerConfig, StateKind};
use crate::policy::pins::{PinLimits, Pins};
use crate::policy::retry_budget::{RetryBudget, RetryBudgetConfig};
use crate::policy::trials::{TrialRule, Trials};
use crate::protocol::{BreakerMsg, BreakerStatus, MonitorMsg, PinAnswer, ProbeAdmission};
use crate::timer::Timer;

/// Start arguments: the model and its policy, plus where to publish transitions.
pub struct BreakerArgs {
    /// The model's id.
    pub id: usize,
    /// The model this breaker guards.
    pub model: String,
    /// Its policy.
    pub config: BreakerConfig,
    /// Its retry budget.
    pub retry_budget: RetryBudgetConfig,
    /// Where transitions are published.
    pub events: EventSender,
    /// Where the monitor is found (transitions are cast to it).
    pub directory: Arc<Directory>,
    /// `Some(grace)` when the model is probed: half-open trials are the probes' for `grace`.
    pub probe_grace: Option<Duration>,
    /// Bounds of the conversation pins.
    pub pins: PinLimits,
    /// The fleet this instance belongs to: transitions are told to the others, and half-open
    /// trials are elected so the fleet spends one instance's worth on a model that may still
    /// be down.
    pub fleet: Option<Arc<dyn Fleet>>,
}

/// The actor. Stateless itself; its state is [`BreakerState`].
pub struct BreakerActor;

/// The actor's state: the policy plus the timer bookkeeping.
pub struct BreakerState {
    id: usize,
    model: String,
    breaker: Breaker,
    budget: RetryBudget,
    events: EventSender,
    directory: Arc<Directory>,
    /// Who may spend the half-open trials (the probes, the fleet's elected instance, users).
    trials: TrialRule,
    /// Conversations served by a later hop while this model was not closed: conversation ->
    /// model. Cleared when the breaker closes; bounded, oldest pins dropped first.
    pins: Pins,
    timer: Timer,
    fleet: Option<Arc<dyn Fleet>>,
}

/// The `seawall_breaker_state` gauge's value for a state.
fn state_value(state: StateKind) -> f64 {
    match state {
        StateKind::Closed => 0.0,
        StateKind::HalfOpen => 1.0,
        StateKind::Open => 2.0,
    }
}

fn state_name(state: StateKind) -> &'static str {
    match state {
        StateKind::Closed => "closed",
        StateKind::HalfOpen => "half_open",
        StateKind::Open => "open",
    }
}

impl BreakerState {
    /// True when a user call must leave the half-open trials to others now (the rule is
    /// [`TrialRule`]'s); asks the fleet for an election when the rule says so.
    fn trials_reserved(&mut self, myself: &ActorRef<BreakerMsg>, now: Instant) -> bool {
        match self
            .trials
            .for_user(self.breaker.state(), self.breaker.epoch(), now)
        {
            Trials::Open => false,
            Trials::Reserved => true,
            Trials::Elect { epoch, ttl } => {
                if let Some(fleet) = self.fleet.clone() {
                    let what = format!("trials:{}", self.model);
                    let me = myself.clone();
                    tokio::spawn(async move {
                        // An unreachable fleet: decide alone, as one instance would.
                        let won = fleet.elect(&what, ttl).await.unwrap_or(true);
                        let _ = me.cast(BreakerMsg::Elected { epoch, won });
                    });
                }
                true
            }
        }
    }

    /// Tell the fleet about a transition this instance made (not one it heard from a peer).
    fn tell_fleet(&self, to: StateKind, from_peer: bool, open_for: Option<Duration>) {
        let Some(fleet) = self.fleet.clone() else {
            return;
        };
        if from_peer {
            return; // heard from the fleet: no echo
        }
        let instance = fleet.instance().to_owned();
        let news = match (to, open_for) {
            (StateKind::Open, Some(d)) => HealthNews::Opened {
                model: self.model.clone(),
                open_ms: u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
                instance,
            },
            (StateKind::Closed, _) => HealthNews::Closed {
                model: self.model.clone(),
                instance,
            },
            _ => return,
        };
        tokio::spawn(async move {
            if let Err(e) = fleet.publish(news).await {
                tracing::debug!(error = %e, "breaker news not told to the fleet");
            }
        });
    }

    /// Cast the current state to a monitor.
    fn report_to(&self, monitor: &ActorRef<MonitorMsg>) {
        let _ = monitor.cast(MonitorMsg::Breaker {
            model: self.id,
            state: self.breaker.state(),
            open_until: self.breaker.open_until(),
        });
    }

    /// Publish queued transitions: log, event, metrics, monitor.
    fn publish(&mut self) {
        while let Some(t) = self.breaker.poll_transition() {
            self.trials.transition(t.to, t.at);
            if t.to == StateKind::Closed {
                // The primary is healthy again: pinned conversations come back to it.
                self.pins.clear();
            }
            metrics::counter!(
                "seawall_breaker_transitions_total",
                "model" => self.model.clone(),
                "from" => state_name(t.from),
                "to" => state_name(t.to)
            )
            .increment(1);
            metrics::gauge!("seawall_breaker_state", "model" => self.model.clone())
                .set(state_value(t.to));
            if let Some(m) = self.directory.monitor() {
                let _ = m.cast(MonitorMsg::Breaker {
                    model: self.id,
                    state: t.to,
                    open_until: (t.to == StateKind::Open)
                        .then(|| self.breaker.open_until())
                        .flatten(),
                });
            }
            let open_for = (t.to == StateKind::Open)
                .then(|| {
                    self.breaker
                        .open_until()
                        .map(|u| u.saturating_duration_since(t.at))
                })
                .flatten();
            tracing::info!(
                model = %self.model,
                from = ?t.from,
                to = ?t.to,
                reason = t.reason,
                calls = t.stats.calls,
                failures = t.stats.failures,
                slow = t.stats.slow,
                open_for_ms = open_for.map(|d| d.as_millis() as u64),
                "breaker transition"
            );
            self.tell_fleet(t.to, t.from_peer, open_for);
            // No subscriber is fine: the send error only says nobody listens.
            let _ = self.events.send(Event::Breaker {
                model: self.model.clone(),
                from: t.from,
                to: t.to,
                reason: t.reason,
                open_for,
            });
        }
    }

    /// Publish queued transitions and (re)arm the timer if the policy's next deadline moved.
    fn after(&mut self, myself: &ActorRef<BreakerMsg>, now: Instant) {
        self.publish();
        let next = self.breaker.poll_timeout();
        self.timer.rearm(myself, next, now, BreakerMsg::Timer);
    }
}

impl Actor for BreakerActor {
    type Msg = BreakerMsg;
    type State = BreakerState;
    type Arguments = BreakerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: BreakerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let now = clock::now();
        metrics::gauge!("seawall_breaker_state", "model" => args.model.clone())
            .set(state_value(StateKind::Closed));
        Ok(BreakerState {
            id: args.id,
            model: args.model,
            breaker: Breaker::new(args.config, now),
            budget: RetryBudget::new(args.retry_budget, now),
            events: args.events,
            directory: args.directory,
            trials: TrialRule::new(args.probe_grace, args.fleet.is_some(), args.config.open_for),
            pins: Pins::new(args.pins),
            fleet: args.fleet,
            timer: Timer::default(),
        })
    }

    async fn post_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // A restarted breaker starts closed: tell the monitor, which may think it open.
        if let Some(m) = state.directory.monitor() {
            state.report_to(&m);
        }
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
            BreakerMsg::Acquire { retry, reply } => {
                // Time transitions first, so a just-elapsed open state is seen as half-open.
                state.breaker.handle_timeout(now);
                state.publish();
                let answer = if state.trials_reserved(&myself, now) {
                    Admission::Open { until: None }
                } else {
                    match state.breaker.try_acquire(now) {
                        Acquire::Rejected { until } => Admission::Open { until },
                        Acquire::Permitted(p) if retry => {
                            if state.budget.try_retry(now) {
                                Admission::Permitted(p)
                            } else {
                                state.breaker.release(p, now);
                                Admission::RetryBudgetSpent
                            }
                        }
                        Acquire::Permitted(p) => {
                            state.budget.record_first(now);
                            Admission::Permitted(p)
                        }
                    }
                };
                // A caller that is gone never receives its permit: give it back so a half-open
                // slot is not lost.
                if let Some(Admission::Permitted(p)) = reply.send(answer) {
                    state.breaker.release(p, now);
                }
            }
            BreakerMsg::SpendRetry(reply) => {
                let _ = reply.send(state.budget.try_retry(now));
            }
            BreakerMsg::Record {
                permit,
                class,
                latency,
            } => state.breaker.record(permit, class, latency, now),
            BreakerMsg::Release(permit) => state.breaker.release(permit, now),
            BreakerMsg::Probe { trial_only, reply } => {
                let answer = match state.breaker.try_acquire(now) {
                    Acquire::Rejected { until } => ProbeAdmission::Denied { until },
                    Acquire::Permitted(p) => match state.breaker.state() {
                        StateKind::HalfOpen => ProbeAdmission::Trial(p),
                        _ if trial_only => {
                            state.breaker.release(p, now);
                            ProbeAdmission::Denied { until: None }
                        }
                        _ => ProbeAdmission::Check(p),
                    },
                };
                if let Err(ractor::MessagingErr::SendErr(
                    ProbeAdmission::Trial(p) | ProbeAdmission::Check(p),
                )) = reply.send(answer)
                {
                    state.breaker.release(p, now);
                }
            }
            BreakerMsg::Pin {
                conversation,
                tenant,
                model,
            } => {
                state.breaker.handle_timeout(now);
                state.publish();
                if model == state.id || state.breaker.state() == StateKind::Closed {
                    state.pins.unpin(&conversation);
                } else if !state.pins.pin(conversation, tenant, model) {
                    tracing::debug!(model = %state.model, "conversation not pinned: the tenant holds its share of pins");
                }
            }
            BreakerMsg::Pinned {
                conversation,
                reply,
            } => {
                state.breaker.handle_timeout(now);
                state.publish();
                let answer = if state.breaker.state() == StateKind::Closed {
                    PinAnswer::Closed
                } else {
                    PinAnswer::Open(state.pins.get(&conversation))
                };
                let _ = reply.send(answer);
            }
            BreakerMsg::ReportTo(monitor) => state.report_to(&monitor),
            BreakerMsg::Peer(news) => match news {
                HealthNews::Opened { open_ms, .. } => {
                    let until = now + Duration::from_millis(open_ms);
                    state.breaker.open_by_peer(until, now);
                }
                HealthNews::Closed { .. } => state.breaker.close_by_peer(now),
            },
            BreakerMsg::Elected { epoch, won } => state.trials.elected(epoch, won),
            BreakerMsg::Status(reply) => {
                let status = BreakerStatus {
                    model: state.model.clone(),
                    state: state.breaker.state(),
                    open_for: state
                        .breaker
                        .open_until()
                        .map(|u| u.saturating_duration_since(now)),
                    stats: state.breaker.stats(now),
                    retry_budget: state.budget.stats(now),
                };
                let _ = reply.send(status);
            }
            BreakerMsg::Timer(epoch) => {
                if !state.timer.fired(epoch) {
                    return Ok(()); // a stale timer: the deadline it was armed for moved
                }
                state.breaker.handle_timeout(now);
            }
            BreakerMsg::InjectPanic => panic!("injected panic in breaker {}", state.model),
        }
        state.after(&myself, now);
        Ok(())
    }
}
