//! Conversation pins: which later hop of a chain a conversation stays on while the chain's
//! primary is not healthy (no flapping between models mid-task).
//!
//! The table is keyed by fixed-size digests of
//! (tenant, conversation key), so an entry costs the same whatever a client sends, and it is
//! bounded twice: at most `max_pins` pins (the oldest go first: those conversations may move
//! back early, nothing worse), and at most `max_per_tenant` pins of one tenant (past it, the
//! tenant's new conversations are simply not pinned), so one client cannot fill the table.

use std::collections::{HashMap, VecDeque};

use crate::digest::Digest;
use crate::policy::invalid::Invalid;

/// How the pin table is bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PinLimits {
    /// At most this many pins per primary model.
    pub max_pins: usize,
    /// At most this many pins of one tenant per primary model.
    pub max_per_tenant: usize,
}

impl Default for PinLimits {
    fn default() -> Self {
        Self {
            max_pins: 100_000,
            max_per_tenant: 10_000,
        }
    }
}

impl PinLimits {
    /// Check the settings.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.max_pins == 0 {
            return Err(Invalid::new("max_pins", "must be at least 1"));
        }
        if self.max_per_tenant == 0 {
            return Err(Invalid::new("max_per_tenant", "must be at least 1"));
        }
        Ok(())
    }
}

/// The pins of the chains one primary model heads.
#[derive(Debug, Default)]
pub struct Pins {
    limits: PinLimits,
    /// conversation -> (pinned model, tenant).
    pins: HashMap<Digest, (usize, Digest)>,
    /// Pin order, oldest first; may hold keys unpinned since (skipped when met).
    order: VecDeque<Digest>,
    per_tenant: HashMap<Digest, usize>,
}

impl Pins {
    /// An empty table.
    pub fn new(limits: PinLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// The model `conversation` is pinned to.
    pub fn get(&self, conversation: &Digest) -> Option<usize> {
        self.pins.get(conversation).map(|&(model, _)| model)
    }

    /// Pins held now.
    pub fn len(&self) -> usize {
        self.pins.len()
    }

    /// True when nothing is pinned.
    pub fn is_empty(&self) -> bool {
        self.pins.is_empty()
    }

    /// Pin `conversation` of `tenant` to `model`; false when the tenant's share is full (the
    /// conversation is then not pinned).
    pub fn pin(&mut self, conversation: Digest, tenant: Digest, model: usize) -> bool {
        if let Some(entry) = self.pins.get_mut(&conversation) {
            entry.0 = model;
            return true;
        }
        let held = self.per_tenant.get(&tenant).copied().unwrap_or(0);
        if held >= self.limits.max_per_tenant {
            return false;
        }
        self.pins.insert(conversation, (model, tenant));
        *self.per_tenant.entry(tenant).or_default() += 1;
        self.order.push_back(conversation);
        while self.pins.len() > self.limits.max_pins {
            match self.order.pop_front() {
                Some(old) => self.unpin(&old),
                None => break,
            }
        }
        // Keep the order list from growing past the live pins with unpinned keys.
        if self.order.len() > 2 * self.pins.len() + 64 {
            let pins = &self.pins;
            self.order.retain(|c| pins.contains_key(c));
        }
        true
    }

    /// Forget where `conversation` was pinned.
    pub fn unpin(&mut self, conversation: &Digest) {
        if let Some((_, tenant)) = self.pins.remove(conversation) {
            if let Some(n) = self.per_tenant.get_mut(&tenant) {
                *n -= 1;
                if *n == 0 {
                    self.per_tenant.remove(&tenant);
                }
            }
        }
    }

    /// Forget every pin (the primary is healthy again).
    pub fn clear(&mut self) {
        self.pins.clear();
        self.order.clear();
        self.per_tenant.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u32) -> Digest {
        let mut out = [0u8; 32];
        out[..4].copy_from_slice(&n.to_le_bytes());
        out
    }

    #[test]
    fn pins_are_bounded_and_the_oldest_goes_first() {
        let mut p = Pins::new(PinLimits {
            max_pins: 3,
            max_per_tenant: 10,
        });
        for c in 0..5 {
            assert!(p.pin(d(c), d(1000 + c), 7));
        }
        assert_eq!(p.len(), 3);
        assert_eq!(p.get(&d(0)), None);
        assert_eq!(p.get(&d(1)), None);
        assert_eq!(p.get(&d(4)), Some(7));
    }

    #[test]
    fn one_tenant_cannot_take_more_than_its_share() {
        let mut p = Pins::new(PinLimits {
            max_pins: 100,
            max_per_tenant: 2,
        });
        let greedy = d(999);
        assert!(p.pin(d(1), greedy, 1));
        assert!(p.pin(d(2), greedy, 1));
        assert!(!p.pin(d(3), greedy, 1), "past its share");
        assert_eq!(p.get(&d(3)), None);
        assert!(p.pin(d(4), d(5), 1), "another tenant still pins");
        // Re-pinning a held conversation is not a new pin.
        assert!(p.pin(d(1), greedy, 2));
        assert_eq!(p.get(&d(1)), Some(2));
        p.unpin(&d(1));
        assert!(p.pin(d(3), greedy, 1), "an unpin frees the share");
    }

    #[test]
    fn clear_forgets_everything_and_order_stays_bounded() {
        let mut p = Pins::new(PinLimits::default());
        for round in 0..1000 {
            assert!(p.pin(d(round), d(0), 1));
            p.unpin(&d(round));
        }
        assert!(p.order.len() <= 64 + 1);
        p.pin(d(1), d(0), 1);
        p.clear();
        assert!(p.is_empty());
        assert!(p.per_tenant.is_empty());
    }
}
