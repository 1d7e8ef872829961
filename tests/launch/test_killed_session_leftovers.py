"""A pytest session killed outright (SIGKILL) during a ds-zero test: the next session removes what it left.

Its agents and ranks die with it (``test_worker_death``), but files survive a killed process: DeepSpeed's
/dev/shm all-reduce buffers (69 MB per rank) and the test's ``llmperf-*`` scratch folder with the rank
logs. The next session removes those of groups whose owner is dead, and leaves a live session's alone
(other pytest processes on the machine, pytest-xdist workers among them, run at the same time).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

INNER = """
import json
import os
import time
from pathlib import Path

import pytest


@pytest.mark.llmperf(model="synthetic:llama-tiny", dtype="float32", backend="ds-zero", world_size=2,
                     batch_sizes=[1], new_tokens=4, prompt_tokens=8, trials=1, warmups=0)
def test_group_up(llm):
    group = llm.launcher.group
    prefixes = [f"deepspeed_allreduce_buffer_{os.getuid()}_{h.master_addr}_{h.master_port}_" for h in group.hellos]
    shm = sorted({p.name for prefix in prefixes for p in Path("/dev/shm").glob(prefix + "*")})
    up = {"log_dir": str(group.spec.log_dir), "shm": shm, "ranks": [h.pid for h in group.hellos]}
    Path(os.environ["LLMPERF_TEST_UP_FILE"]).write_text(json.dumps(up))
    time.sleep(600)
"""

NOTHING = """
def test_nothing():
    pass
"""

UP_TIMEOUT_S = 400


class Session:
    """One pytest process in its own process group, with its own history, pool and marker file."""

    def __init__(self, name: str, root: Path, tmpdir: Path, model_cache: str, test_file: Path):
        self.up_file = root / f"{name}.up.json"
        self.output = root / f"{name}.out"
        env = {**os.environ, "TMPDIR": str(tmpdir), "LLMPERF_TEST_UP_FILE": str(self.up_file)}
        with self.output.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pytest", str(test_file), "--llmperf", f"--llmperf-model-cache={model_cache}",
                 f"--llmperf-db={root / name}.db", f"--llmperf-pool-dir={root / name}-pool",
                 "--llmperf-cpu-slots=2", "--llmperf-device=cpu", "--llmperf-progress=off",
                 "-p", "no:cacheprovider", f"--rootdir={root}", "-q"],
                cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_up(self) -> dict:
        deadline = time.monotonic() + UP_TIMEOUT_S
        while not self.up_file.exists() or not self.up_file.read_text():
            assert self.proc.poll() is None, f"the session ended before its group was up:\n{self.tail()}"
            assert time.monotonic() < deadline, f"no group up within {UP_TIMEOUT_S} s:\n{self.tail()}"
            time.sleep(0.5)
        time.sleep(0.2)  # the file is written in one call; let it be complete
        return json.loads(self.up_file.read_text())

    def kill(self) -> None:
        """SIGKILL the whole process group: pytest runs no clean-up of its own."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def tail(self) -> str:
        return self.output.read_text(errors="replace")[-4000:]


def _wait_gone(pids: list[int], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids):
        assert time.monotonic() < deadline, f"ranks {pids} still run after their session was killed"
        time.sleep(0.2)


def _leftovers(up: dict) -> tuple[Path, list[str]]:
    """The session's scratch folder (which holds the rank logs), and which of its /dev/shm buffers exist."""
    return Path(up["log_dir"]).parent, [n for n in up["shm"] if (Path("/dev/shm") / n).exists()]


def test_the_next_session_removes_what_a_killed_session_left_and_keeps_a_live_ones(
        tmp_path, llama, synthetic_cache, deepspeed_cpu_op):
    tmpdir = tmp_path / "tmp"  # the sessions' temporary folder: only their own scratch folders are in it
    tmpdir.mkdir()
    ds_test = tmp_path / "test_ds_zero.py"
    ds_test.write_text(INNER)
    nothing = tmp_path / "test_nothing.py"
    nothing.write_text(NOTHING)
    cache = str(synthetic_cache)
    killed = Session("killed", tmp_path, tmpdir, cache, ds_test)
    live = Session("live", tmp_path, tmpdir, cache, ds_test)
    ups: list[dict] = []
    try:
        killed_up = killed.wait_up()
        ups.append(killed_up)
        live_up = live.wait_up()
        ups.append(live_up)
        killed.kill()
        _wait_gone(killed_up["ranks"])

        scratch, shm = _leftovers(killed_up)
        assert killed_up["shm"], "ds-zero on CPU should all-reduce through /dev/shm buffers"
        assert scratch.is_dir() and shm == killed_up["shm"], "the kill left nothing: this test proves nothing"
        live_scratch, live_shm = _leftovers(live_up)
        assert live_scratch.is_dir() and live_shm == live_up["shm"] and live_shm

        after = Session("next", tmp_path, tmpdir, cache, nothing)
        assert after.proc.wait(timeout=300) == 0, after.tail()

        scratch, shm = _leftovers(killed_up)
        assert not shm, f"/dev/shm buffers of the killed session's group are left: {shm}"
        assert not scratch.exists(), f"the killed session's scratch folder is left: {sorted(scratch.rglob('*'))}"
        live_scratch, live_shm = _leftovers(live_up)
        assert live_shm == live_up["shm"], "a live group's /dev/shm buffers were removed"
        assert (Path(live_up["log_dir"]) / "rank-0.log").exists(), "a live group's rank logs were removed"
        assert live.proc.poll() is None, f"the live session ended:\n{live.tail()}"
    finally:
        for session in (killed, live):
            session.kill()
        for up in ups:
            _wait_gone(up["ranks"])
            shutil.rmtree(Path(up["log_dir"]).parent, ignore_errors=True)
            for name in up["shm"]:
                (Path("/dev/shm") / name).unlink(missing_ok=True)
