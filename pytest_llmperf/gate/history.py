"""The history baseline: a run compared with earlier runs of the same series on the baseline branch.

For each series of the current run, the baseline is the most recent ``baseline_runs`` complete runs on the
baseline branch (A/B runs excluded) that measured the same series key, which includes the environment
fingerprint: a run on another GPU model, driver or library version is never a baseline. If only such runs
exist, the comparison is inconclusive and says so. An accepted regression (``llmperf accept``, or the
marker's ``accept_regression``) starts a new level: later comparisons only use runs from that one on.

Each run counts once. A regression sits in the newest runs, and one run against a history as noisy as a
GPU's (13 % between runs) cannot show a 10 % step; the mean of the newest few can. So every series is
tested in windows: the newest run alone, and the newest 3 and 5 (``RECENT_WINDOWS``), each against the
``runs`` runs before it, with the noise of up to ``NOISE_RUNS_FACTOR`` times as many. A run on another
branch (a pull request) is tested alone: the baseline branch's newest runs are not its level. The windows share the
series' part of the run's level (Bonferroni), so a sustained shift fails a run within a few runs without
raising the false-alarm rate per run.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import median
from typing import Any

from pytest_llmperf.gate.evidence import Evidence, compare_fixed, compare_to_history, is_constant
from pytest_llmperf.gate.noise import pooled, process_value
from pytest_llmperf.gate.samples import (
    SeriesSamples,
    acceptances,
    accepted_reason,
    load_samples,
    min_effect_for,
    min_effects,
)
from pytest_llmperf.gate.verdict import Comparison
from pytest_llmperf.measure.metrics import COMPARED_METRICS, GATED_METRICS, Better, Sampling, metric

MIN_BASELINE_RUNS = 3
#: the share of runs of unchanged code that may fail in history mode. A window of one run rests on the tail of
#: one run's value, and GPU timings have heavier tails than the t-test assumes (on the H100 noise a nominal
#: 1 % gave 1.0-1.07 % of runs failing at Bonferroni levels near 1e-4), so history mode spends 0.8 %
HISTORY_ALPHA = 0.008
#: how many of the newest runs (the current one included) each window averages
RECENT_WINDOWS = (1, 3, 5)
#: the noise of a window's baseline comes from up to this many times ``runs`` runs before the window
NOISE_RUNS_FACTOR = 3


@dataclass(frozen=True)
class HistoryBaseline:
    branch: str
    #: at most this many earlier runs per series
    runs: int = 10
    metrics: tuple[str, ...] = COMPARED_METRICS


def _run_row(db: Any, run_id: str) -> tuple[str, str | None]:
    row = db.execute("SELECT started_at, git_branch FROM runs WHERE id = ?", [run_id]).fetchone()
    if row is None:
        raise ValueError(f"there is no run {run_id!r} in the history")
    return row[0], row[1]


def _candidate_runs(db: Any, branch: str, before: str, exclude: tuple[str, ...]) -> list[tuple[str, str]]:
    """(run id, started_at) of complete runs on the branch before the current one, newest first."""
    marks = ", ".join("?" for _ in exclude)
    return [tuple(r) for r in db.execute(  # type: ignore[misc]
        "SELECT id, started_at FROM runs WHERE git_branch = ? AND status = 'complete' AND ab_group IS NULL "
        f"AND id NOT IN ({marks}) AND started_at <= ? ORDER BY started_at DESC, rowid DESC",
        [branch, *exclude, before])]


def _new_level_since(rows: list[tuple[str, str, str | None, str]], samples: SeriesSamples,
                     candidates: list[tuple[str, str]]) -> str | None:
    """The start time of the newest candidate run with an acceptance (``rows``) covering this series, if any."""
    for run_id, started_at in candidates:  # newest first
        if accepted_reason(rows, run_id, samples.subject):
            return started_at
    return None


def _other_environments(db: Any, samples: SeriesSamples, run_ids: list[str]) -> list[str]:
    s = samples.subject
    if not run_ids:
        return []
    marks = ", ".join("?" for _ in run_ids)
    return [r[0] for r in db.execute(
        f"SELECT DISTINCT env_fingerprint FROM results WHERE run_id IN ({marks}) AND test_id = ? AND metric = ? "
        "AND batch_size IS ? AND model_id = ? AND backend = ? AND variant = ? AND world_size = ? "
        "AND env_fingerprint != ?",
        [*run_ids, s.test_id, s.metric, s.batch_size, s.model_id, s.backend, s.variant, s.world_size,
         samples.env_fingerprint])]


def history_comparisons(db: Any, run_id: str, baseline: HistoryBaseline, *,
                        exclude: tuple[str, ...] = ()) -> list[Comparison]:
    """One comparison per gated series of ``run_id``, against its history on ``baseline.branch``
    (without the runs in ``exclude``)."""
    started_at, branch = _run_row(db, run_id)
    # the newest runs of the baseline branch continue this run's level only when it is on that branch
    sizes = RECENT_WINDOWS if branch == baseline.branch else RECENT_WINDOWS[:1]
    current = load_samples(db, [run_id], baseline.metrics)
    candidates = _candidate_runs(db, baseline.branch, started_at, (run_id, *exclude))
    history = load_samples(db, [r for r, _ in candidates], baseline.metrics)
    effects = min_effects(db, run_id)
    accepted_now = acceptances(db, [run_id])
    accepted_before = acceptances(db, [r for r, _ in candidates])
    started = dict(candidates)
    out = []
    for key, samples in sorted(current.items(), key=lambda kv: kv[1].subject.label):
        subject = samples.subject
        effect = min_effect_for(effects, subject.test_id, subject.metric)
        accepted = accepted_reason(accepted_now, run_id, subject)
        gated = subject.metric in GATED_METRICS
        earlier = history.get(key)
        level_runs = [r for r in (earlier.per_run if earlier else {})]  # newest first
        since = _new_level_since(accepted_before, earlier, candidates) if earlier else None
        if since is not None:
            level_runs = [r for r in level_runs if started[r] >= since]
        runs = level_runs[: baseline.runs]
        where = f"{baseline.branch}: {len(runs)} run{'s' if len(runs) != 1 else ''}"
        if since is not None:
            where += f" since the change accepted at {since}"
        head = samples.per_run[run_id]
        earlier_values = [v for r in runs for v in earlier.per_run[r]] if earlier else []  # type: ignore[union-attr]
        if metric(subject.metric).sampling is Sampling.FIXED and runs and is_constant([*earlier_values, *head]):
            evidence = compare_fixed(earlier_values, head)  # equal so far: any change beyond the tolerance counts
            out.append(Comparison(subject, evidence, where, tuple(runs), effect, accepted=accepted,
                                  gated=gated))
            continue
        if len(runs) < MIN_BASELINE_RUNS:
            others = _other_environments(db, samples, [r for r, _ in candidates]) if not runs else []
            note = (f"no baseline: only {len(runs)} earlier run(s) of this series on {baseline.branch} with this "
                    f"environment (at least {MIN_BASELINE_RUNS} are needed)")
            if others:
                note += f"; runs with another environment ({', '.join(o[:12] for o in others)}) are not compared"
            out.append(Comparison(subject, None, where, tuple(runs), effect, note=note, accepted=accepted,
                                  gated=gated))
            continue
        values = [median(earlier.per_run[r]) for r in level_runs]  # type: ignore[union-attr]
        evidence, windows = recent_windows(values, median(head), baseline.runs, metric(subject.metric).better,
                                           sizes=sizes)
        out.append(Comparison(subject, evidence, where, tuple(runs), effect, accepted=accepted,
                              gated=gated, windows=windows))
    return out


def recent_windows(earlier: list[float], current: float, runs: int, better: Better,
                   sizes: tuple[int, ...] = RECENT_WINDOWS) -> tuple[Evidence, tuple[Evidence, ...]]:
    """The windows of the newest runs against the runs before each: (the one that is most against the newest
    runs, all of them). ``earlier``: one value per earlier run, newest first, at least ``MIN_BASELINE_RUNS``."""
    windows = []
    for size in sizes:
        recent = [current, *earlier[: size - 1]]
        before = earlier[size - 1:]
        if len(recent) < size or len(before) < MIN_BASELINE_RUNS:
            break
        noise = pooled([[process_value([v]) for v in before[: NOISE_RUNS_FACTOR * runs]]],
                       f"{min(len(before), NOISE_RUNS_FACTOR * runs)} runs")
        windows.append(compare_to_history(before[:runs], recent, noise=noise))
    worse = 1.0 if better is Better.LOWER else -1.0
    return max(windows, key=lambda e: worse * (e.statistic or 0.0)), tuple(windows)
