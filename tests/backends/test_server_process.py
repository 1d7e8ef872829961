"""A server as a real subprocess: ready when it answers, watched while it runs, gone when stopped."""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pytest_llmperf.launch.distributed import free_port
from pytest_llmperf.models.spec import parse_model_spec
from pytest_llmperf.models.synthetic import ensure_synthetic
from pytest_llmperf.serving.arrivals import OpenLoop
from pytest_llmperf.serving.load_generator import Completion, run_load
from pytest_llmperf.serving.server_process import ServerCommand, ServerFailed, ServerProcess


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _python(code: str, *, ready_path: str = "/health") -> ServerCommand:
    return ServerCommand(argv=(sys.executable, "-c", code), port=free_port(), ready_path=ready_path,
                         name="a test server")


def test_llama_cpp_s_server_starts_serves_a_load_and_stops(synthetic_cache, tmp_path) -> None:
    pytest.importorskip("xllamacpp", reason="llama.cpp's server comes with xllamacpp: "
                                             "pip install 'pytest-llmperf[llama-cpp]'")
    from pytest_llmperf.models.gguf_writer import ensure_gguf
    from pytest_llmperf.serving.presets import llama_cpp_server

    checkpoint = ensure_synthetic(parse_model_spec("synthetic:llama-tiny"), "float32", synthetic_cache)
    gguf, _ = ensure_gguf(checkpoint, "f32", tmp_path / "gguf")
    port = free_port()
    command = llama_cpp_server(gguf, port=port, threads=1, float32_kv_cache=True)
    server = ServerProcess.start(command, tmp_path / "server.log", timeout_s=120)
    try:
        # each phase ends at its line in the server's log, the last when it answers
        assert [name for name, _ in server.phases] == ["process start", "weights", "ready"] and server.load_s > 0
        assert server.peak_rss_bytes() > 10 * 2**20  # Python, llama.cpp and the model, in the server's process
        # its temporary files go to a folder of its own (vLLM puts its IPC sockets there), removed when it stops
        environ = dict(item.split("=", 1) for item in
                       Path(f"/proc/{server.pid}/environ").read_text().split("\0") if "=" in item)
        server_tmp = Path(environ["TMPDIR"])
        assert server_tmp.is_dir() and server_tmp != Path(tempfile.gettempdir())
        completions = [Completion(prompt_ids=tuple(range(20, 36)), output_tokens=6)] * 4
        run = run_load(server.url, "tiny", completions, OpenLoop(rate_rps=20.0, requests=4))
        assert all(r.error is None and r.output_tokens == 6 for r in run.records)
        server.check()
    finally:
        server.stop()
    assert _gone(server.pid) and not server_tmp.parent.exists()
    assert "llama.cpp server: serving" in (tmp_path / "server.log").read_text()  # the log is kept


def test_a_killed_server_fails_with_its_log(tmp_path) -> None:
    port = free_port()
    command = ServerCommand(argv=(sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"), port=port,
                            ready_path="/", name="a test server")
    server = ServerProcess.start(command, tmp_path / "server.log", timeout_s=30)
    os.kill(server.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    with pytest.raises(ServerFailed, match=rf"a test server \(pid {server.pid}\) exited with status -9; its last "
                                           r"output lines \(.*server\.log\)"):
        while time.monotonic() < deadline:
            server.check()
            time.sleep(0.05)
    server.stop()
    assert _gone(server.pid)


def test_a_server_that_never_answers_times_out_with_its_log_and_is_stopped(tmp_path) -> None:
    pid_file = tmp_path / "pid"
    command = _python(f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); "
                      "print('still loading weights', flush=True); time.sleep(120)")
    with pytest.raises(ServerFailed, match=r"(?s)did not answer GET http://127\.0\.0\.1:\d+/health within 2 s.*"
                                           r"still loading weights"):
        ServerProcess.start(command, tmp_path / "server.log", timeout_s=2)
    assert _gone(int(pid_file.read_text()))  # stopped, not left behind


def test_a_server_that_exits_at_start_says_so(tmp_path) -> None:
    command = _python("import sys; print('unknown flag --frobnicate', flush=True); sys.exit(3)")
    with pytest.raises(ServerFailed, match=r"(?s)exited with status 3.*unknown flag --frobnicate"):
        ServerProcess.start(command, tmp_path / "server.log", timeout_s=30)


def test_the_server_dies_with_the_process_that_started_it(tmp_path) -> None:
    pid_file = tmp_path / "pid"
    port = free_port()
    starter = (
        "import sys, os, time\n"
        "from pathlib import Path\n"
        "from pytest_llmperf.serving.server_process import ServerCommand, ServerProcess\n"
        f"command = ServerCommand(argv=(sys.executable, '-m', 'http.server', '{port}', '--bind', '127.0.0.1'), "
        f"port={port}, ready_path='/')\n"
        f"server = ServerProcess.start(command, Path({str(tmp_path / 'server.log')!r}), timeout_s=30)\n"
        f"Path({str(pid_file)!r}).write_text(str(server.pid))\n"
        "time.sleep(120)\n"
    )
    import subprocess

    parent = subprocess.Popen([sys.executable, "-c", starter])
    deadline = time.monotonic() + 60
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    server_pid = int(pid_file.read_text())
    parent.kill()  # SIGKILL: the starter runs no clean-up of its own
    parent.wait()
    deadline = time.monotonic() + 10
    while not _gone(server_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(server_pid)


def test_vllm_s_openai_server_starts_serves_token_id_prompts_exactly_and_stops(synthetic_cache, tmp_path) -> None:
    from pytest_llmperf.backends.base import BackendUnavailable, LoadRequest
    from pytest_llmperf.backends.vllm_python import find_vllm_python
    from pytest_llmperf.serving.presets import vllm_server

    try:
        find_vllm_python()
    except BackendUnavailable as e:
        pytest.skip(str(e))
    checkpoint = ensure_synthetic(parse_model_spec("synthetic:llama-tiny-hd32"), "float32", synthetic_cache)
    request = LoadRequest(checkpoint, "float32", "cpu", threads=1)
    command = vllm_server(request, port=free_port(), cache_dir=tmp_path / "cache", eager=True)
    server = ServerProcess.start(command, tmp_path / "vllm.log", timeout_s=300)
    try:
        completions = [Completion(prompt_ids=tuple(range(30, 46)), output_tokens=12)] * 3
        run = run_load(server.url, "model", completions, OpenLoop(rate_rps=10.0, requests=3))
        assert all(r.error is None and r.output_tokens == 12 for r in run.records), [r.error for r in run.records]
        server.check()
    finally:
        server.stop()
    assert _gone(server.pid)
