"""The gate's error rates per run on serving metrics, by simulation through the gate's own code on real runs.

Noise source: the suite's serving case (``suites/test_serving.py::test_serving_under_load``) run again and
again, each time as a new pytest process with a new server, as CI runs it: ``--record N`` runs it N times
into a history file and writes every run's value of each gated serving series (``median_ttft_ms``,
``median_tpot_ms`` of each load point) to ``benchmarks/data/serving_noise.json``. The run is the unit: one
value per series per run.

A simulated history is 30 runs, each one real run drawn with replacement (the whole run, so the series of
one run stay as correlated as they were); the newest ``age`` runs carry the change: one series (the
first load point's median TPOT) slower by 10, 20 or 50 %. The comparisons are made and judged by the gate
itself: ``gate.history.recent_windows`` and ``gate.verdict.judge`` at ``HISTORY_ALPHA``, with every gated
serving series of the run; with ``--llmperf-confirm`` (the default) a failing run reruns its regressed tests
(a fresh draw) and ``gate.confirm.reconcile`` keeps what the rerun finds. A run fails when any verdict fails.

    .venv/bin/python benchmarks/serving_gate_validity.py --record 20      # 15-40 s a run on 2 cores
    .venv/bin/python benchmarks/serving_gate_validity.py --runs 2000
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from pytest_llmperf.gate.confirm import reconcile
from pytest_llmperf.gate.history import HISTORY_ALPHA, recent_windows
from pytest_llmperf.gate.verdict import Comparison, Outcome, judge
from pytest_llmperf.measure.metrics import GATED_METRICS, Scope, metric
from pytest_llmperf.series import LoadPoint, SeriesKey

DATA = Path(__file__).parent / "data" / "serving_noise.json"
SUITE = Path(__file__).parents[1] / "suites" / "test_serving.py"
HISTORY_RUNS = 30
BASELINE_RUNS = 10
SERVING_GATED = tuple(m for m in GATED_METRICS if metric(m).scope is Scope.SERVING)


def record(runs: int, backend: str) -> None:
    """Run the suite's serving case ``runs`` times, each a new pytest process, and keep every run's values."""
    from pytest_llmperf.history.runs import newest_run_ids
    from pytest_llmperf.history.samples import series_samples
    from pytest_llmperf.history.store import HistoryStore

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "history.db"
        for i in range(runs):
            done = subprocess.run([sys.executable, "-m", "pytest", "--llmperf", str(SUITE), "-k",
                                   f"test_serving_under_load and {backend}", "-q",
                                   "-p", "no:randomly", f"--llmperf-db={db}", "--llmperf-progress=off"],
                                  capture_output=True, text=True, check=False)
            print(f"run {i + 1}/{runs}: exit {done.returncode}", file=sys.stderr)
            if done.returncode != 0:
                raise SystemExit(done.stdout[-3000:])
        with HistoryStore.open_read_only(db) as store:
            run_ids = list(reversed(newest_run_ids(store, limit=runs)))
            samples = series_samples(store, run_ids, SERVING_GATED)
    series = {s.subject.label: {"metric": s.subject.metric, "point": s.subject.point.label,
                                "workload": s.subject.workload,
                                "values": [s.per_run[r][0] for r in run_ids]}
              for s in samples.values() if all(r in s.per_run for r in run_ids)}
    DATA.write_text(json.dumps({"source": f"suites/test_serving.py -k {backend}, {runs} pytest processes",
                                "series": series}, indent=1) + "\n")
    print(f"wrote {DATA}: {len(series)} series x {runs} runs")


def _subject(label: str, entry: dict) -> SeriesKey:
    return SeriesKey(test_id=label, model_id="m", model_config_hash="h", backend="b", variant="v", dtype="float32",
                     world_size=1, point=LoadPoint(), metric=entry["metric"], env_fingerprint="e",
                     workload=entry["workload"])


def _verdicts(subjects: list[SeriesKey], runs: np.ndarray) -> list:
    comparisons = []
    for j, s in enumerate(subjects):
        values = [float(v) for v in runs[:, j]]
        evidence, windows = recent_windows(values[-2::-1], values[-1], BASELINE_RUNS, metric(s.metric).better)
        comparisons.append(Comparison(s, evidence, "main", gated=True, windows=windows))
    return judge(comparisons, alpha=HISTORY_ALPHA)


def simulate(table: np.ndarray, subjects: list[SeriesKey], changed: int, slowdown: float, age: int, *,
             confirm: bool, rng: np.random.Generator) -> tuple[bool, str]:
    def draw(n: int, slow: bool) -> np.ndarray:
        runs = table[rng.integers(0, len(table), size=n)].copy()
        if slow:
            runs[:, changed] *= 1 + slowdown
        return runs

    history = np.vstack([draw(HISTORY_RUNS - age, False), draw(age, True)])
    verdicts = _verdicts(subjects, history)
    failing = {v.subject.test_id for v in verdicts if v.fails}
    if confirm and failing:
        rerun = np.vstack([history[:-1], draw(1, age > 0)])
        picked = [j for j, s in enumerate(subjects) if s.test_id in failing]
        again = _verdicts([subjects[j] for j in picked], rerun[:, picked])
        verdicts = reconcile(verdicts, again, "rerun")
    target = next(v for v in verdicts if v.subject == subjects[changed])
    return any(v.fails for v in verdicts), target.outcome.value


def _wilson(k: int, n: int) -> tuple[float, float]:
    z = 1.96
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", type=int, default=0, help="first record this many real runs of the suite case")
    parser.add_argument("--backend", default="llama-cpp", help="the suite case's backend to record")
    parser.add_argument("--runs", type=int, default=2000, help="simulated runs per cell")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.record:
        record(args.record, args.backend)
    data = json.loads(DATA.read_text())
    labels = sorted(data["series"])
    entries = [data["series"][k] for k in labels]
    subjects = [_subject(k, e) for k, e in zip(labels, entries, strict=True)]
    table = np.array([e["values"] for e in entries], dtype=float).T  # runs x series
    changed = next(j for j, e in enumerate(entries) if e["metric"] == "median_tpot_ms")
    print(f"noise: {data['source']}; {table.shape[1]} gated series x {table.shape[0]} real runs")
    for e, label in zip(entries, labels, strict=True):
        v = np.asarray(e["values"])
        print(f"  {label}: median {np.median(v):.3g} ms, between-run CV {np.std(v, ddof=1) / np.mean(v):.1%}")
    rng = np.random.default_rng(args.seed)
    print(f"\n{args.runs} simulated runs per cell; changed series: {labels[changed]}")
    print("| change | age (runs) | confirm | runs failing [95 % CI] | changed series regressed |")
    print("|---|---|---|---|---|")
    for slowdown, age in ((0.0, 0), (0.1, 1), (0.1, 3), (0.2, 1), (0.2, 3), (0.5, 1)):
        for confirm in (False, True):
            fails = regressed = 0
            for _ in range(args.runs):
                failed, outcome = simulate(table, subjects, changed, slowdown, age, confirm=confirm, rng=rng)
                fails += failed
                regressed += outcome == Outcome.REGRESSED.value
            low, high = _wilson(fails, args.runs)
            print(f"| +{slowdown:.0%} | {age} | {'yes' if confirm else 'no'} | {fails / args.runs:.2%} "
                  f"[{low:.2%}, {high:.2%}] | {regressed / args.runs:.1%} |")


if __name__ == "__main__":
    main()
