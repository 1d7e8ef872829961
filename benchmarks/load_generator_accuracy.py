"""Does the load generator send what it is asked? Requests sent and the achieved rate against the target.

Starts llama.cpp's server (a process of its own) on a synthetic Llama, finds its capacity with a closed
loop (completed requests per second at ``--concurrency``), then runs open loops at 0.5x, 1x and 2x that
rate and prints, per run: requests asked and sent, completed, the target and achieved send rates, the
worst lateness of a send against its schedule, the most requests in flight, and the TCP connections
the client opened (llama.cpp's server closes a connection after each streamed response, so there is
one per request). Above capacity the server falls behind, but the sends must still follow the
schedule: that is what a generator owes.

    python benchmarks/load_generator_accuracy.py
    python benchmarks/load_generator_accuracy.py --requests=400 --output-tokens=32
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pytest_llmperf.launch.distributed import free_port
from pytest_llmperf.models.gguf_writer import ensure_gguf
from pytest_llmperf.models.spec import parse_model_spec
from pytest_llmperf.models.synthetic import ensure_synthetic
from pytest_llmperf.serving.arrivals import ClosedLoop, OpenLoop
from pytest_llmperf.serving.load_generator import run_load
from pytest_llmperf.serving.presets import llama_cpp_server
from pytest_llmperf.serving.request_metrics import ServingSummary
from pytest_llmperf.serving.server_process import ServerProcess
from pytest_llmperf.serving.workloads import Lengths, Workload
from pytest_llmperf.settings import cache_home


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="synthetic:llama-tiny")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--output-tokens", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=16, help="the closed loop that measures capacity")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model-cache", default=None, help="default: the plugin's model cache, where synthetic "
                        "models are built once and kept")
    args = parser.parse_args()

    cache = Path(args.model_cache or cache_home() / "models")
    checkpoint = ensure_synthetic(parse_model_spec(args.model), "float32", cache)
    gguf, _ = ensure_gguf(checkpoint, "f32", cache / "gguf")
    command = llama_cpp_server(gguf, port=free_port(), threads=args.threads, float32_kv_cache=True)
    server = ServerProcess.start(command, cache / "server.log", timeout_s=120)
    try:
        workload = Workload(prompt=Lengths(args.prompt_tokens), output=Lengths(args.output_tokens))
        completions = workload.completions(args.requests, vocab_size=1024)
        closed = run_load(server.url, "m", completions, ClosedLoop(args.concurrency, args.requests))
        capacity = ServingSummary.of(closed.records, closed.duration_s).request_throughput
        print(f"{args.model} on llama.cpp's server ({args.threads} thread(s)); {args.requests} requests of "
              f"{args.prompt_tokens} prompt + {args.output_tokens} output tokens")
        print(f"capacity (closed loop, concurrency {args.concurrency}): {capacity:.1f} requests/s")
        print("| load | asked | sent | completed | target rate | achieved rate | achieved / target | worst send lag "
              "| most in flight | connections opened |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for factor in (0.5, 1.0, 2.0):
            rate = capacity * factor
            run = run_load(server.url, "m", completions, OpenLoop(rate_rps=rate, requests=args.requests, seed=1))
            done = ServingSummary.of(run.records, run.duration_s).completed
            achieved = run.achieved_rate_rps or float("nan")
            planned = OpenLoop(rate_rps=rate, requests=args.requests, seed=1).send_s()
            schedule_rate = (len(planned) - 1) / planned[-1]
            print(f"| {factor:g}x | {run.asked} | {run.sent} | {done} | {schedule_rate:.1f}/s | {achieved:.1f}/s | "
                  f"{achieved / schedule_rate:.4f} | {run.max_send_lag_s * 1000:.1f} ms | {run.max_in_flight} "
                  f"| {run.connections_opened} |")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
