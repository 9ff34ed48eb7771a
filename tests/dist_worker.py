"""Run by torchrun from test_distributed.py: several tiny runs in one process group, to pay start-up once.

usage: torchrun --nproc_per_node 2 tests/dist_worker.py OUT_DIR SOLVER STAGE [STAGE ...]
Writes OUT_DIR/stage_N for each stage, then OUT_DIR/resumed: a stage-2 run whose last checkpoint is
deleted and which is rerun, to compare with stage_2 loss for loss.
"""
import os
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from conftest import TINY  # noqa: E402

from raybilevel.config import load_config  # noqa: E402
from raybilevel.engine import barrier  # noqa: E402
from raybilevel.train import train  # noqa: E402

torch.set_num_threads(1)
out, solver, stages = Path(sys.argv[1]), sys.argv[2], [int(s) for s in sys.argv[3:]]
common = TINY + [f"solver.name={solver}", "eval.enabled=false", "deterministic=true"]
for stage in stages:
    train(load_config(None, common + [f"engine.zero_stage={stage}"]), out / f"stage_{stage}")

resumed = out / "resumed"
cfg = load_config(None, common + ["engine.zero_stage=2"])
train(cfg, resumed)
if int(os.environ["RANK"]) == 0:
    shutil.rmtree(resumed / "checkpoints" / "step_00000004")
barrier()
train(cfg, resumed)
