"""Reference points for a sweep's Pareto plot: where the teacher, the pruned student before any
fine-tuning, and that student fine-tuned by distillation alone (no erasure) sit on the sweep's objectives,
so every trial reads against both ends and against "what fine-tuning does without the upper level".

Evaluated at the space's base config (its world, pruning, budget, eval settings and seeds), as one Ray task
beside the trials in one trial's slot (slots.py keeps Tune from starting a trial that would wait for it),
and kept twice: in DIR/references.json + DIR/references/ (a resumed sweep reuses them), and in the cache
(RAYBILEVEL_CACHE/references/KEY/), keyed by that config, the frozen models' identity and the package
source, so the next sweep of the same base config (a rerun, another sampler seed, a benchmark arm) copies
them instead of training the distill-only run again. An interrupted distill-only run resumes in the cache.
Grids whose factors change the pruning still get the base config's student: the plot names it as such.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import shutil
from pathlib import Path
from typing import Any, Iterator

from raybilevel.atomic import write_bytes_atomic, write_json_atomic
from raybilevel.config import Config, config_from_dict
from raybilevel.worlds import frozen_identity
from raybilevel.worlds.base import cache_dir, cache_key

REFERENCES_FILE = "references.json"
FAILED_FILE = "references_failed.json"  # why the reference task ended without them: the trials go on
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


def reference_key(cfg: Config) -> str:
    """Everything that shapes the references: the distill-only config without its Ray resources, the
    frozen teacher and judge, and the package's source (any code change recomputes them)."""
    tree = distill_only_config(cfg).to_dict()
    del tree["ray"]
    package = Path(__file__).parent
    source = cache_key([file.read_text() for file in sorted(package.rglob("*.py"))])
    return cache_key([tree, frozen_identity(cfg.world), source])


def write_references(root: Path, cfg: Config) -> None:
    """DIR/references.json and DIR/references/, computed (or copied from the cache) once per sweep."""
    if (root / REFERENCES_FILE).is_file():
        return
    cached = cache_dir() / "references" / reference_key(cfg)
    with _exclusive(cached.with_suffix(".lock")):  # two sweeps of one base config train it once
        if not (cached / REFERENCES_FILE).is_file():
            write_json_atomic(cached / REFERENCES_FILE, {"points": evaluate_references(cfg, cached)})
    shutil.copytree(cached / "references", root / "references", dirs_exist_ok=True)
    points = json.loads((cached / REFERENCES_FILE).read_text())["points"]
    write_json_atomic(root / REFERENCES_FILE, {"config": cfg.to_dict(), "cache": str(cached), "points": points})


def mark_failed(root: Path, error: BaseException | None) -> None:
    """Record why the references task ended without them (raised, or its process died), so the sweep
    frees the slot it held; the trials go on. None (no error) records nothing."""
    if error is not None:
        write_json_atomic(root / FAILED_FILE, {"error": f"{type(error).__name__}: {str(error).strip()[-500:]}"})


def forget_failure(root: Path) -> None:
    """A resumed sweep tries the references again: its slot is held until they end once more."""
    (root / FAILED_FILE).unlink(missing_ok=True)


def reference_ended(root: Path) -> bool:
    """Whether the sweep's references are written or have failed (either way, their slot is free)."""
    return (root / REFERENCES_FILE).is_file() or (root / FAILED_FILE).is_file()


@contextlib.contextmanager
def _exclusive(lock: Path) -> Iterator[None]:
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes, also if the process dies
        yield


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
