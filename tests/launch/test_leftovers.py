"""Which leftovers of rank groups a session removes: only those of dead owners, never what a live process uses."""

from __future__ import annotations

import json
import mmap
import os
import secrets
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from pytest_llmperf.launch.leftovers import (
    CITED_FILE,
    OWNER_FILE,
    Owner,
    ProcessId,
    keep_cited_logs,
    new_scratch_dir,
    record_group,
    remove_dead_groups_leftovers,
    remove_scratch_dir,
)
from pytest_llmperf.launch.shm_buffers import SHM_DIR, buffer_prefix

#: this process, as if started at another time: a pid now used by another process than the one recorded
DEAD = ProcessId(os.getpid(), 1.0)


@pytest.fixture
def temp_dir(tmp_path, monkeypatch):
    """The temporary folder of the scratch folders made here (TMPDIR), private to the test."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr("tempfile.tempdir", None)  # read TMPDIR again
    return folder


@pytest.fixture
def shm_prefix():
    """A group's /dev/shm buffer prefix of its own; its buffers are removed after the test."""
    prefix = buffer_prefix("llmperf-test", secrets.token_hex(6))
    yield prefix
    for path in SHM_DIR.glob(prefix + "*"):
        path.unlink()


def _group(owner: Owner | None, temp_dir: Path, shm_prefix: str, ranks: int = 2) -> tuple[Path, list[Path]]:
    """A scratch folder with a group's log folder and its /dev/shm buffers, as a group that ran leaves them."""
    folder = new_scratch_dir()
    assert folder.parent == temp_dir
    if owner is not None:
        (folder / OWNER_FILE).write_text(json.dumps(asdict(owner)))
    logs = folder / "logs"
    logs.mkdir()
    (logs / "rank-0.log").write_text("the rank's output\n")
    record_group(logs, [shm_prefix])
    buffers = [SHM_DIR / f"{shm_prefix}{rank}" for rank in range(ranks)]
    for path in buffers:
        path.write_bytes(b"\0" * 4096)
    return folder, buffers


def test_a_scratch_folder_is_marked_with_this_process_and_its_session(temp_dir):
    owner = Owner.read(new_scratch_dir())
    assert owner is not None and owner.process.pid == os.getpid() and owner.session.pid == os.getpid()
    assert owner.process.alive() and owner.session.alive()
    assert not DEAD.alive() and not ProcessId(2**22 + 1, 0.0).alive()


def test_a_dead_owners_buffers_and_folder_are_removed(temp_dir, shm_prefix):
    owner = Owner.current()
    folder, buffers = _group(replace(owner, process=DEAD, session=DEAD), temp_dir, shm_prefix)
    removed = remove_dead_groups_leftovers()
    assert not folder.exists() and not any(p.exists() for p in buffers)
    assert set(removed) == {folder, *buffers}


def test_a_live_owners_buffers_and_folder_are_kept(temp_dir, shm_prefix):
    folder, buffers = _group(None, temp_dir, shm_prefix)  # made by this process, which is alive
    assert remove_dead_groups_leftovers() == []
    assert (folder / "logs" / "rank-0.log").exists() and all(p.exists() for p in buffers)


def test_a_buffer_a_live_process_maps_is_kept_though_its_recorded_owner_is_dead(temp_dir, shm_prefix):
    """A group that met at a port a dead group used has buffers of the same names: they are the live group's."""
    owner = Owner.current()
    folder, buffers = _group(replace(owner, process=DEAD, session=DEAD), temp_dir, shm_prefix)
    with buffers[1].open("r+b") as f, mmap.mmap(f.fileno(), 4096):
        remove_dead_groups_leftovers()
        assert buffers[1].exists(), "a buffer a live process maps was removed"
    assert not buffers[0].exists() and not folder.exists()


def test_the_folder_of_a_dead_worker_stays_while_its_session_lives(temp_dir, shm_prefix):
    """An xdist worker's failure is reported by its controller at the end: the logs it cites stay until then."""
    owner = Owner.current()
    folder, buffers = _group(replace(owner, process=DEAD), temp_dir, shm_prefix)
    remove_dead_groups_leftovers()
    assert not any(p.exists() for p in buffers), "the dead worker's group buffers are its own: removed"
    assert (folder / "logs" / "rank-0.log").exists()


def test_what_cannot_be_attributed_is_left_alone(temp_dir, shm_prefix):
    foreign = temp_dir / "llmperf-merge-abc"  # another tool's folder, or an older version's: no owner marker
    foreign.mkdir()
    elsewhere = Owner("another-host", DEAD, DEAD)  # a temporary folder shared with another machine
    folder, buffers = _group(elsewhere, temp_dir, shm_prefix)
    garbled = new_scratch_dir()
    (garbled / OWNER_FILE).write_text("{not json")
    assert remove_dead_groups_leftovers() == []
    assert foreign.exists() and folder.exists() and garbled.exists() and all(p.exists() for p in buffers)


def test_a_test_removes_its_scratch_folder_but_logs_a_failure_cites(temp_dir):
    plain = new_scratch_dir()
    (plain / "logs").mkdir()
    remove_scratch_dir(plain)
    assert not plain.exists()

    failed = new_scratch_dir()
    (failed / "logs").mkdir()
    (failed / "logs" / "rank-1.log").write_text("last words\n")
    (failed / "offload").mkdir()
    keep_cited_logs(failed / "logs")
    remove_scratch_dir(failed)
    assert {p.name for p in failed.iterdir()} == {"logs", OWNER_FILE}
    assert (failed / "logs" / "rank-1.log").read_text() == "last words\n"
    assert (failed / "logs" / CITED_FILE).exists()
