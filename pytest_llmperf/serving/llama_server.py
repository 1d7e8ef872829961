"""llama.cpp's server as a process of its own: ``python -m pytest_llmperf.serving.llama_server``.

xllamacpp runs llama.cpp's server (its HTTP API included) inside a Python process; this module is that
process. It serves until SIGTERM, then frees the model.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from pytest_llmperf.backends.llama_cpp import server_params

#: the lines that end the start-up phases "process start" (Python and xllamacpp imported) and "weights"
#: (the model loaded and the HTTP server started)
LOADING = "llama.cpp server: loading weights from"
SERVING = "llama.cpp server: serving"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="the .gguf file")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--float32-kv-cache", action="store_true")
    args = parser.parse_args(argv)
    import xllamacpp

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"{LOADING} {args.model}", flush=True)
    server = xllamacpp.Server(server_params(args.model, threads=args.threads, device=args.device,
                                            float32_kv_cache=args.float32_kv_cache, port=args.port))
    print(f"{SERVING} {args.model} at {server.listening_address}", flush=True)
    stop.wait()
    del server
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
