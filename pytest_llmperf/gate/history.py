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

from pytest_llmperf.gate.evidence import Evidence, compare_fixed, compare_to_history, is_constant
from pytest_llmperf.gate.noise import pooled, process_value
from pytest_llmperf.gate.samples import accepted_reason, min_effect_for
from pytest_llmperf.gate.verdict import Comparison
from pytest_llmperf.history.gating import Acceptance, acceptances, min_effects
from pytest_llmperf.history.runs import RunStart, baseline_candidates, run_start
from pytest_llmperf.history.samples import SeriesSamples, other_environments, series_samples
from pytest_llmperf.history.store import HistoryStore
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


def _new_level_since(rows: list[Acceptance], samples: SeriesSamples, candidates: list[RunStart]) -> str | None:
    """The start time of the newest candidate run with an acceptance (``rows``) covering this series, if any."""
    for run in candidates:  # newest first
        if accepted_reason(rows, run.run_id, samples.subject):
            return run.started_at
    return None


def history_comparisons(store: HistoryStore, run_id: str, baseline: HistoryBaseline, *,
                        exclude: tuple[str, ...] = ()) -> list[Comparison]:
    """One comparison per gated series of ``run_id``, against its history on ``baseline.branch``
    (without the runs in ``exclude``)."""
    start = run_start(store, run_id)
    # the newest runs of the baseline branch continue this run's level only when it is on that branch
    sizes = RECENT_WINDOWS if start.branch == baseline.branch else RECENT_WINDOWS[:1]
    current = series_samples(store, [run_id], baseline.metrics)
    candidates = baseline_candidates(store, baseline.branch, start.started_at, (run_id, *exclude))
    candidate_ids = [r.run_id for r in candidates]
    history = series_samples(store, candidate_ids, baseline.metrics)
    effects = min_effects(store, run_id)
    accepted_now = acceptances(store, [run_id])
    accepted_before = acceptances(store, candidate_ids)
    started = {r.run_id: r.started_at for r in candidates}
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
        earlier_values = [v for r in runs for v in earlier.per_run[r]] if earlier else []
        if metric(subject.metric).sampling is Sampling.FIXED and runs and is_constant([*earlier_values, *head]):
            evidence = compare_fixed(earlier_values, head)  # equal so far: any change beyond the tolerance counts
            out.append(Comparison(subject, evidence, where, tuple(runs), effect, accepted=accepted,
                                  gated=gated))
            continue
        if len(runs) < MIN_BASELINE_RUNS:
            others = other_environments(store, subject, candidate_ids) if not runs else []
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
