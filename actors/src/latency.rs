//! The latest latency estimates of every model, for request actors to read without asking
//! anyone: the monitor, which sees every attempt, learns them ([`LatencyModel`]) and publishes
//! them here. One writer, many readers, plain atomics: a read is two loads.
//!
//! [`LatencyModel`]: crate::policy::latency::LatencyModel

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::policy::latency::Expected;

/// `u64::MAX`: not learned yet.
const UNKNOWN: u64 = u64::MAX;

struct Cell {
    fixed_us: AtomicU64,
    per_token_ns: AtomicU64,
}

/// The published estimates, by model id.
pub struct LatencyBook {
    cells: Vec<Cell>,
}

impl LatencyBook {
    /// A book for `models` models, none learned yet.
    pub fn new(models: usize) -> Self {
        Self {
            cells: (0..models)
                .map(|_| Cell {
                    fixed_us: AtomicU64::new(UNKNOWN),
                    per_token_ns: AtomicU64::new(UNKNOWN),
                })
                .collect(),
        }
    }

    /// Publish a model's estimate.
    pub fn set(&self, model: usize, e: Expected) {
        if let Some(c) = self.cells.get(model) {
            c.per_token_ns.store(
                u64::try_from(e.per_token.as_nanos()).unwrap_or(UNKNOWN - 1),
                Ordering::Relaxed,
            );
            c.fixed_us.store(
                u64::try_from(e.fixed.as_micros()).unwrap_or(UNKNOWN - 1),
                Ordering::Release,
            );
        }
    }

    /// A model's estimate, once learned.
    pub fn get(&self, model: usize) -> Option<Expected> {
        let c = self.cells.get(model)?;
        let fixed = c.fixed_us.load(Ordering::Acquire);
        let per = c.per_token_ns.load(Ordering::Relaxed);
        (fixed != UNKNOWN && per != UNKNOWN).then(|| Expected {
            fixed: Duration::from_micros(fixed),
            per_token: Duration::from_nanos(per),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_until_published() {
        let book = LatencyBook::new(2);
        assert_eq!(book.get(0), None);
        let e = Expected {
            fixed: Duration::from_millis(30),
            per_token: Duration::from_micros(2500),
        };
        book.set(1, e);
        assert_eq!(book.get(1), Some(e));
        assert_eq!(book.get(0), None);
        assert_eq!(book.get(9), None);
    }
}
