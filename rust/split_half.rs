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

use crate::paired::{moments, MomentsOut, ScaledDiffs};
use crate::rng::{self, SplitMix64, Stream};
use crate::{PairDiffs, StatsError};
use rayon::prelude::*;

/// Fewest pairs for a split: each half needs two pairs for an sd.
pub const MIN_SPLIT_PAIRS: usize = 4;

const UNIT_BLOCK: usize = 2048;

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
    let r = crate::threads::install(|| {
        assignments
            .par_chunks_exact(n)
            .map(|row| {
                let first: Vec<&[f64]> = (0..n).filter(|&i| row[i]).map(|i| scaled.pair(i)).collect();
                let second: Vec<&[f64]> = (0..n).filter(|&i| !row[i]).map(|i| scaled.pair(i)).collect();
                let t1 = half_t(&first, m);
                let t2 = half_t(&second, m);
                pearson_finite(&t1, &t2)
            })
            .collect()
    });
    Ok(r)
}

/// Per-unit t over the given pairs.
fn half_t(rows: &[&[f64]], m: usize) -> Vec<f64> {
    let mut t = vec![0.0; m];
    let mut mean = vec![0.0; UNIT_BLOCK.min(m)];
    let mut sd = mean.clone();
    let mut d = mean.clone();
    for (b, t_block) in t.chunks_mut(UNIT_BLOCK).enumerate() {
        let u0 = b * UNIT_BLOCK;
        let w = t_block.len();
        let block: Vec<&[f64]> = rows.iter().map(|r| &r[u0..u0 + w]).collect();
        let mut out = MomentsOut {
            mean: &mut mean[..w],
            sd: &mut sd[..w],
            t: t_block,
            d: &mut d[..w],
        };
        moments(&block, &mut out);
    }
    t
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
    fn degenerate_units_are_left_out() {
        assert!(pearson_finite(&[1.0, f64::INFINITY, 2.0, 3.0], &[2.0, 5.0, 4.0, 6.5]) > 0.9);
        assert!(pearson_finite(&[1.0, f64::INFINITY], &[2.0, 5.0]).is_nan());
        assert!(pearson_finite(&[1.0, 1.0, 1.0], &[2.0, 5.0, 3.0]).is_nan());
    }
}
