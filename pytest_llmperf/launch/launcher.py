"""What a test drives a loaded model through: the contract both launchers keep.

:class:`~pytest_llmperf.launch.inline.InlineLauncher` runs one rank in the test's own process;
:class:`~pytest_llmperf.launch.group_launcher.GroupLauncher` runs one process per rank. Either way the
ranks obey the commands of :mod:`pytest_llmperf.launch.commands`, and the answers come back merged
into one result for the deployment (``tokens`` and ``run`` give every rank's own).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from pytest_llmperf.backends.base import LoadRequest
from pytest_llmperf.measure.rank import ProgressFn
from pytest_llmperf.results import GenerateConfig, GenerateResult, LoadResult


class Launcher(Protocol):
    #: ranks of the deployment
    world_size: int

    def load(self, request: LoadRequest) -> LoadResult:
        """Load the model on every rank, measured."""

    def first_generate(self, input_ids: np.ndarray, new_tokens: int) -> float | None:
        """Seconds of the first generate after load; None if it ran out of memory."""

    def generate(self, config: GenerateConfig, input_ids: np.ndarray,
                 progress: ProgressFn | None = None) -> GenerateResult:
        """Warm-ups, then the trials of one configuration."""

    def tokens(self, input_ids: np.ndarray, new_tokens: int) -> list[np.ndarray]:
        """Every rank's greedy output (prompt and new tokens per row), for correctness checks."""

    def limit_memory(self, headroom_bytes: int) -> list[int]:
        """Limit every rank's memory to what it uses now plus ``headroom_bytes``; every rank's limit."""

    def run(self, name: str, args: dict[str, Any] | None = None, *, ranks: list[int] | None = None) -> list[Any]:
        """Any command of the rank command table, by name, on ``ranks`` (all by default); answers in rank order."""

    def close(self) -> None:
        """Close every rank's backend; nothing the launcher started outlives this."""
