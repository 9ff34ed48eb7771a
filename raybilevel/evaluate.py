"""Evaluation of a student with its world's judges -> the metrics that land in metrics.json."""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from raybilevel.config import EvalConfig
from raybilevel.sampling import sample
from raybilevel.worlds.base import World


def eval_settings(world: World, cfg: EvalConfig) -> dict[str, Any]:
    """What decides a result besides the model: written into every result so numbers can be reproduced."""
    settings = {"sampler": "DDIM", **world.sampling, "batch_size": cfg.batch_size or world.sampling["batch_size"],
                "seed": cfg.seed, "n_samples": cfg.n_samples}
    return settings | ({"attack": dataclasses.asdict(cfg.attack)} if cfg.attack.enabled else {})


def evaluate(world: World, unet: torch.nn.Module, cfg: EvalConfig) -> dict[str, Any]:
    unet = unet.float().eval()
    metrics = world.evaluator(unet, n_samples=cfg.n_samples, seed=cfg.seed, batch_size=cfg.batch_size)
    missing = {"quality", "concept_rate"} - set(metrics)
    if missing:
        raise RuntimeError(f"the {world.name} evaluator did not report {sorted(missing)}")
    if cfg.attack.enabled:
        from raybilevel.attack import attack_metrics

        metrics |= attack_metrics(world, unet, cfg.attack, n_samples=cfg.n_samples, seed=cfg.seed,
                                  batch_size=cfg.batch_size)
    return metrics | {"eval_settings": eval_settings(world, cfg)}


def image_grid(images: torch.Tensor, columns: int = 8) -> torch.Tensor:
    """(N, 3, H, W) in [-1, 1] -> one (3, rows*H, columns*W) image in [0, 1], for TensorBoard."""
    n, c, h, w = images.shape
    rows = -(-n // columns)
    grid = torch.ones(c, rows * h, columns * w)
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        grid[:, r * h:(r + 1) * h, col * w:(col + 1) * w] = (image.float() + 1) / 2
    return grid.clamp(0, 1)


@torch.no_grad()
def sample_grid(world: World, unet: torch.nn.Module, seed: int) -> torch.Tensor:
    """8 concept prompts then 8 unrelated ones, from noise seeded by `seed`: the grid runs log, so that a
    student's grid and its teacher's (references.py) show the same prompts from the same noise."""
    concept, keep = world.concept.prompts[:8], world.concept.preservation_prompts[:8]
    images = sample(unet, world.scheduler_config, world.prompts(concept + keep), world.prompts([""])[0],
                    steps=world.sampling["steps"], guidance=world.sampling["guidance"],
                    generator=torch.Generator().manual_seed(seed), sample_shape=world.sample_shape, vae=world.vae)
    return image_grid(images)
