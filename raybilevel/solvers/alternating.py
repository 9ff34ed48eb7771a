"""The reference code's solver: one parameter set, two AdamW states; a lower step on L_ft every
iteration and an upper step on L_cu alone after every K lower steps."""
from __future__ import annotations

from raybilevel.solvers.baselines import _SingleModel
from raybilevel.solvers.registry import SOLVERS


@SOLVERS.register("alternating", reads=["solver.K"])
class Alternating(_SingleModel):
    def iteration(self, step: int) -> dict[str, float]:
        logged = self.take_step(self.student, step, "lower", 1.0, 0.0, self.lr(self.levels.lower_lr, step))
        if (step + 1) % self.cfg.K == 0:
            logged |= self.take_step(self.student, step, "upper", 0.0, 1.0, self.lr(self.levels.upper_lr, step))
        return logged
