"""The machine conditions a run measures under: NVML's GPU state (faked), the CPU readers on a fake sysfs
tree, what a run start stores, and the warning about unlocked GPU clocks."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pynvml
import pytest

from pytest_llmperf import environment, session
from pytest_llmperf.environment import collect_environment
from pytest_llmperf.measure import nvml
from pytest_llmperf.measure.conditions import (
    Conditions,
    CpuConditions,
    all_clocks_locked,
    collect_conditions,
    collect_cpu_conditions,
    cpu_frequencies,
    scaling_governors,
    unlocked_clocks_warning,
)
from pytest_llmperf.measure.nvml import GpuState, clock_event_reason_names
from pytest_llmperf.session import RunSession
from pytest_llmperf.settings import Settings

H100 = "NVIDIA H100 80GB HBM3"
NOT_SUPPORTED = pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
NO_PERMISSION = pynvml.NVMLError(pynvml.NVML_ERROR_NO_PERMISSION)
GPU_IDLE, APP_CLOCKS, SW_POWER_CAP = 0x1, 0x2, 0x4


@dataclass
class FakeGpu:
    """What the fake NVML answers for one GPU; an exception instead of a value is raised."""

    uuid: str
    name: Any = H100
    sm_mhz: Any = 345  # an idle H100 drops to this
    mem_mhz: Any = 2619
    max_sm_mhz: Any = 1980
    max_mem_mhz: Any = 2619
    #: NVML_CLOCK_SM / NVML_CLOCK_MEM -> (application clock target, default)
    app_clocks: dict[int, tuple[Any, Any]] = field(default_factory=lambda: {
        pynvml.NVML_CLOCK_SM: (1980, 1980), pynvml.NVML_CLOCK_MEM: (2619, 2619)})
    reasons: Any = GPU_IDLE
    persistence: Any = pynvml.NVML_FEATURE_ENABLED
    temperature: Any = 31
    power_limit_mw: Any = 700_000


def _answer(value: Any) -> Any:
    if isinstance(value, BaseException):
        raise value
    return value


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch):
    """Install fake GPUs behind pynvml's functions: ``fake_nvml(FakeGpu(...), ...)``."""
    gpus: list[FakeGpu] = []
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    clock_ids = {pynvml.NVML_CLOCK_ID_APP_CLOCK_TARGET: 0, pynvml.NVML_CLOCK_ID_APP_CLOCK_DEFAULT: 1}
    fakes = {
        "nvmlInit": lambda: None,
        "nvmlSystemGetDriverVersion": lambda: "550.54.15",
        "nvmlDeviceGetCount": lambda: len(gpus),
        "nvmlDeviceGetHandleByIndex": lambda i: gpus[i],
        "nvmlDeviceGetUUID": lambda g: g.uuid,
        "nvmlDeviceGetName": lambda g: _answer(g.name),
        "nvmlDeviceGetMemoryInfo": lambda g: type("Memory", (), {"total": 80 * 2**30}),
        "nvmlDeviceGetMemoryBusWidth": lambda g: 5120,
        "nvmlDeviceGetClockInfo": lambda g, t: _answer(g.sm_mhz if t == pynvml.NVML_CLOCK_SM else g.mem_mhz),
        "nvmlDeviceGetMaxClockInfo":
            lambda g, t: _answer(g.max_sm_mhz if t == pynvml.NVML_CLOCK_SM else g.max_mem_mhz),
        "nvmlDeviceGetClock": lambda g, t, i: _answer(g.app_clocks[t][clock_ids[i]]),
        "nvmlDeviceGetCurrentClocksEventReasons": lambda g: _answer(g.reasons),
        "nvmlDeviceGetPersistenceMode": lambda g: _answer(g.persistence),
        "nvmlDeviceGetTemperature": lambda g, sensor: _answer(g.temperature),
        "nvmlDeviceGetEnforcedPowerLimit": lambda g: _answer(g.power_limit_mw),
    }
    for name, fake in fakes.items():
        monkeypatch.setattr(pynvml, name, fake)
    nvml._nvml.cache_clear()

    def install(*fake_gpus: FakeGpu) -> None:
        gpus[:] = fake_gpus

    yield install
    nvml._nvml.cache_clear()


# ---- NVML ----------------------------------------------------------------------------------------


def test_an_idle_gpu_with_default_clocks_is_read_whole_and_not_locked(fake_nvml) -> None:
    fake_nvml(FakeGpu("GPU-aaaa"))
    assert nvml.gpu_states() == [GpuState(
        index=0, uuid="GPU-aaaa", name=H100, sm_clock_mhz=345, memory_clock_mhz=2619, max_sm_clock_mhz=1980,
        max_memory_clock_mhz=2619, clocks_locked=False, persistence_mode=True, clock_event_reasons=("gpu_idle",),
        temperature_c=31, power_limit_w=700.0,
    )]


def test_clocks_held_by_a_user_setting_read_as_locked(fake_nvml) -> None:
    fake_nvml(FakeGpu("GPU-lgc", sm_mhz=1410, reasons=APP_CLOCKS),  # nvidia-smi -lgc 1410 below the boost clock
              FakeGpu("GPU-ac", sm_mhz=1755, reasons=0, app_clocks={pynvml.NVML_CLOCK_SM: (1755, 1980),
                                                                   pynvml.NVML_CLOCK_MEM: (2619, 2619)}))
    lgc, ac = nvml.gpu_states()
    assert (lgc.clocks_locked, lgc.clock_event_reasons, lgc.sm_clock_mhz) == (
        True, ("applications_clocks_setting",), 1410)
    assert (ac.clocks_locked, ac.clock_event_reasons, ac.index) == (True, (), 1)


def test_a_busy_gpu_at_its_boost_clock_is_not_locked(fake_nvml) -> None:
    fake_nvml(FakeGpu("GPU-busy", sm_mhz=1980, reasons=SW_POWER_CAP))
    (busy,) = nvml.gpu_states()
    assert (busy.clocks_locked, busy.clock_event_reasons) == (False, ("sw_power_cap",))


def test_each_failing_nvml_call_gives_none_for_its_field_only(fake_nvml) -> None:
    fake_nvml(FakeGpu("GPU-ro", temperature=NO_PERMISSION, power_limit_mw=NOT_SUPPORTED, persistence=NOT_SUPPORTED,
                      max_mem_mhz=NOT_SUPPORTED))
    (gpu,) = nvml.gpu_states()
    assert (gpu.temperature_c, gpu.power_limit_w, gpu.persistence_mode, gpu.max_memory_clock_mhz) == (
        None, None, None, None)
    assert (gpu.sm_clock_mhz, gpu.max_sm_clock_mhz, gpu.clocks_locked, gpu.name) == (345, 1980, False, H100)


def test_unreadable_reasons_and_default_application_clocks_leave_the_lock_unknown(fake_nvml) -> None:
    fake_nvml(FakeGpu("GPU-old", reasons=NOT_SUPPORTED))
    (gpu,) = nvml.gpu_states()
    assert (gpu.clocks_locked, gpu.clock_event_reasons) == (None, None)


def test_a_gpu_whose_every_query_fails_is_all_none(fake_nvml) -> None:
    fail = NOT_SUPPORTED
    fake_nvml(FakeGpu("GPU-mig", name=fail, sm_mhz=fail, mem_mhz=fail, max_sm_mhz=fail, max_mem_mhz=fail,
                      app_clocks={pynvml.NVML_CLOCK_SM: (fail, fail), pynvml.NVML_CLOCK_MEM: (fail, fail)},
                      reasons=fail, persistence=fail, temperature=fail, power_limit_mw=fail))
    assert nvml.gpu_states() == [GpuState(index=0, uuid="GPU-mig", name=None, sm_clock_mhz=None,
                                          memory_clock_mhz=None, max_sm_clock_mhz=None, max_memory_clock_mhz=None,
                                          clocks_locked=None, persistence_mode=None, clock_event_reasons=None,
                                          temperature_c=None, power_limit_w=None)]


def test_gpu_states_follow_cuda_visible_devices(fake_nvml, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_nvml(FakeGpu("GPU-0000"), FakeGpu("GPU-1111", reasons=APP_CLOCKS))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert [(g.index, g.uuid, g.clocks_locked) for g in nvml.gpu_states()] == [(0, "GPU-1111", True)]


def test_no_nvml_means_no_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pynvml, "nvmlInit", lambda: _answer(pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)))
    nvml._nvml.cache_clear()
    try:
        assert nvml.gpu_states() == []
    finally:
        nvml._nvml.cache_clear()


def test_reason_names_keep_bits_nvml_adds_later() -> None:
    assert clock_event_reason_names(0) == ()
    assert clock_event_reason_names(GPU_IDLE | SW_POWER_CAP | 0x40) == ("gpu_idle", "sw_power_cap",
                                                                         "hw_thermal_slowdown")
    assert clock_event_reason_names(APP_CLOCKS | 0x1000) == ("applications_clocks_setting", "0x1000")


def _gpu(index: int, locked: bool | None, **fields: Any) -> GpuState:
    return GpuState(index=index, uuid=f"GPU-{index}", name=H100, sm_clock_mhz=1410, memory_clock_mhz=2619,
                    max_sm_clock_mhz=1980, max_memory_clock_mhz=2619, clocks_locked=locked, persistence_mode=True,
                    clock_event_reasons=(), temperature_c=40, power_limit_w=700.0, **fields)


@pytest.mark.parametrize(("locks", "expected"), [
    ((), None), ((True,), True), ((True, True), True), ((True, False), False), ((None, False), False),
    ((True, None), None), ((None,), None),
])
def test_a_run_has_locked_clocks_only_when_every_gpu_has(locks: tuple[bool | None, ...], expected) -> None:
    assert all_clocks_locked([_gpu(i, lock) for i, lock in enumerate(locks)]) is expected


# ---- CPU -----------------------------------------------------------------------------------------


def _cpufreq(sysfs: Path, core: int, governor: str | None, khz: str | None) -> None:
    d = sysfs / f"devices/system/cpu/cpu{core}/cpufreq"
    d.mkdir(parents=True)
    if governor is not None:
        (d / "scaling_governor").write_text(governor + "\n")
    if khz is not None:
        (d / "scaling_cur_freq").write_text(khz + "\n")


CPUINFO = """processor\t: 0
model name\t: AMD EPYC 7763 64-Core Processor
cpu MHz\t\t: 2445.404

processor\t: 1
model name\t: AMD EPYC 7763 64-Core Processor
cpu MHz\t\t: 3529.117

processor\t: 2
cpu MHz\t\t: 1500.000
"""


def test_governors_and_frequencies_come_from_cpufreq_for_the_cores_asked(tmp_path: Path) -> None:
    _cpufreq(tmp_path, 0, "performance", "3500000")
    _cpufreq(tmp_path, 1, "powersave", "1200500")
    _cpufreq(tmp_path, 2, "schedutil", "800000")  # not a core this process may use
    (tmp_path / "cpuinfo").write_text(CPUINFO)
    assert scaling_governors((0, 1), sysfs=tmp_path) == ("performance", "powersave")
    assert scaling_governors((0,), sysfs=tmp_path) == ("performance",)
    assert cpu_frequencies((0, 1), sysfs=tmp_path, proc=tmp_path) == {0: 3500.0, 1: 1200.5}


def test_without_cpufreq_the_frequencies_come_from_cpuinfo(tmp_path: Path) -> None:
    (tmp_path / "cpuinfo").write_text(CPUINFO)
    assert scaling_governors((0, 1), sysfs=tmp_path) is None
    assert cpu_frequencies((0, 1), sysfs=tmp_path, proc=tmp_path) == {0: 2445.404, 1: 3529.117}


def test_with_neither_the_cpu_readers_give_none(tmp_path: Path) -> None:
    _cpufreq(tmp_path, 0, None, "garbage")
    assert scaling_governors((0,), sysfs=tmp_path) is None
    assert cpu_frequencies((0,), sysfs=tmp_path, proc=tmp_path) is None


def test_cpu_conditions_name_the_affinity_the_thread_variables_and_the_load(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cores = tuple(sorted(os.sched_getaffinity(0)))
    for core in cores:
        _cpufreq(tmp_path, core, "performance", "2000000")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setenv("MKL_NUM_THREADS", "2")
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.25, 0.5, 0.25))
    assert collect_cpu_conditions(sysfs=tmp_path, proc=tmp_path) == CpuConditions(
        affinity=cores, governors=("performance",), frequency_mhz={c: 2000.0 for c in cores},
        thread_variables={"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": None},
        load_average_1m=1.25,
    )


def test_a_cpu_run_reads_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nvml, "gpu_states", lambda: pytest.fail("a CPU run must not query NVML"))
    conditions = collect_conditions("cpu")
    assert (conditions.device_kind, conditions.gpus, conditions.gpu_clocks_locked) == ("cpu", (), None)
    assert unlocked_clocks_warning(conditions) is None


# ---- the warning ---------------------------------------------------------------------------------


CPU = CpuConditions(affinity=(0, 1), governors=None, frequency_mhz={0: 2596.1, 1: 2596.1},
                    thread_variables={"OMP_NUM_THREADS": None, "MKL_NUM_THREADS": None, "OPENBLAS_NUM_THREADS": None},
                    load_average_1m=0.5)


def test_the_warning_names_the_unlocked_gpus_the_fix_and_the_reason() -> None:
    conditions = Conditions("cuda", (_gpu(0, True), _gpu(1, False), _gpu(2, None)), CPU)
    text = unlocked_clocks_warning(conditions)
    assert text is not None
    assert f"GPU 1 ({H100}, GPU-1, up to 1980 MHz SM / 2619 MHz memory)" in text
    assert "GPU 0" not in text and "GPU 2" not in text  # locked, and unknown
    for fix in ("nvidia-smi -i <uuid> --lock-gpu-clocks=<MHz>", "-lgc", "--lock-memory-clocks=<MHz>", "-lmc"):
        assert fix in text
    assert "process-to-process spread" in text


def test_no_warning_when_every_gpu_is_locked_or_cannot_be_told() -> None:
    assert unlocked_clocks_warning(Conditions("cuda", (_gpu(0, True), _gpu(1, True)), CPU)) is None
    assert unlocked_clocks_warning(Conditions("cuda", (_gpu(0, None),), CPU)) is None
    assert unlocked_clocks_warning(Conditions("cuda", (), CPU)) is None


def test_conditions_serialise_to_json_with_every_field() -> None:
    doc = json.loads(Conditions("cuda", (_gpu(0, False),), CPU).to_json())
    assert doc["device_kind"] == "cuda" and doc["cpu"]["affinity"] == [0, 1]
    assert doc["cpu"]["frequency_mhz"] == {"0": 2596.1, "1": 2596.1}
    assert doc["gpus"][0] == {
        "index": 0, "uuid": "GPU-0", "name": H100, "sm_clock_mhz": 1410, "memory_clock_mhz": 2619,
        "max_sm_clock_mhz": 1980, "max_memory_clock_mhz": 2619, "clocks_locked": False, "persistence_mode": True,
        "clock_event_reasons": [], "temperature_c": 40, "power_limit_w": 700.0,
    }


# ---- a run start ---------------------------------------------------------------------------------


def _settings(tmp_path: Path, device: str) -> Settings:
    return Settings.from_sources(enabled=True, cli={"db": str(tmp_path / "history.db"), "device": device}, ini={},
                                 rootdir=tmp_path)


def test_a_cpu_run_start_stores_this_machines_conditions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    warnings: list[str] = []
    run = RunSession.start(_settings(tmp_path, "cpu"), run_id=None, project_root=tmp_path, argv=("pytest",),
                           warn=warnings.append)
    try:
        stored = run.store.run(run.run_id)
        env = run.store.db.execute("SELECT * FROM environments WHERE fingerprint = ?",
                                   [stored["env_fingerprint"]]).fetchone()
        env_columns = [d[0] for d in run.store.db.execute("SELECT * FROM environments").description]
    finally:
        run.finish(0)
    conditions = stored["conditions"]
    assert (conditions["device_kind"], conditions["gpus"]) == ("cpu", [])
    cpu = conditions["cpu"]
    assert cpu["affinity"] == sorted(os.sched_getaffinity(0))
    assert cpu["thread_variables"]["OMP_NUM_THREADS"] == "2"
    assert cpu["load_average_1m"] is None or cpu["load_average_1m"] >= 0
    if cpu["frequency_mhz"] is not None:  # this machine's /proc/cpuinfo or cpufreq
        assert {int(c) for c in cpu["frequency_mhz"]} <= set(cpu["affinity"])
        assert all(mhz > 0 for mhz in cpu["frequency_mhz"].values())
    assert dict(zip(env_columns, env))["gpu_clocks_locked"] is None
    assert stored["env_fingerprint"] == collect_environment("cpu").fingerprint()
    assert warnings == []


@pytest.fixture
def fake_cuda_run(fake_nvml, monkeypatch: pytest.MonkeyPatch):
    """A run start that takes this machine for a one-GPU CUDA host (NVML faked, no torch imported)."""
    monkeypatch.setattr(session, "resolve_device", lambda device: "cuda:0")
    monkeypatch.setattr(environment, "_torch_cuda_version", lambda: "12.4")
    return fake_nvml


def test_a_cuda_run_start_stores_the_gpu_state_and_warns_once_of_unlocked_clocks(
        tmp_path: Path, fake_cuda_run) -> None:
    fake_cuda_run(FakeGpu("GPU-aaaa"))
    warnings: list[str] = []
    run = RunSession.start(_settings(tmp_path, "cuda"), run_id=None, project_root=tmp_path, argv=("pytest",),
                           warn=warnings.append)
    joined = RunSession.start(_settings(tmp_path, "cuda"), run_id=run.run_id, project_root=tmp_path,
                              argv=("pytest",), warn=warnings.append)  # an xdist worker: no second warning
    try:
        stored = run.store.run(run.run_id)
        (locked,) = run.store.db.execute("SELECT gpu_clocks_locked FROM environments").fetchone()
    finally:
        joined.finish(0)
        run.finish(0)
    (gpu,) = stored["conditions"]["gpus"]
    assert (gpu["uuid"], gpu["clocks_locked"], gpu["clock_event_reasons"], gpu["power_limit_w"]) == (
        "GPU-aaaa", False, ["gpu_idle"], 700.0)
    assert locked == 0
    assert len(warnings) == 1 and "GPU 0 (NVIDIA H100 80GB HBM3, GPU-aaaa" in warnings[0]


def test_a_cuda_run_with_locked_clocks_is_not_warned_and_has_its_own_fingerprint(
        tmp_path: Path, fake_cuda_run) -> None:
    fake_cuda_run(FakeGpu("GPU-aaaa", sm_mhz=1410, reasons=APP_CLOCKS))
    warnings: list[str] = []
    run = RunSession.start(_settings(tmp_path, "cuda"), run_id=None, project_root=tmp_path, argv=("pytest",),
                           warn=warnings.append)
    try:
        fingerprint = run.store.run(run.run_id)["env_fingerprint"]
    finally:
        run.finish(0)
    locked = collect_environment("cuda")
    assert locked.gpu_clocks_locked is True and fingerprint == locked.fingerprint()
    assert fingerprint not in {replace(locked, gpu_clocks_locked=v).fingerprint() for v in (False, None)}
    assert warnings == []


def test_pytest_shows_the_warning_once_in_its_summary(pytester: pytest.Pytester, fake_cuda_run) -> None:
    fake_cuda_run(FakeGpu("GPU-aaaa"), FakeGpu("GPU-bbbb"))
    pytester.makepyfile("def test_plain():\n    assert sum([1, 2]) == 3\n")
    result = pytester.runpytest_inprocess("--llmperf", "--llmperf-device=cuda",
                                          f"--llmperf-db={pytester.path / 'history.db'}", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    output = result.stdout.str()
    assert output.count("UnlockedGpuClocksWarning: llmperf: the clocks of") == 1
    assert "GPU 0 (NVIDIA H100 80GB HBM3, GPU-aaaa" in output and "GPU 1 (NVIDIA H100 80GB HBM3, GPU-bbbb" in output
