"""The plugin at its edges: what it discovers, records and prints around the tests themselves."""

COUNT_DISCOVERIES = """
import pytest_llmperf.pool as pool

calls = []
_discover = pool.discover


def _counting(*args, **kwargs):
    calls.append(args)
    return _discover(*args, **kwargs)


pool.discover = _counting


def pytest_sessionfinish(session):
    print(f"\\ndiscoveries={len(calls)}")
"""


def test_the_device_pool_is_discovered_once_per_session_not_per_test_function(pytester, run_llmperf):
    pytester.makeconftest(COUNT_DISCOVERIES)
    pytester.makepyfile("\n".join(
        f"import pytest\n\n@pytest.mark.llmperf(model='synthetic:llama-tiny')\ndef test_{i}(llmperf_case):\n    pass\n"
        for i in range(4)
    ))
    result = run_llmperf("--collect-only", "-q", "-s")
    result.stdout.fnmatch_lines(["*4 tests collected*"])
    result.stdout.fnmatch_lines(["discoveries=1"])


def test_collect_only_records_no_run_in_the_history(pytester, run_llmperf):
    pytester.makepyfile("import pytest\n\n@pytest.mark.llmperf(model='synthetic:llama-tiny')\ndef test_one(llm):\n"
                        "    llm.generate(batch_size=1)\n")
    result = run_llmperf("--collect-only", "-q")
    result.stdout.fnmatch_lines(["*1 test collected*"])
    assert result.ret == 0
    assert not (pytester.path / ".llmperf").exists(), "a collection is not a run: nothing goes in the history"


RANK_FAILS_IN_THE_CALL = """
import pytest

from pytest_llmperf.launch.distributed import RankFailed


@pytest.mark.llmperf(model="synthetic:llama-tiny")
def test_rank_fails(llm):
    raise RankFailed("rank 1 failed during 'generate': RuntimeError: RANK-FAILURE-MESSAGE")
"""


def test_a_rank_failure_is_reported_once_without_a_traceback_through_the_launcher(pytester, run_llmperf):
    pytester.makepyfile(RANK_FAILS_IN_THE_CALL)
    result = run_llmperf("-rN")  # no short test summary: the failure report alone
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert out.count("RANK-FAILURE-MESSAGE") == 1, out
    assert "During handling of the above exception" not in out, out


def _repository_with_a_test(pytester) -> None:
    (pytester.path / ".git").mkdir()
    pytester.makepyfile("import pytest\n\n@pytest.mark.llmperf(model='synthetic:llama-tiny')\ndef test_one(llm):\n"
                        "    llm.generate(batch_size=1)\n")


def test_a_space_separated_option_value_that_moves_the_rootdir_out_of_the_repository_is_warned(
        pytester, run_llmperf, tmp_path_factory):
    _repository_with_a_test(pytester)
    elsewhere = tmp_path_factory.mktemp("elsewhere") / "history.db"
    elsewhere.touch()  # an existing path (the history of an earlier run) is what pytest takes for a test path
    result = run_llmperf("--llmperf-db", str(elsewhere), "--collect-only", "-q")
    result.stdout.fnmatch_lines(["*RootdirWarning: pytest chose the rootdir *, outside the repository of the tests*"
                                 "write the option as --llmperf-NAME=VALUE*"])


def test_the_equals_form_keeps_the_rootdir_in_the_repository_and_warns_nothing(pytester, run_llmperf,
                                                                                 tmp_path_factory):
    _repository_with_a_test(pytester)
    elsewhere = tmp_path_factory.mktemp("elsewhere") / "history.db"
    elsewhere.touch()
    result = run_llmperf(f"--llmperf-db={elsewhere}", "--collect-only", "-q")
    result.stdout.fnmatch_lines(["*1 test collected*"])
    assert "RootdirWarning" not in result.stdout.str()


BAD_GENERATE_ARGUMENT = """
import pytest


@pytest.mark.llmperf(model="synthetic:llama-tiny")
def test_bad_batch(llm):
    llm.generate(batch_size=0)
"""


def test_a_bad_generate_argument_is_named_as_the_call_and_its_argument(pytester, run_llmperf):
    pytester.makepyfile(BAD_GENERATE_ARGUMENT)
    result = run_llmperf()
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    result.stdout.fnmatch_lines(["*llm.generate(batch_size=0): expected a positive integer*"])
    assert "MarkerError" not in out and "case.py" not in out and "settings.py" not in out, out
