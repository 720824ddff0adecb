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
    (
        matrix_out(py, rows, columns, range.counts),
        range.max_abs_t.into_pyarray(py),
    )
}

/// A new 2-D NumPy array of `rows x columns` from the core's row-major `data`.
fn matrix_out<T: numpy::Element>(py: Python<'_>, rows: usize, columns: usize, data: Vec<T>) -> Bound<'_, PyArray2<T>> {
    Array2::from_shape_vec((rows, columns), data)
        .expect("the core returns rows x columns values")
        .into_pyarray(py)
}

/// The count thresholds of the bindings that count units (t first, then d: one column each).
fn thresholds<'a>(t: &'a [f64], d: &'a [f64]) -> Thresholds<'a> {
    Thresholds { t, d }
}

/// One range of a sign-flip null (`run`: exact, Monte Carlo or identity), the GIL released.
fn null_range<'py, 't>(
    py: Python<'py>,
    diffs: &PairDiffs,
    thresholds: Thresholds<'t>,
    run: impl FnOnce(&PairDiffs, Thresholds<'t>) -> Result<sign_flip::NullRange, StatsError> + Send,
) -> PyResult<NullArrays<'py>> {
    let range = py.detach(|| run(diffs, thresholds)).map_err(value_error)?;
    Ok(null_arrays(py, range, thresholds.len()))
}

/// A matrix with one column per pair of `diffs` (split assignments, bootstrap indices): its data and rows.
fn per_pair<'a, T: numpy::Element>(
    array: &'a PyReadonlyArray2<'_, T>,
    name: &str,
    diffs: &PairDiffs,
) -> PyResult<(&'a [T], usize)> {
    let (data, rows, width) = matrix(array, name)?;
    if width != diffs.n_pairs() {
        return Err(PyValueError::new_err(format!(
            "{name} have {width} columns, diff has {} pairs",
            diffs.n_pairs()
        )));
    }
    Ok((data, rows))
}

/// The rows of a `partitions` matrix (u32 [p x m]): one group label per unit in each partition.
fn partition_rows<'a>(array: &'a PyReadonlyArray2<'_, u32>) -> PyResult<Vec<&'a [u32]>> {
    let (labels, rows, width) = matrix(array, "partitions")?;
    Ok((0..rows).map(|r| &labels[r * width..(r + 1) * width]).collect())
}

/// A `#[pyfunction]` whose first argument is `diff` (float64 [n_pairs x n_units]): the binding is
/// written with `py` and `d` (the checked `PairDiffs` view) in front of its own arguments, and
/// its body starts with `d` in hand.
macro_rules! diff_binding {
    ($(#[$attr:meta])* fn $name:ident($py:ident, $d:ident $(, $arg:ident: $ty:ty)*) -> $ret:ty $body:block) => {
        $(#[$attr])*
        #[pyfunction]
        fn $name<'py>($py: Python<'py>, diff: PyReadonlyArray2<'py, f64> $(, $arg: $ty)*) -> PyResult<$ret> {
            let $d = diffs(&diff)?;
            $body
        }
    };
}

type Moments<'py> = (
    Bound<'py, PyArray1<f64>>,
    Bound<'py, PyArray1<f64>>,
    Bound<'py, PyArray1<f64>>,
    Bound<'py, PyArray1<f64>>,
);

diff_binding! {
    /// paired(diff) -> (mean, sd, t, d), float64 [n_units] each.
    fn paired(py, d) -> Moments<'py> {
        let p = py.detach(|| core_paired::paired(&d));
        Ok((p.mean.into_pyarray(py), p.sd.into_pyarray(py), p.t.into_pyarray(py), p.d.into_pyarray(py)))
    }
}

diff_binding! {
    /// sign_flip_exact(diff, t_thresholds, d_thresholds, start, end) -> (counts int64 [len x k], max_abs_t [len])
    fn sign_flip_exact(py, d, t_thresholds: Vec<f64>, d_thresholds: Vec<f64>, start: u64, end: u64) -> NullArrays<'py> {
        null_range(py, &d, thresholds(&t_thresholds, &d_thresholds), |d, th| sign_flip::exact(d, th, start, end))
    }
}

diff_binding! {
    /// sign_flip_monte_carlo(diff, t_thresholds, d_thresholds, seed, start, end) -> (counts, max_abs_t)
    fn sign_flip_monte_carlo(
        py, d, t_thresholds: Vec<f64>, d_thresholds: Vec<f64>, seed: u64, start: u64, end: u64
    ) -> NullArrays<'py> {
        let run = |d: &PairDiffs, th| sign_flip::monte_carlo(d, th, seed, start, end);
        null_range(py, &d, thresholds(&t_thresholds, &d_thresholds), run)
    }
}

diff_binding! {
    /// sign_flip_identity(diff, t_thresholds, d_thresholds) -> (counts int64 [1 x k], max_abs_t [1]):
    /// the observed data (nothing flipped) through the null's route, for any number of pairs.
    fn sign_flip_identity(py, d, t_thresholds: Vec<f64>, d_thresholds: Vec<f64>) -> NullArrays<'py> {
        null_range(py, &d, thresholds(&t_thresholds, &d_thresholds), sign_flip::identity)
    }
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
    Ok(matrix_out(py, (end - start) as usize, n_pairs, signs))
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
    Ok(matrix_out(py, n_splits, n_pairs, a))
}

diff_binding! {
    /// split_half(diff, assignments) -> float64 [n_splits] of Pearson r
    fn split_half(py, d, assignments: PyReadonlyArray2<'py, bool>) -> Bound<'py, PyArray1<f64>> {
        let (a, _) = per_pair(&assignments, "assignments", &d)?;
        let r = py.detach(|| core_split::split_half(&d, a)).map_err(value_error)?;
        Ok(r.into_pyarray(py))
    }
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

diff_binding! {
    /// sign_flip_tallies(diff, t_thr, d_thr, partitions u32 [p x m], tail, exact, seed, start, end, bars)
    /// -> (hist int64, max_bins, abs_bins int64 [len(bars) + 1], patterns)
    #[allow(clippy::too_many_arguments)]
    fn sign_flip_tallies(
        py, d, t_thresholds: Vec<f64>, d_thresholds: Vec<f64>, partitions: PyReadonlyArray2<'py, u32>, tail: &str,
        exact: bool, seed: u64, start: u64, end: u64, bars: Vec<f64>
    ) -> TallyArrays<'py> {
        let (tail, parts) = (tail_of(tail)?, partition_rows(&partitions)?);
        let th = thresholds(&t_thresholds, &d_thresholds);
        let out = py
            .detach(|| sign_flip::tallies::tallies(&d, th, &parts, tail, exact, seed, start, end, &bars))
            .map_err(value_error)?;
        let bins = (out.hist.into_pyarray(py), out.max_bins.into_pyarray(py), out.abs_bins.into_pyarray(py));
        Ok((bins.0, bins.1, bins.2, out.patterns))
    }
}

diff_binding! {
    /// sign_flip_unit_scores(diff, tail) -> float64 [n_units]: S^2 / SS (two) or signed S / sqrt(SS).
    fn sign_flip_unit_scores(py, d, tail: &str) -> Bound<'py, PyArray1<f64>> {
        let tail = tail_of(tail)?;
        let s = py.detach(|| sign_flip::tallies::unit_scores(&d, tail)).map_err(value_error)?;
        Ok(s.into_pyarray(py))
    }
}

diff_binding! {
    /// sign_flip_tally_observed(diff, t_thr, d_thr, partitions, tail) -> int64 [groups x columns], flat
    fn sign_flip_tally_observed(
        py, d, t_thresholds: Vec<f64>, d_thresholds: Vec<f64>, partitions: PyReadonlyArray2<'py, u32>, tail: &str
    ) -> Bound<'py, PyArray1<i64>> {
        let (tail, parts) = (tail_of(tail)?, partition_rows(&partitions)?);
        let th = thresholds(&t_thresholds, &d_thresholds);
        let out = py.detach(|| sign_flip::tallies::observed(&d, th, &parts, tail)).map_err(value_error)?;
        Ok(out.into_pyarray(py))
    }
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
    Ok(matrix_out(py, draws, n_pairs, idx))
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
    let (tail, d) = (tail_of(tail)?, diffs(&diff)?);
    let (idx, draws) = per_pair(&indices, "indices", &d)?;
    let th = thresholds(&t_thresholds, &d_thresholds);
    let c = py
        .detach(|| crate::bootstrap::counts(&d, th, idx, tail))
        .map_err(value_error)?;
    Ok(matrix_out(py, draws, th.len(), c))
}

fn register_direction_bootstrap(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(direction_null, m)?)?;
    m.add_function(wrap_pyfunction!(bootstrap_indices, m)?)?;
    m.add_function(wrap_pyfunction!(bootstrap_counts, m)?)?;
    m.add("DIRECTION_TIE_REL", crate::direction::TIE_REL)?;
    Ok(())
}
