"""``vllm``: vLLM's offline engine (``vllm.LLM``), in a process of its own under vLLM's own Python.

vLLM pins its own torch and transformers, so it cannot share the test's environment: this backend
starts ``vllm_engine`` with the Python ``vllm_python`` finds and talks to it over a connection. The
load is timed in phases: ``start`` (the process), ``import`` (vllm), ``engine`` (configuration, weights
read and placed) and ``compile`` (profile run, KV cache, torch.compile warm-up), named
``compile-cached`` when the compile caches already held this model. A generate sends the prompts as
token ids; the engine process steps vLLM's engine and stamps each row's tokens as a step returns them,
and those ``time.perf_counter()`` readings (system-wide on Linux) tick the test's clock.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pytest_llmperf
from pytest_llmperf.backends.base import BackendUnavailable, LoadRequest, PhaseSpan
from pytest_llmperf.backends.engine_timing import EngineTiming
from pytest_llmperf.backends.vllm_process import EngineProcess
from pytest_llmperf.backends.vllm_protocol import EngineSpec, Generate, Generated, Load, Loaded
from pytest_llmperf.backends.vllm_python import VllmPython, find_vllm_python
from pytest_llmperf.devices import cuda_index, device_kind

if TYPE_CHECKING:
    import torch

    from pytest_llmperf.measure.token_clock import TokenClock

#: vLLM's CPU attention kernels take heads at least this wide
CPU_MIN_HEAD_DIM = 32
#: GiB of KV cache vLLM reserves on the CPU unless ``VLLM_CPU_KVCACHE_SPACE`` says otherwise
CPU_KV_CACHE_GIB = 1
SEED = 0
#: written into a compile-cache directory once a load through it has finished
CACHE_DONE = ".loaded"


def head_dim(config: Any) -> int | None:
    """The attention head width of a transformers config, None when it does not say."""
    explicit = getattr(config, "head_dim", None)
    if isinstance(explicit, int):
        return explicit
    hidden, heads = getattr(config, "hidden_size", None), getattr(config, "num_attention_heads", None)
    return hidden // heads if isinstance(hidden, int) and isinstance(heads, int) and heads else None


def compile_cache_dir(request: LoadRequest, python: VllmPython, scratch: Path) -> Path:
    """Where vLLM and inductor keep this model's compiled artifacts: one directory per checkpoint, dtype,
    device kind, tensor-parallel size and vLLM environment, under the load's cache directory (kept
    between runs), so a second load finds them."""
    identity = repr((str(request.checkpoint.resolve()), str(python.executable), python.vllm_version))
    digest = hashlib.sha256(identity.encode()).hexdigest()[:12]
    name = (f"{request.checkpoint.name}-{request.dtype}-{device_kind(request.device)}-tp{request.world_size}"
            f"-vllm{python.vllm_version}-{digest}")
    return (request.cache_dir or scratch) / "vllm" / name


def cuda_visible_devices(devices: tuple[str, ...]) -> str:
    """CUDA_VISIBLE_DEVICES for the engine process: the leased devices, numbered as this process sees them."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    indices = [cuda_index(d) for d in devices]
    return ",".join(visible[i] if visible else str(i) for i in indices)


def engine_environment(request: LoadRequest, cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    package_root = str(Path(pytest_llmperf.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    env.update({
        # the engine core in the engine process itself: each step returns when its tokens exist, and
        # no second process competes for the cores
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_CACHE_ROOT": str(cache / "vllm"),
        "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"),
        "TRITON_CACHE_DIR": str(cache / "triton"),
        # apply_model sends a function to the workers (tensor parallelism)
        "VLLM_ALLOW_INSECURE_SERIALIZATION": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
    })
    if device_kind(request.device) == "cpu":
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(CPU_KV_CACHE_GIB))
        # the lease decides the cores, not vLLM's binding (which would also keep one for a scheduler process)
        env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        if request.threads is not None:
            env["OMP_NUM_THREADS"] = str(request.threads)
    else:
        env["CUDA_VISIBLE_DEVICES"] = cuda_visible_devices(request.leased_devices[:request.world_size])
    return env


class _Phases:
    """Consecutive load phases: entering one ends the one before, so together they cover the load."""

    def __init__(self, span: PhaseSpan):
        self._span = span
        self._open: AbstractContextManager[None] | None = None

    def enter(self, name: str) -> None:
        self.end()
        self._open = self._span(name)
        self._open.__enter__()

    def end(self) -> None:
        if self._open is not None:
            current, self._open = self._open, None
            current.__exit__(None, None, None)


class VllmBackend:
    id: ClassVar[str] = "vllm"

    def __init__(self) -> None:
        self._engine: EngineProcess | None = None
        self._loaded: Loaded | None = None
        self._devices: tuple[str, ...] = ("cpu",)
        self._own_scratch: Path | None = None
        self._engine_timing: EngineTiming | None = None

    @staticmethod
    def unavailable_reason(request: LoadRequest, config: Any) -> str | None:
        if device_kind(request.device) == "cpu":
            width = head_dim(config)
            if width is not None and width < CPU_MIN_HEAD_DIM:
                return (f"backend vllm on the CPU: the model's attention heads are {width} wide, and vLLM's CPU "
                        f"attention takes heads at least {CPU_MIN_HEAD_DIM} wide; use a model whose head_dim is "
                        f">= {CPU_MIN_HEAD_DIM} (e.g. synthetic:llama-tiny-hd32), or a CUDA device")
            if request.world_size > 1:
                return (f"backend vllm on the CPU runs one process (world size 1); world size {request.world_size} "
                        "(tensor parallelism over CPU processes) is not supported here: use world_size=1")
        try:
            find_vllm_python()
        except BackendUnavailable as e:
            return str(e)
        return None

    def load(self, request: LoadRequest, span: PhaseSpan) -> None:
        python = find_vllm_python()
        kind = device_kind(request.device)
        scratch = request.scratch_dir
        if scratch is None:
            scratch = self._own_scratch = Path(tempfile.mkdtemp(prefix="llmperf-vllm-"))
        cache = compile_cache_dir(request, python, scratch)
        spec = EngineSpec(
            checkpoint=str(request.checkpoint), dtype=request.dtype, device_kind=kind,
            # variant "compiled": graphs compiled (CUDA graphs captured on a GPU), as vLLM is deployed, the compile
            # a load phase; "eager": enforce_eager, no compile phase (a quicker start, slower steps)
            tensor_parallel_size=request.world_size, seed=SEED, enforce_eager=request.variant == "eager",
            compile_cache_warm=(cache / CACHE_DONE).exists(),
        )
        phases = _Phases(span)
        try:
            phases.enter("start")
            self._engine = EngineProcess.start(python.executable, engine_environment(request, cache),
                                               scratch / "vllm-engine.log")
            phases.enter("import")
            loaded = self._engine.call(Load(spec), "load the model", on_phase=phases.enter)
            phases.end()
        except BaseException:
            phases.end()
            self.close()
            raise
        assert isinstance(loaded, Loaded)
        self._loaded = loaded
        if not spec.enforce_eager:  # an eager load compiles nothing: a later compiled load would find no artifacts
            cache.mkdir(parents=True, exist_ok=True)
            (cache / CACHE_DONE).write_text(f"vllm {loaded.vllm_version}\n")
        self._devices = ("cpu",) if kind == "cpu" else request.leased_devices[:request.world_size]

    def _running(self) -> EngineProcess:
        if self._engine is None:
            raise RuntimeError("the vllm backend has no model loaded; call load() first")
        return self._engine

    @property
    def input_device(self) -> str:
        return "cpu"

    def generate(self, input_ids: torch.Tensor, new_tokens: int, clock: TokenClock | None = None) -> torch.Tensor:
        import torch

        prompts = tuple(tuple(int(t) for t in row) for row in input_ids.tolist())
        self._engine_timing = None
        result = self._running().call(Generate(prompts, new_tokens), f"generate {new_tokens} tokens")
        assert isinstance(result, Generated)
        self._engine_timing = result.engine_timing
        if clock is not None:
            for row, stamps in enumerate(result.stamps):
                for stamp in stamps:
                    clock.tick(row, at=stamp)
        new = torch.tensor(result.tokens, dtype=input_ids.dtype).reshape(len(prompts), -1)
        return torch.cat([input_ids.cpu(), new], dim=1)

    def engine_timing(self) -> EngineTiming | None:
        """vLLM's own request stats of the last generate of one row (None otherwise)."""
        return self._engine_timing

    def synchronize(self) -> None:
        """Nothing to wait for: a generate returns once the engine has every token."""

    def weights_bytes(self) -> int:
        if self._loaded is None:
            raise RuntimeError("the vllm backend has no model loaded; call load() first")
        return self._loaded.weights_bytes

    def devices(self) -> tuple[str, ...]:
        return self._devices

    def device_map(self) -> dict[str, str] | None:
        return None

    def module(self) -> torch.nn.Module:
        raise NotImplementedError("the vllm backend's model lives in its engine process: there is no torch module "
                                  "in the test process to inspect or perturb")

    @property
    def engine_pid(self) -> int | None:
        return None if self._engine is None else self._engine.pid

    def close(self) -> None:
        if self._engine is not None:
            engine, self._engine = self._engine, None
            engine.close()
        self._loaded = None
        if self._own_scratch is not None:
            shutil.rmtree(self._own_scratch, ignore_errors=True)
            self._own_scratch = None
