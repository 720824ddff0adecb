//! Pair bootstrap of the headline counts: resample pairs with replacement, recount.
//!
//! Draw `b` takes `n` pair indices, each uniform in `0 .. n`, from SplitMix64 substream `b` of
//! the seed's bootstrap key ([`indices`]); draw `b` is the same whatever the number of draws.
//! For each draw every unit gets its paired t and d_z over the resampled pairs, and the draw's
//! counts are the numbers of units over each threshold for the tail asked for (|t| > c two-sided,
//! t > c greater, t < -c less; the same for d; strict, NaN never counts).
//!
//! How: a draw is a vector of integer weights `w[b][j]` (how often pair `j` was taken), so its
//! sums and sums of squares over all units are two small dense products `[draws x n] x [n x
//! units]`, over differences centred on their all-pairs mean (after the exact power-of-two
//! scaling of [`crate::paired`]): `S = sum_j w x'`, `Q = sum_j w x'^2`, `mean = centre + S / n`,
//! `ss = Q - S^2 / n`. The products run in blocks of units x draws, each element summed over the
//! pairs in pair order, so the counts do not depend on the thread count or the instruction set.
//!
//! Conventions and tolerance, against the two-pass moments of [`crate::paired`]:
//!
//! * constancy is exact, as there: a unit whose resampled differences are all equal is
//!   +/-inf, or 0 when they are all 0. A draw of one distinct pair is constant everywhere; a unit
//!   with tied differences is checked by the min / max of the pairs the draw took;
//! * otherwise `ss` loses about `eps * Q / ss` relative; where `ss < Q * 1e-4` (draw mean very
//!   far from the all-pairs mean for its spread; not met by ordinary data) the draw's unit is
//!   recomputed two-pass. So t and d are within about 1e-11 relative of the two-pass values,
//!   and a count can differ from a two-pass recount only for a unit that close to a threshold.

use crate::paired::ScaledDiffs;
use crate::rng::{self, SplitMix64};
use crate::sign_flip::tallies::Tail;
use crate::sign_flip::Thresholds;
use crate::simd::Isa;
use crate::{PairDiffs, StatsError};
use rayon::prelude::*;

/// Mixed into the seed to keep the bootstrap stream apart from the sign-flip and split streams.
const BOOTSTRAP_TAG: u64 = 0x626f_6f74_7374_7261;
/// Units per block of the products (two accumulators of `DRAW_BLOCK x UNIT_BLOCK` stay in L1).
const UNIT_BLOCK: usize = 256;
/// Draws per block of the products.
const DRAW_BLOCK: usize = 8;
/// Below `ss < Q * RECOMPUTE` the sums lose too much: recompute that unit of that draw two-pass.
const RECOMPUTE: f64 = 1e-4;

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

/// Row-major `[draws x (t.len() + d.len())]` counts for `tail`, t columns then d columns, one row
/// per row of `indices` (`[draws x n_pairs]`, each a pair index).
pub fn counts(diffs: &PairDiffs, thresholds: Thresholds, indices: &[u32], tail: Tail) -> Result<Vec<i64>, StatsError> {
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
    let draws = indices.len() / n;
    let k = thresholds.len();
    let mut out = vec![0i64; draws * k];
    if k == 0 || draws == 0 {
        return Ok(out);
    }
    let prep = Prepared::new(diffs, indices);
    let m = diffs.n_units();
    let blocks: Vec<usize> = (0..m).step_by(UNIT_BLOCK).collect();
    let partial: Vec<Vec<i64>> = crate::threads::install(|| {
        blocks
            .par_iter()
            .map(|&u0| prep.block(u0, UNIT_BLOCK.min(m - u0), thresholds, tail))
            .collect()
    });
    for part in partial {
        for (o, v) in out.iter_mut().zip(part) {
            *o += v;
        }
    }
    Ok(out)
}

/// The centred differences, their squares, the weights and the tie flags of one bootstrap.
struct Prepared {
    n: usize,
    m: usize,
    /// Row stride of `xc` and `x2`: `m` rounded up to whole tiles (zero padding).
    stride: usize,
    /// Scaled differences `[n x m]` (exact, for constancy and the two-pass fallback).
    x: Vec<f64>,
    /// Centred on the all-pairs mean of each unit, and squared: `[n x stride]` each.
    xc: Vec<f64>,
    x2: Vec<f64>,
    centre: Vec<f64>,
    /// `[draws x n]`: how often each draw took each pair.
    weights: Vec<f64>,
    /// Per draw: it took a single distinct pair.
    single: Vec<bool>,
    /// Units with two pairs of exactly equal differences, in order.
    tied: Vec<usize>,
}

/// Units per register tile of the products.
const TILE: usize = 8;

impl Prepared {
    fn new(diffs: &PairDiffs, indices: &[u32]) -> Self {
        let n = diffs.n_pairs();
        let m = diffs.n_units();
        let stride = m.div_ceil(TILE) * TILE;
        let x = ScaledDiffs::new(diffs).data;
        let mut centre = vec![0.0f64; m];
        for row in x.chunks_exact(m) {
            for (c, &v) in centre.iter_mut().zip(row) {
                *c += v;
            }
        }
        for c in centre.iter_mut() {
            *c /= n as f64;
        }
        let mut xc = vec![0.0f64; n * stride];
        let mut x2 = vec![0.0f64; n * stride];
        for j in 0..n {
            for u in 0..m {
                let v = x[j * m + u] - centre[u];
                xc[j * stride + u] = v;
                x2[j * stride + u] = v * v;
            }
        }
        let draws = indices.len() / n;
        let mut weights = vec![0.0f64; draws * n];
        let mut single = vec![false; draws];
        for (b, draw) in indices.chunks_exact(n).enumerate() {
            let w = &mut weights[b * n..(b + 1) * n];
            for &i in draw {
                w[i as usize] += 1.0;
            }
            single[b] = w.iter().filter(|&&v| v > 0.0).count() == 1;
        }
        let mut tied = Vec::new();
        let mut col = vec![0.0f64; n];
        for u in 0..m {
            for (j, c) in col.iter_mut().enumerate() {
                *c = x[j * m + u];
            }
            col.sort_unstable_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
            if col.windows(2).any(|p| p[0] == p[1]) {
                tied.push(u);
            }
        }
        Prepared {
            n,
            m,
            stride,
            x,
            xc,
            x2,
            centre,
            weights,
            single,
            tied,
        }
    }

    /// Counts `[draws x k]` of units `u0 .. u0 + w` (`u0` a multiple of `TILE`), compiled for
    /// the instruction set of [`crate::simd::isa`] (the same operations, so the same bits).
    fn block(&self, u0: usize, w: usize, thresholds: Thresholds, tail: Tail) -> Vec<i64> {
        match crate::simd::isa() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: isa() checked that the CPU has these features.
            crate::simd::Isa::Avx512 => unsafe { self.block_avx512(u0, w, thresholds, tail) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            crate::simd::Isa::Avx2 => unsafe { self.block_avx2(u0, w, thresholds, tail) },
            _ => self.block_impl(u0, w, thresholds, tail, Isa::Baseline),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512dq,avx512vl")]
    unsafe fn block_avx512(&self, u0: usize, w: usize, thresholds: Thresholds, tail: Tail) -> Vec<i64> {
        self.block_impl(u0, w, thresholds, tail, Isa::Avx512)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn block_avx2(&self, u0: usize, w: usize, thresholds: Thresholds, tail: Tail) -> Vec<i64> {
        self.block_impl(u0, w, thresholds, tail, Isa::Avx2)
    }

    #[inline(always)]
    fn block_impl(&self, u0: usize, w: usize, thresholds: Thresholds, tail: Tail, isa: Isa) -> Vec<i64> {
        let k = thresholds.len();
        let draws = self.single.len();
        let mut out = vec![0i64; draws * k];
        let mut s = vec![0.0f64; DRAW_BLOCK * UNIT_BLOCK];
        let mut q = vec![0.0f64; DRAW_BLOCK * UNIT_BLOCK];
        let mut wb = vec![0.0f64; self.n * DRAW_BLOCK];
        let mut mean = vec![0.0f64; w];
        let mut var = vec![0.0f64; w];
        let lo = self.tied.partition_point(|&u| u < u0);
        let hi = self.tied.partition_point(|&u| u < u0 + w);
        let tied = &self.tied[lo..hi];
        for b0 in (0..draws).step_by(DRAW_BLOCK) {
            let nb = DRAW_BLOCK.min(draws - b0);
            // Weights of this block of draws, pair-major and zero for missing draws.
            wb.fill(0.0);
            for bi in 0..nb {
                for j in 0..self.n {
                    wb[j * DRAW_BLOCK + bi] = self.weights[(b0 + bi) * self.n + j];
                }
            }
            match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `Isa::Avx512` is only passed when isa() found AVX-512 F (block_avx512).
                Isa::Avx512 => unsafe { self.sums_avx512(u0, w, &wb, &mut s, &mut q) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `Isa::Avx2` is only passed when isa() found AVX2 (block_avx2).
                Isa::Avx2 => unsafe { self.sums_avx2(u0, w, &wb, &mut s, &mut q) },
                _ => self.sums(u0, w, &wb, &mut s, &mut q),
            }
            for bi in 0..nb {
                let b = b0 + bi;
                let sb = &s[bi * UNIT_BLOCK..bi * UNIT_BLOCK + w];
                let qb = &q[bi * UNIT_BLOCK..bi * UNIT_BLOCK + w];
                self.finish(u0, b, sb, qb, tied, &mut mean, &mut var);
                count_into(&mean, &var, self.n, thresholds, tail, &mut out[b * k..(b + 1) * k]);
            }
        }
        out
    }

    /// `S`, `Q` of `DRAW_BLOCK` draws (weights `wb`, pair-major) over units `u0 .. u0 + w`:
    /// register tiles of `TILE` units x `DRAW_BLOCK` draws, each element summed in pair order
    /// (no fused multiply-adds: the same bits on every instruction set).
    #[inline(always)]
    fn sums(&self, u0: usize, w: usize, wb: &[f64], s: &mut [f64], q: &mut [f64]) {
        let stride = self.stride;
        for v0 in (0..w).step_by(TILE) {
            let mut acc = [[0.0f64; TILE]; 2 * DRAW_BLOCK];
            for (j, wj) in wb.chunks_exact(DRAW_BLOCK).enumerate() {
                let at = j * stride + u0 + v0;
                let xr: &[f64; TILE] = self.xc[at..at + TILE].try_into().expect("tile");
                let x2r: &[f64; TILE] = self.x2[at..at + TILE].try_into().expect("tile");
                let (sa, qa) = acc.split_at_mut(DRAW_BLOCK);
                for ((sb, qb), &wt) in sa.iter_mut().zip(qa.iter_mut()).zip(wj) {
                    axpy(sb, wt, xr);
                    axpy(qb, wt, x2r);
                }
            }
            let width = TILE.min(w - v0);
            for bi in 0..DRAW_BLOCK {
                s[bi * UNIT_BLOCK + v0..bi * UNIT_BLOCK + v0 + width].copy_from_slice(&acc[bi][..width]);
                q[bi * UNIT_BLOCK + v0..bi * UNIT_BLOCK + v0 + width].copy_from_slice(&acc[DRAW_BLOCK + bi][..width]);
            }
        }
    }

    /// [`Self::sums`] with AVX-512 registers: per tile of 8 units, the `DRAW_BLOCK` draws' S and
    /// Q stay in 16 registers over all pairs (the same multiplies and adds in the same order).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn sums_avx512(&self, u0: usize, w: usize, wb: &[f64], s: &mut [f64], q: &mut [f64]) {
        use std::arch::x86_64::*;
        const _: () = assert!(TILE == 8 && DRAW_BLOCK == 8);
        let stride = self.stride;
        let n = self.n;
        let mut lane_s = [0.0f64; TILE];
        let mut lane_q = [0.0f64; TILE];
        for v0 in (0..w).step_by(TILE) {
            let mut acc_s = [_mm512_setzero_pd(); DRAW_BLOCK];
            let mut acc_q = [_mm512_setzero_pd(); DRAW_BLOCK];
            for j in 0..n {
                let at = j * stride + u0 + v0;
                debug_assert!(at + TILE <= self.xc.len());
                // SAFETY: `at + TILE <= n * stride` (rows are padded to whole tiles).
                let x = unsafe { _mm512_loadu_pd(self.xc.as_ptr().add(at)) };
                let x2 = unsafe { _mm512_loadu_pd(self.x2.as_ptr().add(at)) };
                let wj = &wb[j * DRAW_BLOCK..(j + 1) * DRAW_BLOCK];
                for bi in 0..DRAW_BLOCK {
                    let wt = _mm512_set1_pd(wj[bi]);
                    acc_s[bi] = _mm512_add_pd(acc_s[bi], _mm512_mul_pd(wt, x));
                    acc_q[bi] = _mm512_add_pd(acc_q[bi], _mm512_mul_pd(wt, x2));
                }
            }
            let width = TILE.min(w - v0);
            for bi in 0..DRAW_BLOCK {
                // SAFETY: the lane arrays hold TILE float64.
                unsafe {
                    _mm512_storeu_pd(lane_s.as_mut_ptr(), acc_s[bi]);
                    _mm512_storeu_pd(lane_q.as_mut_ptr(), acc_q[bi]);
                }
                s[bi * UNIT_BLOCK + v0..bi * UNIT_BLOCK + v0 + width].copy_from_slice(&lane_s[..width]);
                q[bi * UNIT_BLOCK + v0..bi * UNIT_BLOCK + v0 + width].copy_from_slice(&lane_q[..width]);
            }
        }
    }

    /// [`Self::sums`] with AVX2: 4 units a register, so one tile's 2 x `DRAW_BLOCK` sums would
    /// need 32 of the 16 registers; instead each half tile (4 units) sums S, then Q, with the
    /// `DRAW_BLOCK` accumulators in registers over all pairs (the same multiplies and adds in the
    /// same order per element, so the same bits).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn sums_avx2(&self, u0: usize, w: usize, wb: &[f64], s: &mut [f64], q: &mut [f64]) {
        use std::arch::x86_64::*;
        const HALF: usize = TILE / 2;
        const _: () = assert!(TILE == 8 && DRAW_BLOCK == 8);
        let stride = self.stride;
        let n = self.n;
        let mut lanes = [0.0f64; HALF];
        for v0 in (0..w).step_by(TILE) {
            let width = TILE.min(w - v0);
            for h in (0..width).step_by(HALF) {
                let part = HALF.min(width - h);
                for (data, out) in [(&self.xc, &mut *s), (&self.x2, &mut *q)] {
                    let mut acc = [_mm256_setzero_pd(); DRAW_BLOCK];
                    for j in 0..n {
                        let at = j * stride + u0 + v0 + h;
                        debug_assert!(at + HALF <= data.len());
                        // SAFETY: `at + HALF <= n * stride` (rows are padded to whole tiles).
                        let x = unsafe { _mm256_loadu_pd(data.as_ptr().add(at)) };
                        let wj = &wb[j * DRAW_BLOCK..(j + 1) * DRAW_BLOCK];
                        for bi in 0..DRAW_BLOCK {
                            acc[bi] = _mm256_add_pd(acc[bi], _mm256_mul_pd(_mm256_set1_pd(wj[bi]), x));
                        }
                    }
                    for (bi, a) in acc.iter().enumerate() {
                        // SAFETY: `lanes` holds HALF float64.
                        unsafe { _mm256_storeu_pd(lanes.as_mut_ptr(), *a) };
                        let at = bi * UNIT_BLOCK + v0 + h;
                        out[at..at + part].copy_from_slice(&lanes[..part]);
                    }
                }
            }
        }
    }

    /// Per unit of the block, draw `b`'s mean and variance (n - 1) from its sums (see the module
    /// docs); `tied`: the block's units with tied differences. A constant unit gets variance 0 and
    /// mean 0 (all zero) or +/-1 (the sign of its value): its t and d are then 0 or +/-inf.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn finish(&self, u0: usize, b: usize, s: &[f64], q: &[f64], tied: &[usize], mean: &mut [f64], var: &mut [f64]) {
        let nf = self.n as f64;
        let inv_n = 1.0 / nf;
        let inv_df = 1.0 / (nf - 1.0);
        let centre = &self.centre[u0..u0 + s.len()];
        let mut refine = false;
        for ((((mu, vu), &su), &qu), &c) in mean.iter_mut().zip(var.iter_mut()).zip(s).zip(q).zip(centre) {
            let ss = qu - su * su * inv_n;
            refine |= too_close(ss, qu);
            *mu = c + su * inv_n;
            *vu = ss.max(0.0) * inv_df;
        }
        let wts = &self.weights[b * self.n..(b + 1) * self.n];
        if refine {
            for i in 0..s.len() {
                if too_close(q[i] - s[i] * s[i] * inv_n, q[i]) {
                    let (m, ss) = self.two_pass(u0 + i, wts);
                    (mean[i], var[i]) = (m, ss.max(0.0) * inv_df);
                }
            }
        }
        let mut constant = |u: usize| {
            if let Some(v) = self.constant_value(u, wts) {
                let sign = if v == 0.0 { 0.0 } else { 1.0f64.copysign(v) };
                (mean[u - u0], var[u - u0]) = (sign, 0.0);
            }
        };
        if self.single[b] {
            (u0..u0 + s.len()).for_each(&mut constant);
        } else {
            tied.iter().copied().for_each(constant);
        }
    }

    /// The common value of unit `u` over the pairs with non-zero weight, if they all agree.
    fn constant_value(&self, u: usize, wts: &[f64]) -> Option<f64> {
        let mut first: Option<f64> = None;
        for (j, &wt) in wts.iter().enumerate() {
            if wt == 0.0 {
                continue;
            }
            let v = self.x[j * self.m + u];
            match first {
                None => first = Some(v),
                Some(f) if f != v => return None,
                _ => {}
            }
        }
        first
    }

    /// Weighted two-pass mean and sum of squared deviations of unit `u` (scaled units).
    fn two_pass(&self, u: usize, wts: &[f64]) -> (f64, f64) {
        let nf = self.n as f64;
        let col = |j: usize| self.x[j * self.m + u];
        let mean = wts.iter().enumerate().map(|(j, &wt)| wt * col(j)).sum::<f64>() / nf;
        let ss = wts
            .iter()
            .enumerate()
            .map(|(j, &wt)| {
                let dev = col(j) - mean;
                wt * dev * dev
            })
            .sum::<f64>();
        (mean, ss)
    }
}

/// Whether `ss` lost too much to cancellation (below `q * RECOMPUTE`, or NaN): recompute two-pass.
#[inline(always)]
fn too_close(ss: f64, q: f64) -> bool {
    ss.partial_cmp(&(q * RECOMPUTE)).is_none_or(|o| o.is_lt())
}

/// `acc += w * x`, lane by lane (a multiply and an add: no fused multiply-add).
#[inline(always)]
fn axpy(acc: &mut [f64; TILE], w: f64, x: &[f64; TILE]) {
    for (a, &v) in acc.iter_mut().zip(x) {
        *a += w * v;
    }
}

/// Adds the units over each threshold for `tail` to `out` (t columns, then d), from each unit's
/// mean and variance over `n` pairs: |t| > c as `mean^2 n > c^2 var` and |d| > c as `mean^2 > c^2
/// var` (no square root or division; one-sided tails also ask the mean's sign). Variance 0 with
/// mean +/-1 is t = d = +/-inf (over every threshold on its side), mean 0 never counts (t = 0 or NaN).
#[inline(always)]
fn count_into(mean: &[f64], var: &[f64], n: usize, thresholds: Thresholds, tail: Tail, out: &mut [i64]) {
    let nt = thresholds.t.len();
    let nf = n as f64;
    // The side test as a sign: m * sign > 0 (one-sided) or m != 0 (two-sided), branch-free.
    let sign = match tail {
        Tail::Two => 0.0,
        Tail::Greater => 1.0,
        Tail::Less => -1.0,
    };
    let over = |scale: f64, c: f64| -> i64 {
        let c2 = c * c;
        mean.iter()
            .zip(var)
            .map(|(&m, &v)| {
                let side = if sign == 0.0 { m != 0.0 } else { m * sign > 0.0 };
                (side & ((m * m * scale > c2 * v) | (v == 0.0))) as i64
            })
            .sum()
    };
    for (col, &c) in thresholds.t.iter().enumerate() {
        out[col] += over(nf, c);
    }
    for (col, &c) in thresholds.d.iter().enumerate() {
        out[nt + col] += over(1.0, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts of a direct recount: each draw's pairs gathered and run through `paired`.
    fn recount(data: &[f64], n: usize, m: usize, idx: &[u32], th: Thresholds, tail: Tail) -> Vec<i64> {
        let mut out = Vec::new();
        for draw in idx.chunks_exact(n) {
            let picked: Vec<f64> = draw
                .iter()
                .flat_map(|&i| data[i as usize * m..(i as usize + 1) * m].to_vec())
                .collect();
            let p = crate::paired::paired(&PairDiffs::new(&picked, n, m).unwrap());
            let over = |v: f64, c: f64| match tail {
                Tail::Two => v.abs() > c,
                Tail::Greater => v > c,
                Tail::Less => v < -c,
            };
            out.extend(th.t.iter().map(|&c| p.t.iter().filter(|&&v| over(v, c)).count() as i64));
            out.extend(th.d.iter().map(|&c| p.d.iter().filter(|&&v| over(v, c)).count() as i64));
        }
        out
    }

    #[test]
    fn counts_match_a_direct_recount_for_every_tail() {
        let (n, m) = (9, 600);
        let mut data = crate::rng::uniform_data(n * m, 4, 0.3);
        // Ties: unit 0 constant 2, unit 1 zero but two pairs, unit 2 two values, unit 3 all zero,
        // unit 4 far from zero with a small spread (cancellation in Q - S^2 / n).
        for j in 0..n {
            data[j * m] = 2.0;
            data[j * m + 1] = [0.0, 0.0, 0.0, 0.5, 0.0, -0.3, 0.0, 0.0, 0.0][j];
            data[j * m + 2] = if j % 3 == 0 { -1.1 } else { 0.2371 };
            data[j * m + 3] = 0.0;
            data[j * m + 4] = 1e7 + (j as f64) * 1e-3 - if j == 0 { 1e6 } else { 0.0 };
        }
        let diffs = PairDiffs::new(&data, n, m).unwrap();
        let idx = indices(n, 300, 7).unwrap();
        // Not 1.0: one non-zero difference among zeros has |t| = 1 exactly, a tie that two float
        // routes may put on either side (see the module docs).
        let th = Thresholds {
            t: &[1.3, 3.0],
            d: &[0.5],
        };
        for tail in [Tail::Two, Tail::Greater, Tail::Less] {
            let c = counts(&diffs, th, &idx, tail).unwrap();
            let want = recount(&data, n, m, &idx, th, tail);
            let bad: Vec<usize> = (0..c.len()).filter(|&i| c[i] != want[i]).collect();
            assert!(bad.is_empty(), "{tail:?}: entries {bad:?} differ");
        }
    }

    #[test]
    fn a_draw_of_one_pair_is_constant_everywhere() {
        let (n, m) = (4, 5);
        let data: Vec<f64> = (0..n * m).map(|i| (i as f64 * 0.37).sin()).collect();
        let diffs = PairDiffs::new(&data, n, m).unwrap();
        let idx = vec![2u32; n]; // pair 2 four times
        let th = Thresholds { t: &[1e300], d: &[] };
        let c = counts(&diffs, th, &idx, Tail::Two).unwrap();
        let nonzero = data[2 * m..3 * m].iter().filter(|v| **v != 0.0).count() as i64;
        assert_eq!(c, vec![nonzero]); // +/-inf over any threshold
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
