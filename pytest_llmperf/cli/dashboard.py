"""``llmperf dashboard``: a static site of every series' history, with change points."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_llmperf.cli.arguments import DB_FLAG, add_db_argument, missing_history

if TYPE_CHECKING:
    from pytest_llmperf.cli.arguments import Commands


def add_parser(commands: Commands) -> argparse.ArgumentParser:
    parser = commands.add_parser("dashboard", help="a static site of every series' history, with change points")
    add_db_argument(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="the folder to write the site into")
    parser.add_argument("--branch", metavar="NAME",
                        help="the branch the overview shows first (default: the repository's default branch)")
    return parser


def run(args: argparse.Namespace) -> int:
    from pytest_llmperf.dashboard.site import build_dashboard
    from pytest_llmperf.environment import default_branch

    path = Path(args.db)
    if missing_history(path, "dashboard"):
        return 2
    out = Path(args.out)
    started = time.perf_counter()
    counts = build_dashboard(path, out, default_branch=args.branch or default_branch(Path.cwd()), flag=DB_FLAG)
    print(f"llmperf dashboard: {counts['series']} series ({counts['points']} points, {counts['runs']} runs) on "
          f"{counts['pages']} pages in {time.perf_counter() - started:.1f} s: open {out / 'index.html'}")
    return 0
