"""DeepSpeed's CPU all-reduce op: built once per environment, and never left waiting on a dead process's baton."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from filelock import Timeout

from pytest_llmperf.backends.deepspeed_ops import build_lock, extensions_dir, load_cpu_comm_op, remove_stale_batons


def test_the_folder_is_one_per_python_environment_and_outside_any_user_setting(monkeypatch, tmp_path):
    here = extensions_dir()
    assert here == extensions_dir()
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert extensions_dir() == here  # a folder shared with other programs would expose their batons to removal
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "another-venv"))
    assert extensions_dir() != here and extensions_dir().parent == here.parent


def test_only_batons_are_removed(tmp_path):
    (tmp_path / "op_a").mkdir()
    (tmp_path / "op_a" / "lock").touch()
    (tmp_path / "op_a" / "op_a.so").touch()
    (tmp_path / "op_b").mkdir()
    (tmp_path / "op_b" / "build.ninja").touch()
    assert remove_stale_batons(tmp_path) == [tmp_path / "op_a" / "lock"]
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["build.ninja", "op_a.so"]


def test_the_build_lock_excludes_other_processes_and_dies_with_its_holder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from pytest_llmperf.backends.deepspeed_ops import build_lock
        with build_lock(Path({str(tmp_path)!r})):
            (Path({str(tmp_path)!r}) / "op" ).mkdir()
            (Path({str(tmp_path)!r}) / "op" / "lock").touch()  # as torch does when its build begins
            print("held", flush=True)
            time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(Timeout), build_lock(tmp_path, timeout_s=0.5):
            pass
        os.kill(holder.pid, signal.SIGKILL)  # killed mid-build: its baton stays
        holder.wait(10)
        assert (tmp_path / "op" / "lock").exists()
        started = time.monotonic()
        with build_lock(tmp_path, timeout_s=10) as removed:
            assert removed == [tmp_path / "op" / "lock"]
        assert time.monotonic() - started < 5
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_baton_does_not_hang_the_next_process_that_loads_the_op():
    """The failure this module exists for: torch would wait on this file forever."""
    load_cpu_comm_op()  # built (30-70 s the first time on a machine), so that only the baton is in question
    baton = extensions_dir() / "deepspeed_shm_comm" / "lock"
    baton.touch()
    loader = subprocess.run(
        [sys.executable, "-c", "from pytest_llmperf.backends.deepspeed_ops import load_cpu_comm_op; "
                               "load_cpu_comm_op(); print('loaded')"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert loader.returncode == 0, loader.stderr[-2000:]
    assert "loaded" in loader.stdout
    assert not baton.exists()
