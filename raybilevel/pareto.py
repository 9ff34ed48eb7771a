"""Pareto front, non-dominated ranks and hypervolume (any number of objectives), each minimised or maximised.

Points are compared after turning every objective into one to minimise (max objectives are negated), so
one rule serves both: a point dominates another if it is no worse in both and better in at least one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

Point = Sequence[float]


def to_minimise(point: Point, modes: Sequence[str]) -> tuple[float, ...]:
    return tuple(v if mode == "min" else -v for v, mode in zip(point, modes))


def dominates(a: Point, b: Point) -> bool:
    """a dominates b (both already in minimise form)."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def front_indices(points: Sequence[Point], modes: Sequence[str]) -> list[int]:
    """Indices of the non-dominated points; equal points are all kept (as Optuna's best_trials does)."""
    flipped = [to_minimise(p, modes) for p in points]
    return [i for i, p in enumerate(flipped) if not any(dominates(q, p) for q in flipped)]


def hypervolume(points: Sequence[Point], reference: Point, modes: Sequence[str]) -> float:
    """Volume dominated by `points` and bounded by `reference` (any number of objectives). Points no better
    than the reference in every objective add nothing."""
    ref = to_minimise(reference, modes)
    inside = sorted({to_minimise(p, modes) for p in points if all(x < r for x, r in zip(to_minimise(p, modes), ref))})
    return _volume(inside, ref)


def _volume(points: list[tuple[float, ...]], ref: tuple[float, ...]) -> float:
    """Exact dominated volume of minimise-form points inside ref: slabs along the last objective, each the
    volume of the points below it in one dimension fewer (fine for the few dozen points of a sweep)."""
    if not points:
        return 0.0
    if len(ref) == 1:
        return ref[0] - min(p[0] for p in points)
    if len(ref) == 2:  # sweep along the first objective; each new lower second value adds a slab
        area, best_y = 0.0, ref[1]
        for x, y in sorted(points):
            if y < best_y:
                area += (ref[0] - x) * (best_y - y)
                best_y = y
        return area
    by_last = sorted(points, key=lambda p: p[-1])
    volume = 0.0
    for i, point in enumerate(by_last):
        top = by_last[i + 1][-1] if i + 1 < len(by_last) else ref[-1]
        if top > point[-1]:
            volume += (top - point[-1]) * _volume([p[:-1] for p in by_last[:i + 1]], ref[:-1])
    return volume


def nondominated_ranks(points: Sequence[Point]) -> list[int]:
    """Each point's non-dominated rank (0 = on the front; rank k+1 = on the front once ranks <= k are
    removed), points already in minimise form."""
    ranks, left, rank = [0] * len(points), set(range(len(points))), 0
    while left:
        layer = {i for i in left if not any(dominates(points[j], points[i]) for j in left if j != i)}
        for i in layer:
            ranks[i] = rank
        left -= layer
        rank += 1
    return ranks


def crowding_distances(points: Sequence[Point]) -> list[float]:
    """NSGA-II's crowding distance within one set (minimise form): per objective, the normalised gap between
    a point's neighbours; the extremes of any objective get infinity."""
    n = len(points)
    distance = [0.0] * n
    for axis in range(len(points[0]) if points else 0):
        order = sorted(range(n), key=lambda i: points[i][axis])
        span = points[order[-1]][axis] - points[order[0]][axis]
        distance[order[0]] = distance[order[-1]] = float("inf")
        for before, here, after in zip(order, order[1:], order[2:]):
            if span > 0:
                distance[here] += (points[after][axis] - points[before][axis]) / span
    return distance


def hypervolume_contributions(points: Sequence[Point], reference: Point) -> list[float]:
    """Each point's exclusive hypervolume (minimise form): what the set loses without it."""
    modes = ["min"] * len(reference)
    whole = hypervolume(points, reference, modes)
    return [whole - hypervolume([p for j, p in enumerate(points) if j != i], reference, modes) for i in range(len(points))]


@dataclass(frozen=True)
class Box:
    """The normalisation box of a comparison: each objective maps to 0 at its `ideal` and 1 at its `nadir`
    (linearly, or linearly in log(value) where `log`), so min and max objectives alike become "lower is
    better" and every axis counts in the same units. The hypervolume is then measured against the point
    (1 + allowance, ...): a trial up to `allowance` of the box worse than the nadir still adds area.

    Args:
        ideal / nadir: one value per objective, in the objectives' order (nadir != ideal).
        log: per objective, normalise log(value) (ideal and nadir > 0).
        allowance: how far past the nadir, in box units, a point still counts.
    """

    ideal: tuple[float, ...]
    nadir: tuple[float, ...]
    log: tuple[bool, ...]
    allowance: float = 0.1

    def __post_init__(self) -> None:
        if not len(self.ideal) == len(self.nadir) == len(self.log):
            raise ValueError("ideal, nadir and log need one entry per objective")
        for ideal, nadir, log in zip(self.ideal, self.nadir, self.log):
            if not all(math.isfinite(v) for v in (ideal, nadir)) or ideal == nadir or (log and min(ideal, nadir) <= 0):
                raise ValueError(f"a box needs finite ideal != nadir (both > 0 on a log axis); got {ideal}, {nadir}")

    @property
    def reference(self) -> tuple[float, ...]:
        return (1.0 + self.allowance,) * len(self.ideal)

    def normalise(self, point: Point) -> tuple[float, ...]:
        """0 at the ideal, 1 at the nadir; a non-positive value on a log axis is infinitely bad."""
        out = []
        for value, ideal, nadir, log in zip(point, self.ideal, self.nadir, self.log):
            if log:
                out.append(math.inf if value <= 0 else (math.log(value) - math.log(ideal)) / (math.log(nadir) - math.log(ideal)))
            else:
                out.append((value - ideal) / (nadir - ideal))
        return tuple(out)

    def hypervolume(self, points: Sequence[Point]) -> float:
        """Normalised hypervolume: the box [ideal, nadir] alone is worth 1 in every axis."""
        return hypervolume([self.normalise(p) for p in points], self.reference, ["min"] * len(self.ideal))
