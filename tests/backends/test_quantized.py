"""hf's quantized variants for real (bitsandbytes, torchao, optimum-quanto on the CPU): they load, generate,
store fewer bytes than full precision, and have their fidelity to hf measured and recorded."""

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("bitsandbytes", reason="the quantized variants need pip install 'pytest-llmperf[quantized]'")
pytest.importorskip("torchao", reason="the quantized variants need pip install 'pytest-llmperf[quantized]'")
pytest.importorskip("optimum.quanto", reason="the quantized variants need pip install 'pytest-llmperf[quantized]'")

# In-process inner runs (pytester) restore sys.modules afterwards, and a C extension imported for the first
# time inside one cannot be imported again in the next: import everything an inner run uses here.
import transformers.models.llama.modeling_llama  # noqa: F401
from transformers import AutoModelForCausalLM

import pytest_llmperf.plugin  # noqa: F401
from pytest_llmperf.backends import backend_variants
from pytest_llmperf.backends.base import BackendUnavailable, LoadRequest
from pytest_llmperf.backends.hf import HfBackend
from pytest_llmperf.backends.hf_quantized import INSTALL, QUANTIZATIONS, VARIANTS
from pytest_llmperf.bench import Bench
from pytest_llmperf.case import cases_from_marker
from pytest_llmperf.history.store import HistoryStore
from pytest_llmperf.measure.rank import RankRunner
from pytest_llmperf.models.spec import parse_model_spec
from pytest_llmperf.models.synthetic import ensure_synthetic
from pytest_llmperf.prompts import prompt_token_ids
from pytest_llmperf.settings import Settings

QUANTIZED = tuple(QUANTIZATIONS)
#: bits per quantized weight, and the bytes of scales (and zero points) each library keeps beside them:
#: (per output row, per 64-weight block, per layer); the lower bound is the data alone plus the scales
#: every layout must have, the upper leaves room for the extras (torchao's zero points, nf4's code book)
LAYOUT = {
    "bnb-int8": (8, (4, 5), 0, 0),
    "torchao-int8": (8, (4, 5), 0, 0),
    "quanto-int8": (8, (4, 5), 0, 0),
    "bnb-nf4": (4, (0, 0), 4, 64),
}


@pytest.fixture(scope="module")
def checkpoint(synthetic_cache):
    return ensure_synthetic(parse_model_spec("synthetic:llama-tiny"), "float32", synthetic_cache)


@pytest.fixture(scope="module")
def full_precision(checkpoint):
    return AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)


def _quantized_linears(model) -> list[torch.nn.Linear]:
    """What transformers quantizes: the decoder's linear layers (not the embeddings, norms or lm_head)."""
    return [m for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear)]


def test_the_registry_lists_every_variant():
    assert backend_variants("hf") == VARIANTS and VARIANTS[0] == "default"
    assert set(QUANTIZED) == {"bnb-int8", "bnb-nf4", "torchao-int8", "quanto-int8"}


@pytest.mark.parametrize("variant", QUANTIZED)
def test_a_variant_loads_generates_exactly_n_tokens_and_stores_its_real_bytes(checkpoint, full_precision, variant):
    runner = RankRunner(HfBackend(), "cpu")
    load = runner.load(LoadRequest(checkpoint, "float32", "cpu", variant=variant))
    try:
        assert [name for name, _ in load.phases] == ["read", "place"]
        ids = prompt_token_ids(vocab_size=1024, batch_size=2, prompt_tokens=8, seed=0, special_ids=[0, 1, 2, 3])
        output = runner.tokens(ids, 12)
        assert output.shape == (2, 8 + 12) and (output[:, :8] == ids).all()

        full_bytes = sum(p.numel() * 4 for p in full_precision.parameters())
        linears = _quantized_linears(full_precision)
        weights = sum(m.weight.numel() for m in linears)
        rows = sum(m.out_features for m in linears)
        bits, (row_low, row_high), per_block, per_layer = LAYOUT[variant]
        data = (full_bytes - 4 * weights) + weights * bits // 8
        low = data + rows * row_low + weights // 64 * per_block
        high = low + rows * (row_high - row_low) + per_layer * len(linears)
        assert low <= load.weights_bytes <= high < full_bytes
        # torchao and quanto tensors report float32 and the full shape: transformers' footprint counts them so
        module = runner.backend.module()
        if variant in ("torchao-int8", "quanto-int8"):
            assert module.get_memory_footprint() > full_bytes - 1024 > load.weights_bytes
    finally:
        runner.close()


def _settings(cache: Path) -> Settings:
    return Settings.from_sources(
        enabled=True, cli={"model_cache": str(cache)},
        ini={"trials": "1", "warmups": "0", "new_tokens": "4", "prompt_tokens": "8", "batch_sizes": "1"},
        rootdir=Path("/unused"))


@pytest.mark.parametrize("variant", QUANTIZED)
def test_the_bench_measures_fidelity_instead_of_requiring_hf_tokens(synthetic_cache, cpu_pool, variant):
    settings = _settings(synthetic_cache)
    (case,) = cases_from_marker((), {"model": "synthetic:llama-tiny", "backend": "hf", "variant": variant}, settings)
    with cpu_pool.lease(1, timeout_s=1, owner="t::q") as lease:
        bench = Bench.open(test_id="t::q", case=case, settings=settings, lease=lease)
        try:
            bench.generate(batch_size=1)
            record = bench.record()
        finally:
            bench.close()
    assert record.correctness is None and record.fidelity is not None
    fidelity = record.fidelity
    assert (fidelity.batch_size, fidelity.positions, fidelity.new_tokens) == (2, 32, 32)
    assert fidelity.compared_tokens == 64 and 0 <= fidelity.agreed_tokens <= 64
    assert 0.0 <= fidelity.token_agreement <= 1.0 and 0 <= fidelity.first_divergence_tokens <= 32
    values = record.load_metric_values()
    assert values["token_agreement"] == fidelity.token_agreement
    assert values["first_divergence_tokens"] == fidelity.first_divergence_tokens
    print(f"{variant}: token agreement {fidelity.agreed_tokens}/64, first divergence {fidelity.first_divergence}")


def test_full_precision_hf_is_its_own_reference_and_measures_no_fidelity(synthetic_cache, cpu_pool):
    settings = _settings(synthetic_cache)
    (case,) = cases_from_marker((), {"model": "synthetic:llama-tiny", "backend": "hf"}, settings)
    with cpu_pool.lease(1, timeout_s=1, owner="t::d") as lease:
        bench = Bench.open(test_id="t::d", case=case, settings=settings, lease=lease)
        bench.close()
    assert bench.correctness is None and bench.fidelity is None and bench.reproduces_reference


def test_teacher_forcing_of_the_reference_itself_agrees_everywhere(checkpoint):
    """The method's zero: full-precision hf fed its own tokens predicts every one of them."""
    from pytest_llmperf.fidelity import measure_fidelity
    from pytest_llmperf.launch.inline import InlineLauncher

    ids = prompt_token_ids(vocab_size=1024, batch_size=2, prompt_tokens=8, seed=0, special_ids=[0, 1, 2, 3])
    launcher = InlineLauncher("hf", "cpu")
    try:
        launcher.load(LoadRequest(checkpoint, "float32", "cpu"))
        reference = launcher.tokens(ids, 16)[0]
        fidelity = measure_fidelity(launcher, ids, reference, positions=16)
    finally:
        launcher.close()
    assert (fidelity.agreed_tokens, fidelity.compared_tokens) == (32, 32)
    assert fidelity.first_divergence == (16, 16)


@pytest.mark.parametrize(("variant", "module", "package"), [
    ("bnb-nf4", "bitsandbytes", "bitsandbytes"),
    ("torchao-int8", "torchao", "torchao"),
    ("quanto-int8", "optimum.quanto", "optimum-quanto"),
])
def test_a_missing_library_is_a_skip_naming_the_package_and_the_install(monkeypatch, checkpoint, variant, module,
                                                                         package):
    monkeypatch.setitem(sys.modules, module, None)  # what an uninstalled package looks like to an import
    request = LoadRequest(checkpoint, "float32", "cpu", variant=variant)
    reason = HfBackend.unavailable_reason(request, None)
    assert reason is not None and f"package {package!r}" in reason and INSTALL in reason
    with pytest.raises(BackendUnavailable, match=f"package '{package}'"):
        HfBackend().load(request, lambda name: pytest.fail("no phase may start"))


def test_the_default_variant_needs_no_quantization_library(monkeypatch, checkpoint):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    assert HfBackend.unavailable_reason(LoadRequest(checkpoint, "float32", "cpu"), None) is None
    assert HfBackend.reproduces_reference(LoadRequest(checkpoint, "float32", "cpu"))
    assert not any(HfBackend.reproduces_reference(LoadRequest(checkpoint, "float32", "cpu", variant=v))
                   for v in QUANTIZED)


def test_ds_inference_int8_is_cuda_only_and_measured_for_fidelity():
    pytest.importorskip("deepspeed", reason="ds-inference needs the deepspeed package")
    from pytest_llmperf.backends.ds_inference import DsInferenceBackend

    assert "int8" in backend_variants("ds-inference")
    cpu = LoadRequest(Path("/nowhere"), "float16", "cpu", variant="int8")
    assert "int8 needs CUDA" in DsInferenceBackend.unavailable_reason(cpu, None)
    assert not DsInferenceBackend.reproduces_reference(cpu)
    assert DsInferenceBackend.reproduces_reference(LoadRequest(Path("/nowhere"), "float16", "cpu", variant="autotp"))


# ---- end to end: the plugin records fidelity in the history and checks its budget -----------------------

BUDGETED = """
import pytest

@pytest.mark.llmperf(model="synthetic:llama-tiny", backend="hf", variant=[{variants}],
                     budgets={{"token_agreement": 0.9}})
def test_quantized(llm):
    assert llm.generate(batch_size=1).outcome == "ok"
"""


def test_fidelity_lands_in_the_history_and_a_token_agreement_budget_is_a_lower_bound(pytester, synthetic_cache):
    pytester.makepyfile(BUDGETED.format(variants=", ".join(repr(v) for v in QUANTIZED)))
    result = pytester.runpytest(
        f"--llmperf-model-cache={synthetic_cache}", f"--llmperf-pool-dir={pytester.path / 'pool'}", "--llmperf",
        "-W", "ignore::pytest.PytestAssertRewriteWarning", "--llmperf-trials=1", "--llmperf-warmups=0",
        "--llmperf-new-tokens=4", "--llmperf-prompt-tokens=8", "--llmperf-batch-sizes=1", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*fidelity vs hf: token agreement *% (*/64 teacher-forced), free-run divergence *"])
    with HistoryStore.open(pytester.path / ".llmperf" / "history.db") as store:
        agreement = {r.variant: r for r in store.recent_results(metric="token_agreement")}
        divergence = {r.variant: r.value for r in store.recent_results(metric="first_divergence_tokens")}
        stored = {r.variant: r.value for r in store.recent_results(metric="weights_bytes")}
    assert set(agreement) == set(divergence) == set(stored) == set(QUANTIZED)
    outcomes = result.parseoutcomes()
    passing = [v for v, r in agreement.items() if r.value >= 0.9]
    for variant, row in agreement.items():
        assert 0.0 <= row.value <= 1.0 and row.unit == "ratio" and row.batch_size is None
        assert 0 <= divergence[variant] <= 32
        assert row.budget_outcome == ("pass" if row.value >= 0.9 else "miss")
        if row.value < 0.9:
            result.stdout.fnmatch_lines([f"token_agreement = {row.value:.1%}, budget >= 90.0% "
                                         "(model synthetic:llama-tiny, backend hf)"])
    assert outcomes.get("passed", 0) == len(passing) and outcomes.get("failed", 0) == len(QUANTIZED) - len(passing)
