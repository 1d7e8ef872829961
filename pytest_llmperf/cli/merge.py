"""``llmperf merge``: import the runs of other histories (CI shards, other runners) into one."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_llmperf.cli.arguments import DB_FLAG, add_db_argument
from pytest_llmperf.cli.wording import count

if TYPE_CHECKING:
    from pytest_llmperf.cli.arguments import Commands
    from pytest_llmperf.history.merge import MergeReport


def add_parser(commands: Commands) -> argparse.ArgumentParser:
    parser = commands.add_parser("merge", help="import the runs of other histories (CI shards, other runners)")
    add_db_argument(parser, "history database to merge into, created if missing")
    parser.add_argument("sources", nargs="+", metavar="SOURCE",
                        help="history databases or JSON files written by `llmperf export`; never modified")
    return parser


def run(args: argparse.Namespace) -> int:
    report = _merge(args.db, [Path(s) for s in args.sources])
    for s in report.sources:
        print(f"{s.source}: {count(s.runs_added, 'run')} added, {s.runs_replaced} replaced (were still running in "
              f"{args.db}), {s.runs_skipped} skipped (already in {args.db})")
    print(f"merged {count(len(report.sources), 'source')} into {args.db}: {count(report.runs_added, 'run')} added, "
          f"{report.runs_replaced} replaced, {report.runs_skipped} skipped")
    return 0


def _merge(db: str, sources: list[Path]) -> MergeReport:
    """The history's write: the sources' runs into ``db`` (created only once every source is checked)."""
    from pytest_llmperf.history.merge import merge_into

    return merge_into(Path(db), sources, flag=DB_FLAG)
