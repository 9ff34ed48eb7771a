"""Test helpers shared by the test modules (imported as `helpers`; conftest.py holds only fixtures)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

# Tiny settings, so a toy-world run takes seconds on one CPU thread.
TINY = [
    "train.steps=4", "solver.K=2", "solver.erase_fraction=0.5", "train.checkpoint_every=2",
    "world.toy_images=128", "world.n_concept_images=8", "world.sampling_steps=2",
    "lower.batch_size=8", "upper.batch_size=4", "eval.n_samples=8", "train.log_every=1", "solver.warmup_steps=1",
]


def read_scalars(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "scalars.jsonl").read_text().splitlines()]


def assert_same_curve(resumed: list[dict], uninterrupted: list[dict], rel: float = 0.0) -> None:
    """Same steps and keys; values equal exactly (rel=0) or within a relative tolerance."""
    assert [sorted(r) for r in resumed] == [sorted(r) for r in uninterrupted]
    for a, b in zip(resumed, uninterrupted):
        for key, value in b.items():
            assert a[key] == pytest.approx(value, rel=rel, abs=0), (a["step"], key)


def committed_step(run_dir: Path) -> int:
    """The step of the latest checkpoint Ray has committed for a run (0 before the first), from the run's
    committed_checkpoint.json. A step_N folder appears as soon as one rank uploads; Ray commits it only once
    every rank has reported it, so a kill must wait for this."""
    from raybilevel.distributed import COMMITTED_CHECKPOINT  # not at the top: it imports Ray

    try:
        return json.loads((Path(run_dir) / COMMITTED_CHECKPOINT).read_text())["step"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "raybilevel", *args]
