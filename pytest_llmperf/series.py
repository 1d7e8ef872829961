"""The series key: what makes two results comparable over time.

A result belongs to exactly one series. The store, the regression gate and the dashboards all use
``SeriesKey.digest()`` to decide what to compare; nothing else defines comparability.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class SeriesKey:
    test_id: str
    model_id: str
    model_config_hash: str
    backend: str
    variant: str
    dtype: str
    world_size: int
    #: None for metrics measured once per load (load_s, weights_bytes, ...)
    batch_size: int | None
    prompt_tokens: int | None
    new_tokens: int | None
    metric: str
    #: ``Environment.fingerprint()``: device model and count, driver/CUDA, library versions
    env_fingerprint: str

    def digest(self) -> str:
        canonical = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Subject:
    """One series as people name it: its key, and the parts of it that say what was measured (the gate's
    subject of a comparison, a dashboard's series)."""

    series_key: str
    test_id: str
    model_id: str
    backend: str
    variant: str
    dtype: str
    world_size: int
    batch_size: int | None
    metric: str

    @property
    def label(self) -> str:
        batch = f" b{self.batch_size}" if self.batch_size is not None else ""
        return f"{self.test_id}{batch} {self.metric}"
