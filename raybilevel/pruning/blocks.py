"""BK-SDM-style block removal (Kim et al. 2023, "BK-SDM-Base"): the student is a plain, smaller diffusers UNet.

The mid block goes (`mid_block_type=None`), and every stage with >= 2 layers loses one resnet (+ its
attention): in the down block the last, in the matching up block the second-to-last. The up block's first
layer reads the stage below and its last the skip from the stage above, so only a middle one can go without
changing shapes. Surviving weights are the teacher's. `sparsity` is ignored.
"""
from __future__ import annotations

import copy

from torch import nn

from raybilevel.errors import UserError
from raybilevel.pruning.base import PRUNERS, Student, describe


@PRUNERS.register("blocks")
def blocks(teacher: nn.Module, *, sparsity: float, seed: int, path: str) -> Student:
    per_stage = teacher.config.transformer_layers_per_block
    if isinstance(per_stage, (list, tuple)) and any(isinstance(n, (list, tuple)) for n in per_stage):
        raise UserError("blocks pruning cannot drop layers with per-layer transformer_layers_per_block "
                        "(SDXL-style); use the channels or magnitude method")
    model = copy.deepcopy(teacher)
    model.mid_block = None
    removed = ["mid_block"]
    for i, block in enumerate(model.down_blocks):
        if len(block.resnets) >= 2:
            removed.append(_drop_layer(block, f"down_blocks.{i}", len(block.resnets) - 1))
    for i, block in enumerate(model.up_blocks):
        if len(block.resnets) >= 3:  # one more than its down block, which had >= 2
            removed.append(_drop_layer(block, f"up_blocks.{i}", len(block.resnets) - 2))
    layers_per_block = [len(block.resnets) for block in model.down_blocks]
    model.register_to_config(mid_block_type=None, layers_per_block=layers_per_block)
    return Student(model, describe("blocks", "diffusers", model, sparsity=sparsity, seed=seed, removed=removed,
                                   note="sparsity is ignored: whole blocks are removed"))


def _drop_layer(block: nn.Module, name: str, index: int) -> str:
    """Remove resnet `index` and its attention, if the block has attentions; returns what was removed."""
    del block.resnets[index]
    if hasattr(block, "attentions"):
        del block.attentions[index]
    return f"{name}.resnets.{index}"

