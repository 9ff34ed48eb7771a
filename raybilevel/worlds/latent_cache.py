"""Latents on disk: a dataset encoded through the VAE once, in shards, shared by runs and sweep trials.

Layout of `<latent_cache>/<fingerprint>/`: shard_00000.safetensors, shard_00001.safetensors, ... each
holding the latents of `SHARD_ROWS` consecutive rows (their captions in the file's metadata) and written
atomically; index.json, written last, marks the cache complete. The fingerprint hashes what decides the
latents (the dataset's identity, the resolution, the VAE's weights), so a changed dataset or VAE gets a new
folder rather than stale latents. An interrupted encoding resumes at its first missing shard. Rows are
read one by one through memory maps, so a cache larger than RAM trains without being loaded.
"""
from __future__ import annotations

import hashlib
import json
import os
from itertools import islice
from pathlib import Path
from typing import Callable, Iterator

import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from raybilevel.atomic import write_json_atomic

SHARD_ROWS = 1024
INDEX_FILE = "index.json"
# rows from a start row on, as (image, caption), in dataset order
RowsFrom = Callable[[int], Iterator[tuple[Image.Image, str]]]


def fingerprint(identity: dict, vae: torch.nn.Module) -> str:
    """A hash of the dataset identity (JSON-serialisable) and of every VAE weight."""
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode())
    for name, tensor in sorted(vae.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def _shard_file(folder: Path, shard: int) -> Path:
    return folder / f"shard_{shard:05d}.safetensors"


def _finished_shards(folder: Path) -> int:
    """Shards are written in order, each complete or absent: the count of consecutive ones from 0."""
    shard = 0
    while _shard_file(folder, shard).is_file():
        shard += 1
    return shard


def build_cache(folder: Path, rows_from: RowsFrom, encode: Callable[[list[Image.Image]], torch.Tensor],
                limit: int = 0, shard_rows: int = SHARD_ROWS) -> None:
    """Encode rows (at most `limit`, 0 = all) into shards under `folder`, resuming after finished shards."""
    folder.mkdir(parents=True, exist_ok=True)
    first = _finished_shards(folder)
    rows = rows_from(first * shard_rows)
    if limit:
        rows = islice(rows, max(0, limit - first * shard_rows))
    shard = first
    with tqdm(desc="encoding latents", unit="row", initial=first * shard_rows) as progress:
        while chunk := list(islice(rows, shard_rows)):
            images, captions = zip(*chunk)
            latents = encode(list(images))
            partial = folder / f".shard_{shard:05d}.{os.getpid()}.partial"
            save_file({"latents": latents.contiguous()}, partial, metadata={"captions": json.dumps(captions)})
            os.replace(partial, _shard_file(folder, shard))
            progress.update(len(chunk))
            shard += 1
    counts = [_shard_rows(_shard_file(folder, k)) for k in range(shard)]
    write_json_atomic(folder / INDEX_FILE, {"rows": sum(counts), "shards": shard, "shard_rows": shard_rows})


def _shard_rows(file: Path) -> int:
    with safe_open(str(file), "pt") as handle:
        return handle.get_slice("latents").get_shape()[0]


class LatentCache:
    """Read access to a complete cache: captions in memory, latents row by row from memory maps."""

    def __init__(self, folder: Path) -> None:
        index = json.loads((folder / INDEX_FILE).read_text())
        self.shard_rows = index["shard_rows"]
        self._shards = [safe_open(str(_shard_file(folder, k)), "pt") for k in range(index["shards"])]
        self.captions = [caption for shard in self._shards for caption in json.loads(shard.metadata()["captions"])]

    def __len__(self) -> int:
        return len(self.captions)

    def latents(self, indices: list[int]) -> torch.Tensor:
        rows = []
        for i in indices:
            shard, row = divmod(i, self.shard_rows)
            rows.append(self._shards[shard].get_slice("latents")[row:row + 1])
        return torch.cat(rows)


def open_cache(root: str, identity: dict, vae: torch.nn.Module, rows_from: RowsFrom,
               encode: Callable[[list[Image.Image]], torch.Tensor], limit: int = 0,
               shard_rows: int = SHARD_ROWS) -> LatentCache:
    """The cache of this dataset and VAE under `root`, encoding whatever is not there yet."""
    folder = Path(root) / fingerprint(identity, vae)
    if not (folder / INDEX_FILE).is_file():
        build_cache(folder, rows_from, encode, limit, shard_rows)
    return LatentCache(folder)
