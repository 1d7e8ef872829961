"""Typed queries about series: their values run by run (for the gate, for the dashboard), and what ran out of
memory.

Per-trial metrics come back to the gate as every trial's value (from the ``trials`` table, through
``Trial.value``, the one definition of each); the others as the one value their run recorded.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from pytest_llmperf.history.ordering import OLDEST_FIRST, marks
from pytest_llmperf.history.series_columns import SERIES_COLUMNS, series_key_from, series_select
from pytest_llmperf.history.store import HistoryStore
from pytest_llmperf.measure.metrics import TRIAL_METRICS
from pytest_llmperf.results import Trial
from pytest_llmperf.series import SeriesKey

#: under SQLite's limit on bound parameters
_CHUNK = 900


@dataclass(frozen=True)
class SeriesSamples:
    """One series' values in some runs."""

    subject: SeriesKey
    #: run id -> that run's values, in the order the runs were asked for
    per_run: dict[str, tuple[float, ...]] = field(default_factory=dict)


def _trials(store: HistoryStore, measurement_ids: Sequence[int]) -> dict[int, list[Trial]]:
    trials: dict[int, list[Trial]] = {}
    ids = sorted(set(measurement_ids))
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start:start + _CHUNK]
        for mid, ttft_s, e2e_s, batch, new, streams, p50, p90, p99 in store.db.execute(
            f"SELECT measurement_id, ttft_s, e2e_s, batch_size, new_tokens, streams, itl_p50_s, itl_p90_s, itl_p99_s "
            f"FROM trials WHERE measurement_id IN ({marks(chunk)}) ORDER BY measurement_id, idx", chunk,
        ):
            trials.setdefault(mid, []).append(Trial(ttft_s=ttft_s, e2e_s=e2e_s, batch_size=batch, new_tokens=new,
                                                    streams=streams, itl_p50_s=p50, itl_p90_s=p90, itl_p99_s=p99))
    return trials


def series_samples(store: HistoryStore, run_ids: Sequence[str], metrics: Iterable[str]) -> dict[str, SeriesSamples]:
    """Every series these runs measured for these metrics, keyed by series key (``SeriesKey.digest``)."""
    metrics = list(metrics)
    if not run_ids or not metrics:
        return {}
    rows = store.db.execute(
        f"SELECT {series_select('res')}, res.series_key, res.run_id, res.value, res.measurement_id FROM results res "
        f"WHERE res.run_id IN ({marks(run_ids)}) AND res.metric IN ({marks(metrics)})",
        [*run_ids, *metrics],
    ).fetchall()
    n = len(SERIES_COLUMNS)
    metric_at = SERIES_COLUMNS.index("metric")
    trials = _trials(store, [r[n + 3] for r in rows if r[metric_at] in TRIAL_METRICS])
    order = {run_id: i for i, run_id in enumerate(run_ids)}
    out: dict[str, SeriesSamples] = {}
    for row in sorted(rows, key=lambda r: order[r[n + 1]]):
        key, run_id, value, mid = row[n:]
        if key not in out:
            out[key] = SeriesSamples(subject=series_key_from(row))
        metric = row[metric_at]
        if metric in TRIAL_METRICS and trials.get(mid):
            values = tuple(v for v in (t.value(metric) for t in trials[mid]) if v is not None)
        else:
            values = (float(value),)
        out[key].per_run[run_id] = values
    return out


def other_environments(store: HistoryStore, subject: SeriesKey, run_ids: Sequence[str]) -> list[str]:
    """The fingerprints of other environments in which these runs measured the same series."""
    if not run_ids:
        return []
    rows = store.db.execute(
        f"SELECT DISTINCT {series_select('res')} FROM results res WHERE res.run_id IN ({marks(run_ids)}) "
        "AND res.test_id = ? AND res.metric = ? AND res.env_fingerprint != ?",
        [*run_ids, subject.test_id, subject.metric, subject.env_fingerprint]).fetchall()
    found = [series_key_from(row) for row in rows]
    return list(dict.fromkeys(k.env_fingerprint for k in found
                              if replace(k, env_fingerprint=subject.env_fingerprint) == subject))


@dataclass(frozen=True)
class SeriesPoints:
    """One series' values in every run outside A/B groups, oldest run first, as columns (a dashboard reads
    hundreds of thousands of points)."""

    subject: SeriesKey
    unit: str
    run_ids: list[str] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    q1: list[float | None] = field(default_factory=list)
    q3: list[float | None] = field(default_factory=list)
    budget_limits: list[float | None] = field(default_factory=list)


def series_points(store: HistoryStore, metrics: Sequence[str]) -> dict[str, SeriesPoints]:
    """Every series of these metrics, keyed by series key, with its values in the runs outside A/B groups.

    Each series' identity is read once, its points with only the columns a point has."""
    outside_ab = (f"FROM results res JOIN runs ON runs.id = res.run_id "
                  f"WHERE runs.ab_group IS NULL AND res.metric IN ({marks(metrics)})")
    n = len(SERIES_COLUMNS)
    found = {row[n]: (series_key_from(row), row[n + 1]) for row in store.db.execute(
        f"SELECT {series_select('res')}, res.series_key, res.unit {outside_ab} GROUP BY res.series_key", list(metrics))}
    out: dict[str, SeriesPoints] = {}
    for key, run_id, value, q1, q3, budget in store.db.execute(
            f"SELECT res.series_key, res.run_id, res.value, res.q1, res.q3, res.budget_limit {outside_ab} "
            f"{OLDEST_FIRST}", list(metrics)):
        series = out.get(key)
        if series is None:
            subject, unit = found[key]
            series = out[key] = SeriesPoints(subject=subject, unit=unit)
        series.run_ids.append(run_id)
        series.values.append(value)
        series.q1.append(q1)
        series.q3.append(q3)
        series.budget_limits.append(budget)
    return out


@dataclass(frozen=True)
class OutOfMemory:
    """A batch of a test that ran out of memory in a run."""

    run_id: str
    test_id: str
    batch_size: int | None


def out_of_memory(store: HistoryStore, run_ids: Sequence[str] | None = None) -> list[OutOfMemory]:
    """Every configuration that ran out of memory (in these runs, when given)."""
    where, params = ("", []) if run_ids is None else (f"AND m.run_id IN ({marks(run_ids)})", list(run_ids))
    return [OutOfMemory(run_id=r, test_id=t, batch_size=b) for r, t, b in store.db.execute(
        "SELECT m.run_id, t.test_id, m.batch_size FROM measurements m JOIN tests t ON t.id = m.test_row_id "
        f"WHERE m.outcome = 'oom' {where}", params)]
