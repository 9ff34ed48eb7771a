"""Penalty solver with lambda set from the value gap each outer step, so lambda needs no hand tuning.

BOME's rule picks lambda from inner products of the two gradients; under ZeRO 2/3 those gradients are
partitioned and reduced in buckets, so this solver uses the scalar the penalty solver already measures:
multiplicative dual ascent on the relative gap r = (L_ft(theta) - L_ft(vartheta)) / L_ft(theta),
lam <- clip(lam * exp(rate * (r - tolerance)), lam_min, lam_max): lambda grows while theta is further
from lower-level optimality than the tolerance and shrinks (leaving room to erase) once it is closer.
"""
from __future__ import annotations

import math

from raybilevel.solvers.penalty import Penalty
from raybilevel.solvers.registry import SOLVERS

LAM_MIN = 1e-3


@SOLVERS.register("adaptive", reads=["solver.K", "solver.lam", "solver.gap_tolerance", "solver.lam_rate", "solver.lam_max"])
class Adaptive(Penalty):
    def update_lambda(self, gap: float, lower_value: float) -> None:
        relative = gap / max(abs(lower_value), 1e-12)
        self.lam = min(self.cfg.lam_max, max(LAM_MIN, self.lam * math.exp(self.cfg.lam_rate * (relative - self.cfg.gap_tolerance))))
