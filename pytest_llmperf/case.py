"""The ``llmperf`` marker, validated at collection, and the cases (model x backend) it expands to.

``@pytest.mark.llmperf(model=..., backend=..., budgets=..., trials=..., ...)``: every argument is
optional. A test whose marker names no model (or backend) runs once per model (backend) in the
``llmperf_models`` (``llmperf_backends``) setting.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pytest_llmperf.backends import BACKEND_IDS, backend_entry, backend_variants, is_import_path
from pytest_llmperf.budgets import Budget, BudgetError, merge_budgets, parse_budgets
from pytest_llmperf.gate.spec import GateSpec, parse_min_effect
from pytest_llmperf.models.spec import parse_model_spec
from pytest_llmperf.settings import DEFAULT_KNOBS, KNOB_NAMES, Knobs, Settings, knob_from_python, resolve_knobs

MARKER = "llmperf"
MARKER_HELP = (
    "llmperf(model=, backend=, variant=, world_size=, budgets=, trials=, warmups=, batch_sizes=, prompt_tokens=, "
    "new_tokens=, prompts=, workload=, dtype=, device=, seed=, memory_headroom=, min_effect=, accept_regression=): "
    "a performance test of an LLM; every argument is optional"
)
ALLOWED_ARGS = ("model", "backend", "variant", "world_size", "budgets", *KNOB_NAMES, "min_effect", "accept_regression")


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
    #: ranks (multi-process backends) or devices of the one process (accelerate)
    world_size: int = 1
    gate: GateSpec = GateSpec()

    @property
    def id(self) -> str:
        """``<model>-<backend>``, then ``-<variant>`` unless it is the backend's default, then ``-ws<N>`` if N > 1."""
        parts = [parse_model_spec(self.model).name, self.backend]
        if self.variant != backend_variants(self.backend)[0]:
            parts.append(self.variant)
        if self.world_size != 1:
            parts.append(f"ws{self.world_size}")
        return "-".join(parts)

    def knobs(self, settings: Settings, call: Knobs = Knobs()) -> Knobs:
        """Resolved knobs: command line > arguments of the call > marker > ini file > defaults."""
        return resolve_knobs(settings.cli, call, self.marker_knobs, settings.ini, DEFAULT_KNOBS)


def _strings(arg: str, value: object) -> tuple[str, ...]:
    items = (value,) if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not items or not all(isinstance(v, str) for v in items):
        raise MarkerError(f"{arg}={value!r}: expected a string or a non-empty list of strings")
    return tuple(items)


def knob_value(name: str, value: object) -> Any:
    """A knob given in the marker, checked strictly."""
    try:
        return knob_from_python(name, value)
    except ValueError as e:
        raise MarkerError(f"{name}={value!r}: {e}") from None


def knobs_from(kwargs: Mapping[str, object]) -> Knobs:
    return Knobs(**{name: knob_value(name, kwargs[name]) for name in KNOB_NAMES if kwargs.get(name) is not None})


def cases_from_marker(args: tuple[object, ...], kwargs: Mapping[str, object], settings: Settings,
                      pool_size: int = 1) -> list[BenchCase]:
    """``pool_size``: devices in the pool, for world sizes "auto"."""
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
        if backend not in BACKEND_IDS and not is_import_path(backend):
            raise MarkerError(f"backend={backend!r}: unknown backend; allowed: {', '.join(BACKEND_IDS)}")

    variants = _strings("variant", kwargs["variant"]) if "variant" in kwargs else None
    backend_cases: list[tuple[str, str]] = []
    for backend in backends:
        known = backend_variants(backend)
        chosen = [known[0]] if variants is None else [v for v in known if v in variants]
        backend_cases += [(backend, v) for v in chosen]  # a backend without the variants asked for sits out
    if not backend_cases:
        offered = "; ".join(f"{b}: {', '.join(backend_variants(b))}" for b in backends)
        raise MarkerError(f"variant={kwargs['variant']!r}: no backend of this test has it; their variants: {offered}")
    world_sizes = _world_sizes(kwargs["world_size"]) if "world_size" in kwargs else None

    try:
        marker_budgets = parse_budgets(kwargs["budgets"]) if "budgets" in kwargs else ()  # type: ignore[arg-type]
    except BudgetError as e:
        raise MarkerError(f"budgets={kwargs['budgets']!r}: {e}") from None
    budgets = merge_budgets(settings.ini_budgets, marker_budgets, settings.cli_budgets)
    knobs = knobs_from(kwargs)
    gate = _gate_spec(kwargs, settings)
    return [
        BenchCase(model=m, backend=b, variant=v, marker_knobs=knobs, budgets=budgets, world_size=w, gate=gate)
        for m in models
        for b, v in backend_cases
        for w in (world_sizes or default_world_sizes(b, settings.world_sizes, pool_size))
    ]


def _gate_spec(kwargs: Mapping[str, object], settings: Settings) -> GateSpec:
    try:
        marker = parse_min_effect(kwargs["min_effect"]) if "min_effect" in kwargs else ()
    except ValueError as e:
        raise MarkerError(f"min_effect={kwargs['min_effect']!r}: {e}") from None
    accept = kwargs.get("accept_regression")
    if accept is not None and (not isinstance(accept, str) or not accept.strip()):
        raise MarkerError(f"accept_regression={accept!r}: give the reason the regression is intended, as text")
    layers = tuple(layer for layer in (settings.cli_min_effect, marker, settings.ini_min_effect) if layer)
    return GateSpec(layers=layers, accept=accept.strip() if accept else None)


def _world_sizes(value: object) -> tuple[int, ...]:
    items = [value] if isinstance(value, int) else value
    if not isinstance(items, list | tuple) or not items or not all(type(v) is int and v > 0 for v in items):
        raise MarkerError(f"world_size={value!r}: expected a positive int or a list of them, e.g. [1, 2, 4]")
    return tuple(items)


def default_world_sizes(backend: str, configured: tuple[int, ...] | None, pool_size: int) -> tuple[int, ...]:
    """World sizes when the marker names none: the configured list, or (auto) 1, 2, 4, ... up to the pool.

    Auto gives a one-device backend (``hf``) world size 1 only; an explicit list is taken as asked,
    and a size the backend or the pool cannot run is skipped with the reason.
    """
    if configured is not None:
        return configured
    limit = backend_entry(backend).max_world_size or pool_size
    sizes, n = [], 1
    while n <= max(1, min(limit, pool_size)):
        sizes.append(n)
        n *= 2
    return tuple(sizes)
