//! The epoch-tagged timer every policy-driving actor uses: arm `send_after` for the policy's
//! next deadline, and ignore a timer whose deadline has since moved (a stale epoch).

use std::time::Instant;

use ractor::{ActorRef, Message};

/// One actor's timer: the deadline it is armed for and the epoch that tags it.
#[derive(Debug, Default)]
pub struct Timer {
    epoch: u64,
    at: Option<Instant>,
}

impl Timer {
    /// Arm for `next` unless already armed for it; `msg(epoch)` is what the actor receives.
    pub fn rearm<M: Message>(
        &mut self,
        actor: &ActorRef<M>,
        next: Option<Instant>,
        now: Instant,
        msg: fn(u64) -> M,
    ) {
        if next == self.at {
            return;
        }
        self.epoch += 1;
        self.at = next;
        if let Some(at) = next {
            let epoch = self.epoch;
            actor.send_after(at.saturating_duration_since(now), move || msg(epoch));
        }
    }

    /// A timer message with `epoch` arrived: true when it is the current one (then spent),
    /// false for a stale one whose deadline moved.
    pub fn fired(&mut self, epoch: u64) -> bool {
        if epoch != self.epoch {
            return false;
        }
        self.at = None;
        true
    }
}
