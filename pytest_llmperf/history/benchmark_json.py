"""A run's timings as ``pytest --benchmark-json`` writes them, for pytest-benchmark's ``compare`` and
github-action-benchmark's ``pytest`` tool."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlite_utils

from pytest_llmperf.history.export import Row, run_row, table_rows
from pytest_llmperf.history.store import HistoryStore


def _benchmark_stats(data: Sequence[float]) -> Row:
    """The ``stats`` of one benchmark, computed by pytest-benchmark's own class so that every field
    (quartile method, outlier counts, ops) is what its readers expect."""
    from pytest_benchmark.stats import Stats

    stats = Stats()
    for value in data:
        stats.update(float(value))
    return {**stats.as_dict(), "data": [float(v) for v in data], "iterations": 1}


def _node_name(test_id: str) -> str:
    """pytest's ``node.name`` of a node id: the last ``::`` part, parameters included."""
    base, bracket, params = test_id.partition("[")
    return base.rsplit("::", 1)[-1] + bracket + params


def _options(min_rounds: int | None, warmups: int | None) -> Row:
    return {"disable_gc": False, "timer": "perf_counter", "min_rounds": min_rounds, "max_time": None,
            "min_time": None, "warmup": bool(warmups)}


def _benchmark(test: Row, suffix: str, group: str, params: Row | None, data: Sequence[float], extra_info: Row,
               options: Row) -> Row:
    return {
        "group": group,
        "name": f"{_node_name(test['test_id'])}::{suffix}",
        "fullname": f"{test['test_id']}::{suffix}",
        "params": params,
        "param": None if params is None else "-".join(str(v) for v in params.values()),
        "extra_info": extra_info,
        "options": options,
        "stats": _benchmark_stats(data),
    }


def _describe(run: Row, test: Row) -> Row:
    return {"run_id": run["id"], "model_id": test["model_id"], "backend": test["backend"], "variant": test["variant"],
            "dtype": test["dtype"], "world_size": test["world_size"], "test_outcome": test["outcome"]}


def _value(results: dict[str, Row], metric: str) -> float | None:
    return results[metric]["value"] if metric in results else None


def _series_key(results: dict[str, Row], metric: str) -> str | None:
    return results[metric]["series_key"] if metric in results else None


def _generate_benchmarks(run: Row, test: Row, m: Row, trials: list[Row], results: dict[str, Row],
                         label: str) -> list[Row]:
    params = {"batch_size": m["batch_size"], "prompt_tokens": m["prompt_tokens"], "new_tokens": m["new_tokens"]}
    shared = {**_describe(run, test), **params, "streams": m["streams"],
              "tokens_per_s": _value(results, "tokens_per_s"), "tpot_ms": _value(results, "tpot_ms")}
    options = _options(m["trials_requested"], m["warmups"])
    # each series key names the glossary metric its values come from: ttft's is ttft_ms, in ms
    return [
        _benchmark(test, f"e2e_s[{label}]", "e2e_s", params, [t["e2e_s"] for t in trials],
                   {**shared, "unit": "s", "series_metric": "e2e_s", "series_key": _series_key(results, "e2e_s")},
                   options),
        _benchmark(test, f"ttft_s[{label}]", "ttft_s", params, [t["ttft_s"] for t in trials],
                   {**shared, "unit": "s", "series_metric": "ttft_ms", "series_key": _series_key(results, "ttft_ms")},
                   options),
    ]


def _config_label(m: Row, ambiguous: bool) -> str:
    label = f"batch_size={m['batch_size']}"
    if ambiguous:  # several configurations of one batch size in a test
        label += f",prompt_tokens={m['prompt_tokens']},new_tokens={m['new_tokens']},streams={m['streams']}"
    return label


def _test_benchmarks(db: sqlite_utils.Database, run: Row, test: Row) -> list[Row]:
    measurements = table_rows(db, "SELECT * FROM measurements WHERE test_row_id = ? ORDER BY id", [test["id"]])
    per_batch: defaultdict[int | None, int] = defaultdict(int)
    for m in measurements:
        per_batch[m["batch_size"]] += m["kind"] == "generate"
    out: list[Row] = []
    for m in measurements:
        results = {r["metric"]: r for r in table_rows(db, "SELECT * FROM results WHERE measurement_id = ?", [m["id"]])}
        if m["kind"] == "load" and "load_s" in results:
            out.append(_benchmark(test, "load_s", "load_s", None, [results["load_s"]["value"]],
                                  {**_describe(run, test), "unit": "s", "series_metric": "load_s",
                                   "series_key": _series_key(results, "load_s")}, _options(1, 0)))
        elif m["kind"] == "generate" and m["outcome"] == "ok":
            trials = table_rows(db, "SELECT ttft_s, e2e_s FROM trials WHERE measurement_id = ? ORDER BY idx", [m["id"]])
            if trials:
                label = _config_label(m, per_batch[m["batch_size"]] > 1)
                out.extend(_generate_benchmarks(run, test, m, trials, results, label))
    return out


def _benchmark_version() -> str:
    from pytest_llmperf.environment import package_version

    return package_version("pytest-benchmark") or "4.0.0"


def _machine_info(run: Row, env: Row) -> Row:
    """pytest-benchmark's machine_info keys (None where the history did not record it), then the device."""
    return {
        "node": run["host"], "processor": run["cpu_model"], "machine": None, "python_compiler": None,
        "python_implementation": None, "python_implementation_version": None, "python_version": env["python"],
        "python_build": None, "release": None, "system": None,
        "cpu": {"brand_raw": run["cpu_model"], "count": run["cpu_count"]},
        "platform": run["platform"], **env,
    }


def _commit_info(run: Row) -> Row:
    root = run["project_root"]
    return {"id": run["git_commit"] or "unknown", "time": None, "author_time": None,
            "dirty": bool(run["git_dirty"]), "project": Path(root).name if root else None,
            "branch": run["git_branch"] or "(unknown)"}


def pytest_benchmark_document(store: HistoryStore, run_id: str) -> dict[str, Any]:
    """A run's timings in the format of ``pytest --benchmark-json``.

    Per test and generate configuration: one benchmark of the end-to-end seconds of each trial and one
    of the time to first token; per test: its load seconds as a one-round benchmark. ``extra_info``
    carries tokens_per_s, tpot_ms (medians) and the series key.
    """
    run = run_row(store, run_id)
    env = table_rows(store.db, "SELECT * FROM environments WHERE fingerprint = ?", [run["env_fingerprint"]])
    tests = table_rows(store.db, "SELECT * FROM tests WHERE run_id = ? ORDER BY id", [run_id])
    return {
        "machine_info": _machine_info(run, env[0] if env else {}),
        "commit_info": _commit_info(run),
        "benchmarks": [b for test in tests for b in _test_benchmarks(store.db, run, test)],
        "datetime": run["started_at"],
        "version": _benchmark_version(),
    }
