"""The Controls section: the main run's counts beside each baseline's, and the input-embedding group.

Reads only results.json (``thresholds``, ``baselines``, ``input_embeddings``). The table has one
row per metric; a row is one entry of ``ROW_SOURCES``: a function from a results record (the main
one, or one baseline record: both carry ``thresholds``) to the rows it contributes, each
``(label, count, ratio)``. A new summary (e.g. a direction test) is one more function there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from dense_plantain.report import cells

#: One controls row: metric label, count (None: not measured), ratio to its null p99 (None: undefined).
Row = tuple[str, int | None, float | None]


def _metric_label(th: Mapping[str, Any]) -> str:
    return f"|{th['metric']}| > {th['threshold']:g}"  # plain: the markdown table escapes the pipes


def threshold_rows(rec: Mapping[str, Any]) -> list[Row]:
    """The transformer units' counts over each threshold, with the ratio to their null p99."""
    return [(_metric_label(th), int(th["count"]), th.get("ratio")) for th in rec.get("thresholds") or []]


def input_rows(rec: Mapping[str, Any]) -> list[Row]:
    """The input-embedding units' counts (their own null), labelled apart from the transformer's."""
    group = rec.get("input_embeddings")
    if not isinstance(group, Mapping):
        return []
    return [(f"input embeddings: {_metric_label(th)}", int(th["count"]), th.get("ratio")) for th in group["thresholds"]]


def direction_rows(rec: Mapping[str, Any]) -> list[Row]:
    """Units with a significant consistent direction of their signed vectors (FWER p_maxD < 0.05);
    a family-wise count, so it has no null p99 of its own (ratio NaN: shown without one)."""
    direction = rec.get("direction")
    if not isinstance(direction, Mapping) or direction.get("n_significant") is None:
        return []
    alpha = direction.get("alpha", 0.05)
    return [(f"direction: p_maxD < {alpha:g}", int(direction["n_significant"]), float("nan"))]


#: Every source of rows of the Controls table, in table order (add one function for a new summary).
ROW_SOURCES: list[Callable[[Mapping[str, Any]], list[Row]]] = [threshold_rows, input_rows, direction_rows]


def rows_of(rec: Mapping[str, Any]) -> dict[str, Row]:
    return {row[0]: row for source in ROW_SOURCES for row in source(rec)}


def _ratio(r: float | None) -> str:
    return "p99 = 0" if r is None else f"{r:.1f}x"


def _cell(row: Row | None) -> str:
    if row is None or row[1] is None:
        return "not measured"
    if row[2] is not None and row[2] != row[2]:  # NaN: a count without a null p99 (e.g. FWER-significant units)
        return f"{row[1]:,}"
    return f"{row[1]:,} ({_ratio(row[2])})"


def main_over_baseline(main: Row | None, base: Row | None) -> float | None:
    """Main count / baseline count (None when either is missing or the baseline count is 0)."""
    if main is None or base is None or main[1] is None or not base[1]:
        return None
    return main[1] / base[1]


def _quotient(q: float | None, main: Row | None, base: Row | None) -> str:
    if q is not None:
        return f"{q:.2f}"
    if base is not None and base[1] == 0 and main is not None and main[1]:
        return "baseline 0"
    return "n/a"


def controls_table(res: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: metric, main count (ratio), per baseline its count (ratio) and main/baseline."""
    baselines = res.get("baselines") or []
    main = rows_of(res)
    base_rows = [rows_of(b) for b in baselines]
    header = ["Metric", "main: count (ratio to null p99)"]
    for b in baselines:
        header += [f"{b['label']}: count (ratio)", "main / baseline"]
    labels = list(main) + [k for rows in base_rows for k in rows if k not in main]
    table = []
    for label in labels:
        line = [label, _cell(main.get(label))]
        for rows in base_rows:
            line += [
                _cell(rows.get(label)),
                _quotient(main_over_baseline(main.get(label), rows.get(label)), main.get(label), rows.get(label)),
            ]
        table.append(line)
    return header, table


def baseline_sentence(res: Mapping[str, Any], base: Mapping[str, Any]) -> str:
    """One plain sentence: does the main run's |t| > 3 count exceed the baseline's, and by how much."""
    main = rows_of(res)
    rows = rows_of(base)
    label = next(iter(main), None)
    if label is None or label not in rows:
        return f"Baseline {base['label']}: no threshold shared with the main run."
    mc, bc = main[label][1], rows[label][1]
    words, name = label, base["label"]
    if mc is None or bc is None:
        return f"At {words}, the baseline ({name}) cannot be set against the main run: a count was not measured."
    if mc > bc:
        how = f"{mc / bc:.2f} times as many" if bc else "the baseline has none"
        return (
            f"At {words}, the main run exceeds the baseline ({name}): {mc:,} units against {bc:,}, {how} "
            "(a comparison of two counts at one threshold, not a test of their difference)."
        )
    if mc == bc:
        return f"At {words}, the main run does not exceed the baseline ({name}): both count {mc:,} units."
    return (
        f"At {words}, the main run does not exceed the baseline ({name}): {mc:,} units against {bc:,}; an "
        "untrained model of this architecture flags at least as many units, so this count alone shows nothing learned."
    )


def controls_markdown(res: Mapping[str, Any], level: str = "##") -> str:
    """The Controls section (empty string when the record has no baseline and no input group)."""
    baselines = res.get("baselines") or []
    if not baselines and not isinstance(res.get("input_embeddings"), Mapping):
        return ""
    header, rows = controls_table(res)
    from dense_plantain.report.tables import _md_table

    parts = [f"{level} Controls", _md_table(header, rows)]
    parts.append(
        "Ratios are each count over its own null p99 (sign flips, same permutations and seed). Input-embedding rows "
        "count the prompt embeddings' 16-column slices (RMS over real tokens) before the transformer, with their own "
        "null; they are never part of the transformer's counts."
    )
    sentences = [baseline_sentence(res, b) for b in baselines]
    if not baselines:
        sentences.append("No baseline was analysed (`analyze MAIN --baseline RANDOM.safetensors` adds one).")
    parts.append("\n".join(f"- {s}" for s in sentences))
    top = (res.get("input_embeddings") or {}).get("top_units") or []
    if top:
        listed = ", ".join(f"{u['unit']} (t = {cells.number(u['t'])})" for u in top[:5])
        parts.append(f"Top input-embedding units: {listed}.")
    return "\n\n".join(parts)


def print_controls(res: Mapping[str, Any], console: Any = None) -> None:
    """The Controls table on the console (rich); nothing when there is none."""
    if not (res.get("baselines") or isinstance(res.get("input_embeddings"), Mapping)):
        return
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    header, rows = controls_table(res)
    table = Table(title="Controls", title_justify="left")
    for i, col in enumerate(header):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    for b in res.get("baselines") or []:
        console.print(baseline_sentence(res, b), highlight=False, markup=False)
