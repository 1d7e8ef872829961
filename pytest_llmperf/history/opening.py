"""Opening a history file: the one check that may refuse it, and the connections behind a ``HistoryStore``.

A file is checked from its bytes before SQLite opens it (``disk``), so that a file we refuse is left exactly
as it was: its bytes, its mtime, and no ``-wal`` or ``-shm`` beside it. A writer then connects to the file
itself in WAL mode; a reader connects to a private copy, so that reading never changes the file or leaves
anything beside it, and an older file is upgraded in the copy only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import time
from pathlib import Path

from pytest_llmperf.history import errors
from pytest_llmperf.history.disk import is_sqlite, read_header, schema_version, shm_path, wal_path
from pytest_llmperf.history.errors import HistoryError, newer_schema_error, unreadable_error, unwritable_error
from pytest_llmperf.history.schema import current_version

#: a reader copies a file again when it changed while being copied, this many times at most
_COPY_ATTEMPTS = 5


def check_file(path: Path, *, flag: str, writable: bool) -> int:
    """Refuse a file that is not SQLite or has a newer schema, reading bytes only; its schema version
    (0 for an empty file). ``writable``: the file will be written, so a read-only one is refused too."""
    problem = unwritable_error if writable else unreadable_error
    try:
        if path.is_dir():
            raise problem(str(path), "it is a directory", flag)
        header = read_header(path)
    except OSError as exc:
        raise problem(str(path), exc.strerror or str(exc), flag) from exc
    if writable and not os.access(path, os.W_OK):
        raise unwritable_error(str(path), "the file is read-only", flag)
    if not header:
        return 0  # an empty file is an empty database
    if not is_sqlite(header):
        raise unreadable_error(str(path), "no SQLite header", flag)
    found = schema_version(path, header)
    if found > current_version():
        raise newer_schema_error(str(path), found, current_version(), flag)
    return found


def _enable_wal(conn: sqlite3.Connection) -> None:
    """Switch a file to WAL, retrying while others hold it: changing the journal mode of a file
    that another process is opening or switching fails with SQLITE_BUSY at once, without waiting
    on the busy timeout."""
    deadline = time.monotonic() + errors.BUSY_TIMEOUT_S
    delay = 0.005
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL").fetchone()
            return
        except sqlite3.OperationalError as exc:
            busy = (getattr(exc, "sqlite_errorname", "") or "").startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))
            if not busy or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def connect_for_writing(path: Path, *, flag: str) -> sqlite3.Connection:
    """A connection to the file itself (created with its folders if missing), in WAL mode, foreign keys on."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise unwritable_error(str(path), f"cannot create directory {path.parent}: {exc.strerror or exc}",
                               flag) from exc
    if path.exists():
        check_file(path, flag=flag, writable=True)
    conn: sqlite3.Connection | None = None
    try:
        # isolation_level=None: no implicit BEGINs, every transaction is one we open ourselves
        conn = sqlite3.connect(str(path), timeout=errors.BUSY_TIMEOUT_S, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {int(errors.BUSY_TIMEOUT_S * 1000)}")
        # read before anything writes: a corrupt file fails here, untouched
        found = conn.execute("PRAGMA user_version").fetchone()[0]
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        if found > current_version():  # it changed since the check: another process upgraded it
            raise newer_schema_error(str(path), found, current_version(), flag)
        _enable_wal(conn)
        conn.execute("PRAGMA foreign_keys = ON")
        return conn
    except sqlite3.Error as exc:
        if conn is not None:
            conn.close()
        raise errors.sqlite_error(str(path), exc, flag) or HistoryError(
            f"{path}: cannot open the history database ({exc}); move it aside or use {flag} PATH"
        ) from exc
    except BaseException:
        if conn is not None:
            conn.close()
        raise


def _stamp(path: Path) -> tuple[tuple[int, int, int] | None, ...]:
    def one(p: Path) -> tuple[int, int, int] | None:
        try:
            st = p.stat()
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    return one(path), one(wal_path(path))


def copy_for_reading(path: Path, workdir: Path, *, flag: str) -> Path:
    """A private copy of the file and its write-ahead log (which may hold committed rows); SQLite applies the
    log to the copy when it opens it. Copied again if a writer changed either while they were copied."""
    copy = workdir / "history.db"
    for _ in range(_COPY_ATTEMPTS):
        before = _stamp(path)
        try:
            shutil.copyfile(path, copy)
            with contextlib.suppress(FileNotFoundError):  # a writer may checkpoint and remove it meanwhile
                shutil.copyfile(wal_path(path), wal_path(copy))
        except OSError as exc:
            raise unreadable_error(str(path), exc.strerror or str(exc), flag) from exc
        if _stamp(path) == before:
            return copy
        for leftover in (wal_path(copy), shm_path(copy)):
            leftover.unlink(missing_ok=True)
    raise HistoryError(f"{path} kept changing while it was being read ({_COPY_ATTEMPTS} attempts); try again when "
                       f"no run is writing it, or use {flag} PATH to read a copy")


def connect_for_reading(path: Path, workdir: Path, *, flag: str) -> sqlite3.Connection:
    """A connection to a private copy of an existing history file, checked and ready to be upgraded."""
    if not path.exists():
        raise errors.missing_error(str(path), flag)
    check_file(path, flag=flag, writable=False)
    copy = copy_for_reading(path, workdir, flag=flag)
    conn: sqlite3.Connection | None = None
    try:
        conn = sqlite3.connect(str(copy), isolation_level=None)
        found = conn.execute("PRAGMA user_version").fetchone()[0]
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        if found > current_version():
            raise newer_schema_error(str(path), found, current_version(), flag)
        conn.execute("PRAGMA foreign_keys = ON")
        return conn
    except sqlite3.Error as exc:
        if conn is not None:
            conn.close()
        raise unreadable_error(str(path), str(exc), flag) from exc
    except BaseException:
        if conn is not None:
            conn.close()
        raise
