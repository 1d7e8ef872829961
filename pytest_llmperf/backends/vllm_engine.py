"""The vLLM engine process: ``python -m pytest_llmperf.backends.vllm_engine``, run by vLLM's own Python.

It connects back to the test process and obeys its messages one at a time: ``Load`` builds
``vllm.LLM`` (announcing each phase as it enters it, so the test process can time them), ``Generate``
drives the engine step by step and stamps each row's tokens as a step returns them, ``Close`` ends it.

vLLM pins its own torch and transformers, so this process imports nothing of the project beyond the
message definitions and the process-lifetime helper: no numpy, no transformers, no measuring code.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import Client, Connection
from typing import Any

from pytest_llmperf.backends.engine_timing import EngineTiming, from_vllm
from pytest_llmperf.backends.vllm_protocol import (
    ADDRESS_ENV,
    COMPILE_CACHED_PHASE,
    COMPILE_PHASE,
    ENGINE_PHASE,
    KEY_ENV,
    PARENT_PID_ENV,
    WARM_UP_PHASE,
    Close,
    EngineSpec,
    Failed,
    Generate,
    Generated,
    Load,
    Loaded,
    Phase,
)
from pytest_llmperf.launch.lifetime import die_with_parent


def parameter_bytes(model: Any) -> int:
    """Bytes of one worker's parameters, each shared one counted once.

    On the CPU vLLM repacks a linear layer's weight for its GEMM kernels (oneDNN) and leaves an empty
    parameter behind; that weight counts at its size in this worker (its partition's rows x columns).
    """
    seen: set[int] = set()
    total = 0
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            if id(parameter) in seen:
                continue
            seen.add(id(parameter))
            rows = getattr(module, "output_size_per_partition", None)
            columns = getattr(module, "input_size_per_partition", None)
            if parameter.numel() == 0 and name == "weight" and isinstance(rows, int) and isinstance(columns, int):
                total += rows * columns * parameter.element_size()
            else:
                total += parameter.numel() * parameter.element_size()
    return total


@contextmanager
def announcing_compile(send: Callable[[Phase], None], name: str) -> Iterator[None]:
    """Announce ``name`` when vLLM's engine core starts sizing the KV cache and compiling (its profile
    run and warm-up compile the model); the weights are loaded by then. Without that hook (another vLLM
    version) the compile stays in the engine phase."""
    from vllm.v1.engine import core

    original = getattr(core.EngineCore, "_initialize_kv_caches", None)
    if original is None:
        yield
        return

    def initialize_kv_caches(self: Any, *args: Any, **kwargs: Any) -> Any:
        send(Phase(name))
        return original(self, *args, **kwargs)

    core.EngineCore._initialize_kv_caches = initialize_kv_caches
    try:
        yield
    finally:
        core.EngineCore._initialize_kv_caches = original


class Engine:
    def __init__(self, conn: Connection):
        self._conn = conn
        self._llm: Any = None
        self._requests = 0

    def load(self, spec: EngineSpec) -> Loaded:
        import vllm

        self._conn.send(Phase(ENGINE_PHASE))
        phase = (WARM_UP_PHASE if spec.enforce_eager
                 else COMPILE_CACHED_PHASE if spec.compile_cache_warm else COMPILE_PHASE)
        with announcing_compile(self._conn.send, phase):
            self._llm = vllm.LLM(
                model=spec.checkpoint, tokenizer=spec.checkpoint, dtype=spec.dtype,
                tensor_parallel_size=spec.tensor_parallel_size, seed=spec.seed, enforce_eager=spec.enforce_eager,
                # trials repeat their prompts: a prefix-cache hit would skip the prefill and fake the TTFT
                # per-request stats on, as `vllm serve` has them: the engine's own TTFT and TPOT (engine_timing)
                enable_prefix_caching=False, disable_log_stats=False,
            )
        weights = sum(self._llm.apply_model(parameter_bytes))
        return Loaded(weights_bytes=int(weights), vllm_version=vllm.__version__)

    def generate(self, request: Generate) -> Generated:
        """Every prompt as one request, added at once; each ``step()`` returns the tokens it made per request."""
        if self._llm is None:
            raise RuntimeError("generate before load: the vLLM engine has no model")
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        n = request.new_tokens
        params = SamplingParams(max_tokens=n, min_tokens=n, ignore_eos=True, temperature=0.0,
                                output_kind=RequestOutputKind.DELTA, detokenize=False)
        engine = self._llm.llm_engine
        self._requests += 1
        rows = {f"{self._requests}-{row}": row for row in range(len(request.prompts))}
        tokens: list[list[int]] = [[] for _ in request.prompts]
        stamps: list[list[float]] = [[] for _ in request.prompts]
        stats: list[Any] = [None] * len(request.prompts)
        for request_id, row in rows.items():
            engine.add_request(request_id, TokensPrompt(prompt_token_ids=list(request.prompts[row])), params)
        while engine.has_unfinished_requests():
            outputs = engine.step()
            now = time.perf_counter()
            for output in outputs:
                row = rows[output.request_id]
                new = list(output.outputs[0].token_ids)
                tokens[row].extend(new)
                stamps[row].extend([now] * len(new))
                if output.finished:
                    stats[row] = output.metrics
        counts = sorted({len(t) for t in tokens})
        if counts != [n]:
            raise RuntimeError(f"vLLM returned {'/'.join(map(str, counts))} new tokens per request, asked for {n}")
        timing = engine_timing(stats[0]) if len(stats) == 1 else None
        return Generated(tokens=tuple(map(tuple, tokens)), stamps=tuple(map(tuple, stamps)), engine_timing=timing)


def engine_timing(stats: Any) -> EngineTiming | None:
    """vLLM's account of a finished request from its ``RequestStateStats`` (None when it kept none)."""
    if stats is None or not hasattr(stats, "first_token_latency"):
        return None
    return from_vllm(first_token_latency_s=stats.first_token_latency, first_token_ts=stats.first_token_ts,
                     last_token_ts=stats.last_token_ts, num_generation_tokens=stats.num_generation_tokens)


def serve(conn: Connection) -> int:
    engine = Engine(conn)
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return 1  # the test process is gone
        if isinstance(message, Close):
            conn.send(None)
            return 0
        try:
            if isinstance(message, Load):
                reply: Any = engine.load(message.spec)
            elif isinstance(message, Generate):
                reply = engine.generate(message)
            else:
                raise TypeError(f"unknown message {message!r}")
        except Exception as exc:
            traceback.print_exc()
            reply = Failed(type(exc).__name__, str(exc), traceback.format_exc())
        sys.stdout.flush()
        sys.stderr.flush()
        conn.send(reply)


def main() -> int:
    die_with_parent(int(os.environ[PARENT_PID_ENV]))
    host, port = os.environ[ADDRESS_ENV].rsplit(":", 1)
    conn = Client((host, int(port)), authkey=bytes.fromhex(os.environ[KEY_ENV]))
    try:
        return serve(conn)
    finally:
        conn.close()


if __name__ == "__main__":
    sys.exit(main())
