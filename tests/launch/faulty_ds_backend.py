"""The fault-injecting test double over ``ds-inference`` (AutoTP on CPU): see ``faulty_backend``.

Its healthy ranks wait for a faulty one inside DeepSpeed's shared-memory all-reduce, which spins on
/dev/shm buffers and has no timeout of its own: only the group's deadline, or a rank's death, ends it.
Kept apart from ``faulty_backend`` so that importing that one does not import DeepSpeed.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from faulty_backend import _Faults

from pytest_llmperf.backends.ds_inference import DsInferenceBackend


class FaultyDsBackend(_Faults, DsInferenceBackend):
    id: ClassVar[str] = "faulty-ds"

    def __init__(self) -> None:
        super().__init__()
        self._fault_init()

    def load(self, request, span) -> None:
        self._fault_rank = request.rank
        self._maybe_fail("load")
        super().load(request, span)

    def generate(self, input_ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
        self._maybe_fail("generate")
        return super().generate(input_ids, new_tokens)
