"""Reading and writing quantities with units: byte sizes and metric values for humans."""

from __future__ import annotations

import re

from pytest_llmperf.measure.metrics import metric

_BYTE_UNITS = {
    "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_BYTES_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_bytes(text: str) -> float:
    """'2GiB' -> 2147483648.0; a bare number is bytes. Raises ValueError naming the allowed units."""
    m = _BYTES_RE.match(text)
    unit = m.group(2).lower() if m else ""
    if not m or (unit and unit not in _BYTE_UNITS):
        raise ValueError(
            f"{text!r} is not a byte size; write a number of bytes or a number with one of the units "
            "B, KB, MB, GB, TB, KiB, MiB, GiB, TiB (e.g. '2GiB')"
        )
    return float(m.group(1)) * _BYTE_UNITS[unit or "b"]


def format_bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def format_value(name: str, value: float | None) -> str:
    """A metric value with its unit, in the form a person reads it."""
    if value is None:
        return "-"
    unit = metric(name).unit
    if unit == "bytes":
        return format_bytes(value)
    if unit == "ratio":
        return f"{value:.1%}"
    if abs(value) >= 100:
        text = f"{value:.0f}"
    elif abs(value) >= 1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}"
