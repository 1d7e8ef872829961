"""What a killed test process leaves on disk, and its removal by the next one.

Processes die with the test process that started them (``lifetime``), but files do not: a test's scratch
folder (``llmperf-*`` in the temporary folder: rank logs, offloaded weights) and the /dev/shm buffers of
DeepSpeed's CPU all-reduce (``shm_buffers``). So each scratch folder holds an owner marker (the process
that made it, and the session that process belongs to), and each rank group a marker in its log folder
(which /dev/shm buffers are its). :func:`remove_dead_groups_leftovers`, at each session start and each
group start, removes the buffers of groups whose owner is dead, and the folders whose owner and session
are both dead; it never touches what a live process owns (other pytest sessions and pytest-xdist workers
run on the same machine at the same time) nor anything it cannot attribute.

Logs that a failure message cites (a rank's last lines, with its log's path) are kept with their folder
when the test ends, so the path still leads somewhere after the session; the next session removes them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from pytest_llmperf.atomic import write_text_atomically
from pytest_llmperf.launch.shm_buffers import remove_unmapped_buffers

SCRATCH_PREFIX = "llmperf-"
OWNER_FILE = "llmperf-owner.json"
GROUP_FILE = "llmperf-group.json"
#: in a log folder: a failure message cites its logs, so it outlives its test
CITED_FILE = "llmperf-cited"
#: set by pytest-xdist in its workers, whose session is their parent process (the controller)
_XDIST_WORKER_ENV = "PYTEST_XDIST_WORKER"


@dataclass(frozen=True)
class ProcessId:
    """A process, told apart from a later one given the same pid by its start time."""

    pid: int
    started: float

    @classmethod
    def of(cls, pid: int) -> ProcessId:
        return cls(pid, psutil.Process(pid).create_time())

    def alive(self) -> bool:
        try:
            proc = psutil.Process(self.pid)
            return abs(proc.create_time() - self.started) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
        except psutil.Error:  # not ours to inspect: counted as alive, so nothing of it is touched
            return True


@dataclass(frozen=True)
class Owner:
    host: str
    process: ProcessId
    #: the test session: the process itself, or under pytest-xdist the controller that reports its failures
    session: ProcessId

    @classmethod
    def current(cls) -> Owner:
        session = os.getppid() if os.environ.get(_XDIST_WORKER_ENV) else os.getpid()
        return cls(socket.gethostname(), ProcessId.of(os.getpid()), ProcessId.of(session))

    @classmethod
    def read(cls, folder: Path) -> Owner | None:
        """The folder's owner; None where there is no readable marker (then nothing there is touched)."""
        try:
            data = json.loads((folder / OWNER_FILE).read_text())
            return cls(str(data["host"]), ProcessId(**data["process"]), ProcessId(**data["session"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None


def new_scratch_dir() -> Path:
    """A scratch folder of this process in the temporary folder, marked with its owner."""
    folder = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX))
    write_text_atomically(folder / OWNER_FILE, json.dumps(asdict(Owner.current())))
    return folder


def remove_scratch_dir(folder: Path) -> None:
    """Remove a scratch folder at the end of its test, except log folders a failure message cites."""
    cited = [child for child in folder.iterdir() if (child / CITED_FILE).exists()] if folder.is_dir() else []
    if not cited:
        shutil.rmtree(folder, ignore_errors=True)
        return
    for child in folder.iterdir():
        if child not in cited and child.name != OWNER_FILE:
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)


def record_group(log_dir: Path, shm_prefixes: list[str]) -> None:
    """Note in a group's log folder which /dev/shm buffers are its (before its ranks create any)."""
    write_text_atomically(log_dir / GROUP_FILE, json.dumps({"shm_prefixes": shm_prefixes}))


def keep_cited_logs(log_dir: Path) -> None:
    """A failure message names logs in ``log_dir``: keep them after the test (see the module's docstring)."""
    with contextlib.suppress(OSError):
        (log_dir / CITED_FILE).touch()


def remove_dead_groups_leftovers(temp_dir: Path | None = None) -> list[Path]:
    """Remove what rank groups of dead processes left: their /dev/shm buffers and scratch folders.

    ``temp_dir``: where scratch folders are made (the temporary folder by default). Returns what was removed.
    """
    removed: list[Path] = []
    host = socket.gethostname()
    for folder in sorted(Path(temp_dir or tempfile.gettempdir()).glob(SCRATCH_PREFIX + "*")):
        owner = Owner.read(folder)
        if owner is None or owner.host != host or owner.process.alive():
            continue
        for marker in folder.glob(f"*/{GROUP_FILE}"):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                removed += remove_unmapped_buffers(json.loads(marker.read_text())["shm_prefixes"])
        if not owner.session.alive():
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed
