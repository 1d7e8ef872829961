"""Typed queries about runs: the newest, one by id or prefix, a gate's baseline candidates, A/B groups."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pytest_llmperf.history.errors import HistoryError
from pytest_llmperf.history.ordering import NEWEST_FIRST, OLDEST_FIRST, marks
from pytest_llmperf.history.store import HistoryStore


def newest_run_ids(store: HistoryStore, limit: int = 1, *, label: str | None = None) -> list[str]:
    """The ids of the newest ``limit`` runs (only those with this label, when one is given)."""
    where = "" if label is None else "WHERE runs.label = ?"
    params: list[Any] = [] if label is None else [label]
    return [r[0] for r in store.db.execute(f"SELECT id FROM runs {where} {NEWEST_FIRST} LIMIT ?", [*params, limit])]


def newest_run_id(store: HistoryStore) -> str:
    """The id of the newest run; HistoryError when the history holds none."""
    found = newest_run_ids(store)
    if not found:
        raise HistoryError(f"{store.path} holds no runs; run `pytest --llmperf` first")
    return found[0]


def unknown_run_error(store: HistoryStore, run_id: str) -> HistoryError:
    newest = newest_run_ids(store, 3)
    known = f"the newest are {', '.join(newest)}" if newest else "it holds no runs"
    return HistoryError(f"there is no run {run_id!r} in {store.path} ({known}); pass the id of a run it holds")


def resolve_run_id(store: HistoryStore, text: str) -> str:
    """A run id from its full text or a prefix that only one run has (ids are long uuids)."""
    if store.db.execute("SELECT 1 FROM runs WHERE id = ?", [text]).fetchone() is not None:
        return text
    matches = [r[0] for r in store.db.execute(
        f"SELECT id FROM runs WHERE substr(id, 1, ?) = ? {NEWEST_FIRST} LIMIT 6", [len(text), text])]
    if len(matches) == 1:
        return str(matches[0])
    if matches:
        raise HistoryError(f"run id {text!r} is ambiguous in {store.path}: it starts {', '.join(matches[:5])}"
                           f"{', ...' if len(matches) > 5 else ''}; give more of the id")
    raise unknown_run_error(store, text)


@dataclass(frozen=True)
class RunStart:
    """When a run started, and on which branch."""

    run_id: str
    started_at: str
    branch: str | None


def run_start(store: HistoryStore, run_id: str) -> RunStart:
    row = store.db.execute("SELECT started_at, git_branch FROM runs WHERE id = ?", [run_id]).fetchone()
    if row is None:
        raise unknown_run_error(store, run_id)
    return RunStart(run_id=run_id, started_at=row[0], branch=row[1])


def baseline_candidates(store: HistoryStore, branch: str, before: str, exclude: Sequence[str]) -> list[RunStart]:
    """Complete runs on ``branch`` that started no later than ``before``, outside A/B groups and ``exclude``,
    newest first."""
    return [RunStart(run_id=r[0], started_at=r[1], branch=branch) for r in store.db.execute(
        "SELECT id, started_at FROM runs WHERE git_branch = ? AND status = 'complete' AND ab_group IS NULL "
        f"AND id NOT IN ({marks(exclude)}) AND started_at <= ? {NEWEST_FIRST}", [branch, *exclude, before])]


@dataclass(frozen=True)
class AbSides:
    """The complete runs of an A/B group, each side oldest first."""

    base: tuple[str, ...]
    head: tuple[str, ...]


def ab_sides(store: HistoryStore, group: str) -> AbSides:
    sides: dict[str, list[str]] = {"base": [], "head": []}
    for run_id, side in store.db.execute(
            f"SELECT id, ab_side FROM runs WHERE ab_group = ? AND status = 'complete' {OLDEST_FIRST}", [group]):
        sides[side].append(run_id)
    return AbSides(base=tuple(sides["base"]), head=tuple(sides["head"]))


@dataclass(frozen=True)
class SameCodeRun:
    """A complete run of known code: ``group`` is (A/B group, side) or ("commit", its commit)."""

    run_id: str
    group: tuple[str, str]


def same_code_runs(store: HistoryStore, *, exclude_group: str | None = None, newest: int = 200) -> list[SameCodeRun]:
    """The newest complete runs whose code is known: a side of an A/B group (but ``exclude_group``), or a
    clean checkout of one commit; newest first."""
    rows = store.db.execute(
        "SELECT id, ab_group, ab_side, git_commit FROM runs WHERE status = 'complete' AND "
        "((ab_group IS NOT NULL AND ab_group IS NOT ?) OR (ab_group IS NULL AND git_commit IS NOT NULL "
        f"AND git_dirty = 0)) {NEWEST_FIRST} LIMIT ?", [exclude_group, newest]).fetchall()
    return [SameCodeRun(run_id=run_id, group=(group, side) if group else ("commit", commit))
            for run_id, group, side, commit in rows]


@dataclass(frozen=True)
class ProcessTiming:
    """How long a set of runs took: each finished run's wall time, and the trials they measured."""

    walls_s: tuple[float, ...]
    trial_s: float
    trials: int
    measurements: int


def process_timing(store: HistoryStore, run_ids: Sequence[str]) -> ProcessTiming:
    walls = []
    for started, finished in store.db.execute(
            f"SELECT started_at, finished_at FROM runs WHERE id IN ({marks(run_ids)})", list(run_ids)):
        if started and finished:
            walls.append((datetime.fromisoformat(finished) - datetime.fromisoformat(started)).total_seconds())
    total, count, measurements = store.db.execute(
        "SELECT SUM(t.ttft_s + t.e2e_s), COUNT(*), COUNT(DISTINCT t.measurement_id) FROM trials t "
        f"JOIN measurements m ON m.id = t.measurement_id WHERE m.run_id IN ({marks(run_ids)})", list(run_ids)
    ).fetchone()
    return ProcessTiming(walls_s=tuple(walls), trial_s=float(total or 0.0), trials=int(count),
                         measurements=int(measurements))


@dataclass(frozen=True)
class BranchRun:
    """A run outside A/B groups, as the dashboard shows it."""

    run_id: str
    started_at: str
    commit: str | None
    branch: str | None
    status: str
    argv: tuple[str, ...]
    env_fingerprint: str
    #: its environments row (empty if the file lacks it)
    environment: Mapping[str, Any]


def branch_runs(store: HistoryStore) -> list[BranchRun]:
    """Every run outside A/B groups, oldest first."""
    cursor = store.db.execute("SELECT * FROM environments")
    names = [d[0] for d in cursor.description]
    envs = {row["fingerprint"]: row for row in (dict(zip(names, values, strict=True)) for values in cursor)}
    return [BranchRun(run_id=run_id, started_at=started, commit=commit, branch=branch, status=status,
                      argv=tuple(json.loads(argv)) if argv else (), env_fingerprint=fingerprint,
                      environment=envs.get(fingerprint, {}))
            for run_id, started, commit, branch, status, argv, fingerprint in store.db.execute(
                "SELECT id, started_at, git_commit, git_branch, status, argv, env_fingerprint FROM runs "
                f"WHERE ab_group IS NULL {OLDEST_FIRST}")]
