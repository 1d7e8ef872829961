"""``llmperf calibrate``: A/A, one revision against itself: the noise the gate sees, and the changes it can
detect."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from pytest_llmperf.cli.ab_run import add_ab_arguments, run_ab_or_say_why
from pytest_llmperf.cli.arguments import DB_FLAG

if TYPE_CHECKING:
    from pytest_llmperf.cli.arguments import Commands
    from pytest_llmperf.gate.ab import AbConfig, AbResult
    from pytest_llmperf.gate.calibrate import Noise
    from pytest_llmperf.gate.plan import TrialAdvice


def add_parser(commands: Commands) -> argparse.ArgumentParser:
    parser = commands.add_parser("calibrate", help="A/A: one revision against itself, the noise the gate sees")
    parser.add_argument("--rev", default="HEAD", metavar="REV", help="the revision to run (default: HEAD)")
    add_ab_arguments(parser, rounds=3)
    return parser


def run(args: argparse.Namespace) -> int:
    from rich import box
    from rich.table import Table

    from pytest_llmperf.gate.calibrate import false_alarms
    from pytest_llmperf.report.terminal import render_table

    ran = run_ab_or_say_why(args, args.rev, args.rev)
    if ran is None:
        return 2
    config, result = ran
    rows, advice = _noise(config, result, args.detect)
    table = Table(box=box.SIMPLE_HEAD)
    columns = ("series", "within-process CV", "between-process CV", "process SD (df)",
               f"detectable, {result.rounds} rounds", f"rounds for {args.detect:.0%}", "A/A verdict")
    for column in columns:
        table.add_column(column, justify="left" if column == "series" else "right")
    for r in rows:
        e = r.estimate
        noise = "-" if e.noise is None else f"{e.noise.sd:.1%} ({e.noise.df})"
        table.add_row(r.label, *("-" if x is None else f"{x:.1%}" for x in (r.within_cv, r.between_cv)), noise,
                      "-" if e.detectable is None else f"{e.detectable:.1%}",
                      "-" if e.rounds_needed is None else str(e.rounds_needed), r.outcome)
    print(render_table(table), end="")
    alarms = false_alarms(result.verdicts)
    print(f"llmperf calibrate: {len(rows)} series, {result.rounds} round(s) of {args.rev} ({result.head.commit[:12]}); "
          f"{len(alarms)} false alarm(s) in this A/A run; detectable changes at 80 % power and a 1 % A/A failure "
          "rate per run")
    if advice is not None:
        print(f"trials per process: {advice.trials} buy the most precision per second (a process's SD "
              f"{advice.process_sd:.1%}, against {advice.process_sd_now:.1%} with the trials used now); "
              "set them with --llmperf-trials")
    return 0


def _noise(config: AbConfig, result: AbResult, detect: float) -> tuple[list[Noise], TrialAdvice | None]:
    """The history's read: each series' noise in this A/A group, and the trials per process that pay most."""
    from pytest_llmperf.gate.calibrate import noise_by_series, trial_advice
    from pytest_llmperf.history.store import HistoryStore

    with HistoryStore.open(config.db, flag=DB_FLAG) as store:
        rows = noise_by_series(store, result.group, result.verdicts, rounds=result.rounds, detect=detect)
        return rows, trial_advice(store, result.group, rows)
