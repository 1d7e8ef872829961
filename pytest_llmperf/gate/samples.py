"""What the gate compares, read back from the history: each series' values, run by run.

Per-trial metrics come back as every trial's value (from the ``trials`` table, through ``Trial.value``,
the one definition of each); the others as the one value their run recorded.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_llmperf.gate.spec import DEFAULT_MIN_EFFECT, matches_test_id
from pytest_llmperf.measure.metrics import TRIAL_METRICS
from pytest_llmperf.results import Trial
from pytest_llmperf.series import Subject


@dataclass(frozen=True)
class SeriesSamples:
    subject: Subject
    env_fingerprint: str
    #: run id -> that run's values, in the order the runs were asked for
    per_run: dict[str, tuple[float, ...]] = field(default_factory=dict)


def _placeholders(values: Sequence[Any]) -> str:
    return ", ".join("?" for _ in values)


def load_samples(db: Any, run_ids: Sequence[str], metrics: Iterable[str]) -> dict[str, SeriesSamples]:
    """Every series these runs measured for these metrics, keyed by series key (``SeriesKey.digest``)."""
    metrics = list(metrics)
    if not run_ids or not metrics:
        return {}
    rows = db.execute(
        f"""SELECT series_key, run_id, metric, value, measurement_id, test_id, model_id, backend, variant, dtype,
                   world_size, batch_size, env_fingerprint
            FROM results WHERE run_id IN ({_placeholders(run_ids)}) AND metric IN ({_placeholders(metrics)})""",
        [*run_ids, *metrics],
    ).fetchall()
    trial_measurements = sorted({r[4] for r in rows if r[2] in TRIAL_METRICS})
    trials: dict[int, list[Trial]] = {}
    for start in range(0, len(trial_measurements), 900):  # under SQLite's limit of bound parameters
        chunk = trial_measurements[start:start + 900]
        for mid, ttft_s, e2e_s, batch, new, streams in db.execute(
            f"SELECT measurement_id, ttft_s, e2e_s, batch_size, new_tokens, streams FROM trials "
            f"WHERE measurement_id IN ({_placeholders(chunk)}) ORDER BY measurement_id, idx", chunk,
        ):
            trials.setdefault(mid, []).append(Trial(ttft_s, e2e_s, batch, new, streams))
    order = {run_id: i for i, run_id in enumerate(run_ids)}
    out: dict[str, SeriesSamples] = {}
    for key, run_id, metric, value, mid, test_id, model_id, backend, variant, dtype, ws, batch, env in sorted(
            rows, key=lambda r: order[r[1]]):
        if key not in out:
            out[key] = SeriesSamples(Subject(key, test_id, model_id, backend, variant, dtype, ws, batch, metric), env)
        if metric in TRIAL_METRICS and trials.get(mid):
            values = tuple(t.value(metric) for t in trials[mid])
        else:
            values = (float(value),)
        out[key].per_run[run_id] = values
    return out


def same_code_groups(db: Any, metrics: Iterable[str], *, exclude_group: str | None = None,
                     newest: int = 200) -> dict[str, list[list[float]]]:
    """series key -> log process values of earlier runs of one code, in groups: each side of an A/B run (an A/A
    calibration's two sides alike), and the clean non-A/B runs of one commit. The spread within a group is
    process noise alone; only the ``newest`` runs are read."""
    from pytest_llmperf.gate.noise import process_value

    rows = db.execute(
        "SELECT id, ab_group, ab_side, git_commit FROM runs WHERE status = 'complete' AND "
        "((ab_group IS NOT NULL AND ab_group IS NOT ?) OR (ab_group IS NULL AND git_commit IS NOT NULL "
        "AND git_dirty = 0)) ORDER BY started_at DESC, rowid DESC LIMIT ?", [exclude_group, newest]).fetchall()
    group_of = {run_id: (group, side) if group else ("commit", commit) for run_id, group, side, commit in rows}
    out: dict[str, list[list[float]]] = {}
    for key, samples in load_samples(db, list(group_of), metrics).items():
        groups: dict[tuple[str, str], list[float]] = {}
        for run_id, values in samples.per_run.items():
            if values and min(values) > 0:
                groups.setdefault(group_of[run_id], []).append(process_value(values))
        out[key] = [g for g in groups.values() if len(g) > 1]
    return out


def min_effects(db: Any, run_id: str) -> dict[str, dict[str, float]]:
    """test id -> the min_effect mapping (``"*"`` and per metric) its test recorded in this run."""
    out = {}
    for test_id, gate in db.execute("SELECT test_id, gate FROM tests WHERE run_id = ?", [run_id]):
        out[test_id] = json.loads(gate)["min_effect"] if gate else {}
    return out


def min_effect_for(effects: dict[str, dict[str, float]], test_id: str, metric: str) -> float:
    own = effects.get(test_id, {})
    return float(own.get(metric, own.get("*", DEFAULT_MIN_EFFECT)))


def acceptances(db: Any, run_ids: Sequence[str]) -> list[tuple[str, str, str | None, str]]:
    """(run id, test pattern, metric or None, reason) of every acceptance recorded for these runs."""
    if not run_ids:
        return []
    return [tuple(r) for r in db.execute(  # type: ignore[misc]
        f"SELECT run_id, test_pattern, metric, reason FROM acceptances WHERE run_id IN ({_placeholders(run_ids)}) "
        "ORDER BY id", list(run_ids))]


def accepted_reason(rows: Iterable[tuple[str, str, str | None, str]], run_id: str, subject: Subject) -> str | None:
    """The reason an acceptance of this run covers this subject (test id pattern, and metric if one is named)."""
    for accepted_run, pattern, metric, reason in rows:
        if accepted_run == run_id and matches_test_id(pattern, subject.test_id) and metric in (None, subject.metric):
            return reason
    return None
