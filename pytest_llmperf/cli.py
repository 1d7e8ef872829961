"""The ``llmperf`` command: ``history`` (recent results), ``plan`` (memory a model needs), and the
history's management: ``merge`` (runs of other histories), ``export`` (JSON or pytest-benchmark JSON)
and ``prune`` (runs older than some days)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pytest_llmperf.settings import OPTIONS_BY_NAME, batch_sizes, new_tokens, non_negative_int, positive_int


def arg_type(parse):  # type: ignore[no-untyped-def]
    """An argparse type from one of the settings' parsers: its ValueError becomes argparse's usage error."""

    def convert(text: str):  # type: ignore[no-untyped-def]
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return convert


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmperf", description="pytest-llmperf: history, planning and history "
                                     "management.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    history = commands.add_parser("history", help="recent results from the history database")
    history.add_argument("--db", default=OPTIONS_BY_NAME["db"].default,
                         help="history database (default: %(default)s, as pytest --llmperf writes it)")
    history.add_argument("--test", help="only tests whose id contains this text")
    history.add_argument("--model", help="only models whose id contains this text")
    history.add_argument("--backend", help="only this backend")
    history.add_argument("--metric", help="only this metric (e.g. tokens_per_s)")
    history.add_argument("--last", type=arg_type(positive_int), default=20, metavar="N",
                         help="at most N results, newest first (default: %(default)s)")

    plan = commands.add_parser("plan", help="predicted weights and KV-cache bytes of a model, from its config")
    plan.add_argument("model", help="synthetic:<shape>, synthetic:<config.json>, hub:<org/name> or a directory")
    plan.add_argument("--dtype", default="bfloat16", help="float32, float16 or bfloat16 (default: %(default)s)")
    plan.add_argument("--batch-sizes", type=arg_type(batch_sizes), default=(1, 8, 32), metavar="LIST",
                      help="default: 1,8,32")
    plan.add_argument("--world-sizes", type=arg_type(batch_sizes), default=(1, 2, 4, 8), metavar="LIST",
                      help="ranks the weights are split over (default: 1,2,4,8)")
    plan.add_argument("--prompt-tokens", type=arg_type(positive_int), default=32, metavar="N")
    plan.add_argument("--new-tokens", type=arg_type(new_tokens), default=100, metavar="N")

    from pytest_llmperf.cli_gate import add_gate_commands

    add_gate_commands(commands)
    _add_admin_commands(commands)

    dashboard = commands.add_parser("dashboard", help="a static site of every series' history, with change points")
    dashboard.add_argument("--db", default=OPTIONS_BY_NAME["db"].default,
                           help="history database (default: %(default)s)")
    dashboard.add_argument("--out", required=True, metavar="DIR", help="the folder to write the site into")
    dashboard.add_argument("--branch", metavar="NAME",
                           help="the branch the overview shows first (default: the repository's default branch)")
    return parser


def _db_argument(command: argparse.ArgumentParser, what: str) -> None:
    command.add_argument("--db", default=OPTIONS_BY_NAME["db"].default, metavar="PATH",
                         help=f"{what} (default: %(default)s, as pytest --llmperf writes it)")


def _add_admin_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    merge = commands.add_parser("merge", help="import the runs of other histories (CI shards, other runners)")
    _db_argument(merge, "history database to merge into, created if missing")
    merge.add_argument("sources", nargs="+", metavar="SOURCE",
                       help="history databases or JSON files written by `llmperf export`; never modified")

    export = commands.add_parser("export", help="write runs as JSON, or one run as pytest-benchmark JSON")
    _db_argument(export, "history database")
    export.add_argument("--run", action="append", metavar="ID", dest="runs",
                        help="a run id or a prefix only one run has; repeat for several (default: every run for "
                             "json, the newest run for pytest-benchmark)")
    export.add_argument("--format", choices=("json", "pytest-benchmark"), default="json",
                        help="json: what `llmperf merge` reads back; pytest-benchmark: what `pytest --benchmark-json` "
                             "writes, for pytest-benchmark compare and github-action-benchmark (default: %(default)s)")
    export.add_argument("--out", metavar="FILE", help="write to FILE instead of standard output")

    prune = commands.add_parser("prune", help="delete the runs older than some days, and free their space")
    _db_argument(prune, "history database")
    prune.add_argument("--keep-days", type=arg_type(non_negative_int), required=True, metavar="N",
                       help="keep the runs started in the last N days")


def _missing_db(path: Path) -> bool:
    if path.exists():
        return False
    print(f"llmperf: no history database at {path}; run `pytest --llmperf` first, or pass --db PATH", file=sys.stderr)
    return True


def _history(args: argparse.Namespace) -> int:
    from pytest_llmperf.history.store import HistoryStore
    from pytest_llmperf.report.history_table import history_table
    from pytest_llmperf.report.terminal import render_table

    path = Path(args.db)
    if _missing_db(path):
        return 2
    with HistoryStore.open(path) as store:
        rows = store.recent_results(test=args.test, model=args.model, backend=args.backend, metric=args.metric,
                                    last=args.last)
    if not rows:
        print("no results match", file=sys.stderr)
        return 1
    print(render_table(history_table(rows)), end="")
    return 0


def _plan(args: argparse.Namespace) -> int:
    from pytest_llmperf.models.dtypes import parse_dtype
    from pytest_llmperf.models.plan import plan_model
    from pytest_llmperf.models.sources import ModelSourceError, model_config
    from pytest_llmperf.models.spec import parse_model_spec
    from pytest_llmperf.report.plan_table import format_plan
    from pytest_llmperf.report.terminal import render_table

    try:
        dtype = parse_dtype(args.dtype, allow_auto=False)
        config = model_config(parse_model_spec(args.model))
    except (ValueError, ModelSourceError) as e:
        print(f"llmperf plan: {e}", file=sys.stderr)
        return 2
    plan = plan_model(config, dtype, batch_sizes=args.batch_sizes, world_sizes=args.world_sizes,
                      prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens, name=args.model)
    print(render_table(format_plan(plan)), end="")
    return 0


def _runs(n: int) -> str:
    return f"{n} run" if n == 1 else f"{n} runs"


def _merge(args: argparse.Namespace) -> int:
    from pytest_llmperf.history.merge import merge_into

    report = merge_into(Path(args.db), [Path(s) for s in args.sources])
    for s in report.sources:
        print(f"{s.source}: {_runs(s.runs_added)} added, {s.runs_replaced} replaced (were still running in "
              f"{args.db}), {s.runs_skipped} skipped (already in {args.db})")
    print(f"merged {len(report.sources)} source{'s' * (len(report.sources) != 1)} into {args.db}: "
          f"{_runs(report.runs_added)} added, {report.runs_replaced} replaced, {report.runs_skipped} skipped")
    return 0


def _export_document(args: argparse.Namespace) -> dict[str, Any] | None:
    from pytest_llmperf.history.benchmark_json import pytest_benchmark_document
    from pytest_llmperf.history.export import export_runs
    from pytest_llmperf.history.runs import newest_run_id, resolve_run_id
    from pytest_llmperf.history.store import HistoryStore

    with HistoryStore.open(args.db) as store:
        runs = list(dict.fromkeys(resolve_run_id(store, r) for r in args.runs)) if args.runs else None
        if args.format == "json":
            return export_runs(store, runs)
        if runs is not None and len(runs) > 1:
            print(f"llmperf export: --format pytest-benchmark holds one run, but --run names {len(runs)} "
                  f"({', '.join(runs)}); pass one --run ID, or use --format json for several", file=sys.stderr)
            return None
        return pytest_benchmark_document(store, runs[0] if runs else newest_run_id(store))


def _export(args: argparse.Namespace) -> int:
    import json

    if _missing_db(Path(args.db)):
        return 2
    document = _export_document(args)
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


def _prune(args: argparse.Namespace) -> int:
    from pytest_llmperf.history.prune import prune_history
    from pytest_llmperf.history.store import HistoryStore

    if _missing_db(Path(args.db)):
        return 2
    with HistoryStore.open(args.db) as store:
        removed = prune_history(store, args.keep_days)
    print(f"removed {_runs(removed)} started more than {args.keep_days} days ago from {args.db}")
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    import time

    from pytest_llmperf.dashboard.site import build_dashboard
    from pytest_llmperf.environment import default_branch

    path = Path(args.db)
    if _missing_db(path):
        return 2
    started = time.perf_counter()
    counts = build_dashboard(path, Path(args.out), default_branch=args.branch or default_branch(Path.cwd()))
    print(f"llmperf dashboard: {counts['series']} series ({counts['points']} points, {counts['runs']} runs) on "
          f"{counts['pages']} pages in {time.perf_counter() - started:.1f} s: open {Path(args.out) / 'index.html'}")
    return 0


ADMIN_HANDLERS = {"merge": _merge, "export": _export, "prune": _prune, "dashboard": _dashboard}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        from pytest_llmperf.cli_gate import HANDLERS

        return {"history": _history, "plan": _plan, **HANDLERS, **ADMIN_HANDLERS}[args.command](args)
    except Exception as e:  # every expected failure is reported as one line, not a traceback
        from pytest_llmperf.history.errors import HistoryError

        if isinstance(e, HistoryError):
            print(f"llmperf: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    raise SystemExit(main())
