"""The dashboard's view of the history: every series' values run by run, per branch, with what each run was.

A series is the history's ``SeriesKey``. A dashboard page shows one configuration: the series that differ
only in their metric (and, for metrics measured once per load, in having no batch size). A generate
configuration is a batch size; a serving configuration is a load point (a request rate or a concurrency)
with its workload, one page each, so that an overview row links to the load point it measured and a page's
address does not move when a test adds or drops load points. Runs of ``llmperf ab`` are left out: they
measure pull requests, not the history of a branch. The file is read through
``HistoryStore.open_read_only``: checked like any open, and never changed.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from pytest_llmperf.history.errors import DEFAULT_FLAG
from pytest_llmperf.history.gating import history_verdict_outcomes
from pytest_llmperf.history.runs import branch_runs
from pytest_llmperf.history.samples import out_of_memory, series_points
from pytest_llmperf.history.store import HistoryStore
from pytest_llmperf.measure.metrics import COMPARED_METRICS, serving_latency_name
from pytest_llmperf.series import LoadPoint, SeriesKey

#: the metrics a dashboard shows, in this order: the gated ones
DASHBOARD_METRICS = COMPARED_METRICS
#: the statistics of each serving latency that a load point's page draws together over runs, lowest first
PERCENTILE_STATISTICS = ("median", "p90", "p99")
#: the serving latencies drawn so
PERCENTILE_LATENCIES = ("ttft", "tpot")
#: what those charts read beyond ``DASHBOARD_METRICS`` (p90): not compared by the gate, so no overview row
CHART_ONLY_METRICS = tuple(name for latency in PERCENTILE_LATENCIES for statistic in PERCENTILE_STATISTICS
                           if (name := serving_latency_name(statistic, latency)) not in DASHBOARD_METRICS)


@dataclass(frozen=True)
class Run:
    id: str
    started_at: str
    commit: str | None
    branch: str
    status: str
    argv: tuple[str, ...]
    env: str
    #: "NVIDIA H100 80GB HBM3 x1", "cpu x1"
    device: str
    environment: dict[str, Any]

    @cached_property
    def epoch_s(self) -> int:
        """When the run started, in seconds since the epoch: a chart's x (parsed once per run, not per point)."""
        return int(datetime.fromisoformat(self.started_at).timestamp())

    def reproduce(self) -> str:
        checkout = f"git checkout {self.commit[:12]} && " if self.commit else ""
        return checkout + "pytest " + " ".join(self.argv)


@dataclass
class Series:
    """One series on one branch: the points in run order."""

    subject: SeriesKey
    page: str
    unit: str
    env: str
    device: str
    branch: str
    run_ids: list[str] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    q1: list[float | None] = field(default_factory=list)
    q3: list[float | None] = field(default_factory=list)
    budget: float | None = None


@dataclass(frozen=True)
class History:
    runs: dict[str, Run]
    #: (series key, branch) -> series
    series: dict[tuple[str, str], Series]
    #: (test id, batch size, run id) of every configuration that ran out of memory
    oom: frozenset[tuple[str, int | None, str]]
    #: (series key, run id) -> the verdict outcome the gate gave it against the history
    verdicts: dict[tuple[str, str], str]
    #: (series key, branch) -> a series of ``CHART_ONLY_METRICS``: drawn on its page, not listed
    chart_only: dict[tuple[str, str], Series] = field(default_factory=dict)


def holds_page(subject: SeriesKey) -> bool:
    """Whether a series is measured at a configuration of its own (a batch size, or a serving load point), rather
    than once per load (a load metric, which joins the pages of its test)."""
    return subject.point.batch_size is not None or subject.workload is not None


def page_key(subject: SeriesKey) -> str:
    """One page per configuration: the series key without its metric, model config and token counts (a load
    metric is on every batch's page)."""
    point = LoadPoint.of(batch_size=subject.point.batch_size, **subject.point.extra())
    return replace(subject, model_config_hash="", point=point, metric="").digest()[:16]


def _runs(store: HistoryStore) -> dict[str, Run]:
    out = {}
    for run in branch_runs(store):
        env = dict(run.environment)
        device = f"{env.get('device_model', '?')} x{env.get('device_count', '?')}"
        out[run.run_id] = Run(id=run.run_id, started_at=run.started_at, commit=run.commit,
                              branch=run.branch or "(no branch)", status=run.status, argv=run.argv,
                              env=run.env_fingerprint, device=device, environment=env)
    return out


def load_history(path: Path, *, flag: str = DEFAULT_FLAG) -> History:
    """Read the history file into series; fast enough for half a million results. ``flag`` names the file
    in error messages."""
    with HistoryStore.open_read_only(path, flag=flag) as store:
        runs = _runs(store)
        series: dict[tuple[str, str], Series] = {}
        chart_only: dict[tuple[str, str], Series] = {}
        for key, found in series_points(store, (*DASHBOARD_METRICS, *CHART_ONLY_METRICS)).items():
            subject = found.subject
            page = page_key(subject)
            into = chart_only if subject.metric in CHART_ONLY_METRICS else series
            for run_id, value, q1, q3, budget in zip(found.run_ids, found.values, found.q1, found.q3,
                                                      found.budget_limits, strict=True):
                run = runs[run_id]
                s = into.get((key, run.branch))
                if s is None:
                    s = into[(key, run.branch)] = Series(subject=subject, page=page, unit=found.unit,
                                                         env=subject.env_fingerprint, device=run.device,
                                                         branch=run.branch)
                s.run_ids.append(run_id)
                s.values.append(value)
                s.q1.append(q1)
                s.q3.append(q3)
                if budget is not None:
                    s.budget = budget
        oom = frozenset((o.test_id, o.batch_size, o.run_id) for o in out_of_memory(store) if o.run_id in runs)
        verdicts = history_verdict_outcomes(store)
    return History(runs, series, oom, verdicts, chart_only)


def pages(history: History) -> dict[str, list[Series]]:
    """page key -> its series (every metric, every branch); a load metric joins every page of its test (each
    batch size's, each serving load point's)."""
    by_page: dict[str, list[Series]] = defaultdict(list)
    load_series = [s for s in history.series.values() if not holds_page(s.subject)]
    for s in history.series.values():
        if holds_page(s.subject):
            by_page[s.page].append(s)

    def configuration(s: Series) -> tuple[object, ...]:
        return (s.subject.test_id, s.subject.model_id, s.subject.backend, s.subject.variant, s.subject.dtype,
                s.subject.world_size, s.env)

    for page, members in list(by_page.items()):
        by_page[page] += [s for s in load_series if configuration(s) == configuration(members[0])]
    placed = {id(s) for members in by_page.values() for s in members}
    for s in load_series:  # a test that measured no batch (load only) still gets its page
        if id(s) not in placed:
            by_page[s.page].append(s)
    return dict(by_page)


def row_pages(by_page: dict[str, list[Series]]) -> dict[tuple[str, str], str]:
    """(series key, branch) -> the page its overview row links to: the page the series is on, and for a load
    metric, which is on every page of its test, the page of the test's smallest batch size (or, for a serving
    test, its first load point)."""
    def place(page: str) -> tuple[object, ...]:
        holder = next((s.subject for s in by_page[page] if holds_page(s.subject)), None)
        if holder is None:
            return (False, 0, "", (), page)
        return (holder.point.batch_size is None, holder.point.batch_size or 0, holder.workload or "",
                tuple(holder.point.extra().values()), page)

    out: dict[tuple[str, str], str] = {}
    for page in sorted(by_page, key=place):
        for s in by_page[page]:
            out.setdefault((s.subject.digest(), s.branch), page)
    return out
