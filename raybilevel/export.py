"""A trained student as a Stable Diffusion pipeline folder that stock diffusers loads.

The folder is the teacher's pipeline (text encoder, tokenizer, VAE, scheduler, whatever else it holds)
with the student in unet/, so `StableDiffusionPipeline.from_pretrained(folder)` samples from the student.
Students whose UNet config describes their shapes (magnitude, with its masks applied; blocks; none; a
loaded diffusers UNet) export as plain diffusers UNets. Channel-pruned students change block-internal widths that no
UNet2DConditionModel config can express; their unet/ holds raybilevel's format and model_index.json
names `raybilevel.export.PrunedUNet2DConditionModel`, so stock diffusers loads them once the caller has
run `import raybilevel.export` (diffusers 0.42 never imports a module a folder names; without the import it
refuses in one line that says so; no code is ever read from the folder).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from diffusers import ModelMixin, UNet2DConditionModel

from raybilevel.pruning.base import Student, build_unet, load_student, replace_folder, save_student


# diffusers finds a component's loader by looking its base classes up in the component's own module, so
# this module must expose ModelMixin by that name.
__all__ = ["ModelMixin", "PrunedUNet2DConditionModel", "export_pipeline", "needs_raybilevel", "plain_unet"]
UNET_ENTRY = ["raybilevel.export", "PrunedUNet2DConditionModel"]


class PrunedUNet2DConditionModel(UNet2DConditionModel):
    """Loads a save_student folder (weights + student.json) for diffusers pipelines; it is the UNet itself."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> UNet2DConditionModel:
        folder = Path(pretrained_model_name_or_path) / kwargs.get("subfolder", "")
        model = load_student(folder).model.requires_grad_(False).eval()
        return model.to(kwargs["torch_dtype"]) if kwargs.get("torch_dtype") else model


def plain_unet(student: Student) -> UNet2DConditionModel | None:
    """The student as a plain UNet2DConditionModel of its config, or None when the config cannot hold it.

    Weights are read as the student's modules present them, so parametrized ones (magnitude's masks) come
    out with the mask applied. Built on the meta device and given the student's tensors: no second copy of an
    SD-sized UNet is allocated.
    """
    with torch.device("meta"):
        plain = build_unet(student.description["config"])
    tensors = {}
    for name, tensor in plain.state_dict().items():
        module_name, _, attribute = name.rpartition(".")
        try:
            value = getattr(student.model.get_submodule(module_name), attribute)
        except AttributeError:
            return None
        if not isinstance(value, torch.Tensor) or value.shape != tensor.shape:
            return None
        tensors[name] = value.detach()
    plain.load_state_dict(tensors, strict=True, assign=True)
    return plain


def export_pipeline(student: Student, teacher_pipeline: str | os.PathLike, output: str | os.PathLike) -> Path:
    """Write the pipeline folder atomically (a temporary folder beside `output`, then moved into place).

    The teacher's parts are copied, not linked: a user saving over the exported folder must not be able to
    write through into the teacher's files.
    """
    teacher_pipeline, output = Path(teacher_pipeline), Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        for entry in teacher_pipeline.iterdir():
            if entry.name == "unet" or entry.name.startswith("."):
                continue
            if entry.is_dir():
                shutil.copytree(entry, tmp / entry.name)
            else:
                shutil.copy2(entry, tmp / entry.name)
        index = json.loads((teacher_pipeline / "model_index.json").read_text())
        plain = plain_unet(student)
        if plain is not None:
            plain.save_pretrained(tmp / "unet", safe_serialization=True)
        else:
            save_student(student, tmp / "unet")
            index["unet"] = UNET_ENTRY
        # Components the teacher folder lacks (a hub download without the safety checker) load as None.
        for name, value in index.items():
            if isinstance(value, list) and len(value) == 2 and value[0] and not (tmp / name).exists():
                index[name] = [None, None]
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
        replace_folder(tmp, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return output


def needs_raybilevel(folder: str | os.PathLike) -> bool:
    """Whether an exported pipeline's UNet is raybilevel's (a channels student) rather than a plain diffusers one."""
    return json.loads((Path(folder) / "model_index.json").read_text())["unet"] == UNET_ENTRY
