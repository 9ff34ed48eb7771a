"""Pareto-aware early stopping: decisions on hand-made rung results, its ranking arithmetic, its log."""
from __future__ import annotations

import itertools
import json
import pickle
import random

import pytest

from raybilevel.pareto import (crowding_distances, dominates, hypervolume, hypervolume_contributions,
                               nondominated_ranks)
from raybilevel.schedulers import SCHEDULERS
from raybilevel.search_space import SchedulerSpec

OBJECTIVES = {"quality": "min", "concept_rate": "min"}
REFERENCE = {"quality": 10.0, "concept_rate": 1.0}


def rule(tmp_path, reduction: float = 2.0, rungs=(0.25, 0.5)):
    return SCHEDULERS.get("pareto_halving")(OBJECTIVES, REFERENCE, list(rungs), reduction, tmp_path / "scheduler.jsonl")


def result(progress, quality, concept_rate, step=0):
    return {"progress": progress, "step": step, "quality": quality, "concept_rate": concept_rate}


def test_a_rung_keeps_the_best_by_rank_then_hypervolume_contribution(tmp_path):
    halving = rule(tmp_path)
    first = halving.decide("a", result(0.25, 1.0, 0.5, step=25))
    assert not first.stop and (first.position, first.kept, first.of) == (1, 1, 1)  # the first always continues
    dominated = halving.decide("b", result(0.25, 2.0, 0.6, step=25))
    assert dominated.stop and dominated.rank == 1 and (dominated.position, dominated.kept, dominated.of) == (2, 1, 2)
    assert dominated.reason == "stopped at 25% of its run (step 25): non-dominated rank 1, place 2 of 2, 1 continue"
    # c is on the front with a. Exclusive hypervolumes against (10, 1): a 9 x 0.4 = 3.6, c 0.5 x 0.1 = 0.05.
    beside = halving.decide("c", result(0.26, 0.5, 0.9, step=13))
    assert not beside.stop and beside.rank == 0 and (beside.position, beside.kept, beside.of) == (2, 2, 3)
    assert beside.rung == 0.25 and beside.progress == 0.26
    broken = halving.decide("d", result(0.25, float("nan"), 0.1))
    assert broken.stop and broken.rank == -1 and broken.objectives == {"quality": None, "concept_rate": 0.1}
    assert (broken.position, broken.kept, broken.of) == (4, 2, 4)
    assert broken.reason.endswith("an objective is not finite; place 4 of 4, 2 continue")


def test_no_decision_off_the_rungs_and_a_decision_is_never_taken_twice(tmp_path):
    halving = rule(tmp_path)
    assert halving.decide("a", result(0.2, 1.0, 0.5)) is None  # before the first rung
    assert halving.decide("a", {"quality": 1.0, "concept_rate": 0.5, "step": 100}) is None  # the final report
    taken = halving.decide("a", result(0.3, 1.0, 0.5))
    assert halving.decide("a", result(0.3, 9.0, 0.9)) == taken  # a restarted trial re-reporting the rung
    assert halving.decide("a", result(0.6, 2.0, 0.4)).rung == 0.5
    assert halving.decide("a", result(0.3, 1.0, 0.5)) == taken  # its old rung: the old decision
    assert len((tmp_path / "scheduler.jsonl").read_text().splitlines()) == 2


def test_the_log_is_the_state_a_resumed_sweep_reads_back(tmp_path):
    halving = rule(tmp_path)
    halving.decide("a", result(0.25, 1.0, 0.5))
    halving.decide("b", result(0.25, 2.0, 0.6))
    with open(tmp_path / "scheduler.jsonl", "a") as log:
        log.write('{"trial": "c", "rung": 0.2')  # a line torn by a kill mid-append
    restarted = rule(tmp_path)
    assert [d.trial for d in restarted.decisions] == ["a", "b"]
    unpickled = pickle.loads(pickle.dumps(rule(tmp_path / "elsewhere")))  # what Tuner.restore does
    unpickled.log = tmp_path / "scheduler.jsonl"
    unpickled.__setstate__(dict(unpickled.__dict__))
    assert [d.trial for d in unpickled.decisions] == ["a", "b"]
    # judged against a and b: worse than both, so out (n = 3, 2 continue, place 3)
    late = restarted.decide("e", result(0.25, 3.0, 0.95))
    assert late.stop and (late.position, late.of) == (3, 3)
    assert json.loads((tmp_path / "scheduler.jsonl").read_text().splitlines()[-1])["trial"] == "e"


def test_max_objectives_are_ranked_as_maximised(tmp_path):
    halving = SCHEDULERS.get("pareto_halving")({"score": "max", "concept_rate": "min"}, {"score": 0.0, "concept_rate": 1.0},
                                               [0.5], 2.0, tmp_path / "log.jsonl")
    halving.decide("low", {"progress": 0.5, "score": 10.0, "concept_rate": 0.5})
    assert not halving.decide("high", {"progress": 0.5, "score": 20.0, "concept_rate": 0.4}).stop  # dominates


def test_rungs_follow_grace_and_reduction_and_bad_specs_are_refused():
    assert SchedulerSpec("pareto_halving", 0.25, 2).rungs == [0.25, 0.5]
    assert SchedulerSpec("pareto_halving", 0.1, 3).rungs == [0.1, 0.3, 0.9]
    assert SchedulerSpec().rungs == []  # fifo: every trial runs to its end
    for spec, words in [(SchedulerSpec("asha"), "'asha': use fifo or pareto_halving"),
                        (SchedulerSpec("pareto_halving", grace=1.0), "the first rung is a fraction of the run"),
                        (SchedulerSpec("pareto_halving", reduction=1.0), "must be > 1")]:
        with pytest.raises(Exception, match=words):
            spec.validate("scheduler")


def brute_force_ranks(points):
    ranks, left, rank = {}, list(range(len(points))), 0
    while left:
        front = [i for i in left if not any(dominates(points[j], points[i]) for j in left)]
        ranks.update({i: rank for i in front})
        left, rank = [i for i in left if i not in front], rank + 1
    return [ranks[i] for i in range(len(points))]


def test_ranks_crowding_and_contributions_against_direct_computations():
    rng = random.Random(0)
    points = [(rng.randint(0, 5), rng.randint(0, 5)) for _ in range(30)]  # ties included
    assert nondominated_ranks(points) == brute_force_ranks(points)
    # crowding: per objective, the neighbours' gap over the span; extremes infinite
    three = [(0.0, 3.0, 1.0), (1.0, 1.0, 2.0), (3.0, 0.0, 0.0), (2.0, 2.0, 4.0)]
    expected = [float("inf"), (2 - 0) / 3 + (2 - 0) / 3 + (4 - 1) / 4, float("inf"), float("inf")]
    assert crowding_distances(three) == pytest.approx(expected)
    middle = [(0.0, 2.0), (1.0, 1.0), (2.0, 0.0)]
    assert crowding_distances(middle)[1] == pytest.approx(2 / 2 + 2 / 2)
    front = [(1.0, 0.5), (0.5, 0.9), (3.0, 0.2)]
    whole = hypervolume(front, (10, 1), ["min", "min"])
    for i, contribution in enumerate(hypervolume_contributions(front, (10, 1))):
        rest = [p for j, p in enumerate(front) if j != i]
        assert contribution == pytest.approx(whole - hypervolume(rest, (10, 1), ["min", "min"]))
    assert hypervolume_contributions(front, (10, 1))[1] == pytest.approx(0.5 * 0.1)
    assert all(c >= 0 for p in itertools.permutations(front) for c in hypervolume_contributions(list(p), (10, 1)))


def test_every_fraction_lands_on_the_first_step_at_or_past_it():
    """round() had put 0.25 of 242 steps at step 60 (progress 0.248, short of the rung: never judged there)."""
    from raybilevel.train import mid_run_eval_steps

    for total in range(4, 400):
        for fraction in (0.1, 0.25, 0.3, 0.5, 0.75, 0.9):
            step = next(iter(mid_run_eval_steps(0, [fraction], total)), total)  # the end is evaluated anyway
            assert step / total >= fraction > (step - 1) / total
    assert mid_run_eval_steps(100, [0.25, 0.5], 300) == {75, 100, 150, 200}


def test_a_trial_waits_for_its_verdict_and_reads_only_its_own_step(tmp_path):
    """The workers' after-evaluation hook (verdicts.py): it waits for the verdict on the step it reported,
    ignores one left from another step, returns at once for a report Tune never gets (no objectives, or
    rank > 0), and trains on if no verdict comes in time."""
    import threading
    import time

    from raybilevel.schedulers.verdicts import AwaitVerdict, write_verdict

    wait = AwaitVerdict(tmp_path, ("quality", "concept_rate"), timeout_s=5.0, poll_s=0.01)
    evaluation = {"quality": 1.0, "concept_rate": 0.5}
    write_verdict(tmp_path, 3, stop=True)  # an earlier evaluation's
    threading.Timer(0.2, write_verdict, (tmp_path, 6, True)).start()
    began = time.monotonic()
    assert wait(6, evaluation) is True and time.monotonic() - began >= 0.2
    write_verdict(tmp_path, 9, stop=False)
    assert wait(9, evaluation) is False
    assert wait(12, {}) is False and wait(12, {"quality": 1.0}) is False  # rank > 0; an unsent report
    impatient = AwaitVerdict(tmp_path, ("quality",), timeout_s=0.1, poll_s=0.01)
    assert impatient(12, evaluation) is False
