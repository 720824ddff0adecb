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
    """A capture run failed (out of memory, non-finite values, ...); finished pairs are kept.

    What was kept is data, not prose: ``reason`` is the failure alone; ``kept_pair_ids`` the ids
    of the pairs on disk in ``partial_path`` (None: the error is not about a run's kept work);
    ``n_pairs_total`` the pairs the run was to capture. ``str(err)`` is the reason followed by one
    sentence about the kept pairs.
    """

    def __init__(
        self,
        reason: str,
        *,
        kept_pair_ids: list[str] | None = None,
        partial_path: object = None,
        n_pairs_total: int | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kept_pair_ids = kept_pair_ids
        self.partial_path = partial_path
        self.n_pairs_total = n_pairs_total

    def __str__(self) -> str:
        if self.kept_pair_ids is None:
            return self.reason
        if not self.kept_pair_ids:
            return f"{self.reason} No finished pair is on disk, so nothing is kept."
        return (
            f"{self.reason} The {len(self.kept_pair_ids)} of {self.n_pairs_total} pairs finished before this are "
            f"kept in {self.partial_path}; run the same command with --resume to continue from there."
        )


class AnalysisError(DensePlantainError):
    """The analysis cannot run on this input (too few pairs, mismatched layouts, ...)."""
