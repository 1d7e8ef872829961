"""One node's launcher: torch's elastic agent (what ``torchrun`` runs), tied to the test process.

Started by :class:`~pytest_llmperf.launch.distributed.RankGroup` as
``python -m pytest_llmperf.launch.agent <torchrun arguments>``; on another machine, plain ``torchrun``
with the same arguments joins the same group (see the README).
"""

from __future__ import annotations

import os
import sys

from pytest_llmperf.launch.lifetime import die_with_parent

PARENT_PID_ENV = "LLMPERF_PARENT_PID"


def main(argv: list[str]) -> None:
    parent = os.environ.get(PARENT_PID_ENV)
    die_with_parent(int(parent) if parent else None)
    from torch.distributed.run import main as torchrun

    torchrun(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
