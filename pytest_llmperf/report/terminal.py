"""The end-of-session summary: one table per performance test."""

from __future__ import annotations

import io

from rich import box
from rich.console import Console
from rich.table import Table

from pytest_llmperf.results import BenchRecord, BudgetCheck, GenerateResult, ServingResult
from pytest_llmperf.units import format_value


def render_table(table: Table, width: int | None = None) -> str:
    """A rich table as plain text (no colour codes: it goes to terminals and CI logs alike).

    ``width`` None: the table's natural width, however wide (cells are never cut short).
    """
    buffer = io.StringIO()
    console_width = 10_000 if width is None else max(width, 60)
    Console(file=buffer, width=console_width, color_system=None, force_terminal=False).print(table)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n"


def _budget_cell(checks: list[BudgetCheck]) -> str:
    if not checks:
        return "-"
    failed = [c.metric for c in checks if c.outcome != "pass"]
    return f"MISS {', '.join(failed)}" if failed else f"{len(checks)} ok"


def _trial_cell(result: GenerateResult, name: str) -> str:
    stats = result.stats(name)
    number = format_value(name, stats.median).rsplit(" ", 1)[0]
    return number if stats.cv is None else f"{number} ±{stats.cv:.0%}"


def _header(record: BenchRecord) -> str:
    model, load = record.model, record.load
    parts = [f"{record.backend}", f"{model.model_id} ({model.model_type}, {model.dtype})",
             f"world {record.world_size}"]
    if load is not None:
        phases = " + ".join(f"{name} {seconds:.3g}" for name, seconds in load.phases)
        parts += [
            f"load_s {load.load_s:.3g} ({phases}; page cache {load.page_cache.state})",
            *([f"first generate {format_value('first_generate_s', record.first_generate_s)}"]
              if not record.servings else []),
            f"weights {format_value('weights_bytes', load.weights_bytes)} on {', '.join(load.devices)}",
        ]
    streams = max((g.streams for g in record.generates), default=1)
    if streams > 1:
        parts.append(f"{streams} streams (one per rank): tokens/s counts them all")
    if record.correctness is not None:
        parts.append(f"tokens vs {record.correctness.reference}: {record.correctness.outcome}")
    if record.fidelity is not None:
        f = record.fidelity
        diverged = ("none" if f.first_divergence_tokens == f.new_tokens
                    else f"at new token {f.first_divergence_tokens}")
        parts.append(f"fidelity vs {f.reference}: token agreement {format_value('token_agreement', f.token_agreement)} "
                     f"({f.agreed_tokens}/{f.compared_tokens} teacher-forced), free-run divergence {diverged} "
                     f"of {f.new_tokens}")
    if record.max_batch is not None:
        parts.append(f"max batch {record.max_batch}")
    if record.max_rate_rps is not None:
        parts.append(f"max rate {record.max_rate_rps:.3g} req/s")
    return " · ".join(parts)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def serving_table(record: BenchRecord) -> Table:
    """One row per serving load point: what the generator sent, vLLM-style latencies, throughput, goodput."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("load point", "sent/asked", "req/s sent/planned", "ttft_ms p50/p99", "tpot_ms p50/p99",
                   "itl_ms p99", "e2el_ms p50", "output tok/s", "goodput", "errors", "budgets"):
        table.add_column(column, justify="left" if column in ("load point", "budgets") else "right",
                         no_wrap=column != "budgets")
    unplaced = [c for c in record.budget_checks if c.point is None]
    for i, result in enumerate(record.servings):
        checks = [c for c in record.budget_checks if c.point == result.config.label] + (unplaced if i == 0 else [])
        table.add_row(*_serving_cells(result), _budget_cell(checks))
    return table


def _serving_cells(result: ServingResult) -> list[str]:
    s, c = result.summary, result.client
    achieved = "-" if c.achieved_rate_rps is None else f"{c.achieved_rate_rps:.3g}"
    if c.planned_rate_rps is not None:
        achieved += f" / {c.planned_rate_rps:.3g}"
    return [result.config.label, f"{c.sent}/{c.asked}", achieved,
            f"{_ms(s.ttft_ms.median)} / {_ms(s.ttft_ms.p99)}", f"{_ms(s.tpot_ms.median)} / {_ms(s.tpot_ms.p99)}",
            _ms(s.itl_ms.p99), _ms(s.e2el_ms.median), f"{s.output_throughput:.4g}",
            "-" if s.goodput is None else f"{s.goodput:.3g}", f"{s.error_rate:.0%}"]


def summary_table(record: BenchRecord) -> Table:
    """Rows are batch sizes; budgets of no measured batch (load metrics, batch sizes never run) go on the first row."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("batch", "ttft_ms", "tpot_ms", "tokens/s", "ms/token", "peak mem", "budgets"):
        table.add_column(column, justify="left" if column == "budgets" else "right", no_wrap=column != "budgets")
    batches = {r.batch_size for r in record.generates}
    unplaced = [c for c in record.budget_checks if c.batch_size not in batches]
    if not record.generates:
        table.add_row("-", "-", "-", "-", "-", "-", _budget_cell(unplaced))
    for i, result in enumerate(record.generates):
        checks = [c for c in record.budget_checks if c.batch_size == result.batch_size]
        if i == 0:
            checks = unplaced + checks
        if result.outcome != "ok":
            cells: list[str] = [result.outcome] * 5
        else:
            peak = format_value("peak_mem_bytes", result.memory.peak_bytes) if result.memory else "-"
            cells = [_trial_cell(result, name) for name in ("ttft_ms", "tpot_ms", "tokens_per_s", "ms_per_token")]
            cells.append(peak)
        table.add_row(str(result.batch_size), *cells, _budget_cell(checks))
    return table


def render_summary(records: list[BenchRecord], width: int | None = None) -> list[str]:
    if not records:
        return ["no performance test recorded a measurement\n"]
    ordered = sorted(records, key=lambda r: r.test_id)  # pytest-xdist reports in completion order
    return [f"{r.test_id}\n{_header(r)}\n"
            f"{render_table(serving_table(r) if r.servings else summary_table(r), width)}" for r in ordered]
