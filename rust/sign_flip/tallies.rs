//! Streaming tallies of the sign-flip null: fixed-size histograms instead of per-pattern rows.
//!
//! A caller asks for a range of patterns (exact) or permutations (Monte Carlo) at a time and
//! adds the returned tallies up, so memory never grows with the number of patterns:
//!
//! * for every group of units (group 0 is every unit, then each group of each partition, in
//!   order) and every threshold column, an int64 histogram of the per-pattern count of the
//!   group's units over the threshold (length group size + 1);
//! * for the max statistic over every unit, a histogram of where each pattern's max falls among
//!   caller-given sorted "bars" (bin `b` = the number of bars at or below the max), from which a
//!   suffix sum gives, per unit, how many patterns reach its observed statistic.
//!
//! # One sweep for every group (two-sided)
//! The units are laid out in cells, one per distinct tuple of partition labels, each padded
//! with all-zero units to a multiple of the 8-unit vector; the kernels count per cell and a group's
//! count under a pattern is the sum of its cells' counts, so all groups of all partitions cost
//! one sweep over the units. Each parallel task of that sweep adds its patterns straight into
//! its own histograms (no per-pattern rows are kept), and the tasks' histograms are summed.
//! One-sided tails run over the same cells (one run for every group), through the kernels'
//! signed form (`Prepared::task_signed`: counts of S > 0 beside the two-sided counts, and the
//! max and min of S): exact ones through the exact kernel with its skipping, Monte Carlo ones
//! through the Monte Carlo kernel (every unit under every permutation). Both give the same bits
//! for the same pattern as per-pattern signed counts written apart from the kernels
//! (`signed_range`, the tests' reference). The cells' padding columns and the closed-form
//! units' zero columns are left out of the max and the min of S.
//!
//! # Tails
//! `Two`: the statistic is |t|, on the 2^(n-1) patterns with pair 0 fixed, compared as `S^2`
//! (the max |t| is the max `S^2 / SS`, see the module docs). `Greater`: t itself, on all 2^n
//! patterns (pair 0 free): flipping every pair negates S, so pattern `j` of the two-sided
//! enumeration stands for two one-sided patterns, S and -S, whose counts of t > c are the units
//! with `S > 0, S^2 > r(c)` and `S < 0, S^2 > r(c)`, and whose max t follow from the max and
//! the min of S. Monte Carlo draws pair 0's sign from one more hashed bit per permutation. The
//! statistic is compared as S. `Less` is `Greater` on the negated differences (exactly: float64
//! negation commutes with every operation used).

use super::prepared::{Prepared, NO_CLASS};
use super::tables::build_group_tables;
use super::*;
use rayon::prelude::*;

/// Which side of the null a test looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// |t| large (counts of |t| > c, max |t|): 2^(n-1) patterns.
    Two,
    /// t large (counts of t > c, max t): 2^n patterns.
    Greater,
    /// t small (counts of t < -c, min t): 2^n patterns.
    Less,
}

/// Tallies of one range of patterns, to be added to those of the other ranges.
#[derive(Debug, Clone, PartialEq)]
pub struct TallyRange {
    /// Per group, per threshold column, the histogram of counts (see the module docs).
    pub hist: Vec<i64>,
    /// Length `bars.len() + 1`: patterns whose max statistic has `b` bars at or below it.
    pub max_bins: Vec<i64>,
    /// The same for the max |S| (max |t|) of each pattern, whatever the tail: the null of
    /// MNE-Python's one-sided `permutation_t_test`, which compares signed t with max |t|.
    pub abs_bins: Vec<i64>,
    /// Patterns tallied (exact one-sided: twice the range's length).
    pub patterns: u64,
}

/// Patterns per step of the tests' one-sided reference (`one_sided_rows`): bounds its rows.
#[cfg(test)]
const STEP: u64 = 1 << 14;
/// Bit word of a Monte Carlo permutation that holds pair 0's sign (one-sided only).
const PAIR0_WORD: u64 = 1 << 40;

/// The unit indices of every group: all units, then each partition's groups `0 .. k`.
pub fn unit_groups(n_units: usize, partitions: &[&[u32]]) -> Result<Vec<Vec<usize>>, StatsError> {
    let mut groups = vec![(0..n_units).collect::<Vec<_>>()];
    for (pi, labels) in partitions.iter().enumerate() {
        if labels.len() != n_units {
            return Err(StatsError::BadPartition {
                partition: pi,
                reason: format!("it labels {} units, the data have {n_units}", labels.len()),
            });
        }
        let k = labels.iter().max().map_or(0, |&v| v as usize + 1);
        let mut parts = vec![Vec::new(); k];
        for (u, &l) in labels.iter().enumerate() {
            parts[l as usize].push(u);
        }
        groups.extend(parts);
    }
    Ok(groups)
}

/// Per unit, its observed statistic as the tallies compare it: `S^2 / SS` (two-sided) or
/// `S / sqrt(SS)` (one-sided, of the negated data for `Less`), through the null's own sums.
pub fn unit_scores(diffs: &PairDiffs, tail: Tail) -> Result<Vec<f64>, StatsError> {
    let mut negated = Vec::new();
    let diffs = oriented(diffs, tail, &mut negated)?;
    let prep = Prepared::new(&diffs, Thresholds { t: &[], d: &[] })?;
    let m = diffs.n_units();
    let mut s = vec![0.0f64; prep.m_pad];
    let zero = vec![0u8; prep.groups.len()];
    signed_sums(&prep, &zero, |_, u0, block| {
        s[u0..u0 + block.len()].copy_from_slice(block)
    });
    let nf = prep.n as f64;
    for (u, &c) in prep.unit_class.iter().enumerate().take(m) {
        if c != NO_CLASS {
            let class = &prep.classes[c as usize];
            let k = class.agreement(&zero, prep.n);
            // S has pair 0's sign when most pairs agree with it (k > 0), the other sign when
            // most disagree: the sign the null's closed form gives it (`signed_range`).
            let sign = if class.positive == (k > 0) { 1.0 } else { -1.0 };
            s[u] = sign * ((k * k) as f64 / nf).sqrt();
        }
    }
    s.truncate(m);
    if tail == Tail::Two {
        for v in &mut s {
            *v *= *v;
        }
    }
    Ok(s)
}

/// The tallies of exact patterns (`exact`) or Monte Carlo permutations `start .. end`. Exact
/// ranges index the 2^(n-1) two-sided patterns for every tail (see the module docs). `bars`
/// must be sorted ascending, in the domain of [`unit_scores`].
#[allow(clippy::too_many_arguments)]
pub fn tallies(
    diffs: &PairDiffs,
    thresholds: Thresholds,
    partitions: &[&[u32]],
    tail: Tail,
    exact: bool,
    seed: u64,
    start: u64,
    end: u64,
    bars: &[f64],
) -> Result<TallyRange, StatsError> {
    if exact {
        check_range(start, end, n_patterns(diffs.n_pairs())?)?;
    } else {
        check_range(start, end, u64::MAX)?;
    }
    if bars
        .windows(2)
        .any(|w| w[0].partial_cmp(&w[1]).is_none_or(|o| o.is_gt()))
    {
        return Err(StatsError::BadPartition {
            partition: usize::MAX,
            reason: "the bars of the max statistic are not sorted ascending".into(),
        });
    }
    let mut negated = Vec::new();
    let diffs = oriented(diffs, tail, &mut negated)?;
    let m = diffs.n_units();
    let groups = unit_groups(m, partitions)?;
    let cols = thresholds.len();
    let sizes: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    let mut offsets = Vec::with_capacity(groups.len());
    let mut total = 0;
    for &s in &sizes {
        offsets.push(total);
        total += cols * (s + 1);
    }
    let mut out = TallyRange {
        hist: vec![0; total],
        max_bins: vec![0; bars.len() + 1],
        abs_bins: vec![0; bars.len() + 1],
        patterns: 0,
    };
    let per_j: u64 = if exact && tail != Tail::Two { 2 } else { 1 };
    out.patterns = (end - start) * per_j;
    let mode = if exact {
        Mode::Exact
    } else {
        Mode::MonteCarlo {
            key: rng::stream_key(seed, Stream::SignFlip),
        }
    };
    if tail == Tail::Two {
        two_sided(
            &diffs, thresholds, partitions, mode, start, end, bars, &offsets, &sizes, &mut out,
        )?;
        return Ok(out);
    }
    // One-sided: every group in one run over the cells, as two-sided.
    let (prep, sums) = grouped(&diffs, thresholds, partitions, &offsets, &sizes)?;
    one_sided(&prep, &sums, mode, start, end, bars, &mut out);
    Ok(out)
}

/// One-sided tallies through rows of STEP patterns of signed counts (`signed_range`), every
/// unit under every pattern: the tests' reference for [`one_sided`], written apart from the
/// kernels. A Monte Carlo permutation takes S or -S by its pair-0 bit; an exact pattern stands
/// for both.
#[cfg(test)]
fn one_sided_rows(
    prep: &Prepared,
    sums: &[(usize, Vec<usize>)],
    mode: Mode,
    start: u64,
    end: u64,
    bars: &[f64],
    out: &mut TallyRange,
) {
    let cc = prep.cells.len() * prep.columns.len();
    let place = |score: f64, bins: &mut [i64]| {
        bins[bars.partition_point(|&b| b <= score)] += 1;
    };
    let mut lo = start;
    while lo < end {
        let hi = end.min(lo + STEP);
        let s = signed_range(prep, mode, lo, hi);
        for p in 0..(hi - lo) as usize {
            let take_pos = match mode {
                Mode::MonteCarlo { key } => rng::counter_word(key, lo + p as u64, PAIR0_WORD) & 1 == 0,
                _ => true,
            };
            let both = matches!(mode, Mode::Exact);
            let abs_max = s.max_s[p].max(-s.min_s[p]);
            for _ in 0..(take_pos || both) as usize + (!take_pos || both) as usize {
                place(abs_max, &mut out.abs_bins);
            }
            for (side, max, on) in [
                (&s.pos, s.max_s[p], take_pos || both),
                (&s.neg, -s.min_s[p], !take_pos || both),
            ] {
                if !on {
                    continue;
                }
                let row = &side[p * cc..(p + 1) * cc];
                for (bin0, at) in sums {
                    let v: i64 = at.iter().map(|&i| row[i]).sum();
                    out.hist[bin0 + v as usize] += 1;
                }
                place(max, &mut out.max_bins);
            }
        }
        lo = hi;
    }
}

/// One-sided tallies through the kernels' signed form (`Prepared::task_signed`). Exact: the
/// two-sided patterns `start .. end`, through the exact kernel's skipping; pattern `j` stands
/// for S (its counts of t > c, its max S) and for -S (the counts of t < -c, minus the min S).
/// Monte Carlo: permutations `start .. end`, every unit under every permutation (the Monte
/// Carlo kernel), each taking S or -S by its pair-0 bit. Each task adds into histograms of its
/// own, summed at the end (integer sums: the same whatever the threads).
fn one_sided(
    prep: &Prepared,
    sums: &[(usize, Vec<usize>)],
    mode: Mode,
    start: u64,
    end: u64,
    bars: &[f64],
    out: &mut TallyRange,
) {
    let n_hist = out.hist.len();
    let nb = bars.len() + 1;
    let bar_index = BarIndex::new(bars);
    let sum = tasks_summed(prep, mode, start, end, n_hist + 2 * nb, |acc, lo, hi| {
        let (hist, bins) = acc.split_at_mut(n_hist);
        let (max_bins, abs_bins) = bins.split_at_mut(nb);
        let mut add = |row: &[i64], max: f64| {
            for (bin0, at) in sums {
                let v: i64 = at.iter().map(|&i| row[i]).sum();
                hist[bin0 + v as usize] += 1;
            }
            let bin = bar_index.at_or_below(max);
            max_bins[bin] += 1;
            bin
        };
        match mode {
            Mode::MonteCarlo { key } => prep.task_signed(mode, lo, hi, |p, pos, neg, max_s, min_s| {
                if rng::counter_word(key, lo + p as u64, PAIR0_WORD) & 1 == 0 {
                    add(pos, max_s);
                } else {
                    add(neg, -min_s);
                }
                abs_bins[bar_index.at_or_below(max_s.max(-min_s))] += 1;
            }),
            _ => prep.task_signed(mode, lo, hi, |_, pos, neg, max_s, min_s| {
                // The bars at or below max(max_s, -min_s): the larger of the two counts, as the
                // count is non-decreasing in the value (one search fewer a pattern).
                let bin = add(pos, max_s).max(add(neg, -min_s));
                abs_bins[bin] += 2;
            }),
        }
    });
    for (h, v) in out.hist.iter_mut().zip(&sum[..n_hist]) {
        *h += v;
    }
    for (m, v) in out.max_bins.iter_mut().zip(&sum[n_hist..n_hist + nb]) {
        *m += v;
    }
    for (a, v) in out.abs_bins.iter_mut().zip(&sum[n_hist + nb..]) {
        *a += v;
    }
}

/// Units grouped into cells (one per distinct tuple of partition labels), each cell padded
/// with all-zero units (never counted, never the max) to a multiple of [`LANES`]: the data in
/// that order, the cells' first units, and per cell its label in each partition.
struct Cells {
    data: Vec<f64>,
    starts: Vec<usize>,
    labels: Vec<Vec<u32>>,
    /// The columns that pad a cell (no unit).
    padding: Vec<usize>,
}

fn cells_of(diffs: &PairDiffs, partitions: &[&[u32]]) -> Cells {
    let (n, m) = (diffs.n_pairs(), diffs.n_units());
    let key = |u: usize| -> Vec<u32> { partitions.iter().map(|p| p[u]).collect() };
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by_key(|&u| key(u)); // stable: units keep their order within a cell
    let mut starts = Vec::new();
    let mut labels: Vec<Vec<u32>> = Vec::new();
    let mut slots: Vec<Option<usize>> = Vec::new(); // unit (None: padding) per column
    for &u in &order {
        let k = key(u);
        if labels.last() != Some(&k) {
            slots.resize(slots.len().div_ceil(LANES) * LANES, None);
            starts.push(slots.len());
            labels.push(k);
        }
        slots.push(Some(u));
    }
    if starts.is_empty() {
        starts.push(0);
        labels.push(vec![0; partitions.len()]);
    }
    let width = slots.len();
    let padding = (0..width).filter(|&col| slots[col].is_none()).collect();
    let mut data = vec![0.0f64; n * width];
    for i in 0..n {
        let row = diffs.pair(i);
        for (col, slot) in slots.iter().enumerate() {
            if let Some(u) = slot {
                data[i * width + col] = row[*u];
            }
        }
    }
    Cells {
        data,
        starts,
        labels,
        padding,
    }
}

/// The units laid out in cells (one per distinct tuple of partition labels; one cell without
/// partitions), and per (group, column): where its histogram's bin 0 is, and which of a
/// pattern's `[cells x columns]` counts add up to its count.
#[allow(clippy::type_complexity)]
fn grouped(
    diffs: &PairDiffs,
    thresholds: Thresholds,
    partitions: &[&[u32]],
    offsets: &[usize],
    sizes: &[usize],
) -> Result<(Prepared, Vec<(usize, Vec<usize>)>), StatsError> {
    let cols = thresholds.len();
    let prep = if partitions.is_empty() {
        Prepared::new(diffs, thresholds)?
    } else {
        let cells = cells_of(diffs, partitions);
        let width = cells.data.len() / diffs.n_pairs();
        let laid = PairDiffs::new(&cells.data, diffs.n_pairs(), width)?;
        let mut prep = Prepared::with_cells(&laid, thresholds, &cells.starts)?;
        prep.cell_labels = cells.labels;
        prep.mark_padding(&cells.padding);
        prep
    };
    let n_cells = prep.cells.len();
    // Per group (all units, then each partition's groups), its cells.
    let mut members: Vec<Vec<usize>> = vec![(0..n_cells).collect()];
    for (pi, labels) in partitions.iter().enumerate() {
        let k = labels.iter().max().map_or(0, |&v| v as usize + 1);
        for g in 0..k as u32 {
            members.push((0..n_cells).filter(|&c| prep.cell_labels[c][pi] == g).collect());
        }
    }
    debug_assert_eq!(members.len(), sizes.len());
    // Per (group, column): where its histogram's bin 0 is, and which of a pattern's
    // `[cells x columns]` counts add up to its count.
    let sums: Vec<(usize, Vec<usize>)> = members
        .iter()
        .zip(offsets.iter().zip(sizes))
        .flat_map(|(cells, (&offset, &size))| {
            (0..cols).map(move |c| {
                (
                    offset + c * (size + 1),
                    cells.iter().map(|&cell| cell * cols + c).collect(),
                )
            })
        })
        .collect();
    Ok((prep, sums))
}

/// Two-sided tallies: every group of every partition in one run over the units, counted per
/// cell of units with the same labels, then summed per group (the same counts as a run over
/// each group's units alone; the max over all units is order-free).
#[allow(clippy::too_many_arguments)]
fn two_sided(
    diffs: &PairDiffs,
    thresholds: Thresholds,
    partitions: &[&[u32]],
    mode: Mode,
    start: u64,
    end: u64,
    bars: &[f64],
    offsets: &[usize],
    sizes: &[usize],
    out: &mut TallyRange,
) -> Result<(), StatsError> {
    let (prep, sums) = grouped(diffs, thresholds, partitions, offsets, sizes)?;
    let bar_index = BarIndex::new(bars);
    let n_hist = out.hist.len();
    let sum = tasks_summed(&prep, mode, start, end, n_hist + bars.len() + 1, |acc, lo, hi| {
        let (hist, bins) = acc.split_at_mut(n_hist);
        prep.task::<false>(mode, lo, hi, |_, row, ratio, _| {
            for (bin0, at) in &sums {
                let v: i64 = at.iter().map(|&i| row[i]).sum();
                hist[bin0 + v as usize] += 1;
            }
            bins[bar_index.at_or_below(ratio)] += 1;
        });
    });
    for (h, v) in out.hist.iter_mut().zip(&sum[..n_hist]) {
        *h += v;
    }
    for ((m, a), v) in out.max_bins.iter_mut().zip(out.abs_bins.iter_mut()).zip(&sum[n_hist..]) {
        *m += v;
        *a += v;
    }
    Ok(())
}

/// Runs `task(acc, lo, hi)` over the tasks of `start .. end` on the pool, each adding into an
/// accumulator of `width` integers of its thread's own, and returns their sum (integer sums:
/// the same whatever the number of threads or the order).
fn tasks_summed(
    prep: &Prepared,
    mode: Mode,
    start: u64,
    end: u64,
    width: usize,
    task: impl Fn(&mut [i64], u64, u64) + Sync,
) -> Vec<i64> {
    let empty = || vec![0i64; width];
    let bounds = if start < end {
        prep.task_bounds(mode, start, end)
    } else {
        Vec::new()
    };
    crate::threads::install(|| {
        bounds
            .par_windows(2)
            .fold(empty, |mut acc, w| {
                task(&mut acc, w[0], w[1]);
                acc
            })
            .reduce_with(|mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            })
            .unwrap_or_else(empty)
    })
}

/// The number of sorted bars at or below a value, in a few steps: a table of where each of
/// about `bars / 4` equal-width buckets starts narrows the search to three buckets, and the
/// answer is used only when the bars on either side of that slice confirm it (otherwise a
/// search over all the bars), so it is exactly `bars.partition_point(|b| b <= r)`.
pub(super) struct BarIndex<'a> {
    bars: &'a [f64],
    lo: f64,
    scale: f64,
    /// `starts[k]`: the bars below bucket `k`'s lower edge `lo + k / scale`; the last is all.
    starts: Vec<usize>,
}

impl<'a> BarIndex<'a> {
    pub(super) fn new(bars: &'a [f64]) -> Self {
        let (Some(&lo), Some(&hi)) = (bars.first(), bars.last()) else {
            return BarIndex {
                bars,
                lo: 0.0,
                scale: 0.0,
                starts: Vec::new(),
            };
        };
        let n_buckets = (bars.len() / 4).max(1);
        let scale = n_buckets as f64 / (hi - lo);
        let mut starts: Vec<usize> = (0..=n_buckets)
            .map(|k| bars.partition_point(|&b| b < lo + k as f64 / scale))
            .collect();
        starts.push(bars.len());
        BarIndex {
            bars,
            lo,
            scale,
            starts,
        }
    }

    #[inline]
    pub(super) fn at_or_below(&self, r: f64) -> usize {
        let bars = self.bars;
        if let Some(last) = self.starts.len().checked_sub(1) {
            let k = (((r - self.lo) * self.scale) as usize).min(last);
            let (a, b) = (self.starts[k.saturating_sub(1)], self.starts[(k + 2).min(last)]);
            if a <= b && (a == 0 || bars[a - 1] <= r) && (b == bars.len() || bars[b] > r) {
                return a + bars[a..b].partition_point(|&x| x <= r);
            }
        }
        bars.partition_point(|&x| x <= r)
    }
}

/// The observed counts (identity pattern) per group and threshold column, through the
/// tallies' route: `[groups x columns]`, row-major.
pub fn observed(
    diffs: &PairDiffs,
    thresholds: Thresholds,
    partitions: &[&[u32]],
    tail: Tail,
) -> Result<Vec<i64>, StatsError> {
    let mut negated = Vec::new();
    let diffs = oriented(diffs, tail, &mut negated)?;
    let n = diffs.n_pairs();
    let groups = unit_groups(diffs.n_units(), partitions)?;
    let cols = thresholds.len();
    let mut out = vec![0i64; groups.len() * cols];
    for (gi, units) in groups.iter().enumerate() {
        if units.is_empty() {
            continue;
        }
        let mut sub = vec![0.0f64; n * units.len()];
        for i in 0..n {
            for (k, &u) in units.iter().enumerate() {
                sub[i * units.len() + k] = diffs.pair(i)[u];
            }
        }
        let sub_diffs = PairDiffs::new(&sub, n, units.len())?;
        let prep = Prepared::new(&sub_diffs, thresholds)?;
        let row: Vec<i64> = if tail == Tail::Two {
            prep.run(Mode::Identity, 0, 1).counts
        } else {
            signed_range(&prep, Mode::Identity, 0, 1).pos
        };
        out[gi * cols..(gi + 1) * cols].copy_from_slice(&row);
    }
    Ok(out)
}

/// The differences a tail reads: negated (into `negated`) for `Less`, as given otherwise.
fn oriented<'a>(diffs: &PairDiffs<'a>, tail: Tail, negated: &'a mut Vec<f64>) -> Result<PairDiffs<'a>, StatsError> {
    if tail != Tail::Less {
        return Ok(*diffs);
    }
    *negated = negate(diffs);
    PairDiffs::new(negated, diffs.n_pairs(), diffs.n_units())
}

fn negate(diffs: &PairDiffs) -> Vec<f64> {
    (0..diffs.n_pairs())
        .flat_map(|i| diffs.pair(i).iter().map(|v| -v))
        .collect()
}

/// Per two-sided pattern: counts of units with t > c and with t < -c, `[cells x columns]`, and
/// the max and min S over all units.
struct Signed {
    pos: Vec<i64>,
    neg: Vec<i64>,
    max_s: Vec<f64>,
    min_s: Vec<f64>,
}

/// The signed statistics of patterns `start .. end` (exact `j`, Monte Carlo `i`, identity).
fn signed_range(prep: &Prepared, mode: Mode, start: u64, end: u64) -> Signed {
    let len = (end - start) as usize;
    let g = prep.groups.len();
    let mut patterns = vec![0u8; len * g];
    for (p, bytes) in patterns.chunks_exact_mut(g).enumerate() {
        match mode {
            Mode::Exact => bytes.copy_from_slice(&(start + p as u64).to_le_bytes()[..g]),
            Mode::MonteCarlo { key } => monte_carlo_pattern(key, start + p as u64, prep.n, bytes),
            Mode::Identity => {}
        }
    }
    let cols = prep.columns.len();
    let k_all = prep.ratios.len();
    let n_cells = prep.cells.len();
    let cc = n_cells * cols;
    let tasks = (2 * crate::threads::current_threads()).max(1);
    let per = len.div_ceil(tasks).max(256);
    let parts: Vec<Signed> = crate::threads::install(|| {
        patterns
            .par_chunks(per * g)
            .map(|chunk| {
                let q = chunk.len() / g;
                let mut pos_raw = vec![0i64; q * n_cells * k_all];
                let mut neg_raw = vec![0i64; q * n_cells * k_all];
                let mut max_s = vec![f64::NEG_INFINITY; q];
                let mut min_s = vec![f64::INFINITY; q];
                signed_sums(prep, chunk, |p, u0, s| {
                    let (mut hi, mut lo) = (max_s[p], min_s[p]);
                    for &v in s {
                        hi = if v > hi { v } else { hi };
                        lo = if v < lo { v } else { lo };
                    }
                    max_s[p] = hi;
                    min_s[p] = lo;
                    for (cell, &(c_lo, c_hi)) in prep.cells.iter().enumerate() {
                        let (a0, a1) = (c_lo.max(u0) - u0, c_hi.min(u0 + s.len()).saturating_sub(u0));
                        if a0 >= a1 {
                            continue;
                        }
                        let seg = &s[a0..a1];
                        let at = (p * n_cells + cell) * k_all;
                        for (k, &r) in prep.ratios.iter().enumerate() {
                            let (mut a, mut b) = (0i64, 0i64);
                            for &v in seg {
                                let above = v * v > r;
                                a += (above & (v > 0.0)) as i64;
                                b += (above & (v < 0.0)) as i64;
                            }
                            pos_raw[at + k] += a;
                            neg_raw[at + k] += b;
                        }
                    }
                });
                let mut out = Signed {
                    pos: vec![0; q * cc],
                    neg: vec![0; q * cc],
                    max_s,
                    min_s,
                };
                for (p, bytes) in chunk.chunks_exact(g).enumerate() {
                    for cell in 0..n_cells {
                        for (c, &(idx, _, _)) in prep.columns.iter().enumerate() {
                            out.pos[p * cc + cell * cols + c] = pos_raw[(p * n_cells + cell) * k_all + idx];
                            out.neg[p * cc + cell * cols + c] = neg_raw[(p * n_cells + cell) * k_all + idx];
                        }
                    }
                    let (pos, neg) = (&mut out.pos[p * cc..(p + 1) * cc], &mut out.neg[p * cc..(p + 1) * cc]);
                    prep.add_classes_signed(bytes, (pos, neg), (&mut out.max_s[p], &mut out.min_s[p]));
                }
                out
            })
            .collect()
    });
    let mut all = Signed {
        pos: Vec::with_capacity(len * cols),
        neg: Vec::with_capacity(len * cols),
        max_s: Vec::with_capacity(len),
        min_s: Vec::with_capacity(len),
    };
    for part in parts {
        all.pos.extend(part.pos);
        all.neg.extend(part.neg);
        all.max_s.extend(part.max_s);
        all.min_s.extend(part.min_s);
    }
    all
}

/// Calls `visit(p, u0, s)` with the flipped sums `s` of units `u0 .. u0 + s.len()` under each
/// pattern `p` of `patterns` (bytes, as the Monte Carlo kernel reads them), added in the
/// kernels' order `((x_0 + G_1) + G_2 ...) + G_0`, so the values are those the two-sided
/// kernels square. Padding units are left out (at the end) or NaN (the cells' own padding,
/// see `Prepared::sum_is_s`). The closed-form (equal-magnitude) units, whose normalised columns are
/// 0, get NaN too: their S is not that sum, and a NaN is never over a threshold, a max or a min
/// (their closed form is the caller's).
fn signed_sums(prep: &Prepared, patterns: &[u8], mut visit: impl FnMut(usize, usize, &[f64])) {
    let g = prep.groups.len();
    let m = prep.unit_class.len();
    let ub = (MC_TABLE_BUDGET / (8 * 256 * g) / LANES * LANES)
        .clamp(LANES, 512)
        .min(prep.m_pad);
    let plane = 256 * ub;
    let mut tables = vec![0.0f64; g * plane];
    let mut s = vec![0.0f64; ub];
    for u0 in (0..prep.m_pad).step_by(ub) {
        let w = ub.min(prep.m_pad - u0);
        build_group_tables(prep, u0, w, plane, &mut tables);
        let real = w.min(m.saturating_sub(u0));
        if real == 0 {
            continue;
        }
        let closed: Vec<usize> = (0..real).filter(|&i| !prep.sum_is_s[u0 + i]).collect();
        for (p, bytes) in patterns.chunks_exact(g).enumerate() {
            let row = |gi: usize| {
                let at = gi * plane + bytes[gi] as usize * w;
                &tables[at..at + real]
            };
            if g == 1 {
                s[..real].copy_from_slice(row(0));
            } else {
                s[..real].copy_from_slice(row(1));
                for gi in 2..g {
                    for (a, &b) in s[..real].iter_mut().zip(row(gi)) {
                        *a += b;
                    }
                }
                for (a, &b) in s[..real].iter_mut().zip(row(0)) {
                    *a += b;
                }
            }
            for &i in &closed {
                s[i] = f64::NAN;
            }
            visit(p, u0, &s[..real]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Per (group, column): its histogram's bin 0 and the cell counts that add up to it.
    type GroupSums = Vec<(usize, Vec<usize>)>;

    /// Both one-sided tests' setup: the oriented data grouped by `parts`, the bars (the units' own
    /// scores and a grid, so that the bins tell a negative max from 0), and an empty tally.
    fn one_sided_case(
        diffs: &PairDiffs,
        tail: Tail,
        thr: Thresholds,
        parts: &[&[u32]],
    ) -> (Prepared, GroupSums, Vec<f64>, TallyRange) {
        let mut negated = Vec::new();
        let oriented = oriented(diffs, tail, &mut negated).unwrap();
        let mut bars = unit_scores(diffs, tail).unwrap();
        bars.extend((-40..=40).map(|k| k as f64 / 10.0));
        bars.sort_by(f64::total_cmp);
        let sizes: Vec<usize> = unit_groups(diffs.n_units(), parts)
            .unwrap()
            .iter()
            .map(|g| g.len())
            .collect();
        let (mut offsets, mut total) = (Vec::new(), 0);
        for &s in &sizes {
            offsets.push(total);
            total += thr.len() * (s + 1);
        }
        let (prep, sums) = grouped(&oriented, thr, parts, &offsets, &sizes).unwrap();
        let empty = TallyRange {
            hist: vec![0; total],
            max_bins: vec![0; bars.len() + 1],
            abs_bins: vec![0; bars.len() + 1],
            patterns: 0,
        };
        (prep, sums, bars, empty)
    }

    #[test]
    fn monte_carlo_one_sided_kernel_equals_every_unit_under_every_permutation_bit_for_bit() {
        // The Monte Carlo kernel's signed form against the reference rows written apart from it
        // (`signed_sums`): one to four groups of pair bits (5, 9, 12, 19 and 25 pairs), five
        // ratio thresholds (two kernel passes), units alike (many permutations with a max S
        // below 0), one equal-magnitude unit, cells with padding or none, both tails, and
        // ranges that start anywhere.
        let mut negative_max = 0;
        for (n, m, seed) in [(5, 37, 1), (9, 200, 2), (12, 150, 3), (19, 300, 4), (25, 260, 5)] {
            // Units close to one shared vector of differences, so that under about half of the
            // permutations every unit's S is below 0 (a negative max S).
            let mut data = crate::sign_flip::tests::random_data(n, m, seed);
            let shared = crate::sign_flip::tests::random_data(n, 1, seed + 100);
            for (i, row) in data.chunks_exact_mut(m).enumerate() {
                for v in row.iter_mut() {
                    *v = shared[i] - 0.5 + 0.2 * *v;
                }
                row[3] = if i % 4 == 1 { 0.7 } else { -0.7 };
            }
            let diffs = PairDiffs::new(&data, n, m).unwrap();
            let kind: Vec<u32> = (0..m as u32).map(|u| (u / 20) % 2).collect();
            let region: Vec<u32> = (0..m as u32).map(|u| u % 3).collect();
            let thr = Thresholds {
                t: &[0.5, 2.0, 3.0, 4.5],
                d: &[0.8],
            };
            for tail in [Tail::Greater, Tail::Less] {
                for parts in [vec![&kind[..], &region[..]], vec![]] {
                    let (prep, sums, bars, empty) = one_sided_case(&diffs, tail, thr, &parts);
                    assert!(prep.ratios.len() > MAX_K, "the case of two kernel passes");
                    let mode = Mode::MonteCarlo {
                        key: rng::stream_key(seed, Stream::SignFlip),
                    };
                    for (start, end) in [(0u64, 3000), (17, 9_000), (1 << 40, (1 << 40) + 1500)] {
                        let (mut kernel, mut rows) = (empty.clone(), empty.clone());
                        one_sided(&prep, &sums, mode, start, end, &bars, &mut kernel);
                        one_sided_rows(&prep, &sums, mode, start, end, &bars, &mut rows);
                        let label = format!("n {n}, {tail:?}, {} partitions, {start}..{end}", parts.len());
                        assert_eq!(kernel, rows, "{label}");
                        assert_eq!(kernel.max_bins.iter().sum::<i64>(), (end - start) as i64, "{label}");
                        // Permutations whose max S is below 0 (bins at or below the negative bars).
                        negative_max += kernel.max_bins[..=bars.partition_point(|&b| b < 0.0)]
                            .iter()
                            .sum::<i64>();
                    }
                }
            }
        }
        assert!(negative_max > 10_000, "the case this test is for: {negative_max}");
    }

    #[test]
    fn exact_one_sided_kernel_equals_every_unit_under_every_pattern_bit_for_bit() {
        // 19 pairs: two high groups (8 + 2 bits) over the low byte, so the kernel's levels and
        // round 2 run across h. Units shifted negative (near the identity the max S is below 0,
        // where the skipped units' bound is checked against the max and the min), one
        // equal-magnitude unit (negative), and cells with padding. (An all-zero unit, S = 0 in
        // every pattern, would keep every max at 0 or above: the Python tests have one.)
        let (n, m) = (19, 700);
        let mut data = crate::sign_flip::tests::random_data(n, m, 33);
        for (i, row) in data.chunks_exact_mut(m).enumerate() {
            for v in row.iter_mut() {
                *v -= 1.2;
            }
            row[5] = if i == 4 { 0.9 } else { -0.9 };
        }
        let diffs = PairDiffs::new(&data, n, m).unwrap();
        let kind: Vec<u32> = (0..m as u32).map(|u| (u / 50) % 2).collect();
        let region: Vec<u32> = (0..m as u32).map(|u| u % 3).collect();
        let thr = Thresholds {
            t: &[2.0, 3.0, 4.5],
            d: &[0.8],
        };
        for tail in [Tail::Greater, Tail::Less] {
            for parts in [vec![&kind[..], &region[..]], vec![]] {
                let (prep, sums, bars, empty) = one_sided_case(&diffs, tail, thr, &parts);
                for (start, end) in [(0u64, 1 << 16), (3, 70_001), (200_001, 1 << 18)] {
                    let (mut kernel, mut rows) = (empty.clone(), empty.clone());
                    one_sided(&prep, &sums, Mode::Exact, start, end, &bars, &mut kernel);
                    one_sided_rows(&prep, &sums, Mode::Exact, start, end, &bars, &mut rows);
                    assert_eq!(kernel, rows, "{tail:?}, {} partitions, {start}..{end}", parts.len());
                }
            }
        }
    }
}
