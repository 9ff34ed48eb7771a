"""How fast does each Optuna sampler find the quality / concept-rate front of a search space?

For every sampler (multi-objective TPE, NSGA-II, random search) and every sampler seed, one Optuna study
proposes trials from the space (default: raybilevel/search_spaces/toy.yaml, with the same define-by-run space and
sampler settings the sweep uses); each trial is a real training run of the space's trial config, run in
this process (no Ray: the benchmark measures the samplers, not the cluster). After every trial the
hypervolume of the trials so far is computed against the space's reference point. Trials within a study
run one after another (the default sweep runs two at a time, which gives TPE slightly less to learn from).

Target (issue #3): TPE or NSGA-II reaches random search's 32-trial hypervolume within 12 trials.

Trials are shortened with --fraction (of the space's compute budget, or of its steps where it has none)
and --samples (both stated in the results) so that the whole benchmark fits in about an hour on 2 cores;
the training seed is fixed, so only the sampler seed varies.

Rerun rule, written 2026-12-03 before the run (the first run used FD quality, the old regime and steps):
`--seeds 0 1 2 --trials random=32 motpe=12 nsga2=12 --fraction 0.333 --samples 32 --parallel 2` on the
current toy space, its own reference point; the target above, unchanged; spread as 95% t half-widths.

usage: python benchmarks/sweep_efficiency.py [--seeds 0 1 2] [--trials random=32 motpe=12 nsga2=12]
       [--fraction 0.333] [--samples 32] [--parallel 2]
Results: benchmarks/results/sweep_efficiency.{json,md}; studies and runs under runs/benchmarks/sweep_efficiency/
(not in git; an interrupted benchmark continues where it stopped).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import optuna
import torch

from raybilevel.config import parse_override
from raybilevel.metrics import t_halfwidth
from raybilevel.pareto import hypervolume
from raybilevel.search_space import SearchSpace, load_space
from raybilevel.train import train
from raybilevel.tune import sampler_for

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "runs" / "benchmarks" / "sweep_efficiency"
RESULTS = ROOT / "benchmarks" / "results"
CHECKPOINTS = (4, 8, 12, 16, 24, 32)


def sampler(name: str, seed: int, space: SearchSpace) -> optuna.samplers.BaseSampler:
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return sampler_for(dataclasses.replace(space.sampler, name=name, seed=seed))


def study_folder(name: str, seed: int, opts: argparse.Namespace) -> Path:
    """One folder per space and shortening: another --fraction never continues this one's studies."""
    return RUNS / f"{load_space(opts.space).name}_f{opts.fraction:g}" / f"{name}_s{seed}"


def shortened_length(space: SearchSpace, fraction: float) -> str:
    """The override that gives each trial `fraction` of the space's budget (MACs if it has one, else steps)."""
    train_cfg = space.trial_config(space.example_params()).train
    if train_cfg.compute_budget > 0:
        return f"train.compute_budget={train_cfg.compute_budget * fraction:.6g}"
    return f"train.steps={max(1, round(train_cfg.steps * fraction))}"


def run_study(name: str, seed: int, n_trials: int, opts: argparse.Namespace) -> list[dict]:
    """Run (or continue) one study; returns its trials in order as {number, params, values or None}."""
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space(opts.space)
    folder = study_folder(name, seed, opts)
    folder.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name=f"{name}_s{seed}", storage=f"sqlite:///{folder / 'optuna.db'}",
                                load_if_exists=True, directions=[f"{mode}imize" for mode in space.objectives.values()],
                                sampler=sampler(name, seed, space))
    for stale in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(stale.number, state=optuna.trial.TrialState.FAIL)  # interrupted last time: counts as tried
    while len(study.trials) < n_trials:
        trial = study.ask()
        space.define_by_run(trial)
        shorten = [shortened_length(space, opts.fraction), f"eval.n_samples={opts.samples}", "train.checkpoint_every=0",
                   "train.sample_every=0", "train.eval_every=0"]
        params = trial.params | dict(parse_override(text) for text in shorten)
        run_dir = folder / f"trial_{trial.number:03d}"
        shutil.rmtree(run_dir, ignore_errors=True)
        try:
            metrics = train(space.trial_config(params), run_dir)
            values = [metrics.get(key) for key in space.objectives]
        except Exception as error:  # a diverged trial is a failed point, as in the sweep
            print(f"{name} s{seed} trial {trial.number} failed: {error}", flush=True)
            values = [None]
        if any(v is None for v in values):
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            study.tell(trial, values)
        print(f"{name} s{seed}: trial {trial.number + 1}/{n_trials} {values}", flush=True)
    return [{"number": t.number, "params": t.params, "values": t.values} for t in study.trials]


def read_study(name: str, seed: int, opts: argparse.Namespace) -> list[dict] | None:
    """The trials a study holds so far (None if it never started): for --summarise-only."""
    path = study_folder(name, seed, opts) / "optuna.db"
    if not path.exists():
        return None
    study = optuna.load_study(study_name=f"{name}_s{seed}", storage=f"sqlite:///{path}")
    finished = [t for t in study.trials if t.state.is_finished()]
    return [{"number": t.number, "params": t.params, "values": t.values} for t in finished]


def hypervolume_curve(trials: list[dict], space: SearchSpace, reference: list[float]) -> list[float]:
    modes = list(space.objectives.values())
    points, curve = [], []
    for trial in trials:
        if trial["values"] is not None:
            points.append(trial["values"])
        curve.append(hypervolume(points, reference, modes) if points else 0.0)
    return curve


def trials_to_reach(curve: list[float], target: float) -> int | None:
    return next((n for n, hv in enumerate(curve, start=1) if hv >= target), None)


def summarise(curves: dict[str, dict[int, list[float]]]) -> dict:
    table: dict = {}
    random_32 = [c[31] for c in curves.get("random", {}).values() if len(c) >= 32]
    target = statistics.mean(random_32) if random_32 else None
    for name, by_seed in curves.items():
        row: dict = {"seeds": sorted(by_seed)}
        for n in CHECKPOINTS:
            at_n = [c[n - 1] for c in by_seed.values() if len(c) >= n]
            if at_n:
                row[f"hv@{n}"] = (statistics.mean(at_n), t_halfwidth(at_n))
        if target is not None:
            row["trials_to_random32"] = {seed: trials_to_reach(c, target) for seed, c in sorted(by_seed.items())}
            mean_curve = [statistics.mean(c[i] for c in by_seed.values()) for i in range(min(map(len, by_seed.values())))]
            row["mean_curve_trials_to_random32"] = trials_to_reach(mean_curve, target)
        table[name] = row
    return {"random_32_trial_hv_mean": target, "table": table}


def markdown(summary: dict, opts: argparse.Namespace, space: SearchSpace, reference: list[float]) -> str:
    def fmt(v):
        return "–" if v is None else f"{v[0]:.4g} ± {v[1]:.2g}"

    lines = [f"space `{space.name}`, {opts.fraction:g} of its budget ({shortened_length(space, opts.fraction)}) and "
             f"{opts.samples} eval samples per trial (shortened), sampler seeds {opts.seeds}, reference point "
             f"{dict(zip(space.objectives, reference))}; mean ± 95% t half-width over seeds",
             "", "| sampler | " + " | ".join(f"HV@{n}" for n in CHECKPOINTS) + " | trials to random's HV@32 (per seed) | (mean curve) |",
             "|---|" + "---|" * (len(CHECKPOINTS) + 2)]
    for name, row in summary["table"].items():
        reach = row.get("trials_to_random32", {})
        per_seed = ", ".join(f"s{s}: {n if n is not None else 'never'}" for s, n in reach.items())
        mean_reach = row.get("mean_curve_trials_to_random32")
        lines.append(f"| {name} (seeds {', '.join(map(str, row['seeds']))}) | " + " | ".join(fmt(row.get(f"hv@{n}")) for n in CHECKPOINTS)
                     + f" | {per_seed} | {mean_reach if mean_reach is not None else 'never'} |")
    target = summary["random_32_trial_hv_mean"]
    if target is not None:
        met = [n for n, r in summary["table"].items() if n != "random" and (r.get("mean_curve_trials_to_random32") or 99) <= 12]
        lines.append(f"\nrandom search's mean 32-trial hypervolume: {target:.4g}. Target (TPE or NSGA-II reaches it "
                     f"within 12 trials, mean curve): {'met by ' + ', '.join(met) if met else 'not met'}.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="toy")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", nargs="+", default=["random=32", "motpe=12", "nsga2=12"],
                        help="sampler=trials per study")
    parser.add_argument("--fraction", type=float, default=0.333, help="of the space's compute budget (or steps) per trial")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--summarise-only", action="store_true", help="tabulate the studies as they are, run nothing")
    parser.add_argument("--reference", type=float, nargs=2, metavar=("QUALITY", "CONCEPT_RATE"),
                        help="hypervolume reference point (default: the space's; shortened trials score worse)")
    opts = parser.parse_args()
    space = load_space(opts.space)
    reference = opts.reference or [space.reference_point[key] for key in space.objectives]
    budgets = {name: int(n) for name, n in (item.split("=") for item in opts.trials)}
    started = time.time()
    studies = [(name, seed, n) for seed in opts.seeds for name, n in budgets.items()]
    if opts.summarise_only:
        found = [(study, read_study(study[0], study[1], opts)) for study in studies]
        studies, results = [s for s, t in found if t], [t for _, t in found if t]
    else:
        with ProcessPoolExecutor(opts.parallel, mp_context=get_context("spawn")) as pool:
            results = list(pool.map(run_study, *zip(*studies), [opts] * len(studies)))
    curves: dict[str, dict[int, list[float]]] = {}
    for (name, seed, _), trials in zip(studies, results):
        curves.setdefault(name, {})[seed] = hypervolume_curve(trials, space, reference)
    summary = summarise(curves)
    RESULTS.mkdir(parents=True, exist_ok=True)
    timing = {} if opts.summarise_only else {"wall_seconds": time.time() - started}
    (RESULTS / "sweep_efficiency.json").write_text(json.dumps(
        {"settings": vars(opts), "curves": curves, "trials": {f"{n}_s{s}": t for (n, s, _), t in zip(studies, results)},
         **summary, **timing}, indent=2))
    text = markdown(summary, opts, space, reference)
    (RESULTS / "sweep_efficiency.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
