"""The ``llm_server`` fixture end to end: real servers started, measured under load, recorded, and stopped."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from pytest_llmperf.history.store import HistoryStore
from tests.history_rows import rows

pytest.importorskip("xllamacpp", reason="llama.cpp's server comes with xllamacpp: "
                                 "pip install 'pytest-llmperf[llama-cpp]'")

SERVING_TEST = """
import os
import pytest

@pytest.mark.llmperf(model="synthetic:llama-tiny", backend="llama-cpp", budgets={BUDGETS})
def test_serve(llm_server):
    with open(os.environ["SERVER_PIDS"], "a") as f:
        f.write(f"{{llm_server.server.pid}}\\n")
    first = llm_server.serve(request_rate=20, requests=12, workload="p16o4")
    assert first.summary.completed == 12 and first.client.sent == 12
    llm_server.serve(concurrency=3, requests=6, workload="p16o4")
"""


def _pids_gone(path: Path) -> list[int]:
    pids = [int(p) for p in path.read_text().split()]
    assert pids, "the inner test did not start a server"
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
            alive.append(pid)
        except ProcessLookupError:
            pass
    return alive


def test_a_serving_test_starts_a_real_server_measures_it_records_it_and_stops_it(pytester, run_llmperf,
                                                                                monkeypatch) -> None:
    pids = pytester.path / "pids.txt"
    monkeypatch.setenv("SERVER_PIDS", str(pids))
    pytester.makepyfile(test_serving=SERVING_TEST.format(BUDGETS='{"p99_ttft_ms": 60000, "error_rate": 0}'))
    result = run_llmperf("--llmperf-slo=ttft_ms=60000 tpot_ms=60000", "--llmperf-db=history.db", subprocess=True)
    result.assert_outcomes(passed=1)
    assert _pids_gone(pids) == [], "the server outlived its test"
    out = result.stdout.str()
    assert "request_rate=20 p16o4" in out and "concurrency=3 p16o4" in out and "12/12" in out
    with HistoryStore.open(pytester.path / "history.db") as store:
        points = rows(store, "SELECT request_rate, concurrency, workload, serving FROM measurements "
                             "WHERE kind = 'generate' ORDER BY id")
        phases = rows(store, "SELECT phases FROM measurements WHERE kind = 'load'")
        goodput = rows(store, "SELECT value FROM results WHERE metric = 'goodput' ORDER BY id")
        budgets = rows(store, "SELECT metric, point, outcome FROM budget_checks ORDER BY id")
    assert [(p["request_rate"], p["concurrency"], p["workload"]) for p in points] == [(20.0, None, "p16o4"),
                                                                                      (None, 3, "p16o4")]
    assert json.loads(points[0]["serving"])["sent"] == 12
    assert [name for name, _ in json.loads(phases[0]["phases"])][-3:] == ["process start", "weights", "ready"]
    assert len(goodput) == 2 and all(g["value"] > 0 for g in goodput)  # every request met the generous SLO
    assert ("p99_ttft_ms", "request_rate=20 p16o4", "pass") in [(b["metric"], b["point"], b["outcome"])
                                                               for b in budgets]
    logs = list((pytester.path / "server-logs").glob("*.log"))
    assert len(logs) == 1 and "llama.cpp server: serving" in logs[0].read_text()


def test_a_missed_percentile_budget_fails_the_test_and_names_the_load_point(pytester, run_llmperf, monkeypatch) -> None:
    monkeypatch.setenv("SERVER_PIDS", str(pytester.path / "pids.txt"))
    pytester.makepyfile(test_serving=SERVING_TEST.format(BUDGETS='{"p99_ttft_ms": 0.001}'))
    result = run_llmperf("--llmperf-db=history.db", subprocess=True)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*llmperf budget missed*",
                                 "*p99_ttft_ms = * ms, budget <= 0.001 ms*load point request_rate=20 p16o4*"])


KILLED = """
import os, signal
import pytest

@pytest.mark.llmperf(model="synthetic:llama-tiny", backend="llama-cpp")
def test_killed(llm_server):
    os.killpg(llm_server.server.pid, signal.SIGKILL)
    llm_server.serve(request_rate=10, requests=4, workload="p8o2")

@pytest.mark.llmperf(model="synthetic:llama-tiny", backend="llama-cpp")
def test_after(llm_server):
    assert llm_server.serve(request_rate=10, requests=4, workload="p8o2").summary.completed == 4
"""


def test_a_killed_server_fails_only_its_test_with_its_log(pytester, run_llmperf) -> None:
    pytester.makepyfile(test_killed=KILLED)
    result = run_llmperf("--llmperf-db=history.db", subprocess=True)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_killed*", "*llama.cpp's server (pid *) exited with status -9; its last output "
                                 "lines*", "*llama.cpp server: serving*"])
    assert "test_after" not in "".join(line for line in result.stdout.lines if line.startswith("FAILED"))


def test_a_backend_without_a_server_is_skipped_with_the_reason(pytester, run_llmperf) -> None:
    pytester.makepyfile(test_hf="""
import pytest

@pytest.mark.llmperf(model="synthetic:llama-tiny", backend=["hf", "external"])
def test_serve(llm_server):
    llm_server.serve(request_rate=1, requests=1)
""")
    result = run_llmperf("-rs", subprocess=True)
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(["*backend hf has no server to start*",
                                 "*backend external measures a server someone else runs*--llmperf-server-url*"])


def test_an_external_endpoint_is_measured_and_recorded_as_external(pytester, run_llmperf, model_cache) -> None:
    from pytest_llmperf.launch.distributed import free_port
    from pytest_llmperf.models.gguf_writer import ensure_gguf
    from pytest_llmperf.models.spec import parse_model_spec
    from pytest_llmperf.models.synthetic import ensure_synthetic
    from pytest_llmperf.serving.presets import llama_cpp_server
    from pytest_llmperf.serving.server_process import ServerProcess

    checkpoint = ensure_synthetic(parse_model_spec("synthetic:llama-tiny"), "float32", Path(model_cache))
    gguf, _ = ensure_gguf(checkpoint, "f32", pytester.path / "gguf")
    server = ServerProcess.start(llama_cpp_server(gguf, port=free_port(), threads=1), pytester.path / "ext.log",
                                 timeout_s=120)
    try:
        pytester.makepyfile(test_ext="""
import pytest

@pytest.mark.llmperf(model="synthetic:llama-tiny", backend="external")
def test_serve(llm_server):
    assert llm_server.server is None and llm_server.load is None
    assert llm_server.serve(request_rate=10, requests=4, workload="p8o2").summary.completed == 4
""")
        result = run_llmperf(f"--llmperf-server-url={server.url}", "--llmperf-db=history.db", subprocess=True)
        result.assert_outcomes(passed=1)
    finally:
        server.stop()
    with HistoryStore.open(pytester.path / "history.db") as store:
        backends = {r["backend"] for r in rows(store, "SELECT DISTINCT backend FROM results")}
    assert backends == {"external"}


def test_a_killed_session_takes_its_server_along_and_the_next_session_removes_its_files(pytester, run_llmperf,
                                                                                        monkeypatch) -> None:
    pids = pytester.path / "pids.txt"
    monkeypatch.setenv("SERVER_PIDS", str(pids))
    pytester.makepyfile(test_hang="""
import os, signal
from pathlib import Path
import pytest

@pytest.mark.llmperf(model="synthetic:llama-tiny", backend="llama-cpp")
def test_serve(llm_server):
    environ = Path(f"/proc/{llm_server.server.pid}/environ").read_text().split("\\0")
    tmp = next(item.split("=", 1)[1] for item in environ if item.startswith("TMPDIR="))
    with open(os.environ["SERVER_PIDS"], "a") as f:
        f.write(f"{llm_server.server.pid}\\n")
    Path(os.environ["SERVER_PIDS"] + ".tmp").write_text(tmp)
    os.kill(os.getpid(), signal.SIGKILL)  # the session dies without a teardown
""")
    run_llmperf(subprocess=True)
    deadline = time.monotonic() + 10
    while _pids_gone(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _pids_gone(pids) == [], "the server outlived the pytest process that started it"
    scratch = Path((pytester.path / "pids.txt.tmp").read_text()).parent
    assert scratch.is_dir()  # the killed session could not remove the server's scratch folder
    pytester.makepyfile(test_hang="def test_nothing():\n    pass\n")
    run_llmperf(subprocess=True).assert_outcomes(passed=1)
    assert not scratch.exists(), "the next session left the dead session's server files behind"


MAX_RATE = """
import pytest

@pytest.mark.llmperf(model="synthetic:llama-tiny", backend="llama-cpp")
def test_serve(llm_server):
    llm_server.serve(request_rate=10, requests=4, workload="p8o2")
"""


@pytest.mark.parametrize(("slo", "found"), [("ttft_ms=600000 tpot_ms=600000", 40.0), ("ttft_ms=0.001", None)])
def test_the_max_rate_search_records_the_largest_rate_that_meets_the_slo(pytester, run_llmperf, slo: str,
                                                                         found: float | None) -> None:
    pytester.makepyfile(test_rate=MAX_RATE)
    result = run_llmperf("--llmperf-max-rate=40", f"--llmperf-slo={slo}", "--llmperf-db=history.db", subprocess=True)
    result.assert_outcomes(passed=1)
    with HistoryStore.open(pytester.path / "history.db") as store:
        values = [r["value"] for r in rows(store, "SELECT value FROM results WHERE metric = 'max_rate_rps'")]
    assert values == ([] if found is None else [found])
    if found is not None:
        assert "max rate 40 req/s" in result.stdout.str()


def test_a_real_vllm_server_is_started_measured_and_stopped(pytester, run_llmperf) -> None:
    from pytest_llmperf.backends.base import BackendUnavailable
    from pytest_llmperf.backends.vllm_python import find_vllm_python

    try:
        find_vllm_python()
    except BackendUnavailable as e:
        pytest.skip(str(e))
    pids = pytester.path / "pids.txt"
    pytester.makepyfile(test_vllm=f"""
import pytest

@pytest.mark.llmperf(model="synthetic:llama-tiny-hd32", backend="vllm", variant="eager", world_size=1)
def test_serve(llm_server):
    with open({str(pids)!r}, "a") as f:
        f.write(f"{{llm_server.server.pid}}\\n")
    result = llm_server.serve(request_rate=8, requests=8, workload="p16o4")
    assert result.summary.completed == 8 and result.summary.output_throughput > 0
""")
    result = run_llmperf("--llmperf-db=history.db", subprocess=True)
    result.assert_outcomes(passed=1)
    assert _pids_gone(pids) == []
    with HistoryStore.open(pytester.path / "history.db") as store:
        phases = json.loads(rows(store, "SELECT phases FROM measurements WHERE kind = 'load'")[0]["phases"])
    assert [name for name, _ in phases] == ["process start", "weights", "ready"]
