"""Benchmarks' own code: the GPU throughput tiny mode (the same path on a CPU) and the teacher sampler choice."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from raybilevel.worlds.toy import data

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_throughput_tiny_writes_a_row_per_cell_with_positive_numbers(tmp_path):
    result = subprocess.run(
        [sys.executable, "benchmarks/gpu_throughput.py", "--size", "tiny", "--solvers", "distill_only", "penalty",
         "--zero", "0", "--precisions", "fp32", "--checkpointing", "on", "--batch", "4", "--upper-batch", "2",
         "--K", "2", "--warmup", "1", "--steps", "2", "--results", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((tmp_path / "gpu_throughput_tiny.json").read_text())["rows"]
    assert [(r["solver"], r["zero"], r["precision"], r["checkpointing"], r["status"]) for r in rows] == [
        ("distill_only", 0, "fp32", True, "ok"), ("penalty", 0, "fp32", True, "ok")]
    for row in rows:
        assert row["timed_steps"] == 2 and row["world_size"] == 1
        assert row["seconds_per_step"] > 0 and row["peak_rss_gib"] > 0
        assert row["samples_per_s"] == pytest.approx(4 / row["seconds_per_step"])  # lower batch 4, 1 process
        assert row["params"]["student"] == row["params"]["teacher"] > 0  # pruning.method=none
        assert row["attention"] == ["AttnProcessor2_0"]
    table = (tmp_path / "gpu_throughput_tiny.md").read_text()
    assert table.count("| ok |") == 2


def _load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_teacher_sampler_metrics_match_a_direct_count():
    sampler = _load_benchmark("teacher_sampler")
    items = [data.Item("circle", "red", "striped"), data.Item("square", "red", "striped"),
             data.Item("circle", "blue", "plain"), data.Item("square", "blue", "outline")]
    wanted = {a: np.array([data.label_index(a, item.value(a)) for item in items]) for a in data.ATTRIBUTES}
    predicted = {a: v.copy() for a, v in wanted.items()}
    predicted["style"][1] = data.label_index("style", "plain")  # concept prompt: stripes missing
    predicted["colour"][2] = data.label_index("colour", "green")  # other prompt: wrong colour
    predicted["style"][3] = data.label_index("style", "striped")  # other prompt: stripes leak in
    metrics = sampler.teacher_metrics(predicted, wanted, items, "striped")
    # other prompts: neither sample has every attribute right; the one with its colour and shape right is striped
    assert metrics == {"attribute_accuracy": 0.0, "concept_rate": 0.5, "concept_rate_floor": 1.0}
    assert sampler.worst_margin({"striped": metrics}) == pytest.approx(-0.95)


def test_teacher_sampler_refuses_the_eval_seed_and_records_its_choice(tmp_path):
    command = [sys.executable, "benchmarks/teacher_sampler.py", "--guidance", "1.0", "1.25", "--steps", "2",
               "--per-item", "1", "--threads", "1", "--results", str(tmp_path)]
    refused = subprocess.run(command + ["--seed", "1234"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "--seed: 1234 is the evaluation seed" in refused.stderr
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "teacher_sampler.json").read_text())
    assert [(c["guidance"], c["steps"]) for c in report["cells"]] == [(1.0, 2), (1.25, 2)]
    best = max(report["cells"], key=lambda c: c["worst_margin"])
    assert report["chosen"] == {"guidance": best["guidance"], "steps": best["steps"]}
    for cell in report["cells"]:
        assert set(cell["metrics"]) == {"striped", "cross"}
        for values in cell["metrics"].values():
            assert all(0 <= v <= 1 for v in values.values())
    assert (tmp_path / "teacher_sampler.md").read_text().count("\n| 1.") == 2


def test_early_stopping_reads_hypervolume_against_the_clock_from_the_records(tmp_path):
    """Each point counts from its record's end (stopped trials with their last evaluation); the clock starts
    at the first trial's start; a failed trial moves the clock, not the hypervolume."""
    import shutil

    from raybilevel.search_space import SPACES_DIR
    from raybilevel.trials import SweepDir, TrialRecord

    benchmark = _load_benchmark("early_stopping")
    sweep = SweepDir(tmp_path / "sweep")
    sweep.root.mkdir()
    shutil.copy(SPACES_DIR / "toy.yaml", sweep.space_file)  # reference point (10, 1)
    for name, status, started, finished, point in [("a", "done", 100.0, 160.0, (1.0, 0.5)),
                                                    ("b", "stopped", 110.0, 130.0, (5.0, 0.2)),
                                                    ("c", "failed", 120.0, 200.0, None)]:
        record = TrialRecord(name, {}, {}, "bome", started=started, folder=sweep.trial_dir(name))
        record.finish(status, dict(zip(("quality", "concept_rate"), point)) if point else {})
        record.started, record.finished = started, finished
        record.save()
    curve, wall = benchmark.hypervolume_over_time(sweep.root)
    b_alone = (10 - 5.0) * (1 - 0.2)
    both = b_alone + (10 - 1.0) * (1 - 0.5) - (10 - 5.0) * (1 - 0.5)  # union of the two boxes
    assert [t for t, _ in curve] == [30.0, 60.0, 100.0] and wall == 100.0
    assert [hv for _, hv in curve] == pytest.approx([b_alone, both, both])
    assert benchmark.time_to_reach(curve, both) == 60.0 and benchmark.time_to_reach(curve, both + 1) is None


def test_early_stopping_names_sweeps_and_results_after_non_default_scheduler_settings():
    """A second setting must never read back the first one's finished sweeps as its own."""
    from argparse import Namespace

    benchmark = _load_benchmark("early_stopping")
    default = Namespace(grace=0.25, reduction=2.0, trials_halving=16, trials_full=8)
    second = Namespace(grace=0.5, reduction=3.0, trials_halving=16, trials_full=8)
    longer = Namespace(grace=0.25, reduction=2.0, trials_halving=48, trials_full=32)
    assert benchmark.halving_name(default) == benchmark.folder_name("halving", default) == "halving"
    assert benchmark.folder_name("full", default) == "full" and benchmark.results_stem(default) == "early_stopping"
    assert benchmark.halving_name(second) == "halving_g0.5_r3_t16" and benchmark.folder_name("full", second) == "full"
    assert benchmark.results_stem(second) == "early_stopping_g0.5_r3_t16"
    assert benchmark.folder_name("full", longer) == "full_t32" and benchmark.folder_name("halving", longer) == "halving_g0.25_r2_t48"
    assert benchmark.results_stem(longer) == "early_stopping_g0.25_r2_t48_f32"


def test_early_stopping_accumulates_seeds_in_its_results_file_and_refuses_another_settings(tmp_path):
    """A seed measured in an earlier session (its sweeps gone with that session's runs/) stays in the
    summary; a file written under other settings is never merged."""
    import json
    from argparse import Namespace

    benchmark = _load_benchmark("early_stopping")
    opts = Namespace(grace=0.25, reduction=2.0, trials_halving=48, trials_full=32)
    assert benchmark.recorded_rows(tmp_path / "absent.json", opts) == {}

    def row(share):
        return {"share_of_full_wall": share}

    path = tmp_path / "results.json"
    settings = {"trials_full": 32, "trials_halving": 48, "grace": 0.25, "reduction": 2.0, "seeds": [0, 2]}
    path.write_text(json.dumps({"settings": settings, "seeds": {"0": row(1.0), "2": row(None)}}))
    rows = benchmark.recorded_rows(path, opts)
    rows[1] = row(0.5)
    summary = benchmark.summarise(rows)
    assert list(summary["seeds"]) == [0, 1, 2] and summary["never_reached"] == 1
    assert summary["share_mean"] == pytest.approx(0.75)
    assert summary["share_ci95_halfwidth"] == pytest.approx(12.706 * 0.5 / 2 ** 0.5 / 2 ** 0.5, rel=1e-3)
    other = Namespace(grace=0.5, reduction=2.0, trials_halving=48, trials_full=32)
    with pytest.raises(SystemExit, match="settings.grace is 0.25, this run's is 0.5"):
        benchmark.recorded_rows(path, other)


def test_tuned_baselines_tunes_each_family_alone_and_selects_its_front(tmp_path):
    """Each family's selection space searches only its own params; its selected configs are its front,
    capped greedily by hypervolume, and carry the family's solver into the evaluation grid."""
    from argparse import Namespace

    import yaml

    from raybilevel.search_space import load_space
    from raybilevel.trials import TrialRecord

    benchmark = _load_benchmark("tuned_baselines")
    opts = Namespace(trials=8, eval_seeds=[1, 2, 3])
    searched = {}
    for family in ("two_stage", "bome", "adaptive"):
        (tmp_path / f"{family}.yaml").write_text(yaml.safe_dump(benchmark.family_space(family, opts)))
        space = load_space(tmp_path / f"{family}.yaml")
        assert space.trial_config({}).solver.name == family and space.sampler.seed == 0 and space.trials == 8
        searched[family] = set(space.params)
    shared = {"lower.lr", "upper.lr", "lower.w_feat"}
    assert searched == {"two_stage": shared, "bome": shared | {"solver.keep"}, "adaptive": shared | {"solver.K"}}

    def record(name, quality, concept):
        return TrialRecord(name, {}, {"solver.keep": 0.1}, "bome", status="done",
                           objectives={"quality": quality, "concept_rate": concept})

    points = [record("a", 0.2, 0.3), record("b", 0.1, 0.5), record("c", 0.3, 0.6), record("d", 0.5, 0.1),
              record("e", 0.05, 0.9), TrialRecord("f", {}, {}, "bome", status="failed")]
    chosen = benchmark.select(points, ["quality", "concept_rate"], ["min", "min"], [10.0, 1.0])
    assert [r.trial_id for r in chosen] == ["d", "a"]  # c is dominated by a; then b, then e add least
    grid = load_space(_write(tmp_path / "eval.yaml", benchmark.evaluation_space({"bome": chosen}, opts)))
    assert grid.num_trials == 6
    config = grid.trial_config({"config": "bome_1", "seed": 2})
    assert (config.solver.name, config.solver.keep, config.seed) == ("bome", 0.1, 2)


def test_tuned_baselines_scores_each_family_by_its_hypervolume_per_evaluation_seed(tmp_path):
    from argparse import Namespace

    from raybilevel.trials import SweepDir, TrialRecord

    benchmark = _load_benchmark("tuned_baselines")
    def chosen(name, solver, overrides):  # a selected trial, with its selection-seed objectives
        return TrialRecord(name, {}, overrides, solver, status="done", objectives={"quality": 0.3, "concept_rate": 0.3})

    selected = {"two_stage": [chosen("t", "two_stage", {"lower.lr": 1e-4})],
                "bome": [chosen("b0", "bome", {"solver.keep": 0.2}), chosen("b1", "bome", {"solver.keep": 0.5})]}
    sweep = SweepDir(tmp_path / "evaluate")
    sweep.root.mkdir()
    _write(sweep.space_file, benchmark.evaluation_space(selected, Namespace(eval_seeds=[1, 2])))
    results = {("two_stage_0", 1): (1.0, 0.5), ("two_stage_0", 2): (2.0, 0.5),
               ("bome_0", 1): (1.0, 0.2), ("bome_0", 2): (1.0, 0.4), ("bome_1", 1): (0.5, 0.6), ("bome_1", 2): None}
    for (cell, seed), point in results.items():
        trial = TrialRecord(f"{cell}_{seed}", {"config": cell, "seed": seed}, {}, cell.rsplit("_", 1)[0],
                            folder=sweep.trial_dir(f"{cell}_{seed}"))
        trial.finish("done" if point else "failed", dict(zip(("quality", "concept_rate"), point)) if point else {})
    summary = benchmark.summarise(selected, sweep, [1, 2])
    two_stage = [9.0 * 0.5, 8.0 * 0.5]
    bome = [9.0 * 0.8 + (1.0 - 0.5) * 0.4, 9.0 * 0.6]  # seed 1: bome_1 adds the strip quality 0.5-1.0 above concept 0.6
    assert summary["families"]["two_stage"]["hv_per_seed"] == pytest.approx(two_stage)
    assert summary["families"]["bome"]["hv_per_seed"] == pytest.approx(bome)
    difference = summary["differences"]["bome - two_stage"]
    assert difference["per_seed"] == pytest.approx([b - t for b, t in zip(bome, two_stage)])
    assert summary["configs"]["bome_1"]["seeds_valid"] == 1 and summary["configs"]["bome_1"]["mean"]["quality"] == 0.5
    assert "| bome - two_stage |" in benchmark.markdown(summary, Namespace(trials=8))


def _write(path: Path, data: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_a_sweep_counts_as_finished_only_with_every_trial_ended_and_its_report(tmp_path):
    """What early_stopping and tuned_baselines reuse instead of rerunning (SweepDir.finished)."""
    from raybilevel.trials import SweepDir, TrialRecord

    sweep = SweepDir(tmp_path / "sweep")
    assert not sweep.finished(1)  # no sweep at all
    sweep.root.mkdir()
    sweep.space_file.write_text("name: x\n")
    record = TrialRecord("a", {}, {}, "bome", folder=sweep.trial_dir("a"))
    record.save()
    (sweep.root / "report.html").write_text("<html></html>")
    assert not sweep.finished(1)  # still running
    record.finish("stopped", {"quality": 1.0, "concept_rate": 0.5})
    assert sweep.finished(1) and not sweep.finished(2)
    (sweep.root / "report.html").unlink()
    assert not sweep.finished(1)


def test_sweep_efficiency_shortens_by_compute_and_counts_trials_to_random_search():
    """Shortened trials get a fraction of the space's MACs; the hypervolume curve skips failed trials; the
    table's spread is the 95% t half-width; trials-to-target counts from 1."""
    from raybilevel.metrics import t_halfwidth
    from raybilevel.search_space import load_space

    benchmark = _load_benchmark("sweep_efficiency")
    space = load_space("toy")
    budget = space.trial_config(space.example_params()).train.compute_budget
    key, value = benchmark.shortened_length(space, 0.25).split("=")
    assert key == "train.compute_budget" and float(value) == pytest.approx(budget / 4, rel=1e-5)

    trials = [{"values": [5.0, 0.5]}, {"values": None}, {"values": [1.0, 0.8]}]
    curve = benchmark.hypervolume_curve(trials, space, [10.0, 1.0])
    assert curve == pytest.approx([2.5, 2.5, 2.5 + (10 - 1.0) * (1 - 0.8) - (10 - 5.0) * (1 - 0.8)])
    assert benchmark.trials_to_reach(curve, 2.5) == 1 and benchmark.trials_to_reach(curve, 9.0) is None

    random_curves = {0: [1.0] * 31 + [4.0], 1: [1.0] * 31 + [6.0]}
    summary = benchmark.summarise({"random": random_curves, "motpe": {0: [2.0, 5.0], 1: [2.0, 4.0]}})
    assert summary["random_32_trial_hv_mean"] == 5.0
    assert summary["table"]["random"]["hv@32"] == pytest.approx((5.0, t_halfwidth([4.0, 6.0])))
    assert summary["table"]["motpe"]["trials_to_random32"] == {0: 2, 1: None}
    assert summary["table"]["motpe"]["mean_curve_trials_to_random32"] is None  # mean curve 2.0, 4.5
