"""A fault the tests inject through the rank command table: one weight changed, to prove a correctness check can fail.

Importing this module registers the rank command ``perturb_weight`` (``launcher.run("perturb_weight",
ranks=[1])`` changes a weight on rank 1 only). A rank process imports it when ``LLMPERF_RANK_COMMAND_MODULES``
names it (``weight_fault``, with this folder on PYTHONPATH): see :func:`command_env`.
"""

from __future__ import annotations

import os
from pathlib import Path

from pytest_llmperf.launch.commands import COMMAND_MODULES_ENV, Rank, rank_command

#: the command's name in the table
PERTURB = "perturb_weight"
HERE = Path(__file__).resolve().parent


def command_env() -> dict[str, str]:
    """Environment under which ranks (and inline launchers) know ``perturb_weight``."""
    path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)
    return {COMMAND_MODULES_ENV: "weight_fault", "PYTHONPATH": path}


def perturb_one_weight(module: object) -> str:
    """Change one weight matrix of a model in place (to prove a correctness check can fail).

    Picks the first 2-D weight of the first decoder block's MLP and adds noise as large as the
    weights. Under ZeRO-3 the parameter itself is an empty placeholder: its local partition
    (``ds_tensor``) is perturbed instead; under transformers' tensor parallelism (a DTensor), this
    rank's shard. Returns the parameter's name.
    """
    import torch

    assert isinstance(module, torch.nn.Module)
    candidates = [(n, p) for n, p in module.named_parameters() if p.dim() == 2 or hasattr(p, "ds_tensor")]
    name, param = next(((n, p) for n, p in candidates if "mlp" in n), candidates[0])
    target = getattr(param, "ds_tensor", param)
    if hasattr(target, "to_local"):
        # a DTensor (transformers' tensor parallelism): its own methods are collectives that the other
        # ranks, not asked to perturb anything, would never join; change this rank's shard (a view of it)
        target = target.to_local()
    with torch.no_grad():
        generator = torch.Generator().manual_seed(1)
        scale = float(target.float().std()) or 1.0
        noise = torch.randn(target.shape, generator=generator) * 4 * scale
        target.add_(noise.to(device=target.device, dtype=target.dtype))
    return name


@rank_command(PERTURB)
def perturb_weight(rank: Rank) -> str:
    """Perturb one weight of this rank's model; the parameter's name."""
    return perturb_one_weight(rank.runner.backend.module())
