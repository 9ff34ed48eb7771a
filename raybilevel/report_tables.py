"""The report's files besides the HTML and the figures: trials.csv, pareto.csv / pareto.json, hypervolume.csv,
ablation.csv (report.py calls write_tables after scoring)."""
from __future__ import annotations

import csv
import io
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raybilevel.atomic import write_json_atomic, write_text_atomic
from raybilevel.report_scores import fresh_rows
from raybilevel.time_split import COLUMNS as TIME_COLUMNS, sweep_split, trial_split, work_share
from raybilevel.trials import TrialRecord, in_cell, interval, run_metrics

if TYPE_CHECKING:
    from raybilevel.report import Report


def _param_keys(records: list[TrialRecord]) -> list[str]:
    return sorted({key for r in records for key in r.params})


def write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, text.getvalue())


def trial_row(report: Report, record: TrialRecord) -> dict[str, Any]:
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


def write_tables(report: Report, root: Path) -> None:
    params = _param_keys(report.records)
    bounds = [f"{n}_ci_{end}" for n in report.objectives for end in ("low", "high")]
    times = [f"{column}_s" for column in TIME_COLUMNS] + ["work_share"]
    columns = ["trial_id", "status", "solver", "on_front", *report.objectives, *bounds, *params, *times, "error"]
    write_csv(root / "trials.csv", [trial_row(report, r) for r in report.records], columns)
    write_csv(root / "pareto.csv", [trial_row(report, r) for r in report.front],
               ["trial_id", "solver", *report.objectives, *params])
    write_csv(root / "hypervolume.csv", history_rows(report), ["finished", "trial_id", "normalised_hypervolume", "hypervolume"])
    solvers = {r.trial_id: r.solver for r in report.records}
    write_json_atomic(root / "pareto.json", {
        "sweep": report.space.name, "objectives": report.space.objectives,
        "normalised": report.box.as_json([report.point(r) for r in report.front]) if report.box else None,
        "endpoint": report.endpoint or None,
        "fresh": fresh_rows(report.fresh, report.objectives, solvers),
        "fresh_summary": report.fresh_summary,
        "reference_point": report.space.reference_point, "hypervolume": report.hypervolume,
        "n_trials": len(report.records), "n_valid": sum(r.valid(report.objectives) for r in report.records),
        "references": {label: dict(zip(report.objectives, point)) for label, point in report.references.items()},
        "front": [{"trial_id": r.trial_id, "solver": r.solver, "objectives": r.objectives, "params": r.params}
                  for r in report.front],
        "time_split": sweep_time(report),
    })
    if report.space.grid:
        rows = ablation_rows(report)
        spread = [f"{n}_{stat}" for n in report.objectives for stat in ("mean", "std")]
        write_csv(root / "ablation.csv", rows, [*report.space.grid.factors, "n", *spread])


def history_rows(report: Report) -> list[dict[str, Any]]:
    normalised = report.normalised_history or [None] * len(report.history)
    return [{"finished": count, "trial_id": trial, "normalised_hypervolume": norm, "hypervolume": raw}
            for (count, trial, raw), norm in zip(report.history, normalised)]


def sweep_time(report: Report) -> dict[str, float] | None:
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
