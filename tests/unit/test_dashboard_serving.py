"""The dashboard on serving load points: which pages they make, which percentiles a load point's page draws over
runs, which points its latency-against-throughput chart joins and in which order, and the SVG that draws them."""

from __future__ import annotations

import hashlib
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pytest_llmperf.dashboard.changepoints import DEFAULT_CHANGE_POINTS
from pytest_llmperf.dashboard.history import CHART_ONLY_METRICS, History, load_history, page_key, pages
from pytest_llmperf.dashboard.serving import EngineCurve, latency_throughput_curves, percentile_charts
from pytest_llmperf.dashboard.site import build_dashboard
from pytest_llmperf.dashboard.svg_chart import Axis, ChartLine, ChartPoint, ChartRule, line_chart, nice_ticks
from pytest_llmperf.environment import GitState
from pytest_llmperf.history.store import HistoryStore
from pytest_llmperf.results import ServingResult
from pytest_llmperf.serving.request_metrics import RequestRecord, ServingSummary
from tests.factories import GPU_ENV, make_generate, make_record, make_server_record, make_serving, run_context

TEST = "suites/test_serve.py::test_serve"
RATES = (1.0, 2.0, 4.0, 8.0)
#: the request rate each engine keeps up with
CAPACITY_RPS = {"llama-cpp": 3.0, "vllm": 6.0}
RUNS = 40
#: from this run on, llama-cpp's slowest requests at 4 req/s take twice as long: its p99 steps, its median not
TAIL_STEP_RUN = 20
START = datetime(2026, 3, 1, tzinfo=UTC)


def served(engine: str, *, request_rate: float | None = None, concurrency: int | None = None, tail: float = 1.5,
           workload: str = "p32o32", requests: int = 20, output_tokens: int = 8) -> ServingResult:
    """A load point of ``engine``: each request's TTFT and TPOT rise with the load against the engine's capacity
    and, over the slowest 40 % of the requests, evenly up to ``tail`` times the others', so that the median, p90
    and p99 differ; the output throughput grows with the load until the capacity."""
    load = request_rate if request_rate is not None else float(concurrency or 1)
    rate = min(load, CAPACITY_RPS[engine])
    ttft_s, tpot_s = 0.02 * (1 + load / CAPACITY_RPS[engine]) ** 2, 0.005 * (1 + load / CAPACITY_RPS[engine])

    slow = requests * 3 // 5  # the first slow request: the median stays among the fast ones

    def record(i: int) -> RequestRecord:
        stretch = 1 + (tail - 1) * (i - slow) / (requests - 1 - slow) if i >= slow else 1.0
        send = i / rate
        return RequestRecord(send_s=send, output_tokens=output_tokens, prompt_tokens=32,
                             chunk_s=tuple(send + stretch * (ttft_s + k * tpot_s) for k in range(output_tokens)))

    base = make_serving(request_rate, concurrency=concurrency, workload=workload, requests=requests,
                        output_tokens=output_tokens)
    return replace(base, summary=ServingSummary.of([record(i) for i in range(requests)], requests / rate))


def commit(branch: str, i: int) -> str:
    return hashlib.sha1(f"{branch} {i}".encode()).hexdigest()


def write_history(path: Path, runs: Sequence[Mapping[str, Sequence[ServingResult]]], *, branch: str = "main",
                  generate: bool = False) -> None:
    """One run per item of ``runs``, an hour apart: engine -> the load points its test served in that run."""
    with HistoryStore.open(path) as store:
        for i, by_engine in enumerate(runs):
            run_id = f"{branch}-{i:03d}"
            ctx = replace(run_context(), git=GitState(commit=commit(branch, i), branch=branch, dirty=False))
            store.start_run(run_id, GPU_ENV, ctx, started_at=(START + timedelta(hours=i)).isoformat())
            for engine, servings in by_engine.items():
                record = replace(make_server_record(*servings, backend=engine), test_id=f"{TEST}[{engine}]")
                store.record_test(run_id, record, test_outcome="passed")
            if generate:
                store.record_test(run_id, make_record(make_generate(8, 1.0)), test_outcome="passed")
            store.finish_run(run_id, "complete")


def main_runs() -> list[dict[str, list[ServingResult]]]:
    """llama-cpp at four request rates, recorded out of order, its p99 at 4 req/s stepping up half-way, its newest
    run without the 8 req/s point; vllm at the four rates, two concurrencies, and one rate of another workload."""
    runs = []
    for i in range(RUNS):
        llama = [served("llama-cpp", request_rate=r, tail=3.0 if r == 4.0 and i >= TAIL_STEP_RUN else 1.5)
                 for r in (8.0, 1.0, 4.0, 2.0) if not (i == RUNS - 1 and r == 8.0)]
        vllm = [served("vllm", request_rate=r) for r in (4.0, 2.0, 8.0, 1.0)]
        vllm += [served("vllm", concurrency=c) for c in (4, 2)]
        vllm.append(served("vllm", request_rate=2.0, workload="sharegpt"))
        runs.append({"llama-cpp": llama, "vllm": vllm})
    return runs


def serving_history(path: Path) -> Path:
    """The main branch's 40 runs (``main_runs``) with a generate test beside, and two runs of vllm alone on a
    branch ``faster``, 25 % quicker at 2 req/s."""
    write_history(path, main_runs(), generate=True)
    quicker = replace(served("vllm", request_rate=2.0), summary=served("vllm", request_rate=1.5).summary)
    write_history(path, [{"vllm": [served("vllm", request_rate=1.0), quicker]}] * 2, branch="faster")
    return path


@pytest.fixture(scope="module")
def history_file(tmp_path_factory) -> Path:
    return serving_history(tmp_path_factory.mktemp("serving") / "history.db")


@pytest.fixture(scope="module")
def history(history_file) -> History:
    return load_history(history_file)


def page_of(history: History, engine: str, workload: str = "p32o32", **point: float) -> str:
    [page] = {s.page for s in history.series.values()
              if s.subject.backend == engine and s.subject.workload == workload
              and s.subject.point.extra() == point}
    return page


def test_each_serving_load_point_has_a_page_with_its_servers_load_and_generate_pages_keep_their_address(history):
    by_page = pages(history)
    serving_pages = {p: m for p, m in by_page.items() if any(s.subject.workload for s in m)}
    # llama-cpp: 4 rates; vllm: 4 rates, 2 concurrencies, 1 rate of sharegpt
    assert len(serving_pages) == 4 + 4 + 2 + 1
    assert len(by_page) == len(serving_pages) + 1 and "a0397566f7a5858e" in by_page  # the generate's b8 page
    members = by_page[page_of(history, "vllm", request_rate=2.0)]
    on_main = sorted(s.subject.metric for s in members if s.branch == "main")
    assert on_main == ["load_s", "median_tpot_ms", "median_ttft_ms", "output_throughput", "p99_tpot_ms",
                       "p99_ttft_ms"]
    assert {s.subject.point.label for s in members if s.subject.metric != "load_s"} == {"request_rate=2"}
    assert {s.subject.test_id for s in members} == {f"{TEST}[vllm]"}  # llama-cpp's load is on its own pages
    assert page_of(history, "vllm", request_rate=2.0) != page_of(history, "vllm", "sharegpt", request_rate=2.0)


def test_p90_is_read_for_the_charts_but_is_no_row_of_the_overview(history):
    assert CHART_ONLY_METRICS == ("p90_ttft_ms", "p90_tpot_ms")
    assert not any(s.subject.metric in CHART_ONLY_METRICS for s in history.series.values())
    assert {s.subject.metric for s in history.chart_only.values()} == set(CHART_ONLY_METRICS)
    assert all(len(s.values) == RUNS for s in history.chart_only.values()
               if s.branch == "main" and s.subject.backend == "vllm")


def test_a_load_points_page_draws_median_p90_and_p99_of_ttft_and_tpot_with_the_recorded_values(history):
    page = page_of(history, "llama-cpp", request_rate=4.0)
    charts = percentile_charts(history, {})[page]
    assert [(c.branch, c.latency) for c in charts] == [("main", "ttft"), ("main", "tpot")]
    for chart in charts:
        assert [line.statistic for line in chart.lines] == ["median", "p90", "p99"]
        assert all(len(line.series.values) == RUNS for line in chart.lines)
    expected = served("llama-cpp", request_rate=4.0).metric_values()  # a run before the step
    ttft = {line.statistic: line.series.values[0] for line in charts[0].lines}
    assert ttft == pytest.approx({"median": expected["median_ttft_ms"], "p90": expected["p90_ttft_ms"],
                                  "p99": expected["p99_ttft_ms"]})
    assert ttft["median"] < ttft["p90"] < ttft["p99"]
    tpot = {line.statistic: line.series.values[-1] for line in charts[1].lines}
    stepped = served("llama-cpp", request_rate=4.0, tail=3.0).metric_values()
    assert tpot["p99"] == pytest.approx(stepped["p99_tpot_ms"])


def test_the_tail_that_steps_while_the_median_holds_has_a_change_point_on_its_line_only(history):
    page = page_of(history, "llama-cpp", request_rate=4.0)
    for chart in percentile_charts(history, {})[page]:
        found = {line.statistic: [c.index for c in line.change_points] for line in chart.lines}
        assert found == {"median": [], "p90": [TAIL_STEP_RUN], "p99": [TAIL_STEP_RUN]}, chart.latency
    assert all(not line.change_points for chart in percentile_charts(history, {})[page_of(
        history, "llama-cpp", request_rate=2.0)] for line in chart.lines)


def test_change_points_the_overview_found_are_reused(history):
    page = page_of(history, "llama-cpp", request_rate=4.0)
    p99 = next(line for line in percentile_charts(history, {})[page][0].lines if line.statistic == "p99")
    sentinel = (replace(p99.change_points[0], index=3),)
    known = {(p99.series.subject.digest(), "main"): sentinel}
    reused = next(line for line in percentile_charts(history, known, DEFAULT_CHANGE_POINTS)[page][0].lines
                  if line.statistic == "p99")
    assert reused.change_points == sentinel


def curve_of(curves: Sequence[EngineCurve], engine: str, axis: tuple[str, ...] = ("request_rate",)) -> EngineCurve:
    [curve] = [c for c in curves if c.engine == engine and c.axis == axis]
    return curve


def test_each_engines_newest_run_is_a_curve_in_order_of_request_rate(history):
    curves = latency_throughput_curves(history)
    main = curves[page_of(history, "vllm", request_rate=2.0)]["main"]
    assert [(c.engine, c.axis) for c in main] == [("llama-cpp auto", ("request_rate",)),
                                                   ("vllm auto", ("concurrency",)), ("vllm auto", ("request_rate",))]
    llama, vllm = curve_of(main, "llama-cpp auto"), curve_of(main, "vllm auto")
    assert llama.run_id == vllm.run_id == f"main-{RUNS - 1:03d}"
    # llama-cpp's newest run did not measure 8 req/s: the curve leaves it out rather than take an older run's
    assert [p.point.get("request_rate") for p in llama.points] == [1.0, 2.0, 4.0]
    assert [p.point.get("request_rate") for p in vllm.points] == list(RATES)
    assert [p.point.get("concurrency") for p in curve_of(main, "vllm auto", ("concurrency",)).points] == [2, 4]
    for p in vllm.points:
        rate = p.point.get("request_rate")
        assert rate is not None
        values = served("vllm", request_rate=rate).metric_values()
        assert p.output_throughput == pytest.approx(values["output_throughput"])
        assert p.latency_ms("median", "ttft") == pytest.approx(values["median_ttft_ms"])
        assert p.latency_ms("p99", "tpot") == pytest.approx(values["p99_tpot_ms"])
        assert p.page == page_of(history, "vllm", request_rate=rate)
    # past its capacity an engine's throughput stops growing while its latency does not
    throughput = [p.output_throughput for p in llama.points]
    assert throughput[1] < throughput[2] == pytest.approx(CAPACITY_RPS["llama-cpp"] * 8)
    latency = [p.latency_ms("median", "ttft") or 0 for p in llama.points]
    assert latency == sorted(latency) and latency[0] < latency[-1]


def test_every_load_point_of_a_test_shares_its_curves_and_other_workloads_and_branches_have_their_own(history):
    curves = latency_throughput_curves(history)
    pages_of_test = [page_of(history, engine, request_rate=r) for engine in CAPACITY_RPS for r in RATES]
    assert all(curves[p]["main"] == curves[pages_of_test[0]]["main"] for p in pages_of_test)
    sharegpt = curves[page_of(history, "vllm", "sharegpt", request_rate=2.0)]
    assert [(c.engine, [p.point.get("request_rate") for p in c.points]) for c in sharegpt["main"]] == \
        [("vllm auto", [2.0])]
    faster = curves[page_of(history, "vllm", request_rate=2.0)]["faster"]
    assert [(c.engine, c.run_id, len(c.points)) for c in faster] == [("vllm auto", "faster-001", 2)]
    assert "faster" not in curves[page_of(history, "llama-cpp", request_rate=2.0)]


def test_the_site_draws_the_percentile_lines_and_the_engine_curves_in_svg(history_file, tmp_path):
    counts = build_dashboard(history_file, tmp_path / "site")
    assert counts["pages"] == 12
    page = page_of(load_history(history_file), "llama-cpp", request_rate=4.0)
    text = (tmp_path / "site" / "series" / f"{page}.html").read_text()
    assert "suites/test_serve.py::test_serve[llama-cpp] · llama-cpp auto · request_rate=4 p32o32" in text
    assert "http://www.w3.org/2000/svg" in text and "https://" not in text
    sections = {}
    for chunk in text.split("<section ")[1:]:
        html_section = "<section " + chunk.split("</section>", 1)[0] + "</section>"
        root = ET.fromstring(html_section)
        sections[(root.get("data-branch"), root.get("data-latency") or "curves")] = root
    assert set(sections) == {("main", "ttft"), ("main", "tpot"), ("main", "curves")}

    ttft = sections[("main", "ttft")]
    lines = {g.get("data-label"): g for g in ttft.iter("{http://www.w3.org/2000/svg}g") if g.get("class") == "line"}
    assert list(lines) == ["median", "p90", "p99"]
    assert all(len(g.findall("{http://www.w3.org/2000/svg}circle")) == RUNS for g in lines.values())
    assert all(len(g.find("{http://www.w3.org/2000/svg}polyline").get("points").split()) == RUNS
               for g in lines.values())
    rules = [g.get("data-label") for g in ttft.iter("{http://www.w3.org/2000/svg}g") if g.get("class") == "rule"]
    assert [r.split()[0] for r in rules] == ["p90", "p99"] and all(r.split()[1].startswith("+") for r in rules)
    assert "p99: change point +" in "".join(ttft.itertext())
    first = lines["median"].find("{http://www.w3.org/2000/svg}circle/{http://www.w3.org/2000/svg}title").text
    assert first.startswith("median TTFT ") and f"commit {commit('main', 0)[:12]}" in first

    curves = sections[("main", "curves")]
    charts = curves.findall("{http://www.w3.org/2000/svg}svg")
    assert [svg.get("aria-label") for svg in charts] == ["TTFT against output throughput",
                                                          "TPOT against output throughput"]
    lines = {g.get("data-label"): g for g in charts[0].iter("{http://www.w3.org/2000/svg}g")
             if g.get("class") == "line"}
    assert list(lines) == ["llama-cpp auto median", "llama-cpp auto p99", "vllm auto (concurrency) median",
                           "vllm auto (concurrency) p99", "vllm auto (request_rate) median",
                           "vllm auto (request_rate) p99"]
    llama = lines["llama-cpp auto median"]
    links = [a.get("href") for a in llama.iter("{http://www.w3.org/2000/svg}a")]
    assert links == [f"{page_of(load_history(history_file), 'llama-cpp', request_rate=r)}.html#main"
                     for r in (1.0, 2.0, 4.0)]
    assert all((tmp_path / "site" / "series" / link.split("#")[0]).exists() for link in links)
    current = [c for c in llama.iter("{http://www.w3.org/2000/svg}circle") if c.get("class") == "current"]
    assert len(current) == 1 and "request_rate=4" in current[0].find("{http://www.w3.org/2000/svg}title").text
    xs = [float(xy.split(",")[0]) for xy in llama.find("{http://www.w3.org/2000/svg}polyline").get("points").split()]
    assert xs == sorted(xs)  # joined in order of request rate, and the throughput grows with it up to capacity
    assert lines["llama-cpp auto p99"].find("{http://www.w3.org/2000/svg}polyline").get("stroke-dasharray")


def test_the_overview_names_each_load_point_and_a_serving_page_compares_engines_by_output_throughput(
        history_file, tmp_path):
    build_dashboard(history_file, tmp_path / "site")
    index = (tmp_path / "site" / "index.html").read_text()
    assert ">request_rate=4 p32o32<" in index and ">concurrency=2 p32o32<" in index and ">8<" in index
    assert "p90_ttft_ms" not in index
    links = re.findall(r'<a href="series/(\w+)\.html#', index)
    assert len(links) == index.count("<tr data-model=")
    assert all((tmp_path / "site" / "series" / f"{page}.html").exists() for page in links)  # load_s rows too
    page = page_of(load_history(history_file), "vllm", request_rate=2.0)
    text = (tmp_path / "site" / "series" / f"{page}.html").read_text()
    assert "Backends side by side: output_throughput" in text and 'data-branch="faster"' in text
    data = (tmp_path / "site" / "data" / f"{page}.js").read_text()
    assert data.count('"label":"llama-cpp auto"') == 1  # siblings: the same rate and workload of llama-cpp


def test_a_chart_of_a_flat_series_has_a_range_and_its_texts_are_escaped():
    hostile = "<script>alert(1)</script>"
    svg = line_chart(hostile, [ChartLine(hostile, "#1f6feb", (ChartPoint(1.0, 5.0, hostile, href="a.html#<x>"),
                                                               ChartPoint(2.0, 5.0, "b")))],
                     Axis("x"), Axis("y"), rules=[ChartRule(1.5, hostile, "#cf222e")])
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    root = ET.fromstring(svg)
    ys = {c.get("cy") for c in root.iter("{http://www.w3.org/2000/svg}circle")}
    assert len(ys) == 1 and 22 < float(ys.pop()) < 240  # inside the plot, not on its edge
    with pytest.raises(ValueError, match="chart 'empty' has no points"):
        line_chart("empty", [], Axis("x"), Axis("y"))


@pytest.mark.parametrize(("low", "high", "ticks"), [
    (0.0, 95.0, [0.0, 25.0, 50.0, 75.0, 100.0]),
    (20.0, 21.0, [20.0, 20.25, 20.5, 20.75, 21.0]),
    (3.2, 7.9, [2.0, 4.0, 6.0, 8.0]),
    (1e6, 1.3e6, [1e6, 1.1e6, 1.2e6, 1.3e6]),
    (-3.0, 0.01, [-3.0, -2.0, -1.0, 0.0, 1.0]),
])
def test_ticks_are_round_and_cover_the_range(low, high, ticks):
    assert nice_ticks(low, high) == pytest.approx(ticks)


def test_ticks_of_an_empty_range_are_refused():
    with pytest.raises(ValueError, match="low < high"):
        nice_ticks(1.0, 1.0)


def test_a_history_without_serving_draws_no_serving_section(tmp_path):
    write_history(tmp_path / "h.db", [{}] * 3, generate=True)
    history = load_history(tmp_path / "h.db")
    assert percentile_charts(history, {}) == {} and latency_throughput_curves(history) == {}
    assert list(pages(history)) == ["a0397566f7a5858e"]
    build_dashboard(tmp_path / "h.db", tmp_path / "site")
    text = (tmp_path / "site" / "series" / "a0397566f7a5858e.html").read_text()
    assert "<svg" not in text and "section class=\"chart serving" not in text
    assert "Backends side by side: tokens_per_s" in text and "LLMPerf.seriesPage();</script>" in text


def test_the_page_key_of_a_serving_load_point_leaves_out_its_metric_only(history):
    s = next(s for s in history.series.values() if s.subject.metric == "p99_ttft_ms")
    assert page_key(replace(s.subject, metric="median_tpot_ms")) == s.page
    assert page_key(replace(s.subject, workload="sharegpt")) != s.page


def test_a_history_of_one_run_draws_its_percentiles_on_a_day_around_it(tmp_path):
    write_history(tmp_path / "h.db", [{"vllm": [served("vllm", request_rate=2.0)]}])
    build_dashboard(tmp_path / "h.db", tmp_path / "site")
    [page] = (tmp_path / "site" / "series").glob("*.html")
    section = page.read_text().split('<section class="chart serving percentiles"', 1)[1].split("</section>")[0]
    ticks = re.findall(r'y="256" text-anchor="(?:middle|end)">([^<]+)</text>', section)  # under the plot
    assert ticks == ["02-28 12:00", "02-28 18:00", "03-01 00:00", "03-01 06:00", "03-01 12:00"]
