"""The regression gate's commands of ``llmperf``: ``ab``, ``calibrate`` and ``accept``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pytest_llmperf.cli import arg_type
from pytest_llmperf.settings import OPTIONS_BY_NAME, duration, percentage, positive_int

_DB_HELP = "history database (default: %(default)s)"


def _cpus(text: str) -> tuple[int, ...]:
    """``0-3,6``; ``none``: do not pin."""
    if text.strip() == "none":
        return ()
    out: list[int] = []
    try:
        for part in text.split(","):
            low, _, high = part.strip().partition("-")
            out += range(int(low), int(high or low) + 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected cores such as 0-3,6 or 'none', got {text!r}") from None
    return tuple(out)


def _add_ab_arguments(parser: argparse.ArgumentParser, *, rounds: int) -> None:
    parser.add_argument("--db", default=OPTIONS_BY_NAME["db"].default, help=_DB_HELP)
    parser.add_argument("--repo", default=".", help="the git repository of the project under test (default: .)")
    parser.add_argument("--rounds", type=arg_type(positive_int), default=rounds, metavar="N",
                        help="base/head process pairs before the first verdict (default: %(default)s)")
    parser.add_argument("--base-python", metavar="PATH", help="the base's own Python (default: this one)")
    parser.add_argument("--head-python", metavar="PATH", help="the head's own Python (default: this one)")
    parser.add_argument("--pythonpath", default=".", metavar="DIRS",
                        help="directories of each worktree put first on PYTHONPATH, comma-separated "
                             "(default: '.'; 'src' for a src layout)")
    parser.add_argument("--cpus", type=_cpus, metavar="LIST",
                        help="pin every process to these cores, e.g. 0-7 for a rank per core (default: the first "
                             "core this command may use; 'none': no pinning); threads are 1 unless OMP_NUM_THREADS "
                             "is set")
    parser.add_argument("--keep-worktrees", action="store_true", help="leave the worktrees for inspection")
    parser.add_argument("--report-dir", metavar="DIR",
                        help="write verdicts.md, run.json and benchmark.json here")
    parser.add_argument("--detect", type=arg_type(percentage), default=0.10, metavar="CHANGE",
                        help="the change to plan for: detected with 80 %% power (default: 10%%)")
    parser.add_argument("pytest_args", nargs=argparse.REMAINDER,
                        help="after --: the pytest arguments that select the performance tests")


def add_gate_commands(commands: Any) -> None:
    ab = commands.add_parser("ab", help="same-job A/B: base and head revisions in alternating processes")
    ab.add_argument("--base", required=True, metavar="REV", help="the baseline revision (e.g. the merge base)")
    ab.add_argument("--head", default="HEAD", metavar="REV", help="the revision under test (default: HEAD)")
    ab.add_argument("--max-rounds", type=arg_type(positive_int), default=100, metavar="N",
                    help="at most N rounds, however many the plan asks for (default: %(default)s)")
    ab.add_argument("--time-budget", type=arg_type(duration), metavar="TIME",
                    help="start no round that would end after this, e.g. 15m or 900s (default: no budget)")
    _add_ab_arguments(ab, rounds=2)

    calibrate = commands.add_parser("calibrate", help="A/A: one revision against itself, the noise the gate sees")
    calibrate.add_argument("--rev", default="HEAD", metavar="REV", help="the revision to run (default: HEAD)")
    _add_ab_arguments(calibrate, rounds=3)

    accept = commands.add_parser("accept", help="acknowledge an intended regression: its level becomes the baseline")
    accept.add_argument("--db", default=OPTIONS_BY_NAME["db"].default, help=_DB_HELP)
    accept.add_argument("--run", metavar="ID", help="the run whose level is accepted (default: the newest run)")
    accept.add_argument("--test", required=True, metavar="PATTERN",
                        help="test ids it covers; * matches any text: 'suites/*::test_x[*-hf-*]'")
    accept.add_argument("--metric", help="only this metric (default: every metric)")
    accept.add_argument("--reason", required=True, help="why the regression is intended")


def _config(args: argparse.Namespace, base: str, head: str) -> Any:
    from pytest_llmperf.gate.ab import AbConfig

    rest = list(args.pytest_args)
    if rest[:1] == ["--"]:
        rest = rest[1:]
    repo = Path(args.repo).resolve()
    db = Path(args.db)
    return AbConfig(
        repo=repo, base=base, head=head, db=db if db.is_absolute() else Path.cwd() / db, pytest_args=tuple(rest),
        min_rounds=args.rounds, max_rounds=getattr(args, "max_rounds", args.rounds),
        base_python=args.base_python, head_python=args.head_python,
        pythonpath=tuple(p for p in args.pythonpath.split(",") if p), cpus=args.cpus,
        keep_worktrees=args.keep_worktrees, report_dir=Path(args.report_dir) if args.report_dir else None,
        time_budget_s=getattr(args, "time_budget", None), detect=args.detect,
    )


def _run(args: argparse.Namespace, base: str, head: str) -> tuple[Any, Any] | None:
    """(config, result) of the A/B run, or None after saying why it could not run."""
    from pytest_llmperf.gate.ab import AbError, run_ab

    try:
        config = _config(args, base, head)
        return config, run_ab(config)
    except AbError as e:
        print(f"llmperf {args.command}: {e}", file=sys.stderr)
        return None


def _ab(args: argparse.Namespace) -> int:
    from pytest_llmperf.gate.ab import reproduce_command, store_verdicts
    from pytest_llmperf.history.store import HistoryStore
    from pytest_llmperf.report.files import write_run_reports
    from pytest_llmperf.report.terminal import render_table
    from pytest_llmperf.report.verdicts import headline, verdict_table

    ran = _run(args, args.base, args.head)
    if ran is None:
        return 2
    config, result = ran
    head_run = store_verdicts(config, result)
    print(render_table(verdict_table(result.verdicts)), end="")
    print(f"{headline(result.verdicts)} after {result.rounds} round(s); base {result.base.commit[:12]}, "
          f"head {result.head.commit[:12]}, A/B group {result.group} in {config.db}")
    if head_run is not None:
        with HistoryStore.open(config.db) as store:
            write_run_reports(store, head_run, result.verdicts, out_dir=config.report_dir,
                              reproduce=reproduce_command(config, result),
                              title=f"llmperf ab: {result.base.commit[:12]} (base) vs {result.head.commit[:12]} (head)")
    return 1 if result.fails else 0


def _calibrate(args: argparse.Namespace) -> int:
    from rich import box
    from rich.table import Table

    from pytest_llmperf.gate.calibrate import false_alarms, noise_by_series, trial_advice
    from pytest_llmperf.history.store import HistoryStore
    from pytest_llmperf.report.terminal import render_table

    ran = _run(args, args.rev, args.rev)
    if ran is None:
        return 2
    config, result = ran
    with HistoryStore.open(config.db) as store:
        rows = noise_by_series(store, result.group, result.verdicts, rounds=result.rounds, detect=args.detect)
        advice = trial_advice(store, result.group, rows)
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


def _accept(args: argparse.Namespace) -> int:
    from pytest_llmperf.history.errors import HistoryError
    from pytest_llmperf.history.runs import newest_run_id
    from pytest_llmperf.history.store import HistoryStore
    from pytest_llmperf.measure.metrics import METRICS

    if args.metric is not None and args.metric not in METRICS:
        print(f"llmperf accept: unknown metric {args.metric!r}; known metrics: {', '.join(METRICS)}", file=sys.stderr)
        return 2
    path = Path(args.db)
    if not path.exists():
        print(f"llmperf accept: no history database at {path}; pass --db PATH", file=sys.stderr)
        return 2
    try:
        with HistoryStore.open(path) as store:
            run_id = args.run or newest_run_id(store)
            store.accept(run_id, args.test, args.reason, metric=args.metric)
    except (HistoryError, ValueError, TypeError) as e:
        print(f"llmperf accept: {e}", file=sys.stderr)
        return 2
    print(f"accepted in run {run_id}: {args.test}{' ' + args.metric if args.metric else ''}: {args.reason}")
    return 0


HANDLERS = {"ab": _ab, "calibrate": _calibrate, "accept": _accept}
