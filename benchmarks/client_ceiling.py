"""The load generator's own ceiling: the request rate above which the client, not the server, is the limit.

Runs ``pytest_llmperf.serving.client_ceiling`` against the instant server (a process of its own that
answers every completion at once), for each output length, in two modes: ``instant`` (the whole stream
written at once: the client reads many chunks per wake-up, its cheapest case) and ``streamed`` (one
chunk per request every ``--token-gap-ms``, all requests together, as a batched engine's steps: about a
wake-up per chunk, as against a real server). The open loop's rate doubles from ``--start-rps`` until a
step's sends fall behind the schedule (achieved / target below 0.95) or a send is more than
``--max-lag-ms`` late, then bisects twice. Prints the ceiling, and every step's target and achieved rates,
worst send lag, the client's median end-to-end latency against the instant server (the client's own cost
per request), and the client's and server's CPU seconds per second. Figures move with the machine's load:
the CPU share columns say whether the client was what ran out. The client's own latency grows once its
CPU share passes about 0.6 to 0.8, before its sends fall behind: a load meant to measure a server's
latencies should stay well under the ceiling.

    python benchmarks/client_ceiling.py
    python benchmarks/client_ceiling.py --output-tokens 16 128 --seconds=3
"""

from __future__ import annotations

import argparse

from pytest_llmperf.serving.client_ceiling import CeilingCriteria, ClientCeiling, client_ceiling


def _f(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def show(mode: str, ceiling: ClientCeiling) -> None:
    found = ("not reached: every step kept up" if not ceiling.limited
             else "none: behind at the first rate" if ceiling.ceiling_rps is None
             else f"{ceiling.ceiling_rps:.0f} requests/s ({ceiling.ceiling_rps * ceiling.output_tokens:.0f} tokens/s)")
    print(f"\n{ceiling.output_tokens} output tokens, {mode}: ceiling {found}")
    print("| target rate | achieved / target | worst send lag | requests | failed | client median E2EL "
          "| client CPU s/s | server CPU s/s | kept up |")
    print("|---|---|---|---|---|---|---|---|---|")
    for s in ceiling.steps:
        print(f"| {s.target_rate_rps:.0f}/s | {s.achieved_ratio:.3f} | {s.max_send_lag_s * 1000:.1f} ms | {s.requests} "
              f"| {s.failed} | {_f(s.median_e2el_ms, '.2f')} ms | {_f(s.client_cpu_share, '.2f')} "
              f"| {_f(s.server_cpu_share, '.2f')} | {'yes' if ceiling.criteria.kept_up(s) else 'no'} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-tokens", type=int, nargs="+", default=[16, 128])
    parser.add_argument("--token-gap-ms", type=float, default=2.0, help="the streamed mode's gap between chunks")
    parser.add_argument("--start-rps", type=float, default=25.0)
    parser.add_argument("--max-rps", type=float, default=6400.0)
    parser.add_argument("--seconds", type=float, default=2.0, help="each step's schedule, about")
    parser.add_argument("--max-lag-ms", type=float, default=50.0)
    args = parser.parse_args()
    criteria = CeilingCriteria(min_achieved_ratio=0.95, max_send_lag_s=args.max_lag_ms / 1000)
    print(f"the load generator against the instant server; a step keeps up when achieved / target >= "
          f"{criteria.min_achieved_ratio} and the worst send lag <= {args.max_lag_ms:g} ms, with no failed request")
    for tokens in args.output_tokens:
        for mode, gap in (("instant", 0.0), (f"streamed every {args.token_gap_ms:g} ms", args.token_gap_ms)):
            show(mode, client_ceiling(tokens, token_gap_ms=gap, start_rps=args.start_rps, max_rps=args.max_rps,
                                      seconds=args.seconds, criteria=criteria))


if __name__ == "__main__":
    main()
