//! Where actors find each other: the live breaker of each model, the governor, the monitor,
//! the idempotency table and the queue.
//!
//! Only the supervisor writes it (at spawn and on every restart); readers clone a ref out. It is
//! a directory of addresses, not coordination state: that lives in the actors' mailboxes.

use dashmap::DashMap;
use ractor::ActorRef;

use crate::protocol::{BreakerMsg, GovernorMsg, IdempotencyMsg, MonitorMsg, QueueMsg};

/// Where request actors find the live breaker of each model, the governor and the monitor.
///
/// Only the supervisor writes it (at spawn and on every restart); readers clone a ref out.
/// It is a directory of addresses, not coordination state: that lives in the actors' mailboxes.
#[derive(Default)]
pub struct Directory {
    pub(crate) breakers: DashMap<usize, ActorRef<BreakerMsg>>,
    pub(crate) governor: DashMap<(), ActorRef<GovernorMsg>>,
    pub(crate) monitor: DashMap<(), ActorRef<MonitorMsg>>,
    pub(crate) idempotency: DashMap<(), ActorRef<IdempotencyMsg>>,
    pub(crate) queue: DashMap<(), ActorRef<QueueMsg>>,
}

impl Directory {
    /// The current breaker of model `model`.
    pub fn breaker(&self, model: usize) -> Option<ActorRef<BreakerMsg>> {
        self.breakers.get(&model).map(|r| r.value().clone())
    }

    /// The current governor.
    pub fn governor(&self) -> Option<ActorRef<GovernorMsg>> {
        self.governor.get(&()).map(|r| r.value().clone())
    }

    /// The current idempotency table, when idempotency is on.
    pub fn idempotency(&self) -> Option<ActorRef<IdempotencyMsg>> {
        self.idempotency.get(&()).map(|r| r.value().clone())
    }

    /// The current job queue, when a queue is configured.
    pub fn queue(&self) -> Option<ActorRef<QueueMsg>> {
        self.queue.get(&()).map(|r| r.value().clone())
    }

    /// The current monitor.
    pub fn monitor(&self) -> Option<ActorRef<MonitorMsg>> {
        self.monitor.get(&()).map(|r| r.value().clone())
    }
}
