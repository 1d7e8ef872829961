"""The vllm backend: vLLM's engine in a process of its own, under vLLM's own Python.

The engine tests run when a vLLM Python is found (``LLMPERF_VLLM_PYTHON``, ``.venv-vllm`` made by
``.ci/install-vllm``) and are skipped otherwise. Each engine start-up costs tens of seconds on a CPU,
so one engine, loaded once for the module, serves every engine test but the end-to-end run. The
engine process's own life (connect, die, die with its parent) is tested without vLLM.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from pytest_llmperf.backends import backend_class
from pytest_llmperf.backends.base import BackendUnavailable, LoadRequest
from pytest_llmperf.backends.vllm import VllmBackend, head_dim
from pytest_llmperf.backends.vllm_process import EngineFailed, EngineProcess
from pytest_llmperf.backends.vllm_protocol import Generate
from pytest_llmperf.backends.vllm_python import PYTHON_ENV, find_vllm_python
from pytest_llmperf.measure.rank import RankRunner
from pytest_llmperf.measure.token_clock import TokenClock
from pytest_llmperf.models.spec import parse_model_spec
from pytest_llmperf.models.synthetic import ensure_synthetic
from pytest_llmperf.prompts import prompt_token_ids
from pytest_llmperf.results import GenerateConfig

REPOSITORY = Path(__file__).resolve().parents[2]
SPECIALS = [0, 1, 2, 3]


def _vllm_python_or_skip():
    try:
        return find_vllm_python()
    except BackendUnavailable as e:
        pytest.skip(str(e))


def _checkpoint(name, cache):
    return ensure_synthetic(parse_model_spec(f"synthetic:{name}"), "float32", cache)


@pytest.fixture(scope="module")
def engine(synthetic_cache):
    """One vLLM engine on synthetic:llama-tiny-hd32 (float32, CPU) for the module, and its load result."""
    _vllm_python_or_skip()
    checkpoint = _checkpoint("llama-tiny-hd32", synthetic_cache)
    runner = RankRunner(VllmBackend(), "cpu")
    load = runner.load(LoadRequest(checkpoint, "float32", "cpu", cache_dir=synthetic_cache / "derived", threads=2))
    yield runner, load, checkpoint
    pid = runner.backend.engine_pid
    runner.close()
    assert pid is not None and not _alive(pid), "closing the backend must end its engine process"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead too: it only waits to be reaped
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"


# ---------------------------------------------------------------------------------------- the engine


def test_an_eager_load_compiles_nothing_and_leaves_no_warm_compile_cache(tmp_path):
    from pytest_llmperf.backends.vllm import CACHE_DONE, compile_cache_dir

    python = _vllm_python_or_skip()
    checkpoint = _checkpoint("llama-tiny-hd32", tmp_path / "models")
    request = LoadRequest(checkpoint, "float32", "cpu", variant="eager", cache_dir=tmp_path / "derived", threads=2)
    runner = RankRunner(VllmBackend(), "cpu")
    try:
        load = runner.load(request)
    finally:
        runner.close()
    assert [name for name, _ in load.phases] == ["start", "import", "engine", "warm-up"]
    # a compiled load through the same cache must not be told the artifacts are there
    assert not (compile_cache_dir(request, python, tmp_path) / CACHE_DONE).exists()


def test_load_is_timed_in_phases_and_reports_the_real_weights(engine):
    _, load, checkpoint = engine
    names = [name for name, _ in load.phases]
    assert names[:3] == ["start", "import", "engine"] and names[3] in ("compile", "compile-cached") and len(names) == 4
    assert sum(s for _, s in load.phases) == pytest.approx(load.load_s, rel=0.05)
    reference = AutoModelForCausalLM.from_pretrained(checkpoint)
    assert load.weights_bytes == sum(p.numel() * 4 for p in reference.parameters())
    assert load.devices == ("cpu",)


@pytest.mark.parametrize("batch", [1, 3])
def test_greedy_tokens_are_exactly_hf_s(engine, batch):
    runner, _, checkpoint = engine
    ids = prompt_token_ids(vocab_size=1024, batch_size=batch, prompt_tokens=8, seed=batch, special_ids=SPECIALS)
    ours = runner.tokens(ids, 32)  # checks the shape: the prompt, then exactly 32 new tokens per row
    reference = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    inputs = torch.as_tensor(ids)
    with torch.inference_mode():
        expected = reference.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=32,
                                      min_new_tokens=32, do_sample=False, pad_token_id=3)
    assert ours.shape == (batch, 8 + 32)
    np.testing.assert_array_equal(ours, expected.numpy())
    assert len(set(ours[0, 8:].tolist())) >= 8  # varied enough for the comparison to mean something


def test_each_row_s_tokens_are_stamped_by_the_engine_process_as_its_steps_return(engine):
    runner, _, _ = engine
    ids = torch.as_tensor(prompt_token_ids(vocab_size=1024, batch_size=3, prompt_tokens=8, seed=5))
    clock = TokenClock(lambda: None, rows=3, new_tokens=6)
    clock.start()
    runner.backend.generate(ids, 6, clock)
    clock.stop()
    timeline = clock.timeline("vllm")
    # readings taken in the other process fall inside this process's start and stop: one clock
    assert len(timeline.token_s) == 6 and 0 < timeline.ttft_s <= timeline.token_s[-1] <= timeline.end_s
    assert list(timeline.token_s) == sorted(timeline.token_s) and len(timeline.itl_s) == 5


def test_trials_have_ttft_and_inter_token_latencies(engine):
    runner, _, _ = engine
    ids = prompt_token_ids(vocab_size=1024, batch_size=3, prompt_tokens=8, seed=0)
    result = runner.generate(GenerateConfig(batch_size=3, prompt_tokens=8, new_tokens=6, trials=2, warmups=1), ids)
    assert result.outcome == "ok" and len(result.trials) == 2
    for trial in result.trials:
        assert (trial.batch_size, trial.new_tokens) == (3, 6)
        assert 0 < trial.ttft_s < trial.e2e_s and trial.itl_p50_s is not None and trial.itl_p50_s > 0
    assert runner.backend.engine_timing() is None  # several rows: no single request's account
    single = runner.generate(GenerateConfig(batch_size=1, prompt_tokens=8, new_tokens=6, trials=1, warmups=0), ids[:1])
    timing = runner.backend.engine_timing()  # vLLM's own request stats of that trial
    assert timing is not None and timing.new_tokens == 6 and timing.tpot_ms is not None
    assert 0 < timing.e2e_ms <= single.trials[0].e2e_s * 1000


def test_a_new_token_count_is_honoured_exactly(engine):
    runner, _, _ = engine
    ids = prompt_token_ids(vocab_size=1024, batch_size=2, prompt_tokens=5, seed=3)
    assert runner.tokens(ids, 2).shape == (2, 7) and runner.tokens(ids, 17).shape == (2, 22)


# ---------------------------------------------------------------------------------------- refusals


def test_heads_narrower_than_vllm_s_cpu_attention_takes_are_refused_with_the_fix(synthetic_cache):
    checkpoint = _checkpoint("llama-tiny", synthetic_cache)
    config = AutoConfig.from_pretrained(checkpoint)
    assert head_dim(config) == 16
    reason = VllmBackend.unavailable_reason(LoadRequest(checkpoint, "float32", "cpu"), config)
    assert reason is not None
    assert "16 wide" in reason and "at least 32" in reason and "head_dim is >= 32" in reason
    assert "synthetic:llama-tiny-hd32" in reason


def test_more_than_one_cpu_process_is_refused(synthetic_cache):
    checkpoint = _checkpoint("llama-tiny-hd32", synthetic_cache)
    config = AutoConfig.from_pretrained(checkpoint)
    reason = VllmBackend.unavailable_reason(LoadRequest(checkpoint, "float32", "cpu", world_size=2), config)
    assert reason is not None and "world size 2" in reason and "world_size=1" in reason


def test_without_a_vllm_python_the_reason_names_the_variable_and_the_installer(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere" / "python"
    monkeypatch.setenv(PYTHON_ENV, str(missing))
    with pytest.raises(BackendUnavailable, match=rf"{PYTHON_ENV}.*cannot run.*\.ci/install-vllm"):
        find_vllm_python()
    monkeypatch.setenv(PYTHON_ENV, sys.executable)  # runs, but has no vllm (or has: then it is found)
    try:
        found = find_vllm_python()
    except BackendUnavailable as e:
        assert "cannot import vllm" in str(e) and ".ci/install-vllm" in str(e)
    else:
        assert found.executable == Path(sys.executable)


def test_the_registry_names_the_backend():
    assert backend_class("vllm") is VllmBackend


# ---------------------------------------------------------------------------------------- the process


def _engine_process(tmp_path) -> EngineProcess:
    """The engine process under this Python: its life does not need vLLM until a model is loaded."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPOSITORY), os.environ.get("PYTHONPATH", "")]))
    return EngineProcess.start(Path(sys.executable), env, tmp_path / "engine.log", timeout_s=120)


def test_a_failing_command_is_an_error_and_a_dead_engine_quotes_its_log(tmp_path):
    process = _engine_process(tmp_path)
    try:
        with pytest.raises(EngineFailed, match=r"vLLM failed to generate: RuntimeError: generate before load"):
            process.call(Generate(((5, 6),), 2), "generate")
        assert process.alive()  # an error is an answer, not a death
        os.kill(process.pid, signal.SIGKILL)
        with pytest.raises(EngineFailed) as info:
            process.call(Generate(((5, 6),), 2), "generate 2 tokens")
        message = str(info.value)
        assert f"(pid {process.pid}) died while asked to generate 2 tokens" in message
        assert "exit status -9" in message and "RuntimeError: generate before load" in message  # the log's tail
    finally:
        process.close()
    assert not _alive(process.pid)


def test_the_engine_process_dies_with_the_test_process(tmp_path):
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import os, sys, time
            from pathlib import Path
            sys.path.insert(0, {str(REPOSITORY)!r})
            from pytest_llmperf.backends.vllm_process import EngineProcess
            env = dict(os.environ, PYTHONPATH={str(REPOSITORY)!r})
            process = EngineProcess.start(Path(sys.executable), env, Path({str(tmp_path / "engine.log")!r}), 120)
            print(process.pid, flush=True)
            time.sleep(600)
        """)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert parent.stdout is not None
        engine_pid = int(parent.stdout.readline())
        assert _alive(engine_pid)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while _alive(engine_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(engine_pid), "the engine process outlived the process that started it"


# ---------------------------------------------------------------------------------------- end to end

END_TO_END = """
import pytest

@pytest.mark.llmperf(backend="vllm", model="synthetic:llama-tiny-hd32", world_size=1, budgets={"tokens_per_s": 0.001})
def test_vllm(llm):
    result = llm.generate(batch_size=2)
    assert result.outcome == "ok" and len(result.trials) == 2

@pytest.mark.llmperf(backend="vllm", model="synthetic:llama-tiny", world_size=1)
def test_narrow_heads(llm):
    llm.generate(batch_size=1)
"""


def test_a_marked_test_runs_on_vllm_and_is_recorded(pytester, synthetic_cache):
    _vllm_python_or_skip()
    import sqlite3

    pytester.makepyfile(END_TO_END)
    result = pytester.runpytest_subprocess(
        "--llmperf", "-rs", "-p", "no:cacheprovider", f"--llmperf-model-cache={synthetic_cache}",
        f"--llmperf-pool-dir={pytester.path / 'pool'}", "--llmperf-trials=2", "--llmperf-warmups=1",
        "--llmperf-new-tokens=8", "--llmperf-prompt-tokens=8",
    )
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*vllm*llama-tiny-hd32*load_s*(start * + import * + engine * + compile*",
                                 "*SKIPPED*heads are 16 wide*at least 32 wide*"])
    conn = sqlite3.connect(pytester.path / ".llmperf" / "history.db")
    try:
        assert conn.execute("select status from runs").fetchall() == [("complete",)]
        assert conn.execute("select backend, outcome, correctness_outcome from tests").fetchall() == [
            ("vllm", "passed", "match")]
        metrics = {m for (m,) in conn.execute("select metric from results")}
        assert {"load_s", "weights_bytes", "ttft_ms", "tpot_ms", "tokens_per_s"} <= metrics
        assert conn.execute("select count(*) from trials").fetchall() == [(2,)]
        (phases,) = conn.execute("select phases from measurements where kind = 'load'").fetchone()
        assert '"engine"' in phases and '"compile' in phases
    finally:
        conn.close()
