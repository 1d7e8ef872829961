"""``llmperf ab``: same-job A/B, the base and head revisions in alternating processes, gated."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from pytest_llmperf.cli.ab_run import add_ab_arguments, run_ab_or_say_why
from pytest_llmperf.cli.arguments import DB_FLAG
from pytest_llmperf.settings import argument_type, duration, positive_int

if TYPE_CHECKING:
    from pytest_llmperf.cli.arguments import Commands
    from pytest_llmperf.gate.ab import AbConfig, AbResult


def add_parser(commands: Commands) -> argparse.ArgumentParser:
    parser = commands.add_parser("ab", help="same-job A/B: base and head revisions in alternating processes")
    parser.add_argument("--base", required=True, metavar="REV", help="the baseline revision (e.g. the merge base)")
    parser.add_argument("--head", default="HEAD", metavar="REV", help="the revision under test (default: HEAD)")
    parser.add_argument("--max-rounds", type=argument_type(positive_int), default=100, metavar="N",
                        help="at most N rounds, however many the plan asks for (default: %(default)s)")
    parser.add_argument("--time-budget", type=argument_type(duration), metavar="TIME",
                        help="start no round that would end after this, e.g. 15m or 900s (default: no budget)")
    add_ab_arguments(parser, rounds=2)
    return parser


def run(args: argparse.Namespace) -> int:
    from pytest_llmperf.gate.ab import store_verdicts
    from pytest_llmperf.report.terminal import render_table
    from pytest_llmperf.report.verdicts import headline, verdict_table

    ran = run_ab_or_say_why(args, args.base, args.head)
    if ran is None:
        return 2
    config, result = ran
    head_run = store_verdicts(config, result)
    print(render_table(verdict_table(result.verdicts)), end="")
    print(f"{headline(result.verdicts)} after {result.rounds} round(s); base {result.base.commit[:12]}, "
          f"head {result.head.commit[:12]}, A/B group {result.group} in {config.db}")
    if head_run is not None:
        _write_reports(config, result, head_run)
    return 1 if result.fails else 0


def _write_reports(config: AbConfig, result: AbResult, head_run: str) -> None:
    """The history's read: the head run's report files, from what the run stored."""
    from pytest_llmperf.gate.ab import reproduce_command
    from pytest_llmperf.history.store import HistoryStore
    from pytest_llmperf.report.files import write_run_reports

    with HistoryStore.open(config.db, flag=DB_FLAG) as store:
        write_run_reports(store, head_run, result.verdicts, out_dir=config.report_dir,
                          reproduce=reproduce_command(config, result),
                          title=f"llmperf ab: {result.base.commit[:12]} (base) vs {result.head.commit[:12]} (head)")
