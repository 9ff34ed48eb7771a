"""Wall time per lower step of each solver relative to distill_only, measured in one process.

Every solver is built once (same world, student, batch sizes); then rounds of --steps iterations are
timed solver after solver, so that drift in machine load hits all solvers alike. One iteration is one
lower step (penalty/adaptive: one inner step on the auxiliary copy), so ratio = cost of the method per
lower step. Targets (issue #2): alternating (K=10) <= 1.15x; penalty <= (K+2)/K + 5%.

usage: python benchmarks/step_cost.py [--steps 20] [--rounds 3] [--penalty-K 20] [--threads 2]
Results: benchmarks/results/step_cost.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from raybilevel.config import load_config
from raybilevel.train import build_run, peak_rss_mb

RESULTS = Path(__file__).resolve().parent / "results"
SOLVERS = ("distill_only", "alternating", "penalty", "adaptive", "bome", "joint", "two_stage")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed iterations per solver per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--alternating-K", type=int, default=10)
    parser.add_argument("--penalty-K", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    K = {"alternating": opts.alternating_K, "penalty": opts.penalty_K, "adaptive": opts.penalty_K}
    total = opts.warmup + opts.steps * opts.rounds
    runs = {}
    for solver in SOLVERS:
        # two_stage erases in the last tenth of its budget: make that tenth land inside the timed rounds
        cfg = load_config(None, [f"solver.name={solver}", f"solver.K={K.get(solver, 10)}", f"train.steps={total}",
                                 "world.n_concept_images=64", "eval.enabled=false"])
        runs[solver] = build_run(cfg, Path("/tmp/raybilevel_step_cost") / solver)
    position = {s: 0 for s in SOLVERS}
    times: dict[str, list[float]] = {s: [] for s in SOLVERS}
    for solver, run in runs.items():  # warm-up: first steps allocate optimizer state
        for _ in range(opts.warmup):
            run.solver.iteration(position[solver])
            position[solver] += 1
    for _ in range(opts.rounds):
        for solver, run in runs.items():
            began = time.perf_counter()
            for _ in range(opts.steps):
                run.solver.iteration(position[solver])
                position[solver] += 1
            times[solver].append((time.perf_counter() - began) / opts.steps)
    base = statistics.mean(times["distill_only"])
    targets = {"alternating": 1.15, "penalty": (opts.penalty_K + 2) / opts.penalty_K + 0.05}
    table = {s: {"seconds_per_step": statistics.mean(t), "spread": statistics.pstdev(t),
                 "ratio": statistics.mean(t) / base, "K": K.get(s), "target": targets.get(s),
                 "budget": runs[s].solver.state_dict()["budget"]} for s, t in times.items()}
    lines = [f"{opts.rounds} rounds x {opts.steps} iterations per solver, {opts.threads} threads, lower batch "
             f"{runs['distill_only'].cfg.lower.batch_size}, upper batch {runs['distill_only'].cfg.upper.batch_size}",
             "", "| solver | K | s/step (mean ± sd over rounds) | × distill_only | target | met |", "|---|---|---|---|---|---|"]
    for s, e in table.items():
        met = "–" if e["target"] is None else ("yes" if e["ratio"] <= e["target"] else "**no**")
        target = "–" if e["target"] is None else f"≤ {e['target']:.2f}"
        lines.append(f"| {s} | {e['K'] or '–'} | {e['seconds_per_step']:.4f} ± {e['spread']:.4f} | {e['ratio']:.3f} | {target} | {met} |")
    lines.append(f"\npeak RSS (all {len(SOLVERS)} solvers built in one process): {peak_rss_mb():.0f} MB")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "step_cost.json").write_text(json.dumps({"settings": vars(opts), "table": table,
                                                        "peak_rss_mb": peak_rss_mb()}, indent=2))
    (RESULTS / "step_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
