"""The gate against a real history file: baselines by branch and environment, A/B groups, acceptances."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pytest_llmperf.environment import Environment, GitState, RunContext
from pytest_llmperf.gate.ab_compare import ab_comparisons
from pytest_llmperf.gate.history import HistoryBaseline, history_comparisons
from pytest_llmperf.gate.spec import GateSpec
from pytest_llmperf.gate.verdict import Outcome, judge
from pytest_llmperf.history.store import HistoryStore
from pytest_llmperf.results import (
    BenchRecord,
    GenerateConfig,
    GenerateResult,
    LoadResult,
    MemoryPeak,
    PageCache,
    Trial,
)
from tests.factories import LLAMA_TINY as MODEL
from tests.factories import NIGHTLY_H100 as H100

A100 = replace(H100, device_model="NVIDIA A100-SXM4-80GB")
TEST = "suites/test_bloom_study.py::test_load[llama-tiny-hf]"
NO_GATE = GateSpec()


def ctx(branch: str, commit: str = "c0ffee") -> RunContext:
    return RunContext(host="runner", cpu_model="x", cpu_count=16, platform="linux", git=GitState(commit, branch, False),
                      project_root="/p", argv=(), plugin_version="0", pytest_version="9")


def record(rng, *, e2e_s: float, test_id: str = TEST, noise: float = 0.01, peak: int = 10**9,
           gate: GateSpec = NO_GATE) -> BenchRecord:
    trials = tuple(Trial(ttft_s=0.01, e2e_s=e2e_s * (1 + rng.normal(0, noise)), batch_size=8, new_tokens=100)
                   for _ in range(5))
    generate = GenerateResult(config=GenerateConfig(batch_size=8, prompt_tokens=32, new_tokens=100, trials=5,
                                                    warmups=1),
                              outcome="ok", trials=trials,
                              memory=MemoryPeak(peak_bytes=peak, reserved_bytes=None, method="cuda"))
    load = LoadResult(load_s=2.0 * (1 + rng.normal(0, noise)), phases=(("read", 2.0),), weights_bytes=10**8,
                      memory=MemoryPeak(peak_bytes=peak, reserved_bytes=None, method="cuda"), page_cache=PageCache(1.0),
                      devices=("cuda:0",))
    return BenchRecord(test_id=test_id, model=MODEL, backend="hf", variant="default", world_size=1, seed=0,
                       load=load, generates=(generate,), gate=gate)


class History:
    def __init__(self, path: Path):
        self.store = HistoryStore.open(path)
        self.rng = np.random.default_rng(0)
        self.n = 0

    def run(self, *, e2e_s: float, branch: str = "main", env: Environment = H100, ab: tuple[str, str] | None = None,
            **kw) -> str:
        self.n += 1
        run_id = f"run{self.n:02}"
        group, side = ab or (None, None)
        self.store.start_run(run_id, env, ctx(branch), started_at=f"2026-11-{self.n:02}T00:00:00+00:00",
                             ab_group=group, ab_side=side)
        self.store.record_test(run_id, record(self.rng, e2e_s=e2e_s, **kw), test_outcome="passed")
        self.store.finish_run(run_id, "complete")
        return run_id

    def gate(self, run_id: str, branch: str = "main"):
        return {v.subject.metric: v for v in judge(history_comparisons(self.store, run_id,
                                                                       HistoryBaseline(branch=branch)))}


@pytest.fixture
def history(tmp_path):
    h = History(tmp_path / "history.db")
    yield h
    h.store.close()


def test_a_slower_pull_request_fails_against_the_default_branch_and_an_unchanged_one_passes(history):
    for _ in range(5):
        history.run(e2e_s=1.0)
    slow = history.gate(history.run(e2e_s=1.25, branch="feature"))
    assert slow["tokens_per_s"].outcome is Outcome.REGRESSED and slow["tokens_per_s"].fails
    assert slow["tokens_per_s"].comparison.baseline == "main: 5 runs"
    assert slow["tpot_ms"].outcome is Outcome.REGRESSED
    assert slow["peak_mem_bytes"].outcome is Outcome.UNCHANGED
    same = history.gate(history.run(e2e_s=1.0, branch="feature"))
    assert same["tokens_per_s"].outcome is Outcome.UNCHANGED


def test_runs_of_another_environment_are_never_a_silent_baseline(history):
    for _ in range(4):
        history.run(e2e_s=1.0, env=A100)
    verdicts = history.gate(history.run(e2e_s=2.0, branch="feature"))
    v = verdicts["tokens_per_s"]
    assert v.outcome is Outcome.INCONCLUSIVE and not v.fails
    assert "runs with another environment" in v.notes[0] and "are not compared" in v.notes[0]


def test_too_few_runs_other_branches_and_ab_runs_are_not_a_baseline(history):
    history.run(e2e_s=1.0)
    history.run(e2e_s=1.0)
    history.run(e2e_s=1.0, branch="other")
    history.run(e2e_s=1.0, ab=("g", "base"))
    v = history.gate(history.run(e2e_s=2.0, branch="feature"))["tokens_per_s"]
    assert v.outcome is Outcome.INCONCLUSIVE
    assert v.notes[0].startswith("no baseline: only 2 earlier run(s) of this series on main")


def test_an_accepted_regression_passes_and_becomes_the_new_level(history):
    for _ in range(4):
        history.run(e2e_s=1.0)
    accepted = history.run(e2e_s=1.5, gate=GateSpec(accept="bigger vocabulary, slower by design"))
    v = history.gate(accepted)["tokens_per_s"]
    assert v.outcome is Outcome.REGRESSED and not v.fails
    assert "accepted: bigger vocabulary, slower by design" in v.notes
    for _ in range(3):
        history.run(e2e_s=1.5)
    later = history.gate(history.run(e2e_s=1.5))["tokens_per_s"]
    assert later.outcome is Outcome.UNCHANGED  # compared with the new level only
    assert "since the change accepted at" in later.comparison.baseline


def test_llmperf_accept_after_the_fact_marks_the_runs_regressions(history):
    for _ in range(4):
        history.run(e2e_s=1.0)
    slow = history.run(e2e_s=1.5)
    verdicts = judge(history_comparisons(history.store, slow, HistoryBaseline(branch="main")))
    history.store.record_verdicts(slow, verdicts, baseline_kind="history")
    history.store.accept(slow, "suites/*::test_load[*]", "new sampler", metric="tokens_per_s")
    accepted = dict(history.store.db.execute("SELECT metric, accepted FROM verdicts WHERE run_id = ?", [slow]))
    assert accepted["tokens_per_s"] == "new sampler" and accepted["tpot_ms"] is None
    with pytest.raises(ValueError, match="needs a reason"):
        history.store.accept(slow, "*", "  ")


def test_ab_groups_compare_every_process_of_each_side(history):
    for _ in range(3):
        history.run(e2e_s=1.0, branch="pr", ab=("g1", "base"))
        history.run(e2e_s=1.2, branch="pr", ab=("g1", "head"))
    verdicts = {v.subject.metric: v for v in judge(ab_comparisons(history.store, "g1"))}
    tps = verdicts["tokens_per_s"]
    assert tps.outcome is Outcome.REGRESSED
    assert (tps.evidence.n_base, tps.evidence.n_head) == (3, 3)  # each process counts once, not its 5 trials
    assert tps.comparison.baseline == "base (3 vs 3 processes)"
    assert verdicts["load_s"].evidence.n_base == 3  # one value per process
    assert verdicts["peak_mem_bytes"].evidence.method == "tolerance"


def test_a_min_effect_from_the_marker_decides_what_counts(history):
    for _ in range(3):
        history.run(e2e_s=1.0, ab=("g2", "base"))
        history.run(e2e_s=1.08, ab=("g2", "head"), gate=GateSpec(layers=((("tokens_per_s", 0.2),),)))
    verdicts = {v.subject.metric: v for v in judge(ab_comparisons(history.store, "g2"))}
    assert verdicts["tokens_per_s"].comparison.min_effect == 0.2
    assert verdicts["tokens_per_s"].outcome is Outcome.UNCHANGED  # 8 % < 20 %
    assert verdicts["tpot_ms"].outcome is Outcome.REGRESSED  # the default 5 %


def test_memory_that_varies_from_run_to_run_is_compared_as_noisy_not_against_the_tolerance(history):
    for peak in (400, 420, 405, 430, 410):  # a host's peak RSS, MiB: 7 % apart with the same code
        history.run(e2e_s=1.0, peak=peak * 2**20)
    v = history.gate(history.run(e2e_s=1.0, peak=431 * 2**20))["peak_mem_bytes"]
    assert v.evidence.method.startswith("history:")
    assert v.outcome is not Outcome.REGRESSED
    for _ in range(3):
        history.run(e2e_s=1.0, peak=2**30, ab=("g3", "base"))
        history.run(e2e_s=1.0, peak=2**30 + 2**20, ab=("g3", "head"))  # a device counter: exact, +0.1 %
    ab = {v.subject.metric: v for v in judge(ab_comparisons(history.store, "g3"))}
    assert ab["peak_mem_bytes"].evidence.method == "tolerance" and ab["peak_mem_bytes"].outcome is Outcome.UNCHANGED


def test_a_sustained_step_in_the_newest_runs_fails_although_no_single_run_stood_out(history):
    """A 13 % step under 5 % noise between runs: the newest run alone is within the history's spread, the mean
    of the newest five is not."""
    wobble = [0.05 * (-1) ** i for i in range(25)]
    for w in wobble[:20]:
        history.run(e2e_s=float(np.exp(w)), noise=0.0)
    verdicts = [history.gate(history.run(e2e_s=float(np.exp(0.13 - w)), noise=0.0))["tokens_per_s"]
                for w in wobble[20:]]
    assert not verdicts[0].fails  # one slow run is not enough against this noise
    assert verdicts[-1].fails
    assert verdicts[-1].evidence.method == "history: the newest 5 runs"
    assert len(verdicts[-1].comparison.windows) == 3


def test_an_ab_run_judges_few_processes_against_the_noise_earlier_groups_measured(history):
    rng = np.random.default_rng(4)
    for group in ("aa1", "aa2", "aa3", "aa4"):  # earlier A/A calibrations: 3 processes a side, 4 % apart
        for side in ("base", "head"):
            for _ in range(3):
                history.run(e2e_s=float(np.exp(rng.normal(0, 0.04))), ab=(group, side), noise=0.002)
    history.run(e2e_s=1.0, ab=("g4", "base"), noise=0.002)
    history.run(e2e_s=1.3, ab=("g4", "head"), noise=0.002)
    history.run(e2e_s=1.02, ab=("g4", "base"), noise=0.002)
    history.run(e2e_s=1.28, ab=("g4", "head"), noise=0.002)
    tps = {v.subject.metric: v for v in judge(ab_comparisons(history.store, "g4"))}["tokens_per_s"]
    assert tps.evidence.df == 16 + 2  # 8 earlier sides of 3 processes, and this run's own 2 + 2
    assert "8 earlier same-code groups" in tps.evidence.noise
    assert tps.outcome is Outcome.REGRESSED
