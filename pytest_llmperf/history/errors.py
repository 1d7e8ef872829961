"""What goes wrong with a history file, said as one message that names the file, the problem and the fix.

The fix names the option that chooses the file, which differs by caller: ``--llmperf-db`` under pytest,
``--db`` under the ``llmperf`` command. Every open function takes it as ``flag``.
"""

from __future__ import annotations

import sqlite3

#: the option that names the history file under pytest
DEFAULT_FLAG = "--llmperf-db"
#: how long a writer waits for another process's write lock before giving up
BUSY_TIMEOUT_S = 60.0


class HistoryError(Exception):
    """The history database cannot be used; the message names the file, the problem and the fix."""


def newer_schema_error(path: str, found: int, supported: int, flag: str = DEFAULT_FLAG) -> HistoryError:
    return HistoryError(
        f"{path}: the history database has schema version {found}, but this pytest-llmperf only "
        f"understands versions up to {supported}; upgrade pytest-llmperf, or use {flag} to "
        f"point at another file"
    )


def unreadable_error(path: str, problem: str, flag: str = DEFAULT_FLAG) -> HistoryError:
    return HistoryError(
        f"{path} is not a readable SQLite database ({problem}); move it aside or use {flag} PATH "
        f"to keep the history in another file"
    )


def unwritable_error(path: str, problem: str, flag: str = DEFAULT_FLAG) -> HistoryError:
    return HistoryError(
        f"cannot write the history database {path} ({problem}); use {flag} PATH to keep the history "
        f"in a writable location"
    )


def missing_error(path: str, flag: str = DEFAULT_FLAG) -> HistoryError:
    return HistoryError(f"no history database at {path}; run `pytest --llmperf` first, or use {flag} PATH")


def sqlite_error(path: str, exc: sqlite3.Error, flag: str = DEFAULT_FLAG) -> HistoryError | None:
    """The user-facing error for what the environment did wrong; None for programming errors."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
        return unreadable_error(path, str(exc), flag)
    if name.startswith(("SQLITE_CANTOPEN", "SQLITE_READONLY", "SQLITE_PERM", "SQLITE_IOERR", "SQLITE_FULL")):
        return unwritable_error(path, str(exc), flag)
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return HistoryError(
            f"{path}: the history database stayed locked by another process for more than "
            f"{BUSY_TIMEOUT_S:.0f} s ({exc}); wait for it to finish, or use {flag} PATH to use another file"
        )
    return None
