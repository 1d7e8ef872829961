"""What the gate compares, from the history's typed queries: each series' values run by run, the noise of
earlier runs of one code, each test's minimum effect, and the acceptances that cover a series."""

from __future__ import annotations

from collections.abc import Iterable

from pytest_llmperf.gate.spec import DEFAULT_MIN_EFFECT
from pytest_llmperf.history.gating import Acceptance
from pytest_llmperf.history.runs import same_code_runs
from pytest_llmperf.history.samples import series_samples
from pytest_llmperf.history.store import HistoryStore
from pytest_llmperf.series import SeriesKey


def same_code_groups(store: HistoryStore, metrics: Iterable[str], *, exclude_group: str | None = None,
                     newest: int = 200) -> dict[str, list[list[float]]]:
    """series key -> log process values of earlier runs of one code, in groups: each side of an A/B run (an A/A
    calibration's two sides alike), and the clean non-A/B runs of one commit. The spread within a group is
    process noise alone; only the ``newest`` runs are read."""
    from pytest_llmperf.gate.noise import process_value

    group_of = {r.run_id: r.group for r in same_code_runs(store, exclude_group=exclude_group, newest=newest)}
    out: dict[str, list[list[float]]] = {}
    for key, samples in series_samples(store, list(group_of), metrics).items():
        groups: dict[tuple[str, str], list[float]] = {}
        for run_id, values in samples.per_run.items():
            if values and min(values) > 0:
                groups.setdefault(group_of[run_id], []).append(process_value(values))
        out[key] = [g for g in groups.values() if len(g) > 1]
    return out


def min_effect_for(effects: dict[str, dict[str, float]], test_id: str, metric: str) -> float:
    own = effects.get(test_id, {})
    return float(own.get(metric, own.get("*", DEFAULT_MIN_EFFECT)))


def accepted_reason(rows: Iterable[Acceptance], run_id: str, subject: SeriesKey) -> str | None:
    """The reason an acceptance of this run covers this subject (test id pattern, and metric if one is named)."""
    return next((a.reason for a in rows if a.run_id == run_id and a.covers(subject)), None)
