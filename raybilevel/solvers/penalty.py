"""The paper's value-function penalty solver.

min_theta L_cu(theta) s.t. L_ft(theta) - min L_ft <= 0, relaxed to
G(theta, vartheta) = L_cu(theta) + lam (L_ft(theta) - L_ft(vartheta)).
An auxiliary copy vartheta takes one lower step per iteration (the inner loop); after every K of them
theta takes one outer step on L_cu + lam L_ft (vartheta's term has no gradient in theta). The value gap
L_ft(theta) - L_ft(vartheta), measured on the outer step's batch, is the feasibility measure.
"""
from __future__ import annotations

import copy
import math
from typing import Any

import torch

from raybilevel.solvers.base import MakeTrainable, Solver
from raybilevel.solvers.registry import SOLVERS


@SOLVERS.register("penalty", reads=["solver.K", "solver.lam"])
class Penalty(Solver):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lam = self.cfg.lam

    def build(self, student: torch.nn.Module, make: MakeTrainable) -> None:
        auxiliary = copy.deepcopy(student)  # copied before any engine partitions the student
        self.trainables["theta"] = make("theta", student, self.param_groups(student))
        self.trainables["aux"] = make("aux", auxiliary, self.param_groups(auxiliary))

    def iteration(self, step: int) -> dict[str, float]:
        lr_lower = self.lr(self.levels.lower_lr, step)
        logged = {f"aux_{k}": v for k, v in
                  self.take_step(self.trainables["aux"], step, "lower", 1.0, 0.0, lr_lower).items()}
        if (step + 1) % self.cfg.K == 0:
            gap = self.value_gap(step)
            outer = self.take_step(self.student, step, "lower", self.lam, 1.0, self.lr(self.levels.upper_lr, step))
            logged |= outer | {"value_gap": gap, "lambda": self.lam}
            if "skipped" not in outer and math.isfinite(gap):  # a NaN must not reach lambda
                self.update_lambda(gap, outer["lower"])
        return logged

    @torch.no_grad()
    def value_gap(self, step: int) -> float:
        """L_ft(theta) - L_ft(vartheta) on the batch the outer step will use (micro-batch 0)."""
        batch = self.lower_batch(step, 0)
        theta, _ = self.lower_value(self.student, batch)
        aux, _ = self.lower_value(self.trainables["aux"], batch)
        self.budget.student_forward += 2
        return float(theta - aux)

    def update_lambda(self, gap: float, lower_value: float) -> None:
        """Fixed lambda; the adaptive solver overrides this."""

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {"lam": self.lam}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.lam = state["lam"]
