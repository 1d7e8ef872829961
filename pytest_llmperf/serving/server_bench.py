"""``ServerBench``: what the ``llm_server`` fixture gives a test body.

A real server for the case's model and engine (llama.cpp's, or vLLM's OpenAI server) started on the leased
devices, or an endpoint someone else runs (backend ``external``), then driven by the test:
``llm_server.serve(request_rate=4, requests=64)`` measures one load point, ``llm_server.sweep(...)`` several,
``llm_server.search_max_rate(...)`` the largest rate that meets the SLO. Every result is kept for the
budgets and the history, as ``Bench`` keeps a model's generates.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_llmperf.backends import backend_class
from pytest_llmperf.backends.base import BackendUnavailable, LoadRequest
from pytest_llmperf.case import BenchCase
from pytest_llmperf.measure.clocks import Stopwatch
from pytest_llmperf.progress import NullProgress, Progress
from pytest_llmperf.results import (
    BenchRecord,
    LoadGeneratorReport,
    LoadResult,
    MemoryPeak,
    PageCache,
    ServingConfig,
    ServingResult,
)
from pytest_llmperf.serving.arrivals import ArrivalPlanError, ClosedLoop, OpenLoop, achieved_rate_rps
from pytest_llmperf.serving.errors import RequestsFailed, ServerFailed
from pytest_llmperf.serving.load_generator import Completion, LoadRun, run_load
from pytest_llmperf.serving.request_metrics import ServingSummary
from pytest_llmperf.serving.server_process import ServerCommand, ServerProcess
from pytest_llmperf.serving.workloads import Workload, WorkloadError, parse_workload
from pytest_llmperf.settings import Knobs, Settings

if TYPE_CHECKING:
    from pytest_llmperf.models.sources import ResolvedModel
    from pytest_llmperf.pool import Lease

#: the engines a serving test can start a server for, and the endpoint it can be pointed at
SERVER_BACKENDS = ("llama-cpp", "vllm", "external")
#: the name our presets serve the model under
SERVED_MODEL = "model"
DEFAULT_REQUESTS = 64
DEFAULT_WARMUP_REQUESTS = 2
#: seconds a server whose requests failed is watched for its exit before the failures are blamed on the requests
SERVER_EXIT_GRACE_S = 2.0
#: at most this many distinct request errors are kept with a load point
KEPT_ERRORS = 5
#: the max-rate search stops when the rates that pass and fail are this close (ratio)
RATE_RESOLUTION = 1.1
#: ... or after this many halvings below the limit without a rate that passes
MAX_HALVINGS = 6


class ServeArgumentError(ValueError):
    """An argument of ``llm_server.serve`` that cannot be used; the message names it, its value and the fix."""


class ServerBench:
    def __init__(self, *, test_id: str, case: BenchCase, settings: Settings, model: ResolvedModel, url: str,
                 served_model: str, server: ServerProcess | None, load: LoadResult | None, seed: int):
        self.test_id = test_id
        self.case = case
        self.model = model
        self.url = url
        self.served_model = served_model
        self.server = server
        self.load = load
        self.results: list[ServingResult] = []
        self.max_rate_rps: float | None = None
        self._settings = settings
        self._seed = seed
        self._tokenizer: Any = None
        #: the arguments of the last load point served: what the max-rate search reuses
        self._last: dict[str, Any] = {}

    @classmethod
    def open(cls, *, test_id: str, case: BenchCase, settings: Settings, lease: Lease, log: Path,
             progress: Progress | None = None) -> ServerBench:
        """Resolve the model, start its server on the leased devices and wait until it answers.

        Raises BackendUnavailable to skip, ServerFailed (with the log's tail) to fail."""
        from pytest_llmperf.bench import resolve_for_lease

        progress = progress or NullProgress()
        if case.backend not in SERVER_BACKENDS:
            raise BackendUnavailable(f"backend {case.backend} has no server to start: serving tests run "
                                     f"{', '.join(SERVER_BACKENDS)}")
        knobs = case.knobs(settings)
        assert knobs.seed is not None
        model, request = resolve_for_lease(case, settings, lease, progress)
        try:
            if case.backend == "external":
                if settings.server_url is None:
                    raise BackendUnavailable("backend external measures a server someone else runs: give its URL "
                                             "with --llmperf-server-url=http://HOST:PORT")
                url = settings.server_url
                return cls(test_id=test_id, case=case, settings=settings, model=model, url=url,
                           served_model=_served_model(url), server=None, load=None, seed=knobs.seed)
            refuse = getattr(backend_class(case.backend), "unavailable_reason", None)
            reason = refuse(request, model.config) if refuse is not None else None
            if reason:
                raise BackendUnavailable(reason)
            progress.update(f"{case.backend}: starting its server for {model.model_id}")
            prepared: list[tuple[str, float]] = []
            command, weights = _server_command(case.backend, request, prepared)
            server = ServerProcess.start(command, log, timeout_s=settings.server_timeout_s)
        finally:
            progress.close()
        load = LoadResult(
            load_s=sum(s for _, s in prepared) + server.load_s, phases=(*prepared, *server.phases),
            weights_bytes=weights,
            memory=MemoryPeak(peak_bytes=server.peak_rss_bytes(), reserved_bytes=None, method="vmhwm"),
            page_cache=PageCache(None), devices=tuple(d.label for d in lease.devices),
        )
        return cls(test_id=test_id, case=case, settings=settings, model=model, url=server.url,
                   served_model=SERVED_MODEL, server=server, load=load, seed=knobs.seed)

    # ---- measuring ---------------------------------------------------------------------------------

    def serve(self, *, request_rate: float | None = None, concurrency: int | None = None,
              requests: int = DEFAULT_REQUESTS, warmup_requests: int = DEFAULT_WARMUP_REQUESTS,
              workload: str | Workload | None = None, burstiness: float = 1.0,
              slo: str | None = None, max_error_rate: float = 0.0) -> ServingResult:
        """One load point: ``requests`` requests of ``workload`` at ``request_rate`` per second (open loop) or
        with ``concurrency`` in flight (closed loop), after ``warmup_requests`` unmeasured ones sent one at a
        time. Fails the test when more than ``max_error_rate`` of the requests failed; the result is kept.
        The workload, as every per-test setting: command line > this call > marker > ini > ``p32o32``."""
        __tracebackhide__ = True
        call = f"llm_server.serve(request_rate={request_rate!r}, concurrency={concurrency!r})"
        chosen = self._resolve_workload(call, workload)
        plan = _plan(call, request_rate, concurrency, requests, burstiness, self._seed)
        if isinstance(warmup_requests, bool) or not isinstance(warmup_requests, int) or warmup_requests < 0:
            raise ServeArgumentError(f"{call}: warmup_requests={warmup_requests!r}: expected a whole number >= 0")
        if not (isinstance(max_error_rate, int | float) and 0 <= max_error_rate <= 1):
            raise ServeArgumentError(f"{call}: max_error_rate={max_error_rate!r}: expected a share of the requests, "
                                     "from 0 to 1")
        slos = self._slo(call, slo)
        self._last = {"requests": requests, "workload": chosen}
        config = ServingConfig(workload=chosen.label, requests=requests, warmup_requests=warmup_requests,
                               request_rate=None if request_rate is None else float(request_rate),
                               concurrency=concurrency, burstiness=float(burstiness), seed=self._seed,
                               slo=tuple(slos.items()))
        result = self._measure(config, chosen, plan, slos)
        self.results.append(result)
        failed = result.summary.requests - result.summary.completed
        if result.summary.error_rate > max_error_rate:
            raise RequestsFailed(f"{call}: {failed} of {result.summary.requests} requests failed "
                                 f"(more than max_error_rate={max_error_rate:g}); their errors:\n"
                                 + "\n".join(result.errors))
        return result

    def sweep(self, *, request_rates: Sequence[float] = (), concurrencies: Sequence[int] = (),
              **kwargs: Any) -> list[ServingResult]:
        """One load point per rate, then per concurrency (the other arguments as ``serve``'s)."""
        return ([self.serve(request_rate=r, **kwargs) for r in request_rates]
                + [self.serve(concurrency=c, **kwargs) for c in concurrencies])

    def search_max_rate(self, limit_rps: float, *, slo: str | None = None, requests: int | None = None,
                        workload: str | Workload | None = None) -> float | None:
        """The largest request rate up to ``limit_rps`` at which the p99 TTFT and p99 TPOT of the requests meet
        the SLO and none fails: the limit itself, else halving down from it until a rate passes, then
        bisecting (geometrically) between the rate that passes and the one that fails until they are within
        10 %. Probes are not recorded as load points; the answer is ``max_rate_rps``. None when no rate
        down to ``limit_rps / 2**6`` passes."""
        call = f"llm_server.search_max_rate({limit_rps!r})"
        if isinstance(limit_rps, bool) or not isinstance(limit_rps, int | float) or not 0 < limit_rps < math.inf:
            raise ServeArgumentError(f"{call}: expected a finite request rate > 0 in requests per second")
        slos = {k: v for k, v in self._slo(call, slo).items() if k in ("ttft_ms", "tpot_ms")}
        if not slos:
            raise ServeArgumentError(f"{call}: the search needs an SLO on ttft_ms or tpot_ms: give "
                                     "--llmperf-slo='ttft_ms=200 tpot_ms=50' or slo='ttft_ms=200'")
        last = self._last
        chosen = (self._resolve_workload(call, workload) if workload is not None or "workload" not in last
                  else last["workload"])
        n = requests if requests is not None else last.get("requests", DEFAULT_REQUESTS)

        def passes(rate: float) -> bool:
            config = ServingConfig(workload=chosen.label, requests=n, warmup_requests=0, request_rate=rate,
                                   seed=self._seed, slo=tuple(slos.items()))
            result = self._measure(config, chosen, _plan(call, rate, None, n, 1.0, self._seed), slos)
            p99 = {"ttft_ms": result.summary.ttft_ms.p99, "tpot_ms": result.summary.tpot_ms.p99}
            return result.summary.error_rate == 0 and all(
                p99[name] is not None and p99[name] <= limit for name, limit in slos.items())  # type: ignore[operator]

        found = _search(passes, float(limit_rps))
        self.max_rate_rps = found
        return found

    def _measure(self, config: ServingConfig, workload: Workload, plan: OpenLoop | ClosedLoop,
                 slos: dict[str, float]) -> ServingResult:
        # drawn apart: the measured requests are the same whatever the number of warm-ups
        completions = self._completions(workload, config.requests)
        if config.warmup_requests:
            warm = run_load(self.url, self.served_model, self._completions(workload, config.warmup_requests),
                            ClosedLoop(concurrency=1, requests=config.warmup_requests))
            self._check_server(warm)
            failed = [r.error for r in warm.records if not r.ok]
            if failed:
                raise RequestsFailed(f"the warm-up requests failed: {failed[0]}")
        run = run_load(self.url, self.served_model, completions, plan)
        self._check_server(run)
        return _result(config, run, plan, slos)

    def _resolve_workload(self, call: str, workload: object) -> Workload:
        given = _workload(call, workload) if workload is not None else None
        label = self.case.knobs(self._settings, Knobs(workload=None if given is None else given.label)).workload
        return given if given is not None and given.label == label else _workload(call, label)

    def _check_server(self, run: LoadRun) -> None:
        """ServerFailed when the server died: where requests failed, it is given a moment to be seen exiting, so
        that a dead server is reported as such, with its log, rather than as its requests' errors."""
        if self.server is not None:
            self.server.check(grace_s=SERVER_EXIT_GRACE_S if any(not r.ok for r in run.records) else 0.0)

    def _completions(self, workload: Workload, n: int) -> list[Completion]:
        try:
            return workload.completions(n, vocab_size=self.model.vocab_size, special_ids=self.model.special_token_ids,
                                        tokenizer=self._tokenizer_for(workload))
        except WorkloadError as e:
            raise ServeArgumentError(f"workload {workload.label}: {e}") from None

    def _tokenizer_for(self, workload: Workload) -> Any:
        if workload.prompts == "random":
            return None
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.model.path)
        return self._tokenizer

    def _slo(self, call: str, text: str | None) -> dict[str, float]:
        from pytest_llmperf.serving.request_metrics import SloError, parse_slo

        if text is None:
            return dict(self._settings.slo)
        try:
            return parse_slo(text)
        except SloError as e:
            raise ServeArgumentError(f"{call}: slo={text!r}: {e}") from None

    # ---- the record ----------------------------------------------------------------------------------

    def record(self) -> BenchRecord:
        return BenchRecord(test_id=self.test_id, model=self.model.identity, backend=self.case.backend,
                           variant=self.case.variant, world_size=self.case.world_size, seed=self._seed,
                           load=self.load, servings=tuple(self.results), max_rate_rps=self.max_rate_rps,
                           gate=self.case.gate)

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()


def _search(passes: Any, limit: float) -> float | None:
    if passes(limit):
        return limit
    fail, ok = limit, None
    for _ in range(MAX_HALVINGS):
        rate = fail / 2
        if passes(rate):
            ok = rate
            break
        fail = rate
    if ok is None:
        return None
    while fail / ok > RATE_RESOLUTION:
        mid = math.sqrt(ok * fail)
        if passes(mid):
            ok = mid
        else:
            fail = mid
    return ok


def _result(config: ServingConfig, run: LoadRun, plan: OpenLoop | ClosedLoop, slos: dict[str, float]) -> ServingResult:
    summary = ServingSummary.of(run.records, max(run.duration_s, 1e-9), slos or None)
    errors = list(dict.fromkeys(r.error or "no tokens streamed" for r in run.records if not r.ok))
    if run.sent < run.asked:
        errors.insert(0, f"{run.asked - run.sent} of {run.asked} requests were never sent")
    client = LoadGeneratorReport(asked=run.asked, sent=run.sent, achieved_rate_rps=run.achieved_rate_rps,
                                 max_send_lag_s=run.max_send_lag_s, max_in_flight=run.max_in_flight,
                                 planned_rate_rps=achieved_rate_rps(plan.send_s()) if isinstance(plan, OpenLoop)
                                 else None)
    return ServingResult(config=config, summary=summary, client=client, errors=tuple(errors[:KEPT_ERRORS]))


def _workload(call: str, workload: object) -> Workload:
    if isinstance(workload, Workload):
        return workload
    if isinstance(workload, str):
        try:
            return parse_workload(workload)
        except WorkloadError as e:
            raise ServeArgumentError(f"{call}: workload={workload!r}: {e}") from None
    raise ServeArgumentError(f"{call}: workload={workload!r}: expected a Workload or its label, e.g. 'p32o32'")


def _plan(call: str, request_rate: float | None, concurrency: int | None, requests: int, burstiness: float,
          seed: int) -> OpenLoop | ClosedLoop:
    if (request_rate is None) == (concurrency is None):
        raise ServeArgumentError(f"{call}: give either request_rate (requests per second, an open loop) or "
                                 "concurrency (requests in flight, a closed loop), not both or neither")
    try:
        if request_rate is not None:
            if isinstance(request_rate, bool) or not isinstance(request_rate, int | float) or math.isinf(request_rate):
                raise ArrivalPlanError(f"request rate {request_rate!r}: expected a finite number of requests per "
                                       "second (for all at once, use concurrency=N)")
            return OpenLoop(rate_rps=float(request_rate), requests=requests, burstiness=burstiness, seed=seed)
        assert concurrency is not None
        return ClosedLoop(concurrency=concurrency, requests=requests)
    except ArrivalPlanError as e:
        raise ServeArgumentError(f"{call}: {e}") from None


def _server_command(backend: str, request: LoadRequest, phases: list[tuple[str, float]]) -> tuple[ServerCommand, int]:
    """The server of ``backend`` for ``request`` on a free port, and the bytes of the weights it is given
    (their files). Preparing the weights (a GGUF written once) adds its phases to ``phases``."""
    from pytest_llmperf.launch.distributed import free_port
    from pytest_llmperf.serving import presets

    port = free_port()
    if backend == "llama-cpp":
        from pytest_llmperf.backends.llama_cpp import check_gguf_file, float32_kv_cache, gguf_for

        # the host's clock: the GGUF is written on the host, whatever the server's device
        stopwatch = Stopwatch(lambda: None)
        gguf = gguf_for(request, lambda name: stopwatch.span(phases, name))
        check_gguf_file(gguf)
        device = request.device
        return (presets.llama_cpp_server(gguf, port=port, threads=request.threads or 1, device=device,
                                         float32_kv_cache=float32_kv_cache(request)), gguf.stat().st_size)
    cache = (request.cache_dir or request.checkpoint.parent) / "vllm-server"
    weights = sum(f.stat().st_size for f in Path(request.checkpoint).glob("*.safetensors"))
    return presets.vllm_server(request, port=port, cache_dir=cache, eager=request.variant == "eager"), weights


def _served_model(url: str) -> str:
    """The first model an OpenAI-compatible server lists at ``/v1/models``; ServerFailed if it cannot say."""
    import httpx

    try:
        response = httpx.get(f"{url}/v1/models", timeout=10.0)
        response.raise_for_status()
        return str(response.json()["data"][0]["id"])
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as e:
        raise ServerFailed(f"the server at {url} did not list its model at GET {url}/v1/models ({e}); check "
                           "--llmperf-server-url, and that the server is OpenAI-compatible and up") from None


def safe_log_name(test_id: str) -> str:
    """A file name for a test's server log: its id with every character a path cannot hold replaced."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", test_id).strip("_")[:150] + ".log"
