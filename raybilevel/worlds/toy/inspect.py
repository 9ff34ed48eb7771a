"""`raybilevel toy inspect`: a picture of the world's data and the teacher's metrics, to check the world."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from raybilevel.config import EvalConfig, WorldConfig
from raybilevel.evaluate import evaluate, image_grid
from raybilevel.worlds.toy import data
from raybilevel.worlds.toy.world import build_toy_world


def _save_png(image: torch.Tensor, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.imsave(path, image.permute(1, 2, 0).numpy())


def inspect_world(output: Path, n_samples: int = 256, concepts: tuple[str, ...] = ("striped", "cross")) -> dict[str, Any]:
    output.mkdir(parents=True, exist_ok=True)
    real = data.generate(48, seed=0, items=data.all_items(), templates=("canonical",))
    _save_png(image_grid(torch.from_numpy(real.images), columns=12), output / "data.png")
    report: dict[str, Any] = {}
    for concept in concepts:
        world = build_toy_world(WorldConfig(concept=concept, toy_images=64, n_concept_images=16), seed=0)
        report[concept] = evaluate(world, world.teacher, EvalConfig(n_samples=n_samples))
        _save_png(image_grid(world.concept.images[:16]), output / f"teacher_{concept}.png")
    return report
