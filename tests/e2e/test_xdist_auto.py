"""``pytest -n auto --llmperf`` starts one pytest-xdist worker per device of the pool."""


def test_n_auto_is_the_number_of_devices_in_the_pool(pytester, tmp_path):
    pytester.makepyfile("""
        import os

        def test_worker_count():
            print("workers:", os.environ["PYTEST_XDIST_WORKER_COUNT"])
            assert os.environ["PYTEST_XDIST_WORKER_COUNT"] == "3"
    """)
    result = pytester.runpytest_subprocess(
        "--llmperf", "--llmperf-device=cpu", "--llmperf-cpu-slots=3", f"--llmperf-db={tmp_path / 'h.db'}",
        "-n", "auto", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
