"""Pareto front and hypervolume of two objectives, each minimised or maximised.

Points are compared after turning every objective into one to minimise (max objectives are negated), so
one rule serves both: a point dominates another if it is no worse in both and better in at least one.
"""
from __future__ import annotations

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
    """Area dominated by `points` and bounded by `reference` (two objectives). Points no better than the
    reference in both objectives add nothing."""
    ref = to_minimise(reference, modes)
    inside = sorted({to_minimise(p, modes) for p in points if all(x < r for x, r in zip(to_minimise(p, modes), ref))})
    area, best_y = 0.0, ref[1]
    for x, y in inside:  # sweep along the first objective; each new lower y adds a slab to the reference
        if y < best_y:
            area += (ref[0] - x) * (best_y - y)
            best_y = y
    return area
