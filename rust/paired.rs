//! Paired statistics per unit: mean difference, sd (n - 1), t and Cohen's d_z.
//!
//! Conventions (the same everywhere in the crate, the null and split-half included):
//!
//! * `t = mean / (sd / sqrt(n))`, `d = mean / sd = t / sqrt(n)`, computed two-pass (mean first,
//!   then squared deviations) in float64.
//! * A unit whose `n` differences are all exactly equal has `sd = 0`. If they are all 0 it has
//!   `t = d = 0` (no difference, no evidence); otherwise `t = d = +inf` or `-inf` with the sign
//!   of the difference. Constancy is decided by exact equality, not by a rounded sd, so `0.1`
//!   repeated 25 times is constant even though its float mean is not exactly `0.1`.
//!
//! Each unit is first divided by a power of two near its largest |difference|. That division is
//! exact, so results are bit-identical to the unscaled computation, but squares can no longer
//! overflow (differences up to f64::MAX work) or underflow.

use crate::PairDiffs;
use rayon::prelude::*;

/// Per-unit paired statistics, one value per unit in each vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Paired {
    /// Mean difference.
    pub mean: Vec<f64>,
    /// Standard deviation of the differences (n - 1 denominator).
    pub sd: Vec<f64>,
    /// Paired t: mean / (sd / sqrt(n)).
    pub t: Vec<f64>,
    /// Cohen's d_z: mean / sd.
    pub d: Vec<f64>,
}

/// Units handled by one task: small enough that a block of every pair stays in L2.
const UNIT_BLOCK: usize = 1024;

/// The paired statistics of every unit.
pub fn paired(diffs: &PairDiffs) -> Paired {
    let n = diffs.n_pairs();
    let m = diffs.n_units();
    let scaled = ScaledDiffs::new(diffs);
    let mut out = Paired {
        mean: vec![0.0; m],
        sd: vec![0.0; m],
        t: vec![0.0; m],
        d: vec![0.0; m],
    };
    let pairs: Vec<usize> = (0..n).collect();
    crate::threads::install(|| {
        out.mean
            .par_chunks_mut(UNIT_BLOCK)
            .zip(out.sd.par_chunks_mut(UNIT_BLOCK))
            .zip(out.t.par_chunks_mut(UNIT_BLOCK))
            .zip(out.d.par_chunks_mut(UNIT_BLOCK))
            .enumerate()
            .for_each(|(b, (((mean, sd), t), d))| {
                let u0 = b * UNIT_BLOCK;
                let u1 = u0 + mean.len();
                let rows: Vec<&[f64]> = pairs.iter().map(|&i| &scaled.pair(i)[u0..u1]).collect();
                let mut block = MomentsOut { mean, sd, t, d };
                moments(&rows, &mut block);
                for (k, u) in (u0..u1).enumerate() {
                    block.mean[k] *= scaled.scale[u];
                    block.sd[k] *= scaled.scale[u];
                }
            });
    });
    out
}

/// A copy of the differences with every unit divided by its power-of-two scale.
pub(crate) struct ScaledDiffs {
    pub data: Vec<f64>,
    pub scale: Vec<f64>,
    pub n_units: usize,
}

impl ScaledDiffs {
    pub fn new(diffs: &PairDiffs) -> Self {
        let n = diffs.n_pairs();
        let m = diffs.n_units();
        let mut max_abs = vec![0.0f64; m];
        for i in 0..n {
            for (mx, &x) in max_abs.iter_mut().zip(diffs.pair(i)) {
                let a = x.abs();
                *mx = if a > *mx { a } else { *mx };
            }
        }
        let scale: Vec<f64> = max_abs.iter().map(|&v| pow2_floor(v)).collect();
        let mut data = Vec::with_capacity(n * m);
        for i in 0..n {
            data.extend(diffs.pair(i).iter().zip(&scale).map(|(&x, &s)| x / s));
        }
        ScaledDiffs {
            data,
            scale,
            n_units: m,
        }
    }

    pub fn pair(&self, i: usize) -> &[f64] {
        &self.data[i * self.n_units..(i + 1) * self.n_units]
    }
}

/// The largest power of two not above `v` (for `v > 0` finite, subnormals included); 1 for 0.
pub(crate) fn pow2_floor(v: f64) -> f64 {
    debug_assert!(v.is_finite() && v >= 0.0);
    if v == 0.0 {
        return 1.0;
    }
    let bits = v.to_bits();
    let exponent = (bits >> 52) & 0x7ff;
    if exponent == 0 {
        let mantissa = bits & ((1u64 << 52) - 1);
        f64::from_bits(1u64 << (63 - mantissa.leading_zeros()))
    } else {
        f64::from_bits(exponent << 52)
    }
}

/// Output slices for one block of units.
pub(crate) struct MomentsOut<'a> {
    pub mean: &'a mut [f64],
    pub sd: &'a mut [f64],
    pub t: &'a mut [f64],
    pub d: &'a mut [f64],
}

crate::simd::by_isa! {
    /// Two-pass moments of the rows given (each a slice over the same block of units), with the
    /// crate's conventions for constant units. Used for all pairs ([`paired`]) and for the halves of
    /// a split (`split_half`). Blocks of a few hundred units keep the work in L1.
    pub(crate) fn moments(rows: &[&[f64]], out: &mut MomentsOut) => moments_impl
}

#[inline(always)]
fn moments_impl(rows: &[&[f64]], out: &mut MomentsOut) {
    let k = rows.len();
    debug_assert!(k >= 2);
    let w = out.mean.len();
    let kf = k as f64;
    let sqrt_k = kf.sqrt();
    let mut lo = [0.0f64; MOMENT_BLOCK];
    let mut hi = [0.0f64; MOMENT_BLOCK];
    for u0 in (0..w).step_by(MOMENT_BLOCK) {
        let bw = MOMENT_BLOCK.min(w - u0);
        let (lo, hi) = (&mut lo[..bw], &mut hi[..bw]);
        // Pass 1: sums in pair order, and min / max for exact constancy.
        let mean = &mut out.mean[u0..u0 + bw];
        let first = &rows[0][u0..u0 + bw];
        mean.copy_from_slice(first);
        lo.copy_from_slice(first);
        hi.copy_from_slice(first);
        for row in &rows[1..] {
            let row = &row[u0..u0 + bw];
            for (((s, l), h), &x) in mean.iter_mut().zip(lo.iter_mut()).zip(hi.iter_mut()).zip(row) {
                *s += x;
                *l = if x < *l { x } else { *l };
                *h = if x > *h { x } else { *h };
            }
        }
        for s in mean.iter_mut() {
            *s /= kf;
        }
        // Pass 2: squared deviations from the mean (kept in `sd` until the end).
        let ss = &mut out.sd[u0..u0 + bw];
        ss.fill(0.0);
        for row in rows {
            for ((acc, &mu), &x) in ss.iter_mut().zip(mean.iter()).zip(&row[u0..u0 + bw]) {
                let dev = x - mu;
                *acc += dev * dev;
            }
        }
        let t = &mut out.t[u0..u0 + bw];
        let d = &mut out.d[u0..u0 + bw];
        for u in 0..bw {
            let constant = lo[u] == hi[u];
            let sd = if constant { 0.0 } else { (ss[u] / (kf - 1.0)).sqrt() };
            let degenerate = if lo[u] == 0.0 {
                0.0
            } else {
                f64::INFINITY.copysign(lo[u])
            };
            let t_u = mean[u] / (sd / sqrt_k);
            let d_u = mean[u] / sd;
            ss[u] = sd;
            t[u] = if constant { degenerate } else { t_u };
            d[u] = if constant { degenerate } else { d_u };
        }
    }
}

/// Units per inner block of [`moments`]: three arrays of it stay in a 32 KiB L1.
const MOMENT_BLOCK: usize = 512;

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(col: &[f64]) -> (f64, f64, f64, f64) {
        let n = col.len() as f64;
        let mean = col.iter().sum::<f64>() / n;
        let var = col.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0);
        let sd = var.sqrt();
        (mean, sd, mean / (sd / n.sqrt()), mean / sd)
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * a.abs().max(b.abs()).max(1e-300)
    }

    #[test]
    fn matches_a_naive_loop() {
        let (n, m) = (7, 2500);
        let mut g = crate::rng::SplitMix64::new(3);
        let data: Vec<f64> = (0..n * m).map(|_| g.next_f64() * 2.0 - 0.7).collect();
        let p = paired(&PairDiffs::new(&data, n, m).unwrap());
        for u in 0..m {
            let col: Vec<f64> = (0..n).map(|i| data[i * m + u]).collect();
            let (mean, sd, t, d) = naive(&col);
            assert!(close(p.mean[u], mean) && close(p.sd[u], sd), "unit {u}");
            assert!(close(p.t[u], t) && close(p.d[u], d), "unit {u}");
        }
    }

    #[test]
    fn constant_units_follow_the_convention() {
        // Units: all zero, all 0.1, all -3, and 1e300-sized values that would overflow squares.
        let n = 4;
        let cols = [
            [0.0, 0.0, 0.0, 0.0],
            [0.1, 0.1, 0.1, 0.1],
            [-3.0, -3.0, -3.0, -3.0],
            [1e300, 2e300, 3e300, 4e300],
        ];
        let m = cols.len();
        let data: Vec<f64> = (0..n).flat_map(|i| cols.iter().map(move |c| c[i])).collect();
        let p = paired(&PairDiffs::new(&data, n, m).unwrap());
        assert_eq!((p.t[0], p.d[0], p.sd[0]), (0.0, 0.0, 0.0));
        assert_eq!((p.t[1], p.d[1], p.sd[1]), (f64::INFINITY, f64::INFINITY, 0.0));
        assert_eq!((p.t[2], p.d[2]), (f64::NEG_INFINITY, f64::NEG_INFINITY));
        // 1..4 scaled by 1e300: t = 2.5 / (1.29099 / 2) = 3.872983346207417
        assert!(close(p.t[3], 3.872983346207417), "{}", p.t[3]);
        assert!(close(p.mean[3], 2.5e300));
    }

    #[test]
    fn pow2_floor_is_a_power_of_two_not_above() {
        for &v in &[1.0, 1.5, 3.0, 1e-310, 5e-324, 1e300, f64::MAX, 0.75] {
            let p = pow2_floor(v);
            assert!(p <= v && 2.0 * p > v, "{v} -> {p}");
            assert!(p.to_bits() & ((1u64 << 52) - 1) == 0 || p < f64::MIN_POSITIVE);
        }
    }

    #[test]
    fn refuses_bad_input() {
        use crate::StatsError;
        assert!(matches!(
            PairDiffs::new(&[0.0; 4], 2, 2),
            Err(StatsError::TooFewPairs { .. })
        ));
        assert!(matches!(PairDiffs::new(&[], 3, 0), Err(StatsError::NoUnits)));
        assert!(matches!(
            PairDiffs::new(&[0.0; 5], 3, 2),
            Err(StatsError::BadLength { .. })
        ));
        let mut v = vec![1.0; 12];
        v[7] = f64::NAN;
        assert!(matches!(
            PairDiffs::new(&v, 3, 4),
            Err(StatsError::NonFinite { pair: 1, unit: 3, .. })
        ));
    }
}
