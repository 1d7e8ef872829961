"""The inline launcher: one rank, in the test's own process, on one device."""

from __future__ import annotations

import numpy as np

from pytest_llmperf.backends import backend_class
from pytest_llmperf.backends.base import LoadRequest
from pytest_llmperf.measure.rank import ProgressFn, RankRunner
from pytest_llmperf.results import GenerateConfig, GenerateResult, LoadResult


class InlineLauncher:
    world_size = 1

    def __init__(self, backend_id: str, device: str):
        if device.startswith("cuda"):
            import torch

            # create the CUDA context now, so no test's load time includes it
            torch.cuda.set_device(torch.device(device))
            torch.cuda.init()
        self._runner = RankRunner(backend_class(backend_id)(), device)

    def load(self, request: LoadRequest) -> LoadResult:
        return self._runner.load(request)

    def first_generate(self, input_ids: np.ndarray, new_tokens: int) -> float | None:
        return self._runner.first_generate(input_ids, new_tokens)

    def generate(self, config: GenerateConfig, input_ids: np.ndarray,
                 progress: ProgressFn | None = None) -> GenerateResult:
        return self._runner.generate(config, input_ids, progress)

    def tokens(self, input_ids: np.ndarray, new_tokens: int) -> list[np.ndarray]:
        return [self._runner.tokens(input_ids, new_tokens)]

    def perturb_weight(self, rank: int) -> str:
        from pytest_llmperf.correctness import perturb_one_weight

        assert rank == 0, "the inline launcher runs one rank"
        return perturb_one_weight(self._runner.backend.module())

    def limit_memory(self, headroom_bytes: int) -> list[int]:
        """CUDA only: a limit on the host would bind pytest itself (``Bench`` refuses it on CPU)."""
        from pytest_llmperf.measure.memory_limit import limit_memory

        assert self._runner.device.startswith("cuda")
        return [limit_memory(self._runner.device, headroom_bytes)]

    def close(self) -> None:
        self._runner.close()
