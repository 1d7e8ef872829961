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
