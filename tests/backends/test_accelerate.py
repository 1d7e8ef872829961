"""The accelerate backend for real on CPU (synthetic models, float32), and its CUDA plans on empty models."""

import accelerate
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from pytest_llmperf.backends.accelerate import AccelerateBackend, plan_device_map
from pytest_llmperf.backends.base import BackendUnavailable, LoadRequest
from pytest_llmperf.backends.hf import HfBackend
from pytest_llmperf.measure.rank import RankRunner
from pytest_llmperf.models.shapes import shape_config
from pytest_llmperf.models.spec import parse_model_spec
from pytest_llmperf.models.synthetic import ensure_synthetic
from pytest_llmperf.prompts import prompt_token_ids

NEW_TOKENS = 32


@pytest.fixture(scope="module", params=["llama-tiny", "bloom-tiny"])
def checkpoint(request, synthetic_cache):
    return ensure_synthetic(parse_model_spec(f"synthetic:{request.param}"), "float32", synthetic_cache)


@pytest.fixture(scope="module")
def prompt():
    ids = prompt_token_ids(vocab_size=1024, batch_size=2, prompt_tokens=8, seed=0, special_ids=[0, 1, 2, 3])
    return torch.as_tensor(ids)


@pytest.fixture(scope="module")
def hf_reference(checkpoint, prompt):
    """(tokens, weights bytes) of the hf backend: what every accelerate variant must reproduce."""
    runner = RankRunner(HfBackend(), "cpu")
    load = runner.load(LoadRequest(checkpoint, "float32", "cpu"))
    tokens = runner.backend.generate(prompt, NEW_TOKENS)
    runner.close()
    return tokens, load.weights_bytes


def _loaded(checkpoint, variant="auto", **request):
    runner = RankRunner(AccelerateBackend(), "cpu")
    return runner, runner.load(LoadRequest(checkpoint, "float32", "cpu", variant=variant, **request))


def test_auto_generates_what_the_hf_backend_generates(checkpoint, prompt, hf_reference):
    runner, load = _loaded(checkpoint)
    tokens = runner.backend.generate(prompt, NEW_TOKENS)
    assert torch.equal(tokens, hf_reference[0])
    assert runner.backend.device_map() == {"": "cpu"} and load.devices == ("cpu",)
    assert load.device_map == (("", "cpu"),)  # the map travels with the load result into the history
    assert runner.backend.input_device == "cpu"
    runner.close()


def test_disk_offload_generates_the_same_tokens_from_weights_on_disk(checkpoint, prompt, hf_reference, tmp_path):
    runner, load = _loaded(checkpoint, "disk-offload", scratch_dir=tmp_path)
    backend = runner.backend
    assert torch.equal(backend.generate(prompt, NEW_TOKENS), hf_reference[0])
    placed = backend.device_map()
    assert set(placed.values()) == {"cpu", "disk"} and load.devices == backend.devices() == ("cpu", "disk")
    # the later half of the decoder blocks is on disk, the rest of the model in memory
    assert [name for name, device in placed.items() if device == "disk"][-1].endswith(".1")
    assert (tmp_path / "index.json").is_file() and any(tmp_path.glob("*.dat"))
    assert any(p.device.type == "meta" for p in backend.module().parameters())
    runner.close()


@pytest.mark.parametrize("variant", ["auto", "disk-offload"])
def test_load_phases_add_up_to_the_load_time(checkpoint, hf_reference, variant, tmp_path):
    runner, load = _loaded(checkpoint, variant, scratch_dir=tmp_path)
    assert [name for name, _ in load.phases] == ["init", "plan", "dispatch"]
    assert sum(s for _, s in load.phases) == pytest.approx(load.load_s, rel=0.05)
    # offloaded weights are counted too, by their shapes
    assert load.weights_bytes == hf_reference[1]
    runner.close()


def test_tied_embeddings_load_the_output_head_too(synthetic_cache, prompt, tmp_path):
    # the checkpoint has no lm_head.weight: it must be tied to the input embedding before loading
    config = shape_config("llama-tiny")
    config.tie_word_embeddings = True
    tied = ensure_synthetic(config, "float32", synthetic_cache)
    hf = RankRunner(HfBackend(), "cpu")
    expected_bytes = hf.load(LoadRequest(tied, "float32", "cpu")).weights_bytes
    expected = hf.backend.generate(prompt, NEW_TOKENS)
    hf.close()
    for variant in ("auto", "disk-offload"):
        runner, load = _loaded(tied, variant, scratch_dir=tmp_path / variant)
        assert torch.equal(runner.backend.generate(prompt, NEW_TOKENS), expected), variant
        assert load.weights_bytes == expected_bytes
        runner.close()


def test_a_weight_missing_from_the_checkpoint_fails_the_load(synthetic_cache, tmp_path):
    source = ensure_synthetic(parse_model_spec("synthetic:llama-tiny"), "float32", synthetic_cache)
    for f in source.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    weights = load_file(source / "model.safetensors")
    del weights["model.norm.weight"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"no value for 1 weight\(s\).*model\.norm\.weight"):
        _loaded(tmp_path)


def test_cpu_offload_needs_cuda(tmp_path):
    with pytest.raises(BackendUnavailable, match=r"cpu-offload .* needs CUDA; on CPU the whole model already is"):
        _loaded(tmp_path, "cpu-offload")


def test_two_devices_are_not_possible_on_cpu(tmp_path):
    with pytest.raises(BackendUnavailable, match="over CUDA devices; on CPU there is one device, so world size 2"):
        _loaded(tmp_path, "auto", devices=("cpu", "cpu"))


def test_disk_offload_needs_a_scratch_dir(tmp_path):
    with pytest.raises(ValueError, match=r"disk-offload needs LoadRequest\.scratch_dir"):
        _loaded(tmp_path, "disk-offload")


# CUDA plans, computed on empty-weight models with made-up free memory: they touch no GPU.

def _empty(shape):
    with accelerate.init_empty_weights():
        return AutoModelForCausalLM.from_config(shape_config(shape), dtype=torch.bfloat16)


def _plan(shape, variant, devices, free_bytes=10 * 2**30):
    request = LoadRequest(None, "bfloat16", devices[0], variant=variant, devices=devices)
    return plan_device_map(_empty(shape), request, free_bytes=lambda i: free_bytes)


@pytest.mark.parametrize("variant", ["auto", "balanced", "sequential"])
def test_cuda_plans_use_exactly_the_leased_devices(variant):
    device_map, main = _plan("llama-1b", variant, ("cuda:2", "cuda:3"))
    expected = {2} if variant == "sequential" else {2, 3}
    assert set(device_map.values()) == expected and main == 2


def test_balanced_low_0_works_on_gpus_not_numbered_from_0():
    # accelerate's get_balanced_memory(low_zero=True) indexes GPUs 0..n-1 (KeyError for 2 and 3)
    device_map, main = _plan("llama-1b", "balanced_low_0", ("cuda:2", "cuda:3", "cuda:5"))
    assert set(device_map.values()) == {3, 5} and main == 3


def test_a_model_too_large_for_the_leased_gpus_is_out_of_memory():
    with pytest.raises(torch.OutOfMemoryError, match=r"do not fit .* cuda:0"):
        _plan("llama-1b", "auto", ("cuda:0",), free_bytes=2**30)


@pytest.mark.parametrize("variant, offload", [("cpu-offload", "cpu"), ("disk-offload", "disk")])
def test_cuda_offload_keeps_the_first_half_of_the_blocks_on_the_gpus(variant, offload):
    device_map, main = _plan("llama-1b", variant, ("cuda:1", "cuda:0"))
    blocks = [device_map[f"model.layers.{i}"] for i in range(22)]
    assert blocks == [1] * 6 + [0] * 5 + [offload] * 11
    assert main == 1 and device_map["model.embed_tokens"] == device_map["lm_head"] == 1
