"""AdamW with one moment state per level, so that one DeepSpeed engine can run two optimizers.

DeepSpeed wraps one model and one optimizer. The reference code's alternating solver keeps two AdamW
states (lower and upper) over the same parameters; here one optimizer object holds both and `level`
selects which state and which parameter groups a step uses; level "skip" leaves weights and state as they
are (a step whose loss was not finite). Upper steps move only the groups flagged
`upper=True` (e.g. cross-attention for ESD-x). ZeRO flattens each parameter group into partitions but
keeps the group dicts, so both the flag and the per-level state survive ZeRO 1-3 and its checkpoints.
State keys are flat ("lower.exp_avg") and counters plain ints, as ZeRO's checkpoint code expects.
"""
from __future__ import annotations

import torch

LEVELS = ("lower", "upper")


class BilevelAdamW(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, upper=True))
        self.level = "lower"

    @torch.no_grad()
    def step(self, closure=None):
        if self.level == "skip":
            return None
        if self.level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS} or 'skip', got {self.level!r}")
        for group in self.param_groups:
            if self.level == "upper" and not group["upper"]:
                continue
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                key = self.level
                if f"{key}.exp_avg" not in state:
                    state[f"{key}.step"] = 0
                    state[f"{key}.exp_avg"] = torch.zeros_like(p)
                    state[f"{key}.exp_avg_sq"] = torch.zeros_like(p)
                state[f"{key}.step"] += 1
                step = state[f"{key}.step"]
                exp_avg, exp_avg_sq = state[f"{key}.exp_avg"], state[f"{key}.exp_avg_sq"]
                grad = p.grad.to(p.dtype)
                p.mul_(1 - group["lr"] * group["weight_decay"])
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                bias1, bias2 = 1 - beta1 ** step, 1 - beta2 ** step
                denom = (exp_avg_sq / bias2).sqrt_().add_(group["eps"])
                p.addcdiv_(exp_avg, denom, value=-group["lr"] / bias1)
        return None
