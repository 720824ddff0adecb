//! The sign-flip null: within-pair label swaps, exact or Monte Carlo.
//!
//! # Patterns
//! Swapping A and B in pair `i` flips the sign of its difference. Statistics here are two-sided
//! (|t|, |d|, counts above thresholds), and flipping every pair negates t, so pair 0 is never
//! flipped and a pattern is an (n - 1)-bit number `j`: bit `i - 1` set means pair `i` is flipped.
//! Pattern 0 is the identity (the observed data). Exact mode enumerates `j = 0 .. 2^(n-1)`;
//! Monte Carlo permutation `i` uses the pattern hashed from `(seed, i)` (see [`crate::rng`]),
//! uniform over the same 2^(n-1) patterns, so any range of permutations can be computed alone,
//! by any thread, and gives the same numbers.
//!
//! # What is computed, and how
//! For pattern `j`: for every threshold, the number of units with |t| > c (or |d| > c), and the
//! max |t| over units.
//!
//! Each unit's differences are divided by the root of their sum of squares `SS` (sign flips do
//! not change it), so with `S` the flipped sum of the normalised values,
//! `t^2 = (n - 1) S^2 / (n - S^2)`. Hence |t| > c is `S^2 > r(c) = c^2 n / (n - 1 + c^2)`, one
//! compare against a constant shared by every unit, and max |t| is a function of max `S^2`.
//! `S` comes from lookup tables of partial sums over groups of 8 pairs (256 entries a group):
//! `S = ((x_0 + G_1[byte 1]) + G_2[byte 2] + ...) + G_0[byte 0]`, always added in that order,
//! so exact and Monte Carlo give bit-identical values for the same pattern, on any thread, in
//! any chunk, with any instruction set (no fused multiply-adds are used).
//!
//! Exact mode sweeps the low byte (256 patterns) with the high bytes fixed, so per unit `S = B +
//! L[a]` with `B` fixed and |L| <= R (the sum of |x| over the low pairs). A unit with
//! `|B| + R` below the smallest threshold (or t = 3, if lower) cannot reach it in any of the 256
//! patterns and is skipped; the survivors are filtered again per leaf of 32 patterns (8 with
//! AVX2) with the leaf's own fixed part and radius. On 25 x 16,320 probe-like data this leaves a
//! few percent of the unit-pattern evaluations. The max |t| over skipped units is bounded by
//! their reach, and a deferred pass evaluates them wherever that bound could beat the max of
//! the others (only where no unit got near the skip level). Counts and maxima are therefore
//! exactly those of evaluating every unit.
//!
//! # Degenerate units
//! A unit whose differences are all 0 has t = 0 under every pattern. A unit whose differences are
//! all equal to `v != 0` has |t| = inf under the identity and `|t| = sqrt((n-1) k^2 / (n^2 - k^2))`
//! under a pattern with `k` = (unflipped - flipped) pairs; both kinds are handled in closed form
//! (see [`crate::paired`] for the convention). More generally, a unit whose |differences| all
//! equal one `v != 0` (any signs) is constant under the patterns that align its signs, and has
//! `|t| = sqrt((n-1) k^2 / (n^2 - k^2))` with `k` = (agreeing - disagreeing pairs) under every
//! pattern: all such units are grouped by sign pattern and handled in this closed form (through
//! the normalised sums, `|k| = n` would come out as a huge finite |t|, about 2.7e8, instead of
//! inf). That closed form can equal a threshold exactly (n = 12, k = 10 gives t = 5): such a
//! unit is then not counted, as |t| > c is strict.
//!
//! # Tallies
//! [`tallies`] streams the null into fixed-size histograms (counts per group of units, the max
//! statistic against the sorted observed ones) and adds one-sided tails. Internally the kernels
//! can keep counts per *cell* (a range of units, see `Prepared::with_cells`), which is how the
//! two-sided tallies count every group of every partition in one sweep; the public per-pattern
//! functions here always use one cell.
//!
//! # Precision
//! Counts are those of float64 arithmetic on the normalised sums; they can differ from another
//! float64 computation of t only for a |t| within about 1e-14 (relative) of a threshold. The max
//! |t| is converted from `S^2` with relative error about `1e-16 * (1 + t^2)`; a |t| above about
//! 1e7 (a unit with near-constant differences) comes out as +inf.

mod kernels;
mod prepared;
mod tables;
pub mod tallies;
#[cfg(test)]
mod tests;

use crate::rng::{self, Stream};
use crate::{PairDiffs, StatsError};
use prepared::Prepared;

/// Largest n for exact enumeration: 2^32 patterns.
pub const MAX_EXACT_PAIRS: usize = 33;

/// Bits (pairs) per lookup-table group.
const GROUP_BITS: usize = 8;
/// Units are padded with all-zero units to a multiple of this (one vector of f64 lanes).
const LANES: usize = 8;
/// Units per block in exact mode (their low-byte tables, 1 MiB, about fill a Zen 4 L2; measured best).
const EXACT_UNIT_BLOCK: usize = 512;
/// Most high-byte values (each 256 patterns) per parallel task in exact mode: a task builds
/// each unit block's tables once for all of them (measured: 1,024 beat 256 by 5-8 %).
const EXACT_H_CHUNK: u64 = 1024;
/// Most bytes of one exact task's per-pattern counts (`[cells x thresholds x patterns]`, u32),
/// which bounds its high-byte values when there are many cells.
const EXACT_TASK_COUNT_BYTES: u64 = 32 << 20;
/// Bytes of tables per unit block in Monte Carlo mode (sized for a 1 MiB L2).
const MC_TABLE_BUDGET: usize = 768 * 1024;
/// Thresholds counted per pass over the data (more are done in further passes).
const MAX_K: usize = 4;
/// Slack on the skip bound: far above the rounding of sums of at most 64 normalised terms.
const SKIP_MARGIN: f64 = 2e-9;

/// Thresholds for the counts: |t| > c for each `t`, |d| > c for each `d` (strict).
#[derive(Debug, Clone, Copy)]
pub struct Thresholds<'a> {
    /// Thresholds on |t|.
    pub t: &'a [f64],
    /// Thresholds on |d| (Cohen's d_z).
    pub d: &'a [f64],
}

impl Thresholds<'_> {
    /// Number of thresholds, t and d together (one output column each).
    pub fn len(&self) -> usize {
        self.t.len() + self.d.len()
    }

    /// Whether there are no thresholds.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every threshold must be finite and non-negative (`BadThreshold` names the first that is not).
    pub fn check(&self) -> Result<(), StatsError> {
        let named = self.t.iter().map(|&c| (c, "t")).chain(self.d.iter().map(|&c| (c, "d")));
        for (c, kind) in named {
            if !(c.is_finite() && c >= 0.0) {
                return Err(StatsError::BadThreshold { kind, value: c });
            }
        }
        Ok(())
    }
}

/// The null over one range of patterns or permutations.
#[derive(Debug, Clone, PartialEq)]
pub struct NullRange {
    /// Row-major `[len x (t.len() + d.len())]`: the t-threshold columns, then the d ones.
    pub counts: Vec<i64>,
    /// Max |t| over units, one per pattern.
    pub max_abs_t: Vec<f64>,
    /// Max `S^2 / SS` over units, one per pattern: the max |t| before its conversion to t
    /// (`k^2 / n` for equal-magnitude units), for tie-exact comparisons.
    pub max_ratio: Vec<f64>,
}

/// Number of distinct sign patterns, 2^(n-1).
pub fn n_patterns(n_pairs: usize) -> Result<u64, StatsError> {
    if n_pairs > MAX_EXACT_PAIRS {
        return Err(StatsError::TooManyPairsForExact {
            n_pairs,
            max: MAX_EXACT_PAIRS,
        });
    }
    Ok(1u64 << (n_pairs.max(1) - 1))
}

/// The exact null over patterns `start .. end` of the 2^(n-1).
pub fn exact(diffs: &PairDiffs, thresholds: Thresholds, start: u64, end: u64) -> Result<NullRange, StatsError> {
    let total = n_patterns(diffs.n_pairs())?;
    check_range(start, end, total)?;
    let prep = Prepared::new(diffs, thresholds)?;
    Ok(prep.run(Mode::Exact, start, end))
}

/// The Monte Carlo null over permutations `start .. end` of the stream of `seed`.
pub fn monte_carlo(
    diffs: &PairDiffs,
    thresholds: Thresholds,
    seed: u64,
    start: u64,
    end: u64,
) -> Result<NullRange, StatsError> {
    check_range(start, end, u64::MAX)?;
    let prep = Prepared::new(diffs, thresholds)?;
    Ok(prep.run(
        Mode::MonteCarlo {
            key: rng::stream_key(seed, Stream::SignFlip),
        },
        start,
        end,
    ))
}

/// The observed data (the identity pattern: no pair flipped) through the null's own route:
/// one row of counts and max |t|, bit-identical to exact pattern 0 and to any Monte Carlo
/// permutation that flips nothing, for any number of pairs. Observed threshold counts and the
/// observed max |t| must come from here, not from a separately computed t: at a |t| (or |d|)
/// that equals a threshold exactly, another float64 route can land on the other side of it.
pub fn identity(diffs: &PairDiffs, thresholds: Thresholds) -> Result<NullRange, StatsError> {
    let prep = Prepared::new(diffs, thresholds)?;
    Ok(prep.run(Mode::Identity, 0, 1))
}

/// Signs (+1 / -1, row-major `[len x n_pairs]`) of Monte Carlo permutations `start .. end`:
/// what [`monte_carlo`] multiplies each pair's differences by.
pub fn monte_carlo_signs(n_pairs: usize, seed: u64, start: u64, end: u64) -> Result<Vec<i8>, StatsError> {
    if n_pairs < crate::MIN_PAIRS {
        return Err(StatsError::TooFewPairs {
            n_pairs,
            needed: crate::MIN_PAIRS,
            what: "a sign-flip null",
        });
    }
    check_range(start, end, u64::MAX)?;
    let key = rng::stream_key(seed, Stream::SignFlip);
    let n_groups = group_count(n_pairs);
    let mut bytes = vec![0u8; n_groups];
    let mut signs = Vec::with_capacity((end - start) as usize * n_pairs);
    for i in start..end {
        monte_carlo_pattern(key, i, n_pairs, &mut bytes);
        signs.push(1);
        for pair in 1..n_pairs {
            let bit = (bytes[(pair - 1) / 8] >> ((pair - 1) % 8)) & 1;
            signs.push(if bit == 1 { -1 } else { 1 });
        }
    }
    Ok(signs)
}

/// |t| from the normalised squared sum `r = S^2 / SS` of one unit: `sqrt((n-1) r / (n - r))`.
pub fn abs_t_from_ratio(r: f64, n_pairs: usize) -> f64 {
    let n = n_pairs as f64;
    if r >= n {
        f64::INFINITY
    } else {
        ((n - 1.0) * r / (n - r)).sqrt()
    }
}

/// The ratio threshold `r` with |t| > c  <=>  S^2 / SS > r.
fn ratio_for_t(c: f64, n: f64) -> f64 {
    if c == 0.0 {
        0.0
    } else {
        n / ((n - 1.0) / (c * c) + 1.0)
    }
}

/// The ratio threshold `r` with |d| > c  <=>  S^2 / SS > r (d = t / sqrt(n)).
fn ratio_for_d(c: f64, n: f64) -> f64 {
    if c == 0.0 {
        0.0
    } else {
        n / ((n - 1.0) / (c * c * n) + 1.0)
    }
}

fn check_range(start: u64, end: u64, limit: u64) -> Result<(), StatsError> {
    if start > end || end > limit {
        return Err(StatsError::BadRange { start, end, limit });
    }
    Ok(())
}

fn group_count(n_pairs: usize) -> usize {
    (n_pairs - 1).div_ceil(GROUP_BITS).max(1)
}

/// Pattern bytes (byte g = bits 8g .. 8g+8, little-endian) of Monte Carlo permutation `i`
/// (the direction null draws the same patterns through this).
pub(crate) fn monte_carlo_pattern(key: u64, i: u64, n_pairs: usize, bytes: &mut [u8]) {
    let bits = n_pairs - 1;
    for (w, chunk) in bytes.chunks_mut(8).enumerate() {
        let word = rng::counter_word(key, i, w as u64).to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
    if !bits.is_multiple_of(8) {
        let last = bytes.len() - 1;
        bytes[last] &= (1u8 << (bits % 8)) - 1;
    }
    if bits == 0 {
        bytes[0] = 0;
    }
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    Exact,
    MonteCarlo {
        key: u64,
    },
    /// Pattern 0 only (nothing flipped), through the Monte Carlo kernels: any n.
    Identity,
}

/// Which compiled variant of the hot loops this process uses ("avx512", "avx2", "baseline").
pub fn simd_variant() -> &'static str {
    crate::simd::isa().name()
}
