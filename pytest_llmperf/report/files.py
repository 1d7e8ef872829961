"""The report files of a run: the gate's Markdown, the whole run as JSON, the timings in pytest-benchmark's format.

``verdicts.md`` goes to a pull-request comment, and is appended to ``$GITHUB_STEP_SUMMARY`` when that is set;
``run.json`` is what ``llmperf merge`` imports; ``benchmark.json`` is read by pytest-benchmark's
``compare`` and by tools that consume pytest-benchmark files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_llmperf.atomic import write_text_atomically

if TYPE_CHECKING:
    from pytest_llmperf.gate.verdict import Verdict
    from pytest_llmperf.history.store import HistoryStore

STEP_SUMMARY_ENV = "GITHUB_STEP_SUMMARY"


def write_json(path: Path, document: Any) -> None:
    write_text_atomically(path, json.dumps(document, indent=1, sort_keys=True, default=str) + "\n")


def write_run_reports(store: HistoryStore, run_id: str, verdicts: Sequence[Verdict] | None, *,
                      out_dir: Path | None, reproduce: str | None = None, title: str = "llmperf gate") -> list[Path]:
    """Write what applies (``verdicts`` None: the run was not gated); returns the files written."""
    if verdicts is None and out_dir is None:
        return []
    from pytest_llmperf.history.benchmark_json import pytest_benchmark_document
    from pytest_llmperf.history.export import export_runs
    from pytest_llmperf.report.verdicts import verdict_markdown

    markdown = verdict_markdown(verdicts, title=title, reproduce=reproduce) if verdicts is not None else None
    summary = os.environ.get(STEP_SUMMARY_ENV)
    if markdown is not None and summary:
        with open(summary, "a") as f:
            f.write(markdown)
    if out_dir is None:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if markdown is not None:
        write_text_atomically(out_dir / "verdicts.md", markdown)
        written.append(out_dir / "verdicts.md")
    write_json(out_dir / "run.json", export_runs(store, [run_id]))
    write_json(out_dir / "benchmark.json", pytest_benchmark_document(store, run_id))
    written += [out_dir / "run.json", out_dir / "benchmark.json"]
    return written
