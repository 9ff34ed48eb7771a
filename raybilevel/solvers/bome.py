"""BOME's lambda for the simple bilevel problem, in the metric of two Adam preconditioners.

min L_cu(theta) over argmin L_ft: the value-function constraint q = L_ft(theta) - min L_ft has
grad q = grad L_ft (the minimum is a constant), so no auxiliary copy enters theta's direction. BOME
(Ye, Liu et al. 2022) steps along grad L_cu + lam grad q with the smallest lam that still decreases q by
phi. Under Adam a scalar lam on one state is cancelled (METHOD.md), so here each term has its own AdamW
state (u_ft, u_cu) and theta takes, every iteration,
    lr * u_ft + (upper_lr / lam) * u_cu,
with lam the smallest value >= solver.lam_min for which the step keeps solver.keep of the lower loss's
first-order decrease <lr u_ft, grad L_ft> (solvers/optim.py: barrier_lambda). Erasure runs at the full
upper step where it does not undo fine-tuning and is scaled back exactly as far as it would. The inner
products are per parameter group on each rank's partition plus one scalar all-reduce (ZeRO 1-3). The
erasure gradient only reaches what the unlearning method may move.
"""
from __future__ import annotations

from raybilevel.solvers.baselines import _SingleModel
from raybilevel.solvers.registry import SOLVERS


@SOLVERS.register("bome", reads=["solver.keep", "solver.lam_min", "solver.lam_max"])
class Bome(_SingleModel):
    def iteration(self, step: int) -> dict[str, float]:
        optimizer = self.student.optimizer
        optimizer.upper_lr = self.lr(self.levels.upper_lr, step)
        optimizer.keep, optimizer.lam_min, optimizer.lam_max = self.cfg.keep, self.cfg.lam_min, self.cfg.lam_max
        logged = self.combined_step(self.student, step, "barrier", 1.0, 1.0, self.lr(self.levels.lower_lr, step))
        return logged | {"lambda": optimizer.last_lambda}
