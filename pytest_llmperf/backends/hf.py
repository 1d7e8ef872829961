"""``hf``: plain transformers, ``from_pretrained`` then ``generate``, on the CPU or one CUDA device."""

from __future__ import annotations

import gc
from typing import ClassVar

import torch
import transformers
from transformers import AutoModelForCausalLM, GenerationConfig

from pytest_llmperf.backends.base import LoadRequest, PhaseSpan
from pytest_llmperf.measure.clocks import device_sync
from pytest_llmperf.models.dtypes import torch_dtype


class HfBackend:
    id: ClassVar[str] = "hf"

    def __init__(self) -> None:
        self._model: transformers.PreTrainedModel | None = None
        self._device = "cpu"
        self._sync = device_sync("cpu")

    def load(self, request: LoadRequest, span: PhaseSpan) -> None:
        self._device = request.device
        self._sync = device_sync(request.device)
        hf_logging = transformers.utils.logging
        bars_were_enabled = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            with span("read"):
                model = AutoModelForCausalLM.from_pretrained(
                    request.checkpoint, dtype=torch_dtype(request.dtype), local_files_only=True
                )
        finally:
            if bars_were_enabled:
                hf_logging.enable_progress_bar()
        with span("place"):
            if request.device == "cpu":
                # safetensors leaves CPU weights memory-mapped and read lazily by the first forward;
                # copying them in makes "ready to generate" mean the weights are in memory.
                with torch.no_grad():
                    for tensor in (*model.parameters(), *model.buffers()):
                        tensor.data = tensor.data.clone()
            else:
                model.to(request.device)
            model.eval()
        self._model = model

    @property
    def input_device(self) -> str:
        return self._device

    def _loaded(self) -> transformers.PreTrainedModel:
        if self._model is None:
            raise RuntimeError("the hf backend has no model loaded; call load() first")
        return self._model

    def generate(self, input_ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
        model = self._loaded()
        config = model.generation_config
        eos = config.eos_token_id if config.eos_token_id is not None else model.config.eos_token_id
        pad = config.pad_token_id if config.pad_token_id is not None else model.config.pad_token_id
        if pad is None:
            pad = eos[0] if isinstance(eos, list) else eos
        generation = GenerationConfig(
            max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, num_beams=1,
            eos_token_id=eos, pad_token_id=pad, use_cache=True,
        )
        with torch.inference_mode():
            return model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), generation_config=generation
            )

    def synchronize(self) -> None:
        self._sync()

    def weights_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self._loaded().parameters())

    def devices(self) -> tuple[str, ...]:
        return (self._device,)

    def close(self) -> None:
        self._model = None
        gc.collect()
        if self._device.startswith("cuda"):
            torch.cuda.empty_cache()
