"""The device pool: discovery (pure logic, NVML and torch faked) and leases across threads and processes."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from pytest_llmperf import devices as devices_module
from pytest_llmperf.measure import nvml
from pytest_llmperf.pool import DevicePool, Lease, LeaseTimeout, PoolDevice, PoolTooSmall, discover

REPO = Path(__file__).resolve().parents[2]

# A second process that leases devices, prints their slots, and holds them until its stdin closes.
HOLDER = """
import sys
from pytest_llmperf.pool import DevicePool, discover
pool = DevicePool(discover("cpu", int(sys.argv[2])), sys.argv[1])
lease = pool.lease(int(sys.argv[3]), timeout_s=5, owner="holder::test_x")
print(",".join(d.slot for d in lease.devices), flush=True)
sys.stdin.read()
"""


def cpu_pool(tmp_path, slots=2):
    return DevicePool(discover("cpu", slots), tmp_path / "locks")


@pytest.fixture
def holder(tmp_path):
    """Start a process holding `count` of the `slots` CPU slots in tmp_path/locks; returns (process, its slots)."""
    procs = []

    def start(slots, count):
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(tmp_path / "locks"), str(slots), str(count)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
        )
        procs.append(proc)
        line = proc.stdout.readline().strip()
        assert line, f"holder process failed (rc {proc.poll()})"
        return proc, line.split(",")

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


# --- discovery ---------------------------------------------------------------------------------------------------


def test_cpu_slots_are_discovered():
    assert discover("cpu", 3) == (
        PoolDevice("cpu", "cpu0", None, "cpu#0"),
        PoolDevice("cpu", "cpu1", None, "cpu#1"),
        PoolDevice("cpu", "cpu2", None, "cpu#2"),
    )


def test_unknown_kind_is_rejected():
    with pytest.raises(ValueError, match="unknown device kind 'tpu'"):
        discover("tpu", 1)


def fake_nvml(uuids):
    """Just enough of pynvml for nvml.visible_devices: handles are the physical indices."""
    return SimpleNamespace(
        nvmlDeviceGetCount=lambda: len(uuids),
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetUUID=lambda h: uuids[h],
        nvmlDeviceGetName=lambda h: "Fake GPU",
        nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(total=2**30),
        nvmlDeviceGetMaxClockInfo=lambda h, clock: 1000,
        nvmlDeviceGetMemoryBusWidth=lambda h: 64,
        NVML_CLOCK_MEM=2,
    )


@pytest.fixture
def no_torch_cuda(monkeypatch):
    monkeypatch.setattr(devices_module, "cuda_device_count", lambda: pytest.fail("torch must not be asked"))


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, ["GPU-aaa", "GPU-bbb", "GPU-ccc"]),
        ("2,0", ["GPU-ccc", "GPU-aaa"]),
        ("GPU-bb,1", ["GPU-bbb", "GPU-bbb"]),  # a UUID prefix, as the CUDA runtime accepts it
        ("1,,2", ["GPU-bbb"]),  # the runtime stops at the first empty entry
    ],
)
def test_cuda_devices_from_nvml_are_named_by_position_and_identified_by_uuid(monkeypatch, no_torch_cuda, spec,
                                                                             expected):
    monkeypatch.setattr(nvml, "_nvml", lambda: fake_nvml(["GPU-aaa", "GPU-bbb", "GPU-ccc"]))
    if spec is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", spec)
    found = discover("cuda", 8)
    assert [d.name for d in found] == [f"cuda:{i}" for i in range(len(expected))]
    assert [d.label for d in found] == [d.name for d in found]
    assert [d.slot for d in found] == expected
    assert [d.visible_id for d in found] == expected


@pytest.mark.parametrize(
    ("spec", "count", "expected"),
    [
        (None, 2, ["0", "1"]),
        ("3,1", 2, ["3", "1"]),
        ("GPU-aaa,GPU-bbb", 2, ["GPU-aaa", "GPU-bbb"]),
        ("3,1,7", 2, ["3", "1"]),  # torch saw 2: the entry that did not resolve is not a device
        (" 2 , 5 ", 2, ["2", "5"]),
        ("", 0, []),
    ],
)
def test_cuda_devices_without_nvml_fall_back_to_torch_and_the_variable(monkeypatch, spec, count, expected):
    monkeypatch.setattr(nvml, "_nvml", lambda: None)
    monkeypatch.setattr(devices_module, "cuda_device_count", lambda: count)
    if spec is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", spec)
    found = discover("cuda", 8)
    assert [(d.name, d.slot, d.visible_id) for d in found] == [
        (f"cuda:{i}", slot, slot) for i, slot in enumerate(expected)
    ]


def test_cuda_lease_gives_the_child_its_visible_devices(tmp_path):
    gpus = [PoolDevice(f"cuda:{i}", f"GPU-{i}", f"GPU-{i}", f"cuda:{i}") for i in range(3)]
    pool = DevicePool(gpus, tmp_path)
    with pool.lease(2, timeout_s=0, owner="t") as lease:
        assert lease.cuda_visible_devices() == "GPU-0,GPU-1"
    with cpu_pool(tmp_path).lease(1, timeout_s=0, owner="t") as lease:
        assert lease.cuda_visible_devices() is None


# --- leases in one process ---------------------------------------------------------------------------------------


def test_a_lease_larger_than_the_pool_fails_at_once(tmp_path):
    start = time.monotonic()
    with pytest.raises(PoolTooSmall) as info:
        cpu_pool(tmp_path).lease(4, timeout_s=60, owner="t")
    assert time.monotonic() - start < 1
    assert str(info.value) == "world size 4 needs 4 devices, the pool has 2 (cpu slots: --llmperf-cpu-slots)"
    gpus = [PoolDevice("cuda:0", "GPU-0", "GPU-0", "cuda:0")]
    with pytest.raises(PoolTooSmall, match=r"the pool has 1 \(visible CUDA devices: CUDA_VISIBLE_DEVICES\)"):
        DevicePool(gpus, tmp_path).lease(2, timeout_s=60, owner="t")


def test_a_lease_needs_a_device(tmp_path):
    with pytest.raises(ValueError, match="at least one device"):
        cpu_pool(tmp_path).lease(0, timeout_s=0, owner="t")


def test_leases_take_the_lowest_free_devices(tmp_path):
    pool = cpu_pool(tmp_path, slots=4)
    first = pool.lease(1, timeout_s=0, owner="a")
    second = pool.lease(2, timeout_s=0, owner="b")
    assert [d.slot for d in first.devices] == ["cpu0"]
    assert [d.slot for d in second.devices] == ["cpu1", "cpu2"]
    first.release()
    third = pool.lease(2, timeout_s=0, owner="c")
    assert [d.slot for d in third.devices] == ["cpu0", "cpu3"]
    second.release()
    third.release()


def test_two_leases_in_one_process_exclude_each_other(tmp_path):
    pool = cpu_pool(tmp_path, slots=1)
    held = pool.lease(1, timeout_s=0, owner="first::test")
    # the same pool object, and a second one on the same directory: neither may re-enter the held lock
    for other in (pool, cpu_pool(tmp_path, slots=1)):
        with pytest.raises(LeaseTimeout, match=r"cpu#0 \[cpu0\] held by first::test \(pid \d+\)"):
            other.lease(1, timeout_s=0.1, owner="second::test")
    held.release()
    pool.lease(1, timeout_s=0, owner="second::test").release()


def test_release_is_idempotent_and_the_context_manager_releases(tmp_path):
    pool = cpu_pool(tmp_path, slots=1)
    lease = pool.lease(1, timeout_s=0, owner="t")
    assert not lease.released and "held" in repr(lease)
    lease.release()
    lease.release()
    assert lease.released and "released" in repr(lease)
    with pool.lease(1, timeout_s=0, owner="t") as again:
        assert isinstance(again, Lease)
    pool.lease(1, timeout_s=0, owner="t").release()


def test_owner_file_is_written_overwritten_when_stale_and_removed_on_release(tmp_path):
    pool = cpu_pool(tmp_path, slots=1)
    owner_file = tmp_path / "locks" / "cpu0.owner"
    owner_file.parent.mkdir()
    owner_file.write_text("a crashed run (pid 1)\n")
    with pool.lease(1, timeout_s=0, owner="tests/x.py::t[1]"):
        assert owner_file.read_text() == f"tests/x.py::t[1] (pid {os.getpid()})\n"
    assert not owner_file.exists()


def test_a_waiting_lease_gets_devices_released_meanwhile_even_by_another_thread(tmp_path):
    pool = cpu_pool(tmp_path, slots=2)
    held = pool.lease(1, timeout_s=0, owner="a")
    timer = threading.Timer(0.2, held.release)
    timer.start()
    start = time.monotonic()
    with pool.lease(2, timeout_s=3, owner="b") as lease:
        assert 0.15 < time.monotonic() - start < 1.5
        assert [d.slot for d in lease.devices] == ["cpu0", "cpu1"]
    timer.join()


# --- leases across processes -------------------------------------------------------------------------------------


def test_a_lease_waits_for_a_device_held_by_another_process_and_names_it(tmp_path, holder):
    proc, slots = holder(2, 1)
    assert slots == ["cpu0"]
    start = time.monotonic()
    with pytest.raises(LeaseTimeout) as info:
        cpu_pool(tmp_path).lease(2, timeout_s=0.3, owner="waiter")
    assert 0.25 < time.monotonic() - start < 2
    message = str(info.value)
    assert "2 free devices, the pool has 2 (cpu#0, cpu#1)" in message
    assert f"busy: cpu#0 [cpu0] held by holder::test_x (pid {proc.pid})" in message
    assert "cpu#1 [" not in message
    assert "--llmperf-lease-timeout" in message and "fewer parallel workers" in message
    # all-or-nothing: the free device was not kept by the failed attempt
    with cpu_pool(tmp_path).lease(1, timeout_s=0, owner="t") as lease:
        assert [d.slot for d in lease.devices] == ["cpu1"]


def test_devices_of_a_killed_process_are_free_at_once(tmp_path, holder):
    proc, slots = holder(2, 2)
    assert slots == ["cpu0", "cpu1"]
    with pytest.raises(LeaseTimeout):
        cpu_pool(tmp_path).lease(1, timeout_s=0, owner="t")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=5)
    # the owner files stay behind; the next holder overwrites them
    assert (tmp_path / "locks" / "cpu0.owner").exists()
    with cpu_pool(tmp_path).lease(2, timeout_s=0, owner="next") as lease:
        assert [d.slot for d in lease.devices] == ["cpu0", "cpu1"]
        assert (tmp_path / "locks" / "cpu0.owner").read_text().startswith("next (pid")
