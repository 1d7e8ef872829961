"""The shape of the BLOOM inference study, for every configured model, backend and world size.

Each case loads the model once (``load_s``, with its phases) on the devices it leased, checks that
it generates the ``hf`` backend's greedy tokens, and then measures generation of
``llmperf_new_tokens`` tokens (default 100) at every batch size of ``llmperf_batch_sizes``
(default 1, 8, 32), 3 trials each: time to first token, time per output token, tokens/s, ms per token and peak
memory. A batch size that runs out of memory is recorded as ``oom`` and the sweep goes on.

Models, backends, world sizes, batch sizes, devices, dtype and budgets come from the ini file or the
command line (``--llmperf-models``, ``--llmperf-backends``, ``--llmperf-world-sizes``,
``--llmperf-batch-sizes``, ``--llmperf-device``, ``--llmperf-dtype``, ``--llmperf-budgets``); nothing
here needs editing to point it elsewhere. World sizes default to 1, 2, 4, ... up to the device pool.
"""

import pytest

# 3 trials per batch size (a warm-up first): enough for a history of medians, and what keeps the whole matrix,
# ZeRO-3's per-step parameter gathers over gloo included, within minutes on a 2-core CPU. For a gate on noisy
# hardware, give more on the command line (--llmperf-trials wins over the marker) or use llmperf ab's rounds.
pytestmark = pytest.mark.llmperf(trials=3)


def _sweep(llm):
    results = llm.sweep()
    assert [r.batch_size for r in results] == list(llm.batch_sizes)
    for result in results:
        if result.outcome == "ok":
            assert len(result.trials) == result.config.trials


def test_load_then_generate_at_each_batch_size(llm):
    _sweep(llm)


@pytest.mark.llmperf(variant=["kernel-inject", "cpu-offload", "disk-offload"])
def test_variants(llm):
    """DeepSpeed's fused kernels, and offloading weights to CPU memory or disk, where each applies."""
    _sweep(llm)
