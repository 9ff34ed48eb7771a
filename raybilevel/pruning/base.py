"""The Student type, the two registries, `prune`, save/load and size statistics shared by every method."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from raybilevel.errors import UserError
from raybilevel.registry import Registry

WEIGHTS_FILE = "model.safetensors"
DESCRIPTION_FILE = "student.json"


@dataclass
class Student:
    """A trainable pruned model and what it takes to rebuild it.

    Args:
        model: the student UNet.
        description: JSON-serialisable; `structure` names the REBUILDERS entry load_student uses, `config`
            the UNet config it is built from, the rest is method-specific (shapes, notes) plus `stats`.
        constrain: re-imposes the structure on the model in place (None: nothing to re-impose).
    """

    model: nn.Module
    description: dict[str, Any]
    constrain: Callable[[nn.Module], None] | None = None

    def apply_constraints(self) -> None:
        """Call after an optimizer step; cheap, and a no-op for every method but magnitude."""
        if self.constrain is not None:
            self.constrain(self.model)


class PruneFn(Protocol):
    def __call__(self, teacher: nn.Module, *, sparsity: float, seed: int, path: str) -> Student: ...


PRUNERS: Registry[PruneFn] = Registry("pruning method")
# Structure name -> a Student of the described architecture with placeholder weights; load_student fills them.
REBUILDERS: Registry[Callable[[dict[str, Any]], Student]] = Registry("student structure")


def unet_config(model: nn.Module) -> dict[str, Any]:
    """The constructor arguments of a diffusers model (its private bookkeeping keys left out)."""
    return {key: value for key, value in model.config.items() if not key.startswith("_")}


def build_unet(config: dict[str, Any]) -> nn.Module:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_config(config)


def describe(method: str, structure: str, model: nn.Module, *, sparsity: float, seed: int,
             **details: Any) -> dict[str, Any]:
    """The description fields every method shares; `model` is the student (its config is the one to build)."""
    return {"method": method, "structure": structure, "sparsity": sparsity, "seed": seed,
            "config": unet_config(model), **details}


@REBUILDERS.register("diffusers")
def rebuild_plain(description: dict[str, Any]) -> Student:
    """A student that is a plain diffusers UNet: its config says everything."""
    return Student(build_unet(description["config"]), description)


def prune(method: str, teacher: nn.Module, *, sparsity: float, seed: int = 0, path: str = "") -> Student:
    """A new trainable student made from `teacher` (left untouched) by the registered `method`."""
    if method not in PRUNERS:
        raise UserError(f"unknown pruning method {method!r}; choose one of: {', '.join(PRUNERS.names())}")
    if not 0.0 <= sparsity < 1.0:
        raise UserError(f"pruning sparsity {sparsity} is out of range; use 0 <= sparsity < 1")
    student = PRUNERS.get(method)(teacher, sparsity=sparsity, seed=seed, path=path)
    student.model.requires_grad_(True).train()
    inputs = _stats_inputs(student.description["config"])
    student.description["stats"] = {"teacher": model_stats(teacher, **inputs),
                                    "student": model_stats(student.model, **inputs)}
    return student


def save_student(student: Student, folder: str | os.PathLike) -> None:
    """Weights as safetensors + student.json; written to a temporary folder first, then moved into place."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        weights = {name: tensor.detach().cpu().contiguous() for name, tensor in student.model.state_dict().items()}
        save_file(weights, tmp / WEIGHTS_FILE)
        (tmp / DESCRIPTION_FILE).write_text(json.dumps(student.description, indent=2))
        replace_folder(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_student(folder: str | os.PathLike) -> Student:
    """Rebuild a saved student exactly: architecture from student.json, then the saved weights (strict)."""
    folder = Path(folder)
    try:
        description = json.loads((folder / DESCRIPTION_FILE).read_text())
        student = REBUILDERS.get(description["structure"])(description)
        student.model.load_state_dict(load_file(folder / WEIGHTS_FILE), strict=True)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as error:
        reason = " ".join(f"{type(error).__name__}: {error}".split())[:300]
        raise UserError(f"cannot load a student from {folder} ({reason}); "
                        "re-create it with save_student (raybilevel prune)") from error
    student.model.requires_grad_(True).train()
    return student


def model_stats(model: nn.Module, sample_shape: tuple[int, ...] = (3, 16, 16), cross_dim: int = 32,
                seq_len: int = 12) -> dict[str, int]:
    """Parameter counts and the multiply-accumulates of one forward at batch 1.

    MACs count conv and linear layers plus attention's two matmuls (QK^T and AV); norms and activations
    are left out. Unstructured zeros are still counted as MACs (dense kernels do the work anyway).
    """
    macs = 0

    def count(module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> None:
        nonlocal macs
        macs += _macs(module, args, kwargs, output)

    hooks = [module.register_forward_hook(count, with_kwargs=True) for module in model.modules()]
    reference = next(model.parameters())
    like = dict(dtype=reference.dtype, device=reference.device)
    try:
        with torch.no_grad():
            model(torch.zeros(1, *sample_shape, **like), torch.tensor([10], device=reference.device),
                  encoder_hidden_states=torch.zeros(1, seq_len, cross_dim, **like))
    finally:
        for hook in hooks:
            hook.remove()
    return {"params": sum(p.numel() for p in model.parameters()),
            "nonzero_params": sum(int(torch.count_nonzero(p)) for p in model.parameters()),
            "macs": macs}


def _macs(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> int:
    from diffusers.models.attention_processor import Attention

    if isinstance(module, nn.Conv2d):
        return output.numel() * module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    if isinstance(module, Attention):
        hidden = args[0] if args else kwargs["hidden_states"]
        context = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        queries = hidden[0].numel() // module.query_dim  # (L, C) or (C, H, W) at batch 1
        keys = queries if context is None else context.shape[1]
        return 2 * queries * keys * module.inner_dim
    return 0


def _stats_inputs(config: dict[str, Any]) -> dict[str, Any]:
    size = config["sample_size"]
    height, width = (size, size) if isinstance(size, int) else size
    return {"sample_shape": (config["in_channels"], height, width), "cross_dim": config["cross_attention_dim"]}


def replace_folder(new: Path, folder: Path) -> None:
    """os.replace cannot overwrite a non-empty folder: move the old one aside, then delete it."""
    if not folder.exists():
        os.replace(new, folder)
        return
    old = new.with_name(new.name + ".old")
    os.replace(folder, old)
    os.replace(new, folder)
    shutil.rmtree(old)
