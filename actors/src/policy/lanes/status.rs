//! What the governor reports of each upstream (`/status`, `Seawall::governor_status`): bucket
//! levels per group, keys quarantined, paused or checked, calls in flight per key, waiters.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::keys::KeyCheckStatus;
use super::{Lanes, Parked};
use crate::policy::bucket::Level;

/// One upstream's budget as reported by [`Lanes::status`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct UpstreamStatus {
    /// The upstream's name.
    pub upstream: String,
    /// Bucket levels per (organization, class) that has been used.
    pub buckets: Vec<GroupStatus>,
    /// Labels of quarantined keys.
    pub quarantined_keys: Vec<String>,
    /// Every key that was quarantined or checked: when it was last checked and when it will
    /// be next.
    pub key_checks: Vec<KeyCheckStatus>,
    /// Labels of keys paused by a 429, with the time left.
    pub paused_keys: Vec<(String, Duration)>,
    /// Attempts in flight per key slot.
    pub in_flight: Vec<u32>,
    /// Requests waiting for budget: (interactive, background).
    pub waiting: (usize, usize),
}

/// The levels of one bucket group.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GroupStatus {
    /// Organization index.
    pub org: usize,
    /// Model class index.
    pub class: usize,
    /// Levels of the limited dimensions.
    pub levels: Vec<Level>,
}

impl Lanes {
    /// Bucket levels, keys and lanes of every upstream.
    pub fn status(&mut self, now: Instant) -> Vec<UpstreamStatus> {
        let interactive = &self.interactive;
        let background = &self.background;
        self.upstreams
            .iter_mut()
            .enumerate()
            .map(|(i, u)| {
                let mut buckets: Vec<GroupStatus> = u
                    .buckets
                    .iter_mut()
                    .map(|(&(org, class), b)| GroupStatus {
                        org,
                        class,
                        levels: b.levels(now),
                    })
                    .collect();
                buckets.sort_by_key(|g| (g.org, g.class));
                let waiting =
                    |q: &VecDeque<Parked>| q.iter().filter(|p| p.req.upstream == i).count();
                UpstreamStatus {
                    upstream: u.name.clone(),
                    buckets,
                    quarantined_keys: u
                        .keys
                        .iter()
                        .filter(|k| k.quarantined)
                        .map(|k| k.label.clone())
                        .collect(),
                    paused_keys: u
                        .keys
                        .iter()
                        .filter_map(|k| {
                            k.paused_until
                                .filter(|t| *t > now)
                                .map(|t| (k.label.clone(), t - now))
                        })
                        .collect(),
                    key_checks: u
                        .keys
                        .iter()
                        .filter(|k| k.quarantined || k.last_checked.is_some())
                        .map(|k| KeyCheckStatus {
                            key: k.label.clone(),
                            quarantined: k.quarantined,
                            last_checked_ago: k
                                .last_checked
                                .map(|t| now.saturating_duration_since(t)),
                            next_check_in: k.recheck_at.map(|t| t.saturating_duration_since(now)),
                        })
                        .collect(),
                    in_flight: u.keys.iter().map(|k| k.in_flight).collect(),
                    waiting: (waiting(interactive), waiting(background)),
                }
            })
            .collect()
    }
}
