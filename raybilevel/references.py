"""Reference points for a sweep's Pareto plot: where the teacher and the pruned student before any
fine-tuning sit on the sweep's objectives, so every trial reads against both ends.

Evaluated once per sweep, at the space's base config (its world, pruning, eval settings and seeds), as one
Ray task beside the trials, and cached in DIR/references.json (a resumed sweep reuses it). Grids whose
factors change the pruning still get the base config's student: the plot names it as such.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from raybilevel.atomic import write_json_atomic
from raybilevel.config import Config

REFERENCES_FILE = "references.json"
NAMES = {"teacher": "teacher", "student_step_0": "pruned student, before fine-tuning"}


def evaluate_references(cfg: Config) -> dict[str, dict[str, Any]]:
    """The teacher's and the step-0 pruned student's metrics (the evaluation a trial ends with)."""
    from raybilevel.evaluate import evaluate
    from raybilevel.pruning import prune
    from raybilevel.worlds import build_world

    world = build_world(cfg.world, cfg.seed)
    student = prune(cfg.pruning.method, world.teacher, sparsity=cfg.pruning.sparsity, seed=cfg.seed, path=cfg.pruning.path)
    return {"teacher": evaluate(world, world.teacher, cfg.eval), "student_step_0": evaluate(world, student.model, cfg.eval)}


def write_references(root: Path, cfg: Config) -> None:
    if not (root / REFERENCES_FILE).is_file():
        write_json_atomic(root / REFERENCES_FILE, {"config": cfg.to_dict(), "points": evaluate_references(cfg)})


def read_references(root: Path, objectives: list[str]) -> dict[str, tuple[float, ...]]:
    """{label: objective values} of the cached references with every objective finite; {} if none yet."""
    path = root / REFERENCES_FILE
    if not path.is_file():
        return {}
    points = json.loads(path.read_text())["points"]
    found = {}
    for key, metrics in points.items():
        values = tuple(metrics.get(name) for name in objectives)
        if all(isinstance(v, (int, float)) and v == v and abs(v) != float("inf") for v in values):
            found[NAMES.get(key, key)] = values
    return found
