"""One result from every rank's: how a group's load and trials add up to the deployment's.

The deployment is ready when its slowest rank is, and a trial ends when its last rank does, so
times are the maximum over ranks; memory is per rank (the maximum); weights add up over shards.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from pytest_llmperf.results import GenerateResult, LoadResult, Trial


def merge_loads(loads: list[LoadResult], local_devices: list[str], labels: list[str]) -> LoadResult:
    """Rank r ran on ``local_devices[r]`` as it saw it ("cuda:0"), recorded as ``labels[r]`` ("cuda:3")."""
    slowest = max(loads, key=lambda load: load.load_s)
    devices: list[str] = []
    for load, local, label in zip(loads, local_devices, labels, strict=True):
        for device in load.devices:
            name = label if device == local else device
            if name not in devices:
                devices.append(name)
    return LoadResult(
        load_s=slowest.load_s,
        phases=slowest.phases,
        weights_bytes=sum(load.weights_bytes for load in loads),
        memory=max((load.memory for load in loads), key=lambda m: m.peak_bytes),
        page_cache=loads[0].page_cache,
        devices=tuple(devices),
        device_map=loads[0].device_map,
    )


def merge_generates(results: list[GenerateResult], *, independent_streams: bool) -> GenerateResult:
    """Trial i of the group = trial i of every rank, ending when the last one does.

    ``independent_streams``: each rank generated its own batch (ZeRO-3 inference), so the group
    produced ``ranks`` times the tokens; otherwise the ranks cooperated on one stream (tensor parallel).
    """
    first = results[0]
    oom = next((r for r in results if r.outcome == "oom"), None)
    if oom is not None:
        return replace(oom, streams=len(results) if independent_streams else 1)
    streams = len(results) if independent_streams else 1
    trials = tuple(
        Trial(ttft_s=max(t.ttft_s for t in per_rank), e2e_s=max(t.e2e_s for t in per_rank),
              batch_size=first.config.batch_size, new_tokens=first.config.new_tokens, streams=streams,
              itl_p50_s=_slowest(t.itl_p50_s for t in per_rank), itl_p90_s=_slowest(t.itl_p90_s for t in per_rank),
              itl_p99_s=_slowest(t.itl_p99_s for t in per_rank))
        for per_rank in zip(*(r.trials for r in results), strict=True)
    )
    energies = [r.energy_j_per_token for r in results]
    energy = None
    if all(e is not None for e in energies):
        # each rank divided its own device's energy by the tokens it saw: the group's tokens are the
        # same tokens (one stream) or every rank's own (streams), so per token the energies add / average
        energy = sum(energies) / (len(energies) if independent_streams else 1)  # type: ignore[arg-type]
    return replace(
        first, trials=trials, streams=streams,
        memory=max((r.memory for r in results if r.memory is not None), key=lambda m: m.peak_bytes, default=None),
        energy_j_per_token=energy,
    )


def _slowest(values: Iterable[float | None]) -> float | None:
    """The group waits for its slowest rank: the largest of the ranks' values (None if any rank has none)."""
    known = list(values)
    return None if any(v is None for v in known) else max(v for v in known if v is not None)
