"""Rendering results: tables (markdown, console), figures, results.json/units.csv, the model card.

``write_results(result, DIR)`` writes a results folder whole or not at all (see ``folder`` for the
overwrite policy); ``write_card(record, README)`` writes the model card. Modules, one idea each:
``cells`` (how numbers are written), ``tables``, ``figures``, ``records`` (JSON and CSV),
``folder`` (atomic output folder), ``card`` (the README).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dense_plantain.report import records, tables
from dense_plantain.report.folder import OutputFolderError, check_out_dir, current_umask, disk_error, write_folder
from dense_plantain.report.records import ResultsFileError, load_results

if TYPE_CHECKING:
    from dense_plantain.analysis import AnalysisResult
    from dense_plantain.report.worker import FigureWorker

__all__ = [
    "OutputFolderError",
    "ResultsFileError",
    "check_card_path",
    "check_out_dir",
    "load_results",
    "write_card",
    "write_results",
]


def write_results(
    result: AnalysisResult, out: str | Path, *, force: bool = False, worker: FigureWorker | None = None
) -> list[Path]:
    """Write results.json, units.csv, results.md and the figures into ``out``; return their paths.

    ``worker``: a started `report.worker.FigureWorker`; the figures are then drawn in its process
    while this one writes the text files, and this returns once both are done (a failure of
    either leaves nothing written). Without it they are drawn here, after the text files."""
    from dense_plantain.report import figures  # no matplotlib: that is loaded only by drawing

    record = result.to_json()

    def write_text(folder: Path) -> None:
        (folder / records.RESULTS_JSON).write_text(records.results_json_text(record), encoding="utf-8")
        (folder / records.UNITS_CSV).write_text(records.units_csv_text(result), encoding="utf-8")
        (folder / records.RESULTS_MD).write_text(tables.results_markdown(record), encoding="utf-8")

    def fill(folder: Path) -> None:
        figures.write_figures(result, folder, record, worker=worker, meanwhile=lambda: write_text(folder))

    return write_folder(Path(out), fill, force=force)


def check_card_path(out: str | Path, force: bool = False) -> None:
    """Refuse to replace a README that ``report`` did not write, unless ``force``."""
    from dense_plantain.report import card  # yaml and the capture defaults, only for the card

    out = Path(out)
    if out.is_dir():
        raise OutputFolderError(f"{out} is a folder; --out takes the README file to write, e.g. {out / 'README.md'}")
    if out.exists() and not force:
        try:
            ours = card.MARKER in out.read_text(encoding="utf-8", errors="replace")
        except OSError:
            ours = False
        if not ours:
            raise OutputFolderError(
                f"{out} exists and was not written by `dense-plantain report`; nothing was "
                "written. Choose another --out, or pass --force to replace it"
            )


def write_card(
    record: Mapping[str, Any],
    out: str | Path,
    *,
    force: bool = False,
    license: str = "apache-2.0",
    base_model: str | None = None,
    results_dir: str | Path | None = None,
) -> Path:
    """Write the model card for a results record to ``out`` atomically.

    ``results_dir``: the results folder the record came from; its figures are embedded by a link
    relative to the card (None: the card says it has no figures)."""
    from dense_plantain.report import card
    from dense_plantain.store import atomic_write_bytes

    out = Path(out)
    check_card_path(out, force)
    figures_dir = None
    if results_dir is not None:
        figures_dir = Path(os.path.relpath(Path(results_dir).resolve(), out.resolve().parent)).as_posix()
    try:
        text = card.model_card(record, license=license, base=base_model, figures_dir=figures_dir)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
        where = f"{results_dir}/results.json" if results_dir is not None else "the results record"
        raise ResultsFileError(
            f"{where} cannot be rendered: a field has an unexpected value or type ({err.__class__.__name__}: "
            f"{err}); the file was probably edited by hand. Nothing was written. Run `dense-plantain analyze` "
            "(or `compare`) again to rewrite it"
        ) from None
    try:
        atomic_write_bytes(out, text.encode("utf-8"))
        os.chmod(out, 0o666 & ~current_umask())  # the temporary file was private; a README is for sharing
    except OSError as err:
        raise disk_error(out, err) from None
    return out
