"""report.html: every table and figure of a sweep's report on one page that fits 1,280 px (PNGs inline)."""
from __future__ import annotations

import base64
import html
import json
from typing import TYPE_CHECKING, Any

from raybilevel.report_figures import sample_grid_png
from raybilevel.report_tables import ablation_rows, sweep_time, trial_row
from raybilevel.time_split import COLUMNS as TIME_COLUMNS, trial_split
from raybilevel.trials import STATUSES, TrialRecord, interval, run_metrics

if TYPE_CHECKING:
    from raybilevel.report import Report

STYLE = ("body{font-family:sans-serif;margin:1.5em auto;max-width:1240px;padding:0 1em}"
         "table{border-collapse:collapse;margin:1em 0;max-width:100%}"
         "td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px;vertical-align:top;overflow-wrap:anywhere}"
         "img.figure{max-width:100%}img.samples{width:256px;image-rendering:pixelated;display:block}"
         ".scroll{overflow-x:auto;max-width:100%}")  # toy samples are 16 px: scale them up, crisp


def _img(png: bytes | None, alt: str, missing: str, css: str = "figure") -> str:
    """The PNG inline with its alt text, or `missing` (why there is none) in its place."""
    if not png:
        return f"<em>{html.escape(missing)}</em>"
    return f'<img class="{css}" alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else html.escape(str(value))


def _with_interval(value: Any, bounds: Any) -> str:
    """"0.123 [0.1, 0.15]": a value with its 95% interval, when it has one."""
    if not isinstance(value, (int, float)):
        return "n/a"
    if isinstance(bounds, (list, tuple)) and len(bounds) == 2 and all(isinstance(b, (int, float)) for b in bounds):
        return f"{value:.4g} [{bounds[0]:.3g}, {bounds[1]:.3g}]"
    return f"{value:.4g}"


def _table(rows: list[dict[str, Any]], columns: list[str], raw: tuple[str, ...] = ()) -> str:
    """An HTML table (horizontally scrollable on its own if it must be); columns in `raw` hold HTML."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{row[c] if c in raw else _fmt(row.get(c, ''))}</td>" for c in columns) + "</tr>"
                   for row in rows)
    return f"<div class='scroll'><table><tr>{head}</tr>{body}</table></div>"


def _config(record: TrialRecord) -> str:
    """The searched values in one cell, one per line (the solver has its own column)."""
    return "<br>".join(html.escape(f"{k}={_fmt(v)}") for k, v in sorted(record.params.items()) if k != "solver.name")


def _status_counts(records: list[TrialRecord]) -> str:
    counts = {s: sum(r.status == s for r in records) for s in STATUSES}
    return ", ".join(f"{counts[s]} {s}" + (" early" if s == "stopped" else "") for s in STATUSES if counts[s])


def _headline(report: Report) -> str:
    space, box = report.space, report.box
    if box and box.box:
        corners = ", ".join(f"{n}: {box.ideal[n]:.4g} to {box.nadir[n]:.4g} ({box.scale[n]})" for n in report.objectives)
        normalised = (f"normalised hypervolume <b>{report.normalised_hypervolume:.4g}</b> (box ideal to nadir, "
                      f"teacher to distill-only unless the space fixes them: {html.escape(corners)}; counted up to "
                      f"{box.box.allowance:g} past the nadir)")
    else:
        normalised = f"normalised hypervolume not yet known ({html.escape(box.problem if box else 'no references')})"
    return (f"<p>{len(report.records)} trials ({_status_counts(report.records)}; "
            f"{sum(r.valid(report.objectives) for r in report.records)} with finite objectives); {normalised}; raw "
            f"hypervolume {report.hypervolume:.6g} against {html.escape(json.dumps(space.reference_point))}.</p>")


def _endpoint_text(found: dict[str, Any] | None, label: str) -> str:
    if not found:
        return ""
    if "problem" in found:
        return f"<p>{label}: {html.escape(found['problem'])}.</p>"
    head = (f"<p>{label}: quality ({html.escape(found['quality'])}) within &delta; = {found['delta']:.3g} "
            f"({html.escape(found['delta_rule'])}) of the distill-only reference's {found['distill_only_quality']:.4g}: ")
    if found.get("trial_id") is None:
        return head + "no trial qualifies.</p>"
    return head + (f"best {html.escape(found['concept'])} <b>{_with_interval(found['concept_value'], found.get('concept_ci'))}</b> "
                   f"(trial {html.escape(found['trial_id'])}, quality {found['quality_value']:.4g}; distill-only's "
                   f"{html.escape(found['concept'])} {_fmt(found.get('distill_only_concept'))}; "
                   f"{found['n_eligible']} trials qualify).</p>")


def _fresh_section(report: Report) -> list[str]:
    if not report.fresh:
        return []
    selected = {r.trial_id: r for r in report.records}
    rows = []
    for row in report.fresh:
        record, metrics = selected.get(row["name"]), row["metrics"]
        entry = {"model": row["name"], "solver": record.solver if record else "reference"}
        for name in report.objectives:
            entry[f"{name} (selection)"] = _with_interval(record.objectives.get(name), interval(record, name)) if record else ""
            entry[f"{name} (fresh)"] = _with_interval(metrics.get(name), metrics.get(f"{name}_ci"))
        rows.append(entry)
    summary = report.fresh_summary or {}
    norm = (summary.get("normalised") or {}).get("hypervolume")
    seeds = sorted({row["eval_seed"] for row in report.fresh})
    columns = ["model", "solver", *(f"{n} ({kind})" for n in report.objectives for kind in ("selection", "fresh"))]
    return ["<h2>Fresh-seed re-evaluation (held-out test)</h2>",
            f"<p>The front and the references evaluated again on eval seed {seeds} with {report.fresh[0]['n_samples']} "
            f"samples per group; selection values are the ones the sampler saw. On fresh values: front "
            f"{html.escape(', '.join(summary.get('front', [])))}; normalised hypervolume "
            f"{_fmt(norm) if norm is not None else 'n/a'}.</p>",
            _endpoint_text(summary.get("endpoint"), "Endpoint on fresh values"),
            _table(rows, columns)]


def render(report: Report, figures: dict[str, bytes | None]) -> str:
    space, objectives = report.space, report.objectives
    teacher = _img(report.teacher_grid, "teacher sample grid", "no teacher grid yet (references)", css="samples")
    front_rows = [{"trial_id": r.trial_id, "solver": r.solver, "config": _config(r),
                   **{n: _with_interval(r.objectives.get(n), interval(r, n)) for n in objectives},
                   "samples: trial, then teacher (same noise)": _img(sample_grid_png(r.run_dir), "sample grid",
                                                                     "no sample grid (set train.sample_every)", css="samples") + teacher}
                  for r in report.front]
    sections = [
        f"<h1>Sweep {html.escape(space.name)}</h1><p>{html.escape(space.description)}</p>", _headline(report),
        _endpoint_text(report.endpoint, "Endpoint"),
        _img(figures["pareto"], "Pareto plot", "no Pareto plot: no trial with finite objectives yet"),
        "<h2>Pareto front</h2><p>Values with their 95% bootstrap intervals. Sample grids: concept prompts, then "
        "unrelated prompts; below each, the teacher's from the same noise and prompts.</p>",
        _table(front_rows, ["trial_id", "solver", *objectives, "config", "samples: trial, then teacher (same noise)"],
               raw=("config", "samples: trial, then teacher (same noise)")),
        *_fresh_section(report),
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
    sections += _time_section(report)
    sections += ["<h2>Convergence</h2>",
                 _img(figures["curves"], "objectives against compute", "no evaluations during training (set train.eval_fractions)"),
                 "<h2>Hypervolume after each finished trial</h2>",
                 _img(figures["hypervolume"], "hypervolume after each finished trial", "no finished trial yet"),
                 "<h2>All trials</h2>",
                 _table([{"trial_id": r.trial_id, "status": r.status, "solver": r.solver, "on_front": r in report.front,
                          **{n: r.objectives.get(n) for n in objectives}, "config": _config(r), "error": r.error}
                         for r in report.records],
                        ["trial_id", "status", "solver", "on_front", *objectives, "config", "error"], raw=("config",))]
    return (f"<!doctype html><html><head><meta charset='utf-8'><meta name='viewport' content='width=device-width'>"
            f"<title>{html.escape(space.name)}</title><style>{STYLE}</style></head><body>{''.join(sections)}</body></html>")


def _time_section(report: Report) -> list[str]:
    total = sweep_time(report)
    if total is None:
        return []
    rows = [trial_row(report, r) for r in report.records if trial_split(r, run_metrics(r))]
    rows.append({"trial_id": f"all {total['trials']}", **{f"{c}_s": round(total[c], 1) for c in TIME_COLUMNS},
                 "work_share": round(total["work_share"], 3)})
    return ["<h2>Where the time went (seconds)</h2><p>work_share: solver iterations and evaluation over the trial's "
            "wall time; startup: the trial's driver starting to training starting.</p>",
            _table(rows, ["trial_id", *(f"{c}_s" for c in TIME_COLUMNS), "work_share"])]


def _mean_spread(row: dict[str, Any], name: str) -> str:
    mean, std = row[f"{name}_mean"], row[f"{name}_std"]
    if mean is None:
        return "n/a"
    return f"{mean:.4g} ± {std:.2g}" if std is not None else f"{mean:.4g}"
