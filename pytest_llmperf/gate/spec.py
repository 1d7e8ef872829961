"""A test's gate settings: the minimum effect per metric, and an acknowledged regression.

Written as ``min_effect`` in the ini file or on the command line (``0.05``, or ``0.05 load_s=0.2
tokens_per_s=0.03``: a default, then per-metric values), and in the marker as a number or a mapping
(``min_effect={"load_s": 0.2}``); ``accept_regression="why"`` in the marker acknowledges an intended
regression of that test.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from pytest_llmperf.measure.metrics import METRICS

#: the smallest relative change the gate calls a regression or an improvement, unless told otherwise
DEFAULT_MIN_EFFECT = 0.05

#: the key of the default in a ``min_effect`` mapping
ANY_METRIC = "*"


def _fraction(what: str, value: object) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number such as 0.05 (5 %), not {value!r}") from None
    if not 0 < number < 10:
        raise ValueError(f"{what} must be a fraction above 0 (0.05 is 5 %), not {value!r}")
    return number


def _metric_name(name: str, whole: object) -> str:
    if name != ANY_METRIC and name not in METRICS:
        raise ValueError(f"min_effect {whole!r}: unknown metric {name!r}; known metrics: {', '.join(METRICS)}")
    return name


def parse_min_effect(value: object) -> tuple[tuple[str, float], ...]:
    """A number, a mapping of metric to number, or text ``"0.05 load_s=0.2"``; ``(("*", x), ...)`` pairs."""
    if isinstance(value, Mapping):
        return tuple((_metric_name(str(k), value), _fraction(f"min_effect[{k!r}]", v)) for k, v in value.items())
    if isinstance(value, int | float) and not isinstance(value, bool):
        return ((ANY_METRIC, _fraction("min_effect", value)),)
    if not isinstance(value, str):
        raise ValueError(f"min_effect must be a number, a mapping of metric to number, or text, not {value!r}")
    pairs = []
    for part in value.replace(",", " ").split():
        name, sep, number = part.partition("=")
        if not sep:
            name, number = ANY_METRIC, part
        pairs.append((_metric_name(name.strip(), value), _fraction(f"min_effect {part!r}", number)))
    return tuple(pairs)


def matches_test_id(pattern: str, test_id: str) -> bool:
    """``*`` matches any text; everything else, brackets of parametrized ids included, stands for itself."""
    return re.fullmatch(".*".join(re.escape(part) for part in pattern.split("*")), test_id, re.DOTALL) is not None


@dataclass(frozen=True)
class GateSpec:
    """Each layer's pairs, highest precedence first (command line, marker, ini)."""

    layers: tuple[tuple[tuple[str, float], ...], ...] = ()
    #: why an intended regression of this test is accepted (marker ``accept_regression``)
    accept: str | None = None

    def min_effect(self, metric: str) -> float:
        """The first layer that sets this metric, else the first that sets a default, else 5 %."""
        for wanted in (metric, ANY_METRIC):
            for layer in self.layers:
                for name, value in layer:
                    if name == wanted:
                        return value
        return DEFAULT_MIN_EFFECT

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> GateSpec:
        """The inverse of ``dataclasses.asdict`` (which is how records travel between processes)."""
        layers = d.get("layers") or ()
        return cls(layers=tuple(tuple((str(n), float(v)) for n, v in layer) for layer in layers),  # type: ignore
                   accept=d.get("accept"))  # type: ignore[arg-type]

    def to_json(self) -> dict[str, object]:
        metrics = {name for layer in self.layers for name, _ in layer} | {ANY_METRIC}
        return {"min_effect": {m: self.min_effect(m) for m in sorted(metrics)}, "accept": self.accept}
