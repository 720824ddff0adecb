//! Tests of the sign-flip null against a float64 brute force.

use super::*;

/// A float64 brute force written differently: flip the raw differences, two-pass t.
fn brute(data: &[f64], n: usize, m: usize, signs: &[i8], t_thr: &[f64], d_thr: &[f64]) -> (Vec<i64>, f64) {
    let nf = n as f64;
    let mut counts = vec![0i64; t_thr.len() + d_thr.len()];
    let mut max_t = 0.0f64;
    for u in 0..m {
        let y: Vec<f64> = (0..n).map(|i| data[i * m + u] * signs[i] as f64).collect();
        let mean = y.iter().sum::<f64>() / nf;
        let t = if y.iter().all(|&v| v == y[0]) {
            if y[0] == 0.0 {
                0.0
            } else {
                f64::INFINITY
            }
        } else {
            let sd = (y.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (nf - 1.0)).sqrt();
            (mean / (sd / nf.sqrt())).abs()
        };
        max_t = max_t.max(t);
        for (c, &thr) in t_thr.iter().enumerate() {
            counts[c] += (t > thr) as i64;
        }
        for (c, &thr) in d_thr.iter().enumerate() {
            counts[t_thr.len() + c] += (t / nf.sqrt() > thr) as i64;
        }
    }
    (counts, max_t)
}

fn exact_signs(n: usize, j: u64) -> Vec<i8> {
    (0..n)
        .map(|i| if i > 0 && (j >> (i - 1)) & 1 == 1 { -1 } else { 1 })
        .collect()
}

/// `data` (`[pairs x m]`) with every `step`-th unit shifted by `by` in every pair: strong units
/// (most survive the exact kernel's filters) among weak ones.
fn with_strong_units(mut data: Vec<f64>, m: usize, step: usize, by: f64) -> Vec<f64> {
    for row in data.chunks_exact_mut(m) {
        for u in (0..m).step_by(step) {
            row[u] += by;
        }
    }
    data
}

pub(super) fn random_data(n: usize, m: usize, seed: u64) -> Vec<f64> {
    let mut g = rng::SplitMix64::new(seed);
    (0..n * m)
        .map(|k| {
            // Roughly normal, with a per-unit shift so that some units have large |t|.
            let z: f64 = (0..4).map(|_| g.next_f64()).sum::<f64>() - 2.0;
            z + 0.9 * ((k % m) % 5) as f64 / 5.0
        })
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= 1e-10 * a.abs().max(b.abs())
}

const T: [f64; 3] = [2.0, 3.0, 5.0];
const D: [f64; 2] = [0.8, 0.5];

/// Every row of an exact null from pattern 0 (counts of T and D, max |t|) against [`brute`].
fn assert_exact_rows_are_brute_force(got: &NullRange, data: &[f64], n: usize, m: usize) {
    for (j, (counts, &max_t)) in got.counts.chunks_exact(5).zip(&got.max_abs_t).enumerate() {
        let (c, mx) = brute(data, n, m, &exact_signs(n, j as u64), &T, &D);
        assert_eq!(counts, &c[..], "n={n} j={j}");
        assert!(close(max_t, mx), "n={n} j={j}: {max_t} vs {mx}");
    }
}

#[test]
fn exact_matches_brute_force() {
    // (11, 3): weak units, so most patterns have no unit near a threshold (the deferred max pass).
    for &(n, m) in &[(3usize, 5usize), (6, 9), (10, 37), (11, 300), (11, 3), (14, 2)] {
        let data = random_data(n, m, n as u64);
        let diffs = PairDiffs::new(&data, n, m).unwrap();
        let total = n_patterns(n).unwrap();
        let got = exact(&diffs, Thresholds { t: &T, d: &D }, 0, total).unwrap();
        assert_exact_rows_are_brute_force(&got, &data, n, m);
    }
}

#[test]
fn monte_carlo_matches_brute_force_with_its_own_signs() {
    // n = 41: five groups of pairs, the kernel that loops over groups at run time.
    for &(n, m) in &[(4usize, 17usize), (13, 200), (41, 30)] {
        let data = random_data(n, m, 5);
        let diffs = PairDiffs::new(&data, n, m).unwrap();
        let got = monte_carlo(&diffs, Thresholds { t: &T, d: &D }, 42, 100, 400).unwrap();
        let signs = monte_carlo_signs(n, 42, 100, 400).unwrap();
        for p in 0..300 {
            let (c, mx) = brute(&data, n, m, &signs[p * n..(p + 1) * n], &T, &D);
            assert_eq!(&got.counts[p * 5..p * 5 + 5], &c[..], "n={n} perm {p}");
            assert!(close(got.max_abs_t[p], mx));
        }
    }
}

#[test]
fn monte_carlo_and_exact_agree_bit_for_bit_on_the_same_pattern() {
    for &(n, m) in &[(7usize, 40usize), (12, 70), (20, 33)] {
        let data = random_data(n, m, 3 + n as u64);
        let diffs = PairDiffs::new(&data, n, m).unwrap();
        let thr = Thresholds { t: &T, d: &D };
        let mc = monte_carlo(&diffs, thr, 8, 0, 200).unwrap();
        let signs = monte_carlo_signs(n, 8, 0, 200).unwrap();
        for p in 0..200 {
            let j: u64 = (1..n).map(|i| ((signs[p * n + i] == -1) as u64) << (i - 1)).sum();
            let ex = exact(&diffs, thr, j, j + 1).unwrap();
            assert_eq!(ex.max_abs_t[0].to_bits(), mc.max_abs_t[p].to_bits(), "n={n} p={p}");
            assert_eq!(&ex.counts[..], &mc.counts[p * 5..p * 5 + 5]);
        }
    }
}

#[test]
fn identity_is_exact_pattern_zero_bit_for_bit() {
    // Includes n = 41 (beyond exact enumeration: checked against the brute force) and a
    // constant unit (closed form).
    for &(n, m) in &[(5usize, 13usize), (10, 40), (25, 70), (41, 30)] {
        let mut data = random_data(n, m, 11 + n as u64);
        for i in 0..n {
            data[i * m] = 0.25;
        }
        let diffs = PairDiffs::new(&data, n, m).unwrap();
        let thr = Thresholds { t: &T, d: &D };
        let id = identity(&diffs, thr).unwrap();
        if n <= MAX_EXACT_PAIRS {
            let ex = exact(&diffs, thr, 0, 1).unwrap();
            assert_eq!(ex.max_abs_t[0].to_bits(), id.max_abs_t[0].to_bits(), "n={n}");
            assert_eq!(ex.counts, id.counts, "n={n}");
        }
        let (c, mx) = brute(&data, n, m, &vec![1i8; n], &T, &D);
        assert_eq!(id.counts, c, "n={n}");
        assert!(close(id.max_abs_t[0], mx), "n={n}");
    }
}

#[test]
fn ranges_and_chunks_do_not_change_results() {
    let (n, m) = (12, 90);
    let data = random_data(n, m, 9);
    let diffs = PairDiffs::new(&data, n, m).unwrap();
    let thr = Thresholds { t: &T, d: &D };
    let whole = exact(&diffs, thr, 0, 2048).unwrap();
    let a = exact(&diffs, thr, 0, 700).unwrap();
    let b = exact(&diffs, thr, 700, 2048).unwrap();
    assert_eq!([a.counts, b.counts].concat(), whole.counts);
    assert_eq!([a.max_abs_t, b.max_abs_t].concat(), whole.max_abs_t);
    let mc = monte_carlo(&diffs, thr, 1, 0, 3000).unwrap();
    let mc2 = monte_carlo(&diffs, thr, 1, 1234, 3000).unwrap();
    assert_eq!(&mc.counts[1234 * 5..], &mc2.counts[..]);
    assert_eq!(&mc.max_abs_t[1234..], &mc2.max_abs_t[..]);
}

#[test]
fn short_monte_carlo_ranges_equal_the_same_rows_of_a_long_run_bit_for_bit() {
    // Ranges of at most 16 permutations build only their table entries (kernels::FEW_PATTERNS),
    // longer ones whole tables: the rows must be the same bits. n covers groups of 1, 2, 3, 7 and 8
    // pairs and one to five groups.
    for &(n, m) in &[
        (3usize, 9usize),
        (4, 17),
        (9, 24),
        (10, 40),
        (16, 8),
        (25, 70),
        (33, 19),
        (41, 30),
    ] {
        let data = random_data(n, m, 40 + n as u64);
        let diffs = PairDiffs::new(&data, n, m).unwrap();
        let thr = Thresholds { t: &T, d: &D };
        let long = monte_carlo(&diffs, thr, 5, 0, 600).unwrap();
        for (lo, hi) in [(0u64, 1u64), (37, 38), (100, 116), (200, 217), (583, 600)] {
            let short = monte_carlo(&diffs, thr, 5, lo, hi).unwrap();
            let (a, b) = (lo as usize, hi as usize);
            assert_eq!(&short.counts[..], &long.counts[a * 5..b * 5], "n={n} {lo}..{hi}");
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&short.max_abs_t), bits(&long.max_abs_t[a..b]), "n={n} {lo}..{hi}");
            assert_eq!(bits(&short.max_ratio), bits(&long.max_ratio[a..b]), "n={n} {lo}..{hi}");
        }
    }
}

#[test]
fn many_thresholds_take_several_passes() {
    let (n, m) = (9, 50);
    let data = random_data(n, m, 2);
    let diffs = PairDiffs::new(&data, n, m).unwrap();
    let t = [0.0, 1.0, 1.5, 2.0, 2.5, 3.0, 1.0];
    let got = exact(&diffs, Thresholds { t: &t, d: &[0.3] }, 0, 256).unwrap();
    for j in 0..256u64 {
        let (c, _) = brute(&data, n, m, &exact_signs(n, j), &t, &[0.3]);
        assert_eq!(&got.counts[j as usize * 8..j as usize * 8 + 8], &c[..]);
    }
}

#[test]
fn constant_units_are_handled_in_closed_form() {
    // Units 0 and 1 constant (0 and 0.5), the others random; n = 7.
    let (n, m) = (7, 6);
    let mut data = random_data(n, m, 4);
    for i in 0..n {
        data[i * m] = 0.0;
        data[i * m + 1] = 0.5;
    }
    let diffs = PairDiffs::new(&data, n, m).unwrap();
    let got = exact(&diffs, Thresholds { t: &T, d: &D }, 0, 64).unwrap();
    assert_eq!(got.max_abs_t[0], f64::INFINITY);
    for j in 0..64u64 {
        let (c, mx) = brute(&data, n, m, &exact_signs(n, j), &T, &D);
        assert_eq!(&got.counts[j as usize * 5..j as usize * 5 + 5], &c[..], "j={j}");
        assert!(close(got.max_abs_t[j as usize], mx), "j={j}");
    }
}

#[test]
fn bad_input_is_refused() {
    let data = random_data(4, 3, 1);
    let diffs = PairDiffs::new(&data, 4, 3).unwrap();
    let bad = [f64::NAN];
    assert!(matches!(
        exact(&diffs, Thresholds { t: &bad, d: &[] }, 0, 8),
        Err(StatsError::BadThreshold { .. })
    ));
    assert!(matches!(
        exact(&diffs, Thresholds { t: &[-1.0], d: &[] }, 0, 8),
        Err(StatsError::BadThreshold { .. })
    ));
    assert!(matches!(
        exact(&diffs, Thresholds { t: &T, d: &[] }, 0, 9),
        Err(StatsError::BadRange { .. })
    ));
    assert!(matches!(
        exact(&diffs, Thresholds { t: &T, d: &[] }, 5, 4),
        Err(StatsError::BadRange { .. })
    ));
    assert!(matches!(n_patterns(40), Err(StatsError::TooManyPairsForExact { .. })));
}

#[test]
fn equal_magnitude_units_with_mixed_signs_are_handled_in_closed_form() {
    // Unit 0: 3 for every pair but pair 4 (-3): constant (|t| = inf) under the patterns that flip
    // exactly pair 4; unit 1: +-0.5 in an alternating pattern; the others random.
    let (n, m) = (9, 5);
    let mut data = random_data(n, m, 6);
    for i in 0..n {
        data[i * m] = if i == 4 { -3.0 } else { 3.0 };
        data[i * m + 1] = if i % 2 == 0 { 0.5 } else { -0.5 };
    }
    let diffs = PairDiffs::new(&data, n, m).unwrap();
    let got = exact(&diffs, Thresholds { t: &T, d: &D }, 0, 256).unwrap();
    assert_eq!(got.max_abs_t[1 << 3], f64::INFINITY);
    assert_exact_rows_are_brute_force(&got, &data, n, m);
}

#[test]
fn tallies_of_all_groups_in_one_run_equal_runs_over_each_group() {
    // Unit blocks of 512 in exact mode: 1,300 units put cells across block edges; the labels
    // are interleaved so that cells are built by reordering, and one group is empty.
    use tallies::{tallies, unit_groups, Tail};
    let (n, m) = (11, 1300);
    let mut data = random_data(n, m, 21);
    for i in 0..n {
        data[i * m + 7] = if i == 3 { -2.0 } else { 2.0 }; // an equal-magnitude unit
    }
    let diffs = PairDiffs::new(&data, n, m).unwrap();
    let kind: Vec<u32> = (0..m as u32).map(|u| (u / 97) % 2).collect();
    let region: Vec<u32> = (0..m as u32).map(|u| [0, 1, 3][(u % 3) as usize]).collect();
    let parts: [&[u32]; 2] = [&kind, &region];
    let thr = Thresholds { t: &T, d: &D };
    let bars = [0.5, 1.0, 2.0];
    for exact_mode in [true, false] {
        let end = if exact_mode { n_patterns(n).unwrap() } else { 700 };
        let got = tallies(&diffs, thr, &parts, Tail::Two, exact_mode, 4, 0, end, &bars).unwrap();
        let mut at = 0;
        for units in unit_groups(m, &parts).unwrap() {
            let cols = T.len() + D.len();
            let stride = units.len() + 1;
            let mut want = vec![0i64; cols * stride];
            if units.is_empty() {
                for c in 0..cols {
                    want[c * stride] = end as i64;
                }
            } else {
                let sub: Vec<f64> = (0..n)
                    .flat_map(|i| units.iter().map(move |&u| (i, u)))
                    .map(|(i, u)| data[i * m + u])
                    .collect();
                let sub = PairDiffs::new(&sub, n, units.len()).unwrap();
                let rows = if exact_mode {
                    exact(&sub, thr, 0, end).unwrap()
                } else {
                    monte_carlo(&sub, thr, 4, 0, end).unwrap()
                };
                for row in rows.counts.chunks_exact(cols) {
                    for c in 0..cols {
                        want[c * stride + row[c] as usize] += 1;
                    }
                }
            }
            assert_eq!(
                &got.hist[at..at + want.len()],
                &want[..],
                "exact={exact_mode} group of {}",
                units.len()
            );
            at += want.len();
        }
        assert_eq!(at, got.hist.len());
    }
}

#[test]
fn exact_tallies_with_cells_match_brute_force_histograms() {
    // The exact kernel's per-leaf filter, leaf sweeps and [cells x K x patterns] counts against
    // float64 t from scratch for every pattern: 13 pairs (16 leaves of 256 patterns, high
    // bytes 0..16), 1,100 units in three blocks, strong units (most survive the filters) and
    // weak ones (mostly skipped), two partitions. Run under each DENSE_PLANTAIN_SIMD value.
    use tallies::{tallies, unit_groups, Tail};
    let (n, m) = (13, 1100);
    let data = with_strong_units(random_data(n, m, 33), m, 2, 1.2);
    let diffs = PairDiffs::new(&data, n, m).unwrap();
    let kind: Vec<u32> = (0..m as u32).map(|u| u / 300 % 2).collect();
    let region: Vec<u32> = (0..m as u32).map(|u| u % 3).collect();
    let parts: [&[u32]; 2] = [&kind, &region];
    let thr = Thresholds { t: &T, d: &D };
    let total = n_patterns(n).unwrap();
    let got = tallies(&diffs, thr, &parts, Tail::Two, true, 0, 0, total, &[]).unwrap();
    let groups = unit_groups(m, &parts).unwrap();
    let cols = T.len() + D.len();
    let mut want: Vec<Vec<i64>> = groups.iter().map(|g| vec![0i64; cols * (g.len() + 1)]).collect();
    let data = &data;
    let subs: Vec<Vec<f64>> = groups
        .iter()
        .map(|units| {
            (0..n)
                .flat_map(|i| units.iter().map(move |&u| data[i * m + u]))
                .collect()
        })
        .collect();
    for j in 0..total {
        let signs = exact_signs(n, j);
        for (g, units) in groups.iter().enumerate() {
            let (c, _) = brute(&subs[g], n, units.len(), &signs, &T, &D);
            for (col, &k) in c.iter().enumerate() {
                want[g][col * (units.len() + 1) + k as usize] += 1;
            }
        }
    }
    assert_eq!(got.hist, want.concat());
}

#[test]
fn exact_with_three_high_groups_matches_brute_force_across_their_changes() {
    // n = 30: the low byte and three high groups (8, 8 and 5 pairs). The ranges cross high-byte
    // values where the second and third high groups' bytes change (multiples of 2^16 and 2^24
    // patterns) and a task edge, starting inside a leaf; strong and weak units.
    let (n, m) = (30, 40);
    let data = with_strong_units(random_data(n, m, 17), m, 3, 1.0);
    let diffs = PairDiffs::new(&data, n, m).unwrap();
    for start in [(3u64 << 16) - 1500 + 7, (1u64 << 24) - 700] {
        let got = exact(&diffs, Thresholds { t: &T, d: &D }, start, start + 2500).unwrap();
        for (p, (counts, &max_t)) in got.counts.chunks_exact(5).zip(&got.max_abs_t).enumerate() {
            let j = start + p as u64;
            let (c, mx) = brute(&data, n, m, &exact_signs(n, j), &T, &D);
            assert_eq!(counts, &c[..], "j={j}");
            assert!(close(max_t, mx), "j={j}: {max_t} vs {mx}");
        }
    }
}

#[test]
fn bar_index_counts_like_a_binary_search_over_all_bars() {
    // Clustered bars with ties, a far outlier and infinities; queries at, between and beyond
    // the bars, at bucket edges, and NaN.
    let mut g = rng::SplitMix64::new(5);
    let mut sets: Vec<Vec<f64>> = vec![vec![], vec![2.0], vec![1.0, 1.0, 1.0], vec![0.0, f64::INFINITY]];
    let mut many: Vec<f64> = (0..5000).map(|_| (g.next_f64() * 40.0).floor() / 8.0).collect();
    many.extend([1e6, -3.0, f64::NEG_INFINITY]);
    sets.push(many);
    sets.push((0..3000).map(|_| g.next_f64().powi(6) * 25.0).collect());
    for mut bars in sets {
        bars.sort_by(f64::total_cmp);
        let index = tallies::BarIndex::new(&bars);
        let mut queries: Vec<f64> = bars.clone();
        queries.extend(bars.iter().map(|&b| b + 1e-12));
        queries.extend(bars.iter().map(|&b| f64::from_bits(b.to_bits().wrapping_sub(1))));
        queries.extend((0..2000).map(|_| g.next_f64() * 30.0 - 2.0));
        queries.extend([f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -1e300, 1e300, 0.0, -0.0]);
        for r in queries {
            assert_eq!(index.at_or_below(r), bars.partition_point(|&b| b <= r), "r = {r}");
        }
    }
}
