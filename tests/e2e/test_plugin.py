"""pytest with the plugin, end to end, on small test files and tiny synthetic models."""

import sqlite3

import pytest

from pytest_llmperf.history.store import HistoryStore

PASSING = """
import pytest

@pytest.mark.llmperf(model="synthetic:llama-tiny", budgets={"tokens_per_s": 0.001, "load_s": 3600,
                                                         "peak_mem_bytes": "1TiB", "ttft_ms": {1: 60000}})
def test_generous(llm):
    result = llm.generate(batch_size=1)
    assert result.outcome == "ok"
"""

IMPOSSIBLE = """
import pytest

@pytest.mark.llmperf(model="synthetic:llama-tiny", budgets={"tokens_per_s": 1e12, "load_s": 3600})
def test_impossible(llm):
    llm.generate(batch_size=1)
"""


def _db_rows(path, sql):
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_without_the_flag_performance_tests_are_skipped(pytester):
    pytester.makepyfile(PASSING + "\n\ndef test_plain():\n    assert sum([1, 2]) == 3\n")
    result = pytester.runpytest("-rs", "--llmperf-backends=hf")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*SKIPPED*performance test: run with --llmperf*"])
    assert not (pytester.path / ".llmperf").exists()


def test_a_generous_budget_passes_and_the_run_is_in_the_history(pytester, run_llmperf):
    pytester.makepyfile(PASSING)
    result = run_llmperf()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*llmperf summary*", "*test_generous*",
                                 "hf · synthetic:llama-tiny (llama, float32) · world 1 · load_s * (read * + place *; "
                                 "page cache *)*",
                                 "*batch*ttft_ms*tpot_ms*tokens/s*ms/token*peak mem*budgets*",
                                 "*1*±*±*±*±*iB*4 ok*", "*history: run * in *history.db"])
    db = pytester.path / ".llmperf" / "history.db"
    assert _db_rows(db, "select status from runs") == [("complete",)]
    assert _db_rows(db, "select test_id, outcome from tests") == [
        ("test_a_generous_budget_passes_and_the_run_is_in_the_history.py::test_generous[llama-tiny-hf]", "passed")]
    metrics = {m for (m,) in _db_rows(db, "select metric from results")}
    assert {"load_s", "first_generate_s", "ttft_ms", "tpot_ms", "tokens_per_s", "ms_per_token",
            "peak_mem_bytes", "weights_bytes", "kv_cache_bytes"} <= metrics
    assert _db_rows(db, "select count(*) from trials") == [(2,)]
    assert _db_rows(db, "select outcome from budget_checks order by metric") == [("pass",)] * 4


def test_an_impossible_budget_fails_with_one_line_per_miss(pytester, run_llmperf):
    pytester.makepyfile(IMPOSSIBLE)
    result = run_llmperf()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*llmperf budget missed:",
        "tokens_per_s = * tokens/s, budget >= 1000000000000 tokens/s "
        "(model synthetic:llama-tiny, backend hf, batch 1)",
    ])
    assert "load_s =" not in result.stdout.str()  # a met budget is not a miss line
    db = pytester.path / ".llmperf" / "history.db"
    assert _db_rows(db, "select outcome from tests") == [("failed",)]
    assert _db_rows(db, "select status from runs") == [("failed",)]


def test_a_bad_marker_is_a_collection_error_naming_test_argument_and_allowed(pytester, run_llmperf):
    pytester.makepyfile("""
        import pytest

        @pytest.mark.llmperf(model="synthetic:llama-tiny", budgets={"tokens_per_sec": 5})
        def test_typo(llm):
            pass
    """)
    result = run_llmperf()
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines([
        "*ERROR collecting*",
        "*::test_typo: @pytest.mark.llmperf: budgets={'tokens_per_sec': 5}: unknown metric 'tokens_per_sec'; "
        "metrics with budgets: load_s, *",
    ])


def test_a_bad_option_is_a_usage_error(pytester):
    pytester.makepyfile(PASSING)
    result = pytester.runpytest("--llmperf", "--llmperf-trials", "0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*argument --llmperf-trials: expected a positive integer, got '0'*"])


def test_a_bad_ini_value_is_a_usage_error(pytester):
    pytester.makeini("[pytest]\nllmperf_batch_sizes = 1,eight\n")
    pytester.makepyfile(PASSING)
    result = pytester.runpytest("--llmperf")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*llmperf_batch_sizes = '1,eight' in the ini file: expected a list of *"])


def test_an_unwritable_history_path_stops_the_run_before_any_test(pytester, run_llmperf):
    pytester.makepyfile(PASSING)
    (pytester.path / "blocker").write_text("a file, not a directory")
    result = run_llmperf("--llmperf-db", str(pytester.path / "blocker" / "history.db"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*blocker/history.db*--llmperf-db*"])


def test_precedence_command_line_over_marker_over_ini(pytester, model_cache):
    pytester.makeini("[pytest]\nllmperf_backends = hf\nllmperf_trials = 3\nllmperf_new_tokens = 4\n"
                     "llmperf_prompt_tokens = 8\n"
                     "llmperf_warmups = 0\nllmperf_batch_sizes = 1\n")
    pytester.makepyfile("""
        import pytest

        @pytest.mark.llmperf(model="synthetic:llama-tiny")
        def test_ini(llm):
            assert len(llm.generate(batch_size=1).trials) == 3

        @pytest.mark.llmperf(model="synthetic:llama-tiny", trials=2)
        def test_marker(llm):
            assert len(llm.generate(batch_size=1).trials) == 2
    """)
    pytester.runpytest("--llmperf", f"--llmperf-model-cache={model_cache}", "-p", "no:cacheprovider",
                       "-W", "ignore::pytest.PytestAssertRewriteWarning").assert_outcomes(passed=2)
    pytester.makepyfile("""
        import pytest

        @pytest.mark.llmperf(model="synthetic:llama-tiny", trials=2)
        def test_cli(llm):
            assert len(llm.generate(batch_size=1, trials=3).trials) == 1
    """)
    pytester.runpytest("--llmperf", f"--llmperf-model-cache={model_cache}", "-p", "no:cacheprovider",
                       "-W", "ignore::pytest.PytestAssertRewriteWarning",
                       "--llmperf-trials", "1").assert_outcomes(passed=1)


def test_a_marker_without_model_runs_every_configured_model(pytester, run_llmperf):
    pytester.makepyfile("""
        import pytest

        pytestmark = pytest.mark.llmperf

        def test_each(llm):
            llm.sweep()
    """)
    result = run_llmperf("--llmperf-models", "synthetic:gpt2-tiny synthetic:bloom-tiny", "-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*test_each?gpt2-tiny-hf? PASSED*", "*test_each?bloom-tiny-hf? PASSED*"])


def test_a_model_too_large_for_the_machine_is_skipped_with_the_plan(pytester, run_llmperf):
    pytester.makepyfile("""
        import pytest

        @pytest.mark.llmperf(model="synthetic:bloom-176b", dtype="bfloat16")
        def test_big(llm):
            raise AssertionError("must not run")
    """)
    result = run_llmperf("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*SKIPPED*bloom-176b*GB*llmperf plan*"])


def test_a_hub_model_missing_from_the_cache_fails_clearly_without_download(pytester, run_llmperf, monkeypatch,
                                                                          tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    pytester.makepyfile("""
        import pytest

        @pytest.mark.llmperf(model="hub:bigscience/bloom-560m")
        def test_hub(llm):
            pass
    """)
    result = run_llmperf()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*bigscience/bloom-560m*not*cache*"])


def test_pytest_xdist_workers_write_one_run(pytester, run_llmperf):
    pytester.makepyfile("""
        import pytest

        @pytest.mark.llmperf(model=["synthetic:llama-tiny", "synthetic:gpt2-tiny"])
        def test_pair(llm):
            llm.generate(batch_size=1)
    """)
    result = run_llmperf("-n", "2", subprocess=True)
    result.assert_outcomes(passed=2)
    db = pytester.path / ".llmperf" / "history.db"
    runs = _db_rows(db, "select id, status from runs")
    assert len(runs) == 1 and runs[0][1] == "complete"
    assert _db_rows(db, "select count(distinct test_id), count(distinct run_id) from tests") == [(2, 1)]
    result.stdout.fnmatch_lines(["*llmperf summary*", "*test_pair?gpt2-tiny-hf?", "*test_pair?llama-tiny-hf?"])


def test_an_interrupted_run_keeps_finished_tests_and_is_marked_interrupted(pytester, run_llmperf):
    pytester.makepyfile("""
        import pytest

        @pytest.mark.llmperf(model="synthetic:llama-tiny")
        def test_1_finishes(llm):
            llm.generate(batch_size=1)

        @pytest.mark.llmperf(model="synthetic:llama-tiny")
        def test_2_interrupted(llm):
            llm.generate(batch_size=1)
            raise KeyboardInterrupt
    """)
    result = run_llmperf(subprocess=True)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    db = pytester.path / ".llmperf" / "history.db"
    assert _db_rows(db, "select status from runs") == [("interrupted",)]
    assert [t for (t,) in _db_rows(db, "select test_id from tests")] == [
        "test_an_interrupted_run_keeps_finished_tests_and_is_marked_interrupted.py::test_1_finishes[llama-tiny-hf]"]
    with HistoryStore.open(db) as store:
        assert {r.test_id for r in store.recent_results(last=100)} == {
            "test_an_interrupted_run_keeps_finished_tests_and_is_marked_interrupted.py::test_1_finishes[llama-tiny-hf]"}


def test_progress_shows_on_request_and_stays_out_of_logs_otherwise(pytester, run_llmperf):
    pytester.makepyfile(PASSING)
    shown = run_llmperf("--llmperf-progress", "on", subprocess=True)
    shown.assert_outcomes(passed=1)
    assert "loading synthetic:llama-tiny (hf, float32, cpu#" in shown.stderr.str()
    assert "synthetic:llama-tiny: batch 1: trials" in shown.stderr.str()
    quiet = run_llmperf(subprocess=True)  # auto: the output is not a terminal
    quiet.assert_outcomes(passed=1)
    assert "loading synthetic:llama-tiny" not in quiet.stderr.str() + quiet.stdout.str()


def test_a_history_that_cannot_be_written_fails_the_test_that_could_not_be_recorded(pytester, run_llmperf):
    pytester.makepyfile(PASSING)
    pytester.makeconftest("""
        import pytest

        @pytest.hookimpl(trylast=True)
        def pytest_configure(config):
            from pytest_llmperf.plugin import SESSION
            from pytest_llmperf.history.errors import HistoryError

            def refuse(*args, **kwargs):
                raise HistoryError("history.db: database or disk is full")

            config.stash[SESSION].store.record_test = refuse
    """)
    result = run_llmperf()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines([
        "*ERROR at teardown of test_generous*",
        "*llmperf: this test's results could not be written to the history: history.db: database or disk is full*",
    ])
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_a_local_checkpoint_directory_is_a_model(pytester, run_llmperf, synthetic_cache):
    from pytest_llmperf.models.spec import parse_model_spec
    from pytest_llmperf.models.synthetic import ensure_synthetic

    checkpoint = ensure_synthetic(parse_model_spec("synthetic:gpt2-tiny"), "float32", synthetic_cache)
    pytester.makepyfile(f"""
        import pytest

        @pytest.mark.llmperf(model={str(checkpoint)!r})
        def test_local(llm):
            assert llm.generate(batch_size=2).outcome == "ok"
    """)
    result = run_llmperf()
    result.assert_outcomes(passed=1)
    db = pytester.path / ".llmperf" / "history.db"
    assert _db_rows(db, "select distinct model_id from results") == [(f"local:{checkpoint.name}",)]
