"""The diffusers world's judge: a frozen CLIP model scoring a UNet's samples.

Metrics, every one from CLIP features (none from Inception):
- concept_rate: share of concept-prompt samples closer (cosine) to their concept prompt than to its anchor.
- clip_concept_similarity: mean CLIPScore, 100·max(cos, 0), of concept samples and their prompts (the
  paper's "CLIP ↓").
- clip_score: mean CLIPScore of samples of dataset captions and those captions (the paper's COCO CLIP ↑).
- clip_fd, also reported as `quality`: Fréchet distance between CLIP image features of those samples and
  of the real images of the same captions. It is NOT Inception FID and not comparable to published FIDs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from raybilevel.errors import UserError
from raybilevel.metrics import frechet_distance
from raybilevel.worlds.base import ConceptData
from raybilevel.worlds.datasets import LatentDataset, first_line

JUDGE_ENV = "RAYBILEVEL_CLIP_JUDGE"
# OpenAI CLIP's pixel normalisation (ViT-B/32 is the paper's CLIP-score model).
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
# (unet, prompts, generator) -> one image in [-1, 1] per prompt, drawn with the world's sampler settings.
Draw = Callable[[torch.nn.Module, list[str], torch.Generator], torch.Tensor]


def concept_decisions(images: torch.Tensor, concepts: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Per row: is the image embedding closer (cosine) to its concept prompt's than to its anchor's?"""
    return F.cosine_similarity(images, concepts, dim=-1) > F.cosine_similarity(images, anchors, dim=-1)


def clip_similarity(images: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
    """CLIPScore's per-pair value: 100 * cos, clamped at 0 (torchmetrics and the CLIPScore paper do the same)."""
    return 100 * F.cosine_similarity(images, texts, dim=-1).clamp(min=0)


class ClipJudge:
    """A CLIPModel + tokenizer folder (or hub id) with safetensors weights, frozen."""

    def __init__(self, path: str | None = None, device: str | torch.device = "cpu", batch_size: int = 64) -> None:
        from transformers import AutoTokenizer, CLIPModel

        self.path = path or os.environ.get(JUDGE_ENV, "")
        if not self.path:
            raise UserError(f"the diffusers world needs a CLIP judge for evaluation; set {JUDGE_ENV} to a local "
                            "CLIP folder or hub id, e.g. openai/clip-vit-base-patch32")
        try:
            self.model = CLIPModel.from_pretrained(self.path, use_safetensors=True).to(device).eval()
            self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        except (OSError, ValueError) as error:
            raise UserError(f"cannot load the CLIP judge from {self.path!r} ({first_line(error)}); "
                            f"set {JUDGE_ENV} to a CLIP folder or hub id with safetensors weights") from None
        self.model.requires_grad_(False)
        self.device, self.batch_size = torch.device(device), batch_size
        self.mean, self.std = (torch.tensor(v, device=device).view(1, 3, 1, 1) for v in (CLIP_MEAN, CLIP_STD))

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """Projected CLIP image features (not normalised) of images in [-1, 1]; square images assumed."""
        size = self.model.config.vision_config.image_size
        out = []
        for chunk in images.split(self.batch_size):
            pixels = (chunk.to(self.device, torch.float32) + 1) / 2
            pixels = F.interpolate(pixels, size=(size, size), mode="bicubic", antialias=True).clamp(0, 1)
            pixels = (pixels - self.mean) / self.std
            out.append(self.model.get_image_features(pixel_values=pixels).pooler_output.float().cpu())
        return torch.cat(out)

    @torch.no_grad()
    def embed_texts(self, prompts: list[str]) -> torch.Tensor:
        out = []
        for start in range(0, len(prompts), self.batch_size):
            tokens = self.tokenizer(prompts[start:start + self.batch_size], padding=True, truncation=True,
                                    return_tensors="pt").to(self.device)
            out.append(self.model.get_text_features(**tokens).pooler_output.float().cpu())
        return torch.cat(out)


@dataclass
class ClipEvaluator:
    """Samples n concept prompts (cycled) and n dataset captions (shuffled by `seed`) and judges them."""

    judge: ClipJudge
    draw: Draw
    concept: ConceptData
    data: LatentDataset
    chunk: int = 64  # images held at once: 5k samples at 512 px would not fit in memory together

    def _embed_samples(self, unet: torch.nn.Module, prompts: list[str], generator: torch.Generator) -> torch.Tensor:
        return torch.cat([self.judge.embed_images(self.draw(unet, prompts[start:start + self.chunk], generator))
                          for start in range(0, len(prompts), self.chunk)])

    def _embed_real(self, rows: list[int]) -> torch.Tensor:
        return torch.cat([self.judge.embed_images(self.data.pixels(rows[start:start + self.chunk]))
                          for start in range(0, len(rows), self.chunk)])

    def __call__(self, unet: torch.nn.Module, *, n_samples: int, seed: int) -> dict[str, Any]:
        if n_samples < 2:
            raise UserError("eval.n_samples must be >= 2: the CLIP Fréchet distance needs a covariance")
        generator = torch.Generator().manual_seed(seed)
        picks = [i % len(self.concept.prompts) for i in range(n_samples)]
        prompts = [self.concept.prompts[i] for i in picks]
        anchors = [self.concept.anchor_prompts[i] for i in picks]
        order = torch.randperm(len(self.data), generator=generator).tolist()
        rows = [order[i % len(order)] for i in range(n_samples)]
        captions = [self.data.captions[i] for i in rows]

        concept_images = self._embed_samples(unet, prompts, generator)
        caption_images = self._embed_samples(unet, captions, generator)
        concept_texts = self.judge.embed_texts(prompts)
        fd = frechet_distance(caption_images, self._embed_real(rows))
        decisions = concept_decisions(concept_images, concept_texts, self.judge.embed_texts(anchors))
        return {
            "quality": fd,
            "clip_fd": fd,
            "concept_rate": decisions.float().mean().item(),
            "clip_concept_similarity": clip_similarity(concept_images, concept_texts).mean().item(),
            "clip_score": clip_similarity(caption_images, self.judge.embed_texts(captions)).mean().item(),
            "n_samples": n_samples,
        }
