"""How a trial hears its early-stopping verdict and ends itself, rather than being killed by Tune.

Tune's STOP kills a trial's driver and with it the Ray Train controller the driver owns. The controller's
placement group is scoped to the job, not to the controller: Ray Train leaves its removal to a detached
helper that asks Ray's dashboard (the state API) whether the controller is dead, so without a working
dashboard every stopped trial kept its CPUs and, on 2 cores, later trials waited for them for good
(README, "Early stopping"). So the scheduler writes a verdict for every result it judges, the trial's rank 0
waits for the verdict on each evaluation it reported, and on a stop the run ends there: its controller
shuts the workers down and removes its placement group, and Tune sees the trial complete with the judged
result as its last.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raybilevel.atomic import write_json_atomic

VERDICT_FILE = "verdict.json"  # in the trial's folder, beside trial.json


def write_verdict(trial_dir: Path, step: int, stop: bool) -> None:
    write_json_atomic(Path(trial_dir) / VERDICT_FILE, {"step": step, "stop": stop})


def read_verdict(trial_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(trial_dir) / VERDICT_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


@dataclass(frozen=True)
class AwaitVerdict:
    """The Ray Train workers' after-evaluation hook under an early-stopping scheduler (distributed.fit).

    Called on every rank with the evaluation's metrics (rank 0) or {} (the others, which learn the answer
    from rank 0 through train.py's vote). Only an evaluation carrying every objective reaches Tune, so only
    that one is waited for. If no verdict comes within `timeout_s` (Tune's driver gone or stuck) the run
    goes on, and a later verdict can still stop it.
    """

    trial_dir: Path
    objectives: tuple[str, ...]
    timeout_s: float = 120.0
    poll_s: float = 0.05

    def __call__(self, step: int, metrics: dict[str, Any]) -> bool:
        if not all(name in metrics for name in self.objectives):
            return False
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            verdict = read_verdict(self.trial_dir)
            if verdict is not None and verdict["step"] == step:
                return bool(verdict["stop"])
            time.sleep(self.poll_s)
        print(f"[raybilevel] no early-stopping verdict for step {step} within {self.timeout_s:.0f} s; "
              "training on", flush=True)
        return False
