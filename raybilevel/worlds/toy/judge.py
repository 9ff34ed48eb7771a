"""The toy world's metrics: a trained judge reads every sample's shape, colour and style.

The judge calls noise almost anything (notes: "striped" for 25-80% of noise), so the concept rate is
counted among samples whose *other* attributes are judged right, and reported against its floor: the same
rate on prompts without the concept. The raw rate stands beside it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from raybilevel.metrics import frechet_distance
from raybilevel.sampling import sample
from raybilevel.text import PromptEncoder
from raybilevel.worlds.toy import data
from raybilevel.worlds.toy.models import Judge

DEFAULT_BATCH = 256  # 16x16 pixel samples: a few hundred at once fit any laptop


def load_judge(path: Path) -> Judge:
    judge = Judge()
    judge.load_state_dict(load_file(str(path)))
    return judge.eval().requires_grad_(False)


@torch.no_grad()
def read_attributes(judge: Judge, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
    """The judge's features and its label per attribute for every image."""
    features, logits = judge(images.float())
    return features, {k: v.argmax(1).numpy() for k, v in logits.items()}


def all_attributes_right(predicted: dict[str, np.ndarray], wanted: dict[str, np.ndarray]) -> np.ndarray:
    return np.all([predicted[a] == wanted[a] for a in data.ATTRIBUTES], axis=0)


def concept_rates(predicted: dict[str, np.ndarray], wanted: dict[str, np.ndarray], concept: str) -> dict[str, float]:
    """Rates over one group of samples. `predicted`/`wanted` map attribute -> label per sample.

    conditional: share judged to show the concept among samples whose other attributes are right.
    raw: share judged to show the concept among all samples. n_conditional: the conditional denominator.
    """
    attribute = data.attribute_of(concept)
    index = data.label_index(attribute, concept)
    others_right = np.ones_like(predicted[attribute], dtype=bool)
    for other in data.ATTRIBUTES:
        if other != attribute:
            others_right &= predicted[other] == wanted[other]
    shows = predicted[attribute] == index
    n_conditional = int(others_right.sum())
    return {
        "conditional": float(shows[others_right].mean()) if n_conditional else float("nan"),
        "raw": float(shows.mean()),
        "n_conditional": n_conditional,
    }


@dataclass
class PromptGroup:
    items: list[data.Item]
    template: str


class ToyEvaluator:
    """Samples concept, unrelated and paraphrase prompts and judges them (see module docstring)."""

    def __init__(self, judge: Judge, prompts: PromptEncoder, scheduler_config: dict, concept: str,
                 steps: int, guidance: float) -> None:
        self.judge, self.prompts, self.scheduler_config = judge, prompts, scheduler_config
        self.concept, self.steps, self.guidance = concept, steps, guidance
        self.groups = {
            "concept": [PromptGroup(data.items_with(concept), "canonical")],
            "unrelated": [PromptGroup(data.items_without(concept), "canonical")],
            "paraphrase": [PromptGroup(data.items_with(concept), t) for t in ("reordered", "synonym")],
        }

    def _draw(self, unet: torch.nn.Module, groups: list[PromptGroup], n: int, generator: torch.Generator,
              batch_size: int):
        pairs = [(item, g.template) for g in groups for item in g.items]
        chosen = [pairs[i % len(pairs)] for i in range(n)]
        captions = [data.caption(item, template) for item, template in chosen]
        images = sample(unet, self.scheduler_config, self.prompts(captions), self.prompts([""])[0],
                        steps=self.steps, guidance=self.guidance, generator=generator,
                        sample_shape=(3, data.RESOLUTION, data.RESOLUTION), batch_size=batch_size or DEFAULT_BATCH)
        wanted = {a: np.array([data.label_index(a, item.value(a)) for item, _ in chosen]) for a in data.ATTRIBUTES}
        return images, [item for item, _ in chosen], wanted

    def __call__(self, unet: torch.nn.Module, *, n_samples: int, seed: int, batch_size: int = 0) -> dict[str, Any]:
        generator = torch.Generator().manual_seed(seed)
        results: dict[str, Any] = {"n_samples_per_group": n_samples, "sampling_steps": self.steps,
                                   "guidance": self.guidance, "eval_seed": seed}
        # metric name prefix of each group: the unrelated group's concept rate is the floor
        prefixes = {"concept": "concept_rate", "unrelated": "concept_rate_floor", "paraphrase": "paraphrase_concept_rate"}
        for name, groups in self.groups.items():
            images, items, wanted = self._draw(unet, groups, n_samples, generator, batch_size)
            features, predicted = read_attributes(self.judge, images)
            rates = concept_rates(predicted, wanted, self.concept)
            results[prefixes[name]] = rates["conditional"]
            results[f"{prefixes[name]}_raw"] = rates["raw"]
            results[f"{prefixes[name]}_n"] = rates["n_conditional"]
            if name == "unrelated":
                results["attribute_accuracy"] = float(all_attributes_right(predicted, wanted).mean())
                real_features, _ = read_attributes(self.judge, torch.from_numpy(_render_items(items, seed + 1)))
                results["quality"] = frechet_distance(features, real_features)
        return results


def _render_items(items: list[data.Item], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([data.render(item, rng).transpose(2, 0, 1) * 2.0 - 1.0 for item in items])
