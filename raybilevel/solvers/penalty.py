"""The paper's value-function penalty solver, literally (kept for fidelity to its text).

min_theta L_cu(theta) s.t. L_ft(theta) - min L_ft <= 0, relaxed to
G(theta, vartheta) = L_cu(theta) + lam (L_ft(theta) - L_ft(vartheta)).
An auxiliary copy vartheta takes one lower step per iteration (the inner loop); after every K of them
theta takes one outer step on L_cu + lam L_ft (vartheta's term has no gradient in theta), at the upper
learning rate, with one AdamW state. Under Adam that makes lam nearly inert: Adam(lam g_ft + g_cu) is about
Adam(g_ft + g_cu / lam), so lam only sets the mix (see `bome` for a lambda that acts). The erasure
gradient counts only where the unlearning method may move parameters (ESD-x: cross-attention).
The value gap L_ft(theta) - L_ft(vartheta), measured on a fresh batch neither has stepped on, is the
feasibility measure.
"""
from __future__ import annotations

import copy
import math
from typing import Any

import torch

from raybilevel.solvers.base import MakeTrainable, Solver
from raybilevel.solvers.registry import SOLVERS


class ValueGapSolver(Solver):
    """theta plus an auxiliary copy vartheta that only descends L_ft, to estimate min L_ft."""

    def build(self, student: torch.nn.Module, make: MakeTrainable) -> None:
        auxiliary = copy.deepcopy(student)  # copied before any engine partitions the student
        self.trainables["theta"] = make("theta", student, self.param_groups(student))
        self.trainables["aux"] = make("aux", auxiliary, self.param_groups(auxiliary))

    def aux_step(self, step: int) -> dict[str, float]:
        lr_lower = self.lr(self.levels.lower_lr, step)
        return {f"aux_{k}": v for k, v in
                self.take_step(self.trainables["aux"], step, "lower", 1.0, 0.0, lr_lower).items()}

    @torch.no_grad()
    def value_gap(self, step: int) -> tuple[float, float]:
        """(L_ft(theta) - L_ft(vartheta), L_ft(theta)) on a fresh batch: the batch vartheta just stepped on
        would flatter vartheta and bias the gap upwards."""
        batch = self.fresh_lower_batch(step)
        theta, _ = self.lower_value(self.student, batch)
        aux, _ = self.lower_value(self.trainables["aux"], batch)
        self.budget.student_forward += 2
        self.budget.student_forward_samples += 2 * self.levels.gap_sampler.batch_size
        return float(theta - aux), float(theta)


@SOLVERS.register("penalty", reads=["solver.K", "solver.lam"])
class Penalty(ValueGapSolver):
    def iteration(self, step: int) -> dict[str, float]:
        logged = self.aux_step(step)
        if (step + 1) % self.cfg.K == 0:
            gap, _ = self.value_gap(step)
            outer = self.combined_step(self.student, step, "joint", self.cfg.lam, 1.0,
                                       self.lr(self.levels.upper_lr, step))
            logged |= outer | {"value_gap": gap, "lambda": self.cfg.lam}
        return logged
