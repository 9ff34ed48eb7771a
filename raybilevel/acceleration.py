"""The speed options of engine.* applied to the models before any engine wraps them (see EngineConfig).

Student: gradient checkpointing, channels-last, torch.compile; its precision is the engine's (engine.py).
Teacher: frozen (no parameter requires grad, so no call records an autograd graph), in `teacher_dtype`,
optionally channels-last. Both stay plain modules: parameter names, hooks and checkpoints are unchanged.
"""
from __future__ import annotations

from typing import Any

import torch

from raybilevel.config import EngineConfig

# UNet2DConditionModel.forward(sample, timestep, encoder_hidden_states, ...): what the input hook converts.
_SAMPLE, _TEXT = (0, "sample"), (2, "encoder_hidden_states")


def teacher_dtype(cfg: EngineConfig) -> torch.dtype:
    if cfg.teacher_dtype == "auto":
        return torch.bfloat16 if cfg.precision != "fp32" else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16}[cfg.teacher_dtype]


def _input_hook(cast: bool, channels_last: bool):
    """A forward pre-hook that casts the image and text inputs to the module's weight dtype (when `cast`;
    read at each call, so a teacher moved back to fp32 for an fp32 baseline still works) and puts the image
    in channels-last. The timestep is left alone: in bf16, 999 would become 1000."""

    def convert(value: Any, is_image: bool, dtype: torch.dtype | None) -> Any:
        if not torch.is_tensor(value) or not value.is_floating_point():
            return value
        value = value if dtype is None else value.to(dtype)
        if is_image and channels_last and value.dim() == 4:
            value = value.contiguous(memory_format=torch.channels_last)
        return value

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict):
        dtype = next(module.parameters()).dtype if cast else None
        args = list(args)
        for (index, name), is_image in ((_SAMPLE, True), (_TEXT, False)):
            if len(args) > index:
                args[index] = convert(args[index], is_image, dtype)
            elif name in kwargs:
                kwargs[name] = convert(kwargs[name], is_image, dtype)
        return tuple(args), kwargs

    return hook


def prepare_teacher(teacher: torch.nn.Module, cfg: EngineConfig) -> None:
    """In place; call it after the student was copied from the teacher (pruning), which must stay fp32."""
    teacher.eval().requires_grad_(False)
    dtype = teacher_dtype(cfg)
    if dtype != torch.float32:  # diffusers warns about any dtype cast, even a no-op one
        teacher.to(dtype=dtype)
    if cfg.channels_last:
        teacher.to(memory_format=torch.channels_last)
    if dtype != torch.float32 or cfg.channels_last:
        teacher.register_forward_pre_hook(_input_hook(dtype != torch.float32, cfg.channels_last), with_kwargs=True)


def prepare_student(model: torch.nn.Module, cfg: EngineConfig) -> None:
    """In place, before the engine wraps `model` (each parameter set of a solver gets its own call)."""
    if cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    if cfg.channels_last:
        # The input only: DeepSpeed broadcasts parameters as contiguous byte views (a channels-last weight
        # fails there) and ZeRO flattens them; convolutions given a channels-last input run channels-last.
        model.register_forward_pre_hook(_input_hook(cast=False, channels_last=True), with_kwargs=True)
    if cfg.compile:
        # Module.compile, not torch.compile(model): no wrapper, so no "_orig_mod." in parameter names.
        model.compile(backend=cfg.compile_backend)
