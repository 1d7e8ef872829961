"""What each request of a serving run asks: its prompt (token ids) and exactly how many tokens to generate.

Lengths are fixed, drawn uniformly from a range, or drawn ShareGPT-like (``ShareGptLengths``), always
from a seed: the same workload gives the same requests in every run and to every engine. A
shared-prefix workload starts every prompt with the same ``prefix_tokens`` (a system prompt), the case
prefix caching speeds up. Prompts are random token ids, or (``prompts="text"``) the text prompt set of
``pytest_llmperf.prompt_set`` through the model's tokenizer.

Every workload has a short ``label`` (``p32o32``, ``prefix16-p16-64o8-32+text-seed3``,
``sharegpt-max512``) that names it in a series' identity, and ``parse_workload`` reads it back.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from pytest_llmperf.prompt_set import PROMPT_SETS, PROMPT_TEXTS, PromptSetError, text_prompt_token_ids
from pytest_llmperf.serving.load_generator import Completion


class WorkloadError(ValueError):
    """A workload that cannot be drawn; the message names the field, the value and what is allowed."""


def _is_whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Lengths:
    """A length per request: ``low`` when ``high`` is None, else uniform on ``[low, high]``."""

    low: int
    high: int | None = None

    def __post_init__(self) -> None:
        if not _is_whole(self.low) or self.low < 1:
            raise WorkloadError(f"length {self.low!r}: expected a whole number of tokens, at least 1")
        if self.high is not None and (not _is_whole(self.high) or self.high < self.low):
            raise WorkloadError(f"length range {self.low}..{self.high!r}: the upper end must be a whole number "
                                f"of at least {self.low}")

    @property
    def label(self) -> str:
        """``32`` for a fixed length, ``16-64`` for a range (``32-32`` too: it draws, so its ids differ)."""
        return str(self.low) if self.high is None else f"{self.low}-{self.high}"

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.high is None:
            return np.full(n, self.low, dtype=np.int64)
        return rng.integers(self.low, self.high + 1, size=n)


# ShareGPT as vLLM's benchmarks use it.
# Published figures: Kwon et al., "Efficient Memory Management for Large Language Model Serving with
# PagedAttention" (SOSP 2023, arXiv:2309.06180), section 6.1 and Figure 11(a): ShareGPT's mean input is
# 161.31 tokens and its mean output 337.99 tokens (Alpaca's, Figure 11(b), 19.31 and 58.45: the paper's
# "8.4x longer input prompts and 5.8x longer outputs on average").
# vLLM's sampler (vllm/benchmarks/datasets/datasets.py, is_valid_sequence, vLLM 0.32) drops a pair whose
# prompt or output is shorter than 4 tokens, whose prompt is longer than 1024, or whose prompt plus output
# is longer than 2048.
# Our assumption, not the dataset's: prompt and output lengths are independent and geometric (the
# discrete exponential, the most spread-out law on the positive whole numbers with a given mean; the paper
# gives means only), with the two means chosen so that the pairs vLLM's filter keeps have the published
# means.
SHAREGPT_MEAN_PROMPT_TOKENS = 161.31
SHAREGPT_MEAN_OUTPUT_TOKENS = 337.99
SHAREGPT_MIN_TOKENS = 4
SHAREGPT_MAX_PROMPT_TOKENS = 1024
SHAREGPT_MAX_TOTAL_TOKENS = 2048


def sharegpt_kept(prompt: np.ndarray, output: np.ndarray) -> np.ndarray:
    """Which (prompt, output) length pairs vLLM's ShareGPT sampler keeps."""
    return ((prompt >= SHAREGPT_MIN_TOKENS) & (output >= SHAREGPT_MIN_TOKENS)
            & (prompt <= SHAREGPT_MAX_PROMPT_TOKENS) & (prompt + output <= SHAREGPT_MAX_TOTAL_TOKENS))


def sharegpt_kept_means(geometric_means: tuple[float, float]) -> tuple[float, float]:
    """The exact mean prompt and output lengths of the kept pairs, for geometric laws of these means."""
    from scipy import stats

    prompt = np.arange(SHAREGPT_MIN_TOKENS, SHAREGPT_MAX_PROMPT_TOKENS + 1)
    p_prompt = stats.geom.pmf(prompt, 1 / geometric_means[0])
    output = np.arange(SHAREGPT_MAX_TOTAL_TOKENS + 1)
    p_output = np.where(output >= SHAREGPT_MIN_TOKENS, stats.geom.pmf(output, 1 / geometric_means[1]), 0.0)
    # for each prompt length, the kept outputs are those up to SHAREGPT_MAX_TOTAL_TOKENS - prompt
    room = SHAREGPT_MAX_TOTAL_TOKENS - prompt
    kept = np.cumsum(p_output)[room]
    kept_output_sum = np.cumsum(output * p_output)[room]
    total = float(np.sum(p_prompt * kept))
    return float(np.sum(prompt * p_prompt * kept)) / total, float(np.sum(p_prompt * kept_output_sum)) / total


@functools.cache
def sharegpt_geometric_means() -> tuple[float, float]:
    """The means of the geometric laws whose kept pairs have ShareGPT's published mean lengths."""
    from scipy import optimize

    target = np.array([SHAREGPT_MEAN_PROMPT_TOKENS, SHAREGPT_MEAN_OUTPUT_TOKENS])
    solution = optimize.root(lambda m: np.array(sharegpt_kept_means((m[0], m[1]))) - target, target)
    if not solution.success:
        raise RuntimeError(f"fitting the ShareGPT-like lengths failed: {solution.message}")
    return float(solution.x[0]), float(solution.x[1])


@dataclass(frozen=True)
class ShareGptLengths:
    """Prompt and output lengths drawn together, shaped like ShareGPT as vLLM's benchmarks sample it.

    Pairs are drawn from the fitted geometric laws above; a pair vLLM's sampler would drop is redrawn,
    so every pair has prompt and output of at least 4 tokens, a prompt of at most 1024 and a total of at
    most 2048. With ``max_total_tokens`` below 2048 (a model's context), both lengths of every pair are
    scaled by ``max_total_tokens / 2048`` (rounded down, at least 4 each, the output shortened if the
    rounding up to 4 of a short prompt would overflow), which keeps the shape and the prompt to output
    ratio. A context of 2048 tokens or more holds every pair as drawn, so it is dropped (None).
    """

    max_total_tokens: int | None = None

    def __post_init__(self) -> None:
        m = self.max_total_tokens
        if m is None:
            return
        if not _is_whole(m) or m < 2 * SHAREGPT_MIN_TOKENS:
            raise WorkloadError(
                f"max_total_tokens {m!r}: a ShareGPT-like request needs at least {2 * SHAREGPT_MIN_TOKENS} "
                f"tokens ({SHAREGPT_MIN_TOKENS} of prompt and {SHAREGPT_MIN_TOKENS} of output, the shortest "
                f"vLLM's sampler keeps); pass the model's context length, a whole number of at least "
                f"{2 * SHAREGPT_MIN_TOKENS}, or None"
            )
        if m >= SHAREGPT_MAX_TOTAL_TOKENS:
            object.__setattr__(self, "max_total_tokens", None)

    @property
    def label(self) -> str:
        return "sharegpt" if self.max_total_tokens is None else f"sharegpt-max{self.max_total_tokens}"

    @property
    def shortest_prompt(self) -> int:
        return SHAREGPT_MIN_TOKENS

    def draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` (prompt, output) length pairs."""
        mean_prompt, mean_output = sharegpt_geometric_means()
        prompts = [np.zeros(0, dtype=np.int64)]
        outputs = [np.zeros(0, dtype=np.int64)]
        have = 0
        while have < n:
            prompt = rng.geometric(1 / mean_prompt, size=n)
            output = rng.geometric(1 / mean_output, size=n)
            kept = sharegpt_kept(prompt, output)
            prompts.append(prompt[kept])
            outputs.append(output[kept])
            have += int(kept.sum())
        prompt = np.concatenate(prompts)[:n].astype(np.int64)
        output = np.concatenate(outputs)[:n].astype(np.int64)
        if self.max_total_tokens is None:
            return prompt, output
        return self._scaled(prompt, output, self.max_total_tokens)

    @staticmethod
    def _scaled(prompt: np.ndarray, output: np.ndarray, max_total_tokens: int) -> tuple[np.ndarray, np.ndarray]:
        # a kept prompt is at most half the total cap, so after scaling at least 4 tokens of room remain
        prompt = np.maximum(SHAREGPT_MIN_TOKENS, prompt * max_total_tokens // SHAREGPT_MAX_TOTAL_TOKENS)
        output = np.minimum(output * max_total_tokens // SHAREGPT_MAX_TOTAL_TOKENS, max_total_tokens - prompt)
        return prompt, np.maximum(SHAREGPT_MIN_TOKENS, output)


@dataclass(frozen=True)
class Workload:
    """The requests of a serving run.

    Lengths come from ``prompt`` and ``output`` (each a ``Lengths``), or from ``sharegpt_lengths`` (a
    ``ShareGptLengths``, which draws both; ``Workload.sharegpt`` builds one), never both. ``prompts`` is
    ``"random"`` (token ids drawn from the seed) or ``"text"`` (the text prompt set through the model's
    tokenizer, which ``completions`` then needs).

    ``label`` names the workload in a series' identity and ``parse_workload`` reads it back::

        p32o32                    prompt 32, output 32 tokens
        p16-64o8-32               prompt uniform on 16..64, output on 8..32
        prefix16-p32o32           every prompt starts with the same 16 tokens (counted in its 32)
        sharegpt                  ShareGPT-like lengths (ShareGptLengths)
        sharegpt-max512           the same, scaled to fit a context of 512 tokens
        p32o32+text               prompts from the text prompt set
        p32o32-seed3              drawn from seed 3 (seed 0 adds nothing)

    in that order: ``prefix16-sharegpt-max512+text-seed3``.
    """

    prompt: Lengths | None = None
    output: Lengths | None = None
    #: tokens every prompt starts with (counted in its length)
    prefix_tokens: int = 0
    seed: int = 0
    #: ShareGPT-like prompt and output lengths, drawn together, instead of ``prompt`` and ``output``
    sharegpt_lengths: ShareGptLengths | None = None
    #: "random" (token ids drawn from the seed) or "text" (the text prompt set, through the tokenizer)
    prompts: str = "random"

    def __post_init__(self) -> None:
        separate = (self.prompt, self.output)
        if self.sharegpt_lengths is None and not all(isinstance(x, Lengths) for x in separate):
            raise WorkloadError(f"workload lengths prompt={self.prompt!r}, output={self.output!r}: give both "
                                f"as Lengths, or use Workload.sharegpt(...) for ShareGPT-like lengths")
        if self.sharegpt_lengths is not None and (
                not isinstance(self.sharegpt_lengths, ShareGptLengths) or separate != (None, None)):
            raise WorkloadError(f"workload lengths sharegpt_lengths={self.sharegpt_lengths!r} with "
                                f"prompt={self.prompt!r}, output={self.output!r}: ShareGptLengths draws both "
                                f"lengths, so leave prompt and output unset (Workload.sharegpt(...))")
        if not _is_whole(self.seed) or self.seed < 0:
            raise WorkloadError(f"seed {self.seed!r}: expected a whole number, at least 0")
        if self.prompts not in PROMPT_SETS:
            raise WorkloadError(f"prompts {self.prompts!r}: expected one of {', '.join(map(repr, PROMPT_SETS))}")
        if not _is_whole(self.prefix_tokens) or self.prefix_tokens < 0:
            raise WorkloadError(f"prefix of {self.prefix_tokens!r} tokens: expected a whole number, at least 0")
        shortest = self.sharegpt_lengths.shortest_prompt if self.sharegpt_lengths else self._prompt.low
        if self.prefix_tokens and self.prefix_tokens >= shortest:
            raise WorkloadError(f"prefix of {self.prefix_tokens} tokens: every prompt must be longer than its "
                                f"shared prefix, and the shortest is {shortest}")

    @classmethod
    def sharegpt(cls, *, max_total_tokens: int | None = None, prefix_tokens: int = 0, seed: int = 0,
                 prompts: str = "random") -> Workload:
        """ShareGPT-like lengths (``ShareGptLengths``), scaled to fit ``max_total_tokens`` when it is below 2048."""
        return cls(prefix_tokens=prefix_tokens, seed=seed, prompts=prompts,
                   sharegpt_lengths=ShareGptLengths(max_total_tokens=max_total_tokens))

    @property
    def _prompt(self) -> Lengths:
        assert self.prompt is not None  # checked in __post_init__ when sharegpt_lengths is None
        return self.prompt

    @property
    def _output(self) -> Lengths:
        assert self.output is not None
        return self.output

    @property
    def label(self) -> str:
        """A stable short name: see the class docstring for the forms."""
        if self.sharegpt_lengths is not None:
            lengths = self.sharegpt_lengths.label
        else:
            lengths = f"p{self._prompt.label}o{self._output.label}"
        return (f"prefix{self.prefix_tokens}-" if self.prefix_tokens else "") + lengths \
            + ("+text" if self.prompts == "text" else "") + (f"-seed{self.seed}" if self.seed else "")

    def completions(self, n: int, *, vocab_size: int, special_ids: tuple[int, ...] = (),
                    tokenizer: Any = None) -> list[Completion]:
        """``n`` requests. Random prompts are drawn from the vocabulary without its special tokens; text
        prompts are the text prompt set's token ids from ``tokenizer`` (a Hugging Face tokenizer)."""
        if not _is_whole(n) or n < 0:
            raise WorkloadError(f"n {n!r}: expected a whole number of requests, at least 0")
        if self.prompts == "text" and tokenizer is None:
            raise WorkloadError(
                f"workload {self.label} takes its prompts from the text prompt set, which needs the model's "
                f"tokenizer: pass tokenizer= (its Hugging Face tokenizer) to completions, or use random prompts "
                f"(workload {_without_text(self).label})"
            )
        rng = np.random.default_rng([self.seed, n])
        if self.sharegpt_lengths is not None:
            prompt_lengths, output_lengths = self.sharegpt_lengths.draw(rng, n)
        else:
            prompt_lengths = self._prompt.draw(rng, n)
            output_lengths = self._output.draw(rng, n)
        if self.prompts == "text":
            prompt_ids = self._text_prompts(tokenizer, prompt_lengths, vocab_size)
        else:
            prompt_ids = self._random_prompts(rng, prompt_lengths, vocab_size, special_ids)
        return [Completion(prompt_ids=ids, output_tokens=int(out))
                for ids, out in zip(prompt_ids, output_lengths, strict=True)]

    def _random_prompts(self, rng: np.random.Generator, lengths: np.ndarray, vocab_size: int,
                        special_ids: tuple[int, ...]) -> list[tuple[int, ...]]:
        allowed = np.setdiff1d(np.arange(vocab_size, dtype=np.int64), np.asarray(special_ids, dtype=np.int64))
        if allowed.size == 0:
            raise WorkloadError(f"a vocabulary of {vocab_size} tokens has no non-special token to draw prompts from")
        prefix = allowed[rng.integers(0, allowed.size, size=self.prefix_tokens)]
        return [
            tuple(int(t) for t in np.concatenate(
                [prefix, allowed[rng.integers(0, allowed.size, size=int(length) - self.prefix_tokens)]]))
            for length in lengths
        ]

    def _text_prompts(self, tokenizer: Any, lengths: np.ndarray, vocab_size: int) -> list[tuple[int, ...]]:
        """Request ``i``: the shared prefix (the start of passage 0), then passage ``i`` modulo the set,
        repeated, from its token ``i // len(PROMPT_TEXTS)`` on (so no two prompts are the same), cut to
        length."""
        if lengths.size == 0:
            return []
        passages = len(PROMPT_TEXTS)
        bodies = lengths - self.prefix_tokens
        width = max(self.prefix_tokens, int(np.max(np.arange(lengths.size) // passages + bodies)))
        model_id = getattr(tokenizer, "name_or_path", "") or "this model"
        try:
            rows = text_prompt_token_ids(tokenizer, batch_size=min(lengths.size, passages), prompt_tokens=width,
                                         model_id=model_id)
        except PromptSetError as e:
            raise WorkloadError(f"workload {self.label}: {e}") from e
        if int(rows.max()) >= vocab_size or int(rows.min()) < 0:
            raise WorkloadError(f"workload {self.label}: the tokenizer of {model_id} gives token id {int(rows.max())}, "
                                f"outside the model's vocabulary of {vocab_size} tokens; pass the model's own "
                                f"tokenizer")
        prefix = [int(t) for t in rows[0, :self.prefix_tokens]]
        return [
            tuple(prefix + [int(t) for t in rows[i % passages, i // passages:i // passages + int(body)]])
            for i, body in enumerate(bodies)
        ]


def _without_text(workload: Workload) -> Workload:
    return replace(workload, prompts="random")


_LABEL = re.compile(
    r"(?:prefix(?P<prefix>[0-9]+)-)?"
    r"(?:p(?P<prompt_low>[0-9]+)(?:-(?P<prompt_high>[0-9]+))?o(?P<output_low>[0-9]+)(?:-(?P<output_high>[0-9]+))?"
    r"|(?P<sharegpt>sharegpt)(?:-max(?P<max_total>[0-9]+))?)"
    r"(?P<text>\+text)?(?:-seed(?P<seed>[0-9]+))?"
)
#: the forms parse_workload accepts, for its error message and the docs
WORKLOAD_FORMS = (
    "p<N>o<N> (fixed lengths, e.g. p32o32), p<A>-<B>o<C>-<D> (uniform ranges, e.g. p16-64o8-32), or sharegpt "
    "(ShareGPT-like lengths; sharegpt-max<N> scales them to a context of N tokens, e.g. sharegpt-max512); "
    "optionally preceded by prefix<N>- (a shared prefix, e.g. prefix16-p32o32) and followed, in this order, by "
    "+text (the text prompt set) and -seed<N> (e.g. p32o32+text-seed3)"
)


def parse_workload(text: str) -> Workload:
    """The workload a ``Workload.label`` names (``p32o32``, ``sharegpt-max512+text``, ...)."""
    match = _LABEL.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise WorkloadError(f"workload {text!r}: expected {WORKLOAD_FORMS}")
    g = match.groupdict()

    def whole(name: str) -> int | None:
        return None if g[name] is None else int(g[name])

    try:
        common: dict[str, Any] = {"prefix_tokens": whole("prefix") or 0, "seed": whole("seed") or 0,
                                  "prompts": "text" if g["text"] else "random"}
        if g["sharegpt"]:
            return Workload.sharegpt(max_total_tokens=whole("max_total"), **common)
        return Workload(prompt=Lengths(int(g["prompt_low"]), whole("prompt_high")),
                        output=Lengths(int(g["output_low"]), whole("output_high")), **common)
    except WorkloadError as e:
        raise WorkloadError(f"workload {text!r}: {e}") from e
