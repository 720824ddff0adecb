//! Python bindings (`dense_plantain._stats`): thin adapters over the core.
//!
//! Arrays come in as zero-copy read-only views (C-contiguous float64, as `stats.paired_diff`
//! returns), the GIL is released around every heavy loop, results go back as new NumPy arrays.
//! Every refusal of the core becomes a `ValueError` with the core's message.

use crate::sign_flip::{self, Thresholds};
use crate::{paired as core_paired, split_half as core_split, PairDiffs, StatsError};
use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray1, PyArray2, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

fn value_error(e: StatsError) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// The (n_pairs, n_units) shape and the data of a C-contiguous 2-D array.
fn matrix<'a, T: numpy::Element>(array: &'a PyReadonlyArray2<'_, T>, name: &str) -> PyResult<(&'a [T], usize, usize)> {
    if !array.is_c_contiguous() {
        return Err(PyValueError::new_err(format!(
            "{name} must be a C-contiguous array; pass it through dense_plantain.stats.paired_diff"
        )));
    }
    let shape = array.shape();
    let data = array
        .as_slice()
        .map_err(|e| PyValueError::new_err(format!("{name}: {e}")))?;
    Ok((data, shape[0], shape[1]))
}

fn diffs<'a>(array: &'a PyReadonlyArray2<'_, f64>) -> PyResult<PairDiffs<'a>> {
    let (data, n, m) = matrix(array, "diff")?;
    PairDiffs::new(data, n, m).map_err(value_error)
}

type NullArrays<'py> = (Bound<'py, PyArray2<i64>>, Bound<'py, PyArray1<f64>>);

fn null_arrays(py: Python<'_>, range: sign_flip::NullRange, columns: usize) -> NullArrays<'_> {
    let rows = range.max_abs_t.len();
    let counts = Array2::from_shape_vec((rows, columns), range.counts).expect("counts shape");
    (counts.into_pyarray(py), range.max_abs_t.into_pyarray(py))
}

/// paired(diff) -> (mean, sd, t, d), float64 [n_units] each.
#[pyfunction]
#[allow(clippy::type_complexity)]
fn paired<'py>(
    py: Python<'py>,
    diff: PyReadonlyArray2<'py, f64>,
) -> PyResult<(
    Bound<'py, PyArray1<f64>>,
    Bound<'py, PyArray1<f64>>,
    Bound<'py, PyArray1<f64>>,
    Bound<'py, PyArray1<f64>>,
)> {
    let d = diffs(&diff)?;
    let p = py.detach(|| core_paired::paired(&d));
    Ok((
        p.mean.into_pyarray(py),
        p.sd.into_pyarray(py),
        p.t.into_pyarray(py),
        p.d.into_pyarray(py),
    ))
}

/// sign_flip_exact(diff, t_thresholds, d_thresholds, start, end) -> (counts int64 [len x k], max_abs_t [len])
#[pyfunction]
fn sign_flip_exact<'py>(
    py: Python<'py>,
    diff: PyReadonlyArray2<'py, f64>,
    t_thresholds: Vec<f64>,
    d_thresholds: Vec<f64>,
    start: u64,
    end: u64,
) -> PyResult<NullArrays<'py>> {
    let d = diffs(&diff)?;
    let thresholds = Thresholds {
        t: &t_thresholds,
        d: &d_thresholds,
    };
    let range = py
        .detach(|| sign_flip::exact(&d, thresholds, start, end))
        .map_err(value_error)?;
    Ok(null_arrays(py, range, thresholds.len()))
}

/// sign_flip_monte_carlo(diff, t_thresholds, d_thresholds, seed, start, end) -> (counts, max_abs_t)
#[pyfunction]
fn sign_flip_monte_carlo<'py>(
    py: Python<'py>,
    diff: PyReadonlyArray2<'py, f64>,
    t_thresholds: Vec<f64>,
    d_thresholds: Vec<f64>,
    seed: u64,
    start: u64,
    end: u64,
) -> PyResult<NullArrays<'py>> {
    let d = diffs(&diff)?;
    let thresholds = Thresholds {
        t: &t_thresholds,
        d: &d_thresholds,
    };
    let range = py
        .detach(|| sign_flip::monte_carlo(&d, thresholds, seed, start, end))
        .map_err(value_error)?;
    Ok(null_arrays(py, range, thresholds.len()))
}

/// sign_flip_identity(diff, t_thresholds, d_thresholds) -> (counts int64 [1 x k], max_abs_t [1]):
/// the observed data (nothing flipped) through the null's route, for any number of pairs.
#[pyfunction]
fn sign_flip_identity<'py>(
    py: Python<'py>,
    diff: PyReadonlyArray2<'py, f64>,
    t_thresholds: Vec<f64>,
    d_thresholds: Vec<f64>,
) -> PyResult<NullArrays<'py>> {
    let d = diffs(&diff)?;
    let thresholds = Thresholds {
        t: &t_thresholds,
        d: &d_thresholds,
    };
    let range = py.detach(|| sign_flip::identity(&d, thresholds)).map_err(value_error)?;
    Ok(null_arrays(py, range, thresholds.len()))
}

/// monte_carlo_signs(n_pairs, seed, start, end) -> int8 [len x n_pairs] of +1 / -1
#[pyfunction]
fn monte_carlo_signs(
    py: Python<'_>,
    n_pairs: usize,
    seed: u64,
    start: u64,
    end: u64,
) -> PyResult<Bound<'_, PyArray2<i8>>> {
    let signs = py
        .detach(|| sign_flip::monte_carlo_signs(n_pairs, seed, start, end))
        .map_err(value_error)?;
    let rows = (end - start) as usize;
    Ok(Array2::from_shape_vec((rows, n_pairs), signs)
        .expect("signs shape")
        .into_pyarray(py))
}

/// n_patterns(n_pairs) -> 2 ** (n_pairs - 1), the distinct sign patterns (exact mode's size).
#[pyfunction]
fn n_patterns(n_pairs: usize) -> PyResult<u64> {
    sign_flip::n_patterns(n_pairs).map_err(value_error)
}

/// abs_t_from_ratio(r, n_pairs) -> |t| of a unit whose flipped sum S has S^2 / SS = r.
#[pyfunction]
fn abs_t_from_ratio(r: f64, n_pairs: usize) -> f64 {
    sign_flip::abs_t_from_ratio(r, n_pairs)
}

/// split_assignments(n_pairs, n_splits, seed) -> bool [n_splits x n_pairs], True = first half
#[pyfunction]
fn split_assignments(
    py: Python<'_>,
    n_pairs: usize,
    n_splits: usize,
    seed: u64,
) -> PyResult<Bound<'_, PyArray2<bool>>> {
    let a = core_split::assignments(n_pairs, n_splits, seed).map_err(value_error)?;
    Ok(Array2::from_shape_vec((n_splits, n_pairs), a)
        .expect("assignment shape")
        .into_pyarray(py))
}

/// split_half(diff, assignments) -> float64 [n_splits] of Pearson r
#[pyfunction]
fn split_half<'py>(
    py: Python<'py>,
    diff: PyReadonlyArray2<'py, f64>,
    assignments: PyReadonlyArray2<'py, bool>,
) -> PyResult<Bound<'py, PyArray1<f64>>> {
    let d = diffs(&diff)?;
    let (a, _, width) = matrix(&assignments, "assignments")?;
    if width != d.n_pairs() {
        return Err(PyValueError::new_err(format!(
            "assignments have {width} columns, diff has {} pairs",
            d.n_pairs()
        )));
    }
    let r = py.detach(|| core_split::split_half(&d, a)).map_err(value_error)?;
    Ok(r.into_pyarray(py))
}

/// threads() -> the number of worker threads of the statistics pool in this process.
#[pyfunction]
fn threads(py: Python<'_>) -> usize {
    py.detach(crate::threads::current_threads)
}

/// simd_variant() -> the instruction set of the hot loops ("avx512", "avx2" or "baseline").
#[pyfunction]
fn simd_variant() -> &'static str {
    sign_flip::simd_variant()
}

fn tail_of(tail: &str) -> PyResult<sign_flip::tallies::Tail> {
    use sign_flip::tallies::Tail;
    match tail {
        "two" => Ok(Tail::Two),
        "greater" => Ok(Tail::Greater),
        "less" => Ok(Tail::Less),
        other => Err(PyValueError::new_err(format!(
            "tail must be \"two\", \"greater\" or \"less\", got {other:?}"
        ))),
    }
}

type TallyArrays<'py> = (
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<i64>>,
    u64,
);

/// sign_flip_tallies(diff, t_thr, d_thr, partitions u32 [p x m], tail, exact, seed, start, end, bars)
/// -> (hist int64, max_bins, abs_bins int64 [len(bars) + 1], patterns)
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn sign_flip_tallies<'py>(
    py: Python<'py>,
    diff: PyReadonlyArray2<'py, f64>,
    t_thresholds: Vec<f64>,
    d_thresholds: Vec<f64>,
    partitions: PyReadonlyArray2<'py, u32>,
    tail: &str,
    exact: bool,
    seed: u64,
    start: u64,
    end: u64,
    bars: Vec<f64>,
) -> PyResult<TallyArrays<'py>> {
    let d = diffs(&diff)?;
    let tail = tail_of(tail)?;
    let (labels, rows, width) = matrix(&partitions, "partitions")?;
    let parts: Vec<&[u32]> = (0..rows).map(|r| &labels[r * width..(r + 1) * width]).collect();
    let thresholds = Thresholds {
        t: &t_thresholds,
        d: &d_thresholds,
    };
    let out = py
        .detach(|| sign_flip::tallies::tallies(&d, thresholds, &parts, tail, exact, seed, start, end, &bars))
        .map_err(value_error)?;
    Ok((
        out.hist.into_pyarray(py),
        out.max_bins.into_pyarray(py),
        out.abs_bins.into_pyarray(py),
        out.patterns,
    ))
}

/// sign_flip_unit_scores(diff, tail) -> float64 [n_units]: S^2 / SS (two) or signed S / sqrt(SS).
#[pyfunction]
fn sign_flip_unit_scores<'py>(
    py: Python<'py>,
    diff: PyReadonlyArray2<'py, f64>,
    tail: &str,
) -> PyResult<Bound<'py, PyArray1<f64>>> {
    let d = diffs(&diff)?;
    let tail = tail_of(tail)?;
    let s = py
        .detach(|| sign_flip::tallies::unit_scores(&d, tail))
        .map_err(value_error)?;
    Ok(s.into_pyarray(py))
}

/// sign_flip_tally_observed(diff, t_thr, d_thr, partitions, tail) -> int64 [groups x columns], flat
#[pyfunction]
fn sign_flip_tally_observed<'py>(
    py: Python<'py>,
    diff: PyReadonlyArray2<'py, f64>,
    t_thresholds: Vec<f64>,
    d_thresholds: Vec<f64>,
    partitions: PyReadonlyArray2<'py, u32>,
    tail: &str,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let d = diffs(&diff)?;
    let tail = tail_of(tail)?;
    let (labels, rows, width) = matrix(&partitions, "partitions")?;
    let parts: Vec<&[u32]> = (0..rows).map(|r| &labels[r * width..(r + 1) * width]).collect();
    let thresholds = Thresholds {
        t: &t_thresholds,
        d: &d_thresholds,
    };
    let out = py
        .detach(|| sign_flip::tallies::observed(&d, thresholds, &parts, tail))
        .map_err(value_error)?;
    Ok(out.into_pyarray(py))
}

#[pymodule]
fn _stats(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(paired, m)?)?;
    m.add_function(wrap_pyfunction!(sign_flip_exact, m)?)?;
    m.add_function(wrap_pyfunction!(sign_flip_monte_carlo, m)?)?;
    m.add_function(wrap_pyfunction!(sign_flip_identity, m)?)?;
    m.add_function(wrap_pyfunction!(monte_carlo_signs, m)?)?;
    m.add_function(wrap_pyfunction!(n_patterns, m)?)?;
    m.add_function(wrap_pyfunction!(abs_t_from_ratio, m)?)?;
    m.add_function(wrap_pyfunction!(split_assignments, m)?)?;
    m.add_function(wrap_pyfunction!(split_half, m)?)?;
    m.add_function(wrap_pyfunction!(threads, m)?)?;
    m.add_function(wrap_pyfunction!(simd_variant, m)?)?;
    m.add_function(wrap_pyfunction!(sign_flip_tallies, m)?)?;
    m.add_function(wrap_pyfunction!(sign_flip_unit_scores, m)?)?;
    m.add_function(wrap_pyfunction!(sign_flip_tally_observed, m)?)?;
    m.add("MAX_EXACT_PAIRS", sign_flip::MAX_EXACT_PAIRS)?;
    m.add("MIN_PAIRS", crate::MIN_PAIRS)?;
    m.add("MIN_SPLIT_PAIRS", core_split::MIN_SPLIT_PAIRS)?;
    m.add("THREAD_ENV_VARS", crate::threads::THREAD_ENV_VARS.to_vec())?;
    register_direction_bootstrap(m)?;
    Ok(())
}

// --- direction test and pair bootstrap ---------------------------------------------------------

type DirectionArrays<'py> = (
    Bound<'py, PyArray1<f64>>,
    Bound<'py, PyArray1<f64>>,
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<i64>>,
);

fn direction_run<T: crate::direction::Value + numpy::Element>(
    py: Python<'_>,
    array: &PyReadonlyArray2<'_, T>,
    width: usize,
    mode: crate::direction::Mode,
    start: u64,
    end: u64,
) -> PyResult<crate::direction::DirectionRange> {
    let (data, n, cols) = matrix(array, "delta_vec")?;
    let v = crate::direction::VecDiffs::new(data, n, cols, width).map_err(|e| PyValueError::new_err(e.to_string()))?;
    py.detach(|| crate::direction::null(&v, mode, start, end))
        .map_err(|e| PyValueError::new_err(e.to_string()))
}

/// direction_null(delta_vec f32|f64 [n x units*W], width, exact, seed, start, end)
/// -> (d, d_norm, agree, count_d, count_agree, count_max), one value per unit each
#[pyfunction]
fn direction_null<'py>(
    py: Python<'py>,
    delta_vec: &Bound<'py, PyAny>,
    width: usize,
    exact: bool,
    seed: u64,
    start: u64,
    end: u64,
) -> PyResult<DirectionArrays<'py>> {
    let mode = if exact {
        crate::direction::Mode::Exact
    } else {
        crate::direction::Mode::MonteCarlo { seed }
    };
    let r = if let Ok(a) = delta_vec.extract::<PyReadonlyArray2<'py, f32>>() {
        direction_run(py, &a, width, mode, start, end)?
    } else {
        let a: PyReadonlyArray2<'py, f64> = delta_vec.extract()?;
        direction_run(py, &a, width, mode, start, end)?
    };
    let ints = |v: Vec<u64>| v.into_iter().map(|x| x as i64).collect::<Vec<i64>>().into_pyarray(py);
    let agree: Vec<i64> = r.agree.iter().map(|&a| a as i64).collect();
    Ok((
        r.d.into_pyarray(py),
        r.d_norm.into_pyarray(py),
        agree.into_pyarray(py),
        ints(r.count_d),
        ints(r.count_agree),
        ints(r.count_max),
    ))
}

/// bootstrap_indices(n_pairs, draws, seed) -> uint32 [draws x n_pairs] of pair indices
#[pyfunction]
fn bootstrap_indices(py: Python<'_>, n_pairs: usize, draws: usize, seed: u64) -> PyResult<Bound<'_, PyArray2<u32>>> {
    let idx = crate::bootstrap::indices(n_pairs, draws, seed).map_err(value_error)?;
    Ok(Array2::from_shape_vec((draws, n_pairs), idx)
        .expect("indices shape")
        .into_pyarray(py))
}

/// bootstrap_counts(diff, t_thresholds, d_thresholds, indices uint32 [draws x n], tail="two") -> int64 [draws x k]
#[pyfunction]
#[pyo3(signature = (diff, t_thresholds, d_thresholds, indices, tail="two"))]
fn bootstrap_counts<'py>(
    py: Python<'py>,
    diff: PyReadonlyArray2<'py, f64>,
    t_thresholds: Vec<f64>,
    d_thresholds: Vec<f64>,
    indices: PyReadonlyArray2<'py, u32>,
    tail: &str,
) -> PyResult<Bound<'py, PyArray2<i64>>> {
    let tail = tail_of(tail)?;
    let d = diffs(&diff)?;
    let (idx, draws, width) = matrix(&indices, "indices")?;
    if width != d.n_pairs() {
        return Err(PyValueError::new_err(format!(
            "indices have {width} columns, diff has {} pairs",
            d.n_pairs()
        )));
    }
    let thresholds = Thresholds {
        t: &t_thresholds,
        d: &d_thresholds,
    };
    let c = py
        .detach(|| crate::bootstrap::counts(&d, thresholds, idx, tail))
        .map_err(value_error)?;
    Ok(Array2::from_shape_vec((draws, thresholds.len()), c)
        .expect("counts shape")
        .into_pyarray(py))
}

fn register_direction_bootstrap(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(direction_null, m)?)?;
    m.add_function(wrap_pyfunction!(bootstrap_indices, m)?)?;
    m.add_function(wrap_pyfunction!(bootstrap_counts, m)?)?;
    m.add("DIRECTION_TIE_REL", crate::direction::TIE_REL)?;
    Ok(())
}
