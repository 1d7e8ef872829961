"""What each noise measure of ``llmperf ab`` buys: A/A runs with it and without it.

Builds a throwaway git repository holding one performance test (the hf backend on a synthetic model),
then runs the same revision against itself (``llmperf calibrate``'s machinery) under each configuration:

* ``all``: every process pinned to the same cores with fixed thread counts, GC paused inside trials;
* ``no-pinning``: no CPU affinity and no thread-count variables;
* ``gc-on``: the garbage collector may run inside timed trials;
* ``one-core``: every process pinned to core 0 alone, one thread (the other cores left to the rest).

For tokens_per_s and tpot_ms it prints the median within-process CV of the trials, the CV between the
processes' medians, the smallest worse change the A/A interval rules out, and the false alarms.

    .venv/bin/python benchmarks/gate_noise.py [--model synthetic:llama-tiny] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
from pathlib import Path
from statistics import median

from pytest_llmperf.gate.ab import AbConfig, run_ab
from pytest_llmperf.gate.calibrate import false_alarms, noise_by_series
from pytest_llmperf.measure.clocks import GC_DURING_TRIALS_ENV
from pytest_llmperf.store import HistoryStore

TEST = '''
import pytest


@pytest.mark.llmperf(model="{model}", backend="hf")
def test_generate(llm):
    llm.sweep()
'''


def _repo(root: Path, model: str) -> Path:
    repo = root / "project"
    repo.mkdir()
    (repo / "test_perf.py").write_text(TEST.format(model=model))
    for args in (["init", "-q", "-b", "main"], ["add", "."], ["commit", "-q", "-m", "perf test"]):
        subprocess.run(["git", "-C", str(repo), "-c", "user.name=b", "-c", "user.email=b@b", *args], check=True)
    return repo


def _measure(name: str, repo: Path, root: Path, args: argparse.Namespace, *, cpus: tuple[int, ...] | None,
             gc_during_trials: bool) -> list[str]:
    db = root / f"{name}.db"
    config = AbConfig(repo=repo, base="HEAD", head="HEAD", db=db, min_rounds=args.rounds, max_rounds=args.rounds,
                      cpus=cpus, pytest_args=(
                          f"--llmperf-model-cache={root / 'models'}", f"--llmperf-pool-dir={root / 'pool'}",
                          f"--llmperf-batch-sizes={args.batch_size}", "--llmperf-trials=10", "-q"))
    before = os.environ.get(GC_DURING_TRIALS_ENV)
    os.environ[GC_DURING_TRIALS_ENV] = "1" if gc_during_trials else "0"
    try:
        result = run_ab(config, log=lambda _: None)
    finally:
        if before is None:
            os.environ.pop(GC_DURING_TRIALS_ENV)
        else:
            os.environ[GC_DURING_TRIALS_ENV] = before
    with HistoryStore.open(db) as store:
        rows = noise_by_series(store.db, result.group, result.verdicts)
    lines = []
    for metric in ("tokens_per_s", "tpot_ms"):
        mine = [r for r in rows if r.metric == metric]
        within = median(r.within_cv for r in mine if r.within_cv is not None)
        between = median(r.between_cv for r in mine if r.between_cv is not None)
        detectable = median(r.detectable for r in mine if r.detectable is not None)
        lines.append(f"| {name} | {metric} | {within:.1%} | {between:.1%} | {detectable:.1%} | "
                     f"{len([v for v in false_alarms(result.verdicts) if v.subject.metric == metric])} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="synthetic:llama-tiny")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="A/A process pairs per configuration")
    parser.add_argument("--configs", default="all,no-pinning,gc-on,one-core",
                        help="configurations to run, comma-separated (default: %(default)s)")
    args = parser.parse_args()
    cores = tuple(sorted(os.sched_getaffinity(0)))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        repo = _repo(root, args.model)
        print(f"{args.model}, batch {args.batch_size}, {args.rounds} A/A rounds of 10 trials, cores {cores}")
        print("| configuration | metric | within-process CV | between-process CV | detectable change | false alarms |")
        print("|---|---|---|---|---|---|")
        configurations = {"all": (None, False), "no-pinning": ((), False), "gc-on": (None, True),
                          "one-core": ((cores[0],), False)}
        for name in args.configs.split(","):
            cpus, gc_on = configurations[name]
            for line in _measure(name, repo, root, args, cpus=cpus, gc_during_trials=gc_on):
                print(line, flush=True)


if __name__ == "__main__":
    main()
