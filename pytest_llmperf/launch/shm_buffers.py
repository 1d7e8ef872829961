"""DeepSpeed's CPU all-reduce buffers: one /dev/shm file per rank, which no process of DeepSpeed removes.

DeepSpeed (``ops/csrc/cpu/comm/shm.cpp``) names them
``deepspeed_allreduce_buffer_<uid>_<MASTER_ADDR>_<MASTER_PORT>_<rank>``: no pid, so a group's buffers are
known by its rendezvous address, which each rank reports in its hello. Every rank maps its own and its
peers' buffers for as long as it lives, so a buffer that no process maps belongs to no live group.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

SHM_DIR = Path("/dev/shm")
_NAME = "deepspeed_allreduce_buffer"


def buffer_prefix(master_addr: str, master_port: str) -> str:
    """The name shared by the buffers of the group that met at ``master_addr:master_port``, before the rank."""
    return f"{_NAME}_{os.getuid()}_{master_addr}_{master_port}_"


def buffers(prefixes: Iterable[str]) -> list[Path]:
    if not SHM_DIR.is_dir():
        return []
    return sorted({path for prefix in prefixes for path in SHM_DIR.glob(prefix + "*")})


def remove_buffers(prefixes: Iterable[str]) -> list[Path]:
    """Remove these groups' buffers; only for a group whose ranks are known to be dead."""
    return _unlink(buffers(prefixes))


def remove_unmapped_buffers(prefixes: Iterable[str]) -> list[Path]:
    """Remove these groups' buffers that no live process maps.

    A group that meets at a port a dead group used has buffers of the same names; while its ranks live
    they map them, and they are left alone.
    """
    found = buffers(prefixes)
    if not found:
        return []
    mapped = mapped_shm_files()
    return _unlink([path for path in found if str(path) not in mapped])


def _unlink(paths: list[Path]) -> list[Path]:
    removed = []
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink()
            removed.append(path)
    return removed


def mapped_shm_files() -> set[str]:
    """The /dev/shm files that processes this user can inspect have mapped (from ``/proc/<pid>/maps``)."""
    mapped: set[str] = set()
    prefix = f"{SHM_DIR}/{_NAME}_"
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            text = maps.read_text(errors="replace")
        except OSError:  # gone, or another user's process (whose buffers carry its own uid)
            continue
        for line in text.splitlines():
            where = line.find(prefix)
            if where >= 0:
                mapped.add(line[where:].removesuffix(" (deleted)"))
    return mapped
