"""Line charts as inline SVG, drawn when the site is built: lines of points on two linear axes, with vertical
rules (change points), a hover text per point and, optionally, a link per point.

For the charts whose x is not one series' run time (a latency against a throughput), or that draw several
series of a page together; like the overview's sparklines, they need no script. Every text is escaped.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

#: marks at every point of a line of at most this many points; a longer one is a line only
MARKED_POINTS = 200
#: colours of lines in turn (those of the site's other charts)
PALETTE = ("#1f6feb", "#cf222e", "#1a7f37", "#9a6700", "#8250df", "#0a3069", "#bf3989")
_MARGIN_LEFT, _MARGIN_RIGHT, _MARGIN_TOP, _MARGIN_BOTTOM = 64, 16, 22, 40


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


@dataclass(frozen=True)
class ChartPoint:
    x: float
    y: float
    #: what hovering the point shows
    title: str
    #: the page the point links to, if any
    href: str | None = None
    #: drawn larger: the point the page is about
    current: bool = False


@dataclass(frozen=True)
class ChartLine:
    label: str
    colour: str
    points: tuple[ChartPoint, ...]
    dashed: bool = False


@dataclass(frozen=True)
class ChartRule:
    """A vertical rule across the plot at ``x``, labelled at its top."""

    x: float
    label: str
    colour: str


def number_text(value: float) -> str:
    """A tick's text: up to four significant digits, thousands as "k"."""
    if abs(value) >= 10_000:
        return f"{value / 1000:.4g}k"
    return f"{value:.4g}"


def time_text(span_s: float) -> Callable[[float], str]:
    """A time tick's text (seconds since the epoch, shown in UTC): the date, and the time of day when the axis
    spans less than three days."""
    pattern = "%m-%d %H:%M" if span_s < 3 * 86400 else "%Y-%m-%d"
    return lambda epoch_s: datetime.fromtimestamp(epoch_s, UTC).strftime(pattern)


@dataclass(frozen=True)
class Axis:
    label: str
    #: a tick's value -> its text
    text: Callable[[float], str] = number_text
    #: whether the axis starts at zero (a latency against throughput) or at the lowest value (a history)
    from_zero: bool = False
    #: round-number ticks; False: evenly spaced ticks (for times, whose round numbers are not dates)
    round_ticks: bool = True
    #: how far the axis reaches either side of values that are all the same; None: a tenth of the value
    flat_reach: float | None = None


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round values (1, 2, 2.5 or 5 times a power of ten apart) from at or below ``low`` to at or
    above ``high``."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        raise ValueError(f"ticks need a finite range with low < high, not [{low}, {high}]")
    raw = (high - low) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    # rounded first: a bound a hair past a tick (20.000001 / 5e-7 = 40000002.0000001) is on it
    first, last = math.floor(round(low / step, 6)), math.ceil(round(high / step, 6))
    return [float(f"{i * step:.12g}") for i in range(first, last + 1)]


def _range(values: Sequence[float], axis: Axis) -> tuple[float, float]:
    """The range of the values (from zero, if asked), widened around a value that does not vary."""
    low, high = (min(0.0, *values) if axis.from_zero else min(values)), max(values)
    if high - low <= 1e-9 * max(abs(high), abs(low)):
        pad = axis.flat_reach if axis.flat_reach is not None else abs(high) * 0.1 or 1.0
        return (low if axis.from_zero else low - pad), high + pad
    return low, high


def _ticks(axis: Axis, low: float, high: float) -> tuple[list[float], float, float]:
    """The ticks of an axis and its range, widened to the outermost round ticks."""
    if not axis.round_ticks:
        return [low + (high - low) * i / 4 for i in range(5)], low, high
    ticks = nice_ticks(low, high)
    return ticks, min(ticks[0], low), max(ticks[-1], high)


def line_chart(title: str, lines: Sequence[ChartLine], x_axis: Axis, y_axis: Axis, *,
               rules: Sequence[ChartRule] = (), width: int = 900, height: int = 280) -> str:
    """An ``<svg>`` of these lines (each in its own ``<g class="line" data-label=...>``), rules and axes."""
    xs = [p.x for line in lines for p in line.points] + [r.x for r in rules]
    ys = [p.y for line in lines for p in line.points]
    if not ys:
        raise ValueError(f"chart {title!r} has no points to draw")
    x_ticks, x_low, x_high = _ticks(x_axis, *_range(xs, x_axis))
    y_ticks, y_low, y_high = _ticks(y_axis, *_range(ys, y_axis))
    left, right = _MARGIN_LEFT, width - _MARGIN_RIGHT
    top, bottom = _MARGIN_TOP, height - _MARGIN_BOTTOM

    def px(x: float) -> float:
        return left + (x - x_low) / (x_high - x_low) * (right - left)

    def py(y: float) -> float:
        return bottom - (y - y_low) / (y_high - y_low) * (bottom - top)

    parts = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(title)}" font-size="11" '
             f'font-family="system-ui, sans-serif">',
             f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" fill="none" '
             f'stroke="#d1d9e0"/>', '<g class="axes" fill="#59636e">']
    for t in y_ticks:
        parts.append(f'<line x1="{left}" x2="{right}" y1="{py(t):.1f}" y2="{py(t):.1f}" stroke="#eaeef2"/>'
                     f'<text x="{left - 4}" y="{py(t) + 4:.1f}" text-anchor="end">{_esc(y_axis.text(t))}</text>')
    for i, t in enumerate(x_ticks):  # evenly spaced ticks end at the plot's edge: the last text ends there
        anchor = "end" if not x_axis.round_ticks and i == len(x_ticks) - 1 else "middle"
        parts.append(f'<line x1="{px(t):.1f}" x2="{px(t):.1f}" y1="{bottom}" y2="{bottom + 4}" stroke="#8c959f"/>'
                     f'<text x="{px(t):.1f}" y="{bottom + 16}" text-anchor="{anchor}">{_esc(x_axis.text(t))}</text>')
    parts.append(f'<text x="{(left + right) / 2:.1f}" y="{height - 4}" text-anchor="middle">'
                 f'{_esc(x_axis.label)}</text>'
                 f'<text x="12" y="{(top + bottom) / 2:.1f}" text-anchor="middle" '
                 f'transform="rotate(-90 12 {(top + bottom) / 2:.1f})">{_esc(y_axis.label)}</text></g>')
    for i, rule in enumerate(rules):
        x = px(rule.x)
        parts.append(f'<g class="rule" data-label="{_esc(rule.label)}"><line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" '
                     f'y2="{bottom}" stroke="{_esc(rule.colour)}" stroke-dasharray="5 4"/>'
                     f'<text x="{x + 3:.1f}" y="{top + 10 + 11 * (i % 3)}" fill="{_esc(rule.colour)}">'
                     f"{_esc(rule.label)}</text></g>")
    for line in lines:
        dash = ' stroke-dasharray="6 4"' if line.dashed else ""
        coordinates = " ".join(f"{px(p.x):.1f},{py(p.y):.1f}" for p in line.points)
        parts.append(f'<g class="line" data-label="{_esc(line.label)}" stroke="{_esc(line.colour)}" '
                     f'fill="{_esc(line.colour)}"><polyline fill="none" stroke-width="1.8"{dash} '
                     f'points="{coordinates}"/>')
        if len(line.points) <= MARKED_POINTS:
            for p in line.points:
                looks = ' r="5" class="current" fill="#ffffff" stroke-width="2"' if p.current else ' r="3"'
                mark = (f'<circle cx="{px(p.x):.1f}" cy="{py(p.y):.1f}"{looks}>'
                        f"<title>{_esc(p.title)}</title></circle>")
                parts.append(f'<a href="{_esc(p.href)}">{mark}</a>' if p.href else mark)
        parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)


def legend(lines: Sequence[ChartLine]) -> str:
    """The lines' labels with a swatch of each, as HTML beside a chart."""
    items = []
    for line in lines:
        dash = ' stroke-dasharray="6 4"' if line.dashed else ""
        items.append(f'<span style="margin-right:14px;white-space:nowrap"><svg width="26" height="10" '
                     f'aria-hidden="true"><line x1="1" x2="25" y1="5" y2="5" stroke="{_esc(line.colour)}" '
                     f'stroke-width="2"{dash}/></svg> {_esc(line.label)}</span>')
    return f'<p class="legend" style="font-size:12px;margin:2px 0 0">{"".join(items)}</p>'
