"""Tuned against tuned: does the bilevel method beat fine-tune-then-erase once each is tuned at equal compute?

The leakage table compares solvers at their defaults; the default sweep tunes all of them at once, so the
sampler decides how much tuning each solver gets. Here each family gets the same tuning effort, on a
selection seed, and is then judged on evaluation seeds it was not tuned on, all through `raybilevel tune`.

Rule, written 2026-12-03 before the run:
- Families: `two_stage` (fine-tune, then erase: the baseline that erased most in the leakage table),
  `bome` and `adaptive` (the bilevel solvers that erased most there).
- Selection, on training seed 0 (the space's base seed): for each family one MOTPE sweep of the default
  space (toy.yaml: its base config, its equal compute budget, its ranges) with `solver.name` fixed to the
  family and only the family's own params searched; sampler seed 0, 8 trials (4 start-up). A family's
  selected configs are its sweep's non-dominated trials; if more than 2, the 2 picked greedily by
  hypervolume contribution.
- Evaluation: one grid sweep, every selected config x training seeds 1, 2, 3 (the evaluation seed, 1234,
  unchanged). A family's hypervolume at a seed is that of its selected configs' points at that seed (the
  space's reference point).
- Reported: each family's hypervolume per seed, mean +/- 95% t half-width; the paired differences
  bome - two_stage and adaptive - two_stage over seeds. A bilevel family "beats" two_stage when its
  interval lies above 0. Each selected config's mean objectives are listed beside.

usage: python benchmarks/tuned_baselines.py [--families two_stage bome adaptive] [--trials 8]
       [--eval-seeds 1 2 3] [--set KEY=VALUE ...] [--runs DIR] [--results DIR]
Results: benchmarks/results/tuned_baselines.{json,md}; sweeps under runs/benchmarks/tuned_baselines/ (not
in git). A finished sweep is read again and an unfinished one resumed (`raybilevel tune --resume`): here
the objectives are the measurement, not the clock, and resume continues a trial's exact curve.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

from raybilevel.metrics import t_halfwidth
from raybilevel.pareto import front_indices, hypervolume
from raybilevel.search_space import load_space
from raybilevel.trials import SweepDir, TrialRecord

ROOT = Path(__file__).resolve().parent.parent
SPACE = ROOT / "raybilevel" / "search_spaces" / "toy.yaml"
BASELINE = "two_stage"
MAX_SELECTED = 2  # 3 families x 2 configs x 3 seeds = 18 evaluation trials: what one 2-core session fits


def family_space(family: str, opts: argparse.Namespace) -> dict:
    """toy.yaml with solver.name fixed to `family` and only the params that apply to it searched."""
    data = yaml.safe_load(SPACE.read_text())
    data["base"].setdefault("solver", {})["name"] = family
    params = {}
    for key, spec in data["params"].items():
        applies_to = spec.pop("when", {}).get("solver.name", [family])
        if key != "solver.name" and family in applies_to:
            params[key] = spec
    data.update(name=f"tuned_{family}", params=params, trials=opts.trials,
                description=f"tuned_baselines selection: {family} alone, toy.yaml's ranges, {opts.trials} trials")
    data["sampler"] |= {"seed": 0, "startup_trials": opts.trials // 2}
    return data


def objectives_of(record: TrialRecord, names: list[str]) -> tuple[float, ...]:
    return tuple(record.objectives[n] for n in names)


def select(records: list[TrialRecord], names: list[str], modes: list[str], reference: list[float]) -> list[TrialRecord]:
    """The non-dominated valid trials; more than MAX_SELECTED -> greedily by hypervolume contribution."""
    valid = [r for r in records if r.valid(names)]
    front = [valid[i] for i in front_indices([objectives_of(r, names) for r in valid], modes)]
    chosen: list[TrialRecord] = []
    while front and len(chosen) < MAX_SELECTED:
        gain = [hypervolume([objectives_of(r, names) for r in chosen + [c]], reference, modes) for c in front]
        chosen.append(front.pop(max(range(len(front)), key=gain.__getitem__)))
    return chosen


def evaluation_space(selected: dict[str, list[TrialRecord]], opts: argparse.Namespace) -> dict:
    """A grid: each selected config (its family's solver and its searched values) x the evaluation seeds."""
    data = yaml.safe_load(SPACE.read_text())
    levels = {f"{family}_{i}": {"solver.name": family, **record.overrides}
              for family, records in selected.items() for i, record in enumerate(records)}
    for key in ("params", "sampler", "trials"):
        data.pop(key, None)
    data.update(name="tuned_baselines_eval", grid={"factors": {"config": levels}, "seeds": list(opts.eval_seeds)},
                description=f"tuned_baselines evaluation: {len(levels)} selected configs x seeds {opts.eval_seeds}")
    return data


def run_sweep(name: str, data: dict, opts: argparse.Namespace) -> SweepDir:
    folder = opts.runs / name
    sweep = SweepDir(folder)
    if sweep.space_file.is_file() and sweep.finished(load_space(sweep.space_file).num_trials):
        return sweep
    space = opts.runs / "spaces" / f"{name}.yaml"
    space.parent.mkdir(parents=True, exist_ok=True)
    space.write_text(yaml.safe_dump(data, sort_keys=False))
    command = [sys.executable, "-m", "raybilevel", "tune", "--output", str(folder)]
    command += ["--resume"] if sweep.space_file.is_file() else ["--space", str(space)] + [a for s in opts.set for a in ("--set", s)]
    with open(opts.runs / f"{name}.log", "a") as log:
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True)
    return sweep


def summarise(selected: dict[str, list[TrialRecord]], evaluation: SweepDir, seeds: list[int]) -> dict:
    space = load_space(evaluation.space_file)
    names, modes = list(space.objectives), list(space.objectives.values())
    reference = [space.reference_point[n] for n in names]
    points: dict[tuple[str, int], tuple[float, ...]] = {}
    for record in evaluation.records():
        if record.valid(names):
            points[(record.params["config"], record.params["seed"])] = objectives_of(record, names)
    families, configs = {}, {}
    for family, records in selected.items():
        cells = [f"{family}_{i}" for i in range(len(records))]
        per_seed = [hypervolume([points[(c, s)] for c in cells if (c, s) in points], reference, modes) for s in seeds]
        families[family] = {"hv_per_seed": per_seed, "hv_mean": statistics.fmean(per_seed),
                            "hv_ci95_halfwidth": t_halfwidth(per_seed)}
        for cell, record in zip(cells, records):
            got = [points[(cell, s)] for s in seeds if (cell, s) in points]
            configs[cell] = {"overrides": record.overrides, "selection": dict(zip(names, objectives_of(record, names))),
                             "seeds_valid": len(got),
                             "mean": {n: statistics.fmean(p[i] for p in got) if got else None for i, n in enumerate(names)}}
    base = families.get(BASELINE)
    differences = {}
    for family, row in families.items():
        if base is not None and family != BASELINE:
            diff = [a - b for a, b in zip(row["hv_per_seed"], base["hv_per_seed"])]
            half = t_halfwidth(diff)
            differences[f"{family} - {BASELINE}"] = {"per_seed": diff, "mean": statistics.fmean(diff), "ci95_halfwidth": half,
                                                     "beats": statistics.fmean(diff) - half > 0 and len(diff) > 1}
    return {"objectives": dict(zip(names, modes)), "reference_point": reference, "eval_seeds": seeds,
            "families": families, "differences": differences, "configs": configs}


def markdown(summary: dict, opts: argparse.Namespace) -> str:
    names = list(summary["objectives"])
    lines = [f"Selection: one MOTPE sweep per family on training seed 0, {opts.trials} trials, toy.yaml's base config and "
             f"ranges (equal compute per trial); evaluation: the selected configs on training seeds "
             f"{', '.join(map(str, summary['eval_seeds']))}. Hypervolume against {summary['reference_point']}; "
             "mean ± 95% t half-width over seeds.", "",
             "| family | selected configs | hypervolume per seed | hypervolume |", "|---|---|---|---|"]
    for family, row in summary["families"].items():
        count = sum(cell.startswith(family + "_") for cell in summary["configs"])
        lines.append(f"| {family} | {count} | {', '.join(f'{v:.3f}' for v in row['hv_per_seed'])} | "
                     f"{row['hv_mean']:.3f} ± {row['hv_ci95_halfwidth']:.3f} |")
    lines += ["", "| paired difference | per seed | mean ± 95% t | beats? |", "|---|---|---|---|"]
    for pair, row in summary["differences"].items():
        lines.append(f"| {pair} | {', '.join(f'{v:+.3f}' for v in row['per_seed'])} | "
                     f"{row['mean']:+.3f} ± {row['ci95_halfwidth']:.3f} | {'yes' if row['beats'] else 'no'} |")
    lines += ["", "| config | searched values | selection seed: " + ", ".join(names) + " | evaluation seeds' mean: "
              + ", ".join(names) + " |", "|---|---|---|---|"]
    for cell, row in summary["configs"].items():
        values = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row["overrides"].items())
        chosen_on = ", ".join(f"{row['selection'][n]:.3f}" for n in names)
        mean = ", ".join("—" if row["mean"][n] is None else f"{row['mean'][n]:.3f}" for n in names)
        lines.append(f"| {cell} | {values} | {chosen_on} | {mean} ({row['seeds_valid']} seeds) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=[BASELINE, "bome", "adaptive"])
    parser.add_argument("--trials", type=int, default=8, help="selection trials per family")
    parser.add_argument("--eval-seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override every trial's base config (tests use it to shrink the run)")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "benchmarks" / "tuned_baselines")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    opts = parser.parse_args()
    if 0 in opts.eval_seeds:
        parser.error("--eval-seeds: 0 is the selection seed; evaluate on others")
    selected = {}
    for family in opts.families:
        sweep = run_sweep(f"select_{family}", family_space(family, opts), opts)
        space = load_space(sweep.space_file)
        names, modes = list(space.objectives), list(space.objectives.values())
        selected[family] = select(sweep.records(), names, modes, [space.reference_point[n] for n in names])
        print(f"{family}: selected {len(selected[family])} of {len(sweep.records())}", flush=True)
    evaluation = run_sweep("evaluate", evaluation_space(selected, opts), opts)
    summary = summarise(selected, evaluation, list(opts.eval_seeds))
    opts.results.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(opts).items()}
    (opts.results / "tuned_baselines.json").write_text(json.dumps({"settings": settings, **summary}, indent=2))
    (opts.results / "tuned_baselines.md").write_text(markdown(summary, opts))
    print(markdown(summary, opts))


if __name__ == "__main__":
    main()
