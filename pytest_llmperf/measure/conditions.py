"""The machine state a process measured under: GPU clocks, power and temperature; CPU governors,
frequencies, affinity, thread counts and load.

These are what make one process's timings differ from another's on the same machine and code
(a GPU that boosts and throttles, a CPU governor that ramps, a busy host), so every run records
them at its start, and an unlocked GPU clock is warned about.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pytest_llmperf.measure import nvml
from pytest_llmperf.measure.nvml import GpuState

#: the variables that set the thread count of OpenMP, MKL and OpenBLAS
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

_CPU_MHZ = re.compile(r"^cpu MHz\s*:\s*([0-9.]+)", re.MULTILINE)


class UnlockedGpuClocksWarning(UserWarning):
    """The GPU clocks of a run are not locked, so its timings spread more between processes."""


@dataclass(frozen=True)
class CpuConditions:
    #: the cores this process may run on, sorted
    affinity: tuple[int, ...]
    #: the distinct scaling governors of those cores ("performance", "powersave", ...); None without cpufreq
    governors: tuple[str, ...] | None
    #: core -> current frequency in MHz, from cpufreq or else /proc/cpuinfo; None when neither is readable
    frequency_mhz: dict[int, float] | None
    #: OMP_NUM_THREADS, MKL_NUM_THREADS, OPENBLAS_NUM_THREADS as set (None where unset)
    thread_variables: dict[str, str | None]
    #: the 1-minute load average when the run started; None where the platform has none
    load_average_1m: float | None


@dataclass(frozen=True)
class Conditions:
    device_kind: str
    #: every GPU the process sees; empty on CPU runs and where NVML is missing
    gpus: tuple[GpuState, ...]
    cpu: CpuConditions

    @property
    def gpu_clocks_locked(self) -> bool | None:
        return all_clocks_locked(self.gpus)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def all_clocks_locked(gpus: Iterable[GpuState]) -> bool | None:
    """True when every GPU's clocks are locked, False when one's are not, None when unknown or no GPU."""
    locks = [g.clocks_locked for g in gpus]
    if False in locks:
        return False
    return None if not locks or None in locks else True


def usable_cores() -> tuple[int, ...]:
    """The cores this process may run on (its affinity mask), sorted."""
    if hasattr(os, "sched_getaffinity"):
        return tuple(sorted(os.sched_getaffinity(0)))
    return tuple(range(os.cpu_count() or 1))


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def scaling_governors(cores: tuple[int, ...], sysfs: Path = Path("/sys")) -> tuple[str, ...] | None:
    """The distinct cpufreq governors of ``cores``, sorted; None where no core has one (no cpufreq:
    most virtual machines)."""
    found = {g for c in cores if (g := _read(sysfs / f"devices/system/cpu/cpu{c}/cpufreq/scaling_governor"))}
    return tuple(sorted(found)) or None


def _cpuinfo_mhz(cores: tuple[int, ...], proc: Path) -> dict[int, float] | None:
    text = _read(proc / "cpuinfo")
    if text is None:
        return None
    per_core: dict[int, float] = {}
    for block in text.split("\n\n"):
        number = re.search(r"^processor\s*:\s*(\d+)", block, re.MULTILINE)
        mhz = _CPU_MHZ.search(block)
        if number and mhz and int(number.group(1)) in cores:
            per_core[int(number.group(1))] = float(mhz.group(1))
    return per_core or None


def cpu_frequencies(cores: tuple[int, ...], sysfs: Path = Path("/sys"),
                    proc: Path = Path("/proc")) -> dict[int, float] | None:
    """Each core's current frequency in MHz: cpufreq's ``scaling_cur_freq`` (kHz) where the kernel has
    it, else the "cpu MHz" lines of /proc/cpuinfo; None when neither is readable."""
    per_core: dict[int, float] = {}
    for c in cores:
        khz = _read(sysfs / f"devices/system/cpu/cpu{c}/cpufreq/scaling_cur_freq")
        if khz is not None and khz.isdigit():
            per_core[c] = int(khz) / 1000.0
    return per_core or _cpuinfo_mhz(cores, proc)


def load_average_1m() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def collect_cpu_conditions(sysfs: Path = Path("/sys"), proc: Path = Path("/proc")) -> CpuConditions:
    cores = usable_cores()
    return CpuConditions(
        affinity=cores,
        governors=scaling_governors(cores, sysfs),
        frequency_mhz=cpu_frequencies(cores, sysfs, proc),
        thread_variables={name: os.environ.get(name) for name in THREAD_VARIABLES},
        load_average_1m=load_average_1m(),
    )


def collect_conditions(device_kind: str) -> Conditions:
    """The state of this machine now; GPUs are read (through NVML) only for a "cuda" run."""
    gpus = tuple(nvml.gpu_states()) if device_kind == "cuda" else ()
    return Conditions(device_kind=device_kind, gpus=gpus, cpu=collect_cpu_conditions())


def unlocked_clocks_warning(conditions: Conditions) -> str | None:
    """What to tell the user when a GPU's clocks are not locked; None when they are, or cannot be told."""
    unlocked = [g for g in conditions.gpus if g.clocks_locked is False]
    if not unlocked:
        return None
    gpus = "; ".join(
        f"GPU {g.index} ({g.name or 'unknown model'}, {g.uuid}"
        + (f", up to {g.max_sm_clock_mhz} MHz SM / {g.max_memory_clock_mhz} MHz memory" if g.max_sm_clock_mhz else "")
        + ")"
        for g in unlocked
    )
    return (
        f"llmperf: the clocks of {gpus} are not locked. An unlocked GPU boosts and throttles with "
        f"temperature and power, so whole processes run at different clocks and their timings spread "
        f"apart (process-to-process spread), which hides regressions from the gate. Lock them before "
        f"measuring: `sudo nvidia-smi -i <uuid> --lock-gpu-clocks=<MHz>` (-lgc; a clock the GPU holds "
        f"under load, such as its base clock) and `sudo nvidia-smi -i <uuid> --lock-memory-clocks=<MHz>` "
        f"(-lmc); `nvidia-smi -rgc` and `-rmc` undo them. NVML cannot read a lock back: it is inferred "
        f"from the clock-event reasons and application clocks, and a lock at exactly the maximum clock "
        f"is not seen."
    )
