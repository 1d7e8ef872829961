"""``llmperf dashboard``: a static site built from the history alone.

Works from a file or any static host, offline: its script and styles ship inside this package (uPlot,
MIT, for the charts). Every string from the history reaches HTML escaped, and JSON inside a script tag
cannot close it. Layout of the output folder::

    index.html              every series with its latest value, change, sparkline and flags (a gate verdict,
                            the latest change point, a recent shift); filters
    series/<page>.html      one configuration: each metric's history, trial spread, budget, change points,
                            recent shift; the same model's backends side by side. A serving load point's page
                            also draws its TTFT and TPOT percentiles together over runs, and its test's latency
                            against throughput for the newest run of each engine (inline SVG)
    data/<page>.js          the points of that page (a script, so that pages work from file:// too); each
                            chart exports its series as CSV or JSON from these, in the browser
    assets/                 uPlot, dashboard.js, dashboard.css
"""

from __future__ import annotations

import html
import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

from pytest_llmperf.dashboard.changepoints import (
    DEFAULT_CHANGE_POINTS,
    ChangePoint,
    ChangePointConfig,
    detect_change_points,
)
from pytest_llmperf.dashboard.history import (
    DASHBOARD_METRICS,
    History,
    Series,
    holds_page,
    load_history,
    pages,
    row_pages,
)
from pytest_llmperf.dashboard.recent import RecentShift, recent_shifts
from pytest_llmperf.dashboard.serving import latency_throughput_curves, percentile_charts
from pytest_llmperf.dashboard.serving_page import BRANCH_SCRIPT, serving_sections
from pytest_llmperf.gate.verdict import Outcome, worse_change
from pytest_llmperf.history.errors import DEFAULT_FLAG
from pytest_llmperf.measure.metrics import Better, metric
from pytest_llmperf.series import SeriesKey
from pytest_llmperf.units import format_value

STATIC = Path(__file__).parent / "static"
ASSETS = ("uPlot.iife.min.js", "uPlot.min.css", "uPlot.LICENSE", "dashboard.js", "dashboard.css")
#: points in an overview sparkline, and runs the latest value is compared with
SPARK_POINTS = 40
PREVIOUS_RUNS = 10


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def script_json(data: Any) -> str:
    """JSON to embed in a <script>: no "</script>" or "<!--" can end or confuse the element."""
    return json.dumps(data, separators=(",", ":")).replace("<", "\\u003c").replace(">", "\\u003e") \
        .replace("&", "\\u0026").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


@dataclass(frozen=True)
class Row:
    """One overview row: a series on a branch. Rows are sorted what got worse first: regressions, then by the
    largest of the latest change point's step, the recent shift and the latest value's change, in the worse
    direction."""

    series: Series
    latest: float
    #: latest against the median of the runs before it, as a fraction; positive: worse
    worse_change: float | None
    change_points: tuple[ChangePoint, ...]
    regressed: bool
    #: the newest runs' shift by the gate's rule, all rows of the build judged together; None: none found
    recent: RecentShift | None = None


def _worse_change(s: Series) -> float | None:
    if len(s.values) < 2:
        return None
    before = median(s.values[-1 - PREVIOUS_RUNS:-1])
    if before == 0:
        return None
    ratio = s.values[-1] / before
    return 1 - ratio if metric(s.subject.metric).better is Better.HIGHER else ratio - 1


def overview_rows(history: History, config: ChangePointConfig) -> list[Row]:
    shifts = recent_shifts(history.series.values())
    rows = []
    for s in history.series.values():
        points = detect_change_points(s.values, config) if len(s.values) >= 2 * config.min_segment else []
        regressed = history.verdicts.get((s.subject.digest(), s.run_ids[-1])) == "regressed"
        rows.append(Row(s, s.values[-1], _worse_change(s), tuple(points), regressed,
                        shifts.get((s.subject.digest(), s.branch))))
    return worst_first(rows)


def worst_first(rows: Sequence[Row]) -> list[Row]:
    """The overview's order: the gate's regressions, then by how much worse a series got (``_worsening``)."""
    return sorted(rows, key=lambda r: (not r.regressed, -_worsening(r), r.series.subject.label))


def _worsening(row: Row) -> float:
    """How much worse a series got: its latest change point's step, its recent shift or its latest value's
    change, the largest."""
    better = metric(row.series.subject.metric).better
    steps = [c.relative_change if better is Better.LOWER else -c.relative_change for c in row.change_points[-1:]]
    if row.recent is not None:
        steps.append(worse_change(row.recent.evidence.ratio, better))
    return max([*steps, row.worse_change if row.worse_change is not None else 0.0])


def sparkline(values: Sequence[float], width: int = 120, height: int = 24) -> str:
    values = list(values)[-SPARK_POINTS:]
    if len(values) < 2:
        return f'<svg class="spark" width="{width}" height="{height}"></svg>'
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    step = (width - 2) / (len(values) - 1)
    points = " ".join(f"{i * step + 1:.1f},{height - 2 - (v - low) / span * (height - 4):.1f}"
                      for i, v in enumerate(values))
    return (f'<svg class="spark" width="{width}" height="{height}" role="img" aria-label="last {len(values)} runs">'
            f'<polyline fill="none" stroke="currentColor" stroke-width="1.2" points="{points}"/></svg>')


def _change_cell(change: float | None) -> str:
    if change is None:
        return '<td class="num">-</td>'
    cls = "worse" if change > 0.005 else "better" if change < -0.005 else ""
    return f'<td class="num {cls}" data-sort="{change:.6f}">{change:+.1%} {"worse" if change > 0 else "better"}</td>'


def _flags(row: Row, history: History) -> str:
    flags = []
    if row.regressed:
        flags.append('<span class="flag regressed">regressed</span>')
    if row.change_points:
        last = row.change_points[-1]
        run = history.runs[row.series.run_ids[last.index]]
        where = f"at {run.started_at} ({(run.commit or '')[:12]})"
        flags.append(f'<span class="flag changepoint" title="{esc(where)}">'
                     f"change point {last.relative_change:+.1%}</span>")
    if row.recent is not None:
        flags.append(_recent_flag(row.recent, history))
    return " ".join(flags)


def _window(shift: RecentShift) -> str:
    return "the newest run" if shift.window == 1 else f"the newest {shift.window} runs"


def _commits(shift: RecentShift, history: History) -> str:
    """The window's commit range, oldest..newest ("?" for a run without one)."""
    first, last = ((history.runs[r].commit or "?")[:12] for r in (shift.run_ids[0], shift.run_ids[-1]))
    return first if first == last else f"{first}..{last}"


def _recent_flag(shift: RecentShift, history: History) -> str:
    e = shift.evidence
    direction = "worse" if shift.outcome is Outcome.REGRESSED else "better"
    first, last = history.runs[shift.run_ids[0]], history.runs[shift.run_ids[-1]]
    when = first.started_at if first is last else f"{first.started_at} to {last.started_at}"
    title = (f"{direction}: {_window(shift)} ({when}) against the {e.n_base} runs before; "
             f"p = {shift.p_value:.2g}, adjusted for every series of this overview")
    return (f'<span class="flag recent {direction}" title="{esc(title)}">recent shift {shift.change:+.1%} in '
            f"{esc(_window(shift))} <code>{esc(_commits(shift, history))}</code></span>")


def _load_point(subject: SeriesKey) -> str:
    """A series' place on its load axes, as the overview lists it: "8" (a batch), "request_rate=2 p32o32" (a
    serving load point and its workload), "-" (once per load)."""
    if subject.workload is not None:
        return f"{subject.point.label} {subject.workload}".strip()
    return "-" if subject.point.batch_size is None else str(subject.point.batch_size)


def render_overview(history: History, rows: list[Row], default_branch: str,
                    links: dict[tuple[str, str], str] | None = None) -> str:
    """The overview; ``links``: the page each row links to (``row_pages``), by (series key, branch); a series
    not in it links to its own page key."""
    body = []
    for row in rows:
        s, subject = row.series, row.series.subject
        page = (links or {}).get((subject.digest(), s.branch), s.page)
        run = history.runs[s.run_ids[-1]]
        variant = "" if subject.variant == "default" else " " + esc(subject.variant)
        batch = _load_point(subject)
        body.append(
            f'<tr data-model="{esc(subject.model_id)}" data-backend="{esc(subject.backend)}" '
            f'data-device="{esc(s.device)}" data-branch="{esc(s.branch)}" data-metric="{esc(subject.metric)}">'
            f'<td class="test"><a href="series/{esc(page)}.html#{esc(s.branch)}" title="{esc(subject.test_id)}">'
            f"{esc(subject.test_id.rsplit('::', 1)[-1])}</a></td>"
            f"<td>{esc(subject.model_id)}</td><td>{esc(subject.backend)}{variant}</td>"
            f'<td class="num">{subject.world_size}</td><td class="num">{esc(batch)}</td>'
            f"<td>{esc(subject.metric)}</td><td>{esc(s.device)}</td><td>{esc(s.branch)}</td>"
            f'<td class="num">{esc(format_value(subject.metric, row.latest))}</td>{_change_cell(row.worse_change)}'
            f"<td>{sparkline(s.values)}</td><td>{_flags(row, history)}</td>"
            f'<td class="num">{len(s.values)}</td><td>{esc(run.started_at[:16].replace("T", " "))}</td></tr>')
    filters = "".join(
        f'<label>{name} <select data-filter="{name}"><option value="">all</option>'
        + "".join(f'<option{" selected" if name == "branch" and v == default_branch else ""}>{esc(v)}</option>'
                  for v in sorted({value(r.series) for r in rows}))
        + "</select></label>"
        for name, value in (("model", lambda s: s.subject.model_id), ("backend", lambda s: s.subject.backend),
                            ("device", lambda s: s.device), ("branch", lambda s: s.branch),
                            ("metric", lambda s: s.subject.metric)))
    header = "".join(f"<th>{h}</th>" for h in ("test", "model", "backend", "world", "batch / load point", "metric",
                                                "device", "branch", "latest", f"vs previous {PREVIOUS_RUNS}",
                                                f"last {SPARK_POINTS} runs", "flags", "runs", "latest run"))
    return _page("llmperf dashboard", f"""
<header><h1>llmperf dashboard</h1><p>{len(history.runs)} runs, {len(rows)} series · worse first</p></header>
<nav class="filters">{filters} <span id="shown"></span></nav>
<table id="overview"><thead><tr>{header}</tr></thead><tbody>{"".join(body)}</tbody></table>
""", root="", scripts=("dashboard.js",), init="LLMPerf.overview()")


def _page(title: str, body: str, *, root: str, scripts: Sequence[str], init: str, data: str | None = None) -> str:
    tags = "".join(f'<script src="{root}assets/{name}"></script>' for name in scripts)
    data_tag = f'<script src="{esc(data)}"></script>' if data else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<link rel="stylesheet" href="{root}assets/uPlot.min.css"><link rel="stylesheet" '
            f'href="{root}assets/dashboard.css"></head><body>{body}{tags}{data_tag}'
            f"<script>{init};</script></body></html>\n")


def _round(value: float | None) -> float | None:
    return None if value is None else float(f"{value:.6g}")


class _RunTable:
    """The runs of one page, each once: series refer to them by index (a run is on every metric's chart)."""

    def __init__(self, history: History):
        self._history = history
        self._index: dict[str, int] = {}
        self.rows: list[list[Any]] = []
        self._envs: dict[str, int] = {}
        self.envs: list[dict[str, Any]] = []

    def index(self, run_id: str) -> int:
        if run_id not in self._index:
            run = self._history.runs[run_id]
            if run.env not in self._envs:
                self._envs[run.env] = len(self.envs)
                self.envs.append({"device": run.device, "versions": {
                    k: run.environment.get(k) for k in ("driver", "cuda", "torch", "transformers", "accelerate",
                                                        "deepspeed") if run.environment.get(k)}})
            self._index[run_id] = len(self.rows)
            self.rows.append([run_id, run.started_at, (run.commit or "")[:12], self._envs[run.env], run.reproduce()])
        return self._index[run_id]


def _recent_data(shift: RecentShift | None, history: History) -> dict[str, Any] | None:
    if shift is None:
        return None
    return {"change": round(shift.change, 4), "window": shift.window, "outcome": shift.outcome.value,
            "commits": _commits(shift, history)}


def _series_data(s: Series, history: History, points: list[ChangePoint], recent: RecentShift | None,
                 runs: _RunTable) -> dict[str, Any]:
    subject = s.subject
    x = [history.runs[r].epoch_s for r in s.run_ids]
    oom = [history.runs[r].epoch_s for t, b, r in history.oom
           if (t, b) == (subject.test_id, subject.point.batch_size) and history.runs[r].branch == s.branch]
    commits = [(history.runs[r].commit or "")[:12] for r in s.run_ids]
    return {
        "key": subject.digest(), "metric": subject.metric, "unit": s.unit,
        "better": metric(subject.metric).better.value, "branch": s.branch, "label": s.subject.label, "budget": s.budget,
        "backend": subject.backend, "variant": subject.variant, "test": subject.test_id, "model": subject.model_id,
        "dtype": subject.dtype, "world_size": subject.world_size, "batch": subject.point.batch_size,
        "device": s.device, "x": x, "y": [_round(v) for v in s.values],
        "q1": [_round(v) for v in s.q1], "q3": [_round(v) for v in s.q3], "run": [runs.index(r) for r in s.run_ids],
        "changepoints": [{"index": c.index, "x": x[c.index], "change": round(c.relative_change, 4),
                          "from": commits[c.index - 1], "to": commits[c.index]} for c in points],
        "recent": _recent_data(recent, history),
        "oom": sorted(oom),
    }


def _headline(members: list[Series]) -> str:
    """The metric the backends of a page are compared by: a serving load point's output throughput, a
    generate's tokens/s."""
    return "output_throughput" if any(s.subject.workload is not None for s in members) else "tokens_per_s"


def _siblings(members: list[Series], by_page: dict[str, list[Series]]) -> list[Series]:
    """The same model's other backends (and variants): same test function, dtype, batch (or serving load point
    and workload), world size and device."""
    headline = _headline(members)
    first = next((s for s in members if s.subject.metric == headline), None)
    if first is None:
        return []

    def comparable(s: Series) -> tuple[object, ...]:
        u = s.subject
        return (u.metric, u.test_id.split("[", 1)[0], u.model_id, u.dtype, u.point.batch_size, u.world_size, s.env,
                tuple(u.point.extra().items()), u.workload)

    return [s for page in by_page.values() for s in page if comparable(s) == comparable(first)]


def render_series_page(page: str, members: list[Series], siblings: list[Series], serving: str = "") -> str:
    """A configuration's page; ``serving``: the sections of a serving load point (``serving_sections``)."""
    first = next((s for s in members if holds_page(s.subject)), members[0])
    u = first.subject
    title = f"{u.test_id} · {u.backend}" + ("" if u.variant == "default" else f" {u.variant}")
    if u.workload is not None:
        title += f" · {_load_point(u)}"
        where = f"load point {u.point.label or '-'} · workload {u.workload}"
    else:
        where = f"batch {u.point.batch_size if u.point.batch_size is not None else '-'}"
    facts = f"model {u.model_id} ({u.dtype}) · world size {u.world_size} · {where} · device {first.device}"
    branches = sorted({s.branch for s in members})
    options = "".join(f"<option>{esc(b)}</option>" for b in branches)
    return _page(title, f"""
<header><a href="../index.html">← all series</a><h1>{esc(title)}</h1><p>{esc(facts)}</p>
<label>branch <select id="branch">{options}</select></label></header>
{serving}<main id="charts"></main>
<section><h2>Backends side by side: {_headline(members)}</h2><div id="siblings"></div></section>
<div id="tooltip" class="tooltip" hidden></div>
""", root="../", scripts=("uPlot.iife.min.js", "dashboard.js"),
                 init="LLMPerf.seriesPage()" + (f";{BRANCH_SCRIPT}" if serving else ""), data=f"../data/{page}.js")


def _chart_order(members: list[Series]) -> Callable[[Series], tuple[object, ...]]:
    """The order of a page's charts: by ``DASHBOARD_METRICS``, then branch; on a serving load point's page the
    serving metrics before those of the server's load."""
    serving = any(s.subject.workload is not None for s in members)

    def order(s: Series) -> tuple[object, ...]:
        return (serving and s.subject.workload is None, DASHBOARD_METRICS.index(s.subject.metric), s.branch)

    return order


def build_dashboard(db: Path, out: Path, *, default_branch: str = "main",
                    config: ChangePointConfig = DEFAULT_CHANGE_POINTS, flag: str = DEFAULT_FLAG) -> dict[str, int]:
    """Build the site into ``out`` (replacing what a previous build left); returns counts of what it wrote.
    The history file is only read (HistoryError when it cannot be used; ``flag`` names it in the message)."""
    history = load_history(db, flag=flag)
    rows = overview_rows(history, config)
    for name in ("series", "data", "assets"):
        shutil.rmtree(out / name, ignore_errors=True)
        (out / name).mkdir(parents=True)
    for name in ASSETS:
        shutil.copyfile(STATIC / name, out / "assets" / name)
    by_page = pages(history)
    by_series = {(r.series.subject.digest(), r.series.branch): r for r in rows}
    percentiles = percentile_charts(history, {key: r.change_points for key, r in by_series.items()}, config)
    curves = latency_throughput_curves(history)
    for page, members in by_page.items():
        members = sorted(members, key=_chart_order(members))
        holder = next((s for s in members if holds_page(s.subject)), members[0])
        serving = "" if holder.subject.workload is None else serving_sections(
            page, holder.subject.workload, percentiles.get(page, []), curves.get(page, {}), history)
        siblings = _siblings(members, by_page)
        runs = _RunTable(history)
        series = [_series_data(s, history, list(by_series[(s.subject.digest(), s.branch)].change_points),
                               by_series[(s.subject.digest(), s.branch)].recent, runs) for s in members]
        data = {"series": series, "runs": runs.rows, "envs": runs.envs,
                "siblings": [{"label": s.subject.backend + ("" if s.subject.variant == "default"
                                                            else f" {s.subject.variant}"),
                              "branch": s.branch, "x": [history.runs[r].epoch_s for r in s.run_ids],
                              "y": [_round(v) for v in s.values]} for s in siblings]}
        (out / "data" / f"{page}.js").write_text(f"window.LLMPERF_PAGE={script_json(data)};\n")
        (out / "series" / f"{page}.html").write_text(render_series_page(page, members, siblings, serving))
    (out / "index.html").write_text(render_overview(history, rows, default_branch, row_pages(by_page)))
    return {"runs": len(history.runs), "series": len(rows), "pages": len(by_page),
            "points": sum(len(s.values) for s in history.series.values())}
