"""``llmperf ab`` for real on this machine: A/A runs that must not fail, and a head twice as slow that must.

Builds a throwaway git repository with a small suite (the hf backend on a synthetic model, batch 1 and 4)
and three commits: ``base``, ``same`` (a README change only: the same code) and ``slow`` (the backend's
generate sleeps as long as the model took, so it takes twice as long). Then runs the real command line,
``llmperf ab``, ``--aa`` times with ``--base base --head same`` and ``--slow`` times with ``--base base --head
slow``, all into one history (so later runs judge their processes against the noise earlier runs measured,
as on a CI runner), and prints each run's exit status, rounds and verdicts, and the counts.

    .venv/bin/python benchmarks/ab_on_this_machine.py --aa 20 --slow 10
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LLMPERF = str(Path(sys.executable).with_name("llmperf"))

BACKEND = '''
import time

from pytest_llmperf.backends.hf import HfBackend

#: the share of each generate's own time added as a sleep (1.0: twice as slow)
EXTRA = {extra}


class Timed(HfBackend):
    id = "timed-hf"

    def generate(self, input_ids, new_tokens):
        started = time.perf_counter()
        out = super().generate(input_ids, new_tokens)
        if EXTRA:
            time.sleep(EXTRA * (time.perf_counter() - started))
        return out
'''

SUITE = '''
import pytest


@pytest.mark.llmperf(model="{model}", backend="backend:Timed", world_size=1)
def test_generate(llm):
    llm.sweep()
'''


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), "-c", "user.name=b", "-c", "user.email=b@b", *args],
                          check=True, capture_output=True, text=True)
    return done.stdout.strip()


def make_repo(root: Path, model: str) -> dict[str, str]:
    repo = root / "project"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    (repo / "test_suite.py").write_text(SUITE.format(model=model))
    (repo / "backend.py").write_text(BACKEND.format(extra=0.0))
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "base")
    commits = {"base": _git(repo, "rev-parse", "HEAD")}
    (repo / "README").write_text("the same code\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "same")
    commits["same"] = _git(repo, "rev-parse", "HEAD")
    (repo / "backend.py").write_text(BACKEND.format(extra=1.0))
    _git(repo, "commit", "-q", "-am", "slow")
    commits["slow"] = _git(repo, "rev-parse", "HEAD")
    return commits


def run_ab(root: Path, base: str, head: str, args: argparse.Namespace) -> tuple[int, str, float]:
    repo = root / "project"
    command = [LLMPERF, "ab", "--repo", str(repo), "--base", base, "--head", head, f"--db={root / 'history.db'}",
               f"--max-rounds={args.max_rounds}", f"--detect={args.detect}", "--",
               f"--llmperf-model-cache={root / 'models'}", f"--llmperf-pool-dir={root / 'pool'}",
               f"--llmperf-batch-sizes={args.batch_sizes}", f"--llmperf-trials={args.trials}", "-q", "-p",
               "no:randomly"]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=repo, capture_output=True, text=True, check=False)
    return done.returncode, done.stdout + done.stderr, time.perf_counter() - started


def summary(output: str) -> str:
    head = re.search(r"llmperf gate: .*", output)
    rounds = re.search(r"llmperf gate: .* after (\d+) round", output)
    planned = re.search(r"(\d+) round\(s\) planned", output)
    return (f"{head.group(0) if head else 'no verdict line'}; rounds {rounds.group(1) if rounds else '?'}"
            f"{'/' + planned.group(1) if planned else ''}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--aa", type=int, default=20, help="A/A runs (base against the same code)")
    parser.add_argument("--slow", type=int, default=10, help="runs whose head is twice as slow")
    parser.add_argument("--model", default="synthetic:llama-tiny")
    parser.add_argument("--batch-sizes", default="1,4")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--max-rounds", type=int, default=6)
    parser.add_argument("--detect", default="50%")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        commits = make_repo(root, args.model)
        counts = {"aa": [0, 0], "slow": [0, 0]}
        plan = [("aa", "same")] * args.aa + [("slow", "slow")] * args.slow
        for i, (kind, head) in enumerate(plan, 1):
            code, output, seconds = run_ab(root, commits["base"], commits[head], args)
            if code not in (0, 1):
                print(output[-4000:])
                raise SystemExit(f"llmperf ab exited with {code}")
            counts[kind][0] += 1
            counts[kind][1] += code == 1
            print(f"{i:2} {kind:4} exit {code} in {seconds:5.0f} s: {summary(output)}", flush=True)
        print(f"A/A: {counts['aa'][1]} of {counts['aa'][0]} runs failed; twice as slow: {counts['slow'][1]} of "
              f"{counts['slow'][0]} runs failed")


if __name__ == "__main__":
    main()
