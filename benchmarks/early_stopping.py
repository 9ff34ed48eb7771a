"""Does Pareto-aware early stopping find the front sooner? Hypervolume against wall-clock, with and without.

For each sampler seed, two sweeps run through the platform (`raybilevel tune`, a local Ray on this machine):
- full: the default space (raybilevel/search_spaces/toy.yaml) as shipped, FIFO, `--trials-full` trials;
- halving: the same space with `scheduler: {name: pareto_halving, grace, reduction}` and `--trials-halving`
  trials (more: a halving sweep spends less per trial).
Both use the same sampler seed (the space's sampler.seed is replaced), so their first trials are the same.
Before any sweep the distill-only reference of the space's base config (which every sweep plots, and
which both arms share: its config drops the rungs) is trained once into the reference cache, so no arm's
clock pays for it; until 2026-12-03 the first full sweep did.

Rule, fixed before the run: for each seed, the halving sweep's time to reach the full sweep's final
hypervolume (each sweep's clock starts when its first trial starts; a trial's point counts from the moment
its record ends, stopped trials with their last evaluation), as a share of the full sweep's wall time
(first trial started to last trial ended). The target is <= 0.5. Reported per seed, and as the mean over
seeds with a 95% t-interval; "never" where the halving sweep did not reach it.

usage: python benchmarks/early_stopping.py [--seeds 0 1 2] [--trials-full 8] [--trials-halving 16]
       [--grace 0.25] [--reduction 2]
Results: benchmarks/results/early_stopping.{json,md}; sweeps under runs/benchmarks/early_stopping/ (not in
git). Other scheduler settings than the defaults name their halving sweeps and results after them
(`halving_g0.5_r3_t16_s0/`, `early_stopping_g0.5_r3_t16.*`); full sweeps of the default trial count are
shared, another count names its own (`full_t32_s0/`, results `..._f32.*`). A finished sweep is kept and read again; an unfinished one is started over, since its timing is the
measurement. Seeds accumulate in the results file: a seed an earlier invocation of the same settings recorded there
is kept and not run again (its sweeps may be gone: runs/ does not outlive a session, the file is
committed; move the file aside to measure again), and the summary covers every recorded seed.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

from raybilevel.metrics import t_halfwidth
from raybilevel.pareto import hypervolume
from raybilevel.search_space import load_space
from raybilevel.trials import SweepDir

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "runs" / "benchmarks" / "early_stopping"
RESULTS = ROOT / "benchmarks" / "results"
SPACE = ROOT / "raybilevel" / "search_spaces" / "toy.yaml"


HALVING_DEFAULTS = {"grace": 0.25, "reduction": 2.0, "trials_halving": 16}  # the first run's settings
FULL_TRIALS_DEFAULT = 8  # the default space's trial count


def halving_name(opts: argparse.Namespace) -> str:
    """`halving` at the default settings, else one that names them: another setting never reuses a sweep."""
    if all(getattr(opts, key) == value for key, value in HALVING_DEFAULTS.items()):
        return "halving"
    return f"halving_g{opts.grace:g}_r{opts.reduction:g}_t{opts.trials_halving}"


def warm_reference_cache() -> None:
    """The base config's references (distill-only run included), computed once into the cache that every
    sweep of this base config copies from (references.py)."""
    from raybilevel.references import write_references
    from raybilevel.tune import prepare

    space, sweep = prepare(RUNS / "reference_warmup", str(SPACE), check_output=False)  # the CLI's base config
    write_references(sweep.root, space.trial_config(space.example_params()))


def full_name(opts: argparse.Namespace) -> str:
    """`full` at the default space's trial count, else one that names it (`full_t32`)."""
    return "full" if opts.trials_full == FULL_TRIALS_DEFAULT else f"full_t{opts.trials_full}"


def folder_name(arm: str, opts: argparse.Namespace) -> str:
    return halving_name(opts) if arm == "halving" else full_name(opts)


def results_stem(opts: argparse.Namespace) -> str:
    """early_stopping[_g.._r.._t..][_f32]: each pair of settings keeps its own results."""
    full_suffix = "" if opts.trials_full == FULL_TRIALS_DEFAULT else f"_f{opts.trials_full}"
    return "early_stopping" + halving_name(opts).removeprefix("halving") + full_suffix


def space_file(arm: str, seed: int, opts: argparse.Namespace) -> Path:
    """The default space with this seed (and, for halving, the scheduler and its trial count)."""
    data = yaml.safe_load(SPACE.read_text())
    data["sampler"]["seed"] = seed
    data["trials"] = opts.trials_full
    if arm == "halving":
        data["trials"] = opts.trials_halving
        data["scheduler"] = {"name": "pareto_halving", "grace": opts.grace, "reduction": opts.reduction}
    data["description"] = f"early_stopping benchmark, {arm} arm: toy.yaml, sampler seed {seed}, {data['trials']} trials"
    path = RUNS / "spaces" / f"{folder_name(arm, opts)}_s{seed}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_sweep(arm: str, seed: int, opts: argparse.Namespace) -> Path:
    folder = RUNS / f"{folder_name(arm, opts)}_s{seed}"
    trials = opts.trials_halving if arm == "halving" else opts.trials_full
    if SweepDir(folder).finished(trials):
        return folder
    shutil.rmtree(folder, ignore_errors=True)  # an interrupted sweep's clock is broken: start it over
    space = space_file(arm, seed, opts)
    with open(RUNS / f"{folder.name}.log", "w") as log:
        subprocess.run([sys.executable, "-m", "raybilevel", "tune", "--space", str(space), "--output", str(folder)],
                       stdout=log, stderr=subprocess.STDOUT, check=True)
    return folder


def hypervolume_over_time(folder: Path) -> tuple[list[tuple[float, float]], float]:
    """[(seconds since the first trial started, hypervolume of the points so far)], and the wall time."""
    space = load_space(folder / "space.yaml")
    names, modes = list(space.objectives), list(space.objectives.values())
    reference = [space.reference_point[n] for n in names]
    records = [r for r in SweepDir(folder).records() if r.finished is not None]
    start = min(r.started for r in records)
    points, curve = [], []
    for record in sorted(records, key=lambda r: r.finished):
        if record.valid(names):
            points.append(tuple(record.objectives[n] for n in names))
        curve.append((record.finished - start, hypervolume(points, reference, modes)))
    return curve, max(r.finished for r in records) - start


def time_to_reach(curve: list[tuple[float, float]], target: float) -> float | None:
    return next((t for t, hv in curve if hv >= target - 1e-12), None)


def seed_row(seed: int, halving_arm: str, full_arm: str) -> dict:
    """One seed's measurement, read from its two finished sweeps."""
    full, full_wall = hypervolume_over_time(RUNS / f"{full_arm}_s{seed}")
    halving, halving_wall = hypervolume_over_time(RUNS / f"{halving_arm}_s{seed}")
    target = full[-1][1]
    reached = time_to_reach(halving, target)
    records = SweepDir(RUNS / f"{halving_arm}_s{seed}").records()
    return {"full_hv": target, "full_wall_s": full_wall, "halving_hv": halving[-1][1],
            "halving_wall_s": halving_wall, "halving_reached_s": reached,
            "share_of_full_wall": None if reached is None else reached / full_wall,
            "stopped": sum(r.status == "stopped" for r in records), "halving_trials": len(records),
            "curves": {"full": full, "halving": halving}}


SETTINGS = ("trials_full", "trials_halving", "grace", "reduction")  # what makes two results files comparable


def recorded_rows(path: Path, opts: argparse.Namespace) -> dict[int, dict]:
    """Seeds measured by earlier invocations of the same settings (their sweeps may be gone: a session's
    runs/ does not outlive it, the results file is committed). Another setting's file is an error."""
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    for key in SETTINGS:
        if data["settings"][key] != getattr(opts, key):
            raise SystemExit(f"{path}: settings.{key} is {data['settings'][key]}, this run's is "
                             f"{getattr(opts, key)}; move the file aside or run its settings")
    return {int(seed): row for seed, row in data["seeds"].items()}


def summarise(per_seed: dict[int, dict]) -> dict:
    per_seed = dict(sorted(per_seed.items()))
    shares = [row["share_of_full_wall"] for row in per_seed.values()]
    known = [s for s in shares if s is not None]
    return {"seeds": per_seed, "share_mean": statistics.fmean(known) if known else None,
            "share_ci95_halfwidth": t_halfwidth(known), "never_reached": sum(s is None for s in shares)}


def markdown(summary: dict, opts: argparse.Namespace) -> str:
    lines = [f"Sampler seeds {', '.join(map(str, summary['seeds']))}; full = toy.yaml, {opts.trials_full} trials, FIFO; "
             f"halving = the same with pareto_halving (grace {opts.grace}, reduction {opts.reduction}), "
             f"{opts.trials_halving} trials. Hypervolume against the space's reference point.", "",
             "| seed | full: final HV | full: wall (s) | halving: final HV | halving: wall (s) | stopped | halving reaches full's HV at (s) | share of full's wall |",
             "|---|---|---|---|---|---|---|---|"]
    for seed, row in summary["seeds"].items():
        reached = "never" if row["halving_reached_s"] is None else f"{row['halving_reached_s']:.0f}"
        share = "—" if row["share_of_full_wall"] is None else f"{row['share_of_full_wall']:.2f}"
        lines.append(f"| {seed} | {row['full_hv']:.4g} | {row['full_wall_s']:.0f} | {row['halving_hv']:.4g} | "
                     f"{row['halving_wall_s']:.0f} | {row['stopped']}/{row['halving_trials']} | {reached} | {share} |")
    if summary["share_mean"] is not None:
        reached = len(summary["seeds"]) - summary["never_reached"]
        spread = (f" ± {summary['share_ci95_halfwidth']:.2f} (95% t)" if reached > 1 else " (one seed: no interval)")
        lines += ["", f"Share of the full sweep's wall time (seeds that reached it): {summary['share_mean']:.2f}"
                      f"{spread}; never reached: {summary['never_reached']} of {len(summary['seeds'])}. Target: <= 0.5."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials-full", type=int, default=8)
    parser.add_argument("--trials-halving", type=int, default=HALVING_DEFAULTS["trials_halving"])
    parser.add_argument("--grace", type=float, default=HALVING_DEFAULTS["grace"])
    parser.add_argument("--reduction", type=float, default=HALVING_DEFAULTS["reduction"])
    parser.add_argument("--summarise-only", action="store_true", help="read the sweeps already run")
    opts = parser.parse_args()
    stem = results_stem(opts)
    per_seed = recorded_rows(RESULTS / f"{stem}.json", opts)  # checked before hours of sweeps, not after
    if opts.summarise_only:  # the sweeps on this machine, else what the results file recorded
        fresh = [seed for seed in opts.seeds if (RUNS / f"{halving_name(opts)}_s{seed}").exists() or seed not in per_seed]
    else:
        fresh = [seed for seed in opts.seeds if seed not in per_seed]
        print(f"recorded in {stem}.json, kept: {sorted(per_seed)}; to run: {fresh}", flush=True)
        warm_reference_cache()
        for seed in fresh:
            for arm in ("full", "halving"):
                run_sweep(arm, seed, opts)
                print(f"{arm} seed {seed}: done", flush=True)
    per_seed.update({seed: seed_row(seed, halving_name(opts), full_name(opts)) for seed in fresh})
    summary = summarise(per_seed)
    RESULTS.mkdir(parents=True, exist_ok=True)
    settings = {**{key: getattr(opts, key) for key in SETTINGS}, "seeds": list(summary["seeds"])}
    (RESULTS / f"{stem}.json").write_text(json.dumps({"settings": settings, **summary}, indent=2))
    (RESULTS / f"{stem}.md").write_text(markdown(summary, opts))
    print(markdown(summary, opts))


if __name__ == "__main__":
    main()
