//! How long a model takes, learned from its recent answers: the basis of a hedge's delay and of
//! an attempt's timeout that knows the request.
//!
//! A model's unary latency is modelled as a fixed part (time to first byte: queueing, prompt
//! processing) plus a part per output token. [`LatencyModel`] keeps the recent successes and
//! estimates both from high quantiles: the fixed part from answers short enough that their
//! tokens hardly count, the per-token part from the others. A request's expected latency is then
//! `fixed + per_token × max_tokens` (the most it may generate), an upper estimate, as a timeout
//! and a hedge delay want. Pure: time is in the samples.

use std::collections::VecDeque;
use std::time::Duration;

/// Samples kept per model: enough for a stable 95th percentile, recent enough to follow drift.
const KEEP: usize = 256;
/// Samples needed before an estimate is trusted.
pub const MIN_SAMPLES: usize = 20;
/// An answer this short measures the fixed part.
const SHORT_TOKENS: u64 = 32;

/// What a model is expected to take for a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Expected {
    /// Time to the first byte (the fixed part), at a high quantile.
    pub fixed: Duration,
    /// Time per output token, at a high quantile.
    pub per_token: Duration,
}

impl Expected {
    /// The expected latency of a unary request that may generate `max_tokens`.
    pub fn for_tokens(&self, max_tokens: u64) -> Duration {
        let tokens = u32::try_from(max_tokens).unwrap_or(u32::MAX);
        self.fixed
            .saturating_add(self.per_token.saturating_mul(tokens))
    }
}

/// A fresh estimate is worth making after this many new samples (it sorts the window).
pub const ESTIMATE_EVERY: u64 = 8;

/// A model's recent successful unary answers: (latency, output tokens).
#[derive(Clone, Debug, Default)]
pub struct LatencyModel {
    samples: VecDeque<(Duration, u64)>,
    /// Samples ever recorded (the window stops growing at [`KEEP`]; this does not).
    recorded: u64,
}

/// The `q` quantile (0..1) of `values`, sorted in place; `None` when empty.
fn quantile(values: &mut [Duration], q: f64) -> Option<Duration> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let i = ((values.len() as f64 - 1.0) * q).round() as usize;
    values.get(i.min(values.len() - 1)).copied()
}

impl LatencyModel {
    /// Note one successful answer.
    pub fn record(&mut self, latency: Duration, output_tokens: u64) {
        if self.samples.len() == KEEP {
            self.samples.pop_front();
        }
        self.samples.push_back((latency, output_tokens));
        self.recorded += 1;
    }

    /// True when the sample just recorded calls for a fresh [`estimate`](Self::estimate): the
    /// first time there are [`MIN_SAMPLES`], then every [`ESTIMATE_EVERY`] samples. Counted
    /// over every sample, not the window's length, which stops at [`KEEP`] (with the length,
    /// every call past the 256th sorted the window twice: 2 % of the gateway's CPU).
    pub fn estimate_due(&self) -> bool {
        self.samples.len() >= MIN_SAMPLES
            && (self.recorded == MIN_SAMPLES as u64 || self.recorded.is_multiple_of(ESTIMATE_EVERY))
    }

    /// Samples held.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// True before any sample.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The estimate at the 95th percentile, once there are [`MIN_SAMPLES`].
    pub fn estimate(&self) -> Option<Expected> {
        if self.samples.len() < MIN_SAMPLES {
            return None;
        }
        let mut short: Vec<Duration> = self
            .samples
            .iter()
            .filter(|(_, t)| *t <= SHORT_TOKENS)
            .map(|(l, _)| *l)
            .collect();
        // Without short answers, the fastest tenth stands for the fixed part.
        let fixed = if short.len() >= MIN_SAMPLES / 2 {
            quantile(&mut short, 0.95)?
        } else {
            let mut all: Vec<Duration> = self.samples.iter().map(|(l, _)| *l).collect();
            quantile(&mut all, 0.10)?
        };
        let mut per: Vec<Duration> = self
            .samples
            .iter()
            .filter(|(_, t)| *t > SHORT_TOKENS)
            .map(|(l, t)| {
                let over = l.saturating_sub(fixed);
                over / u32::try_from(*t).unwrap_or(u32::MAX)
            })
            .collect();
        let per_token = quantile(&mut per, 0.95).unwrap_or_default();
        Some(Expected { fixed, per_token })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn no_estimate_before_enough_samples() {
        let mut m = LatencyModel::default();
        for _ in 0..MIN_SAMPLES - 1 {
            m.record(30 * MS, 10);
        }
        assert_eq!(m.estimate(), None);
        m.record(30 * MS, 10);
        assert!(m.estimate().is_some());
    }

    #[test]
    fn an_estimate_is_due_once_enough_samples_then_one_in_eight_even_with_a_full_window() {
        let mut m = LatencyModel::default();
        let mut due = Vec::new();
        for i in 1..=(KEEP as u64 + 64) {
            m.record(30 * MS, 10);
            if m.estimate_due() {
                due.push(i);
            }
        }
        assert_eq!(due.first(), Some(&(MIN_SAMPLES as u64)));
        assert!(
            due.iter().skip(1).all(|i| i.is_multiple_of(ESTIMATE_EVERY)),
            "{due:?}"
        );
        let past_full = due.iter().filter(|i| **i > KEEP as u64).count();
        assert_eq!(past_full, 64 / ESTIMATE_EVERY as usize, "{due:?}");
    }

    #[test]
    fn short_answers_give_the_fixed_part_and_long_ones_the_rate() {
        let mut m = LatencyModel::default();
        // 20..40 ms for short answers; 500 tokens take 2 ms each on top.
        for i in 0..100u32 {
            m.record((20 + i % 21) * MS, 16);
            m.record((40 + 1000) * MS, 500);
        }
        let e = m.estimate().unwrap();
        assert_eq!(e.fixed, 39 * MS, "the 95th percentile of 20..40 ms");
        assert!(
            e.per_token >= 2 * MS && e.per_token < 3 * MS,
            "{:?}",
            e.per_token
        );
        assert_eq!(e.for_tokens(16), e.fixed + e.per_token * 16);
    }

    #[test]
    fn only_recent_answers_count() {
        let mut m = LatencyModel::default();
        for _ in 0..KEEP {
            m.record(1000 * MS, 10);
        }
        for _ in 0..KEEP {
            m.record(30 * MS, 10);
        }
        assert_eq!(
            m.estimate().unwrap().fixed,
            30 * MS,
            "the slow past is forgotten"
        );
        assert_eq!(m.len(), KEEP);
    }
}
