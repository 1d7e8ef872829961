"""Same-job A/B: every series measured by the base processes of an A/B group against the head processes.

Each process counts once (the median of its trials, or its one value), judged against the between-process
noise pooled from earlier runs of one code (``same_code_groups``) and from this group's own sides;
deterministic metrics against the tolerance (or across the processes, where they turn out to vary). A batch
size that ran out of memory on the head but not on the base is a regression without statistics.
"""

from __future__ import annotations

from functools import partial

from pytest_llmperf.gate.evidence import compare_fixed, compare_processes, is_constant
from pytest_llmperf.gate.noise import pooled
from pytest_llmperf.gate.samples import accepted_reason, min_effect_for, same_code_groups
from pytest_llmperf.gate.verdict import Comparison, Outcome
from pytest_llmperf.history.gating import acceptances, min_effects
from pytest_llmperf.history.runs import ab_sides
from pytest_llmperf.history.samples import out_of_memory, series_samples
from pytest_llmperf.history.store import HistoryStore
from pytest_llmperf.measure.metrics import COMPARED_METRICS, GATED_METRICS, Sampling, metric


def ab_comparisons(store: HistoryStore, group: str, metrics: tuple[str, ...] = COMPARED_METRICS, *,
                   base_label: str = "base") -> list[Comparison]:
    sides = ab_sides(store, group)
    base_runs, head_runs = list(sides.base), list(sides.head)
    base = series_samples(store, base_runs, metrics)
    head = series_samples(store, head_runs, metrics)
    effects = min_effects(store, head_runs[-1]) if head_runs else {}
    accepted_rows = acceptances(store, head_runs)
    head_oom = {(o.test_id, o.batch_size) for o in out_of_memory(store, head_runs)} if head_runs else set()
    earlier = same_code_groups(store, metrics, exclude_group=group)
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
            if (s.test_id, s.point.batch_size) in head_oom:
                out.append(compared(None, note=f"out of memory at batch {s.point.batch_size} on the head only",
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
