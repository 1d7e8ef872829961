"""From evidence to an outcome: the gate's rule, applied to every comparison of a run at once.

Error control is per run: a run of the same code against itself fails in at most ``alpha`` (1 %) of runs,
however many series it gates. The gated comparisons (``Comparison.gated``: one primary metric per
measurement, see ``measure.metrics.GATED_METRICS``) share that level by Bonferroni, which holds under any
dependence between series (and the metrics of one batch are nearly the same measurement, so only one of
them is gated); a comparison that tests several windows of the history counts once per window. Within a
comparison, successive looks of a sequential A/B run spend the level by a group-sequential design
(``sequential``), so extra rounds never test again at the full level.

* ``regressed``: the worse-direction p-value is under the look's level (the run's level over all its gated
  tests, windows included), and the estimated change is at least the minimum effect. ``improved`` is the
  mirror image.
* ``unchanged``: only from an interval: the worse end of a one-sided ``1 - EQUIVALENCE_ALPHA`` bound (spent
  over the looks like the level) lies within the minimum effect, so a real change of twice the minimum
  effect is called unchanged in well under 1 % of runs. For a history comparison every window's bound must.
* ``inconclusive``: anything else, with the change this run could have detected (80 % power) so that a
  warning says what more processes would buy; never a silent pass.

Deterministic metrics have no p-value: their change is held against the minimum effect as a tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from pytest_llmperf.gate.evidence import Evidence
from pytest_llmperf.gate.plan import quantile, z_sum
from pytest_llmperf.gate.sequential import nominal_level
from pytest_llmperf.gate.spec import DEFAULT_MIN_EFFECT
from pytest_llmperf.measure.metrics import Better, metric
from pytest_llmperf.series import SeriesKey

#: the share of runs of unchanged code that may fail (per run, over every gated series)
DEFAULT_ALPHA = 0.01
#: the chance that a change at the minimum effect is called unchanged (per comparison)
EQUIVALENCE_ALPHA = 0.01
#: the power at which a run's detectable change is stated
STATED_POWER = 0.8


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

    subject: SeriesKey
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
    #: a gated comparison can fail the run and shares its error rate; the others are reported
    gated: bool = True
    #: every window of the history tested (``evidence`` is the one most against the head); () for one test
    windows: tuple[Evidence, ...] = ()

    @property
    def tests(self) -> int:
        """How many tests the comparison makes: its share of the run's level."""
        return max(1, len(self.windows))


@dataclass(frozen=True)
class Look:
    """Where a sequential A/B run stands: after ``rounds`` rounds of a design that looks after every round
    from ``first`` to ``planned``; ``final`` when the run stops here. The default is a single, final look."""

    rounds: int = 1
    first: int = 1
    planned: int = 1
    final: bool = True

    def level(self, alpha: float) -> float:
        return nominal_level(alpha, self.rounds, first=self.first, planned=self.planned, final=self.final)


@dataclass(frozen=True)
class Verdict:
    comparison: Comparison
    outcome: Outcome
    #: the worse direction's p-value times the gated tests of the run (Bonferroni); None for tolerance checks
    p_worse: float | None = None
    p_better: float | None = None
    notes: tuple[str, ...] = field(default=())
    #: the worse-direction change this comparison would have caught with 80 % power, as a fraction
    detectable: float | None = None

    @property
    def subject(self) -> SeriesKey:
        return self.comparison.subject

    @property
    def evidence(self) -> Evidence | None:
        return self.comparison.evidence

    @property
    def fails(self) -> bool:
        """A regression of a gated comparison fails the run unless it was accepted."""
        return self.outcome is Outcome.REGRESSED and self.comparison.accepted is None and self.comparison.gated


def worse_change(ratio: float, better: Better) -> float:
    """How much worse head is than base, as a fraction (negative: better)."""
    return 1.0 - ratio if better is Better.HIGHER else ratio - 1.0


def _worse_log(log_change: float, better: Better) -> float:
    return -log_change if better is Better.HIGHER else log_change


def _as_change(worse_log: float, better: Better) -> float:
    """A worse-direction log change as a fraction of the metric (a 20 % throughput loss is 0.2)."""
    if worse_log > 700:  # beyond any float ratio: an interval too wide to say anything
        return 1.0 if better is Better.HIGHER else math.inf
    return worse_change(math.exp(-worse_log if better is Better.HIGHER else worse_log), better)


def _sides(evidence: Evidence, better: Better) -> tuple[float | None, float | None]:
    """(p that head is worse, p that head is better), raw."""
    if better is Better.HIGHER:
        return evidence.p_lower, evidence.p_higher
    return evidence.p_higher, evidence.p_lower


def worst_plausible(e: Evidence, better: Better, level: float) -> float:
    """The worse end of the one-sided ``1 - level`` bound on the change, as a fraction."""
    if e.se_log is None or not math.isfinite(e.se_log):
        return math.inf
    return _as_change(_worse_log(e.log_change, better) + quantile(level, e.df) * e.se_log, better)


def detectable_change(e: Evidence, better: Better, level: float, power: float = STATED_POWER) -> float | None:
    """The worse change a comparison with this standard error catches with ``power`` at ``level``."""
    if e.se_log is None:
        return None
    if not math.isfinite(e.se_log):
        return math.inf
    return _as_change(z_sum(level, power, e.df) * e.se_log, better)


def _outcome(c: Comparison, raw: tuple[float | None, float | None], level: float, equivalence: float,
             ) -> tuple[Outcome, str, float | None]:
    if c.known is not None:
        return c.known, "", None
    if c.evidence is None:
        return Outcome.INCONCLUSIVE, c.note or "nothing to compare with", None
    e = c.evidence
    better = metric(c.subject.metric).better
    worse = worse_change(e.ratio, better)
    p_worse, p_better = raw
    if p_worse is None:  # a deterministic metric: the change against the tolerance
        if worse > c.min_effect:
            return Outcome.REGRESSED, "", None
        if -worse > c.min_effect:
            return Outcome.IMPROVED, "", None
        return Outcome.UNCHANGED, "", None
    detectable = detectable_change(e, better, level)
    if p_worse <= level and worse >= c.min_effect:
        return Outcome.REGRESSED, "", detectable
    if p_better is not None and p_better <= level and -worse >= c.min_effect:
        return Outcome.IMPROVED, "", detectable
    bounds = [worst_plausible(w, better, equivalence) for w in (c.windows or (e,))]
    if max(bounds) < c.min_effect:
        return Outcome.UNCHANGED, "", detectable
    could = "no change (no noise estimate: more processes are needed)" if detectable is None or \
        not math.isfinite(detectable) else f"a {detectable:.0%} change"
    return Outcome.INCONCLUSIVE, (
        f"a change of {worse:+.1%} (worse end {max(bounds):+.1%}) is neither significant nor ruled out; "
        f"this run could have detected {could} with {STATED_POWER:.0%} power"), detectable


def judge(comparisons: Sequence[Comparison], *, alpha: float = DEFAULT_ALPHA, look: Look | None = None,
          ) -> list[Verdict]:
    """Every comparison's verdict, the run's level shared by its gated tests; regressions first."""
    look = look or Look()
    raw = [_sides(c.evidence, metric(c.subject.metric).better) if c.evidence else (None, None) for c in comparisons]
    tests = sum(c.tests for c, (pw, _) in zip(comparisons, raw, strict=True) if c.gated and pw is not None)
    level = look.level(alpha / max(tests, 1))
    equivalence = look.level(EQUIVALENCE_ALPHA)
    verdicts = []
    for c, (pw, pb) in zip(comparisons, raw, strict=True):
        outcome, note, detectable = _outcome(c, (pw, pb), level, equivalence)
        notes = tuple(n for n in (c.note, note) if n)
        if not c.gated and pw is not None:
            notes += ("reported, not gated",)
        if c.accepted and outcome is Outcome.REGRESSED:
            notes += (f"accepted: {c.accepted}",)
        adjust = max(tests, 1)
        verdicts.append(Verdict(c, outcome, None if pw is None else min(1.0, pw * adjust),
                                None if pb is None else min(1.0, pb * adjust), tuple(dict.fromkeys(notes)),
                                detectable))
    return sorted(verdicts, key=lambda v: (OUTCOME_ORDER.index(v.outcome), v.subject.label))
