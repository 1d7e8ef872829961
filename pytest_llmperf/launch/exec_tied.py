"""Run a command tied to a parent process: ``python -m pytest_llmperf.launch.exec_tied PID -- ARGV...``.

It asks the kernel to kill it when process PID dies (``PR_SET_PDEATHSIG``, which survives ``exec``), then
becomes the command. This gives any program, one whose code cannot call ``die_with_parent`` itself (a
server of another environment), the same tie, without a ``preexec_fn`` in a threaded parent.
"""

from __future__ import annotations

import os
import sys

from pytest_llmperf.launch.lifetime import die_with_parent


def tied_argv(argv: list[str] | tuple[str, ...], parent_pid: int | None = None) -> list[str]:
    """``argv`` wrapped so that it dies with ``parent_pid`` (default: this process)."""
    return [sys.executable, "-m", "pytest_llmperf.launch.exec_tied", str(parent_pid or os.getpid()), "--", *argv]


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m pytest_llmperf.launch.exec_tied PARENT_PID -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    die_with_parent(int(argv[0]))
    os.execvp(argv[2], argv[2:])
    return 127  # not reached: exec replaces this process


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
