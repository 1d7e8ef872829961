import json
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest

from pytest_llmperf.models.spec import ModelSpec, parse_model_spec


def test_synthetic_named_shape():
    spec = parse_model_spec("synthetic:llama-tiny")
    assert spec == ModelSpec("synthetic", "synthetic:llama-tiny", "synthetic:llama-tiny", shape="llama-tiny")
    assert spec.name == "llama-tiny"


def test_spec_is_frozen():
    with pytest.raises(FrozenInstanceError):
        parse_model_spec("synthetic:gpt2").kind = "hub"  # type: ignore[misc]


def test_unknown_synthetic_shape_lists_known_shapes():
    with pytest.raises(ValueError) as e:
        parse_model_spec("synthetic:llama-huge")
    message = str(e.value)
    assert "'llama-huge'" in message and "unknown synthetic shape" in message
    for known in ("bloom-tiny", "llama-tiny", "gpt2-tiny", "bloom-176b", "llama-3-8b"):
        assert known in message


def test_synthetic_config_file(tmp_path):
    cfg = tmp_path / "shapes" / "mistral-7b.json"
    cfg.parent.mkdir()
    cfg.write_text(json.dumps({"model_type": "mistral"}))
    spec = parse_model_spec(f"synthetic:{cfg}")
    assert (spec.kind, spec.config_path, spec.shape) == ("synthetic", cfg.resolve(), None)
    assert spec.model_id == "synthetic:mistral-7b.json"
    assert spec.name == "mistral-7b"


def test_synthetic_config_json_in_directory_is_named_by_its_directory(tmp_path):
    (tmp_path / "my-model").mkdir()
    (tmp_path / "my-model" / "config.json").write_text("{}")
    for text in (f"synthetic:{tmp_path / 'my-model'}", f"synthetic:{tmp_path / 'my-model' / 'config.json'}"):
        spec = parse_model_spec(text)
        assert spec.model_id == "synthetic:my-model/config.json"
        assert spec.name == "my-model"


def test_synthetic_missing_config_file():
    with pytest.raises(ValueError, match=r"config file '/nowhere/config.json' does not exist"):
        parse_model_spec("synthetic:/nowhere/config.json")


@pytest.mark.parametrize(
    ("text", "repo_id", "revision", "model_id"),
    [
        ("hub:bigscience/bloom-560m", "bigscience/bloom-560m", None, "hub:bigscience/bloom-560m"),
        ("hub:gpt2", "gpt2", None, "hub:gpt2"),
        ("hub:org/name@v1.0", "org/name", "v1.0", "hub:org/name@v1.0"),
        ("TinyLlama/TinyLlama-1.1B-Chat-v1.0", "TinyLlama/TinyLlama-1.1B-Chat-v1.0", None,
         "hub:TinyLlama/TinyLlama-1.1B-Chat-v1.0"),
    ],
)
def test_hub_forms(text, repo_id, revision, model_id, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no directory of that name here
    spec = parse_model_spec(text)
    assert (spec.kind, spec.repo_id, spec.revision, spec.model_id) == ("hub", repo_id, revision, model_id)


@pytest.mark.parametrize(
    ("text", "problem"),
    [("hub:", "is not a hub repository id"), ("hub:a/b/c", "is not a hub repository id"),
     ("hub:org--x/y", "is not a hub repository id"), ("hub:org/name@", "revision")],
)
def test_bad_hub_ids(text, problem):
    with pytest.raises(ValueError, match=problem):
        parse_model_spec(text)


def test_existing_relative_directory_wins_over_hub_id(tmp_path, monkeypatch):
    (tmp_path / "org" / "name").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    spec = parse_model_spec("org/name")
    assert (spec.kind, spec.path, spec.model_id) == ("local", tmp_path / "org" / "name", "local:name")


def test_local_forms(tmp_path, monkeypatch):
    ckpt = tmp_path / "ckpt-1"
    ckpt.mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    for text in (str(ckpt), "./ckpt-1", "ckpt-1", "~/ckpt-1", f"local:{ckpt}"):
        spec = parse_model_spec(text)
        assert (spec.kind, spec.path, spec.model_id, spec.text) == ("local", ckpt, "local:ckpt-1", text)


def test_model_id_does_not_depend_on_where_the_checkpoint_is(tmp_path):
    a, b = tmp_path / "a" / "model", tmp_path / "b" / "model"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    assert parse_model_spec(str(a)).model_id == parse_model_spec(str(b)).model_id == "local:model"


def test_path_like_but_missing_directory_is_still_local():
    # the directory's absence is reported when the model is resolved, with the fix
    spec = parse_model_spec("/no/such/checkpoint")
    assert (spec.kind, spec.path) == ("local", Path("/no/such/checkpoint"))


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "it is empty"),
        ("   ", "it is empty"),
        ("llama-tiny", "synthetic:llama-tiny"),
        ("justaword", "not an existing directory"),
        ("ftp:thing", "unknown scheme 'ftp:'"),
    ],
)
def test_errors_name_value_problem_and_forms(text, problem, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as e:
        parse_model_spec(text)
    message = str(e.value)
    assert repr(text) in message
    assert problem in message
    assert "synthetic:<shape>" in message and "hub:<org/name>" in message and "<directory>" in message
