"""The `dense-plantain` command line.

Each command is a thin shell: it parses options, calls one module, and turns the project's own
errors (`DensePlantainError`) into a one-paragraph message and a non-zero exit code, never a
traceback. The work itself lives in prompts, capture, store, stats and report.
"""

from __future__ import annotations

import click

from dense_plantain import __version__
from dense_plantain.errors import DensePlantainError


class _Group(click.Group):
    """A click group that reports the project's errors without a traceback."""

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
    and setting name what the pair holds constant. Format and examples:
    docs/prompt-format.md.
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
        table.add_row(escape(name), pairs, escape(probe.label_a if probe else ""), escape(probe.label_b if probe else ""), escape(str(path)))
    Console().print(table)


@prompts_group.command("check")
@click.argument("file", metavar="FILE")
@click.option(
    "--tokenizer",
    metavar="MODEL_OR_DIR",
    default=None,
    help="Count tokens with this tokenizer: a pipeline folder (its tokenizer/ subfolder is used), a "
    "tokenizer folder, a tokenizer.json, or a hub id already in the local cache (nothing is "
    "downloaded). Without it the counts are a documented approximation, and the report says so.",
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
      invalid TOML, missing id/a/b, duplicate ids, empty prompts, a identical
      to b, fewer than 3 pairs, unknown keys (usually typos).
    \b
    Warnings (exit 0 unless --strict):
      - length: tokens of A and B per pair; flagged when a paired t-test or an
        exact sign test on B - A gives p < 0.05. Single-block values pool text
        tokens, so a systematically longer condition is a lexical confound.
      - held constant: each field named in [probe] held_constant (default:
        every extra pair field but note) must appear verbatim in both prompts.
    \b
    Counts are of the prompt text alone, unpadded, without special tokens.
    The pipeline's chat template adds the same tokens to A and B, so it
    cancels in every difference.
    \b
    Exit status: 0 clean or warnings only, 1 errors (or warnings with
    --strict), 2 the file or tokenizer could not be read at all.
    """
    import json
    from pathlib import Path

    from dense_plantain.prompt_check import check_probe, load_token_counter, render_report
    from dense_plantain.prompts import bundled_prompts

    path = Path(file)
    if not path.exists() and file in bundled_prompts():
        path = bundled_prompts()[file]
    counter = load_token_counter(tokenizer)
    report = check_probe(path, counter)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        render_report(report)
    if report.errors or (strict and report.warnings):
        ctx.exit(1)



# --- units (layouts) ---------------------------------------------------------------------


# --- capture, make-tiny-model, demo ------------------------------------------------------


# --- analyze, report, compare ------------------------------------------------------------
