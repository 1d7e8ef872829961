"""The dashboard's view of the history: every series' values run by run, per branch, with what each run was.

A series is the store's series key (``SeriesKey``). A dashboard page shows one configuration: the series
that differ only in their metric (and, for metrics measured once per load, in having no batch size).
Runs of ``llmperf ab`` are left out: they measure pull requests, not the history of a branch.
"""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from pytest_llmperf.measure.metrics import COMPARED_METRICS
from pytest_llmperf.series import SeriesKey, Subject

#: the metrics a dashboard shows, in this order: the gated ones
DASHBOARD_METRICS = COMPARED_METRICS


@dataclass(frozen=True)
class Run:
    id: str
    started_at: str
    commit: str | None
    branch: str | None
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

    subject: Subject
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

    @property
    def label(self) -> str:
        s = self.subject
        variant = "" if s.variant == "default" else f" {s.variant}"
        batch = "" if s.batch_size is None else f" b{s.batch_size}"
        return f"{s.test_id}{batch} · {s.backend}{variant} ws{s.world_size} · {s.metric}"


@dataclass(frozen=True)
class History:
    runs: dict[str, Run]
    #: (series key, branch) -> series
    series: dict[tuple[str, str], Series]
    #: (test id, batch size, run id) of every configuration that ran out of memory
    oom: frozenset[tuple[str, int, str]]
    #: (series key, run id) -> the verdict outcome the gate gave it against the history
    verdicts: dict[tuple[str, str], str]


def page_key(test_id: str, model_id: str, backend: str, variant: str, dtype: str, world_size: int,
             batch_size: int | None, env: str) -> str:
    """One page per configuration: the series key without its metric (a load metric is on every batch's page)."""
    return SeriesKey(test_id=test_id, model_id=model_id, model_config_hash="", backend=backend, variant=variant,
                     dtype=dtype, world_size=world_size, batch_size=batch_size, prompt_tokens=None, new_tokens=None,
                     metric="", env_fingerprint=env).digest()[:16]


def _runs(db: sqlite3.Connection) -> dict[str, Run]:
    envs = {}
    cursor = db.execute("SELECT * FROM environments")
    names = [d[0] for d in cursor.description]
    for row in cursor:
        env = dict(zip(names, row, strict=True))
        envs[env["fingerprint"]] = env
    out = {}
    for run_id, started, commit, branch, status, argv, fingerprint in db.execute(
            "SELECT id, started_at, git_commit, git_branch, status, argv, env_fingerprint FROM runs "
            "WHERE ab_group IS NULL ORDER BY started_at, rowid"):
        env = envs.get(fingerprint, {})
        device = f"{env.get('device_model', '?')} x{env.get('device_count', '?')}"
        out[run_id] = Run(run_id, started, commit, branch or "(no branch)", status,
                          tuple(json.loads(argv)) if argv else (), fingerprint, device, env)
    return out


def load_history(path: Path) -> History:
    """Read the history file (read-only) into series; fast enough for half a million results."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        runs = _runs(db)
        marks = ", ".join("?" for _ in DASHBOARD_METRICS)
        rows = db.execute(
            f"""SELECT res.series_key, res.run_id, res.test_id, res.model_id, res.backend, res.variant, res.dtype,
                       res.world_size, res.batch_size, res.metric, res.unit, res.env_fingerprint, res.value, res.q1,
                       res.q3, res.budget_limit
                FROM results res JOIN runs r ON r.id = res.run_id
                WHERE r.ab_group IS NULL AND res.metric IN ({marks})
                ORDER BY r.started_at, r.rowid""", DASHBOARD_METRICS)
        series: dict[tuple[str, str], Series] = {}
        for key, run_id, test, model, backend, variant, dtype, ws, batch, metric, unit, env, value, q1, q3, budget \
                in rows:
            run = runs[run_id]
            s = series.get((key, run.branch))  # type: ignore[arg-type]
            if s is None:
                s = series[(key, run.branch)] = Series(  # type: ignore[index]
                    Subject(key, test, model, backend, variant, dtype, ws, batch, metric),
                    page_key(test, model, backend, variant, dtype, ws, batch, env), unit, env, run.device,
                    run.branch)  # type: ignore[arg-type]
            s.run_ids.append(run_id)
            s.values.append(value)
            s.q1.append(q1)
            s.q3.append(q3)
            if budget is not None:
                s.budget = budget
        oom = frozenset((t, b, r) for t, b, r in db.execute(
            "SELECT t.test_id, m.batch_size, m.run_id FROM measurements m JOIN tests t ON t.id = m.test_row_id "
            "WHERE m.outcome = 'oom'") if r in runs)
        verdicts = {(k, r): o for k, r, o in db.execute(
            "SELECT series_key, run_id, outcome FROM verdicts WHERE baseline_kind = 'history'")}
    finally:
        db.close()
    return History(runs, series, oom, verdicts)


def pages(history: History) -> dict[str, list[Series]]:
    """page key -> its series (every metric, every branch); a load metric joins every page of its test."""
    by_page: dict[str, list[Series]] = defaultdict(list)
    load_series = [s for s in history.series.values() if s.subject.batch_size is None]
    for s in history.series.values():
        if s.subject.batch_size is not None:
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
