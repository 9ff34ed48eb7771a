"""The sweep report: Pareto front, hypervolume, ablation table, convergence curves, one HTML file.

`write_report(DIR)` rebuilds every file from the trial records and run directories in DIR (no Ray needed),
so the sweep calls it after each finished trial and `raybilevel report DIR` can call it at any time.
Files: pareto.csv / pareto.json (the front; the normalised hypervolume with its box, the endpoint and the
fresh-seed re-evaluation (report_scores.py); the raw hypervolume against the reference point; the references'
objectives; the sweep's time split), pareto.png, trials.csv
(with each trial's seconds per phase, time_split.py),
hypervolume.csv / hypervolume.png (after each finished trial), curves.png (objectives against compute),
importance.csv (searches: each parameter's importance per objective, importance.py), ablation.csv (grids:
mean and spread per cell over seeds) and report.html (all of it, PNGs embedded).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raybilevel import pareto
from raybilevel.atomic import write_bytes_atomic, write_text_atomic
from raybilevel.importance import importances
from raybilevel.references import TEACHER_GRID, read_references
from raybilevel.report_figures import SAMPLES_TAG, plot_curves, plot_front, plot_hypervolume
from raybilevel.report_html import render
from raybilevel.report_scores import box_for, candidate, fresh_summary, normalised_history, read_fresh, reference_metrics
from raybilevel.report_tables import ablation_rows, write_csv, write_tables
from raybilevel.scoring import ResolvedBox, endpoint
from raybilevel.search_space import SearchSpace, load_space
from raybilevel.trials import SweepDir, TrialRecord

__all__ = ["Report", "SAMPLES_TAG", "ablation_rows", "analyse", "write_report"]


@dataclass
class Report:
    space: SearchSpace
    records: list[TrialRecord]  # every trial, in the order they finished
    front: list[TrialRecord]  # non-dominated valid trials, sorted by the first objective
    hypervolume: float
    history: list[tuple[int, str, float]]  # (trials finished, the trial that just finished, hypervolume)
    importance: list[dict[str, Any]] = field(default_factory=list)  # (objective, param, importance) rows
    references: dict[str, tuple[float, ...]] = field(default_factory=dict)  # label: objectives (references.py)
    decisions: list[dict[str, Any]] = field(default_factory=list)  # the early-stopping scheduler's, in order
    teacher_grid: bytes | None = None  # the teacher's sample grid from the trials' noise (references.py)
    box: ResolvedBox | None = None  # the normalisation box (scoring.py): the hypervolume every verdict uses
    normalised_history: list[float | None] = field(default_factory=list)  # beside `history`, row for row
    endpoint: dict[str, Any] = field(default_factory=dict)  # best concept rate at distill-only quality
    fresh: list[dict[str, Any]] = field(default_factory=list)  # the fresh-seed re-evaluations (fresh.py)
    fresh_summary: dict[str, Any] | None = None  # front, normalised hypervolume, endpoint on fresh values

    @property
    def normalised_hypervolume(self) -> float | None:
        return self.box.box.hypervolume([self.point(r) for r in self.front]) if self.box and self.box.box else None

    @property
    def objectives(self) -> list[str]:
        return list(self.space.objectives)

    @property
    def modes(self) -> list[str]:
        return list(self.space.objectives.values())

    def point(self, record: TrialRecord) -> tuple[float, ...]:
        return tuple(record.objectives[name] for name in self.objectives)

    @property
    def reference(self) -> tuple[float, ...]:
        return tuple(self.space.reference_point[name] for name in self.objectives)


def analyse(sweep: SweepDir) -> Report:
    space = load_space(sweep.space_file)
    names, modes = list(space.objectives), list(space.objectives.values())
    reference = [space.reference_point[name] for name in names]

    def point(record: TrialRecord) -> tuple[float, ...]:
        return tuple(record.objectives[name] for name in names)

    records = sweep.records()
    valid = [r for r in records if r.valid(names)]
    front = sorted((valid[i] for i in pareto.front_indices([point(r) for r in valid], modes)),
                   key=lambda r: pareto.to_minimise(point(r), modes))
    history, finished = [], []
    for count, record in enumerate((r for r in records if r.finished is not None), start=1):
        finished += [point(record)] if record.valid(names) else []
        history.append((count, record.trial_id, pareto.hypervolume(finished, reference, modes)))
    return Report(space, records, front, pareto.hypervolume([point(r) for r in valid], reference, modes), history)


def write_report(root: Path) -> Report:
    sweep = SweepDir(Path(root))
    report = analyse(sweep)
    report.references = read_references(sweep.root, report.objectives)
    report.decisions = sweep.scheduler_decisions()
    teacher_grid = sweep.root / "references" / TEACHER_GRID
    report.teacher_grid = teacher_grid.read_bytes() if teacher_grid.is_file() else None
    score(report, sweep.root)
    write_tables(report, sweep.root)
    if sweep.optuna_db.is_file() and not report.space.grid:
        report.importance = importances(sweep.optuna_url, report.space.name, report.objectives)
        write_csv(sweep.root / "importance.csv", report.importance, ["objective", "param", "importance"])
    figures = {"pareto": plot_front(report), "curves": plot_curves(report), "hypervolume": plot_hypervolume(report)}
    for name, png in figures.items():
        if png:
            write_bytes_atomic(sweep.root / f"{name}.png", png)
    write_text_atomic(sweep.root / "report.html", render(report, figures))
    return report


def score(report: Report, root: Path) -> None:
    """The normalised hypervolume, its history, the endpoint and the fresh re-evaluation's summary."""
    references = reference_metrics(root)
    report.box = box_for(report.space, references)
    report.normalised_history = normalised_history(report.box, report.records, report.objectives)
    if report.space.endpoint.applies(report.space.objectives):
        valid = [candidate(r, report.objectives) for r in report.records if r.valid(report.objectives)]
        report.endpoint = endpoint(report.space.endpoint, report.space.objectives, references.get("distill_only", {}), valid)
    report.fresh = read_fresh(root)
    report.fresh_summary = fresh_summary(report.space, report.fresh)
