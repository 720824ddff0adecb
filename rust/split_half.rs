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
    // Unit blocks outside (each block's data stays in L1/L2 for all splits), splits inside;
    // the t-maps are kept block-major, `[block][split][unit in block]`.
    let n_blocks = m.div_ceil(UNIT_BLOCK).max(1);
    let span = n_splits * UNIT_BLOCK;
    let mut t1 = vec![0.0f64; n_blocks * span];
    let mut t2 = vec![0.0f64; n_blocks * span];
    crate::threads::install(|| {
        t1.par_chunks_mut(span)
            .zip(t2.par_chunks_mut(span))
            .enumerate()
            .for_each(|(b, (t1, t2))| {
                let u0 = b * UNIT_BLOCK;
                let w = UNIT_BLOCK.min(m - u0.min(m));
                let rows: Vec<&[f64]> = (0..n).map(|i| &scaled.pair(i)[u0..u0 + w]).collect();
                let mut half: Vec<&[f64]> = Vec::with_capacity(n);
                for (s, (first, second)) in halves.iter().enumerate() {
                    for (pairs, t) in [(first, &mut *t1), (second, &mut *t2)] {
                        half.clear();
                        half.extend(pairs.iter().map(|&i| rows[i]));
                        half_t(&half, &mut t[s * UNIT_BLOCK..s * UNIT_BLOCK + w]);
                    }
                }
            });
    });
    let gather = |t: &[f64], s: usize| -> Vec<f64> {
        let mut v = Vec::with_capacity(m);
        for b in 0..n_blocks {
            let u0 = b * UNIT_BLOCK;
            let w = UNIT_BLOCK.min(m - u0.min(m));
            let at = b * span + s * UNIT_BLOCK;
            v.extend_from_slice(&t[at..at + w]);
        }
        v
    };
    let r = crate::threads::install(|| {
        (0..n_splits)
            .into_par_iter()
            .map(|s| pearson_finite(&gather(&t1, s), &gather(&t2, s)))
            .collect()
    });
    Ok(r)
}

crate::simd::by_isa! {
    /// Per-unit t over the given rows (pairs), exactly the arithmetic of
    /// [`crate::paired::moments`] unit by unit (sum in pair order, min / max for constancy, then
    /// squared deviations in pair order), so the same bits; but with each vector of units held in
    /// registers across the rows instead of re-read from memory per row.
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
    let (mut sum, mut lo, mut hi) = (first, first, first);
    for row in &rows[1..] {
        let x = at(row);
        for l in 0..L {
            sum[l] += x[l];
            lo[l] = if x[l] < lo[l] { x[l] } else { lo[l] };
            hi[l] = if x[l] > hi[l] { x[l] } else { hi[l] };
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
        let constant = lo[l] == hi[l];
        let degenerate = if lo[l] == 0.0 {
            0.0
        } else {
            f64::INFINITY.copysign(lo[l])
        };
        t[l] = if constant { degenerate } else { t_u[l] };
    }
}

/// Pearson r over the units where both values are finite (two-pass, fixed order).
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let (n, m) = (9, 400);
        let mut g = SplitMix64::new(8);
        let data: Vec<f64> = (0..n * m).map(|k| g.next_f64() + (k % m) as f64 / m as f64).collect();
        let diffs = PairDiffs::new(&data, n, m).unwrap();
        let a = assignments(n, 5, 1).unwrap();
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
        }
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
        }
    }

    #[test]
    fn degenerate_units_are_left_out() {
        assert!(pearson_finite(&[1.0, f64::INFINITY, 2.0, 3.0], &[2.0, 5.0, 4.0, 6.5]) > 0.9);
        assert!(pearson_finite(&[1.0, f64::INFINITY], &[2.0, 5.0]).is_nan());
        assert!(pearson_finite(&[1.0, 1.0, 1.0], &[2.0, 5.0, 3.0]).is_nan());
    }
}
