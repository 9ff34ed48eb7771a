"""Search spaces (schema, validation, conversion) and a real sweep: Ray Tune + Optuna + Ray Train + DeepSpeed."""
from __future__ import annotations

import csv
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from helpers import assert_same_curve, cli, committed_step, read_scalars
from raybilevel.cli import main
from raybilevel.config import load_config
from raybilevel.errors import UserError
from raybilevel.search_space import SPACES_DIR, load_space
from raybilevel.trials import SweepDir
from raybilevel.tune import DRIVER_CPU, concurrency, prepare, reference_resources, sampler_for

SHIPPED = sorted(SPACES_DIR.glob("*.yaml"))


def test_the_issue_s_spaces_are_shipped():
    assert {p.stem for p in SHIPPED} >= {"toy", "toy_ablation_loss_sparsity", "toy_ablation_k_lam", "toy_baselines",
                                          "sd_artist_style", "sd_nsfw"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_space_validates_and_its_trials_build_configs(path):
    space = load_space(path)
    assert space.plan().startswith(f"sweep {space.name}")
    if space.is_grid:
        cells = space.grid.cells()
        assert space.num_trials == len(cells) * len(space.grid.seeds)
        configs = [space.trial_config(cell | {"seed": seed}) for cell in cells for seed in space.grid.seeds]
        assert len({(c.seed, yaml.safe_dump(c.to_dict())) for c in configs}) == space.num_trials  # all distinct
        return
    # the space's own sampler (MOTPE or NSGA-II), told results so it leaves its random start-up phase
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler_for(space.sampler))
    rng = random.Random(0)
    for _ in range(space.sampler.startup_trials + 2 * space.sampler.population):
        trial = study.ask()
        space.define_by_run(trial)
        cfg = space.trial_config(trial.params)
        for key, value in trial.params.items():  # every sampled value lands in the trial's config
            section, name = key.split(".")
            assert getattr(getattr(cfg, section), name) == value
        study.tell(trial, [rng.random(), rng.random()])


def test_conditional_keys_are_sampled_only_for_solvers_that_read_them():
    space = load_space("toy")
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        space.define_by_run(trial)
        solver = trial.params["solver.name"]
        seen.add(solver)
        assert ("solver.lam" in trial.params) == (solver == "penalty")
        assert ("solver.keep" in trial.params) == (solver == "bome")
        assert ("solver.K" in trial.params) == (solver in ("penalty", "adaptive", "alternating"))
    assert len(seen) == 7


def test_a_grid_trial_merges_its_factor_levels_and_seed():
    space = load_space("toy_ablation_loss_sparsity")
    cfg = space.trial_config({"loss": "distill", "sparsity": "s70", "seed": 2})
    assert (cfg.lower.w_diff, cfg.lower.w_out, cfg.lower.w_feat) == (0.0, 2.0, 0.1)
    assert (cfg.pruning.sparsity, cfg.seed, cfg.solver.name) == (0.7, 2, "alternating")
    grid = space.grid_param_space()
    assert grid["loss"] == {"grid_search": ["ddpm", "distill", "both"]} and grid["seed"] == {"grid_search": [0, 1, 2]}


GOOD = {"name": "s", "base": {"train": {"steps": 4}}, "reference_point": {"quality": 10.0, "concept_rate": 1.0},
        "params": {"solver.name": {"type": "choice", "values": ["alternating", "penalty"]},
                   "solver.lam": {"type": "float", "low": 1.0, "high": 100.0, "log": True,
                                  "when": {"solver.name": ["penalty"]}}}}


@pytest.mark.parametrize("change, words", [
    ({"params": {"solver.lamda": {"type": "float", "low": 1.0, "high": 2.0}}}, "'solver.lamda': unknown key; did you mean 'lam'?"),
    ({"base": {"train": {"stepz": 4}}}, "'train.stepz': unknown key; did you mean 'steps'?"),
    ({"trails": 3}, "'trails': unknown key; did you mean 'trials'?"),
    ({"params": {"solver.name": {"type": "choice", "values": ["alternating", "penalty"]},
                 "solver.lam": {"type": "float", "low": 1.0, "high": 100.0}}},
     "'params.solver.lam': solver.name ['alternating'] ignore solver.lam; add `when: {solver.name: [penalty]}`"),
    ({"params": {"solver.lam": {"type": "float", "low": 1.0, "high": 2.0, "when": {"solver.name": ["penalty"]}},
                 "solver.name": {"type": "choice", "values": ["penalty"]}}},
     "'params.solver.lam.when.solver.name': refer to a choice key listed above this one"),
    ({"params": {"solver.name": {"type": "choice", "values": ["alternating", "sgd"]}}}, "unknown solver 'sgd'"),
    ({"params": {"lower.lr": {"type": "float", "low": 0.0, "high": 1.0, "log": True}}}, "'params.lower.lr.log': a log scale needs low > 0"),
    ({"params": {"lower.lr": {"type": "floaty", "low": 0.1, "high": 1.0}}}, "'params.lower.lr.type': 'floaty': use float, int or choice"),
    ({"params": {"solver.K": {"type": "int", "low": 1.5, "high": 4}}}, "'params.solver.K': an int range needs whole-number bounds"),
    ({"grid": {"factors": {"lr": {"slow": {"lower.lr": 1e-4}}}}}, "'params': give either params (a search) or grid"),
    ({"reference_point": {"quality": 10.0}}, "'reference_point': give one value for each objective"),
    ({"base": {"eval": {"enabled": False}}}, "'base.eval.enabled': sweeps read their objectives"),
    ({"sampler": {"name": "cmaes"}}, "'sampler.name': 'cmaes': use motpe or nsga2"),
    ({"normalisation": {"scale": {"quality": "cubic"}}}, "'normalisation.scale.quality': 'cubic': use linear or log"),
    ({"normalisation": {"ideal": {"qualty": 0.0}}}, "'normalisation.ideal': ['qualty'] are not objectives (quality, concept_rate)"),
    ({"normalisation": {"nadir": {"quality": float("nan")}}}, "'normalisation.nadir.quality': nan is not a finite number"),
    ({"fresh": {"seed": 1234}}, "'fresh.seed': 1234 is the trials' eval.seed: the held-out test needs a seed no trial was selected on"),
])
def test_a_bad_space_fails_with_one_line_naming_the_key(tmp_path, change, words):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(GOOD | change, sort_keys=False))
    with pytest.raises(UserError) as caught:
        load_space(path)
    message = str(caught.value)
    assert message.startswith("search space bad.yaml: ") and words in message and "\n" not in message


def test_concurrency_fits_the_cluster():
    space = load_space("toy")
    one, two = (load_config(None, [f"ray.num_workers={n}", "ray.cpus_per_worker=0.99"]) for n in (1, 2))
    assert concurrency(space, one, {"CPU": 2.0}) == 2
    assert concurrency(space, two, {"CPU": 2.0}) == 1
    with pytest.raises(UserError, match="a trial needs"):  # 2 x 1 CPU + the driver's share cannot start on 2 CPUs
        concurrency(space, load_config(None, ["ray.num_workers=2"]), {"CPU": 2.0})
    gpus = load_config(None, ["ray.num_workers=4", "ray.use_gpu=true", "ray.cpus_per_worker=8"])
    assert concurrency(space, gpus, {"CPU": 128.0, "GPU": 8.0}) == 2


def test_the_reference_task_takes_one_trial_slot_and_no_more():
    """On the default 2-CPU plan the reference run must leave room for one trial's worker (a whole CPU left
    room for none: both first trials waited for it, 284 s each, in the 2026-12-02 default sweep)."""
    space = load_space("toy")
    cfg = space.trial_config(space.example_params())
    free = 2.0 - reference_resources(cfg)["num_cpus"] - 2 * DRIVER_CPU  # two trials' drivers are up at once
    assert free >= cfg.ray.num_workers * cfg.ray.cpus_per_worker
    gpus = load_config(None, ["ray.use_gpu=true", "ray.cpus_per_worker=8", "ray.gpus_per_worker=1"])
    assert reference_resources(gpus) == {"num_cpus": 8, "num_gpus": 1}


def test_tune_cli_dry_run_prints_the_plan_and_bad_input_exits_2(tmp_path, capsys):
    assert main(["tune", "--dry-run", "--trials", "3", "--set", "train.compute_budget=0", "--set", "train.steps=7"]) == 0
    plan = capsys.readouterr().out
    assert "sweep toy" in plan and "3 trials" in plan and "7 steps" in plan
    assert main(["tune", "--dry-run"]) == 0  # the default sweep runs at equal compute
    assert "1.382e+12 MACs (train.compute_budget)" in capsys.readouterr().out
    for args, words in [(["--space", "nope"], "--space nope: no such file or shipped space; shipped: "),
                        (["--set", "train.stepz=1"], "--set: config error at 'train.stepz'"),
                        (["--space", "toy_baselines", "--trials", "4"], "toy_baselines is an ablation grid"),
                        (["--resume", "--output", str(tmp_path)], "holds no sweep")]:
        assert main(["tune", "--dry-run", *args]) == 2
        error = capsys.readouterr().err
        assert len(error.strip().splitlines()) == 1 and words in error, error


def test_relative_files_in_a_sweep_become_absolute_and_names_stay(tmp_path, monkeypatch):
    """Tune runs each trial in its own folder, so prepare() makes every file a trial reads absolute: against
    the current folder first, then the space file's (shipped prompt files); hub ids and missing names stay."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "i2p.csv").write_text("prompt\nx\n")
    space, _ = prepare(tmp_path / "out", "sd_artist_style",
                       overrides=["world.metrics.prompt_sets=[prompts/i2p.csv, AIML-TUDA/i2p]",
                                  "world.metrics.fid_weights=prompts/i2p.csv"])
    assert space.base["world.metrics.prompt_sets"] == [str(tmp_path / "prompts" / "i2p.csv"), "AIML-TUDA/i2p"]
    assert space.base["world.metrics.fid_weights"] == str(tmp_path / "prompts" / "i2p.csv")
    assert space.base["world.concept_prompts"] == str(SPACES_DIR / "prompts" / "van_gogh.csv")
    assert space.base["world.pretrained"] == load_space(SPACES_DIR / "sd_artist_style.yaml").base["world"]["pretrained"]


TINY_SPACE = {
    "name": "tiny",
    "base": {"deterministic": True,
             "train": {"steps": 12, "checkpoint_every": 2, "log_every": 1, "eval_every": 6, "sample_every": 12},
             "solver": {"K": 2, "erase_fraction": 0.5},
             "world": {"toy_images": 128, "n_concept_images": 8, "sampling_steps": 2},
             "lower": {"batch_size": 8}, "upper": {"batch_size": 4}, "eval": {"n_samples": 32},
             "engine": {"zero_stage": 2},
             "ray": {"num_workers": 2, "cpus_per_worker": 0.99}},  # 2 workers + the driver's 0.01 on 2 cores
    "params": {"solver.name": {"type": "choice", "values": ["alternating", "penalty"]},
               "solver.lam": {"type": "float", "low": 1.0, "high": 100.0, "log": True, "when": {"solver.name": ["penalty"]}},
               "lower.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
    "reference_point": {"quality": 1e6, "concept_rate": 1.0},
    "sampler": {"name": "motpe", "startup_trials": 2, "seed": 0},
    "fresh": {"n_samples": 8},  # the held-out re-evaluation, tiny
    "trials": 3,
}


def _interrupt_once_checkpointed(command: list[str], out: Path, log_file: Path, stop: signal.Signals) -> None:
    """Run `command` until some trial has a newer committed checkpoint than when it started, then send
    `stop`. Ray's committed checkpoint, not a step folder: one appears as soon as one rank uploads, and a
    kill before Ray commits it leaves nothing to resume from."""
    before = {run: committed_step(run) for run in out.glob("trials/*/run")}
    with open(log_file, "w") as log:
        sweep = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 900  # generous: a loaded machine slows Ray's (niced) workers a lot
            while not any(committed_step(run) >= max(2, before.get(run, 0) + 1) for run in out.glob("trials/*/run")):
                assert sweep.poll() is None and time.time() < deadline, log_file.read_text()[-3000:]
                time.sleep(0.5)
            sweep.send_signal(stop)
            assert sweep.wait(timeout=300) == (0 if stop == signal.SIGINT else -signal.SIGKILL)
        finally:
            if sweep.poll() is None:  # a failed assertion must not leave the sweep (and its Ray) running
                sweep.send_signal(signal.SIGINT)
                sweep.wait(timeout=120)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # three drivers, each starting Ray: 787 s on a loaded 2-core machine
def test_an_interrupted_sweep_resumes_and_its_front_is_optunas(tmp_path):
    """`raybilevel tune` on 2 DeepSpeed workers per trial, stopped by Ctrl-C once a trial has a checkpoint,
    resumed, and that driver SIGKILLed (Ray's reaper then stops the local cluster) once a trial has a newer
    one, then resumed again: all trials finish, one from a checkpoint, and the report's Pareto front is
    exactly Optuna's best_trials read back from the sqlite storage."""
    space_file, out = tmp_path / "tiny.yaml", tmp_path / "sweep"
    space_file.write_text(yaml.safe_dump(TINY_SPACE, sort_keys=False))
    _interrupt_once_checkpointed(cli("tune", "--space", str(space_file), "--output", str(out)), out,
                                 tmp_path / "first.log", signal.SIGINT)
    assert "interrupted; continue with: raybilevel tune --resume" in (tmp_path / "first.log").read_text()
    _interrupt_once_checkpointed(cli("tune", "--resume", "--output", str(out)), out, tmp_path / "second.log",
                                 signal.SIGKILL)

    resumed = subprocess.run(cli("tune", "--resume", "--output", str(out)), capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "sweep tiny: 3 of 3 trials finished" in resumed.stdout
    assert f"tensorboard --logdir {out / 'trials'}" in resumed.stdout

    records = SweepDir(out).records()
    assert len(records) == 3 and {r.status for r in records} <= {"done", "failed"}
    assert all("not finite" in r.error for r in records if r.status == "failed")  # trained, but judged nothing
    resumed_from = [json.loads((r.run_dir / "metrics.json").read_text())["resumed_from"] for r in records]
    assert sorted(resumed_from)[0] == 0 and sorted(resumed_from)[-1] >= 2  # one trial continued from a checkpoint
    for record in records:
        metrics = json.loads((record.run_dir / "metrics.json").read_text())
        assert metrics["world_size"] == 2
        assert [json.loads(line)["step"] for line in (record.run_dir / "evals.jsonl").read_text().splitlines()] == [6, 12]
        assert [json.loads(line)["step"] for line in (record.run_dir / "scalars.jsonl").read_text().splitlines()] == list(range(12))

    # the trial that continued from its checkpoint logs what an uninterrupted 2-rank run of its config logs
    continued = max(records, key=lambda r: json.loads((r.run_dir / "metrics.json").read_text())["resumed_from"])
    reference = tmp_path / "uninterrupted"
    plain = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                            "-m", "raybilevel", "train", "--config", str(continued.run_dir / "config.yaml"),
                            "--output", str(reference), "--set", "eval.enabled=false"],
                           capture_output=True, text=True, timeout=900)
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert_same_curve(read_scalars(continued.run_dir), read_scalars(reference), rel=1e-6)

    study = optuna.load_study(study_name="tiny", storage=SweepDir(out).optuna_url)
    assert len(study.trials) == 3
    done = {r.trial_id for r in records if r.status == "done"}
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) == len(done) >= 1
    front = json.loads((out / "pareto.json").read_text())["front"]
    assert sorted((list(f["objectives"].values()), sorted(f["params"].items())) for f in front) == \
        sorted((t.values, sorted(t.params.items())) for t in study.best_trials)
    assert len((out / "hypervolume.csv").read_text().splitlines()) == 1 + 3
    # the teacher, the step-0 student and a distill-only run of the base config, once, as references on the plot
    references = json.loads((out / "references.json").read_text())["points"]
    assert set(references) == {"teacher", "student_step_0", "distill_only"}
    assert all(0.0 <= point["attribute_accuracy"] <= 1.0 for point in references.values())
    assert load_config(out / "references" / "distill_only" / "config.yaml").solver.name == "distill_only"
    assert references["distill_only"]["budget"]["upper_fb"] == 0 and references["distill_only"]["steps"] == 12
    assert set(json.loads((out / "pareto.json").read_text())["references"]) <= {
        "teacher", "pruned student, before fine-tuning", "distill-only, base config"}
    assert '<img class="samples"' in (out / "report.html").read_text()
    # the teacher's grid from the noise and prompts of the trials' grids, beside each front trial's
    assert (out / "references" / "teacher_samples.png").is_file()
    assert (out / "report.html").read_text().count('alt="teacher sample grid"') == len(front)
    # the held-out test: the references and every front trial with a saved student, on the fresh seed
    summary = json.loads((out / "pareto.json").read_text())
    fresh = {row["trial_id"]: row for row in summary["fresh"]}
    assert {"teacher", "student_step_0", "distill_only"} <= set(fresh) and {f["trial_id"] for f in front} <= set(fresh)
    assert {(row["eval_seed"], row["n_samples"]) for row in fresh.values()} == {(4321, 8)}
    assert set(summary["normalised"]) >= {"ideal", "nadir", "scale", "hypervolume"}
    assert "re-evaluating the front and the references on fresh eval seed 4321" in resumed.stdout


HALVING_SPACE = TINY_SPACE | {
    "name": "halving",
    "base": TINY_SPACE["base"] | {"engine": {"zero_stage": 0}, "ray": {"num_workers": 1, "cpus_per_worker": 0.99},
                                  "train": {"steps": 12, "checkpoint_every": 6, "log_every": 1, "sample_every": 12}},
    "scheduler": {"name": "pareto_halving", "grace": 0.25, "reduction": 3},
    "trials": 5, "max_concurrent": 2,  # two at a time on 2 cores: a stopped trial's CPU must come back
}


@pytest.mark.slow
def test_pareto_halving_stops_trials_at_rungs_and_stopped_trials_count_on_the_front(tmp_path):
    """A search under pareto_halving (rungs at 25% and 75% of each run; the best third continue), two trials
    at a time: every stop is in scheduler.jsonl with its reason, the trial is 'stopped' with its last
    evaluation as objectives, its run ends itself at exactly that step (no export, no final evaluation, so
    Ray Train frees its CPU: a killed one kept it and the sweep stalled), Optuna completed it with those
    values, and the front (== Optuna's) counts it."""
    space_file, out = tmp_path / "halving.yaml", tmp_path / "sweep"
    space_file.write_text(yaml.safe_dump(HALVING_SPACE, sort_keys=False))
    result = subprocess.run(cli("tune", "--space", str(space_file), "--output", str(out)), capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    decisions = [json.loads(line) for line in (out / "scheduler.jsonl").read_text().splitlines()]
    records = {r.trial_id: r for r in SweepDir(out).records()}
    stopped = [d for d in decisions if d["stop"]]
    assert stopped, decisions  # 4 trials, keep a third: someone is stopped
    assert {d["rung"] for d in decisions} <= {0.25, 0.75} and decisions[0]["stop"] is False
    for decision in stopped:
        record = records[decision["trial"]]
        assert record.status == "stopped" and record.objectives == decision["objectives"]
        assert record.error == decision["reason"] and record.error.startswith(f"stopped at {decision['rung']:.0%}")
        assert f"trial {record.trial_id} {decision['reason']}" in result.stdout
        evals = [json.loads(line) for line in (record.run_dir / "evals.jsonl").read_text().splitlines()]
        assert evals[-1]["step"] == decision["step"]
        metrics = json.loads((record.run_dir / "metrics.json").read_text())
        assert metrics["stopped_at"] == decision["step"] == metrics["compute"]["steps"]
        assert {name: metrics[name] for name in decision["objectives"]} == decision["objectives"]
        assert not (record.run_dir / "student").exists()
    assert {r.status for r in records.values()} <= {"done", "stopped", "failed"}
    for record in records.values():
        if record.status == "done":  # judged at both rungs (3 and 9 of 12 steps), then evaluated at the end
            evals = [json.loads(line) for line in (record.run_dir / "evals.jsonl").read_text().splitlines()]
            assert [e["step"] for e in evals] == [3, 9, 12] and [e.get("progress") for e in evals] == [0.25, 0.75, None]
    study = optuna.load_study(study_name="halving", storage=SweepDir(out).optuna_url)
    told = {tuple(t.values) for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE}
    assert all(tuple(d["objectives"].values()) in told for d in stopped if None not in d["objectives"].values())
    front = json.loads((out / "pareto.json").read_text())["front"]
    assert sorted(list(f["objectives"].values()) for f in front) == sorted(t.values for t in study.best_trials)
    with open(out / "trials.csv") as f:  # a stopped trial's time is split too: it counts in the sweep's share
        rows = list(csv.DictReader(f))
    assert sorted(row["status"] for row in rows) == sorted(r.status for r in records.values())
    assert all(0 < float(row["work_share"]) < 1 for row in rows if row["status"] in ("done", "stopped"))
    assert all(row["quality_ci_low"] != "" for row in rows if row["status"] == "stopped")  # its rung's intervals
    assert "Early stopping (pareto_halving)" in (out / "report.html").read_text()
    assert f"stopped early (pareto_halving; reasons in {out / 'scheduler.jsonl'})" in result.stdout


GRID_SPACE = {
    "name": "grid",
    "base": TINY_SPACE["base"] | {"train": {"steps": 4, "checkpoint_every": 2, "eval_every": 2},
                                  "engine": {"zero_stage": 0}, "ray": {"num_workers": 1, "cpus_per_worker": 0.99}},
    "grid": {"factors": {"student": {"pruned": {"pruning.method": "channels"},
                                     "missing": {"pruning.method": "load", "pruning.path": "/nonexistent-student"}}},
             "seeds": [0]},
    "reference_point": {"quality": 1e6, "concept_rate": 1.0},
    "scheduler": {"name": "pareto_halving", "grace": 0.5, "reduction": 2},  # grids stop early too
    "fresh": {"enabled": False},
}


@pytest.mark.slow
def test_a_grid_sweep_runs_every_cell_and_reports_a_failed_trial_in_one_line(tmp_path):
    """Tune's grid search, two 1-worker trials at once; the cell whose student folder does not exist fails
    on the workers (what validation can refuse, e.g. an unknown concept, never starts), and its reason
    reaches the CLI, trials.csv and the report as one line."""
    space_file, out = tmp_path / "grid.yaml", tmp_path / "sweep"
    space_file.write_text(yaml.safe_dump(GRID_SPACE, sort_keys=False))
    result = subprocess.run(cli("tune", "--space", str(space_file), "--output", str(out)), capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "sweep grid: 2 of 2 trials finished, 1 failed" in result.stdout
    (failure,) = [line for line in result.stdout.splitlines() if line.startswith("  failed ")]
    assert "/nonexistent-student" in failure

    records = {r.params["student"]: r for r in SweepDir(out).records()}
    assert records["missing"].status == "failed" and "/nonexistent-student" in records["missing"].error
    assert records["pruned"].status == "done" and not (out / "optuna.db").exists()  # a grid needs no Optuna
    with open(out / "ablation.csv") as f:
        cells = {row["student"]: row for row in csv.DictReader(f)}
    assert cells["pruned"]["n"] == "1" and cells["missing"]["n"] == "0"
    assert float(cells["pruned"]["quality_mean"]) == records["pruned"].objectives["quality"]
    with open(out / "trials.csv") as f:  # the finished trial's time, split; the failed one has no run to split
        times = {row["student"]: row for row in csv.DictReader(f)}
    assert 0 < float(times["pruned"]["work_share"]) < 1 and times["missing"]["work_share"] == ""
    assert float(times["pruned"]["startup_s"]) > 0 and float(times["pruned"]["total_s"]) >= float(times["pruned"]["solver_iterations_s"])
    assert json.loads((out / "pareto.json").read_text())["time_split"]["trials"] == 1
    (decision,) = SweepDir(out).scheduler_decisions()  # the pruned cell at its rung; the other failed first
    assert decision["trial"] == records["pruned"].trial_id and decision["step"] == 2 and not decision["stop"]
    assert "/nonexistent-student" in (out / "report.html").read_text()
