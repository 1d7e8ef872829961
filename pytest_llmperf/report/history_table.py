"""``llmperf history``: recent results as a table."""

from __future__ import annotations

from rich import box
from rich.markup import escape
from rich.table import Table

from pytest_llmperf.history.recent import ResultRow
from pytest_llmperf.units import format_value


def history_table(rows: list[ResultRow]) -> Table:
    table = Table(box=box.SIMPLE_HEAD)
    numeric = ("world", "batch / load point", "median", "IQR", "CV", "n")
    for column in ("started", "commit", "test", "model", "backend", "dtype", "world", "batch / load point", "metric",
                   "median", "IQR", "CV", "n", "outcome", "budget"):
        table.add_column(column, justify="right" if column in numeric else "left")
    for r in rows:
        iqr = None if r.q1 is None or r.q3 is None else r.q3 - r.q1
        table.add_row(*(escape(cell) for cell in (
            r.started_at.replace("T", " ")[:19], (r.git_commit or "-")[:8], r.test_id, r.model_id, r.backend,
            r.dtype, str(r.world_size), r.point_label, r.metric,
            format_value(r.metric, r.value), format_value(r.metric, iqr),
            "-" if r.cv is None else f"{r.cv:.1%}", "-" if r.n is None else str(r.n), r.outcome,
            r.budget_outcome or "-",
        )))
    return table
