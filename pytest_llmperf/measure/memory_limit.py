"""A real memory limit on a rank process, so that running out of memory can be exercised anywhere.

On CPU the limit is the address space (``RLIMIT_AS``): what the process maps now plus the headroom,
so the next allocation past it fails in the allocator as it would on a full machine. On CUDA it is the
caching allocator's per-process fraction of the device.
"""

from __future__ import annotations

import ctypes
import gc
import resource

#: glibc's ``mallopt`` parameters
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
#: glibc's initial mmap threshold: buffers this large or larger get their own mapping
_MMAP_THRESHOLD_BYTES = 128 * 1024


def _address_space_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmSize not found in /proc/self/status")


def _pin_glibc_malloc() -> None:
    """Make glibc give address space back when memory is freed, and stop it reserving more of it.

    Without this, an address-space limit does not behave like memory: glibc raises its mmap threshold
    each time a mapped buffer is freed, so later tensors of that size come from the heap, which is not
    given back while anything above them lives. After one out-of-memory generate the freed tensors
    then still count against the limit and a smaller batch that fitted before fails too. And every
    new malloc arena reserves 64 MiB of address space, swallowing the headroom at random moments.
    A fixed threshold keeps tensors in their own mappings (unmapped when freed), a fixed trim threshold
    gives back the heap's free top, one arena limit makes threads without an arena share the existing
    ones, and a trim now makes the limit's base what is in use. No-op where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL(None)
        mallopt, malloc_trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):
        return
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
    mallopt(_M_TRIM_THRESHOLD, _MMAP_THRESHOLD_BYTES)
    mallopt(_M_ARENA_MAX, 1)
    gc.collect()
    malloc_trim.argtypes = (ctypes.c_size_t,)
    malloc_trim(0)


def limit_memory(device: str, headroom_bytes: int) -> int:
    """Allow ``headroom_bytes`` more than this process uses now; returns the limit set, in bytes."""
    if device.startswith("cuda"):
        import torch

        index = torch.device(device).index or 0
        total = torch.cuda.get_device_properties(index).total_memory
        limit = min(total, torch.cuda.memory_allocated(index) + headroom_bytes)
        torch.cuda.set_per_process_memory_fraction(limit / total, index)
        return int(limit)
    _pin_glibc_malloc()
    limit = _address_space_bytes() + headroom_bytes
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    return limit
