//! How long to wait before retrying the same model, and whether to retry it at all.
//!
//! The baseline is the official SDK's rule (`min(0.5 s x 2^n, 8 s)` with a server hint winning), and the one thing we add is the
//! caller's deadline: a wait that would leave no time for the attempt itself is reported as
//! [`Wait::BeyondDeadline`] so the chain walker moves to the next model instead of sleeping in vain.
//!
//! Pure: no clock, no global RNG. Randomness comes in as an `f64` in `[0, 1)` (see [`SplitMix64`](crate::policy::rng::SplitMix64)).

use std::time::Duration;

use super::invalid::Invalid;

/// How a computed backoff delay `d` is randomised, so that many clients failing together do not
/// retry together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Jitter {
    /// Exactly `d`: deterministic, for tests and single clients.
    None,
    /// Uniform in `[0, d]` ("full jitter"): spreads a thundering herd the most.
    #[default]
    Full,
    /// `d x (1 - 0.25 x r)`, in `[0.75 d, d]`: what the official SDK does.
    Sdk,
}

/// Exponential backoff for retries of one model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Backoff {
    /// Delay before the first retry (before jitter).
    pub base: Duration,
    /// Largest computed delay (before jitter). A server hint is not capped.
    pub cap: Duration,
    /// Attempts per model, including the first one.
    pub max_attempts: u32,
    /// How the computed delay is randomised.
    pub jitter: Jitter,
}

impl Default for Backoff {
    /// The SDK's curve (500 ms doubling to 8 s) with 3 attempts per model and full jitter.
    fn default() -> Self {
        Self {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(8),
            max_attempts: 3,
            jitter: Jitter::Full,
        }
    }
}

/// What to do after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[must_use]
pub enum Wait {
    /// Retry the same model after this delay.
    Retry(Duration),
    /// This model has had all its attempts: move on.
    Exhausted,
    /// The wait plus one attempt would not fit in what is left of the deadline: move on now
    /// rather than sleep into a certain timeout.
    BeyondDeadline {
        /// The delay the policy (or the server's hint) asked for.
        wanted: Duration,
    },
}

impl Backoff {
    /// Check the settings; the error names the offending field.
    ///
    /// # Errors
    ///
    /// The first field that cannot work.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.base.is_zero() {
            return Err(Invalid::new("backoff.base", "must be greater than zero"));
        }
        if self.cap < self.base {
            return Err(Invalid::new(
                "backoff.cap",
                format!(
                    "({:?}) must be at least backoff.base ({:?})",
                    self.cap, self.base
                ),
            ));
        }
        if self.max_attempts == 0 {
            return Err(Invalid::new("backoff.max_attempts", "must be at least 1"));
        }
        Ok(())
    }

    /// The delay before attempt number `failures + 1`, after `failures` failures (`failures >= 1`;
    /// 0 is treated as 1).
    ///
    /// `min(base x 2^(failures - 1), cap)`, then jittered with `rand01` (clamped to `[0, 1]`, NaN
    /// counts as 0). A server hint that is `Some` and positive wins and is used as is: neither
    /// jittered nor capped, because the server knows when its bucket refills and we do not.
    pub fn delay(&self, failures: u32, hint: Option<Duration>, rand01: f64) -> Duration {
        if let Some(h) = hint.filter(|h| !h.is_zero()) {
            return h;
        }
        let d = self.capped(failures);
        let r = clamp01(rand01);
        match self.jitter {
            Jitter::None => d,
            Jitter::Full => scale(d, r),
            Jitter::Sdk => scale(d, 1.0 - 0.25 * r),
        }
    }

    /// The whole decision after `failures` failed attempts at one model.
    ///
    /// `failures >= max_attempts` gives [`Wait::Exhausted`]. Otherwise the delay `d` is computed as
    /// in [`Backoff::delay`]; if `remaining` (what is left of the caller's deadline) is `Some(r)`
    /// and `d + min_attempt > r`, the answer is [`Wait::BeyondDeadline`]: a hint longer than the
    /// deadline means leave this model now, never a doomed sleep. Else [`Wait::Retry`].
    pub fn next(
        &self,
        failures: u32,
        hint: Option<Duration>,
        remaining: Option<Duration>,
        min_attempt: Duration,
        rand01: f64,
    ) -> Wait {
        if failures >= self.max_attempts {
            return Wait::Exhausted;
        }
        let d = self.delay(failures, hint, rand01);
        match remaining {
            // Saturating: a huge hint plus the attempt must still compare as "too long".
            Some(r) if d.saturating_add(min_attempt) > r => Wait::BeyondDeadline { wanted: d },
            _ => Wait::Retry(d),
        }
    }

    /// `min(base x 2^(failures - 1), cap)` without overflow for any `failures`.
    fn capped(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1);
        // 2^exp fits a u32 only below 32; beyond that (or on Duration overflow) the cap applies anyway.
        let grown = 1u32
            .checked_shl(exp)
            .and_then(|factor| self.base.checked_mul(factor));
        match grown {
            Some(d) => d.min(self.cap),
            None => self.cap,
        }
    }
}

/// Clamp a caller's random value into `[0, 1]`; NaN becomes 0 so no input can panic.
fn clamp01(r: f64) -> f64 {
    if r.is_nan() {
        0.0
    } else {
        r.clamp(0.0, 1.0)
    }
}

/// `d x f` for `f` in `[0, 1]`, never above `d` and never panicking (even for `Duration::MAX`,
/// whose `f64` seconds round above what a `Duration` can hold).
fn scale(d: Duration, f: f64) -> Duration {
    Duration::try_from_secs_f64(d.as_secs_f64() * f).map_or(d, |x| x.min(d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::rng::SplitMix64;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn plain() -> Backoff {
        Backoff {
            jitter: Jitter::None,
            max_attempts: 10,
            ..Backoff::default()
        }
    }

    #[test]
    fn default_is_the_sdk_curve_with_three_attempts() {
        let b = Backoff::default();
        assert_eq!(b.base, ms(500));
        assert_eq!(b.cap, ms(8000));
        assert_eq!(b.max_attempts, 3);
        assert_eq!(b.jitter, Jitter::Full);
        assert_eq!(b.validate(), Ok(()));
    }

    #[test]
    fn validate_names_the_field() {
        let zero_base = Backoff {
            base: Duration::ZERO,
            ..Backoff::default()
        };
        assert_eq!(zero_base.validate().unwrap_err().field, "backoff.base");
        let low_cap = Backoff {
            cap: ms(100),
            ..Backoff::default()
        };
        assert_eq!(low_cap.validate().unwrap_err().field, "backoff.cap");
        let no_attempts = Backoff {
            max_attempts: 0,
            ..Backoff::default()
        };
        assert_eq!(
            no_attempts.validate().unwrap_err().field,
            "backoff.max_attempts"
        );
    }

    #[test]
    fn grows_by_doubling_up_to_the_cap() {
        let b = plain();
        let got: Vec<Duration> = (1..=6).map(|f| b.delay(f, None, 0.5)).collect();
        assert_eq!(
            got,
            vec![ms(500), ms(1000), ms(2000), ms(4000), ms(8000), ms(8000)]
        );
    }

    #[test]
    fn huge_failure_counts_do_not_overflow() {
        let b = plain();
        assert_eq!(b.delay(33, None, 0.0), ms(8000));
        assert_eq!(b.delay(64, None, 0.0), ms(8000));
        assert_eq!(b.delay(u32::MAX, None, 0.0), ms(8000));
        // Zero failures is read as the first retry.
        assert_eq!(b.delay(0, None, 0.0), ms(500));
        // A base so large that doubling overflows Duration still lands on the cap.
        let big = Backoff {
            base: Duration::MAX / 2,
            cap: Duration::MAX,
            max_attempts: 10,
            jitter: Jitter::Full,
        };
        assert_eq!(big.capped(3), Duration::MAX);
        assert!(big.delay(3, None, 0.999) <= Duration::MAX);
    }

    #[test]
    fn full_jitter_is_d_times_r_within_zero_and_d() {
        let b = Backoff {
            jitter: Jitter::Full,
            ..plain()
        };
        // Third failure: d = 2 s.
        assert_eq!(b.delay(3, None, 0.25), ms(500));
        assert_eq!(b.delay(3, None, 0.0), Duration::ZERO);
        let mut rng = SplitMix64::new(7);
        for _ in 0..1000 {
            let r = rng.next_f64();
            let got = b.delay(3, None, r);
            assert!(got <= ms(2000), "{got:?}");
            let want = 2.0 * r;
            assert!((got.as_secs_f64() - want).abs() < 1e-9, "{got:?} vs {want}");
        }
    }

    #[test]
    fn sdk_jitter_stays_within_three_quarters_and_d() {
        let b = Backoff {
            jitter: Jitter::Sdk,
            ..plain()
        };
        assert_eq!(b.delay(2, None, 0.0), ms(1000));
        assert_eq!(b.delay(2, None, 1.0), ms(750));
        assert_eq!(b.delay(2, None, 0.5), ms(875));
        let mut rng = SplitMix64::new(11);
        for _ in 0..1000 {
            let got = b.delay(2, None, rng.next_f64());
            assert!(got >= ms(750) && got <= ms(1000), "{got:?}");
        }
    }

    #[test]
    fn bad_random_values_are_clamped() {
        let b = Backoff {
            jitter: Jitter::Full,
            ..plain()
        };
        assert_eq!(b.delay(1, None, f64::NAN), Duration::ZERO);
        assert_eq!(b.delay(1, None, -3.0), Duration::ZERO);
        assert_eq!(b.delay(1, None, 7.0), ms(500));
        assert_eq!(b.delay(1, None, f64::INFINITY), ms(500));
        let sdk = Backoff {
            jitter: Jitter::Sdk,
            ..plain()
        };
        assert_eq!(sdk.delay(1, None, f64::NEG_INFINITY), ms(500));
        assert_eq!(sdk.delay(1, None, 2.0), ms(375));
    }

    #[test]
    fn a_server_hint_wins_unjittered_and_uncapped() {
        let b = Backoff::default();
        assert_eq!(b.delay(1, Some(ms(1234)), 0.9), ms(1234));
        assert_eq!(b.delay(1, Some(ms(30_000)), 0.1), ms(30_000));
        // A zero hint is no hint: the computed, jittered delay applies.
        assert_eq!(b.delay(1, Some(Duration::ZERO), 0.5), ms(250));
    }

    #[test]
    fn exhausted_at_max_attempts() {
        let b = Backoff {
            jitter: Jitter::None,
            ..Backoff::default()
        };
        assert_eq!(b.next(1, None, None, ms(0), 0.0), Wait::Retry(ms(500)));
        assert_eq!(b.next(2, None, None, ms(0), 0.0), Wait::Retry(ms(1000)));
        assert_eq!(b.next(3, None, None, ms(0), 0.0), Wait::Exhausted);
        assert_eq!(b.next(u32::MAX, None, None, ms(0), 0.0), Wait::Exhausted);
        // Even a hint cannot buy an attempt beyond the budget.
        assert_eq!(b.next(3, Some(ms(10)), None, ms(0), 0.0), Wait::Exhausted);
    }

    #[test]
    fn a_hint_beyond_the_deadline_means_leave_now() {
        let b = Backoff::default();
        assert_eq!(
            b.next(1, Some(ms(20_000)), Some(ms(5_000)), ms(0), 0.3),
            Wait::BeyondDeadline { wanted: ms(20_000) }
        );
        assert_eq!(
            b.next(1, Some(ms(2_000)), Some(ms(5_000)), ms(0), 0.3),
            Wait::Retry(ms(2_000))
        );
        // No deadline: any hint is honoured.
        assert_eq!(
            b.next(1, Some(ms(600_000)), None, ms(0), 0.3),
            Wait::Retry(ms(600_000))
        );
        // Enormous values saturate instead of overflowing.
        assert_eq!(
            b.next(1, Some(Duration::MAX), Some(ms(1)), Duration::MAX, 0.3),
            Wait::BeyondDeadline {
                wanted: Duration::MAX
            }
        );
    }

    #[test]
    fn the_attempt_itself_must_fit_too() {
        let b = plain();
        // 500 ms wait + 1 s attempt fits 1.5 s exactly, not 1.4 s.
        assert_eq!(
            b.next(1, None, Some(ms(1500)), ms(1000), 0.0),
            Wait::Retry(ms(500))
        );
        assert_eq!(
            b.next(1, None, Some(ms(1400)), ms(1000), 0.0),
            Wait::BeyondDeadline { wanted: ms(500) }
        );
    }

    #[test]
    fn splitmix_is_deterministic_per_seed_and_in_unit_interval() {
        let mut a = SplitMix64::new(42);
        let mut b = SplitMix64::new(42);
        let mut c = SplitMix64::new(43);
        let xs: Vec<u64> = (0..100).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..100).map(|_| b.next_u64()).collect();
        let zs: Vec<u64> = (0..100).map(|_| c.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs, zs);
        // Reference value of splitmix64 seeded with 0.
        assert_eq!(SplitMix64::new(0).next_u64(), 0xE220_A839_7B1D_CDAF);
        let mut r = SplitMix64::new(1);
        let mut sum = 0.0;
        for _ in 0..10_000 {
            let x = r.next_f64();
            assert!((0.0..1.0).contains(&x), "{x}");
            sum += x;
        }
        // Roughly uniform: the mean is near one half.
        assert!((sum / 10_000.0 - 0.5).abs() < 0.02);
    }
}
