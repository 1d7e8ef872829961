"""A fast wrong backend is a regression too: greedy tokens compared with the reference backend's.

The reference is the ``hf`` backend on the same model, dtype and device kind, run once per model and
kept next to it. In float32 on CPU every token must match. In half precision, or across devices,
reductions run in other orders and a near-tie may flip one greedy choice, after which the sequences
legitimately part: there the first ``HALF_PRECISION_PREFIX`` new tokens of every row must match.

A backend that changes the arithmetic on purpose (a quantized variant: its class's
``reproduces_reference(request)`` is False) is not held to either: its agreement with the same
reference tokens is measured instead (``fidelity``), and budgets say what is enough.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pytest_llmperf.devices import device_kind
from pytest_llmperf.fidelity import first_divergence
from pytest_llmperf.results import CorrectnessCheck

if TYPE_CHECKING:
    from pytest_llmperf.models.sources import ResolvedModel

#: new tokens compared per row; enough to see a wrong model, short enough to be cheap
CHECK_NEW_TOKENS = 32
CHECK_BATCH_SIZE = 2
#: fewer distinct reference tokens than this and a comparison proves little
MIN_DISTINCT_TOKENS = 8
HALF_PRECISION_PREFIX = 8
#: a near-tie: the other engine chose the reference's runner-up, which the reference ranked below its own choice
#: by at most this fraction of its top logit. Float32 kernels that sum in another order differ by about 1e-6
#: relative per operation, and the difference grows over layers and decode steps: measured partings of
#: llama.cpp from transformers on the same float32 weights were 1e-5 to 1.1e-3 relative, at tokens 12 to 24,
#: always to hf's runner-up; a wrong weight or kernel departs at once, by margins near 1.
NEAR_TIE_MARGIN = 2e-3


@dataclass(frozen=True)
class Parting:
    """Where one row of one rank first departs from the reference, and the token it chose there."""

    rank: int
    row: int
    position: int
    token: int


def partings(reference: np.ndarray, outputs: list[np.ndarray], *, prompt_tokens: int) -> list[Parting]:
    """The first difference of every row that differs from the reference."""
    ref_new = reference[:, prompt_tokens:]
    return [
        Parting(rank, row, position, int(output[row, prompt_tokens + position]))
        for rank, output in enumerate(outputs)
        for row, position in enumerate(first_divergence(ref_new, output[:, prompt_tokens:]))
        if position < ref_new.shape[1]
    ]


def compare_tokens(reference: np.ndarray, outputs: list[np.ndarray], *, prompt_tokens: int, exact: bool,
                   reference_name: str = "hf", near_ties: dict[Parting, float] | None = None) -> CorrectnessCheck:
    """Compare every rank's output (prompt + new tokens per row) with the reference's.

    ``near_ties``: partings where the reference itself nearly chose this backend's token (its logit margin,
    at most ``NEAR_TIE_MARGIN``): another summation order may flip such a choice, so from there the row may part.
    """
    ref_new = reference[:, prompt_tokens:]
    rows, new_tokens = ref_new.shape
    must_match = new_tokens if exact else min(HALF_PRECISION_PREFIX, new_tokens)
    tied = {(p.rank, p.row): margin for p, margin in (near_ties or {}).items() if margin <= NEAR_TIE_MARGIN}
    compared = matched = 0
    first: tuple[int, int, int] | None = None
    # where a difference is allowed (after the prefix), the one to report is the first that is not
    first_failing: tuple[int, int, int] | None = None
    for rank, output in enumerate(outputs):
        if output.shape != reference.shape:
            raise ValueError(f"rank {rank} returned tokens of shape {output.shape}, the reference {reference.shape}")
        new = output[:, prompt_tokens:]
        equal = new == ref_new
        compared += equal.size
        matched += int(equal.sum())
        for row in range(rows):
            differs = np.flatnonzero(~equal[row])
            if differs.size:
                where = (rank, row, int(differs[0]))
                if first is None or where < first:
                    first = where
                if (where[2] < must_match and (rank, row) not in tied
                        and (first_failing is None or where < first_failing)):
                    first_failing = where
    failed = first_failing is not None
    if failed:
        first = first_failing
    distinct = len(np.unique(ref_new))
    if first is None:
        detail = f"all {compared} new tokens match {reference_name}"
    else:
        rank, row, position = first
        detail = (f"{compared - matched} of {compared} new tokens differ from {reference_name}; the first at "
                  f"rank {rank}, row {row}, new token {position}: {int(outputs[rank][row, prompt_tokens + position])} "
                  f"instead of {int(ref_new[row, position])}"
                  + ("" if exact else f" (in this precision the first {must_match} tokens of each row must match)"))
    if tied and not failed:
        detail += "; " + ", ".join(
            f"rank {rank} row {row} parted at a near-tie (to hf's runner-up, {margin:.1e} of its top logit below)"
            for (rank, row), margin in sorted(tied.items()))
    if distinct < MIN_DISTINCT_TOKENS:
        detail += f"; note: the reference has only {distinct} distinct new tokens, so this check proves little"
    return CorrectnessCheck(
        reference=reference_name, batch_size=rows, new_tokens=new_tokens, compared_tokens=compared,
        matched_tokens=matched, distinct_reference_tokens=distinct, first_mismatch=first, exact=exact,
        outcome="mismatch" if failed else "match", detail=detail,
    )


def reference_margins(model: ResolvedModel, reference: np.ndarray, found: list[Parting], *,
                      prompt_tokens: int) -> dict[Parting, float]:
    """For each parting, how much higher hf's logit for its own token was than for the backend's token, as a
    fraction of that top logit, at that position of the reference sequence (one teacher-forced forward of hf on
    the CPU, in the model's dtype); infinite where the backend's token was not hf's runner-up."""
    import torch

    from pytest_llmperf.backends.checkpoint import from_pretrained

    hf = from_pretrained(model.path, model.dtype)
    hf.eval()
    margins: dict[Parting, float] = {}
    with torch.inference_mode():
        logits = hf(input_ids=torch.as_tensor(reference, dtype=torch.long)).logits.float()
    for p in found:
        at = logits[p.row, prompt_tokens + p.position - 1]  # the logits that chose new token ``position``
        chosen = int(reference[p.row, prompt_tokens + p.position])
        runner_up = int(torch.topk(at, 2).indices[1])
        top = float(at[chosen])
        margins[p] = (top - float(at[p.token])) / max(1.0, abs(top)) if p.token == runner_up else math.inf
    return margins


def _reference_key(model: ResolvedModel, device_kind: str, input_ids: np.ndarray, new_tokens: int) -> str:
    import torch
    import transformers

    weights = sorted(model.path.glob("*.safetensors")) + sorted(model.path.glob("*.bin"))
    stamp = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in weights]
    digest = hashlib.sha256(repr((
        str(model.path), stamp, model.config_hash, model.dtype, device_kind, new_tokens,
        input_ids.shape, input_ids.tobytes(), torch.__version__, transformers.__version__,
    )).encode()).hexdigest()[:20]
    return f"{model.model_id.replace('/', '--')}-{model.dtype}-{device_kind}-{digest}"


def reference_tokens(model: ResolvedModel, device: str, input_ids: np.ndarray, new_tokens: int,
                     cache_dir: Path) -> np.ndarray:
    """The ``hf`` backend's greedy output on this model, prompts and device kind; computed once, then kept.

    Kept under ``cache_dir`` (keyed by the checkpoint's files, dtype, device kind, prompts and library
    versions), so each backend's check costs one generate, not a second load of the model.
    """
    from filelock import FileLock

    from pytest_llmperf.backends.base import LoadRequest
    from pytest_llmperf.launch.inline import InlineLauncher

    kind = device_kind(device)
    directory = cache_dir / "references"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{_reference_key(model, kind, input_ids, new_tokens)}.npy"
    with FileLock(str(path) + ".lock"):
        if path.exists():
            return np.load(path)
        launcher = InlineLauncher("hf", device)
        try:
            launcher.load(LoadRequest(model.path, model.dtype, device))
            tokens = launcher.tokens(input_ids, new_tokens)[0]
        finally:
            launcher.close()
        partial = path.with_suffix(".partial.npy")
        np.save(partial, tokens)
        partial.replace(path)
        return tokens
