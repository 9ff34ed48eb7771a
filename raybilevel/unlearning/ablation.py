"""Concept ablation (model-based): pull eps(x_t, c*) to the teacher's eps on the anchor concept, so the
concept prompt draws what the anchor prompt draws. Moves every parameter."""
from __future__ import annotations

import torch

from raybilevel.unlearning.base import UnlearningLoss
from raybilevel.unlearning.registry import UNLEARNING


@UNLEARNING.register("ablation")
class ConceptAblation(UnlearningLoss):
    @staticmethod
    def updates(name: str) -> bool:
        return True

    def target(self, x_t: torch.Tensor, t: torch.Tensor, concept_cond: torch.Tensor,
               anchor_cond: torch.Tensor) -> torch.Tensor:
        return self.teacher(x_t, t, anchor_cond).sample.float()
