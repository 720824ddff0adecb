"""Errors that speak to the user: what was wrong, where, and what to do.

The CLI prints these as one paragraph with no traceback and exits non-zero. Anything that is
not a `DensePlantainError` is a bug in dense-plantain and keeps its traceback.
"""


class DensePlantainError(Exception):
    """Base class for errors caused by the user's input or environment."""


class PromptFileError(DensePlantainError):
    """A prompt file is missing, not valid TOML, or breaks the format (names file, line, pair)."""


class CaptureFileError(DensePlantainError):
    """A capture file is missing, truncated, corrupt, or inconsistent (names the file and fix)."""


class ModelLoadError(DensePlantainError):
    """A model id or folder could not be loaded as a FLUX.2 [klein] pipeline."""


class CaptureError(DensePlantainError):
    """A capture run failed (out of memory, non-finite values, ...); finished pairs are kept."""


class AnalysisError(DensePlantainError):
    """The analysis cannot run on this input (too few pairs, mismatched layouts, ...)."""
