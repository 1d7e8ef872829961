"""DeepSpeed's CPU all-reduce op, which torch compiles the first time a process needs it.

torch guards each extension's build with a "baton": a ``lock`` file made with O_EXCL and removed when the
build ends. A process killed in between (a rank torn down by its group's timeout, a Ctrl-C) leaves that file
behind, and every later process that loads the op waits on it forever. So every process of this plugin loads
the op while holding an exclusive flock on the extensions folder (the kernel drops it when its holder dies),
and whoever holds that lock knows that a baton it finds is stale and removes it.

The folder is the plugin's own (a TORCH_EXTENSIONS_DIR set by the user is not used), one per Python
environment and torch version: the test process and its ranks, started with the same interpreter, find the
same one; two virtual environments sharing one would rebuild the op for each other; and no baton of
another program is ever touched.
The test process builds the op before it starts any rank (``prepare_host``), so that a first compile
(30-70 s) counts neither in load time nor against the rank timeout; a rank then only finds it built.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock

from pytest_llmperf.backends.base import BackendUnavailable, LoadRequest
from pytest_llmperf.settings import cache_home

#: the variable torch reads for where to build extensions (set only while this module loads the op)
EXTENSIONS_ENV = "TORCH_EXTENSIONS_DIR"
_LOCK_NAME = ".llmperf-build.lock"
_BATON_NAME = "lock"  # torch.utils.file_baton's file, in each extension's build folder


def extensions_dir() -> Path:
    """This Python environment's folder of compiled extensions (stable across processes and runs)."""
    import torch

    key = f"{os.path.realpath(sys.prefix)}|{torch.__version__}"
    return cache_home() / "torch-extensions" / hashlib.sha256(key.encode()).hexdigest()[:12]


def remove_stale_batons(directory: Path) -> list[Path]:
    """Remove every extension's build baton in ``directory``; only call this while holding its build lock."""
    removed = []
    for baton in directory.glob(f"*/{_BATON_NAME}"):
        baton.unlink(missing_ok=True)
        removed.append(baton)
    return removed


@contextmanager
def build_lock(directory: Path, timeout_s: float = -1) -> Iterator[list[Path]]:
    """Hold the folder's build lock, with stale batons removed; yields the batons it removed."""
    directory.mkdir(parents=True, exist_ok=True)
    with FileLock(directory / _LOCK_NAME, timeout=timeout_s):
        yield remove_stale_batons(directory)


@contextmanager
def _extensions_env(directory: Path) -> Iterator[None]:
    before = os.environ.get(EXTENSIONS_ENV)
    os.environ[EXTENSIONS_ENV] = str(directory)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(EXTENSIONS_ENV, None)
        else:
            os.environ[EXTENSIONS_ENV] = before


def load_cpu_comm_op(directory: Path | None = None, *, timeout_s: float = -1) -> None:
    """Build (first time) or load DeepSpeed's shared-memory all-reduce op into this process.

    Later calls in the same process cost nothing: DeepSpeed keeps the loaded op, and its communication
    layer then uses that one instead of loading it again.
    """
    from deepspeed.comm.torch import build_shm_op

    directory = directory or extensions_dir()
    with build_lock(directory, timeout_s), _extensions_env(directory):
        build_shm_op()


def prepare_host(request: LoadRequest) -> None:
    """The DeepSpeed backends' one-off work in the test process: on CPU, build the op the ranks will load."""
    if request.device != "cpu":
        return  # DeepSpeed's communication on CUDA goes through NCCL, without a JIT-compiled op
    try:
        load_cpu_comm_op()
    except RuntimeError as e:  # no compiler, no ninja, a failed compile: this machine cannot run it
        raise BackendUnavailable(
            f"DeepSpeed could not build its CPU communication op (it needs a C++ compiler and ninja): {e}"
        ) from e
