"""What ``llmperf ab`` and ``llmperf calibrate`` share: the arguments of an A/B run (two revisions in
alternating processes) and starting it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_llmperf.cli.arguments import add_db_argument
from pytest_llmperf.settings import argument_type, percentage, positive_int

if TYPE_CHECKING:
    from pytest_llmperf.gate.ab import AbConfig, AbResult


def cpus(text: str) -> tuple[int, ...]:
    """``0-3,6``; ``none``: do not pin."""
    if text.strip() == "none":
        return ()
    out: list[int] = []
    try:
        for part in text.split(","):
            low, _, high = part.strip().partition("-")
            out += range(int(low), int(high or low) + 1)
    except ValueError:
        raise ValueError(f"expected cores such as 0-3,6 or 'none', got {text!r}") from None
    return tuple(out)


def add_ab_arguments(parser: argparse.ArgumentParser, *, rounds: int) -> None:
    add_db_argument(parser)
    parser.add_argument("--repo", default=".", help="the git repository of the project under test (default: .)")
    parser.add_argument("--rounds", type=argument_type(positive_int), default=rounds, metavar="N",
                        help="base/head process pairs before the first verdict (default: %(default)s)")
    parser.add_argument("--base-python", metavar="PATH", help="the base's own Python (default: this one)")
    parser.add_argument("--head-python", metavar="PATH", help="the head's own Python (default: this one)")
    parser.add_argument("--pythonpath", default=".", metavar="DIRS",
                        help="directories of each worktree put first on PYTHONPATH, comma-separated "
                             "(default: '.'; 'src' for a src layout)")
    parser.add_argument("--cpus", type=argument_type(cpus), metavar="LIST",
                        help="pin every process to these cores, e.g. 0-7 for a rank per core (default: the first "
                             "core this command may use; 'none': no pinning); threads are 1 unless OMP_NUM_THREADS "
                             "is set")
    parser.add_argument("--keep-worktrees", action="store_true", help="leave the worktrees for inspection")
    parser.add_argument("--report-dir", metavar="DIR",
                        help="write verdicts.md, run.json and benchmark.json here")
    parser.add_argument("--detect", type=argument_type(percentage), default=0.10, metavar="CHANGE",
                        help="the change to plan for: detected with 80 %% power (default: 10%%)")
    parser.add_argument("pytest_args", nargs=argparse.REMAINDER,
                        help="after --: the pytest arguments that select the performance tests")


def ab_config(args: argparse.Namespace, base: str, head: str) -> AbConfig:
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


def run_ab_or_say_why(args: argparse.Namespace, base: str, head: str) -> tuple[AbConfig, AbResult] | None:
    """(config, result) of the A/B run, or None after saying why it could not run."""
    from pytest_llmperf.gate.ab import AbError, run_ab

    try:
        config = ab_config(args, base, head)
        return config, run_ab(config)
    except AbError as e:
        print(f"llmperf {args.command}: {e}", file=sys.stderr)
        return None
