"""``Bench``: what the ``llm`` fixture gives a test body.

One model, loaded under one backend when the fixture is set up, then driven by the test:
``llm.generate(batch_size=8)`` or ``llm.sweep()``; every result is kept for the budgets and the history.
"""

from __future__ import annotations

from dataclasses import replace

from pytest_llmperf.backends.base import LoadRequest
from pytest_llmperf.case import BenchCase, knob_value, knobs_from
from pytest_llmperf.devices import device_bandwidth, device_kind, device_memory_bytes, resolve_device
from pytest_llmperf.launch.inline import InlineLauncher
from pytest_llmperf.measure.roofline import decode_bw_util, decode_step_bytes
from pytest_llmperf.models.plan import kv_cache_bytes
from pytest_llmperf.models.sources import ResolvedModel, resolve_model
from pytest_llmperf.models.spec import parse_model_spec
from pytest_llmperf.progress import NullProgress, Progress
from pytest_llmperf.prompts import prompt_token_ids
from pytest_llmperf.results import (
    BenchRecord,
    GenerateConfig,
    GenerateResult,
    LoadResult,
)
from pytest_llmperf.settings import Knobs, Settings


class Bench:
    def __init__(self, *, test_id: str, case: BenchCase, settings: Settings, model: ResolvedModel,
                 device: str, launcher: InlineLauncher, load: LoadResult, progress: Progress):
        self.test_id = test_id
        self.case = case
        self.model = model
        self.device = device
        self.load = load
        self.first_generate_s: float | None = None
        self._first_generate_pending = True
        self.results: list[GenerateResult] = []
        self._settings = settings
        self._launcher = launcher
        self._progress = progress
        self._bandwidth = device_bandwidth(device)  # the device's peak memory bandwidth, None if unknown

    @classmethod
    def open(cls, *, test_id: str, case: BenchCase, settings: Settings,
             progress: Progress | None = None) -> Bench:
        """Resolve (or build) the model and load it; raises ModelTooLarge / DeviceUnavailable to skip."""
        progress = progress or NullProgress()
        knobs = case.knobs(settings)
        device = resolve_device(knobs.device)
        spec = parse_model_spec(case.model)
        model = resolve_model(
            spec, knobs.dtype, settings.model_cache, seed=knobs.seed,
            device_kind=device_kind(device), device_memory_bytes=device_memory_bytes(device),
            progress=lambda step: progress.update(f"{spec.model_id}: {step}"),
        )
        progress.update(f"loading {spec.model_id} ({case.backend}, {model.dtype}, {device})")
        launcher = InlineLauncher(case.backend, device)
        try:
            load = launcher.load(LoadRequest(model.path, model.dtype, device, case.variant))
        except BaseException:
            launcher.close()
            progress.close()
            raise
        progress.close()
        return cls(test_id=test_id, case=case, settings=settings, model=model, device=device,
                   launcher=launcher, load=load, progress=progress)

    @property
    def knobs(self) -> Knobs:
        return self.case.knobs(self._settings)

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        """The batch sizes a sweep measures (``llmperf_batch_sizes`` or the marker's)."""
        assert self.knobs.batch_sizes is not None
        return self.knobs.batch_sizes

    def generate(self, batch_size: int, *, new_tokens: int | None = None, prompt_tokens: int | None = None,
                 trials: int | None = None, warmups: int | None = None) -> GenerateResult:
        """Measure one configuration: warm-ups, then trials of (TTFT generate, full generate).

        Arguments left out come from the command line, marker, ini file or defaults; the command
        line still overrides what is passed here.
        """
        batch = knob_value("batch_sizes", batch_size)[0]
        knobs = self.case.knobs(self._settings, knobs_from(
            {"new_tokens": new_tokens, "prompt_tokens": prompt_tokens, "trials": trials, "warmups": warmups}
        ))
        assert None not in (knobs.prompt_tokens, knobs.new_tokens, knobs.trials, knobs.warmups, knobs.seed)
        config = GenerateConfig(batch_size=batch, prompt_tokens=knobs.prompt_tokens,
                                new_tokens=knobs.new_tokens, trials=knobs.trials, warmups=knobs.warmups)
        input_ids = prompt_token_ids(
            vocab_size=self.model.vocab_size, batch_size=batch, prompt_tokens=config.prompt_tokens,
            seed=knobs.seed, special_ids=self.model.special_token_ids,
        )
        if self._first_generate_pending:
            self._first_generate_pending = False
            self._progress.update(f"{self.model.model_id}: first generate")
            self.first_generate_s = self._launcher.first_generate(input_ids, config.new_tokens)
        result = self._launcher.generate(
            config, input_ids,
            lambda what, done, total: self._progress.update(f"{self.model.model_id}: {what}", done, total),
        )
        self._progress.close()
        result = self._with_predictions(result)
        self.results.append(result)
        return result

    def sweep(self) -> tuple[GenerateResult, ...]:
        """``generate`` at every configured batch size; an out-of-memory batch is recorded and the sweep goes on."""
        return tuple(self.generate(batch) for batch in self.batch_sizes)

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
            world_size=self._launcher.world_size,
            seed=self.knobs.seed,
            load=self.load,
            first_generate_s=self.first_generate_s,
            generates=tuple(self.results),
        )

    def close(self) -> None:
        self._progress.close()
        self._launcher.close()
