"""pytest hooks of pytest-llmperf: options, the marker, the ``llm`` fixture, budgets, history, summary.

The hooks only wire things together; the work happens in ``settings``, ``case``, ``bench``,
``budgets``, ``session`` and ``report``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Generator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import pytest

from pytest_llmperf.case import MARKER, MARKER_HELP, BenchCase, MarkerError, cases_from_marker
from pytest_llmperf.settings import OPTIONS, Settings, SettingsError, argument_type

if TYPE_CHECKING:
    from pytest_llmperf.pool import DevicePools

SKIP_REASON = "performance test: run with --llmperf"

SETTINGS = pytest.StashKey[Settings]()
SESSION = pytest.StashKey[Any]()  # RunSession, imported lazily: the store is not needed without --llmperf
BENCH = pytest.StashKey[Any]()  # Bench of the running test
RECORD = pytest.StashKey[Any]()  # its final BenchRecord
VERDICTS = pytest.StashKey[Any]()  # the gate's verdicts of this run (--llmperf-compare)
OUTCOME = pytest.StashKey[str]()
STARTED = pytest.StashKey[float]()
POOLS = pytest.StashKey["DevicePools"]()  # each device setting's pool, discovered once


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("llmperf", "LLM inference performance (pytest-llmperf)")
    group.addoption("--llmperf", action="store_true", default=False,
                    help="run performance tests (those with the llmperf marker or the llm fixture)")
    group.addoption("--llmperf-compare", action="store_true", default=False,
                    help="gate the run: compare every primary metric with the recent runs of the baseline branch "
                         "and fail on a regression (see --llmperf-baseline-branch, --llmperf-min-effect)")
    group.addoption("--llmperf-confirm", action="store_true", default=False,
                    help="with --llmperf-compare: before failing, rerun the regressed tests in a new process; "
                         "a regression the rerun does not reproduce is inconclusive (the default)")
    group.addoption("--llmperf-no-confirm", action="store_true", default=False,
                    help="with --llmperf-compare: fail on a regression without the confirmation rerun")
    for option in OPTIONS:
        default = f"default: {option.default}" if option.default else "no default"
        group.addoption(option.flag, dest=option.ini, type=argument_type(option.parse, option.name), default=None,
                        metavar=option.metavar, help=f"{option.help} (ini: {option.ini}; {default})")
        parser.addini(option.ini, help=option.help, type="string", default="")


def _settings(config: pytest.Config) -> Settings:
    try:
        return Settings.from_sources(
            enabled=config.getoption("llmperf"),
            compare=config.getoption("llmperf_compare"),
            confirm=not config.getoption("llmperf_no_confirm"),
            cli={o.name: config.getoption(o.ini) for o in OPTIONS},
            ini={o.name: config.getini(o.ini) for o in OPTIONS},
            rootdir=config.rootpath,
        )
    except SettingsError as e:
        raise pytest.UsageError(str(e)) from None


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto`` with ``--llmperf``: one worker per device of the pool (runs before pytest_configure)."""
    if not config.getoption("llmperf"):
        return None
    return _default_pool_size(config, _settings(config))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
    settings = _settings(config)
    config.stash[SETTINGS] = settings
    if not settings.enabled:
        return
    if not hasattr(config, "workerinput"):  # the controller warns once for its workers
        _warn_misplaced_rootdir(config)
    if config.option.collectonly:  # a collection measures nothing: it is not a run
        return

    from pytest_llmperf.history.errors import HistoryError
    from pytest_llmperf.session import RunSession

    worker_input = getattr(config, "workerinput", None)
    if worker_input is None:  # the session's start: remove what groups of killed sessions left
        from pytest_llmperf.launch.leftovers import remove_dead_groups_leftovers

        remove_dead_groups_leftovers()
    try:
        config.stash[SESSION] = RunSession.start(
            settings,
            run_id=None if worker_input is None else worker_input["llmperf_run_id"],
            project_root=config.rootpath,
            argv=tuple(config.invocation_params.args),
            warn=lambda text: _warn_conditions(config, text),
        )
    except HistoryError as e:
        raise pytest.UsageError(str(e)) from None
    if worker_input is None:
        config.pluginmanager.register(_Summary(config.stash[SESSION]), "llmperf-summary")
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_XdistHooks(), "llmperf-xdist")


def _warn_misplaced_rootdir(config: pytest.Config) -> None:
    from pytest_llmperf.rootdir import RootdirWarning, misplaced_rootdir

    test_paths = [config.invocation_params.dir / arg.split("::")[0] for arg in config.args]
    text = misplaced_rootdir(config.rootpath, test_paths)
    if text is not None:
        config.issue_config_time_warning(RootdirWarning(text), stacklevel=2)


def _warn_conditions(config: pytest.Config, text: str) -> None:
    """Show a warning about the run's machine conditions once, in pytest's warnings summary (``-W`` and
    ``filterwarnings`` apply to it)."""
    from pytest_llmperf.measure.conditions import UnlockedGpuClocksWarning

    config.issue_config_time_warning(UnlockedGpuClocksWarning(text), stacklevel=2)


class _XdistHooks:
    """Registered only where pytest-xdist is installed (its hooks are unknown otherwise)."""

    @pytest.hookimpl
    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput["llmperf_run_id"] = node.config.stash[SESSION].run_id


def _marker_kwargs(definition: pytest.Function) -> tuple[tuple[object, ...], dict[str, object]]:
    """Arguments of every llmperf marker on the test, class and module; the closest wins per argument."""
    args: tuple[object, ...] = ()
    kwargs: dict[str, object] = {}
    for mark in reversed(list(definition.iter_markers(MARKER))):
        args = args + tuple(mark.args)
        kwargs.update(mark.kwargs)
    return args, kwargs


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    has_marker = metafunc.definition.get_closest_marker(MARKER) is not None
    uses_case = "llmperf_case" in metafunc.fixturenames  # llm, llmperf_lease or the case itself
    if not (has_marker or uses_case):
        return
    args, kwargs = _marker_kwargs(metafunc.definition)
    settings = metafunc.config.stash[SETTINGS]
    try:
        cases = cases_from_marker(args, kwargs, settings, pool_size=_default_pool_size(metafunc.config, settings))
    except MarkerError as e:
        raise pytest.Collector.CollectError(
            f"{metafunc.definition.nodeid}: @pytest.mark.{MARKER}: {e}"
        ) from None
    if uses_case:
        metafunc.parametrize("llmperf_case", cases, ids=[c.id for c in cases])


def _pools(config: pytest.Config, settings: Settings) -> DevicePools:
    """This session's DevicePools (also asked by ``-n auto`` before pytest_configure)."""
    from pytest_llmperf.pool import DevicePools

    if POOLS not in config.stash:
        config.stash[POOLS] = DevicePools(cpu_slots=settings.cpu_slots, lock_dir=settings.pool_dir)
    return config.stash[POOLS]


def _default_pool_size(config: pytest.Config, settings: Settings) -> int:
    """Devices in the pool of the configured device (1 where it has none): world sizes "auto", ``-n auto``."""
    from pytest_llmperf.settings import DEFAULT_KNOBS, resolve_knobs

    device = resolve_knobs(settings.cli, settings.ini, DEFAULT_KNOBS).device
    assert device is not None
    return _pools(config, settings).size(device)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.stash[SETTINGS].enabled:
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if item.get_closest_marker(MARKER) is not None or "llmperf_case" in getattr(item, "fixturenames", ()):
            item.add_marker(skip)


@pytest.fixture
def llmperf_case(request: pytest.FixtureRequest) -> BenchCase:
    """The (model, backend) case of this test; pytest-llmperf parametrizes it at collection."""
    raise pytest.UsageError(f"{request.node.nodeid}: llmperf_case is set by pytest-llmperf at collection")


@pytest.fixture
def llmperf_lease(request: pytest.FixtureRequest, llmperf_case: BenchCase) -> Generator[Any, None, None]:
    """The devices this test holds exclusively (``world_size`` of them) while its fixtures live."""
    from pytest_llmperf.backends import backend_entry
    from pytest_llmperf.devices import DeviceUnavailable
    from pytest_llmperf.pool import LeaseTimeout, PoolTooSmall

    settings = request.config.stash[SETTINGS]
    case = llmperf_case
    limit = backend_entry(case.backend).max_world_size
    if limit is not None and case.world_size > limit:
        pytest.skip(f"backend {case.backend} runs on {limit} device(s): world size {case.world_size} does not apply")
    device = case.knobs(settings).device
    assert device is not None
    try:
        lease = _pools(request.config, settings).get(device).lease(case.world_size, timeout_s=settings.lease_timeout_s,
                                                    owner=request.node.nodeid)
    except (DeviceUnavailable, PoolTooSmall) as e:
        pytest.skip(str(e))
    except LeaseTimeout as e:
        pytest.fail(str(e), pytrace=False)
    try:
        yield lease
    finally:
        lease.release()


@pytest.fixture
def llm(request: pytest.FixtureRequest, llmperf_case: BenchCase, llmperf_lease: Any) -> Generator[Any, None, None]:
    """A model loaded under one backend on the leased devices; call ``llm.generate(...)`` or ``llm.sweep()``."""
    from pytest_llmperf.backends.base import BackendUnavailable
    from pytest_llmperf.bench import Bench, MemoryLimitUnsupported
    from pytest_llmperf.launch.distributed import RankFailed
    from pytest_llmperf.models.sources import ModelSourceError, ModelTooLarge

    config = request.config
    yield from _held(request, lambda: Bench.open(test_id=request.node.nodeid, case=llmperf_case,
                                                 settings=config.stash[SETTINGS], lease=llmperf_lease,
                                                 progress=_progress(config)),
                     skip=(ModelTooLarge, BackendUnavailable, MemoryLimitUnsupported),
                     fail=(ModelSourceError, RankFailed))


@pytest.fixture
def llm_server(request: pytest.FixtureRequest, llmperf_case: BenchCase,
               llmperf_lease: Any) -> Generator[Any, None, None]:
    """A real inference server for the case's model and engine (llama-cpp, vllm) on the leased devices, or the
    endpoint of --llmperf-server-url (backend external); call ``llm_server.serve(request_rate=...)``."""
    from pytest_llmperf.backends.base import BackendUnavailable
    from pytest_llmperf.models.sources import ModelSourceError, ModelTooLarge
    from pytest_llmperf.serving.errors import ServerFailed
    from pytest_llmperf.serving.server_bench import ServerBench, safe_log_name

    config = request.config
    settings = config.stash[SETTINGS]
    log = settings.db_path.parent / "server-logs" / safe_log_name(request.node.nodeid)
    yield from _held(request, lambda: ServerBench.open(test_id=request.node.nodeid, case=llmperf_case,
                                                       settings=settings, lease=llmperf_lease,
                                                       progress=_progress(config), log=log),
                     skip=(ModelTooLarge, BackendUnavailable), fail=(ModelSourceError, ServerFailed))


def _held(request: pytest.FixtureRequest, open_bench: Callable[[], Any], *, skip: tuple[type[Exception], ...],
          fail: tuple[type[Exception], ...]) -> Generator[Any, None, None]:
    """A fixture's bench, opened (``skip``: the test is skipped with the reason; ``fail``: it fails with the
    message alone), kept for the budgets and the history while the test runs, and closed after it."""
    try:
        bench = open_bench()
    except skip as e:
        pytest.skip(str(e))
    except fail as e:
        raise pytest.fail.Exception(str(e), pytrace=False) from None
    request.node.stash[BENCH] = bench
    try:
        yield bench
    finally:
        bench.close()


def _progress(config: pytest.Config) -> Any:
    from pytest_llmperf.progress import NullProgress, TerminalProgress

    mode = config.stash[SETTINGS].progress
    watched = (
        sys.__stderr__ is not None and sys.__stderr__.isatty()
        and not os.environ.get("CI") and config.get_verbosity() >= 0 and not hasattr(config, "workerinput")
    )
    if mode == "off" or (mode == "auto" and not watched):
        return NullProgress()
    capman = config.pluginmanager.getplugin("capturemanager")
    return TerminalProgress(capman.global_and_fixture_disabled)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    from pytest_llmperf.launch.distributed import RankFailed
    from pytest_llmperf.serving.errors import RequestsFailed, ServerFailed

    try:
        result = yield
    except (RankFailed, ServerFailed, RequestsFailed) as e:  # its message says all; a traceback would hide it
        raise pytest.fail.Exception(str(e), pytrace=False) from None
    bench = item.stash.get(BENCH, None)
    if bench is not None:
        from pytest_llmperf.budgets import check_budgets, describe_miss
        from pytest_llmperf.serving.server_bench import ServerBench

        settings = item.config.stash[SETTINGS]
        try:
            if isinstance(bench, ServerBench):
                if settings.max_rate_rps:
                    bench.search_max_rate(settings.max_rate_rps)
            elif settings.max_batch:
                bench.search_max_batch(settings.max_batch)
        except (ServerFailed, RequestsFailed) as e:
            raise pytest.fail.Exception(str(e), pytrace=False) from None
        measured = bench.record()
        record = replace(measured, budget_checks=check_budgets(bench.case.budgets, measured))
        item.stash[RECORD] = record
        problems = []
        if record.correctness is not None and record.correctness.outcome == "mismatch":
            problems.append(f"llmperf correctness: {bench.case.backend} does not generate what hf does: "
                            f"{record.correctness.detail}")
        misses = [describe_miss(c, record) for c in record.budget_checks if c.outcome != "pass"]
        if misses:
            problems.append("llmperf budget missed:\n" + "\n".join(misses))
        if problems:
            pytest.fail("\n".join(problems), pytrace=False)
    return result


_OUTCOME_RANK = {"passed": 0, "skipped": 1, "failed": 2, "error": 3}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report = yield
    if report.when == "setup":
        item.stash[STARTED] = time.monotonic() - report.duration
    outcome = report.outcome if report.when == "call" or not report.failed else "error"
    if _OUTCOME_RANK[outcome] > _OUTCOME_RANK[item.stash.get(OUTCOME, "passed")]:
        item.stash[OUTCOME] = outcome
    if report.when == "teardown":
        _record_finished_test(item, report)
    return report


def _record_finished_test(item: pytest.Item, report: pytest.TestReport) -> None:
    """The test has ended, fixtures torn down: write it whole (one transaction) or not at all.

    Done while making the teardown report, so that under pytest-xdist the record reaches the
    controller's summary and a failed write fails this test where everyone sees it.
    """
    from pytest_llmperf.history.errors import HistoryError

    bench = item.stash.get(BENCH, None)
    if bench is not None and RECORD not in item.stash:
        item.stash[RECORD] = bench.record()  # the test body failed before budgets were checked
    record = item.stash.get(RECORD, None)
    session = item.config.stash.get(SESSION, None)
    if record is None or session is None:
        return
    setattr(report, "llmperf", record.to_dict())  # noqa: B010 (a report attribute xdist carries to the controller)
    from pytest_llmperf.report.junit import junit_properties

    report.user_properties.extend(junit_properties(record))  # JUnit XML: keep them with junit_family=xunit1
    started = item.stash.get(STARTED, None)
    try:
        session.record(record, test_outcome=item.stash.get(OUTCOME, "passed"),
                       duration_s=None if started is None else time.monotonic() - started)
    except HistoryError as e:
        report.outcome = "failed"
        report.longrepr = f"llmperf: this test's results could not be written to the history: {e}"


class _Summary:
    """Collects every test's record from the reports (which pytest-xdist forwards) and prints them."""

    def __init__(self, run: Any):
        self._run = run
        self._records: list[dict[str, Any]] = []

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        record = getattr(report, "llmperf", None)
        if record is not None:
            self._records.append(record)

    @pytest.hookimpl
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        from pytest_llmperf.report.terminal import render_summary, render_table
        from pytest_llmperf.results import BenchRecord

        terminalreporter.write_sep("=", "llmperf summary")
        records = [BenchRecord.from_dict(r) for r in self._records]
        for block in render_summary(records):  # natural width: a narrow terminal wraps, never cuts numbers
            terminalreporter.write(block)
        terminalreporter.write_line(f"history: run {self._run.run_id} in {self._run.settings.db_path}")
        verdicts = terminalreporter.config.stash.get(VERDICTS, None)
        if verdicts is not None:
            from pytest_llmperf.report.verdicts import headline, verdict_table

            terminalreporter.write_sep("=", "llmperf gate")
            terminalreporter.write(render_table(verdict_table(verdicts)) if verdicts else "")
            terminalreporter.write_line(headline(verdicts), red=any(v.fails for v in verdicts), bold=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    run = session.config.stash.get(SESSION, None)
    if run is None:
        return
    try:
        if run.owns_run and run.settings.compare and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
            confirm = _confirmation_rerun(session.config, run) if run.settings.confirm else None
            verdicts = run.gate_against_history(session.config.rootpath, confirm)
            session.config.stash[VERDICTS] = verdicts
            if any(v.fails for v in verdicts) and session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if run.owns_run:
            from pytest_llmperf.report.files import write_run_reports

            write_run_reports(run.store, run.run_id, session.config.stash.get(VERDICTS, None),
                              out_dir=run.settings.report_dir, reproduce=_reproduce_command(session.config))
    finally:
        run.finish(exitstatus)


def _confirmation_rerun(config: pytest.Config, run: Any) -> Callable[[list[str]], str | None]:
    def rerun(test_ids: list[str]) -> str | None:
        import subprocess

        from pytest_llmperf.gate.confirm import confirmation_command, confirmation_label
        from pytest_llmperf.history.runs import newest_run_ids

        command = confirmation_command([str(a) for a in config.invocation_params.args], [str(a) for a in config.args],
                                       test_ids, run.run_id, str(config.rootpath))
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_sep("-", f"llmperf: confirming {len(set(test_ids))} regressed test(s) in a new process")
        subprocess.run(command, check=False, cwd=config.rootpath)
        return next(iter(newest_run_ids(run.store, label=confirmation_label(run.run_id))), None)

    return rerun


def _reproduce_command(config: pytest.Config) -> str:
    """A command that measures one test again, with this run's options: ``{test}`` stands for its id."""
    import shlex

    paths = {str(a) for a in config.args}
    options = [str(a) for a in config.invocation_params.args if str(a) not in paths]
    return shlex.join(["pytest", *options]) + " {test}"
