"""Tying a child process's life to its parent's, so that nothing outlives the test that started it.

Linux only: ``PR_SET_PDEATHSIG`` makes the kernel send SIGKILL to this process when its parent dies,
even when the parent is killed with SIGKILL and can run no clean-up of its own.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(expected_parent_pid: int | None = None) -> None:
    """Ask for SIGKILL when the parent dies; exit now if it already has (the request came too late).

    Without ``expected_parent_pid``, a parent of pid 1 (re-parented to init) counts as dead.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    parent = os.getppid()
    if parent != expected_parent_pid if expected_parent_pid is not None else parent == 1:
        os._exit(1)
