"""The sweep report: Pareto front, hypervolume, ablation table, convergence curves, one HTML file.

`write_report(DIR)` rebuilds every file from the trial records and run directories in DIR (no Ray needed),
so the sweep calls it after each finished trial and `raybilevel report DIR` can call it at any time.
Files: pareto.csv / pareto.json (the front, the reference point, the hypervolume, the teacher's and the
step-0 student's objectives when references.json holds them, the sweep's time split), pareto.png, trials.csv
(with each trial's seconds per phase, time_split.py),
hypervolume.csv / hypervolume.png (after each finished trial), curves.png (objectives against compute),
importance.csv (searches: each parameter's importance per objective, importance.py), ablation.csv (grids:
mean and spread per cell over seeds) and report.html (all of it, PNGs embedded).
"""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raybilevel import pareto
from raybilevel.atomic import write_bytes_atomic, write_json_atomic, write_text_atomic
from raybilevel.importance import importances
from raybilevel.references import TEACHER_GRID, read_references
from raybilevel.search_space import SearchSpace, load_space
from raybilevel.time_split import COLUMNS as TIME_COLUMNS, sweep_split, trial_split, work_share
from raybilevel.report_figures import SAMPLES_TAG, plot_curves, plot_front, plot_hypervolume, sample_grid_png
from raybilevel.trials import STATUSES, SweepDir, TrialRecord, in_cell, interval, run_metrics

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
    _write_tables(report, sweep.root)
    if sweep.optuna_db.is_file() and not report.space.grid:
        report.importance = importances(sweep.optuna_url, report.space.name, report.objectives)
        _write_csv(sweep.root / "importance.csv", report.importance, ["objective", "param", "importance"])
    figures = {"pareto": plot_front(report), "curves": plot_curves(report), "hypervolume": plot_hypervolume(report)}
    for name, png in figures.items():
        if png:
            write_bytes_atomic(sweep.root / f"{name}.png", png)
    write_text_atomic(sweep.root / "report.html", _html(report, figures))
    return report


# ---------------------------------------------------------------------------------------------- tables
def _param_keys(records: list[TrialRecord]) -> list[str]:
    return sorted({key for r in records for key in r.params})


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, text.getvalue())


def _trial_row(report: Report, record: TrialRecord) -> dict[str, Any]:
    bounds = {}
    for name in report.objectives:
        if (found := interval(record, name)) is not None:
            bounds[f"{name}_ci_low"], bounds[f"{name}_ci_high"] = found
    split = trial_split(record, run_metrics(record)) or {}
    times = {f"{column}_s": round(split[column], 1) for column in split}
    times |= {"work_share": round(work_share(split), 3)} if split else {}
    return {"trial_id": record.trial_id, "status": record.status, "solver": record.solver,
            "on_front": record in report.front, **{n: record.objectives.get(n) for n in report.objectives},
            **bounds, **record.params, **times, "error": record.error}


def _write_tables(report: Report, root: Path) -> None:
    params = _param_keys(report.records)
    bounds = [f"{n}_ci_{end}" for n in report.objectives for end in ("low", "high")]
    times = [f"{column}_s" for column in TIME_COLUMNS] + ["work_share"]
    columns = ["trial_id", "status", "solver", "on_front", *report.objectives, *bounds, *params, *times, "error"]
    _write_csv(root / "trials.csv", [_trial_row(report, r) for r in report.records], columns)
    _write_csv(root / "pareto.csv", [_trial_row(report, r) for r in report.front],
               ["trial_id", "solver", *report.objectives, *params])
    _write_csv(root / "hypervolume.csv", [dict(zip(("finished", "trial_id", "hypervolume"), row)) for row in report.history],
               ["finished", "trial_id", "hypervolume"])
    write_json_atomic(root / "pareto.json", {
        "sweep": report.space.name, "objectives": report.space.objectives,
        "reference_point": report.space.reference_point, "hypervolume": report.hypervolume,
        "n_trials": len(report.records), "n_valid": sum(r.valid(report.objectives) for r in report.records),
        "references": {label: dict(zip(report.objectives, point)) for label, point in report.references.items()},
        "front": [{"trial_id": r.trial_id, "solver": r.solver, "objectives": r.objectives, "params": r.params}
                  for r in report.front],
        "time_split": _sweep_time(report),
    })
    if report.space.grid:
        rows = ablation_rows(report)
        spread = [f"{n}_{stat}" for n in report.objectives for stat in ("mean", "std")]
        _write_csv(root / "ablation.csv", rows, [*report.space.grid.factors, "n", *spread])


def _sweep_time(report: Report) -> dict[str, float] | None:
    """Seconds per phase summed over the trials with a finished run, and the share spent on the work."""
    splits = [s for r in report.records if (s := trial_split(r, run_metrics(r))) is not None]
    return sweep_split(splits) if splits else None


def ablation_rows(report: Report) -> list[dict[str, Any]]:
    """Grids: per cell (one level of every factor), mean and sample standard deviation over its seeds."""
    rows = []
    for cell in report.space.grid.cells():
        runs = [r for r in report.records if r.valid(report.objectives) and in_cell(r, cell)]
        row: dict[str, Any] = {**cell, "n": len(runs)}
        for name in report.objectives:
            values = [r.objectives[name] for r in runs]
            row[f"{name}_mean"] = statistics.fmean(values) if values else None
            row[f"{name}_std"] = statistics.stdev(values) if len(values) > 1 else None
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------- HTML
def _img(png: bytes | None, alt: str, missing: str, css: str = "figure") -> str:
    """The PNG inline with its alt text, or `missing` (why there is none) in its place."""
    if not png:
        return f"<em>{html.escape(missing)}</em>"
    return f'<img class="{css}" alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else html.escape(str(value))


def _table(rows: list[dict[str, Any]], columns: list[str], raw: tuple[str, ...] = ()) -> str:
    """An HTML table; columns in `raw` already hold HTML (images)."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{row[c] if c in raw else _fmt(row.get(c, ''))}</td>" for c in columns) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _status_counts(records: list[TrialRecord]) -> str:
    counts = Counter(r.status for r in records)
    return ", ".join(f"{counts[s]} {s}" + (" early" if s == "stopped" else "") for s in STATUSES if counts[s])


def _html(report: Report, figures: dict[str, bytes | None]) -> str:
    space, objectives = report.space, report.objectives
    params = _param_keys(report.records)
    teacher = _img(report.teacher_grid, "teacher sample grid", "no teacher grid yet (references)", css="samples")
    front_rows = [_trial_row(report, r) | {"samples": _img(sample_grid_png(r.run_dir), "sample grid", "no sample grid (set train.sample_every)", css="samples"),
                                           "teacher, same noise": teacher} for r in report.front]
    sections = [
        f"<h1>Sweep {html.escape(space.name)}</h1><p>{html.escape(space.description)}</p>",
        f"<p>{len(report.records)} trials ({_status_counts(report.records)}; "
        f"{sum(r.valid(objectives) for r in report.records)} with finite objectives); "
        f"objectives {', '.join(f'{n} ({m})' for n, m in space.objectives.items())}; hypervolume "
        f"<b>{report.hypervolume:.6g}</b> against the reference point {html.escape(json.dumps(space.reference_point))}.</p>",
        _img(figures["pareto"], "Pareto plot", "no Pareto plot: no trial with finite objectives yet"),
        "<h2>Pareto front</h2><p>Sample grids: concept prompts, then unrelated prompts; beside each, the teacher's "
        "from the same noise and prompts.</p>",
        _table(front_rows, ["trial_id", "solver", *objectives, *params, "samples", "teacher, same noise"],
               raw=("samples", "teacher, same noise")),
    ]
    if space.grid:
        rows = [row | {n: _mean_spread(row, n) for n in objectives} for row in ablation_rows(report)]
        sections += ["<h2>Ablation (mean &plusmn; sample std over seeds)</h2>",
                     _table(rows, [*space.grid.factors, "n", *objectives])]
    if report.importance:
        by_param: dict[str, dict[str, Any]] = {}
        for row in report.importance:
            by_param.setdefault(row["param"], {"param": row["param"]})[row["objective"]] = row["importance"]
        sections += ["<h2>Parameter importance per objective</h2><p>Optuna's importance (PED-ANOVA) with one target "
                     "per objective; conditional parameters rest on the few trials that have them.</p>",
                     _table(sorted(by_param.values(), key=lambda r: -max(r.get(n, 0.0) for n in objectives)),
                            ["param", *objectives])]
    if report.decisions:
        rows = [d | {"decision": "stop" if d["stop"] else "continue", **{n: d["objectives"].get(n) for n in objectives}}
                for d in report.decisions]
        sections += [f"<h2>Early stopping ({html.escape(space.scheduler.name)})</h2><p>Each trial judged at each rung "
                     "(a fraction of its run) against every trial judged there before it; a stopped trial keeps "
                     "its last evaluation, which Optuna was told as complete.</p>",
                     _table(rows, ["trial", "rung", "step", *objectives, "decision", "reason"])]
    if (total := _sweep_time(report)) is not None:
        rows = [_trial_row(report, r) for r in report.records if trial_split(r, run_metrics(r))]
        rows.append({"trial_id": f"all {total['trials']}", **{f"{c}_s": round(total[c], 1) for c in TIME_COLUMNS},
                     "work_share": round(total["work_share"], 3)})
        sections += ["<h2>Where the time went (seconds)</h2><p>work_share: solver iterations and evaluation over "
                     "the trial's wall time; startup: the trial's driver starting to training starting.</p>",
                     _table(rows, ["trial_id", *(f"{c}_s" for c in TIME_COLUMNS), "work_share"])]
    sections += ["<h2>Convergence</h2>",
                 _img(figures["curves"], "objectives against compute", "no evaluations during training (set train.eval_every)"),
                 "<h2>Hypervolume after each finished trial</h2>",
                 _img(figures["hypervolume"], "hypervolume after each finished trial", "no finished trial yet"),
                 _table([dict(zip(("finished", "trial_id", "hypervolume"), row)) for row in report.history],
                        ["finished", "trial_id", "hypervolume"]),
                 "<h2>All trials</h2>",
                 _table([_trial_row(report, r) for r in report.records],
                        ["trial_id", "status", "solver", "on_front", *objectives, *params, "error"])]
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}img.figure{max-width:100%}"
             "img.samples{width:384px;image-rendering:pixelated}")  # toy samples are 16 px: scale them up
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(space.name)}</title><style>{style}</style></head><body>{''.join(sections)}</body></html>"


def _mean_spread(row: dict[str, Any], name: str) -> str:
    mean, std = row[f"{name}_mean"], row[f"{name}_std"]
    if mean is None:
        return "n/a"
    return f"{mean:.4g} ± {std:.2g}" if std is not None else f"{mean:.4g}"
