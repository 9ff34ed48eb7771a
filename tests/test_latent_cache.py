"""Latents on disk (sharded, fingerprinted, resumable) and streamed hf datasets, on tiny offline data."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from raybilevel.config import DatasetConfig
from raybilevel.errors import ConfigError, UserError
from raybilevel.worlds.datasets import ImageCaptionStream, LatentDataset, dataset_identity, load_source
from raybilevel.worlds.diffusers_world import build_diffusers_world, load_teacher
from raybilevel.worlds.latent_cache import INDEX_FILE, LatentCache, build_cache, fingerprint
from raybilevel.worlds.tiny_sd import CONCEPT


@pytest.fixture(scope="module")
def vae(tiny_sd) -> torch.nn.Module:
    return load_teacher(tiny_sd[0].pretrained, "cpu").vae


def in_memory(cfg: DatasetConfig, vae) -> LatentDataset:
    return LatentDataset(load_source(cfg), vae, 16, cache_latents=True)


def test_disk_cache_holds_exactly_the_in_memory_latents_and_is_reused(tiny_sd, vae, tmp_path):
    cfg = tiny_sd[0].dataset
    everything = list(range(32))
    on_disk = LatentDataset(load_source(cfg), vae, 16, True, str(tmp_path), identity=dataset_identity(cfg))
    reference = in_memory(cfg, vae)
    assert torch.equal(on_disk.get_batch(everything)[0], reference.get_batch(everything)[0])
    assert on_disk.captions == reference.captions
    (folder,) = tmp_path.iterdir()
    shard = folder / "shard_00000.safetensors"
    written = shard.stat().st_mtime_ns
    again = LatentDataset(load_source(cfg), vae, 16, True, str(tmp_path), identity=dataset_identity(cfg))
    assert shard.stat().st_mtime_ns == written and list(tmp_path.iterdir()) == [folder]  # read, not re-encoded
    assert torch.equal(again.get_batch([31, 0, 7])[0], reference.get_batch([31, 0, 7])[0])


def test_fingerprint_follows_the_dataset_resolution_and_vae_weights(tiny_sd, vae):
    identity = dataset_identity(tiny_sd[0].dataset)
    base = fingerprint(identity, vae)
    assert fingerprint(dict(identity), vae) == base
    assert fingerprint({**identity, "max_samples": 5}, vae) != base
    assert fingerprint({**identity, "resolution": 32}, vae) != base
    changed = load_teacher(tiny_sd[0].pretrained, "cpu").vae
    with torch.no_grad():
        next(changed.parameters()).view(-1)[0] += 1e-3
    assert fingerprint(identity, changed) != base


def test_an_interrupted_encoding_resumes_at_its_first_missing_shard(tiny_sd, vae, tmp_path):
    source = load_source(tiny_sd[0].dataset)
    data = LatentDataset(source, vae, 16, cache_latents=False)
    encoded: list[int] = []

    def encode(images):
        if len(encoded) == 2:
            raise KeyboardInterrupt  # the third shard never finishes
        encoded.append(len(images))
        return data._encode_images(images)

    with pytest.raises(KeyboardInterrupt):
        build_cache(tmp_path, data._rows_from, encode, shard_rows=12)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard_00000.safetensors", "shard_00001.safetensors"]
    encoded.clear()
    build_cache(tmp_path, data._rows_from, lambda images: encoded.append(len(images)) or data._encode_images(images),
                shard_rows=12)
    assert encoded == [8]  # rows 24-31 only
    assert json.loads((tmp_path / INDEX_FILE).read_text()) == {"rows": 32, "shards": 3, "shard_rows": 12}
    cache = LatentCache(tmp_path)
    reference = in_memory(tiny_sd[0].dataset, vae)
    rows = [0, 11, 12, 25, 31]
    torch.testing.assert_close(cache.latents(rows), reference.get_batch(rows)[0], rtol=0, atol=1e-6)
    assert cache.captions == reference.captions


def parquet_dataset(tiny_sd, folder: Path, captions: dict[int, str] | None = None) -> Path:
    """The tiny imagefolder as a folder of parquet files: what `load_dataset(folder, streaming=True)` reads."""
    import datasets

    source = load_source(tiny_sd[0].dataset)
    texts = [(captions or {}).get(i, text) for i, text in enumerate(source.captions)]
    table = datasets.Dataset.from_dict({"image": [source.load_image(i) for i in range(len(source))], "text": texts},
                                       features=datasets.Features({"image": datasets.Image(),
                                                                   "text": datasets.Value("string")}))
    folder.mkdir(parents=True)
    table.to_parquet(str(folder / "train.parquet"))
    return folder


def test_a_streamed_dataset_encodes_the_same_rows_once_in_order(tiny_sd, vae, tmp_path):
    cfg = replace(tiny_sd[0].dataset, kind="hf", path=str(parquet_dataset(tiny_sd, tmp_path / "stream")),
                  streaming=True, max_samples=12)
    source = load_source(cfg)
    assert isinstance(source, ImageCaptionStream) and source.limit == 12
    streamed = LatentDataset(source, vae, 16, cache_latents=True)
    reference = in_memory(replace(tiny_sd[0].dataset, max_samples=12), vae)
    rows = list(range(12))
    assert len(streamed) == 12 and streamed.captions == reference.captions
    torch.testing.assert_close(streamed.get_batch(rows)[0], reference.get_batch(rows)[0], rtol=0, atol=1e-6)
    on_disk = LatentDataset(source, vae, 16, True, str(tmp_path / "cache"), identity=dataset_identity(cfg))
    torch.testing.assert_close(on_disk.get_batch(rows)[0], reference.get_batch(rows)[0], rtol=0, atol=1e-6)
    # A stream cannot re-read an image: its "real" images are its latents decoded by the VAE.
    pixels = streamed.pixels([0, 3])
    assert pixels.shape == (2, 3, 16, 16) and pixels.abs().max() <= 1


def test_a_streamed_dataset_naming_the_concept_is_refused_after_reading_it(tiny_sd, tmp_path):
    cfg, judge = tiny_sd
    folder = parquet_dataset(tiny_sd, tmp_path / "stream", captions={4: f"a red circle, {CONCEPT}"})
    world = replace(cfg, dataset=replace(cfg.dataset, kind="hf", path=str(folder), streaming=True))
    with pytest.raises(UserError, match=f"contains the concept '{CONCEPT}' in 1 captions"):
        build_diffusers_world(world, seed=0, judge_path=str(judge))


@pytest.mark.parametrize("changes, field, words", [
    ({"streaming": True}, "streaming", "only 'hf' datasets stream"),
    ({"kind": "hf", "streaming": True, "cache_latents": False}, "streaming", "cannot be read by index"),
    ({"latent_cache": "/tmp/x", "cache_latents": False}, "latent_cache", "cached latents"),
])
def test_dataset_options_that_cannot_work_together_are_refused(changes, field, words):
    with pytest.raises(ConfigError, match=f"world.dataset.{field}.*{words}"):
        replace(DatasetConfig(), **changes).validate("world.dataset")
