"""The program each rank runs: join the process group, connect back to the test, obey commands.

Started by torch's elastic agent (``torchrun``), which sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR
and MASTER_PORT. Everything a rank measures goes through :class:`~pytest_llmperf.measure.rank.RankRunner`,
exactly as in the inline launcher.
"""

from __future__ import annotations

import os
import socket
import sys
import traceback
from datetime import timedelta
from multiprocessing.connection import Client, Connection
from typing import Any

from pytest_llmperf.launch.lifetime import die_with_parent
from pytest_llmperf.launch.protocol import (
    BACKEND_ENV,
    COLLECTIVE_TIMEOUT_ENV,
    CONTROL_ADDR_ENV,
    CONTROL_KEY_ENV,
    DEVICE_KIND_ENV,
    LOG_DIR_ENV,
    Command,
    Hello,
    Progress,
    Reply,
    rank_log_name,
)


def _redirect_output(log_dir: str, rank: int) -> None:
    """Send this rank's stdout and stderr (C libraries included) to its own log file."""
    fd = os.open(os.path.join(log_dir, rank_log_name(rank)), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    sys.stderr.reconfigure(line_buffering=True)  # type: ignore[union-attr]


def _init_process_group(kind: str, local_rank: int, timeout_s: float) -> str:
    import torch
    import torch.distributed as dist

    if kind == "cuda":
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(torch.device(device))
        torch.cuda.init()
        dist.init_process_group("nccl", timeout=timedelta(seconds=timeout_s), device_id=torch.device(device))
    else:
        device = "cpu"
        dist.init_process_group("gloo", timeout=timedelta(seconds=timeout_s))
    return device


class _Rank:
    def __init__(self, conn: Connection, backend_id: str, device: str):
        from pytest_llmperf.backends import backend_class
        from pytest_llmperf.measure.rank import RankRunner

        self._conn = conn
        self.runner: RankRunner | None = None
        self._backend_id = backend_id
        self._device = device
        self._backend_class = backend_class

    def _progress(self, what: str, done: int, total: int) -> None:
        self._conn.send(Progress(what, done, total))

    def run(self, command: Command) -> Any:
        from pytest_llmperf.measure.rank import RankRunner

        args = command.args
        if command.name == "load":
            self.runner = RankRunner(self._backend_class(self._backend_id)(), self._device)
            return self.runner.load(args["request"])
        if self.runner is None:
            raise RuntimeError(f"command {command.name!r} before 'load'")
        if command.name == "first_generate":
            return self.runner.first_generate(args["input_ids"], args["new_tokens"])
        if command.name == "generate":
            return self.runner.generate(args["config"], args["input_ids"],
                                        self._progress if args.get("progress") else None)
        if command.name == "tokens":
            return self.runner.tokens(args["input_ids"], args["new_tokens"])
        if command.name == "perturb_weight":
            from pytest_llmperf.correctness import perturb_one_weight

            return perturb_one_weight(self.runner.backend.module())
        if command.name == "limit_memory":
            from pytest_llmperf.measure.memory_limit import limit_memory

            return limit_memory(self._device, args["headroom_bytes"])
        raise ValueError(f"unknown command {command.name!r}")


def main() -> int:
    die_with_parent()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    _redirect_output(os.environ[LOG_DIR_ENV], rank)
    host, port = os.environ[CONTROL_ADDR_ENV].rsplit(":", 1)
    conn = Client((host, int(port)), authkey=bytes.fromhex(os.environ[CONTROL_KEY_ENV]))
    conn.send(Hello(rank=rank, local_rank=local_rank, world_size=int(os.environ["WORLD_SIZE"]), pid=os.getpid(),
                    host=socket.gethostname(), master_addr=os.environ.get("MASTER_ADDR", ""),
                    master_port=os.environ.get("MASTER_PORT", "")))
    rank_state: _Rank | None = None
    try:
        device = _init_process_group(os.environ[DEVICE_KIND_ENV], local_rank,
                                     float(os.environ.get(COLLECTIVE_TIMEOUT_ENV, "600")))
        rank_state = _Rank(conn, os.environ[BACKEND_ENV], device)
        conn.send(Reply(value=device))
    except Exception as exc:
        conn.send(Reply(error_type=type(exc).__name__, error=str(exc), traceback=traceback.format_exc()))
        return 1
    while True:
        try:
            command = conn.recv()
        except EOFError:
            return 1  # the test process is gone
        if command.name == "close":
            break
        try:
            reply = Reply(value=rank_state.run(command))
        except Exception as exc:
            print(traceback.format_exc(), file=sys.stderr, flush=True)
            reply = Reply(error_type=type(exc).__name__, error=str(exc), traceback=traceback.format_exc())
        conn.send(reply)
    _shutdown(rank_state)
    conn.send(Reply(value="closed"))
    conn.close()
    return 0


def _shutdown(rank_state: _Rank) -> None:
    import torch.distributed as dist

    if rank_state.runner is not None:
        rank_state.runner.close()
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
