"""The commands a rank obeys, by name: the one table behind the inline launcher and every rank process.

A command is a function ``(rank, **args) -> answer``; ``rank`` is the :class:`Rank` it runs on (its
backend id, device and, after ``load``, its :class:`~pytest_llmperf.measure.rank.RankRunner`). The
launchers send a command's name and keyword arguments; the inline launcher runs it here, in the test's
process, and a rank process (``rank_main``) runs it on the arguments it received. A ``progress``
argument, where a command takes one, is a ``progress(description, completed, total)`` callback.

Adding a command is one entry in :data:`COMMANDS` (with :func:`rank_command`). Code outside this
package, a test's fault injection for instance, adds its own commands from a module of its own, named
in the environment variable ``LLMPERF_RANK_COMMAND_MODULES`` (comma-separated module names, importable
by the ranks): every rank and inline launcher imports those modules before its first command, and each
registers its commands with :func:`rank_command` when imported.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from pytest_llmperf.backends.base import LoadRequest
from pytest_llmperf.measure.rank import ProgressFn, RankRunner
from pytest_llmperf.results import GenerateConfig, GenerateResult, LoadResult

#: comma-separated modules that register commands of their own (imported by every rank)
COMMAND_MODULES_ENV = "LLMPERF_RANK_COMMAND_MODULES"
#: the command that ends a rank: its backend closed, then (in a rank process) its process group
CLOSE = "close"


class Rank:
    """One rank's state across commands: which backend it loads, on which device, and once loaded, its runner."""

    def __init__(self, backend_id: str, device: str):
        self.backend_id = backend_id
        self.device = device
        self.loaded: RankRunner | None = None

    @property
    def runner(self) -> RankRunner:
        if self.loaded is None:
            raise RuntimeError(f"a command of backend {self.backend_id} came before 'load'")
        return self.loaded


CommandFn = Callable[..., Any]

#: command name -> what the rank runs; fill it with :func:`rank_command`
COMMANDS: dict[str, CommandFn] = {}


def rank_command(name: str) -> Callable[[CommandFn], CommandFn]:
    """Register the decorated function as the command ``name``.

    A name is registered once; the same function imported again (a module found under two names)
    is not a second registration.
    """
    def register(fn: CommandFn) -> CommandFn:
        known = COMMANDS.get(name)
        if known is not None and _where(known) != _where(fn):
            raise ValueError(f"rank command {name!r} is already registered by {known.__module__}.{known.__qualname__}; "
                             f"give {fn.__module__}.{fn.__qualname__} another name")
        COMMANDS[name] = fn
        return fn

    return register


def _where(fn: CommandFn) -> tuple[str, int, str]:
    code = fn.__code__
    return code.co_filename, code.co_firstlineno, fn.__qualname__


def import_command_modules() -> None:
    """Import the modules named in ``LLMPERF_RANK_COMMAND_MODULES``, which register their own commands."""
    for module in filter(None, (m.strip() for m in os.environ.get(COMMAND_MODULES_ENV, "").split(","))):
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ImportError(f"{COMMAND_MODULES_ENV} names module {module!r}, which cannot be imported here ({e}); "
                              "put its folder on PYTHONPATH or remove it from the variable") from e


def run_command(rank: Rank, name: str, args: dict[str, Any]) -> Any:
    """Run the command ``name`` on ``rank``: its answer."""
    fn = COMMANDS.get(name)
    if fn is None:
        raise ValueError(f"unknown rank command {name!r}; known: {', '.join(sorted(COMMANDS))} (a command of "
                         f"your own is registered with rank_command, in a module named in {COMMAND_MODULES_ENV})")
    return fn(rank, **args)


# ---------------------------------------------------------------------------------------- the commands


@rank_command("load")
def load(rank: Rank, request: LoadRequest) -> LoadResult:
    from pytest_llmperf.backends import backend_class

    rank.loaded = RankRunner(backend_class(rank.backend_id)(), rank.device)
    return rank.loaded.load(request)


@rank_command("first_generate")
def first_generate(rank: Rank, input_ids: np.ndarray, new_tokens: int) -> float | None:
    return rank.runner.first_generate(input_ids, new_tokens)


@rank_command("generate")
def generate(rank: Rank, config: GenerateConfig, input_ids: np.ndarray,
             progress: ProgressFn | None = None) -> GenerateResult:
    return rank.runner.generate(config, input_ids, progress)


@rank_command("tokens")
def tokens(rank: Rank, input_ids: np.ndarray, new_tokens: int) -> np.ndarray:
    return rank.runner.tokens(input_ids, new_tokens)


@rank_command("limit_memory")
def limit_memory(rank: Rank, headroom_bytes: int) -> int:
    from pytest_llmperf.measure.memory_limit import limit_memory as limit

    return limit(rank.device, headroom_bytes)


@rank_command(CLOSE)
def close(rank: Rank) -> None:
    if rank.loaded is not None:
        rank.loaded.close()
