"""Unstructured L1-magnitude pruning, per layer: each conv/linear weight loses its `sparsity` smallest |w|.

Per layer rather than global, so that no layer (conv_out, a small projection) can be emptied entirely.
The mask is a forward reparametrisation (weight = original * mask, torch.nn.utils.parametrize) with the mask
a buffer on the module: masked entries get exactly zero gradient, so no trainer hook is needed. The
originals are zeroed too, and AdamW keeps them zero (zero gradient -> zero moments -> zero update; decay
of zero is zero); `apply_constraints` re-zeroes them in place as a cheap fallback.

Under DeepSpeed (checked with one CPU process, 3 AdamW steps, ZeRO 0/1/2/3, fp32 and bf16) the masked
originals stayed exactly zero: the optimizer's fp32 master copy starts from the zeroed originals and only
ever sees zero gradients there. An in-place edit of the module's weights would not reach that master copy
anyway, and under ZeRO-3 the module holds only a shard placeholder, so the fallback skips it there.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from raybilevel.pruning.base import PRUNERS, REBUILDERS, Student, build_unet, describe


class WeightMask(nn.Module):
    """weight -> weight * mask; a buffer, so it is saved and moved with the module and never optimized."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


@PRUNERS.register("magnitude", reads=["pruning.sparsity"])
def magnitude(teacher: nn.Module, *, sparsity: float, seed: int, path: str) -> Student:
    """`seed` is unused: the ranking is deterministic (ties go to the lower index)."""
    model = copy.deepcopy(teacher)
    for layer in _prunable(model):
        _add_mask(layer, _smallest_masked(layer.weight.detach(), sparsity))
    zero_masked(model)
    return Student(model, describe("magnitude", "magnitude", model, sparsity=sparsity, seed=seed, scope="per-layer"),
                   constrain=zero_masked)


@REBUILDERS.register("magnitude")
def rebuild(description: dict[str, Any]) -> Student:
    model = build_unet(description["config"])
    for layer in _prunable(model):
        _add_mask(layer, torch.ones_like(layer.weight, dtype=torch.bool))  # the saved masks replace these
    return Student(model, description, constrain=zero_masked)


@torch.no_grad()
def zero_masked(model: nn.Module) -> None:
    """Zero the masked entries of the trainable originals in place."""
    for layer in _prunable(model):
        original = layer.parametrizations.weight.original
        if hasattr(original, "ds_tensor"):
            continue  # a ZeRO-3 shard placeholder: nothing to edit here (see the module docstring)
        original.mul_(layer.parametrizations.weight[0].mask)


def _prunable(model: nn.Module) -> list[nn.Module]:
    # A list, not a generator: adding a parametrization adds submodules while we iterate.
    return [module for module in model.modules() if isinstance(module, (nn.Conv2d, nn.Linear))]


def _smallest_masked(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    order = weight.abs().flatten().argsort(stable=True)
    keep = torch.ones(weight.numel(), dtype=torch.bool, device=weight.device)
    keep[order[:round(sparsity * weight.numel())]] = False
    return keep.view_as(weight)


def _add_mask(layer: nn.Module, mask: torch.Tensor) -> None:
    parametrize.register_parametrization(layer, "weight", WeightMask(mask))
