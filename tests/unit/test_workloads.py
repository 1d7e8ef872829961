"""Serving workloads: exact lengths, the same requests every run, a shared prefix where asked."""

from __future__ import annotations

import pytest

from pytest_llmperf.serving.workloads import Lengths, Workload, WorkloadError


def test_fixed_lengths_are_exact_and_special_tokens_never_drawn() -> None:
    requests = Workload(prompt=Lengths(32), output=Lengths(100)).completions(50, vocab_size=64, special_ids=(0, 1, 2))
    assert len(requests) == 50
    assert {len(r.prompt_ids) for r in requests} == {32} and {r.output_tokens for r in requests} == {100}
    assert all(t >= 3 and t < 64 for r in requests for t in r.prompt_ids)


def test_uniform_lengths_stay_in_their_range_and_use_all_of_it() -> None:
    requests = Workload(prompt=Lengths(8, 12), output=Lengths(1, 3), seed=4).completions(400, vocab_size=100)
    assert {len(r.prompt_ids) for r in requests} == {8, 9, 10, 11, 12}
    assert {r.output_tokens for r in requests} == {1, 2, 3}


def test_the_same_workload_gives_the_same_requests() -> None:
    w = Workload(prompt=Lengths(8, 40), output=Lengths(4, 9), seed=7)
    assert w.completions(20, vocab_size=500) == w.completions(20, vocab_size=500)
    assert w.completions(20, vocab_size=500) != Workload(prompt=Lengths(8, 40), output=Lengths(4, 9),
                                                         seed=8).completions(20, vocab_size=500)


def test_a_shared_prefix_starts_every_prompt() -> None:
    requests = Workload(prompt=Lengths(40), output=Lengths(4), prefix_tokens=30).completions(10, vocab_size=1000)
    assert len({r.prompt_ids[:30] for r in requests}) == 1 and len({r.prompt_ids[30:] for r in requests}) == 10


@pytest.mark.parametrize(("make", "message"), [
    (lambda: Lengths(0), r"length 0: expected a whole number of tokens, at least 1"),
    (lambda: Lengths(10, 5), r"length range 10\.\.5: the upper end must be a whole number of at least 10"),
    (lambda: Workload(Lengths(16), Lengths(4), prefix_tokens=16).completions(2, vocab_size=100),
     r"prefix of 16 tokens: every prompt must be longer than its shared prefix, and the shortest is 16"),
])
def test_a_workload_that_cannot_be_drawn_names_the_field(make, message: str) -> None:
    with pytest.raises(WorkloadError, match=message):
        make()
