"""``accelerate``: Accelerate big-model inference, one process spreading a model's layers over devices.

The model is built with empty weights, a device map places each module on a leased CUDA device (or
on "cpu"/"disk" for the offload variants), then the checkpoint is loaded module by module onto its
device and accelerate's hooks move activations between devices: naive pipeline parallelism, one
device busy at a time.

Variants: "auto", "balanced", "balanced_low_0" and "sequential" are accelerate's own strategies
over the leased CUDA devices ("auto" is "balanced", as in accelerate). "cpu-offload" and
"disk-offload" keep the first half of the decoder blocks on the leased devices and the rest in CPU
memory or on disk, where they are fetched to the first leased device at every forward.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, cast

import accelerate
import torch
import transformers
from accelerate.hooks import remove_hook_from_module
from accelerate.utils import get_balanced_memory
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

from pytest_llmperf.backends.base import BackendUnavailable, LoadRequest, PhaseSpan
from pytest_llmperf.backends.checkpoint import copy_into_memory, parameters_bytes
from pytest_llmperf.backends.generation import greedy_generate
from pytest_llmperf.devices import cuda_index
from pytest_llmperf.measure.clocks import device_sync
from pytest_llmperf.measure.token_clock import TokenClock
from pytest_llmperf.models.dtypes import torch_dtype

#: accelerate's strategies for spreading a model over CUDA devices
SPREAD_VARIANTS = ("auto", "balanced", "balanced_low_0", "sequential")
#: where each offload variant puts the later half of the decoder blocks
OFFLOAD_VARIANTS = {"cpu-offload": "cpu", "disk-offload": "disk"}
#: share of a GPU's free memory the weights may fill; the rest is for activations and the KV cache
#: (accelerate's own default on one GPU)
GPU_WEIGHTS_SHARE = 0.9

#: a device as accelerate's device maps write it: a CUDA index, "cpu" or "disk"
MapDevice = int | str


def device_name(device: MapDevice | torch.device) -> str:
    """accelerate's spelling of a device -> ours: 2 -> "cuda:2", "cpu" and "disk" unchanged."""
    if isinstance(device, int):
        return f"cuda:{device}"
    return str(device)


def _device_order(name: str) -> tuple[int, int]:
    # "cpu" < "cuda:2" < "cuda:10" < "disk"
    if name.startswith("cuda"):
        return (1, cuda_index(name))
    return (0, 0) if name == "cpu" else (2, 0)


def check_request(request: LoadRequest) -> None:
    """Refuse what cannot run before any work: unknown variant, CPU limits, disk offload without a folder."""
    variant, leased = request.variant, request.leased_devices
    if variant not in (*SPREAD_VARIANTS, *OFFLOAD_VARIANTS):
        raise ValueError(
            f"unknown accelerate variant {variant!r}; known: {', '.join((*SPREAD_VARIANTS, *OFFLOAD_VARIANTS))}"
        )
    if request.device == "cpu":
        if len(leased) > 1:
            raise BackendUnavailable(
                "accelerate spreads a model over CUDA devices; on CPU there is one device, "
                f"so world size {len(leased)} is not possible here"
            )
        if variant == "cpu-offload":
            raise BackendUnavailable(
                "accelerate's cpu-offload moves layers off CUDA devices into CPU memory, so it needs CUDA; "
                "on CPU the whole model already is in CPU memory"
            )
    elif not all(d.startswith("cuda") for d in leased):
        raise ValueError(f"accelerate on CUDA needs CUDA devices only, but was leased {', '.join(leased)}")
    if variant == "disk-offload" and request.scratch_dir is None:
        raise ValueError(
            "accelerate's disk-offload needs LoadRequest.scratch_dir, the directory the offloaded weights are "
            "written to, but it is None"
        )


def _no_split(model: torch.nn.Module) -> list[str]:
    # transformers 5 keeps these in a set; accelerate wants a list (sorted: the same plan every run)
    return sorted(getattr(model, "_no_split_modules", None) or ())


def _pieces(model: torch.nn.Module, blocks: set[str]) -> list[tuple[str, bool]]:
    """The model cut into (name, is a decoder block) pieces, in module order, covering every tensor.

    A piece is a block, or a module holding no block, or a tensor held directly by a module that
    holds blocks too.
    """

    def holds_block(module: torch.nn.Module) -> bool:
        return any(type(m).__name__ in blocks for m in module.modules())

    def walk(module: torch.nn.Module, prefix: str) -> list[tuple[str, bool]]:
        if type(module).__name__ in blocks:
            return [(prefix, True)]
        if not holds_block(module):
            return [(prefix, False)]
        dot = f"{prefix}." if prefix else ""
        direct = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
        pieces = [(f"{dot}{name}", False) for name, _ in direct]
        for name, child in module.named_children():
            pieces += walk(child, f"{dot}{name}")
        return pieces

    return walk(model, "")


def offload_map(model: torch.nn.Module, devices: list[MapDevice], offload: str) -> dict[str, MapDevice]:
    """The first half of the decoder blocks over ``devices`` in order, the rest on ``offload``.

    Built by hand because accelerate's ``max_memory`` budgets reserve room for the largest layer on
    the first device: on a small model that leaves no room for anything and puts it all on disk.
    Embeddings, final norm and head stay on ``devices[0]``, where the offloaded blocks run too.
    """
    names = _no_split(model)
    pieces = _pieces(model, set(names))
    blocks = [name for name, is_block in pieces if is_block]
    if not blocks:
        raise ValueError(
            f"{type(model).__name__} names no decoder block classes (_no_split_modules), "
            "so accelerate's offload variants cannot tell which layers to offload"
        )
    kept = len(blocks) // 2
    placed = {name: devices[i * len(devices) // kept] for i, name in enumerate(blocks[:kept])}
    return {name: placed.get(name, offload) if is_block else devices[0] for name, is_block in pieces}


def spread_map(model: torch.nn.Module, variant: str, indices: list[int], free_bytes: Callable[[int], int],
               dtype: torch.dtype) -> dict[str, MapDevice]:
    """accelerate's strategy ``variant`` over exactly the CUDA devices ``indices``."""
    budgets = {i: int(free_bytes(i) * GPU_WEIGHTS_SHARE) for i in indices}
    if variant != "sequential":
        # get_balanced_memory assumes the GPUs are numbered 0..n-1 (low_zero indexes max_memory[0] and
        # range(1, n)), so it is given them renumbered and its budgets are mapped back.
        balanced = get_balanced_memory(
            model, max_memory={k: budgets[i] for k, i in enumerate(indices)},
            no_split_module_classes=_no_split(model), dtype=dtype, low_zero=variant == "balanced_low_0",
        )
        budgets = {indices[k]: int(balanced[k]) for k in range(len(indices))}
    device_map = dict(accelerate.infer_auto_device_map(
        model, max_memory=budgets, no_split_module_classes=_no_split(model), dtype=dtype,
    ))
    # Without a "cpu" budget, what does not fit goes to "disk"; that is the offload variants' job.
    spilled = sorted(name for name, device in device_map.items() if not isinstance(device, int))
    if spilled:
        raise torch.OutOfMemoryError(
            f"out of memory: the weights ({parameters_bytes(model) / 2**30:.2f} GiB) do not fit in "
            f"{GPU_WEIGHTS_SHARE:.0%} of the free memory of "
            f"{', '.join(f'cuda:{i} ({free_bytes(i) / 2**30:.2f} GiB free)' for i in indices)}; "
            f"left over: {', '.join(spilled)}. The cpu-offload and disk-offload variants keep part of them "
            "off the GPUs."
        )
    return device_map


def plan_device_map(model: torch.nn.Module, request: LoadRequest,
                    free_bytes: Callable[[int], int] | None = None) -> tuple[dict[str, MapDevice], MapDevice]:
    """(device map, main device) for an empty-weight model; the main device runs the offloaded blocks.

    ``free_bytes(cuda index)`` is the free memory of a CUDA device (default: ask the driver).
    """
    variant = request.variant
    if request.device == "cpu":
        device_map: dict[str, MapDevice] = (
            offload_map(model, ["cpu"], OFFLOAD_VARIANTS[variant]) if variant in OFFLOAD_VARIANTS else {"": "cpu"}
        )
        return device_map, "cpu"
    indices = list(dict.fromkeys(cuda_index(d) for d in request.leased_devices))
    if variant in OFFLOAD_VARIANTS:
        device_map = offload_map(model, list(indices), OFFLOAD_VARIANTS[variant])
    else:
        free = free_bytes or (lambda i: torch.cuda.mem_get_info(i)[0])
        device_map = spread_map(model, variant, indices, free, torch_dtype(request.dtype))
    return device_map, _main_device(model, device_map)


def _map_device(device_map: dict[str, MapDevice], name: str) -> MapDevice:
    """Where ``device_map`` puts module ``name`` (its own entry, or the closest enclosing one)."""
    while name not in device_map:
        if not name:
            raise KeyError("the device map places no module named like this one, nor the whole model")
        name = name.rpartition(".")[0]
    return device_map[name]


def _embedding_name(model: torch.nn.Module) -> str:
    embeddings = cast(transformers.PreTrainedModel, model).get_input_embeddings()
    return next(name for name, module in model.named_modules() if module is embeddings)


def _main_device(model: torch.nn.Module, device_map: dict[str, MapDevice]) -> MapDevice:
    """The input embedding's GPU (prompts go straight there), else the first GPU of the map, else "cpu"."""
    embedding = _map_device(device_map, _embedding_name(model))
    if embedding not in ("cpu", "disk"):
        return embedding
    return next((d for d in device_map.values() if d not in ("cpu", "disk")), "cpu")


def check_loaded(model: torch.nn.Module, offload_folder: Path | None) -> None:
    """Every weight was read: on a device, or (disk offload) in the offload folder's index.

    accelerate loads leniently: a weight missing from the checkpoint (or named differently there)
    silently stays on the meta device and only fails, or computes garbage, at generate time.
    """
    on_disk: set[str] = set()
    if offload_folder is not None and (offload_folder / "index.json").is_file():
        on_disk = set(json.loads((offload_folder / "index.json").read_text()))
    missing = [
        name for name, tensor in (*model.named_parameters(), *model.named_buffers())
        if tensor.device.type == "meta" and name not in on_disk
    ]
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise ValueError(f"accelerate loaded no value for {len(missing)} weight(s) from the checkpoint: {shown}")


class AccelerateBackend:
    id: ClassVar[str] = "accelerate"

    def __init__(self) -> None:
        self._model: transformers.PreTrainedModel | None = None
        self._input_device = "cpu"
        self._syncs: list[Callable[[], None]] = []

    def load(self, request: LoadRequest, span: PhaseSpan) -> None:
        check_request(request)
        dtype = torch_dtype(request.dtype)
        with span("init"):
            config = AutoConfig.from_pretrained(request.checkpoint, local_files_only=True)
            with accelerate.init_empty_weights():
                model = AutoModelForCausalLM.from_config(config, dtype=dtype)
            # transformers 5 leaves tied embeddings untied under init_empty_weights; untied, the output
            # head (absent from the checkpoint) would never be loaded
            model.tie_weights()
            model.eval()
            # from_config derives the generation config from the model config; from_pretrained (the hf
            # backend) reads generation_config.json, whose eos/pad ids may differ
            if (request.checkpoint / "generation_config.json").is_file():
                model.generation_config = GenerationConfig.from_pretrained(request.checkpoint, local_files_only=True)
        with span("plan"):
            device_map, main = plan_device_map(model, request)
            # set now, so that the end of "dispatch" waits for every device used
            self._input_device = device_name(main)
            cuda = sorted({d for d in (*device_map.values(), main) if isinstance(d, int)})
            self._syncs = [device_sync(f"cuda:{i}") for i in cuda]
        with span("dispatch"):
            disk = "disk" in device_map.values()
            offload_folder = request.scratch_dir if disk else None
            # load_checkpoint_and_dispatch in two steps, to check and copy the weights in between
            accelerate.load_checkpoint_in_model(
                model, str(request.checkpoint), device_map=device_map, offload_folder=offload_folder,
                dtype=dtype, offload_state_dict=disk,  # load_checkpoint_and_dispatch's default
            )
            check_loaded(model, offload_folder)
            # safetensors maps CPU tensors from the file; a weight is read at its first use unless copied
            # (on CUDA this covers the weights that cpu-offload keeps in CPU memory)
            copy_into_memory(model)
            accelerate.dispatch_model(model, device_map=device_map, main_device=main, offload_dir=offload_folder)
        self._model = model

    @property
    def input_device(self) -> str:
        return self._input_device

    def _loaded(self) -> transformers.PreTrainedModel:
        if self._model is None:
            raise RuntimeError("the accelerate backend has no model loaded; call load() first")
        return self._model

    def generate(self, input_ids: torch.Tensor, new_tokens: int, clock: TokenClock | None = None) -> torch.Tensor:
        return greedy_generate(self._loaded(), input_ids, new_tokens, clock)

    def synchronize(self) -> None:
        for sync in self._syncs:
            sync()

    def weights_bytes(self) -> int:
        # offloaded parameters are on the meta device, where numel and element_size still hold
        return parameters_bytes(self._loaded())

    def devices(self) -> tuple[str, ...]:
        return tuple(sorted(set(self._device_map().values()), key=_device_order))

    def _device_map(self) -> dict[str, str]:
        placed: dict[str, MapDevice] = self._loaded().hf_device_map  # type: ignore[assignment]  # set by accelerate
        return {name: device_name(device) for name, device in placed.items()}

    def device_map(self) -> dict[str, str] | None:
        return self._device_map()

    def module(self) -> torch.nn.Module:
        return self._loaded()

    def close(self) -> None:
        if self._model is not None:
            remove_hook_from_module(self._model, recurse=True)
        self._model = None
        gc.collect()
        if self._syncs:
            torch.cuda.empty_cache()
