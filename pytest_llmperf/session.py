"""One run of the performance suite: its id and its history store.

Under pytest-xdist the controller creates the run and hands its id to the workers; each worker
writes its own tests into the same run, so a whole ``pytest -n N`` session is one run.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_llmperf.devices import DeviceUnavailable, device_kind, resolve_device
from pytest_llmperf.environment import collect_environment, collect_run_context
from pytest_llmperf.history.store import HistoryStore
from pytest_llmperf.results import BenchRecord
from pytest_llmperf.settings import DEFAULT_KNOBS, Settings, resolve_knobs

if TYPE_CHECKING:
    from pytest_llmperf.gate.verdict import Verdict

#: pytest exit status -> run status
_RUN_STATUS = {0: "complete", 1: "failed", 2: "interrupted", 5: "complete"}


def new_run_id() -> str:
    return uuid.uuid4().hex


@dataclass
class RunSession:
    settings: Settings
    store: HistoryStore
    run_id: str
    #: True in the process that owns the run (no xdist, or the xdist controller)
    owns_run: bool

    @classmethod
    def start(cls, settings: Settings, *, run_id: str | None, project_root: Path,
              argv: tuple[str, ...], warn: Callable[[str], None] | None = None) -> RunSession:
        """Open the store; a new run when ``run_id`` is None, else join the controller's run.

        A new run records the machine conditions it starts under, and passes ``warn`` what the
        user should hear about them (GPU clocks that are not locked).
        """
        from pytest_llmperf.measure.conditions import collect_conditions, unlocked_clocks_warning

        store = HistoryStore.open(settings.db_path)
        if run_id is not None:
            return cls(settings=settings, store=store, run_id=run_id, owns_run=False)
        run_id = new_run_id()
        try:
            default_device = resolve_knobs(settings.cli, settings.ini, DEFAULT_KNOBS).device
            assert default_device is not None
            try:
                kind = device_kind(resolve_device(default_device))
            except DeviceUnavailable:
                kind = "cpu"  # the tests will be skipped with the reason; the run is still recorded
            group, side = settings.ab or (None, None)
            conditions = collect_conditions(kind)
            store.start_run(run_id, collect_environment(kind, conditions), collect_run_context(project_root, argv),
                            ab_group=group, ab_side=side, label=settings.label, conditions=conditions)
        except BaseException:
            store.close()
            raise
        if warn is not None and (text := unlocked_clocks_warning(conditions)) is not None:
            warn(text)
        return cls(settings=settings, store=store, run_id=run_id, owns_run=True)

    def record(self, record: BenchRecord, *, test_outcome: str, duration_s: float | None) -> None:
        self.store.record_test(self.run_id, record, test_outcome=test_outcome, duration_s=duration_s)

    def gate_against_history(self, project_root: Path, confirm: Callable[[list[str]], str | None] | None = None,
                             ) -> list[Verdict]:
        """Compare this run with the history of the baseline branch; store and return the verdicts.

        ``confirm(test_ids)``: rerun these tests, return the rerun's run id (``--llmperf-confirm``).
        """
        from pytest_llmperf.environment import default_branch
        from pytest_llmperf.gate.confirm import reconcile
        from pytest_llmperf.gate.history import HISTORY_ALPHA, HistoryBaseline, history_comparisons
        from pytest_llmperf.gate.verdict import judge

        baseline = HistoryBaseline(branch=self.settings.baseline_branch or default_branch(project_root),
                                   runs=self.settings.baseline_runs)
        verdicts = judge(history_comparisons(self.store, self.run_id, baseline), alpha=HISTORY_ALPHA)
        failing = [v.subject.test_id for v in verdicts if v.fails]
        if confirm is not None and failing:
            rerun_id = confirm(failing)
            rerun = judge(history_comparisons(self.store, rerun_id, baseline, exclude=(self.run_id,)),
                          alpha=HISTORY_ALPHA) \
                if rerun_id else []
            verdicts = reconcile(verdicts, rerun, rerun_id)
        self.store.record_verdicts(self.run_id, verdicts, baseline_kind="history")
        return verdicts

    def finish(self, exitstatus: int) -> None:
        try:
            if self.owns_run:
                self.store.finish_run(self.run_id, _RUN_STATUS.get(int(exitstatus), "failed"))
        finally:
            self.store.close()
