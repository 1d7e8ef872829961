"""What a serving load point's page shows beyond one chart per metric: its latency percentiles together over
runs, and its test's latency against throughput for every engine.

* **Percentiles over runs.** The median, p90 and p99 of TTFT, and of TPOT, of one load point on one branch,
  one line each, with each line's change points: a tail that grows while the median holds (queueing, a
  scheduler change) shows as the lines parting.
* **Latency against throughput.** The newest run of each engine (backend and variant) of a test measured
  some load points of a workload; each is a point at (output throughput, latency), and an engine's points
  are joined in order of their request rate (or concurrency): the usual curve, whose knee is the capacity.
  A test is its function (the test id before its parameters), model, dtype, world size, workload and
  environment, as for the backends side by side on a generate's page. The points of one engine all come from
  its one newest run, so that a curve is one state of the code; load points that run did not measure are
  left out rather than filled in from older runs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pytest_llmperf.dashboard.changepoints import (
    DEFAULT_CHANGE_POINTS,
    ChangePoint,
    ChangePointConfig,
    detect_change_points,
)
from pytest_llmperf.dashboard.history import PERCENTILE_LATENCIES, PERCENTILE_STATISTICS, History, Series
from pytest_llmperf.measure.metrics import serving_latency_name
from pytest_llmperf.series import Coordinate, LoadPoint

#: the throughput a curve's points stand at
CURVE_THROUGHPUT = "output_throughput"
#: the latencies drawn against it: (statistic, latency)
CURVE_LATENCIES = tuple((statistic, latency) for latency in PERCENTILE_LATENCIES for statistic in ("median", "p99"))

_PERCENTILE_OF = {serving_latency_name(statistic, latency): (statistic, latency)
                  for latency in PERCENTILE_LATENCIES for statistic in PERCENTILE_STATISTICS}


@dataclass(frozen=True)
class PercentileLine:
    """One statistic of a latency over the runs of a load point."""

    statistic: str
    series: Series
    change_points: tuple[ChangePoint, ...]


@dataclass(frozen=True)
class PercentileChart:
    """The statistics of one latency ("ttft", "tpot") of a load point on a branch, lowest first."""

    latency: str
    branch: str
    lines: tuple[PercentileLine, ...]


def percentile_charts(history: History, known: Mapping[tuple[str, str], Sequence[ChangePoint]],
                      config: ChangePointConfig = DEFAULT_CHANGE_POINTS) -> dict[str, list[PercentileChart]]:
    """page -> its percentile charts, by branch, then TTFT before TPOT; pages without serving latencies have none.
    ``known``: change points already found, by (series key, branch); the others are found here."""
    found: dict[tuple[str, str, str], dict[str, Series]] = defaultdict(dict)
    for s in (*history.series.values(), *history.chart_only.values()):
        if s.subject.workload is not None and s.subject.metric in _PERCENTILE_OF:
            statistic, latency = _PERCENTILE_OF[s.subject.metric]
            found[(s.page, s.branch, latency)][statistic] = s
    out: dict[str, list[PercentileChart]] = defaultdict(list)
    for page, branch, latency in sorted(found, key=lambda k: (k[0], k[1], PERCENTILE_LATENCIES.index(k[2]))):
        by_statistic = found[(page, branch, latency)]
        lines = []
        for statistic in PERCENTILE_STATISTICS:
            line = by_statistic.get(statistic)
            if line is None:
                continue
            points = known.get((line.subject.digest(), branch))
            lines.append(PercentileLine(statistic, line, tuple(points if points is not None
                                                               else detect_change_points(line.values, config))))
        out[page].append(PercentileChart(latency, branch, tuple(lines)))
    return dict(out)


@dataclass(frozen=True)
class CurvePoint:
    """One load point of an engine's newest run: its throughput and latencies in that run."""

    point: LoadPoint
    #: the load point's page
    page: str
    output_throughput: float
    #: (statistic, latency) -> milliseconds, for each of ``CURVE_LATENCIES`` the run measured
    latencies_ms: tuple[tuple[tuple[str, str], float], ...]

    def latency_ms(self, statistic: str, latency: str) -> float | None:
        return dict(self.latencies_ms).get((statistic, latency))


@dataclass(frozen=True)
class EngineCurve:
    """An engine's load points in its newest run, in order along one load axis."""

    #: "vllm", "llama-cpp auto": the backend, and the variant unless it is "default"
    engine: str
    #: the coordinates the points are ordered by: ("request_rate",), ("concurrency",); () for a load point
    #: without any (one point)
    axis: tuple[str, ...]
    run_id: str
    points: tuple[CurvePoint, ...]


def engine_label(backend: str, variant: str) -> str:
    return backend if variant == "default" else f"{backend} {variant}"


def _test_of(s: Series) -> tuple[object, ...]:
    u = s.subject
    return (u.test_id.split("[", 1)[0], u.model_id, u.dtype, u.world_size, u.workload, s.env, s.branch)


def _axis_order(point: LoadPoint) -> tuple[tuple[str, ...], tuple[Coordinate, ...]]:
    extra = point.extra()
    return tuple(extra), tuple(extra.values())


def latency_throughput_curves(history: History) -> dict[str, dict[str, tuple[EngineCurve, ...]]]:
    """page -> branch -> the curves of every engine of its test on that branch, by engine then axis; only
    serving load points with an ``output_throughput`` have a page here."""
    order = {run_id: i for i, run_id in enumerate(history.runs)}  # oldest first
    # (test, engine) -> page -> metric -> series
    by_engine: dict[tuple[tuple[object, ...], str], dict[str, dict[str, Series]]] = defaultdict(
        lambda: defaultdict(dict))
    wanted = {CURVE_THROUGHPUT, *(serving_latency_name(st, lat) for st, lat in CURVE_LATENCIES)}
    for s in history.series.values():
        if s.subject.workload is not None and s.subject.metric in wanted:
            by_engine[(_test_of(s), engine_label(s.subject.backend, s.subject.variant))][s.page][s.subject.metric] = s
    curves: dict[tuple[object, ...], list[EngineCurve]] = defaultdict(list)
    pages_of: dict[tuple[object, ...], set[str]] = defaultdict(set)
    for (test, engine), load_points in sorted(by_engine.items(), key=lambda item: item[0][1]):
        throughputs = [m[CURVE_THROUGHPUT] for m in load_points.values() if CURVE_THROUGHPUT in m]
        if not throughputs:
            continue
        newest = max((s.run_ids[-1] for s in throughputs), key=order.__getitem__)
        on_axis: dict[tuple[str, ...], list[tuple[tuple[Coordinate, ...], CurvePoint]]] = defaultdict(list)
        for page, metrics in load_points.items():
            pages_of[test].add(page)
            throughput = metrics.get(CURVE_THROUGHPUT)
            if throughput is None or throughput.run_ids[-1] != newest:
                continue
            latencies = tuple(((st, lat), found.values[-1]) for st, lat in CURVE_LATENCIES
                              if (found := metrics.get(serving_latency_name(st, lat))) is not None
                              and found.run_ids[-1] == newest)
            point = throughput.subject.point
            axis, at = _axis_order(point)
            on_axis[axis].append((at, CurvePoint(point, page, throughput.values[-1], latencies)))
        for axis, points in sorted(on_axis.items()):
            curves[test].append(EngineCurve(engine, axis, newest,
                                            tuple(p for _, p in sorted(points, key=lambda item: item[0]))))
    out: dict[str, dict[str, tuple[EngineCurve, ...]]] = defaultdict(dict)
    for test, test_curves in curves.items():
        branch = str(test[-1])
        for page in pages_of[test]:
            out[page][branch] = tuple(test_curves)
    return dict(out)
