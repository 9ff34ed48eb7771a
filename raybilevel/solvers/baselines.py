"""The baselines the bilevel solvers are compared with, under the same step budget."""
from __future__ import annotations

import torch

from raybilevel.solvers.base import MakeTrainable, Solver
from raybilevel.solvers.registry import SOLVERS


class _SingleModel(Solver):
    def build(self, student: torch.nn.Module, make: MakeTrainable) -> None:
        self.trainables["theta"] = make("theta", student, self.param_groups(student))


@SOLVERS.register("distill_only")
class DistillOnly(_SingleModel):
    """Restore quality only: every step is a lower step (no erasure)."""

    def iteration(self, step: int) -> dict[str, float]:
        return self.take_step(self.student, step, "lower", 1.0, 0.0, self.lr(self.levels.lower_lr, step))


@SOLVERS.register("joint", reads=["solver.mu"])
class Joint(_SingleModel):
    """One weighted sum L_ft + mu L_cu, one optimizer state; the erasure gradient counts only where the
    unlearning method may move parameters (ESD-x: cross-attention)."""

    def iteration(self, step: int) -> dict[str, float]:
        return self.combined_step(self.student, step, "joint", 1.0, self.cfg.mu, self.lr(self.levels.lower_lr, step))


@SOLVERS.register("two_stage", reads=["solver.erase_fraction"])
class TwoStage(_SingleModel):
    """Distill for (1 - erase_fraction) of the steps, then erase (upper steps only) for the rest."""

    def iteration(self, step: int) -> dict[str, float]:
        erase_from = round(self.levels.total_steps * (1 - self.cfg.erase_fraction))
        if step < erase_from:
            return self.take_step(self.student, step, "lower", 1.0, 0.0, self.lr(self.levels.lower_lr, step))
        return self.take_step(self.student, step, "upper", 0.0, 1.0, self.lr(self.levels.upper_lr, step - erase_from))
