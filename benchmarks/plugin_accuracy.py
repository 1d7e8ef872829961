"""Does the plugin report the tokens/s an independent stopwatch sees, and what does it cost?

For each batch size, N interleaved pairs: one trial measured by the plugin (``Bench.generate``,
one trial, no warm-up) and one bare ``model.generate`` timed with its own ``time.perf_counter``
on a separately loaded copy of the same checkpoint, same prompt length, same number of new
tokens. The bare loop shares no code with the plugin's timers. Printed per batch size: the median
of (plugin tokens/s / bare tokens/s) with a 95 % bootstrap confidence interval, and the plugin's
own overhead per call (wall time of ``Bench.generate`` minus the time its trial measured).

    python benchmarks/plugin_accuracy.py                      # synthetic llama-tiny on CPU
    python benchmarks/plugin_accuracy.py --model synthetic:llama-1b --device cuda:0 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from bare_generate import bare_generate
from scipy.stats import bootstrap
from transformers import AutoModelForCausalLM

from pytest_llmperf.bench import Bench
from pytest_llmperf.case import cases_from_marker
from pytest_llmperf.pool import pool_for_device
from pytest_llmperf.settings import Settings, cache_home


def bare_tokens_per_s(model, batch_size: int, prompt_tokens: int, new_tokens: int, device: str) -> float:
    return batch_size * new_tokens / bare_generate(model, batch_size, prompt_tokens, new_tokens, device).e2e_s


def median_ci(values: np.ndarray) -> tuple[float, float, float]:
    ci = bootstrap((values,), np.median, confidence_level=0.95, n_resamples=5000, method="percentile",
                   random_state=np.random.default_rng(0)).confidence_interval
    return float(np.median(values)), float(ci.low), float(ci.high)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="synthetic:llama-tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=100)
    parser.add_argument("--model-cache", default=None, help="default: the plugin's model cache, where synthetic "
                        "models are built once and kept")
    args = parser.parse_args()

    cache = Path(args.model_cache or cache_home() / "models")
    settings = Settings.from_sources(
        enabled=True,
        cli={"model_cache": str(cache), "device": args.device, "dtype": args.dtype},
        ini={"prompt_tokens": str(args.prompt_tokens), "new_tokens": str(args.new_tokens)},
        rootdir=Path.cwd(),
    )
    (case,) = cases_from_marker((), {"model": args.model, "backend": "hf"}, settings)
    pool = pool_for_device(args.device, cpu_slots=1, lock_dir=cache / "pool")
    lease = pool.lease(1, timeout_s=60, owner="benchmarks/plugin_accuracy")
    bench = Bench.open(test_id="benchmarks/plugin_accuracy", case=case, settings=settings, lease=lease)
    bare = AutoModelForCausalLM.from_pretrained(bench.model.path, dtype=getattr(torch, bench.model.dtype))
    bare = bare.to(args.device).eval()

    print(f"model {args.model} ({bench.model.num_parameters / 1e6:.1f} M parameters, {bench.model.dtype}) on "
          f"{args.device}; prompt {args.prompt_tokens}, {args.new_tokens} new tokens; {args.pairs} interleaved pairs")
    print(f"{'batch':>5}  {'plugin tok/s':>12}  {'bare tok/s':>10}  {'ratio (median, 95% CI)':>26}  "
          f"{'overhead/call':>13}")
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        bench.generate(batch_size=batch, trials=1, warmups=1)  # warm both paths before pairing
        bare_tokens_per_s(bare, batch, args.prompt_tokens, args.new_tokens, args.device)
        plugin, independent, overhead = [], [], []
        for _ in range(args.pairs):
            start = time.perf_counter()
            result = bench.generate(batch_size=batch, trials=1, warmups=0)
            wall = time.perf_counter() - start
            trial = result.trials[0]
            tokens_per_s = trial.value("tokens_per_s")
            assert tokens_per_s is not None  # every trial has an end-to-end time
            plugin.append(tokens_per_s)
            overhead.append(wall - trial.e2e_s)
            independent.append(bare_tokens_per_s(bare, batch, args.prompt_tokens, args.new_tokens, args.device))
        ratio, low, high = median_ci(np.array(plugin) / np.array(independent))
        print(f"{batch:>5}  {np.median(plugin):>12.1f}  {np.median(independent):>10.1f}  "
              f"{ratio:>9.4f} [{low:.4f}, {high:.4f}]  {np.median(overhead) * 1000:>10.2f} ms")
    bench.close()
    lease.release()


if __name__ == "__main__":
    main()
