"""Erased Stable Diffusion (negative guidance): pull eps(x_t, c*) to
eps_T(x_t, a) - eta (eps_T(x_t, c*) - eps_T(x_t, a)), with a the empty or the anchor prompt.

ESD-x moves cross-attention only (a concept tied to its words), ESD-u everything else (a concept
regardless of prompt), `esd` every parameter.
"""
from __future__ import annotations

import torch

from raybilevel.unlearning.base import UnlearningLoss
from raybilevel.unlearning.registry import UNLEARNING


def is_cross_attention(name: str) -> bool:
    return ".attn2." in name


class _ESD(UnlearningLoss):
    teacher_passes = 2  # the concept and the anchor prompt

    def target(self, x_t: torch.Tensor, t: torch.Tensor, concept_cond: torch.Tensor,
               anchor_cond: torch.Tensor) -> torch.Tensor:
        both = self.teacher(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([concept_cond, anchor_cond])).sample
        concept_out, anchor_out = both.float().chunk(2)
        return anchor_out - self.cfg.eta * (concept_out - anchor_out)


@UNLEARNING.register("esd_x", reads=["upper.eta"])
class ESDCrossAttention(_ESD):
    @staticmethod
    def updates(name: str) -> bool:
        return is_cross_attention(name)


@UNLEARNING.register("esd_u", reads=["upper.eta"])
class ESDUnconditional(_ESD):
    @staticmethod
    def updates(name: str) -> bool:
        return not is_cross_attention(name)


@UNLEARNING.register("esd", reads=["upper.eta"])
class ESDFull(_ESD):
    @staticmethod
    def updates(name: str) -> bool:
        return True
