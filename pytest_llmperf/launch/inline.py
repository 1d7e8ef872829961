"""The inline launcher: one rank, in the test's own process, on one device."""

from __future__ import annotations

from typing import Any

import numpy as np

from pytest_llmperf.backends.base import LoadRequest
from pytest_llmperf.devices import device_kind
from pytest_llmperf.launch.commands import CLOSE, Rank, import_command_modules, run_command
from pytest_llmperf.measure.rank import ProgressFn
from pytest_llmperf.results import GenerateConfig, GenerateResult, LoadResult


class InlineLauncher:
    world_size = 1

    def __init__(self, backend_id: str, device: str):
        if device_kind(device) == "cuda":
            import torch

            # create the CUDA context now, so no test's load time includes it
            torch.cuda.set_device(torch.device(device))
            torch.cuda.init()
        import_command_modules()
        self._rank = Rank(backend_id, device)

    def run(self, name: str, args: dict[str, Any] | None = None, *, ranks: list[int] | None = None) -> list[Any]:
        if ranks not in (None, [0]):
            raise ValueError(f"the inline launcher runs one rank, rank 0; {name!r} was asked of ranks {ranks}")
        return [run_command(self._rank, name, dict(args or {}))]

    def load(self, request: LoadRequest) -> LoadResult:
        return self.run("load", {"request": request})[0]

    def first_generate(self, input_ids: np.ndarray, new_tokens: int) -> float | None:
        return self.run("first_generate", {"input_ids": input_ids, "new_tokens": new_tokens})[0]

    def generate(self, config: GenerateConfig, input_ids: np.ndarray,
                 progress: ProgressFn | None = None) -> GenerateResult:
        return self.run("generate", {"config": config, "input_ids": input_ids, "progress": progress})[0]

    def tokens(self, input_ids: np.ndarray, new_tokens: int) -> list[np.ndarray]:
        return self.run("tokens", {"input_ids": input_ids, "new_tokens": new_tokens})

    def limit_memory(self, headroom_bytes: int) -> list[int]:
        """CUDA only: a limit on the host would bind pytest itself (``Bench`` refuses it on CPU)."""
        assert device_kind(self._rank.device) == "cuda"
        return self.run("limit_memory", {"headroom_bytes": headroom_bytes})

    def close(self) -> None:
        self.run(CLOSE)
