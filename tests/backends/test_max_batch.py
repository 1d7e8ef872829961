"""Out of memory is a result: a real memory limit on a rank process, batches past it, the largest batch that fits.

The rank runs under RLIMIT_AS (``memory_headroom``): the address space it maps once the model is
loaded, plus the headroom. The model is a synthetic llama whose KV cache is large for its compute
(16 KV heads of dimension 256 on a hidden size of 64, 8 layers): with 512 prompt tokens one sequence
holds 134 MB of KV cache and needs about 160 MB more address space, prefill activations included.
Measured here with the tests' order of calls (the first generate of a fresh rank, then the search's
doubling from batch 1), batch 3 always fits from a headroom of about 520 MB and batch 4 fits from
about 680 MB; 600 MB sits in the middle, ~80 MB from either edge. The edges move by some tens of
MB from run to run (MKL's buffer cache, sized by the first large matmul, and when Python's garbage
collector runs: the trials now collect before each one), so the margin must stay wide. With 256
prompt tokens the window was 265-300 MB wide only, and a clean run once found batch 4 at 280 MB.

Only because ``limit_memory`` pins glibc's malloc (a fixed mmap threshold) is freed memory given back to
the address space: without it, a batch that fitted once fails on its next run.
"""

import json
import sqlite3
from pathlib import Path

import pytest

from pytest_llmperf.bench import Bench
from pytest_llmperf.case import cases_from_marker
from pytest_llmperf.pool import DevicePool, discover
from pytest_llmperf.settings import Settings

KV_HEAVY = {
    "model_type": "llama", "vocab_size": 1024, "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 8, "num_attention_heads": 16, "num_key_value_heads": 16, "head_dim": 256,
    "max_position_embeddings": 1024, "initializer_range": 0.2, "tie_word_embeddings": False,
}
HEADROOM = "600MB"
PROMPT_TOKENS, NEW_TOKENS = 512, 2
#: the largest batch that fits under HEADROOM, and the smallest that does not
NEAR_LIMIT, TOO_BIG = 3, 4
ALLOCATOR_MESSAGE = "DefaultCPUAllocator: can't allocate memory"


@pytest.fixture(scope="module")
def kv_heavy(tmp_path_factory) -> Path:
    config = tmp_path_factory.mktemp("kv-heavy") / "config.json"
    config.write_text(json.dumps(KV_HEAVY))
    return config


@pytest.fixture(scope="module")
def one_thread():
    # one OpenMP thread per rank (the ranks inherit it): fewer per-thread buffers, less noise in the peak
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        yield


@pytest.fixture(scope="module")
def bench(kv_heavy, synthetic_cache, tmp_path_factory, one_thread):
    settings = Settings.from_sources(
        enabled=True, cli={"model_cache": str(synthetic_cache)},
        ini={"trials": "1", "warmups": "0", "prompt_tokens": str(PROMPT_TOKENS), "new_tokens": str(NEW_TOKENS),
             "memory_headroom": HEADROOM, "rank_timeout": "120"},
        rootdir=Path("/unused"))
    (case,) = cases_from_marker((), {"model": f"synthetic:{kv_heavy}", "backend": "hf-tp", "world_size": 1},
                                settings)
    pool = DevicePool(discover("cpu", 2), tmp_path_factory.mktemp("pool"))
    with pool.lease(1, timeout_s=10, owner="test_max_batch") as lease:
        bench = Bench.open(test_id="test_max_batch", case=case, settings=settings, lease=lease)
        try:
            yield bench
        finally:
            bench.close()


def _assert_oom(result):
    assert result.outcome == "oom", f"batch {result.batch_size} fitted under {HEADROOM}"
    assert result.error.startswith("out of memory on cpu: ")
    assert ALLOCATOR_MESSAGE in result.error
    assert result.trials == () and result.memory is None


def test_a_batch_past_the_limit_is_an_oom_result_and_its_memory_is_given_back(bench):
    assert bench.correctness is not None and bench.correctness.outcome == "match"
    # the first generate of a Bench runs twice (first_generate, then the trial): the second run fits only
    # if the first gave its memory back
    near = bench.generate(NEAR_LIMIT)
    assert near.outcome == "ok", near.error
    _assert_oom(bench.generate(TOO_BIG))
    _assert_oom(bench.generate(TOO_BIG))  # the rank is still there, in the same state
    after = bench.generate(NEAR_LIMIT)
    assert after.outcome == "ok", after.error  # what the failed batches allocated was given back
    half = bench.generate(TOO_BIG // 2)
    assert half.outcome == "ok", half.error
    assert len(half.trials) == 1 and half.memory is not None
    assert [r.outcome for r in bench.record().generates] == ["ok", "oom", "oom", "ok", "ok"]


def test_the_largest_batch_that_fits_is_found_and_recorded(bench):
    found = bench.search_max_batch(16)
    assert found == NEAR_LIMIT  # as the test above saw: it fits, one more does not
    assert bench.max_batch == found
    assert bench.record().max_batch == found
    assert bench.record().load_metric_values()["max_batch"] == found
    probes = len(bench.results)
    assert bench.generate(found).outcome == "ok"
    _assert_oom(bench.generate(found + 1))
    assert len(bench.results) == probes + 2  # the search's probes are not results


def test_through_the_plugin_an_oom_batch_passes_and_the_max_batch_lands_in_the_history(
        pytester, kv_heavy, synthetic_cache, tmp_path, one_thread):
    pytester.makepyfile(f"""
        import pytest

        @pytest.mark.llmperf(model="synthetic:{kv_heavy}", backend="hf-tp", world_size=1, device="cpu",
                             memory_headroom="{HEADROOM}", prompt_tokens={PROMPT_TOKENS}, new_tokens={NEW_TOKENS},
                             trials=1, warmups=0)
        def test_oom_is_a_result(llm):
            assert llm.generate(batch_size={TOO_BIG}).outcome == "oom"
            assert llm.generate(batch_size={NEAR_LIMIT}).outcome == "ok"
    """)
    result = pytester.runpytest_subprocess(
        "--llmperf", f"--llmperf-model-cache={synthetic_cache}", f"--llmperf-pool-dir={tmp_path / 'pool'}",
        "--llmperf-max-batch=16", "--llmperf-rank-timeout=120", "-p", "no:cacheprovider",
    )
    result.assert_outcomes(passed=1)
    with sqlite3.connect(pytester.path / ".llmperf" / "history.db") as db:
        generates = db.execute("select batch_size, outcome, error from measurements where kind = 'generate' "
                               "order by id").fetchall()
        max_batch = db.execute("select value, batch_size from results where metric = 'max_batch'").fetchall()
    assert [(b, o) for b, o, _ in generates] == [(TOO_BIG, "oom"), (NEAR_LIMIT, "ok")]
    assert generates[0][2].startswith("out of memory on cpu: ") and ALLOCATOR_MESSAGE in generates[0][2]
    assert max_batch == [(NEAR_LIMIT, None)]  # one value per test, not per batch size
