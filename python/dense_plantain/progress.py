"""One rich progress bar for the long commands (capture, patch), or nothing when it is off."""

from __future__ import annotations

from typing import Any, Self


class Bar:
    """``[bold]VERB[/] description  bar  done/total NOUN  elapsed  remaining`` while entered."""

    def __init__(self, enabled: bool, total: int, done: int, *, verb: str, noun: str) -> None:
        self.enabled, self.total, self.done = enabled, total, done
        self.verb, self.noun = verb, noun
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> Self:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn(f"[bold]{self.verb}[/] {{task.description}}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(self.noun),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
            )
            self._bar.__enter__()
            self._task = self._bar.add_task("", total=self.total, completed=self.done)
        return self

    def describe(self, text: str) -> None:
        if self._bar is not None:
            from rich.markup import escape

            self._bar.update(self._task, description=escape(text))

    def advance(self, n: int) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
