"""One training run, top to bottom: build -> resume -> step loop -> checkpoints -> export -> evaluate.

A run directory holds config.yaml (the resolved config), checkpoints/, tensorboard/, scalars.jsonl (every
step's logged values, rank 0), student/ (the trained student) and metrics.json. A run its caller ends after
an evaluation (a sweep's early stop, RunHooks.on_eval) writes metrics.json with `stopped_at` and that
evaluation's metrics, and no student.
"""
from __future__ import annotations

import json
import math
import random
import resource
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml
from tqdm import tqdm

from raybilevel.acceleration import prepare_student, prepare_teacher
from raybilevel.atomic import write_json_atomic, write_text_atomic
from raybilevel.config import Config, dump_config, flatten
from raybilevel.engine import (DeepSpeedTrainable, DistInfo, any_rank, barrier, checkpoint_dirs, deepspeed_config,
                               init_distributed, load_checkpoint, save_checkpoint, save_rank_checkpoint)
from raybilevel.errors import UserError
from raybilevel.evaluate import evaluate, sample_grid
from raybilevel.faults import crash_point
from raybilevel.export import export_pipeline
from raybilevel.losses import FineTuneLoss
from raybilevel.phases import PhaseClock
from raybilevel.pruning import PRUNERS, Student, load_student, prune, save_student
from raybilevel.registry import Registry
from raybilevel.solvers import SOLVERS, Levels, Solver
from raybilevel.solvers.compute import Costs, spent, steps_for_budget
from raybilevel.solvers.data import EpochSampler
from raybilevel.unlearning import UNLEARNING
from raybilevel.worlds import World, build_world, check_world

# Keys a resumed run may change: how long it runs and how it is watched, not what it computes.
RESUMABLE_CHANGES = {"train.steps", "train.log_every", "train.checkpoint_every", "train.sample_every",
                     "train.keep_checkpoints", "train.eval_every", "train.eval_fractions", "eval"}


@dataclass
class RunHooks:
    """Where a caller (the Ray Train worker) plugs in: reporting and an external checkpoint to resume.

    Every hook is called on every rank at the same step (Ray's report is a barrier); on_eval gets the
    metrics on rank 0 and {} elsewhere, and returning True on any rank ends the run there: no more steps,
    no export, no final evaluation (a sweep's early stop, so the run shuts down by itself rather than
    being killed). With checkpoint_root set, each rank writes its own shards there
    (a node-local folder) instead of into output/checkpoints, and on_checkpoint takes them over.
    """

    on_log: Callable[[int, dict[str, float]], None] | None = None
    on_checkpoint: Callable[[int, Path], None] | None = None
    on_eval: Callable[[int, dict[str, Any]], bool | None] | None = None
    resume_from: Path | None = None
    checkpoint_root: Path | None = None


@dataclass
class Run:
    cfg: Config
    world: World
    student: Student
    solver: Solver
    dist: DistInfo
    output: Path
    costs: Costs
    writer: Any = None
    timings: list[float] = field(default_factory=list)  # seconds per solver iteration
    clock: PhaseClock = field(default_factory=PhaseClock)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True)


def check_output_dir(cfg: Config, output: Path) -> None:
    """A directory holding another run is never overwritten; the same run resumes."""
    saved = output / "config.yaml"
    if not saved.exists():
        if output.exists() and any(p.name not in ("config.yaml",) for p in output.iterdir()):
            raise UserError(f"--output {output} is not empty and holds no raybilevel run; choose a new directory")
        return
    # keys added since that run was written count as their defaults, which keep the behaviour of before
    old = flatten(Config().to_dict()) | flatten(yaml.safe_load(saved.read_text()) or {})
    new = flatten(cfg.to_dict())
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key) and not any(key == k or key.startswith(k + ".") for k in RESUMABLE_CHANGES):
            raise UserError(f"--output {output} holds another run ({key}: {old.get(key)!r} there, {new.get(key)!r} now); "
                            "choose a new directory or rerun with the same config to resume")


# The config keys that pick a registered method, and their registries.
METHOD_KEYS: dict[str, Registry] = {"solver.name": SOLVERS, "upper.method": UNLEARNING, "pruning.method": PRUNERS}


def check_names(cfg: Config) -> None:
    """Registry names and the world's own values are checked here, not in config.py, so a new method
    needs no config edit; `--dry-run` runs the same checks as the real run."""
    chosen = flatten(cfg.to_dict())
    for key, registry in METHOD_KEYS.items():
        if chosen[key] not in registry:
            raise UserError(f"config error at '{key}': unknown {registry.kind} {chosen[key]!r}; choose one of: "
                            f"{', '.join(registry.names())}")
    check_world(cfg.world)


def build_run(cfg: Config, output: Path, world: World | None = None) -> Run:
    """`world`: a ready-made world instead of cfg.world's (benchmarks/gpu_throughput.py); this run owns it."""
    check_names(cfg)
    dist = init_distributed()
    seed_everything(cfg.seed, cfg.deterministic)
    device = torch.device(f"cuda:{dist.local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if world is None:
        began = time.perf_counter()
        world = build_world(cfg.world, cfg.seed, device)
        world.seconds["world"] = time.perf_counter() - began - sum(world.seconds.values())
    student = prune(cfg.pruning.method, world.teacher, sparsity=cfg.pruning.sparsity, seed=cfg.seed, path=cfg.pruning.path)
    prepare_teacher(world.teacher, cfg.engine)  # only now: the student was copied from it in fp32
    upper_loss = UNLEARNING.get(cfg.upper.method)(world.teacher, cfg.upper, world.scheduler_config, world.concept, world.prompts)
    samplers = {
        name: EpochSampler(n, batch, cfg.seed, name, dist.rank, dist.world_size, cfg.engine.grad_accum)
        for name, n, batch in (("lower", len(world.finetune), cfg.lower.batch_size),
                               ("upper", len(world.concept.images), cfg.upper.batch_size),
                               ("gap", len(world.finetune), cfg.lower.batch_size))
    }
    levels = Levels(
        lower_loss=FineTuneLoss(world.teacher, cfg.lower, world.scheduler_config, world.prompts),
        upper_loss=upper_loss, lower_sampler=samplers["lower"], upper_sampler=samplers["upper"],
        gap_sampler=samplers["gap"],
        get_lower_data=world.finetune.get_batch, lower_lr=cfg.lower.lr, upper_lr=cfg.upper.lr,
        grad_accum=cfg.engine.grad_accum, total_steps=cfg.train.steps,
        on_nonfinite=cfg.train.on_nonfinite, max_skipped_steps=cfg.train.max_skipped_steps,
    )
    solver_class = SOLVERS.get(cfg.solver.name)
    stats = student.description.get("stats", {})
    costs = Costs(teacher=stats.get("teacher", {}).get("macs", 0), student=stats.get("student", {}).get("macs", 0))
    if cfg.train.compute_budget > 0:
        if not costs.student:
            raise UserError("train.compute_budget: this student has no MAC count; set train.steps instead")
        levels.total_steps = steps_for_budget(solver_class, cfg.solver, levels, costs, cfg.train.compute_budget)
    solver = solver_class(cfg.solver, levels)
    # One micro-batch size per engine: DeepSpeed only uses it for its own bookkeeping here.
    ds_config = deepspeed_config(cfg.engine, cfg.lower.batch_size)

    def make(name: str, module: torch.nn.Module, groups: list[dict[str, Any]]) -> DeepSpeedTrainable:
        prepare_student(module, cfg.engine)
        return DeepSpeedTrainable(name, module, groups, ds_config, weight_decay=0.0,
                                  after_step=student.apply_constraints if name == "theta" else None)

    solver.build(student.model, make)
    return Run(cfg, world, student, solver, dist, output, costs)


def _resume(run: Run, hooks: RunHooks) -> int:
    candidates = [hooks.resume_from] if hooks.resume_from else checkpoint_dirs(run.output / "checkpoints")[-1:]
    if not candidates:
        return 0
    state = load_checkpoint(candidates[-1], run.solver.trainables)
    run.solver.load_state_dict(state["solver"])
    return int(state["step"])


def _log(run: Run, step: int, scalars: dict[str, float], hooks: RunHooks) -> None:
    if run.dist.is_main:
        line = json.dumps({"step": step, **scalars}) + "\n"
        with open(run.output / "scalars.jsonl", "a") as f:
            crash_point("append", lambda: (f.write(line[: len(line) // 2]), f.flush()))
            f.write(line)
        if (step + 1) % run.cfg.train.log_every == 0:
            for key, value in scalars.items():
                run.writer.add_scalar(f"train/{key}", value, step)
    if hooks.on_log is not None:
        hooks.on_log(step, scalars)


def _truncate_scalars(path: Path, start: int) -> None:
    """Drop lines a killed run wrote after its last checkpoint, so the log has each step once; a line torn
    by a kill in the middle of an append (always the last one) is dropped too."""
    if path.exists():
        steps = ((line, _step_of(line)) for line in path.read_text().splitlines())
        keep = [line for line, step in steps if step is not None and step < start]
        write_text_atomic(path, "".join(line + "\n" for line in keep))


def _step_of(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def _sample_grid(run: Run, step: int) -> None:
    """All ranks run the sampler (ZeRO-3 gathers parameters collectively); rank 0 writes the grid."""
    grid = sample_grid(run.world, run.solver.student.module, run.cfg.eval.seed)
    if run.dist.is_main:
        run.writer.add_image("samples/concept_then_unrelated", grid, step)


def _export_student(run: Run, folder: Path) -> None:
    """Write the student as it is now (full weights, gathered under ZeRO-3) to `folder` (rank 0)."""
    module = run.solver.student.module
    gather = nullcontext()
    if run.cfg.engine.zero_stage == 3:
        import deepspeed

        gather = deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)
    with gather:
        if run.dist.is_main:
            save_student(run.student, folder)
    barrier()


def _record_eval(run: Run, step: int, metrics: dict[str, Any]) -> None:
    """Rank 0: one line of evals.jsonl and eval/* scalars per evaluation, for convergence curves."""
    spent_so_far = {"macs": run.costs.of(run.solver.budget), "theta_updates": run.solver.budget.theta_updates}
    with open(run.output / "evals.jsonl", "a") as f:
        f.write(json.dumps({"step": step, **spent_so_far, **metrics}) + "\n")
    for key, value in metrics.items():
        if isinstance(value, (int, float)):
            run.writer.add_scalar(f"eval/{key}", value, step)


def _evaluate_during_training(run: Run, step: int, hooks: RunHooks) -> dict[str, Any] | None:
    """Evaluate a reloaded copy of the student, so the training module keeps its mode and dtype. Returns the
    evaluation ({} off rank 0) if the caller asks the run to end here, else None (the same on every rank)."""
    metrics: dict[str, Any] = {}
    with run.clock("evaluation"), tempfile.TemporaryDirectory(prefix="raybilevel-eval-") as scratch:
        _export_student(run, Path(scratch) / "student")
        if run.dist.is_main:
            metrics = evaluate(run.world, load_student(Path(scratch) / "student").model, run.cfg.eval)
            metrics["progress"] = step / run.solver.levels.total_steps  # a sweep scheduler's rungs read it
            _record_eval(run, step, metrics)
    stop = any_rank(bool(hooks.on_eval(step, metrics))) if hooks.on_eval is not None else False
    return metrics if stop else None


def _save(run: Run, step: int, hooks: RunHooks) -> None:
    with run.clock("checkpointing"):
        _save_checkpoint(run, step, hooks)


def _save_checkpoint(run: Run, step: int, hooks: RunHooks) -> None:
    state = {"solver": run.solver.state_dict()}
    if hooks.checkpoint_root is not None:
        folder = save_rank_checkpoint(hooks.checkpoint_root / f"step_{step:08d}", step, run.solver.trainables,
                                      state, run.dist)
    else:
        folder = save_checkpoint(run.output / "checkpoints", step, run.solver.trainables, state, run.dist,
                                 run.cfg.train.keep_checkpoints)
    if hooks.on_checkpoint is not None:
        hooks.on_checkpoint(step, folder)


def mid_run_eval_steps(every: int, fractions: list[float], total: int) -> set[int]:
    """Steps done after which to evaluate before the end: multiples of `every`, and each fraction of the run
    rounded up, so that it is never short of the fraction (a scheduler's rung reads progress >= fraction)."""
    steps = set(range(every, total, every)) if every else set()
    return steps | {max(1, math.ceil(f * total - 1e-9)) for f in fractions} - {total}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train(cfg: Config, output: Path, hooks: RunHooks | None = None) -> dict[str, Any]:
    """Run (or resume) training into `output`; returns the metrics written to metrics.json."""
    hooks = hooks or RunHooks()
    output = Path(output)
    check_output_dir(cfg, output)
    clock = PhaseClock()
    with clock("setup"):
        run = build_run(cfg, output)
    for phase, seconds in run.world.seconds.items():  # the world's own build, inside setup
        clock.add(phase, seconds)
        clock.add("setup", -seconds)
    run.clock = clock
    if run.dist.is_main:
        output.mkdir(parents=True, exist_ok=True)
        write_text_atomic(output / "config.yaml", dump_config(cfg))
        from torch.utils.tensorboard import SummaryWriter

        run.writer = SummaryWriter(str(output / "tensorboard"))
    start = _resume(run, hooks)
    if run.dist.is_main:
        _truncate_scalars(output / "scalars.jsonl", start)
        _truncate_scalars(output / "evals.jsonl", start + 1)  # evals are logged by steps done: keep `start`
    total = run.solver.levels.total_steps  # train.steps, or what train.compute_budget buys
    stopped_at, stop_evaluation = None, None  # where a caller ended the run, and the evaluation it ended at
    if cfg.train.eval_at_start and start == 0:
        stop_evaluation = _evaluate_during_training(run, 0, hooks)
        stopped_at = 0 if stop_evaluation is not None else None
    eval_steps = mid_run_eval_steps(cfg.train.eval_every, cfg.train.eval_fractions, total)
    steps = range(start, total if stopped_at is None else start)
    for step in tqdm(steps, desc=f"train {cfg.solver.name}", disable=not run.dist.is_main, mininterval=5):
        began = time.perf_counter()
        scalars = run.solver.iteration(step)
        run.timings.append(time.perf_counter() - began)
        crash_point("step")
        _log(run, step, scalars, hooks)
        done = step + 1
        if cfg.train.sample_every and (done % cfg.train.sample_every == 0 or done == total):  # the report shows the last
            with clock("sample_grids"):
                _sample_grid(run, step)
        if done in eval_steps:  # the last step's evaluation is the end-of-run one below
            stop_evaluation = _evaluate_during_training(run, done, hooks)
            if stop_evaluation is not None:
                stopped_at = done
                break
        if done == total or (cfg.train.checkpoint_every and done % cfg.train.checkpoint_every == 0):
            _save(run, done, hooks)
    if stopped_at is None:
        with clock("export"):
            _export_student(run, output / "student")
            if run.world.pipeline_folder is not None and run.dist.is_main:
                export_pipeline(load_student(output / "student"), run.world.pipeline_folder, output / "pipeline")
    metrics: dict[str, Any] = {}
    if run.dist.is_main:
        metrics = {"solver": cfg.solver.name, "steps": total, "resumed_from": start, "stopped_at": stopped_at,
                   "budget": run.solver.state_dict()["budget"],
                   "compute": spent(run.solver.budget, run.costs, total if stopped_at is None else stopped_at), "skipped_steps": run.solver.skipped_steps,
                   "world_size": run.dist.world_size,
                   "seconds_per_step": float(np.mean(run.timings)) if run.timings else None,
                   # steady state: the first steps allocate optimizer state, a loaded machine adds spikes
                   "seconds_per_step_median": float(np.median(run.timings)) if run.timings else None,
                   "student": run.student.description.get("stats", {})}
        if stop_evaluation is not None:  # the run's numbers are those it was ended at
            metrics |= stop_evaluation
        elif cfg.eval.enabled:
            with clock("evaluation"):
                evaluation = evaluate(run.world, load_student(output / "student").model, cfg.eval)
            _record_eval(run, total, evaluation)
            metrics |= evaluation
        clock.add("solver_iterations", sum(run.timings))
        # this process's phases (a resumed run's only), and when it began, for a sweep's start-up share
        metrics |= {"seconds": clock.as_dict(), "started_at": clock.started_at}
        metrics["peak_rss_mb"] = peak_rss_mb()
        write_json_atomic(output / "metrics.json", metrics)
        run.writer.close()
    barrier()
    return metrics
