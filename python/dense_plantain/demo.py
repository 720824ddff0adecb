"""``dense-plantain demo``: the whole flow on a tiny random pipeline, on the CPU, offline (it orchestrates
capture, analysis and report, so it lives above all three).

prompts (the bundled dense-plantain pairs) -> capture (tiny Klein pipeline, 64x64, CPU) ->
capture file -> analysis -> results folder. The pipeline's weights are random, so the demo shows
that the machinery works end to end; its numbers say nothing about FLUX.2.

``seeds`` (``demo --seeds 0-2``): every prompt under each noise seed, through the capture's own
multi-seed path (``capture.seeds.run_seeds``, as ``capture --seeds``), for the capture and its
random-weights baseline alike; the results then show each seed's counts and the seed-to-seed
consistency. ``bootstrap`` (``demo --bootstrap N``, 0 for none): the pair-bootstrap draws behind the
intervals shown next to the counts.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from rich.markup import escape

__all__ = ["run_demo"]

RANDOM_WEIGHTS_NOTE = (
    "The tiny model's weights are random: these numbers show the machinery working end to end, "
    "not a finding about FLUX.2 [klein]."
)

DEMO_PROBE = "dense-plantain"
DEMO_SIZE = 64


def run_demo(
    out: str | Path = "dense-plantain-demo",
    *,
    batch_size: int = 10,
    console=None,
    seeds: Sequence[int] = (0,),
    bootstrap: int | None = None,
) -> Path:
    """Run the demo into folder ``out``; return the capture file's path. ``seeds``: the noise
    seeds of the capture (several: ``capture --seeds``); ``bootstrap``: pair-bootstrap draws
    (None: the analysis's default, 0: none)."""
    from rich.console import Console

    from dense_plantain.capture.job import CaptureJob
    from dense_plantain.capture.run import CaptureSettings
    from dense_plantain.capture.seeds import run_seeds
    from dense_plantain.capture.tiny import cached_tiny_model
    from dense_plantain.prompts import bundled_path

    seeds = tuple(int(v) for v in seeds)
    if not seeds:
        raise ValueError("the demo needs at least one seed")

    console = console or Console()
    t0 = time.monotonic()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    console.print(f"[bold]dense-plantain demo[/]: {escape(RANDOM_WEIGHTS_NOTE)}")
    with console.status(escape("tiny random FLUX.2 [klein] pipeline (built once, then cached)")):
        folder = cached_tiny_model(0)
    console.print(f"model    {escape(str(folder))} (tiny, random weights)")
    probe_path = bundled_path(DEMO_PROBE)
    console.print(f"prompts  {escape(str(probe_path))}")
    capture_path = out / "capture.safetensors"
    settings = CaptureSettings(height=DEMO_SIZE, width=DEMO_SIZE)
    job = CaptureJob(
        prompts=probe_path,
        out=capture_path,
        model=str(folder),
        settings=settings,
        device="cpu",
        dtype="float32",
        batch_size=batch_size,
        force=True,
    )
    result = run_seeds(job, seeds)  # one seed: exactly the single-seed capture
    under = f" under {len(seeds)} noise seeds ({', '.join(map(str, seeds))})" if len(seeds) > 1 else ""
    console.print(
        f"capture  {escape(str(result.path))}: {result.n_pairs} pairs x {result.n_units} units{under}"
        f" in {result.seconds:.1f} s"
    )
    # The random-weights baseline: the same tiny pipeline with its transformer re-initialised
    # (capture --weights random), the same prompts, settings, seeds and text encoder.
    baseline_path = out / "baseline-random.safetensors"
    base = run_seeds(job.replace(out=baseline_path, weights="random", weights_seed=0), seeds)
    console.print(
        f"baseline {escape(str(base.path))}: --weights random (transformer re-initialised) in {base.seconds:.1f} s"
    )
    _analyze(capture_path, out / "results", console, baseline_path, bootstrap=bootstrap)
    try:
        _patch(folder, probe_path, out, console)
    except ImportError as err:  # the compiled statistics extension is not built in this checkout
        console.print(f"[yellow]patch unavailable here ({escape(str(err))})[/]")
    console.print(f"\ndone in {time.monotonic() - t0:.0f} s. {escape(RANDOM_WEIGHTS_NOTE)}")
    console.print(
        "Next, on a GPU: dense-plantain capture --prompts dense-plantain --out dense.safetensors "
        "&& dense-plantain analyze dense.safetensors --out results/"
    )
    return capture_path


def _analyze(
    capture_path: Path, results: Path, console, baseline_path: Path | None = None, *, bootstrap: int | None = None
) -> None:
    """Analyse with the project's analysis and report when they are importable; else summarise.
    With ``baseline_path``, the baseline is analysed the same way and the Controls table printed;
    a multi-seed capture's per-seed counts and consistency follow the results table."""
    from dense_plantain.store import read_capture

    cap = read_capture(capture_path)
    baselines = [read_capture(baseline_path)] if baseline_path is not None else []
    try:
        from dense_plantain import analysis, report
        from dense_plantain.report.cells import MD_PIPE
        from dense_plantain.report.robustness import seeds_section
        from dense_plantain.report.tables import print_results

        draws = analysis.DEFAULT_BOOTSTRAP if bootstrap is None else int(bootstrap)
        with console.status("analysing (sign-flip null)"):
            result = analysis.analyze(cap, baselines=baselines, bootstrap=draws)
        paths = report.write_results(result, results, force=True)
    except ImportError as err:  # the compiled statistics extension is not built in this checkout
        console.print(f"[yellow]analysis unavailable here ({escape(str(err))}); capture summary instead:[/]")
        _print_summary(cap, console)
        return
    res = result.to_json()
    print_results(res)
    seeds_text = seeds_section(res)
    if seeds_text:
        console.print(seeds_text.replace(MD_PIPE, "|"), markup=False, highlight=False)
    console.print(f"results  {escape(str(paths[0].parent))}: " + ", ".join(p.name for p in paths))


def _print_summary(cap, console) -> None:
    import numpy as np
    from rich.table import Table

    diff = cap.b - cap.a
    table = Table(title=f"{cap.n_pairs} pairs x {cap.n_units} units", header_style="bold", title_justify="left")
    for column in ("block", "units", "mean A", "mean B", "mean |B - A|"):
        table.add_column(column, justify="left" if column == "block" else "right")
    for block in cap.layout.blocks:
        sl = block.units
        table.add_row(
            block.name,
            str(block.n_units),
            f"{cap.a[:, sl].mean():.4f}",
            f"{cap.b[:, sl].mean():.4f}",
            f"{np.abs(diff[:, sl]).mean():.4f}",
        )
    console.print(table)


#: The demo's patch run: the first pairs of the bundled set at a small size, top:K sets chosen
#: cross-fitted on their own capture, each against matched random sets (a format example).
PATCH_PAIRS = 4
PATCH_SIZE = 16
PATCH_UNITS = ("top:2", "top:8", "top:32")
PATCH_RANDOM_SETS = 2


def _patch(model_folder: Path, probe_path: Path, out: Path, console) -> Path:
    """A small ``patch`` run into ``out/patch`` (patch.json, patch.md, fraction_by_k.png): the first
    ``PATCH_PAIRS`` pairs (written to ``out/patch-prompts.toml``), captured at ``PATCH_SIZE`` for the
    top:K choice, then patched at the same size. Returns the figure's path."""
    import json
    import tomllib

    from dense_plantain.capture.run import CaptureSettings, run_capture
    from dense_plantain.patch import PatchSettings, run_patch, write_patch_folder
    from dense_plantain.patch.report import summary_lines
    from dense_plantain.patch.run import partial_path

    t0 = time.monotonic()
    source = tomllib.loads(probe_path.read_text(encoding="utf-8"))
    meta = source.get("probe", {})
    lines = ["[probe]", f"name = {json.dumps(str(meta.get('name', 'demo')) + '-first-' + str(PATCH_PAIRS))}"]
    lines += [f"{k} = {json.dumps(meta[k])}" for k in ("label_a", "label_b") if k in meta]
    for pair in source["pairs"][:PATCH_PAIRS]:
        lines += ["", "[[pairs]]"] + [f"{k} = {json.dumps(pair[k])}" for k in ("id", "a", "b")]
    prompts = out / "patch-prompts.toml"
    prompts.write_text("\n".join(lines) + "\n", encoding="utf-8")
    cap = run_capture(
        str(model_folder),
        prompts,
        out / "patch-capture.safetensors",
        settings=CaptureSettings(height=PATCH_SIZE, width=PATCH_SIZE),
        batch_size=PATCH_PAIRS,
        show_progress=False,
        device="cpu",
        dtype="float32",
        force=True,
    )
    settings = PatchSettings(
        height=PATCH_SIZE, width=PATCH_SIZE, batch_size=PATCH_PAIRS, random_sets=PATCH_RANDOM_SETS, units=PATCH_UNITS
    )
    with console.status(
        f"patch: {PATCH_PAIRS} pairs, {', '.join(PATCH_UNITS)} and {PATCH_RANDOM_SETS} random sets each"
    ):
        run = run_patch(
            str(model_folder),
            prompts,
            out / "patch",
            settings=settings,
            capture=cap.path,
            show_progress=False,
            device="cpu",
            dtype="float32",
            force=True,
        )
    paths = write_patch_folder(run, run.layout, out / "patch")
    partial_path(out / "patch").unlink(missing_ok=True)
    for line in summary_lines(run):
        console.print(escape(line))
    console.print(
        f"patch    {escape(str(out / 'patch'))}: "
        + ", ".join(p.name for p in paths)
        + f" in {time.monotonic() - t0:.1f} s (random weights: a format example)"
    )
    return out / "patch" / "fraction_by_k.png"
