"""Our load generator against vLLM's own ``bench serve``, on the same vLLM server and the same workload.

Starts vLLM's OpenAI server (vLLM's own Python, ``.venv-vllm``) on a synthetic Llama, then runs, in
alternation, ``vllm.benchmarks.serve`` (vLLM's ``bench serve``, random token ids of fixed lengths,
``--ignore-eos``) and this project's generator (``pytest_llmperf.serving``) with the same number of
requests, lengths, rate and burstiness. Prints both tools' TTFT, TPOT, ITL and E2EL medians and p99 and
the throughputs, each a median over the rounds; target: medians within 5 %.

    python benchmarks/serving_vs_vllm_bench.py
    python benchmarks/serving_vs_vllm_bench.py --rate=20 --requests=200 --rounds=3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
from pathlib import Path

from pytest_llmperf.backends.base import LoadRequest
from pytest_llmperf.backends.vllm_python import find_vllm_python
from pytest_llmperf.launch.distributed import free_port
from pytest_llmperf.models.spec import parse_model_spec
from pytest_llmperf.models.synthetic import ensure_synthetic
from pytest_llmperf.serving.arrivals import OpenLoop
from pytest_llmperf.serving.load_generator import run_load
from pytest_llmperf.serving.presets import vllm_server
from pytest_llmperf.serving.request_metrics import ServingSummary
from pytest_llmperf.serving.server_process import ServerProcess
from pytest_llmperf.serving.workloads import Lengths, Workload

LATENCIES = ("ttft", "tpot", "itl", "e2el")
THROUGHPUTS = ("request_throughput", "output_throughput", "total_token_throughput")

VLLM_BENCH = """
import argparse, sys
from vllm.benchmarks.serve import add_cli_args, main
parser = argparse.ArgumentParser()
add_cli_args(parser)
main(parser.parse_args(sys.argv[1:]))
"""


def vllm_bench(python: Path, url: str, checkpoint: Path, args: argparse.Namespace, out: Path, seed: int) -> dict:
    argv = [str(python), "-c", VLLM_BENCH, "--backend", "vllm", "--base-url", url, "--model", "model",
            "--tokenizer", str(checkpoint), "--dataset-name", "random", "--random-input-len", str(args.prompt_tokens),
            "--random-output-len", str(args.output_tokens), "--random-range-ratio", "0", "--ignore-eos",
            "--num-prompts", str(args.requests), "--request-rate", str(args.rate), "--burstiness", "1.0",
            "--seed", str(seed), "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99",
            "--save-result", "--result-dir", str(out.parent), "--result-filename", out.name, "--disable-tqdm"]
    subprocess.run(argv, check=True, capture_output=True, text=True, timeout=1800)
    return json.loads(out.read_text())


def ours(url: str, args: argparse.Namespace, seed: int) -> dict:
    completions = Workload(prompt=Lengths(args.prompt_tokens), output=Lengths(args.output_tokens),
                           seed=seed).completions(args.requests, vocab_size=1024, special_ids=(0, 1, 2))
    run = run_load(url, "model", completions, OpenLoop(rate_rps=args.rate, requests=args.requests, seed=seed))
    s = ServingSummary.of(run.records, run.duration_s)
    row = {f"median_{m}_ms": getattr(s, f"{m}_ms").median for m in LATENCIES}
    row |= {f"p99_{m}_ms": getattr(s, f"{m}_ms").p99 for m in LATENCIES}
    row |= {t: getattr(s, t) for t in THROUGHPUTS}
    row["completed"] = s.completed
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="synthetic:llama-tiny-hd32")
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--output-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model-cache", default=None, help="default: a temporary directory")
    args = parser.parse_args()

    cache = Path(args.model_cache or tempfile.mkdtemp(prefix="llmperf-bench-"))
    checkpoint = ensure_synthetic(parse_model_spec(args.model), "float32", cache)
    python = find_vllm_python().executable
    request = LoadRequest(checkpoint, "float32", "cpu", threads=args.threads)
    server = ServerProcess.start(vllm_server(request, port=free_port(), cache_dir=cache / "vllm"),
                                 cache / "vllm-server.log", timeout_s=600)
    try:
        theirs: list[dict] = []
        mine: list[dict] = []
        for round_ in range(args.rounds):
            theirs.append(vllm_bench(python, server.url, checkpoint, args, cache / f"vllm-{round_}.json", round_))
            mine.append(ours(server.url, args, round_))
    finally:
        server.stop()
    print(f"{args.model} on vLLM's OpenAI server; {args.requests} requests of {args.prompt_tokens} + "
          f"{args.output_tokens} tokens at {args.rate:g}/s (Poisson); median of {args.rounds} alternating rounds")
    print("| metric | vllm bench serve | pytest-llmperf | ours / vLLM's |")
    print("|---|---|---|---|")
    keys = [f"{p}_{m}_ms" for m in LATENCIES for p in ("median", "p99")] + list(THROUGHPUTS) + ["completed"]
    for key in keys:
        a = statistics.median(float(r[key]) for r in theirs)
        b = statistics.median(float(r[key]) for r in mine)
        print(f"| {key} | {a:.3f} | {b:.3f} | {b / a:.4f} |")


if __name__ == "__main__":
    main()
