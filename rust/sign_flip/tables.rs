//! Lookup tables of partial sums over groups of pairs (no `unsafe`).

use super::prepared::{Group, Prepared};
use super::GROUP_BITS;

/// Partial sums of the `bits` pairs from `first_pair`, for units `u0 .. u0 + w`: entry `e` is
/// the sum, in pair order, of those pairs' values with pair `first_pair + b` negated where bit
/// `b` of `e` is set; with `plus_pair0`, then pair 0 added (`x_0 + sum`, the first addition of
/// every S, done once per entry instead of once per pattern). Byte-major: `table[e * w + u]`.
#[inline(always)]
pub(super) fn build_byte_major(
    prep: &Prepared,
    first_pair: usize,
    bits: usize,
    u0: usize,
    w: usize,
    table: &mut [f64],
    plus_pair0: bool,
) {
    if bits == 0 {
        table[..w].fill(0.0);
    } else {
        let x = &prep.pair(first_pair)[u0..u0 + w];
        for u in 0..w {
            table[u] = x[u];
            table[w + u] = -x[u];
        }
    }
    if bits <= 1 {
        if plus_pair0 {
            fold_pair0(prep, bits, u0, w, table);
        }
        return;
    }
    for b in 1..bits {
        let x = &prep.pair(first_pair + b)[u0..u0 + w];
        let half = 1usize << b;
        let (kept, flipped) = table.split_at_mut(half * w);
        let x0 = &prep.pair(0)[u0..u0 + w];
        for (src, dst) in kept.chunks_exact_mut(w).zip(flipped.chunks_exact_mut(w)) {
            if plus_pair0 && b + 1 == bits {
                // The last pair, then pair 0 in the same pass (IEEE addition commutes: the
                // same bits as x_0 + sum).
                for (((s, d), &v), &v0) in src.iter_mut().zip(dst.iter_mut()).zip(x).zip(x0) {
                    let old = *s;
                    *d = (old - v) + v0;
                    *s = (old + v) + v0;
                }
            } else {
                for ((s, d), &v) in src.iter_mut().zip(dst.iter_mut()).zip(x) {
                    let old = *s;
                    *d = old - v;
                    *s = old + v;
                }
            }
        }
    }
}

/// Entry `e` alone of the byte-major table of `bits >= 1` pairs from `first_pair` (no pair
/// 0), for units `u0 .. u0 + w`: the same operations in the same order, so the same bits.
#[inline(always)]
fn byte_major_entry(prep: &Prepared, first_pair: usize, bits: usize, e: usize, u0: usize, w: usize, out: &mut [f64]) {
    let out = &mut out[..w];
    let x = &prep.pair(first_pair)[u0..u0 + w];
    let negate = e & 1 == 1;
    for (o, &v) in out.iter_mut().zip(x) {
        *o = if negate { -v } else { v };
    }
    for b in 1..bits {
        let x = &prep.pair(first_pair + b)[u0..u0 + w];
        let flipped = (e >> b) & 1 == 1;
        for (o, &v) in out.iter_mut().zip(x) {
            *o = if flipped { *o - v } else { *o + v };
        }
    }
}

/// The same sums, unit-major: `table[u * stride + e]` (same arithmetic, so the same bits).
#[inline(always)]
pub(super) fn build_unit_major(
    prep: &Prepared,
    first_pair: usize,
    bits: usize,
    u0: usize,
    w: usize,
    stride: usize,
    table: &mut [f64],
) {
    for (u, t) in table.chunks_exact_mut(stride).take(w).enumerate() {
        if bits == 0 {
            t[0] = 0.0;
            continue;
        }
        let v = prep.pair(first_pair)[u0 + u];
        t[0] = v;
        t[1] = -v;
        for b in 1..bits {
            let v = prep.pair(first_pair + b)[u0 + u];
            let half = 1usize << b;
            let (kept, flipped) = t.split_at_mut(half);
            for (s, d) in kept.iter_mut().zip(&mut flipped[..half]) {
                let old = *s;
                *d = old - v;
                *s = old + v;
            }
        }
    }
}

/// Adds pair 0 into a byte-major table (`table[e] = x_0 + table[e]`): the first addition of
/// every S, done once per entry instead of once per pattern, with the same bits.
#[inline(always)]
fn fold_pair0(prep: &Prepared, bits: usize, u0: usize, w: usize, table: &mut [f64]) {
    let x0 = &prep.pair(0)[u0..u0 + w];
    for row in table[..(1usize << bits) * w].chunks_exact_mut(w) {
        for (t, &x) in row.iter_mut().zip(x0) {
            *t += x; // IEEE addition commutes: the same bits as x_0 + t
        }
    }
}

/// Every group's byte-major table for units `u0 .. u0 + w` (`plane` values apart), with pair 0
/// folded into the first table added to it: `S = ((x_0 + G_1) + G_2 ...) + G_0`.
#[inline(always)]
pub(super) fn build_group_tables(prep: &Prepared, u0: usize, w: usize, plane: usize, tables: &mut [f64]) {
    let first = if prep.groups.len() > 1 { 1 } else { 0 };
    for (gi, group) in prep.groups.iter().enumerate() {
        let table = &mut tables[gi * plane..(gi + 1) * plane];
        build_byte_major(prep, group.first_pair, group.bits, u0, w, table, gi == first);
    }
}

/// Only the entries `bytes` (one per group) of the tables [`build_group_tables`] builds, in the
/// same places and with the same bits (the same operations in the same order, pair 0 folded
/// into the same group): for a task of a few patterns (the observed one, say), instead of every
/// group's 256 entries.
#[inline(always)]
pub(super) fn build_group_entries(
    prep: &Prepared,
    u0: usize,
    w: usize,
    plane: usize,
    tables: &mut [f64],
    bytes: &[u8],
) {
    let first = if prep.groups.len() > 1 { 1 } else { 0 };
    for (gi, group) in prep.groups.iter().enumerate() {
        let e = bytes[gi] as usize;
        let out = &mut tables[gi * plane + e * w..gi * plane + (e + 1) * w];
        if group.bits == 0 {
            out.fill(0.0);
        } else {
            byte_major_entry(prep, group.first_pair, group.bits, e, u0, w, out);
        }
        if gi == first {
            for (t, &x) in out.iter_mut().zip(&prep.pair(0)[u0..u0 + w]) {
                *t += x; // as fold_pair0 and the last step of build_byte_major
            }
        }
    }
}

/// Lookup tables of one block of units for exact mode.
pub(super) struct BlockTables {
    /// Unit-major sums of the low group: `low[u * stride + a]`, zero past 2^bits.
    pub(super) low: Vec<f64>,
    pub(super) stride: usize,
    /// Sums of the low group's top pairs (those choosing the leaf), unit-major:
    /// `leaf_offset[u * leaf_row + q]`, rows padded with NaN to `leaf_row`, a multiple of 8.
    pub(super) leaf_offset: Vec<f64>,
    pub(super) leaf_row: usize,
    ub: usize,
    pub(super) n_leaf: usize,
    pub(super) leaf_bits: usize,
    /// Sum of |x| over the pairs swept inside a leaf, and over the whole low group.
    pub(super) leaf_radius: Vec<f64>,
    pub(super) radius: Vec<f64>,
    /// Byte-major sums of the first high group, pair 0 folded in (empty: no high group).
    first_high: Vec<f64>,
    /// The entries of the further high groups (`[groups - 2 x ub]`) for the high-byte values
    /// `h` with `h >> GROUP_BITS == upper_of`: a task's `h` share them (or nearly), so only
    /// those are computed, not the groups' whole tables.
    upper: Vec<f64>,
    upper_of: Option<u64>,
}

impl BlockTables {
    /// The tables in `slot` if they have this layout, else new ones put there. Reused tables
    /// keep their old values until rebuilt ([`BlockTables::build`] writes every entry read).
    pub(super) fn reuse<'a>(
        slot: &'a mut Option<Self>,
        prep: &Prepared,
        ub: usize,
        stride: usize,
        leaf_bits: usize,
    ) -> &'a mut Self {
        let fits = slot.as_ref().is_some_and(|t| {
            t.ub == ub
                && t.stride == stride
                && t.leaf_bits == leaf_bits
                && t.n_leaf == 1usize << (prep.groups[0].bits - leaf_bits)
                && t.first_high.len() == prep.groups.get(1).map_or(0, |g| (1usize << g.bits) * ub)
                && t.upper.len() == prep.groups.len().saturating_sub(2) * ub
        });
        if !fits {
            *slot = Some(Self::new(prep, ub, stride, leaf_bits));
        }
        slot.as_mut().unwrap()
    }

    fn new(prep: &Prepared, ub: usize, stride: usize, leaf_bits: usize) -> Self {
        let low = prep.groups[0];
        let n_leaf = 1usize << (low.bits - leaf_bits);
        let leaf_row = n_leaf.next_multiple_of(8);
        BlockTables {
            low: vec![0.0; ub * stride],
            stride,
            leaf_offset: vec![f64::NAN; ub * leaf_row],
            leaf_row,
            ub,
            n_leaf,
            leaf_bits,
            leaf_radius: vec![0.0; ub],
            radius: vec![0.0; ub],
            first_high: prep
                .groups
                .get(1)
                .map_or(Vec::new(), |g| vec![0.0; (1usize << g.bits) * ub]),
            upper: vec![0.0; prep.groups.len().saturating_sub(2) * ub],
            upper_of: None,
        }
    }

    #[inline(always)]
    pub(super) fn build(&mut self, prep: &Prepared, u0: usize, w: usize) {
        let low = prep.groups[0];
        build_unit_major(prep, low.first_pair, low.bits, u0, w, self.stride, &mut self.low);
        let top_first = low.first_pair + self.leaf_bits;
        let top_bits = low.bits - self.leaf_bits;
        build_unit_major(prep, top_first, top_bits, u0, w, self.leaf_row, &mut self.leaf_offset);
        self.leaf_radius[..w].fill(0.0);
        for b in 0..self.leaf_bits {
            for (r, &v) in self.leaf_radius[..w]
                .iter_mut()
                .zip(&prep.pair(low.first_pair + b)[u0..u0 + w])
            {
                *r += v.abs();
            }
        }
        self.radius[..w].copy_from_slice(&self.leaf_radius[..w]);
        for b in 0..top_bits {
            for (r, &v) in self.radius[..w].iter_mut().zip(&prep.pair(top_first + b)[u0..u0 + w]) {
                *r += v.abs();
            }
        }
        if let Some(g) = prep.groups.get(1) {
            build_byte_major(prep, g.first_pair, g.bits, u0, w, &mut self.first_high, true);
        }
        self.upper_of = None;
    }

    /// B for high-byte value `h`: pair 0 plus the high groups, added in group order (pair 0
    /// is already folded into the first high table). `u0, w` as given to the last `build`.
    #[inline(always)]
    pub(super) fn base(&mut self, prep: &Prepared, u0: usize, w: usize, h: u64, out: &mut [f64]) {
        let byte = |gi: usize, g: &Group| ((h >> (GROUP_BITS * gi)) & ((1u64 << g.bits) - 1)) as usize;
        let Some(first) = prep.groups.get(1) else {
            out[..w].copy_from_slice(&prep.pair(0)[u0..u0 + w]);
            return;
        };
        let b = byte(0, first);
        out[..w].copy_from_slice(&self.first_high[b * w..(b + 1) * w]);
        if prep.groups.len() <= 2 {
            return;
        }
        let upper_of = h >> GROUP_BITS;
        if self.upper_of != Some(upper_of) {
            for (gi, (g, entry)) in prep.groups[2..]
                .iter()
                .zip(self.upper.chunks_exact_mut(self.ub))
                .enumerate()
            {
                byte_major_entry(prep, g.first_pair, g.bits, byte(gi + 1, g), u0, w, entry);
            }
            self.upper_of = Some(upper_of);
        }
        for entry in self.upper.chunks_exact(self.ub) {
            for (o, &v) in out[..w].iter_mut().zip(&entry[..w]) {
                *o += v;
            }
        }
    }
}
