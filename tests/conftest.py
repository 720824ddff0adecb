"""Fixtures shared by more than one test file."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest


@pytest.fixture
def python_sigint() -> Iterator[None]:
    """SIGINT handled by Python, as under a terminal, for the tests of Ctrl-C.

    A suite started as a background job of a non-interactive shell (``cmd &`` in a script) inherits
    SIGINT *ignored* (POSIX), in-process and in every child: a raised or sent SIGINT then does
    nothing. A caught signal is reset to its default by exec, so a child started while this fixture
    holds gets Python's usual KeyboardInterrupt handler again.
    """
    saved = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, saved)
