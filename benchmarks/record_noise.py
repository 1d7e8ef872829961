"""Record this machine's process-to-process noise: many fresh pytest processes of one revision.

Each process is a whole ``pytest --llmperf`` run of one performance test (the hf backend on a synthetic
model, batch 1 and 8): it loads the model and times its trials, as every process of ``llmperf ab`` does.
Processes of the configurations below run interleaved (a round holds one process of each, in an order that
rotates), so that a drift of the machine over the recording falls on every configuration alike:

* ``all``: pinned to the cores this command may use with fixed thread counts, GC paused inside trials
  (what ``llmperf ab`` does by default);
* ``no-pinning``: no CPU affinity and no thread-count variables;
* ``gc-on``: the garbage collector may run inside timed trials;
* ``one-core``: pinned to the first core alone, one thread;
* ``one-thread``: pinned to the cores this command may use, one thread.

Writes every process's trials to a JSON file in the format of the H100 noise data (``jobs``, each with
``load_s`` and ``trials`` of ``bs``, ``e2e_s``, ``ttft_s``) plus each job's configuration, the load average
at its start and its wall time; then prints, per configuration, metric and batch, the median within-process
CV of the trials and the CV between the processes' medians (with a 95 % bootstrap interval).

    .venv/bin/python benchmarks/record_noise.py --processes 16 --out benchmarks/data/cpu_noise.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pytest_llmperf.environment import cpu_model, package_version
from pytest_llmperf.measure.clocks import GC_DURING_TRIALS_ENV

TEST = '''
import pytest


@pytest.mark.llmperf(model="{model}", backend="hf")
def test_generate(llm):
    llm.sweep()
'''

_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def configurations(cores: tuple[int, ...]) -> dict[str, tuple[tuple[int, ...], bool, int | None]]:
    """name -> (cores to pin to, () for none; whether the GC may run inside trials; threads, None: the library's
    default, without pinning)."""
    return {"all": (cores, False, len(cores)), "no-pinning": ((), False, None), "gc-on": (cores, True, len(cores)),
            "one-core": ((cores[0],), False, 1), "one-thread": (cores, False, 1)}


def _environment(threads: int | None, gc_on: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _THREAD_VARIABLES}
    env[GC_DURING_TRIALS_ENV] = "1" if gc_on else "0"
    env["PYTHONHASHSEED"] = "0"
    if threads is not None:
        for name in _THREAD_VARIABLES:
            env[name] = str(threads)
    return env


def run_process(project: Path, db: Path, args: argparse.Namespace, cpus: tuple[int, ...], gc_on: bool,
                threads: int | None) -> str:
    """One pytest process; the id of the run it recorded."""
    label = f"noise-{time.time_ns()}"
    command = [sys.executable, "-m", "pytest", "--llmperf", f"--llmperf-db={db}", f"--llmperf-label={label}",
               f"--llmperf-model-cache={project.parent / 'models'}", f"--llmperf-pool-dir={project.parent / 'pool'}",
               f"--llmperf-batch-sizes={args.batch_sizes}", f"--llmperf-trials={args.trials}",
               f"--rootdir={project}", "-p", "no:cacheprovider", "-q", "test_perf.py"]

    def pin() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)

    done = subprocess.run(command, cwd=project, env=_environment(threads, gc_on), preexec_fn=pin,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"a recording process failed ({done.returncode}):\n{done.stdout[-3000:]}\n"
                         f"{done.stderr[-3000:]}")
    with sqlite3.connect(db) as con:
        return con.execute("SELECT id FROM runs WHERE label = ?", [label]).fetchone()[0]


def job_record(db: Path, run_id: str) -> dict[str, object]:
    with sqlite3.connect(db) as con:
        load = con.execute("SELECT value FROM results WHERE run_id = ? AND metric = 'load_s'", [run_id]).fetchone()
        trials = con.execute(
            "SELECT t.batch_size, t.e2e_s, t.ttft_s FROM trials t JOIN measurements m ON m.id = t.measurement_id "
            "WHERE m.run_id = ? ORDER BY m.id, t.idx", [run_id]).fetchall()
    return {"load_s": load[0] if load else None,
            "trials": [{"bs": bs, "e2e_s": e2e, "ttft_s": ttft} for bs, e2e, ttft in trials]}


def _cv(values: np.ndarray) -> float:
    return float(values.std(ddof=1) / values.mean())


def summarise(jobs: list[dict], new_tokens: int) -> list[str]:
    rng = np.random.default_rng(0)
    lines = ["| configuration | batch | processes | within-process CV (median) | between-process CV [95 % CI] |",
             "|---|---|---|---|---|"]
    for name in dict.fromkeys(j["config"] for j in jobs):
        mine = [j for j in jobs if j["config"] == name]
        for bs in sorted({t["bs"] for j in mine for t in j["trials"]}):
            per_process = [np.array([bs * new_tokens / t["e2e_s"] for t in j["trials"] if t["bs"] == bs])
                           for j in mine]
            within = float(np.median([_cv(p) for p in per_process]))
            medians = np.array([np.median(p) for p in per_process])
            boot = [_cv(rng.choice(medians, len(medians))) for _ in range(2000)]
            low, high = np.quantile(boot, [0.025, 0.975])
            lines.append(f"| {name} | {bs} | {len(mine)} | {within:.1%} | {_cv(medians):.1%} [{low:.1%}, {high:.1%}] |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="synthetic:llama-tiny")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--processes", type=int, default=16, help="processes per configuration")
    parser.add_argument("--configs", default="all,no-pinning,gc-on,one-core")
    parser.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    args = parser.parse_args()
    cores = tuple(sorted(os.sched_getaffinity(0)))
    chosen = {name: configurations(cores)[name] for name in args.configs.split(",")}
    jobs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp) / "project"
        project.mkdir()
        (project / "test_perf.py").write_text(TEST.format(model=args.model))
        db = Path(tmp) / "noise.db"
        names = list(chosen)
        for round_ in range(args.processes):
            order = names[round_ % len(names):] + names[:round_ % len(names)]
            for name in order:
                cpus, gc_on, threads = chosen[name]
                load_at_start = os.getloadavg()[0]
                started = time.perf_counter()
                run_id = run_process(project, db, args, cpus, gc_on, threads)
                job = {"config": name, "round": round_, "load_avg_1m_at_start": load_at_start,
                       "wall_s": time.perf_counter() - started, **job_record(db, run_id)}
                jobs.append(job)
                _write(args.out, _record(args, cores, jobs))  # after every process: a crash keeps what was measured
                print(f"round {round_ + 1}/{args.processes} {name}: {job['wall_s']:.1f} s, load {load_at_start:.2f}",
                      file=sys.stderr, flush=True)
    print("\n".join(summarise(jobs, new_tokens=100)))


def _record(args: argparse.Namespace, cores: tuple[int, ...], jobs: list[dict]) -> dict[str, object]:
    return {
        "gpu": None, "cpu": cpu_model(), "cores": list(cores), "torch": package_version("torch"),
        "python": platform.python_version(),
        "model": f"{args.model}, hf backend, float32, prompt 32, 100 new tokens, greedy, {args.trials} trials "
                 f"after one warm-up per batch size",
        "command": " ".join(["benchmarks/record_noise.py",
                             *(os.path.relpath(a) if os.path.isabs(a) else a for a in sys.argv[1:])]),
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "jobs": jobs,
    }


def _write(path: Path, record: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".partial")
    temporary.write_text(json.dumps(record, indent=1) + "\n")
    temporary.replace(path)


if __name__ == "__main__":
    main()
