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

    def close(self) -> None:
        self._runner.close()
