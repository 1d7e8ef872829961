"""``llmperf plan``'s table: predicted memory per rank for each world size and batch size."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from pytest_llmperf.models.plan import ModelPlan, gigabytes


def format_plan(plan: ModelPlan) -> Table:
    title = (
        f"{plan.name or plan.model_type} · {plan.dtype} · {plan.num_parameters / 1e9:.2f} B parameters "
        f"· {plan.prompt_tokens} prompt + {plan.new_tokens} new tokens"
    )
    table = Table(title=escape(title), caption="memory per rank, GB (10^9 bytes); weights and KV cache split evenly")
    for column in ("world size", "batch size", "weights GB", "KV cache GB", "total GB"):
        table.add_column(column, justify="right")
    for row in plan.rows:
        table.add_row(
            str(row.world_size),
            str(row.batch_size),
            gigabytes(row.weights_bytes),
            gigabytes(row.kv_cache_bytes),
            gigabytes(row.total_bytes),
        )
    return table
