"""Backend ``external``: an OpenAI-compatible server someone else runs (TGI, SGLang, a deployment).

There is nothing to load: serving tests (the ``llm_server`` fixture) send their load to the URL of
``--llmperf-server-url``. The ``llm`` fixture skips it with the reason.
"""

from __future__ import annotations

from typing import Any

from pytest_llmperf.backends.base import LoadRequest


class ExternalEndpoint:
    @staticmethod
    def unavailable_reason(request: LoadRequest, config: Any) -> str | None:
        return ("backend external is a server someone else runs: serving tests measure it through the llm_server "
                "fixture and --llmperf-server-url=URL; the llm fixture has nothing to load")
