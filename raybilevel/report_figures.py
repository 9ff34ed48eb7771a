"""The sweep report's figures (report.py embeds them): the front or its pairwise projections, the
hypervolume history, convergence curves against compute, a trial's last sample grid."""
from __future__ import annotations

import io
import itertools
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
    return f"{report.objectives[i]} ({'lower' if report.modes[i] == 'min' else 'higher'} is better)"


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
    axes[0][0].set_title(f"{report.space.name}: {len(valid)} trials, hypervolume {report.hypervolume:.4g}\n"
                         f"reference point {report.reference}", fontsize=10, loc="left")
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
                xs, ys = zip(*((report.point(r)[i], report.point(r)[j]) for r in mine))
                ax.scatter(xs, ys, s=30, alpha=0.8, label=label,
                           **({"facecolors": "none", "edgecolors": colour} if stopped else {"color": colour}))
                label = None
        for record in (r for r in valid if r.solver == solver):  # 95% bootstrap intervals as error bars
            x, y = report.point(record)[i], report.point(record)[j]
            spans = [interval(record, report.objectives[k]) for k in pair]
            xerr = [[max(0.0, x - spans[0][0])], [max(0.0, spans[0][1] - x)]] if spans[0] else None
            yerr = [[max(0.0, y - spans[1][0])], [max(0.0, spans[1][1] - y)]] if spans[1] else None
            if xerr or yerr:
                ax.errorbar([x], [y], xerr=xerr, yerr=yerr, fmt="none", ecolor=colour, alpha=0.5, linewidth=0.8)
    fx, fy = zip(*((report.point(r)[i], report.point(r)[j]) for r in report.front))
    ax.scatter(fx, fy, s=140, facecolors="none", edgecolors="black", linewidths=1.5, label="Pareto front")
    if len(report.objectives) == 2:  # a projection of a 3-d front is not a staircase
        ax.step(fx, fy, where="post", color="black", linewidth=0.8)
    if any(r.status == "stopped" for r in valid):
        ax.scatter([], [], s=30, facecolors="none", edgecolors="gray", label="hollow: stopped early")
    for (label, point), marker in zip(report.references.items(), ("*", "P", "D")):
        ax.scatter(point[i], point[j], marker=marker, s=160, color="dimgray", edgecolors="black", label=label, zorder=3)
    ax.margins(0.1)
    ax.autoscale(False)  # the reference point is often far out: keep the trials readable, state it below
    ax.scatter(report.reference[i], report.reference[j], marker="x", color="red", label="reference point", clip_on=True)
    ax.set_xlabel(_axis_label(report, i))
    ax.set_ylabel(_axis_label(report, j))


def plot_hypervolume(report: Report) -> bytes | None:
    if not report.history:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    counts, _, volumes = zip(*report.history)
    ax.step(counts, volumes, where="post", marker="o", color="black")
    ax.set_xlabel("trials finished")
    ax.set_ylabel("hypervolume (higher is better)")
    ax.set_title(f"reference point {report.reference}", fontsize=10)
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
