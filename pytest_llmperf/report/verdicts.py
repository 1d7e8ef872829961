"""The gate's verdicts for people: a terminal table and Markdown (a pull-request comment, a job summary).

Regressions come first, then inconclusive comparisons, then improvements, then the unchanged ones.
"""

from __future__ import annotations

import shlex
from collections import Counter
from collections.abc import Sequence

from rich import box
from rich.markup import escape
from rich.table import Table

from pytest_llmperf.gate.verdict import OUTCOME_ORDER, Outcome, Verdict
from pytest_llmperf.units import format_value

_COLUMNS = ("outcome", "test", "batch", "metric", "base", "head", "change", "ratio", "95% CI", "statistic", "p", "n",
            "min effect", "baseline", "notes")


def _outcome(v: Verdict) -> str:
    if v.outcome is Outcome.REGRESSED and v.comparison.accepted:
        return "regressed (accepted)"
    return v.outcome.value


def _cells(v: Verdict) -> list[str]:
    e, s = v.evidence, v.subject
    if e is None:
        base = head = change = ratio = ci = statistic = "-"
    else:
        base, head = format_value(s.metric, e.base), format_value(s.metric, e.head)
        change = ("+" if e.abs_change >= 0 else "-") + format_value(s.metric, abs(e.abs_change))
        ratio = f"{e.ratio:.3f}"
        ci = f"{e.ci_low:.3f}-{e.ci_high:.3f}" if e.method != "tolerance" else "-"
        statistic = "-" if e.statistic is None else f"t={e.statistic:.3g}"
    p = "-" if v.p_worse is None else f"{v.p_worse:.2g}"
    n = "-" if e is None else f"{e.n_base}/{e.n_head}"
    batch = s.point.batch_size
    return [_outcome(v), s.test_id, "-" if batch is None else str(batch), s.metric, base, head, change, ratio, ci,
            statistic, p, n, f"{v.comparison.min_effect:.0%}", v.comparison.baseline, "; ".join(v.notes)]


def ordered(verdicts: Sequence[Verdict]) -> list[Verdict]:
    return sorted(verdicts, key=lambda v: (OUTCOME_ORDER.index(v.outcome), v.comparison.accepted is not None,
                                           v.subject.label))


def verdict_table(verdicts: Sequence[Verdict]) -> Table:
    table = Table(box=box.SIMPLE_HEAD)
    for column in _COLUMNS:
        table.add_column(column, justify="right" if column in ("batch", "change", "ratio", "p", "n", "min effect")
                         else "left")
    for v in ordered(verdicts):
        table.add_row(*(escape(c) for c in _cells(v)))
    return table


def headline(verdicts: Sequence[Verdict]) -> str:
    counts = Counter(v.outcome for v in verdicts)
    failing = sum(v.fails for v in verdicts)
    parts = [f"{counts[o]} {o.value}" for o in OUTCOME_ORDER if counts[o]]
    verdict = "FAIL: a regression" if failing else "pass"
    return f"llmperf gate: {verdict} ({', '.join(parts) or 'nothing compared'})"


def _md(text: str) -> str:
    """A Markdown table cell: pipes, backticks and HTML neutralised, one line."""
    return (text.replace("\\", "\\\\").replace("|", "\\|").replace("`", "'").replace("<", "&lt;")
            .replace(">", "&gt;").replace("\n", " "))


def verdict_markdown(verdicts: Sequence[Verdict], *, title: str, reproduce: str | None = None) -> str:
    """``reproduce``: a command with ``{test}`` where the (shell-quoted) test id goes, shown per regressed test."""
    lines = [f"### {_md(title)}", "", f"**{_md(headline(verdicts))}**", ""]
    if verdicts:
        lines += ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
        lines += ["| " + " | ".join(_md(c) for c in _cells(v)) + " |" for v in ordered(verdicts)]
    regressions = [v for v in ordered(verdicts) if v.fails]
    if regressions and reproduce:
        lines += ["", "Reproduce:", ""]
        for test_id in dict.fromkeys(v.subject.test_id for v in regressions):
            lines.append(f"- `{reproduce.replace('{test}', shlex.quote(test_id)).replace('`', '')}`")
    return "\n".join(lines) + "\n"
