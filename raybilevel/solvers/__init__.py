"""Solvers by name: bome, adaptive, penalty, alternating, distill_only, two_stage, joint (one file each)."""
from raybilevel.solvers import adaptive, alternating, baselines, bome, penalty  # noqa: F401  (registers)
from raybilevel.solvers.base import Budget, Levels, MakeTrainable, Solver, Trainable
from raybilevel.solvers.registry import SOLVERS

__all__ = ["SOLVERS", "Budget", "Levels", "MakeTrainable", "Solver", "Trainable"]
