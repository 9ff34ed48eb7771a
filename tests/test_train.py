"""The method end to end on the toy world, in this process (one rank), through the real train()."""
from __future__ import annotations

import json
import math
import shutil
import subprocess

import pytest

from helpers import TINY, cli, read_scalars
from raybilevel.config import load_config
from raybilevel.errors import UserError
from raybilevel.pruning import load_student
from raybilevel.train import train

# Passes each solver spends in 4 steps with K=2 and erase_fraction 0.5: the budget accounting is exact.
EXPECTED_BUDGET = {
    "distill_only": (4, 0, 0),
    "joint": (4, 4, 0),
    "alternating": (4, 2, 0),
    "two_stage": (2, 2, 0),
    "penalty": (6, 2, 4),   # 4 inner steps on the copy + 2 outer steps (L_ft and L_cu) + 2 gap evaluations
    "adaptive": (8, 4, 4),  # 4 steps on the copy + 4 combined steps of theta + 2 gap evaluations
    "bome": (4, 4, 0),
}


def _train(tmp_path, *overrides: str, name: str = "run"):
    cfg = load_config(None, TINY + list(overrides))
    out = tmp_path / name
    return train(cfg, out), out


PRUNINGS, UNLEARNINGS = ("magnitude", "channels", "blocks"), ("esd_x", "ablation")
# Every pair of (solver, pruning), (solver, unlearning) and (pruning, unlearning) at least once: 21 runs
# where the full product was 42 (the triples add nothing the pairs do not already exercise).
PAIRWISE = [(solver, UNLEARNINGS[(i + j) % 2], pruning)
            for i, solver in enumerate(sorted(EXPECTED_BUDGET)) for j, pruning in enumerate(PRUNINGS)]


@pytest.mark.parametrize("solver, unlearning, pruning", PAIRWISE)
def test_every_solver_unlearning_and_pruning_method_trains(tmp_path, solver, unlearning, pruning):
    metrics, out = _train(tmp_path, f"solver.name={solver}", f"upper.method={unlearning}",
                          f"pruning.method={pruning}", "eval.enabled=false")
    budget = metrics["budget"]
    assert (budget["lower_fb"], budget["upper_fb"], budget["student_forward"]) == EXPECTED_BUDGET[solver]
    rows = read_scalars(out)
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert all(math.isfinite(v) for r in rows for k, v in r.items() if k != "step")
    assert any("upper" in r for r in rows) == (solver != "distill_only")
    if solver in ("penalty", "adaptive"):
        assert {"value_gap", "lambda"} <= set(rows[1]) and rows[1]["lambda"] > 0
    if solver == "bome":
        assert all(r["lambda"] >= 1.0 for r in rows)
    student = load_student(out / "student")
    assert student.description["method"] == pruning
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000002", "step_00000004"]


def test_lower_loss_decreases_over_a_short_distillation(tmp_path):
    _, out = _train(tmp_path, "solver.name=distill_only", "train.steps=30", "train.checkpoint_every=0", "solver.warmup_steps=0",
                    "lower.lr=2e-3", "eval.enabled=false")
    losses = [r["lower"] for r in read_scalars(out)]
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5


@pytest.mark.parametrize("solver", ["alternating", "adaptive", "two_stage", "bome", "joint"])
def test_resume_continues_the_exact_loss_curve(tmp_path, solver):
    """Kill after the step-2 checkpoint (simulated by deleting what came later): the rerun resumes at
    step 2 and logs exactly the losses, value gaps and lambdas of the uninterrupted run."""
    _, out = _train(tmp_path, f"solver.name={solver}", "deterministic=true", "eval.enabled=false")
    uninterrupted = read_scalars(out)
    shutil.rmtree(out / "checkpoints" / "step_00000004")
    metrics, _ = _train(tmp_path, f"solver.name={solver}", "deterministic=true", "eval.enabled=false")
    assert metrics["resumed_from"] == 2
    assert read_scalars(out) == uninterrupted


def test_a_line_torn_by_a_kill_mid_append_does_not_stop_the_resume(tmp_path):
    _, out = _train(tmp_path, "solver.name=alternating", "deterministic=true", "eval.enabled=false")
    uninterrupted = read_scalars(out)
    shutil.rmtree(out / "checkpoints" / "step_00000004")
    with open(out / "scalars.jsonl", "a") as f:
        f.write('{"step": 4, "diff": 0.12')  # the kill came in the middle of this append
    metrics, _ = _train(tmp_path, "solver.name=alternating", "deterministic=true", "eval.enabled=false")
    assert metrics["resumed_from"] == 2 and read_scalars(out) == uninterrupted


def test_output_directory_of_another_run_is_refused_and_kept(tmp_path):
    _, out = _train(tmp_path, "eval.enabled=false")
    before = (out / "config.yaml").read_text()
    with pytest.raises(UserError, match="holds another run .solver.K"):
        _train(tmp_path, "eval.enabled=false", "solver.K=3")
    assert (out / "config.yaml").read_text() == before


def test_cli_writes_a_complete_run_directory(tmp_path):
    out = tmp_path / "cli_run"
    result = subprocess.run(cli("train", "--output", str(out), *sum((["--set", s] for s in TINY), []),
                                "--set", "train.sample_every=2"), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("quality", "concept_rate", "concept_rate_floor", "attribute_accuracy", "paraphrase_concept_rate"):
        assert key in metrics
    assert metrics["n_samples_per_group"] == 8 and math.isfinite(metrics["quality"]) and metrics["fd"] >= 0
    assert load_config(out / "config.yaml").solver.K == 2
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard")).Reload()
    assert "train/lower" in acc.Tags()["scalars"] and "samples/concept_then_unrelated" in acc.Tags()["images"]


@pytest.mark.parametrize("args, words", [
    (["--set", "solver.name=sgd"], "unknown solver 'sgd'"),
    (["--set", "upper.method=erase_all"], "unknown unlearning method 'erase_all'"),
    (["--set", "pruning.method=random"], "unknown pruning method 'random'"),
    (["--set", "world.concept=dragon"], "unknown toy concept 'dragon'"),
    (["--set", "pruning.sparsity=1.5"], "'pruning.sparsity'"),
    (["--config", "/nonexistent.yaml"], "no file at"),
])
def test_cli_bad_input_exits_2_with_one_line(tmp_path, args, words):
    result = subprocess.run(cli("train", "--output", str(tmp_path / "x"), *args, *sum((["--set", s] for s in TINY), [])),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("raybilevel: error:")]
    assert len(lines) == 1 and words in lines[0], result.stderr[-1500:]
    assert "Traceback" not in result.stderr


def test_dry_run_prints_the_resolved_config():
    result = subprocess.run(cli("train", "--dry-run", "--set", "solver.K=7"), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "K: 7" in result.stdout


def test_cli_prune_then_eval_a_student(tmp_path):
    small = ["--set", "world.toy_images=64", "--set", "world.n_concept_images=4", "--set", "world.sampling_steps=2"]
    student = tmp_path / "student"
    result = subprocess.run(cli("prune", "--output", str(student), "--set", "pruning.method=channels", *small),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    stats = json.loads(result.stdout)
    assert stats["student"]["params"] < stats["teacher"]["params"]
    assert load_student(student).description["method"] == "channels"
    out = tmp_path / "metrics.json"
    result = subprocess.run(cli("eval", "--student", str(student), "--output", str(out), "--set", "eval.n_samples=8", *small),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads(out.read_text())
    assert metrics["n_samples_per_group"] == 8 and math.isfinite(metrics["quality"]) and 0 <= metrics["concept_rate_raw"] <= 1


def test_a_run_records_where_its_time_went_and_evaluates_at_its_fractions(tmp_path):
    """metrics.json splits the run's seconds by phase (phases.py), together no more than its wall time, and
    train.eval_fractions evaluates at those shares of the steps, each line with its progress."""
    import time

    from raybilevel.phases import PHASES

    began = time.time()
    metrics = train(load_config(None, TINY + ["train.steps=8", "train.eval_fractions=[0.25, 0.5]", "train.sample_every=4"]),
                    tmp_path / "run")
    wall = time.time() - began
    seconds = metrics["seconds"]
    assert list(seconds) == list(PHASES) and all(v >= 0 for v in seconds.values())
    assert seconds["solver_iterations"] > 0 and seconds["evaluation"] > 0 and seconds["sample_grids"] > 0
    assert seconds["concept_images"] > 0 and seconds["world"] > 0 and seconds["checkpointing"] > 0
    assert sum(seconds.values()) <= wall and began <= metrics["started_at"] <= began + 1
    evals = [json.loads(line) for line in (tmp_path / "run" / "evals.jsonl").read_text().splitlines()]
    assert [(e["step"], e.get("progress")) for e in evals] == [(2, 0.25), (4, 0.5), (8, None)]


def test_a_run_its_caller_ends_after_an_evaluation_stops_there(tmp_path):
    """RunHooks.on_eval returning True (a sweep's early stop) ends the run at that step: no further step,
    no export and no final evaluation; metrics.json says where it stopped, what it spent and what it scored."""
    from raybilevel.train import RunHooks

    seen: dict[int, dict] = {}
    hooks = RunHooks(on_eval=lambda step, metrics: seen.update({step: metrics}) or step == 4)
    metrics = train(load_config(None, TINY + ["train.steps=8", "train.eval_fractions=[0.25, 0.5, 0.75]"]),
                    tmp_path / "run", hooks)
    assert list(seen) == [2, 4] and metrics["stopped_at"] == 4 and metrics["compute"]["steps"] == 4
    assert metrics["compute"]["theta_updates"] == metrics["budget"]["theta_updates"] > 0
    # its numbers, intervals included, are those of the evaluation it was ended at
    assert {k: metrics[k] for k in seen[4]} == seen[4] and metrics["quality_ci"] == seen[4]["quality_ci"]
    assert [json.loads(line)["step"] for line in (tmp_path / "run" / "scalars.jsonl").read_text().splitlines()] == [0, 1, 2, 3]
    evals = [json.loads(line) for line in (tmp_path / "run" / "evals.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [2, 4] and not (tmp_path / "run" / "student").exists()
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["stopped_at"] == 4
