"""What every world provides: the frozen teacher stack, the fine-tuning data, the concept, the judges.

Two kinds implement it: the embedded toy world (worlds/toy/) and Stable-Diffusion-layout pipelines with
real datasets (worlds/diffusers_world.py). Everything above this layer sees only this interface.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from safetensors.torch import load_file, save_file

from raybilevel.text import PromptEncoder


class FinetuneData(Protocol):
    """Map-style data in the UNet's input space (pixels for the toy world, VAE latents for SD)."""

    def __len__(self) -> int: ...

    def get_batch(self, indices: list[int]) -> tuple[torch.Tensor, list[str]]:
        """(x0 of shape (B, C, H, W), captions) for the given dataset indices."""
        ...


def cache_dir() -> Path:
    """Where worlds keep what is slow to rebuild and shared by runs (teacher samples, their scores)."""
    return Path(os.environ.get("RAYBILEVEL_CACHE") or Path.home() / ".cache" / "raybilevel")


def cache_key(identity: Any) -> str:
    """A short name for everything (JSON-serialisable) that shapes a cached result."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]


def file_digest(path: Path) -> str:
    """The content hash of a weights file: a teacher rebuilt at the same path must not reuse old samples."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_tensors_atomic(file: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Workers building the same world race for a cache file: each writes its own copy, then renames it."""
    file.parent.mkdir(parents=True, exist_ok=True)
    partial = file.with_suffix(f".{os.getpid()}.partial")
    save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, partial)
    os.replace(partial, file)


def cached_tensor(file: Path, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """`compute()` on the CPU, read from `file` when an earlier run (or another trial) already wrote it."""
    if file.is_file():
        return load_file(file)["tensor"]
    tensor = compute().cpu()
    save_tensors_atomic(file, {"tensor": tensor})
    return tensor


@dataclass
class ConceptData:
    """What the upper level sees: prompts of the concept, paired anchor prompts, optional clean inputs.

    `images` (N, C, H, W) in the UNet's input space are noised to give x_t for ESD / ablation; they come
    from teacher samples of the concept prompts (cached) or from a folder of concept images.
    """

    name: str
    prompts: list[str]
    anchor_prompts: list[str]
    images: torch.Tensor | None = None
    image_prompts: list[str] = field(default_factory=list)  # the prompt each row of `images` shows
    preservation_prompts: list[str] = field(default_factory=list)


class Evaluator(Protocol):
    def __call__(self, unet: torch.nn.Module, *, n_samples: int, seed: int, batch_size: int = 0) -> dict[str, Any]:
        """Sample from `unet` (`batch_size` images at once, 0 = the world's default) and return metrics;
        they must hold at least `quality` and `concept_rate`."""
        ...

    def judge_concept(self, images: torch.Tensor, prompts: list[str], *, seed: int, prefix: str) -> dict[str, Any]:
        """How often images drawn for concept `prompts` (one per image) show the concept: `prefix`, its 95%
        interval `prefix_ci` and what the world's rates carry beside them (the attack reads this)."""
        ...


@dataclass
class World:
    name: str
    teacher: torch.nn.Module  # frozen UNet2DConditionModel
    prompts: PromptEncoder
    scheduler_config: dict  # the training noise scheduler's config (DDPM-family)
    sample_shape: tuple[int, int, int]  # (C, H, W) the UNet denoises
    finetune: FinetuneData
    concept: ConceptData
    evaluator: Evaluator
    vae: torch.nn.Module | None = None
    pipeline_folder: Path | None = None  # the diffusers pipeline the teacher came from; students export beside it
    sampling: dict[str, Any] = field(default_factory=dict)  # steps, guidance: the world's sampler defaults
    info: dict[str, Any] = field(default_factory=dict)  # provenance written into run directories
    seconds: dict[str, float] = field(default_factory=dict)  # build time by phase, e.g. concept_images
    vocabulary: list[str] = field(default_factory=list)  # words a prompt attack may choose from

    @property
    def prediction_type(self) -> str:
        return self.scheduler_config.get("prediction_type", "epsilon")
