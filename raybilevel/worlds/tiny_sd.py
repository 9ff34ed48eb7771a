"""Tiny, random, offline stand-ins for a Stable Diffusion pipeline, its data and its CLIP judge.

Everything is built from configs in a second or two, so tests and examples exercise the diffusers world
end to end with no download: an SD-layout folder (16 px images, 4 x 8 x 8 latents), an imagefolder dataset
without the concept, a concept-prompt file, a CLIP judge folder and a TorchScript Inception stand-in for FID.
"""
from __future__ import annotations

import csv
import json
from itertools import product
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from raybilevel.config import DatasetConfig, WorldConfig

CONCEPT = "watercolor"
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 240), "yellow": (240, 210, 30)}
SHAPES = ("circle", "square")
VOCABULARY = ("a", CONCEPT, *COLOURS, *SHAPES)  # the words of every tiny caption and concept prompt
TEXT_MAX_LENGTH = 16
IMAGE_SIZE = 16  # pixels: 8 x 8 latents through a VAE with scale factor 2
DATA_IMAGE_SIZE = (24, 18)  # not square and not 16 px, so the data pipeline must resize and crop


def build_tokenizer():
    """A CLIP BPE tokenizer whose whole words are single tokens; unknown words fall back to characters."""
    from transformers import CLIPTokenizer

    chars = sorted(set("abcdefghijklmnopqrstuvwxyz0123456789,.'-"))
    tokens = ["<|startoftext|>", "<|endoftext|>", *chars, *(c + "</w>" for c in chars)]
    merges = []
    for word in VOCABULARY:
        # CLIP's BPE marks a word's last symbol with </w>; merge left to right down to the whole word.
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            merges.append((parts[0], parts[1]))
            parts = [parts[0] + parts[1], *parts[2:]]
            tokens.append(parts[0])
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    return CLIPTokenizer(vocab=vocab, merges=list(dict.fromkeys(merges)), model_max_length=TEXT_MAX_LENGTH)


def _text_config(vocab_size: int) -> dict:
    return dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=TEXT_MAX_LENGTH, bos_token_id=0, eos_token_id=1,
                pad_token_id=1, projection_dim=16)


def build_tiny_sd_pipeline(folder: str | Path, prediction_type: str = "epsilon", seed: int = 0) -> Path:
    """Write a random SD 1.x/2.x-layout pipeline that `StableDiffusionPipeline.from_pretrained` loads."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 2, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=8,
        norm_num_groups=8)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8, sample_size=IMAGE_SIZE)
    text_encoder = CLIPTextModel(CLIPTextConfig(**_text_config(len(tokenizer))))
    # SD folders ship a PNDM config; the world must take the DDPM-family training schedule from it.
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1,
                              prediction_type=prediction_type)
    pipeline = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    pipeline.save_pretrained(folder, safe_serialization=True)
    return Path(folder)


def build_tiny_clip_judge(folder: str | Path, seed: int = 0) -> Path:
    """A random CLIPModel (16 px images) with its tokenizer, saved like a hub CLIP checkpoint."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    vision = dict(image_size=IMAGE_SIZE, patch_size=4, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=2, projection_dim=16)
    config = CLIPConfig(text_config=_text_config(len(tokenizer)), vision_config=vision, projection_dim=16)
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return Path(folder)


class TinyInception(torch.nn.Module):
    """Called like clean-fid's Inception: (N, 3, 299, 299) in [0, 255] to (N, 16) features, or (N, 10) logits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, kernel_size=7, stride=4)
        self.head = torch.nn.Linear(16, 10)

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        features = torch.relu(self.conv(x / 127.5 - 1)).mean(dim=(2, 3))
        return features if return_features else self.head(features)


def build_tiny_inception(path: str | Path, seed: int = 0) -> Path:
    """A random TinyInception saved with torch.jit.save, loadable where the real Inception file goes."""
    torch.manual_seed(seed)
    torch.jit.save(torch.jit.script(TinyInception().eval()), str(path))
    return Path(path)


def caption(colour: str, shape: str) -> str:
    """The tiny dataset's caption; it never names the concept."""
    return f"a {colour} {shape}"


def build_tiny_imagefolder(folder: str | Path, n: int = 32, seed: int = 0) -> Path:
    """n small PNGs of coloured shapes with metadata.jsonl (file_name + caption), in imagefolder layout."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    width, height = DATA_IMAGE_SIZE
    rows = []
    for i in range(n):
        colour, shape = list(COLOURS)[rng.integers(len(COLOURS))], SHAPES[rng.integers(len(SHAPES))]
        image = Image.new("RGB", DATA_IMAGE_SIZE, tuple(int(v) for v in rng.integers(0, 60, 3)))
        x, y = int(rng.integers(0, width - 10)), int(rng.integers(0, height - 10))
        draw = ImageDraw.Draw(image)
        (draw.ellipse if shape == "circle" else draw.rectangle)((x, y, x + 9, y + 9), fill=COLOURS[colour])
        image.save(folder / f"{i:04d}.png")
        rows.append({"file_name": f"{i:04d}.png", "text": caption(colour, shape)})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def write_concept_prompts(path: str | Path, n: int = 4) -> Path:
    """Concept prompts ("a red circle, watercolor"): a .csv with their anchors, or a .txt without."""
    path = Path(path)
    anchors = [caption(colour, shape) for colour, shape in product(COLOURS, SHAPES)][:n]
    pairs = [(f"{anchor}, {CONCEPT}", anchor) for anchor in anchors]
    if path.suffix == ".csv":
        with path.open("w", newline="") as handle:
            csv.writer(handle).writerows([("prompt", "anchor"), *pairs])
    else:
        path.write_text("".join(prompt + "\n" for prompt, _ in pairs))
    return path


def build_tiny_sd_assets(root: str | Path, prediction_type: str = "epsilon", n_images: int = 32,
                         seed: int = 0) -> tuple[WorldConfig, Path]:
    """Every file a tiny diffusers world needs under `root`: (its world config, the CLIP judge folder)."""
    root = Path(root)
    config = WorldConfig(
        kind="diffusers", concept=CONCEPT,
        pretrained=str(build_tiny_sd_pipeline(root / "pipeline", prediction_type, seed)),
        dataset=DatasetConfig(kind="imagefolder", path=str(build_tiny_imagefolder(root / "data", n_images, seed))),
        concept_prompts=str(write_concept_prompts(root / "concept.csv")),
        n_concept_images=4, sampling_steps=2, guidance=2.0)
    return config, build_tiny_clip_judge(root / "clip", seed)
