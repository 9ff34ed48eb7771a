"""A student made elsewhere: a folder written by save_student, or a plain diffusers UNet folder (e.g. a
BK-SDM checkpoint saved with save_pretrained). Safetensors only: pickle checkpoints can run code on load."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from raybilevel.errors import UserError
from raybilevel.pruning.base import DESCRIPTION_FILE, PRUNERS, Student, describe, load_student

DIFFUSERS_FILES = ("config.json", "diffusion_pytorch_model.safetensors")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Config keys a student must share with its teacher for distillation to line up.
INTERFACE_KEYS = ("in_channels", "out_channels", "sample_size", "cross_attention_dim")


@PRUNERS.register("load")
def load(teacher: nn.Module, *, sparsity: float, seed: int, path: str) -> Student:
    """`sparsity` and `seed` are ignored: the student is used as saved."""
    if not path:
        raise UserError("pruning method 'load' needs the student folder: set pruning.path")
    folder = Path(path)
    if (folder / DESCRIPTION_FILE).is_file():
        student = load_student(folder)
    elif all((folder / name).is_file() for name in DIFFUSERS_FILES):
        student = _load_diffusers(folder, sparsity=sparsity, seed=seed)
    else:
        raise UserError(_not_found(folder))
    _check_fits(student, teacher, folder)
    student.description["source"] = str(folder)
    return student


def _load_diffusers(folder: Path, *, sparsity: float, seed: int) -> Student:
    from diffusers import UNet2DConditionModel

    model = UNet2DConditionModel.from_pretrained(folder, use_safetensors=True)
    return Student(model, describe("load", "diffusers", model, sparsity=sparsity, seed=seed))


def _not_found(folder: Path) -> str:
    pickles = [folder] if folder.suffix in PICKLE_SUFFIXES else sorted(
        file for file in folder.glob("*") if file.suffix in PICKLE_SUFFIXES)
    if pickles:
        return (f"{pickles[0]} is a pickle checkpoint, which raybilevel does not load (it can run code); "
                "convert it to safetensors (save_pretrained(..., safe_serialization=True) in a trusted session)")
    return (f"no student in {folder}: expected {DESCRIPTION_FILE} (from save_student) or "
            f"{' + '.join(DIFFUSERS_FILES)} (from save_pretrained); set pruning.path to such a folder")


def _check_fits(student: Student, teacher: nn.Module, folder: Path) -> None:
    for key in INTERFACE_KEYS:
        mine, theirs = _plain(student.description["config"][key]), _plain(teacher.config[key])
        if mine != theirs:
            raise UserError(f"the student in {folder} does not fit this teacher: {key} is {mine}, "
                            f"the teacher's is {theirs}; prune a student from this teacher")


def _plain(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value  # JSON turns tuples into lists
