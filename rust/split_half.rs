//! Split-half reliability of the per-unit t-map.
//!
//! Split `k` shuffles the pairs with a Fisher-Yates shuffle driven by SplitMix64 substream `k`
//! of the seed (so split `k` is the same whatever the number of splits asked for) and puts the
//! first floor(n/2) shuffled pairs in the first half, the other ceil(n/2) in the second. In each
//! half every unit gets its paired t (conventions of [`crate::paired`]); the split's value is the
//! Pearson r, across units, between the two t-vectors.
//!
//! Units whose t is infinite in either half (all differences of that half equal and non-zero)
//! are left out of that split's r; if fewer than two units remain, or either t-vector is
//! constant over them, r is NaN.

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
                            half_t(&half, &mut t[..w]);
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

crate::simd::by_isa! {
    /// Per-unit t over the given rows (pairs), with the arithmetic of [`crate::paired::moments`]
    /// unit by unit (sum in pair order, then squared deviations in pair order), so the same bits;
    /// but with each vector of units held in registers across the rows instead of re-read from
    /// memory per row. Constancy is decided as exactly, by another route: the spread
    /// `sum_i |x_i - x_0|` is 0 if and only if every `x_i == x_0` (for finite floats `x - y == 0`
    /// only when `x == y`, -0 and +0 included, and a sum of non-negative terms, at most 4 each
    /// after scaling, is 0 only when each is). Its subtract, mask and add vectorise cleanly,
    /// where a per-lane min / max select compiled to mask shuffles.
    fn half_t(rows: &[&[f64]], t: &mut [f64]) => half_t_impl
}

#[inline(always)]
fn half_t_impl(rows: &[&[f64]], t: &mut [f64]) {
    let w = t.len();
    let full = w / 8 * 8;
    for u0 in (0..full).step_by(8) {
        half_t_lanes::<8>(rows, u0, &mut t[u0..u0 + 8]);
    }
    for u in full..w {
        half_t_lanes::<1>(rows, u, &mut t[u..u + 1]);
    }
}

#[inline(always)]
fn half_t_lanes<const L: usize>(rows: &[&[f64]], u0: usize, t: &mut [f64]) {
    let kf = rows.len() as f64;
    let sqrt_k = kf.sqrt();
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
    // t of every lane first, branch-free (vector sqrt and divisions); constant lanes are then
    // replaced by their closed form, so their (unused) t_u does not matter.
    let mut t_u = [0.0f64; L];
    for l in 0..L {
        t_u[l] = mean[l] / ((ss[l] / (kf - 1.0)).sqrt() / sqrt_k);
    }
    for l in 0..L {
        let constant = spread[l] == 0.0;
        let degenerate = if first[l] == 0.0 {
            0.0
        } else {
            f64::INFINITY.copysign(first[l])
        };
        t[l] = if constant { degenerate } else { t_u[l] };
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
        matches_a_direct_computation(9, 400, 5, 8);
        // 25 pairs as in the probes; four whole blocks of units and a tail of 235.
        matches_a_direct_computation(25, 1259, 7, 9);
    }

    fn matches_a_direct_computation(n: usize, m: usize, splits: usize, seed: u64) {
        let mut g = SplitMix64::new(seed);
        let data: Vec<f64> = (0..n * m).map(|k| g.next_f64() + (k % m) as f64 / m as f64).collect();
        let diffs = PairDiffs::new(&data, n, m).unwrap();
        let a = assignments(n, splits, 1).unwrap();
        let r = split_half(&diffs, &a).unwrap();
        for (k, row) in a.chunks_exact(n).enumerate() {
            let t_of = |half: bool| -> Vec<f64> {
                (0..m)
                    .map(|u| {
                        let v: Vec<f64> = (0..n).filter(|&i| row[i] == half).map(|i| data[i * m + u]).collect();
                        let kf = v.len() as f64;
                        let mean = v.iter().sum::<f64>() / kf;
                        let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (kf - 1.0)).sqrt();
                        mean / (sd / kf.sqrt())
                    })
                    .collect()
            };
            let (t1, t2) = (t_of(true), t_of(false));
            let expected = pearson_finite(&t1, &t2);
            assert!((r[k] - expected).abs() < 1e-12, "{} vs {expected}", r[k]);
        }
    }

    #[test]
    fn register_blocked_t_is_moments_bit_for_bit() {
        use crate::paired::{moments, MomentsOut};
        let (n, m) = (13, 203); // a tail of 3 units past the vectors of 8
        let mut g = SplitMix64::new(5);
        let mut data: Vec<f64> = (0..n * m).map(|k| g.next_f64() * 3.0 - 1.0 + (k % 7) as f64).collect();
        for i in 0..n {
            data[i * m + 4] = 0.0; // constant 0: t = 0
            data[i * m + 9] = -1.5; // constant: t = -inf
            data[i * m + 201] = 2.5;
            // -0 and +0 are equal: constant 0 (t = 0); and a zero of either sign among others.
            data[i * m + 12] = if i % 2 == 0 { 0.0 } else { -0.0 };
            data[i * m + 13] = if i % 3 == 0 { -0.0 } else { 0.0 };
        }
        data[(n - 1) * m + 13] = 0.25;
        let rows: Vec<&[f64]> = data.chunks_exact(m).collect();
        for k in [2, 5, 12, 13] {
            let half = &rows[n - k..];
            let mut t = vec![0.0; m];
            half_t(half, &mut t);
            let (mut mean, mut sd, mut tt, mut d) = (vec![0.0; m], vec![0.0; m], vec![0.0; m], vec![0.0; m]);
            moments(
                half,
                &mut MomentsOut {
                    mean: &mut mean,
                    sd: &mut sd,
                    t: &mut tt,
                    d: &mut d,
                },
            );
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&t), bits(&tt), "k={k}");
            assert_eq!(
                (t[4], t[12], t[9], t[201]),
                (0.0, 0.0, f64::NEG_INFINITY, f64::INFINITY)
            );
            assert!(t[13].is_finite() && t[13] != 0.0, "k={k}: {}", t[13]);
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
