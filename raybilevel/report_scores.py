"""The scores report.py writes into pareto.json and the HTML: the normalised hypervolume (and its history),
the practitioner's endpoint, and the same recomputed from the fresh-seed re-evaluation (DIR/fresh/).

Everything here is a function of the trial records, DIR/references.json and DIR/fresh/*.json: no Ray, no
models, so `raybilevel report DIR` can rebuild it at any time.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raybilevel import pareto
from raybilevel.references import REFERENCES_FILE
from raybilevel.scoring import ResolvedBox, endpoint, resolve_box
from raybilevel.search_space import SearchSpace
from raybilevel.trials import TrialRecord, interval

FRESH_DIR = "fresh"  # DIR/fresh/<name>.json: one re-evaluated model each (fresh.py writes them)


def reference_metrics(root: Path) -> dict[str, dict[str, Any]]:
    """The references' full metrics by key (teacher, student_step_0, distill_only); {} before they exist."""
    path = root / REFERENCES_FILE
    return json.loads(path.read_text())["points"] if path.is_file() else {}


def box_for(space: SearchSpace, references: dict[str, dict[str, Any]]) -> ResolvedBox:
    return resolve_box(space.normalisation, space.objectives, space.reference_point, references)


@dataclass(frozen=True)
class SweepBox:
    """The sweep's box as the references stand now (picklable: Tune saves the scheduler holding it)."""

    space: SearchSpace
    root: Path

    def __call__(self) -> pareto.Box | None:
        return box_for(self.space, reference_metrics(self.root)).box


def _intervals(metrics: dict[str, Any], names: list[str]) -> dict[str, list[float]]:
    found = {}
    for name in names:
        bounds = metrics.get(f"{name}_ci")
        if isinstance(bounds, list) and len(bounds) == 2 and all(isinstance(v, (int, float)) and math.isfinite(v) for v in bounds):
            found[name] = [float(v) for v in bounds]
    return found


def candidate(record: TrialRecord, names: list[str]) -> dict[str, Any]:
    """A trial as the endpoint reads it: its objectives and their intervals."""
    spans = {n: list(found) for n in names if (found := interval(record, n)) is not None}
    return {"trial_id": record.trial_id, "objectives": dict(record.objectives), "intervals": spans}


def normalised_history(box: ResolvedBox, records: list[TrialRecord], names: list[str]) -> list[float | None]:
    """The normalised hypervolume after each finished trial (None throughout while there is no box)."""
    finished, volumes = [], []
    for record in (r for r in records if r.finished is not None):
        if record.valid(names):
            finished.append(tuple(record.objectives[n] for n in names))
        volumes.append(box.box.hypervolume(finished) if box.box else None)
    return volumes


def read_fresh(root: Path) -> list[dict[str, Any]]:
    """The fresh re-evaluations written so far, references first, then trials by id."""
    rows = [json.loads(p.read_text()) for p in sorted((root / FRESH_DIR).glob("*.json"))]
    return sorted(rows, key=lambda row: (row["kind"] != "reference", row["name"]))


def fresh_rows(fresh: list[dict[str, Any]], names: list[str], solvers: dict[str, str]) -> list[dict[str, Any]]:
    """pareto.json["fresh"]: one entry per re-evaluated model, its objectives and their intervals."""
    rows = []
    for row in fresh:
        metrics = row["metrics"]
        entry = {"trial_id": row["name"], "kind": row["kind"], "solver": solvers.get(row["name"], row["name"]),
                 "eval_seed": row["eval_seed"], "n_samples": row["n_samples"]}
        entry |= {n: metrics.get(n) for n in names} | {f"{n}_ci": metrics.get(f"{n}_ci") for n in names}
        rows.append(entry)
    return rows


def fresh_summary(space: SearchSpace, fresh: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The front, the normalised hypervolume and the endpoint recomputed from the fresh values alone (the
    box from the fresh references), or None before any trial was re-evaluated."""
    names, modes = list(space.objectives), list(space.objectives.values())
    references = {row["name"]: row["metrics"] for row in fresh if row["kind"] == "reference"}
    trials = [row for row in fresh if row["kind"] == "trial"
              and all(isinstance(row["metrics"].get(n), (int, float)) and math.isfinite(row["metrics"][n]) for n in names)]
    if not trials:
        return None
    points = [tuple(row["metrics"][n] for n in names) for row in trials]
    front = [trials[i]["name"] for i in pareto.front_indices(points, modes)]
    box = box_for(space, references)
    summary: dict[str, Any] = {"front": front, "normalised": box.as_json(points), "hypervolume": pareto.hypervolume(
        points, [space.reference_point[n] for n in names], modes)}
    if space.endpoint.applies(space.objectives):
        candidates = [{"trial_id": row["name"], "objectives": {n: row["metrics"].get(n) for n in names},
                       "intervals": _intervals(row["metrics"], names)} for row in trials]
        summary["endpoint"] = endpoint(space.endpoint, space.objectives, references.get("distill_only", {}), candidates)
    return summary
