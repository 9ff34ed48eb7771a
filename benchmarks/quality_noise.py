"""Is the toy quality objective fit for a sweep? Its noise between evaluation seeds against the differences
it must rank, at the sweep's sample count.

The shipped teacher (guidance 1.25) is sampled on --seeds evaluation seeds, and so is the same teacher at
worse guidance scales (2.0: visibly worse; 1.5: slightly worse), --samples images of the unrelated prompts
each. For every candidate metric:
  noise  = standard deviation over seeds of the teacher's value,
  signal = |mean(worse model) - mean(teacher)|,
  SNR    = signal / noise  (the bar: >= 4).

Rule, written before the run: `quality` is KID if its SNR against guidance 2.0 is >= 4 at the default
sweep's sample count (a distribution distance sees lost diversity, which a classifier's score cannot);
else the judge's attribute NLL if its SNR is >= 4; else neither qualifies and the README says so.

usage: python benchmarks/quality_noise.py [--samples 48 128] [--seeds 11 12 13 14 15 16] [--guidance 1.5 2.0]
Results: benchmarks/results/quality_noise.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from raybilevel.config import WorldConfig
from raybilevel.worlds.toy.judge import read_attributes
from raybilevel.worlds.toy.world import DEFAULT_GUIDANCE, build_toy_world

RESULTS = Path(__file__).resolve().parent / "results"
CANDIDATES = ("kid", "attribute_nll", "fd", "attribute_accuracy")


def measure(n: int, seed: int, guidance: float, world) -> dict[str, float]:
    evaluator = world.evaluator
    evaluator.guidance = guidance
    generator = torch.Generator().manual_seed(seed)
    images, items, wanted = evaluator._draw(world.teacher, evaluator.groups["unrelated"], n, generator, 0)
    features, predicted = read_attributes(evaluator.judge, images)
    quality = evaluator._quality(images, features, predicted, wanted, items, seed)
    return {k: quality[k] for k in CANDIDATES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, nargs="+", default=[48, 128])
    parser.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13, 14, 15, 16])
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.5, 2.0])
    parser.add_argument("--default-samples", type=int, default=48, help="the default sweep's eval.n_samples")
    opts = parser.parse_args()
    torch.set_num_threads(1)
    started = time.time()
    world = build_toy_world(WorldConfig(n_concept_images=1, toy_images=64), seed=0)
    table: dict[str, dict] = {}
    for n in opts.samples:
        values = {g: [measure(n, s, g, world) for s in opts.seeds] for g in (DEFAULT_GUIDANCE, *opts.guidance)}
        entry = {}
        for metric in CANDIDATES:
            base = [v[metric] for v in values[DEFAULT_GUIDANCE]]
            noise = statistics.stdev(base)
            entry[metric] = {"teacher_mean": statistics.fmean(base), "noise_sd": noise,
                             **{f"guidance_{g}": {"mean": statistics.fmean(v[metric] for v in values[g]),
                                                  "snr": abs(statistics.fmean(v[metric] for v in values[g])
                                                             - statistics.fmean(base)) / noise}
                                for g in opts.guidance}}
        table[str(n)] = entry
    worst = max(opts.guidance)
    at_default = table.get(str(opts.default_samples), next(iter(table.values())))
    snr = {m: at_default[m][f"guidance_{worst}"]["snr"] for m in ("kid", "attribute_nll")}
    chosen = "kid" if snr["kid"] >= 4 else "attribute_nll" if snr["attribute_nll"] >= 4 else None
    lines = [f"seeds {opts.seeds}; teacher at guidance {DEFAULT_GUIDANCE} against {opts.guidance}; unrelated prompts only",
             "", "| samples | metric | teacher mean | noise (sd over seeds) | "
             + " | ".join(f"mean at {g} | SNR at {g}" for g in opts.guidance) + " |",
             "|" + "---|" * (4 + 2 * len(opts.guidance))]
    for n, entry in table.items():
        for metric, e in entry.items():
            lines.append(f"| {n} | {metric} | {e['teacher_mean']:.4g} | {e['noise_sd']:.3g} | "
                         + " | ".join(f"{e[f'guidance_{g}']['mean']:.4g} | {e[f'guidance_{g}']['snr']:.1f}" for g in opts.guidance) + " |")
    lines += ["", f"Rule applied at {opts.default_samples} samples against guidance {worst}: quality = **{chosen}**."]
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {"settings": vars(opts), "table": table, "chosen": chosen, "wall_seconds": time.time() - started}
    (RESULTS / "quality_noise.json").write_text(json.dumps(result, indent=1))
    (RESULTS / "quality_noise.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
