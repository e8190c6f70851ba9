//! Who may spend a half-open breaker's trials: the rule the breaker actor asks before a user
//! call takes a trial slot.
//!
//! - A model that is **probed** keeps its trials for the probes: a user call in half-open falls
//!   back, so no user request is spent to find out the model is still down, as long as probes
//!   keep coming (for `grace` after the breaker went half-open; past it the monitor may be
//!   restarting, and users may take the trials again).
//! - In a **fleet**, the trials of one half-open state are elected once for the fleet, so the
//!   fleet spends one instance's worth on a model that may still be down: until the election
//!   answers, and on the instances that lost it, user calls fall back.
//! - Otherwise users take the trials, as the breaker allows.

use std::time::{Duration, Instant};

use crate::policy::breaker::StateKind;

/// What a user call may do with the trials now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trials {
    /// Not reserved: ask the breaker for a permit as usual.
    Open,
    /// Reserved for others (the probes, or another instance of the fleet): fall back.
    Reserved,
    /// Reserved until the fleet elects who runs them: ask the fleet once for `epoch` (the
    /// breaker's half-open state), then fall back.
    Elect {
        /// The breaker epoch the election is for.
        epoch: u64,
        /// How long the election holds: the open duration (at least a second).
        ttl: Duration,
    },
}

/// The trial rule's state for one model.
#[derive(Clone, Debug)]
pub struct TrialRule {
    /// `Some(grace)` when the model is probed.
    probe_grace: Option<Duration>,
    /// The instance belongs to a fleet.
    fleet: bool,
    open_for: Duration,
    /// When the breaker last went half-open.
    half_open_since: Option<Instant>,
    /// The election for a half-open state: its epoch, and whether this instance won (`None`:
    /// asked, no answer yet).
    election: Option<(u64, Option<bool>)>,
}

impl TrialRule {
    /// The rule for a model probed with `probe_grace` (or not), in a fleet (or not), whose
    /// breaker opens for `open_for`.
    pub fn new(probe_grace: Option<Duration>, fleet: bool, open_for: Duration) -> Self {
        Self {
            probe_grace,
            fleet,
            open_for,
            half_open_since: None,
            election: None,
        }
    }

    /// The breaker went to `to` at `at`.
    pub fn transition(&mut self, to: StateKind, at: Instant) {
        if to == StateKind::HalfOpen {
            self.half_open_since = Some(at);
        }
    }

    /// May a user call take a trial of a breaker in `state` (epoch `epoch`) now?
    #[must_use]
    pub fn for_user(&mut self, state: StateKind, epoch: u64, now: Instant) -> Trials {
        if state != StateKind::HalfOpen {
            return Trials::Open;
        }
        if let (Some(grace), Some(since)) = (self.probe_grace, self.half_open_since) {
            // Probes run the trials (and are elected by the monitor in a fleet).
            return if now.saturating_duration_since(since) < grace {
                Trials::Reserved
            } else {
                Trials::Open
            };
        }
        if !self.fleet {
            return Trials::Open;
        }
        match self.election {
            Some((e, Some(won))) if e == epoch => {
                if won {
                    Trials::Open
                } else {
                    Trials::Reserved
                }
            }
            Some((e, None)) if e == epoch => Trials::Reserved,
            _ => {
                // Ask once per half-open state; until the answer, users fall back.
                self.election = Some((epoch, None));
                Trials::Elect {
                    epoch,
                    ttl: self.open_for.max(Duration::from_secs(1)),
                }
            }
        }
    }

    /// The fleet answered the election for `epoch` (an unreachable fleet: the driver says
    /// `won`, deciding alone as one instance would). A stale answer changes nothing.
    pub fn elected(&mut self, epoch: u64, won: bool) {
        if self.election.is_some_and(|(e, _)| e == epoch) {
            self.election = Some((epoch, Some(won)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn users_take_the_trials_of_an_unprobed_model_alone() {
        let t0 = Instant::now();
        let mut r = TrialRule::new(None, false, S * 3);
        assert_eq!(r.for_user(StateKind::Closed, 0, t0), Trials::Open);
        r.transition(StateKind::HalfOpen, t0);
        assert_eq!(r.for_user(StateKind::HalfOpen, 1, t0), Trials::Open);
    }

    #[test]
    fn a_probed_model_keeps_its_trials_for_the_probes_while_they_keep_coming() {
        let t0 = Instant::now();
        let mut r = TrialRule::new(Some(S * 5), true, S * 3);
        r.transition(StateKind::HalfOpen, t0);
        assert_eq!(r.for_user(StateKind::HalfOpen, 1, t0), Trials::Reserved);
        assert_eq!(
            r.for_user(StateKind::HalfOpen, 1, t0 + S * 4),
            Trials::Reserved,
            "no election: the monitor elects the probes"
        );
        // Past the grace the probes have stopped (a monitor restarting): users may try.
        assert_eq!(r.for_user(StateKind::HalfOpen, 1, t0 + S * 5), Trials::Open);
        // A new half-open state starts a new grace.
        r.transition(StateKind::HalfOpen, t0 + S * 9);
        assert_eq!(
            r.for_user(StateKind::HalfOpen, 2, t0 + S * 10),
            Trials::Reserved
        );
    }

    #[test]
    fn a_fleet_elects_the_trials_once_per_half_open_state() {
        let t0 = Instant::now();
        let mut r = TrialRule::new(None, true, S * 3);
        r.transition(StateKind::HalfOpen, t0);
        assert_eq!(
            r.for_user(StateKind::HalfOpen, 7, t0),
            Trials::Elect {
                epoch: 7,
                ttl: S * 3
            }
        );
        // Asked once: until the answer, users fall back.
        assert_eq!(r.for_user(StateKind::HalfOpen, 7, t0), Trials::Reserved);
        r.elected(6, true); // stale
        assert_eq!(r.for_user(StateKind::HalfOpen, 7, t0), Trials::Reserved);
        r.elected(7, true);
        assert_eq!(r.for_user(StateKind::HalfOpen, 7, t0), Trials::Open);
        // The next half-open state asks again; a lost election reserves the trials.
        assert!(matches!(
            r.for_user(StateKind::HalfOpen, 9, t0),
            Trials::Elect { epoch: 9, .. }
        ));
        r.elected(9, false);
        assert_eq!(r.for_user(StateKind::HalfOpen, 9, t0), Trials::Reserved);
    }

    #[test]
    fn an_election_holds_at_least_a_second() {
        let mut r = TrialRule::new(None, true, Duration::from_millis(200));
        assert_eq!(
            r.for_user(StateKind::HalfOpen, 1, Instant::now()),
            Trials::Elect { epoch: 1, ttl: S }
        );
    }
}
