"""What the ``vllm`` backend (in the test process) and its engine process say to each other.

vLLM lives in its own virtual environment, so both sides import this module and nothing heavier: it
must stay free of torch, transformers and numpy. Messages are pickled frozen dataclasses of plain
values over an authenticated ``multiprocessing.connection``.
"""

from __future__ import annotations

from dataclasses import dataclass

from pytest_llmperf.backends.engine_timing import EngineTiming

#: "host:port" of the test process's listener
ADDRESS_ENV = "LLMPERF_VLLM_ADDRESS"
#: hex of the connection's authentication key
KEY_ENV = "LLMPERF_VLLM_KEY"
#: pid of the test process: the engine process dies with it
PARENT_PID_ENV = "LLMPERF_VLLM_PARENT_PID"

#: phases of a load the engine process announces as it enters them (the test process times them)
IMPORT_PHASE = "import"
ENGINE_PHASE = "engine"
COMPILE_PHASE = "compile"
#: the compile phase when vLLM's and inductor's compile caches held this model's artifacts before the load
COMPILE_CACHED_PHASE = "compile-cached"
#: the same span of an eager engine, which compiles nothing: profiling, the KV cache, the warm-up
WARM_UP_PHASE = "warm-up"


@dataclass(frozen=True)
class EngineSpec:
    """How to build the engine: ``vllm.LLM``'s arguments, from the load request."""

    checkpoint: str
    dtype: str
    #: "cpu" or "cuda"
    device_kind: str
    tensor_parallel_size: int
    seed: int
    enforce_eager: bool
    #: whether the compile caches held artifacts before this load (names the compile phase)
    compile_cache_warm: bool


@dataclass(frozen=True)
class Load:
    spec: EngineSpec


@dataclass(frozen=True)
class Generate:
    prompts: tuple[tuple[int, ...], ...]
    new_tokens: int


@dataclass(frozen=True)
class Close:
    pass


@dataclass(frozen=True)
class Phase:
    """The engine process has entered a phase of the load."""

    name: str


@dataclass(frozen=True)
class Loaded:
    #: bytes of the parameters over all of vLLM's workers
    weights_bytes: int
    vllm_version: str


@dataclass(frozen=True)
class Generated:
    #: the new tokens of each prompt, in order
    tokens: tuple[tuple[int, ...], ...]
    #: ``time.perf_counter()`` in the engine process when each of those tokens was returned by an engine step
    stamps: tuple[tuple[float, ...], ...]
    #: vLLM's own account of the request (its request stats) when there was one prompt
    engine_timing: EngineTiming | None = None


@dataclass(frozen=True)
class Failed:
    """A command raised in the engine process."""

    error_type: str
    error: str
    traceback: str
