//! Criterion benches of the statistics core on data shaped like the real probe:
//! 25 pairs x 16,320 units, units correlated through shared pair factors, a third with effects.
//!
//! * Monte Carlo null, P = 10,000;
//! * exact enumeration on a sample of the 2^24 patterns (throughput in patterns/s: multiply
//!   out to estimate the full 2^24);
//! * streaming tallies (two-sided with one 2-group partition, one-sided) on the same samples;
//! * split-half reliability, 100 splits.
//!
//! The kernels' instruction set is chosen once per process: run again with
//! `DENSE_PLANTAIN_SIMD=avx2` (or `baseline`) to measure the AVX2 kernels on an AVX-512 machine.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dense_plantain_stats::rng::SplitMix64;
use dense_plantain_stats::sign_flip::tallies::{self, Tail};
use dense_plantain_stats::sign_flip::{self, Thresholds};
use dense_plantain_stats::{split_half, PairDiffs};
use std::hint::black_box;

const PAIRS: usize = 25;
const UNITS: usize = 16_320;
const T_THRESHOLDS: [f64; 2] = [3.0, 5.0];
const D_THRESHOLDS: [f64; 1] = [0.8];

fn normal(g: &mut SplitMix64) -> f64 {
    let u1 = 1.0 - g.next_f64();
    let u2 = g.next_f64();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// diff[pair][unit] = effect[unit] + 0.6 * factor[pair][unit / 64] + 0.8 * noise.
pub fn probe_like(seed: u64) -> Vec<f64> {
    let mut g = SplitMix64::new(seed);
    let effect: Vec<f64> = (0..UNITS)
        .map(|u| if u % 3 == 0 { 0.8 * normal(&mut g) } else { 0.0 })
        .collect();
    let mut data = Vec::with_capacity(PAIRS * UNITS);
    for _ in 0..PAIRS {
        let factor: Vec<f64> = (0..UNITS.div_ceil(64)).map(|_| normal(&mut g)).collect();
        for u in 0..UNITS {
            data.push(effect[u] + 0.6 * factor[u / 64] + 0.8 * normal(&mut g));
        }
    }
    data
}

fn benches(c: &mut Criterion) {
    let data = probe_like(1);
    let diffs = PairDiffs::new(&data, PAIRS, UNITS).unwrap();
    let thresholds = Thresholds {
        t: &T_THRESHOLDS,
        d: &D_THRESHOLDS,
    };
    let (threads, kernels) = (
        dense_plantain_stats::threads::current_threads(),
        sign_flip::simd_variant(),
    );
    eprintln!("threads: {threads}, kernels: {kernels}");
    let mut group = c.benchmark_group("null");
    group.sample_size(10);
    group.throughput(Throughput::Elements(10_000));
    group.bench_function("monte_carlo_p10000_25x16320", |b| {
        b.iter(|| sign_flip::monte_carlo(black_box(&diffs), thresholds, 0, 0, 10_000).unwrap())
    });
    // A sample of 2^18 of the 2^24 patterns, taken from the middle of the enumeration.
    let (start, len) = (5u64 << 20, 1u64 << 18);
    group.throughput(Throughput::Elements(len));
    group.bench_function("exact_sample_2p18_of_2p24_25x16320", |b| {
        b.iter(|| sign_flip::exact(black_box(&diffs), thresholds, start, start + len).unwrap())
    });
    let halves: Vec<u32> = (0..UNITS as u32).map(|u| u % 2).collect();
    let parts: [&[u32]; 1] = [&halves];
    let bars: Vec<f64> = {
        let mut s = tallies::unit_scores(&diffs, Tail::Two).unwrap();
        s.sort_by(f64::total_cmp);
        s
    };
    group.throughput(Throughput::Elements(len));
    group.bench_function("tallies_exact_sample_2p18_two_sided_halves", |b| {
        b.iter(|| {
            tallies::tallies(
                black_box(&diffs),
                thresholds,
                &parts,
                Tail::Two,
                true,
                0,
                start,
                start + len,
                &bars,
            )
            .unwrap()
        })
    });
    // One-sided tallies over `lo .. hi`: exact patterns or Monte Carlo permutations.
    let one_sided = |exact: bool, lo: u64, hi: u64| {
        tallies::tallies(
            black_box(&diffs),
            thresholds,
            &[],
            Tail::Greater,
            exact,
            0,
            lo,
            hi,
            &bars,
        )
        .unwrap()
    };
    // 2^18 two-sided patterns j, each counted with its negation: 2^19 one-sided patterns (up to
    // the seventh session this case was 2^12 patterns, when it evaluated every unit under each).
    let one_len = 1u64 << 18;
    group.throughput(Throughput::Elements(2 * one_len));
    group.bench_function("tallies_exact_sample_one_sided_2x2p18", |b| {
        b.iter(|| one_sided(true, start, start + one_len))
    });
    group.throughput(Throughput::Elements(10_000));
    group.bench_function("tallies_monte_carlo_p10000_one_sided", |b| {
        b.iter(|| one_sided(false, 0, 10_000))
    });
    group.finish();

    let assignments = split_half::assignments(PAIRS, 100, 0).unwrap();
    let mut group = c.benchmark_group("split_half");
    group.sample_size(20);
    group.bench_function("100_splits_25x16320", |b| {
        b.iter(|| split_half::split_half(black_box(&diffs), &assignments).unwrap())
    });
    group.finish();
}

criterion_group!(null, benches);
criterion_main!(null);
