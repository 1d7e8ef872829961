"""The series key: what makes two results comparable over time, and the one name people read for it.

A result belongs to exactly one series. The history, the regression gate and the dashboard all use
``SeriesKey``: its ``digest()`` is the ``series_key`` the history stores and every comparison matches on,
and its ``label`` is how a report names it. Nothing else defines comparability.

Where on its load axes a series was measured is a ``LoadPoint`` of named coordinates. A generate
configuration is the point (batch_size, prompt_tokens, new_tokens); a metric measured once per load has
none. Other kinds of series add coordinates of their own (a serving run's request_rate, concurrency):
they enter the digest only when set, so every series recorded before them keeps its key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

from pytest_llmperf.digest import canonical_digest

Coordinate = int | float

#: the coordinates every series has had since the first history: always in the digest, None when unset
BATCH_COORDINATES = ("batch_size", "prompt_tokens", "new_tokens")
#: how many hex digits of the digest the history stores
DIGEST_LENGTH = 32


@dataclass(frozen=True)
class LoadPoint:
    """Named coordinates of a series on its load axes, sorted by name; unset coordinates are left out."""

    coordinates: tuple[tuple[str, Coordinate], ...] = ()

    def __post_init__(self) -> None:
        names = [name for name, _ in self.coordinates]
        if names != sorted(set(names)):
            raise ValueError(f"load point coordinates must be named once each and sorted by name, not {names}")
        for name, value in self.coordinates:
            if not name.isidentifier():
                raise ValueError(f"load point coordinate name {name!r} is not an identifier (e.g. request_rate)")
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"load point coordinate {name}={value!r} must be a finite number")
            if name in BATCH_COORDINATES and not isinstance(value, int):
                raise ValueError(f"load point coordinate {name}={value!r} must be a whole number")

    @classmethod
    def of(cls, **named: Coordinate | None) -> LoadPoint:
        """``LoadPoint.of(batch_size=8, prompt_tokens=32, new_tokens=100)``; coordinates given as None are unset."""
        return cls(tuple(sorted((name, value) for name, value in named.items() if value is not None)))

    def get(self, name: str) -> Coordinate | None:
        return dict(self.coordinates).get(name)

    @property
    def batch_size(self) -> int | None:
        value = self.get("batch_size")
        return None if value is None else int(value)

    @property
    def prompt_tokens(self) -> int | None:
        value = self.get("prompt_tokens")
        return None if value is None else int(value)

    @property
    def new_tokens(self) -> int | None:
        value = self.get("new_tokens")
        return None if value is None else int(value)

    def extra(self) -> dict[str, Coordinate]:
        """The coordinates beyond the batch ones (those a history stores as JSON)."""
        return {name: value for name, value in self.coordinates if name not in BATCH_COORDINATES}

    def canonical(self) -> dict[str, Coordinate | None]:
        """What the series digest hashes: the batch coordinates always (None when unset), the others when set."""
        return {**{name: self.get(name) for name in BATCH_COORDINATES}, **self.extra()}

    @property
    def label(self) -> str:
        """"b8" for a batch, "request_rate=2.5" for other coordinates; "" for none. The prompt and new tokens of
        a batch are not shown: a test measures one of each."""
        parts = [f"b{self.batch_size}"] if self.batch_size is not None else []
        parts += [f"{name}={value:g}" for name, value in self.extra().items()]
        return " ".join(parts)


@dataclass(frozen=True, kw_only=True)
class SeriesKey:
    """One series: what was measured, where on its load axes, and in which environment."""

    test_id: str
    model_id: str
    model_config_hash: str
    backend: str
    variant: str
    dtype: str
    world_size: int
    point: LoadPoint = field(default_factory=LoadPoint)
    metric: str
    #: ``Environment.fingerprint()``: device model and count, driver/CUDA, library versions
    env_fingerprint: str
    #: the prompt set of a generate ("text"); None for seeded random token ids, the default, which every
    #: series recorded before prompt sets has: it enters the digest only when set
    prompts: str | None = None
    #: a serving load point's workload (``Workload.label``: "p32o32", "sharegpt"); None for every other series,
    #: and, like ``prompts``, in the digest only when set
    workload: str | None = None

    def canonical(self) -> dict[str, object]:
        """The fields the digest hashes, flat: the load point's coordinates sit beside the others."""
        return {"test_id": self.test_id, "model_id": self.model_id, "model_config_hash": self.model_config_hash,
                "backend": self.backend, "variant": self.variant, "dtype": self.dtype, "world_size": self.world_size,
                **self.point.canonical(), "metric": self.metric, "env_fingerprint": self.env_fingerprint,
                **({"prompts": self.prompts} if self.prompts is not None else {}),
                **({"workload": self.workload} if self.workload is not None else {})}

    @cached_property
    def _digest(self) -> str:
        return canonical_digest(self.canonical(), DIGEST_LENGTH)

    def digest(self) -> str:
        """The ``series_key`` of this series' results (computed once per key)."""
        return self._digest

    @property
    def label(self) -> str:
        """How reports name the series: ``suites/t.py::test_x[hf] b8 tokens_per_s``."""
        point = f" {self.point.label}" if self.point.label else ""
        prompts = f" prompts={self.prompts}" if self.prompts is not None else ""
        workload = f" {self.workload}" if self.workload is not None else ""
        return f"{self.test_id}{point}{prompts}{workload} {self.metric}"
