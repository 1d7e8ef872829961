import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from pytest_llmperf.models.fingerprint import config_hash
from pytest_llmperf.models.shapes import shape_config
from pytest_llmperf.models.spec import parse_model_spec
from pytest_llmperf.models.synthetic import ensure_synthetic, synthetic_dir
from pytest_llmperf.models.tokenizer import build_tokenizer, special_token_ids


@pytest.mark.parametrize("name", ["llama-tiny", "bloom-tiny", "gpt2-tiny"])
def test_built_model_loads_back(name, tmp_path):
    steps = []
    path = ensure_synthetic(parse_model_spec(f"synthetic:{name}"), "float32", tmp_path, progress=steps.append)
    assert path.parent == tmp_path and path.name.startswith(f"{name}-float32-")
    assert steps == ["initialising weights", "building tokenizer", "writing safetensors"]
    assert (path / "model.safetensors").is_file() and (path / "generation_config.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert model.config.model_type == shape_config(name).model_type
    assert len(tokenizer) == model.config.vocab_size == 1024
    special = (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert special == (0, 1, 2, 3)
    assert model.generation_config.pad_token_id == 3
    assert config_hash(model.config) == config_hash(shape_config(name))
    ids = tokenizer("t4 t900 t1023")["input_ids"]
    assert ids == [4, 900, 1023]
    assert tokenizer.decode(ids) == "t4 t900 t1023"


def test_dtype_is_stored(tmp_path):
    path = ensure_synthetic(shape_config("llama-tiny"), "bf16", tmp_path)
    assert "-bfloat16-" in path.name
    with safe_open(path / "model.safetensors", framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()}  # noqa: SIM118 (safetensors handles are not mappings) == {torch.bfloat16}


def test_same_seed_same_weights_other_seed_other_directory(tmp_path):
    a = ensure_synthetic(shape_config("gpt2-tiny"), "fp32", tmp_path / "a")
    b = ensure_synthetic(shape_config("gpt2-tiny"), "fp32", tmp_path / "b")
    c = ensure_synthetic(shape_config("gpt2-tiny"), "fp32", tmp_path / "a", seed=1)
    assert a.name == b.name and c.name != a.name
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()


def test_building_leaves_the_global_rng_alone(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    ensure_synthetic(shape_config("gpt2-tiny"), "fp32", tmp_path)
    assert torch.equal(torch.rand(3), expected)


def test_directory_hash_covers_config_dtype_and_seed(tmp_path):
    config = shape_config("llama-tiny")
    base = synthetic_dir(config, "fp32", tmp_path)
    assert synthetic_dir(config, "float32", tmp_path) == base
    assert synthetic_dir(config, "fp16", tmp_path) != base
    assert synthetic_dir(config, "fp32", tmp_path, seed=7) != base
    changed = shape_config("llama-tiny")
    changed.num_hidden_layers = 3
    assert synthetic_dir(changed, "fp32", tmp_path) != base
    volatile = shape_config("llama-tiny")
    volatile.transformers_version = "0.0.1"
    assert synthetic_dir(volatile, "fp32", tmp_path) == base


def test_second_call_reuses_the_cache(tmp_path):
    spec = parse_model_spec("synthetic:llama-tiny")
    first = ensure_synthetic(spec, "fp32", tmp_path)
    mtime = (first / "model.safetensors").stat().st_mtime_ns
    steps = []
    second = ensure_synthetic(spec, "fp32", tmp_path, progress=steps.append)
    assert second == first
    assert steps == []
    assert (second / "model.safetensors").stat().st_mtime_ns == mtime


def test_failed_build_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    from transformers import PreTrainedModel

    def crash(self, *args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        ensure_synthetic(shape_config("llama-tiny"), "fp32", tmp_path)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []
    monkeypatch.undo()
    assert (ensure_synthetic(shape_config("llama-tiny"), "fp32", tmp_path) / "config.json").is_file()


def test_leftovers_of_a_killed_build_are_ignored_and_removed(tmp_path):
    config = shape_config("llama-tiny")
    target = synthetic_dir(config, "fp32", tmp_path)
    staging = tmp_path / f".{target.name}.building-abc123"
    staging.mkdir()
    (staging / "config.json").write_text("{}")  # half-written, never renamed into place
    path = ensure_synthetic(config, "fp32", tmp_path)
    assert path == target and not staging.exists()
    assert AutoConfig.from_pretrained(path).model_type == "llama"


BUILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from transformers import AutoModelForCausalLM  # the slow imports, before the barrier
    from pytest_llmperf.models.spec import parse_model_spec
    from pytest_llmperf.models.synthetic import ensure_synthetic
    cache, barrier, me = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    (barrier / me).touch()
    while len(list(barrier.iterdir())) < 2:
        time.sleep(0.001)
    steps = []
    path = ensure_synthetic(parse_model_spec("synthetic:bloom-tiny"), "fp32", cache, progress=steps.append)
    print("built:", path, len(steps))
""")


def test_two_processes_building_at_once_end_with_one_valid_directory(tmp_path):
    cache, barrier = tmp_path / "cache", tmp_path / "barrier"
    barrier.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [
        subprocess.Popen([sys.executable, "-c", BUILD, str(cache), str(barrier), str(i)],
                         stdout=subprocess.PIPE, text=True, env=env)
        for i in range(2)
    ]
    # other libraries may print to stdout too (deepspeed does): keep only our line
    outputs = [
        next(line.split()[1:] for line in p.communicate(timeout=120)[0].splitlines() if line.startswith("built: "))
        for p in procs
    ]
    assert [p.returncode for p in procs] == [0, 0]
    paths = {out[0] for out in outputs}
    assert len(paths) == 1
    assert sorted(int(out[1]) for out in outputs) == [0, 3]  # one built, the other waited and reused
    entries = sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock"))
    assert entries == [os.path.basename(paths.pop())]
    path = cache / entries[0]
    AutoModelForCausalLM.from_pretrained(path)
    assert len(AutoTokenizer.from_pretrained(path)) == 1024


def test_tokenizer_follows_the_configs_special_ids():
    config = AutoConfig.for_model("gpt2", vocab_size=300, n_embd=16, n_layer=1, n_head=2)  # bos = eos = 50256
    config.bos_token_id = config.eos_token_id = 299
    assert special_token_ids(config) == {"bos": 299, "eos": 299, "unk": 0}
    tokenizer = build_tokenizer(config)
    assert len(tokenizer) == 300
    assert tokenizer.eos_token_id == tokenizer.bos_token_id == tokenizer.pad_token_id == 299
    assert tokenizer.unk_token_id == 0


def test_special_ids_outside_the_vocabulary_are_refused():
    config = AutoConfig.for_model("gpt2", vocab_size=300)  # eos 50256
    with pytest.raises(ValueError, match="bos_token_id 50256 lies outside the vocabulary"):
        special_token_ids(config)


def test_build_from_a_config_file_spec(tmp_path):
    cfg = tmp_path / "mini.json"
    cfg.write_text(json.dumps({"model_type": "mistral", "hidden_size": 32, "intermediate_size": 64,
                               "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 1,
                               "vocab_size": 100, "bos_token_id": 1, "eos_token_id": 2}))
    path = ensure_synthetic(parse_model_spec(f"synthetic:{cfg}"), "fp32", tmp_path / "cache")
    assert path.name.startswith("mini-float32-")
    assert AutoModelForCausalLM.from_pretrained(path).config.model_type == "mistral"
    assert len(AutoTokenizer.from_pretrained(path)) == 100


def test_hub_spec_is_not_synthetic(tmp_path):
    with pytest.raises(ValueError, match="not a synthetic model spec"):
        ensure_synthetic(parse_model_spec("hub:org/name"), "fp32", tmp_path)


def test_auto_dtype_must_be_resolved_first(tmp_path):
    with pytest.raises(ValueError, match="auto"):
        ensure_synthetic(shape_config("gpt2-tiny"), "auto", tmp_path)
