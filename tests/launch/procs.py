"""Helpers of the launcher's acceptance tests: a group's environment, its processes, its /dev/shm files."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import psutil

from pytest_llmperf.launch.protocol import Hello
from pytest_llmperf.launch.shm_buffers import buffer_prefix

HERE = Path(__file__).resolve().parent
PROMPT_TOKENS = 8


def group_env(**extra: str) -> dict[str, str]:
    """GroupSpec.env of these tests: this directory importable (the test doubles)."""
    path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, **extra}


def descendants() -> dict[int, psutil.Process]:
    return {p.pid: p for p in psutil.Process().children(recursive=True)}


def group_processes(before: dict[int, psutil.Process], hellos: list[Hello]) -> list[psutil.Process]:
    """The processes a group started (agents and ranks): this process's descendants that are new since ``before``."""
    new = [p for pid, p in descendants().items() if pid not in before]
    pids = {p.pid for p in new}
    assert {h.pid for h in hellos} <= pids, "the ranks are not descendants of the test process"
    assert len(new) > len(hellos), "no launcher (elastic agent) process found above the ranks"
    return new


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def survivors(procs: list[psutil.Process], *, wait_s: float = 0.0) -> list[str]:
    """The processes still alive (after up to ``wait_s`` seconds), described; is_running() guards against pid reuse."""
    deadline = time.monotonic() + wait_s
    while True:
        alive = [p for p in procs if _alive(p)]
        if not alive or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    described = []
    for p in alive:
        try:
            described.append(f"{p.pid} {' '.join(p.cmdline())[:160]}")
        except psutil.Error:
            described.append(str(p.pid))
    return described


def kill_all(procs: list[psutil.Process]) -> None:
    """Clean up after a failed test, so that one failure does not leave processes behind for the others."""
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.kill()


def remove_shm_files(hellos: list[Hello]) -> None:
    for name in shm_files(hellos):
        (Path("/dev/shm") / name).unlink(missing_ok=True)


def shm_files(hellos: list[Hello]) -> list[str]:
    """DeepSpeed's /dev/shm all-reduce buffers of this group (named by uid, MASTER_ADDR and MASTER_PORT)."""
    names = set()
    for h in hellos:
        names.update(p.name for p in Path("/dev/shm").glob(buffer_prefix(h.master_addr, h.master_port) + "*"))
    return sorted(names)
