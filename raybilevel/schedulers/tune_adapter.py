"""A raybilevel early-stopping rule as Ray Tune's TrialScheduler (imported by tune.py only: it needs Ray).

Every result it judges gets a verdict in the trial's folder (verdicts.py): the trial waits for it and, on a
stop, ends its run itself, so Tune is never asked to kill it (which would leak the run's placement group).
On a stop the adapter also ends the trial's record (status stopped, its last objectives, the reason) and
prints the reason. The judged result is the last one Tune sees, so OptunaSearch completes its Optuna trial
with it: Optuna cannot prune a multi-objective trial, so a stopped trial is told as complete with its
lower-fidelity values, and the sampler learns that region scored poorly early on, rather than nothing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from raybilevel.schedulers.verdicts import write_verdict
from raybilevel.trials import SweepDir, TrialRecord


class RuleScheduler(FIFOScheduler):
    def __init__(self, rule: Any, sweep_root: Path) -> None:
        super().__init__()
        self.rule, self.sweep_root = rule, Path(sweep_root)
        self.stopped: set[str] = set()  # a trial that missed its verdict (timeout) is told again

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        folder = SweepDir(self.sweep_root).trial_dir(trial.trial_id)
        decision = self.rule.decide(trial.trial_id, result)
        if decision is not None and decision.stop and trial.trial_id not in self.stopped:
            self.stopped.add(trial.trial_id)
            if (folder / "trial.json").is_file():
                TrialRecord.load(folder / "trial.json").finish("stopped", decision.objectives, error=decision.reason)
            print(f"[raybilevel] trial {trial.trial_id} {decision.reason}", flush=True)
        write_verdict(folder, int(result.get("step", -1)), trial.trial_id in self.stopped)
        return TrialScheduler.CONTINUE
