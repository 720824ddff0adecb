"""Type stub of the Rust extension ``dense_plantain._stats`` (see ``rust/py.rs``).

Use :mod:`dense_plantain.stats`, which validates input and names what is wrong; these
functions take C-contiguous float64 ``[pairs x units]`` matrices and raise ``ValueError``.
"""

from typing import TypeAlias

import numpy as np
import numpy.typing as npt

__all__ = [
    "DIRECTION_TIE_REL",
    "MAX_EXACT_PAIRS",
    "MIN_PAIRS",
    "MIN_SPLIT_PAIRS",
    "THREAD_ENV_VARS",
    "abs_t_from_ratio",
    "bootstrap_counts",
    "bootstrap_indices",
    "direction_null",
    "monte_carlo_signs",
    "n_patterns",
    "paired",
    "sign_flip_exact",
    "sign_flip_identity",
    "sign_flip_monte_carlo",
    "sign_flip_tallies",
    "sign_flip_tally_observed",
    "sign_flip_unit_scores",
    "simd_variant",
    "split_assignments",
    "split_half",
    "threads",
]

# The arrays of the signatures below, named once.
_F64: TypeAlias = npt.NDArray[np.float64]
_I64: TypeAlias = npt.NDArray[np.int64]
_U32: TypeAlias = npt.NDArray[np.uint32]
#: A range of a sign-flip null: counts [len x (t + d thresholds)] and max |t| [len].
_NullArrays: TypeAlias = tuple[_I64, _F64]

MAX_EXACT_PAIRS: int
MIN_PAIRS: int
MIN_SPLIT_PAIRS: int
THREAD_ENV_VARS: list[str]

def paired(diff: _F64) -> tuple[_F64, _F64, _F64, _F64]:
    """(mean, sd, t, d), one value per unit each."""

def sign_flip_exact(
    diff: _F64, t_thresholds: list[float], d_thresholds: list[float], start: int, end: int
) -> _NullArrays:
    """Patterns start..end of the 2^(n-1): counts [len x (t + d thresholds)], max |t| [len]."""

def sign_flip_monte_carlo(
    diff: _F64, t_thresholds: list[float], d_thresholds: list[float], seed: int, start: int, end: int
) -> _NullArrays:
    """Monte Carlo permutations start..end of seed: counts and max |t| as for the exact null."""

def sign_flip_identity(diff: _F64, t_thresholds: list[float], d_thresholds: list[float]) -> _NullArrays:
    """The observed data (nothing flipped) through the null's route, any n: counts [1 x k], max |t| [1]."""

def monte_carlo_signs(n_pairs: int, seed: int, start: int, end: int) -> npt.NDArray[np.int8]:
    """+1 / -1 per pair for Monte Carlo permutations start..end, [len x n_pairs]."""

def n_patterns(n_pairs: int) -> int:
    """2 ** (n_pairs - 1)."""

def abs_t_from_ratio(r: float, n_pairs: int) -> float:
    """|t| of a unit whose flipped sum S has S^2 / SS = r."""

def split_assignments(n_pairs: int, n_splits: int, seed: int) -> npt.NDArray[np.bool_]:
    """[n_splits x n_pairs], True for the floor(n/2) pairs of each first half."""

def split_half(diff: _F64, assignments: npt.NDArray[np.bool_]) -> _F64:
    """One Pearson r per assignment row."""

def threads() -> int:
    """Worker threads of this process's statistics pool."""

def simd_variant() -> str:
    """ "avx512", "avx2" or "baseline"."""

def sign_flip_tallies(
    diff: _F64,
    t_thresholds: list[float],
    d_thresholds: list[float],
    partitions: _U32,
    tail: str,
    exact: bool,
    seed: int,
    start: int,
    end: int,
    bars: list[float],
) -> tuple[_I64, _I64, _I64, int]:
    """Tallies of patterns start..end: (count histograms, max bins, max-|t| bins, patterns tallied)."""

def sign_flip_unit_scores(diff: _F64, tail: str) -> _F64:
    """Per unit, S^2 / SS (tail "two") or signed S / sqrt(SS) (one-sided), through the null's sums."""

def sign_flip_tally_observed(
    diff: _F64, t_thresholds: list[float], d_thresholds: list[float], partitions: _U32, tail: str
) -> _I64:
    """Observed counts per group (all units, then each partition's groups) and threshold column, flat."""

DIRECTION_TIE_REL: float

def direction_null(
    delta_vec: npt.NDArray[np.float32] | _F64, width: int, exact: bool, seed: int, start: int, end: int
) -> tuple[_F64, _F64, _I64, _I64, _I64, _I64]:
    """(D, D_norm, agree count, count_d, count_agree, count_max) per unit over patterns start..end."""

def bootstrap_indices(n_pairs: int, draws: int, seed: int) -> _U32:
    """[draws x n_pairs] pair indices of the pair bootstrap."""

def bootstrap_counts(
    diff: _F64, t_thresholds: list[float], d_thresholds: list[float], indices: _U32, tail: str = "two"
) -> _I64:
    """[draws x (t + d thresholds)] counts of units over each threshold per draw, for the tail."""
