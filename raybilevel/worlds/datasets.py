"""Fine-tuning data for diffusers worlds: image-caption sources, encoded to VAE latents.

Sources (`world.dataset.kind`):
- imagefolder: `path/metadata.jsonl` (or `path/<split>/metadata.jsonl`), one JSON row per image with
  `file_name` (relative to the metadata file) and the caption column. Read directly: offline and exact.
- hf: a dataset saved with `save_to_disk` (read with `load_from_disk`), else a `load_dataset` name;
  rows need the image column (PIL images) and the caption column.
- coco: COCO 2017 layout, `path/<captions_file>` and images under `path/<split>2017/`. One row per image,
  with its first caption (lowest annotation id), so each image is encoded once and rows are stable.
With `streaming`, an hf dataset is read in order only (ImageCaptionStream): its rows are encoded once,
into memory or into the on-disk latent cache (latent_cache.py), and then read by index like any other.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from itertools import islice
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from raybilevel.config import DatasetConfig
from raybilevel.errors import ConfigError
from raybilevel.sampling import decode_latents
from raybilevel.worlds.latent_cache import LatentCache, open_cache

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


@dataclass
class ImageCaptionStream:
    """Rows that can only be read in order (a streamed hf dataset); `limit` caps them (0 = all)."""

    name: str
    rows_from: Callable[[int], Iterator[tuple[Image.Image, str]]]
    limit: int = 0


Source = ImageCaptions | ImageCaptionStream


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


def _is_saved_dataset(path: str) -> bool:
    """A save_to_disk folder (which load_dataset cannot read), as opposed to a folder of data files."""
    return any((Path(path) / name).is_file() for name in ("dataset_dict.json", "state.json"))


def _open_hf(cfg: DatasetConfig):
    """The split of a save_to_disk folder or a `load_dataset` name / data-file folder, streamed if asked."""
    import datasets

    # Without streaming any existing path is read as a save_to_disk folder (the offline, exact case).
    saved = _is_saved_dataset(cfg.path) or (not cfg.streaming and Path(cfg.path).exists())
    try:
        data = (datasets.load_from_disk(cfg.path) if saved
                else datasets.load_dataset(cfg.path, split=cfg.split, streaming=cfg.streaming))
    except (OSError, ValueError) as error:
        raise ConfigError("world.dataset.path", f"cannot load dataset {cfg.path!r} ({first_line(error)}); give a "
                          "save_to_disk folder, a reachable datasets name or (streaming) a folder of data files") from None
    if isinstance(data, datasets.DatasetDict):
        if cfg.split not in data:
            raise ConfigError("world.dataset.split", f"no split {cfg.split!r} in {cfg.path}; splits: {', '.join(data)}")
        data = data[cfg.split]
    if cfg.streaming and isinstance(data, datasets.Dataset):
        data = data.to_iterable_dataset()
    if data.column_names is not None:  # some streams only learn their columns from their first row
        _require_columns(data.column_names,
                         {cfg.image_column: "image_column", cfg.caption_column: "caption_column"}, cfg.path)
    return data


def _hf(cfg: DatasetConfig) -> Source:
    data = _open_hf(cfg)
    if cfg.streaming:
        def rows_from(start: int) -> Iterator[tuple[Image.Image, str]]:
            return ((row[cfg.image_column], str(row[cfg.caption_column])) for row in data.skip(start))

        return ImageCaptionStream(cfg.path, rows_from, cfg.max_samples)
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


SOURCES: dict[str, Callable[[DatasetConfig], Source]] = {"imagefolder": _imagefolder, "hf": _hf, "coco": _coco}


def load_source(cfg: DatasetConfig) -> Source:
    source = SOURCES[cfg.kind](cfg)
    if isinstance(source, ImageCaptionStream):
        return source
    if cfg.max_samples:
        source = ImageCaptions(source.captions[:cfg.max_samples], source.load_image)
    if not source.captions:
        raise ConfigError("world.dataset.path", f"the {cfg.kind} dataset at {cfg.path} has no rows; "
                          "point world.dataset.path at images with captions")
    return source


def dataset_identity(cfg: DatasetConfig) -> dict:
    """What names a dataset's rows, for the latent cache's fingerprint (local paths made absolute)."""
    identity = {key: value for key, value in dataclasses.asdict(cfg).items()
                if key not in ("cache_latents", "latent_cache", "streaming")}
    if Path(cfg.path).exists():
        identity["path"] = str(Path(cfg.path).resolve())
    return identity


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
    """FinetuneData over an image-caption source; x0 are VAE latents at `resolution` pixels.

    Latents live in memory (`cache_latents`), in the on-disk cache under `latent_cache` (then `identity`,
    JSON-serialisable, must name the dataset), or are encoded batch by batch on demand.
    """

    def __init__(self, source: Source, vae: torch.nn.Module, resolution: int, cache_latents: bool,
                 latent_cache: str = "", identity: dict | None = None, batch_size: int = 64) -> None:
        self.source, self.vae, self.resolution, self.batch_size = source, vae, resolution, batch_size
        self._latents: torch.Tensor | None = None
        self._disk: LatentCache | None = None
        limit = source.limit if isinstance(source, ImageCaptionStream) else 0
        if latent_cache:
            self._disk = open_cache(latent_cache, {**(identity or {}), "resolution": resolution}, vae,
                                    self._rows_from, self._encode_images, limit)
            self._captions = self._disk.captions
        elif cache_latents:
            self._latents, self._captions = self._encode_all(limit)
        else:
            self._captions = source.captions
        if not self._captions:
            raise ConfigError("world.dataset.path", f"the dataset at {getattr(source, 'name', '?')} has no rows; "
                              "point world.dataset.path at images with captions")

    def __len__(self) -> int:
        return len(self._captions)

    @property
    def captions(self) -> list[str]:
        return self._captions

    def _rows_from(self, start: int) -> Iterator[tuple[Image.Image, str]]:
        if isinstance(self.source, ImageCaptionStream):
            return self.source.rows_from(start)
        return ((self.source.load_image(i), self.source.captions[i]) for i in range(start, len(self.source)))

    def _encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        return torch.cat([encode_pixels(self.vae, torch.stack([to_pixels(image, self.resolution) for image in chunk]))
                          for chunk in (images[i:i + self.batch_size] for i in range(0, len(images), self.batch_size))])

    def _encode_all(self, limit: int) -> tuple[torch.Tensor, list[str]]:
        rows = self._rows_from(0)
        rows = islice(rows, limit) if limit else rows
        latents, captions = [], []
        with tqdm(desc="encoding latents", unit="row") as progress:
            while chunk := list(islice(rows, self.batch_size)):
                images, texts = zip(*chunk)
                latents.append(self._encode_images(list(images)))
                captions.extend(texts)
                progress.update(len(chunk))
        return (torch.cat(latents) if latents else torch.empty(0)), captions

    def pixels(self, indices: list[int]) -> torch.Tensor:
        """Real images in [-1, 1]; a stream's are its cached latents decoded (VAE reconstructions)."""
        if isinstance(self.source, ImageCaptionStream):
            return decode_latents(self.vae, self.get_batch(indices)[0])
        return torch.stack([to_pixels(self.source.load_image(i), self.resolution) for i in indices])

    def get_batch(self, indices: list[int]) -> tuple[torch.Tensor, list[str]]:
        if self._disk is not None:
            x0 = self._disk.latents(indices)
        elif self._latents is not None:
            x0 = self._latents[indices]
        else:
            x0 = encode_pixels(self.vae, self.pixels(indices))
        return x0, [self._captions[i] for i in indices]
