"""A real memory limit on a rank process, so that running out of memory can be exercised anywhere.

On CPU the limit is the address space (``RLIMIT_AS``): what the process maps now plus the headroom,
so the next allocation past it fails in the allocator as it would on a full machine. On CUDA it is the
caching allocator's per-process fraction of the device.
"""

from __future__ import annotations

import resource


def _address_space_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmSize not found in /proc/self/status")


def limit_memory(device: str, headroom_bytes: int) -> int:
    """Allow ``headroom_bytes`` more than this process uses now; returns the limit set, in bytes."""
    if device.startswith("cuda"):
        import torch

        index = torch.device(device).index or 0
        total = torch.cuda.get_device_properties(index).total_memory
        limit = min(total, torch.cuda.memory_allocated(index) + headroom_bytes)
        torch.cuda.set_per_process_memory_fraction(limit / total, index)
        return int(limit)
    limit = _address_space_bytes() + headroom_bytes
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    return limit
