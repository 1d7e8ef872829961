"""The gate's error rates per run, by simulation through the gate's own code on noise drawn from real timings.

Noise sources (``benchmarks/data``): ``h100_noise.json`` (4 processes of a 1.1 B Llama on an H100, bf16) and
``cpu_noise.json`` (this project's CPU machine, recorded by ``benchmarks/record_noise.py``, its ``all``
configuration: what ``llmperf ab`` does by default). From each, per batch size: every real trial's
deviation from its process's median (e2e and TTFT together, so the metrics stay correlated), the
between-process SD split from the within-process one by ``gate.noise.noise_parts``, and the correlation
of process levels between batch sizes (clipped at 0), which every series of a simulated process shares.

A simulated run has the suite's shape: 2 models x 3 backends (6 tests), each with a load (``load_s``) and
batch sizes 1, 8 and 32 (32 reuses the noise of 8), each with ``tokens_per_s``, ``tpot_ms`` and ``ttft_ms``.
A simulated process draws its level per series, then its trials by resampling one real process's
deviations. The comparisons are made and judged by the gate itself: ``gate.evidence.compare_processes``,
``gate.noise.pooled`` for the history's noise (8 earlier same-code groups of 3 processes), the A/B design
``gate.ab.run_rounds`` (planning, group-sequential looks, stopping), ``gate.history.recent_windows`` and
``gate.verdict.judge``. A run fails when any verdict fails it.

Cells: A/A (no change), and one series (the first test's batch-1 throughput) slower by 5, 10 or 20 %
(throughput lost); rates per run with Wilson 95 % intervals; beside each, the processes per side a z-test
with the between-process SD known would need for the same power at the same per-run error rate (1 % shared
by Bonferroni over the run's gated tests; the single-test figure in brackets).

    .venv/bin/python benchmarks/gate_validity.py --runs 2000
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import norm

from pytest_llmperf.gate.ab import AbConfig, run_rounds
from pytest_llmperf.gate.confirm import reconcile
from pytest_llmperf.gate.evidence import compare_processes
from pytest_llmperf.gate.history import HISTORY_ALPHA, recent_windows
from pytest_llmperf.gate.noise import noise_parts, pooled
from pytest_llmperf.gate.verdict import DEFAULT_ALPHA, Comparison, Outcome, judge
from pytest_llmperf.measure.metrics import GATED_METRICS, metric
from pytest_llmperf.series import LoadPoint, SeriesKey

DATA = Path(__file__).parent / "data"
TESTS = [f"m{m}-{b}" for m in range(2) for b in ("hf", "accelerate", "ds-inference")]
BATCHES = (1, 8, 32)
METRICS = ("tokens_per_s", "tpot_ms", "ttft_ms")
NEW_TOKENS = 100


@dataclass(frozen=True)
class Source:
    name: str
    #: per batch size of the data: deviations (log e2e, log ttft) of every trial from its process's median
    deviations: dict[int, list[np.ndarray]]
    between_sd: dict[int, float]
    #: SD of one process's log median at 8 trials, batch 1: what the gate's tests see
    process_sd: float
    load_sd: float
    rho: float


def load_source(name: str, config: str) -> Source:
    """``config``: the recorded configuration to use where the data has several (``record_noise.py``)."""
    data = json.loads((DATA / f"{name}_noise.json").read_text())
    jobs = [j for j in data["jobs"] if j.get("config", config) == config]
    sizes = sorted({t["bs"] for j in jobs for t in j["trials"]})
    deviations, between, medians, process_sd = {}, {}, {}, 0.0
    for bs in sizes:
        per_job = [np.array([(t["e2e_s"], t["ttft_s"]) for t in j["trials"] if t["bs"] == bs]) for j in jobs]
        deviations[bs] = [np.log(p) - np.log(np.median(p, axis=0)) for p in per_job]
        parts = noise_parts([list(p[:, 0]) for p in per_job])
        assert parts is not None
        between[bs] = parts.between_sd
        if bs == sizes[0]:
            process_sd = parts.process_sd(8)
        medians[bs] = np.log([np.median(p[:, 0]) for p in per_job])
    rho = float(np.clip(np.corrcoef(medians[sizes[0]], medians[sizes[-1]])[0, 1], 0, 1)) if len(sizes) > 1 else 0.0
    loads = np.log([j["load_s"] for j in jobs if j.get("load_s")])
    return Source(name, deviations, between, process_sd, float(loads.std(ddof=1)), rho)


def _noise_batch(source: Source, batch: int) -> int:
    sizes = sorted(source.deviations)
    return max((s for s in sizes if s <= batch), default=sizes[0])


def _subject(test: str, batch: int | None, name: str) -> SeriesKey:
    return SeriesKey(test_id=test, model_id="model", model_config_hash="", backend="hf", variant="default",
                     dtype="bfloat16", world_size=1, point=LoadPoint.of(batch_size=batch), metric=name,
                     env_fingerprint="simulated")


def _name(subject: SeriesKey) -> str:
    """The simulation's name of a series: ``test:batch:metric``, or ``test:load_s``."""
    batch = subject.point.batch_size
    return f"{subject.test_id}:{subject.metric}" if batch is None else f"{subject.test_id}:{batch}:{subject.metric}"


class Simulator:
    """Processes of the suite's shape; ``slowdown`` makes the head's first test's batch 1 slower."""

    def __init__(self, source: Source, rng: np.random.Generator, trials: int = 8):
        self.source, self.rng, self.trials = source, rng, trials
        self.subjects = [_subject(t, b, m) for t in TESTS for b in BATCHES for m in METRICS]
        self.subjects += [_subject(t, None, "load_s") for t in TESTS]
        # one row per (test, batch) series: its batch, the batch whose noise it takes, and its real processes
        self.cells = [(t, b) for t in TESTS for b in BATCHES]
        noise_batches = [_noise_batch(source, b) for _, b in self.cells]
        self.batch = np.array([b for _, b in self.cells], dtype=float)
        self.between = np.array([source.between_sd[nb] for nb in noise_batches])
        self.real = [source.deviations[nb] for nb in noise_batches]
        self.changed = np.array([t == TESTS[0] and b == 1 for t, b in self.cells])

    def process(self, slowdown: float = 0.0) -> dict[str, float]:
        """One process's value of every series (the median of its trials, or its one value)."""
        s, rng = self.source, self.rng
        common = rng.normal()
        shared, own = math.sqrt(s.rho), math.sqrt(1 - s.rho)
        level = self.between * (shared * common + own * rng.normal(size=len(self.cells)))
        picked = np.stack([r[rng.integers(len(r))] for r in self.real])  # (cells, trials of that process, 2)
        drawn = rng.integers(picked.shape[1], size=(len(self.cells), self.trials))
        picked = np.take_along_axis(picked, drawn[..., None],
                                    axis=1)
        e2e = self.batch[:, None] ** 0.3 * np.exp(level[:, None] + picked[..., 0])
        if slowdown:
            e2e[self.changed] /= 1 - slowdown  # the throughput lost is ``slowdown``
        ttft = 0.02 * np.exp(level[:, None] + picked[..., 1])
        tokens_per_s = np.median(self.batch[:, None] * NEW_TOKENS / e2e, axis=1)
        tpot_ms = np.median(1000 * (e2e - ttft) / (NEW_TOKENS - 1), axis=1)
        ttft_ms = np.median(1000 * ttft, axis=1)
        out = {}
        for i, (t, b) in enumerate(self.cells):
            out[f"{t}:{b}:tokens_per_s"] = float(tokens_per_s[i])
            out[f"{t}:{b}:tpot_ms"] = float(tpot_ms[i])
            out[f"{t}:{b}:ttft_ms"] = float(ttft_ms[i])
        loads = s.load_sd * (shared * common + own * rng.normal(size=len(TESTS)))
        for t, load in zip(TESTS, loads, strict=True):
            out[f"{t}:load_s"] = float(np.exp(load))
        return out


def _wilson(k: int, n: int) -> tuple[float, float]:
    if n == 0:
        return (0.0, 1.0)
    z = 1.96
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _prior_groups(sim: Simulator, groups: int = 8, size: int = 3) -> dict[str, list[list[float]]]:
    earlier = [[sim.process() for _ in range(size)] for _ in range(groups)]
    return {_name(s): [[math.log(p[_name(s)]) for p in g] for g in earlier] for s in sim.subjects}


CHANGED = "m0-hf:1:tokens_per_s"


def ab_run(sim: Simulator, slowdown: float, *, history: bool, config: AbConfig) -> tuple[bool, str, int]:
    """(the run failed, the changed series' outcome, processes per side)."""
    prior = _prior_groups(sim) if history else {}
    base: list[dict[str, float]] = []
    head: list[dict[str, float]] = []

    def run_round(index: int) -> None:
        base.append(sim.process())
        head.append(sim.process(slowdown))

    def compare() -> list[Comparison]:
        out = []
        for s in sim.subjects:
            noise = pooled(prior[_name(s)], "history") if history else None
            evidence = compare_processes([[p[_name(s)]] for p in base], [[p[_name(s)]] for p in head],
                                         prior=noise)
            out.append(Comparison(s, evidence, "base", gated=s.metric in GATED_METRICS))
        return out

    rounds, verdicts = run_rounds(config, run_round, compare, log=lambda _: None)
    changed = next(v for v in verdicts if _name(v.subject) == CHANGED)
    return any(v.fails for v in verdicts), changed.outcome.value, rounds


def _history_verdicts(sim: Simulator, runs: list[dict[str, float]], subjects: list[SeriesKey]) -> list:
    comparisons = []
    for s in subjects:
        values = [r[_name(s)] for r in runs]
        evidence, windows = recent_windows(values[-2::-1], values[-1], 10, metric(s.metric).better)
        comparisons.append(Comparison(s, evidence, "main", gated=s.metric in GATED_METRICS, windows=windows))
    return judge(comparisons, alpha=HISTORY_ALPHA)


def history_run(sim: Simulator, slowdown: float, *, age: int, length: int = 30, confirm: bool = False,
                ) -> tuple[bool, str, int]:
    """A history of ``length`` runs; the newest ``age`` of them (the current one included) carry the change.
    ``confirm``: a run that fails reruns its regressed tests in a new process (``--llmperf-confirm``), judged
    against the same history without the first run, and ``gate.confirm.reconcile`` keeps what the rerun finds."""
    runs = [sim.process() for _ in range(length - age)] + [sim.process(slowdown) for _ in range(age)]
    verdicts = _history_verdicts(sim, runs, sim.subjects)
    processes = 1
    failing = {v.subject.test_id for v in verdicts if v.fails}
    if confirm and failing:
        rerun = [*runs[:-1], sim.process(slowdown if age else 0.0)]
        again = _history_verdicts(sim, rerun, [s for s in sim.subjects if s.test_id in failing])
        verdicts = reconcile(verdicts, again, "rerun")
        processes = 2
    changed = next(v for v in verdicts if _name(v.subject) == CHANGED)
    return any(v.fails for v in verdicts), changed.outcome.value, processes


def calibration_check(sim: Simulator, *, calibrations: int, runs: int, rounds: int) -> list[dict[str, object]]:
    """``calibrate``'s predicted detectable change (80 % power, ``rounds`` processes a side), checked: A/B runs of
    that many rounds with the changed series slower by the prediction, and the share that finds it."""
    from pytest_llmperf.gate.calibrate import series_noise

    tests = len(TESTS) * (len(BATCHES) * sum(m in GATED_METRICS for m in METRICS) + 1)
    config = AbConfig(repo=Path("."), base="a", head="b", db=Path("x.db"), pytest_args=(), min_rounds=rounds,
                      max_rounds=rounds)
    out = []
    for _ in range(calibrations):
        prior = pooled(_prior_groups(sim)[CHANGED], "history")
        calibration = [[sim.process()[CHANGED]] for _ in range(2 * rounds)]  # an A/A calibration of these rounds
        predicted = series_noise(calibration, prior=prior, rounds=rounds, level=DEFAULT_ALPHA / tests,
                                 detect=0.1, trials=False).detectable
        assert predicted is not None
        loss = 1 - 1 / (1 + predicted)  # the same log change, as throughput lost
        found = sum(ab_run(sim, loss, history=True, config=config)[1] == Outcome.REGRESSED.value for _ in range(runs))
        out.append({"predicted": predicted, "loss": loss, "power": found / runs, "power_ci": _wilson(found, runs)})
    return out


def z_reference(sd: float, change: float, level: float, power: float) -> int:
    """Processes per side of a one-sided z-test with known SD: ``change`` of throughput lost."""
    delta = -math.log(1 - change)
    return math.ceil(2 * ((norm.isf(level) + norm.ppf(power)) * sd / delta) ** 2)


def cell(label: str, runs: int, one: Callable[[], tuple[bool, str, int]]) -> dict[str, object]:
    started = time.perf_counter()
    fails, unchanged, processes = 0, 0, []
    for _ in range(runs):
        failed, outcome, n = one()
        fails += failed
        unchanged += outcome == Outcome.UNCHANGED.value
        processes.append(n)
    return {"cell": label, "runs": runs, "fail": fails / runs, "fail_ci": _wilson(fails, runs),
            "unchanged": unchanged / runs, "unchanged_ci": _wilson(unchanged, runs),
            "processes_mean": float(np.mean(processes)), "processes_max": int(np.max(processes)),
            "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000, help="simulated runs per cell")
    parser.add_argument("--sources", default="h100,cpu")
    parser.add_argument("--modes", default="ab,ab-no-history,history")
    parser.add_argument("--changes", default="0,0.05,0.1,0.2")
    parser.add_argument("--max-rounds", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpu-config", default="one-core",
                        help="the recorded configuration of the CPU noise (default: what llmperf ab does, %(default)s)")
    parser.add_argument("--calibrations", type=int, default=20,
                        help="simulated calibrations whose predicted detectable change is checked (0: none)")
    parser.add_argument("--calibrate-rounds", type=int, default=12)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    rows = []
    print("| source | mode | change | runs | run fails [95 % CI] | changed series unchanged [95 % CI] | "
          "processes/side mean (max) | z-test processes/side, same per-run rate [one test] |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.sources.split(","):
        source = load_source(name, args.cpu_config)
        rng = np.random.default_rng(args.seed)
        sim = Simulator(source, rng)
        tests = len(TESTS) * (len(BATCHES) * sum(m in GATED_METRICS for m in METRICS) + 1)
        sd = source.process_sd
        if args.calibrations:
            checks = calibration_check(sim, calibrations=args.calibrations, runs=args.runs // args.calibrations,
                                       rounds=args.calibrate_rounds)
            rows += [{"cell": f"{name} calibrate", **row} for row in checks]
            found = sum(round(r["power"] * (args.runs // args.calibrations)) for r in checks)
            total = args.calibrations * (args.runs // args.calibrations)
            low, high = _wilson(found, total)
            predicted = sorted(r["predicted"] for r in checks)
            print(f"<!-- {name}: {args.calibrations} simulated calibrations predicted a change of "
                  f"{predicted[0]:.0%}-{predicted[-1]:.0%} (median {predicted[len(predicted) // 2]:.0%}) "
                  "detectable with "
                  f"80 % power at {args.calibrate_rounds} processes a side; A/B runs of those rounds, each at its "
                  f"calibration's prediction, found it in {found / total:.1%} [{low:.1%}, {high:.1%}] of {total} runs "
                  "-->", flush=True)
        for mode in args.modes.split(","):
            for change in (float(c) for c in args.changes.split(",") if c):
                config = AbConfig(repo=Path("."), base="a", head="b", db=Path("x.db"), pytest_args=(),
                                  max_rounds=args.max_rounds)
                if mode in ("history", "history-confirm"):
                    confirm = mode == "history-confirm"
                    for age in (1, 3, 5) if change else (1,):
                        row = cell(f"{name} {mode} {change:.0%} age {age}", args.runs,
                                   lambda c=change, a=age, sim=sim, k=confirm: history_run(sim, c, age=a, confirm=k))
                        rows.append(row)
                        print(_line(name, f"{mode}, change {age} run(s) old", change, row, "-"), flush=True)
                    continue
                row = cell(f"{name} {mode} {change:.0%}", args.runs,
                           lambda c=change, m=mode, sim=sim, config=config: ab_run(sim, c, history=m == "ab",
                                                                                config=config))
                power = 0.95 if change >= 0.2 else 0.8
                reference = "-" if not change else (
                    f"{z_reference(sd, change, DEFAULT_ALPHA / tests, power)} "
                    f"[{z_reference(sd, change, DEFAULT_ALPHA, power)}] at {power:.0%} power")
                rows.append({**row, "z_reference": reference})
                print(_line(name, mode, change, row, reference), flush=True)
        print(f"<!-- {name}: between-process SD by batch {source.between_sd}, load {source.load_sd:.3f}, "
              f"correlation of process levels {source.rho:.2f}, {tests} gated tests per run -->", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


def _line(source: str, mode: str, change: float, row: dict, reference: str) -> str:
    low, high = row["fail_ci"]
    ulow, uhigh = row["unchanged_ci"]
    return (f"| {source} | {mode} | {change:.0%} | {row['runs']} | {row['fail']:.2%} [{low:.2%}, {high:.2%}] | "
            f"{row['unchanged']:.2%} [{ulow:.2%}, {uhigh:.2%}] | {row['processes_mean']:.1f} ({row['processes_max']}) "
            f"| {reference} |")


if __name__ == "__main__":
    main()
