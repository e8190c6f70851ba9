//! The simulator's own seeded generator: splitmix64 (Steele, Lea and Flood, "Fast splittable
//! pseudorandom number generators", 2014), written here so the simulator shares no code with
//! the runtime it checks.
//!
//! A request's draws come from `Rng::new(seed ^ seq)`: one `u64` of state, so a whole sequence is
//! fixed by its seed, and nearby seeds (consecutive sequence numbers) still give unrelated
//! streams because every output goes through the mixing function.

/// A splitmix64 generator. Not for cryptography: it only has to be fast, seedable and spread
/// its outputs evenly.
#[derive(Clone, Debug)]
pub(crate) struct Rng {
    state: u64,
}

impl Rng {
    /// The golden-ratio increment of splitmix64: odd, so the state walks all 2^64 values.
    const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

    /// A generator whose whole sequence is fixed by `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(Self::GAMMA);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// The next value uniform in `[0, 1)`: the top 53 bits as the mantissa, so it never rounds
    /// up to 1.0 (a probability of 1 always hits, 0 never does).
    pub(crate) fn next_f64(&mut self) -> f64 {
        const SCALE: f64 = 1.0 / (1u64 << 53) as f64;
        (self.next_u64() >> 11) as f64 * SCALE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_splitmix64() {
        // The first outputs of the reference C implementation (splitmix64.c by Sebastiano Vigna)
        // for seed 1234567.
        let mut rng = Rng::new(1_234_567);
        let got: Vec<u64> = (0..5).map(|_| rng.next_u64()).collect();
        assert_eq!(
            got,
            [
                6_457_827_717_110_365_317,
                3_203_168_211_198_807_973,
                9_817_491_932_198_370_423,
                4_593_380_528_125_082_431,
                16_408_922_859_458_223_821,
            ]
        );
    }

    #[test]
    fn same_seed_same_sequence_and_floats_stay_below_one() {
        let a: Vec<u64> = {
            let mut r = Rng::new(7);
            (0..100).map(|_| r.next_u64()).collect()
        };
        let b: Vec<u64> = {
            let mut r = Rng::new(7);
            (0..100).map(|_| r.next_u64()).collect()
        };
        assert_eq!(a, b);
        let mut other = Rng::new(8);
        assert_ne!(other.next_u64(), a[0]);

        let mut r = Rng::new(42);
        let draws: Vec<f64> = (0..10_000).map(|_| r.next_f64()).collect();
        assert!(draws.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((0.48..0.52).contains(&mean), "mean {mean}");
    }
}
