"""The embedded world: its data, its shipped teacher and judge, and the command that rebuilds them."""
from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
import torch

from helpers import cli
from raybilevel.config import EvalConfig, WorldConfig
from raybilevel.evaluate import evaluate
from raybilevel.worlds.toy import data
from raybilevel.worlds.toy.judge import load_judge
from raybilevel.worlds.toy.world import SHIPPED_ASSETS, build_toy_world


@pytest.fixture(scope="module")
def world():
    return build_toy_world(WorldConfig(concept="striped", toy_images=256, n_concept_images=8, sampling_steps=25), seed=0)


def test_world_hides_the_concept_from_fine_tuning_and_pairs_anchors(world):
    assert len(world.finetune) == 256
    x0, captions = world.finetune.get_batch([0, 1, 2])
    assert x0.shape == (3, 3, 16, 16)
    assert not any(word in c for c in world.finetune.captions for word in ("striped", "stripes"))
    assert all("striped" in p for p in world.concept.prompts) and len(world.concept.prompts) == 16
    assert all("plain" in a and "striped" not in a for a in world.concept.anchor_prompts)
    assert world.concept.images.shape == (8, 3, 16, 16)


def test_shipped_judge_reads_fresh_real_images():
    judge = load_judge(SHIPPED_ASSETS / "judge.safetensors")
    fresh = data.generate(512, seed=99)
    with torch.no_grad():
        _, logits = judge(torch.from_numpy(fresh.images))
    for attribute, labels in fresh.labels.items():
        assert (logits[attribute].argmax(1).numpy() == labels).mean() >= 0.97, attribute


# This test's own evaluation (seed 5, 48 samples per group), recorded 2026-12-02: 46/48 unrelated prompts with
# every attribute right, 44/47 qualifying striped samples striped, 0/48 elsewhere, 41/42 paraphrases. At 512
# samples (eval seed 1234) the same teacher scored 0.961 / 0.924 / 0.008 / 0.916, within sampling error of these.
RECORDED = {"attribute_accuracy": 46 / 48, "concept_rate": 44 / 47, "concept_rate_floor": 0 / 48,
            "paraphrase_concept_rate": 41 / 42}


def test_shipped_teacher_draws_clean_samples_and_the_concept(world):
    """A regression check of the shipped teacher (48 samples per group, DDIM 25, guidance 1.25) against its
    recorded values. The evaluation is seeded, so only floating-point differences between machines can move
    it: two samples' worth of slack per rate, where the old bounds sat 4-6 standard errors away."""
    metrics = evaluate(world, world.teacher, EvalConfig(n_samples=48, seed=5))
    assert metrics["eval_settings"] == {"sampler": "DDIM", "steps": 25, "guidance": 1.25, "batch_size": 256,
                                        "seed": 5, "n_samples": 48}
    for name, recorded in RECORDED.items():
        assert abs(metrics[name] - recorded) <= 2 / 48 + 1e-9, (name, metrics[name], recorded)


def test_toy_build_rebuilds_loadable_assets(tmp_path):
    out = tmp_path / "assets"
    result = subprocess.run(cli("toy", "build", "--output", str(out), "--teacher-steps", "2", "--judge-epochs", "1",
                                "--images", "256"), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((out / "build.json").read_text())
    assert report["teacher"]["steps"] == 2 and report["judge"]["n_images"] == 256
    os.environ["RAYBILEVEL_TOY_ASSETS"] = str(out)
    try:
        rebuilt = build_toy_world(WorldConfig(toy_images=64, n_concept_images=4, sampling_steps=2), seed=0)
    finally:
        del os.environ["RAYBILEVEL_TOY_ASSETS"]
    assert rebuilt.info["assets"] == str(out)
    assert tuple(rebuilt.teacher.config.block_out_channels) == (32, 64, 64)


def test_rendering_is_deterministic_per_seed():
    item = data.Item("cross", "blue", "outline")
    a, b = data.render(item, np.random.default_rng(4)), data.render(item, np.random.default_rng(4))
    assert np.array_equal(a, b) and a.shape == (16, 16, 3)
