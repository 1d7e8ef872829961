"""Peak memory of a span: CUDA allocator counters, or the host's peak resident set size.

The peak is the span's own: CUDA peak counters are reset when the span starts; on Linux the
kernel's RSS high-water mark (VmHWM) is reset through ``/proc/self/clear_refs``. Where that reset
is not allowed, a background thread samples RSS every few milliseconds instead (and says so).
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Protocol

import psutil

from pytest_llmperf.devices import cuda_index
from pytest_llmperf.results import MemoryPeak

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


class MemoryMeter(Protocol):
    def start(self) -> None:
        """Begin a span: forget every earlier peak."""

    def stop(self) -> MemoryPeak:
        """End the span and return its peak."""


class CudaMemoryMeter:
    def __init__(self, device: str):
        import torch

        self._torch = torch
        self._index = cuda_index(device)

    def start(self) -> None:
        self._torch.cuda.synchronize(self._index)
        self._torch.cuda.reset_peak_memory_stats(self._index)

    def stop(self) -> MemoryPeak:
        cuda = self._torch.cuda
        cuda.synchronize(self._index)
        return MemoryPeak(
            peak_bytes=int(cuda.max_memory_allocated(self._index)),
            reserved_bytes=int(cuda.max_memory_reserved(self._index)),
            method="cuda",
        )


def _vmhwm_bytes() -> int:
    match = re.search(r"^VmHWM:\s+(\d+)\s+kB", _STATUS.read_text(), re.MULTILINE)
    if match is None:
        raise OSError("no VmHWM in /proc/self/status")
    return int(match.group(1)) * 1024


def _reset_vmhwm() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
        _vmhwm_bytes()
        return True
    except OSError:
        return False


class HostMemoryMeter:
    """Peak RSS of this process during the span (the process that holds the model)."""

    def __init__(self, sample_interval_s: float = 0.002):
        self._interval = sample_interval_s
        self._sampler: threading.Thread | None = None
        self._stop = threading.Event()
        self._sampled_peak = 0

    def start(self) -> None:
        if _reset_vmhwm():
            return
        self._stop.clear()
        process = psutil.Process()
        self._sampled_peak = process.memory_info().rss

        def sample() -> None:
            while not self._stop.wait(self._interval):
                self._sampled_peak = max(self._sampled_peak, process.memory_info().rss)

        self._sampler = threading.Thread(target=sample, name="llmperf-rss-sampler", daemon=True)
        self._sampler.start()

    def stop(self) -> MemoryPeak:
        if self._sampler is None:
            return MemoryPeak(peak_bytes=_vmhwm_bytes(), reserved_bytes=None, method="vmhwm")
        self._stop.set()
        self._sampler.join()
        self._sampler = None
        peak = max(self._sampled_peak, psutil.Process().memory_info().rss)
        return MemoryPeak(peak_bytes=peak, reserved_bytes=None, method="sampled")


def memory_meter(device: str) -> MemoryMeter:
    return CudaMemoryMeter(device) if device.startswith("cuda") else HostMemoryMeter()
