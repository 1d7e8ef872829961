"""A test double: the ``hf`` backend, run on every rank, failing on purpose where an environment variable says.

``LLMPERF_TEST_FAULT="<action>:<phase>:<rank>[:<skip>[:<delay_s>]]"``, read by each rank when the call happens:

* action: ``raise`` (an exception), ``hang`` (sleep forever), ``kill`` (SIGKILL itself), ``kill-held``
  (SIGKILL itself while a child process holds its control connection open for a second, as a forked
  worker would: its death shows there only after its peers' collectives have already failed);
* phase: ``load`` or ``generate`` (every ``backend.generate`` call: correctness tokens, warm-ups, trials);
* rank: the rank that fails; the others run normally;
* skip: how many calls of that phase go through first (default 0);
* delay_s: seconds the rank waits, after saying so, before it fails (default 0).

Before failing, the rank prints ``FAULT_MARK`` with the rank, action and phase, so a test can see
the rank's last output lines in the error.

The ranks are coupled like a tensor-parallel group: after each generate every rank joins an
all-reduce of its output, so the healthy ranks wait (in a collective) for the faulty one, as they
would in a real sharded model. ``faulty_ds_backend:FaultyDsBackend`` is the same double over
``ds-inference`` (AutoTP), whose CPU all-reduce spins on DeepSpeed's shared-memory buffers in /dev/shm.

Named by import path, ``faulty_backend:FaultyBackend``: the ranks need this directory on PYTHONPATH.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import ClassVar

import torch

from pytest_llmperf.backends.hf import HfBackend

FAULT_ENV = "LLMPERF_TEST_FAULT"
FAULT_MARK = "FAULTY-BACKEND-LAST-WORDS"


def _parse(text: str) -> tuple[str, str, int, int, float] | None:
    if not text:
        return None
    parts = text.split(":")
    actions, phases = ("raise", "hang", "kill", "kill-held"), ("load", "generate")
    if not 3 <= len(parts) <= 5 or parts[0] not in actions or parts[1] not in phases:
        raise ValueError(f"{FAULT_ENV}={text!r}: expected "
                         "'<raise|hang|kill|kill-held>:<load|generate>:<rank>[:<skip>[:<delay_s>]]'")
    skip = int(parts[3]) if len(parts) > 3 else 0
    delay_s = float(parts[4]) if len(parts) > 4 else 0.0
    return parts[0], parts[1], int(parts[2]), skip, delay_s


def _raise_deep(message: str, depth: int) -> None:
    """Raise from ``depth`` frames down: a traceback as long as a real library's, longer than a log's quoted tail.

    Two functions call each other, since Python shortens a traceback of one function calling itself.
    """
    if depth:
        _raise_deeper(message, depth - 1)
    raise RuntimeError(message)


def _raise_deeper(message: str, depth: int) -> None:
    _raise_deep(message, depth)


def _hold_control_connection(seconds: float) -> None:
    """Start a process that keeps this rank's connection to the test process open for ``seconds``."""
    import psutil

    port = int(os.environ["LLMPERF_CONTROL_ADDR"].rsplit(":", 1)[1])
    fds = [c.fd for c in psutil.Process().net_connections("tcp") if c.raddr and c.raddr.port == port]
    assert fds, "no control connection found"
    subprocess.Popen(["sleep", str(seconds)], pass_fds=fds, stdin=subprocess.DEVNULL)


class _Faults:
    """What the fault-injecting backends share: counting calls per phase and failing when told."""

    launch: ClassVar[str] = "ranks"
    #: join an all-reduce after each generate (a backend whose ranks do not talk on their own)
    couple: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self._fault_calls = {"load": 0, "generate": 0}
        self._fault_rank = int(os.environ.get("RANK", "0"))

    def load(self, request, span) -> None:
        self._fault_rank = request.rank
        self._maybe_fail("load")
        super().load(request, span)

    def generate(self, input_ids: torch.Tensor, new_tokens: int, clock=None) -> torch.Tensor:
        self._maybe_fail("generate")
        output = super().generate(input_ids, new_tokens, clock)
        if self.couple:
            self._couple(output)
        return output

    def _maybe_fail(self, phase: str) -> None:
        fault = _parse(os.environ.get(FAULT_ENV, ""))
        calls = self._fault_calls[phase]
        self._fault_calls[phase] = calls + 1
        if fault is None:
            return
        action, fault_phase, rank, skip, delay_s = fault
        if fault_phase != phase or rank != self._fault_rank or calls < skip:
            return
        print(f"{FAULT_MARK}: rank {rank} will {action} in {phase} (pid {os.getpid()})", flush=True)
        sys.stderr.flush()
        time.sleep(delay_s)
        if action == "raise":
            _raise_deep(f"injected fault: rank {rank} raises in {phase}", 15)
        if action == "hang":
            while True:
                time.sleep(3600)
        if action == "kill-held":
            _hold_control_connection(1.0)
        os.kill(os.getpid(), signal.SIGKILL)

    @staticmethod
    def _couple(output: torch.Tensor) -> None:
        """Every rank takes part in one all-reduce per generate, like a tensor-parallel forward."""
        import torch.distributed as dist

        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(output.sum().reshape(1).to(torch.float64))


class FaultyBackend(_Faults, HfBackend):
    id: ClassVar[str] = "faulty"
    couple: ClassVar[bool] = True
