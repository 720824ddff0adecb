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


# --- units (layouts) ---------------------------------------------------------------------


# --- capture, make-tiny-model, demo ------------------------------------------------------


# --- analyze, report, compare ------------------------------------------------------------
