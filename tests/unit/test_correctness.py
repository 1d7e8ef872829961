"""The correctness check: greedy tokens compared with the reference's, and the tests' weight perturbation that
proves it can fail."""

import numpy as np
import pytest
import torch

from pytest_llmperf.correctness import HALF_PRECISION_PREFIX, MIN_DISTINCT_TOKENS, compare_tokens
from tests.launch.weight_fault import perturb_one_weight

PROMPT = 3
NEW = 12


def _reference(rows: int = 2) -> np.ndarray:
    """Prompt (ids 100..) then NEW distinct new tokens per row."""
    prompt = np.arange(100, 100 + PROMPT)
    return np.stack([np.concatenate([prompt, np.arange(10 * r + 10, 10 * r + 10 + NEW)]) for r in range(rows)])


def _changed(tokens: np.ndarray, row: int, position: int) -> np.ndarray:
    """A copy with new token ``position`` of ``row`` (and everything after it, as in a diverged decode) changed."""
    out = tokens.copy()
    out[row, PROMPT + position:] = 999
    return out


def test_identical_tokens_on_every_rank_match():
    ref = _reference()
    check = compare_tokens(ref, [ref.copy(), ref.copy()], prompt_tokens=PROMPT, exact=True)
    assert check.outcome == "match"
    assert check.first_mismatch is None
    assert (check.compared_tokens, check.matched_tokens) == (2 * 2 * NEW, 2 * 2 * NEW)
    assert (check.batch_size, check.new_tokens, check.exact) == (2, NEW, True)
    assert check.detail == f"all {2 * 2 * NEW} new tokens match hf"


def test_the_first_difference_by_rank_row_and_position_is_reported():
    ref = _reference()
    outputs = [ref.copy(), _changed(_changed(ref, row=1, position=2), row=0, position=9), _changed(ref, 0, 0)]
    check = compare_tokens(ref, outputs, prompt_tokens=PROMPT, exact=True)
    assert check.outcome == "mismatch"
    # rank 1 comes before rank 2, and on rank 1 row 0 before row 1, however early row 1 differs
    assert check.first_mismatch == (1, 0, 9)
    assert check.matched_tokens == check.compared_tokens - (NEW - 9) - (NEW - 2) - NEW
    assert "the first at rank 1, row 0, new token 9: 999 instead of" in check.detail
    assert f"{check.compared_tokens - check.matched_tokens} of {3 * 2 * NEW} new tokens differ from hf" in check.detail


def test_exact_mode_fails_on_the_last_token_too():
    ref = _reference()
    check = compare_tokens(ref, [_changed(ref, row=0, position=NEW - 1)], prompt_tokens=PROMPT, exact=True)
    assert check.outcome == "mismatch" and check.first_mismatch == (0, 0, NEW - 1)


def test_a_changed_prompt_is_not_a_difference_in_new_tokens():
    ref = _reference()
    out = ref.copy()
    out[:, 0] = 5
    assert compare_tokens(ref, [out], prompt_tokens=PROMPT, exact=True).outcome == "match"


def test_outside_exact_mode_sequences_may_part_after_the_prefix_but_not_before():
    ref = _reference()
    late = compare_tokens(ref, [_changed(ref, row=1, position=HALF_PRECISION_PREFIX)], prompt_tokens=PROMPT,
                          exact=False)
    assert late.outcome == "match" and late.exact is False
    assert late.first_mismatch == (0, 1, HALF_PRECISION_PREFIX)  # still reported, but tolerated
    early = compare_tokens(ref, [_changed(ref, row=1, position=HALF_PRECISION_PREFIX - 1)], prompt_tokens=PROMPT,
                           exact=False)
    assert early.outcome == "mismatch"
    assert early.first_mismatch == (0, 1, HALF_PRECISION_PREFIX - 1)
    assert f"the first {HALF_PRECISION_PREFIX} tokens of each row must match" in early.detail


def test_outside_exact_mode_a_mismatch_reports_the_difference_that_fails_it():
    ref = _reference()
    # row 0 parts late (allowed), row 1 early (not): the report must point at row 1, not at row 0's tolerated part
    out = _changed(_changed(ref, row=0, position=HALF_PRECISION_PREFIX + 1), row=1, position=1)
    check = compare_tokens(ref, [out], prompt_tokens=PROMPT, exact=False)
    assert check.outcome == "mismatch"
    assert check.first_mismatch == (0, 1, 1)
    assert "the first at rank 0, row 1, new token 1:" in check.detail


def test_a_reference_with_few_distinct_tokens_says_the_check_proves_little():
    ref = _reference()
    ref[:, PROMPT:] = np.arange(NEW) % (MIN_DISTINCT_TOKENS - 1)  # 7 distinct new tokens
    check = compare_tokens(ref, [ref.copy()], prompt_tokens=PROMPT, exact=True)
    assert check.outcome == "match" and check.distinct_reference_tokens == MIN_DISTINCT_TOKENS - 1
    assert check.detail.endswith(f"note: the reference has only {MIN_DISTINCT_TOKENS - 1} distinct new tokens, "
                                 "so this check proves little")
    varied = _reference()
    assert "proves little" not in compare_tokens(varied, [varied], prompt_tokens=PROMPT, exact=True).detail


def test_a_rank_output_of_another_shape_is_an_error_not_a_mismatch():
    ref = _reference()
    with pytest.raises(ValueError, match=r"rank 1 returned tokens of shape \(2, 14\), the reference \(2, 15\)"):
        compare_tokens(ref, [ref, ref[:, :-1]], prompt_tokens=PROMPT, exact=True)


class TinyBlock(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = torch.nn.Linear(4, 4)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))


class TinyModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.layers = torch.nn.ModuleList([TinyBlock(), TinyBlock()])


def test_perturb_one_weight_changes_the_first_mlp_weight_of_the_first_block_and_nothing_else():
    torch.manual_seed(0)
    model = TinyModel()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    name = perturb_one_weight(model)
    assert name == "layers.0.mlp.0.weight"
    after = dict(model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == {name}
    delta = (after[name] - before[name]).abs()
    assert delta.mean() > before[name].std()  # large enough to change what a model generates


def test_a_row_that_parts_at_a_near_tie_of_the_reference_matches_and_says_so():
    from pytest_llmperf.correctness import NEAR_TIE_MARGIN, partings

    ref = _reference()
    out = _changed(ref, row=1, position=4)
    (parting,) = partings(ref, [out], prompt_tokens=PROMPT)
    assert (parting.rank, parting.row, parting.position, parting.token) == (0, 1, 4, 999)
    tied = compare_tokens(ref, [out], prompt_tokens=PROMPT, exact=True, near_ties={parting: NEAR_TIE_MARGIN / 2})
    assert tied.outcome == "match"
    assert "rank 0 row 1 parted at a near-tie (to hf's runner-up, 1.0e-03 of its top logit below)" in tied.detail
    clear = compare_tokens(ref, [out], prompt_tokens=PROMPT, exact=True, near_ties={parting: 0.3})
    assert clear.outcome == "mismatch" and clear.first_mismatch == (0, 1, 4)


def test_a_near_tie_excuses_only_its_own_row():
    from pytest_llmperf.correctness import NEAR_TIE_MARGIN, partings

    ref = _reference()
    out = _changed(_changed(ref, row=0, position=2), row=1, position=5)
    _, second = partings(ref, [out], prompt_tokens=PROMPT)
    check = compare_tokens(ref, [out], prompt_tokens=PROMPT, exact=True, near_ties={second: NEAR_TIE_MARGIN / 10})
    assert check.outcome == "mismatch" and check.first_mismatch == (0, 0, 2)
