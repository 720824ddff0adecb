"""How the numbers of a results record are written: one place, so that results.md, the console
table and the model card always say the same thing the same way.

Everything here reads the ``results.json`` dict (``AnalysisResult.to_json()``), so a card made
from a results folder and one made straight from a capture cannot differ.

A ratio is ``observed count / null p99``. When the null p99 is 0 there is no ratio: at least 99%
of the null permutations had no unit over the threshold, and dividing by zero would say
"infinitely significant". The cell then says ``null p99 = 0`` and gives the largest count any
null permutation reached (``null_max``), which is the honest bound the null offers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from dense_plantain.units import kind_word, region_word

MD_PIPE = "\\|"
#: A null p99 with fewer permutations than this above it is flagged (analysis.driver.FEW_ABOVE_P99).
FEW_ABOVE_P99 = 10


def number(x: float | str | None, digits: int = 2) -> str:
    """A results.json number: ``None``/NaN as "—", ``"inf"``/``"-inf"`` (or an infinity) as "∞"/"−∞"."""
    if isinstance(x, str):
        x = float(x) if x in ("inf", "-inf") else float("nan")
    if x is None or math.isnan(x):
        return "—"
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    return f"{x:,.{digits}f}"


def threshold_value(x: float) -> str:
    """3.0 -> "3", 0.8 -> "0.8"."""
    return f"{x:g}"


def threshold_label(th: Mapping[str, Any]) -> str:
    """ "|t| > 3"; one-sided rows (``th["tail"]``): "t > 3" (greater), "t < -3" (less)."""
    tail = th.get("tail", "two")
    if tail == "greater":
        return f"{th['metric']} > {threshold_value(th['threshold'])}"
    if tail == "less":
        return f"{th['metric']} < −{threshold_value(th['threshold'])}"
    return f"|{th['metric']}| > {threshold_value(th['threshold'])}"


def metric_label(th: Mapping[str, Any]) -> str:
    """ "Units with |d| > 0.8 (large)"."""
    large = " (large)" if th["metric"] == "d" and th["threshold"] == 0.8 else ""
    return f"Units with {threshold_label(th)}{large}"


def count_cell(th: Mapping[str, Any]) -> str:
    """ "8,263 (50.6%)"."""
    return f"{th['count']:,} ({100.0 * th['fraction']:.1f}%)"


def ratio_text(ratio: float) -> str:
    """Like the cards: "6.2×" below 10, "659×" and "1,489×" above, two digits below 1."""
    if ratio >= 10:
        return f"{ratio:,.0f}×"
    if ratio >= 1:
        return f"{ratio:.1f}×"
    return f"{ratio:.2g}×"


def significance_cell(th: Mapping[str, Any]) -> str:
    """The Significance column: the ratio to the null p99, or why there is none."""
    if th.get("null_p99") is None:
        return "— (no null run)"
    if th.get("ratio") is not None:
        return f"{ratio_text(th['ratio'])} empirical null p99" + _small_p99(th)
    if th["count"] == 0:
        return "null p99 = 0, observed 0"
    return f"null p99 = 0 (null max {th['null_max']:,}): no ratio"


def short_significance(th: Mapping[str, Any]) -> str:
    """The ratio alone, for the narrow per-group tables."""
    if th.get("null_p99") is None:
        return ""
    if th.get("ratio") is not None:
        return ratio_text(th["ratio"]) + _small_p99(th)
    return f"p99 = 0, max {th['null_max']:,}"


def _small_p99(th: Mapping[str, Any]) -> str:
    """A p99 under 1 is an interpolation between a 0 and a 1 count: say so, as the ratio balloons;
    and a p99 with fewer than 10 permutations above it rests on a handful of them: say so too."""
    note = f" (p99 = {th['null_p99']:.2g})" if 0 < th["null_p99"] < 1 else ""
    above = th.get("null_n_above_p99")
    if above is not None and above < FEW_ABOVE_P99:
        note += f" [p99 rests on {above} permutation{'s' if above != 1 else ''} above it]"
    return note


def group_cell(th: Mapping[str, Any]) -> str:
    extra = short_significance(th)
    return count_cell(th) + (f" · {extra}" if extra else "")


def any_zero_p99(res: Mapping[str, Any]) -> bool:
    rows = list(res["thresholds"]) + [th for g in res.get("groups", []) for th in g["thresholds"]]
    return any(th.get("null_p99") == 0 for th in rows)


def zero_p99_note(res: Mapping[str, Any]) -> str:
    p = res["null"]["n_permutations"]
    return (
        f"A ratio divides the observed count by the 99th percentile of that count over the {p:,} null "
        "permutations. Where the percentile is 0, at least 99% of the permutations left every unit under "
        "the threshold and a ratio would be infinite, so the cell gives the largest count any null "
        "permutation reached (null max) instead."
    )


def p_value(p: float | None) -> str:
    if p is None:
        return "—"
    return f"{p:.3g}"


def split_half_cells(sh: Mapping[str, Any]) -> tuple[str, str]:
    """(value, significance) for the split-half row."""
    if sh.get("median") is None:
        return "—", sh.get("note") or "not computed"
    return f"{sh['median']:.3f}", f"[{sh['q25']:.2f}, {sh['q75']:.2f}] IQR"


def max_t_cells(res: Mapping[str, Any]) -> tuple[str, str]:
    if res.get("max_abs_t") is None:
        return "—", "—"
    unit = res.get("max_abs_t_unit") or ""
    p = res.get("max_abs_t_p_maxT")
    return number(res["max_abs_t"]), f"{unit}, max-statistic p = {p_value(p)}"


def block_line(b: Mapping[str, Any], pipe: str = MD_PIPE) -> str:
    """ "single[0]: max|t|=22.45, 283/768 units at |t|>3, median |d|=0.45"; one-sided blocks
    (``tail`` greater / less) read "max t=..., ... at t>3, median d=..." / "min t=..., ... at t<-3"."""
    tail = b.get("tail", "two")
    if tail == "two":
        top_word, over, d_word = f"max{pipe}t{pipe}", f"{pipe}t{pipe}>3", f"{pipe}d{pipe}"
        top_value, med = b["max_abs_t"], b["median_abs_d"]
    else:  # the summary's values are oriented (-t, -d for "less"): show them as t and d again
        less = tail == "less"
        top_word, over, d_word = ("min t", "t<-3", "d") if less else ("max t", "t>3", "d")
        top_value, med = (
            (_negate(b["max_abs_t"]), _negate(b["median_abs_d"])) if less else (b["max_abs_t"], b["median_abs_d"])
        )
    top = number(top_value)
    if top_value in ("inf", "-inf") and b.get("max_unit"):
        top += f" ({b['max_unit']}: its differences are all equal and non-zero)"
    count = f"{b['n_t_gt3']:,}/{b['n_units']:,}"
    return f"{b['block']}: {top_word}={top}, {count} units at {over}, median {d_word}={number(med)}"


def _negate(v: Any) -> Any:
    """-v for a results.json number (float, None, or the words "inf" / "-inf" / "nan")."""
    if isinstance(v, str):
        return {"inf": "-inf", "-inf": "inf"}.get(v, v)
    return None if v is None else -v


def group_name(g: Mapping[str, Any]) -> str:
    return kind_word(g["group"]) if g["axis"] == "kind" else region_word(g["group"])


def title(res: Mapping[str, Any]) -> str:
    c = res["conditions"]
    if res["design"] == "paired":
        return f"{c.get('probe') or 'probe'}: {c['b']} vs {c['a']}"
    c1, c2 = c["capture_1"], c["capture_2"]
    what = "contrast of contrasts"
    if c.get("shared_b"):
        what += " (both share their B prompts, so (B1 − A1) − (B2 − A2) is A2 − A1)"
    return f"{c1.get('probe') or 'capture 1'} vs {c2.get('probe') or 'capture 2'}: {what}"


def weights_line(res: Mapping[str, Any]) -> str:
    """What weights the numbers come from, for the first lines of every output."""
    w = res.get("weights") or {}
    if not w.get("recorded"):
        return "Weights: not recorded (a capture from an older dense-plantain); what model weights ran is unknown."
    desc = w.get("description") or w.get("kind") or "unknown"
    if w.get("random"):
        return (
            f"**Random weights ({w.get('kind', 'random')}): {desc}.** These numbers come from untrained "
            "weights; they test the pipeline, not what any trained model holds."
        )
    sha = f", sha256 {w['sha256'][:12]}…" if isinstance(w.get("sha256"), str) else ""
    return f"Weights: {desc} ({w.get('kind', 'pretrained')}{sha})."


def is_random(res: Mapping[str, Any]) -> bool:
    return bool((res.get("weights") or {}).get("random"))


def contrast_sentence(res: Mapping[str, Any]) -> str:
    """What was subtracted from what, in words."""
    c = res["conditions"]
    m = res["n_units"]
    layout = res["layout"]["name"]
    if res["design"] == "paired":
        return f"Per unit, {c['b']} (B) minus {c['a']} (A) over {res['n_pairs']} pairs; {m:,} units, {layout} layout."
    c1, c2 = c["capture_1"], c["capture_2"]
    what = f"({c1['b']} − {c1['a']}) − ({c2['b']} − {c2['a']})"
    if c.get("shared_b"):
        what += " (both captures share their B prompts, so this is A2 − A1)"
    if res["design"] == "contrast-paired":
        how = f"paired over {res['n_pairs']} pairs matched by pair id"
    else:
        n1, n2 = res["group_sizes"]
        how = f"Welch's t over {n1} and {n2} pairs (the captures do not share pairs)"
    return f"Per unit, {what}: {how}; {m:,} units, {layout} layout."


def null_description(res: Mapping[str, Any]) -> str:
    nl = res["null"]
    p = nl["n_permutations"]
    if nl["method"] == "sign-flip":
        n = res["n_pairs"]
        if nl["mode"] == "exact" and res.get("tail", "two") != "two":
            return (
                f"all {p:,} sign patterns of the {n} pair differences (exact; 2^n: a one-sided statistic changes "
                "sign when every sign flips, so no pair is fixed; the identity pattern, the observed data, is one "
                "of them)"
            )
        if nl["mode"] == "exact":
            return (
                f"all {p:,} distinct sign patterns of the {n} pair differences (exact; 2^(n−1), because "
                "flipping every sign leaves |t| unchanged; the identity pattern, the observed data, is one of "
                "them, so the null max is never below the observed count)"
            )
        return f"{p:,} random sign patterns of the {n} pair differences (Monte Carlo, seed {nl['seed']})"
    n1, n2 = res["group_sizes"]
    if nl["mode"] == "exact":
        return (
            f"all {p:,} ways to assign the {n1 + n2} differences to the two captures ({n1} and {n2}; exact; the "
            "observed assignment is one of them, so the null max is never below the observed count)"
        )
    return (
        f"{p:,} random reassignments of the {n1 + n2} differences to the two captures (Monte Carlo, seed {nl['seed']})"
    )


def methods_paragraph(res: Mapping[str, Any]) -> str:
    """A short methods paragraph generated from the record's settings."""
    s, sh = res["settings"], res["split_half"]
    n = res["n_pairs"]
    if res["design"] == "contrast-welch":
        n1, n2 = res["group_sizes"]
        test = (
            "Each capture gives one difference B − A per pair; per unit, Welch's t compares the two sets of "
            f"differences ({n1} and {n2}), with Welch–Satterthwaite degrees of freedom, and Cohen's d is the "
            "mean difference over the pooled SD (d_s)."
        )
        null_kind = "The null shuffles which capture each difference belongs to"
    else:
        subject = "pair difference B − A" if res["design"] == "paired" else "pair's difference of differences"
        test = (
            f"Per unit, the {subject} was tested with a paired t ({n - 1} df); Cohen's d is d_z, "
            "the mean difference over its SD (so d = t/√n)."
        )
        null_kind = "The null flips the sign of each pair's difference"
    null = (
        f"{null_kind}: {null_description(res)}. Each permutation records how many units pass each threshold "
        f"and the largest |t|. Significance is the observed count over the 99th percentile of its null counts "
        f"(numpy.percentile, linear interpolation)."
    )
    fwer = (
        "In units.csv, p is the two-sided parametric p of the t distribution, q the Benjamini–Hochberg "
        "q-value over those p, and p_maxT the max-statistic (family-wise) p from the null's largest |t|."
    )
    if sh.get("median") is not None:
        halves = "both captures' pairs" if res["design"] == "contrast-welch" else "the pairs"
        split = (
            f"Split-half consistency: {sh['n_splits']} random splits of {halves} into halves "
            f"(seed {s['seed']}), Pearson r across units between the two halves' t."
        )
    else:
        split = f"Split-half consistency was {sh.get('note') or 'not computed'}."
    groups = ""
    if res.get("groups"):
        groups = (
            " The attention/MLP and token-region tables use their own null runs over just their units (same seed)."
            if s.get("group_nulls")
            else " The attention/MLP and token-region tables give counts only (group nulls were switched off)."
        )
    from dense_plantain.report.robustness import tail_sentence

    one_sided = tail_sentence(res)
    if one_sided:
        fwer = one_sided + " In units.csv, p, q and p_maxT are these one-sided values."
    return " ".join([test, null, fwer, split]) + groups


def settings_warning(res: Mapping[str, Any]) -> str | None:
    """A warning when compare ran on captures with different models or settings (None otherwise)."""
    check = (res.get("conditions") or {}).get("settings_check") or {}
    if check.get("status") != "different":
        return None
    listed = "; ".join(f"{d['key']} {d['capture_1']!r} vs {d['capture_2']!r}" for d in check.get("differences", []))
    return (
        f"**Warning: the captures differ in model or settings** ({listed}). They were compared with "
        "--allow-different-settings; part of the contrast of contrasts may come from those differences."
    )
