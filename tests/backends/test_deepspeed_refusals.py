"""What the DeepSpeed backends refuse before any rank starts, and why: each refusal is a skip with this reason."""

from types import SimpleNamespace

import pytest

from pytest_llmperf.backends.base import LoadRequest

pytest.importorskip("deepspeed", reason="the DeepSpeed backends need the deepspeed package")

from pytest_llmperf.backends.ds_inference import DsInferenceBackend
from pytest_llmperf.backends.ds_zero import DsZeroBackend

LLAMA = SimpleNamespace(model_type="llama")


def request(device: str, variant: str, world_size: int = 1) -> LoadRequest:
    return LoadRequest("/nowhere", "float32", device, variant=variant, world_size=world_size)


@pytest.mark.parametrize(("backend", "variant", "reason"), [
    (DsInferenceBackend, "kernel-inject", "kernel-inject needs CUDA"),
    (DsZeroBackend, "cpu-offload", "cpu-offload keeps the partitioned parameters in CPU memory"),
])
def test_cuda_only_variants_are_refused_on_cpu_and_allowed_on_cuda(backend, variant, reason):
    assert reason in backend.unavailable_reason(request("cpu", variant), LLAMA)
    assert backend.unavailable_reason(request("cuda:0", variant), LLAMA) is None


@pytest.mark.parametrize("backend", [DsInferenceBackend, DsZeroBackend])
def test_the_default_variant_runs_on_cpu(backend):
    variant = {"ds-inference": "autotp", "ds-zero": "default"}[backend.id]
    assert backend.unavailable_reason(request("cpu", variant, world_size=2), LLAMA) is None
