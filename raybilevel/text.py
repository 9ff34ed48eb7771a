"""Prompt encoding through a frozen text encoder, cached per prompt string.

The text encoder never trains here, so a prompt's embedding is a constant: caching it removes the text
encoder from the step cost (the toy world has ~150 distinct captions; SD runs cache what repeats).
"""
from __future__ import annotations

import torch


class PromptEncoder:
    def __init__(self, tokenizer, text_encoder, max_cache: int = 100_000) -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder.eval().requires_grad_(False)
        self.max_cache = max_cache
        self._cache: dict[str, torch.Tensor] = {}

    @property
    def device(self) -> torch.device:
        return next(self.text_encoder.parameters()).device

    @torch.no_grad()
    def _encode_uncached(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(self.device)
        return self.text_encoder(ids)[0]

    def __call__(self, prompts: list[str]) -> torch.Tensor:
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if missing:
            encoded = self._encode_uncached(missing)
            if len(self._cache) + len(missing) <= self.max_cache:
                self._cache.update(zip(missing, encoded))
            else:
                lookup = dict(zip(missing, encoded))
                return torch.stack([self._cache.get(p, lookup.get(p)) for p in prompts])
        return torch.stack([self._cache[p] for p in prompts])
