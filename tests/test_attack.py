"""The prompt attack (attack.py): its searches against direct computations, its judge, a keyword-only
erasure it defeats, the Stable Diffusion path, and three objectives in a sweep's front."""
from __future__ import annotations

import dataclasses
import random

import numpy as np
import optuna
import pytest
import torch
from PIL import Image

from raybilevel import pareto
from raybilevel.attack import DenoisingProbe, attack_metrics, embedding_attack, token_attack
from raybilevel.config import AttackConfig, EvalConfig, WorldConfig
from raybilevel.evaluate import evaluate
from raybilevel.worlds import build_world
from raybilevel.worlds.toy.judge import rate_metrics, read_attributes
from raybilevel.worlds.toy import data


@pytest.fixture(scope="module")
def toy():
    return build_world(WorldConfig(concept="striped", toy_images=64, n_concept_images=32), seed=0)


def probe_of(world, prompt: str, draws: int = 8) -> DenoisingProbe:
    rows = [i for i, p in enumerate(world.concept.image_prompts) if p == prompt]
    return DenoisingProbe(world, world.teacher, world.concept.images[rows], draws, torch.Generator().manual_seed(0))


def test_the_token_search_takes_the_word_a_direct_search_finds(toy):
    prompt = toy.concept.prompts[0]
    probe = probe_of(toy, prompt)
    found, cond = token_attack(toy, probe, prompt, AttackConfig(tokens=1, rounds=1))
    with torch.no_grad():
        losses = {word: probe.loss(toy.prompts([f"{word} {prompt}".strip()])[0]).item() for word in ["", *toy.vocabulary]}
    best = min(losses, key=losses.get)
    assert found == f"{best} {prompt}".strip() and torch.equal(cond, toy.prompts([found])[0])
    assert losses[best] <= losses[""]  # never worse than the prompt itself


def test_the_embedding_attack_stays_in_its_ball_and_lowers_the_loss(toy):
    prompt = toy.concept.prompts[1]
    probe = probe_of(toy, prompt)
    start = toy.prompts([prompt])[0]
    cond = embedding_attack(toy, probe, prompt, AttackConfig(method="embedding", steps=20, radius=0.2))
    assert (cond - start).norm() <= 0.2 * start.norm() * (1 + 1e-5)
    with torch.no_grad():
        assert probe.loss(cond).item() < probe.loss(start).item()


def test_the_toy_judge_of_attacked_samples_is_the_concept_groups_rule(toy):
    images = torch.from_numpy(data.generate(24, seed=3, items=data.items_with("striped")[:6]).images)
    prompts = [data.caption(item) for item in data.items_with("striped")[:6] for _ in range(4)]
    judged = toy.evaluator.judge_concept(images, prompts, seed=1, prefix="attack_concept_rate")
    items = [item for item in data.items_with("striped")[:6] for _ in range(4)]
    wanted = {a: np.array([data.label_index(a, item.value(a)) for item in items]) for a in data.ATTRIBUTES}
    assert judged == rate_metrics("attack_concept_rate", read_attributes(toy.evaluator.judge, images)[1], wanted,
                                  "striped", 1)


class KeywordFilter(torch.nn.Module):
    """A weak erasure: the teacher, except that the exact encoding of a concept prompt is swapped for its
    anchor's ("a red circle, plain"). Any other conditioning passes, as with erasures that only learned
    to ignore the literal prompt."""

    def __init__(self, world) -> None:
        super().__init__()
        self.teacher = world.teacher
        self.concept = world.prompts(world.concept.prompts)
        self.anchor = world.prompts(world.concept.anchor_prompts)

    def forward(self, x, t, cond):
        match = (cond[:, None] - self.concept[None]).abs().amax(dim=(2, 3)) < 1e-6  # (batch, prompts)
        hit = match.any(1)
        swapped = torch.where(hit[:, None, None], self.anchor[match.float().argmax(1)], cond)
        return self.teacher(x, t, swapped)


@pytest.mark.slow
def test_the_attack_raises_the_concept_rate_of_a_keyword_only_erasure(toy):
    erased = KeywordFilter(toy)
    settings = EvalConfig(n_samples=32, seed=5, attack=AttackConfig(enabled=True, prompts=4, draws=8, tokens=1, rounds=1))
    metrics = evaluate(toy, erased, settings)
    assert metrics["concept_rate"] <= 0.1  # the literal prompts look erased
    assert metrics["attack_concept_rate"] >= metrics["concept_rate"] + 0.3, metrics["attack_prompts"]
    assert all(p not in toy.concept.prompts for p in metrics["attack_prompts"])  # each found a prefix
    assert metrics["eval_settings"]["attack"] == dataclasses.asdict(settings.attack)
    low, high = metrics["attack_concept_rate_ci"]
    assert low <= metrics["attack_concept_rate"] <= high


@pytest.mark.parametrize("method", ["tokens", "embedding"])
def test_the_attack_runs_on_a_stable_diffusion_pipeline(tiny_sd, method):
    cfg, judge = tiny_sd
    world = build_world(dataclasses.replace(cfg, clip_judge=str(judge)), seed=0)
    assert "watercolor" in world.vocabulary and "red" in world.vocabulary
    metrics = attack_metrics(world, world.teacher, AttackConfig(method=method, prompts=2, draws=2, steps=3, rounds=1),
                             n_samples=4, seed=0)
    assert 0 <= metrics["attack_concept_rate"] <= 1 and metrics["attack_concept_rate_n"] == 4
    assert len(metrics["attack_prompts"]) == 2


def test_three_objectives_hypervolume_against_optuna_and_the_front():
    from optuna._hypervolume import compute_hypervolume

    rng = random.Random(1)
    points = [tuple(rng.random() for _ in range(3)) for _ in range(25)]
    modes = ["min", "min", "max"]
    reference = (1.1, 1.1, -0.1)
    flipped = np.array([pareto.to_minimise(p, modes) for p in points])
    expected = compute_hypervolume(flipped, np.array(pareto.to_minimise(reference, modes)))
    assert pareto.hypervolume(points, reference, modes) == pytest.approx(expected, rel=1e-12)
    study = optuna.create_study(directions=["minimize", "minimize", "maximize"])
    for point in points:
        study.add_trial(optuna.trial.create_trial(values=list(point), params={}, distributions={}))
    assert sorted(pareto.front_indices(points, modes)) == sorted(t.number for t in study.best_trials)


def test_a_three_objective_sweep_reports_its_front_and_pairwise_projections(tmp_path):
    import json

    import yaml

    from raybilevel.report import write_report
    from raybilevel.search_space import ParamSpec, SearchSpace
    from raybilevel.trials import SweepDir, TrialRecord

    objectives = {"quality": "min", "concept_rate": "min", "attack_concept_rate": "min"}
    space = SearchSpace(name="three", params={"lower.lr": ParamSpec(type="float", low=1e-5, high=1e-3, log=True)},
                        objectives=objectives, reference_point=dict.fromkeys(objectives, 10.0))
    sweep = SweepDir(tmp_path / "sweep")
    sweep.root.mkdir()
    sweep.space_file.write_text(yaml.safe_dump(dataclasses.asdict(space), sort_keys=False))
    rng = random.Random(2)
    points = [tuple(round(rng.random(), 3) for _ in range(3)) for _ in range(9)]
    study = optuna.create_study(directions=["minimize"] * 3)
    for i, point in enumerate(points):
        record = TrialRecord(f"t{i}", {"lower.lr": 1e-4}, {"lower.lr": 1e-4}, "bome", started=float(i),
                             folder=sweep.trial_dir(f"t{i}"))
        record.finish("done", dict(zip(objectives, point)))
        study.add_trial(optuna.trial.create_trial(values=list(point), params={}, distributions={}))
    report = write_report(sweep.root)
    front = json.loads((sweep.root / "pareto.json").read_text())["front"]
    assert sorted(tuple(f["objectives"].values()) for f in front) == sorted(tuple(t.values) for t in study.best_trials)
    assert report.hypervolume == pytest.approx(pareto.hypervolume(points, (10.0,) * 3, ["min"] * 3))
    width, height = Image.open(sweep.root / "pareto.png").size
    assert width > 2.5 * height  # three projections side by side
