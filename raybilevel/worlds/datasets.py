"""Fine-tuning data for diffusers worlds: image-caption sources, encoded to VAE latents.

Sources (`world.dataset.kind`):
- imagefolder: `path/metadata.jsonl` (or `path/<split>/metadata.jsonl`), one JSON row per image with
  `file_name` (relative to the metadata file) and the caption column. Read directly: offline and exact.
- hf: a dataset saved with `save_to_disk` (read with `load_from_disk`), else a `load_dataset` name;
  rows need the image column (PIL images) and the caption column.
- coco: COCO 2017 layout, `path/<captions_file>` and images under `path/<split>2017/`. One row per image,
  with its first caption (lowest annotation id), so each image is encoded once and rows are stable.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from raybilevel.config import DatasetConfig
from raybilevel.errors import ConfigError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def first_line(error: Exception) -> str:
    """The gist of a library error, for one-line user errors."""
    return (str(error).splitlines() or [type(error).__name__])[0]


@dataclass
class ImageCaptions:
    """Rows of (image, caption); images load lazily, so a large set costs nothing until encoded."""

    captions: list[str]
    load_image: Callable[[int], Image.Image]

    def __len__(self) -> int:
        return len(self.captions)


def _require_columns(columns: Iterable[str], needed: dict[str, str], where: str) -> None:
    """`needed` maps a column name to the config field that chose it."""
    columns = sorted(columns)
    for column, field in needed.items():
        if column not in columns:
            raise ConfigError(f"world.dataset.{field}",
                              f"no column {column!r} in {where}; its columns are: {', '.join(columns) or 'none'}")


def files_source(files: list[Path], captions: list[str]) -> ImageCaptions:
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise ConfigError("world.dataset.path", f"{len(missing)} image files are missing, e.g. {missing[0]}")
    return ImageCaptions(captions, lambda i: Image.open(files[i]))


def _imagefolder(cfg: DatasetConfig) -> ImageCaptions:
    root = Path(cfg.path)
    metadata = next((m for m in (root / "metadata.jsonl", root / cfg.split / "metadata.jsonl") if m.is_file()), None)
    if metadata is None:
        raise ConfigError("world.dataset.path", f"no metadata.jsonl in {root} or {root / cfg.split}; "
                          f"write one JSON row per image with 'file_name' and {cfg.caption_column!r}")
    rows = [json.loads(line) for line in metadata.read_text().splitlines() if line.strip()]
    if rows:
        _require_columns(set.intersection(*(set(row) for row in rows)),
                         {"file_name": "path", cfg.caption_column: "caption_column"}, str(metadata))
    return files_source([metadata.parent / row["file_name"] for row in rows],
                        [str(row[cfg.caption_column]) for row in rows])


def _hf(cfg: DatasetConfig) -> ImageCaptions:
    import datasets

    try:
        data = (datasets.load_from_disk(cfg.path) if Path(cfg.path).exists()
                else datasets.load_dataset(cfg.path, split=cfg.split))
    except (OSError, ValueError) as error:
        raise ConfigError("world.dataset.path", f"cannot load dataset {cfg.path!r} ({first_line(error)}); "
                          "give a save_to_disk folder or a reachable datasets name") from None
    if isinstance(data, datasets.DatasetDict):
        if cfg.split not in data:
            raise ConfigError("world.dataset.split", f"no split {cfg.split!r} in {cfg.path}; splits: {', '.join(data)}")
        data = data[cfg.split]
    _require_columns(data.column_names, {cfg.image_column: "image_column", cfg.caption_column: "caption_column"},
                     cfg.path)
    return ImageCaptions([str(c) for c in data[cfg.caption_column]], lambda i: data[i][cfg.image_column])


def _coco(cfg: DatasetConfig) -> ImageCaptions:
    root = Path(cfg.path)
    captions_file, image_dir = root / cfg.captions_file, root / f"{cfg.split}2017"
    if not captions_file.is_file():
        raise ConfigError("world.dataset.captions_file", f"no COCO captions json at {captions_file}")
    data = json.loads(captions_file.read_text())
    first: dict[int, str] = {}
    for annotation in sorted(data["annotations"], key=lambda a: a["id"]):
        first.setdefault(annotation["image_id"], annotation["caption"].strip())
    images = sorted((image for image in data["images"] if image["id"] in first), key=lambda image: image["id"])
    return files_source([image_dir / image["file_name"] for image in images], [first[image["id"]] for image in images])


SOURCES: dict[str, Callable[[DatasetConfig], ImageCaptions]] = {"imagefolder": _imagefolder, "hf": _hf, "coco": _coco}


def load_source(cfg: DatasetConfig) -> ImageCaptions:
    source = SOURCES[cfg.kind](cfg)
    if cfg.max_samples:
        source = ImageCaptions(source.captions[:cfg.max_samples], source.load_image)
    if not source.captions:
        raise ConfigError("world.dataset.path", f"the {cfg.kind} dataset at {cfg.path} has no rows; point it at data")
    return source


def image_files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)


def to_pixels(image: Image.Image, resolution: int) -> torch.Tensor:
    """SD's training transform: short side to `resolution`, centre square crop, (3, H, W) in [-1, 1]."""
    image = image.convert("RGB")
    scale = resolution / min(image.size)
    width, height = (max(resolution, round(side * scale)) for side in image.size)
    image = image.resize((width, height), Image.Resampling.BICUBIC)
    left, top = (width - resolution) // 2, (height - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    return torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1.0


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] as the 8-bit values a saved PNG holds: round((x + 1) * 127.5), clamped; on the CPU."""
    return ((pixels.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def encode_pixels(vae: torch.nn.Module, pixels: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """Latents on the CPU as the UNet sees them: the posterior mean (deterministic) times scaling_factor."""
    parameter = next(vae.parameters())
    means = [vae.encode(chunk.to(parameter.device, parameter.dtype)).latent_dist.mean
             for chunk in pixels.split(batch_size)]
    return (torch.cat(means) * vae.config.scaling_factor).float().cpu()


class LatentDataset:
    """FinetuneData over an image-caption source; x0 are VAE latents at `resolution` pixels."""

    def __init__(self, source: ImageCaptions, vae: torch.nn.Module, resolution: int, cache_latents: bool,
                 batch_size: int = 64) -> None:
        self.source, self.vae, self.resolution, self.batch_size = source, vae, resolution, batch_size
        self._latents = self._encode_all() if cache_latents else None

    def __len__(self) -> int:
        return len(self.source)

    @property
    def captions(self) -> list[str]:
        return self.source.captions

    def pixels(self, indices: list[int]) -> torch.Tensor:
        return torch.stack([to_pixels(self.source.load_image(i), self.resolution) for i in indices])

    def _encode_all(self) -> torch.Tensor:
        batches = torch.arange(len(self)).split(self.batch_size)
        return torch.cat([encode_pixels(self.vae, self.pixels(batch.tolist()))
                          for batch in tqdm(batches, desc="encoding latents", unit="batch")])

    def get_batch(self, indices: list[int]) -> tuple[torch.Tensor, list[str]]:
        x0 = self._latents[indices] if self._latents is not None else encode_pixels(self.vae, self.pixels(indices))
        return x0, [self.source.captions[i] for i in indices]
