"""Ray Train: a TorchTrainer runs `train()` on `ray.num_workers` DeepSpeed workers (CPU or GPU).

Ray owns the process group (DeepSpeed joins it, see engine.init_distributed). Each rank writes its own
checkpoint shards to a node-local folder and reports it; Ray merges the ranks' folders into one checkpoint
in `ray.storage_path` and hands the latest back on restart, so a rerun with the same name and storage
resumes (Ray Train V2 has no resume_from_checkpoint). The run directory itself (config.yaml, scalars,
TensorBoard, student/, metrics.json) is written by rank 0 and must be a folder every node sees.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import ray.train
import torch
from ray.train import CheckpointConfig, FailureConfig, Result, RunConfig, ScalingConfig, UserCallback
from ray.train.torch import TorchTrainer

from raybilevel.atomic import write_json_atomic
from raybilevel.config import Config, RayConfig, config_from_dict
from raybilevel.faults import crash_settings
from raybilevel.train import RunHooks, train


def scaling_config(cfg: RayConfig) -> ScalingConfig:
    resources = {"CPU": cfg.cpus_per_worker} | ({"GPU": cfg.gpus_per_worker} if cfg.use_gpu else {})
    return ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker=resources,
                         placement_strategy=cfg.placement_strategy)


@contextmanager
def _latest_checkpoint() -> Iterator[Path | None]:
    """The run's latest committed checkpoint as a local folder (downloaded if storage is remote)."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        yield None
        return
    with checkpoint.as_directory() as folder:
        yield Path(folder)


def _report_checkpoint(step: int, folder: Path) -> None:
    ray.train.report({"step": step}, checkpoint=ray.train.Checkpoint.from_directory(str(folder)),
                     checkpoint_dir_name=folder.name)  # the same name on every rank: Ray merges the shards
    shutil.rmtree(folder)  # uploaded synchronously; the local copy is no longer needed


# After an evaluation is reported, on every rank (metrics on rank 0, {} elsewhere): True ends the run there.
AfterEval = Callable[[int, dict[str, Any]], bool]


def _eval_hook(after_eval: AfterEval | None) -> Callable[[int, dict[str, Any]], bool]:
    def report_eval(step: int, metrics: dict[str, Any]) -> bool:
        ray.train.report({"step": step, **metrics})
        return after_eval is not None and after_eval(step, metrics)

    return report_eval


def train_loop(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: resume from Ray's latest checkpoint, train, report the metrics."""
    cfg = config_from_dict(loop_config["config"])
    os.environ.update(loop_config["crash"])  # empty unless a test injects a crash (faults.py)
    # Several processes share few cores: more threads than reserved CPUs made steps 60-300x slower.
    torch.set_num_threads(max(1, int(cfg.ray.cpus_per_worker)))
    with tempfile.TemporaryDirectory(prefix="raybilevel-ckpt-") as scratch, _latest_checkpoint() as resume_from:
        hooks = RunHooks(on_checkpoint=_report_checkpoint, on_eval=_eval_hook(loop_config["after_eval"]),
                         resume_from=resume_from,
                         checkpoint_root=Path(scratch))
        metrics = train(cfg, Path(loop_config["output"]), hooks)
    if metrics.get("stopped_at") is not None:  # its last evaluation was reported and judged already
        metrics = {"stopped_at": metrics["stopped_at"]}
    ray.train.report({"step": cfg.train.steps, **metrics})


COMMITTED_CHECKPOINT = "committed_checkpoint.json"


class CommittedCheckpointRecord(UserCallback):
    """Writes run_dir/committed_checkpoint.json ({"step", "path"}) each time Ray commits a checkpoint.

    A step folder appears in storage as soon as one rank uploads its shards; Ray commits the checkpoint only
    once every rank has reported it, and only a committed one is handed back on restart. This file (the
    controller's callbacks run after Ray's own checkpoint manager) is the run's public answer to "how far
    would a kill now set me back"."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir).resolve() / COMMITTED_CHECKPOINT

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if checkpoint is not None:
            write_json_atomic(self.path, {"step": metrics[0]["step"], "path": checkpoint.path})


def storage_for(cfg: Config, default: Path) -> str:
    """Ray's storage: the configured path or URI, else `default` (a local folder)."""
    return cfg.ray.storage_path or str(default.resolve())


def fit(cfg: Config, output: Path, *, name: str, storage_path: str, callbacks: Sequence[Any] = (),
        after_eval: AfterEval | None = None) -> Result:
    """Train `cfg` on Ray Train into run directory `output` (metrics.json holds the final metrics);
    rerunning with the same name and storage resumes from the latest checkpoint. `after_eval` (sent to the
    workers) may end the run after an evaluation, so its workers and placement group shut down normally."""
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"config": cfg.to_dict(), "output": str(Path(output).resolve()), "crash": crash_settings(),
                           "after_eval": after_eval},
        scaling_config=scaling_config(cfg.ray),
        run_config=RunConfig(name=name, storage_path=storage_path,
                             callbacks=[CommittedCheckpointRecord(output), *callbacks],
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
                             failure_config=FailureConfig(max_failures=cfg.ray.max_failures)),
    )
    return trainer.fit()
