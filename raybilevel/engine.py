"""DeepSpeed under the solvers: process group, one engine per parameter set, atomic checkpoints.

Works with one process (no launcher: the rendezvous variables are set here), with N processes under
torchrun / the deepspeed launcher, and inside Ray Train workers (which own the process group already).
The frozen teacher never enters an engine, so ZeRO-3 partitions only the trainable student.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from raybilevel.atomic import write_json_atomic
from raybilevel.config import EngineConfig
from raybilevel.errors import UserError
from raybilevel.faults import crash_point
from raybilevel.solvers.optim import BilevelAdamW


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Join (or create, for a single process) the process group DeepSpeed will use."""
    import deepspeed
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if "WORLD_SIZE" not in os.environ:
            # A lone process: an in-memory store needs no port (a probed free port can be taken by
            # another process first), and with the group up DeepSpeed skips its MPI discovery. Only
            # LOCAL_RANK (which DeepSpeed's engine insists on) is exported: without WORLD_SIZE a
            # subprocess does not mistake itself for a launched rank.
            os.environ.setdefault("LOCAL_RANK", "0")
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        deepspeed.init_distributed(dist_backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def any_rank(flag: bool) -> bool:
    """Whether any rank passed True: every rank gets the same answer, so all take the same branch."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    vote = torch.tensor([int(flag)], device=device)
    dist.all_reduce(vote, op=dist.ReduceOp.MAX)
    return bool(vote.item())


# DeepSpeed's default buckets hold 5e8 elements (2 GB in fp32), allocated up front under ZeRO-3 even for a
# model a thousand times smaller. 5e7 elements (200 MB) still fuse a Stable Diffusion UNet's gradients into
# ~17 all-reduces.
_BUCKETS = {"reduce_bucket_size": 5e7, "allgather_bucket_size": 5e7, "stage3_prefetch_bucket_size": 5e7}


def deepspeed_config(cfg: EngineConfig, micro_batch: int) -> dict[str, Any]:
    config = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": cfg.grad_accum,
        "gradient_clipping": cfg.grad_clip,
        # memory_efficient_linear would make ZeRO-3 replace torch.nn.functional.linear for the whole process
        # and never restore it (a later torch.jit.save, e.g. of an FID network, then fails).
        "zero_optimization": {"stage": cfg.zero_stage, "memory_efficient_linear": False, **_BUCKETS, **_offload(cfg)},
        "bf16": {"enabled": cfg.precision == "bf16"},
        "torch_autocast": {"enabled": cfg.precision == "bf16_autocast", "dtype": "bfloat16"},
        "zero_allow_untested_optimizer": True,  # BilevelAdamW is a plain torch optimizer
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if cfg.offload != "none":
        # DeepSpeed refuses a client optimizer with offload unless told otherwise: it wants its C++
        # DeepSpeedCPUAdam, which has one moment state, not BilevelAdamW's two. BilevelAdamW's torch ops
        # run on the offloaded CPU partitions instead (correct; slower than DeepSpeedCPUAdam).
        config["zero_force_ds_cpu_optimizer"] = False
    return config


def _offload(cfg: EngineConfig) -> dict[str, Any]:
    """ZeRO's offload sections; pinned host memory only where there is a GPU to copy to."""
    if cfg.offload == "none":
        return {}
    target = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    sections = {"offload_optimizer": target}
    if cfg.offload == "optimizer_and_params":
        sections["offload_param"] = target
    return sections


def _weights_only_checkpoint_engine(config):
    """DeepSpeed's torch checkpoint engine loads with weights_only=False (any pickle runs); this one
    refuses everything but tensors and plain containers, so a tampered checkpoint cannot run code."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    # DeepSpeed's own plain-data types in its checkpoints: an enum and two attribute-only classes,
    # rebuilt from their values without calling any function.
    allowed = [ZeroStageEnum, LossScaler, fragment_address]

    class WeightsOnlyCheckpointEngine(TorchCheckpointEngine):
        def load(self, path: str, map_location=None):
            try:
                with torch.serialization.safe_globals(allowed):
                    return torch.load(path, map_location=map_location, weights_only=True)
            except pickle.UnpicklingError as error:
                if "weights only load failed" not in str(error).lower():
                    raise _corrupt(path, error) from None
                raise UserError(f"refusing checkpoint file {path}: it is not plain tensors and containers "
                                f"({_first_line(error)}); it was not written by raybilevel") from None
            except (RuntimeError, EOFError, OSError) as error:  # a torn zip, a short file, a bad read
                raise _corrupt(path, error) from None

    return WeightsOnlyCheckpointEngine(config)


def _first_line(error: BaseException) -> str:
    # the first sentence: PyTorch's zip errors go on for 300 characters of internals
    return str(error).strip().splitlines()[0].split(". ")[0][:120] if str(error).strip() else type(error).__name__


def _corrupt(path: str, error: BaseException) -> UserError:
    return UserError(f"checkpoint file {path} is truncated or corrupt ({_first_line(error)}); delete its step_* "
                     "folder to resume from the checkpoint before it")


class DeepSpeedTrainable:
    """One parameter set on one DeepSpeed engine; `step(level, lr)` picks BilevelAdamW's state."""

    def __init__(self, name: str, module: torch.nn.Module, param_groups: list[dict[str, Any]],
                 ds_config: dict[str, Any], weight_decay: float,
                 after_step: Callable[[], None] | None = None) -> None:
        import deepspeed

        self.name = name
        self.optimizer = BilevelAdamW(param_groups, weight_decay=weight_decay)
        self.engine, *_ = deepspeed.initialize(model=module, optimizer=self.optimizer, config=ds_config,
                                               dist_init_required=False)
        self.engine.checkpoint_engine = _weights_only_checkpoint_engine(self.engine._config)
        import torch.distributed as dist

        # ZeRO (and DeepSpeed's bf16 optimizer) hand this optimizer one rank's partition: sums over parameters
        # (the barrier level's inner products) need every rank's share. Unwrapped, each rank holds them all.
        if self.engine.optimizer is not self.optimizer and dist.get_world_size() > 1:
            self.optimizer.all_reduce = dist.all_reduce
        self.module = self.engine.module
        self.dtype = torch.bfloat16 if ds_config["bf16"]["enabled"] else torch.float32
        self.after_step = after_step

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        device = self.engine.device
        return self.engine(x_t.to(device, self.dtype), t.to(device), cond.to(device, self.dtype)).sample.float()

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self, level: str, lr: float) -> None:
        self.optimizer.level = level
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.engine.step()
        if self.after_step is not None and self.engine.is_gradient_accumulation_boundary():
            self.after_step()

    def save(self, folder: Path) -> None:
        self.engine.save_checkpoint(str(folder), tag=self.name)

    def load(self, folder: Path) -> None:
        try:
            path, _ = self.engine.load_checkpoint(str(folder), tag=self.name)
        except RuntimeError as error:  # load_state_dict: size mismatch / missing or unexpected keys
            detail = next((line.strip() for line in str(error).splitlines() if "mismatch" in line or "key" in line.lower()),
                          _first_line(error))
            raise UserError(f"checkpoint {folder} holds another model than this config builds ('{self.name}': "
                            f"{detail[:200]}); resume it with the config that wrote it, or train into a new --output") from None
        if path is None:
            raise UserError(f"checkpoint {folder} holds no state for '{self.name}'; it is incomplete or from another solver")


# ---------------------------------------------------------------------------------------------- checkpoints
CHECKPOINT_PREFIX = "step_"


def checkpoint_dirs(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a half-written one still carries the .tmp suffix)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)
             and not p.name.endswith(".tmp") and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def save_checkpoint(root: Path, step: int, trainables: dict[str, DeepSpeedTrainable], state: dict[str, Any],
                    dist_info: DistInfo, keep: int) -> Path:
    """Every rank writes its shards into step_N.tmp; rank 0 adds state.json and renames it in one move,
    so a kill at any moment leaves the previous checkpoint intact and no torn one that looks complete."""
    final = root / f"{CHECKPOINT_PREFIX}{step:08d}"
    tmp = final.with_name(final.name + ".tmp")
    if dist_info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    try:
        for trainable in trainables.values():
            trainable.save(tmp)
        crash_point("checkpoint")
        barrier()
        if dist_info.is_main:
            write_json_atomic(tmp / "state.json", state | {"step": step})
    except OSError as error:  # a full disk or quota, a read-only mount: the previous checkpoint is untouched
        shutil.rmtree(tmp, ignore_errors=True)
        previous = checkpoint_dirs(root)
        kept = f"the previous checkpoint {previous[-1].name} is intact" if previous else "no earlier checkpoint exists"
        raise UserError(f"could not write checkpoint {final.name} in {root}: {error.strerror or error}; {kept}: free "
                        "space (or fix the folder) and rerun the same command to resume") from None
    if dist_info.is_main:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in checkpoint_dirs(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def save_rank_checkpoint(folder: Path, step: int, trainables: dict[str, DeepSpeedTrainable], state: dict[str, Any],
                         dist_info: DistInfo) -> Path:
    """Every rank writes its own shards into its own (node-local) `folder`; rank 0 adds state.json.

    For Ray Train, which merges the folders of all ranks into one checkpoint in its storage and commits
    it only once every rank has reported, so no shared filesystem and no rename are needed here."""
    folder.mkdir(parents=True, exist_ok=True)
    for trainable in trainables.values():
        trainable.save(folder)
    if dist_info.is_main:
        write_json_atomic(folder / "state.json", state | {"step": step})
    return folder


def load_checkpoint(folder: Path, trainables: dict[str, DeepSpeedTrainable]) -> dict[str, Any]:
    try:
        state = json.loads((folder / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"checkpoint {folder} is unreadable ({error.__class__.__name__}); delete it to resume from the one before") from None
    for trainable in trainables.values():
        trainable.load(folder)
    return state
