"""Synthetic capture files for the analysis, report and compare tests.

Values look like real unit values in the one way that matters to the statistics: units are
correlated. Each pair's difference in each block is a shared factor times per-unit loadings
(rank one per block) plus independent noise, and chosen blocks get a planted shift.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dense_plantain import store, units

#: 2 joint blocks of 8 units, 3 single blocks of 20 (8 attention + 12 MLP): 76 units.
SMALL_SHAPE = units.ModelShape(n_joint=2, n_single=3, n_heads=4, head_dim=32, mlp_hidden=192)


#: The files of the results folder that analyze and compare write for such a capture, written out
#: here (not read from dense_plantain.report) so that the tests check the package against them.
RESULTS_FILES = {
    "results.json",
    "units.csv",
    "results.md",
    "abs_t_by_block.png",
    "null_counts.png",
    "split_half_r.png",
    "abs_t_heatmap.png",
}


def small_layout(name: str = "plantain") -> units.Layout:
    return units.build_layout(SMALL_SHAPE, name)


def correlated_pairs(
    layout: units.Layout, n_pairs: int, *, planted: dict[str, float] | None = None, seed: int = 0, factor: float = 0.8
) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) float32 [n_pairs x units]: b - a = block factor x loadings + noise + planted shift."""
    rng = np.random.default_rng(seed)
    labels = layout.labels()
    block = labels["block_index"]
    m = layout.n_units
    loadings = rng.normal(size=m)
    shared = rng.normal(size=(n_pairs, len(layout.blocks)))
    diff = factor * shared[:, block] * loadings + rng.normal(size=(n_pairs, m))
    for name, shift in (planted or {}).items():
        diff[:, layout.block(name).units] += shift
    a = 3.0 + rng.gamma(2.0, 0.5, size=(n_pairs, m))
    return a.astype(np.float32), (a + diff).astype(np.float32)


def probe_meta(
    n_pairs: int,
    *,
    ids: list[str] | None = None,
    name: str = "synthetic-pose",
    label_a: str = "T-pose",
    label_b: str = "expressive pose",
) -> dict:
    ids = ids or [f"pair-{i:02d}" for i in range(n_pairs)]
    pairs = [
        {"id": pid, "a": f"a person {pid} standing in a T-pose", "b": f"a person {pid} mid-leap, arms wide"}
        for pid in ids
    ]
    return {
        "pairs": pairs,
        "probe": {
            "name": name,
            "thesis": "Body pose is held as an axis of its own.",
            "label_a": label_a,
            "label_b": label_b,
            "held_constant": ["subject", "setting"],
            "sha256": "0" * 64,
            "path": "prompts/synthetic.toml",
        },
        "model": {"id": "black-forest-labs/FLUX.2-klein-base-4B"},
        "settings": {"height": 64, "width": 64, "steps": 1, "seed": 0, "dtype": "float32"},
    }


def write(path: Path, a: np.ndarray, b: np.ndarray, layout: units.Layout, **meta) -> Path:
    return store.write_capture(path, a, b, {**layout.to_metadata(), **meta})


def paired_t(diff: np.ndarray) -> np.ndarray:
    """Paired t from its definition (float64, sd with n - 1)."""
    diff = np.asarray(diff, dtype=np.float64)
    return diff.mean(axis=0) / (diff.std(axis=0, ddof=1) / np.sqrt(diff.shape[0]))
