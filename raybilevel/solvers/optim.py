"""AdamW with one moment state per level, so that one DeepSpeed engine can run two optimizers.

DeepSpeed wraps one model and one optimizer. The reference code's alternating solver keeps two AdamW
states (lower and upper) over the same parameters; here one optimizer object holds both and `level`
selects which state and which parameter groups a step uses. Upper steps move only the groups flagged
`upper=True` (e.g. cross-attention for ESD-x). ZeRO flattens each parameter group into partitions but
keeps the group dicts, so both the flag and the per-level state survive ZeRO 1-3 and its checkpoints.
State keys are flat ("lower.exp_avg") and counters plain ints, as ZeRO's checkpoint code expects.

Levels:
- lower / upper: an AdamW step on the gradient with that level's state (upper: flagged groups only).
- skip: weights and state untouched (a step whose loss was not finite).
- stash: keep the gradient (of the lower loss) for the next step; nothing moves.
- joint: one lower-state AdamW step on stash + gradient, where the gradient (of the upper loss) counts
  only in flagged groups: the erasure gradient never reaches what the unlearning method may not move.
- barrier: per-term preconditioning (see `barrier_lambda`): lr * u_ft + (upper_lr / lambda) * u_cu, u_ft
  the lower state's AdamW direction for the stashed gradient, u_cu the upper state's for the gradient.
ZeRO calls `step` once per parameter group (stage 1-2) or sub-group (stage 3) on this rank's partition,
so the barrier's inner products are per group: local sums plus one all-reduce of two scalars.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

LEVELS = ("lower", "upper", "skip", "stash", "joint", "barrier")
STASH = "stash"


def barrier_lambda(progress_lower: float, progress_upper: float, *, lr: float, upper_lr: float, keep: float,
                   lam_min: float, lam_max: float) -> float:
    """The smallest lambda >= lam_min for which the combined step keeps at least `keep` of the lower loss's
    first-order decrease: with d = lr u_ft + (upper_lr / lambda) u_cu and g = grad L_ft,
    <d, g> >= keep * lr <u_ft, g> <=> upper_lr * (-<u_cu, g>) / lambda <= (1 - keep) * lr * <u_ft, g>.

    progress_lower = <u_ft, g>, progress_upper = <u_cu, g> (negative when erasing would raise L_ft).
    This is BOME's / the dynamic barrier's rule in the metric of the two Adam preconditioners."""
    if progress_upper >= 0:
        return lam_min  # erasing does not undo fine-tuning to first order
    allowed = (1 - keep) * lr * progress_lower
    if allowed <= 0:
        return lam_max
    return min(lam_max, max(lam_min, upper_lr * -progress_upper / allowed))


class BilevelAdamW(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, upper=True))
        self.level = "lower"
        # barrier level: set by the solver before each step
        self.upper_lr, self.keep, self.lam_min, self.lam_max = 0.0, 0.5, 1.0, 1e4
        self.last_lambda = float("nan")  # of the last flagged group's barrier step (for logging)
        # sums a tensor over ranks when each rank holds a disjoint partition (ZeRO >= 1 with > 1 rank)
        self.all_reduce: Callable[[torch.Tensor], None] | None = None

    @torch.no_grad()
    def step(self, closure=None):
        if self.level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, got {self.level!r}")
        for group in self.param_groups:
            if self.level == "skip":
                for p in group["params"]:
                    self.state[p].pop(STASH, None)
            elif self.level == "stash":
                for p in group["params"]:
                    if p.grad is not None:
                        self.state[p][STASH] = p.grad.detach().to(p.dtype).clone()
            elif self.level == "barrier":
                self._barrier_step(group)
            elif self.level == "joint":
                for p in group["params"]:
                    if STASH not in self.state[p] and (p.grad is None or not group["upper"]):
                        continue  # no gradient of either term reached p
                    grad = self._stashed(p) + (_grad(p) if group["upper"] else 0)
                    p.add_(self._direction(p, group, "lower", grad), alpha=-group["lr"])
            elif self.level == "lower" or group["upper"]:
                for p in group["params"]:
                    if p.grad is not None:
                        p.add_(self._direction(p, group, self.level, _grad(p)), alpha=-group["lr"])
        return None

    def _stashed(self, p: torch.Tensor) -> torch.Tensor:
        stashed = self.state[p].pop(STASH, None)
        return torch.zeros_like(p) if stashed is None else stashed

    def _direction(self, p: torch.Tensor, group: dict, key: str, grad: torch.Tensor, decay: bool = True) -> torch.Tensor:
        """Advance `key`'s moments with grad and return Adam's direction; `decay` first applies decoupled
        weight decay to p (once per step, whatever the number of directions)."""
        beta1, beta2 = group["betas"]
        state = self.state[p]
        if f"{key}.exp_avg" not in state:
            state[f"{key}.step"] = 0
            state[f"{key}.exp_avg"] = torch.zeros_like(p)
            state[f"{key}.exp_avg_sq"] = torch.zeros_like(p)
        state[f"{key}.step"] += 1
        step = state[f"{key}.step"]
        exp_avg, exp_avg_sq = state[f"{key}.exp_avg"], state[f"{key}.exp_avg_sq"]
        if decay:
            p.mul_(1 - group["lr"] * group["weight_decay"])
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias1, bias2 = 1 - beta1 ** step, 1 - beta2 ** step
        return (exp_avg / bias1) / (exp_avg_sq / bias2).sqrt_().add_(group["eps"])

    def _barrier_step(self, group: dict) -> None:
        params = group["params"]
        lower_grads = [self._stashed(p) for p in params]
        u_ft = [self._direction(p, group, "lower", g) for p, g in zip(params, lower_grads)]
        if not group["upper"]:
            for p, u in zip(params, u_ft):
                p.add_(u, alpha=-group["lr"])
            return
        u_cu = [self._direction(p, group, "upper", _grad(p), decay=False) for p in params]
        sums = torch.zeros(2, dtype=torch.float64, device=params[0].device if params else "cpu")
        for g, a, b in zip(lower_grads, u_ft, u_cu):
            sums[0] += torch.vdot(a.flatten().double(), g.flatten().double())
            sums[1] += torch.vdot(b.flatten().double(), g.flatten().double())
        if self.all_reduce is not None:
            self.all_reduce(sums)
        lam = barrier_lambda(float(sums[0]), float(sums[1]), lr=group["lr"], upper_lr=self.upper_lr,
                             keep=self.keep, lam_min=self.lam_min, lam_max=self.lam_max)
        self.last_lambda = lam
        for p, a, b in zip(params, u_ft, u_cu):
            p.add_(a, alpha=-group["lr"])
            if math.isfinite(lam):
                p.add_(b, alpha=-self.upper_lr / lam)


def _grad(p: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(p) if p.grad is None else p.grad.to(p.dtype)
