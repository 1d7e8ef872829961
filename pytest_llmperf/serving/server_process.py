"""An inference server as a real subprocess: started on 127.0.0.1, waited for, watched, and stopped.

The server runs in a session of its own (its process group: a server's workers go with it) and is
killed when the test process dies (``PR_SET_PDEATHSIG``). Its output goes to a log that is kept; a
server that exits, or does not answer within its time, fails with the log's last lines.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pytest_llmperf.launch.distributed import tail
from pytest_llmperf.launch.exec_tied import tied_argv
from pytest_llmperf.launch.leftovers import new_scratch_dir, remove_scratch_dir
from pytest_llmperf.serving.errors import ServerFailed

__all__ = ["ServerCommand", "ServerFailed", "ServerProcess"]

#: seconds a stopping server has after SIGTERM before its process group is killed
STOP_WAIT_S = 10.0
LOG_LINES = 30


@dataclass(frozen=True)
class ServerCommand:
    """How to start one server and how to know it is ready."""

    argv: tuple[str, ...]
    port: int
    #: a GET of this path answers 200 once the server can take requests
    ready_path: str = "/health"
    env: tuple[tuple[str, str], ...] = ()
    #: what the server is, for messages ("llama.cpp's server", "vLLM's OpenAI server")
    name: str = "the server"
    #: start-up phases before "ready", each ending when the server's log first shows a line matching its
    #: regular expression (a phase whose line never shows is folded into the next)
    milestones: tuple[tuple[str, str], ...] = ()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class ServerProcess:
    def __init__(self, command: ServerCommand, process: subprocess.Popen[bytes], log: Path,
                 phases: Sequence[tuple[str, float]], scratch: Path | None = None):
        self.command = command
        self.log = log
        self.phases = tuple(phases)
        self._process = process
        self._scratch = scratch

    @property
    def url(self) -> str:
        return self.command.url

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def load_s(self) -> float:
        return sum(seconds for _, seconds in self.phases)

    @classmethod
    def start(cls, command: ServerCommand, log: Path, *, timeout_s: float,
              extra_env: Mapping[str, str] | None = None) -> ServerProcess:
        """Start the server and wait until it answers. Its phases: the command's milestones (each ending at
        its log line), then "ready" (until the ready path answers 200)."""
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **dict(command.env), **(extra_env or {}), "PYTHONUNBUFFERED": "1"}
        start_offset = log.stat().st_size if log.exists() else 0
        # the server's temporary files (vLLM's IPC sockets among them) go to a scratch folder of this process,
        # removed when the server stops, or by the next session if this process is killed
        scratch = new_scratch_dir()
        (scratch / "tmp").mkdir()
        env["TMPDIR"] = str(scratch / "tmp")
        started = time.perf_counter()
        try:
            with open(log, "ab") as out:
                process = subprocess.Popen(
                    tied_argv(command.argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    env=env, start_new_session=True,  # its own process group: Ctrl-C reaches pytest, which stops it
                )
        except BaseException:
            remove_scratch_dir(scratch)
            raise
        server = cls(command, process, log, [], scratch)
        watch = _LogWatch(log, start_offset, command.milestones)
        try:
            server._wait_ready(timeout_s, watch)
        except BaseException:
            server.stop()
            raise
        ready = time.perf_counter()
        marks = [(name, at) for name, at in watch.seen] + [("ready", ready)]
        phases, since = [], started
        for name, at in marks:
            phases.append((name, at - since))
            since = at
        server.phases = tuple(phases)
        return server

    def _wait_ready(self, timeout_s: float, watch: _LogWatch) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while True:
            self.check()
            watch.poll()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + self.command.ready_path, timeout=2.0).status_code == 200:
                    watch.poll()
                    return
            if time.monotonic() > deadline:
                raise ServerFailed(
                    f"{self.command.name} (pid {self.pid}) did not answer GET {self.url}{self.command.ready_path} "
                    f"within {timeout_s:.0f} s; its last output lines ({self.log}):\n{tail(self.log, LOG_LINES)}"
                )
            time.sleep(0.05)

    def peak_rss_bytes(self) -> int:
        """The peak resident set size of the server's processes so far (VmHWM), summed over its process group."""
        total = 0
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            with contextlib.suppress(OSError, ValueError, IndexError):
                # the fields after the command's closing parenthesis: state, ppid, pgrp, ...
                if int((proc / "stat").read_text().rsplit(")", 1)[1].split()[2]) != self._process.pid:
                    continue
                for line in (proc / "status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1]) * 1024
        return total

    def check(self, grace_s: float = 0.0) -> None:
        """ServerFailed, with the log's tail, when the server has exited, or exits within ``grace_s``: a server
        killed while it served resets its connections a moment before its exit can be seen."""
        try:
            code = self._process.wait(timeout=grace_s) if grace_s > 0 else self._process.poll()
        except subprocess.TimeoutExpired:
            code = None
        if code is not None:
            raise ServerFailed(f"{self.command.name} (pid {self.pid}) exited with status {code}; its last output "
                               f"lines ({self.log}):\n{tail(self.log, LOG_LINES)}")

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL after ``STOP_WAIT_S``; reaped either way."""
        if self._process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=STOP_WAIT_S)
        if self._process.poll() is None or _group_alive(self._process.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._process.pid, signal.SIGKILL)
        self._process.wait()
        if self._scratch is not None:
            remove_scratch_dir(self._scratch)


class _LogWatch:
    """Reads the lines a starting server writes and notes when each milestone's line first shows."""

    def __init__(self, log: Path, offset: int, milestones: tuple[tuple[str, str], ...]):
        import re

        self._log = log
        self._offset = offset
        self._pending = [(name, re.compile(pattern)) for name, pattern in milestones]
        self._partial = b""
        self.seen: list[tuple[str, float]] = []

    def poll(self) -> None:
        if not self._pending:
            return
        now = time.perf_counter()
        with open(self._log, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            text = line.decode(errors="replace")
            for i, (name, pattern) in enumerate(self._pending):
                if pattern.search(text):
                    # a later milestone seen first ends every earlier one at the same moment: they are folded
                    self.seen.append((name, now))
                    del self._pending[: i + 1]
                    break


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True
