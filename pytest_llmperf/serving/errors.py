"""How serving fails a test: its server died or hung, or its requests failed. Both messages say all (the
server's log tail, the requests' errors), so the plugin shows them without a traceback."""

from __future__ import annotations


class ServerFailed(Exception):
    """The server exited, or did not become ready in time; the message quotes its log."""


class RequestsFailed(AssertionError):
    """Requests of a load point failed (the result is kept); the message quotes their errors."""
