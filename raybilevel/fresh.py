"""The sweep's held-out test: once a sweep ends, every front trial and the three references are evaluated again
on an eval seed no trial was selected on, with more samples (the space's `fresh`: seed, n_samples).

Selection is optimistic: the front is the best of many noisy evaluations on one seed. Each re-evaluation is
written to DIR/fresh/<name>.json atomically as soon as it ends, and one already there with the same seed and
sample count is kept, so a killed re-evaluation continues where it was. The report (report_scores.py)
recomputes the front, the normalised hypervolume and the endpoint from these values alone.
Run by `raybilevel tune` at the end of a sweep, and by `raybilevel report DIR --reevaluate`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Callable

from raybilevel.atomic import write_json_atomic
from raybilevel.config import Config, config_from_dict, load_config
from raybilevel.references import REFERENCES_FILE
from raybilevel.report import analyse
from raybilevel.report_scores import FRESH_DIR
from raybilevel.trials import SweepDir

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Model:
    """One model to re-evaluate: its name in pareto.json, its config, and how to get its U-Net."""

    name: str
    kind: str  # trial or reference
    cfg: Config
    unet: Callable[[Any], Any]  # world -> the model to evaluate


def _student(folder: Path) -> Callable[[Any], Any]:
    def load(world: Any) -> Any:
        from raybilevel.pruning import load_student

        return load_student(folder).model
    return load


def _step_0(cfg: Config) -> Callable[[Any], Any]:
    def load(world: Any) -> Any:
        from raybilevel.pruning import prune

        return prune(cfg.pruning.method, world.teacher, sparsity=cfg.pruning.sparsity, seed=cfg.seed,
                     path=cfg.pruning.path).model
    return load


def models(sweep: SweepDir) -> tuple[list[Model], list[str]]:
    """The references (when the sweep has them) and the front's trials, and a line for each one skipped."""
    found, skipped = [], []
    references = sweep.root / REFERENCES_FILE
    if references.is_file():
        base = config_from_dict(json.loads(references.read_text())["config"])
        found += [Model("teacher", "reference", base, lambda world: world.teacher),
                  Model("student_step_0", "reference", base, _step_0(base))]
        distill = sweep.root / "references" / "distill_only" / "student"
        if distill.is_dir():
            found.append(Model("distill_only", "reference", base, _student(distill)))
        else:
            skipped.append("distill_only: no saved student in references/distill_only/")
    else:
        skipped.append("references: none yet (references.json)")
    for record in analyse(sweep).front:
        folder = record.run_dir / "student"
        if folder.is_dir() and (record.run_dir / "config.yaml").is_file():
            found.append(Model(record.trial_id, "trial", load_config(record.run_dir / "config.yaml"), _student(folder)))
        else:
            skipped.append(f"{record.trial_id}: no saved student (stopped early, or its run ended before saving)")
    return found, skipped


def _settings(row: dict[str, Any]) -> tuple[int, int]:
    return row["eval_seed"], row["n_samples"]


def reevaluate(root: Path) -> list[str]:
    """Evaluate every model not yet re-evaluated at the space's fresh seed and sample count; returns the names
    evaluated now (those already done are kept)."""
    from raybilevel.evaluate import evaluate
    from raybilevel.search_space import load_space
    from raybilevel.worlds import build_world

    sweep = SweepDir(Path(root))
    spec = load_space(sweep.space_file).fresh
    todo, skipped = models(sweep)
    for line in skipped:
        log.info("fresh re-evaluation skips %s", line)
    (sweep.root / FRESH_DIR).mkdir(exist_ok=True)
    worlds: dict[str, Any] = {}
    done = []
    for model in todo:
        out = sweep.root / FRESH_DIR / f"{model.name}.json"
        if out.is_file() and _settings(json.loads(out.read_text())) == (spec.seed, spec.n_samples):
            continue
        key = json.dumps([dataclasses.asdict(model.cfg.world), model.cfg.seed], sort_keys=True, default=str)
        if key not in worlds:  # trials of one base world share it (a build costs seconds to minutes)
            worlds[key] = build_world(model.cfg.world, model.cfg.seed)
        world = worlds[key]
        settings = dataclasses.replace(model.cfg.eval, seed=spec.seed, n_samples=spec.n_samples)
        metrics = evaluate(world, model.unet(world), settings)
        write_json_atomic(out, {"name": model.name, "kind": model.kind, "eval_seed": spec.seed,
                                "n_samples": spec.n_samples, "metrics": metrics})
        log.info("fresh re-evaluation of %s: quality %s, concept_rate %s", model.name, metrics.get("quality"),
                 metrics.get("concept_rate"))
        done.append(model.name)
    return done
