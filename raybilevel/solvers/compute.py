"""Compute in multiply-accumulates (MACs), so that solvers are compared at equal compute, not equal steps.

A teacher forward costs the teacher's MACs per sample, a student forward the student's, and a student
backward about two forwards (so a forward + backward is three). `plan` finds what a solver will spend by
running its schedule against stand-ins that compute nothing, so a compute budget becomes an exact number
of iterations of that solver before training starts.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from raybilevel.config import SolverConfig
from raybilevel.solvers.base import Budget, Levels, Solver
from raybilevel.solvers.optim import BilevelAdamW

BACKWARD_FORWARDS = 2  # a backward pass costs about two forwards


@dataclass(frozen=True)
class Costs:
    """MACs of one forward per sample."""

    teacher: int
    student: int

    def of(self, budget: Budget) -> int:
        student_passes = (1 + BACKWARD_FORWARDS) * budget.student_fb_samples + budget.student_forward_samples
        return self.teacher * budget.teacher_samples + self.student * student_passes


def spent(budget: Budget, costs: Costs, steps: int) -> dict[str, Any]:
    """The compute record of a run for metrics.json."""
    return {"macs": costs.of(budget), "teacher_macs_per_sample": costs.teacher, "student_macs_per_sample": costs.student,
            "theta_updates": budget.theta_updates, "steps": steps}


class _Batch:
    """What a solver reads of a batch: whether the teacher ran and whether a preservation term exists."""

    def __init__(self, teacher_out: bool, keep: bool) -> None:
        self.teacher_out = object() if teacher_out else None
        self.keep_cond = object() if keep else None


class _FreeLower:
    def __init__(self, uses_teacher: bool) -> None:
        self.uses_teacher = uses_teacher

    def make_batch(self, *args: Any) -> _Batch:
        return _Batch(self.uses_teacher, False)

    def __call__(self, *args: Any) -> tuple[torch.Tensor, dict[str, float]]:
        return torch.zeros(()), {}


class _FreeUpper:
    def __init__(self, teacher_passes: int, preserves: bool) -> None:
        self.teacher_passes, self.preserves = teacher_passes, preserves

    def make_batch(self, *args: Any) -> _Batch:
        return _Batch(True, self.preserves)

    def __call__(self, *args: Any) -> tuple[torch.Tensor, dict[str, float]]:
        return torch.zeros(()), {}

    @staticmethod
    def updates(name: str) -> bool:
        return True


class _FreeSampler:
    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size

    def indices(self, step: int, micro: int) -> list[int]:
        return []

    def generator(self, step: int, micro: int) -> None:
        return None


class _FreeTrainable:
    def __init__(self) -> None:
        self.module = torch.nn.Module()
        self.optimizer = BilevelAdamW([torch.zeros(1, requires_grad=True)])

    def forward(self, *args: Any) -> torch.Tensor:
        return torch.zeros(())

    def backward(self, loss: torch.Tensor) -> None:
        pass

    def step(self, level: str, lr: float) -> None:
        pass


def plan(solver_class: type[Solver], cfg: SolverConfig, levels: Levels, steps: int) -> Budget:
    """What `steps` iterations of the solver spend, from its own schedule (nothing is computed)."""
    free = dataclasses.replace(
        levels, total_steps=steps,
        lower_loss=_FreeLower(levels.lower_loss.cfg.w_out > 0 or levels.lower_loss.cfg.w_feat > 0),
        upper_loss=_FreeUpper(levels.upper_loss.teacher_passes, levels.upper_loss.cfg.preservation_weight > 0),
        lower_sampler=_FreeSampler(levels.lower_sampler.batch_size),
        upper_sampler=_FreeSampler(levels.upper_sampler.batch_size),
        gap_sampler=_FreeSampler(levels.gap_sampler.batch_size),
        get_lower_data=lambda indices: (None, []))
    solver = solver_class(cfg, free)
    solver.build(torch.nn.Module(), lambda name, module, groups: _FreeTrainable())
    for step in range(steps):
        solver.iteration(step)
    return solver.budget


def steps_for_budget(solver_class: type[Solver], cfg: SolverConfig, levels: Levels, costs: Costs,
                     macs: float) -> int:
    """The most iterations whose planned compute fits in `macs` (at least 1)."""
    probe = 64
    per_step = costs.of(plan(solver_class, cfg, levels, probe)) / probe
    low, high = 1, max(2, int(2 * macs / per_step) + 2)
    while costs.of(plan(solver_class, cfg, levels, high)) <= macs:  # the estimate was short
        low, high = high, 2 * high
    while high - low > 1:  # invariant: plan(low) fits (or low == 1), plan(high) does not
        middle = (low + high) // 2
        if costs.of(plan(solver_class, cfg, levels, middle)) <= macs:
            low = middle
        else:
            high = middle
    return low
