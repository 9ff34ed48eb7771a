"""The scoring protocol (scoring.py, report_scores.py): the normalisation box, the normalised hypervolume, the
endpoint and the fresh re-evaluation's summary, each against a direct computation, on hand-made sweeps."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import yaml

from raybilevel import pareto
from raybilevel.report import write_report
from raybilevel.report_scores import FRESH_DIR
from raybilevel.schedulers.pareto_halving import ParetoHalving
from raybilevel.scoring import EndpointSpec, NormalisationSpec, endpoint, resolve_box
from raybilevel.search_space import SearchSpace
from raybilevel.trials import SweepDir, TrialRecord

OBJECTIVES = {"quality": "min", "concept_rate": "min"}
RAW_REFERENCE = {"quality": 10.0, "concept_rate": 1.0}
TEACHER = {"quality": 0.01, "quality_ci": [0.009, 0.011], "concept_rate": 0.93, "concept_rate_floor": 0.02}
DISTILL = {"quality": 0.25, "quality_ci": [0.25 - 1.959964 * 0.02, 0.25 + 1.959964 * 0.02], "concept_rate": 0.62}
REFERENCES = {"teacher": TEACHER, "distill_only": DISTILL, "student_step_0": {"quality": 9.5, "concept_rate": 0.2}}


def test_a_box_maps_ideal_to_0_and_nadir_to_1_for_min_max_and_log_axes():
    box = pareto.Box(ideal=(0.01, 0.9), nadir=(0.25, 0.5), log=(True, False))
    assert box.normalise((0.01, 0.9)) == pytest.approx((0.0, 0.0))
    assert box.normalise((0.25, 0.5)) == pytest.approx((1.0, 1.0))
    # log axis: the geometric midpoint is halfway; a max axis (ideal above nadir) counts a drop as worse
    assert box.normalise((0.05, 0.7)) == pytest.approx((math.log(5) / math.log(25), 0.5))
    assert box.normalise((0.0, 0.7))[0] == math.inf
    assert box.reference == (1.1, 1.1)
    with pytest.raises(ValueError, match="ideal != nadir"):
        pareto.Box(ideal=(1.0,), nadir=(1.0,), log=(False,))


def test_the_normalised_hypervolume_is_the_area_in_box_units():
    box = pareto.Box(ideal=(0.01, 0.02), nadir=(0.25, 0.62), log=(False, False), allowance=0.1)
    points = [(0.05, 0.5), (0.2, 0.1), (0.3, 0.05), (5.0, 0.0)]  # the last is far past the allowance in quality
    scaled = [((q - 0.01) / 0.24, (c - 0.02) / 0.6) for q, c in points]
    # by hand: two staircase steps inside (1.1, 1.1); the third point's quality 1.208 is outside
    (x1, y1), (x2, y2) = sorted(scaled[:2])
    expected = (1.1 - x1) * (1.1 - y1) + (1.1 - x2) * (y1 - y2)
    assert box.hypervolume(points) == pytest.approx(expected, rel=1e-12)
    assert box.hypervolume(points[:2]) == pytest.approx(expected, rel=1e-12)


def test_the_box_comes_from_the_teacher_its_floor_and_the_distill_only_reference():
    resolved = resolve_box(NormalisationSpec(), OBJECTIVES, RAW_REFERENCE, REFERENCES)
    assert resolved.box.ideal == (0.01, 0.02) and resolved.box.nadir == (0.25, 0.62)  # concept: the floor, not 0.93
    assert resolved.source == {"quality": "teacher / distill_only", "concept_rate": "teacher / distill_only"}
    fixed = resolve_box(NormalisationSpec(ideal={"concept_rate": 0.0}, scale={"quality": "log"}), OBJECTIVES,
                        RAW_REFERENCE, REFERENCES)
    assert fixed.box.ideal == (0.01, 0.0) and fixed.box.log == (True, False) and fixed.source["concept_rate"] == "space / distill_only"
    # a max objective the distill-only run did not lose: its nadir is the space's reference point
    retain = resolve_box(NormalisationSpec(), {"quality": "min", "retain": "max"}, {"quality": 10.0, "retain": 0.0},
                         {"teacher": TEACHER | {"retain": 0.9}, "distill_only": DISTILL | {"retain": 0.95}})
    assert retain.nadir["retain"] == 0.0 and retain.source["retain"] == "teacher / reference_point"
    missing = resolve_box(NormalisationSpec(), OBJECTIVES, RAW_REFERENCE, {})
    assert missing.box is None and "no ideal yet" in missing.problem
    payload = resolved.as_json([(0.05, 0.5)])
    assert payload["reference_point"] == {"quality": 1.1, "concept_rate": 1.1}
    assert payload["hypervolume"] == pytest.approx(resolved.box.hypervolume([(0.05, 0.5)]))


def test_the_endpoint_is_the_lowest_rate_within_twice_the_quality_noise_of_distill_only():
    candidates = [{"trial_id": "a", "objectives": {"quality": 0.26, "concept_rate": 0.30}, "intervals": {"concept_rate": [0.2, 0.4]}},
                  {"trial_id": "b", "objectives": {"quality": 0.30, "concept_rate": 0.05}, "intervals": {}},
                  {"trial_id": "c", "objectives": {"quality": 0.20, "concept_rate": 0.40}, "intervals": {}}]
    found = endpoint(EndpointSpec(), OBJECTIVES, DISTILL, candidates)
    # the noise is one standard error from the 95% interval: 0.02; delta = 0.04; threshold 0.29 excludes b
    assert found["quality_noise"] == pytest.approx(0.02) and found["delta"] == pytest.approx(0.04)
    assert found["threshold"] == pytest.approx(0.29) and found["n_eligible"] == 2
    assert (found["trial_id"], found["concept_value"], found["concept_ci"]) == ("a", 0.30, [0.2, 0.4])
    assert endpoint(EndpointSpec(delta=0.1), OBJECTIVES, DISTILL, candidates)["trial_id"] == "b"
    assert endpoint(EndpointSpec(delta=0.001), OBJECTIVES, DISTILL, candidates[:2])["trial_id"] is None
    assert "no distill-only quality" in endpoint(EndpointSpec(), OBJECTIVES, {}, candidates)["problem"]


def _sweep(root, fresh_values=None):
    """A finished search written by hand: three trials, the references, optionally fresh re-evaluations."""
    space = SearchSpace(name="s", params={"lower.lr": {"type": "float", "low": 1e-5, "high": 1e-3}},
                        reference_point=RAW_REFERENCE)
    sweep = SweepDir(root)
    root.mkdir()
    sweep.space_file.write_text(yaml.safe_dump(dataclasses.asdict(space), sort_keys=False))
    trials = {"t1": (0.05, 0.5), "t2": (0.2, 0.1), "t3": (0.4, 0.6)}
    for i, (name, (quality, rate)) in enumerate(trials.items()):
        record = TrialRecord(name, {"lower.lr": 1e-4}, {}, "bome", started=100.0 + i, folder=sweep.trial_dir(name))
        record.run_dir.mkdir(parents=True)
        metrics = {"quality": quality, "concept_rate": rate, "quality_ci": [quality - 0.01, quality + 0.01],
                   "concept_rate_ci": [rate - 0.05, rate + 0.05]}
        (record.run_dir / "metrics.json").write_text(json.dumps(metrics))
        record.finish("done", {"quality": quality, "concept_rate": rate})
    (root / "references.json").write_text(json.dumps({"config": {}, "points": REFERENCES}))
    for name, kind, (quality, rate) in fresh_values or []:
        metrics = {"quality": quality, "concept_rate": rate, "quality_ci": [quality - 0.02, quality + 0.02],
                   "concept_rate_floor": 0.01, "concept_rate_ci": [rate - 0.05, rate + 0.05]}
        (root / FRESH_DIR).mkdir(exist_ok=True)
        (root / FRESH_DIR / f"{name}.json").write_text(json.dumps(
            {"name": name, "kind": kind, "eval_seed": 4321, "n_samples": 256, "metrics": metrics}))
    return sweep, trials


def test_pareto_json_holds_the_normalised_hypervolume_and_the_endpoint(tmp_path):
    sweep, trials = _sweep(tmp_path / "sweep")
    report = write_report(sweep.root)
    summary = json.loads((sweep.root / "pareto.json").read_text())
    box = pareto.Box(ideal=(0.01, 0.02), nadir=(0.25, 0.62), log=(False, False))
    front = [trials["t1"], trials["t2"]]
    assert {r.trial_id for r in report.front} == {"t1", "t2"}
    assert summary["normalised"]["hypervolume"] == pytest.approx(box.hypervolume(front), rel=1e-12)
    assert summary["normalised"]["ideal"] == {"quality": 0.01, "concept_rate": 0.02}
    assert summary["normalised"]["nadir"] == {"quality": 0.25, "concept_rate": 0.62}
    assert summary["normalised"]["scale"] == {"quality": "linear", "concept_rate": "linear"}
    assert summary["hypervolume"] == pytest.approx(pareto.hypervolume(list(trials.values()), (10.0, 1.0), ["min", "min"]))
    # delta 0.04 from the distill-only interval: t1 (0.05) and t2 (0.2) qualify, t2 erases most
    assert summary["endpoint"]["trial_id"] == "t2" and summary["endpoint"]["concept_ci"] == pytest.approx([0.05, 0.15])
    history = (sweep.root / "hypervolume.csv").read_text().splitlines()
    assert history[0] == "finished,trial_id,normalised_hypervolume,hypervolume"
    assert float(history[1].split(",")[2]) == pytest.approx(box.hypervolume([trials["t1"]]))
    page = (sweep.root / "report.html").read_text()
    assert "normalised hypervolume <b>" in page and "Endpoint" in page and "max-width:1240px" in page


def test_fresh_values_recompute_the_front_the_box_and_the_endpoint(tmp_path):
    fresh = [("teacher", "reference", (0.012, 0.9)), ("distill_only", "reference", (0.27, 0.6)),
             ("t1", "trial", (0.06, 0.55)), ("t2", "trial", (0.5, 0.3))]
    sweep, _ = _sweep(tmp_path / "sweep", fresh)
    write_report(sweep.root)
    summary = json.loads((sweep.root / "pareto.json").read_text())
    rows = {row["trial_id"]: row for row in summary["fresh"]}
    assert set(rows) == {"teacher", "distill_only", "t1", "t2"} and rows["t2"]["solver"] == "bome"
    assert rows["t1"]["quality"] == 0.06 and rows["t1"]["eval_seed"] == 4321 and rows["t1"]["n_samples"] == 256
    recomputed = summary["fresh_summary"]
    assert sorted(recomputed["front"]) == ["t1", "t2"]
    # the box from the fresh references: ideal (0.012, floor 0.01), nadir (0.27, 0.6)
    box = pareto.Box(ideal=(0.012, 0.01), nadir=(0.27, 0.6), log=(False, False))
    assert recomputed["normalised"]["hypervolume"] == pytest.approx(box.hypervolume([(0.06, 0.55), (0.5, 0.3)]))
    # fresh delta: 2 x 0.02 / 1.96 x ... the fresh distill-only interval is +-0.02: se 0.0102, delta 0.0204
    assert recomputed["endpoint"]["delta"] == pytest.approx(2 * 0.04 / (2 * 1.959964))
    assert recomputed["endpoint"]["trial_id"] == "t1"  # t2 lost quality on the fresh seed
    assert "Fresh-seed re-evaluation" in (sweep.root / "report.html").read_text()


def test_pareto_halving_ranks_in_the_box_once_the_references_exist(tmp_path):
    """a keeps the teacher's quality, b erases a little more. Against the raw point (10, 1) the concept axis
    decides (exclusive areas 0.088 vs 0.976): b continues. In box units a's quality gain counts (0.122 vs 0.024):
    b is stopped. Each decision records which box it used."""
    box = pareto.Box(ideal=(0.01, 0.02), nadir=(0.25, 0.62), log=(False, False))
    a, b = (0.02, 0.6), (0.24, 0.5)
    assert pareto.hypervolume_contributions([box.normalise(a), box.normalise(b)], box.reference) == pytest.approx([0.12222, 0.02361], abs=1e-5)
    assert pareto.hypervolume_contributions([a, b], (10.0, 1.0)) == pytest.approx([0.088, 0.976])
    for provider, label, b_stops in ((None, "raw", False), (lambda: box, "normalised", True)):
        rule = ParetoHalving(OBJECTIVES, RAW_REFERENCE, [0.5], 3.0, tmp_path / f"{label}.jsonl", box=provider)
        first = rule.decide("a", {"quality": a[0], "concept_rate": a[1], "progress": 0.5, "step": 5})
        second = rule.decide("b", {"quality": b[0], "concept_rate": b[1], "progress": 0.5, "step": 5})
        assert not first.stop and second.stop is b_stops and {first.box, second.box} == {label}
        assert json.loads((tmp_path / f"{label}.jsonl").read_text().splitlines()[-1])["box"] == label


def test_reevaluate_scores_front_and_references_on_the_fresh_seed_and_resumes(tmp_path):
    """fresh.reevaluate evaluates the references and every front trial's saved student at the space's fresh
    seed and sample count, equal to a direct evaluation, and a rerun keeps what is already there."""
    from raybilevel.config import dump_config, load_config
    from raybilevel.evaluate import evaluate
    from raybilevel.fresh import reevaluate
    from raybilevel.pruning import load_student, prune, save_student
    from raybilevel.worlds import build_world

    cfg = load_config(None, ["world.toy_images=128", "world.n_concept_images=8", "world.sampling_steps=2", "eval.n_samples=8"])
    space = SearchSpace(name="s", params={"lower.lr": {"type": "float", "low": 1e-5, "high": 1e-3}},
                        reference_point=RAW_REFERENCE, fresh={"seed": 77, "n_samples": 4})
    sweep = SweepDir(tmp_path / "sweep")
    sweep.root.mkdir()
    sweep.space_file.write_text(yaml.safe_dump(dataclasses.asdict(space), sort_keys=False))
    world = build_world(cfg.world, cfg.seed)
    student = prune(cfg.pruning.method, world.teacher, sparsity=cfg.pruning.sparsity, seed=cfg.seed)
    save_student(student, sweep.root / "references" / "distill_only" / "student")
    (sweep.root / "references.json").write_text(json.dumps({"config": cfg.to_dict(), "points": REFERENCES}))
    record = TrialRecord("t1", {"lower.lr": 1e-4}, {}, "bome", folder=sweep.trial_dir("t1"))
    record.run_dir.mkdir(parents=True)
    (record.run_dir / "config.yaml").write_text(dump_config(cfg))
    save_student(student, record.run_dir / "student")
    record.finish("done", {"quality": 0.1, "concept_rate": 0.3})

    assert reevaluate(sweep.root) == ["teacher", "student_step_0", "distill_only", "t1"]
    rows = {p.stem: json.loads(p.read_text()) for p in (sweep.root / FRESH_DIR).glob("*.json")}
    assert {(r["eval_seed"], r["n_samples"], r["kind"]) for r in rows.values()} == {(77, 4, "reference"), (77, 4, "trial")}
    direct = evaluate(world, load_student(record.run_dir / "student").model, dataclasses.replace(cfg.eval, seed=77, n_samples=4))
    assert rows["t1"]["metrics"]["quality"] == direct["quality"]
    assert rows["t1"]["metrics"]["eval_settings"] == direct["eval_settings"] and direct["eval_settings"]["seed"] == 77
    assert reevaluate(sweep.root) == []  # kept: a killed re-evaluation continues where it was
    (sweep.root / FRESH_DIR / "t1.json").unlink()
    assert reevaluate(sweep.root) == ["t1"]
    assert write_report(sweep.root).fresh_summary["front"] == ["t1"]
