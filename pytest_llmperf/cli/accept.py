"""``llmperf accept``: acknowledge an intended regression after the fact; its level becomes the baseline."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_llmperf.cli.arguments import DB_FLAG, add_db_argument, add_metric_argument, missing_history

if TYPE_CHECKING:
    from pytest_llmperf.cli.arguments import Commands


def add_parser(commands: Commands) -> argparse.ArgumentParser:
    parser = commands.add_parser("accept", help="acknowledge an intended regression: its level becomes the baseline")
    add_db_argument(parser)
    parser.add_argument("--run", metavar="ID", help="the run whose level is accepted (default: the newest run)")
    parser.add_argument("--test", required=True, metavar="PATTERN",
                        help="test ids it covers; * matches any text: 'suites/*::test_x[*-hf-*]'")
    add_metric_argument(parser, "only this metric (default: every metric)")
    parser.add_argument("--reason", required=True, help="why the regression is intended")
    return parser


def run(args: argparse.Namespace) -> int:
    from pytest_llmperf.history.errors import HistoryError

    path = Path(args.db)
    if missing_history(path, "accept"):
        return 2
    try:
        run_id = _accept(path, args)
    except (HistoryError, ValueError) as e:
        print(f"llmperf accept: {e}", file=sys.stderr)
        return 2
    print(f"accepted in run {run_id}: {args.test}{' ' + args.metric if args.metric else ''}: {args.reason}")
    return 0


def _accept(path: Path, args: argparse.Namespace) -> str:
    """The history's write: the acceptance, in ``--run`` or the newest run; the run's id."""
    from pytest_llmperf.history.runs import newest_run_id
    from pytest_llmperf.history.store import HistoryStore

    with HistoryStore.open(path, flag=DB_FLAG) as store:
        run_id = args.run or newest_run_id(store)
        store.accept(run_id, args.test, args.reason, metric=args.metric)
    return run_id
