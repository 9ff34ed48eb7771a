"""Does distillation leak an erased concept into a pruned student, and which solver removes it best?

Cells (toy world, concept "striped" by default, fine-tuning data without it, the shipped default regime:
channels pruning at 25%, lower lr 5e-5 with warm-up and cosine decay):
  teacher        the unpruned teacher, evaluated as shipped
  ddpm_only      distill_only solver, lower weights 1/0/0 (no distillation)
  kd_only        distill_only solver, lower weights 0/2/0.1 (distillation alone)
  distill        distill_only solver, lower weights 1/2/0.1 (output + feature KD)
  bome, alternating, penalty, adaptive   the bilevel solvers (ESD-x upper level)
  two_stage, joint                 the baselines
Every trained cell spends the same compute (multiply-accumulates, solvers/compute.py): what distill_only
spends in --steps iterations at the default lower batch (teacher forward + student forward and backward per
sample), passed to every cell as train.compute_budget, so a solver with costlier iterations takes fewer.
The MACs, iterations and theta-updates each cell spent are in the table. Each cell runs --seeds seeds;
metrics are the mean over seeds ± the half-width of its 95% t-interval (seed-to-seed spread, the noise that
decides a ranking). Every cell of one seed is evaluated on the same noise (--eval-seed), so cells pair.

usage: python benchmarks/leakage.py [--steps 300] [--seeds 1 2 3] [--samples 64] [--eval-seed 1234] [--cells ...]
                                   [--teacher teacher_6000]
Results: benchmarks/results/leakage.{json,md}; run folders under runs/benchmarks/leakage/ (not in git).
With --teacher other than the default: leakage_<teacher>.{json,md} and runs/benchmarks/leakage_<teacher>/.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from raybilevel.metrics import t_halfwidth

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "runs" / "benchmarks"  # one folder per study (stem)
RESULTS = ROOT / "benchmarks" / "results"

CELLS: dict[str, list[str]] = {
    "ddpm_only": ["solver.name=distill_only", "lower.w_diff=1", "lower.w_out=0", "lower.w_feat=0"],
    "kd_only": ["solver.name=distill_only", "lower.w_diff=0", "lower.w_out=2", "lower.w_feat=0.1"],
    "distill": ["solver.name=distill_only"],
    "bome": ["solver.name=bome"],
    "alternating": ["solver.name=alternating"],
    "penalty": ["solver.name=penalty"],
    "adaptive": ["solver.name=adaptive"],
    "two_stage": ["solver.name=two_stage"],
    "joint": ["solver.name=joint"],
}
METRICS = ("concept_rate", "concept_rate_floor", "concept_rate_raw", "paraphrase_concept_rate",
           "attribute_accuracy", "quality")


def _run(args: list[str], log: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with open(log, "w") as out:
        subprocess.run([sys.executable, "-m", "raybilevel", *args], stdout=out, stderr=subprocess.STDOUT,
                       env=env, check=True, cwd=ROOT)


def equal_compute(steps: int) -> float:
    """MACs of `steps` distill_only iterations with the default lower loss (teacher + student fwd/bwd)."""
    from raybilevel.config import Config
    from raybilevel.pruning import prune
    from raybilevel.solvers.compute import BACKWARD_FORWARDS
    from raybilevel.worlds.toy.world import assets_dir, load_teacher_stack

    cfg = Config()
    teacher, _, _ = load_teacher_stack(assets_dir() / "teacher")
    stats = prune(cfg.pruning.method, teacher, sparsity=cfg.pruning.sparsity).description["stats"]
    per_sample = stats["teacher"]["macs"] + (1 + BACKWARD_FORWARDS) * stats["student"]["macs"]
    return float(steps * cfg.lower.batch_size * per_sample)


def stem(opts: argparse.Namespace) -> str:
    """The name of this study's run folder and results files: one per teacher, so studies never mix."""
    return "leakage" if opts.teacher == "teacher" else f"leakage_{opts.teacher}"


def job(cell: str, seed: int, opts: argparse.Namespace) -> tuple[str, int, dict]:
    folder = RUNS / stem(opts) / f"{cell}_s{seed}"
    common = ["--set", f"seed={seed}", "--set", f"eval.seed={opts.eval_seed}", "--set", f"eval.n_samples={opts.samples}",
              "--set", f"world.concept={opts.concept}", "--set", f"world.toy_teacher={opts.teacher}"]
    if not (folder / "metrics.json").exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        if cell == "teacher":
            folder.mkdir(exist_ok=True)
            _run(["eval", "--student", "teacher", "--output", str(folder / "metrics.json"), *common], folder.with_suffix(".log"))
        else:
            budget = [f"train.compute_budget={opts.compute_budget:.6g}", "train.checkpoint_every=0"]
            sets = sum((["--set", s] for s in CELLS[cell] + budget), [])
            _run(["train", "--output", str(folder), *common, *sets], folder.with_suffix(".log"))
    return cell, seed, json.loads((folder / "metrics.json").read_text())


def summarise(results: list[tuple[str, int, dict]]) -> dict[str, dict]:
    table: dict[str, dict] = {}
    for cell in ["teacher", *CELLS]:
        rows = [m for c, _, m in results if c == cell]
        if not rows:
            continue
        entry = {"n_seeds": len(rows)}
        for key in METRICS:
            values = [r[key] for r in rows if r.get(key) is not None]
            entry[key] = (statistics.mean(values), t_halfwidth(values)) if values else None
        if "budget" in rows[0]:
            entry["passes"] = rows[0]["budget"]
            entry["compute"] = rows[0].get("compute")
            entry["seconds_per_step"] = statistics.mean(r["seconds_per_step"] for r in rows)
        entry["peak_rss_mb"] = max(r.get("peak_rss_mb", 0) for r in rows)
        table[cell] = entry
    return table


# Paired comparisons, fixed before the run: does distillation leak more than DDPM alone, and does a bilevel
# solver beat fine-tune-then-erase (two_stage) at equal compute? Per seed the two cells share the training
# seed and the evaluation noise, so their difference cancels the noise they share.
PAIRS = [("distill", "ddpm_only"), ("kd_only", "ddpm_only"), *((s, "two_stage") for s in ("bome", "adaptive",
         "alternating", "penalty", "joint"))]
PAIRED_METRICS = ("concept_rate", "paraphrase_concept_rate", "attribute_accuracy", "quality")


def paired(results: list[tuple[str, int, dict]]) -> list[dict]:
    by_cell = {(c, s): m for c, s, m in results}
    rows = []
    for cell, base in PAIRS:
        seeds = sorted(s for c, s in by_cell if c == cell and (base, s) in by_cell)
        if not seeds:
            continue
        row = {"cell": cell, "base": base, "n_seeds": len(seeds)}
        for key in PAIRED_METRICS:
            diffs = [by_cell[cell, s][key] - by_cell[base, s][key] for s in seeds
                     if by_cell[cell, s].get(key) is not None and by_cell[base, s].get(key) is not None]
            row[key] = (statistics.mean(diffs), t_halfwidth(diffs)) if diffs else None
        rows.append(row)
    return rows


def markdown(table: dict[str, dict], opts: argparse.Namespace, pairs: list[dict]) -> str:
    def fmt(v, digits=3):
        return "–" if v is None else f"{v[0]:.{digits}f} ± {v[1]:.{digits}f}"

    lines = [f"teacher `{opts.teacher}`, concept `{opts.concept}`, {opts.compute_budget / 1e12:.3g} TMACs per cell (distill_only's {opts.steps} steps), {opts.samples} samples per prompt group per seed, evaluation seed {opts.eval_seed}; mean ± 95% t half-width over seeds; "
             f"n_seeds per cell in the table (seeds asked: {opts.seeds})",
             "", "| cell | seeds | concept rate ↓ | floor | raw rate | paraphrase rate ↓ | attribute acc ↑ | quality ↓ | lower/upper passes | TMACs | iterations | θ-updates | s/step |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for cell, e in table.items():
        passes = f"{e['passes']['lower_fb']}/{e['passes']['upper_fb']}" if "passes" in e else "–"
        step = f"{e['seconds_per_step']:.3f}" if "seconds_per_step" in e else "–"
        spent = e.get("compute") or {}
        compute = (f"{spent['macs'] / 1e12:.2f} | {spent['steps']} | {spent['theta_updates']}" if spent else "– | – | –")
        lines.append(f"| {cell} | {e['n_seeds']} | {fmt(e['concept_rate'])} | {fmt(e['concept_rate_floor'])} | {fmt(e['concept_rate_raw'])} | "
                     f"{fmt(e['paraphrase_concept_rate'])} | {fmt(e['attribute_accuracy'])} | {fmt(e['quality'], 4)} | {passes} | "
                     f"{compute} | {step} |")
    peaks = [e["peak_rss_mb"] for e in table.values() if "peak_rss_mb" in e]
    lines.append(f"\npeak RSS of one run: {max(peaks):.0f} MB" if peaks else "\nno cell has finished yet")
    lines += ["", "Paired differences (cell − base, same seeds and evaluation noise; mean ± 95% t half-width):", "",
              "| cell − base | seeds | concept rate | paraphrase rate | attribute acc | quality |", "|---|---|---|---|---|---|"]
    for row in pairs:
        lines.append(f"| {row['cell']} − {row['base']} | {row['n_seeds']} | "
                     + " | ".join(fmt(row[key]) for key in PAIRED_METRICS) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--eval-seed", type=int, default=1234, help="one evaluation noise for every cell and seed")
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--concept", default="striped")
    parser.add_argument("--teacher", default="teacher", help="world.toy_teacher: teacher (4,000 steps) or teacher_6000")
    parser.add_argument("--cells", nargs="+", default=["teacher", *CELLS])
    parser.add_argument("--summarise-only", action="store_true", help="tabulate the runs that finished, run nothing")
    parser.add_argument("--compute-budget", type=float, help="MACs per cell (default: distill_only at --steps)")
    opts = parser.parse_args()
    opts.compute_budget = opts.compute_budget or equal_compute(opts.steps)
    started = time.time()
    jobs = [(cell, seed) for seed in opts.seeds for cell in opts.cells]  # seed-major: whole seeds finish first
    if opts.summarise_only:
        runs = RUNS / stem(opts)
        results = [(c, s, json.loads((runs / f"{c}_s{s}" / "metrics.json").read_text())) for c, s in jobs
                   if (runs / f"{c}_s{s}" / "metrics.json").exists()]
    else:
        with ThreadPoolExecutor(opts.parallel) as pool:
            results = list(pool.map(lambda cs: job(*cs, opts), jobs))
    table, pairs = summarise(results), paired(results)
    RESULTS.mkdir(parents=True, exist_ok=True)
    timing = {"wall_seconds": time.time() - started}
    if opts.summarise_only:  # keep the wall time of the run that trained the cells
        previous = RESULTS / f"{stem(opts)}.json"
        timing = {k: v for k, v in json.loads(previous.read_text()).items() if k == "wall_seconds"} if previous.exists() else {}
    (RESULTS / f"{stem(opts)}.json").write_text(json.dumps({"settings": vars(opts), "table": table, "paired": pairs, **timing}, indent=2))
    (RESULTS / f"{stem(opts)}.md").write_text(markdown(table, opts, pairs))
    print(markdown(table, opts, pairs))


if __name__ == "__main__":
    main()
