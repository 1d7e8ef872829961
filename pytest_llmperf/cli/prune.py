"""``llmperf prune``: delete the runs older than some days, and free their space."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_llmperf.cli.arguments import DB_FLAG, add_db_argument, missing_history
from pytest_llmperf.cli.wording import count
from pytest_llmperf.settings import argument_type, non_negative_int

if TYPE_CHECKING:
    from pytest_llmperf.cli.arguments import Commands


def add_parser(commands: Commands) -> argparse.ArgumentParser:
    parser = commands.add_parser("prune", help="delete the runs older than some days, and free their space")
    add_db_argument(parser)
    parser.add_argument("--keep-days", type=argument_type(non_negative_int), required=True,
                        metavar="N", help="keep the runs started in the last N days")
    return parser


def run(args: argparse.Namespace) -> int:
    if missing_history(Path(args.db), "prune"):
        return 2
    removed = _prune(args.db, args.keep_days)
    print(f"removed {count(removed, 'run')} started more than {args.keep_days} days ago from {args.db}")
    return 0


def _prune(db: str, keep_days: int) -> int:
    """The history's write: delete the old runs; how many went."""
    from pytest_llmperf.history.prune import prune_history
    from pytest_llmperf.history.store import HistoryStore

    with HistoryStore.open(db, flag=DB_FLAG) as store:
        return prune_history(store, keep_days)
