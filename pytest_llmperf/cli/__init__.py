"""The ``llmperf`` command: one module per verb, each with ``add_parser(commands)`` and ``run(args) -> int``.

``history`` (recent results), ``plan`` (memory a model needs), the regression gate's ``ab``, ``calibrate``
and ``accept``, and the history's management: ``merge``, ``export``, ``prune`` and ``dashboard``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pytest_llmperf.cli import ab, accept, calibrate, dashboard, export, history, merge, plan, prune

#: The verbs in the order ``llmperf --help`` lists them.
VERBS = (history, plan, ab, calibrate, accept, merge, export, prune, dashboard)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmperf", description="pytest-llmperf: history, planning and history "
                                     "management.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for verb in VERBS:
        verb.add_parser(commands).set_defaults(run_verb=verb.run)  # a name no verb's option uses
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run_verb(args)
    except Exception as e:  # every expected failure is reported as one line, not a traceback
        from pytest_llmperf.history.errors import HistoryError

        if isinstance(e, HistoryError):
            print(f"llmperf: {e}", file=sys.stderr)
            return 2
        raise
    return code
