"""The diffusers world's evaluation: the paper's metrics that have local weights, from one set of samples.

Per call (a UNet, n samples, a seed):
- concept prompts (cycled to n): `concept_rate` (CLIP: the sample is closer to its prompt than to the
  prompt's anchor), `clip_concept_similarity` (the paper's "CLIP ↓"), and `cp_share` (the paper's "CP ↑": the
  share of concept prompts whose similarity fell against the teacher's samples from the same noise).
- reference captions (n rows, shuffled by the seed): `clip_score`, `clip_fd` (CLIP image features against the
  real images of the same rows) and, with Inception weights, `fid` and `kid` (from the same Inception
  features; unbiased at small sample counts, where FID is not). `quality` is `fid` when computed, else
  `clip_fd`; `quality_metric` says which.
- each prompt set (its first n prompts): `<set>/clip_similarity` to its own prompts and, with NudeNet, the
  nine exposed-label counts `<set>/<LABEL>`, `<set>/nudenet_total` and `<set>/nudenet_image_share`.
One generator seeded by `seed` is drawn in that order, so the teacher's concept samples (the CP baseline,
cached on disk because sweeps evaluate many students against the same teacher) share the student's noise.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import torch
from safetensors.torch import load_file, save_file

from raybilevel.errors import UserError
from raybilevel.metrics import KernelReference, bootstrap_interval, changed_prompt_share, frechet_distance
from raybilevel.worlds.base import ConceptData
from raybilevel.worlds.clip_judge import ClipJudge, clip_similarity, concept_decisions
from raybilevel.worlds.fid import InceptionFeatures
from raybilevel.worlds.nudenet import NudeNetJudge, count_detections
from raybilevel.worlds.prompt_sets import PromptSet

# (unet, prompts, generator, batch_size) -> one image in [-1, 1] per prompt, with the world's sampler settings
Draw = Callable[[torch.nn.Module, list[str], torch.Generator, int], torch.Tensor]


class ReferenceImages(Protocol):
    """Captions to sample and the real images of the same rows."""

    @property
    def captions(self) -> list[str]: ...

    def __len__(self) -> int: ...

    def pixels(self, indices: list[int]) -> torch.Tensor: ...


@dataclass
class SDEvaluator:
    """`baseline_key` names everything but (n, seed, batch size) that shapes the teacher's samples."""

    judge: ClipJudge
    draw: Draw
    concept: ConceptData
    reference: ReferenceImages
    teacher: torch.nn.Module | None = None  # None: no cp_share
    baseline_cache: Path | None = None
    baseline_key: str = ""
    inception: InceptionFeatures | None = None
    nudenet: NudeNetJudge | None = None
    prompt_sets: list[PromptSet] = field(default_factory=list)
    chunk: int = 64  # images held at once: 5k samples at 512 px would not fit in memory together

    def _samples(self, unet: torch.nn.Module, prompts: list[str], generator: torch.Generator,
                 batch_size: int) -> Iterator[torch.Tensor]:
        for start in range(0, len(prompts), self.chunk):
            yield self.draw(unet, prompts[start:start + self.chunk], generator, batch_size)

    def _real(self, rows: list[int]) -> Iterator[torch.Tensor]:
        for start in range(0, len(rows), self.chunk):
            yield self.reference.pixels(rows[start:start + self.chunk])

    def _features(self, chunks: Iterator[torch.Tensor],
                  with_inception: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """CLIP image embeddings and (when asked and weights are given) Inception features of every image."""
        clip, inception = [], []
        for images in chunks:
            clip.append(self.judge.embed_images(images))
            if with_inception and self.inception is not None:
                inception.append(self.inception(images))
        return torch.cat(clip), (torch.cat(inception) if inception else None)

    def _concept_similarities(self, unet: torch.nn.Module, prompts: list[str], texts: torch.Tensor,
                              generator: torch.Generator, batch_size: int) -> torch.Tensor:
        return clip_similarity(self._features(self._samples(unet, prompts, generator, batch_size))[0], texts)

    def _teacher_similarities(self, prompts: list[str], texts: torch.Tensor, n_samples: int, seed: int,
                              batch_size: int) -> torch.Tensor:
        """The teacher's per-sample concept similarities for these settings, from the cache when there."""
        key = json.dumps([self.baseline_key, n_samples, seed, batch_size])
        file = (self.baseline_cache / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.safetensors"
                if self.baseline_cache else None)
        if file is not None and file.is_file():
            return load_file(file)["similarities"]
        # The baseline is the fp32 teacher's, whatever precision training keeps it in (engine.teacher_dtype);
        # bf16 -> fp32 -> bf16 is exact, so the training teacher is unchanged afterwards.
        dtype = next(self.teacher.parameters()).dtype
        self.teacher.float()
        try:
            similarities = self._concept_similarities(self.teacher, prompts, texts,
                                                      torch.Generator().manual_seed(seed), batch_size)
        finally:
            self.teacher.to(dtype)
        if file is not None:
            file.parent.mkdir(parents=True, exist_ok=True)
            partial = file.with_suffix(".partial")
            save_file({"similarities": similarities.contiguous()}, partial)
            partial.replace(file)
        return similarities

    def judge_concept(self, images: torch.Tensor, prompts: list[str], *, seed: int, prefix: str) -> dict[str, Any]:
        """The CLIP concept decision (closer to the prompt than to its anchor) per image, its share and a
        95% bootstrap interval."""
        anchors = dict(zip(self.concept.prompts, self.concept.anchor_prompts))
        shows = concept_decisions(self.judge.embed_images(images), self.judge.embed_texts(prompts),
                                  self.judge.embed_texts([anchors[p] for p in prompts])).double()
        return {prefix: shows.mean().item(), f"{prefix}_n": len(shows),
                f"{prefix}_ci": bootstrap_interval(lambda rows: shows[rows].mean().item(), len(shows), seed=seed)}

    def _prompt_set(self, unet: torch.nn.Module, prompt_set: PromptSet, n_samples: int,
                    generator: torch.Generator, batch_size: int) -> dict[str, Any]:
        prompts = prompt_set.prompts[:n_samples]
        embeddings, detections = [], []
        for images in self._samples(unet, prompts, generator, batch_size):
            embeddings.append(self.judge.embed_images(images))
            if self.nudenet is not None:
                detections.extend(self.nudenet.detect(images))
        results: dict[str, Any] = {
            "n_prompts": len(prompts),
            "clip_similarity": clip_similarity(torch.cat(embeddings), self.judge.embed_texts(prompts)).mean().item()}
        if self.nudenet is not None:
            results |= count_detections(detections, self.nudenet.threshold)
        return {f"{prompt_set.name}/{key}": value for key, value in results.items()}

    def __call__(self, unet: torch.nn.Module, *, n_samples: int, seed: int, batch_size: int = 0) -> dict[str, Any]:
        if n_samples < 2:
            raise UserError("eval.n_samples must be >= 2: the Fréchet distances need a covariance")
        generator = torch.Generator().manual_seed(seed)
        picks = [i % len(self.concept.prompts) for i in range(n_samples)]
        prompts = [self.concept.prompts[i] for i in picks]
        anchors = [self.concept.anchor_prompts[i] for i in picks]
        order = torch.randperm(len(self.reference), generator=torch.Generator().manual_seed(seed)).tolist()
        rows = [order[i % len(order)] for i in range(n_samples)]
        captions = [self.reference.captions[i] for i in rows]

        concept_texts = self.judge.embed_texts(prompts)
        concept_images, _ = self._features(self._samples(unet, prompts, generator, batch_size))
        similarities = clip_similarity(concept_images, concept_texts)
        caption_clip, caption_inception = self._features(self._samples(unet, captions, generator, batch_size),
                                                         with_inception=True)
        real_clip, real_inception = self._features(self._real(rows), with_inception=True)
        clip_fd = frechet_distance(caption_clip, real_clip)
        results: dict[str, Any] = {
            "clip_fd": clip_fd,
            "concept_rate": concept_decisions(concept_images, concept_texts,
                                              self.judge.embed_texts(anchors)).float().mean().item(),
            "clip_concept_similarity": similarities.mean().item(),
            "clip_score": clip_similarity(caption_clip, self.judge.embed_texts(captions)).mean().item(),
            "n_samples": n_samples,
        }
        if caption_inception is not None:
            results["fid"] = frechet_distance(caption_inception, real_inception)
            # KID from the same Inception features: unbiased at any sample count (raw features, as published)
            results["kid"] = KernelReference(real_inception, standardize=False).kid(caption_inception)
        results["quality"], results["quality_metric"] = ((results["fid"], "fid") if "fid" in results
                                                         else (clip_fd, "clip_fd"))
        if self.teacher is not None:
            teacher = self._teacher_similarities(prompts, concept_texts, n_samples, seed, batch_size)
            results["cp_share"] = changed_prompt_share(similarities, teacher, torch.tensor(picks))
        for prompt_set in self.prompt_sets:
            results |= self._prompt_set(unet, prompt_set, n_samples, generator, batch_size)
        return results
