"""Run by torchrun from test_distributed.py: several tiny runs in one process group, to pay start-up once.

usage: torchrun --nproc_per_node 2 tests/dist_worker.py OUT_DIR SOLVER STAGE[:SOLVER] [...]
Writes OUT_DIR/stage_N (or stage_N_OTHER for a STAGE:OTHER token) for each token, then OUT_DIR/resumed_2 and
resumed_3: stage-2 and stage-3 runs of SOLVER whose last checkpoint is deleted and which are rerun.
"""
import os
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from helpers import TINY  # noqa: E402

from raybilevel.config import load_config  # noqa: E402
from raybilevel.engine import barrier  # noqa: E402
from raybilevel.train import train  # noqa: E402

torch.set_num_threads(1)
out, solver, tokens = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
common = TINY + [f"solver.name={solver}", "eval.enabled=false", "deterministic=true"]
for token in tokens:
    stage, _, other = token.partition(":")
    extra = [f"solver.name={other}", "solver.keep=0.9", "upper.lr=1e-3"] if other else []  # bome: a binding barrier
    train(load_config(None, common + extra + [f"engine.zero_stage={stage}"]),
          out / (f"stage_{stage}_{other}" if other else f"stage_{stage}"))

for stage in (2, 3):  # a 2-rank run whose last checkpoint is deleted, rerun: it must resume exactly
    resumed = out / f"resumed_{stage}"
    cfg = load_config(None, common + [f"engine.zero_stage={stage}"])
    train(cfg, resumed)
    if int(os.environ["RANK"]) == 0:
        shutil.rmtree(resumed / "checkpoints" / "step_00000004")
    barrier()
    train(cfg, resumed)
