"""What each request of a serving run asks: its prompt (token ids) and exactly how many tokens to generate.

Lengths are fixed, or drawn uniformly from a range, from a seed: the same workload gives the same
requests in every run and to every engine. A shared-prefix workload starts every prompt with the same
``prefix_tokens`` (a system prompt), the case prefix caching speeds up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pytest_llmperf.serving.load_generator import Completion


class WorkloadError(ValueError):
    """A workload that cannot be drawn; the message names the field, the value and what is allowed."""


@dataclass(frozen=True)
class Lengths:
    """A length per request: ``low`` when ``high`` is None, else uniform on ``[low, high]``."""

    low: int
    high: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.low, bool) or not isinstance(self.low, int) or self.low < 1:
            raise WorkloadError(f"length {self.low!r}: expected a whole number of tokens, at least 1")
        if self.high is not None and (not isinstance(self.high, int) or self.high < self.low):
            raise WorkloadError(f"length range {self.low}..{self.high!r}: the upper end must be a whole number "
                                f"of at least {self.low}")

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.high is None:
            return np.full(n, self.low, dtype=np.int64)
        return rng.integers(self.low, self.high + 1, size=n)


@dataclass(frozen=True)
class Workload:
    prompt: Lengths
    output: Lengths
    #: tokens every prompt starts with (counted in its length)
    prefix_tokens: int = 0
    seed: int = 0

    def completions(self, n: int, *, vocab_size: int, special_ids: tuple[int, ...] = ()) -> list[Completion]:
        """``n`` requests; token ids are drawn from the vocabulary without its special tokens."""
        allowed = np.setdiff1d(np.arange(vocab_size, dtype=np.int64), np.asarray(special_ids, dtype=np.int64))
        if allowed.size == 0:
            raise WorkloadError(f"a vocabulary of {vocab_size} tokens has no non-special token to draw prompts from")
        rng = np.random.default_rng([self.seed, n])
        prompt_lengths = self.prompt.draw(rng, n)
        if self.prefix_tokens >= int(prompt_lengths.min()):
            raise WorkloadError(f"prefix of {self.prefix_tokens} tokens: every prompt must be longer than its "
                                f"shared prefix, and the shortest is {int(prompt_lengths.min())}")
        output_lengths = self.output.draw(rng, n)
        prefix = allowed[rng.integers(0, allowed.size, size=self.prefix_tokens)]
        return [
            Completion(
                prompt_ids=tuple(int(t) for t in np.concatenate(
                    [prefix, allowed[rng.integers(0, allowed.size, size=int(length) - self.prefix_tokens)]])),
                output_tokens=int(out),
            )
            for length, out in zip(prompt_lengths, output_lengths, strict=True)
        ]
