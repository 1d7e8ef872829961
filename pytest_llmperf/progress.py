"""Progress of long steps (building a synthetic model, loading, trials) on an interactive terminal.

Shown only where someone watches: a terminal, not CI, not ``-q``, not a pytest-xdist worker; the
plugin decides and passes ``NullProgress`` otherwise. Lines are transient: nothing stays in the log.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Protocol

from tqdm import tqdm


class Progress(Protocol):
    def update(self, description: str, completed: int | None = None, total: int | None = None) -> None: ...

    def close(self) -> None: ...


class NullProgress:
    def update(self, description: str, completed: int | None = None, total: int | None = None) -> None:
        pass

    def close(self) -> None:
        pass


class _UncapturedStderr:
    """A stream that writes to the real stderr with pytest's capturing suspended for each write."""

    def __init__(self, suspend_capture: Callable[[], AbstractContextManager[None]]):
        self._suspend = suspend_capture

    def write(self, text: str) -> None:
        with self._suspend():
            sys.stderr.write(text)
            sys.stderr.flush()

    def flush(self) -> None:
        pass


class TerminalProgress:
    def __init__(self, suspend_capture: Callable[[], AbstractContextManager[None]]):
        self._stream = _UncapturedStderr(suspend_capture)
        self._bar: tqdm | None = None
        self._description = ""

    def update(self, description: str, completed: int | None = None, total: int | None = None) -> None:
        if self._bar is None or description != self._description or total != self._bar.total:
            self.close()
            self._description = description
            self._bar = tqdm(
                total=total, desc=description, file=self._stream, leave=False,
                ncols=min(shutil.get_terminal_size().columns, 100), mininterval=0.2,
                miniters=1,  # fixed, so tqdm's monitor thread never writes from another thread
            )
        if completed is not None:
            self._bar.n = completed
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
