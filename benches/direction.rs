//! Criterion benches of the direction test's null on data shaped like the real probe:
//! 25 pairs x 16,320 units with signed vectors of width W (4, 16, 128), Monte Carlo P = 10,000,
//! float32 input as `capture --vectors` writes it, beside the t null (magnitudes, same P, same
//! seed) measured in the same run.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dense_plantain_stats::direction::{self, Mode, VecDiffs};
use dense_plantain_stats::rng::SplitMix64;
use dense_plantain_stats::sign_flip::{self, Thresholds};
use dense_plantain_stats::PairDiffs;
use std::hint::black_box;

const PAIRS: usize = 25;
const UNITS: usize = 16_320;
const PERMUTATIONS: u64 = 10_000;

fn normal(g: &mut SplitMix64) -> f64 {
    let u1 = 1.0 - g.next_f64();
    let u2 = g.next_f64();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// delta[pair][u * W + k] = direction[u][k] (a third of the units) + 0.6 * shared factor + noise.
fn vectors(width: usize, seed: u64) -> Vec<f32> {
    let mut g = SplitMix64::new(seed);
    let cols = UNITS * width;
    let effect: Vec<f64> = (0..cols)
        .map(|c| {
            if (c / width).is_multiple_of(3) {
                0.5 * normal(&mut g)
            } else {
                0.0
            }
        })
        .collect();
    let mut data = Vec::with_capacity(PAIRS * cols);
    for _ in 0..PAIRS {
        let factor: Vec<f64> = (0..cols.div_ceil(64)).map(|_| normal(&mut g)).collect();
        for c in 0..cols {
            data.push((effect[c] + 0.6 * factor[c / 64] + 0.8 * normal(&mut g)) as f32);
        }
    }
    data
}

fn benches(c: &mut Criterion) {
    eprintln!(
        "threads: {}, kernels: {}",
        dense_plantain_stats::threads::current_threads(),
        sign_flip::simd_variant()
    );
    let mut group = c.benchmark_group("direction");
    group.sample_size(10);
    group.throughput(Throughput::Elements(PERMUTATIONS));
    let magnitudes: Vec<f64> = vectors(1, 1).iter().map(|&v| v as f64).collect();
    let diffs = PairDiffs::new(&magnitudes, PAIRS, UNITS).unwrap();
    let thresholds = Thresholds {
        t: &[3.0, 5.0],
        d: &[0.8],
    };
    group.bench_function("t_null_monte_carlo_p10000_25x16320", |b| {
        b.iter(|| sign_flip::monte_carlo(black_box(&diffs), thresholds, 0, 0, PERMUTATIONS).unwrap())
    });
    for width in [4usize, 16, 128] {
        let data = vectors(width, 2);
        let v = VecDiffs::new(&data, PAIRS, UNITS * width, width).unwrap();
        group.bench_function(format!("direction_monte_carlo_p10000_25x16320_w{width}"), |b| {
            b.iter(|| direction::null(black_box(&v), Mode::MonteCarlo { seed: 0 }, 0, PERMUTATIONS).unwrap())
        });
    }
    group.finish();
}

criterion_group!(direction_benches, benches);
criterion_main!(direction_benches);
