"""What does running the trainer through DeepSpeed, and through Ray Train on top, cost per step?

The same training run (toy world, one solver, same seed and batch sizes, one thread) is run three ways,
each in a fresh process, in rounds that cycle the order so that drift in machine load hits all alike:
  torch     a plain torch loop: the solvers step BilevelAdamW directly (no DeepSpeed engine)
  deepspeed the trainer as `raybilevel train` runs it: DeepSpeed ZeRO-0 engine, one process
  ray       the same, as one Ray Train worker (TorchTrainer, a local Ray cluster started for it)
Steady-state step time = median of the per-step wall times (solver iteration only; checkpoints and
evaluation excluded) written to each run's metrics.json.

Targets (issue #3): ray / deepspeed <= 1.05, ray / torch <= 1.10.

usage: python benchmarks/ray_overhead.py [--steps 150] [--rounds 2] [--solver alternating]
Results: benchmarks/results/ray_overhead.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "runs" / "benchmarks" / "ray_overhead"
RESULTS = ROOT / "benchmarks" / "results"
MODES = ("torch", "deepspeed", "ray")


class PlainTrainable:
    """The Trainable interface (solvers/base.py) on a bare module and optimizer: the no-DeepSpeed baseline.
    Same optimizer, same gradient clipping; no gradient accumulation (the benchmark uses grad_accum 1)."""

    def __init__(self, name: str, module: torch.nn.Module, param_groups: list[dict[str, Any]],
                 ds_config: dict[str, Any], weight_decay: float, after_step: Callable[[], None] | None = None) -> None:
        from raybilevel.solvers.optim import BilevelAdamW

        self.name, self.module, self.after_step = name, module, after_step
        self.optimizer = BilevelAdamW(param_groups, weight_decay=weight_decay)
        self.clip = ds_config["gradient_clipping"]

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.module(x_t, t, cond).sample.float()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self, level: str, lr: float) -> None:
        self.optimizer.level = level
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.after_step is not None:
            self.after_step()

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.module.state_dict().items()}, str(folder / f"{self.name}.safetensors"))


def run_mode(mode: str, output: Path, overrides: list[str]) -> None:
    """One run in this process (called in a fresh subprocess by main)."""
    from raybilevel.config import load_config

    cfg = load_config(None, overrides)
    if mode == "ray":
        from raybilevel.distributed import fit
        from raybilevel.tune import connected

        with connected(None):
            fit(cfg, output, name=output.name, storage_path=str(output.parent / "ray"))
        return
    import raybilevel.train

    if mode == "torch":
        raybilevel.train.DeepSpeedTrainable = PlainTrainable  # build_run's only engine constructor
    raybilevel.train.train(cfg, output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--solver", default="alternating")
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # internal: one run
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    overrides = [f"solver.name={opts.solver}", f"train.steps={opts.steps}", "train.checkpoint_every=0",
                 "train.sample_every=0", "eval.enabled=false", "ray.num_workers=1", "ray.cpus_per_worker=1"]
    if opts.mode:
        run_mode(opts.mode, opts.output, overrides)
        return
    started = time.time()
    medians: dict[str, list[float]] = {mode: [] for mode in MODES}
    for round_ in range(opts.rounds):
        order = MODES[round_ % 3:] + MODES[:round_ % 3]
        for mode in order:
            output = RUNS / f"{mode}_r{round_}"
            shutil.rmtree(output, ignore_errors=True)
            shutil.rmtree(RUNS / "ray" / output.name, ignore_errors=True)
            env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
            subprocess.run([sys.executable, __file__, "--mode", mode, "--output", str(output), "--steps", str(opts.steps),
                            "--solver", opts.solver], check=True, env=env, cwd=ROOT)
            metrics = json.loads((output / "metrics.json").read_text())
            medians[mode].append(metrics["seconds_per_step_median"])
            print(f"round {round_} {mode}: {metrics['seconds_per_step_median']:.4f} s/step (median)", flush=True)
    step = {mode: statistics.mean(values) for mode, values in medians.items()}
    ratios = {"deepspeed / torch": step["deepspeed"] / step["torch"], "ray / deepspeed": step["ray"] / step["deepspeed"],
              "ray / torch": step["ray"] / step["torch"]}
    targets = {"ray / deepspeed": 1.05, "ray / torch": 1.10}
    lines = [f"solver {opts.solver}, {opts.steps} steps per run, {opts.rounds} rounds, 1 thread per run; "
             "median step time per run, mean ± sd over rounds", "",
             "| mode | s/step | per round |", "|---|---|---|"]
    lines += [f"| {mode} | {step[mode]:.4f} ± {statistics.pstdev(medians[mode]):.4f} | "
              + ", ".join(f"{v:.4f}" for v in medians[mode]) + " |" for mode in MODES]
    lines += ["", "| ratio | value | target | met |", "|---|---|---|---|"]
    lines += [f"| {name} | {value:.3f} | {('≤ ' + str(targets[name])) if name in targets else '–'} | "
              f"{('yes' if value <= targets[name] else 'no') if name in targets else '–'} |" for name, value in ratios.items()]
    text = "\n".join(lines) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ray_overhead.json").write_text(json.dumps({"settings": {k: v for k, v in vars(opts).items() if k not in ("mode", "output")},
                                                           "medians": medians, "step": step, "ratios": ratios,
                                                           "wall_seconds": time.time() - started}, indent=2))
    (RESULTS / "ray_overhead.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
