"""The program each rank runs: join the process group, connect back to the test, obey commands.

Started by torch's elastic agent (``torchrun``), which sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR
and MASTER_PORT. Each command is run by name from :mod:`pytest_llmperf.launch.commands`, the table the
inline launcher runs too, so every rank measures exactly as a test's own process does.
"""

from __future__ import annotations

import os
import socket
import sys
import traceback
from datetime import timedelta
from multiprocessing.connection import Client, Connection
from typing import TYPE_CHECKING

from pytest_llmperf.launch.lifetime import die_with_parent
from pytest_llmperf.launch.protocol import (
    BACKEND_ENV,
    COLLECTIVE_TIMEOUT_ENV,
    CONTROL_ADDR_ENV,
    CONTROL_KEY_ENV,
    DEVICE_KIND_ENV,
    LOG_DIR_ENV,
    Hello,
    Progress,
    Reply,
    rank_log_name,
)

if TYPE_CHECKING:
    from pytest_llmperf.launch.commands import Rank


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


def main() -> int:
    die_with_parent()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    _redirect_output(os.environ[LOG_DIR_ENV], rank)
    host, port = os.environ[CONTROL_ADDR_ENV].rsplit(":", 1)
    conn = Client((host, int(port)), authkey=bytes.fromhex(os.environ[CONTROL_KEY_ENV]))
    conn.send(Hello(rank=rank, local_rank=local_rank, world_size=int(os.environ["WORLD_SIZE"]), pid=os.getpid(),
                    host=socket.gethostname(), master_addr=os.environ.get("MASTER_ADDR", ""),
                    master_port=os.environ.get("MASTER_PORT", "")))
    try:
        from pytest_llmperf.launch.commands import Rank, import_command_modules

        import_command_modules()
        device = _init_process_group(os.environ[DEVICE_KIND_ENV], local_rank,
                                     float(os.environ.get(COLLECTIVE_TIMEOUT_ENV, "600")))
        state = Rank(os.environ[BACKEND_ENV], device)
        conn.send(Reply(value=device))
    except Exception as exc:
        conn.send(Reply(error_type=type(exc).__name__, error=str(exc), traceback=traceback.format_exc()))
        return 1
    return _obey(conn, state)


def _obey(conn: Connection, rank: Rank) -> int:
    """Run commands until ``close``; a command's error is its reply, and the rank goes on."""
    from pytest_llmperf.launch.commands import CLOSE, run_command

    def progress(what: str, done: int, total: int) -> None:
        conn.send(Progress(what, done, total))

    while True:
        try:
            command = conn.recv()
        except EOFError:
            return 1  # the test process is gone
        args = dict(command.args)
        if args.pop("progress", False):
            args["progress"] = progress
        try:
            reply = Reply(value=run_command(rank, command.name, args))
        except Exception as exc:
            print(traceback.format_exc(), file=sys.stderr, flush=True)
            reply = Reply(error_type=type(exc).__name__, error=str(exc), traceback=traceback.format_exc())
        if command.name == CLOSE:
            break
        conn.send(reply)
    _leave_process_group()
    conn.send(Reply(value="closed"))
    conn.close()
    return 0


def _leave_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
