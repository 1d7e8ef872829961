"""``llmperf history``'s query: every result of the newest runs, with what each run and measurement was."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pytest_llmperf.history.ordering import NEWEST_FIRST

if TYPE_CHECKING:
    from pytest_llmperf.history.store import HistoryStore


@dataclass(frozen=True)
class ResultRow:
    """One result for ``llmperf history``: a metric of one configuration in one run."""

    run_id: str
    started_at: str
    run_status: str
    git_commit: str | None
    git_branch: str | None
    test_id: str
    model_id: str
    backend: str
    variant: str
    dtype: str
    world_size: int
    #: None for metrics measured once per load
    batch_size: int | None
    metric: str
    unit: str
    #: the median for trial metrics, the value for single-valued ones
    value: float
    q1: float | None
    q3: float | None
    cv: float | None
    n: int | None
    #: the measurement's outcome: "ok" or "oom"
    outcome: str
    budget_outcome: str | None
    #: a serving load point's coordinates and workload (None for every other result)
    request_rate: float | None = None
    concurrency: int | None = None
    workload: str | None = None

    @property
    def point_label(self) -> str:
        """"8" for a batch size, "request_rate=4 p32o32" for a serving load point, "-" for neither."""
        if self.batch_size is not None:
            return str(self.batch_size)
        if self.workload is None:
            return "-"
        if self.request_rate is not None:
            return f"request_rate={self.request_rate:g} {self.workload}"
        return f"concurrency={self.concurrency} {self.workload}"


_FIELDS = tuple(ResultRow.__dataclass_fields__)
_SELECT = """
SELECT runs.id, runs.started_at, runs.status, runs.git_commit, runs.git_branch,
       res.test_id, res.model_id, res.backend, res.variant, res.dtype, res.world_size,
       res.batch_size, res.metric, res.unit, res.value, res.q1, res.q3, res.cv, res.n,
       m.outcome, res.budget_outcome, res.request_rate, res.concurrency, res.workload
FROM results res
JOIN measurements m ON m.id = res.measurement_id
JOIN runs ON runs.id = res.run_id
"""


def recent_results(store: HistoryStore, *, test: str | None = None, model: str | None = None,
                   backend: str | None = None, metric: str | None = None, last: int = 20) -> list[ResultRow]:
    """The matching results of the newest ``last`` runs that have any, newest run first; ``test`` and ``model``
    match substrings (case-insensitive), ``backend`` and ``metric`` exactly."""
    if last < 0:
        raise ValueError(f"last must be >= 0, not {last}")
    where: list[str] = []
    params: list[Any] = []
    if test is not None:
        where.append("instr(lower(res.test_id), lower(?)) > 0")
        params.append(test)
    if model is not None:
        where.append("instr(lower(res.model_id), lower(?)) > 0")
        params.append(model)
    if backend is not None:
        where.append("res.backend = ?")
        params.append(backend)
    if metric is not None:
        where.append("res.metric = ?")
        params.append(metric)
    matching = " AND ".join(where) or "1"
    sql = (f"{_SELECT}WHERE {matching} AND runs.id IN (SELECT runs.id FROM runs WHERE EXISTS "
           f"(SELECT 1 FROM results res WHERE res.run_id = runs.id AND {matching}) {NEWEST_FIRST} LIMIT ?)\n"
           f"{NEWEST_FIRST}, res.id DESC")
    rows = store.db.execute(sql, [*params, *params, last]).fetchall()
    return [ResultRow(**dict(zip(_FIELDS, values, strict=True))) for values in rows]
