"""The diffusers world end to end on tiny random SD-layout pipelines built from configs (no downloads)."""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from raybilevel.config import WorldConfig
from raybilevel.errors import ConfigError, UserError
from raybilevel.worlds import diffusers_world
from raybilevel.worlds.clip_judge import JUDGE_ENV, clip_similarity, concept_decisions
from raybilevel.worlds.datasets import LatentDataset, load_source, to_pixels
from raybilevel.worlds.diffusers_world import (build_diffusers_world, check_no_concept, concept_sample_file,
                                               read_concept_prompts)
from raybilevel.worlds.tiny_sd import CONCEPT, build_tiny_sd_assets, write_concept_prompts


@pytest.fixture(autouse=True)
def no_judge_from_the_environment(monkeypatch) -> None:
    monkeypatch.delenv(JUDGE_ENV, raising=False)


def build(cfg: WorldConfig, judge: Path, seed: int = 0):
    return build_diffusers_world(cfg, seed=seed, judge_path=str(judge))


def with_dataset(cfg: WorldConfig, **changes) -> WorldConfig:
    return replace(cfg, dataset=replace(cfg.dataset, **changes))


def metadata_rows(folder: str) -> list[dict]:
    return [json.loads(line) for line in (Path(folder) / "metadata.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_world_from_a_tiny_pipeline(tmp_path, monkeypatch, prediction_type):
    cfg, judge = build_tiny_sd_assets(tmp_path / "assets", prediction_type)
    world = build(cfg, judge)

    assert world.prediction_type == prediction_type
    assert world.scheduler_config["clip_sample"] is False
    assert world.sample_shape == (4, 8, 8)  # 16 px images through a VAE with scale factor 2
    assert world.sampling == {"steps": 2, "guidance": 2.0, "batch_size": 16}
    assert not world.teacher.training and not any(p.requires_grad for p in world.teacher.parameters())
    x0, captions = world.finetune.get_batch([0, 5, 7])
    assert x0.shape == (3, 4, 8, 8) and torch.isfinite(x0).all()
    assert captions == [metadata_rows(cfg.dataset.path)[i]["text"] for i in (0, 5, 7)]

    concept = world.concept
    assert concept.name == CONCEPT and len(concept.prompts) == len(concept.anchor_prompts) == 4
    assert concept.images.shape == (cfg.n_concept_images, 4, 8, 8)
    assert concept.image_prompts == concept.prompts  # 4 images cycle through 4 prompts
    assert concept.preservation_prompts and not any(CONCEPT in p for p in concept.preservation_prompts)

    file = concept_sample_file(cfg, concept.prompts, world.evaluator.draw, seed=0)
    assert file.is_file()
    # A second build must read the cache, not sample the teacher again.
    monkeypatch.setattr(diffusers_world, "sample", lambda *a, **k: pytest.fail("sampled despite the cache"))
    assert torch.equal(build(cfg, judge).concept.images, concept.images)


def test_tiny_pipeline_loads_in_diffusers(tiny_sd):
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(tiny_sd[0].pretrained, safety_checker=None,
                                                       use_safetensors=True)
    assert sum(p.numel() for p in pipeline.unet.parameters()) < 300_000
    images = pipeline("a red circle", num_inference_steps=2, output_type="np").images
    assert images.shape == (1, 16, 16, 3)


def test_pixels_keep_the_centre_square_in_minus_one_to_one():
    from PIL import Image

    for centre, sides, expected in ((255, 0, 1.0), (0, 255, -1.0)):
        strip = Image.new("RGB", (16, 4), (sides,) * 3)
        strip.paste((centre,) * 3, (4, 0, 12, 4))  # the middle half of a 16 x 4 strip
        pixels = to_pixels(strip, 8)  # 32 x 8 after resizing, cropped to its middle 8 columns
        assert pixels.shape == (3, 8, 8) and (pixels == expected).all()


def test_cached_latents_equal_encoded_on_demand(tiny_sd):
    cfg, judge = tiny_sd
    world = build(with_dataset(cfg, cache_latents=False), judge)
    cached = LatentDataset(world.finetune.source, world.vae, 16, cache_latents=True)
    everything = list(range(len(cached)))
    assert torch.equal(cached.get_batch(everything)[0], world.finetune.get_batch(everything)[0])
    # Another batch composition changes conv arithmetic at rounding level only.
    (x_cached, captions_cached), (x_fresh, captions_fresh) = cached.get_batch([2, 9]), world.finetune.get_batch([2, 9])
    torch.testing.assert_close(x_cached, x_fresh, rtol=0, atol=1e-6)
    assert captions_cached == captions_fresh


def test_resolution_override_and_concept_images_from_a_folder(tiny_sd):
    cfg, judge = tiny_sd
    cfg = replace(cfg, resolution=32, concept_images=cfg.dataset.path, sampling_steps=0, guidance=0.0)
    world = build(cfg, judge)
    assert world.sample_shape == (4, 16, 16)
    assert world.finetune.get_batch([0])[0].shape == (1, 4, 16, 16)
    assert world.concept.images.shape == (32, 4, 16, 16)  # every PNG of the folder
    assert world.concept.image_prompts[:5] == [world.concept.prompts[i % 4] for i in range(5)]
    assert world.sampling == {"steps": 25, "guidance": 7.5, "batch_size": 16}
    with pytest.raises(ConfigError, match="world.resolution"):
        build(replace(cfg, resolution=18), judge)


def test_fine_tuning_data_holding_the_concept_is_refused(tiny_sd, tmp_path):
    cfg, judge = tiny_sd
    rows = metadata_rows(cfg.dataset.path)
    rows[3]["text"] = f"a red circle, {CONCEPT.title()} style"
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for row in rows:
        (folder / row["file_name"]).symlink_to(Path(cfg.dataset.path) / row["file_name"])
    with pytest.raises(UserError, match="contains the concept 'watercolor' in 1 captions.*filter"):
        build(with_dataset(cfg, path=str(folder)), judge)


def test_concept_label_matches_whole_words_only():
    check_no_concept(["watercolors of a bridge", "a van", "a goghish sky"], "van gogh")
    with pytest.raises(UserError):
        check_no_concept(["a bridge by Van Gogh."], "van gogh")


def test_missing_caption_column_names_it_and_the_columns_there(tiny_sd):
    with pytest.raises(ConfigError, match=r"caption_column.*'caption'.*file_name, text"):
        load_source(with_dataset(tiny_sd[0], caption_column="caption").dataset)


def test_empty_dataset_and_max_samples(tiny_sd, tmp_path):
    cfg = tiny_sd[0]
    assert len(load_source(replace(cfg.dataset, max_samples=5))) == 5
    (tmp_path / "metadata.jsonl").write_text("")
    with pytest.raises(ConfigError, match="has no rows"):
        load_source(replace(cfg.dataset, path=str(tmp_path)))


def test_missing_teacher_names_the_field(tiny_sd, tmp_path):
    cfg, judge = tiny_sd
    with pytest.raises(ConfigError, match="world.pretrained"):
        build(replace(cfg, pretrained=str(tmp_path / "missing")), judge)
    (tmp_path / "partial" / "unet").mkdir(parents=True)
    with pytest.raises(ConfigError, match="lacks text_encoder, tokenizer, vae, scheduler"):
        build(replace(cfg, pretrained=str(tmp_path / "partial")), judge)


def test_missing_judge_says_how_to_give_one(tiny_sd):
    with pytest.raises(UserError, match=JUDGE_ENV):
        build_diffusers_world(tiny_sd[0], seed=0)


def test_hf_saved_dataset_reads_like_the_imagefolder(tiny_sd, tmp_path):
    import datasets

    imagefolder = load_source(tiny_sd[0].dataset)
    rows = list(range(6))
    table = datasets.Dataset.from_dict(
        {"picture": [imagefolder.load_image(i) for i in rows], "caption": [imagefolder.captions[i] for i in rows]},
        features=datasets.Features({"picture": datasets.Image(), "caption": datasets.Value("string")}))
    datasets.DatasetDict({"train": table}).save_to_disk(tmp_path / "saved")
    cfg = replace(tiny_sd[0].dataset, kind="hf", path=str(tmp_path / "saved"), image_column="picture",
                  caption_column="caption")
    source = load_source(cfg)
    assert source.captions == imagefolder.captions[:6]
    assert list(source.load_image(4).getdata()) == list(imagefolder.load_image(4).getdata())
    with pytest.raises(ConfigError, match="no split 'val'.*train"):
        load_source(replace(cfg, split="val"))


def test_coco_layout_keeps_each_images_first_caption(tiny_sd, tmp_path):
    imagefolder = load_source(tiny_sd[0].dataset)
    (tmp_path / "val2017").mkdir()
    (tmp_path / "annotations").mkdir()
    for image_id in (7, 3):
        imagefolder.load_image(image_id).save(tmp_path / "val2017" / f"{image_id:012d}.jpg")
    annotations = [{"id": 11, "image_id": 7, "caption": "second of seven"},
                   {"id": 10, "image_id": 7, "caption": " first of seven "},
                   {"id": 12, "image_id": 3, "caption": "only of three"}]
    images = [{"id": i, "file_name": f"{i:012d}.jpg"} for i in (7, 3)]
    captions_file = tmp_path / "annotations" / "captions_val2017.json"
    captions_file.write_text(json.dumps({"images": images, "annotations": annotations}))
    cfg = replace(tiny_sd[0].dataset, kind="coco", path=str(tmp_path), split="val",
                  captions_file="annotations/captions_val2017.json")
    source = load_source(cfg)
    assert source.captions == ["only of three", "first of seven"]
    assert source.load_image(1).size == imagefolder.load_image(7).size


def test_concept_prompt_files(tmp_path):
    csv_prompts, csv_anchors = read_concept_prompts(str(write_concept_prompts(tmp_path / "c.csv")), "unused")
    txt_prompts, txt_anchors = read_concept_prompts(str(write_concept_prompts(tmp_path / "c.txt")), "a picture")
    assert csv_prompts == txt_prompts == ["a red circle, watercolor", "a red square, watercolor",
                                          "a green circle, watercolor", "a green square, watercolor"]
    assert csv_anchors == ["a red circle", "a red square", "a green circle", "a green square"]
    assert txt_anchors == ["a picture"] * 4
    (tmp_path / "bad.csv").write_text("text,anchor\nx,y\n")
    with pytest.raises(ConfigError, match="no 'prompt' column"):
        read_concept_prompts(str(tmp_path / "bad.csv"), "")


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def clip_scores_by_hand(images: torch.Tensor, texts: torch.Tensor) -> list[float]:
    """CLIPScore per pair as its paper defines it: 100 * max(cos, 0), in plain Python."""
    return [100 * max(cosine(i, t), 0.0) for i, t in zip(images.tolist(), texts.tolist())]


def test_clip_similarity_matches_a_direct_computation():
    images, texts = torch.randn(2, 64, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert clip_similarity(images, texts).tolist() == pytest.approx(clip_scores_by_hand(images, texts), rel=1e-12)
    assert clip_similarity(torch.tensor([[1.0, 0.0]]), torch.tensor([[-3.0, 1.0]])).item() == 0  # clamped at 0
    assert clip_similarity(torch.tensor([[2.0, 0.0]]), torch.tensor([[0.5, 0.5]])).item() == pytest.approx(100 / math.sqrt(2))


def test_concept_decisions_match_a_direct_computation():
    images, concepts, anchors = torch.randn(3, 64, 16, generator=torch.Generator().manual_seed(0))

    expected = [cosine(i, c) > cosine(i, a) for i, c, a in zip(images.tolist(), concepts.tolist(), anchors.tolist())]
    assert concept_decisions(images, concepts, anchors).tolist() == expected
    # Scale does not matter, direction does.
    assert concept_decisions(torch.tensor([[1.0, 0.0]]), torch.tensor([[5.0, 1.0]]), torch.tensor([[1.0, 1.0]])).item()


def test_evaluator_metrics_are_in_range_and_consistent_with_its_judge(tiny_sd):
    cfg, judge = tiny_sd
    world = build(cfg, judge)
    drawn = []

    def recording_draw(*args) -> torch.Tensor:
        drawn.append(world.evaluator.draw(*args))
        return drawn[-1]

    evaluator = replace(world.evaluator, draw=recording_draw)
    metrics = evaluator(world.teacher, n_samples=6, seed=3)

    assert metrics["quality"] == metrics["clip_fd"] >= 0 and metrics["quality_metric"] == "clip_fd"
    assert metrics["cp_share"] == 0  # the teacher against its own samples: no prompt's similarity fell
    assert 0 <= metrics["concept_rate"] <= 1
    assert 0 <= metrics["clip_concept_similarity"] <= 100 and 0 <= metrics["clip_score"] <= 100
    prompts = [world.concept.prompts[i % 4] for i in range(6)]
    anchors = [world.concept.anchor_prompts[i % 4] for i in range(6)]
    clip = evaluator.judge
    concept_images, concept_texts = clip.embed_images(drawn[0]), clip.embed_texts(prompts)
    expected = concept_decisions(concept_images, concept_texts, clip.embed_texts(anchors))
    assert metrics["concept_rate"] == pytest.approx(expected.float().mean().item())
    # CLIP scores from the judge's own embeddings of what was drawn, computed by hand
    order = torch.randperm(len(world.evaluator.reference), generator=torch.Generator().manual_seed(3)).tolist()
    captions = [world.evaluator.reference.captions[order[i % len(order)]] for i in range(6)]
    by_hand = {"clip_concept_similarity": clip_scores_by_hand(concept_images, concept_texts),
               "clip_score": clip_scores_by_hand(clip.embed_images(drawn[1]), clip.embed_texts(captions))}
    for name, scores in by_hand.items():
        assert metrics[name] == pytest.approx(sum(scores) / len(scores), rel=1e-5), name
    assert evaluator(world.teacher, n_samples=6, seed=3) == metrics  # seeded
    with pytest.raises(UserError, match="n_samples"):
        evaluator(world.teacher, n_samples=1, seed=0)
