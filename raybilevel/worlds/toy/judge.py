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

from raybilevel.metrics import KernelReference, bootstrap_interval, frechet_distance, kid_from_parts
from raybilevel.sampling import sample
from raybilevel.text import PromptEncoder
from raybilevel.worlds.toy import data
from raybilevel.worlds.toy.models import Judge

DEFAULT_BATCH = 256  # 16x16 pixel samples: a few hundred at once fit any laptop
REFERENCE_SIZE, REFERENCE_SEED = 4096, 4242  # real renders that every model's KID is measured against
# `quality`: which of the judge-feature metrics the sweeps minimise (chosen by benchmarks/quality_noise.py)
QUALITY_METRIC = "attribute_nll"
BOOTSTRAP_REPS = 1000


def load_judge(path: Path) -> Judge:
    judge = Judge()
    judge.load_state_dict(load_file(str(path)))
    return judge.eval().requires_grad_(False)


@torch.no_grad()
def read_attributes(judge: Judge, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
    """The judge's features and its label per attribute for every image."""
    features, logits = judge(images.float())
    return features, {k: v.argmax(1).numpy() for k, v in logits.items()}


@torch.no_grad()
def attribute_nll(judge: Judge, images: torch.Tensor, wanted: dict[str, np.ndarray]) -> torch.Tensor:
    """Per image: -sum over attributes of the judge's log-probability of the wanted label (nats)."""
    _, logits = judge(images.float())
    return -sum(torch.log_softmax(logits[a], 1).gather(1, torch.from_numpy(wanted[a]).long().view(-1, 1)).view(-1)
                for a in data.ATTRIBUTES).double()


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
        self._reference: KernelReference | None = None
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
            results |= rate_metrics(prefixes[name], predicted, wanted, self.concept, seed)
            if name == "unrelated":
                results |= self._quality(images, features, predicted, wanted, items, seed)
        results["quality_metric"] = QUALITY_METRIC
        results["quality"], results["quality_ci"] = results[QUALITY_METRIC], results[f"{QUALITY_METRIC}_ci"]
        return results

    def judge_concept(self, images: torch.Tensor, prompts: list[str], *, seed: int, prefix: str) -> dict[str, Any]:
        """Concept prompts are canonical captions of concept items: judged as the concept group is."""
        by_caption = {data.caption(item): item for item in data.items_with(self.concept)}
        items = [by_caption[p] for p in prompts]
        wanted = {a: np.array([data.label_index(a, item.value(a)) for item in items]) for a in data.ATTRIBUTES}
        _, predicted = read_attributes(self.judge, images)
        return rate_metrics(prefix, predicted, wanted, self.concept, seed)

    def reference(self) -> KernelReference:
        """Judge features of REFERENCE_SIZE real renders of the unrelated prompts, built once per world."""
        if self._reference is None:
            items = data.items_without(self.concept)
            chosen = [items[i % len(items)] for i in range(REFERENCE_SIZE)]
            features, _ = read_attributes(self.judge, torch.from_numpy(_render_items(chosen, REFERENCE_SEED)))
            self._reference = KernelReference(features)
        return self._reference

    def _quality(self, images: torch.Tensor, features: torch.Tensor, predicted: dict[str, np.ndarray],
                 wanted: dict[str, np.ndarray], items: list[data.Item], seed: int) -> dict[str, Any]:
        """Quality of the unrelated-prompt samples: KID against the large reference (unbiased at any
        sample count), the judge's attribute NLL, attribute accuracy, each with a 95% bootstrap interval,
        and the Frechet distance to as many real renders (biased at small counts; kept as secondary)."""
        n, reference = len(images), self.reference()
        kxx, kxy = reference.parts(features)
        nll = attribute_nll(self.judge, images, wanted)
        right = torch.from_numpy(all_attributes_right(predicted, wanted)).double()
        real_features, _ = read_attributes(self.judge, torch.from_numpy(_render_items(items, seed + 1)))
        interval = lambda statistic: bootstrap_interval(statistic, n, reps=BOOTSTRAP_REPS, seed=seed)
        return {
            "kid": kid_from_parts(kxx, kxy, reference.mean_kyy),
            "kid_ci": interval(lambda rows: kid_from_parts(kxx, kxy, reference.mean_kyy, rows)),
            "attribute_nll": float(nll.mean()), "attribute_nll_ci": interval(lambda rows: float(nll[rows].mean())),
            "attribute_accuracy": float(right.mean()),
            "attribute_accuracy_ci": interval(lambda rows: float(right[rows].mean())),
            "fd": frechet_distance(features, real_features),
            "kid_reference_size": REFERENCE_SIZE,
        }


def rate_metrics(prefix: str, predicted: dict[str, np.ndarray], wanted: dict[str, np.ndarray], concept: str,
                 seed: int) -> dict[str, Any]:
    """A group's concept rates and the conditional rate's 95% bootstrap interval. When no sample has its
    other attributes right the conditional rate falls back to the raw one (marked in `_source`), so the
    worst models still give the sampler a value instead of a failed trial."""
    rates = concept_rates(predicted, wanted, concept)
    n = len(next(iter(wanted.values())))

    def conditional(rows: torch.Tensor) -> float:
        picked = {k: v[rows.numpy()] for k, v in predicted.items()}
        return concept_rates(picked, {k: v[rows.numpy()] for k, v in wanted.items()}, concept)["conditional"]

    source = "conditional" if rates["n_conditional"] else "raw"
    return {prefix: rates[source], f"{prefix}_source": source,
            f"{prefix}_ci": bootstrap_interval(conditional, n, reps=BOOTSTRAP_REPS, seed=seed) if source == "conditional"
            else [float("nan"), float("nan")],
            f"{prefix}_raw": rates["raw"], f"{prefix}_n": rates["n_conditional"]}


def _render_items(items: list[data.Item], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([data.render(item, rng).transpose(2, 0, 1) * 2.0 - 1.0 for item in items])
