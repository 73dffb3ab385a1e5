"""Ctrl-C (SIGINT) during a training run: stop at once, but never in the middle of a write.

While :meth:`Interrupts.installed` is active, SIGINT raises ``KeyboardInterrupt`` as usual,
except inside a :meth:`Interrupts.critical` block (the epoch's metrics and checkpoint writes):
there it is remembered and raised when the block ends, so the checkpoint being written is
completed and renamed into place first. ``manual-bp train`` turns the ``KeyboardInterrupt``
into a one-line message and exit code 130 (128 + SIGINT).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["EXIT_INTERRUPTED", "Interrupts"]

EXIT_INTERRUPTED = 130
"""The exit code of an interrupted run: 128 + SIGINT, as shells report it."""


class Interrupts:
    """SIGINT handling that defers the interrupt while a critical block runs."""

    def __init__(self) -> None:
        self._depth = 0
        self._pending = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        del signum, frame
        if self._depth:
            self._pending = True
        else:
            raise KeyboardInterrupt

    @contextmanager
    def installed(self) -> Iterator[None]:
        """Route SIGINT through this object (only possible on the main thread)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.signal(signal.SIGINT, self._handle)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    @contextmanager
    def critical(self) -> Iterator[None]:
        """A block SIGINT does not interrupt; a SIGINT received inside it is raised after it."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        if not self._depth and self._pending:
            self._pending = False
            raise KeyboardInterrupt
