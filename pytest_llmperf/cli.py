"""The ``llmperf`` command: ``history`` (recent results) and ``plan`` (memory a model needs)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pytest_llmperf.settings import OPTIONS_BY_NAME, batch_sizes, new_tokens, positive_int


def _arg_type(parse):  # type: ignore[no-untyped-def]
    def convert(text: str):  # type: ignore[no-untyped-def]
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return convert


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmperf", description="pytest-llmperf: history and planning.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    history = commands.add_parser("history", help="recent results from the history database")
    history.add_argument("--db", default=OPTIONS_BY_NAME["db"].default,
                         help="history database (default: %(default)s, as pytest --llmperf writes it)")
    history.add_argument("--test", help="only tests whose id contains this text")
    history.add_argument("--model", help="only models whose id contains this text")
    history.add_argument("--backend", help="only this backend")
    history.add_argument("--metric", help="only this metric (e.g. tokens_per_s)")
    history.add_argument("--last", type=_arg_type(positive_int), default=20, metavar="N",
                         help="at most N results, newest first (default: %(default)s)")

    plan = commands.add_parser("plan", help="predicted weights and KV-cache bytes of a model, from its config")
    plan.add_argument("model", help="synthetic:<shape>, synthetic:<config.json>, hub:<org/name> or a directory")
    plan.add_argument("--dtype", default="bfloat16", help="float32, float16 or bfloat16 (default: %(default)s)")
    plan.add_argument("--batch-sizes", type=_arg_type(batch_sizes), default=(1, 8, 32), metavar="LIST",
                      help="default: 1,8,32")
    plan.add_argument("--world-sizes", type=_arg_type(batch_sizes), default=(1, 2, 4, 8), metavar="LIST",
                      help="ranks the weights are split over (default: 1,2,4,8)")
    plan.add_argument("--prompt-tokens", type=_arg_type(positive_int), default=32, metavar="N")
    plan.add_argument("--new-tokens", type=_arg_type(new_tokens), default=100, metavar="N")
    return parser


def _history(args: argparse.Namespace) -> int:
    from pytest_llmperf.report.history_table import history_table
    from pytest_llmperf.report.terminal import render_table
    from pytest_llmperf.store import HistoryStore

    path = Path(args.db)
    if not path.exists():
        print(f"llmperf: no history database at {path}; run `pytest --llmperf` first, or pass --db PATH",
              file=sys.stderr)
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


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return {"history": _history, "plan": _plan}[args.command](args)
    except Exception as e:  # every expected failure is reported as one line, not a traceback
        from pytest_llmperf.store import HistoryError

        if isinstance(e, HistoryError):
            print(f"llmperf: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    raise SystemExit(main())
