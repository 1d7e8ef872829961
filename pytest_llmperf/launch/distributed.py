"""A group of rank processes, started the way torch.distributed expects, driven from the test process.

The test process listens on a control socket and starts one elastic agent per node
(``python -m torch.distributed.run`` with c10d rendezvous); each agent starts its ranks, and each rank
connects back, says hello and waits for commands. The group lives as long as the fixture that
started it. A rank that fails, dies or does not answer in time fails the command with that rank's
error and its last output lines; the whole group is then torn down, so nothing is left behind.
"""

from __future__ import annotations

import contextlib
import os
import queue
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, Listener, wait
from pathlib import Path
from typing import Any, NoReturn, cast

from pytest_llmperf.launch.agent import PARENT_PID_ENV
from pytest_llmperf.launch.leftovers import keep_cited_logs, record_group, remove_dead_groups_leftovers
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
from pytest_llmperf.launch.shm_buffers import buffer_prefix, remove_buffers

#: lines of a rank's output quoted when it fails
TAIL_LINES = 20
#: seconds a rank's error or death waits for the other ranks' deaths to show (a death is the likelier cause)
DEATH_GRACE_S = 2.0
#: ``progress(description, completed, total)``, fed from rank 0
ProgressFn = Callable[[str, int, int], None]


class RankFailed(Exception):
    """A rank raised, died or hung; the message has its error and its last output lines."""


class RankUnavailable(Exception):
    """A rank reported that its backend cannot run here (``BackendUnavailable`` inside the rank)."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def tail(path: Path, lines: int = TAIL_LINES, *, quoted: str | None = None) -> str:
    """The last lines of a log. A log that ends with ``quoted`` (the traceback a failed rank also printed
    there, already in the message) gives the lines before it: its own last output, not the traceback again."""
    try:
        text = path.read_text(errors="replace").rstrip("\n")
    except OSError:
        return ""
    if quoted and quoted.strip() and text.endswith(quoted.rstrip("\n")):
        text = text[:-len(quoted.rstrip("\n"))].rstrip("\n")
    return "\n".join(text.splitlines()[-lines:])


@dataclass(frozen=True)
class GroupSpec:
    backend_id: str
    world_size: int
    #: "cpu" (gloo) or "cuda" (nccl)
    device_kind: str
    log_dir: Path
    #: the agents' CUDA_VISIBLE_DEVICES: exactly the leased devices
    cuda_visible_devices: str | None = None
    #: elastic agents ("nodes") started here; ranks are split evenly between them
    nnodes: int = 1
    #: seconds one command (start-up included) may take before the group is torn down
    timeout_s: float = 600.0
    #: more environment for the ranks
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.world_size % self.nnodes:
            raise ValueError(f"world size {self.world_size} cannot be split evenly over {self.nnodes} nodes")

    @property
    def nproc_per_node(self) -> int:
        return self.world_size // self.nnodes


def torchrun_args(spec: GroupSpec, rdzv_endpoint: str, rdzv_id: str) -> list[str]:
    """The torchrun arguments of one node; the same arguments start a node on another machine."""
    return [
        "--nnodes", str(spec.nnodes), "--nproc-per-node", str(spec.nproc_per_node),
        "--rdzv-backend", "c10d", "--rdzv-endpoint", rdzv_endpoint, "--rdzv-id", rdzv_id,
        "--max-restarts", "0", "--monitor-interval", "0.2",
        "-m", "pytest_llmperf.launch.rank_main",
    ]


def rank_environment(spec: GroupSpec, control_addr: str, key: bytes) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        CONTROL_ADDR_ENV: control_addr,
        CONTROL_KEY_ENV: key.hex(),
        LOG_DIR_ENV: str(spec.log_dir),
        BACKEND_ENV: spec.backend_id,
        DEVICE_KIND_ENV: spec.device_kind,
        COLLECTIVE_TIMEOUT_ENV: str(spec.timeout_s),
        PARENT_PID_ENV: str(os.getpid()),
        "PYTHONUNBUFFERED": "1",
        # ranks share the machine's cores; without this every rank starts one thread per core
        "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // spec.nproc_per_node)),
        # DeepSpeed's CPU all-reduce needs the number of ranks on this node
        "LOCAL_SIZE": str(spec.nproc_per_node),
    })
    if spec.cuda_visible_devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = spec.cuda_visible_devices
    env.update(spec.env)
    return env


def _ready(conns: list[Connection], timeout: float) -> list[Connection]:
    """The connections with something to read (or closed), within ``timeout`` seconds."""
    return cast(list[Connection], wait(conns, timeout=timeout))


class RankGroup:
    """Rank processes answering commands; use :meth:`start`, :meth:`call`, :meth:`close`."""

    def __init__(self, spec: GroupSpec):
        self.spec = spec
        self.hellos: list[Hello] = []
        self.devices: list[str] = []
        self._key = secrets.token_bytes(32)
        self._listener = Listener(("127.0.0.1", 0), authkey=self._key)
        self._accepted: queue.Queue[Connection | BaseException] = queue.Queue()
        self._conns: list[Connection] = []
        self._agents: list[subprocess.Popen[bytes]] = []
        self._closed = False
        spec.log_dir.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ start-up

    @classmethod
    def start(cls, spec: GroupSpec) -> RankGroup:
        remove_dead_groups_leftovers()
        group = cls(spec)
        try:
            group._start()
        except BaseException:
            group.close()
            raise
        return group

    def _start(self) -> None:
        host, port = self._listener.address
        threading.Thread(target=self._accept, name="llmperf-accept", daemon=True).start()
        endpoint = f"127.0.0.1:{free_port()}"
        rdzv_id = secrets.token_hex(8)
        env = rank_environment(self.spec, f"{host}:{port}", self._key)
        for node in range(self.spec.nnodes):
            log = open(self.spec.log_dir / f"agent-{node}.log", "ab")  # noqa: SIM115 - owned by the child
            try:
                self._agents.append(subprocess.Popen(
                    [sys.executable, "-m", "pytest_llmperf.launch.agent", *torchrun_args(self.spec, endpoint, rdzv_id)],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                    start_new_session=True,  # Ctrl-C in the terminal reaches pytest, which tears the group down
                ))
            finally:
                log.close()
        deadline = time.monotonic() + self.spec.timeout_s
        by_rank: dict[int, tuple[Hello, Connection]] = {}
        while len(by_rank) < self.spec.world_size:
            self._check_agents("starting")
            if time.monotonic() > deadline:
                self._fail(None, f"only {len(by_rank)} of {self.spec.world_size} ranks started within "
                                 f"{self.spec.timeout_s:.0f} s (--llmperf-rank-timeout)")
            try:
                item = self._accepted.get(timeout=0.2)
            except queue.Empty:
                continue
            if isinstance(item, BaseException):
                self._fail(None, f"the control listener failed: {item}")
            if not item.poll(max(0.0, deadline - time.monotonic())):
                self._fail(None, "a rank connected but did not say hello")
            hello = item.recv()
            by_rank[hello.rank] = (hello, item)
        self.hellos = [by_rank[r][0] for r in range(self.spec.world_size)]
        self._conns = [by_rank[r][1] for r in range(self.spec.world_size)]
        record_group(self.spec.log_dir, self._shm_prefixes())  # before any command: the buffers come with 'load'
        self.devices = self._gather("join the process group", range(self.spec.world_size), deadline, None)

    def _accept(self) -> None:
        for _ in range(self.spec.world_size):
            try:
                self._accepted.put(self._listener.accept())
            except OSError as exc:  # closed while waiting: the group is being torn down
                if not self._closed:
                    self._accepted.put(exc)
                return
            except BaseException as exc:  # authentication failures and the like
                self._accepted.put(exc)
                return

    def _check_agents(self, doing: str) -> None:
        for node, agent in enumerate(self._agents):
            code = agent.poll()
            if code is not None:
                self._fail(None, f"the launcher of node {node} exited with status {code} while {doing}")

    # ------------------------------------------------------------------ commands

    def call(self, name: str, args: dict[str, Any] | None = None, *, ranks: list[int] | None = None,
             per_rank: list[dict[str, Any]] | None = None, progress: ProgressFn | None = None) -> list[Any]:
        """Run one command on the given ranks (all by default); their answers, in rank order."""
        if self._closed:
            raise RuntimeError("the rank group is closed")
        targets = list(range(self.spec.world_size)) if ranks is None else ranks
        for r in targets:
            command_args = dict(args or {})
            if per_rank is not None:
                command_args.update(per_rank[r])
            if progress is not None and r == 0:
                command_args["progress"] = True
            try:
                self._conns[r].send(Command(name, command_args))
            except OSError:
                self._fail(r, f"rank {r} is gone (its connection closed) before {name!r}")
        return self._gather(name, targets, time.monotonic() + self.spec.timeout_s, progress)

    def _gather(self, what: str, ranks: Any, deadline: float, progress: ProgressFn | None) -> list[Any]:
        values: dict[int, Any] = {}
        pending = {self._conns[r]: r for r in ranks}
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                late = sorted(pending.values())
                self._fail(late, f"rank {', '.join(map(str, late))} did not finish {what!r} within "
                                 f"{self.spec.timeout_s:.0f} s (--llmperf-rank-timeout)")
            # read every rank that is ready before judging any: once a rank dies, the others soon fail
            # too (a broken collective, or torchrun's SIGTERM), so deaths are looked at first
            received: list[tuple[int, Connection, Any]] = []
            closed: list[Connection] = []
            for conn in _ready(list(pending), min(0.5, remaining)):
                try:
                    received.append((pending[conn], conn, conn.recv()))
                except (EOFError, OSError):
                    closed.append(conn)
            if closed:
                # which died first cannot be told from here (torchrun stops the rest at once, and a
                # connection may close late): every rank that died is named (the agents' logs say which first)
                died = sorted([pending[c] for c in closed] + self._deaths(pending, closed))
                self._fail(died, f"rank {', '.join(map(str, died))} died during {what!r}" + self._exit_note())
            for r, conn, message in sorted(received, key=lambda item: item[0]):
                if isinstance(message, Progress):
                    if progress is not None:
                        progress(message.what, message.done, message.total)
                    continue
                assert isinstance(message, Reply)
                if message.error_type is not None:
                    if message.error_type == "BackendUnavailable":
                        self.close()
                        raise RankUnavailable(message.error)
                    error = f"{message.error_type}: {message.error}"
                    died = self._deaths(pending, [conn])
                    if died:  # its collective broke because a peer died: name the dead rank first
                        self._fail(died, f"rank {', '.join(map(str, died))} died during {what!r}"
                                         f"{self._exit_note()}; then rank {r} failed: {error}")
                    self._fail(r, f"rank {r} failed during {what!r}: {error}", message.traceback)
                values[r] = message.value
                del pending[conn]
            if pending and not received:
                # only when no rank has anything to say: a launcher exits after its ranks, whose closed
                # connections (read above) name the rank that died better than the launcher's status
                self._check_agents(f"running {what!r}")
        return [values[r] for r in sorted(values)]

    def _deaths(self, pending: dict[Connection, int], known: list[Connection]) -> list[int]:
        """The ranks, other than the ``known`` ones (failed or dead), whose connections close within DEATH_GRACE_S.

        A rank's error or death is often the consequence of another's death (its collective broke, or
        torchrun stopped it), and that rank's closed connection may show only after it.
        """
        others = [c for c in pending if c not in known]
        died: list[int] = []
        deadline = time.monotonic() + DEATH_GRACE_S
        while others and (remaining := deadline - time.monotonic()) > 0:
            for conn in _ready(others, remaining):
                try:
                    conn.recv()  # the group fails anyway: what it says no longer matters
                except (EOFError, OSError):
                    died.append(pending[conn])
                    others.remove(conn)
        return sorted(died)

    def _exit_note(self) -> str:
        """The agents' exit statuses, once they have noticed (torchrun reports each rank's signal)."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(a.poll() is None for a in self._agents):
            time.sleep(0.05)
        codes = [a.poll() for a in self._agents]
        return "" if all(c is None for c in codes) else f" (launcher exit status {', '.join(map(str, codes))})"

    def _fail(self, ranks: int | list[int] | None, message: str, traceback_text: str | None = None) -> NoReturn:
        """Tear the group down and raise RankFailed with the last lines of these ranks' and the agents' logs."""
        parts = [message]
        if traceback_text:
            parts.append(traceback_text.rstrip())
        ranks = [] if ranks is None else [ranks] if isinstance(ranks, int) else ranks
        logs = [self.spec.log_dir / rank_log_name(rank) for rank in ranks]
        logs += [self.spec.log_dir / f"agent-{n}.log" for n in range(self.spec.nnodes)]
        # read before the tear-down, whose own traces (the agents' SignalException on SIGTERM) would bury them
        tails = [(log, tail(log, quoted=traceback_text)) for log in logs]
        self.close(graceful=False)
        for log, text in tails:
            if text:
                parts.append(f"--- last lines of {log.name} ({log}) ---\n{text}")
        if any(text for _, text in tails):
            keep_cited_logs(self.spec.log_dir)
        raise RankFailed("\n".join(parts))

    # ------------------------------------------------------------------ tear-down

    def close(self, *, graceful: bool = True) -> None:
        """Ask the ranks to exit, then make sure of it: no rank, agent or shared-memory file outlives this.

        Not graceful (after a failure): kill at once, since a rank may be stuck in a collective.
        """
        if self._closed:
            return
        self._closed = True
        live = []
        for conn in self._conns if graceful else ():
            try:
                conn.send(Command("close", {}))
                live.append(conn)
            except OSError:
                pass
        deadline = time.monotonic() + 30
        while live and time.monotonic() < deadline and all(a.poll() is None for a in self._agents):
            for conn in _ready(live, 0.5):
                with contextlib.suppress(EOFError, OSError):
                    conn.recv()
                    continue
                live.remove(conn)
        for agent in self._agents if graceful else ():
            with contextlib.suppress(subprocess.TimeoutExpired):
                agent.wait(timeout=max(0.0, min(10.0, deadline - time.monotonic())))
        self._kill_everything()
        for conn in self._conns:
            conn.close()
        self._listener.close()
        self._remove_shared_memory()

    def _kill_everything(self) -> None:
        import psutil

        procs: list[psutil.Process] = []
        for agent in self._agents:
            with contextlib.suppress(psutil.NoSuchProcess):
                parent = psutil.Process(agent.pid)
                procs += [parent, *parent.children(recursive=True)]
        for hello in self.hellos:
            if hello.host == socket.gethostname():
                with contextlib.suppress(psutil.NoSuchProcess):
                    procs.append(psutil.Process(hello.pid))
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(procs, timeout=3)
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(alive, timeout=3)
        for agent in self._agents:
            with contextlib.suppress(subprocess.TimeoutExpired):
                agent.wait(timeout=1)

    def _shm_prefixes(self) -> list[str]:
        """The names of this group's DeepSpeed /dev/shm buffers (made by its ranks on this machine), but the rank."""
        host = socket.gethostname()
        return sorted({buffer_prefix(h.master_addr, h.master_port) for h in self.hellos if h.host == host})

    def _remove_shared_memory(self) -> None:
        """DeepSpeed's CPU all-reduce leaves one /dev/shm file per rank behind."""
        remove_buffers(self._shm_prefixes())
