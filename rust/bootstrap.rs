//! Pair bootstrap of the headline counts: resample pairs with replacement, recount.
//!
//! Draw `b` takes `n` pair indices, each uniform in `0 .. n`, from SplitMix64 substream `b` of
//! the seed's bootstrap key ([`indices`]); draw `b` is the same whatever the number of draws.
//! For each draw every unit gets its paired t and d_z over the resampled pairs, with the
//! conventions of [`crate::paired`] (a unit whose resampled differences are all equal is
//! +/-inf if they are non-zero, 0 if they are all zero), and the draw's counts are the numbers
//! of units with |t| > c and |d| > c (strict) for each threshold. Draws run in parallel; each
//! is computed alone in a fixed order, so counts do not depend on the thread count.

use crate::paired::{moments, MomentsOut, ScaledDiffs};
use crate::rng::{self, SplitMix64};
use crate::sign_flip::Thresholds;
use crate::{PairDiffs, StatsError};
use rayon::prelude::*;

/// Mixed into the seed to keep the bootstrap stream apart from the sign-flip and split streams.
const BOOTSTRAP_TAG: u64 = 0x626f_6f74_7374_7261;
/// Units per block of the moments.
const UNIT_BLOCK: usize = 2048;

/// `[draws x n_pairs]` row-major: the pair indices of each draw.
pub fn indices(n_pairs: usize, draws: usize, seed: u64) -> Result<Vec<u32>, StatsError> {
    if n_pairs < crate::MIN_PAIRS {
        return Err(StatsError::TooFewPairs {
            n_pairs,
            needed: crate::MIN_PAIRS,
            what: "the pair bootstrap",
        });
    }
    let key = rng::mix64(seed ^ BOOTSTRAP_TAG);
    let mut out = vec![0u32; draws * n_pairs];
    for (b, row) in out.chunks_exact_mut(n_pairs).enumerate() {
        let mut g = SplitMix64::substream(key, b as u64);
        for v in row.iter_mut() {
            *v = g.below(n_pairs as u64) as u32;
        }
    }
    Ok(out)
}

/// Row-major `[draws x (t.len() + d.len())]` counts, t columns then d columns, one row per row
/// of `indices` (`[draws x n_pairs]`, each a pair index).
pub fn counts(diffs: &PairDiffs, thresholds: Thresholds, indices: &[u32]) -> Result<Vec<i64>, StatsError> {
    let n = diffs.n_pairs();
    thresholds.check()?;
    if !indices.len().is_multiple_of(n) {
        return Err(StatsError::BadLength {
            len: indices.len(),
            n_pairs: indices.len() / n,
            n_units: n,
        });
    }
    if let Some(k) = indices.iter().position(|&i| i as usize >= n) {
        return Err(StatsError::BadRange {
            start: indices[k] as u64,
            end: indices[k] as u64 + 1,
            limit: n as u64,
        });
    }
    let scaled = ScaledDiffs::new(diffs);
    let m = diffs.n_units();
    let k = thresholds.len();
    let mut out = vec![0i64; indices.len() / n * k];
    if k == 0 {
        return Ok(out);
    }
    crate::threads::install(|| {
        out.par_chunks_exact_mut(k)
            .zip(indices.par_chunks_exact(n))
            .for_each_init(
                || Work::new(m),
                |work, (row, draw)| {
                    let rows: Vec<&[f64]> = draw.iter().map(|&i| scaled.pair(i as usize)).collect();
                    work.count(&rows, thresholds, row);
                },
            );
    });
    Ok(out)
}

struct Work {
    mean: Vec<f64>,
    sd: Vec<f64>,
    t: Vec<f64>,
    d: Vec<f64>,
}

impl Work {
    fn new(m: usize) -> Self {
        let b = UNIT_BLOCK.min(m);
        Work {
            mean: vec![0.0; b],
            sd: vec![0.0; b],
            t: vec![0.0; b],
            d: vec![0.0; b],
        }
    }

    fn count(&mut self, rows: &[&[f64]], thresholds: Thresholds, out: &mut [i64]) {
        out.fill(0);
        let m = rows[0].len();
        let nt = thresholds.t.len();
        for u0 in (0..m).step_by(UNIT_BLOCK) {
            let w = UNIT_BLOCK.min(m - u0);
            let block: Vec<&[f64]> = rows.iter().map(|r| &r[u0..u0 + w]).collect();
            let mut mo = MomentsOut {
                mean: &mut self.mean[..w],
                sd: &mut self.sd[..w],
                t: &mut self.t[..w],
                d: &mut self.d[..w],
            };
            moments(&block, &mut mo);
            for (c, &thr) in thresholds.t.iter().enumerate() {
                out[c] += self.t[..w].iter().filter(|t| t.abs() > thr).count() as i64;
            }
            for (c, &thr) in thresholds.d.iter().enumerate() {
                out[nt + c] += self.d[..w].iter().filter(|d| d.abs() > thr).count() as i64;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_match_a_direct_recount() {
        let (n, m) = (9, 300);
        let mut g = SplitMix64::new(4);
        let data: Vec<f64> = (0..n * m).map(|_| g.next_f64() - 0.3).collect();
        let diffs = PairDiffs::new(&data, n, m).unwrap();
        let idx = indices(n, 50, 7).unwrap();
        let th = Thresholds {
            t: &[1.0, 3.0],
            d: &[0.5],
        };
        let c = counts(&diffs, th, &idx).unwrap();
        for (b, draw) in idx.chunks_exact(n).enumerate() {
            let picked: Vec<f64> = draw
                .iter()
                .flat_map(|&i| data[i as usize * m..(i as usize + 1) * m].to_vec())
                .collect();
            let p = crate::paired::paired(&PairDiffs::new(&picked, n, m).unwrap());
            let want = [
                p.t.iter().filter(|t| t.abs() > 1.0).count() as i64,
                p.t.iter().filter(|t| t.abs() > 3.0).count() as i64,
                p.d.iter().filter(|d| d.abs() > 0.5).count() as i64,
            ];
            assert_eq!(&c[b * 3..b * 3 + 3], &want, "draw {b}");
        }
    }

    #[test]
    fn indices_are_per_draw_and_in_range() {
        let a = indices(12, 10, 3).unwrap();
        let b = indices(12, 30, 3).unwrap();
        assert_eq!(&a[..], &b[..120]);
        assert!(b.iter().all(|&i| i < 12));
        assert_ne!(indices(12, 10, 4).unwrap(), a);
        assert!(indices(2, 10, 0).is_err());
    }
}
