"""How close decoding comes to the memory-bandwidth floor.

Each decode step must read every weight of the rank and the KV cache so far; at the device's peak
bandwidth that takes ``step_bytes / bandwidth`` seconds. ``decode_bw_util`` is that floor divided by
the measured time per output token (1.0 = at the floor).
"""

from __future__ import annotations


def decode_step_bytes(weights_bytes: int, kv_cache_bytes_mid_decode: int) -> int:
    return weights_bytes + kv_cache_bytes_mid_decode


def decode_bw_util(step_bytes: int, tpot_ms: float, bandwidth_bytes_per_s: float) -> float:
    return step_bytes / (tpot_ms / 1000.0) / bandwidth_bytes_per_s
