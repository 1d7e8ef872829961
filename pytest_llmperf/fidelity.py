"""Fidelity: how closely a backend that changes the arithmetic on purpose follows the reference's tokens.

A quantized model does not generate the full-precision tokens: once one greedy choice flips, the
rest of the sequence is conditioned on a different prefix, so exact matching says nothing after it.
Two measurements instead, on the reference's prompts and tokens:

* ``token_agreement``: teacher forcing. For k in 0..K-1 the backend is fed the prompt and the
  reference's first k new tokens and asked for one greedy token, compared with the reference's
  token k. Every position is judged on the reference's own prefix, so one flip costs one token,
  not the rest of the row. Agreed / compared, 0..1.
* ``first_divergence_tokens``: free greedy generation of the same length; new tokens before the
  first that differs from the reference (the number compared when none does), earliest row.

Both go through the launcher's ``tokens`` command, so they work for every backend and launcher.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from pytest_llmperf.results import FidelityCheck

if TYPE_CHECKING:
    from pytest_llmperf.launch.launcher import Launcher

#: teacher-forced positions per row: every new token of the reference's (``correctness.CHECK_NEW_TOKENS``)
POSITIONS = 32


def first_divergence(reference_new: np.ndarray, output_new: np.ndarray) -> tuple[int, ...]:
    """Per row: new tokens equal to the reference's before the first that differs (the row's length when none)."""
    if reference_new.shape != output_new.shape:
        raise ValueError(f"output new tokens of shape {output_new.shape}, the reference's {reference_new.shape}")
    out: list[int] = []
    for ref_row, row in zip(reference_new, output_new, strict=True):
        differs = np.flatnonzero(ref_row != row)
        out.append(int(differs[0]) if differs.size else int(ref_row.shape[0]))
    return tuple(out)


def agreement(reference_next: np.ndarray, predicted_next: np.ndarray) -> tuple[int, int]:
    """(agreed, compared) of teacher-forced predictions; both arrays are (positions, rows) of token ids."""
    if reference_next.shape != predicted_next.shape:
        raise ValueError(f"predictions of shape {predicted_next.shape}, the reference's {reference_next.shape}")
    return int((reference_next == predicted_next).sum()), int(reference_next.size)


def fidelity_check(reference: np.ndarray, free_outputs: list[np.ndarray], forced: list[np.ndarray], *,
                   prompt_tokens: int, reference_name: str = "hf") -> FidelityCheck:
    """The fidelity of every rank's answers.

    ``reference``: the reference's prompts and new tokens, (rows, prompt + new). ``free_outputs``: per rank,
    the backend's free greedy output of the same shape. ``forced``: per rank, (positions, rows) of its one
    greedy token after the prompt and the reference's first k new tokens, k = 0..positions-1.
    """
    ref_new = reference[:, prompt_tokens:]
    rows, new_tokens = ref_new.shape
    positions = forced[0].shape[0] if forced else 0
    if positions > new_tokens:
        raise ValueError(f"{positions} teacher-forced positions, but the reference has only {new_tokens} new tokens")
    divergence: list[int] = []
    for output in free_outputs:
        if output.shape != reference.shape:
            raise ValueError(f"free generation of shape {output.shape}, the reference's {reference.shape}")
        divergence.extend(first_divergence(ref_new, output[:, prompt_tokens:]))
    agreed = compared = 0
    for predicted in forced:
        a, c = agreement(ref_new[:, :positions].T, predicted)
        agreed, compared = agreed + a, compared + c
    check = FidelityCheck(
        reference=reference_name, batch_size=rows, positions=positions, compared_tokens=compared,
        agreed_tokens=agreed, new_tokens=new_tokens, first_divergence=tuple(divergence),
        distinct_reference_tokens=len(np.unique(ref_new)), detail="",
    )
    detail = (f"teacher-forced top-1 agreement with {reference_name} {agreed}/{compared} "
              f"({check.token_agreement:.1%}) over {positions} positions x {rows} rows; free greedy generation "
              + (f"follows {reference_name} for all {new_tokens} new tokens"
                 if check.first_divergence_tokens == new_tokens
                 else f"departs from {reference_name} at new token {check.first_divergence_tokens}"))
    return replace(check, detail=detail)


def forced_inputs(reference: np.ndarray, prompt_tokens: int, positions: int) -> list[np.ndarray]:
    """The teacher-forcing inputs: the prompt and the reference's first k new tokens, k = 0..positions-1."""
    return [np.ascontiguousarray(reference[:, :prompt_tokens + k]) for k in range(positions)]


def measure_fidelity(launcher: Launcher, input_ids: np.ndarray, reference: np.ndarray, *, positions: int,
                     reference_name: str = "hf") -> FidelityCheck:
    """Free greedy generation of the reference's length, then one greedy token per teacher-forced position."""
    prompt_tokens = input_ids.shape[1]
    free = launcher.tokens(input_ids, reference.shape[1] - prompt_tokens)
    per_position = [launcher.tokens(ids, 1) for ids in forced_inputs(reference, prompt_tokens, positions)]
    ranks = len(free)
    forced = [np.stack([answers[rank][:, -1] for answers in per_position]) if per_position
              else np.zeros((0, reference.shape[0]), dtype=reference.dtype) for rank in range(ranks)]
    return fidelity_check(reference, free, forced, prompt_tokens=prompt_tokens, reference_name=reference_name)
