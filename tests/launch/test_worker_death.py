"""A pytest process killed outright (SIGKILL: no clean-up runs) takes its ranks with it.

The agents ask the kernel for SIGKILL when the process that started them dies, and the ranks when
their agent dies (PR_SET_PDEATHSIG), so nothing is left running a model for nobody. The ranks are
busy generating when it happens: an idle rank would also leave on its own, seeing its control
connection close, but a busy one reads nothing until its command is done.
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time

import psutil

from tests.launch.procs import group_env, kill_all, survivors

WORKER = """
import json, sys
from pathlib import Path

import psutil

import numpy as np

from pytest_llmperf.backends.base import LoadRequest
from pytest_llmperf.launch.distributed import GroupSpec
from pytest_llmperf.launch.group_launcher import GroupLauncher
from pytest_llmperf.results import GenerateConfig

checkpoint, log_dir, env = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
spec = GroupSpec(backend_id="hf-tp", world_size=2, device_kind="cpu", log_dir=Path(log_dir), timeout_s=120, env=env)
launcher = GroupLauncher(spec, labels=("cpu#0", "cpu#1"), independent_streams=False)
launcher.load(LoadRequest(Path(checkpoint), "float32", "cpu"))
print(json.dumps({
    "ranks": [h.pid for h in launcher.group.hellos],
    "agents": [p.pid for p in psutil.Process().children()],
    "all": [p.pid for p in psutil.Process().children(recursive=True)],
}), flush=True)
# hours of work, without progress messages (a rank writing to the closed connection would notice)
endless = GenerateConfig(batch_size=1, prompt_tokens=8, new_tokens=64, trials=10**6, warmups=0)
launcher.generate(endless, np.arange(8, dtype=np.int64).reshape(1, 8) + 10)
"""


def _first_line(proc: subprocess.Popen, timeout_s: float) -> str:
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(proc.stdout.readline()), daemon=True).start()
    try:
        return lines.get(timeout=timeout_s)
    except queue.Empty:
        raise AssertionError(f"the worker printed nothing within {timeout_s} s") from None


def test_a_killed_worker_takes_its_agents_and_ranks_with_it(llama, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    worker = subprocess.Popen(
        [sys.executable, str(script), str(llama.path), str(tmp_path / "logs"), json.dumps(group_env())],
        stdout=subprocess.PIPE, stderr=(tmp_path / "worker.err").open("wb"), text=True,
    )
    procs: list[psutil.Process] = []
    try:
        line = _first_line(worker, 120)
        assert line, f"the worker exited: {(tmp_path / 'worker.err').read_text()[-3000:]}"
        pids = json.loads(line)
        procs = [psutil.Process(pid) for pid in pids["all"]]
        assert set(pids["ranks"]) <= set(pids["all"]) and len(pids["ranks"]) == 2
        assert pids["agents"] and not set(pids["agents"]) & set(pids["ranks"])
        assert len(survivors(procs)) == len(procs), "the group is not all running before the kill"
        ranks = [p for p in procs if p.pid in pids["ranks"]]
        cpu_before = [p.cpu_times().user for p in ranks]
        time.sleep(1.5)  # into the endless generate: the ranks compute, and read nothing from the worker
        busy = [p.cpu_times().user - before for p, before in zip(ranks, cpu_before)]
        assert all(seconds > 0.1 for seconds in busy), f"the ranks are not generating: cpu seconds {busy}"

        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
        started = time.monotonic()
        left = survivors(procs, wait_s=5.0)
        assert not left, f"alive {time.monotonic() - started:.1f} s after the worker was killed: {left}"
    finally:
        worker.kill()
        worker.wait()
        kill_all(procs)
