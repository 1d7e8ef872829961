"""The vLLM engine process, seen from the test process: started, asked, and closed.

It runs ``pytest_llmperf.backends.vllm_engine`` under vLLM's Python, connects back over an
authenticated ``multiprocessing.connection`` (as a rank does), and dies with the test process. Its
output goes to a log file; when it fails or dies, the error quotes the log's last lines.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, Listener
from pathlib import Path
from typing import Any

from pytest_llmperf.backends.vllm_protocol import ADDRESS_ENV, KEY_ENV, PARENT_PID_ENV, Close, Failed, Phase
from pytest_llmperf.launch.distributed import tail

#: seconds one message (a load included) may take; ``LLMPERF_VLLM_TIMEOUT_S`` overrides
TIMEOUT_ENV = "LLMPERF_VLLM_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 3600.0
#: seconds ``close`` waits for the process to exit before killing it
CLOSE_WAIT_S = 30.0
LOG_LINES = 30


class EngineFailed(Exception):
    """The vLLM engine process raised, died or did not answer; the message quotes its error and log."""


class EngineProcess:
    def __init__(self, process: subprocess.Popen[bytes], conn: Connection, log: Path):
        self._process = process
        self._conn: Connection | None = conn
        self.log = log
        self.pid = process.pid

    @classmethod
    def start(cls, python: Path, env: dict[str, str], log: Path, timeout_s: float | None = None) -> EngineProcess:
        """Start the process and wait for it to connect back."""
        timeout = timeout_s if timeout_s is not None else _timeout_s()
        key = secrets.token_bytes(32)
        with Listener(("127.0.0.1", 0), authkey=key) as listener:
            host, port = listener.address
            env = {**env, ADDRESS_ENV: f"{host}:{port}", KEY_ENV: key.hex(), PARENT_PID_ENV: str(os.getpid()),
                   "PYTHONUNBUFFERED": "1"}
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "ab") as out:
                process = subprocess.Popen(
                    [str(python), "-m", "pytest_llmperf.backends.vllm_engine"], stdin=subprocess.DEVNULL,
                    stdout=out, stderr=subprocess.STDOUT, env=env,
                    start_new_session=True,  # Ctrl-C reaches pytest, which closes the engine
                )
            try:
                conn = _accept(listener, process, log, timeout)
            except BaseException:
                _kill(process)
                raise
        return cls(process, conn, log)

    def call(self, message: Any, what: str, on_phase: Callable[[str], None] | None = None) -> Any:
        """Send one message and return the reply; ``Phase`` announcements on the way go to ``on_phase``."""
        if self._conn is None:
            raise EngineFailed(f"the vLLM engine process is closed; cannot {what}")
        try:
            self._conn.send(message)
        except OSError:
            self._died(what)
        deadline = time.monotonic() + _timeout_s()
        while True:
            if not self._conn.poll(0.2):
                if self._process.poll() is not None:
                    self._died(what)
                if time.monotonic() > deadline:
                    self.close()
                    raise EngineFailed(f"the vLLM engine process did not {what} within {_timeout_s():.0f} s "
                                       f"({TIMEOUT_ENV}); it was stopped. Its last output lines:\n{self._tail()}")
                continue
            try:
                reply = self._conn.recv()
            except (EOFError, OSError):
                self._died(what)
            if isinstance(reply, Phase):
                if on_phase is not None:
                    on_phase(reply.name)
                continue
            if isinstance(reply, Failed):
                raise EngineFailed(f"vLLM failed to {what}: {reply.error_type}: {reply.error}\n"
                                   f"in the vLLM engine process:\n{reply.traceback}")
            return reply

    def _tail(self, quoted: str | None = None) -> str:
        return tail(self.log, LOG_LINES, quoted=quoted)

    def _died(self, what: str) -> Any:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout=5)
        code = self._process.poll()
        self._release()
        raise EngineFailed(f"the vLLM engine process (pid {self.pid}) died while asked to {what} "
                           f"(exit status {code}); its last output lines ({self.log}):\n{self._tail()}")

    def alive(self) -> bool:
        return self._process.poll() is None

    def close(self) -> None:
        """Ask the process to end; kill it if it does not within ``CLOSE_WAIT_S``."""
        if self._conn is not None and self.alive():
            with contextlib.suppress(OSError, EOFError):
                self._conn.send(Close())
                if self._conn.poll(CLOSE_WAIT_S):
                    self._conn.recv()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout=CLOSE_WAIT_S)
        _kill(self._process)
        self._release()

    def _release(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _timeout_s() -> float:
    value = os.environ.get(TIMEOUT_ENV)
    try:
        return float(value) if value else DEFAULT_TIMEOUT_S
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV}={value!r}: expected a number of seconds") from None


def _accept(listener: Listener, process: subprocess.Popen[bytes], log: Path, timeout_s: float) -> Connection:
    """The process's connection; EngineFailed with its log when it exits or takes too long first."""
    import threading

    accepted: list[Connection | BaseException] = []

    def accept() -> None:
        try:
            accepted.append(listener.accept())
        except BaseException as exc:  # closed while waiting, or a failed authentication
            accepted.append(exc)

    thread = threading.Thread(target=accept, name="llmperf-vllm-accept", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not accepted:
        thread.join(0.2)
        if accepted:
            break
        if process.poll() is not None:
            raise EngineFailed(f"the vLLM engine process exited with status {process.returncode} before it "
                               f"connected; its last output lines ({log}):\n{tail(log, LOG_LINES)}")
        if time.monotonic() > deadline:
            raise EngineFailed(f"the vLLM engine process did not connect within {timeout_s:.0f} s; "
                               f"its last output lines ({log}):\n{tail(log, LOG_LINES)}")
    item = accepted[0]
    if isinstance(item, BaseException):
        raise EngineFailed(f"the vLLM engine process could not connect: {item}")
    return item


def _kill(process: subprocess.Popen[bytes]) -> None:
    """Kill a live process and what it started (its session's group: vLLM's workers, compile workers).

    Only while it is alive: its pid, the group's id, is not reused until it is reaped."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.kill()
    process.wait()
