"""The options several verbs share, each declared once, and the one message for a history that is not there."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from pytest_llmperf.measure.metrics import metric
from pytest_llmperf.settings import OPTIONS_BY_NAME, argument_type

if TYPE_CHECKING:
    Commands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]


#: the option that names the history file under ``llmperf`` (the history's error messages name it)
DB_FLAG = "--db"


def add_db_argument(parser: argparse.ArgumentParser, what: str = "history database") -> None:
    """``--db PATH``: the history file, by default where ``pytest --llmperf`` writes it."""
    parser.add_argument(DB_FLAG, default=OPTIONS_BY_NAME["db"].default, metavar="PATH",
                        help=f"{what} (default: %(default)s, as pytest --llmperf writes it)")


def missing_history(path: Path, verb: str) -> bool:
    """True, after saying how to make one, when there is no history at ``path`` (a verb that only reads a
    history must not create an empty one)."""
    if path.exists():
        return False
    print(f"llmperf {verb}: no history database at {path}; run `pytest --llmperf` first, or pass --db PATH",
          file=sys.stderr)
    return True


def metric_name(text: str) -> str:
    """A metric the project defines; the error lists the known ones."""
    try:
        return metric(text).name
    except KeyError as e:
        raise ValueError(e.args[0]) from None


def add_metric_argument(parser: argparse.ArgumentParser, help: str) -> None:
    """``--metric NAME``, checked against the metric glossary when the command line is parsed."""
    parser.add_argument("--metric", type=argument_type(metric_name, "metric"), help=help)
