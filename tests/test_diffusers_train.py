"""The same train() path on a tiny saved SD-layout pipeline with an imagefolder dataset (latent space,
VAE, CLIP tokenizer, epsilon and v-prediction), as users run it on real checkpoints."""
from __future__ import annotations

import dataclasses
import json
import math
import subprocess

import pytest
import yaml

from conftest import TINY, cli, read_scalars
from raybilevel.config import config_from_dict, load_config
from raybilevel.pruning import load_student
from raybilevel.train import train
from raybilevel.worlds.tiny_sd import build_tiny_sd_assets


def _world(root, prediction_type: str) -> dict:
    world, judge = build_tiny_sd_assets(root, prediction_type)
    return dataclasses.asdict(dataclasses.replace(world, clip_judge=str(judge)))


@pytest.mark.parametrize("prediction_type, solver, pruning", [
    ("epsilon", "penalty", "channels"), ("v_prediction", "alternating", "blocks")])
def test_train_on_a_tiny_sd_pipeline(tmp_path, prediction_type, solver, pruning):
    base = load_config(None, TINY + [f"solver.name={solver}", f"pruning.method={pruning}", "eval.n_samples=4",
                                     "upper.method=ablation", "pruning.sparsity=0.25"]).to_dict()
    cfg = config_from_dict(base | {"world": _world(tmp_path / "assets", prediction_type)})
    metrics = train(cfg, tmp_path / "run")
    assert metrics["budget"]["upper_fb"] == 2
    for key in ("quality", "concept_rate", "clip_score", "clip_concept_similarity"):
        assert math.isfinite(metrics[key]), key
    assert 0 <= metrics["concept_rate"] <= 1
    rows = read_scalars(tmp_path / "run")
    assert len(rows) == 4 and all(math.isfinite(v) for r in rows for v in r.values())
    assert load_student(tmp_path / "run" / "student").model.config.in_channels == 4  # latent space


def test_cli_trains_a_diffusers_world_from_a_yaml_file(tmp_path):
    config = tmp_path / "sd.yaml"
    config.write_text(yaml.safe_dump({"world": _world(tmp_path / "assets", "epsilon"),
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
