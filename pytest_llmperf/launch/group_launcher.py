"""The launcher of multi-process backends: one rank per device, the same calls as the inline launcher."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from pytest_llmperf.backends.base import BackendUnavailable, LoadRequest
from pytest_llmperf.launch.distributed import GroupSpec, ProgressFn, RankGroup, RankUnavailable
from pytest_llmperf.launch.merge import merge_generates, merge_loads
from pytest_llmperf.results import GenerateConfig, GenerateResult, LoadResult


class GroupLauncher:
    def __init__(self, spec: GroupSpec, *, labels: tuple[str, ...], independent_streams: bool):
        """``labels[r]``: how rank r's device is recorded (its leased device)."""
        self.world_size = spec.world_size
        self._labels = labels
        self._independent_streams = independent_streams
        try:
            self.group = RankGroup.start(spec)
        except RankUnavailable as e:
            raise BackendUnavailable(str(e)) from None

    def run(self, name: str, args: dict[str, Any] | None = None, *, ranks: list[int] | None = None,
            per_rank: list[dict[str, Any]] | None = None, progress: ProgressFn | None = None) -> list[Any]:
        """``per_rank[r]``: more arguments for rank r; ``progress``: fed from rank 0."""
        try:
            return self.group.call(name, args, ranks=ranks, per_rank=per_rank, progress=progress)
        except RankUnavailable as e:
            raise BackendUnavailable(str(e)) from None

    def load(self, request: LoadRequest) -> LoadResult:
        per_rank = [
            {"request": replace(request, device=device, devices=(device,), rank=r, world_size=self.world_size)}
            for r, device in enumerate(self.group.devices)
        ]
        loads = self.run("load", per_rank=per_rank)
        return merge_loads(loads, self.group.devices, list(self._labels))

    def first_generate(self, input_ids: np.ndarray, new_tokens: int) -> float | None:
        seconds = self.run("first_generate", {"input_ids": input_ids, "new_tokens": new_tokens})
        return None if any(s is None for s in seconds) else max(seconds)

    def generate(self, config: GenerateConfig, input_ids: np.ndarray,
                 progress: ProgressFn | None = None) -> GenerateResult:
        results = self.run("generate", {"config": config, "input_ids": input_ids}, progress=progress)
        return merge_generates(results, independent_streams=self._independent_streams)

    def tokens(self, input_ids: np.ndarray, new_tokens: int) -> list[np.ndarray]:
        """Every rank's greedy output."""
        return self.run("tokens", {"input_ids": input_ids, "new_tokens": new_tokens})

    def limit_memory(self, headroom_bytes: int) -> list[int]:
        return self.run("limit_memory", {"headroom_bytes": headroom_bytes})

    def close(self) -> None:
        self.group.close()
