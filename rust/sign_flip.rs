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
//! `|B| + R` below the smallest threshold cannot reach it in any of the 256 patterns and is
//! skipped (typically 85-90% of units for n = 25); the max |t| over skipped units is bounded by
//! `|B| + R` and they are evaluated only where that bound could beat the max of the others. The
//! counts and maxima are therefore exactly those of evaluating every unit.
//!
//! # Degenerate units
//! A unit whose differences are all 0 has t = 0 under every pattern. A unit whose differences are
//! all equal to `v != 0` has |t| = inf under the identity and `|t| = sqrt((n-1) k^2 / (n^2 - k^2))`
//! under a pattern with `k` = (unflipped - flipped) pairs; both kinds are handled in closed form
//! (see [`crate::paired`] for the convention).
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
use std::sync::OnceLock;

/// Largest n for exact enumeration: 2^32 patterns.
pub const MAX_EXACT_PAIRS: usize = 33;

/// Bits (pairs) per lookup-table group.
const GROUP_BITS: usize = 8;
/// Units are padded with all-zero units to a multiple of this (one vector of f64 lanes).
const LANES: usize = 8;
/// Units per block in exact mode (low-byte tables of one block stay in L2).
const EXACT_UNIT_BLOCK: usize = 256;
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
        return Err(StatsError::TooManyPairsForExact { n_pairs, max: MAX_EXACT_PAIRS });
    }
    Ok(1u64 << (n_pairs.max(1) - 1))
}

/// The exact null over patterns `start .. end` of the 2^(n-1).
pub fn exact(
    diffs: &PairDiffs,
    thresholds: Thresholds,
    start: u64,
    end: u64,
) -> Result<NullRange, StatsError> {
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
    Ok(prep.run(Mode::MonteCarlo { key: rng::stream_key(seed, Stream::SignFlip) }, start, end))
}

/// Signs (+1 / -1, row-major `[len x n_pairs]`) of Monte Carlo permutations `start .. end`:
/// what [`monte_carlo`] multiplies each pair's differences by.
pub fn monte_carlo_signs(n_pairs: usize, seed: u64, start: u64, end: u64) -> Result<Vec<i8>, StatsError> {
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
    if bits % 8 != 0 {
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
    MonteCarlo { key: u64 },
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
        let skip_ratio = ratios.first().copied().unwrap_or(f64::INFINITY).min(ratio_for_t(3.0, nf));
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
        let mut out = NullRange { counts: vec![0; len * cols], max_abs_t: vec![0.0; len] };
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
            Mode::MonteCarlo { .. } => {
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
        if let Mode::MonteCarlo { key } = mode {
            let g = self.groups.len();
            patterns = vec![0u8; len * g];
            for (i, bytes) in patterns.chunks_exact_mut(g).enumerate() {
                monte_carlo_pattern(key, start + i as u64, self.n, bytes);
            }
        }
        // Thresholds in passes of at most MAX_K; every pass also takes the max (idempotent).
        let mut first = 0;
        loop {
            let batch = (k_all - first).min(MAX_K);
            let ratios = &self.ratios[first..first + batch];
            let mut batch_counts = vec![0u32; len * batch];
            match mode {
                Mode::Exact => kernels::exact(self, ratios, start, end, &mut batch_counts, &mut max_ratio),
                Mode::MonteCarlo { .. } => {
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
                    Mode::MonteCarlo { .. } => {
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

/// Partial sums of one group for units `u0 .. u0 + w`: entry `e` is the sum, in pair order, of
/// the group's values with pair `first_pair + b` negated where bit `b` of `e` is set.
/// `at(e, u)` gives the flat index of entry `e` of unit `u` (byte- or unit-major layouts).
#[inline(always)]
fn build_group_table(
    prep: &Prepared,
    group: Group,
    u0: usize,
    w: usize,
    table: &mut [f64],
    at: impl Fn(usize, usize) -> usize,
) {
    if group.bits == 0 {
        for u in 0..w {
            table[at(0, u)] = 0.0;
        }
        return;
    }
    let x = &prep.pair(group.first_pair)[u0..u0 + w];
    for (u, &v) in x.iter().enumerate() {
        table[at(0, u)] = v;
        table[at(1, u)] = -v;
    }
    for b in 1..group.bits {
        let x = &prep.pair(group.first_pair + b)[u0..u0 + w];
        let half = 1usize << b;
        for e in 0..half {
            for (u, &v) in x.iter().enumerate() {
                let kept = table[at(e, u)];
                table[at(e + half, u)] = kept - v;
                table[at(e, u)] = kept + v;
            }
        }
    }
}

/// The hot loops, compiled once per instruction set and chosen at run time.
mod kernels {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq)]
    pub(super) enum Isa {
        Avx512,
        Avx2,
        Baseline,
    }

    /// The best instruction set of this CPU; `DENSE_PLANTAIN_SIMD=baseline|avx2|avx512` lowers it
    /// (tests use that to check that every variant gives the same bits).
    pub(super) fn isa() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            let best = detect();
            match std::env::var("DENSE_PLANTAIN_SIMD").ok().as_deref() {
                Some("baseline") => Isa::Baseline,
                Some("avx2") if best != Isa::Baseline => Isa::Avx2,
                _ => best,
            }
        })
    }

    pub(crate) fn isa_name() -> &'static str {
        match isa() {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Baseline => "baseline",
        }
    }

    #[cfg(target_arch = "x86_64")]
    fn detect() -> Isa {
        if is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("avx512vl")
        {
            Isa::Avx512
        } else if is_x86_feature_detected!("avx2") {
            Isa::Avx2
        } else {
            Isa::Baseline
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn detect() -> Isa {
        Isa::Baseline
    }

    macro_rules! dispatch_k {
        ($f:ident, $k:expr, $($arg:expr),*) => {
            match $k {
                0 => $f::<0>($($arg),*),
                1 => $f::<1>($($arg),*),
                2 => $f::<2>($($arg),*),
                3 => $f::<3>($($arg),*),
                _ => $f::<4>($($arg),*),
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
        dispatch_k!(exact_k, ratios.len(), prep, ratios, start, end, counts, max_ratio)
    }

    fn exact_k<const K: usize>(
        prep: &Prepared,
        ratios: &[f64],
        start: u64,
        end: u64,
        counts: &mut [u32],
        max_ratio: &mut [f64],
    ) {
        let thr: [f64; K] = ratios.try_into().unwrap();
        match isa() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: isa() checked the CPU has these features.
            Isa::Avx512 => unsafe { exact_avx512::<K>(prep, &thr, start, end, counts, max_ratio) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { exact_avx2::<K>(prep, &thr, start, end, counts, max_ratio) },
            _ => exact_impl::<K, 4>(prep, &thr, start, end, counts, max_ratio),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512dq,avx512vl")]
    unsafe fn exact_avx512<const K: usize>(
        prep: &Prepared,
        thr: &[f64; K],
        start: u64,
        end: u64,
        counts: &mut [u32],
        max_ratio: &mut [f64],
    ) {
        exact_impl::<K, 32>(prep, thr, start, end, counts, max_ratio)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn exact_avx2<const K: usize>(
        prep: &Prepared,
        thr: &[f64; K],
        start: u64,
        end: u64,
        counts: &mut [u32],
        max_ratio: &mut [f64],
    ) {
        exact_impl::<K, 8>(prep, thr, start, end, counts, max_ratio)
    }

    pub(super) fn monte_carlo(
        prep: &Prepared,
        ratios: &[f64],
        patterns: &[u8],
        counts: &mut [u32],
        max_ratio: &mut [f64],
    ) {
        dispatch_k!(monte_carlo_k, ratios.len(), prep, ratios, patterns, counts, max_ratio)
    }

    fn monte_carlo_k<const K: usize>(
        prep: &Prepared,
        ratios: &[f64],
        patterns: &[u8],
        counts: &mut [u32],
        max_ratio: &mut [f64],
    ) {
        let thr: [f64; K] = ratios.try_into().unwrap();
        match isa() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: isa() checked the CPU has these features.
            Isa::Avx512 => unsafe { mc_avx512::<K>(prep, &thr, patterns, counts, max_ratio) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { mc_avx2::<K>(prep, &thr, patterns, counts, max_ratio) },
            _ => mc_impl::<K>(prep, &thr, patterns, counts, max_ratio),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512dq,avx512vl")]
    unsafe fn mc_avx512<const K: usize>(
        prep: &Prepared,
        thr: &[f64; K],
        patterns: &[u8],
        counts: &mut [u32],
        max_ratio: &mut [f64],
    ) {
        mc_impl::<K>(prep, thr, patterns, counts, max_ratio)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn mc_avx2<const K: usize>(
        prep: &Prepared,
        thr: &[f64; K],
        patterns: &[u8],
        counts: &mut [u32],
        max_ratio: &mut [f64],
    ) {
        mc_impl::<K>(prep, thr, patterns, counts, max_ratio)
    }

    /// Exact mode over patterns `start .. end` (one task): unit blocks outside, high bytes
    /// inside, the 256 low-byte patterns swept `A` at a time over the units not skipped.
    #[inline(always)]
    fn exact_impl<const K: usize, const A: usize>(
        prep: &Prepared,
        thr: &[f64; K],
        start: u64,
        end: u64,
        counts: &mut [u32],
        max_ratio: &mut [f64],
    ) {
        let low = prep.groups[0];
        let high = &prep.groups[1..];
        let n_low = 1usize << low.bits;
        let stride = n_low.div_ceil(A) * A;
        let ub = EXACT_UNIT_BLOCK.min(prep.m_pad);
        let mut low_table = vec![0.0f64; ub * stride];
        let mut radius = vec![0.0f64; ub];
        let mut high_tables: Vec<Vec<f64>> = high.iter().map(|g| vec![0.0; (1 << g.bits) * ub]).collect();
        let mut base = vec![0.0f64; ub];
        let mut bound = vec![0.0f64; ub];
        let mut active_unit: Vec<u32> = Vec::with_capacity(ub);
        let mut active_base: Vec<f64> = Vec::with_capacity(ub);
        let h_first = start >> low.bits;
        let h_end = ((end - 1) >> low.bits) + 1;
        for u0 in (0..prep.m_pad).step_by(ub) {
            let w = ub.min(prep.m_pad - u0);
            low_table.fill(0.0);
            build_group_table(prep, low, u0, w, &mut low_table, |e, u| u * stride + e);
            radius.fill(0.0);
            for b in 0..low.bits {
                for (r, &v) in radius.iter_mut().zip(&prep.pair(low.first_pair + b)[u0..u0 + w]) {
                    *r += v.abs();
                }
            }
            for (g, table) in high.iter().zip(high_tables.iter_mut()) {
                build_group_table(prep, *g, u0, w, table, |e, u| e * w + u);
            }
            let x0 = &prep.pair(0)[u0..u0 + w];
            for h in h_first..h_end {
                // B: the sum over pair 0 and the high pairs, in group order.
                base[..w].copy_from_slice(x0);
                for (gi, (g, table)) in high.iter().zip(&high_tables).enumerate() {
                    let byte = ((h >> (GROUP_BITS * gi)) & ((1 << g.bits) - 1)) as usize;
                    for (b, &v) in base[..w].iter_mut().zip(&table[byte * w..(byte + 1) * w]) {
                        *b += v;
                    }
                }
                active_unit.clear();
                active_base.clear();
                let mut skipped_bound = f64::NEG_INFINITY;
                for u in 0..w {
                    let reach = base[u].abs() + radius[u];
                    bound[u] = reach;
                    if reach > prep.skip_below {
                        active_unit.push(u as u32);
                        active_base.push(base[u]);
                    } else if reach > skipped_bound {
                        skipped_bound = reach;
                    }
                }
                // Squared bound on |S| of every skipped unit, in any low-byte pattern.
                let skipped_sq = if skipped_bound >= 0.0 {
                    let b = skipped_bound + SKIP_MARGIN;
                    b * b
                } else {
                    -1.0
                };
                let j_base = h << low.bits;
                let a_from = start.saturating_sub(j_base) as usize;
                let a_to = ((end - j_base) as usize).min(n_low);
                let mut a0 = a_from / A * A;
                while a0 < a_to {
                    let (mx, cnt) = sweep::<K, A>(&active_unit, &active_base, &low_table, stride, a0, thr);
                    for l in 0..A {
                        let a = a0 + l;
                        if a < a_from || a >= a_to {
                            continue;
                        }
                        let p = (j_base + a as u64 - start) as usize;
                        for k in 0..K {
                            counts[p * K + k] += cnt[k][l] as u32;
                        }
                        let mut best = if mx[l] > max_ratio[p] { mx[l] } else { max_ratio[p] };
                        if best < skipped_sq {
                            for u in 0..w {
                                let reach = bound[u];
                                if reach <= prep.skip_below {
                                    let lim = reach + SKIP_MARGIN;
                                    if lim * lim > best {
                                        let s = base[u] + low_table[u * stride + a];
                                        let sq = s * s;
                                        best = if sq > best { sq } else { best };
                                    }
                                }
                            }
                        }
                        max_ratio[p] = best;
                    }
                    a0 += A;
                }
            }
        }
    }

    /// `A` low-byte patterns from `a0` over the active units: max S^2 and counts above each
    /// ratio threshold, one lane per pattern.
    #[inline(always)]
    fn sweep<const K: usize, const A: usize>(
        active_unit: &[u32],
        active_base: &[f64],
        low_table: &[f64],
        stride: usize,
        a0: usize,
        thr: &[f64; K],
    ) -> ([f64; A], [[u64; A]; K]) {
        let mut mx = [0.0f64; A];
        let mut cnt = [[0u64; A]; K];
        for (&u, &b) in active_unit.iter().zip(active_base) {
            let at = u as usize * stride + a0;
            let row: &[f64; A] = low_table[at..at + A].try_into().unwrap();
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
                    cnt[k][l] += (sq[l] > thr[k]) as u64;
                }
            }
        }
        (mx, cnt)
    }

    /// Monte Carlo over the given patterns (one task): unit blocks outside, permutations inside,
    /// one lane per unit.
    #[inline(always)]
    fn mc_impl<const K: usize>(
        prep: &Prepared,
        thr: &[f64; K],
        patterns: &[u8],
        counts: &mut [u32],
        max_ratio: &mut [f64],
    ) {
        let g = prep.groups.len();
        let ub = (MC_TABLE_BUDGET / (8 * 256 * g) / LANES * LANES).clamp(LANES, 512).min(prep.m_pad);
        let plane = 256 * ub;
        let mut tables = vec![0.0f64; g * plane];
        let mut offsets = vec![0usize; g];
        for u0 in (0..prep.m_pad).step_by(ub) {
            let w = ub.min(prep.m_pad - u0);
            for (gi, group) in prep.groups.iter().enumerate() {
                let t = &mut tables[gi * plane..(gi + 1) * plane];
                build_group_table(prep, *group, u0, w, t, |e, u| e * w + u);
            }
            let x0 = &prep.pair(0)[u0..u0 + w];
            for (p, bytes) in patterns.chunks_exact(g).enumerate() {
                for gi in 0..g {
                    offsets[gi] = gi * plane + bytes[gi] as usize * w;
                }
                let mut mx = [0.0f64; LANES];
                let mut cnt = [[0u64; LANES]; K];
                for c in (0..w).step_by(LANES) {
                    let mut s: [f64; LANES] = x0[c..c + LANES].try_into().unwrap();
                    for &off in &offsets[1..] {
                        let row: &[f64; LANES] = tables[off + c..off + c + LANES].try_into().unwrap();
                        for l in 0..LANES {
                            s[l] += row[l];
                        }
                    }
                    let row: &[f64; LANES] = tables[offsets[0] + c..offsets[0] + c + LANES].try_into().unwrap();
                    let mut sq = [0.0f64; LANES];
                    for l in 0..LANES {
                        let v = s[l] + row[l];
                        sq[l] = v * v;
                    }
                    for l in 0..LANES {
                        mx[l] = if sq[l] > mx[l] { sq[l] } else { mx[l] };
                    }
                    for k in 0..K {
                        for l in 0..LANES {
                            cnt[k][l] += (sq[l] > thr[k]) as u64;
                        }
                    }
                }
                let mut best = max_ratio[p];
                for &v in &mx {
                    best = if v > best { v } else { best };
                }
                max_ratio[p] = best;
                for k in 0..K {
                    counts[p * K + k] += cnt[k].iter().sum::<u64>() as u32;
                }
            }
        }
    }
}

/// Which compiled variant of the hot loops this process uses ("avx512", "avx2", "baseline").
pub fn simd_variant() -> &'static str {
    kernels::isa_name()
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
                if y[0] == 0.0 { 0.0 } else { f64::INFINITY }
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
        (0..n).map(|i| if i > 0 && (j >> (i - 1)) & 1 == 1 { -1 } else { 1 }).collect()
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
        for &(n, m) in &[(3usize, 5usize), (6, 9), (10, 37), (11, 300)] {
            let data = random_data(n, m, n as u64);
            let diffs = PairDiffs::new(&data, n, m).unwrap();
            let total = n_patterns(n).unwrap();
            let got = exact(&diffs, Thresholds { t: &T, d: &D }, 0, total).unwrap();
            for j in 0..total {
                let (c, mx) = brute(&data, n, m, &exact_signs(n, j), &T, &D);
                assert_eq!(&got.counts[j as usize * 5..j as usize * 5 + 5], &c[..], "n={n} j={j}");
                assert!(close(got.max_abs_t[j as usize], mx), "n={n} j={j}: {} vs {mx}", got.max_abs_t[j as usize]);
            }
        }
    }

    #[test]
    fn monte_carlo_matches_brute_force_with_its_own_signs() {
        let (n, m) = (13, 200);
        let data = random_data(n, m, 5);
        let diffs = PairDiffs::new(&data, n, m).unwrap();
        let got = monte_carlo(&diffs, Thresholds { t: &T, d: &D }, 42, 100, 400).unwrap();
        let signs = monte_carlo_signs(n, 42, 100, 400).unwrap();
        for p in 0..300 {
            let (c, mx) = brute(&data, n, m, &signs[p * n..(p + 1) * n], &T, &D);
            assert_eq!(&got.counts[p * 5..p * 5 + 5], &c[..], "perm {p}");
            assert!(close(got.max_abs_t[p], mx));
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
        assert!(matches!(exact(&diffs, Thresholds { t: &T, d: &[] }, 0, 9), Err(StatsError::BadRange { .. })));
        assert!(matches!(exact(&diffs, Thresholds { t: &T, d: &[] }, 5, 4), Err(StatsError::BadRange { .. })));
        assert!(matches!(n_patterns(40), Err(StatsError::TooManyPairsForExact { .. })));
    }
}
