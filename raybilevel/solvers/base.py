"""What a solver is: it owns its trainables (one per parameter set), decides which loss steps which
parameters when, keeps its own state, and counts what it spends.

The engine layer supplies `Trainable`s (DeepSpeed engines behind a small interface), so solvers stay
free of DeepSpeed and can be read as the method's pseudo-code.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any, Callable, Protocol

import math

import torch

from raybilevel.config import SolverConfig
from raybilevel.errors import NonFiniteLossError
from raybilevel.losses import FineTuneLoss, LowerBatch
from raybilevel.solvers.data import EpochSampler
from raybilevel.solvers.optim import BilevelAdamW
from raybilevel.unlearning import UnlearningLoss


class Trainable(Protocol):
    module: torch.nn.Module
    optimizer: BilevelAdamW  # its level-specific settings (barrier: upper_lr, keep, ...) are set by solvers

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor: ...

    def backward(self, loss: torch.Tensor) -> None: ...

    def step(self, level: str, lr: float) -> None: ...


# (name, model, param_groups) -> Trainable; param groups carry the `upper` flag (see solvers/optim.py)
MakeTrainable = Callable[[str, torch.nn.Module, list[dict[str, Any]]], Trainable]


@dataclass
class Budget:
    """Passes spent, to compare solvers at equal compute. fb = one student forward + backward.

    The batch counters read at a glance; the sample counters are what solvers/compute.py turns into MACs
    (a teacher forward per sample, a student forward, a student backward at about two forwards)."""

    lower_fb: int = 0
    upper_fb: int = 0
    student_forward: int = 0  # forwards without backward (value-gap evaluation)
    teacher_forward: int = 0  # in units of one batch; ESD's two-prompt pass counts 2
    teacher_samples: int = 0
    student_fb_samples: int = 0
    student_forward_samples: int = 0
    theta_updates: int = 0  # optimizer steps that moved the student (theta)


@dataclass
class Levels:
    """Everything a solver needs to take lower and upper steps, deterministically by step."""

    lower_loss: FineTuneLoss
    upper_loss: UnlearningLoss
    lower_sampler: EpochSampler
    upper_sampler: EpochSampler
    gap_sampler: EpochSampler  # fresh lower batches for value gaps (never stepped on)
    get_lower_data: Callable[[list[int]], tuple[torch.Tensor, list[str]]]
    lower_lr: float
    upper_lr: float
    grad_accum: int
    total_steps: int
    on_nonfinite: str = "stop"  # or "skip" (see Solver.take_step)
    max_skipped_steps: int = 10


class Solver(ABC):
    """Subclasses implement `build` (make trainables) and `iteration` (one step of the budget)."""

    def __init__(self, cfg: SolverConfig, levels: Levels) -> None:
        self.cfg, self.levels = cfg, levels
        self.budget = Budget()
        self.trainables: dict[str, Trainable] = {}
        self.skipped_steps = 0
        self._last_lower: tuple[tuple[int, int], LowerBatch] | None = None

    # ---- construction
    def param_groups(self, model: torch.nn.Module) -> list[dict[str, Any]]:
        """Two groups: parameters the upper level may move, and the rest (see BilevelAdamW)."""
        upper, rest = [], []
        for name, p in model.named_parameters():
            if p.requires_grad:
                (upper if self.levels.upper_loss.updates(name) else rest).append(p)
        return [g for g in ({"params": upper, "upper": True}, {"params": rest, "upper": False}) if g["params"]]

    @abstractmethod
    def build(self, student: torch.nn.Module, make: MakeTrainable) -> None: ...

    @property
    def student(self) -> Trainable:
        return self.trainables["theta"]

    # ---- one iteration
    @abstractmethod
    def iteration(self, step: int) -> dict[str, float]: ...

    def lr(self, base: float, step: int) -> float:
        """Linear warm-up over solver.warmup_steps, then constant or (lr_schedule cosine) a cosine decay
        to 0 at the last step of the budget."""
        warm, total = self.cfg.warmup_steps, self.levels.total_steps
        if warm and step < warm:
            return base * (step + 1) / warm
        if self.cfg.lr_schedule == "cosine" and total > warm:
            return base * 0.5 * (1 + math.cos(math.pi * (step - warm) / (total - warm)))
        return base

    # ---- shared step machinery
    def lower_batch(self, step: int, micro: int) -> LowerBatch:
        """The batch of (step, micro), built once: penalty's inner step, value gap and outer step all
        score the same batch, and rebuilding it would repeat the teacher's forward."""
        if self._last_lower is not None and self._last_lower[0] == (step, micro):
            return self._last_lower[1]
        batch = self._make_lower_batch(self.levels.lower_sampler, step, micro)
        self._last_lower = ((step, micro), batch)
        return batch

    def fresh_lower_batch(self, step: int) -> LowerBatch:
        """A lower batch no optimizer has stepped on: from the "gap" stream, for unbiased value gaps."""
        return self._make_lower_batch(self.levels.gap_sampler, step, 0)

    def _make_lower_batch(self, sampler: EpochSampler, step: int, micro: int) -> LowerBatch:
        x0, captions = self.levels.get_lower_data(sampler.indices(step, micro))
        batch = self.levels.lower_loss.make_batch(x0, captions, sampler.generator(step, micro))
        if batch.teacher_out is not None:
            self.budget.teacher_forward += 1
            self.budget.teacher_samples += sampler.batch_size
        return batch

    def upper_batch(self, step: int, micro: int):
        sampler = self.levels.upper_sampler
        batch = self.levels.upper_loss.make_batch(sampler.indices(step, micro), sampler.generator(step, micro))
        passes = self.levels.upper_loss.teacher_passes + int(batch.keep_cond is not None)
        self.budget.teacher_forward += passes
        self.budget.teacher_samples += passes * sampler.batch_size
        return batch

    def lower_value(self, who: Trainable, batch: LowerBatch) -> tuple[torch.Tensor, dict[str, float]]:
        return self.levels.lower_loss(who.module, who.forward, batch)

    def take_step(self, who: Trainable, step: int, level: str, lower_weight: float, upper_weight: float,
                  lr: float) -> dict[str, float]:
        """One optimizer step of `who` on lower_weight * L_ft + upper_weight * L_cu, over grad_accum
        micro-batches; returns the mean of each logged term (and skipped = 1 if the step was skipped).

        A non-finite loss stops the run (on_nonfinite "stop") or skips the whole optimizer step ("skip"):
        every micro-batch still runs backward (ZeRO reduces gradients inside backward and expects one per
        micro-batch), then the optimizer's "skip" level leaves weights and moments as they were and the
        engine discards the gradients, NaN or not."""
        logged: dict[str, float] = {}
        skip = False
        for micro in range(self.levels.grad_accum):
            loss = torch.zeros(())
            if lower_weight:
                lower, terms = self.lower_value(who, self.lower_batch(step, micro))
                loss = loss + lower_weight * lower
                terms["lower"] = float(lower.detach())
                self.budget.lower_fb += 1
                self.budget.student_fb_samples += self.levels.lower_sampler.batch_size
                _accumulate(logged, terms, self.levels.grad_accum)
            if upper_weight:
                batch = self.upper_batch(step, micro)
                upper, terms = self.levels.upper_loss(who.forward, batch)
                loss = loss + upper_weight * upper
                terms["upper"] = float(upper.detach())
                self.budget.upper_fb += 1
                passes = 1 + int(batch.keep_cond is not None)  # the preservation term is a second forward
                self.budget.student_fb_samples += passes * self.levels.upper_sampler.batch_size
                _accumulate(logged, terms, self.levels.grad_accum)
            if not skip and not torch.isfinite(loss):
                self._non_finite(step, level, logged)
                skip = True
            who.backward(loss)
            who.step("skip" if skip else level, lr)
        if who is self.student and level not in ("stash", "skip") and not skip:
            self.budget.theta_updates += 1
        logged[f"lr_{level}"] = lr
        if skip:
            logged["skipped"] = 1.0
        return logged

    def combined_step(self, who: Trainable, step: int, level: str, lower_weight: float, upper_weight: float,
                      lr: float) -> dict[str, float]:
        """One update of `who` from both levels' gradients, kept apart: the lower loss's gradient is
        stashed first, then `level` (joint or barrier, see solvers/optim.py) combines it with the upper
        loss's, which counts only where the unlearning method may move parameters. A non-finite first half
        skips the second too."""
        logged = self.take_step(who, step, "stash", lower_weight, 0.0, lr)
        logged.pop("lr_stash")
        second = self.take_step(who, step, "skip" if "skipped" in logged else level, 0.0, upper_weight, lr)
        return logged | second

    def _non_finite(self, step: int, level: str, logged: dict[str, float]) -> None:
        terms = ", ".join(f"{k}={v:.4g}" for k, v in logged.items())
        if self.levels.on_nonfinite == "stop":
            raise NonFiniteLossError(f"non-finite loss at step {step} ({level} step: {terms}); lower the learning "
                                     "rate, or set train.on_nonfinite=skip to skip such steps")
        self.skipped_steps += 1
        if self.skipped_steps > self.levels.max_skipped_steps:
            raise NonFiniteLossError(f"diverged: {self.skipped_steps} steps skipped for non-finite losses (last at "
                                     f"step {step}: {terms}), more than train.max_skipped_steps="
                                     f"{self.levels.max_skipped_steps}; lower the learning rate")

    # ---- state
    def state_dict(self) -> dict[str, Any]:
        return {"budget": asdict(self.budget), "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.budget = Budget(**state["budget"])
        self.skipped_steps = state.get("skipped_steps", 0)


def _accumulate(into: dict[str, float], terms: dict[str, float], n: int) -> None:
    for key, value in terms.items():
        into[key] = into.get(key, 0.0) + value / n
