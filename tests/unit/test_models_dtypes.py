import subprocess
import sys

import pytest

from pytest_llmperf.models.dtypes import dtype_bytes, parse_dtype, resolve_dtype, torch_dtype


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [("float32", "float32"), ("fp32", "float32"), ("float", "float32"), ("FP16", "float16"),
     ("half", "float16"), ("bf16", "bfloat16"), (" torch.bfloat16 ", "bfloat16"), ("auto", "auto")],
)
def test_parse_dtype_accepts_aliases(spelling, canonical):
    assert parse_dtype(spelling) == canonical


def test_parse_dtype_error_names_value_and_allowed_names():
    with pytest.raises(ValueError) as e:
        parse_dtype("int8")
    assert "'int8'" in str(e.value)
    for name in ("float32", "float16", "bfloat16", "bf16", "auto"):
        assert name in str(e.value)


def test_auto_refused_where_a_concrete_dtype_is_needed():
    with pytest.raises(ValueError, match="auto"):
        dtype_bytes("auto")
    with pytest.raises(ValueError):
        parse_dtype("auto", allow_auto=False)


@pytest.mark.parametrize(("device", "expected"), [("cpu", "float32"), ("cuda", "bfloat16"), ("cuda:1", "bfloat16")])
def test_resolve_auto_per_device(device, expected):
    assert resolve_dtype("auto", device) == expected


def test_resolve_keeps_explicit_dtype():
    assert resolve_dtype("fp16", "cpu") == "float16"
    assert resolve_dtype("float32", "cuda") == "float32"


def test_dtype_bytes():
    assert [dtype_bytes(n) for n in ("fp32", "fp16", "bf16")] == [4, 2, 2]


def test_torch_dtype():
    import torch

    assert torch_dtype("bf16") is torch.bfloat16
    assert torch_dtype("float") is torch.float32


def test_importing_dtypes_spec_and_shapes_does_not_import_torch():
    code = (
        "import sys; import pytest_llmperf.models.dtypes, pytest_llmperf.models.spec, "
        "pytest_llmperf.models.shapes; "
        "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
