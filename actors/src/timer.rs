//! The epoch-tagged timer every policy-driving actor uses: arm `send_after` for the policy's
//! next deadline, and ignore a timer whose deadline has since moved (a stale epoch).
//!
//! `send_after` is a task that sleeps holding a reference to the actor: a timer that is
//! re-armed or whose actor stops aborts it, or a request actor's cell (its mailboxes and what
//! they hold) would outlive the call until its deadline passed (BENCHMARKS.md: ~16 KB per call kept
//! for minutes after a burst).

use std::time::Instant;

use ractor::concurrency::JoinHandle;
use ractor::{ActorRef, Message};

/// One actor's timer: the deadline it is armed for and the epoch that tags it.
#[derive(Debug, Default)]
pub struct Timer {
    epoch: u64,
    at: Option<Instant>,
    /// The armed `send_after` task, aborted when it is no longer wanted.
    task: Option<JoinHandle<()>>,
}

impl Drop for Timer {
    fn drop(&mut self) {
        self.disarm();
    }
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
        self.disarm();
        self.epoch += 1;
        self.at = next;
        if let Some(at) = next {
            let epoch = self.epoch;
            let actor = actor.clone();
            let period = at.saturating_duration_since(now);
            self.task = Some(ractor::concurrency::spawn(async move {
                ractor::concurrency::sleep(period).await;
                // The actor may have stopped meanwhile: nothing to tell then.
                let _ = actor.send_message(msg(epoch));
            }));
        }
    }

    /// Abort the armed task, if any.
    fn disarm(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// A timer message with `epoch` arrived: true when it is the current one (then spent),
    /// false for a stale one whose deadline moved.
    pub fn fired(&mut self, epoch: u64) -> bool {
        if epoch != self.epoch {
            return false;
        }
        self.at = None;
        self.task = None; // it has run
        true
    }
}
