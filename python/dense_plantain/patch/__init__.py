"""``dense-plantain patch``: move unit values between the conditions of a pair, measure the output.

Modules: ``spec`` (unit-set specs, cross-fitting, matched random sets), ``hooks`` (keep and write
a unit set's columns), ``run`` (the run loop, resumable), ``result`` (statistics, patch.json, the
output folder), ``report`` (patch.md, the figure, the progress bar).
"""

from dense_plantain.patch.result import patch_record, write_patch_folder
from dense_plantain.patch.run import PatchRun, PatchSettings, run_patch
from dense_plantain.patch.spec import PatchError, UnitSet, parse_specs

__all__ = [
    "PatchError",
    "PatchRun",
    "PatchSettings",
    "UnitSet",
    "parse_specs",
    "patch_record",
    "run_patch",
    "write_patch_folder",
]
