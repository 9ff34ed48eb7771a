"""The diffusers world's CLIP judge (a frozen CLIPModel) and the CLIP arithmetic its metrics use.

CLIPScore-style similarity is 100·max(cos, 0) of an image and a text embedding; a concept decision asks
whether an image is closer to its concept prompt than to that prompt's anchor. sd_evaluator.py turns
these into metrics.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from raybilevel.errors import UserError
from raybilevel.worlds.datasets import first_line

JUDGE_ENV = "RAYBILEVEL_CLIP_JUDGE"
# OpenAI CLIP's pixel normalisation (ViT-B/32 is the paper's CLIP-score model).
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


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
