"""Worlds: where the teacher, the data, the concept and the judges come from."""
from __future__ import annotations

from pathlib import Path

import torch

from raybilevel.config import WorldConfig
from raybilevel.worlds.base import ConceptData, Evaluator, FinetuneData, World, file_digest


def check_world(cfg: WorldConfig) -> None:
    """What the world would refuse when built, checked without building it (for --dry-run)."""
    if cfg.kind == "toy":
        from raybilevel.errors import UserError
        from raybilevel.worlds.toy import data

        try:
            data.attribute_of(cfg.concept)
        except ValueError as error:
            raise UserError(f"world.concept: {error}") from None
        from raybilevel.worlds.toy.world import teacher_dir

        teacher_dir(cfg)


def frozen_identity(cfg: WorldConfig) -> list[str]:
    """What names the world's frozen models in a cache key: the toy teacher's and judge's weights by content
    (they can be rebuilt in place), a pipeline and a CLIP judge by resolved path (too large to hash)."""
    if cfg.kind == "toy":
        from raybilevel.worlds.toy.world import WEIGHTS, assets_dir, teacher_dir

        return [file_digest(teacher_dir(cfg) / "unet" / WEIGHTS), file_digest(assets_dir() / "judge.safetensors")]
    return [str(Path(path).resolve()) if Path(path).exists() else path for path in (cfg.pretrained, cfg.clip_judge)]


def build_world(cfg: WorldConfig, seed: int, device: str | torch.device = "cpu") -> World:
    """The world of `cfg` with its frozen teacher and text encoder on `device`."""
    if cfg.kind == "toy":
        from raybilevel.worlds.toy.world import build_toy_world

        return build_toy_world(cfg, seed, device)
    from raybilevel.worlds.diffusers_world import build_diffusers_world

    return build_diffusers_world(cfg, seed, device, judge_path=cfg.clip_judge or None)


__all__ = ["ConceptData", "Evaluator", "FinetuneData", "World", "build_world", "check_world", "frozen_identity"]
