"""Numerical faults: a NaN loss stops the run with its step, or skips the step leaving weights and both
optimizer states untouched, under every ZeRO stage; a diverged run never reaches the Pareto front."""
from __future__ import annotations

import json

import pytest
import torch

from helpers import TINY, read_scalars
from raybilevel.config import load_config
from raybilevel.report import analyse
from raybilevel.errors import NonFiniteLossError
from raybilevel.solvers.base import Solver
from raybilevel.train import build_run, train
from raybilevel.trials import SweepDir, TrialRecord


def _poison(monkeypatch, at_calls: set[int]) -> None:
    """Make the lower loss NaN on the given calls (counted from 0) of Solver.lower_value."""
    original, calls = Solver.lower_value, [0]

    def lower_value(self, who, batch):
        loss, terms = original(self, who, batch)
        calls[0] += 1
        return (loss * float("nan"), terms) if calls[0] - 1 in at_calls else (loss, terms)

    monkeypatch.setattr(Solver, "lower_value", lower_value)


def _snapshot(run) -> list[torch.Tensor]:
    """Every tensor the optimizer owns: its parameters (ZeRO's flat fp32 partitions, or the module's) and
    both levels' moments and step counts."""
    optimizer = run.solver.student.optimizer
    tensors = [p.detach().clone() for group in optimizer.param_groups for p in group["params"]]
    for state in optimizer.state.values():
        tensors += [torch.as_tensor(v).clone() for _, v in sorted(state.items())]
    return tensors


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_skip_leaves_weights_and_moments_untouched_under_every_zero_stage(tmp_path, monkeypatch, stage):
    cfg = load_config(None, TINY + ["solver.name=distill_only", f"engine.zero_stage={stage}", "engine.grad_accum=2",
                                    "train.on_nonfinite=skip", "eval.enabled=false"])
    run = build_run(cfg, tmp_path / "run")
    run.solver.iteration(0)  # creates the lower moments
    before = _snapshot(run)
    _poison(monkeypatch, at_calls={1})  # step 1, micro-batch 1: micro 0's gradient is thrown away too
    assert run.solver.iteration(1)["skipped"] == 1.0 and run.solver.skipped_steps == 1
    assert all(torch.equal(a, b) for a, b in zip(before, _snapshot(run)))
    assert "skipped" not in run.solver.iteration(2)
    assert not all(torch.equal(a, b) for a, b in zip(before, _snapshot(run)))
    engine = run.solver.student.engine
    assert (engine.global_steps, engine.micro_steps) == (3, 6)  # the engine's micro-batch count stayed aligned


def test_stop_names_the_step_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    _poison(monkeypatch, at_calls={2})  # step 2 (distill_only: one lower value per step)
    cfg = load_config(None, TINY + ["solver.name=distill_only", "eval.enabled=false"])
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 2 .*train.on_nonfinite=skip"):
        train(cfg, tmp_path / "run")
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step_00000002"]
    assert [r["step"] for r in read_scalars(tmp_path / "run")] == [0, 1]


def test_skipped_steps_are_counted_then_too_many_stop_the_run(tmp_path, monkeypatch):
    _poison(monkeypatch, at_calls={1})
    metrics = train(load_config(None, TINY + ["solver.name=distill_only", "train.on_nonfinite=skip", "eval.enabled=false"]),
                    tmp_path / "one")
    assert metrics["skipped_steps"] == 1
    assert [r.get("skipped", 0.0) for r in read_scalars(tmp_path / "one")] == [0.0, 1.0, 0.0, 0.0]
    _poison(monkeypatch, at_calls={0, 1, 2, 3})
    with pytest.raises(NonFiniteLossError, match="diverged: 2 steps skipped .* train.max_skipped_steps=1"):
        train(load_config(None, TINY + ["solver.name=distill_only", "train.on_nonfinite=skip", "train.max_skipped_steps=1",
                                        "eval.enabled=false"]), tmp_path / "two")


def test_a_diverged_trial_never_reaches_the_front(tmp_path):
    """A trial whose objectives came back NaN (written as null) is failed, not a point on the front."""
    sweep = SweepDir(tmp_path)
    (tmp_path / "space.yaml").write_text(json.dumps({
        "name": "t", "params": {"lower.lr": {"type": "float", "low": 1e-4, "high": 1e-3}},
        "reference_point": {"quality": 10.0, "concept_rate": 1.0}}))
    for trial_id, objectives, status in [("a", {"quality": 1.0, "concept_rate": 0.5}, "done"),
                                         ("b", {"quality": 2.0, "concept_rate": 0.1}, "done"),
                                         ("c", {"quality": None, "concept_rate": 0.0}, "failed"),
                                         ("d", {"quality": float("nan"), "concept_rate": 0.0}, "done")]:
        record = TrialRecord(trial_id, {"lower.lr": 1e-4}, {}, "alternating", folder=sweep.trial_dir(trial_id))
        record.save()
        record.finish(status, objectives, error="diverged" if status == "failed" else "")
    report = analyse(sweep)
    assert sorted(r.trial_id for r in report.front) == ["a", "b"]
