"""The upper-level interface. An unlearning loss builds its batch (noised concept inputs and a target
from the frozen teacher) and scores a student on it; it also says which parameters upper steps may move.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from raybilevel.config import UpperConfig
from raybilevel.losses import Forward
from raybilevel.worlds.base import ConceptData


@dataclass
class UpperBatch:
    x_t: torch.Tensor
    t: torch.Tensor
    cond: torch.Tensor  # the concept prompts
    target: torch.Tensor
    keep_cond: torch.Tensor | None  # unrelated prompts for the preservation term
    keep_target: torch.Tensor | None


class UnlearningLoss(ABC):
    teacher_passes = 1  # teacher forwards per sample to build a batch's target (compute accounting)

    def __init__(self, teacher: torch.nn.Module, cfg: UpperConfig, scheduler_config: dict,
                 concept: ConceptData, encode: Callable[[list[str]], torch.Tensor]) -> None:
        if concept.images is None or len(concept.images) == 0:
            raise ValueError("the unlearning loss needs concept images (teacher samples or a folder)")
        self.teacher, self.cfg, self.concept, self.encode = teacher, cfg, concept, encode
        from diffusers import DDPMScheduler

        self.alphas_cumprod = DDPMScheduler.from_config(scheduler_config).alphas_cumprod.float()

    @staticmethod
    @abstractmethod
    def updates(name: str) -> bool:
        """Whether an upper step may move the parameter called `name`."""

    @abstractmethod
    def target(self, x_t: torch.Tensor, t: torch.Tensor, concept_cond: torch.Tensor,
               anchor_cond: torch.Tensor) -> torch.Tensor:
        """What the student's output on (x_t, t, concept) is pulled towards (no gradient)."""

    def _anchor_prompts(self, prompts: list[str]) -> list[str]:
        if self.cfg.anchor == "empty":
            return [""] * len(prompts)
        lookup = dict(zip(self.concept.prompts, self.concept.anchor_prompts))
        return [lookup.get(p, "") for p in prompts]

    @torch.no_grad()
    def make_batch(self, indices: list[int], generator: torch.Generator) -> UpperBatch:
        prompts = [self.concept.image_prompts[i] for i in indices]
        x0 = self.concept.images[indices].float()
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, len(self.alphas_cumprod), (len(indices),), generator=generator)
        alpha_bar = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise
        device = next(self.teacher.parameters()).device
        x_t, t = x_t.to(device), t.to(device)
        cond = self.encode(prompts)
        target = self.target(x_t, t, cond, self.encode(self._anchor_prompts(prompts)))
        keep_cond = keep_target = None
        if self.cfg.preservation_weight > 0 and self.concept.preservation_prompts:
            keep = torch.randint(0, len(self.concept.preservation_prompts), (len(indices),), generator=generator)
            keep_cond = self.encode([self.concept.preservation_prompts[i] for i in keep.tolist()])
            keep_target = self.teacher(x_t, t, keep_cond).sample.float()
        return UpperBatch(x_t, t, cond, target, keep_cond, keep_target)

    def __call__(self, forward: Forward, batch: UpperBatch) -> tuple[torch.Tensor, dict[str, float]]:
        terms = {"unlearn": F.mse_loss(forward(batch.x_t, batch.t, batch.cond), batch.target)}
        loss = terms["unlearn"]
        if batch.keep_cond is not None:
            terms["preserve"] = F.mse_loss(forward(batch.x_t, batch.t, batch.keep_cond), batch.keep_target)
            loss = loss + self.cfg.preservation_weight * terms["preserve"]
        return loss, {k: float(v.detach()) for k, v in terms.items()}
