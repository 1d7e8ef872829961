"""Backends by id. Each lives in its own module and is imported only when a test uses it."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pytest_llmperf.backends.base import Backend


@dataclass(frozen=True)
class BackendEntry:
    #: "module:class" of the implementation
    target: str
    #: variants the backend knows; the first is the default
    variants: tuple[str, ...] = ("default",)


REGISTRY: dict[str, BackendEntry] = {
    "hf": BackendEntry("pytest_llmperf.backends.hf:HfBackend"),
}
BACKEND_IDS: tuple[str, ...] = tuple(REGISTRY)


def _entry(backend_id: str) -> BackendEntry:
    try:
        return REGISTRY[backend_id]
    except KeyError:
        raise ValueError(f"unknown backend {backend_id!r}; known backends: {', '.join(BACKEND_IDS)}") from None


def backend_variants(backend_id: str) -> tuple[str, ...]:
    return _entry(backend_id).variants


def backend_class(backend_id: str) -> type[Backend]:
    module_name, class_name = _entry(backend_id).target.split(":")
    return getattr(importlib.import_module(module_name), class_name)
