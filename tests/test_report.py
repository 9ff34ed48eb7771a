"""The Pareto front, the hypervolume and the report files, on hand-made sweep directories (no Ray)."""
from __future__ import annotations

import csv
import dataclasses
import json
import random
import statistics
import subprocess

import optuna
import pytest
import torch
import yaml

from helpers import cli
from raybilevel import pareto
from raybilevel.importance import importances
from raybilevel.hparams import write_hparams
from raybilevel.report import SAMPLES_TAG, write_report
from raybilevel.search_space import GridSpec, SearchSpace
from raybilevel.trials import SweepDir, TrialRecord


def _brute_force_hypervolume(points, reference, modes) -> float:
    """Area of the union of boxes [p, ref], by testing every cell of the grid the coordinates span."""
    flipped = [pareto.to_minimise(p, modes) for p in points]
    ref = pareto.to_minimise(reference, modes)
    xs = sorted({p[0] for p in flipped if p[0] < ref[0]} | {ref[0]})
    ys = sorted({p[1] for p in flipped if p[1] < ref[1]} | {ref[1]})
    area = 0.0
    for x0, x1 in zip(xs, xs[1:]):
        for y0, y1 in zip(ys, ys[1:]):
            if any(p[0] <= x0 and p[1] <= y0 for p in flipped):
                area += (x1 - x0) * (y1 - y0)
    return area


@pytest.mark.parametrize("modes", [("min", "min"), ("min", "max")])
def test_front_equals_optunas_best_trials_and_hypervolume_equals_brute_force(modes):
    rng = random.Random(0)
    points = [(rng.uniform(0, 10), rng.uniform(0, 1)) for _ in range(60)] + [(5.0, 0.5), (5.0, 0.5)]
    study = optuna.create_study(directions=["minimize" if m == "min" else "maximize" for m in modes])
    for point in points:
        study.add_trial(optuna.trial.create_trial(values=list(point), params={}, distributions={}))
    assert sorted(pareto.front_indices(points, modes)) == sorted(t.number for t in study.best_trials)

    reference = (11.0, 1.1) if modes[1] == "min" else (11.0, -0.1)
    expected = _brute_force_hypervolume(points, reference, modes)
    assert expected > 0
    assert pareto.hypervolume(points, reference, modes) == pytest.approx(expected, rel=1e-12)
    # points outside the reference box add nothing
    assert pareto.hypervolume(points + [(50.0, 0.0)], reference, modes) == pytest.approx(expected, rel=1e-12)


# A 2 x 2 ablation grid, two seeds per cell: (loss, solver, seed) -> (quality, concept_rate), in finishing order.
GRID_RESULTS = [
    ("ddpm", "alt", 0, 4.0, 0.65), ("ddpm", "alt", 1, 5.0, 0.40),
    ("ddpm", "pen", 0, 3.0, 0.60), ("ddpm", "pen", 1, 3.5, 0.70),
    ("kd", "alt", 0, 2.0, 0.90), ("kd", "alt", 1, 2.5, 0.95),
    ("kd", "pen", 0, 6.0, 0.20), ("kd", "pen", 1, 7.0, 0.10),
]
FRONT = {"ddpm-alt-1", "ddpm-pen-0", "kd-alt-0", "kd-pen-0", "kd-pen-1"}  # non-dominated, by hand
REFERENCE = {"quality": 10.0, "concept_rate": 1.0}


def _grid_space() -> SearchSpace:
    factors = {"loss": {"ddpm": {"lower.w_out": 0.0, "lower.w_feat": 0.0}, "kd": {"lower.w_diff": 0.0}},
               "solver": {"alt": {"solver.name": "alternating"}, "pen": {"solver.name": "penalty"}}}
    return SearchSpace(name="abl", base={"train.eval_every": 2}, grid=GridSpec(factors=factors, seeds=[0, 1]),
                       reference_point=REFERENCE)


def _make_sweep(root) -> SweepDir:
    """What a finished grid sweep leaves behind, written by hand: records, evals, a sample grid each."""
    sweep = SweepDir(root)
    root.mkdir()
    space = _grid_space()
    sweep.space_file.write_text(yaml.safe_dump(dataclasses.asdict(space), sort_keys=False))
    for i, (loss, solver, seed, quality, rate) in enumerate(GRID_RESULTS):
        params = {"loss": loss, "solver": solver, "seed": seed}
        record = TrialRecord(f"{loss}-{solver}-{seed}", params, space.overrides(params),
                             {"alt": "alternating", "pen": "penalty"}[solver], started=100.0 + i,
                             folder=sweep.trial_dir(f"{loss}-{solver}-{seed}"))
        record.run_dir.mkdir(parents=True)
        evals = [{"step": 2, "macs": 2e9, "quality": quality + 1, "concept_rate": rate},
                 {"step": 4, "macs": 4e9, "quality": quality, "concept_rate": rate}]
        (record.run_dir / "evals.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evals))
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(record.run_dir / "tensorboard")) as writer:
            writer.add_image(SAMPLES_TAG, torch.rand(3, 16, 32), 4)
        record.finish("done", {"quality": quality, "concept_rate": rate})
    failed = TrialRecord("broken", {"loss": "kd", "solver": "pen", "seed": 2}, {}, "penalty", folder=sweep.trial_dir("broken"))
    failed.finish("failed", error="ValueError: out of memory")
    return sweep


def _read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_report_writes_front_hypervolume_ablation_and_html(tmp_path):
    sweep = _make_sweep(tmp_path / "sweep")
    points = {"teacher": {"quality": 10.0, "concept_rate": 0.9}, "student_step_0": {"quality": float("nan"), "concept_rate": 0.2}}
    (sweep.root / "references.json").write_text(json.dumps({"config": {}, "points": points}))
    report = write_report(sweep.root)
    # a reference with a non-finite objective is left off the plot and the summary
    assert json.loads((sweep.root / "pareto.json").read_text())["references"] == {"teacher": points["teacher"]}

    points = [(q, r) for *_, q, r in GRID_RESULTS]
    reference = tuple(REFERENCE.values())
    assert {r.trial_id for r in report.front} == FRONT
    summary = json.loads((sweep.root / "pareto.json").read_text())
    assert summary["hypervolume"] == pytest.approx(_brute_force_hypervolume(points, reference, ("min", "min")))
    assert summary["reference_point"] == REFERENCE and summary["n_trials"] == 9 and summary["n_valid"] == 8
    assert [row["trial_id"] for row in _read_csv(sweep.root / "pareto.csv")] == [r.trial_id for r in report.front]
    assert [float(row["quality"]) for row in _read_csv(sweep.root / "pareto.csv")] == sorted(
        q for (loss, solver, seed, q, _) in GRID_RESULTS if f"{loss}-{solver}-{seed}" in FRONT)

    trials = {row["trial_id"]: row for row in _read_csv(sweep.root / "trials.csv")}
    assert len(trials) == 9 and trials["broken"]["status"] == "failed" and "out of memory" in trials["broken"]["error"]
    assert {t for t, row in trials.items() if row["on_front"] == "True"} == FRONT

    history = _read_csv(sweep.root / "hypervolume.csv")
    assert [row["trial_id"] for row in history] == [f"{l}-{s}-{d}" for l, s, d, *_ in GRID_RESULTS] + ["broken"]
    for k, row in enumerate(history[:8], start=1):  # after each finished trial: the front of the first k
        assert float(row["hypervolume"]) == pytest.approx(_brute_force_hypervolume(points[:k], reference, ("min", "min")))
    assert float(history[-1]["hypervolume"]) == pytest.approx(summary["hypervolume"])

    cells = {(row["loss"], row["solver"]): row for row in _read_csv(sweep.root / "ablation.csv")}
    assert len(cells) == 4
    for loss, solver in cells:
        values = [q for l, s, _, q, _ in GRID_RESULTS if (l, s) == (loss, solver)]
        assert int(cells[loss, solver]["n"]) == 2
        assert float(cells[loss, solver]["quality_mean"]) == pytest.approx(statistics.fmean(values))
        assert float(cells[loss, solver]["quality_std"]) == pytest.approx(statistics.stdev(values))

    page = (sweep.root / "report.html").read_text()
    assert page.count('<img class="samples"') == len(FRONT)  # each front trial's grid, embedded
    assert page.count('src="data:image/png;base64,') == len(FRONT) + 3  # + Pareto plot, curves, hypervolume
    assert 'alt="Pareto plot"' in page and "no trial with finite objectives" not in page
    assert "±" in page and "out of memory" in page
    for name in ("pareto.png", "curves.png", "hypervolume.png"):
        assert (sweep.root / name).read_bytes().startswith(b"\x89PNG")


def test_hparams_session_lists_the_trial_values(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    run = tmp_path / "run"
    write_hparams(run, "t1", {"solver": "penalty", "solver.lam": 12.5, "solver.K": 4})
    events = EventAccumulator(str(run / "tensorboard")).Reload()
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    assert start.hparams["solver"].string_value == "penalty"
    assert start.hparams["solver.lam"].number_value == 12.5 and start.hparams["solver.K"].number_value == 4


def test_report_cli_rebuilds_a_sweep_and_refuses_other_folders(tmp_path):
    sweep = _make_sweep(tmp_path / "sweep")
    result = subprocess.run(cli("report", str(sweep.root)), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "9 trials, front of 5" in result.stdout and (sweep.root / "report.html").is_file()

    result = subprocess.run(cli("report", str(tmp_path)), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"raybilevel: error: {tmp_path} holds no sweep (no space.yaml); "
                                                   "pass the --output of `raybilevel tune`"]


def test_importance_ranks_each_objective_by_the_parameter_that_drives_it(tmp_path):
    """quality depends on x only and concept_rate on y only: each objective's top parameter is its own."""
    import optuna

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=url, directions=["minimize", "minimize"],
                                sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(24):
        trial = study.ask()
        x, y = trial.suggest_float("x", 0, 1), trial.suggest_float("y", 0, 1)
        study.tell(trial, [x, y])
    rows = importances(url, "s", ["quality", "concept_rate"])
    top = {name: max((r for r in rows if r["objective"] == name), key=lambda r: r["importance"])["param"]
           for name in ("quality", "concept_rate")}
    assert top == {"quality": "x", "concept_rate": "y"}
    for name in ("quality", "concept_rate"):
        assert sum(r["importance"] for r in rows if r["objective"] == name) == pytest.approx(1.0)
    assert importances(url, "no_such_study", ["quality", "concept_rate"]) == []


def test_a_trials_time_splits_into_startup_phases_and_the_rest():
    from raybilevel.phases import PHASES
    from raybilevel.time_split import sweep_split, trial_split, work_share
    from raybilevel.trials import TrialRecord

    record = TrialRecord("t", {}, {}, "bome", status="done", started=100.0, finished=200.0)
    phases = dict.fromkeys(PHASES, 0.0) | {"world": 5.0, "solver_iterations": 50.0, "evaluation": 20.0}
    split = trial_split(record, {"seconds": phases, "started_at": 110.0})
    assert split["startup"] == 10.0 and split["total"] == 100.0 and split["other"] == 100 - 10 - 5 - 50 - 20
    assert work_share(split) == 0.7
    assert trial_split(record, {}) is None  # a stopped or failed trial has no finished run to split
    both = sweep_split([split, split | {"evaluation": 0.0, "total": 50.0}])
    assert both["solver_iterations"] == 100.0 and both["total"] == 150.0 and both["trials"] == 2
    assert both["work_share"] == pytest.approx((100 + 20) / 150)
