"""The shape of the BLOOM inference study, for every configured model and backend.

Each case loads the model once (``load_s``, with its phases) and then measures generation of
``llmperf_new_tokens`` tokens (default 100) at every batch size of ``llmperf_batch_sizes``
(default 1, 8, 32): time to first token, time per output token, tokens/s, ms per token and peak
memory. A batch size that runs out of memory is recorded as ``oom`` and the sweep goes on.

Models, backends, batch sizes, devices, dtype and budgets come from the ini file or the command
line (``--llmperf-models``, ``--llmperf-backends``, ``--llmperf-batch-sizes``, ``--llmperf-device``,
``--llmperf-dtype``, ``--llmperf-budgets``); nothing here needs editing to point it elsewhere.
"""

import pytest

pytestmark = pytest.mark.llmperf


def test_load_then_generate_at_each_batch_size(llm):
    results = llm.sweep()
    assert [r.batch_size for r in results] == list(llm.batch_sizes)
    for result in results:
        if result.outcome == "ok":
            assert len(result.trials) == result.config.trials
