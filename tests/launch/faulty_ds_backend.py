"""The fault-injecting test double over ``ds-inference`` (AutoTP on CPU): see ``faulty_backend``.

Its healthy ranks wait for a faulty one inside DeepSpeed's shared-memory all-reduce, which spins on
/dev/shm buffers and has no timeout of its own: only the group's deadline, or a rank's death, ends it.
Kept apart from ``faulty_backend`` so that importing that one does not import DeepSpeed.
"""

from __future__ import annotations

from typing import ClassVar

from faulty_backend import _Faults

from pytest_llmperf.backends.ds_inference import DsInferenceBackend


class FaultyDsBackend(_Faults, DsInferenceBackend):
    id: ClassVar[str] = "faulty-ds"
