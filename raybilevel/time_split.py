"""Where each sweep trial's time went: start-up, the run's own phases, and the rest.

start-up is from the trial's driver starting (its record) to train() starting on rank 0 (Ray Train's
worker group, imports, DeepSpeed's process group); the phases are what train() measured (phases.py);
`other` is what is left of the trial's wall time (logging, reporting to Tune, tearing the workers down).
A trial resumed after an interruption has phases of its last process only, so its `other` holds the gap.
"""
from __future__ import annotations

from typing import Any

from raybilevel.phases import PHASES
from raybilevel.trials import TrialRecord

COLUMNS = ("startup", *PHASES, "other", "total")
WORK = ("solver_iterations", "evaluation")  # what a trial exists for; the target is >= 70% of it


def trial_split(record: TrialRecord, metrics: dict[str, Any]) -> dict[str, float] | None:
    """Seconds per column, or None for a trial without a finished run (failed, running); a run stopped early
    ended itself and has its split."""
    seconds, started_at = metrics.get("seconds"), metrics.get("started_at")
    if not isinstance(seconds, dict) or started_at is None or record.finished is None:
        return None
    split = {"startup": started_at - record.started, **{phase: seconds.get(phase, 0.0) for phase in PHASES}}
    split["total"] = record.finished - record.started
    split["other"] = split["total"] - sum(split[c] for c in ("startup", *PHASES))
    return split


def work_share(split: dict[str, float]) -> float:
    return sum(split[phase] for phase in WORK) / split["total"] if split["total"] > 0 else 0.0


def sweep_split(splits: list[dict[str, float]]) -> dict[str, float]:
    """The columns summed over trials, with the sweep's work share."""
    total = {column: sum(s[column] for s in splits) for column in COLUMNS}
    return total | {"work_share": work_share(total), "trials": len(splits)}
