"""Single-loop value-gap solver: lambda from the measured feasibility gap, and a lambda that acts under Adam.

Every iteration vartheta takes one lower step (it tracks min L_ft, warm-started from its own last position
as in F2SA-style single-loop methods) and theta takes one step with each term preconditioned by its own
AdamW state: lr * u_ft + (upper_lr / lam) * u_cu (solvers/optim.py, level "barrier" with lam fixed), so
doubling lam halves the erasure step. Every K iterations the value gap L_ft(theta) - L_ft(vartheta) is
measured on a fresh batch and smoothed (solver.gap_ema); multiplicative dual ascent on the relative gap
r = gap / L_ft(theta) sets lam <- clip(lam * exp(lam_rate * (r - gap_tolerance)), lam_min, lam_max), from
lam_min (1: a full upper step): lam grows, and erasure slows, while theta is further from lower-level
optimality than the tolerance.
This is our extension, not the paper's method.
"""
from __future__ import annotations

import math
from typing import Any

from raybilevel.solvers.penalty import ValueGapSolver
from raybilevel.solvers.registry import SOLVERS


@SOLVERS.register("adaptive", reads=["solver.K", "solver.lam_min", "solver.gap_tolerance", "solver.lam_rate",
                                     "solver.lam_max", "solver.gap_ema"])
class Adaptive(ValueGapSolver):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lam = self.cfg.lam_min
        self.gap = float("nan")  # the moving average of the relative value gap

    def iteration(self, step: int) -> dict[str, float]:
        logged = self.aux_step(step)
        upper_lr = self.lr(self.levels.upper_lr, step)
        self.student.optimizer.upper_lr = upper_lr
        self.student.optimizer.lam_min = self.student.optimizer.lam_max = self.lam
        logged |= self.combined_step(self.student, step, "barrier", 1.0, 1.0, self.lr(self.levels.lower_lr, step))
        logged["lambda"] = self.lam
        if (step + 1) % self.cfg.K == 0:
            gap, theta_value = self.value_gap(step)
            if math.isfinite(gap) and "skipped" not in logged:  # a NaN must not reach lambda
                relative = gap / max(abs(theta_value), 1e-12)
                beta = self.cfg.gap_ema if math.isfinite(self.gap) else 0.0
                self.gap = beta * self.gap + (1 - beta) * relative if beta else relative
                excess = self.gap - self.cfg.gap_tolerance
                self.lam = min(self.cfg.lam_max, max(self.cfg.lam_min, self.lam * math.exp(self.cfg.lam_rate * excess)))
            logged |= {"value_gap": gap, "relative_gap_ema": self.gap}
        return logged

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {"lam": self.lam, "gap_ema": self.gap}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.lam, self.gap = state["lam"], state.get("gap_ema", float("nan"))
