"""How queries order runs and list values: written once.

"The newest run" is ordered here and only here (``NEWEST_FIRST``): by start time, and among runs that started
in the same second, by the order they were recorded.
"""

from __future__ import annotations

from collections.abc import Sequence

#: the order of runs, newest first; the runs table must be named ``runs`` (not aliased) in the query
NEWEST_FIRST = "ORDER BY runs.started_at DESC, runs.rowid DESC"
OLDEST_FIRST = "ORDER BY runs.started_at, runs.rowid"


def marks(values: Sequence[object]) -> str:
    """The ``?`` placeholders of an ``IN (...)`` list of these values."""
    return ", ".join("?" for _ in values)
