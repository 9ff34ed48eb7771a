"""The same train() path on a tiny saved SD-layout pipeline with an imagefolder dataset (latent space,
VAE, CLIP tokenizer, epsilon and v-prediction), as users run it on real checkpoints."""
from __future__ import annotations

import dataclasses
import json
import math
import subprocess

import pytest
import torch
import yaml

from helpers import TINY, cli, read_scalars
from raybilevel.config import MetricsConfig, config_from_dict, load_config
from raybilevel.pruning import load_student
from raybilevel.train import train
from raybilevel.worlds.nudenet import EXPOSED_LABELS
from raybilevel.worlds.tiny_sd import build_tiny_inception, build_tiny_sd_assets


def _world(world_and_judge) -> dict:
    world, judge = world_and_judge
    return dataclasses.asdict(dataclasses.replace(world, clip_judge=str(judge)))


@pytest.mark.parametrize("prediction_type, solver, pruning", [
    ("epsilon", "penalty", "channels"), ("v_prediction", "alternating", "blocks")])
def test_train_on_a_tiny_sd_pipeline(tmp_path, tiny_sd, prediction_type, solver, pruning):
    base = load_config(None, TINY + [f"solver.name={solver}", f"pruning.method={pruning}", "eval.n_samples=4",
                                     "upper.method=ablation", "pruning.sparsity=0.25"]).to_dict()
    world = tiny_sd if prediction_type == "epsilon" else build_tiny_sd_assets(tmp_path / "assets", prediction_type)
    cfg = config_from_dict(base | {"world": _world(world)})
    metrics = train(cfg, tmp_path / "run")
    assert metrics["budget"]["upper_fb"] == 2
    for key in ("quality", "concept_rate", "clip_score", "clip_concept_similarity"):
        assert math.isfinite(metrics[key]), key
    assert 0 <= metrics["concept_rate"] <= 1
    rows = read_scalars(tmp_path / "run")
    assert len(rows) == 4 and all(math.isfinite(v) for r in rows for v in r.values())
    assert load_student(tmp_path / "run" / "student").model.config.in_channels == 4  # latent space


def test_cli_trains_a_diffusers_world_from_a_yaml_file(tmp_path, tiny_sd):
    config = tmp_path / "sd.yaml"
    config.write_text(yaml.safe_dump({"world": _world(tiny_sd),
                                      "solver": {"name": "two_stage"}}))
    out = tmp_path / "run"
    result = subprocess.run(cli("train", "--config", str(config), "--output", str(out),
                                *sum((["--set", s] for s in TINY + ["eval.enabled=false"]), [])),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert load_config(out / "config.yaml").world.kind == "diffusers"
    assert json.loads((out / "metrics.json").read_text())["budget"]["upper_fb"] == 2


def test_cli_missing_pipeline_is_one_line_exit_2(tmp_path):
    result = subprocess.run(cli("train", "--output", str(tmp_path / "x"), "--set", "world.kind=diffusers",
                                "--set", f"world.pretrained={tmp_path / 'nope'}", "--set", f"world.dataset.path={tmp_path}",
                                "--set", f"world.concept_prompts={tmp_path / 'c.txt'}"),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("raybilevel: error:") and len(result.stderr.strip().splitlines()) == 1


I2P_HEADER = ("prompt,categories,hard,inappropriate_percentage,nudity_percentage,overall_toxicity,lexica_url,"
              "sd_seed,sd_guidance_scale,sd_image_width,sd_image_height,sd_model")


def write_i2p(path, rows: list[tuple[str, str]]):
    """An I2P-layout CSV: (prompt, categories) rows with the other columns filled in."""
    lines = [I2P_HEADER] + [f'"{prompt}","{categories}",1,80,60,0.2,https://lexica.art/x,{1000 + i},7,512,512,1.5'
                            for i, (prompt, categories) in enumerate(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_prune_train_eval_with_every_real_metric_wired(tmp_path, tiny_sd, isolated_cache):
    """The issue's end to end: a saved tiny SD pipeline, pruned, trained bilevel, evaluated with FID (stand-in
    Inception), CLIP score, CLIP similarity and CP, prompt sets with NudeNet's own detector, then exported."""
    from diffusers import StableDiffusionPipeline

    world, judge = tiny_sd
    i2p = write_i2p(tmp_path / "i2p.csv", [("a red circle", "sexual"), ("a blue square", "violence"),
                                            ("a green circle", "sexual, hate"), ("a yellow square", "sexual")])
    (tmp_path / "plain.txt").write_text("a red square\na blue circle\n")
    metrics_config = MetricsConfig(fid_weights=str(build_tiny_inception(tmp_path / "inception.pt")),
                                   reference=dataclasses.replace(world.dataset, max_samples=10),
                                   prompt_sets=[str(i2p), str(tmp_path / "plain.txt")],
                                   prompt_set_category="sexual", nudenet=True)
    world = dataclasses.replace(world, clip_judge=str(judge), metrics=metrics_config)
    # bf16 autocast puts the teacher in bf16 (teacher_dtype auto): CP's baseline must still be the fp32 teacher's.
    base = load_config(None, TINY + ["solver.name=penalty", "pruning.method=blocks", "eval.n_samples=4",
                                     "engine.precision=bf16_autocast"]).to_dict()
    cfg = config_from_dict(base | {"world": dataclasses.asdict(world)})

    metrics = train(cfg, tmp_path / "run")

    assert metrics["quality_metric"] == "fid" and metrics["quality"] == metrics["fid"] > 0
    assert math.isfinite(metrics["kid"])  # beside FID, from the same Inception features
    assert math.isfinite(metrics["clip_fd"]) and 0 <= metrics["clip_score"] <= 100
    assert metrics["cp_share"] in (0.0, 0.25, 0.5, 0.75, 1.0)  # 4 concept prompts
    assert metrics["i2p/sexual/n_prompts"] == 3 and metrics["plain/n_prompts"] == 2
    for name in ("i2p/sexual", "plain"):
        assert 0 <= metrics[f"{name}/clip_similarity"] <= 100
        assert 0 <= metrics[f"{name}/nudenet_image_share"] <= 1
        labels = [metrics[f"{name}/{label}"] for label in EXPOSED_LABELS]
        assert metrics[f"{name}/nudenet_total"] == sum(labels)
    assert metrics["eval_settings"] == {"sampler": "DDIM", "steps": 2, "guidance": 2.0, "batch_size": 16,
                                        "seed": 1234, "n_samples": 4}
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["fid"] == metrics["fid"] and saved["eval_settings"] == metrics["eval_settings"]
    pipeline = StableDiffusionPipeline.from_pretrained(tmp_path / "run" / "pipeline")
    images = pipeline("a red circle", num_inference_steps=2, output_type="pt").images
    assert images.shape == (1, 3, 16, 16) and torch.isfinite(images).all()
    # The teacher's concept similarities were sampled once and cached for every later evaluation.
    assert len(list((isolated_cache / "teacher_similarities").iterdir())) == 1
