//! The hot loops, compiled once per instruction set and chosen at run time ([`crate::simd`]).
//!
//! Every `unsafe` block and every intrinsic of the sign-flip null lives in this file.

use super::tables::{build_group_entries, build_group_tables, BlockTables};
use super::*;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use crate::simd::{isa, Isa};

/// Patterns per leaf of the AVX2 exact kernel (a multiple of [`AVX2_SWEEP`]).
const AVX2_LEAF: usize = 32;

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

/// Where one kernel call's patterns come from.
#[derive(Clone, Copy)]
pub(super) enum Patterns<'a> {
    /// Exact patterns `start .. end`: a pattern's bytes are its number's, little-endian.
    Range { start: u64, end: u64 },
    /// Monte Carlo (or identity) patterns: one row of `prep.groups.len()` bytes each.
    Bytes(&'a [u8]),
}

/// One kernel call: the data, one pass of thresholds, the patterns, and the outputs (added to).
pub(super) struct Job<'a> {
    pub(super) prep: &'a Prepared,
    /// The ratio thresholds of this pass (at most [`MAX_K`]).
    pub(super) ratios: &'a [f64],
    pub(super) patterns: Patterns<'a>,
    /// Counts above each threshold, per cell, added to. Exact: `[cells x k_stride x len]`
    /// (a leaf's patterns adjacent); Monte Carlo: `[len x cells x k_stride]`. Threshold `k` of
    /// the pass is row `k` of the `k_stride >= ratios.len()`, so that passes share one buffer.
    pub(super) counts: &'a mut [u32],
    pub(super) k_stride: usize,
    /// Max S^2 over the units, per pattern, raised in place (with `signed`: the max of S).
    pub(super) max_ratio: &'a mut [f64],
    pub(super) scratch: &'a mut Scratch,
    /// Also the signed outputs of the one-sided tallies (exact and Monte Carlo kernels).
    pub(super) signed: Option<SignedOut<'a>>,
}

/// What the kernels add for the one-sided tallies (`SIGNED`): per cell and threshold the units with
/// S > 0 over it (laid out as `Job::counts`; those with S < 0 are the rest), and per pattern
/// the min of S (lowered in place). `Job::max_ratio` then holds the max of S, not of S^2.
pub(super) struct SignedOut<'a> {
    pub(super) pos: &'a mut [u32],
    pub(super) min_s: &'a mut [f64],
}

/// Lookup-table memory that one thread's kernel calls reuse (megabytes a call).
#[derive(Default)]
pub(super) struct Scratch {
    exact: Option<BlockTables>,
    monte_carlo: Vec<f64>,
}

/// Runs a kernel call with the instruction set this process uses.
pub(super) fn run(job: &mut Job) {
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() checked that the CPU has these features.
        Isa::Avx512 => unsafe { run_avx512(job) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { run_avx2(job) },
        _ => run_isa::<BASELINE>(job),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vl,popcnt")]
unsafe fn run_avx512(job: &mut Job) {
    run_isa::<AVX512>(job)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,popcnt")]
unsafe fn run_avx2(job: &mut Job) {
    run_isa::<AVX2>(job)
}

/// The kernel for the patterns' kind, the thresholds' number and (Monte Carlo) the groups'
/// number, compiled for instruction set `V`; exact leaves of 32 patterns (8 on the baseline).
#[inline(always)]
fn run_isa<const V: u8>(job: &mut Job) {
    let k = job.ratios.len();
    match (job.patterns, job.prep.groups.len()) {
        (Patterns::Range { .. }, _) if job.signed.is_some() => match V {
            AVX512 => with_k!(k, exact_impl::<V, 32, true>, (job)),
            AVX2 => with_k!(k, exact_impl::<V, AVX2_LEAF, true>, (job)),
            _ => with_k!(k, exact_impl::<V, 8, true>, (job)),
        },
        (Patterns::Range { .. }, _) if V == AVX512 => with_k!(k, exact_impl::<V, 32, false>, (job)),
        (Patterns::Range { .. }, _) if V == AVX2 => with_k!(k, exact_impl::<V, AVX2_LEAF, false>, (job)),
        (Patterns::Range { .. }, _) => with_k!(k, exact_impl::<V, 8, false>, (job)),
        // Signed: the groups looped at run time (their number is not a type parameter).
        (Patterns::Bytes(_), _) if job.signed.is_some() => with_k!(k, mc_impl::<V, 0, true>, (job)),
        (Patterns::Bytes(_), 1) => with_k!(k, mc_impl::<V, 1, false>, (job)),
        (Patterns::Bytes(_), 2) => with_k!(k, mc_impl::<V, 2, false>, (job)),
        (Patterns::Bytes(_), 3) => with_k!(k, mc_impl::<V, 3, false>, (job)),
        (Patterns::Bytes(_), 4) => with_k!(k, mc_impl::<V, 4, false>, (job)),
        (Patterns::Bytes(_), _) => with_k!(k, mc_impl::<V, 0, false>, (job)),
    }
}

/// Level 1 of the exact kernel for one high-byte value: the block's units whose `|B| + R` can
/// reach the skip level, in order, into `kept` (`LANES` entries longer than `base`), and the
/// largest `|B| + R` of the others, per lane, into `bound`. Returns how many are kept.
#[inline(always)]
fn level1<const V: u8>(base: &[f64], radius: &[f64], skip: f64, kept: &mut [u32], bound: &mut [f64; LANES]) -> usize {
    assert!(base.len() == radius.len() && base.len().is_multiple_of(LANES) && kept.len() >= base.len() + LANES);
    #[cfg(target_arch = "x86_64")]
    if V == AVX2 || V == AVX512 {
        // SAFETY: V names the features of the function this is compiled (and run) in; AVX-512F
        // implies AVX2.
        return unsafe { level1_avx2(base, radius, skip, kept, bound) };
    }
    let mut len = 0;
    for (c, (b, rad)) in base.chunks_exact(LANES).zip(radius.chunks_exact(LANES)).enumerate() {
        for l in 0..LANES {
            let r = b[l].abs() + rad[l];
            bound[l] = max_if_skipped(bound[l], r, skip);
            kept[len] = (c * LANES + l) as u32;
            len += (r > skip) as usize;
        }
    }
    len
}

/// Eight lists of units (one per leaf), `row` apart in `units`, and their lengths.
struct Lists<'a> {
    units: &'a mut [u32],
    len: &'a mut [usize; 8],
    row: usize,
}

/// Level 2 for leaves `q0 .. q0 + 8`: each unit of `units` (left by level 1) goes onto the
/// list of every leaf where `|B + P_leaf| + R_leaf` can reach the skip level; the largest such
/// bound of the leaves where it cannot raises `bound` (per leaf of the eight).
#[inline(always)]
fn level2<const V: u8>(
    units: &[u32],
    base: &[f64],
    tables: &BlockTables,
    q0: usize,
    skip: f64,
    lists: Lists,
    bound: &mut [f64; 8],
) {
    let row = tables.leaf_row;
    let mut lens = [0usize; 8];
    for &u in units {
        let (b, radius) = (base[u as usize], tables.leaf_radius[u as usize]);
        let at = u as usize * row + q0;
        let offsets: &[f64; 8] = tables.leaf_offset[at..at + 8].try_into().unwrap();
        let mut mask = 0u32;
        #[cfg(target_arch = "x86_64")]
        if V == AVX2 || V == AVX512 {
            // SAFETY: V names the features of the function this is compiled (and run) in;
            // AVX-512F implies AVX2.
            mask = unsafe { leaf_reach_avx2(b, radius, offsets, skip, bound) };
        }
        if V == BASELINE {
            for l in 0..8 {
                let r = (b + offsets[l]).abs() + radius;
                bound[l] = max_if_skipped(bound[l], r, skip);
                mask |= ((r > skip) as u32) << l;
            }
        }
        for (l, len) in lens.iter_mut().enumerate() {
            lists.units[l * lists.row + *len] = u;
            *len += (mask >> l & 1) as usize;
        }
    }
    *lists.len = lens;
}

/// One unit's `|B + P_leaf| + R_leaf` for eight leaves: the mask of those above the skip
/// level; the others raise `bound` (as [`max_if_skipped`]: NaN offsets, padding, do neither).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn leaf_reach_avx2(b: f64, radius: f64, offsets: &[f64; 8], skip: f64, bound: &mut [f64; 8]) -> u32 {
    let (bv, rv, sk) = (_mm256_set1_pd(b), _mm256_set1_pd(radius), _mm256_set1_pd(skip));
    let (sign, none) = (_mm256_set1_pd(-0.0), _mm256_set1_pd(f64::NEG_INFINITY));
    let mut mask = 0u32;
    for v in 0..2 {
        // SAFETY: offsets and bound hold 8 values, 4 * v + 4 <= 8.
        let o = unsafe { _mm256_loadu_pd(offsets.as_ptr().add(4 * v)) };
        let r = _mm256_add_pd(_mm256_andnot_pd(sign, _mm256_add_pd(bv, o)), rv);
        let above = _mm256_cmp_pd::<_CMP_GT_OQ>(r, sk);
        let kept = _mm256_blendv_pd(r, none, above);
        unsafe {
            let at = bound.as_mut_ptr().add(4 * v);
            _mm256_storeu_pd(at, _mm256_max_pd(kept, _mm256_loadu_pd(at)));
        }
        mask |= (_mm256_movemask_pd(above) as u32) << (4 * v);
    }
    mask
}

/// For each 8-bit mask, the positions of its set bits, in order (then zeros).
const LEFT_PACK: [[u32; 8]; 256] = {
    let mut table = [[0u32; 8]; 256];
    let mut m = 0;
    while m < 256 {
        let (mut bit, mut at) = (0, 0);
        while bit < 8 {
            if m >> bit & 1 == 1 {
                table[m][at] = bit as u32;
                at += 1;
            }
            bit += 1;
        }
        m += 1;
    }
    table
};

/// [`level1`] with AVX2: eight units at a time, the kept ones' indices left-packed by one
/// permutation from [`LEFT_PACK`] and stored together (branch-free, no per-unit store).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,popcnt")]
#[inline]
unsafe fn level1_avx2(base: &[f64], radius: &[f64], skip: f64, kept: &mut [u32], bound: &mut [f64; LANES]) -> usize {
    let sign = _mm256_set1_pd(-0.0);
    let (sk, none) = (_mm256_set1_pd(skip), _mm256_set1_pd(f64::NEG_INFINITY));
    // SAFETY (every load and store here): `bound` holds 8 values; `base` and `radius` hold
    // whole chunks of 8 from `c * 8`; `kept` holds `base.len() + 8` entries, and `len <= c * 8`.
    let mut bd = unsafe { [_mm256_loadu_pd(bound.as_ptr()), _mm256_loadu_pd(bound.as_ptr().add(4))] };
    let mut len = 0usize;
    for c in 0..base.len() / LANES {
        let mut mask = 0usize;
        for (v, bd) in bd.iter_mut().enumerate() {
            let at = c * LANES + 4 * v;
            let (b, r) = unsafe {
                (
                    _mm256_loadu_pd(base.as_ptr().add(at)),
                    _mm256_loadu_pd(radius.as_ptr().add(at)),
                )
            };
            let reach = _mm256_add_pd(_mm256_andnot_pd(sign, b), r);
            let above = _mm256_cmp_pd::<_CMP_GT_OQ>(reach, sk);
            // max_if_skipped, lane by lane: the reach where it is not above the skip level.
            *bd = _mm256_max_pd(_mm256_blendv_pd(reach, none, above), *bd);
            mask |= (_mm256_movemask_pd(above) as usize) << (4 * v);
        }
        let order = unsafe { _mm256_loadu_si256(LEFT_PACK[mask].as_ptr().cast()) };
        let units = _mm256_add_epi32(order, _mm256_set1_epi32((c * LANES) as i32));
        unsafe { _mm256_storeu_si256(kept.as_mut_ptr().add(len).cast(), units) };
        len += mask.count_ones() as usize;
    }
    unsafe {
        _mm256_storeu_pd(bound.as_mut_ptr(), bd[0]);
        _mm256_storeu_pd(bound.as_mut_ptr().add(4), bd[1]);
    }
    len
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

/// Exact mode over patterns `start .. end` (one task). `counts` is laid out `[cells x
/// k_stride x patterns]` (a leaf's patterns are adjacent, so its counts are added as vectors
/// and touch a few cache lines; the Monte Carlo kernel's rows are `[patterns x cells x
/// k_stride]`).
///
/// Round 1: unit blocks outside, high-byte values `h` inside. Units whose `|B| + R` cannot
/// reach the skip level are dropped for the whole `h`; the rest are filtered again per leaf
/// (`A` consecutive low-byte patterns) with `|B + P_leaf| + R_leaf`, and each leaf is swept
/// over its own units, one lane per pattern. Round 2 revisits the (block, h) whose skipped
/// units could hold a pattern's max (only when no unit reached the skip level there).
#[inline(always)]
fn exact_impl<const V: u8, const A: usize, const SIGNED: bool, const K: usize>(job: &mut Job) {
    let Patterns::Range { start, end } = job.patterns else {
        unreachable!("exact kernel on Monte Carlo patterns")
    };
    let (prep, k_stride) = (job.prep, job.k_stride);
    let (counts, max_ratio) = (&mut *job.counts, &mut *job.max_ratio);
    let (pos_rows, min_rows): (&mut [u32], &mut [f64]) = match &mut job.signed {
        Some(out) => (&mut *out.pos, &mut *out.min_s),
        None => (&mut [], &mut []),
    };
    let thr: [f64; K] = job.ratios.try_into().unwrap();
    let low = prep.groups[0];
    let n_low = 1usize << low.bits;
    let stride = n_low.max(A);
    let leaf_bits = (A.trailing_zeros() as usize).min(low.bits);
    let ub = EXACT_UNIT_BLOCK.min(prep.m_pad);
    let n_blocks = prep.m_pad.div_ceil(ub);
    let len_task = (end - start) as usize;
    let h_first = start >> low.bits;
    let n_h = ((((end - 1) >> low.bits) + 1) - h_first) as usize;
    let skip = prep.skip_below;
    let tables = BlockTables::reuse(&mut job.scratch.exact, prep, ub, stride, leaf_bits);
    let n_leaf = tables.n_leaf;
    let leaf_row = tables.leaf_row;
    let mut base = vec![0.0f64; ub];
    let mut h_units = vec![0u32; ub + LANES];
    let mut leaf_units = vec![0u32; leaf_row * ub];
    let mut leaf_len = vec![0usize; leaf_row];
    let (mut all_units, mut first_units) = (vec![0u32; ub], vec![0u32; ub]);
    // One leaf's maxima and counts per pattern (see the sweeps), reused leaf after leaf; signed:
    // also its minima and counts of S > 0.
    let mut out = LeafOut::<A, K> {
        mx: [0.0; A],
        cnt: [[0; A]; K],
        mn: [0.0; A],
        cpos: [[0; A]; K],
    };
    // A unit whose |S| bound in a leaf is at most this is below the second threshold there.
    let second = thr.get(1).map_or(f64::INFINITY, |&r| r.sqrt() - SKIP_MARGIN);
    // Per (block, h): the largest bound on |S| among the units skipped there (-inf: none).
    let mut skipped = vec![f64::NEG_INFINITY; n_blocks * n_h];
    let a_range = |h: u64| {
        let j_base = h << low.bits;
        (
            start.saturating_sub(j_base) as usize,
            ((end - j_base) as usize).min(n_low),
        )
    };

    let n_cells = prep.cells.len();
    let mut segs: Vec<(usize, u32)> = Vec::with_capacity(n_cells);
    for (bi, u0) in (0..prep.m_pad).step_by(ub).enumerate() {
        let w = ub.min(prep.m_pad - u0);
        tables.build(prep, u0, w);
        // The cells of this block: (cell, first local unit past it).
        segs.clear();
        for (c, &(lo, hi)) in prep.cells.iter().enumerate() {
            if lo < u0 + w && hi > u0 {
                segs.push((c, (hi.min(u0 + w) - u0) as u32));
            }
        }
        for hi in 0..n_h {
            let h = h_first + hi as u64;
            tables.base(prep, u0, w, h, &mut base);
            // Level 1, whole h: |B| + R against the skip level (branch-free).
            let mut bound_lanes = [f64::NEG_INFINITY; LANES];
            let h_len = level1::<V>(&base[..w], &tables.radius[..w], skip, &mut h_units, &mut bound_lanes);
            // Level 2, per leaf: |B + P_leaf| + R_leaf over the units left by level 1, eight
            // leaves at a time (a unit's leaf offsets are adjacent, and the eight lists'
            // lengths stay in registers; padding leaves have NaN offsets: never kept).
            let mut leaf_bound = [f64::NEG_INFINITY; 8];
            for q0 in (0..leaf_row).step_by(8) {
                let lists = Lists {
                    units: &mut leaf_units[q0 * ub..(q0 + 8) * ub],
                    len: (&mut leaf_len[q0..q0 + 8]).try_into().unwrap(),
                    row: ub,
                };
                level2::<V>(&h_units[..h_len], &base, tables, q0, skip, lists, &mut leaf_bound);
            }
            let bound = bound_lanes
                .iter()
                .chain(&leaf_bound)
                .fold(f64::NEG_INFINITY, |a, &b| a.max(b));
            skipped[bi * n_h + hi] = bound;
            let (a_from, a_to) = a_range(h);
            let j_base = h << low.bits;
            for (q, &len) in leaf_len.iter().enumerate().take(n_leaf) {
                let a0 = q * A;
                if a0 + A <= a_from || a0 >= a_to {
                    continue;
                }
                let units = &leaf_units[q * ub..q * ub + len];
                let lanes = a_from.max(a0) - a0..(a_to - a0).min(A);
                let mut from = 0;
                for &(cell, end_u) in &segs {
                    let to = if n_cells == 1 {
                        len
                    } else {
                        from + units[from..].partition_point(|&u| u < end_u)
                    };
                    if to == from {
                        continue;
                    }
                    // The leaf's maxima and counts (`mx`, `cnt`), one lane per pattern: the
                    // first sweep writes them, a second adds to them; `live` threshold rows
                    // hold this leaf's counts (later rows still hold an earlier leaf's: not read).
                    let live = if K >= 2 {
                        // Units that cannot reach the second threshold anywhere in the leaf
                        // (most of them) are swept for the first threshold only.
                        let (mut n_all, mut n_first) = (0, 0);
                        for &u in &units[from..to] {
                            let u_ = u as usize;
                            let v = base[u_] + tables.leaf_offset[u_ * leaf_row + q];
                            let r = v.abs() + tables.leaf_radius[u_];
                            all_units[n_all] = u;
                            first_units[n_first] = u;
                            n_all += (r > second) as usize;
                            n_first += (r <= second) as usize;
                        }
                        let leaf = |units| Leaf {
                            units,
                            base: &base,
                            low: &tables.low,
                            stride,
                            a0,
                        };
                        let first_units = leaf(&first_units[..n_first]);
                        if n_all > 0 {
                            sweep_leaf::<V, K, K, A, SIGNED, false>(&leaf(&all_units[..n_all]), &thr, &mut out);
                            if n_first > 0 {
                                sweep_leaf::<V, K, 1, A, SIGNED, true>(&first_units, &[thr[0]], &mut out);
                            }
                            K
                        } else {
                            // n_first = to - from > 0
                            sweep_leaf::<V, K, 1, A, SIGNED, false>(&first_units, &[thr[0]], &mut out);
                            1
                        }
                    } else {
                        let leaf = Leaf {
                            units: &units[from..to],
                            base: &base,
                            low: &tables.low,
                            stride,
                            a0,
                        };
                        sweep_leaf::<V, K, K, A, SIGNED, false>(&leaf, &thr, &mut out);
                        K
                    };
                    from = to;
                    // The task's first pattern can fall inside a leaf: index from its lanes.
                    let p_first = (j_base + (a0 + lanes.start) as u64 - start) as usize;
                    for (k, cnt_k) in out.cnt.iter().enumerate().take(live) {
                        let row = &mut counts[(cell * k_stride + k) * len_task + p_first..];
                        for (r, &c) in row.iter_mut().zip(&cnt_k[lanes.clone()]) {
                            *r += c as u32;
                        }
                    }
                    for (m, &v) in max_ratio[p_first..].iter_mut().zip(&out.mx[lanes.clone()]) {
                        *m = if v > *m { v } else { *m }; // branch-free
                    }
                    if SIGNED {
                        for (k, cnt_k) in out.cpos.iter().enumerate().take(live) {
                            let row = &mut pos_rows[(cell * k_stride + k) * len_task + p_first..];
                            for (r, &c) in row.iter_mut().zip(&cnt_k[lanes.clone()]) {
                                *r += c as u32;
                            }
                        }
                        for (m, &v) in min_rows[p_first..].iter_mut().zip(&out.mn[lanes.clone()]) {
                            *m = if v < *m { v } else { *m };
                        }
                    }
                }
            }
        }
    }

    if SIGNED {
        signed_round2(prep, tables, &skipped, (start, end), (max_ratio, min_rows), &mut base);
        return;
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
    let needs = |bi: usize, hi: usize| {
        let bound = skipped[bi * n_h + hi];
        bound >= 0.0 && reach_sq(bound) > floor[hi]
    };
    round2_walk(
        prep,
        tables,
        &mut base,
        (h_first, n_h),
        needs,
        |bi, hi, w, h, tables, base| {
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
        },
    );
}

/// Round 2's walk: over the unit blocks and the task's high-byte values `h` where `needs(block,
/// h index)`, builds each such block's tables once and each such h's fixed parts into `base`,
/// and calls `visit(block, h index, block width, h, tables, base)`.
fn round2_walk(
    prep: &Prepared,
    tables: &mut BlockTables,
    base: &mut [f64],
    (h_first, n_h): (u64, usize),
    needs: impl Fn(usize, usize) -> bool,
    mut visit: impl FnMut(usize, usize, usize, u64, &BlockTables, &[f64]),
) {
    let ub = EXACT_UNIT_BLOCK.min(prep.m_pad);
    for (bi, u0) in (0..prep.m_pad).step_by(ub).enumerate() {
        if !(0..n_h).any(|hi| needs(bi, hi)) {
            continue;
        }
        let w = ub.min(prep.m_pad - u0);
        tables.build(prep, u0, w);
        for hi in (0..n_h).filter(|&hi| needs(bi, hi)) {
            let h = h_first + hi as u64;
            tables.base(prep, u0, w, h, base);
            visit(bi, hi, w, h, tables, base);
        }
    }
}

/// Round 2 of the signed (one-sided) exact kernel: where the units skipped in a (block, h) could
/// hold a pattern's max or min of S (their |S| is at most the bound), every unit whose S is its
/// normalised sum is evaluated there (not the padding, whose S is no unit's, nor the closed-form
/// units, which are the caller's; the all-zero units are, S = 0).
fn signed_round2(
    prep: &Prepared,
    tables: &mut BlockTables,
    skipped: &[f64],
    (start, end): (u64, u64),
    (max_s, min_s): (&mut [f64], &mut [f64]),
    base: &mut [f64],
) {
    let low = prep.groups[0];
    let n_low = 1usize << low.bits;
    let h_first = start >> low.bits;
    let n_h = ((((end - 1) >> low.bits) + 1) - h_first) as usize;
    let stride = tables.stride;
    let real = &prep.sum_is_s;
    // Per h: the lowest max S and the lowest -min S of its patterns.
    let (mut floor_hi, mut floor_lo) = (vec![f64::INFINITY; n_h], vec![f64::INFINITY; n_h]);
    for (p, (&hi_s, &lo_s)) in max_s.iter().zip(min_s.iter()).enumerate() {
        let hi = (((start + p as u64) >> low.bits) - h_first) as usize;
        floor_hi[hi] = floor_hi[hi].min(hi_s);
        floor_lo[hi] = floor_lo[hi].min(-lo_s);
    }
    let needs = |bi: usize, hi: usize| {
        let lim = skipped[bi * n_h + hi] + SKIP_MARGIN;
        skipped[bi * n_h + hi] >= 0.0 && (lim > floor_hi[hi] || lim > floor_lo[hi])
    };
    let ub = EXACT_UNIT_BLOCK.min(prep.m_pad);
    round2_walk(
        prep,
        tables,
        base,
        (h_first, n_h),
        needs,
        |bi, hi, w, h, tables, base| {
            let u0 = bi * ub;
            let lim = skipped[bi * n_h + hi] + SKIP_MARGIN;
            let j_base = h << low.bits;
            let a_from = start.saturating_sub(j_base) as usize;
            let a_to = ((end - j_base) as usize).min(n_low);
            for a in a_from..a_to {
                let p = (j_base + a as u64 - start) as usize;
                let (mut hi_s, mut lo_s) = (max_s[p], min_s[p]);
                if hi_s >= lim && -lo_s >= lim {
                    continue;
                }
                for (u, (&b, &radius)) in base[..w].iter().zip(&tables.radius[..w]).enumerate() {
                    let r = b.abs() + radius + SKIP_MARGIN;
                    if !real[u0 + u] || (r <= hi_s && -r >= lo_s) {
                        continue; // cannot raise the max or lower the min
                    }
                    let v = b + tables.low[u * stride + a];
                    hi_s = if v > hi_s { v } else { hi_s };
                    lo_s = if v < lo_s { v } else { lo_s };
                }
                max_s[p] = hi_s;
                min_s[p] = lo_s;
            }
        },
    );
}

/// [`sweep`] for the one-sided tallies: per lane the max of S into `mx` and its min into `mn`,
/// the counts above each ratio threshold into `cnt` and those with S > 0 into `cpos`, written
/// or (`ADD`) merged. Plain Rust, vectorised by the compiler inside the kernel's instruction-set
/// function, in passes of `W` patterns (one or two vectors) so that a pass's maxima, minima and
/// counts stay in registers over the leaf's units (one pass over all `A` patterns holds 2 + 2K
/// rows of `A` lanes, more than the registers: with it the exact one-sided tallies took 2.6x the
/// two-sided ones, about 1.5x what they take now). S is the two-sided sweeps' `b + low[a]`, bit
/// for bit; the max and min are the first extreme value in unit order, as one running max over
/// both sweeps of a leaf would give.
#[inline(always)]
fn sweep_signed<const K: usize, const A: usize, const ADD: bool, const W: usize>(
    leaf: &Leaf,
    thr: &[f64; K],
    (mx, cnt): Out<A, K>,
    (mn, cpos): Out<A, K>,
) {
    // A run-time pass count, as in `sweep_avx2`: unrolled passes spill each other's state.
    let passes = std::hint::black_box(A / W);
    for pass in (0..passes).map(|i| i * W) {
        let (mut p_mx, mut p_mn) = ([f64::NEG_INFINITY; W], [f64::INFINITY; W]);
        let (mut p_cnt, mut p_pos) = ([[0u64; W]; K], [[0u64; W]; K]);
        for (row, b) in leaf.rows(pass, W) {
            let row: &[f64; W] = row.try_into().unwrap();
            let mut sv = [0.0f64; W];
            for l in 0..W {
                sv[l] = b + row[l];
            }
            for l in 0..W {
                p_mx[l] = if sv[l] > p_mx[l] { sv[l] } else { p_mx[l] };
                p_mn[l] = if sv[l] < p_mn[l] { sv[l] } else { p_mn[l] };
            }
            for k in 0..K {
                for l in 0..W {
                    let above = sv[l] * sv[l] > thr[k];
                    p_cnt[k][l] += above as u64;
                    p_pos[k][l] += (above & (sv[l] > 0.0)) as u64;
                }
            }
        }
        let at = pass..pass + W;
        if ADD {
            // Strict compares keep the earlier sweep's value on ties, as a running max would.
            for (m, &v) in mx[at.clone()].iter_mut().zip(&p_mx) {
                *m = if v > *m { v } else { *m };
            }
            for (m, &v) in mn[at.clone()].iter_mut().zip(&p_mn) {
                *m = if v < *m { v } else { *m };
            }
            for k in 0..K {
                for (c, &v) in cnt[k][at.clone()].iter_mut().zip(&p_cnt[k]) {
                    *c += v;
                }
                for (c, &v) in cpos[k][at.clone()].iter_mut().zip(&p_pos[k]) {
                    *c += v;
                }
            }
        } else {
            mx[at.clone()].copy_from_slice(&p_mx);
            mn[at.clone()].copy_from_slice(&p_mn);
            for k in 0..K {
                cnt[k][at.clone()].copy_from_slice(&p_cnt[k]);
                cpos[k][at.clone()].copy_from_slice(&p_pos[k]);
            }
        }
    }
}

/// One leaf's sweep input: its units (local indices into the unit-major low table `low`, row
/// `stride`, and into the fixed parts `base`), and the leaf's first low pattern `a0`.
struct Leaf<'a> {
    units: &'a [u32],
    base: &'a [f64],
    low: &'a [f64],
    stride: usize,
    a0: usize,
}

impl<'a> Leaf<'a> {
    /// Per unit: its `len` low-table values from pattern `a0 + from`, and its fixed part.
    #[inline(always)]
    fn rows(&self, from: usize, len: usize) -> impl Iterator<Item = (&'a [f64], f64)> + '_ {
        let (low, at0) = (self.low, self.a0 + from);
        self.units.iter().map(move |&u| {
            let at = u as usize * self.stride + at0;
            (&low[at..at + len], self.base[u as usize])
        })
    }
}

/// One leaf's per-pattern outputs (a lane a pattern), reused leaf after leaf: the max (of S^2;
/// signed: of S) and the counts above each threshold; signed also the min of S and the counts
/// of S > 0.
struct LeafOut<const A: usize, const K: usize> {
    mx: [f64; A],
    cnt: [[u64; A]; K],
    mn: [f64; A],
    cpos: [[u64; A]; K],
}

/// One sweep of a leaf into `out` for thresholds `thr`: all of the pass's (`K2 = K`) or its
/// first alone (`K2 = 1`, rows past the first untouched), two-sided or signed, written or
/// merged (`ADD`).
#[inline(always)]
fn sweep_leaf<const V: u8, const K: usize, const K2: usize, const A: usize, const SIGNED: bool, const ADD: bool>(
    leaf: &Leaf,
    thr: &[f64; K2],
    out: &mut LeafOut<A, K>,
) {
    let cnt: &mut [[u64; A]; K2] = (&mut out.cnt[..K2]).try_into().unwrap();
    if SIGNED {
        let cpos: &mut [[u64; A]; K2] = (&mut out.cpos[..K2]).try_into().unwrap();
        let signed = (&mut out.mn, cpos);
        // Patterns per pass: one vector with several thresholds on AVX2 (2 + 2K registers of
        // state), two with one or none, and one 512-bit vector on AVX-512.
        // (The baseline's 128-bit vectors: half as many patterns.)
        match (V, K2) {
            (AVX512, _) | (AVX2, 0 | 1) => sweep_signed::<K2, A, ADD, 8>(leaf, thr, (&mut out.mx, cnt), signed),
            (AVX2, _) | (_, 0 | 1) => sweep_signed::<K2, A, ADD, 4>(leaf, thr, (&mut out.mx, cnt), signed),
            _ => sweep_signed::<K2, A, ADD, 2>(leaf, thr, (&mut out.mx, cnt), signed),
        }
    } else {
        sweep::<V, K2, A, ADD>(leaf, thr, (&mut out.mx, cnt));
    }
}

/// One leaf's outputs, one lane per pattern: the max S^2 and the counts above each threshold.
type Out<'a, const A: usize, const K: usize> = (&'a mut [f64; A], &'a mut [[u64; A]; K]);

/// The `A` patterns of one leaf (from `a0`) over its units, one lane per pattern: the max S^2
/// into `mx` and the counts above each ratio threshold into `cnt`, written (`ADD` false) or
/// merged into what they hold (`ADD`: the max of both, the sum of the counts), so that two
/// sweeps of one leaf share them and nothing is returned by copy.
#[inline(always)]
fn sweep<const V: u8, const K: usize, const A: usize, const ADD: bool>(leaf: &Leaf, thr: &[f64; K], out: Out<A, K>) {
    let (mx, cnt) = out;
    #[cfg(target_arch = "x86_64")]
    if V == AVX512 && A == 32 {
        // SAFETY: V == AVX512 only inside functions compiled for (and run on) AVX-512.
        return unsafe { sweep_avx512::<K, A, ADD>(leaf, thr, (mx, cnt)) };
    }
    #[cfg(target_arch = "x86_64")]
    if V == AVX2 && A.is_multiple_of(AVX2_SWEEP) {
        // SAFETY: V == AVX2 only inside functions compiled for (and run on) AVX2.
        return unsafe { sweep_avx2::<K, A, ADD>(leaf, thr, (mx, cnt)) };
    }
    if !ADD {
        mx.fill(0.0);
        cnt.iter_mut().for_each(|c| c.fill(0));
    }
    for (row, b) in leaf.rows(0, A) {
        let row: &[f64; A] = row.try_into().unwrap();
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
}

/// [`sweep`] for 32 patterns in four 512-bit registers, counting with masked adds.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vl")]
#[inline]
unsafe fn sweep_avx512<const K: usize, const A: usize, const ADD: bool>(leaf: &Leaf, thr: &[f64; K], out: Out<A, K>) {
    let (mx_out, cnt_out) = out;
    assert!(A == 32);
    let mut mx = [_mm512_setzero_pd(); 4];
    let mut cnt = [[_mm512_setzero_si512(); 4]; K];
    let t: [__m512d; K] = std::array::from_fn(|k| _mm512_set1_pd(thr[k]));
    let one = _mm512_set1_epi64(1);
    for (row, b) in leaf.rows(0, 32) {
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
    // The outputs' own values are merged in (ADD) or not (a load under an empty mask reads
    // nothing and gives 0: S^2 >= 0 keeps the max, and the counts add 0).
    let keep: __mmask8 = if ADD { 0xff } else { 0 };
    for v in 0..4 {
        // SAFETY: both outputs hold A = 32 values.
        unsafe {
            let m = mx_out.as_mut_ptr().add(8 * v);
            _mm512_storeu_pd(m, _mm512_max_pd(mx[v], _mm512_maskz_loadu_pd(keep, m)));
            for (c, cnt) in cnt_out.iter_mut().zip(&cnt) {
                let c = c.as_mut_ptr().add(8 * v);
                _mm512_storeu_si512(
                    c.cast(),
                    _mm512_add_epi64(cnt[v], _mm512_maskz_loadu_epi64(keep, c.cast())),
                );
            }
        }
    }
}

/// Patterns per pass of [`sweep_avx2`] with two or more thresholds: two 256-bit registers
/// of S^2 (four with one threshold or none: fewer registers of counts).
const AVX2_SWEEP: usize = 8;

/// [`sweep`] with AVX2, in passes of 8 patterns (16 for at most one threshold): per pass, the
/// maxima and one register of counts per threshold and vector of S^2 (a compare's all-ones
/// mask is -1: subtracting it counts), so that the pass's state and the thresholds stay in the
/// 16 registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn sweep_avx2<const K: usize, const A: usize, const ADD: bool>(leaf: &Leaf, thr: &[f64; K], out: Out<A, K>) {
    let (mx_out, cnt_out) = out;
    let nv = if K <= 1 && A.is_multiple_of(16) { 4 } else { 2 };
    let width = 4 * nv;
    // The outputs' own values are merged in (ADD) or not (a load under a zero mask reads nothing
    // and gives 0: S^2 >= 0 keeps the max, and the counts add 0).
    let keep_i = _mm256_set1_epi64x(if ADD { -1 } else { 0 });
    let t: [__m256d; K] = std::array::from_fn(|k| _mm256_set1_pd(thr[k]));
    // A run-time pass count: unrolled passes would keep every pass's results in registers
    // and spill the next pass's state (measured: stores and reloads in the inner loop).
    let passes = std::hint::black_box(A / width);
    for pass in (0..passes).map(|i| i * width) {
        let mut mx = [_mm256_setzero_pd(); 4];
        let mut cnt = [[_mm256_setzero_si256(); 4]; K];
        for (row, b) in leaf.rows(pass, width) {
            let bv = _mm256_set1_pd(b);
            for v in 0..nv {
                // SAFETY: row holds `width` = 4 * nv values.
                let s = _mm256_add_pd(bv, unsafe { _mm256_loadu_pd(row.as_ptr().add(4 * v)) });
                let q = _mm256_mul_pd(s, s);
                mx[v] = _mm256_max_pd(q, mx[v]);
                for k in 0..K {
                    let above = _mm256_castpd_si256(_mm256_cmp_pd::<_CMP_GT_OQ>(q, t[k]));
                    cnt[k][v] = _mm256_sub_epi64(cnt[k][v], above);
                }
            }
        }
        for v in 0..nv {
            // SAFETY: the outputs hold A values, pass + width <= A.
            unsafe {
                let at = pass + 4 * v;
                let m = mx_out.as_mut_ptr().add(at);
                _mm256_storeu_pd(m, _mm256_max_pd(mx[v], _mm256_maskload_pd(m, keep_i)));
                for k in 0..K {
                    let c = cnt_out[k][at..].as_mut_ptr().cast();
                    _mm256_storeu_si256(c, _mm256_add_epi64(cnt[k][v], _mm256_maskload_epi64(c.cast(), keep_i)));
                }
            }
        }
    }
}

/// At most this many patterns in a Monte Carlo task: only their table entries are built (about
/// 8 operations each a group, against 256 for a whole table).
const FEW_PATTERNS: usize = 16;

/// Monte Carlo over the given patterns (one task): unit blocks outside, permutations inside,
/// one lane per unit. `NG` is the number of groups (0: any, looped at run time). `SIGNED` (the
/// one-sided tallies): `max_ratio` takes the max of S, `job.signed` the min of S and the counts
/// of S > 0 beside the counts of S^2 over each threshold; the columns whose sum is no unit's S
/// (`Prepared::sum_is_s`: the cells' padding, the closed-form units) are left out of the max and
/// the min (their S is 0, never over a threshold).
#[inline(always)]
fn mc_impl<const V: u8, const NG: usize, const SIGNED: bool, const K: usize>(job: &mut Job) {
    let Patterns::Bytes(patterns) = job.patterns else {
        unreachable!("Monte Carlo kernel on an exact range")
    };
    let (prep, k_stride) = (job.prep, job.k_stride);
    let (counts, max_ratio) = (&mut *job.counts, &mut *job.max_ratio);
    let (pos_counts, min_s): (&mut [u32], &mut [f64]) = match &mut job.signed {
        Some(out) => (&mut *out.pos, &mut *out.min_s),
        None => (&mut [], &mut []),
    };
    debug_assert!(!SIGNED || (pos_counts.len() >= counts.len() && min_s.len() >= max_ratio.len()));
    let thr: [f64; K] = job.ratios.try_into().unwrap();
    let g = prep.groups.len();
    debug_assert!(NG == 0 || NG == g);
    let ub = (MC_TABLE_BUDGET / (8 * 256 * g) / LANES * LANES)
        .clamp(LANES, 512)
        .min(prep.m_pad);
    let plane = 256 * ub;
    let tables = &mut job.scratch.monte_carlo;
    tables.resize(tables.len().max(g * plane), 0.0);
    let mut offsets = vec![0usize; g];
    let n_cells = prep.cells.len();
    let mut segs: Vec<(usize, usize, usize)> = Vec::with_capacity(n_cells);
    // Signed: per column of the block, 0 where the sum is a unit's S, NaN where it is not (S +
    // NaN is never a max or a min).
    let mut not_s = vec![[0.0f64; LANES]; if SIGNED { ub / LANES } else { 0 }];
    for u0 in (0..prep.m_pad).step_by(ub) {
        let w = ub.min(prep.m_pad - u0);
        let lanes = w / LANES;
        if SIGNED {
            let flags = prep.sum_is_s[u0..u0 + lanes * LANES].chunks_exact(LANES);
            for (mask, flags) in not_s.iter_mut().zip(flags) {
                for (m, &is_s) in mask.iter_mut().zip(flags) {
                    *m = if is_s { 0.0 } else { f64::NAN };
                }
            }
        }
        if patterns.len() <= FEW_PATTERNS * g {
            for bytes in patterns.chunks_exact(g) {
                build_group_entries(prep, u0, w, plane, tables, bytes);
            }
        } else {
            build_group_tables(prep, u0, w, plane, tables);
        }
        // The cells of this block: (cell, first and past-last vector of units).
        segs.clear();
        for (c, &(lo, hi)) in prep.cells.iter().enumerate() {
            if lo < u0 + w && hi > u0 {
                segs.push((c, (lo.max(u0) - u0) / LANES, (hi.min(u0 + w) - u0) / LANES));
            }
        }
        for (p, bytes) in patterns.chunks_exact(g).enumerate() {
            for gi in 0..g {
                offsets[gi] = gi * plane + bytes[gi] as usize * w;
            }
            let row = |gi: usize| &tables[offsets[gi]..offsets[gi] + w].as_chunks::<LANES>().0[..lanes];
            let low = row(0);
            let mut mx = [if SIGNED { f64::NEG_INFINITY } else { 0.0 }; LANES];
            let mut mn = [f64::INFINITY; LANES];
            for &(cell, c_lo, c_hi) in &segs {
                let mut cnt = [0u32; K];
                let mut cpos = [0u32; K];
                if SIGNED {
                    // One loop over the cell's vectors (the sums in the two-sided order, below).
                    for c in c_lo..c_hi {
                        let mut s = if g == 1 { low[c] } else { row(1)[c] };
                        if g > 1 {
                            for gi in 2..g {
                                let high = &row(gi)[c];
                                for l in 0..LANES {
                                    s[l] += high[l];
                                }
                            }
                            for l in 0..LANES {
                                s[l] += low[c][l];
                            }
                        }
                        accumulate_signed::<V, K>(&s, &not_s[c], &thr, (&mut mx, &mut mn), (&mut cnt, &mut cpos));
                    }
                } else if g == 1 {
                    for s in &low[c_lo..c_hi] {
                        accumulate::<V, K>(s, &thr, &mut mx, &mut cnt);
                    }
                } else if NG > 0 {
                    let highs: [&[[f64; LANES]]; 4] =
                        std::array::from_fn(|i| if i + 1 < NG { row(i + 1) } else { low });
                    for c in c_lo..c_hi {
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
                    for (c, low_c) in low.iter().enumerate().take(c_hi).skip(c_lo) {
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
                let at = (p * n_cells + cell) * k_stride;
                for k in 0..K {
                    counts[at + k] += cnt[k];
                }
                if SIGNED {
                    for k in 0..K {
                        pos_counts[at + k] += cpos[k];
                    }
                }
            }
            let mut best = max_ratio[p];
            for &v in &mx {
                best = if v > best { v } else { best };
            }
            max_ratio[p] = best;
            if SIGNED {
                let mut least = min_s[p];
                for &v in &mn {
                    least = if v < least { v } else { least };
                }
                min_s[p] = least;
            }
        }
    }
}

/// [`accumulate`] for the signed Monte Carlo kernel: the running max and min of S (`e` is 0, or
/// NaN where the column is no unit's S, which no compare lets in), the counts of S^2 over each
/// threshold and of those with S > 0.
#[inline(always)]
fn accumulate_signed<const V: u8, const K: usize>(
    s: &[f64; LANES],
    e: &[f64; LANES],
    thr: &[f64; K],
    (mx, mn): (&mut [f64; LANES], &mut [f64; LANES]),
    (cnt, cpos): (&mut [u32; K], &mut [u32; K]),
) {
    let mut sq = [0.0f64; LANES];
    for l in 0..LANES {
        sq[l] = s[l] * s[l];
    }
    for l in 0..LANES {
        let v = s[l] + e[l];
        mx[l] = if v > mx[l] { v } else { mx[l] };
        mn[l] = if v < mn[l] { v } else { mn[l] };
    }
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: V names the features of the function this is compiled (and run) in.
        if V == AVX512 {
            return unsafe { count_signed_avx512(s, &sq, thr, cnt, cpos) };
        }
        if V == AVX2 {
            return unsafe { count_signed_avx2(s, &sq, thr, cnt, cpos) };
        }
    }
    for k in 0..K {
        for l in 0..LANES {
            let above = sq[l] > thr[k];
            cnt[k] += above as u32;
            cpos[k] += (above & (s[l] > 0.0)) as u32;
        }
    }
}

/// [`count_avx512`] plus the lanes over each threshold with S > 0 (one more mask AND).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vl,popcnt")]
#[inline]
unsafe fn count_signed_avx512<const K: usize>(
    s: &[f64; LANES],
    sq: &[f64; LANES],
    thr: &[f64; K],
    cnt: &mut [u32; K],
    cpos: &mut [u32; K],
) {
    // SAFETY: s and sq hold 8 values.
    let (v, sv) = unsafe { (_mm512_loadu_pd(sq.as_ptr()), _mm512_loadu_pd(s.as_ptr())) };
    let positive = _mm512_cmp_pd_mask::<_CMP_GT_OQ>(sv, _mm512_setzero_pd());
    for k in 0..K {
        let above = _mm512_cmp_pd_mask::<_CMP_GT_OQ>(v, _mm512_set1_pd(thr[k]));
        cnt[k] += (above as u32).count_ones();
        cpos[k] += ((above & positive) as u32).count_ones();
    }
}

/// [`count_avx2`] plus the lanes over each threshold with S > 0.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,popcnt")]
#[inline]
unsafe fn count_signed_avx2<const K: usize>(
    s: &[f64; LANES],
    sq: &[f64; LANES],
    thr: &[f64; K],
    cnt: &mut [u32; K],
    cpos: &mut [u32; K],
) {
    // SAFETY: s and sq hold 8 values.
    let (lo, hi) = unsafe { (_mm256_loadu_pd(sq.as_ptr()), _mm256_loadu_pd(sq.as_ptr().add(4))) };
    let (s_lo, s_hi) = unsafe { (_mm256_loadu_pd(s.as_ptr()), _mm256_loadu_pd(s.as_ptr().add(4))) };
    let zero = _mm256_setzero_pd();
    let positive = _mm256_movemask_pd(_mm256_cmp_pd::<_CMP_GT_OQ>(s_lo, zero))
        | (_mm256_movemask_pd(_mm256_cmp_pd::<_CMP_GT_OQ>(s_hi, zero)) << 4);
    for k in 0..K {
        let t = _mm256_set1_pd(thr[k]);
        let bits = _mm256_movemask_pd(_mm256_cmp_pd::<_CMP_GT_OQ>(lo, t))
            | (_mm256_movemask_pd(_mm256_cmp_pd::<_CMP_GT_OQ>(hi, t)) << 4);
        cnt[k] += (bits as u32).count_ones();
        cpos[k] += ((bits & positive) as u32).count_ones();
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
