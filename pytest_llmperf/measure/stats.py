"""Summary statistics of repeated trials: median, quartiles, IQR and coefficient of variation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Stats:
    n: int
    median: float
    q1: float
    q3: float
    min: float
    max: float
    #: sample standard deviation / |mean| (ddof=1); None for a single value, where no spread was measured
    cv: float | None

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    @classmethod
    def of(cls, values: Sequence[float]) -> Stats:
        if len(values) == 0:
            raise ValueError("Stats.of needs at least one value")
        import numpy as np  # here, not at import: the plugin module loads in every pytest session

        a = np.asarray(values, dtype=float)
        q1, median, q3 = np.percentile(a, [25, 50, 75])
        mean = float(a.mean())
        cv = None if len(a) < 2 else float(a.std(ddof=1) / abs(mean)) if mean != 0 else 0.0
        return cls(n=len(a), median=float(median), q1=float(q1), q3=float(q3),
                   min=float(a.min()), max=float(a.max()), cv=cv)

    def mapped(self, fn: Callable[[float], float], values: Sequence[float]) -> Stats:
        """These statistics through a monotonic ``fn`` (quantiles map to quantiles, swapped if it decreases);
        the CV is that of ``values``, the transformed samples."""
        q1, q3, low, high = fn(self.q1), fn(self.q3), fn(self.min), fn(self.max)
        cv = Stats.of(values).cv if values else None
        return Stats(n=self.n, median=fn(self.median), q1=min(q1, q3), q3=max(q1, q3),
                     min=min(low, high), max=max(low, high), cv=cv)
