"""``llama-cpp``: llama.cpp's own server, run in this process by xllamacpp, on a GGUF file.

The model is a GGUF file: the one a ``gguf:`` model source came from, or one written from the
transformers checkpoint (``models/gguf_writer.py``) in the variant's tensor type. Each row of a
batch is one sequence of the server's continuous batching (its slots), all sent in one request so
they decode together; each row's tokens are timestamped as llama.cpp streams them.

Requests are greedy (temperature 0), produce exactly ``new_tokens`` tokens (end-of-generation
tokens are banned, as hf's ``min_new_tokens`` does), do not reuse a cached prompt, and take the
prompt as token ids with nothing added.
"""

from __future__ import annotations

import gc
import json
import os
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pytest_llmperf.backends.base import BackendUnavailable, LoadRequest, PhaseSpan
from pytest_llmperf.backends.engine_timing import EngineTiming, from_llama_cpp
from pytest_llmperf.backends.llama_cpp_stream import EngineError, RowStreams, raise_on_error

if TYPE_CHECKING:
    import torch

    from pytest_llmperf.measure.token_clock import TokenClock

INSTALL_HINT = "pip install 'pytest-llmperf[llama-cpp]'"
VARIANTS = ("auto", "f32", "f16", "q8_0", "q4_0")
#: server slots: rows of a batch beyond this many wait for a free slot
SLOTS = 16
#: tokens of KV cache shared by all slots (prompt + new tokens of every row of a batch must fit)
KV_CACHE_TOKENS = 8192
#: seconds a request to the server's HTTP listener may take
HTTP_TIMEOUT_S = 600
_GGUF_MAGIC = b"GGUF"


class GgufFileError(ValueError):
    """The GGUF file to load is missing or is not one llama.cpp can load."""


class LlamaCppBackend:
    id: ClassVar[str] = "llama-cpp"
    variants: ClassVar[tuple[str, ...]] = VARIANTS

    def __init__(self) -> None:
        self._server: Any = None
        self._device = "cpu"
        self._gguf: Path | None = None
        self._weights_bytes: int | None = None
        self._engine_timing: EngineTiming | None = None

    @staticmethod
    def unavailable_reason(request: LoadRequest, config: Any) -> str | None:
        try:
            import xllamacpp  # noqa: F401
        except ImportError:
            return f"backend llama-cpp needs the Python package 'xllamacpp', which is not installed ({INSTALL_HINT})"
        variant = _variant(request)
        if request.device.startswith("cuda") and not _has_gpu_backend():
            return (f"backend llama-cpp on {request.device}: the installed xllamacpp wheel has no CUDA backend "
                    "(pip install xllamacpp --force-reinstall --index-url "
                    "https://xorbitsai.github.io/xllamacpp/whl/cu128)")
        if request.gguf_file is not None and variant == "auto":
            return None
        from pytest_llmperf.models.gguf_writer import unsupported_reason

        reason = unsupported_reason(request.checkpoint)
        return None if reason is None else f"backend llama-cpp, variant {variant}: {reason}"

    @staticmethod
    def reproduces_reference(request: LoadRequest) -> bool:
        """Only float32 weights written from the checkpoint compute what hf computes."""
        variant = _variant(request)
        return variant == "f32" or (variant == "auto" and request.gguf_file is None)

    def load(self, request: LoadRequest, span: PhaseSpan) -> None:
        try:
            import xllamacpp
        except ImportError as e:
            raise BackendUnavailable(
                f"backend llama-cpp needs the Python package 'xllamacpp', which is not installed ({INSTALL_HINT})"
            ) from e
        self._device = request.device
        gguf_file = gguf_for(request, span)
        params = server_params(gguf_file, threads=request.threads or os.cpu_count() or 1, device=request.device,
                               float32_kv_cache=float32_kv_cache(request))
        with span("load"):
            check_gguf_file(gguf_file)
            try:
                self._server = xllamacpp.Server(params)
            except RuntimeError as e:
                raise GgufFileError(
                    f"llama.cpp could not load {gguf_file} ({e}): the file is corrupt, truncated or of an "
                    "architecture this llama.cpp does not know; delete it so that it is written again, or "
                    "give a complete GGUF file"
                ) from e
        self._gguf = gguf_file
        with span("ready"):
            # One token through the decoding loop: the server is serving. It also keeps close() from
            # stopping the loop before it has started (xllamacpp's destructor would then wait forever).
            self._exact_tokens([[0]], 1)

    @property
    def input_device(self) -> str:
        return "cpu"

    def generate(self, input_ids: torch.Tensor, new_tokens: int, clock: TokenClock | None = None) -> torch.Tensor:
        """Rows as parallel sequences of one request. With a clock, tokens are streamed and ticked per
        row as they arrive; without one (the correctness check), every token id comes back exactly."""
        import torch

        server = self._loaded()
        prompts = [[int(t) for t in row] for row in input_ids.tolist()]
        needed = sum(len(p) for p in prompts) + len(prompts) * new_tokens
        if needed > KV_CACHE_TOKENS:
            raise ValueError(
                f"llama-cpp: a batch of {len(prompts)} rows of {len(prompts[0])} prompt + {new_tokens} new tokens "
                f"needs {needed} tokens of KV cache, more than the {KV_CACHE_TOKENS} the server holds "
                "(pytest_llmperf.backends.llama_cpp.KV_CACHE_TOKENS); use fewer or shorter rows"
            )
        self._engine_timing = None
        if clock is None:
            new = self._exact_tokens(prompts, new_tokens)
        else:
            new = self._streamed_tokens(server, prompts, new_tokens, clock)
        return torch.cat([input_ids.cpu(), torch.tensor(new, dtype=torch.long)], dim=1)

    def _request(self, prompts: list[list[int]], new_tokens: int) -> dict[str, Any]:
        return {
            "prompt": prompts, "max_tokens": new_tokens, "n_predict": new_tokens, "ignore_eos": True,
            "temperature": 0.0, "top_k": 1, "cache_prompt": False,
        }

    def _streamed_tokens(self, server: Any, prompts: list[list[int]], new_tokens: int,
                         clock: TokenClock) -> list[list[int]]:
        streams = RowStreams(len(prompts), lambda row, at: clock.tick(row, at=at))
        request = {**self._request(prompts, new_tokens), "stream": True, "n_probs": 1, "timings_per_token": True}
        raise_on_error(server.handle_completions(request, streams), "completion")
        streams.check(new_tokens)
        if len(prompts) == 1:
            self._engine_timing = from_llama_cpp(streams.timings[0])
        return streams.ids

    def engine_timing(self) -> EngineTiming | None:
        """llama.cpp's own timings of the last timestamped generate of one row (None otherwise)."""
        return self._engine_timing

    def _exact_tokens(self, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
        """llama.cpp's native completion endpoint returns every generated id (the OpenAI-style one
        leaves out tokens that end inside a UTF-8 character)."""
        answer = self._http("/completion", {**self._request(prompts, new_tokens), "return_tokens": True})
        results = answer if isinstance(answer, list) else [answer]
        rows: list[list[int]] = [[] for _ in prompts]
        for position, result in enumerate(results):
            raise_on_error(result, "completion")
            rows[int(result.get("index", position))] = [int(t) for t in result.get("tokens") or ()]
        if {len(r) for r in rows} != {new_tokens}:
            raise EngineError(f"llama.cpp returned {'/'.join(str(len(r)) for r in rows)} tokens per row for a "
                              f"generate of {new_tokens} new tokens")
        return rows

    def _http(self, path: str, body: dict[str, Any] | None = None) -> Any:
        address = self._loaded().listening_address
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(address + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            raise EngineError(f"llama.cpp's server answered {path} with {e.code}: {e.read().decode()[:500]}") from e

    def synchronize(self) -> None:
        """Nothing to wait for: a request returns once its last token is streamed."""

    def weights_bytes(self) -> int:
        """Bytes of the GGUF tensors llama.cpp loaded (its model size)."""
        if self._weights_bytes is None:
            models = self._http("/v1/models")
            self._weights_bytes = int(models["data"][0]["meta"]["size"])
        return self._weights_bytes

    def devices(self) -> tuple[str, ...]:
        return (self._device,)

    def device_map(self) -> dict[str, str] | None:
        return None

    def module(self) -> torch.nn.Module:
        raise NotImplementedError(
            "backend llama-cpp runs a GGUF file in llama.cpp: there is no torch module to inspect or perturb"
        )

    @property
    def gguf_file(self) -> Path | None:
        """The GGUF file loaded."""
        return self._gguf

    def close(self) -> None:
        """Stop the server: its destructor ends the decoding loop and joins its threads."""
        self._server = None
        gc.collect()

    def _loaded(self) -> Any:
        if self._server is None:
            raise RuntimeError("the llama-cpp backend has no model loaded; call load() first")
        return self._server


def server_params(gguf_file: Path, *, threads: int, device: str, float32_kv_cache: bool, port: int = 0) -> Any:
    """llama.cpp's server settings for measuring: ``SLOTS`` parallel sequences sharing one KV cache, prompt
    cache off, greedy, ``threads`` threads, every layer on a CUDA ``device``; ``port`` 0: any free one."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(gguf_file)
    params.n_ctx = KV_CACHE_TOKENS
    params.n_parallel = SLOTS
    params.kv_unified = True  # one KV pool for all slots: a row may use what the others do not
    params.cache_prompt = False
    params.warmup = True  # as llama-server does: the first request does not pay for first-use work
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.port = port
    if float32_kv_cache:
        # float32 throughout, as transformers computes in float32: llama.cpp's KV cache is float16 unless told
        params.cache_type_k = xllamacpp.ggml_type.GGML_TYPE_F32
        params.cache_type_v = xllamacpp.ggml_type.GGML_TYPE_F32
    params.sampling.temp = 0.0
    params.sampling.top_k = 1
    params.verbosity = -1
    if device.startswith("cuda"):
        params.n_gpu_layers = 999  # every layer on the device
        params.main_gpu = int(device.partition(":")[2] or 0)
    else:
        params.n_gpu_layers = 0
    return params


def check_gguf_file(path: Path) -> None:
    """A clear error for a missing file or one that does not start as a GGUF file does."""
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except FileNotFoundError:
        raise GgufFileError(f"GGUF file {path} does not exist: give the path of a .gguf file, or a checkpoint to "
                            "write one from") from None
    except OSError as e:
        raise GgufFileError(f"GGUF file {path} cannot be read: {e}") from e
    if magic != _GGUF_MAGIC:
        raise GgufFileError(f"{path} is not a GGUF file (it starts with {magic!r}, not {_GGUF_MAGIC!r}): it is "
                            "corrupt or of another format; delete it so that it is written again, or give a GGUF file")


def _variant(request: LoadRequest) -> str:
    variant = "auto" if request.variant == "default" else request.variant
    if variant not in VARIANTS:
        raise ValueError(f"backend llama-cpp has no variant {request.variant!r}; its variants: {', '.join(VARIANTS)}")
    return variant


def float32_kv_cache(request: LoadRequest) -> bool:
    """float32 weights get a float32 KV cache (llama.cpp's default is float16): float32 throughout, as hf."""
    variant = _variant(request)
    return variant == "f32" or (variant == "auto" and request.gguf_file is None)


def gguf_for(request: LoadRequest, span: PhaseSpan) -> Path:
    """The GGUF file of this request's variant: the source's own, or one written from the checkpoint."""
    from pytest_llmperf.models.gguf_writer import UnsupportedModel, ensure_gguf, gguf_path

    variant = _variant(request)
    if variant == "auto" and request.gguf_file is not None:
        return Path(request.gguf_file)
    gguf_type = "f32" if variant == "auto" else variant
    if not (request.checkpoint / "config.json").is_file():
        raise GgufFileError(
            f"backend llama-cpp, variant {variant}: no transformers checkpoint at {request.checkpoint} to write a "
            f"{gguf_type} GGUF file from; use variant auto to run "
            f"{request.gguf_file if request.gguf_file is not None else 'the model'}'s own GGUF file"
        )
    cache = request.cache_dir or request.scratch_dir
    if cache is None:
        raise ValueError("backend llama-cpp needs LoadRequest.cache_dir or scratch_dir to write a GGUF file into")
    try:
        with span("find"):  # the cached file is keyed by the checkpoint's content
            path = gguf_path(request.checkpoint, gguf_type, cache)
        if not path.is_file():
            with span("convert"):
                path, _ = ensure_gguf(request.checkpoint, gguf_type, cache)
    except UnsupportedModel as e:
        raise BackendUnavailable(f"backend llama-cpp, variant {variant}: {e}") from e
    return path


def _has_gpu_backend() -> bool:
    import xllamacpp

    try:
        return any("gpu" in str(d.get("type", "")).lower() for d in xllamacpp.get_device_info())
    except Exception:
        return False
