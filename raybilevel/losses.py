"""Lower-level losses: diffusion (epsilon/v, Min-SNR-gamma), output KD and feature KD.

A `LowerBatch` carries one noised batch and the teacher's outputs and features on it, computed once and
shared by every term and every student that is scored on it (the penalty solver scores both theta and its
auxiliary copy on the same batch, so their value gap compares like with like).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from raybilevel.config import LowerConfig

# A student forward: (x_t, t, cond) -> model output in float32. The engine supplies it (dtype casting).
Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def resolve_taps(unet: torch.nn.Module, taps: list[str]) -> list[str]:
    """Expand "down"/"mid"/"up" into module paths such as "down_blocks.0"; "down.1" picks one block."""
    paths: list[str] = []
    for tap in taps:
        kind, _, index = tap.partition(".")
        if kind == "mid":
            if getattr(unet, "mid_block", None) is not None:
                paths.append("mid_block")
            continue
        blocks = getattr(unet, f"{kind}_blocks")
        chosen = [int(index)] if index else range(len(blocks))
        for i in chosen:
            if i >= len(blocks):
                raise ValueError(f"tap {tap!r}: the UNet has only {len(blocks)} {kind} blocks")
            paths.append(f"{kind}_blocks.{i}")
    return paths


class FeatureTaps:
    """Forward hooks that record block outputs while `capture()` is active (down blocks return tuples)."""

    def __init__(self, unet: torch.nn.Module, paths: list[str]) -> None:
        self.paths = paths
        self._active = False
        self.features: dict[str, torch.Tensor] = {}
        for path in paths:
            unet.get_submodule(path).register_forward_hook(self._hook(path))

    def _hook(self, path: str):
        def record(_module, _inputs, output):
            if self._active:
                self.features[path] = output[0] if isinstance(output, tuple) else output
        return record

    @contextmanager
    def capture(self) -> Iterator[dict[str, torch.Tensor]]:
        self.features = {}
        self._active = True
        try:
            yield self.features
        finally:
            self._active = False


def _device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def _has_module(model: torch.nn.Module, path: str) -> bool:
    try:
        return isinstance(model.get_submodule(path), torch.nn.Module)
    except AttributeError:
        return False


def velocity(x0: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    return alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0


@dataclass
class LowerBatch:
    x_t: torch.Tensor
    t: torch.Tensor
    cond: torch.Tensor
    target: torch.Tensor
    snr_weight: torch.Tensor
    teacher_out: torch.Tensor | None
    teacher_features: dict[str, torch.Tensor]


class FineTuneLoss:
    """L_ft = w_diff L_diff + w_out L_outKD + w_feat L_featKD (see LowerConfig)."""

    def __init__(self, teacher: torch.nn.Module, cfg: LowerConfig, scheduler_config: dict,
                 encode: Callable[[list[str]], torch.Tensor]) -> None:
        self.teacher, self.cfg, self.encode = teacher, cfg, encode
        self.prediction_type = scheduler_config.get("prediction_type", "epsilon")
        from diffusers import DDPMScheduler

        self.alphas_cumprod = DDPMScheduler.from_config(scheduler_config).alphas_cumprod.float()
        self.num_timesteps = len(self.alphas_cumprod)
        self.tap_paths = resolve_taps(teacher, cfg.taps) if cfg.w_feat > 0 else []
        self.teacher_taps = FeatureTaps(teacher, self.tap_paths)
        self._student_taps: dict[int, FeatureTaps] = {}

    def _taps_of(self, student: torch.nn.Module) -> FeatureTaps:
        """The student's taps: those of the teacher's that it still has (block removal drops the mid block)."""
        if id(student) not in self._student_taps:
            shared = [p for p in self.tap_paths if _has_module(student, p)]
            self._student_taps[id(student)] = FeatureTaps(student, shared)
        return self._student_taps[id(student)]

    @torch.no_grad()
    def make_batch(self, x0: torch.Tensor, captions: list[str], generator: torch.Generator) -> LowerBatch:
        n, device = x0.shape[0], _device_of(self.teacher)
        dropped = torch.rand(n, generator=generator) < self.cfg.caption_drop
        cond = self.encode(["" if drop else c for c, drop in zip(captions, dropped.tolist())])
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, self.num_timesteps, (n,), generator=generator)
        alpha_bar = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        snr = (alpha_bar / (1 - alpha_bar)).view(-1)
        if self.cfg.min_snr_gamma > 0:
            clipped = snr.clamp(max=self.cfg.min_snr_gamma)
            weight = clipped / (snr + 1) if self.prediction_type == "v_prediction" else clipped / snr
        else:
            weight = torch.ones_like(snr)
        x0 = x0.float()
        x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise
        target = velocity(x0, noise, alpha_bar) if self.prediction_type == "v_prediction" else noise
        # noise and timesteps come from CPU generators so that a run is the same on any device
        x_t, t, target, weight = (v.to(device) for v in (x_t, t, target, weight))
        teacher_out, features = None, {}
        if self.cfg.w_out > 0 or self.cfg.w_feat > 0:
            with self.teacher_taps.capture() as captured:
                teacher_out = self.teacher(x_t, t, cond).sample.float()
            features = {k: v.float() for k, v in captured.items()}
        return LowerBatch(x_t, t, cond, target, weight, teacher_out, features)

    def __call__(self, student_module: torch.nn.Module, forward: Forward,
                 batch: LowerBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss on `batch` for the student whose hooks live on `student_module`."""
        taps = self._taps_of(student_module)
        with taps.capture() as captured:
            out = forward(batch.x_t, batch.t, batch.cond)
        per_sample = (out - batch.target).pow(2).flatten(1).mean(1)
        terms = {"diff": (batch.snr_weight * per_sample).mean()}
        if batch.teacher_out is not None:
            terms["out_kd"] = F.mse_loss(out, batch.teacher_out)
        if taps.paths:
            terms["feat_kd"] = torch.stack([
                F.mse_loss(captured[p].float(), batch.teacher_features[p]) for p in taps.paths]).mean()
        weights = {"diff": self.cfg.w_diff, "out_kd": self.cfg.w_out, "feat_kd": self.cfg.w_feat}
        loss = sum(weights[k] * v for k, v in terms.items())
        return loss, {k: float(v.detach()) for k, v in terms.items()}
