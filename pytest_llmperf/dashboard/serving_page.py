"""The serving sections of a load point's page, as HTML with inline SVG: its latency percentiles over runs, and
its test's latency against throughput per engine (``serving`` shapes both).

Each section is drawn once per branch (``data-branch``); ``BRANCH_SCRIPT`` shows those of the branch the page's
selector names, as the page's script does for its other charts.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

from pytest_llmperf.dashboard.history import History
from pytest_llmperf.dashboard.serving import CURVE_LATENCIES, EngineCurve, PercentileChart
from pytest_llmperf.dashboard.svg_chart import (
    PALETTE,
    Axis,
    ChartLine,
    ChartPoint,
    ChartRule,
    legend,
    line_chart,
    time_text,
)

#: colours of the percentile lines: the median as the site's other charts draw a value, the tail warmer
PERCENTILE_COLOURS = {"median": "#1f6feb", "p90": "#9a6700", "p99": "#cf222e"}
LATENCY_NAMES = {"ttft": "TTFT", "tpot": "TPOT"}
#: how far the time axis of a history of one run reaches either side of it
RUN_TIME_REACH_S = 12 * 3600.0
#: shows the sections of the branch selected on the page (run after the page's own script has set it)
BRANCH_SCRIPT = ('(function () { var select = document.getElementById("branch"); function show() { '
                 'document.querySelectorAll("section.serving[data-branch]").forEach(function (s) { '
                 's.hidden = s.dataset.branch !== select.value; }); } '
                 'select.addEventListener("change", show); show(); }())')


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _run_text(history: History, run_id: str) -> str:
    run = history.runs[run_id]
    return f"{run.started_at[:16].replace('T', ' ')} · commit {(run.commit or '-')[:12]}"


def percentile_section(chart: PercentileChart, history: History) -> str:
    """One latency's median, p90 and p99 over the runs of a branch, with their change points."""
    name = LATENCY_NAMES[chart.latency]
    lines, rules, notes = [], [], []
    times = [history.runs[r].epoch_s for line in chart.lines for r in line.series.run_ids]
    for line in chart.lines:
        s, colour = line.series, PERCENTILE_COLOURS[line.statistic]
        x = [history.runs[r].epoch_s for r in s.run_ids]
        lines.append(ChartLine(line.statistic, colour, tuple(
            ChartPoint(x[i], v, f"{line.statistic} {name} {v:.4g} ms · {_run_text(history, r)}")
            for i, (r, v) in enumerate(zip(s.run_ids, s.values, strict=True)))))
        for c in line.change_points:
            rules.append(ChartRule(x[c.index], f"{line.statistic} {c.relative_change:+.1%}", colour))
            before, after = ((history.runs[s.run_ids[i]].commit or "?")[:12] for i in (c.index - 1, c.index))
            notes.append(f"{line.statistic}: change point {c.relative_change:+.1%} between {before} and {after}")
    run_time = Axis("run started (UTC)", time_text(max(times) - min(times)), round_ticks=False,
                    flat_reach=RUN_TIME_REACH_S)
    svg = line_chart(f"{name} percentiles over runs", lines, run_time, Axis(f"{name} (ms)"), rules=rules)
    cp = f'<p class="links"><span class="cp">{_esc("; ".join(notes))}</span></p>' if notes else ""
    return (f'<section class="chart serving percentiles" data-branch="{_esc(chart.branch)}" '
            f'data-latency="{chart.latency}"><h2>{name}: median, p90 and p99 over runs (ms, lower is better)</h2>'
            f"{cp}{svg}{legend(lines)}</section>")


def _curve_lines(curves: Sequence[EngineCurve], latency: str, page: str, branch: str) -> list[ChartLine]:
    """Each curve's median (solid) and p99 (dashed) of ``latency``, in a colour of its own."""
    axes_of = {c.engine: [d.axis for d in curves if d.engine == c.engine] for c in curves}
    out = []
    for i, curve in enumerate(curves):
        colour = PALETTE[i % len(PALETTE)]
        name = curve.engine if len(axes_of[curve.engine]) == 1 else f"{curve.engine} ({'/'.join(curve.axis)})"
        for statistic in (st for st, lat in CURVE_LATENCIES if lat == latency):
            points = tuple(
                ChartPoint(p.output_throughput, value,
                           f"{curve.engine} · {p.point.label or 'no load point'} · {p.output_throughput:.4g} "
                           f"tokens/s · {statistic} {LATENCY_NAMES[latency]} {value:.4g} ms",
                           href=f"{p.page}.html#{branch}", current=p.page == page)
                for p in curve.points if (value := p.latency_ms(statistic, latency)) is not None)
            if points:
                out.append(ChartLine(f"{name} {statistic}", colour, points, dashed=statistic != "median"))
    return out


def curves_section(page: str, branch: str, curves: Sequence[EngineCurve], workload: str, history: History) -> str:
    """TTFT and TPOT against output throughput for the newest run of each engine of the page's test."""
    charts = []
    for latency, name in LATENCY_NAMES.items():
        lines = _curve_lines(curves, latency, page, branch)
        if lines:
            charts.append(line_chart(f"{name} against output throughput", lines,
                                     Axis("output throughput (tokens/s)", from_zero=True),
                                     Axis(f"{name} (ms)", from_zero=True)) + legend(lines))
    if not charts:
        return ""
    runs = "; ".join(f"{engine}: {_run_text(history, run_id)}"
                     for engine, run_id in dict.fromkeys((c.engine, c.run_id) for c in curves))
    return (f'<section class="chart serving curves" data-branch="{_esc(branch)}"><h2>Latency against throughput: '
            f"the newest run of each engine, workload {_esc(workload)}</h2>"
            f'<p class="links">each point is a load point, joined in order of request rate or concurrency; '
            f"solid: median, dashed: p99; the ring is this page's load point, a click opens a point's page. "
            f"Runs: {_esc(runs)}</p>{''.join(charts)}</section>")


def serving_sections(page: str, workload: str, percentiles: Sequence[PercentileChart],
                     curves: Mapping[str, Sequence[EngineCurve]], history: History) -> str:
    """Every serving section of a load point's page, each branch's in turn ("" for a page without any)."""
    branches = sorted({c.branch for c in percentiles} | set(curves))
    return "".join(
        "".join(percentile_section(c, history) for c in percentiles if c.branch == branch)
        + curves_section(page, branch, curves.get(branch, ()), workload, history)
        for branch in branches)
