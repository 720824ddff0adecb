//! Random numbers that do not depend on threads or chunking.
//!
//! Permutation `i` of a Monte Carlo null draws its sign bits from a counter-based hash of
//! `(seed, i, word)`, so any permutation can be produced on its own, by any thread, in any
//! order. The hash is two rounds of the SplitMix64 finaliser (Stafford's "mix13"), a bijection
//! of 64-bit words with full avalanche; the sequential [`SplitMix64`] stream (split-half
//! shuffles) uses the same finaliser.

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;
const WORD_STEP: u64 = 0xd1b5_4a32_d192_ed03;

/// Keeps the sign-flip and split-half streams of one seed unrelated to each other.
#[derive(Debug, Clone, Copy)]
pub enum Stream {
    /// Sign patterns of Monte Carlo sign-flip nulls.
    SignFlip,
    /// Shuffles of split-half reliability.
    SplitHalf,
}

impl Stream {
    fn tag(self) -> u64 {
        match self {
            Stream::SignFlip => 0x5167_6e2d_666c_6970,
            Stream::SplitHalf => 0x7370_6c69_742d_6861,
        }
    }
}

/// The SplitMix64 output function: a bijection on u64.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The key of one (seed, stream).
#[inline]
pub fn stream_key(seed: u64, stream: Stream) -> u64 {
    mix64(seed ^ stream.tag())
}

/// Word `word` of counter `counter` under `key`: the same value whoever asks, whenever.
#[inline]
pub fn counter_word(key: u64, counter: u64, word: u64) -> u64 {
    let first = mix64(key ^ counter.wrapping_mul(GOLDEN));
    mix64(first ^ word.wrapping_mul(WORD_STEP).wrapping_add(GOLDEN))
}

/// A sequential SplitMix64 generator.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator starting from `state`.
    pub fn new(state: u64) -> Self {
        SplitMix64 { state }
    }

    /// Independent stream `index` of `key` (one per split, say).
    pub fn substream(key: u64, index: u64) -> Self {
        SplitMix64::new(counter_word(key, index, u64::MAX))
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix64(self.state)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [0, bound) without modulo bias (Lemire's multiply-and-reject).
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0);
        let mut product = (self.next_u64() as u128) * (bound as u128);
        if (product as u64) < bound {
            let floor = bound.wrapping_neg() % bound;
            while (product as u64) < floor {
                product = (self.next_u64() as u128) * (bound as u128);
            }
        }
        (product >> 64) as u64
    }
}

/// `len` uniform draws from `[-shift, 1 - shift)` of the generator seeded with `seed` (test data).
#[cfg(test)]
pub(crate) fn uniform_data(len: usize, seed: u64, shift: f64) -> Vec<f64> {
    let mut g = SplitMix64::new(seed);
    (0..len).map(|_| g.next_f64() - shift).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix64_known_values() {
        // SplitMix64 seeded with 0 yields mix64(GOLDEN) first: 0xe220a8397b1dcdaf.
        assert_eq!(SplitMix64::new(0).next_u64(), 0xe220_a839_7b1d_cdaf);
    }

    #[test]
    fn counter_words_are_balanced() {
        let key = stream_key(7, Stream::SignFlip);
        let mut ones = 0u64;
        let draws = 20_000u64;
        for i in 0..draws {
            ones += counter_word(key, i, 0).count_ones() as u64;
        }
        let expected = 32.0 * draws as f64;
        let sd = (16.0 * draws as f64).sqrt();
        assert!(((ones as f64) - expected).abs() < 5.0 * sd, "{ones}");
    }

    #[test]
    fn below_is_uniform_enough() {
        let mut g = SplitMix64::new(11);
        let mut hist = [0u32; 5];
        for _ in 0..50_000 {
            hist[g.below(5) as usize] += 1;
        }
        for h in hist {
            assert!((h as f64 - 10_000.0).abs() < 500.0, "{hist:?}");
        }
    }
}
