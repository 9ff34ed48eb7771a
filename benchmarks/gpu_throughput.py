"""Training throughput and peak memory per GPU for a Stable-Diffusion-2.1-sized UNet, through the trainer's
own code path (build_run: pruning, losses, solver, DeepSpeed engines; then solver iterations).

Model: UNet2DConditionModel with SD 2.1(-base)'s UNet config written below (block_out_channels 320/640/1280/
1280, cross-attention dim 1024, attention heads 5/10/20/20, linear projections, 4 latent channels; 866M
parameters) with random weights, at 512 px (4x64x64 latents) with 77 text tokens. Teacher and student are the
same size (pruning.method=none: the most a student can need); `--set pruning.method=channels --set
pruning.sparsity=0.3` measures a pruned student. Latents and text embeddings are random and held in memory, as
a run serves them from cached latents and its warm prompt cache: the VAE and the text encoder do not run.

Grid: solver (distill_only, penalty, alternating, adaptive) x ZeRO stage (0, 2, 3) x precision x gradient
checkpointing. Each cell runs in a fresh process (torchrun over --gpus GPUs), so its peak memory is its own
and a cell that runs out of memory is recorded as "oom" instead of ending the benchmark. Per cell: --warmup
iterations, then --steps timed ones, rounded up to a multiple of solver.K so that upper (alternating) and
outer (penalty, adaptive) steps come in their proportion. One iteration is one lower step (penalty/adaptive:
one inner step on the auxiliary copy) plus the upper/outer step every K-th.
  samples/s = lower batch x grad_accum x GPUs / mean seconds per iteration
  peak memory = the largest torch.cuda.max_memory_allocated over the ranks during the timed iterations (on a
  CPU: the cell process's peak RSS, which includes building it)

usage, on one machine with all its GPUs (one command; defaults shown):
    python benchmarks/gpu_throughput.py [--gpus N] [--solvers distill_only penalty alternating adaptive]
        [--zero 0 2 3] [--precisions bf16] [--checkpointing off on] [--batch 16] [--upper-batch 4] [--K 5]
        [--warmup 5] [--steps 10] [--set engine.channels_last=true ...]
Expected runtime: about 30-60 s per cell on one H100 (process start, two random SD UNets built on the GPU,
15 iterations), so 15-25 min for the default 24 cells; an estimate, not yet measured on a GPU.
    python benchmarks/gpu_throughput.py --size tiny      # the same code on a tiny UNet, on a CPU: ~45 s
(tiny defaults: ZeRO 2, fp32, checkpointing on, batch 4/2, K 2, 1 + 2 iterations: one cell per solver)
Results: benchmarks/results/gpu_throughput.{json,md} (--size tiny: gpu_throughput_tiny.*), rewritten after
every cell.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import torch

from raybilevel.atomic import write_json_atomic, write_text_atomic

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

SD21_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
)
# The same blocks at toy widths: what --size tiny runs on a CPU.
TINY_UNET = SD21_UNET | dict(sample_size=8, layers_per_block=1, block_out_channels=(16, 32, 64, 64),
                             cross_attention_dim=32, attention_head_dim=(2, 2, 4, 4), norm_num_groups=8)
SIZES = {"sd21": {"unet": SD21_UNET, "tokens": 77, "label": "SD 2.1-sized UNet, 512 px"},
         "tiny": {"unet": TINY_UNET, "tokens": 8, "label": "tiny UNet of SD 2.1's blocks, 64 px"}}
# Option defaults per size: the full grid on GPUs; one cell per solver on a CPU (about 8 s each, mostly start-up).
DEFAULTS = {"sd21": dict(zero=[0, 2, 3], precisions=["bf16"], checkpointing=["off", "on"], batch=16, upper_batch=4,
                         K=5, warmup=5, steps=10),
            "tiny": dict(zero=[2], precisions=["fp32"], checkpointing=["on"], batch=4, upper_batch=2, K=2, warmup=1,
                         steps=2)}
SOLVERS = ("distill_only", "penalty", "alternating", "adaptive")


class RandomPrompts:
    """Stands in for the warm PromptEncoder cache: one fixed random embedding per prompt string."""

    def __init__(self, tokens: int, dim: int, device: torch.device) -> None:
        self.tokens, self.dim, self.device = tokens, dim, device
        self._cache: dict[str, torch.Tensor] = {}

    def __call__(self, prompts: list[str]) -> torch.Tensor:
        for prompt in prompts:
            if prompt not in self._cache:
                generator = torch.Generator().manual_seed(zlib.crc32(prompt.encode()))
                self._cache[prompt] = torch.randn(self.tokens, self.dim, generator=generator).to(self.device)
        return torch.stack([self._cache[p] for p in prompts])


class RandomLatents:
    """FinetuneData over fixed random latents, served from memory as cached latents are."""

    def __init__(self, n: int, shape: tuple[int, int, int], seed: int) -> None:
        self.latents = torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))
        self.captions = [f"a photo of object {i % 16}" for i in range(n)]

    def __len__(self) -> int:
        return len(self.latents)

    def get_batch(self, indices: list[int]) -> tuple[torch.Tensor, list[str]]:
        return self.latents[indices], [self.captions[i] for i in indices]


def random_world(size: str, device: torch.device):
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from raybilevel.worlds import ConceptData, World

    spec = SIZES[size]
    torch.manual_seed(0)
    with device:  # initialised where it trains: initialising an SD UNet on the CPU takes long
        teacher = UNet2DConditionModel(**spec["unet"])
    shape = (spec["unet"]["in_channels"], spec["unet"]["sample_size"], spec["unet"]["sample_size"])
    prompts = [f"a painting in the style of artist {i}" for i in range(4)]
    concept = ConceptData(name="style", prompts=prompts, anchor_prompts=["a painting"] * len(prompts),
                          images=RandomLatents(64, shape, seed=2).latents,
                          image_prompts=[prompts[i % len(prompts)] for i in range(64)])

    def no_evaluation(*_args: Any, **_kwargs: Any) -> dict[str, Any]:
        raise RuntimeError("the throughput benchmark does not evaluate")

    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    return World(name=f"random:{size}", teacher=teacher.eval().requires_grad_(False),
                 prompts=RandomPrompts(spec["tokens"], spec["unet"]["cross_attention_dim"], device),
                 scheduler_config=dict(scheduler.config), sample_shape=shape,
                 finetune=RandomLatents(256, shape, seed=1), concept=concept, evaluator=no_evaluation)


def cell_overrides(cell: dict[str, Any], opts: argparse.Namespace) -> list[str]:
    return [f"solver.name={cell['solver']}", f"solver.K={opts.K}", f"engine.zero_stage={cell['zero']}",
            f"engine.precision={cell['precision']}", f"engine.gradient_checkpointing={cell['checkpointing']}",
            "pruning.method=none", f"lower.batch_size={opts.batch}", f"upper.batch_size={opts.upper_batch}",
            f"train.steps={opts.warmup + timed_steps(opts)}", "eval.enabled=false", *opts.set]


def timed_steps(opts: argparse.Namespace) -> int:
    return -(-opts.steps // opts.K) * opts.K


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_cell(opts: argparse.Namespace) -> None:
    """One cell, on this rank: build the run, warm up, time the iterations, write this rank's row."""
    from raybilevel.config import load_config
    from raybilevel.train import build_run, peak_rss_mb

    cell = json.loads(opts.cell)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    cfg = load_config(None, cell_overrides(cell, opts))
    run = build_run(cfg, Path(opts.rows), world=random_world(opts.size, device))
    for step in range(opts.warmup):  # the first steps allocate optimizer state (and compile, if asked)
        run.solver.iteration(step)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for step in range(opts.warmup, opts.warmup + timed_steps(opts)):
        began = time.perf_counter()
        run.solver.iteration(step)
        _sync(device)
        times.append(time.perf_counter() - began)
    module = run.solver.student.module
    row = {"seconds": times, "world_size": run.dist.world_size,
           "samples_per_step": cfg.lower.batch_size * cfg.engine.grad_accum * run.dist.world_size,
           "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
           "peak_rss_gib": peak_rss_mb() / 1024,
           "params": {k: v["params"] for k, v in run.student.description["stats"].items()},
           "attention": sorted({type(p).__name__ for p in module.attn_processors.values()})}
    write_json_atomic(Path(opts.rows) / f"rank{run.dist.rank}.json", row)


def measure(cell: dict[str, Any], argv: list[str], gpus: int, timeout: float) -> dict[str, Any]:
    """Run one cell in a fresh process (torchrun for several GPUs) and merge its ranks' rows."""
    launcher = [sys.executable] + (["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}"]
                                   if gpus > 1 else [])
    with tempfile.TemporaryDirectory(prefix="gpu_throughput-") as rows:
        try:
            result = subprocess.run([*launcher, str(Path(__file__).resolve()), *argv, "--cell", json.dumps(cell), "--rows", rows],
                                    capture_output=True, text=True, timeout=timeout, cwd=ROOT)
            error = result.stderr if result.returncode else ""
        except subprocess.TimeoutExpired:
            error = f"timed out after {timeout:.0f} s"
        ranks = [json.loads(p.read_text()) for p in sorted(Path(rows).glob("rank*.json"))]
    if len(ranks) < gpus:  # every rank writes its row last: a nonzero exit after that (seen with ZeRO-3
        # under torchrun, at interpreter exit) does not void the measurement
        status = "oom" if "out of memory" in error.lower() else "failed"
        last = [line for line in error.strip().splitlines() if line.strip()][-1:] or ["no row written"]
        return cell | {"status": status, "error": last[0][:300]}
    seconds = ranks[0]["seconds"]  # the ranks step in lockstep (gradients are reduced every step)
    memory = [r["peak_memory_gib"] for r in ranks if r["peak_memory_gib"] is not None]
    return cell | {"status": "ok", "world_size": ranks[0]["world_size"], "seconds_per_step": statistics.mean(seconds),
                   "samples_per_s": ranks[0]["samples_per_step"] / statistics.mean(seconds),
                   "seconds_per_step_median": statistics.median(seconds), "timed_steps": len(seconds),
                   "peak_memory_gib": max(memory) if memory else None,
                   "peak_rss_gib": max(r["peak_rss_gib"] for r in ranks),
                   "params": ranks[0]["params"], "attention": ranks[0]["attention"]}


def table(rows: list[dict[str, Any]], opts: argparse.Namespace, gpus: int, device: str) -> str:
    memory = "peak GiB per GPU" if torch.cuda.is_available() else "peak RSS GiB (process)"
    params = next((r["params"] for r in rows if "params" in r), {})
    lines = [f"{SIZES[opts.size]['label']}, random weights; student {params.get('student', 0) / 1e6:.1f}M and "
             f"teacher {params.get('teacher', 0) / 1e6:.1f}M parameters; lower batch {opts.batch} and upper batch "
             f"{opts.upper_batch} per process, K {opts.K}; {gpus} x {device}; {timed_steps(opts)} timed iterations "
             f"after {opts.warmup}; overrides: {' '.join(opts.set) or 'none'}", "",
             f"| solver | ZeRO | precision | grad. checkpointing | s/iteration (mean) | samples/s | {memory} | status |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ok = r["status"] == "ok"
        peak = r.get("peak_memory_gib") if torch.cuda.is_available() else r.get("peak_rss_gib")
        lines.append(f"| {r['solver']} | {r['zero']} | {r['precision']} | {'on' if r['checkpointing'] else 'off'} | "
                     + (f"{r['seconds_per_step']:.4f} | {r['samples_per_s']:.2f} | {peak:.2f} | ok |" if ok
                        else f"– | – | – | {r['status']}: {r['error'][:120].replace('|', '/')} |"))
    return "\n".join(lines) + "\n"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="sd21")
    parser.add_argument("--gpus", type=int, default=0, help="processes per cell (0 = every visible GPU, or 1)")
    parser.add_argument("--solvers", nargs="+", choices=SOLVERS, default=list(SOLVERS))
    parser.add_argument("--zero", nargs="+", type=int, choices=(0, 1, 2, 3))
    parser.add_argument("--precisions", nargs="+", choices=("fp32", "bf16", "bf16_autocast"))
    parser.add_argument("--checkpointing", nargs="+", choices=("off", "on"))
    parser.add_argument("--batch", type=int, help="lower batch per GPU")
    parser.add_argument("--upper-batch", type=int, help="upper batch per GPU")
    parser.add_argument("--K", type=int)
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--steps", type=int, help="timed iterations (rounded up to a multiple of K)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, every cell")
    parser.add_argument("--cell-timeout", type=float, default=1800)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--cell", help=argparse.SUPPRESS)  # internal: run one cell in this process
    parser.add_argument("--rows", help=argparse.SUPPRESS)
    parser.set_defaults(**DEFAULTS[parser.parse_known_args(argv)[0].size])
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    opts = parse(argv)
    if opts.cell:
        run_cell(opts)
        return
    gpus = opts.gpus or max(torch.cuda.device_count(), 1)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    name = "gpu_throughput" + ("" if opts.size == "sd21" else f"_{opts.size}")
    opts.results.mkdir(parents=True, exist_ok=True)
    started, rows = time.time(), []
    for solver, zero, precision, checkpointing in itertools.product(opts.solvers, opts.zero, opts.precisions,
                                                                    opts.checkpointing):
        cell = {"solver": solver, "zero": zero, "precision": precision, "checkpointing": checkpointing == "on"}
        rows.append(measure(cell, argv, gpus, opts.cell_timeout))
        print(json.dumps(rows[-1]), flush=True)
        text = table(rows, opts, gpus, device)
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items() if k not in ("cell", "rows")}
        write_json_atomic(opts.results / f"{name}.json", {
            "settings": settings | {"gpus": gpus, "device": device, "torch": torch.__version__},
            "rows": rows, "wall_seconds": time.time() - started})
        write_text_atomic(opts.results / f"{name}.md", text)
    print(text)


if __name__ == "__main__":
    main()
