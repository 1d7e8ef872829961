import json
from pathlib import Path

import pytest

from pytest_llmperf.models import plan as plan_module
from pytest_llmperf.models.fingerprint import config_hash
from pytest_llmperf.models.shapes import shape_config
from pytest_llmperf.models.sources import ModelSourceError, ModelTooLarge, ResolvedModel, resolve_model
from pytest_llmperf.models.spec import parse_model_spec
from pytest_llmperf.results import ModelIdentity

TINY_LLAMA = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128}


def test_synthetic_is_built_and_identified(tmp_path):
    steps = []
    resolved = resolve_model(parse_model_spec("synthetic:llama-tiny"), "auto", tmp_path, progress=steps.append)
    assert isinstance(resolved, ResolvedModel)
    assert resolved.path.parent == tmp_path and (resolved.path / "model.safetensors").is_file()
    assert steps  # it was built
    assert resolved.identity == ModelIdentity(
        model_id="synthetic:llama-tiny",
        config_hash=config_hash(shape_config("llama-tiny")),
        model_type="llama",
        dtype="float32",  # auto on CPU
        num_parameters=205_120,
    )
    assert len(resolved.config_hash) == 16
    assert resolved.config.num_key_value_heads == 2


def test_synthetic_identity_is_the_same_in_another_cache_and_dtype_is_resolved_per_device(tmp_path, monkeypatch):
    a = resolve_model(parse_model_spec("synthetic:gpt2-tiny"), "fp32", tmp_path / "a")
    b = resolve_model(parse_model_spec("synthetic:gpt2-tiny"), "fp32", tmp_path / "b")
    assert a.identity == b.identity and a.path != b.path
    # on CUDA "auto" means bfloat16 (the build itself happens on the host)
    cuda = resolve_model(parse_model_spec("synthetic:gpt2-tiny"), "auto", tmp_path / "a", device_kind="cuda",
                         device_memory_bytes=10**9)
    assert cuda.dtype == "bfloat16" and "-bfloat16-" in cuda.path.name
    assert cuda.config_hash == a.config_hash


def test_bloom_176b_is_too_large(tmp_path):
    spec = parse_model_spec("synthetic:bloom-176b")
    with pytest.raises(ModelTooLarge) as e:
        resolve_model(spec, "bf16", tmp_path, device_kind="cuda", device_memory_bytes=80 * 10**9)
    assert isinstance(e.value, ModelSourceError)
    assert "352.49 GB" in e.value.reason
    assert "see `llmperf plan synthetic:bloom-176b`" in str(e.value)
    assert list(tmp_path.iterdir()) == []  # nothing was started


def test_already_built_model_needs_no_free_disk(tmp_path, monkeypatch):
    spec = parse_model_spec("synthetic:gpt2-tiny")
    resolve_model(spec, "fp32", tmp_path)
    monkeypatch.setattr(plan_module.shutil, "disk_usage", lambda path: type("U", (), {"free": 0})())
    assert resolve_model(spec, "fp32", tmp_path).path.is_dir()
    with pytest.raises(ModelTooLarge, match="free disk"):
        resolve_model(spec, "fp32", tmp_path / "elsewhere")


def test_local_checkpoint(tmp_path):
    ckpt = tmp_path / "my-ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps(TINY_LLAMA))
    resolved = resolve_model(parse_model_spec(str(ckpt)), "bf16", tmp_path / "cache")
    assert resolved.path == ckpt
    assert resolved.identity.model_id == "local:my-ckpt"
    assert (resolved.model_type, resolved.dtype) == ("llama", "bfloat16")
    assert resolved.num_parameters > 0
    assert not (tmp_path / "cache").exists()


def test_local_checkpoint_missing(tmp_path):
    with pytest.raises(ModelSourceError) as e:
        resolve_model(parse_model_spec(str(tmp_path / "gone")), "fp32", tmp_path)
    assert str(tmp_path / "gone") in str(e.value) and "does not exist" in str(e.value)
    assert "config.json" in str(e.value)


def test_local_checkpoint_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelSourceError, match=r"has no config\.json; pass the checkpoint directory itself"):
        resolve_model(parse_model_spec(str(tmp_path / "empty")), "fp32", tmp_path)


def test_local_checkpoint_that_is_not_a_causal_lm(tmp_path):
    (tmp_path / "vit").mkdir()
    (tmp_path / "vit" / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(ModelSourceError, match="not a causal language model"):
        resolve_model(parse_model_spec(str(tmp_path / "vit")), "fp32", tmp_path)


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    home = tmp_path / "hf"
    home.mkdir()
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    return home


def test_hub_model_absent_from_cache(hf_home, tmp_path):
    with pytest.raises(ModelSourceError) as e:
        resolve_model(parse_model_spec("hub:acme/never-downloaded"), "fp32", tmp_path / "cache")
    message = str(e.value)
    assert "'acme/never-downloaded'" in message
    assert str(hf_home / "hub") in message and "HF_HOME" in message
    assert "no download is attempted" in message
    assert "hf download acme/never-downloaded" in message and "local checkpoint directory" in message


def _fake_hub_cache(hub: Path, repo_id: str, commit: str, ref: str = "main") -> Path:
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(TINY_LLAMA))
    (repo / "refs").mkdir()
    (repo / "refs" / ref).write_text(commit)
    return snapshot


def test_hub_model_from_the_local_cache(hf_home, tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = _fake_hub_cache(hf_home / "hub", "acme/tiny", commit)
    resolved = resolve_model(parse_model_spec("acme/tiny"), "fp32", tmp_path / "cache")
    assert resolved.path == snapshot
    assert resolved.model_id == "hub:acme/tiny"
    assert resolved.model_type == "llama"
    pinned = resolve_model(parse_model_spec(f"hub:acme/tiny@{commit}"), "fp32", tmp_path / "cache")
    assert pinned.path == snapshot and pinned.model_id == f"hub:acme/tiny@{commit}"
    assert pinned.config_hash == resolved.config_hash


def test_hub_cache_from_hf_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    snapshot = _fake_hub_cache(tmp_path / "elsewhere", "acme/tiny", "f" * 40)
    assert resolve_model(parse_model_spec("hub:acme/tiny"), "fp32", tmp_path).path == snapshot


def test_hub_revision_absent_from_cache(hf_home, tmp_path):
    _fake_hub_cache(hf_home / "hub", "acme/tiny", "a" * 40)
    with pytest.raises(ModelSourceError, match=r"at revision 'v2'.*not in the local Hugging Face cache"):
        resolve_model(parse_model_spec("hub:acme/tiny@v2"), "fp32", tmp_path)


def test_synthetic_config_that_is_not_a_causal_lm(tmp_path):
    (tmp_path / "vit.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(ModelSourceError, match="not a causal language model"):
        resolve_model(parse_model_spec(f"synthetic:{tmp_path / 'vit.json'}"), "fp32", tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_synthetic_config_file_that_became_unreadable(tmp_path):
    cfg = tmp_path / "shape.json"
    cfg.write_text(json.dumps(TINY_LLAMA))
    spec = parse_model_spec(f"synthetic:{cfg}")
    cfg.write_text("{not json")
    with pytest.raises(ModelSourceError, match="cannot read model config"):
        resolve_model(spec, "fp32", tmp_path / "cache")
