"""The embedded world: its data, its shipped teacher and judge, and the command that rebuilds them."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import cli
from raybilevel.config import EvalConfig, WorldConfig
from raybilevel.errors import UserError
from raybilevel.evaluate import evaluate
from raybilevel.faults import CRASH_AT
from raybilevel.worlds.toy import data
from raybilevel.worlds.toy.build import RESUME_FILE, train_teacher
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


def test_world_toy_teacher_picks_the_shipped_6000_step_teacher_and_names_it_in_cache_keys(world):
    from raybilevel.worlds import frozen_identity

    cfg = WorldConfig(concept="striped", toy_images=64, n_concept_images=2, sampling_steps=2, toy_teacher="teacher_6000")
    longer = build_toy_world(cfg, seed=0)
    assert longer.info["teacher"] == "teacher_6000" and world.info["teacher"] == "teacher"
    default_weights, longer_weights = world.teacher.state_dict(), longer.teacher.state_dict()
    assert default_weights.keys() == longer_weights.keys()
    assert any(not torch.equal(default_weights[k], longer_weights[k]) for k in default_weights)
    # it ships only its UNet: the text stack is the default teacher's, read from there
    assert sorted(p.name for p in (SHIPPED_ASSETS / "teacher_6000").iterdir() if p.is_dir()) == ["unet"]
    assert torch.equal(longer.prompts(["a striped red circle"]), world.prompts(["a striped red circle"]))
    assert longer.scheduler_config == world.scheduler_config
    default_id, longer_id = frozen_identity(WorldConfig()), frozen_identity(cfg)
    assert default_id[0] != longer_id[0] and default_id[1] == longer_id[1]  # same judge, other teacher


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


TINY_TEACHER = {"steps": 6, "batch_size": 8, "n_images": 64, "warmup": 2, "checkpoint_every": 2}


def _teacher_build(out, crash_at: str | None = None) -> subprocess.CompletedProcess:
    """train_teacher in its own process (one thread, so runs compare bit for bit), its report on stdout."""
    code = ("import json, sys, torch; from pathlib import Path; torch.set_num_threads(1); "
            "from raybilevel.worlds.toy.build import train_teacher; "
            f"print(json.dumps(train_teacher(Path(sys.argv[1]), **{TINY_TEACHER!r})))")
    env = {key: value for key, value in os.environ.items() if key != CRASH_AT}
    env.update({CRASH_AT: crash_at} if crash_at else {})
    return subprocess.run([sys.executable, "-c", code, str(out)], env=env, capture_output=True, text=True, timeout=600)


def _teacher_weights(out) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(next((out / "unet").glob("*.safetensors")))


def test_a_killed_teacher_build_resumes_on_the_same_curve(tmp_path):
    whole = _teacher_build(tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-2000:]
    killed = _teacher_build(tmp_path / "resumed", crash_at="step:5")  # SIGKILL after step 5: resumes from 4
    assert killed.returncode == -signal.SIGKILL
    assert torch.load(tmp_path / "resumed" / RESUME_FILE, weights_only=True)["step"] == 4
    with pytest.raises(UserError, match=r"resume.pt: a teacher build with steps=6 is in progress, not 8"):
        train_teacher(tmp_path / "resumed", **{**TINY_TEACHER, "steps": 8})
    resumed = _teacher_build(tmp_path / "resumed")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    report, report_whole = json.loads(resumed.stdout.splitlines()[-1]), json.loads(whole.stdout.splitlines()[-1])
    assert (report["resumed_from"], report_whole["resumed_from"]) == (4, 0)
    assert report["final_loss_mean_last100"] == report_whole["final_loss_mean_last100"]
    assert not (tmp_path / "resumed" / RESUME_FILE).exists()
    first, second = _teacher_weights(tmp_path / "whole"), _teacher_weights(tmp_path / "resumed")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_rendering_is_deterministic_per_seed():
    item = data.Item("cross", "blue", "outline")
    a, b = data.render(item, np.random.default_rng(4)), data.render(item, np.random.default_rng(4))
    assert np.array_equal(a, b) and a.shape == (16, 16, 3)
