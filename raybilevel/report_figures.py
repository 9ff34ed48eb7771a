"""The sweep report's figures (report.py embeds them): the front or its pairwise projections, the
hypervolume history, convergence curves against compute, a trial's last sample grid."""
from __future__ import annotations

import io
import itertools
import math
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from raybilevel.atomic import read_json_lines  # noqa: E402
from raybilevel.trials import TrialRecord, in_cell, interval  # noqa: E402

if TYPE_CHECKING:
    from raybilevel.report import Report

SAMPLES_TAG = "samples/concept_then_unrelated"  # the grid train.py logs every train.sample_every steps


def _figure_png(fig: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _solver_colours(records: list[TrialRecord]) -> dict[str, Any]:
    solvers = sorted({r.solver for r in records})
    return {s: matplotlib.colormaps["tab10"](i % 10) for i, s in enumerate(solvers)}


def _axis_label(report: Report, i: int) -> str:
    name = report.objectives[i]
    if _box(report) is not None:
        box = report.box
        return (f"{name}, normalised: 0 = {box.ideal[name]:.3g}, 1 = {box.nadir[name]:.3g}"
                + (" (log)" if box.scale[name] == "log" else "") + ", lower is better")
    return f"{name} ({'lower' if report.modes[i] == 'min' else 'higher'} is better)"


def _box(report: Report):
    """The normalisation box when the references gave one (every plot is then in box units), else None."""
    return report.box.box if report.box is not None and report.box.box is not None else None


def _coords(report: Report, point: tuple[float, ...]) -> tuple[float, ...]:
    """Where a point is drawn: in box units (0 ideal, 1 nadir), else as it is."""
    box = _box(report)
    return box.normalise(point) if box is not None else tuple(point)


def plot_front(report: Report) -> bytes | None:
    """The objectives' plane (two objectives), or its three pairwise projections (three): every trial with
    its 95% intervals, the front circled, the reference points."""
    valid = [r for r in report.records if r.valid(report.objectives)]
    if not valid:
        return None
    pairs = list(itertools.combinations(range(len(report.objectives)), 2))
    fig, axes = plt.subplots(1, len(pairs), figsize=(6.4 + 4.6 * (len(pairs) - 1), 4.8), squeeze=False)
    for ax, pair in zip(axes[0], pairs):
        _draw_pair(ax, report, valid, pair)
    norm = report.normalised_hypervolume
    title = (f"{report.space.name}: {len(valid)} trials, normalised hypervolume {norm:.4g}" if norm is not None
             else f"{report.space.name}: {len(valid)} trials, hypervolume {report.hypervolume:.4g} (no box yet)")
    axes[0][0].set_title(title + f"\nraw hypervolume {report.hypervolume:.4g} against {report.reference}",
                         fontsize=10, loc="left")
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # beside the axes: never over a point
    return _figure_png(fig)


def _draw_pair(ax: Any, report: Report, valid: list[TrialRecord], pair: tuple[int, int]) -> None:
    i, j = pair
    colours = _solver_colours(valid)
    for solver, colour in colours.items():
        label = solver  # on the solver's first group: a solver may have only stopped trials
        for stopped in (False, True):  # trials stopped early (their last evaluation) are drawn hollow
            mine = [r for r in valid if r.solver == solver and (r.status == "stopped") == stopped]
            if mine:
                xs, ys = zip(*((_coords(report, report.point(r))[i], _coords(report, report.point(r))[j]) for r in mine))
                ax.scatter(xs, ys, s=30, alpha=0.8, label=label,
                           **({"facecolors": "none", "edgecolors": colour} if stopped else {"color": colour}))
                label = None
        for record in (r for r in valid if r.solver == solver):  # 95% bootstrap intervals as error bars
            x, y = _coords(report, report.point(record))[i], _coords(report, report.point(record))[j]
            spans = [_span(report, record, k) for k in pair]
            xerr = [[max(0.0, x - spans[0][0])], [max(0.0, spans[0][1] - x)]] if spans[0] else None
            yerr = [[max(0.0, y - spans[1][0])], [max(0.0, spans[1][1] - y)]] if spans[1] else None
            if xerr or yerr:
                ax.errorbar([x], [y], xerr=xerr, yerr=yerr, fmt="none", ecolor=colour, alpha=0.5, linewidth=0.8)
    fx, fy = zip(*((_coords(report, report.point(r))[i], _coords(report, report.point(r))[j]) for r in report.front))
    ax.scatter(fx, fy, s=140, facecolors="none", edgecolors="black", linewidths=1.5, label="Pareto front")
    if len(report.objectives) == 2:  # a projection of a 3-d front is not a staircase
        ax.step(fx, fy, where="post", color="black", linewidth=0.8)
    if any(r.status == "stopped" for r in valid):
        ax.scatter([], [], s=30, facecolors="none", edgecolors="gray", label="hollow: stopped early")
    for (label, point), marker in zip(report.references.items(), ("*", "P", "D")):
        at = _coords(report, point)
        if all(math.isfinite(v) and abs(v) < 50 for v in (at[i], at[j])):  # the step-0 student can sit far out
            ax.scatter(at[i], at[j], marker=marker, s=160, color="dimgray", edgecolors="black", label=label, zorder=3)
    box = _box(report)
    if box is not None:  # the box itself and the point the normalised hypervolume is counted to
        ax.add_patch(plt.Rectangle((0, 0), 1, 1, fill=False, linestyle=":", edgecolor="gray", label="box: ideal to nadir"))
    ax.margins(0.1)
    ax.autoscale(False)  # the reference point is often far out: keep the trials readable, state it below
    reference = box.reference if box is not None else report.reference
    ax.scatter(reference[i], reference[j], marker="x", color="red", clip_on=True,
               label="normalised reference point" if box is not None else "reference point")
    ax.set_xlabel(_axis_label(report, i))
    ax.set_ylabel(_axis_label(report, j))


def _span(report: Report, record: TrialRecord, k: int) -> tuple[float, float] | None:
    """An objective's 95% interval in the drawn units (a normalised interval keeps its ends in order)."""
    found = interval(record, report.objectives[k])
    if found is None or _box(report) is None:
        return found
    point = list(report.point(record))
    ends = []
    for end in found:
        point[k] = end
        ends.append(_coords(report, tuple(point))[k])
    return (min(ends), max(ends))


def plot_hypervolume(report: Report) -> bytes | None:
    """The normalised hypervolume after each finished trial (the raw one while there is no box), on an axis
    fitted to its values so that a change shows."""
    if not report.history:
        return None
    counts, _, raw = zip(*report.history)
    normalised = report.normalised_history if any(v is not None for v in report.normalised_history) else None
    volumes = [v if v is not None else 0.0 for v in normalised] if normalised else list(raw)
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    ax.step(counts, volumes, where="post", marker="o", color="black")
    low, high = min(volumes), max(volumes)
    pad = (high - low) * 0.1 or max(abs(high) * 0.05, 1e-3)
    ax.set_ylim(low - pad, high + pad)
    ax.set_xlabel("trials finished")
    ax.set_ylabel(("normalised " if normalised else "") + "hypervolume (higher is better)")
    ax.set_title("box: ideal to nadir (scoring.py)" if normalised else f"raw, reference point {report.reference}", fontsize=10)
    return _figure_png(fig)


def _eval_curve(record: TrialRecord, metric: str) -> list[tuple[float, float]]:
    """(compute spent in MACs, metric) at each evaluation: trials at equal compute take different numbers of
    steps, so compute is the axis they share."""
    rows = read_json_lines(record.run_dir / "evals.jsonl")  # a running trial's last line may be torn
    return [(row["macs"], row[metric]) for row in rows if isinstance(row.get(metric), (int, float)) and "macs" in row]


def plot_curves(report: Report) -> bytes | None:
    """Objectives against compute: a line per trial coloured by solver (searches), or per cell with
    the mean over seeds and their range shaded (grids)."""
    done = [r for r in report.records if r.status in ("done", "stopped")]  # a stopped trial's curve ends early
    if not any(_eval_curve(r, report.objectives[0]) for r in done):
        return None
    fig, axes = plt.subplots(1, len(report.objectives), figsize=(5.5 * len(report.objectives), 4))
    colours = _solver_colours(done)
    for ax, metric in zip(axes, report.objectives):
        if report.space.grid:
            for cell in report.space.grid.cells():
                by_step: dict[int, list[float]] = {}
                for run in (r for r in done if in_cell(r, cell)):
                    for step, value in _eval_curve(run, metric):
                        by_step.setdefault(step, []).append(value)
                steps = sorted(by_step)
                if steps:
                    line, = ax.plot(steps, [statistics.fmean(by_step[s]) for s in steps], marker="o", label="/".join(cell.values()))
                    ax.fill_between(steps, [min(by_step[s]) for s in steps], [max(by_step[s]) for s in steps],
                                    color=line.get_color(), alpha=0.15)
        else:
            for run in done:
                curve = _eval_curve(run, metric)
                if curve:
                    ax.plot(*zip(*curve), color=colours[run.solver], alpha=0.7, marker=".")
            for solver, colour in colours.items():
                ax.plot([], [], color=colour, label=solver)
        ax.set_xlabel("compute spent (MACs)")
        ax.set_ylabel(metric)
        ax.legend(fontsize=7)
    return _figure_png(fig)


def sample_grid_png(run_dir: Path) -> bytes | None:
    """The last sample grid the run logged to TensorBoard, as PNG bytes (None if it logged none)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = run_dir / "tensorboard"
    if not folder.is_dir():
        return None
    events = EventAccumulator(str(folder), size_guidance={"images": 1, "scalars": 1, "tensors": 1}).Reload()
    if SAMPLES_TAG not in events.Tags()["images"]:
        return None
    return events.Images(SAMPLES_TAG)[-1].encoded_image_string
