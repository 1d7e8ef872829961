"""``llmperf history``: recent results from the history, as a table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_llmperf.cli.arguments import DB_FLAG, add_db_argument, add_metric_argument, missing_history
from pytest_llmperf.settings import argument_type, positive_int

if TYPE_CHECKING:
    from pytest_llmperf.cli.arguments import Commands
    from pytest_llmperf.history.recent import ResultRow


def add_parser(commands: Commands) -> argparse.ArgumentParser:
    parser = commands.add_parser("history", help="recent results from the history database")
    add_db_argument(parser)
    parser.add_argument("--test", help="only tests whose id contains this text")
    parser.add_argument("--model", help="only models whose id contains this text")
    parser.add_argument("--backend", help="only this backend")
    add_metric_argument(parser, "only this metric (e.g. tokens_per_s)")
    parser.add_argument("--last", type=argument_type(positive_int), default=20, metavar="N",
                        help="the results of the newest N runs (default: %(default)s)")
    return parser


def run(args: argparse.Namespace) -> int:
    from pytest_llmperf.report.history_table import history_table
    from pytest_llmperf.report.terminal import render_table

    path = Path(args.db)
    if missing_history(path, "history"):
        return 2
    rows = _recent_results(path, args)
    if not rows:
        print("no results match", file=sys.stderr)
        return 1
    print(render_table(history_table(rows)), end="")
    return 0


def _recent_results(path: Path, args: argparse.Namespace) -> list[ResultRow]:
    """The history's read: the newest results that match the filters."""
    from pytest_llmperf.history.store import HistoryStore

    with HistoryStore.open_read_only(path, flag=DB_FLAG) as store:
        return store.recent_results(test=args.test, model=args.model, backend=args.backend, metric=args.metric,
                                    last=args.last)
