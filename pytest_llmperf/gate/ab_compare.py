"""Same-job A/B: every series measured by the base processes of an A/B group against the head processes.

Each process counts once (the median of its trials, or its one value), judged against the between-process
noise pooled from earlier runs of one code (``same_code_groups``) and from this group's own sides;
deterministic metrics against the tolerance (or across the processes, where they turn out to vary). A batch
size that ran out of memory on the head but not on the base is a regression without statistics.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from pytest_llmperf.gate.evidence import compare_fixed, compare_processes, is_constant
from pytest_llmperf.gate.noise import pooled
from pytest_llmperf.gate.samples import (
    acceptances,
    accepted_reason,
    load_samples,
    min_effect_for,
    min_effects,
    same_code_groups,
)
from pytest_llmperf.gate.verdict import Comparison, Outcome
from pytest_llmperf.measure.metrics import COMPARED_METRICS, GATED_METRICS, Sampling, metric


def ab_runs(db: Any, group: str) -> tuple[list[str], list[str]]:
    """(base run ids, head run ids) of an A/B group, oldest first; only runs that completed."""
    sides: dict[str, list[str]] = {"base": [], "head": []}
    for run_id, side in db.execute(
            "SELECT id, ab_side FROM runs WHERE ab_group = ? AND status = 'complete' ORDER BY started_at, rowid",
            [group]):
        sides[side].append(run_id)
    return sides["base"], sides["head"]


def _oom_batches(db: Any, run_ids: list[str]) -> set[tuple[str, int]]:
    if not run_ids:
        return set()
    marks = ", ".join("?" for _ in run_ids)
    return {(t, b) for t, b in db.execute(
        f"SELECT t.test_id, m.batch_size FROM measurements m JOIN tests t ON t.id = m.test_row_id "
        f"WHERE m.run_id IN ({marks}) AND m.outcome = 'oom'", run_ids)}


def ab_comparisons(db: Any, group: str, metrics: tuple[str, ...] = COMPARED_METRICS, *,
                   base_label: str = "base") -> list[Comparison]:
    base_runs, head_runs = ab_runs(db, group)
    base = load_samples(db, base_runs, metrics)
    head = load_samples(db, head_runs, metrics)
    effects = min_effects(db, head_runs[-1]) if head_runs else {}
    accepted_rows = acceptances(db, head_runs)
    head_oom = _oom_batches(db, head_runs)
    earlier = same_code_groups(db, metrics, exclude_group=group)
    where = f"{base_label} ({len(base_runs)} vs {len(head_runs)} processes)"
    out = []
    for key in sorted(set(base) | set(head), key=lambda k: (base.get(k) or head[k]).subject.label):
        samples = head.get(key) or base[key]
        s = samples.subject
        effect = min_effect_for(effects, s.test_id, s.metric)
        accepted = next((r for run in head_runs if (r := accepted_reason(accepted_rows, run, s))), None)
        compared = partial(Comparison, s, baseline=where, baseline_run_ids=tuple(base_runs), min_effect=effect,
                           accepted=accepted, gated=s.metric in GATED_METRICS)
        if key not in head:
            if (s.test_id, s.batch_size) in head_oom:
                out.append(compared(None, note=f"out of memory at batch {s.batch_size} on the head only",
                                    known=Outcome.REGRESSED))
            else:
                out.append(compared(None, note="measured on the base only: the head did not produce it"))
            continue
        if key not in base:
            out.append(compared(None, note="new on the head: nothing to compare with"))
            continue
        b = [base[key].per_run[r] for r in base_runs if r in base[key].per_run]
        h = [head[key].per_run[r] for r in head_runs if r in head[key].per_run]
        flat_b, flat_h = [v for run in b for v in run], [v for run in h for v in run]
        if metric(s.metric).sampling is Sampling.FIXED and is_constant(flat_b) and is_constant(flat_h):
            evidence = compare_fixed(flat_b, flat_h)
        else:
            groups = earlier.get(key, [])
            prior = pooled(groups, f"{len(groups)} earlier same-code group{'s' if len(groups) != 1 else ''}")
            evidence = compare_processes(b, h, prior=prior)
        out.append(compared(evidence))
    return out
