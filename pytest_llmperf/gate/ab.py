"""``llmperf ab``: two revisions of a project measured in the same job, alternating whole processes.

Each revision is checked out into its own git worktree and runs in its own pytest process, with the
worktree first on ``PYTHONPATH`` (or with a Python of its own: ``--base-python``/``--head-python``).
Processes alternate on the same devices, in rounds of one each: base head, head base, base head ...; every
process writes its run into the same history, tagged with the A/B group and side.

The rounds are sequential: after the minimum rounds the run plans how many it needs to detect ``detect``
(10 %) with 80 % power from the noise the history and the first rounds show, within ``max_rounds`` and the
time budget; then it looks after the rounds of ``sequential.look_rounds``, spending its error rate by a
group-sequential design, and
stops as soon as a regression fails the run, or every gated comparison is decided (``regressed``,
``improved`` or ``unchanged``), at the planned rounds, or when another round would not fit in the budget.
A decision made at a look stands.

Noise the tool can remove it removes: each process is pinned to one CPU core with one thread (measured on
a busy 2-core machine, 20 processes per configuration: the spread between processes fell from about 100 %
with both cores and two threads to about 30 %), and the measurement pauses the garbage collector inside
trials. Multi-rank backends start their ranks from the pinned process: give them a core each (``--cpus``).
"""

from __future__ import annotations

import contextlib
import math
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pytest_llmperf.environment import GitError, git
from pytest_llmperf.gate.sequential import look_rounds
from pytest_llmperf.gate.verdict import DEFAULT_ALPHA, Comparison, Look, Outcome, Verdict

#: pytest exit codes after which a process's measurements count: all passed, or some tests failed
_MEASURED = (0, 1)


class AbError(Exception):
    """The A/B run cannot go on; the message names what, the value and the fix."""


@dataclass(frozen=True)
class Side:
    name: str  # "base" or "head"
    rev: str
    commit: str
    worktree: Path
    python: str


@dataclass(frozen=True)
class AbConfig:
    repo: Path
    base: str
    head: str
    db: Path
    pytest_args: tuple[str, ...]
    #: the option that named ``db``, for the history's error messages
    db_flag: str = "--db"
    min_rounds: int = 2
    max_rounds: int = 100
    #: stop adding rounds when the next one would end after this many seconds (None: no budget)
    time_budget_s: float | None = None
    #: the worse change the plan should detect with 80 % power (a fraction)
    detect: float = 0.10
    #: the share of A/A runs that may fail
    alpha: float = DEFAULT_ALPHA
    #: where worktrees go (default: <repo>/.llmperf/ab)
    work_dir: Path | None = None
    base_python: str | None = None
    head_python: str | None = None
    #: directories inside a worktree put first on PYTHONPATH ("." for a flat layout, "src" for a src layout)
    pythonpath: tuple[str, ...] = (".",)
    #: pin every process to these CPU cores (None: the first core this process may use); () to not pin
    cpus: tuple[int, ...] | None = None
    keep_worktrees: bool = False
    report_dir: Path | None = None
    group: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def __post_init__(self) -> None:
        if self.min_rounds < 1:
            raise AbError(f"--rounds must be at least 1, not {self.min_rounds}")
        if self.max_rounds < self.min_rounds:
            raise AbError(f"--max-rounds ({self.max_rounds}) must be at least --rounds ({self.min_rounds})")


def resolve_commit(repo: Path, rev: str) -> str:
    try:
        return git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    except GitError:
        raise AbError(f"revision {rev!r} is not a commit of {repo}: give a branch, tag or commit "
                      "that `git rev-parse` knows (fetch it first in a shallow clone)") from None


def add_worktree(repo: Path, commit: str, work_dir: Path) -> Path:
    """A detached worktree of ``commit`` (reused when one is already there)."""
    path = work_dir / commit[:12]
    try:
        if path.exists() and git(path, "rev-parse", "HEAD") == commit:
            return path
        work_dir.mkdir(parents=True, exist_ok=True)
        git(repo, "worktree", "add", "--force", "--detach", str(path), commit)
    except GitError as exc:
        raise AbError(str(exc)) from None
    return path


def remove_worktree(repo: Path, path: Path) -> None:
    with contextlib.suppress(GitError):  # cleaning up: a worktree already gone is fine
        git(repo, "worktree", "remove", "--force", str(path))


def process_env(side: Side, config: AbConfig, cpus: tuple[int, ...]) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(side.worktree / p) for p in config.pythonpath]
    env["PYTHONPATH"] = os.pathsep.join([*paths, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    env["PYTHONHASHSEED"] = "0"
    if cpus:  # one thread, unless the caller chose: threads that contend for cores spread the processes apart
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env.setdefault(name, "1")
    return env


def default_cpus() -> tuple[int, ...]:
    """One core: the first this process may use."""
    return (min(os.sched_getaffinity(0)),)


def process_command(side: Side, config: AbConfig) -> list[str]:
    # the worktree is the rootdir, so that both sides (and the main checkout) give every test the same id
    rootdir = [] if any(a.startswith("--rootdir") for a in config.pytest_args) else [f"--rootdir={side.worktree}"]
    return [side.python, "-m", "pytest", "--llmperf", f"--llmperf-db={config.db}",
            f"--llmperf-ab={config.group}:{side.name}", "-p", "no:cacheprovider", *rootdir, *config.pytest_args]


def process_cwd(side: Side, config: AbConfig) -> Path:
    """Where the command was started, in the side's worktree (the repository's root when started outside it)."""
    try:
        return side.worktree / Path.cwd().resolve().relative_to(config.repo)
    except ValueError:
        return side.worktree


def run_process(side: Side, config: AbConfig, cpus: tuple[int, ...], log: Callable[[str], None]) -> int:
    """One pytest process of one side; Ctrl-C or a crash of ours takes its whole process group with it."""
    command = process_command(side, config)
    log(f"llmperf ab: {side.name} ({side.commit[:12]}): {shlex.join(command)}")

    def pin() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)

    # preexec_fn is unsafe only with threads, and ``llmperf ab`` starts its processes from its one thread
    proc = subprocess.Popen(command, cwd=process_cwd(side, config), env=process_env(side, config, cpus),
                            start_new_session=True, preexec_fn=pin)  # noqa: PLW1509
    try:
        return proc.wait()
    except BaseException:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        raise


@dataclass(frozen=True)
class AbResult:
    group: str
    base: Side
    head: Side
    rounds: int
    verdicts: tuple[Verdict, ...]

    @property
    def fails(self) -> bool:
        return any(v.fails for v in self.verdicts)


def _sides(config: AbConfig) -> tuple[Side, Side]:
    work_dir = config.work_dir or config.repo / ".llmperf" / "ab"
    sides = []
    for name, rev, python in (("base", config.base, config.base_python), ("head", config.head, config.head_python)):
        commit = resolve_commit(config.repo, rev)
        sides.append(Side(name, rev, commit, add_worktree(config.repo, commit, work_dir), python or sys.executable))
    return sides[0], sides[1]


def group_comparisons(config: AbConfig, base: Side) -> list[Comparison]:
    from pytest_llmperf.gate.ab_compare import ab_comparisons
    from pytest_llmperf.history.store import HistoryStore

    with HistoryStore.open(config.db, flag=config.db_flag) as store:
        return ab_comparisons(store, config.group, base_label=f"base {base.commit[:12]}")


def planned_rounds(comparisons: list[Comparison], config: AbConfig) -> int:
    """The rounds that detect ``config.detect`` with 80 % power in every gated series, from the noise known
    now (the history's and the first rounds'), between the minimum and the maximum rounds."""
    from pytest_llmperf.gate.plan import processes_needed

    sds = [e.se_log / math.sqrt(1 / e.n_base + 1 / e.n_head) for c in comparisons
           if c.gated and (e := c.evidence) is not None and e.se_log is not None]
    tests = max(len(sds), 1)
    needed = config.max_rounds
    if sds and all(math.isfinite(sd) for sd in sds):
        needed = max(processes_needed(sd, config.detect, config.alpha / tests) for sd in sds)
    return min(max(needed, config.min_rounds), config.max_rounds)


def _decided(verdict: Verdict) -> bool:
    return verdict.outcome is not Outcome.INCONCLUSIVE or verdict.evidence is None


def run_rounds(config: AbConfig, run_round: Callable[[int], None], compare: Callable[[], list[Comparison]], *,
               clock: Callable[[], float] = time.monotonic, log: Callable[[str], None] = print,
               ) -> tuple[int, list[Verdict]]:
    """The sequential design of an A/B run: (rounds run, verdicts). ``run_round(i)`` measures round ``i``;
    ``compare()`` gives the comparisons of everything measured so far."""
    from pytest_llmperf.gate.verdict import judge

    started = clock()
    rounds, planned, verdicts = 0, config.max_rounds, []
    decided: dict[str, Verdict] = {}
    while rounds < planned:
        run_round(rounds)
        rounds += 1
        if rounds < config.min_rounds:
            continue
        per_round = (clock() - started) / rounds
        out_of_time = config.time_budget_s is not None and clock() - started + per_round > config.time_budget_s
        comparisons = compare() if rounds == config.min_rounds else None
        if comparisons is not None:
            planned = planned_rounds(comparisons, config)
            log(f"llmperf ab: {planned} round(s) planned to detect a {config.detect:.0%} change with 80 % power")
        final = rounds >= planned or out_of_time
        if not final and rounds not in look_rounds(config.min_rounds, planned):
            continue
        if comparisons is None:
            comparisons = compare()
        look = Look(rounds=rounds, first=config.min_rounds, planned=max(planned, rounds), final=final)
        verdicts = [decided.get(v.subject.digest(), v) for v in judge(comparisons, alpha=config.alpha, look=look)]
        decided.update({v.subject.digest(): v for v in verdicts if _decided(v)})
        open_questions = [v for v in verdicts if v.comparison.gated and not _decided(v)]
        if not open_questions or final or any(v.fails for v in verdicts):  # a failed run stays failed
            if out_of_time and open_questions and rounds < planned:
                log(f"llmperf ab: stopping after {rounds} of {planned} round(s): the next would not fit in "
                    f"the time budget of {config.time_budget_s:g} s")
            break
        log(f"llmperf ab: {len(open_questions)} gated comparison(s) open after {rounds} round(s): more rounds")
    return rounds, verdicts


def run_ab(config: AbConfig, log: Callable[[str], None] = print) -> AbResult:
    cpus = default_cpus() if config.cpus is None else config.cpus
    base, head = _sides(config)

    def run_round(index: int) -> None:
        # A B, then B A: a drift over the job, or an effect of coming first, falls on both sides alike
        for side in ((base, head) if index % 2 == 0 else (head, base)):
            code = run_process(side, config, cpus, log)
            if code not in _MEASURED:
                raise AbError(f"the {side.name} process ({side.rev}, {side.commit[:12]}) exited with {code} "
                              f"(pytest: {_exit_meaning(code)}); its output is above. Run it alone with: cd "
                              f"{process_cwd(side, config)} && {shlex.join(process_command(side, config))}")

    try:
        rounds, verdicts = run_rounds(config, run_round, lambda: group_comparisons(config, base), log=log)
        return AbResult(config.group, base, head, rounds, tuple(verdicts))
    finally:
        if not config.keep_worktrees:
            for side in (base, head):
                remove_worktree(config.repo, side.worktree)


def _exit_meaning(code: int) -> str:
    return {2: "interrupted", 3: "internal error", 4: "usage error", 5: "no tests collected"}.get(
        code, "killed by a signal" if code < 0 else "unexpected exit status")


def store_verdicts(config: AbConfig, result: AbResult) -> str | None:
    """Record the verdicts on the last head run of the group; its id, or None without one."""
    from pytest_llmperf.history.runs import ab_sides
    from pytest_llmperf.history.store import HistoryStore

    with HistoryStore.open(config.db, flag=config.db_flag) as store:
        head_runs = ab_sides(store, config.group).head
        if not head_runs:
            return None
        store.record_verdicts(head_runs[-1], list(result.verdicts), baseline_kind="ab")
        return head_runs[-1]


def reproduce_command(config: AbConfig, result: AbResult) -> str:
    """The command that measures one regressed test again; ``{test}`` stands for its id, which replaces the
    test paths among the pytest arguments (those that exist in the repository)."""
    options = [a for a in config.pytest_args if a.startswith("-") or not (config.repo / a.split("::")[0]).exists()]
    return shlex.join(["llmperf", "ab", "--base", result.base.commit, "--head", result.head.commit, "--",
                       *options]) + " {test}"
