"""The no-pruning control: the student is a trainable copy of the teacher."""
from __future__ import annotations

import copy

from torch import nn

from raybilevel.pruning.base import PRUNERS, Student, describe


@PRUNERS.register("none")
def none(teacher: nn.Module, *, sparsity: float, seed: int, path: str) -> Student:
    model = copy.deepcopy(teacher)
    return Student(model, describe("none", "diffusers", model, sparsity=sparsity, seed=seed,
                                   note="sparsity is ignored: nothing is pruned"))
