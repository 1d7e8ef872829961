"""``llmperf export``: runs as JSON (what ``llmperf merge`` reads back), or one run as pytest-benchmark JSON."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_llmperf.cli.arguments import DB_FLAG, add_db_argument, missing_history

if TYPE_CHECKING:
    from pytest_llmperf.cli.arguments import Commands


def add_parser(commands: Commands) -> argparse.ArgumentParser:
    parser = commands.add_parser("export", help="write runs as JSON, or one run as pytest-benchmark JSON")
    add_db_argument(parser)
    parser.add_argument("--run", action="append", metavar="ID", dest="runs",
                        help="a run id or a prefix only one run has; repeat for several (default: every run for "
                             "json, the newest run for pytest-benchmark)")
    parser.add_argument("--format", choices=("json", "pytest-benchmark"), default="json",
                        help="json: what `llmperf merge` reads back; pytest-benchmark: what `pytest --benchmark-json` "
                             "writes, for pytest-benchmark compare and github-action-benchmark (default: %(default)s)")
    parser.add_argument("--out", metavar="FILE", help="write to FILE instead of standard output")
    return parser


def run(args: argparse.Namespace) -> int:
    if missing_history(Path(args.db), "export"):
        return 2
    document = _document(args)
    if document is None:
        return 2
    text = json.dumps(document, indent=2) + "\n"
    if args.out is None:
        sys.stdout.write(text)
        return 0
    try:
        Path(args.out).write_text(text, encoding="utf-8")
    except OSError as e:
        print(f"llmperf export: cannot write --out {args.out} ({e.strerror or e}); pass a writable path, or no "
              f"--out to write to standard output", file=sys.stderr)
        return 2
    return 0


def _document(args: argparse.Namespace) -> dict[str, Any] | None:
    """The history's read: the runs ``--run`` names in ``--format``, or None after saying why not."""
    from pytest_llmperf.history.benchmark_json import pytest_benchmark_document
    from pytest_llmperf.history.export import export_runs
    from pytest_llmperf.history.runs import newest_run_id, resolve_run_id
    from pytest_llmperf.history.store import HistoryStore

    with HistoryStore.open_read_only(args.db, flag=DB_FLAG) as store:
        runs = list(dict.fromkeys(resolve_run_id(store, r) for r in args.runs)) if args.runs else None
        if args.format == "json":
            return export_runs(store, runs)
        if runs is not None and len(runs) > 1:
            print(f"llmperf export: --format pytest-benchmark holds one run, but --run names {len(runs)} "
                  f"({', '.join(runs)}); pass one --run ID, or use --format json for several", file=sys.stderr)
            return None
        return pytest_benchmark_document(store, runs[0] if runs else newest_run_id(store))
