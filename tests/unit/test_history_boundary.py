"""The history package owns the database: no module outside it runs SQL or opens SQLite."""

from __future__ import annotations

import re
from pathlib import Path

import pytest_llmperf

PACKAGE = Path(pytest_llmperf.__file__).parent
#: SQL statements, and the modules and calls that reach SQLite
DATABASE = re.compile(r"\b(SELECT|INSERT\s+INTO|DELETE\s+FROM|CREATE\s+(TABLE|INDEX)|ALTER\s+TABLE|PRAGMA)\b"
                      r"|\bUPDATE\s+\w+\s+SET\b|\bimport\s+sqlite3\b|\bsqlite_utils\b|\.execute(many|script)?\(")


def test_no_module_outside_the_history_package_touches_the_database() -> None:
    offenders = [f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}"
                 for path in sorted(PACKAGE.rglob("*.py")) if "history" not in path.relative_to(PACKAGE).parts[:1]
                 for number, line in enumerate(path.read_text().splitlines(), 1) if DATABASE.search(line)]
    assert offenders == []


def test_the_check_sees_sql_where_it_is() -> None:
    history = [path for path in (PACKAGE / "history").rglob("*.py") if DATABASE.search(path.read_text())]
    assert len(history) > 5  # the pattern matches the SQL the history package does hold
