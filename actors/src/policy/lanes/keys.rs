//! The key pool: which key a call takes (the least loaded usable one), a 429's pause, a 401's
//! quarantine and the checks that bring a quarantined key back (30 s, doubling to 10 min).

use std::time::{Duration, Instant};

use super::{KeyNews, Lanes};

/// A key's quarantine checks, as reported by [`Lanes::status`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct KeyCheckStatus {
    /// The key's label (never the key).
    pub key: String,
    /// Still refused.
    pub quarantined: bool,
    /// How long ago it was last checked (`None`: not yet).
    pub last_checked_ago: Option<Duration>,
    /// When it will be checked next (`None`: not quarantined, or a check is running).
    pub next_check_in: Option<Duration>,
}

/// What checking a quarantined key found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyCheck {
    /// The upstream took the key (a token count answered): back in service.
    Good,
    /// The upstream refused it again: quarantined, checked again after a longer back-off.
    Bad,
    /// The check could not be made (the network failed): tried again after the same back-off.
    Unknown,
    /// The upstream has no cheap check: the key goes back for a trial by the next call (a
    /// 401 quarantines it again, for longer).
    Untested,
}

/// First wait before a quarantined key is checked again.
pub const KEY_RECHECK_FIRST: Duration = Duration::from_secs(30);
/// Longest wait between two checks of a quarantined key.
pub const KEY_RECHECK_MAX: Duration = Duration::from_secs(600);

/// The wait before the next check of a key that failed `failed` checks: 30 s doubling to
/// 10 min.
pub(super) fn key_recheck_after(failed: u32) -> Duration {
    1u32.checked_shl(failed.min(31))
        .and_then(|f| KEY_RECHECK_FIRST.checked_mul(f))
        .map_or(KEY_RECHECK_MAX, |d| d.min(KEY_RECHECK_MAX))
}

pub(super) struct KeySlot {
    pub(super) label: String,
    pub(super) org: usize,
    pub(super) quarantined: bool,
    pub(super) paused_until: Option<Instant>,
    pub(super) in_flight: u32,
    /// While quarantined: when to check the key again (`None` while a check runs).
    pub(super) recheck_at: Option<Instant>,
    /// Checks that found the key still refused since it was last good: the back-off's exponent.
    pub(super) failed_checks: u32,
    /// When the key was last checked.
    pub(super) last_checked: Option<Instant>,
}

impl KeySlot {
    pub(super) fn usable(&self, now: Instant) -> bool {
        !self.quarantined && self.paused_until.is_none_or(|t| t <= now)
    }
}

impl Lanes {
    /// A settled attempt's key: one fewer in flight, quarantined by a 401 (`bad`), paused by a
    /// 429's retry-after (`pause`). Says what changed, for the log.
    pub(super) fn key_settled(
        &mut self,
        upstream: usize,
        key: usize,
        bad: bool,
        pause: Option<Duration>,
        now: Instant,
    ) -> KeyNews {
        let mut news = KeyNews::default();
        let Some(up) = self.upstreams.get_mut(upstream) else {
            return news;
        };
        if let Some(slot) = up.keys.get_mut(key) {
            slot.in_flight = slot.in_flight.saturating_sub(1);
            if bad && !slot.quarantined {
                slot.quarantined = true;
                slot.recheck_at = Some(now + key_recheck_after(slot.failed_checks));
                news.quarantined = Some((up.name.clone(), slot.label.clone()));
            }
            if let Some(pause) = pause {
                let until = now + pause;
                slot.paused_until = Some(slot.paused_until.map_or(until, |t| t.max(until)));
                news.paused = Some((up.name.clone(), slot.label.clone(), pause));
            }
        }
        news
    }

    /// The earliest instant a quarantined key is due for a check, if any.
    pub fn next_key_check(&self) -> Option<Instant> {
        self.upstreams
            .iter()
            .flat_map(|u| u.keys.iter())
            .filter(|k| k.quarantined)
            .filter_map(|k| k.recheck_at)
            .min()
    }

    /// The quarantined keys due for a check at `now`, as (upstream, key slot); each is handed
    /// out once, until [`Lanes::key_checked`] reports on it.
    pub fn due_key_checks(&mut self, now: Instant) -> Vec<(usize, usize)> {
        let mut due = Vec::new();
        for (u, up) in self.upstreams.iter_mut().enumerate() {
            for (k, key) in up.keys.iter_mut().enumerate() {
                if key.quarantined && key.recheck_at.is_some_and(|t| t <= now) {
                    key.recheck_at = None;
                    due.push((u, k));
                }
            }
        }
        due
    }

    /// What the check of a quarantined key found. Returns (upstream name, key label) when the
    /// key is back in service.
    pub fn key_checked(
        &mut self,
        upstream: usize,
        key: usize,
        check: KeyCheck,
        now: Instant,
    ) -> Option<(String, String)> {
        let up = self.upstreams.get_mut(upstream)?;
        let slot = up.keys.get_mut(key)?;
        if !slot.quarantined {
            return None;
        }
        slot.last_checked = Some(now);
        match check {
            KeyCheck::Good | KeyCheck::Untested => {
                slot.quarantined = false;
                slot.recheck_at = None;
                // A key that passed a real check starts over; one let back untested backs off
                // longer if it is refused again.
                slot.failed_checks = if check == KeyCheck::Good {
                    0
                } else {
                    slot.failed_checks.saturating_add(1)
                };
                Some((up.name.clone(), slot.label.clone()))
            }
            KeyCheck::Bad => {
                slot.failed_checks = slot.failed_checks.saturating_add(1);
                slot.recheck_at = Some(now + key_recheck_after(slot.failed_checks));
                None
            }
            KeyCheck::Unknown => {
                slot.recheck_at = Some(now + key_recheck_after(slot.failed_checks));
                None
            }
        }
    }

    /// A usable key of an upstream (least loaded), for requests that are not attempts (token
    /// counting); `None` when every key is quarantined or paused.
    pub fn pick_key(&self, upstream: usize, now: Instant) -> Option<usize> {
        self.upstreams.get(upstream).and_then(|u| {
            u.keys
                .iter()
                .enumerate()
                .filter(|(_, k)| k.usable(now))
                .min_by_key(|(i, k)| (k.in_flight, *i))
                .map(|(i, _)| i)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::*;
    use super::*;

    #[test]
    fn keys_are_least_loaded_quarantined_by_401_and_paused_by_429() {
        let t0 = Instant::now();
        let mut l = one_upstream(100, 2);
        let key = |d: Reserved| match d {
            Reserved::Now(Decision::Grant { ticket, .. }) => ticket,
            other => panic!("{other:?}"),
        };
        let a = key(l.reserve(req(Lane::Interactive, S), 1, t0));
        let b = key(l.reserve(req(Lane::Interactive, S), 2, t0));
        assert_ne!(a.key, b.key, "least loaded");
        let news = l.settle(
            Settlement {
                key_bad: true,
                ..Settlement::unused(a)
            },
            t0,
        );
        assert_eq!(
            news.quarantined,
            Some(("u".into(), format!("key#{}", a.key)))
        );
        let news = l.settle(
            Settlement {
                key_pause: Some(S * 5),
                ..Settlement::unused(b)
            },
            t0,
        );
        assert!(news.paused.is_some());
        match l.reserve(req(Lane::Interactive, S), 3, t0) {
            Reserved::Now(Decision::Reject { reason, earliest }) => {
                assert_eq!(reason, RejectReason::KeysPaused);
                assert_eq!(earliest, Some(t0 + S * 5));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(l.pick_key(0, t0 + S * 6), Some(b.key));
    }
}
