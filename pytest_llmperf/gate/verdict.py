"""From evidence to an outcome: the gate's rule, applied to every comparison of a run at once.

A comparison is ``regressed`` only with both statistical evidence (its one-sided p-value, adjusted for
the number of comparisons by Benjamini-Hochberg, and for per-trial samples a confidence interval that
excludes "no change") and an effect of at least the minimum effect in the worse direction; ``improved``
is the mirror image. ``unchanged`` needs evidence too: the worse end of the
confidence interval must stay within the minimum effect, or for a comparison with history, the value itself.
Anything else is ``inconclusive``: a warning, never a silent pass. Deterministic metrics have no p-value:
their change is held against the minimum effect as a tolerance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from pytest_llmperf.gate.evidence import Evidence
from pytest_llmperf.gate.spec import DEFAULT_MIN_EFFECT
from pytest_llmperf.measure.metrics import Better, metric
from pytest_llmperf.series import Subject

DEFAULT_ALPHA = 0.05


class Outcome(StrEnum):
    REGRESSED = "regressed"
    IMPROVED = "improved"
    UNCHANGED = "unchanged"
    INCONCLUSIVE = "inconclusive"


#: the order of a report: what needs attention first
OUTCOME_ORDER = (Outcome.REGRESSED, Outcome.INCONCLUSIVE, Outcome.IMPROVED, Outcome.UNCHANGED)


@dataclass(frozen=True)
class Comparison:
    """A subject, the evidence about it, and the baseline it was compared with, before the rule is applied."""

    subject: Subject
    #: None when there was nothing to compare with; ``note`` says why
    evidence: Evidence | None
    baseline: str
    baseline_run_ids: tuple[str, ...] = ()
    min_effect: float = DEFAULT_MIN_EFFECT
    note: str = ""
    #: the reason a regression of this subject was accepted, if one was
    accepted: str | None = None
    #: an outcome known without statistics (a batch that ran out of memory on one side only); ``note`` says why
    known: Outcome | None = None


@dataclass(frozen=True)
class Verdict:
    comparison: Comparison
    outcome: Outcome
    #: the Benjamini-Hochberg adjusted p-value of the worse direction (None for tolerance checks)
    p_worse: float | None = None
    p_better: float | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def subject(self) -> Subject:
        return self.comparison.subject

    @property
    def evidence(self) -> Evidence | None:
        return self.comparison.evidence

    @property
    def fails(self) -> bool:
        """A regression fails the run unless it was accepted."""
        return self.outcome is Outcome.REGRESSED and self.comparison.accepted is None


def worse_change(ratio: float, better: Better) -> float:
    """How much worse head is than base, as a fraction (negative: better)."""
    return 1.0 - ratio if better is Better.HIGHER else ratio - 1.0


def _sides(evidence: Evidence, better: Better) -> tuple[float | None, float | None]:
    """(p that head is worse, p that head is better), raw."""
    if better is Better.HIGHER:
        return evidence.p_lower, evidence.p_higher
    return evidence.p_higher, evidence.p_lower


def _adjust(p_values: Sequence[float | None]) -> list[float | None]:
    """Benjamini-Hochberg over the p-values that exist; None stays None."""
    from scipy.stats import false_discovery_control

    present = [i for i, p in enumerate(p_values) if p is not None]
    adjusted: list[float | None] = [None] * len(p_values)
    if present:
        values = false_discovery_control(np.array([p_values[i] for i in present], dtype=float), method="bh")
        for i, v in zip(present, values, strict=True):
            adjusted[i] = float(v)
    return adjusted


def _outcome(c: Comparison, p_worse: float | None, p_better: float | None, alpha: float) -> tuple[Outcome, str]:
    if c.known is not None:
        return c.known, ""
    if c.evidence is None:
        return Outcome.INCONCLUSIVE, c.note or "nothing to compare with"
    e = c.evidence
    better = metric(c.subject.metric).better
    worse = worse_change(e.ratio, better)
    if p_worse is None:  # a deterministic metric: the change against the tolerance
        if worse > c.min_effect:
            return Outcome.REGRESSED, ""
        if -worse > c.min_effect:
            return Outcome.IMPROVED, ""
        return Outcome.UNCHANGED, ""
    if e.method == "prediction interval":
        # one current value against the history's spread: the t-test is the evidence, the value the effect
        worst_plausible = best_plausible = worse
    else:
        # per-trial samples: the interval, which process-to-process shifts widen, must exclude "no change" too
        low_end, high_end = (e.ci_low, e.ci_high) if better is Better.HIGHER else (e.ci_high, e.ci_low)
        worst_plausible, best_plausible = worse_change(low_end, better), worse_change(high_end, better)
    if p_worse < alpha and worse >= c.min_effect and best_plausible > 0:
        return Outcome.REGRESSED, ""
    if p_better is not None and p_better < alpha and -worse >= c.min_effect and worst_plausible < 0:
        return Outcome.IMPROVED, ""
    if worst_plausible < c.min_effect:
        return Outcome.UNCHANGED, ""
    return Outcome.INCONCLUSIVE, (
        f"a change of {worse:+.1%} (worse end {worst_plausible:+.1%}) is not significant at the "
        f"{alpha:g} level (adjusted p = {p_worse:.3g}): more trials or rounds would tell")


def judge(comparisons: Sequence[Comparison], *, alpha: float = DEFAULT_ALPHA) -> list[Verdict]:
    """Every comparison's verdict, with p-values adjusted over the whole family; regressions first."""
    raw = [_sides(c.evidence, metric(c.subject.metric).better) if c.evidence else (None, None) for c in comparisons]
    worse_adj = _adjust([w for w, _ in raw])
    better_adj = _adjust([b for _, b in raw])
    verdicts = []
    for c, pw, pb in zip(comparisons, worse_adj, better_adj, strict=True):
        outcome, note = _outcome(c, pw, pb, alpha)
        notes = tuple(n for n in (c.note, note) if n)
        if c.accepted and outcome is Outcome.REGRESSED:
            notes += (f"accepted: {c.accepted}",)
        verdicts.append(Verdict(c, outcome, pw, pb, tuple(dict.fromkeys(notes))))
    return sorted(verdicts, key=lambda v: (OUTCOME_ORDER.index(v.outcome), v.subject.label))
