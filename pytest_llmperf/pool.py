"""The device pool: which devices this machine has, and exclusive leases on them shared by every pytest process.

Several pytest processes (xdist workers, or separate runs) may benchmark on one machine at the same time. Two
benchmarks on one GPU would disturb each other's numbers, so a test leases whole devices before it starts its ranks.
The leases are flock-based lock files in one directory (``--llmperf-pool-dir``): the kernel drops a lock when its
holder dies, even by SIGKILL, so a crashed worker never keeps a device.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from filelock import BaseFileLock, FileLock, Timeout

from pytest_llmperf import devices as _devices
from pytest_llmperf.atomic import write_text_atomically
from pytest_llmperf.measure import nvml

#: the first wait between two attempts, and the longest one: short waits keep a freed device from sitting idle,
#: the cap keeps a long wait (hours, behind other tests) from spinning.
_FIRST_DELAY_S = 0.05
_MAX_DELAY_S = 0.5
_POOL_LOCK_NAME = "pool.lock"


class PoolTooSmall(Exception):
    """A lease asks for more devices than the pool has: waiting would never help."""


class LeaseTimeout(Exception):
    """The devices asked for were not all free within the lease timeout."""


@dataclass(frozen=True)
class PoolDevice:
    """One device of the pool, named the three ways its users need."""

    #: the device as torch in this process addresses it: "cuda:0", "cuda:1", ... (position among the visible
    #: devices) or "cpu"
    name: str
    #: a machine-wide identity, the same in every process whatever its CUDA_VISIBLE_DEVICES: names the lock file
    #: and is recorded in results (GPU UUID, else the physical index; "cpu0", "cpu1", ... for CPU slots)
    slot: str
    #: what a child process's CUDA_VISIBLE_DEVICES must contain to see this device (None on CPU)
    visible_id: str | None
    #: for humans and results: "cuda:1", "cpu#1"
    label: str


def discover(kind: str, cpu_slots: int) -> tuple[PoolDevice, ...]:
    """The pool's devices: the visible CUDA devices for kind "cuda", ``cpu_slots`` virtual slots for kind "cpu"."""
    if kind == "cpu":
        return tuple(PoolDevice("cpu", slot=f"cpu{i}", visible_id=None, label=f"cpu#{i}") for i in range(cpu_slots))
    if kind == "cuda":
        return _discover_cuda()
    raise ValueError(f"unknown device kind {kind!r}; expected 'cuda' or 'cpu'")


def _discover_cuda() -> tuple[PoolDevice, ...]:
    # NVML first: it gives UUIDs (stable across processes with different CUDA_VISIBLE_DEVICES) and does not
    # initialise CUDA in this process, which must stay fork-safe for the ranks it starts.
    gpus = nvml.visible_devices()
    if gpus:
        return tuple(_cuda_device(i, gpu.uuid) for i, gpu in enumerate(gpus))
    count = _devices.cuda_device_count()
    tokens = _visible_tokens(os.environ.get("CUDA_VISIBLE_DEVICES"))
    if tokens is None:
        return tuple(_cuda_device(i, str(i)) for i in range(count))
    # torch saw `count` devices: the first `count` entries of the variable, in its order.
    return tuple(_cuda_device(i, token) for i, token in enumerate(tokens[:count]))


def _visible_tokens(spec: str | None) -> list[str] | None:
    """CUDA_VISIBLE_DEVICES as its entries (indices or UUIDs), up to the first empty one as the runtime reads it."""
    if spec is None:
        return None
    tokens: list[str] = []
    for token in (t.strip() for t in spec.split(",")):
        if not token:
            break
        tokens.append(token)
    return tokens


def _cuda_device(position: int, physical: str) -> PoolDevice:
    return PoolDevice(name=f"cuda:{position}", slot=physical, visible_id=physical, label=f"cuda:{position}")


def _file_stem(slot: str) -> str:
    """A slot as a file name (old MIG identifiers contain slashes)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", slot)


def _new_lock(path: Path) -> BaseFileLock:
    # A separate object per use, never a shared or singleton one: a FileLock object is re-entrant, so a second
    # lease reusing it would "acquire" a device that this very process already holds. Separate objects open
    # separate descriptors, and flock excludes those from each other even inside one process.
    # thread_local=False: a lease may be released by another thread than the one that took it.
    return FileLock(path, thread_local=False)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


class Lease:
    """Devices held exclusively until ``release()`` (or the end of the ``with`` block, or this process)."""

    def __init__(self, devices: tuple[PoolDevice, ...], locks: list[BaseFileLock], owner_files: list[Path]) -> None:
        self.devices = devices
        self._locks = locks
        self._owner_files = owner_files

    @property
    def released(self) -> bool:
        return not self._locks

    def cuda_visible_devices(self) -> str | None:
        """The CUDA_VISIBLE_DEVICES value that shows a child process exactly these devices; None for CPU slots."""
        ids = [d.visible_id for d in self.devices if d.visible_id is not None]
        return ",".join(ids) if ids else None

    def release(self) -> None:
        """Give the devices back; calling it again does nothing."""
        locks, owner_files = self._locks, self._owner_files
        self._locks, self._owner_files = [], []
        for lock, owner_file in zip(locks, owner_files, strict=True):
            # The owner file goes first, while the lock is still ours: afterwards it may be the next holder's.
            with contextlib.suppress(OSError):
                owner_file.unlink(missing_ok=True)
            lock.release(force=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self.released else "held"
        return f"Lease({', '.join(d.label for d in self.devices)}; {state})"


@dataclass(frozen=True)
class DevicePool:
    """The devices of one kind on this machine, leased through lock files in ``lock_dir``.

    Picking devices happens under a pool-wide lock, held only for the moment it takes to try each device lock
    once, so two processes never each grab half of what both need (all-or-nothing, without deadlock).

    Known limit: there is no queue. A lease that needs many devices retries while leases of one device keep
    coming and going, and may starve behind them until its timeout; a fair scheduler is not worth its
    complexity here. The fix on the user's side is fewer parallel workers or a longer lease timeout.
    """

    devices: tuple[PoolDevice, ...]
    lock_dir: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "devices", tuple(self.devices))
        object.__setattr__(self, "lock_dir", Path(self.lock_dir))

    def lease(self, count: int, *, timeout_s: float, owner: str) -> Lease:
        """Take ``count`` devices (the lowest-numbered free ones), waiting up to ``timeout_s`` for them.

        ``owner`` (e.g. the test's node id) is recorded with the pid so that a waiting test can say who holds
        what. Raises PoolTooSmall at once if the pool can never satisfy ``count``, LeaseTimeout after the wait.
        """
        if count < 1:
            raise ValueError(f"a lease needs at least one device, got {count}")
        if count > len(self.devices):
            raise PoolTooSmall(
                f"world size {count} needs {_plural(count, 'device')}, the pool has {len(self.devices)}"
                f" ({self._size_hint()})"
            )
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        record = f"{owner} (pid {os.getpid()})"
        start = time.monotonic()
        deadline = start + max(timeout_s, 0.0)
        delay = _FIRST_DELAY_S
        busy: dict[PoolDevice, str] = {}
        while True:
            lease, now_busy = self._try_lease(count, record, deadline)
            if lease is not None:
                return lease
            busy = now_busy or busy  # an attempt that found the pool lock taken saw no devices
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LeaseTimeout(self._timeout_message(count, busy, time.monotonic() - start))
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, _MAX_DELAY_S)

    def _try_lease(self, count: int, record: str, deadline: float) -> tuple[Lease | None, dict[PoolDevice, str]]:
        """One attempt under the pool lock: the lease, or None and the busy devices with their owners."""
        pool_lock = _new_lock(self.lock_dir / _POOL_LOCK_NAME)
        try:
            pool_lock.acquire(timeout=max(deadline - time.monotonic(), 0.0), poll_interval=0.01)
        except Timeout:
            return None, {}
        try:
            taken: list[tuple[PoolDevice, BaseFileLock]] = []
            busy: dict[PoolDevice, str] = {}
            for device in self.devices:
                lock = _new_lock(self._path(device, ".lock"))
                try:
                    lock.acquire(timeout=0)
                except Timeout:
                    busy[device] = self._owner_of(device)
                    continue
                taken.append((device, lock))
                if len(taken) == count:
                    break
            if len(taken) < count:
                for _, lock in taken:
                    lock.release(force=True)
                return None, busy
            owner_files = [self._path(d, ".owner") for d, _ in taken]
            lease = Lease(tuple(d for d, _ in taken), [lock for _, lock in taken], owner_files)
            try:
                for owner_file in owner_files:
                    write_text_atomically(owner_file, record + "\n")  # the old owner or the new one
            except BaseException:
                lease.release()
                raise
            return lease, {}
        finally:
            pool_lock.release(force=True)

    def _path(self, device: PoolDevice, suffix: str) -> Path:
        return self.lock_dir / f"{_file_stem(device.slot)}{suffix}"

    def _owner_of(self, device: PoolDevice) -> str:
        try:
            return self._path(device, ".owner").read_text().strip() or "an unknown owner"
        except OSError:
            return "an unknown owner"

    def _size_hint(self) -> str:
        if self.devices and self.devices[0].visible_id is None:
            return "cpu slots: --llmperf-cpu-slots"
        if self.devices:
            return "visible CUDA devices: CUDA_VISIBLE_DEVICES"
        return "visible CUDA devices: CUDA_VISIBLE_DEVICES; cpu slots: --llmperf-cpu-slots"

    def _timeout_message(self, count: int, busy: dict[PoolDevice, str], waited_s: float) -> str:
        held = "; ".join(f"{d.label} [{d.slot}] held by {who}" for d, who in busy.items())
        return (
            f"waited {waited_s:.1f} s for {_plural(count, 'free device')}, the pool has {len(self.devices)}"
            f" ({', '.join(d.label for d in self.devices)}); busy: {held or 'the pool lock in ' + str(self.lock_dir)}."
            " Raise --llmperf-lease-timeout, or run fewer parallel workers (-n) so that fewer tests compete"
            " for the devices."
        )


def pool_for_device(requested: str, *, cpu_slots: int, lock_dir: Path) -> DevicePool:
    """The pool a test's ``device`` setting draws from: "cpu", "auto", "cuda" (every visible GPU) or "cuda:N"
    (that GPU alone). Raises DeviceUnavailable when it names CUDA devices this machine does not have."""
    if requested == "auto":
        requested = "cuda" if _devices.cuda_device_count() else "cpu"
    if requested == "cpu":
        return DevicePool(discover("cpu", cpu_slots), lock_dir)
    found = discover("cuda", cpu_slots)
    chosen = found if requested == "cuda" else tuple(d for d in found if d.name == requested)
    if not chosen:
        raise _devices.DeviceUnavailable(
            f"device {requested!r} asked for, but this machine has {len(found)} usable CUDA device(s)"
        )
    return DevicePool(chosen, lock_dir)


class DevicePools:
    """The pool of each ``device`` setting, discovered once per session: discovery asks CUDA and NVML, and
    every test function's collection needs the pool's size (world sizes "auto")."""

    def __init__(self, *, cpu_slots: int, lock_dir: Path):
        self._cpu_slots = cpu_slots
        self._lock_dir = lock_dir
        self._found: dict[str, DevicePool | _devices.DeviceUnavailable] = {}

    def get(self, device: str) -> DevicePool:
        """Raises DeviceUnavailable, every time it is asked, when this machine lacks the device."""
        if device not in self._found:
            try:
                self._found[device] = pool_for_device(device, cpu_slots=self._cpu_slots, lock_dir=self._lock_dir)
            except _devices.DeviceUnavailable as e:
                self._found[device] = e
        found = self._found[device]
        if isinstance(found, _devices.DeviceUnavailable):
            raise found
        return found

    def size(self, device: str) -> int:
        """Devices in the pool of ``device``; 1 where this machine has none (its tests skip with the reason)."""
        try:
            return len(self.get(device).devices)
        except _devices.DeviceUnavailable:
            return 1
