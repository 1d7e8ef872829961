"""Every parallel backend through pytest and the plugin, on CPU: same tokens as hf, results in the history."""

import json

from tests.history_rows import file_rows
from tests.launch.weight_fault import command_env

INNER = """
import pytest

pytestmark = pytest.mark.llmperf(model="synthetic:llama-tiny", dtype="float32", batch_sizes=[1, 2],
                                 new_tokens=8, prompt_tokens=8, trials=2, warmups=0)


@pytest.mark.llmperf(backend=["ds-inference", "ds-zero", "hf-tp"], world_size=2)
def test_ranks(llm):
    assert [r.outcome for r in llm.sweep()] == ["ok", "ok"]


@pytest.mark.llmperf(backend="accelerate", variant="disk-offload", world_size=1)
def test_offload(llm):
    assert [r.outcome for r in llm.sweep()] == ["ok", "ok"]


@pytest.mark.llmperf(backend="hf-tp", world_size=2)
def test_perturbed(llm):
    assert llm.correctness.outcome == "match"
    llm.launcher.run("perturb_weight", ranks=[1])  # one weight, on rank 1 only (tests/launch/weight_fault.py)
    llm.check_correctness()
    llm.generate(batch_size=1)
"""



def test_parallel_backends_match_hf_and_land_in_the_history(pytester, model_cache, tmp_path, monkeypatch):
    pytester.makepyfile(test_parallel=INNER)
    for name, value in command_env().items():  # the ranks know the tests' perturb_weight command
        monkeypatch.setenv(name, value)
    db = tmp_path / "history.db"
    result = pytester.runpytest_subprocess(
        "--llmperf", f"--llmperf-model-cache={model_cache}", f"--llmperf-db={db}", "--llmperf-cpu-slots=2",
        f"--llmperf-pool-dir={tmp_path / 'pool'}", "--llmperf-device=cpu", "-p", "no:cacheprovider", "-rA")
    result.assert_outcomes(passed=4, failed=1)
    result.stdout.fnmatch_lines([
        "*test_perturbed*",
        "*llmperf correctness: hf-tp does not generate what hf does: * new tokens differ from hf; the first at rank *",
    ])

    tests = {r["test_id"].split("::")[-1]: r for r in file_rows(db, "SELECT * FROM tests")}
    assert set(tests) == {"test_ranks[llama-tiny-ds-inference-ws2]", "test_ranks[llama-tiny-ds-zero-ws2]",
                          "test_ranks[llama-tiny-hf-tp-ws2]", "test_offload[llama-tiny-accelerate-disk-offload]",
                          "test_perturbed[llama-tiny-hf-tp-ws2]"}
    for name, row in tests.items():
        perturbed = name.startswith("test_perturbed")
        assert row["correctness_outcome"] == ("mismatch" if perturbed else "match"), name
        assert row["outcome"] == ("failed" if perturbed else "passed"), name
        correctness = json.loads(row["correctness"])
        assert correctness["new_tokens"] == 32 and correctness["distinct_reference_tokens"] >= 8
    assert tests["test_offload[llama-tiny-accelerate-disk-offload]"]["world_size"] == 1
    assert {r["world_size"] for n, r in tests.items() if "ws2" in n} == {2}

    loads = {r["test_id"].split("::")[-1]: r for r in file_rows(
        db, "SELECT t.test_id, m.devices, m.device_map FROM measurements m JOIN tests t ON t.id = m.test_row_id "
            "WHERE m.kind = 'load'")}
    assert json.loads(loads["test_ranks[llama-tiny-ds-inference-ws2]"]["devices"]) == ["cpu#0", "cpu#1"]
    offload = loads["test_offload[llama-tiny-accelerate-disk-offload]"]
    assert "disk" in json.loads(offload["devices"]) and "disk" in json.loads(offload["device_map"]).values()

    streams = {(r["backend"], r["streams"]) for r in file_rows(
        db, "SELECT t.backend, m.streams FROM measurements m JOIN tests t ON t.id = m.test_row_id "
            "WHERE m.kind = 'generate'")}
    assert streams == {("ds-inference", 1), ("ds-zero", 2), ("hf-tp", 1), ("accelerate", 1)}
    throughput = file_rows(db, "SELECT backend, batch_size, value FROM results WHERE metric = 'tokens_per_s'")
    assert {(r["backend"], r["batch_size"]) for r in throughput} >= {
        ("ds-inference", 1), ("ds-inference", 2), ("ds-zero", 2), ("hf-tp", 2), ("accelerate", 2)}
    assert all(r["value"] > 0 for r in throughput)
