//! The direction test: does a unit's signed activity vector move along a consistent direction?
//!
//! # Input
//! Pair differences of signed vectors, `delta[pair][u * W + k]` for unit `u` and column `k`
//! (pair-major, `n_units * W` columns in unit order), float32 or float64, read in place.
//!
//! # Statistics, per unit
//! * `D = sum over i != j of <delta_i, delta_j> = ||sum_i delta_i||^2 - sum_i ||delta_i||^2`,
//!   computed as the off-diagonal sum of the Gram matrix (no cancellation of two large terms).
//! * `D_norm = D / sum_i ||delta_i||^2`, in `[-1, n - 1]`: unchanged when a unit's values are
//!   scaled, so units of different scales are comparable; the max over units of `D_norm` is the
//!   family-wise statistic. A unit whose differences are all zero vectors has `D = D_norm = 0`,
//!   takes no part in the max, and gets p = 1 everywhere.
//! * Held-out agreement: pair `i` agrees when `<delta_i, sum_{j != i} delta_j> > 0` (its
//!   difference projects positively on the direction learned from the other pairs); the count
//!   of agreeing pairs (the share is count / n).
//!
//! # The null
//! A sign pattern `s` flips whole vectors (`delta_i -> s_i delta_i`). With `H` the Gram matrix
//! with its diagonal set to 0 and `y_i = s_i (H s)_i`, the unit's D under `s` is `sum_i y_i` and
//! pair `i` agrees when `y_i > 0`: both come from the n-vector `H s`, whatever W is. `H s` is
//! assembled from lookup tables of partial sums over groups of 8 pairs (256 entries per group,
//! as in [`crate::sign_flip`]), so a pattern costs about `ceil((n-1)/8) * ceil(n/8)` vector adds
//! per unit.
//!
//! Patterns are those of the t null ([`crate::sign_flip`]): pair 0 is never flipped (s and -s
//! give the same D and agreement), pattern `j` flips pair `i >= 1` where bit `i - 1` is set;
//! exact mode enumerates `j = 0 .. 2^(n-1)`, Monte Carlo permutation `i` draws the same pattern
//! as `sign_flip::monte_carlo` does for the same seed and `i`.
//!
//! Per unit and range of patterns the engine returns integer counts, additive over ranges:
//! patterns with `D >= D_obs - tie`, patterns with agreement count `>= agree_obs`, and patterns
//! whose max over units of `D_norm` is `>= (D_obs - tie) / sum ||delta||^2` (the FWER count).
//! The max per pattern is tallied against the sorted observed values (binary search, histogram,
//! suffix sums): memory is units + patterns per chunk, never units x patterns. `tie = 1e-11 *
//! sum_{i != j} |<delta_i, delta_j>|`, far above the rounding of the float64 sums (a few
//! `n * 1e-16` of that bound) and far below any real difference: a pattern equivalent to the
//! identity always counts. The observed values come from the identity pattern through the same
//! kernel, so the identity counts for every unit without any tolerance.
//!
//! Everything is exact integer counts and float maxima combined in a fixed order, so results do
//! not depend on the number of threads or on how the range is chunked. Units run in parallel.

use crate::paired::pow2_floor;
use crate::rng::{self, Stream};
use crate::sign_flip::monte_carlo_pattern;
use crate::StatsError;
use rayon::prelude::*;
use std::fmt;

/// Lanes per vector chunk; also the pairs per lookup group (one byte of the pattern).
const LANES: usize = 8;
/// Patterns evaluated per table build (tables are rebuilt per chunk of patterns).
const CHUNK: usize = 16_384;
/// Units per parallel task.
const UNIT_TASK: usize = 16;
/// Relative tie tolerance on D (of the sum of |off-diagonal Gram entries|).
pub const TIE_REL: f64 = 1e-11;

/// Why an input was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum DirectionError {
    /// A refusal shared with the rest of the crate.
    Stats(StatsError),
    /// Width zero, or columns not a multiple of the width.
    BadWidth {
        /// Columns of the input.
        columns: usize,
        /// The requested vector width.
        width: usize,
    },
    /// A NaN or infinity at this pair, unit and column of the unit.
    NonFinite {
        /// Row of the input.
        pair: usize,
        /// The unit whose vector holds the value.
        unit: usize,
        /// The column within the unit's vector.
        column: usize,
        /// The offending value.
        value: f64,
    },
}

impl fmt::Display for DirectionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DirectionError::Stats(e) => e.fmt(f),
            DirectionError::BadWidth { columns, width } => write!(
                f,
                "{columns} columns cannot be split into units of width {width}; the vector width must be \
                 a positive divisor of the column count (see the capture's \"vector_width\")"
            ),
            DirectionError::NonFinite {
                pair,
                unit,
                column,
                value,
            } => write!(
                f,
                "non-finite vector difference {value} at pair {pair}, unit {unit}, column {column}; \
                 re-capture that pair or drop it"
            ),
        }
    }
}

impl std::error::Error for DirectionError {}

impl From<StatsError> for DirectionError {
    fn from(e: StatsError) -> Self {
        DirectionError::Stats(e)
    }
}

/// A value type the engine reads (float32 or float64), widened to float64 exactly.
pub trait Value: Copy + Send + Sync {
    /// The value as float64 (exact for both types).
    fn to_f64(self) -> f64;
}

impl Value for f32 {
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
}

impl Value for f64 {
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
}

/// A borrowed, validated matrix of vector differences, pair-major.
#[derive(Debug, Clone, Copy)]
pub struct VecDiffs<'a, T: Value> {
    data: &'a [T],
    n_pairs: usize,
    n_units: usize,
    width: usize,
}

impl<'a, T: Value> VecDiffs<'a, T> {
    /// `data` holds `n_pairs` rows of `columns` values; `columns = n_units * width`.
    pub fn new(data: &'a [T], n_pairs: usize, columns: usize, width: usize) -> Result<Self, DirectionError> {
        if n_pairs.checked_mul(columns) != Some(data.len()) {
            return Err(StatsError::BadLength {
                len: data.len(),
                n_pairs,
                n_units: columns,
            }
            .into());
        }
        if n_pairs < crate::MIN_PAIRS {
            return Err(StatsError::TooFewPairs {
                n_pairs,
                needed: crate::MIN_PAIRS,
                what: "the direction test",
            }
            .into());
        }
        if columns == 0 {
            return Err(StatsError::NoUnits.into());
        }
        if width == 0 || !columns.is_multiple_of(width) {
            return Err(DirectionError::BadWidth { columns, width });
        }
        if let Some(k) = data.iter().position(|v| !v.to_f64().is_finite()) {
            let c = k % columns;
            return Err(DirectionError::NonFinite {
                pair: k / columns,
                unit: c / width,
                column: c % width,
                value: data[k].to_f64(),
            });
        }
        Ok(VecDiffs {
            data,
            n_pairs,
            n_units: columns / width,
            width,
        })
    }

    /// Pairs (rows) of the input.
    pub fn n_pairs(&self) -> usize {
        self.n_pairs
    }

    /// Units: columns / width.
    pub fn n_units(&self) -> usize {
        self.n_units
    }

    /// Columns per unit (W).
    pub fn width(&self) -> usize {
        self.width
    }

    /// The W values of unit `u` in pair `i`.
    #[inline]
    fn vector(&self, i: usize, u: usize) -> &[T] {
        let cols = self.n_units * self.width;
        &self.data[i * cols + u * self.width..i * cols + (u + 1) * self.width]
    }
}

/// Exact enumeration or Monte Carlo draws of sign patterns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every pattern with pair 0 fixed (D is even in the signs), in index order.
    Exact,
    /// Seeded draws, the same patterns as the t null's Monte Carlo for the seed.
    MonteCarlo {
        /// The draw seed.
        seed: u64,
    },
}

/// Observed statistics and null counts over one range of patterns, one value per unit each.
#[derive(Debug, Clone, PartialEq)]
pub struct DirectionRange {
    /// D in the data's units squared.
    pub d: Vec<f64>,
    /// D / sum_i ||delta_i||^2 (0 for an all-zero unit).
    pub d_norm: Vec<f64>,
    /// Number of pairs whose held-out projection is positive.
    pub agree: Vec<u32>,
    /// Patterns of the range with D >= D_obs - tie.
    pub count_d: Vec<u64>,
    /// Patterns of the range with agreement count >= the observed one.
    pub count_agree: Vec<u64>,
    /// Patterns of the range whose max over units of D_norm reaches this unit's observed D_norm.
    pub count_max: Vec<u64>,
}

/// The observed statistics and the null over patterns (exact) or permutations (Monte Carlo)
/// `start .. end`.
pub fn null<T: Value>(v: &VecDiffs<T>, mode: Mode, start: u64, end: u64) -> Result<DirectionRange, DirectionError> {
    let limit = match mode {
        Mode::Exact => crate::sign_flip::n_patterns(v.n_pairs)?,
        Mode::MonteCarlo { .. } => u64::MAX,
    };
    if start > end || end > limit {
        return Err(StatsError::BadRange { start, end, limit }.into());
    }
    Ok(Engine::new(v).run(mode, start, end))
}

/// The observed statistics only (no pattern evaluated beyond the identity).
pub fn observed<T: Value>(v: &VecDiffs<T>) -> DirectionRange {
    Engine::new(v).run(Mode::Exact, 0, 0)
}

/// Sign lanes of every byte: `SIGNS[b][l] = -1` where bit `l` of `b` is set.
fn sign_table() -> Vec<[f64; LANES]> {
    (0..256u32)
        .map(|b| {
            let mut s = [1.0; LANES];
            for (l, v) in s.iter_mut().enumerate() {
                if (b >> l) & 1 == 1 {
                    *v = -1.0;
                }
            }
            s
        })
        .collect()
}

/// Per-unit outputs of one chunk.
#[derive(Debug, Clone, Copy, Default)]
struct UnitOut {
    d: f64,
    d_norm: f64,
    agree: u32,
    count_d: u64,
    count_agree: u64,
    /// Threshold of the FWER tally (NaN for an all-zero unit).
    bar: f64,
}

struct Engine<'a, T: Value> {
    v: &'a VecDiffs<'a, T>,
    n: usize,
    /// Lookup groups: pairs 1 + 8g .. of group g.
    n_groups: usize,
    /// Positions per n-vector (n rounded up to LANES): flipped pair i at i - 1, pair 0 at n - 1.
    n_pos: usize,
    signs: Vec<[f64; LANES]>,
}

/// Per-task work space for one unit.
struct Scratch {
    x: Vec<f64>,
    /// Columns of H over positions: `cols[p * n_pos + pos]`.
    cols: Vec<f64>,
    /// `tables[(g * 256 + e) * n_chunks + c]`: lanes `8c .. 8c + 8` of entry `e` of group `g`.
    tables: Vec<[f64; LANES]>,
}

impl<'a, T: Value> Engine<'a, T> {
    fn new(v: &'a VecDiffs<'a, T>) -> Self {
        let n = v.n_pairs;
        Engine {
            v,
            n,
            n_groups: (n - 1).div_ceil(LANES),
            n_pos: n.div_ceil(LANES) * LANES,
            signs: sign_table(),
        }
    }

    fn scratch(&self) -> Scratch {
        Scratch {
            x: vec![0.0; self.n * self.v.width],
            cols: vec![0.0; self.n * self.n_pos],
            tables: vec![[0.0; LANES]; self.n_groups * 256 * (self.n_pos / LANES)],
        }
    }

    /// The pattern bytes of `start .. end`, `n_groups` per pattern.
    fn patterns(&self, mode: Mode, start: u64, end: u64) -> Vec<u8> {
        let g = self.n_groups;
        let mut bytes = vec![0u8; (end - start) as usize * g];
        match mode {
            Mode::Exact => {
                for (k, row) in bytes.chunks_exact_mut(g).enumerate() {
                    let j = start + k as u64;
                    for (b, byte) in row.iter_mut().enumerate() {
                        *byte = (j >> (8 * b)) as u8;
                    }
                }
            }
            Mode::MonteCarlo { seed } => {
                let key = rng::stream_key(seed, Stream::SignFlip);
                for (k, row) in bytes.chunks_exact_mut(g).enumerate() {
                    monte_carlo_pattern(key, start + k as u64, self.n, row);
                }
            }
        }
        bytes
    }

    fn run(&self, mode: Mode, start: u64, end: u64) -> DirectionRange {
        let m = self.v.n_units;
        let mut out = DirectionRange {
            d: vec![0.0; m],
            d_norm: vec![0.0; m],
            agree: vec![0; m],
            count_d: vec![0; m],
            count_agree: vec![0; m],
            count_max: vec![0; m],
        };
        let mut chunk_start = start;
        loop {
            let chunk_end = end.min(chunk_start + CHUNK as u64);
            let patterns = self.patterns(mode, chunk_start, chunk_end);
            let len = (chunk_end - chunk_start) as usize;
            let mut units = vec![UnitOut::default(); m];
            let max = crate::threads::install(|| {
                units
                    .par_chunks_mut(UNIT_TASK)
                    .enumerate()
                    .fold(
                        || vec![f64::NEG_INFINITY; len],
                        |mut max, (b, outs)| {
                            let mut s = self.scratch();
                            for (k, o) in outs.iter_mut().enumerate() {
                                *o = self.unit(b * UNIT_TASK + k, &patterns, &mut s, &mut max);
                            }
                            max
                        },
                    )
                    .reduce(
                        || vec![f64::NEG_INFINITY; len],
                        |mut a, b| {
                            for (x, y) in a.iter_mut().zip(b) {
                                *x = x.max(y);
                            }
                            a
                        },
                    )
            });
            // FWER tally: per pattern, how many units' bars its max reaches.
            let mut order: Vec<usize> = (0..m).filter(|&u| !units[u].bar.is_nan()).collect();
            order.sort_by(|&a, &b| units[a].bar.total_cmp(&units[b].bar));
            let bars: Vec<f64> = order.iter().map(|&u| units[u].bar).collect();
            let mut hist = vec![0u64; bars.len() + 1];
            for &mx in &max {
                hist[bars.partition_point(|&c| c <= mx)] += 1;
            }
            let mut above = 0u64;
            for k in (0..bars.len()).rev() {
                above += hist[k + 1];
                out.count_max[order[k]] += above;
            }
            for (u, o) in units.iter().enumerate() {
                out.d[u] = o.d;
                out.d_norm[u] = o.d_norm;
                out.agree[u] = o.agree;
                out.count_d[u] += o.count_d;
                out.count_agree[u] += o.count_agree;
                if o.bar.is_nan() {
                    out.count_max[u] += len as u64;
                }
            }
            chunk_start = chunk_end;
            if chunk_start >= end {
                break;
            }
        }
        out
    }

    /// Builds unit `u`'s tables, evaluates the identity and every pattern of the chunk.
    fn unit(&self, u: usize, patterns: &[u8], s: &mut Scratch, max: &mut [f64]) -> UnitOut {
        let (n, w, np) = (self.n, self.v.width, self.n_pos);
        // Load, scaled by a power of two near the largest |value| (exact; no overflow).
        let mut big = 0.0f64;
        for i in 0..n {
            for (k, &val) in self.v.vector(i, u).iter().enumerate() {
                let x = val.to_f64();
                s.x[i * w + k] = x;
                big = big.max(x.abs());
            }
        }
        let len = patterns.len() / self.n_groups;
        if big == 0.0 {
            return UnitOut {
                count_d: len as u64,
                count_agree: len as u64,
                bar: f64::NAN,
                ..UnitOut::default()
            };
        }
        let scale = pow2_floor(big);
        for x in s.x.iter_mut() {
            *x /= scale;
        }
        // Gram columns over positions, diagonal 0; trace and the off-diagonal |H| sum.
        let pos = |i: usize| if i == 0 { n - 1 } else { i - 1 };
        s.cols.fill(0.0);
        let (mut trace, mut abs_off) = (0.0f64, 0.0f64);
        for i in 0..n {
            let xi = &s.x[i * w..(i + 1) * w];
            trace += dot(xi, xi);
            for j in 0..i {
                let xj = &s.x[j * w..(j + 1) * w];
                let g = dot(xi, xj);
                s.cols[j * np + pos(i)] = g;
                s.cols[i * np + pos(j)] = g;
                abs_off += 2.0 * g.abs();
            }
        }
        self.build_tables(s);
        let tie = TIE_REL * abs_off;
        let (d_obs, agree_obs) = self.identity(&s.tables);
        let inv_trace = 1.0 / trace;
        let (count_d, count_agree) = kernel(self, &s.tables, patterns, d_obs - tie, agree_obs, inv_trace, max);
        debug_assert_eq!(max.len(), len);
        UnitOut {
            d: d_obs * scale * scale,
            d_norm: d_obs * inv_trace,
            agree: agree_obs,
            count_d,
            count_agree,
            bar: (d_obs - tie) * inv_trace,
        }
    }

    /// `tables[g][e] = sum over the group's pairs b of (+/-) column(first + b)`, group 0 with
    /// pair 0's column added first; signs by the bits of `e`, sums built by doubling.
    fn build_tables(&self, s: &mut Scratch) {
        let (n, np) = (self.n, self.n_pos);
        for g in 0..self.n_groups {
            let first = 1 + LANES * g;
            let bits = LANES.min(n - first);
            let t = &mut s.tables.as_flattened_mut()[g * 256 * np..(g + 1) * 256 * np];
            if g == 0 {
                t[..np].copy_from_slice(&s.cols[..np]);
            } else {
                t[..np].fill(0.0);
            }
            for b in 0..bits {
                let col = &s.cols[(first + b) * np..(first + b + 1) * np];
                let half = 1usize << b;
                let (kept, flipped) = t.split_at_mut(half * np);
                for (src, dst) in kept.chunks_exact_mut(np).zip(flipped.chunks_exact_mut(np)) {
                    for ((a, d), &c) in src.iter_mut().zip(dst.iter_mut()).zip(col) {
                        let old = *a;
                        *d = old - c;
                        *a = old + c;
                    }
                }
            }
        }
    }

    /// D and the agreement count of the identity pattern (the kernel's arithmetic).
    fn identity(&self, tables: &[[f64; LANES]]) -> (f64, u32) {
        let bytes = vec![0u8; self.n_groups];
        pattern_stats::<0, 0>(self.n_groups, self.n_pos / LANES, tables, &self.signs, &bytes)
    }
}

/// `sum_k a_k b_k` in a fixed order: eight lane sums (k mod 8), then a fixed tree.
#[inline]
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0f64; LANES];
    let (ca, ra) = a.as_chunks::<LANES>();
    let (cb, rb) = b.as_chunks::<LANES>();
    for (x, y) in ca.iter().zip(cb) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    for (l, (x, y)) in ra.iter().zip(rb).enumerate() {
        acc[l] += x * y;
    }
    hsum(&acc)
}

#[inline(always)]
fn hsum(a: &[f64; LANES]) -> f64 {
    ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]))
}

/// D and agreement of one pattern: lanes of `H s` summed over the groups' table rows, signs
/// applied, then summed in a fixed order. `NG`, `NC` > 0 fix the group and chunk counts at
/// compile time (same arithmetic as the run-time counts `ng`, `nc` used when they are 0).
#[inline(always)]
fn pattern_stats<const NG: usize, const NC: usize>(
    ng: usize,
    nc: usize,
    tables: &[[f64; LANES]],
    signs: &[[f64; LANES]],
    bytes: &[u8],
) -> (f64, u32) {
    let ng = if NG > 0 { NG } else { ng };
    let nc = if NC > 0 { NC } else { nc };
    let mut acc = [0.0f64; LANES];
    let mut count = [0.0f64; LANES];
    for c in 0..nc {
        let mut v = tables[bytes[0] as usize * nc + c];
        for g in 1..ng {
            let row = &tables[(g * 256 + bytes[g] as usize) * nc + c];
            for l in 0..LANES {
                v[l] += row[l];
            }
        }
        let sg = &signs[if c < ng { bytes[c] as usize } else { 0 }];
        for l in 0..LANES {
            let y = v[l] * sg[l];
            acc[l] += y;
            count[l] += if y > 0.0 { 1.0 } else { 0.0 };
        }
    }
    // Lane counts are small integers: exact in float64, and the same whatever the order.
    (hsum(&acc), hsum(&count) as u32)
}

/// Counts and maxima of one unit over the chunk's patterns, compiled per instruction set.
fn kernel<T: Value>(
    e: &Engine<T>,
    tables: &[[f64; LANES]],
    patterns: &[u8],
    d_bar: f64,
    agree_obs: u32,
    inv_trace: f64,
    max: &mut [f64],
) -> (u64, u64) {
    let args = (tables, &e.signs[..], patterns, d_bar, agree_obs, inv_trace, max);
    let (ng, nc) = (e.n_groups, e.n_pos / LANES);
    match crate::simd::isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() checked that the CPU has these features.
        crate::simd::Isa::Avx512 => unsafe { avx512::kernel(ng, nc, args) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        crate::simd::Isa::Avx2 => unsafe { kernel_avx2(ng, nc, args) },
        _ => kernel_sizes(ng, nc, args),
    }
}

type KernelArgs<'a> = (
    &'a [[f64; LANES]],
    &'a [[f64; LANES]],
    &'a [u8],
    f64,
    u32,
    f64,
    &'a mut [f64],
);

/// The AVX-512 kernel, written with intrinsics: the same float64 operations in the same order
/// as [`pattern_stats`] (lane-wise adds over groups, one multiply by the sign, lane sums over
/// chunks, then the same fixed tree over lanes), so the same bits.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{hsum, kernel_sizes, KernelArgs, LANES};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f,avx512dq,avx512vl,popcnt")]
    pub(super) unsafe fn kernel(ng: usize, nc: usize, args: KernelArgs) -> (u64, u64) {
        match (ng, nc) {
            (1, 1) => fixed::<1, 1>(args),
            (1, 2) => fixed::<1, 2>(args),
            (2, 2) => fixed::<2, 2>(args),
            (2, 3) => fixed::<2, 3>(args),
            (3, 3) => fixed::<3, 3>(args),
            (3, 4) => fixed::<3, 4>(args),
            (4, 4) => fixed::<4, 4>(args),
            (4, 5) => fixed::<4, 5>(args),
            _ => kernel_sizes(ng, nc, args),
        }
    }

    #[inline]
    #[allow(clippy::needless_range_loop)] // c indexes the rows, the lanes and the sign byte
    #[target_feature(enable = "avx512f,avx512dq,avx512vl,popcnt")]
    unsafe fn fixed<const NG: usize, const NC: usize>(args: KernelArgs) -> (u64, u64) {
        let (tables, signs, patterns, d_bar, agree_obs, inv_trace, max) = args;
        assert!(tables.len() >= NG * 256 * NC && signs.len() >= 256);
        let tp = tables.as_ptr() as *const f64;
        let sp = signs.as_ptr() as *const f64;
        let zero = _mm512_setzero_pd();
        let (mut count_d, mut count_a) = (0u64, 0u64);
        let mut lanes = [0.0f64; LANES];
        for (bytes, mx) in patterns.chunks_exact(NG).zip(max.iter_mut()) {
            let mut rows = [0usize; NG];
            for g in 0..NG {
                rows[g] = (g * 256 + bytes[g] as usize) * NC;
            }
            let mut acc = zero;
            let mut count = 0u32;
            for c in 0..NC {
                // SAFETY: rows[g] + c < NG * 256 * NC <= tables.len() (asserted), 8 lanes a row.
                let mut v = _mm512_loadu_pd(tp.add((rows[0] + c) * LANES));
                for row in rows.iter().skip(1) {
                    v = _mm512_add_pd(v, _mm512_loadu_pd(tp.add((row + c) * LANES)));
                }
                let sb = if c < NG { bytes[c] as usize } else { 0 };
                let y = _mm512_mul_pd(v, _mm512_loadu_pd(sp.add(sb * LANES)));
                acc = _mm512_add_pd(acc, y);
                count += _mm512_cmp_pd_mask::<_CMP_GT_OQ>(y, zero).count_ones();
            }
            _mm512_storeu_pd(lanes.as_mut_ptr(), acc);
            let d = hsum(&lanes);
            count_d += (d >= d_bar) as u64;
            count_a += (count >= agree_obs) as u64;
            let dn = d * inv_trace;
            *mx = if dn > *mx { dn } else { *mx };
        }
        (count_d, count_a)
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn kernel_avx2(ng: usize, nc: usize, args: KernelArgs) -> (u64, u64) {
    kernel_sizes(ng, nc, args)
}

/// Picks a kernel with the group and chunk counts fixed (up to 33 pairs), else the general one.
#[inline(always)]
fn kernel_sizes(ng: usize, nc: usize, args: KernelArgs) -> (u64, u64) {
    match (ng, nc) {
        (1, 1) => kernel_impl::<1, 1>(ng, nc, args),
        (1, 2) => kernel_impl::<1, 2>(ng, nc, args),
        (2, 2) => kernel_impl::<2, 2>(ng, nc, args),
        (2, 3) => kernel_impl::<2, 3>(ng, nc, args),
        (3, 3) => kernel_impl::<3, 3>(ng, nc, args),
        (3, 4) => kernel_impl::<3, 4>(ng, nc, args),
        (4, 4) => kernel_impl::<4, 4>(ng, nc, args),
        (4, 5) => kernel_impl::<4, 5>(ng, nc, args),
        _ => kernel_impl::<0, 0>(ng, nc, args),
    }
}

#[inline(always)]
fn kernel_impl<const NG: usize, const NC: usize>(ng: usize, nc: usize, args: KernelArgs) -> (u64, u64) {
    let (tables, signs, patterns, d_bar, agree_obs, inv_trace, max) = args;
    let (mut count_d, mut count_a) = (0u64, 0u64);
    for (bytes, mx) in patterns.chunks_exact(ng).zip(max.iter_mut()) {
        let (d, a) = pattern_stats::<NG, NC>(ng, nc, tables, signs, bytes);
        count_d += (d >= d_bar) as u64;
        count_a += (a >= agree_obs) as u64;
        let dn = d * inv_trace;
        *mx = if dn > *mx { dn } else { *mx };
    }
    (count_d, count_a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    fn random(n: usize, m: usize, w: usize, seed: u64) -> Vec<f64> {
        let mut g = SplitMix64::new(seed);
        (0..n * m * w).map(|_| g.next_f64() * 2.0 - 0.9).collect()
    }

    /// D, agreement and every statistic of one sign vector, straight from the definitions.
    fn naive(x: &[f64], n: usize, m: usize, w: usize, u: usize, s: &[f64]) -> (f64, u32, f64) {
        let vec = |i: usize| -> Vec<f64> { (0..w).map(|k| s[i] * x[i * m * w + u * w + k]).collect() };
        let mut total = vec![0.0; w];
        let mut ss = 0.0;
        for i in 0..n {
            for (t, a) in total.iter_mut().zip(vec(i)) {
                *t += a;
                ss += a * a;
            }
        }
        let d = total.iter().map(|a| a * a).sum::<f64>() - ss;
        let mut agree = 0;
        for i in 0..n {
            let vi = vec(i);
            let dot: f64 = vi.iter().zip(&total).map(|(a, t)| a * (t - a)).sum();
            agree += (dot > 0.0) as u32;
        }
        (d, agree, d / ss)
    }

    fn signs_of(j: u64, n: usize) -> Vec<f64> {
        (0..n)
            .map(|i| if i > 0 && (j >> (i - 1)) & 1 == 1 { -1.0 } else { 1.0 })
            .collect()
    }

    #[test]
    fn observed_matches_definitions() {
        for &(n, w) in &[(3usize, 1usize), (9, 4), (17, 3), (25, 16), (40, 2)] {
            let m = 5;
            let x = random(n, m, w, n as u64);
            let v = VecDiffs::new(&x, n, m * w, w).unwrap();
            let r = observed(&v);
            for u in 0..m {
                let (d, a, dn) = naive(&x, n, m, w, u, &vec![1.0; n]);
                assert!(
                    (r.d[u] - d).abs() < 1e-10 * (1.0 + d.abs()),
                    "n {n} unit {u}: {} vs {d}",
                    r.d[u]
                );
                assert!((r.d_norm[u] - dn).abs() < 1e-10, "n {n} unit {u}");
                assert_eq!(r.agree[u], a, "n {n} unit {u}");
            }
        }
    }

    #[test]
    fn exact_matches_enumeration() {
        let (n, m, w) = (10, 4, 3);
        let x = random(n, m, w, 5);
        let v = VecDiffs::new(&x, n, m * w, w).unwrap();
        let total = 1u64 << (n - 1);
        let r = null(&v, Mode::Exact, 0, total).unwrap();
        let obs: Vec<(f64, u32, f64)> = (0..m).map(|u| naive(&x, n, m, w, u, &vec![1.0; n])).collect();
        let mut cd = vec![0u64; m];
        let mut ca = vec![0u64; m];
        let mut cm = vec![0u64; m];
        for j in 0..total {
            let s = signs_of(j, n);
            let st: Vec<(f64, u32, f64)> = (0..m).map(|u| naive(&x, n, m, w, u, &s)).collect();
            let mx = st.iter().map(|t| t.2).fold(f64::NEG_INFINITY, f64::max);
            for u in 0..m {
                cd[u] += (st[u].0 >= obs[u].0 - 1e-9) as u64;
                ca[u] += (st[u].1 >= obs[u].1) as u64;
                cm[u] += (mx >= obs[u].2 - 1e-9) as u64;
            }
        }
        assert_eq!(r.count_d, cd);
        assert_eq!(r.count_agree, ca);
        assert_eq!(r.count_max, cm);
    }

    #[test]
    fn monte_carlo_patterns_are_the_t_nulls() {
        for n in [3usize, 9, 10, 26, 70] {
            let signs = crate::sign_flip::monte_carlo_signs(n, 42, 5, 40).unwrap();
            let key = rng::stream_key(42, Stream::SignFlip);
            let g = (n - 1).div_ceil(8);
            let mut bytes = vec![0u8; g];
            for (k, row) in signs.chunks_exact(n).enumerate() {
                monte_carlo_pattern(key, 5 + k as u64, n, &mut bytes);
                for i in 1..n {
                    let bit = (bytes[(i - 1) / 8] >> ((i - 1) % 8)) & 1;
                    assert_eq!(row[i], if bit == 1 { -1 } else { 1 }, "n {n} perm {k} pair {i}");
                }
            }
        }
    }

    #[test]
    fn ranges_add_up_and_zero_units_are_inert() {
        let (n, m, w) = (20, 7, 4);
        let mut x = random(n, m, w, 9);
        for i in 0..n {
            for k in 0..w {
                x[i * m * w + 2 * w + k] = 0.0;
            }
        }
        let v = VecDiffs::new(&x, n, m * w, w).unwrap();
        let mode = Mode::MonteCarlo { seed: 3 };
        let all = null(&v, mode, 0, 40_000).unwrap();
        let a = null(&v, mode, 0, 17_000).unwrap();
        let b = null(&v, mode, 17_000, 40_000).unwrap();
        for u in 0..m {
            assert_eq!(all.count_d[u], a.count_d[u] + b.count_d[u]);
            assert_eq!(all.count_agree[u], a.count_agree[u] + b.count_agree[u]);
            assert_eq!(all.count_max[u], a.count_max[u] + b.count_max[u]);
        }
        assert_eq!((all.d[2], all.d_norm[2], all.agree[2]), (0.0, 0.0, 0));
        assert_eq!(
            (all.count_d[2], all.count_agree[2], all.count_max[2]),
            (40_000, 40_000, 40_000)
        );
    }

    #[test]
    fn float32_reads_like_float64() {
        let (n, m, w) = (8, 3, 5);
        let x: Vec<f32> = random(n, m, w, 1).iter().map(|&a| a as f32).collect();
        let x64: Vec<f64> = x.iter().map(|&a| a as f64).collect();
        let r32 = null(&VecDiffs::new(&x, n, m * w, w).unwrap(), Mode::Exact, 0, 128).unwrap();
        let r64 = null(&VecDiffs::new(&x64, n, m * w, w).unwrap(), Mode::Exact, 0, 128).unwrap();
        assert_eq!(r32, r64);
    }

    #[test]
    fn refuses_bad_input() {
        assert!(matches!(
            VecDiffs::new(&[0.0f64; 12], 3, 4, 3),
            Err(DirectionError::BadWidth { .. })
        ));
        let mut x = vec![0.0f64; 24];
        x[13] = f64::INFINITY;
        assert!(matches!(
            VecDiffs::new(&x, 3, 8, 2),
            Err(DirectionError::NonFinite {
                pair: 1,
                unit: 2,
                column: 1,
                ..
            })
        ));
        let v = VecDiffs::new(&[1.0f64; 24], 3, 8, 2).unwrap();
        assert!(null(&v, Mode::Exact, 0, 5).is_err());
    }
}
