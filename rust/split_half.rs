//! Split-half reliability of the per-unit t-map.
//!
//! Split `k` shuffles the pairs with a Fisher-Yates shuffle driven by SplitMix64 substream `k`
//! of the seed (so split `k` is the same whatever the number of splits asked for) and puts the
//! first floor(n/2) shuffled pairs in the first half, the other ceil(n/2) in the second. In each
//! half every unit gets its paired t (conventions of [`crate::paired`]); the split's value is the
//! Pearson r, across units, between the two t-vectors.
//!
//! Units whose t is not finite in either half (all differences of that half equal and non-zero,
//! or an sd that rounds to 0) are left out of that split's r; if fewer than two units remain, or
//! either t-vector is constant over them (exact equality), r is NaN.
//!
//! Nothing of size splits x units is stored. Per block of units and split, both halves' t-maps
//! are computed (up to a factor per half, which r ignores) into a small buffer and reduced at
//! once to the block's Pearson co-moments, two-pass; the blocks of a split are then merged in
//! block order with the pairwise update of Chan, Golub & LeVeque, so the result does not depend
//! on the thread count.

use crate::paired::ScaledDiffs;
use crate::rng::{self, SplitMix64, Stream};
use crate::{PairDiffs, StatsError};
use rayon::prelude::*;

/// Fewest pairs for a split: each half needs two pairs for an sd.
pub const MIN_SPLIT_PAIRS: usize = 4;

/// Units per block: the block's 25 x 256 float64 (50 KiB) stay near L1 for every split.
const UNIT_BLOCK: usize = 256;

/// `[n_splits x n_pairs]` row-major; `true` marks the pairs of the first half.
pub fn assignments(n_pairs: usize, n_splits: usize, seed: u64) -> Result<Vec<bool>, StatsError> {
    if n_pairs < MIN_SPLIT_PAIRS {
        return Err(StatsError::TooFewPairs {
            n_pairs,
            needed: MIN_SPLIT_PAIRS,
            what: "split-half reliability",
        });
    }
    let key = rng::stream_key(seed, Stream::SplitHalf);
    let mut out = vec![false; n_splits * n_pairs];
    let mut order: Vec<usize> = Vec::with_capacity(n_pairs);
    for (k, row) in out.chunks_exact_mut(n_pairs).enumerate() {
        let mut g = SplitMix64::substream(key, k as u64);
        order.clear();
        order.extend(0..n_pairs);
        for i in (1..n_pairs).rev() {
            let j = g.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
        for &pair in &order[..n_pairs / 2] {
            row[pair] = true;
        }
    }
    Ok(out)
}

/// One Pearson r per row of `assignments` (`[n_splits x n_pairs]`, `true` = first half).
pub fn split_half(diffs: &PairDiffs, assignments: &[bool]) -> Result<Vec<f64>, StatsError> {
    let n = diffs.n_pairs();
    if n < MIN_SPLIT_PAIRS {
        return Err(StatsError::TooFewPairs {
            n_pairs: n,
            needed: MIN_SPLIT_PAIRS,
            what: "split-half reliability",
        });
    }
    if !assignments.len().is_multiple_of(n) {
        return Err(StatsError::BadSplit {
            split: assignments.len() / n,
            reason: format!("assignment rows must have one entry per pair ({n})"),
        });
    }
    for (k, row) in assignments.chunks_exact(n).enumerate() {
        let first = row.iter().filter(|&&b| b).count();
        if first < 2 || n - first < 2 {
            return Err(StatsError::BadSplit {
                split: k,
                reason: format!("halves of {first} and {} pairs; each needs at least 2", n - first),
            });
        }
    }
    let scaled = ScaledDiffs::new(diffs);
    let m = diffs.n_units();
    let n_splits = assignments.len() / n;
    // Pair indices of each split's halves.
    let halves: Vec<(Vec<usize>, Vec<usize>)> = assignments
        .chunks_exact(n)
        .map(|row| {
            (
                (0..n).filter(|&i| row[i]).collect(),
                (0..n).filter(|&i| !row[i]).collect(),
            )
        })
        .collect();
    // Unit blocks outside (each block's data stays in L1/L2 for all splits), splits inside. A
    // block's two t-maps of a split live only in a small buffer: what the block keeps is its
    // co-moments, `[block][split]`.
    let n_blocks = m.div_ceil(UNIT_BLOCK);
    let per_block: Vec<Vec<CoMoments>> = crate::threads::install(|| {
        (0..n_blocks)
            .into_par_iter()
            .map(|b| {
                let u0 = b * UNIT_BLOCK;
                let w = UNIT_BLOCK.min(m - u0);
                let rows: Vec<&[f64]> = (0..n).map(|i| &scaled.pair(i)[u0..u0 + w]).collect();
                let mut half: Vec<&[f64]> = Vec::with_capacity(n);
                let mut t1 = [0.0f64; UNIT_BLOCK];
                let mut t2 = [0.0f64; UNIT_BLOCK];
                halves
                    .iter()
                    .map(|(first, second)| {
                        for (pairs, t) in [(first, &mut t1), (second, &mut t2)] {
                            half.clear();
                            half.extend(pairs.iter().map(|&i| rows[i]));
                            half_scaled_t(&half, t_sd_zero_bound(pairs.len()), &mut t[..w]);
                        }
                        let mut c = CoMoments::EMPTY;
                        block_co_moments(&t1[..w], &t2[..w], &mut c);
                        c
                    })
                    .collect()
            })
            .collect()
    });
    // Each split's blocks merged in block order: the same operations whatever the thread count.
    let r = (0..n_splits)
        .map(|s| {
            let mut total = CoMoments::EMPTY;
            for block in &per_block {
                total.merge(&block[s]);
            }
            total.pearson()
        })
        .collect();
    Ok(r)
}

/// Pearson moments of the (x, y) pairs with both values finite: count, means, centred sums of
/// squares and cross products, and, for exact constancy, the value all x (all y) share if they
/// do.
#[derive(Debug, Clone, Copy, PartialEq)]
struct CoMoments {
    count: usize,
    mean_x: f64,
    mean_y: f64,
    sxx: f64,
    syy: f64,
    sxy: f64,
    same_x: Option<f64>,
    same_y: Option<f64>,
}

impl CoMoments {
    const EMPTY: CoMoments = CoMoments {
        count: 0,
        mean_x: 0.0,
        mean_y: 0.0,
        sxx: 0.0,
        syy: 0.0,
        sxy: 0.0,
        same_x: None,
        same_y: None,
    };

    /// Adds `other`'s pairs: the pairwise update of Chan, Golub & LeVeque (1979), "Updating
    /// formulae and a pairwise algorithm for computing sample variances", applied to both sums
    /// of squares and, the same way, to the cross products: with `d = mean_b - mean_a`,
    /// `S = S_a + S_b + d_x d_y n_a n_b / n`.
    fn merge(&mut self, other: &CoMoments) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = *other;
            return;
        }
        let (na, nb) = (self.count as f64, other.count as f64);
        let n = na + nb;
        let (dx, dy) = (other.mean_x - self.mean_x, other.mean_y - self.mean_y);
        let weight = na * nb / n;
        self.mean_x += dx * (nb / n);
        self.mean_y += dy * (nb / n);
        self.sxx += other.sxx + dx * dx * weight;
        self.syy += other.syy + dy * dy * weight;
        self.sxy += other.sxy + dx * dy * weight;
        self.count += other.count;
        let same = |a: Option<f64>, b: Option<f64>| a.zip(b).filter(|(a, b)| a == b).map(|(a, _)| a);
        self.same_x = same(self.same_x, other.same_x);
        self.same_y = same(self.same_y, other.same_y);
    }

    /// r, or NaN with fewer than two pairs or a constant x or y (decided by exact equality).
    fn pearson(&self) -> f64 {
        let constant = self.same_x.is_some() || self.same_y.is_some();
        if self.count < 2 || constant || self.sxx == 0.0 || self.syy == 0.0 {
            return f64::NAN;
        }
        self.sxy / (self.sxx * self.syy).sqrt()
    }
}

/// Lanes of the co-moment loops.
const LANES: usize = 8;

crate::simd::by_isa! {
    /// The co-moments of one block's two t-maps (`x`, `y`, equal lengths), two-pass. Usually
    /// every value is finite (their sums are then finite, and an infinity or NaN anywhere makes
    /// one of them not): vector lanes, no masks; each lane accumulates its own units and lanes
    /// are added in lane order, so every instruction set gives the same bits. Otherwise the block
    /// is redone unit by unit, leaving out the pairs with a non-finite value.
    fn block_co_moments(x: &[f64], y: &[f64], out: &mut CoMoments) => block_co_moments_impl
}

#[inline(always)]
fn block_co_moments_impl(x: &[f64], y: &[f64], out: &mut CoMoments) {
    debug_assert!(x.len() == y.len() && !x.is_empty());
    let lanes = |v: &[f64]| -> [f64; LANES] { v.try_into().unwrap() };
    let (xs, ys) = (x.chunks_exact(LANES), y.chunks_exact(LANES));
    let (x_rest, y_rest) = (xs.remainder(), ys.remainder());
    let (mut sx, mut sy) = ([0.0f64; LANES], [0.0f64; LANES]);
    for (xv, yv) in xs.clone().zip(ys.clone()) {
        let (xv, yv) = (lanes(xv), lanes(yv));
        for l in 0..LANES {
            sx[l] += xv[l];
            sy[l] += yv[l];
        }
    }
    for (l, (&a, &b)) in x_rest.iter().zip(y_rest).enumerate() {
        sx[l] += a;
        sy[l] += b;
    }
    let (mut tx, mut ty) = (0.0, 0.0);
    for l in 0..LANES {
        tx += sx[l];
        ty += sy[l];
    }
    if !(tx.is_finite() && ty.is_finite()) {
        *out = co_moments_of_finite(x, y);
        return;
    }
    let n = x.len() as f64;
    let mut c = CoMoments::EMPTY;
    c.count = x.len();
    c.mean_x = tx / n;
    c.mean_y = ty / n;
    (c.same_x, c.same_y) = shared_values(x, y);
    let (mx, my) = (c.mean_x, c.mean_y);
    let (mut sxx, mut syy, mut sxy) = ([0.0f64; LANES], [0.0f64; LANES], [0.0f64; LANES]);
    for (xv, yv) in xs.zip(ys) {
        let (xv, yv) = (lanes(xv), lanes(yv));
        for l in 0..LANES {
            let (dx, dy) = (xv[l] - mx, yv[l] - my);
            sxx[l] += dx * dx;
            syy[l] += dy * dy;
            sxy[l] += dx * dy;
        }
    }
    for (l, (&a, &b)) in x_rest.iter().zip(y_rest).enumerate() {
        let (dx, dy) = (a - mx, b - my);
        sxx[l] += dx * dx;
        syy[l] += dy * dy;
        sxy[l] += dx * dy;
    }
    for l in 0..LANES {
        c.sxx += sxx[l];
        c.syy += syy[l];
        c.sxy += sxy[l];
    }
    *out = c;
}

/// [`block_co_moments`] of a block with non-finite values: two-pass over the pairs with both
/// values finite, one unit at a time.
fn co_moments_of_finite(x: &[f64], y: &[f64]) -> CoMoments {
    let kept = || x.iter().zip(y).filter(|(a, b)| a.is_finite() && b.is_finite());
    let (mut count, mut tx, mut ty) = (0usize, 0.0, 0.0);
    for (&a, &b) in kept() {
        count += 1;
        tx += a;
        ty += b;
    }
    if count == 0 {
        return CoMoments::EMPTY;
    }
    let mut c = CoMoments::EMPTY;
    c.count = count;
    c.mean_x = tx / count as f64;
    c.mean_y = ty / count as f64;
    (c.same_x, c.same_y) = shared_values(x, y);
    for (&a, &b) in kept() {
        let (dx, dy) = (a - c.mean_x, b - c.mean_y);
        c.sxx += dx * dx;
        c.syy += dy * dy;
        c.sxy += dx * dy;
    }
    c
}

/// The value all finite-pair x share and the one all y share, where they do; a scan that stops
/// at the first pair of kept values that differ in both (usually the second unit), rather than
/// per-lane min / max, which do not vectorise cleanly. The caller has at least one kept pair.
fn shared_values(x: &[f64], y: &[f64]) -> (Option<f64>, Option<f64>) {
    let mut kept = x.iter().zip(y).filter(|(a, b)| a.is_finite() && b.is_finite());
    let Some((&x0, &y0)) = kept.next() else {
        return (None, None);
    };
    let (mut same_x, mut same_y) = (true, true);
    for (&a, &b) in kept {
        same_x &= a == x0;
        same_y &= b == y0;
        if !same_x && !same_y {
            break;
        }
    }
    (same_x.then_some(x0), same_y.then_some(y0))
}

/// The largest sum of squared deviations `ss` for which t's variance `ss / (k - 1)` rounds to
/// 0 (0 itself for `k = 2`): at or below it t's sd is 0 and t is +-inf or NaN. Such an `ss` is
/// a subnormal `j * 2^-1074`, and `j * 2^-1074 / (k - 1)` rounds to 0 exactly when it is at most
/// half of `2^-1074` (the tie rounds to the even 0), that is `j <= (k - 1) / 2`.
fn t_sd_zero_bound(k: usize) -> f64 {
    debug_assert!(k >= 2 && (k as u64) < 1 << 52);
    f64::from_bits(((k - 1) / 2) as u64)
}

crate::simd::by_isa! {
    /// Per-unit t over the given rows (pairs) up to the half's factor `sqrt(k (k - 1))`:
    /// `mean / sqrt(ss)` (`ss` the sum of squared deviations), which is
    /// `t / sqrt(k (k - 1))`. Pearson r does not change when either map is multiplied by a
    /// positive constant, and this costs one square root and one division per unit where t costs
    /// a square root and three divisions (the divider was the loop's bottleneck).
    ///
    /// `mean` and `ss` are the arithmetic of [`crate::paired::moments`] unit by unit (sum in
    /// pair order, then squared deviations in pair order), so the same bits; each vector of units
    /// stays in registers across the rows. The value is not finite exactly where t is not, so a
    /// split leaves out the same units: constant units get t's closed forms (0 for all-zero,
    /// +-inf otherwise), and where t's sd rounds to 0 (`ss <= sd_zero`, from
    /// [`t_sd_zero_bound`]; t is +-inf there, or NaN for a zero mean) the value is NaN.
    /// Elsewhere both are finite for rows scaled as [`ScaledDiffs`] scales them (|x| < 2, so
    /// neither quotient overflows).
    ///
    /// Constancy is decided exactly, as in `moments`, by another route: the spread
    /// `sum_i |x_i - x_0|` is 0 if and only if every `x_i == x_0` (for finite floats `x - y == 0`
    /// only when `x == y`, -0 and +0 included, and a sum of non-negative terms is 0 only when
    /// each is). Its subtract, mask and add vectorise cleanly, where a per-lane min / max select
    /// compiled to mask shuffles.
    fn half_scaled_t(rows: &[&[f64]], sd_zero: f64, out: &mut [f64]) => half_scaled_t_impl
}

#[inline(always)]
fn half_scaled_t_impl(rows: &[&[f64]], sd_zero: f64, out: &mut [f64]) {
    let w = out.len();
    let full = w / 8 * 8;
    for u0 in (0..full).step_by(8) {
        half_scaled_t_lanes::<8>(rows, sd_zero, u0, &mut out[u0..u0 + 8]);
    }
    for u in full..w {
        half_scaled_t_lanes::<1>(rows, sd_zero, u, &mut out[u..u + 1]);
    }
}

#[inline(always)]
fn half_scaled_t_lanes<const L: usize>(rows: &[&[f64]], sd_zero: f64, u0: usize, out: &mut [f64]) {
    let kf = rows.len() as f64;
    let at = |r: &[f64]| -> [f64; L] { r[u0..u0 + L].try_into().unwrap() };
    let first = at(rows[0]);
    let (mut sum, mut spread) = (first, [0.0f64; L]);
    for row in &rows[1..] {
        let x = at(row);
        for l in 0..L {
            sum[l] += x[l];
            spread[l] += (x[l] - first[l]).abs();
        }
    }
    let mut mean = [0.0f64; L];
    for l in 0..L {
        mean[l] = sum[l] / kf;
    }
    let mut ss = [0.0f64; L];
    for row in rows {
        let x = at(row);
        for l in 0..L {
            let dev = x[l] - mean[l];
            ss[l] += dev * dev;
        }
    }
    // Every lane's quotient first, branch-free (vector sqrt and division); constant lanes are
    // then replaced by their closed form. (Written this way, with a constant NaN, the select
    // compiles to a blend; with a select on the divisor instead, part of the lanes came out
    // scalar.)
    let mut q = [0.0f64; L];
    for l in 0..L {
        q[l] = if ss[l] <= sd_zero {
            f64::NAN
        } else {
            mean[l] / ss[l].sqrt()
        };
    }
    for l in 0..L {
        let constant = spread[l] == 0.0;
        let degenerate = if first[l] == 0.0 {
            0.0
        } else {
            f64::INFINITY.copysign(first[l])
        };
        out[l] = if constant { degenerate } else { q[l] };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference: Pearson r over the units where both values are finite, two-pass over the
    /// whole vectors (no blocks, no merging).
    fn pearson_finite(x: &[f64], y: &[f64]) -> f64 {
        let keep = |a: f64, b: f64| a.is_finite() && b.is_finite();
        let (mut sx, mut sy, mut count) = (0.0, 0.0, 0usize);
        for (&a, &b) in x.iter().zip(y) {
            if keep(a, b) {
                sx += a;
                sy += b;
                count += 1;
            }
        }
        if count < 2 {
            return f64::NAN;
        }
        let (mx, my) = (sx / count as f64, sy / count as f64);
        let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
        for (&a, &b) in x.iter().zip(y) {
            if keep(a, b) {
                let (da, db) = (a - mx, b - my);
                sxy += da * db;
                sxx += da * da;
                syy += db * db;
            }
        }
        if sxx == 0.0 || syy == 0.0 {
            return f64::NAN;
        }
        sxy / (sxx * syy).sqrt()
    }

    #[test]
    fn assignments_have_the_right_halves_and_are_stable() {
        let a = assignments(25, 50, 3).unwrap();
        for row in a.chunks_exact(25) {
            assert_eq!(row.iter().filter(|&&b| b).count(), 12);
        }
        let b = assignments(25, 10, 3).unwrap();
        assert_eq!(&a[..250], &b[..]);
        assert_ne!(assignments(25, 10, 4).unwrap(), b);
        assert!(assignments(3, 1, 0).is_err());
    }

    #[test]
    fn r_matches_a_direct_computation() {
        for (n, m, splits, seed) in [(9, 400, 5, 8), (25, 1259, 7, 9)] {
            // 25 pairs as in the probes; four whole blocks of units and a tail of 235.
            let mut g = SplitMix64::new(seed);
            let data: Vec<f64> = (0..n * m).map(|k| g.next_f64() + (k % m) as f64 / m as f64).collect();
            matches_a_direct_computation(n, m, &data, splits);
        }
    }

    #[test]
    fn units_whose_t_sd_rounds_to_zero_are_left_out() {
        // Units 0..100 ordinary; in units 100..220 one pair is 1, another 2^-537 and the rest 0.
        // A half of 5 with the 2^-537 but not the 1 has ss = 2^-1074 (the deviation 0.8 2^-537
        // squares to it, the others to 0), whose ss / 4 rounds to 0: t's sd is 0 although ss is
        // not, so t is infinite and the unit drops out (mean / sqrt(ss) alone would be 0.2).
        // Every other half is ordinary or all 0 (t = 0).
        let (n, m) = (10, 220);
        let mut data = crate::rng::uniform_data(n * m, 12, 0.4);
        for u in 100..m {
            for i in 0..n {
                data[i * m + u] = 0.0;
            }
            let (one, tiny) = (u % n, (u % n + 1 + u / n % (n - 1)) % n);
            data[one * m + u] = 1.0;
            data[tiny * m + u] = (-537.0f64).exp2();
        }
        let cases = matches_a_direct_computation(n, m, &data, 40);
        assert!(cases > 0, "no half had a non-zero ss and a zero sd");
    }

    /// Checks [`split_half`] against t computed directly per unit and half (its conventions:
    /// constant halves 0 or +-inf) and [`pearson_finite`]; returns how many (split, half, unit)
    /// had a non-zero ss but an sd that rounds to 0.
    fn matches_a_direct_computation(n: usize, m: usize, data: &[f64], splits: usize) -> usize {
        let diffs = PairDiffs::new(data, n, m).unwrap();
        let a = assignments(n, splits, 1).unwrap();
        let r = split_half(&diffs, &a).unwrap();
        let mut sd_rounded_to_zero = 0;
        for (k, row) in a.chunks_exact(n).enumerate() {
            let mut t_of = |half: bool| -> Vec<f64> {
                (0..m)
                    .map(|u| {
                        let v: Vec<f64> = (0..n).filter(|&i| row[i] == half).map(|i| data[i * m + u]).collect();
                        if v.iter().all(|&x| x == v[0]) {
                            return if v[0] == 0.0 { 0.0 } else { f64::INFINITY.copysign(v[0]) };
                        }
                        let kf = v.len() as f64;
                        let mean = v.iter().sum::<f64>() / kf;
                        let ss = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>();
                        let sd = (ss / (kf - 1.0)).sqrt();
                        sd_rounded_to_zero += usize::from(ss > 0.0 && sd == 0.0);
                        mean / (sd / kf.sqrt())
                    })
                    .collect()
            };
            let (t1, t2) = (t_of(true), t_of(false));
            let expected = pearson_finite(&t1, &t2);
            assert!((r[k] - expected).abs() < 1e-12, "split {k}: {} vs {expected}", r[k]);
        }
        sd_rounded_to_zero
    }

    #[test]
    fn t_sd_zero_bound_is_where_the_variance_rounds_to_zero() {
        for k in 2..400usize {
            let b = t_sd_zero_bound(k);
            let df = (k - 1) as f64;
            assert_eq!(b / df, 0.0, "k={k}");
            assert!(f64::from_bits(b.to_bits() + 1) / df > 0.0, "k={k}");
        }
        assert_eq!(t_sd_zero_bound(2), 0.0);
    }

    #[test]
    fn scaled_t_is_moments_t_over_its_factor() {
        use crate::paired::{moments, MomentsOut};
        let (n, m) = (13, 243); // a tail of 3 units past the vectors of 8
        let mut g = SplitMix64::new(5);
        let mut data: Vec<f64> = (0..n * m).map(|k| g.next_f64() * 3.0 - 1.0 + (k % 7) as f64).collect();
        for i in 0..n {
            data[i * m + 4] = 0.0; // constant 0: t = 0
            data[i * m + 9] = -1.5; // constant: t = -inf
            data[i * m + 241] = 2.5;
            // -0 and +0 are equal: constant 0 (t = 0); and a zero of either sign among others.
            data[i * m + 12] = if i % 2 == 0 { 0.0 } else { -0.0 };
            data[i * m + 13] = if i % 3 == 0 { -0.0 } else { 0.0 };
            // Zeros and one c 2^-e (c = 1, 1.1, .. 1.9; e = 530..541): ss runs from normal
            // through subnormal (where t's variance ss / (k - 1) rounds to 0 before ss does) to 0.
            for j in 0..120 {
                let tiny = (1.0 + (j % 10) as f64 / 10.0) * (-(530.0 + (j / 10) as f64)).exp2();
                data[i * m + 100 + j] = if i == n - 1 { tiny } else { 0.0 };
            }
        }
        data[(n - 1) * m + 13] = 0.25;
        let rows: Vec<&[f64]> = data.chunks_exact(m).collect();
        for k in [2, 3, 5, 12, 13] {
            let half = &rows[n - k..];
            let mut q = vec![0.0; m];
            half_scaled_t(half, t_sd_zero_bound(k), &mut q);
            let (mut mean, mut sd, mut t, mut d) = (vec![0.0; m], vec![0.0; m], vec![0.0; m], vec![0.0; m]);
            moments(
                half,
                &mut MomentsOut {
                    mean: &mut mean,
                    sd: &mut sd,
                    t: &mut t,
                    d: &mut d,
                },
            );
            let factor = ((k * (k - 1)) as f64).sqrt();
            let mut sd_rounded_to_zero = 0;
            for u in 0..m {
                let col: Vec<f64> = half.iter().map(|r| r[u]).collect();
                let mu = col.iter().sum::<f64>() / k as f64;
                let ss: f64 = col.iter().map(|x| (x - mu) * (x - mu)).sum();
                if !t[u].is_finite() {
                    assert!(!q[u].is_finite(), "k={k} u={u}: {} vs {}", q[u], t[u]);
                    sd_rounded_to_zero += usize::from(ss > 0.0);
                } else if ss / (k - 1) as f64 >= f64::MIN_POSITIVE {
                    let (a, b) = (q[u] * factor, t[u]);
                    assert!((a - b).abs() <= 1e-14 * b.abs(), "k={k} u={u}: {a} vs {b}");
                } else {
                    // A subnormal variance: t has lost digits to it (q, from ss itself, fewer).
                    assert!(q[u].is_finite(), "k={k} u={u}: {} vs {}", q[u], t[u]);
                }
            }
            assert_eq!(
                (q[4], q[12], q[9], q[241]),
                (0.0, 0.0, f64::NEG_INFINITY, f64::INFINITY)
            );
            assert!(q[13].is_finite() && q[13] != 0.0, "k={k}: {}", q[13]);
            // The case the bound is for came up (for k = 2 the bound is 0 and it cannot).
            assert!(k == 2 || sd_rounded_to_zero > 0, "k={k}");
        }
    }

    /// The co-moments of `x`, `y` the way [`split_half`] gets them: blocks of `block` values (the
    /// last one shorter), co-moments per block, merged in order.
    fn blocked(x: &[f64], y: &[f64], block: usize) -> CoMoments {
        let mut total = CoMoments::EMPTY;
        for (xb, yb) in x.chunks(block).zip(y.chunks(block)) {
            let mut c = CoMoments::EMPTY;
            block_co_moments(xb, yb, &mut c);
            total.merge(&c);
        }
        total
    }

    #[test]
    fn merged_block_co_moments_match_one_pass_over_all_units() {
        // Offset values (mean 1000, sd about 1: a test of the centring), infinities in either
        // vector, and a whole block of them (a block with nothing to add).
        let m = 3001;
        let mut g = SplitMix64::new(21);
        let mut x: Vec<f64> = (0..m).map(|_| 1000.0 + g.next_f64() * 3.0).collect();
        let y: Vec<f64> = x.iter().map(|&v| -0.5 * v + g.next_f64() * 2.0 + 7.0).collect();
        let mut y = y;
        // Infinities in the first half only: blocks with them and blocks without.
        for u in (0..1500).step_by(19) {
            x[u] = f64::INFINITY;
        }
        for u in (5..1500).step_by(23) {
            y[u] = f64::NEG_INFINITY;
        }
        for v in &mut x[512..768] {
            *v = f64::NEG_INFINITY;
        }
        let keep: Vec<usize> = (0..m).filter(|&u| x[u].is_finite() && y[u].is_finite()).collect();
        let k = keep.len() as f64;
        let mx = keep.iter().map(|&u| x[u]).sum::<f64>() / k;
        let my = keep.iter().map(|&u| y[u]).sum::<f64>() / k;
        let sxx: f64 = keep.iter().map(|&u| (x[u] - mx).powi(2)).sum();
        let syy: f64 = keep.iter().map(|&u| (y[u] - my).powi(2)).sum();
        let sxy: f64 = keep.iter().map(|&u| (x[u] - mx) * (y[u] - my)).sum();
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs();
        for block in [8, 64, 100, 256] {
            let c = blocked(&x, &y, block);
            assert_eq!(c.count, keep.len(), "block {block}");
            assert!(close(c.mean_x, mx) && close(c.mean_y, my), "block {block}");
            assert!(
                close(c.sxx, sxx) && close(c.syy, syy) && close(c.sxy, sxy),
                "block {block}"
            );
            let r = c.pearson();
            assert!(
                r < -0.5 && (r - pearson_finite(&x, &y)).abs() < 1e-13,
                "block {block}: {r}"
            );
        }
    }

    #[test]
    fn vector_and_unit_by_unit_co_moments_agree() {
        let mut g = SplitMix64::new(4);
        for len in [1, 7, 8, 45, 256] {
            let x: Vec<f64> = (0..len).map(|_| g.next_f64() * 4.0 - 1.0).collect();
            let y: Vec<f64> = x.iter().map(|&v| v * v + g.next_f64()).collect();
            let mut fast = CoMoments::EMPTY;
            block_co_moments(&x, &y, &mut fast);
            let slow = co_moments_of_finite(&x, &y);
            assert_eq!(
                (fast.count, fast.same_x, fast.same_y),
                (slow.count, slow.same_x, slow.same_y)
            );
            for (a, b) in [
                (fast.mean_x, slow.mean_x),
                (fast.mean_y, slow.mean_y),
                (fast.sxx, slow.sxx),
                (fast.syy, slow.syy),
                (fast.sxy, slow.sxy),
            ] {
                assert!((a - b).abs() <= 1e-13 * b.abs().max(1e-300), "len {len}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn degenerate_units_are_left_out() {
        let r = |x: &[f64], y: &[f64]| blocked(x, y, 64).pearson();
        assert!((r(&[1.0, f64::INFINITY, 2.0, 3.0], &[2.0, 5.0, 4.0, 6.5]) - 0.9979487157886732).abs() < 1e-15);
        assert!(r(&[1.0, f64::INFINITY], &[2.0, 5.0]).is_nan());
        assert!(r(&[1.0, 1.0, 1.0], &[2.0, 5.0, 3.0]).is_nan());
        // Constant over the units kept, whatever the rounding of its mean: NaN, not +-1.
        let third = 1.0 / 3.0;
        let y: Vec<f64> = (0..999).map(|u| (u % 17) as f64).collect();
        assert!(r(&vec![third; 999], &y).is_nan());
        let mut x = vec![third; 999];
        x[4] = 2.0;
        let mut y_inf = y.clone();
        y_inf[4] = f64::INFINITY;
        assert!(r(&x, &y_inf).is_nan()); // the one other value is left out
        assert!(!r(&x, &y).is_nan());
    }

    #[test]
    fn identical_units_give_nan() {
        // Every unit the same column: each half's t-map is constant, so no split has an r.
        let (n, m) = (10, 1000);
        let mut g = SplitMix64::new(2);
        let col: Vec<f64> = (0..n).map(|_| g.next_f64() - 0.3).collect();
        let data: Vec<f64> = (0..n * m).map(|k| col[k / m]).collect();
        let diffs = PairDiffs::new(&data, n, m).unwrap();
        let r = split_half(&diffs, &assignments(n, 8, 0).unwrap()).unwrap();
        assert!(r.iter().all(|v| v.is_nan()), "{r:?}");
    }
}
