"""``llmperf plan``: the weights and KV-cache bytes a model needs, predicted from its config alone."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from pytest_llmperf.settings import argument_type, batch_sizes, new_tokens, positive_int

if TYPE_CHECKING:
    from pytest_llmperf.cli.arguments import Commands


def add_parser(commands: Commands) -> argparse.ArgumentParser:
    parser = commands.add_parser("plan", help="predicted weights and KV-cache bytes of a model, from its config")
    parser.add_argument("model", help="synthetic:<shape>, synthetic:<config.json>, hub:<org/name> or a directory")
    parser.add_argument("--dtype", default="bfloat16", help="float32, float16 or bfloat16 (default: %(default)s)")
    parser.add_argument("--batch-sizes", type=argument_type(batch_sizes), default=(1, 8, 32),
                        metavar="LIST", help="default: 1,8,32")
    parser.add_argument("--world-sizes", type=argument_type(batch_sizes, "world_sizes"), default=(1, 2, 4, 8),
                        metavar="LIST", help="ranks the weights are split over (default: 1,2,4,8)")
    parser.add_argument("--prompt-tokens", type=argument_type(positive_int), default=32, metavar="N")
    parser.add_argument("--new-tokens", type=argument_type(new_tokens), default=100, metavar="N")
    return parser


def run(args: argparse.Namespace) -> int:
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
