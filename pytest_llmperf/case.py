"""The ``llmperf`` marker, validated at collection, and the cases (model x backend) it expands to.

``@pytest.mark.llmperf(model=..., backend=..., budgets=..., trials=..., ...)``: every argument is
optional. A test whose marker names no model (or backend) runs once per model (backend) in the
``llmperf_models`` (``llmperf_backends``) setting.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pytest_llmperf.backends import BACKEND_IDS, backend_variants
from pytest_llmperf.budgets import Budget, BudgetError, merge_budgets, parse_budgets
from pytest_llmperf.models.spec import parse_model_spec
from pytest_llmperf.settings import DEFAULT_KNOBS, KNOB_NAMES, OPTIONS_BY_NAME, Knobs, Settings, resolve_knobs

MARKER = "llmperf"
MARKER_HELP = (
    "llmperf(model=, backend=, variant=, budgets=, trials=, warmups=, batch_sizes=, prompt_tokens=, "
    "new_tokens=, dtype=, device=, seed=): a performance test of an LLM; every argument is optional"
)
ALLOWED_ARGS = ("model", "backend", "variant", "budgets", *KNOB_NAMES)


class MarkerError(ValueError):
    """A marker argument that cannot be used; the message names the argument, the value and what is allowed."""


@dataclass(frozen=True)
class BenchCase:
    """One model under one backend, as a test asked for it."""

    model: str
    backend: str
    variant: str
    marker_knobs: Knobs
    budgets: tuple[Budget, ...]

    @property
    def id(self) -> str:
        return f"{parse_model_spec(self.model).name}-{self.backend}"

    def knobs(self, settings: Settings, call: Knobs = Knobs()) -> Knobs:
        """Resolved knobs: command line > arguments of the call > marker > ini file > defaults."""
        return resolve_knobs(settings.cli, call, self.marker_knobs, settings.ini, DEFAULT_KNOBS)


def _strings(arg: str, value: object) -> tuple[str, ...]:
    items = (value,) if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not items or not all(isinstance(v, str) for v in items):
        raise MarkerError(f"{arg}={value!r}: expected a string or a non-empty list of strings")
    return tuple(items)


def knob_value(name: str, value: object) -> Any:
    """A knob given in Python (marker or ``llm.generate(...)`` argument), checked strictly."""
    option = OPTIONS_BY_NAME[name]
    if name == "batch_sizes":
        items = [value] if isinstance(value, int) else value
        if not isinstance(items, list | tuple) or not all(type(v) is int for v in items):
            raise MarkerError(f"{name}={value!r}: expected an int or a list of ints, e.g. [1, 8, 32]")
        text = ",".join(str(v) for v in items)
    elif name in ("dtype", "device"):
        if not isinstance(value, str):
            raise MarkerError(f"{name}={value!r}: expected a string ({option.help})")
        text = value
    else:
        if type(value) is not int:
            raise MarkerError(f"{name}={value!r}: expected an int ({option.help})")
        text = str(value)
    try:
        return option.parse(text)
    except ValueError as e:
        raise MarkerError(f"{name}={value!r}: {e}") from None


def knobs_from(kwargs: Mapping[str, object]) -> Knobs:
    return Knobs(**{name: knob_value(name, kwargs[name]) for name in KNOB_NAMES if kwargs.get(name) is not None})


def cases_from_marker(args: tuple[object, ...], kwargs: Mapping[str, object], settings: Settings) -> list[BenchCase]:
    if args:
        raise MarkerError(f"positional arguments {args!r} are not accepted; use keywords: {', '.join(ALLOWED_ARGS)}")
    unknown = sorted(set(kwargs) - set(ALLOWED_ARGS))
    if unknown:
        raise MarkerError(f"unknown argument {', '.join(unknown)}; allowed: {', '.join(ALLOWED_ARGS)}")

    models = _strings("model", kwargs["model"]) if "model" in kwargs else settings.models
    for model in models:
        try:
            parse_model_spec(model)
        except ValueError as e:
            raise MarkerError(f"model={model!r}: {e}") from None
    backends = _strings("backend", kwargs["backend"]) if "backend" in kwargs else settings.backends
    for backend in backends:
        if backend not in BACKEND_IDS:
            raise MarkerError(f"backend={backend!r}: unknown backend; allowed: {', '.join(BACKEND_IDS)}")

    variant = kwargs.get("variant")
    if variant is not None and not isinstance(variant, str):
        raise MarkerError(f"variant={variant!r}: expected a string")
    for backend in backends:
        if variant is not None and variant not in backend_variants(backend):
            raise MarkerError(
                f"variant={variant!r}: backend {backend} has the variants {', '.join(backend_variants(backend))}"
            )

    try:
        marker_budgets = parse_budgets(kwargs["budgets"]) if "budgets" in kwargs else ()  # type: ignore[arg-type]
    except BudgetError as e:
        raise MarkerError(f"budgets={kwargs['budgets']!r}: {e}") from None
    budgets = merge_budgets(settings.ini_budgets, marker_budgets, settings.cli_budgets)
    knobs = knobs_from(kwargs)
    return [
        BenchCase(model=m, backend=b, variant=variant or backend_variants(b)[0], marker_knobs=knobs, budgets=budgets)
        for m in models
        for b in backends
    ]
