"""Reference points for a sweep's Pareto plot: where the teacher, the pruned student before any
fine-tuning, and that student fine-tuned by distillation alone (no erasure) sit on the sweep's objectives,
so every trial reads against both ends and against "what fine-tuning does without the upper level".

Evaluated once per sweep, at the space's base config (its world, pruning, budget, eval settings and seeds),
as one Ray task beside the trials, and cached in DIR/references.json (a resumed sweep reuses it; the
distill-only run lives in DIR/references/distill_only and resumes if interrupted). Grids whose factors
change the pruning still get the base config's student: the plot names it as such.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from raybilevel.atomic import write_bytes_atomic, write_json_atomic
from raybilevel.config import Config, config_from_dict

REFERENCES_FILE = "references.json"
NAMES = {"teacher": "teacher", "student_step_0": "pruned student, before fine-tuning",
         "distill_only": "distill-only, base config"}


def distill_only_config(cfg: Config) -> Config:
    """The base config fine-tuned by the lower level alone, evaluated only at its end."""
    tree = cfg.to_dict()
    tree["solver"]["name"] = "distill_only"
    tree["train"] |= {"eval_every": 0, "eval_fractions": []}
    return config_from_dict(tree)


TEACHER_GRID = "teacher_samples.png"  # in DIR/references/: beside each front trial's grid in the report


def evaluate_references(cfg: Config, root: Path) -> dict[str, dict[str, Any]]:
    """The teacher's, the step-0 pruned student's and the distill-only run's metrics (the evaluation a
    trial ends with); also the teacher's sample grid from the noise and prompts trials' grids use."""
    from raybilevel.evaluate import evaluate, sample_grid
    from raybilevel.pruning import prune
    from raybilevel.train import train
    from raybilevel.worlds import build_world

    world = build_world(cfg.world, cfg.seed)
    (root / "references").mkdir(parents=True, exist_ok=True)
    write_png(root / "references" / TEACHER_GRID, sample_grid(world, world.teacher.float().eval(), cfg.eval.seed))
    student = prune(cfg.pruning.method, world.teacher, sparsity=cfg.pruning.sparsity, seed=cfg.seed, path=cfg.pruning.path)
    points = {"teacher": evaluate(world, world.teacher, cfg.eval), "student_step_0": evaluate(world, student.model, cfg.eval)}
    del world, student
    return points | {"distill_only": train(distill_only_config(cfg), root / "references" / "distill_only")}


def write_png(path: Path, grid: Any) -> None:
    """A (3, H, W) image in [0, 1] as a PNG, written atomically."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((grid.permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(buffer, format="PNG")
    write_bytes_atomic(path, buffer.getvalue())


def write_references(root: Path, cfg: Config) -> None:
    if not (root / REFERENCES_FILE).is_file():
        write_json_atomic(root / REFERENCES_FILE, {"config": cfg.to_dict(), "points": evaluate_references(cfg, root)})


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
