"""RankGroup / GroupLauncher with real rank processes on the CPU (gloo): failures, tear-down, correctness.

A rank that raises, hangs or dies must fail the call with ``RankFailed`` naming the rank, its error
and its last output lines, and leave no process and no DeepSpeed /dev/shm buffer behind. A healthy
group must generate exactly hf's tokens, and a perturbed shard must be caught by the comparison.
"""

from __future__ import annotations

import re
import time

import numpy as np
import pytest

from pytest_llmperf.backends.base import LoadRequest
from pytest_llmperf.correctness import CHECK_NEW_TOKENS, compare_tokens
from pytest_llmperf.launch.distributed import GroupSpec, RankFailed
from pytest_llmperf.launch.group_launcher import GroupLauncher
from pytest_llmperf.results import GenerateConfig
from tests.launch.faulty_backend import FAULT_ENV, FAULT_MARK
from tests.launch.procs import (
    PROMPT_TOKENS,
    descendants,
    group_env,
    group_processes,
    kill_all,
    remove_shm_files,
    shm_files,
    survivors,
)
from tests.launch.weight_fault import PERTURB, command_env

HF_DOUBLE = "faulty_backend:FaultyBackend"  # hf on every rank, coupled by a gloo all-reduce per generate
DS_DOUBLE = "faulty_ds_backend:FaultyDsBackend"  # ds-inference AutoTP: DeepSpeed's /dev/shm all-reduce


class FaultyGroup:
    """A loaded two-rank group of a fault-injecting double, with every process it started."""

    def __init__(self, backend: str, fault: str, tmp_path, timeout_s: float):
        spec = GroupSpec(backend_id=backend, world_size=2, device_kind="cpu", log_dir=tmp_path / "logs",
                         timeout_s=timeout_s, env=group_env(**{FAULT_ENV: fault}))
        before = descendants()
        self.launcher = GroupLauncher(spec, labels=("cpu#0", "cpu#1"), independent_streams=False)
        self.hellos = self.launcher.group.hellos
        self.procs = group_processes(before, self.hellos)

    def load(self, model) -> None:
        self.launcher.load(LoadRequest(model.path, "float32", "cpu"))

    def assert_torn_down(self) -> None:
        """Right after RankFailed: every agent and rank is gone, and no shared-memory buffer is left."""
        left = survivors(self.procs, wait_s=2.0)
        assert not left, f"processes of the failed group are still alive: {left}"
        assert not shm_files(self.hellos), f"/dev/shm buffers left behind: {shm_files(self.hellos)}"

    def cleanup(self) -> None:
        """After the test, passed or not: nothing of this group may stay for the next tests."""
        kill_all(self.procs)
        self.launcher.close()
        remove_shm_files(self.hellos)


@pytest.fixture
def faulty_group(llama, tmp_path, deepspeed_cpu_op):
    """``faulty_group(backend, fault)``: a started and loaded group of a fault-injecting double."""
    groups: list[FaultyGroup] = []

    def start(backend: str, fault: str, *, timeout_s: float = 60.0) -> FaultyGroup:
        group = FaultyGroup(backend, fault, tmp_path, timeout_s)
        groups.append(group)
        group.load(llama)
        return group

    yield start
    for group in groups:
        group.cleanup()


def _assert_last_words(message: str, rank: int, action: str) -> None:
    """The failing rank's last output lines are quoted: its log's tail, with the line it printed before failing."""
    assert f"--- last lines of rank-{rank}.log" in message, message
    quoted = message.split(f"--- last lines of rank-{rank}.log", 1)[1]
    assert f"{FAULT_MARK}: rank {rank} will {action} in generate" in quoted, message


def test_a_rank_that_raises_fails_the_call_with_its_error_and_last_lines(faulty_group, hf_reference):
    group = faulty_group(HF_DOUBLE, "raise:generate:1")
    with pytest.raises(RankFailed) as failed:
        group.launcher.tokens(hf_reference.input_ids, CHECK_NEW_TOKENS)
    message = str(failed.value)
    assert message.startswith(
        "rank 1 failed during 'tokens': RuntimeError: injected fault: rank 1 raises in generate"), message
    assert message.count('faulty_backend.py", line') > 15  # the rank's traceback, whole
    # the log also ends with that traceback, longer than the quoted tail: what is quoted is the output before it
    _assert_last_words(message, 1, "raise")
    group.assert_torn_down()
    with pytest.raises(RuntimeError, match="closed"):
        group.launcher.tokens(hf_reference.input_ids, CHECK_NEW_TOKENS)


def test_a_rank_that_hangs_fails_the_call_after_the_rank_timeout(faulty_group, hf_reference):
    timeout_s = 25.0  # start-up and load get it too (about 8 s here, several times that on a busy machine)
    group = faulty_group(DS_DOUBLE, "hang:generate:1", timeout_s=timeout_s)
    # the other rank waits for it in DeepSpeed's shared-memory all-reduce, which has no timeout of its own
    assert shm_files(group.hellos), "ds-inference should all-reduce through /dev/shm buffers here"
    started = time.monotonic()
    with pytest.raises(RankFailed) as failed:
        group.launcher.tokens(hf_reference.input_ids, CHECK_NEW_TOKENS)
    elapsed = time.monotonic() - started
    message = str(failed.value)
    # rank 0 is stuck in the collective with it, so both are late; the hanging rank must be among those named
    assert re.match(r"rank (0, )?1 did not finish 'tokens' within 25 s \(--llmperf-rank-timeout\)", message), message
    _assert_last_words(message, 1, "hang")
    assert timeout_s <= elapsed < timeout_s + 15, f"failed after {elapsed:.1f} s"
    group.assert_torn_down()


def test_a_rank_that_is_killed_is_named_even_when_the_test_process_looks_late(faulty_group, hf_reference):
    """Rank 1 SIGKILLs itself; torchrun then terminates rank 0 too. The test process is busy meanwhile
    (a slow progress callback), so it finds both connections closed at once: the dead rank must still
    be named, with its last output, not only the rank that was terminated because of it."""
    group = faulty_group(DS_DOUBLE, "kill:generate:1:0:0.5")  # rank 1 dies 0.5 s into its first generate
    assert shm_files(group.hellos)
    slow_calls = []

    def slow_progress(what: str, done: int, total: int) -> None:
        slow_calls.append(what)
        if len(slow_calls) == 1:
            time.sleep(3)

    config = GenerateConfig(batch_size=2, prompt_tokens=PROMPT_TOKENS, new_tokens=4, trials=1, warmups=1)
    with pytest.raises(RankFailed) as failed:
        group.launcher.generate(config, hf_reference.input_ids, slow_progress)
    message = str(failed.value)
    assert slow_calls, "rank 0 never reported progress: the test did not look late"
    assert re.match(r"rank (0, )?1 died during 'generate'", message), message
    _assert_last_words(message, 1, "kill")
    group.assert_torn_down()


def test_a_peer_that_fails_because_a_rank_died_is_not_blamed_for_it(faulty_group, hf_reference):
    """Rank 1 is SIGKILLed in generate; rank 0, in a gloo all-reduce with it, fails at once ("Connection
    reset by peer") and reports that error, or is stopped by torchrun. Rank 1's own closed connection
    shows a moment later (here a child process holds it open for a second, as a forked worker would):
    rank 1's death must be reported, not only rank 0's error or death."""
    group = faulty_group(HF_DOUBLE, "kill-held:generate:1")
    with pytest.raises(RankFailed) as failed:
        group.launcher.tokens(hf_reference.input_ids, CHECK_NEW_TOKENS)
    message = str(failed.value)
    # "rank 1 died ...; then rank 0 failed: RuntimeError: [...gloo...] Connection reset by peer", or
    # "rank 0, 1 died ..." when torchrun stopped rank 0 before it could report its error
    assert re.match(r"rank (0, )?1 died during 'tokens'", message), message
    _assert_last_words(message, 1, "kill-held")
    group.assert_torn_down()


# ---------------------------------------------------------------------------------------- healthy groups


@pytest.fixture(scope="module", params=["ds-inference", "ds-zero"])
def loaded(request, llama, tmp_path_factory, deepspeed_cpu_op):
    """(backend, launcher, merged load, every rank's own load) of a healthy two-rank group."""
    backend = request.param
    spec = GroupSpec(backend_id=backend, world_size=2, device_kind="cpu", timeout_s=120, env=command_env(),
                     log_dir=tmp_path_factory.mktemp(f"{backend}-logs"))
    launcher = GroupLauncher(spec, labels=("cpu#0", "cpu#1"), independent_streams=backend == "ds-zero")
    per_rank: dict[str, list] = {}
    call = launcher.run

    def spy(name, args=None, **kw):  # keep each rank's answer, as well as the merged one
        per_rank[name] = call(name, args, **kw)
        return per_rank[name]

    launcher.run = spy
    try:
        load = launcher.load(LoadRequest(llama.path, "float32", "cpu"))
        yield backend, launcher, load, per_rank["load"]
    finally:
        hellos = launcher.group.hellos
        launcher.close()
    assert not shm_files(hellos), f"/dev/shm buffers left after close: {shm_files(hellos)}"


def test_the_load_result_adds_up_over_ranks(loaded, hf_reference, llama):
    backend, _, load, ranks = loaded
    assert len(ranks) == 2
    assert load.devices == ("cpu#0", "cpu#1")
    for rank in (load, *ranks):
        phases = sum(seconds for _, seconds in rank.phases)
        assert rank.load_s >= phases > 0, rank
    assert load.load_s == max(r.load_s for r in ranks)
    assert all(load.load_s >= sum(s for _, s in r.phases) for r in ranks)
    assert load.weights_bytes == sum(r.weights_bytes for r in ranks)
    assert all(0 < r.weights_bytes < hf_reference.weights_bytes for r in ranks), "each rank holds only a shard"
    # The shards add up to about the model. AutoTP shards the linear layers (lm_head included) but keeps a
    # whole input embedding on every rank, which the sum counts once per rank: in llama-tiny (vocabulary
    # 1024 x hidden 64, 2 small layers) that copy is 32 % of the model, so it is taken out before comparing.
    text = llama.config.get_text_config()
    replicated = text.vocab_size * text.hidden_size * 4 if backend == "ds-inference" else 0
    shards = load.weights_bytes - (len(ranks) - 1) * replicated
    assert 0.5 * hf_reference.weights_bytes <= shards <= 1.1 * hf_reference.weights_bytes, (
        load.weights_bytes, replicated, hf_reference.weights_bytes)


def test_the_group_generates_hf_tokens_and_a_perturbed_shard_is_caught(loaded, hf_reference):
    backend, launcher, _, _ = loaded
    outputs = launcher.tokens(hf_reference.input_ids, CHECK_NEW_TOKENS)
    assert len(outputs) == 2
    for output in outputs:
        np.testing.assert_array_equal(output, hf_reference.tokens)
    check = compare_tokens(hf_reference.tokens, outputs, prompt_tokens=PROMPT_TOKENS, exact=True)
    assert check.outcome == "match", check.detail
    assert check.distinct_reference_tokens >= 8 and check.compared_tokens == 2 * 2 * CHECK_NEW_TOKENS

    name = launcher.run(PERTURB, ranks=[1])[0]  # a command of the tests' own (weight_fault)
    assert "mlp" in name, name
    outputs = launcher.tokens(hf_reference.input_ids, CHECK_NEW_TOKENS)
    check = compare_tokens(hf_reference.tokens, outputs, prompt_tokens=PROMPT_TOKENS, exact=True)
    assert check.outcome == "mismatch", f"{backend}: a perturbed shard on rank 1 went unnoticed: {check.detail}"
    # the shard is one rank's, but every rank computes with it: all of them drift from hf
    assert all(not np.array_equal(o, hf_reference.tokens) for o in outputs), check.detail
