"""Where a run happened: the comparable environment fingerprint, and the run's context.

``Environment`` holds what decides whether two results may be compared (device model and count,
driver/CUDA, library versions, whether the GPU clocks are locked). ``RunContext`` holds what
describes a run but must not split a series (host name, git commit and branch, command line).
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from pytest_llmperf.digest import canonical_digest
from pytest_llmperf.measure import nvml
from pytest_llmperf.measure.conditions import Conditions, all_clocks_locked

LIBRARIES = ("torch", "transformers", "accelerate", "deepspeed")

#: fields added after histories were first recorded: left out of the canonical form while None, so
#: that an environment that lacks them keeps the fingerprint (and the series) it always had
_LATER_FIELDS = ("gpu_clocks_locked",)


@dataclass(frozen=True)
class Environment:
    device_kind: str
    device_model: str
    device_count: int
    driver: str | None
    cuda: str | None
    python: str
    torch: str | None
    transformers: str | None
    accelerate: str | None
    deepspeed: str | None
    #: CUDA only: True when every GPU's clocks are locked, False when one's are not; None on CPU or unknown
    gpu_clocks_locked: bool | None = None

    def canonical(self) -> dict[str, object]:
        """The fields, less the later ones that are None: what the fingerprint hashes and the history stores."""
        return {k: v for k, v in asdict(self).items() if not (k in _LATER_FIELDS and v is None)}

    def fingerprint(self) -> str:
        return canonical_digest(self.canonical(), 16)


@dataclass(frozen=True)
class GitState:
    commit: str | None
    branch: str | None
    dirty: bool | None


@dataclass(frozen=True)
class RunContext:
    host: str
    cpu_model: str
    cpu_count: int
    platform: str
    git: GitState
    project_root: str
    argv: tuple[str, ...]
    plugin_version: str
    pytest_version: str


def package_version(name: str) -> str | None:
    """A distribution's version without importing it (imports of torch and friends cost seconds)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _torch_cuda_version() -> str | None:
    if package_version("torch") is None:
        return None
    import torch

    return torch.version.cuda


def collect_environment(device_kind: str, conditions: Conditions | None = None) -> Environment:
    """The fingerprint of the devices a run uses: ``device_kind`` is "cpu" or "cuda". Whether the GPU
    clocks are locked comes from ``conditions`` when given (the run's own reading), else from NVML now."""
    if device_kind == "cuda":
        gpus = nvml.visible_devices()
        if gpus:
            names = sorted({g.name for g in gpus})
            model, count = " + ".join(names), len(gpus)
        else:
            import torch

            count = torch.cuda.device_count()
            model = " + ".join(sorted({torch.cuda.get_device_name(i) for i in range(count)}))
        driver, cuda = nvml.driver_version(), _torch_cuda_version()
        locked = all_clocks_locked(conditions.gpus if conditions is not None else nvml.gpu_states())
    else:
        model, count, driver, cuda, locked = cpu_model(), os.cpu_count() or 1, None, None, None
    return Environment(
        device_kind=device_kind,
        device_model=model,
        device_count=count,
        driver=driver,
        cuda=cuda,
        python=platform.python_version(),
        **{lib: package_version(lib) for lib in LIBRARIES},
        gpu_clocks_locked=locked,
    )


class GitError(Exception):
    """A git command failed or could not run; the message names the command, the folder and git's words."""


def git(root: Path, *args: str, timeout: float | None = None) -> str:
    """The stripped standard output of ``git -C root ARGS``; GitError when it cannot run or fails."""
    command = f"git {' '.join(args)}"
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=timeout,
                             check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise GitError(f"{command} could not run in {root}: {exc}") from exc
    if out.returncode != 0:
        raise GitError(f"{command} failed in {root}: {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout.strip()


def _git_or_none(root: Path, *args: str) -> str | None:
    """What describes a run is best effort: None where git is missing, slow or says no."""
    try:
        return git(root, *args, timeout=10)
    except GitError:
        return None


def git_state(root: Path) -> GitState:
    commit = _git_or_none(root, "rev-parse", "HEAD")
    if commit is None:
        return GitState(None, None, None)
    status = _git_or_none(root, "status", "--porcelain", "--untracked-files=no")
    branch = _git_or_none(root, "rev-parse", "--abbrev-ref", "HEAD")
    if branch in (None, "HEAD"):  # a detached checkout, as CI makes: the branch CI says it is building
        branch = os.environ.get("LLMPERF_BRANCH") or os.environ.get("GITHUB_HEAD_REF") or \
            os.environ.get("GITHUB_REF_NAME") or branch
    return GitState(commit=commit, branch=branch, dirty=None if status is None else bool(status))


def default_branch(root: Path) -> str:
    """The repository's default branch: origin's HEAD, else init.defaultBranch, main or master if it exists."""
    remote_head = _git_or_none(root, "symbolic-ref", "--quiet", "--short", "refs/remotes/origin/HEAD")
    if remote_head and "/" in remote_head:
        return remote_head.split("/", 1)[1]
    for name in (_git_or_none(root, "config", "init.defaultBranch"), "main", "master"):
        if name and _git_or_none(root, "rev-parse", "--verify", "--quiet", f"refs/heads/{name}") is not None:
            return name
    return "main"


def collect_run_context(project_root: Path, argv: tuple[str, ...]) -> RunContext:
    return RunContext(
        host=socket.gethostname(),
        cpu_model=cpu_model(),
        cpu_count=os.cpu_count() or 1,
        platform=platform.platform(),
        git=git_state(project_root),
        project_root=str(project_root),
        argv=argv,
        plugin_version=package_version("pytest-llmperf") or "unknown",
        pytest_version=package_version("pytest") or "unknown",
    )
