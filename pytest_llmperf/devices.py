"""Which device a test runs on: "auto", "cpu", "cuda" or "cuda:N", resolved against this machine."""

from __future__ import annotations

from pytest_llmperf.measure import nvml


class DeviceUnavailable(Exception):
    """The device asked for is not on this machine; the test is skipped with this reason."""


def cuda_device_count() -> int:
    """CUDA devices usable by torch here; 0 without a CUDA build of torch or without a driver."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def cuda_index(device: str) -> int:
    """"cuda:3" -> 3, "cuda" -> 0."""
    return int(device.split(":", 1)[1]) if ":" in device else 0


def resolve_device(requested: str) -> str:
    """"auto" -> "cuda:0" when CUDA is usable, else "cpu"; "cuda" -> "cuda:0"; "cuda:N" checked."""
    if requested == "cpu":
        return "cpu"
    count = cuda_device_count()
    if requested == "auto":
        return "cuda:0" if count else "cpu"
    index = cuda_index(requested)
    if index >= count:
        raise DeviceUnavailable(
            f"device {requested!r} asked for, but this machine has {count} usable CUDA device(s)"
            + ("" if count else " (torch.cuda.is_available() is False)")
        )
    return f"cuda:{index}"


def device_kind(device: str) -> str:
    """"cuda:1" -> "cuda", "cpu" -> "cpu"."""
    return "cuda" if device.startswith("cuda") else "cpu"


def device_memory_bytes(device: str) -> int | None:
    if device_kind(device) != "cuda":
        return None
    import torch

    return int(torch.cuda.get_device_properties(torch.device(device)).total_memory)


def device_bandwidth(device: str) -> float | None:
    """Peak memory bandwidth (bytes/s) of a CUDA device from NVML; None on CPU or when unknown."""
    if device_kind(device) != "cuda":
        return None
    index = cuda_index(device)
    gpus = nvml.visible_devices()
    return gpus[index].memory_bandwidth_bytes_per_s if index < len(gpus) else None


def cpu_threads(leased_slots: int, cpu_slots: int) -> int:
    """The threads ``leased_slots`` of the pool's ``cpu_slots`` CPU slots stand for: their share of the cores
    this process may run on, at least one."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores * leased_slots // max(1, cpu_slots))
