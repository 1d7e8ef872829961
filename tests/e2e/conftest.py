import pytest
import transformers.models.bloom.modeling_bloom
import transformers.models.gpt2.modeling_gpt2
import transformers.models.llama.modeling_llama  # noqa: F401

# In-process inner runs restore sys.modules afterwards, and a C extension imported for the first
# time inside one (torch, tokenizers, ...) cannot be imported again in the next: import them here.
import pytest_llmperf.backends.hf
import pytest_llmperf.bench
import pytest_llmperf.models.synthetic  # noqa: F401

#: fast settings for inner runs: the plugin's logic, not the model's speed, is under test
FAST = ("--llmperf", "-W", "ignore::pytest.PytestAssertRewriteWarning", "--llmperf-trials=2", "--llmperf-warmups=0",
        "--llmperf-new-tokens=4", "--llmperf-prompt-tokens=8", "--llmperf-batch-sizes=1", "--llmperf-backends=hf", "-p",
        "no:cacheprovider")


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> str:
    """One synthetic-model cache for every inner run, so each tiny model is built once."""
    return str(tmp_path_factory.mktemp("models"))


@pytest.fixture
def run_llmperf(pytester, model_cache):
    """Run pytest with the plugin on the test files written in ``pytester``, with fast settings."""

    def run(*args: str, subprocess: bool = False):
        # "--option=value": a separate value that is an existing path would take part in choosing the rootdir
        # a private device pool: leases of other pytest sessions on this machine must not make these wait
        full = (f"--llmperf-model-cache={model_cache}", f"--llmperf-pool-dir={pytester.path / 'pool'}", *FAST, *args)
        return pytester.runpytest_subprocess(*full) if subprocess else pytester.runpytest(*full)

    return run
