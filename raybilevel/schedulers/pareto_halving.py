"""Pareto-aware asynchronous successive halving: ASHA's rungs, ranked by several objectives at once.

Rungs sit at fractions of each trial's run (grace, grace·reduction, ... below 1). When a trial reports an
evaluation at or past a rung it has not been judged at, it joins that rung's results and is ranked among
every trial judged there so far: by non-dominated rank, then (two or three objectives) by exclusive
hypervolume contribution against the sweep's reference point, or (more) by crowding distance, then by arrival. It
continues if it sits in the best ceil(n / reduction) of the n; otherwise it stops. Contributions are measured
in the sweep's normalisation box (scoring.py: the same box as its hypervolume) once its references exist, and
against the raw reference point before; each decision records which (`box`). As in ASHA, the first
trials at a rung always continue, and a decision is never revisited.

The decisions are the state: each one is a line of the sweep's scheduler.jsonl, read back on start, so a
resumed sweep judges later trials against every earlier one and repeats a decision it has already taken.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from raybilevel.atomic import append_json_line, read_json_lines
from raybilevel.pareto import Box, crowding_distances, hypervolume_contributions, nondominated_ranks, to_minimise
from raybilevel.schedulers import SCHEDULERS

_EPS = 1e-9  # progress is steps done / total steps: a float


@dataclass(frozen=True)
class Decision:
    trial: str
    rung: float
    progress: float
    step: int
    objectives: dict[str, float | None]
    stop: bool
    rank: int  # non-dominated rank among the rung's results (-1: an objective was not finite)
    position: int  # 1-based place in the rung's order
    kept: int  # how many of the rung's results continue
    of: int  # results at the rung, this one included
    reason: str
    box: str = "raw"  # "normalised" once the sweep's box was known, else "raw" (the reference point)


@SCHEDULERS.register("pareto_halving")
class ParetoHalving:
    def __init__(self, objectives: dict[str, str], reference_point: dict[str, float], rungs: list[float],
                 reduction: float, log: Path, box: Callable[[], Box | None] | None = None) -> None:
        self.objectives, self.rungs, self.reduction, self.log = dict(objectives), list(rungs), reduction, Path(log)
        self.box = box
        self.reference = to_minimise([reference_point[name] for name in objectives], list(objectives.values()))
        self.decisions: list[Decision] = self._read_log()

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Tune pickles the scheduler when a sweep starts and unpickles it on --resume: read the log again."""
        self.__dict__.update(state)
        self.decisions = self._read_log()

    def _read_log(self) -> list[Decision]:
        # a torn line (a kill mid-append) is skipped by the reader: that decision is taken again
        return [Decision(**row) for row in read_json_lines(self.log)]

    def decide(self, trial: str, result: dict[str, Any]) -> Decision | None:
        """The decision for a trial's evaluation, or None when it is at no new rung (keep going)."""
        progress = result.get("progress")
        if progress is None:
            return None  # the final report: nothing left to stop
        reached = [r for r in self.rungs if progress + _EPS >= r]
        if not reached:
            return None
        rung = reached[-1]
        earlier = [d for d in self.decisions if d.trial == trial and d.rung == rung]
        if earlier:  # a resumed or restarted trial reporting the same rung again
            return earlier[0]
        if any(d.trial == trial and d.rung > rung for d in self.decisions):
            return None
        decision = self._rank(trial, rung, progress, int(result.get("step", 0)),
                              {name: _finite(result.get(name)) for name in self.objectives})
        self.decisions.append(decision)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        append_json_line(self.log, asdict(decision))
        return decision

    def _rank(self, trial: str, rung: float, progress: float, step: int, values: dict[str, float | None]) -> Decision:
        here = [d for d in self.decisions if d.rung == rung] + [None]  # None: the trial being judged
        vectors = [(d.objectives if d else values) for d in here]
        scored = [i for i, v in enumerate(vectors) if None not in v.values()]
        box = self.box() if self.box is not None else None
        points = [self._point(vectors[i], box) for i in scored]
        reference = box.reference if box is not None else self.reference
        ranks = nondominated_ranks(points)
        spread = [0.0] * len(points)
        for rank in set(ranks):
            members = [k for k, r in enumerate(ranks) if r == rank]
            layer = [points[k] for k in members]
            values_in_layer = (hypervolume_contributions(layer, reference) if len(self.objectives) <= 3
                               else crowding_distances(layer))
            for k, value in zip(members, values_in_layer):
                spread[k] = value
        # best first: lower rank, larger contribution, earlier arrival; unscored results come last
        by_result = {i: (ranks[k], -spread[k]) for k, i in enumerate(scored)}
        order = sorted(range(len(here)), key=lambda i: (i not in by_result, by_result.get(i, (0, 0.0)), i))
        me, n = len(here) - 1, len(here)
        kept = math.ceil(n / self.reduction)
        position = order.index(me) + 1
        rank = by_result[me][0] if me in by_result else -1
        stop = position > kept
        where = f"at {rung:.0%} of its run (step {step})"
        if rank < 0:
            reason = f"{where}: an objective is not finite; place {position} of {n}, {kept} continue"
        else:
            reason = f"{where}: non-dominated rank {rank}, place {position} of {n}, {kept} continue"
        return Decision(trial, rung, progress, step, values, stop, rank, position, kept, n,
                        ("stopped " if stop else "continues ") + reason, "normalised" if box is not None else "raw")

    def _point(self, values: dict[str, float], box: Box | None) -> tuple[float, ...]:
        """Minimise form: in box units when the box is known (ranks are the same either way)."""
        raw = [values[name] for name in self.objectives]
        return box.normalise(raw) if box is not None else to_minimise(raw, list(self.objectives.values()))


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None
