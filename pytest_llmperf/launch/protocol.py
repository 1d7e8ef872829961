"""What the test process and its ranks say to each other over the control connection.

Each rank connects back to the test process (``multiprocessing.connection``, authenticated with a
per-group key), says hello, then answers commands one at a time. Messages are pickled dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: "host:port" of the test process's control listener
CONTROL_ADDR_ENV = "LLMPERF_CONTROL_ADDR"
#: hex of the authentication key of the control connection
CONTROL_KEY_ENV = "LLMPERF_CONTROL_KEY"
#: directory of the ranks' log files
LOG_DIR_ENV = "LLMPERF_LOG_DIR"
#: backend id the ranks load
BACKEND_ENV = "LLMPERF_BACKEND"
#: "cpu" or "cuda"
DEVICE_KIND_ENV = "LLMPERF_DEVICE_KIND"
#: seconds a collective may wait before torch.distributed gives up
COLLECTIVE_TIMEOUT_ENV = "LLMPERF_COLLECTIVE_TIMEOUT_S"


@dataclass(frozen=True)
class Hello:
    rank: int
    local_rank: int
    world_size: int
    pid: int
    host: str
    master_addr: str
    master_port: str


@dataclass(frozen=True)
class Command:
    name: str
    args: dict[str, Any]


@dataclass(frozen=True)
class Progress:
    what: str
    done: int
    total: int


@dataclass(frozen=True)
class Reply:
    value: Any = None
    #: set when the command raised: the exception's class name, message and formatted traceback
    error_type: str | None = None
    error: str | None = None
    traceback: str | None = None


def rank_log_name(rank: int) -> str:
    return f"rank-{rank}.log"
