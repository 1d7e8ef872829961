"""Backends by id. Each lives in its own module and is imported only when a test uses it.

A backend of your own needs no registration: name it by import path, ``"my_package.module:MyBackend"``
(importable by the test process and its ranks). Its class may set the class attributes ``variants``,
``launch``, ``max_world_size`` and ``independent_streams`` (see ``BackendEntry``).
"""

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
    #: "inline": one process (the test's) using every leased device; "ranks": one process per rank
    launch: str = "inline"
    #: the most devices one inline process can use (None: as many as it leases)
    max_world_size: int | None = None
    #: True when each rank generates its own stream of prompts (ZeRO-3), so streams = ranks
    independent_streams: bool = False


REGISTRY: dict[str, BackendEntry] = {
    # the quantized variants are hf_quantized.VARIANTS (not imported here: that would import transformers)
    "hf": BackendEntry(
        "pytest_llmperf.backends.hf:HfBackend",
        variants=("default", "bnb-int8", "bnb-nf4", "torchao-int8", "quanto-int8"), max_world_size=1,
    ),
    "accelerate": BackendEntry(
        "pytest_llmperf.backends.accelerate:AccelerateBackend",
        variants=("auto", "balanced", "balanced_low_0", "sequential", "cpu-offload", "disk-offload"),
    ),
    "ds-inference": BackendEntry(
        "pytest_llmperf.backends.ds_inference:DsInferenceBackend",
        variants=("autotp", "kernel-inject", "int8"), launch="ranks",
    ),
    "ds-zero": BackendEntry(
        "pytest_llmperf.backends.ds_zero:DsZeroBackend",
        variants=("default", "cpu-offload"), launch="ranks", independent_streams=True,
    ),
    "hf-tp": BackendEntry("pytest_llmperf.backends.hf_tp:HfTpBackend", launch="ranks"),
    "llama-cpp": BackendEntry(
        "pytest_llmperf.backends.llama_cpp:LlamaCppBackend", variants=("auto", "f32", "f16", "q8_0", "q4_0"),
        max_world_size=1,
    ),
    # vLLM's engine in a process of its own, under vLLM's own Python; tensor parallel over the leased GPUs
    "vllm": BackendEntry("pytest_llmperf.backends.vllm:VllmBackend", variants=("compiled", "eager")),
    # a server someone else runs (--llmperf-server-url): measured by serving tests only, never loaded here
    "external": BackendEntry("pytest_llmperf.serving.external:ExternalEndpoint", max_world_size=1),
}

#: backends that are endpoints to measure, not engines to load: not in the default backend list
ENDPOINT_BACKENDS = ("external",)
BACKEND_IDS: tuple[str, ...] = tuple(REGISTRY)


def is_import_path(backend_id: str) -> bool:
    return ":" in backend_id


def backend_entry(backend_id: str) -> BackendEntry:
    if is_import_path(backend_id):
        cls = _import(backend_id, backend_id)
        defaults = BackendEntry(backend_id)
        return BackendEntry(backend_id, **{
            name: getattr(cls, name, getattr(defaults, name))
            for name in ("variants", "launch", "max_world_size", "independent_streams")
        })
    try:
        return REGISTRY[backend_id]
    except KeyError:
        raise ValueError(
            f"unknown backend {backend_id!r}; known backends: {', '.join(BACKEND_IDS)}, "
            "or an import path 'package.module:Class'"
        ) from None


def backend_variants(backend_id: str) -> tuple[str, ...]:
    return backend_entry(backend_id).variants


def backend_class(backend_id: str) -> type[Backend]:
    """The implementation; BackendUnavailable (a skip) naming the package when one is not installed."""
    return _import(backend_id if is_import_path(backend_id) else backend_entry(backend_id).target, backend_id)


def _import(target: str, backend_id: str) -> type[Backend]:
    from pytest_llmperf.backends.base import BackendUnavailable

    module_name, class_name = target.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is None or e.name.startswith("pytest_llmperf") or module_name.startswith(e.name):
            raise
        raise BackendUnavailable(
            f"backend {backend_id} needs the Python package {e.name.split('.')[0]!r}, which is not installed "
            f"(pip install {e.name.split('.')[0]})"
        ) from e
    return getattr(module, class_name)
