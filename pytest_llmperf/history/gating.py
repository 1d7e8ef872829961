"""Typed queries for the regression gate's own records: acceptances, each test's settings, past verdicts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from pytest_llmperf.gate.spec import matches_test_id
from pytest_llmperf.history.ordering import marks
from pytest_llmperf.history.store import HistoryStore
from pytest_llmperf.series import SeriesKey


@dataclass(frozen=True)
class Acceptance:
    """An acknowledged regression: in this run, the tests the pattern matches (and only ``metric``, if named)."""

    run_id: str
    test_pattern: str
    metric: str | None
    reason: str

    def covers(self, subject: SeriesKey) -> bool:
        return matches_test_id(self.test_pattern, subject.test_id) and self.metric in (None, subject.metric)


def acceptances(store: HistoryStore, run_ids: Sequence[str]) -> list[Acceptance]:
    """Every acceptance recorded for these runs, in the order they were recorded."""
    if not run_ids:
        return []
    return [Acceptance(run_id=r, test_pattern=p, metric=m, reason=why) for r, p, m, why in store.db.execute(
        f"SELECT run_id, test_pattern, metric, reason FROM acceptances WHERE run_id IN ({marks(run_ids)}) "
        "ORDER BY id", list(run_ids))]


def min_effects(store: HistoryStore, run_id: str) -> dict[str, dict[str, float]]:
    """test id -> the min_effect mapping (``"*"`` and per metric) its test recorded in this run."""
    return {test_id: json.loads(gate)["min_effect"] if gate else {} for test_id, gate in store.db.execute(
        "SELECT test_id, gate FROM tests WHERE run_id = ?", [run_id])}


def history_verdict_outcomes(store: HistoryStore) -> dict[tuple[str, str], str]:
    """(series key, run id) -> the outcome the gate gave that series against the history in that run."""
    return {(k, r): o for k, r, o in store.db.execute(
        "SELECT series_key, run_id, outcome FROM verdicts WHERE baseline_kind = 'history'")}
