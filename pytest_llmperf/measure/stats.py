"""Summary statistics of repeated trials: median, quartiles, IQR and coefficient of variation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Stats:
    n: int
    median: float
    q1: float
    q3: float
    min: float
    max: float
    #: sample standard deviation / mean (ddof=1); 0.0 for a single value
    cv: float

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
        cv = float(a.std(ddof=1) / mean) if len(a) > 1 and mean != 0 else 0.0
        return cls(n=len(a), median=float(median), q1=float(q1), q3=float(q3),
                   min=float(a.min()), max=float(a.max()), cv=cv)
