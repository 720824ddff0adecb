//! Statistics core of dense-plantain.
//!
//! The input is a matrix of paired differences, `diff[pair][unit] = B - A`, stored pair-major
//! (C order, `n_pairs` rows of `n_units` values). The core computes
//!
//! * [`paired`]: per-unit mean, sd (n - 1), paired t and Cohen's d_z;
//! * [`sign_flip`]: the sign-flip null, exact (all 2^(n-1) distinct patterns) or Monte Carlo,
//!   as per-pattern counts of units above thresholds and the max |t|;
//! * [`split_half`]: split-half reliability of the per-unit t-map.
//!
//! It knows nothing of Python: `py.rs` (feature `python`) is a thin adapter over these
//! functions. Parallel loops run on the pool of [`threads`], whose size an environment
//! variable sets and which is rebuilt in a forked child.

#![deny(missing_docs)]

use std::fmt;

pub mod paired;
pub mod rng;
pub mod sign_flip;
pub mod simd;
pub mod split_half;
pub mod threads;

#[cfg(feature = "python")]
mod py;

/// Fewest pairs the statistics accept: with two pairs the sd has one degree of freedom and the
/// sign-flip null has two patterns, which says nothing.
pub const MIN_PAIRS: usize = 3;

/// Why an input was refused. Every variant says what was wrong and where.
#[derive(Debug, Clone, PartialEq)]
pub enum StatsError {
    /// Fewer than [`MIN_PAIRS`] pairs.
    TooFewPairs {
        /// Pairs given.
        n_pairs: usize,
        /// Pairs needed.
        needed: usize,
        /// The statistic that needs them.
        what: &'static str,
    },
    /// A matrix with no units.
    NoUnits,
    /// The flat buffer does not hold `n_pairs * n_units` values.
    BadLength {
        /// Values in the buffer.
        len: usize,
        /// Rows claimed.
        n_pairs: usize,
        /// Columns claimed.
        n_units: usize,
    },
    /// A NaN or an infinity at this pair and unit.
    NonFinite {
        /// Row of the value.
        pair: usize,
        /// Column of the value.
        unit: usize,
        /// The value itself.
        value: f64,
    },
    /// A threshold that is negative, NaN or infinite.
    BadThreshold {
        /// "t" or "d".
        kind: &'static str,
        /// The threshold given.
        value: f64,
    },
    /// A permutation or pattern range that is empty-ended the wrong way or out of bounds.
    BadRange {
        /// First index asked for.
        start: u64,
        /// One past the last index asked for.
        end: u64,
        /// The largest allowed `end`.
        limit: u64,
    },
    /// Exact enumeration asked for more pairs than it can index.
    TooManyPairsForExact {
        /// Pairs given.
        n_pairs: usize,
        /// Most pairs exact mode accepts.
        max: usize,
    },
    /// A partition of the units (for the tallies' group nulls) that cannot be used.
    BadPartition {
        /// Index of the partition among those given.
        partition: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A split assignment row whose halves are too small or of the wrong width.
    BadSplit {
        /// Row of the assignment matrix.
        split: usize,
        /// What is wrong with it.
        reason: String,
    },
}

impl fmt::Display for StatsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StatsError::TooFewPairs { n_pairs, needed, what } => write!(
                f,
                "{what} needs at least {needed} pairs, got {n_pairs}; add pairs to the stimulus set"
            ),
            StatsError::NoUnits => write!(f, "the difference matrix has no units (0 columns)"),
            StatsError::BadLength { len, n_pairs, n_units } => write!(
                f,
                "a {n_pairs} x {n_units} matrix needs {} values, got {len}",
                n_pairs * n_units
            ),
            StatsError::NonFinite { pair, unit, value } => write!(
                f,
                "non-finite difference {value} at pair {pair}, unit {unit}; \
                 re-capture that pair or drop it"
            ),
            StatsError::BadThreshold { kind, value } => {
                write!(f, "{kind} threshold {value} is not a finite number >= 0")
            }
            StatsError::BadRange { start, end, limit } => {
                write!(f, "range [{start}, {end}) is not inside [0, {limit}] with start <= end")
            }
            StatsError::TooManyPairsForExact { n_pairs, max } => write!(
                f,
                "exact enumeration supports at most {max} pairs (2^{} patterns), got {n_pairs}; \
                 use Monte Carlo permutations",
                max - 1
            ),
            StatsError::BadSplit { split, reason } => write!(f, "split {split}: {reason}"),
            StatsError::BadPartition { partition, reason } => write!(f, "unit partition {partition}: {reason}"),
        }
    }
}

impl std::error::Error for StatsError {}

/// A borrowed, validated matrix of paired differences, pair-major.
#[derive(Debug, Clone, Copy)]
pub struct PairDiffs<'a> {
    data: &'a [f64],
    n_pairs: usize,
    n_units: usize,
}

impl<'a> PairDiffs<'a> {
    /// Checks the shape (at least [`MIN_PAIRS`] pairs, at least one unit) and that every value
    /// is finite; the first non-finite value is named by pair and unit.
    pub fn new(data: &'a [f64], n_pairs: usize, n_units: usize) -> Result<Self, StatsError> {
        if n_pairs.checked_mul(n_units) != Some(data.len()) {
            return Err(StatsError::BadLength {
                len: data.len(),
                n_pairs,
                n_units,
            });
        }
        if n_pairs < MIN_PAIRS {
            return Err(StatsError::TooFewPairs {
                n_pairs,
                needed: MIN_PAIRS,
                what: "paired statistics",
            });
        }
        if n_units == 0 {
            return Err(StatsError::NoUnits);
        }
        if let Some(k) = data.iter().position(|v| !v.is_finite()) {
            return Err(StatsError::NonFinite {
                pair: k / n_units,
                unit: k % n_units,
                value: data[k],
            });
        }
        Ok(PairDiffs { data, n_pairs, n_units })
    }

    /// Number of pairs (rows).
    pub fn n_pairs(&self) -> usize {
        self.n_pairs
    }

    /// Number of units (columns).
    pub fn n_units(&self) -> usize {
        self.n_units
    }

    /// The differences of one pair, one value per unit.
    pub fn pair(&self, i: usize) -> &'a [f64] {
        &self.data[i * self.n_units..(i + 1) * self.n_units]
    }
}
pub mod bootstrap;
pub mod direction;
