"""The sweep's reference points: computed once per base config (cached across sweeps), and the trial slot
they hold while they train (Tune starts one trial fewer until they end)."""
from __future__ import annotations

import dataclasses
import json

import torch
from ray.tune.search import Searcher

from raybilevel import references
from raybilevel.config import Config, config_from_dict
from raybilevel.references import FAILED_FILE, REFERENCES_FILE, mark_failed, reference_key, write_references
from raybilevel.slots import GatedGrid, GatedLimiter, SlotGate
from raybilevel.sampling import sample
from raybilevel.worlds.toy import world as toy_world


class Suggests(Searcher):
    """A searcher that always has a trial to offer: only the limit can refuse one."""

    def suggest(self, trial_id):
        return {"x": 1}

    def on_trial_complete(self, trial_id, result=None, error=False):
        pass


def test_tune_gets_one_trial_fewer_until_the_references_end(tmp_path):
    gate = SlotGate(tmp_path, slots=2)
    limiter, grid = GatedLimiter(Suggests(), gate), GatedGrid(gate)
    assert gate() == limiter.max_concurrent == grid.max_concurrent == 1
    assert limiter.suggest("a") == {"x": 1} and limiter.suggest("b") is None  # the second would wait: not started
    (tmp_path / REFERENCES_FILE).write_text("{}")
    assert gate() == limiter.max_concurrent == grid.max_concurrent == 2
    assert limiter.suggest("b") == {"x": 1} and limiter.suggest("c") is None
    limiter.max_concurrent = 7  # Tune's own assignments do not override the gate
    assert limiter.max_concurrent == 2
    assert SlotGate(tmp_path / "other", slots=1)() == 1  # a one-slot cluster still runs trials


def test_a_failed_reference_task_frees_its_slot_with_its_reason(tmp_path):
    gate = SlotGate(tmp_path, slots=3)
    mark_failed(tmp_path, None)  # ended without error: nothing to record
    assert gate() == 2
    mark_failed(tmp_path, RuntimeError("out of memory\n"))
    assert gate() == 3
    assert json.loads((tmp_path / FAILED_FILE).read_text()) == {"error": "RuntimeError: out of memory"}


def _cfg(**changes) -> Config:
    tree = Config().to_dict()
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        tree[section][key] = value
    return config_from_dict(tree)


def test_the_cache_key_follows_what_shapes_the_references():
    base = reference_key(_cfg())
    assert reference_key(_cfg(**{"ray.num_workers": 4, "ray.cpus_per_worker": 2.0})) == base  # resources: same run
    assert reference_key(_cfg(**{"solver.name": "bome"})) == base  # the reference is distill-only whatever the trial's
    assert reference_key(_cfg(**{"lower.lr": 1e-4})) != base
    assert reference_key(_cfg(**{"pruning.sparsity": 0.5})) != base


def test_a_second_sweep_of_the_same_base_config_copies_the_cached_references(tmp_path, monkeypatch):
    computed = []

    def evaluate(cfg, root):  # stands in for the real evaluation (tests/test_tune.py runs it end to end)
        computed.append(root)
        (root / "references" / "distill_only").mkdir(parents=True)
        (root / "references" / "distill_only" / "metrics.json").write_text('{"quality": 0.5}')
        return {"teacher": {"quality": 0.1}, "distill_only": {"quality": 0.5}}

    monkeypatch.setattr(references, "evaluate_references", evaluate)
    cfg = _cfg()
    for sweep in ("first", "second"):
        write_references(tmp_path / sweep, cfg)
    assert len(computed) == 1 and computed[0].parent.name == "references"  # computed once, in the cache
    for sweep in ("first", "second"):
        written = json.loads((tmp_path / sweep / REFERENCES_FILE).read_text())
        assert written["points"] == {"teacher": {"quality": 0.1}, "distill_only": {"quality": 0.5}}
        assert written["config"] == cfg.to_dict()
        assert (tmp_path / sweep / "references" / "distill_only" / "metrics.json").read_text() == '{"quality": 0.5}'
    write_references(tmp_path / "first", _cfg(**{"lower.lr": 1e-4}))  # a sweep keeps what it has
    assert len(computed) == 1
    write_references(tmp_path / "third", _cfg(**{"lower.lr": 1e-4}))  # another base config is computed
    assert len(computed) == 2


def test_the_toy_world_draws_its_concept_images_once_per_teacher_and_seed(monkeypatch):
    draws = []

    def counted(*args, **kwargs):
        draws.append(kwargs["generator"].initial_seed())
        return sample(*args, **kwargs)

    monkeypatch.setattr(toy_world, "sample", counted)
    cfg = dataclasses.replace(Config().world, toy_images=64, n_concept_images=8)
    first, second = toy_world.build_toy_world(cfg, seed=3), toy_world.build_toy_world(cfg, seed=3)
    assert len(draws) == 1 and torch.equal(first.concept.images, second.concept.images)  # read back bit for bit
    toy_world.build_toy_world(cfg, seed=4)  # the seed is in the key
    assert draws == [3 + 202, 4 + 202]
