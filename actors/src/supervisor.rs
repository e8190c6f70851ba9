//! The root of a seawall runtime: spawns one breaker actor per model, the governor and the
//! monitor, restarts them when they fail, and tells request actors where the live ones are.
//!
//! ractor's default `handle_supervisor_evt` stops a supervisor when any child ends; this one
//! overrides it: a failed child is respawned (`spawn_linked`), its ref swapped in the
//! [`Directory`], and waiting lookups answered. More than `max_restarts` restarts within `within`
//! means something is badly wrong: the supervisor then fails itself, so a parent supervisor (when
//! spawned with `spawn_linked`) sees it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, ActorStatus, SupervisionEvent};

use crate::breaker::{BreakerActor, BreakerArgs};
use crate::clock;
use crate::directory::Directory;
use crate::events::{Event, EventSender};
use crate::governor::{GovernorActor, GovernorSetup};
use crate::idempotency::{IdempotencyActor, IdempotencyConfig};
use crate::monitor::{MonitorActor, MonitorArgs};
use crate::policy::breaker::BreakerConfig;
use crate::policy::pins::PinLimits;
use crate::policy::retry_budget::RetryBudgetConfig;
use crate::protocol::{BreakerMsg, GovernorMsg, Responder, SupervisorMsg};
use crate::queue::{QueueActor, QueueArgs};

/// How many restarts in what time a supervisor tolerates before failing itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestartIntensity {
    /// Restarts allowed inside the window.
    pub max_restarts: u32,
    /// The window.
    pub within: Duration,
}

impl Default for RestartIntensity {
    fn default() -> Self {
        // Erlang/OTP's default is 1 in 5 s; breakers are cheap to rebuild, so allow more.
        Self {
            max_restarts: 10,
            within: Duration::from_secs(10),
        }
    }
}

/// Start arguments.
pub struct SupervisorArgs {
    /// One breaker per model, indexed by model id: (model, breaker policy, retry budget, probe
    /// grace when the model is probed).
    pub breakers: Vec<(String, BreakerConfig, RetryBudgetConfig, Option<Duration>)>,
    /// The governor's budgets (and the fleet it leases from).
    pub governor: GovernorSetup,
    /// The monitor's subjects and settings.
    pub monitor: MonitorArgs,
    /// Bounds of every breaker's conversation pins.
    pub pins: PinLimits,
    /// The idempotency table's bounds (`None`: no idempotency table).
    pub idempotency: Option<IdempotencyConfig>,
    /// The durable queue, when configured.
    pub queue: Option<QueueArgs>,
    /// The directory to keep current.
    pub directory: Arc<Directory>,
    /// Where events are published.
    pub events: EventSender,
    /// Restart tolerance.
    pub intensity: RestartIntensity,
}

/// A child that is starting or running is live; one that is stopping, stopped, or that the
/// caller already found dead (its mailbox may close a moment before its status changes) is about
/// to be replaced.
fn is_live(cell: ractor::ActorCell, stale: Option<ActorId>) -> bool {
    cell.get_status() < ActorStatus::Stopping && stale != Some(cell.get_id())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Child {
    Breaker(usize),
    Governor,
    Monitor,
    Idempotency,
    Queue,
}

/// The actor.
pub struct Supervisor;

/// The actor's state.
pub struct SupervisorState {
    args: SupervisorArgs,
    children: HashMap<ActorId, Child>,
    waiting_breaker: Vec<(usize, Responder<ActorRef<BreakerMsg>>)>,
    waiting_governor: Vec<Responder<ActorRef<GovernorMsg>>>,
    recent: VecDeque<Instant>,
    total_restarts: u64,
}

impl Supervisor {
    async fn spawn_child(
        myself: &ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
        child: Child,
    ) -> Result<(), ActorProcessingErr> {
        let cell = myself.get_cell();
        match child {
            Child::Breaker(model) => {
                let (name, config, retry_budget, probe_grace) = state
                    .args
                    .breakers
                    .get(model)
                    .cloned()
                    .ok_or_else(|| format!("no breaker for model id {model}"))?;
                let args = BreakerArgs {
                    id: model,
                    model: name,
                    config,
                    retry_budget,
                    events: state.args.events.clone(),
                    directory: state.args.directory.clone(),
                    probe_grace,
                    pins: state.args.pins,
                    fleet: state.args.governor.fleet.clone(),
                };
                let (actor, _) = Actor::spawn_linked(None, BreakerActor, args, cell).await?;
                state.children.insert(actor.get_id(), child);
                state.args.directory.breakers.insert(model, actor.clone());
                let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut state.waiting_breaker)
                    .into_iter()
                    .partition(|(m, _)| *m == model);
                state.waiting_breaker = waiting;
                for (_, reply) in ready {
                    let _ = reply.send(actor.clone());
                }
            }
            Child::Governor => {
                let (actor, _) =
                    Actor::spawn_linked(None, GovernorActor, state.args.governor.clone(), cell)
                        .await?;
                state.children.insert(actor.get_id(), child);
                state.args.directory.governor.insert((), actor.clone());
                for reply in state.waiting_governor.drain(..) {
                    let _ = reply.send(actor.clone());
                }
            }
            Child::Monitor => {
                let (actor, _) =
                    Actor::spawn_linked(None, MonitorActor, state.args.monitor.clone(), cell)
                        .await?;
                state.children.insert(actor.get_id(), child);
                state.args.directory.monitor.insert((), actor);
            }
            Child::Idempotency => {
                let config = state
                    .args
                    .idempotency
                    .ok_or("no idempotency table is configured")?;
                let (actor, _) = Actor::spawn_linked(None, IdempotencyActor, config, cell).await?;
                state.children.insert(actor.get_id(), child);
                state.args.directory.idempotency.insert((), actor);
            }
            Child::Queue => {
                let args = state.args.queue.clone().ok_or("no queue is configured")?;
                // A restarted queue takes back from the store the jobs it held (same consumer name).
                let (actor, _) = Actor::spawn_linked(None, QueueActor, args, cell).await?;
                state.children.insert(actor.get_id(), child);
                state.args.directory.queue.insert((), actor);
            }
        }
        Ok(())
    }

    fn child_name(state: &SupervisorState, child: Child) -> String {
        match child {
            Child::Breaker(m) => format!(
                "breaker:{}",
                state
                    .args
                    .breakers
                    .get(m)
                    .map(|b| b.0.as_str())
                    .unwrap_or("?")
            ),
            Child::Governor => "governor".into(),
            Child::Monitor => "monitor".into(),
            Child::Idempotency => "idempotency".into(),
            Child::Queue => "queue".into(),
        }
    }
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = SupervisorState {
            args,
            children: HashMap::new(),
            waiting_breaker: Vec::new(),
            waiting_governor: Vec::new(),
            recent: VecDeque::new(),
            total_restarts: 0,
        };
        Self::spawn_child(&myself, &mut state, Child::Governor).await?;
        for model in 0..state.args.breakers.len() {
            Self::spawn_child(&myself, &mut state, Child::Breaker(model)).await?;
        }
        // Last: its first probes need the breakers and the governor in the directory.
        Self::spawn_child(&myself, &mut state, Child::Monitor).await?;
        if state.args.idempotency.is_some() {
            Self::spawn_child(&myself, &mut state, Child::Idempotency).await?;
        }
        if state.args.queue.is_some() {
            Self::spawn_child(&myself, &mut state, Child::Queue).await?;
        }
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::BreakerRef {
                model,
                stale,
                reply,
            } => match state.args.directory.breaker(model) {
                Some(r) if is_live(r.get_cell(), stale) => {
                    let _ = reply.send(r);
                }
                // Being restarted (its failure notice is on the way): answer once it is back.
                Some(_) => state.waiting_breaker.push((model, reply)),
                None => {} // unknown model: dropping the port tells the caller
            },
            SupervisorMsg::GovernorRef { stale, reply } => match state.args.directory.governor() {
                Some(r) if is_live(r.get_cell(), stale) => {
                    let _ = reply.send(r);
                }
                _ => state.waiting_governor.push(reply),
            },
            SupervisorMsg::Restarts(reply) => {
                let _ = reply.send(state.total_restarts);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        evt: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, error) = match evt {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "stopped".into()))
            }
            _ => return Ok(()),
        };
        let Some(child) = state.children.remove(&cell.get_id()) else {
            // An old incarnation already replaced. (Request actors are not linked here: a
            // failed one is counted by its own watch, `request::FailureWatch`.)
            return Ok(());
        };
        let now = clock::now();
        let within = state.args.intensity.within;
        while state
            .recent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > within)
        {
            state.recent.pop_front();
        }
        state.recent.push_back(now);
        state.total_restarts += 1;
        let name = Self::child_name(state, child);
        if state.recent.len() as u32 > state.args.intensity.max_restarts {
            tracing::error!(child = %name, %error, "restart intensity exceeded: seawall supervisor gives up");
            return Err(format!(
                "seawall supervisor: more than {} restarts within {:?} (last: {name}: {error})",
                state.args.intensity.max_restarts, within
            )
            .into());
        }
        tracing::warn!(child = %name, %error, "child failed: restarting");
        Self::spawn_child(&myself, state, child).await?;
        let _ = state.args.events.send(Event::Restarted {
            child: name,
            error,
            recent_restarts: state.recent.len() as u32,
        });
        Ok(())
    }
}
