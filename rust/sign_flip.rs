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
//! (see [`crate::paired`] for the convention). That closed form can equal a threshold exactly
//! (n = 12, k = 10 gives t = 5): such a unit is then not counted, as |t| > c is strict.
//!
//! # Precision
//! Counts are those of float64 arithmetic on the normalised sums; they can differ from another
//! float64 computation of t only for a |t| within about 1e-14 (relative) of a threshold. The max
//! |t| is converted from `S^2` with relative error about `1e-16 * (1 + t^2)`; a |t| above about
//! 1e7 (a unit with near-constant differences) comes out as +inf.

use crate::paired::ScaledDiffs;
use crate::rng::{self, Stream};
use crate::{PairDiffs, StatsError};
use rayon::prelude::*;

/// Largest n for exact enumeration: 2^32 patterns.
pub const MAX_EXACT_PAIRS: usize = 33;

/// Bits (pairs) per lookup-table group.
const GROUP_BITS: usize = 8;
/// Units are padded with all-zero units to a multiple of this (one vector of f64 lanes).
const LANES: usize = 8;
/// Units per block in exact mode (their low-byte tables, 1 MiB, about fill a Zen 4 L2; measured best).
const EXACT_UNIT_BLOCK: usize = 512;
/// High-byte values (each 256 patterns) per parallel task in exact mode.
const EXACT_H_CHUNK: u64 = 256;
/// Bytes of tables per unit block in Monte Carlo mode (sized for a 1 MiB L2).
const MC_TABLE_BUDGET: usize = 768 * 1024;
/// Thresholds counted per pass over the data (more are done in further passes).
const MAX_K: usize = 4;
/// Slack on the skip bound: far above the rounding of sums of at most 64 normalised terms.
const SKIP_MARGIN: f64 = 2e-9;

/// Thresholds for the counts: |t| > c for each `t`, |d| > c for each `d` (strict).
#[derive(Debug, Clone, Copy)]
pub struct Thresholds<'a> {
    pub t: &'a [f64],
    pub d: &'a [f64],
}

impl Thresholds<'_> {
    pub fn len(&self) -> usize {
        self.t.len() + self.d.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The null over one range of patterns or permutations.
#[derive(Debug, Clone, PartialEq)]
pub struct NullRange {
    /// Row-major `[len x (t.len() + d.len())]`: the t-threshold columns, then the d ones.
    pub counts: Vec<i64>,
    /// Max |t| over units, one per pattern.
    pub max_abs_t: Vec<f64>,
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

/// Pattern bytes (byte g = bits 8g .. 8g+8, little-endian) of Monte Carlo permutation `i`.
fn monte_carlo_pattern(key: u64, i: u64, n_pairs: usize, bytes: &mut [u8]) {
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

/// One group of pairs whose sign bits form one byte of the pattern.
#[derive(Debug, Clone, Copy)]
struct Group {
    first_pair: usize,
    bits: usize,
}

/// Normalised differences and everything derived from the thresholds.
struct Prepared {
    n: usize,
    /// Units, padded with all-zero units to a multiple of [`LANES`].
    m_pad: usize,
    /// `n x m_pad`, each unit divided by the root of its sum of squares; constant units are 0.
    xt: Vec<f64>,
    /// Group 0 holds the low bits (pairs 1..=8), the others the high bits, in order.
    groups: Vec<Group>,
    /// Units whose differences are all equal and not 0 (handled in closed form).
    constant_units: i64,
    /// Sorted distinct ratio thresholds.
    ratios: Vec<f64>,
    /// For each output column: its index in `ratios`, its threshold, whether it is a d column.
    columns: Vec<(usize, f64, bool)>,
    /// Units with `|B| + R` at or below this are skipped in exact mode.
    skip_below: f64,
}

impl Prepared {
    fn new(diffs: &PairDiffs, thresholds: Thresholds) -> Result<Self, StatsError> {
        for (&c, kind) in thresholds
            .t
            .iter()
            .map(|c| (c, "t"))
            .chain(thresholds.d.iter().map(|c| (c, "d")))
        {
            if !(c.is_finite() && c >= 0.0) {
                return Err(StatsError::BadThreshold { kind, value: c });
            }
        }
        let n = diffs.n_pairs();
        let nf = n as f64;
        let m = diffs.n_units();
        let m_pad = m.div_ceil(LANES) * LANES;
        let scaled = ScaledDiffs::new(diffs);
        let mut xt = vec![0.0f64; n * m_pad];
        let mut constant_units = 0i64;
        for u in 0..m {
            let first = scaled.pair(0)[u];
            let mut constant = true;
            let mut ss = 0.0;
            for i in 0..n {
                let x = scaled.pair(i)[u];
                constant &= x == first;
                ss += x * x;
            }
            if constant {
                constant_units += (first != 0.0) as i64;
                continue;
            }
            let norm = ss.sqrt();
            for i in 0..n {
                xt[i * m_pad + u] = scaled.pair(i)[u] / norm;
            }
        }
        let mut groups = Vec::new();
        let mut first_pair = 1;
        while first_pair < n {
            let bits = GROUP_BITS.min(n - first_pair);
            groups.push(Group { first_pair, bits });
            first_pair += bits;
        }
        if groups.is_empty() {
            groups.push(Group { first_pair: 1, bits: 0 });
        }
        let mut raw: Vec<(f64, f64, bool)> = thresholds
            .t
            .iter()
            .map(|&c| (ratio_for_t(c, nf), c, false))
            .chain(thresholds.d.iter().map(|&c| (ratio_for_d(c, nf), c, true)))
            .collect();
        let mut ratios: Vec<f64> = raw.iter().map(|r| r.0).collect();
        ratios.sort_by(f64::total_cmp);
        ratios.dedup();
        let columns = raw
            .drain(..)
            .map(|(r, c, is_d)| (ratios.iter().position(|&x| x == r).unwrap(), c, is_d))
            .collect();
        let skip_ratio = ratios
            .first()
            .copied()
            .unwrap_or(f64::INFINITY)
            .min(ratio_for_t(3.0, nf));
        Ok(Prepared {
            n,
            m_pad,
            xt,
            groups,
            constant_units,
            ratios,
            columns,
            skip_below: skip_ratio.sqrt() - SKIP_MARGIN,
        })
    }

    fn pair(&self, i: usize) -> &[f64] {
        &self.xt[i * self.m_pad..(i + 1) * self.m_pad]
    }

    fn low_bits(&self) -> usize {
        self.groups[0].bits
    }

    /// The null over `start .. end`, split into tasks on the pool, written in place.
    fn run(&self, mode: Mode, start: u64, end: u64) -> NullRange {
        let len = (end - start) as usize;
        let cols = self.columns.len();
        let mut out = NullRange {
            counts: vec![0; len * cols],
            max_abs_t: vec![0.0; len],
        };
        if len == 0 {
            return out;
        }
        // Task boundaries: exact tasks cover whole high-byte values; Monte Carlo tasks are
        // balanced over the pool. Neither changes any number.
        let task_bounds: Vec<u64> = match mode {
            Mode::Exact => {
                let span = EXACT_H_CHUNK << self.low_bits();
                let mut b = vec![start];
                let mut next = (start / span + 1) * span;
                while next < end {
                    b.push(next);
                    next += span;
                }
                b.push(end);
                b
            }
            Mode::MonteCarlo { .. } | Mode::Identity => {
                let tasks = 2 * crate::threads::current_threads() as u64;
                let size = (end - start).div_ceil(tasks).clamp(512, 16_384);
                let mut b: Vec<u64> = (start..end).step_by(size as usize).collect();
                b.push(end);
                b
            }
        };
        let mut jobs = Vec::with_capacity(task_bounds.len() - 1);
        let (mut counts, mut maxima) = (&mut out.counts[..], &mut out.max_abs_t[..]);
        for w in task_bounds.windows(2) {
            let k = (w[1] - w[0]) as usize;
            let (c_head, c_tail) = std::mem::take(&mut counts).split_at_mut(k * cols);
            let (m_head, m_tail) = std::mem::take(&mut maxima).split_at_mut(k);
            jobs.push((w[0], w[1], c_head, m_head));
            counts = c_tail;
            maxima = m_tail;
        }
        crate::threads::install(|| {
            jobs.into_par_iter().for_each(|(lo, hi, counts, maxima)| {
                self.task(mode, lo, hi, counts, maxima);
            });
        });
        out
    }

    /// One task: raw counts and max ratios over the units, then the closed-form constant units.
    fn task(&self, mode: Mode, start: u64, end: u64, counts: &mut [i64], max_abs_t: &mut [f64]) {
        let len = (end - start) as usize;
        let k_all = self.ratios.len();
        let mut raw = vec![0u32; len * k_all];
        let mut max_ratio = vec![0.0f64; len];
        let mut patterns: Vec<u8> = Vec::new();
        match mode {
            Mode::MonteCarlo { key } => {
                let g = self.groups.len();
                patterns = vec![0u8; len * g];
                for (i, bytes) in patterns.chunks_exact_mut(g).enumerate() {
                    monte_carlo_pattern(key, start + i as u64, self.n, bytes);
                }
            }
            Mode::Identity => patterns = vec![0u8; len * self.groups.len()],
            Mode::Exact => {}
        }
        // Thresholds in passes of at most MAX_K; every pass also takes the max (idempotent).
        let mut first = 0;
        loop {
            let batch = (k_all - first).min(MAX_K);
            let ratios = &self.ratios[first..first + batch];
            let mut batch_counts = vec![0u32; len * batch];
            match mode {
                Mode::Exact => kernels::exact(self, ratios, start, end, &mut batch_counts, &mut max_ratio),
                Mode::MonteCarlo { .. } | Mode::Identity => {
                    kernels::monte_carlo(self, ratios, &patterns, &mut batch_counts, &mut max_ratio)
                }
            }
            for p in 0..len {
                raw[p * k_all + first..p * k_all + first + batch]
                    .copy_from_slice(&batch_counts[p * batch..(p + 1) * batch]);
            }
            first += batch;
            if first >= k_all {
                break;
            }
        }
        let cols = self.columns.len();
        let nf = self.n as f64;
        let g = self.groups.len();
        for p in 0..len {
            let mut abs_t = abs_t_from_ratio(max_ratio[p], self.n);
            let mut constant_t = 0.0;
            if self.constant_units > 0 {
                let flipped = match mode {
                    Mode::Exact => (start + p as u64).count_ones() as i64,
                    Mode::MonteCarlo { .. } | Mode::Identity => {
                        patterns[p * g..(p + 1) * g].iter().map(|b| b.count_ones() as i64).sum()
                    }
                };
                let k = self.n as i64 - 2 * flipped;
                constant_t = if k.unsigned_abs() as usize == self.n {
                    f64::INFINITY
                } else {
                    let k2 = (k * k) as f64;
                    ((nf - 1.0) * k2 / (nf * nf - k2)).sqrt()
                };
                abs_t = abs_t.max(constant_t);
            }
            max_abs_t[p] = abs_t;
            for (c, &(idx, threshold, is_d)) in self.columns.iter().enumerate() {
                let mut v = raw[p * k_all + idx] as i64;
                if self.constant_units > 0 {
                    let stat = if is_d { constant_t / nf.sqrt() } else { constant_t };
                    if stat > threshold {
                        v += self.constant_units;
                    }
                }
                counts[p * cols + c] = v;
            }
        }
    }
}

/// Partial sums of the `bits` pairs from `first_pair`, for units `u0 .. u0 + w`: entry `e` is
/// the sum, in pair order, of those pairs' values with pair `first_pair + b` negated where bit
/// `b` of `e` is set. Byte-major layout: `table[e * w + u]`.
#[inline(always)]
fn build_byte_major(prep: &Prepared, first_pair: usize, bits: usize, u0: usize, w: usize, table: &mut [f64]) {
    if bits == 0 {
        table[..w].fill(0.0);
        return;
    }
    let x = &prep.pair(first_pair)[u0..u0 + w];
    for u in 0..w {
        table[u] = x[u];
        table[w + u] = -x[u];
    }
    for b in 1..bits {
        let x = &prep.pair(first_pair + b)[u0..u0 + w];
        let half = 1usize << b;
        let (kept, flipped) = table.split_at_mut(half * w);
        for (src, dst) in kept.chunks_exact_mut(w).zip(flipped.chunks_exact_mut(w)) {
            for ((s, d), &v) in src.iter_mut().zip(dst.iter_mut()).zip(x) {
                let old = *s;
                *d = old - v;
                *s = old + v;
            }
        }
    }
}

/// The same sums, unit-major: `table[u * stride + e]` (same arithmetic, so the same bits).
#[inline(always)]
fn build_unit_major(
    prep: &Prepared,
    first_pair: usize,
    bits: usize,
    u0: usize,
    w: usize,
    stride: usize,
    table: &mut [f64],
) {
    for (u, t) in table.chunks_exact_mut(stride).take(w).enumerate() {
        if bits == 0 {
            t[0] = 0.0;
            continue;
        }
        let v = prep.pair(first_pair)[u0 + u];
        t[0] = v;
        t[1] = -v;
        for b in 1..bits {
            let v = prep.pair(first_pair + b)[u0 + u];
            let half = 1usize << b;
            let (kept, flipped) = t.split_at_mut(half);
            for (s, d) in kept.iter_mut().zip(&mut flipped[..half]) {
                let old = *s;
                *d = old - v;
                *s = old + v;
            }
        }
    }
}

/// Adds pair 0 into a byte-major table (`table[e] = x_0 + table[e]`): the first addition of
/// every S, done once per entry instead of once per pattern, with the same bits.
#[inline(always)]
fn fold_pair0(prep: &Prepared, bits: usize, u0: usize, w: usize, table: &mut [f64]) {
    let x0 = &prep.pair(0)[u0..u0 + w];
    for row in table[..(1usize << bits) * w].chunks_exact_mut(w) {
        for (t, &x) in row.iter_mut().zip(x0) {
            *t += x; // IEEE addition commutes: the same bits as x_0 + t
        }
    }
}

/// The hot loops, compiled once per instruction set and chosen at run time ([`crate::simd`]).
mod kernels {
    use super::*;
    #[cfg(target_arch = "x86_64")]
    use std::arch::x86_64::*;

    use crate::simd::{isa, Isa};

    /// Instruction-set tags for the generic kernels.
    const BASELINE: u8 = 0;
    const AVX2: u8 = 1;
    const AVX512: u8 = 2;

    /// Calls `$f::<G.., K>` with K (the last generic) = the number of thresholds, 0 ..= MAX_K.
    macro_rules! with_k {
        ($k:expr, $f:ident::<$($g:tt),*>, ($($arg:expr),*)) => {
            match $k {
                0 => $f::<$($g),*, 0>($($arg),*),
                1 => $f::<$($g),*, 1>($($arg),*),
                2 => $f::<$($g),*, 2>($($arg),*),
                3 => $f::<$($g),*, 3>($($arg),*),
                _ => $f::<$($g),*, 4>($($arg),*),
            }
        };
    }

    pub(super) fn exact(
        prep: &Prepared,
        ratios: &[f64],
        start: u64,
        end: u64,
        counts: &mut [u32],
        max_ratio: &mut [f64],
    ) {
        match isa() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: isa() checked that the CPU has these features.
            Isa::Avx512 => unsafe { exact_avx512(prep, ratios, start, end, counts, max_ratio) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Isa::Avx2 => unsafe { exact_avx2(prep, ratios, start, end, counts, max_ratio) },
            _ => with_k!(
                ratios.len(),
                exact_impl::<BASELINE, 8>,
                (prep, ratios, start, end, counts, max_ratio)
            ),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512dq,avx512vl,popcnt")]
    unsafe fn exact_avx512(
        prep: &Prepared,
        ratios: &[f64],
        start: u64,
        end: u64,
        counts: &mut [u32],
        max_ratio: &mut [f64],
    ) {
        with_k!(
            ratios.len(),
            exact_impl::<AVX512, 32>,
            (prep, ratios, start, end, counts, max_ratio)
        )
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,popcnt")]
    unsafe fn exact_avx2(
        prep: &Prepared,
        ratios: &[f64],
        start: u64,
        end: u64,
        counts: &mut [u32],
        max_ratio: &mut [f64],
    ) {
        with_k!(
            ratios.len(),
            exact_impl::<AVX2, 8>,
            (prep, ratios, start, end, counts, max_ratio)
        )
    }

    pub(super) fn monte_carlo(
        prep: &Prepared,
        ratios: &[f64],
        patterns: &[u8],
        counts: &mut [u32],
        max_ratio: &mut [f64],
    ) {
        match isa() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: isa() checked that the CPU has these features.
            Isa::Avx512 => unsafe { mc_avx512(prep, ratios, patterns, counts, max_ratio) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Isa::Avx2 => unsafe { mc_avx2(prep, ratios, patterns, counts, max_ratio) },
            _ => mc_groups::<BASELINE>(prep, ratios, patterns, counts, max_ratio),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512dq,avx512vl,popcnt")]
    unsafe fn mc_avx512(prep: &Prepared, ratios: &[f64], patterns: &[u8], counts: &mut [u32], max_ratio: &mut [f64]) {
        mc_groups::<AVX512>(prep, ratios, patterns, counts, max_ratio)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,popcnt")]
    unsafe fn mc_avx2(prep: &Prepared, ratios: &[f64], patterns: &[u8], counts: &mut [u32], max_ratio: &mut [f64]) {
        mc_groups::<AVX2>(prep, ratios, patterns, counts, max_ratio)
    }

    /// Picks the Monte Carlo kernel for the number of groups (1 to 4 unrolled, more looped).
    #[inline(always)]
    fn mc_groups<const V: u8>(
        prep: &Prepared,
        ratios: &[f64],
        patterns: &[u8],
        counts: &mut [u32],
        max_ratio: &mut [f64],
    ) {
        let k = ratios.len();
        match prep.groups.len() {
            1 => with_k!(k, mc_impl::<V, 1>, (prep, ratios, patterns, counts, max_ratio)),
            2 => with_k!(k, mc_impl::<V, 2>, (prep, ratios, patterns, counts, max_ratio)),
            3 => with_k!(k, mc_impl::<V, 3>, (prep, ratios, patterns, counts, max_ratio)),
            4 => with_k!(k, mc_impl::<V, 4>, (prep, ratios, patterns, counts, max_ratio)),
            _ => with_k!(k, mc_impl::<V, 0>, (prep, ratios, patterns, counts, max_ratio)),
        }
    }

    /// Lookup tables of one block of units for exact mode.
    struct BlockTables {
        /// Unit-major sums of the low group: `low[u * stride + a]`, zero past 2^bits.
        low: Vec<f64>,
        stride: usize,
        /// Unit-major sums of the low group's top pairs (those choosing the leaf), per leaf.
        leaf_offset: Vec<f64>,
        n_leaf: usize,
        leaf_bits: usize,
        /// Sum of |x| over the pairs swept inside a leaf, and over the whole low group.
        leaf_radius: Vec<f64>,
        radius: Vec<f64>,
        /// Byte-major sums of each high group.
        high: Vec<Vec<f64>>,
    }

    impl BlockTables {
        fn new(prep: &Prepared, ub: usize, stride: usize, leaf_bits: usize) -> Self {
            let low = prep.groups[0];
            let n_leaf = 1usize << (low.bits - leaf_bits);
            BlockTables {
                low: vec![0.0; ub * stride],
                stride,
                leaf_offset: vec![0.0; ub * n_leaf],
                n_leaf,
                leaf_bits,
                leaf_radius: vec![0.0; ub],
                radius: vec![0.0; ub],
                high: prep.groups[1..]
                    .iter()
                    .map(|g| vec![0.0; (1usize << g.bits) * ub])
                    .collect(),
            }
        }

        #[inline(always)]
        fn build(&mut self, prep: &Prepared, u0: usize, w: usize) {
            let low = prep.groups[0];
            build_unit_major(prep, low.first_pair, low.bits, u0, w, self.stride, &mut self.low);
            let top_first = low.first_pair + self.leaf_bits;
            let top_bits = low.bits - self.leaf_bits;
            build_unit_major(prep, top_first, top_bits, u0, w, self.n_leaf, &mut self.leaf_offset);
            self.leaf_radius[..w].fill(0.0);
            for b in 0..self.leaf_bits {
                for (r, &v) in self.leaf_radius[..w]
                    .iter_mut()
                    .zip(&prep.pair(low.first_pair + b)[u0..u0 + w])
                {
                    *r += v.abs();
                }
            }
            self.radius[..w].copy_from_slice(&self.leaf_radius[..w]);
            for b in 0..top_bits {
                for (r, &v) in self.radius[..w].iter_mut().zip(&prep.pair(top_first + b)[u0..u0 + w]) {
                    *r += v.abs();
                }
            }
            for (g, table) in prep.groups[1..].iter().zip(self.high.iter_mut()) {
                build_byte_major(prep, g.first_pair, g.bits, u0, w, table);
            }
            if let (Some(g), Some(table)) = (prep.groups.get(1), self.high.first_mut()) {
                fold_pair0(prep, g.bits, u0, w, table);
            }
        }

        /// B for high-byte value `h`: pair 0 plus the high groups, added in group order (pair 0
        /// is already folded into the first high table).
        #[inline(always)]
        fn base(&self, prep: &Prepared, u0: usize, w: usize, h: u64, out: &mut [f64]) {
            let byte = |gi: usize, g: &Group| ((h >> (GROUP_BITS * gi)) & ((1u64 << g.bits) - 1)) as usize;
            match self.high.first() {
                None => out[..w].copy_from_slice(&prep.pair(0)[u0..u0 + w]),
                Some(table) => {
                    let b = byte(0, &prep.groups[1]);
                    out[..w].copy_from_slice(&table[b * w..(b + 1) * w]);
                }
            }
            for (gi, (g, table)) in prep.groups[1..].iter().zip(&self.high).enumerate().skip(1) {
                let b = byte(gi, g);
                for (o, &v) in out[..w].iter_mut().zip(&table[b * w..(b + 1) * w]) {
                    *o += v;
                }
            }
        }
    }

    #[inline(always)]
    fn max_if_skipped(bound: f64, reach: f64, skip: f64) -> f64 {
        let kept = if reach <= skip { reach } else { f64::NEG_INFINITY };
        if kept > bound {
            kept
        } else {
            bound
        }
    }

    /// Exact mode over patterns `start .. end` (one task).
    ///
    /// Round 1: unit blocks outside, high-byte values `h` inside. Units whose `|B| + R` cannot
    /// reach the skip level are dropped for the whole `h`; the rest are filtered again per leaf
    /// (`A` consecutive low-byte patterns) with `|B + P_leaf| + R_leaf`, and each leaf is swept
    /// over its own units, one lane per pattern. Round 2 revisits the (block, h) whose skipped
    /// units could hold a pattern's max (only when no unit reached the skip level there).
    #[inline(always)]
    fn exact_impl<const V: u8, const A: usize, const K: usize>(
        prep: &Prepared,
        ratios: &[f64],
        start: u64,
        end: u64,
        counts: &mut [u32],
        max_ratio: &mut [f64],
    ) {
        let thr: [f64; K] = ratios.try_into().unwrap();
        let low = prep.groups[0];
        let n_low = 1usize << low.bits;
        let stride = n_low.max(A);
        let leaf_bits = (A.trailing_zeros() as usize).min(low.bits);
        let ub = EXACT_UNIT_BLOCK.min(prep.m_pad);
        let n_blocks = prep.m_pad.div_ceil(ub);
        let h_first = start >> low.bits;
        let n_h = ((((end - 1) >> low.bits) + 1) - h_first) as usize;
        let skip = prep.skip_below;
        let mut tables = BlockTables::new(prep, ub, stride, leaf_bits);
        let n_leaf = tables.n_leaf;
        let mut base = vec![0.0f64; ub];
        let mut reach = vec![0.0f64; ub];
        let mut h_units = vec![0u32; ub];
        let mut h_base = vec![0.0f64; ub];
        let mut leaf_units = vec![0u32; n_leaf * ub];
        let mut leaf_base = vec![0.0f64; n_leaf * ub];
        let mut leaf_len = vec![0usize; n_leaf];
        let mut leaf_reach = vec![0.0f64; n_leaf];
        let mut leaf_bound = vec![0.0f64; n_leaf];
        // Per (block, h): the largest bound on |S| among the units skipped there (-inf: none).
        let mut skipped = vec![f64::NEG_INFINITY; n_blocks * n_h];
        let a_range = |h: u64| {
            let j_base = h << low.bits;
            (
                start.saturating_sub(j_base) as usize,
                ((end - j_base) as usize).min(n_low),
            )
        };

        for (bi, u0) in (0..prep.m_pad).step_by(ub).enumerate() {
            let w = ub.min(prep.m_pad - u0);
            tables.build(prep, u0, w);
            for hi in 0..n_h {
                let h = h_first + hi as u64;
                tables.base(prep, u0, w, h, &mut base);
                // Level 1, whole h: |B| + R against the skip level (branch-free).
                let mut bound_lanes = [f64::NEG_INFINITY; LANES];
                for ((r, b), rad) in reach[..w]
                    .chunks_exact_mut(LANES)
                    .zip(base[..w].chunks_exact(LANES))
                    .zip(tables.radius[..w].chunks_exact(LANES))
                {
                    for l in 0..LANES {
                        r[l] = b[l].abs() + rad[l];
                        bound_lanes[l] = max_if_skipped(bound_lanes[l], r[l], skip);
                    }
                }
                let mut h_len = 0;
                for u in 0..w {
                    h_units[h_len] = u as u32;
                    h_base[h_len] = base[u];
                    h_len += (reach[u] > skip) as usize;
                }
                // Level 2, per leaf: |B + P_leaf| + R_leaf.
                leaf_len.fill(0);
                leaf_bound.fill(f64::NEG_INFINITY);
                for (&u, &b) in h_units[..h_len].iter().zip(&h_base[..h_len]) {
                    let u = u as usize;
                    let offsets = &tables.leaf_offset[u * n_leaf..(u + 1) * n_leaf];
                    let radius = tables.leaf_radius[u];
                    for ((r, bound), &offset) in leaf_reach.iter_mut().zip(leaf_bound.iter_mut()).zip(offsets) {
                        *r = (b + offset).abs() + radius;
                        *bound = max_if_skipped(*bound, *r, skip);
                    }
                    for (q, (len, &r)) in leaf_len.iter_mut().zip(&leaf_reach).enumerate() {
                        let at = q * ub + *len;
                        leaf_units[at] = u as u32;
                        leaf_base[at] = b;
                        *len += (r > skip) as usize;
                    }
                }
                let bound = bound_lanes
                    .iter()
                    .chain(&leaf_bound)
                    .fold(f64::NEG_INFINITY, |a, &b| a.max(b));
                skipped[bi * n_h + hi] = bound;
                let (a_from, a_to) = a_range(h);
                let j_base = h << low.bits;
                for (q, &len) in leaf_len.iter().enumerate() {
                    let a0 = q * A;
                    if a0 + A <= a_from || a0 >= a_to {
                        continue;
                    }
                    let units = &leaf_units[q * ub..q * ub + len];
                    let bases = &leaf_base[q * ub..q * ub + len];
                    let (mx, cnt) = sweep::<V, K, A>(units, bases, &tables.low, stride, a0, &thr);
                    for l in a_from.max(a0) - a0..(a_to - a0).min(A) {
                        let p = (j_base + (a0 + l) as u64 - start) as usize;
                        for k in 0..K {
                            counts[p * K + k] += cnt[k][l] as u32;
                        }
                        if mx[l] > max_ratio[p] {
                            max_ratio[p] = mx[l];
                        }
                    }
                }
            }
        }

        // Round 2: the lowest max over each h's patterns, against each block's skipped bound.
        let mut floor = vec![f64::INFINITY; n_h];
        for (p, &r) in max_ratio.iter().enumerate() {
            let hi = (((start + p as u64) >> low.bits) - h_first) as usize;
            if r < floor[hi] {
                floor[hi] = r;
            }
        }
        let reach_sq = |bound: f64| {
            let lim = bound + SKIP_MARGIN;
            lim * lim
        };
        for (bi, u0) in (0..prep.m_pad).step_by(ub).enumerate() {
            let needs = |hi: usize| {
                let bound = skipped[bi * n_h + hi];
                bound >= 0.0 && reach_sq(bound) > floor[hi]
            };
            if !(0..n_h).any(needs) {
                continue;
            }
            let w = ub.min(prep.m_pad - u0);
            tables.build(prep, u0, w);
            for hi in (0..n_h).filter(|&hi| needs(hi)) {
                let h = h_first + hi as u64;
                tables.base(prep, u0, w, h, &mut base);
                let lim = reach_sq(skipped[bi * n_h + hi]);
                let (a_from, a_to) = a_range(h);
                for a in a_from..a_to {
                    let p = ((h << low.bits) + a as u64 - start) as usize;
                    let mut best = max_ratio[p];
                    if best >= lim {
                        continue;
                    }
                    for (u, (&b, &radius)) in base[..w].iter().zip(&tables.radius[..w]).enumerate() {
                        let r = b.abs() + radius + SKIP_MARGIN;
                        if r * r > best {
                            let s = b + tables.low[u * stride + a];
                            let sq = s * s;
                            if sq > best {
                                best = sq;
                            }
                        }
                    }
                    max_ratio[p] = best;
                }
            }
        }
    }

    /// The `A` patterns of one leaf (from `a0`) over its units: max S^2 and counts above each
    /// ratio threshold, one lane per pattern.
    #[inline(always)]
    fn sweep<const V: u8, const K: usize, const A: usize>(
        units: &[u32],
        bases: &[f64],
        low: &[f64],
        stride: usize,
        a0: usize,
        thr: &[f64; K],
    ) -> ([f64; A], [[u64; A]; K]) {
        #[cfg(target_arch = "x86_64")]
        if V == AVX512 && A == 32 {
            // SAFETY: V == AVX512 only inside functions compiled for (and run on) AVX-512.
            return unsafe { sweep_avx512::<K, A>(units, bases, low, stride, a0, thr) };
        }
        let mut mx = [0.0f64; A];
        let mut cnt = [[0u64; A]; K];
        for (&u, &b) in units.iter().zip(bases) {
            let at = u as usize * stride + a0;
            let row: &[f64; A] = low[at..at + A].try_into().unwrap();
            let mut sq = [0.0f64; A];
            for l in 0..A {
                let s = b + row[l];
                sq[l] = s * s;
            }
            for l in 0..A {
                mx[l] = if sq[l] > mx[l] { sq[l] } else { mx[l] };
            }
            for k in 0..K {
                for l in 0..A {
                    cnt[k][l] = if sq[l] > thr[k] { cnt[k][l] + 1 } else { cnt[k][l] };
                }
            }
        }
        (mx, cnt)
    }

    /// [`sweep`] for 32 patterns in four 512-bit registers, counting with masked adds.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512dq,avx512vl")]
    #[inline]
    unsafe fn sweep_avx512<const K: usize, const A: usize>(
        units: &[u32],
        bases: &[f64],
        low: &[f64],
        stride: usize,
        a0: usize,
        thr: &[f64; K],
    ) -> ([f64; A], [[u64; A]; K]) {
        assert!(A == 32);
        let mut mx = [_mm512_setzero_pd(); 4];
        let mut cnt = [[_mm512_setzero_si512(); 4]; K];
        let t: [__m512d; K] = std::array::from_fn(|k| _mm512_set1_pd(thr[k]));
        let one = _mm512_set1_epi64(1);
        for (&u, &b) in units.iter().zip(bases) {
            let at = u as usize * stride + a0;
            let row = &low[at..at + 32];
            let bv = _mm512_set1_pd(b);
            for v in 0..4 {
                // SAFETY: row holds 32 values, v * 8 + 8 <= 32.
                let s = _mm512_add_pd(bv, unsafe { _mm512_loadu_pd(row.as_ptr().add(8 * v)) });
                let sq = _mm512_mul_pd(s, s);
                mx[v] = _mm512_max_pd(sq, mx[v]);
                for k in 0..K {
                    let above = _mm512_cmp_pd_mask::<_CMP_GT_OQ>(sq, t[k]);
                    cnt[k][v] = _mm512_mask_add_epi64(cnt[k][v], above, cnt[k][v], one);
                }
            }
        }
        let mut mx_out = [0.0f64; A];
        let mut cnt_out = [[0u64; A]; K];
        for v in 0..4 {
            // SAFETY: both outputs hold A = 32 values.
            unsafe {
                _mm512_storeu_pd(mx_out.as_mut_ptr().add(8 * v), mx[v]);
                for k in 0..K {
                    _mm512_storeu_si512(cnt_out[k].as_mut_ptr().add(8 * v).cast(), cnt[k][v]);
                }
            }
        }
        (mx_out, cnt_out)
    }

    /// Monte Carlo over the given patterns (one task): unit blocks outside, permutations inside,
    /// one lane per unit. `NG` is the number of groups (0: any, looped at run time).
    #[inline(always)]
    fn mc_impl<const V: u8, const NG: usize, const K: usize>(
        prep: &Prepared,
        ratios: &[f64],
        patterns: &[u8],
        counts: &mut [u32],
        max_ratio: &mut [f64],
    ) {
        let thr: [f64; K] = ratios.try_into().unwrap();
        let g = prep.groups.len();
        debug_assert!(NG == 0 || NG == g);
        let ub = (MC_TABLE_BUDGET / (8 * 256 * g) / LANES * LANES)
            .clamp(LANES, 512)
            .min(prep.m_pad);
        let plane = 256 * ub;
        let mut tables = vec![0.0f64; g * plane];
        let mut offsets = vec![0usize; g];
        for u0 in (0..prep.m_pad).step_by(ub) {
            let w = ub.min(prep.m_pad - u0);
            let lanes = w / LANES;
            for (gi, group) in prep.groups.iter().enumerate() {
                let t = &mut tables[gi * plane..(gi + 1) * plane];
                build_byte_major(prep, group.first_pair, group.bits, u0, w, t);
            }
            // Pair 0 goes into the first table added to it: S = ((x_0 + G_1) + G_2 ...) + G_0.
            let first = if g > 1 { 1 } else { 0 };
            fold_pair0(
                prep,
                prep.groups[first].bits,
                u0,
                w,
                &mut tables[first * plane..(first + 1) * plane],
            );
            for (p, bytes) in patterns.chunks_exact(g).enumerate() {
                for gi in 0..g {
                    offsets[gi] = gi * plane + bytes[gi] as usize * w;
                }
                let row = |gi: usize| &tables[offsets[gi]..offsets[gi] + w].as_chunks::<LANES>().0[..lanes];
                let low = row(0);
                let mut mx = [0.0f64; LANES];
                let mut cnt = [0u32; K];
                if g == 1 {
                    for s in low {
                        accumulate::<V, K>(s, &thr, &mut mx, &mut cnt);
                    }
                } else if NG > 0 {
                    let highs: [&[[f64; LANES]]; 4] =
                        std::array::from_fn(|i| if i + 1 < NG { row(i + 1) } else { low });
                    for c in 0..lanes {
                        let mut s = highs[0][c];
                        for high in highs.iter().take(NG - 1).skip(1) {
                            for l in 0..LANES {
                                s[l] += high[c][l];
                            }
                        }
                        for l in 0..LANES {
                            s[l] += low[c][l];
                        }
                        accumulate::<V, K>(&s, &thr, &mut mx, &mut cnt);
                    }
                } else {
                    for (c, low_c) in low.iter().enumerate() {
                        let mut s = row(1)[c];
                        for gi in 2..g {
                            let high = &row(gi)[c];
                            for l in 0..LANES {
                                s[l] += high[l];
                            }
                        }
                        for l in 0..LANES {
                            s[l] += low_c[l];
                        }
                        accumulate::<V, K>(&s, &thr, &mut mx, &mut cnt);
                    }
                }
                let mut best = max_ratio[p];
                for &v in &mx {
                    best = if v > best { v } else { best };
                }
                max_ratio[p] = best;
                for k in 0..K {
                    counts[p * K + k] += cnt[k];
                }
            }
        }
    }

    /// One vector of units' S: running max of S^2, counts above each threshold.
    #[inline(always)]
    fn accumulate<const V: u8, const K: usize>(
        s: &[f64; LANES],
        thr: &[f64; K],
        mx: &mut [f64; LANES],
        cnt: &mut [u32; K],
    ) {
        let mut sq = [0.0f64; LANES];
        for l in 0..LANES {
            sq[l] = s[l] * s[l];
        }
        for l in 0..LANES {
            mx[l] = if sq[l] > mx[l] { sq[l] } else { mx[l] };
        }
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: V names the features of the function this is compiled (and run) in.
            if V == AVX512 {
                return unsafe { count_avx512(&sq, thr, cnt) };
            }
            if V == AVX2 {
                return unsafe { count_avx2(&sq, thr, cnt) };
            }
        }
        for k in 0..K {
            cnt[k] += sq.iter().filter(|&&v| v > thr[k]).count() as u32;
        }
    }

    /// Counts of lanes above each threshold: one compare to a mask register, then popcount.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512dq,avx512vl,popcnt")]
    #[inline]
    unsafe fn count_avx512<const K: usize>(sq: &[f64; LANES], thr: &[f64; K], cnt: &mut [u32; K]) {
        // SAFETY: sq holds 8 values.
        let v = unsafe { _mm512_loadu_pd(sq.as_ptr()) };
        for k in 0..K {
            let above = _mm512_cmp_pd_mask::<_CMP_GT_OQ>(v, _mm512_set1_pd(thr[k]));
            cnt[k] += (above as u32).count_ones();
        }
    }

    /// The same with two 256-bit compares and sign-bit masks.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,popcnt")]
    #[inline]
    unsafe fn count_avx2<const K: usize>(sq: &[f64; LANES], thr: &[f64; K], cnt: &mut [u32; K]) {
        // SAFETY: sq holds 8 values.
        let (lo, hi) = unsafe { (_mm256_loadu_pd(sq.as_ptr()), _mm256_loadu_pd(sq.as_ptr().add(4))) };
        for k in 0..K {
            let t = _mm256_set1_pd(thr[k]);
            let bits = _mm256_movemask_pd(_mm256_cmp_pd::<_CMP_GT_OQ>(lo, t))
                | (_mm256_movemask_pd(_mm256_cmp_pd::<_CMP_GT_OQ>(hi, t)) << 4);
            cnt[k] += (bits as u32).count_ones();
        }
    }
}

/// Which compiled variant of the hot loops this process uses ("avx512", "avx2", "baseline").
pub fn simd_variant() -> &'static str {
    crate::simd::isa().name()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A float64 brute force written differently: flip the raw differences, two-pass t.
    fn brute(data: &[f64], n: usize, m: usize, signs: &[i8], t_thr: &[f64], d_thr: &[f64]) -> (Vec<i64>, f64) {
        let nf = n as f64;
        let mut counts = vec![0i64; t_thr.len() + d_thr.len()];
        let mut max_t = 0.0f64;
        for u in 0..m {
            let y: Vec<f64> = (0..n).map(|i| data[i * m + u] * signs[i] as f64).collect();
            let mean = y.iter().sum::<f64>() / nf;
            let t = if y.iter().all(|&v| v == y[0]) {
                if y[0] == 0.0 {
                    0.0
                } else {
                    f64::INFINITY
                }
            } else {
                let sd = (y.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (nf - 1.0)).sqrt();
                (mean / (sd / nf.sqrt())).abs()
            };
            max_t = max_t.max(t);
            for (c, &thr) in t_thr.iter().enumerate() {
                counts[c] += (t > thr) as i64;
            }
            for (c, &thr) in d_thr.iter().enumerate() {
                counts[t_thr.len() + c] += (t / nf.sqrt() > thr) as i64;
            }
        }
        (counts, max_t)
    }

    fn exact_signs(n: usize, j: u64) -> Vec<i8> {
        (0..n)
            .map(|i| if i > 0 && (j >> (i - 1)) & 1 == 1 { -1 } else { 1 })
            .collect()
    }

    fn random_data(n: usize, m: usize, seed: u64) -> Vec<f64> {
        let mut g = rng::SplitMix64::new(seed);
        (0..n * m)
            .map(|k| {
                // Roughly normal, with a per-unit shift so that some units have large |t|.
                let z: f64 = (0..4).map(|_| g.next_f64()).sum::<f64>() - 2.0;
                z + 0.9 * ((k % m) % 5) as f64 / 5.0
            })
            .collect()
    }

    fn close(a: f64, b: f64) -> bool {
        a == b || (a - b).abs() <= 1e-10 * a.abs().max(b.abs())
    }

    const T: [f64; 3] = [2.0, 3.0, 5.0];
    const D: [f64; 2] = [0.8, 0.5];

    #[test]
    fn exact_matches_brute_force() {
        // (11, 3): weak units, so most patterns have no unit near a threshold (the deferred max pass).
        for &(n, m) in &[(3usize, 5usize), (6, 9), (10, 37), (11, 300), (11, 3), (14, 2)] {
            let data = random_data(n, m, n as u64);
            let diffs = PairDiffs::new(&data, n, m).unwrap();
            let total = n_patterns(n).unwrap();
            let got = exact(&diffs, Thresholds { t: &T, d: &D }, 0, total).unwrap();
            for j in 0..total {
                let (c, mx) = brute(&data, n, m, &exact_signs(n, j), &T, &D);
                assert_eq!(&got.counts[j as usize * 5..j as usize * 5 + 5], &c[..], "n={n} j={j}");
                assert!(
                    close(got.max_abs_t[j as usize], mx),
                    "n={n} j={j}: {} vs {mx}",
                    got.max_abs_t[j as usize]
                );
            }
        }
    }

    #[test]
    fn monte_carlo_matches_brute_force_with_its_own_signs() {
        // n = 41: five groups of pairs, the kernel that loops over groups at run time.
        for &(n, m) in &[(4usize, 17usize), (13, 200), (41, 30)] {
            let data = random_data(n, m, 5);
            let diffs = PairDiffs::new(&data, n, m).unwrap();
            let got = monte_carlo(&diffs, Thresholds { t: &T, d: &D }, 42, 100, 400).unwrap();
            let signs = monte_carlo_signs(n, 42, 100, 400).unwrap();
            for p in 0..300 {
                let (c, mx) = brute(&data, n, m, &signs[p * n..(p + 1) * n], &T, &D);
                assert_eq!(&got.counts[p * 5..p * 5 + 5], &c[..], "n={n} perm {p}");
                assert!(close(got.max_abs_t[p], mx));
            }
        }
    }

    #[test]
    fn monte_carlo_and_exact_agree_bit_for_bit_on_the_same_pattern() {
        for &(n, m) in &[(7usize, 40usize), (12, 70), (20, 33)] {
            let data = random_data(n, m, 3 + n as u64);
            let diffs = PairDiffs::new(&data, n, m).unwrap();
            let thr = Thresholds { t: &T, d: &D };
            let mc = monte_carlo(&diffs, thr, 8, 0, 200).unwrap();
            let signs = monte_carlo_signs(n, 8, 0, 200).unwrap();
            for p in 0..200 {
                let j: u64 = (1..n).map(|i| ((signs[p * n + i] == -1) as u64) << (i - 1)).sum();
                let ex = exact(&diffs, thr, j, j + 1).unwrap();
                assert_eq!(ex.max_abs_t[0].to_bits(), mc.max_abs_t[p].to_bits(), "n={n} p={p}");
                assert_eq!(&ex.counts[..], &mc.counts[p * 5..p * 5 + 5]);
            }
        }
    }

    #[test]
    fn identity_is_exact_pattern_zero_bit_for_bit() {
        // Includes n = 41 (beyond exact enumeration: checked against the brute force) and a
        // constant unit (closed form).
        for &(n, m) in &[(5usize, 13usize), (10, 40), (25, 70), (41, 30)] {
            let mut data = random_data(n, m, 11 + n as u64);
            for i in 0..n {
                data[i * m] = 0.25;
            }
            let diffs = PairDiffs::new(&data, n, m).unwrap();
            let thr = Thresholds { t: &T, d: &D };
            let id = identity(&diffs, thr).unwrap();
            if n <= MAX_EXACT_PAIRS {
                let ex = exact(&diffs, thr, 0, 1).unwrap();
                assert_eq!(ex.max_abs_t[0].to_bits(), id.max_abs_t[0].to_bits(), "n={n}");
                assert_eq!(ex.counts, id.counts, "n={n}");
            }
            let (c, mx) = brute(&data, n, m, &vec![1i8; n], &T, &D);
            assert_eq!(id.counts, c, "n={n}");
            assert!(close(id.max_abs_t[0], mx), "n={n}");
        }
    }

    #[test]
    fn ranges_and_chunks_do_not_change_results() {
        let (n, m) = (12, 90);
        let data = random_data(n, m, 9);
        let diffs = PairDiffs::new(&data, n, m).unwrap();
        let thr = Thresholds { t: &T, d: &D };
        let whole = exact(&diffs, thr, 0, 2048).unwrap();
        let a = exact(&diffs, thr, 0, 700).unwrap();
        let b = exact(&diffs, thr, 700, 2048).unwrap();
        assert_eq!([a.counts, b.counts].concat(), whole.counts);
        assert_eq!([a.max_abs_t, b.max_abs_t].concat(), whole.max_abs_t);
        let mc = monte_carlo(&diffs, thr, 1, 0, 3000).unwrap();
        let mc2 = monte_carlo(&diffs, thr, 1, 1234, 3000).unwrap();
        assert_eq!(&mc.counts[1234 * 5..], &mc2.counts[..]);
        assert_eq!(&mc.max_abs_t[1234..], &mc2.max_abs_t[..]);
    }

    #[test]
    fn many_thresholds_take_several_passes() {
        let (n, m) = (9, 50);
        let data = random_data(n, m, 2);
        let diffs = PairDiffs::new(&data, n, m).unwrap();
        let t = [0.0, 1.0, 1.5, 2.0, 2.5, 3.0, 1.0];
        let got = exact(&diffs, Thresholds { t: &t, d: &[0.3] }, 0, 256).unwrap();
        for j in 0..256u64 {
            let (c, _) = brute(&data, n, m, &exact_signs(n, j), &t, &[0.3]);
            assert_eq!(&got.counts[j as usize * 8..j as usize * 8 + 8], &c[..]);
        }
    }

    #[test]
    fn constant_units_are_handled_in_closed_form() {
        // Units 0 and 1 constant (0 and 0.5), the others random; n = 7.
        let (n, m) = (7, 6);
        let mut data = random_data(n, m, 4);
        for i in 0..n {
            data[i * m] = 0.0;
            data[i * m + 1] = 0.5;
        }
        let diffs = PairDiffs::new(&data, n, m).unwrap();
        let got = exact(&diffs, Thresholds { t: &T, d: &D }, 0, 64).unwrap();
        assert_eq!(got.max_abs_t[0], f64::INFINITY);
        for j in 0..64u64 {
            let (c, mx) = brute(&data, n, m, &exact_signs(n, j), &T, &D);
            assert_eq!(&got.counts[j as usize * 5..j as usize * 5 + 5], &c[..], "j={j}");
            assert!(close(got.max_abs_t[j as usize], mx), "j={j}");
        }
    }

    #[test]
    fn bad_input_is_refused() {
        let data = random_data(4, 3, 1);
        let diffs = PairDiffs::new(&data, 4, 3).unwrap();
        let bad = [f64::NAN];
        assert!(matches!(
            exact(&diffs, Thresholds { t: &bad, d: &[] }, 0, 8),
            Err(StatsError::BadThreshold { .. })
        ));
        assert!(matches!(
            exact(&diffs, Thresholds { t: &[-1.0], d: &[] }, 0, 8),
            Err(StatsError::BadThreshold { .. })
        ));
        assert!(matches!(
            exact(&diffs, Thresholds { t: &T, d: &[] }, 0, 9),
            Err(StatsError::BadRange { .. })
        ));
        assert!(matches!(
            exact(&diffs, Thresholds { t: &T, d: &[] }, 5, 4),
            Err(StatsError::BadRange { .. })
        ));
        assert!(matches!(n_patterns(40), Err(StatsError::TooManyPairsForExact { .. })));
    }
}
