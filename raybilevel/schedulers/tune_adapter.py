"""A raybilevel early-stopping rule as Ray Tune's TrialScheduler (imported by tune.py only: it needs Ray).

On a stop the adapter also ends the trial's record (status stopped, its last objectives, the reason) and
prints the reason: Tune then stops the trial, and OptunaSearch completes its Optuna trial with that last
result. Optuna cannot prune a multi-objective trial, so a stopped trial is told as complete with its
lower-fidelity values: the sampler learns that region scored poorly early on, rather than nothing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from raybilevel.trials import SweepDir, TrialRecord


class RuleScheduler(FIFOScheduler):
    def __init__(self, rule: Any, sweep_root: Path) -> None:
        super().__init__()
        self.rule, self.sweep_root = rule, Path(sweep_root)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        decision = self.rule.decide(trial.trial_id, result)
        if decision is None or not decision.stop:
            return TrialScheduler.CONTINUE
        record_file = SweepDir(self.sweep_root).trial_dir(trial.trial_id) / "trial.json"
        if record_file.is_file():
            TrialRecord.load(record_file).finish("stopped", decision.objectives, error=decision.reason)
        print(f"[raybilevel] trial {trial.trial_id} {decision.reason}", flush=True)
        return TrialScheduler.STOP
