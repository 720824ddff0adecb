"""The robustness parts of a results record in words: tail, bootstrap intervals, seeds, factor levels.

Everything reads the results.json dict (``AnalysisResult.to_json()``): ``"tail"``,
``"bootstrap"`` (`analysis.intervals`), ``"seeds"`` (`analysis.seeds`) and ``"by"``
(`analysis.factors`). A record without them (older results, a design without them) gives no text.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dense_plantain.report import cells

__all__ = ["count_interval", "markdown_sections", "split_interval", "tail_sentence"]

_TAIL_WORDS = {
    "greater": "one-sided, B − A > 0 (units counted at t > c, d > c)",
    "less": "one-sided, B − A < 0 (units counted at t < −c, d < −c)",
}
#: Welch's design: the first sample's mean difference against the second's.
_WELCH_TAIL_WORDS = {
    "greater": "one-sided, first sample's mean B − A above the second's (t > c, d > c)",
    "less": "one-sided, first sample's mean B − A below the second's (t < −c, d < −c)",
}


def tail_sentence(res: Mapping[str, Any]) -> str | None:
    """The methods sentence of a one-sided analysis (None for two-sided)."""
    tail = res.get("tail", "two")
    if tail == "two":
        return None
    null = res.get("null", {})
    stat = null.get("fwer_statistic", "max t")
    words = _TAIL_WORDS.get(tail, tail)
    if res.get("design") == "contrast-welch":
        words = _WELCH_TAIL_WORDS.get(tail, tail)
        null_words = (
            f"the label-shuffle null counts t > c (or t < −c) per labelling and p_maxT compares each unit's t "
            f"with the {stat} of every labelling"
        )
    else:
        null_words = (
            "the sign-flip null lets every pair's sign vary (all 2^n patterns when exact) and "
            f"p_maxT compares each unit's t with the {stat} of every pattern"
        )
    return (
        f"Test: {words}. p is the one-sided parametric p of the t distribution and q its "
        f"Benjamini–Hochberg q; {null_words}."
    )


def _bootstrap_row(res: Mapping[str, Any], metric: str, threshold: float) -> Mapping[str, Any] | None:
    boot = res.get("bootstrap")
    if not isinstance(boot, Mapping):
        return None
    for row in boot.get("thresholds") or []:
        if row.get("metric") == metric and row.get("threshold") == threshold:
            return row
    return None


def count_interval(res: Mapping[str, Any], th: Mapping[str, Any]) -> str:
    """ " [95% bootstrap 7,812–8,690]" after a count, or "" without a bootstrap."""
    row = _bootstrap_row(res, th["metric"], th["threshold"])
    if row is None:
        return ""
    level = round(100 * float(res["bootstrap"].get("level", 0.95)))
    return f" [{level}% bootstrap {row['low']:,.0f}–{row['high']:,.0f}]"


def split_interval(res: Mapping[str, Any]) -> str:
    boot = res.get("bootstrap")
    if not isinstance(boot, Mapping):
        return ""
    sh = boot.get("split_half")
    if not isinstance(sh, Mapping) or sh.get("low") is None:
        return ""
    level = round(100 * float(boot.get("level", 0.95)))
    return f" [{level}% bootstrap {sh['low']:.2f}–{sh['high']:.2f}]"


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    def line(values: list[str]) -> str:
        return "| " + " | ".join(str(v).replace("|", cells.MD_PIPE) for v in values) + " |"

    return "\n".join([line(header), "|" + "|".join("---" for _ in header) + "|"] + [line(r) for r in rows])


def _threshold_cells(rows: list[Mapping[str, Any]]) -> list[str]:
    return [cells.group_cell(th) for th in rows]


def _bootstrap_md(res: Mapping[str, Any]) -> str | None:
    boot = res.get("bootstrap")
    if not isinstance(boot, Mapping):
        return None
    if boot.get("note"):
        return f"### Pair bootstrap\n\n{boot['note']}."
    within = "within each sample" in str(boot.get("method", ""))
    what = "the rows of each sample apart, with" if within else "the pairs with"
    text = (
        f"### Pair bootstrap\n\nThe intervals next to the counts: {boot['draws']:,} draws of {what} "
        f"replacement (seed {boot['seed']}), each count recounted per draw; {round(100 * boot['level'])}% "
        "percentile interval. They show how much a count moves with the choice of pairs; resampling repeats "
        "pairs, which shrinks the SD, so bootstrap counts lean above the observed ones. They are not a test."
    )
    sh = boot.get("split_half")
    if isinstance(sh, Mapping) and sh.get("low") is not None:
        text += (
            f" Split-half median r: {split_interval(res).strip()} ({sh['splits']} splits per draw, "
            f"{sh['n_finite']:,} draws with a finite median)."
        )
    else:
        text += " The split-half median was not bootstrapped (opt-in: --bootstrap-splits K)."
    return text


def seeds_section(res: Mapping[str, Any]) -> str | None:
    """The "Noise seeds" section (markdown): each seed's counts and the seed-to-seed consistency;
    None for a one-seed analysis."""
    return _seeds_md(res)


def _seeds_md(res: Mapping[str, Any]) -> str | None:
    rec = res.get("seeds")
    if not isinstance(rec, Mapping):
        return None
    per = rec.get("per_seed") or []
    if not per:
        return None
    header = ["Seed"] + [cells.threshold_label(th) for th in per[0]["thresholds"]] + ["Max |t|"]
    rows = [[str(s["seed"])] + _threshold_cells(s["thresholds"]) + [cells.number(s.get("max_abs_t"))] for s in per]
    cons = rec.get("consistency") or {}
    agree = (
        f"Seed-to-seed consistency (Pearson r of the per-unit t between two seeds, {len(cons.get('pairs', []))} "
        f"pairs of seeds): median {cells.number(cons.get('median'))}, range {cells.number(cons.get('min'))} to "
        f"{cells.number(cons.get('max'))}."
    )
    return (
        f"### Noise seeds\n\nThe analysis above uses each prompt's mean over {len(per)} noise seeds "
        f"({', '.join(str(s['seed']) for s in per)}). Each seed alone, with the same null settings:\n\n"
        f"{_md_table(header, rows)}\n\n{agree}"
    )


def _by_md(res: Mapping[str, Any]) -> str | None:
    rec = res.get("by")
    if not isinstance(rec, Mapping):
        return None
    factor = rec["factor"]
    levels = rec.get("levels") or []
    parts = [f"### By {factor}"]
    if levels:
        header = ["Level", "Pairs"] + [cells.threshold_label(th) for th in levels[0]["thresholds"]] + ["Max |t|"]
        rows = [
            [str(lv["level"]), str(lv["n_pairs"])]
            + _threshold_cells(lv["thresholds"])
            + [cells.number(lv.get("max_abs_t"))]
            for lv in levels
        ]
        parts.append(
            f"Each level's pairs alone (paired design, its own null):\n\n{_md_table(header, rows)}\n\n"
            + "\n".join(
                f"- {lv['level']}: " + "; ".join(cells.block_line(b) for b in lv.get("top_blocks", [])[:3])
                for lv in levels
            )
        )
    contrasts = rec.get("contrasts") or []
    if contrasts:
        header = ["Contrast", "Pairs"] + [cells.threshold_label(th) for th in contrasts[0]["thresholds"]]
        header += ["Max |t|", "p_maxT < 0.05"]
        rows = []
        for c in contrasts:
            n1, n2 = c["group_sizes"]
            rows.append(
                [f"{c['level']} − {' + '.join(c['against'])}", f"{n1} vs {n2}"]
                + _threshold_cells(c["thresholds"])
                + [cells.number(c.get("max_abs_t")), f"{c['n_p_maxT_below_05']:,}"]
            )
        parts.append(
            "Between levels, per unit: Welch's t of the pair differences "
            f"({rec['contrast_rule']}; label-shuffle null, {_contrast_tail(rec)}); per-unit t and p_maxT are the "
            f"`by_{factor}_<level>_*` columns of units.csv.\n\n{_md_table(header, rows)}"
        )
    return "\n\n".join(parts)


def markdown_sections(res: Mapping[str, Any]) -> list[str]:
    """results.md sections for the record's bootstrap, seeds and factor levels (each when present)."""
    return [s for s in (_bootstrap_md(res), _seeds_md(res), _by_md(res)) if s]


def _contrast_tail(rec: Mapping[str, Any]) -> str:
    tail = str(rec.get("contrast_tail", "two"))
    return "two-sided" if tail == "two" else _WELCH_TAIL_WORDS.get(tail, tail)
