"""``patch.json``: the record of a patch run, its statistics, and the output folder.

Per set: per-pair ``fraction``, ``reverse_fraction`` and ``ablation_shrink`` (see ``run``), their
means with a 95 % t interval over pairs, and against the set's composition-matched random sets:

* ``random.set_means``: each random set's mean fraction over pairs; ``p_set`` the share of
  random sets whose mean is at least the set's (no +1: the share itself, as the issue asks);
* across pairs, ``diff_i = fraction_i(U) - mean_r fraction_i(R_r)``: paired t (df n - 1,
  two-sided p from scipy's t distribution) and a two-sided sign-flip p of the same t, exact
  (all 2^(n-1) patterns, the Rust engine in chunks) for up to 25 pairs, else 10,000 Monte Carlo
  patterns with p = (1 + count) / (1 + P).

The output folder is staged in a hidden sibling folder and renamed into place whole.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from dense_plantain.patch.spec import PatchError, composition

PATCH_FORMAT = 1
PATCH_JSON = "patch.json"
PATCH_MD = "patch.md"
FIGURE = "fraction_by_k.png"
OUTPUT_NAMES = frozenset({PATCH_JSON, PATCH_MD, FIGURE})
#: Exact sign-flip enumeration up to this many pairs (2^24 patterns at 25), Monte Carlo above.
EXACT_SIGN_FLIP_PAIRS = 25
MONTE_CARLO_PATTERNS = 10_000
#: Unit names are listed in patch.json for sets up to this size.
LIST_NAMES_UP_TO = 4096


def _finite(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def mean_ci(values: np.ndarray) -> dict[str, Any]:
    """Mean and 95 % t interval over pairs (float64)."""
    from scipy import stats as sps

    v = np.asarray(values, dtype=np.float64)
    n = len(v)
    mean = float(v.mean())
    if n < 2:
        return {"mean": mean, "ci95": [None, None], "sd": None}
    sd = float(v.std(ddof=1))
    half = float(sps.t.ppf(0.975, n - 1) * sd / math.sqrt(n))
    return {"mean": mean, "ci95": [_finite(mean - half), _finite(mean + half)], "sd": sd}


def sign_flip_p(diff: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Two-sided sign-flip p of the paired t of ``diff`` (one value per pair), Rust engine."""
    from dense_plantain import _stats
    from dense_plantain import stats as dstats

    d = np.ascontiguousarray(np.asarray(diff, dtype=np.float64).reshape(-1, 1))
    n = d.shape[0]
    if n < dstats.MIN_PAIRS:
        return {"p": None, "mode": None, "n_patterns": 0, "note": f"needs at least {dstats.MIN_PAIRS} pairs"}
    if not np.any(d != d[0, 0]):
        return {"p": 1.0 if d[0, 0] == 0 else None, "mode": None, "n_patterns": 0, "note": "no spread over pairs"}
    observed = dstats.observed_counts(d).max_abs_t
    exact = n <= min(EXACT_SIGN_FLIP_PAIRS, dstats.MAX_EXACT_PAIRS)
    total = 2 ** (n - 1) if exact else MONTE_CARLO_PATTERNS
    chunk = 1 << 20
    count = 0
    for start in range(0, total, chunk):
        end = min(total, start + chunk)
        if exact:
            _, mx = _stats.sign_flip_exact(d, [3.0], [0.8], start, end)
        else:
            _, mx = _stats.sign_flip_monte_carlo(d, [3.0], [0.8], int(seed), start, end)
        count += int(np.count_nonzero(np.asarray(mx) >= observed))
    p = count / total if exact else (1 + count) / (1 + total)
    return {"p": p, "mode": "exact" if exact else "monte-carlo", "n_patterns": total, "abs_t": _finite(observed)}


def paired_t(diff: np.ndarray) -> dict[str, Any]:
    from scipy import stats as sps

    d = np.asarray(diff, dtype=np.float64)
    n = len(d)
    if n < 2:
        return {"t": None, "df": n - 1, "p": None}
    sd = d.std(ddof=1)
    if sd == 0:
        return {"t": None, "df": n - 1, "p": None, "note": "no spread over pairs"}
    t = d.mean() / (sd / math.sqrt(n))
    return {"t": float(t), "df": n - 1, "p": float(2 * sps.t.sf(abs(t), n - 1))}


def set_record(run, i: int, layout) -> dict[str, Any]:
    s = run.sets[i]
    key = str(i)
    vals = np.array([p.values[key] for p in run.pairs], dtype=np.float64)  # [pairs x 3]
    names = layout.labels()["name"]
    folds = [
        {
            "fold": f,
            "applied_to": [p.id for p in run.pairs if (p.fold == f or len(s.folds) == 1)],
            "n_units": int(len(u)),
            "composition": composition(layout, u),
            "units": [str(names[j]) for j in u] if len(u) <= LIST_NAMES_UP_TO else None,
        }
        for f, u in enumerate(s.folds)
    ]
    frac = mean_ci(vals[:, 0])
    rec: dict[str, Any] = {
        "name": s.name,
        "spec": s.spec,
        "n_units": s.n_units,
        "top_k": s.top_k,
        "cross_fitted": s.cross_fitted,
        "folds": folds,
        "pairs": [
            {
                "id": p.id,
                "fold": p.fold,
                "fraction": _finite(v[0]),
                "reverse_fraction": _finite(v[1]),
                "ablation_shrink": _finite(v[2]),
            }
            for p, v in zip(run.pairs, vals)
        ],
        "mean_fraction": frac["mean"],
        "fraction_ci95": frac["ci95"],
        "mean_reverse_fraction": float(vals[:, 1].mean()),
        "reverse_fraction_ci95": mean_ci(vals[:, 1])["ci95"],
        "mean_ablation_shrink": float(vals[:, 2].mean()),
        "ablation_shrink_ci95": mean_ci(vals[:, 2])["ci95"],
    }
    if not s.random:
        rec["random"] = {"n_sets": 0, "note": s.random_note}
        return rec
    rand = np.array([[p.values[f"{i}/{r}"][0] for p in run.pairs] for r in range(len(s.random))])  # [R x pairs]
    set_means = rand.mean(axis=1)
    per_pair = rand.mean(axis=0)
    diff = vals[:, 0] - per_pair
    rec["random"] = {
        "n_sets": len(s.random),
        "matched_on": "units per (block, kind, token region), drawn uniformly without replacement, per fold",
        "set_means": set_means.tolist(),
        "mean": float(set_means.mean()),
        "p05": float(np.percentile(set_means, 5)),
        "p95": float(np.percentile(set_means, 95)),
        "p_set": float(np.mean(set_means >= frac["mean"])),
        "p_set_rule": "share of random sets whose mean fraction is at least the set's",
        "per_pair_mean": per_pair.tolist(),
        "mean_reverse_fraction": float(
            np.mean([[p.values[f"{i}/{r}"][1] for p in run.pairs] for r in range(len(s.random))])
        ),
        "mean_ablation_shrink": float(
            np.mean([[p.values[f"{i}/{r}"][2] for p in run.pairs] for r in range(len(s.random))])
        ),
        "diff_mean": float(diff.mean()),
        "paired_t": paired_t(diff),
        "sign_flip": sign_flip_p(diff, seed=int(run.settings.get("seed", 0))),
    }
    return rec


def patch_record(run, layout) -> dict[str, Any]:
    """The ``patch.json`` record of a finished run."""
    return {
        "dense_plantain_patch": PATCH_FORMAT,
        "measure": run.settings["measure"],
        "definitions": {
            "fraction": "<L_{A<-B} - L_A, L_B - L_A> / ||L_B - L_A||^2, A run with the set's columns from B",
            "reverse_fraction": "<L_B - L_{B<-A}, L_B - L_A> / ||L_B - L_A||^2, B run with the columns from A",
            "ablation_shrink": "1 - ||L_{B<-m} - L_{A<-m}|| / ||L_B - L_A||, both runs with the A/B mean m",
            "patched_values": "a unit's columns at the unit's token region of the attention output projection's "
            "input, taken from the other run of the same pair at the same positions",
            "cross_fitting": "top:K sets: units for the pairs of one fold are the top K by |t| over the other "
            "fold's pairs (capture differences B - A)",
        },
        "n_pairs": len(run.pairs),
        "pairs": [{"id": p.id, "fold": p.fold} for p in run.pairs],
        "layout": {"name": layout.name, "n_units": layout.n_units, "counts": layout.counts()},
        "sets": [set_record(run, i, layout) for i in range(len(run.sets))],
        "forwards": run.forwards,
        "memory": run.memory,
        "seconds": run.seconds,
        "resumed_from": run.resumed_from,
        "settings": run.settings,
        "provenance": run.provenance,
    }


# --- the folder ---------------------------------------------------------------------------------


def is_patch_folder(folder: Path) -> bool:
    """True for a folder that a previous ``patch`` wrote (its patch.json is ours) and nobody added to."""
    from dense_plantain.report.folder import holds_only

    def ours(folder: Path) -> bool:
        try:
            return "dense_plantain_patch" in json.loads((folder / PATCH_JSON).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False

    return holds_only(folder, OUTPUT_NAMES, PATCH_JSON, ours)


def check_out_dir(out: Path) -> None:
    """Refuse, before any work, an --out that is a file or a non-empty folder not written by patch."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PatchError(f"{out} exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not is_patch_folder(out):
        raise PatchError(
            f"{out} is not empty and is not a folder written by `dense-plantain patch`; nothing was written. "
            "Choose a new or empty --out"
        )


def write_patch_folder(run, layout, out: str | Path) -> list[Path]:
    """Write patch.json, patch.md and the figure into ``out``, whole or not at all."""
    from dense_plantain.patch.report import figure, markdown
    from dense_plantain.report.folder import write_folder
    from dense_plantain.report.records import _plain, results_json_text

    record = _plain(patch_record(run, layout))
    text = results_json_text(record)

    def fill(staging: Path) -> None:
        (staging / PATCH_JSON).write_text(text, encoding="utf-8")
        (staging / PATCH_MD).write_text(markdown(record), encoding="utf-8")
        figure(record, staging / FIGURE)

    # The results folder's writer: staging beside out, stale-staging cleanup, disk errors in words.
    return write_folder(Path(out), fill, names=OUTPUT_NAMES, is_ours=is_patch_folder, check=check_out_dir)
