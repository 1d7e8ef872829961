"""pytest-llmperf: performance tests for LLM inference, with budgets and a SQLite history."""

from importlib import metadata

try:
    __version__ = metadata.version("pytest-llmperf")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
