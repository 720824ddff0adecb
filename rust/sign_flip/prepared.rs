//! Normalised differences, groups of pairs and ratio thresholds: what every kernel reads.

use super::*;
use crate::paired::ScaledDiffs;
use rayon::prelude::*;

/// One group of pairs whose sign bits form one byte of the pattern.
#[derive(Debug, Clone, Copy)]
pub(super) struct Group {
    pub(super) first_pair: usize,
    pub(super) bits: usize,
}

/// Normalised differences and everything derived from the thresholds.
pub(super) struct Prepared {
    pub(super) n: usize,
    /// Units, padded with all-zero units to a multiple of [`LANES`].
    pub(super) m_pad: usize,
    /// `n x m_pad`, each unit divided by the root of its sum of squares; constant units are 0.
    pub(super) xt: Vec<f64>,
    /// Group 0 holds the low bits (pairs 1..=8), the others the high bits, in order.
    pub(super) groups: Vec<Group>,
    /// Units whose |differences| are all equal and not 0, by sign pattern (closed form).
    pub(super) classes: Vec<EqualClass>,
    /// Each unit's index in `classes`, or [`NO_CLASS`].
    pub(super) unit_class: Vec<u32>,
    /// Sorted distinct ratio thresholds.
    pub(super) ratios: Vec<f64>,
    /// For each output column: its index in `ratios`, its threshold, whether it is a d column.
    pub(super) columns: Vec<(usize, f64, bool)>,
    /// Units with `|B| + R` at or below this are skipped in exact mode.
    pub(super) skip_below: f64,
    /// Cells of units counted apart: cell `c` is units `cells[c].0 .. cells[c].1` (multiples
    /// of [`LANES`] apart from the last end, `m_pad`). One cell of every unit unless built by
    /// [`Prepared::with_cells`].
    pub(super) cells: Vec<(usize, usize)>,
    /// `[classes x cells]`: the units of each closed-form class in each cell.
    pub(super) class_cells: Vec<i64>,
    /// Per cell, its label in each partition (set by the tallies; empty otherwise).
    pub(super) cell_labels: Vec<Vec<u32>>,
    /// Per column (`m_pad`): whether its normalised sum is a unit's S. Not for the padding (no
    /// unit; the tallies mark the cells' own with [`Prepared::mark_padding`]) nor the closed-form
    /// units (zero columns, their S is in closed form): the signed maxima and minima skip those.
    pub(super) sum_is_s: Vec<bool>,
}

impl Prepared {
    pub(super) fn new(diffs: &PairDiffs, thresholds: Thresholds) -> Result<Self, StatsError> {
        Self::with_cells(diffs, thresholds, &[0])
    }

    /// As [`Prepared::new`], with counts kept apart per cell: cell `c` is units
    /// `starts[c] .. starts[c + 1]` (the last to the end). Every start must be a multiple of
    /// [`LANES`], the first 0, ascending.
    pub(super) fn with_cells(diffs: &PairDiffs, thresholds: Thresholds, starts: &[usize]) -> Result<Self, StatsError> {
        thresholds.check()?;
        let n = diffs.n_pairs();
        let nf = n as f64;
        let m = diffs.n_units();
        let m_pad = m.div_ceil(LANES) * LANES;
        let scaled = ScaledDiffs::new(diffs);
        let mut xt = vec![0.0f64; n * m_pad];
        let n_bytes = group_count(n);
        let mut classes: Vec<EqualClass> = Vec::new();
        let mut unit_class = vec![NO_CLASS; m];
        for u in 0..m {
            let first = scaled.pair(0)[u];
            let magnitude = first.abs();
            let mut equal = magnitude != 0.0;
            let mut ss = 0.0;
            for i in 0..n {
                let x = scaled.pair(i)[u];
                equal &= x.abs() == magnitude;
                ss += x * x;
            }
            if ss == 0.0 {
                continue; // all 0: S = 0 under every pattern
            }
            if equal {
                let mut mask = vec![0u8; n_bytes];
                for i in 1..n {
                    if (scaled.pair(i)[u] < 0.0) != (first < 0.0) {
                        mask[(i - 1) / 8] |= 1 << ((i - 1) % 8);
                    }
                }
                let positive = first > 0.0;
                let at = match classes.iter().position(|c| c.positive == positive && c.mask == mask) {
                    Some(at) => at,
                    None => {
                        classes.push(EqualClass {
                            mask,
                            positive,
                            count: 0,
                        });
                        classes.len() - 1
                    }
                };
                classes[at].count += 1;
                unit_class[u] = at as u32;
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
        let skip_ratio = ratios
            .first()
            .copied()
            .unwrap_or(f64::INFINITY)
            .min(ratio_for_t(3.0, nf));
        let mut cells = Vec::with_capacity(starts.len());
        for (c, &lo) in starts.iter().enumerate() {
            let hi = starts.get(c + 1).copied().unwrap_or(m_pad);
            assert!(lo.is_multiple_of(LANES) && lo <= hi && hi <= m_pad, "bad cell bounds");
            cells.push((lo, hi));
        }
        assert!(starts.first() == Some(&0), "the first cell starts at unit 0");
        let mut class_cells = vec![0i64; classes.len() * cells.len()];
        for (c, &(lo, hi)) in cells.iter().enumerate() {
            for &k in &unit_class[lo.min(m)..hi.min(m)] {
                if k != NO_CLASS {
                    class_cells[k as usize * cells.len() + c] += 1;
                }
            }
        }
        Ok(Prepared {
            cells,
            class_cells,
            cell_labels: Vec::new(),
            sum_is_s: (0..m_pad).map(|u| u < m && unit_class[u] == NO_CLASS).collect(),
            n,
            m_pad,
            xt,
            groups,
            classes,
            unit_class,
            ratios,
            columns,
            skip_below: skip_ratio.sqrt() - SKIP_MARGIN,
        })
    }

    /// Marks columns as padding (no unit): see `sum_is_s`.
    pub(super) fn mark_padding(&mut self, columns: &[usize]) {
        for &u in columns {
            self.sum_is_s[u] = false;
        }
    }

    pub(super) fn pair(&self, i: usize) -> &[f64] {
        &self.xt[i * self.m_pad..(i + 1) * self.m_pad]
    }

    pub(super) fn low_bits(&self) -> usize {
        self.groups[0].bits
    }

    /// The null over `start .. end`, split into tasks on the pool, written in place.
    pub(super) fn run(&self, mode: Mode, start: u64, end: u64) -> NullRange {
        let len = (end - start) as usize;
        let cols = self.columns.len() * self.cells.len();
        let mut out = NullRange {
            counts: vec![0; len * cols],
            max_abs_t: vec![0.0; len],
            max_ratio: vec![0.0; len],
        };
        if len == 0 {
            return out;
        }
        let task_bounds = self.task_bounds(mode, start, end);
        let mut jobs = Vec::with_capacity(task_bounds.len() - 1);
        let (mut counts, mut maxima, mut ratios) =
            (&mut out.counts[..], &mut out.max_abs_t[..], &mut out.max_ratio[..]);
        for w in task_bounds.windows(2) {
            let k = (w[1] - w[0]) as usize;
            let (c_head, c_tail) = std::mem::take(&mut counts).split_at_mut(k * cols);
            let (m_head, m_tail) = std::mem::take(&mut maxima).split_at_mut(k);
            let (r_head, r_tail) = std::mem::take(&mut ratios).split_at_mut(k);
            jobs.push((w[0], w[1], c_head, m_head, r_head));
            counts = c_tail;
            maxima = m_tail;
            ratios = r_tail;
        }
        crate::threads::install(|| {
            jobs.into_par_iter().for_each(|(lo, hi, counts, maxima, ratios)| {
                self.task::<true>(mode, lo, hi, |p, row, ratio, abs_t| {
                    counts[p * cols..(p + 1) * cols].copy_from_slice(row);
                    ratios[p] = ratio;
                    maxima[p] = abs_t;
                });
            });
        });
        out
    }

    /// Boundaries of the tasks that cover `start .. end` (`start`, ..., `end`): exact tasks
    /// cover a power of two of whole high-byte values, aligned (at most [`EXACT_H_CHUNK`],
    /// within [`EXACT_TASK_COUNT_BYTES`] of counts, and few enough to give every thread two);
    /// Monte Carlo tasks are balanced over the pool. None of this changes any number.
    pub(super) fn task_bounds(&self, mode: Mode, start: u64, end: u64) -> Vec<u64> {
        match mode {
            Mode::Exact => {
                let per_h = ((4 * self.cells.len() * self.ratios.len().max(1)) as u64) << self.low_bits();
                let threads = crate::threads::current_threads() as u64;
                let balanced = ((end - start) >> self.low_bits()) / (2 * threads);
                let h_per_task = EXACT_H_CHUNK.min(EXACT_TASK_COUNT_BYTES / per_h).min(balanced).max(1);
                let span = (1u64 << h_per_task.ilog2()) << self.low_bits();
                let mut b = vec![start];
                let mut next = (start / span + 1) * span;
                while next < end {
                    b.push(next);
                    next += span;
                }
                b.push(end);
                b
            }
            Mode::MonteCarlo { .. } | Mode::Identity => {
                let tasks = 2 * crate::threads::current_threads() as u64;
                let size = (end - start).div_ceil(tasks).clamp(512, 16_384);
                let mut b: Vec<u64> = (start..end).step_by(size as usize).collect();
                b.push(end);
                b
            }
        }
    }

    /// One task: raw counts and max ratios over the units, then the closed-form constant
    /// units; hands each pattern `p` (from 0) to `sink(p, counts, max_ratio, max_abs_t)`, the
    /// counts `[cells x columns]`. `max_abs_t` is computed only if `WITH_T` (NaN otherwise).
    pub(super) fn task<const WITH_T: bool>(
        &self,
        mode: Mode,
        start: u64,
        end: u64,
        sink: impl FnMut(usize, &[i64], f64, f64),
    ) {
        TASK_BUFFERS.with(|cell| match cell.try_borrow_mut() {
            Ok(mut buffers) => self.task_in::<WITH_T>(&mut buffers, mode, start, end, sink),
            Err(_) => self.task_in::<WITH_T>(&mut TaskBuffers::default(), mode, start, end, sink),
        });
    }

    /// The kernels over one task's patterns, into `buffers`: counts `raw` and maxima (with
    /// `signed`: also the counts of S > 0 `raw_pos` and the minima, and the maxima are of S).
    /// Thresholds in passes of at most MAX_K into one buffer (rows of k_all); every pass also
    /// takes the max and min (idempotent). Exact counts are [cells x k_all x patterns], Monte
    /// Carlo counts [patterns x cells x k_all].
    fn fill(&self, buffers: &mut TaskBuffers, mode: Mode, start: u64, end: u64, signed: bool) {
        let len = (end - start) as usize;
        let k_all = self.ratios.len();
        let g = self.groups.len();
        let TaskBuffers {
            raw,
            max_ratio,
            patterns,
            kernel,
            raw_pos,
            min_s,
        } = buffers;
        let size = len * self.cells.len() * k_all;
        refill(raw, size, 0);
        refill(max_ratio, len, if signed { f64::NEG_INFINITY } else { 0.0 });
        if signed {
            refill(raw_pos, size, 0);
            refill(min_s, len, f64::INFINITY);
        }
        match mode {
            Mode::MonteCarlo { key } => {
                refill(patterns, len * g, 0);
                for (i, bytes) in patterns.chunks_exact_mut(g).enumerate() {
                    monte_carlo_pattern(key, start + i as u64, self.n, bytes);
                }
            }
            Mode::Identity => refill(patterns, len * g, 0),
            Mode::Exact => patterns.clear(),
        }
        let mut first = 0;
        while first < k_all || first == 0 {
            let batch = (k_all - first).min(MAX_K);
            let (offset, kind) = match mode {
                Mode::Exact => (first * len, kernels::Patterns::Range { start, end }),
                Mode::MonteCarlo { .. } | Mode::Identity => (first, kernels::Patterns::Bytes(patterns)),
            };
            let offset = offset.min(raw.len());
            kernels::run(&mut kernels::Job {
                prep: self,
                ratios: &self.ratios[first..first + batch],
                patterns: kind,
                counts: &mut raw[offset..],
                k_stride: k_all,
                max_ratio,
                scratch: kernel,
                signed: signed.then(|| kernels::SignedOut {
                    pos: &mut raw_pos[offset..],
                    min_s,
                }),
            });
            first += batch.max(1);
        }
    }

    /// Where pattern `p`'s count of each (cell, column) is in the kernels' counts: `at[cell *
    /// cols + c] + p * step` (exact counts are [cells x k_all x patterns], Monte Carlo and
    /// identity counts [patterns x cells x k_all]).
    fn count_layout(&self, mode: Mode, len: usize) -> (Vec<usize>, usize) {
        let k_all = self.ratios.len();
        let (per_cell_column, step) = match mode {
            Mode::Exact => (len, 1),
            Mode::MonteCarlo { .. } | Mode::Identity => (1, self.cells.len() * k_all),
        };
        let at = (0..self.cells.len())
            .flat_map(|cell| {
                self.columns
                    .iter()
                    .map(move |&(idx, _, _)| (cell * k_all + idx) * per_cell_column)
            })
            .collect();
        (at, step)
    }

    fn task_in<const WITH_T: bool>(
        &self,
        buffers: &mut TaskBuffers,
        mode: Mode,
        start: u64,
        end: u64,
        mut sink: impl FnMut(usize, &[i64], f64, f64),
    ) {
        let len = (end - start) as usize;
        let n_cells = self.cells.len();
        let g = self.groups.len();
        self.fill(buffers, mode, start, end, false);
        let TaskBuffers {
            raw,
            max_ratio,
            patterns,
            ..
        } = buffers;
        let cols = self.columns.len();
        let nf = self.n as f64;
        let mut class_t = vec![0.0f64; self.classes.len()];
        let mut row = vec![0i64; n_cells * cols];
        let (at, step) = self.count_layout(mode, len);
        for p in 0..len {
            for (r, &a) in row.iter_mut().zip(&at) {
                *r = raw[a + p * step] as i64;
            }
            let mut ratio = max_ratio[p];
            let mut abs_t = if WITH_T {
                abs_t_from_ratio(ratio, self.n)
            } else {
                f64::NAN
            };
            if !self.classes.is_empty() {
                let mut word = [0u8; 8];
                let bytes = pattern_bytes(mode, start, p, &patterns[..], g, &mut word);
                for (class, t) in self.classes.iter().zip(class_t.iter_mut()) {
                    let k = class.agreement(bytes, self.n);
                    *t = closed_form_abs_t(k, self.n);
                    let r = (k * k) as f64 / nf;
                    ratio = if r > ratio { r } else { ratio };
                    if WITH_T {
                        abs_t = abs_t.max(*t);
                    }
                }
                for cell in 0..n_cells {
                    for (c, &(_, threshold, is_d)) in self.columns.iter().enumerate() {
                        for (ci, &t) in class_t.iter().enumerate() {
                            let stat = if is_d { t / nf.sqrt() } else { t };
                            if stat > threshold {
                                row[cell * cols + c] += self.class_cells[ci * n_cells + cell];
                            }
                        }
                    }
                }
            }
            sink(p, &row, ratio, abs_t);
        }
    }
}

impl Prepared {
    /// The closed-form (equal-magnitude) units under one pattern (`bytes`), one-sided: each
    /// class's S (signed, in the normalised sums' units; 0 when balanced, t = 0) lowers `min`
    /// and raises `max` whatever its sign, and its units in each cell are added to `pos`
    /// (t > c) or `neg` (t < -c), `[cells x columns]`.
    pub(super) fn add_classes_signed(
        &self,
        bytes: &[u8],
        (pos, neg): (&mut [i64], &mut [i64]),
        (max, min): (&mut f64, &mut f64),
    ) {
        let nf = self.n as f64;
        let (n_cells, cols) = (self.cells.len(), self.columns.len());
        for (ci, class) in self.classes.iter().enumerate() {
            let k = class.agreement(bytes, self.n);
            let positive = class.positive == (k > 0);
            let s = ((k * k) as f64 / nf).sqrt();
            let signed = if positive { s } else { -s };
            *max = max.max(signed);
            *min = min.min(signed);
            if k == 0 {
                continue;
            }
            let t = closed_form_abs_t(k, self.n);
            for (c, &(_, threshold, is_d)) in self.columns.iter().enumerate() {
                let stat = if is_d { t / nf.sqrt() } else { t };
                if stat > threshold {
                    let side = if positive { &mut *pos } else { &mut *neg };
                    for cell in 0..n_cells {
                        side[cell * cols + c] += self.class_cells[ci * n_cells + cell];
                    }
                }
            }
        }
    }

    /// One one-sided task, exact patterns `start .. end` of the two-sided enumeration or Monte
    /// Carlo permutations: hands each pattern `p` (from 0) to `sink(p, pos, neg, max_s, min_s)`:
    /// the units with t > c and with t < -c, `[cells x columns]`, and the max and min of S over
    /// the units, closed-form units included (as `tallies::signed_range` gives them, bit for
    /// bit). A Monte Carlo permutation's pair-0 sign is the caller's (it picks S or -S).
    pub(super) fn task_signed(
        &self,
        mode: Mode,
        start: u64,
        end: u64,
        sink: impl FnMut(usize, &[i64], &[i64], f64, f64),
    ) {
        TASK_BUFFERS.with(|cell| match cell.try_borrow_mut() {
            Ok(mut buffers) => self.task_signed_in(&mut buffers, mode, start, end, sink),
            Err(_) => self.task_signed_in(&mut TaskBuffers::default(), mode, start, end, sink),
        });
    }

    fn task_signed_in(
        &self,
        buffers: &mut TaskBuffers,
        mode: Mode,
        start: u64,
        end: u64,
        mut sink: impl FnMut(usize, &[i64], &[i64], f64, f64),
    ) {
        let len = (end - start) as usize;
        let n_cells = self.cells.len();
        let g = self.groups.len();
        self.fill(buffers, mode, start, end, true);
        let TaskBuffers {
            raw,
            max_ratio,
            patterns,
            raw_pos,
            min_s,
            ..
        } = buffers;
        let cols = self.columns.len();
        let (mut pos, mut neg) = (vec![0i64; n_cells * cols], vec![0i64; n_cells * cols]);
        let (at, step) = self.count_layout(mode, len);
        for p in 0..len {
            for ((pv, nv), &a) in pos.iter_mut().zip(neg.iter_mut()).zip(&at) {
                *pv = raw_pos[a + p * step] as i64;
                *nv = raw[a + p * step] as i64 - *pv;
            }
            let (mut hi_s, mut lo_s) = (max_ratio[p], min_s[p]);
            let mut word = [0u8; 8];
            let bytes = pattern_bytes(mode, start, p, &patterns[..], g, &mut word);
            self.add_classes_signed(bytes, (&mut pos, &mut neg), (&mut hi_s, &mut lo_s));
            sink(p, &pos, &neg, hi_s, lo_s);
        }
    }
}

/// The group bytes of a task's pattern `p`: exact pattern `start + p` read little-endian (into
/// `word`), or the Monte Carlo / identity patterns' row `p` of `g` bytes.
fn pattern_bytes<'b>(
    mode: Mode,
    start: u64,
    p: usize,
    patterns: &'b [u8],
    g: usize,
    word: &'b mut [u8; 8],
) -> &'b [u8] {
    match mode {
        Mode::Exact => {
            *word = (start + p as u64).to_le_bytes();
            &word[..g]
        }
        Mode::MonteCarlo { .. } | Mode::Identity => &patterns[p * g..(p + 1) * g],
    }
}

/// Buffers a thread's tasks reuse: megabytes of counts and tables, whose fresh pages cost a
/// task more than filling them (page faults, zero-page copies).
#[derive(Default)]
struct TaskBuffers {
    raw: Vec<u32>,
    max_ratio: Vec<f64>,
    patterns: Vec<u8>,
    kernel: kernels::Scratch,
    /// One-sided tasks only: counts of S > 0 and the min of S.
    raw_pos: Vec<u32>,
    min_s: Vec<f64>,
}

thread_local! {
    static TASK_BUFFERS: std::cell::RefCell<TaskBuffers> = std::cell::RefCell::default();
}

/// `v` set to `len` copies of `value`, keeping its allocation.
fn refill<T: Copy>(v: &mut Vec<T>, len: usize, value: T) {
    v.clear();
    v.resize(len, value);
}

/// `unit_class` of a unit that is not in a class.
pub(super) const NO_CLASS: u32 = u32::MAX;

/// Units whose |differences| all equal one value `v != 0`, with one sign pattern: under a
/// pattern that leaves `k` = (agreeing - disagreeing) pairs, each has `|t| = sqrt((n-1) k^2 /
/// (n^2 - k^2))`, infinite where every flipped value agrees (|k| = n). Constant units (every
/// sign alike) are the case `mask = 0`. Computed in closed form: a float64 route through the
/// normalised sums gives |k| = n only up to rounding (a huge finite |t| instead of inf).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct EqualClass {
    /// Pattern bytes: bit `i - 1` set where pair `i`'s sign differs from pair 0's.
    pub(super) mask: Vec<u8>,
    /// Whether pair 0's difference is positive.
    pub(super) positive: bool,
    /// Units in the class.
    pub(super) count: i64,
}

impl EqualClass {
    /// `k`: pairs agreeing with pair 0 minus pairs disagreeing, after flipping by `bytes`.
    #[inline]
    pub(super) fn agreement(&self, bytes: &[u8], n: usize) -> i64 {
        let differ: u32 = bytes.iter().zip(&self.mask).map(|(b, m)| (b ^ m).count_ones()).sum();
        n as i64 - 2 * differ as i64
    }
}

/// |t| of an equal-magnitude unit whose flipped values have agreement `k`.
#[inline]
pub(super) fn closed_form_abs_t(k: i64, n: usize) -> f64 {
    let nf = n as f64;
    if k.unsigned_abs() as usize == n {
        f64::INFINITY
    } else {
        let k2 = (k * k) as f64;
        ((nf - 1.0) * k2 / (nf * nf - k2)).sqrt()
    }
}
