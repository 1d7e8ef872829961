"""NVIDIA devices through NVML: names, memory, bandwidth and energy without initialising CUDA.

NVML numbers devices in PCI order and ignores ``CUDA_VISIBLE_DEVICES``; ``visible_devices``
applies that variable (indices or UUIDs) so index ``i`` here is CUDA device ``i`` of this process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from typing import Any


@dataclass(frozen=True)
class GpuInfo:
    #: the CUDA index in this process (after CUDA_VISIBLE_DEVICES)
    index: int
    name: str
    uuid: str
    memory_bytes: int
    #: theoretical peak memory bandwidth (bytes/s) from the memory clock and bus width, if known
    memory_bandwidth_bytes_per_s: float | None


@cache
def _nvml() -> Any | None:
    """The initialised pynvml module, or None where NVML or the driver is missing."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception:
        return None


def _as_str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def driver_version() -> str | None:
    nvml = _nvml()
    if nvml is None:
        return None
    try:
        return _as_str(nvml.nvmlSystemGetDriverVersion())
    except Exception:
        return None


def _select_visible(handles: list[tuple[Any, str]], spec: str | None) -> list[tuple[Any, str]]:
    """Apply a CUDA_VISIBLE_DEVICES value to NVML's (handle, uuid) list, as the CUDA runtime does."""
    if spec is None:
        return handles
    chosen: list[tuple[Any, str]] = []
    for token in (t.strip() for t in spec.split(",")):
        if not token:
            break
        if token.lstrip("-").isdigit():
            i = int(token)
            if i < 0 or i >= len(handles):
                break  # the runtime stops at the first invalid entry
            chosen.append(handles[i])
        else:
            match = [h for h in handles if h[1].startswith(token) or h[1].removeprefix("GPU-").startswith(token)]
            if len(match) != 1:
                break
            chosen.append(match[0])
    return chosen


def _visible_handles(nvml: Any) -> list[tuple[Any, str]]:
    try:
        handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
        pairs = [(h, _as_str(nvml.nvmlDeviceGetUUID(h))) for h in handles]
    except Exception:
        return []
    return _select_visible(pairs, os.environ.get("CUDA_VISIBLE_DEVICES"))


def visible_devices() -> list[GpuInfo]:
    nvml = _nvml()
    if nvml is None:
        return []
    devices = []
    for index, (handle, uuid) in enumerate(_visible_handles(nvml)):
        devices.append(GpuInfo(
            index=index,
            name=_as_str(nvml.nvmlDeviceGetName(handle)),
            uuid=uuid,
            memory_bytes=int(nvml.nvmlDeviceGetMemoryInfo(handle).total),
            memory_bandwidth_bytes_per_s=_bandwidth(nvml, handle),
        ))
    return devices


def _bandwidth(nvml: Any, handle: Any) -> float | None:
    try:
        mem_clock_mhz = nvml.nvmlDeviceGetMaxClockInfo(handle, nvml.NVML_CLOCK_MEM)
        bus_width_bits = nvml.nvmlDeviceGetMemoryBusWidth(handle)
    except Exception:
        return None
    return memory_bandwidth(mem_clock_mhz, bus_width_bits)


def memory_bandwidth(mem_clock_mhz: float, bus_width_bits: int) -> float:
    """Peak bandwidth in bytes/s: two transfers per memory clock (DDR/HBM) across the bus.

    An H100 SXM reports 2619 MHz and 5120 bits: 2 * 2619e6 * 640 B = 3.35 TB/s, its data-sheet figure.
    """
    return 2.0 * mem_clock_mhz * 1e6 * bus_width_bits / 8.0


def energy_counter_mj(cuda_index: int) -> int | None:
    """The device's total-energy counter in millijoules since the driver loaded (None if unsupported)."""
    nvml = _nvml()
    if nvml is None:
        return None
    handles = _visible_handles(nvml)
    if cuda_index >= len(handles):
        return None
    try:
        return int(nvml.nvmlDeviceGetTotalEnergyConsumption(handles[cuda_index][0]))
    except Exception:
        return None


#: NVML's clock-event ("throttle") reason bits and the names the history records them by
CLOCK_EVENT_REASONS: tuple[tuple[int, str], ...] = (
    (0x001, "gpu_idle"),
    (0x002, "applications_clocks_setting"),
    (0x004, "sw_power_cap"),
    (0x008, "hw_slowdown"),
    (0x010, "sync_boost"),
    (0x020, "sw_thermal_slowdown"),
    (0x040, "hw_thermal_slowdown"),
    (0x080, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
    (0x200, "board_limit"),
    (0x400, "reliability"),
)
_APPLICATIONS_CLOCKS_SETTING = 0x002


def clock_event_reason_names(mask: int) -> tuple[str, ...]:
    """The names of the bits set in a clock-event reasons mask; a bit NVML added later is named by its value."""
    names = [name for bit, name in CLOCK_EVENT_REASONS if mask & bit]
    known = sum(bit for bit, _ in CLOCK_EVENT_REASONS)
    names += [f"0x{1 << i:x}" for i in range(64) if mask & ~known & (1 << i)]
    return tuple(names)


@dataclass(frozen=True)
class GpuState:
    """One GPU's clocks, power and temperature as NVML reports them now; None where a query failed
    (not supported on this GPU, no permission, an older driver)."""

    #: the CUDA index in this process (after CUDA_VISIBLE_DEVICES)
    index: int
    uuid: str
    name: str | None
    sm_clock_mhz: int | None
    memory_clock_mhz: int | None
    max_sm_clock_mhz: int | None
    max_memory_clock_mhz: int | None
    #: see :func:`clocks_locked`
    clocks_locked: bool | None
    persistence_mode: bool | None
    #: the reasons NVML gives for the clocks being where they are (``gpu_idle``, ``sw_power_cap``, ...)
    clock_event_reasons: tuple[str, ...] | None
    temperature_c: int | None
    power_limit_w: float | None


def _query(call: Any, *args: Any) -> Any | None:
    """One NVML query; None where it raises (NVMLError: not supported, no permission; or a binding
    too old to have the function)."""
    try:
        return call(*args)
    except Exception:
        return None


def _clock_event_reasons(nvml: Any, handle: Any) -> int | None:
    getter = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
        getattr(nvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None)  # the name before driver 535
    return None if getter is None else _query(getter, handle)


def clocks_locked(reasons: int | None, application: dict[str, tuple[int | None, int | None]]) -> bool | None:
    """Whether a GPU's clocks are held at a set value, inferred: NVML can set locked clocks
    (``nvidia-smi --lock-gpu-clocks``/``--lock-memory-clocks``) but has no query that reads them back.

    The rule: locked when the clock-event reasons include ``applications_clocks_setting`` (the
    driver holds the clocks at a value someone set: what locked clocks below the boost clock
    report), or when an application clock (``nvidia-smi -ac``) differs from its default
    (``application`` maps "sm" and "memory" to (target, default)). Otherwise not locked, when the
    reasons could be read; None when they could not and the application clocks show nothing. A lock
    at exactly the maximum clock leaves neither trace, so it reads as not locked.
    """
    if reasons is not None and reasons & _APPLICATIONS_CLOCKS_SETTING:
        return True
    if any(target is not None and default is not None and target != default
           for target, default in application.values()):
        return True
    return None if reasons is None else False


def _gpu_state(nvml: Any, index: int, handle: Any, uuid: str) -> GpuState:
    sm, mem = nvml.NVML_CLOCK_SM, nvml.NVML_CLOCK_MEM
    reasons = _clock_event_reasons(nvml, handle)
    application = {
        kind: (_query(nvml.nvmlDeviceGetClock, handle, clock, nvml.NVML_CLOCK_ID_APP_CLOCK_TARGET),
               _query(nvml.nvmlDeviceGetClock, handle, clock, nvml.NVML_CLOCK_ID_APP_CLOCK_DEFAULT))
        for kind, clock in (("sm", sm), ("memory", mem))
    }
    name = _query(nvml.nvmlDeviceGetName, handle)
    persistence = _query(nvml.nvmlDeviceGetPersistenceMode, handle)
    power_mw = _query(nvml.nvmlDeviceGetEnforcedPowerLimit, handle)
    return GpuState(
        index=index,
        uuid=uuid,
        name=None if name is None else _as_str(name),
        sm_clock_mhz=_query(nvml.nvmlDeviceGetClockInfo, handle, sm),
        memory_clock_mhz=_query(nvml.nvmlDeviceGetClockInfo, handle, mem),
        max_sm_clock_mhz=_query(nvml.nvmlDeviceGetMaxClockInfo, handle, sm),
        max_memory_clock_mhz=_query(nvml.nvmlDeviceGetMaxClockInfo, handle, mem),
        clocks_locked=clocks_locked(reasons, application),
        persistence_mode=None if persistence is None else persistence == nvml.NVML_FEATURE_ENABLED,
        clock_event_reasons=None if reasons is None else clock_event_reason_names(int(reasons)),
        temperature_c=_query(nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU),
        power_limit_w=None if power_mw is None else power_mw / 1000.0,
    )


def gpu_states() -> list[GpuState]:
    """The state of every GPU this process sees (CUDA index order); empty where NVML is missing."""
    nvml = _nvml()
    if nvml is None:
        return []
    return [_gpu_state(nvml, index, handle, uuid) for index, (handle, uuid) in enumerate(_visible_handles(nvml))]
