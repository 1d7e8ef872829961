"""Which Python runs vLLM: vLLM pins its own torch and transformers, so it usually has an environment of its own.

In order: the interpreter named by ``LLMPERF_VLLM_PYTHON``; ``.venv-vllm/bin/python`` in the working
directory or the repository (what ``.ci/install-vllm`` makes); this Python, if it can import vllm.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from pytest_llmperf.backends.base import BackendUnavailable

PYTHON_ENV = "LLMPERF_VLLM_PYTHON"
VENV_DIR = ".venv-vllm"
INSTALL_HINT = (f"run .ci/install-vllm in the repository (it makes {VENV_DIR}), or set {PYTHON_ENV} to a Python "
                "whose environment has vllm (e.g. python -m venv ~/vllm-env && ~/vllm-env/bin/pip install vllm)")
#: the checkout holding this package (where ``.ci/install-vllm`` puts ``.venv-vllm``)
REPOSITORY = Path(__file__).resolve().parents[2]

_PROBE = """\
import importlib.metadata as m, importlib.util as u, sys
if u.find_spec("vllm") is None:
    sys.exit(3)
print(m.version(m.packages_distributions().get("vllm", ["vllm"])[0]))
"""


@dataclass(frozen=True)
class VllmPython:
    executable: Path
    vllm_version: str


@functools.cache
def _probe(executable: str) -> str | None:
    """vLLM's version in that interpreter's environment, None if it has none. Raises OSError if it cannot run."""
    done = subprocess.run([executable, "-c", _PROBE], capture_output=True, text=True, timeout=120, check=False)
    if done.returncode == 3:
        return None
    if done.returncode != 0:
        raise OSError(f"exited with status {done.returncode}: {done.stderr.strip()[-300:]}")
    return done.stdout.strip()


def _checked(executable: Path, named_by: str) -> VllmPython:
    try:
        version = _probe(str(executable))
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BackendUnavailable(f"backend vllm: the Python {executable} ({named_by}) cannot run: {e}; "
                                 f"{INSTALL_HINT}") from None
    if version is None:
        raise BackendUnavailable(f"backend vllm: the Python {executable} ({named_by}) cannot import vllm; "
                                 f"{INSTALL_HINT}")
    return VllmPython(executable, version)


def find_vllm_python() -> VllmPython:
    """The Python that runs vLLM; BackendUnavailable (a skip) naming ``LLMPERF_VLLM_PYTHON`` and the fix."""
    configured = os.environ.get(PYTHON_ENV)
    if configured:
        return _checked(Path(configured), f"{PYTHON_ENV}")
    for root in dict.fromkeys((Path.cwd(), REPOSITORY)):
        candidate = root / VENV_DIR / "bin" / "python"
        if candidate.exists():
            return _checked(candidate, f"{VENV_DIR} in {root}")
    if importlib.util.find_spec("vllm") is not None:
        return _checked(Path(sys.executable), "the test's own Python")
    raise BackendUnavailable(
        f"backend vllm needs vLLM, which pins its own torch and transformers: {PYTHON_ENV} is not set, there is no "
        f"{VENV_DIR}/bin/python in {Path.cwd()} or {REPOSITORY}, and {sys.executable} cannot import vllm; "
        f"{INSTALL_HINT}"
    )
