"""Energy of a span from the GPU's NVML total-energy counter (CUDA only)."""

from __future__ import annotations

from pytest_llmperf.devices import cuda_index
from pytest_llmperf.measure import nvml


class EnergyMeter:
    def __init__(self, index: int):
        self._index = index
        self._start_mj: int | None = None

    def start(self) -> None:
        self._start_mj = nvml.energy_counter_mj(self._index)

    def stop(self) -> float | None:
        """Joules used by the device since ``start``; None where the counter is unsupported."""
        end_mj = nvml.energy_counter_mj(self._index)
        if self._start_mj is None or end_mj is None:
            return None
        return (end_mj - self._start_mj) / 1000.0


def energy_meter(device: str) -> EnergyMeter | None:
    if not device.startswith("cuda"):
        return None
    return EnergyMeter(cuda_index(device))
