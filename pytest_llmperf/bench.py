"""``Bench``: what the ``llm`` fixture gives a test body.

One model, loaded under one backend on the devices the test leased when the fixture is set up, then
driven by the test: ``llm.generate(batch_size=8)`` or ``llm.sweep()``; every result is kept for the
budgets and the history. Backends other than ``hf`` first prove they generate ``hf``'s tokens; a backend
whose ``reproduces_reference(request)`` says False (a quantized variant) has its fidelity to them measured.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_llmperf.backends import backend_class, backend_entry
from pytest_llmperf.backends.base import BackendUnavailable, LoadRequest
from pytest_llmperf.case import BenchCase
from pytest_llmperf.correctness import (
    CHECK_BATCH_SIZE,
    CHECK_NEW_TOKENS,
    compare_tokens,
    partings,
    reference_margins,
    reference_tokens,
)
from pytest_llmperf.devices import cpu_threads, device_bandwidth, device_kind, device_memory_bytes
from pytest_llmperf.fidelity import POSITIONS, measure_fidelity
from pytest_llmperf.launch.distributed import GroupSpec
from pytest_llmperf.launch.group_launcher import GroupLauncher
from pytest_llmperf.launch.inline import InlineLauncher
from pytest_llmperf.launch.launcher import Launcher
from pytest_llmperf.launch.leftovers import new_scratch_dir, remove_scratch_dir
from pytest_llmperf.measure.roofline import decode_bw_util, decode_step_bytes
from pytest_llmperf.models.plan import capacity_problem, kv_cache_bytes
from pytest_llmperf.models.sources import ResolvedModel, resolve_model
from pytest_llmperf.models.spec import parse_model_spec
from pytest_llmperf.progress import NullProgress, Progress
from pytest_llmperf.prompt_set import PromptSetError, text_prompt_token_ids
from pytest_llmperf.prompts import prompt_token_ids
from pytest_llmperf.results import (
    RANDOM_PROMPTS,
    BenchRecord,
    CorrectnessCheck,
    FidelityCheck,
    GenerateConfig,
    GenerateResult,
    LoadResult,
)
from pytest_llmperf.settings import INT, Knobs, Settings, from_python, knob_from_python, positive_int

if TYPE_CHECKING:
    import numpy as np

    from pytest_llmperf.pool import Lease

class GenerateArgumentError(ValueError):
    """An argument of ``llm.generate`` that cannot be used; the message names the call, the argument and why."""


def _generate_argument(argument: str, value: object, coerce: Callable[[object], Any]) -> Any:
    __tracebackhide__ = True
    try:
        return coerce(value)
    except ValueError as e:
        raise GenerateArgumentError(f"llm.generate({argument}={value!r}): {e}") from None


class MemoryLimitUnsupported(Exception):
    """A memory limit asked for where it cannot be applied safely; the test is skipped with this reason."""


def resolve_for_lease(case: BenchCase, settings: Settings, lease: Lease,
                      progress: Progress) -> tuple[ResolvedModel, LoadRequest]:
    """The case's model resolved (built once, or found) for the leased devices, and what loading it asks of a
    backend or a server: dtype, devices, world size, threads. Raises ModelTooLarge (a skip) or ModelSourceError."""
    knobs = case.knobs(settings)
    device = lease.devices[0].name
    kind = device_kind(device)
    spec = parse_model_spec(case.model)
    per_device = device_memory_bytes(device)
    assert knobs.dtype is not None and knobs.seed is not None
    model = resolve_model(
        spec, knobs.dtype, settings.model_cache, seed=knobs.seed, device_kind=kind,
        device_memory_bytes=None if per_device is None else per_device * len(lease.devices),
        progress=lambda step: progress.update(f"{spec.model_id}: {step}"),
    )
    request = LoadRequest(
        model.path, model.dtype, device, case.variant, devices=tuple(d.name for d in lease.devices),
        world_size=case.world_size, cache_dir=settings.model_cache / "derived", gguf_file=model.gguf_file,
        threads=cpu_threads(len(lease.devices), settings.cpu_slots) if kind == "cpu" else None,
    )
    return model, request


class Bench:
    def __init__(self, *, test_id: str, case: BenchCase, settings: Settings, model: ResolvedModel,
                 device: str, launcher: Launcher, load: LoadResult, progress: Progress, scratch_dir: Path,
                 reference: Any = None, reproduces_reference: bool = True):
        self.test_id = test_id
        self.case = case
        self.model = model
        self.device = device
        self.load = load
        self.launcher = launcher
        #: greedy tokens compared with hf's (None for hf itself, or when hf cannot run the model here)
        self.correctness: CorrectnessCheck | None = None
        #: agreement with hf instead, where the backend changes the arithmetic on purpose (quantization)
        self.fidelity: FidelityCheck | None = None
        self.reproduces_reference = reproduces_reference
        self.max_batch: int | None = None
        self.first_generate_s: float | None = None
        self._reference = reference
        self._scratch_dir = scratch_dir
        self._first_generate_pending = True
        self._tokenizer: Any = None
        self.results: list[GenerateResult] = []
        self._settings = settings
        self._progress = progress
        self._bandwidth = device_bandwidth(device)  # the device's peak memory bandwidth, None if unknown

    @classmethod
    def open(cls, *, test_id: str, case: BenchCase, settings: Settings, lease: Lease,
             progress: Progress | None = None) -> Bench:
        """Resolve (or build) the model and load it on the leased devices.

        Raises ModelTooLarge / BackendUnavailable / MemoryLimitUnsupported to skip, RankFailed to fail.
        """
        progress = progress or NullProgress()
        knobs = case.knobs(settings)
        device = lease.devices[0].name
        kind = device_kind(device)
        entry = backend_entry(case.backend)
        if knobs.memory_headroom is not None and kind == "cpu" and entry.launch != "ranks":
            raise MemoryLimitUnsupported(
                f"memory_headroom on CPU limits the address space of the process: backend {case.backend} runs "
                "inside pytest, so it cannot be limited; use a multi-process backend (ds-inference, ds-zero, hf-tp)"
            )
        spec = parse_model_spec(case.model)
        model, request = resolve_for_lease(case, settings, lease, progress)
        implementation = backend_class(case.backend)
        refuse = getattr(implementation, "unavailable_reason", None)
        reason = refuse(request, model.config) if refuse is not None else None
        if reason:
            raise BackendUnavailable(reason)
        prepare = getattr(implementation, "prepare_host", None)
        if prepare is not None:
            progress.update(f"{case.backend}: preparing this machine")
            prepare(request)
        reproduces = getattr(implementation, "reproduces_reference", None)
        exact = reproduces is None or reproduces(request)
        reference = None
        if case.backend != "hf" or not exact:  # hf's default variant is the reference itself
            progress.update(f"{spec.model_id}: reference tokens (hf)")
            reference = _reference(model, device, knobs, settings)
        labels = ", ".join(d.label for d in lease.devices)
        progress.update(f"loading {spec.model_id} ({case.backend}, {model.dtype}, {labels})")
        scratch = new_scratch_dir()
        launcher: Launcher | None = None
        try:
            launcher = _launcher(case, entry, lease, settings, scratch)
            load = launcher.load(replace(request, scratch_dir=scratch / "offload"))
            if entry.launch != "ranks":
                recorded = {d.name: d.label for d in lease.devices}
                load = replace(load, devices=tuple(recorded.get(d, d) for d in load.devices))
            bench = cls(test_id=test_id, case=case, settings=settings, model=model, device=device,
                        launcher=launcher, load=load, progress=progress, scratch_dir=scratch, reference=reference,
                        reproduces_reference=exact)
            if reference is not None and exact:
                bench.check_correctness()
            elif reference is not None:
                progress.update(f"{spec.model_id}: fidelity to hf")
                bench.check_fidelity()
            if knobs.memory_headroom is not None:
                launcher.limit_memory(knobs.memory_headroom)
        except BaseException:
            if launcher is not None:
                launcher.close()
            remove_scratch_dir(scratch)
            progress.close()
            raise
        progress.close()
        return bench

    def check_correctness(self) -> CorrectnessCheck:
        """Generate the reference's prompts greedily and compare every rank's tokens with hf's."""
        assert self._reference is not None, "hf is the reference; it is not checked against itself"
        input_ids, tokens = self._reference
        outputs = self.launcher.tokens(input_ids, CHECK_NEW_TOKENS)
        prompt = input_ids.shape[1]
        exact = self.model.dtype == "float32" and device_kind(self.device) == "cpu"
        self.correctness = compare_tokens(tokens, outputs, prompt_tokens=prompt, exact=exact)
        found = partings(tokens, outputs, prompt_tokens=prompt)
        if self.correctness.outcome == "mismatch" and device_kind(self.device) == "cpu" and found:
            # a row that parted where hf itself nearly chose the other token is not wrong: weigh each parting
            margins = reference_margins(self.model, tokens, found, prompt_tokens=prompt)
            self.correctness = compare_tokens(tokens, outputs, prompt_tokens=prompt, exact=exact, near_ties=margins)
        return self.correctness

    def check_fidelity(self) -> FidelityCheck:
        """For a backend that changes the arithmetic on purpose: its agreement with hf's tokens, measured
        (teacher-forced top-1 agreement and the first divergence of free generation; see ``fidelity``)."""
        assert self._reference is not None, "hf is the reference; it is not checked against itself"
        input_ids, tokens = self._reference
        positions = min(POSITIONS, tokens.shape[1] - input_ids.shape[1])
        self.fidelity = measure_fidelity(self.launcher, input_ids, tokens, positions=positions)
        return self.fidelity

    @property
    def knobs(self) -> Knobs:
        return self.case.knobs(self._settings)

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        """The batch sizes a sweep measures (``llmperf_batch_sizes`` or the marker's)."""
        assert self.knobs.batch_sizes is not None
        return self.knobs.batch_sizes

    def generate(self, batch_size: int, *, new_tokens: int | None = None, prompt_tokens: int | None = None,
                 trials: int | None = None, warmups: int | None = None, prompts: str | None = None) -> GenerateResult:
        """Measure one configuration: warm-ups, then trials of (TTFT generate, full generate).

        Arguments left out come from the command line, marker, ini file or defaults; the command
        line still overrides what is passed here.
        """
        __tracebackhide__ = True  # a bad argument's failure points at the test's own call
        batch = _generate_argument("batch_size", batch_size, lambda v: from_python(INT, positive_int, v))
        given = {"new_tokens": new_tokens, "prompt_tokens": prompt_tokens, "trials": trials, "warmups": warmups,
                 "prompts": prompts}
        knobs = self.case.knobs(self._settings, Knobs(**{
            name: _generate_argument(name, value, partial(knob_from_python, name))
            for name, value in given.items() if value is not None
        }))
        assert knobs.prompt_tokens is not None and knobs.new_tokens is not None and knobs.seed is not None
        assert knobs.trials is not None and knobs.warmups is not None and knobs.prompts is not None
        config = GenerateConfig(batch_size=batch, prompt_tokens=knobs.prompt_tokens,
                                new_tokens=knobs.new_tokens, trials=knobs.trials, warmups=knobs.warmups,
                                prompts=knobs.prompts)
        input_ids = self._prompts(config, knobs.seed)
        if self._first_generate_pending:
            self._first_generate_pending = False
            self._progress.update(f"{self.model.model_id}: first generate")
            self.first_generate_s = self.launcher.first_generate(input_ids, config.new_tokens)
        result = self.launcher.generate(
            config, input_ids,
            lambda what, done, total: self._progress.update(f"{self.model.model_id}: {what}", done, total),
        )
        self._progress.close()
        result = self._with_predictions(result)
        self.results.append(result)
        return result

    def _prompts(self, config: GenerateConfig, seed: int) -> np.ndarray:
        """The prompt token ids of a configuration: seeded random ids, or the text set through the tokenizer."""
        if config.prompts == RANDOM_PROMPTS:
            return prompt_token_ids(vocab_size=self.model.vocab_size, batch_size=config.batch_size,
                                    prompt_tokens=config.prompt_tokens, seed=seed,
                                    special_ids=self.model.special_token_ids)
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.model.path)
        try:
            return text_prompt_token_ids(self._tokenizer, batch_size=config.batch_size,
                                         prompt_tokens=config.prompt_tokens, model_id=self.model.model_id)
        except PromptSetError as e:
            raise GenerateArgumentError(f"llm.generate(prompts={config.prompts!r}): {e}") from None

    def sweep(self) -> tuple[GenerateResult, ...]:
        """``generate`` at every configured batch size; an out-of-memory batch is recorded and the sweep goes on."""
        return tuple(self.generate(batch) for batch in self.batch_sizes)

    def search_max_batch(self, limit: int) -> int:
        """The largest batch (per stream, up to ``limit``) whose generate fits: doubling, then bisection.

        Each probe is one unmeasured generate of the configured length (the KV cache grows with it).
        Returns 0 when not even batch 1 fits; the answer is kept as ``max_batch``.
        """
        def fits(batch: int) -> bool:
            return self._probe(batch).outcome == "ok"

        fitting, failing = 0, None
        batch = 1
        while batch <= limit:
            if not fits(batch):
                failing = batch
                break
            fitting, batch = batch, batch * 2
        if failing is None:
            if fitting < limit and fits(limit):
                fitting = limit
            elif fitting < limit:
                failing = limit
        while failing is not None and failing - fitting > 1:
            middle = (fitting + failing) // 2
            if fits(middle):
                fitting = middle
            else:
                failing = middle
        self.max_batch = fitting
        return fitting

    def _probe(self, batch: int) -> GenerateResult:
        knobs = self.knobs
        assert knobs.prompt_tokens is not None and knobs.new_tokens is not None and knobs.seed is not None
        config = GenerateConfig(batch_size=batch, prompt_tokens=knobs.prompt_tokens, new_tokens=knobs.new_tokens,
                                trials=1, warmups=0)
        self._progress.update(f"{self.model.model_id}: max batch, trying {batch}")
        input_ids = prompt_token_ids(vocab_size=self.model.vocab_size, batch_size=batch,
                                     prompt_tokens=config.prompt_tokens, seed=knobs.seed,
                                     special_ids=self.model.special_token_ids)
        result = self.launcher.generate(config, input_ids)
        self._progress.close()
        return result

    def _with_predictions(self, result: GenerateResult) -> GenerateResult:
        config, dtype = result.config, self.model.dtype
        kv = kv_cache_bytes(self.model.config, config.batch_size, config.prompt_tokens + config.new_tokens, dtype)
        util = None
        if result.outcome == "ok" and self._bandwidth:
            mid_decode = config.prompt_tokens + config.new_tokens // 2
            step = decode_step_bytes(self.load.weights_bytes,
                                     kv_cache_bytes(self.model.config, config.batch_size, mid_decode, dtype))
            util = decode_bw_util(step, result.stats("tpot_ms").median, self._bandwidth)
        return replace(result, kv_cache_bytes=kv, decode_bw_util=util)

    def record(self) -> BenchRecord:
        """Everything measured so far (budgets are checked on it by the plugin)."""
        assert self.knobs.seed is not None
        return BenchRecord(
            test_id=self.test_id,
            model=self.model.identity,
            backend=self.case.backend,
            variant=self.case.variant,
            world_size=self.case.world_size,
            seed=self.knobs.seed,
            load=self.load,
            first_generate_s=self.first_generate_s,
            generates=tuple(self.results),
            correctness=self.correctness,
            fidelity=self.fidelity,
            max_batch=self.max_batch,
            gate=self.case.gate,
        )

    def close(self) -> None:
        self._progress.close()
        try:
            self.launcher.close()
        finally:
            remove_scratch_dir(self._scratch_dir)


def _reference(model: ResolvedModel, device: str, knobs: Knobs, settings: Settings) -> Any:
    """(prompts, hf's greedy tokens) for the correctness check; None when hf cannot hold the model on one device."""
    from pytest_llmperf.models.plan import weights_bytes

    kind = device_kind(device)
    if capacity_problem(weights_bytes(model.config, model.dtype), disk_dir=None, device_kind=kind,
                        device_memory_bytes=device_memory_bytes(device)):
        return None
    assert knobs.prompt_tokens is not None and knobs.seed is not None
    input_ids = prompt_token_ids(vocab_size=model.vocab_size, batch_size=CHECK_BATCH_SIZE,
                                 prompt_tokens=knobs.prompt_tokens, seed=knobs.seed,
                                 special_ids=model.special_token_ids)
    return input_ids, reference_tokens(model, device, input_ids, CHECK_NEW_TOKENS, settings.model_cache)


def _launcher(case: BenchCase, entry: Any, lease: Lease, settings: Settings, scratch: Path) -> Launcher:
    device = lease.devices[0].name
    if entry.launch != "ranks":
        return InlineLauncher(case.backend, device)
    spec = GroupSpec(
        backend_id=case.backend, world_size=case.world_size,
        device_kind=device_kind(device),
        log_dir=scratch / "logs", cuda_visible_devices=lease.cuda_visible_devices(),
        timeout_s=settings.rank_timeout_s,
    )
    return GroupLauncher(spec, labels=tuple(d.label for d in lease.devices),
                         independent_streams=entry.independent_streams)
