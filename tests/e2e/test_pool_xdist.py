"""The device pool under pytest-xdist: tests in different worker processes never share a leased device.

The inner tests ask for ``llmperf_lease`` alone: they hold devices without loading any model.
"""

import json
from itertools import combinations

INNER = """
import json
import os
import time
from pathlib import Path

import pytest

TRACE = Path({trace!r})


def _hold(name, lease):
    start = time.monotonic()
    time.sleep(0.5)
    end = time.monotonic()
    (TRACE / f"{{name}}.json").write_text(json.dumps({{
        "name": name, "start": start, "end": end, "pid": os.getpid(),
        "slots": [d.slot for d in lease.devices], "labels": [d.label for d in lease.devices],
        "released": lease.released,
    }}))


@pytest.mark.llmperf(model="synthetic:llama-tiny", backend="hf", device="cpu")
@pytest.mark.parametrize("i", range(4))
def test_a_single(llmperf_lease, i):
    _hold(f"single-a{{i}}", llmperf_lease)


@pytest.mark.llmperf(model="synthetic:llama-tiny", backend="hf-tp", world_size=2, device="cpu")
def test_pair(llmperf_lease):
    _hold("pair", llmperf_lease)


@pytest.mark.llmperf(model="synthetic:llama-tiny", backend="hf", device="cpu")
@pytest.mark.parametrize("i", range(4))
def test_b_single(llmperf_lease, i):
    _hold(f"single-b{{i}}", llmperf_lease)
"""


def _overlap(a, b) -> bool:
    return a["start"] < b["end"] and b["start"] < a["end"]


def test_two_workers_share_two_cpu_slots_without_ever_sharing_one(pytester, tmp_path):
    trace = tmp_path / "trace"
    trace.mkdir()
    pytester.makepyfile(INNER.format(trace=str(trace)))
    result = pytester.runpytest_subprocess(
        "-n", "2", "--llmperf", "--llmperf-cpu-slots=2", f"--llmperf-pool-dir={tmp_path / 'pool'}",
        "--llmperf-lease-timeout=120", "-p", "no:cacheprovider", "-v",
    )
    result.assert_outcomes(passed=9)
    # llmperf_lease alone gets the case parametrized from the marker, as llm does
    result.stdout.fnmatch_lines(["*PASSED *::test_pair?llama-tiny-hf-tp-ws2?*"])

    held = {r["name"]: r for r in (json.loads(p.read_text()) for p in trace.glob("*.json"))}
    assert len(held) == 9
    assert not any(r["released"] for r in held.values())  # each test held its lease while it ran
    pair = held.pop("pair")
    singles = list(held.values())
    assert sorted(pair["slots"]) == ["cpu0", "cpu1"] and sorted(pair["labels"]) == ["cpu#0", "cpu#1"]
    assert all(len(s["slots"]) == 1 and s["slots"][0] in ("cpu0", "cpu1") for s in singles)

    assert [s["name"] for s in singles if _overlap(s, pair)] == [], "a test ran while the pair held every slot"
    for a, b in combinations([pair, *singles], 2):
        if set(a["slots"]) & set(b["slots"]):
            assert not _overlap(a, b), f"{a['name']} and {b['name']} held {a['slots']} at the same time"

    # the check above means something only if the workers did run tests side by side
    assert len({s["pid"] for s in singles} | {pair["pid"]}) == 2
    side_by_side = [(a["name"], b["name"]) for a, b in combinations(singles, 2) if a["pid"] != b["pid"]
                    and _overlap(a, b)]
    assert side_by_side, "the two workers never ran single-slot tests at the same time"

