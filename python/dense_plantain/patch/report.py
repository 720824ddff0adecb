"""patch.md (a model-card section), the fraction-against-K figure, and the progress bar."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dense_plantain.progress import Bar
from dense_plantain.report import cells


def _num(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None else f"{float(x):.{digits}f}"


def _ci(ci: list[Any]) -> str:
    if not ci or ci[0] is None:
        return ""
    return f" [{_num(ci[0])}, {_num(ci[1])}]"


def _p(p: Any) -> str:
    if p is None:
        return "n/a"
    p = float(p)
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


def markdown(record: dict[str, Any]) -> str:
    """A card section: the sets, their fractions with intervals, and the random-set comparison."""
    s = record["settings"]
    lines = [
        "## Patching: what the units carry to the output",
        "",
        cells.weights_line({"weights": record.get("provenance", {}).get("weights")}),
        "",
        f"For each of {record['n_pairs']} pairs, with the shared initial noise and one step (guidance 1.0), A and "
        "B were run once and then again with a unit set's columns (at the units' tokens, at the input of the "
        "attention output projections) taken from the other condition of the pair. "
        f"{record['measure']}.",
        "",
        "*fraction*: share of the pair's B - A difference in L that A reaches with the set's values from B; "
        "*reverse*: share B loses with A's values; *ablation*: share by which ||L_B - L_A|| shrinks when both "
        "runs get the A/B mean. Intervals are 95 % t intervals over pairs. top:K sets are cross-fitted: each "
        "pair is measured with units chosen by |t| on the other half of the pairs.",
        "",
        "| set | units | fraction | reverse | ablation | random sets: mean [5-95 %] | p (random >= set) "
        "| paired t vs random | sign-flip p |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for st in record["sets"]:
        r = st["random"]
        if r.get("n_sets"):
            rand = f"{_num(r['mean'])} [{_num(r['p05'])}, {_num(r['p95'])}] (n={r['n_sets']})"
            p_set = f"{round(r['p_set'] * r['n_sets'])}/{r['n_sets']}"
            t = r["paired_t"]
            tt = "n/a" if t.get("t") is None else f"{t['t']:.2f} (p {_p(t['p'])})"
            sf = r["sign_flip"]
            sfp = _p(sf.get("p")) + (f" ({sf['mode']})" if sf.get("mode") else "")
        else:
            rand, p_set, tt, sfp = f"none: {r.get('note')}", "", "", ""
        lines.append(
            f"| `{st['spec']}` | {st['n_units']:,} | {_num(st['mean_fraction'])}{_ci(st['fraction_ci95'])} "
            f"| {_num(st['mean_reverse_fraction'])} | {_num(st['mean_ablation_shrink'])} | {rand} | {p_set} "
            f"| {tt} | {sfp} |"
        )
    f = record["forwards"]
    lines += [
        "",
        f"Settings: layout {s['layout']}, {s['height']}x{s['width']}, seed {s['seed']}, {s['dtype']}, "
        f"fold seed {s['split_seed']}, {s['random_sets']} random sets per set (same count per block, kind and "
        f"token region). {f['pipeline_passes']} pipeline passes, {f['keep_forwards']} keep forwards (kept groups: "
        f"{', '.join(str(v) for v in record['memory']['groups'].values())} per fold) and {f['patched_forwards']} "
        "patched transformer forwards." + _calls_sentence(f),
        "",
        "A fraction near 1 says the set carries (nearly) all of the pair's output difference through those "
        "columns at this step; it does not say how the model uses them in later steps, and fractions of L are "
        "not fractions of the decoded image.",
        "",
    ]
    return "\n".join(lines)


def figure(record: dict[str, Any], path: Path) -> None:
    """Mean fraction against K for the top:K sets and their random sets, with pair-level spread."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tops = sorted((st for st in record["sets"] if st.get("top_k")), key=lambda st: st["top_k"])
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    if not tops:
        ax.text(0.5, 0.5, "no top:K sets in this run", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    else:
        ks = np.array([st["top_k"] for st in tops], dtype=float)
        for j, st in enumerate(tops):
            fr = [p["fraction"] for p in st["pairs"] if p["fraction"] is not None]
            jitter = np.exp(np.linspace(-0.06, 0.06, len(fr))) if len(fr) > 1 else np.ones(len(fr))
            ax.scatter(ks[j] * jitter, fr, s=8, color="tab:blue", alpha=0.35, label="pairs (top:K)" if j == 0 else None)
        ax.plot(ks, [st["mean_fraction"] for st in tops], "o-", color="tab:blue", label="top:K, cross-fitted (mean)")
        have = [st for st in tops if st["random"].get("n_sets")]
        if have:
            kr = np.array([st["top_k"] for st in have], dtype=float)
            ax.plot(kr, [st["random"]["mean"] for st in have], "s--", color="tab:gray", label="matched random sets")
            ax.fill_between(
                kr,
                [st["random"]["p05"] for st in have],
                [st["random"]["p95"] for st in have],
                color="tab:gray",
                alpha=0.25,
                label="random sets, 5-95 %",
            )
        ax.set_xscale("log")
        from matplotlib.ticker import NullFormatter, NullLocator

        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(ks, [f"{int(k):,}" for k in ks])
        ax.set_xlim(ks.min() / 1.5, ks.max() * 1.5)
        ax.set_xlabel("K (units patched)")
        ax.set_ylabel("fraction of the B - A output difference")
        ax.axhline(0, color="black", lw=0.5)
        ax.axhline(1, color="black", lw=0.5, ls=":")
        ax.legend(fontsize=8)
        ax.set_title(f"Patching {record['n_pairs']} pairs: A with B's unit values", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def summary_lines(run) -> list[str]:
    """The console summary of a finished run: each set's mean fraction, the forwards and their time, kept memory."""
    out = []
    for i, st in enumerate(run.sets):
        mean = sum(p.values[str(i)][0] for p in run.pairs) / len(run.pairs)
        out.append(f"  {st.spec:<24} {st.n_units:>7,} units  mean fraction {mean:.3f}")
    f, m = run.forwards, run.memory
    ms = "n/a" if f["ms_per_forward"] is None else f"{f['ms_per_forward']:.1f} ms"
    out.append(
        f"forwards: {f['transformer_forwards']:,} transformer forwards for {f['pairs_run']} pair(s) "
        f"({f['pipeline_passes']:,} pipeline passes, {f['keep_forwards']:,} keep, {f['patched_forwards']:,} patched) "
        f"in {f['loop_seconds']:.1f} s: {ms} per forward"
    )
    groups = ", ".join(f"fold {k}: {v}" for k, v in m["groups"].items())
    over = f"; over the budget alone: {', '.join(m['over_budget'])}" if m["over_budget"] else ""
    out.append(
        f"kept columns: peak {m['kept_peak_mib']:.1f} MiB (budget --max-kept-mib {m['max_kept_mib']:g}); "
        f"kept groups {groups}{over}"
    )
    return out


class Progress(Bar):
    """A rich progress bar over pairs (or nothing)."""

    def __init__(self, enabled: bool, total: int, done: int):
        super().__init__(enabled, total, done, verb="patch", noun="pairs")


def _calls_sentence(f: dict) -> str:
    """For a run finished over several calls (interrupted, then --resume): the counts above are the last call's."""
    every = f.get("all_calls") or {}
    if int(every.get("calls", 1)) <= 1:
        return ""
    total = int(every["transformer_forwards"])
    ms = f"{1e3 * every['loop_seconds'] / total:.1f} ms" if total else "-"
    return (
        f" Those counts are the last call's ({f['pairs_run']} pairs): the run was interrupted and resumed, "
        f"{every['calls']} calls in all, {total:,} transformer forwards for {every['pairs']} pairs in "
        f"{every['loop_seconds']:.1f} s of pair loops ({ms} per forward)."
    )
